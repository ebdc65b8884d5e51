//! The enrichment pipeline of `probes/flink/` as tests and the benchmark harness run it: a
//! real broker (tansu) with the job's input and output topics, a real PostgreSQL with its upsert
//! table, the job's SQL (`orders-enrich.sql`) filled in for them, the example probes made
//! faster, `slo-probe smoke` on them, and what is read back independently of slo-probe: the
//! topics through the Java kafka-clients ([`super::flink::dump_topic`]), the table's rows, the
//! spans an OTLP receiver got.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::flink::{self, DumpedRecord, Isolation};
use super::infra::{Postgres, Tansu};
use super::otlp::{self, Collector};
use super::{GUARD, Running, Tree, create_topics};

/// Partitions of every topic of the pipeline.
pub const PARTITIONS: i32 = 3;

/// A connection to `pg`'s `postgres` database.
pub async fn pg(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// An enrichment pipeline's parts: a broker with the job's input and output topics, and a
/// database with the job's upsert table.
pub struct Enrichment {
    pub tansu: Tansu,
    pub postgres: Postgres,
    /// A connection to the database, for the test's own queries.
    pub db: tokio_postgres::Client,
}

/// The job's input topic, where the probes send.
pub const INPUT: &str = "orders-in";

impl Enrichment {
    /// A broker with `INPUT` and the `outputs` topics (3 partitions each), and a database with
    /// the upsert `tables` (orders_sink.sql, renamed).
    pub async fn start(outputs: &[&str], tables: &[&str]) -> Enrichment {
        let tansu = Tansu::start();
        let postgres = Postgres::start();
        let topics: Vec<(&str, i32)> = std::iter::once(INPUT)
            .chain(outputs.iter().copied())
            .map(|t| (t, PARTITIONS))
            .collect();
        create_topics(&tansu.bootstrap(), &topics).await;
        let db = pg(&postgres).await;
        let ddl = std::fs::read_to_string(example_path("orders_sink.sql")).unwrap();
        for table in tables {
            db.batch_execute(&ddl.replace("orders_sink", table))
                .await
                .unwrap();
        }
        Enrichment {
            tansu,
            postgres,
            db,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.tansu.bootstrap()
    }

    /// orders-enrich.sql as the tests run it: reading `INPUT` (consumer group `group`, also
    /// its transactions' prefix), writing `output` with `guarantee` and upserting into `table`.
    pub fn job(&self, group: &str, output: &str, guarantee: &str, table: &str) -> String {
        let text = std::fs::read_to_string(example_path("orders-enrich.sql")).unwrap();
        let jdbc = format!(
            "jdbc:postgresql://127.0.0.1:{}/postgres",
            self.postgres.port
        );
        flink::sql(
            &text,
            &[
                ("INPUT", INPUT),
                ("OUTPUT", output),
                ("BOOTSTRAP", &self.bootstrap()),
                ("GROUP", group),
                ("GUARANTEE", guarantee),
                ("JDBC_URL", &jdbc),
                ("TABLE", table),
                ("JDBC_USER", "postgres"),
                // the connector takes both or neither; the test server trusts loopback
                ("JDBC_PASSWORD", "unused"),
            ],
        )
    }

    /// A tree with an agent file on the broker (and OTLP to `otlp`, when given) and the
    /// example probes `probes` (file, substitutions), each run faster.
    pub fn tree(&self, otlp: Option<&str>, probes: &[(&str, &[(&str, &str)])]) -> Tree {
        let t = Tree::new();
        let tracing = otlp.map_or(String::new(), |addr| {
            format!("tracing:\n  otlp_endpoint: http://{addr}\n  protocol: http/protobuf\n")
        });
        t.write(
            "slo-probe.yaml",
            &format!(
                "site: flink-test\nclusters:\n  primary:\n    bootstrap_servers: {}\n{tracing}",
                self.bootstrap()
            ),
        );
        for (file, substitutions) in probes {
            t.write(
                &format!("probes/{file}"),
                &super::example(&format!("flink/{file}"), substitutions),
            );
        }
        t
    }

    /// `slo-probe smoke` of `t` for `rounds`, with JSON logs (info: events such as duplicates
    /// too) and its verdict in verdict.json.
    pub fn smoke(&self, t: &Tree, rounds: u32) -> (Running, PathBuf) {
        let dsn = self.postgres.dsn();
        let info = ["--log-level", "info,deadpool=error"];
        super::smoke_reporting(t, rounds, &info, &[("ORDERS_PG_DSN", &dsn)])
    }

    /// Every record of `topic`, read by the Java kafka-clients (`isolation`) up to sentinels
    /// written now (`round` tells the reads of one topic apart).
    pub async fn dump(&self, topic: &str, isolation: Isolation, round: u32) -> Vec<DumpedRecord> {
        let sentinel = format!("END-{round}");
        let bootstrap = self.bootstrap();
        flink::send_sentinels(&bootstrap, topic, PARTITIONS, &sentinel).await;
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            flink::dump_topic(
                &bootstrap,
                &topic,
                PARTITIONS,
                isolation,
                &sentinel,
                Duration::from_secs(60),
            )
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| !r.value.as_deref().unwrap_or_default().starts_with("END-"))
        .collect()
    }

    /// The record ids `probe` sent, as its records on the input topic name them (header
    /// `slo-probe-id`), read independently.
    pub async fn sent(&self, probe: &str, round: u32) -> BTreeSet<String> {
        let header = |r: &DumpedRecord, name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        self.dump(INPUT, Isolation::ReadCommitted, round)
            .await
            .iter()
            .filter(|r| header(r, "slo-probe-probe").as_deref() == Some(probe))
            .map(|r| header(r, "slo-probe-id").expect("every probe record has its id"))
            .collect()
    }
}

/// The job's time zone: the `TIMESTAMP(3)` it writes into PostgreSQL is UTC, as slo-probe
/// reads a `timestamp` column.
pub fn utc() -> Vec<(String, String)> {
    vec![("table.local-time-zone".into(), "UTC".into())]
}

pub fn example_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("probes/flink")
        .join(file)
}

