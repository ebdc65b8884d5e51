//! What a probe shows: everything known about it at one instant ([`Snapshot`], for verdicts,
//! `/status` and smoke progress), the values over its windows handed to its observer before a
//! scrape, and the records kept for pictures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Core, Footprint, Group, HistoryView, HopsSnapshot, JobNow, Noted, Probe, Progress, SinkSummary,
};
use crate::outcome::{Gauges, PartitionCounts, SloGauges};
use crate::stats::{self, SloSummary};

/// Everything known about a probe at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What the probe is doing.
    pub progress: Progress,
    /// Per partition: sent and outcomes.
    pub partitions: BTreeMap<i32, PartitionCounts>,
    /// Quantiles over the whole run, seconds (kept for finite runs only).
    pub e2e_total: Option<[f64; 6]>,
    /// Verified records in `e2e_total`.
    pub e2e_count: u64,
    /// Produce latency quantiles over the whole run, seconds.
    pub produce_total: Option<[f64; 6]>,
    /// Acknowledged records in `produce_total`.
    pub produce_count: u64,
    /// Quantiles over the sliding window, seconds.
    pub e2e_window: Option<[f64; 6]>,
    /// Verified records in the window.
    pub e2e_window_count: u64,
    /// `ok` / all final outcomes over the window.
    pub availability: Option<f64>,
    /// Age of the newest verified record.
    pub freshness: Duration,
    /// Each SLO's events, budget and burn rates.
    pub slos: Vec<SloSummary>,
    /// Records on the verify topic that are not probe records.
    pub foreign: u64,
    /// Sizes of the in-flight tracker.
    pub footprint: Footprint,
    /// The last results, newest first.
    pub last: Vec<Noted>,
    /// The slowest verified records of the window, slowest first.
    pub slowest: Vec<Noted>,
    /// For a probe that polls a sink.
    pub sink: Option<SinkSummary>,
    /// Each hop of its records: over the window, the run, and its clock skew.
    pub hops: HopsSnapshot,
    /// Its failed records, grouped by outcome and reason, most first.
    pub failures: Vec<Group>,
    /// The job its records go through: its name and newest poll.
    pub job: Option<(String, JobNow)>,
    /// When a record was last read from a downstream topic the probe verifies on (ms since
    /// the Unix epoch): where the job's output stands.
    pub output_read_ms: Option<u64>,
}

impl Probe {
    /// When a record was last read from a downstream topic (only a downstream topic's reads
    /// are noted).
    fn output_read_at(&self) -> Option<u64> {
        let at = self.output_read_ms.load(Ordering::Relaxed);
        (at > 0).then_some(at)
    }

    /// Age of the newest verified record (since its scheduled send); since start when none.
    pub fn freshness(&self, now: Instant) -> Duration {
        let core = self.lock();
        self.freshness_of(&core, now)
    }

    fn freshness_of(&self, core: &Core, now: Instant) -> Duration {
        now.saturating_duration_since(core.newest_verified.unwrap_or(self.started))
    }

    /// Brings the values over the sliding windows (quantiles, availability, freshness, error
    /// budgets, burn rates) up to `now` and hands them to the observer; called before each
    /// scrape.
    pub fn refresh_gauges(&self, now: Instant) {
        let gauges = {
            let core = self.lock();
            Gauges {
                e2e: stats::window_values(&core.e2e.window_with_sum(now)),
                produce: stats::window_values(&core.produce.window_with_sum(now)),
                availability: core.availability.ratio(now),
                freshness: self.freshness_of(&core, now),
                slos: core
                    .slos
                    .iter()
                    .map(|slo| SloGauges {
                        budget_remaining: slo.budget_remaining(now),
                        burn_rates: slo.burn_rates(now),
                    })
                    .collect(),
                hops: core.hops.gauges(now),
                output_read_ms: self.output_read_at(),
            }
        };
        self.observer.gauges(&gauges);
    }

    /// The records kept for pictures (every record of a finite run, or the newest), and the
    /// end-to-end latency distribution: of the whole run when it is kept, else of the window.
    pub fn pictures(&self, now: Instant) -> (HistoryView, Option<stats::Distribution>) {
        let core = self.lock();
        let distribution = match core.e2e.total() {
            Some(total) => stats::distribution(total),
            None => stats::distribution(&core.e2e.window(now)),
        };
        (core.history.view(), distribution)
    }

    /// Everything known about the probe at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let core = self.lock();
        let window = core.e2e.window(now);
        let mut snap = Snapshot {
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
            sink: self.acknowledged.as_ref().map(|_| core.sink.clone()),
            hops: core.hops.snapshot(now),
            failures: core.digest.groups(),
            job: self
                .job
                .as_ref()
                .map(|j| (j.name.clone(), j.now().borrow().clone())),
            output_read_ms: self.output_read_at(),
        };
        // A slow record's job context, from the polls still kept.
        if let Some(job) = &self.job {
            for n in &mut snap.slowest {
                let lasted = n.latency.unwrap_or_default();
                n.job = job.during(n.scheduled_at_ns, lasted).map(Arc::new);
            }
        }
        snap
    }
}
