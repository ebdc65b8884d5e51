//! Support for unit tests: probes read from a probe file's text (no agent file: site
//! `default`), with the real export observer or a recording one. Test-only, so it may use
//! every layer.

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::export::metrics::Metrics;
use crate::export::observer::ProbeObserver;
use crate::export::traces::Spans;
use crate::outcome::{Counts, Event, Gauges, Observer};
use crate::probe::Probe;

fn config(yaml: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, yaml).unwrap();
    crate::config::load(&crate::config::Sources {
        agent_file: None,
        probe_paths: vec![file],
    })
    .unwrap()
}

/// The probe of a probe file's text.
pub(crate) fn probe_config(yaml: &str) -> crate::config::ProbeConfig {
    config(yaml).probes.remove(0)
}

/// With the real export observer: its metrics registry (SLO thresholds among the
/// histogram buckets), no span export.
pub(crate) fn observed(yaml: &str) -> (Probe, Arc<Metrics>) {
    let cfg = config(yaml);
    let p = &cfg.probes[0];
    let thresholds = p.slos.iter().filter_map(|s| match s.sli {
        crate::config::Sli::Latency { below } => Some(below),
        _ => None,
    });
    let metrics = Arc::new(Metrics::new(&cfg.agent.site, thresholds));
    let spans = Arc::new(Spans::disabled(metrics.spans_dropped()));
    let origin = crate::record::Origin {
        probe: p.name.clone(),
        instance: cfg.agent.instance.clone(),
        site: cfg.agent.site.clone(),
    };
    let observer = ProbeObserver::new(Arc::clone(&metrics), spans, p, origin);
    let probe = Probe::new(p.clone(), &cfg.agent, Arc::new(observer), true);
    (probe, metrics)
}

/// With the real export observer.
pub(crate) fn from_yaml(yaml: &str) -> Probe {
    observed(yaml).0
}

/// With a [`Recording`] observer.
pub(crate) fn recorded(yaml: &str) -> (Probe, Arc<Recording>) {
    let cfg = config(yaml);
    let recording = Arc::new(Recording::default());
    let observer: Arc<dyn Observer> = Arc::clone(&recording) as _;
    let probe = Probe::new(cfg.probes[0].clone(), &cfg.agent, observer, true);
    (probe, recording)
}

/// An observer that keeps what it was told, and checks on every count that the record
/// counts it was given add up: `sent = ok + lost + corrupt + send_failed + in_flight`.
#[derive(Default)]
pub(crate) struct Recording(Mutex<Recorded>);

/// What a [`Recording`] was told.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorded {
    /// Records, outcomes and events, as the probe reported them.
    pub counts: Counts,
    pub foreign: u64,
    /// (good, bad) per SLO index.
    pub slo: Vec<(u64, u64)>,
    /// The last values over the windows.
    pub gauges: Gauges,
    /// Counted events, reported after the lock, in order (their kind).
    pub reported: Vec<&'static str>,
}

impl Recording {
    pub(crate) fn get(&self) -> Recorded {
        self.0.lock().unwrap().clone()
    }
}

