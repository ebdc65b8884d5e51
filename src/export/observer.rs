//! The probe's observer: every [`Event`] a probe reports becomes its counters (under the probe's
//! lock, in [`Observer::count`]) and its log line and spans (after it, in
//! [`Observer::report`]), in one place per event: the arm of [`ProbeObserver::on`] that
//! handles it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::events::{self, ReadBack};
use super::metrics::{Metrics, ProbeMetrics, SinkMetrics};
use super::traces::{RecordSpan, Spans};
use crate::config::ProbeConfig;
use crate::outcome::{Event, ForeignReason, Gauges, HopPlan, Observer, Outcome, Reading, Task};
use crate::record::Origin;
use crate::util::quiet::Quiet;
use prometheus::IntCounter;

/// How often foreign records are logged (one in full, then a summary of the others): anyone
/// who can write the topic could otherwise flood the logs.
pub const FOREIGN_LOG_EVERY: Duration = Duration::from_secs(60);

/// Log lines per kind of record event (each failed outcome, duplicates, late arrivals,
/// reorderings) in a [`RECORD_LOG_EVERY`] of an agent that runs until stopped: an outage at 300 records a second, or someone
/// replaying the topic, would otherwise write hundreds of lines a second. The rest are counted
/// (as every record is, in the metrics) and summed up in one line with the next line of their
/// kind.
pub const RECORD_LOG_BURST: u64 = 10;
pub const RECORD_LOG_EVERY: Duration = Duration::from_secs(60);

/// Kinds of record events whose log lines are limited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordLine {
    Finished(Outcome),
    Duplicate,
    Late,
    Reordered,
}

impl RecordLine {
    const COUNT: usize = Outcome::ALL.len() + 3;

    fn index(self) -> usize {
        match self {
            RecordLine::Finished(o) => o.index(),
            RecordLine::Duplicate => Outcome::ALL.len(),
            RecordLine::Late => Outcome::ALL.len() + 1,
            RecordLine::Reordered => Outcome::ALL.len() + 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordLine::Finished(o) => o.as_str(),
            RecordLine::Duplicate => "duplicate",
            RecordLine::Late => "late_arrival",
            RecordLine::Reordered => "reordered",
        }
    }
}

/// Per kind: when its current period began, lines logged in it, and events not logged since
/// the last summary.
#[derive(Default)]
struct RecordLog([(Option<Instant>, u64, u64); RecordLine::COUNT]);

impl RecordLog {
    /// Whether a line of `kind` may be logged at `now`, and how many of its kind went unlogged
    /// before it (to be summed up first).
    fn allow(&mut self, kind: RecordLine, now: Instant) -> (bool, u64) {
        let (began, logged, quiet) = &mut self.0[kind.index()];
        if began.is_none_or(|b| now.duration_since(b) >= RECORD_LOG_EVERY) {
            *began = Some(now);
            *logged = 0;
        }
        if *logged < RECORD_LOG_BURST {
            *logged += 1;
            (true, std::mem::take(quiet))
        } else {
            *quiet += 1;
            (false, 0)
        }
    }
}

/// One probe's metrics, log lines and spans.
pub struct ProbeObserver {
    metrics: Arc<Metrics>,
    series: ProbeMetrics,
    /// For a probe that polls a sink.
    sink: Option<SinkMetrics>,
    spans: Arc<Spans>,
    origin: Origin,
    /// The probe topic (spans name it), and where records are read back or looked up.
    topic: String,
    verify_topic: String,
    /// `postgres` or `http` for a probe that polls a sink.
    sink_kind: Option<crate::config::SinkKind>,
    foreign_log: Mutex<ForeignLog>,
    /// `None` for a finite run (`smoke`): it logs every record event, as many as it sends.
    record_log: Option<Mutex<RecordLog>>,
    /// Failed sink polls and registry requests are logged once a minute per kind.
    sink_errors: Quiet,
    /// Failed Schema Registry requests, indexed like `RegistryErrorKind::ALL`; present for a
    /// probe that uses a registry.
    registry_errors: Option<[IntCounter; 4]>,
    /// For a probe verifying on a downstream topic: when a record was last read from it.
    output_read: Option<prometheus::Gauge>,
}

/// Foreign records seen since the last one logged.
#[derive(Default)]
struct ForeignLog {
    /// When the last one was logged in full.
    logged_at: Option<Instant>,
    /// Seen since, by reason (indexed like [`ForeignReason::ALL`]).
    quiet: [u64; ForeignReason::ALL.len()],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Count,
    Report,
}

