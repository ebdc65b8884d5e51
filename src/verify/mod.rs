//! Verifiers: how a probe checks that its records arrived. One module per kind; the closed set
//! of kinds is [`crate::config::Verify`]. The Kafka verifier is pushed records; the sink
//! verifiers ([`postgres`], [`http`]) are polled by [`sink::run`]. [`fetch_wait`] chooses how long
//! the Kafka verifier's consumer lets a broker hold a fetch. Beside them, [`flink`] polls the
//! job a probe's records go through.

pub mod fetch_wait;
pub mod flink;
pub mod http;
pub mod kafka;
pub mod postgres;
pub mod sink;
