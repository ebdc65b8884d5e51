//! The HTTP/JSON sink: one request per poll with every pending record id in the URL or body
//! (an Elasticsearch/OpenSearch `_search` with a `terms` query, or a REST lookup), then the found
//! documents (or ids) from the array at `ids_pointer`.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

use super::sink::{Found, Sink, SinkError, SinkErrorKind};
use crate::config::{HttpMethod, HttpVerify, fill};
use crate::outcome::{Mark, Stamp, Stamps};

/// How much of an error response's body is quoted in the log (at debug level only: a body may
/// echo what was sent, credentials included).
const BODY_EXCERPT: usize = 200;

/// Polls an HTTP/JSON endpoint for records by id.
pub struct HttpSink {
    client: reqwest::Client,
    cfg: HttpVerify,
    /// Header values (credentials): scrubbed from every message, whatever the server sends.
    secrets: Vec<String>,
}

impl HttpSink {
    /// The sink of `cfg`: its client (TLS, timeout, default headers); an invalid header is an error.
    pub fn new(cfg: &HttpVerify) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid HTTP header name `{name}`"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value of HTTP header `{name}`"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let builder = crate::util::tls::http_client(cfg.sink.timeout, cfg.sink.ca_file.as_deref())?
            .default_headers(headers);
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSink {
            client,
            cfg: cfg.clone(),
            secrets: cfg
                .headers
                .values()
                .filter(|v| v.len() >= 4)
                .cloned()
                .collect(),
        })
    }

    /// `message` without any configured header value in it.
    fn scrub(&self, message: String) -> String {
        self.secrets.iter().fold(message, |m, secret| {
            m.replace(secret.as_str(), "<redacted>")
        })
    }

    /// The response body, read up to `max_response_bytes` and no further.
    async fn body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, SinkError> {
        let max = self.cfg.max_response_bytes;
        let too_large = |size: String| {
            SinkError::new(
                SinkErrorKind::InvalidJson,
                format!(
                    "the response is larger than {max} bytes ({size}; max_response_bytes): not read"
                ),
            )
        };
        if let Some(len) = response.content_length()
            && len > max as u64
        {
            return Err(too_large(format!("Content-Length {len}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(e))? {
            if body.len() + chunk.len() > max {
                return Err(too_large(format!(
                    "more than {} bytes received",
                    body.len() + chunk.len()
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// A request that failed before a whole response came back.
    fn failed(&self, e: reqwest::Error) -> SinkError {
        let kind = if e.is_timeout() {
            SinkErrorKind::Timeout
        } else {
            SinkErrorKind::Unreachable
        };
        // Without the URL: it may carry the ids (long) or credentials.
        let message = crate::util::text::error_chain(&e.without_url());
        SinkError::new(kind, self.scrub(message))
    }

    /// The ids (and documents) in a response body: the array at `ids_pointer`, each element a
    /// plain id or a document with its id at `id_pointer`; elements without a valid id are
    /// skipped. A body that is not JSON or has no array there is an `invalid_json` error.
    pub fn found(&self, body: &[u8]) -> Result<Vec<Found>, SinkError> {
        let invalid = |m: String| SinkError::new(SinkErrorKind::InvalidJson, m);
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("the response is not JSON: {e}")))?;
        let p = &self.cfg.ids_pointer;
        let docs = value.pointer(p).and_then(|v| v.as_array()).ok_or_else(|| {
            let at = if p.is_empty() { "the response" } else { p };
            invalid(format!("{at} is not a JSON array"))
        })?;
        Ok(docs
            .iter()
            .filter_map(|doc| {
                // A plain id, or a document with its id at `id_pointer`.
                let id = doc
                    .as_str()
                    .or_else(|| doc.pointer(&self.cfg.id_pointer)?.as_str())?;
                let id = Uuid::try_parse(id).ok()?;
                Some(Found {
                    id,
                    doc: doc.clone(),
                    stamps: self.stamps(doc),
                })
            })
            .collect())
    }

    /// The job's and the sink's timestamps in a found document, where the probe points.
    fn stamps(&self, doc: &serde_json::Value) -> Stamps {
        let at =
            |pointer: &Option<String>, mark| pointer.as_deref().map(|p| Stamp::at(doc, p, mark));
        let s = &self.cfg.sink.stamps;
        Stamps {
            downstream: at(&s.hop, Mark::JobTimestamp),
            written: at(&s.written, Mark::Written),
            found_within: std::time::Duration::ZERO,
        }
    }
}

impl Sink for HttpSink {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn poll(&mut self, ids: &[Uuid]) -> Result<Vec<Found>, SinkError> {
        let url = fill(&self.cfg.url, ids);
        let mut request = match self.cfg.method {
            HttpMethod::Get => self.client.get(&url),
            HttpMethod::Post => self.client.post(&url),
        };
        if let Some(body) = &self.cfg.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(fill(body, ids));
        }
        let response = request.send().await.map_err(|e| self.failed(e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(SinkError::new(
                SinkErrorKind::HttpStatus,
                format!(
                    "HTTP {status}: redirects are not followed (they would carry the request's headers elsewhere); point `url` at the final address"
                ),
            ));
        }
        if !status.is_success() {
            let kind = match status.as_u16() {
                401 | 403 => SinkErrorKind::Auth,
                _ => SinkErrorKind::HttpStatus,
            };
            // The body may echo the request (its credentials too) and is anyone's text: only
            // at debug level, scrubbed, printable, and never in the error shown elsewhere.
            if tracing::enabled!(tracing::Level::DEBUG) {
                let body = self.body(response).await.unwrap_or_default();
                let text = self.scrub(String::from_utf8_lossy(&body).into_owned());
                tracing::debug!(sink = "http", status = %status, body = %crate::util::text::printable(&text, BODY_EXCERPT), "sink error response");
            }
            return Err(SinkError::new(kind, format!("HTTP {status}")));
        }
        let body = self.body(response).await?;
        self.found(&body)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::SinkPoll;

    fn sink(url: &str, ids_pointer: &str) -> HttpSink {
        sink_reading(url, ids_pointer, crate::config::DEFAULT_MAX_RESPONSE_BYTES)
    }

    /// Generous: only the timeout test should time out, however busy the machine is.
    const TIMEOUT: Duration = Duration::from_secs(30);

    fn sink_reading(url: &str, ids_pointer: &str, max_response_bytes: usize) -> HttpSink {
        sink_with(url, ids_pointer, max_response_bytes, TIMEOUT)
    }

    fn sink_with(
        url: &str,
        ids_pointer: &str,
        max_response_bytes: usize,
        timeout: Duration,
    ) -> HttpSink {
        HttpSink::new(&HttpVerify {
            url: url.into(),
            method: HttpMethod::Get,
            body: None,
            headers: [("x-api-key".to_string(), "secret".to_string())].into(),
            ids_pointer: ids_pointer.into(),
            id_pointer: "/_source/id".into(),
            max_response_bytes,
            sink: SinkPoll {
                poll: Duration::from_millis(100),
                timeout,
                ca_file: None,
                expect: Vec::new(),
                stamps: Default::default(),
                ordered: true,
            },
        })
        .unwrap()
    }

    #[test]
    fn found_ids_are_plain_strings_or_inside_documents() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let docs = sink("http://x/{ids}", "/hits/hits");
        let body = serde_json::json!({"hits": {"hits": [
            {"_source": {"id": a, "team": "t"}},
            {"_source": {"id": "not-a-uuid"}},
            {"_source": {}},
            b.to_string(),
        ]}});
        let found = docs.found(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            found.iter().map(|f| f.id).collect::<Vec<_>>(),
            [a, b],
            "documents without a valid id are skipped"
        );
        assert_eq!(found[0].doc["_source"]["team"], "t");
        let root = sink("http://x/{ids}", "");
        let ids = serde_json::json!([a]).to_string();
        assert_eq!(root.found(ids.as_bytes()).unwrap()[0].id, a);
        for (body, why) in [
            ("<html>", "the response is not JSON"),
            ("{\"hits\": {}}", "/hits/hits is not a JSON array"),
        ] {
            let e = docs.found(body.as_bytes()).unwrap_err();
            assert_eq!(e.kind, SinkErrorKind::InvalidJson);
            assert!(e.message.starts_with(why), "{}", e.message);
        }
    }

    #[test]
    fn found_documents_carry_the_timestamps_the_probe_points_at() {
        let mut docs = sink("http://x/{ids}", "/hits/hits");
        docs.cfg.sink.stamps = crate::config::SinkStamps {
            hop: Some("/_source/processed_at".into()),
            written: Some("/_source/indexed_at".into()),
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let body = serde_json::json!({"hits": {"hits": [
            {"_source": {"id": a, "processed_at": "2026-11-30T10:00:00.030Z", "indexed_at": 1_796_032_800_230_123u64}},
            {"_source": {"id": b, "processed_at": "soon"}},
        ]}});
        let found = docs.found(body.to_string().as_bytes()).unwrap();
        let t0 = 1_796_032_800_000_000_000i64;
        assert_eq!(
            found[0].stamps.downstream,
            Some(Ok(Stamp {
                at_ns: t0 + 30_000_000,
                mark: Mark::JobTimestamp,
                resolution_ns: 1_000_000,
            }))
        );
        assert_eq!(
            found[0].stamps.written,
            Some(Ok(Stamp {
                at_ns: t0 + 230_123_000,
                mark: Mark::Written,
                resolution_ns: 1_000,
            }))
        );
        // a document without them is still found; its record is not split, and says why
        assert_eq!(found[1].id, b);
        let why = found[1].stamps.downstream.clone().unwrap().unwrap_err();
        assert!(
            why.starts_with("`/_source/processed_at` is not a time"),
            "{why}"
        );
        assert_eq!(
            found[1].stamps.written,
            Some(Err("`/_source/indexed_at` is missing".into()))
        );
    }

    #[test]
    fn placeholders_are_filled_with_the_pending_ids() {
        let ids = [Uuid::nil(), Uuid::max()];
        let n = "00000000-0000-0000-0000-000000000000";
        let m = "ffffffff-ffff-ffff-ffff-ffffffffffff";
        assert_eq!(
            fill("/docs?ids={ids}&n={count}", &ids),
            format!("/docs?ids={n},{m}&n=2")
        );
        assert_eq!(
            fill(r#"{"terms": {"id": {ids_json}}}"#, &ids),
            format!(r#"{{"terms": {{"id": ["{n}","{m}"]}}}}"#)
        );
    }

    /// A server answering every request with `status`, or never answering.
    async fn server(status: Option<u16>) -> String {
        use axum::http::StatusCode;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move || async move {
            match status {
                Some(s) => (StatusCode::from_u16(s).unwrap(), "denied".to_string()),
                None => std::future::pending().await,
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/search?ids={{ids}}")
    }

    #[tokio::test]
    async fn failures_are_classified_by_what_went_wrong() {
        let ids = [Uuid::now_v7()];
        for (status, kind) in [
            (Some(401), SinkErrorKind::Auth),
            (Some(403), SinkErrorKind::Auth),
            (Some(500), SinkErrorKind::HttpStatus),
            (Some(404), SinkErrorKind::HttpStatus),
            (None, SinkErrorKind::Timeout),
        ] {
            // the server that never answers is given up on after 300 ms
            let timeout = match status {
                None => Duration::from_millis(300),
                Some(_) => TIMEOUT,
            };
            let url = server(status).await;
            let mut s = sink_with(&url, "", crate::config::DEFAULT_MAX_RESPONSE_BYTES, timeout);
            let e = s.poll(&ids).await.unwrap_err();
            assert_eq!(e.kind, kind, "{status:?}: {}", e.message);
            assert!(!e.message.contains("secret"));
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x?ids={{ids}}", closed.local_addr().unwrap());
        drop(closed);
        let e = sink(&url, "").poll(&ids).await.unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Unreachable, "{}", e.message);
        assert!(e.message.contains("onnect"), "{}", e.message);
    }

    /// The error a poll of `sink` for `id` ends in, checked to be of `kind` and to start with
    /// `prefix`.
    async fn poll_error(
        mut sink: HttpSink,
        id: Uuid,
        kind: SinkErrorKind,
        prefix: &str,
    ) -> SinkError {
        let e = sink.poll(&[id]).await.unwrap_err();
        assert_eq!(e.kind, kind, "{}", e.message);
        assert!(e.message.starts_with(prefix), "{}", e.message);
        e
    }

    /// A server for `app` on a free port: its base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A redirect would carry the API key and the request elsewhere: it is not followed, and
    /// is an `http_status` error naming the status. The target never hears of it.
    #[tokio::test]
    async fn redirects_are_refused_and_never_followed() {
        use std::sync::{Arc, Mutex};
        let id = Uuid::now_v7();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = Arc::clone(&seen);
        let elsewhere = serve(axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap| async move {
                let key = headers
                    .get("x-api-key")
                    .map(|v| v.to_str().unwrap().to_string());
                s.lock().unwrap().push(key.unwrap_or_default());
                axum::Json(serde_json::json!([id]))
            },
        ))
        .await;
        let target = format!("{elsewhere}/steal");
        let redirecting = serve(
            axum::Router::new()
                .fallback(move || async move { axum::response::Redirect::temporary(&target) }),
        )
        .await;
        poll_error(
            sink(&format!("{redirecting}/search?ids={{ids}}"), ""),
            id,
            SinkErrorKind::HttpStatus,
            "HTTP 307 Temporary Redirect: redirects are not followed",
        )
        .await;
        assert!(
            seen.lock().unwrap().is_empty(),
            "the redirect target was called"
        );
    }

    /// A response over `max_response_bytes` is an `invalid_json` error and is not read whole:
    /// refused by its Content-Length, or cut when it streams without one (here: forever).
    #[tokio::test]
    async fn response_bodies_are_capped() {
        let id = Uuid::now_v7();
        // 5 MiB of valid JSON that does contain the id: refused all the same
        let mut big = vec![serde_json::json!(id)];
        big.extend(std::iter::repeat_n(
            serde_json::json!("x".repeat(1000)),
            5 * 1024,
        ));
        let body = serde_json::to_vec(&big).unwrap();
        let url = serve(axum::Router::new().fallback(move || async move { body.clone() })).await;
        poll_error(
            sink(&format!("{url}/?ids={{ids}}"), ""),
            id,
            SinkErrorKind::InvalidJson,
            "the response is larger than 4194304 bytes (Content-Length 5",
        )
        .await;
        // a body that never ends, without a length: read up to the bound, then given up
        let endless = || {
            let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
            tokio_stream::iter(std::iter::repeat(Ok::<_, std::convert::Infallible>(chunk)))
        };
        let url = serve(
            axum::Router::new()
                .fallback(move || async move { axum::body::Body::from_stream(endless()) }),
        )
        .await;
        let e = poll_error(
            sink_reading(&format!("{url}/?ids={{ids}}"), "", 1024 * 1024),
            id,
            SinkErrorKind::InvalidJson,
            "the response is larger than 1048576 bytes (more than ",
        )
        .await;
        assert!(
            e.message
                .ends_with(" bytes received; max_response_bytes): not read"),
            "{}",
            e.message
        );
    }

    /// An error response that echoes the request (its API key) and carries a forged log line:
    /// the error shown in logs, `/status` and reports is the status alone.
    #[tokio::test]
    async fn error_bodies_and_header_values_are_never_shown() {
        use axum::http::StatusCode;
        let url = serve(axum::Router::new().fallback(
            |headers: axum::http::HeaderMap| async move {
                let key = headers["x-api-key"].to_str().unwrap().to_string();
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("echo x-api-key: {key}\n2026-11-29T00:00:00Z  INFO forged\u{1b}[2J"),
                )
            },
        ))
        .await;
        let e = sink(&format!("{url}/?ids={{ids}}"), "")
            .poll(&[Uuid::now_v7()])
            .await
            .unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::HttpStatus);
        assert_eq!(e.message, "HTTP 500 Internal Server Error");
        assert_eq!(
            sink("http://x/{ids}", "").scrub("key secret in a message".into()),
            "key <redacted> in a message"
        );
    }
}
