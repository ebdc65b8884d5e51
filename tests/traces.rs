//! Traces and logs that lead from an outlier to its cause. In-test OTLP receivers (HTTP/protobuf
//! with axum, gRPC with tonic, both decoding the official `opentelemetry-proto` messages) take
//! the spans of smoke runs; the tests read every record's `traceparent` back from the topic and
//! check that the spans join it: the producer span *is* the header's context, the verification
//! span is its child and links to it. Lost and corrupt records carry error status, and their
//! JSON log lines carry the same ids. With the collector down or hanging, the run's outcomes
//! are unchanged and every undelivered span is counted. `/status` shows the slowest records of
//! the window with the trace ids that lead to them.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::otlp::{Collector, attrs, hex};
use common::relay::{Fault, Picker, Relay, Spoiling};
use common::{Tree, get, sample};
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use rdkafka::message::{Headers, Message};
use serde_json::Value;
use slo_probe::EmbeddedCluster;
use slo_probe::Outcome;
use slo_probe::Plan;
use slo_probe::metric_names as names;

/// Guards against a hang; never expected to elapse.
const GUARD: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 3;
const ROUNDS: u64 = 8;
const TIMEOUT: Duration = Duration::from_secs(2);
const PICK: Picker = Picker { seed: 3, one_in: 5 };
/// Sent with every export; must reach the collector and never a log line.
const API_KEY: &str = "otlp-key-4f1c9a77d2";

/// What a probe wrote into a record's `traceparent`.
#[derive(Debug, Clone)]
struct Header {
    trace_id: String,
    span_id: String,
    flags: String,
    partition: i32,
    offset: i64,
}

