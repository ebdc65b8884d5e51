//! A probe file's `slos` section.

use std::time::Duration;

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::super::yaml::{Doc, table_start};
use super::super::{Sli, SloConfig};
use super::opt;

const SLO_FIELDS: &[&str] = &[
    "name",
    "sli",
    "latency_below",
    "objective",
    "window",
    "min_bad_events",
];

pub(super) fn slos(doc: &mut Doc, node: &Node, timeout: Option<Duration>) -> Vec<SloConfig> {
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
