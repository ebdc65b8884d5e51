//! Scenarios on `slo-probe run` as a process of its own against a real broker process, so its
//! memory and CPU are its own: footprint, capacity, detection.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Tree;
use crate::common::infra::{Tansu, free_port};
use crate::env::{cpu_ticks, probe_files, rss_kib, ticks_per_second};
use crate::stats;

/// A running agent; killed when dropped.
pub struct AgentProcess {
    child: Child,
    pub addr: String,
    _tree: Tree,
}

impl AgentProcess {
    /// `bin run` with `n` probes (3 partitions, one shared topic) at `interval`.
    pub fn with_probes(
        bin: &Path,
        broker: &Tansu,
        n: usize,
        interval: Duration,
        topic: &str,
    ) -> AgentProcess {
        let t = Tree::new();
        t.agent_file(&broker.bootstrap());
        probe_files(&t, n, topic, interval);
        AgentProcess::start(bin, t)
    }

    /// `bin run` on the agent and probe files in `t`.
    pub fn start(bin: &Path, t: Tree) -> AgentProcess {
        AgentProcess::start_logging(bin, t, None)
    }

    /// `bin run` on the agent and probe files in `t`, its warnings and errors written to `log`.
    pub fn start_logging(bin: &Path, t: Tree, log: Option<&Path>) -> AgentProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let stderr = log.map_or_else(Stdio::null, |p| {
            Stdio::from(std::fs::File::create(p).expect("agent log created"))
        });
        let child = Command::new(bin)
            .args(["run", "--listen", &addr, "--log-level", "warn"])
            .current_dir(t.path())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("agent starts");
        AgentProcess {
            child,
            addr,
            _tree: t,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await
    }

    /// The body of `GET path` (empty when the agent does not answer).
    pub async fn get(&self, path: &str) -> String {
        match crate::common::http_client()
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sum over probes of one series, e.g. `slo_probe_records_total{...outcome="ok"...}`.
    pub async fn sum(&self, name: &str, label: &str) -> f64 {
        sum(&self.metrics().await, name, label)
    }

    /// Waits (bounded) until every probe verified a record.
    pub async fn ready(&self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(r) = crate::common::http_client()
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .await
                && r.status().as_u16() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sum(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .filter(|v| v.is_finite())
        .sum()
}

/// Each probe's window p99 from the metrics, ms.
pub fn p99s(metrics: &str) -> Vec<f64> {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("slo_probe_e2e_latency_seconds{") && l.contains("quantile=\"0.99\"")
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .filter(|v| v.is_finite())
        .map(|v| v * 1e3)
        .collect()
}

/// What a steady agent costs over `measure`, after `warmup`.
pub struct Usage {
    pub rss_mib: f64,
    pub peak_mib: f64,
    pub cpu_pct: f64,
    pub verified_per_s: f64,
    /// Median over probes of their window p99, ms.
    pub p99_ms: f64,
    /// CPU of the broker process over the same time, % of a core.
    pub broker_cpu_pct: f64,
}

pub async fn usage(
    agent: &AgentProcess,
    broker: &Tansu,
    warmup: Duration,
    measure: Duration,
) -> Usage {
    tokio::time::sleep(warmup).await;
    let ok = r#"outcome="ok""#;
    let broker_ticks = || broker.pid().and_then(cpu_ticks).unwrap_or(0);
    let (t0, c0, b0, v0) = (
        Instant::now(),
        cpu_ticks(agent.pid()).unwrap_or(0),
        broker_ticks(),
        agent.sum("slo_probe_records_total", ok).await,
    );
    tokio::time::sleep(measure).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let c1 = cpu_ticks(agent.pid()).unwrap_or(0);
    let b1 = broker_ticks();
    let pct = |ticks: u64| ticks as f64 / ticks_per_second() as f64 / elapsed * 100.0;
    let m = agent.metrics().await;
    let v1 = sum(&m, "slo_probe_records_total", ok);
    let (rss, peak) = rss_kib(agent.pid()).unwrap_or((0, 0));
    Usage {
        rss_mib: rss as f64 / 1024.0,
        peak_mib: peak as f64 / 1024.0,
        cpu_pct: pct(c1 - c0),
        broker_cpu_pct: pct(b1.saturating_sub(b0)),
        verified_per_s: (v1 - v0) / elapsed,
        p99_ms: stats::median(&p99s(&m)),
    }
}

/// Detection: after the broker process is killed, how long until the first record is counted
/// `lost`, and until `slo_probe_availability_ratio` drops below 1.
pub struct Detection {
    pub first_lost_s: f64,
    pub availability_drop_s: f64,
}

pub async fn detection(bin: &Path, broker: &mut Tansu, timeout: Duration) -> Detection {
    let t = Tree::new();
    t.agent_file(&broker.bootstrap());
    t.write(
        "probes/p.yaml",
        &format!(
            "name: detect\ninterval: 200ms\ntimeout: {}\ncreate_topic: {{ partitions: 3 }}\n",
            humantime::format_duration(timeout)
        ),
    );
    let agent = AgentProcess::start(bin, t);
    assert!(agent.ready(Duration::from_secs(60)).await, "agent ready");
    // Let the availability window fill with good outcomes first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.kill();
    let killed = Instant::now();
    let (mut first_lost, mut dropped) = (None, None);
    while (first_lost.is_none() || dropped.is_none()) && killed.elapsed() < timeout * 10 {
        let m = agent.metrics().await;
        if first_lost.is_none() && sum(&m, "slo_probe_records_total", r#"outcome="lost""#) > 0.0 {
            first_lost = Some(killed.elapsed());
        }
        let availability = sum(&m, "slo_probe_availability_ratio", "probe=");
        if dropped.is_none() && availability < 1.0 && availability > 0.0 {
            dropped = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(agent);
    broker.restart();
    Detection {
        first_lost_s: first_lost.map_or(f64::NAN, |d| d.as_secs_f64()),
        availability_drop_s: dropped.map_or(f64::NAN, |d| d.as_secs_f64()),
    }
}
