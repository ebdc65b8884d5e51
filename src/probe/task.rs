//! The tasks that drive a probe.
//!
//! [`send_loop`]: slot `k` is due at `start + k * interval`; every slot gets its records, with
//! the slot's time as their scheduled time, even when the loop wakes late (a stalled runtime or
//! producer). A round is built and registered a little before its slot and handed to
//! [`super::clock`], whose thread sends it at the slot itself (tokio's timer is a millisecond
//! late). Latency is measured from that time, so a stall shows up as latency instead of
//! vanishing (coordinated omission). The same loop settles deadlines and, once told to stop or
//! done with its plan, keeps settling until nothing is in flight.
//!
//! Partitions come from [`crate::discovery`]. A finite run (`smoke`) starts its schedule once
//! they are known (the command gives up after its connect timeout). A daemon (`run`) starts it
//! at discovery's first answer, partitions or an error (or after `timeout` without any): a
//! probe that cannot find its topic must fail visibly, not sit silent. A round that falls due
//! while no partition is known waits, like a record in librdkafka's queue, until partitions
//! are known (then it is sent, its latency counted from its slot) or until its deadline (slot +
//! `timeout`), when it counts as one `send_failed` record (reason `discovery`, partition -1).
//! Once partitions were known, rounds keep going to the last known ones while discovery fails,
//! and each record gets its outcome from the broker.
//!
//! The schedule ([`Schedule`]) lives outside the loop's task, so a loop restarted by its
//! supervisor after a panic resumes it instead of starting over.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::producer::BaseRecord;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::{Probe, Reason};
use crate::kafka::{Deliveries, Producer, Ticket};
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

/// The partition of a record whose round fell due while no partition was known.
pub const UNKNOWN_PARTITION: i32 = -1;

/// Where a probe's schedule is. Shared with the loop's supervisor so that a restarted loop
/// resumes it.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// Slot 0 (monotonic, and wall clock since the Unix epoch), once the schedule started.
    start: Option<(Instant, Duration)>,
    /// The next round to fall due.
    round: u64,
    /// Next seq per partition.
    seqs: HashMap<i32, u64>,
    /// Rounds that fell due while no partition was known, oldest first.
    held: VecDeque<u64>,
}

#[derive(Clone)]
pub(crate) struct SendLoop {
    pub probe: Arc<Probe>,
    pub producer: Arc<Producer>,
    pub partitions: watch::Receiver<Option<Vec<i32>>>,
    pub plan: Plan,
    /// Cancelled when the agent stops sending (shutdown or smoke end).
    pub stop: CancellationToken,
    pub schedule: Arc<Mutex<Schedule>>,
}

impl SendLoop {
    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self) -> bool {
        self.partitions
            .borrow()
            .as_ref()
            .is_some_and(|p| !p.is_empty())
    }

    /// Slot `round` of a schedule that started at `start`.
    fn slot(&self, start: (Instant, Duration), round: u64) -> (Instant, Duration) {
        let offset = self.probe.config.interval * u32::try_from(round).unwrap_or(u32::MAX);
        (start.0 + offset, start.1 + offset)
    }
}

