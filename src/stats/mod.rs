//! Measurements: HDR latency histograms over a sliding window and over the whole run,
//! availability over the window, SLO events with error budgets and burn rates ([`slo`]).

pub mod slo;
mod window;

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

pub use slo::{SloState, SloSummary};
pub use window::{DEFAULT_SLOTS, Largest, Sliding};

use crate::outcome::Outcome;

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

/// Samples past which a window slot folds its raw samples into a histogram.
const SLOT_SAMPLES: usize = 4096;

/// One window slot. A probe verifies a handful of records per second, so a slot keeps their raw
/// microseconds (a few KB) rather than an HDR histogram (tens of KB each, 20 per probe); the
/// histogram is built from the samples when quantiles are read. A slot that fills up folds
/// into a histogram, so a fast probe stays bounded too.
#[derive(Debug, Default)]
struct Slot {
    /// The samples' sum, in microseconds.
    sum_us: u64,
    samples: Samples,
}

#[derive(Debug, Default)]
enum Samples {
    #[default]
    Empty,
    Raw(Vec<u64>),
    Folded(Histogram<u64>),
}

impl Slot {
    fn record(&mut self, us: u64) {
        self.sum_us = self.sum_us.saturating_add(us);
        match &mut self.samples {
            Samples::Empty => self.samples = Samples::Raw(vec![us]),
            Samples::Raw(v) if v.len() < SLOT_SAMPLES => v.push(us),
            Samples::Raw(v) => {
                let mut h = new_histogram();
                for s in v.iter().copied().chain([us]) {
                    add(&mut h, s);
                }
                self.samples = Samples::Folded(h);
            }
            Samples::Folded(h) => add(h, us),
        }
    }

    fn merge_into(&self, merged: &mut Histogram<u64>) {
        match &self.samples {
            Samples::Empty => {}
            Samples::Raw(v) => v.iter().for_each(|us| add(merged, *us)),
            Samples::Folded(h) => merged.add(h).expect("auto-resizing histograms merge"),
        }
    }
}

/// A sliding window's samples: in one HDR histogram (3 significant digits, microseconds), and
/// their exact sum.
#[derive(Debug)]
pub struct Window {
    pub histogram: Histogram<u64>,
    pub sum_us: u64,
}

/// One latency (end-to-end or produce) over the sliding window and, for a finite run (smoke),
/// over the whole run.
#[derive(Debug)]
pub struct Latency {
    window: Sliding<Slot>,
    total: Option<Histogram<u64>>,
}

impl Latency {
    pub fn new(window: Duration, origin: Instant, keep_total: bool) -> Self {
        Latency {
            window: Sliding::new(window, DEFAULT_SLOTS, origin),
            total: keep_total.then(new_histogram),
        }
    }

    pub fn record(&mut self, now: Instant, value: Duration) {
        let us = micros(value);
        self.window.current(now).record(us);
        if let Some(total) = &mut self.total {
            add(total, us);
        }
    }

    /// The window's samples in one HDR histogram (3 significant digits, microseconds).
    pub fn window(&self, now: Instant) -> Histogram<u64> {
        self.window_with_sum(now).histogram
    }

    /// The window's samples and their sum.
    pub fn window_with_sum(&self, now: Instant) -> Window {
        let mut histogram = new_histogram();
        let mut sum_us = 0u64;
        for slot in self.window.live(now) {
            slot.merge_into(&mut histogram);
            sum_us = sum_us.saturating_add(slot.sum_us);
        }
        Window { histogram, sum_us }
    }

    /// Every sample since the probe started, when kept.
    pub fn total(&self) -> Option<&Histogram<u64>> {
        self.total.as_ref()
    }
}

