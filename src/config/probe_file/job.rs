//! A probe's `job` (and the agent file's `jobs`): the Flink job its records go through, polled
//! through Flink's REST API.

use std::time::Duration;

use marked_yaml::Node;

use super::super::yaml::{Doc, table_start};
use super::super::{JobConfig, JobRef};
use super::opt;
use super::verify::{base_url, ca_file, http_auth};

const JOB_FIELDS: &[&str] = &[
    "flink",
    "name",
    "id",
    "poll",
    "timeout",
    "ca_file",
    "username",
    "password",
    "password_file",
    "bearer_token",
    "bearer_token_file",
];
/// Defaults: a poll every 5 s (five requests, a few KB), a 2 s bound on each request.
pub const DEFAULT_JOB_POLL: Duration = Duration::from_secs(5);
const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(2);
/// The fastest poll allowed: Flink's REST API serves its web UI and every client too.
pub const MIN_JOB_POLL: Duration = Duration::from_millis(200);

/// A job's table at `what` (`job`, `jobs.<key>`); `key`: the agent file's key, which is its
/// name (the `flink_job` label).
pub(in crate::config) fn job(
    doc: &mut Doc,
    node: &Node,
    what: &str,
    key: Option<&str>,
) -> Option<JobConfig> {
    let map = doc.table(node, what, JOB_FIELDS)?;
    let url = doc.required(map, "flink", what).and_then(|n| {
        let field = format!("{what}.flink");
        base_url(
            doc,
            n,
            &field,
            "Flink's REST address, an http:// or https:// URL like http://flink-jobmanager:8081",
        )
    });
    let name = map
        .get_node("name")
        .and_then(|n| doc.string(n, &format!("{what}.name")));
    let id = map.get_node("id").and_then(|n| {
        let field = format!("{what}.id");
        let s = doc.string(n, &field)?;
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(s.to_ascii_lowercase())
        } else {
            doc.error(
                n.span(),
                format!("`{field}` must be a Flink job id (32 hex digits), got `{s}`"),
            );
            None
        }
    });
    let find = match (map.get_node("name"), map.get_node("id")) {
        (Some(_), Some(n)) => {
            doc.error(
                n.span(),
                format!("`{what}` has both `name` and `id`: give the job's name (followed across resubmissions) or its id"),
            );
            None
        }
        (Some(_), None) => name.map(JobRef::Name),
        (None, Some(_)) => id.map(JobRef::Id),
        (None, None) => match key {
            Some(k) => Some(JobRef::Name(k.to_string())),
            None => {
                doc.error(
                    &table_start(map),
                    format!("`{what}` must name the job: `name` (Flink's pipeline.name, as its web UI shows it) or `id`"),
                );
                None
            }
        },
    };
    let poll = opt(map, "poll", DEFAULT_JOB_POLL, |n| {
        let field = format!("{what}.poll");
        let d = doc.duration(n, &field)?;
        if d < MIN_JOB_POLL {
            doc.error(
                n.span(),
                format!(
                    "`{field}` must be at least {}: Flink's REST API serves its web UI and every other client too",
                    humantime::format_duration(MIN_JOB_POLL)
                ),
            );
            return None;
        }
        Some(d)
    });
    let timeout = opt(map, "timeout", DEFAULT_JOB_TIMEOUT, |n| {
        doc.duration(n, &format!("{what}.timeout"))
    });
    let ca_file = ca_file(doc, map, what);
    let auth = http_auth(doc, map, what);
    let find = find?;
    let label = match (key, &find) {
        (Some(k), _) => k.to_string(),
        (None, JobRef::Name(n)) => n.clone(),
        (None, JobRef::Id(id)) => id.clone(),
    };
    Some(JobConfig {
        name: label,
        url: url?,
        find,
        auth: auth?,
        ca_file: ca_file?,
        timeout: timeout?,
        poll: poll?,
    })
}
