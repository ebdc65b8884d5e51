//! The HTML smoke report and the live page, rendered by a real browser (headless Chromium).
//!
//! A pipeline of librdkafka's mock cluster and relays (one drops every few records, one
//! corrupts them) gives runs with lost and corrupt records. From the DOM Chromium renders, the
//! tests check that every number shown is the one the smoke JSON (or `/status`, read around
//! the page) gives, that each probe's charts were drawn with its records, that the failed
//! records are listed with links to their traces, that a tag holding markup is shown as text
//! and never run, and that the page requested nothing but itself (every request the page made,
//! as the DevTools protocol reports it). Each test takes a screenshot (into `target/`; with
//! `SLO_PROBE_UPDATE_SCREENSHOTS=1` also into `docs/`, where the README shows them).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::browser::Rendered;
use common::relay::{Picker, Spoiling};
use common::{Running, Tree, eventually, get};
use scraper::{ElementRef, Html, Selector};
use serde_json::Value;

const PARTITIONS: i32 = 3;
const PICK: Picker = Picker { seed: 5, one_in: 4 };
const TRACE_URL: &str = "https://grafana.example.com/explore?traceId={trace_id}";
/// A tag value a hostile or careless config could hold.
const MARKUP: &str = "<script>document.title='pwned'</script><b>bold</b>";

/// The spoiling pipelines, and the agent file and probe files of a test.
struct Pipeline(Spoiling);

impl Pipeline {
    fn start() -> Pipeline {
        Pipeline(Spoiling::start(1, PARTITIONS, PICK))
    }

    fn tree(&self, interval: &str, timeout: &str) -> Tree {
        let t = Tree::new();
        t.write(
            "slo-probe.yaml",
            &format!(
                "site: lab\ninstance: probe-1\ntrace_url: \"{TRACE_URL}\"\nclusters:\n  primary:\n    bootstrap_servers: {}\n",
                self.0.cluster.bootstrap_servers()
            ),
        );
        let extra = format!(
            "tags: {{ team: \"{MARKUP}\" }}\nslos:\n  - {{ name: completeness, objective: 99.9% }}\n  - {{ name: freshness, latency_below: 500ms, objective: 99% }}\n"
        );
        self.0.probe_files(&t, interval, timeout, &extra);
        t
    }
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| panic!("selector {s}: {e:?}"))
}

fn text(e: ElementRef<'_>) -> String {
    e.text().collect::<String>().trim().to_string()
}

/// The text of the one element under `scope` with `data-field=field`.
fn shown(scope: ElementRef<'_>, field: &str) -> String {
    let selector = sel(&format!("[data-field=\"{field}\"]"));
    let e = scope
        .select(&selector)
        .next()
        .unwrap_or_else(|| panic!("no {field} shown in {}", scope.html()));
    text(e)
}

/// What the page shows for a JSON number: the same number (followed by `unit`), or "-" for
/// null.
fn shows(shown: &str, json: &Value, unit: &str, what: &str) {
    match json {
        Value::Null => assert_eq!(shown, "-", "{what}"),
        Value::Number(n) => {
            let value: f64 = shown
                .strip_suffix(unit)
                .unwrap_or_else(|| panic!("{what}: `{shown}` without `{unit}`"))
                .parse()
                .unwrap_or_else(|e| panic!("{what}: `{shown}`: {e}"));
            assert_eq!(value, n.as_f64().unwrap(), "{what}: `{shown}` against {n}");
        }
        other => panic!("{what}: not a number: {other}"),
    }
}

fn section<'a>(doc: &'a Html, probe: &str) -> ElementRef<'a> {
    doc.select(&sel(&format!("section[data-probe=\"{probe}\"]")))
        .next()
        .unwrap_or_else(|| panic!("no section for probe {probe}"))
}

