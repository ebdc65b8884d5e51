//! Against real Apache Flink 2.0 (a MiniCluster in a JVM of its own, tests/common/flink.rs)
//! between a real tansu broker and a real PostgreSQL: Flink SQL jobs reading JSON from Kafka,
//! writing to another topic and upserting into a table, stopped with savepoints, restored, and
//! crashed (SIGKILL of the JVM) then restored from their last retained checkpoint. Every test
//! asserts counts: what the job wrote is read back by an independent reader (the Java
//! kafka-clients) and from the table.
//!
//! The tests of this file share one Flink JVM ([`session`]) where they can: a JVM takes seconds
//! to start and hundreds of MB to run. A test that kills a JVM starts one of its own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::enrichment::{
    Enrichment, INPUT, PARTITIONS, by_order, extra_copies, hop_ends, iso_ms, n, no_clock_skew, pg,
    probe, settled_round, utc,
};
use common::flink::{self, CheckpointMode, DumpedRecord, FlinkSession, Isolation, Job, JobOptions};
use common::infra::{Postgres, Tansu};
use common::ingress::FlinkIngress;
use common::otlp::Collector;
use common::pipe::Pipe;
use common::{GUARD, create_topics, eventually, verdict};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

/// The Flink JVM shared by this file's tests (started on first use, ends with the process).
fn session() -> &'static FlinkSession {
    static SESSION: OnceLock<FlinkSession> = OnceLock::new();
    SESSION.get_or_init(FlinkSession::start)
}

/// A pipeline of the kind slo-probe watches: JSON records from `${IN}` to `${OUT}` (keyed by
/// `id`, carrying the source record's timestamp) and upserted into PostgreSQL's `${TABLE}` by
/// `id`, in one job (one source, two sinks).
const PIPELINE: &str = r#"
CREATE TABLE src (
  id BIGINT,
  seq BIGINT,
  payload STRING,
  ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL
) WITH (
  'connector' = 'kafka',
  'topic' = '${IN}',
  'properties.bootstrap.servers' = '${BOOTSTRAP}',
  'properties.group.id' = '${GROUP}',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'json'
);
CREATE TABLE out_topic (
  id BIGINT,
  seq BIGINT,
  payload STRING,
  -- written: the record keeps the source's timestamp (else the sink's send time)
  ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp'
) WITH (
  'connector' = 'kafka',
  'topic' = '${OUT}',
  'properties.bootstrap.servers' = '${BOOTSTRAP}',
  'key.format' = 'json',
  'key.fields' = 'id',
  'value.format' = 'json',
  'sink.delivery-guarantee' = '${GUARANTEE}'
);
CREATE TABLE pg_records (
  id BIGINT,
  seq BIGINT,
  payload STRING,
  PRIMARY KEY (id) NOT ENFORCED
) WITH (
  'connector' = 'jdbc',
  'url' = '${JDBC_URL}',
  'table-name' = '${TABLE}',
  'username' = 'postgres',
  -- the connector takes both or neither; the test server trusts loopback and ignores it
  'password' = 'unused',
  'sink.buffer-flush.interval' = '100ms'
);
EXECUTE STATEMENT SET BEGIN
INSERT INTO out_topic SELECT id, seq, payload, ts FROM src;
INSERT INTO pg_records SELECT id, seq, payload FROM src;
END;
"#;

/// The source timestamp of record `id`: a fixed past time plus its id, so that the output's
/// timestamps can be checked to be the source's.
const T0_MS: i64 = 1_700_000_000_000;

/// Writes records `ids` (JSON `{"id", "seq", "payload"}`, key the id) to `topic`, each with
/// timestamp `T0_MS + id`, and waits for every acknowledgement.
async fn produce(bootstrap: &str, topic: &str, ids: std::ops::Range<i64>) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for id in ids {
        let key = id.to_string();
        let value = format!(r#"{{"id":{id},"seq":{id},"payload":"p-{id}"}}"#);
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .timestamp(T0_MS + id);
        let delivery = producer
            .send_result(record)
            .unwrap_or_else(|(e, _)| panic!("produce {id}: {e}"));
        deliveries.push((id, delivery));
    }
    for (id, delivery) in deliveries {
        tokio::time::timeout(Duration::from_secs(30), delivery)
            .await
            .unwrap_or_else(|_| panic!("record {id} not acknowledged"))
            .unwrap()
            .unwrap_or_else(|(e, _)| panic!("produce {id}: {e}"));
    }
}

/// Waits until the table holds `n` rows (the JDBC sink flushes every 100 ms).
async fn wait_rows(db: &tokio_postgres::Client, table: &str, n: i64) {
    eventually(&format!("{n} rows in {table}"), || async {
        let row = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap();
        (row.get::<_, i64>(0) == n).then_some(())
    })
    .await
}

