//! The agent: builds one producer and one verifier per cluster, a probe per probe file, the
//! HTTP endpoints, and runs them until told to stop; then drains.
//!
//! Shutdown order: stop sending -> every probe settles its in-flight records (bounded by the
//! longest timeout) -> verifiers, discovery and the HTTP server stop -> clients are dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CreateTopic;
use crate::config::{AgentConfig, TracingConfig};
use crate::config::{ClusterConfig, Config};
use crate::discovery::{self, Follow, MetadataClient, TopicState, TopicWatch};
use crate::embedded::EmbeddedCluster;
use crate::export::metrics::Metrics;
use crate::export::observer::ProbeObserver;
use crate::export::traces::{Exporter, Identity, Spans};
use crate::kafka::Producer;
use crate::outcome::{Counts, Task};
use crate::probe::Probe;
use crate::probe::task::{self, Plan, SendLoop};
use crate::server::{self, AgentView};
use crate::supervise::{Ends, TaskEvent, supervise};
use crate::verify::fetch_wait;
use crate::verify::kafka::KafkaVerifier;
use crate::verify::sink;

mod embedded;
mod jobs;
mod registry;
mod waits;

use embedded::{create_embedded_topics, point_at_embedded};
use registry::{keep_asking, schema_id};

/// Brokers of the embedded cluster (librdkafka's in-process mock).
pub const EMBEDDED_BROKERS: i32 = 3;

/// How long librdkafka keeps retrying a record after the longest probe timeout.
const PRODUCER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
/// How an agent runs.
pub struct AgentOptions {
    /// How many rounds each probe sends.
    pub plan: Plan,
    /// Serve `/metrics` and friends here (`None`: no HTTP server).
    pub listen: Option<SocketAddr>,
    /// Run every cluster on the embedded mock cluster, whatever the agent file says.
    pub embedded: bool,
}

/// What to do about an address that cannot be bound.
fn listen_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another process (another slo-probe?) holds this port: choose another with --listen or `listen:` in the agent file"
        }
        std::io::ErrorKind::PermissionDenied => {
            "; ports below 1024 need privileges: use a higher one (the default is 9747)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "; no interface of this host has that address: use 0.0.0.0 (every interface) or 127.0.0.1"
        }
        _ => "",
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cluster {cluster}: invalid client configuration: {error}")]
    /// A cluster's client settings are not accepted by librdkafka.
    Client {
        /// The cluster's name.
        cluster: String,
        /// What librdkafka said.
        error: rdkafka::error::KafkaError,
    },
    #[error("cannot listen on {addr}: {error}{}", listen_hint(error))]
    /// The HTTP address cannot be bound.
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why not.
        error: std::io::Error,
    },
    #[error("cannot start the embedded cluster: {0}")]
    /// librdkafka's mock cluster could not start.
    Embedded(rdkafka::error::KafkaError),
    #[error("tracing: {0}")]
    /// The span exporter could not be built.
    Tracing(String),
    #[error("probe {probe}: {error}")]
    /// A probe's Schema Registry could not be asked for its schema id (`smoke` only: `run`
    /// keeps asking, and counts each failure).
    Registry {
        /// The probe's name.
        probe: String,
        /// Why.
        error: String,
    },
    #[error("probe {probe}: {error}")]
    /// A probe's sink poller could not be built, or its sink's answer to the query does not
    /// fit the probe (a column it cannot compare: located in the probe file).
    Sink {
        /// The probe's name.
        probe: String,
        /// Why.
        error: String,
    },
}

/// A running agent: its probes, their clients and verifiers, the HTTP server.
pub struct Agent {
    /// What it runs (with the embedded cluster's address when it runs on it).
    pub config: Config,
    probes: Vec<Arc<Probe>>,
    metrics: Arc<Metrics>,
    http_addr: Option<SocketAddr>,
    /// Stops the send loops (they then drain).
    stop_sending: CancellationToken,
    /// Stops everything else once the probes drained.
    stop_all: CancellationToken,
    send_loops: TaskTracker,
    background: TaskTracker,
    /// OTLP export, flushed at shutdown.
    spans: Option<Exporter>,
    // Dropped last: the clients, then the embedded cluster they talk to.
    _producers: BTreeMap<String, Arc<Producer>>,
    _verifiers: BTreeMap<String, Arc<KafkaVerifier>>,
    embedded: Option<EmbeddedCluster>,
    /// The jobs the probes name, as their pollers see them.
    jobs: Vec<Arc<crate::probe::JobWatch>>,
}

