//! The PostgreSQL sink: runs the probe's query with every pending record id as `$1` (one query
//! per poll), over a small deadpool pool of tokio-postgres connections. TLS is rustls (the
//! system's roots plus `ca_file`), used as the DSN's `sslmode` says (tokio-postgres: `prefer` by
//! default, `disable`, `require`). A broken connection is dropped by the pool and a new one made
//! at the next poll.

use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::sink::{Found, Sink, SinkError, SinkErrorKind};
use crate::config::{PostgresVerify, SinkStamps};
use crate::outcome::{Mark, Stamp, Stamps, parse_time};

pub struct PostgresSink {
    /// `sslmode=prefer`: TLS only if the server (or whoever answers) offers it.
    prefer_tls: bool,
    pool: Pool,
    query: String,
    id_column: String,
    /// Result columns the content assertions look at.
    columns: Vec<String>,
    /// Result columns holding the job's and the sink's timestamps (hops).
    stamps: SinkStamps,
    timeout: Duration,
}

impl PostgresSink {
    pub fn new(cfg: &PostgresVerify) -> Result<Self, String> {
        let mut pg: tokio_postgres::Config = cfg
            .dsn
            .parse()
            .map_err(|e| format!("invalid PostgreSQL connection string: {e}"))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(cfg.sink.timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("slo-probe");
        }
        let prefer_tls = pg.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer;
        let tls =
            tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(cfg.sink.ca_file.as_deref())?);
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let t = Some(cfg.sink.timeout);
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(t)
            .create_timeout(t)
            .recycle_timeout(t)
            .build()
            .map_err(|e| format!("cannot build the PostgreSQL pool: {e}"))?;
        let columns = cfg
            .sink
            .expect
            .iter()
            .map(|(pointer, _)| column_of(pointer))
            .collect();
        Ok(PostgresSink {
            prefer_tls,
            pool,
            query: cfg.query.clone(),
            id_column: cfg.id_column.clone(),
            columns,
            stamps: cfg.sink.stamps.clone(),
            timeout: cfg.sink.timeout,
        })
    }

    /// Whether the DSN lets TLS be refused by the path (`sslmode=prefer`, the default).
    pub fn downgradable(&self) -> bool {
        self.prefer_tls
    }

    async fn query(&self, client: &Object, ids: &[Uuid]) -> Result<Vec<Found>, SinkError> {
        let statement = client.prepare_cached(&self.query).await.map_err(classify)?;
        let query_error = |m: String| SinkError::new(SinkErrorKind::Query, m);
        // `$1` may be uuid[] or text[] (ids kept as text in the sink).
        let texts: Vec<String>;
        let param: &(dyn ToSql + Sync) = match statement.params() {
            [t] if *t == Type::UUID_ARRAY => &ids,
            [t] if [Type::TEXT_ARRAY, Type::VARCHAR_ARRAY].contains(t) => {
                texts = ids.iter().map(|i| i.hyphenated().to_string()).collect();
                &texts
            }
            [t] => {
                return Err(query_error(format!(
                    "`$1` of the query is {t}; it must be uuid[] or text[] (e.g. `where id = any($1::uuid[])`)"
                )));
            }
            p => {
                return Err(query_error(format!(
                    "the query must take exactly one parameter, `$1` (the pending ids); it takes {}",
                    p.len()
                )));
            }
        };
        let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
        let stamps = [&self.stamps.hop, &self.stamps.written];
        let stamp_columns = stamps.into_iter().flatten();
        for c in std::iter::once(&self.id_column)
            .chain(&self.columns)
            .chain(stamp_columns)
        {
            if !names.contains(&c.as_str()) {
                return Err(query_error(format!(
                    "the query returns no column `{c}` (it returns {})",
                    names.join(", ")
                )));
            }
        }
        let rows = client.query(&statement, &[param]).await.map_err(classify)?;
        rows.iter()
            .filter_map(|r| self.found(r).transpose())
            .collect()
    }

    /// A row as a record id and the asserted columns; `None` for a row without a valid id.
    fn found(&self, row: &Row) -> Result<Option<Found>, SinkError> {
        let id = match json(row, &self.id_column)? {
            serde_json::Value::String(s) => Uuid::try_parse(&s).ok(),
            _ => None,
        };
        let Some(id) = id else { return Ok(None) };
        let mut doc = serde_json::Map::new();
        for c in &self.columns {
            doc.insert(c.clone(), json(row, c)?);
        }
        let at = |column: &Option<String>, mark| column.as_deref().map(|c| stamp(row, c, mark));
        Ok(Some(Found {
            id,
            doc: serde_json::Value::Object(doc),
            stamps: Stamps {
                downstream: at(&self.stamps.hop, Mark::JobTimestamp),
                written: at(&self.stamps.written, Mark::Written),
                found_within: Duration::ZERO,
            },
        }))
    }
}