/// The ids of the job's records in a dump (values that are sentinels of earlier reads left
/// out), counted: id -> times seen. Checks each record's key, value and timestamp on the way.
fn ids(records: &[DumpedRecord]) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for r in records {
        let value = r.value.as_deref().unwrap_or_default();
        if value.starts_with("END-") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(value).unwrap_or_else(|e| panic!("{r:?}: {e}"));
        let id = v["id"].as_i64().unwrap();
        assert_eq!(v["seq"], id, "{r:?}");
        assert_eq!(v["payload"], format!("p-{id}"), "{r:?}");
        assert_eq!(r.key.as_deref(), Some(format!(r#"{{"id":{id}}}"#).as_str()));
        // the sink wrote the source record's timestamp (the METADATA column)
        assert_eq!(
            (r.timestamp, r.timestamp_type.as_str()),
            (T0_MS + id, "CreateTime"),
            "{r:?}"
        );
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

/// Writes the sentinel `END-<round>` to every partition of `out`, reads `out` up to it and
/// returns the job's ids, counted. The job must have stopped (its sink flushed) first.
async fn read_out(bootstrap: &str, out: &str, round: u32) -> BTreeMap<i64, usize> {
    let sentinel = format!("END-{round}");
    flink::send_sentinels(bootstrap, out, PARTITIONS, &sentinel).await;
    let (bootstrap, out) = (bootstrap.to_string(), out.to_string());
    let records = tokio::task::spawn_blocking(move || {
        flink::dump_topic(
            &bootstrap,
            &out,
            PARTITIONS,
            Isolation::ReadCommitted,
            &sentinel,
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    ids(&records)
}

/// The table's rows: every id once, its seq the id.
async fn check_table(db: &tokio_postgres::Client, table: &str, n: i64) {
    let rows = db
        .query(
            &format!("SELECT id, seq, payload FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i64, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i64, i64, String)> = (0..n).map(|i| (i, i, format!("p-{i}"))).collect();
    assert_eq!(got, want);
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{} MiB", k / 1024))
}

/// One job through a savepoint stop and restore, then a crash of its JVM and a restore from
/// its last retained checkpoint in another JVM: nothing lost, nothing duplicated that the
/// checkpoints had covered, one row per id in the upsert table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_survives_a_savepoint_restore_and_a_killed_jvm() {
    let test_start = Instant::now();
    // the JVM that will be killed, started while the broker and the database come up
    let doomed = std::thread::spawn(FlinkSession::start);
    let tansu = Tansu::start();
    let bootstrap = tansu.bootstrap();
    let postgres = Postgres::start();
    create_topics(&bootstrap, &[("in", PARTITIONS), ("out", PARTITIONS)]).await;
    let db = pg(&postgres).await;
    db.batch_execute(
        "CREATE TABLE records (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, payload TEXT NOT NULL)",
    )
    .await
    .unwrap();
    let doomed = doomed.join().unwrap();
    eprintln!("JVM start to READY: {:?}", doomed.ready_in());

    let jdbc = format!("jdbc:postgresql://127.0.0.1:{}/postgres", postgres.port);
    let script = flink::sql(
        PIPELINE,
        &[
            ("IN", "in"),
            ("OUT", "out"),
            ("BOOTSTRAP", &bootstrap),
            ("GROUP", "flink-pipeline"),
            ("GUARANTEE", "at-least-once"),
            ("JDBC_URL", &jdbc),
            ("TABLE", "records"),
        ],
    );
    let options = JobOptions {
        checkpoint_interval: Some(Duration::from_millis(500)),
        mode: CheckpointMode::AtLeastOnce,
        extra: utc(),
        ..JobOptions::default()
    };

    // 1. a first run, stopped with a savepoint
    let first = doomed.submit("pipeline", &script, &options);
    eprintln!(
        "submit to RUNNING (first job of a JVM): {:?}",
        first.running_in()
    );
    // the shared JVM, for the restore after the crash, starts meanwhile
    let warm = std::thread::spawn(session);
    produce(&bootstrap, "in", 0..100).await;
    wait_rows(&db, "records", 100).await;
    let t = Instant::now();
    let savepoint = first.stop_with_savepoint();
    eprintln!("stop with savepoint: {:?}", t.elapsed());
    assert!(savepoint.join("_metadata").is_file(), "{savepoint:?}");
    let seen = read_out(&bootstrap, "out", 1).await;
    assert_eq!(
        seen,
        (0..100).map(|i| (i, 1)).collect::<BTreeMap<_, _>>(),
        "after the first run"
    );

    // 2. records written while no job runs, read by the job restored from the savepoint
    produce(&bootstrap, "in", 100..200).await;
    let t = Instant::now();
    let second = doomed.submit(
        "pipeline",
        &script,
        &JobOptions {
            restore_from: Some(savepoint),
            ..options.clone()
        },
    );
    eprintln!(
        "restore from the savepoint to RUNNING: {:?}",
        second.running_in()
    );
    wait_rows(&db, "records", 200).await;
    eprintln!(
        "restore from the savepoint to every record in PostgreSQL: {:?}",
        t.elapsed()
    );
    // A checkpoint begun after every record was processed. The count reported may lag one
    // checkpoint behind (the runner polls every 50 ms, they complete 500 ms apart); of the two
    // after the true count, the first may have begun before, the second begins after.
    let covering = second.completed_checkpoints() + 3;
    second.wait_checkpoints(covering);
    let doomed_rss = doomed.rss_kib();

    // 3. a crash: SIGKILL of the JVM; records written meanwhile; a restore in another JVM from
    // the last checkpoint retained on disk
    let t = Instant::now();
    doomed.kill();
    produce(&bootstrap, "in", 200..300).await;
    let checkpoint = second
        .latest_checkpoint()
        .expect("a retained checkpoint after the kill");
    let shared = warm.join().unwrap();
    eprintln!("shared JVM start to READY: {:?}", shared.ready_in());
    let third = shared.submit(
        "pipeline",
        &script,
        &JobOptions {
            restore_from: Some(checkpoint.clone()),
            ..options.clone()
        },
    );
    eprintln!(
        "kill to restored job RUNNING (from {}): {:?}; its submit to RUNNING: {:?}",
        checkpoint.display(),
        t.elapsed(),
        third.running_in()
    );
    wait_rows(&db, "records", 300).await;
    eprintln!("kill to every record in PostgreSQL: {:?}", t.elapsed());
    third.stop_with_savepoint(); // flushes the Kafka sink; leaves the shared JVM empty
    let seen = read_out(&bootstrap, "out", 2).await;
    let missing: Vec<i64> = (0..300).filter(|i| !seen.contains_key(i)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(seen.keys().all(|i| (0..300).contains(i)), "{seen:?}");
    // at-least-once: a replay after the crash may duplicate, but only what came after the
    // checkpoint restored, and it covered every record before the crash
    let duplicated: Vec<(i64, usize)> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, n)| (*i, *n))
        .collect();
    eprintln!(
        "duplicates in the topic after the crash: {}",
        duplicated.len()
    );
    assert!(
        duplicated.iter().all(|(i, _)| *i >= 200),
        "records covered by the checkpoint replayed: {duplicated:?}"
    );
    check_table(&db, "records", 300).await;

    eprintln!(
        "RSS: killed JVM {}, shared JVM {}; test wall time {:?}",
        mib(doomed_rss),
        mib(shared.rss_kib()),
        test_start.elapsed()
    );
}

/// A script Flink rejects fails the submit with Flink's own message, and the session goes on
/// serving (its REST API answers, its slots are all there).
#[tokio::test]
async fn a_rejected_script_fails_with_flinks_message() {
    let bad = "INSERT INTO nowhere SELECT 1;\n";
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        session().submit("rejected", bad, &JobOptions::default())
    }))
    .expect_err("a submit of a script Flink rejects fails");
    let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("did not start: ERROR rejected-") && message.contains("nowhere"),
        "{message}"
    );
    let rest = session().rest_url().strip_prefix("http://").unwrap();
    let (status, body) = common::get(rest, "/overview").await;
    assert_eq!(status, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["flink-version"], "2.0.0", "{body}");
    assert_eq!(overview["slots-total"], 8, "{body}");
}

/// The shaped probes through the enrichment job (validating, enriching, re-keying by order id;
/// at-least-once, checkpointing every second), verified on its output topic and in its
/// PostgreSQL table through Flink's JDBC sink, each checked against what is independent of
/// slo-probe: the output read by the Java kafka-clients, the table's rows, and Flink's own
/// timestamps (the hops end exactly at them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_through_the_enrichment_job_are_verified_on_its_topic_and_in_its_table() {
    const OUTPUT: &str = "orders-enriched";
    let e = Enrichment::start(&[OUTPUT], &["orders_sink"]).await;
    let job = enrich(&e, "enrich", OUTPUT, "orders_sink");
    let collector = Collector::default();
    let otlp = collector.http().await;
    // both name the job: one poller for the two
    let (on_topic, in_table) = (
        naming_job("orders-enriched", job.name()),
        naming_job("orders-warehouse", job.name()),
    );
    let faster: &[(&str, &str)] = &[
        (&on_topic.0, &on_topic.1),
        ("interval: 10s", "interval: 250ms"),
        ("timeout: 60s", "timeout: 20s"),
    ];
    let warehouse: &[(&str, &str)] = &[
        (&in_table.0, &in_table.1),
        ("interval: 10s", "interval: 250ms"),
        ("timeout: 60s", "timeout: 20s"),
        ("poll: 1s", "poll: 100ms"),
    ];
    let t = e.tree(
        Some(&otlp),
        &[
            ("orders-enriched.yaml", faster),
            ("orders-warehouse.yaml", warehouse),
        ],
    );
    const ROUNDS: u32 = 16;
    let (mut smoke, report) = e.smoke(&t, ROUNDS);
    let code = smoke.wait_exit(GUARD).code();
    let v = verdict(&report);
    assert_eq!(code, Some(0), "{v:#}");
    let sent_each = u64::from(ROUNDS) * PARTITIONS as u64;
    collector.wait_spans(2 * 2 * sent_each as usize).await;
    job.stop_with_savepoint(); // its sinks flushed

    // On the topic: every order once, enriched, re-keyed; slo-probe's counts are the reader's.
    let enriched = probe(&v, "orders-enriched");
    let ids = e.sent("orders-enriched", 1).await;
    assert_eq!(ids.len() as u64, sent_each);
    let out = by_order(&e.dump(OUTPUT, Isolation::ReadCommitted, 1).await, &ids);
    assert_eq!(out.len(), ids.len(), "every order came out");
    assert_eq!(extra_copies(&out), 0);
    for copies in out.values() {
        let o = &copies[0];
        assert_eq!(
            (o["amount"].as_f64(), o["fee"].as_f64()),
            (Some(42.5), Some(0.85)),
            "{o}"
        );
    }
    let r = &enriched["records"];
    assert_eq!(
        (n(&r["sent"]), n(&r["ok"])),
        (sent_each, sent_each),
        "{enriched:#}"
    );
    let events = &enriched["events"];
    assert_eq!(n(&events["duplicates"]), 0, "{enriched:#}");
    // re-keyed: one input partition's orders on every output partition, in no common order;
    // only the orders that share an output partition are held to theirs
    let spread: BTreeSet<i64> = out
        .values()
        .map(|c| c[0]["_partition"].as_i64().unwrap())
        .collect();
    assert_eq!(
        spread.len(),
        PARTITIONS as usize,
        "re-keyed over every partition"
    );
    assert_eq!(n(&events["reordered"]), 0, "{enriched:#}");

    // In the table: one row per order, the numeric amount and fee as the job wrote them.
    let warehouse = probe(&v, "orders-warehouse");
    let table_ids = e.sent("orders-warehouse", 2).await;
    let rows =
        e.db.query(
            "select order_id, amount::text, fee::text, sequence, \
             (extract(epoch from processed_at) * 1e6)::bigint, \
             (extract(epoch from written_at) * 1e6)::bigint from orders_sink",
            &[],
        )
        .await
        .unwrap();
    let rows: BTreeMap<String, (String, String, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(4), r.get(5))))
        .filter(|(id, _): &(String, _)| table_ids.contains(id))
        .collect();
    assert_eq!(rows.len(), table_ids.len(), "a row per order");
    assert!(
        rows.values()
            .all(|(a, f, _, _)| a == "42.50" && f == "0.8500")
    );
    let r = &warehouse["records"];
    assert_eq!(
        (n(&r["sent"]), n(&r["ok"])),
        (sent_each, sent_each),
        "{warehouse:#}"
    );

    // One host, one clock: no hop is skewed (a job that reads a record before its
    // acknowledgement reaches the probe, a TIMESTAMP(3) in a microsecond column, are not).
    no_clock_skew(enriched);
    no_clock_skew(warehouse);

    // The hops end at Flink's own timestamps: the job's processing time written into each
    // order (on the topic, and into the row), and the database's insert time.
    let ends = hop_ends(&collector);
    for (id, copies) in &out {
        let at = iso_ms(&copies[0]["processed_at"]);
        let e = &ends[id];
        assert_eq!(e["pipeline"], at as u64 * 1_000_000, "order {id}: {e:?}");
    }
    for (id, (_, _, processed_us, written_us)) in &rows {
        let e = &ends[id];
        assert_eq!(
            e["pipeline"],
            *processed_us as u64 * 1_000,
            "order {id}: {e:?}"
        );
        assert_eq!(e["sink"], *written_us as u64 * 1_000, "order {id}: {e:?}");
    }
    // A healthy job's records carry nothing extra: no failure, no job event on any span; the
    // verdict shows the job running.
    for p in [enriched, warehouse] {
        assert_eq!(p["failed_records"], serde_json::json!([]), "{p:#}");
        let j = &p["job"];
        assert_eq!(
            (
                j["name"].as_str(),
                j["state"].as_str(),
                j["running"].as_bool()
            ),
            (Some(job.name()), Some("RUNNING"), Some(true)),
            "{j:#}"
        );
        assert_eq!((n(&j["poll_errors"]), n(&j["restarts"])), (0, 0), "{j:#}");
        assert!(n(&j["checkpoints_completed"]) > 0, "{j:#}");
    }
    {
        let got = collector.got.lock().unwrap();
        let with_job = got
            .spans
            .iter()
            .filter(|(_, s)| s.events.iter().any(|e| e.name == "job"))
            .count();
        assert_eq!(
            with_job, 0,
            "no span of a healthy job's records carries a job event"
        );
    }
    let hop_names = |p: &Value| -> Vec<String> {
        p["hops"]["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hop"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(hop_names(enriched), ["produce", "pipeline", "read"]);
    assert_eq!(
        hop_names(warehouse),
        ["produce", "pipeline", "sink", "read"]
    );
}

/// How most tests run the enrichment job: at least once, a checkpoint a second, UTC.
fn at_least_once() -> JobOptions {
    JobOptions {
        checkpoint_interval: Some(Duration::from_secs(1)),
        mode: CheckpointMode::AtLeastOnce,
        extra: utc(),
        ..JobOptions::default()
    }
}

/// The enrichment job `name` writing `output` and `table`, at least once, in the shared session.
fn enrich(e: &Enrichment, name: &str, output: &str, table: &str) -> Job {
    session().submit(
        name,
        &e.job(name, output, "at-least-once", table),
        &at_least_once(),
    )
}

/// Probe `probe` names job `job` of the shared session, polled every 200 ms: the substitution
/// that says so in its file.
fn naming_job(probe: &str, job: &str) -> (String, String) {
    naming_job_at(probe, session().rest_url(), job)
}

/// Probe `probe` names job `job` of the Flink REST API at `url`, polled every 200 ms.
fn naming_job_at(probe: &str, url: &str, job: &str) -> (String, String) {
    (
        format!("name: {probe}\n"),
        format!("name: {probe}\njob: {{ flink: '{url}', name: {job}, poll: 200ms }}\n"),
    )
}

/// A strict source (`json.fail-on-missing-field`) meeting a misshapen probe (its orders lack
/// `currency`): the job fails on the first of them and restarts into the same record, and no
/// order comes out. Every record the probe sent is `lost`, exactly, and the job's own account
/// (its exceptions, through Flink's REST API) says why, quoting one of the probe's orders. The
/// probe names the job: each lost record says it was lost while the job was RESTARTING, how
/// often it restarted and the exception, in the verdict, its log line and the failure's
/// sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misshapen_probe_stops_a_strict_job_and_every_record_is_lost() {
    const OUTPUT: &str = "orders-strict";
    let e = Enrichment::start(&[OUTPUT], &["orders_strict"]).await;
    let job = session().submit(
        "strict",
        &e.job("strict", OUTPUT, "at-least-once", "orders_strict"),
        &JobOptions {
            checkpoint_interval: Some(Duration::from_secs(1)),
            restart: Some((1000, Duration::from_millis(500))),
            // Flink's default failover: a failure restarts the failed region, and its REST
            // API shows the job RUNNING more often than not (it describes the job as it was up
            // to 3 s ago): the failures it lists make it a restart
            extra: utc(),
            ..JobOptions::default()
        },
    );
    let named = naming_job("orders-enriched", job.name());
    let strict = job.name();
    let misshapen: &[(&str, &str)] = &[
        (&named.0, &named.1),
        ("interval: 10s", "interval: 250ms"),
        ("timeout: 60s", "timeout: 5s"),
        ("    currency: EUR\n", ""),
        ("      /currency: { from: /currency }\n", ""),
        ("topic: orders-enriched", "topic: orders-strict"),
    ];
    let collector = Collector::default();
    let otlp = collector.http().await;
    let t = e.tree(Some(&otlp), &[("orders-enriched.yaml", misshapen)]);
    // `check` cannot know what the job parses: the probe is valid
    assert_eq!(common::run(t.path(), &["check"], &[]).code(), 0);
    let (mut smoke, report) = e.smoke(&t, 8);
    assert_eq!(smoke.wait_exit(GUARD).code(), Some(1));
    let v = verdict(&report);
    let p = probe(&v, "orders-enriched");
    let r = &p["records"];
    assert_eq!(n(&r["sent"]), 8 * PARTITIONS as u64, "{p:#}");
    assert_eq!(n(&r["lost"]), n(&r["sent"]), "{p:#}");
    // Kafka, job or sink: the job. Every lost record was in flight while it restarted.
    let failed = p["failed_records"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{p:#}");
    let lost = &failed[0];
    assert_eq!(
        (lost["outcome"].as_str(), n(&lost["records"])),
        (Some("lost"), n(&r["sent"]))
    );
    let while_ = lost["job"].as_str().unwrap();
    assert!(
        while_.starts_with(&format!("{strict} was RESTARTING (")),
        "{while_}"
    );
    assert!(
        while_.contains(" failures") && while_.contains("Some field is missing"),
        "{while_}"
    );
    for e in lost["examples"].as_array().unwrap() {
        let j = e["job"].as_str().unwrap();
        assert!(j.contains("RESTARTING") || j.contains("FAILING"), "{e:#}");
    }
    // and where its output stands: the job wrote nothing
    assert_eq!(
        lost["output"],
        "nothing was written to orders-strict while the probe ran"
    );
    let summary = lost["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("; while {strict} was RESTARTING")),
        "{summary}"
    );
    assert!(
        v["probes"][0]["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == summary),
        "{p:#}"
    );
    let last = p["job"]["last_exception"].as_str().unwrap();
    assert!(
        last.starts_with("JsonParseException: Some field is missing"),
        "{last}"
    );
    // and each lost record's verification span carries it as an event
    collector.wait_spans(2 * n(&r["sent"]) as usize).await;
    {
        let got = collector.got.lock().unwrap();
        let verifications: Vec<_> = got
            .spans
            .iter()
            .filter(|(_, s)| s.kind == 5)
            .map(|(_, s)| s)
            .collect();
        assert_eq!(verifications.len() as u64, n(&r["sent"]));
        for s in verifications {
            let e = s
                .events
                .iter()
                .find(|e| e.name == "job")
                .unwrap_or_else(|| panic!("{s:?}"));
            let a: BTreeMap<String, String> = e
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), common::otlp::text(kv)))
                .collect();
            assert_eq!(a["slo_probe.flink_job"], strict);
            assert_eq!(a["slo_probe.job.state"], "RESTARTING", "{a:?}");
            assert!(
                a["exception.message"].contains("Some field is missing"),
                "{a:?}"
            );
        }
    }
    // and the records' log lines say it too
    let lines = smoke.events("record lost");
    assert_eq!(lines.len() as u64, n(&r["lost"]));
    assert!(
        lines.iter().all(|l| l["job"]
            .as_str()
            .is_some_and(|j| j.contains(&format!("{strict} was")))),
        "{lines:?}"
    );
    // The job: failing, restarting into the same record, quoting it.
    let rest = session()
        .rest_url()
        .strip_prefix("http://")
        .unwrap()
        .to_string();
    let (status, body) = common::get(&rest, &format!("/jobs/{}/exceptions", job.id())).await;
    assert_eq!(status, 200, "{body}");
    job.cancel();
    let ids = e.sent("orders-enriched", 1).await;
    let failures: Value = serde_json::from_str(&body).unwrap();
    let entries = failures["exceptionHistory"]["entries"].as_array().unwrap();
    assert!(entries.len() > 1, "restarted into the same record: {body}");
    for entry in entries {
        let trace = entry["stacktrace"].as_str().unwrap();
        assert!(
            trace.contains("Some field is missing in the JSON data"),
            "{trace}"
        );
        assert!(ids.iter().any(|id| trace.contains(id.as_str())), "{trace}");
    }
    let out = by_order(&e.dump(OUTPUT, Isolation::ReadCommitted, 1).await, &ids);
    assert!(out.is_empty(), "{out:?}");
}

/// A gate on a pipeline whose job is not running: `smoke` exits 2 at once (before the first
/// of its 100 rounds of 10 s could settle), naming the job and its state, and each probe
/// through it says so. A job name that matches none is the same, naming the jobs there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_is_not_running_fails_smoke_at_once_naming_it() {
    const OUTPUT: &str = "orders-cancelled";
    let e = Enrichment::start(&[OUTPUT], &["orders_cancelled"]).await;
    let job = session().submit(
        "cancelled",
        &e.job("cancelled", OUTPUT, "at-least-once", "orders_cancelled"),
        &JobOptions {
            extra: utc(),
            ..JobOptions::default()
        },
    );
    job.cancel();
    let cancelled = job.name();
    for (name, expected) in [
        (cancelled, format!("job {cancelled} is not RUNNING: CANCELED since ")),
        ("no-such-job", "job no-such-job is not RUNNING: its state could not be read: no job named `no-such-job` at ".to_string()),
    ] {
        let named = naming_job("orders-enriched", name);
        let t = e.tree(
            None,
            &[(
                "orders-enriched.yaml",
                &[
                    (&named.0, &named.1),
                    ("topic: orders-enriched", "topic: orders-cancelled"),
                ],
            )],
        );
        let (mut smoke, report) = e.smoke(&t, 100);
        assert_eq!(smoke.wait_exit(GUARD).code(), Some(2), "{name}");
        let v = verdict(&report);
        assert_eq!(v["result"], "COULD_NOT_RUN", "{v:#}");
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.starts_with(&expected), "{reason}");
        let p = probe(&v, "orders-enriched");
        let errors = p["errors"].as_array().unwrap();
        assert!(
            errors.iter().any(|e| e.as_str().unwrap().starts_with(&format!("its job {name} is not RUNNING"))),
            "{p:#}"
        );
        assert!(n(&p["rounds"]) <= 1, "{p:#}");
        let said = smoke.events("job not running");
        assert_eq!(said.len(), 1, "{:?}", smoke.events(""));
        assert_eq!(said[0]["flink_job"], name);
        if name == cancelled {
            assert_eq!(p["job"]["state"], "CANCELED", "{p:#}");
        } else {
            assert_eq!(p["job"]["state"], Value::Null, "{p:#}");
            assert!(reason.contains("its jobs: ") && reason.contains(cancelled), "{reason}");
        }
    }
}

