//! The smoke report as one self-contained HTML file, and the live page `run` serves at `/`:
//! the same view of each probe (outcomes, SLOs, latency quantiles and where the time goes, the
//! latency distribution and a timeline as inline SVG, the slowest and the failed records with
//! their hops and links to their traces).
//!
//! Self-contained: no script, font, style sheet or image is loaded from anywhere, and a
//! Content-Security-Policy says so to the browser ([`CSP`]). Every value that came from a
//! config or a record goes through `maud`, which escapes it; the charts carry only numbers.
//! Each figure also carries a `data-field` naming the field of the smoke JSON or `/status` it
//! shows, so that what a browser renders can be checked against them.

use std::time::Duration;

use maud::{DOCTYPE, Markup, PreEscaped, html};
use tokio::time::Instant;

use super::{
    Events, HopsReport, LatencySummary, ProbeStatus, ProbeVerdict, RecordBrief, Records, RunResult,
    SloVerdict, Status, Verdict,
};
use crate::probe::{HistoryView, Probe};
use crate::stats::Distribution;

use super::chart;

/// Forbids loading anything: inline styles and the page itself only.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often the live page reloads itself.
pub const LIVE_REFRESH: Duration = Duration::from_secs(5);
/// Probes the live page draws charts for (the first ones); the others get their figures and
/// tables only, so that a page of a large agent stays cheap to serve.
pub const LIVE_CHARTS: usize = 50;

/// What a probe's charts are drawn from.
#[derive(Debug, Clone, Default)]
pub struct Pictures {
    pub history: HistoryView,
    /// End-to-end latency: of the whole run for a smoke run, of the window for `run`.
    pub distribution: Option<Distribution>,
}

impl Pictures {
    pub fn of(probe: &Probe, now: Instant) -> Self {
        let (history, distribution) = probe.pictures(now);
        Pictures {
            history,
            distribution,
        }
    }
}

/// A trace id as a link, when the agent file has a `trace_url` (`{trace_id}` replaced).
#[derive(Debug, Clone, Copy)]
pub struct TraceLinks<'a>(pub Option<&'a str>);

impl TraceLinks<'_> {
    fn show(&self, trace_id: &str) -> Markup {
        match self.0 {
            Some(template) => html! {
                a.trace href=(template.replace("{trace_id}", trace_id)) rel="noreferrer" { code { (trace_id) } }
            },
            None => html! { code.trace { (trace_id) } },
        }
    }
}