impl ProbeObserver {
    /// The series of the probe `config` (every one exported at zero from here on), spans
    /// through `spans`.
    pub fn new(
        metrics: Arc<Metrics>,
        spans: Arc<Spans>,
        config: &ProbeConfig,
        origin: Origin,
    ) -> Self {
        let verifier = match config.verify.kafka() {
            Some(_) => Task::KafkaVerifier,
            None => Task::SinkPoller,
        };
        let mut tasks = vec![Task::SendLoop, Task::Discovery, Task::TopicWatch, verifier];
        if config.schema_registry.is_some() {
            tasks.push(Task::SchemaRegistry);
        }
        if config.job.is_some() {
            tasks.push(Task::JobPoller);
        }
        let series = metrics.probe(
            &config.name,
            &config.slos,
            config.per_partition_metrics,
            &tasks,
            &HopPlan::of(config),
        );
        let sink = config
            .verify
            .poll()
            .map(|poll| metrics.sink(&config.name, poll));
        let verify_topic = match config.verify.kafka() {
            Some(k) => k.topic.clone(),
            None => config.verify.kind().to_string(),
        };
        let registry_errors = uses_registry(config).then(|| metrics.registry_errors(&config.name));
        let output_read = config
            .verifies_downstream()
            .then(|| metrics.output_last_read(&config.name));
        ProbeObserver {
            metrics,
            series,
            sink,
            spans,
            origin,
            topic: config.topic.clone(),
            verify_topic,
            sink_kind: config.verify.sink_kind(),
            foreign_log: Mutex::default(),
            record_log: Some(Mutex::default()),
            sink_errors: Quiet::default(),
            registry_errors,
            output_read,
        }
    }

    /// Logs every record event: for a finite run, whose lines are bounded by the records it
    /// sends and whose reader wants each failed record.
    pub fn every_record_logged(mut self) -> Self {
        self.record_log = None;
        self
    }