pub(crate) async fn send_loop(mut s: SendLoop) {
    let probe = Arc::clone(&s.probe);
    let started = s.schedule().start;
    let start = match started {
        Some(start) => start,
        None => {
            if !first_answer(&mut s).await {
                // Stopped before the schedule started: nothing to settle.
                probe.set_finished();
                return;
            }
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let start = (Instant::now(), wall);
            s.schedule().start = Some(start);
            start
        }
    };
    let interval = probe.config.interval;
    let timeout = probe.config.timeout;
    let mut progress = probe.progress();
    let lead = LEAD.min(interval / 2);
    let mut open = true; // the partitions channel still has a sender
    let mut sending = {
        let round = s.schedule().round;
        !s.stop.is_cancelled() && s.plan.wants(round, s.slot(start, round).0 - start.0)
    };
    loop {
        let (round, oldest_held) = {
            let sched = s.schedule();
            (sched.round, sched.held.front().copied())
        };
        let (slot, wall) = s.slot(start, round);
        let held_deadline = oldest_held.map(|r| s.slot(start, r).0 + timeout);
        // While the sink's answer is refused (a configuration mistake) no round is sent and
        // no deadline passes; the loop wakes when that changes.
        let refused = progress.borrow_and_update().refused.is_some();
        let deadline = if refused { None } else { probe.next_deadline() };
        tokio::select! {
            biased;
            _ = s.stop.cancelled(), if sending => {
                sending = false;
                refuse_held(&s, start);
            }
            _ = sleep_until(slot.checked_sub(lead).unwrap_or(slot)), if sending => {
                if refused {
                    // Not sent: nothing could verify it.
                } else if s.known() {
                    let records = prepare_round(&s, round, slot, wall);
                    send_at(&s, slot, records).await;
                } else {
                    s.schedule().held.push_back(round);
                }
                let next = round + 1;
                s.schedule().round = next;
                sending = s.plan.wants(next, s.slot(start, next).0 - start.0);
            }
            _ = sleep_until(held_deadline.unwrap_or(slot)), if held_deadline.is_some() => {
                let oldest = s.schedule().held.pop_front();
                if let Some(r) = oldest {
                    refuse(&s, r, s.slot(start, r), &unknown_partitions(&s));
                }
            }
            changed = s.partitions.changed(), if open && oldest_held.is_some() => {
                open = changed.is_ok();
                if s.known() {
                    // Late, but sent: their latency is counted from their slots.
                    let held: Vec<u64> = s.schedule().held.drain(..).collect();
                    for r in held {
                        let (slot, wall) = s.slot(start, r);
                        let records = prepare_round(&s, r, slot, wall);
                        send_at(&s, slot, records).await;
                    }
                }
            }
            _ = sleep_until(deadline.unwrap_or(slot)), if deadline.is_some() => probe.expire(Instant::now()),
            // While draining, an arrival may settle the last record in flight. (While sending,
            // waking on every settled record would only recompute the same next deadline.)
            _ = progress.changed(), if !sending || refused => {}
        }
        // Drained, or nothing left that can settle: records held while the sink's answer is
        // refused stay in flight (the agent's stop says so) rather than wait out the drain.
        let refused = progress.borrow().refused.is_some();
        if !sending && s.schedule().held.is_empty() && (probe.in_flight() == 0 || refused) {
            break;
        }
    }
    probe.set_finished();
}

/// Waits until the schedule may start: partitions are known, or (for a daemon) discovery
/// answered with an error or did not answer within the probe's timeout. False when stopped
/// first.
async fn first_answer(s: &mut SendLoop) -> bool {
    let hold = s.plan == Plan::Forever;
    let mut progress = s.probe.progress();
    let bound = tokio::time::sleep(s.probe.config.timeout);
    tokio::pin!(bound);
    loop {
        if s.known() {
            return true;
        }
        if hold && progress.borrow_and_update().discovery_error.is_some() {
            return true;
        }
        tokio::select! {
            changed = s.partitions.changed() => if changed.is_err() { return false },
            changed = progress.changed(), if hold => if changed.is_err() { return false },
            _ = &mut bound, if hold => return true,
            _ = s.stop.cancelled() => return false,
        }
    }
}

/// Why the topic's partitions are unknown: discovery's error, or its silence.
fn discovery_error(s: &SendLoop) -> String {
    let cfg = &s.probe.config;
    s.probe
        .progress()
        .borrow()
        .discovery_error
        .clone()
        .unwrap_or_else(|| {
            format!(
                "no answer from cluster {} within {}",
                cfg.cluster,
                humantime::format_duration(cfg.timeout)
            )
        })
}

/// Why a held round was not sent by its deadline.
fn unknown_partitions(s: &SendLoop) -> Reason {
    Reason::new(
        "discovery",
        format!(
            "not sent: the partitions of topic {} were not known by the round's deadline ({})",
            s.probe.config.topic,
            discovery_error(s)
        ),
    )
}

/// Settles every held round now (the agent is stopping).
fn refuse_held(s: &SendLoop, start: (Instant, Duration)) {
    let held: Vec<u64> = s.schedule().held.drain(..).collect();
    let reason = Reason::new(
        "discovery",
        format!(
            "not sent: the agent stopped before the partitions of topic {} were known ({})",
            s.probe.config.topic,
            discovery_error(s)
        ),
    );
    for r in held {
        refuse(s, r, s.slot(start, r), &reason);
    }
}

/// Counts a round that could not be sent as one `send_failed` record.
fn refuse(s: &SendLoop, round: u64, (slot, wall): (Instant, Duration), reason: &Reason) {
    let record = build(s, UNKNOWN_PARTITION, wall);
    s.probe.refuse(round, slot, vec![record], reason.clone());
}

/// How long before its slot a round is built and registered.
const LEAD: Duration = Duration::from_millis(5);

