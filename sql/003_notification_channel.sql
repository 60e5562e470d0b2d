-- Any role that can connect may NOTIFY on any channel, so a well-known channel name would let it
-- send the service invented events. The channel's name is a random secret instead, kept in a
-- table only the service's role (its owner) can read: to forge, a role must first read it.
-- Writers name the channel through this table; the listener reads it through the pool.
CREATE TABLE notification_channel (
    -- One row: the key is always true.
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    name   text    NOT NULL CHECK (name ~ '^order_status_[0-9a-f]{32}$')
);

REVOKE ALL ON notification_channel FROM PUBLIC;

-- gen_random_uuid() draws from the server's strong random source: 122 random bits.
INSERT INTO notification_channel (name) VALUES ('order_status_' || replace(gen_random_uuid()::text, '-', ''));