/// The [`QUANTILES`] of a histogram, in seconds; `None` when it is empty. One pass over the
/// counts (a scrape reads two histograms per probe: at 1 000 probes, five scans each were half
/// of a scrape's time).
pub fn quantiles(h: &Histogram<u64>) -> Option<[f64; 6]> {
    if h.is_empty() {
        return None;
    }
    let mut out = [h.max() as f64 / 1e6; 6];
    let below_max = &QUANTILES[..QUANTILES.len() - 1];
    for (o, us) in out
        .iter_mut()
        .zip(h.value_at_quantiles(below_max.iter().copied()))
    {
        *o = us as f64 / 1e6;
    }
    Some(out)
}

/// Count, sum and quantiles of a window, in seconds, for a summary. The sum is of the samples
/// themselves, not of the histogram's buckets.
pub fn window_values(w: &Window) -> crate::outcome::WindowValues {
    crate::outcome::WindowValues {
        count: w.histogram.len(),
        sum: w.sum_us as f64 / 1e6,
        quantiles: quantiles(&w.histogram),
    }
}

/// A latency distribution for a chart: the quantile curve and a histogram, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// Samples in it.
    pub count: u64,
    /// (quantile, seconds), quantiles rising from 0 to [`CURVE_TOP`], denser towards the tail
    /// (ten points per decade of `1 - q`), [`MARKED`] among them.
    pub curve: Vec<(f64, f64)>,
    /// (from, to, samples): adjacent buckets from the lowest sample to the highest, each
    /// [`BUCKET_GROWTH`] times as wide as the one before.
    pub buckets: Vec<(f64, f64, u64)>,
}

/// The highest quantile on a distribution curve.
pub const CURVE_TOP: f64 = 0.9999;
/// Quantiles a chart marks.
pub const MARKED: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
/// Each histogram bucket is this many times as wide as the one before (four per doubling).
pub const BUCKET_GROWTH: f64 = 1.189_207_115;
/// Bounds the buckets of a wide distribution (a day over a microsecond is 73 doublings).
const MAX_BUCKETS: usize = 80;

