//! `rules --format openslo` and `rules --format sloth`: the probes' SLOs for teams that manage
//! SLOs in an OpenSLO tool or with Sloth, instead of with the rules of the other formats.
//!
//! Both count the same events as those rules: `slo_probe_slo_events_total`, good or bad per
//! probe and SLO, summed over every replica and site.
//!
//! - OpenSLO v1 (<https://github.com/OpenSLO/OpenSLO>, `apiVersion: openslo/v1`): one `kind: SLO`
//!   document per probe SLO, with an inline ratio SLI. Its good and total queries sum the raw
//!   counters (`counter: true`: the tool takes their increase itself, as in the specification's
//!   examples). Rolling window, `Occurrences` budgeting, the objective as `target`. A replica
//!   that restarts resets its counters, so the sum drops: a tool that takes increases of the sum
//!   reads that as a counter reset, whereas the `rules` formats sum per-series rates.
//! - Sloth (<https://sloth.dev>, `version: prometheus/v1`, the input of `sloth generate`): one
//!   document per probe, one entry of `slos` per SLO, with error and total event queries over
//!   Sloth's `{{.window}}`, page and ticket alerts labelled `severity: page` and `ticket`.
//!
//! Names. OpenSLO names (`metadata.name`, `spec.service`, the SLI's name) must be RFC 1123
//! labels: at most 63 characters of `a-z`, `0-9` and `-`, starting and ending with a letter or a
//! digit. See [`dns_label`]. Sloth takes probe and SLO names as they are.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{RulesOptions, num};
use crate::config::{ProbeConfig, Sli, SloConfig};
use crate::export::metrics::names;

/// Longest RFC 1123 label.
const DNS_LABEL_MAX: usize = 63;

/// The SLO period Sloth uses unless `sloth generate --default-slo-period` says otherwise.
const SLOTH_DEFAULT_PERIOD: Duration = Duration::from_secs(30 * 86_400);
/// The other period Sloth ships alert windows for.
const SLOTH_28_DAYS: Duration = Duration::from_secs(28 * 86_400);

/// The name every SLO's burn alerts have in the `rules` formats, kept for Sloth's alerts so that
/// routes and silences written for one work for the other.
const ALERT_NAME: &str = "SloProbeBudgetBurn";

