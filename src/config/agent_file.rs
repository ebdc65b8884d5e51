//! The agent file: site, instance, listen address, windows, clusters.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::diag::Diagnostics;
use super::yaml::{Doc, MAX_CONFIG_BYTES, hide_expanded, read_capped};
use super::{AgentConfig, ClusterConfig, JobConfig, OtlpProtocol, TracingConfig};

const AGENT_FIELDS: &[&str] = &[
    "site",
    "instance",
    "listen",
    "window",
    "metadata_refresh",
    "clusters",
    "tracing",
    "trace_url",
    "jobs",
];
const TRACING_FIELDS: &[&str] = &[
    "otlp_endpoint",
    "protocol",
    "headers",
    "timeout",
    "sampling_ratio",
];
const CLUSTER_FIELDS: &[&str] = &["bootstrap_servers", "properties", "producer", "consumer"];

pub(super) fn load(path: &Path, diags: &mut Diagnostics) -> AgentConfig {
    let mut cfg = AgentConfig {
        source: Some(path.to_path_buf()),
        ..AgentConfig::default()
    };
    let text = match read_capped(path, MAX_CONFIG_BYTES, "agent file") {
        Ok(t) => t,
        Err(e) => {
            diags.push_path(path, e);
            return cfg;
        }
    };
    let mut doc = Doc {
        file: Arc::from(path),
        diags,
    };
    let Some(root) = doc.parse(&text) else {
        return cfg;
    };
    let Some(map) = doc.table(&root, "the agent file", AGENT_FIELDS) else {
        return cfg;
    };

    if let Some(n) = map.get_node("site") {
        cfg.site = doc.name(n, "site").unwrap_or(cfg.site);
    }
    if let Some(n) = map.get_node("instance") {
        cfg.instance = doc.name(n, "instance").unwrap_or(cfg.instance);
    }
    if let Some(n) = map.get_node("listen")
        && let Some(s) = doc.scalar(n, "listen")
    {
        match super::parse_listen(s.as_str()) {
            Ok(addr) => {
                cfg.listen = addr;
                cfg.listen_chosen = true;
            }
            Err(why) => doc.error(n.span(), format!("`listen`: {why}")),
        }
    }
    if let Some(n) = map.get_node("window") {
        cfg.window = doc.duration(n, "window").unwrap_or(cfg.window);
    }
    if let Some(n) = map.get_node("metadata_refresh") {
        cfg.metadata_refresh = doc
            .duration(n, "metadata_refresh")
            .unwrap_or(cfg.metadata_refresh);
    }
    if let Some(n) = map.get_node("clusters") {
        cfg.clusters = clusters(&mut doc, n);
    }
    if let Some(n) = map.get_node("tracing") {
        cfg.tracing = tracing(&mut doc, n);
    }
    if let Some(n) = map.get_node("jobs") {
        cfg.jobs = jobs(&mut doc, n);
    }
    if let Some(n) = map.get_node("trace_url")
        && let Some(s) = doc.scalar(n, "trace_url")
    {
        let url = s.as_str().trim();
        let web = url.starts_with("http://") || url.starts_with("https://");
        if web && url.contains("{trace_id}") {
            cfg.trace_url = Some(url.to_string());
        } else {
            doc.error(
                n.span(),
                format!(
                    "`trace_url` must be an http:// or https:// URL with `{{trace_id}}` where the trace id goes, like https://grafana.example.com/explore?traceId={{trace_id}}, got `{url}`"
                ),
            );
        }
    }
    cfg
}

/// `jobs`: key -> a job's table, for the probes that name it (`job: <key>`).
fn jobs(doc: &mut Doc, node: &Node) -> BTreeMap<String, JobConfig> {
    let mut out = BTreeMap::new();
    let Some(map) = node.as_mapping() else {
        doc.error(
            node.span(),
            "`jobs` must be a mapping of job names to jobs (each with `flink`, its REST address)",
        );
        return out;
    };
    for (k, v) in map.iter() {
        let key = k.as_str();
        if let Err(why) = super::check_name(key) {
            doc.error(k.span(), format!("job name {why}, got `{key}`"));
            continue;
        }
        if let Some(job) = super::probe_file::job::job(doc, v, &format!("jobs.{key}"), Some(key)) {
            out.insert(key.to_string(), job);
        }
    }
    out
}

fn tracing(doc: &mut Doc, node: &Node) -> Option<TracingConfig> {
    let t = doc.table(node, "`tracing`", TRACING_FIELDS)?;
    let mut cfg = TracingConfig::default();
    if let Some(n) = t.get_node("otlp_endpoint")
        && let Some(s) = doc.scalar(n, "tracing.otlp_endpoint")
    {
        cfg.endpoint = doc.expand_env(s, "tracing.otlp_endpoint");
        if let Some(e) = &cfg.endpoint
            && !is_http_url(e)
        {
            // As written: the expanded endpoint may carry credentials.
            doc.error(
                n.span(),
                format!(
                    "`tracing.otlp_endpoint` must be an http:// or https:// URL like http://otel-collector:4317, got `{}`",
                    s.as_str()
                ),
            );
        }
    }
    if let Some(n) = t.get_node("protocol")
        && let Some(s) = doc.scalar(n, "tracing.protocol")
    {
        cfg.protocol = OtlpProtocol::parse(s.as_str());
        if cfg.protocol.is_none() {
            doc.error(
                n.span(),
                format!(
                    "`tracing.protocol` must be `grpc` or `http/protobuf`, got `{}`",
                    s.as_str()
                ),
            );
        }
    }
    if let Some(n) = t.get_node("headers") {
        cfg.headers = doc.string_map(n, "tracing.headers", true);
    }
    if let Some(n) = t.get_node("timeout") {
        cfg.timeout = doc.duration(n, "tracing.timeout");
    }
    if let Some(n) = t.get_node("sampling_ratio")
        && let Some(s) = doc.scalar(n, "tracing.sampling_ratio")
    {
        match s.as_str().trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => cfg.sampling_ratio = r,
            _ => doc.error(
                n.span(),
                format!(
                    "`tracing.sampling_ratio` must be a number from 0 to 1, got `{}`",
                    s.as_str()
                ),
            ),
        }
    }
    Some(cfg)
}

