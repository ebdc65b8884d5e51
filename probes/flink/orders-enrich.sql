-- The enrichment job the probes in probes/flink/ go through (Flink SQL, Flink 2.0 with its Kafka
-- and JDBC connectors). It reads orders as JSON, keeps only valid ones, adds a fee and its
-- processing time, writes them to a topic keyed by order id and upserts them into PostgreSQL.
-- The tests run this file as it is, with its placeholders (a dollar sign and a name in braces)
-- filled in: topics, the bootstrap servers, the delivery guarantee, the database.
CREATE TABLE orders_in (
  order_id STRING,
  customer_id STRING,
  amount DECIMAL(12, 2),
  currency STRING,
  sequence BIGINT,
  created_at STRING,
  synthetic BOOLEAN,
  -- the record's headers (slo-probe-id, traceparent, ...), to pass them on
  headers MAP<STRING, BYTES> METADATA
) WITH (
  'connector' = 'kafka',
  'topic' = '${INPUT}',
  'properties.bootstrap.servers' = '${BOOTSTRAP}',
  'properties.group.id' = '${GROUP}',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'json',
  -- strict: a record without one of these fields fails the job (nothing is dropped silently)
  'json.fail-on-missing-field' = 'true',
  'json.ignore-parse-errors' = 'false'
);

CREATE TABLE orders_enriched (
  order_id STRING,
  customer_id STRING,
  amount DECIMAL(12, 2),
  fee DECIMAL(12, 4),
  currency STRING,
  sequence BIGINT,
  synthetic BOOLEAN,
  processed_at TIMESTAMP_LTZ(3),
  headers MAP<STRING, BYTES> METADATA
) WITH (
  'connector' = 'kafka',
  'topic' = '${OUTPUT}',
  'properties.bootstrap.servers' = '${BOOTSTRAP}',
  -- re-keyed: the order id is the key, so one input partition's orders spread over every
  -- output partition
  'key.format' = 'raw',
  'key.fields' = 'order_id',
  'value.format' = 'json',
  'value.json.timestamp-format.standard' = 'ISO-8601',
  'sink.delivery-guarantee' = '${GUARANTEE}',
  -- used by 'exactly-once' only: transactions named after the job, no longer open than the
  -- broker allows (transaction.max.timeout.ms, 15 minutes by default)
  'sink.transactional-id-prefix' = '${GROUP}',
  'properties.transaction.timeout.ms' = '900000'
);

CREATE TABLE orders_sink (
  order_id STRING,
  amount DECIMAL(12, 2),
  fee DECIMAL(12, 4),
  currency STRING,
  sequence BIGINT,
  -- the JDBC connector writes no TIMESTAMP_LTZ: the processing time as a TIMESTAMP(3) in the
  -- job's time zone, which must be UTC (table.local-time-zone), as slo-probe reads a timestamp
  processed_at TIMESTAMP(3),
  PRIMARY KEY (order_id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  'url' = '${JDBC_URL}',
  'table-name' = '${TABLE}',
  'username' = '${JDBC_USER}',
  'password' = '${JDBC_PASSWORD}',
  'sink.buffer-flush.interval' = '200ms'
);

CREATE TEMPORARY VIEW valid_orders AS
  SELECT order_id, customer_id, amount, CAST(amount * 0.02 AS DECIMAL(12, 4)) AS fee, currency,
    sequence, synthetic, PROCTIME() AS processed_at, headers
  FROM orders_in
  WHERE amount > 0 AND currency IN ('EUR', 'USD', 'GBP');

EXECUTE STATEMENT SET BEGIN
INSERT INTO orders_enriched SELECT * FROM valid_orders;
INSERT INTO orders_sink
  SELECT order_id, amount, fee, currency, sequence, CAST(processed_at AS TIMESTAMP(3))
  FROM valid_orders;
END;
