//! A probe: its configuration, in-flight tracker, measurements and metrics, behind one mutex
//! shared by the task that sends its records ([`task`]), the delivery reports, and the verifier
//! that sees them come back. The mutex is never held across an await or around I/O.

mod clock;
pub mod discovery;
mod notable;
pub mod task;
mod tracker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::outcome::{Counts, Finished, Outcome, PartitionCounts, Reason, Seen, Task};
pub use notable::{LAST, Noted, SLOWEST};
pub use tracker::{Arrival, Footprint, Tracker};

use crate::config::{AgentConfig, KafkaVerify, ProbeConfig};
use crate::export::events;
use crate::export::metrics::{Metrics, ProbeMetrics, SinkMetrics};
use crate::export::traces::{RecordSpan, Spans};
use crate::kafka;
use crate::outcome::SinkError;
use crate::record::{self, Expected, ForeignReason, Origin, Outgoing, View};
use crate::stats::{self, Availability, Latency, SloState, SloSummary};

/// What a probe is doing, for `/readyz`, `/status`, smoke progress and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub counts: Counts,
    pub rounds_started: u64,
    pub rounds_completed: u64,
    /// Partitions currently probed (empty until discovered).
    pub partitions: Vec<i32>,
    /// Leader broker of each probed partition at the last metadata refresh.
    pub leaders: BTreeMap<i32, i32>,
    /// Why partitions could not be discovered, while that is the case.
    pub discovery_error: Option<String>,
    /// Stopped sending, and every record has its final outcome.
    pub finished: bool,
    /// Supervised tasks serving this probe that are down (panicked or ended), with how many
    /// of that kind are down and why the last one died; they are being restarted.
    pub down: BTreeMap<Task, (u32, String)>,
}

struct Core {
    tracker: Tracker,
    e2e: Latency,
    produce: Latency,
    availability: Availability,
    /// Scheduled send time of the newest verified record.
    newest_verified: Option<Instant>,
    slos: Vec<SloState>,
    notable: notable::Notable,
    /// "probe ready" was logged.
    announced_ready: bool,
}

pub struct Probe {
    pub config: ProbeConfig,
    pub origin: Origin,
    /// Cluster the records are read back from; `None` for a probe that polls a sink.
    pub verify_cluster: Option<String>,
    /// The topic records are read back from, or the kind of sink they are looked up in.
    pub verify_topic: String,
    /// Records come back on the topic they were sent to, so on the same partition.
    same_topic: bool,
    /// For a probe that polls a sink.
    sink: Option<SinkState>,
    started: Instant,
    metrics: Arc<Metrics>,
    series: ProbeMetrics,
    spans: Arc<Spans>,
    /// Share of records whose traces are sampled.
    sampling_ratio: f64,
    core: Mutex<Core>,
    progress: watch::Sender<Progress>,
    /// Records on the verify topic that are not probe records.
    foreign: AtomicU64,
    /// Foreign records are logged one a minute, the rest summarised: anyone who can write the
    /// topic could otherwise flood the logs.
    foreign_log: Mutex<ForeignLog>,
}

/// How often foreign records are logged (one in full, then a summary of the others).
pub const FOREIGN_LOG_EVERY: Duration = Duration::from_secs(60);

/// Foreign records seen since the last one logged.
#[derive(Default)]
struct ForeignLog {
    /// When the last one was logged in full.
    logged_at: Option<Instant>,
    /// Seen since, by reason (indexed like [`ForeignReason::ALL`]).
    quiet: [u64; 3],
}

/// What a probe that polls a sink keeps besides its records.
struct SinkState {
    /// Woken when the broker acknowledges a record (the poller's cue).
    acknowledged: tokio::sync::Notify,
    /// Polls and failed polls by reason: the only count of them.
    series: SinkMetrics,
    last_error: Mutex<Option<String>>,
}

/// A sink poller's record: polls, failed polls, the last failure.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SinkSummary {
    pub polls: u64,
    pub errors: u64,
    /// The last failure's reason and message (never a credential).
    pub last_error: Option<String>,
}