fn is_http_url(s: &str) -> bool {
    s.parse::<axum::http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some_and(|a| !a.host().is_empty())
    })
}

/// Asks librdkafka whether each property name and value is valid, as it would when creating a
/// client, but without creating one (no threads, no connection). Problems are reported at the
/// property's key; values are never echoed by slo-probe (they may be secrets).
fn check_librdkafka(
    doc: &mut Doc,
    table: &MarkedMappingNode,
    field: &str,
    values: &BTreeMap<String, String>,
) {
    let Some(map) = table.get_node(field).and_then(|n| n.as_mapping()) else {
        return;
    };
    for (key, raw) in map.iter() {
        let name = key.as_str().strip_suffix("_file").unwrap_or(key.as_str());
        let Some(value) = values.get(name) else {
            continue;
        };
        let mut probe = rdkafka::ClientConfig::new();
        probe.set(name, value);
        if let Err(rdkafka::error::KafkaError::ClientConfig(_, description, _, _)) =
            probe.create_native_config()
        {
            // librdkafka quotes the value: shown only as far as it is written in the file.
            let written = if key.as_str().ends_with("_file") {
                ""
            } else {
                raw.as_scalar().map_or("", |s| s.as_str())
            };
            let description = if written == value {
                description
            } else {
                hide_expanded(&description, &[written, name])
            };
            doc.error(key.span(), format!("`{field}.{name}`: {description}"));
        } else if let Some(why) = unreadable_file(name, value) {
            doc.error(
                key.span(),
                format!(
                    "`{field}.{name}`: {why}; librdkafka reads it when the client starts, so `run` and `smoke` would fail there"
                ),
            );
        }
    }
}

/// librdkafka properties that name a file, read when a client is created (`ssl.ca.location`
/// may name a directory of certificates, or be `probe`: the system's usual places).
const FILE_PROPERTIES: &[&str] = &[
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
    "ssl.engine.location",
    "sasl.kerberos.keytab",
];

/// Why the file a property names cannot be read, if it cannot. A path is not a secret: it is
/// shown.
fn unreadable_file(name: &str, value: &str) -> Option<String> {
    if !FILE_PROPERTIES.contains(&name) || (name == "ssl.ca.location" && value == "probe") {
        return None;
    }
    let path = std::path::Path::new(value);
    match std::fs::metadata(path) {
        Err(e) => Some(format!("cannot read `{value}`: {e}")),
        Ok(m) if m.is_dir() && name == "ssl.ca.location" => std::fs::read_dir(path)
            .err()
            .map(|e| format!("cannot read directory `{value}`: {e}")),
        Ok(m) if m.is_dir() => Some(format!("`{value}` is a directory, not a file")),
        Ok(_) => std::fs::File::open(path)
            .err()
            .map(|e| format!("cannot read `{value}`: {e}")),
    }
}

fn clusters(doc: &mut Doc, node: &Node) -> BTreeMap<String, ClusterConfig> {
    let mut out = BTreeMap::new();
    let Some(map) = node.as_mapping() else {
        doc.error(
            node.span(),
            "`clusters` must be a mapping of cluster names to clusters",
        );
        return out;
    };
    for (key, value) in map.iter() {
        let name = key.as_str();
        if let Err(why) = super::check_name(name) {
            doc.error(key.span(), format!("cluster name {why}, got `{name}`"));
            continue;
        }
        let what = format!("cluster `{name}`");
        let Some(c) = doc.table(value, &what, CLUSTER_FIELDS) else {
            continue;
        };
        let bootstrap = doc
            .required(c, "bootstrap_servers", &what)
            .and_then(|n| doc.scalar(n, "bootstrap_servers"))
            .and_then(|s| {
                let v = doc.expand_env(s, "bootstrap_servers")?;
                if v.trim().is_empty() {
                    doc.error(s.span(), "`bootstrap_servers` must not be empty");
                    return None;
                }
                Some(v)
            });
        let mut map_field = |field: &str| {
            c.get_node(field)
                .map(|n| doc.string_map(n, field, true))
                .unwrap_or_default()
        };
        let properties = map_field("properties");
        let producer = map_field("producer");
        let consumer = map_field("consumer");
        for (field, values) in [
            ("properties", &properties),
            ("producer", &producer),
            ("consumer", &consumer),
        ] {
            check_librdkafka(doc, c, field, values);
        }
        if let Some(bootstrap_servers) = bootstrap {
            out.insert(
                name.to_string(),
                ClusterConfig {
                    name: name.to_string(),
                    bootstrap_servers,
                    properties,
                    producer,
                    consumer,
                },
            );
        }
    }
    out
}
