//! A timed job, standing in for a Flink job between two topics (no Flink here): it reads every
//! partition of its input topic, holds each record a known time (the job's processing), then
//! writes it to its output topic (same key, headers and partition) stamped with the time it
//! finished, on its own clock: as the record's CreateTime, and, when asked, as a `processed_at`
//! field added to the value (RFC 3339 with microseconds), as a job that writes its processing
//! time would. Its clock can be set behind the machine's, standing for a job host whose clock is
//! off. The stamp is the moment the hold ends, whenever the runtime gets to the send: the
//! injected time is exact, and the job's read of its input (fetches held at most 1 ms) is
//! the only other time in its hop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::relay::from_beginning_waiting;

/// How the job treats each record.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long it holds each record after reading it.
    pub hold: Duration,
    /// How far its clock is behind the machine's.
    pub clock_behind: Duration,
    /// Also write the finishing time into the value as `processed_at`.
    pub processed_at: bool,
}

pub struct TimedJob {
    /// Records written to the output topic.
    pub written: Arc<Mutex<u64>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TimedJob {
    /// Starts the job `from` -> `to` on one cluster (`partitions` each), from the beginning.
    pub fn start(bootstrap: &str, from: &str, to: &str, partitions: i32, timing: Timing) -> Self {
        // a broker that holds fetches (tansu) answers within a millisecond of a record
        let consumer = from_beginning_waiting(bootstrap, from, partitions, "test-timed-job", 1);
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let written = Arc::new(Mutex::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            consumer,
            producer,
            to.to_string(),
            timing,
            Arc::clone(&written),
            stop.clone(),
        ));
        TimedJob {
            written,
            stop,
            task,
        }
    }

    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap();
        *self.written.lock().unwrap()
    }
}

/// A read record: when its hold ends, and the job's clock then.
struct Held {
    due: Instant,
    finished: SystemTime,
    message: OwnedMessage,
}

async fn run(
    consumer: StreamConsumer,
    producer: FutureProducer,
    to: String,
    timing: Timing,
    written: Arc<Mutex<u64>>,
    stop: CancellationToken,
) {
    let mut queue: VecDeque<Held> = VecDeque::new();
    loop {
        let due = queue.front().map(|h| h.due);
        tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.recv() => {
                let Ok(m) = m else { continue };
                let (now, wall) = (Instant::now(), SystemTime::now());
                queue.push_back(Held {
                    due: now + timing.hold,
                    finished: wall + timing.hold - timing.clock_behind,
                    message: m.detach(),
                });
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let held = queue.pop_front().unwrap();
                send(&producer, &to, &held, timing.processed_at);
                *written.lock().unwrap() += 1;
            }
        }
    }
}

fn send(producer: &FutureProducer, to: &str, held: &Held, processed_at: bool) {
    let m = &held.message;
    let since_epoch = held.finished.duration_since(UNIX_EPOCH).unwrap();
    let value = match (processed_at, m.payload()) {
        (true, Some(v)) => {
            let mut doc: serde_json::Value = serde_json::from_slice(v).unwrap();
            let at = humantime::format_rfc3339_micros(held.finished).to_string();
            doc["processed_at"] = serde_json::Value::String(at);
            Some(serde_json::to_vec(&doc).unwrap())
        }
        (_, v) => v.map(<[u8]>::to_vec),
    };
    let mut r = FutureRecord::to(to)
        .partition(m.partition())
        .timestamp(since_epoch.as_millis() as i64);
    if let Some(h) = m.headers() {
        r = r.headers(h.clone());
    }
    if let Some(k) = m.key() {
        r = r.key(k);
    }
    if let Some(v) = &value {
        r = r.payload(v);
    }
    producer
        .send_result(r)
        .map_err(|(e, _)| e)
        .expect("the job writes");
}
