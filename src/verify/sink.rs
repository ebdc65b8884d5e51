//! The sink poller: looks up every pending record of a probe at the end of the pipeline (a
//! database table, a search index) with one query per poll, and settles what it finds.
//!
//! Timing: a record is looked for as soon as the broker acknowledged it (it cannot be in the sink
//! earlier), then every `poll` while it is pending. Its latency is from its scheduled send to the
//! start of the poll that found it: the row was there when the query began, so the latency is
//! never more than the real one by the poll's own duration, and at most `poll` less precise.
//! Failed polls back off (2×, 4×, 8×... `poll`, up to a third of the probe's timeout, at most 30 s);
//! records keep their deadlines, so a sink that stays down makes them `lost`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::http::HttpSink;
use super::postgres::PostgresSink;
use crate::config::Verify;
use crate::outcome::Stamps;
pub use crate::outcome::{SinkError, SinkErrorKind};

use crate::probe::Probe;

/// Longest pause between polls of a failing sink.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A record found in the sink: its id, the row or document its content is checked on, and the
/// timestamps it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The record id.
    pub id: Uuid,
    /// The row or document it was found as (what `expect` is checked against).
    pub doc: serde_json::Value,
    /// The job's and the sink's timestamps, where the probe names them (`hop_timestamp`,
    /// `timestamp_column`, `timestamp_pointer`): they split the record's latency into hops.
    pub stamps: Stamps,
}

/// A place records end up in, looked up by id.
pub trait Sink: Send {
    /// `postgres` or `http`, for logs and spans.
    fn kind(&self) -> &'static str;

    /// Looks up these records in one query or request. Bounded by the sink's own timeout.
    fn poll(&mut self, ids: &[Uuid]) -> impl Future<Output = Result<Vec<Found>, SinkError>> + Send;
}

/// The sink of a probe's `verify` section: one variant per kind of sink.
pub enum AnySink {
    Postgres(PostgresSink),
    Http(HttpSink),
}

impl AnySink {
    /// The sink `verify` names (`None` for the Kafka verifier, which is pushed records).
    pub fn new(verify: &Verify) -> Option<Result<AnySink, String>> {
        match verify {
            Verify::Kafka(_) => None,
            Verify::Postgres(cfg) => Some(PostgresSink::new(cfg).map(AnySink::Postgres)),
            Verify::Http(cfg) => Some(HttpSink::new(cfg).map(AnySink::Http)),
        }
    }
}

impl Sink for AnySink {
    fn kind(&self) -> &'static str {
        match self {
            AnySink::Postgres(s) => s.kind(),
            AnySink::Http(s) => s.kind(),
        }
    }

    async fn poll(&mut self, ids: &[Uuid]) -> Result<Vec<Found>, SinkError> {
        match self {
            AnySink::Postgres(s) => s.poll(ids).await,
            AnySink::Http(s) => s.poll(ids).await,
        }
    }
}

/// The poller of a probe that verifies at a sink (`None` for the Kafka verifier), as a factory
/// of its task for the supervisor. The first sink is built here, so that a bad setting stops
/// the agent at start; each restart builds a new one (new connections, new pool).
pub fn poller(
    probe: &Arc<Probe>,
    stop: &CancellationToken,
) -> Result<Option<impl FnMut() -> PollerTask + Send + use<>>, String> {
    let (Some(poll), Some(first)) = (
        probe.config.verify.poll(),
        AnySink::new(&probe.config.verify),
    ) else {
        return Ok(None);
    };
    let first = first?;
    if let AnySink::Postgres(pg) = &first
        && pg.downgradable()
    {
        tracing::warn!(
            probe = probe.name(),
            "PostgreSQL sink uses sslmode=prefer (the default): TLS only when the server offers it, which someone on the path can deny, leaving queries, rows and any password the server asks for in clear unencrypted; set sslmode=require in the DSN (or sslmode=disable to say plain text is intended)"
        );
    }
    let mut first = Some(first);
    let (probe, stop) = (Arc::clone(probe), stop.clone());
    Ok(Some(move || {
        let sink = match first.take() {
            Some(sink) => Ok(sink),
            None => AnySink::new(&probe.config.verify)
                .unwrap_or_else(|| Err("the probe no longer verifies at a sink".into())),
        };
        let (probe, stop) = (Arc::clone(&probe), stop.clone());
        Box::pin(async move {
            match sink {
                Ok(sink) => run(sink, probe, poll, stop).await,
                Err(error) => {
                    tracing::error!(probe = probe.name(), %error, "cannot restart the sink poller")
                }
            }
        }) as PollerTask
    }))
}

