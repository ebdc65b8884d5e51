//! One probe file: what to produce, how to verify it, which SLOs to hold it to.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::diag::{Diagnostics, Loc};
use super::yaml::{
    Doc, MAX_CONFIG_BYTES, MAX_SECRET_BYTES, hide_expanded, read_capped, table_start,
};
use super::{
    CreateTopic, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TOPIC, Expectation,
    HttpMethod, HttpVerify, IdFrom, KafkaVerify, MAX_PAYLOAD_BYTES, Partitions, PostgresVerify,
    ProbeConfig, RegistryAuth, RegistryConfig, SinkPoll, SinkStamps, Sli, SloConfig, Verify,
};
use crate::record::avro::{AvroError, AvroFormat, Framing};
use crate::record::is_reserved_header;
use crate::record::shape::{Shape, Step, Template, TemplateError, Text, ValueFormat};
use std::path::PathBuf;

const PROBE_FIELDS: &[&str] = &[
    "name",
    "cluster",
    "topic",
    "interval",
    "timeout",
    "partitions",
    "payload_bytes",
    "tags",
    "verify",
    "slos",
    "max_in_flight",
    "per_partition_metrics",
    "create_topic",
    "record",
];
const RECORD_FIELDS: &[&str] = &["key", "value", "avro"];
const AVRO_FIELDS: &[&str] = &["schema_file", "schema_id", "registry"];
const REGISTRY_FIELDS: &[&str] = &[
    "url",
    "subject",
    "register",
    "username",
    "password",
    "password_file",
    "bearer_token",
    "bearer_token_file",
    "ca_file",
    "timeout",
];
const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
const VERIFIERS: &[&str] = &["kafka", "postgres", "http"];
const KAFKA_VERIFY_FIELDS: &[&str] = &[
    "cluster",
    "topic",
    "id_from",
    "expect",
    "format",
    "registry",
    "hop_timestamp",
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
];
/// Placeholders of an HTTP sink's URL and body.
pub const IDS: &str = "{ids}";
pub const IDS_JSON: &str = "{ids_json}";
pub const COUNT: &str = "{count}";
/// Defaults of the sink pollers.
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const DEFAULT_SINK_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_POOL_SIZE: usize = 2;
const CREATE_TOPIC_FIELDS: &[&str] = &["partitions", "replication_factor"];
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
const SLO_FIELDS: &[&str] = &[
    "name",
    "sli",
    "latency_below",
    "objective",
    "window",
    "min_bad_events",
];

/// Placeholder cluster name of a probe that names none; resolved against the agent file.
const UNNAMED_CLUSTER: &str = "default";

/// A probe file as read: the probe when it is valid, and the references other files are checked
/// against even when it is not.
pub(super) struct Parsed {
    pub probe: Option<ProbeConfig>,
    pub origin: Loc,
    pub name: Option<(String, Loc)>,
    /// The `cluster` field, when given.
    pub cluster: Option<(String, Loc)>,
    /// The `verify.kafka.cluster` field, when given.
    pub verify_cluster: Option<(String, Loc)>,
}

pub(super) fn load(path: &Path, diags: &mut Diagnostics) -> Option<Parsed> {
    let text = match read_capped(path, MAX_CONFIG_BYTES, "probe file") {
        Ok(t) => t,
        Err(e) => {
            diags.push_path(path, e);
            return None;
        }
    };
    let before = diags.len();
    let mut doc = Doc {
        file: Arc::from(path),
        diags,
    };
    let root = doc.parse(&text)?;
    let map = doc.table(&root, "probe", PROBE_FIELDS)?;
    let mut parsed = Parsed {
        probe: None,
        origin: Loc::file(&doc.file),
        name: None,
        cluster: None,
        verify_cluster: None,
    };
    let probe = probe(&mut doc, map, &mut parsed);
    // A probe with any problem is not kept, so that nothing later sees half a probe. A probe
    // dropped without a reported problem would vanish silently: that is reported too.
    if doc.diags.len() == before {
        if probe.is_none() {
            doc.error(
                root.span(),
                "this probe file could not be read, but no problem was found in it: please report this as a bug of slo-probe",
            );
        }
        parsed.probe = probe;
    }
    Some(parsed)
}

/// A named reference and where it is.
fn located(doc: &mut Doc, node: Option<&Node>, field: &str) -> Option<(String, Loc)> {
    let node = node?;
    let value = doc.name(node, field)?;
    Some((value, doc.loc(node.span())))
}

