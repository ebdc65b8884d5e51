//! Exact verdicts under faults: a seeded relay between the probe topic and the verify topic
//! drops, duplicates, reorders, corrupts, delays or adds garbage; the mock cluster loses a
//! partition leader, rejects produce requests, and the agent's runtime stalls. Every test
//! asserts exact counters, and conservation on every scrape taken while it runs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::relay::{Fault, Picker, Relay, Tally};
use common::{Conservation, Tree};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use slo_probe::Agent;
use slo_probe::EmbeddedCluster;
use slo_probe::Plan;
use slo_probe::{Counts, Outcome};
use slo_probe::{Probe, Snapshot};

const GUARD: Duration = Duration::from_secs(120);
const ROUNDS: u64 = 10;
const PARTITIONS: i32 = 3;

async fn start(
    cluster: &EmbeddedCluster,
    probe_yaml: &str,
    plan: Plan,
) -> (Tree, Agent, Conservation) {
    let t = Tree::new();
    t.agent_file(cluster.bootstrap_servers());
    t.write("probes/p.yaml", probe_yaml);
    let agent = common::start_agent(&t, plan).await;
    let conservation = Conservation::watch(agent.view());
    (t, agent, conservation)
}

/// Waits until `cond` holds, re-checking whenever the probe's progress changes (the condition
/// reads a snapshot, so it runs outside the channel's borrow).
async fn until(
    progress: &mut tokio::sync::watch::Receiver<slo_probe::Progress>,
    cond: impl Fn() -> bool,
) {
    while !cond() {
        progress.changed().await.unwrap();
    }
}

fn state(p: &Arc<Probe>) -> (Counts, Snapshot) {
    let s = p.snapshot(tokio::time::Instant::now());
    (s.progress.counts, s)
}

/// Runs one probe for `ROUNDS` rounds through a relay applying `fault`.
async fn through_relay(fault: Fault, picker: Picker, slos: &str) -> (Counts, Snapshot, Tally) {
    let (cluster, relay) = Relay::on_embedded(3, PARTITIONS, fault, picker);
    let yaml = format!(
        "name: relayed\ntopic: in\ninterval: 100ms\ntimeout: 2s\nverify:\n  kafka: {{ topic: out }}\n{slos}"
    );
    let (_t, agent, conservation) = start(&cluster, &yaml, Plan::Rounds(ROUNDS)).await;
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("probe finishes");
    conservation.finish().await;
    let tally = relay.stop().await;
    let (c, s) = state(&agent.probes()[0]);
    agent.shutdown(std::future::ready(())).await;
    assert!(c.conserved() && c.in_flight == 0, "{c:?}");
    assert_eq!(c.sent, ROUNDS * PARTITIONS as u64);
    assert_eq!(tally.seen, c.sent, "the relay saw every record");
    (c, s, tally)
}

/// How many of the run's records `picker` picks, computed without running anything.
fn expected_picks(picker: Picker) -> u64 {
    (0..PARTITIONS)
        .flat_map(|p| (0..ROUNDS).map(move |s| (p, s)))
        .filter(|&(p, s)| picker.picks(p, s))
        .count() as u64
}

