//! `slo-probe rules`: Prometheus recording and alerting rules for the probes' SLOs, after the
//! multiwindow, multi-burn-rate alerts of Google's SRE workbook (chapter 5, "Alerting on SLOs").
//!
//! - SLI error ratios of every probe and SLO over 5m, 30m, 1h, 2h, 6h, 1d, 3d and each SLO's own
//!   window, from `slo_probe_slo_events_total` (the agent's ground truth, summed over replicas).
//! - Per SLO: its objective and the error budget left over its window, as recorded series.
//! - Per SLO, two alerts: `SloProbeBudgetBurn` with severity `page` (2% of a 30-day budget in
//!   1h, confirmed over 5m; or 5% in 6h, confirmed over 30m) and `ticket` (10% in 1d over 2h;
//!   or 10% in 3d over 6h). The burn-rate factors are derived from the SLO's window: for 30d
//!   they are the workbook's 14.4, 6, 3 and 1.
//! - Per probe: `SloProbeAbsent` when the probe's metrics are missing for 10 minutes, and
//!   `SloProbeNotSending` when an agent schedules no record of the probe, or more than half of
//!   its records fail to send (cluster unreachable, topic missing, authorization), so that a
//!   probe without an availability SLO still pages when it measures nothing.
//!
//! SLIs are summed over every replica and site (`sum by (probe, slo)`): the SLO is the
//! pipeline's, wherever it is seen from. Each burn alert names the site with the highest error
//! ratio over its long window (annotation `worst_site`, and in its description).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::{ProbeConfig, SloConfig};
use crate::export::metrics::names;

mod export;
pub mod rate;

/// Windows every SLI ratio is recorded over, besides each SLO's own window.
pub const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// How long a probe's metrics must be missing before `SloProbeAbsent` fires.
pub const ABSENT_FOR: &str = "10m";

/// How long an agent must send nothing before `SloProbeNotSending` fires.
pub const NOT_SENDING_FOR: &str = "1m";

/// Share of a probe's records failing to send (over the not-sending window) that counts as
/// sending nothing.
pub const NOT_SENDING_SHARE: f64 = 0.5;

