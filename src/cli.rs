//! Commands: `run` (the daemon), `smoke` (a gate with an exit code), `check` (validate config),
//! `rules` (Prometheus rules for the probes' SLOs).
//! Every flag also reads an `SLO_PROBE_*` environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::agent::{Agent, AgentOptions, ShutdownReport, StartError};
use crate::config::{self, Config, Sources};
use crate::export::logging::{self, LogFormat};
use crate::outcome::Outcome;
use crate::probe::task::Plan;
use crate::report::Verdict;
use crate::rules::{self, RulesFormat, RulesOptions};
use tracing::Level;

mod smoke;

use smoke::{smoke, write_report};

/// Exit codes, the contract CI jobs rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `run` shut down cleanly; `smoke` passed; `check` found no problem.
    Ok = 0,
    /// `smoke`: an SLO or an assertion failed. `run`: in-flight records were not settled.
    Failed = 1,
    /// Could not run: cluster unreachable, port taken...
    CouldNotRun = 2,
    /// Bad configuration or command line (sysexits EX_CONFIG).
    Config = 78,
    /// Interrupted before the end (smoke prints partial results).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// `smoke --help`'s list of exit codes (see [`Exit`]).
const SMOKE_EXIT_CODES: &str = "\
Exit codes:
  0    passed: every SLO met and every assertion held
  1    failed: an SLO missed or an assertion failed (the verdict says which)
  2    could not run: a cluster, topic or sink unreachable, the port taken
  78   bad configuration or command line (every problem as file:line:col)
  130  interrupted (SIGINT/SIGTERM): partial results are printed";

#[derive(Debug, Parser)]
#[command(
    name = "slo-probe",
    version,
    about = "Proves a streaming pipeline is fresh, complete and correct, the way its clients see it."
)]
/// The command line.
pub struct Cli {
    #[command(flatten)]
    /// Flags every command takes.
    pub common: Common,
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
/// Flags every command takes (each also read from its `SLO_PROBE_*` variable).
pub struct Common {
    /// Agent file (clusters, site, listen address). Default: slo-probe.yaml when it exists;
    /// without a cluster, `run` uses the embedded cluster (with a warning) and `smoke` refuses.
    #[arg(long, global = true, env = "SLO_PROBE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Probe file or directory of probe files; repeatable (or comma-separated in the
    /// environment). Default: probes/
    #[arg(
        long = "probes",
        global = true,
        env = "SLO_PROBE_PROBES",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub probes: Vec<PathBuf>,
    /// Address for /metrics, /healthz, /readyz, /status (overrides the agent file; default
    /// 0.0.0.0:9747): host:port, :port for every interface, or a host name like
    /// localhost:9747. `smoke` serves them only when this is given.
    #[arg(
        long,
        global = true,
        env = "SLO_PROBE_LISTEN",
        value_name = "ADDR",
        value_parser = crate::config::parse_listen
    )]
    pub listen: Option<SocketAddr>,
    /// Run on the embedded (in-process mock) cluster instead of the configured clusters. `smoke`
    /// needs it to run without a cluster; every verdict then says so first.
    #[arg(
        long,
        global = true,
        env = "SLO_PROBE_EMBEDDED",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub embedded: bool,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "SLO_PROBE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `slo_probe=debug,librdkafka=warn`. Default: info for run,
    /// warn for smoke and check.
    #[arg(
        long,
        global = true,
        env = "SLO_PROBE_LOG_LEVEL",
        value_name = "FILTER"
    )]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
/// The commands.
pub enum Command {
    /// Run every probe until SIGTERM/SIGINT, then settle in-flight records and exit.
    Run,
    /// Run a few rounds, print a verdict and exit 0 (pass), 1 (fail), 2 (could not run).
    #[command(after_help = SMOKE_EXIT_CODES)]
    Smoke(SmokeArgs),
    /// Validate the agent and probe files; report every problem as file:line:col.
    Check,
    /// Print Prometheus recording rules and multiwindow burn-rate alerts for the probes' SLOs
    /// (or the SLOs as OpenSLO or Sloth documents).
    Rules(RulesArgs),
}