/// The counts, latency quantiles, hops and SLO figures of one probe's JSON (`records`,
/// `events`, `latency`, `hops`, `slos`), each compared with what the page shows.
/// The page says why records failed as `/status` does: each group of `failed_records`, with
/// its outcome, reason, count and sentences.
fn why_listed(scope: ElementRef<'_>, json: &Value) {
    let failed = json["failed_records"].as_array().unwrap();
    assert!(!failed.is_empty(), "{json:#}");
    let groups: Vec<ElementRef> = scope.select(&sel("ul.why li")).collect();
    assert_eq!(groups.len(), failed.len(), "{json:#}");
    for (g, f) in groups.iter().zip(failed) {
        let (outcome, reason) = (f["outcome"].as_str(), f["reason"].as_str());
        assert_eq!(
            (
                g.value().attr("data-outcome"),
                g.value().attr("data-reason")
            ),
            (outcome, reason)
        );
        let text: String = g.text().collect();
        let head = format!(
            "{} {} ({})",
            f["records"],
            outcome.unwrap(),
            reason.unwrap()
        );
        assert!(text.starts_with(&head), "{text} vs {head}");
        for d in f["details"].as_array().unwrap() {
            assert!(
                text.contains(d["detail"].as_str().unwrap()),
                "{text} vs {d}"
            );
        }
    }
}

fn same_figures(scope: ElementRef<'_>, json: &Value) {
    for f in ["sent", "ok", "lost", "corrupt", "send_failed", "in_flight"] {
        let field = format!("records.{f}");
        shows(&shown(scope, &field), &json["records"][f], "", &field);
    }
    for f in ["duplicates", "reordered", "late_arrivals", "foreign"] {
        let field = format!("events.{f}");
        shows(&shown(scope, &field), &json["events"][f], "", &field);
    }
    let count = &json["latency"]["count"];
    shows(&shown(scope, "latency.count"), count, "", "latency.count");
    for q in ["p50", "p90", "p95", "p99", "p999", "max"] {
        let field = format!("latency.{q}_ms");
        let value = &json["latency"][format!("{q}_ms")];
        shows(&shown(scope, &field), value, " ms", &field);
    }
    // where the time goes: every hop's figures
    let hops = json["hops"]["hops"].as_array().unwrap();
    assert!(!hops.is_empty(), "every probe has hops: {json}");
    for h in hops {
        let hop = h["hop"].as_str().unwrap();
        let field = format!("hops.{hop}.latency.count");
        shows(&shown(scope, &field), &h["latency"]["count"], "", &field);
        for q in ["p50", "p99", "max"] {
            let field = format!("hops.{hop}.latency.{q}_ms");
            shows(
                &shown(scope, &field),
                &h["latency"][format!("{q}_ms")],
                " ms",
                &field,
            );
        }
        let field = format!("hops.{hop}.clock_skew");
        shows(&shown(scope, &field), &h["clock_skew"], "", &field);
        let field = format!("hops.{hop}.largest_skew_ms");
        shows(&shown(scope, &field), &h["largest_skew_ms"], " ms", &field);
    }
    for slo in json["slos"].as_array().unwrap() {
        let name = slo["name"].as_str().unwrap();
        let row = scope
            .select(&sel(&format!("tr[data-slo=\"{name}\"]")))
            .next()
            .unwrap_or_else(|| panic!("no row for slo {name}"));
        shows(&shown(row, "good"), &slo["good"], "", name);
        shows(&shown(row, "bad"), &slo["bad"], "", name);
        shows(&shown(row, "good_percent"), &slo["good_percent"], "%", name);
        shows(
            &shown(row, "objective_percent"),
            &slo["objective_percent"],
            "%",
            name,
        );
        let met = if slo["met"].as_bool().unwrap() {
            "met"
        } else {
            "NOT MET"
        };
        assert_eq!(shown(row, "met"), met, "{name} met");
    }
}

/// Each chart of a probe: present, an SVG that drew something, over the stated samples.
fn charts_drawn(scope: ElementRef<'_>, latency_count: u64, settled: u64, ok: u64) {
    for (chart, samples) in [
        ("quantiles", latency_count),
        ("histogram", latency_count),
        ("timeline", settled),
    ] {
        let figure = scope
            .select(&sel(&format!("figure[data-chart=\"{chart}\"]")))
            .next()
            .unwrap_or_else(|| panic!("no {chart} chart"));
        assert_eq!(
            figure.value().attr("data-samples"),
            Some(samples.to_string().as_str()),
            "{chart} drawn over every record"
        );
        let svg = figure.select(&sel("svg")).next().expect("an SVG");
        let marks = svg
            .select(&sel("polyline, path, rect, circle, line"))
            .count();
        assert!(marks > 10, "{chart}: {marks} marks");
    }
    let timeline = scope
        .select(&sel("figure[data-chart=\"timeline\"] svg"))
        .next()
        .unwrap();
    assert_eq!(
        timeline.select(&sel("circle")).count() as u64,
        ok,
        "one point per verified record"
    );
}

