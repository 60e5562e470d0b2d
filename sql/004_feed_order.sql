-- The feed's order (API contract, "Feeds"). Event ids are taken before commit, so a change can
-- commit after another with a larger id: ids alone cannot be resumed from. Each event records its
-- feed transaction: the writing transaction's id, or the order's previous event's when that is
-- higher. The feed is ordered by (feed_xact, id) and hands out only events whose feed_xact is below
-- the oldest unfinished transaction (pg_snapshot_xmin), so nothing can later appear before a
-- position already handed out.
--
-- Why the previous event's: a change that took its transaction id before it waited on the order's
-- row lock holds a smaller id than the change it waited for. The order row carries its latest
-- event's feed transaction, read from the locked row itself: the waiting statement's snapshot does
-- not see the other change's event row, but the row lock hands it the order row as committed.
--
-- Adding a column with a constant default rewrites nothing: rows written before this migration
-- read as transaction 0, in id order, which is their commit order per order. The event's default
-- then becomes the writing transaction, for writers that do not set it (an older instance during a
-- rolling upgrade).
ALTER TABLE orders ADD COLUMN last_feed_xact xid8 NOT NULL DEFAULT '0';
ALTER TABLE order_events ADD COLUMN feed_xact xid8 NOT NULL DEFAULT '0';
ALTER TABLE order_events ALTER COLUMN feed_xact SET DEFAULT pg_current_xact_id();

-- The feed reads in this order. Building it locks writes to the table while it runs: on a large
-- table, run this migration in a quiet moment (or create the index CONCURRENTLY first).
CREATE INDEX order_events_feed ON order_events (feed_xact, id);
