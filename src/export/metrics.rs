//! The Prometheus registry. Metric names come from [`names`] only; per-probe handles are bound to
//! their labels once, so the hot path never hashes label values.
//!
//! Consistency: counters and the in-flight gauge of a probe change together under
//! [`Metrics::update`] (shared); a scrape gathers under the exclusive side, so every scrape sees
//! `sent == ok + lost + corrupt + send_failed + in_flight` exactly.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::summary::{Registered, WindowSummary, WindowValues};
use crate::config::SloConfig;
use crate::outcome::{Hop, HopPlan, Outcome, Task};
use crate::outcome::{RegistryErrorKind, SinkErrorKind};
use crate::record::ForeignReason;
use crate::stats::slo::BURN_WINDOWS;

/// Every metric name the agent exports.
pub mod names {
    /// Records scheduled.
    pub const RECORDS_SENT: &str = "slo_probe_records_sent_total";
    /// Final outcomes.
    pub const RECORDS: &str = "slo_probe_records_total";
    /// Verified records seen again.
    pub const DUPLICATES: &str = "slo_probe_duplicates_total";
    /// Records verified after a higher seq.
    pub const REORDERED: &str = "slo_probe_reordered_total";
    /// Records read back after being declared lost.
    pub const LATE_ARRIVALS: &str = "slo_probe_late_arrivals_total";
    /// Records on a probe topic that are not probe records.
    pub const FOREIGN: &str = "slo_probe_foreign_records_total";
    /// SLO events, good and bad.
    pub const SLO_EVENTS: &str = "slo_probe_slo_events_total";
    /// End-to-end latency quantiles over the window.
    pub const E2E_LATENCY: &str = "slo_probe_e2e_latency_seconds";
    /// Produce latency quantiles over the window.
    pub const PRODUCE_LATENCY: &str = "slo_probe_produce_latency_seconds";
    /// End-to-end latency histogram (aggregatable).
    pub const E2E_DISTRIBUTION: &str = "slo_probe_e2e_latency_distribution_seconds";
    /// ok / all final outcomes over the window.
    pub const AVAILABILITY: &str = "slo_probe_availability_ratio";
    /// Age of the newest verified record.
    pub const FRESHNESS: &str = "slo_probe_freshness_seconds";
    /// Records awaiting their outcome.
    pub const IN_FLIGHT: &str = "slo_probe_in_flight";
    /// Version, librdkafka, embedded.
    pub const BUILD_INFO: &str = "slo_probe_build_info";
    /// Error budget left over the SLO window.
    pub const ERROR_BUDGET_REMAINING: &str = "slo_probe_error_budget_remaining_ratio";
    /// Burn rate per alerting window.
    pub const BURN_RATE: &str = "slo_probe_burn_rate";
    /// The agent's own delay at each slot.
    pub const SEND_LAG: &str = "slo_probe_send_lag_seconds";
    /// Spans not delivered.
    pub const SPANS_DROPPED: &str = "slo_probe_spans_dropped_total";
    /// Records scheduled per partition.
    pub const PARTITION_RECORDS_SENT: &str = "slo_probe_partition_records_sent_total";
    /// Final outcomes per partition.
    pub const PARTITION_RECORDS: &str = "slo_probe_partition_records_total";
    /// Each partition's leader.
    pub const PARTITION_LEADER: &str = "slo_probe_partition_leader";
    /// Failed sink polls by reason.
    pub const VERIFY_ERRORS: &str = "slo_probe_verify_errors_total";
    /// A sink's poll interval.
    pub const POLL_INTERVAL: &str = "slo_probe_poll_interval_seconds";
    /// Sink polls.
    pub const SINK_POLLS: &str = "slo_probe_sink_polls_total";
    /// Supervised tasks restarted.
    pub const TASK_RESTARTS: &str = "slo_probe_task_restarts_total";
    /// Failed Schema Registry requests by reason.
    pub const REGISTRY_ERRORS: &str = "slo_probe_schema_registry_errors_total";
    /// Each hop's latency quantiles over the window.
    pub const HOP_LATENCY: &str = "slo_probe_hop_latency_seconds";
    /// Records whose hop came out negative (a clock behind).
    pub const CLOCK_SKEW: &str = "slo_probe_clock_skew_total";
    /// How far below zero the most negative hop of the window went.
    pub const CLOCK_SKEW_MAX: &str = "slo_probe_clock_skew_max_seconds";
    /// When a record was last read from a downstream topic a probe verifies on.
    pub const OUTPUT_LAST_READ: &str = "slo_probe_output_last_read_timestamp_seconds";
    /// A Flink job's state (1 for the current one).
    pub const FLINK_JOB_STATE: &str = "slo_probe_flink_job_state";
    /// Whether the newest poll of a job's REST API answered.
    pub const FLINK_JOB_UP: &str = "slo_probe_flink_job_up";
    /// When the job entered its state.
    pub const FLINK_JOB_STATE_SINCE: &str = "slo_probe_flink_job_state_since_timestamp_seconds";
    /// The job's restarts (Flink's numRestarts).
    pub const FLINK_JOB_RESTARTS: &str = "slo_probe_flink_job_restarts";
    /// The job's checkpoints, completed and failed (Flink's counts).
    pub const FLINK_JOB_CHECKPOINTS: &str = "slo_probe_flink_job_checkpoints";
    /// When the newest completed checkpoint was acknowledged.
    pub const FLINK_JOB_LAST_CHECKPOINT: &str =
        "slo_probe_flink_job_last_checkpoint_timestamp_seconds";
    /// How long the newest completed checkpoint took.
    pub const FLINK_JOB_LAST_CHECKPOINT_DURATION: &str =
        "slo_probe_flink_job_last_checkpoint_duration_seconds";
    /// When the job's newest failure happened.
    pub const FLINK_JOB_LAST_EXCEPTION: &str =
        "slo_probe_flink_job_last_exception_timestamp_seconds";
    /// Polls of the job's REST API.
    pub const FLINK_POLLS: &str = "slo_probe_flink_polls_total";
    /// Failed polls of the job's REST API, by reason.
    pub const FLINK_POLL_ERRORS: &str = "slo_probe_flink_poll_errors_total";
    /// Which probe goes through which job (1).
    pub const PROBE_FLINK_JOB: &str = "slo_probe_probe_flink_job_info";

