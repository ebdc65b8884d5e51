//! A fault-injecting relay, standing in for a pipeline stage: consumes every partition of one
//! topic and re-produces each record (key, value, headers, partition) to another, applying one
//! fault to the records a seeded selector picks. Which records are picked depends only on the
//! seed and each record's (partition, seq), never on arrival order, so a test knows the exact
//! expected counts in advance.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward unchanged.
    Pass,
    /// Do not forward picked records.
    Drop,
    /// Forward picked records twice.
    Duplicate,
    /// Hold a picked record and forward it after the next record of its partition.
    Reorder,
    /// Change one character of a picked record's payload (still valid JSON), or, in a value
    /// without a payload field (Avro), the lowest bit of its last byte.
    Corrupt,
    /// Forward every record after this delay (order kept).
    Delay(Duration),
    /// Forward every record, each followed by a garbage record on the same partition.
    Garbage,
    /// Rewrite every record as a pipeline would, after `delay`:
    /// `{"order": {"ref": <id>, "seq": <seq>, "team": <tags.team>}, "amount": 42, "source": "relay"}`
    /// without a key; headers passed through only when `keep_headers`. Picked records get a
    /// wrong `amount` (41).
    Transform { delay: Duration, keep_headers: bool },
    /// Picked records lose their `traceparent` header (even seq) or get another trace id in it
    /// (odd seq, still a valid W3C value): a pipeline that drops or mangles trace context.
    TraceContext,
    /// Forward every record after `fast`, picked records after `slow` instead (a known mixed
    /// distribution; later records may overtake a slow one, as in a real pipeline).
    Mixed { fast: Duration, slow: Duration },
}

/// A consumer of every partition of `topic` from its beginning, fetching with little delay.
pub fn from_beginning(servers: &str, topic: &str, partitions: i32, group: &str) -> StreamConsumer {
    from_beginning_waiting(servers, topic, partitions, group, 5)
}

/// [`from_beginning`], letting a broker hold each fetch at most `fetch_wait_ms`.
pub fn from_beginning_waiting(
    servers: &str,
    topic: &str,
    partitions: i32,
    group: &str,
    fetch_wait_ms: u32,
) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Picks about one record in `one_in` from `seed`, by (partition, seq).
#[derive(Debug, Clone, Copy)]
pub struct Picker {
    pub seed: u64,
    pub one_in: u64,
}

impl Picker {
    /// Picks nothing.
    pub const NONE: Picker = Picker {
        seed: 0,
        one_in: u64::MAX,
    };

    pub fn picks(&self, partition: i32, seq: u64) -> bool {
        // splitmix64 of the seed mixed with the record's coordinates
        let mut z = self.seed ^ ((partition as u64) << 40) ^ seq;
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z.is_multiple_of(self.one_in)
    }
}

/// What the relay did, for exact assertions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub seen: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Pairs actually swapped (a held record forwarded after a later one).
    pub swapped: u64,
    pub corrupted: u64,
    pub garbage: u64,
    /// Transform: records given a wrong amount.
    pub wrong: u64,
    /// TraceContext: headers dropped and headers given another trace id.
    pub traceparent_dropped: u64,
    pub traceparent_changed: u64,
}

pub struct Relay {
    pub tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying topic `from` -> `to` on one cluster (both with `partitions` partitions),
    /// from the beginning.
    pub fn start(
        bootstrap: &str,
        from: &str,
        to: &str,
        partitions: i32,
        fault: Fault,
        picker: Picker,
    ) -> Relay {
        Relay::between(
            (bootstrap, from),
            (bootstrap, to),
            partitions,
            fault,
            picker,
        )
    }

    /// Starts relaying between clusters (a mirror when `fault` is `Pass` or `Delay`): each
    /// `(bootstrap servers, topic)`; records keep their partition.
    pub fn between(
        from: (&str, &str),
        to: (&str, &str),
        partitions: i32,
        fault: Fault,
        picker: Picker,
    ) -> Relay {
        let ((from_servers, from), (to_servers, to)) = (from, to);
        let consumer = from_beginning(from_servers, from, partitions, "test-relay");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", to_servers)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let state = State {
            to: to.to_string(),
            fault,
            picker,
            producer,
            tally: Arc::clone(&tally),
            queue: VecDeque::new(),
            held: HashMap::new(),
        };
        let task = tokio::spawn(run(consumer, state, stop.clone()));
        Relay { tally, stop, task }
    }

    /// A fresh embedded cluster with topics `in` and `out` (`partitions` each) and a relay
    /// `in` -> `out` applying `fault`.
    pub fn on_embedded(
        brokers: i32,
        partitions: i32,
        fault: Fault,
        picker: Picker,
    ) -> (slo_probe::EmbeddedCluster, Relay) {
        let cluster = slo_probe::EmbeddedCluster::start(brokers).unwrap();
        for topic in ["in", "out"] {
            cluster.create_topic(topic, partitions, 1).unwrap();
        }
        let relay = Relay::start(
            cluster.bootstrap_servers(),
            "in",
            "out",
            partitions,
            fault,
            picker,
        );
        (cluster, relay)
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    pub async fn stop(self) -> Tally {
        self.stop.cancel();
        self.task.await.unwrap();
        self.tally.lock().unwrap().clone()
    }
}

