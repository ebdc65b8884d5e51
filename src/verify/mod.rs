//! Verifiers: how a probe checks that its records arrived. One module per kind; the closed set
//! of kinds is [`crate::config::Verify`].

pub mod kafka;
