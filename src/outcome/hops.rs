//! Where a record's time went: its end-to-end latency split into hops at timestamps the
//! pipeline already writes, without instrumenting the job.
//!
//! Every hop is the time between two marks on the record's way, as offsets from its scheduled
//! send: the broker's acknowledgement (the probe's own monotonic clock), then the downstream
//! record's timestamp (its broker timestamp, or a time the job wrote into it), then the time the
//! sink wrote the row (a column or field), then the moment the verifier read it back (or the
//! poll that found it began). The hops of one record are differences of consecutive marks, so
//! they add up to its end-to-end latency exactly, whatever the clocks say.
//!
//! The middle marks come from other machines' clocks: a hop can come out negative when a clock
//! is behind. It stays negative here (never clamped). A hop negative by no more than the
//! resolution of the mark that ends it (a broker timestamp's millisecond, the time a poll took)
//! may be zero, as measured ([`Reading::WithinResolution`]); beyond that a clock is off
//! ([`Reading::Skewed`]): the probe keeps it out of that hop's quantiles and counts it.

use std::time::Duration;

use super::time::parse_time;

use crate::config::{ProbeConfig, Verify};

/// A stretch of a record's way, in the order it is travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hop {
    /// Scheduled send to the broker's acknowledgement.
    Produce,
    /// Acknowledgement to the downstream record's timestamp: the job.
    Pipeline,
    /// The downstream timestamp to the row or document becoming visible in the sink.
    Sink,
    /// The last timestamp to the verifier reading the record back.
    Read,
}

impl Hop {
    /// Every hop, in order (and in the order of arrays indexed by hop).
    pub const ALL: [Hop; 4] = [Hop::Produce, Hop::Pipeline, Hop::Sink, Hop::Read];

    /// The `hop` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Produce => "produce",
            Hop::Pipeline => "pipeline",
            Hop::Sink => "sink",
            Hop::Read => "read",
        }
    }

    /// Its position in [`Hop::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What marks the end of a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mark {
    /// The broker acknowledged the record to the probe.
    Acknowledged,
    /// The downstream record's broker timestamp of type CreateTime: set by the producer that
    /// wrote it (the job), on the job's clock.
    CreateTime,
    /// The downstream record's broker timestamp of type LogAppendTime: set by the broker as
    /// it appended the record, on the broker's clock.
    LogAppendTime,
    /// A time the job wrote into the record (`hop_timestamp`).
    JobTimestamp,
    /// When the sink wrote the row or document (`timestamp_column`, `timestamp_pointer`).
    Written,
    /// The poll that found the record in the sink began (quantised by the poll interval).
    Polled,
    /// The verifier read the record back.
    ReadBack,
}

impl Mark {
    /// Every mark, in the order of arrays indexed by mark.
    pub const ALL: [Mark; 7] = [
        Mark::Acknowledged,
        Mark::CreateTime,
        Mark::LogAppendTime,
        Mark::JobTimestamp,
        Mark::Written,
        Mark::Polled,
        Mark::ReadBack,
    ];

    /// How `/status`, the verdict and spans name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Acknowledged => "acknowledged",
            Mark::CreateTime => "CreateTime",
            Mark::LogAppendTime => "LogAppendTime",
            Mark::JobTimestamp => "hop_timestamp",
            Mark::Written => "written",
            Mark::Polled => "poll",
            Mark::ReadBack => "read_back",
        }
    }

    /// Its position in [`Mark::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A wall-clock time the pipeline wrote (another machine's clock), and what it marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the Unix epoch.
    pub at_ns: i64,
    pub mark: Mark,
    /// How coarse it is (a broker timestamp: a millisecond): the time it stands for is in
    /// `at_ns .. at_ns + resolution_ns`.
    pub resolution_ns: i64,
}

