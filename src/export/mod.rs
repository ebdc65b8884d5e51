//! What leaves the agent: Prometheus metrics, structured logs, OTLP spans.
//! [`observer::ProbeObserver`] turns a probe's events into all three; [`jobs`] a job
//! poller's.

pub mod events;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod observer;
pub mod summary;
pub mod traces;
