//! The vocabulary of what happens to records: the one final [`Outcome`] of each, why it is not
//! `ok` ([`Reason`]), the record as it ends ([`Finished`]), running totals ([`Counts`]), where an
//! event about a record read back was seen ([`Seen`]), why a sink poll failed ([`SinkError`]),
//! the tasks a probe depends on ([`Task`]) and the values of a sliding window
//! ([`WindowValues`]); [`hops`]: a record's latency split into hops at the pipeline's own
//! timestamps, which [`time`] reads; [`job`]: the state of a job records go through. Plain types: everything above uses them, they use only [`crate::record`] and
//! [`crate::config`].

mod hops;
mod job;
mod time;

use std::collections::BTreeMap;
use std::time::Duration;

use uuid::Uuid;

pub use crate::record::ForeignReason;
use crate::record::View;
pub use hops::{End, Hop, HopPlan, Hops, Mark, Reading, Stamp, Stamps, Unsplit};
pub use job::{
    Checkpoints, JobContext, JobEvent, JobException, JobObserver, JobPollError, JobPollErrorKind,
    JobState, JobStatus, clock,
};
pub use time::parse_time;

/// The final outcome of a sent record. Exactly one per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Arrived intact within the timeout.
    Ok,
    /// Not read back by its deadline (whether or not the broker acknowledged it; the log
    /// line's reason says which).
    Lost,
    /// Arrived, but not as sent.
    Corrupt,
    /// The producer reported it could not deliver (before the deadline), or the in-flight bound
    /// was reached and the record was never sent (`backpressure`).
    SendFailed,
}

impl Outcome {
    /// Every outcome, in the order of arrays indexed by outcome.
    pub const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Lost,
        Outcome::Corrupt,
        Outcome::SendFailed,
    ];

    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Lost => "lost",
            Outcome::Corrupt => "corrupt",
            Outcome::SendFailed => "send_failed",
        }
    }

    /// Its position in [`Outcome::ALL`] (and in the arrays indexed like it).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A record that just reached its final outcome.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: Uuid,
    pub partition: i32,
    pub seq: u64,
    pub trace_id: opentelemetry::trace::TraceId,
    /// The producer span (the record's `traceparent`), and whether its trace is sampled.
    pub span_id: opentelemetry::trace::SpanId,
    pub sampled: bool,
    /// Scheduled send, wall clock (ns since the Unix epoch), as in the envelope.
    pub scheduled_at_ns: u64,
    /// From the scheduled send to the broker's acknowledgement, when there was one.
    pub acked_after: Option<Duration>,
    /// From the scheduled send to this outcome.
    pub since_scheduled: Duration,
    /// Where it is on the probe topic: the offset the broker acknowledged (or, read back before
    /// the acknowledgement, the one it was read at).
    pub offset: Option<i64>,
    /// Where the verifier read it, for a record read back from a topic (the probe topic, a
    /// mirror or a job's output): the partition and offset there.
    pub read: Option<ReadAt>,
    pub outcome: Outcome,
    /// End-to-end latency (scheduled send to verification), for records that arrived.
    pub latency: Option<Duration>,
    /// Why it is not `ok`.
    pub reason: Option<Reason>,
    /// For a record that arrived: its latency split into hops, or why it could not be.
    pub hops: Option<Result<Hops, Unsplit>>,
    /// For a record that is not `ok` and went through a job the probe names: what the job was
    /// doing while it was in flight.
    pub job: Option<std::sync::Arc<JobContext>>,
}

impl Finished {
    /// Its hops, when it arrived and its latency could be split.
    pub fn hops(&self) -> Option<&Hops> {
        self.hops.as_ref().and_then(|h| h.as_ref().ok())
    }

    /// The id of the span that verified (or gave up on) this record: see [`verify_span_id`].
    pub fn verify_span_id(&self) -> opentelemetry::trace::SpanId {
        verify_span_id(&self.id)
    }

    /// The span that carries this record's outcome: the producer span for a record that was
    /// never delivered, the verification span otherwise.
    pub fn outcome_span_id(&self) -> opentelemetry::trace::SpanId {
        match self.outcome {
            Outcome::SendFailed => self.span_id,
            _ => self.verify_span_id(),
        }
    }
}