impl Stamp {
    /// The time at `pointer` in `doc` (a record's value, a row as JSON, a document).
    pub fn at(doc: &serde_json::Value, pointer: &str, mark: Mark) -> Result<Stamp, String> {
        let value = doc
            .pointer(pointer)
            .ok_or_else(|| format!("`{pointer}` is missing"))?;
        let time = parse_time(value).map_err(|why| format!("`{pointer}` {why}"))?;
        Ok(Stamp {
            at_ns: time.ns,
            mark,
            resolution_ns: time.resolution_ns,
        })
    }
}

/// The timestamps a verifier read with a record. `None`: the verifier has no such timestamp
/// (its probe does not split that hop); `Some(Err(why))`: it should have, and could not read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamps {
    /// The downstream record's (its broker timestamp, or the job's `hop_timestamp`).
    pub downstream: Option<Result<Stamp, String>>,
    /// The sink's, for the row or document.
    pub written: Option<Result<Stamp, String>>,
    /// How long the poll that found the record took: the query may have seen rows written up
    /// to this long after the poll began (the arrival). Zero for a record read back.
    pub found_within: Duration,
}

/// How a hop reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reading {
    /// Zero or more.
    #[default]
    Measured,
    /// Negative by no more than the resolution of the mark that ends it: zero, as far as it
    /// can be measured (a broker timestamp truncated to its millisecond, a row written while
    /// the poll that found it was under way).
    WithinResolution,
    /// Negative beyond that: a clock is behind (clock skew).
    Skewed,
}

/// A record's end-to-end latency split into hops: signed nanoseconds per hop (negative when a
/// clock was behind), each with the mark that ended it. The hops it has add up to its
/// end-to-end latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hops {
    /// Indexed like [`Hop::ALL`]; meaningful where `ends` has a mark.
    ns: [i64; 4],
    ends: [Option<Mark>; 4],
    readings: [Reading; 4],
}

impl Hops {
    /// Hop `hop` took `ns` (negative: a clock was behind, or its end is coarse) and ended at
    /// `mark`, which stands for a time up to `tolerance_ns` later.
    pub fn set(&mut self, hop: Hop, ns: i64, mark: Mark, tolerance_ns: i64) {
        let i = hop.index();
        self.ns[i] = ns;
        self.ends[i] = Some(mark);
        self.readings[i] = match ns {
            0.. => Reading::Measured,
            _ if ns >= -tolerance_ns => Reading::WithinResolution,
            _ => Reading::Skewed,
        };
    }

    /// How long `hop` took, in nanoseconds (negative: a clock was behind); `None` when the
    /// record has no such hop.
    pub fn get(&self, hop: Hop) -> Option<i64> {
        self.ends[hop.index()].map(|_| self.ns[hop.index()])
    }

    /// How `hop` reads; `None` when the record has no such hop.
    pub fn reading(&self, hop: Hop) -> Option<Reading> {
        self.ends[hop.index()].map(|_| self.readings[hop.index()])
    }

    /// The hops the record has, in order: (hop, nanoseconds, the mark that ended it).
    pub fn iter(&self) -> impl Iterator<Item = (Hop, i64, Mark)> + '_ {
        Hop::ALL
            .into_iter()
            .filter_map(|h| self.ends[h.index()].map(|m| (h, self.ns[h.index()], m)))
    }

    /// The sum of the hops: the end-to-end latency, in nanoseconds.
    pub fn sum_ns(&self) -> i64 {
        self.iter().map(|(_, ns, _)| ns).sum()
    }
}

/// Why a record's latency was not split into hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsplit {
    /// It was read back before the broker's acknowledgement reached the probe (on the probe's
    /// own topic, with a fast consumer): there is no acknowledgement to split at.
    NotAcknowledged,
    /// The timestamp that ends `hop` was missing from the record or row, or not a time.
    NoTimestamp { hop: Hop, why: String },
    /// The downstream record carries the probe record's own CreateTime (its scheduled send, in
    /// milliseconds): the job (or a mirror) kept its input's timestamp, as Kafka Streams,
    /// Flink's Kafka sink and MirrorMaker do by default. It says nothing of when the job wrote.
    CarriedOver,
}

