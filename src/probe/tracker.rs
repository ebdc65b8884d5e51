//! The in-flight tracker: every sent record until its one final outcome, and what came after.
//!
//! Pure bookkeeping, no I/O: callers pass the time in, so tests drive it with a paused clock.
//! Deadlines are `scheduled + timeout` with a constant timeout and increasing scheduled times,
//! so a FIFO queue orders them; entries whose record already finished are skipped lazily.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::outcome::{Counts, Finished, Outcome, PartitionCounts, Reason};
use crate::record::{Corruption, Expected};

/// A sent record awaiting its outcome.
#[derive(Debug)]
pub struct Pending {
    pub expected: Expected,
    pub scheduled: Instant,
    pub round: u64,
    /// Broker acknowledgement: when, and the offset it got.
    pub acked: Option<(Instant, i64)>,
    /// The offset it was read back at, when that came before the acknowledgement.
    pub read_at: Option<i64>,
}

/// What an arriving own record turned out to be. Returned once per arrival and taken apart at
/// once: moving the final record is cheaper than allocating a box for it on every arrival.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Arrival {
    /// It was in flight: now final (`ok` or `corrupt`). `reordered` when an ok record has a
    /// lower seq than one already verified on its partition.
    Final { finished: Finished, reordered: bool },
    /// Already verified (or found corrupt) before: seen again. `partition`: the one it was
    /// sent to.
    Duplicate { partition: i32 },
    /// Already declared lost or unsendable; `latency` since its scheduled send when known.
    Late {
        latency: Option<Duration>,
        partition: i32,
    },
}

/// Where an arrival's order is judged: against the records of its input partition that came
/// the same way. Kafka keeps the order of one partition; a job that re-keys its output spreads
/// one input partition over several downstream partitions, and only the records that share
/// one kept their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Read back from this partition (of the probe topic, a mirror or a job's output).
    Partition(i32),
    /// Found in a sink: among the input partition's records found there.
    Sink,
    /// The pipeline does not keep order (`ordered: false`): not judged.
    Unordered,
}

/// At most this many finished ids are remembered, whatever the retention.
const MAX_RECENT: usize = 100_000;

/// What an arriving record that claims this probe is, when the tracker does not know its id
/// (neither in flight nor remembered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stranger {
    /// Its id (a UUID v7) was minted no later than the newest record this tracker forgot: one
    /// of its own records whose fate it no longer remembers (a replay, most often), counted as
    /// a duplicate.
    Forgotten,
    /// Never sent by this probe: its id is not a UUID v7, or was minted after every record the
    /// tracker forgot (it would still know it). Another producer's record with this agent's
    /// headers.
    NeverSent,
}

/// The time in a UUID v7, in milliseconds since the Unix epoch (`None` for other versions).
fn minted_ms(id: &Uuid) -> Option<u64> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// Sizes of the tracker's collections, for memory tests and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub pending: usize,
    pub deadlines: usize,
    pub recent: usize,
}

#[derive(Debug, Clone, Copy)]
struct Recent {
    outcome: Outcome,
    /// The partition it was sent to, for the log line of a duplicate or late arrival (in
    /// what would be padding).
    partition: i32,
    scheduled: Instant,
}

#[derive(Debug)]
pub struct Tracker {
    timeout: Duration,
    /// Records in flight beyond this are settled `send_failed` (backpressure), never sent.
    max_in_flight: usize,
    /// How long finished ids are remembered to tell duplicates and late arrivals.
    retention: Duration,
    pending: HashMap<Uuid, Pending>,
    deadlines: VecDeque<(Instant, Uuid)>,
    recent: HashMap<Uuid, Recent>,
    recent_order: VecDeque<(Instant, Uuid)>,
    counts: Counts,
    partitions: BTreeMap<i32, PartitionCounts>,
    /// Highest seq verified per input partition and the way it came (its [`Lane`]), for
    /// reorder detection: bounded by the probe's partitions times the downstream topic's.
    highest_seq: HashMap<(i32, Option<i32>), u64>,
    /// Records still in flight per round; a round completes when its count reaches zero.
    open_rounds: BTreeMap<u64, usize>,
    rounds_completed: u64,
    /// The latest mint time (UUID v7, ms) of an id forgotten so far: an unknown id minted after
    /// it was never sent by this probe.
    forgotten_upto_ms: Option<u64>,
}

