//! Kafka clients: one producer and one consumer per cluster, shared by every probe on it.
//!
//! Settings slo-probe chooses (a cluster's `properties`, `producer` and `consumer` maps override
//! them, in that order):
//! - producer `linger.ms=0`: a probe sends a handful of records per interval; batching them
//!   would add up to librdkafka's default 5 ms to every produce latency.
//! - consumer `fetch.wait.max.ms`: 10 ms, then 500 ms on a broker found to answer fetches when
//!   data arrives. Apache Kafka answers a fetch as soon as `fetch.min.bytes` (1) is available,
//!   but some brokers (librdkafka's mock cluster, tansu, other Kafka-compatible ones) hold every
//!   fetch for the whole wait, and librdkafka's default 500 ms then poses as pipeline latency
//!   (measured on the mock: p50 258 ms at 500, 6 ms at 10). 10 ms is true everywhere, at the
//!   cost of up to 100 empty fetches per second per broker when idle; `verify::fetch_wait`
//!   finds out which kind of broker it is and raises the wait where that costs no latency. A
//!   value in the cluster's `properties` or `consumer` settings is used as it is.
//! - the consumer is assigned explicit partitions (`assign`, no `subscribe`), starting at the
//!   high watermark read before the first record is sent: no group join (~3 s), no rebalance
//!   that could stall verification, no committed offsets, and no record missed at start.
//! - `allow.auto.create.topics=false` on both: a typo in a topic name is an error, not a topic.
//! - `reconnect.backoff.max.ms=1000` on both (the Java client's default; librdkafka's is 10 s):
//!   librdkafka doubles the pause between connection attempts to a broker that is away, and
//!   after a broker restart the probe's clients waited up to 9.6 s more before reconnecting while
//!   an ordinary client beside them was back in under a second: records lost and a latency tail
//!   that were the probe's own (benches' disruption scenario). At 1 s a returning broker is seen
//!   within about a second, at the cost of one connection attempt per second per broker that is
//!   down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};

use uuid::Uuid;

use crate::config::ClusterConfig;
use crate::util::quiet::Quiet;

pub type Consumer = StreamConsumer<ClientCtx>;

/// Client context: routes librdkafka's logs and errors into `tracing` with the cluster name,
/// logging a repeated error once per minute instead of every few seconds.
pub struct ClientCtx {
    cluster: String,
    quiet: Quiet,
}

impl ClientCtx {
    fn new(cluster: &str) -> Self {
        ClientCtx {
            cluster: cluster.to_string(),
            quiet: Quiet::default(),
        }
    }
}

impl ClientContext for ClientCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let cluster = self.cluster.as_str();
        let loud = (level as i32) <= (RDKafkaLogLevel::Warning as i32);
        if loud && !self.quiet.allow(&format!("log:{fac}")) {
            tracing::debug!(target: "librdkafka", cluster, facility = fac, "{message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", cluster, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", cluster, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", cluster, facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", cluster, facility = fac, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let key = format!("error:{:?}", error.rdkafka_error_code());
        if self.quiet.allow(&key) {
            tracing::warn!(target: "librdkafka", cluster = %self.cluster, "{error}: {reason} (repeats of this error are quiet for a minute)");
        } else {
            tracing::debug!(target: "librdkafka", cluster = %self.cluster, "{error}: {reason}");
        }
    }
}

impl ConsumerContext for ClientCtx {}

fn base(cluster: &ClusterConfig, instance: &str, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cluster.bootstrap_servers)
        .set("client.id", format!("slo-probe-{instance}-{role}"))
        .set("allow.auto.create.topics", "false")
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    c
}

/// The longest pause librdkafka makes between connection attempts to a broker that is away
/// (see the module's documentation).
pub const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

fn apply(c: &mut ClientConfig, props: &std::collections::BTreeMap<String, String>) {
    for (k, v) in props {
        c.set(k, v);
    }
}