impl std::fmt::Display for Unsplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsplit::NotAcknowledged => {
                f.write_str("read back before the broker's acknowledgement reached the probe")
            }
            Unsplit::NoTimestamp { hop, why } => {
                write!(f, "no timestamp to end the {} hop: {why}", hop.as_str())
            }
            Unsplit::CarriedOver => f.write_str(
                "the downstream record carries the probe record's own CreateTime (the job keeps its input's timestamps): write the job's time into the record and name it with `hop_timestamp`, or set message.timestamp.type=LogAppendTime on the downstream topic",
            ),
        }
    }
}

/// Which marks split a probe's records, from its `verify` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopPlan {
    /// Records are looked up in a sink (found by a poll) rather than read back from a topic.
    sink: bool,
    /// A downstream timestamp ends `pipeline`: a downstream topic's records, or a sink's
    /// `hop_timestamp`.
    downstream: bool,
    /// The sink's own timestamp (`timestamp_column`, `timestamp_pointer`) ends `sink`.
    written: bool,
    /// The downstream topic is written in transactions: a record becomes readable when its
    /// transaction commits, after the timestamp the job wrote, so the `pipeline` hop runs to
    /// the read-back (the wait for the commit is the job's) and there is no `read` hop.
    committed: bool,
}

/// Where a hop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The broker's acknowledgement.
    Acknowledged,
    /// The downstream record's timestamp.
    Downstream,
    /// The sink's timestamp of the row or document.
    Written,
    /// Read back, or found by a poll.
    Arrived,
}

impl HopPlan {
    /// The plan of a probe: on its own topic, produce and read; on a downstream topic,
    /// produce, pipeline (to the downstream record's timestamp) and read; at a sink, produce,
    /// pipeline, sink and read as far as its rows carry timestamps (without `hop_timestamp`
    /// the pipeline hop runs to the sink's timestamp, the job and the sink together; without
    /// the sink's timestamp the last hop ends at the poll that found the record).
    pub fn of(config: &ProbeConfig) -> HopPlan {
        match &config.verify {
            Verify::Kafka(k) => HopPlan {
                sink: false,
                downstream: !config.verifies_own_topic() && !k.transactional,
                written: false,
                committed: k.transactional,
            },
            Verify::Postgres(_) | Verify::Http(_) => {
                let stamps = config.verify.sink().map(|s| &s.stamps);
                HopPlan {
                    sink: true,
                    downstream: stamps.is_some_and(|s| s.hop.is_some()),
                    written: stamps.is_some_and(|s| s.written.is_some()),
                    committed: false,
                }
            }
        }
    }

    /// Whether records are looked up in a sink: its last hop is quantised by the poll.
    pub fn polls(&self) -> bool {
        self.sink
    }

    /// Whether a downstream timestamp ends the `pipeline` hop (the verifier reads one with
    /// each record).
    pub fn downstream(&self) -> bool {
        self.downstream
    }

    /// The hops, in order, each with where it ends.
    fn layout(&self) -> Vec<(Hop, End)> {
        let mut out = vec![(Hop::Produce, End::Acknowledged)];
        if self.committed {
            // Readable at the commit, which no timestamp marks: the job, its commit and the
            // read together.
            out.push((Hop::Pipeline, End::Arrived));
            return out;
        }
        if self.downstream {
            out.push((Hop::Pipeline, End::Downstream));
        }
        if !self.sink {
            out.push((Hop::Read, End::Arrived));
            return out;
        }
        // The hop into the sink: from the downstream timestamp when there is one, else from
        // the acknowledgement (the job and the sink together).
        let into_sink = if self.downstream {
            Hop::Sink
        } else {
            Hop::Pipeline
        };
        if self.written {
            out.push((into_sink, End::Written));
            out.push((Hop::Read, End::Arrived));
        } else {
            out.push((into_sink, End::Arrived));
        }
        out
    }

    /// The hops each record of the probe splits into, in order.
    pub fn hops(&self) -> Vec<Hop> {
        self.layout().into_iter().map(|(h, _)| h).collect()
    }

