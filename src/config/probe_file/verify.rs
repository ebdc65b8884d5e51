//! A probe file's `verify` section: exactly one verifier, the paired consumer (`kafka`, here)
//! or a sink poller (`postgres`, `http`: [`super::sinks`]), and what they share: content
//! assertions (`expect`) and the secrets and CA files they read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use super::super::diag::Loc;
use super::super::yaml::{Doc, MAX_SECRET_BYTES, read_capped, table_start};
use super::super::{Expectation, HttpAuth, IdFrom, KafkaVerify, RegistryConfig, Verify};
use super::record::registry;
use super::sinks::{http, postgres};
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
/// The base URL of an HTTP API at `field` (`${ENV}` expanded), without a trailing slash; else
/// a located error saying it must be `what` (`an http:// or https:// URL`, and what it is for).
pub(super) fn base_url(doc: &mut Doc, node: &Node, field: &str, what: &str) -> Option<String> {
    let s = doc.scalar(node, field)?;
    let url = doc.expand_env(s, field)?;
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Some(url.trim_end_matches('/').to_string())
        }
        _ => {
            // As written: the expanded URL may carry a credential.
            doc.error(
                node.span(),
                format!("`{field}` must be {what}, got `{}`", s.as_str()),
            );
            None
        }
    }
}

/// Credentials of an HTTP client (a Schema Registry, Flink's REST API): basic (`username`
/// with `password` or `password_file`) or bearer (`bearer_token` or `bearer_token_file`), or
/// none.
pub(super) fn http_auth(doc: &mut Doc, map: &MarkedMappingNode, what: &str) -> Option<HttpAuth> {
    let has = |f: &str| map.get_node(f).is_some();
    let basic = has("username") || has("password") || has("password_file");
    let bearer = has("bearer_token") || has("bearer_token_file");
    match (basic, bearer) {
        (true, true) => {
            doc.error(
                &table_start(map),
                format!("`{what}` has both basic (`username`, `password`) and bearer (`bearer_token`) credentials: give one"),
            );
            None
        }
        (true, false) => {
            let username = doc.required(map, "username", what).and_then(|n| {
                let s = doc.scalar(n, &format!("{what}.username"))?;
                doc.expand_env(s, &format!("{what}.username"))
            });
            let password = secret(doc, map, what, "password").map(|(v, _, _)| v);
            Some(HttpAuth::Basic {
                username: username?,
                password: password?,
            })
        }
        (false, true) => {
            secret(doc, map, what, "bearer_token").map(|(v, _, _)| HttpAuth::Bearer(v))
        }
        (false, false) => Some(HttpAuth::None),
    }
}

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
pub(super) enum Keys {
    /// JSON pointers into a record or document.
    Pointers,
    /// Result columns of a query (kept as pointers into the row as a JSON object).
    Columns,
}

pub(super) fn expectations(
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
pub(super) enum Original {
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
