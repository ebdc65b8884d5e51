//! What a probe verifies and how: one verifier per probe ([`Verify`]), the paired consumer
//! ([`KafkaVerify`]) or a sink poller ([`PostgresVerify`], [`HttpVerify`]) with what every
//! poller shares ([`SinkPoll`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{Expectation, IdFrom, Loc, RegistryConfig};

/// How a probe checks that its records arrived. One variant per verifier.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Read back from a topic (the paired consumer).
    Kafka(KafkaVerify),
    /// Looked up in a PostgreSQL table.
    Postgres(PostgresVerify),
    /// Looked up through an HTTP/JSON endpoint.
    Http(HttpVerify),
}

impl Verify {
    /// `kafka`, `postgres` or `http`.
    pub fn kind(&self) -> &'static str {
        self.sink_kind().map_or("kafka", SinkKind::as_str)
    }

    /// The paired consumer's settings, unless records are looked up in a sink.
    pub fn kafka(&self) -> Option<&KafkaVerify> {
        match self {
            Verify::Kafka(k) => Some(k),
            _ => None,
        }
    }

    /// The kind of sink records are looked up in (`None` for the Kafka verifier).
    pub fn sink_kind(&self) -> Option<SinkKind> {
        match self {
            Verify::Kafka(_) => None,
            Verify::Postgres(_) => Some(SinkKind::Postgres),
            Verify::Http(_) => Some(SinkKind::Http),
        }
    }

    /// A sink poller's settings (`None` for the Kafka verifier, which is pushed records).
    pub fn sink(&self) -> Option<&SinkPoll> {
        match self {
            Verify::Kafka(_) => None,
            Verify::Postgres(p) => Some(&p.sink),
            Verify::Http(h) => Some(&h.sink),
        }
    }

    /// Whether the pipeline keeps the order of one partition's records on the way the
    /// verifier sees them (`ordered`): only then is `reordered` counted.
    pub fn ordered(&self) -> bool {
        match self {
            Verify::Kafka(k) => k.ordered,
            Verify::Postgres(p) => p.sink.ordered,
            Verify::Http(h) => h.sink.ordered,
        }
    }

    /// How often a sink is polled.
    pub fn poll(&self) -> Option<Duration> {
        self.sink().map(|s| s.poll)
    }
}

/// The kinds of sink a probe can look its records up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// A PostgreSQL table or view.
    Postgres,
    /// An HTTP/JSON endpoint (a search index, a REST API).
    Http,
}

impl SinkKind {
    /// `postgres` or `http`: in logs, spans and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Postgres => "postgres",
            SinkKind::Http => "http",
        }
    }

    /// The OpenTelemetry `db.system.name` of a database sink.
    pub fn db_system(self) -> Option<&'static str> {
        match self {
            SinkKind::Postgres => Some("postgresql"),
            SinkKind::Http => None,
        }
    }
}

/// What every sink poller has: its cadence, its bound per poll, and content assertions.
#[derive(Debug, Clone)]
pub struct SinkPoll {
    /// Pending records are looked up this often (and at once when the first becomes pending).
    pub poll: Duration,
    /// Bound on one poll (connecting included); a slower poll is a `timeout` error.
    pub timeout: Duration,
    /// Extra CA certificates (PEM) trusted for TLS, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Content assertions: JSON pointer into the found row or document -> expected value.
    pub expect: Vec<(String, Expectation)>,
    /// Where the found row or document carries the pipeline's timestamps (hops).
    pub stamps: SinkStamps,
    /// The sink shows one partition's records in the order they were sent (`ordered`, the
    /// default): a record found in a later poll than a higher seq of its partition is
    /// `reordered`. False for a sink written by parallel writers that do not keep that order.
    pub ordered: bool,
}

/// Timestamps a sink's rows or documents carry, which split a record's latency into hops: a
/// column name for PostgreSQL, a JSON pointer into the document for HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStamps {
    /// The job's timestamp, carried into the row (`hop_timestamp`): ends the `pipeline` hop.
    pub hop: Option<String>,
    /// When the sink wrote the row or document (`timestamp_column`, `timestamp_pointer`):
    /// ends the `sink` hop; without it, the poll that found the record does.
    pub written: Option<String>,
}

/// Sink poller for PostgreSQL: one query per poll for every pending record of the probe.
#[derive(Clone)]
pub struct PostgresVerify {
    /// Connection string (key=value or postgresql:// URL); may hold a password: never shown.
    pub dsn: String,
    /// Run with the pending record ids as `$1` (a `uuid[]` or `text[]` parameter).
    pub query: String,
    /// The result column holding the record id.
    pub id_column: String,
    /// Connections kept open.
    pub pool_size: usize,
    /// Cadence, bound and assertions of the poller.
    pub sink: SinkPoll,
    /// Where the query and each column it must return are named in the probe file: a column
    /// the poller cannot read or compare is refused with its place.
    pub places: ColumnPlaces,
}