/// The failed records' table: one row per failed record, each trace id a link to its trace.
fn failed_listed(scope: ElementRef<'_>, failed: u64) {
    let rows: Vec<ElementRef<'_>> = scope.select(&sel("table.failed tr[data-record]")).collect();
    assert_eq!(rows.len() as u64, failed.min(100), "failed records listed");
    for row in rows {
        let link = row.select(&sel("a.trace")).next().expect("a trace link");
        let trace_id = text(link);
        assert_eq!(trace_id.len(), 32, "{trace_id}");
        assert!(trace_id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            link.value().attr("href"),
            Some(TRACE_URL.replace("{trace_id}", &trace_id).as_str())
        );
    }
}

/// Markup from a config is text on the page: shown as written, nothing of it run or parsed.
fn markup_is_text(doc: &Html, scope: ElementRef<'_>) {
    let tag = scope
        .select(&sel("code[data-tag=\"team\"]"))
        .next()
        .expect("the team tag shown");
    assert_eq!(text(tag), format!("team={MARKUP}"));
    assert_eq!(
        tag.select(&sel("*")).count(),
        0,
        "no element parsed out of the tag"
    );
    assert_eq!(
        doc.select(&sel("script")).count(),
        0,
        "no script on the page"
    );
    let title = text(doc.select(&sel("title")).next().unwrap());
    assert!(!title.contains("pwned"), "{title}");
}

/// The page asked for nothing but itself.
fn nothing_requested(page: &Rendered, url: &str) {
    assert_eq!(page.requests, [url], "every request the page made");
}

fn csp_meta(doc: &Html) {
    let meta = doc
        .select(&sel("meta[http-equiv=\"Content-Security-Policy\"]"))
        .next()
        .expect("a Content-Security-Policy");
    assert!(
        meta.value()
            .attr("content")
            .unwrap()
            .starts_with("default-src 'none'")
    );
}