const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ccc; } h3 { font-size: 1rem; }
.banner { padding: 1rem; border-radius: 6px; font-size: 1.2rem; }
.PASS { background: #dff5e1; border: 1px solid #3a7d44; }
.FAIL, .INTERRUPTED, .COULD_NOT_RUN, .CONFIG_ERROR { background: #fde2e1; border: 1px solid #b3261e; }
.LIVE { background: #e8f0fe; border: 1px solid #1f5fbf; }
.embedded { background: #fff4ce; border: 1px solid #a66b00; padding: .5rem; margin-top: .5rem; }
table { border-collapse: collapse; margin: .5rem 0; } td, th { border: 1px solid #ddd; padding: .2rem .5rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: .5rem; } .charts figure { margin: 0; }
figcaption { font-size: .85rem; color: #555; }
.bad { color: #b3261e; font-weight: 600; } .good { color: #3a7d44; }
code { font-size: .85rem; }
"#;

fn page(title: &str, refresh: Option<Duration>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP);
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(r) = refresh {
                    meta http-equiv="refresh" content=(r.as_secs());
                }
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

fn field<T: std::fmt::Display>(name: &str, value: T) -> Markup {
    html! { td.n data-field=(name) { (value) } }
}

fn opt_ms(name: &str, v: Option<f64>) -> Markup {
    match v {
        Some(v) => html! { td.n data-field=(name) { (v) " ms" } },
        None => html! { td.n data-field=(name) { "-" } },
    }
}

fn records_table(r: &Records, e: &Events) -> Markup {
    html! {
        table.records {
            tr { th { "sent" } th { "ok" } th { "lost" } th { "corrupt" } th { "send_failed" } th { "in flight" }
                 th { "duplicates" } th { "reordered" } th { "late" } th { "foreign" } }
            tr {
                (field("records.sent", r.sent)) (field("records.ok", r.ok)) (field("records.lost", r.lost))
                (field("records.corrupt", r.corrupt)) (field("records.send_failed", r.send_failed))
                (field("records.in_flight", r.in_flight))
                (field("events.duplicates", e.duplicates)) (field("events.reordered", e.reordered))
                (field("events.late_arrivals", e.late_arrivals)) (field("events.foreign", e.foreign))
            }
        }
    }
}

fn latency_table(l: &LatencySummary, over: &str) -> Markup {
    html! {
        table.latency {
            tr { th { "end to end, " (over) } th { "records" } th { "p50" } th { "p90" } th { "p95" } th { "p99" } th { "p99.9" } th { "max" } }
            tr {
                td { "latency" }
                (field("latency.count", l.count))
                (opt_ms("latency.p50_ms", l.p50_ms)) (opt_ms("latency.p90_ms", l.p90_ms))
                (opt_ms("latency.p95_ms", l.p95_ms)) (opt_ms("latency.p99_ms", l.p99_ms))
                (opt_ms("latency.p999_ms", l.p999_ms)) (opt_ms("latency.max_ms", l.max_ms))
            }
        }
    }
}

/// Where the time goes: a row per hop (its figures named `hops.<hop>.<field>`), and the
/// records that could not be split.
fn hops_table(h: &HopsReport, over: &str) -> Markup {
    let named = |hop: &str, name: &str| format!("hops.{hop}.{name}");
    html! {
        @if !h.hops.is_empty() {
            table.hops {
                tr { th { "hop, " (over) } th { "ends at" } th { "records" } th { "p50" } th { "p99" } th { "max" }
                     th { "quantised" } th { "clock skew" } th { "largest skew" } }
                @for x in &h.hops {
                    tr data-hop=(x.hop) {
                        td { (x.hop) }
                        td { (x.ends_at) }
                        (field(&named(x.hop, "latency.count"), x.latency.count))
                        (opt_ms(&named(x.hop, "latency.p50_ms"), x.latency.p50_ms))
                        (opt_ms(&named(x.hop, "latency.p99_ms"), x.latency.p99_ms))
                        (opt_ms(&named(x.hop, "latency.max_ms"), x.latency.max_ms))
                        (opt_ms(&named(x.hop, "quantised_ms"), x.quantised_ms))
                        (field(&named(x.hop, "clock_skew"), x.clock_skew))
                        (opt_ms(&named(x.hop, "largest_skew_ms"), x.largest_skew_ms))
                    }
                }
            }
            @if h.unsplit > 0 {
                p.note { span data-field="hops.unsplit" { (h.unsplit) } " verified records not split into hops"
                    @if let Some(why) = &h.unsplit_reason { " (the last: " (why) ")" } }
            }
        }
    }
}

fn percent(v: f64) -> String {
    format!("{}%", (v * 1e4).round() / 1e4)
}

fn slo_table(slos: &[SloVerdict]) -> Markup {
    html! {
        @if !slos.is_empty() {
            table.slos {
                tr { th { "SLO" } th { "SLI" } th { "objective" } th { "good" } th { "bad" } th { "good %" }
                     th { "met" } th { "budget left" } th { "burn rate (1h / 6h / 3d)" } }
                @for s in slos {
                    tr data-slo=(s.name) {
                        td { (s.name) }
                        td { (s.sli) @if let Some(b) = s.latency_below_ms { " below " (b) " ms" } }
                        td.n data-field="objective_percent" { (s.objective_percent) "%" }
                        (field("good", s.good)) (field("bad", s.bad))
                        td.n data-field="good_percent" { @match s.good_percent { Some(p) => { (p) "%" }, None => "-" } }
                        td data-field="met" class=(if s.met { "good" } else { "bad" }) { (if s.met { "met" } else { "NOT MET" }) }
                        td.n data-field="budget_remaining" { (percent(s.budget_remaining * 100.0)) }
                        td.n {
                            @for (i, w) in ["1h", "6h", "3d"].iter().enumerate() {
                                @if i > 0 { " / " }
                                @match s.burn_rates.get(w).copied().flatten() { Some(r) => (format!("{r:.2}")), None => "-" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn record_rows(
    caption: &str,
    class: &str,
    records: &[RecordBrief],
    links: TraceLinks<'_>,
) -> Markup {
    html! {
        @if !records.is_empty() {
            h3 { (caption) }
            table class=(class) {
                tr { th { "record id" } th { "outcome" } th { "partition" } th { "offset" } th { "scheduled" }
                     th { "latency" } th { "hops" } th { "reason" } th { "trace id" } }
                @for r in records {
                    tr data-record=(r.record_id) {
                        td { code { (r.record_id) } }
                        td class=(if r.outcome == "ok" { "good" } else { "bad" }) { (r.outcome) }
                        td.n { (r.partition) }
                        td.n { @match r.offset { Some(o) => (o), None => "-" } }
                        td { (r.scheduled_at) }
                        td.n { @match r.latency_ms { Some(l) => { (l) " ms" }, None => "-" } }
                        td.hops {
                            @if let Some(hops) = &r.hops_ms {
                                @for (i, (hop, ms)) in hops.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    (hop) " " (ms) " ms"
                                }
                            }
                        }
                        td { @if let Some(k) = r.reason { (k) } @if let Some(d) = &r.detail { ": " (d) }
                             @if let Some(j) = &r.job { @if r.reason.is_some() { "; " } "while " (j) } }
                        td { (links.show(&r.trace_id)) }
                    }
                }
            }
        }
    }
}

/// The job a probe's records go through (its state, or why it is not known), then why its
/// records failed: each group's sentence, and the first of them with their traces.
fn why(w: &super::Why, links: TraceLinks<'_>) -> Markup {
    html! {
        @if let Some(j) = &w.job {
            p data-field="job" data-state=(j.state.unwrap_or("UNKNOWN")) class=(if j.running { "good" } else { "bad" }) {
                (j.summary)
                @if let Some(age) = j.last_checkpoint_age_seconds { "; last checkpoint " (format!("{age:.1}")) " s before the poll" }
            }
        }
        @if !w.failed_records.is_empty() {
            h3 { "Why records failed" }
            ul.why {
                @for f in &w.failed_records {
                    li data-outcome=(f.outcome) data-reason=(f.reason) {
                        strong { (f.records) " " (f.outcome) " (" (f.reason) ")" }
                        @for d in &f.details { br; (d.detail) " — " (d.records) " of " (f.records) " records" }
                        @if let Some(j) = &f.job { br; "while " (j) }
                        @if let Some(o) = &f.output { br; (o) }
                        @for r in &f.examples {
                            br; "e.g. " code { (r.record_id) } " partition " (r.partition)
                            @if let Some(o) = r.offset { " offset " (o) }
                            @if let (Some(t), Some(p), Some(o)) = (&r.read_topic, r.read_partition, r.read_offset) { ", read from " (t) " partition " (p) " offset " (o) }
                            " " (links.show(&r.trace_id))
                        }
                    }
                }
            }
        }
    }
}

fn charts(p: &Pictures, over: &str) -> Markup {
    html! {
        div.charts {
            @if let Some(d) = &p.distribution {
                figure.chart data-chart="quantiles" data-samples=(d.count) {
                    (PreEscaped(chart::quantile_curve(d)))
                    figcaption { "Latency by quantile, " (over) " (" (d.count) " records)" }
                }
                figure.chart data-chart="histogram" data-samples=(d.count) {
                    (PreEscaped(chart::histogram(d)))
                    figcaption { "Latency histogram, " (over) }
                }
            } @else {
                p.note { "No verified record yet: no latency to chart." }
            }
            @if !p.history.points.is_empty() {
                figure.chart data-chart="timeline" data-samples=(p.history.points.len()) {
                    (PreEscaped(chart::timeline(&p.history.points)))
                    figcaption {
                        "Every record: scheduled time against latency; corrupt (orange ▲) at its latency, lost (red ×) and unsent (grey ×) along the top."
                        @if p.history.dropped > 0 { " " (p.history.dropped) " records not drawn (beyond the bound)." }
                    }
                }
            }
        }
    }
}

fn tags(tags: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        @if !tags.is_empty() {
            p.tags { "tags: "
                @for (i, (k, v)) in tags.iter().enumerate() {
                    @if i > 0 { ", " }
                    code data-tag=(k) { (k) "=" (v) }
                }
            }
        }
    }
}

fn briefs(notes: &[crate::probe::Noted]) -> Vec<RecordBrief> {
    notes.iter().map(RecordBrief::from).collect()
}

fn probe_smoke(v: &ProbeVerdict, p: &Pictures, links: TraceLinks<'_>) -> Markup {
    html! {
        section.probe data-probe=(v.name) {
            h2 {
                "Probe " (v.name) " "
                span class=(if v.passed { "good" } else { "bad" }) data-field="passed" { (if v.passed { "passed" } else { "FAILED" }) }
            }
            p { "cluster " code { (v.cluster) } ", topic " code { (v.topic) } ", verified by " (v.verify)
                @if let Some(ms) = v.poll_interval_ms { " (polled every " (ms) " ms)" } }
            (tags(&v.tags))
            @if !v.failures.is_empty() || !v.errors.is_empty() {
                ul.failures { @for f in v.failures.iter().chain(&v.errors) { li.bad { (f) } } }
            }
            (why(&v.why, links))
            (records_table(&v.records, &v.events))
            (latency_table(&v.latency, "whole run"))
            (hops_table(&v.hops, "whole run"))
            p { "availability " span data-field="availability_percent" { @match v.availability_percent { Some(a) => { (a) "%" }, None => "-" } } }
            (slo_table(&v.slos))
            (charts(p, "whole run"))
            (record_rows(&format!("Failed records ({} in all, newest first)", p.history.failed_total), "failed", &briefs(&p.history.failed), links))
            (record_rows("Slowest records of the run", "slowest", &briefs(&p.history.slowest), links))
        }
    }
}

/// The smoke verdict as one HTML file; `pictures` in the order of `v.probes`.
pub fn smoke_report(v: &Verdict, pictures: &[Pictures], links: TraceLinks<'_>) -> String {
    let result = v.result.as_str();
    let class = serde_json::to_value(v.result)
        .ok()
        .and_then(|s| s.as_str().map(str::to_string))
        .unwrap_or_default();
    let failing: Vec<&ProbeVerdict> = v.probes.iter().filter(|p| !p.passed).collect();
    let body = html! {
        h1 { "slo-probe smoke report" }
        div class={ "banner " (class) } data-field="result" {
            strong { (result) } " "
            @match v.result {
                RunResult::Pass => { "every probe passed" }
                _ => { @if let Some(why) = &v.reason { (why) } @else { (failing.len()) " of " (v.probes.len()) " probes failed" } }
            }
            @if !failing.is_empty() {
                ul { @for p in &failing { @for f in p.failures.iter().chain(&p.errors) { li { "probe " (p.name) ": " (f) } } } }
            }
        }
        @if v.embedded { div.embedded { (super::EMBEDDED_NOTICE) } }
        p { "run of " (format!("{:.1}", v.duration_seconds)) " s, " (v.probes.len()) " probe(s), slo-probe " (env!("CARGO_PKG_VERSION")) }
        @for (i, probe) in v.probes.iter().enumerate() {
            (probe_smoke(probe, pictures.get(i).unwrap_or(&Pictures::default()), links))
        }
    };
    page(&format!("slo-probe smoke: {result}"), None, body)
}

fn probe_live(s: &ProbeStatus, pictures: Option<&Pictures>, links: TraceLinks<'_>) -> Markup {
    let none = Pictures::default();
    let p = pictures.unwrap_or(&none);
    html! {
        section.probe data-probe=(s.name) {
            h2 { "Probe " (s.name) }
            p { "cluster " code { (s.cluster) } ", topic " code { (s.topic) } ", verified by " (s.verify)
                ", partitions " (s.partitions.len()) ", rounds " (s.rounds_completed) }
            (tags(&s.tags))
            @if let Some(e) = &s.discovery_error { p.bad { "discovery: " (e) } }
            (why(&s.why, links))
            @if let Some(e) = &s.refused { p.bad data-field="refused" { "sink refused, nothing sent: " (e) } }
            @for (task, why) in &s.tasks_down { p.bad { "task " (task) " down: " (why) } }
            (records_table(&s.records, &s.events))
            (latency_table(&s.latency, "window"))
            (hops_table(&s.hops, "window"))
            p {
                "availability " span data-field="availability_ratio" { @match s.availability_ratio { Some(a) => (percent(a * 100.0)), None => "-" } }
                ", freshness " span data-field="freshness_seconds" { (format!("{:.1}", s.freshness_seconds)) " s" }
            }
            (slo_table(&s.slos))
            @if let Some(p) = pictures {
                (charts(p, "window"))
            } @else {
                p.note { "Charts are drawn for the first " (LIVE_CHARTS) " probes only." }
            }
            (record_rows("Slowest records of the window", "slowest", &s.slowest, links))
            (record_rows(&format!("Failed records ({} in all, newest first)", p.history.failed_total), "failed", &briefs(&p.history.failed), links))
            (record_rows("Last results", "last", &s.last_results, links))
        }
    }
}

/// The live page of a running agent; `pictures` in the order of `s.probes` (a probe without
/// them is shown without charts).
pub fn live_page(s: &Status, pictures: &[Pictures], links: TraceLinks<'_>) -> String {
    let body = html! {
        h1 { "slo-probe " (s.site) " / " (s.instance) }
        @if s.embedded { div.embedded data-field="embedded" { (super::EMBEDDED_AGENT_NOTICE) } }
        div.banner.LIVE {
            (s.probes.len()) " probe(s); reloads every " (LIVE_REFRESH.as_secs()) " s. The same figures as JSON: "
            code { "/status" } "."
        }
        @for (i, probe) in s.probes.iter().enumerate() {
            (probe_live(probe, pictures.get(i), links))
        }
    };
    page(&format!("slo-probe {}", s.site), Some(LIVE_REFRESH), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(names: &[&str]) -> Status {
        let now = Instant::now();
        let probes = names
            .iter()
            .map(|n| {
                let (p, _) = crate::testing::observed(&format!(
                    "name: {n}\ntags: {{ team: \"<script>alert(1)</script>\" }}\n"
                ));
                ProbeStatus::new(&p, &p.snapshot(now))
            })
            .collect();
        Status {
            version: "test",
            site: "<b>lab</b>".into(),
            instance: "i".into(),
            probes,
            clusters: Default::default(),
            embedded: false,
        }
    }

    #[test]
    fn the_live_page_of_an_agent_on_the_embedded_cluster_says_so_first() {
        let mut s = status(&["a"]);
        let page = live_page(&s, &[], TraceLinks(None));
        assert!(!page.contains(super::super::EMBEDDED_AGENT_NOTICE));
        s.embedded = true;
        let page = live_page(&s, &[], TraceLinks(None));
        let at = page.find(super::super::EMBEDDED_AGENT_NOTICE).unwrap();
        assert!(at < page.find("data-probe=").unwrap(), "{page}");
    }

    #[test]
    fn values_from_configs_are_escaped() {
        let page = live_page(&status(&["a"]), &[Pictures::default()], TraceLinks(None));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("team=&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;lab&lt;/b&gt;"));
        assert!(page.contains("http-equiv=\"Content-Security-Policy\""));
    }

    #[test]
    fn the_live_page_draws_charts_for_the_first_probes_only() {
        let page = live_page(
            &status(&["a", "b"]),
            &[Pictures::default()],
            TraceLinks(None),
        );
        assert_eq!(page.matches("Charts are drawn for the first").count(), 1);
        let b = page.find("data-probe=\"b\"").unwrap();
        assert!(page[b..].contains("Charts are drawn for the first 50 probes only."));
    }

    #[test]
    fn trace_ids_link_to_the_template() {
        let links = TraceLinks(Some("https://t.example/trace/{trace_id}?x=1&y=2"));
        let html = links.show("0af7651916cd43dd8448eb211c80319c").into_string();
        assert_eq!(
            html,
            "<a class=\"trace\" href=\"https://t.example/trace/0af7651916cd43dd8448eb211c80319c?x=1&amp;y=2\" rel=\"noreferrer\"><code>0af7651916cd43dd8448eb211c80319c</code></a>"
        );
        assert_eq!(
            TraceLinks(None).show("ab").into_string(),
            "<code class=\"trace\">ab</code>"
        );
    }
}
