//! Configuration: the agent file (clusters, site, listen address) and one file per probe.
//!
//! [`load`] reads everything, validates it and returns either a [`Config`] or every problem it
//! found ([`Diagnostics`]), each located as `file:line:col`. Nothing here touches the network.

mod agent_file;
mod diag;
mod probe_file;
mod verify;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::record::{Expectation, IdFrom};
pub use diag::{Diagnostic, Diagnostics, Loc};
pub use probe_file::fill;
pub use verify::{
    ColumnPlaces, HttpMethod, HttpVerify, KafkaVerify, PostgresVerify, SinkKind, SinkPoll,
    SinkStamps, Verify,
};
pub use yaml::{check_name, plain_number};

/// The topic probes use when their file names none.
pub const DEFAULT_TOPIC: &str = "synthetic-sla";
/// Where the agent listens when neither the file nor `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9747";
/// A listen address as people write it: `0.0.0.0:9747`, `[::1]:9747`, `:9747` (every
/// interface, the Prometheus exporters' convention) or `localhost:9747` (a host name, resolved
/// now; its first address is used, IPv4 first).
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
            .map_err(|_| format!("`{s}`: `{port}` is not a port (0-65535)"));
    }
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let hint = "an address like 0.0.0.0:9747, 127.0.0.1:9747, :9747 or localhost:9747";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(if s.parse::<u16>().is_ok() {
            format!(
                "`{s}` has no host: write `:{s}` for every interface or `127.0.0.1:{s}` for this host only"
            )
        } else {
            format!("`{s}` is not {hint}")
        });
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("`{s}`: `{port}` is not a port (0-65535)"));
    }
    let mut addrs: Vec<SocketAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: cannot resolve `{host}` ({e}); use {hint}"))?
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    let port: u16 = port.parse().expect("checked above");
    addrs
        .first()
        .map(|a| SocketAddr::new(a.ip(), port))
        .ok_or_else(|| format!("`{s}`: `{host}` resolves to no address"))
}

/// Largest synthetic payload: Kafka's default `message.max.bytes` is about 1 MB.
pub const MAX_PAYLOAD_BYTES: usize = 1_000_000;
/// Default bound on a probe's records in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// Default bound on an HTTP sink's response body: thousands of documents, far below the
/// agent's memory limit.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Everything the agent runs: the agent settings and its probes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent file's settings (defaults without one).
    pub agent: AgentConfig,
    /// One per probe file, in the order read.
    pub probes: Vec<ProbeConfig>,
    /// Valid, but worth a second look before it runs: each a located sentence. `check` prints
    /// them; `run` and `smoke` log them as warnings at start.
    pub notes: Vec<Diagnostic>,
}

impl Config {
    /// True when no cluster is configured: every probe then runs on the embedded mock cluster.
    pub fn is_zero_config(&self) -> bool {
        self.agent.clusters.is_empty()
    }
}