/// The librdkafka configuration of a cluster's producer. `message_timeout` bounds how long
/// librdkafka retries a record (and so its queue while a broker is down).
pub fn producer_config(
    cluster: &ClusterConfig,
    instance: &str,
    message_timeout: Duration,
) -> ClientConfig {
    let mut c = base(cluster, instance, "producer");
    c.set("linger.ms", "0").set("acks", "all").set(
        "message.timeout.ms",
        message_timeout.as_millis().max(1).to_string(),
    );
    apply(&mut c, &cluster.properties);
    apply(&mut c, &cluster.producer);
    c
}

/// The verifying consumer's `fetch.wait.max.ms` while nothing is known about the broker, and
/// for good on one that holds every fetch for the whole wait (librdkafka's mock cluster).
pub const FETCH_WAIT_SHORT: Duration = Duration::from_millis(10);

/// The verifying consumer's `fetch.wait.max.ms` on a broker that answers a fetch as soon as data
/// arrives (Apache Kafka): librdkafka's default; an idle consumer then fetches twice a second.
pub const FETCH_WAIT_LONG: Duration = Duration::from_millis(500);

/// The `fetch.wait.max.ms` the user set for a cluster's consumer (its `consumer` settings,
/// else its `properties`), if any: it is used as it is.
pub fn user_fetch_wait(cluster: &ClusterConfig) -> Option<&str> {
    const KEY: &str = "fetch.wait.max.ms";
    cluster
        .consumer
        .get(KEY)
        .or_else(|| cluster.properties.get(KEY))
        .map(String::as_str)
}

/// The librdkafka configuration of a cluster's consumer (`role` names it in `client.id`),
/// letting a broker hold an empty fetch for `fetch_wait` unless the user set another wait.
pub fn consumer_config(
    cluster: &ClusterConfig,
    instance: &str,
    role: &str,
    fetch_wait: Duration,
) -> ClientConfig {
    let mut c = base(cluster, instance, role);
    // librdkafka's incremental_assign() (used to add partitions to a running consumer) needs a
    // group id; the group is never joined and nothing is ever committed to it.
    c.set("group.id", format!("slo-probe-{instance}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "latest")
        .set(
            "fetch.wait.max.ms",
            fetch_wait.as_millis().max(1).to_string(),
        );
    apply(&mut c, &cluster.properties);
    apply(&mut c, &cluster.consumer);
    c
}

/// Whoever sent a record, told how its delivery ended: the broker's offset, or why the
/// producer gave up. Called on the producer's polling thread: must not block.
pub trait Deliveries: Send + Sync {
    fn delivered(&self, id: &Uuid, at: tokio::time::Instant, result: Result<i64, String>);
}

/// Where a delivery report goes: the sender of record `id`.
pub struct Ticket {
    pub to: Arc<dyn Deliveries>,
    pub id: Uuid,
}

/// The producer's context: hands each delivery report straight to its sender, on the polling
/// thread (no task per record).
pub struct ProducerCtx(ClientCtx);

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let at = tokio::time::Instant::now();
        let result = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(e.to_string()),
        };
        ticket.to.delivered(&ticket.id, at, result);
    }
}

/// How long one `poll` of the delivery-report thread lasts. rust-rdkafka 0.39 truncates the
/// time left to whole milliseconds and polls without blocking through the last one, so each
/// call ends in up to 1 ms of busy looping: `FutureProducer`'s 100 ms cycle cost about 1% of a
/// core when idle; a 1 s cycle costs a tenth of that. Stopping takes at most this long.
const DELIVERY_POLL: Duration = Duration::from_secs(1);

/// A probe record on its way to librdkafka.
pub type Record<'a> = BaseRecord<'a, str, [u8], Box<Ticket>>;

