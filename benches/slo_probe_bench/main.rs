//! slo-probe-bench: how true, how light, how far.
//!
//! ```sh
//! cargo bench --bench slo-probe-bench                      # the full run, a markdown report
//! cargo bench --bench slo-probe-bench -- --quick           # seconds: keeps the harness honest
//! cargo bench --bench slo-probe-bench -- --markdown out.md --baseline path/to/old/slo-probe
//! ```
//!
//! Scenarios: fidelity (quantiles against ground truth, and against fixed Prometheus buckets),
//! overhead (against a raw rdkafka loop), footprint (RSS and CPU of `slo-probe run`), capacity
//! (verified records per second per core), detection (time to notice a dead broker), formats
//! (CPU per record of the envelope, a JSON template and Avro), disruption (a rolling restart, a
//! leader election, a slow broker and a broker restart, against a raw loop), abuse (hostile HTTP
//! clients while `/metrics` is scraped; the cost of `/status` and `/` at 1 000 probes), flink
//! (end-to-end and hop quantiles through a real Flink job against Flink's own timestamps,
//! at-least-once and exactly-once side by side). Every figure is the median of `--runs` runs
//! (default 3; abuse and flink: one run, its samples reported).
//! Nothing here passes or fails on timing.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it runs `--quick`.

mod abuse;
#[path = "../../tests/common/mod.rs"]
mod common;
mod disruption;
mod env;
mod fidelity;
mod flink;
mod formats;
mod overhead;
mod process;
mod soak;
mod stats;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::env::Broker;
use crate::stats::{median_by, rel_err_pct};

