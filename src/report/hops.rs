//! Where the time goes, as the verdict and `/status` show it: per hop, what ends it (which
//! timestamp, on whose clock), how finely it is measured, its quantiles, and how often it came
//! out negative (clock skew) and by how much; per record, its hops in milliseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::LatencySummary;
use crate::config::Verify;
use crate::outcome::{End, Hop, Hops};
use crate::probe::{HopSnapshot, HopsSnapshot, Probe};

/// One hop of a probe's records.
#[derive(Debug, Clone, Serialize)]
pub struct HopSummary {
    /// `produce`, `pipeline`, `sink` or `read`.
    pub hop: &'static str,
    /// What ends it, e.g. "the downstream record's broker timestamp".
    pub ends_at: String,
    /// Which timestamps ended it, with how many records each (`CreateTime` or
    /// `LogAppendTime` for a broker timestamp).
    pub ended_by: BTreeMap<&'static str, u64>,
    /// The resolution of its values: a broker timestamp's millisecond, or a sink's poll
    /// interval (`None`: microseconds).
    pub quantised_ms: Option<f64>,
    /// Quantiles of the verified records whose hop was zero or more.
    pub latency: LatencySummary,
    /// Verified records whose hop came out negative beyond its resolution (a clock behind):
    /// left out of `latency`.
    pub clock_skew: u64,
    /// Verified records whose hop came out negative within its resolution (a truncated
    /// timestamp, a row written while the poll ran): in `latency` as zero.
    pub within_resolution: u64,
    /// How far below zero the most negative went, ms: over the run (smoke) or the window
    /// (`/status`).
    pub largest_skew_ms: Option<f64>,
}

/// A probe's hops: each hop, and the verified records that could not be split.
#[derive(Debug, Clone, Serialize)]
pub struct HopsReport {
    pub hops: Vec<HopSummary>,
    /// Verified records whose latency could not be split (not in any hop's quantiles).
    pub unsplit: u64,
    /// Why the last one could not.
    pub unsplit_reason: Option<String>,
    /// The timestamps the probe file names, each with how many verified records carried it
    /// (since start).
    pub timestamps: Vec<NamedTimestamp>,
}

/// A timestamp the probe file names (`hop_timestamp`, `timestamp_column`,
/// `timestamp_pointer`) and how many verified records carried it.
#[derive(Debug, Clone, Serialize)]
pub struct NamedTimestamp {
    /// The field naming it, e.g. `verify.kafka.hop_timestamp`.
    pub field: &'static str,
    /// The JSON pointer or column it names.
    pub name: String,
    /// Verified records that carried it as a time.
    pub found: u64,
    /// Verified records that did not (missing, null, not a time).
    pub missing: u64,
    /// Why the last of those did not.
    pub missing_reason: Option<String>,
}

/// Over the whole run (the smoke verdict) or the sliding window (`/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Run,
    Window,
}

impl HopsReport {
    pub fn new(probe: &Probe, snapshot: &HopsSnapshot, span: Span) -> Self {
        HopsReport {
            hops: snapshot
                .hops
                .iter()
                .map(|h| HopSummary::new(probe, h, span))
                .collect(),
            unsplit: snapshot.unsplit,
            unsplit_reason: snapshot.last_unsplit.clone(),
            timestamps: snapshot
                .named
                .iter()
                .map(|n| NamedTimestamp {
                    field: n.field,
                    name: n.name.clone(),
                    found: n.found,
                    missing: n.missing,
                    missing_reason: n.last_missing.clone(),
                })
                .collect(),
        }
    }
}

