//! Against real, separately running software: tansu brokers (one or two), Prometheus and
//! promtool, and a TLS/SASL front.
//! Every test asserts counts.

mod common;

use std::time::Duration;

use common::front::Front;
use common::infra::{Prometheus, Tansu, free_port, promtool};
use common::relay::{Fault, Picker, Relay};
use common::{Running, Tree, create_topics, eventually, get, sample};
use serde_json::Value;
use slo_probe::Agent;
use slo_probe::Plan;
use slo_probe::Snapshot;
use slo_probe::{Counts, Outcome};

use common::GUARD;

fn smoke_json(out: &common::Output) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr))
}

/// An agent in this process, on the given agent and probe files.
async fn agent(agent_yaml: &str, probe_yaml: &str, plan: Plan) -> (Tree, Agent) {
    let t = Tree::new();
    t.write("slo-probe.yaml", agent_yaml);
    t.write("probes/p.yaml", probe_yaml);
    let agent = common::start_agent(&t, plan).await;
    (t, agent)
}

async fn finish(agent: Agent) -> (Counts, Snapshot) {
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("probe finishes");
    let s = agent.probes()[0].snapshot(tokio::time::Instant::now());
    agent.shutdown(std::future::ready(())).await;
    assert!(s.progress.counts.conserved());
    (s.progress.counts, s)
}

