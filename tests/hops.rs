//! Where the time goes, against real parts: a real broker (tansu), a timed job standing in for
//! a Flink job (`TimedJob`, tests/common/timed_job.rs: it holds each record a known time, then
//! writes it downstream stamped with the time it finished, on its own clock), a writer standing
//! in for a JDBC sink (tests/common/writer.rs: it waits a known time, then inserts a row with the
//! record's Kafka timestamp) and a real PostgreSQL whose clock stamps each row's `written_at`.
//! Each hop's median must be the delay injected before it (within 5%, plus the resolution the
//! hop is measured at), every record's hops must add up to its end-to-end latency (its spans,
//! exactly; `/status`, to the microsecond each hop is rounded to), and a job clock 50 ms behind
//! must show as counted clock skew, never as a negative latency in a quantile.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::infra::{Postgres, Tansu};
use common::otlp::{Collector, attrs, hex};
use common::timed_job::{TimedJob, Timing};
use common::writer::{Faults, Store, TABLE_STAMPED, Writer};
use common::{GUARD, Tree, create_topics, eventually, get, sample};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;
use slo_probe::Plan;
use slo_probe::metric_names as names;

const PARTITIONS: i32 = 2;
const ROUNDS: u64 = 30;
/// What the job takes per record, and the sink writer after it.
const JOB: Duration = Duration::from_millis(30);
const WRITER: Duration = Duration::from_millis(200);

/// A probe file's agent: one cluster, and spans to `collector`.
fn agent_file(t: &Tree, bootstrap: &str, collector: &str) {
    t.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  primary:\n    bootstrap_servers: {bootstrap}\ntracing:\n  otlp_endpoint: http://{collector}\n  protocol: http/protobuf\n"
        ),
    );
}

/// Runs the tree's probes for [`ROUNDS`] in this process, serving HTTP: `/status` and a
/// scrape once every record settled, then stops (which flushes the spans).
async fn run_agent(t: &Tree) -> (Value, String) {
    let agent = common::finished_agent_serving(t, Plan::Rounds(ROUNDS)).await;
    let addr = agent.http_addr().unwrap().to_string();
    let (code, body) = get(&addr, "/status").await;
    assert_eq!(code, 200);
    let metrics = agent.view().render_metrics();
    tokio::time::timeout(GUARD, agent.shutdown(std::future::pending()))
        .await
        .unwrap();
    (serde_json::from_str(&body).unwrap(), metrics)
}

/// The hop `name` of a probe's `hops` report.
fn hop<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["hops"]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hop"] == name)
        .unwrap_or_else(|| panic!("no {name} hop: {report:#}"))
}

fn ms(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("not milliseconds: {v}"))
}

/// The median of `hop` is `injected` within 5%, plus the resolution it is measured at.
fn assert_median(report: &Value, name: &str, injected: Duration, resolution_ms: f64) {
    let h = hop(report, name);
    let p50 = ms(&h["latency"]["p50_ms"]);
    let want = injected.as_secs_f64() * 1e3;
    let tolerance = want * 0.05 + resolution_ms;
    eprintln!(
        "{name}: p50 {p50} ms, injected {want} ms, tolerance {tolerance} ms: {}",
        h["latency"]
    );
    assert!(
        (p50 - want).abs() <= tolerance,
        "{name} p50 {p50} ms is not {want} ms within {tolerance} ms: {h:#}"
    );
}

