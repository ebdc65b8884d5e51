//! Fidelity: how close slo-probe's quantiles are to the truth.
//!
//! A relay between the probe topic and the verify topic delays each record by a known amount.
//! The harness reads the verify topic with a consumer of its own and records each record's real
//! end-to-end time (its arrival there minus its scheduled send time, both wall clock): the
//! ground truth. slo-probe's HDR quantiles are compared with the truth's exact quantiles, and
//! so are the same truth samples put into Strimzi canary's and KMinion's fixed buckets and read
//! back with Prometheus' linear interpolation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use slo_probe::Plan;

use crate::common::relay::{Fault, Picker, Relay};
use crate::env::{Broker, agent_in_process, reader};
use crate::stats::{self, STRIMZI_MS};

/// p50, p90, p99, p999.
pub const QS: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
const PARTITIONS: i32 = 3;

pub struct Profile {
    pub name: &'static str,
    pub fault: Fault,
    pub picker: Picker,
}

pub fn profiles() -> Vec<Profile> {
    vec![
        Profile {
            name: "constant 20 ms",
            fault: Fault::Delay(Duration::from_millis(20)),
            picker: Picker::NONE,
        },
        Profile {
            name: "constant 200 ms",
            fault: Fault::Delay(Duration::from_millis(200)),
            picker: Picker::NONE,
        },
        Profile {
            name: "99% 5 ms, 1% 300 ms",
            fault: Fault::Mixed {
                fast: Duration::from_millis(5),
                slow: Duration::from_millis(300),
            },
            picker: Picker {
                seed: 11,
                one_in: 100,
            },
        },
    ]
}

/// One run: the truth's exact quantiles, slo-probe's, and the bucketed readings, in ms.
pub struct Run {
    pub truth: [f64; 4],
    pub probe: [f64; 4],
    pub strimzi: [f64; 4],
    pub kminion: [f64; 4],
    pub samples: usize,
}

pub async fn run(
    broker: &Broker,
    profile: &Profile,
    rounds: u64,
    interval: Duration,
    tag: &str,
) -> Run {
    let (input, output) = (format!("fid-in-{tag}"), format!("fid-out-{tag}"));
    broker.create_topic(&input, PARTITIONS).await;
    broker.create_topic(&output, PARTITIONS).await;
    let relay = Relay::start(
        &broker.bootstrap(),
        &input,
        &output,
        PARTITIONS,
        profile.fault,
        profile.picker,
    );
    let expected = rounds as usize * PARTITIONS as usize;
    let truth = Arc::new(Mutex::new(Vec::with_capacity(expected)));
    let (ready, reading) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(read_truth(
        broker.bootstrap(),
        output.clone(),
        expected,
        Arc::clone(&truth),
        ready,
    ));
    // Neither the relay's nor the truth reader's start-up may count as pipeline delay: a
    // warm-up record per partition goes through both before the probe starts.
    warm_up(broker, &input).await;
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("truth reader warmed up")
        .ok();

    let probe = format!(
        "name: fidelity\ntopic: {input}\ninterval: {}\ntimeout: 5s\nverify:\n  kafka: {{ topic: {output} }}\n",
        humantime::format_duration(interval)
    );
    let (_tree, agent) = agent_in_process(broker, &probe, Plan::Rounds(rounds)).await;
    tokio::time::timeout(Duration::from_secs(600), agent.wait_finished())
        .await
        .expect("fidelity run ends");
    let snapshot = agent.probes()[0].snapshot(tokio::time::Instant::now());
    agent.shutdown(std::future::ready(())).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
    relay.stop().await;

    let c = snapshot.progress.counts;
    assert_eq!(c.sent, expected as u64, "every slot sent");
    let q = snapshot.e2e_total.expect("records verified");
    // QUANTILES are 0.5, 0.9, 0.95, 0.99, 0.999, 1
    let probe = [q[0], q[1], q[3], q[4]].map(|s| s * 1e3);
    let mut samples = truth.lock().unwrap().clone();
    samples.sort_by(f64::total_cmp);
    let kminion = stats::kminion_ms();
    Run {
        truth: QS.map(|q| stats::exact(&samples, q)),
        probe,
        strimzi: QS.map(|q| stats::bucketed(&samples, &STRIMZI_MS, q)),
        kminion: QS.map(|q| stats::bucketed(&samples, &kminion, q)),
        samples: samples.len(),
    }
}

/// Sends one (probe-shaped, for the relay) warm-up record per partition.
async fn warm_up(broker: &Broker, input: &str) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    for p in 0..PARTITIONS {
        // A probe-shaped record the relay can read (it needs slo-probe-seq).
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "slo-probe-seq",
            value: Some("0"),
        });
        let record = rdkafka::producer::FutureRecord::to(input)
            .partition(p)
            .payload("{}")
            .key("warmup")
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("warm-up record sent");
    }
}

/// Reads the verify topic from the beginning, recording arrival - scheduled send, ms.
/// Signals `ready` once it has read the warm-up records.
async fn read_truth(
    bootstrap: String,
    topic: String,
    expected: usize,
    out: Arc<Mutex<Vec<f64>>>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut warm = 0;
    let consumer = reader(&bootstrap, &topic, PARTITIONS, "bench-truth");

    while out.lock().unwrap().len() < expected {
        let Ok(m) = consumer.recv().await else {
            continue;
        };
        let arrived = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as f64;
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        else {
            continue;
        };
        match v["scheduled_at_ns"].as_u64() {
            Some(scheduled) => out.lock().unwrap().push((arrived - scheduled as f64) / 1e6),
            None => {
                warm += 1;
                if warm == PARTITIONS
                    && let Some(r) = ready.take()
                {
                    let _ = r.send(());
                }
            }
        }
    }
}
