//! The probe loop end to end on librdkafka's mock cluster: every record verified on every
//! partition, the metrics contract over HTTP, an injected delay failing a latency SLO, and an
//! unreachable cluster.

mod common;

use std::time::Duration;

use clap::Parser;
use common::{Running, Tree, get, sample};
use serde_json::{Value, json};
use slo_probe::EMBEDDED_NOTICE;
use slo_probe::EmbeddedCluster;
use slo_probe::Plan;
use slo_probe::cli::{Cli, Exit, execute};
use slo_probe::config::{self, Sources};
use slo_probe::metric_names as names;
use slo_probe::{Agent, AgentOptions};

/// Guards against a hang; never expected to elapse.
const GUARD: Duration = Duration::from_secs(120);

const CANARY: &str = "\
name: canary
interval: 200ms
timeout: 5s
payload_bytes: 100
tags: { team: payments }
slos:
  - { name: freshness, latency_below: 1s, objective: 99% }
  - { name: completeness, objective: 99.9% }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_verifies_every_record_on_every_partition() {
    let t = Tree::new();
    let probes = t.write("probes/canary.yaml", CANARY);
    let report = t.path().join("verdict.json");
    let cli = Cli::try_parse_from([
        "slo-probe",
        "smoke",
        "--embedded",
        "--probes",
        probes.to_str().unwrap(),
        "--rounds",
        "4",
        "--output",
        "json",
        "--report",
        report.to_str().unwrap(),
    ])
    .unwrap();
    let exit = tokio::time::timeout(GUARD, execute(cli))
        .await
        .expect("smoke ends");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(exit, Exit::Ok, "{v:#}");
    assert_eq!(v["passed"], true);
    let p = &v["probes"][0];
    assert_eq!(p["rounds"], 4);
    let r = &p["records"];
    assert_eq!(
        (r["sent"].as_u64(), r["ok"].as_u64()),
        (Some(12), Some(12)),
        "{p:#}"
    );
    for outcome in ["lost", "corrupt", "send_failed", "in_flight"] {
        assert_eq!(r[outcome], 0, "{outcome}");
    }
    // every partition of the 3-partition topic got a record each round, and each was verified
    let parts = p["partitions"].as_object().unwrap();
    assert_eq!(parts.keys().collect::<Vec<_>>(), ["0", "1", "2"]);
    for (id, c) in parts {
        assert_eq!(
            (c["sent"].as_u64(), c["ok"].as_u64()),
            (Some(4), Some(4)),
            "partition {id}"
        );
    }
    // the HDR histogram holds exactly the verified records
    assert_eq!(p["latency"]["count"], r["ok"]);
    assert_eq!(p["produce_latency"]["count"], r["sent"]);
    assert!(p["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(
        p["slos"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["met"] == true)
    );
    assert_eq!(p["events"]["duplicates"], 0);
    assert_eq!(p["events"]["foreign"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_http_carry_the_whole_contract() {
    let t = Tree::new();
    let probes = t.write("probes/canary.yaml", CANARY);
    let config = config::load(&Sources {
        agent_file: None,
        probe_paths: vec![probes],
    })
    .unwrap();
    let opts = AgentOptions {
        plan: Plan::Rounds(3),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        embedded: true,
    };
    let agent = Agent::start(config, opts).await.unwrap();
    let addr = agent.http_addr().unwrap().to_string();
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("3 rounds settle");

    let (status, m) = get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in names::ALL {
        assert!(
            m.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{m}"
        );
    }
    let probe = ("probe", "canary");
    let sent = sample(&m, names::RECORDS_SENT, &[probe]).unwrap();
    assert_eq!(sent, 9.0);
    // One send-lag observation per round (3 partitions each), none of them absurd.
    let lag = format!("{}_count", names::SEND_LAG);
    assert_eq!(sample(&m, &lag, &[]), Some(3.0));
    let lag_sum = sample(&m, &format!("{}_sum", names::SEND_LAG), &[]).unwrap();
    assert!((0.0..3.0).contains(&lag_sum), "send lag sum {lag_sum}");
    let outcomes: Vec<f64> = ["ok", "lost", "corrupt", "send_failed"]
        .iter()
        .map(|o| {
            sample(&m, names::RECORDS, &[probe, ("outcome", o)])
                .unwrap_or_else(|| panic!("outcome {o}"))
        })
        .collect();
    assert_eq!(outcomes, [9.0, 0.0, 0.0, 0.0]);
    let in_flight = sample(&m, names::IN_FLIGHT, &[probe]).unwrap();
    assert_eq!(
        sent,
        outcomes.iter().sum::<f64>() + in_flight,
        "conservation"
    );
    for q in ["0.5", "0.9", "0.95", "0.99", "0.999", "1"] {
        for name in [names::E2E_LATENCY, names::PRODUCE_LATENCY] {
            let v =
                sample(&m, name, &[probe, ("quantile", q)]).unwrap_or_else(|| panic!("{name} {q}"));
            assert!(
                v.is_finite() && v > 0.0 && v < 5.0,
                "{name}{{quantile={q}}} = {v}"
            );
        }
    }
    let p50 = sample(&m, names::E2E_LATENCY, &[probe, ("quantile", "0.5")]).unwrap();
    let max = sample(&m, names::E2E_LATENCY, &[probe, ("quantile", "1")]).unwrap();
    assert!(p50 <= max);
    assert_eq!(
        sample(&m, &format!("{}_count", names::E2E_DISTRIBUTION), &[probe]),
        Some(9.0)
    );
    // the SLO threshold is a bucket boundary
    let bucket = format!("{}_bucket", names::E2E_DISTRIBUTION);
    assert_eq!(sample(&m, &bucket, &[probe, ("le", "1")]), Some(9.0));
    assert_eq!(sample(&m, names::AVAILABILITY, &[probe]), Some(1.0));
    assert!(sample(&m, names::FRESHNESS, &[probe]).unwrap() >= 0.0);
    assert_eq!(
        sample(
            &m,
            names::SLO_EVENTS,
            &[probe, ("slo", "freshness"), ("result", "good")]
        ),
        Some(9.0)
    );
    // the build, and that this agent ran on the embedded cluster, not a pipeline
    assert_eq!(
        sample(
            &m,
            names::BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION")), ("embedded", "true")]
        ),
        Some(1.0)
    );
    // every series carries the agent's site (its only value: no added cardinality)
    let samples: Vec<&str> = m.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(samples.len() > 50, "{m}");
    for l in samples {
        assert!(l.contains("site=\"default\""), "no site label: {l}");
    }

    assert_eq!(get(&addr, "/healthz").await.0, 200);
    assert_eq!(get(&addr, "/readyz").await, (200, "ready\n".to_string()));
    let (status, body) = get(&addr, "/status").await;
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["probes"][0]["name"], "canary");
    assert_eq!(s["probes"][0]["records"]["ok"], 9);
    assert_eq!(s["probes"][0]["partitions"], serde_json::json!([0, 1, 2]));
    // on the embedded cluster: said by /status and first on the live page, as by the smoke report
    assert_eq!(s["embedded"], true, "{s:#}");
    let (_, page) = get(&addr, "/").await;
    let banner = page
        .find("EMBEDDED CLUSTER: this agent runs on the mock Kafka cluster")
        .unwrap();
    assert!(
        banner < page.find("data-probe=").unwrap(),
        "before every probe"
    );
    // the mock cluster holds every fetch: its verifier keeps 10 ms without detecting anything
    let fetch_wait = &s["clusters"]["default"]["fetch_wait"];
    assert_eq!(
        (fetch_wait["chosen"].as_str(), fetch_wait["max_ms"].as_u64()),
        (Some("embedded"), Some(10)),
        "{s:#}"
    );
    let report = agent.shutdown(std::future::ready(())).await;
    assert!(report.drained);
}

#[test]
fn injected_round_trip_time_fails_the_latency_slo() {
    const RTT: Duration = Duration::from_millis(250);
    let cluster = EmbeddedCluster::start(3).unwrap();
    cluster.create_topic("synthetic-sla", 3, 1).unwrap();
    cluster.set_round_trip_time(None, RTT).unwrap();
    let t = Tree::new();
    t.agent_file(cluster.bootstrap_servers());
    t.write(
        "probes/slow.yaml",
        "name: slow\ninterval: 500ms\ntimeout: 10s\nslos:\n  - { name: freshness, latency_below: 100ms, objective: 99% }\n  - { name: completeness, objective: 99% }\n",
    );
    let mut agent = Running::spawn(
        t.path(),
        &["smoke", "--rounds", "2", "--report", "verdict.json"],
        &[],
    );
    let status = agent.wait_exit(GUARD);
    let stdout_verdict: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("verdict.json")).unwrap())
            .unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "{stdout_verdict:#}\n{}",
        agent.seen.join("\n")
    );
    let p = &stdout_verdict["probes"][0];
    assert_eq!(p["records"]["ok"], 6, "records arrive, just late");
    let p50 = p["latency"]["p50_ms"].as_f64().unwrap();
    assert!(
        p50 >= RTT.as_secs_f64() * 1e3,
        "p50 {p50} ms reflects the {RTT:?} injected"
    );
    let slos = p["slos"].as_array().unwrap();
    assert_eq!(slos[0]["name"], "freshness");
    assert_eq!(
        (slos[0]["met"].as_bool(), slos[0]["bad"].as_u64()),
        (Some(false), Some(6))
    );
    assert_eq!(slos[1]["met"], true, "completeness holds: nothing lost");
}

