//! HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the process answers),
//! `/readyz` (every probe works), `/status` (JSON per probe), `/` (the same as a live HTML page
//! with charts), and [`AgentView`], the view of a
//! running agent they serve (probes and metrics, nothing that owns a client).
//!
//! Anyone who can reach the port can talk to this server, so it defends itself: hyper's HTTP/1
//! connections with a timer, so a request's headers must arrive within [`HEADER_TIMEOUT`] and
//! an idle keep-alive connection is closed after as long; at most [`MAX_CONNECTIONS`] at once,
//! and when they are all taken a new connection takes the slot of the one that has waited
//! longest for a request (`slots`), so idle or stalled connections cannot lock a scraper out;
//! when every one is answering a request, further ones get a 503 (or when many arrive
//! together are simply closed); and never more than [`MAX_DESCRIPTORS`] sockets held at once,
//! those being closed included, so a flood cannot take the file descriptors the probes need;
//! request headers and bodies bounded; a connection closed gracefully after
//! [`MAX_CONNECTION_AGE`]. `/status` and `/` render on a thread of their own, one at a time,
//! reused for a while by the requests that follow (`render`), so clients asking for them in a
//! loop cannot hold the workers that answer `/metrics` and read the probes' records. On stop,
//! connections get [`DRAIN`] to finish their request, then are dropped: shutdown never waits
//! on a client.

mod render;
mod slots;
mod warm;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use self::render::{Rendered, Renderer};
use self::slots::{Admission, Slot, Slots, Tracked};
use self::warm::{Kept, Warm};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;

use crate::export::metrics::Metrics;
use crate::outcome::Outcome;
use crate::probe::Probe;
use crate::report;
use crate::report::html::{self, Pictures};
use crate::verify::fetch_wait::FetchWaitStatus;

/// A request's headers must be complete this long after the server starts waiting for them;
/// an idle keep-alive connection is closed after as long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. A scraper needs one; probes need the rest of the process's file
/// descriptors (broker, database and HTTP sink connections).
pub const MAX_CONNECTIONS: usize = 64;
/// A connection older than this is closed after its current request (a slow reader cannot hold
/// one forever).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// How long a connection may take to finish its request once asked to close.
pub const DRAIN: Duration = Duration::from_secs(2);
/// Request header bytes (hyper's read buffer; every endpoint is a plain GET). Header lines are
/// bounded by hyper's default, 100 (431 beyond): setting it explicitly would move the parser's
/// header array from the stack to the heap for every request.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Request body bytes (no endpoint reads a body).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Connections over the limit being told so at once; beyond that they are closed without an
/// answer, so that refusing a flood never holds more descriptors than serving does.
const MAX_REFUSING: usize = 16;
/// Connections closed to make room (their slot given to a newer one) whose task has not yet run
/// to drop them.
const MAX_CLOSING: usize = 16;
/// File descriptors the server holds for connections at once: served, being refused, or closed
/// but not yet dropped. Past this the server stops accepting until one is dropped; new
/// connections wait in the listen backlog, which holds no descriptor of the process. Without it
/// a burst of connections on a loaded machine was accepted faster than the tasks of the ones it
/// closed could run, and the process ran out of descriptors.
pub const MAX_DESCRIPTORS: usize = MAX_CONNECTIONS + MAX_REFUSING + MAX_CLOSING;
/// Sent to a connection over [`MAX_CONNECTIONS`] before it is closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The read side of a running agent.
#[derive(Clone)]
pub struct AgentView {
    /// The probes, with their state.
    pub probes: Vec<Arc<Probe>>,
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// This agent's site.
    pub site: String,
    /// This agent's instance id.
    pub instance: String,
    /// Each verifying cluster's consumer fetch wait and how it was chosen, as it changes.
    pub fetch_wait: BTreeMap<String, watch::Receiver<FetchWaitStatus>>,
    /// The agent file's `trace_url`: where the live page links trace ids.
    pub trace_url: Option<String>,
    /// It runs on the embedded mock cluster: no real pipeline is checked.
    pub embedded: bool,
}

impl AgentView {
    /// `/status` at `now`.
    pub fn status(&self, now: Instant) -> report::Status {
        report::Status {
            version: env!("CARGO_PKG_VERSION"),
            site: self.site.clone(),
            instance: self.instance.clone(),
            probes: self
                .probes
                .iter()
                .map(|p| report::ProbeStatus::new(p, &p.snapshot(now)))
                .collect(),
            clusters: self
                .fetch_wait
                .iter()
                .map(|(name, w)| {
                    let fetch_wait = w.borrow().clone();
                    (name.clone(), report::ClusterStatus { fetch_wait })
                })
                .collect(),
            embedded: self.embedded,
        }
    }

    /// `/metrics`: window-derived gauges are brought up to date first.
    pub fn render_metrics(&self) -> String {
        let now = Instant::now();
        for p in &self.probes {
            p.refresh_gauges(now);
        }
        self.metrics.render()
    }