#[derive(Debug, Clone)]
/// The agent file: site, instance, listen address, windows, clusters, tracing.
pub struct AgentConfig {
    /// The agent file this came from, if any.
    pub source: Option<PathBuf>,
    /// Vantage point label (region, zone, datacenter) written into every record.
    pub site: String,
    /// Identifies this agent process in records; unique per start so that records of a previous
    /// run (or another replica) are never mistaken for this one's.
    pub instance: String,
    /// Where the HTTP endpoints listen.
    pub listen: SocketAddr,
    /// Whether `listen` was chosen (in the agent file or with `--listen`) rather than the
    /// default: the default on every interface is warned about.
    pub listen_chosen: bool,
    /// Sliding window of the exported quantiles and availability.
    pub window: Duration,
    /// How often each probe re-reads topic metadata to pick up added partitions.
    pub metadata_refresh: Duration,
    /// The clusters, by name.
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// OTLP span export; `None` when the agent file has no `tracing` section and no
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` is set.
    pub tracing: Option<TracingConfig>,
    /// Where a trace can be looked at (Grafana Explore, Jaeger, Tempo): a URL with
    /// `{trace_id}`; the HTML report and live page link each trace id there.
    pub trace_url: Option<String>,
    /// Jobs probes name by key (`job: <key>`), for probes that share one.
    pub jobs: BTreeMap<String, JobConfig>,
}

/// How spans leave the agent. Fields not set here come from the standard
/// `OTEL_EXPORTER_OTLP_*` environment variables, then from the OTLP defaults.
#[derive(Clone, PartialEq)]
pub struct TracingConfig {
    /// The OTLP collector's URL.
    pub endpoint: Option<String>,
    /// gRPC or HTTP/protobuf.
    pub protocol: Option<OtlpProtocol>,
    /// Sent with every export (e.g. an API key); values may come from `${ENV}` or `_file`.
    pub headers: BTreeMap<String, String>,
    /// Bound on one export request.
    pub timeout: Option<Duration>,
    /// Share of records whose traces are sampled (1.0: all, the default; they are few and each
    /// matters). The decision is written into each record's `traceparent` flags.
    pub sampling_ratio: f64,
}

/// Header values are credentials: only their names are shown.
impl fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("sampling_ratio", &self.sampling_ratio)
            .finish()
    }
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            timeout: None,
            sampling_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The OTLP transports.
pub enum OtlpProtocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The names the OTLP specification uses (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            source: None,
            site: "default".into(),
            instance: default_instance(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            listen_chosen: false,
            window: Duration::from_secs(300),
            metadata_refresh: Duration::from_secs(30),
            clusters: BTreeMap::new(),
            tracing: None,
            trace_url: None,
            jobs: BTreeMap::new(),
        }
    }
}

/// `<hostname>-<6 random hex digits>`: readable in logs, unique per process start.
pub fn default_instance() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| check_name(h).is_ok())
        .unwrap_or_else(|| "slo-probe".into());
    format!("{host}-{:06x}", fastrand::u32(..0x100_0000))
}

/// A Kafka cluster. Property values may hold secrets, so `Debug` shows keys only.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The name probes refer to it by.
    pub name: String,
    /// librdkafka's `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// librdkafka properties for every client of this cluster (`security.protocol`, `sasl.*`...).
    pub properties: BTreeMap<String, String>,
    /// Extra properties for the producer only, applied after `properties`.
    pub producer: BTreeMap<String, String>,
    /// Extra properties for the consumer only, applied after `properties`.
    pub consumer: BTreeMap<String, String>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("producer", &self.producer.keys().collect::<Vec<_>>())
            .field("consumer", &self.consumer.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone)]
/// One probe file: what to produce, how to verify it, which SLOs to hold it to.
pub struct ProbeConfig {
    /// Unique among the agent's probes; a label of every series of the probe.
    pub name: String,
    /// The cluster records are produced to.
    pub cluster: String,
    /// Where records are produced.
    pub topic: String,
    /// One record per partition per interval.
    pub interval: Duration,
    /// A record not verified within this time after its scheduled send is final (`lost`).
    pub timeout: Duration,
    /// Which partitions get records.
    pub partitions: Partitions,
    /// Size of each record's random payload.
    pub payload_bytes: usize,
    /// Written into every record's envelope and as headers.
    pub tags: BTreeMap<String, String>,
    /// How records are verified.
    pub verify: Verify,
    /// The SLOs the probe's records are held to.
    pub slos: Vec<SloConfig>,
    /// Records in flight beyond this are settled `send_failed` (backpressure) instead of sent,
    /// so memory stays bounded however long a broker is down.
    pub max_in_flight: usize,
    /// Export outcomes per partition (and each partition's leader); off by default to keep the
    /// number of series low.
    pub per_partition_metrics: bool,
    /// Create the topic when it is missing (otherwise a missing topic is an error).
    pub create_topic: Option<CreateTopic>,
    /// The pipeline's own record format (`record`); `None`: the envelope. Shared, so that a
    /// schema id resolved from a registry is seen by every copy of the config.
    pub record: Option<std::sync::Arc<crate::record::shape::Shape>>,
    /// The Schema Registry the record's schema id comes from (`record.avro.registry`).
    pub schema_registry: Option<RegistryConfig>,
    /// The job its records go through (`job`), whose state a record that is not `ok`
    /// carries, and which `smoke` requires to be running.
    pub job: Option<JobConfig>,
    /// Where the probe was defined (its file), for messages.
    pub origin: Loc,
}

