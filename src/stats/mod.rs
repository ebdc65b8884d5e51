//! Measurements: HDR latency histograms over a sliding window and over the whole run,
//! availability over the window, SLO events with error budgets and burn rates ([`slo`]).

pub mod slo;
mod window;

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

pub use slo::{SloState, SloSummary};
pub use window::{DEFAULT_SLOTS, Sliding};

use crate::probe::Outcome;

/// The exported quantiles; `1` is the maximum.
pub const QUANTILES: [f64; 6] = [0.5, 0.9, 0.95, 0.99, 0.999, 1.0];

/// 3 significant digits, microsecond unit, growing as larger values arrive.
fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is valid")
}

/// Latencies are recorded up to a day; anything longer is recorded as a day.
const MAX_MICROS: u64 = 86_400_000_000;

/// Microseconds, between 1 (HDR's lowest discernible value) and a day.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MICROS)
}

/// Records into an auto-resizing histogram, growing it as needed. (`saturating_record` would
/// clamp to the current, small, range instead.)
fn add(h: &mut Histogram<u64>, us: u64) {
    h.record(us)
        .expect("an auto-resizing histogram takes any value up to a day");
}

#[derive(Debug, Default)]
struct Slot(Option<Histogram<u64>>);

/// One latency (end-to-end or produce) over the sliding window and over the whole run.
#[derive(Debug)]
pub struct Latency {
    window: Sliding<Slot>,
    total: Histogram<u64>,
}

impl Latency {
    pub fn new(window: Duration, origin: Instant) -> Self {
        Latency {
            window: Sliding::new(window, DEFAULT_SLOTS, origin),
            total: new_histogram(),
        }
    }

    pub fn record(&mut self, now: Instant, value: Duration) {
        let us = micros(value);
        add(
            self.window.current(now).0.get_or_insert_with(new_histogram),
            us,
        );
        add(&mut self.total, us);
    }

    /// The window's samples merged into one histogram.
    pub fn window(&self, now: Instant) -> Histogram<u64> {
        let mut merged = new_histogram();
        for h in self.window.live(now).filter_map(|s| s.0.as_ref()) {
            merged.add(h).expect("auto-resizing histograms merge");
        }
        merged
    }

    /// Every sample since the probe started.
    pub fn total(&self) -> &Histogram<u64> {
        &self.total
    }
}

/// The [`QUANTILES`] of a histogram, in seconds; `None` when it is empty.
pub fn quantiles(h: &Histogram<u64>) -> Option<[f64; 6]> {
    if h.is_empty() {
        return None;
    }
    Some(QUANTILES.map(|q| {
        let us = if q >= 1.0 {
            h.max()
        } else {
            h.value_at_quantile(q)
        };
        us as f64 / 1e6
    }))
}

/// Count, sum and quantiles of a histogram, in seconds, for a summary.
pub fn window_values(h: &Histogram<u64>) -> crate::export::summary::WindowValues {
    crate::export::summary::WindowValues {
        count: h.len(),
        sum: h.mean() * h.len() as f64 / 1e6,
        quantiles: quantiles(h),
    }
}

/// Final outcomes in one window slot.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutcomeSlot {
    pub ok: u64,
    pub finished: u64,
}

/// ok / all final outcomes over the sliding window.
#[derive(Debug)]
pub struct Availability {
    window: Sliding<OutcomeSlot>,
}

impl Availability {
    pub fn new(window: Duration, origin: Instant) -> Self {
        Availability {
            window: Sliding::new(window, DEFAULT_SLOTS, origin),
        }
    }

    pub fn record(&mut self, now: Instant, outcome: Outcome) {
        let slot = self.window.current(now);
        slot.finished += 1;
        slot.ok += u64::from(outcome == Outcome::Ok);
    }

    /// `None` while no record finished inside the window.
    pub fn ratio(&self, now: Instant) -> Option<f64> {
        let (ok, all) = self
            .window
            .live(now)
            .fold((0, 0), |(o, a), s| (o + s.ok, a + s.finished));
        (all > 0).then(|| ok as f64 / all as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn window_quantiles_and_total() {
        let t0 = Instant::now();
        let mut l = Latency::new(Duration::from_secs(60), t0);
        for ms in 1..=100u64 {
            l.record(t0, Duration::from_millis(ms));
        }
        let q = quantiles(&l.window(t0)).unwrap();
        assert!((q[0] - 0.050).abs() < 0.0001, "p50 {}", q[0]);
        assert!((q[3] - 0.099).abs() < 0.0001, "p99 {}", q[3]);
        assert!((q[5] - 0.100).abs() < 0.0001, "max {}", q[5]);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            quantiles(&l.window(Instant::now())).is_none(),
            "window emptied"
        );
        assert_eq!(l.total().len(), 100, "run totals keep everything");
    }
}
