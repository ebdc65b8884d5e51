//! The paired Kafka verifier: one consumer per cluster, shared by every probe that verifies on
//! it, assigned explicit partitions (see [`crate::kafka`] for the settings and why).
//!
//! Each record read is claimed by its headers (or envelope): this agent's records go to their
//! probe, other agents' records on a shared topic are skipped, and anything else is counted as
//! foreign for every probe reading that topic.
//!
//! The consumer is replaced once when [`super::fetch_wait`] finds that the broker answers
//! fetches when data arrives: by one waiting longer, assigned where the old one would have read
//! next. The read loop does the swap itself (no record is read from the old consumer after its
//! positions are taken), holding the assignment lock (no partition is added meanwhile).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ClusterConfig;
use crate::kafka::{self, Consumer, FETCH_WAIT_LONG, FETCH_WAIT_SHORT, TopicError};
use crate::outcome::{Mark, Stamp, Stamps};
use crate::probe::Probe;
use crate::record::{self, Claim, ForeignReason, View, avro};
use crate::registry::Registry;
use crate::verify::fetch_wait::{self, Choice, FetchWaitStatus, Marker};

/// Bound on each metadata or watermark request.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The partitions of `topic` to read, each from the end offset its broker reported. A broker
/// reporting a negative end offset is broken: an error naming it, never a panic.
fn assignment(
    cluster: &str,
    topic: &str,
    starts: &[(i32, i64)],
) -> Result<TopicPartitionList, TopicError> {
    let mut tpl = TopicPartitionList::new();
    for &(p, high) in starts {
        let invalid = |e: String| TopicError::Other {
            cluster: cluster.to_string(),
            topic: topic.to_string(),
            error: format!(
                "the broker reported an invalid end offset {high} for partition {p}: {e}"
            ),
        };
        if high < 0 {
            return Err(invalid("offsets start at 0".into()));
        }
        tpl.add_partition_offset(topic, p, Offset::Offset(high))
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(tpl)
}

pub struct KafkaVerifier {
    cluster: ClusterConfig,
    instance: String,
    /// The consumer records are read with: replaced once at most (the fetch wait raised);
    /// never locked across an await.
    consumer: RwLock<Arc<Consumer>>,
    /// Verify topic -> the probes reading it.
    routes: RwLock<HashMap<String, Vec<Arc<Probe>>>>,
    /// Partitions assigned so far, with the offset each was first read from; only ever grows.
    assigned: tokio::sync::Mutex<BTreeMap<(String, i32), i64>>,
    /// How many partitions are assigned.
    assigned_count: watch::Sender<usize>,
    /// Verify topic -> the registry its records' writer schemas come from (`format: avro`).
    decoders: RwLock<HashMap<String, Arc<Registry>>>,
    /// The consumer's fetch wait and how it was chosen.
    fetch_wait: watch::Sender<FetchWaitStatus>,
    /// A raised fetch wait the read loop is to switch to (with the status to show once done).
    raise: watch::Sender<Option<FetchWaitStatus>>,
    /// Notes the arrival of the records the fetch-wait detector compares.
    pub(crate) marker: Marker,
}

impl KafkaVerifier {
    /// The verifier of `cluster`; `embedded`: the cluster is librdkafka's mock (it holds fetches).
    pub fn new(
        cluster: &ClusterConfig,
        instance: &str,
        embedded: bool,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let status = fetch_wait::initial(cluster, embedded);
        tracing::debug!(cluster = %cluster.name, fetch_wait_max_ms = status.max_ms, chosen = ?status.chosen, "{}", status.why);
        let consumer = kafka::create_consumer(cluster, instance, "consumer", FETCH_WAIT_SHORT)?;
        Ok(KafkaVerifier {
            consumer: RwLock::new(Arc::new(consumer)),
            cluster: cluster.clone(),
            instance: instance.to_string(),
            routes: RwLock::new(HashMap::new()),
            assigned: tokio::sync::Mutex::new(BTreeMap::new()),
            assigned_count: watch::Sender::new(0),
            decoders: RwLock::new(HashMap::new()),
            fetch_wait: watch::Sender::new(status),
            raise: watch::Sender::new(None),
            marker: Marker::default(),
        })
    }

    /// The consumer records are read with now.
    fn consumer(&self) -> Arc<Consumer> {
        let consumer = self.consumer.read().unwrap_or_else(|e| e.into_inner());
        Arc::clone(&consumer)
    }

    pub(crate) fn cluster(&self) -> &ClusterConfig {
        &self.cluster
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The consumer's fetch wait and how it was chosen, as it changes.
    pub fn fetch_wait(&self) -> watch::Receiver<FetchWaitStatus> {
        self.fetch_wait.subscribe()
    }

    /// How many partitions are assigned, as it changes.
    pub(crate) fn assigned_count(&self) -> watch::Receiver<usize> {
        self.assigned_count.subscribe()
    }

    /// The detector decided and nothing changes: shows it.
    pub(crate) fn settle_fetch_wait(&self, status: FetchWaitStatus) {
        self.fetch_wait.send_replace(status);
    }

    /// The detector found the broker answers early: the read loop switches to a consumer with
    /// the long wait, then shows `status`.
    pub(crate) fn raise_fetch_wait(&self, status: FetchWaitStatus) {
        self.raise.send_replace(Some(status));
    }

    /// The detector's assignment: every partition assigned so far, from its end.
    pub(crate) async fn detector_assignment(&self) -> (TopicPartitionList, HashSet<(String, i32)>) {
        let assigned = self.assigned.lock().await;
        let mut tpl = TopicPartitionList::new();
        for (t, p) in assigned.keys() {
            // Only an invalid partition fails, and these were assigned once already.
            let _ = tpl.add_partition_offset(t, *p, Offset::End);
        }
        (tpl, assigned.keys().cloned().collect())
    }

    /// Sends records of `probe` read from its verify topic to it; records of a topic that is
    /// read as Avro (`format: avro`) are decoded first, with the writer schemas of its registry.
    pub fn route(&self, probe: Arc<Probe>) -> Result<(), String> {
        if let Some(cfg) = probe.config.verify.kafka().and_then(|k| k.avro.as_ref()) {
            let mut decoders = self.decoders.write().unwrap_or_else(|e| e.into_inner());
            if !decoders.contains_key(&probe.verify_topic) {
                let registry = Registry::new(cfg)?;
                decoders.insert(probe.verify_topic.clone(), Arc::new(registry));
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(probe.verify_topic.clone())
            .or_default()
            .push(probe);
        Ok(())
    }

    /// The partitions of a topic on this cluster.
    pub async fn partitions(&self, topic: &str) -> Result<kafka::Partitions, TopicError> {
        let consumer = self.consumer();
        let cluster = self.cluster.clone();
        let t = topic.to_string();
        tokio::task::spawn_blocking(move || {
            kafka::partitions_blocking(consumer.client(), &cluster, &t, METADATA_TIMEOUT)
        })
        .await
        .unwrap_or_else(|e| Err(self.lookup_failed(topic, &e)))
    }

    /// Starts reading the given partitions of `topic` from their current end, if not already.
    /// Returns once the start offsets are fixed, so records sent afterwards are never missed.
    pub async fn ensure_assigned(&self, topic: &str, partitions: &[i32]) -> Result<(), TopicError> {
        let mut assigned = self.assigned.lock().await;
        let new: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !assigned.contains_key(&(topic.to_string(), *p)))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer();
        let (t, cluster) = (topic.to_string(), self.cluster.clone());
        let starts = tokio::task::spawn_blocking(move || {
            new.iter()
                .map(|&p| {
                    consumer
                        .fetch_watermarks(&t, p, METADATA_TIMEOUT)
                        .map(|(_, high)| (p, high))
                        .map_err(|e| TopicError::Unreachable {
                            cluster: cluster.name.clone(),
                            servers: cluster.bootstrap_servers.clone(),
                            error: format!("reading the end offset of {t}/{p}: {e}"),
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap_or_else(|e| Err(self.lookup_failed(topic, &e)))?;
        let tpl = assignment(&self.cluster.name, topic, &starts)?;
        // The consumer now: the read loop cannot replace it while the lock is held.
        self.consumer()
            .incremental_assign(&tpl)
            .map_err(|e| TopicError::Other {
                cluster: self.cluster.name.clone(),
                topic: topic.to_string(),
                error: format!("cannot assign partitions: {e}"),
            })?;
        for (p, high) in starts {
            tracing::debug!(cluster = %self.cluster.name, topic, partition = p, offset = high, "verifying from offset");
            assigned.insert((topic.to_string(), p), high);
        }
        self.assigned_count.send_replace(assigned.len());
        Ok(())
    }

    /// A metadata lookup whose blocking task failed (librdkafka panicked or was cancelled).
    fn lookup_failed(&self, topic: &str, e: &tokio::task::JoinError) -> TopicError {
        TopicError::Other {
            cluster: self.cluster.name.clone(),
            topic: topic.to_string(),
            error: format!("the metadata lookup failed: {e}"),
        }
    }

    /// Reads and dispatches records until `stop`; switches to a consumer with a longer fetch
    /// wait when told to.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let quiet = crate::util::quiet::Quiet::default();
        let mut raise = self.raise.subscribe();
        loop {
            let pending = raise.borrow_and_update().clone();
            if let Some(status) = pending {
                self.switch(status).await;
                continue;
            }
            let consumer = self.consumer();
            tokio::select! {
                _ = stop.cancelled() => break,
                // Err only when the sender is gone, which `self` holds.
                _ = raise.changed() => {}
                received = consumer.recv() => match received {
                    Ok(m) => {
                        let at = Instant::now();
                        self.marker.note(m.topic(), m.partition(), m.offset(), at);
                        let decoder = self.decoder(m.topic());
                        match decoder {
                            None => self.dispatch(&View::of(&m), at),
                            Some(registry) => {
                                let m = m.detach();
                                if let Some(decoded) = self.decode(&registry, &View::of(&m)).await {
                                    self.dispatch(&View::of(&m).with_decoded(&decoded), at);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if quiet.allow(&format!("{:?}", e.rdkafka_error_code())) {
                            tracing::warn!(cluster = %self.cluster.name, error = %e, "consumer error; librdkafka retries");
                        } else {
                            tracing::debug!(cluster = %self.cluster.name, error = %e, "consumer error");
                        }
                    }
                }
            }
        }
    }

    /// Replaces the consumer by one waiting [`FETCH_WAIT_LONG`], assigned where the old one
    /// would have read next: `position()` is the offset after the last record handed to this
    /// loop, so a record fetched but not yet handed over is fetched again, none is read twice.
    /// A partition nothing was read from yet starts where it was first assigned. Called by the
    /// read loop only, so nothing reads from the old consumer meanwhile; the assignment lock
    /// keeps `ensure_assigned` out.
    async fn switch(&self, status: FetchWaitStatus) {
        let switched = async {
            let assigned = self.assigned.lock().await;
            let old = self.consumer();
            let next = old
                .position()
                .map_err(|e| format!("cannot read the consumer's positions: {e}"))?;
            let mut tpl = TopicPartitionList::new();
            for ((t, p), start) in assigned.iter() {
                let at = next
                    .find_partition(t, *p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) if o >= 0 => Some(o),
                        _ => None,
                    })
                    .unwrap_or(*start);
                tpl.add_partition_offset(t, *p, Offset::Offset(at))
                    .map_err(|e| format!("cannot resume {t}/{p} at {at}: {e}"))?;
            }
            let new =
                kafka::create_consumer(&self.cluster, &self.instance, "consumer", FETCH_WAIT_LONG)
                    .map_err(|e| format!("cannot create the consumer: {e}"))?;
            if tpl.count() > 0 {
                new.incremental_assign(&tpl)
                    .map_err(|e| format!("cannot assign partitions: {e}"))?;
            }
            for e in tpl.elements() {
                tracing::debug!(cluster = %self.cluster.name, topic = e.topic(), partition = e.partition(), offset = ?e.offset(), "verifying from offset (fetch wait raised)");
            }
            *self.consumer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
            Ok::<_, String>(old)
        }
        .await;
        let cluster = self.cluster.name.as_str();
        match switched {
            Ok(old) => {
                // Closing waits on librdkafka's threads.
                tokio::task::spawn_blocking(move || drop(old));
                tracing::info!(cluster, fetch_wait_max_ms = status.max_ms, "{}", status.why);
                self.fetch_wait.send_replace(status);
            }
            Err(e) => {
                let status = FetchWaitStatus {
                    max_ms: FETCH_WAIT_SHORT.as_millis() as u64,
                    chosen: Choice::Undecided,
                    why: format!(
                        "{}; but the consumer could not be switched ({e}): keeping {} ms",
                        status.why,
                        FETCH_WAIT_SHORT.as_millis()
                    ),
                };
                tracing::warn!(cluster, fetch_wait_max_ms = status.max_ms, "{}", status.why);
                self.fetch_wait.send_replace(status);
            }
        }
        self.raise.send_replace(None);
    }

    fn decoder(&self, topic: &str) -> Option<Arc<Registry>> {
        let decoders = self.decoders.read().unwrap_or_else(|e| e.into_inner());
        decoders.get(topic).cloned()
    }

    /// The value of a record in the Confluent wire format as JSON, or why it is not one;
    /// `None` when its writer schema cannot be had from the registry now (counted for every
    /// probe reading the topic; the record is left unverified, and is lost at its deadline if
    /// nothing else verifies it).
    async fn decode(
        &self,
        registry: &Registry,
        view: &View<'_>,
    ) -> Option<Result<serde_json::Value, String>> {
        let Some(value) = view.value else {
            return Some(Err("the record has no value".into()));
        };
        let (id, body) = match avro::confluent_header(value) {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e)),
        };
        // Fetched once per id, then kept by the registry client.
        let schema = match registry.writer_schema(id).await {
            Ok(s) => s,
            Err(e) => {
                let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
                for p in routes.get(view.topic).into_iter().flatten() {
                    p.registry_failed(e.kind(), &e.to_string(), "writer_schema");
                }
                return None;
            }
        };
        Some(
            schema
                .decode_json(body)
                .map_err(|e| format!("not Avro of writer schema {id}: {e}")),
        )
    }

    fn dispatch(&self, view: &View, at: Instant) {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let Some(probes) = routes.get(view.topic) else {
            return;
        };
        // Where the topic stands (a job's output moving or not), whatever the record is.
        let read_ms = crate::util::time::now_ms();
        for p in probes {
            p.output_read(read_ms);
        }
        match record::claim(view) {
            Claim::Probe {
                probe,
                instance,
                id,
                ..
            } => {
                if instance != self.instance {
                    return; // another agent's record on a shared topic
                }
                let Some(p) = probes.iter().find(|p| p.name() == probe) else {
                    return;
                };
                let id = id
                    .or_else(|| p.record_id(view))
                    .or_else(|| view.key.and_then(|k| Uuid::try_parse_ascii(k).ok()));
                match id {
                    Some(id) => p.arrived(view, &id, at, &stamps(p, view)),
                    None => p.foreign(view, ForeignReason::MissingHeaders),
                }
            }
            Claim::Foreign(reason) => {
                // A pipeline's output may carry the record id only where `id_from` says: a known
                // id is ours; a valid id we never sent is another agent's record, skipped.
                // Several probes may read one output topic: the one that knows the id gets it.
                let mut any_id = false;
                for p in probes.iter().filter(|p| p.ids_in_values()) {
                    if let Some(id) = p.record_id(view) {
                        if p.knows(&id) {
                            p.arrived(view, &id, at, &stamps(p, view));
                            return;
                        }
                        any_id = true;
                    }
                }
                if any_id {
                    return;
                }
                for p in probes {
                    p.foreign(view, reason);
                }
            }
        }
    }
}

/// The timestamps a record read back carries for `probe`'s hops: on a downstream topic, the
/// downstream record's (its `hop_timestamp` field when the probe names one, else its broker
/// timestamp, CreateTime or LogAppendTime); none on the probe's own topic.
fn stamps(probe: &Probe, view: &View) -> Stamps {
    if !probe.hop_plan.downstream() {
        return Stamps::default();
    }
    let field = probe
        .config
        .verify
        .kafka()
        .and_then(|k| k.hop_timestamp.as_deref());
    let downstream = match field {
        Some(pointer) => view
            .json()
            .map_err(|e| format!("`{pointer}` cannot be read: {e}"))
            .and_then(|doc| Stamp::at(&doc, pointer, Mark::JobTimestamp)),
        None => broker_stamp(view.timestamp),
    };
    Stamps {
        downstream: Some(downstream),
        ..Stamps::default()
    }
}

/// A record's broker timestamp (milliseconds), and which kind it is.
fn broker_stamp(timestamp: rdkafka::Timestamp) -> Result<Stamp, String> {
    let (ms, mark) = match timestamp {
        rdkafka::Timestamp::CreateTime(ms) if ms >= 0 => (ms, Mark::CreateTime),
        rdkafka::Timestamp::LogAppendTime(ms) if ms >= 0 => (ms, Mark::LogAppendTime),
        _ => return Err("the record has no broker timestamp".into()),
    };
    Ok(Stamp {
        at_ns: ms.saturating_mul(1_000_000),
        mark,
        resolution_ns: 1_000_000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_timestamp_says_which_kind_it_is() {
        let ms = 1_796_032_800_123;
        assert_eq!(
            broker_stamp(rdkafka::Timestamp::CreateTime(ms)),
            Ok(Stamp {
                at_ns: ms * 1_000_000,
                mark: Mark::CreateTime,
                resolution_ns: 1_000_000,
            })
        );
        assert_eq!(
            broker_stamp(rdkafka::Timestamp::LogAppendTime(ms)).map(|s| s.mark),
            Ok(Mark::LogAppendTime)
        );
        for none in [
            rdkafka::Timestamp::NotAvailable,
            rdkafka::Timestamp::CreateTime(-1),
        ] {
            assert_eq!(
                broker_stamp(none),
                Err("the record has no broker timestamp".into())
            );
        }
    }

    #[test]
    fn a_negative_end_offset_from_a_broker_is_an_error() {
        let tpl = assignment("primary", "t", &[(0, 0), (1, 42)]).unwrap();
        assert_eq!(tpl.count(), 2);
        let e = assignment("primary", "t", &[(0, 5), (1, -3)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read topic t on cluster primary: the broker reported an invalid end offset -3 for partition 1: offsets start at 0"
        );
    }
}
