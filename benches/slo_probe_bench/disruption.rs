//! Disruption: what planned work and faults do to the probe's records, against a raw rdkafka
//! produce -> consume loop running beside it on the same brokers, as the floor.
//!
//! Scenarios run on librdkafka's mock cluster (3 brokers, topics with 3 partitions and 3
//! replicas, each partition led by its own broker) and on a real tansu process behind a TCP
//! front:
//!
//! - **rolling restart**: for each broker, its leaders move away, it goes down, comes back, and
//!   gets its leaders back;
//! - **preferred-leader election**: every leader moves to broker 1 (a cluster left unbalanced),
//!   then back to its preferred broker;
//! - **one slow broker**: broker 2 answers every request `slow_rtt` late, then recovers;
//! - **broker restart** (tansu): the front goes away (every connection reset, connects refused)
//!   and comes back with the broker's data.
//!
//! Both loops send one record per partition per interval with `acks=all` and the same timeout;
//! the raw loop times each record from its send call to its arrival at its own consumer, the
//! probe's latencies are the agent's own, read from its spans (each record's `send` span starts
//! at its scheduled time and carries its outcome and `slo_probe.latency_ms`) through an OTLP
//! receiver in the harness. Every record is placed in the step during which it was scheduled.
//! A record is *disturbed* when it is lost or slower than its loop's baseline p99 doubled (at
//! least the baseline p99 plus 50 ms); a step's *recovery* is the time from the step's action to
//! the arrival (or deadline) of the last disturbed record scheduled in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::producer::FutureRecord;
use slo_probe::{Agent, AgentOptions, EmbeddedCluster, Outcome, Plan};
use tokio_util::sync::CancellationToken;

use crate::common::Tree;
use crate::common::front::Front;
use crate::common::infra::{Tansu, free_port};
use crate::common::otlp::{Collector, attrs};
use crate::env::raw_clients;
use crate::stats;

const PARTITIONS: i32 = 3;
/// The freshness threshold of the probe's SLO: "slower than the freshness threshold".
pub const FRESHNESS: Duration = Duration::from_millis(500);
const PROBE: &str = "disruption";
/// The agent's own setting (`src/kafka.rs`): the raw loop's clients are set up like the probe's.
pub const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

/// How long each part of a scenario lasts.
#[derive(Clone, Copy)]
pub struct Timing {
    pub interval: Duration,
    /// A record's timeout, for both loops (longer than `down`: with `acks=all` a record sent
    /// while its leader is away waits in the producer and arrives late, not never).
    pub timeout: Duration,
    /// Healthy running before the first step.
    pub baseline: Duration,
    /// A broker down (or slow).
    pub down: Duration,
    /// After an instant step (a leader move, a broker back up).
    pub settle: Duration,
    /// After the last step, watching for a tail.
    pub tail: Duration,
    pub slow_rtt: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scenario {
    RollingRestart,
    PreferredLeaderElection,
    SlowBroker,
    BrokerRestart,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::RollingRestart,
        Scenario::PreferredLeaderElection,
        Scenario::SlowBroker,
        Scenario::BrokerRestart,
    ];

    /// As `--scenario` names it.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::RollingRestart => "roll",
            Scenario::PreferredLeaderElection => "election",
            Scenario::SlowBroker => "slow-broker",
            Scenario::BrokerRestart => "restart",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::RollingRestart => "rolling restart (mock, 3 brokers)",
            Scenario::PreferredLeaderElection => "preferred-leader election (mock, 3 brokers)",
            Scenario::SlowBroker => "one slow broker (mock, 3 brokers)",
            Scenario::BrokerRestart => "broker restart (tansu behind a TCP front)",
        }
    }
}

/// One record of either loop: when it was scheduled (seconds after the run's start) and its
/// latency (ms), `None` when it never arrived.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: f64,
    pub latency_ms: Option<f64>,
}

/// What a loop's records scheduled during one step came to.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub records: usize,
    pub lost: usize,
    /// Slower than [`FRESHNESS`].
    pub slow: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Seconds from the step's action to the last disturbed record's arrival (or deadline).
    pub recovery: f64,
}