/// The id of the span that verifies (or gives up on) record `id`. Derived from the record id
/// (the random bits of its UUIDv7, never zero), so log lines, `/status` and exported spans agree
/// whether or not the trace is exported.
pub fn verify_span_id(id: &Uuid) -> opentelemetry::trace::SpanId {
    opentelemetry::trace::SpanId::from_bytes(id.as_bytes()[8..16].try_into().expect("8 bytes"))
}

/// Where a record was read back: a partition and offset of the topic the probe verifies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAt {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record did not end `ok`: a short, low-cardinality kind to filter on (`timeout`,
/// `backpressure`, `producer`, or the corruption's kind such as `trace_context`), and the
/// sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub kind: &'static str,
    pub detail: String,
}

impl Reason {
    /// `detail` may quote what came back (a field of a record, a sink's row): it is made
    /// printable and cut before anything shows it.
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Reason {
        Reason {
            kind,
            detail: crate::util::text::printable(
                &detail.into(),
                crate::util::text::MAX_OUTSIDE_TEXT,
            ),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Per-partition totals (which partition, and so which leader, is failing).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCounts {
    pub sent: u64,
    pub outcomes: [u64; 4],
}

/// Running totals. Conservation: `sent == sum(outcomes) + in_flight` at every instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Records scheduled.
    pub sent: u64,
    /// Final outcomes, indexed like [`Outcome::ALL`].
    pub outcomes: [u64; 4],
    /// Records awaiting their outcome.
    pub in_flight: u64,
    /// Verified records seen again.
    pub duplicates: u64,
    /// Records verified after a higher seq on their partition.
    pub reordered: u64,
    /// Records read back after being declared lost.
    pub late: u64,
}

impl Counts {
    /// Records with outcome `o`.
    pub fn get(&self, o: Outcome) -> u64 {
        self.outcomes[o.index()]
    }

    /// Records with a final outcome.
    pub fn finished(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    /// `sent == finished + in_flight`, as it must always be.
    pub fn conserved(&self) -> bool {
        self.sent == self.finished() + self.in_flight
    }
}

/// Where an event about a record read back was seen: a record on a topic, or a sink's row.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// The record's `traceparent`, when it carried one.
    pub trace: Option<opentelemetry::trace::SpanContext>,
}

impl<'a> Seen<'a> {
    /// In a sink (`postgres`, `http`): no partition, offset or headers.
    pub fn sink(kind: &'a str) -> Self {
        Seen {
            topic: kind,
            partition: None,
            offset: None,
            trace: None,
        }
    }
}

impl<'a> From<&View<'a>> for Seen<'a> {
    fn from(view: &View<'a>) -> Self {
        Seen {
            topic: view.topic,
            partition: Some(view.partition),
            offset: Some(view.offset),
            trace: view.span_context(),
        }
    }
}

/// Why a poll failed: the `reason` label of `slo_probe_verify_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkErrorKind {
    /// No connection: refused, reset, DNS, TLS, the server shutting down.
    Unreachable,
    /// Credentials refused (PostgreSQL class 28, HTTP 401/403).
    Auth,
    /// The query failed (SQL error, a result the poller cannot read).
    Query,
    /// A non-2xx HTTP status other than 401/403.
    HttpStatus,
    /// The response is not JSON, or has no array where `ids_pointer` points.
    InvalidJson,
    /// No answer within the sink's `timeout`.
    Timeout,
    /// The query answers, but not in a way the probe can verify (a column it cannot compare,
    /// a missing column, `$1` of the wrong type): a configuration mistake, located in the
    /// probe file. The probe stops sending until the sink's answer is fit again.
    Refused,
}

