//! The job a probe's records go through, as its poller sees it ([`JobWatch`]): the newest
//! answer of its REST API ([`JobNow`]), and the polls of the last minutes, from which what the
//! job was doing while a record was in flight is told ([`JobWatch::context`]). One per job,
//! shared by every probe that names it; written by its poller only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::outcome::{JobContext, JobPollError, JobState, JobStatus};

/// Polls kept: at the default 5 s poll, the last 85 minutes; at 1 s, 17. A record is judged
/// within its timeout, far shorter.
pub const KEPT_POLLS: usize = 1024;

/// The newest of a job's polls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobNow {
    /// Polls so far, and those that failed.
    pub polls: u64,
    pub errors: u64,
    /// The newest answer, and when it came (ms since the Unix epoch).
    pub status: Option<JobStatus>,
    pub answered_at_ms: Option<u64>,
    /// The newest poll failed: why, and since when polls fail (ms since the Unix epoch).
    pub error: Option<JobPollError>,
    pub failing_since_ms: Option<u64>,
}

impl JobNow {
    /// The job is known to run: the newest poll answered `RUNNING`. Never true while polls
    /// fail.
    pub fn running(&self) -> bool {
        self.error.is_none()
            && self
                .status
                .as_ref()
                .is_some_and(|s| s.state == JobState::Running)
    }

    /// Its state, when the newest poll answered.
    pub fn state(&self) -> Option<JobState> {
        match self.error {
            Some(_) => None,
            None => self.status.as_ref().map(|s| s.state),
        }
    }

    /// `CANCELED since 12:00:01 (last exception: ...)`, or why its state is not known.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.error {
            return format!("its state could not be read: {e}");
        }
        let Some(s) = &self.status else {
            return "not polled yet".into();
        };
        let mut out = s.state.to_string();
        if let Some(since) = s.since_ms {
            out.push_str(&format!(" since {}", crate::outcome::clock(since)));
        }
        if let (true, Some((running, all))) = (s.tasks_down(), s.tasks) {
            out.push_str(&format!(" ({running} of {all} tasks running)"));
        }
        if s.restarts > 0 {
            out.push_str(&format!(", {} restarts", s.restarts));
        }
        if let Some(e) = &s.exception {
            out.push_str(&format!(" (last exception: {})", e.text));
        }
        out
    }
}

/// One poll, as kept: its state (`None`: the poll failed), and running totals that survive
/// the job getting a new id.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    state: Option<JobState>,
    /// `RUNNING` with tasks not running.
    tasks_down: bool,
    restarts: u64,
    failures: u64,
    /// The failures this poll counted first: the first and the last of their times.
    new_failures: Option<(u64, u64)>,
    checkpoints: u64,
    failed_checkpoints: u64,
    /// The newest exception as of this poll, and when it happened.
    exception: Option<(u64, Arc<str>)>,
    error: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Timeline {
    samples: VecDeque<Sample>,
    /// The last answer's job id and raw counters, to turn them into running totals.
    last: Option<(String, u64, u64, u64)>,
    totals: (u64, u64, u64),
    /// Failures counted (from the answers' failure times), and the newest counted.
    failures: u64,
    newest_failure_ms: u64,
    exception: Option<(u64, Arc<str>)>,
}

/// What changed with a poll, for the poller's observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The state is not the one of the previous poll (`from`: `None` when that failed, or on
    /// the first).
    State {
        from: Option<JobState>,
        to: JobState,
    },
    /// Polls began to fail.
    Unreachable,
}

/// A job's polls, shared by every probe that names it.
#[derive(Debug)]
pub struct JobWatch {
    /// Its name in the probe file (the `flink_job` label).
    pub name: String,
    /// Where it is polled and how it is found, for messages: `<url> job <name or id>`.
    pub target: String,
    timeline: Mutex<Timeline>,
    now: watch::Sender<JobNow>,
}

impl JobWatch {
    pub fn new(name: impl Into<String>, target: impl Into<String>) -> Self {
        JobWatch {
            name: name.into(),
            target: target.into(),
            timeline: Mutex::default(),
            now: watch::Sender::new(JobNow::default()),
        }
    }

    /// The newest poll, followed.
    pub fn now(&self) -> watch::Receiver<JobNow> {
        self.now.subscribe()
    }