/// The distribution of `h`; `None` when it is empty.
pub fn distribution(h: &Histogram<u64>) -> Option<Distribution> {
    if h.is_empty() {
        return None;
    }
    let mut qs: Vec<f64> = (0..=40)
        .map(|k| 1.0 - 10f64.powf(-f64::from(k) / 10.0))
        .collect();
    qs.extend(MARKED);
    qs.push(CURVE_TOP);
    qs.sort_by(f64::total_cmp);
    qs.dedup_by(|a, b| (*a - *b).abs() < 1e-12);
    let curve = qs
        .into_iter()
        .filter(|q| *q <= CURVE_TOP + 1e-12)
        .map(|q| (q, h.value_at_quantile(q) as f64 / 1e6))
        .collect();
    let (low, high) = (h.min().max(1) as f64, h.max().max(1) as f64);
    let growth = BUCKET_GROWTH.max((high / low).powf(1.0 / MAX_BUCKETS as f64));
    let n = ((high / low).ln() / growth.ln()).floor() as usize + 1;
    let mut buckets: Vec<(f64, f64, u64)> = (0..n)
        .map(|i| {
            let from = low * growth.powi(i as i32);
            (from / 1e6, from * growth / 1e6, 0)
        })
        .collect();
    // Each recorded value (HDR's equivalent, in microseconds) into the bucket holding it: the
    // buckets add up to the samples exactly.
    for v in h.iter_recorded() {
        let value = (v.value_iterated_to().max(1) as f64).clamp(low, high);
        let i = (((value / low).ln() / growth.ln()).floor() as usize).min(n - 1);
        buckets[i].2 += v.count_at_value();
    }
    Some(Distribution {
        count: h.len(),
        curve,
        buckets,
    })
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

    #[test]
    fn a_distribution_adds_up_and_marks_the_tail() {
        assert!(distribution(&new_histogram()).is_none());
        let mut h = new_histogram();
        for ms in 1..=1000u64 {
            add(&mut h, ms * 1000);
        }
        add(&mut h, 5_000_000); // one outlier, 5 s
        let d = distribution(&h).unwrap();
        assert_eq!(d.count, 1001);
        assert_eq!(d.buckets.iter().map(|b| b.2).sum::<u64>(), 1001);
        for pair in d.buckets.windows(2) {
            assert!((pair[0].1 - pair[1].0).abs() < 1e-12, "contiguous");
        }
        assert!(d.buckets.first().unwrap().0 <= 0.001 && d.buckets.last().unwrap().1 >= 5.0);
        assert_eq!(
            d.buckets.last().unwrap().2,
            1,
            "the outlier alone in the last bucket"
        );
        let qs: Vec<f64> = d.curve.iter().map(|c| c.0).collect();
        for q in MARKED.iter().chain([&CURVE_TOP]) {
            assert!(qs.iter().any(|x| (x - q).abs() < 1e-9), "{q} on the curve");
        }
        assert!(
            d.curve
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        let at = |q: f64| d.curve.iter().find(|c| (c.0 - q).abs() < 1e-9).unwrap().1;
        assert!((at(0.5) / 0.5 - 1.0).abs() < 0.01, "p50 {}", at(0.5));
        assert!((at(0.99) / 0.99 - 1.0).abs() < 0.01, "p99 {}", at(0.99));
        assert!(
            (at(CURVE_TOP) / 5.0 - 1.0).abs() < 0.01,
            "p99.99 is the outlier"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn window_quantiles_and_total() {
        let t0 = Instant::now();
        let mut l = Latency::new(Duration::from_secs(60), t0, true);
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
        assert_eq!(l.total().unwrap().len(), 100, "run totals keep everything");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_slot_folds_into_a_histogram_with_the_same_quantiles() {
        let t0 = Instant::now();
        let mut folded = Latency::new(Duration::from_secs(60), t0, false);
        let mut exact = new_histogram();
        for i in 0..(SLOT_SAMPLES as u64 * 2) {
            let us = 1 + (i * 7919) % 50_000;
            folded.record(t0, Duration::from_micros(us));
            add(&mut exact, us);
        }
        assert!(folded.total().is_none());
        assert_eq!(quantiles(&folded.window(t0)), quantiles(&exact));
        assert_eq!(folded.window(t0).len(), SLOT_SAMPLES as u64 * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn window_values_sum_the_samples_across_folded_slots_and_drop_old_ones() {
        let t0 = Instant::now();
        let mut l = Latency::new(Duration::from_secs(60), t0, false);
        let mut exact = 0u64;
        for i in 0..(SLOT_SAMPLES as u64 + 100) {
            let us = 1 + (i * 7919) % 50_000;
            l.record(t0, Duration::from_micros(us));
            exact += us;
        }
        let v = window_values(&l.window_with_sum(t0));
        assert_eq!(v.count, SLOT_SAMPLES as u64 + 100);
        assert!((v.sum - exact as f64 / 1e6).abs() < 1e-9, "sum {}", v.sum);
        tokio::time::advance(Duration::from_secs(30)).await;
        l.record(Instant::now(), Duration::from_millis(7));
        tokio::time::advance(Duration::from_secs(31)).await;
        let v = window_values(&l.window_with_sum(Instant::now()));
        assert_eq!(
            (v.count, v.sum),
            (1, 0.007),
            "the first slot left the window"
        );
    }

    #[test]
    fn one_pass_quantiles_equal_the_crates_one_at_a_time() {
        for n in [1u64, 2, 3, 10, 999, 20_000] {
            let mut h = new_histogram();
            for i in 0..n {
                add(&mut h, 1 + (i * 104_729) % 3_000_000);
            }
            let one_at_a_time: Vec<f64> = QUANTILES
                .iter()
                .map(|&q| {
                    (if q >= 1.0 {
                        h.max()
                    } else {
                        h.value_at_quantile(q)
                    }) as f64
                        / 1e6
                })
                .collect();
            assert_eq!(
                quantiles(&h).unwrap().to_vec(),
                one_at_a_time,
                "{n} samples"
            );
        }
    }
}