    /// Exported for each job a probe names (`job`).
    pub const FLINK: &[&str] = &[
        FLINK_JOB_STATE,
        FLINK_JOB_UP,
        FLINK_JOB_STATE_SINCE,
        FLINK_JOB_RESTARTS,
        FLINK_JOB_CHECKPOINTS,
        FLINK_JOB_LAST_CHECKPOINT,
        FLINK_JOB_LAST_CHECKPOINT_DURATION,
        FLINK_JOB_LAST_EXCEPTION,
        FLINK_POLLS,
        FLINK_POLL_ERRORS,
        PROBE_FLINK_JOB,
    ];

    /// Names every agent with at least one SLO exports from its first scrape.
    pub const ALL: &[&str] = &[
        RECORDS_SENT,
        RECORDS,
        DUPLICATES,
        REORDERED,
        LATE_ARRIVALS,
        FOREIGN,
        SLO_EVENTS,
        E2E_LATENCY,
        PRODUCE_LATENCY,
        E2E_DISTRIBUTION,
        AVAILABILITY,
        FRESHNESS,
        IN_FLIGHT,
        BUILD_INFO,
        ERROR_BUDGET_REMAINING,
        BURN_RATE,
        SEND_LAG,
        SPANS_DROPPED,
        TASK_RESTARTS,
        HOP_LATENCY,
    ];

    /// Exported only by probes with `per_partition_metrics: true`.
    pub const PER_PARTITION: &[&str] =
        &[PARTITION_RECORDS_SENT, PARTITION_RECORDS, PARTITION_LEADER];

