//! `slo-probe check` (and `run`, `smoke`) on bad configuration: every problem, with its exact
//! message and `file:line:col`, and exit code 78.

mod common;

use common::{Tree, run};

const AGENT: &str = "\
site: eu-west-1a
clusters:
  primary:
    bootstrap_servers: 127.0.0.1:9092
";

const GOOD_PROBE: &str = "\
name: orders
cluster: primary
interval: 10s
timeout: 30s
slos:
  - { name: freshness, latency_below: 500ms, objective: 99% }
";

struct Case {
    name: &'static str,
    agent: Option<&'static str>,
    probes: &'static [(&'static str, &'static str)],
    /// Exactly the lines printed before the summary line.
    expected: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "unknown probe field, with a suggestion",
        agent: Some(AGENT),
        probes: &[("a.yaml", "name: orders\nintreval: 10s\n")],
        expected: &[
            "probes/a.yaml:2:1: unknown field `intreval` in probe, did you mean `interval`?",
        ],
    },
    Case {
        name: "unknown field without a close match lists the fields",
        agent: Some(AGENT),
        probes: &[("a.yaml", "name: orders\ncolour: blue\n")],
        expected: &[
            "probes/a.yaml:2:1: unknown field `colour` in probe; expected one of: name, cluster, topic, interval, timeout, partitions, payload_bytes, tags, verify, slos, max_in_flight, per_partition_metrics, create_topic, record, job",
        ],
    },
    Case {
        name: "unknown agent field",
        agent: Some("site: x\nlisten_on: 0.0.0.0:1\n"),
        probes: &[("a.yaml", "name: orders\n")],
        expected: &[
            "slo-probe.yaml:2:1: unknown field `listen_on` in the agent file, did you mean `listen`?",
        ],
    },
    Case {
        name: "bad durations",
        agent: Some(AGENT),
        probes: &[(
            "a.yaml",
            "name: orders\ninterval: 10 parsecs\ntimeout: soon\n",
        )],
        expected: &[
            "probes/a.yaml:2:11: `interval` is not a duration (`10 parsecs`: unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); use e.g. 10s, 1m30s, 500ms",
            "probes/a.yaml:3:10: `timeout` is not a duration (`soon`: expected number at 0); use e.g. 10s, 1m30s, 500ms",
        ],
    },
    Case {
        name: "zero and negative intervals",
        agent: Some(AGENT),
        probes: &[("a.yaml", "name: orders\ninterval: 0s\ntimeout: -5s\n")],
        expected: &[
            "probes/a.yaml:2:11: `interval` must be greater than zero, got `0s`",
            "probes/a.yaml:3:10: `timeout` must be positive, got `-5s`",
        ],
    },
    Case {
        name: "objectives outside (0, 100)",
        agent: Some(AGENT),
        probes: &[(
            "a.yaml",
            "name: orders\nslos:\n  - { name: completeness, objective: 100% }\n  - { name: availability, objective: 0 }\n  - name: fast\n    latency_below: 1s\n    objective: 150\n  - { name: x, sli: availability, objective: most }\n",
        )],
        expected: &[
            "probes/a.yaml:3:38: `objective` must be between 0% and 100% (both excluded), got `100%`",
            "probes/a.yaml:4:38: `objective` must be a percentage between 0% and 100% (both excluded) like 99.9%, got `0`",
            "probes/a.yaml:7:16: `objective` must be a percentage between 0% and 100% (both excluded) like 99.9%, got `150`",
            "probes/a.yaml:8:46: `objective` must be a percentage like 99.9%, got `most`",
        ],
    },
    Case {
        name: "objectives without their % sign, and bad ratios",
        agent: Some(AGENT),
        probes: &[(
            "a.yaml",
            "name: orders
slos:
  - { name: completeness, objective: 0.999 }
  - { name: availability, objective: 99.9 }
  - { name: a, sli: availability, objective: { ratio: 99.9 } }
  - { name: b, sli: availability, objective: { ratoi: 0.9 } }
",
        )],
        expected: &[
            "probes/a.yaml:3:38: `objective` needs a `%` sign (or `{ ratio: 0.999 }`): `0.999` is 0.999%; did you mean 99.9%?",
            "probes/a.yaml:4:38: `objective` needs a `%` sign: did you mean 99.9%?",
            "probes/a.yaml:5:55: `objective.ratio` must be a number between 0 and 1 (both excluded), like 0.999, got `99.9`",
            "probes/a.yaml:6:48: unknown field `ratoi` in `objective`, did you mean `ratio`?",
            "probes/a.yaml:6:48: missing field `ratio` in `objective`",
        ],
    },
    Case {
        name: "duplicate probe names across files",
        agent: Some(AGENT),
        probes: &[("a.yaml", "name: orders\n"), ("b.yaml", "\nname: orders\n")],
        expected: &[
            "probes/b.yaml:2:7: duplicate probe name `orders` (first defined at probes/a.yaml:1:7)",
        ],
    },
    Case {
        name: "undefined clusters, even in a probe with other problems",
        agent: Some(AGENT),
        probes: &[(
            "a.yaml",
            "name: orders\ncluster: primry\ntimeout: 0s\nverify:\n  kafka: { cluster: replica }\n",
        )],
        expected: &[
            "probes/a.yaml:2:10: probe `orders` uses undefined cluster `primry`; defined: primary",
            "probes/a.yaml:3:10: `timeout` must be greater than zero, got `0s`",
            "probes/a.yaml:5:21: probe `orders` verifies on undefined cluster `replica`; defined: primary",
        ],
    },
    Case {
        name: "a probe must name its cluster when several exist",
        agent: Some(
            "clusters:\n  a: { bootstrap_servers: 'h:1' }\n  b: { bootstrap_servers: 'h:2' }\n",
        ),
        probes: &[("a.yaml", "name: orders\n")],
        expected: &[
            "probes/a.yaml: probe `orders` must name its `cluster` because several are defined: a, b",
        ],
    },
    Case {
        name: "missing name and invalid names",
        agent: Some(AGENT),
        probes: &[(
            "a.yaml",
            "topic: 'bad topic'\ntags: { 'has space': x, traceparent: y }\n",
        )],
        expected: &[
            "probes/a.yaml:1:1: missing field `name` in probe",
            "probes/a.yaml:1:8: `topic` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249), got `bad topic`",
            "probes/a.yaml:2:9: tag name may only contain letters, digits, `.`, `_` and `-`, got `has space`",
            "probes/a.yaml:2:25: tag `traceparent` would clash with a record header slo-probe writes",
        ],
    },
    Case {
        name: "partitions",
        agent: Some(AGENT),
        probes: &[
            ("a.yaml", "name: orders\npartitions: [0, -1, 0, x]\n"),
            ("b.yaml", "name: b\npartitions: some\n"),
        ],
        expected: &[
            "probes/a.yaml:2:17: partition numbers start at 0, got -1",
            "probes/a.yaml:2:21: partition 0 is listed twice",
            "probes/a.yaml:2:24: `partitions` must be a partition number (0 or more), got `x`",
            "probes/b.yaml:2:13: `partitions` must be `all` or a list of partition numbers, got `some`",
        ],
    },
    Case {
        name: "latency threshold at or above the timeout; unknown sli",
        agent: Some(AGENT),
        probes: &[(
            "a.yaml",
            "name: orders\ntimeout: 30s\nslos:\n  - { name: fresh, latency_below: 30s, objective: 99% }\n  - { name: weird, objective: 99% }\n  - { name: other, sli: speed, objective: 99% }\n",
        )],
        expected: &[
            "probes/a.yaml:4:35: `latency_below` (30s) must be below the probe's timeout (30s): slower records are already lost",
            "probes/a.yaml:5:7: cannot tell what slo `weird` measures: add `latency_below` or `sli: latency|completeness|availability`",
            "probes/a.yaml:6:25: `sli` must be one of latency, completeness, availability, got `speed`",
        ],
    },
    Case {
        name: "YAML syntax error and duplicate keys",
        agent: Some(AGENT),
        probes: &[
            ("a.yaml", "name: [orders\n"),
            ("b.yaml", "name: b\nname: c\n"),
        ],
        expected: &[
            "probes/a.yaml:2:1: invalid YAML: while parsing a flow sequence, expected ',' or ']'",
            "probes/b.yaml:2:1: duplicate key `name` (first at 1:1)",
        ],
    },
    Case {
        name: "librdkafka properties are checked by librdkafka, values never echoed for secrets",
        agent: Some(
            "clusters:\n  primary:\n    bootstrap_servers: h:1\n    properties:\n      lnger.ms: 5\n      security.protocol: SASL_SSSL\n      sasl.password: ${SLO_PROBE_TEST_UNSET_SECRET}\n    producer: { acks: most }\n",
        ),
        probes: &[("a.yaml", GOOD_PROBE)],
        expected: &[
            "slo-probe.yaml:5:7: `properties.lnger.ms`: No such configuration property: \"lnger.ms\"",
            "slo-probe.yaml:6:7: `properties.security.protocol`: Invalid value \"SASL_SSSL\" for configuration property \"security.protocol\"",
            "slo-probe.yaml:7:22: `properties.sasl.password`: environment variable SLO_PROBE_TEST_UNSET_SECRET is not set",
            "slo-probe.yaml:8:17: `producer.acks`: Invalid value for configuration property \"request.required.acks\"",
        ],
    },
    Case {
        name: "agent values",
        agent: Some(
            "listen: nowhere\nwindow: 0s\nsite: 'eu west'\nclusters:\n  primary: { bootstrap_servers: '' }\n",
        ),
        probes: &[("a.yaml", "name: orders\n")],
        expected: &[
            "slo-probe.yaml:1:9: `listen`: `nowhere` is not an address like 0.0.0.0:9747, 127.0.0.1:9747, :9747 or localhost:9747",
            "slo-probe.yaml:2:9: `window` must be greater than zero, got `0s`",
            "slo-probe.yaml:3:7: `site` may only contain letters, digits, `.`, `_` and `-`, got `eu west`",
            "slo-probe.yaml:5:33: `bootstrap_servers` must not be empty",
        ],
    },
    Case {
        name: "tracing section",
        agent: Some(
            "tracing:\n  endpoint: http://c:4317\n  otlp_endpoint: collector:4317\n  protocol: http/json\n  sampling_ratio: 1.5\n  timeout: soon\n  headers: { x-api-key: '${SLO_PROBE_TEST_UNSET_KEY}' }\n",
        ),
        probes: &[("a.yaml", "name: orders\n")],
        expected: &[
            "slo-probe.yaml:2:3: unknown field `endpoint` in `tracing`; expected one of: otlp_endpoint, protocol, headers, timeout, sampling_ratio",
            "slo-probe.yaml:3:18: `tracing.otlp_endpoint` must be an http:// or https:// URL like http://otel-collector:4317, got `collector:4317`",
            "slo-probe.yaml:4:13: `tracing.protocol` must be `grpc` or `http/protobuf`, got `http/json`",
            "slo-probe.yaml:5:19: `tracing.sampling_ratio` must be a number from 0 to 1, got `1.5`",
            "slo-probe.yaml:6:12: `tracing.timeout` is not a duration (`soon`: expected number at 0); use e.g. 10s, 1m30s, 500ms",
            "slo-probe.yaml:7:25: `tracing.headers.x-api-key`: environment variable SLO_PROBE_TEST_UNSET_KEY is not set",
        ],
    },
    Case {
        name: "trace_url without a trace id or not a web URL",
        agent: Some("trace_url: https://grafana.example.com/explore\n"),
        probes: &[("a.yaml", "name: orders\n")],
        expected: &[
            "slo-probe.yaml:1:12: `trace_url` must be an http:// or https:// URL with `{trace_id}` where the trace id goes, like https://grafana.example.com/explore?traceId={trace_id}, got `https://grafana.example.com/explore`",
        ],
    },
    Case {
        name: "trace_url with a script scheme",
        agent: Some("trace_url: 'javascript:alert(\"{trace_id}\")'\n"),
        probes: &[("a.yaml", "name: orders\n")],
        expected: &[
            "slo-probe.yaml:1:12: `trace_url` must be an http:// or https:// URL with `{trace_id}` where the trace id goes, like https://grafana.example.com/explore?traceId={trace_id}, got `javascript:alert(\"{trace_id}\")`",
        ],
    },
    Case {
        name: "create_topic, id_from and expect",
        agent: Some(AGENT),
        probes: &[
            (
                "a.yaml",
                "name: a\ncreate_topic: { partitions: 0, replicas: 3 }\n",
            ),
            ("b.yaml", "name: b\ncreate_topic: maybe\n"),
            (
                "c.yaml",
                "name: c\nverify:\n  kafka:\n    topic: out\n    id_from: order.ref\n    expect:\n      amount: 42\n      /seq: { from: /nope }\n      /x: [1]\n",
            ),
        ],
        expected: &[
            "probes/a.yaml:2:29: `partitions` must be at least 1, got 0",
            "probes/a.yaml:2:32: unknown field `replicas` in create_topic, did you mean `replication_factor`?",
            "probes/b.yaml:2:15: `create_topic` must be true, false or a mapping, got `maybe`",
            "probes/c.yaml:5:14: `id_from` must be `header`, `header:<name>` or a JSON pointer like /order/id, got `order.ref`",
            "probes/c.yaml:7:7: `expect` must be a JSON pointer starting with `/`, got `amount`",
            "probes/c.yaml:8:21: `from` must point into the original record (v, id, probe, instance, site, partition, seq, scheduled_at_ns, tags, payload), got `/nope`",
            "probes/c.yaml:9:11: `expect./x` must be a value or `{ from: /field }`",
        ],
    },
    Case {
        name: "hop timestamps: where they may be, pointers and columns",
        agent: Some(AGENT),
        probes: &[
            (
                "a.yaml",
                "name: a\nverify:\n  kafka: { hop_timestamp: /processed_at }\n",
            ),
            (
                "b.yaml",
                "name: b\nverify:\n  kafka: { topic: out, hop_timestamp: processed_at }\n",
            ),
            (
                "c.yaml",
                "name: c\nverify:\n  postgres:\n    dsn: \"host=db\"\n    query: select id, t from sink where id = any($1)\n    hop_timestamp: t\n    timestamp_column: t\n",
            ),
            (
                "d.yaml",
                "name: d\nverify:\n  http:\n    url: \"http://s/{ids}\"\n    timestamp_pointer: written_at\n    timestamp_column: x\n    hop_timestamp: \"\"\n",
            ),
            (
                "e.yaml",
                "name: e\nverify:\n  postgres: { dsn: \"host=db\", query: \"select $1\", timestamp_column: \"\" , hop_timestamp: [1] }\n",
            ),
        ],
        expected: &[
            "probes/a.yaml:3:27: `verify.kafka.hop_timestamp` needs a downstream topic: records read back from the probe's own topic have no job between the acknowledgement and the read",
            "probes/b.yaml:3:39: `verify.kafka.hop_timestamp` must be a JSON pointer starting with `/`, got `processed_at`",
            "probes/c.yaml:7:23: `verify.postgres.timestamp_column` and `verify.postgres.hop_timestamp` name the same timestamp: the sink hop would always be zero; `hop_timestamp` is the job's, `timestamp_column` the sink's",
            "probes/d.yaml:5:24: `verify.http.timestamp_pointer` must be a JSON pointer starting with `/`, got `written_at`",
            "probes/d.yaml:6:5: unknown field `timestamp_column` in verify.http, did you mean `timestamp_pointer`?",
            "probes/d.yaml:7:20: `verify.http.hop_timestamp` must be a JSON pointer starting with `/`, got ``",
            "probes/e.yaml:3:69: `verify.postgres.timestamp_column` must name a column",
            "probes/e.yaml:3:89: `verify.postgres.hop_timestamp` must be a single value, not a list or mapping",
        ],
    },
    Case {
        name: "postgres sink: connection string, query, poll, pool, assertions, secrets",
        agent: Some(AGENT),
        probes: &[
            (
                "a.yaml",
                "name: pg\ntimeout: 2s\nverify:\n  postgres:\n    dsn: \"host=db port=notaport\"\n    query: select id from sink where id = 'x'\n    poll: 2s\n    pool_size: 0\n    expect: { team: payments, seq: { from: /nope } }\n",
            ),
            (
                "b.yaml",
                "name: pg2\nverify:\n  postgres: { dsn: x, dsn_file: /nonexistent, query: \"select 1 where $1\" }\n",
            ),
            (
                "c.yaml",
                "name: pg3\nverify:\n  postgres: { query: \"select $1\" }\n",
            ),
        ],
        expected: &[
            "probes/a.yaml:5:10: `verify.postgres.dsn` is not a valid connection string: invalid value for option `port`",
            "probes/a.yaml:6:12: `verify.postgres.query` must take the pending record ids as `$1`, e.g. `select id, amount from sink where id = any($1)`",
            "probes/a.yaml:7:11: `verify.postgres.poll` (2s) must be shorter than the probe's `timeout` (2s), or records are lost before they are looked for",
            "probes/a.yaml:8:16: `verify.postgres.pool_size` must be at least 1",
            "probes/a.yaml:9:44: `from` must point into the original record (v, id, probe, instance, site, partition, seq, scheduled_at_ns, tags, payload), got `/nope`",
            "probes/b.yaml:3:33: `verify.postgres` has both `dsn` and `dsn_file`; give one",
            "probes/c.yaml:3:15: missing field `dsn` (or `dsn_file`) in verify.postgres",
        ],
    },
    Case {
        name: "http sink: URL, method, ids placeholder, pointers, headers, one verifier",
        agent: Some(AGENT),
        probes: &[
            (
                "a.yaml",
                "name: search\nverify:\n  http:\n    url: ftp://search/_search\n    method: GET\n    body: '{\"ids\": 1}'\n    ids_pointer: hits\n    headers: { \"bad header\": x }\n    colour: red\n",
            ),
            (
                "b.yaml",
                "name: search2\nverify:\n  http: { url: \"http://search:9200/x/_search\" }\n  kafka: {}\n",
            ),
            (
                "c.yaml",
                "name: search3\nverify:\n  http: { url: \"http://search:9200/x/_search\", method: PUT }\n",
            ),
        ],
        expected: &[
            "probes/a.yaml:4:10: `verify.http.url` must be an http:// or https:// URL, got `ftp://search/_search`",
            "probes/a.yaml:6:11: `verify.http.body` needs `method: POST`",
            "probes/a.yaml:7:18: `verify.http.ids_pointer` must be a JSON pointer like /hits/hits (or empty for the whole response), got `hits`",
            "probes/a.yaml:8:14: `verify.http.headers.bad header` is not a valid HTTP header name and value",
            "probes/a.yaml:9:5: unknown field `colour` in verify.http; expected one of: url, method, body, headers, ids_pointer, id_pointer, max_response_bytes, poll, timeout, ca_file, expect, hop_timestamp, timestamp_pointer, ordered",
            "probes/b.yaml:3:7: `verify` must have exactly one of: kafka, postgres, http",
            "probes/c.yaml:3:16: `verify.http` must put the pending record ids into its `url` or `body`: use {ids} (comma-separated) or {ids_json} (a JSON array)",
            "probes/c.yaml:3:56: `verify.http.method` must be GET or POST, got `PUT`",
        ],
    },
    Case {
        name: "record formats: templates against schemas, placeholders, registries",
        agent: Some(AGENT),
        probes: &[
            (
                "s.avsc",
                r#"{"type": "record", "name": "Order", "fields": [
                    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
                    {"name": "seq", "type": "long"},
                    {"name": "amount", "type": "double"},
                    {"name": "note", "type": ["null", "string"], "default": null}]}"#,
            ),
            (
                "bad.avsc",
                r#"{"type": "record", "name": "X", "fields": [{"name": "a", "type": "lng"}]}"#,
            ),
            (
                "a.yaml",
                "name: orders\nrecord:\n  value:\n    id: \"{seq}\"\n    amount: \"{amout}\"\n    extra: 1\n  avro: { schema_file: s.avsc }\n",
            ),
            (
                "b.yaml",
                "name: orders2\nrecord:\n  key: \"k-{nope}\"\n  value:\n    id: \"{id}\"\n    seq: \"{id}\"\n  avro: { schema_file: s.avsc, schema_id: 3, registry: { url: \"http://r\" } }\n",
            ),
            (
                "c.yaml",
                "name: orders3\nrecord:\n  value: { a: 1 }\n  avro: { schema_file: bad.avsc }\nverify:\n  kafka: { topic: out, format: avro, id_from: /a }\n",
            ),
            (
                "e.yaml",
                "name: orders5\nrecord:\n  value:\n    id: \"{seq}\"\n    amount: high\n    extra: 1\n  avro: { schema_file: s.avsc }\n",
            ),
            (
                "d.yaml",
                "name: orders4\nrecord:\n  value: { a: \"{seq}\" }\nverify:\n  postgres: { dsn: \"host=x\", query: \"select id from t where id = any($1)\", expect: { a: { from: /b } } }\nslos: []\n",
            ),
            (
                "f.yaml",
                "name: orders6\nrecord:\n  key: \"k-{seq}\"\n  value: { a: \"{seq}\" }\nverify:\n  postgres: { dsn: \"host=x\", query: \"select id from t where id = any($1)\", expect: { a: { from: /a } } }\n",
            ),
        ],
        expected: &[
            "probes/a.yaml:5:13: `record.value`: unknown placeholder `{amout}`; known: {id}, {seq}, {probe}, {instance}, {site}, {partition}, {scheduled_at}, {scheduled_at_ms}, {scheduled_at_ns}, {payload}, {traceparent}, {trace_id}",
            "probes/b.yaml:3:8: `record.key`: unknown placeholder `{nope}`; known: {id}, {seq}, {probe}, {instance}, {site}, {partition}, {scheduled_at}, {scheduled_at_ms}, {scheduled_at_ns}, {payload}, {traceparent}, {trace_id}",
            "probes/b.yaml:7:56: `record.avro` has both `schema_id` and `registry`: give the id, or the registry to get it from",
            "probes/c.yaml:4:24: `record.avro.schema_file`: bad.avsc is not a valid Avro schema: Unknown primitive type: lng",
            "probes/d.yaml:5:97: `from` must point into the record the probe sends (`record.value`: /a), got `/b`",
            "probes/e.yaml:4:5: `record.value` does not fit the schema in s.avsc: missing required field `seq` (long) of record Order",
            "probes/e.yaml:4:9: `record.value` does not fit the schema in s.avsc: {seq} (a number) does not fit type string (uuid)",
            "probes/e.yaml:5:13: `record.value` does not fit the schema in s.avsc: text \"high\" does not fit type double",
            "probes/e.yaml:6:5: `record.value` does not fit the schema in s.avsc: record Order has no field `extra` (its fields: id, seq, amount, note)",
            "probes/f.yaml:3:6: a sink finds records by their id: put `{id}` in `record.value` (or `record.key`) so that the pipeline carries it into the sink",
        ],
    },
    Case {
        name: "transactional says how a job writes: not on the probe's own topic, not with the job's timestamp, not read uncommitted",
        agent: Some(
            "clusters:\n  primary:\n    bootstrap_servers: 127.0.0.1:9092\n    consumer: { isolation.level: read_uncommitted }\n",
        ),
        probes: &[
            (
                "a.yaml",
                "name: own\nverify:\n  kafka: { transactional: true }\n",
            ),
            (
                "b.yaml",
                "name: stamped\nverify:\n  kafka: { topic: out, id_from: header, transactional: true, hop_timestamp: /at }\n",
            ),
            (
                "c.yaml",
                "name: uncommitted\nverify:\n  kafka:\n    topic: out\n    id_from: header\n    transactional: true\n    ordered: maybe\n",
            ),
            (
                "d.yaml",
                "name: uncommitted2\nverify:\n  kafka: { topic: out, id_from: header, transactional: true }\n",
            ),
        ],
        expected: &[
            "probes/a.yaml:3:27: `verify.kafka.transactional` says how a job writes its output: the probe's own topic is written by the probe, outside transactions",
            "probes/b.yaml:3:77: `verify.kafka.hop_timestamp` with `transactional: true`: a record of a transactional output becomes readable when the job's transaction commits, not at the time the job wrote into it, so the pipeline hop runs to the read-back; remove `hop_timestamp`",
            "probes/c.yaml:7:14: `verify.kafka.ordered` must be true or false, got `maybe`",
            "probes/d.yaml:3:56: `verify.kafka.transactional` needs a consumer that reads only committed records, but cluster `primary` sets isolation.level=read_uncommitted: records of aborted transactions would count as delivered; remove it (librdkafka's default is read_committed)",
        ],
    },
    Case {
        name: "no probe files",
        agent: Some(AGENT),
        probes: &[],
        expected: &["probes: no probe files (*.yaml, *.yml) in this directory"],
    },
    Case {
        name: "a certificate file that is not there is found by check, not by smoke",
        agent: Some(
            "clusters:\n  primary:\n    bootstrap_servers: 127.0.0.1:9092\n    properties:\n      security.protocol: ssl\n      ssl.ca.location: /nonexistent/ca.pem\n      ssl.key.location: /\n",
        ),
        probes: &[("a.yaml", GOOD_PROBE)],
        expected: &[
            "slo-probe.yaml:6:7: `properties.ssl.ca.location`: cannot read `/nonexistent/ca.pem`: No such file or directory (os error 2); librdkafka reads it when the client starts, so `run` and `smoke` would fail there",
            "slo-probe.yaml:7:7: `properties.ssl.key.location`: `/` is a directory, not a file; librdkafka reads it when the client starts, so `run` and `smoke` would fail there",
        ],
    },
    Case {
        name: "a job that cannot be polled as written",
        agent: Some(AGENT),
        probes: &[
            ("a.yaml", "name: a\njob: { name: enrich }\n"),
            (
                "b.yaml",
                "name: b\njob: { flink: 'flink:8081', name: enrich, id: abc, poll: 50ms }\n",
            ),
            ("c.yaml", "name: c\njob: { flink: 'http://flink:8081' }\n"),
            ("d.yaml", "name: d\njob: orders-enrich\n"),
        ],
        expected: &[
            "probes/a.yaml:2:8: missing field `flink` in job",
            "probes/b.yaml:2:15: `job.flink` must be Flink's REST address, an http:// or https:// URL like http://flink-jobmanager:8081, got `flink:8081`",
            "probes/b.yaml:2:47: `job.id` must be a Flink job id (32 hex digits), got `abc`",
            "probes/b.yaml:2:47: `job` has both `name` and `id`: give the job's name (followed across resubmissions) or its id",
            "probes/b.yaml:2:58: `job.poll` must be at least 200ms: Flink's REST API serves its web UI and every other client too",
            "probes/c.yaml:2:8: `job` must name the job: `name` (Flink's pipeline.name, as its web UI shows it) or `id`",
            "probes/d.yaml:2:6: probe `d` names undefined job `orders-enrich`; the agent file's `jobs` define: none",
        ],
    },
];