/// Totals at the end of a run, for the final log line.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Each probe's final counts.
    pub per_probe: Vec<(String, Counts)>,
    /// True when every probe settled all its records within the bound.
    pub drained: bool,
}

impl Agent {
    /// Builds and starts everything `config` describes (on the embedded cluster when asked for, or when no cluster is configured).
    pub async fn start(mut config: Config, opts: AgentOptions) -> Result<Agent, StartError> {
        // The port first: a port in use is reported before any cluster or client starts (and
        // then stops, with log lines of its own that buried the cause).
        let listener = match opts.listen {
            Some(addr) => {
                Some(server::bind(addr).map_err(|error| StartError::Listen { addr, error })?)
            }
            None => None,
        };
        let embedded = if opts.embedded || config.is_zero_config() {
            let cluster = EmbeddedCluster::start(EMBEDDED_BROKERS).map_err(StartError::Embedded)?;
            point_at_embedded(&mut config, &cluster);
            create_embedded_topics(&config, &cluster).map_err(StartError::Embedded)?;
            if opts.embedded {
                tracing::info!(
                    bootstrap_servers = cluster.bootstrap_servers(),
                    brokers = EMBEDDED_BROKERS,
                    "--embedded: running on the embedded mock cluster inside this process; records never leave it"
                );
            } else {
                // The zero-config default: fine for a first look, never what a canary is for.
                let agent_file = config.agent.source.as_ref().map_or_else(
                    || "none (no slo-probe.yaml here, no --config)".to_string(),
                    |p| format!("{} (it defines no clusters)", p.display()),
                );
                tracing::warn!(
                    bootstrap_servers = cluster.bootstrap_servers(),
                    brokers = EMBEDDED_BROKERS,
                    agent_file,
                    "no cluster configured: running on the embedded mock cluster inside this process; records never leave it and no real pipeline is checked (give an agent file with `clusters`, or --embedded to say this is intended)"
                );
            }
            Some(cluster)
        } else {
            None
        };

        for note in &config.notes {
            tracing::warn!(at = %note.loc, "{}", note.message);
        }
        let thresholds = config
            .probes
            .iter()
            .flat_map(|p| p.slos.iter())
            .filter_map(|s| match s.sli {
                crate::config::Sli::Latency { below } => Some(below),
                _ => None,
            });
        let metrics = Arc::new(Metrics::new(&config.agent.site, thresholds));
        metrics.set_build_info(embedded.is_some());
        let instance = config.agent.instance.clone();

        // One producer per producing cluster. librdkafka retries a record for the longest probe
        // timeout plus a margin: a record not read back by its deadline is `lost` (settled by
        // the tracker, not by a race with librdkafka's own timeout), and one delivered after
        // that still counts as a late arrival.
        let mut producers = BTreeMap::new();
        for p in &config.probes {
            if producers.contains_key(&p.cluster) {
                continue;
            }
            let longest = config
                .probes
                .iter()
                .filter(|q| q.cluster == p.cluster)
                .map(|q| q.timeout)
                .max();
            let cluster = cluster(&config, &p.cluster);
            let producer = Producer::new(
                cluster,
                &instance,
                longest.unwrap_or(p.timeout) + PRODUCER_GRACE,
            )
            .map_err(|error| StartError::Client {
                cluster: p.cluster.clone(),
                error,
            })?;
            producers.insert(p.cluster.clone(), Arc::new(producer));
        }
        let jobs = jobs::Jobs::of(&config)?;
        let (spans, exporter) = start_spans(&config.agent, metrics.spans_dropped())?;
        let spans = Arc::new(spans);
        let mut verifiers: BTreeMap<String, Arc<KafkaVerifier>> = BTreeMap::new();
        let probes: Vec<Arc<Probe>> = config
            .probes
            .iter()
            .map(|p| {
                let origin = crate::record::Origin {
                    probe: p.name.clone(),
                    instance: config.agent.instance.clone(),
                    site: config.agent.site.clone(),
                };
                let observer =
                    ProbeObserver::new(Arc::clone(&metrics), Arc::clone(&spans), p, origin);
                let observer = if opts.plan == Plan::Forever {
                    observer
                } else {
                    observer.every_record_logged()
                };
                let job = p.job.as_ref().and_then(|j| jobs.watch(&j.name));
                Arc::new(
                    Probe::new(
                        p.clone(),
                        &config.agent,
                        Arc::new(observer),
                        opts.plan != Plan::Forever,
                    )
                    .with_job(job),
                )
            })
            .collect();
        for probe in &probes {
            let Some(name) = &probe.verify_cluster else {
                continue;
            };
            if !verifiers.contains_key(name) {
                let on_embedded = embedded.is_some();
                let v = KafkaVerifier::new(cluster(&config, name), &instance, on_embedded)
                    .map_err(|error| StartError::Client {
                        cluster: name.clone(),
                        error,
                    })?;
                verifiers.insert(name.clone(), Arc::new(v));
            }
            verifiers[name]
                .route(Arc::clone(probe))
                .map_err(|error| StartError::Sink {
                    probe: probe.name().to_string(),
                    error: format!("verify.kafka.registry: {error}"),
                })?;
        }

        let stop_sending = CancellationToken::new();
        let stop_all = CancellationToken::new();
        let (send_loops, background) = (TaskTracker::new(), TaskTracker::new());
        // Every long-lived task is supervised: a panic or an early end is logged with its
        // probes, counted, makes them unready, and the task is started again.
        let supervised = |tracker: &TaskTracker,
                          ends: Ends,
                          task: Task,
                          probes: Vec<Arc<Probe>>,
                          start: Box<dyn FnMut() -> BoxTask + Send>| {
            tracker.spawn(supervise(
                ends,
                stop_all.clone(),
                reporter(task, probes),
                start,
            ));
        };
        // Every probe's registry at once: starting takes one registry timeout at most. A probe
        // whose registry did not answer (`run` only) keeps asking in a supervised task.
        let mut asks = tokio::task::JoinSet::new();
        for probe in &probes {
            let (probe, plan) = (Arc::clone(probe), opts.plan);
            asks.spawn(async move { (schema_id(&probe, plan).await, probe) });
        }
        while let Some(asked) = asks.join_next().await {
            let (asked, probe) = asked.expect("a schema id lookup does not panic");
            if let Some(registry) = asked? {
                let (p, stop) = (Arc::clone(&probe), stop_all.clone());
                let start = move || {
                    Box::pin(keep_asking(
                        Arc::clone(&p),
                        Arc::clone(&registry),
                        stop.clone(),
                    )) as BoxTask
                };
                supervised(
                    &background,
                    Ends::WhenDone,
                    Task::SchemaRegistry,
                    vec![probe],
                    Box::new(start),
                );
            }
        }
        for (cluster_name, v) in &verifiers {
            let probes: Vec<Arc<Probe>> = probes
                .iter()
                .filter(|p| p.verify_cluster.as_ref() == Some(cluster_name))
                .cloned()
                .collect();
            // Chooses the verifier's fetch wait (when nothing chose it already), then ends. Not
            // restarted: a detector that dies leaves the verifier at 10 ms, which is right on
            // every broker.
            background.spawn(fetch_wait::detect(Arc::clone(v), stop_all.clone()));
            let (v, stop) = (Arc::clone(v), stop_all.clone());
            let start = move || Box::pin(Arc::clone(&v).run(stop.clone())) as BoxTask;
            supervised(
                &background,
                Ends::WhenStopped,
                Task::KafkaVerifier,
                probes,
                Box::new(start),
            );
        }
        // Every job polled once before any record is sent (`smoke` gates on it), then polled in
        // a supervised task of its own, for the probes naming it.
        for (poller, names) in jobs.pollers(&metrics).await? {
            let served: Vec<Arc<Probe>> = probes
                .iter()
                .filter(|p| names.iter().any(|n| n == p.name()))
                .cloned()
                .collect();
            let stop = stop_all.clone();
            let start = move || Box::pin(Arc::clone(&poller).run(stop.clone())) as BoxTask;
            supervised(
                &background,
                Ends::WhenStopped,
                Task::JobPoller,
                served,
                Box::new(start),
            );
        }
        sink::check_all(&probes)
            .await
            .map_err(|(probe, error)| StartError::Sink { probe, error })?;
        for probe in &probes {
            let poller = sink::poller(probe, &stop_all).map_err(|error| StartError::Sink {
                probe: probe.name().to_string(),
                error,
            })?;
            if let Some(poller) = poller {
                let probes = vec![Arc::clone(probe)];
                supervised(
                    &background,
                    Ends::WhenStopped,
                    Task::SinkPoller,
                    probes,
                    Box::new(poller),
                );
            }
        }
        // One metadata watch per (cluster, topic), shared by every probe on it: probe topics
        // are read with the cluster's producer, verify-only topics with its verifier.
        let mut watches: BTreeMap<(String, String), Watched> = BTreeMap::new();
        let mut topics: BTreeMap<(String, String), watch::Receiver<TopicState>> = BTreeMap::new();
        let mut watch = |probe: &Arc<Probe>,
                         cluster_name: &str,
                         topic: &str,
                         client: MetadataClient,
                         create: Option<CreateTopic>| {
            let key = (cluster_name.to_string(), topic.to_string());
            let rx = topics
                .entry(key.clone())
                .or_insert_with(|| {
                    let (tx, rx) = watch::channel(None);
                    let w = TopicWatch {
                        cluster: cluster(&config, cluster_name).clone(),
                        topic: topic.to_string(),
                        client,
                        create,
                        instance: instance.clone(),
                        refresh: config.agent.metadata_refresh,
                        state: Arc::new(tx),
                        stop: stop_all.clone(),
                    };
                    watches.insert(key.clone(), (w, Vec::new()));
                    rx
                })
                .clone();
            watches
                .get_mut(&key)
                .expect("inserted with its receiver")
                .1
                .push(Arc::clone(probe));
            rx
        };
        let mut produce_watches = Vec::new();
        for probe in &probes {
            let cfg = &probe.config;
            // The first probe on a topic that asks for it decides how the topic is created.
            let create = config.probes.iter().find(|p| {
                p.cluster == cfg.cluster && p.topic == cfg.topic && p.create_topic.is_some()
            });
            let client = MetadataClient::Producer(Arc::clone(&producers[&cfg.cluster]));
            produce_watches.push(watch(
                probe,
                &cfg.cluster,
                &cfg.topic,
                client,
                create.and_then(|p| p.create_topic),
            ));
        }
        let mut follows = Vec::new();
        for (probe, produce) in probes.iter().zip(produce_watches) {
            let cfg = &probe.config;
            let verifier = probe
                .verify_cluster
                .as_ref()
                .map(|c| (c, Arc::clone(&verifiers[c])));
            // Another topic (or cluster) to read back from: its partitions are watched too.
            let verify = verifier
                .as_ref()
                .filter(|(c, _)| **c != cfg.cluster || probe.verify_topic != cfg.topic)
                .map(|(c, v)| {
                    watch(
                        probe,
                        c,
                        &probe.verify_topic,
                        MetadataClient::Verifier(Arc::clone(v)),
                        None,
                    )
                });
            let verifier = verifier.map(|(_, v)| v);
            let (tx, rx) = watch::channel(None);
            follows.push((
                Follow {
                    probe: Arc::clone(probe),
                    produce,
                    verify,
                    verifier,
                    partitions: Arc::new(tx),
                    stop: stop_all.clone(),
                },
                rx,
            ));
        }
        for (w, probes) in watches.into_values() {
            let start = move || Box::pin(discovery::watch_topic(w.clone())) as BoxTask;
            supervised(
                &background,
                Ends::WhenStopped,
                Task::TopicWatch,
                probes,
                Box::new(start),
            );
        }
        for (follow, rx) in follows {
            let probe = Arc::clone(&follow.probe);
            let start = move || Box::pin(discovery::follow(follow.clone())) as BoxTask;
            let probes = vec![Arc::clone(&probe)];
            supervised(
                &background,
                Ends::WhenStopped,
                Task::Discovery,
                probes,
                Box::new(start),
            );
            let send = SendLoop {
                probe: Arc::clone(&probe),
                producer: Arc::clone(&producers[&probe.config.cluster]),
                partitions: rx,
                plan: opts.plan,
                stop: stop_sending.clone(),
                schedule: Arc::default(),
            };
            let start = move || Box::pin(task::send_loop(send.clone())) as BoxTask;
            // A send loop ends when its plan is done and its records settled; after a panic it
            // resumes its schedule.
            supervised(
                &send_loops,
                Ends::WhenDone,
                Task::SendLoop,
                vec![probe],
                Box::new(start),
            );
        }
        send_loops.close();

        let mut agent = Agent {
            config,
            probes,
            metrics,
            http_addr: None,
            stop_sending,
            stop_all,
            send_loops,
            background,
            spans: exporter,
            _producers: producers,
            _verifiers: verifiers,
            embedded,
            jobs: jobs.watches(),
        };
        if let (Some(addr), Some(listener)) = (opts.listen, listener) {
            let local = listener
                .local_addr()
                .map_err(|error| StartError::Listen { addr, error })?;
            agent.http_addr = Some(local);
            let state = server::State::new(agent.view());
            agent
                .background
                .spawn(server::serve(listener, state, agent.stop_all.clone()));
            tracing::info!(addr = %local, "serving /metrics, /healthz, /readyz, /status");
        }
        Ok(agent)
    }