/// Probe `name` of a verdict.
pub fn probe<'v>(verdict: &'v Value, name: &str) -> &'v Value {
    verdict["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no probe {name}: {verdict:#}"))
}

pub fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The job's output records of `ids`, by order id.
pub fn by_order(records: &[DumpedRecord], ids: &BTreeSet<String>) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in records {
        let v: Value = serde_json::from_str(r.value.as_deref().unwrap_or("null"))
            .unwrap_or_else(|e| panic!("{r:?}: {e}"));
        let Some(id) = v["order_id"]
            .as_str()
            .filter(|id| ids.contains(*id))
            .map(str::to_string)
        else {
            continue;
        };
        assert_eq!(
            r.key.as_deref(),
            Some(id.as_str()),
            "re-keyed by order id: {r:?}"
        );
        let mut v = v;
        v["_partition"] = r.partition.into();
        v["_offset"] = r.offset.into();
        v["_timestamp"] = r.timestamp.into();
        out.entry(id).or_default().push(v);
    }
    out
}

/// Copies of each record beyond its first: what the verifier must count as duplicates.
pub fn extra_copies(by_order: &BTreeMap<String, Vec<Value>>) -> u64 {
    by_order.values().map(|c| c.len() as u64 - 1).sum()
}

/// Flink's JSON timestamp (ISO-8601, `TIMESTAMP_LTZ(3)`), in milliseconds since the epoch.
pub fn iso_ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Each verification span's hop events, by record id: hop -> the time it ended (ns).
pub fn hop_ends(collector: &Collector) -> BTreeMap<String, BTreeMap<String, u64>> {
    let got = collector.got.lock().unwrap();
    let mut out = BTreeMap::new();
    for (_, span) in &got.spans {
        let a = otlp::attrs(span);
        let (Some(id), true) = (a.get("slo_probe.record_id"), span.kind == 5) else {
            continue; // only the verifications (CONSUMER spans)
        };
        let ends: BTreeMap<String, u64> = span
            .events
            .iter()
            .filter_map(|e| Some((e.name.strip_prefix("hop ")?.to_string(), e.time_unix_nano)))
            .collect();
        out.insert(id.clone(), ends);
    }
    out
}

/// Every hop of a verdict's probe: none came out negative beyond its resolution (one host, one
/// clock: there is no skew to see).
pub fn no_clock_skew(p: &Value) {
    for h in p["hops"]["hops"].as_array().unwrap() {
        assert_eq!(
            n(&h["clock_skew"]),
            0,
            "{} of {}: {h:#}",
            h["hop"],
            p["name"]
        );
    }
}

/// Waits until smoke's `round` (or a later one) settled.
pub fn settled_round(smoke: &mut Running, round: u64) {
    smoke.wait_line(GUARD, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["message"] == "round settled" && v["round"].as_u64().is_some_and(|r| r >= round)
        })
    });
}