impl SinkErrorKind {
    /// Every kind, in the order of the `reason` label values.
    pub const ALL: [SinkErrorKind; 7] = [
        SinkErrorKind::Unreachable,
        SinkErrorKind::Auth,
        SinkErrorKind::Query,
        SinkErrorKind::HttpStatus,
        SinkErrorKind::InvalidJson,
        SinkErrorKind::Timeout,
        SinkErrorKind::Refused,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkErrorKind::Unreachable => "unreachable",
            SinkErrorKind::Auth => "auth",
            SinkErrorKind::Query => "query",
            SinkErrorKind::HttpStatus => "http_status",
            SinkErrorKind::InvalidJson => "invalid_json",
            SinkErrorKind::Timeout => "timeout",
            SinkErrorKind::Refused => "refused",
        }
    }
}

/// Why a Schema Registry request failed: the `reason` label of
/// `slo_probe_schema_registry_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryErrorKind {
    /// No answer: connection refused, DNS, TLS, timeout.
    Unreachable,
    /// Credentials refused (HTTP 401 or 403).
    Auth,
    /// The subject or schema is not there.
    NotFound,
    /// Any other answer.
    HttpStatus,
}

impl RegistryErrorKind {
    pub const ALL: [RegistryErrorKind; 4] = [
        RegistryErrorKind::Unreachable,
        RegistryErrorKind::Auth,
        RegistryErrorKind::NotFound,
        RegistryErrorKind::HttpStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RegistryErrorKind::Unreachable => "unreachable",
            RegistryErrorKind::Auth => "auth",
            RegistryErrorKind::NotFound => "not_found",
            RegistryErrorKind::HttpStatus => "http_status",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
/// Why a sink poll failed: its kind (a label) and what happened.
pub struct SinkError {
    /// What kind of failure (the `reason` label).
    pub kind: SinkErrorKind,
    /// Never contains a credential; printable (control characters escaped).
    pub message: String,
}

impl SinkError {
    /// `message` may quote the sink (a server's error text): it is made printable and cut.
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        SinkError {
            kind,
            message: crate::util::text::printable(
                &message.into(),
                crate::util::text::MAX_OUTSIDE_TEXT,
            ),
        }
    }
}

/// The supervised tasks a probe depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    /// Schedules, sends and settles the probe's records (the probe's send loop).
    SendLoop,
    /// Turns topic metadata into the probe's partitions (its discovery).
    Discovery,
    /// Reads a topic's partitions, shared by the probes on it (a topic watch).
    TopicWatch,
    /// The paired consumer reading records back, shared by the probes on its cluster.
    KafkaVerifier,
    /// The sink poller looking records up.
    SinkPoller,
    /// Asks a Schema Registry for the probe's schema id until it answers (`run` only, while it
    /// does not).
    SchemaRegistry,
    /// Polls the job the probe's records go through (`job`), shared by the probes naming it.
    JobPoller,
}

impl Task {
    /// The `task` label of `slo_probe_task_restarts_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::SendLoop => "send_loop",
            Task::Discovery => "discovery",
            Task::TopicWatch => "topic_watch",
            Task::KafkaVerifier => "kafka_verifier",
            Task::SinkPoller => "sink_poller",
            Task::SchemaRegistry => "schema_registry",
            Task::JobPoller => "job_poller",
        }
    }
}

/// One probe's window: `None` quantiles while it holds no sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowValues {
    pub count: u64,
    /// Sum of the samples, seconds.
    pub sum: f64,
    /// Seconds, indexed like [`QUANTILES`].
    pub quantiles: Option<[f64; 6]>,
}

