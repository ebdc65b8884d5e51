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
//! is behind. It stays negative here (never clamped); the probe keeps it out of that hop's
//! quantiles and counts it as clock skew.

use std::time::{Duration, UNIX_EPOCH};

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
}

impl Stamp {
    /// The time at `pointer` in `doc` (a record's value, a row as JSON, a document).
    pub fn at(doc: &serde_json::Value, pointer: &str, mark: Mark) -> Result<Stamp, String> {
        let value = doc
            .pointer(pointer)
            .ok_or_else(|| format!("`{pointer}` is missing"))?;
        let at_ns = parse_time(value).map_err(|why| format!("`{pointer}` {why}"))?;
        Ok(Stamp { at_ns, mark })
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
}

/// A record's end-to-end latency split into hops: signed nanoseconds per hop (negative when a
/// clock was behind), each with the mark that ended it. The hops it has add up to its
/// end-to-end latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hops {
    /// Indexed like [`Hop::ALL`]; meaningful where `ends` has a mark.
    ns: [i64; 4],
    ends: [Option<Mark>; 4],
}

impl Hops {
    /// Hop `hop` took `ns` (negative: a clock was behind) and ended at `mark`.
    pub fn set(&mut self, hop: Hop, ns: i64, mark: Mark) {
        self.ns[hop.index()] = ns;
        self.ends[hop.index()] = Some(mark);
    }