/// Where a PostgreSQL probe names its query and the columns it reads, for located refusals.
#[derive(Debug, Clone)]
pub struct ColumnPlaces {
    /// `verify.postgres.query`.
    pub query: Loc,
    /// Column -> the field that names it (`id_column`, an `expect` key, `hop_timestamp`,
    /// `timestamp_column`) and where; the first field naming a column wins.
    pub columns: BTreeMap<String, (String, Loc)>,
}

impl ColumnPlaces {
    /// Where `column` is named, and by which field (the query's place when no field names it).
    pub fn of(&self, column: &str) -> (&str, &Loc) {
        self.columns
            .get(column)
            .map_or(("verify.postgres.query", &self.query), |(field, loc)| {
                (field.as_str(), loc)
            })
    }
}

impl fmt::Debug for PostgresVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresVerify")
            .field("dsn", &"<redacted>")
            .field("query", &self.query)
            .field("id_column", &self.id_column)
            .field("pool_size", &self.pool_size)
            .field("sink", &self.sink)
            .field("places", &self.places)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The HTTP method of a sink request.
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `POST`, with the body template.
    Post,
}

/// Sink poller for an HTTP/JSON endpoint (Elasticsearch/OpenSearch `_search`, a REST API): one
/// request per poll for every pending record of the probe.
#[derive(Clone)]
pub struct HttpVerify {
    /// May contain `{ids}` (comma-separated), `{ids_json}` (a JSON array) and `{count}`.
    pub url: String,
    /// `GET` or `POST`.
    pub method: HttpMethod,
    /// Request body template (JSON), same placeholders as the URL.
    pub body: Option<String>,
    /// Request headers; values may be secrets: never shown.
    pub headers: BTreeMap<String, String>,
    /// Where the found documents (or ids) are in the response: a JSON pointer to an array.
    pub ids_pointer: String,
    /// Where a found document carries the record id (for documents that are objects).
    pub id_pointer: String,
    /// Largest response body read; a larger one is an `invalid_json` error, never read whole.
    pub max_response_bytes: usize,
    /// Cadence, bound and assertions of the poller.
    pub sink: SinkPoll,
}

impl fmt::Debug for HttpVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpVerify")
            .field("url", &self.url)
            .field("method", &self.method)
            .field("body", &self.body)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("ids_pointer", &self.ids_pointer)
            .field("id_pointer", &self.id_pointer)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("sink", &self.sink)
            .finish()
    }
}

/// Paired consumer: reads the records back from a topic.
#[derive(Debug, Clone)]
pub struct KafkaVerify {
    /// The cluster read from.
    pub cluster: String,
    /// The topic read from.
    pub topic: String,
    /// Where the record id is in records read back. `None`: the records are copies of what was
    /// sent (same topic, or a mirror) and are checked whole, digest included.
    pub id_from: Option<IdFrom>,
    /// Content assertions on transformed records: JSON pointer -> expected value.
    pub expect: Vec<(String, Expectation)>,
    /// Records read back are Avro in the Confluent wire format (`format: avro`), decoded with
    /// the writer schema this registry gives for the id in each record.
    pub avro: Option<RegistryConfig>,
    /// Where the job wrote its own timestamp into the records read back (`hop_timestamp`, a
    /// JSON pointer): it ends the `pipeline` hop instead of the record's broker timestamp.
    pub hop_timestamp: Option<String>,
    /// The job writes the topic in transactions (`transactional`: Flink's exactly-once sink,
    /// Kafka Streams `exactly_once_v2`): a record becomes readable when its transaction
    /// commits, at the job's next checkpoint, so the `pipeline` hop runs to the read-back (the
    /// wait for the commit is the job's, not the read's).
    pub transactional: bool,
    /// The pipeline keeps the order of one input partition's records on each partition it
    /// writes them to (`ordered`, the default): a record read after a higher seq of its input
    /// partition on the same downstream partition is `reordered`. Order across downstream
    /// partitions is never judged (a job that re-keys spreads one input partition over
    /// several). False for a job that shuffles between parallel subtasks before its sink.
    pub ordered: bool,
}

impl KafkaVerify {
    /// Whether records come back transformed (a pipeline's output) rather than copied.
    pub fn transformed(&self) -> bool {
        self.id_from.is_some() || !self.expect.is_empty()
    }
}
