//! An OTLP trace receiver for tests: HTTP/protobuf (axum) and gRPC (tonic), both decoding the
//! official `opentelemetry-proto` messages. It keeps every span with its resource's attributes,
//! and each request's headers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::sync::Notify;

/// Guards against a hang; never expected to elapse.
const GUARD: Duration = Duration::from_secs(120);

/// What a receiver got: every span with its resource's attributes, and each request's headers.
#[derive(Default)]
pub struct Received {
    pub spans: Vec<(BTreeMap<String, String>, Span)>,
    pub headers: Vec<BTreeMap<String, String>>,
}

#[derive(Clone, Default)]
pub struct Collector {
    pub got: Arc<Mutex<Received>>,
    more: Arc<Notify>,
}

impl Collector {
    pub fn take(&self, request: ExportTraceServiceRequest, headers: BTreeMap<String, String>) {
        let mut got = self.got.lock().unwrap();
        got.headers.push(headers);
        for rs in request.resource_spans {
            let resource: BTreeMap<String, String> = rs
                .resource
                .map(|r| {
                    r.attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect()
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.spans.push((resource.clone(), s));
                }
            }
        }
        drop(got);
        self.more.notify_waiters();
    }

    /// Waits (event-driven) until `n` spans arrived.
    pub async fn wait_spans(&self, n: usize) {
        loop {
            let more = self.more.notified();
            if self.got.lock().unwrap().spans.len() >= n {
                return;
            }
            tokio::time::timeout(GUARD, more)
                .await
                .expect("spans arrive");
        }
    }

    /// OTLP/HTTP with protobuf bodies on `/v1/traces`, on a free port: its address.
    pub async fn http(&self) -> String {
        let collector = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP request");
                collector.take(request, header_map(&headers));
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    /// OTLP/gRPC on a free port: its address.
    pub async fn grpc(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap()
        });
        addr
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = header_map(&request.metadata().clone().into_headers());
        self.take(request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub fn header_map(h: &HeaderMap) -> BTreeMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
        .collect()
}

/// An attribute value as text (what the assertions compare).
pub fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn attrs(s: &Span) -> BTreeMap<String, String> {
    s.attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv)))
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}