#[test]
fn smoke_on_a_real_broker_creates_the_topic_and_verifies_every_partition() {
    let broker = Tansu::start();
    let t = Tree::new();
    t.agent_file(&broker.bootstrap());
    t.write(
        "probes/real.yaml",
        "name: real\ntopic: canary\ninterval: 200ms\ntimeout: 5s\ncreate_topic: { partitions: 3 }\ntags: { team: payments }\nslos:\n  - { name: freshness, latency_below: 1s, objective: 99% }\n",
    );
    let out = common::run(
        t.path(),
        &["smoke", "--rounds", "4", "--output", "json"],
        &[],
    );
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    let p = &smoke_json(&out)["probes"][0];
    assert_eq!(
        (p["records"]["sent"].as_u64(), p["records"]["ok"].as_u64()),
        (Some(12), Some(12))
    );
    let parts = p["partitions"].as_object().unwrap();
    assert_eq!(
        parts.len(),
        3,
        "the topic was created with 3 partitions: {p:#}"
    );
    for (id, c) in parts {
        assert_eq!(
            (c["sent"].as_u64(), c["ok"].as_u64()),
            (Some(4), Some(4)),
            "partition {id}"
        );
    }
    assert_eq!(p["latency"]["count"], 12);

    // A second run finds the topic there and uses it as it is.
    let out = common::run(
        t.path(),
        &["smoke", "--rounds", "1", "--output", "json"],
        &[],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(smoke_json(&out)["probes"][0]["records"]["ok"], 3);
}

#[test]
fn a_missing_topic_without_create_topic_is_named_with_its_cluster() {
    let broker = Tansu::start();
    let t = Tree::new();
    t.agent_file(&broker.bootstrap());
    t.write("probes/p.yaml", "name: p\ntopic: absent\n");
    let out = common::run(t.path(), &["smoke", "--connect-timeout", "5s"], &[]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    let want = format!(
        "slo-probe: probe p: topic absent does not exist on cluster primary ({})",
        broker.bootstrap()
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_promtool_accepts_its_metrics() {
    let broker = Tansu::start();
    let t = Tree::new();
    t.agent_file(&broker.bootstrap());
    t.write(
        "probes/p.yaml",
        "name: scraped\ninterval: 200ms\ntimeout: 5s\ncreate_topic: { partitions: 2 }\n",
    );
    let (mut agent, listen) = Running::run_ready(t.path(), &[], &[]);
    let prometheus = Prometheus::start(std::slice::from_ref(&listen));

    let ok = r#"slo_probe_records_total{probe="scraped",outcome="ok"}"#;
    let first = eventually("Prometheus has scraped ok records", || async {
        let r = prometheus.query(ok).await;
        r.first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
    })
    .await;
    let later = eventually("the ok counter increases in Prometheus", || async {
        let r = prometheus.query(ok).await;
        r.first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .filter(|v| *v > first)
    })
    .await;
    assert!(later > first);
    let quantiles = prometheus
        .query(r#"slo_probe_e2e_latency_seconds{probe="scraped"}"#)
        .await;
    let mut labels: Vec<&str> = quantiles
        .iter()
        .filter_map(|s| s["metric"]["quantile"].as_str())
        .collect();
    labels.sort();
    assert_eq!(labels, ["0.5", "0.9", "0.95", "0.99", "0.999", "1"]);
    for s in &quantiles {
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(v > 0.0 && v < 5.0, "{s}");
    }
    let up = prometheus.query(r#"up{job="slo-probe"}"#).await;
    assert_eq!(up[0]["value"][1], "1");

    let (status, metrics) = get(&listen, "/metrics").await;
    assert_eq!(status, 200);
    // a real cluster: the build says so
    assert_eq!(
        common::sample(&metrics, "slo_probe_build_info", &[("embedded", "false")]),
        Some(1.0),
        "{metrics}"
    );
    let check = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(metrics.as_bytes());
    assert!(
        check.status.success(),
        "promtool: {}{}",
        check.stdout_text(),
        check.stderr_text()
    );
    assert_eq!(
        check.stdout_text() + &check.stderr_text(),
        "",
        "promtool reports no problem"
    );

    agent.signal("TERM");
    assert_eq!(agent.wait_exit(GUARD).code(), Some(0));
}

/// Feeds stdin and collects output, for `promtool check metrics`.
trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

trait Text {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
}

impl Text for std::process::Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Produce on one cluster, verify on another: a mirroring relay between two broker processes
/// adds a known hop, which the end-to-end latency includes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_on_another_cluster_includes_the_mirror_hop() {
    const HOP: Duration = Duration::from_millis(100);
    let (primary, replica) = (Tansu::start(), Tansu::start());
    create_topics(&primary.bootstrap(), &[("orders", 2)]).await;
    create_topics(&replica.bootstrap(), &[("orders", 2)]).await;
    let mirror = Relay::between(
        (&primary.bootstrap(), "orders"),
        (&replica.bootstrap(), "orders"),
        2,
        Fault::Delay(HOP),
        Picker::NONE,
    );
    let agent_yaml = format!(
        "site: eu-west-1a\nclusters:\n  primary: {{ bootstrap_servers: '{}' }}\n  replica: {{ bootstrap_servers: '{}' }}\n",
        primary.bootstrap(),
        replica.bootstrap()
    );
    let probe = "name: mirrored\ncluster: primary\ntopic: orders\ninterval: 200ms\ntimeout: 5s\nverify:\n  kafka: { cluster: replica, topic: orders }\n";
    let (_t, a) = agent(&agent_yaml, probe, Plan::Rounds(5)).await;
    let (c, s) = finish(a).await;
    let tally = mirror.stop().await;
    assert_eq!((c.sent, c.get(Outcome::Ok)), (10, 10), "{c:?}");
    assert_eq!(tally.forwarded, 10, "every record crossed the mirror");
    let p50 = s.e2e_total.unwrap()[0];
    assert!(
        p50 >= HOP.as_secs_f64(),
        "p50 {p50} s includes the {HOP:?} hop"
    );
}

const DOWNSTREAM_EXPECT: &str = "    expect:\n      /amount: 42\n      /source: relay\n      /order/seq: { from: /seq }\n      /order/team: { from: /tags/team }\n";

/// A pipeline stage between `orders` and `orders-enriched` (the relay's transform), and a
/// probe verifying the enriched records found per `id_from` with [`DOWNSTREAM_EXPECT`].
async fn downstream(
    fault: Fault,
    picker: Picker,
    id_from: &str,
    rounds: u64,
) -> (Counts, Snapshot, common::relay::Tally) {
    let broker = Tansu::start();
    create_topics(
        &broker.bootstrap(),
        &[("orders", 3), ("orders-enriched", 3)],
    )
    .await;
    let relay = Relay::start(
        &broker.bootstrap(),
        "orders",
        "orders-enriched",
        3,
        fault,
        picker,
    );
    let probe = format!(
        "name: enriched\ntopic: orders\ninterval: 200ms\ntimeout: 5s\ntags: {{ team: payments }}\nverify:\n  kafka:\n    topic: orders-enriched\n    id_from: {id_from}\n{DOWNSTREAM_EXPECT}"
    );
    let agent_yaml = format!(
        "clusters:\n  primary: {{ bootstrap_servers: '{}' }}\n",
        broker.bootstrap()
    );
    let (_t, a) = agent(&agent_yaml, &probe, Plan::Rounds(rounds)).await;
    let (c, s) = finish(a).await;
    (c, s, relay.stop().await)
}

/// A pipeline stage rewrites every record (rename, wrap, add fields) after a known delay and
/// passes the headers through: found by header, assertions hold, latency includes the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_records_found_by_header_pass_their_assertions() {
    const DELAY: Duration = Duration::from_millis(150);
    let fault = Fault::Transform {
        delay: DELAY,
        keep_headers: true,
    };
    let (c, s, tally) = downstream(fault, Picker::NONE, "header", 4).await;
    assert_eq!(tally.wrong, 0);
    assert_eq!((c.sent, c.get(Outcome::Ok)), (12, 12), "{c:?}");
    assert_eq!((c.get(Outcome::Corrupt), s.foreign), (0, 0));
    assert!(s.e2e_total.unwrap()[0] >= DELAY.as_secs_f64());
}

/// The same stage drops the headers: the id is found at a JSON pointer, and picked records with
/// a wrong amount are `corrupt`, exactly as many as the relay got wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_records_found_by_pointer_catch_a_wrong_transform() {
    let fault = Fault::Transform {
        delay: Duration::from_millis(50),
        keep_headers: false,
    };
    let (c, s, tally) = downstream(fault, Picker { seed: 3, one_in: 3 }, "/order/ref", 6).await;
    assert!(tally.wrong > 0 && tally.wrong < 18, "{tally:?}");
    assert_eq!(c.get(Outcome::Corrupt), tally.wrong);
    assert_eq!(c.get(Outcome::Ok), c.sent - tally.wrong);
    assert_eq!((c.get(Outcome::Lost), s.foreign), (0, 0));
}

/// Two agents (two sites) probe the same topic: each verifies only its own records.
#[test]
fn two_sites_on_one_topic_do_not_disturb_each_other() {
    let broker = Tansu::start();
    let trees: Vec<Tree> = ["eu-west-1a", "us-east-1b"]
        .iter()
        .map(|site| {
            let t = Tree::new();
            t.write("slo-probe.yaml", &format!("site: {site}\nclusters:\n  primary: {{ bootstrap_servers: '{}' }}\n", broker.bootstrap()));
            t.write("probes/p.yaml", "name: shared\ninterval: 200ms\ntimeout: 5s\ncreate_topic: { partitions: 2 }\nslos:\n  - { name: availability, objective: 99.9% }\n");
            t
        })
        .collect();
    let mut agents: Vec<Running> = trees
        .iter()
        .map(|t| {
            Running::spawn(
                t.path(),
                &["smoke", "--rounds", "6", "--report", "verdict.json"],
                &[],
            )
        })
        .collect();
    for (agent, t) in agents.iter_mut().zip(&trees) {
        let status = agent.wait_exit(GUARD);
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(t.path().join("verdict.json")).unwrap())
                .unwrap();
        assert_eq!(status.code(), Some(0), "{v:#}");
        let p = &v["probes"][0];
        assert_eq!(
            (p["records"]["sent"].as_u64(), p["records"]["ok"].as_u64()),
            (Some(12), Some(12))
        );
        assert_eq!(p["availability_percent"], 100.0);
        for e in ["duplicates", "reordered", "late_arrivals", "foreign"] {
            assert_eq!(
                p["events"][e], 0,
                "{e}: the other site's records are not counted"
            );
        }
    }
}

const SECRET: &str = "pw-4f1d9c-never-shown";

/// SASL (PLAIN, SCRAM-SHA-256/512) and TLS properties reach librdkafka unchanged and work
/// against a secured listener; a wrong password cannot connect; secrets come from the
/// environment or a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_and_tls_properties_pass_through_to_librdkafka() {
    let cases = [
        (
            "SASL_PLAINTEXT",
            Some("PLAIN"),
            false,
            "sasl.password: ${SLO_PROBE_TEST_SECRET}",
        ),
        (
            "SASL_PLAINTEXT",
            Some("SCRAM-SHA-512"),
            false,
            "sasl.password_file: secret.txt",
        ),
        ("SSL", None, true, ""),
        (
            "SASL_SSL",
            Some("SCRAM-SHA-256"),
            true,
            "sasl.password: ${SLO_PROBE_TEST_SECRET}",
        ),
    ];
    for (protocol, mechanism, tls, password) in cases {
        let front_port = free_port();
        let broker = Tansu::advertising(Some(front_port));
        let t = Tree::new();
        let upstream = format!("127.0.0.1:{}", broker.port).parse().unwrap();
        let user = mechanism.map(|_| ("probe", SECRET));
        let front = Front::start(front_port, upstream, tls, user, t.path()).await;
        t.write("secret.txt", &format!("{SECRET}\n"));
        let mut props = format!("      security.protocol: {protocol}\n");
        if let Some(m) = mechanism {
            props += &format!(
                "      sasl.mechanism: {m}\n      sasl.username: probe\n      {password}\n"
            );
        }
        if let Some(ca) = &front.ca {
            props += &format!("      ssl.ca.location: {}\n", ca.display());
        }
        t.write(
            "slo-probe.yaml",
            &format!(
                "clusters:\n  primary:\n    bootstrap_servers: {}\n    properties:\n{props}",
                broker.bootstrap()
            ),
        );
        t.write(
            "probes/p.yaml",
            "name: secured\ninterval: 200ms\ntimeout: 5s\ncreate_topic: true\n",
        );
        let env = [("SLO_PROBE_TEST_SECRET", SECRET)];
        let dir = t.path().to_path_buf();
        let out = tokio::task::spawn_blocking(move || {
            common::run(&dir, &["smoke", "--rounds", "2", "--output", "json"], &env)
        })
        .await
        .unwrap();
        assert_eq!(
            out.code(),
            0,
            "{protocol} {mechanism:?}: {}\n{}",
            out.stdout,
            out.stderr
        );
        let p = &smoke_json(&out)["probes"][0];
        assert_eq!(p["records"]["ok"], 2, "{protocol} {mechanism:?}");
        assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
        assert_eq!(front.rejected.load(std::sync::atomic::Ordering::Relaxed), 0);

        if mechanism.is_some() {
            let env = [("SLO_PROBE_TEST_SECRET", "wrong-password")];
            std::fs::write(t.path().join("secret.txt"), "wrong-password\n").unwrap();
            let dir = t.path().to_path_buf();
            let out = tokio::task::spawn_blocking(move || {
                common::run(
                    &dir,
                    &["smoke", "--rounds", "1", "--connect-timeout", "3s"],
                    &env,
                )
            })
            .await
            .unwrap();
            assert_eq!(
                out.code(),
                2,
                "{protocol} {mechanism:?} with a wrong password: {}",
                out.stderr
            );
            assert!(front.rejected.load(std::sync::atomic::Ordering::Relaxed) > 0);
        }
    }
}

/// The secret of a SASL cluster never appears in the logs (debug level included), `/metrics`
/// or `/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_never_appears_in_logs_metrics_or_status() {
    let front_port = free_port();
    let broker = Tansu::advertising(Some(front_port));
    let t = Tree::new();
    let upstream = format!("127.0.0.1:{}", broker.port).parse().unwrap();
    let _front = Front::start(
        front_port,
        upstream,
        false,
        Some(("probe", SECRET)),
        t.path(),
    )
    .await;
    t.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  primary:\n    bootstrap_servers: {}\n    properties:\n      security.protocol: SASL_PLAINTEXT\n      sasl.mechanism: SCRAM-SHA-512\n      sasl.username: probe\n      sasl.password: ${{SLO_PROBE_TEST_SECRET}}\n",
            broker.bootstrap()
        ),
    );
    t.write(
        "probes/p.yaml",
        "name: secured\ninterval: 200ms\ntimeout: 5s\ncreate_topic: true\n",
    );
    let env = [("SLO_PROBE_TEST_SECRET", SECRET)];
    let (mut agent, listen) = Running::run_ready(t.path(), &["--log-level", "debug"], &env);
    let (_, metrics) = get(&listen, "/metrics").await;
    let (_, status) = get(&listen, "/status").await;
    assert!(sample(&metrics, "slo_probe_records_total", &[("outcome", "ok")]).unwrap() > 0.0);
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(GUARD).code(), Some(0));
    let logs = agent.seen.join("\n");
    assert!(logs.contains(r#""level":"DEBUG""#), "debug logging was on");
    for (what, text) in [
        ("logs", &logs),
        ("/metrics", &metrics),
        ("/status", &status),
    ] {
        assert!(!text.contains(SECRET), "the secret leaked into {what}");
    }
}

/// The broker goes away mid-run (its listener is killed: every connection reset, every connect
/// refused) and comes back on the same port with its data, as a restarted Kafka broker does: the
/// agent keeps running, counts the gap, `/readyz` goes 503 and back to 200, records flow again.
///
/// The listener is a plain front inside the test process, not the tansu process itself:
/// tansu 0.6 restarts either empty (memory storage; its topics come back with new ids, and its
/// answer to a fetch for the old id, a zero topic id, makes librdkafka 2.12.1 dereference a null
/// topic name and crash) or with fetches stalled (S3 storage). Neither is what a Kafka broker
/// restart looks like to a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_is_an_outage_the_agent_recovers_from() {
    let front_port = free_port();
    let broker = Tansu::advertising(Some(front_port));
    let upstream = format!("127.0.0.1:{}", broker.port).parse().unwrap();
    let t = Tree::new();
    let listener = || Front::start(front_port, upstream, false, None, t.path());
    let mut front = Some(listener().await);
    t.agent_file(&broker.bootstrap());
    t.write(
        "probes/p.yaml",
        "name: outage\ninterval: 200ms\ntimeout: 1s\ncreate_topic: true\n",
    );
    let (mut agent, listen) = Running::run_ready(t.path(), &[], &[]);
    assert_eq!(get(&listen, "/readyz").await.0, 200);
    let counter =
        |m: &str, o: &str| sample(m, "slo_probe_records_total", &[("outcome", o)]).unwrap();

    front.take(); // the broker goes away
    let body = eventually("/readyz reports the outage", || async {
        let (status, body) = get(&listen, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await;
    assert!(body.contains("outage: no record verified for"), "{body}");
    let failed_during = eventually("the gap is counted", || async {
        let (_, m) = get(&listen, "/metrics").await;
        let failed = counter(&m, "lost") + counter(&m, "send_failed");
        (failed >= 3.0).then_some(failed)
    })
    .await;
    let (_, m) = get(&listen, "/metrics").await;
    let ok_before = counter(&m, "ok");

    front = Some(listener().await); // and comes back
    eventually("/readyz is ready again", || async {
        (get(&listen, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (_, m) = get(&listen, "/metrics").await;
    assert!(
        counter(&m, "ok") > ok_before,
        "records verified again after the restart"
    );
    let sent = sample(&m, "slo_probe_records_sent_total", &[]).unwrap();
    let settled: f64 = ["ok", "lost", "corrupt", "send_failed"]
        .iter()
        .map(|o| counter(&m, o))
        .sum();
    assert_eq!(
        sent,
        settled + sample(&m, "slo_probe_in_flight", &[]).unwrap()
    );

    agent.signal("TERM");
    assert_eq!(
        agent.wait_exit(GUARD).code(),
        Some(0),
        "{}",
        agent.seen.join("\n")
    );
    let f = &agent.events("probe final counts")[0];
    let n = |k: &str| f[k].as_u64().unwrap();
    assert_eq!(n("in_flight"), 0);
    assert_eq!(
        n("sent"),
        n("ok") + n("lost") + n("corrupt") + n("send_failed")
    );
    assert!((n("lost") + n("send_failed")) as f64 >= failed_during);
    assert_eq!(n("corrupt"), 0);
    drop(front);
}

/// What an idle agent costs a broker, counted at a relay in front of tansu (a broker that holds
/// every fetch for the whole wait): requests per second by kind over a few seconds with nothing
/// to send, from the one consumer per cluster, one empty fetch per wait (or per the broker's own
/// hold, when longer). Three agents: one still deciding its fetch wait (a probe every hour: too
/// few records to compare, so the verifier's 10 ms consumer and the detector's 1 s one both
/// fetch), one that decided tansu holds fetches and kept 10 ms, and one told 500 ms in its
/// settings (what an agent costs after raising its wait on a broker that answers when data
/// arrives, where an empty fetch is held for the whole wait too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_costs_a_broker_one_fetch_per_wait() {
    use common::counting::{CountingRelay, FETCH};
    use slo_probe::FetchWaitChoice as Choice;
    const MEASURED: Duration = Duration::from_secs(5);
    let cases = [
        ("10 ms, still deciding", None, "1h", Choice::Detecting),
        ("10 ms, decided: holds", None, "200ms", Choice::Holds),
        (
            "500 ms, set by the user",
            Some("500"),
            "200ms",
            Choice::User,
        ),
    ];
    let mut rates = Vec::new();
    for (what, wait, interval, chosen) in cases {
        let relay_port = free_port();
        let broker = Tansu::advertising(Some(relay_port));
        let relay = CountingRelay::start(relay_port, format!("127.0.0.1:{}", broker.port)).await;
        let consumer = wait.map_or(String::new(), |w| {
            format!("    consumer: {{ fetch.wait.max.ms: \"{w}\" }}\n")
        });
        let agent_yaml = format!(
            "clusters:\n  primary:\n    bootstrap_servers: '127.0.0.1:{relay_port}'\n{consumer}"
        );
        let probe = format!(
            "name: idle\ninterval: {interval}\ntimeout: 5s\ncreate_topic: {{ partitions: 1 }}\n"
        );
        let (_t, agent) = agent(&agent_yaml, &probe, Plan::Forever).await;
        let p = agent.probes()[0].clone();
        eventually("the first round settles", || async {
            let c = p.snapshot(tokio::time::Instant::now()).progress.counts;
            (c.get(Outcome::Ok) >= 1).then_some(())
        })
        .await;
        if chosen == Choice::Holds {
            assert_eq!(decision(&agent).await.chosen, Choice::Holds);
        }
        // nothing more to send from here on
        agent.stop_sending();
        tokio::time::timeout(GUARD, agent.wait_finished())
            .await
            .expect("the probe drains");
        let before = relay.counts();
        // a measuring period, not a wait for anything
        tokio::time::sleep(MEASURED).await;
        let after = relay.counts();
        let status = fetch_wait(&agent);
        assert_eq!(status.chosen, chosen, "{what}: {status:?}");
        agent.shutdown(std::future::ready(())).await;
        let per_second = |key: i16| {
            (after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0)) as f64
                / MEASURED.as_secs_f64()
        };
        let all: f64 = after.keys().map(|&k| per_second(k)).sum();
        eprintln!(
            "fetch.wait.max.ms {what}: {:.1} fetches/s, {all:.1} requests/s in all, to the one broker",
            per_second(FETCH)
        );
        rates.push((per_second(FETCH), all));
    }
    let ((deciding, _), (fast, _), (slow, slow_all)) = (rates[0], rates[1], rates[2]);
    // At 500 ms the one consumer fetches about twice a second; at 10 ms several times as often
    // (how often depends on how long the broker holds an empty fetch: tansu about 50 ms); while
    // deciding, the detector adds about one fetch a second.
    assert!(slow <= 3.0 && slow_all <= 5.0, "{rates:?}");
    assert!(fast > 3.0 * slow, "{rates:?}");
    assert!(deciding > 3.0 * slow, "{rates:?}");
}

/// The verifier's fetch wait and how it was chosen, now.
fn fetch_wait(agent: &Agent) -> slo_probe::FetchWaitStatus {
    agent.view().fetch_wait["primary"].borrow().clone()
}

/// The fetch wait once the detector decided (or gave up).
async fn decision(agent: &Agent) -> slo_probe::FetchWaitStatus {
    let mut rx = agent.view().fetch_wait["primary"].clone();
    let decided = tokio::time::timeout(
        GUARD,
        rx.wait_for(|s| s.chosen != slo_probe::FetchWaitChoice::Detecting),
    )
    .await
    .expect("the detector decides")
    .expect("the agent runs");
    decided.clone()
}

/// Waits for the detector's decision, started from `started`, and checks it chose `chosen` at
/// `max_ms`, saying why with `why`; `/status` shows the same as `shown_as`.
async fn decided_as(
    agent: &Agent,
    addr: &str,
    started: std::time::Instant,
    (chosen, max_ms, why, shown_as): (slo_probe::FetchWaitChoice, u64, &str, &str),
) -> slo_probe::FetchWaitStatus {
    assert_eq!(
        fetch_wait(agent).chosen,
        slo_probe::FetchWaitChoice::Detecting
    );
    let decided = decision(agent).await;
    eprintln!("decided after {:?}: {}", started.elapsed(), decided.why);
    assert_eq!(
        (decided.chosen, decided.max_ms),
        (chosen, max_ms),
        "{decided:?}"
    );
    assert!(decided.why.starts_with(why), "{}", decided.why);
    let (_, status) = get(addr, "/status").await;
    let status: Value = serde_json::from_str(&status).unwrap();
    let shown = &status["clusters"]["primary"]["fetch_wait"];
    assert_eq!(
        (shown["chosen"].as_str(), shown["max_ms"].as_u64()),
        (Some(shown_as), Some(max_ms)),
        "{shown}"
    );
    decided
}

/// Waits until `more` records beyond those verified now are verified (`what` says which).
async fn verified_more(agent: &Agent, more: u64, what: &str) -> u64 {
    let p = agent.probes()[0].clone();
    let ok_then = p
        .snapshot(tokio::time::Instant::now())
        .progress
        .counts
        .get(Outcome::Ok);
    eventually(what, || async {
        let c = p.snapshot(tokio::time::Instant::now()).progress.counts;
        (c.get(Outcome::Ok) >= ok_then + more).then_some(())
    })
    .await;
    ok_then
}

/// An agent in this process serving `/status` on a free port, probing `primary` at `bootstrap`
/// every 200 ms (3 partitions) until told to stop.
async fn agent_serving(bootstrap: &str) -> (Tree, Agent, String) {
    let t = Tree::new();
    t.agent_file(bootstrap);
    t.write(
        "probes/p.yaml",
        "name: fetched\ninterval: 200ms\ntimeout: 5s\ncreate_topic: { partitions: 3 }\n",
    );
    let sources = slo_probe::config::Sources {
        agent_file: Some(t.path().join("slo-probe.yaml")),
        probe_paths: vec![t.path().join("probes")],
    };
    let opts = slo_probe::AgentOptions {
        plan: Plan::Forever,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        embedded: false,
    };
    let agent = Agent::start(slo_probe::config::load(&sources).unwrap(), opts)
        .await
        .unwrap();
    let addr = agent.http_addr().unwrap().to_string();
    (t, agent, addr)
}

/// Stops sending, waits for every record's outcome, and returns the counts and the window's
/// latency p50 (seconds).
async fn drain(agent: Agent) -> (Counts, Snapshot, f64) {
    agent.stop_sending();
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("the probe drains");
    let s = agent.probes()[0].snapshot(tokio::time::Instant::now());
    agent.shutdown(std::future::ready(())).await;
    assert!(s.progress.counts.conserved());
    let p50 = s.e2e_window.expect("verified records")[0];
    (s.progress.counts, s, p50)
}

/// A broker that holds fetches for the whole wait (tansu): the detector finds it out from the
/// first records, the verifier keeps 10 ms, and latency stays what the pipeline makes it (at
/// 500 ms, p50 would be about 250 ms of fetch wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_broker_that_holds_fetches_the_verifier_keeps_10_ms() {
    use slo_probe::FetchWaitChoice as Choice;
    let broker = Tansu::start();
    let started = std::time::Instant::now();
    let (_t, agent, addr) = agent_serving(&broker.bootstrap()).await;
    let why = "broker holds fetches for the whole wait: ";
    let decided = decided_as(&agent, &addr, started, (Choice::Holds, 10, why, "holds")).await;
    let (_, status) = get(&addr, "/status").await;
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["clusters"]["primary"]["fetch_wait"]["why"],
        decided.why.as_str()
    );
    verified_more(&agent, 30, "ten more rounds are verified").await;
    let (c, s, p50) = drain(agent).await;
    eprintln!(
        "holding broker at 10 ms: p50 {:.1} ms over {} records",
        p50 * 1e3,
        s.e2e_window_count
    );
    assert_eq!(c.get(Outcome::Ok), c.sent, "{c:?}");
    assert_eq!((c.duplicates, c.late, c.reordered), (0, 0, 0), "{c:?}");
    assert!(p50 < 0.15, "p50 {p50} s: fetch wait poses as latency");
}

/// A broker that answers fetches when data arrives (`EarlyFetchBroker`, standing for Apache
/// Kafka): the detector finds it out, the verifier switches to a consumer waiting 500 ms at the
/// old one's positions, and every record before and after the switch is verified once; latency
/// stays low, and the stand-in really cut the waits of the fetches it forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_broker_that_answers_fetches_early_the_verifier_raises_its_wait_losing_nothing() {
    use common::early_fetch::{CAP_MS, EarlyFetchBroker};
    use slo_probe::FetchWaitChoice as Choice;
    let broker = EarlyFetchBroker::start().await;
    let started = std::time::Instant::now();
    let (_t, agent, addr) = agent_serving(&broker.bootstrap()).await;
    let why = "broker answers fetches when data arrives: ";
    let early = (Choice::AnswersEarly, 500, why, "answers_early");
    decided_as(&agent, &addr, started, early).await;
    let ok_then = verified_more(&agent, 30, "ten more rounds are verified after the switch").await;
    assert!(ok_then > 0, "records were verified before the switch");
    let (c, s, p50) = drain(agent).await;
    eprintln!(
        "early-answering stand-in at 500 ms: p50 {:.1} ms over {} records",
        p50 * 1e3,
        s.e2e_window_count
    );
    assert_eq!(c.get(Outcome::Ok), c.sent, "none lost: {c:?}");
    assert_eq!(
        (c.duplicates, c.late, c.reordered, s.foreign),
        (0, 0, 0, 0),
        "none read twice: {c:?}"
    );
    assert!(p50 < 0.15, "p50 {p50} s");

    let f = broker.fetches();
    eprintln!("the stand-in saw {f:?}");
    assert!(
        f.unparsed.is_empty(),
        "fetches the stand-in could not read: {:?}",
        f.unparsed
    );
    assert!(!f.by_version.is_empty(), "{f:?}");
    // the verifier before the switch (10 ms), the detector (1000 ms) and the verifier after it
    // (500 ms) all fetched through the stand-in, and every longer wait was cut
    for asked in [10, 1000, 500] {
        assert!(
            f.by_wait.get(&asked).copied().unwrap_or(0) > 0,
            "no fetch asked for {asked} ms: {f:?}"
        );
    }
    let longer: u64 = f.by_wait.range(CAP_MS + 1..).map(|(_, n)| n).sum();
    assert_eq!(f.rewritten, longer, "{f:?}");
}

/// The stand-in reads `MaxWaitMs` where each Fetch version keeps it, and refuses versions it
/// does not know rather than rewriting the wrong bytes.
#[test]
fn the_early_fetch_stand_in_finds_max_wait_in_every_fetch_version() {
    use common::early_fetch::{NEWEST_KNOWN, cap_max_wait};
    /// A Fetch request: header v1 or v2 (with `tags`), then the body's first fields.
    fn fetch(version: i16, client_id: Option<&str>, tags: &[(u8, &[u8])], wait: i32) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&1i16.to_be_bytes());
        f.extend_from_slice(&version.to_be_bytes());
        f.extend_from_slice(&7i32.to_be_bytes());
        match client_id {
            Some(c) => {
                f.extend_from_slice(&(c.len() as i16).to_be_bytes());
                f.extend_from_slice(c.as_bytes());
            }
            None => f.extend_from_slice(&(-1i16).to_be_bytes()),
        }
        if version >= 12 {
            f.push(tags.len() as u8);
            for (tag, data) in tags {
                f.push(*tag);
                f.push(data.len() as u8);
                f.extend_from_slice(data);
            }
        }
        if version <= 14 {
            f.extend_from_slice(&(-1i32).to_be_bytes()); // ReplicaId
        }
        f.extend_from_slice(&wait.to_be_bytes());
        f.extend_from_slice(&1i32.to_be_bytes()); // MinBytes
        f
    }
    for version in 0..=NEWEST_KNOWN {
        for client in [Some("slo-probe-x-consumer"), None] {
            let tags: &[(u8, &[u8])] = &[(0, b"abc"), (5, b"")];
            let mut frame = fetch(version, client, tags, 500);
            let tail = frame.len() - 8;
            assert_eq!(
                cap_max_wait(&mut frame, 10),
                Ok((version, 500)),
                "v{version}"
            );
            assert_eq!(
                frame[tail..],
                [0, 0, 0, 10, 0, 0, 0, 1],
                "v{version}: MaxWaitMs cut, MinBytes kept"
            );
            let mut short = fetch(version, client, &[], 5);
            let before = short.clone();
            assert_eq!(cap_max_wait(&mut short, 10), Ok((version, 5)));
            assert_eq!(short, before, "a shorter wait is left alone");
        }
    }
    let mut unknown = fetch(NEWEST_KNOWN + 1, None, &[], 500);
    let before = unknown.clone();
    assert!(
        cap_max_wait(&mut unknown, 10)
            .unwrap_err()
            .contains("does not know")
    );
    assert_eq!(unknown, before);
}