/// A Flink job, polled through Flink's REST API (`job` in a probe file, `jobs` in the agent
/// file).
#[derive(Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// The `flink_job` label: its key in the agent file's `jobs`, or the probe file's `name`
    /// (else `id`).
    pub name: String,
    /// Flink's REST API (the JobManager's, or its Kubernetes service), without a trailing
    /// slash.
    pub url: String,
    /// How the job is found.
    pub find: JobRef,
    /// Credentials sent with every request.
    pub auth: HttpAuth,
    /// Extra CA certificates (PEM) for an `https://` address.
    pub ca_file: Option<PathBuf>,
    /// Bound on each request.
    pub timeout: Duration,
    /// How often it is polled (one poller per job, however many probes name it).
    pub poll: Duration,
}

impl JobConfig {
    /// `http://flink:8081 job orders-enrich`: where it is looked for, in messages.
    pub fn target(&self) -> String {
        match &self.find {
            JobRef::Name(n) => format!("{} job `{n}`", self.url),
            JobRef::Id(id) => format!("{} job id {id}", self.url),
        }
    }
}

impl std::fmt::Debug for JobConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("find", &self.find)
            .field("auth", &self.auth.kind())
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("poll", &self.poll)
            .finish()
    }
}

/// How a job is found among those Flink runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    /// By its name (Flink's `pipeline.name`): the newest job of that name, so that a job
    /// submitted again (with a new id) is followed.
    Name(String),
    /// By its id.
    Id(String),
}

impl ProbeConfig {
    /// Records are read back from the topic they were sent to, on the same cluster: copies of
    /// what was sent, with no pipeline in between.
    pub fn verifies_own_topic(&self) -> bool {
        self.verify
            .kafka()
            .is_some_and(|k| k.cluster == self.cluster && k.topic == self.topic)
    }

    /// Records are read back from another topic (a job's output, a mirror), not looked up in
    /// a sink: where that topic stands is the output's progress.
    pub fn verifies_downstream(&self) -> bool {
        self.verify.kafka().is_some() && !self.verifies_own_topic()
    }
}

/// A Schema Registry (the Confluent REST API, as Karapace and Redpanda serve it too).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Base URL, without a trailing slash.
    pub url: String,
    /// The subject the schema is registered or looked up under (default `<topic>-value`, the
    /// TopicNameStrategy).
    pub subject: String,
    /// Register the schema when the subject does not have it; otherwise only look it up (a
    /// canary should not change what a pipeline's registry holds unless told to).
    pub register: bool,
    /// Credentials sent with every request.
    pub auth: HttpAuth,
    /// Extra CA certificates (PEM) for an `https://` registry.
    pub ca_file: Option<PathBuf>,
    /// Bound on each request.
    pub timeout: Duration,
}

/// How requests to an HTTP API (a Schema Registry, Flink's REST API) authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum HttpAuth {
    /// No credentials.
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user (Confluent Cloud: the API key).
        username: String,
        /// The password (Confluent Cloud: the API secret).
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl HttpAuth {
    /// `request` with these credentials (a bearer token marked sensitive, so that it is never
    /// printed); an error when the token cannot be a header value.
    pub fn apply(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, &'static str> {
        Ok(match self {
            HttpAuth::None => request,
            HttpAuth::Basic { username, password } => request.basic_auth(username, Some(password)),
            HttpAuth::Bearer(token) => {
                let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| "the bearer token is not a valid header value")?;
                value.set_sensitive(true);
                request.header(reqwest::header::AUTHORIZATION, value)
            }
        })
    }

    /// What kind, never the secret: `none`, `basic (<user>)`, `bearer`.
    pub fn kind(&self) -> String {
        match self {
            HttpAuth::None => "none".to_string(),
            HttpAuth::Basic { username, .. } => format!("basic ({username})"),
            HttpAuth::Bearer(_) => "bearer".to_string(),
        }
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = self.auth.kind();
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("subject", &self.subject)
            .field("register", &self.register)
            .field("auth", &auth)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// Which partitions of the topic a probe covers.
pub enum Partitions {
    /// Every partition of the topic, following partitions added later.
    All,
    /// Exactly these partitions.
    List(Vec<i32>),
}

/// Create the probe topic when it does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreateTopic {
    /// Default: the number of brokers, so that every broker can lead a partition.
    pub partitions: Option<i32>,
    /// Default: 3, or fewer when the cluster has fewer brokers.
    pub replication_factor: Option<i32>,
}