    /// A poll at `at_ms` (ms since the Unix epoch): kept, and what it changed.
    pub fn record(&self, at_ms: u64, poll: &Result<JobStatus, JobPollError>) -> Option<Change> {
        let mut t = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        let previous = t.samples.back().map(|s| s.state);
        let sample = match poll {
            Ok(s) => {
                let (r, c, f) = (s.restarts, s.checkpoints.completed, s.checkpoints.failed);
                // Counters start again with a new job id (a job submitted again): what it
                // did since counts in full.
                let (dr, dc, df) = match &t.last {
                    Some((id, lr, lc, lf)) if *id == s.id => (
                        r.saturating_sub(*lr),
                        c.saturating_sub(*lc),
                        f.saturating_sub(*lf),
                    ),
                    Some(_) => (r, c, f),
                    None => (0, 0, 0),
                };
                t.last = Some((s.id.clone(), r, c, f));
                t.totals.0 += dr;
                t.totals.1 += dc;
                t.totals.2 += df;
                if let Some(e) = &s.exception
                    && t.exception.as_ref().is_none_or(|(at, _)| *at != e.at_ms)
                {
                    t.exception = Some((e.at_ms, Arc::from(e.text.as_str())));
                }
                // Failures newer than the newest counted (on the first answer: none is the
                // record's, they are the baseline).
                let newest = t.newest_failure_ms;
                let fresh: Vec<u64> = if t.samples.is_empty() {
                    Vec::new()
                } else {
                    s.failures_at_ms
                        .iter()
                        .copied()
                        .filter(|at| *at > newest)
                        .collect()
                };
                t.failures += fresh.len() as u64;
                t.newest_failure_ms =
                    newest.max(s.failures_at_ms.iter().copied().max().unwrap_or(0));
                let new_failures = fresh
                    .iter()
                    .min()
                    .zip(fresh.iter().max())
                    .map(|(a, b)| (*a, *b));
                Sample {
                    at_ms,
                    state: Some(s.state),
                    tasks_down: s.tasks_down(),
                    failures: t.failures,
                    new_failures,
                    restarts: t.totals.0,
                    checkpoints: t.totals.1,
                    failed_checkpoints: t.totals.2,
                    exception: t.exception.clone(),
                    error: None,
                }
            }
            Err(e) => Sample {
                at_ms,
                state: None,
                tasks_down: false,
                failures: t.failures,
                new_failures: None,
                restarts: t.totals.0,
                checkpoints: t.totals.1,
                failed_checkpoints: t.totals.2,
                exception: t.exception.clone(),
                error: Some(Arc::from(e.to_string().as_str())),
            },
        };
        let state = sample.state;
        if t.samples.len() == KEPT_POLLS {
            t.samples.pop_front();
        }
        t.samples.push_back(sample);
        drop(t);
        self.now.send_modify(|n| {
            n.polls += 1;
            match poll {
                Ok(s) => {
                    n.status = Some(s.clone());
                    n.answered_at_ms = Some(at_ms);
                    n.error = None;
                    n.failing_since_ms = None;
                }
                Err(e) => {
                    n.errors += 1;
                    n.error = Some(e.clone());
                    n.failing_since_ms.get_or_insert(at_ms);
                }
            }
        });
        match (previous, state) {
            (Some(Some(from)), Some(to)) if from == to => None,
            (from, Some(to)) => Some(Change::State {
                from: from.flatten(),
                to,
            }),
            (Some(None), None) => None,
            (_, None) => Some(Change::Unreachable),
        }
    }

    /// What the job was doing while a record scheduled at `scheduled_at_ns` (ns since the Unix
    /// epoch) was in flight for `lasted`: [`JobWatch::context`] of that time.
    pub fn during(&self, scheduled_at_ns: u64, lasted: std::time::Duration) -> Option<JobContext> {
        let from = scheduled_at_ns / 1_000_000;
        self.context(from, from + lasted.as_millis() as u64)
    }