/// Asks every PostgreSQL sink at once whether its query's answer fits its probe (see
/// `PostgresSink::check`), each bounded by its sink's timeout: a refusal (a column the probe
/// cannot compare, a missing one) is returned with the probe's name, so that the agent does
/// not start with a configuration mistake it would otherwise report record by record. A sink
/// that cannot be asked now (unreachable, credentials) is only logged: its poller keeps asking
/// at every poll, and refuses the query there if it must.
pub async fn check_all(probes: &[Arc<Probe>]) -> Result<(), (String, String)> {
    let mut checks = tokio::task::JoinSet::new();
    for probe in probes {
        let crate::config::Verify::Postgres(cfg) = &probe.config.verify else {
            continue;
        };
        let (name, sink) = (probe.name().to_string(), PostgresSink::new(cfg));
        checks.spawn(async move {
            let result = match sink {
                Ok(sink) => sink.check().await,
                // Built again by the poller, which reports it.
                Err(_) => Ok(()),
            };
            (name, result)
        });
    }
    let mut refused = Vec::new();
    while let Some(done) = checks.join_next().await {
        let (probe, result) = done.expect("a sink check does not panic");
        match result {
            Err(e) if e.kind == SinkErrorKind::Refused => refused.push((probe, e.message)),
            Err(e) => tracing::warn!(
                probe,
                reason = e.kind.as_str(),
                error = %e.message,
                "cannot check the sink's query at start; the poller checks it at every poll"
            ),
            Ok(()) => {}
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    // Every refusal at once, by probe name.
    refused.sort();
    let names: Vec<&str> = refused.iter().map(|(p, _)| p.as_str()).collect();
    let why: Vec<&str> = refused.iter().map(|(_, m)| m.as_str()).collect();
    Err((names.join(", "), why.join("; ")))
}

/// One run of a sink poller.
pub type PollerTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls `sink` for `probe`'s pending records until `stop`.
pub async fn run<S: Sink>(mut sink: S, probe: Arc<Probe>, poll: Duration, stop: CancellationToken) {
    let max_backoff = (probe.config.timeout / 3).clamp(poll, MAX_BACKOFF.max(poll));
    let mut failures: u32 = 0;
    loop {
        let ids = probe.pending_ids();
        if ids.is_empty() {
            tokio::select! {
                _ = probe.acknowledged() => continue,
                _ = stop.cancelled() => return,
            }
        }
        let started = Instant::now();
        match sink.poll(&ids).await {
            Ok(found) => {
                // A row written while the query ran may be in its answer: found up to this
                // long after the poll began.
                let found_within = started.elapsed();
                probe.sink_polled(sink.kind(), ids.len(), Ok(()), failures);
                failures = 0;
                // Found by one poll, they were there together: settled in the order they were
                // sent (UUID v7 ids sort by the time they were minted), so that the order the
                // sink answers in never counts as reordering.
                let mut found = found;
                found.sort_by_key(|f| f.id);
                for mut f in found {
                    f.stamps.found_within = found_within;
                    probe.found(&f.id, started, &f.doc, &f.stamps);
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                probe.sink_polled(sink.kind(), ids.len(), Err(&e), failures);
            }
        }
        let wait = backoff(poll, failures, max_backoff);
        tokio::select! {
            _ = tokio::time::sleep_until(started + wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The pause after a poll: `poll`, doubled per consecutive failure up to `max`.
fn backoff(poll: Duration, failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return poll;
    }
    poll.saturating_mul(1 << failures.min(16))
        .min(max)
        .max(poll)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::export::metrics::Metrics;
    use crate::kafka::Deliveries;
    use crate::outcome::Outcome;
    use crate::record;

    /// A sink where each record appears at a given instant; the first `failures` polls fail.
    struct Fake {
        appears: Arc<Mutex<HashMap<Uuid, Instant>>>,
        /// (when, how many ids) of every poll.
        polls: Arc<Mutex<Vec<(Duration, usize)>>>,
        failures: u32,
        t0: Instant,
    }

    impl Sink for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }

        async fn poll(&mut self, ids: &[Uuid]) -> Result<Vec<Found>, SinkError> {
            let now = Instant::now();
            self.polls.lock().unwrap().push((now - self.t0, ids.len()));
            if self.failures > 0 {
                self.failures -= 1;
                return Err(SinkError::new(SinkErrorKind::Unreachable, "refused"));
            }
            let appears = self.appears.lock().unwrap();
            Ok(ids
                .iter()
                .filter(|id| appears.get(id).is_some_and(|at| *at <= now))
                .map(|id| Found {
                    id: *id,
                    doc: serde_json::json!({}),
                    stamps: Stamps::default(),
                })
                .collect())
        }
    }

    struct Setup {
        probe: Arc<Probe>,
        metrics: Arc<Metrics>,
        polls: Arc<Mutex<Vec<(Duration, usize)>>>,
        t0: Instant,
        stop: CancellationToken,
    }

    /// A probe (3 records sent at t0, acknowledged 5 ms later, in the sink at `appear`) and its
    /// poller, polling every second.
    async fn setup(timeout: &str, appear: Duration, failures: u32) -> Setup {
        let yaml = format!(
            "name: sink\ninterval: 10s\ntimeout: {timeout}\nverify:\n  http: {{ url: \"http://s/{{ids}}\", poll: 1s }}\n"
        );
        let (probe, metrics) = crate::testing::observed(&yaml);
        let probe = Arc::new(probe);
        let t0 = Instant::now();
        let records: Vec<_> = (0..3)
            .map(|p| record::build(&probe.origin, p, 0, 0, &probe.config.tags, 16, true))
            .collect();
        let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
        probe.register(0, t0, records);
        let appears = Arc::new(Mutex::new(
            ids.iter().map(|id| (*id, t0 + appear)).collect(),
        ));
        let polls = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            appears,
            polls: Arc::clone(&polls),
            failures,
            t0,
        };
        let stop = CancellationToken::new();
        tokio::spawn(run(
            fake,
            Arc::clone(&probe),
            Duration::from_secs(1),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(5)).await;
        for (offset, id) in ids.iter().enumerate() {
            probe.delivered(id, Instant::now(), Ok(offset as i64));
        }
        Setup {
            probe,
            metrics,
            polls,
            t0,
            stop,
        }
    }

    impl Setup {
        /// Once every record settled: each poll's (ms after t0, ids asked for).
        async fn settled(&self) -> Vec<(u128, usize)> {
            let mut progress = self.probe.progress();
            progress
                .wait_for(|p| p.counts.in_flight == 0)
                .await
                .unwrap();
            ms(&self.polls.lock().unwrap())
        }
    }

    fn ms(v: &[(Duration, usize)]) -> Vec<(u128, usize)> {
        v.iter().map(|(d, n)| (d.as_millis(), *n)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn polls_at_the_acknowledgement_then_every_interval_one_query_for_all() {
        let s = setup("30s", Duration::from_millis(2500), 0).await;
        // idle until the broker acknowledged the records, then at once, then every second
        assert_eq!(s.settled().await, [(5, 3), (1005, 3), (2005, 3), (3005, 3)]);
        let snap = s.probe.snapshot(Instant::now());
        assert_eq!(snap.progress.counts.get(Outcome::Ok), 3);
        // latency: scheduled send to the start of the poll that found them
        let latencies: Vec<_> = snap.last.iter().map(|n| n.latency).collect();
        assert_eq!(latencies, [Some(Duration::from_millis(3005)); 3]);
        assert_eq!(Instant::now() - s.t0, Duration::from_millis(3005));
        // nothing pending: the poller waits for the next acknowledgement, not the clock
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(s.polls.lock().unwrap().len(), 4);
        s.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_sink_is_polled_with_backoff_and_counted() {
        // timeout 30s: backoff 2s, 4s, 8s, then found
        let s = setup("30s", Duration::from_millis(100), 3).await;
        assert_eq!(
            s.settled().await,
            [(5, 3), (2005, 3), (6005, 3), (14005, 3)]
        );
        let m = s.metrics.render();
        assert!(
            m.contains("slo_probe_verify_errors_total{probe=\"sink\",reason=\"unreachable\",site=\"default\"} 3"),
            "{m}"
        );
        assert!(m.contains(
            "slo_probe_verify_errors_total{probe=\"sink\",reason=\"timeout\",site=\"default\"} 0"
        ));
        assert!(m.contains("slo_probe_sink_polls_total{probe=\"sink\",site=\"default\"} 4"));
        assert!(m.contains("slo_probe_poll_interval_seconds{probe=\"sink\",site=\"default\"} 1"));
        let sink = s.probe.snapshot(Instant::now()).sink.unwrap();
        assert_eq!((sink.polls, sink.errors), (4, 3));
        assert_eq!(sink.last_error.as_deref(), Some("unreachable: refused"));
        s.stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn records_still_end_lost_when_the_sink_stays_down() {
        let s = setup("6s", Duration::ZERO, u32::MAX).await;
        // the probe's deadlines are settled by its send loop; here by hand at the deadline
        tokio::time::sleep(Duration::from_secs(6)).await;
        s.probe.expire(Instant::now());
        let c = s.probe.progress().borrow().counts;
        assert_eq!((c.get(Outcome::Lost), c.in_flight), (3, 0));
        // backoff capped at a third of the timeout: 2s, 2s, ...
        assert_eq!(ms(&s.polls.lock().unwrap()), [(5, 3), (2005, 3), (4005, 3)]);
        s.stop.cancel();
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let p = Duration::from_millis(500);
        let max = Duration::from_secs(5);
        let got: Vec<u128> = (0..8).map(|n| backoff(p, n, max).as_millis()).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000]);
        assert_eq!(backoff(p, u32::MAX, max), max);
        // a poll slower than the bound is never shortened
        assert_eq!(
            backoff(Duration::from_secs(9), 3, max),
            Duration::from_secs(9)
        );
    }
}