    /// Ready while every probe works: none of its tasks is down, its topic is reachable, it
    /// completed a round and verified a record, and a record scheduled within the last
    /// `timeout + interval` was verified (so an outage turns readiness off within about that
    /// long, and recovery turns it back on).
    /// Returns the probes that are not ready, with why.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let now = Instant::now();
        let waiting: Vec<String> = self
            .probes
            .iter()
            .filter_map(|p| {
                let s = p.progress().borrow().clone();
                let stale_after = p.config.timeout + p.config.interval;
                let freshness = p.freshness(now);
                let why = if let Some((task, (_, why))) = s.down.iter().next() {
                    format!("task {} is down and being restarted: {why}", task.as_str())
                } else if let Some(e) = s.discovery_error {
                    e
                } else if let Some(e) = s.refused {
                    format!("the sink's answer cannot be verified, nothing is sent: {e}")
                } else if s.rounds_completed == 0 {
                    "first round not complete".into()
                } else if s.counts.get(Outcome::Ok) == 0 {
                    // A settled round of lost or failed records is not a working probe.
                    let c = s.counts;
                    format!(
                        "no record verified yet ({} settled: {} lost, {} corrupt, {} send_failed)",
                        c.finished(),
                        c.get(Outcome::Lost),
                        c.get(Outcome::Corrupt),
                        c.get(Outcome::SendFailed)
                    )
                } else if freshness > stale_after {
                    format!(
                        "no record verified for {} (more than timeout + interval)",
                        humantime::format_duration(Duration::from_secs(freshness.as_secs()))
                    )
                } else {
                    return None;
                };
                Some(format!("{}: {why}", p.name()))
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting)
        }
    }
}

/// What the handlers share: the agent's view, and the latest renders of the expensive
/// endpoints.
#[derive(Clone)]
pub struct State(Arc<Shared>);

struct Shared {
    view: Arc<AgentView>,
    /// The thread `/metrics`, `/status` and `/` render on.
    renderer: Renderer,
    metrics: Kept,
    status: Rendered,
    live: Rendered,
}

impl Warm for Shared {
    fn kept(&self) -> &Kept {
        &self.metrics
    }
    fn renderer(&self) -> &Renderer {
        &self.renderer
    }
    fn render(&self) -> impl FnOnce(Instant) -> Bytes + Send + 'static {
        let view = Arc::clone(&self.view);
        move |_| Bytes::from(view.render_metrics())
    }
}

impl State {
    /// The handlers' state for `view`; starts the render thread.
    pub fn new(view: AgentView) -> Self {
        State(Arc::new(Shared {
            view: Arc::new(view),
            renderer: Renderer::start(),
            metrics: Kept::default(),
            status: Rendered::default(),
            live: Rendered::default(),
        }))
    }
}

pub fn router(state: State) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/", get(live))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(state)
}

/// The listen backlog asked for: the usual `net.core.somaxconn` (the kernel caps what is
/// asked). tokio's `TcpListener::bind` asks for 1 024; under a connection flood a full accept
/// queue drops a scraper's SYN, and TCP sends it again only a second later.
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` with [`BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves until `stop`, then gives open connections [`DRAIN`] to finish and returns.
pub async fn serve(listener: TcpListener, state: State, stop: CancellationToken) {
    serve_router(listener, router(state), stop).await
}