    /// What the job was doing while a record was in flight, from `from_ms` to `to_ms` (ms since
    /// the Unix epoch), as the polls up to `to_ms` saw it: from the last poll before `from_ms`
    /// (its state held until the next poll) to the last one before `to_ms`. `None` before the
    /// first poll, or once the polls of that time are no longer kept.
    pub fn context(&self, from_ms: u64, to_ms: u64) -> Option<JobContext> {
        let t = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        let s = &t.samples;
        let end = s.partition_point(|x| x.at_ms <= to_ms);
        if end == 0 {
            return None;
        }
        let start = s.partition_point(|x| x.at_ms <= from_ms).saturating_sub(1);
        if start == 0 && s.len() == KEPT_POLLS && s[0].at_ms > from_ms {
            return None; // forgotten
        }
        let range = s.range(start..end);
        let (first, last) = (&s[start], &s[end - 1]);
        let mut state: Option<JobState> = None;
        let mut not_running: Option<(u64, u64)> = None;
        let mut unknown = None;
        let mut tasks_down = false;
        for x in range {
            match x.state {
                Some(st) => {
                    if state.is_none_or(|w| st.severity() > w.severity()) {
                        state = Some(st);
                    }
                    tasks_down |= x.tasks_down;
                    if st != JobState::Running || x.tasks_down {
                        widen(&mut not_running, (x.at_ms, x.at_ms));
                    }
                }
                None => unknown = x.error.clone(),
            }
        }
        let restarts = last.restarts - first.restarts;
        let failures = last.failures - first.failures;
        // Failures while it was in flight: the job failed and restarted (Flink's REST API
        // describes the job as it was up to `web.refresh-interval` ago, 3 s by default, so its
        // state alone misses a restart loop faster than that; its failures are all listed).
        if failures > 0 || restarts > 0 {
            if state.is_some_and(|s| s.severity() < JobState::Restarting.severity()) {
                state = Some(JobState::Restarting);
            }
            for failed in s.range(start + 1..end).filter_map(|x| x.new_failures) {
                widen(&mut not_running, failed);
            }
        }
        let exception = last
            .exception
            .as_ref()
            .filter(|(at, _)| {
                state.is_some_and(|s| s != JobState::Running)
                    || tasks_down
                    || restarts > 0
                    || failures > 0
                    || (*at >= from_ms && *at <= to_ms)
            })
            .map(|(_, text)| text.to_string());
        Some(JobContext {
            job: self.name.clone(),
            state,
            not_running,
            tasks_down,
            restarts,
            failures,
            exception,
            checkpoints: last.checkpoints - first.checkpoints,
            failed_checkpoints: last.failed_checkpoints - first.failed_checkpoints,
            unknown: unknown.map(|u| u.to_string()),
        })
    }
}