/// Flink's REST API stops answering mid-run (the host in front of it goes away): the poller
/// counts it and says so, never calls the job healthy, and the probe goes on judging its
/// records, every one of them `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flink_rest_api_that_stops_answering_is_reported_while_records_are_judged() {
    const OUTPUT: &str = "orders-unpolled";
    let e = Enrichment::start(&[OUTPUT], &["orders_unpolled"]).await;
    let job = enrich(&e, "unpolled", OUTPUT, "orders_unpolled");
    let rest = session().rest_url().strip_prefix("http://").unwrap();
    let pipe = Pipe::start(rest.parse().unwrap()).await;
    let named = naming_job_at(
        "orders-enriched",
        &format!("http://127.0.0.1:{}", pipe.port),
        job.name(),
    );
    let t = e.tree(
        None,
        &[(
            "orders-enriched.yaml",
            &[
                (&named.0, &named.1),
                ("interval: 10s", "interval: 250ms"),
                ("timeout: 60s", "timeout: 20s"),
                ("topic: orders-enriched", "topic: orders-unpolled"),
            ],
        )],
    );
    const ROUNDS: u32 = 12;
    let (mut smoke, report) = e.smoke(&t, ROUNDS);
    settled_round(&mut smoke, 3);
    pipe.cut();
    let warned = smoke.wait_line(GUARD, |l| l.contains("cannot be read"));
    let warned: Value = serde_json::from_str(&warned).unwrap();
    assert_eq!(
        (warned["flink_job"].as_str(), warned["reason"].as_str()),
        (Some(job.name()), Some("unreachable")),
        "{warned}"
    );
    assert_eq!(smoke.wait_exit(GUARD).code(), Some(0));
    job.cancel();
    let v = verdict(&report);
    let p = probe(&v, "orders-enriched");
    let sent = u64::from(ROUNDS) * PARTITIONS as u64;
    assert_eq!(
        (n(&p["records"]["sent"]), n(&p["records"]["ok"])),
        (sent, sent),
        "{p:#}"
    );
    assert_eq!(p["failed_records"], serde_json::json!([]));
    let j = &p["job"];
    assert_eq!(
        (j["running"].as_bool(), j["state"].as_str()),
        (Some(false), None),
        "never healthy: {j:#}"
    );
    assert!(
        n(&j["poll_errors"]) > 0 && n(&j["polls"]) > n(&j["poll_errors"]),
        "{j:#}"
    );
    assert!(
        j["poll_error"].as_str().unwrap().ends_with("(unreachable)"),
        "{j:#}"
    );
    assert!(
        j["summary"]
            .as_str()
            .unwrap()
            .contains("its state could not be read"),
        "{j:#}"
    );
}

