//! Verdicts and status documents: the smoke verdict (text table, JSON, JUnit) and `/status`.
//!
//! A probe passes a smoke run when it sent records, every one of them settled, none arrived
//! corrupt (a failed assertion), and every SLO met its objective; a probe without SLOs must have
//! every record `ok`.

mod chart;
mod formats;
mod hops;
pub mod html;
mod why;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::Sli;
use crate::outcome::{Counts, Outcome, PartitionCounts};
use crate::probe::{Noted, Probe, SinkSummary, Snapshot};
use crate::stats::SloSummary;
use crate::stats::slo::BURN_WINDOWS;
use crate::verify::fetch_wait::FetchWaitStatus;
pub use hops::HopsReport;
pub use why::Why;

#[derive(Debug, Clone, Serialize)]
pub struct Records {
    pub sent: u64,
    pub ok: u64,
    pub lost: u64,
    pub corrupt: u64,
    pub send_failed: u64,
    pub in_flight: u64,
}

impl From<Counts> for Records {
    fn from(c: Counts) -> Self {
        Records {
            sent: c.sent,
            ok: c.get(Outcome::Ok),
            lost: c.get(Outcome::Lost),
            corrupt: c.get(Outcome::Corrupt),
            send_failed: c.get(Outcome::SendFailed),
            in_flight: c.in_flight,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Events {
    pub duplicates: u64,
    pub reordered: u64,
    pub late_arrivals: u64,
    pub foreign: u64,
}

impl Events {
    fn of(s: &Snapshot) -> Self {
        let c = s.progress.counts;
        Events {
            duplicates: c.duplicates,
            reordered: c.reordered,
            late_arrivals: c.late,
            foreign: s.foreign,
        }
    }
}

/// Quantiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl LatencySummary {
    pub fn new(count: u64, q: Option<[f64; 6]>) -> Self {
        let ms = |i: usize| q.map(|q| (q[i] * 1e6).round() / 1e3);
        LatencySummary {
            count,
            p50_ms: ms(0),
            p90_ms: ms(1),
            p95_ms: ms(2),
            p99_ms: ms(3),
            p999_ms: ms(4),
            max_ms: ms(5),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SloVerdict {
    pub name: String,
    pub sli: &'static str,
    /// Percent, e.g. 99.9.
    pub objective_percent: f64,
    pub latency_below_ms: Option<f64>,
    pub good: u64,
    pub bad: u64,
    /// Good / all, percent; `None` without events.
    pub good_percent: Option<f64>,
    pub met: bool,
    /// Share of the error budget left over the SLO window (for a smoke run: the run).
    pub budget_remaining: f64,
    /// Burn rate over every event of the run (1 = exactly the budget's pace).
    pub burn_rate: Option<f64>,
    /// Burn rate over each alerting window.
    pub burn_rates: BTreeMap<&'static str, Option<f64>>,
}

impl From<&SloSummary> for SloVerdict {
    fn from(s: &SloSummary) -> Self {
        SloVerdict {
            name: s.slo.name.clone(),
            sli: s.slo.sli.kind(),
            objective_percent: round4(s.slo.objective * 100.0),
            latency_below_ms: match s.slo.sli {
                Sli::Latency { below } => Some(below.as_secs_f64() * 1e3),
                _ => None,
            },
            good: s.total.good,
            bad: s.total.bad,
            good_percent: s.ratio().map(|r| round4(r * 100.0)),
            met: s.met(),
            budget_remaining: round4(s.budget_remaining),
            burn_rate: s.run_burn_rate.map(round4),
            burn_rates: BURN_WINDOWS
                .iter()
                .zip(s.burn_rates)
                .map(|((w, _), r)| (*w, r.map(round4)))
                .collect(),
        }
    }
}

fn poll_ms(probe: &Probe) -> Option<f64> {
    probe.config.verify.poll().map(|p| p.as_secs_f64() * 1e3)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionRecords {
    pub sent: u64,
    pub ok: u64,
    pub lost: u64,
    pub corrupt: u64,
    pub send_failed: u64,
}

impl From<&PartitionCounts> for PartitionRecords {
    fn from(p: &PartitionCounts) -> Self {
        let [ok, lost, corrupt, send_failed] = p.outcomes;
        PartitionRecords {
            sent: p.sent,
            ok,
            lost,
            corrupt,
            send_failed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeVerdict {
    pub name: String,
    pub cluster: String,
    pub topic: String,
    /// The probe's tags (written into every record).
    pub tags: BTreeMap<String, String>,
    /// How records were verified: `kafka`, `postgres` or `http`.
    pub verify: &'static str,
    /// A sink's poll interval: the resolution of the latencies below.
    pub poll_interval_ms: Option<f64>,
    /// A sink's polls and failed polls.
    pub sink: Option<SinkSummary>,
    pub passed: bool,
    /// Why it failed, one sentence each: what the pipeline did wrong.
    pub failures: Vec<String>,
    /// Why it was not fully checked (cluster unreachable, run interrupted): not the pipeline's
    /// failures, but never a pass.
    pub errors: Vec<String>,
    pub rounds: u64,
    pub records: Records,
    pub events: Events,
    /// End-to-end latency of every verified record of the run.
    pub latency: LatencySummary,
    pub produce_latency: LatencySummary,
    /// Where the time went: the end-to-end latency of the run's verified records split into
    /// hops.
    pub hops: HopsReport,
    /// ok / settled records of the run, percent.
    pub availability_percent: Option<f64>,
    pub partitions: BTreeMap<i32, PartitionRecords>,
    pub slos: Vec<SloVerdict>,
    /// Why its records failed, the job's state, where a downstream topic stands.
    #[serde(flatten)]
    pub why: Why,
}

impl ProbeVerdict {
    pub fn new(probe: &Probe, s: &Snapshot) -> Self {
        let c = s.progress.counts;
        let slos: Vec<SloVerdict> = s.slos.iter().map(SloVerdict::from).collect();
        let mut failures = Vec::new();
        if let Some(sink) = &s.sink
            && sink.errors > 0
            && c.get(Outcome::Lost) > 0
        {
            failures.push(format!(
                "{} of {} polls of the {} sink failed (last: {})",
                sink.errors,
                sink.polls,
                probe.verify_topic,
                sink.last_error.as_deref().unwrap_or("-")
            ));
        }
        if c.sent == 0 {
            let why = s
                .progress
                .discovery_error
                .clone()
                .unwrap_or_else(|| "no partition discovered".into());
            failures.push(format!("no record was sent: {why}"));
        }
        if c.in_flight > 0 {
            failures.push(format!(
                "{} records still in flight when the run ended",
                c.in_flight
            ));
        }
        // Each failed outcome by reason: its sentence, counts, first records, and what the job
        // was doing; where a downstream topic stands for lost ones.
        let why = Why::of(probe, s);
        let said = |outcomes: &[&str]| -> Vec<String> {
            why.failed_records
                .iter()
                .filter(|f| outcomes.contains(&f.outcome))
                .map(|f| f.summary.clone())
                .collect()
        };
        failures.extend(said(&[Outcome::Corrupt.as_str()]));
        // A timestamp named in the probe file that no verified record carried: a typo, or a
        // job that does not write it. Every hop at it went unmeasured.
        for n in s.hops.named.iter().filter(|n| n.never_found()) {
            failures.push(format!(
                "`{}` ({}) is in none of the {} verified records ({}): no hop was split at it; check it against what the pipeline writes",
                n.field,
                n.name,
                n.missing,
                n.last_missing.as_deref().unwrap_or("-")
            ));
        }
        for v in slos.iter().filter(|v| !v.met) {
            let got = v
                .good_percent
                .map_or("no events".to_string(), |p| format!("{p}% good"));
            failures.push(format!(
                "slo {} not met: {got} ({} good, {} bad), objective {}%",
                v.name, v.good, v.bad, v.objective_percent
            ));
        }
        // Without SLOs every lost or unsent record fails the probe; with them, the SLOs judge,
        // and a failing probe's lost and unsent records still say why.
        let lost = said(&[Outcome::Lost.as_str(), Outcome::SendFailed.as_str()]);
        if slos.is_empty() || !failures.is_empty() {
            failures.extend(lost);
        }
        let finished = c.finished();
        ProbeVerdict {
            name: probe.config.name.clone(),
            cluster: probe.config.cluster.clone(),
            topic: probe.config.topic.clone(),
            tags: probe.config.tags.clone(),
            verify: probe.config.verify.kind(),
            poll_interval_ms: poll_ms(probe),
            sink: s.sink.clone(),
            passed: failures.is_empty(),
            failures,
            errors: Vec::new(),
            rounds: s.progress.rounds_started,
            records: c.into(),
            events: Events::of(s),
            latency: LatencySummary::new(s.e2e_count, s.e2e_total),
            produce_latency: LatencySummary::new(s.produce_count, s.produce_total),
            hops: HopsReport::new(probe, &s.hops, hops::Span::Run),
            availability_percent: (finished > 0)
                .then(|| round4(c.get(Outcome::Ok) as f64 / finished as f64 * 100.0)),
            partitions: s.partitions.iter().map(|(p, pc)| (*p, pc.into())).collect(),
            slos,
            why,
        }
    }

    /// Not fully checked, for `why`: the probe does not pass.
    pub fn error(&mut self, why: impl Into<String>) {
        self.errors.push(why.into());
        self.passed = false;
    }
}

/// How a smoke run ended; the exit code follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunResult {
    /// Every probe passed (exit 0).
    Pass,
    /// A probe failed an SLO or an assertion (exit 1).
    Fail,
    /// Stopped by a signal before the end: partial results, never a pass (exit 130).
    Interrupted,
    /// A cluster or topic could not be reached, or the agent could not start (exit 2).
    CouldNotRun,
    /// The configuration or command line is wrong (exit 78).
    ConfigError,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Pass => "PASS",
            RunResult::Fail => "FAIL",
            RunResult::Interrupted => "INTERRUPTED",
            RunResult::CouldNotRun => "COULD NOT RUN",
            RunResult::ConfigError => "CONFIG ERROR",
        }
    }
}

/// What the live page of an agent on the embedded cluster says first.
pub const EMBEDDED_AGENT_NOTICE: &str = "EMBEDDED CLUSTER: this agent runs on the mock Kafka cluster inside slo-probe; no real pipeline is checked";

/// What an embedded run says first, in every format.
pub const EMBEDDED_NOTICE: &str = "EMBEDDED CLUSTER: this run used the mock Kafka cluster inside slo-probe; no real pipeline was checked";

/// The whole smoke run.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// First, so nobody misses it: the run used the embedded mock cluster, not a pipeline.
    pub embedded: bool,
    pub result: RunResult,
    pub passed: bool,
    /// Why the run could not run or was interrupted.
    pub reason: Option<String>,
    pub duration_seconds: f64,
    pub probes: Vec<ProbeVerdict>,
    /// What the HTML report draws, in the order of `probes` (not in the JSON).
    #[serde(skip)]
    pub pictures: Vec<html::Pictures>,
    /// The agent file's `trace_url`, for the HTML report's links.
    #[serde(skip)]
    pub trace_url: Option<String>,
}

impl Verdict {
    pub fn new(probes: Vec<ProbeVerdict>, duration: Duration, embedded: bool) -> Self {
        let passed = !probes.is_empty() && probes.iter().all(|p| p.passed);
        Verdict {
            embedded,
            result: if passed {
                RunResult::Pass
            } else {
                RunResult::Fail
            },
            passed,
            reason: None,
            duration_seconds: duration.as_secs_f64(),
            probes,
            pictures: Vec::new(),
            trace_url: None,
        }
    }

    /// With what the HTML report draws for each probe, and where its trace ids link to.
    pub fn with_pictures(
        mut self,
        pictures: Vec<html::Pictures>,
        trace_url: Option<String>,
    ) -> Self {
        self.pictures = pictures;
        self.trace_url = trace_url;
        self
    }

    /// One self-contained HTML page: a banner with the result, then each probe with charts.
    pub fn to_html(&self) -> String {
        html::smoke_report(
            self,
            &self.pictures,
            html::TraceLinks(self.trace_url.as_deref()),
        )
    }

    /// The run was stopped before the end: what it has is partial, and none of it passes.
    pub fn interrupted(mut self) -> Self {
        let why = "interrupted before the end: partial results";
        for p in &mut self.probes {
            p.error(why);
        }
        self.end(RunResult::Interrupted, why)
    }

    /// The run could not be done (`why`); probes not fully checked carry their own error.
    pub fn could_not_run(self, why: impl Into<String>) -> Self {
        self.end(RunResult::CouldNotRun, why)
    }

    /// The configuration or command line was refused (`why`).
    pub fn config_error(self, why: impl Into<String>) -> Self {
        self.end(RunResult::ConfigError, why)
    }

    fn end(mut self, result: RunResult, why: impl Into<String>) -> Self {
        self.result = result;
        self.passed = false;
        self.reason = Some(why.into());
        self
    }
}

/// Milliseconds for people: `850µs`, `12.3ms`, `1.25s`.
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 1.0 => format!("{:.0}µs", v * 1e3),
        Some(v) if v < 1000.0 => format!("{v:.1}ms"),
        Some(v) => format!("{:.2}s", v / 1e3),
    }
}

/// `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub site: String,
    pub instance: String,
    pub probes: Vec<ProbeStatus>,
    /// Each cluster a Kafka verifier reads from.
    pub clusters: BTreeMap<String, ClusterStatus>,
    /// The agent runs on the embedded mock cluster: no real pipeline is checked.
    pub embedded: bool,
}

/// A cluster a Kafka verifier reads from, on `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The verifier's consumer's `fetch.wait.max.ms`, and how it was chosen.
    pub fetch_wait: FetchWaitStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub name: String,
    pub cluster: String,
    pub topic: String,
    pub tags: BTreeMap<String, String>,
    /// `kafka`, `postgres` or `http`.
    pub verify: &'static str,
    /// The Kafka verifier's cluster (none for a sink).
    pub verify_cluster: Option<String>,
    /// The topic records are read back from, or the kind of sink.
    pub verify_topic: String,
    pub poll_interval_ms: Option<f64>,
    pub sink: Option<SinkSummary>,
    pub partitions: Vec<i32>,
    /// Partition -> leader broker id, at the last metadata refresh.
    pub leaders: BTreeMap<i32, i32>,
    pub discovery_error: Option<String>,
    /// Why the sink's answer to the probe's query cannot be verified (located in the probe
    /// file), while that is the case: the probe sends nothing meanwhile.
    pub refused: Option<String>,
    /// Supervised tasks of the probe that are down (being restarted) -> why the last one died.
    pub tasks_down: BTreeMap<&'static str, String>,
    pub rounds_started: u64,
    pub rounds_completed: u64,
    pub records: Records,
    pub events: Events,
    /// End-to-end latency over the sliding window.
    pub latency: LatencySummary,
    /// The same latency split into hops, over the same window.
    pub hops: HopsReport,
    pub availability_ratio: Option<f64>,
    pub freshness_seconds: f64,
    pub slos: Vec<SloVerdict>,
    /// sent == ok + lost + corrupt + send_failed + in_flight (always true; shown so nobody has
    /// to take it on trust).
    pub conserved: bool,
    /// Records in flight and finished ids remembered (bounded by `max_in_flight`).
    pub tracked_in_flight: usize,
    pub tracked_finished: usize,
    /// The last results (every outcome), newest first.
    pub last_results: Vec<RecordBrief>,
    /// The slowest verified records of the window, slowest first: from a latency outlier to
    /// its trace.
    pub slowest: Vec<RecordBrief>,
    /// Why its records failed (since the agent started), the job's state, where a downstream
    /// topic stands: the verdict's account.
    #[serde(flatten)]
    pub why: Why,
}

/// One record in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct RecordBrief {
    pub record_id: String,
    pub outcome: &'static str,
    pub partition: i32,
    pub offset: Option<i64>,
    pub seq: u64,
    /// RFC 3339, UTC.
    pub scheduled_at: String,
    pub latency_ms: Option<f64>,
    /// Its latency split into hops, ms (they add up to `latency_ms`; negative when a clock
    /// was behind).
    pub hops_ms: Option<serde_json::Map<String, serde_json::Value>>,
    /// Why it is not ok: a short kind, and the sentence.
    pub reason: Option<&'static str>,
    pub detail: Option<String>,
    pub trace_id: String,
    /// The span that carries the outcome.
    pub span_id: String,
    /// What the job it went through was doing while it was in flight (a record that is not
    /// `ok`, or a slow one, of a probe naming its `job`).
    pub job: Option<String>,
}