fn tree(case: &Case) -> Tree {
    let t = Tree::new();
    if let Some(agent) = case.agent {
        t.write("slo-probe.yaml", agent);
    }
    std::fs::create_dir_all(t.path().join("probes")).unwrap();
    for (name, content) in case.probes {
        t.write(&format!("probes/{name}"), content);
    }
    t
}

#[test]
fn every_problem_is_reported_with_its_location() {
    let mut failures = Vec::new();
    for case in CASES {
        let t = tree(case);
        let out = run(t.path(), &["check"], &[]);
        let mut lines: Vec<&str> = out.stderr.lines().collect();
        let summary = lines.pop().unwrap_or_default();
        let n = case.expected.len();
        let want_summary = format!(
            "slo-probe: {n} configuration problem{}",
            if n == 1 { "" } else { "s" }
        );
        if out.code() != 78 || lines != case.expected || summary != want_summary {
            failures.push(format!(
                "case `{}`: exit {}\n  expected:\n    {}\n    {want_summary}\n  got:\n    {}",
                case.name,
                out.code(),
                case.expected.join("\n    "),
                out.stderr.trim_end().replace('\n', "\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn run_and_smoke_refuse_a_bad_config_the_same_way() {
    let case = &CASES[0];
    let t = tree(case);
    for cmd in [&["run"][..], &["smoke", "--rounds", "1"]] {
        let out = run(t.path(), cmd, &[]);
        assert_eq!(out.code(), 78, "{cmd:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with(case.expected[0]),
            "{cmd:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_good_config_passes_and_secrets_come_from_env_and_files() {
    let t = Tree::new();
    t.write("secret.txt", "from-a-file\n");
    t.write(
        "slo-probe.yaml",
        "site: eu-west-1a\nclusters:\n  primary:\n    bootstrap_servers: ${SLO_PROBE_TEST_BOOTSTRAP}\n    properties:\n      sasl.username: probe\n      sasl.password_file: secret.txt\n",
    );
    t.write("probes/orders.yaml", GOOD_PROBE);
    t.write("probes/b.yml", "name: other\n"); // cluster resolved: the only one
    let out = run(
        t.path(),
        &["check"],
        &[("SLO_PROBE_TEST_BOOTSTRAP", "kafka-1:9092")],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "configuration ok: 2 probe(s): other, orders; clusters: primary"
    );

    let secret_missing = Tree::new();
    secret_missing.write(
        "slo-probe.yaml",
        "clusters:\n  primary:\n    bootstrap_servers: h:1\n    properties: { sasl.password_file: /nonexistent/secret }\n",
    );
    secret_missing.write("probes/a.yaml", "name: a\n");
    let out = run(secret_missing.path(), &["check"], &[]);
    assert_eq!(out.code(), 78);
    assert!(
        out.stderr.starts_with(
            "slo-probe.yaml:4:39: `properties.sasl.password_file`: /nonexistent/secret: cannot read secret file: No such file or directory"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn with_json_logs_each_problem_is_one_json_line() {
    let case = &CASES[0];
    let t = tree(case);
    let out = run(t.path(), &["check", "--log-format", "json"], &[]);
    assert_eq!(out.code(), 78, "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    let l = &lines[0];
    assert_eq!(
        (
            &l["level"],
            &l["message"],
            &l["file"],
            &l["line"],
            &l["column"]
        ),
        (
            &"ERROR".into(),
            &"configuration problem".into(),
            &"probes/a.yaml".into(),
            &2.into(),
            &1.into()
        )
    );
    assert_eq!(
        l["problem"],
        "unknown field `intreval` in probe, did you mean `interval`?"
    );
}

#[test]
fn the_example_probes_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = run(
        std::path::Path::new(root),
        &["check", "--probes", "probes"],
        &[],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // the sink examples need their secrets from the environment, and say so when missing
    let sinks = ["check", "--probes", "probes/sinks"];
    let env = [
        (
            "ORDERS_PG_DSN",
            "host=warehouse dbname=orders user=slo_probe",
        ),
        ("SEARCH_URL", "https://search:9200"),
        ("SEARCH_API_KEY", "k"),
    ];
    let out = run(std::path::Path::new(root), &sinks, &env);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // the Flink job's probes (the README's guide), with nothing to note
    let flink = ["check", "--probes", "probes/flink"];
    let out = run(std::path::Path::new(root), &flink, &env[..1]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "3 probe(s): orders-enriched-exactly-once, orders-enriched, orders-warehouse"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(out.stderr, "", "nothing to note");
    let formats = ["check", "--probes", "probes/formats"];
    let registry = [("SCHEMA_REGISTRY_URL", "https://registry:8081")];
    let out = run(std::path::Path::new(root), &formats, &registry);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("1 probe(s): orders-avro"),
        "{}",
        out.stdout
    );
    let out = run(std::path::Path::new(root), &sinks, &env[1..]);
    assert_eq!(out.code(), 78);
    assert!(
        out.stderr
            .contains("`verify.postgres.dsn`: environment variable ORDERS_PG_DSN is not set"),
        "{}",
        out.stderr
    );
}

/// `SLO_PROBE_EMBEDDED=1` and the other ways people write a yes or a no are taken; anything
/// else is refused as a configuration error.
#[test]
fn embedded_from_the_environment_takes_one_yes_and_no() {
    let t = Tree::new();
    t.agent_file("127.0.0.1:9092");
    t.write("probes/orders.yaml", GOOD_PROBE);
    for value in ["1", "yes", "true", "on", "0", "no", "false", "off"] {
        let out = run(t.path(), &["check"], &[("SLO_PROBE_EMBEDDED", value)]);
        assert_eq!(out.status.code(), Some(0), "{value}: {}", out.stderr);
    }
    let out = run(t.path(), &["check"], &[("SLO_PROBE_EMBEDDED", "maybe")]);
    assert_eq!(out.status.code(), Some(78), "{}", out.stderr);
    assert!(out.stderr.contains("maybe"), "{}", out.stderr);
}

/// `--version` says what a bug report needs: the commit and librdkafka's version.
#[test]
fn version_names_the_commit_and_librdkafka() {
    let t = Tree::new();
    let out = run(t.path(), &["--version"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("unknown".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
    let expected = format!(
        "slo-probe {}\ncommit: {head}\nlibrdkafka: {librdkafka}\nfeatures: ",
        env!("CARGO_PKG_VERSION")
    );
    assert!(out.stdout.starts_with(&expected), "{}", out.stdout);
}

/// On Linux the process allocates with jemalloc, under malloc's own names (so librdkafka's C
/// allocations go to it too): jemalloc reads `MALLOC_CONF` only when its symbols are not
/// prefixed, and prints its statistics at exit when told to.
#[cfg(target_os = "linux")]
#[test]
fn the_process_allocates_with_jemalloc_under_mallocs_names() {
    let t = Tree::new();
    let out = run(
        t.path(),
        &["--version"],
        &[("MALLOC_CONF", "stats_print:true")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("Begin jemalloc statistics"),
        "{}",
        out.stderr
    );
    // The options the binary sets for itself (src/main.rs) are in effect.
    assert!(
        out.stderr.lines().any(|l| l.trim() == "opt.narenas: 1"),
        "{}",
        out.stderr
    );
}

/// `smoke --help` lists every exit code a CI job can see.
#[test]
fn smoke_help_lists_every_exit_code() {
    let t = Tree::new();
    let out = run(t.path(), &["smoke", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    for code in ["0 ", "1 ", "2 ", "78 ", "130 "] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(code)),
            "exit code {code}missing:\n{}",
            out.stdout
        );
    }
}

#[test]
fn a_bad_command_line_is_a_config_error() {
    let t = Tree::new();
    let out = run(t.path(), &["smoke", "--rounds", "0"], &[]);
    assert_eq!(out.code(), 78, "{}", out.stderr);
    let out = run(t.path(), &["--help"], &[]);
    assert_eq!(out.code(), 0);
    assert!(out.stdout.contains("smoke"));
}

/// `create_topic: false` is the documented default written out: it must load as the default,
/// never drop the probe (which once made `check` say "0 probe(s)" and `smoke` pass).
#[test]
fn create_topic_false_written_out_keeps_the_probe() {
    let t = Tree::new();
    t.write("slo-probe.yaml", AGENT);
    t.write("probes/a.yaml", "name: orders\ncreate_topic: false\n");
    t.write("probes/b.yaml", "name: billing\ncreate_topic: true\n");
    let out = run(t.path(), &["check"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("configuration ok: 2 probe(s): orders, billing; clusters: primary"),
        "{}",
        out.stdout
    );
}

/// No probe at all is never "ok": a configuration error naming where probes were looked for.
#[test]
fn no_probe_loaded_is_a_configuration_error_naming_the_paths() {
    let err = slo_probe::config::load(&slo_probe::config::Sources {
        agent_file: None,
        probe_paths: Vec::new(),
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "probes: no probe to run: no probe was loaded from anywhere (no probe path given); add a probe file (see probes/orders-freshness.yaml in the repository) or name one with --probes"
    );
    let t = Tree::new();
    let a = t.write("a/one.yaml", "name: one\n");
    let b = t.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    // one path loads, one has nothing: the empty one is still reported
    let out = run(
        t.path(),
        &["check", "--probes", a.to_str().unwrap(), "--probes", "b"],
        &[],
    );
    assert_eq!(out.code(), 78, "{}", out.stdout);
    assert!(
        out.stderr
            .starts_with("b: no probe files (*.yaml, *.yml) in this directory"),
        "{}",
        out.stderr
    );
    // the first run in an empty directory: where it looked, and how to say where to look
    let empty = Tree::new();
    let out = run(empty.path(), &["check"], &[]);
    assert_eq!(out.code(), 78, "{}", out.stdout);
    let first = out.stderr.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        format!(
            "probes: no such probe file or directory (in {}); name probe files or directories with --probes PATH or SLO_PROBE_PROBES (default: probes/), e.g. --probes probes/orders-freshness.yaml in a checkout of slo-probe",
            empty.path().canonicalize().unwrap().display()
        )
    );
}

/// Values from the environment are secrets: a problem with one shows the value as written in
/// the file (`${SEARCH_URL}`), never what it expanded to, nor a fragment of it.
#[test]
fn problems_show_values_as_written_never_expanded() {
    let t = Tree::new();
    t.write(
        "slo-probe.yaml",
        "clusters:\n  primary:\n    bootstrap_servers: h:1\n    properties: { security.protocol: \"${PROTOCOL}\" }\ntracing:\n  otlp_endpoint: ${OTLP_ENDPOINT}\n",
    );
    t.write(
        "probes/search.yaml",
        "name: search\nverify:\n  http: { url: \"${SEARCH_URL}\" }\n",
    );
    t.write(
        "probes/warehouse.yaml",
        "name: warehouse\nverify:\n  postgres: { dsn: \"${PG_DSN}\", query: \"select id from t where id = any($1)\" }\n",
    );
    let secrets = [
        (
            "SEARCH_URL",
            "ftp://reader:api-key-1234@search/_search?ids={ids}",
        ),
        (
            "OTLP_ENDPOINT",
            "ftp://tenant:otlp-token-5678@collector:4317",
        ),
        ("PG_DSN", "host=db user=probe password=pg pass-9012=x"),
        ("PROTOCOL", "SASL_SSL-secret-3456"),
    ];
    let out = run(t.path(), &["check"], &secrets);
    assert_eq!(out.code(), 78, "{}", out.stderr);
    for secret in [
        "api-key-1234",
        "otlp-token-5678",
        "pass-9012",
        "secret-3456",
    ] {
        assert!(
            !out.stderr.contains(secret),
            "`{secret}` shown:\n{}",
            out.stderr
        );
    }
    for expected in [
        "slo-probe.yaml:4:19: `properties.security.protocol`: Invalid value \"(hidden: from the environment or a file)\" for configuration property \"security.protocol\"",
        "slo-probe.yaml:6:18: `tracing.otlp_endpoint` must be an http:// or https:// URL like http://otel-collector:4317, got `${OTLP_ENDPOINT}`",
        "probes/search.yaml:3:16: `verify.http.url` must be an http:// or https:// URL, got `${SEARCH_URL}`",
        "probes/warehouse.yaml:3:20: `verify.postgres.dsn` is not a valid connection string: unknown option `(hidden: from the environment or a file)`",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing `{expected}` in:\n{}",
            out.stderr
        );
    }
}

/// `*_file` reads only regular files (or links to them, as Kubernetes mounts secrets), and
/// only so much: a device, a pipe or an oversized file is a located error, never a hang or a
/// runaway read. Agent and probe files are bounded too.
#[test]
fn files_are_read_only_when_regular_and_small() {
    let t = Tree::new();
    let fifo = t.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    t.write("big-secret", &"x".repeat(64 * 1024 + 1));
    t.write("real-secret", "s3cret\n");
    std::os::unix::fs::symlink(t.path().join("real-secret"), t.path().join("linked-secret"))
        .unwrap();
    t.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  primary:\n    bootstrap_servers: h:1\n    properties:\n      sasl.password_file: /dev/zero\n      ssl.key.password_file: {}\n      sasl.oauthbearer.client.secret_file: big-secret\n      ssl.keystore.password_file: linked-secret\n",
            fifo.display()
        ),
    );
    t.write("probes/a.yaml", "name: a\n");
    t.write(
        "probes/huge.yaml",
        &format!("name: huge\n# {}\n", "y".repeat(5 * 1024 * 1024)),
    );
    let mut check = common::Running::spawn(t.path(), &["check"], &[]);
    let status = check.wait_exit(common::GUARD);
    let stderr = check.seen.join("\n");
    assert_eq!(status.code(), Some(78), "{stderr}");
    for expected in [
        "slo-probe.yaml:5:27: `properties.sasl.password_file`: /dev/zero: cannot read secret file: not a regular file (a directory, device or pipe)",
        "`properties.ssl.key.password_file`: ",
        "fifo: cannot read secret file: not a regular file (a directory, device or pipe)",
        "slo-probe.yaml:7:44: `properties.sasl.oauthbearer.client.secret_file`: big-secret: cannot read secret file: it has 65537 bytes, more than the 65536 allowed",
        "probes/huge.yaml: cannot read probe file: it has 5242894 bytes, more than the 4194304 allowed",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("linked-secret"),
        "a link to a regular file is read: {stderr}"
    );
}

/// A probe that reads its records back from another topic with neither `id_from` nor
/// `expect` holds them to be exact copies: valid (a mirror writes copies), but a job's output
/// would then be `corrupt` record by record, so `check` says what it will do and what a job's
/// output needs. A mirror of the probe topic on another cluster, same name, is not noted.
#[test]
fn check_explains_a_downstream_topic_read_as_copies() {
    let t = Tree::new();
    t.write(
        "slo-probe.yaml",
        "clusters:\n  primary: { bootstrap_servers: 127.0.0.1:9092 }\n  replica: { bootstrap_servers: 127.0.0.1:9093 }\n",
    );
    t.write(
        "probes/enriched.yaml",
        "name: enriched\ncluster: primary\nverify:\n  kafka:\n    cluster: primary\n    topic: orders-enriched\n",
    );
    t.write(
        "probes/mirror.yaml",
        "name: mirror\ncluster: primary\nverify:\n  kafka: { cluster: replica }\n",
    );
    t.write(
        "probes/job.yaml",
        "name: job\ncluster: primary\nverify:\n  kafka: { topic: orders-enriched, id_from: header }\n",
    );
    let out = run(t.path(), &["check"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let notes: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        notes,
        [
            "probes/enriched.yaml:5:5: note: probe enriched reads its records back from `orders-enriched`, not from its own topic `synthetic-sla`, with neither `id_from` nor `expect`: each record there must be an exact copy of the one sent (the envelope and its digest, every header), as a mirror writes it. A job's output is not: say where its id is (`id_from`) and what must hold (`expect`), or every record is `corrupt`"
        ],
    );
}
