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
use crate::config::{ColumnPlaces, Loc, PostgresVerify, SinkStamps};
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
    /// Where the probe file names the query and each column, for refusals.
    places: ColumnPlaces,
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
            places: cfg.places.clone(),
        })
    }

    /// Whether the DSN lets TLS be refused by the path (`sslmode=prefer`, the default).
    pub fn downgradable(&self) -> bool {
        self.prefer_tls
    }

    async fn query(&self, client: &Object, ids: &[Uuid]) -> Result<Vec<Found>, SinkError> {
        let statement = self.prepare(client).await?;
        let ids_as = self.fit(&statement)?;
        let texts: Vec<String>;
        let param: &(dyn ToSql + Sync) = match ids_as {
            IdsAs::Uuids => &ids,
            IdsAs::Texts => {
                texts = ids.iter().map(|i| i.hyphenated().to_string()).collect();
                &texts
            }
        };
        let rows = client.query(&statement, &[param]).await.map_err(classify)?;
        rows.iter()
            .filter_map(|r| self.found(r).transpose())
            .collect()
    }

    /// Whether the prepared query answers in a way the probe can verify: `$1` takes the ids
    /// (uuid[] or text[]), and every column the probe reads is there with a type it can read
    /// and compare. A mismatch is a configuration mistake, refused with where the probe file
    /// names the column ([`SinkErrorKind::Refused`]); it is never a record `lost`.
    fn fit(&self, statement: &tokio_postgres::Statement) -> Result<IdsAs, SinkError> {
        let places = &self.places;
        let refused = |(field, at): (&str, &Loc), why: String| {
            SinkError::new(SinkErrorKind::Refused, format!("{at}: `{field}`: {why}"))
        };
        let query = ("verify.postgres.query", &places.query);
        // `$1` may be uuid[] or text[] (ids kept as text in the sink).
        let ids_as = match statement.params() {
            [t] if *t == Type::UUID_ARRAY => IdsAs::Uuids,
            [t] if [Type::TEXT_ARRAY, Type::VARCHAR_ARRAY].contains(t) => IdsAs::Texts,
            [t] => {
                return Err(refused(
                    query,
                    format!(
                        "`$1` of the query is {t}; it must be uuid[] or text[] (e.g. `where id = any($1::uuid[])`)"
                    ),
                ));
            }
            p => {
                return Err(refused(
                    query,
                    format!(
                        "the query must take exactly one parameter, `$1` (the pending ids); it takes {}",
                        p.len()
                    ),
                ));
            }
        };
        let columns = statement.columns();
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        let stamps = [&self.stamps.hop, &self.stamps.written];
        let wanted = std::iter::once((&self.id_column, Use::Id))
            .chain(self.columns.iter().map(|c| (c, Use::Compared)))
            .chain(stamps.into_iter().flatten().map(|c| (c, Use::Time)));
        for (name, used) in wanted {
            let Some(column) = columns.iter().find(|c| c.name() == name) else {
                return Err(refused(
                    places.of(name),
                    format!(
                        "the query returns no column `{name}` (it returns {})",
                        names.join(", ")
                    ),
                ));
            };
            let ty = column.type_();
            if !used.reads(ty) {
                return Err(refused(places.of(name), used.refusal(name, ty)));
            }
        }
        Ok(ids_as)
    }

    /// Prepares the query once and checks that its answer fits the probe ([`Self::fit`]):
    /// the agent asks at start, so that a column the probe cannot compare stops it there.
    pub async fn check(&self) -> Result<(), SinkError> {
        let attempt = async {
            let client = self.client().await?;
            let statement = self.prepare(&client).await?;
            self.fit(&statement).map(|_| ())
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::new(
                    SinkErrorKind::Timeout,
                    format!(
                        "no answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                ))
            })
    }

    /// The probe's query, prepared (once per connection). The server refusing the query itself
    /// (SQLSTATE class 42: a syntax error, a table or column that does not exist, a type
    /// mismatch) is a configuration mistake too, located at the query; lacking the privilege
    /// to run it is `auth`.
    async fn prepare(&self, client: &Object) -> Result<tokio_postgres::Statement, SinkError> {
        client.prepare_cached(&self.query).await.map_err(|e| {
            let class_42 = e.code().is_some_and(|c| {
                c.code().starts_with("42") && *c != SqlState::INSUFFICIENT_PRIVILEGE
            });
            let error = classify(e);
            if class_42 {
                let at = &self.places.query;
                SinkError::new(
                    SinkErrorKind::Refused,
                    format!("{at}: `verify.postgres.query`: {}", error.message),
                )
            } else {
                error
            }
        })
    }

    async fn client(&self) -> Result<Object, SinkError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => classify(e),
            PoolError::Timeout(_) => SinkError::new(
                SinkErrorKind::Timeout,
                format!(
                    "no connection within {}",
                    humantime::format_duration(self.timeout)
                ),
            ),
            other => SinkError::new(SinkErrorKind::Unreachable, other.to_string()),
        })
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
    let column_type = &row.columns()[idx];
    let (at_ns, resolution_ns) = match *column_type.type_() {
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
            (ns, timestamp_resolution(column_type.type_modifier(), ns))
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

/// How coarse a `timestamp`/`timestamptz` value is: what its column keeps (microseconds, or
/// `timestamp(p)`'s `p` digits: `timestamp(3)`, milliseconds), and at least a millisecond for a
/// value whose microseconds are zero: written by a job that keeps milliseconds (Flink's
/// `TIMESTAMP(3)`) into a column that could keep more. Such a value stands for a time up to a
/// millisecond later; judged to the microsecond, a single host would show it as clock skew.
fn timestamp_resolution(type_modifier: i32, ns: i64) -> i64 {
    let declared = match type_modifier {
        p @ 0..=6 => 10i64.pow(9 - p as u32),
        _ => 1_000,
    };
    let written = if ns.rem_euclid(1_000_000) == 0 {
        1_000_000
    } else {
        1_000
    };
    declared.max(written)
}

impl Sink for PostgresSink {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn poll(&mut self, ids: &[Uuid]) -> Result<Vec<Found>, SinkError> {
        let client = self.client().await?;
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

/// How the pending ids are passed as `$1`.
#[derive(Debug, Clone, Copy)]
enum IdsAs {
    Uuids,
    Texts,
}

/// What the probe reads a result column for.
#[derive(Debug, Clone, Copy)]
enum Use {
    /// The record id: uuid or text.
    Id,
    /// A content assertion (`expect`): a value [`json`] reads exactly.
    Compared,
    /// A timestamp (`hop_timestamp`, `timestamp_column`): a time, a number since the epoch,
    /// or text [`parse_time`] reads.
    Time,
}

/// The types [`json`] reads as JSON values.
const COMPARED: &[Type] = &[
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::NUMERIC,
    Type::TEXT,
    Type::VARCHAR,
    Type::BPCHAR,
    Type::NAME,
    Type::UUID,
    Type::JSON,
    Type::JSONB,
];

impl Use {
    fn reads(self, ty: &Type) -> bool {
        match self {
            Use::Id => [
                Type::UUID,
                Type::TEXT,
                Type::VARCHAR,
                Type::BPCHAR,
                Type::NAME,
            ]
            .contains(ty),
            Use::Compared => COMPARED.contains(ty),
            Use::Time => {
                [Type::TIMESTAMPTZ, Type::TIMESTAMP].contains(ty)
                    || (COMPARED.contains(ty)
                        && ![Type::BOOL, Type::UUID, Type::JSON, Type::JSONB].contains(ty))
            }
        }
    }

    /// Why a column of type `ty` cannot serve, and what to write instead.
    fn refusal(self, column: &str, ty: &Type) -> String {
        match self {
            Use::Id => format!(
                "column `{column}` is {ty}; the record id must be uuid or text (cast it: `{column}::text`)"
            ),
            Use::Compared => format!(
                "column `{column}` is {ty}, which slo-probe cannot compare; cast it in the query to one it reads exactly (numeric, text, an integer, boolean, json), e.g. `{column}::text`"
            ),
            Use::Time => format!(
                "column `{column}` is {ty}, which is not a time; it must be a timestamptz or timestamp, a number since the epoch or RFC 3339 text"
            ),
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
        Type::NUMERIC => get!(Numeric, Numeric::json),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => get!(String, Value::String),
        Type::UUID => get!(Uuid, |v| Value::String(v.hyphenated().to_string())),
        Type::JSON | Type::JSONB => get!(Value, |v| v),
        other => {
            // `fit` refused the query before any row of it was read.
            return Err(SinkError::new(
                SinkErrorKind::Refused,
                format!(
                    "column `{column}` has type {other}, which slo-probe does not compare; cast it in the query (e.g. `{column}::text` or `{column}::float8`)"
                ),
            ));
        }
    })
}

/// A NUMERIC (DECIMAL) value, exactly: a number (rust_decimal reads up to 28 significant
/// digits), or one of PostgreSQL's special values (`NaN`, `Infinity`, `-Infinity`).
enum Numeric {
    Number(rust_decimal::Decimal),
    Special(&'static str),
}

impl<'a> tokio_postgres::types::FromSql<'a> for Numeric {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // The binary form's third 16-bit word is the sign: 0xC000 NaN, 0xD000 +Infinity,
        // 0xF000 -Infinity (PostgreSQL's numeric.c); rust_decimal reads the numbers.
        let special = match raw.get(4..6) {
            Some([0xC0, 0x00]) => Some("NaN"),
            Some([0xD0, 0x00]) => Some("Infinity"),
            Some([0xF0, 0x00]) => Some("-Infinity"),
            _ => None,
        };
        match special {
            Some(s) => Ok(Numeric::Special(s)),
            None => rust_decimal::Decimal::from_sql(ty, raw)
                .map(Numeric::Number)
                .map_err(|e| {
                    format!("{e} (more than 28 significant digits: cast it, `::text`)").into()
                }),
        }
    }

    tokio_postgres::types::accepts!(NUMERIC);
}

impl Numeric {
    /// As the JSON value that compares equal to what the probe sent: a number wherever one
    /// holds it exactly (an integer, or a float that prints as this decimal), otherwise the
    /// decimal as text, which no number equals (`0.30000000000000004` is not `0.3`).
    fn json(self) -> serde_json::Value {
        use rust_decimal::prelude::ToPrimitive;
        let d = match self {
            Numeric::Special(s) => return serde_json::Value::String(s.into()),
            Numeric::Number(d) => d,
        };
        if d.fract().is_zero()
            && let Some(i) = d.to_i64()
        {
            return i.into();
        }
        let exact_float = d
            .to_f64()
            .and_then(serde_json::Number::from_f64)
            .filter(|n| crate::record::decimal(n) == Some(d));
        match exact_float {
            Some(n) => serde_json::Value::Number(n),
            None => serde_json::Value::String(d.normalize().to_string()),
        }
    }
}

/// The kind of a failure, from PostgreSQL's SQLSTATE when the server answered.
fn classify(e: tokio_postgres::Error) -> SinkError {
    let kind = match e.code() {
        Some(code) => {
            // The class is the SQLSTATE's first two characters. A server (or a proxy in front of
            // it) may send anything there: a malformed code has no class, never a panic.
            let class = code.code().get(..2).unwrap_or_default();
            if class == "28"
                || *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::INSUFFICIENT_PRIVILEGE
            {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use serde_json::json;
    use std::str::FromStr;

    fn numeric(text: &str) -> serde_json::Value {
        Numeric::Number(Decimal::from_str(text).unwrap()).json()
    }

    /// A NUMERIC value becomes the JSON value the probe's expectation compares equal exactly:
    /// a number where one holds it, else its decimal text, which no number equals.
    #[test]
    fn numeric_values_are_read_exactly() {
        assert_eq!(numeric("42"), json!(42));
        assert_eq!(
            numeric("42.00"),
            json!(42),
            "an integer, whatever its scale"
        );
        assert_eq!(numeric("19.99"), json!(19.99));
        assert!(crate::record::same_json(&numeric("19.990"), &json!(19.99)));
        assert_eq!(numeric("-0.05"), json!(-0.05));
        // more digits than a float keeps: its text, never a rounded number
        assert_eq!(
            numeric("12345678901234567.89"),
            json!("12345678901234567.89")
        );
        assert!(!crate::record::same_json(
            &numeric("12345678901234567.89"),
            &json!(12345678901234567.89)
        ));
        assert_eq!(Numeric::Special("NaN").json(), json!("NaN"));
    }

    /// PostgreSQL's binary NUMERIC, decoded by rust_decimal, with its special values seen
    /// first.
    #[test]
    fn numeric_special_values_are_values_not_errors() {
        use tokio_postgres::types::FromSql;
        // ndigits 0, weight 0, sign NaN, dscale 0
        let nan = [0, 0, 0, 0, 0xC0, 0, 0, 0];
        let value = Numeric::from_sql(&Type::NUMERIC, &nan).unwrap();
        assert_eq!(value.json(), json!("NaN"));
        let infinity = [0, 0, 0, 0, 0xD0, 0, 0, 0];
        let value = Numeric::from_sql(&Type::NUMERIC, &infinity).unwrap();
        assert_eq!(value.json(), json!("Infinity"));
        // 3950.123456 as PostgreSQL sends it: 3 groups, weight 0, positive, dscale 6
        let raw = [0, 3, 0, 0, 0, 0, 0, 6, 0x0F, 0x6E, 0x04, 0xD2, 0x15, 0xE0];
        let value = Numeric::from_sql(&Type::NUMERIC, &raw).unwrap();
        assert_eq!(value.json(), json!(3950.123456));
    }

    /// A timestamp stands for a time up to its resolution later: what its column keeps, and at
    /// least a millisecond when its microseconds are zero (a job's `TIMESTAMP(3)`).
    #[test]
    fn a_timestamp_is_as_coarse_as_its_column_or_its_digits() {
        let at = 1_796_032_800_123_456_000; // ...10:00:00.123456
        assert_eq!(timestamp_resolution(-1, at), 1_000, "microseconds");
        assert_eq!(timestamp_resolution(3, at), 1_000_000, "timestamp(3)");
        assert_eq!(timestamp_resolution(0, at), 1_000_000_000, "timestamp(0)");
        let millis = 1_796_032_800_123_000_000; // ...10:00:00.123 in a plain timestamptz
        assert_eq!(timestamp_resolution(-1, millis), 1_000_000);
        assert_eq!(timestamp_resolution(6, millis), 1_000_000);
    }
}
