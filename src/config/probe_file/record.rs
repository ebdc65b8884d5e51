//! A probe file's `record` section: the pipeline's own format (a JSON template, or Avro with
//! its schema and registry).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use marked_yaml::{Node, Span};

use super::super::RegistryConfig;
use super::super::yaml::{Doc, MAX_CONFIG_BYTES, read_capped, table_start};
use super::verify::{base_url, ca_file, http_auth};
use super::{literal, opt};
use crate::record::avro::{AvroError, AvroFormat, Framing};
use crate::record::shape::{Shape, Step, Template, TemplateError, Text, ValueFormat};

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

/// The `record` section: the shape, and the registry its schema id comes from.
pub(super) fn record(
    doc: &mut Doc,
    node: &Node,
    topic: &str,
) -> Option<(Arc<Shape>, Option<RegistryConfig>)> {
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
pub(super) fn registry(doc: &mut Doc, node: &Node, topic: &str) -> Option<RegistryConfig> {
    const WHAT: &str = "registry";
    let map = doc.table(node, WHAT, REGISTRY_FIELDS)?;
    let url = doc
        .required(map, "url", WHAT)
        .and_then(|n| base_url(doc, n, "registry.url", "an http:// or https:// URL"));
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
    let auth = http_auth(doc, map, WHAT);
    Some(RegistryConfig {
        url: url?,
        subject: subject?,
        register: register?,
        auth: auth?,
        ca_file: ca_file?,
        timeout: timeout?,
    })
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
