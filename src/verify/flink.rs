//! The poller of a Flink job a probe names (`job`): its state, restarts, newest failure and
//! checkpoints, from Flink's REST API, at the job's `poll` rate, into its [`JobWatch`] (which
//! the probes read) and reported to its [`JobObserver`] (which exports it). One per job, however
//! many probes name it; a sibling of the verifiers, supervised like them.
//!
//! Each poll asks for the job (by name: the newest of that name in `/jobs/overview`, so that a
//! job submitted again is followed; or by id), then, at once, `/jobs/<id>`,
//! `/jobs/<id>/exceptions`, `/jobs/<id>/checkpoints` and the job's `numRestarts` metric. The job
//! answered is the poll's result; the others, when they fail, leave their part unknown (a
//! job without checkpointing has no checkpoint statistics). A poll that cannot get the job is
//! a counted error with its reason, never a healthy job.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{JobConfig, JobRef};
use crate::outcome::{
    Checkpoints, JobEvent, JobException, JobObserver, JobPollError, JobPollErrorKind, JobState,
    JobStatus,
};
use crate::probe::JobWatch;
use crate::probe::job::Change;

/// Largest answer read (an exception history can be long).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Longest exception text kept.
const MAX_EXCEPTION: usize = 300;
/// Failures asked for per poll: more in one poll interval are counted as this many.
const FAILURES: usize = 10;

/// Polls one job.
pub struct JobPoller {
    cfg: JobConfig,
    http: reqwest::Client,
    watch: Arc<JobWatch>,
    observer: Arc<dyn JobObserver>,
}

#[derive(Deserialize)]
struct Overview {
    jobs: Vec<OverviewJob>,
}

#[derive(Deserialize)]
struct OverviewJob {
    jid: String,
    name: String,
    state: String,
    #[serde(rename = "start-time", default)]
    start_time: i64,
}

#[derive(Deserialize)]
struct Details {
    jid: String,
    state: String,
    #[serde(default)]
    timestamps: std::collections::BTreeMap<String, i64>,
    #[serde(default)]
    vertices: Vec<Vertex>,
}

#[derive(Deserialize)]
struct Vertex {
    /// Subtasks by state.
    #[serde(default)]
    tasks: std::collections::BTreeMap<String, u32>,
}

#[derive(Deserialize)]
struct Exceptions {
    #[serde(rename = "exceptionHistory")]
    history: Option<History>,
}

#[derive(Deserialize)]
struct History {
    #[serde(default)]
    entries: Vec<ExceptionEntry>,
}

#[derive(Deserialize)]
struct ExceptionEntry {
    #[serde(rename = "exceptionName", default)]
    name: String,
    #[serde(default)]
    stacktrace: String,
    #[serde(default)]
    timestamp: u64,
}

#[derive(Deserialize)]
struct CheckpointStats {
    counts: CheckpointCounts,
    latest: Option<Latest>,
}

#[derive(Deserialize)]
struct CheckpointCounts {
    completed: u64,
    failed: u64,
}

#[derive(Deserialize)]
struct Latest {
    completed: Option<LatestCompleted>,
}

#[derive(Deserialize)]
struct LatestCompleted {
    latest_ack_timestamp: u64,
    end_to_end_duration: u64,
}

#[derive(Deserialize)]
struct Metric {
    id: String,
    value: String,
}

impl JobPoller {
    pub fn new(
        cfg: JobConfig,
        watch: Arc<JobWatch>,
        observer: Arc<dyn JobObserver>,
    ) -> Result<Self, String> {
        let http = crate::util::tls::http_client(cfg.timeout, cfg.ca_file.as_deref())?
            .build()
            .map_err(|e| format!("cannot build the HTTP client of job {}: {e}", cfg.name))?;
        Ok(JobPoller {
            cfg,
            http,
            watch,
            observer,
        })
    }