#[test]
fn the_text_verdict_names_the_failed_slo() {
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("synthetic-sla", 1, 1).unwrap();
    cluster
        .set_round_trip_time(None, Duration::from_millis(150))
        .unwrap();
    let t = Tree::new();
    t.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  c:\n    bootstrap_servers: {}\n",
            cluster.bootstrap_servers()
        ),
    );
    t.write("probes/slow.yaml", "name: slow\ninterval: 300ms\nslos:\n  - { name: snappy, latency_below: 50ms, objective: 90% }\n");
    let out = common::run(
        t.path(),
        &["smoke", "--rounds", "2", "--report", "verdict.xml"],
        &[],
    );
    assert_eq!(out.code(), 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("FAIL slow: slo snappy not met: 0% good (0 good, 2 bad), objective 90%"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("snappy") && l.contains("FAILED")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.trim_end().ends_with("s)")
            && out.stdout.contains("smoke: FAIL (1 probe, 2 records"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("[slow] round 2/2 settled: 2 ok"),
        "progress is shown: {}",
        out.stderr
    );
    let junit = std::fs::read_to_string(t.path().join("verdict.xml")).unwrap();
    assert!(
        junit.contains(r#"<testsuite name="slow" tests="2" skipped="0" errors="0" failures="1">"#),
        "{junit}"
    );
    assert!(
        junit.contains(r#"<testcase name="slo snappy">"#)
            && junit.contains(r#"<failure message="slo snappy not met"#),
        "{junit}"
    );
}

#[test]
fn an_unreachable_cluster_exits_2_naming_the_servers() {
    let port = common::closed_port();
    let servers = format!("127.0.0.1:{port}");
    let t = Tree::new();
    t.agent_file(&servers);
    t.write("probes/a.yaml", "name: orders\n");
    let args = [
        "smoke",
        "--connect-timeout",
        "3s",
        "--report",
        "verdict.xml",
    ];
    let mut agent = Running::spawn(t.path(), &args, &[]);
    let status = agent.wait_exit(GUARD);
    let stderr = agent.seen.join("\n");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "slo-probe: probe orders: cannot reach cluster primary ({servers})"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("could not run: 1 probe(s) could not reach their topic within 3s"),
        "{stderr}"
    );
    // the report is written all the same: CI shows why the step failed
    let junit = std::fs::read_to_string(t.path().join("verdict.xml")).unwrap();
    assert!(
        junit.contains(r#"<testsuites name="slo-probe smoke: COULD NOT RUN""#),
        "{junit}"
    );
    assert!(
        junit.contains(&format!(
            r#"<error message="could not reach its topic within 3s: cannot reach cluster primary ({servers})"#
        )),
        "{junit}"
    );
    let out = common::run(
        t.path(),
        &[
            "smoke",
            "--connect-timeout",
            "1s",
            "--report",
            "verdict.json",
        ],
        &[],
    );
    assert_eq!(out.code(), 2);
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("verdict.json")).unwrap())
            .unwrap();
    assert_eq!(v["result"], "COULD_NOT_RUN");
    assert_eq!(
        v["reason"],
        "1 probe(s) could not reach their topic within 1s"
    );
    let error = v["probes"][0]["errors"][0].as_str().unwrap();
    assert!(
        error.starts_with(&format!(
            "could not reach its topic within 1s: cannot reach cluster primary ({servers})"
        )),
        "{error}"
    );
}

/// A bootstrap host that does not resolve is named as such, first, not as librdkafka's
/// "BrokerTransportFailure" with the DNS failure left in its log.
#[test]
fn an_unresolvable_bootstrap_host_is_named() {
    let t = Tree::new();
    t.agent_file("kafka.no-such-host.invalid:9092");
    t.write("probes/a.yaml", "name: orders\n");
    let out = common::run(t.path(), &["smoke", "--connect-timeout", "2s"], &[]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "slo-probe: probe orders: cannot reach cluster primary (kafka.no-such-host.invalid:9092): cannot resolve `kafka.no-such-host.invalid` ("
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_topic_is_named_with_its_cluster() {
    let cluster = EmbeddedCluster::start(1).unwrap();
    let t = Tree::new();
    t.agent_file(cluster.bootstrap_servers());
    t.write("probes/a.yaml", "name: orders\ntopic: nope\n");
    let mut agent = Running::spawn(t.path(), &["smoke", "--connect-timeout", "3s"], &[]);
    let status = agent.wait_exit(GUARD);
    let stderr = agent.seen.join("\n");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("topic nope does not exist on cluster primary"),
        "{stderr}"
    );
}

/// A probe topic that does not exist yet is reported (`/readyz`, `/status`) and retried; once it
/// is created the probe covers it, assigned on a consumer already busy with another topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_later_is_discovered_and_covered() {
    let cluster = EmbeddedCluster::start(3).unwrap();
    cluster.create_topic("synthetic-sla", 3, 1).unwrap();
    let t = Tree::new();
    let agent_file = t.write(
        "slo-probe.yaml",
        &format!(
            "metadata_refresh: 1s\nclusters:\n  primary:\n    bootstrap_servers: {}\n",
            cluster.bootstrap_servers()
        ),
    );
    t.write(
        "probes/early.yaml",
        "name: early\ninterval: 200ms\ntimeout: 5s\n",
    );
    t.write(
        "probes/late.yaml",
        "name: late\ntopic: late-topic\ninterval: 200ms\ntimeout: 5s\n",
    );
    let config = config::load(&Sources {
        agent_file: Some(agent_file),
        probe_paths: vec![t.path().join("probes")],
    })
    .unwrap();
    let opts = AgentOptions {
        plan: Plan::Rounds(3),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        embedded: false,
    };
    let agent = Agent::start(config, opts).await.unwrap();
    let addr = agent.http_addr().unwrap().to_string();
    let late = agent
        .probes()
        .iter()
        .find(|p| p.name() == "late")
        .unwrap()
        .clone();
    let early = agent
        .probes()
        .iter()
        .find(|p| p.name() == "early")
        .unwrap()
        .clone();
    let mut late_progress = late.progress();
    let missing = tokio::time::timeout(
        GUARD,
        late_progress.wait_for(|s| s.discovery_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .discovery_error
    .clone()
    .unwrap();
    assert!(
        missing.contains("topic late-topic does not exist on cluster primary"),
        "{missing}"
    );
    let mut early_progress = early.progress();
    tokio::time::timeout(GUARD, early_progress.wait_for(|s| s.rounds_completed >= 1))
        .await
        .unwrap()
        .unwrap();
    let (status, body) = get(&addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("late: topic late-topic does not exist"),
        "{body}"
    );
    let (_, status_json) = get(&addr, "/status").await;
    assert!(
        status_json.contains("late-topic does not exist"),
        "{status_json}"
    );

    cluster.create_topic("late-topic", 3, 1).unwrap();
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("both probes finish");
    for p in [&early, &late] {
        let c = p.progress().borrow().counts;
        assert_eq!(
            (c.sent, c.get(slo_probe::Outcome::Ok)),
            (9, 9),
            "{}: {c:?}",
            p.name()
        );
    }
    assert!(late.progress().borrow().discovery_error.is_none());
    agent.shutdown(std::future::ready(())).await;
}

/// Two agents (same probe name, same topic, different instances) each verify only their own
/// records, and garbage on the topic is counted by reason without disturbing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sharing_a_topic_verify_only_their_own_and_count_garbage() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let cluster = EmbeddedCluster::start(3).unwrap();
    cluster.create_topic("synthetic-sla", 3, 1).unwrap();
    let t = Tree::new();
    let agent_file = t.agent_file(cluster.bootstrap_servers());
    t.write(
        "probes/shared.yaml",
        "name: shared\ninterval: 200ms\ntimeout: 5s\n",
    );
    let sources = Sources {
        agent_file: Some(agent_file),
        probe_paths: vec![t.path().join("probes")],
    };
    let start = || async {
        let opts = AgentOptions {
            plan: Plan::Rounds(8),
            listen: None,
            embedded: false,
        };
        Agent::start(config::load(&sources).unwrap(), opts)
            .await
            .unwrap()
    };
    let (a, b) = (start().await, start().await);
    assert_ne!(a.config.agent.instance, b.config.agent.instance);
    for agent in [&a, &b] {
        let mut rx = agent.probes()[0].progress();
        tokio::time::timeout(GUARD, rx.wait_for(|s| s.rounds_completed >= 1))
            .await
            .unwrap()
            .unwrap();
    }

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    let only_probe_header = OwnedHeaders::new().insert(Header {
        key: "slo-probe-probe",
        value: Some("shared"),
    });
    let garbage: [(&[u8], Option<OwnedHeaders>); 3] = [
        (b"\x00\x01 not json", None),
        (
            br#"{"v":2,"id":"0190c6a0-0000-7000-8000-000000000000"}"#,
            None,
        ),
        (b"{}", Some(only_probe_header)),
    ];
    for (payload, headers) in garbage {
        let mut r = FutureRecord::<(), [u8]>::to("synthetic-sla")
            .partition(0)
            .payload(payload);
        if let Some(h) = headers {
            r = r.headers(h);
        }
        producer.send(r, Duration::from_secs(5)).await.unwrap();
    }

    for agent in [&a, &b] {
        tokio::time::timeout(GUARD, agent.wait_finished())
            .await
            .expect("agent finishes");
        let p = &agent.probes()[0];
        let s = p.snapshot(tokio::time::Instant::now());
        let c = s.progress.counts;
        assert_eq!((c.sent, c.get(slo_probe::Outcome::Ok)), (24, 24), "{c:?}");
        assert_eq!(
            (c.duplicates, c.late, c.reordered),
            (0, 0, 0),
            "the other agent's records are not ours"
        );
        assert_eq!(s.foreign, 3);
        let m = agent.view().render_metrics();
        for reason in ["unparseable", "unknown_version", "missing_headers"] {
            let n = sample(
                &m,
                names::FOREIGN,
                &[("probe", "shared"), ("reason", reason)],
            );
            assert_eq!(n, Some(1.0), "{reason}");
        }
    }
    a.shutdown(std::future::ready(())).await;
    b.shutdown(std::future::ready(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_for_a_duration_sends_every_slot_in_it() {
    let t = Tree::new();
    let probes = t.write(
        "probes/p.yaml",
        "name: timed\ninterval: 300ms\ntimeout: 5s\n",
    );
    let report = t.path().join("verdict.json");
    let cli = Cli::try_parse_from([
        "slo-probe",
        "smoke",
        "--embedded",
        "--probes",
        probes.to_str().unwrap(),
        "--duration",
        "1s",
        "--report",
        report.to_str().unwrap(),
    ])
    .unwrap();
    let exit = tokio::time::timeout(GUARD, execute(cli))
        .await
        .expect("smoke ends");
    assert_eq!(exit, Exit::Ok);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // slots at 0, 300, 600 and 900 ms fall within 1 s
    assert_eq!(v["probes"][0]["rounds"], 4, "{v:#}");
    assert_eq!(v["probes"][0]["records"]["ok"], 12);
}

/// A gate never passes a pipeline it never touched: without a cluster `smoke` refuses (78),
/// naming the agent file it looked for (and a misnamed one next to it); with `--embedded` it
/// runs, and every verdict format says so first.
#[test]
fn smoke_refuses_to_check_nothing_and_flags_the_embedded_cluster_first() {
    let t = Tree::new();
    t.write("probes/canary.yaml", CANARY);
    t.write(
        "slo-probe.yml",
        "clusters:\n  primary:\n    bootstrap_servers: kafka-1:9092\n",
    );
    let out = common::run(
        t.path(),
        &["smoke", "--rounds", "1", "--report", "verdict.json"],
        &[],
    );
    assert_eq!(out.code(), 78, "{}\n{}", out.stdout, out.stderr);
    let looked = std::fs::canonicalize(t.path())
        .unwrap()
        .join("slo-probe.yaml");
    assert!(
        out.stderr.contains(&format!(
            "slo-probe: no cluster to check: no agent file (looked for {}, and no --config was given)",
            looked.display()
        )) && out
            .stderr
            .contains("(slo-probe.yml is here: did you mean --config slo-probe.yml?)"),
        "{}",
        out.stderr
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("verdict.json")).unwrap())
            .unwrap();
    assert_eq!(
        (&v["result"], &v["passed"], &v["embedded"]),
        (&json!("CONFIG_ERROR"), &json!(false), &json!(false))
    );
    assert!(
        out.stdout
            .starts_with("smoke: CONFIG ERROR: no cluster to check: no agent file")
    );

    // an agent file without clusters is named too
    t.write("slo-probe.yaml", "site: lab\n");
    let out = common::run(t.path(), &["smoke", "--rounds", "1"], &[]);
    assert_eq!(out.code(), 78);
    assert!(
        out.stderr
            .contains("no cluster to check: the agent file slo-probe.yaml defines no `clusters`"),
        "{}",
        out.stderr
    );

    // asked for: it runs, and says so first in every format
    let out = common::run(
        t.path(),
        &["smoke", "--embedded", "--rounds", "1", "--report", "v.xml"],
        &[],
    );
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.lines().next(), Some(EMBEDDED_NOTICE));
    assert!(
        out.stdout
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains(", on the embedded cluster)"),
        "{}",
        out.stdout
    );
    let junit = std::fs::read_to_string(t.path().join("v.xml")).unwrap();
    assert!(
        junit.contains(&format!(
            r#"<testsuites name="slo-probe smoke ({EMBEDDED_NOTICE})""#
        )),
        "{junit}"
    );
    let out = common::run(
        t.path(),
        &["smoke", "--rounds", "1", "--output", "json"],
        &[("SLO_PROBE_EMBEDDED", "true")],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("{\n  \"embedded\": true,\n  \"result\": \"PASS\","),
        "{}",
        out.stdout
    );
}

/// Ctrl-C during a smoke run: exit 130, and every format says INTERRUPTED (never PASS), with
/// what was measured so far.
#[test]
fn an_interrupted_smoke_says_so_in_every_format() {
    let t = Tree::new();
    t.write("probes/canary.yaml", CANARY);
    for report in ["v.txt", "v.json", "v.xml"] {
        let mut agent = Running::spawn(
            t.path(),
            &[
                "smoke",
                "--embedded",
                "--duration",
                "1h",
                "--log-format",
                "json",
                "--report",
                report,
            ],
            &[],
        );
        agent.wait_event(GUARD, "round settled");
        agent.signal("INT");
        assert_eq!(agent.wait_exit(GUARD).code(), Some(130), "{report}");
        let text = std::fs::read_to_string(t.path().join(report)).unwrap();
        match report {
            "v.txt" => {
                let last = text.trim_end().lines().last().unwrap();
                assert!(last.starts_with("smoke: INTERRUPTED (1 probe, "), "{text}");
                assert!(
                    text.contains("ERROR canary: interrupted before the end: partial results"),
                    "{text}"
                );
                assert!(!text.contains("PASS"), "{text}");
            }
            "v.json" => {
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["result"], "INTERRUPTED");
                assert_eq!(v["passed"], false);
                assert_eq!(v["probes"][0]["passed"], false);
                assert!(
                    v["probes"][0]["records"]["ok"].as_u64().unwrap() >= 3,
                    "{v:#}"
                );
            }
            _ => {
                assert!(
                    text.contains(r#"<testsuites name="slo-probe smoke: INTERRUPTED"#),
                    "{text}"
                );
                assert!(
                    text.contains(
                        r#"<error message="interrupted before the end: partial results""#
                    ),
                    "{text}"
                );
            }
        }
    }
}

/// On a terminal `smoke` draws a progress bar per probe (rounds done, outcomes so far, elapsed
/// and remaining); the same run through a pipe prints one line per settled round. The terminal
/// is a real pseudo-terminal, from util-linux's `script`.
#[test]
fn smoke_on_a_terminal_shows_a_progress_bar() {
    let t = Tree::new();
    t.write(
        "probes/bar.yaml",
        "name: bar\ninterval: 100ms\ntimeout: 5s\ncreate_topic: true\n",
    );
    let command = format!("{} smoke --embedded --rounds 5", common::BIN);
    let out = std::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .current_dir(t.path())
        .env("TERM", "xterm")
        .output()
        .expect("script runs");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{tty}");
    assert!(tty.contains("bar [") && tty.contains("5/5 rounds"), "{tty}");
    assert!(
        tty.contains("15 ok, 0 lost, 0 corrupt, 0 in flight"),
        "{tty}"
    );
    assert!(tty.contains("elapsed"), "{tty}");
    assert!(
        !tty.contains("round 5/5 settled"),
        "no plain lines on a terminal: {tty}"
    );

    let piped = common::run(t.path(), &["smoke", "--embedded", "--rounds", "5"], &[]);
    assert_eq!(piped.code(), 0);
    assert!(
        piped.stderr.contains("[bar] round 5/5 settled: 15 ok"),
        "{}",
        piped.stderr
    );
    assert!(!piped.stderr.contains("5/5 rounds"), "{}", piped.stderr);
}