const PICK: Picker = Picker { seed: 7, one_in: 4 };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_k_of_n_gives_exactly_k_lost() {
    let k = expected_picks(PICK);
    assert!(
        k > 0 && k < ROUNDS * PARTITIONS as u64,
        "the seed picks some, not all: {k}"
    );
    let (c, _, tally) = through_relay(Fault::Drop, PICK, "").await;
    assert_eq!(tally.dropped, k);
    assert_eq!(c.get(Outcome::Lost), k);
    assert_eq!(c.get(Outcome::Ok), c.sent - k);
    assert_eq!(
        (c.get(Outcome::Corrupt), c.get(Outcome::SendFailed)),
        (0, 0)
    );
    assert_eq!((c.duplicates, c.reordered, c.late), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_counted_and_never_verified_twice() {
    let k = expected_picks(PICK);
    let (c, _, tally) = through_relay(Fault::Duplicate, PICK, "").await;
    assert_eq!(tally.duplicated, k);
    assert_eq!(c.duplicates, k);
    assert_eq!(c.get(Outcome::Ok), c.sent, "no extra ok");
    assert_eq!(c.finished(), c.sent);
    assert_eq!((c.get(Outcome::Lost), c.reordered, c.late), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_is_counted_without_loss() {
    let (c, _, tally) = through_relay(Fault::Reorder, PICK, "").await;
    assert!(tally.swapped > 0, "{tally:?}");
    assert_eq!(c.reordered, tally.swapped);
    assert_eq!(c.get(Outcome::Ok), c.sent);
    assert_eq!((c.get(Outcome::Lost), c.duplicates, c.late), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_payload_byte_is_corrupt() {
    let k = expected_picks(PICK);
    let (c, _, tally) = through_relay(Fault::Corrupt, PICK, "").await;
    assert_eq!(tally.corrupted, k);
    assert_eq!(c.get(Outcome::Corrupt), k);
    assert_eq!(c.get(Outcome::Ok), c.sent - k);
    assert_eq!(
        (c.get(Outcome::Lost), c.duplicates, c.reordered, c.late),
        (0, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_changed_traceparent_is_corrupt_trace_context() {
    // picks both even (header dropped) and odd (trace id changed) seqs in rounds 6-9
    const PICK: Picker = Picker { seed: 1, one_in: 4 };
    let k = expected_picks(PICK);
    let (c, s, tally) = through_relay(Fault::TraceContext, PICK, "").await;
    assert!(
        tally.traceparent_dropped > 0 && tally.traceparent_changed > 0,
        "{tally:?}"
    );
    assert_eq!(tally.traceparent_dropped + tally.traceparent_changed, k);
    assert_eq!(c.get(Outcome::Corrupt), k);
    assert_eq!(c.get(Outcome::Ok), c.sent - k);
    assert_eq!((c.get(Outcome::Lost), c.duplicates, c.late), (0, 0, 0));
    // Every picked record of the last rounds is among the last results, corrupt for the right
    // reason (the last results hold 20 records; rounds 6-9 are 12, leaving room for the first
    // rounds settling late).
    let mut checked_kinds = [false; 2];
    for (partition, seq) in (0..PARTITIONS).flat_map(|p| (6..ROUNDS).map(move |s| (p, s))) {
        let r = s
            .last
            .iter()
            .find(|r| r.partition == partition && r.seq == seq)
            .unwrap_or_else(|| panic!("{partition}/{seq} not in the last results: {:?}", s.last));
        if !PICK.picks(partition, seq) {
            assert_eq!(r.outcome, Outcome::Ok);
            continue;
        }
        checked_kinds[(seq % 2) as usize] = true;
        let reason = r.reason.as_ref().expect("a corrupt record has a reason");
        assert_eq!(
            (r.outcome, reason.kind),
            (Outcome::Corrupt, "trace_context")
        );
        let want = if seq % 2 == 0 {
            "trace context: traceparent header missing".to_string()
        } else {
            format!("trace context: trace id changed from {} to ", r.trace_id)
        };
        assert!(
            reason.detail.starts_with(&want),
            "{partition}/{seq}: {reason}"
        );
    }
    assert_eq!(
        checked_kinds,
        [true, true],
        "the seed picks records of both kinds in the last rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_foreign_and_nothing_else_moves() {
    let (c, s, tally) = through_relay(Fault::Garbage, PICK, "").await;
    assert_eq!(tally.garbage, c.sent);
    assert_eq!(s.foreign, c.sent);
    assert_eq!(c.get(Outcome::Ok), c.sent);
    assert_eq!(
        (
            c.get(Outcome::Lost),
            c.get(Outcome::Corrupt),
            c.get(Outcome::SendFailed)
        ),
        (0, 0, 0)
    );
    assert_eq!((c.duplicates, c.reordered, c.late), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_delay_shows_in_latency_and_fails_a_tighter_slo() {
    const DELAY: Duration = Duration::from_millis(150);
    let slos = "slos:\n  - { name: fresh, latency_below: 100ms, objective: 90% }\n  - { name: completeness, objective: 99% }\n";
    let (c, s, _) = through_relay(Fault::Delay(DELAY), PICK, slos).await;
    assert_eq!(c.get(Outcome::Ok), c.sent);
    let p50 = s.e2e_total.unwrap()[0];
    assert!(
        p50 >= DELAY.as_secs_f64(),
        "p50 {p50} s includes the {DELAY:?} delay"
    );
    let fresh = &s.slos[0];
    assert_eq!((fresh.total.good, fresh.total.bad), (0, c.sent));
    assert!(!fresh.met());
    assert!(
        (fresh.run_burn_rate.unwrap() - 10.0).abs() < 1e-9,
        "all bad at 90%: burn 10x"
    );
    assert!(s.slos[1].met());
}

/// The broker leading partition 0 goes down for longer than the timeout: only partition 0
/// loses records, and it recovers when the broker returns, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_down_loses_its_partition_only_then_recovers() {
    let cluster = EmbeddedCluster::start(3).unwrap();
    cluster.create_topic("synthetic-sla", 3, 1).unwrap();
    for p in 0..3 {
        cluster
            .set_partition_leader("synthetic-sla", p, p + 1)
            .unwrap();
    }
    let yaml = "name: leaders\ninterval: 200ms\ntimeout: 1s\nper_partition_metrics: true\n";
    let (_t, agent, conservation) = start(&cluster, yaml, Plan::Forever).await;
    let probe = Arc::clone(&agent.probes()[0]);
    let mut progress = probe.progress();
    let ok_on = |part: i32| {
        state(&probe)
            .1
            .partitions
            .get(&part)
            .map_or(0, |c| c.outcomes[0])
    };
    let lost_on = |part: i32| {
        state(&probe)
            .1
            .partitions
            .get(&part)
            .map_or(0, |c| c.outcomes[1])
    };
    tokio::time::timeout(GUARD, until(&mut progress, || ok_on(0) >= 3))
        .await
        .unwrap();
    assert_eq!(
        state(&probe).1.progress.leaders,
        [(0, 1), (1, 2), (2, 3)].into()
    );

    cluster.broker_down(1).unwrap();
    tokio::time::timeout(GUARD, until(&mut progress, || lost_on(0) >= 4))
        .await
        .unwrap();
    cluster.broker_up(1).unwrap();
    let ok_before = ok_on(0);
    tokio::time::timeout(GUARD, until(&mut progress, || ok_on(0) >= ok_before + 5))
        .await
        .expect("partition 0 recovers");
    // Drain: nothing aborts the wait, every record in flight is settled.
    let report = agent.shutdown(std::future::pending()).await;
    assert!(report.drained);
    conservation.finish().await;

    let (c, s) = state(&probe);
    assert!(c.conserved() && c.in_flight == 0);
    for p in [1, 2] {
        let pc = &s.partitions[&p];
        assert_eq!(
            pc.outcomes[0], pc.sent,
            "partition {p} is untouched: {pc:?}"
        );
    }
    let p0 = &s.partitions[&0];
    assert!(p0.outcomes[1] >= 4, "{p0:?}");
    assert_eq!(p0.outcomes[2], 0, "nothing corrupt");
    assert_eq!(
        c.get(Outcome::Lost),
        p0.outcomes[1],
        "losses on partition 0 only"
    );
    // records retried by librdkafka after the broker returned arrive after their deadline
    assert!(c.late <= p0.outcomes[1] + p0.outcomes[3]);
}

/// Produce requests rejected: a permanent error (topic authorization) makes the records of the
/// rejected requests `send_failed`, with librdkafka's reason, and nothing is lost; a retriable
/// one (not leader) is retried by librdkafka and costs nothing. After a topic authorization
/// error librdkafka also fails the topic's next records locally until a metadata refresh clears
/// the topic's error state, so how many more records fail depends on that refresh's timing (seen
/// from 0 to all 4 of them): only "at least the rejected ones" is a fact to assert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_are_send_failed_or_retried() {
    use RDKafkaRespErr::*;
    for (errors, at_least) in [
        (vec![RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2], 2),
        (vec![RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3], 0),
    ] {
        let cluster = EmbeddedCluster::start(1).unwrap();
        cluster.create_topic("synthetic-sla", 1, 1).unwrap();
        cluster
            .push_request_errors(RDKafkaApiKey::Produce, &errors)
            .unwrap();
        let yaml = "name: rejected\ninterval: 200ms\ntimeout: 3s\n";
        let (_t, agent, conservation) = start(&cluster, yaml, Plan::Rounds(6)).await;
        tokio::time::timeout(GUARD, agent.wait_finished())
            .await
            .expect("finishes");
        conservation.finish().await;
        let (c, s) = state(&agent.probes()[0]);
        agent.shutdown(std::future::ready(())).await;
        assert_eq!(c.sent, 6);
        let failed = c.get(Outcome::SendFailed);
        if at_least == 0 {
            assert_eq!(failed, 0, "{errors:?}: retried, not failed: {c:?}");
        } else {
            assert!(failed >= at_least, "{errors:?}: {c:?}");
        }
        assert_eq!(c.get(Outcome::Ok), 6 - failed, "{errors:?}: {c:?}");
        assert_eq!((c.get(Outcome::Lost), c.get(Outcome::Corrupt)), (0, 0));
        for n in s.last.iter().filter(|n| n.outcome == Outcome::SendFailed) {
            let r = n.reason.as_ref().unwrap();
            assert_eq!(r.kind, "producer");
            assert!(
                r.detail.contains("uthoriz"),
                "librdkafka's reason: {}",
                r.detail
            );
        }
    }
}

/// Coordinated omission: the agent's only runtime thread is blocked for a second (the injected
/// stall). No slot is skipped: the missed slots are sent when it wakes, with their scheduled
/// times, so the stall shows up as latency instead of disappearing.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_stalled_runtime_shows_up_as_latency_not_as_missing_samples() {
    const STALL: Duration = Duration::from_secs(1);
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("synthetic-sla", 1, 1).unwrap();
    let yaml = "name: stalled\ninterval: 100ms\ntimeout: 5s\n";
    let (_t, agent, conservation) = start(&cluster, yaml, Plan::Rounds(20)).await;
    let mut progress = agent.probes()[0].progress();
    tokio::time::timeout(GUARD, progress.wait_for(|s| s.rounds_completed >= 3))
        .await
        .unwrap()
        .unwrap();
    // Block the single worker thread: every task of the agent stops, librdkafka does not.
    tokio::spawn(async { std::thread::sleep(STALL) })
        .await
        .unwrap();
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("finishes");
    conservation.finish().await;
    let (c, s) = state(&agent.probes()[0]);
    agent.shutdown(std::future::ready(())).await;
    assert_eq!(s.progress.rounds_started, 20, "no slot skipped");
    assert_eq!((c.sent, c.get(Outcome::Ok)), (20, 20));
    assert_eq!(s.e2e_count, 20);
    let max = s.e2e_total.unwrap()[5];
    let floor = (STALL - Duration::from_millis(100)).as_secs_f64();
    assert!(
        max >= floor,
        "max latency {max} s reflects the {STALL:?} stall"
    );
}