impl From<&Noted> for RecordBrief {
    fn from(n: &Noted) -> Self {
        let scheduled = std::time::UNIX_EPOCH + Duration::from_nanos(n.scheduled_at_ns);
        RecordBrief {
            record_id: n.id.hyphenated().to_string(),
            outcome: n.outcome.as_str(),
            partition: n.partition,
            offset: n.offset,
            seq: n.seq,
            scheduled_at: humantime::format_rfc3339_micros(scheduled).to_string(),
            latency_ms: n
                .latency
                .map(|l| hops::micros(i64::try_from(l.as_nanos()).unwrap_or(i64::MAX)) / 1e3),
            hops_ms: n.hops.as_ref().map(hops::record_hops),
            reason: n.reason.as_ref().map(|r| r.kind),
            detail: n.reason.as_ref().map(|r| r.detail.clone()),
            trace_id: n.trace_id.to_string(),
            span_id: n.span_id.to_string(),
            job: n.job.as_ref().map(|j| j.to_string()),
        }
    }
}

impl ProbeStatus {
    pub fn new(probe: &Probe, s: &Snapshot) -> Self {
        let c = s.progress.counts;
        ProbeStatus {
            name: probe.config.name.clone(),
            cluster: probe.config.cluster.clone(),
            topic: probe.config.topic.clone(),
            tags: probe.config.tags.clone(),
            verify: probe.config.verify.kind(),
            verify_cluster: probe.verify_cluster.clone(),
            verify_topic: probe.verify_topic.clone(),
            poll_interval_ms: poll_ms(probe),
            sink: s.sink.clone(),
            partitions: s.progress.partitions.clone(),
            leaders: s.progress.leaders.clone(),
            discovery_error: s.progress.discovery_error.clone(),
            refused: s.progress.refused.clone(),
            tasks_down: s
                .progress
                .down
                .iter()
                .map(|(task, (_, why))| (task.as_str(), why.clone()))
                .collect(),
            rounds_started: s.progress.rounds_started,
            rounds_completed: s.progress.rounds_completed,
            records: c.into(),
            events: Events::of(s),
            latency: LatencySummary::new(s.e2e_window_count, s.e2e_window),
            hops: HopsReport::new(probe, &s.hops, hops::Span::Window),
            availability_ratio: s.availability,
            freshness_seconds: s.freshness.as_secs_f64(),
            slos: s.slos.iter().map(SloVerdict::from).collect(),
            conserved: c.conserved(),
            tracked_in_flight: s.footprint.pending,
            tracked_finished: s.footprint.recent,
            last_results: s.last.iter().map(RecordBrief::from).collect(),
            slowest: s.slowest.iter().map(RecordBrief::from).collect(),
            why: Why::of(probe, s),
        }
    }
}