pub struct Step {
    pub name: String,
    pub raw: Figures,
    pub probe: Figures,
}

pub struct Run {
    pub baseline: (Figures, Figures),
    pub steps: Vec<Step>,
}

/// What the harness does to the cluster at each step.
enum Action {
    Leader { partition: i32, broker: i32 },
    Down(i32),
    Up(i32),
    Rtt(i32, Duration),
    FrontDown,
    FrontUp,
}

/// The cluster under test and the handles that disturb it.
enum Cluster {
    Mock(EmbeddedCluster),
    Tansu {
        broker: Tansu,
        port: u16,
        front: Option<Front>,
        dir: Tree,
    },
}

impl Cluster {
    async fn start(scenario: Scenario) -> Cluster {
        if scenario == Scenario::BrokerRestart {
            let port = free_port();
            let broker = Tansu::advertising(Some(port));
            let dir = Tree::new();
            let front = Some(Cluster::front(&broker, port, &dir).await);
            Cluster::Tansu {
                broker,
                port,
                front,
                dir,
            }
        } else {
            Cluster::Mock(EmbeddedCluster::start(3).expect("mock cluster starts"))
        }
    }

    async fn front(broker: &Tansu, port: u16, dir: &Tree) -> Front {
        let upstream = format!("127.0.0.1:{}", broker.port).parse().unwrap();
        Front::start(port, upstream, false, None, dir.path()).await
    }

    fn bootstrap(&self) -> String {
        match self {
            Cluster::Mock(m) => m.bootstrap_servers().to_string(),
            Cluster::Tansu { port, .. } => format!("127.0.0.1:{port}"),
        }
    }

    async fn create_topics(&self, topics: &[&str]) {
        match self {
            Cluster::Mock(m) => {
                for t in topics {
                    m.create_topic(t, PARTITIONS, 3).unwrap();
                    for p in 0..PARTITIONS {
                        m.set_partition_leader(t, p, home(p)).unwrap();
                    }
                }
            }
            Cluster::Tansu { .. } => {
                let wanted: Vec<(&str, i32)> = topics.iter().map(|t| (*t, PARTITIONS)).collect();
                crate::common::create_topics(&self.bootstrap(), &wanted).await;
            }
        }
    }

    async fn apply(&mut self, action: &Action, topics: &[&str]) {
        match (self, action) {
            (Cluster::Mock(m), Action::Leader { partition, broker }) => {
                for t in topics {
                    m.set_partition_leader(t, *partition, *broker).unwrap();
                }
            }
            (Cluster::Mock(m), Action::Down(b)) => m.broker_down(*b).unwrap(),
            (Cluster::Mock(m), Action::Up(b)) => m.broker_up(*b).unwrap(),
            (Cluster::Mock(m), Action::Rtt(b, d)) => m.set_round_trip_time(Some(*b), *d).unwrap(),
            (Cluster::Tansu { front, .. }, Action::FrontDown) => drop(front.take()),
            (
                Cluster::Tansu {
                    broker,
                    port,
                    front,
                    dir,
                },
                Action::FrontUp,
            ) => *front = Some(Cluster::front(broker, *port, dir).await),
            _ => unreachable!("an action for another cluster"),
        }
    }
}

/// The broker that leads partition `p` when the cluster is balanced (ids start at 1).
fn home(p: i32) -> i32 {
    p + 1
}