    /// Each event's counters and its log line and spans, side by side.
    fn on(&self, event: &Event<'_>, phase: Phase) {
        use Phase::{Count, Report};
        let s = &self.series;
        match (event, phase) {
            (
                Event::Scheduled {
                    partition,
                    in_flight,
                },
                Count,
            ) => {
                s.sent.inc();
                s.in_flight.set(*in_flight as i64);
                if let Some(p) = &s.partitions
                    && *partition >= 0
                {
                    p.sent(*partition);
                }
            }
            (Event::Scheduled { .. }, Report) => {}

            (
                Event::Settled {
                    finished: f,
                    in_flight,
                    reordered,
                    ..
                },
                Count,
            ) => {
                s.outcome(f.outcome).inc();
                s.in_flight.set(*in_flight as i64);
                if let Some(p) = &s.partitions
                    && f.partition >= 0
                {
                    p.outcome(f.partition, f.outcome);
                }
                if f.outcome == Outcome::Ok
                    && let Some(latency) = f.latency
                {
                    s.e2e_distribution.observe(latency.as_secs_f64());
                    // A hop negative beyond its resolution: counted, kept out of its quantiles.
                    if let Some(h) = f.hops() {
                        let skewed = s
                            .hops
                            .iter()
                            .filter(|series| h.reading(series.hop) == Some(Reading::Skewed));
                        for skew in skewed.filter_map(|series| series.skew.as_ref()) {
                            skew.skewed.inc();
                        }
                    }
                }
                if *reordered {
                    s.reordered.inc();
                }
            }
            (
                Event::Settled {
                    finished,
                    topic,
                    reordered,
                    ..
                },
                Report,
            ) => {
                if finished.outcome != Outcome::Ok
                    && self.record_line(RecordLine::Finished(finished.outcome), topic)
                {
                    let read = ReadBack::of(&self.verify_topic, finished);
                    events::finished(&self.origin, &self.topic, &read, finished);
                }
                self.spans.record(&RecordSpan {
                    origin: &self.origin,
                    topic: &self.topic,
                    verify_topic: &self.verify_topic,
                    sink: self.sink_kind,
                    finished,
                });
                if *reordered && self.record_line(RecordLine::Reordered, topic) {
                    let read = ReadBack::of(&self.verify_topic, finished);
                    events::reordered(&self.origin, &self.topic, &read, finished);
                }
            }

            (Event::SloJudged { slo, good }, Count) => {
                if let Some((good_events, bad_events)) = s.slo_events.get(*slo) {
                    if *good { good_events } else { bad_events }.inc();
                }
            }
            (Event::SloJudged { .. }, Report) => {}

            (Event::Duplicate { .. }, Count) => s.duplicates.inc(),
            (
                Event::Duplicate {
                    seen,
                    id,
                    partition,
                    forgotten,
                },
                Report,
            ) => {
                if self.record_line(RecordLine::Duplicate, seen.topic) {
                    events::duplicate(&self.origin, &self.topic, seen, id, *partition, *forgotten)
                }
            }

            (Event::Late { .. }, Count) => s.late.inc(),
            (
                Event::Late {
                    seen,
                    id,
                    latency,
                    partition,
                },
                Report,
            ) => {
                if self.record_line(RecordLine::Late, seen.topic) {
                    events::late(&self.origin, &self.topic, seen, id, *latency, *partition)
                }
            }

            (Event::Foreign { reason, .. }, Count) => s.foreign(*reason).inc(),
            (Event::Foreign { seen, reason }, Report) => self.foreign_logged(seen, *reason),

            (Event::SinkPolled { error, .. }, Count) => {
                if let Some(sink) = &self.sink {
                    sink.polls.inc();
                    if let Some(e) = error {
                        sink.error(e.kind).inc();
                    }
                }
            }
            (
                Event::SinkPolled {
                    sink,
                    pending,
                    error,
                    failures,
                },
                Report,
            ) => match error {
                // Once a minute per kind of error (its text may vary with every poll); the
                // rest at debug level. Every failure is counted.
                Some(e) if self.sink_errors.allow(e.kind.as_str()) => {
                    tracing::warn!(probe = %self.origin.probe, sink, reason = e.kind.as_str(), error = %e.message, pending, "sink poll failed; retrying with backoff")
                }
                Some(e) => {
                    tracing::debug!(probe = %self.origin.probe, sink, reason = e.kind.as_str(), error = %e.message, "sink poll failed")
                }
                None if *failures > 0 => {
                    tracing::info!(probe = %self.origin.probe, sink, failures, "sink reachable again")
                }
                None => {}
            },

            (Event::Partitions { leaders }, Count) => {
                if let Some(p) = &s.partitions {
                    for (partition, leader) in leaders.iter() {
                        p.add(*partition, *leader);
                    }
                }
            }
            (Event::Partitions { .. }, Report) => {}

            (Event::TaskDown { task, .. }, Count) => {
                if let Some((_, c)) = s.task_restarts.iter().find(|(t, _)| t == task) {
                    c.inc();
                }
            }
            (
                Event::TaskDown {
                    task,
                    why,
                    restart_in,
                },
                Report,
            ) => match restart_in {
                Some(wait) => tracing::error!(
                    probe = %self.origin.probe,
                    task = task.as_str(),
                    error = %why,
                    restart_in = %humantime::format_duration(*wait),
                    "task failed; restarting it"
                ),
                None => tracing::error!(
                    probe = %self.origin.probe,
                    task = task.as_str(),
                    error = %why,
                    "task failed while the agent stops"
                ),
            },

            (Event::TaskUp { .. }, Count) => {}
            (Event::TaskUp { task }, Report) => {
                tracing::info!(probe = %self.origin.probe, task = task.as_str(), "task restarted")
            }

            (Event::SendLag { lag }, Count) => self.metrics.observe_send_lag(*lag),
            (Event::SendLag { .. }, Report) => {}

            (Event::RegistryFailed { reason, .. }, Count) => {
                if let Some(all) = &self.registry_errors {
                    // Indexed like RegistryErrorKind::ALL, as the sink's errors are.
                    all[*reason as usize].inc();
                }
            }
            (
                Event::RegistryFailed {
                    reason,
                    error,
                    during,
                },
                Report,
            ) => {
                let reason = reason.as_str();
                if self.sink_errors.allow(&format!("registry:{reason}")) {
                    tracing::warn!(probe = %self.origin.probe, reason, during, error, "schema registry request failed; retrying with backoff")
                } else {
                    tracing::debug!(probe = %self.origin.probe, reason, during, error, "schema registry request failed")
                }
            }

            (Event::TimestampMissing { .. }, Count) => {}
            (
                Event::TimestampMissing {
                    field,
                    name,
                    records,
                    why,
                },
                Report,
            ) => tracing::warn!(
                probe = %self.origin.probe,
                field,
                name = %name,
                records,
                why = %why,
                "`{field}` ({name}) is in none of the first {records} verified records: no hop is split at it; check it against what the pipeline writes"
            ),

            (Event::Ready { .. }, Count) => {}
            (Event::Ready { ok, settled }, Report) => {
                tracing::info!(probe = %self.origin.probe, ok, settled, "first round settled: probe ready")
            }
        }
    }