/// Every verified record's spans: its hops, as events of its verification span, add up to its
/// end-to-end latency (scheduled send, the producer span's start, to the verification, the
/// verification span's end) to the nanosecond; each event is at the time its hop ended. Returns
/// each record's hops, in milliseconds, by trace id.
fn hops_of_spans(collector: &Collector, records: usize) -> BTreeMap<String, Vec<(String, f64)>> {
    let got = collector.got.lock().unwrap();
    let mut out = BTreeMap::new();
    for (_, process) in got
        .spans
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Consumer as i32)
    {
        let trace = hex(&process.trace_id);
        let (_, send) = got
            .spans
            .iter()
            .find(|(_, s)| hex(&s.trace_id) == trace && s.kind == SpanKind::Producer as i32)
            .expect("a producer span per record");
        assert_eq!(attrs(process)["slo_probe.outcome"], "ok", "{process:?}");
        let e2e = i128::from(process.end_time_unix_nano) - i128::from(send.start_time_unix_nano);
        let mut sum = 0i128;
        let mut hops = Vec::new();
        for e in &process.events {
            let a: BTreeMap<String, String> = e
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), common::otlp::text(kv)))
                .collect();
            let ns: i128 = a["slo_probe.hop.duration_ns"].parse().unwrap();
            sum += ns;
            assert_eq!(
                i128::from(e.time_unix_nano),
                i128::from(send.start_time_unix_nano) + sum,
                "each hop's event at the time it ended: {e:?}"
            );
            // a negative hop is marked: clock skew, or within the resolution of its end
            let marked = |key: &str| a.get(key).map(String::as_str) == Some("true");
            let (skew, within) = (
                marked("slo_probe.clock_skew"),
                marked("slo_probe.hop.within_resolution"),
            );
            assert_eq!(skew || within, ns < 0, "{a:?}");
            assert!(!(skew && within), "{a:?}");
            hops.push((a["slo_probe.hop"].clone(), ns as f64 / 1e6));
        }
        assert_eq!(sum, e2e, "the hops of trace {trace} add up to its latency");
        out.insert(trace, hops);
    }
    assert_eq!(out.len(), records, "one verification span per record");
    out
}

/// In `/status`, each of the slowest records shows its hops, which add up to its latency as
/// shown (to the microsecond both are shown to).
fn assert_slowest_add_up(probe: &Value, hops: &[&str]) {
    let slowest = probe["slowest"].as_array().unwrap();
    assert_eq!(slowest.len(), slo_probe::SLOWEST);
    for r in slowest {
        let split = r["hops_ms"].as_object().unwrap_or_else(|| panic!("{r}"));
        let names: Vec<&str> = split.keys().map(String::as_str).collect();
        assert_eq!(names, hops, "{r}");
        let sum: f64 = split.values().map(ms).sum();
        let latency = ms(&r["latency_ms"]);
        assert!(
            (sum - latency).abs() < 0.0005,
            "hops {sum} ms, latency {latency} ms: {r}"
        );
    }
}

/// Sends a record through a pipeline before any probe runs: one per partition of `topic`, each
/// shaped as the writer reads a probe record, so that the job's and the writer's consumers are
/// fetching already (a new consumer's first fetch takes hundreds of milliseconds, which would
/// otherwise be in the first records' hops). No probe reads them: verifiers start at the end.
async fn warm_up(bootstrap: &str, topic: &str, through: impl Fn() -> u64) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for p in 0..PARTITIONS {
        let id = uuid::Uuid::now_v7().to_string();
        let value = serde_json::json!({ "id": id, "probe": "warm-up", "seq": 0, "tags": {} });
        let value = value.to_string();
        let record = FutureRecord::to(topic)
            .partition(p)
            .key(&id)
            .payload(&value);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    eventually("the pipeline is warm", || async {
        (through() == PARTITIONS as u64).then_some(())
    })
    .await;
}

/// A tree whose agent file names `broker` and sends spans to a new in-test collector.
async fn tree_with_spans(broker: &Tansu) -> (Tree, Collector) {
    let collector = Collector::default();
    let t = Tree::new();
    agent_file(&t, &broker.bootstrap(), &collector.http().await);
    (t, collector)
}