/// Flink's REST API behind an HTTPS ingress with basic authentication, as deployments put it:
/// the poller trusts the CA of `ca_file`, sends the password of `password_file`, and reads the
/// job RUNNING through it. A wrong password is an `auth` error and an untrusted certificate an
/// `unreachable` one naming it: either way the job's state is not known, and `smoke` says so at
/// once (exit 2), never taking the job for healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_reaches_flink_through_tls_and_basic_auth_and_says_when_it_cannot() {
    const OUTPUT: &str = "orders-ingress";
    let e = Enrichment::start(&[OUTPUT], &["orders_ingress"]).await;
    let job = enrich(&e, "ingress", OUTPUT, "orders_ingress");
    let dir = tempfile::tempdir().unwrap();
    let ingress =
        FlinkIngress::start(session().rest_url(), "slo-probe", "s3cret", dir.path()).await;
    let password = dir.path().join("flink-password");
    let probe_with = |ca: bool| {
        let ca = if ca {
            format!(", ca_file: '{}'", ingress.ca.display())
        } else {
            String::new()
        };
        format!(
            "name: orders-enriched\njob: {{ flink: 'https://localhost:{}', name: {}, poll: 200ms, username: slo-probe, password_file: '{}'{ca} }}\n",
            ingress.port,
            job.name(),
            password.display()
        )
    };
    let run = |ca: bool, rounds: u32| {
        let named = probe_with(ca);
        let t = e.tree(
            None,
            &[(
                "orders-enriched.yaml",
                &[
                    ("name: orders-enriched\n", named.as_str()),
                    ("interval: 10s", "interval: 250ms"),
                    ("timeout: 60s", "timeout: 20s"),
                    ("topic: orders-enriched", &format!("topic: {OUTPUT}")),
                ],
            )],
        );
        let (mut smoke, report) = e.smoke(&t, rounds);
        let code = smoke.wait_exit(GUARD).code();
        (code, verdict(&report), smoke)
    };
    std::fs::write(&password, "s3cret\n").unwrap();
    let (code, v, _) = run(true, 4);
    assert_eq!(code, Some(0), "{v:#}");
    let p = probe(&v, "orders-enriched");
    let j = &p["job"];
    assert_eq!(
        (
            j["state"].as_str(),
            j["running"].as_bool(),
            n(&j["poll_errors"])
        ),
        (Some("RUNNING"), Some(true), 0),
        "{j:#}"
    );
    assert!(ingress.served.load(std::sync::atomic::Ordering::Relaxed) >= 5);
    assert_eq!(
        ingress.refused.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let sent = 4 * PARTITIONS as u64;
    assert_eq!(n(&p["records"]["ok"]), sent, "{p:#}");

    // a wrong password: refused, said as such
    std::fs::write(&password, "wrong\n").unwrap();
    let (code, v, _) = run(true, 100);
    assert_eq!(code, Some(2), "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 401: credentials refused (auth)"),
        "{reason}"
    );
    assert!(
        !reason.contains("wrong") && !reason.contains("s3cret"),
        "no secret shown: {reason}"
    );
    assert!(ingress.refused.load(std::sync::atomic::Ordering::Relaxed) > 0);

    // the certificate not trusted (no ca_file): unreachable, naming the certificate
    std::fs::write(&password, "s3cret\n").unwrap();
    let (code, v, _) = run(false, 100);
    assert_eq!(code, Some(2), "{v:#}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("certificate") && reason.contains("(unreachable)"),
        "{reason}"
    );
    job.cancel();
}