/// Something that happened to a probe, as it reports it to its [`Observer`].
#[derive(Debug)]
pub enum Event<'a> {
    /// A record was counted as sent; `in_flight` records await their outcome after it.
    Scheduled { partition: i32, in_flight: u64 },
    /// A record reached its one final outcome, read back on `topic` (or looked up for it);
    /// `reordered`: verified after a higher seq on its partition.
    Settled {
        finished: Finished,
        in_flight: u64,
        topic: &'a str,
        reordered: bool,
    },
    /// SLO number `slo` (in the probe's order) judged a final outcome good or bad.
    SloJudged { slo: usize, good: bool },
    /// A verified record was seen again where `seen`; `partition`: the one it was sent to,
    /// unless `forgotten` (an own record older than the tracker's memory: its fate is not known
    /// any more; most often a replay).
    Duplicate {
        seen: Seen<'a>,
        id: Uuid,
        partition: Option<i32>,
        forgotten: bool,
    },
    /// A record came back (where `seen`) after it was declared lost (`latency` since its
    /// scheduled send; `partition`: the one it was sent to).
    Late {
        seen: Seen<'a>,
        id: Uuid,
        latency: Option<Duration>,
        partition: i32,
    },
    /// A record on the verify topic that is not a probe record.
    Foreign {
        seen: Seen<'a>,
        reason: ForeignReason,
    },
    /// A sink poll for `pending` records ended: `error` when it failed; `failures` in a row
    /// (this one included when it failed, those before it when it succeeded).
    SinkPolled {
        sink: &'static str,
        pending: usize,
        error: Option<&'a SinkError>,
        failures: u32,
    },
    /// Discovery found these partitions (partition -> leader broker).
    Partitions { leaders: &'a BTreeMap<i32, i32> },
    /// A supervised task of the probe died; it is started again after `restart_in` (`None`:
    /// the agent is stopping).
    TaskDown {
        task: Task,
        why: &'a str,
        restart_in: Option<Duration>,
    },
    /// A task that was down runs again.
    TaskUp { task: Task },
    /// A round left the agent `lag` after its slot (the agent's own delay).
    SendLag { lag: Duration },
    /// A round settled with a verified record among `settled`: the probe works.
    Ready { ok: u64, settled: u64 },
    /// A timestamp the probe file names (`field`: `name`) was missing from the first
    /// `records` verified records, and found in none: a typo, or a job that does not write it
    /// (`why`: the last reason). Reported once.
    TimestampMissing {
        field: &'static str,
        name: String,
        records: u64,
        why: String,
    },
    /// A Schema Registry request for the probe failed (`reason`: unreachable, auth,
    /// not_found, http_status): its schema id could not be had (records are not sent until it
    /// is), or a record's writer schema could not be fetched (the record stays unverified).
    RegistryFailed {
        reason: RegistryErrorKind,
        error: &'a str,
        /// What the request was for: `schema_id` or `writer_schema`.
        during: &'static str,
    },
}

/// What a probe reports to: the export layer (metrics, log lines, spans), or a recording in
/// tests. The probe calls [`Observer::count`] for each event while it holds its lock, so that
/// counters which must agree move together (every scrape sees `sent = ok + lost + corrupt +
/// send_failed + in_flight`), then [`Observer::report`] for the same events, in the same order,
/// after it (log lines and spans: I/O never happens under the lock).
pub trait Observer: Send + Sync {
    /// Under the probe's lock: counters and gauges.
    fn count(&self, event: &Event<'_>);
    /// After the lock: log lines and spans.
    fn report(&self, event: &Event<'_>);
    /// The values over the sliding windows, brought up to date (before every scrape).
    fn gauges(&self, gauges: &Gauges);
}

/// A probe's values over its sliding windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// End-to-end latency of verified records.
    pub e2e: WindowValues,
    /// Scheduled send to the broker's acknowledgement.
    pub produce: WindowValues,
    /// `ok` / all final outcomes; `None` without any.
    pub availability: Option<f64>,
    /// Age of the newest verified record (since its scheduled send; since start when none).
    pub freshness: Duration,
    /// Per SLO, in the probe's order.
    pub slos: Vec<SloGauges>,
    /// Per hop, indexed like [`Hop::ALL`] (hops the probe does not split stay empty).
    pub hops: [HopGauges; 4],
    /// When a record was last read from the downstream topic the probe verifies on (ms since
    /// the Unix epoch), once one was.
    pub output_read_ms: Option<u64>,
}

/// One hop's values over the sliding window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HopGauges {
    /// The hop's latency, of verified records whose hop was not negative.
    pub latency: WindowValues,
    /// How far below zero the most negative of the window's hops went (zero when none did).
    pub largest_skew: Duration,
}

/// One SLO's budget and burn rates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SloGauges {
    /// Share of the error budget left over the SLO's window.
    pub budget_remaining: f64,
    /// Burn rate over each alerting window (`None` without events in it).
    pub burn_rates: [Option<f64>; 4],
}
