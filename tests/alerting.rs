//! The alerting chain when a probe cannot send, with real parts only: `slo-probe run` agents,
//! the rules `slo-probe rules` generates, a real Prometheus scraping the agents and evaluating
//! the rules, and a real Alertmanager notifying a webhook served by this test.
//!
//! One agent's cluster is unreachable from the start (a closed port); the other's cluster
//! answers every metadata request about the probe topic with TOPIC_AUTHORIZATION_FAILED (an
//! ACL denying Describe; librdkafka's mock cluster, in this test's process, plays the cluster).
//! Neither can send a record. Both must page within five minutes of starting, and the
//! availability SLO must burn.
//!
//! A real broker (tansu) killed under a running agent pages through the same chain, with rules
//! generated 60 times faster (`rules --time-scale`), within the time its objective implies.

mod common;

use std::time::{Duration, Instant};

use common::infra::{Alertmanager, Prometheus, Webhook, free_port};
use common::{Running, Tree, closed_port, get, run};
use rdkafka::types::RDKafkaRespErr;
use serde_json::Value;
use slo_probe::EmbeddedCluster;

/// The longest an agent that cannot send may go unpaged.
const PAGE_WITHIN: Duration = Duration::from_secs(300);

fn agent_tree(site: &str, bootstrap: &str, probe: &str) -> Tree {
    let t = Tree::new();
    t.write(
        "slo-probe.yaml",
        &format!("site: {site}\nclusters:\n  primary:\n    bootstrap_servers: {bootstrap}\n"),
    );
    t.write(&format!("probes/{}.yaml", probe_name(probe)), probe);
    t
}