/// Everything known about a probe at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub progress: Progress,
    pub partitions: BTreeMap<i32, PartitionCounts>,
    /// Quantiles over the whole run, seconds (kept for finite runs only).
    pub e2e_total: Option<[f64; 6]>,
    pub e2e_count: u64,
    pub produce_total: Option<[f64; 6]>,
    pub produce_count: u64,
    /// Quantiles over the sliding window, seconds.
    pub e2e_window: Option<[f64; 6]>,
    pub e2e_window_count: u64,
    pub availability: Option<f64>,
    pub freshness: Duration,
    pub slos: Vec<SloSummary>,
    pub foreign: u64,
    pub footprint: Footprint,
    /// The last results, newest first.
    pub last: Vec<Noted>,
    /// The slowest verified records of the window, slowest first.
    pub slowest: Vec<Noted>,
    /// For a probe that polls a sink.
    pub sink: Option<SinkSummary>,
}

impl Probe {
    /// `run_totals`: keep histograms of the whole run too (for a finite run's verdict).
    pub fn new(
        config: ProbeConfig,
        agent: &AgentConfig,
        metrics: Arc<Metrics>,
        spans: Arc<Spans>,
        run_totals: bool,
    ) -> Self {
        let now = Instant::now();
        let (verify_cluster, verify_topic) = match config.verify.kafka() {
            Some(k) => (Some(k.cluster.clone()), k.topic.clone()),
            None => (None, config.verify.kind().to_string()),
        };
        let same_topic =
            verify_cluster.as_ref() == Some(&config.cluster) && verify_topic == config.topic;
        let verifier = match config.verify.kafka() {
            Some(_) => Task::KafkaVerifier,
            None => Task::SinkPoller,
        };
        let tasks = [Task::SendLoop, Task::Discovery, Task::TopicWatch, verifier];
        let series = metrics.probe(
            &config.name,
            &config.slos,
            config.per_partition_metrics,
            &tasks,
        );
        let sink = config.verify.poll().map(|poll| SinkState {
            acknowledged: tokio::sync::Notify::new(),
            series: metrics.sink(&config.name, poll),
            last_error: Mutex::new(None),
        });
        // Finished ids are remembered long enough to tell duplicates and late arrivals from
        // unknown records: ten timeouts, and at least the sliding window.
        let retention = (config.timeout * 10).max(agent.window);
        let core = Core {
            tracker: Tracker::new(config.timeout, retention, config.max_in_flight),
            e2e: Latency::new(agent.window, now, run_totals),
            produce: Latency::new(agent.window, now, run_totals),
            availability: Availability::new(agent.window, now),
            newest_verified: None,
            announced_ready: false,
            notable: notable::Notable::new(agent.window, now),
            slos: config
                .slos
                .iter()
                .map(|s| SloState::new(s.clone(), now))
                .collect(),
        };
        Probe {
            origin: Origin {
                probe: config.name.clone(),
                instance: agent.instance.clone(),
                site: agent.site.clone(),
            },
            config,
            verify_cluster,
            verify_topic,
            same_topic,
            sink,
            started: now,
            metrics,
            series,
            spans,
            sampling_ratio: agent.tracing.as_ref().map_or(1.0, |t| t.sampling_ratio),
            core: Mutex::new(core),
            progress: watch::Sender::new(Progress::default()),
            foreign: AtomicU64::new(0),
            foreign_log: Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Follows the probe's progress. A `wait_for` closure must only look at the value it is
    /// given: it runs under the channel's read lock, which this probe's own updates need.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, core: &mut Core) {
        let counts = core.tracker.counts();
        let completed = core.tracker.rounds_completed();
        self.progress.send_if_modified(|p| {
            let changed = p.counts != counts || p.rounds_completed != completed;
            p.counts = counts;
            p.rounds_completed = completed;
            changed
        });
        // Said once, when a round has settled and a record was verified: a round whose records
        // all failed is settled, but the probe is not working.
        let ok = counts.get(Outcome::Ok);
        if !core.announced_ready && completed > 0 && ok > 0 {
            core.announced_ready = true;
            tracing::info!(probe = %self.origin.probe, ok, settled = counts.finished(), "first round settled: probe ready");
        }
    }

    /// Registers the records of one round; returns those to send. Records over the in-flight
    /// bound are settled at once (`send_failed`, backpressure) and not returned.
    pub(crate) fn register(
        &self,
        round: u64,
        scheduled: Instant,
        records: Vec<Outgoing>,
    ) -> Vec<Outgoing> {
        self.register_round(round, scheduled, records, None)
    }

    /// Counts the records of a round that cannot be sent (`reason`: its topic's partitions are
    /// unknown) as sent and settles them `send_failed` at once.
    pub(crate) fn refuse(
        &self,
        round: u64,
        scheduled: Instant,
        records: Vec<Outgoing>,
        reason: Reason,
    ) {
        let sent = self.register_round(round, scheduled, records, Some(reason));
        debug_assert!(sent.is_empty());
    }

    fn register_round(
        &self,
        round: u64,
        scheduled: Instant,
        records: Vec<Outgoing>,
        unsendable: Option<Reason>,
    ) -> Vec<Outgoing> {
        let mut core = self.lock();
        let mut refused = Vec::new();
        let mut to_send = Vec::with_capacity(records.len());
        for r in records {
            let expected = Expected::of(&r);
            let partition = r.body.partition;
            let registered = {
                let _consistent = self.metrics.update();
                self.series.sent.inc();
                let registered = match &unsendable {
                    None => core.tracker.register(expected, scheduled, round),
                    Some(reason) => Err(Box::new(core.tracker.refuse(
                        expected,
                        scheduled,
                        round,
                        reason.clone(),
                    ))),
                };
                self.series
                    .in_flight
                    .set(core.tracker.counts().in_flight as i64);
                registered
            };
            if let Some(p) = &self.series.partitions
                && partition >= 0
            {
                p.sent(partition);
            }
            match registered {
                Ok(()) => to_send.push(r),
                Err(f) => {
                    self.apply(&mut core, &f, scheduled);
                    refused.push(f);
                }
            }
        }
        // A held round may be sent after later ones fell due.
        self.progress
            .send_modify(|p| p.rounds_started = p.rounds_started.max(round + 1));
        self.publish(&mut core);
        drop(core);
        for f in &refused {
            self.settled(&self.config.topic, f);
        }
        to_send
    }

    /// A delivery report: the broker's offset, or why the producer gave up.
    pub(crate) fn delivered(&self, id: &Uuid, at: Instant, result: Result<i64, String>) {
        let mut core = self.lock();
        let finished = match result {
            Ok(offset) => {
                if let Some(latency) = core.tracker.ack(id, at, offset) {
                    core.produce.record(at, latency);
                    if let Some(sink) = &self.sink {
                        sink.acknowledged.notify_one();
                    }
                }
                None
            }
            Err(reason) => core.tracker.send_failed(id, at, reason),
        };
        if let Some(f) = &finished {
            self.apply(&mut core, f, at);
        }
        self.publish(&mut core);
        drop(core);
        if let Some(f) = finished {
            self.settled(&self.config.topic, &f);
        }
    }

    /// An own record came back: verify it and settle its outcome or count the event.
    pub fn arrived(&self, view: &View, id: &Uuid, at: Instant) {
        let same_topic = self.same_topic;
        let arrival = self.arrive(id, at, Some(view.offset), |expected| {
            if let Some(k) = self.config.verify.kafka().filter(|k| k.transformed()) {
                record::verify_transformed(expected, view, &k.expect)
            } else {
                // On another topic the partition may differ; everything else must hold.
                record::verify(expected, view, same_topic)
            }
        });
        let place = Seen::from(view);
        match arrival {
            Some(arrival) => self.arrival_logged(view.topic, &place, id, arrival),
            None => {
                let mut core = self.lock();
                core.tracker.forgotten_arrival();
                self.series.late.inc();
                self.publish(&mut core);
                drop(core);
                events::late(&self.origin, &place, id, None);
            }
        }
    }

    /// Settles (or counts) an arrival under the lock; logs and spans come after.
    fn arrive(
        &self,
        id: &Uuid,
        at: Instant,
        offset: Option<i64>,
        check: impl FnOnce(&record::Expected) -> Result<(), record::Corruption>,
    ) -> Option<Arrival> {
        let mut core = self.lock();
        let arrival = core.tracker.arrive(id, at, offset, check);
        match &arrival {
            Some(Arrival::Final {
                finished,
                reordered,
            }) => {
                self.apply(&mut core, finished, at);
                if *reordered {
                    self.series.reordered.inc();
                }
            }
            Some(Arrival::Duplicate) => self.series.duplicates.inc(),
            Some(Arrival::Late { .. }) => self.series.late.inc(),
            None => {}
        }
        self.publish(&mut core);
        arrival
    }

    /// The log lines and spans of an arrival.
    fn arrival_logged(&self, topic: &str, place: &Seen, id: &Uuid, arrival: Arrival) {
        match arrival {
            Arrival::Final {
                finished,
                reordered,
            } => {
                self.settled(topic, &finished);
                if reordered {
                    events::reordered(&self.origin, topic, &finished);
                }
            }
            Arrival::Duplicate => events::duplicate(&self.origin, place, id),
            Arrival::Late { latency } => events::late(&self.origin, place, id, latency),
        }
    }

    /// Whether records come back transformed (ids found per `id_from`).
    pub fn transforms(&self) -> bool {
        self.config
            .verify
            .kafka()
            .is_some_and(KafkaVerify::transformed)
    }

    /// The id a record read back carries, per `id_from` (transformed records only).
    pub fn record_id(&self, view: &View) -> Option<Uuid> {
        self.config
            .verify
            .kafka()
            .and_then(|k| k.id_from.as_ref())
            .and_then(|from| record::transformed_id(view, from))
    }

    /// Records in flight that the broker acknowledged: what a sink poller looks for.
    pub fn pending_ids(&self) -> Vec<Uuid> {
        self.lock().tracker.acked_ids()
    }

    /// Resolves when the broker acknowledged a record since the last call (or now, if it did
    /// before anyone waited); never for a probe that does not poll a sink.
    pub async fn acknowledged(&self) {
        match &self.sink {
            Some(sink) => sink.acknowledged.notified().await,
            None => std::future::pending().await,
        }
    }

    /// A sink poller found the record with this id, as `doc` (a row as a JSON object, or a
    /// document), in the poll that started `at`: settle it after checking its content. Ids
    /// this probe does not know are ignored (a sink holds other rows too).
    pub fn found(&self, id: &Uuid, at: Instant, doc: &serde_json::Value) {
        let arrival = self.arrive(id, at, None, |expected| {
            let expect = self.config.verify.sink().map_or(&[][..], |s| &s.expect);
            record::check_expectations(expected, doc, expect)
        });
        if let Some(arrival) = arrival {
            let place = Seen::sink(&self.verify_topic);
            self.arrival_logged(&self.config.topic, &place, id, arrival);
        }
    }

    /// A sink poll ended, or failed with `error`: counted in the probe's sink series.
    pub fn sink_polled(&self, result: Result<(), &SinkError>) {
        let Some(sink) = &self.sink else { return };
        sink.series.polls.inc();
        if let Err(e) = result {
            sink.series.error(e.kind).inc();
            let last = format!("{}: {}", e.kind.as_str(), e.message);
            *sink.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(last);
        }
    }

    /// Whether this probe sent the record with this id (in flight or recently finished).
    pub fn knows(&self, id: &Uuid) -> bool {
        self.lock().tracker.knows(id)
    }

    /// A record on the probe's verify topic that is not a probe record.
    pub fn foreign(&self, view: &View, reason: ForeignReason) {
        self.series.foreign(reason).inc();
        self.foreign.fetch_add(1, Ordering::Relaxed);
        // Every one is counted; one a minute is logged, with a summary of the others.
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
            events::foreign_summary(&self.origin, view.topic, &quiet);
        }
        events::foreign(&self.origin, view, reason);
    }