    /// Exported for probes that verify at a sink (`verify: postgres` or `http`).
    pub const SINK: &[&str] = &[VERIFY_ERRORS, POLL_INTERVAL, SINK_POLLS];

    /// Exported for the hops that compare the agent's clock with another machine's (a
    /// downstream topic's timestamps, a sink's): the others cannot come out negative.
    pub const CLOCKS: &[&str] = &[CLOCK_SKEW, CLOCK_SKEW_MAX];

    /// Exported for probes that use a Schema Registry (`record.avro.registry`,
    /// `verify.kafka.format: avro`).
    pub const REGISTRY: &[&str] = &[REGISTRY_ERRORS];
}

/// Buckets of the aggregatable latency histogram, in seconds; SLO thresholds are added.
const BASE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets of the send lag, in seconds: tens of microseconds normally, milliseconds when the
/// agent is short of CPU.
const SEND_LAG_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// The agent's Prometheus registry and the families in it, which `/metrics` renders.
pub struct Metrics {
    registry: Registry,
    build_info: IntGaugeVec,
    consistency: RwLock<()>,
    records_sent: IntCounterVec,
    records: IntCounterVec,
    duplicates: IntCounterVec,
    reordered: IntCounterVec,
    late: IntCounterVec,
    foreign: IntCounterVec,
    slo_events: IntCounterVec,
    e2e: Arc<WindowSummary>,
    produce: Arc<WindowSummary>,
    hop_latency: Arc<WindowSummary>,
    clock_skew: IntCounterVec,
    clock_skew_max: GaugeVec,
    e2e_distribution: HistogramVec,
    availability: GaugeVec,
    freshness: GaugeVec,
    in_flight: IntGaugeVec,
    budget: GaugeVec,
    burn: GaugeVec,
    partition_sent: IntCounterVec,
    partition_records: IntCounterVec,
    partition_leader: IntGaugeVec,
    send_lag: Histogram,
    spans_dropped: IntCounter,
    verify_errors: IntCounterVec,
    poll_interval: GaugeVec,
    sink_polls: IntCounterVec,
    task_restarts: IntCounterVec,
    registry_errors: IntCounterVec,
    output_last_read: GaugeVec,
    jobs: super::jobs::JobFamilies,
}