// ---------------------------------------------------------------------------------- OpenSLO

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OpensloSlo {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: SloSpec,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SloSpec {
    description: String,
    service: String,
    indicator: Indicator,
    time_window: Vec<TimeWindow>,
    budgeting_method: &'static str,
    objectives: Vec<Objective>,
}

#[derive(Serialize)]
struct Indicator {
    metadata: Metadata,
    spec: SliSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SliSpec {
    description: String,
    ratio_metric: RatioMetric,
}

#[derive(Serialize)]
struct RatioMetric {
    counter: bool,
    good: MetricSpec,
    total: MetricSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MetricSpec {
    metric_source: MetricSource,
}

#[derive(Serialize)]
struct MetricSource {
    #[serde(rename = "type")]
    kind: &'static str,
    spec: QuerySpec,
}

#[derive(Serialize)]
struct QuerySpec {
    query: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TimeWindow {
    duration: String,
    is_rolling: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Objective {
    display_name: String,
    target: f64,
}

/// Every probe SLO as an OpenSLO v1 `SLO` document, each after a `---`.
pub(super) fn openslo(probes: &[ProbeConfig]) -> Result<String, yaml_serde::Error> {
    let slos: Vec<(&ProbeConfig, &SloConfig)> = probes
        .iter()
        .flat_map(|p| p.slos.iter().map(move |s| (p, s)))
        .collect();
    // `<probe>-<slo>` is ambiguous when names hold `-` (`a-b` + `c`, `a` + `b-c`): names that
    // still collide are all hashed.
    let plain: Vec<String> = slos.iter().map(|(p, s)| slo_name(p, s, false)).collect();
    let mut out = String::from(
        "# OpenSLO v1: one SLO per probe SLO. The queries sum raw counters (counter: true).\n",
    );
    if slos.is_empty() {
        out.push_str("# No probe has an SLO.\n");
    }
    for (i, (p, slo)) in slos.iter().enumerate() {
        let collides = plain.iter().filter(|n| **n == plain[i]).count() > 1;
        let doc = openslo_doc(p, slo, collides);
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(&doc)?);
    }
    Ok(out)
}

fn slo_name(p: &ProbeConfig, slo: &SloConfig, force_hash: bool) -> String {
    dns_label(
        &format!("{}-{}", p.name, slo.name),
        &format!("{}\n{}", p.name, slo.name),
        force_hash,
    )
}

fn openslo_doc(p: &ProbeConfig, slo: &SloConfig, collides: bool) -> OpensloSlo {
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        // Label values are held to the rule of label keys (and of Kubernetes label values);
        // values that break it are kept as annotations, whose values are free.
        if label_safe(v) {
            labels.insert(k.to_string(), v.to_string());
        } else {
            annotations.insert(k.to_string(), v.to_string());
        }
    };
    put("probe", &p.name);
    put("slo", &slo.name);
    for (k, v) in &p.tags {
        // A tag whose name is no label key (`_x`, longer than 63) cannot be written.
        if label_safe(k) && k != "probe" && k != "slo" {
            put(k, v);
        }
    }
    let (good, bad) = events(p, slo.sli);
    let pct = num(slo.objective * 100.0);
    let window = shorthand(slo.window);
    let selector = format!("probe=\"{}\",slo=\"{}\"", p.name, slo.name);
    let source = |query: String| MetricSpec {
        metric_source: MetricSource {
            kind: "Prometheus",
            spec: QuerySpec { query },
        },
    };
    OpensloSlo {
        api_version: "openslo/v1",
        kind: "SLO",
        metadata: Metadata {
            name: slo_name(p, slo, collides),
            labels,
            annotations,
        },
        spec: SloSpec {
            description: format!(
                "slo-probe probe {} (topic {}, cluster {}), SLO {}: {pct}% of its records {good}, over a rolling {window}, counted over every site.",
                p.name, p.topic, p.cluster, slo.name
            ),
            service: dns_label(&p.name, &p.name, false),
            indicator: Indicator {
                metadata: Metadata {
                    name: dns_label(
                        &format!("{}-{}-sli", p.name, slo.name),
                        &format!("{}\n{}\nsli", p.name, slo.name),
                        collides,
                    ),
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                },
                spec: SliSpec {
                    description: format!(
                        "Good: records {good}. Bad: {bad}. From {}, summed over every replica and site.",
                        names::SLO_EVENTS
                    ),
                    ratio_metric: RatioMetric {
                        counter: true,
                        good: source(format!(
                            "sum({}{{{selector},result=\"good\"}})",
                            names::SLO_EVENTS
                        )),
                        total: source(format!("sum({}{{{selector}}})", names::SLO_EVENTS)),
                    },
                },
            },
            time_window: vec![TimeWindow {
                duration: window,
                is_rolling: true,
            }],
            budgeting_method: "Occurrences",
            objectives: vec![Objective {
                display_name: format!("{pct}% of records {good}"),
                target: round9(slo.objective),
            }],
        },
    }
}

/// An RFC 1123 label for `text` (OpenSLO's names): lowercased, each run of other characters
/// than `a-z` and `0-9` made one `-`, no `-` at either end. When that changes `text`, is longer
/// than 63 characters or `force_hash` is set, it is cut to 54 characters and followed by `-` and
/// the first 8 hex digits of the SHA-256 of `key`, so that two names never map to one label
/// (`Orders_EU-completeness` is `orders-eu-completeness-` and 8 hex digits). Names already
/// valid (`orders-completeness`) are kept as they are.
fn dns_label(text: &str, key: &str, force_hash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if !force_hash && out == text && out.len() <= DNS_LABEL_MAX {
        return out;
    }
    let hash = hex::encode(&Sha256::digest(key.as_bytes())[..4]);
    out.truncate(DNS_LABEL_MAX - 1 - hash.len());
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        hash
    } else {
        format!("{out}-{hash}")
    }
}

/// A label key as OpenSLO takes it, and a label value as Kubernetes takes it: 1 to 63
/// characters of letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
fn label_safe(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= DNS_LABEL_MAX
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A window in OpenSLO's duration shorthand (which Prometheus and Sloth read too): whole days
/// (`30d`, `7d`), else whole hours, else minutes, rounded up (the shorthand has no seconds).
fn shorthand(d: Duration) -> String {
    let s = d.as_secs().max(1);
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else {
        format!("{}m", s.div_ceil(60))
    }
}

/// Without float noise (0.999, not 0.9990000000000001).
fn round9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// What counts as good and as bad, in words (see `Sli`).
fn events(p: &ProbeConfig, sli: Sli) -> (String, &'static str) {
    match sli {
        Sli::Latency { below } => (
            format!(
                "verified intact within {}",
                humantime::format_duration(below)
            ),
            "verified later, lost or corrupt (records that could not be sent do not count)",
        ),
        Sli::Completeness => (
            format!(
                "verified intact within the timeout ({})",
                humantime::format_duration(p.timeout)
            ),
            "lost or corrupt (records that could not be sent do not count)",
        ),
        Sli::Availability => (
            "sent and verified intact".into(),
            "every other final outcome, send failures included",
        ),
    }
}

// ------------------------------------------------------------------------------------ Sloth

#[derive(Serialize)]
struct SlothService<'a> {
    version: &'static str,
    service: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct SlothSlo {
    name: String,
    objective: f64,
    description: String,
    sli: SlothSli,
    alerting: SlothAlerting,
}

#[derive(Serialize)]
struct SlothSli {
    events: SlothEvents,
}

#[derive(Serialize)]
struct SlothEvents {
    error_query: String,
    total_query: String,
}

#[derive(Serialize)]
struct SlothAlerting {
    name: &'static str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    page_alert: SlothAlert,
    ticket_alert: SlothAlert,
}

#[derive(Serialize)]
struct SlothAlert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Every probe with SLOs as a Sloth `prometheus/v1` spec, each after a `---`.
pub(super) fn sloth(
    probes: &[ProbeConfig],
    opts: &RulesOptions,
) -> Result<String, yaml_serde::Error> {
    let mut out = String::from(
        "# Sloth prometheus/v1 specs, one per probe: sloth generate -i <this file>.\n",
    );
    for p in probes {
        if p.slos.is_empty() {
            let _ = writeln!(out, "# Probe {} has no SLO.", p.name);
            continue;
        }
        out.push_str("---\n");
        if !sloth_name_ok(&p.name) {
            let _ = writeln!(
                out,
                "# Sloth refuses the service name `{}`: its names start and end with a letter or digit.",
                p.name
            );
        }
        // Sloth reads tags as Prometheus labels of every rule it generates; named as the
        // `rules` formats name them on alerts (`tag_<name>`) so that one route fits both.
        let labels = p
            .tags
            .iter()
            .filter(|(k, v)| !k.contains(['.', '-']) && !v.is_empty())
            .map(|(k, v)| (format!("tag_{k}"), v.clone()))
            .collect();
        out.push_str(&yaml_serde::to_string(&SlothService {
            version: "prometheus/v1",
            service: &p.name,
            labels,
        })?);
        out.push_str("slos:\n");
        for slo in &p.slos {
            sloth_comments(&mut out, p, slo);
            out.push_str(&yaml_serde::to_string(&[sloth_slo(p, slo, opts)])?);
        }
    }
    Ok(out)
}

/// Comments ahead of an SLO entry: what Sloth needs that the entry cannot say.
fn sloth_comments(out: &mut String, p: &ProbeConfig, slo: &SloConfig) {
    if !sloth_name_ok(&slo.name) {
        let _ = writeln!(
            out,
            "# Sloth refuses the SLO name `{}`: its names start and end with a letter or digit.",
            slo.name
        );
    }
    if let Some(n) = slo.min_bad_events {
        let _ = writeln!(
            out,
            "# {}/{}: min_bad_events {n} has no Sloth equivalent: Sloth's page alerts fire without it.",
            p.name, slo.name
        );
    }
    // A Sloth spec has no period: `sloth generate --default-slo-period` (30d unless given) sets
    // it for every SLO of the run, and Sloth ships alert windows for 30d and 28d only.
    let window = shorthand(slo.window);
    if slo.window == SLOTH_28_DAYS {
        let _ = writeln!(
            out,
            "# {}/{}: window 28d; Sloth's default period is 30d: generate with --default-slo-period=28d.",
            p.name, slo.name
        );
    } else if slo.window != SLOTH_DEFAULT_PERIOD {
        let _ = writeln!(
            out,
            "# {}/{}: window {window}; Sloth's default period is 30d and it ships alert windows for\n\
             # 30d and 28d only: generate with --default-slo-period={window} and\n\
             # --slo-period-windows-path naming a directory with an AlertWindows spec for {window}.",
            p.name, slo.name
        );
    }
}

fn sloth_slo(p: &ProbeConfig, slo: &SloConfig, opts: &RulesOptions) -> SlothSlo {
    let (good, _) = events(p, slo.sli);
    let pct = num(slo.objective * 100.0);
    let window = shorthand(slo.window);
    let selector = format!("probe=\"{}\",slo=\"{}\"", p.name, slo.name);
    let rate = |selector: &str| {
        format!(
            "sum(rate({}{{{selector}}}[{{{{.window}}}}]))",
            names::SLO_EVENTS
        )
    };
    let mut annotations = BTreeMap::from([
        (
            "description".to_string(),
            format!(
                "Probe {} (topic {}) has objective {pct}% of records {good} over {window}, counted over every site; errors are spending its budget too fast.",
                p.name, p.topic
            ),
        ),
        ("runbook".to_string(), super::runbook(p)),
    ]);
    if let Some(url) = &opts.runbook_url {
        annotations.insert("runbook_url".into(), url.clone());
    }
    let alert = |severity: &str| SlothAlert {
        labels: BTreeMap::from([("severity".to_string(), severity.to_string())]),
        annotations: BTreeMap::from([(
            "summary".to_string(),
            format!(
                "{}: SLO {} is burning its error budget too fast ({severity})",
                p.name, slo.name
            ),
        )]),
    };
    SlothSlo {
        name: slo.name.clone(),
        objective: round9(slo.objective * 100.0),
        description: format!("{pct}% of the records of probe {} {good}.", p.name),
        sli: SlothSli {
            events: SlothEvents {
                error_query: rate(&format!("{selector},result=\"bad\"")),
                total_query: rate(&selector),
            },
        },
        alerting: SlothAlerting {
            name: ALERT_NAME,
            labels: BTreeMap::from([
                ("probe".to_string(), p.name.clone()),
                ("slo".to_string(), slo.name.clone()),
            ]),
            annotations,
            page_alert: alert("page"),
            ticket_alert: alert("ticket"),
        },
    }
}

/// Sloth's rule for service, SLO and ID names (`conventions.NameRegexp`): letters, digits, `-`,
/// `_` and `.`, starting and ending with a letter or digit, at least two characters.
fn sloth_name_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_rfc_1123_labels() {
        // valid names stay as they are
        assert_eq!(
            dns_label("orders-completeness", "k", false),
            "orders-completeness"
        );
        // anything changed gets a hash of the original, so that two names never meet
        let a = dns_label("Orders_EU-completeness", "Orders_EU\ncompleteness", false);
        let b = dns_label("orders.eu-completeness", "orders.eu\ncompleteness", false);
        assert!(a.starts_with("orders-eu-completeness-"), "{a}");
        assert!(b.starts_with("orders-eu-completeness-"), "{b}");
        assert_ne!(a, b);
        for name in [
            a,
            b,
            dns_label(&"x".repeat(200), "long", false),
            dns_label("__", "underscores", false),
            dns_label("-a-", "dashes", true),
        ] {
            assert!(name.len() <= DNS_LABEL_MAX, "{name}");
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{name}"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
        assert_eq!(dns_label(&"x".repeat(200), "long", false).len(), 63);
    }

    #[test]
    fn windows_in_shorthand() {
        for (secs, text) in [
            (30 * 86_400, "30d"),
            (7 * 86_400, "7d"),
            (36 * 3_600, "36h"),
            (90 * 60, "90m"),
            (61, "2m"),
        ] {
            assert_eq!(shorthand(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn label_and_sloth_name_rules() {
        assert!(label_safe("payments") && label_safe("a.b_c-d") && label_safe("x"));
        assert!(!label_safe("_x") && !label_safe("Payments Core") && !label_safe(""));
        assert!(!label_safe(&"a".repeat(64)));
        assert!(sloth_name_ok("orders") && !sloth_name_ok("x") && !sloth_name_ok("_orders"));
    }
}