#[derive(Debug, Parser)]
#[command(
    name = "slo-probe-bench",
    about = "Fidelity, overhead, footprint, capacity, detection, record formats, disruption and HTTP abuse of slo-probe"
)]
struct Args {
    /// Seconds instead of minutes: tiny samples, one run. Numbers are not meaningful.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (medians are reported).
    #[arg(long)]
    runs: Option<usize>,
    /// Only these scenarios (fidelity, overhead, footprint, capacity, detection, formats, flink,
    /// disruption, soak, abuse).
    #[arg(long = "only")]
    only: Vec<String>,
    /// Only these disruption scenarios (roll, election, slow-broker, restart).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Also write the report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Another slo-probe binary (e.g. an older build) to compare with, side by side in the same
    /// run: at 100 probes (footprint), and under every HTTP attack (abuse).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The soak's healthy phase, instead of the plan's (e.g. `10m`, to look at an outage sooner).
    #[arg(long, value_parser = humantime::parse_duration)]
    soak_for: Option<Duration>,
    /// The soak's broker outage, instead of the plan's.
    #[arg(long, value_parser = humantime::parse_duration)]
    outage_for: Option<Duration>,
    /// The footprint's probe counts, instead of the plan's (e.g. `--footprint-probes 1,100`: the
    /// fixed cost and the row a target is set for; `--baseline` compares at 100 probes either way).
    #[arg(long, value_delimiter = ',')]
    footprint_probes: Vec<usize>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Sizes of a run.
struct Plan {
    runs: usize,
    fidelity_rounds: u64,
    overhead_rounds: u64,
    interval: Duration,
    footprint_probes: Vec<usize>,
    warmup: Duration,
    measure: Duration,
    capacity_probes: Vec<usize>,
    capacity_interval: Duration,
    capacity_measure: Duration,
    detection_timeout: Duration,
    formats_records: u64,
    formats_rounds: usize,
    disruption: disruption::Timing,
    soak: soak::Timing,
    abuse: abuse::Timing,
    flink: flink::Timing,
}

impl Plan {
    fn new(quick: bool, runs: Option<usize>) -> Plan {
        if quick {
            Plan {
                runs: runs.unwrap_or(1),
                fidelity_rounds: 40,
                overhead_rounds: 40,
                interval: Duration::from_millis(20),
                footprint_probes: vec![1, 10],
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(3),
                capacity_probes: vec![1, 10],
                capacity_interval: Duration::from_millis(100),
                capacity_measure: Duration::from_secs(3),
                detection_timeout: Duration::from_secs(1),
                formats_records: 500,
                formats_rounds: 2,
                disruption: disruption::Timing {
                    interval: Duration::from_millis(100),
                    timeout: Duration::from_secs(10),
                    baseline: Duration::from_secs(2),
                    down: Duration::from_secs(2),
                    settle: Duration::from_secs(1),
                    tail: Duration::from_secs(2),
                    slow_rtt: Duration::from_millis(200),
                },
                soak: soak::Timing {
                    soak: Duration::from_secs(20),
                    fill: Duration::from_secs(5),
                    outage: Duration::from_secs(5),
                    recovery: Duration::from_secs(10),
                    interval: Duration::from_millis(500),
                    timeout: Duration::from_secs(2),
                    max_in_flight: 50,
                    sample: Duration::from_secs(1),
                },
                abuse: abuse::Timing {
                    phase: Duration::from_secs(2),
                    connections: 100,
                    small: 2,
                    large: 20,
                    renders: 1,
                },
                flink: flink::Timing {
                    rounds: 8,
                    interval: Duration::from_millis(250),
                    checkpoint: Duration::from_secs(1),
                },
            }
        } else {
            Plan {
                runs: runs.unwrap_or(3),
                fidelity_rounds: 1000,
                overhead_rounds: 1000,
                interval: Duration::from_millis(20),
                footprint_probes: vec![1, 10, 100, 1000],
                warmup: Duration::from_secs(10),
                measure: Duration::from_secs(60),
                capacity_probes: vec![1, 10, 50, 100, 200, 400, 800],
                capacity_interval: Duration::from_millis(100),
                capacity_measure: Duration::from_secs(30),
                detection_timeout: Duration::from_secs(2),
                formats_records: 20_000,
                formats_rounds: 5,
                disruption: disruption::Timing {
                    interval: Duration::from_millis(100),
                    timeout: Duration::from_secs(30),
                    baseline: Duration::from_secs(20),
                    down: Duration::from_secs(25),
                    settle: Duration::from_secs(10),
                    tail: Duration::from_secs(15),
                    slow_rtt: Duration::from_millis(200),
                },
                soak: soak::Timing {
                    // 30 minutes measured after the fill
                    soak: Duration::from_secs(41 * 60),
                    // the finished-id table reaches its steady size at 643 s (see soak.rs)
                    fill: Duration::from_secs(11 * 60),
                    outage: Duration::from_secs(15 * 60),
                    recovery: Duration::from_secs(3 * 60),
                    interval: Duration::from_millis(100),
                    timeout: Duration::from_secs(30),
                    max_in_flight: 5000,
                    sample: Duration::from_secs(10),
                },
                abuse: abuse::Timing {
                    phase: Duration::from_secs(20),
                    connections: 1000,
                    small: 10,
                    large: 1000,
                    renders: 5,
                },
                flink: flink::Timing {
                    rounds: 300,
                    interval: Duration::from_millis(200),
                    checkpoint: Duration::from_secs(2),
                },
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let quick = args.quick || !args.bench;
    let mut plan = Plan::new(quick, args.runs);
    if let Some(d) = args.soak_for {
        plan.soak.soak = d;
        plan.soak.fill = plan.soak.fill.min(d / 2);
    }
    if let Some(d) = args.outage_for {
        plan.soak.outage = d;
    }
    if !args.footprint_probes.is_empty() {
        plan.footprint_probes.clone_from(&args.footprint_probes);
    }
    stats::self_check();
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = String::new();
    let _ = writeln!(report, "Machine: {}\n", env::machine());
    let _ = writeln!(
        report,
        "Mode: {}, {} run(s) per figure, medians reported.\n",
        if quick {
            "quick (figures not meaningful)"
        } else {
            "full"
        },
        plan.runs
    );
    runtime.block_on(async {
        if want("fidelity") {
            report += &fidelity_section(&plan).await;
        }
        if want("overhead") {
            report += &overhead_section(&plan).await;
        }
        if want("footprint") {
            report += &footprint_section(&plan, args.baseline.as_deref()).await;
        }
        if want("capacity") {
            report += &capacity_section(&plan).await;
        }
        if want("detection") {
            report += &detection_section(&plan).await;
        }
        if want("formats") {
            report += &formats_section(&plan);
        }
        if want("disruption") {
            report += &disruption_section(&plan, &args.scenarios).await;
        }
        // Not in a full run unless asked for: it takes about an hour.
        if args.only.iter().any(|o| o == "soak") || (quick && args.only.is_empty()) {
            report += &soak_section(&plan).await;
        }
        if want("abuse") {
            report += &abuse_section(&plan, args.baseline.as_deref()).await;
        }
        if want("flink") {
            report += &flink::section(&plan.flink).await;
        }
    });
    println!("{report}");
    if let Some(path) = args.markdown {
        std::fs::write(&path, &report).expect("report written");
    }
}

fn brokers() -> Vec<fn() -> Broker> {
    vec![Broker::tansu, Broker::embedded]
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn with_err(v: f64, truth: f64) -> String {
    format!("{} ({:+.1}%)", ms(v), rel_err_pct(v, truth))
}

async fn fidelity_section(plan: &Plan) -> String {
    let mut out = format!(
        "## 1. Fidelity\n\nA relay between the probe topic and the verify topic delays each record by a known amount; \
         the harness's own consumer on the verify topic records every record's real end-to-end time (ground truth). \
         {} rounds x 3 partitions at {} per run. Latency in ms (relative error against the truth). \
         Strimzi and KMinion columns are the same truth samples put into their fixed buckets and read back with \
         Prometheus' linear interpolation.\n\n",
        plan.fidelity_rounds,
        humantime::format_duration(plan.interval)
    );
    for make in brokers() {
        let broker = make();
        for profile in fidelity::profiles() {
            let mut runs = Vec::new();
            for r in 0..plan.runs {
                let tag = format!(
                    "{}-{r}",
                    profile
                        .name
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "")
                );
                runs.push(
                    fidelity::run(&broker, &profile, plan.fidelity_rounds, plan.interval, &tag)
                        .await,
                );
            }
            let _ = writeln!(
                out,
                "**{}, {}** ({} samples per run)\n\n| quantile | truth | slo-probe (HDR) | Strimzi buckets | KMinion buckets |\n|---|---|---|---|---|",
                broker.name(),
                profile.name,
                runs[0].samples
            );
            for (i, q) in fidelity::QS.iter().enumerate() {
                let truth = median_by(&runs, |r| r.truth[i]);
                let _ = writeln!(
                    out,
                    "| p{} | {} | {} | {} | {} |",
                    q * 100.0,
                    ms(truth),
                    with_err(median_by(&runs, |r| r.probe[i]), truth),
                    with_err(median_by(&runs, |r| r.strimzi[i]), truth),
                    with_err(median_by(&runs, |r| r.kminion[i]), truth)
                );
            }
            out += "\n";
        }
    }
    out
}

async fn overhead_section(plan: &Plan) -> String {
    let mut out = format!(
        "## 2. Probe-added latency\n\nTwo identical raw rdkafka produce -> consume loops (same client settings) and a probe, at the same time \
         on the same broker, {} rounds x 3 partitions at {} each; latency in ms. The raw loops time each record from \
         its send call, the probe from its scheduled slot. Added = slo-probe minus the mean of the raw pair; the gap between the \
         two raw loops is the noise floor of the comparison (where in the broker's fetch cycle each client's records \
         land). Send lag is the \
         probe's own delay from slot to producer (`slo_probe_send_lag_seconds`).\n\n\
                  | broker | raw pair p50 | slo-probe p50 | added p50 | raw pair p99 | slo-probe p99 | added p99 | send lag mean µs | send lag ≤ 100 µs |\n|---|---|---|---|---|---|---|---|---|\n",
        plan.overhead_rounds,
        humantime::format_duration(plan.interval)
    );
    for make in brokers() {
        let broker = make();
        let mut runs = Vec::new();
        for r in 0..plan.runs {
            runs.push(
                overhead::run(
                    &broker,
                    plan.overhead_rounds,
                    plan.interval,
                    &format!("o{r}"),
                )
                .await,
            );
        }
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} | {:+.2} | {} / {} | {} | {:+.2} | {:.0} | {:.1}% |",
            broker.name(),
            ms(median_by(&runs, |r| r.raw[0])),
            ms(median_by(&runs, |r| r.raw_twin[0])),
            ms(median_by(&runs, |r| r.probe[0])),
            median_by(&runs, |r| r.probe[0] - (r.raw[0] + r.raw_twin[0]) / 2.0),
            ms(median_by(&runs, |r| r.raw[1])),
            ms(median_by(&runs, |r| r.raw_twin[1])),
            ms(median_by(&runs, |r| r.probe[1])),
            median_by(&runs, |r| r.probe[1] - (r.raw[1] + r.raw_twin[1]) / 2.0),
            median_by(&runs, |r| r.lag_mean_us),
            median_by(&runs, |r| r.lag_under_100us * 100.0),
        );
    }
    out + "\n"
}

fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slo-probe"))
}

async fn footprint_section(plan: &Plan, baseline: Option<&std::path::Path>) -> String {
    let mut out = format!(
        "## 3. Footprint\n\n`slo-probe run` as its own process against a tansu process; N probes x 3 partitions at 1 s \
         on one topic; measured over {} after {} of warm-up.\n\n\
         | probes | RSS MiB | peak RSS MiB | CPU % of a core | verified records/s |\n|---|---|---|---|---|\n",
        humantime::format_duration(plan.measure),
        humantime::format_duration(plan.warmup)
    );
    let broker = crate::common::infra::Tansu::start();
    for &n in &plan.footprint_probes {
        let mut runs = Vec::new();
        for r in 0..plan.runs {
            let agent = process::AgentProcess::with_probes(
                &agent_bin(),
                &broker,
                n,
                Duration::from_secs(1),
                &format!("fp-{n}-{r}"),
            );
            runs.push(process::usage(&agent, &broker, plan.warmup, plan.measure).await);
        }
        let _ = writeln!(
            out,
            "| {n} | {:.1} | {:.1} | {:.2} | {:.0} |",
            median_by(&runs, |u| u.rss_mib),
            median_by(&runs, |u| u.peak_mib),
            median_by(&runs, |u| u.cpu_pct),
            median_by(&runs, |u| u.verified_per_s)
        );
    }
    if let Some(old) = baseline {
        let _ = writeln!(
            out,
            "\nSide by side at 100 probes, runs alternating between `{}` (before) and this build (after):\n\n\
             | build | RSS MiB | CPU % of a core |\n|---|---|---|",
            old.display()
        );
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for r in 0..plan.runs {
            for (bin, into) in [(old.to_path_buf(), &mut before), (agent_bin(), &mut after)] {
                let agent = process::AgentProcess::with_probes(
                    &bin,
                    &broker,
                    100,
                    Duration::from_secs(1),
                    &format!("cmp-{r}"),
                );
                into.push(process::usage(&agent, &broker, plan.warmup, plan.measure).await);
            }
        }
        let row = |name: &str, v: &[process::Usage]| {
            format!(
                "| {name} | {:.1} | {:.2} |",
                median_by(v, |u| u.rss_mib),
                median_by(v, |u| u.cpu_pct)
            )
        };
        let _ = writeln!(out, "{}\n{}", row("before", &before), row("after", &after));
        let ratio = |f: fn(&process::Usage) -> f64| median_by(&after, f) / median_by(&before, f);
        let _ = writeln!(
            out,
            "\nafter / before: RSS x{:.2}, CPU x{:.2}",
            ratio(|u| u.rss_mib),
            ratio(|u| u.cpu_pct)
        );
    }
    out + "\n"
}

async fn capacity_section(plan: &Plan) -> String {
    let per_probe = 3.0 / plan.capacity_interval.as_secs_f64();
    let mut out = format!(
        "## 4. Capacity\n\nProbes x 3 partitions at {} ({per_probe:.0} records/s each) on one topic of one tansu process \
         on the same 2 cores, raised until verified records/s stop scaling (below 90% of what was sent); measured over {} \
         after {} of warm-up. A row is flagged when the median probe p99 exceeds the 1-probe p99 by more than 10%. \
         Marginal CPU is the agent's CPU above the 1-probe run divided by the records verified above it: the cost of one \
         more record, without the fixed cost of an idle agent.\n\n\
         | probes | sent records/s | verified records/s | agent CPU % of a core | broker CPU % of a core | verified records/s per agent core | marginal agent CPU µs per record | p99 ms (median probe) | |\n|---|---|---|---|---|---|---|---|---|\n",
        humantime::format_duration(plan.capacity_interval),
        humantime::format_duration(plan.capacity_measure),
        humantime::format_duration(plan.warmup)
    );
    let broker = crate::common::infra::Tansu::start();
    let mut base: Option<(f64, f64, f64)> = None;
    for &n in &plan.capacity_probes {
        let mut runs = Vec::new();
        for r in 0..plan.runs {
            let agent = process::AgentProcess::with_probes(
                &agent_bin(),
                &broker,
                n,
                plan.capacity_interval,
                &format!("cap-{n}-{r}"),
            );
            runs.push(process::usage(&agent, &broker, plan.warmup, plan.capacity_measure).await);
        }
        let (verified, cpu, broker_cpu, p99) = (
            median_by(&runs, |u| u.verified_per_s),
            median_by(&runs, |u| u.cpu_pct),
            median_by(&runs, |u| u.broker_cpu_pct),
            median_by(&runs, |u| u.p99_ms),
        );
        let sent = per_probe * n as f64;
        let (base_p99, base_cpu, base_verified) = *base.get_or_insert((p99, cpu, verified));
        let marginal = if verified > base_verified {
            format!(
                "{:.0}",
                (cpu - base_cpu) / 100.0 / (verified - base_verified) * 1e6
            )
        } else {
            "-".into()
        };
        let stops = verified < 0.9 * sent;
        let verdict = if stops {
            "stops scaling"
        } else if p99 > base_p99 * 1.1 {
            "p99 > +10%"
        } else {
            "ok"
        };
        let _ = writeln!(
            out,
            "| {n} | {sent:.0} | {verified:.0} | {cpu:.1} | {broker_cpu:.1} | {:.0} | {marginal} | {} | {verdict} |",
            verified / (cpu / 100.0),
            ms(p99)
        );
        if stops {
            break;
        }
    }
    out + "\n"
}

async fn detection_section(plan: &Plan) -> String {
    let mut broker = crate::common::infra::Tansu::start();
    let mut runs = Vec::new();
    for _ in 0..plan.runs {
        runs.push(process::detection(&agent_bin(), &mut broker, plan.detection_timeout).await);
    }
    let t = plan.detection_timeout.as_secs_f64();
    let lost = median_by(&runs, |d| d.first_lost_s);
    let drop = median_by(&runs, |d| d.availability_drop_s);
    format!(
        "## 5. Detection\n\nThe broker process is killed (SIGKILL) under a probe at 200 ms; the harness reads `/metrics` every 20 ms.\n\n\
         | timeout | first `lost` after | availability drops after | first `lost` / timeout |\n|---|---|---|---|\n\
         | {} | {lost:.2} s | {drop:.2} s | {:.2} |\n\n",
        humantime::format_duration(plan.detection_timeout),
        lost / t
    )
}

fn formats_section(plan: &Plan) -> String {
    let formats = formats::formats();
    formats::warm_up(&formats, plan.formats_records);
    let runs: Vec<formats::Run> = (0..plan.runs)
        .map(|_| formats::run(&formats, plan.formats_records, plan.formats_rounds))
        .collect();
    let mut out = format!(
        "## 6. Record formats\n\nA probe sends one record per partition per interval: what a record format costs is \
         the agent's CPU per record apart from Kafka. Each format is a probe file (`payload_bytes: 256`) loaded as \
         `slo-probe check` loads it; its records are built and checked as the paired consumer checks one read back \
         (decode, every field, every header), in this process, without a broker. {} rounds per run of one batch of {} \
         records per format, the formats in turn; every record is checked intact. CPU is the process's user + system \
         time (`getrusage`), wall the batch's elapsed time. The ratio to the envelope is the median of each run's own \
         ratio. The Avro schema has no field for `{{payload}}`: its records carry no payload text.\n\n\
         | format | CPU µs per record | wall µs per record | records per CPU-second | CPU / envelope |\n|---|---|---|---|---|\n",
        plan.formats_rounds, plan.formats_records
    );
    let ratio = |i: usize| median_by(&runs, |r| r.cpu_us[i] / r.cpu_us[0]);
    for (i, f) in formats.iter().enumerate() {
        let cpu = median_by(&runs, |r| r.cpu_us[i]);
        let _ = writeln!(
            out,
            "| {} | {cpu:.2} | {:.2} | {:.0} | {:.2}x |",
            f.label,
            median_by(&runs, |r| r.wall_us[i]),
            1e6 / cpu,
            ratio(i)
        );
    }
    let _ = writeln!(
        out,
        "\nJSON template {:.2}x the envelope, Avro {:.2}x.\n",
        ratio(1),
        ratio(2)
    );
    out
}

async fn disruption_section(plan: &Plan, only: &[String]) -> String {
    let t = plan.disruption;
    let mut out = format!(
        "## 7. Disruption\n\nA probe (one record per partition every {}, 3 partitions, timeout {}, `acks=all`) and a raw rdkafka \
         produce -> consume loop with the same settings run side by side on the same brokers, through each step of a \
         scenario; brokers stay down (or slow) for {}, instant steps are watched for {}, the last step for {} more. \
         Records are placed in the step during which they were scheduled. *Disturbed*: lost, or slower than the loop's \
         own baseline p99 doubled (at least +50 ms); *recovery*: from the step's action to the arrival (or deadline) of \
         the last disturbed record scheduled in the step. *Slow*: above the freshness threshold, {}. Latency in ms, \
         raw / probe; medians of {} run(s).\n\n",
        humantime::format_duration(t.interval),
        humantime::format_duration(t.timeout),
        humantime::format_duration(t.down),
        humantime::format_duration(t.settle),
        humantime::format_duration(t.tail),
        humantime::format_duration(disruption::FRESHNESS),
        plan.runs
    );
    let interval = t.interval.as_secs_f64();
    for scenario in disruption::Scenario::ALL
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.key()))
    {
        let mut runs = Vec::new();
        for r in 0..plan.runs {
            let tag = format!("{scenario:?}-{r}").to_lowercase();
            runs.push(disruption::run(scenario, t, &tag).await);
        }
        let _ = writeln!(
            out,
            "**{}**\n\n| step | records | lost | slow | p50 | p99 | max | recovery s | probe within raw + 1 interval |\n|---|---|---|---|---|---|---|---|---|",
            scenario.name()
        );
        let row = |name: &str,
                   raw: &dyn Fn(&disruption::Run) -> &disruption::Figures,
                   probe: &dyn Fn(&disruption::Run) -> &disruption::Figures| {
            let m = |f: &dyn Fn(&disruption::Figures) -> f64| {
                (
                    median_by(&runs, |r| f(raw(r))),
                    median_by(&runs, |r| f(probe(r))),
                )
            };
            let pair = |(a, b): (f64, f64)| format!("{} / {}", ms(a), ms(b));
            let count = |(a, b): (f64, f64)| format!("{a:.0} / {b:.0}");
            let recovery = m(&|f| f.recovery);
            let within = if recovery.1 <= recovery.0 + interval + 1e-9 {
                "yes"
            } else {
                "**no**"
            };
            format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {:.2} / {:.2} | {within} |",
                count(m(&|f| f.records as f64)),
                count(m(&|f| f.lost as f64)),
                count(m(&|f| f.slow as f64)),
                pair(m(&|f| f.p50)),
                pair(m(&|f| f.p99)),
                pair(m(&|f| f.max)),
                recovery.0,
                recovery.1,
            )
        };
        let _ = writeln!(
            out,
            "{}",
            row("baseline", &|r| &r.baseline.0, &|r| &r.baseline.1)
        );
        for (i, step) in runs[0].steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}",
                row(&step.name, &|r| &r.steps[i].raw, &|r| &r.steps[i].probe)
            );
        }
        out += "\n";
        // The probe adds no loss of its own: with acks=all, what the raw loop kept, it keeps.
        for r in &runs {
            let lost = |f: fn(&disruption::Step) -> &disruption::Figures| -> usize {
                r.steps.iter().map(|s| f(s).lost).sum()
            };
            assert!(
                lost(|s| &s.probe) <= lost(|s| &s.raw),
                "{}: the probe lost records the raw loop did not",
                scenario.name()
            );
        }
    }
    out
}

