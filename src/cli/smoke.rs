//! `slo-probe smoke`: a finite run whose verdict (text, JSON, JUnit, HTML) and exit code gate a
//! deploy, with its progress on the terminal.

use std::path::Path;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Level;

use super::{Common, DEFAULT_AGENT_FILE, Exit, Output, SmokeArgs, signals, start_error};
use crate::agent::{Agent, AgentOptions};
use crate::config::Config;
use crate::export::logging::{self, LogFormat};
use crate::outcome::Outcome;
use crate::probe::Probe;
use crate::probe::task::Plan;
use crate::report::html::Pictures;
use crate::report::{ProbeVerdict, RunResult, Verdict};

/// Why `smoke` refuses to run on the embedded cluster unasked: naming the agent file it looked
/// for, since a misnamed or misplaced file is the usual cause.
fn no_cluster(config: &Config) -> String {
    let fix = "give an agent file with `clusters` (--config FILE), or --embedded to check on the mock cluster inside slo-probe";
    match &config.agent.source {
        Some(path) => format!(
            "no cluster to check: the agent file {} defines no `clusters`; {fix}",
            path.display()
        ),
        None => {
            let here = std::env::current_dir().unwrap_or_default();
            let mut why = format!(
                "no cluster to check: no agent file (looked for {}, and no --config was given); {fix}",
                here.join(DEFAULT_AGENT_FILE).display()
            );
            for near in ["slo-probe.yml", "slo_probe.yaml", "slo_probe.yml"] {
                if Path::new(near).exists() {
                    why.push_str(&format!(" ({near} is here: did you mean --config {near}?)"));
                }
            }
            why
        }
    }
}