    /// Settles every record whose deadline passed.
    pub(crate) fn expire(&self, now: Instant) {
        let mut core = self.lock();
        let expired = core.tracker.expire(now);
        for f in &expired {
            self.apply(&mut core, f, now);
        }
        self.publish(&mut core);
        drop(core);
        for f in &expired {
            self.settled(&self.config.topic, f);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lock().tracker.next_deadline()
    }

    pub fn in_flight(&self) -> u64 {
        self.lock().tracker.counts().in_flight
    }

    /// Whether the next record's trace is sampled.
    pub(crate) fn sample(&self) -> bool {
        self.sampling_ratio >= 1.0 || fastrand::f64() < self.sampling_ratio
    }

    /// A record reached its final outcome (after the metrics were updated): its log line and
    /// its spans.
    fn settled(&self, topic: &str, f: &Finished) {
        events::finished(&self.origin, topic, f);
        self.spans.record(&RecordSpan {
            origin: &self.origin,
            topic: &self.config.topic,
            verify_topic: &self.verify_topic,
            sink: self.sink.is_some().then(|| self.config.verify.kind()),
            finished: f,
        });
    }

    /// Counts, histograms, SLO events and series of one final outcome. Caller holds the lock.
    fn apply(&self, core: &mut Core, f: &Finished, now: Instant) {
        let _consistent = self.metrics.update();
        self.series.outcome(f.outcome).inc();
        if let Some(p) = &self.series.partitions
            && f.partition >= 0
        {
            p.outcome(f.partition, f.outcome);
        }
        self.series
            .in_flight
            .set(core.tracker.counts().in_flight as i64);
        core.availability.record(now, f.outcome);
        core.notable.record(now, f);
        if f.outcome == Outcome::Ok
            && let Some(latency) = f.latency
        {
            core.e2e.record(now, latency);
            self.series.e2e_distribution.observe(latency.as_secs_f64());
            let scheduled = now - latency;
            if core.newest_verified.is_none_or(|n| scheduled > n) {
                core.newest_verified = Some(scheduled);
            }
        }
        for (i, slo) in core.slos.iter_mut().enumerate() {
            match slo.record(now, f.outcome, f.latency) {
                Some(true) => self.series.slo_events[i].0.inc(),
                Some(false) => self.series.slo_events[i].1.inc(),
                None => {}
            }
        }
    }

    /// The tasks this probe depends on.
    pub fn tasks(&self) -> Vec<Task> {
        self.series.task_restarts.iter().map(|(t, _)| *t).collect()
    }

    /// A supervised task serving this probe panicked or ended: counted, and the probe is not
    /// ready until it runs again ([`Probe::task_up`]).
    pub fn task_down(&self, task: Task, why: &str) {
        if let Some((_, c)) = self.series.task_restarts.iter().find(|(t, _)| *t == task) {
            c.inc();
        }
        self.progress.send_modify(|p| {
            let down = p.down.entry(task).or_insert((0, String::new()));
            down.0 += 1;
            down.1 = why.to_string();
        });
    }

    /// A task that was down runs again.
    pub fn task_up(&self, task: Task) {
        self.progress.send_modify(|p| {
            if let Some(down) = p.down.get_mut(&task) {
                down.0 = down.0.saturating_sub(1);
                if down.0 == 0 {
                    p.down.remove(&task);
                }
            }
        });
    }

    /// Discovery found these partitions (or failed); shown by `/status` and smoke.
    pub(crate) fn set_partitions(&self, result: Result<&kafka::Partitions, String>) {
        if let (Ok(found), Some(series)) = (&result, &self.series.partitions) {
            for (partition, leader) in found.iter() {
                series.add(*partition, *leader);
            }
        }
        self.progress.send_modify(|p| match result {
            Ok(found) => {
                p.partitions = found.keys().copied().collect();
                p.leaders = found.clone();
                p.discovery_error = None;
            }
            Err(e) => p.discovery_error = Some(e),
        });
    }

    pub(crate) fn set_finished(&self) {
        self.progress.send_modify(|p| p.finished = true);
    }

    /// Age of the newest verified record (since its scheduled send); since start when none.
    pub fn freshness(&self, now: Instant) -> Duration {
        let core = self.lock();
        self.freshness_of(&core, now)
    }

    fn freshness_of(&self, core: &Core, now: Instant) -> Duration {
        now.saturating_duration_since(core.newest_verified.unwrap_or(self.started))
    }

    /// Brings the window-derived gauges (quantiles, availability, freshness, error budgets,
    /// burn rates) up to `now`; called before each scrape.
    pub fn refresh_gauges(&self, now: Instant) {
        let core = self.lock();
        self.series
            .e2e
            .set(stats::window_values(&core.e2e.window(now)));
        self.series
            .produce
            .set(stats::window_values(&core.produce.window(now)));
        self.series
            .availability
            .set(core.availability.ratio(now).unwrap_or(f64::NAN));
        self.series
            .freshness
            .set(self.freshness_of(&core, now).as_secs_f64());
        for (i, slo) in core.slos.iter().enumerate() {
            self.series.budget[i].set(slo.budget_remaining(now));
            for (gauge, rate) in self.series.burn[i].iter().zip(slo.burn_rates(now)) {
                gauge.set(rate.unwrap_or(f64::NAN));
            }
        }
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let core = self.lock();
        let window = core.e2e.window(now);
        Snapshot {
            progress: self.progress.borrow().clone(),
            partitions: core.tracker.partitions().clone(),
            e2e_total: core.e2e.total().and_then(stats::quantiles),
            e2e_count: core.e2e.total().map_or(0, |h| h.len()),
            produce_total: core.produce.total().and_then(stats::quantiles),
            produce_count: core.produce.total().map_or(0, |h| h.len()),
            e2e_window: stats::quantiles(&window),
            e2e_window_count: window.len(),
            availability: core.availability.ratio(now),
            freshness: self.freshness_of(&core, now),
            slos: core.slos.iter().map(|s| s.summary(now)).collect(),
            foreign: self.foreign.load(Ordering::Relaxed),
            footprint: core.tracker.footprint(),
            last: core.notable.last(),
            slowest: core.notable.slowest(now),
            sink: self.sink.as_ref().map(|s| SinkSummary {
                polls: s.series.polls.get(),
                errors: s.series.errors.iter().map(|c| c.get()).sum(),
                last_error: s
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            }),
        }
    }
}

/// A probe read from a probe file's text (no agent file: site `default`), with metrics of its
/// own (its SLO thresholds among the histogram buckets) and no span export: where the unit
/// tests that need a probe start.
#[cfg(test)]
pub(crate) fn from_yaml(yaml: &str) -> Probe {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    let cfg = crate::config::load(&crate::config::Sources {
        agent_file: None,
        probe_paths: vec![file],
    })
    .unwrap();
    let thresholds = cfg.probes[0].slos.iter().filter_map(|s| match s.sli {
        crate::config::Sli::Latency { below } => Some(below),
        _ => None,
    });
    let metrics = Arc::new(Metrics::new(&cfg.agent.site, thresholds));
    Probe::new(
        cfg.probes[0].clone(),
        &cfg.agent,
        Arc::clone(&metrics),
        Arc::new(Spans::disabled(metrics.spans_dropped())),
        true,
    )
}

#[cfg(test)]
impl Probe {
    /// The registry this probe's series are in.
    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::names;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    fn probe(yaml: &str) -> Probe {
        from_yaml(yaml)
    }

