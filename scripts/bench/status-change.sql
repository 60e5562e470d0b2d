-- The statement OrderStore.changeStatusNow runs for a status change, for pgbench: one round
-- trip that locks the order, updates it, writes its event and notifies. Orders 'pgb-1' ..
-- 'pgb-:orders' are seeded by scripts/bench.sh. The sources list includes the target so that
-- every transaction writes, as every timed change of the service's writers does. pgbench reads
-- ':word' as a variable, so the time format and the payload spell their colons as chr(58).
\set n random(1, :orders)
WITH current_order AS (
    SELECT * FROM orders WHERE id = 'pgb-' || :n FOR UPDATE
), changed_order AS (
    UPDATE orders o SET status = 'paid', version = o.version + 1, updated_at = now(),
        last_event_id = nextval(pg_get_serial_sequence('order_events', 'id'))
    FROM current_order c
    WHERE o.id = c.id AND c.status = ANY('{pending,paid}'::text[])
        AND (NULL::int8[] IS NULL OR c.version = ANY(NULL::int8[]))
    RETURNING o.*, c.status AS previous_status
), new_event AS (
    INSERT INTO order_events (id, order_id, status, previous_status, version, occurred_at, metadata)
    SELECT last_event_id, id, status, previous_status, version, updated_at, NULL::json
    FROM changed_order
    RETURNING *
), notified AS (
    SELECT pg_notify((SELECT name FROM notification_channel), CASE WHEN octet_length(p.payload) < 8000 THEN p.payload ELSE n.id || chr(58) || n.order_id END)
    FROM new_event n, LATERAL (SELECT concat_ws(E'\n', n.id || chr(58) || n.order_id, n.status, coalesce(n.previous_status, ''), n.version, to_char(n.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.MS"Z"'), coalesce(n.metadata::text, '')) AS payload) p
), latest AS (
    SELECT * FROM changed_order UNION ALL SELECT *, NULL FROM current_order WHERE NOT EXISTS (SELECT FROM changed_order)
)
SELECT o.id, o.status, o.version, to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.MS"Z"'),
    to_char(o.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.MS"Z"'), o.last_event_id, o.metadata::text,
    e.id, e.order_id, e.status, e.previous_status, e.version,
    to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24' || chr(58) || 'MI' || chr(58) || 'SS.MS"Z"'), e.metadata::text
FROM latest o LEFT JOIN new_event e ON true LEFT JOIN notified ON true;
