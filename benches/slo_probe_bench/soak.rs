//! Soak: `slo-probe run` as a process of its own, at 300 records per second against a tansu
//! process behind a TCP front, for half an hour and more: its RSS and CPU sampled every 10 s once
//! the window, the finished-id retention and the slowest-record lists are full; then the broker
//! goes away for 15 minutes with the agent at `max_in_flight`; then it comes back.
//!
//! The broker must keep its latency flat for the hour, or the soak measures the broker: tansu's
//! memory engine (the tests' broker) lists every record it holds on each fetch, and at this rate
//! fell behind after about 20 minutes. The full soak runs tansu's SQLite engine instead
//! ([`Engine`]); the probe spreads its records over 30 partitions (10 records per second each).
//!
//! Every scrape checks the accounting: `sent = ok + lost + corrupt + send_failed + in_flight`.

use std::time::{Duration, Instant};

use crate::common::Tree;
use crate::common::front::Front;
use crate::common::infra::{Tansu, free_port};
use crate::env::{cpu_ticks, rss_kib, ticks_per_second};
use crate::process::{AgentProcess, sum};

pub const PARTITIONS: i32 = 30;
/// The verifier's fetch wait on tansu (see `run`).
pub const FETCH_WAIT_MS: u64 = 200;
const TOPIC: &str = "soak";

/// How long each phase lasts.
#[derive(Clone, Copy)]
pub struct Timing {
    /// Healthy running, fill included.
    pub soak: Duration,
    /// From the start until the window (5 minutes), the finished-id retention (10 timeouts, at
    /// least the window) and the slowest lists are full: samples before it are not in the slope.
    /// Full means at their steady size: the retention's hash table (90 000 ids at 300 records/s
    /// over 5 minutes) fills its 131 072 buckets with live ids and the tombstones of forgotten
    /// ones, and doubles once, at 643 s (5.1 MiB; std's HashMap under this churn, reproduced
    /// alone), then rehashes in place for good.
    pub fill: Duration,
    pub outage: Duration,
    /// After the broker is back.
    pub recovery: Duration,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_in_flight: u64,
    pub sample: Duration,
}

/// One sample of the agent.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the agent started.
    pub at: f64,
    pub rss_mib: f64,
    /// % of a core since the previous sample.
    pub cpu_pct: f64,
    pub sent: f64,
    pub ok: f64,
    pub lost: f64,
    pub send_failed: f64,
    pub in_flight: f64,
    /// The probe's end-to-end p50 and p99 over its window, ms (what the broker's latency does).
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Where the broker keeps the records.
pub enum Engine {
    /// tansu's memory engine (the tests' broker): its fetches list every record held, so they
    /// slow as the run goes on. For short runs.
    Memory,
    /// tansu's SQLite engine (`--storage-engine sqlite://...`), in a binary built with the
    /// `libsql` feature: indexed fetches, flat for an hour.
    Sqlite(std::path::PathBuf),
}

impl Engine {
    /// The SQLite engine when `SLO_PROBE_SOAK_TANSU` names a tansu built with it.
    pub fn from_env() -> Engine {
        std::env::var_os("SLO_PROBE_SOAK_TANSU")
            .map_or(Engine::Memory, |p| Engine::Sqlite(p.into()))
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Engine::Memory => "tansu 0.6's memory engine",
            Engine::Sqlite(_) => {
                "tansu 0.6's SQLite engine (built with `--features libsql`), its file on disk"
            }
        }
    }
}

pub struct Run {
    pub samples: Vec<Sample>,
    /// Samples of the healthy run after the fill.
    pub steady: Vec<Sample>,
    /// Samples during the outage.
    pub outage: Vec<Sample>,
    /// Samples after the broker came back.
    pub after: Vec<Sample>,
    /// Seconds from the broker's return to the next verified record.
    pub recovered_after_s: f64,
    /// Every scrape conserved the counts.
    pub conserved: bool,
    pub scrapes: usize,
}

/// Where the soak leaves what a reader needs after a failed run: `target/<name>`.
pub fn artifact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name)
}

/// Least-squares slope of `y` over `x`.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

struct Agent {
    process: AgentProcess,
    started: Instant,
    last_ticks: u64,
    last_at: Instant,
    conserved: bool,
    scrapes: usize,
}

impl Agent {
    async fn sample(&mut self) -> Sample {
        let m = self.process.metrics().await;
        let outcome = |o: &str| sum(&m, "slo_probe_records_total", &format!("outcome=\"{o}\""));
        let (ok, lost, corrupt, send_failed) = (
            outcome("ok"),
            outcome("lost"),
            outcome("corrupt"),
            outcome("send_failed"),
        );
        let sent = sum(&m, "slo_probe_records_sent_total", "probe=");
        let in_flight = sum(&m, "slo_probe_in_flight", "probe=");
        let quantile = |q: &str| {
            sum(
                &m,
                "slo_probe_e2e_latency_seconds",
                &format!("quantile=\"{q}\""),
            ) * 1000.0
        };
        self.scrapes += 1;
        if !m.is_empty() && sent != ok + lost + corrupt + send_failed + in_flight {
            self.conserved = false;
            eprintln!(
                "soak: not conserved: sent {sent} != {ok} ok + {lost} lost + {corrupt} corrupt + {send_failed} send_failed + {in_flight} in flight"
            );
        }
        let now = Instant::now();
        let ticks = cpu_ticks(self.process.pid()).unwrap_or(self.last_ticks);
        let cpu_pct = (ticks - self.last_ticks) as f64
            / ticks_per_second() as f64
            / now.duration_since(self.last_at).as_secs_f64()
            * 100.0;
        (self.last_ticks, self.last_at) = (ticks, now);
        let (rss, _) = rss_kib(self.process.pid()).unwrap_or((0, 0));
        Sample {
            at: self.started.elapsed().as_secs_f64(),
            rss_mib: rss as f64 / 1024.0,
            cpu_pct,
            sent,
            ok,
            lost,
            send_failed,
            in_flight,
            p50_ms: quantile("0.5"),
            p99_ms: quantile("0.99"),
        }
    }