fn probe(doc: &mut Doc, map: &MarkedMappingNode, parsed: &mut Parsed) -> Option<ProbeConfig> {
    let origin = parsed.origin.clone();
    let name_node = doc.required(map, "name", "probe");
    parsed.name = located(doc, name_node, "name");
    let name = parsed.name.as_ref().map(|(n, _)| n.clone());
    parsed.cluster = located(doc, map.get_node("cluster"), "cluster");
    let cluster = parsed
        .cluster
        .as_ref()
        .map_or(UNNAMED_CLUSTER.to_string(), |(c, _)| c.clone());

    let topic = match map.get_node("topic") {
        Some(n) => topic(doc, n, "topic"),
        None => Some(DEFAULT_TOPIC.to_string()),
    };
    let interval = opt(map, "interval", Duration::from_secs(10), |n| {
        doc.duration(n, "interval")
    });
    let timeout = opt(map, "timeout", Duration::from_secs(30), |n| {
        doc.duration(n, "timeout")
    });
    let partitions = match map.get_node("partitions") {
        Some(n) => partitions(doc, n),
        None => Some(Partitions::All),
    };
    let payload_bytes = opt(map, "payload_bytes", 256, |n| {
        let v: usize = doc.integer(n, "payload_bytes", "a number of bytes")?;
        if v > MAX_PAYLOAD_BYTES {
            doc.error(
                n.span(),
                format!("`payload_bytes` must be at most {MAX_PAYLOAD_BYTES}, got {v}"),
            );
            return None;
        }
        Some(v)
    });
    let tags = map
        .get_node("tags")
        .map(|n| tags(doc, n))
        .unwrap_or_default();
    let topic_name = topic.as_deref().unwrap_or(DEFAULT_TOPIC);
    let record = match map.get_node("record") {
        Some(n) => record(doc, n, topic_name).map(Some),
        None => Some(None),
    };
    let shape = record.as_ref().and_then(|r| r.as_ref()).map(|r| &r.0);
    let verify = match map.get_node("verify") {
        Some(n) => {
            let context = VerifyContext {
                cluster: &cluster,
                topic: topic_name,
                timeout,
                shape: shape.map(|s| s.as_ref()),
                record_invalid: record.is_none(),
                registry: record
                    .as_ref()
                    .and_then(|r| r.as_ref())
                    .and_then(|r| r.1.as_ref()),
            };
            verify(doc, n, &context, parsed)
        }
        None => Some(Verify::Kafka(KafkaVerify {
            cluster: cluster.clone(),
            topic: topic.clone().unwrap_or_else(|| DEFAULT_TOPIC.into()),
            id_from: None,
            expect: Vec::new(),
            avro: None,
            hop_timestamp: None,
        })),
    };
    if let (Some(Some((shape, _))), Some(v), Some(n)) = (&record, &verify, map.get_node("record"))
        && v.sink().is_some()
        && !shape.carries_id()
    {
        doc.error(
            n.span(),
            "a sink finds records by their id: put `{id}` in `record.value` (or `record.key`) so that the pipeline carries it into the sink",
        );
    }
    let slos = map
        .get_node("slos")
        .map(|n| slos(doc, n, timeout))
        .unwrap_or_default();
    let max_in_flight = opt(map, "max_in_flight", DEFAULT_MAX_IN_FLIGHT, |n| {
        let v: usize = doc.integer(n, "max_in_flight", "a number of records")?;
        if v == 0 {
            doc.error(n.span(), "`max_in_flight` must be at least 1");
            return None;
        }
        Some(v)
    });
    let per_partition_metrics = opt(map, "per_partition_metrics", false, |n| {
        doc.boolean(n, "per_partition_metrics")
    });
    let create_topic = opt(map, "create_topic", None, |n| create_topic(doc, n));

    Some(ProbeConfig {
        name: name?,
        cluster,
        topic: topic?,
        interval: interval?,
        timeout: timeout?,
        partitions: partitions?,
        payload_bytes: payload_bytes?,
        tags,
        verify: verify?,
        slos,
        max_in_flight: max_in_flight?,
        per_partition_metrics: per_partition_metrics?,
        create_topic: create_topic?,
        schema_registry: record
            .as_ref()
            .and_then(|r| r.as_ref())
            .and_then(|r| r.1.clone()),
        record: record?.map(|r| r.0),
        origin,
    })
}