async fn soak_section(plan: &Plan) -> String {
    let t = plan.soak;
    let rate = f64::from(soak::PARTITIONS) / t.interval.as_secs_f64();
    let engine = soak::Engine::from_env();
    if matches!(engine, soak::Engine::Memory) && t.soak > Duration::from_secs(20 * 60) {
        panic!(
            "soak: tansu's memory engine slows past about 20 minutes at this rate (BENCHMARKS.md); \
             build tansu with its SQLite engine once (about 20 minutes):\n  \
             cargo install tansu --version 0.6.0 --features libsql --locked --root target/tansu-libsql\n\
             and run with SLO_PROBE_SOAK_TANSU=target/tansu-libsql/bin/tansu (or --soak-for 20m or less)"
        );
    }
    let run = soak::run(&agent_bin(), &t, &engine).await;
    let steady = &run.steady;
    let (first, last) = (steady.first(), steady.last());
    let mut out = format!(
        "### Soak and a long outage\n\n`slo-probe run` as its own process, one probe on {} partitions every {} ({rate:.0} records/s), \
         timeout {}, `max_in_flight: {}`, against a tansu process behind a TCP front, {} (the verifier's `fetch.wait.max.ms` {} ms: \
         tansu holds each fetch that long); sampled every {}. Healthy for {} \
         (the first {} fill the 5-minute window, the finished-id retention and the slowest lists: not in the slope), then \
         the broker away for {}, then back for {}; {:.0} records per partition at the end.\n\n",
        soak::PARTITIONS,
        humantime::format_duration(t.interval),
        humantime::format_duration(t.timeout),
        t.max_in_flight,
        engine.describe(),
        soak::FETCH_WAIT_MS,
        humantime::format_duration(t.sample),
        humantime::format_duration(t.soak),
        humantime::format_duration(t.fill),
        humantime::format_duration(t.outage),
        humantime::format_duration(t.recovery),
        rate * (t.soak + t.recovery).as_secs_f64() / f64::from(soak::PARTITIONS),
    );
    if let (Some(first), Some(last)) = (first, last) {
        let span_s = last.at - first.at;
        let mean_rss = steady.iter().map(|s| s.rss_mib).sum::<f64>() / steady.len() as f64;
        let slope = soak::slope(&steady.iter().map(|s| (s.at, s.rss_mib)).collect::<Vec<_>>());
        let per_10_min = slope * 600.0 / mean_rss * 100.0;
        let half = steady.len() / 2;
        let cpu =
            |v: &[soak::Sample]| v.iter().map(|s| s.cpu_pct).sum::<f64>() / v.len().max(1) as f64;
        let sent_rate = (last.sent - first.sent) / span_s.max(1.0);
        let _ = writeln!(
            out,
            "| healthy, after the fill | measured |\n|---|---|\n\
             | samples / time | {} over {:.1} min |\n\
             | records sent per second | {sent_rate:.0} |\n\
             | lost / send_failed while healthy | {} / {} |\n\
             | RSS at the fill, at the end, mean | {:.1} / {:.1} / {mean_rss:.1} MiB |\n\
             | RSS slope (least squares) | {per_10_min:+.2}% per 10 min |\n\
             | CPU, first half / second half | {:.1}% / {:.1}% of a core |\n\
             | end-to-end p50 / p99 at the fill, at the end, highest p99 | {:.0} / {:.0}, {:.0} / {:.0}, {:.0} ms |\n",
            steady.len(),
            span_s / 60.0,
            last.lost - first.lost,
            last.send_failed - first.send_failed,
            first.rss_mib,
            last.rss_mib,
            cpu(&steady[..half]),
            cpu(&steady[half..]),
            first.p50_ms,
            first.p99_ms,
            last.p50_ms,
            last.p99_ms,
            steady.iter().map(|s| s.p99_ms).fold(0.0, f64::max),
        );
    }
    let max = |v: &[soak::Sample], f: fn(&soak::Sample) -> f64| v.iter().map(f).fold(0.0, f64::max);
    let before = run.outage.first().copied();
    let end_of_outage = run.outage.last().copied();
    let after_end = run.after.last().copied();
    if let (Some(b), Some(e)) = (before, end_of_outage) {
        let _ = writeln!(
            out,
            "| broker away {} | measured |\n|---|---|\n\
             | records in flight, at most | {:.0} (`max_in_flight` {}) |\n\
             | send_failed (backpressure, never sent) / lost during it | {:.0} / {:.0} |\n\
             | RSS at its start, at most, at its end | {:.1} / {:.1} / {:.1} MiB |\n\
             | after the broker came back: first record verified after | {:.1} s |\n\
             | RSS {} after | {} |\n\
             | every scrape conserved `sent = ok + lost + corrupt + send_failed + in_flight` | {} ({} scrapes) |\n",
            humantime::format_duration(t.outage),
            max(&run.outage, |s| s.in_flight),
            t.max_in_flight,
            e.send_failed - b.send_failed,
            e.lost - b.lost,
            b.rss_mib,
            max(&run.outage, |s| s.rss_mib),
            e.rss_mib,
            run.recovered_after_s,
            humantime::format_duration(t.recovery),
            after_end.map_or("-".into(), |s| format!("{:.1} MiB", s.rss_mib)),
            if run.conserved { "yes" } else { "**no**" },
            run.scrapes,
        );
    }
    // Every sample, for a plot: target/soak-samples.csv.
    let csv: String = std::iter::once(
        "at_s,rss_mib,cpu_pct,sent,ok,lost,send_failed,in_flight,p50_ms,p99_ms\n".to_string(),
    )
    .chain(run.samples.iter().map(|s| {
        format!(
            "{:.1},{:.2},{:.2},{},{},{},{},{},{:.1},{:.1}\n",
            s.at,
            s.rss_mib,
            s.cpu_pct,
            s.sent,
            s.ok,
            s.lost,
            s.send_failed,
            s.in_flight,
            s.p50_ms,
            s.p99_ms
        )
    }))
    .collect();
    let _ = std::fs::write(soak::artifact("soak-samples.csv"), csv);
    // The figures reach the reader even when a check below fails.
    eprintln!("{out}");
    // Consistency, not timing: the accounting held, records flowed again, nothing was lost
    // while the broker was there.
    assert!(
        run.conserved,
        "soak: the counts were not conserved on every scrape"
    );
    assert!(
        run.recovered_after_s.is_finite(),
        "soak: no record verified after the broker came back"
    );
    if let (Some(first), Some(last)) = (first, last) {
        assert_eq!(
            last.lost - first.lost,
            0.0,
            "soak: records lost while the broker was up"
        );
    }
    out + "\n"
}