    /// What the HTTP endpoints need: probes and metrics, nothing that owns a client.
    pub fn view(&self) -> AgentView {
        AgentView {
            probes: self.probes.clone(),
            metrics: Arc::clone(&self.metrics),
            site: self.config.agent.site.clone(),
            instance: self.config.agent.instance.clone(),
            fetch_wait: self
                ._verifiers
                .iter()
                .map(|(name, v)| (name.clone(), v.fetch_wait()))
                .collect(),
            trace_url: self.config.agent.trace_url.clone(),
            embedded: self.embedded.is_some(),
        }
    }

    /// Where the HTTP endpoints are served, if they are.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The probes it runs.
    pub fn probes(&self) -> &[Arc<Probe>] {
        &self.probes
    }

    /// The embedded cluster it runs on, if it does.
    pub fn embedded(&self) -> Option<&EmbeddedCluster> {
        self.embedded.as_ref()
    }

    /// The jobs the probes name, as their pollers see them (each polled once already).
    pub fn jobs(&self) -> &[Arc<crate::probe::JobWatch>] {
        &self.jobs
    }

    /// Resolves when every probe finished its plan and settled its records.
    pub async fn wait_finished(&self) {
        self.send_loops.wait().await;
    }

    /// Stops sending now; in-flight records still get their outcome.
    pub fn stop_sending(&self) {
        self.stop_sending.cancel();
    }

