//! Log lines for record outcomes and events, one function per kind so that every line of a kind
//! carries the same fields: trace_id, span_id, probe, topic, partition, offset, record_id, site,
//! instance, and latency/reason where they apply. `topic`, `partition` and `offset` always say
//! where the record was sent (the probe topic); `read_topic`, `read_partition` and
//! `read_offset` where the verifier read it back (a job's output, a mirror, or the probe topic
//! itself), whatever the kind of line. `span_id` is the span that carries the
//! outcome (see [`Finished::outcome_span_id`]); for events about a record read back it is the
//! producer span from the record's `traceparent`. [`super::observer`] calls them after the
//! probe's lock, next to the counters of the same events.

use std::time::Duration;

use tracing::{info, warn};

use crate::outcome::{Finished, ForeignReason, Outcome, Seen};
use crate::record::Origin;

const TARGET: &str = "slo_probe::record";

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

/// Where a record was read back from a topic, for its line (all `None` for a record never
/// read back, or found in a sink).
pub struct ReadBack<'a> {
    pub topic: Option<&'a str>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

impl<'a> ReadBack<'a> {
    /// A settled record, read back from `verify_topic` where `f` says it was.
    pub fn of(verify_topic: &'a str, f: &Finished) -> Self {
        ReadBack {
            topic: f.read.map(|_| verify_topic),
            partition: f.read.map(|r| r.partition),
            offset: f.read.map(|r| r.offset),
        }
    }

    /// Where `seen` says: a topic's partition and offset (a sink's row has neither).
    fn seen(seen: &Seen<'a>) -> Self {
        ReadBack {
            topic: seen.partition.map(|_| seen.topic),
            partition: seen.partition,
            offset: seen.offset,
        }
    }
}

/// A record reached its final outcome; only non-`ok` outcomes are logged. `topic`, `partition`
/// and `offset` say where it was sent (the probe topic), `read_*` where it was read back.
pub fn finished(origin: &Origin, topic: &str, read: &ReadBack, f: &Finished) {
    if f.outcome == Outcome::Ok {
        return;
    }
    warn!(
        target: TARGET,
        outcome = f.outcome.as_str(),
        trace_id = %f.trace_id,
        span_id = %f.outcome_span_id(),
        producer_span_id = %f.span_id,
        probe = %origin.probe,
        topic,
        partition = f.partition,
        offset = f.offset,
        read_topic = read.topic,
        read_partition = read.partition,
        read_offset = read.offset,
        record_id = %f.id,
        seq = f.seq,
        site = %origin.site,
        instance = %origin.instance,
        latency_ms = ms(f.latency),
        reason = f.reason.as_ref().map(|r| r.kind),
        detail = f.reason.as_ref().map(|r| r.detail.as_str()),
        job = f.job.as_ref().map(|j| j.to_string()),
        "record {}",
        f.outcome.as_str()
    );
}

/// A verified record was seen again where `seen` says; `partition`: the probe topic's
/// partition it was sent to (unknown once `forgotten`).
pub fn duplicate(
    origin: &Origin,
    topic: &str,
    seen: &Seen,
    id: &uuid::Uuid,
    partition: Option<i32>,
    forgotten: bool,
) {
    let read = ReadBack::seen(seen);
    let cx = &seen.trace;
    info!(
        target: TARGET,
        event = "duplicate",
        trace_id = cx.as_ref().map(|c| c.trace_id().to_string()),
        span_id = cx.as_ref().map(|c| c.span_id().to_string()),
        probe = %origin.probe,
        topic,
        partition,
        read_topic = read.topic,
        read_partition = read.partition,
        read_offset = read.offset,
        record_id = %id,
        site = %origin.site,
        instance = %origin.instance,
        forgotten,
        "{}",
        if forgotten {
            "record seen again after its fate was forgotten (a replay of an old record)"
        } else {
            "record seen again after verification"
        }
    );
}

pub fn reordered(origin: &Origin, topic: &str, read: &ReadBack, f: &Finished) {
    info!(
        target: TARGET,
        event = "reordered",
        trace_id = %f.trace_id,
        span_id = %f.outcome_span_id(),
        probe = %origin.probe,
        topic,
        partition = f.partition,
        offset = f.offset,
        read_topic = read.topic,
        read_partition = read.partition,
        read_offset = read.offset,
        record_id = %f.id,
        seq = f.seq,
        site = %origin.site,
        instance = %origin.instance,
        latency_ms = ms(f.latency),
        "record verified after a later one of its partition that came the same way"
    );
}

/// A record arrived (where `seen` says) after it was declared lost; `partition`: the probe
/// topic's partition it was sent to.
pub fn late(
    origin: &Origin,
    topic: &str,
    seen: &Seen,
    id: &uuid::Uuid,
    latency: Option<Duration>,
    partition: i32,
) {
    let read = ReadBack::seen(seen);
    let cx = &seen.trace;
    warn!(
        target: TARGET,
        event = "late_arrival",
        trace_id = cx.as_ref().map(|c| c.trace_id().to_string()),
        span_id = cx.as_ref().map(|c| c.span_id().to_string()),
        probe = %origin.probe,
        topic,
        partition,
        read_topic = read.topic,
        read_partition = read.partition,
        read_offset = read.offset,
        record_id = %id,
        site = %origin.site,
        instance = %origin.instance,
        latency_ms = ms(latency),
        "record arrived after it was declared lost"
    );
}

pub fn foreign(origin: &Origin, seen: &Seen, reason: ForeignReason) {
    info!(
        target: TARGET,
        event = "foreign",
        probe = %origin.probe,
        topic = seen.topic,
        partition = seen.partition,
        offset = seen.offset,
        site = %origin.site,
        instance = %origin.instance,
        reason = reason.as_str(),
        "record on the probe topic is not a valid probe record"
    );
}

/// Record events of one kind (`lost`, `duplicate`, ...) that were counted but not logged one by
/// one since the last line of their kind.
pub fn record_summary(origin: &Origin, topic: &str, kind: &str, quiet: u64) {
    warn!(
        target: TARGET,
        event = "summary",
        kind,
        count = quiet,
        probe = %origin.probe,
        topic,
        site = %origin.site,
        instance = %origin.instance,
        "{quiet} more {kind} records since the last line of their kind (counted, not logged one by one)",
    );
}

/// Foreign records that were counted but not logged since the last one logged (`quiet`,
/// indexed like [`ForeignReason::ALL`]).
pub fn foreign_summary(origin: &Origin, topic: &str, quiet: &[u64; ForeignReason::ALL.len()]) {
    let [unparseable, unknown_version, missing_headers, unknown_id] = *quiet;
    info!(
        target: TARGET,
        event = "foreign",
        probe = %origin.probe,
        topic,
        site = %origin.site,
        instance = %origin.instance,
        unparseable,
        unknown_version,
        missing_headers,
        unknown_id,
        "{} more records on the probe topic were not valid probe records (counted, not logged one by one)",
        unparseable + unknown_version + missing_headers + unknown_id
    );
}
