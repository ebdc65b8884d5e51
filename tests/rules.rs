//! `slo-probe rules` against the real promtool: the generated rules pass `promtool check rules`,
//! and `promtool test rules` proves the alerts: a 2% budget burn in one hour pages, a steady
//! 0.05% error rate at a 99.9% objective never alerts, an absent probe alerts. A deliberately
//! wrong expectation makes promtool fail, so the tests can fail.

mod common;

use std::path::Path;
use std::process::Command;

use common::infra::promtool;
use common::{Tree, run};
use serde_json::{Value, json};

const PROBE: &str = "\
name: orders
interval: 10s
timeout: 30s
slos:
  - { name: completeness, objective: 99.9%, window: 30d }
";

/// The generated rules file, parsed.
fn rules(t: &Tree, args: &[&str]) -> Value {
    let mut all = vec!["rules"];
    all.extend_from_slice(args);
    let out = run(t.path(), &all, &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    t.write("rules.yaml", &out.stdout);
    yaml_serde::from_str(&out.stdout).unwrap()
}

/// The annotations of the alert `name` for `labels` (a subset of its labels).
fn annotations(rules: &Value, name: &str, labels: &Value) -> Value {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| {
            r["alert"] == name
                && labels
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| r["labels"][k] == *v)
        })
        .unwrap_or_else(|| panic!("no alert {name} with {labels}"))["annotations"]
        .clone()
}

fn alert(rules: &Value, name: &str, labels: Value) -> Value {
    json!({ "exp_labels": labels, "exp_annotations": annotations(rules, name, &labels) })
}