/// (severity, budget share, long window, short window) of each burn-rate condition.
const CONDITIONS: [(&str, f64, &str, &str); 4] = [
    ("page", 0.02, "1h", "5m"),
    ("page", 0.05, "6h", "30m"),
    ("ticket", 0.10, "1d", "2h"),
    ("ticket", 0.10, "3d", "6h"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RulesFormat {
    /// A plain Prometheus rules file (`rule_files:`).
    Rules,
    /// A `PrometheusRule` resource for the Prometheus Operator.
    PrometheusRule,
    /// OpenSLO v1 `SLO` documents, one per probe SLO (no alerts: the tool makes its own).
    Openslo,
    /// Sloth `prometheus/v1` specs, one per probe, for `sloth generate`.
    Sloth,
}

#[derive(Debug, Clone)]
pub struct RulesOptions {
    pub format: RulesFormat,
    /// `metadata.name` of a `PrometheusRule`.
    pub name: String,
    /// `metadata.namespace` of a `PrometheusRule`, when given.
    pub namespace: Option<String>,
    /// Labels added to the `PrometheusRule` (e.g. `release: prometheus` for its selector).
    pub labels: BTreeMap<String, String>,
    /// A runbook to link from every alert (`runbook_url`), besides the runbook text.
    pub runbook_url: Option<String>,
    /// For tests and demos: every SLO and burn-rate window, and the burn alerts' `for`, divided
    /// by this (60: an hour's burn in a minute). 1 in production.
    pub time_scale: u32,
}

/// The largest `--time-scale`: the shortest window (5m) stays 5s, five scrapes at 1s.
pub const MAX_TIME_SCALE: u32 = 60;

#[derive(Debug, Serialize)]
pub struct RuleFile {
    pub groups: Vec<Group>,
}

#[derive(Debug, Serialize)]
pub struct Group {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Rule {
    Record {
        record: String,
        expr: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
    },
    Alert {
        alert: String,
        expr: String,
        #[serde(rename = "for")]
        for_: String,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    },
}

impl Rule {
    /// Divides the windows of an SLO rule by `factor` (`--time-scale`): every range (`[1h]`)
    /// in its expression and annotations, and an alert's `for`. Recorded series keep the names
    /// of the windows they stand for. Agent-liveness alerts are left as they are.
    fn scale(&mut self, factor: u32) {
        match self {
            Rule::Record { expr, .. } => *expr = scale_ranges(expr, factor),
            Rule::Alert {
                alert,
                expr,
                for_,
                annotations,
                ..
            } => {
                if alert != "SloProbeBudgetBurn" && alert != "SloProbeJobNotRunning" {
                    return;
                }
                *expr = scale_ranges(expr, factor);
                *for_ = scaled(for_, factor);
                for text in annotations.values_mut() {
                    *text = scale_ranges(text, factor);
                }
                annotations.insert(
                    "time_scale".into(),
                    format!(
                        "{factor}: every window of this alert is divided by {factor} (slo-probe rules --time-scale, for tests and demos)"
                    ),
                );
            }
        }
    }
}

/// Whether `s` is a Prometheus duration of one unit (`5m`, `30d`).
fn is_window(s: &str) -> bool {
    s.len() >= 2
        && s[..s.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && matches!(s.as_bytes()[s.len() - 1], b's' | b'm' | b'h' | b'd' | b'w')
}

/// `window` divided by `factor`, as Prometheus writes it (`1h` / 60 = `1m`, `5m` / 7 =
/// `42857ms`).
fn scaled(window: &str, factor: u32) -> String {
    let ms = (seconds(window) * 1000.0 / f64::from(factor)).round() as u64;
    if ms.is_multiple_of(1000) {
        prometheus_duration(Duration::from_secs(ms / 1000))
    } else {
        format!("{ms}ms")
    }
}

/// Every range selector (`[5m]`) of `text` divided by `factor`.
fn scale_ranges(text: &str, factor: u32) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        if let Some(close) = rest.find(']')
            && is_window(&rest[..close])
        {
            out.push_str(&scaled(&rest[..close], factor));
            rest = &rest[close..];
        }
    }
    out.push_str(rest);
    out
}

/// The recorded SLI error ratio over `window`.
pub fn error_ratio(window: &str) -> String {
    format!("slo_probe:slo_errors:ratio_rate{window}")
}

pub const OBJECTIVE: &str = "slo_probe:slo_objective:ratio";
pub const BUDGET_REMAINING: &str = "slo_probe:slo_error_budget_remaining:ratio";

/// A duration the way Prometheus writes it (`30d`, `6h`, `90m`, `45s`).
pub fn prometheus_duration(d: Duration) -> String {
    let s = d.as_secs().max(1);
    for (unit, secs) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

fn seconds(window: &str) -> f64 {
    let (n, unit) = window.split_at(window.len() - 1);
    let n: f64 = n.parse().expect("a Prometheus duration");
    n * match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => unreachable!("windows are written by prometheus_duration"),
    }
}

/// The burn rate at which `share` of the budget of an SLO `window` long is spent in `long`.
pub fn burn_factor(share: f64, window: Duration, long: &str) -> f64 {
    share * window.as_secs_f64() / seconds(long)
}

/// Numbers in PromQL without float noise (14.4, not 14.399999999999999).
fn num(x: f64) -> String {
    let rounded = (x * 1e9).round() / 1e9;
    format!("{rounded}")
}

/// Every rule for these probes.
pub fn generate(probes: &[ProbeConfig], opts: &RulesOptions) -> RuleFile {
    let mut windows: Vec<String> = WINDOWS.iter().map(|w| w.to_string()).collect();
    for slo in probes.iter().flat_map(|p| &p.slos) {
        let w = prometheus_duration(slo.window);
        if !windows.contains(&w) {
            windows.push(w);
        }
    }
    let sli: Vec<Rule> = windows
        .iter()
        .map(|w| Rule::Record {
            record: error_ratio(w),
            expr: format!(
                "sum by (probe, slo) (rate({events}{{result=\"bad\"}}[{w}]))\n/\nsum by (probe, slo) (rate({events}[{w}]))",
                events = names::SLO_EVENTS
            ),
            labels: BTreeMap::new(),
        })
        .collect();
    let mut budget = Vec::new();
    let mut alerts = Vec::new();
    for p in probes {
        for slo in &p.slos {
            let labels = BTreeMap::from([
                ("probe".to_string(), p.name.clone()),
                ("slo".to_string(), slo.name.clone()),
            ]);
            let selector = format!("{{probe=\"{}\", slo=\"{}\"}}", p.name, slo.name);
            let allowed = 1.0 - slo.objective;
            budget.push(Rule::Record {
                record: OBJECTIVE.into(),
                expr: format!("vector({})", num(slo.objective)),
                labels: labels.clone(),
            });
            budget.push(Rule::Record {
                record: BUDGET_REMAINING.into(),
                expr: format!(
                    "1 - {}{selector} / {}",
                    error_ratio(&prometheus_duration(slo.window)),
                    num(allowed)
                ),
                labels: labels.clone(),
            });
            for severity in ["page", "ticket"] {
                alerts.push(burn_alert(p, slo, severity, &selector, opts));
            }
        }
        if let Some(job) = &p.job
            && !p.slos.is_empty()
        {
            alerts.push(job_not_running_alert(p, job, opts));
        }
        alerts.push(absent_alert(p, opts));
        alerts.push(not_sending_alert(p, opts));
    }
    let (mut sli, mut budget, mut alerts) = (sli, budget, alerts);
    if opts.time_scale > 1 {
        // The SLO machinery runs on a compressed clock; whether an agent sends at all
        // (SloProbeNotSending, SloProbeAbsent) is judged on the wall clock.
        for rule in sli.iter_mut().chain(&mut budget).chain(&mut alerts) {
            rule.scale(opts.time_scale);
        }
    }
    RuleFile {
        groups: vec![
            Group {
                name: "slo-probe-sli".into(),
                rules: sli,
            },
            Group {
                name: "slo-probe-budget".into(),
                rules: budget,
            },
            Group {
                name: "slo-probe-alerts".into(),
                rules: alerts,
            },
        ],
    }
}

fn burn_alert(
    p: &ProbeConfig,
    slo: &SloConfig,
    severity: &str,
    selector: &str,
    opts: &RulesOptions,
) -> Rule {
    let allowed = 1.0 - slo.objective;
    let window = prometheus_duration(slo.window);
    let conditions: Vec<(f64, f64, &str, &str)> = CONDITIONS
        .iter()
        .filter(|c| c.0 == severity)
        .map(|&(_, share, long, short)| (share, burn_factor(share, slo.window, long), long, short))
        .collect();
    // A page can also require a minimum of bad events in its long window (`min_bad_events`),
    // so that a probe sending few records does not page on one or two (`increase` extrapolates
    // to the window's edges: rounded to whole events).
    let min_bad = slo.min_bad_events.filter(|_| severity == "page");
    let expr = conditions
        .iter()
        .map(|(_, factor, long, short)| {
            let threshold = num(factor * allowed);
            let enough = min_bad.map_or(String::new(), |n| {
                format!(
                    "\nand on (probe, slo)\n  round(sum by (probe, slo) (increase({events}{{probe=\"{}\", slo=\"{}\", result=\"bad\"}}[{long}]))) >= {n}",
                    p.name,
                    slo.name,
                    events = names::SLO_EVENTS
                )
            });
            format!(
                "(\n  {}{selector} > {threshold}\nand\n  {}{selector} > {threshold}{enough}\n)",
                error_ratio(long),
                error_ratio(short)
            )
        })
        .collect::<Vec<_>>()
        .join("\nor\n");
    let how = conditions
        .iter()
        .map(|(share, factor, long, short)| {
            let enough = min_bad.map_or(String::new(), |n| format!(", at least {n} bad events"));
            format!(
                "{}% of the {window} budget in {long} (burn rate {}, confirmed over {short}{enough})",
                num(share * 100.0),
                num(*factor)
            )
        })
        .collect::<Vec<_>>()
        .join(" or ");
    let objective = num(slo.objective * 100.0);
    // The long window of the alert's fastest condition: where the worst site is looked for.
    let long = conditions.first().map_or("1h", |c| c.2);
    let worst = worst_site(p, slo, long);
    let what = match slo.sli {
        crate::config::Sli::Latency { below } => format!(
            "records verified within {}",
            humantime::format_duration(below)
        ),
        crate::config::Sli::Completeness => "records verified intact within the timeout".into(),
        crate::config::Sli::Availability => "records sent and verified intact".into(),
    };
    let mut annotations = BTreeMap::from([
        (
            "summary".to_string(),
            format!(
                "{}: SLO {} is burning its error budget too fast ({severity})",
                p.name, slo.name
            ),
        ),
        (
            "description".to_string(),
            format!(
                "Probe {} (topic {}) has objective {objective}% {what} over {window}, counted over every site. Errors are spending the budget at: {how}. Worst site over {long}: {worst}.",
                p.name, p.topic
            ),
        ),
        ("worst_site".to_string(), worst_site_name(p, slo, long)),
        ("runbook".to_string(), runbook(p)),
    ]);
    if let Some(job) = &p.job {
        // What the job was doing when the alert fired: the first thing to tell Kafka, job and
        // sink apart.
        annotations.insert("job_state".into(), job_state(&job.name));
        if let Some(d) = annotations.get_mut("description") {
            d.push_str(&format!(
                " Its records go through Flink job {}, which was {} when this was evaluated.",
                job.name,
                job_state(&job.name)
            ));
        }
    }
    if let Some(url) = &opts.runbook_url {
        annotations.insert("runbook_url".into(), url.clone());
    }
    Rule::Alert {
        alert: "SloProbeBudgetBurn".into(),
        expr,
        // The short window already confirms the burn is current; a short `for` rides out a
        // single evaluation's noise.
        for_: "2m".into(),
        labels: alert_labels(p, Some(slo), severity),
        annotations,
    }
}

/// Alert template text: the state of Flink job `job` as the agents' newest polls found it
/// (`RUNNING`, `RESTARTING`, ...), or why it is not known.
fn job_state(job: &str) -> String {
    format!(
        "{{{{ range query `max by (state) ({}{{flink_job=\"{job}\"}}) == 1` }}}}{{{{ .Labels.state }}}}{{{{ else }}}}UNKNOWN (no agent could read it from Flink's REST API){{{{ end }}}}",
        names::FLINK_JOB_STATE
    )
}

/// Pages when the job a probe's records go through is not running (or its state cannot be
/// read) while the probe burns its error budget (any of its SLOs over its 5m window faster
/// than the budget allows): the failing part is the job, not Kafka or the sink.
fn job_not_running_alert(
    p: &ProbeConfig,
    job: &crate::config::JobConfig,
    opts: &RulesOptions,
) -> Rule {
    let burning = p
        .slos
        .iter()
        .map(|slo| {
            format!(
                "{}{{probe=\"{}\", slo=\"{}\"}} > {}",
                error_ratio("5m"),
                p.name,
                slo.name,
                num(1.0 - slo.objective)
            )
        })
        .collect::<Vec<_>>()
        .join("\n  or\n  ");
    let expr = format!(
        "max({}{{flink_job=\"{}\", state=\"RUNNING\"}}) == 0\nand on ()\n(\n  {burning}\n)",
        names::FLINK_JOB_STATE,
        job.name
    );
    let mut annotations = BTreeMap::from([
        (
            "summary".to_string(),
            format!(
                "{}: Flink job {} is {} while the probe burns its error budget",
                p.name,
                job.name,
                job_state(&job.name)
            ),
        ),
        (
            "description".to_string(),
            format!(
                "Probe {} (topic {}) goes through Flink job {} ({}), which is not RUNNING while the probe's records fail faster than its SLOs allow. The job is the failing part: its restarts (slo_probe_flink_job_restarts) and newest exception (GET /status: job.last_exception) say why.",
                p.name,
                p.topic,
                job.name,
                job.target()
            ),
        ),
        ("job_state".to_string(), job_state(&job.name)),
        (
            "runbook".to_string(),
            [
                "1. GET /status on an agent: the probe's job (state, restarts, last_exception) and failed_records (what each failed record met).".to_string(),
                format!("2. Flink's web UI or GET {}/jobs/overview: the job's exceptions and restarts; a record it cannot parse makes it restart into that record until it is skipped or the job fixed.", job.url),
                "3. UNKNOWN: no agent can read Flink's REST API (slo_probe_flink_poll_errors_total by reason); the job itself may be fine.".to_string(),
            ]
            .join("\n"),
        ),
    ]);
    if let Some(url) = &opts.runbook_url {
        annotations.insert("runbook_url".into(), url.clone());
    }
    let mut labels = alert_labels(p, None, "page");
    labels.insert("flink_job".into(), job.name.clone());
    Rule::Alert {
        alert: "SloProbeJobNotRunning".into(),
        expr,
        for_: "1m".into(),
        labels,
        annotations,
    }
}

/// The SLI error ratio of each site over `window`, highest first (PromQL).
fn by_site(p: &ProbeConfig, slo: &SloConfig, window: &str) -> String {
    let selector = format!("probe=\"{}\", slo=\"{}\"", p.name, slo.name);
    format!(
        "topk(1, sum by (site) (rate({events}{{{selector}, result=\"bad\"}}[{window}])) / sum by (site) (rate({events}{{{selector}}}[{window}])))",
        events = names::SLO_EVENTS
    )
}

/// Alert template text: the site with the highest error ratio over `window`, and that ratio.
fn worst_site(p: &ProbeConfig, slo: &SloConfig, window: &str) -> String {
    format!(
        "{{{{ range query `{}` }}}}{{{{ .Labels.site }}}} ({{{{ .Value | humanizePercentage }}}} of its events bad){{{{ end }}}}",
        by_site(p, slo, window)
    )
}

/// Alert template text: only the name of the worst site.
fn worst_site_name(p: &ProbeConfig, slo: &SloConfig, window: &str) -> String {
    format!(
        "{{{{ range query `{}` }}}}{{{{ .Labels.site }}}}{{{{ end }}}}",
        by_site(p, slo, window)
    )
}

/// The window over which "sends nothing" is judged: at least 5 minutes, and three intervals, so
/// that a slow probe between two rounds is not taken for a silent one.
pub fn not_sending_window(p: &ProbeConfig) -> String {
    prometheus_duration((p.interval * 3).max(Duration::from_secs(300)))
}

fn not_sending_alert(p: &ProbeConfig, opts: &RulesOptions) -> Rule {
    let w = not_sending_window(p);
    let sent = format!("{}{{probe=\"{}\"}}", names::RECORDS_SENT, p.name);
    let failed = format!(
        "{}{{probe=\"{}\", outcome=\"send_failed\"}}",
        names::RECORDS,
        p.name
    );
    // Per agent (no aggregation): one silent replica must not hide behind a healthy one.
    let expr = format!(
        "rate({sent}[{w}]) == 0\nor\n(\n  rate({failed}[{w}])\n/ ignoring(outcome)\n  rate({sent}[{w}])\n) > {}",
        num(NOT_SENDING_SHARE)
    );
    let mut annotations = BTreeMap::from([
        (
            "summary".to_string(),
            format!(
                "{}: the agent at site {{{{ $labels.site }}}} sends nothing",
                p.name
            ),
        ),
        (
            "description".to_string(),
            format!(
                "The agent {{{{ $labels.instance }}}} (site {{{{ $labels.site }}}}) scheduled no record of probe {} (topic {}) over {w}, or more than {}% of them failed to send: its cluster is unreachable, the topic is missing, or an ACL refuses it. Its SLOs measure nothing meanwhile.",
                p.name,
                p.topic,
                num(NOT_SENDING_SHARE * 100.0)
            ),
        ),
        (
            "runbook".to_string(),
            [
                "1. GET /readyz and /status on that agent: the probe's discovery_error, and its last_results' reasons (discovery, producer, backpressure), say why.".to_string(),
                format!(
                    "2. Can the agent resolve and reach the bootstrap servers of cluster {} (DNS, network policy, TLS)?",
                    p.cluster
                ),
                format!(
                    "3. Does topic {} exist, and may the agent's principal Describe and Write it (kafka-acls --list --topic {})?",
                    p.topic, p.topic
                ),
                "4. No record scheduled at all: the agent's log shows a task restarting (slo_probe_task_restarts_total); restart the agent.".to_string(),
            ]
            .join("\n"),
        ),
    ]);
    if let Some(url) = &opts.runbook_url {
        annotations.insert("runbook_url".into(), url.clone());
    }
    Rule::Alert {
        alert: "SloProbeNotSending".into(),
        expr,
        for_: NOT_SENDING_FOR.into(),
        labels: alert_labels(p, None, "page"),
        annotations,
    }
}

fn absent_alert(p: &ProbeConfig, opts: &RulesOptions) -> Rule {
    let mut annotations = BTreeMap::from([
        (
            "summary".to_string(),
            format!("{}: the probe's metrics are missing", p.name),
        ),
        (
            "description".to_string(),
            format!(
                "No {} series for probe {} for {ABSENT_FOR}: the agent is down, not scraped, or the probe was removed. Its SLOs are not being measured.",
                names::RECORDS_SENT,
                p.name
            ),
        ),
        (
            "runbook".to_string(),
            [
                "1. Is the slo-probe pod running and ready (kubectl get pods -l app.kubernetes.io/name=slo-probe)?",
                "2. Is it scraped (the Prometheus targets page; the ServiceMonitor or PodMonitor selector)?",
                "3. Was the probe renamed or removed from the configuration (slo-probe check)?",
            ]
            .join("\n"),
        ),
    ]);
    if let Some(url) = &opts.runbook_url {
        annotations.insert("runbook_url".into(), url.clone());
    }
    Rule::Alert {
        alert: "SloProbeAbsent".into(),
        expr: format!("absent({}{{probe=\"{}\"}})", names::RECORDS_SENT, p.name),
        for_: ABSENT_FOR.into(),
        labels: alert_labels(p, None, "page"),
        annotations,
    }
}

fn alert_labels(
    p: &ProbeConfig,
    slo: Option<&SloConfig>,
    severity: &str,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("probe".to_string(), p.name.clone()),
        ("severity".to_string(), severity.to_string()),
    ]);
    if let Some(slo) = slo {
        labels.insert("slo".into(), slo.name.clone());
    }
    for (k, v) in &p.tags {
        // Routing labels the team set on the probe (team, env...), unless they clash.
        if crate::config::check_name(k).is_ok() && !k.contains(['.', '-']) {
            labels
                .entry(format!("tag_{k}"))
                .or_insert_with(|| v.clone());
        }
    }
    labels
}