    /// Builds and registers one round; returns the records to send.
    fn round(p: &Probe, round: u64, partitions: &[i32]) -> Vec<Outgoing> {
        let records = partitions
            .iter()
            .map(|&part| record::build(&p.origin, part, round, 0, &p.config.tags, 16, true))
            .collect();
        p.register(round, Instant::now(), records)
    }

    fn arrive(p: &Probe, r: &Outgoing) {
        let m = OwnedMessage::new(
            Some(r.value.clone()),
            Some(r.key.clone().into_bytes()),
            p.config.topic.clone(),
            Timestamp::NotAvailable,
            r.body.partition,
            0,
            Some(r.headers.clone()),
        );
        p.arrived(&View::of(&m), &r.id, Instant::now());
    }

    fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
        scrape
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(labels))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    }

    /// A scrape, checking conservation on it (every test here scrapes).
    fn scrape(p: &Probe) -> String {
        p.refresh_gauges(Instant::now());
        let m = p.metrics.render();
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

    /// A flood of foreign records is counted exactly, and logged once a minute: one in full,
    /// then a summary of the others by reason.
    #[tokio::test(start_paused = true)]
    async fn foreign_records_are_counted_but_logged_once_a_minute() {
        let (logs, _guard) = crate::export::logging::captured();
        let p = probe("name: flooded\n");
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
        let m = scrape(&p);
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

    #[tokio::test(start_paused = true)]
    async fn an_hour_of_broker_outage_keeps_memory_flat() {
        let p = probe("name: outage\ninterval: 1s\ntimeout: 30s\nmax_in_flight: 40\n");
        let parts = [0, 1, 2];
        let mut at_10min = None;
        for slot in 0..3600u64 {
            round(&p, slot, &parts); // nothing is ever acknowledged or read back
            p.expire(Instant::now());
            let c = p.progress().borrow().counts;
            assert!(c.conserved(), "slot {slot}: {c:?}");
            if slot == 600 {
                at_10min = Some(p.snapshot(Instant::now()).footprint);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let f = p.snapshot(Instant::now()).footprint;
        assert_eq!(
            Some(f),
            at_10min,
            "same footprint after 10 minutes and after an hour"
        );
        assert!(f.pending <= 40 && f.deadlines <= 40, "{f:?}");
        // finished ids are kept for max(10 x timeout, window) = 300 s at 3 records/s
        assert!(f.recent <= 3 * 301, "{f:?}");
        let c = p.progress().borrow().counts;
        assert_eq!(c.sent, 10_800);
        assert!(
            c.get(Outcome::SendFailed) > 0,
            "over the bound: backpressure"
        );
        assert_eq!(
            c.sent,
            c.get(Outcome::Lost) + c.get(Outcome::SendFailed) + c.in_flight
        );
        scrape(&p); // checks conservation on the exported counters too
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_shows_a_stuck_consumer_before_anything_is_lost() {
        let p = probe("name: stuck\ninterval: 1s\ntimeout: 60s\n");
        for r in round(&p, 0, &[0]) {
            tokio::time::advance(Duration::from_millis(20)).await;
            arrive(&p, &r);
        }
        tokio::time::advance(Duration::from_millis(980)).await;
        assert_eq!(sample(&scrape(&p), names::FRESHNESS, ""), Some(1.0));
        // the consumer stops: records keep coming, none is read back, none is lost yet
        for slot in 1..=20 {
            round(&p, slot, &[0]);
            tokio::time::advance(Duration::from_secs(1)).await;
            p.expire(Instant::now());
        }
        let m = scrape(&p);
        assert_eq!(sample(&m, names::FRESHNESS, ""), Some(21.0));
        assert_eq!(sample(&m, names::RECORDS, "outcome=\"lost\""), Some(0.0));
        assert_eq!(sample(&m, names::IN_FLIGHT, ""), Some(20.0));
        assert_eq!(
            sample(&m, names::AVAILABILITY, ""),
            Some(1.0),
            "nothing has failed yet"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn budget_and_burn_rate_match_the_hand_computed_example() {
        // objective 99%, 1000 events, 15 bad: budget remaining -0.5, burn rate 1.5
        let p = probe(
            "name: budget\ninterval: 1s\ntimeout: 10s\nslos:\n  - { name: completeness, objective: 99% }\n",
        );
        let parts: Vec<i32> = (0..1000).collect();
        let records = round(&p, 0, &parts);
        for r in &records[15..] {
            arrive(&p, r);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        p.expire(Instant::now());
        let m = scrape(&p);
        assert_eq!(sample(&m, names::RECORDS, "outcome=\"lost\""), Some(15.0));
        assert_eq!(sample(&m, names::SLO_EVENTS, "result=\"bad\""), Some(15.0));
        assert_eq!(
            sample(&m, names::SLO_EVENTS, "result=\"good\""),
            Some(985.0)
        );
        let budget = sample(&m, names::ERROR_BUDGET_REMAINING, "slo=\"completeness\"").unwrap();
        assert!((budget - -0.5).abs() < 1e-9, "{budget}");
        for w in ["5m", "30m", "1h", "6h"] {
            let burn = sample(&m, names::BURN_RATE, &format!("window=\"{w}\"")).unwrap();
            assert!((burn - 1.5).abs() < 1e-9, "{w}: {burn}");
        }
        let s = &p.snapshot(Instant::now()).slos[0];
        assert!(!s.met());
        // an hour later the 5m and 30m windows are empty, the budget window is not
        tokio::time::advance(Duration::from_secs(3600)).await;
        let m = scrape(&p);
        assert!(
            sample(&m, names::BURN_RATE, "window=\"5m\"")
                .unwrap()
                .is_nan()
        );
        assert!((sample(&m, names::ERROR_BUDGET_REMAINING, "").unwrap() - -0.5).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn per_partition_series_only_when_asked_for() {
        for (flag, expected) in [("false", false), ("true", true)] {
            let p = probe(&format!(
                "name: parts\npartitions: [0, 1]\nper_partition_metrics: {flag}\n"
            ));
            p.set_partitions(Ok(&kafka::Partitions::from([(0, 1), (1, 2)])));
            let records = round(&p, 0, &[0, 1]);
            arrive(&p, &records[0]);
            tokio::time::advance(Duration::from_secs(31)).await;
            p.expire(Instant::now());
            let m = scrape(&p);
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
}