/// How long a reordered record waits for a later one before it is forwarded anyway.
const HOLD: Duration = Duration::from_millis(400);

struct State {
    to: String,
    fault: Fault,
    picker: Picker,
    producer: FutureProducer,
    tally: Arc<Mutex<Tally>>,
    /// Records to forward, with when.
    queue: VecDeque<(Instant, OwnedMessage)>,
    /// Reorder: one held record per partition, with its hold deadline.
    held: HashMap<i32, (Instant, OwnedMessage)>,
}

/// Keeps the queue ordered by due time (records due at the same time keep their order).
fn enqueue(queue: &mut VecDeque<(Instant, OwnedMessage)>, item: (Instant, OwnedMessage)) {
    let at = queue
        .iter()
        .rposition(|(due, _)| *due <= item.0)
        .map_or(0, |i| i + 1);
    queue.insert(at, item);
}

fn seq(m: &OwnedMessage) -> u64 {
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == "slo-probe-seq")
                .and_then(|h| h.value)
        })
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .expect("probe records carry slo-probe-seq")
}

fn corrupt(m: &OwnedMessage) -> OwnedMessage {
    let mut value = m.payload().unwrap().to_vec();
    // A payload character when the value has one (the envelope, a JSON template with a payload
    // field), else the lowest bit of the last byte (in Avro, the last field).
    match value.windows(11).position(|w| w == b"\"payload\":\"") {
        Some(at) => {
            let at = at + 11;
            value[at] = if value[at] == b'A' { b'B' } else { b'A' };
        }
        None => *value.last_mut().expect("a value") ^= 1,
    }
    OwnedMessage::new(
        Some(value),
        m.key().map(<[u8]>::to_vec),
        m.topic().to_string(),
        m.timestamp(),
        m.partition(),
        m.offset(),
        m.headers().cloned(),
    )
}

fn transform(m: &OwnedMessage, wrong: bool, keep_headers: bool) -> OwnedMessage {
    let envelope: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    let out = serde_json::json!({
        "order": {
            "ref": envelope["id"],
            "seq": envelope["seq"],
            "team": envelope["tags"]["team"],
        },
        "amount": if wrong { 41 } else { 42 },
        "source": "relay",
    });
    OwnedMessage::new(
        Some(serde_json::to_vec(&out).unwrap()),
        None,
        m.topic().to_string(),
        m.timestamp(),
        m.partition(),
        m.offset(),
        if keep_headers {
            m.headers().cloned()
        } else {
            None
        },
    )
}

/// The record with its `traceparent` removed, or with another (valid) trace id in it.
fn retrace(m: &OwnedMessage, drop: bool) -> OwnedMessage {
    let mut headers = OwnedHeaders::new();
    for h in m.headers().unwrap().iter() {
        if h.key != "traceparent" {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        } else if !drop {
            // 00-<trace id>-<parent id>-<flags>: flip the trace id's last hex digit
            let mut v = h.value.unwrap().to_vec();
            let at = 3 + 31;
            v[at] = if v[at] == b'0' { b'1' } else { b'0' };
            headers = headers.insert(Header {
                key: h.key,
                value: Some(&v),
            });
        }
    }
    OwnedMessage::new(
        m.payload().map(<[u8]>::to_vec),
        m.key().map(<[u8]>::to_vec),
        m.topic().to_string(),
        m.timestamp(),
        m.partition(),
        m.offset(),
        Some(headers),
    )
}

fn garbage(m: &OwnedMessage) -> OwnedMessage {
    OwnedMessage::new(
        Some(b"\xde\xad not a probe record".to_vec()),
        None,
        m.topic().to_string(),
        m.timestamp(),
        m.partition(),
        m.offset(),
        None,
    )
}

