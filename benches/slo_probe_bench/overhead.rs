//! Probe-added latency: slo-probe's reported end-to-end latency against a minimal raw rdkafka
//! produce -> consume loop (the shape of rust-rdkafka's `examples/roundtrip.rs`), run at the same
//! time, on the same broker, with the same client settings (linger.ms=0, acks=all,
//! fetch.wait.max.ms=10), the same rate and partitions. The raw loop is the physical floor: it
//! times a send call to its arrival. The gap is what slo-probe adds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use slo_probe::Plan;

use crate::env::{Broker, agent_in_process, raw_clients};
use crate::stats;

const PARTITIONS: i32 = 3;

/// p50 and p99 of the raw loop, of a second identical raw loop (the noise floor: what two
/// identical clients differ by on this broker in the same run) and of slo-probe, ms; and the
/// probe's own send lag (slot to producer), mean and share under 100 µs.
pub struct Run {
    pub raw: [f64; 2],
    pub raw_twin: [f64; 2],
    pub probe: [f64; 2],
    pub lag_mean_us: f64,
    pub lag_under_100us: f64,
}

pub async fn run(broker: &Broker, rounds: u64, interval: Duration, tag: &str) -> Run {
    let (raw_topic, twin_topic, probe_topic) = (
        format!("raw-{tag}"),
        format!("twin-{tag}"),
        format!("probed-{tag}"),
    );
    for t in [&raw_topic, &twin_topic, &probe_topic] {
        broker.create_topic(t, PARTITIONS).await;
    }
    let probe = format!(
        "name: overhead\ntopic: {probe_topic}\ninterval: {}\ntimeout: 5s\n",
        humantime::format_duration(interval)
    );
    let (_tree, agent) = agent_in_process(broker, &probe, Plan::Rounds(rounds)).await;
    let bootstrap = broker.bootstrap();
    let (raw, twin) = tokio::join!(
        raw_loop(&bootstrap, &raw_topic, rounds, interval),
        raw_loop(&bootstrap, &twin_topic, rounds, interval)
    );
    tokio::time::timeout(Duration::from_secs(600), agent.wait_finished())
        .await
        .expect("probe ends");
    let s = agent.probes()[0].snapshot(tokio::time::Instant::now());
    let metrics = agent.view().render_metrics();
    agent.shutdown(std::future::ready(())).await;
    let q = s.e2e_total.expect("records verified");
    let lag = |suffix: &str, labels: &[(&str, &str)]| {
        crate::common::sample(
            &metrics,
            &format!("slo_probe_send_lag_seconds_{suffix}"),
            labels,
        )
        .expect("send lag exported")
    };
    let count = lag("count", &[]);
    Run {
        raw: p50_p99(raw),
        raw_twin: p50_p99(twin),
        probe: [q[0] * 1e3, q[3] * 1e3],
        lag_mean_us: lag("sum", &[]) / count * 1e6,
        lag_under_100us: lag("bucket", &[("le", "0.0001")]) / count,
    }
}

fn p50_p99(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(f64::total_cmp);
    [stats::exact(&v, 0.5), stats::exact(&v, 0.99)]
}

/// One record per partition every `interval`; each timed from its send call to its arrival.
async fn raw_loop(bootstrap: &str, topic: &str, rounds: u64, interval: Duration) -> Vec<f64> {
    let (producer, consumer) = raw_clients(bootstrap, topic, PARTITIONS, "bench-raw", None).await;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let expected = rounds as usize * PARTITIONS as usize;
    let reader = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(expected);
            while latencies.len() < expected {
                let Ok(m) = consumer.recv().await else {
                    continue;
                };
                let at = Instant::now();
                let key = m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.parse::<u64>().ok());
                if let Some(t0) = key.and_then(|k| sent.lock().unwrap().remove(&k)) {
                    latencies.push(at.duration_since(t0).as_secs_f64() * 1e3);
                }
            }
            latencies
        })
    };
    // About the size of a probe record (envelope with its 256-byte payload).
    let payload = vec![b'x'; 600];
    let start = tokio::time::Instant::now();
    let mut n = 0u64;
    for round in 0..rounds {
        tokio::time::sleep_until(start + interval * round as u32).await;
        for p in 0..PARTITIONS {
            let key = n.to_string();
            sent.lock().unwrap().insert(n, Instant::now());
            let record = FutureRecord::to(topic)
                .partition(p)
                .key(&key)
                .payload(&payload);
            // Not awaited: the loop keeps its schedule like the probe's.
            let _ = producer.send_result(record);
            n += 1;
        }
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("raw records arrive")
        .unwrap()
}