    /// Whether a record event of `kind` gets its line ([`RECORD_LOG_BURST`] per
    /// [`RECORD_LOG_EVERY`]); the summary of those left out since goes first.
    fn record_line(&self, kind: RecordLine, topic: &str) -> bool {
        let Some(log) = &self.record_log else {
            return true;
        };
        let (allowed, quiet) = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(kind, Instant::now());
        if quiet > 0 {
            events::record_summary(&self.origin, topic, kind.as_str(), quiet);
        }
        allowed
    }

    /// Every foreign record is counted; one a minute is logged, with a summary of the others.
    fn foreign_logged(&self, seen: &crate::outcome::Seen<'_>, reason: ForeignReason) {
        let now = Instant::now();
        let quiet = {
            let mut log = self.foreign_log.lock().unwrap_or_else(|e| e.into_inner());
            if log
                .logged_at
                .is_some_and(|at| now.duration_since(at) < FOREIGN_LOG_EVERY)
            {
                let i = ForeignReason::ALL.iter().position(|r| *r == reason);
                log.quiet[i.unwrap_or(0)] += 1;
                return;
            }
            log.logged_at = Some(now);
            std::mem::take(&mut log.quiet)
        };
        if quiet.iter().any(|n| *n > 0) {
            events::foreign_summary(&self.origin, seen.topic, &quiet);
        }
        events::foreign(&self.origin, seen, reason);
    }
}

impl Observer for ProbeObserver {
    fn count(&self, event: &Event<'_>) {
        // Shared with every other count; a scrape gathers under the exclusive side.
        let _consistent = self.metrics.update();
        self.on(event, Phase::Count);
    }

    fn report(&self, event: &Event<'_>) {
        self.on(event, Phase::Report);
    }

    fn gauges(&self, g: &Gauges) {
        let s = &self.series;
        s.e2e.set(g.e2e);
        s.produce.set(g.produce);
        for h in &s.hops {
            let hop = &g.hops[h.hop.index()];
            h.latency.set(hop.latency);
            if let Some(skew) = &h.skew {
                skew.largest.set(hop.largest_skew.as_secs_f64());
            }
        }
        s.availability.set(g.availability.unwrap_or(f64::NAN));
        s.freshness.set(g.freshness.as_secs_f64());
        if let (Some(series), Some(ms)) = (&self.output_read, g.output_read_ms) {
            series.set(ms as f64 / 1e3);
        }
        for (i, slo) in g.slos.iter().enumerate() {
            if let (Some(budget), Some(burn)) = (s.budget.get(i), s.burn.get(i)) {
                budget.set(slo.budget_remaining);
                for (gauge, rate) in burn.iter().zip(slo.burn_rates) {
                    gauge.set(rate.unwrap_or(f64::NAN));
                }
            }
        }
    }
}

