//! Why a probe failed, as a verdict and `/status` say it: its failed records grouped by outcome
//! and reason ([`FailureReport`], each with its sentence, counts, first records and what the
//! job was doing), the job's own state ([`JobReport`]), and where a downstream topic stands
//! ([`OutputReport`]).

use std::time::Duration;

use serde::Serialize;

use crate::outcome::{JobState, Outcome};
use crate::probe::{Example, Group, JobNow, Probe, Snapshot};

/// What a verdict and `/status` say of a probe beyond its counts: why its records failed, the
/// job they go through, where a downstream topic stands.
#[derive(Debug, Clone, Serialize)]
pub struct Why {
    /// Its records that are not `ok`, by outcome and reason, most first: why, how many, the
    /// first of them, and what the job was doing.
    pub failed_records: Vec<FailureReport>,
    /// The job its records go through (`job`), as its newest poll found it.
    pub job: Option<JobReport>,
    /// For a probe verifying on a downstream topic: where that topic stands.
    pub output: Option<OutputReport>,
}

impl Why {
    pub fn of(probe: &Probe, s: &Snapshot) -> Self {
        let output = probe
            .config
            .verifies_downstream()
            .then(|| OutputReport::new(&probe.verify_topic, s.output_read_ms));
        Why {
            failed_records: s
                .failures
                .iter()
                .map(|g| FailureReport::of(g, &probe.verify_topic, output.as_ref()))
                .collect(),
            job: s.job.as_ref().map(|(name, now)| JobReport::new(name, now)),
            output,
        }
    }
}

/// RFC 3339 (UTC, milliseconds) of ms since the Unix epoch.
fn at_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One failed record of a group.
#[derive(Debug, Clone, Serialize)]
pub struct FailedRecord {
    pub record_id: String,
    pub trace_id: String,
    /// Where it was sent.
    pub partition: i32,
    pub offset: Option<i64>,
    /// Where it was read back, when it was (a downstream topic).
    pub read_topic: Option<String>,
    pub read_partition: Option<i32>,
    pub read_offset: Option<i64>,
    /// RFC 3339, UTC.
    pub scheduled_at: String,
    pub detail: String,
    /// What the job it went through was doing while it was in flight.
    pub job: Option<String>,
}

impl FailedRecord {
    fn of(e: &Example, verify_topic: &str) -> Self {
        FailedRecord {
            record_id: e.id.hyphenated().to_string(),
            trace_id: e.trace_id.to_string(),
            partition: e.partition,
            offset: e.offset,
            read_topic: e.read.map(|_| verify_topic.to_string()),
            read_partition: e.read.map(|r| r.partition),
            read_offset: e.read.map(|r| r.offset),
            scheduled_at: at_ms(e.scheduled_at_ns / 1_000_000),
            detail: e.detail.clone(),
            job: e.job.as_ref().map(|j| j.to_string()),
        }
    }

    /// `0190... (partition 1, offset 34; read from orders-enriched partition 2, offset 17)`.
    fn brief(&self) -> String {
        let mut at = format!("partition {}", self.partition);
        if let Some(o) = self.offset {
            at.push_str(&format!(", offset {o}"));
        }
        if let (Some(t), Some(p), Some(o)) =
            (&self.read_topic, self.read_partition, self.read_offset)
        {
            at.push_str(&format!("; read from {t} partition {p}, offset {o}"));
        }
        format!("{} ({at})", self.record_id)
    }
}

/// The failed records of one outcome and reason.
#[derive(Debug, Clone, Serialize)]
pub struct FailureReport {
    pub outcome: &'static str,
    /// The reason's kind: `timeout`, `assertion`, `field`, `producer`, ...
    pub reason: &'static str,
    pub records: u64,
    /// Each sentence the records gave, with how many gave it.
    pub details: Vec<DetailCount>,
    /// Records whose sentence is not among `details` (beyond the bound).
    pub other_details: u64,
    /// RFC 3339, UTC: the scheduled sends of the first and the last.
    pub first_sent_at: String,
    pub last_sent_at: String,
    /// The first few, where they were sent and read.
    pub examples: Vec<FailedRecord>,
    /// What the job was doing while the last of them was in flight.
    pub job: Option<String>,
    /// For lost records read on a downstream topic: where that topic stood.
    pub output: Option<String>,
    /// All of the above in one sentence: the line of the verdict.
    pub summary: String,
}

