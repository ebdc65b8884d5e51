//! The tasks that drive a probe.
//!
//! [`send_loop`]: slot `k` is due at `start + k * interval`; every slot gets its records, with
//! the slot's time as their scheduled time, even when the loop wakes late (a stalled runtime or
//! producer). A round is built and registered a little before its slot and handed to
//! [`super::clock`], whose thread sends it at the slot itself (tokio's timer is a millisecond
//! late). Latency is measured from that time, so a stall shows up as latency instead of
//! vanishing (coordinated omission). The same loop settles deadlines and, once told to stop or
//! done with its plan, keeps settling until nothing is in flight.
//! Partitions come from [`super::discovery`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::producer::BaseRecord;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::Probe;
use super::clock::Clock;
use crate::kafka::{Producer, Ticket};
use crate::record::{self, Outgoing};

/// How many rounds a probe sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Until told to stop (`run`).
    Forever,
    /// Exactly this many rounds (`smoke --rounds`).
    Rounds(u64),
    /// Every slot scheduled within this long after the first (`smoke --duration`).
    For(Duration),
}

impl Plan {
    /// Whether the slot after `sent` rounds, due `elapsed` after the first, should be sent.
    fn wants(self, sent: u64, elapsed: Duration) -> bool {
        match self {
            Plan::Forever => true,
            Plan::Rounds(n) => sent < n,
            Plan::For(d) => elapsed < d,
        }
    }
}

pub(crate) struct SendLoop {
    pub probe: Arc<Probe>,
    pub producer: Arc<Producer>,
    pub partitions: watch::Receiver<Option<Vec<i32>>>,
    pub plan: Plan,
    /// Cancelled when the agent stops sending (shutdown or smoke end).
    pub stop: CancellationToken,
}

pub(crate) async fn send_loop(mut s: SendLoop) {
    let probe = Arc::clone(&s.probe);
    // Wait for the partitions; a probe stopped before that has nothing to settle.
    loop {
        if s.partitions
            .borrow()
            .as_ref()
            .is_some_and(|p| !p.is_empty())
        {
            break;
        }
        tokio::select! {
            changed = s.partitions.changed() => if changed.is_err() { probe.set_finished(); return },
            _ = s.stop.cancelled() => { probe.set_finished(); return }
        }
    }
    let interval = probe.config.interval;
    let start = Instant::now();
    let wall_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut seqs: HashMap<i32, u64> = HashMap::new();
    let mut round: u64 = 0;
    let mut sending = s.plan.wants(0, Duration::ZERO);
    let mut progress = probe.progress();
    let lead = LEAD.min(interval / 2);
    loop {
        let slot = start + interval * u32::try_from(round).unwrap_or(u32::MAX);
        let deadline = probe.next_deadline();
        tokio::select! {
            biased;
            _ = s.stop.cancelled(), if sending => sending = false,
                        _ = sleep_until(slot.checked_sub(lead).unwrap_or(slot)), if sending => {
                let wall = wall_start + (slot - start);
                let records = prepare_round(&s.probe, &s.partitions, &mut seqs, round, slot, wall);
                send_at(&s, slot, records).await;
                round += 1;
                sending = s.plan.wants(round, interval * u32::try_from(round).unwrap_or(u32::MAX));
            }
                                    _ = sleep_until(deadline.unwrap_or(slot)), if deadline.is_some() => probe.expire(Instant::now()),
            // While draining, an arrival may settle the last record in flight. (While sending,
            // waking on every settled record would only recompute the same next deadline.)
            _ = progress.changed(), if !sending => {}
        }
        if !sending && probe.in_flight() == 0 {
            break;
        }
    }
    probe.set_finished();
}

/// How long before its slot a round is built and registered.
const LEAD: Duration = Duration::from_millis(5);

/// Builds and registers the records of one round; returns those to send.
fn prepare_round(
    probe: &Probe,
    partitions: &watch::Receiver<Option<Vec<i32>>>,
    seqs: &mut HashMap<i32, u64>,
    round: u64,
    slot: Instant,
    wall: Duration,
) -> Vec<Outgoing> {
    let cfg = &probe.config;
    let partitions = partitions.borrow().clone().unwrap_or_default();
    let scheduled_at_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
    let records: Vec<Outgoing> = partitions
        .iter()
        .map(|&p| {
            let seq = seqs.entry(p).or_insert(0);
            let r = record::build(
                &probe.origin,
                p,
                *seq,
                scheduled_at_ns,
                &cfg.tags,
                cfg.payload_bytes,
                probe.sample(),
            );
            *seq += 1;
            r
        })
        .collect();
    probe.register(round, slot, records)
}