pub(super) fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    registered(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

pub(super) fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    registered(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// `metric`, once registered with `registry`.
pub(super) fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

impl Metrics {
    /// `site` labels every series (one value per agent, so it adds no cardinality): replicas
    /// at several vantage points stay apart when aggregated. `slo_thresholds` become extra
    /// buckets of the latency distribution so that SLO queries on it are exact at the threshold.
    pub fn new(site: &str, slo_thresholds: impl IntoIterator<Item = Duration>) -> Self {
        let labels = std::collections::HashMap::from([("site".to_string(), site.to_string())]);
        let r = Registry::new_custom(None, Some(labels)).expect("a valid common label");
        let mut buckets: Vec<f64> = BASE_BUCKETS.to_vec();
        buckets.extend(slo_thresholds.into_iter().map(|d| d.as_secs_f64()));
        buckets.sort_by(f64::total_cmp);
        buckets.dedup();
        let e2e_distribution = registered(&r, HistogramVec::new(
            HistogramOpts::new(
                names::E2E_DISTRIBUTION,
                "End-to-end latency of verified records (scheduled send to verification); aggregatable across replicas.",
            )
            .buckets(buckets),
            &["probe"],
        )
        .expect("valid metric"));
        let in_flight = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    names::IN_FLIGHT,
                    "Records sent and awaiting their final outcome.",
                ),
                &["probe"],
            )
            .expect("valid metric"),
        );

        let build_info = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    names::BUILD_INFO,
                    "Build of this agent, and whether it runs on the embedded mock cluster (embedded=\"true\": nothing it reports concerns a real pipeline); always 1.",
                ),
                &["version", "librdkafka", "embedded"],
            )
            .expect("valid metric"),
        );
        let send_lag = registered(&r, Histogram::with_opts(
            HistogramOpts::new(
                names::SEND_LAG,
                "How long after its scheduled slot the agent handed a round to the producer: the agent's own scheduling delay, \
                 included in the end-to-end latency (a high value means a starved agent, not a slow pipeline).",
            )
            .buckets(SEND_LAG_BUCKETS.to_vec()),
        ).expect("valid metric"));
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics registered once");

        let spans_dropped = registered(
            &r,
            IntCounter::new(
                names::SPANS_DROPPED,
                "OTLP spans dropped: the export queue was full or the collector did not accept them. Outcomes and metrics are unaffected.",
            )
            .expect("valid metric"),
        );
        Metrics {
            build_info,
            task_restarts: counter(
                &r,
                names::TASK_RESTARTS,
                "Supervised tasks of a probe (send_loop, discovery, topic_watch, kafka_verifier, sink_poller, schema_registry) that panicked or ended unexpectedly and were restarted.",
                &["probe", "task"],
            ),
            send_lag,
            spans_dropped,
            registry_errors: counter(
                &r,
                names::REGISTRY_ERRORS,
                "Failed Schema Registry requests by reason: unreachable, auth, not_found, http_status. Until a probe's schema id is known its records are not sent (send_failed, reason format).",
                &["probe", "reason"],
            ),
            verify_errors: counter(
                &r,
                names::VERIFY_ERRORS,
                "Failed sink polls by reason: unreachable, auth, query, http_status, invalid_json, timeout. Records keep their deadline.",
                &["probe", "reason"],
            ),
            poll_interval: gauge(
                &r,
                names::POLL_INTERVAL,
                "How often the probe's sink is polled: the resolution of its end-to-end latency.",
                &["probe"],
            ),
            sink_polls: counter(
                &r,
                names::SINK_POLLS,
                "Sink polls (one query or request each, for every pending record of the probe).",
                &["probe"],
            ),
            records_sent: counter(
                &r,
                names::RECORDS_SENT,
                "Synthetic records scheduled, one per partition per slot.",
                &["probe"],
            ),
            records: counter(
                &r,
                names::RECORDS,
                "Records by final outcome: ok, lost, corrupt, send_failed.",
                &["probe", "outcome"],
            ),
            duplicates: counter(
                &r,
                names::DUPLICATES,
                "Verified records seen again.",
                &["probe"],
            ),
            reordered: counter(
                &r,
                names::REORDERED,
                "Records verified after a higher sequence number on the same partition.",
                &["probe"],
            ),
            late: counter(
                &r,
                names::LATE_ARRIVALS,
                "Records that arrived after being declared lost.",
                &["probe"],
            ),
            foreign: counter(
                &r,
                names::FOREIGN,
                "Records on a probe topic that are not valid probe records.",
                &["probe", "reason"],
            ),
            slo_events: counter(
                &r,
                names::SLO_EVENTS,
                "SLO events (final outcomes) judged good or bad per SLO.",
                &["probe", "slo", "result"],
            ),
            e2e: summary(
                &r,
                names::E2E_LATENCY,
                "End-to-end latency over the sliding window (HDR; scheduled send to verification).",
                &["probe"],
            ),
            produce: summary(
                &r,
                names::PRODUCE_LATENCY,
                "Produce latency over the sliding window (HDR; scheduled send to broker acknowledgement).",
                &["probe"],
            ),
            hop_latency: summary(
                &r,
                names::HOP_LATENCY,
                "Each hop of the end-to-end latency over the sliding window (HDR, same records and window as end to end): \
                 produce (to the acknowledgement), pipeline (to the downstream record's timestamp), sink (to the row's timestamp \
                 or the poll that found it), read (to the verification). Hops negative within their timestamps' resolution count as zero; \
                 beyond it (clock skew) they are left out and counted.",
                &["probe", "hop"],
            ),
            clock_skew: counter(
                &r,
                names::CLOCK_SKEW,
                "Verified records whose hop came out negative beyond the resolution of the timestamp that ends it (the clocks of two machines disagree): left out of that hop's quantiles.",
                &["probe", "hop"],
            ),
            clock_skew_max: gauge(
                &r,
                names::CLOCK_SKEW_MAX,
                "How far below zero the most negative hop of the sliding window went (0 when none did): at least this much clock skew.",
                &["probe", "hop"],
            ),
            e2e_distribution,
            availability: gauge(
                &r,
                names::AVAILABILITY,
                "ok / all final outcomes over the sliding window.",
                &["probe"],
            ),
            freshness: gauge(
                &r,
                names::FRESHNESS,
                "Age of the newest verified record (since its scheduled send); since start when none yet.",
                &["probe"],
            ),
            in_flight,
            budget: gauge(
                &r,
                names::ERROR_BUDGET_REMAINING,
                "Share of the SLO's error budget left over its window (in-agent, since start at most; Prometheus rules are authoritative).",
                &["probe", "slo"],
            ),
            burn: gauge(
                &r,
                names::BURN_RATE,
                "Rate at which the SLO's error budget is spent over the window (1 = exactly the budget).",
                &["probe", "slo", "window"],
            ),
            partition_sent: counter(
                &r,
                names::PARTITION_RECORDS_SENT,
                "Records scheduled per partition (per_partition_metrics).",
                &["probe", "partition"],
            ),
            partition_records: counter(
                &r,
                names::PARTITION_RECORDS,
                "Final outcomes per partition (per_partition_metrics).",
                &["probe", "partition", "outcome"],
            ),
            partition_leader: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(names::PARTITION_LEADER, "Broker id leading the partition at the last metadata refresh (per_partition_metrics)."),
                    &["probe", "partition"],
                )
                .expect("valid metric"),
            ),
            output_last_read: gauge(
                &r,
                names::OUTPUT_LAST_READ,
                "When the verifier last read a record (any) from the downstream topic the probe verifies on (Unix seconds): where the job's output stands.",
                &["probe"],
            ),
            jobs: super::jobs::JobFamilies::new(&r),
            registry: r,
            consistency: RwLock::new(()),
        }
    }

    /// The families of the job pollers' series.
    pub fn jobs(&self) -> &super::jobs::JobFamilies {
        &self.jobs
    }

    /// The series of a probe's downstream topic's progress (NaN until a record is read).
    pub fn output_last_read(&self, probe: &str) -> Gauge {
        let g = self.output_last_read.with_label_values(&[probe]);
        g.set(f64::NAN);
        g
    }

    /// Handles bound to one probe; every series of the probe exists (at zero) from here on.
    pub fn probe(
        &self,
        probe: &str,
        slos: &[SloConfig],
        per_partition: bool,
        tasks: &[Task],
        hops: &HopPlan,
    ) -> ProbeMetrics {
        let m = ProbeMetrics {
            task_restarts: tasks
                .iter()
                .map(|t| {
                    (
                        *t,
                        self.task_restarts.with_label_values(&[probe, t.as_str()]),
                    )
                })
                .collect(),
            sent: self.records_sent.with_label_values(&[probe]),
            outcomes: Outcome::ALL.map(|o| self.records.with_label_values(&[probe, o.as_str()])),
            duplicates: self.duplicates.with_label_values(&[probe]),
            reordered: self.reordered.with_label_values(&[probe]),
            late: self.late.with_label_values(&[probe]),
            foreign: ForeignReason::ALL
                .map(|r| self.foreign.with_label_values(&[probe, r.as_str()])),
            slo_events: slos
                .iter()
                .map(|s| {
                    let name = s.name.as_str();
                    (
                        self.slo_events.with_label_values(&[probe, name, "good"]),
                        self.slo_events.with_label_values(&[probe, name, "bad"]),
                    )
                })
                .collect(),
            e2e: WindowSeries {
                summary: Arc::clone(&self.e2e),
                labels: vec![probe.to_string()],
            },
            produce: WindowSeries {
                summary: Arc::clone(&self.produce),
                labels: vec![probe.to_string()],
            },
            hops: hops
                .hops()
                .into_iter()
                .map(|h| {
                    let labels = [probe, h.as_str()];
                    HopSeries {
                        hop: h,
                        latency: WindowSeries {
                            summary: Arc::clone(&self.hop_latency),
                            labels: labels.map(String::from).to_vec(),
                        },
                        skew: hops.compares_clocks(h).then(|| SkewSeries {
                            skewed: self.clock_skew.with_label_values(&labels),
                            largest: self.clock_skew_max.with_label_values(&labels),
                        }),
                    }
                })
                .collect(),
            e2e_distribution: self.e2e_distribution.with_label_values(&[probe]),
            availability: self.availability.with_label_values(&[probe]),
            freshness: self.freshness.with_label_values(&[probe]),
            in_flight: self.in_flight.with_label_values(&[probe]),
            budget: slos
                .iter()
                .map(|s| self.budget.with_label_values(&[probe, s.name.as_str()]))
                .collect(),
            burn: slos
                .iter()
                .map(|s| {
                    BURN_WINDOWS
                        .map(|(w, _)| self.burn.with_label_values(&[probe, s.name.as_str(), w]))
                })
                .collect(),
            partitions: per_partition.then(|| PartitionSeries {
                probe: probe.to_string(),
                sent: self.partition_sent.clone(),
                records: self.partition_records.clone(),
                leader: self.partition_leader.clone(),
            }),
        };
        m.e2e.set(WindowValues::default());
        m.produce.set(WindowValues::default());
        for h in &m.hops {
            h.latency.set(WindowValues::default());
            if let Some(skew) = &h.skew {
                skew.largest.set(0.0);
            }
        }
        for g in [&m.availability].into_iter().chain(m.burn.iter().flatten()) {
            g.set(f64::NAN);
        }
        for g in &m.budget {
            g.set(1.0);
        }
        m
    }

    /// Series of a probe that polls a sink every `poll`; every reason exists (at zero) from here.
    pub fn sink(&self, probe: &str, poll: Duration) -> SinkMetrics {
        self.poll_interval
            .with_label_values(&[probe])
            .set(poll.as_secs_f64());
        SinkMetrics {
            polls: self.sink_polls.with_label_values(&[probe]),
            errors: SinkErrorKind::ALL
                .map(|k| self.verify_errors.with_label_values(&[probe, k.as_str()])),
        }
    }

    /// The counters of failed Schema Registry requests of a probe, by reason (all at zero
    /// from here on).
    pub fn registry_errors(&self, probe: &str) -> [IntCounter; 4] {
        RegistryErrorKind::ALL.map(|k| self.registry_errors.with_label_values(&[probe, k.as_str()]))
    }

    /// Says which build runs, and whether on the embedded cluster; set once at start.
    pub fn set_build_info(&self, embedded: bool) {
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        self.build_info.reset();
        self.build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                librdkafka.as_str(),
                if embedded { "true" } else { "false" },
            ])
            .set(1);
    }

    /// The counter of dropped spans, for the span pipeline.
    pub fn spans_dropped(&self) -> IntCounter {
        self.spans_dropped.clone()
    }

    /// A round left `lag` after its slot.
    pub fn observe_send_lag(&self, lag: Duration) {
        self.send_lag.observe(lag.as_secs_f64());
    }

    /// Held (shared) while a group of related series changes.
    pub fn update(&self) -> RwLockReadGuard<'_, ()> {
        self.consistency.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let families = {
            let _exclusive = self.consistency.write().unwrap_or_else(|e| e.into_inner());
            self.registry.gather()
        };
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}

