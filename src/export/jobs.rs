//! A job poller's observer: each poll of a Flink job becomes the job's series (labelled
//! `flink_job`, never `job`, which Prometheus keeps for the scrape job) and its log lines (a
//! state change, polls that begin to fail), in one place per event.

use std::sync::Arc;

use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tracing::{info, warn};

use super::metrics::{Metrics, counter, gauge, names, registered};
use crate::outcome::{JobEvent, JobObserver, JobPollErrorKind, JobState};
use crate::util::quiet::Quiet;

/// The series of one job.
pub struct JobExport {
    /// Indexed like [`JobState::ALL`]: 1 for the state of the newest poll that answered, 0
    /// for the others; all 0 while polls fail.
    state: Vec<IntGauge>,
    up: IntGauge,
    since: Gauge,
    restarts: IntGauge,
    completed: IntGauge,
    failed: IntGauge,
    last_checkpoint: Gauge,
    last_checkpoint_duration: Gauge,
    last_exception: Gauge,
    polls: IntCounter,
    errors: Vec<IntCounter>,
    quiet: Quiet,
}

impl JobExport {
    /// Every series of job `name` (and the probes naming it), at zero from here on.
    pub fn new(metrics: &Arc<Metrics>, name: &str, probes: &[&str]) -> Self {
        let f = metrics.jobs();
        for p in probes {
            f.probe_job.with_label_values(&[p, name]).set(1);
        }
        let one = |g: &prometheus::GaugeVec| g.with_label_values(&[name]);
        let o = JobExport {
            state: JobState::ALL
                .iter()
                .map(|s| f.state.with_label_values(&[name, s.as_str()]))
                .collect(),
            up: f.up.with_label_values(&[name]),
            since: one(&f.since),
            restarts: f.restarts.with_label_values(&[name]),
            completed: f.checkpoints.with_label_values(&[name, "completed"]),
            failed: f.checkpoints.with_label_values(&[name, "failed"]),
            last_checkpoint: one(&f.last_checkpoint),
            last_checkpoint_duration: one(&f.last_checkpoint_duration),
            last_exception: one(&f.last_exception),
            polls: f.polls.with_label_values(&[name]),
            errors: JobPollErrorKind::ALL
                .iter()
                .map(|k| f.errors.with_label_values(&[name, k.as_str()]))
                .collect(),
            quiet: Quiet::default(),
        };
        for g in [
            &o.since,
            &o.last_checkpoint,
            &o.last_checkpoint_duration,
            &o.last_exception,
        ] {
            g.set(f64::NAN);
        }
        o
    }
}

impl JobObserver for JobExport {
    fn job(&self, event: &JobEvent<'_>) {
        match event {
            JobEvent::Polled { poll, .. } => {
                self.polls.inc();
                match poll {
                    Ok(s) => {
                        self.up.set(1);
                        for (g, st) in self.state.iter().zip(JobState::ALL) {
                            g.set(i64::from(st == s.state));
                        }
                        let secs = |ms: Option<u64>| ms.map_or(f64::NAN, |ms| ms as f64 / 1e3);
                        self.since.set(secs(s.since_ms));
                        self.restarts.set(s.restarts as i64);
                        self.completed.set(s.checkpoints.completed as i64);
                        self.failed.set(s.checkpoints.failed as i64);
                        self.last_checkpoint
                            .set(secs(s.checkpoints.last_completed_at_ms));
                        self.last_checkpoint_duration.set(
                            s.checkpoints
                                .last_duration
                                .map_or(f64::NAN, |d| d.as_secs_f64()),
                        );
                        self.last_exception
                            .set(secs(s.exception.as_ref().map(|e| e.at_ms)));
                    }
                    Err(e) => {
                        // never "healthy": no state is 1 while the job's API does not answer
                        self.up.set(0);
                        for g in &self.state {
                            g.set(0);
                        }
                        self.errors[e.kind as usize].inc();
                    }
                }
            }
            JobEvent::Changed {
                job,
                from,
                to,
                exception,
            } => {
                let from = from.map_or("-", JobState::as_str);
                if *to == JobState::Running {
                    info!(flink_job = job, from, to = to.as_str(), "job {job} is {to}");
                } else {
                    warn!(
                        flink_job = job,
                        from,
                        to = to.as_str(),
                        exception,
                        "job {job} is {to}{}",
                        exception.map_or(String::new(), |e| format!(" (last exception: {e})"))
                    );
                }
            }
            JobEvent::Unreachable { job, error } => {
                if self.quiet.allow(error.kind.as_str()) {
                    warn!(
                        flink_job = job,
                        reason = error.kind.as_str(),
                        error = %error.message,
                        "the state of job {job} cannot be read (counted in slo_probe_flink_poll_errors_total; records are still judged): {error}"
                    );
                }
            }
        }
    }
}

/// The families of the job pollers' series.
pub struct JobFamilies {
    pub state: IntGaugeVec,
    pub up: IntGaugeVec,
    pub since: GaugeVec,
    pub restarts: IntGaugeVec,
    pub checkpoints: IntGaugeVec,
    pub last_checkpoint: GaugeVec,
    pub last_checkpoint_duration: GaugeVec,
    pub last_exception: GaugeVec,
    pub polls: IntCounterVec,
    pub errors: IntCounterVec,
    pub probe_job: IntGaugeVec,
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl JobFamilies {
    pub(super) fn new(r: &Registry) -> Self {
        let job = &["flink_job"];
        JobFamilies {
            state: int_gauge(
                r,
                names::FLINK_JOB_STATE,
                "A Flink job's state as its REST API gives it: 1 for the state of the newest poll that answered, 0 for the others (all 0 while polls fail).",
                &["flink_job", "state"],
            ),
            up: int_gauge(
                r,
                names::FLINK_JOB_UP,
                "Whether the newest poll of the job's REST API answered (0: its state is not known).",
                job,
            ),
            since: gauge(
                r,
                names::FLINK_JOB_STATE_SINCE,
                "When the job entered its state (Unix seconds).",
                job,
            ),
            restarts: int_gauge(
                r,
                names::FLINK_JOB_RESTARTS,
                "The job's restarts (Flink's numRestarts; starts again with a job submitted again).",
                job,
            ),
            checkpoints: int_gauge(
                r,
                names::FLINK_JOB_CHECKPOINTS,
                "The job's checkpoints by result (Flink's counts).",
                &["flink_job", "result"],
            ),
            last_checkpoint: gauge(
                r,
                names::FLINK_JOB_LAST_CHECKPOINT,
                "When the job's newest completed checkpoint was acknowledged (Unix seconds).",
                job,
            ),
            last_checkpoint_duration: gauge(
                r,
                names::FLINK_JOB_LAST_CHECKPOINT_DURATION,
                "How long the job's newest completed checkpoint took.",
                job,
            ),
            last_exception: gauge(
                r,
                names::FLINK_JOB_LAST_EXCEPTION,
                "When the job's newest failure happened (Unix seconds).",
                job,
            ),
            polls: counter(r, names::FLINK_POLLS, "Polls of the job's REST API.", job),
            errors: counter(
                r,
                names::FLINK_POLL_ERRORS,
                "Failed polls of the job's REST API by reason.",
                &["flink_job", "reason"],
            ),
            probe_job: int_gauge(
                r,
                names::PROBE_FLINK_JOB,
                "The job a probe's records go through (1).",
                &["probe", "flink_job"],
            ),
        }
    }
}
