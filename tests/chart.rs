//! The Helm chart with a real helm (v4; `.ci/run` installs it in `.ci/tools`): `helm lint
//! --strict` and `helm template` with several values files, every rendered core resource checked
//! against the Kubernetes OpenAPI schemas (kubernetes-validate, offline), the rendered agent and
//! probe files accepted by `slo-probe check`, bad values refused by values.schema.json, and the
//! dashboard's queries checked against what the agent and its rules export.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Tree, run};
use serde::Deserialize;
use serde_json::Value;
use slo_probe::metric_names as names;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/slo-probe")
}

fn helm() -> PathBuf {
    common::infra::tool("SLO_PROBE_TEST_HELM", &[root().join(".ci/tools/helm")])
}

fn helm_run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` with these values files and flags: every document, parsed.
fn render(values: &[&str], flags: &[&str]) -> (String, Vec<Value>) {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.to_str().unwrap()];
    let files: Vec<String> = values
        .iter()
        .map(|v| chart.join("ci").join(v).display().to_string())
        .collect();
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    args.extend_from_slice(flags);
    let (ok, stdout, stderr) = helm_run(&args);
    assert!(ok, "helm template {values:?}: {stderr}");
    let docs = yaml_serde::Deserializer::from_str(&stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (stdout, docs)
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The generated rules for the chart's default probes, as `slo-probe rules` prints them.
fn default_rules(t: &Tree) -> PathBuf {
    let (_, docs) = render(&[], &[]);
    let probes = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "rel-slo-probe-probes")
        .unwrap()
        .clone();
    for (file, text) in probes["data"].as_object().unwrap() {
        t.write(&format!("probes/{file}"), text.as_str().unwrap());
    }
    let out = run(t.path(), &["rules"], &[]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    t.write("rules.yaml", &out.stdout)
}

/// The hardening every pod of the chart has.
fn check_pod(spec: &Value, what: &str) {
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(spec["automountServiceAccountToken"], false, "{what}");
    for c in spec["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{what}");
        for k in ["requests", "limits"] {
            assert!(c["resources"][k]["memory"].is_string(), "{what}: {k}");
        }
    }
}

/// `slo-probe check` on the agent file of `site` and the probe files, as rendered.
fn check_rendered_config(docs: &[Value], site: &str, env: &[(&str, &str)]) {
    let t = Tree::new();
    let configmaps = of_kind(docs, "ConfigMap");
    let agent = configmaps
        .iter()
        .find(|c| c["metadata"]["labels"]["slo-probe/site"] == site)
        .unwrap_or_else(|| panic!("no agent file for site {site}"));
    let text = agent["data"]["slo-probe.yaml"].as_str().unwrap();
    assert!(text.contains(&format!("site: {site}")), "{text}");
    t.write("agent/slo-probe.yaml", text);
    let probes = configmaps
        .iter()
        .find(|c| c["metadata"]["name"] == "rel-slo-probe-probes")
        .unwrap();
    for (file, text) in probes["data"].as_object().unwrap() {
        t.write(&format!("probes/{file}"), text.as_str().unwrap());
    }
    let out = run(
        t.path(),
        &[
            "check",
            "--config",
            "agent/slo-probe.yaml",
            "--probes",
            "probes",
        ],
        env,
    );
    assert_eq!(out.code(), 0, "{}{}", out.stdout, out.stderr);
}

/// Core resources against the Kubernetes 1.33 OpenAPI schemas, strictly (no unknown fields).
fn kubernetes_validate(rendered: &str) {
    let venv = root().join(".ci/venv/bin/kubernetes-validate");
    let bin = common::infra::tool("SLO_PROBE_TEST_KUBERNETES_VALIDATE", &[venv]);
    let t = Tree::new();
    let file = t.write("rendered.yaml", rendered);
    let out = Command::new(bin)
        .args(["-k", "1.33.0", "--strict", "--no-warn"])
        .arg(&file)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

#[test]
fn the_chart_lints_and_renders_valid_manifests_for_each_values_file() {
    let t = Tree::new();
    let rules = default_rules(&t);
    let rules_flag = format!("prometheusRule.rules={}", rules.display());
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for (values, flags) in [
        (vec![], vec![]),
        (vec!["multi-site-values.yaml"], vec![]),
        (
            vec!["monitoring-values.yaml"],
            vec!["--set-file", rules_flag.as_str()],
        ),
        (vec!["podmonitor-values.yaml"], vec![]),
    ] {
        let mut lint = vec!["lint", "--strict", chart];
        let files: Vec<String> = values.iter().map(|v| format!("{chart}/ci/{v}")).collect();
        for f in &files {
            lint.extend(["-f", f.as_str()]);
        }
        lint.extend_from_slice(&flags);
        let (ok, out, err) = helm_run(&lint);
        assert!(ok, "helm lint {values:?}: {out}{err}");
        assert!(out.contains("0 chart(s) failed"), "{out}");

        let (rendered, docs) = render(&values, &flags);
        kubernetes_validate(&rendered);
        for d in of_kind(&docs, "Deployment") {
            let pod = &d["spec"]["template"];
            check_pod(&pod["spec"], "deployment");
            let c = &pod["spec"]["containers"][0];
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["args"][0], "run");
            let sum = pod["metadata"]["annotations"]["checksum/config"].as_str();
            assert_eq!(sum.map(str::len), Some(64), "checksum/config on {d}");
        }
        let smoke = of_kind(&docs, "Pod");
        assert_eq!(smoke.len(), 1);
        assert_eq!(smoke[0]["metadata"]["annotations"]["helm.sh/hook"], "test");
        assert_eq!(smoke[0]["spec"]["restartPolicy"], "Never");
        assert_eq!(smoke[0]["spec"]["containers"][0]["args"][0], "smoke");
        check_pod(&smoke[0]["spec"], "helm test pod");
        assert_eq!(
            of_kind(&docs, "Service")[0]["spec"]["publishNotReadyAddresses"],
            true
        );
        let dashboard = of_kind(&docs, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
            .expect("a dashboard ConfigMap Grafana's sidecar finds");
        let json: Value =
            serde_json::from_str(dashboard["data"]["slo-probe.json"].as_str().unwrap()).unwrap();
        assert_eq!(json["uid"], "slo-probe");
        match values.first().copied() {
            None => {
                assert_eq!(of_kind(&docs, "Deployment").len(), 1);
                check_rendered_config(&docs, "default", &[]);
                // inside the cluster only, and open to it unless a policy is asked for
                assert_eq!(of_kind(&docs, "Service")[0]["spec"]["type"], "ClusterIP");
                assert!(of_kind(&docs, "NetworkPolicy").is_empty());
            }
            Some("multi-site-values.yaml") => {
                let deployments = of_kind(&docs, "Deployment");
                let sites: Vec<(&str, i64)> = deployments
                    .iter()
                    .map(|d| {
                        (
                            d["spec"]["template"]["metadata"]["labels"]["slo-probe/site"]
                                .as_str()
                                .unwrap(),
                            d["spec"]["replicas"].as_i64().unwrap(),
                        )
                    })
                    .collect();
                assert_eq!(sites, [("eu-west-1a", 2), ("eu-west-1b", 2)]);
                let c = &deployments[0]["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(
                    c["env"][0]["valueFrom"]["secretKeyRef"]["name"],
                    "kafka-credentials"
                );
                // secrets stay references: to the environment, filled from existing Secrets
                assert!(rendered.contains("sasl.password: ${KAFKA_PASSWORD}"));
                assert!(of_kind(&docs, "Secret").is_empty());
                let env = [
                    ("KAFKA_PASSWORD", "x"),
                    ("ORDERS_PG_DSN", "host=warehouse user=slo_probe"),
                ];
                for site in ["eu-west-1a", "eu-west-1b"] {
                    check_rendered_config(&docs, site, &env);
                }
            }
            Some("podmonitor-values.yaml") => {
                // one way of scraping: the pods directly, not also through the Service
                assert!(of_kind(&docs, "ServiceMonitor").is_empty());
                let m = of_kind(&docs, "PodMonitor");
                assert_eq!(m.len(), 1);
                assert_eq!(m[0]["metadata"]["labels"]["release"], "prometheus");
                assert_eq!(m[0]["spec"]["podMetricsEndpoints"][0]["interval"], "15s");
            }
            Some(_) => {
                // only Prometheus' namespace reaches the HTTP port of the agents' pods
                let policy = of_kind(&docs, "NetworkPolicy");
                assert_eq!(policy.len(), 1);
                let spec = &policy[0]["spec"];
                assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
                let pod_labels =
                    &of_kind(&docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"];
                for (k, v) in spec["podSelector"]["matchLabels"].as_object().unwrap() {
                    assert_eq!(&pod_labels[k], v, "the policy selects the agents");
                }
                let rule = &spec["ingress"][0];
                assert_eq!(
                    rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                    "monitoring"
                );
                assert_eq!(
                    rule["ports"],
                    serde_json::json!([{ "port": "http", "protocol": "TCP" }])
                );
                assert!(of_kind(&docs, "PodMonitor").is_empty());
                let m = of_kind(&docs, "ServiceMonitor");
                assert_eq!(m.len(), 1);
                assert_eq!(m[0]["metadata"]["labels"]["release"], "prometheus");
                let rule = of_kind(&docs, "PrometheusRule");
                let generated: Value =
                    yaml_serde::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
                assert_eq!(rule[0]["spec"]["groups"], generated["groups"]);
            }
        }
    }
}

#[test]
fn config_changes_roll_the_pods_and_nothing_else_does() {
    let checksum = |flags: &[&str]| {
        let (_, docs) = render(&[], flags);
        of_kind(&docs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
            ["checksum/config"]
            .clone()
    };
    let base = checksum(&[]);
    assert_ne!(
        base,
        checksum(&["--set", "probes.orders-freshness.interval=5s"])
    );
    assert_ne!(
        base,
        checksum(&["--set", "agent.clusters.primary.bootstrap_servers=k:9092"])
    );
    assert_eq!(
        base,
        checksum(&[
            "--set",
            "sites[0].name=default",
            "--set",
            "sites[0].replicas=3"
        ])
    );
}

#[test]
fn bad_values_are_refused_by_the_schema() {
    let chart = chart();
    for (flags, error) in [
        (vec!["--set", "port=0"], "at '/port'"),
        (vec!["--set", "agent.site=x"], "at '/agent'"),
        (vec!["--set", "sites=null"], "missing property 'sites'"),
        (
            vec!["--set", "sites[0].name=Bad_Site,sites[0].replicas=1"],
            "at '/sites/0/name'",
        ),
        (
            vec!["--set", "securityContext.readOnlyRootFilesystem=false"],
            "readOnlyRootFilesystem",
        ),
        (
            vec!["--set", "podSecurityContext.runAsNonRoot=false"],
            "runAsNonRoot",
        ),
        (vec!["--set", "logFormat=xml"], "at '/logFormat'"),
        (vec!["--set", "replicaCount=3"], "replicaCount"),
        (vec!["--set", "env[0].name=X"], "at '/env/0'"),
        // a policy that lets nobody in would also cut off the scraper: it must name peers
        (
            vec!["--set", "networkPolicy.enabled=true"],
            "at '/networkPolicy/from'",
        ),
        // both monitors would scrape every pod twice
        (
            vec![
                "--set",
                "serviceMonitor.enabled=true,podMonitor.enabled=true",
            ],
            "at '/podMonitor/enabled'",
        ),
    ] {
        let mut args = vec!["template", "rel", chart.to_str().unwrap()];
        args.extend_from_slice(&flags);
        let (ok, _, stderr) = helm_run(&args);
        assert!(!ok, "{flags:?} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(error),
            "{flags:?}: {stderr}"
        );
    }
    // without the schema (helm --skip-schema-validation), the template still refuses both
    let (ok, _, stderr) = helm_run(&[
        "template",
        "rel",
        chart.to_str().unwrap(),
        "--skip-schema-validation",
        "--set",
        "serviceMonitor.enabled=true,podMonitor.enabled=true",
    ]);
    assert!(
        !ok && stderr.contains("every pod would be scraped twice"),
        "{stderr}"
    );
    // and the PrometheusRule needs the generated rules
    let (ok, _, stderr) = helm_run(&[
        "template",
        "rel",
        chart.to_str().unwrap(),
        "--set",
        "prometheusRule.enabled=true",
    ]);
    assert!(
        !ok && stderr.contains("slo-probe rules --format rules"),
        "{stderr}"
    );
}

#[test]
fn the_dashboard_queries_only_what_the_agent_and_its_rules_export() {
    let t = Tree::new();
    let rules = default_rules(&t);
    let rules: Value = yaml_serde::from_str(&std::fs::read_to_string(rules).unwrap()).unwrap();
    let mut known: BTreeSet<String> = BTreeSet::new();
    for n in names::ALL
        .iter()
        .chain(names::PER_PARTITION)
        .chain(names::SINK)
        .chain(names::CLOCKS)
        .chain(names::FLINK)
    {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            known.insert(format!("{n}{suffix}"));
        }
    }
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            if let Some(record) = r["record"].as_str() {
                known.insert(record.to_string());
            }
        }
    }
    let text = std::fs::read_to_string(chart().join("dashboards/slo-probe.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut exprs: Vec<String> = Vec::new();
    let mut titles = Vec::new();
    let mut ids = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string()),
        );
    }
    // every agent series is filtered by the site variable (recorded SLIs span every site)
    for e in &exprs {
        let agent_series = e.contains("slo_probe_");
        assert!(
            !agent_series || e.contains("site=~\"$site\""),
            "{e} ignores $site"
        );
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "probe", "site"]);
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("slo_probe") {
            let start = i + at;
            let end = start
                + e[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(e.len() - start);
            let name = &e[start..end];
            assert!(
                start == 0
                    || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_'),
                "{e}"
            );
            assert!(
                known.contains(name),
                "`{name}` in `{e}` is neither exported nor recorded"
            );
            used.insert(name.to_string());
            i = end;
        }
    }
    // every query is valid PromQL: promtool parses them as recording rules
    let record = |i: usize, e: &String| serde_json::json!({ "record": format!("dashboard:query:{i}"), "expr": e.replace("$probe", ".*").replace("$site", ".*") });
    let queries = serde_json::json!({ "groups": [{
        "name": "dashboard",
        "rules": exprs.iter().filter(|e| !e.starts_with("label_values")).enumerate().map(|(i, e)| record(i, e)).collect::<Vec<_>>(),
    }]});
    let file = t.write(
        "dashboard-queries.yaml",
        &yaml_serde::to_string(&queries).unwrap(),
    );
    let out = Command::new(common::infra::promtool())
        .args(["check", "rules", "--lint=none"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // the panels an on-call needs
    for want in [
        "availability",
        "p50 to p999",
        "freshness",
        "outcomes",
        "burn rate",
        "budget",
        "where the time goes",
        "clock skew",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no {want} panel: {titles:?}"
        );
    }
    for metric in [
        names::AVAILABILITY,
        names::E2E_LATENCY,
        names::FRESHNESS,
        names::RECORDS,
        "slo_probe:slo_error_budget_remaining:ratio",
        "slo_probe:slo_errors:ratio_rate1h",
        names::HOP_LATENCY,
        names::CLOCK_SKEW,
        names::CLOCK_SKEW_MAX,
    ] {
        assert!(
            used.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
    // The hops of a probe are one stack (a panel per probe), so that on-call sees which part
    // of the end-to-end latency grew.
    let stacked = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal");
    let stacked = stacked.expect("a stacked panel");
    assert_eq!(stacked["repeat"], "probe", "one stack per probe");
    let exprs = stacked["targets"].as_array().unwrap();
    assert!(
        exprs[0]["expr"]
            .as_str()
            .unwrap()
            .contains(names::HOP_LATENCY),
        "{stacked}"
    );
}

/// The Dockerfile's instructions as BuildKit's parser reads them (the `dockerfile` wheel in
/// `.ci/venv` wraps moby/buildkit's parser): (instruction, values, flags).
fn dockerfile() -> Vec<(String, Vec<String>, Vec<String>)> {
    let python = common::infra::tool(
        "SLO_PROBE_TEST_PYTHON",
        &[root().join(".ci/venv/bin/python")],
    );
    let out = Command::new(python)
        .args([
            "-c",
            "import dockerfile, json, sys; print(json.dumps([[c.cmd, list(c.value), list(c.flags)] for c in dockerfile.parse_file(sys.argv[1])]))",
        ])
        .arg(root().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_image_matches_what_the_chart_expects() {
    let instructions = dockerfile();
    let stages: Vec<&Vec<String>> = instructions
        .iter()
        .filter(|(cmd, _, _)| cmd == "FROM")
        .map(|(_, v, _)| v)
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: {stages:?}");
    assert_eq!(stages[0][2], "build");
    assert!(
        stages[1][0].ends_with("-slim"),
        "a small runtime base: {stages:?}"
    );
    let runtime_at = instructions
        .iter()
        .rposition(|(cmd, _, _)| cmd == "FROM")
        .unwrap();
    let runtime = &instructions[runtime_at..];
    let find = |name: &str| -> Vec<&(String, Vec<String>, Vec<String>)> {
        runtime.iter().filter(|(cmd, _, _)| cmd == name).collect()
    };
    // the binary only, from the build stage
    let copies = find("COPY");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].2, ["--from=build"]);
    assert_eq!(copies[0].1[1], "/usr/local/bin/slo-probe");
    assert_eq!(find("ENTRYPOINT")[0].1, ["/usr/local/bin/slo-probe"]);
    // runs as the chart's user, on the chart's port
    let values: Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let sc = &values["podSecurityContext"];
    let user = format!("{}:{}", sc["runAsUser"], sc["runAsGroup"]);
    let users = find("USER");
    assert_eq!(users.len(), 1);
    assert_eq!(
        users[0].1,
        [user],
        "USER must match the chart's runAsUser:runAsGroup"
    );
    assert_eq!(find("EXPOSE")[0].1, [values["port"].to_string()]);
    // the runtime stage installs the libraries the binary links beyond glibc and libgcc
    let installs: String = find("RUN").iter().map(|(_, v, _)| v.join(" ")).collect();
    let ldd = Command::new("ldd").arg(common::BIN).output().unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout);
    for line in libs.lines() {
        let lib = line.split_whitespace().next().unwrap_or_default();
        let package = match lib {
            l if l.starts_with("libssl.so.3") || l.starts_with("libcrypto.so.3") => "libssl3",
            l if l.starts_with("libz.so.1") => "zlib1g",
            l if ["linux-vdso", "libgcc_s", "libm.", "libc.", "ld-linux"]
                .iter()
                .any(|k| l.contains(k)) =>
            {
                continue; // in every Debian base image
            }
            other => panic!("the binary links {other}: add its package to the runtime image"),
        };
        assert!(
            installs.contains(package),
            "{lib} needs {package} in the runtime image"
        );
    }
    // and the build stage copies what `cargo build --locked` needs (benches: a [[bench]] target)
    let build_copies: Vec<String> = instructions[..runtime_at]
        .iter()
        .filter(|(cmd, _, _)| cmd == "COPY")
        .flat_map(|(_, v, _)| v[..v.len() - 1].to_vec())
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "src", "benches"] {
        assert!(
            build_copies.iter().any(|c| c == needed),
            "{needed} not copied"
        );
    }
}