/// An optional field: its default when absent, `None` when present but invalid.
fn opt<T>(
    map: &MarkedMappingNode,
    key: &str,
    default: T,
    read: impl FnOnce(&Node) -> Option<T>,
) -> Option<T> {
    match map.get_node(key) {
        Some(n) => read(n),
        None => Some(default),
    }
}

fn topic(doc: &mut Doc, node: &Node, field: &str) -> Option<String> {
    let t = doc.string(node, field)?;
    let valid = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        doc.error(
            node.span(),
            format!("`{field}` is not a valid Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249), got `{t}`"),
        );
        return None;
    }
    Some(t)
}

fn partitions(doc: &mut Doc, node: &Node) -> Option<Partitions> {
    if let Some(s) = node.as_scalar() {
        if s.as_str() == "all" {
            return Some(Partitions::All);
        }
        doc.error(
            node.span(),
            format!(
                "`partitions` must be `all` or a list of partition numbers, got `{}`",
                s.as_str()
            ),
        );
        return None;
    }
    let Some(seq) = node.as_sequence() else {
        doc.error(
            node.span(),
            "`partitions` must be `all` or a list of partition numbers",
        );
        return None;
    };
    if seq.is_empty() {
        doc.error(
            node.span(),
            "`partitions` must not be empty; use `all` for every partition",
        );
        return None;
    }
    let mut out: Vec<i32> = Vec::new();
    let mut ok = true;
    for item in seq.iter() {
        match doc.integer::<i32>(item, "partitions", "a partition number (0 or more)") {
            Some(p) if p < 0 => {
                doc.error(
                    item.span(),
                    format!("partition numbers start at 0, got {p}"),
                );
                ok = false;
            }
            Some(p) if out.contains(&p) => {
                doc.error(item.span(), format!("partition {p} is listed twice"));
                ok = false;
            }
            Some(p) => out.push(p),
            None => ok = false,
        }
    }
    out.sort_unstable();
    ok.then_some(Partitions::List(out))
}

fn tags(doc: &mut Doc, node: &Node) -> BTreeMap<String, String> {
    let tags = doc.string_map(node, "tags", false);
    if let Some(map) = node.as_mapping() {
        for key in map.keys() {
            let k = key.as_str();
            if let Err(why) = super::check_name(k) {
                doc.error(key.span(), format!("tag name {why}, got `{k}`"));
            } else if is_reserved_header(k) {
                doc.error(
                    key.span(),
                    format!("tag `{k}` would clash with a record header slo-probe writes"),
                );
            }
        }
    }
    tags
}

/// What a `verify` section is read against.
struct VerifyContext<'a> {
    cluster: &'a str,
    topic: &'a str,
    timeout: Option<Duration>,
    /// The probe's own record format, if it has one: `expect: { from: }` points into it.
    shape: Option<&'a Shape>,
    /// The registry of `record.avro`, the default for `verify.kafka.format: avro`.
    registry: Option<&'a RegistryConfig>,
    /// The `record` section has problems (reported): what depends on it is not checked again.
    record_invalid: bool,
}

