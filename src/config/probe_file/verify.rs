//! A probe file's `verify` section: the paired consumer, or a sink poller (PostgreSQL, HTTP).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::super::diag::Loc;
use super::super::yaml::{Doc, MAX_SECRET_BYTES, hide_expanded, read_capped, table_start};
use super::super::{
    ColumnPlaces, DEFAULT_MAX_RESPONSE_BYTES, Expectation, HttpMethod, HttpVerify, IdFrom,
    KafkaVerify, PostgresVerify, RegistryConfig, SinkPoll, SinkStamps, Verify,
};
use super::record::registry;
use super::{Parsed, literal, located, opt, pointer, topic};
use crate::record::shape::Shape;

const VERIFIERS: &[&str] = &["kafka", "postgres", "http"];
const KAFKA_VERIFY_FIELDS: &[&str] = &[
    "cluster",
    "topic",
    "id_from",
    "expect",
    "format",
    "registry",
    "hop_timestamp",
    "transactional",
    "ordered",
];
const POSTGRES_VERIFY_FIELDS: &[&str] = &[
    "dsn",
    "dsn_file",
    "query",
    "id_column",
    "poll",
    "timeout",
    "pool_size",
    "ca_file",
    "expect",
    "hop_timestamp",
    "timestamp_column",
    "ordered",
];
const HTTP_VERIFY_FIELDS: &[&str] = &[
    "url",
    "method",
    "body",
    "headers",
    "ids_pointer",
    "id_pointer",
    "max_response_bytes",
    "poll",
    "timeout",
    "ca_file",
    "expect",
    "hop_timestamp",
    "timestamp_pointer",
    "ordered",
];
/// Placeholders of an HTTP sink's URL and body.
pub const IDS: &str = "{ids}";
pub const IDS_JSON: &str = "{ids_json}";
pub const COUNT: &str = "{count}";
/// Defaults of the sink pollers.
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_POOL_SIZE: usize = 2;
/// Envelope fields an expectation may refer to.
const ENVELOPE_FIELDS: &[&str] = &[
    "v",
    "id",
    "probe",
    "instance",
    "site",
    "partition",
    "seq",
    "scheduled_at_ns",
    "tags",
    "payload",
];

/// What a `verify` section is read against.
pub(super) struct VerifyContext<'a> {
    pub(super) cluster: &'a str,
    pub(super) topic: &'a str,
    pub(super) timeout: Option<Duration>,
    /// The probe's own record format, if it has one: `expect: { from: }` points into it.
    pub(super) shape: Option<&'a Shape>,
    /// The registry of `record.avro`, the default for `verify.kafka.format: avro`.
    pub(super) registry: Option<&'a RegistryConfig>,
    /// The `record` section has problems (reported): what depends on it is not checked again.
    pub(super) record_invalid: bool,
}