/// The next record of `partition`.
fn build(s: &SendLoop, partition: i32, wall: Duration) -> Outgoing {
    let probe = &s.probe;
    let cfg = &probe.config;
    let scheduled_at_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
    let mut sched = s.schedule();
    let seq = sched.seqs.entry(partition).or_insert(0);
    let recipe = record::Recipe {
        origin: &probe.origin,
        tags: &cfg.tags,
        payload_bytes: cfg.payload_bytes,
        shape: probe.shape(),
    };
    let r = recipe.build(partition, *seq, scheduled_at_ns, probe.sample());
    *seq += 1;
    r
}

/// Builds and registers the records of one round; returns those to send.
fn prepare_round(s: &SendLoop, round: u64, slot: Instant, wall: Duration) -> Vec<Outgoing> {
    let partitions = s.partitions.borrow().clone().unwrap_or_default();
    let records: Vec<Outgoing> = partitions.iter().map(|&p| build(s, p, wall)).collect();
    s.probe.register(round, slot, records)
}

/// Sends a prepared round at its slot: from the clock thread, or (in unit tests, which pause
/// tokio's clock and so cannot use a real-time thread) from this task.
async fn send_at(s: &SendLoop, slot: Instant, records: Vec<Outgoing>) {
    if records.is_empty() {
        return;
    }
    if cfg!(test) {
        sleep_until(slot).await;
        send_records(&s.probe, &s.producer, slot, records);
    } else {
        let (probe, producer) = (Arc::clone(&s.probe), Arc::clone(&s.producer));
        Clock::global().run_at(slot, move || send_records(&probe, &producer, slot, records));
    }
}