/// The steps of a scenario: (name, actions, how long until the next step).
fn steps(scenario: Scenario, t: &Timing) -> Vec<(String, Vec<Action>, Duration)> {
    let move_all = |to: &dyn Fn(i32) -> i32| -> Vec<Action> {
        (0..PARTITIONS)
            .map(|p| Action::Leader {
                partition: p,
                broker: to(p),
            })
            .collect()
    };
    match scenario {
        Scenario::RollingRestart => (1..=3)
            .flat_map(|b| {
                let led: Vec<i32> = (0..PARTITIONS).filter(|&p| home(p) == b).collect();
                let away = b % 3 + 1;
                let leaders = |to: i32| -> Vec<Action> {
                    led.iter()
                        .map(|&p| Action::Leader {
                            partition: p,
                            broker: to,
                        })
                        .collect()
                };
                vec![
                    (
                        format!("broker {b}: leaders to broker {away}"),
                        leaders(away),
                        t.settle,
                    ),
                    (format!("broker {b} down"), vec![Action::Down(b)], t.down),
                    (format!("broker {b} up"), vec![Action::Up(b)], t.settle),
                    (format!("broker {b}: leaders back"), leaders(b), t.settle),
                ]
            })
            .collect(),
        Scenario::PreferredLeaderElection => vec![
            (
                "every leader on broker 1".into(),
                move_all(&|_| 1),
                t.settle,
            ),
            (
                "preferred-leader election".into(),
                move_all(&home),
                t.settle,
            ),
        ],
        Scenario::SlowBroker => vec![
            (
                format!(
                    "broker 2 slow (+{} per request)",
                    humantime::format_duration(t.slow_rtt)
                ),
                vec![Action::Rtt(2, t.slow_rtt)],
                t.down,
            ),
            (
                "broker 2 recovered".into(),
                vec![Action::Rtt(2, Duration::ZERO)],
                t.settle,
            ),
        ],
        Scenario::BrokerRestart => vec![
            ("broker away".into(), vec![Action::FrontDown], t.down),
            ("broker back".into(), vec![Action::FrontUp], t.settle),
        ],
    }
}

pub async fn run(scenario: Scenario, t: Timing, tag: &str) -> Run {
    let mut cluster = Cluster::start(scenario).await;
    let (raw_topic, probe_topic) = (format!("raw-{tag}"), format!("probed-{tag}"));
    let topics = [raw_topic.as_str(), probe_topic.as_str()];
    cluster.create_topics(&topics).await;
    let bootstrap = cluster.bootstrap();

    let collector = Collector::default();
    let otlp = collector.http().await;
    let (_tree, agent) = agent(&bootstrap, &probe_topic, &otlp, &t).await;
    let started = Instant::now();
    let t0 = SystemTime::now();
    let raw = RawLoop::start(&bootstrap, &raw_topic, &t, started).await;
    let timeline = steps(scenario, &t);

    // (name, seconds after the start of its action, seconds after the start until the next)
    let mut windows = vec![("baseline".to_string(), 0.0, t.baseline.as_secs_f64())];
    tokio::time::sleep(t.baseline).await;
    for (name, actions, lasts) in timeline {
        let at = started.elapsed().as_secs_f64();
        for a in &actions {
            cluster.apply(a, &topics).await;
        }
        tokio::time::sleep(lasts).await;
        windows.push((name, at, started.elapsed().as_secs_f64()));
    }
    let tail_at = started.elapsed().as_secs_f64();
    tokio::time::sleep(t.tail).await;
    windows.push((
        "after the last step".into(),
        tail_at,
        started.elapsed().as_secs_f64(),
    ));

    agent.stop_sending();
    let raw = raw.finish(t.timeout).await;
    let probe = probe_samples(agent, &collector, t0).await;

    let figures = |samples: &[Sample], from: f64, to: f64, threshold: Option<f64>| {
        figures(samples, from, to, threshold, t.timeout)
    };
    let (b_from, b_to) = (windows[0].1, windows[0].2);
    let baseline = (
        figures(&raw, b_from, b_to, None),
        figures(&probe, b_from, b_to, None),
    );
    let disturbed = |base: &Figures| (base.p99 * 2.0).max(base.p99 + 50.0);
    let (raw_threshold, probe_threshold) = (disturbed(&baseline.0), disturbed(&baseline.1));
    let steps = windows[1..]
        .iter()
        .map(|(name, from, to)| Step {
            name: name.clone(),
            raw: figures(&raw, *from, *to, Some(raw_threshold)),
            probe: figures(&probe, *from, *to, Some(probe_threshold)),
        })
        .collect();
    Run { baseline, steps }
}

