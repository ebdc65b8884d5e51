//! `slo-probe rules` against the real promtool: the generated rules pass `promtool check rules`,
//! and `promtool test rules` proves the alerts: a 2% budget burn in one hour pages, a steady
//! 0.05% error rate at a 99.9% objective never alerts, an absent probe alerts, the SLO is
//! counted across sites and the page names the worst one, and an agent that sends nothing (or
//! whose sends fail) pages while a slow but healthy probe does not. A deliberately wrong
//! expectation makes promtool fail, so the tests can fail.

mod common;

use std::path::Path;
use std::process::Command;

use common::infra::{promtool, promtool_check_rules};
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

/// A burn alert as Prometheus expands it: its worst-site templates give `site` with its error
/// ratio `ratio` (as `humanizePercentage` writes it).
fn burn_alert(rules: &Value, labels: Value, site: &str, ratio: &str) -> Value {
    let mut a = annotations(rules, "SloProbeBudgetBurn", &labels);
    for (_, text) in a.as_object_mut().unwrap() {
        let mut s = text.as_str().unwrap().to_string();
        while let Some(start) = s.find("{{ range query `") {
            let end = start + s[start..].find("{{ end }}").unwrap() + "{{ end }}".len();
            let with_ratio = s[start..end].contains("humanizePercentage");
            let expanded = if with_ratio {
                format!("{site} ({ratio} of its events bad)")
            } else {
                site.to_string()
            };
            s.replace_range(start..end, &expanded);
        }
        *text = Value::String(s);
    }
    assert_eq!(a["worst_site"], site);
    json!({ "exp_labels": labels, "exp_annotations": a })
}

/// An agent-level alert (labels of the series it fires on), its `$labels` templates expanded.
fn agent_alert(rules: &Value, name: &str, labels: Value, series: &[(&str, &str)]) -> Value {
    let rule = json!({ "probe": labels["probe"], "severity": labels["severity"] });
    let mut a = annotations(rules, name, &rule);
    for (_, text) in a.as_object_mut().unwrap() {
        let mut s = text.as_str().unwrap().to_string();
        for (k, v) in series {
            s = s.replace(&format!("{{{{ $labels.{k} }}}}"), v);
        }
        assert!(!s.contains("{{"), "unexpanded template in {s}");
        *text = Value::String(s);
    }
    json!({ "exp_labels": labels, "exp_annotations": a })
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
    site_events("eu", result, values)
}

