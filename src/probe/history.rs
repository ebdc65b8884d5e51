//! Every record of a run, compactly, for the pictures of a report: a finite run (`smoke`) keeps
//! each record's point for its timeline (up to [`RUN_POINTS`]), its failed records and its
//! slowest ones; a running agent keeps the last [`RECENT_POINTS`] points and failed records for
//! its live page.

use std::collections::VecDeque;
use std::time::Duration;

use crate::outcome::{Finished, Outcome};

use super::notable::{Noted, SLOWEST};

/// Points a finite run keeps (24 bytes each: 12 MiB at most); past it the newest are dropped
/// and counted.
pub const RUN_POINTS: usize = 500_000;
/// Points a running agent keeps per probe (the newest).
pub const RECENT_POINTS: usize = 2_000;
/// Failed records kept (the newest), with everything `/status` shows of a record.
pub const FAILED: usize = 100;

/// One record on a timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Scheduled send, ns since the Unix epoch.
    pub scheduled_at_ns: u64,
    /// Verified after this long (`None` unless `ok`).
    pub latency: Option<Duration>,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub struct History {
    /// A finite run keeps the first [`RUN_POINTS`] points; a running agent the newest
    /// [`RECENT_POINTS`].
    whole_run: bool,
    points: VecDeque<Point>,
    /// Points not kept (past the bound).
    dropped: u64,
    failed: VecDeque<Noted>,
    failed_total: u64,
    /// The slowest verified records of the run, slowest first (a finite run only).
    slowest: Vec<Noted>,
}

/// What a report draws from a history.
#[derive(Debug, Clone, Default)]
pub struct HistoryView {
    pub points: Vec<Point>,
    pub dropped: u64,
    /// Newest first.
    pub failed: Vec<Noted>,
    /// Failed records in all, kept or not.
    pub failed_total: u64,
    /// Slowest first; empty for a running agent (its window's slowest are in the snapshot).
    pub slowest: Vec<Noted>,
}

impl History {
    pub fn new(whole_run: bool) -> Self {
        History {
            whole_run,
            points: VecDeque::new(),
            dropped: 0,
            failed: VecDeque::new(),
            failed_total: 0,
            slowest: Vec::new(),
        }
    }

    pub fn record(&mut self, f: &Finished) {
        let point = Point {
            scheduled_at_ns: f.scheduled_at_ns,
            latency: f.latency,
            outcome: f.outcome,
        };
        match (self.whole_run, self.points.len()) {
            (true, n) if n >= RUN_POINTS => self.dropped += 1,
            (false, n) if n >= RECENT_POINTS => {
                self.points.pop_front();
                self.points.push_back(point);
                self.dropped += 1;
            }
            _ => self.points.push_back(point),
        }
        if f.outcome != Outcome::Ok {
            self.failed_total += 1;
            if self.failed.len() == FAILED {
                self.failed.pop_front();
            }
            self.failed.push_back(Noted::of(f));
        }
        if let (true, Outcome::Ok, Some(latency)) = (self.whole_run, f.outcome, f.latency) {
            let slower = |n: &Noted| n.latency.is_some_and(|l| l >= latency);
            if self.slowest.len() < SLOWEST || !self.slowest.last().is_some_and(slower) {
                let at = self.slowest.partition_point(slower);
                self.slowest.insert(at, Noted::of(f));
                self.slowest.truncate(SLOWEST);
            }
        }
    }

    pub fn view(&self) -> HistoryView {
        HistoryView {
            points: self.points.iter().copied().collect(),
            dropped: self.dropped,
            failed: self.failed.iter().rev().cloned().collect(),
            failed_total: self.failed_total,
            slowest: self.slowest.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::finished;

    #[test]
    fn a_finite_run_keeps_every_point_its_failures_and_its_slowest() {
        let mut h = History::new(true);
        for seq in 0..200u64 {
            let outcome = if seq % 50 == 7 {
                Outcome::Lost
            } else {
                Outcome::Ok
            };
            h.record(&finished(seq, outcome, seq % 97));
        }
        let v = h.view();
        assert_eq!(v.points.len(), 200);
        assert_eq!(v.dropped, 0);
        assert_eq!(v.failed_total, 4);
        let failed: Vec<u64> = v.failed.iter().map(|n| n.seq).collect();
        assert_eq!(failed, [157, 107, 57, 7], "newest first");
        let slow: Vec<u64> = v
            .slowest
            .iter()
            .map(|n| n.latency.unwrap().as_millis() as u64)
            .collect();
        assert_eq!(slow, [96, 96, 95, 95, 94, 94, 93, 93, 92, 92]);
        assert!(
            v.points
                .iter()
                .filter(|p| p.outcome == Outcome::Lost)
                .all(|p| p.latency.is_none())
        );
    }

    #[test]
    fn a_running_agent_keeps_the_newest_points_and_failures() {
        let mut h = History::new(false);
        let n = RECENT_POINTS as u64 + 10 + FAILED as u64;
        for seq in 0..n {
            let outcome = if seq % 2 == 0 {
                Outcome::Corrupt
            } else {
                Outcome::Ok
            };
            h.record(&finished(seq, outcome, 3));
        }
        let v = h.view();
        assert_eq!(v.points.len(), RECENT_POINTS);
        assert_eq!(v.dropped, n - RECENT_POINTS as u64);
        assert_eq!(
            v.points[0].scheduled_at_ns,
            1_700_000_000_000_000_000 + (n - RECENT_POINTS as u64) * 1_000_000
        );
        assert_eq!(v.failed.len(), FAILED);
        assert_eq!(v.failed_total, n.div_ceil(2));
        assert!(v.slowest.is_empty());
    }
}