/// A cluster's producer: librdkafka's producer and one thread serving its delivery reports.
pub struct Producer {
    inner: Arc<BaseProducer<ProducerCtx>>,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    pub fn new(
        cluster: &ClusterConfig,
        instance: &str,
        message_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let inner: Arc<BaseProducer<ProducerCtx>> = Arc::new(
            producer_config(cluster, instance, message_timeout)
                .create_with_context(ProducerCtx(ClientCtx::new(&cluster.name)))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&inner), Arc::clone(&stop));
        let poller = std::thread::Builder::new()
            .name(format!("deliveries-{}", cluster.name))
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    p.poll(DELIVERY_POLL);
                }
            })
            .map_err(|_| KafkaError::ClientCreation("cannot start the delivery thread".into()))?;
        Ok(Producer {
            inner,
            stop,
            poller: Some(poller),
        })
    }

    /// Hands a record to librdkafka; its delivery report goes to the ticket's probe.
    #[allow(clippy::result_large_err)]
    pub fn send<'a>(&self, record: Record<'a>) -> Result<(), (KafkaError, Record<'a>)> {
        self.inner.send(record)
    }

    pub fn client(&self) -> &rdkafka::client::Client<ProducerCtx> {
        self.inner.client()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }
}

/// A consumer of `cluster` (see [`consumer_config`]); assign it partitions to read.
pub fn create_consumer(
    cluster: &ClusterConfig,
    instance: &str,
    role: &str,
    fetch_wait: Duration,
) -> Result<Consumer, KafkaError> {
    consumer_config(cluster, instance, role, fetch_wait)
        .create_with_context(ClientCtx::new(&cluster.name))
}

/// Why a topic's partitions could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopicError {
    #[error("cannot reach cluster {cluster} ({servers}): {error}")]
    Unreachable {
        cluster: String,
        servers: String,
        error: String,
    },
    #[error("topic {topic} does not exist on cluster {cluster} ({servers})")]
    Missing {
        cluster: String,
        servers: String,
        topic: String,
        /// Brokers in the cluster's metadata (to size a topic created in its place).
        brokers: usize,
    },
    #[error("cannot read topic {topic} on cluster {cluster}: {error}")]
    Other {
        cluster: String,
        topic: String,
        error: String,
    },
}

/// Creates `topic` (a missing probe topic with `create_topic`): by default one partition per
/// broker so that every broker leads one, replication factor 3 or the broker count when lower.
/// Another agent creating it first is fine. Returns (partitions, replication factor).
pub async fn create_topic(
    cluster: &ClusterConfig,
    instance: &str,
    topic: &str,
    spec: crate::config::CreateTopic,
    brokers: usize,
) -> Result<(i32, i32), TopicError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = i32::try_from(brokers.max(1)).unwrap_or(i32::MAX);
    let partitions = spec.partitions.unwrap_or(brokers);
    let replication = spec.replication_factor.unwrap_or(brokers.min(3));
    if partitions < brokers {
        tracing::warn!(cluster = %cluster.name, topic, partitions, brokers, "creating the probe topic with fewer partitions than brokers: some brokers lead no probed partition");
    }
    let fail = |error: String| TopicError::Other {
        cluster: cluster.name.clone(),
        topic: topic.into(),
        error,
    };
    let mut config = base(cluster, instance, "admin");
    apply(&mut config, &cluster.properties);
    let admin: AdminClient<ClientCtx> =
        config
            .create_with_context(ClientCtx::new(&cluster.name))
            .map_err(|e| fail(format!("cannot create an admin client: {e}")))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| fail(format!("cannot create the topic: {e}")))?;
    match results.into_iter().next() {
        Some(Ok(_)) => {
            tracing::info!(cluster = %cluster.name, topic, partitions, replication_factor = replication, "created the probe topic");
            Ok((partitions, replication))
        }
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok((partitions, replication)),
        Some(Err((_, code))) => Err(fail(format!("cannot create the topic: {code}"))),
        None => Err(fail("cannot create the topic: no answer".into())),
    }
}

/// When no host of `bootstrap_servers` resolves: which, and why, with what to check. Blocking.
pub fn unresolvable(bootstrap_servers: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let mut failures = Vec::new();
    for server in bootstrap_servers.split(',').map(str::trim) {
        // librdkafka takes `host:port` with an optional `PROTOCOL://` in front.
        let server = server.split_once("://").map_or(server, |(_, s)| s);
        let (host, port) = server.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        match (host, port.parse::<u16>().unwrap_or(9092)).to_socket_addrs() {
            Ok(addrs) if addrs.as_slice().is_empty() => {
                failures.push(format!("`{host}` (no address)"))
            }
            Ok(_) => return None,
            Err(e) => failures.push(format!("`{host}` ({e})")),
        }
    }
    (!failures.is_empty()).then(|| {
        format!(
            "cannot resolve {}: check the host names in bootstrap_servers and this host's DNS",
            failures.join(", ")
        )
    })
}

