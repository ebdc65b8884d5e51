//! `slo-probe run` as a real process: SIGTERM settles every record and exits 0, and the README's
//! quick-start command serves metrics with records flowing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Running, Tree, get, sample};
use slo_probe::EmbeddedCluster;

const GUARD: Duration = Duration::from_secs(90);

/// The HTTP address from the agent's "serving" log event.
fn http_addr(agent: &mut Running) -> String {
    let ev = agent.wait_event(GUARD, "serving /metrics, /healthz, /readyz, /status");
    ev["addr"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_settles_every_record_in_flight_and_exits_0() {
    // A 300 ms round trip with a 100 ms interval keeps several records in flight at any moment,
    // so the signal always lands with work to drain.
    let cluster = EmbeddedCluster::start(3).unwrap();
    cluster.create_topic("synthetic-sla", 3, 1).unwrap();
    cluster
        .set_round_trip_time(None, Duration::from_millis(300))
        .unwrap();
    let t = Tree::new();
    t.agent_file(cluster.bootstrap_servers());
    t.write(
        "probes/p.yaml",
        "name: drain\ninterval: 100ms\ntimeout: 10s\n",
    );
    let mut agent = Running::spawn(
        t.path(),
        &["run", "--listen", "127.0.0.1:0", "--log-format", "json"],
        &[],
    );
    let addr = http_addr(&mut agent);
    agent.wait_event(GUARD, "first round settled: probe ready");
    assert_eq!(get(&addr, "/readyz").await.0, 200);

    let (_, m) = get(&addr, "/metrics").await;
    let in_flight = sample(&m, "slo_probe_in_flight", &[("probe", "drain")]).unwrap();
    assert!(
        in_flight > 0.0,
        "records are in flight when the signal comes:\n{m}"
    );

    agent.signal("TERM");
    let status = agent.wait_exit(GUARD);
    assert_eq!(status.code(), Some(0), "{}", agent.seen.join("\n"));
    let finals = agent.events("probe final counts");
    assert_eq!(finals.len(), 1, "{}", agent.seen.join("\n"));
    let f = &finals[0];
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} in {f}"));
    assert_eq!(n("in_flight"), 0);
    assert!(n("sent") > 0);
    assert_eq!(
        n("sent"),
        n("ok") + n("lost") + n("corrupt") + n("send_failed")
    );
    assert_eq!(
        n("ok"),
        n("sent"),
        "the drain waited for the records in flight: {f}"
    );
    assert_eq!(
        agent
            .events("shutdown complete: every record has its final outcome")
            .len(),
        1
    );
}

/// The first command of the README's quick start.
fn quick_start_command(readme: &str) -> Vec<String> {
    let section = readme
        .split("## Quick start")
        .nth(1)
        .expect("a Quick start section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    let first = block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .expect("a command");
    first.split_whitespace().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_serves_metrics_with_records_flowing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let cmd = quick_start_command(&readme);
    // `cargo run --release -- <args>`: build, then run the binary with <args>. The test runs
    // the binary cargo built for it, with exactly those arguments, from a fresh checkout's root.
    let sep = cmd
        .iter()
        .position(|a| a == "--")
        .expect("cargo run -- <args>");
    assert_eq!(&cmd[..2], ["cargo", "run"], "{cmd:?}");
    let args: Vec<&str> = cmd[sep + 1..].iter().map(String::as_str).collect();
    assert!(
        !root.join("slo-probe.yaml").exists(),
        "the quick start runs with no agent file"
    );
    // Port and log format via the environment, so the command line stays the README's.
    let env = [
        ("SLO_PROBE_LISTEN", "127.0.0.1:0"),
        ("SLO_PROBE_LOG_FORMAT", "json"),
    ];
    let mut agent = Running::spawn(root, &args, &env);
    let embedded = agent.wait_line(GUARD, |l| {
        l.contains("running on the embedded mock cluster")
    });
    assert!(embedded.contains("records never leave it"), "{embedded}");
    // the zero-config default is fine for a first look, and never silent
    let line: serde_json::Value = serde_json::from_str(&embedded).unwrap();
    assert_eq!(line["level"], "WARN", "{embedded}");
    assert!(
        embedded.contains("no real pipeline is checked"),
        "{embedded}"
    );
    let addr = http_addr(&mut agent);
    agent.wait_event(GUARD, "first round settled: probe ready");
    let (status, m) = get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&m, "slo_probe_build_info", &[("embedded", "true")]),
        Some(1.0),
        "{m}"
    );
    let probe = ("probe", "orders-freshness");
    assert!(
        sample(&m, "slo_probe_records_sent_total", &[probe]).unwrap() >= 3.0,
        "{m}"
    );
    assert!(
        sample(&m, "slo_probe_records_total", &[probe, ("outcome", "ok")]).unwrap() >= 3.0,
        "{m}"
    );
    assert_eq!(get(&addr, "/readyz").await.0, 200);
    agent.signal("INT");
    assert_eq!(
        agent.wait_exit(GUARD).code(),
        Some(0),
        "{}",
        agent.seen.join("\n")
    );
}

/// The default address serves every interface: that is warned about (what `/status` shows, and
/// how to choose), while an address chosen on purpose, even 0.0.0.0, is not. This test binds the
/// default port, 9747.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_everywhere_by_default_is_warned_about_and_a_choice_is_not() {
    let t = Tree::new();
    t.write(
        "probes/p.yaml",
        "name: canary\ninterval: 200ms\ntimeout: 5s\n",
    );
    let warning = "on every interface without authentication, by default";
    let mut agent = Running::spawn(t.path(), &["run", "--log-format", "json"], &[]);
    let line = agent.wait_line(GUARD, |l| l.contains(warning));
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (line["level"].as_str(), line["addr"].as_str()),
        (Some("WARN"), Some("0.0.0.0:9747"))
    );
    assert_eq!(get("127.0.0.1:9747", "/healthz").await.0, 200);
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(GUARD).code(), Some(0));

    let chosen = format!("0.0.0.0:{}", common::infra::free_port());
    let args = ["run", "--listen", &chosen, "--log-format", "json"];
    let mut agent = Running::spawn(t.path(), &args, &[]);
    agent.wait_event(GUARD, "first round settled: probe ready");
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(GUARD).code(), Some(0));
    assert!(
        !agent.seen.iter().any(|l| l.contains(warning)),
        "{}",
        agent.seen.join("\n")
    );
}

/// A port in use is the one thing said, with what to do, and nothing starts before it: no
/// embedded cluster, no client whose teardown logs errors of its own.
#[test]
fn a_port_in_use_is_reported_before_anything_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let t = Tree::new();
    t.write("probes/a.yaml", "name: orders\n");
    let out = common::run(t.path(), &["run", "--embedded", "--listen", &addr], &[]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines,
        [format!(
            "slo-probe: cannot listen on {addr}: Address already in use (os error 98); another process (another slo-probe?) holds this port: choose another with --listen or `listen:` in the agent file"
        )],
        "{}",
        out.stderr
    );
}