fn runbook(p: &ProbeConfig) -> String {
    [
        format!(
            "1. Graph sum by (outcome) (rate(slo_probe_records_total{{probe=\"{}\"}}[5m])): which outcome grows (lost, corrupt, send_failed), since when, and on which replicas.",
            p.name
        ),
        format!(
            "2. Slow rather than failing: graph max by (hop) (slo_probe_hop_latency_seconds{{probe=\"{}\", quantile=\"0.99\"}}) (the dashboard's hop panel): produce is Kafka taking the write, pipeline the job, sink the sink's write, read the read back. The hops come from the pipeline's own timestamps, no tracing needed; a rising slo_probe_clock_skew_total says a clock is off and the hops beside that timestamp are not to be trusted.",
            p.name
        ),
        "3. GET /status on the agent: last_results and slowest list the failing and slowest records with their trace ids, each slow one with its hops (hops_ms).".into(),
        format!(
            "4. lost: is the pipeline consuming topic {} (consumer lag; sink errors in slo_probe_verify_errors_total)? corrupt: each corrupt record's log line names the failed check. send_failed: the cluster refuses or cannot take writes.",
            p.topic
        ),
        "5. Only one replica affected and slo_probe_send_lag_seconds high: the agent is starved; restart or resize that replica.".into(),
    ]
    .join("\n")
}