/// Whether a probe talks to a Schema Registry.
fn uses_registry(config: &ProbeConfig) -> bool {
    config.schema_registry.is_some() || config.verify.kafka().is_some_and(|k| k.avro.is_some())
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;
    use tokio::time::Instant;

    use super::*;
    use crate::export::metrics::names;
    use crate::probe::Probe;
    use crate::record::View;
    use crate::testing::{arrive, round};

    fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
        scrape
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(labels))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    }

    /// A scrape, checking conservation on it.
    fn scrape(p: &Probe, metrics: &Metrics) -> String {
        p.refresh_gauges(Instant::now());
        let m = metrics.render();
        let sent = sample(&m, names::RECORDS_SENT, "").unwrap();
        let settled: f64 = ["ok", "lost", "corrupt", "send_failed"]
            .iter()
            .map(|o| sample(&m, names::RECORDS, &format!("outcome=\"{o}\"")).unwrap())
            .sum();
        assert_eq!(
            sent,
            settled + sample(&m, names::IN_FLIGHT, "").unwrap(),
            "conservation:\n{m}"
        );
        m
    }

    /// A probe verifying on a downstream topic exports when a record was last read from it
    /// (NaN before the first); a probe on its own topic does not have the series.
    #[tokio::test(start_paused = true)]
    async fn where_a_downstream_topic_stands_is_exported() {
        let (p, metrics) = crate::testing::observed(
            "name: down\nverify:\n  kafka: { topic: orders-enriched, id_from: header }\n",
        );
        let m = scrape(&p, &metrics);
        assert!(
            sample(&m, names::OUTPUT_LAST_READ, "probe=\"down\"")
                .unwrap()
                .is_nan(),
            "{m}"
        );
        p.output_read(1_700_000_000_250);
        let m = scrape(&p, &metrics);
        assert_eq!(
            sample(&m, names::OUTPUT_LAST_READ, "probe=\"down\""),
            Some(1_700_000_000.25)
        );
        let (own, metrics) = crate::testing::observed("name: own\n");
        assert!(!scrape(&own, &metrics).contains(names::OUTPUT_LAST_READ));
    }

    #[tokio::test(start_paused = true)]
    async fn per_partition_series_only_when_asked_for() {
        for (flag, expected) in [("false", false), ("true", true)] {
            let (p, metrics) = crate::testing::observed(&format!(
                "name: parts\npartitions: [0, 1]\nper_partition_metrics: {flag}\n"
            ));
            p.set_partitions(Ok(&crate::kafka::Partitions::from([(0, 1), (1, 2)])));
            let records = round(&p, 0, &[0, 1]);
            arrive(&p, &records[0]);
            tokio::time::advance(Duration::from_secs(31)).await;
            p.expire(Instant::now());
            let m = scrape(&p, &metrics);
            let lost_1 = sample(&m, names::PARTITION_RECORDS, "partition=\"1\"");
            assert_eq!(m.contains(names::PARTITION_RECORDS), expected, "{flag}");
            if expected {
                assert_eq!(
                    sample(&m, names::PARTITION_RECORDS_SENT, "partition=\"0\""),
                    Some(1.0)
                );
                let ok0 = format!(
                    "{}{{outcome=\"ok\",partition=\"0\",probe=\"parts\",site=\"default\"}} 1",
                    names::PARTITION_RECORDS
                );
                let lost1 = format!(
                    "{}{{outcome=\"lost\",partition=\"1\",probe=\"parts\",site=\"default\"}} 1",
                    names::PARTITION_RECORDS
                );
                assert!(m.contains(&ok0) && m.contains(&lost1), "{m}");
                assert_eq!(
                    sample(&m, names::PARTITION_LEADER, "partition=\"1\""),
                    Some(2.0)
                );
            } else {
                assert_eq!(lost_1, None);
            }
        }
    }

    /// A hop that came out negative is counted per hop, the largest shown, and kept out of the
    /// hop's quantiles; the others are in them.
    #[tokio::test(start_paused = true)]
    async fn hops_are_exported_and_a_negative_one_is_counted_as_skew() {
        use crate::kafka::Deliveries;
        use crate::outcome::{Mark, Stamp, Stamps};
        let (p, metrics) =
            crate::testing::observed("name: d\ntopic: in\nverify:\n  kafka: { topic: out }\n");
        let records = round(&p, 0, &[0, 1]);
        tokio::time::advance(Duration::from_millis(1)).await;
        for (offset, r) in records.iter().enumerate() {
            p.delivered(&r.id, Instant::now(), Ok(offset as i64));
        }
        tokio::time::advance(Duration::from_millis(9)).await;
        // scheduled at 0 ns (the wall clock), acknowledged at 1 ms: the broker's append time at
        // 4 ms makes a 3 ms pipeline; at -1 ms, before the record was even sent (its clock
        // behind), -2 ms
        for (r, at_ms) in records.iter().zip([4, -1]) {
            let stamps = Stamps {
                downstream: Some(Ok(Stamp {
                    at_ns: at_ms * 1_000_000,
                    mark: Mark::LogAppendTime,
                    resolution_ns: 1_000,
                })),
                ..Stamps::default()
            };
            crate::testing::arrive_with(&p, r, &stamps);
        }
        let m = scrape(&p, &metrics);
        let hop = |name: &str, hop: &str, more: &str| {
            sample(&m, name, &format!("hop=\"{hop}\",probe=\"d\"{more}"))
        };
        assert_eq!(hop(names::CLOCK_SKEW, "pipeline", ""), Some(1.0), "{m}");
        assert_eq!(hop(names::CLOCK_SKEW, "read", ""), Some(0.0));
        assert_eq!(hop(names::CLOCK_SKEW_MAX, "pipeline", ""), Some(0.002));
        assert_eq!(hop(names::CLOCK_SKEW_MAX, "read", ""), Some(0.0));
        // the produce hop is on the agent's clock alone: it cannot be skewed
        assert_eq!(hop(names::CLOCK_SKEW, "produce", ""), None);
        let count = format!("{}_count", names::HOP_LATENCY);
        assert_eq!(hop(&count, "produce", ""), Some(2.0));
        let count = format!("{}_count", names::HOP_LATENCY);
        assert_eq!(
            hop(&count, "pipeline", ""),
            Some(1.0),
            "the negative one left out"
        );
        assert_eq!(hop(&count, "read", ""), Some(2.0));
        let p50 = hop(
            names::HOP_LATENCY,
            "pipeline",
            ",site=\"default\",quantile=\"0.5\"",
        );
        let p50 = p50.unwrap();
        assert!((p50 - 0.003).abs() < 1e-5, "{p50}");
        assert!(!m.contains("hop=\"sink\""), "no sink hop on a topic: {m}");
    }

    /// A flood of foreign records is counted exactly, and logged once a minute: one in full,
    /// then a summary of the others by reason.
    #[tokio::test(start_paused = true)]
    async fn foreign_records_are_counted_but_logged_once_a_minute() {
        let (logs, _guard) = crate::export::logging::captured();
        let (p, metrics) = crate::testing::observed("name: flooded\n");
        let garbage = OwnedMessage::new(
            Some(b"not json".to_vec()),
            None,
            p.config.topic.clone(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        );
        let view = View::of(&garbage);
        for i in 0..1000 {
            let reason = if i % 10 == 0 {
                ForeignReason::MissingHeaders
            } else {
                ForeignReason::Unparseable
            };
            p.foreign(&view, reason);
        }
        let single = "record on the probe topic is not a valid probe record";
        assert_eq!(logs.events(single).len(), 1, "the first one only");
        tokio::time::advance(FOREIGN_LOG_EVERY).await;
        p.foreign(&view, ForeignReason::UnknownVersion);
        assert_eq!(logs.events(single).len(), 2);
        let summary = logs.events_starting("999 more records on the probe topic");
        assert_eq!(summary.len(), 1, "one summary of the quiet ones");
        let f = &summary[0]["fields"];
        assert_eq!(
            (
                &f["unparseable"],
                &f["missing_headers"],
                &f["unknown_version"]
            ),
            (
                &serde_json::json!(900),
                &serde_json::json!(99),
                &serde_json::json!(0)
            )
        );
        let m = scrape(&p, &metrics);
        let counted = |r: &str| sample(&m, names::FOREIGN, &format!("reason=\"{r}\""));
        assert_eq!(
            (
                counted("unparseable"),
                counted("missing_headers"),
                counted("unknown_version")
            ),
            (Some(900.0), Some(100.0), Some(1.0)),
            "every one counted"
        );
    }

    /// An outage fails every record: each is counted, ten a minute are logged, and the rest
    /// are summed up with the next line of their kind.
    #[tokio::test(start_paused = true)]
    async fn failed_records_are_counted_but_logged_ten_a_minute() {
        let (logs, _guard) = crate::export::logging::captured();
        let ids: Vec<i32> = (0..50).collect();
        let (p, metrics) = crate::testing::observed(&format!(
            "name: outage\npartitions: {ids:?}\ntimeout: 30s\n"
        ));
        let leaders: crate::kafka::Partitions = ids.iter().map(|&i| (i, 1)).collect();
        let lose_a_round = |seq: u64| {
            p.set_partitions(Ok(&leaders));
            round(&p, seq, &ids);
        };
        lose_a_round(0);
        tokio::time::advance(Duration::from_secs(31)).await;
        p.expire(Instant::now());
        assert_eq!(logs.events("record lost").len(), 10, "ten lines of 50");
        tokio::time::advance(RECORD_LOG_EVERY).await;
        lose_a_round(1);
        tokio::time::advance(Duration::from_secs(31)).await;
        p.expire(Instant::now());
        assert_eq!(logs.events("record lost").len(), 20);
        let summary = logs.events_starting("40 more lost records");
        assert_eq!(summary.len(), 1, "{:?}", logs.events_starting(""));
        assert_eq!(summary[0]["fields"]["count"], serde_json::json!(40));
        let m = scrape(&p, &metrics);
        assert_eq!(
            sample(&m, names::RECORDS, "outcome=\"lost\""),
            Some(100.0),
            "every one counted"
        );
    }
}
