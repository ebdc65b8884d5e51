//! A probe's hop measurements: per hop it splits records into, the hop's latency over the
//! sliding window (and the run), the records whose hop came out negative (clock skew) and how
//! far, and which marks ended the hop; and how many records could not be split, and why.
//!
//! What goes into a hop's quantiles: the hops of `ok` records (the records of the end-to-end
//! quantiles) that are zero or more, and as zero those negative by no more than the resolution
//! of the mark that ends them (counted: within measurement, they may be zero). A hop negative
//! beyond that (a clock behind) is never recorded, never clamped: the record is left out of
//! that hop's quantiles (its other hops are kept), counted as skewed, and how far below zero it
//! went is kept for the largest skew.

use std::time::Duration;

use tokio::time::Instant;

use crate::outcome::{Finished, Hop, HopGauges, HopPlan, Mark, Outcome, Reading, Stamps};
use crate::stats::{self, Largest, Latency};

/// One hop of a probe.
#[derive(Debug)]
struct HopState {
    hop: Hop,
    /// The hop's latency, of `ok` records whose hop is zero or more.
    latency: Latency,
    /// How far below zero the negative ones went.
    skew: Largest,
    /// Records whose hop was negative beyond its resolution (left out of `latency`).
    skewed: u64,
    /// Records whose hop was negative within its resolution (in `latency` as zero).
    within_resolution: u64,
    /// Records whose hop ended at each mark, indexed like [`Mark::ALL`].
    ends: [u64; Mark::ALL.len()],
}

/// A probe's hops.
#[derive(Debug)]
pub struct HopStats {
    /// The hops of the probe's plan, in order.
    hops: Vec<HopState>,
    /// `ok` records whose latency could not be split, and why the last one could not.
    unsplit: u64,
    last_unsplit: Option<String>,
    /// The timestamps the probe file names, and how often verified records carried them.
    named: Vec<NamedStamp>,
}

/// Which of a record's timestamps a [`NamedStamp`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampOf {
    /// The job's (`hop_timestamp`).
    Job,
    /// The sink's (`timestamp_column`, `timestamp_pointer`).
    Sink,
}

/// A timestamp the probe file names (`hop_timestamp`, `timestamp_column`,
/// `timestamp_pointer`): how many verified records carried it as a time, how many did not,
/// and why the last did not. One that matches no record is a typo, or a job that does not
/// write it: the verdict fails naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedStamp {
    /// The field that names it, e.g. `verify.kafka.hop_timestamp`.
    pub field: &'static str,
    /// The pointer or column it names.
    pub name: String,
    pub of: StampOf,
    pub found: u64,
    pub missing: u64,
    pub last_missing: Option<String>,
}

impl NamedStamp {
    /// The timestamps `verify` names.
    pub fn of(verify: &crate::config::Verify) -> Vec<NamedStamp> {
        use crate::config::Verify;
        let named = |field: &'static str, name: &str, of| NamedStamp {
            field,
            name: name.to_string(),
            of,
            found: 0,
            missing: 0,
            last_missing: None,
        };
        let (job, sink) = match verify {
            Verify::Kafka(k) => {
                let job = k.hop_timestamp.as_deref();
                return job
                    .map(|p| named("verify.kafka.hop_timestamp", p, StampOf::Job))
                    .into_iter()
                    .collect();
            }
            Verify::Postgres(_) => (
                "verify.postgres.hop_timestamp",
                "verify.postgres.timestamp_column",
            ),
            Verify::Http(_) => ("verify.http.hop_timestamp", "verify.http.timestamp_pointer"),
        };
        let stamps = verify.sink().map(|s| &s.stamps);
        let hop = stamps.and_then(|s| s.hop.as_deref());
        let written = stamps.and_then(|s| s.written.as_deref());
        let mut out: Vec<NamedStamp> = hop
            .map(|h| named(job, h, StampOf::Job))
            .into_iter()
            .collect();
        out.extend(written.map(|w| named(sink, w, StampOf::Sink)));
        out
    }

    /// Named, and carried by none of the verified records that looked for it.
    pub fn never_found(&self) -> bool {
        self.found == 0 && self.missing > 0
    }
}

