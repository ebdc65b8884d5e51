//! A stand-in for a Confluent Schema Registry: a small HTTP server in the test (axum, on
//! 127.0.0.1 with a port the OS picks), since no real registry can be installed on these
//! machines. It keeps its schemas in memory and implements the part of the registry's REST API
//! that an Avro serializer uses:
//!
//! - `POST /subjects/{subject}/versions`: registers a schema under a subject, `{"id": N}`.
//! - `POST /subjects/{subject}`: whether a schema is registered under a subject,
//!   `{"subject", "id", "version", "schema"}`, or 404 (40401 unknown subject, 40403 schema not
//!   under it).
//! - `GET /schemas/ids/{id}`: the schema with that global id, `{"schema": "..."}`, or 404
//!   (40403).
//!
//! Request bodies are taken whatever their content type, as JSON
//! `{"schema": "<schema JSON as a string>", "schemaType"?: "AVRO"}` (`schemaType` is accepted
//! and not checked); a body that is not that, or whose `schema` is not JSON, gets 422 (42201).
//! Responses are JSON with the registry's content type, `application/vnd.schemaregistry.v1+json`.
//! Ids are global and start at 1: schemas are compared by their parsed JSON value, so the same
//! schema gets the same id under any subject, and registering it again under a subject adds no
//! version. Credentials (HTTP Basic or a bearer token) are checked when asked for (401, 40101),
//! the registry can be made unavailable (503, 50301), and every request is logged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The content type of every response, as the real registry sends it.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The credentials the stand-in requires of every request.
#[derive(Clone, Debug)]
pub enum HttpAuth {
    /// No credentials: every request is let through.
    None,
    /// HTTP Basic: `Authorization: Basic base64(user:password)`.
    Basic {
        /// The one accepted user name.
        user: String,
        /// That user's password.
        password: String,
    },
    /// A bearer token: `Authorization: Bearer <token>`.
    Bearer(String),
}

/// A registered schema: the text as registered and its parsed value (what is compared).
struct Schema {
    text: String,
    value: Value,
}

/// Everything the registry holds, behind one lock.
#[derive(Default)]
struct Inner {
    /// Schema with id `i + 1` at index `i`.
    schemas: Vec<Schema>,
    /// Per subject, the schema id of version `v` at index `v - 1`.
    subjects: BTreeMap<String, Vec<u32>>,
    /// When true, every request gets 503.
    unavailable: bool,
    /// `"METHOD /path"` of every request, in order of arrival.
    requests: Vec<String>,
}

impl Inner {
    /// The id of `value` (registering it globally when new), added as the subject's next version
    /// unless the subject already has it.
    fn register(&mut self, subject: &str, text: &str, value: Value) -> u32 {
        let id = match self.schemas.iter().position(|s| s.value == value) {
            Some(i) => i as u32 + 1,
            None => {
                self.schemas.push(Schema {
                    text: text.to_owned(),
                    value,
                });
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_owned()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }
}

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    auth: Arc<HttpAuth>,
}

/// A running stand-in registry. It stops serving when dropped.
pub struct StandInSchemaRegistry {
    url: String,
    inner: Arc<Mutex<Inner>>,
    stop: CancellationToken,
}

impl Drop for StandInSchemaRegistry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl StandInSchemaRegistry {
    /// Starts serving on 127.0.0.1 (a port the OS picks), requiring `auth` of every request.
    /// Must be called within a tokio runtime, which runs the server.
    pub async fn start(auth: HttpAuth) -> StandInSchemaRegistry {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let shared = Shared {
            inner: inner.clone(),
            auth: Arc::new(auth),
        };
        let app = axum::Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}", post(lookup))
            .route("/schemas/ids/{id}", get(schema_by_id))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let signal = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await;
        });
        StandInSchemaRegistry { url, inner, stop }
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Registers `schema` (Avro schema JSON) under `subject` directly in the state, as
    /// `POST /subjects/{subject}/versions` would, and returns its id. Panics when `schema` is not
    /// JSON.
    pub fn register(&self, subject: &str, schema: &str) -> u32 {
        let value: Value = serde_json::from_str(schema).expect("schema is JSON");
        self.inner.lock().unwrap().register(subject, schema, value)
    }

    /// While `on`, every request gets 503 `{"error_code":50301,"message":"unavailable"}`.
    pub fn set_unavailable(&self, on: bool) {
        self.inner.lock().unwrap().unavailable = on;
    }

    /// Every request received so far as `"METHOD /path"` (without the query), in order of
    /// arrival, including those refused as unauthorized or unavailable.
    pub fn requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The schema with global id `id`, as its text was registered.
    pub fn schema_by_id(&self, id: u32) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        let i = (id as usize).checked_sub(1)?;
        inner.schemas.get(i).map(|s| s.text.clone())
    }
}