async fn abuse_section(plan: &Plan, baseline: Option<&std::path::Path>) -> String {
    let t = plan.abuse;
    abuse::raise_fd_limit();
    let mut out = format!(
        "## 8. HTTP endpoints under abuse\n\n`slo-probe run` as its own process on a tansu process; a scraper reads `/metrics` \
         every 100 ms on a new connection (as Prometheus does once the agent closed its idle one), timing connect to last \
         byte, while attackers run for {} per phase. RSS sampled every 200 ms; CPU over the phase. After every phase the \
         agent must still run and must not have logged a panic.\n\n",
        humantime::format_duration(t.phase)
    );
    let mut builds = vec![("this build".to_string(), agent_bin())];
    if let Some(old) = baseline {
        builds.insert(0, (format!("`{}`", old.display()), old.to_path_buf()));
    }
    let broker = crate::common::infra::Tansu::start();
    let attacks = [
        abuse::Attack::None,
        abuse::Attack::Idle,
        abuse::Attack::Slowloris,
        abuse::Attack::HugeHeaders,
        abuse::Attack::Unknown,
        abuse::Attack::Hammer("/"),
        abuse::Attack::Hammer("/status"),
        abuse::Attack::All,
    ];
    let table = |phases: &[abuse::Phase]| {
        let mut s = String::from(
            "| attack | scrapes answered | scrapes failed | p50 ms | p99 ms | max ms | agent RSS max / end MiB | agent CPU % | the attackers got |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for p in phases {
            let failed = if p.failed.is_empty() {
                "0".to_string()
            } else {
                let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
                for f in &p.failed {
                    *kinds.entry(f.as_str()).or_default() += 1;
                }
                let k: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} x{n}")).collect();
                format!("{} ({})", p.failed.len(), k.join(", "))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {failed} | {} | {} | {} | {:.1} / {:.1} | {:.1} | {} |",
                p.attack,
                p.scrapes.len(),
                ms(p.q(0.5)),
                ms(p.q(0.99)),
                ms(p.q(1.0)),
                p.rss_max_mib,
                p.rss_end_mib,
                p.cpu_pct,
                p.achieved
            );
        }
        s
    };
    for (label, bin) in &builds {
        let mut agent = abuse::Agent::start(bin, &broker, t.small, Duration::from_secs(1), "small");
        agent.ready(Duration::from_secs(120)).await;
        let mut phases = Vec::new();
        for a in attacks {
            phases.push(abuse::phase(&mut agent, a, &t).await);
        }
        assert!(
            !phases[0].scrapes.is_empty(),
            "no scrape answered without an attack: the harness is broken"
        );
        let _ = writeln!(
            out,
            "**{label}, {} probes** (3 partitions each, 1 s)\n\n{}",
            t.small,
            table(&phases)
        );
    }
    for (label, bin) in &builds {
        let mut agent = abuse::Agent::start(bin, &broker, t.large, Duration::from_secs(2), "large");
        agent.ready(Duration::from_secs(300)).await;
        let _ = writeln!(
            out,
            "**{label}, {} probes** (3 partitions each, 2 s, ten topics): one request at a time, 1.1 s apart (past the \
             reuse of a render, so each is a fresh render, but for a `/metrics` rendered ahead of its scrapes), {} per page\n\n\
             | page | bytes | ms per request (median) | max |\n|---|---|---|---|",
            t.large, t.renders
        );
        for path in ["/metrics", "/status", "/"] {
            let (times, bytes) = abuse::cost(&agent, path, t.renders).await;
            let _ = writeln!(
                out,
                "| `{path}` | {bytes} | {} | {} |",
                ms(stats::median(&times)),
                ms(times.iter().copied().fold(0.0, f64::max))
            );
        }
        let mut phases = Vec::new();
        for a in [
            abuse::Attack::None,
            abuse::Attack::Hammer("/"),
            abuse::Attack::Hammer("/status"),
            abuse::Attack::All,
        ] {
            phases.push(abuse::phase(&mut agent, a, &t).await);
        }
        let _ = writeln!(out, "\nScraping it meanwhile:\n\n{}", table(&phases));
    }
    out
}