pub(super) async fn smoke(config: Config, common: &Common, args: &SmokeArgs) -> Exit {
    let mut signals = signals::Signals::new();
    let started = Instant::now();
    let embedded = common.embedded || config.is_zero_config();
    // A gate must never pass a pipeline it never touched: the mock cluster only when asked for.
    if config.is_zero_config() && !common.embedded {
        let why = no_cluster(&config);
        logging::say(
            common.log_format,
            Level::ERROR,
            &format!("slo-probe: {why}"),
            "no cluster to check",
            serde_json::json!({ "error": why }),
        );
        let verdict = Verdict::new(Vec::new(), started.elapsed(), false).config_error(why);
        return report(&verdict, args, common).unwrap_or(Exit::Config);
    }
    let plan = match (args.rounds, args.duration) {
        (Some(n), _) => Plan::Rounds(n),
        (None, Some(d)) => Plan::For(d),
        (None, None) => Plan::Rounds(3),
    };
    let opts = AgentOptions {
        plan,
        listen: common.listen,
        embedded: common.embedded,
    };
    let agent = match Agent::start(config, opts).await {
        Ok(a) => a,
        Err(e) => {
            let exit = start_error(common.log_format, &e);
            let verdict = Verdict::new(Vec::new(), started.elapsed(), embedded);
            let verdict = match exit {
                Exit::Config => verdict.config_error(e.to_string()),
                _ => verdict.could_not_run(e.to_string()),
            };
            return report(&verdict, args, common).unwrap_or(exit);
        }
    };
    // A job the probes name that is not running (or whose state cannot be read): the
    // pipeline cannot be judged, said at once rather than after the rounds.
    let stopped = agent.jobs().iter().find_map(|j| {
        let now = j.now().borrow().clone();
        (!now.running()).then(|| (j.name.clone(), format!("{} ({})", now.describe(), j.target)))
    });
    if let Some((job, why)) = stopped {
        let verdict = job_not_running(&agent, &job, &why, started, embedded, common);
        agent.shutdown(std::future::ready(())).await;
        return report(&verdict, args, common).unwrap_or(Exit::CouldNotRun);
    }
    let discovered = tokio::select! {
        d = agent.wait_discovered(args.connect_timeout) => Some(d),
        _ = signals.next() => None,
    };
    match discovered {
        None => {
            interrupted_note(common.log_format);
            let verdict =
                Verdict::new(verdicts(agent.probes()), started.elapsed(), embedded).interrupted();
            agent.shutdown(std::future::ready(())).await;
            return report(&verdict, args, common).unwrap_or(Exit::Interrupted);
        }
        Some(Err(stuck)) => {
            for (probe, error) in &stuck {
                let text = format!("slo-probe: probe {probe}: {error}");
                let fields = serde_json::json!({ "probe": probe, "error": error });
                logging::say(
                    common.log_format,
                    Level::ERROR,
                    &text,
                    "topic unreachable",
                    fields,
                );
            }
            let why = format!(
                "{} probe(s) could not reach their topic within {}",
                stuck.len(),
                humantime::format_duration(args.connect_timeout)
            );
            let text = format!("slo-probe: could not run: {why}");
            let fields = serde_json::json!({ "probes": stuck.len() });
            logging::say(
                common.log_format,
                Level::ERROR,
                &text,
                "could not run",
                fields,
            );
            let mut probes = verdicts(agent.probes());
            for p in &mut probes {
                if let Some((_, error)) = stuck.iter().find(|(name, _)| *name == p.name) {
                    p.error(format!(
                        "could not reach its topic within {}: {error}",
                        humantime::format_duration(args.connect_timeout)
                    ));
                } else {
                    p.error("not run: another probe could not reach its topic");
                }
            }
            let verdict = Verdict::new(probes, started.elapsed(), embedded).could_not_run(why);
            agent.shutdown(std::future::ready(())).await;
            return report(&verdict, args, common).unwrap_or(Exit::CouldNotRun);
        }
        Some(Ok(())) => {}
    }
    let progress = tokio::spawn(show_progress(
        agent.probes().to_vec(),
        plan,
        common.log_format,
    ));
    let mut refused = None;
    let mut ended = None;
    let interrupted = tokio::select! {
        _ = agent.wait_finished() => false,
        r = agent.wait_refused() => {
            refused = Some(r);
            false
        }
        e = agent.wait_job_ended() => {
            ended = Some(e);
            false
        }
        _ = signals.next() => {
            interrupted_note(common.log_format);
            true
        }
    };
    if let Some((probe, why)) = refused {
        // A configuration mistake found while running: no record's outcome is judged on it.
        progress.abort();
        let text = format!("slo-probe: probe {probe}: {why}");
        let fields = serde_json::json!({ "probe": probe, "error": why });
        logging::say(
            common.log_format,
            Level::ERROR,
            &text,
            "configuration problem",
            fields,
        );
        let mut probes = verdicts(agent.probes());
        for p in &mut probes {
            if p.name == probe {
                p.error(format!("its sink's answer cannot be verified: {why}"));
            } else {
                p.error("not run to the end: another probe's configuration is refused");
            }
        }
        let verdict = Verdict::new(probes, started.elapsed(), embedded)
            .config_error(format!("probe {probe}: {why}"));
        agent.shutdown(std::future::ready(())).await;
        return report(&verdict, args, common).unwrap_or(Exit::Config);
    }
    if let Some((job, why)) = ended {
        // The job ended mid-run: the records still in flight can only be lost.
        progress.abort();
        let verdict = job_not_running(&agent, &job, &why, started, embedded, common);
        agent.shutdown(std::future::ready(())).await;
        return report(&verdict, args, common).unwrap_or(Exit::CouldNotRun);
    }
    if interrupted {
        progress.abort();
    } else {
        // Every probe is finished, so each progress line is printed and the task ends.
        let _ = progress.await;
    }
    // The verdict is read once every task has stopped: a sink poll still running when the last
    // record settled is counted in it, as it ran.
    let probes = agent.probes().to_vec();
    let elapsed = started.elapsed();
    let trace_url = agent.config.agent.trace_url.clone();
    agent.shutdown(std::future::ready(())).await;
    let now = Instant::now();
    let pictures = probes.iter().map(|p| Pictures::of(p, now)).collect();
    let verdict =
        Verdict::new(verdicts(&probes), elapsed, embedded).with_pictures(pictures, trace_url);
    let verdict = if interrupted {
        verdict.interrupted()
    } else {
        verdict
    };
    report(&verdict, args, common).unwrap_or(match verdict.result {
        RunResult::Pass => Exit::Ok,
        RunResult::Fail => Exit::Failed,
        RunResult::Interrupted => Exit::Interrupted,
        RunResult::CouldNotRun => Exit::CouldNotRun,
        RunResult::ConfigError => Exit::Config,
    })
}

/// The verdict of a run stopped because job `job` is not running (`why`: its state and last
/// exception): it could not run (exit 2), naming the job; each probe through it says so.
fn job_not_running(
    agent: &Agent,
    job: &str,
    why: &str,
    started: Instant,
    embedded: bool,
    common: &Common,
) -> Verdict {
    let text = format!("slo-probe: job {job} is not RUNNING: {why}");
    let fields = serde_json::json!({ "flink_job": job, "error": why });
    logging::say(
        common.log_format,
        Level::ERROR,
        &text,
        "job not running",
        fields,
    );
    let mut probes = verdicts(agent.probes());
    for p in &mut probes {
        let through = agent
            .probes()
            .iter()
            .any(|q| q.name() == p.name && q.job().is_some_and(|j| j.name == job));
        if through {
            p.error(format!("its job {job} is not RUNNING: {why}"));
        } else {
            p.error(format!(
                "not run to the end: job {job} of another probe is not running"
            ));
        }
    }
    Verdict::new(probes, started.elapsed(), embedded)
        .could_not_run(format!("job {job} is not RUNNING: {why}"))
}

/// Each probe's verdict, as of now.
fn verdicts(probes: &[Arc<Probe>]) -> Vec<ProbeVerdict> {
    let now = Instant::now();
    probes
        .iter()
        .map(|p| ProbeVerdict::new(p, &p.snapshot(now)))
        .collect()
}

