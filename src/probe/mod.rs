//! A probe: its configuration, in-flight tracker, measurements and metrics, behind one mutex
//! shared by the task that sends its records ([`task`]), the delivery reports, and the verifier
//! that sees them come back. The mutex is never held across an await or around I/O.

pub mod task;
mod tracker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

pub use tracker::{Arrival, Counts, Finished, Outcome, PartitionCounts, Tracker};

use crate::config::{AgentConfig, ProbeConfig, Verify};
use crate::export::events;
use crate::export::metrics::{Metrics, ProbeMetrics};
use crate::record::{self, Expected, ForeignReason, Origin, Outgoing, View};
use crate::stats::{self, Availability, Latency, SloCount};

/// What a probe is doing, for `/readyz`, `/status`, smoke progress and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub counts: Counts,
    pub rounds_started: u64,
    pub rounds_completed: u64,
    /// Partitions currently probed (empty until discovered).
    pub partitions: Vec<i32>,
    /// Why partitions could not be discovered, while that is the case.
    pub discovery_error: Option<String>,
    /// Stopped sending, and every record has its final outcome.
    pub finished: bool,
}

struct Core {
    tracker: Tracker,
    e2e: Latency,
    produce: Latency,
    availability: Availability,
    /// Scheduled send time of the newest verified record.
    newest_verified: Option<Instant>,
    slos: Vec<SloCount>,
}

pub struct Probe {
    pub config: ProbeConfig,
    pub origin: Origin,
    /// Cluster and topic the records are read back from.
    pub verify_cluster: String,
    pub verify_topic: String,
    /// Records come back on the topic they were sent to, so on the same partition.
    same_topic: bool,
    started: Instant,
    metrics: Arc<Metrics>,
    series: ProbeMetrics,
    core: Mutex<Core>,
    progress: watch::Sender<Progress>,
    /// Records on the verify topic that are not probe records.
    foreign: AtomicU64,
}

/// Everything known about a probe at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub progress: Progress,
    pub partitions: BTreeMap<i32, PartitionCounts>,
    /// Quantiles over the whole run, seconds.
    pub e2e_total: Option<[f64; 6]>,
    pub e2e_count: u64,
    pub produce_total: Option<[f64; 6]>,
    pub produce_count: u64,
    /// Quantiles over the sliding window, seconds.
    pub e2e_window: Option<[f64; 6]>,
    pub e2e_window_count: u64,
    pub availability: Option<f64>,
    pub freshness: Duration,
    pub slos: Vec<SloCount>,
    pub foreign: u64,
}

