//! Exact quantiles of ground truth, and what fixed Prometheus buckets make of the same samples.

/// Strimzi canary's default latency buckets, milliseconds.
pub const STRIMZI_MS: [f64; 8] = [5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 400.0, 800.0];

/// KMinion's end-to-end buckets: 5 ms doubling (up to about 10 s).
pub fn kminion_ms() -> Vec<f64> {
    (0..12).map(|i| 5.0 * 2f64.powi(i)).collect()
}

/// Nearest-rank quantile of samples (sorted ascending).
pub fn exact(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "no samples");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The samples put into buckets with these upper bounds (plus +Inf) and read back the way
/// Prometheus' `histogram_quantile` does: linear interpolation inside the bucket holding the
/// rank; a rank in the +Inf bucket reads as the highest finite bound.
pub fn bucketed(samples: &[f64], bounds: &[f64], q: f64) -> f64 {
    let mut counts = vec![0u64; bounds.len() + 1];
    for &s in samples {
        let i = bounds.iter().position(|b| s <= *b).unwrap_or(bounds.len());
        counts[i] += 1;
    }
    let total: u64 = counts.iter().sum();
    let rank = q * total as f64;
    let mut cumulative = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if (cumulative + c) as f64 >= rank && c > 0 {
            if i == bounds.len() {
                return bounds[bounds.len() - 1];
            }
            let start = if i == 0 { 0.0 } else { bounds[i - 1] };
            let end = bounds[i];
            return start + (end - start) * (rank - cumulative as f64) / c as f64;
        }
        cumulative += c;
    }
    bounds[bounds.len() - 1]
}

/// The median of `f` over `runs`.
pub fn median_by<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Signed relative error, percent.
pub fn rel_err_pct(measured: f64, truth: f64) -> f64 {
    (measured - truth) / truth * 100.0
}

/// Checks the interpolation against Prometheus' rules before any figure is reported (a
/// `harness = false` target runs no `#[test]`s).
pub fn self_check() {
    // 100 samples spread evenly over (0, 10]: the 0.5 rank falls half-way into (0, 10].
    let samples: Vec<f64> = (1..=100).map(|i| i as f64 / 10.0).collect();
    assert!((bucketed(&samples, &[10.0, 20.0], 0.5) - 5.0).abs() < 1e-9);
    // a rank in the +Inf bucket reads as the highest finite bound
    assert_eq!(bucketed(&[900.0, 950.0], &STRIMZI_MS, 0.99), 800.0);
    assert_eq!(exact(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    assert_eq!(exact(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
}
