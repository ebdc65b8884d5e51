//! What leaves the agent: Prometheus metrics, HTTP endpoints, structured logs.

pub mod events;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod summary;
pub mod traces;