/// A sentence and how many records gave it.
#[derive(Debug, Clone, Serialize)]
pub struct DetailCount {
    pub detail: String,
    pub records: u64,
}

impl FailureReport {
    /// `verify_topic`: where records are read back; `output`: where a downstream topic stands
    /// (said of lost records).
    pub fn of(g: &Group, verify_topic: &str, output: Option<&OutputReport>) -> Self {
        let examples: Vec<FailedRecord> = g
            .examples
            .iter()
            .map(|e| FailedRecord::of(e, verify_topic))
            .collect();
        let job = g.last_job.as_ref().map(|j| j.to_string());
        let output = match g.outcome {
            Outcome::Lost => output.map(|o| o.lost_sentence(g.first_ns / 1_000_000)),
            _ => None,
        };
        let verb = match g.outcome {
            Outcome::Corrupt => "arrived corrupt",
            Outcome::Lost => "lost",
            Outcome::SendFailed => "could not be sent",
            Outcome::Ok => "ok",
        };
        let mut summary = format!(
            "{} record{} {verb} ({})",
            g.count,
            if g.count == 1 { "" } else { "s" },
            g.kind
        );
        let said: Vec<String> = g
            .details
            .iter()
            .map(|(d, n)| format!("{d} — {n} of {} records", g.count))
            .collect();
        if !said.is_empty() {
            summary.push_str(": ");
            summary.push_str(&said.join("; "));
        }
        if g.other_details > 0 {
            summary.push_str(&format!("; {} with other reasons", g.other_details));
        }
        if let Some(j) = &job {
            summary.push_str(&format!("; while {j}"));
        }
        if let Some(o) = &output {
            summary.push_str(&format!("; {o}"));
        }
        if !examples.is_empty() {
            let e: Vec<String> = examples.iter().map(FailedRecord::brief).collect();
            summary.push_str(&format!("; e.g. {}", e.join(", ")));
        }
        FailureReport {
            outcome: g.outcome.as_str(),
            reason: g.kind,
            records: g.count,
            details: g
                .details
                .iter()
                .map(|(d, n)| DetailCount {
                    detail: d.clone(),
                    records: *n,
                })
                .collect(),
            other_details: g.other_details,
            first_sent_at: at_ms(g.first_ns / 1_000_000),
            last_sent_at: at_ms(g.last_ns / 1_000_000),
            examples,
            job,
            output,
            summary,
        }
    }
}

/// Where a downstream topic a probe verifies on stands: when a record (any record) was last
/// read from it.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub topic: String,
    /// RFC 3339, UTC; `None`: nothing was read from it yet.
    pub last_read_at: Option<String>,
    #[serde(skip)]
    last_read_ms: Option<u64>,
}

impl OutputReport {
    pub fn new(topic: &str, last_read_ms: Option<u64>) -> Self {
        OutputReport {
            topic: topic.to_string(),
            last_read_at: last_read_ms.map(at_ms),
            last_read_ms,
        }
    }

