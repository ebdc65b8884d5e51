//! Single records worth showing an operator (`/status`): a probe's last results, and the
//! slowest verified records of the current window, each with its trace id, so that a p999 point
//! on a dashboard leads to the exact record and its trace.

use std::collections::VecDeque;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use tokio::time::Instant;
use uuid::Uuid;

use crate::outcome::{Finished, Hops, Outcome, Reason, verify_span_id};
use crate::stats::{DEFAULT_SLOTS, Sliding};

/// Results kept per probe.
pub const LAST: usize = 20;
/// Slowest records shown per probe.
pub const SLOWEST: usize = 10;

/// One record as `/status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Noted {
    pub id: Uuid,
    pub trace_id: TraceId,
    /// The span carrying the outcome ([`Finished::outcome_span_id`]).
    pub span_id: SpanId,
    pub partition: i32,
    pub offset: Option<i64>,
    pub seq: u64,
    /// Scheduled send, ns since the Unix epoch.
    pub scheduled_at_ns: u64,
    pub outcome: Outcome,
    pub latency: Option<Duration>,
    pub reason: Option<Reason>,
    /// Its latency split into hops (they add up to it).
    pub hops: Option<Hops>,
    /// What the job it went through was doing while it was in flight: for a record that is
    /// not `ok`, and a slow one.
    pub job: Option<std::sync::Arc<crate::outcome::JobContext>>,
}

impl Noted {
    pub fn of(f: &Finished) -> Noted {
        Noted {
            id: f.id,
            trace_id: f.trace_id,
            span_id: f.outcome_span_id(),
            partition: f.partition,
            offset: f.offset,
            seq: f.seq,
            scheduled_at_ns: f.scheduled_at_ns,
            outcome: f.outcome,
            latency: f.latency,
            reason: f.reason.clone(),
            hops: f.hops().copied(),
            job: f.job.clone(),
        }
    }
}

/// A verified record among the slowest of its window slot: 128 bytes (no reason, always ok,
/// always with an offset), so the 10 slots x 11 entries cost under 14 KiB per probe.
#[derive(Debug, Clone, Copy)]
struct Slow {
    latency_ns: u64,
    /// Where its time went.
    hops: Option<Hops>,
    id: Uuid,
    trace_id: TraceId,
    offset: i64,
    seq: u64,
    scheduled_at_ns: u64,
    partition: i32,
}

/// The slowest [`SLOWEST`] records of one window slot, slowest first.
#[derive(Debug, Default)]
struct Top(Vec<Slow>);

impl Top {
    fn offer(&mut self, s: Slow) {
        if self.0.len() == SLOWEST && self.0.last().is_some_and(|l| l.latency_ns >= s.latency_ns) {
            return;
        }
        if self.0.capacity() == 0 {
            self.0.reserve_exact(SLOWEST + 1);
        }
        let at = self.0.partition_point(|x| x.latency_ns >= s.latency_ns);
        self.0.insert(at, s);
        self.0.truncate(SLOWEST);
    }
}

/// The last results and the window's slowest records of one probe.
#[derive(Debug)]
pub struct Notable {
    last: VecDeque<Noted>,
    slowest: Sliding<Top>,
}

impl Notable {
    pub fn new(window: Duration, origin: Instant) -> Self {
        Notable {
            last: VecDeque::with_capacity(LAST),
            slowest: Sliding::new(window, DEFAULT_SLOTS, origin),
        }
    }

    pub fn record(&mut self, now: Instant, f: &Finished) {
        if self.last.len() == LAST {
            self.last.pop_front();
        }
        self.last.push_back(Noted::of(f));
        if let (Outcome::Ok, Some(latency)) = (f.outcome, f.latency) {
            self.slowest.current(now).offer(Slow {
                latency_ns: u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                hops: f.hops().copied(),
                id: f.id,
                trace_id: f.trace_id,
                // a verified record's offset is known (from the fetch, at the latest)
                offset: f.offset.unwrap_or(-1),
                seq: f.seq,
                scheduled_at_ns: f.scheduled_at_ns,
                partition: f.partition,
            });
        }
    }