fn probe_name(probe: &str) -> &str {
    probe
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_cannot_send_page_within_five_minutes() {
    let started = Instant::now();
    // The probe without an availability SLO: only the not-sending alert can page for it.
    let closed_probe = "name: unreachable\ninterval: 1s\ntimeout: 5s\nslos:\n  - { name: completeness, objective: 99.9% }\n";
    let denied_probe = "name: denied\ntopic: denied-topic\ninterval: 1s\ntimeout: 5s\nslos:\n  - { name: availability, objective: 99.9% }\n";
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("denied-topic", 1, 1).unwrap();
    cluster
        .set_topic_error(
            "denied-topic",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let closed = agent_tree(
        "lab-a",
        &format!("127.0.0.1:{}", closed_port()),
        closed_probe,
    );
    let denied = agent_tree("lab-b", cluster.bootstrap_servers(), denied_probe);

    // The rules, as a user generates them for these probes.
    let rules_dir = Tree::new();
    let out = run(
        rules_dir.path(),
        &[
            "rules",
            "--probes",
            closed.path().join("probes").to_str().unwrap(),
            "--probes",
            denied.path().join("probes").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let rules = rules_dir.write("rules.yaml", &out.stdout);

    let mut webhook = Webhook::start().await;
    let alertmanager = Alertmanager::start(&webhook.url);
    let mut agents = Vec::new();
    let mut targets = Vec::new();
    for t in [&closed, &denied] {
        let listen = format!("127.0.0.1:{}", free_port());
        let args = ["run", "--listen", &listen, "--log-format", "json"];
        agents.push(Running::spawn(t.path(), &args, &[]));
        targets.push(listen);
    }
    let prometheus = Prometheus::alerting(&targets, &rules, &alertmanager.addr);

    // Both agents say why they cannot send, and are not ready.
    for agent in &mut agents {
        agent.wait_event(PAGE_WITHIN, "cannot discover partitions");
    }
    for (addr, why) in [
        (&targets[0], "unreachable: cannot reach cluster primary"),
        (
            &targets[1],
            "denied: cannot read topic denied-topic on cluster primary: TopicAuthorizationFailed (Broker: Topic authorization failed)",
        ),
    ] {
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(why), "{body}");
    }

    // The page: each agent's not-sending alert, from Prometheus through Alertmanager.
    let mut paged: Vec<(String, String)> = Vec::new();
    while paged.len() < 2 {
        let left = PAGE_WITHIN.saturating_sub(started.elapsed());
        let alert = webhook.next(left).await.unwrap_or_else(|| {
            panic!(
                "not paged within {PAGE_WITHIN:?} (paged so far: {paged:?}); agents said:\n{}",
                agents
                    .iter()
                    .flat_map(|a| a.seen.clone())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        let labels = &alert["labels"];
        if labels["alertname"] != "SloProbeNotSending" {
            continue;
        }
        assert_eq!(alert["status"], "firing");
        assert_eq!(labels["severity"], "page");
        let (probe, site) = (
            labels["probe"].as_str().unwrap(),
            labels["site"].as_str().unwrap(),
        );
        let description = alert["annotations"]["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("(site {site})")) && !description.contains("{{"),
            "{description}"
        );
        paged.push((probe.to_string(), site.to_string()));
    }
    paged.sort();
    assert_eq!(
        paged,
        [
            ("denied".to_string(), "lab-b".to_string()),
            ("unreachable".to_string(), "lab-a".to_string())
        ]
    );
    let paged_after = started.elapsed();
    eprintln!("both agents paged {paged_after:?} after they started");

    // What Prometheus saw: rounds counted as sent and send_failed, and the availability SLO of
    // the probe that has one spending its budget.
    for probe in ["unreachable", "denied"] {
        let failed = prometheus
            .query(&format!(
                "slo_probe_records_total{{probe=\"{probe}\", outcome=\"send_failed\"}}"
            ))
            .await;
        let value = |v: &Value| v["value"][1].as_str().unwrap().parse::<f64>().unwrap();
        assert!(value(&failed[0]) >= 1.0, "{probe}: {failed:?}");
    }
    let burn = prometheus
        .query("slo_probe:slo_errors:ratio_rate5m{probe=\"denied\", slo=\"availability\"}")
        .await;
    assert_eq!(
        burn[0]["value"][1], "1",
        "every availability event is bad: {burn:?}"
    );
    for agent in &agents {
        agent.signal("TERM");
    }
    for agent in &mut agents {
        assert_eq!(agent.wait_exit(Duration::from_secs(60)).code(), Some(0));
    }
}

/// The whole alerting chain for the agent of `t`: its rules (`rules --time-scale 60`, plus
/// `rules_args`), a real Alertmanager posting to a webhook here, the agent (`slo-probe run`,
/// ready) and a real Prometheus scraping it and evaluating the rules.
struct Chain {
    webhook: Webhook,
    agent: Running,
    listen: String,
    prometheus: Prometheus,
    _alertmanager: Alertmanager,
}

impl Chain {
    async fn start(t: &Tree, rules_args: &[&str]) -> Chain {
        let mut args = vec!["rules", "--time-scale", "60"];
        args.extend_from_slice(rules_args);
        let out = run(t.path(), &args, &[]);
        assert_eq!(out.code(), 0, "{}", out.stderr);
        let rules = t.write("rules.yaml", &out.stdout);
        let webhook = Webhook::start().await;
        let alertmanager = Alertmanager::start(&webhook.url);
        let listen = format!("127.0.0.1:{}", free_port());
        let run_args = ["run", "--listen", &listen, "--log-format", "json"];
        let mut agent = Running::spawn(t.path(), &run_args, &[]);
        agent.wait_event(PAGE_WITHIN, "first round settled: probe ready");
        let prometheus =
            Prometheus::alerting(std::slice::from_ref(&listen), &rules, &alertmanager.addr);
        Chain {
            webhook,
            agent,
            listen,
            prometheus,
            _alertmanager: alertmanager,
        }
    }
}

/// A total outage of a real broker (tansu, killed) pages through a real Prometheus and
/// Alertmanager, as soon as the objective says it should. At 99.9% over 30 days the page's
/// fastest condition needs more than 1.44% of the last hour's events bad (2% of the budget),
/// confirmed over 5 minutes, for 2 minutes: at a steady rate that is 52 s of total outage (plus
/// the probe's timeout, since a record is lost only at its deadline) and the `for`. The rules
/// run 60 times faster (`slo-probe rules --time-scale 60`): 0.864 s of outage and a 2 s `for`.
/// A full scaled hour (one minute) of healthy running before the outage pages nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_broker_outage_pages_when_the_objective_says() {
    const SCALE: f64 = 60.0;
    const INTERVAL_S: f64 = 0.2;
    const TIMEOUT_S: f64 = 2.0;
    let mut broker = common::infra::Tansu::start();
    let probe = "name: outage\ninterval: 200ms\ntimeout: 2s\ncreate_topic: { partitions: 1 }\ntags: { team: payments }\nslos:\n  - { name: completeness, objective: 99.9%, window: 30d }\n";
    let t = agent_tree("lab", &broker.bootstrap(), probe);
    // Kept whole: the fields not used below (Alertmanager) must live to the end.
    let mut chain =
        Chain::start(&t, &["--runbook-url", "https://runbooks.example/slo-probe"]).await;
    let (webhook, agent, prometheus) = (&mut chain.webhook, &mut chain.agent, &chain.prometheus);

    // One scaled hour of healthy running: a full long window of good events, and no page.
    let healthy = Instant::now();
    while healthy.elapsed() < Duration::from_secs(62) {
        let left = Duration::from_secs(62).saturating_sub(healthy.elapsed());
        if let Some(alert) = webhook.next(left).await {
            panic!("paged while healthy: {alert}");
        }
    }
    let ratio = prometheus
        .query("slo_probe:slo_errors:ratio_rate1h{probe=\"outage\", slo=\"completeness\"}")
        .await;
    assert_eq!(ratio[0]["value"][1], "0", "healthy: {ratio:?}");

    // The outage, and the page.
    broker.kill();
    let outage = Instant::now();
    let alert = loop {
        let alert = webhook
            .next(PAGE_WITHIN)
            .await
            .unwrap_or_else(|| panic!("no page within {PAGE_WITHIN:?} of the outage"));
        if alert["labels"]["alertname"] == "SloProbeBudgetBurn"
            && alert["labels"]["severity"] == "page"
        {
            break alert;
        }
    };
    let to_page = outage.elapsed().as_secs_f64();
    let labels = &alert["labels"];
    assert_eq!(
        (&labels["probe"], &labels["slo"], &labels["tag_team"]),
        (&"outage".into(), &"completeness".into(), &"payments".into()),
        "{alert}"
    );
    let annotations = &alert["annotations"];
    assert_eq!(
        annotations["runbook_url"],
        "https://runbooks.example/slo-probe"
    );
    assert_eq!(annotations["worst_site"], "lab", "{alert}");
    for key in ["summary", "description", "runbook", "time_scale"] {
        let text = annotations[key].as_str().unwrap_or_default();
        assert!(!text.is_empty() && !text.contains("{{"), "{key}: {alert}");
    }
    // What the objective implies: 1.44% of a (scaled) hour of events lost, after the timeout
    // that makes the first of them lost, then the `for`; the rest is scrape and evaluation (1 s
    // each), Alertmanager's group_wait (1 s) and a machine that is shared.
    let budget_share = 0.02 * 30.0 * 24.0 / 1.0 * (1.0 - 0.999);
    let outage_needed = budget_share * 3600.0 / SCALE;
    let for_ = 120.0 / SCALE;
    let implied = TIMEOUT_S + outage_needed + for_;
    eprintln!(
        "paged {to_page:.2} s after the outage; the objective implies {implied:.2} s ({TIMEOUT_S} s timeout + {outage_needed:.3} s of outage, {:.0} s unscaled, + {for_} s for); rounds every {INTERVAL_S} s",
        outage_needed * SCALE
    );
    assert!(
        to_page >= implied - 1.0 && to_page <= implied + 8.0,
        "paged {to_page:.2} s after the outage, the objective implies {implied:.2} s"
    );
    agent.signal("TERM");
    let _ = agent.wait_exit(Duration::from_secs(60));
}

/// A rolling restart, as an operator does it (for each broker: move its leaders away, take it
/// down, bring it back, move the leaders back), on a 3-broker cluster whose topic has three
/// replicas (librdkafka's mock cluster, in this process): nothing is lost with `acks=all`, and
/// no page reaches Alertmanager, through the same real Prometheus, Alertmanager and
/// 60-times-faster rules that page on a total outage within seconds (the test above). Each
/// broker is down 3 s: three scaled minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_pages_no_one() {
    const TOPIC: &str = "roll";
    const DOWN: Duration = Duration::from_secs(3);
    let cluster = EmbeddedCluster::start(3).unwrap();
    cluster.create_topic(TOPIC, 3, 3).unwrap();
    let home = |p: i32| p + 1;
    for p in 0..3 {
        cluster.set_partition_leader(TOPIC, p, home(p)).unwrap();
    }
    let probe = format!(
        "name: roll\ntopic: {TOPIC}\ninterval: 200ms\ntimeout: 2s\ntags: {{ team: payments }}\nslos:\n  - {{ name: freshness, latency_below: 500ms, objective: 99%, window: 30d }}\n  - {{ name: completeness, objective: 99.9%, window: 30d }}\n"
    );
    let t = agent_tree("lab", cluster.bootstrap_servers(), &probe);
    // Kept whole: the fields not used below (Prometheus, Alertmanager) must live to the end.
    let mut chain = Chain::start(&t, &[]).await;
    let (webhook, agent, listen) = (&mut chain.webhook, &mut chain.agent, chain.listen.clone());

    // Healthy for a while, then the roll, broker by broker; every page is a failure.
    let mut tickets = quiet(webhook, Duration::from_secs(10)).await;
    assert!(tickets.is_empty(), "healthy: {tickets:?}");
    for broker in 1..=3 {
        let led: Vec<i32> = (0..3).filter(|&p| home(p) == broker).collect();
        let elsewhere = broker % 3 + 1;
        for &p in &led {
            cluster.set_partition_leader(TOPIC, p, elsewhere).unwrap();
        }
        cluster.broker_down(broker).unwrap();
        tickets.extend(quiet(webhook, DOWN).await);
        cluster.broker_up(broker).unwrap();
        tickets.extend(quiet(webhook, Duration::from_secs(1)).await);
        for &p in &led {
            cluster.set_partition_leader(TOPIC, p, broker).unwrap();
        }
        tickets.extend(quiet(webhook, Duration::from_secs(1)).await);
    }
    // Long enough after the roll for any alert it caused to fire (the `for` is 2 s).
    tickets.extend(quiet(webhook, Duration::from_secs(10)).await);

    let (_, metrics) = get(&listen, "/metrics").await;
    let count = |outcome: &str| {
        common::sample(
            &metrics,
            "slo_probe_records_total",
            &[("probe", "roll"), ("outcome", outcome)],
        )
        .unwrap()
    };
    let slow = common::sample(
        &metrics,
        "slo_probe_slo_events_total",
        &[("probe", "roll"), ("slo", "freshness"), ("result", "bad")],
    )
    .unwrap_or(0.0);
    eprintln!(
        "rolling restart: ok {}, lost {}, send_failed {}, slower than 500 ms {slow}, tickets {tickets:?}",
        count("ok"),
        count("lost"),
        count("send_failed")
    );
    assert_eq!(
        count("lost") + count("send_failed"),
        0.0,
        "nothing lost with acks=all"
    );
    assert!(count("ok") > 100.0);
    agent.signal("TERM");
    let _ = agent.wait_exit(Duration::from_secs(60));
}

/// Passes `d` with no page notified (a page fails the test); tickets are returned. A test
/// cannot fill the long ticket windows (a scaled day is 24 minutes) with the history they have
/// in production, so a handful of slow records during the roll weighs far more in them here.
async fn quiet(webhook: &mut Webhook, d: Duration) -> Vec<serde_json::Value> {
    let until = Instant::now() + d;
    let mut tickets = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Some(alert) = webhook.next(left).await {
            assert_ne!(
                alert["labels"]["severity"], "page",
                "paged during a benign roll: {alert}"
            );
            tickets.push(alert["labels"].clone());
        }
    }
    tickets
}