    /// The longest time draining records can take: every in-flight record is settled by its
    /// deadline. Stopping takes at most this plus [`STOP_GRACE`] and the span flush.
    pub fn drain_bound(&self) -> Duration {
        self.config
            .probes
            .iter()
            .map(|p| p.timeout)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(5)
    }

    /// Stops sending, waits (up to `drain_bound`, or until `abort`) for every in-flight record to
    /// be settled, then stops everything: tasks get [`STOP_GRACE`] to end (the HTTP server
    /// drops connections that do not finish), the span queue is flushed (each export bounded by
    /// the exporter's timeout).
    pub async fn shutdown(self, abort: impl std::future::Future<Output = ()>) -> ShutdownReport {
        self.shutdown_with(abort, std::future::pending()).await
    }

    /// As [`Agent::shutdown`], and `hard` (a second signal) also ends the waits after the
    /// drain: the tasks' grace and the span flush. Stopping never waits on a client.
    pub async fn shutdown_with(
        self,
        abort: impl std::future::Future<Output = ()>,
        hard: impl std::future::Future<Output = ()>,
    ) -> ShutdownReport {
        tokio::pin!(hard);
        self.stop_sending.cancel();
        let mut stopped = false;
        tokio::select! {
            biased;
            _ = self.send_loops.wait() => {}
            _ = tokio::time::sleep(self.drain_bound()) => {}
            _ = abort => {}
            _ = &mut hard => stopped = true,
        }
        let drained = self.probes.iter().all(|p| p.in_flight() == 0);
        self.stop_all.cancel();
        self.background.close();
        if !stopped {
            tokio::select! {
                _ = self.background.wait() => {}
                _ = tokio::time::sleep(STOP_GRACE) => {
                    tracing::warn!(grace = ?STOP_GRACE, "tasks still running at stop were left behind");
                }
                _ = &mut hard => stopped = true,
            }
        }
        if let Some(spans) = self.spans
            && !stopped
        {
            tokio::select! {
                _ = spans.shutdown() => {}
                _ = &mut hard => {}
            }
        }
        let per_probe = self
            .probes
            .iter()
            .map(|p| (p.name().to_string(), p.progress().borrow().counts))
            .collect();
        ShutdownReport { per_probe, drained }
    }
}

