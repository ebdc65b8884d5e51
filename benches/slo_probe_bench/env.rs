//! What every scenario needs: a broker (a real tansu process, or the embedded mock), topics,
//! an agent in this process or as a process of its own, and a description of the machine.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use slo_probe::EmbeddedCluster;
use slo_probe::Plan;
use slo_probe::config::{self, Sources};
use slo_probe::{Agent, AgentOptions};

use crate::common::Tree;
use crate::common::infra::Tansu;

pub enum Broker {
    Tansu(Tansu),
    Embedded(EmbeddedCluster),
}

impl Broker {
    pub fn tansu() -> Broker {
        Broker::Tansu(Tansu::start())
    }

    pub fn embedded() -> Broker {
        Broker::Embedded(EmbeddedCluster::start(3).expect("mock cluster starts"))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Broker::Tansu(_) => "tansu (real process)",
            Broker::Embedded(_) => "embedded mock",
        }
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Tansu(t) => t.bootstrap(),
            Broker::Embedded(e) => e.bootstrap_servers().to_string(),
        }
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match self {
            Broker::Tansu(t) => {
                let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", t.bootstrap())
                    .create()
                    .unwrap();
                let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
                for r in admin
                    .create_topics([&new], &AdminOptions::new())
                    .await
                    .unwrap()
                {
                    r.unwrap();
                }
            }
            Broker::Embedded(e) => e.create_topic(topic, partitions, 1).unwrap(),
        }
    }
}

/// Every consumer of the harness, and the agents it starts in process, hold an empty fetch this
/// long at most (the agent's default); they reconnect to a broker that was away as the agent's
/// clients do.
const FETCH_WAIT: Duration = Duration::from_millis(10);

/// A consumer of the harness reading `partitions` of `topic` from the beginning.
pub fn reader(bootstrap: &str, topic: &str, partitions: i32, group: &str) -> StreamConsumer {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
        .set(
            "reconnect.backoff.max.ms",
            crate::disruption::RECONNECT_BACKOFF_MAX_MS,
        )
        .create()
        .expect("consumer created");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("valid offset");
    }
    consumer.assign(&tpl).expect("partitions assigned");
    consumer
}

/// A raw loop's clients, set up like the agent's (`linger.ms=0`, `acks=all`, the agent's fetch
/// wait and reconnect pause; `message_timeout` when given) and warmed up: one record per
/// partition has come back, as the probe's verifier is reading before its first round (consumer
/// start-up is not latency).
pub async fn raw_clients(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    group: &str,
    message_timeout: Option<Duration>,
) -> (FutureProducer, StreamConsumer) {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .set("acks", "all")
        .set(
            "reconnect.backoff.max.ms",
            crate::disruption::RECONNECT_BACKOFF_MAX_MS,
        );
    if let Some(t) = message_timeout {
        config.set("message.timeout.ms", t.as_millis().to_string());
    }
    let producer: FutureProducer = config.create().unwrap();
    let consumer = reader(bootstrap, topic, partitions, group);
    for p in 0..partitions {
        let _ = producer.send_result(
            FutureRecord::to(topic)
                .partition(p)
                .key("warmup")
                .payload("warmup"),
        );
    }
    for _ in 0..partitions {
        tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the raw loop's consumer starts")
            .expect("a warm-up record");
    }
    (producer, consumer)
}

/// An agent in this process on `broker`, with one probe file, its consumer holding fetches
/// for at most [`FETCH_WAIT`] like the harness's own. Returns the tree holding the files (keep
/// it alive) and the agent.
pub async fn agent_in_process(broker: &Broker, probe_yaml: &str, plan: Plan) -> (Tree, Agent) {
    let t = Tree::new();
    let agent_file = t.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  primary:\n    bootstrap_servers: {}\n    consumer:\n      fetch.wait.max.ms: \"{}\"\n",
            broker.bootstrap(),
            FETCH_WAIT.as_millis()
        ),
    );
    t.write("probes/p.yaml", probe_yaml);
    let sources = Sources {
        agent_file: Some(agent_file),
        probe_paths: vec![t.path().join("probes")],
    };
    let opts = AgentOptions {
        plan,
        listen: None,
        embedded: false,
    };
    let agent = Agent::start(config::load(&sources).unwrap(), opts)
        .await
        .unwrap();
    (t, agent)
}

/// Facts about this machine for the report.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
    format!(
        "{cpu}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {}, librdkafka {librdkafka}, slo-probe {}",
        kernel.trim(),
        env!("CARGO_PKG_VERSION")
    )
}

/// CPU ticks (user + system) of a process, and ticks per second.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Resident and peak resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Writes `n` probe files (3 partitions each, one shared topic created by the agent).
pub fn probe_files(t: &Tree, n: usize, topic: &str, interval: Duration) {
    for i in 0..n {
        t.write(
            &format!("probes/p{i:04}.yaml"),
            &format!(
                "name: p{i:04}\ntopic: {topic}\ninterval: {}\ntimeout: 10s\ncreate_topic: {{ partitions: 3 }}\nslos:\n  - {{ name: freshness, latency_below: 500ms, objective: 99% }}\n",
                humantime::format_duration(interval)
            ),
        );
    }
}