#[derive(Debug, Clone, Args)]
/// Flags of `rules`.
pub struct RulesArgs {
    /// A plain rules file, a PrometheusRule resource for the Prometheus Operator, or the SLOs
    /// as OpenSLO v1 documents or a Sloth spec.
    #[arg(
        long,
        env = "SLO_PROBE_RULES_FORMAT",
        value_enum,
        default_value = "rules"
    )]
    pub format: RulesFormat,
    /// metadata.name of the PrometheusRule.
    #[arg(long, env = "SLO_PROBE_RULES_NAME", default_value = "slo-probe")]
    pub name: String,
    /// metadata.namespace of the PrometheusRule.
    #[arg(long, env = "SLO_PROBE_RULES_NAMESPACE")]
    pub namespace: Option<String>,
    /// A label of the PrometheusRule, KEY=VALUE (e.g. release=prometheus); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = key_value)]
    pub labels: Vec<(String, String)>,
    /// Runbook linked from every alert (annotation runbook_url).
    #[arg(long, env = "SLO_PROBE_RUNBOOK_URL")]
    pub runbook_url: Option<String>,
    /// For tests and demos only: divide every SLO and burn-rate window, and the burn alerts'
    /// `for`, by FACTOR (60: an hour's burn pages in a minute); formats rules and
    /// prometheus-rule.
    #[arg(long, value_name = "FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(rules::MAX_TIME_SCALE)))]
    pub time_scale: u32,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Debug, Clone, Args)]
/// Flags of `smoke`.
pub struct SmokeArgs {
    /// Rounds per probe (one record per partition each). Default: 3.
    #[arg(long, env = "SLO_PROBE_ROUNDS", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: Option<u64>,
    /// Send rounds for this long instead (e.g. 1m).
    #[arg(long, env = "SLO_PROBE_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Verdict format on stdout.
    #[arg(long, env = "SLO_PROBE_OUTPUT", value_enum, default_value = "text")]
    pub output: Output,
    /// Also write the verdict to this file: JSON for *.json, JUnit XML for *.xml, a
    /// self-contained HTML page with charts for *.html, else text.
    #[arg(long, env = "SLO_PROBE_REPORT", value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Give up (exit 2) when a probe's topic cannot be read within this long.
    #[arg(long, env = "SLO_PROBE_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
/// The smoke verdict's format.
pub enum Output {
    /// A table for people.
    Text,
    /// JSON.
    Json,
    /// JUnit XML for CI systems.
    Junit,
    /// One self-contained HTML page with charts (for a CI artifact or a browser).
    Html,
}

/// `--version`: the version, the commit, librdkafka's version and the enabled features, as a
/// bug report needs them.
pub fn long_version() -> String {
    let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
    let features: Vec<&str> = [("gssapi", cfg!(feature = "gssapi"))]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
    format!(
        "{}\ncommit: {}\nlibrdkafka: {librdkafka}\nfeatures: {}",
        env!("CARGO_PKG_VERSION"),
        env!("SLO_PROBE_COMMIT"),
        if features.is_empty() {
            "none (gssapi off)".to_string()
        } else {
            features.join(", ")
        }
    )
}

fn parse_command_line() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    // Built once per process; clap keeps `&'static str`s.
    let version: &'static str = Box::leak(long_version().into_boxed_str());
    let matches = Cli::command().long_version(version).try_get_matches()?;
    Cli::from_arg_matches(&matches)
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Exit::Ok.into()
                }
                _ => Exit::Config.into(),
            };
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let exit = runtime.block_on(execute(cli));
    // A metadata request still blocking in librdkafka (unreachable cluster) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    exit.into()
}

/// Runs a parsed command; tests call this directly.
pub async fn execute(cli: Cli) -> Exit {
    // The connection pool's own warnings repeat what the sink poller reports (once per
    // distinct error, with the probe): kept to errors.
    let default_level = match cli.command {
        Command::Run => "info,deadpool=error",
        Command::Smoke(_) | Command::Check | Command::Rules(_) => "warn,deadpool=error",
    };
    logging::init(
        cli.common.log_format,
        cli.common.log_level.as_deref().unwrap_or(default_level),
    );
    let config = match load(&cli.common) {
        Ok(c) => c,
        Err(problems) => {
            // A gate's report exists whatever happened, so CI shows why the step failed.
            if let Command::Smoke(args) = &cli.command
                && let Some(path) = &args.report
            {
                let why = format!("configuration problems: {}", problems.join("; "));
                let verdict = Verdict::new(Vec::new(), Duration::ZERO, false).config_error(why);
                write_report(&verdict, path, cli.common.log_format);
            }
            return Exit::Config;
        }
    };
    match cli.command {
        Command::Check => check(&config),
        Command::Run => run(config, &cli.common).await,
        Command::Smoke(args) => smoke(config, &cli.common, &args).await,
        Command::Rules(args) => {
            let opts = RulesOptions {
                format: args.format,
                name: args.name,
                namespace: args.namespace,
                labels: args.labels.into_iter().collect(),
                runbook_url: args.runbook_url,
                time_scale: args.time_scale,
            };
            if opts.time_scale > 1
                && matches!(opts.format, RulesFormat::Openslo | RulesFormat::Sloth)
            {
                eprintln!(
                    "slo-probe: --time-scale applies to --format rules and prometheus-rule only"
                );
                return Exit::Config;
            }
            print!("{}", rules::render(&config.probes, &opts));
            rate_warnings(&config);
            Exit::Ok
        }
    }
}

