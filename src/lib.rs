//! slo-probe: proves that a streaming pipeline is fresh, complete and correct, the way its
//! clients see it.
//!
//! Every `interval`, each probe sends one synthetic record per partition of its topic; a paired
//! consumer reads them back, or a sink poller looks them up where the pipeline puts them (a
//! PostgreSQL table, an HTTP/JSON search index), and settles each record as `ok`, `lost`,
//! `corrupt` or `send_failed`. Latency (from the *scheduled* send time) goes into HDR histograms; outcomes,
//! quantiles, availability and freshness are exported to Prometheus.
//!
//! A tour of the modules, in the order a record travels:
//!
//! - [`cli`]: the `run`, `smoke`, `check` and `rules` commands and their exit codes.
//! - [`config`]: agent and probe files, validated with every problem located (`file:line:col`).
//! - [`agent`]: wires clusters, clients, probes, verifiers and the HTTP server; drains on stop.
//! - [`embedded`]: librdkafka's in-process mock cluster, the zero-config default.
//! - [`kafka`]: client settings (and why), metadata lookup.
//! - [`probe`]: a probe's state ([`probe::Probe`]), its schedule ([`probe::task`]) and the
//!   in-flight tracker that gives every record exactly one outcome.
//! - [`record`]: the record format: envelope, digest, headers, W3C trace context, and checks.
//! - [`verify`]: how records are verified: the paired Kafka consumer, or a sink poller
//!   (PostgreSQL, HTTP) that looks every pending record up with one query per poll.
//! - [`stats`]: HDR histograms over a sliding window, availability, SLO event counts.
//! - [`export`]: Prometheus metrics, HTTP endpoints, structured log events, OTLP spans.
//! - [`report`]: the smoke verdict (text, JSON, JUnit) and `/status`.
//! - [`rules`]: Prometheus recording rules and burn-rate alerts for the probes' SLOs.
//! - [`supervise`]: restarts a long-lived task that panicked or ended, reporting each failure.
//! - [`util`]: small shared helpers (outside text made printable).

pub mod agent;
pub mod cli;
pub mod config;
pub mod embedded;
pub mod export;
pub mod kafka;
pub mod outcome;
pub mod probe;
pub mod record;
pub mod report;
pub mod rules;
pub mod stats;
pub mod supervise;
pub mod util;
pub mod verify;
