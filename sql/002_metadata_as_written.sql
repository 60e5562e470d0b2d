-- Metadata is kept as the compact JSON text the service wrote, not as jsonb. jsonb re-spells what
-- it stores (spaces after ':' and ',', keys reordered, numbers printed in full: 1e1000 became a
-- thousand digits), so what was served grew past the 4096 bytes that were accepted. json keeps
-- the text as given; the service validates and compacts it before it is stored.
--
-- Rewrites both tables under an exclusive lock: on a large table, run it in a quiet moment.
-- Rows written before this migration are compacted from their jsonb form (their numbers keep
-- jsonb's spelling: the original text is gone).

CREATE FUNCTION pg_temp.compact_json(value jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(value)
        WHEN 'object' THEN '{' || coalesce((
            SELECT string_agg(to_json(member.key)::text || ':' || pg_temp.compact_json(member.value), ',' ORDER BY member.position)
            FROM jsonb_each(value) WITH ORDINALITY AS member(key, value, position)), '') || '}'
        WHEN 'array' THEN '[' || coalesce((
            SELECT string_agg(pg_temp.compact_json(item.value), ',' ORDER BY item.position)
            FROM jsonb_array_elements(value) WITH ORDINALITY AS item(value, position)), '') || ']'
        ELSE value::text
    END
$$;

ALTER TABLE orders
    DROP CONSTRAINT orders_metadata_check,
    ALTER COLUMN metadata TYPE json USING pg_temp.compact_json(metadata)::json,
    ADD CONSTRAINT orders_metadata_check CHECK (metadata IS NULL OR json_typeof(metadata) = 'object');

ALTER TABLE order_events
    DROP CONSTRAINT order_events_metadata_check,
    ALTER COLUMN metadata TYPE json USING pg_temp.compact_json(metadata)::json,
    ADD CONSTRAINT order_events_metadata_check CHECK (metadata IS NULL OR json_typeof(metadata) = 'object');

DROP FUNCTION pg_temp.compact_json(jsonb);