/// Partition id -> leader broker id.
pub type Partitions = std::collections::BTreeMap<i32, i32>;

/// The partitions of `topic` and their leaders. Blocking: call from `spawn_blocking`.
pub fn partitions_blocking<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    cluster: &ClusterConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Partitions, TopicError> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| TopicError::Unreachable {
            cluster: cluster.name.clone(),
            servers: cluster.bootstrap_servers.clone(),
            // librdkafka says "BrokerTransportFailure" and keeps the DNS failure for its log.
            error: match unresolvable(&cluster.bootstrap_servers) {
                Some(dns) => format!("{dns} (librdkafka: {e})"),
                None => e.to_string(),
            },
        })?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Err(TopicError::Missing {
            cluster: cluster.name.clone(),
            servers: cluster.bootstrap_servers.clone(),
            topic: topic.into(),
            brokers: md.brokers().len(),
        });
    };
    match t.error() {
        None => {}
        Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            return Err(TopicError::Missing {
                cluster: cluster.name.clone(),
                servers: cluster.bootstrap_servers.clone(),
                topic: topic.into(),
                brokers: md.brokers().len(),
            });
        }
        Some(e) => {
            return Err(TopicError::Other {
                cluster: cluster.name.clone(),
                topic: topic.into(),
                error: RDKafkaErrorCode::from(e).to_string(),
            });
        }
    }
    let ids: Partitions = t
        .partitions()
        .iter()
        .map(|p| (p.id(), p.leader()))
        .collect();
    if ids.is_empty() {
        return Err(TopicError::Missing {
            cluster: cluster.name.clone(),
            servers: cluster.bootstrap_servers.clone(),
            topic: topic.into(),
            brokers: md.brokers().len(),
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use crate::testing::cluster;

    use super::*;

    /// `.invalid` never resolves (RFC 2606); an address or one host that resolves is not a DNS
    /// problem.
    #[test]
    fn a_dns_failure_is_named_only_when_no_bootstrap_host_resolves() {
        let why = unresolvable("kafka-0.no-such-host.invalid:9092, SSL://kafka-1.invalid:9093")
            .expect("nothing resolves");
        assert!(
            why.starts_with("cannot resolve `kafka-0.no-such-host.invalid` (")
                && why.contains(", `kafka-1.invalid` (")
                && why.ends_with("check the host names in bootstrap_servers and this host's DNS"),
            "{why}"
        );
        assert_eq!(unresolvable("127.0.0.1:9092"), None);
        assert_eq!(unresolvable("[::1]:9092"), None);
        assert_eq!(unresolvable("nope.invalid:9092,localhost:9092"), None);
    }

    #[test]
    fn both_clients_reconnect_within_a_second_unless_the_cluster_says_otherwise() {
        let c = cluster(&[], &[]);
        let producer = producer_config(&c, "i", Duration::from_secs(5));
        let consumer = consumer_config(&c, "i", "consumer", FETCH_WAIT_SHORT);
        for config in [&producer, &consumer] {
            assert_eq!(config.get("reconnect.backoff.max.ms"), Some("1000"));
        }
        // the cluster's settings win: `properties` for both, `consumer` for the consumer
        let c = cluster(
            &[("reconnect.backoff.max.ms", "5000")],
            &[("reconnect.backoff.max.ms", "250")],
        );
        let producer = producer_config(&c, "i", Duration::from_secs(5));
        assert_eq!(producer.get("reconnect.backoff.max.ms"), Some("5000"));
        assert_eq!(
            consumer_config(&c, "i", "consumer", FETCH_WAIT_SHORT).get("reconnect.backoff.max.ms"),
            Some("250")
        );
    }
}