/// The agent file read when `--config` names none and it exists.
pub const DEFAULT_AGENT_FILE: &str = "slo-probe.yaml";

/// Where configuration comes from when flags say nothing.
pub fn sources(common: &Common) -> Sources {
    let default_agent = Path::new(DEFAULT_AGENT_FILE);
    Sources {
        agent_file: common
            .config
            .clone()
            .or_else(|| default_agent.exists().then(|| default_agent.to_path_buf())),
        probe_paths: if common.probes.is_empty() {
            vec![PathBuf::from("probes")]
        } else {
            common.probes.clone()
        },
    }
}

/// The configuration, or (after printing each problem) the problems.
fn load(common: &Common) -> Result<Config, Vec<String>> {
    match config::load(&sources(common)) {
        Ok(mut c) => {
            if let Some(addr) = common.listen {
                c.agent.listen = addr;
                c.agent.listen_chosen = true;
            }
            Ok(c)
        }
        Err(diags) => {
            for d in diags.iter() {
                logging::say(
                    common.log_format,
                    Level::ERROR,
                    &d.to_string(),
                    "configuration problem",
                    serde_json::json!({
                        "file": d.loc.file.display().to_string(),
                        "line": d.loc.line,
                        "column": d.loc.column,
                        "problem": d.message,
                    }),
                );
            }
            // As text, a closing count; as JSON, each problem is already its own line.
            if common.log_format == LogFormat::Text {
                let n = diags.len();
                let s = if n == 1 { "" } else { "s" };
                eprintln!("slo-probe: {n} configuration problem{s}");
            }
            Err(diags.iter().map(|d| d.to_string()).collect())
        }
    }
}

fn check(config: &Config) -> Exit {
    let names: Vec<&str> = config.probes.iter().map(|p| p.name.as_str()).collect();
    let clusters = if config.is_zero_config() {
        "none (`run` would use the embedded mock cluster; `smoke` refuses without --embedded)"
            .to_string()
    } else {
        config
            .agent
            .clusters
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "configuration ok: {} probe(s): {}; clusters: {clusters}",
        names.len(),
        names.join(", ")
    );
    for note in &config.notes {
        eprintln!("{note}");
    }
    rate_warnings(config);
    Exit::Ok
}

/// SLOs that mean little at their probe's record rate, on stderr (`check` and `rules`): valid,
/// but worth a second look before they page someone.
fn rate_warnings(config: &Config) {
    for warning in rules::rate::warnings(&config.probes) {
        eprintln!("{warning}");
    }
}

fn start_error(format: LogFormat, e: &StartError) -> Exit {
    let text = format!("slo-probe: {e}");
    let fields = serde_json::json!({ "error": e.to_string() });
    logging::say(format, Level::ERROR, &text, "cannot start", fields);
    match e {
        StartError::Client { .. } | StartError::Tracing(_) | StartError::Sink { .. } => {
            Exit::Config
        }
        StartError::Listen { .. } | StartError::Embedded(_) | StartError::Registry { .. } => {
            Exit::CouldNotRun
        }
    }
}