/// Stopped with a savepoint while records flow and restored from it within the probe's
/// timeout: every record arrives, none twice (the savepoint holds the source's offsets and the
/// sink flushed), slower for the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_with_a_savepoint_and_restored_in_time_loses_nothing() {
    const OUTPUT: &str = "orders-resumed";
    let e = Enrichment::start(&[OUTPUT], &["orders_resumed"]).await;
    let options = at_least_once();
    let sql = e.job("resumed", OUTPUT, "at-least-once", "orders_resumed");
    let first = session().submit("resumed", &sql, &options);
    let faster: &[(&str, &str)] = &[
        ("interval: 10s", "interval: 200ms"),
        ("timeout: 60s", "timeout: 20s"),
        ("topic: orders-enriched", "topic: orders-resumed"),
    ];
    let t = e.tree(None, &[("orders-enriched.yaml", faster)]);
    const ROUNDS: u32 = 30;
    let (mut smoke, report) = e.smoke(&t, ROUNDS);
    // stopped once records were verified, restored at once: the records sent meanwhile wait
    settled_round(&mut smoke, 5);
    let savepoint = first.stop_with_savepoint();
    let resumed = session().submit(
        "resumed",
        &sql,
        &JobOptions {
            restore_from: Some(savepoint),
            ..options.clone()
        },
    );
    assert_eq!(smoke.wait_exit(GUARD).code(), Some(0));
    resumed.stop_with_savepoint();
    let v = verdict(&report);
    let p = probe(&v, "orders-enriched");
    let sent = u64::from(ROUNDS) * PARTITIONS as u64;
    let r = &p["records"];
    assert_eq!((n(&r["sent"]), n(&r["ok"])), (sent, sent), "{p:#}");
    assert_eq!(n(&p["events"]["duplicates"]), 0, "{p:#}");
    let ids = e.sent("orders-enriched", 1).await;
    let out = by_order(&e.dump(OUTPUT, Isolation::ReadCommitted, 1).await, &ids);
    assert_eq!((out.len() as u64, extra_copies(&out)), (sent, 0));
}