/// The time in a row's `column`: a `timestamptz` (or a `timestamp`, read as UTC), a number since
/// the epoch or text (RFC 3339, or digits), as [`parse_time`] reads them.
fn stamp(row: &Row, column: &str, mark: Mark) -> Result<Stamp, String> {
    let idx = row
        .columns()
        .iter()
        .position(|c| c.name() == column)
        .ok_or_else(|| format!("the query returns no column `{column}`"))?;
    let (at_ns, resolution_ns) = match *row.columns()[idx].type_() {
        Type::TIMESTAMPTZ | Type::TIMESTAMP => {
            let t: Option<std::time::SystemTime> = row
                .try_get(idx)
                .map_err(|e| format!("`{column}` cannot be read: {e}"))?;
            let since = t
                .ok_or_else(|| format!("`{column}` is null"))?
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("`{column}` is before 1970"))?;
            let ns =
                i64::try_from(since.as_nanos()).map_err(|_| format!("`{column}` is after 2262"))?;
            // PostgreSQL keeps microseconds
            (ns, 1_000)
        }
        _ => {
            let value = json(row, column).map_err(|e| e.message)?;
            if value.is_null() {
                return Err(format!("`{column}` is null"));
            }
            let time = parse_time(&value).map_err(|why| format!("`{column}` {why}"))?;
            (time.ns, time.resolution_ns)
        }
    };
    Ok(Stamp {
        at_ns,
        mark,
        resolution_ns,
    })
}

impl Sink for PostgresSink {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn poll(&mut self, ids: &[Uuid]) -> Result<Vec<Found>, SinkError> {
        let client = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => classify(e),
            PoolError::Timeout(_) => SinkError::new(
                SinkErrorKind::Timeout,
                format!(
                    "no connection within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
            other => SinkError::new(SinkErrorKind::Unreachable, other.to_string()),
        })?;
        match tokio::time::timeout(self.timeout, self.query(&client, ids)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection still runs the query: it is not given back to the pool.
                drop(Object::take(client));
                Err(SinkError::new(
                    SinkErrorKind::Timeout,
                    format!(
                        "the query did not finish within {}",
                        humantime::format_duration(self.timeout)
                    ),
                ))
            }
        }
    }
}

/// The column a content assertion's pointer (`/column`) names.
fn column_of(pointer: &str) -> String {
    let first = pointer.trim_start_matches('/');
    first.replace("~1", "/").replace("~0", "~")
}

/// A column's value as JSON, for the id and the content assertions.
fn json(row: &Row, column: &str) -> Result<serde_json::Value, SinkError> {
    use serde_json::Value;
    let idx = row
        .columns()
        .iter()
        .position(|c| c.name() == column)
        .ok_or_else(|| SinkError::new(SinkErrorKind::Query, format!("no column `{column}`")))?;
    let ty = row.columns()[idx].type_().clone();
    let read = |e: tokio_postgres::Error| {
        SinkError::new(
            SinkErrorKind::Query,
            format!("cannot read column `{column}`: {e}"),
        )
    };
    macro_rules! get {
        ($t:ty, $f:expr) => {
            row.try_get::<_, Option<$t>>(idx)
                .map_err(read)?
                .map_or(Value::Null, $f)
        };
    }
    Ok(match ty {
        Type::BOOL => get!(bool, Value::Bool),
        Type::INT2 => get!(i16, Value::from),
        Type::INT4 => get!(i32, Value::from),
        Type::INT8 => get!(i64, Value::from),
        Type::FLOAT4 => get!(f32, |v| Value::from(f64::from(v))),
        Type::FLOAT8 => get!(f64, Value::from),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => get!(String, Value::String),
        Type::UUID => get!(Uuid, |v| Value::String(v.hyphenated().to_string())),
        Type::JSON | Type::JSONB => get!(Value, |v| v),
        other => {
            return Err(SinkError::new(
                SinkErrorKind::Query,
                format!(
                    "column `{column}` has type {other}, which slo-probe does not compare; cast it in the query (e.g. `{column}::text` or `{column}::float8`)"
                ),
            ));
        }
    })
}

/// The kind of a failure, from PostgreSQL's SQLSTATE when the server answered.
fn classify(e: tokio_postgres::Error) -> SinkError {
    let kind = match e.code() {
        Some(code) => {
            // The class is the SQLSTATE's first two characters. A server (or a proxy in front of
            // it) may send anything there: a malformed code has no class, never a panic.
            let class = code.code().get(..2).unwrap_or_default();
            if class == "28" || *code == SqlState::INVALID_CATALOG_NAME {
                SinkErrorKind::Auth
            } else if class == "08"
                || class == "57"
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::CANNOT_CONNECT_NOW
            {
                SinkErrorKind::Unreachable
            } else if *code == SqlState::QUERY_CANCELED {
                SinkErrorKind::Timeout
            } else {
                SinkErrorKind::Query
            }
        }
        None if e.to_string().contains("timed out") => SinkErrorKind::Timeout,
        None => SinkErrorKind::Unreachable,
    };
    // The server's message (and SQLSTATE) when there is one: more useful than "db error".
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    SinkError::new(kind, message)
}

/// rustls client settings: the system's roots, plus the CAs of `ca_file`.
fn client_tls(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    crate::util::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("no CA certificate in {}", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("invalid CA certificate in {}: {e}", path.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}
