//! TLS set-up shared by every client that speaks it (OTLP over HTTPS, HTTP sinks, PostgreSQL).

/// rustls needs a process-wide crypto provider; slo-probe uses ring everywhere (no aws-lc
/// build). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