    /// Whether `hop` compares the agent's clock with another machine's (one of its ends is a
    /// timestamp the pipeline wrote), so that it can come out negative: the produce hop and a
    /// read back from the probe's own topic are on the agent's clock alone.
    pub fn compares_clocks(&self, hop: Hop) -> bool {
        let stamp = |end: End| matches!(end, End::Downstream | End::Written);
        self.bounds(hop)
            .is_some_and(|(start, end)| start.is_some_and(stamp) || stamp(end))
    }

    /// Where `hop` starts and ends (`None` when records are not split into it); the first hop
    /// starts at the scheduled send (`None` as its start).
    pub fn bounds(&self, hop: Hop) -> Option<(Option<End>, End)> {
        let layout = self.layout();
        let i = layout.iter().position(|(h, _)| *h == hop)?;
        let start = i.checked_sub(1).map(|before| layout[before].1);
        Some((start, layout[i].1))
    }

    /// Splits a record's `latency` (scheduled send to verification) at its acknowledgement
    /// (`acked_after` its scheduled send, on the probe's clock) and the `stamps` read with it;
    /// `scheduled_at_ns` is its scheduled send on the probe's wall clock.
    pub fn split(
        &self,
        acked_after: Option<Duration>,
        latency: Duration,
        scheduled_at_ns: u64,
        stamps: &Stamps,
    ) -> Result<Hops, Unsplit> {
        let acked = acked_after.ok_or(Unsplit::NotAcknowledged)?;
        let scheduled = i128::from(scheduled_at_ns);
        // Each mark as an offset, what it is, and how much later the time it stands for may be.
        let stamp = |hop: Hop, s: &Option<Result<Stamp, String>>| match s {
            Some(Ok(s)) => Ok((i128::from(s.at_ns) - scheduled, s.mark, s.resolution_ns)),
            Some(Err(why)) => Err(Unsplit::NoTimestamp {
                hop,
                why: why.clone(),
            }),
            None => Err(Unsplit::NoTimestamp {
                hop,
                why: "the verifier read none".into(),
            }),
        };
        let arrived = if self.sink {
            Mark::Polled
        } else {
            Mark::ReadBack
        };
        let found_within = i64::try_from(stamps.found_within.as_nanos()).unwrap_or(i64::MAX);
        if self.downstream
            && let Some(Ok(s)) = &stamps.downstream
            && s.mark == Mark::CreateTime
            && s.at_ns.div_euclid(MILLI) == (scheduled_at_ns / MILLI as u64) as i64
        {
            return Err(Unsplit::CarriedOver);
        }
        let mut hops = Hops::default();
        let mut from: i128 = 0;
        // How much earlier than its mark the start of the next hop may be. The record was
        // readable once the broker had it, up to the produce hop before its acknowledgement
        // reached the probe: a job on the agent's host can read (and stamp) it before that.
        let mut early: i64 = 0;
        for (hop, end) in self.layout() {
            let (at, mark, tolerance) = match end {
                End::Acknowledged => (nanos(acked), Mark::Acknowledged, 0),
                End::Downstream => stamp(hop, &stamps.downstream)?,
                End::Written => stamp(hop, &stamps.written)?,
                End::Arrived => (nanos(latency), arrived, found_within),
            };
            let ns = i64::try_from(at - from).map_err(|_| Unsplit::NoTimestamp {
                hop,
                why: "the timestamp is centuries away from the scheduled send".into(),
            })?;
            hops.set(hop, ns, mark, tolerance.saturating_add(early));
            early = match end {
                End::Acknowledged => i64::try_from(acked.as_nanos()).unwrap_or(i64::MAX),
                _ => 0,
            };
            from = at;
        }
        Ok(hops)
    }
}

/// Nanoseconds in a millisecond: a broker timestamp's resolution.
const MILLI: i64 = 1_000_000;

fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MS: i64 = 1_000_000;
    /// 2026-11-30T10:00:00Z
    const T0: u64 = 1_796_032_800_000_000_000;

    fn plan(sink: bool, downstream: bool, written: bool) -> HopPlan {
        HopPlan {
            sink,
            downstream,
            written,
            committed: false,
        }
    }

    /// A timestamp `after_ms` the scheduled send, to the microsecond.
    fn stamp(after_ms: i64, mark: Mark) -> Option<Result<Stamp, String>> {
        Some(Ok(Stamp {
            at_ns: T0 as i64 + after_ms * MS,
            mark,
            resolution_ns: 1_000,
        }))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_verifier_splits_into_the_hops_its_timestamps_allow() {
        let names = |p: HopPlan| -> Vec<&str> { p.hops().iter().map(|h| h.as_str()).collect() };
        assert_eq!(names(plan(false, false, false)), ["produce", "read"]);
        assert_eq!(
            names(plan(false, true, false)),
            ["produce", "pipeline", "read"]
        );
        assert_eq!(
            names(plan(true, true, true)),
            ["produce", "pipeline", "sink", "read"]
        );
        assert_eq!(
            names(plan(true, true, false)),
            ["produce", "pipeline", "sink"]
        );
        assert_eq!(
            names(plan(true, false, true)),
            ["produce", "pipeline", "read"],
            "without the job's timestamp, pipeline runs to the sink's"
        );
        assert_eq!(names(plan(true, false, false)), ["produce", "pipeline"]);
    }

    #[test]
    fn only_hops_with_a_pipeline_timestamp_compare_clocks() {
        let comparing = |p: HopPlan| -> Vec<&str> {
            p.hops()
                .into_iter()
                .filter(|h| p.compares_clocks(*h))
                .map(Hop::as_str)
                .collect()
        };
        assert!(comparing(plan(false, false, false)).is_empty(), "own topic");
        assert_eq!(comparing(plan(false, true, false)), ["pipeline", "read"]);
        assert_eq!(
            comparing(plan(true, true, true)),
            ["pipeline", "sink", "read"]
        );
        assert_eq!(comparing(plan(true, true, false)), ["pipeline", "sink"]);
        assert!(
            comparing(plan(true, false, false)).is_empty(),
            "to the poll"
        );
    }

    #[test]
    fn the_hops_of_a_record_add_up_to_its_latency() {
        // acknowledged after 3 ms, the job's record at 33 ms, the row written at 235 ms, found
        // by the poll that began at 260 ms
        let stamps = Stamps {
            downstream: stamp(33, Mark::CreateTime),
            written: stamp(235, Mark::Written),
            found_within: ms(2),
        };
        let hops = plan(true, true, true)
            .split(Some(ms(3)), ms(260), T0, &stamps)
            .unwrap();
        let got: Vec<(Hop, i64, Mark)> = hops.iter().collect();
        assert_eq!(
            got,
            [
                (Hop::Produce, 3 * MS, Mark::Acknowledged),
                (Hop::Pipeline, 30 * MS, Mark::CreateTime),
                (Hop::Sink, 202 * MS, Mark::Written),
                (Hop::Read, 25 * MS, Mark::Polled),
            ]
        );
        assert_eq!(hops.sum_ns(), 260 * MS);
        // read back from a topic: the last hop ends at the read
        let kafka = plan(false, true, false)
            .split(Some(ms(3)), ms(41), T0, &stamps)
            .unwrap();
        assert_eq!(kafka.get(Hop::Read), Some(8 * MS));
        assert_eq!(kafka.iter().last().map(|(_, _, m)| m), Some(Mark::ReadBack));
        assert_eq!(kafka.sum_ns(), 41 * MS);
        assert_eq!(kafka.get(Hop::Sink), None);
    }

    #[test]
    fn a_clock_behind_makes_a_hop_negative_and_the_next_longer_never_clamped() {
        // the job's clock is 50 ms behind: its 30 ms look like -20 ms, the read 50 ms longer
        let stamps = Stamps {
            downstream: stamp(33 - 50, Mark::JobTimestamp),
            ..Stamps::default()
        };
        let hops = plan(false, true, false)
            .split(Some(ms(3)), ms(41), T0, &stamps)
            .unwrap();
        assert_eq!(hops.get(Hop::Pipeline), Some(-20 * MS));
        assert_eq!(hops.reading(Hop::Pipeline), Some(Reading::Skewed));
        assert_eq!(hops.get(Hop::Read), Some(58 * MS));
        assert_eq!(hops.reading(Hop::Read), Some(Reading::Measured));
        assert_eq!(hops.sum_ns(), 41 * MS);
    }

    /// A hop negative by no more than the resolution of the mark that ends it is not clock
    /// skew: a broker timestamp truncated to its millisecond, a row written while the poll that
    /// found it ran.
    #[test]
    fn a_hop_negative_within_the_resolution_of_its_end_is_not_skew() {
        // acknowledged at 3.2 ms, the job wrote at 3.6 ms: its CreateTime says 3 ms
        let create_time = |at_ns: i64| Stamps {
            downstream: Some(Ok(Stamp {
                at_ns: T0 as i64 + at_ns,
                mark: Mark::CreateTime,
                resolution_ns: MS,
            })),
            ..Stamps::default()
        };
        let acked = Some(Duration::from_micros(3_200));
        let hops = plan(false, true, false)
            .split(acked, ms(10), T0, &create_time(3 * MS))
            .unwrap();
        assert_eq!(hops.get(Hop::Pipeline), Some(-200_000), "never clamped");
        assert_eq!(hops.reading(Hop::Pipeline), Some(Reading::WithinResolution));
        // further behind than its millisecond and the produce hop (see below) together: skew
        let hops = plan(false, true, false)
            .split(acked, ms(10), T0, &create_time(-1_100_000))
            .unwrap();
        assert_eq!(hops.get(Hop::Pipeline), Some(-4_300_000));
        assert_eq!(hops.reading(Hop::Pipeline), Some(Reading::Skewed));
        // written at 260.5 ms, during the poll that began at 260 ms and took 2 ms
        let mut stamps = Stamps {
            downstream: stamp(33, Mark::CreateTime),
            written: Some(Ok(Stamp {
                at_ns: T0 as i64 + 260 * MS + 500_000,
                mark: Mark::Written,
                resolution_ns: 1_000,
            })),
            found_within: ms(2),
        };
        let p = plan(true, true, true);
        let hops = p.split(Some(ms(3)), ms(260), T0, &stamps).unwrap();
        assert_eq!(hops.get(Hop::Read), Some(-500_000));
        assert_eq!(hops.reading(Hop::Read), Some(Reading::WithinResolution));
        stamps.found_within = Duration::from_micros(100);
        let hops = p.split(Some(ms(3)), ms(260), T0, &stamps).unwrap();
        assert_eq!(hops.reading(Hop::Read), Some(Reading::Skewed));
    }

    /// The broker makes a record readable before its acknowledgement reaches the probe: a job
    /// on the agent's host (one clock) may read and stamp it up to the produce hop before the
    /// acknowledgement. That is not clock skew; earlier than the record's send would be.
    #[test]
    fn a_job_that_reads_a_record_before_its_acknowledgement_arrives_is_not_skew() {
        let job_at = |after_us: i64| Stamps {
            downstream: Some(Ok(Stamp {
                at_ns: T0 as i64 + after_us * 1_000,
                mark: Mark::JobTimestamp,
                resolution_ns: 1_000,
            })),
            ..Stamps::default()
        };
        // sent at the slot, acknowledged after 4 ms; the job stamped it at 2.5 ms
        let acked = Some(ms(4));
        let p = plan(false, true, false);
        let hops = p.split(acked, ms(9), T0, &job_at(2_500)).unwrap();
        assert_eq!(hops.get(Hop::Pipeline), Some(-1_500_000));
        assert_eq!(hops.reading(Hop::Pipeline), Some(Reading::WithinResolution));
        assert_eq!(hops.get(Hop::Read), Some(6_500_000), "the read absorbs it");
        assert_eq!(hops.sum_ns(), 9 * MS);
        // stamped before the record was even sent: the job's clock is behind
        let hops = p.split(acked, ms(9), T0, &job_at(-200)).unwrap();
        assert_eq!(hops.reading(Hop::Pipeline), Some(Reading::Skewed));
    }

    /// Downstream of a job that writes in transactions, a record is readable only once the
    /// transaction commits (at its next checkpoint): the wait is the job's, so the pipeline
    /// hop runs to the read-back and no read hop is made of it. The job's own timestamp is
    /// not where the record became readable.
    #[test]
    fn a_transactional_output_waits_for_its_commit_in_the_pipeline_hop() {
        let p = HopPlan {
            committed: true,
            ..plan(false, false, false)
        };
        let names: Vec<&str> = p.hops().iter().map(|h| h.as_str()).collect();
        assert_eq!(names, ["produce", "pipeline"]);
        assert!(
            !p.compares_clocks(Hop::Pipeline),
            "both ends on the agent's clock"
        );
        // written by the job at 30 ms, committed with its checkpoint, read back at 1.2 s
        let stamps = Stamps {
            downstream: stamp(30, Mark::CreateTime),
            ..Stamps::default()
        };
        let hops = p.split(Some(ms(3)), ms(1200), T0, &stamps).unwrap();
        let got: Vec<(Hop, i64, Mark)> = hops.iter().collect();
        assert_eq!(
            got,
            [
                (Hop::Produce, 3 * MS, Mark::Acknowledged),
                (Hop::Pipeline, 1197 * MS, Mark::ReadBack),
            ]
        );
        // a CreateTime carried over from the input says nothing here: still split
        let carried = Stamps {
            downstream: stamp(0, Mark::CreateTime),
            ..Stamps::default()
        };
        assert!(p.split(Some(ms(3)), ms(1200), T0, &carried).is_ok());
    }

    #[test]
    fn a_record_without_its_timestamps_is_not_split() {
        let p = plan(false, true, false);
        assert_eq!(
            p.split(None, ms(10), T0, &Stamps::default()),
            Err(Unsplit::NotAcknowledged)
        );
        let missing = Stamps {
            downstream: Some(Err("`/processed_at` is missing".into())),
            ..Stamps::default()
        };
        let e = p.split(Some(ms(1)), ms(10), T0, &missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no timestamp to end the pipeline hop: `/processed_at` is missing"
        );
        // the job kept the probe record's CreateTime (its scheduled send, in ms): it says
        // nothing of the job; a LogAppendTime or the job's own field in the same millisecond does
        let carried = |mark| Stamps {
            downstream: Some(Ok(Stamp {
                at_ns: T0 as i64 + 400_000,
                mark,
                resolution_ns: MS,
            })),
            ..Stamps::default()
        };
        assert_eq!(
            p.split(
                Some(ms(1)),
                ms(10),
                T0 + 300_000,
                &carried(Mark::CreateTime)
            ),
            Err(Unsplit::CarriedOver)
        );
        for mark in [Mark::LogAppendTime, Mark::JobTimestamp] {
            assert!(p.split(Some(ms(1)), ms(10), T0, &carried(mark)).is_ok());
        }
        // a probe on its own topic needs no timestamp
        let own = plan(false, false, false)
            .split(Some(ms(1)), ms(10), T0, &Stamps::default())
            .unwrap();
        assert_eq!(
            (own.get(Hop::Produce), own.get(Hop::Read)),
            (Some(MS), Some(9 * MS))
        );
    }
    #[test]
    fn a_stamp_is_the_time_at_its_pointer() {
        let want = 1_796_032_800_123_456_000i64;
        let doc = json!({ "meta": { "processed_at": "2026-11-30T10:00:00.123456Z" } });
        let s = Stamp::at(&doc, "/meta/processed_at", Mark::JobTimestamp).unwrap();
        assert_eq!(
            (s.at_ns, s.mark, s.resolution_ns),
            (want, Mark::JobTimestamp, 1_000)
        );
        assert_eq!(
            Stamp::at(&doc, "/processed_at", Mark::JobTimestamp),
            Err("`/processed_at` is missing".into())
        );
    }
}