/// The figures of the records scheduled in `[from, to)`; with a `threshold` (ms), how long
/// after `from` the last one above it (or lost: at its deadline) arrived.
fn figures(
    samples: &[Sample],
    from: f64,
    to: f64,
    threshold: Option<f64>,
    timeout: Duration,
) -> Figures {
    let mut f = Figures::default();
    let mut latencies = Vec::new();
    for s in samples.iter().filter(|s| s.at >= from && s.at < to) {
        f.records += 1;
        let done = match s.latency_ms {
            Some(l) => {
                latencies.push(l);
                if l > FRESHNESS.as_secs_f64() * 1e3 {
                    f.slow += 1;
                }
                threshold.is_some_and(|th| l > th).then_some(l / 1e3)
            }
            None => {
                f.lost += 1;
                Some(timeout.as_secs_f64())
            }
        };
        if let Some(after) = done {
            f.recovery = f.recovery.max(s.at + after - from);
        }
    }
    latencies.sort_by(f64::total_cmp);
    if !latencies.is_empty() {
        f.p50 = stats::exact(&latencies, 0.5);
        f.p99 = stats::exact(&latencies, 0.99);
        f.max = latencies[latencies.len() - 1];
    }
    f
}

/// An agent in this process on `bootstrap`, exporting every record's spans to `otlp`, with the
/// default client settings.
async fn agent(bootstrap: &str, topic: &str, otlp: &str, t: &Timing) -> (Tree, Agent) {
    let tree = Tree::new();

    let agent_file = tree.write(
        "slo-probe.yaml",
        &format!(
            "clusters:\n  primary:\n    bootstrap_servers: {bootstrap}\ntracing:\n  otlp_endpoint: http://{otlp}\n  protocol: http/protobuf\n  sampling_ratio: 1\n"
        ),
    );
    tree.write(
        "probes/p.yaml",
        &format!(
            "name: {PROBE}\ntopic: {topic}\ninterval: {}\ntimeout: {}\nslos:\n  - {{ name: freshness, latency_below: {}, objective: 99% }}\n  - {{ name: completeness, objective: 99.9% }}\n",
            humantime::format_duration(t.interval),
            humantime::format_duration(t.timeout),
            humantime::format_duration(FRESHNESS),
        ),
    );
    let sources = slo_probe::config::Sources {
        agent_file: Some(agent_file),
        probe_paths: vec![tree.path().join("probes")],
    };
    let opts = AgentOptions {
        plan: Plan::Forever,
        listen: None,
        embedded: false,
    };
    let agent = Agent::start(slo_probe::config::load(&sources).unwrap(), opts)
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        agent.wait_discovered(Duration::from_secs(30)),
    )
    .await
    .expect("discovery ends")
    .expect("the probe topic is reachable");
    (tree, agent)
}

/// Stops the agent once every record settled, and reads each record's outcome and latency from
/// its `send` span. Every record the agent sent must have its span: a consistency check.
async fn probe_samples(agent: Agent, collector: &Collector, t0: SystemTime) -> Vec<Sample> {
    let probe = Arc::clone(&agent.probes()[0]);
    agent.shutdown(std::future::pending()).await;
    let counts = probe.snapshot(tokio::time::Instant::now()).progress.counts;
    let sent = counts.get(Outcome::Ok)
        + counts.get(Outcome::Lost)
        + counts.get(Outcome::Corrupt)
        + counts.get(Outcome::SendFailed);
    assert_eq!(counts.get(Outcome::Corrupt), 0, "no record corrupt");
    let t0 = t0.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let got = collector.got.lock().unwrap();
    let samples: Vec<Sample> = got
        .spans
        .iter()
        .map(|(_, s)| (s, attrs(s)))
        .filter(|(_, a)| {
            a.get("messaging.operation.type").map(String::as_str) == Some("send")
                && a.get("slo_probe.probe").map(String::as_str) == Some(PROBE)
        })
        .map(|(s, a)| Sample {
            at: s.start_time_unix_nano as f64 / 1e9 - t0,
            latency_ms: match a.get("slo_probe.outcome").map(String::as_str) {
                Some("ok") => a.get("slo_probe.latency_ms").and_then(|l| l.parse().ok()),
                _ => None,
            },
        })
        .collect();
    assert_eq!(
        samples.len() as u64,
        sent,
        "one send span per record the agent sent (spans dropped: check the exporter)"
    );
    samples
}

