-- Orders and their events. Every committed change of an order writes one row to order_events
-- in the same transaction, so the event table is the complete, ordered history of each order.

CREATE TABLE orders (
    id            text        PRIMARY KEY
                              CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    status        text        NOT NULL
                              CHECK (status IN ('pending', 'paid', 'processing', 'shipped',
                                                'delivered', 'cancelled', 'failed')),
    version       integer     NOT NULL CHECK (version >= 1),
    -- The metadata given at creation; a change's metadata lives on its event only.
    metadata      jsonb       CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object'),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    -- The id of the order's latest event: its current state, for SSE and the long poll.
    last_event_id bigint      NOT NULL
);

CREATE TABLE order_events (
    -- Taken from the sequence after the order row is locked, so one order's ids increase
    -- in commit order.
    id              bigserial   PRIMARY KEY,
    order_id        text        NOT NULL REFERENCES orders (id),
    status          text        NOT NULL
                                CHECK (status IN ('pending', 'paid', 'processing', 'shipped',
                                                  'delivered', 'cancelled', 'failed')),
    previous_status text        CHECK (previous_status IN ('pending', 'paid', 'processing',
                                                           'shipped', 'delivered', 'cancelled',
                                                           'failed')),
    version         integer     NOT NULL CHECK (version >= 1),
    occurred_at     timestamptz NOT NULL,
    metadata        jsonb       CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object'),
    UNIQUE (order_id, version),
    -- Creation has no previous status; every later change has one.
    CHECK ((version = 1) = (previous_status IS NULL))
);

-- Replay reads one order's events after a given id.
CREATE INDEX order_events_replay ON order_events (order_id, id);