/// After this many verified records without a named timestamp (and none with it), the agent
/// says so in its log, once.
pub const MISSING_TO_WARN: u64 = 10;

/// One hop at one instant, for `/status` and the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct HopSnapshot {
    pub hop: Hop,
    /// Samples and quantiles (seconds) over the sliding window.
    pub window: (u64, Option<[f64; 6]>),
    /// Over the whole run, when kept (a finite run).
    pub total: Option<(u64, Option<[f64; 6]>)>,
    /// Records whose hop came out negative beyond its resolution, since start.
    pub skewed: u64,
    /// Records whose hop came out negative within its resolution (taken as zero), since start.
    pub within_resolution: u64,
    /// How far below zero the most negative went: in the window, and since start.
    pub largest_skew_window: Option<Duration>,
    pub largest_skew_ever: Option<Duration>,
    /// Which marks ended the hop, and how often, since start.
    pub ends: Vec<(Mark, u64)>,
}

/// A probe's hops at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HopsSnapshot {
    /// The hops of the probe's plan, in order.
    pub hops: Vec<HopSnapshot>,
    /// `ok` records whose latency could not be split, and why the last one could not.
    pub unsplit: u64,
    pub last_unsplit: Option<String>,
    /// The timestamps the probe file names, and how often verified records carried them.
    pub named: Vec<NamedStamp>,
}

impl HopStats {
    pub fn new(
        plan: &HopPlan,
        named: Vec<NamedStamp>,
        window: Duration,
        origin: Instant,
        run_totals: bool,
    ) -> Self {
        HopStats {
            hops: plan
                .hops()
                .into_iter()
                .map(|hop| HopState {
                    hop,
                    latency: Latency::new(window, origin, run_totals),
                    skew: Largest::new(window, origin),
                    skewed: 0,
                    within_resolution: 0,
                    ends: [0; Mark::ALL.len()],
                })
                .collect(),
            unsplit: 0,
            last_unsplit: None,
            named,
        }
    }

    /// Tallies the named timestamps a verified record carried (`stamps`, as its verifier read
    /// them). Returns the timestamp that has just been missing from [`MISSING_TO_WARN`]
    /// verified records without ever being found, for the one log line that says so.
    pub fn tally(&mut self, stamps: &Stamps) -> Option<&NamedStamp> {
        let mut warn = None;
        for (i, n) in self.named.iter_mut().enumerate() {
            let read = match n.of {
                StampOf::Job => &stamps.downstream,
                StampOf::Sink => &stamps.written,
            };
            match read {
                Some(Ok(_)) => n.found += 1,
                Some(Err(why)) => {
                    n.missing += 1;
                    n.last_missing = Some(why.clone());
                    if n.found == 0 && n.missing == MISSING_TO_WARN {
                        warn = Some(i);
                    }
                }
                None => {}
            }
        }
        warn.map(|i| &self.named[i])
    }

    /// The hops of a record that reached its outcome: an `ok` record's go into the measures.
    pub fn record(&mut self, now: Instant, f: &Finished) {
        if f.outcome != Outcome::Ok {
            return;
        }
        match &f.hops {
            Some(Ok(hops)) => {
                for (hop, ns, mark) in hops.iter() {
                    let Some(state) = self.hops.iter_mut().find(|s| s.hop == hop) else {
                        continue;
                    };
                    state.ends[mark.index()] += 1;
                    let magnitude = Duration::from_nanos(ns.unsigned_abs());
                    match hops.reading(hop) {
                        Some(Reading::Measured) => state.latency.record(now, magnitude),
                        Some(Reading::WithinResolution) => {
                            state.within_resolution += 1;
                            state.latency.record(now, Duration::ZERO);
                        }
                        Some(Reading::Skewed) => {
                            state.skewed += 1;
                            state.skew.record(now, magnitude);
                        }
                        None => {}
                    }
                }
            }
            Some(Err(why)) => {
                self.unsplit += 1;
                self.last_unsplit = Some(why.to_string());
            }
            None => {}
        }
    }