/// Sends a prepared round at its slot: from the clock thread, or (in unit tests, which pause
/// tokio's clock and so cannot use a real-time thread) from this task.
async fn send_at(s: &SendLoop, slot: Instant, records: Vec<Outgoing>) {
    if cfg!(test) {
        sleep_until(slot).await;
        send_records(&s.probe, &s.producer, slot, records);
    } else {
        let (probe, producer) = (Arc::clone(&s.probe), Arc::clone(&s.producer));
        Clock::global().run_at(slot, move || send_records(&probe, &producer, slot, records));
    }
}

fn send_records(probe: &Arc<Probe>, producer: &Producer, slot: Instant, records: Vec<Outgoing>) {
    probe
        .metrics
        .observe_send_lag(Instant::now().saturating_duration_since(slot));
    let topic = probe.config.topic.as_str();
    for r in records {
        let id = r.id;
        let ticket = Box::new(Ticket {
            probe: Arc::clone(probe),
            id,
        });
        let record = BaseRecord::with_opaque_to(topic, ticket)
            .partition(r.body.partition)
            .key(r.key.as_str())
            .payload(r.value.as_slice())
            .headers(r.headers);
        if let Err((e, _)) = producer.send(record) {
            probe.delivered(&id, Instant::now(), Err(format!("cannot enqueue: {e}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, AgentConfig, Sources};
    use crate::embedded::EmbeddedCluster;
    use crate::export::metrics::Metrics;
    use crate::probe::Outcome;
    use crate::verify::kafka::KafkaVerifier;

    /// Partitions added to a topic: discovery publishes the larger set after assigning the new
    /// partitions to the verifier (no broker available here can add partitions, so the test
    /// plays discovery's part); from the next round every partition gets and verifies records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn added_partitions_are_covered_from_the_next_round() {
        let embedded = EmbeddedCluster::start(1).unwrap();
        embedded.create_topic("grow", 4, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            "name: grow\ntopic: grow\ninterval: 100ms\ntimeout: 5s\n",
        )
        .unwrap();
        let loaded = config::load(&Sources {
            agent_file: None,
            probe_paths: vec![file],
        })
        .unwrap();
        let cluster = crate::config::ClusterConfig {
            name: "default".into(),
            bootstrap_servers: embedded.bootstrap_servers().into(),
            properties: Default::default(),
            producer: Default::default(),
            consumer: Default::default(),
        };
        let agent = AgentConfig::default();
        let metrics = Arc::new(Metrics::new([]));
        let probe = Arc::new(Probe::new(
            loaded.probes[0].clone(),
            &agent,
            Arc::clone(&metrics),
            Arc::new(crate::export::traces::Spans::disabled(
                metrics.spans_dropped(),
            )),
            true,
        ));
        let producer =
            Arc::new(Producer::new(&cluster, &agent.instance, Duration::from_secs(5)).unwrap());
        let verifier = Arc::new(KafkaVerifier::new(&cluster, &agent.instance).unwrap());
        verifier.route(Arc::clone(&probe));
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&verifier).run(stop.clone()));

        let (tx, rx) = watch::channel(None);
        verifier.ensure_assigned("grow", &[0, 1]).await.unwrap();
        tx.send_replace(Some(vec![0, 1]));
        let stop_sending = CancellationToken::new();
        let sender = tokio::spawn(send_loop(SendLoop {
            probe: Arc::clone(&probe),
            producer,
            partitions: rx,
            plan: Plan::Forever,
            stop: stop_sending.clone(),
        }));
        let mut progress = probe.progress();
        let ok_on = |p: &Probe, part: i32| {
            p.snapshot(tokio::time::Instant::now())
                .partitions
                .get(&part)
                .map_or(0, |c| c.outcomes[0])
        };
        let guard = Duration::from_secs(60);
        tokio::time::timeout(guard, progress.wait_for(|s| s.rounds_completed >= 2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            probe
                .snapshot(tokio::time::Instant::now())
                .partitions
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            [0, 1]
        );

        verifier
            .ensure_assigned("grow", &[0, 1, 2, 3])
            .await
            .unwrap();
        tx.send_replace(Some(vec![0, 1, 2, 3]));
        // The condition reads a snapshot, so it is checked outside the channel's borrow (never
        // inside `wait_for`, which holds it).
        let covered = async {
            while ok_on(&probe, 2) < 2 || ok_on(&probe, 3) < 2 {
                progress.changed().await.unwrap();
            }
        };
        tokio::time::timeout(guard, covered).await.unwrap();
        stop_sending.cancel();
        tokio::time::timeout(guard, sender).await.unwrap().unwrap();
        stop.cancel();
        let c = probe.progress().borrow().counts;
        assert_eq!(c.in_flight, 0);
        assert_eq!(
            c.get(Outcome::Ok),
            c.sent,
            "every record on old and new partitions verified: {c:?}"
        );
        let parts = probe.snapshot(tokio::time::Instant::now()).partitions;
        assert_eq!(parts.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
        // seq restarts per partition: new partitions start at 0, old ones continue
        assert!(parts[&0].sent > parts[&2].sent);
    }
}
