//! HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the process answers),
//! `/readyz` (every probe completed a round), `/status` (JSON per probe).

use std::sync::Arc;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentView;
use crate::report;

#[derive(Clone)]
pub struct State(Arc<AgentView>);

impl State {
    pub fn new(view: AgentView) -> Self {
        State(Arc::new(view))
    }
}

pub fn router(state: State) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

pub async fn serve(listener: TcpListener, state: State, stop: CancellationToken) {
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn metrics(Extract(state): Extract<State>) -> Response {
    let body = state.0.render_metrics();
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

async fn readyz(Extract(state): Extract<State>) -> Response {
    match state.0.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(waiting) => {
            let body = format!("not ready\n{}\n", waiting.join("\n"));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

async fn status(Extract(state): Extract<State>) -> Json<report::Status> {
    let view = &state.0;
    let now = Instant::now();
    Json(report::Status {
        version: env!("CARGO_PKG_VERSION"),
        site: view.site.clone(),
        instance: view.instance.clone(),
        probes: view
            .probes
            .iter()
            .map(|p| report::ProbeStatus::new(p, &p.snapshot(now)))
            .collect(),
    })
}