impl Probe {
    pub fn new(config: ProbeConfig, agent: &AgentConfig, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        let Verify::Kafka(v) = &config.verify;
        let (verify_cluster, verify_topic) = (v.cluster.clone(), v.topic.clone());
        let same_topic = verify_cluster == config.cluster && verify_topic == config.topic;
        let series = metrics.probe(&config.name, &config.slos);
        // Finished ids are remembered long enough to tell duplicates and late arrivals from
        // unknown records: ten timeouts, and at least the sliding window.
        let retention = (config.timeout * 10).max(agent.window);
        let core = Core {
            tracker: Tracker::new(config.timeout, retention),
            e2e: Latency::new(agent.window, now),
            produce: Latency::new(agent.window, now),
            availability: Availability::new(agent.window, now),
            newest_verified: None,
            slos: config.slos.iter().cloned().map(SloCount::new).collect(),
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
            started: now,
            metrics,
            series,
            core: Mutex::new(core),
            progress: watch::Sender::new(Progress::default()),
            foreign: AtomicU64::new(0),
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

    fn publish(&self, core: &Core) {
        let counts = core.tracker.counts();
        let completed = core.tracker.rounds_completed();
        let mut first_round = false;
        self.progress.send_if_modified(|p| {
            let changed = p.counts != counts || p.rounds_completed != completed;
            first_round = p.rounds_completed == 0 && completed > 0;
            p.counts = counts;
            p.rounds_completed = completed;
            changed
        });
        if first_round {
            let ok = counts.get(Outcome::Ok);
            tracing::info!(probe = %self.origin.probe, ok, settled = counts.finished(), "first round settled: probe ready");
        }
    }

    /// Records of one round were built and are about to be sent.
    pub(crate) fn register(&self, round: u64, scheduled: Instant, records: &[Outgoing]) {
        let mut core = self.lock();
        {
            let _consistent = self.metrics.update();
            for r in records {
                let expected = Expected {
                    body: r.body.clone(),
                    trace_id: r.span_context.trace_id(),
                };
                core.tracker.register(expected, scheduled, round);
                self.series.sent.inc();
            }
            self.series
                .in_flight
                .set(core.tracker.counts().in_flight as i64);
        }
        self.progress.send_modify(|p| p.rounds_started = round + 1);
        self.publish(&core);
    }

    /// A delivery report: the broker's offset, or why the producer gave up.
    pub(crate) fn delivered(&self, id: &Uuid, at: Instant, result: Result<i64, String>) {
        let mut core = self.lock();
        let finished = match result {
            Ok(offset) => {
                if let Some(latency) = core.tracker.ack(id, at, offset) {
                    core.produce.record(at, latency);
                }
                None
            }
            Err(reason) => core.tracker.send_failed(id, at, reason),
        };
        if let Some(f) = &finished {
            self.apply(&mut core, f, at);
        }
        self.publish(&core);
        drop(core);
        if let Some(f) = finished {
            events::finished(&self.origin, &self.config.topic, &f);
        }
    }

    /// An own record came back: verify it and settle its outcome or count the event.
    pub fn arrived(&self, view: &View, id: &Uuid, at: Instant) {
        let mut core = self.lock();
        let same_topic = self.same_topic;
        // On another topic the partition may differ; everything else must hold.
        let arrival = core.tracker.arrive(id, at, view.offset, |expected| {
            record::verify(expected, view, same_topic)
        });
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
            None => {
                core.tracker.forgotten_arrival();
                self.series.late.inc();
            }
        }
        self.publish(&core);
        drop(core);
        match arrival {
            Some(Arrival::Final {
                finished,
                reordered,
            }) => {
                events::finished(&self.origin, view.topic, &finished);
                if reordered {
                    events::reordered(&self.origin, view.topic, &finished);
                }
            }
            Some(Arrival::Duplicate) => events::duplicate(&self.origin, view, id),
            Some(Arrival::Late { latency }) => events::late(&self.origin, view, id, latency),
            None => events::late(&self.origin, view, id, None),
        }
    }

    /// A record on the probe's verify topic that is not a probe record.
    pub fn foreign(&self, view: &View, reason: ForeignReason) {
        self.series.foreign(reason).inc();
        self.foreign.fetch_add(1, Ordering::Relaxed);
        events::foreign(&self.origin, view, reason);
    }

    /// Settles every record whose deadline passed.
    pub(crate) fn expire(&self, now: Instant) {
        let mut core = self.lock();
        let expired = core.tracker.expire(now);
        for f in &expired {
            self.apply(&mut core, f, now);
        }
        self.publish(&core);
        drop(core);
        for f in &expired {
            events::finished(&self.origin, &self.config.topic, f);
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lock().tracker.next_deadline()
    }

    pub fn in_flight(&self) -> u64 {
        self.lock().tracker.counts().in_flight
    }

    /// Counts, histograms, SLO events and series of one final outcome. Caller holds the lock.
    fn apply(&self, core: &mut Core, f: &Finished, now: Instant) {
        let _consistent = self.metrics.update();
        self.series.outcome(f.outcome).inc();
        self.series
            .in_flight
            .set(core.tracker.counts().in_flight as i64);
        core.availability.record(now, f.outcome);
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
            match slo.record(f.outcome, f.latency) {
                Some(true) => self.series.slo_events[i].0.inc(),
                Some(false) => self.series.slo_events[i].1.inc(),
                None => {}
            }
        }
    }

    /// Discovery found these partitions (or failed); shown by `/status` and smoke.
    pub(crate) fn set_partitions(&self, result: Result<&[i32], String>) {
        self.progress.send_modify(|p| match result {
            Ok(parts) => {
                p.partitions = parts.to_vec();
                p.discovery_error = None;
            }
            Err(e) => p.discovery_error = Some(e),
        });
    }

    pub(crate) fn set_finished(&self) {
        self.progress.send_modify(|p| p.finished = true);
    }

    fn freshness(&self, core: &Core, now: Instant) -> Duration {
        now.saturating_duration_since(core.newest_verified.unwrap_or(self.started))
    }

    /// Brings the window-derived gauges (quantiles, availability, freshness) up to `now`;
    /// called before each scrape.
    pub fn refresh_gauges(&self, now: Instant) {
        let core = self.lock();
        ProbeMetrics::set_quantiles(&self.series.e2e, stats::quantiles(&core.e2e.window(now)));
        ProbeMetrics::set_quantiles(
            &self.series.produce,
            stats::quantiles(&core.produce.window(now)),
        );
        self.series
            .availability
            .set(core.availability.ratio(now).unwrap_or(f64::NAN));
        self.series
            .freshness
            .set(self.freshness(&core, now).as_secs_f64());
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let core = self.lock();
        let window = core.e2e.window(now);
        Snapshot {
            progress: self.progress.borrow().clone(),
            partitions: core.tracker.partitions().clone(),
            e2e_total: stats::quantiles(core.e2e.total()),
            e2e_count: core.e2e.total().len(),
            produce_total: stats::quantiles(core.produce.total()),
            produce_count: core.produce.total().len(),
            e2e_window: stats::quantiles(&window),
            e2e_window_count: window.len(),
            availability: core.availability.ratio(now),
            freshness: self.freshness(&core, now),
            slos: core.slos.clone(),
            foreign: self.foreign.load(Ordering::Relaxed),
        }
    }
}