/// How long the agent's tasks get to end once told to stop (the HTTP server needs
/// [`server::DRAIN`] twice at most).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A topic's metadata watch and the probes that depend on it.
type Watched = (TopicWatch, Vec<Arc<Probe>>);

/// One run of a supervised task.
type BoxTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How a supervised task's failures are reported: to each probe it serves (its observer logs
/// and counts them), which is unready until the task runs again.
fn reporter(task: Task, probes: Vec<Arc<Probe>>) -> impl Fn(TaskEvent) + Send {
    move |event| match event {
        TaskEvent::Down { why, restart_in } => {
            for p in &probes {
                p.task_down(task, &why, restart_in);
            }
        }
        TaskEvent::Restarted => {
            for p in &probes {
                p.task_up(task);
            }
        }
    }
}

/// The span pipeline: on when the agent file has a `tracing` section or the environment names
/// an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
fn start_spans(
    agent: &AgentConfig,
    dropped: prometheus::IntCounter,
) -> Result<(Spans, Option<Exporter>), StartError> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let cfg = match &agent.tracing {
        Some(cfg) => cfg.clone(),
        None if from_env => TracingConfig::default(),
        None => return Ok((Spans::disabled(dropped), None)),
    };
    let who = Identity {
        site: &agent.site,
        instance: &agent.instance,
    };
    let (spans, exporter) = Spans::start(&cfg, who, dropped).map_err(StartError::Tracing)?;
    Ok((spans, Some(exporter)))
}

