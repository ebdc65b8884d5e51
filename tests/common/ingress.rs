//! `FlinkIngress`: an HTTPS front with basic authentication before Flink's REST API, standing
//! for the ingress or reverse proxy (nginx `auth_basic`, an OAuth proxy) a Flink deployment puts
//! its REST API behind: Flink itself serves neither TLS with a private CA nor passwords here. It
//! terminates TLS (rustls, a self-signed certificate for `localhost` it makes), refuses a
//! request without the right `Authorization: Basic` header (401), and passes every other request
//! to the real REST API, answering with Flink's own status and bytes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

pub struct FlinkIngress {
    pub port: u16,
    /// The certificate a client must trust (`ca_file`).
    pub ca: PathBuf,
    /// Requests passed to Flink, and requests refused for their credentials.
    pub served: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for FlinkIngress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Front {
    upstream: String,
    expected: String,
    http: reqwest::Client,
    served: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

/// Accepts TCP connections and completes their TLS handshake (one that fails is dropped).
struct TlsListener {
    tcp: TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl FlinkIngress {
    /// In front of the REST API at `upstream` (`http://host:port`), letting in `user` with
    /// `password`; its CA certificate is written into `dir`.
    pub async fn start(upstream: &str, user: &str, password: &str, dir: &Path) -> FlinkIngress {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let ca = dir.join("flink-ingress-ca.pem");
        std::fs::write(&ca, key.cert.pem()).unwrap();
        let private =
            rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], private)
        .unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let front = Front {
            upstream: upstream.trim_end_matches('/').to_string(),
            expected: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            http: {
                slo_probe::install_crypto_provider();
                reqwest::Client::new()
            },
            served: Arc::default(),
            refused: Arc::default(),
        };
        let (served, refused) = (Arc::clone(&front.served), Arc::clone(&front.refused));
        let app = Router::new().fallback(pass).with_state(front);
        let listener = TlsListener {
            tcp,
            tls: TlsAcceptor::from(Arc::new(config)),
        };
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await
                .unwrap()
        });
        FlinkIngress {
            port,
            ca,
            served,
            refused,
            stop,
        }
    }
}

async fn pass(State(f): State<Front>, uri: Uri, headers: HeaderMap) -> (StatusCode, String) {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if given != f.expected {
        f.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            "{\"errors\":[\"unauthorized\"]}".into(),
        );
    }
    f.served.fetch_add(1, Ordering::Relaxed);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match f.http.get(format!("{}{path}", f.upstream)).send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