/// Every record on `topic` by record id (its key), with its `traceparent`: read back from the
/// broker, as a pipeline would see them.
async fn headers_on(bootstrap: &str, topic: &str, expect: usize) -> HashMap<String, Header> {
    let consumer =
        common::relay::from_beginning(bootstrap, topic, PARTITIONS, "test-traceparent-reader");
    let mut out = HashMap::new();
    while out.len() < expect {
        let m = tokio::time::timeout(GUARD, consumer.recv())
            .await
            .expect("records are on the topic")
            .unwrap();
        let tp = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .expect("every probe record has a traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[0], "00", "W3C version: {tp}");
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        out.insert(
            key,
            Header {
                trace_id: parts[1].into(),
                span_id: parts[2].into(),
                flags: parts[3].into(),
                partition: m.partition(),
                offset: m.offset(),
            },
        );
    }
    out
}

fn expected_picks() -> u64 {
    (0..PARTITIONS)
        .flat_map(|p| (0..ROUNDS).map(move |s| (p, s)))
        .filter(|&(p, s)| PICK.picks(p, s))
        .count() as u64
}

fn agent_file(t: &Tree, bootstrap: &str, tracing: &str) {
    t.write(
        "slo-probe.yaml",
        &format!(
            "site: eu-west-1\ninstance: probe-7\nclusters:\n  primary:\n    bootstrap_servers: {bootstrap}\n{tracing}"
        ),
    );
}

/// Finds the one span of `kind` in trace `trace_id`.
fn one<'a>(
    spans: &'a [(BTreeMap<String, String>, Span)],
    trace_id: &str,
    kind: span::SpanKind,
) -> &'a (BTreeMap<String, String>, Span) {
    let found: Vec<_> = spans
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == trace_id && s.kind == kind as i32)
        .collect();
    assert_eq!(found.len(), 1, "one {kind:?} span in trace {trace_id}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_receiver_gets_joined_spans_and_logs_carry_their_ids() {
    let pipeline = Spoiling::start(3, PARTITIONS, PICK);
    let collector = Collector::default();
    let addr = collector.http().await;
    let t = Tree::new();
    pipeline.probe_files(
        &t,
        "100ms",
        &humantime::format_duration(TIMEOUT).to_string(),
        "",
    );
    agent_file(
        &t,
        pipeline.cluster.bootstrap_servers(),
        &format!(
            "tracing:\n  otlp_endpoint: http://{addr}\n  protocol: http/protobuf\n  timeout: 5s\n  headers:\n    x-api-key: ${{TEST_OTLP_KEY}}\n"
        ),
    );
    let rounds = ROUNDS.to_string();
    let out = tokio::task::spawn_blocking({
        let dir = t.path().to_path_buf();
        move || {
            common::run(
                &dir,
                &[
                    "smoke",
                    "--rounds",
                    &rounds,
                    "--output",
                    "json",
                    "--log-format",
                    "json",
                ],
                &[("TEST_OTLP_KEY", API_KEY), ("RUST_LOG", "info")],
            )
        }
    })
    .await
    .unwrap();
    let k = expected_picks();
    assert!(
        k > 0 && k < ROUNDS * PARTITIONS as u64,
        "the seed picks some: {k}"
    );
    let verdict: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(
        out.code(),
        1,
        "lost and corrupt records fail the smoke run\n{}",
        out.stderr
    );
    let sent = ROUNDS * PARTITIONS as u64;
    for (name, outcome) in [("lossy", "lost"), ("mangled", "corrupt")] {
        let probe = verdict["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        let r = &probe["records"];
        assert_eq!(
            (r["sent"].as_u64(), r[outcome].as_u64(), r["ok"].as_u64()),
            (Some(sent), Some(k), Some(sent - k)),
            "{r}"
        );
    }

    // Spans: two per record, all delivered before smoke exited.
    collector.wait_spans(2 * 2 * sent as usize).await;
    let mut on_topics = HashMap::new();
    for name in ["lossy", "mangled"] {
        let topic = format!("{name}-in");
        let headers = headers_on(pipeline.cluster.bootstrap_servers(), &topic, sent as usize);
        on_topics.insert(name, headers.await);
    }
    let mangled_out = headers_on(
        pipeline.cluster.bootstrap_servers(),
        "mangled-out",
        sent as usize,
    )
    .await;
    let got = std::mem::take(&mut *collector.got.lock().unwrap());
    assert_eq!(got.spans.len(), 4 * sent as usize);
    assert!(
        got.headers
            .iter()
            .all(|h| h.get("x-api-key").map(String::as_str) == Some(API_KEY)),
        "the configured header reaches the collector: {:?}",
        got.headers
    );

    // JSON logs: every stderr line parses; the non-ok outcomes have one line each.
    let lines: Vec<Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        !out.stderr.contains(API_KEY) && !out.stdout.contains(API_KEY),
        "the secret never appears"
    );
    let mut logged: HashMap<String, &Value> = HashMap::new();
    for l in lines
        .iter()
        .filter(|l| l["message"] == "record lost" || l["message"] == "record corrupt")
    {
        assert!(
            logged
                .insert(l["record_id"].as_str().unwrap().to_string(), l)
                .is_none(),
            "one line per record"
        );
    }
    assert_eq!(logged.len() as u64, 2 * k);

    for (name, outcome) in [("lossy", "lost"), ("mangled", "corrupt")] {
        let mut failed = 0;
        for (record_id, h) in &on_topics[name] {
            assert_eq!(h.flags, "01", "sampled by default");
            // The producer span is the context in the header.
            let (resource, send) = one(&got.spans, &h.trace_id, span::SpanKind::Producer);
            assert_eq!(hex(&send.span_id), h.span_id);
            assert!(send.parent_span_id.is_empty());
            assert_eq!(send.name, format!("send {name}-in"));
            let a = attrs(send);
            for (key, want) in [
                ("messaging.system", "kafka"),
                ("messaging.operation.type", "send"),
                ("messaging.operation.name", "send"),
                ("messaging.destination.name", &format!("{name}-in")),
                (
                    "messaging.destination.partition.id",
                    &h.partition.to_string(),
                ),
                ("messaging.kafka.offset", &h.offset.to_string()),
                ("messaging.kafka.message.key", record_id),
                ("messaging.client.id", "slo-probe-probe-7-producer"),
                ("slo_probe.probe", name),
                ("slo_probe.record_id", record_id),
            ] {
                assert_eq!(
                    a.get(key).map(String::as_str),
                    Some(want),
                    "{key} of {}",
                    send.name
                );
            }
            for (key, want) in [
                ("service.name", "slo-probe"),
                ("service.instance.id", "probe-7"),
                ("slo_probe.site", "eu-west-1"),
                ("service.version", env!("CARGO_PKG_VERSION")),
            ] {
                assert_eq!(
                    resource.get(key).map(String::as_str),
                    Some(want),
                    "resource {key}"
                );
            }
            assert!(send.end_time_unix_nano >= send.start_time_unix_nano);

            // The verification: child of the producer span, linked to it.
            let (_, process) = one(&got.spans, &h.trace_id, span::SpanKind::Consumer);
            assert_eq!(process.name, format!("process {name}-out"));
            assert_eq!(hex(&process.parent_span_id), h.span_id);
            assert_eq!(process.links.len(), 1);
            assert_eq!(
                (
                    hex(&process.links[0].trace_id),
                    hex(&process.links[0].span_id)
                ),
                (h.trace_id.clone(), h.span_id.clone())
            );
            let a = attrs(process);
            assert_eq!(a["messaging.operation.type"], "process");
            assert_eq!(a["messaging.destination.name"], format!("{name}-out"));
            assert_eq!(a["messaging.client.id"], "slo-probe-probe-7-consumer");
            assert_eq!(a["slo_probe.record_id"], *record_id);
            let status = process.status.as_ref().unwrap();
            let span_outcome = &a["slo_probe.outcome"];
            if span_outcome == "ok" {
                assert_eq!(status.code, status::StatusCode::Ok as i32);
                assert!(a["slo_probe.latency_ms"].parse::<f64>().unwrap() > 0.0);
                assert!(!a.contains_key("error.type"));
                continue;
            }
            failed += 1;
            assert_eq!(span_outcome, outcome);
            assert_eq!(status.code, status::StatusCode::Error as i32);
            assert_eq!(a["error.type"], outcome);
            let log = logged
                .get(record_id)
                .unwrap_or_else(|| panic!("a log line for {record_id}"));
            assert_eq!(log["outcome"], outcome);
            assert_eq!(log["trace_id"], h.trace_id.as_str());
            assert_eq!(
                log["span_id"],
                hex(&process.span_id).as_str(),
                "the log names the span with the error"
            );
            assert_eq!(log["producer_span_id"], h.span_id.as_str());
            assert_eq!(log["probe"], name);
            assert_eq!(log["partition"], h.partition);
            assert_eq!(log["offset"], h.offset);
            assert_eq!(
                (log["site"].as_str(), log["instance"].as_str()),
                (Some("eu-west-1"), Some("probe-7"))
            );
            assert_eq!(log["level"], "WARN");
            if outcome == "lost" {
                // ended at its deadline: the timeout after its scheduled send
                let ms = (process.end_time_unix_nano - process.start_time_unix_nano) as f64 / 1e6;
                let timeout_ms = TIMEOUT.as_secs_f64() * 1e3;
                assert!(
                    ms >= timeout_ms && ms < timeout_ms + 1000.0,
                    "lost span lasts {ms} ms"
                );
                assert_eq!(a["slo_probe.reason"], "timeout");
                assert_eq!(log["reason"], "timeout");
                assert!(log["latency_ms"].is_null());
                assert_eq!(log["topic"], "lossy-in");
                // never read back: nowhere downstream to name
                for f in ["read_topic", "read_partition", "read_offset"] {
                    assert!(log.get(f).is_none_or(Value::is_null), "{f}: {log}");
                }
            } else {
                // the failed assertion, in the status and the log
                assert_eq!(a["slo_probe.reason"], "digest");
                assert!(
                    status.message.starts_with("corrupt: digest mismatch"),
                    "{}",
                    status.message
                );
                assert_eq!(log["reason"], "digest");
                assert!(
                    log["detail"]
                        .as_str()
                        .unwrap()
                        .starts_with("digest mismatch")
                );
                assert!(log["latency_ms"].as_f64().unwrap() > 0.0);
                // where it was sent (above), and where the verifier read it, as the relay
                // wrote it there
                assert_eq!(log["topic"], "mangled-in");
                let out = &mangled_out[record_id];
                assert_eq!(log["read_topic"], "mangled-out");
                assert_eq!(log["read_partition"], out.partition);
                assert_eq!(log["read_offset"], out.offset);
            }
        }
        assert_eq!(failed, k, "{name}: every picked record has an error span");
    }
    for r in pipeline.relays {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_receiver_configured_by_the_standard_environment() {
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("plain", PARTITIONS, 1).unwrap();
    let collector = Collector::default();
    let addr = collector.grpc().await;
    let t = Tree::new();
    t.agent_file(cluster.bootstrap_servers());
    t.write(
        "probes/plain.yaml",
        "name: plain\ntopic: plain\ninterval: 100ms\ntimeout: 5s\n",
    );
    let endpoint = format!("http://{addr}");
    let out = tokio::task::spawn_blocking({
        let dir = t.path().to_path_buf();
        move || {
            common::run(
                &dir,
                &["smoke", "--rounds", "4"],
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue"),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    let sent = 4 * PARTITIONS as usize;
    collector.wait_spans(2 * sent).await;
    let headers = headers_on(cluster.bootstrap_servers(), "plain", sent).await;
    let got = collector.got.lock().unwrap();
    assert_eq!(got.spans.len(), 2 * sent);
    assert!(
        got.headers
            .iter()
            .all(|h| h.get("x-tenant").map(String::as_str) == Some("blue")),
        "{:?}",
        got.headers
    );
    for h in headers.values() {
        let (_, send) = one(&got.spans, &h.trace_id, span::SpanKind::Producer);
        assert_eq!(hex(&send.span_id), h.span_id);
        assert_eq!(send.name, "send plain");
        let (_, process) = one(&got.spans, &h.trace_id, span::SpanKind::Consumer);
        assert_eq!(process.name, "process plain");
        assert_eq!(hex(&process.parent_span_id), h.span_id);
        assert_eq!(
            process.status.as_ref().unwrap().code,
            status::StatusCode::Ok as i32
        );
        assert_eq!(attrs(process)["slo_probe.outcome"], "ok");
    }
}

/// Runs probe `t` (topic `t`, on a fresh embedded cluster) in this process for `rounds` rounds
/// with this `tracing` section, and shuts the agent down (which flushes the span exporter).
async fn in_process(tracing: &str, rounds: u64) -> (EmbeddedCluster, slo_probe::AgentView) {
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("t", PARTITIONS, 1).unwrap();
    let t = Tree::new();
    agent_file(&t, cluster.bootstrap_servers(), tracing);
    t.write(
        "probes/t.yaml",
        "name: t\ntopic: t\ninterval: 100ms\ntimeout: 5s\n",
    );
    let agent = common::start_agent(&t, Plan::Rounds(rounds)).await;
    let view = agent.view();
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .unwrap();
    tokio::time::timeout(GUARD, agent.shutdown(std::future::pending()))
        .await
        .unwrap();
    (cluster, view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_sampling_ratio_exports_nothing_and_says_so_in_the_header() {
    let collector = Collector::default();
    let addr = collector.http().await;
    let tracing = format!(
        "tracing:\n  otlp_endpoint: http://{addr}/v1/traces\n  protocol: http/protobuf\n  sampling_ratio: 0\n"
    );
    let (cluster, view) = in_process(&tracing, 3).await;
    let sent = 3 * PARTITIONS as usize;
    let counts = view.probes[0]
        .snapshot(tokio::time::Instant::now())
        .progress
        .counts;
    assert_eq!(counts.get(Outcome::Ok), sent as u64);
    let headers = headers_on(cluster.bootstrap_servers(), "t", sent).await;
    assert!(
        headers.values().all(|h| h.flags == "00"),
        "not sampled: {headers:?}"
    );
    // the exporter was flushed on shutdown: anything sampled would have arrived by now
    assert_eq!(collector.got.lock().unwrap().spans.len(), 0);
    let m = view.render_metrics();
    assert_eq!(sample(&m, names::SPANS_DROPPED, &[]), Some(0.0));
}

/// A collector that accepts connections and never answers.
async fn hanging_collector() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_or_hanging_outcomes_hold_and_spans_are_counted_dropped() {
    let (hanging, _holder) = hanging_collector().await;
    let down = format!("127.0.0.1:{}", common::closed_port());
    for (case, protocol, addr) in [
        ("down", "grpc", down.as_str()),
        ("hanging", "http/protobuf", hanging.as_str()),
    ] {
        let tracing = format!(
            "tracing:\n  otlp_endpoint: http://{addr}\n  protocol: {protocol}\n  timeout: 500ms\n"
        );
        let (_cluster, view) = in_process(&tracing, 5).await;
        let s = view.probes[0].snapshot(tokio::time::Instant::now());
        let c = s.progress.counts;
        let sent = 5 * PARTITIONS as u64;
        assert_eq!(
            (c.sent, c.get(Outcome::Ok), c.in_flight),
            (sent, sent, 0),
            "{case}"
        );
        assert_eq!(s.e2e_count, sent, "{case}: every latency recorded");
        let m = view.render_metrics();
        assert_eq!(
            sample(&m, names::SPANS_DROPPED, &[]),
            Some(2.0 * sent as f64),
            "{case}: two spans per record, none delivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_slowest_records_of_the_window_with_their_traces() {
    // far above anything else, start-up included
    const SLOW: Duration = Duration::from_secs(1);
    let fault = Fault::Mixed {
        fast: Duration::ZERO,
        slow: SLOW,
    };
    let (cluster, relay) = Relay::on_embedded(1, PARTITIONS, fault, PICK);
    let t = Tree::new();
    t.agent_file(cluster.bootstrap_servers());
    t.write(
        "probes/p.yaml",
        "name: p\ntopic: in\ninterval: 100ms\ntimeout: 5s\nverify:\n  kafka: { topic: out }\n",
    );
    let agent = common::finished_agent_serving(&t, Plan::Rounds(ROUNDS)).await;
    let addr = agent.http_addr().unwrap().to_string();
    let (code, body) = get(&addr, "/status").await;
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    let p = &status["probes"][0];
    let sent = ROUNDS * PARTITIONS as u64;
    let headers = headers_on(cluster.bootstrap_servers(), "in", sent as usize).await;

    // The slow (picked) records lead the list, each with the trace id its record carries.
    let k = expected_picks() as usize;
    assert!(k > 0 && k < slo_probe::SLOWEST, "{k}");
    let slowest = p["slowest"].as_array().unwrap();
    assert_eq!(slowest.len(), slo_probe::SLOWEST);
    let mut latencies = Vec::new();
    for (i, r) in slowest.iter().enumerate() {
        let h = &headers[r["record_id"].as_str().unwrap()];
        assert_eq!(r["trace_id"], h.trace_id.as_str());
        assert_eq!(
            (r["partition"].as_i64(), r["offset"].as_i64()),
            (Some(h.partition.into()), Some(h.offset))
        );
        assert_eq!(r["outcome"], "ok");
        let slow = PICK.picks(h.partition, r["seq"].as_u64().unwrap());
        assert_eq!(slow, i < k, "rank {i}: {r}");
        let ms = r["latency_ms"].as_f64().unwrap();
        if slow {
            assert!(ms >= SLOW.as_secs_f64() * 1e3, "{r}");
        }
        latencies.push(ms);
    }
    assert!(
        latencies.windows(2).all(|w| w[0] >= w[1]),
        "slowest first: {latencies:?}"
    );

    // The last results: newest first, every one with its trace.
    let last = p["last_results"].as_array().unwrap();
    assert_eq!(last.len(), slo_probe::LAST);
    for r in last {
        let h = &headers[r["record_id"].as_str().unwrap()];
        assert_eq!(r["trace_id"], h.trace_id.as_str());
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["span_id"].as_str().unwrap().len(), 16);
    }
    assert!(
        last.iter().any(|r| r["seq"] == ROUNDS - 1),
        "the last round is among the last results"
    );

    agent.shutdown(std::future::pending()).await;
    relay.stop().await;
}