/// A raw rdkafka produce -> consume loop: one record per partition per interval, timed from
/// its send call to its arrival.
struct RawLoop {
    started: Instant,
    /// Told after each record that arrives.
    arrived: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    sender: tokio::task::JoinHandle<u64>,
    sent: Arc<Mutex<HashMap<u64, Instant>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl RawLoop {
    async fn start(bootstrap: &str, topic: &str, t: &Timing, started: Instant) -> RawLoop {
        let (producer, consumer) = raw_clients(
            bootstrap,
            topic,
            PARTITIONS,
            "bench-disruption",
            Some(t.timeout),
        )
        .await;
        let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let reader = {
            let (sent, samples, arrived) = (
                Arc::clone(&sent),
                Arc::clone(&samples),
                Arc::clone(&arrived),
            );
            tokio::spawn(async move {
                loop {
                    let Ok(m) = consumer.recv().await else {
                        continue;
                    };
                    let now = Instant::now();
                    let key = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(|k| k.parse::<u64>().ok());
                    if let Some(t0) = key.and_then(|k| sent.lock().unwrap().remove(&k)) {
                        samples.lock().unwrap().push(Sample {
                            at: t0.duration_since(started).as_secs_f64(),
                            latency_ms: Some(now.duration_since(t0).as_secs_f64() * 1e3),
                        });
                        arrived.notify_waiters();
                    }
                }
            })
        };
        let stop = CancellationToken::new();
        let sender = {
            let (stop, sent, topic, interval) = (
                stop.clone(),
                Arc::clone(&sent),
                topic.to_string(),
                t.interval,
            );
            tokio::spawn(async move {
                // About the size of a probe record (the envelope with its 256-byte payload).
                let payload = vec![b'x'; 600];
                let start = tokio::time::Instant::now();
                let mut n = 0u64;
                for round in 0u32.. {
                    tokio::select! {
                        _ = tokio::time::sleep_until(start + interval * round) => {}
                        _ = stop.cancelled() => return n,
                    }
                    for p in 0..PARTITIONS {
                        let key = n.to_string();
                        sent.lock().unwrap().insert(n, Instant::now());
                        let record = FutureRecord::to(&topic)
                            .partition(p)
                            .key(&key)
                            .payload(&payload);
                        // Not awaited: the loop keeps its schedule like the probe's; a record
                        // the producer gives up on never arrives and is counted lost.
                        let _ = producer.send_result(record);
                        n += 1;
                    }
                }
                n
            })
        };
        RawLoop {
            started,
            arrived,
            stop,
            sender,
            sent,
            samples,
            reader,
        }
    }

    /// Stops sending; waits until every record arrived or its timeout passed. The ones that did
    /// not arrive are lost.
    async fn finish(self, timeout: Duration) -> Vec<Sample> {
        self.stop.cancel();
        let n = self.sender.await.unwrap();
        let all_arrived = async {
            loop {
                let more = self.arrived.notified();
                if self.sent.lock().unwrap().is_empty() {
                    return;
                }
                more.await;
            }
        };
        // Past the timeout (and a margin for the producer's own timer) a record is lost.
        let _ = tokio::time::timeout(timeout + Duration::from_secs(2), all_arrived).await;
        self.reader.abort();
        let mut samples = std::mem::take(&mut *self.samples.lock().unwrap());
        let started = self.started;
        samples.extend(self.sent.lock().unwrap().values().map(|t| Sample {
            at: t.duration_since(started).as_secs_f64(),
            latency_ms: None,
        }));
        assert_eq!(samples.len() as u64, n, "every raw record has one outcome");
        samples
    }
}
