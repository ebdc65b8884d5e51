//! One probe file: what to produce, how to verify it, which SLOs to hold it to.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::diag::{Diagnostics, Loc};
use super::yaml::{Doc, MAX_CONFIG_BYTES, read_capped};
use super::{
    CreateTopic, DEFAULT_MAX_IN_FLIGHT, DEFAULT_TOPIC, KafkaVerify, MAX_PAYLOAD_BYTES, Partitions,
    ProbeConfig, Verify,
};
use crate::record::is_reserved_header;

pub(super) mod job;
mod record;
mod sinks;
mod slos;
mod verify;

use record::record;
pub use sinks::fill;
use slos::slos;
use verify::{VerifyContext, verify};

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
    "job",
];

const CREATE_TOPIC_FIELDS: &[&str] = &["partitions", "replication_factor"];

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
    /// The `verify.kafka` section, when given.
    pub verify_kafka: Option<Loc>,
    /// `verify.kafka.transactional: true`, when given.
    pub transactional: Option<Loc>,
    /// `job: <key>`: a job of the agent file's `jobs`, resolved against it.
    pub job_key: Option<(String, Loc)>,
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
        verify_kafka: None,
        transactional: None,
        job_key: None,
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
            transactional: false,
            ordered: true,
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
    // `job: <key>` names one of the agent file's `jobs` (resolved with the other files);
    // a table defines it here.
    let job = match map.get_node("job") {
        Some(n @ Node::Scalar(_)) => {
            parsed.job_key = located(doc, Some(n), "job");
            parsed.job_key.as_ref().map(|_| None)
        }
        Some(n) => job::job(doc, n, "job", None).map(Some),
        None => Some(None),
    };

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
        job: job?,
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
