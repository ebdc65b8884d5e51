//! slo-probe: proves that a streaming pipeline is fresh, complete and correct, the way its
//! clients see it.
//!
//! Every `interval`, each probe sends one synthetic record per partition of its topic; a paired
//! consumer reads them back, or a sink poller looks them up where the pipeline puts them (a
//! PostgreSQL table, an HTTP/JSON search index), and settles each record as `ok`, `lost`,
//! `corrupt` or `send_failed`. Latency (from the *scheduled* send time) goes into HDR
//! histograms; outcomes, quantiles, availability and freshness are exported to Prometheus.
//!
//! # The layers, bottom up
//!
//! Read the crate in this order: each module uses only the ones above it in the list
//! (`tests/architecture.rs` fails the build otherwise).
//!
//! - `util`, `supervise`, `embedded`: leaves. Outside text made printable, rate-limited
//!   logging, the TLS provider; restarting tasks that die; librdkafka's in-process mock cluster.
//! - `record`: the wire format (envelope, digest, headers, W3C trace context) and its checks;
//!   `record::shape` and `record::avro`: records in the pipeline's own format (JSON templates,
//!   Avro plain or in the Confluent wire format), checked field by field.
//! - [`config`]: agent and probe files, validated with every problem located (`file:line:col`).
//! - `outcome`: the vocabulary: [`Outcome`], reasons, a record as it ends (and its hops:
//!   `outcome::hops`; what the job it went through was doing: `outcome::job`), [`Counts`], the
//!   events a probe reports, and the `Observer` interface it reports them through (and the
//!   `JobObserver` a job's poller reports to).
//! - `stats`: HDR histograms over sliding windows, availability, SLO events and burn rates.
//! - `kafka`: client settings (and why), metadata; delivery reports through `Deliveries`.
//! - `registry`: the Schema Registry client (a probe's schema id; writer schemas by id).
//! - `probe`: a probe's domain state ([`Probe`]), its schedule, its in-flight tracker, its
//!   failed records grouped by why (`probe::digest`), and the polls of the job it names
//!   (`probe::job::JobWatch`).
//! - `verify`: the paired Kafka consumer (and how long it lets a broker hold a fetch:
//!   `verify::fetch_wait`), the sink pollers, and beside them the poller of a Flink job's REST
//!   API (`verify::flink`).
//! - `discovery`: partitions, and which verifier reads what.
//! - `report`: the smoke verdict (text, JSON, JUnit, and HTML with SVG charts), `/status` and the
//!   live page.
//! - `export`: metrics, log lines, spans: the `Observer` each probe reports to. A side branch:
//!   nothing below `server` uses it.
//! - `server`: the HTTP endpoints and the view of the agent they serve ([`AgentView`]).
//! - `agent`: the composition root: builds clients, probes, observers, verifiers, the server.
//! - `rules`: Prometheus recording rules and burn-rate alerts for the probes' SLOs.
//! - [`cli`]: the commands and their exit codes.
//!
//! # The life of one record
//!
//! 1. A slot falls due: `probe::task::send_loop` builds the round (`record::Recipe::build`:
//!    envelope and digest, or the probe's `record` template; headers, `traceparent`), registers it with the probe (`Probe::register`: the
//!    tracker counts it `sent`, the observer is told `Scheduled`) and hands it to the clock
//!    thread, which sends it at the slot itself (`send_records` -> `kafka::Producer::send`).
//! 2. The broker acknowledges it: librdkafka calls the producer's context, which passes the
//!    offset to the sender through `kafka::Deliveries::delivered` (the probe notes the produce
//!    latency; a failure settles the record `send_failed`).
//! 3. It is read back: `verify::kafka::KafkaVerifier` claims it by its headers
//!    (`record::claim`) and hands it to its probe (`Probe::arrived`), or a sink poller finds it
//!    (`Probe::found`), each with the timestamps the pipeline wrote on the way (the downstream
//!    record's, the row's: `outcome::Stamps`). The tracker checks it against what was sent
//!    (`record::verify`), and the probe splits its latency into hops at those timestamps
//!    (`outcome::HopPlan::split`).
//! 4. It settles: the tracker gives it its one final outcome (`ok` or `corrupt` on arrival,
//!    `lost` at its deadline in `Probe::expire`); a record that is not `ok` takes what the job
//!    it went through was doing meanwhile (`JobWatch::context`) and joins its failure group;
//!    the probe records it in its windows (its hops too) and SLOs and tells its observer
//!    `Settled` (and each SLO's judgement) while it holds its lock.
//! 5. The observer (`export::observer::ProbeObserver`) counts it under that lock (so every
//!    scrape adds up) and, after it, writes the log line of a non-`ok` outcome and the
//!    record's spans.

