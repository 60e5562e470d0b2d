-- The feed's order (API contract, "Feeds"). Event ids are taken before commit, so a change can
-- commit after another with a larger id: ids alone cannot be resumed from. Each event records its
-- feed transaction: the writing transaction's id, or the order's previous event's when that is
-- higher (a change that took its transaction id before waiting on the order's row lock would
-- otherwise sort before the change it waited for). The feed is ordered by (feed_xact, id) and
-- hands out only events whose feed_xact is below the oldest unfinished transaction
-- (pg_snapshot_xmin), so nothing can later appear before a position already handed out.
--
-- Adding a column with a constant default rewrites nothing: rows written before this migration
-- read as transaction 0, in id order, which is their commit order per order. The default then
-- becomes the writing transaction, for writers that do not set it (an older instance during a
-- rolling upgrade).
ALTER TABLE order_events ADD COLUMN feed_xact xid8 NOT NULL DEFAULT '0';
ALTER TABLE order_events ALTER COLUMN feed_xact SET DEFAULT pg_current_xact_id();

-- The feed reads in this order. Building it locks writes to the table while it runs: on a large
-- table, run this migration in a quiet moment (or create the index CONCURRENTLY first).
CREATE INDEX order_events_feed ON order_events (feed_xact, id);
