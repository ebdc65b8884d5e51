//! The job a probe's records go through (a Flink job), as its REST API describes it: its
//! [`JobState`], what one poll of it found ([`JobStatus`], or why it failed:
//! [`JobPollError`]), and what the job was doing while a
//! record was in flight ([`JobContext`]), which a record that is not `ok` carries into its log
//! line, span and verdict. [`JobObserver`] is where the poller reports each poll.

use std::fmt;
use std::time::Duration;

/// A Flink job's status (`JobStatus` in Flink's REST API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Initializing,
    Created,
    Running,
    Failing,
    Failed,
    Cancelling,
    Canceled,
    Finished,
    Restarting,
    Suspended,
    Reconciling,
}

impl JobState {
    /// Every state, in the order of the `state` label values.
    pub const ALL: [JobState; 11] = [
        JobState::Initializing,
        JobState::Created,
        JobState::Running,
        JobState::Failing,
        JobState::Failed,
        JobState::Cancelling,
        JobState::Canceled,
        JobState::Finished,
        JobState::Restarting,
        JobState::Suspended,
        JobState::Reconciling,
    ];

    /// As Flink writes it (and the `state` label).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Initializing => "INITIALIZING",
            JobState::Created => "CREATED",
            JobState::Running => "RUNNING",
            JobState::Failing => "FAILING",
            JobState::Failed => "FAILED",
            JobState::Cancelling => "CANCELLING",
            JobState::Canceled => "CANCELED",
            JobState::Finished => "FINISHED",
            JobState::Restarting => "RESTARTING",
            JobState::Suspended => "SUSPENDED",
            JobState::Reconciling => "RECONCILING",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The job ended: it will not process another record without being started again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Failed | JobState::Canceled | JobState::Finished | JobState::Suspended
        )
    }

    /// How far from processing records: which state a record in flight across several is said
    /// to have met.
    pub fn severity(self) -> u8 {
        match self {
            JobState::Running => 0,
            JobState::Created | JobState::Initializing | JobState::Reconciling => 1,
            JobState::Restarting | JobState::Failing => 2,
            JobState::Cancelling => 3,
            JobState::Failed | JobState::Canceled | JobState::Finished | JobState::Suspended => 4,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The job's newest failure, from its exception history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobException {
    /// When it happened, ms since the Unix epoch.
    pub at_ms: u64,
    /// The deepest cause: `SimpleName: message`, printable and cut.
    pub text: String,
}

/// The job's checkpoints, as of one poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoints {
    /// Completed since the job (this attempt of it) started.
    pub completed: u64,
    pub failed: u64,
    /// The newest completed checkpoint: when it was acknowledged (ms since the Unix epoch)
    /// and how long it took.
    pub last_completed_at_ms: Option<u64>,
    pub last_duration: Option<Duration>,
}

/// What one poll of a job's REST API found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    /// Flink's job id (the job named is looked up by name each poll: a job started again has
    /// a new id).
    pub id: String,
    pub state: JobState,
    /// When it entered `state`, ms since the Unix epoch.
    pub since_ms: Option<u64>,
    /// Restarts of the job (Flink's `numRestarts`: full restarts; a region failover restarts
    /// some tasks and leaves the job `RUNNING`).
    pub restarts: u64,
    /// The newest failure, and when each of the newest few happened (ms since the Unix
    /// epoch, newest first): every failure, full restart or region failover, is one.
    pub exception: Option<JobException>,
    pub failures_at_ms: Vec<u64>,
    /// Its tasks: how many run, of how many (a `RUNNING` job whose tasks are deploying, or
    /// failed and restarting in a region failover, processes nothing).
    pub tasks: Option<(u32, u32)>,
    pub checkpoints: Checkpoints,
}

impl JobStatus {
    /// Every task of a `RUNNING` job runs (or the job is in another state).
    pub fn tasks_down(&self) -> bool {
        self.state == JobState::Running && self.tasks.is_some_and(|(running, all)| running < all)
    }
}