fn site_events(site: &str, result: &str, values: &str) -> Value {
    json!({
        "series": format!("slo_probe_slo_events_total{{probe=\"orders\",slo=\"completeness\",result=\"{result}\",site=\"{site}\"}}"),
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
        // 3 SLOs x (page, ticket) + 2 x (absent, not sending)
        assert_eq!(alerts.len(), 10);
        for a in &alerts {
            for key in ["summary", "description", "runbook", "runbook_url"] {
                assert!(a["annotations"][key].is_string(), "{key} in {a}");
            }
            assert!(a["labels"]["probe"].is_string() && a["labels"]["severity"].is_string());
        }
        if format == "rules" {
            let text = promtool_check_rules(&t.path().join("rules.yaml"));
            // 9 windows (7 + 30d + 1w), objective and budget per SLO, 10 alerts
            assert!(text.contains("SUCCESS: 25 rules found"), "{text}");
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
                            // over 1h 1.5% of events are bad; over the day so far,
                            // 1125 of 193200 (0.5823%)
                            "exp_alerts": [
                                burn_alert(&r, page.clone(), "eu", "1.5%"),
                                burn_alert(&r, ticket.clone(), "eu", "0.5823%"),
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
        &test(json!([burn_alert(&r, page.clone(), "eu", "0.05%")])),
    );
    assert!(!ok, "promtool accepted a wrong expectation:\n{out}");
    assert!(out.contains("a steady 0.05% error rate"), "{out}");
}

/// Two sites: the SLO is the pipeline's, counted over both; the page names the worse site.
#[test]
fn the_slo_is_counted_across_sites_and_the_page_names_the_worst() {
    let t = Tree::new();
    t.write("probes/orders.yaml", PROBE);
    let r = rules(&t, &[]);
    let page = json!({ "probe": "orders", "slo": "completeness", "severity": "page" });
    let test = |b_bad_per_minute: u32, expected: Value| {
        let b_good = 1000 - b_bad_per_minute;
        json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "1m",
            "tests": [{
                "name": format!("site b {}% bad, site a clean", b_bad_per_minute as f64 / 10.0),
                "interval": "1m",
                "input_series": [
                    site_events("a", "good", "0+1000x120"),
                    site_events("a", "bad", "0+0x120"),
                    site_events("b", "good", &format!("0+{b_good}x120")),
                    site_events("b", "bad", &format!("0+{b_bad_per_minute}x120")),
                ],
                "alert_rule_test": [
                    { "eval_time": "70m", "alertname": "SloProbeBudgetBurn", "exp_alerts": expected },
                ],
            }],
        })
    };
    let ticket = json!({ "probe": "orders", "slo": "completeness", "severity": "ticket" });
    // b at 4%: 2% over both sites, above the 1.44% page threshold (and the 0.3% ticket one)
    let pages = json!([
        burn_alert(&r, page.clone(), "b", "4%"),
        burn_alert(&r, ticket.clone(), "b", "4%"),
    ]);
    let (ok, out) = promtool_test(t.path(), &test(40, pages));
    assert!(ok, "{out}");
    // b at 1%: above the 0.6% page threshold (5% of the budget in 6h) on its own, but 0.5%
    // over both sites: a ticket only
    let ticket_only = json!([burn_alert(&r, ticket.clone(), "b", "1%")]);
    let (ok, out) = promtool_test(t.path(), &test(10, ticket_only));
    assert!(ok, "{out}");
    // and naming the wrong site fails
    let wrong = json!([
        burn_alert(&r, page.clone(), "a", "4%"),
        burn_alert(&r, ticket.clone(), "b", "4%"),
    ]);
    let (ok, out) = promtool_test(t.path(), &test(40, wrong));
    assert!(!ok, "promtool accepted the wrong site:\n{out}");
}

/// An agent that schedules nothing, or whose records all fail to send, pages; a slow probe
/// between two rounds and a healthy one do not.
#[test]
fn an_agent_that_sends_nothing_pages() {
    let t = Tree::new();
    t.write("probes/orders.yaml", PROBE);
    t.write(
        "probes/slow.yaml",
        "name: slow
interval: 4m
timeout: 5m
",
    );
    let r = rules(&t, &[]);
    let series = |probe: &str, site: &str, metric: &str, extra: &str, values: &str| {
        json!({
            "series": format!("{metric}{{probe=\"{probe}\",site=\"{site}\",instance=\"{site}:9747\",job=\"slo-probe\"{extra}}}"),
            "values": values,
        })
    };
    let sent = "slo_probe_records_sent_total";
    let outcomes = "slo_probe_records_total";
    let labels = |site: &str| json!({ "probe": "orders", "severity": "page", "site": site, "instance": format!("{site}:9747"), "job": "slo-probe" });
    let expected = |site: &str| {
        agent_alert(
            &r,
            "SloProbeNotSending",
            labels(site),
            &[("site", site), ("instance", &format!("{site}:9747"))],
        )
    };
    let test = |at_10m: Value| {
        json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "30s",
            "tests": [{
                "name": "silent and failing agents page",
                "interval": "30s",
                "input_series": [
                    // a: healthy, 6 records a minute, all ok
                    series("orders", "a", sent, "", "0+3x40"),
                    series("orders", "a", outcomes, ",outcome=\"send_failed\"", "0+0x40"),
                    // b: its cluster is unreachable: every record send_failed
                    series("orders", "b", sent, "", "0+3x40"),
                    series("orders", "b", outcomes, ",outcome=\"send_failed\"", "0+3x40"),
                    // c: schedules nothing at all
                    series("orders", "c", sent, "", "5+0x40"),
                    series("orders", "c", outcomes, ",outcome=\"send_failed\"", "0+0x40"),
                    // a probe sending every 4 minutes: its window is 12m, never empty
                    series("slow", "a", sent, "", "1 1 1 1 1 1 1 1 2 2 2 2 2 2 2 2 3 3 3 3 3 3 3 3 4 4 4 4 4 4 4 4 5 5 5 5 5 5 5 5"),
                    series("slow", "a", outcomes, ",outcome=\"send_failed\"", "0+0x40"),
                ],
                "alert_rule_test": [
                    { "eval_time": "30s", "alertname": "SloProbeNotSending", "exp_alerts": [] },
                    { "eval_time": "10m", "alertname": "SloProbeNotSending", "exp_alerts": at_10m },
                ],
            }],
        })
    };
    let (ok, out) = promtool_test(t.path(), &test(json!([expected("b"), expected("c")])));
    assert!(ok, "{out}");
    let (ok, out) = promtool_test(t.path(), &test(json!([expected("b")])));
    assert!(!ok, "promtool accepted a missing page:\n{out}");
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