impl State {
    fn handle(&mut self, m: OwnedMessage, now: Instant) {
        let (partition, seq) = (m.partition(), seq(&m));
        let picked = self.picker.picks(partition, seq);
        let mut t = self.tally.lock().unwrap();
        t.seen += 1;
        match self.fault {
            Fault::Pass => enqueue(&mut self.queue, (now, m)),
            Fault::Drop if picked => t.dropped += 1,
            Fault::Duplicate if picked => {
                t.duplicated += 1;
                enqueue(&mut self.queue, (now, m.clone()));
                enqueue(&mut self.queue, (now, m));
            }
            Fault::Reorder => {
                let earlier = self.held.remove(&partition);
                if picked && earlier.is_none() {
                    self.held.insert(partition, (now + HOLD, m));
                } else {
                    enqueue(&mut self.queue, (now, m));
                    if let Some((_, h)) = earlier {
                        t.swapped += 1;
                        enqueue(&mut self.queue, (now, h));
                    }
                }
            }
            Fault::Corrupt if picked => {
                t.corrupted += 1;
                enqueue(&mut self.queue, (now, corrupt(&m)));
            }
            Fault::Delay(d) => enqueue(&mut self.queue, (now + d, m)),
            Fault::Mixed { fast, slow } => {
                let d = if picked { slow } else { fast };
                enqueue(&mut self.queue, (now + d, m));
            }
            Fault::Garbage => {
                t.garbage += 1;
                let g = garbage(&m);
                enqueue(&mut self.queue, (now, m));
                enqueue(&mut self.queue, (now, g));
            }
            Fault::Transform {
                delay,
                keep_headers,
            } => {
                t.wrong += u64::from(picked);
                enqueue(
                    &mut self.queue,
                    (now + delay, transform(&m, picked, keep_headers)),
                );
            }
            Fault::TraceContext if picked => {
                let drop = seq % 2 == 0;
                if drop {
                    t.traceparent_dropped += 1;
                } else {
                    t.traceparent_changed += 1;
                }
                enqueue(&mut self.queue, (now, retrace(&m, drop)));
            }
            Fault::Drop | Fault::Duplicate | Fault::Corrupt | Fault::TraceContext => {
                enqueue(&mut self.queue, (now, m))
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        let q = self.queue.front().map(|(at, _)| *at);
        let h = self.held.values().map(|(at, _)| *at).min();
        q.into_iter().chain(h).min()
    }

    async fn flush(&mut self, now: Instant) {
        let expired: Vec<i32> = self
            .held
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            let (_, m) = self.held.remove(&p).unwrap();
            enqueue(&mut self.queue, (now, m));
        }
        while self.queue.front().is_some_and(|(at, _)| *at <= now) {
            let (_, m) = self.queue.pop_front().unwrap();
            let mut headers = OwnedHeaders::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
            let mut r = FutureRecord::to(&self.to)
                .partition(m.partition())
                .headers(headers);
            if let Some(k) = m.key() {
                r = r.key(k);
            }
            if let Some(v) = m.payload() {
                r = r.payload(v);
            }
            // Handed to librdkafka without waiting for the broker's acknowledgement, as a pipeline
            // would: waiting made the relay itself the bottleneck at tens of records/s.
            self.producer
                .send_result(r)
                .map_err(|(e, _)| e)
                .expect("relay forwards");
            self.tally.lock().unwrap().forwarded += 1;
        }
    }
}

async fn run(consumer: StreamConsumer, mut state: State, stop: CancellationToken) {
    loop {
        let due = state.next_due();
        tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => {
                // A test that ends without stopping its relays drops the cluster first; a relay
                // that stops relaying mid-test shows in the tally and the probes' counts.
                let m = match m {
                    Ok(m) => m.detach(),
                    Err(e) => {
                        eprintln!("relay: stops consuming: {e}");
                        break;
                    }
                };
                state.handle(m, Instant::now());
                state.flush(Instant::now()).await;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                state.flush(Instant::now()).await;
            }
        }
    }
}

/// Two pipelines on one embedded cluster: `lossy-in` -> `lossy-out` through a relay that drops
/// the picked records, `mangled-in` -> `mangled-out` through one that corrupts them.
pub struct Spoiling {
    pub cluster: slo_probe::EmbeddedCluster,
    pub relays: Vec<Relay>,
}

impl Spoiling {
    /// The names of the two pipelines, each a probe's name in the tests.
    pub const NAMES: [&str; 2] = ["lossy", "mangled"];

    pub fn start(brokers: i32, partitions: i32, picker: Picker) -> Spoiling {
        let cluster = slo_probe::EmbeddedCluster::start(brokers).unwrap();
        for topic in ["lossy-in", "lossy-out", "mangled-in", "mangled-out"] {
            cluster.create_topic(topic, partitions, 1).unwrap();
        }
        let relays = Spoiling::NAMES
            .into_iter()
            .zip([Fault::Drop, Fault::Corrupt])
            .map(|(name, fault)| {
                Relay::start(
                    cluster.bootstrap_servers(),
                    &format!("{name}-in"),
                    &format!("{name}-out"),
                    partitions,
                    fault,
                    picker,
                )
            })
            .collect();
        Spoiling { cluster, relays }
    }

    /// A probe file per pipeline (`extra` appended to each), in `probes/` of `t`.
    pub fn probe_files(&self, t: &super::Tree, interval: &str, timeout: &str, extra: &str) {
        for name in Spoiling::NAMES {
            t.write(
                &format!("probes/{name}.yaml"),
                &format!(
                    "name: {name}\ntopic: {name}-in\ninterval: {interval}\ntimeout: {timeout}\nverify:\n  kafka: {{ topic: {name}-out }}\n{extra}"
                ),
            );
        }
    }
}