/// Why a poll of a job's REST API failed: the `reason` label of
/// `slo_probe_flink_poll_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobPollErrorKind {
    /// No connection: refused, reset, DNS, TLS.
    Unreachable,
    /// No answer within the timeout.
    Timeout,
    /// Credentials refused (401, 403).
    Auth,
    /// Another non-2xx status.
    HttpStatus,
    /// An answer that is not the JSON Flink's REST API gives.
    InvalidJson,
    /// No job of the name (or id) the probe file gives.
    NotFound,
}

impl JobPollErrorKind {
    pub const ALL: [JobPollErrorKind; 6] = [
        JobPollErrorKind::Unreachable,
        JobPollErrorKind::Timeout,
        JobPollErrorKind::Auth,
        JobPollErrorKind::HttpStatus,
        JobPollErrorKind::InvalidJson,
        JobPollErrorKind::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobPollErrorKind::Unreachable => "unreachable",
            JobPollErrorKind::Timeout => "timeout",
            JobPollErrorKind::Auth => "auth",
            JobPollErrorKind::HttpStatus => "http_status",
            JobPollErrorKind::InvalidJson => "invalid_json",
            JobPollErrorKind::NotFound => "not_found",
        }
    }
}

/// A failed poll: its kind and what happened (never a credential; printable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPollError {
    pub kind: JobPollErrorKind,
    pub message: String,
}

impl JobPollError {
    pub fn new(kind: JobPollErrorKind, message: impl Into<String>) -> Self {
        JobPollError {
            kind,
            message: crate::util::text::printable(
                &message.into(),
                crate::util::text::MAX_OUTSIDE_TEXT,
            ),
        }
    }
}

impl fmt::Display for JobPollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

/// What the job was doing while a record was in flight (from its scheduled send to its
/// outcome), as the polls of its REST API saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContext {
    /// The job's name in the probe file (the `flink_job` label).
    pub job: String,
    /// The state furthest from processing records that the polls saw (`None`: every poll of
    /// the time failed).
    pub state: Option<JobState>,
    /// While it was not `RUNNING`, or `RUNNING` with tasks not running: from the first to the
    /// last poll that saw it so (ms since the Unix epoch).
    pub not_running: Option<(u64, u64)>,
    /// A poll saw it `RUNNING` with tasks not running.
    pub tasks_down: bool,
    /// Restarts (Flink's `numRestarts`) while the record was in flight, and failures (full
    /// restarts and region failovers alike).
    pub restarts: u64,
    pub failures: u64,
    /// The job's newest failure while the record was in flight.
    pub exception: Option<String>,
    /// Checkpoints completed while the record was in flight, and failed ones.
    pub checkpoints: u64,
    pub failed_checkpoints: u64,
    /// Polls that failed while it was in flight, and the last one's error: what the job did
    /// then is not known.
    pub unknown: Option<String>,
}

impl JobContext {
    /// The job did nothing out of the ordinary: running throughout, no restart, no failure,
    /// every poll answered. Not said of an `ok` record.
    pub fn is_quiet(&self) -> bool {
        self.state == Some(JobState::Running)
            && !self.tasks_down
            && self.restarts == 0
            && self.failures == 0
            && self.exception.is_none()
            && self.unknown.is_none()
            && self.failed_checkpoints == 0
    }
}

/// `orders-enrich was RESTARTING (12:00:01-12:00:15, 4 restarts, JsonParseException: ...)`, or
/// `orders-enrich was RUNNING and checkpointing (3 checkpoints completed)`: follows "lost
/// while".
impl fmt::Display for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some((from, to)) = self.not_running {
            parts.push(format!("{}-{}", clock(from), clock(to)));
        }
        match self.restarts {
            0 => {}
            1 => parts.push("1 restart".into()),
            n => parts.push(format!("{n} restarts")),
        }
        match self.failures {
            n if n <= self.restarts => {}
            1 => parts.push("1 failure".into()),
            n => parts.push(format!("{n} failures")),
        }
        if self.failed_checkpoints > 0 {
            parts.push(format!("{} failed checkpoints", self.failed_checkpoints));
        }
        if let Some(e) = &self.exception {
            parts.push(e.clone());
        }
        if let Some(u) = &self.unknown {
            parts.push(format!("its REST API did not answer: {u}"));
        }
        match self.state {
            Some(state) => write!(f, "{} was {state}", self.job)?,
            None => write!(f, "the state of {} was not known", self.job)?,
        }
        if self.tasks_down && self.state == Some(JobState::Running) {
            f.write_str(" with tasks not running")?;
        } else if self.state == Some(JobState::Running)
            && self.restarts == 0
            && self.failures == 0
            && self.unknown.is_none()
        {
            match self.checkpoints {
                0 => f.write_str(" and completed no checkpoint")?,
                1 => f.write_str(" and checkpointing (1 checkpoint completed)")?,
                n => write!(f, " and checkpointing ({n} checkpoints completed)")?,
            }
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        Ok(())
    }
}