/// A pipeline stage that gets one field wrong in every record (the relay writes `amount` 41
/// where 42 is expected): the verdict says which field, what was expected and what came, for
/// how many records, and the first of them with where they were sent and read, in JSON, JUnit
/// (its failure message leads with it), text and HTML. Nobody has to read the log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_of_a_corrupting_relay_names_the_field_in_every_format() {
    let broker = Tansu::start();
    create_topics(
        &broker.bootstrap(),
        &[("orders", 3), ("orders-enriched", 3)],
    )
    .await;
    let fault = Fault::Transform {
        delay: Duration::from_millis(10),
        keep_headers: false,
    };
    let every = Picker { seed: 1, one_in: 1 };
    let _relay = Relay::start(
        &broker.bootstrap(),
        "orders",
        "orders-enriched",
        3,
        fault,
        every,
    );
    let t = Tree::new();
    t.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  primary: {{ bootstrap_servers: '{}' }}\n",
            broker.bootstrap()
        ),
    );
    t.write(
        "probes/p.yaml",
        &format!("name: enriched\ntopic: orders\ninterval: 200ms\ntimeout: 5s\ntags: {{ team: payments }}\nverify:\n  kafka:\n    topic: orders-enriched\n    id_from: /order/ref\n{DOWNSTREAM_EXPECT}"),
    );
    const WHY: &str = "assertion /amount: expected 42, got 41 — 12 of 12 records";
    // The JSON report with JUnit on stdout, then the HTML report with the text on stdout.
    let smoke = |report: &str, output: &str| {
        let out = common::run(
            t.path(),
            &[
                "smoke", "--rounds", "4", "--report", report, "--output", output,
            ],
            &[],
        );
        assert_eq!(out.code(), 1, "{}\n{}", out.stdout, out.stderr);
        out.stdout
    };
    let junit = smoke("verdict.json", "junit");
    let v = common::verdict(&t.path().join("verdict.json"));
    let p = &v["probes"][0];
    let failed = p["failed_records"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{p:#}");
    let f = &failed[0];
    assert_eq!(
        (
            f["outcome"].as_str(),
            f["reason"].as_str(),
            f["records"].as_u64()
        ),
        (Some("corrupt"), Some("assertion"), Some(12))
    );
    assert_eq!(
        f["details"],
        serde_json::json!([{ "detail": "assertion /amount: expected 42, got 41", "records": 12 }])
    );
    let examples = f["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 3);
    for e in examples {
        // where it was sent and where it was read: the relay keeps the partition
        assert_eq!(e["read_topic"], "orders-enriched", "{e:#}");
        assert_eq!(e["read_partition"], e["partition"], "{e:#}");
        assert!(e["offset"].is_i64() && e["read_offset"].is_i64(), "{e:#}");
        assert_eq!(e["job"], Value::Null, "no job named: nothing about one");
    }
    let first = examples[0]["record_id"].as_str().unwrap();
    let summary = f["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "12 records arrived corrupt (assertion): {WHY}; e.g. {first} (partition "
        )),
        "{summary}"
    );
    assert_eq!(p["failures"], serde_json::json!([summary]), "{p:#}");
    // JUnit: the records case fails with it as its message, every example in its text.
    let message = format!("message=\"{}", summary.split(';').next().unwrap());
    assert!(junit.contains(&message), "{junit}");
    for e in examples {
        assert!(
            junit.contains(&format!("record {}", e["record_id"].as_str().unwrap())),
            "{junit}"
        );
    }
    // an XML reader of its own reads the same message from the failure element
    let mut reader = quick_xml::Reader::from_str(&junit);
    let message = loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)
                if e.name().as_ref() == b"failure" =>
            {
                let m = e.try_get_attribute("message").unwrap().unwrap();
                break m
                    .normalized_value(quick_xml::XmlVersion::Explicit1_0)
                    .unwrap()
                    .into_owned();
            }
            quick_xml::events::Event::Eof => panic!("no failure element: {junit}"),
            _ => {}
        }
    };
    assert!(
        message.starts_with(&format!("12 records arrived corrupt (assertion): {WHY}")),
        "{message}"
    );
    // Text and HTML.
    let text = smoke("verdict.html", "text");
    assert!(
        text.contains(&format!(
            "FAIL enriched: 12 records arrived corrupt (assertion): {WHY}"
        )),
        "{text}"
    );
    let html = std::fs::read_to_string(t.path().join("verdict.html")).unwrap();
    assert!(
        html.contains("assertion /amount: expected 42, got 41 — 12 of 12 records"),
        "{html}"
    );
    assert!(
        html.contains("data-outcome=\"corrupt\" data-reason=\"assertion\""),
        "{html}"
    );
}
