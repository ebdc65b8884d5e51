//! `slo-probe rules --format openslo` and `--format sloth`, read the way their consumers read
//! them: every OpenSLO document parses into the OpenSLO Go SDK's v1 types and passes its
//! validation rules and the OpenSLO v1 JSON Schema (vendored in `tests/schemas/openslo-v1`,
//! checked with Python's `jsonschema`); every Sloth spec parses into Sloth's `prometheus/v1` Go
//! types and passes the rules of `sloth validate`; every query of both parses in `promtool`.
//! Tampered documents fail the same checks, so the checks can fail.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::infra::{promtool_check_rules, tool};
use common::{Tree, run};
use serde::Deserialize;
use serde_json::{Value, json};

/// Latency, completeness and availability SLOs (30d, the default 30d, 7d) and tags (one whose
/// value is no label value); a probe whose name is no RFC 1123 label, with a 28d window; and one
/// without SLOs.
fn tree() -> Tree {
    let t = Tree::new();
    t.write(
        "probes/orders.yaml",
        "\
name: orders
topic: orders-canary
interval: 10s
timeout: 30s
tags: { team: payments, env: prod, owner: Payments Core }
slos:
  - { name: freshness, latency_below: 2s, objective: 99.9%, window: 30d }
  - { name: completeness, objective: 99.95% }
  - { name: availability, objective: 99.5%, window: 7d }
",
    );
    t.write(
        "probes/orders_eu.yaml",
        "name: Orders_EU\nslos:\n  - { name: completeness, objective: 99%, window: 28d }\n",
    );
    t.write("probes/idle.yaml", "name: idle\n");
    t
}