impl Tracker {
    pub fn new(timeout: Duration, retention: Duration, max_in_flight: usize) -> Self {
        Tracker {
            timeout,
            max_in_flight: max_in_flight.max(1),
            retention: retention.max(timeout),
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            counts: Counts::default(),
            partitions: BTreeMap::new(),
            highest_seq: HashMap::new(),
            open_rounds: BTreeMap::new(),
            rounds_completed: 0,
            forgotten_upto_ms: None,
        }
    }

    pub fn footprint(&self) -> Footprint {
        Footprint {
            pending: self.pending.len(),
            deadlines: self.deadlines.len(),
            recent: self.recent.len(),
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn partitions(&self) -> &BTreeMap<i32, PartitionCounts> {
        &self.partitions
    }

    pub fn rounds_completed(&self) -> u64 {
        self.rounds_completed
    }

    /// Records in flight that the broker acknowledged (what a sink poller looks for).
    pub fn acked_ids(&self) -> Vec<Uuid> {
        self.pending
            .iter()
            .filter(|(_, p)| p.acked.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// In flight or finished recently enough to be remembered.
    pub fn knows(&self, id: &Uuid) -> bool {
        self.pending.contains_key(id) || self.recent.contains_key(id)
    }

    /// A round's records are about to be registered: until [`Tracker::round_registered`], the
    /// round is not complete, even when every record registered so far is settled (records
    /// refused at once, over the in-flight bound or without partitions, would otherwise each
    /// complete the round again).
    pub fn round_registering(&mut self, round: u64) {
        *self.open_rounds.entry(round).or_default() += 1;
    }

    /// Every record of `round` is registered (see [`Tracker::round_registering`]).
    pub fn round_registered(&mut self, round: u64) {
        self.round_done(round);
    }

    /// One of `round`'s open records (or its registration) is done; the last completes it.
    fn round_done(&mut self, round: u64) {
        if let Some(n) = self.open_rounds.get_mut(&round) {
            *n -= 1;
            if *n == 0 {
                self.open_rounds.remove(&round);
                self.rounds_completed += 1;
            }
        }
    }

    /// A record was scheduled. Over the in-flight bound it is settled at once as
    /// `send_failed` (reason `backpressure`) and returned: the caller must not send it.
    pub fn register(
        &mut self,
        expected: Expected,
        scheduled: Instant,
        round: u64,
    ) -> Result<(), Box<Finished>> {
        if self.pending.len() >= self.max_in_flight {
            let reason = format!(
                "backpressure: {} records already in flight (max_in_flight)",
                self.pending.len()
            );
            let reason = Reason::new("backpressure", reason);
            return Err(Box::new(self.refuse(expected, scheduled, round, reason)));
        }
        let id = expected.body.id;
        self.count_scheduled(&expected, round, scheduled);
        self.deadlines.push_back((scheduled + self.timeout, id));
        self.pending.insert(
            id,
            Pending {
                expected,
                scheduled,
                round,
                acked: None,
                read_at: None,
            },
        );
        Ok(())
    }

    /// A record that is counted as sent but never handed to the producer (over the in-flight
    /// bound, or its topic's partitions are unknown): settled `send_failed` at once.
    pub fn refuse(
        &mut self,
        expected: Expected,
        scheduled: Instant,
        round: u64,
        reason: Reason,
    ) -> Finished {
        self.count_scheduled(&expected, round, scheduled);
        let pending = Pending {
            expected,
            scheduled,
            round,
            acked: None,
            read_at: None,
        };
        self.finish(pending, scheduled, Outcome::SendFailed, None, Some(reason))
    }

    fn count_scheduled(&mut self, expected: &Expected, round: u64, now: Instant) {
        // Every round forgets what is past the retention: in a healthy run no deadline ever
        // falls due (records are verified first), so `expire` alone would never forget.
        self.forget(now);
        self.counts.sent += 1;
        self.counts.in_flight += 1;
        if expected.body.partition >= 0 {
            self.partitions
                .entry(expected.body.partition)
                .or_default()
                .sent += 1;
        }
        *self.open_rounds.entry(round).or_default() += 1;
    }

    /// The broker acknowledged the record: returns produce latency (from the scheduled send).
    /// The report may come after the record was already verified; it still has a latency.
    pub fn ack(&mut self, id: &Uuid, at: Instant, offset: i64) -> Option<Duration> {
        if let Some(p) = self.pending.get_mut(id) {
            p.acked = Some((at, offset));
            return Some(at.saturating_duration_since(p.scheduled));
        }
        self.recent
            .get(id)
            .map(|r| at.saturating_duration_since(r.scheduled))
    }

    /// The producer gave up on the record.
    pub fn send_failed(&mut self, id: &Uuid, now: Instant, reason: String) -> Option<Finished> {
        let p = self.pending.remove(id)?;
        let reason = Reason::new("producer", reason);
        Some(self.finish(p, now, Outcome::SendFailed, None, Some(reason)))
    }

    /// An own record arrived at `at` (read back at `offset`, or found in a sink) by `lane`;
    /// `check` compares it with what was sent.
    pub fn arrive(
        &mut self,
        id: &Uuid,
        at: Instant,
        offset: Option<i64>,
        lane: Lane,
        check: impl FnOnce(&Expected) -> Result<(), Corruption>,
    ) -> Option<Arrival> {
        if let Some(mut p) = self.pending.remove(id) {
            let latency = at.saturating_duration_since(p.scheduled);
            if p.acked.is_none() {
                // Verified before the delivery report: the offset is known from the fetch (the
                // acknowledgement's time is not).
                p.read_at = offset;
            }
            let (outcome, reason) = match check(&p.expected) {
                Ok(()) => (Outcome::Ok, None),
                Err(c) => (Outcome::Corrupt, Some(Reason::new(c.kind(), c.to_string()))),
            };
            let partition = p.expected.body.partition;
            let seq = p.expected.body.seq;
            let finished = self.finish(p, at, outcome, Some(latency), reason);
            let mut reordered = false;
            let lane = match lane {
                Lane::Partition(p) => Some(Some(p)),
                Lane::Sink => Some(None),
                Lane::Unordered => None,
            };
            if outcome == Outcome::Ok
                && let Some(lane) = lane
            {
                let highest = self.highest_seq.entry((partition, lane)).or_insert(seq);
                if seq < *highest {
                    reordered = true;
                    self.counts.reordered += 1;
                } else {
                    *highest = seq;
                }
            }
            return Some(Arrival::Final {
                finished,
                reordered,
            });
        }
        let recent = self.recent.get(id)?;
        Some(match recent.outcome {
            Outcome::Ok | Outcome::Corrupt => {
                self.counts.duplicates += 1;
                Arrival::Duplicate {
                    partition: recent.partition,
                }
            }
            Outcome::Lost | Outcome::SendFailed => {
                self.counts.late += 1;
                Arrival::Late {
                    latency: Some(at.saturating_duration_since(recent.scheduled)),
                    partition: recent.partition,
                }
            }
        })
    }

    /// An arrival claiming this probe whose id the tracker does not know: one of its own
    /// records that it forgot (counted as a duplicate), or one it never sent (for the caller to
    /// count as foreign).
    pub fn stranger(&mut self, id: &Uuid) -> Stranger {
        match (minted_ms(id), self.forgotten_upto_ms) {
            (Some(minted), Some(upto)) if minted <= upto => {
                self.counts.duplicates += 1;
                Stranger::Forgotten
            }
            _ => Stranger::NeverSent,
        }
    }

    /// The earliest deadline of a record still in flight.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some((deadline, id)) = self.deadlines.front() {
            if self.pending.contains_key(id) {
                return Some(*deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// Settles every record whose deadline passed as `lost`.
    pub fn expire(&mut self, now: Instant) -> Vec<Finished> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(p) = self.pending.remove(&id) {
                // The offset is the record's own (`Finished::offset`): the sentence is the same
                // for every record lost the same way, so that a verdict can count them as one.
                let reason = match p.acked {
                    Some(_) => "not read back within the timeout (acknowledged by the broker)",
                    None => "not read back within the timeout (never acknowledged by the broker)",
                };
                let reason = Reason::new("timeout", reason);
                out.push(self.finish(p, now, Outcome::Lost, None, Some(reason)));
            }
        }
        self.forget(now);
        out
    }

    fn finish(
        &mut self,
        p: Pending,
        now: Instant,
        outcome: Outcome,
        latency: Option<Duration>,
        reason: Option<Reason>,
    ) -> Finished {
        let body = &p.expected.body;
        self.counts.in_flight -= 1;
        self.counts.outcomes[outcome.index()] += 1;
        // A record whose partition was never known (-1) has no partition to count under.
        if body.partition >= 0 {
            self.partitions.entry(body.partition).or_default().outcomes[outcome.index()] += 1;
        }
        self.round_done(p.round);
        self.recent.insert(
            body.id,
            Recent {
                outcome,
                partition: body.partition,
                scheduled: p.scheduled,
            },
        );
        self.recent_order.push_back((now, body.id));
        Finished {
            id: body.id,
            partition: body.partition,
            seq: body.seq,
            trace_id: p.expected.trace_id,
            span_id: p.expected.span_id,
            sampled: p.expected.sampled,
            scheduled_at_ns: body.scheduled_at_ns,
            acked_after: p
                .acked
                .map(|(at, _)| at.saturating_duration_since(p.scheduled)),
            since_scheduled: now.saturating_duration_since(p.scheduled),
            offset: p.acked.map(|(_, o)| o).or(p.read_at),
            read: None,
            outcome,
            latency,
            reason,
            hops: None,
            job: None,
        }
    }

    fn forget(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.recent_order.front() {
            if now.saturating_duration_since(at) < self.retention
                && self.recent_order.len() <= MAX_RECENT
            {
                break;
            }
            self.recent_order.pop_front();
            if self.recent.remove(&id).is_some()
                && let Some(minted) = minted_ms(&id)
            {
                self.forgotten_upto_ms = self.forgotten_upto_ms.max(Some(minted));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{self, Origin};
    use std::collections::BTreeMap;

    fn expected(partition: i32, seq: u64) -> Expected {
        let origin = Origin {
            probe: "p".into(),
            instance: "i".into(),
            site: "s".into(),
        };
        Expected::of(&record::build(
            &origin,
            partition,
            seq,
            0,
            &BTreeMap::new(),
            8,
            true,
        ))
    }

    const T: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn every_record_ends_in_exactly_one_outcome() {
        let mut t = Tracker::new(T, Duration::from_secs(300), 100);
        let t0 = Instant::now();
        let ids: Vec<Uuid> = (0..5)
            .map(|p| {
                let e = expected(p, 0);
                let id = e.body.id;
                t.register(e, t0, 0).unwrap();
                id
            })
            .collect();
        assert_eq!(t.counts().in_flight, 5);
        t.ack(&ids[0], t0 + Duration::from_millis(2), 10);
        t.ack(&ids[1], t0 + Duration::from_millis(2), 11);
        t.ack(&ids[2], t0 + Duration::from_millis(2), 12);
        // 0 verified, 1 corrupt, 2 acked but never read back (lost), 3 never acked (lost),
        // 4 given up by the producer (send_failed)
        let f = t.send_failed(
            &ids[4],
            t0 + Duration::from_millis(3),
            "Broker: Topic authorization failed".into(),
        );
        assert_eq!(f.unwrap().outcome, Outcome::SendFailed);
        assert!(
            t.send_failed(&ids[4], t0, "again".into()).is_none(),
            "settled once"
        );
        let a = t
            .arrive(
                &ids[0],
                t0 + Duration::from_millis(5),
                Some(10),
                Lane::Sink,
                |_| Ok(()),
            )
            .unwrap();
        assert!(
            matches!(a, Arrival::Final { finished: Finished { outcome: Outcome::Ok, latency: Some(l), .. }, reordered: false } if l == Duration::from_millis(5))
        );
        let a = t
            .arrive(
                &ids[1],
                t0 + Duration::from_millis(6),
                Some(11),
                Lane::Sink,
                |_| Err(Corruption::Digest),
            )
            .unwrap();
        assert!(matches!(
            a,
            Arrival::Final {
                finished: Finished {
                    outcome: Outcome::Corrupt,
                    ..
                },
                ..
            }
        ));
        assert!(t.counts().conserved());
        assert_eq!(t.next_deadline(), Some(t0 + T));
        assert!(t.expire(t0 + T - Duration::from_millis(1)).is_empty());
        tokio::time::advance(T).await;
        let expired = t.expire(Instant::now());
        let outcomes: Vec<_> = expired
            .iter()
            .map(|f| (f.partition, f.outcome, f.reason.clone().unwrap().detail))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (
                    2,
                    Outcome::Lost,
                    "not read back within the timeout (acknowledged by the broker)".into()
                ),
                (
                    3,
                    Outcome::Lost,
                    "not read back within the timeout (never acknowledged by the broker)".into()
                ),
            ]
        );
        let c = t.counts();
        assert_eq!((c.sent, c.in_flight), (5, 0));
        assert_eq!(c.outcomes, [1, 2, 1, 1]);
        assert!(c.conserved());
        assert_eq!(t.rounds_completed(), 1);
        assert_eq!(t.next_deadline(), None);

        // after the fact: a duplicate of the ok record and a late arrival of the lost one
        assert!(matches!(
            t.arrive(&ids[0], Instant::now(), Some(10), Lane::Sink, |_| Ok(())),
            Some(Arrival::Duplicate { partition: 0 })
        ));
        assert!(matches!(
            t.arrive(&ids[2], Instant::now(), Some(12), Lane::Sink, |_| Ok(())),
            Some(Arrival::Late { latency: Some(l), partition: 2 }) if l == T
        ));
        let c = t.counts();
        assert_eq!((c.duplicates, c.late), (1, 1));
        assert_eq!(
            c.outcomes,
            [1, 2, 1, 1],
            "events never re-score a final outcome"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_bound_settles_extra_records_as_backpressure() {
        let mut t = Tracker::new(T, T, 2);
        let now = Instant::now();
        assert!(t.register(expected(0, 0), now, 0).is_ok());
        assert!(t.register(expected(1, 0), now, 0).is_ok());
        let f = t.register(expected(2, 0), now, 0).unwrap_err();
        assert_eq!(f.outcome, Outcome::SendFailed);
        let reason = f.reason.unwrap();
        assert_eq!(reason.kind, "backpressure");
        assert!(reason.detail.starts_with("backpressure"), "{reason}");
        let c = t.counts();
        assert_eq!((c.sent, c.in_flight, c.get(Outcome::SendFailed)), (3, 2, 1));
        assert!(c.conserved());
        assert_eq!(t.footprint().pending, 2);
    }

    /// A round whose records are all refused at once completes once, not once per record.
    #[tokio::test(start_paused = true)]
    async fn a_round_refused_record_by_record_completes_once() {
        let mut t = Tracker::new(T, T, 1);
        let now = Instant::now();
        let first = expected(0, 0);
        let id = first.body.id;
        t.round_registering(0);
        assert!(t.register(first, now, 0).is_ok());
        t.round_registered(0);
        for round in 1..=3 {
            t.round_registering(round);
            for partition in 0..5 {
                assert!(t.register(expected(partition, round), now, round).is_err());
                assert_eq!(t.rounds_completed(), round - 1, "not while registering");
            }
            t.round_registered(round);
            assert_eq!(t.rounds_completed(), round, "round {round}, once");
        }
        assert!(
            t.arrive(&id, now, Some(0), Lane::Sink, |_| Ok(()))
                .is_some()
        );
        assert_eq!(t.rounds_completed(), 4, "round 0 once its record settled");
    }

    #[tokio::test(start_paused = true)]
    async fn lower_seq_after_higher_is_reordered_but_ok() {
        let mut t = Tracker::new(T, T, 100);
        let now = Instant::now();
        let (e1, e2) = (expected(0, 1), expected(0, 2));
        let (id1, id2) = (e1.body.id, e2.body.id);
        t.register(e1, now, 0).unwrap();
        t.register(e2, now, 1).unwrap();
        assert!(matches!(
            t.arrive(&id2, now, Some(1), Lane::Sink, |_| Ok(())),
            Some(Arrival::Final {
                reordered: false,
                ..
            })
        ));
        assert!(matches!(
            t.arrive(&id1, now, Some(0), Lane::Sink, |_| Ok(())),
            Some(Arrival::Final {
                reordered: true,
                ..
            })
        ));
        assert_eq!(t.counts().get(Outcome::Ok), 2);
        assert_eq!(t.counts().reordered, 1);
    }

    /// A job that re-keys its output writes consecutive records of one input partition to
    /// different downstream partitions: their order there is no fault. Only records that came
    /// the same way (input partition 0 to downstream partition 1, say) are held to it.
    #[tokio::test(start_paused = true)]
    async fn order_is_judged_only_among_records_that_came_the_same_way() {
        let mut t = Tracker::new(T, T, 100);
        let now = Instant::now();
        let records: Vec<Expected> = (1..=4).map(|seq| expected(0, seq)).collect();
        let ids: Vec<Uuid> = records.iter().map(|e| e.body.id).collect();
        for (round, e) in records.into_iter().enumerate() {
            t.register(e, now, round as u64).unwrap();
        }
        let reordered = |t: &mut Tracker, i: usize, lane: Lane| match t.arrive(
            &ids[i],
            now,
            Some(i as i64),
            lane,
            |_| Ok(()),
        ) {
            Some(Arrival::Final { reordered, .. }) => reordered,
            other => panic!("{other:?}"),
        };
        // seq 2 on downstream partition 1, then seq 1 on partition 0: no common way
        assert!(!reordered(&mut t, 1, Lane::Partition(1)));
        assert!(!reordered(&mut t, 0, Lane::Partition(0)));
        // seq 4 then seq 3, both on partition 1: overtaken on the way they share
        assert!(!reordered(&mut t, 3, Lane::Partition(1)));
        assert!(reordered(&mut t, 2, Lane::Partition(1)));
        assert_eq!(t.counts().reordered, 1);
        // a pipeline that keeps no order is not judged
        let mut t = Tracker::new(T, T, 100);
        let (e1, e2) = (expected(0, 1), expected(0, 2));
        let (id1, id2) = (e1.body.id, e2.body.id);
        t.register(e1, now, 0).unwrap();
        t.register(e2, now, 1).unwrap();
        t.arrive(&id2, now, Some(1), Lane::Unordered, |_| Ok(()));
        t.arrive(&id1, now, Some(0), Lane::Unordered, |_| Ok(()));
        assert_eq!(t.counts().reordered, 0);
        assert_eq!(t.counts().get(Outcome::Ok), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_ids_are_forgotten_after_retention() {
        let mut t = Tracker::new(T, Duration::from_secs(60), 100);
        let e = expected(0, 0);
        let id = e.body.id;
        t.register(e, Instant::now(), 0).unwrap();
        t.arrive(&id, Instant::now(), Some(0), Lane::Sink, |_| Ok(()));
        tokio::time::advance(Duration::from_secs(61)).await;
        t.expire(Instant::now());
        assert!(
            t.arrive(&id, Instant::now(), Some(0), Lane::Sink, |_| Ok(()))
                .is_none()
        );
    }

    /// A healthy run settles every record before its deadline, so no deadline ever falls due:
    /// scheduling forgets instead, and the remembered ids stay within the retention.
    #[tokio::test(start_paused = true)]
    async fn a_healthy_run_forgets_without_any_deadline_falling_due() {
        let retention = Duration::from_secs(60);
        let mut t = Tracker::new(T, retention, 100);
        for round in 0..600 {
            let e = expected(0, round);
            let id = e.body.id;
            t.register(e, Instant::now(), round).unwrap();
            t.arrive(&id, Instant::now(), Some(round as i64), Lane::Sink, |_| {
                Ok(())
            });
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(t.counts().get(Outcome::Ok), 600);
        // 60 s of ids at one a second, not 600
        assert!(t.footprint().recent <= 61, "{:?}", t.footprint());
    }

    /// An unknown id is one of the probe's own forgotten records (a duplicate) only if it was
    /// minted no later than the newest one forgotten; any other is not the probe's.
    #[tokio::test(start_paused = true)]
    async fn an_unknown_id_is_forgotten_or_never_sent() {
        let mut t = Tracker::new(T, Duration::from_secs(60), 100);
        let old = expected(0, 0);
        let old_id = old.body.id;
        // nothing forgotten yet: no unknown id can be the probe's
        assert_eq!(t.stranger(&old_id), Stranger::NeverSent);
        t.register(old, Instant::now(), 0).unwrap();
        t.arrive(&old_id, Instant::now(), Some(0), Lane::Sink, |_| Ok(()));
        tokio::time::advance(Duration::from_secs(61)).await;
        // wall-clock ms ticks on: the next id is minted strictly later
        std::thread::sleep(Duration::from_millis(2));
        let next = expected(0, 1);
        let next_id = next.body.id;
        t.register(next, Instant::now(), 1).unwrap();
        assert!(!t.knows(&old_id), "forgotten past the retention");
        assert!(
            t.arrive(&old_id, Instant::now(), Some(0), Lane::Sink, |_| Ok(()))
                .is_none()
        );
        assert_eq!(t.stranger(&old_id), Stranger::Forgotten);
        assert_eq!(t.counts().duplicates, 1);
        // minted after everything forgotten (and not in flight): never sent by this probe
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(t.stranger(&Uuid::now_v7()), Stranger::NeverSent);
        let v4 = uuid::Builder::from_random_bytes([7; 16]).into_uuid();
        assert_eq!(t.stranger(&v4), Stranger::NeverSent, "not a v7");
        assert_eq!(t.stranger(&Uuid::nil()), Stranger::NeverSent);
        assert_eq!(
            t.counts().duplicates,
            1,
            "strangers are not the tracker's to count"
        );
        assert!(t.knows(&next_id));
    }
}