#![warn(missing_docs)]

pub(crate) mod agent;
pub mod cli;
pub mod config;
pub(crate) mod discovery;
pub(crate) mod embedded;
pub(crate) mod export;
pub(crate) mod kafka;
pub(crate) mod outcome;
pub(crate) mod probe;
pub(crate) mod record;
pub(crate) mod registry;
pub(crate) mod report;
pub(crate) mod rules;
pub(crate) mod server;
pub(crate) mod stats;
pub(crate) mod supervise;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod util;
pub(crate) mod verify;

pub use agent::{Agent, AgentOptions, ShutdownReport, StartError};
pub use embedded::EmbeddedCluster;
pub use export::metrics::names as metric_names;
pub use outcome::{Counts, Outcome};
pub use probe::task::Plan;
pub use probe::{LAST, Probe, Progress, SLOWEST, Snapshot};
pub use report::EMBEDDED_NOTICE;
pub use server::AgentView;
pub use util::tls::install_crypto_provider;
pub use verify::fetch_wait::{Choice as FetchWaitChoice, FetchWaitStatus};

/// Every decoder and parser that reads outside input, reachable from the property tests
/// (`tests/properties.rs`) and from fuzz targets: not a stable interface. Configuration is
/// reached through [`config::load`].
#[doc(hidden)]
pub mod fuzz {
    pub use crate::outcome::{SinkError, SinkErrorKind};
    pub use crate::record::avro::{MAX_DECODE_ALLOCATION, WriterSchema, confluent_header};
    pub use crate::record::{
        Claim, Corruption, Expected, ForeignReason, Origin, Outgoing, Recipe, View,
        check_expectations, claim, decode, transformed_id, verify, verify_transformed,
    };
    pub use crate::verify::http::HttpSink;
    pub use crate::verify::sink::Found;
}

/// The HTTP server on its own, for the tests of its limits (`tests/http_descriptors.rs`):
/// not a stable interface.
#[doc(hidden)]
pub mod http {
    pub use crate::export::metrics::Metrics;
    pub use crate::server::{MAX_CONNECTIONS, MAX_DESCRIPTORS, State, bind, serve};
}

/// For the benchmark harness only: not a stable interface.
#[doc(hidden)]
pub mod bench {
    use rdkafka::message::OwnedMessage;

    use crate::config::ProbeConfig;
    use crate::record::{self, Expected, Origin, Recipe, View};

    /// Builds `records` records of `probe` (its `record` format, or the envelope) and checks
    /// each as the paired consumer checks one read back (decode, every field, every header):
    /// the CPU a record costs the agent apart from Kafka. Returns how many were intact.
    pub fn build_and_verify(probe: &ProbeConfig, records: u64) -> u64 {
        let origin = Origin {
            probe: probe.name.clone(),
            instance: "bench".into(),
            site: "bench".into(),
        };
        let recipe = Recipe {
            origin: &origin,
            tags: &probe.tags,
            payload_bytes: probe.payload_bytes,
            shape: probe.record.as_deref(),
        };
        let mut intact = 0;
        for seq in 0..records {
            let r = recipe.build(0, seq, 1_764_446_400_000_000_000 + seq, true);
            let expected = Expected::of(&r);
            let m = OwnedMessage::new(
                Some(r.value),
                Some(r.key.into_bytes()),
                probe.topic.clone(),
                rdkafka::Timestamp::NotAvailable,
                0,
                i64::try_from(seq).unwrap_or(i64::MAX),
                Some(r.headers),
            );
            if record::verify(&expected, &View::of(&m), true, probe.record.as_deref()).is_ok() {
                intact += 1;
            }
        }
        intact
    }
}