    /// Said of records lost from `first_lost_ms` on (their first scheduled send): whether the
    /// job wrote anything since.
    fn lost_sentence(&self, first_lost_ms: u64) -> String {
        match self.last_read_ms {
            None => format!("nothing was written to {} while the probe ran", self.topic),
            Some(at) if at < first_lost_ms => format!(
                "nothing was written to {} since {} (before the first of them was sent)",
                self.topic,
                crate::outcome::clock(at)
            ),
            Some(at) => format!(
                "{} was written to until {} (after the first of them was sent): the job wrote, but not these",
                self.topic,
                crate::outcome::clock(at)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_records_say_whether_the_output_moved_since_they_were_sent() {
        let at = 1_796_000_000_000;
        let never = OutputReport::new("orders-enriched", None);
        assert_eq!(
            never.lost_sentence(at),
            "nothing was written to orders-enriched while the probe ran"
        );
        let before = OutputReport::new("orders-enriched", Some(at - 5_000));
        assert_eq!(
            before.lost_sentence(at),
            format!(
                "nothing was written to orders-enriched since {} (before the first of them was sent)",
                crate::outcome::clock(at - 5_000)
            )
        );
        let after = OutputReport::new("orders-enriched", Some(at + 5_000));
        assert!(
            after
                .lost_sentence(at)
                .ends_with("the job wrote, but not these")
        );
        assert_eq!(
            after.last_read_at.as_deref(),
            Some("2026-11-30T00:53:25.000Z")
        );
    }
}

/// The job a probe's records go through, as its newest poll found it.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Its name in the probe file (the `flink_job` label).
    pub name: String,
    /// `RUNNING`, `RESTARTING`, ...; `None` while its REST API does not answer.
    pub state: Option<&'static str>,
    pub running: bool,
    /// Flink's job id.
    pub id: Option<String>,
    /// RFC 3339, UTC.
    pub state_since: Option<String>,
    pub restarts: Option<u64>,
    /// Its subtasks running (or finished), of all of them.
    pub tasks_running: Option<u32>,
    pub tasks_total: Option<u32>,
    pub last_exception: Option<String>,
    pub last_exception_at: Option<String>,
    pub checkpoints_completed: Option<u64>,
    pub checkpoints_failed: Option<u64>,
    /// Age of the newest completed checkpoint when polled, and how long it took.
    pub last_checkpoint_age_seconds: Option<f64>,
    pub last_checkpoint_duration_ms: Option<f64>,
    pub polls: u64,
    pub poll_errors: u64,
    /// Why the newest poll failed, and since when polls fail (RFC 3339).
    pub poll_error: Option<String>,
    pub failing_since: Option<String>,
    /// RFC 3339: the newest poll that answered.
    pub answered_at: Option<String>,
    /// All of it in one sentence.
    pub summary: String,
}

impl JobReport {
    pub fn new(name: &str, now: &JobNow) -> Self {
        let s = now.status.as_ref();
        let state: Option<JobState> = now.state();
        JobReport {
            name: name.to_string(),
            state: state.map(JobState::as_str),
            running: now.running(),
            id: s.map(|s| s.id.clone()),
            state_since: s.and_then(|s| s.since_ms).map(at_ms),
            restarts: s.map(|s| s.restarts),
            tasks_running: s.and_then(|s| s.tasks).map(|t| t.0),
            tasks_total: s.and_then(|s| s.tasks).map(|t| t.1),
            last_exception: s.and_then(|s| s.exception.as_ref()).map(|e| e.text.clone()),
            last_exception_at: s.and_then(|s| s.exception.as_ref()).map(|e| at_ms(e.at_ms)),
            checkpoints_completed: s.map(|s| s.checkpoints.completed),
            checkpoints_failed: s.map(|s| s.checkpoints.failed),
            last_checkpoint_age_seconds: s
                .and_then(|s| s.checkpoints.last_completed_at_ms)
                .zip(now.answered_at_ms)
                .map(|(c, at)| at.saturating_sub(c) as f64 / 1e3),
            last_checkpoint_duration_ms: s
                .and_then(|s| s.checkpoints.last_duration)
                .map(|d| d.as_secs_f64() * 1e3),
            polls: now.polls,
            poll_errors: now.errors,
            poll_error: now.error.as_ref().map(|e| e.to_string()),
            failing_since: now.failing_since_ms.map(at_ms),
            answered_at: now.answered_at_ms.map(at_ms),
            summary: format!("job {name}: {}", now.describe()),
        }
    }
}
