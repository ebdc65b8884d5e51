//! Why a probe's records failed, in a few lines: its records that are not `ok`, grouped by
//! outcome and reason, each group with its count, the sentences its records gave (with how
//! many gave each), its first records (where they were sent and read), and what the job they
//! went through was doing ([`crate::outcome::JobContext`]). A verdict and `/status` say it, so
//! nobody has to dig the reason out of the log lines.
//!
//! Bounded whatever happens: the groups are at most every (outcome, reason kind) pair, a
//! small fixed set; each keeps [`DETAILS`] sentences and [`EXAMPLES`] records.

use std::sync::Arc;

use opentelemetry::trace::TraceId;
use uuid::Uuid;

use crate::outcome::{Finished, JobContext, Outcome, ReadAt};

/// Distinct sentences kept per group (the rest are counted).
pub const DETAILS: usize = 4;
/// Records kept per group: the first ones.
pub const EXAMPLES: usize = 3;
/// Groups kept: more than every (outcome, reason) pair there is.
const GROUPS: usize = 32;

/// One record of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: Uuid,
    pub trace_id: TraceId,
    /// Where it was sent: the probe topic's partition, and the offset the broker gave.
    pub partition: i32,
    pub offset: Option<i64>,
    /// Where it was read back (a downstream topic), when it was.
    pub read: Option<ReadAt>,
    /// Scheduled send, ns since the Unix epoch.
    pub scheduled_at_ns: u64,
    pub detail: String,
    /// What the job was doing while it was in flight.
    pub job: Option<Arc<JobContext>>,
}

/// The records of one outcome and reason kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub outcome: Outcome,
    /// The reason's kind (`timeout`, `assertion`, ...).
    pub kind: &'static str,
    pub count: u64,
    /// Each sentence, and how many records gave it, in the order first seen.
    pub details: Vec<(String, u64)>,
    /// Records whose sentence was not among `details`.
    pub other_details: u64,
    /// Scheduled sends of the first and the last record, ns since the Unix epoch.
    pub first_ns: u64,
    pub last_ns: u64,
    pub examples: Vec<Example>,
    /// What the job was doing while the group's last record was in flight.
    pub last_job: Option<Arc<JobContext>>,
}

/// Every failed record of a probe, grouped.
#[derive(Debug, Default, Clone)]
pub struct Digest {
    groups: Vec<Group>,
}

impl Digest {
    pub fn record(&mut self, f: &Finished) {
        if f.outcome == Outcome::Ok {
            return;
        }
        let kind = f.reason.as_ref().map_or("unknown", |r| r.kind);
        let detail = f.reason.as_ref().map_or("", |r| r.detail.as_str());
        let at = self
            .groups
            .iter()
            .position(|g| g.outcome == f.outcome && g.kind == kind);
        let g = match at {
            Some(i) => &mut self.groups[i],
            None if self.groups.len() < GROUPS => {
                self.groups.push(Group {
                    outcome: f.outcome,
                    kind,
                    count: 0,
                    details: Vec::new(),
                    other_details: 0,
                    first_ns: f.scheduled_at_ns,
                    last_ns: f.scheduled_at_ns,
                    examples: Vec::new(),
                    last_job: None,
                });
                self.groups.last_mut().expect("just pushed")
            }
            None => return,
        };
        g.count += 1;
        g.first_ns = g.first_ns.min(f.scheduled_at_ns);
        g.last_ns = g.last_ns.max(f.scheduled_at_ns);
        match g.details.iter().position(|(d, _)| d == detail) {
            Some(i) => g.details[i].1 += 1,
            None if g.details.len() < DETAILS => g.details.push((detail.to_string(), 1)),
            None => g.other_details += 1,
        }
        if g.examples.len() < EXAMPLES {
            g.examples.push(Example {
                id: f.id,
                trace_id: f.trace_id,
                partition: f.partition,
                offset: f.offset,
                read: f.read,
                scheduled_at_ns: f.scheduled_at_ns,
                detail: detail.to_string(),
                job: f.job.clone(),
            });
        }
        if f.job.is_some() {
            g.last_job = f.job.clone();
        }
    }

    /// The groups, most records first.
    pub fn groups(&self) -> Vec<Group> {
        let mut g = self.groups.clone();
        g.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_ns.cmp(&b.first_ns)));
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Reason;
    use crate::testing::finished;

    #[test]
    fn failures_group_by_outcome_and_reason_with_their_first_records() {
        let mut d = Digest::default();
        for seq in 0..12 {
            let mut f = finished(seq, Outcome::Corrupt, 0);
            f.reason = Some(Reason::new(
                "assertion",
                "assertion /amount: expected 42.5, got 43.5",
            ));
            d.record(&f);
        }
        for seq in 12..15 {
            d.record(&finished(seq, Outcome::Lost, 1));
        }
        d.record(&finished(15, Outcome::Ok, 0));
        let g = d.groups();
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].outcome, g[0].kind, g[0].count),
            (Outcome::Corrupt, "assertion", 12)
        );
        assert_eq!(
            g[0].details,
            [("assertion /amount: expected 42.5, got 43.5".to_string(), 12)]
        );
        assert_eq!(g[0].examples.len(), EXAMPLES);
        assert_eq!(g[0].examples[0].partition, 0);
        assert_eq!((g[1].outcome, g[1].count), (Outcome::Lost, 3));
    }

    #[test]
    fn sentences_beyond_the_bound_are_counted_not_kept() {
        let mut d = Digest::default();
        for seq in 0..10 {
            let mut f = finished(seq, Outcome::Corrupt, 0);
            f.reason = Some(Reason::new("field", format!("field `seq`: {seq}")));
            d.record(&f);
        }
        let g = &d.groups()[0];
        assert_eq!(g.details.len(), DETAILS);
        assert_eq!(g.other_details, 10 - DETAILS as u64);
    }
}