    /// Samples every `every` for `d`.
    async fn watch(&mut self, d: Duration, every: Duration, into: &mut Vec<Sample>) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            tokio::time::sleep(every.min(end - Instant::now())).await;
            into.push(self.sample().await);
        }
    }
}

/// tansu 0.6's SQLite schema has no index on `header`: reading a record's headers scans every
/// header of every record held, so a fetch costs more with every record produced (at 300
/// records/s tansu took a whole core within a minute and lost records within two). The index
/// its fetch query needs (`header_fetch.sql` joins on `topition, offset_id`), made with
/// Python's own SQLite once tansu has made its tables.
fn index_headers(db: &std::path::Path) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             c.execute('create index if not exists header_record on header (topition, offset_id)')\n\
             c.commit()\n\
             print(c.execute(\"select count(*) from sqlite_master where name = 'header_record'\").fetchone()[0])",
        ])
        .arg(db)
        .output()
        .expect("python3 runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "soak: indexing tansu's headers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn run(bin: &std::path::Path, t: &Timing, engine: &Engine) -> Run {
    let port = free_port();
    let dir = Tree::new();
    let broker = match engine {
        Engine::Memory => Tansu::advertising(Some(port)),
        Engine::Sqlite(tansu) => {
            let broker = Tansu::with_storage(
                Some(port),
                tansu.clone(),
                "sqlite://soak.db",
                Some(dir.path()),
            );
            index_headers(&dir.path().join("soak.db"));
            broker
        }
    };
    let upstream = format!("127.0.0.1:{}", broker.port).parse().unwrap();
    let front = || Front::start(port, upstream, false, None, dir.path());
    let mut gate = Some(front().await);
    crate::common::create_topics(&broker.bootstrap(), &[(TOPIC, PARTITIONS)]).await;

    let tree = Tree::new();
    // tansu holds every fetch for the whole wait, and its memory engine's fetches cost CPU in
    // proportion to the records it holds: at the verifier's 10 ms wait (about 90 fetches a
    // second) it fell behind 300 records/s after about 20 minutes, and the soak measured tansu.
    // A 200 ms wait (a user's setting, used as it is) cuts its fetches twentyfold; latency then
    // includes up to 200 ms of tansu's hold, which this scenario does not measure.
    tree.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  primary:\n    bootstrap_servers: {}\n    consumer:\n      fetch.wait.max.ms: \"{FETCH_WAIT_MS}\"\n",
            broker.bootstrap()
        ),
    );
    tree.write(
        "probes/soak.yaml",
        &format!(
            "name: soak\ntopic: {TOPIC}\ninterval: {}\ntimeout: {}\nmax_in_flight: {}\nslos:\n  - {{ name: freshness, latency_below: 500ms, objective: 99% }}\n  - {{ name: completeness, objective: 99.9% }}\n",
            humantime::format_duration(t.interval),
            humantime::format_duration(t.timeout),
            t.max_in_flight
        ),
    );
    let process = AgentProcess::start_logging(bin, tree, Some(&artifact("soak-agent.log")));
    let started = Instant::now();
    assert!(
        process.ready(Duration::from_secs(60)).await,
        "the soak agent gets ready"
    );
    let mut agent = Agent {
        last_ticks: cpu_ticks(process.pid()).unwrap_or(0),
        process,
        started,
        last_at: Instant::now(),
        conserved: true,
        scrapes: 0,
    };
    let mut samples = Vec::new();
    agent
        .watch(
            t.soak.saturating_sub(started.elapsed()),
            t.sample,
            &mut samples,
        )
        .await;
    let steady: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at >= t.fill.as_secs_f64())
        .collect();

    // The broker goes away: every connection reset, connects refused.
    drop(gate.take());
    let mut outage = Vec::new();
    agent.watch(t.outage, t.sample, &mut outage).await;

    let _ = std::fs::write(
        artifact("soak-status-outage.json"),
        agent.process.get("/status").await,
    );
    gate = Some(front().await);
    let back = Instant::now();
    let ok_before = agent.sample().await.ok;
    let mut recovered_after_s = f64::NAN;
    let mut after = Vec::new();
    while back.elapsed() < t.recovery {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = agent.sample().await;
        if recovered_after_s.is_nan() && s.ok > ok_before {
            recovered_after_s = back.elapsed().as_secs_f64();
        }
        if after
            .last()
            .is_none_or(|l: &Sample| s.at - l.at >= t.sample.as_secs_f64())
        {
            after.push(s);
        }
    }
    let _ = std::fs::write(
        artifact("soak-status-end.json"),
        agent.process.get("/status").await,
    );
    drop(gate);
    let all: Vec<Sample> = samples
        .iter()
        .chain(&outage)
        .chain(&after)
        .copied()
        .collect();
    Run {
        samples: all,
        steady,
        outage,
        after,
        recovered_after_s,
        conserved: agent.conserved,
        scrapes: agent.scrapes,
    }
}
