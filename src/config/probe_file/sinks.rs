//! A probe file's sink verifiers: `verify.postgres` and `verify.http`, and the settings every
//! sink poller shares (cadence, bound, content assertions, timestamps).

use std::collections::BTreeMap;
use std::time::Duration;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::super::diag::Loc;
use super::super::yaml::{Doc, hide_expanded, table_start};
use super::super::{
    ColumnPlaces, DEFAULT_MAX_RESPONSE_BYTES, HttpMethod, HttpVerify, PostgresVerify, SinkPoll,
    SinkStamps,
};
use super::verify::{Keys, Original, ca_file, expectations, secret};
use super::{opt, pointer};

/// Fields of each sink verifier.
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

pub(super) fn postgres(
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

pub(super) fn http(
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