pub(super) fn verify(
    doc: &mut Doc,
    node: &Node,
    cx: &VerifyContext,
    parsed: &mut Parsed,
) -> Option<Verify> {
    let (cluster, topic_name, timeout) = (cx.cluster, cx.topic, cx.timeout);
    let from = match cx.record_invalid {
        true => Original::Unknown,
        false => Original::of(cx.shape),
    };
    let map = doc.table(node, "verify", VERIFIERS)?;
    if map.len() != 1 {
        doc.error(
            node.span(),
            format!(
                "`verify` must have exactly one of: {}",
                VERIFIERS.join(", ")
            ),
        );
        return None;
    }
    if let Some(n) = map.get_node("postgres") {
        return postgres(doc, n, timeout, &from).map(Verify::Postgres);
    }
    if let Some(n) = map.get_node("http") {
        return http(doc, n, timeout, &from).map(Verify::Http);
    }
    let kafka = map.get_node("kafka")?;
    let k = doc.table(kafka, "verify.kafka", KAFKA_VERIFY_FIELDS)?;
    // Each field is read (and its problems reported) before any is given up on.
    let cluster_node = k.get_node("cluster");
    parsed.verify_cluster = located(doc, cluster_node, "verify.kafka.cluster");
    let verify_cluster = match (&parsed.verify_cluster, cluster_node) {
        (Some((c, _)), _) => Some(c.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(cluster.to_string()),
    };
    let verify_topic = match k.get_node("topic") {
        Some(n) => topic(doc, n, "verify.kafka.topic"),
        None => Some(topic_name.to_string()),
    };
    let id_from = match k.get_node("id_from") {
        Some(n) => id_from(doc, n).map(Some),
        None => Some(None),
    };
    let expect = match k.get_node("expect") {
        Some(n) => expectations(doc, n, Keys::Pointers, &from),
        None => Some(Vec::new()),
    };
    let avro = kafka_format(
        doc,
        k,
        verify_topic.as_deref().unwrap_or(topic_name),
        cx.registry,
        cx.record_invalid,
    );
    let hop_timestamp = opt(k, "hop_timestamp", None, |n| {
        let s = doc.string(n, "verify.kafka.hop_timestamp")?;
        let p = pointer(doc, n, &s, "verify.kafka.hop_timestamp")?;
        let own_topic = verify_cluster.as_deref() == Some(cluster)
            && verify_topic.as_deref() == Some(topic_name);
        if own_topic {
            doc.error(
                n.span(),
                "`verify.kafka.hop_timestamp` needs a downstream topic: records read back from the probe's own topic have no job between the acknowledgement and the read",
            );
            return None;
        }
        Some(Some(p))
    });
    let own_topic =
        verify_cluster.as_deref() == Some(cluster) && verify_topic.as_deref() == Some(topic_name);
    parsed.verify_kafka = Some(Loc::at(&doc.file, &table_start(k)));
    let transactional = opt(k, "transactional", false, |n| {
        let t = doc.boolean(n, "verify.kafka.transactional")?;
        if t && own_topic {
            doc.error(
                n.span(),
                "`verify.kafka.transactional` says how a job writes its output: the probe's own topic is written by the probe, outside transactions",
            );
            return None;
        }
        if t {
            parsed.transactional = Some(Loc::at(&doc.file, n.span()));
        }
        Some(t)
    });
    let ordered = opt(k, "ordered", true, |n| {
        doc.boolean(n, "verify.kafka.ordered")
    });
    if let (Some(true), Some(Some(_)), Some(n)) =
        (transactional, &hop_timestamp, k.get_node("hop_timestamp"))
    {
        doc.error(
            n.span(),
            "`verify.kafka.hop_timestamp` with `transactional: true`: a record of a transactional output becomes readable when the job's transaction commits, not at the time the job wrote into it, so the pipeline hop runs to the read-back; remove `hop_timestamp`",
        );
        return None;
    }
    let (verify_cluster, verify_topic, id_from, expect, avro, hop_timestamp) = (
        verify_cluster?,
        verify_topic?,
        id_from?,
        expect?,
        avro?,
        hop_timestamp?,
    );
    if avro.is_some() && id_from.is_none() && expect.is_empty() {
        doc.error(
            &table_start(k),
            "`verify.kafka.format: avro` reads another stage's Avro records: say where their record id is with `id_from` (a JSON pointer into the decoded value, or `header`)",
        );
        return None;
    }
    Some(Verify::Kafka(KafkaVerify {
        cluster: verify_cluster,
        topic: verify_topic,
        id_from,
        expect,
        avro,
        hop_timestamp,
        transactional: transactional?,
        ordered: ordered?,
    }))
}

/// The settings every sink poller shares.
fn sink_poll(
    doc: &mut Doc,
    map: &MarkedMappingNode,
    what: &str,
    keys: Keys,
    timeout: Option<Duration>,
    from: &Original,
) -> Option<SinkPoll> {
    let poll = opt(map, "poll", DEFAULT_POLL, |n| {
        let poll = doc.duration(n, &format!("{what}.poll"))?;
        if let Some(t) = timeout
            && poll >= t
        {
            doc.error(
                n.span(),
                format!(
                    "`{what}.poll` ({}) must be shorter than the probe's `timeout` ({}), or records are lost before they are looked for",
                    humantime::format_duration(poll),
                    humantime::format_duration(t)
                ),
            );
            return None;
        }
        Some(poll)
    });
    let sink_timeout = opt(map, "timeout", DEFAULT_SINK_TIMEOUT, |n| {
        doc.duration(n, &format!("{what}.timeout"))
    });
    let ca_file = ca_file(doc, map, what);
    let expect = match map.get_node("expect") {
        Some(n) => expectations(doc, n, keys, from),
        None => Some(Vec::new()),
    };
    let stamps = sink_stamps(doc, map, what, keys);
    let ordered = opt(map, "ordered", true, |n| {
        doc.boolean(n, &format!("{what}.ordered"))
    });
    Some(SinkPoll {
        poll: poll?,
        timeout: sink_timeout?,
        ca_file: ca_file?,
        expect: expect?,
        stamps: stamps?,
        ordered: ordered?,
    })
}

/// The timestamps a sink's rows carry (columns) or its documents (JSON pointers): the job's
/// (`hop_timestamp`) and the sink's own (`timestamp_column` or `timestamp_pointer`).
fn sink_stamps(
    doc: &mut Doc,
    map: &MarkedMappingNode,
    what: &str,
    keys: Keys,
) -> Option<SinkStamps> {
    let written_field = match keys {
        Keys::Columns => "timestamp_column",
        Keys::Pointers => "timestamp_pointer",
    };
    let mut read = |field: &str| {
        opt(map, field, None, |n| {
            let name = format!("{what}.{field}");
            let s = doc.string(n, &name)?;
            match keys {
                Keys::Pointers => pointer(doc, n, &s, &name).map(Some),
                Keys::Columns if s.is_empty() => {
                    doc.error(n.span(), format!("`{name}` must name a column"));
                    None
                }
                Keys::Columns => Some(Some(s)),
            }
        })
    };
    let (hop, written) = (read("hop_timestamp"), read(written_field));
    let stamps = SinkStamps {
        hop: hop?,
        written: written?,
    };
    if stamps.hop.is_some() && stamps.hop == stamps.written {
        let at = map
            .get_node(written_field)
            .map_or(table_start(map), |n| *n.span());
        doc.error(
            &at,
            format!(
                "`{what}.{written_field}` and `{what}.hop_timestamp` name the same timestamp: the sink hop would always be zero; `hop_timestamp` is the job's, `{written_field}` the sink's"
            ),
        );
        return None;
    }
    Some(stamps)
}

/// `{what}.ca_file`: extra CA certificates (PEM), a path with `${ENV}`, read once here so that
/// a missing or unreadable file is a located error. `Some(None)` when absent.
pub(super) fn ca_file(
    doc: &mut Doc,
    map: &MarkedMappingNode,
    what: &str,
) -> Option<Option<PathBuf>> {
    opt(map, "ca_file", None, |n| {
        let s = doc.scalar(n, &format!("{what}.ca_file"))?;
        let path = doc.expand_env(s, &format!("{what}.ca_file"))?;
        if let Err(e) = read_capped(Path::new(&path), MAX_SECRET_BYTES, "CA file") {
            doc.error(n.span(), format!("`{what}.ca_file`: {}: {e}", s.as_str()));
            return None;
        }
        Some(Some(PathBuf::from(path)))
    })
}

/// A secret given inline (with `${ENV}`) as `field` or read from the file named by `field_file`:
/// its value, where it is, and what of it the file shows (the template as written; nothing for
/// a value read from a file), for messages.
pub(super) fn secret(
    doc: &mut Doc,
    map: &MarkedMappingNode,
    what: &str,
    field: &str,
) -> Option<(String, Span, String)> {
    let file_field = format!("{field}_file");
    match (map.get_node(field), map.get_node(&file_field)) {
        (Some(_), Some(f)) => {
            doc.error(
                f.span(),
                format!("`{what}` has both `{field}` and `{file_field}`; give one"),
            );
            None
        }
        (Some(n), None) => {
            let s = doc.scalar(n, &format!("{what}.{field}"))?;
            let v = doc.expand_env(s, &format!("{what}.{field}"))?;
            Some((v, *n.span(), s.as_str().to_string()))
        }
        (None, Some(n)) => {
            let s = doc.scalar(n, &format!("{what}.{file_field}"))?;
            let path = doc.expand_env(s, &format!("{what}.{file_field}"))?;
            let field = format!("{what}.{file_field}");
            let v = doc.read_secret_file(n.span(), &path, s.as_str(), &field)?;
            Some((v, *n.span(), String::new()))
        }
        (None, None) => {
            doc.error(
                &table_start(map),
                format!("missing field `{field}` (or `{file_field}`) in {what}"),
            );
            None
        }
    }
}

fn postgres(
    doc: &mut Doc,
    node: &Node,
    timeout: Option<Duration>,
    from: &Original,
) -> Option<PostgresVerify> {
    const WHAT: &str = "verify.postgres";
    let map = doc.table(node, WHAT, POSTGRES_VERIFY_FIELDS)?;
    let dsn = secret(doc, map, WHAT, "dsn").and_then(|(dsn, span, written)| {
        // Checked here so that a typo is a located error, not a failure at the first poll. What
        // the parser quotes is shown only when it is in the file as written: a DSN from the
        // environment or a file may hold a password.
        match dsn.parse::<tokio_postgres::Config>() {
            Ok(_) => Some(dsn),
            Err(e) => {
                let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                let why = if written == dsn {
                    why
                } else {
                    hide_expanded(&why, &[&written])
                };
                doc.error(
                    &span,
                    format!("`{WHAT}.dsn` is not a valid connection string: {why}"),
                );
                None
            }
        }
    });
    let query = doc.required(map, "query", WHAT).and_then(|n| {
        let q = doc.string(n, &format!("{WHAT}.query"))?;
        if !q.contains("$1") {
            doc.error(
                n.span(),
                "`verify.postgres.query` must take the pending record ids as `$1`, e.g. `select id, amount from sink where id = any($1)`",
            );
            return None;
        }
        Some(q)
    });
    let id_column = opt(map, "id_column", "id".to_string(), |n| {
        doc.string(n, &format!("{WHAT}.id_column"))
    });
    let pool_size = opt(map, "pool_size", DEFAULT_POOL_SIZE, |n| {
        let v: usize = doc.integer(n, &format!("{WHAT}.pool_size"), "a number of connections")?;
        if v == 0 {
            doc.error(n.span(), "`verify.postgres.pool_size` must be at least 1");
            return None;
        }
        Some(v)
    });
    let sink = sink_poll(doc, map, WHAT, Keys::Columns, timeout, from);
    let places = column_places(doc, map, id_column.as_deref().unwrap_or("id"));
    Some(PostgresVerify {
        dsn: dsn?,
        query: query?,
        id_column: id_column?,
        pool_size: pool_size?,
        sink: sink?,
        places,
    })
}

fn http(
    doc: &mut Doc,
    node: &Node,
    timeout: Option<Duration>,
    from: &Original,
) -> Option<HttpVerify> {
    const WHAT: &str = "verify.http";
    let map = doc.table(node, WHAT, HTTP_VERIFY_FIELDS)?;
    let url_node = doc.required(map, "url", WHAT);
    let url = url_node.and_then(|n| {
        let s = doc.scalar(n, "verify.http.url")?;
        let url = doc.expand_env(s, "verify.http.url")?;
        // The URL as it will be requested (ids are UUIDs: nothing to escape).
        let sample = fill(&url, &[uuid::Uuid::nil()]);
        match reqwest::Url::parse(&sample) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(url),
            _ => {
                // As written: the expanded URL may carry a credential.
                doc.error(
                    n.span(),
                    format!(
                        "`verify.http.url` must be an http:// or https:// URL, got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    });
    let body = opt(map, "body", None, |n| {
        let s = doc.scalar(n, "verify.http.body")?;
        Some(Some(doc.expand_env(s, "verify.http.body")?))
    });
    let method = opt(map, "method", None, |n| {
        let s = doc.string(n, "verify.http.method")?;
        match s.to_ascii_uppercase().as_str() {
            "GET" => Some(Some(HttpMethod::Get)),
            "POST" => Some(Some(HttpMethod::Post)),
            _ => {
                doc.error(
                    n.span(),
                    format!("`verify.http.method` must be GET or POST, got `{s}`"),
                );
                None
            }
        }
    });
    let method = match (method, &body) {
        (Some(Some(m)), _) => Some(m),
        (Some(None), Some(Some(_))) => Some(HttpMethod::Post),
        (Some(None), _) => Some(HttpMethod::Get),
        (None, _) => None,
    };
    if let (Some(u), Some(b)) = (&url, &body) {
        let has_ids = |t: &str| t.contains(IDS) || t.contains(IDS_JSON);
        if !has_ids(u) && !b.as_deref().is_some_and(has_ids) {
            doc.error(
                &url_node.map_or(table_start(map), |n| *n.span()),
                format!(
                    "`verify.http` must put the pending record ids into its `url` or `body`: use {IDS} (comma-separated) or {IDS_JSON} (a JSON array)"
                ),
            );
        }
    }
    if let (Some(HttpMethod::Get), Some(Some(_))) = (method, &body)
        && let Some(n) = map.get_node("body")
    {
        doc.error(n.span(), "`verify.http.body` needs `method: POST`");
    }
    let headers = map.get_node("headers").map(|n| {
        let headers = doc.string_map(n, "verify.http.headers", true);
        for (name, value) in &headers {
            let bad_name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err();
            if bad_name || reqwest::header::HeaderValue::from_str(value).is_err() {
                // The value may be a secret: only the name is shown.
                doc.error(
                    n.span(),
                    format!(
                        "`verify.http.headers.{name}` is not a valid HTTP header name and value"
                    ),
                );
            }
        }
        headers
    });
    let mut json_pointer = |field: &str, default: &str| {
        opt(map, field, default.to_string(), |n| {
            let s = doc.string(n, &format!("{WHAT}.{field}"))?;
            if !s.is_empty() && !s.starts_with('/') {
                doc.error(
                    n.span(),
                    format!("`{WHAT}.{field}` must be a JSON pointer like /hits/hits (or empty for the whole response), got `{s}`"),
                );
                return None;
            }
            Some(s)
        })
    };
    let ids_pointer = json_pointer("ids_pointer", "");
    let id_pointer = json_pointer("id_pointer", "/id");
    let max_response_bytes = opt(map, "max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, |n| {
        let v: usize = doc.integer(
            n,
            &format!("{WHAT}.max_response_bytes"),
            "a number of bytes",
        )?;
        if v == 0 {
            doc.error(
                n.span(),
                "`verify.http.max_response_bytes` must be at least 1",
            );
            return None;
        }
        Some(v)
    });
    let sink = sink_poll(doc, map, WHAT, Keys::Pointers, timeout, from);
    Some(HttpVerify {
        url: url?,
        method: method?,
        body: body?,
        headers: headers.unwrap_or_default(),
        ids_pointer: ids_pointer?,
        id_pointer: id_pointer?,
        max_response_bytes: max_response_bytes?,
        sink: sink?,
    })
}

/// Where `verify.postgres` names its query and each column it reads.
fn column_places(doc: &Doc, map: &MarkedMappingNode, id_column: &str) -> ColumnPlaces {
    const WHAT: &str = "verify.postgres";
    let at = |n: Option<&Node>| {
        n.map_or(Loc::at(&doc.file, &table_start(map)), |n| {
            Loc::at(&doc.file, n.span())
        })
    };
    let mut columns = BTreeMap::new();
    let id_field = match map.get_node("id_column") {
        Some(_) => format!("{WHAT}.id_column"),
        None => format!("{WHAT}.id_column (default `id`)"),
    };
    columns.insert(
        id_column.to_string(),
        (id_field, at(map.get_node("id_column"))),
    );
    if let Some(expect) = map.get_node("expect").and_then(Node::as_mapping) {
        for (key, _) in expect.iter() {
            let field = format!("{WHAT}.expect.{}", key.as_str());
            columns
                .entry(key.as_str().to_string())
                .or_insert_with(|| (field, Loc::at(&doc.file, key.span())));
        }
    }
    for field in ["hop_timestamp", "timestamp_column"] {
        if let Some(n) = map.get_node(field)
            && let Some(s) = n.as_scalar()
        {
            columns
                .entry(s.as_str().to_string())
                .or_insert_with(|| (format!("{WHAT}.{field}"), at(Some(n))));
        }
    }
    ColumnPlaces {
        query: at(map.get_node("query")),
        columns,
    }
}

/// A URL or body template with the placeholders filled for these ids.
pub fn fill(template: &str, ids: &[uuid::Uuid]) -> String {
    let plain: Vec<String> = ids.iter().map(|id| id.hyphenated().to_string()).collect();
    template
        .replace(
            IDS_JSON,
            &serde_json::to_string(&plain).expect("strings serialise"),
        )
        .replace(IDS, &plain.join(","))
        .replace(COUNT, &ids.len().to_string())
}

fn id_from(doc: &mut Doc, node: &Node) -> Option<IdFrom> {
    let s = doc.string(node, "id_from")?;
    if s == "header" {
        return Some(IdFrom::Header(crate::record::header::ID.to_string()));
    }
    if let Some(name) = s.strip_prefix("header:") {
        if name.is_empty() {
            doc.error(node.span(), "`id_from: header:<name>` needs a header name");
            return None;
        }
        return Some(IdFrom::Header(name.to_string()));
    }
    if !s.starts_with('/') {
        doc.error(node.span(), format!("`id_from` must be `header`, `header:<name>` or a JSON pointer like /order/id, got `{s}`"));
        return None;
    }
    Some(IdFrom::Pointer(s))
}

/// What the keys of an `expect` table name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// JSON pointers into a record or document.
    Pointers,
    /// Result columns of a query (kept as pointers into the row as a JSON object).
    Columns,
}

fn expectations(
    doc: &mut Doc,
    node: &Node,
    keys: Keys,
    original: &Original,
) -> Option<Vec<(String, Expectation)>> {
    let Some(map) = node.as_mapping() else {
        let what = match keys {
            Keys::Pointers => "JSON pointers",
            Keys::Columns => "column names",
        };
        doc.error(
            node.span(),
            format!("`expect` must be a mapping of {what} to expected values"),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in map.iter() {
        let p = match keys {
            Keys::Pointers => pointer(doc, &Node::from(key.clone()), key.as_str(), "expect"),
            Keys::Columns => Some(format!(
                "/{}",
                key.as_str().replace('~', "~0").replace('/', "~1")
            )),
        };
        let Some(p) = p else {
            ok = false;
            continue;
        };
        let expectation = match value {
            Node::Scalar(s) => Some(Expectation::Literal(literal(s))),
            Node::Mapping(_) => {
                let what = format!("expect.{p}");
                doc.table(value, &what, &["from"]).and_then(|m| {
                    let from = doc.required(m, "from", &what)?;
                    let s = doc.string(from, "from")?;
                    if let Err(why) = original.check(&s) {
                        doc.error(from.span(), why);
                        return None;
                    }
                    Some(Expectation::FromOriginal(s))
                })
            }
            Node::Sequence(_) => {
                doc.error(
                    value.span(),
                    format!("`expect.{p}` must be a value or `{{ from: /field }}`"),
                );
                None
            }
        };
        match expectation {
            Some(e) => out.push((p, e)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// What `expect: { from: /pointer }` may point into: the envelope's fields, or the value of
/// the probe's own record format (checked against the template rendered for a sample record).
enum Original {
    Envelope,
    Shaped(serde_json::Value),
    /// The `record` section has problems: nothing to check against.
    Unknown,
}

impl Original {
    fn of(shape: Option<&Shape>) -> Original {
        match shape {
            None => Original::Envelope,
            Some(shape) => {
                let body = crate::record::Body {
                    v: crate::record::ENVELOPE_VERSION,
                    id: uuid::Uuid::nil(),
                    probe: String::new(),
                    instance: String::new(),
                    site: String::new(),
                    partition: 0,
                    seq: 0,
                    scheduled_at_ns: 0,
                    tags: BTreeMap::new(),
                    payload: String::new(),
                };
                let fill = crate::record::shape::Fill::new(
                    &body,
                    opentelemetry::trace::TraceId::INVALID,
                    opentelemetry::trace::SpanId::INVALID,
                    false,
                );
                Original::Shaped(shape.original(&fill))
            }
        }
    }

    fn check(&self, pointer: &str) -> Result<(), String> {
        match self {
            Original::Unknown => Ok(()),
            Original::Envelope => {
                let first = pointer.trim_start_matches('/').split('/').next();
                if pointer.starts_with('/') && first.is_some_and(|f| ENVELOPE_FIELDS.contains(&f)) {
                    return Ok(());
                }
                Err(format!(
                    "`from` must point into the original record ({}), got `{pointer}`",
                    ENVELOPE_FIELDS.join(", ")
                ))
            }
            Original::Shaped(doc) => {
                if pointer.starts_with('/') && doc.pointer(pointer).is_some() {
                    return Ok(());
                }
                let fields: Vec<String> = doc
                    .as_object()
                    .map(|o| o.keys().map(|k| format!("/{k}")).collect())
                    .unwrap_or_default();
                Err(format!(
                    "`from` must point into the record the probe sends (`record.value`: {}), got `{pointer}`",
                    fields.join(", ")
                ))
            }
        }
    }
}

/// `verify.kafka.format`: `json` (the default) or `avro` (the Confluent wire format, writer
/// schemas from `verify.kafka.registry`, else from `record.avro.registry`). `Some(None)` is
/// JSON; `None` means a problem was reported.
fn kafka_format(
    doc: &mut Doc,
    k: &MarkedMappingNode,
    topic: &str,
    record_registry: Option<&RegistryConfig>,
    record_invalid: bool,
) -> Option<Option<RegistryConfig>> {
    let own = opt(k, "registry", None, |n| registry(doc, n, topic).map(Some));
    let format = opt(k, "format", "json".to_string(), |n| {
        doc.string(n, "verify.kafka.format")
    })?;
    match format.as_str() {
        "json" => {
            if let (Some(Some(_)), Some(n)) = (&own, k.get_node("registry")) {
                doc.error(n.span(), "`verify.kafka.registry` is for `format: avro`");
                return None;
            }
            Some(None)
        }
        "avro" => match own? {
            Some(r) => Some(Some(r)),
            None => match record_registry {
                Some(r) => Some(Some(r.clone())),
                // The record's registry may be what is wrong (reported already).
                None if record_invalid => None,
                None => {
                    let at = k.get_node("format").map_or(table_start(k), |n| *n.span());
                    doc.error(
                        &at,
                        "`verify.kafka.format: avro` needs a Schema Registry to fetch each record's writer schema: add `verify.kafka.registry` (or `record.avro.registry`)",
                    );
                    None
                }
            },
        },
        other => {
            let at = k.get_node("format").map_or(table_start(k), |n| *n.span());
            doc.error(
                &at,
                format!("`verify.kafka.format` must be json or avro, got `{other}`"),
            );
            None
        }
    }
}