async fn run(config: Config, common: &Common) -> Exit {
    let mut signals = signals::Signals::new();
    let listen = config.agent.listen;
    if let Some(warning) = exposure_warning(listen, config.agent.listen_chosen) {
        tracing::warn!(addr = %listen, "{warning}");
    }
    let opts = AgentOptions {
        plan: Plan::Forever,
        listen: Some(listen),
        embedded: common.embedded,
    };
    let agent = match Agent::start(config, opts).await {
        Ok(a) => a,
        Err(e) => return start_error(common.log_format, &e),
    };
    tracing::info!(
        probes = agent.probes().len(),
        site = %agent.config.agent.site,
        instance = %agent.config.agent.instance,
        "slo-probe running"
    );
    signals.next().await;
    let bound = agent.drain_bound();
    tracing::info!(bound = ?bound, "stopping: no new records; settling the ones in flight (signal again to stop now)");
    // The second signal ends every wait: the records' drain, the tasks' grace, the span flush.
    let second = tokio_util::sync::CancellationToken::new();
    let on_signal = second.clone();
    tokio::spawn(async move {
        signals.next().await;
        on_signal.cancel();
    });
    let report = agent
        .shutdown_with(second.clone().cancelled_owned(), second.cancelled_owned())
        .await;
    log_final(&report);
    if report.drained {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

fn log_final(report: &ShutdownReport) {
    for (probe, c) in &report.per_probe {
        tracing::info!(
            probe = %probe,
            sent = c.sent,
            ok = c.get(Outcome::Ok),
            lost = c.get(Outcome::Lost),
            corrupt = c.get(Outcome::Corrupt),
            send_failed = c.get(Outcome::SendFailed),
            in_flight = c.in_flight,
            duplicates = c.duplicates,
            reordered = c.reordered,
            late_arrivals = c.late,
            "probe final counts"
        );
    }
    if report.drained {
        tracing::info!("shutdown complete: every record has its final outcome");
    } else {
        tracing::error!("shutdown incomplete: records still in flight");
    }
}

/// The default address serves every interface, which a container needs (its port is reached
/// through the pod or a published port, and the chart sets `listen` and can add a
/// NetworkPolicy). Elsewhere it puts `/status` (topics, bootstrap servers, leaders, sink errors)
/// in front of anyone who can reach the host, unauthenticated. Telling a container from a host
/// is guesswork (a `/.dockerenv` file is on many CI machines), so the rule is about choice: the
/// default on every interface is warned about; an address that was chosen, even 0.0.0.0, is not.
pub fn exposure_warning(listen: SocketAddr, chosen: bool) -> Option<&'static str> {
    (!chosen && listen.ip().is_unspecified()).then_some(
        "serving /metrics, /readyz and /status (topics, bootstrap servers, leaders, sink errors) on every interface without authentication, by default: choose `listen` (or --listen), e.g. 127.0.0.1:9747 to keep them on this host, or 0.0.0.0:9747 once only your scraper can reach the port (a firewall, the chart's NetworkPolicy)",
    )
}

mod signals {
    /// SIGINT and SIGTERM, listened to from creation on: a signal that arrives while the agent
    /// is busy between two waits (a quick second Ctrl-C) is not missed.
    pub struct Signals {
        #[cfg(unix)]
        interrupt: tokio::signal::unix::Signal,
        #[cfg(unix)]
        terminate: tokio::signal::unix::Signal,
    }

    impl Signals {
        pub fn new() -> Signals {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                Signals {
                    interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
                    terminate: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
                }
            }
            #[cfg(not(unix))]
            Signals {}
        }

        /// Resolves on the next SIGINT or SIGTERM (one received since the previous call counts).
        pub async fn next(&mut self) {
            #[cfg(unix)]
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_on_every_interface_is_warned_about() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(exposure_warning(addr("0.0.0.0:9747"), false).is_some());
        assert!(exposure_warning(addr("[::]:9747"), false).is_some());
        assert!(
            exposure_warning(addr("0.0.0.0:9747"), true).is_none(),
            "chosen"
        );
        assert!(exposure_warning(addr("127.0.0.1:9747"), false).is_none());
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("slo-probe").chain(args.iter().copied()))
    }

    #[test]
    fn listen_takes_the_forms_people_write() {
        let listen = |a: &str| parse(&["--listen", a, "check"]).map(|c| c.common.listen);
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(listen(":9747").unwrap(), addr("0.0.0.0:9747"));
        assert_eq!(listen("localhost:9748").unwrap(), addr("127.0.0.1:9748"));
        assert_eq!(listen("[::1]:9749").unwrap(), addr("[::1]:9749"));
        assert_eq!(listen("10.1.2.3:80").unwrap(), addr("10.1.2.3:80"));
        for (bad, says) in [
            ("9747", "write `:9747` for every interface"),
            (":99999", "`99999` is not a port"),
            ("localhost:http", "`http` is not a port"),
            (
                "no-such-host.invalid:9747",
                "cannot resolve `no-such-host.invalid`",
            ),
        ] {
            let e = listen(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