    /// How long `hop` took, in nanoseconds (negative: a clock was behind); `None` when the
    /// record has no such hop.
    pub fn get(&self, hop: Hop) -> Option<i64> {
        self.ends[hop.index()].map(|_| self.ns[hop.index()])
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
            Verify::Kafka(_) => HopPlan {
                sink: false,
                downstream: !config.verifies_own_topic(),
                written: false,
            },
            Verify::Postgres(_) | Verify::Http(_) => {
                let stamps = config.verify.sink().map(|s| &s.stamps);
                HopPlan {
                    sink: true,
                    downstream: stamps.is_some_and(|s| s.hop.is_some()),
                    written: stamps.is_some_and(|s| s.written.is_some()),
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
        // Each mark as an offset from the scheduled send, in nanoseconds.
        let stamp = |hop: Hop, s: &Option<Result<Stamp, String>>| match s {
            Some(Ok(s)) => Ok((i128::from(s.at_ns) - scheduled, s.mark)),
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
        if let Some(Ok(s)) = &stamps.downstream
            && s.mark == Mark::CreateTime
            && s.at_ns.div_euclid(MILLI) == (scheduled_at_ns / MILLI as u64) as i64
        {
            return Err(Unsplit::CarriedOver);
        }
        let mut hops = Hops::default();
        let mut from: i128 = 0;
        for (hop, end) in self.layout() {
            let (at, mark) = match end {
                End::Acknowledged => (nanos(acked), Mark::Acknowledged),
                End::Downstream => stamp(hop, &stamps.downstream)?,
                End::Written => stamp(hop, &stamps.written)?,
                End::Arrived => (nanos(latency), arrived),
            };
            let ns = i64::try_from(at - from).map_err(|_| Unsplit::NoTimestamp {
                hop,
                why: "the timestamp is centuries away from the scheduled send".into(),
            })?;
            hops.set(hop, ns, mark);
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

/// Numbers below this are seconds since the epoch, below 1000 times it milliseconds, and so on.
const SECONDS_BELOW: f64 = 1e11;

/// A time the pipeline wrote, in nanoseconds since the Unix epoch: an RFC 3339 string (`Z` or
/// an offset such as `+02:00`, any fraction of a second), or a number of seconds,
/// milliseconds, microseconds or nanoseconds since the epoch, told apart by size (seconds
/// below 1e11, i.e. until the year 5138; milliseconds below 1e14; microseconds below 1e17;
/// nanoseconds above), as a JSON number or a string of digits. The error completes "`/field` ...".
pub fn parse_time(value: &serde_json::Value) -> Result<i64, String> {
    let not_a_time = || {
        let shown = crate::util::text::printable(&value.to_string(), 80);
        format!("is not a time (RFC 3339, or a number since the epoch), got {shown}")
    };
    let ns = match value {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => whole(i128::from(i)),
            None => n
                .as_u64()
                .map_or_else(|| fraction(n.as_f64()), |u| whole(u.into())),
        },
        serde_json::Value::String(s) => {
            let s = s.trim();
            match s.parse::<i128>() {
                Ok(i) => whole(i),
                Err(_) => rfc3339(s).or_else(|| fraction(s.parse().ok())),
            }
        }
        _ => None,
    };
    ns.ok_or_else(not_a_time)
}

/// Multipliers to nanoseconds of a number since the epoch, by the size that tells its unit.
const UNITS: [(f64, i128); 4] = [
    (SECONDS_BELOW, 1_000_000_000),
    (SECONDS_BELOW * 1e3, 1_000_000),
    (SECONDS_BELOW * 1e6, 1_000),
    (f64::INFINITY, 1),
];

/// A whole number since the epoch, in nanoseconds; `None` unless positive and before 2262.
fn whole(n: i128) -> Option<i64> {
    if n <= 0 {
        return None;
    }
    let (_, scale) = UNITS.iter().find(|(below, _)| (n as f64) < *below)?;
    i64::try_from(n.checked_mul(*scale)?).ok()
}

/// A number with a fraction since the epoch (seconds with milliseconds, say), in nanoseconds.
fn fraction(n: Option<f64>) -> Option<i64> {
    let n = n.filter(|n| n.is_finite() && *n > 0.0)?;
    let (_, scale) = UNITS.iter().find(|(below, _)| n < *below)?;
    let ns = n * *scale as f64;
    (ns < i64::MAX as f64).then(|| ns.round() as i64)
}

/// An RFC 3339 time (`2026-11-30T10:41:07.512874Z`, `...+02:00`; a space for the `T` too) in
/// nanoseconds since the epoch.
fn rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let (base, offset_s) = if let Some(base) = s.strip_suffix(['Z', 'z']) {
        (base, 0i64)
    } else if b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':' {
        let (base, offset) = s.split_at(s.len() - 6);
        let hours: i64 = offset[1..3].parse().ok()?;
        let minutes: i64 = offset[4..6].parse().ok()?;
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        (base, sign * (hours * 3600 + minutes * 60))
    } else {
        return None;
    };
    let utc = humantime::parse_rfc3339_weak(base).ok()?;
    let ns = i64::try_from(utc.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()?;
    // The local time minus its offset is UTC.
    Some(ns - offset_s * 1_000_000_000)
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
        }
    }

    fn stamp(after_ms: i64, mark: Mark) -> Option<Result<Stamp, String>> {
        Some(Ok(Stamp {
            at_ns: T0 as i64 + after_ms * MS,
            mark,
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
    fn the_hops_of_a_record_add_up_to_its_latency() {
        // acknowledged after 3 ms, the job's record at 33 ms, the row written at 235 ms, found
        // by the poll that began at 260 ms
        let stamps = Stamps {
            downstream: stamp(33, Mark::CreateTime),
            written: stamp(235, Mark::Written),
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
            written: None,
        };
        let hops = plan(false, true, false)
            .split(Some(ms(3)), ms(41), T0, &stamps)
            .unwrap();
        assert_eq!(hops.get(Hop::Pipeline), Some(-20 * MS));
        assert_eq!(hops.get(Hop::Read), Some(58 * MS));
        assert_eq!(hops.sum_ns(), 41 * MS);
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
            written: None,
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
            })),
            written: None,
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
    fn times_are_rfc3339_or_numbers_since_the_epoch_of_any_unit() {
        let want = 1_796_032_800_123_456_000i64;
        for v in [
            json!("2026-11-30T10:00:00.123456Z"),
            json!("2026-11-30T11:00:00.123456+01:00"),
            json!("2026-11-30T04:30:00.123456-05:30"),
            json!("2026-11-30 10:00:00.123456z"),
            json!(1_796_032_800_123_456_000u64),
            json!(1_796_032_800_123_456u64),
            json!("1796032800123456"),
        ] {
            assert_eq!(parse_time(&v), Ok(want), "{v}");
        }
        assert_eq!(parse_time(&json!(1_796_032_800_123u64)), Ok(want - 456_000));
        // seconds with a fraction: as exact as a double holds them (a few hundred ns here)
        for v in [json!(1_796_032_800.123_456), json!("1796032800.123456")] {
            let got = parse_time(&v).unwrap();
            assert!((got - want).abs() < 1_000, "{v}: {got}");
        }
        for bad in [
            json!("yesterday"),
            json!(true),
            json!(null),
            json!(0),
            json!(-5),
            json!("2026-11-30T10:00:00+0100"),
            json!({ "t": 1 }),
        ] {
            let e = parse_time(&bad).unwrap_err();
            assert!(e.starts_with("is not a time"), "{bad}: {e}");
        }
        let doc = json!({ "meta": { "processed_at": "2026-11-30T10:00:00.123456Z" } });
        let s = Stamp::at(&doc, "/meta/processed_at", Mark::JobTimestamp).unwrap();
        assert_eq!((s.at_ns, s.mark), (want, Mark::JobTimestamp));
        assert_eq!(
            Stamp::at(&doc, "/processed_at", Mark::JobTimestamp),
            Err("`/processed_at` is missing".into())
        );
    }
}