fn promtool_test(dir: &Path, test: &Value) -> (bool, String) {
    let file = dir.join("test.yaml");
    std::fs::write(&file, yaml_serde::to_string(test).unwrap()).unwrap();
    let out = Command::new(promtool())
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn events(result: &str, values: &str) -> Value {
    json!({
        "series": format!("slo_probe_slo_events_total{{probe=\"orders\",slo=\"completeness\",result=\"{result}\"}}"),
        "values": values,
    })
}

#[test]
fn the_generated_rules_pass_promtool_check() {
    let t = Tree::new();
    t.write("probes/orders.yaml", PROBE);
    t.write(
        "probes/weekly.yaml",
        "name: weekly\nslos:\n  - { name: freshness, latency_below: 2s, objective: 99%, window: 7d }\n  - { name: availability, objective: 99.5%, window: 7d }\n",
    );
    for format in ["rules", "prometheus-rule"] {
        let r = rules(
            &t,
            &[
                "--format",
                format,
                "--runbook-url",
                "https://runbooks.example/slo-probe",
            ],
        );
        let spec = if format == "rules" {
            r.clone()
        } else {
            assert_eq!(r["kind"], "PrometheusRule");
            assert_eq!(r["apiVersion"], "monitoring.coreos.com/v1");
            r["spec"].clone()
        };
        let alerts: Vec<&Value> = spec["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .filter(|r| r["alert"].is_string())
            .collect();
        // 3 SLOs x (page, ticket) + 2 absent
        assert_eq!(alerts.len(), 8);
        for a in &alerts {
            for key in ["summary", "description", "runbook", "runbook_url"] {
                assert!(a["annotations"][key].is_string(), "{key} in {a}");
            }
            assert!(a["labels"]["probe"].is_string() && a["labels"]["severity"].is_string());
        }
        if format == "rules" {
            let out = Command::new(promtool())
                .args(["check", "rules"])
                .arg(t.path().join("rules.yaml"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // 9 windows (7 + 30d + 1w), objective and budget per SLO, 8 alerts
            assert!(text.contains("SUCCESS: 23 rules found"), "{text}");
        }
    }
    // the 7-day window's page threshold is derived from it: 2% of 7 days in 1h = burn 3.36
    let text = std::fs::read_to_string(t.path().join("rules.yaml")).unwrap();
    assert!(text.contains("ratio_rate1w"), "7d is written 1w");
    let r = rules(&t, &[]);
    let weekly_page = r["groups"][2]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            a["labels"]["probe"] == "weekly"
                && a["labels"]["slo"] == "availability"
                && a["labels"]["severity"] == "page"
        })
        .unwrap();
    // 3.36 x 0.5% allowed
    assert!(
        weekly_page["expr"].as_str().unwrap().contains("> 0.0168"),
        "{weekly_page}"
    );
}

#[test]
fn promtool_proves_the_alerts_page_stay_quiet_and_notice_absence() {
    let t = Tree::new();
    t.write("probes/orders.yaml", PROBE);
    let r = rules(&t, &[]);
    let page = json!({ "probe": "orders", "slo": "completeness", "severity": "page" });
    let ticket = json!({ "probe": "orders", "slo": "completeness", "severity": "ticket" });
    let absent = json!({ "probe": "orders", "severity": "page" });
    let test = |steady_expectation: Value| {
        json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "5m",
            "tests": [
                {
                    "name": "a 2% budget burn in one hour pages",
                    "interval": "1m",
                    // 2 hours clean, then 1.5% of events bad: after an hour of that, 2.1% of
                    // the 30-day budget is gone
                    "input_series": [
                        events("good", "0+985x200"),
                        events("bad", "0+0x120 15+15x79"),
                    ],
                    "alert_rule_test": [
                        { "eval_time": "125m", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
                        {
                            "eval_time": "195m",
                            "alertname": "SloProbeBudgetBurn",
                            "exp_alerts": [
                                alert(&r, "SloProbeBudgetBurn", page.clone()),
                                alert(&r, "SloProbeBudgetBurn", ticket.clone()),
                            ],
                        },
                    ],
                },
                {
                    "name": "a steady 0.05% error rate at 99.9% never alerts",
                    "interval": "1m",
                    "input_series": [
                        events("good", "0+1999x4380"),
                        events("bad", "0+1x4380"),
                        { "series": "slo_probe_records_sent_total{probe=\"orders\"}", "values": "0+2000x4380" },
                    ],
                    "alert_rule_test": [
                        { "eval_time": "1h", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
                        { "eval_time": "1d", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
                        { "eval_time": "3d", "alertname": "SloProbeBudgetBurn", "exp_alerts": steady_expectation },
                        { "eval_time": "3d", "alertname": "SloProbeAbsent", "exp_alerts": [] },
                    ],
                    // half the budget's share of errors: half the budget left
                    "promql_expr_test": [{
                        "expr": "round(slo_probe:slo_error_budget_remaining:ratio, 0.001)",
                        "eval_time": "3d",
                        "exp_samples": [{ "labels": "{probe=\"orders\",slo=\"completeness\"}", "value": 0.5 }],
                    }],
                },
                {
                    "name": "an absent probe alerts",
                    "interval": "1m",
                    "input_series": [
                        { "series": "slo_probe_records_sent_total{probe=\"other\"}", "values": "0+3x30" },
                    ],
                    "alert_rule_test": [
                        { "eval_time": "5m", "alertname": "SloProbeAbsent", "exp_alerts": [] },
                        {
                            "eval_time": "15m",
                            "alertname": "SloProbeAbsent",
                            "exp_alerts": [alert(&r, "SloProbeAbsent", absent.clone())],
                        },
                    ],
                },
            ],
        })
    };
    let (ok, out) = promtool_test(t.path(), &test(json!([])));
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    // a wrong expectation (a page on the steady error rate) fails: the test can fail
    let (ok, out) = promtool_test(
        t.path(),
        &test(json!([alert(&r, "SloProbeBudgetBurn", page.clone())])),
    );
    assert!(!ok, "promtool accepted a wrong expectation:\n{out}");
    assert!(out.contains("a steady 0.05% error rate"), "{out}");
}

#[test]
fn rules_on_a_bad_configuration_exit_78_with_the_problem() {
    let t = Tree::new();
    t.write(
        "probes/orders.yaml",
        "name: orders\nslos:\n  - { name: completeness, objective: 101% }\n",
    );
    let out = run(t.path(), &["rules"], &[]);
    assert_eq!(out.code(), 78);
    assert!(
        out.stdout.is_empty(),
        "no half-written rules: {}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("probes/orders.yaml:3:38: `objective` must be between 0% and 100%"),
        "{}",
        out.stderr
    );
}