/// `12:00:01` (UTC) of ms since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-08T12:00:01Z
    s.get(11..19).map_or(s.clone(), str::to_string)
}

/// Something the poller of a job found, as it reports it to its [`JobObserver`].
#[derive(Debug)]
pub enum JobEvent<'a> {
    /// A poll ended, answered or not.
    Polled {
        poll: &'a Result<JobStatus, JobPollError>,
    },
    /// The job's state changed between two polls (`from`: `None` on the first poll, or after
    /// polls that failed); `exception`: its newest failure.
    Changed {
        job: &'a str,
        from: Option<JobState>,
        to: JobState,
        exception: Option<&'a str>,
    },
    /// The job's REST API stopped answering after it had (or never answered): `error`.
    Unreachable {
        job: &'a str,
        error: &'a JobPollError,
    },
}

/// Where a job's poller reports: the export layer (its series and log lines), or a recording
/// in tests.
pub trait JobObserver: Send + Sync {
    fn job(&self, event: &JobEvent<'_>);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> JobContext {
        JobContext {
            job: "payments-clearing".into(),
            state: Some(JobState::Running),
            not_running: None,
            tasks_down: false,
            restarts: 0,
            failures: 0,
            exception: None,
            checkpoints: 2,
            failed_checkpoints: 0,
            unknown: None,
        }
    }

    #[test]
    fn a_running_job_says_whether_it_checkpointed() {
        let c = context();
        assert!(c.is_quiet());
        assert_eq!(
            c.to_string(),
            "payments-clearing was RUNNING and checkpointing (2 checkpoints completed)"
        );
        let idle = JobContext {
            checkpoints: 0,
            ..context()
        };
        assert_eq!(
            idle.to_string(),
            "payments-clearing was RUNNING and completed no checkpoint"
        );
    }

    #[test]
    fn a_restarting_job_says_when_how_often_and_why() {
        let at = 1_796_000_401_000; // 2026-11-30T...
        let c = JobContext {
            state: Some(JobState::Restarting),
            not_running: Some((at, at + 14_000)),
            restarts: 4,
            failures: 4,
            exception: Some("JsonParseException: Unexpected character".into()),
            ..context()
        };
        assert!(!c.is_quiet());
        let s = c.to_string();
        let (from, to) = (clock(at), clock(at + 14_000));
        assert_eq!(
            s,
            format!(
                "payments-clearing was RESTARTING ({from}-{to}, 4 restarts, JsonParseException: Unexpected character)"
            )
        );
        assert_eq!(from.len(), 8, "{from}");
        // a region failover: the job RUNNING, its tasks failing and deploying again
        let region = JobContext {
            tasks_down: true,
            not_running: Some((at, at + 2_000)),
            failures: 3,
            exception: Some("JsonParseException: Unexpected character".into()),
            ..context()
        };
        assert!(!region.is_quiet());
        assert_eq!(
            region.to_string(),
            format!(
                "payments-clearing was RUNNING with tasks not running ({from}-{}, 3 failures, JsonParseException: Unexpected character)",
                clock(at + 2_000)
            )
        );
    }

    #[test]
    fn states_parse_as_flink_writes_them_and_rank_by_how_far_from_running() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("running"), None);
        assert!(JobState::Restarting.severity() > JobState::Running.severity());
        assert!(JobState::Failed.severity() > JobState::Restarting.severity());
        assert!(JobState::Canceled.is_terminal() && !JobState::Restarting.is_terminal());
    }
}