    /// Polls until `stop`, one poll every `poll`, the first one `poll` from now (the agent
    /// polled once at start).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut next = Instant::now() + self.cfg.poll;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            self.poll_once().await;
            next += self.cfg.poll;
            let now = Instant::now();
            if next < now {
                next = now; // a poll slower than the interval: no burst to catch up
            }
        }
    }

    /// One poll: kept in the job's watch, reported to its observer.
    pub async fn poll_once(&self) {
        let poll = self.status().await;
        let at = crate::util::time::now_ms();
        let change = self.watch.record(at, &poll);
        let job = self.cfg.name.as_str();
        self.observer.job(&JobEvent::Polled { poll: &poll });
        match (change, &poll) {
            (Some(Change::State { from, to }), Ok(s)) => self.observer.job(&JobEvent::Changed {
                job,
                from,
                to,
                exception: s.exception.as_ref().map(|e| e.text.as_str()),
            }),
            (Some(Change::Unreachable), Err(error)) => {
                self.observer.job(&JobEvent::Unreachable { job, error })
            }
            _ => {}
        }
    }

    async fn status(&self) -> Result<JobStatus, JobPollError> {
        let id = match &self.cfg.find {
            JobRef::Id(id) => id.clone(),
            JobRef::Name(name) => {
                let overview: Overview = self.get("/jobs/overview").await?;
                pick(&overview.jobs, name).ok_or_else(|| {
                    let mut names: Vec<&str> =
                        overview.jobs.iter().map(|j| j.name.as_str()).collect();
                    names.sort_unstable();
                    names.dedup();
                    names.truncate(10);
                    JobPollError::new(
                        JobPollErrorKind::NotFound,
                        format!(
                            "no job named `{name}` at {}; its jobs: {}",
                            self.cfg.url,
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    )
                })?
            }
        };
        let details = format!("/jobs/{id}");
        let exceptions = format!("/jobs/{id}/exceptions?maxExceptions={FAILURES}");
        let checkpoints = format!("/jobs/{id}/checkpoints");
        let metrics = format!("/jobs/{id}/metrics?get=numRestarts");
        let (details, exceptions, checkpoints, metrics) = tokio::join!(
            self.get::<Details>(&details),
            self.get::<Exceptions>(&exceptions),
            self.get::<CheckpointStats>(&checkpoints),
            self.get::<Vec<Metric>>(&metrics),
        );
        let details = details.map_err(|e| match (&self.cfg.find, e.kind) {
            (JobRef::Id(id), JobPollErrorKind::HttpStatus) if e.message.contains("404") => {
                JobPollError::new(
                    JobPollErrorKind::NotFound,
                    format!("no job with id {id} at {}", self.cfg.url),
                )
            }
            _ => e,
        })?;
        let state = JobState::parse(&details.state).ok_or_else(|| {
            JobPollError::new(
                JobPollErrorKind::InvalidJson,
                format!(
                    "job {} is in a state slo-probe does not know: `{}`",
                    details.jid, details.state
                ),
            )
        })?;
        let entries = exceptions
            .ok()
            .and_then(|e| e.history)
            .map(|h| h.entries)
            .unwrap_or_default();
        let failures_at_ms: Vec<u64> = entries.iter().map(|e| e.timestamp).collect();
        let exception = entries.into_iter().next().map(|e| JobException {
            at_ms: e.timestamp,
            text: crate::util::text::printable(
                &deepest_cause(&e.name, &e.stacktrace),
                MAX_EXCEPTION,
            ),
        });
        // Subtasks running (or done, in a bounded job) of all of them.
        let tasks = (!details.vertices.is_empty()).then(|| {
            details.vertices.iter().fold((0, 0), |(run, all), v| {
                let running = ["RUNNING", "FINISHED"]
                    .iter()
                    .filter_map(|s| v.tasks.get(*s))
                    .sum::<u32>();
                (run + running, all + v.tasks.values().sum::<u32>())
            })
        });
        let checkpoints = checkpoints.ok().map_or_else(Checkpoints::default, |c| {
            let latest = c.latest.and_then(|l| l.completed);
            Checkpoints {
                completed: c.counts.completed,
                failed: c.counts.failed,
                last_completed_at_ms: latest.as_ref().map(|l| l.latest_ack_timestamp),
                last_duration: latest.map(|l| Duration::from_millis(l.end_to_end_duration)),
            }
        });
        let restarts = metrics
            .ok()
            .and_then(|m| m.into_iter().find(|m| m.id == "numRestarts"))
            .and_then(|m| m.value.parse::<f64>().ok())
            .map_or(0, |v| v.max(0.0) as u64);
        Ok(JobStatus {
            since_ms: details
                .timestamps
                .get(state.as_str())
                .and_then(|t| u64::try_from(*t).ok())
                .filter(|t| *t > 0),
            id: details.jid,
            state,
            restarts,
            exception,
            failures_at_ms,
            tasks,
            checkpoints,
        })
    }

    /// GET `path` of the REST API, as `T`.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, JobPollError> {
        let url = format!("{}{path}", self.cfg.url);
        let request = self
            .cfg
            .auth
            .apply(self.http.get(&url))
            .map_err(|why| JobPollError::new(JobPollErrorKind::Auth, why))?;
        let failed = |e: reqwest::Error| {
            let kind = if e.is_timeout() {
                JobPollErrorKind::Timeout
            } else {
                JobPollErrorKind::Unreachable
            };
            // without the URL's query, and never a credential (none is in the URL)
            JobPollError::new(kind, format!("{}: {}", self.cfg.url, error_chain(&e)))
        };
        let mut response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(JobPollError::new(
                    JobPollErrorKind::InvalidJson,
                    format!("{url}: the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        match status {
            200..=299 => serde_json::from_slice(&bytes).map_err(|e| {
                JobPollError::new(
                    JobPollErrorKind::InvalidJson,
                    format!(
                        "{}{}: not Flink's answer: {e}",
                        self.cfg.url,
                        strip_query(path)
                    ),
                )
            }),
            401 | 403 => Err(JobPollError::new(
                JobPollErrorKind::Auth,
                format!("{}: HTTP {status}: credentials refused", self.cfg.url),
            )),
            _ => Err(JobPollError::new(
                JobPollErrorKind::HttpStatus,
                format!(
                    "{}{}: HTTP {status}: {}",
                    self.cfg.url,
                    strip_query(path),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            )),
        }
    }
}

/// The job of `name` to follow: one that has not ended if there is one, the newest started.
fn pick(jobs: &[OverviewJob], name: &str) -> Option<String> {
    jobs.iter()
        .filter(|j| j.name == name)
        .max_by_key(|j| {
            let ended = JobState::parse(&j.state).is_some_and(JobState::is_terminal);
            (!ended, j.start_time)
        })
        .map(|j| j.jid.clone())
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// A reqwest error with its causes (`error sending request: connection refused`).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The failure a Java stack trace comes down to: its last `Caused by:` (or its first line),
/// with the exception's simple class name: `JsonParseException: Unexpected character ...`.
pub fn deepest_cause(name: &str, stacktrace: &str) -> String {
    let line = stacktrace
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("Caused by: "))
        .or_else(|| stacktrace.lines().next().map(str::trim))
        .filter(|l| !l.is_empty())
        .unwrap_or(name);
    let (class, message) = match line.split_once(": ") {
        Some((c, m)) if !c.contains(' ') => (c, Some(m)),
        _ => (line, None),
    };
    let simple = class.rsplit('.').next().unwrap_or(class);
    match message {
        Some(m) => format!("{simple}: {m}"),
        None => simple.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_cause_of_a_stack_trace_is_named_simply() {
        let trace = "org.apache.flink.runtime.JobException: Recovery is suppressed\n\tat a.b(C.java:1)\nCaused by: java.io.IOException: Failed to deserialize consumer record\n\tat x\nCaused by: org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParseException: Unexpected character ('x' (code 120))\n\tat y";
        assert_eq!(
            deepest_cause("org.apache.flink.runtime.JobException", trace),
            "JsonParseException: Unexpected character ('x' (code 120))"
        );
        assert_eq!(
            deepest_cause(
                "java.lang.RuntimeException",
                "java.lang.RuntimeException: boom"
            ),
            "RuntimeException: boom"
        );
        assert_eq!(
            deepest_cause("java.lang.OutOfMemoryError", ""),
            "OutOfMemoryError"
        );
    }

    #[test]
    fn a_name_follows_the_running_job_of_that_name() {
        let job = |jid: &str, name: &str, state: &str, start: i64| OverviewJob {
            jid: jid.into(),
            name: name.into(),
            state: state.into(),
            start_time: start,
        };
        let jobs = [
            job("a", "enrich", "CANCELED", 30),
            job("b", "enrich", "RUNNING", 10),
            job("c", "other", "RUNNING", 40),
        ];
        assert_eq!(pick(&jobs, "enrich").as_deref(), Some("b"));
        assert_eq!(
            pick(&jobs[..1], "enrich").as_deref(),
            Some("a"),
            "an ended job is still the job"
        );
        assert_eq!(pick(&jobs, "missing"), None);
    }
}
