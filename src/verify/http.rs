//! The HTTP/JSON sink: one request per poll with every pending record id in the URL or body
//! (an Elasticsearch/OpenSearch `_search` with a `terms` query, or a REST lookup), then the found
//! documents (or ids) from the array at `ids_pointer`.

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

use super::sink::{Found, Sink, SinkError, SinkErrorKind};
use crate::config::{HttpMethod, HttpVerify, fill};

/// How much of an error response's body is quoted in the log.
const BODY_EXCERPT: usize = 200;

pub struct HttpSink {
    client: reqwest::Client,
    cfg: HttpVerify,
}

impl HttpSink {
    pub fn new(cfg: &HttpVerify) -> Result<Self, String> {
        crate::export::traces::install_crypto_provider();
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid HTTP header name `{name}`"))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value of HTTP header `{name}`"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.sink.timeout)
            .connect_timeout(cfg.sink.timeout)
            .user_agent(concat!("slo-probe/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &cfg.sink.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("invalid CA certificates in {}: {e}", path.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSink {
            client,
            cfg: cfg.clone(),
        })
    }

    /// The ids (and documents) in a response body.
    fn found(&self, body: &[u8]) -> Result<Vec<Found>, SinkError> {
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
                })
            })
            .collect())
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
        let failed = |e: reqwest::Error| {
            let kind = if e.is_timeout() {
                SinkErrorKind::Timeout
            } else {
                SinkErrorKind::Unreachable
            };
            // Without the URL: it may carry the ids (long) or credentials.
            let e = e.without_url();
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            SinkError::new(kind, message)
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let body = response.bytes().await.map_err(failed)?;
        if !status.is_success() {
            let kind = match status.as_u16() {
                401 | 403 => SinkErrorKind::Auth,
                _ => SinkErrorKind::HttpStatus,
            };
            let text = String::from_utf8_lossy(&body);
            let excerpt: String = text.chars().take(BODY_EXCERPT).collect();
            return Err(SinkError::new(kind, format!("HTTP {status}: {excerpt}")));
        }
        self.found(&body)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::SinkPoll;

    fn sink(url: &str, ids_pointer: &str) -> HttpSink {
        HttpSink::new(&HttpVerify {
            url: url.into(),
            method: HttpMethod::Get,
            body: None,
            headers: [("x-api-key".to_string(), "secret".to_string())].into(),
            ids_pointer: ids_pointer.into(),
            id_pointer: "/_source/id".into(),
            sink: SinkPoll {
                poll: Duration::from_millis(100),
                timeout: Duration::from_millis(300),
                ca_file: None,
                expect: Vec::new(),
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
            let mut s = sink(&server(status).await, "");
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
}