fn verify(doc: &mut Doc, node: &Node, cx: &VerifyContext, parsed: &mut Parsed) -> Option<Verify> {
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
    Some(SinkPoll {
        poll: poll?,
        timeout: sink_timeout?,
        ca_file: ca_file?,
        expect: expect?,
        stamps: stamps?,
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
fn ca_file(doc: &mut Doc, map: &MarkedMappingNode, what: &str) -> Option<Option<PathBuf>> {
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
fn secret(
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
    Some(PostgresVerify {
        dsn: dsn?,
        query: query?,
        id_column: id_column?,
        pool_size: pool_size?,
        sink: sink?,
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

/// `true`, `false` (the default: a missing topic is an error) or
/// `{ partitions, replication_factor }`. `Some(None)` is a valid `false`; `None` means a
/// problem was reported.
fn create_topic(doc: &mut Doc, node: &Node) -> Option<Option<CreateTopic>> {
    if let Some(s) = node.as_scalar() {
        return match s.as_bool() {
            Some(true) => Some(Some(CreateTopic::default())),
            Some(false) => Some(None),
            None => {
                doc.error(
                    node.span(),
                    format!(
                        "`create_topic` must be true, false or a mapping, got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        };
    }
    let map = doc.table(node, "create_topic", CREATE_TOPIC_FIELDS)?;
    let mut count = |field: &str| -> Option<Option<i32>> {
        let Some(n) = map.get_node(field) else {
            return Some(None);
        };
        let v: i32 = doc.integer(n, field, "a positive number")?;
        if v < 1 {
            doc.error(n.span(), format!("`{field}` must be at least 1, got {v}"));
            return None;
        }
        Some(Some(v))
    };
    let partitions = count("partitions");
    let replication_factor = count("replication_factor");
    Some(Some(CreateTopic {
        partitions: partitions?,
        replication_factor: replication_factor?,
    }))
}

fn pointer(doc: &mut Doc, node: &Node, s: &str, field: &str) -> Option<String> {
    if !s.starts_with('/') {
        doc.error(
            node.span(),
            format!("`{field}` must be a JSON pointer starting with `/`, got `{s}`"),
        );
        return None;
    }
    Some(s.to_string())
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

/// The `record` section: the shape, and the registry its schema id comes from.
fn record(doc: &mut Doc, node: &Node, topic: &str) -> Option<(Arc<Shape>, Option<RegistryConfig>)> {
    let map = doc.table(node, "record", RECORD_FIELDS)?;
    let key = opt(map, "key", "{id}".to_string(), |n| {
        doc.string(n, "record.key")
    })
    .and_then(|k| match Text::parse(&k) {
        Ok(t) => Some(t),
        Err(e) => {
            let at = map.get_node("key").map_or(table_start(map), |n| *n.span());
            doc.error(&at, format!("`record.key`: {e}"));
            None
        }
    });
    let value_node = doc.required(map, "value", "record");
    let template = value_node.and_then(|n| {
        let json = yaml_json(n);
        match Template::compile(&json) {
            Ok(t) => Some(t),
            Err(errors) => {
                for e in errors {
                    let at = *node_at(n, &e.path).span();
                    doc.error(&at, format!("`record.value`: {}", e.message));
                }
                None
            }
        }
    });
    let avro = match (map.get_node("avro"), &template, value_node) {
        (Some(a), Some(t), Some(v)) => avro(doc, a, t, v, topic).map(Some),
        (Some(a), _, _) => {
            // Still read, so that its own problems are reported with the template's.
            let _ = doc.table(a, "record.avro", AVRO_FIELDS);
            None
        }
        (None, _, _) => Some(None),
    };
    let (key, template, avro) = (key?, template?, avro?);
    let (value, registry) = match avro {
        Some((format, registry)) => (ValueFormat::Avro(Box::new(format)), registry),
        None => (ValueFormat::Json, None),
    };
    let shape = Shape {
        key,
        template,
        value,
    };
    Some((Arc::new(shape), registry))
}

/// `record.avro`: the schema file (relative to the probe file), the template compiled against
/// it, and the framing: a fixed `schema_id` or a `registry` (the Confluent wire format), or
/// neither (plain Avro binary).
fn avro(
    doc: &mut Doc,
    node: &Node,
    template: &Template,
    value_node: &Node,
    topic: &str,
) -> Option<(AvroFormat, Option<RegistryConfig>)> {
    const WHAT: &str = "record.avro";
    let map = doc.table(node, WHAT, AVRO_FIELDS)?;
    let schema_node = doc.required(map, "schema_file", WHAT);
    let schema_id = opt(map, "schema_id", None, |n| {
        let id: u32 = doc.integer(n, "record.avro.schema_id", "a schema id (0 or more)")?;
        Some(Some(id))
    });
    let registry = opt(map, "registry", None, |n| registry(doc, n, topic).map(Some));
    if let (Some(Some(_)), Some(Some(_)), Some(n)) =
        (&schema_id, &registry, map.get_node("registry"))
    {
        doc.error(
            n.span(),
            "`record.avro` has both `schema_id` and `registry`: give the id, or the registry to get it from",
        );
        return None;
    }
    let schema_node = schema_node?;
    let written = doc.string(schema_node, "record.avro.schema_file")?;
    let path = doc.file.parent().unwrap_or(Path::new(".")).join(&written);
    let text = match read_capped(&path, MAX_CONFIG_BYTES, "schema file") {
        Ok(t) => t,
        Err(e) => {
            doc.error(
                schema_node.span(),
                format!("`record.avro.schema_file`: {written}: {e}"),
            );
            return None;
        }
    };
    let (schema_id, registry) = (schema_id?, registry?);
    let framing = if schema_id.is_some() || registry.is_some() {
        Framing::Confluent
    } else {
        Framing::Plain
    };
    match AvroFormat::new(&text, template, framing, schema_id) {
        Ok(format) => Some((format, registry)),
        Err(AvroError::Schema(e)) => {
            doc.error(
                schema_node.span(),
                format!("`record.avro.schema_file`: {written} is not a valid Avro schema: {e}"),
            );
            None
        }
        Err(AvroError::Template(errors)) => {
            for e in errors {
                let at = template_span(value_node, &e);
                doc.error(
                    &at,
                    format!(
                        "`record.value` does not fit the schema in {written}: {}",
                        e.message
                    ),
                );
            }
            None
        }
    }
}

/// A Schema Registry: `url`, `subject` (default `<topic>-value`), `register`, basic
/// (`username` with `password` or `password_file`) or bearer (`bearer_token` or
/// `bearer_token_file`) authentication, `ca_file`, `timeout`.
fn registry(doc: &mut Doc, node: &Node, topic: &str) -> Option<RegistryConfig> {
    const WHAT: &str = "registry";
    let map = doc.table(node, WHAT, REGISTRY_FIELDS)?;
    let url = doc.required(map, "url", WHAT).and_then(|n| {
        let s = doc.scalar(n, "registry.url")?;
        let url = doc.expand_env(s, "registry.url")?;
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(url.trim_end_matches('/').to_string())
            }
            _ => {
                doc.error(
                    n.span(),
                    format!(
                        "`registry.url` must be an http:// or https:// URL, got `{}`",
                        s.as_str()
                    ),
                );
                None
            }
        }
    });
    let subject = opt(map, "subject", format!("{topic}-value"), |n| {
        doc.string(n, "registry.subject")
    });
    let register = opt(map, "register", false, |n| {
        doc.boolean(n, "registry.register")
    });
    let timeout = opt(map, "timeout", DEFAULT_REGISTRY_TIMEOUT, |n| {
        doc.duration(n, "registry.timeout")
    });
    let ca_file = ca_file(doc, map, WHAT);
    let has = |f: &str| map.get_node(f).is_some();
    let basic = has("username") || has("password") || has("password_file");
    let bearer = has("bearer_token") || has("bearer_token_file");
    let auth = match (basic, bearer) {
        (true, true) => {
            doc.error(
                &table_start(map),
                "`registry` has both basic (`username`, `password`) and bearer (`bearer_token`) credentials: give one",
            );
            None
        }
        (true, false) => {
            let username = doc.required(map, "username", WHAT).and_then(|n| {
                let s = doc.scalar(n, "registry.username")?;
                doc.expand_env(s, "registry.username")
            });
            let password = secret(doc, map, WHAT, "password").map(|(v, _, _)| v);
            Some(RegistryAuth::Basic {
                username: username?,
                password: password?,
            })
        }
        (false, true) => {
            secret(doc, map, WHAT, "bearer_token").map(|(v, _, _)| RegistryAuth::Bearer(v))
        }
        (false, false) => Some(RegistryAuth::None),
    };
    Some(RegistryConfig {
        url: url?,
        subject: subject?,
        register: register?,
        auth: auth?,
        ca_file: ca_file?,
        timeout: timeout?,
    })
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

/// A YAML document as the JSON document it denotes (scalars as [`literal`] reads them).
fn yaml_json(node: &Node) -> serde_json::Value {
    match node {
        Node::Scalar(s) => literal(s),
        Node::Sequence(seq) => serde_json::Value::Array(seq.iter().map(yaml_json).collect()),
        Node::Mapping(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), yaml_json(v)))
                .collect(),
        ),
    }
}

/// Where a template problem is reported: at the key it names, or the node its path leads to.
fn template_span(root: &Node, e: &TemplateError) -> Span {
    if let (true, Some((Step::Key(k), parent))) = (e.key, e.path.split_last())
        && let Node::Mapping(m) = node_at(root, parent)
        && let Some((key, _)) = m.iter().find(|(key, _)| key.as_str() == k)
    {
        return *key.span();
    }
    match node_at(root, &e.path) {
        // A record's problem (a missing field) where its fields start, as elsewhere.
        Node::Mapping(m) => table_start(m),
        n => *n.span(),
    }
}

/// The deepest node of `root` along `path` (a template problem is reported there).
fn node_at<'n>(root: &'n Node, path: &[Step]) -> &'n Node {
    let mut node = root;
    for step in path {
        let next = match (step, node) {
            (Step::Key(k), Node::Mapping(m)) => m.get_node(k),
            (Step::Index(i), Node::Sequence(s)) => s.get(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    node
}

/// A YAML scalar as the JSON value it denotes: quoted scalars are strings; plain ones may be
/// null, booleans or numbers.
fn literal(s: &marked_yaml::types::MarkedScalarNode) -> serde_json::Value {
    use serde_json::Value;
    if !s.may_coerce() {
        return Value::String(s.as_str().to_string());
    }
    match s.as_str() {
        "null" | "~" => Value::Null,
        _ => s
            .as_bool()
            .map(Value::Bool)
            .or_else(|| s.as_i64().map(Value::from))
            .or_else(|| {
                s.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
            })
            .unwrap_or_else(|| Value::String(s.as_str().to_string())),
    }
}

fn slos(doc: &mut Doc, node: &Node, timeout: Option<Duration>) -> Vec<SloConfig> {
    let Some(seq) = node.as_sequence() else {
        doc.error(node.span(), "`slos` must be a list of SLOs");
        return Vec::new();
    };
    let mut out: Vec<SloConfig> = Vec::new();
    for item in seq.iter() {
        let Some(map) = doc.table(item, "slo", SLO_FIELDS) else {
            continue;
        };
        if let Some(slo) = slo(doc, map, timeout) {
            if out.iter().any(|o| o.name == slo.name) {
                let at = map
                    .get_node("name")
                    .map(|n| *n.span())
                    .unwrap_or(*map.span());
                doc.error(
                    &at,
                    format!("duplicate slo name `{}` in this probe", slo.name),
                );
                continue;
            }
            out.push(slo);
        }
    }
    out
}

fn slo(doc: &mut Doc, map: &MarkedMappingNode, timeout: Option<Duration>) -> Option<SloConfig> {
    let name = doc
        .required(map, "name", "slo")
        .and_then(|n| doc.name(n, "name"));
    let objective = doc
        .required(map, "objective", "slo")
        .and_then(|n| doc.objective(n, "objective"));
    let window = opt(map, "window", Duration::from_secs(30 * 86_400), |n| {
        doc.duration(n, "window")
    });
    let below_node = map.get_node("latency_below");
    let below = below_node.and_then(|n| doc.duration(n, "latency_below"));
    if let (Some(n), Some(b), Some(t)) = (below_node, below, timeout)
        && b >= t
    {
        doc.error(
            n.span(),
            format!(
                "`latency_below` ({}) must be below the probe's timeout ({}): slower records are already lost",
                humantime::format_duration(b),
                humantime::format_duration(t)
            ),
        );
        return None;
    }
    let sli_node = map.get_node("sli");
    let sli = match sli_node.and_then(|n| doc.string(n, "sli")) {
        Some(kind) => {
            match (kind.as_str(), below) {
                ("latency", Some(below)) => Some(Sli::Latency { below }),
                ("latency", None) => {
                    doc.error(&table_start(map), "a latency slo needs `latency_below`");
                    None
                }
                ("completeness" | "availability", Some(_)) => {
                    doc.error(
                        below_node?.span(),
                        "`latency_below` only applies to `sli: latency`",
                    );
                    None
                }
                ("completeness", None) => Some(Sli::Completeness),
                ("availability", None) => Some(Sli::Availability),
                (other, _) => {
                    doc.error(
                    sli_node?.span(),
                    format!("`sli` must be one of latency, completeness, availability, got `{other}`"),
                );
                    None
                }
            }
        }
        None if sli_node.is_some() => None,
        None => match (below, name.as_deref()) {
            (Some(below), _) => Some(Sli::Latency { below }),
            (None, Some("completeness")) => Some(Sli::Completeness),
            (None, Some("availability")) => Some(Sli::Availability),
            (None, Some(n)) if below_node.is_none() => {
                doc.error(
                    &table_start(map),
                    format!("cannot tell what slo `{n}` measures: add `latency_below` or `sli: latency|completeness|availability`"),
                );
                None
            }
            _ => None,
        },
    };
    let min_bad_events = opt(map, "min_bad_events", None, |n| {
        let v: u64 = doc.integer(n, "min_bad_events", "a number of bad events")?;
        if v == 0 {
            doc.error(
                n.span(),
                "`min_bad_events` must be at least 1 (leave it out for no minimum)",
            );
            return None;
        }
        Some(Some(v))
    });
    Some(SloConfig {
        name: name?,
        sli: sli?,
        objective: objective?,
        window: window?,
        min_bad_events: min_bad_events?,
    })
}