/// `slo-probe smoke` of the tree's probes for [`ROUNDS`]: its JSON verdict and its text
/// report.
async fn smoke(t: &Tree) -> (Value, String) {
    let dir = t.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let rounds = ROUNDS.to_string();
        let args = [
            "smoke",
            "--rounds",
            &rounds,
            "--output",
            "json",
            "--report",
            "verdict.txt",
        ];
        common::run(&dir, &args, &[])
    })
    .await
    .unwrap();
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    let text = std::fs::read_to_string(t.path().join("verdict.txt")).unwrap();
    (serde_json::from_str(&out.stdout).unwrap(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hop_of_a_sink_pipeline_is_the_delay_injected_before_it() {
    let pg = Postgres::start();
    let (db, connection) = tokio_postgres::connect(&pg.dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.batch_execute(TABLE_STAMPED).await.unwrap();
    let broker = Tansu::start();
    create_topics(
        &broker.bootstrap(),
        &[("in", PARTITIONS), ("out", PARTITIONS)],
    )
    .await;
    let timing = Timing {
        hold: JOB,
        clock_behind: Duration::ZERO,
        processed_at: false,
    };
    let job = TimedJob::start(&broker.bootstrap(), "in", "out", PARTITIONS, timing);
    let store = Store::PostgresStamped(pg.dsn());
    let writer = Writer::start(
        &broker.bootstrap(),
        "out",
        PARTITIONS,
        store,
        WRITER,
        Faults::NONE,
    );
    warm_up(&broker.bootstrap(), "in", || writer.tally().written).await;
    let (t, collector) = tree_with_spans(&broker).await;
    t.write(
        "probes/warehouse.yaml",
        &format!(
            "name: warehouse\ntopic: in\ninterval: 100ms\ntimeout: 5s\nverify:\n  postgres:\n    dsn: \"{}\"\n    query: select id, kafka_ts, written_at from orders_stamped where id = any($1)\n    poll: 50ms\n    hop_timestamp: kafka_ts\n    timestamp_column: written_at\n",
            pg.dsn()
        ),
    );
    let (verdict, text) = smoke(&t).await;
    let sent = ROUNDS as usize * PARTITIONS as usize;
    let p = &verdict["probes"][0];
    assert_eq!(p["records"]["ok"], sent, "{p:#}");

    // Each hop's median is the delay before it: the job's 30 ms (its Kafka timestamp has
    // milliseconds), the writer's 200 ms; the read is within a poll of the row's write.
    assert_median(p, "pipeline", JOB, 1.0);
    assert_median(p, "sink", WRITER, 1.0);
    let read = hop(p, "read");
    assert_eq!(read["quantised_ms"], 50.0, "{read}");
    let read_p50 = ms(&read["latency"]["p50_ms"]);
    eprintln!(
        "read: p50 {read_p50} ms, polled every 50 ms: {}",
        read["latency"]
    );
    assert!(read_p50 <= 50.0 * 1.05, "{read}");
    // The produce hop is the produce latency of the same records.
    let produce = &hop(p, "produce")["latency"];
    eprintln!("produce: {produce}");
    assert_eq!(produce["p50_ms"], p["produce_latency"]["p50_ms"], "{p:#}");
    assert_eq!(hop(p, "pipeline")["ended_by"]["hop_timestamp"], sent);
    assert_eq!(hop(p, "sink")["ended_by"]["written"], sent);
    assert_eq!(hop(p, "read")["ended_by"]["poll"], sent);
    // One clock on this machine: no skew. (A row written while the poll that found it ran
    // makes a read hop a little below zero: within its resolution, zero in its quantiles.)
    for h in ["produce", "pipeline", "sink", "read"] {
        let h = hop(p, h);
        assert_eq!(h["latency"]["count"], sent, "{h}");
        let skew = (h["clock_skew"].as_u64(), h["largest_skew_ms"].as_f64());
        assert_eq!(skew, (Some(0), None), "{h}");
    }
    eprintln!(
        "read hops within the poll's resolution: {}",
        read["within_resolution"]
    );
    assert_eq!(p["hops"]["unsplit"], 0);
    // The text verdict has a row per hop.
    for h in ["produce", "pipeline", "sink", "read"] {
        assert!(
            text.lines()
                .any(|l| l.contains("warehouse") && l.contains(&format!(" {h} "))),
            "no {h} row:\n{text}"
        );
    }

    // Every record's hops add up to its latency, exactly.
    let spans = hops_of_spans(&collector, sent);
    for hops in spans.values() {
        let names: Vec<&str> = hops.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(names, ["produce", "pipeline", "sink", "read"]);
    }
    job.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_clock_behind_is_counted_as_skew_never_a_negative_latency() {
    const BEHIND: Duration = Duration::from_millis(50);
    let broker = Tansu::start();
    let topics = ["on-time-in", "on-time-out", "behind-in", "behind-out"];
    let topics: Vec<(&str, i32)> = topics.iter().map(|t| (*t, PARTITIONS)).collect();
    create_topics(&broker.bootstrap(), &topics).await;
    let on_time = Timing {
        hold: JOB,
        clock_behind: Duration::ZERO,
        processed_at: false,
    };
    let behind = Timing {
        hold: JOB,
        clock_behind: BEHIND,
        processed_at: true,
    };
    let jobs = [("on-time", on_time), ("behind", behind)].map(|(name, timing)| {
        let (from, to) = (format!("{name}-in"), format!("{name}-out"));
        TimedJob::start(&broker.bootstrap(), &from, &to, PARTITIONS, timing)
    });
    for (job, topic) in jobs.iter().zip(["on-time-in", "behind-in"]) {
        warm_up(&broker.bootstrap(), topic, || *job.written.lock().unwrap()).await;
    }
    let (t, collector) = tree_with_spans(&broker).await;
    // Records read back whole from the job's output: its CreateTime ends the pipeline hop.
    t.write(
        "probes/on-time.yaml",
        "name: on-time\ntopic: on-time-in\ninterval: 100ms\ntimeout: 5s\nverify:\n  kafka: { topic: on-time-out }\n",
    );
    // The job adds `processed_at` (so the record is no copy: found by its id header).
    t.write(
        "probes/behind.yaml",
        "name: behind\ntopic: behind-in\ninterval: 100ms\ntimeout: 5s\nverify:\n  kafka: { topic: behind-out, id_from: header, hop_timestamp: /processed_at }\n",
    );
    let (status, metrics) = run_agent(&t).await;
    let sent = ROUNDS as usize * PARTITIONS as usize;
    let probe = |name: &str| -> Value {
        status["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };

    // On time: the job's 30 ms, ended by the record's CreateTime (milliseconds).
    let p = probe("on-time");
    assert_eq!(p["records"]["ok"], sent, "{p:#}");
    assert_median(&p, "pipeline", JOB, 1.0);
    let pipeline = hop(&p, "pipeline");
    assert_eq!(pipeline["ended_by"]["CreateTime"], sent, "{pipeline}");
    assert_eq!(pipeline["quantised_ms"], 1.0);
    assert_eq!(pipeline["clock_skew"], 0);
    assert_slowest_add_up(&p, &["produce", "pipeline", "read"]);

    // Behind: the job's 30 ms on a clock 50 ms behind come out about -20 ms for every record:
    // each counted as skew, none in the pipeline's quantiles; the read hop is 50 ms longer.
    let p = probe("behind");
    assert_eq!(p["records"]["ok"], sent, "{p:#}");
    let pipeline = hop(&p, "pipeline");
    eprintln!("behind: {pipeline}");
    assert_eq!(pipeline["ended_by"]["hop_timestamp"], sent, "{pipeline}");
    assert_eq!(pipeline["clock_skew"], sent, "{pipeline}");
    assert_eq!(pipeline["latency"]["count"], 0, "{pipeline}");
    assert!(pipeline["latency"]["p50_ms"].is_null(), "{pipeline}");
    // The largest skew: 50 ms behind less the 30 ms held, less the job's read, plus how long
    // after the broker appended the record the probe heard it was acknowledged (the job can
    // read a record first), which is at most the record's produce hop.
    let largest = ms(&pipeline["largest_skew_ms"]);
    let produce_max = ms(&hop(&p, "produce")["latency"]["max_ms"]);
    assert!(
        largest > 15.0 && largest <= 20.0 + produce_max,
        "{pipeline}, produce at most {produce_max} ms"
    );
    let read = hop(&p, "read");
    eprintln!("behind: {read}");
    assert!(ms(&read["latency"]["p50_ms"]) >= 50.0, "{read}");
    assert_eq!(read["clock_skew"], 0);
    assert_slowest_add_up(&p, &["produce", "pipeline", "read"]);
    for r in p["slowest"].as_array().unwrap() {
        assert!(ms(&r["hops_ms"]["pipeline"]) < 0.0, "shown as it came: {r}");
    }

    // On /metrics: the skew counted per hop, the largest shown, and no pipeline quantile.
    let m = |name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("probe", "behind")];
        all.extend_from_slice(labels);
        sample(&metrics, name, &all).unwrap_or_else(|| panic!("{name} {labels:?}:\n{metrics}"))
    };
    assert_eq!(m(names::CLOCK_SKEW, &[("hop", "pipeline")]), sent as f64);
    assert_eq!(m(names::CLOCK_SKEW, &[("hop", "read")]), 0.0);
    let scraped = m(names::CLOCK_SKEW_MAX, &[("hop", "pipeline")]);
    assert!(
        (scraped * 1e3 - largest).abs() < 0.001,
        "{scraped} s, {largest} ms"
    );
    let p50 = m(
        names::HOP_LATENCY,
        &[("hop", "pipeline"), ("quantile", "0.5")],
    );
    assert!(p50.is_nan(), "no sample, no quantile: {p50}");
    let count = format!("{}_count", names::HOP_LATENCY);
    assert_eq!(m(&count, &[("hop", "pipeline")]), 0.0);
    assert_eq!(m(&count, &[("hop", "read")]), sent as f64);

    // Every record of both probes adds up, the negative hops included.
    let spans = hops_of_spans(&collector, 2 * sent);
    let negative = spans
        .values()
        .filter(|hops| hops.iter().any(|(h, ms)| h == "pipeline" && *ms < 0.0))
        .count();
    assert_eq!(negative, sent, "the behind probe's records, and only those");
    for job in jobs {
        job.stop().await;
    }
}

/// A `hop_timestamp` that no record carries (a typo: `/processed_ad`) splits nothing: the
/// verdict fails, naming the field and the pointer, though every record arrived intact (it
/// passed before, the only trace an `unsplit` count deep in the JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_timestamp_that_matches_nothing_fails_the_verdict_naming_it() {
    let broker = Tansu::start();
    create_topics(
        &broker.bootstrap(),
        &[("in", PARTITIONS), ("out", PARTITIONS)],
    )
    .await;
    let timing = Timing {
        hold: Duration::ZERO,
        clock_behind: Duration::ZERO,
        processed_at: true,
    };
    let job = TimedJob::start(&broker.bootstrap(), "in", "out", PARTITIONS, timing);
    let t = Tree::new();
    t.agent_file(&broker.bootstrap());
    t.write(
        "probes/typo.yaml",
        "name: typo\ntopic: in\ninterval: 100ms\ntimeout: 5s\nverify:\n  kafka: { topic: out, id_from: header, hop_timestamp: /processed_ad }\n",
    );
    let dir = t.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        common::run(&dir, &["smoke", "--rounds", "5", "--output", "json"], &[])
    })
    .await
    .unwrap();
    job.stop().await;
    assert_eq!(out.code(), 1, "{}\n{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let p = &v["probes"][0];
    let sent = 5 * PARTITIONS as u64;
    assert_eq!(p["records"]["ok"], sent, "{p:#}");
    assert_eq!(
        p["failures"],
        serde_json::json!([format!(
            "`verify.kafka.hop_timestamp` (/processed_ad) is in none of the {sent} verified records (`/processed_ad` is missing): no hop was split at it; check it against what the pipeline writes"
        )]),
        "{p:#}"
    );
    let named = &p["hops"]["timestamps"][0];
    assert_eq!(
        (named["found"].as_u64(), named["missing"].as_u64()),
        (Some(0), Some(sent))
    );
}
