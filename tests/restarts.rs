//! An agent killed mid-run (SIGKILL: no drain, records in flight) and a new one started on the
//! same topic, as a container restart does. The real binary on a real broker (tansu), verifying
//! downstream of a pipeline with lag (a relay delaying every record), so the killed agent's
//! records are still arriving when the new one reads. (How Prometheus sees the restart, a
//! counter reset, is proven with promtool in `tests/rules.rs`.)

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::relay::{Fault, Picker, Relay, from_beginning};
use common::{GUARD, Running, Tree, create_topics, eventually, get, sample};
use rdkafka::Message;
use rdkafka::message::Headers;
use serde_json::Value;

const PARTITIONS: i32 = 3;
/// The pipeline's lag: longer than a new agent takes to start reading.
const LAG: Duration = Duration::from_secs(4);

/// Every record on a topic, read from the beginning: instance -> [(partition, offset)].
type Seen = Arc<Mutex<BTreeMap<String, Vec<(i32, i64)>>>>;

fn watch(bootstrap: &str, topic: &str) -> Seen {
    let consumer = from_beginning(bootstrap, topic, PARTITIONS, &format!("test-{topic}"));
    let seen: Seen = Arc::default();
    let into = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok(m) = consumer.recv().await {
            let instance = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "slo-probe-instance"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            into.lock()
                .unwrap()
                .entry(instance)
                .or_default()
                .push((m.partition(), m.offset()));
        }
    });
    seen
}

fn count(seen: &Seen, instance: &str) -> usize {
    seen.lock().unwrap().get(instance).map_or(0, Vec::len)
}

/// This agent's instance id, from `/status`.
async fn instance(addr: &str) -> String {
    let (_, body) = get(addr, "/status").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    v["instance"].as_str().unwrap().to_string()
}

/// A killed agent's records, still coming out of the pipeline when a new agent reads, are
/// another agent's to the new one: not its own lost, duplicates or late arrivals, nor foreign.
/// The killed agent's records in flight are settled by nobody (a restart spends no budget by
/// itself). The new agent reads from the end of each partition when it starts, which its log
/// says ("verifying from offset"): the test counts the killed agent's records it read past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_counts_a_killed_agents_records_as_another_agents() {
    let broker = common::infra::Tansu::start();
    let bootstrap = broker.bootstrap();
    create_topics(
        &bootstrap,
        &[("orders", PARTITIONS), ("orders-out", PARTITIONS)],
    )
    .await;
    let pipeline = Relay::start(
        &bootstrap,
        "orders",
        "orders-out",
        PARTITIONS,
        Fault::Delay(LAG),
        Picker::NONE,
    );
    let (produced, read_back) = (watch(&bootstrap, "orders"), watch(&bootstrap, "orders-out"));
    let t = Tree::new();
    t.agent_file(&bootstrap);
    t.write(
        "probes/orders.yaml",
        "name: orders\ntopic: orders\ninterval: 200ms\ntimeout: 30s\nverify:\n  kafka: { topic: orders-out }\n",
    );
    let debug = ["--log-level", "info,slo_probe::verify::kafka=debug"];

    // The first agent runs until it has verified records and has more in flight, then dies.
    let (mut old, addr) = Running::run_ready(t.path(), &debug, &[]);
    let old_instance = instance(&addr).await;
    let in_flight = eventually("the first agent verified 10 records", || async {
        let (_, m) = get(&addr, "/metrics").await;
        let ok = sample(&m, "slo_probe_records_total", &[("outcome", "ok")])?;
        (ok >= 10.0).then(|| sample(&m, "slo_probe_in_flight", &[]).unwrap())
    })
    .await;
    assert!(in_flight >= 1.0, "killed with records in flight");
    old.signal("KILL");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(old.wait_exit(GUARD).signal(), Some(9));

    // A new agent on the same files: a new instance id, reading from each partition's end.
    let (mut new, addr) = Running::run_ready(t.path(), &debug, &[]);
    let new_instance = instance(&addr).await;
    assert_ne!(new_instance, old_instance);
    let mut starts = BTreeMap::new();
    for p in 0..PARTITIONS {
        let line = new.wait_line(GUARD, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["message"] == "verifying from offset"
                    && v["topic"] == "orders-out"
                    && v["partition"] == p
            })
        });
        let v: Value = serde_json::from_str(&line).unwrap();
        starts.insert(p, v["offset"].as_i64().unwrap());
    }
    // Every record the killed agent produced comes out of the pipeline.
    eventually(
        "the killed agent's records are all through the pipeline",
        || async {
            let n = count(&produced, &old_instance);
            (n > 0 && count(&read_back, &old_instance) == n).then_some(())
        },
    )
    .await;
    let read_past: usize = read_back.lock().unwrap()[&old_instance]
        .iter()
        .filter(|(p, offset)| *offset >= starts[p])
        .count();
    assert!(
        read_past > 0,
        "the new agent started reading after the killed agent's last record ({starts:?}): nothing tested"
    );
    let (_, m) = get(&addr, "/metrics").await;
    let foreign: f64 = m
        .lines()
        .filter(|l| l.starts_with("slo_probe_foreign_records_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(foreign, 0.0, "{m}");

    // Stopped cleanly, the new agent settles each of its own records, read after every one of
    // the killed agent's.
    new.signal("TERM");
    assert_eq!(new.wait_exit(GUARD).code(), Some(0));
    let last = new
        .events("probe final counts")
        .pop()
        .expect("final counts");
    let n = |k: &str| last[k].as_u64().unwrap();
    assert!(n("ok") > 0, "{last}");
    assert_eq!(n("ok"), n("sent"), "{last}");
    for k in [
        "lost",
        "corrupt",
        "send_failed",
        "in_flight",
        "duplicates",
        "reordered",
        "late_arrivals",
    ] {
        assert_eq!(n(k), 0, "{k}: {last}");
    }
    // nor a log line of a record that is not ok, nor of an event
    let noted: Vec<Value> = new
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"].is_string() || v["outcome"].as_str().is_some_and(|o| o != "ok"))
        .collect();
    assert!(noted.is_empty(), "{noted:#?}");
    pipeline.stop().await;
    eprintln!(
        "the new agent read past {read_past} of the killed agent's {} records; verified {} of its own",
        count(&read_back, &old_instance),
        n("ok")
    );
}