    /// Each hop's values over the window, indexed like [`Hop::ALL`].
    pub fn gauges(&self, now: Instant) -> [HopGauges; 4] {
        let mut out = [HopGauges::default(); 4];
        for s in &self.hops {
            out[s.hop.index()] = HopGauges {
                latency: stats::window_values(&s.latency.window_with_sum(now)),
                largest_skew: s.skew.in_window(now).unwrap_or_default(),
            };
        }
        out
    }

    pub fn snapshot(&self, now: Instant) -> HopsSnapshot {
        HopsSnapshot {
            hops: self
                .hops
                .iter()
                .map(|s| {
                    let window = s.latency.window(now);
                    HopSnapshot {
                        hop: s.hop,
                        window: (window.len(), stats::quantiles(&window)),
                        total: s.latency.total().map(|h| (h.len(), stats::quantiles(h))),
                        skewed: s.skewed,
                        within_resolution: s.within_resolution,
                        largest_skew_window: s.skew.in_window(now),
                        largest_skew_ever: s.skew.ever(),
                        ends: Mark::ALL
                            .into_iter()
                            .zip(s.ends)
                            .filter(|(_, n)| *n > 0)
                            .collect(),
                    }
                })
                .collect(),
            unsplit: self.unsplit,
            last_unsplit: self.last_unsplit.clone(),
            named: self.named.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Hops, Unsplit};
    use crate::testing::finished;

    const MS: i64 = 1_000_000;

    /// A record whose pipeline hop (ended by a CreateTime, to the millisecond) took
    /// `pipeline_us`.
    fn with_hops(seq: u64, pipeline_us: i64, read_ms: i64) -> Finished {
        let latency_us = 2_000 + pipeline_us + read_ms * 1_000;
        let mut f = finished(seq, Outcome::Ok, 0);
        f.latency = Some(Duration::from_micros(latency_us as u64));
        let mut h = Hops::default();
        h.set(Hop::Produce, 2 * MS, Mark::Acknowledged, 0);
        h.set(Hop::Pipeline, pipeline_us * 1_000, Mark::CreateTime, MS);
        h.set(Hop::Read, read_ms * MS, Mark::ReadBack, 0);
        f.hops = Some(Ok(h));
        f
    }

    fn downstream_plan() -> HopPlan {
        let cfg =
            crate::testing::probe_config("name: d\ntopic: in\nverify:\n  kafka: { topic: out }\n");
        HopPlan::of(&cfg)
    }

    /// A named timestamp is tallied per verified record; missing from the first ten and found
    /// in none, it is reported once (the agent's log line), and never again.
    #[test]
    fn a_named_timestamp_missing_from_every_record_is_reported_once() {
        let cfg = crate::testing::probe_config(
            "name: d\ntopic: in\nverify:\n  kafka: { topic: out, id_from: header, hop_timestamp: /processed_ad }\n",
        );
        let named = NamedStamp::of(&cfg.verify);
        assert_eq!(named.len(), 1);
        let now = Instant::now();
        let mut s = HopStats::new(
            &HopPlan::of(&cfg),
            named,
            Duration::from_secs(60),
            now,
            true,
        );
        let missing = Stamps {
            downstream: Some(Err("`/processed_ad` is missing".into())),
            ..Stamps::default()
        };
        let reported: Vec<u64> = (1..=25)
            .filter_map(|_| s.tally(&missing).map(|n| n.missing))
            .collect();
        assert_eq!(reported, [MISSING_TO_WARN]);
        let n = &s.snapshot(now).named[0];
        assert_eq!(
            (n.field, n.name.as_str()),
            ("verify.kafka.hop_timestamp", "/processed_ad")
        );
        assert_eq!((n.found, n.missing), (0, 25));
        assert!(n.never_found());
        // found once: it matches, it is no typo
        let found = Stamps {
            downstream: Some(Ok(crate::outcome::Stamp {
                at_ns: 1,
                mark: Mark::JobTimestamp,
                resolution_ns: 1,
            })),
            ..Stamps::default()
        };
        assert!(s.tally(&found).is_none());
        assert!(!s.snapshot(now).named[0].never_found());
    }

    #[tokio::test(start_paused = true)]
    async fn a_negative_hop_is_counted_as_skew_and_kept_out_of_its_quantiles() {
        let now = Instant::now();
        let mut s = HopStats::new(
            &downstream_plan(),
            Vec::new(),
            Duration::from_secs(60),
            now,
            true,
        );
        for seq in 0..8 {
            s.record(now, &with_hops(seq, 30_000, 5));
        }
        // a job clock 50 ms behind: -20 ms, and a read 50 ms longer
        s.record(now, &with_hops(8, -20_000, 55));
        s.record(now, &with_hops(9, -21_000, 56));
        // a fast job, its CreateTime truncated: within the millisecond, zero as far as known
        s.record(now, &with_hops(10, -400, 5));
        // not verified, not split: never in the measures
        s.record(now, &finished(10, Outcome::Lost, 0));
        let mut unsplit = finished(12, Outcome::Ok, 7);
        unsplit.hops = Some(Err(Unsplit::NotAcknowledged));
        s.record(now, &unsplit);

        let snap = s.snapshot(now);
        let hops: Vec<Hop> = snap.hops.iter().map(|h| h.hop).collect();
        assert_eq!(hops, [Hop::Produce, Hop::Pipeline, Hop::Read]);
        let pipeline = &snap.hops[1];
        assert_eq!(
            pipeline.window.0, 9,
            "the two skewed left out, the one within kept"
        );
        assert_eq!(pipeline.total.unwrap().0, 9);
        let q = pipeline.window.1.unwrap();
        assert!(q.iter().all(|v| *v >= 0.0), "no negative latency: {q:?}");
        assert!((q[5] - 0.030).abs() < 1e-4, "{q:?}");
        assert_eq!((pipeline.skewed, pipeline.within_resolution), (2, 1));
        assert_eq!(
            pipeline.largest_skew_window,
            Some(Duration::from_millis(21))
        );
        assert_eq!(pipeline.largest_skew_ever, Some(Duration::from_millis(21)));
        assert_eq!(pipeline.ends, [(Mark::CreateTime, 11)]);
        let read = &snap.hops[2];
        assert_eq!((read.window.0, read.skewed), (11, 0), "kept, longer");
        assert_eq!(
            (snap.unsplit, snap.last_unsplit.as_deref()),
            (
                1,
                Some("read back before the broker's acknowledgement reached the probe")
            )
        );

        let g = s.gauges(now);
        let pipeline = g[Hop::Pipeline.index()].latency;
        assert_eq!(pipeline.count, 9);
        // eight of 30 ms, and the one within the millisecond as zero (HDR's 1 µs)
        assert!((pipeline.sum - 0.240).abs() < 2e-6, "{pipeline:?}");
        assert_eq!(
            g[Hop::Pipeline.index()].largest_skew,
            Duration::from_millis(21)
        );
        assert_eq!(
            g[Hop::Sink.index()],
            HopGauges::default(),
            "not in the plan"
        );
        // the skew leaves the window with its records
        tokio::time::advance(Duration::from_secs(61)).await;
        let g = s.gauges(Instant::now());
        assert_eq!(g[Hop::Pipeline.index()].largest_skew, Duration::ZERO);
        assert_eq!(
            s.snapshot(Instant::now()).hops[1].skewed,
            2,
            "the count stays"
        );
    }
}
