//! Partition discovery, shared by every probe on a topic, and which verifiers read what: it
//! drives the Kafka verifier's assignments, so it sits above `probe` and `verify`.
//!
//! [`watch_topic`]: one task per (cluster, topic) reads the topic's partitions and leaders every
//! `metadata_refresh` (creating the topic first when a probe on it has `create_topic`), and
//! publishes them; retries with backoff while the cluster is unreachable.
//!
//! [`follow`]: one lightweight task per probe turns what its topics' watches publish into the
//! probe's partitions: keeps the listed ones, makes the verifier read the verify topic's
//! partitions from their end, then hands the set to the probe's send loop. Added partitions
//! are covered from the next round on.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, CreateTopic, Partitions};
use crate::kafka::{self, Producer, TopicError};
use crate::probe::Probe;
use crate::verify::kafka::{KafkaVerifier, METADATA_TIMEOUT};

/// What a topic's watch knows: nothing yet, its partitions, or why it cannot read them.
pub type TopicState = Option<Result<kafka::Partitions, TopicError>>;

const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The client a topic's metadata is read with.
#[derive(Clone)]
pub(crate) enum MetadataClient {
    Producer(Arc<Producer>),
    Verifier(Arc<KafkaVerifier>),
}

impl MetadataClient {
    async fn partitions(
        &self,
        cluster: &ClusterConfig,
        topic_name: &str,
    ) -> Result<kafka::Partitions, TopicError> {
        match self {
            MetadataClient::Producer(p) => {
                let (p, cluster, topic) = (Arc::clone(p), cluster.clone(), topic_name.to_string());
                let name = cluster.name.clone();
                tokio::task::spawn_blocking(move || {
                    kafka::partitions_blocking(p.client(), &cluster, &topic, METADATA_TIMEOUT)
                })
                .await
                .unwrap_or_else(|e| {
                    Err(TopicError::Other {
                        cluster: name,
                        topic: topic_name.to_string(),
                        error: format!("the metadata lookup failed: {e}"),
                    })
                })
            }
            MetadataClient::Verifier(v) => v.partitions(topic_name).await,
        }
    }
}

/// Everything a topic's watch needs; cloned for each (re)start of the task.
#[derive(Clone)]
pub(crate) struct TopicWatch {
    pub cluster: ClusterConfig,
    pub topic: String,
    pub client: MetadataClient,
    /// Create the topic when missing (from the first probe on it that asks).
    pub create: Option<CreateTopic>,
    pub instance: String,
    pub refresh: Duration,
    /// Shared so that a restarted watch keeps publishing to the same receivers.
    pub state: Arc<watch::Sender<TopicState>>,
    pub stop: CancellationToken,
}

pub(crate) async fn watch_topic(w: TopicWatch) {
    let mut retry = RETRY_MIN;
    loop {
        let read = async {
            match (w.client.partitions(&w.cluster, &w.topic).await, w.create) {
                (Err(TopicError::Missing { brokers, .. }), Some(spec)) => {
                    kafka::create_topic(&w.cluster, &w.instance, &w.topic, spec, brokers).await?;
                    w.client.partitions(&w.cluster, &w.topic).await
                }
                (found, _) => found,
            }
        };
        let result = tokio::select! {
            r = read => r,
            _ = w.stop.cancelled() => return,
        };
        let wait = if result.is_ok() {
            retry = RETRY_MIN;
            w.refresh
        } else {
            let wait = retry;
            retry = (retry * 2).min(RETRY_MAX);
            wait
        };
        w.state.send_if_modified(|cur| {
            let changed = cur.as_ref() != Some(&result);
            *cur = Some(result);
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = w.stop.cancelled() => return,
        }
    }
}

/// Everything a probe's discovery needs; cloned for each (re)start of the task.
#[derive(Clone)]
pub(crate) struct Follow {
    pub probe: Arc<Probe>,
    /// The probe topic's watch.
    pub produce: watch::Receiver<TopicState>,
    /// The verify topic's watch, when it is another topic (or cluster).
    pub verify: Option<watch::Receiver<TopicState>>,
    /// The Kafka verifier reading the records back; `None` for a probe that polls a sink.
    pub verifier: Option<Arc<KafkaVerifier>>,
    /// The send loop's partitions (shared so that a restarted task keeps publishing to it).
    pub partitions: Arc<watch::Sender<Option<Vec<i32>>>>,
    pub stop: CancellationToken,
}

pub(crate) async fn follow(mut f: Follow) {
    let mut last_error: Option<String> = None;
    let mut retry = RETRY_MIN;
    loop {
        let produce = f.produce.borrow_and_update().clone();
        let verify = f.verify.as_mut().map(|v| v.borrow_and_update().clone());
        let failed = match settle(&f, produce, verify).await {
            Some(Ok(found)) => {
                retry = RETRY_MIN;
                if last_error.take().is_some() {
                    tracing::info!(probe = f.probe.name(), "partitions discovered again");
                }
                f.probe.set_partitions(Ok(&found));
                let parts: Vec<i32> = found.keys().copied().collect();
                f.partitions.send_if_modified(|cur| {
                    let changed = cur.as_deref() != Some(parts.as_slice());
                    if changed {
                        tracing::info!(probe = f.probe.name(), topic = %f.probe.config.topic, partitions = ?parts, "probing partitions");
                        *cur = Some(parts.clone());
                    }
                    changed
                });
                false
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(probe = f.probe.name(), error = %text, "cannot discover partitions");
                }
                f.probe.set_partitions(Err(text.clone()));
                last_error = Some(text);
                true
            }
            None => false, // not known yet
        };
        // Wait for news; retry on our own (the verifier's) failure even without any.
        let verify_changed = async {
            match f.verify.as_mut() {
                Some(v) => v.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = f.produce.changed() => if r.is_err() { return },
            r = verify_changed => if r.is_err() { return },
            _ = tokio::time::sleep(retry), if failed => retry = (retry * 2).min(RETRY_MAX),
            _ = f.stop.cancelled() => return,
        }
    }
}

/// The probe's partitions from its topics' states, once the verifier reads the verify topic.
async fn settle(
    f: &Follow,
    produce: TopicState,
    verify: Option<TopicState>,
) -> Option<Result<kafka::Partitions, TopicError>> {
    let all = match produce? {
        Ok(all) => all,
        Err(e) => return Some(Err(e)),
    };
    let cfg = &f.probe.config;
    let wanted: kafka::Partitions = match &cfg.partitions {
        Partitions::All => all.clone(),
        Partitions::List(list) => {
            if let Some(missing) = list.iter().find(|p| !all.contains_key(p)) {
                return Some(Err(TopicError::Other {
                    cluster: cfg.cluster.clone(),
                    topic: cfg.topic.clone(),
                    error: format!(
                        "partition {missing} does not exist (the topic has {} partitions)",
                        all.len()
                    ),
                }));
            }
            list.iter().map(|p| (*p, all[p])).collect()
        }
    };
    let verify_parts: Vec<i32> = match verify {
        None => wanted.keys().copied().collect(),
        Some(state) => match state? {
            Ok(v) => v.keys().copied().collect(),
            Err(e) => return Some(Err(e)),
        },
    };
    if let Some(verifier) = &f.verifier
        && let Err(e) = verifier
            .ensure_assigned(&f.probe.verify_topic, &verify_parts)
            .await
    {
        return Some(Err(e));
    }
    Some(Ok(wanted))
}