/// `span` widened to take in `by` (or `by`, when there is none yet).
fn widen(span: &mut Option<(u64, u64)>, (from, to): (u64, u64)) {
    let (a, b) = span.get_or_insert((from, to));
    *a = (*a).min(from);
    *b = (*b).max(to);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Checkpoints, JobException, JobPollErrorKind};

    fn status(state: JobState, restarts: u64, completed: u64) -> Result<JobStatus, JobPollError> {
        Ok(JobStatus {
            id: "a1".into(),
            state,
            since_ms: None,
            restarts,
            exception: (restarts > 0).then(|| JobException {
                at_ms: 2_500 + restarts * 500,
                text: "JsonParseException: Unexpected character".into(),
            }),
            failures_at_ms: (1..=restarts).rev().map(|r| 2_500 + r * 500).collect(),
            tasks: Some((1, 1)),
            checkpoints: Checkpoints {
                completed,
                ..Checkpoints::default()
            },
        })
    }

    #[test]
    fn a_record_in_flight_across_a_restart_names_it_and_a_later_one_does_not() {
        let w = JobWatch::new("enrich", "http://flink:8081 job enrich");
        assert_eq!(w.context(0, 10_000), None, "not polled yet");
        assert_eq!(
            w.record(1_000, &status(JobState::Running, 0, 1)),
            Some(Change::State {
                from: None,
                to: JobState::Running
            })
        );
        assert_eq!(w.record(2_000, &status(JobState::Running, 0, 2)), None);
        w.record(3_000, &status(JobState::Restarting, 1, 0));
        w.record(4_000, &status(JobState::Restarting, 2, 0));
        w.record(5_000, &status(JobState::Running, 2, 0));
        w.record(6_000, &status(JobState::Running, 2, 1));
        w.record(7_000, &status(JobState::Running, 2, 2));
        // in flight 2.5 s to 5.5 s: the restarts
        let c = w.context(2_500, 5_500).unwrap();
        assert_eq!(c.state, Some(JobState::Restarting));
        assert_eq!(c.not_running, Some((3_000, 4_000)));
        assert_eq!((c.restarts, c.failures), (2, 2));
        assert!(c.exception.as_deref().unwrap().contains("JsonParse"));
        assert!(!c.is_quiet());
        // in flight 5.5 s to 7.5 s: running, two checkpoints, the old exception not its own
        let c = w.context(5_500, 7_500).unwrap();
        assert!(c.is_quiet(), "{c:?}");
        assert_eq!((c.checkpoints, c.exception), (2, None));
    }

    #[test]
    fn failed_polls_make_the_state_unknown_never_healthy() {
        let w = JobWatch::new("enrich", "x");
        w.record(1_000, &status(JobState::Running, 0, 0));
        let e = JobPollError::new(JobPollErrorKind::Unreachable, "connection refused");
        assert_eq!(w.record(2_000, &Err(e.clone())), Some(Change::Unreachable));
        assert_eq!(w.record(3_000, &Err(e)), None, "said once");
        let now = w.now().borrow().clone();
        assert!(!now.running());
        assert_eq!(
            (now.polls, now.errors, now.failing_since_ms),
            (3, 2, Some(2_000))
        );
        assert!(
            now.describe().contains("connection refused"),
            "{}",
            now.describe()
        );
        let c = w.context(1_500, 3_500).unwrap();
        assert!(!c.is_quiet());
        assert!(c.unknown.as_deref().unwrap().contains("refused"));
        assert!(c.to_string().contains("did not answer"), "{c}");
        assert_eq!(
            w.record(4_000, &status(JobState::Running, 0, 0)),
            Some(Change::State {
                from: None,
                to: JobState::Running
            })
        );
    }

    #[test]
    fn a_region_failover_leaves_the_job_running_and_is_still_told() {
        let w = JobWatch::new("enrich", "x");
        let poll = |tasks: (u32, u32), failures: &[u64]| {
            Ok(JobStatus {
                id: "a1".into(),
                state: JobState::Running,
                since_ms: None,
                restarts: 0,
                exception: failures.first().map(|at| JobException {
                    at_ms: *at,
                    text: "JsonParseException: x".into(),
                }),
                failures_at_ms: failures.to_vec(),
                tasks: Some(tasks),
                checkpoints: Checkpoints::default(),
            })
        };
        w.record(1_000, &poll((1, 1), &[500])); // an old failure: the baseline
        w.record(2_000, &poll((0, 1), &[1_900, 500]));
        w.record(3_000, &poll((0, 1), &[2_950, 1_900, 500]));
        w.record(4_000, &poll((1, 1), &[2_950, 1_900, 500]));
        // the failures make it a restart, from the first failure to the last poll not running
        let c = w.context(1_500, 4_500).unwrap();
        assert_eq!(
            (c.state, c.tasks_down, c.failures),
            (Some(JobState::Restarting), true, 2)
        );
        assert_eq!(c.not_running, Some((1_900, 3_000)));
        assert!(c.to_string().starts_with("enrich was RESTARTING ("), "{c}");
        assert!(c.to_string().contains("2 failures"), "{c}");
        assert!(w.context(4_100, 4_500).unwrap().is_quiet(), "after it");
        // tasks down without a failure (deploying): running, with tasks not running
        let d = JobWatch::new("enrich", "x");
        d.record(1_000, &poll((1, 1), &[]));
        d.record(2_000, &poll((0, 1), &[]));
        let c = d.context(1_500, 2_500).unwrap();
        assert_eq!(c.state, Some(JobState::Running));
        assert!(
            c.to_string()
                .starts_with("enrich was RUNNING with tasks not running ("),
            "{c}"
        );
    }

    #[test]
    fn a_job_submitted_again_keeps_counting_its_restarts() {
        let w = JobWatch::new("enrich", "x");
        w.record(1_000, &status(JobState::Running, 5, 10));
        let mut again = status(JobState::Running, 1, 1).unwrap();
        again.id = "b2".into();
        w.record(2_000, &Ok(again));
        let c = w.context(500, 2_500).unwrap();
        assert_eq!((c.restarts, c.checkpoints), (1, 1));
    }
}
