-- The PostgreSQL table the enrichment job (orders-enrich.sql) upserts into. `written_at` is the
-- database's own clock when the row was first inserted: the sink hop ends there.
CREATE TABLE orders_sink (
  order_id text PRIMARY KEY,
  amount numeric(12, 2) NOT NULL,
  fee numeric(12, 4) NOT NULL,
  currency text NOT NULL,
  sequence bigint NOT NULL,
  processed_at timestamp(3) NOT NULL,   -- the job's processing time, UTC, to the millisecond
  written_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