/// Opens `url` in the browser, with a screenshot into `target/` (and `docs/` when asked to
/// update them).
async fn open(url: &str, name: &str) -> Rendered {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join(name);
    let page = common::browser::open(url, (1280, 1800), Some(&target)).await;
    let png = std::fs::read(&target).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    if std::env::var_os("SLO_PROBE_UPDATE_SCREENSHOTS").is_some() {
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::copy(&target, root.join("docs").join(name)).unwrap();
    }
    page
}

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_report_shows_in_a_browser_what_the_json_says() {
    let pipeline = Pipeline::start();
    let t = pipeline.tree("100ms", "2s");
    let report: PathBuf = t.path().join("report.html");
    let (cwd, file) = (t.path().to_path_buf(), report.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        common::run(
            &cwd,
            &[
                "smoke", "--rounds", "12", "--output", "json", "--report", &file,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        out.code(),
        1,
        "lost and corrupt records fail the run\n{}",
        out.stderr
    );
    let verdict: Value = serde_json::from_str(&out.stdout).expect("a JSON verdict");

    let url = file_url(&report);
    let page = open(&url, "smoke-report.png").await;
    let doc = Html::parse_document(&page.dom);

    // The failure first: a banner with the result and why.
    let banner = doc
        .select(&sel("[data-field=\"result\"]"))
        .next()
        .expect("a banner");
    let first = doc.select(&sel("body > *")).nth(1).unwrap();
    assert_eq!(
        first.id(),
        banner.id(),
        "the verdict comes first, after the title"
    );
    assert!(text(banner).starts_with("FAIL"), "{}", text(banner));
    let probes = verdict["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 2);
    for p in probes {
        let name = p["name"].as_str().unwrap();
        let scope = section(&doc, name);
        for failure in p["failures"].as_array().unwrap() {
            assert!(
                text(banner).contains(failure.as_str().unwrap()),
                "{failure} in the banner"
            );
        }
        same_figures(scope, p);
        assert_eq!(shown(scope, "passed"), "FAILED");
        let records = &p["records"];
        let count = |f: &str| records[f].as_u64().unwrap();
        let failed = count("lost") + count("corrupt") + count("send_failed");
        assert!(failed > 0, "{name}: the relay spoiled some records");
        charts_drawn(
            scope,
            p["latency"]["count"].as_u64().unwrap(),
            count("sent"),
            count("ok"),
        );
        failed_listed(scope, failed);
        markup_is_text(&doc, scope);
    }
    csp_meta(&doc);
    nothing_requested(&page, &url);

    // `--output html` prints the same page on stdout.
    let cwd = t.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        common::run(&cwd, &["smoke", "--rounds", "1", "--output", "html"], &[])
    })
    .await
    .unwrap();
    assert!(
        out.stdout.starts_with("<!DOCTYPE html>"),
        "{}",
        &out.stdout[..out.stdout.len().min(300)]
    );
    assert!(
        out.stdout
            .contains("section class=\"probe\" data-probe=\"lossy\"")
    );
}

/// `/status` and the live page between two identical reads of `/status`: what the page
/// showed is what the agent had.
async fn steady_page(listen: &str) -> (Value, Rendered) {
    for _ in 0..10 {
        let (_, before) = get(listen, "/status").await;
        let page = open(&format!("http://{listen}/"), "live-page.png").await;
        let (_, after) = get(listen, "/status").await;
        let (before, after): (Value, Value) = (
            serde_json::from_str(&before).unwrap(),
            serde_json::from_str(&after).unwrap(),
        );
        let figures = |s: &Value| {
            s["probes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["records"].clone(),
                        p["latency"].clone(),
                        p["hops"].clone(),
                        p["slos"].clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        if figures(&before) == figures(&after) {
            return (after, page);
        }
    }
    panic!("the agent's figures changed during every page load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_in_a_browser_what_status_says() {
    let pipeline = Pipeline::start();
    // Rounds 2 s apart, each settled within 0.7 s: the figures hold still between.
    let t = pipeline.tree("2s", "700ms");
    let (mut agent, listen) = Running::run_ready(t.path(), &[], &[]);
    eventually(
        "both probes have a failed record, after 6 rounds",
        || async {
            let (_, body) = get(&listen, "/status").await;
            let s: Value = serde_json::from_str(&body).ok()?;
            s["probes"]
                .as_array()?
                .iter()
                .all(|p| {
                    p["rounds_completed"].as_u64() >= Some(6)
                        && (p["records"]["lost"].as_u64() > Some(0)
                            || p["records"]["corrupt"].as_u64() > Some(0))
                })
                .then_some(())
        },
    )
    .await;

    let response = common::http_client()
        .get(format!("http://{listen}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let (status, page) = steady_page(&listen).await;
    let doc = Html::parse_document(&page.dom);
    for p in status["probes"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let scope = section(&doc, name);
        same_figures(scope, p);
        let records = &p["records"];
        let count = |f: &str| records[f].as_u64().unwrap();
        let settled = count("sent") - count("in_flight");
        charts_drawn(
            scope,
            p["latency"]["count"].as_u64().unwrap(),
            settled,
            count("ok"),
        );
        failed_listed(
            scope,
            count("lost") + count("corrupt") + count("send_failed"),
        );
        why_listed(scope, p);
        markup_is_text(&doc, scope);
        let availability = p["availability_ratio"].as_f64().unwrap();
        let shown_availability = shown(scope, "availability_ratio");
        let value: f64 = shown_availability.trim_end_matches('%').parse().unwrap();
        assert!(
            (value - availability * 100.0).abs() < 1e-3,
            "{shown_availability} vs {availability}"
        );
    }
    csp_meta(&doc);
    nothing_requested(&page, &format!("http://{listen}/"));
    agent.signal("TERM");
    let _ = agent.wait_exit(Duration::from_secs(30));
}

/// The request check can fail: a page that loads an image from elsewhere is caught (without a
/// Content-Security-Policy the browser fetches it; the port is closed, the attempt is what
/// counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_loads_from_elsewhere_is_caught() {
    let t = Tree::new();
    let elsewhere = format!("http://127.0.0.1:{}/pixel.png", common::closed_port());
    let file = t.write(
        "leaky.html",
        &format!("<!DOCTYPE html><html><body><img src=\"{elsewhere}\"></body></html>"),
    );
    let url = file_url(&file);
    let page = common::browser::open(&url, (800, 600), None).await;
    assert_eq!(page.requests, [url, elsewhere]);
}
