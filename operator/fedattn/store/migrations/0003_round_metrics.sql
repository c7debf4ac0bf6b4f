-- Per-round metrics from the aggregator's close reply: DP epsilon spent so far and the bytes of the
-- updates it took. Contribution scores and reliability go to ``events`` (kind ``scores``, JSON in
-- ``message``): one row per round, read for audit, not queried by column. DOUBLE PRECISION like the
-- other float columns: PostgreSQL REAL is float4 and would round epsilon.

ALTER TABLE rounds ADD COLUMN epsilon DOUBLE PRECISION;
ALTER TABLE rounds ADD COLUMN update_bytes BIGINT;