/// The rules as YAML, in the requested format.
pub fn render(probes: &[ProbeConfig], opts: &RulesOptions) -> String {
    let yaml = match opts.format {
        RulesFormat::Rules => yaml_serde::to_string(&generate(probes, opts)),
        RulesFormat::PrometheusRule => {
            let mut labels = BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "slo-probe".to_string(),
            )]);
            labels.extend(opts.labels.clone());
            let mut metadata = serde_json::json!({ "name": opts.name, "labels": labels });
            if let Some(ns) = &opts.namespace {
                metadata["namespace"] = ns.clone().into();
            }
            yaml_serde::to_string(&serde_json::json!({
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": metadata,
                "spec": generate(probes, opts),
            }))
        }
        RulesFormat::Openslo => export::openslo(probes),
        RulesFormat::Sloth => export::sloth(probes, opts),
    };
    let mut header =
        "# Generated by `slo-probe rules` from the probes' SLOs; regenerate instead of editing.\n"
            .to_string();
    if opts.time_scale > 1 {
        header.push_str(&format!(
            "# TIME-SCALED by {}: every SLO window and burn alert runs {} times faster. For tests\n# and demos only, never for production.\n",
            opts.time_scale, opts.time_scale
        ));
    }
    format!(
        "{header}{}{}",
        rate::summary(probes),
        yaml.expect("rules serialise")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_divides_ranges_and_leaves_the_rest() {
        let text = "rate(x[5m]) / rate(y{a=\"[1h]\"}[1h]) and z[30d] or w[1h:5m] v[a]";
        assert_eq!(
            scale_ranges(text, 60),
            "rate(x[5s]) / rate(y{a=\"[1m]\"}[1m]) and z[12h] or w[1h:5m] v[a]"
        );
        assert_eq!(scaled("5m", 7), "42857ms");
        assert_eq!(scaled("2m", 60), "2s");
        assert!(is_window("30d") && !is_window("1h:5m") && !is_window("m") && !is_window("5"));
    }

    #[test]
    fn the_workbook_factors_for_a_30_day_window() {
        let w = Duration::from_secs(30 * 86_400);
        let got: Vec<String> = CONDITIONS
            .iter()
            .map(|(_, share, long, _)| num(burn_factor(*share, w, long)))
            .collect();
        assert_eq!(got, ["14.4", "6", "3", "1"]);
        // a 7-day window: same budget shares, smaller factors
        let w = Duration::from_secs(7 * 86_400);
        assert_eq!(num(burn_factor(0.02, w, "1h")), "3.36");
    }

    #[test]
    fn durations_are_written_the_prometheus_way() {
        for (secs, text) in [
            (2_592_000, "30d"),
            (604_800, "1w"),
            (5_400, "90m"),
            (45, "45s"),
        ] {
            assert_eq!(prometheus_duration(Duration::from_secs(secs)), text);
        }
    }
}