fn kind(e: &Event<'_>) -> &'static str {
    match e {
        Event::Scheduled { .. } => "scheduled",
        Event::Settled { .. } => "settled",
        Event::SloJudged { .. } => "slo",
        Event::Duplicate { .. } => "duplicate",
        Event::Late { .. } => "late",
        Event::Foreign { .. } => "foreign",
        Event::SinkPolled { .. } => "sink_polled",
        Event::Partitions { .. } => "partitions",
        Event::TaskDown { .. } => "task_down",
        Event::TaskUp { .. } => "task_up",
        Event::SendLag { .. } => "send_lag",
        Event::Ready { .. } => "ready",
        Event::RegistryFailed { .. } => "registry_failed",
        Event::TimestampMissing { .. } => "timestamp_missing",
    }
}

impl Observer for Recording {
    fn count(&self, e: &Event<'_>) {
        let mut r = self.0.lock().unwrap();
        match e {
            Event::Scheduled { in_flight, .. } => {
                r.counts.sent += 1;
                r.counts.in_flight = *in_flight;
            }
            Event::Settled {
                finished,
                in_flight,
                reordered,
                ..
            } => {
                r.counts.outcomes[finished.outcome.index()] += 1;
                r.counts.in_flight = *in_flight;
                r.counts.reordered += u64::from(*reordered);
            }
            Event::SloJudged { slo, good } => {
                if r.slo.len() <= *slo {
                    r.slo.resize(slo + 1, (0, 0));
                }
                if *good {
                    r.slo[*slo].0 += 1;
                } else {
                    r.slo[*slo].1 += 1;
                }
            }
            Event::Duplicate { .. } => r.counts.duplicates += 1,
            Event::Late { .. } => r.counts.late += 1,
            Event::Foreign { .. } => r.foreign += 1,
            _ => {}
        }
        assert!(r.counts.conserved(), "conservation: {:?}", r.counts);
    }

    fn report(&self, e: &Event<'_>) {
        self.0.lock().unwrap().reported.push(kind(e));
    }

    fn gauges(&self, g: &Gauges) {
        self.0.lock().unwrap().gauges = g.clone();
    }
}

/// Builds and registers one round of `p` (a record per partition); returns those to send.
pub(crate) fn round(p: &Probe, round: u64, partitions: &[i32]) -> Vec<crate::record::Outgoing> {
    let records = partitions
        .iter()
        .map(|&part| crate::record::build(&p.origin, part, round, 0, &p.config.tags, 16, true))
        .collect();
    p.register(round, tokio::time::Instant::now(), records)
}

/// `r` comes back on `p`'s topic, intact, now.
pub(crate) fn arrive(p: &Probe, r: &crate::record::Outgoing) {
    arrive_with(p, r, &crate::outcome::Stamps::default());
}

/// `r` comes back on `p`'s topic, intact, now, with these timestamps.
pub(crate) fn arrive_with(p: &Probe, r: &crate::record::Outgoing, stamps: &crate::outcome::Stamps) {
    let m = rdkafka::message::OwnedMessage::new(
        Some(r.value.clone()),
        Some(r.key.clone().into_bytes()),
        p.config.topic.clone(),
        rdkafka::Timestamp::NotAvailable,
        r.body.partition,
        0,
        Some(r.headers.clone()),
    );
    let view = crate::record::View::of(&m);
    p.arrived(&view, &r.id, tokio::time::Instant::now(), stamps);
}

/// A record's final outcome for unit tests: partition `seq % 3`, a trace id from `seq`,
/// scheduled `seq` ms after a fixed instant, `latency_ms` when `ok`, a timeout reason otherwise.
pub(crate) fn finished(
    seq: u64,
    outcome: crate::outcome::Outcome,
    latency_ms: u64,
) -> crate::outcome::Finished {
    use std::time::Duration;

    use opentelemetry::trace::{SpanId, TraceId};

    use crate::outcome::{Finished, Outcome, Reason};
    Finished {
        id: uuid::Uuid::now_v7(),
        partition: (seq % 3) as i32,
        seq,
        trace_id: TraceId::from_bytes([(seq % 250) as u8 + 1; 16]),
        span_id: SpanId::from_bytes([7; 8]),
        sampled: true,
        scheduled_at_ns: 1_700_000_000_000_000_000 + seq * 1_000_000,
        acked_after: None,
        since_scheduled: Duration::from_millis(latency_ms),
        offset: Some(seq as i64),
        read: None,
        outcome,
        latency: (outcome == Outcome::Ok).then(|| Duration::from_millis(latency_ms)),
        reason: (outcome != Outcome::Ok).then(|| Reason::new("timeout", "not read back")),
        hops: None,
        job: None,
    }
}

/// A cluster `primary` with these `properties` and `consumer` settings.
pub(crate) fn cluster(
    properties: &[(&str, &str)],
    consumer: &[(&str, &str)],
) -> crate::config::ClusterConfig {
    let map = |kv: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    crate::config::ClusterConfig {
        name: "primary".into(),
        bootstrap_servers: "kafka:9092".into(),
        properties: map(properties),
        producer: Default::default(),
        consumer: map(consumer),
    }
}