    /// The last results, newest first.
    pub fn last(&self) -> Vec<Noted> {
        self.last.iter().rev().cloned().collect()
    }

    /// The slowest verified records of the window at `now`, slowest first.
    pub fn slowest(&self, now: Instant) -> Vec<Noted> {
        let mut all: Vec<Slow> = self
            .slowest
            .live(now)
            .flat_map(|t| t.0.iter().copied())
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.latency_ns));
        all.truncate(SLOWEST);
        all.into_iter()
            .map(|s| Noted {
                id: s.id,
                trace_id: s.trace_id,
                span_id: verify_span_id(&s.id),
                partition: s.partition,
                offset: (s.offset >= 0).then_some(s.offset),
                seq: s.seq,
                scheduled_at_ns: s.scheduled_at_ns,
                outcome: Outcome::Ok,
                latency: Some(Duration::from_nanos(s.latency_ns)),
                reason: None,
                hops: s.hops,
                job: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::finished;

    #[tokio::test(start_paused = true)]
    async fn keeps_the_last_results_newest_first() {
        let mut n = Notable::new(Duration::from_secs(10), Instant::now());
        for seq in 0..(LAST as u64 + 5) {
            let outcome = if seq % 7 == 0 {
                Outcome::Lost
            } else {
                Outcome::Ok
            };
            n.record(Instant::now(), &finished(seq, outcome, 5));
        }
        let last = n.last();
        assert_eq!(last.len(), LAST);
        let seqs: Vec<u64> = last.iter().map(|r| r.seq).collect();
        let want: Vec<u64> = (5..LAST as u64 + 5).rev().collect();
        assert_eq!(seqs, want);
        let lost = last.iter().find(|r| r.seq == 21).unwrap();
        assert_eq!(lost.outcome, Outcome::Lost);
        assert_eq!(lost.reason.as_ref().unwrap().kind, "timeout");
        assert_eq!(lost.span_id, verify_span_id(&lost.id));
    }

    #[tokio::test(start_paused = true)]
    async fn the_slowest_of_the_window_across_slots() {
        let window = Duration::from_secs(10);
        let mut n = Notable::new(window, Instant::now());
        // slot 0: latencies 1..=30 ms; the 30 ms one is the outlier that must be shown
        for seq in 1..=30 {
            n.record(Instant::now(), &finished(seq, Outcome::Ok, seq));
        }
        // lost records have no latency and never rank
        n.record(Instant::now(), &finished(99, Outcome::Lost, 10_000));
        tokio::time::advance(Duration::from_secs(5)).await;
        // a later slot: 25.5 ms equivalents, interleaving with slot 0's top
        for seq in 100..105 {
            n.record(Instant::now(), &finished(seq, Outcome::Ok, seq - 75));
        }
        let slow = n.slowest(Instant::now());
        let lat: Vec<u64> = slow
            .iter()
            .map(|r| r.latency.unwrap().as_millis() as u64)
            .collect();
        assert_eq!(lat, vec![30, 29, 29, 28, 28, 27, 27, 26, 26, 25]);
        assert_eq!(slow[0].seq, 30);
        assert_eq!(slow[0].trace_id, TraceId::from_bytes([31; 16]));
        assert!(slow.iter().all(|r| r.outcome == Outcome::Ok));
        // slot 0 leaves the window: only the later slot's records remain
        tokio::time::advance(Duration::from_secs(6)).await;
        let lat: Vec<u64> = n
            .slowest(Instant::now())
            .iter()
            .map(|r| r.latency.unwrap().as_millis() as u64)
            .collect();
        assert_eq!(lat, vec![29, 28, 27, 26, 25]);
        // and later nothing
        tokio::time::advance(window).await;
        assert!(n.slowest(Instant::now()).is_empty());
    }
}