fn cluster<'c>(config: &'c Config, name: &str) -> &'c ClusterConfig {
    config
        .agent
        .clusters
        .get(name)
        .expect("cluster references are validated at load")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::BACKOFF_MIN;

    /// A task of a probe panics twice: each death is logged with the probe and counted, the
    /// probe is unready while the task is down, and the task comes back after 1 s, then 2 s.
    #[tokio::test(start_paused = true)]
    async fn a_dead_task_is_logged_counted_and_unready_until_restarted() {
        let (logs, _guard) = crate::export::logging::captured();

        let (probe, metrics) = crate::testing::observed(
            "name: orders
",
        );
        let probe = Arc::new(probe);
        let view = AgentView {
            probes: vec![Arc::clone(&probe)],
            metrics,
            site: "default".into(),
            instance: "test".into(),
            fetch_wait: BTreeMap::new(),
            trace_url: None,
            embedded: false,
        };
        let restarts = |view: &AgentView| {
            let m = view.render_metrics();
            m.lines()
                .find(|l| {
                    l.starts_with("slo_probe_task_restarts_total{")
                        && l.contains("task=\"kafka_verifier\"")
                })
                .and_then(|l| l.rsplit_once(' '))
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(
            restarts(&view).as_deref(),
            Some("0"),
            "exported from the start"
        );

        let stop = CancellationToken::new();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let s = stop.clone();
        let supervisor = tokio::spawn(supervise(
            Ends::WhenStopped,
            stop.clone(),
            reporter(Task::KafkaVerifier, vec![Arc::clone(&probe)]),
            move || {
                let (n, s) = (
                    r.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    s.clone(),
                );
                async move {
                    if n < 2 {
                        panic!("unexpected broker answer");
                    }
                    s.cancelled().await;
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let why = view.readiness().unwrap_err();
        assert_eq!(
            why,
            [
                "orders: task kafka_verifier is down and being restarted: panicked: unexpected broker answer"
            ]
        );
        assert_eq!(restarts(&view).as_deref(), Some("1"));
        // restarted after 1 s, dies again at once, back after 2 s more
        tokio::time::sleep(BACKOFF_MIN).await;
        assert_eq!(restarts(&view).as_deref(), Some("2"));
        assert!(view.readiness().unwrap_err()[0].contains("kafka_verifier is down"));
        tokio::time::sleep(BACKOFF_MIN * 2).await;
        let why = view.readiness().unwrap_err();
        assert_eq!(
            why,
            ["orders: first round not complete"],
            "the task runs again; the probe's own state decides"
        );
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 3);

        let failed = logs.events("task failed; restarting it");
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0]["level"], "ERROR");
        assert_eq!(failed[0]["fields"]["probe"], "orders");
        assert_eq!(failed[0]["fields"]["task"], "kafka_verifier");
        assert_eq!(failed[0]["fields"]["restart_in"], "1s");
        assert_eq!(failed[1]["fields"]["restart_in"], "2s");
        assert_eq!(logs.events("task restarted").len(), 2);
        stop.cancel();
        supervisor.await.unwrap();
    }
}