/// `rules --format <format>`: the text and its YAML documents.
fn export(t: &Tree, format: &str) -> (String, Vec<Value>) {
    let out = run(t.path(), &["rules", "--format", format], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let docs = yaml_serde::Deserializer::from_str(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{e}\n{}", out.stdout)))
        .collect();
    (out.stdout, docs)
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The queries parse in promtool: each becomes a recording rule of a file that `promtool check
/// rules` must accept.
fn promtool_accepts(dir: &Path, queries: &[String]) {
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({ "record": format!("slo_probe_export_check:q{i}"), "expr": q }))
        .collect();
    let file = dir.join("queries.yaml");
    let text = yaml_serde::to_string(&json!({ "groups": [{ "name": "q", "rules": rules }] }));
    std::fs::write(&file, text.unwrap()).unwrap();
    let text = promtool_check_rules(&file);
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------- OpenSLO

// The OpenSLO Go SDK's v1 types (https://github.com/OpenSLO/go-sdk, pkg/openslo/v1: slo.go,
// sli.go, objects.go), the fields slo-probe can write; anything else is refused.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OpensloSlo {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: SloSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    name: String,
    display_name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SloSpec {
    description: Option<String>,
    service: String,
    indicator: Option<Indicator>,
    indicator_ref: Option<String>,
    budgeting_method: String,
    time_window: Vec<TimeWindow>,
    objectives: Vec<Objective>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Indicator {
    metadata: Metadata,
    spec: SliSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SliSpec {
    description: Option<String>,
    threshold_metric: Option<MetricSpec>,
    ratio_metric: Option<RatioMetric>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RatioMetric {
    counter: bool,
    good: Option<MetricSpec>,
    bad: Option<MetricSpec>,
    total: Option<MetricSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MetricSpec {
    metric_source: MetricSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MetricSource {
    metric_source_ref: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    spec: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeWindow {
    duration: String,
    is_rolling: bool,
    calendar: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Objective {
    display_name: Option<String>,
    op: Option<String>,
    value: Option<f64>,
    target: Option<f64>,
    target_percent: Option<f64>,
}

/// `rules.StringDNSLabel()` of the Go SDK: an RFC 1123 label.
fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The Go SDK's `labelKeyRegexp` (annotation keys without a prefix follow the same rule).
fn label_key(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// The Go SDK's SLO validation (`sloValidation`), for the documents slo-probe writes.
fn go_sdk_problems(doc: &Value) -> Vec<String> {
    let slo: OpensloSlo = match serde_json::from_value(doc.clone()) {
        Ok(s) => s,
        Err(e) => return vec![format!("not an OpenSLO v1 SLO: {e}")],
    };
    // slo-probe inlines the SLI: no `indicatorRef`, no composite objectives
    let Some(indicator) = &slo.spec.indicator else {
        return vec!["spec.indicator missing".into()];
    };
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_string());
        }
    };
    check(slo.api_version == "openslo/v1", "apiVersion");
    check(slo.kind == "SLO", "kind");
    for (at, m) in [
        ("metadata", &slo.metadata),
        ("spec.indicator.metadata", &indicator.metadata),
    ] {
        check(dns_label(&m.name), &format!("{at}.name {}", m.name));
        check(
            m.display_name.as_ref().is_none_or(|d| d.len() <= 63),
            &format!("{at}.displayName"),
        );
        for k in m.labels.keys().chain(m.annotations.keys()) {
            check(label_key(k), &format!("{at} key {k}"));
        }
    }
    let spec = &slo.spec;
    check(
        spec.description.as_ref().is_none_or(|d| d.len() <= 1050),
        "spec.description longer than 1050",
    );
    check(!spec.service.is_empty(), "spec.service");
    check(
        spec.indicator_ref.is_none(),
        "indicator and indicatorRef both",
    );
    check(
        ["Occurrences", "Timeslices", "RatioTimeslices"].contains(&spec.budgeting_method.as_str()),
        "spec.budgetingMethod",
    );
    check(spec.time_window.len() == 1, "spec.timeWindow: exactly one");
    for w in &spec.time_window {
        let (n, unit) = w.duration.split_at(w.duration.len().saturating_sub(1));
        check(
            n.parse::<u32>().is_ok_and(|n| n > 0) && "mhdwMQY".contains(unit) && unit.len() == 1,
            &format!("duration shorthand {}", w.duration),
        );
        check(
            w.is_rolling != w.calendar.is_some(),
            "calendar iff not rolling",
        );
    }
    let sli = &indicator.spec;
    check(
        sli.description.as_ref().is_none_or(|d| d.len() <= 1050),
        "SLI description longer than 1050",
    );
    check(
        sli.threshold_metric.is_none() != sli.ratio_metric.is_none(),
        "exactly one of thresholdMetric and ratioMetric",
    );
    if let Some(r) = &sli.ratio_metric {
        // slo-probe's queries are raw counters, summed
        check(r.counter, "ratioMetric.counter");
        check(r.total.is_some(), "ratioMetric.total");
        check(
            r.good.is_some() != r.bad.is_some(),
            "exactly one of good and bad",
        );
        for m in [&r.good, &r.bad, &r.total].into_iter().flatten() {
            check(!m.metric_source.spec.is_empty(), "metricSource.spec empty");
            check(
                m.metric_source.metric_source_ref.is_some() || m.metric_source.kind.is_some(),
                "metricSource names neither a type nor a DataSource",
            );
        }
    }
    check(!spec.objectives.is_empty(), "spec.objectives");
    for o in &spec.objectives {
        check(
            o.target.is_some() != o.target_percent.is_some(),
            "exactly one of target and targetPercent",
        );
        check(
            o.target.is_none_or(|t| (0.0..1.0).contains(&t)),
            "target in [0, 1)",
        );
        check(
            o.display_name.as_ref().is_none_or(|d| !d.is_empty()),
            "displayName empty",
        );
        if sli.ratio_metric.is_some() {
            check(
                o.op.is_none() && o.value.is_none(),
                "op and value with a ratioMetric",
            );
        }
    }
    problems
}

/// The problems the OpenSLO v1 JSON Schema finds in each document (empty: valid).
fn schema_problems(docs: &[Value]) -> Vec<String> {
    let python = tool(
        "SLO_PROBE_TEST_PYTHON",
        &[root().join(".ci/venv/bin/python")],
    );
    let script = r#"
import json, pathlib, sys
from jsonschema import Draft7Validator
from referencing import Registry, Resource

schemas = pathlib.Path(sys.argv[1])
registry = Registry().with_resources(
    (s["$id"], Resource.from_contents(s))
    for s in (json.loads(p.read_text()) for p in sorted(schemas.rglob("*.schema.json")))
)
root = json.loads((schemas / "openslo.schema.json").read_text())
Draft7Validator.check_schema(root)
validator = Draft7Validator(root, registry=registry)
for i, doc in enumerate(json.load(sys.stdin)):
    for e in validator.iter_errors(doc):
        print(f"document {i}: {e.json_path}: {e.message}")
"#;
    let schemas: PathBuf = root().join("tests/schemas/openslo-v1");
    let mut child = Command::new(&python)
        .args(["-c", script])
        .arg(&schemas)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run .ci/run)", python.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(docs).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jsonschema failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn openslo_documents_follow_the_v1_specification() {
    let t = tree();
    let (text, docs) = export(&t, "openslo");
    // one SLO per probe SLO, the probe without SLOs has none
    assert_eq!(docs.len(), 4, "{text}");
    let by_name: BTreeMap<&str, &Value> = docs
        .iter()
        .map(|d| (d["metadata"]["name"].as_str().unwrap(), d))
        .collect();
    assert_eq!(by_name.len(), 4, "names are unique");

    // every field of one document
    assert_eq!(
        *by_name["orders-freshness"],
        json!({
            "apiVersion": "openslo/v1",
            "kind": "SLO",
            "metadata": {
                "name": "orders-freshness",
                "labels": { "env": "prod", "probe": "orders", "slo": "freshness", "team": "payments" },
                "annotations": { "owner": "Payments Core" },
            },
            "spec": {
                "description": "slo-probe probe orders (topic orders-canary, cluster default), SLO freshness: 99.9% of its records verified intact within 2s, over a rolling 30d, counted over every site.",
                "service": "orders",
                "indicator": {
                    "metadata": { "name": "orders-freshness-sli" },
                    "spec": {
                        "description": "Good: records verified intact within 2s. Bad: verified later, lost or corrupt (records that could not be sent do not count). From slo_probe_slo_events_total, summed over every replica and site.",
                        "ratioMetric": {
                            "counter": true,
                            "good": { "metricSource": { "type": "Prometheus", "spec": {
                                "query": "sum(slo_probe_slo_events_total{probe=\"orders\",slo=\"freshness\",result=\"good\"})",
                            } } },
                            "total": { "metricSource": { "type": "Prometheus", "spec": {
                                "query": "sum(slo_probe_slo_events_total{probe=\"orders\",slo=\"freshness\"})",
                            } } },
                        },
                    },
                },
                "timeWindow": [{ "duration": "30d", "isRolling": true }],
                "budgetingMethod": "Occurrences",
                "objectives": [{
                    "displayName": "99.9% of records verified intact within 2s",
                    "target": 0.999,
                }],
            },
        })
    );
    // the default window, the 7-day one, the objectives as ratios without float noise
    let completeness = &by_name["orders-completeness"]["spec"];
    assert_eq!(completeness["timeWindow"][0]["duration"], "30d");
    assert_eq!(completeness["objectives"][0]["target"], 0.9995);
    let availability = &by_name["orders-availability"]["spec"];
    assert_eq!(availability["timeWindow"][0]["duration"], "7d");
    assert_eq!(availability["objectives"][0]["target"], 0.995);
    assert!(
        availability["indicator"]["spec"]["description"]
            .as_str()
            .unwrap()
            .contains("send failures included")
    );

    // a name that is no RFC 1123 label: mapped, with a hash of the original; the original kept
    let (eu_name, eu) = by_name
        .iter()
        .find(|(_, d)| d["metadata"]["labels"]["probe"] == "Orders_EU")
        .unwrap();
    assert!(eu_name.starts_with("orders-eu-completeness-"), "{eu_name}");
    assert_eq!(eu_name.len(), "orders-eu-completeness-".len() + 8);
    assert!(
        eu["spec"]["service"]
            .as_str()
            .unwrap()
            .starts_with("orders-eu-")
    );
    assert_eq!(eu["spec"]["timeWindow"][0]["duration"], "28d");
    assert!(
        eu["spec"]["indicator"]["spec"]["ratioMetric"]["good"]["metricSource"]["spec"]["query"]
            .as_str()
            .unwrap()
            .contains("probe=\"Orders_EU\"")
    );

    // what OpenSLO's Go SDK and its JSON Schema accept
    for d in &docs {
        assert_eq!(go_sdk_problems(d), Vec::<String>::new(), "{d}");
    }
    assert_eq!(schema_problems(&docs), Vec::<String>::new());

    // the checks can fail: a name that is no label, a field OpenSLO does not have, a target in
    // percent, a missing total
    let mut bad = docs[0].clone();
    bad["metadata"]["name"] = json!("Orders_EU");
    let mut unknown = docs[0].clone();
    unknown["spec"]["window"] = json!("30d");
    let mut percent = docs[0].clone();
    percent["spec"]["objectives"][0]["target"] = json!(99.0);
    let mut no_total = docs[0].clone();
    no_total["spec"]["indicator"]["spec"]["ratioMetric"]
        .as_object_mut()
        .unwrap()
        .remove("total");
    for d in [&bad, &percent, &no_total] {
        assert!(!go_sdk_problems(d).is_empty(), "{d}");
    }
    assert!(!go_sdk_problems(&unknown).is_empty());
    let found = schema_problems(&[bad, percent, no_total]);
    for i in 0..3 {
        assert!(
            found
                .iter()
                .any(|p| p.starts_with(&format!("document {i}:"))),
            "{found:?}"
        );
    }

    // the queries are PromQL
    let queries: Vec<String> = docs
        .iter()
        .flat_map(|d| {
            let r = &d["spec"]["indicator"]["spec"]["ratioMetric"];
            ["good", "total"].map(|k| {
                r[k]["metricSource"]["spec"]["query"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    promtool_accepts(t.path(), &queries);
}

// ------------------------------------------------------------------------------------ Sloth

// Sloth's prometheus/v1 spec (https://github.com/slok/sloth, pkg/prometheus/api/v1/v1.go). Sloth
// itself ignores unknown fields (it reads YAML as JSON into these types): refusing them here
// catches a misspelt field, which Sloth would drop silently.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlothSpec {
    version: String,
    service: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    slo_plugins: Option<Value>,
    #[serde(default)]
    slos: Vec<SlothSlo>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlothSlo {
    name: String,
    description: Option<String>,
    objective: f64,
    plugins: Option<Value>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    sli: SlothSli,
    alerting: SlothAlerting,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlothSli {
    raw: Option<Value>,
    events: Option<SlothEvents>,
    plugin: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlothEvents {
    error_query: String,
    total_query: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlothAlerting {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    page_alert: Option<SlothAlert>,
    ticket_alert: Option<SlothAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlothAlert {
    #[serde(default)]
    disable: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Sloth's `conventions.NameRegexp`.
fn sloth_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A Prometheus label name (the classic rule, which Sloth's UTF-8 rule also accepts).
fn prometheus_label(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s != "__name__"
}

/// The checks of `sloth validate` (pkg/common/validation/slo.go, `ValidateSLO` with the PromQL
/// dialect; the queries' PromQL is left to promtool), and Sloth's loader's own (version, one
/// SLO at least).
fn sloth_problems(doc: &Value) -> Vec<String> {
    let spec: SlothSpec = match serde_json::from_value(doc.clone()) {
        Ok(s) => s,
        Err(e) => return vec![format!("not a Sloth prometheus/v1 spec: {e}")],
    };
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    check(spec.version == "prometheus/v1", "version".into());
    check(!spec.slos.is_empty(), "at least one SLO is required".into());
    check(
        sloth_name(&spec.service),
        format!("service {}", spec.service),
    );
    let labels =
        |m: &BTreeMap<String, String>| m.iter().all(|(k, v)| prometheus_label(k) && !v.is_empty());
    check(labels(&spec.labels), "spec labels".into());
    // slo-probe sets no plugin (Sloth's defaults generate the rules)
    check(spec.slo_plugins.is_none(), "slo_plugins".into());
    for slo in &spec.slos {
        let at = &slo.name;
        check(sloth_name(at), format!("SLO name {at}"));
        check(
            sloth_name(&format!("{}-{}", spec.service, slo.name)),
            format!("{at}: SLO ID"),
        );
        check(
            slo.objective > 0.0 && slo.objective <= 100.0,
            format!("{at}: objective"),
        );
        check(labels(&slo.labels), format!("{at}: labels"));
        check(slo.plugins.is_none(), format!("{at}: plugins"));
        check(
            slo.description.as_ref().is_some_and(|d| !d.is_empty()),
            format!("{at}: description"),
        );
        check(
            slo.sli.raw.is_none() && slo.sli.plugin.is_none(),
            format!("{at}: one SLI type"),
        );
        let Some(events) = &slo.sli.events else {
            check(false, format!("{at}: events SLI"));
            continue;
        };
        check(
            events.error_query != events.total_query,
            format!("{at}: same queries"),
        );
        for q in [&events.error_query, &events.total_query] {
            // `TplSLIQueryWindowVarRegex`: {{ *\.window *}}
            let window = q.find("{{").is_some_and(|i| {
                let rest = q[i + 2..].trim_start_matches(' ');
                rest.strip_prefix(".window")
                    .is_some_and(|r| r.trim_start_matches(' ').starts_with("}}"))
            });
            check(window, format!("{at}: {q} lacks {{{{.window}}}}"));
        }
        let a = &slo.alerting;
        for (which, alert) in [("page", &a.page_alert), ("ticket", &a.ticket_alert)] {
            let alert = alert.as_ref();
            if alert.is_some_and(|x| x.disable) {
                continue;
            }
            check(!a.name.is_empty(), format!("{at}: {which} alert name"));
            let mut l = a.labels.clone();
            let mut n = a.annotations.clone();
            if let Some(x) = alert {
                l.extend(x.labels.clone());
                n.extend(x.annotations.clone());
            }
            check(labels(&l), format!("{at}: {which} alert labels"));
            check(
                n.iter().all(|(k, v)| prometheus_label(k) && !v.is_empty()),
                format!("{at}: {which} alert annotations"),
            );
        }
    }
    problems
}

#[test]
fn sloth_specs_follow_the_prometheus_v1_spec() {
    let t = tree();
    let (text, docs) = export(&t, "sloth");
    // one spec per probe with SLOs
    assert_eq!(docs.len(), 2, "{text}");
    let orders = docs.iter().find(|d| d["service"] == "orders").unwrap();
    let eu = docs.iter().find(|d| d["service"] == "Orders_EU").unwrap();
    assert!(text.contains("# Probe idle has no SLO."), "{text}");

    assert_eq!(orders["version"], "prometheus/v1");
    // tags are labels of every rule, named as the `rules` formats name them on alerts
    assert_eq!(
        orders["labels"],
        json!({ "tag_env": "prod", "tag_owner": "Payments Core", "tag_team": "payments" })
    );
    assert!(eu.get("labels").is_none());
    let slos = orders["slos"].as_array().unwrap();
    assert_eq!(
        slos.iter().map(|s| &s["name"]).collect::<Vec<_>>(),
        ["freshness", "completeness", "availability"]
    );
    // every field of one SLO
    let freshness = &slos[0];
    let runbook = freshness["alerting"]["annotations"]["runbook"].clone();
    assert!(
        runbook
            .as_str()
            .unwrap()
            .contains("slo_probe_records_total{probe=\"orders\"}")
    );
    assert_eq!(
        *freshness,
        json!({
            "name": "freshness",
            "objective": 99.9,
            "description": "99.9% of the records of probe orders verified intact within 2s.",
            "sli": { "events": {
                "error_query": "sum(rate(slo_probe_slo_events_total{probe=\"orders\",slo=\"freshness\",result=\"bad\"}[{{.window}}]))",
                "total_query": "sum(rate(slo_probe_slo_events_total{probe=\"orders\",slo=\"freshness\"}[{{.window}}]))",
            } },
            "alerting": {
                "name": "SloProbeBudgetBurn",
                "labels": { "probe": "orders", "slo": "freshness" },
                "annotations": {
                    "description": "Probe orders (topic orders-canary) has objective 99.9% of records verified intact within 2s over 30d, counted over every site; errors are spending its budget too fast.",
                    "runbook": runbook,
                },
                "page_alert": {
                    "labels": { "severity": "page" },
                    "annotations": { "summary": "orders: SLO freshness is burning its error budget too fast (page)" },
                },
                "ticket_alert": {
                    "labels": { "severity": "ticket" },
                    "annotations": { "summary": "orders: SLO freshness is burning its error budget too fast (ticket)" },
                },
            },
        })
    );
    assert_eq!(slos[1]["objective"], 99.95);
    assert_eq!(eu["slos"][0]["objective"], 99.0);

    // Sloth's period is one per run (30d unless --default-slo-period says otherwise): a comment
    // says how to generate the 7d and 28d SLOs, none for the 30d ones
    assert_eq!(text.matches("--default-slo-period=").count(), 2, "{text}");
    assert!(text.contains("# orders/availability: window 7d;"), "{text}");
    assert!(
        text.contains("--default-slo-period=7d and\n# --slo-period-windows-path"),
        "{text}"
    );
    assert!(
        text.contains("# Orders_EU/completeness: window 28d;")
            && text.contains("--default-slo-period=28d."),
        "{text}"
    );

    // what Sloth accepts
    for d in &docs {
        assert_eq!(sloth_problems(d), Vec::<String>::new(), "{d}");
    }
    // the checks can fail: an objective as a ratio above 100, a query without the window, a
    // field Sloth does not have
    let mut over = orders.clone();
    over["slos"][0]["objective"] = json!(999);
    let mut no_window = orders.clone();
    no_window["slos"][0]["sli"]["events"]["total_query"] = json!("sum(slo_probe_slo_events_total)");
    let mut unknown = orders.clone();
    unknown["slos"][0]["window"] = json!("30d");
    for d in [over, no_window, unknown] {
        assert!(!sloth_problems(&d).is_empty(), "{d}");
    }

    // the queries are PromQL once Sloth puts a window in
    let queries: Vec<String> = docs
        .iter()
        .flat_map(|d| d["slos"].as_array().unwrap().clone())
        .flat_map(|s| {
            ["error_query", "total_query"].map(|k| {
                s["sli"]["events"][k]
                    .as_str()
                    .unwrap()
                    .replace("{{.window}}", "5m")
            })
        })
        .collect();
    assert!(queries.iter().all(|q| q.contains("[5m]")));
    promtool_accepts(t.path(), &queries);
}