#[derive(Debug, Clone)]
/// One SLO of a probe.
pub struct SloConfig {
    /// Unique within the probe; a label of its series.
    pub name: String,
    /// What counts as good.
    pub sli: Sli,
    /// Target ratio of good events, e.g. 0.999.
    pub objective: f64,
    /// Compliance period of the error budget.
    pub window: Duration,
    /// Page alerts also need this many bad events in their long window (`None`: off), so that
    /// a probe sending few records does not page on one or two.
    pub min_bad_events: Option<u64>,
}

/// What counts as a good event for an SLO. Only final outcomes count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sli {
    /// Good: verified intact with end-to-end latency below the threshold. Bad: verified too
    /// slowly, lost or corrupt. Records that could not be sent are not the pipeline's latency.
    Latency {
        /// The latency a good event stays under.
        below: Duration,
    },
    /// Good: verified intact within the timeout. Bad: lost or corrupt.
    Completeness,
    /// Good: verified intact. Bad: every other final outcome, send failures included.
    Availability,
}

impl Sli {
    /// `latency`, `completeness` or `availability`.
    pub fn kind(&self) -> &'static str {
        match self {
            Sli::Latency { .. } => "latency",
            Sli::Completeness => "completeness",
            Sli::Availability => "availability",
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The agent file; `None` runs with defaults (and the embedded cluster).
    pub agent_file: Option<PathBuf>,
    /// Probe files or directories of them (`*.yaml`, `*.yml`, not recursive).
    pub probe_paths: Vec<PathBuf>,
}

/// Reads and validates all configuration, reporting every problem at once.
pub fn load(sources: &Sources) -> Result<Config, Diagnostics> {
    let mut diags = Diagnostics::default();
    let agent = match &sources.agent_file {
        Some(path) => agent_file::load(path, &mut diags),
        None => AgentConfig::default(),
    };
    let mut parsed = Vec::new();
    for file in probe_files(&sources.probe_paths, &mut diags) {
        if let Some(p) = probe_file::load(&file, &mut diags) {
            parsed.push(p);
        }
    }
    let mut notes = Vec::new();
    let probes = resolve(&agent, parsed, &mut diags, &mut notes);
    // Nothing to run is never a success: `check` would say "ok" and `smoke` would pass.
    if diags.is_empty() && probes.is_empty() {
        let searched: Vec<String> = sources
            .probe_paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let at = sources
            .probe_paths
            .first()
            .map_or(Path::new("probes"), PathBuf::as_path);
        diags.push_path(
            at,
            format!(
                "no probe to run: no probe was loaded from {}; add a probe file (see probes/orders-freshness.yaml in the repository) or name one with --probes",
                if searched.is_empty() { "anywhere (no probe path given)".to_string() } else { searched.join(", ") }
            ),
        );
    }
    if diags.is_empty() {
        Ok(Config {
            agent,
            probes,
            notes,
        })
    } else {
        diags.sort();
        Err(diags)
    }
}

fn probe_files(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && is_yaml(p))
                    .collect(),
                Err(e) => {
                    diags.push_path(path, format!("cannot read directory: {e}"));
                    continue;
                }
            };
            if found.is_empty() {
                diags.push_path(path, "no probe files (*.yaml, *.yml) in this directory");
            }
            found.sort();
            files.extend(found);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            let looked_in = match std::env::current_dir() {
                Ok(cwd) if path.is_relative() => format!(" (in {})", cwd.display()),
                _ => String::new(),
            };
            diags.push_path(
                path,
                format!(
                    "no such probe file or directory{looked_in}; name probe files or directories with --probes PATH or SLO_PROBE_PROBES (default: probes/), e.g. --probes probes/orders-freshness.yaml in a checkout of slo-probe"
                ),
            );
        }
    }
    files
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Cross-file checks (unique probe names, cluster references), run on every probe file that
/// parsed, valid or not; then the unnamed clusters of valid probes are resolved, and what the
/// probe and the clusters it uses say together is checked ([`downstream_checks`]).
fn resolve(
    agent: &AgentConfig,
    parsed: Vec<probe_file::Parsed>,
    diags: &mut Diagnostics,
    notes: &mut Vec<Diagnostic>,
) -> Vec<ProbeConfig> {
    let mut seen: HashMap<&str, &Loc> = HashMap::new();
    for p in &parsed {
        let Some((name, loc)) = &p.name else { continue };
        if let Some(first) = seen.get(name.as_str()) {
            diags.push(
                loc.clone(),
                format!("duplicate probe name `{name}` (first defined at {first})"),
            );
        } else {
            seen.insert(name, loc);
        }
    }
    // With no cluster configured every name maps to the embedded cluster: nothing to check.
    let checked = !agent.clusters.is_empty();
    let defined = || {
        agent
            .clusters
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let only = (agent.clusters.len() == 1)
        .then(|| agent.clusters.keys().next().cloned())
        .flatten();
    let mut probes = Vec::new();
    for mut p in parsed {
        let who = p
            .name
            .as_ref()
            .map_or("this probe".to_string(), |(n, _)| format!("probe `{n}`"));
        for (what, r) in [("uses", &p.cluster), ("verifies on", &p.verify_cluster)] {
            if let Some((name, loc)) = r
                && checked
                && !agent.clusters.contains_key(name)
            {
                diags.push(
                    loc.clone(),
                    format!(
                        "{who} {what} undefined cluster `{name}`; defined: {}",
                        defined()
                    ),
                );
            }
        }
        if checked && p.cluster.is_none() && only.is_none() {
            diags.push(
                p.origin.clone(),
                format!(
                    "{who} must name its `cluster` because several are defined: {}",
                    defined()
                ),
            );
        }
        let Some(mut probe) = p.probe.take() else {
            continue;
        };
        if let (None, Some(only)) = (&p.cluster, &only) {
            probe.cluster = only.clone();
            if let Verify::Kafka(k) = &mut probe.verify
                && p.verify_cluster.is_none()
            {
                k.cluster = only.clone();
            }
        }
        if let Some((key, loc)) = &p.job_key {
            match agent.jobs.get(key) {
                Some(job) => probe.job = Some(job.clone()),
                None => {
                    let defined: Vec<&str> = agent.jobs.keys().map(String::as_str).collect();
                    diags.push(
                        loc.clone(),
                        format!(
                            "{who} names undefined job `{key}`; the agent file's `jobs` define: {}",
                            if defined.is_empty() {
                                "none".to_string()
                            } else {
                                defined.join(", ")
                            }
                        ),
                    );
                    continue;
                }
            }
        }
        downstream_checks(agent, &probe, &p, diags, notes);
        probes.push(probe);
    }
    probes
}

/// What a probe verifying on another topic says together with its clusters: a transactional
/// downstream topic needs a consumer that reads only committed records; a downstream topic
/// read with neither `id_from` nor `expect` is checked as a copy, which a job's output is not
/// (a note, since a mirror's is).
fn downstream_checks(
    agent: &AgentConfig,
    probe: &ProbeConfig,
    parsed: &probe_file::Parsed,
    diags: &mut Diagnostics,
    notes: &mut Vec<Diagnostic>,
) {
    let Some(k) = probe.verify.kafka() else {
        return;
    };
    // `parsed.transactional`: where the file says `transactional: true`
    if let (Some(at), Some(c)) = (&parsed.transactional, agent.clusters.get(&k.cluster)) {
        let isolation = c
            .consumer
            .get("isolation.level")
            .or_else(|| c.properties.get("isolation.level"));
        if isolation.is_some_and(|i| i == "read_uncommitted") {
            diags.push(
                at.clone(),
                format!(
                    "`verify.kafka.transactional` needs a consumer that reads only committed records, but cluster `{}` sets isolation.level=read_uncommitted: records of aborted transactions would count as delivered; remove it (librdkafka's default is read_committed)",
                    k.cluster
                ),
            );
        }
    }
    let copied = !k.transformed() && k.avro.is_none();
    if copied && k.topic != probe.topic {
        let at = parsed.verify_kafka.clone().unwrap_or(probe.origin.clone());
        notes.push(Diagnostic {
            loc: at,
            message: format!(
                "note: probe {} reads its records back from `{}`, not from its own topic `{}`, with neither `id_from` nor `expect`: each record there must be an exact copy of the one sent ({}, every header), as a mirror writes it. A job's output is not: say where its id is (`id_from`) and what must hold (`expect`), or every record is `corrupt`",
                probe.name,
                k.topic,
                probe.topic,
                if probe.record.is_some() { "every field of `record`" } else { "the envelope and its digest" },
            ),
        });
    }
}