/// [`serve`] with any router: the connection handling, on its own.
async fn serve_router(listener: TcpListener, router: Router, stop: CancellationToken) {
    let service = TowerToHyperService::new(router);
    let slots = Slots::new(MAX_CONNECTIONS);
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let descriptors = Arc::new(Semaphore::new(MAX_DESCRIPTORS));
    let connections = TaskTracker::new();
    let quiet = crate::util::quiet::Quiet::default();
    loop {
        // A descriptor first: it goes with the connection and is given back when its socket is
        // dropped, wherever that happens.
        let descriptor = tokio::select! {
            d = Arc::clone(&descriptors).acquire_owned() => d.expect("never closed"),
            _ = stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: say
                // so (once a minute per kind) and let the condition pass.
                if quiet.allow(&format!("accept:{:?}", e.kind())) {
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.admit(Some(std::os::fd::AsRawFd::as_raw_fd(&stream))) {
            Some((slot, admission)) => {
                if admission == Admission::Evicted && quiet.allow("evicted") {
                    tracing::warn!(
                        max = MAX_CONNECTIONS,
                        "HTTP connections full: closing the ones waiting longest for a request to serve new ones"
                    );
                }
                let service = Tracked {
                    inner: service.clone(),
                    conn: Arc::clone(&slot.conn),
                };
                let stop = stop.clone();
                connections.spawn(serve_connection(stream, descriptor, service, slot, stop));
            }
            None => {
                if quiet.allow("busy") {
                    tracing::warn!(
                        max = MAX_CONNECTIONS,
                        "every HTTP connection is answering a request: refusing new ones with 503 until some finish"
                    );
                }
                // Told, while few are being told; else closed at once.
                if let Ok(permit) = Arc::clone(&refusing).try_acquire_owned() {
                    connections.spawn(async move {
                        refuse(stream).await;
                        drop((permit, descriptor));
                    });
                }
            }
        }
    }
    // Stopping: no new connection; each open one was asked to finish within DRAIN.
    connections.close();
    if tokio::time::timeout(DRAIN * 2, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at stop were dropped");
    }
}

/// One connection, with hyper's timer: headers within [`HEADER_TIMEOUT`] (idle keep-alive
/// included), closed gracefully at [`MAX_CONNECTION_AGE`] or at stop, and dropped if it does
/// not finish within [`DRAIN`] after that; dropped at once when its slot is given to a new
/// connection (it was only waiting for a request).
async fn serve_connection<S>(
    stream: TcpStream,
    descriptor: OwnedSemaphorePermit,
    service: S,
    slot: Slot,
    stop: CancellationToken,
) where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    // Declared before the connection that owns the socket, so dropped after it.
    let _descriptor = descriptor;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let age = tokio::time::sleep_until(Instant::now() + MAX_CONNECTION_AGE);
    let evicted = slot.conn.evicted.clone();
    tokio::select! {
        r = conn.as_mut() => { log_end(r); return }
        _ = evicted.cancelled() => return,
        _ = age => {}
        _ = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        r = tokio::time::timeout(DRAIN, conn) => if let Ok(r) = r { log_end(r) },
        _ = evicted.cancelled() => {}
    }
    drop(slot);
}

fn log_end(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        // Timeouts and resets by clients are their business: debug level only.
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// Tells a connection over the limit that the server is busy, and closes it.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(DRAIN, async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await
    })
    .await;
}

/// `/metrics`, rendered on the render thread; a large agent's made ahead of the scrapes
/// (see [`warm`]).
async fn metrics(Extract(state): Extract<State>) -> Response {
    let body = Kept::get(&state.0).await;
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

async fn readyz(Extract(state): Extract<State>) -> Response {
    match state.0.view.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(waiting) => {
            let body = format!("not ready\n{}\n", waiting.join("\n"));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

async fn status(Extract(state): Extract<State>) -> Response {
    let view = Arc::clone(&state.0.view);
    let body = state
        .0
        .status
        .get(&state.0.renderer, move |now| {
            let status = view.status(now);
            Bytes::from(serde_json::to_vec(&status).expect("a status serializes"))
        })
        .await;
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `/`: the live page, the same figures as `/status` with charts; loads nothing from
/// anywhere (its Content-Security-Policy says so) and reloads itself.
async fn live(Extract(state): Extract<State>) -> Response {
    let view = Arc::clone(&state.0.view);
    let page = state
        .0
        .live
        .get(&state.0.renderer, move |now| {
            let status = view.status(now);
            let pictures: Vec<Pictures> = view
                .probes
                .iter()
                .take(html::LIVE_CHARTS)
                .map(|p| Pictures::of(p, now))
                .collect();
            let page = html::live_page(
                &status,
                &pictures,
                html::TraceLinks(view.trace_url.as_deref()),
            );
            Bytes::from(page)
        })
        .await;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, html::CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn answer(c: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Every slot taken by connections that only wait (idle, or with half their headers) and
    /// one answering a slow request: clients that send their request are served, each taking
    /// the slot of the connection waiting longest, and the slow request is answered in the end,
    /// never closed for another.
    #[tokio::test]
    async fn a_full_server_closes_waiting_connections_for_new_ones_never_one_answering() {
        let (started, release) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        let (s, r) = (Arc::clone(&started), Arc::clone(&release));
        let router = Router::new()
            .route(
                "/slow",
                get(move || {
                    let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                    async move {
                        s.notify_one();
                        r.notified().await;
                        "slow\n"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast\n" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_router(listener, router, stop.clone()));

        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        started.notified().await;
        let mut waiting = Vec::new();
        for i in 0..MAX_CONNECTIONS + 20 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                c.write_all(b"GET /fast HTTP/1.1\r\nHost: a\r\nX-Slow: ")
                    .await
                    .unwrap();
            }
            waiting.push(c);
        }
        for _ in 0..5 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let got = answer(&mut c).await;
            assert!(
                got.starts_with("HTTP/1.1 200") && got.ends_with("fast\n"),
                "{got}"
            );
        }
        // the longest waiting were closed, without a word
        for c in waiting.iter_mut().take(20) {
            assert_eq!(answer(c).await, "");
        }
        drop(waiting);
        release.notify_one();
        let got = answer(&mut slow).await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("slow\n"),
            "{got}"
        );
        stop.cancel();
        server.await.unwrap();
    }
}