/// One record every 10 s at 99.99%: a single bad record is 0.28% of the hour's events, above
/// the page's 0.144%, so it pages; `check` says so with the numbers. With
/// `min_bad_events: 3` the same record does not page, and three do.
#[test]
fn min_bad_events_keeps_one_bad_record_from_paging_a_low_rate_probe() {
    let low_rate = |extra: &str| {
        format!(
            "name: orders\ninterval: 10s\ntimeout: 30s\npartitions: [0]\nslos:\n  - {{ name: completeness, objective: 99.99%, window: 30d{extra} }}\n"
        )
    };
    let page = json!({ "probe": "orders", "slo": "completeness", "severity": "page" });
    let ticket = json!({ "probe": "orders", "slo": "completeness", "severity": "ticket" });
    // 6 events a minute; `bad` more, from minute 120
    let test = |bad: &str, expected: Value| {
        json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "1m",
            "tests": [{
                "name": format!("bad events {bad}"),
                "interval": "1m",
                "input_series": [events("good", "0+6x180"), events("bad", bad)],
                "alert_rule_test": [
                    { "eval_time": "126m", "alertname": "SloProbeBudgetBurn", "exp_alerts": expected },
                ],
            }],
        })
    };
    let one_bad = "0+0x120 1+0x60";
    let three_bad = "0+0x120 1 2 3+0x58";

    let plain = Tree::new();
    plain.write("probes/orders.yaml", &low_rate(""));
    let out = run(plain.path(), &["check"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("probe orders, slo completeness (99.99% over 30d): at 0.1 records/s (1 partition every 10s) 1 bad record in an hour pages"),
        "{}",
        out.stderr
    );
    let r = rules(&plain, &[]);
    let (ok, out) = promtool_test(
        plain.path(),
        &test(
            one_bad,
            json!([
                burn_alert(&r, page.clone(), "eu", "0.277%"),
                burn_alert(&r, ticket.clone(), "eu", "0.1321%"),
            ]),
        ),
    );
    assert!(ok, "one bad record pages without min_bad_events:\n{out}");

    let guarded = Tree::new();
    guarded.write("probes/orders.yaml", &low_rate(", min_bad_events: 3"));
    let out = run(guarded.path(), &["check"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let r = rules(&guarded, &[]);
    // (a ticket is still a ticket: min_bad_events guards pages)
    let one_ticket = json!([burn_alert(&r, ticket.clone(), "eu", "0.1321%")]);
    let (ok, out) = promtool_test(guarded.path(), &test(one_bad, one_ticket));
    assert!(
        ok,
        "one bad record must not page with min_bad_events: 3:\n{out}"
    );
    let (ok, out) = promtool_test(
        guarded.path(),
        &test(
            three_bad,
            json!([
                burn_alert(&r, page.clone(), "eu", "0.8264%"),
                burn_alert(&r, ticket.clone(), "eu", "0.3953%"),
            ]),
        ),
    );
    assert!(ok, "three bad records page with min_bad_events: 3:\n{out}");
    // and the test can fail: expecting the page on one bad record is refused
    let (ok, out) = promtool_test(
        guarded.path(),
        &test(
            one_bad,
            json!([
                burn_alert(&r, page, "eu", "0.277%"),
                burn_alert(&r, ticket, "eu", "0.1321%"),
            ]),
        ),
    );
    assert!(!ok, "promtool accepted a page on one bad record:\n{out}");
}

/// `--time-scale 60` runs the SLO machinery on a clock 60 times faster: the same events, one a
/// second instead of one a minute, page and ticket exactly as the real rules do an hour later
/// (the 2% burn of the first scenario above), with the same ratios; the agent-liveness alerts
/// keep their wall-clock windows, and the output says it is scaled.
#[test]
fn a_time_scaled_rule_file_pages_sixty_times_sooner() {
    let t = Tree::new();
    t.write("probes/orders.yaml", PROBE);
    let out = run(t.path(), &["rules", "--time-scale", "60"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains("# TIME-SCALED by 60"), "{}", out.stdout);
    let r = rules(&t, &["--time-scale", "60"]);
    let page = json!({ "probe": "orders", "slo": "completeness", "severity": "page" });
    let ticket = json!({ "probe": "orders", "slo": "completeness", "severity": "ticket" });
    let alerts = r["groups"][2]["rules"].as_array().unwrap();
    let burn = alerts
        .iter()
        .find(|a| a["alert"] == "SloProbeBudgetBurn")
        .unwrap();
    assert_eq!(burn["for"], "2s");
    assert!(burn["expr"].as_str().unwrap().contains("ratio_rate1h"));
    let not_sending = alerts
        .iter()
        .find(|a| a["alert"] == "SloProbeNotSending")
        .unwrap();
    assert_eq!(not_sending["for"], "1m", "liveness keeps the wall clock");
    assert!(not_sending["expr"].as_str().unwrap().contains("[5m]"));
    let test = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1s",
        "tests": [{
            "name": "a 2% budget burn in one scaled hour pages",
            "interval": "1s",
            "input_series": [
                events("good", "0+985x200"),
                events("bad", "0+0x120 15+15x79"),
            ],
            "alert_rule_test": [
                { "eval_time": "125s", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
                {
                    "eval_time": "195s",
                    "alertname": "SloProbeBudgetBurn",
                    "exp_alerts": [
                        burn_alert(&r, page, "eu", "1.5%"),
                        burn_alert(&r, ticket, "eu", "0.5823%"),
                    ],
                },
            ],
        }],
    });
    let (ok, out) = promtool_test(t.path(), &test);
    assert!(ok, "{out}");
    let text = promtool_check_rules(&t.path().join("rules.yaml"));
    assert!(text.contains("SUCCESS"), "{text}");
    // Out of range, or with a format it does not apply to: refused.
    assert_eq!(
        run(t.path(), &["rules", "--time-scale", "61"], &[]).code(),
        78
    );
    let out = run(
        t.path(),
        &["rules", "--time-scale", "60", "--format", "sloth"],
        &[],
    );
    assert_eq!(out.code(), 78, "{}", out.stderr);
}

/// An agent killed (SIGKILL) and started again is the same scrape target with its counters back
/// at zero: `slo_probe_slo_events_total` resets mid-series. `rate()` and `increase()` count a
/// drop as a reset, so the generated rules must see the same burn through a restart as through
/// continuous running. The 2% burn of the first scenario, three ways: counters that run on, counters
/// that restart from zero at minute 160 (the burn is on; the new agent scraped a minute after its
/// start), and the same with the agent down for two scrapes first (its first scrape reads 0):
/// the same alerts at the same times with the same ratios, the same `increase()` over the hour,
/// and the same error ratios and budget. A restart during clean running pages nothing and spends
/// no budget. The inputs really reset (`resets()` says so), and a wrong expectation fails.
#[test]
fn a_restarted_agents_counter_reset_keeps_increase_burn_rates_and_budget_continuous() {
    let t = Tree::new();
    t.write("probes/orders.yaml", PROBE);
    let r = rules(&t, &[]);
    let page = json!({ "probe": "orders", "slo": "completeness", "severity": "page" });
    let ticket = json!({ "probe": "orders", "slo": "completeness", "severity": "ticket" });
    let series = "{probe=\"orders\",slo=\"completeness\"}";
    let sample = |expr: &str, at: &str, labels: &str, value: f64| {
        json!({
            "expr": expr,
            "eval_time": at,
            "exp_samples": [{ "labels": labels, "value": value }],
        })
    };
    // Figures at 195m, 35 minutes after the restart: over the hour 1.5% of the events bad, and
    // `minutes` minutes of events (985 good and 15 bad a minute) counted.
    let figures = |resets: f64, minutes: f64| {
        json!([
            sample(
                "round(slo_probe:slo_errors:ratio_rate1h, 0.0001)",
                "195m",
                series,
                0.015
            ),
            sample(
                "round(slo_probe:slo_errors:ratio_rate5m, 0.0001)",
                "195m",
                series,
                0.015
            ),
            sample(
                "round(sum(increase(slo_probe_slo_events_total{result=\"good\"}[1h])))",
                "195m",
                "{}",
                985.0 * minutes
            ),
            sample(
                "round(sum(increase(slo_probe_slo_events_total{result=\"bad\"}[1h])))",
                "195m",
                "{}",
                15.0 * minutes
            ),
            sample(
                "sum(resets(slo_probe_slo_events_total[1h]))",
                "195m",
                "{}",
                resets
            ),
        ])
    };
    // Exactly the alerts of continuous running, with the same ratios in their annotations.
    let burning = json!([
        { "eval_time": "125m", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
        {
            "eval_time": "195m",
            "alertname": "SloProbeBudgetBurn",
            "exp_alerts": [
                burn_alert(&r, page.clone(), "eu", "1.5%"),
                burn_alert(&r, ticket.clone(), "eu", "0.5823%"),
            ],
        },
    ]);
    // The budget, once the series ended at 200m (1200 bad of 198200 events over 30 days: 6.054
    // budgets spent), read an hour later: the recording rules evaluate in groups of their own,
    // in no fixed order, so during the burn the budget may read the 30-day ratio of the
    // previous evaluation.
    let budget_after_burn = |value: f64| {
        sample(
            "round(slo_probe:slo_error_budget_remaining:ratio, 0.001)",
            "260m",
            series,
            value,
        )
    };
    let test = |restarted_resets: f64| {
        let mut restarted = figures(restarted_resets, 60.0);
        restarted
            .as_array_mut()
            .unwrap()
            .push(budget_after_burn(-5.054));
        let mut continuous = figures(0.0, 60.0);
        continuous
            .as_array_mut()
            .unwrap()
            .push(budget_after_burn(-5.054));
        json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "5m",
            "tests": [
                {
                    "name": "counters that run on",
                    "interval": "1m",
                    "input_series": [
                        events("good", "0+985x200"),
                        events("bad", "0+0x120 15+15x79"),
                    ],
                    "alert_rule_test": burning.clone(),
                    "promql_expr_test": continuous,
                },
                {
                    "name": "counters back at zero after a restart at minute 160",
                    "interval": "1m",
                    // the new agent's first scrape, a minute after it started: one minute of
                    // events (good and bad) since zero
                    "input_series": [
                        events("good", "0+985x159 985+985x40"),
                        events("bad", "0+0x120 15+15x38 15+15x40"),
                    ],
                    "alert_rule_test": burning.clone(),
                    "promql_expr_test": restarted,
                },
                {
                    "name": "down for two scrapes, then back at zero",
                    "interval": "1m",
                    // the killed agent's last minute of events and the outage are counted by
                    // nobody: 57 of the hour's 60 minutes, in the same proportion
                    "input_series": [
                        events("good", "0+985x159 _x2 0+985x38"),
                        events("bad", "0+0x120 15+15x38 _x2 0+15x38"),
                    ],
                    // pages and tickets as well; over the day, 1080 bad of 190200 counted
                    "alert_rule_test": [
                        { "eval_time": "125m", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
                        {
                            "eval_time": "195m",
                            "alertname": "SloProbeBudgetBurn",
                            "exp_alerts": [
                                burn_alert(&r, page.clone(), "eu", "1.5%"),
                                burn_alert(&r, ticket.clone(), "eu", "0.5678%"),
                            ],
                        },
                    ],
                    "promql_expr_test": figures(2.0, 57.0),
                },
                {
                    "name": "a restart during clean running",
                    "interval": "1m",
                    "input_series": [
                        events("good", "0+985x100 985+985x99"),
                        events("bad", "0+0x100 0+0x99"),
                    ],
                    "alert_rule_test": [
                        { "eval_time": "105m", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
                        { "eval_time": "195m", "alertname": "SloProbeBudgetBurn", "exp_alerts": [] },
                    ],
                    "promql_expr_test": [
                        sample("round(slo_probe:slo_error_budget_remaining:ratio, 0.001)", "195m", series, 1.0),
                        sample("round(sum(increase(slo_probe_slo_events_total{result=\"good\"}[2h])) / 120)", "195m", "{}", 985.0),
                        sample("sum(resets(slo_probe_slo_events_total{result=\"good\"}[2h]))", "195m", "{}", 1.0),
                    ],
                },
            ],
        })
    };
    // one reset per series (good and bad) in the hour before 195m
    let (ok, out) = promtool_test(t.path(), &test(2.0));
    assert!(ok, "{out}");
    // the restarted input really resets: claiming it does not fails
    let (ok, out) = promtool_test(t.path(), &test(0.0));
    assert!(
        !ok,
        "promtool accepted a reset-free reading of a reset:\n{out}"
    );
    assert!(
        out.contains("resets(slo_probe_slo_events_total[1h])") && out.contains("got: {} 2E+00"),
        "{out}"
    );
}

/// Expands the `{{ range query ... }}` templates of an alert's annotations as Prometheus does
/// for these series: the job's state query gives `state`, the worst-site queries give `site`
/// (with its error ratio `ratio`).
fn expanded(mut a: Value, state: &str, site: &str, ratio: &str) -> Value {
    for (_, text) in a.as_object_mut().unwrap() {
        let mut s = text.as_str().unwrap().to_string();
        while let Some(start) = s.find("{{ range query `") {
            let end = start + s[start..].find("{{ end }}").unwrap() + "{{ end }}".len();
            let block = &s[start..end];
            let with = if block.contains("slo_probe_flink_job_state") {
                state.to_string()
            } else if block.contains("humanizePercentage") {
                format!("{site} ({ratio} of its events bad)")
            } else {
                site.to_string()
            };
            s.replace_range(start..end, &with);
        }
        assert!(!s.contains("{{"), "unexpanded template in {s}");
        *text = Value::String(s);
    }
    a
}

/// A probe naming its Flink job, burning its budget (10% of its records bad against a 99.9%
/// objective): with the job RESTARTING, `SloProbeJobNotRunning` pages naming the state, and the
/// burn page says the job was RESTARTING too; with the job RUNNING, only the burn pages, saying
/// so. A deliberately wrong state makes promtool fail.
#[test]
fn a_job_that_is_not_running_while_its_probe_burns_pages() {
    let t = Tree::new();
    t.write(
        "probes/orders.yaml",
        &format!("{PROBE}job: {{ flink: 'http://flink:8081', name: enrich }}\n"),
    );
    let r = rules(&t, &[]);
    promtool_check_rules(&t.path().join("rules.yaml"));
    let burn = r["groups"][2]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alert"] == "SloProbeBudgetBurn")
        .unwrap();
    assert!(burn["annotations"]["job_state"].is_string(), "{burn}");
    let job_labels = json!({ "probe": "orders", "severity": "page", "flink_job": "enrich" });
    let burn_labels = json!({ "probe": "orders", "slo": "completeness", "severity": "page" });
    let state_series = |state: &str, values: &str| {
        json!({
            "series": format!("slo_probe_flink_job_state{{flink_job=\"enrich\",state=\"{state}\",site=\"eu\",instance=\"eu:9747\",job=\"slo-probe\"}}"),
            "values": values,
        })
    };
    let test = |running: bool, said: &str| {
        let job_alerts = if running {
            json!([])
        } else {
            json!([{
                "exp_labels": job_labels,
                "exp_annotations": expanded(annotations(&r, "SloProbeJobNotRunning", &job_labels), said, "eu", "10%"),
            }])
        };
        let burn_alerts: Vec<Value> = ["page", "ticket"]
            .iter()
            .map(|severity| {
                let mut labels = burn_labels.clone();
                labels["severity"] = json!(severity);
                json!({
                    "exp_labels": labels,
                    "exp_annotations": expanded(annotations(&r, "SloProbeBudgetBurn", &labels), said, "eu", "10%"),
                })
            })
            .collect();
        json!({
            "rule_files": ["rules.yaml"],
            "evaluation_interval": "30s",
            "tests": [{
                "name": "a job not running while its probe burns",
                "interval": "30s",
                "input_series": [
                    events("good", "0+27x40"),
                    events("bad", "0+3x40"),
                    state_series("RUNNING", if running { "1x40" } else { "0x40" }),
                    state_series("RESTARTING", if running { "0x40" } else { "1x40" }),
                ],
                "alert_rule_test": [
                    { "eval_time": "10m", "alertname": "SloProbeJobNotRunning", "exp_alerts": job_alerts },
                    { "eval_time": "10m", "alertname": "SloProbeBudgetBurn", "exp_alerts": burn_alerts },
                ],
            }],
        })
    };
    let (ok, out) = promtool_test(t.path(), &test(false, "RESTARTING"));
    assert!(ok, "{out}");
    let (ok, out) = promtool_test(t.path(), &test(true, "RUNNING"));
    assert!(ok, "{out}");
    let (ok, out) = promtool_test(t.path(), &test(false, "RUNNING"));
    assert!(!ok, "promtool accepted the wrong state:\n{out}");
}
