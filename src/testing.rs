//! Support for unit tests: probes read from a probe file's text (no agent file: site
//! `default`), with the real export observer or a recording one. Test-only, so it may use
//! every layer.

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::export::metrics::Metrics;
use crate::export::observer::ProbeObserver;
use crate::export::traces::Spans;
use crate::outcome::{Event, Gauges, Observer};
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
    pub sent: u64,
    /// Indexed like [`crate::outcome::Outcome::ALL`].
    pub outcomes: [u64; 4],
    pub in_flight: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub late: u64,
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
    }
}

impl Observer for Recording {
    fn count(&self, e: &Event<'_>) {
        let mut r = self.0.lock().unwrap();
        match e {
            Event::Scheduled { in_flight, .. } => {
                r.sent += 1;
                r.in_flight = *in_flight;
            }
            Event::Settled {
                finished,
                in_flight,
                reordered,
                ..
            } => {
                r.outcomes[finished.outcome.index()] += 1;
                r.in_flight = *in_flight;
                r.reordered += u64::from(*reordered);
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
            Event::Duplicate { .. } => r.duplicates += 1,
            Event::Late { .. } => r.late += 1,
            Event::Foreign { .. } => r.foreign += 1,
            _ => {}
        }
        let settled: u64 = r.outcomes.iter().sum();
        assert_eq!(r.sent, settled + r.in_flight, "conservation: {r:?}");
    }

    fn report(&self, e: &Event<'_>) {
        self.0.lock().unwrap().reported.push(kind(e));
    }

    fn gauges(&self, g: &Gauges) {
        self.0.lock().unwrap().gauges = g.clone();
    }
}