fn send_records(probe: &Arc<Probe>, producer: &Producer, slot: Instant, records: Vec<Outgoing>) {
    probe.send_lag(Instant::now().saturating_duration_since(slot));
    let topic = probe.config.topic.as_str();
    for r in records {
        let id = r.id;
        let ticket = Box::new(Ticket {
            to: Arc::clone(probe) as Arc<dyn Deliveries>,
            id,
        });
        // Its CreateTime is its slot: a downstream record with the same timestamp was given
        // this one's by the job (see `outcome::Unsplit::CarriedOver`), not the job's own.
        let created_ms = i64::try_from(r.body.scheduled_at_ns / 1_000_000).unwrap_or(i64::MAX);
        let record = BaseRecord::with_opaque_to(topic, ticket)
            .partition(r.body.partition)
            .key(r.key.as_str())
            .payload(r.value.as_slice())
            .timestamp(created_ms)
            .headers(r.headers);
        if let Err((e, _)) = producer.send(record) {
            Deliveries::delivered(
                probe.as_ref(),
                &id,
                Instant::now(),
                Err(format!("cannot enqueue: {e}")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use crate::embedded::EmbeddedCluster;
    use crate::outcome::Outcome;
    use crate::verify::kafka::KafkaVerifier;

    /// A daemon's send loop for a probe given by `yaml`, producing to a cluster nothing listens
    /// at (records handed to it are never acknowledged), its partitions published through the
    /// returned sender; stopped by the returned token.
    fn blind_daemon(yaml: &str) -> BlindDaemon {
        let probe = Arc::new(crate::testing::from_yaml(yaml));
        let cluster = crate::config::ClusterConfig {
            name: "primary".into(),
            bootstrap_servers: "127.0.0.1:1".into(),
            properties: Default::default(),
            producer: Default::default(),
            consumer: Default::default(),
        };
        let producer = Arc::new(Producer::new(&cluster, "test", Duration::from_secs(60)).unwrap());
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let sender = tokio::spawn(send_loop(SendLoop {
            probe: Arc::clone(&probe),
            producer,
            partitions: rx,
            plan: Plan::Forever,
            stop: stop.clone(),
            schedule: Arc::default(),
        }));
        BlindDaemon {
            probe,
            partitions: tx,
            stop,
            sender,
        }
    }

    struct BlindDaemon {
        probe: Arc<Probe>,
        partitions: watch::Sender<Option<Vec<i32>>>,
        stop: CancellationToken,
        sender: tokio::task::JoinHandle<()>,
    }

    /// A daemon whose topic cannot be discovered is not silent: its schedule starts at
    /// discovery's first answer (an error), each round waits for partitions until its deadline
    /// and then counts as one `send_failed` record (reason `discovery`); rounds still within
    /// their deadline when partitions arrive are sent then, with their own slot as scheduled
    /// time; stopping settles the rounds still waiting.
    #[tokio::test(start_paused = true)]
    async fn rounds_without_partitions_fail_at_their_deadline_or_go_out_late() {
        let t0 = Instant::now();
        let BlindDaemon {
            probe,
            partitions: tx,
            stop,
            sender,
        } = blind_daemon("name: blind\ninterval: 1s\ntimeout: 3s\n");
        let counts = || probe.progress().borrow().counts;
        // no answer from discovery yet: nothing is scheduled
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(counts().sent, 0);
        // the first answer is an error: the schedule starts now (t = 0.5 s)
        tokio::time::sleep(Duration::from_millis(100)).await;
        probe.set_partitions(Err(
            "cannot reach cluster primary (127.0.0.1:1): timed out".into()
        ));
        // rounds 0, 1, 2 fall due at 0.5, 1.5, 2.5 s and wait; round 0 fails at 3.5 s
        tokio::time::sleep(Duration::from_millis(2900)).await;
        assert_eq!(counts().sent, 0, "rounds wait until their deadline");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let c = counts();
        assert_eq!((c.sent, c.get(Outcome::SendFailed)), (1, 1));
        let failed = &probe.snapshot(Instant::now()).last[0];
        assert_eq!(failed.partition, UNKNOWN_PARTITION);
        let reason = failed.reason.as_ref().unwrap();
        assert_eq!(reason.kind, "discovery");
        assert_eq!(
            reason.detail,
            "not sent: the partitions of topic synthetic-sla were not known by the round's deadline (cannot reach cluster primary (127.0.0.1:1): timed out)"
        );
        // at 4.6 s rounds 0 and 1 have failed; partitions arrive: rounds 2, 3 and 4 (due at
        // 2.5, 3.5, 4.5 s) go out at once, one record per partition, scheduled at their slots
        tokio::time::sleep_until(t0 + Duration::from_millis(4600)).await;
        assert_eq!(counts().get(Outcome::SendFailed), 2);
        tx.send_replace(Some(vec![0, 1]));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let c = counts();
        assert_eq!((c.sent, c.in_flight), (2 + 3 * 2, 6), "{c:?}");
        // never acknowledged: each is lost at its own slot's deadline (5.5, 6.5 and 7.5 s)
        tokio::time::sleep_until(t0 + Duration::from_millis(5600)).await;
        assert_eq!(
            counts().get(Outcome::Lost),
            2,
            "round 2 (slot 2.5 s) is lost at 5.5 s: {:?} {:?}",
            counts(),
            probe.snapshot(Instant::now()).last
        );
        // round 5 (5.5 s) went out on time; stop at 6 s: nothing waits, in-flight records
        // settle at their deadlines and the loop ends
        tokio::time::sleep_until(t0 + Duration::from_secs(6)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), sender)
            .await
            .expect("drained")
            .unwrap();
        let c = counts();
        assert_eq!(
            (
                c.sent,
                c.get(Outcome::SendFailed),
                c.get(Outcome::Lost),
                c.in_flight
            ),
            (10, 2, 8, 0),
            "{c:?}"
        );
        assert!(c.conserved());
    }

    /// Stopping while rounds wait for partitions settles them at once, never leaves them out.
    #[tokio::test(start_paused = true)]
    async fn stopping_settles_the_rounds_still_waiting_for_partitions() {
        let BlindDaemon {
            probe,
            partitions: _tx,
            stop,
            sender,
        } = blind_daemon("name: blind\ninterval: 1s\ntimeout: 30s\n");
        // no answer from discovery at all: the schedule starts after the timeout (30 s)
        tokio::time::sleep(Duration::from_millis(32_500)).await;
        assert_eq!(probe.progress().borrow().counts.sent, 0);
        stop.cancel();
        sender.await.unwrap();
        let c = probe.progress().borrow().counts;
        assert_eq!((c.sent, c.get(Outcome::SendFailed)), (3, 3), "{c:?}");
        let reason = probe.snapshot(Instant::now()).last[0]
            .reason
            .clone()
            .unwrap();
        assert_eq!(
            reason.detail,
            "not sent: the agent stopped before the partitions of topic synthetic-sla were known (no answer from cluster default within 30s)"
        );
        assert!(probe.progress().borrow().finished);
    }

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
        let probe = Arc::new(crate::testing::from_yaml(
            &std::fs::read_to_string(&file).unwrap(),
        ));
        let cluster = crate::config::ClusterConfig {
            name: "default".into(),
            bootstrap_servers: embedded.bootstrap_servers().into(),
            properties: Default::default(),
            producer: Default::default(),
            consumer: Default::default(),
        };
        let agent = AgentConfig {
            instance: probe.origin.instance.clone(),
            ..AgentConfig::default()
        };
        let producer =
            Arc::new(Producer::new(&cluster, &agent.instance, Duration::from_secs(5)).unwrap());
        let verifier = Arc::new(KafkaVerifier::new(&cluster, &agent.instance, true).unwrap());
        verifier.route(Arc::clone(&probe)).unwrap();
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
            schedule: Default::default(),
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