fn interrupted_note(format: LogFormat) {
    let text = "slo-probe: interrupted; reporting partial results";
    logging::say(
        format,
        Level::WARN,
        text,
        "interrupted; reporting partial results",
        serde_json::json!({}),
    );
}

/// Prints the verdict on stdout and writes `--report`; `Err`-like `Some(exit)` only when the
/// report cannot be written (exit 2), else `None` and the caller's exit code stands.
fn report(verdict: &Verdict, args: &SmokeArgs, common: &Common) -> Option<Exit> {
    let rendered = match args.output {
        Output::Text => verdict.to_text(),
        Output::Json => verdict.to_json(),
        Output::Junit => verdict.to_junit(),
        Output::Html => verdict.to_html(),
    };
    println!("{}", rendered.trim_end());
    let path = args.report.as_ref()?;
    (!write_report(verdict, path, common.log_format)).then_some(Exit::CouldNotRun)
}

/// Writes the verdict to `path` (JSON for `*.json`, JUnit for `*.xml`, HTML for `*.html`, text
/// otherwise); false
/// (after saying why) when it cannot.
pub(super) fn write_report(verdict: &Verdict, path: &Path, format: LogFormat) -> bool {
    let body = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => verdict.to_json(),
        Some("xml") => verdict.to_junit(),
        Some("html" | "htm") => verdict.to_html(),
        _ => verdict.to_text(),
    };
    match std::fs::write(path, body) {
        Ok(()) => true,
        Err(e) => {
            let text = format!("slo-probe: cannot write report {}: {e}", path.display());
            let fields =
                serde_json::json!({ "path": path.display().to_string(), "error": e.to_string() });
            logging::say(format, Level::ERROR, &text, "cannot write report", fields);
            false
        }
    }
}

/// Progress of each probe on stderr: on a terminal (text logs), a bar per probe with rounds
/// done, ok and lost so far, elapsed and remaining; otherwise one line per settled round (JSON
/// with `--log-format json`).
async fn show_progress(probes: Vec<Arc<Probe>>, plan: Plan, format: LogFormat) {
    use std::io::IsTerminal as _;
    if format == LogFormat::Text && std::io::stderr().is_terminal() {
        return progress_bars(probes, plan).await;
    }
    let (total, rounds) = match plan {
        Plan::Rounds(n) => (n.to_string(), Some(n)),
        _ => ("?".into(), None),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for p in probes {
        let total = total.clone();
        tasks.spawn(async move {
            let mut rx = p.progress();
            let mut shown = 0;
            loop {
                let s = rx.borrow_and_update().clone();
                if s.rounds_completed > shown {
                    shown = s.rounds_completed;
                    let c = s.counts;
                    let (ok, lost, corrupt, send_failed) = (
                        c.get(Outcome::Ok),
                        c.get(Outcome::Lost),
                        c.get(Outcome::Corrupt),
                        c.get(Outcome::SendFailed),
                    );
                    let text = format!(
                        "[{}] round {shown}/{total} settled: {ok} ok, {lost} lost, {corrupt} corrupt, {send_failed} send_failed, {} in flight",
                        p.name(),
                        c.in_flight
                    );
                    let fields = serde_json::json!({
                        "probe": p.name(), "round": shown, "rounds": rounds, "ok": ok, "lost": lost,
                        "corrupt": corrupt, "send_failed": send_failed, "in_flight": c.in_flight,
                    });
                    logging::say(format, Level::INFO, &text, "round settled", fields);
                }
                if s.finished || rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// One `indicatif` bar per probe, redrawn as its rounds settle.
async fn progress_bars(probes: Vec<Arc<Probe>>, plan: Plan) {
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>16} [{bar:30}] {pos}/{len} rounds  {msg}  {elapsed} elapsed, ~{eta} left",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let width = probes.iter().map(|p| p.name().len()).max().unwrap_or(0);
    let mut tasks = tokio::task::JoinSet::new();
    for p in probes {
        let rounds = match plan {
            Plan::Rounds(n) => n,
            Plan::For(d) => d
                .as_nanos()
                .div_ceil(p.config.interval.as_nanos().max(1))
                .try_into()
                .unwrap_or(u64::MAX),
            Plan::Forever => 0,
        };
        let bar = bars.add(indicatif::ProgressBar::new(rounds));
        bar.set_style(style.clone());
        bar.set_prefix(format!("{:width$}", p.name()));
        tasks.spawn(async move {
            let mut rx = p.progress();
            loop {
                let s = rx.borrow_and_update().clone();
                let c = s.counts;
                bar.set_position(s.rounds_completed);
                bar.set_message(format!(
                    "{} ok, {} lost, {} corrupt, {} in flight",
                    c.get(Outcome::Ok),
                    c.get(Outcome::Lost),
                    c.get(Outcome::Corrupt),
                    c.in_flight
                ));
                if s.finished || rx.changed().await.is_err() {
                    bar.finish();
                    break;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
