//! TLS set-up shared by every client that speaks it (OTLP over HTTPS, HTTP sinks, PostgreSQL).

/// rustls needs a process-wide crypto provider; slo-probe uses ring everywhere (no aws-lc
/// build). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client builder as every outbound HTTP client of slo-probe needs it: ring's TLS,
/// no redirects (a redirect would carry credentials elsewhere: a 3xx is an error naming its
/// status), each request and connect bounded by `timeout`, and the CA certificates of
/// `ca_file` (PEM) trusted besides the system's.
pub fn http_client(
    timeout: std::time::Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder, String> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("slo-probe/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("invalid CA certificates in {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    Ok(builder)
}