/// Series of one sink poller.
pub struct SinkMetrics {
    pub polls: IntCounter,
    /// Indexed like [`SinkErrorKind::ALL`].
    pub errors: [IntCounter; SinkErrorKind::ALL.len()],
}

impl SinkMetrics {
    pub fn error(&self, kind: SinkErrorKind) -> &IntCounter {
        &self.errors[kind as usize]
    }
}

/// One probe's series.
pub struct ProbeMetrics {
    pub sent: IntCounter,
    /// Indexed like [`Outcome::ALL`].
    pub outcomes: [IntCounter; 4],
    pub duplicates: IntCounter,
    pub reordered: IntCounter,
    pub late: IntCounter,
    /// Indexed like [`ForeignReason::ALL`].
    pub foreign: [IntCounter; ForeignReason::ALL.len()],
    /// (good, bad) per SLO, in the probe's SLO order.
    pub slo_events: Vec<(IntCounter, IntCounter)>,
    /// Indexed like [`crate::stats::QUANTILES`].
    pub e2e: WindowSeries,
    pub produce: WindowSeries,
    /// The hops the probe splits its records into, in order.
    pub hops: Vec<HopSeries>,
    pub e2e_distribution: Histogram,
    pub availability: Gauge,
    pub freshness: Gauge,
    pub in_flight: IntGauge,
    /// Per SLO, in the probe's SLO order.
    pub budget: Vec<Gauge>,
    /// Per SLO, indexed like [`BURN_WINDOWS`].
    pub burn: Vec<[Gauge; 4]>,
    /// Present with `per_partition_metrics: true`.
    pub partitions: Option<PartitionSeries>,
    /// Restarts of each supervised task the probe depends on.
    pub task_restarts: Vec<(Task, IntCounter)>,
}