impl HopSummary {
    fn new(probe: &Probe, h: &HopSnapshot, span: Span) -> Self {
        let (count, quantiles) = match span {
            Span::Run => h.total.unwrap_or(h.window),
            Span::Window => h.window,
        };
        let largest = match span {
            Span::Run => h.largest_skew_ever,
            Span::Window => h.largest_skew_window,
        };
        HopSummary {
            hop: h.hop.as_str(),
            ends_at: ends_at(probe, h.hop),
            ended_by: h.ends.iter().map(|(m, n)| (m.as_str(), *n)).collect(),
            quantised_ms: quantised(probe, h.hop).map(ms),
            latency: LatencySummary::new(count, quantiles),
            clock_skew: h.skewed,
            within_resolution: h.within_resolution,
            largest_skew_ms: largest.map(ms),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// What ends `hop` of `probe`'s records, in words.
fn ends_at(probe: &Probe, hop: Hop) -> String {
    let verify = &probe.config.verify;
    let poll = verify.poll().map_or(String::new(), |p| {
        format!(" (every {})", humantime::format_duration(p))
    });
    // A sink's timestamp, as the probe names it: a column, or a pointer into the document.
    let in_sink = |name: &str| match verify {
        Verify::Postgres(_) => format!("column `{name}`"),
        _ => format!("`{name}` in the document"),
    };
    let stamps = verify.sink().map(|s| &s.stamps);
    match probe.hop_plan.bounds(hop).map(|(_, end)| end) {
        Some(End::Acknowledged) => "the broker's acknowledgement".into(),
        Some(End::Downstream) => {
            let field = verify.kafka().and_then(|k| k.hop_timestamp.as_deref());
            match (field, stamps.and_then(|s| s.hop.as_deref())) {
                (Some(pointer), _) => format!("the job's timestamp at `{pointer}`"),
                (None, Some(name)) => format!("the job's timestamp, {}", in_sink(name)),
                (None, None) => "the downstream record's broker timestamp".into(),
            }
        }
        Some(End::Written) => {
            let name = stamps.and_then(|s| s.written.as_deref()).unwrap_or("-");
            format!("the sink's write time, {}", in_sink(name))
        }
        Some(End::Arrived) if probe.hop_plan.polls() => {
            format!("the start of the poll that found the record{poll}")
        }
        Some(End::Arrived) if verify.kafka().is_some_and(|k| k.transactional) => {
            "the verifier reading the record back, once the job's transaction committed".into()
        }
        Some(End::Arrived) => "the verifier reading the record back".into(),
        None => "-".into(),
    }
}

/// How finely `hop` is measured: the coarsest of its two ends (a broker timestamp has
/// milliseconds, a poll finds a record up to its interval after it appeared).
fn quantised(probe: &Probe, hop: Hop) -> Option<Duration> {
    let (start, end) = probe.hop_plan.bounds(hop)?;
    let verify = &probe.config.verify;
    let broker_timestamp = verify.kafka().is_some_and(|k| k.hop_timestamp.is_none());
    let resolution = |end: End| match end {
        End::Downstream if broker_timestamp => Some(Duration::from_millis(1)),
        End::Arrived => verify.poll(),
        _ => None,
    };
    start.and_then(resolution).max(resolution(end))
}

/// A record's hops in milliseconds (to the microsecond, negative when a clock was behind), in
/// the order of its way. The ends of the hops are rounded rather than each hop, so that the hops
/// shown add up to the latency shown ([`micros`] of it), each within a microsecond of its own.
pub fn record_hops(hops: &Hops) -> serde_json::Map<String, serde_json::Value> {
    let (mut end_ns, mut shown_us) = (0i64, 0.0);
    hops.iter()
        .map(|(hop, ns, _)| {
            end_ns = end_ns.saturating_add(ns);
            let end_us = micros(end_ns);
            let ms = (end_us - shown_us) / 1e3;
            shown_us = end_us;
            (hop.as_str().to_string(), serde_json::Value::from(ms))
        })
        .collect()
}

/// Nanoseconds as whole microseconds (what the latency of a record shows, in milliseconds).
pub fn micros(ns: i64) -> f64 {
    (ns as f64 / 1e3).round()
}
