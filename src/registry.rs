//! A Schema Registry client (the Confluent REST API, which Karapace, Redpanda and Apicurio's
//! compatibility layer serve too), for probes whose records are Avro in the Confluent wire
//! format:
//!
//! - [`Registry::schema_id`]: the id of the probe's schema under its subject, looked up
//!   (`POST /subjects/{subject}`) or, with `register: true`, registered
//!   (`POST /subjects/{subject}/versions`, which returns the existing id when the schema is
//!   there already);
//! - [`Registry::writer_schema`]: the schema a record of another stage was written with, by the
//!   id in the record (`GET /schemas/ids/{id}`), fetched once and kept.
//!
//! Credentials go in headers (basic or bearer), never in the URL, and no message quotes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;

use crate::config::RegistryConfig;
use crate::outcome::RegistryErrorKind;
use crate::record::avro::WriterSchema;

const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Largest response read: a schema, or an error.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a registry request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach the Schema Registry at {url}: {error}")]
    Unreachable { url: String, error: String },
    /// 401 or 403.
    #[error("the Schema Registry at {url} refused the credentials (HTTP {status})")]
    Auth { url: String, status: u16 },
    /// The subject or schema is not there.
    #[error("{0}")]
    NotFound(String),
    /// Any other answer.
    #[error("the Schema Registry at {url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
}

impl RegistryError {
    /// Its kind, for the `reason` label.
    pub fn kind(&self) -> RegistryErrorKind {
        match self {
            RegistryError::Unreachable { .. } => RegistryErrorKind::Unreachable,
            RegistryError::Auth { .. } => RegistryErrorKind::Auth,
            RegistryError::NotFound(_) => RegistryErrorKind::NotFound,
            RegistryError::Status { .. } => RegistryErrorKind::HttpStatus,
        }
    }
}

#[derive(Deserialize)]
struct Id {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaText {
    schema: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<u32>,
    message: Option<String>,
}

/// One registry, as a probe file configures it.
pub struct Registry {
    cfg: RegistryConfig,
    http: reqwest::Client,
    /// Writer schemas fetched so far, by id (ids are immutable in a registry).
    by_id: Mutex<HashMap<u32, Arc<WriterSchema>>>,
}

impl Registry {
    /// A client for `cfg`; fails only on a CA file that cannot be used.
    pub fn new(cfg: &RegistryConfig) -> Result<Registry, String> {
        let builder = crate::util::tls::http_client(cfg.timeout, cfg.ca_file.as_deref())?;
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Registry {
            cfg: cfg.clone(),
            http,
            by_id: Mutex::new(HashMap::new()),
        })
    }

    /// The registry's URL, for messages.
    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// The id of `schema` under the configured subject: looked up, or registered when
    /// `register` is set.
    pub async fn schema_id(&self, schema: &str) -> Result<u32, RegistryError> {
        let subject = &self.cfg.subject;
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string();
        let path: &[&str] = if self.cfg.register {
            &["subjects", subject, "versions"]
        } else {
            &["subjects", subject]
        };
        let response = self.request(reqwest::Method::POST, path, Some(body)).await;
        match response {
            Ok(bytes) => self.parse::<Id>(&bytes).map(|i| i.id),
            Err(RegistryError::NotFound(why)) => Err(RegistryError::NotFound(format!(
                "the Schema Registry at {} does not have this schema under subject `{subject}` ({why}): register it there, or set `register: true` to let slo-probe register it",
                self.cfg.url
            ))),
            Err(e) => Err(e),
        }
    }

    /// The writer schema with this id (fetched once).
    pub async fn writer_schema(&self, id: u32) -> Result<Arc<WriterSchema>, RegistryError> {
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        let id_text = id.to_string();
        let bytes = self
            .request(reqwest::Method::GET, &["schemas", "ids", &id_text], None)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(why) => RegistryError::NotFound(format!(
                    "the Schema Registry at {} has no schema with id {id} ({why})",
                    self.cfg.url
                )),
                e => e,
            })?;
        let text = self.parse::<SchemaText>(&bytes)?.schema;
        let schema = WriterSchema::parse(&text).map_err(|e| RegistryError::Status {
            url: self.cfg.url.clone(),
            status: 200,
            message: format!("schema {id} is not a valid Avro schema: {e}"),
        })?;
        let schema = Arc::new(schema);
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&schema));
        Ok(schema)
    }

    /// The writer schema with this id, if fetched before.
    fn cached(&self, id: u32) -> Option<Arc<WriterSchema>> {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, bytes: &[u8]) -> Result<T, RegistryError> {
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Status {
            url: self.cfg.url.clone(),
            status: 200,
            message: format!("unexpected answer: {e}"),
        })
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &[&str],
        body: Option<String>,
    ) -> Result<Vec<u8>, RegistryError> {
        let unreachable = |e: reqwest::Error| RegistryError::Unreachable {
            url: self.cfg.url.clone(),
            error: crate::util::text::error_chain(&e.without_url()),
        };
        let mut url =
            reqwest::Url::parse(&self.cfg.url).map_err(|e| RegistryError::Unreachable {
                url: self.cfg.url.clone(),
                error: e.to_string(),
            })?;
        url.path_segments_mut()
            .map_err(|()| RegistryError::Unreachable {
                url: self.cfg.url.clone(),
                error: "not a base URL".into(),
            })?
            .pop_if_empty()
            .extend(path);
        let request = self
            .http
            .request(method, url)
            .header(ACCEPT, MEDIA_TYPE)
            .header(CONTENT_TYPE, MEDIA_TYPE);
        let mut request =
            self.cfg
                .auth
                .apply(request)
                .map_err(|error| RegistryError::Unreachable {
                    url: self.cfg.url.clone(),
                    error: error.into(),
                })?;
        if let Some(body) = body {
            request = request.body(body);
        }
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(RegistryError::Status {
                    url: self.cfg.url.clone(),
                    status,
                    message: format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        match status {
            200..=299 => Ok(bytes),
            401 | 403 => Err(RegistryError::Auth {
                url: self.cfg.url.clone(),
                status,
            }),
            _ => {
                let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
                let message = parsed
                    .as_ref()
                    .and_then(|b| b.message.clone())
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                let message = crate::util::text::printable(&message, 200);
                let code = parsed.and_then(|b| b.error_code);
                if status == 404 && matches!(code, Some(40401..=40403)) {
                    return Err(RegistryError::NotFound(message));
                }
                Err(RegistryError::Status {
                    url: self.cfg.url.clone(),
                    status,
                    message,
                })
            }
        }
    }
}