/// The JVM running the enrichment job twice, at-least-once and exactly-once side by side, is
/// killed (SIGKILL) while records flow, and both jobs are restored from their last retained
/// checkpoints in another JVM. At-least-once replays what it wrote since that checkpoint: the
/// verifier counts exactly the copies an independent reader finds on the topic, and the upsert
/// table shows each order once. Exactly-once, read `read_committed` (`transactional: true`):
/// its duplicates are exactly those the independent `read_committed` reader sees too. (tansu
/// shows the records of aborted transactions to `read_committed` readers, a defect a real
/// broker does not have, so the aborted transaction's records appear there once more; see the
/// README's Testing section.) Its records wait for their transaction's commit in the pipeline
/// hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_job_restored_from_its_checkpoint_replays_exactly_what_is_counted() {
    const ALO: &str = "orders-enriched";
    const EOS: &str = "orders-enriched-exactly-once";
    let doomed = std::thread::spawn(FlinkSession::start);
    let e = Enrichment::start(&[ALO, EOS], &["orders_sink", "orders_sink_eo"]).await;
    let doomed = doomed.join().unwrap();
    let alo_sql = e.job("enrich-alo", ALO, "at-least-once", "orders_sink");
    let eos_sql = e.job("enrich-eos", EOS, "exactly-once", "orders_sink_eo");
    // at-least-once: checkpointed when the test says (a periodic one could cover everything
    // written before the kill); exactly-once commits its output at each periodic checkpoint
    let alo_options = JobOptions {
        checkpoint_interval: None,
        mode: CheckpointMode::AtLeastOnce,
        extra: utc(),
        ..JobOptions::default()
    };
    let eos_options = JobOptions {
        checkpoint_interval: Some(Duration::from_secs(1)),
        mode: CheckpointMode::ExactlyOnce,
        extra: utc(),
        ..JobOptions::default()
    };
    let alo = doomed.submit("enrich-alo", &alo_sql, &alo_options);
    let eos = doomed.submit("enrich-eos", &eos_sql, &eos_options);
    // long enough for a restore; lenient freshness: the records of the outage are slow
    let slow_ok: &[(&str, &str)] = &[
        ("interval: 10s", "interval: 250ms"),
        ("timeout: 60s", "timeout: 40s"),
        ("latency_below: 2s", "latency_below: 35s"),
    ];
    let warehouse: &[(&str, &str)] = &[
        ("interval: 10s", "interval: 250ms"),
        ("timeout: 60s", "timeout: 40s"),
        ("latency_below: 5s", "latency_below: 35s"),
        ("poll: 1s", "poll: 200ms"),
    ];
    let exactly_once: &[(&str, &str)] = &[
        ("interval: 10s", "interval: 250ms"),
        ("timeout: 60s", "timeout: 40s"),
        ("latency_below: 15s", "latency_below: 35s"),
    ];
    let t = e.tree(
        None,
        &[
            ("orders-enriched.yaml", slow_ok),
            ("orders-warehouse.yaml", warehouse),
            ("orders-enriched-exactly-once.yaml", exactly_once),
        ],
    );
    const ROUNDS: u32 = 40;
    let (mut smoke, report) = e.smoke(&t, ROUNDS);
    // Killed after the at-least-once job's checkpoint, once two rounds scheduled after it
    // settled (their records went through the job after the checkpoint's barrier): the
    // restored job replays them, and whatever else followed the barrier.
    settled_round(&mut smoke, 4);
    eos.wait_checkpoints(1);
    let checkpoint = alo.trigger_checkpoint();
    let settled = smoke
        .events("round settled")
        .iter()
        .filter_map(|v| v["round"].as_u64())
        .max()
        .unwrap_or(0);
    settled_round(&mut smoke, settled + 3);
    doomed.kill();
    let restore = |job: &flink::Job| job.latest_checkpoint().expect("a retained checkpoint");
    let (alo_from, eos_from) = (restore(&alo), restore(&eos));
    assert_eq!(
        alo_from, checkpoint,
        "the only checkpoint of the at-least-once job"
    );
    let alo = session().submit(
        "enrich-alo",
        &alo_sql,
        &JobOptions {
            restore_from: Some(alo_from),
            ..alo_options.clone()
        },
    );
    let eos = session().submit(
        "enrich-eos",
        &eos_sql,
        &JobOptions {
            restore_from: Some(eos_from),
            ..eos_options.clone()
        },
    );
    let code = smoke.wait_exit(GUARD).code();
    let v = verdict(&report);
    assert_eq!(code, Some(0), "{v:#}");
    alo.stop_with_savepoint();
    eos.stop_with_savepoint();
    let sent = u64::from(ROUNDS) * PARTITIONS as u64;

    // at-least-once: every order, the replayed ones twice; counted exactly
    let p = probe(&v, "orders-enriched");
    let ids = e.sent("orders-enriched", 1).await;
    let out = by_order(&e.dump(ALO, Isolation::ReadCommitted, 1).await, &ids);
    assert_eq!(out.len() as u64, sent, "every order came out");
    let replayed = extra_copies(&out);
    assert!(
        replayed > 0,
        "the job replayed what it wrote since its checkpoint"
    );
    assert_eq!(
        (n(&p["records"]["ok"]), n(&p["events"]["duplicates"])),
        (sent, replayed),
        "{p:#}"
    );
    assert_eq!(n(&p["events"]["reordered"]), 0, "{p:#}");
    // each duplicate's line names where it was sent and where the copy was read
    let lines: Vec<Value> = smoke
        .events("record seen again after verification")
        .into_iter()
        .filter(|l| l["probe"] == "orders-enriched")
        .collect();
    assert_eq!(lines.len() as u64, replayed);
    for l in &lines {
        let copies = &out[l["record_id"].as_str().unwrap()];
        assert_eq!(
            (l["topic"].as_str(), l["read_topic"].as_str()),
            (Some(INPUT), Some(ALO))
        );
        assert!(l["partition"].is_i64(), "{l}");
        assert!(
            copies[1..].iter().any(|c| c["_partition"] == l["read_partition"]
                && c["_offset"] == l["read_offset"]),
            "{l} is not where a copy is: {copies:?}"
        );
    }

    // the upsert table: one row per order, every one found
    let p = probe(&v, "orders-warehouse");
    let table_ids = e.sent("orders-warehouse", 2).await;
    let rows =
        e.db.query("select order_id from orders_sink", &[])
            .await
            .unwrap();
    let found: Vec<String> = rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|id| table_ids.contains(id))
        .collect();
    assert_eq!(found.len() as u64, sent);
    assert_eq!(
        (n(&p["records"]["ok"]), n(&p["events"]["duplicates"])),
        (sent, 0),
        "{p:#}"
    );

    // exactly-once, read committed: the duplicates the independent reader sees, no more
    let p = probe(&v, "orders-enriched-exactly-once");
    let ids = e.sent("orders-enriched-exactly-once", 3).await;
    let committed = by_order(&e.dump(EOS, Isolation::ReadCommitted, 1).await, &ids);
    assert_eq!(committed.len() as u64, sent, "every order came out");
    let seen_twice = extra_copies(&committed);
    assert_eq!(
        (n(&p["records"]["ok"]), n(&p["events"]["duplicates"])),
        (sent, seen_twice),
        "{p:#}"
    );
    eprintln!(
        "after the kill: at-least-once replayed {replayed} orders; exactly-once, read committed on tansu, showed {seen_twice} twice"
    );
    // readable at its transaction's commit: the pipeline hop runs to the read-back
    let hops = p["hops"]["hops"].as_array().unwrap();
    let names: Vec<&str> = hops.iter().map(|h| h["hop"].as_str().unwrap()).collect();
    assert_eq!(names, ["produce", "pipeline"], "{p:#}");
    assert_eq!(n(&hops[1]["ended_by"]["read_back"]), sent, "{p:#}");
    no_clock_skew(p);
}