/// Per-partition series of one probe; partitions come and go with metadata, so children are
/// looked up by label when used (an opt-in, low-rate path).
pub struct PartitionSeries {
    probe: String,
    sent: IntCounterVec,
    records: IntCounterVec,
    leader: IntGaugeVec,
}

impl PartitionSeries {
    pub fn sent(&self, partition: i32) {
        self.sent
            .with_label_values(&[self.probe.as_str(), &partition.to_string()])
            .inc();
    }

    pub fn outcome(&self, partition: i32, o: Outcome) {
        let p = partition.to_string();
        self.records
            .with_label_values(&[self.probe.as_str(), &p, o.as_str()])
            .inc();
    }

    /// A partition now probed: its series exist (at zero) from here on.
    pub fn add(&self, partition: i32, leader: i32) {
        let p = partition.to_string();
        self.sent.with_label_values(&[self.probe.as_str(), &p]);
        for o in Outcome::ALL {
            self.records
                .with_label_values(&[self.probe.as_str(), &p, o.as_str()]);
        }
        self.leader
            .with_label_values(&[self.probe.as_str(), &p])
            .set(i64::from(leader));
    }
}

impl ProbeMetrics {
    pub fn outcome(&self, o: Outcome) -> &IntCounter {
        &self.outcomes[Outcome::ALL
            .iter()
            .position(|x| *x == o)
            .expect("every outcome listed")]
    }

    pub fn foreign(&self, r: ForeignReason) -> &IntCounter {
        &self.foreign[ForeignReason::ALL
            .iter()
            .position(|x| *x == r)
            .expect("every reason listed")]
    }
}

/// One series of a windowed summary.
pub struct WindowSeries {
    summary: Arc<WindowSummary>,
    /// Its label values: the probe (and the hop).
    labels: Vec<String>,
}

impl WindowSeries {
    pub fn set(&self, v: WindowValues) {
        self.summary.set(&self.labels, v);
    }
}

/// The series of one hop of a probe.
pub struct HopSeries {
    pub hop: Hop,
    pub latency: WindowSeries,
    /// For a hop that compares clocks ([`HopPlan::compares_clocks`]).
    pub skew: Option<SkewSeries>,
}

/// The clock skew of one hop.
pub struct SkewSeries {
    /// Verified records whose hop came out negative beyond its resolution.
    pub skewed: IntCounter,
    /// How far below zero the window's most negative hop went, seconds.
    pub largest: Gauge,
}

fn summary(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Arc<WindowSummary> {
    let s = WindowSummary::new(name, help, labels);
    registry
        .register(Box::new(Registered(Arc::clone(&s))))
        .expect("metric registered once");
    s
}