/// A registry response: `body` as JSON with the registry's content type.
fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

/// A registry error: `{"error_code": code, "message": message}`.
fn error(status: StatusCode, code: u32, message: &str) -> Response {
    reply(status, json!({"error_code": code, "message": message}))
}

/// Logs the request, then refuses it when unavailable (503) or when the credentials are wrong
/// or missing (401).
async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let unavailable = {
        let mut inner = s.inner.lock().unwrap();
        inner
            .requests
            .push(format!("{} {}", req.method(), req.uri().path()));
        inner.unavailable
    };
    if unavailable {
        return error(StatusCode::SERVICE_UNAVAILABLE, 50301, "unavailable");
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(scheme, rest)| (scheme.to_ascii_lowercase(), rest.trim()));
    let authorized = match (&*s.auth, given) {
        (HttpAuth::None, _) => true,
        (HttpAuth::Basic { user, password }, Some((scheme, rest))) if scheme == "basic" => B64
            .decode(rest)
            .is_ok_and(|d| d == format!("{user}:{password}").as_bytes()),
        (HttpAuth::Bearer(token), Some((scheme, rest))) if scheme == "bearer" => rest == token,
        _ => false,
    };
    if !authorized {
        return error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized");
    }
    next.run(req).await
}

/// The schema of a request body, as text and parsed; `None` when the body is not
/// `{"schema": "<JSON>"}`.
fn schema_of(body: &[u8]) -> Option<(String, Value)> {
    let request: Value = serde_json::from_slice(body).ok()?;
    let text = request.get("schema")?.as_str()?;
    let value: Value = serde_json::from_str(text).ok()?;
    Some((text.to_owned(), value))
}

/// 422 `{"error_code":42201,"message":"Invalid schema"}`.
fn invalid_schema() -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema")
}

/// `POST /subjects/{subject}/versions`.
async fn register(State(s): State<Shared>, Path(subject): Path<String>, body: Bytes) -> Response {
    let Some((text, value)) = schema_of(&body) else {
        return invalid_schema();
    };
    let id = s.inner.lock().unwrap().register(&subject, &text, value);
    reply(StatusCode::OK, json!({ "id": id }))
}

/// `POST /subjects/{subject}`.
async fn lookup(State(s): State<Shared>, Path(subject): Path<String>, body: Bytes) -> Response {
    let Some((_, value)) = schema_of(&body) else {
        return invalid_schema();
    };
    let inner = s.inner.lock().unwrap();
    let Some(versions) = inner.subjects.get(&subject) else {
        let message = format!("Subject '{subject}' not found.");
        return error(StatusCode::NOT_FOUND, 40401, &message);
    };
    let found = versions.iter().enumerate().find_map(|(i, &id)| {
        let schema = &inner.schemas[id as usize - 1];
        (schema.value == value).then_some((i + 1, id, &schema.text))
    });
    match found {
        Some((version, id, text)) => reply(
            StatusCode::OK,
            json!({"subject": subject, "id": id, "version": version, "schema": text}),
        ),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

/// `GET /schemas/ids/{id}`.
async fn schema_by_id(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let inner = s.inner.lock().unwrap();
    let schema = id
        .parse::<usize>()
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| inner.schemas.get(i));
    match schema {
        Some(schema) => reply(StatusCode::OK, json!({ "schema": schema.text })),
        None => error(
            StatusCode::NOT_FOUND,
            40403,
            &format!("Schema {id} not found"),
        ),
    }
}
