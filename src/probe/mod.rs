//! A probe: its configuration, in-flight tracker and measurements, behind one mutex shared by
//! the task that sends its records ([`task`]), the delivery reports, and the verifier that
//! sees them come back. The mutex is never held across an await or around I/O.
//!
//! A probe keeps domain state only. What happens to it is reported to its
//! [`Observer`] as [`Event`]s: counted while the lock is held, so that counters which must agree
//! move together, and reported (log lines, spans) after it.

mod arrival;
mod clock;
mod digest;
mod history;
mod hops;
pub mod job;
mod notable;
pub mod task;
mod tracker;
mod view;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

pub use digest::{Example, Group};

pub use history::{HistoryView, Point};
pub use hops::{HopSnapshot, HopsSnapshot};
pub use job::{JobNow, JobWatch};
pub use notable::{LAST, Noted, SLOWEST};
pub use tracker::{Footprint, Tracker};
pub use view::Snapshot;

use crate::config::{AgentConfig, ProbeConfig};
use crate::kafka;
use crate::outcome::{Counts, Event, Finished, HopPlan, Observer, Outcome, Reason, Task};
use crate::record::{Expected, Origin, Outgoing};
use crate::stats::{Availability, Latency, SloState};

/// What a probe is doing, for `/readyz`, `/status`, smoke progress and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Records and their outcomes so far.
    pub counts: Counts,
    /// Rounds that fell due.
    pub rounds_started: u64,
    /// Rounds whose every record has its outcome.
    pub rounds_completed: u64,
    /// Partitions currently probed (empty until discovered).
    pub partitions: Vec<i32>,
    /// Leader broker of each probed partition at the last metadata refresh.
    pub leaders: BTreeMap<i32, i32>,
    /// Why partitions could not be discovered, while that is the case.
    pub discovery_error: Option<String>,
    /// Why the sink's answer cannot be verified (a column the probe cannot compare, located in
    /// the probe file), while that is the case: the probe sends nothing meanwhile, and the
    /// records in flight wait (their deadlines do not pass) rather than end `lost` for a
    /// configuration mistake.
    pub refused: Option<String>,
    /// Stopped sending, and every record has its final outcome.
    pub finished: bool,
    /// Supervised tasks serving this probe that are down (panicked or ended), with how many
    /// of that kind are down and why the last one died; they are being restarted.
    pub down: BTreeMap<Task, (u32, String)>,
}

struct Core {
    tracker: Tracker,
    e2e: Latency,
    produce: Latency,
    /// Each hop of the probe's records.
    hops: hops::HopStats,
    availability: Availability,
    /// Scheduled send time of the newest verified record.
    newest_verified: Option<Instant>,
    slos: Vec<SloState>,
    notable: notable::Notable,
    /// Every record of a finite run, or the newest ones, for pictures.
    history: history::History,
    /// "probe ready" was reported.
    announced_ready: bool,
    /// A probe that polls a sink: its polls.
    sink: SinkSummary,
    /// Its failed records, grouped by why.
    digest: digest::Digest,
}

/// The events of one call, counted under the lock and reported after it.
type Events<'a> = Vec<Event<'a>>;

/// A record reaching its final outcome, as [`Probe::settle`] takes it.
struct Ending<'a> {
    finished: Finished,
    /// Where it was read back (or looked up for).
    topic: &'a str,
    /// Verified after a higher seq on its partition.
    reordered: bool,
    /// Records still awaiting their outcome after this one.
    in_flight: u64,
}

impl<'a> Ending<'a> {
    /// The only record settling now: the tracker's in-flight count is already its own.
    fn of(finished: Finished, core: &Core, topic: &'a str, reordered: bool) -> Self {
        Ending {
            finished,
            topic,
            reordered,
            in_flight: core.tracker.counts().in_flight,
        }
    }
}

/// A probe: its records in flight, its measurements and its progress, reported to its observer.
pub struct Probe {
    /// What the probe file says.
    pub config: ProbeConfig,
    /// The probe, this agent's instance and its site: written into every record.
    pub origin: Origin,
    /// Cluster the records are read back from; `None` for a probe that polls a sink.
    pub verify_cluster: Option<String>,
    /// The topic records are read back from, or the kind of sink they are looked up in.
    pub verify_topic: String,
    /// Records come back on the topic they were sent to, so on the same partition.
    same_topic: bool,
    /// Records are read back from another topic, whose progress is the output's.
    downstream: bool,
    /// Which timestamps split the probe's records into hops.
    pub hop_plan: HopPlan,
    /// For a probe that polls a sink: woken when the broker acknowledges a record (the
    /// poller's cue).
    acknowledged: Option<tokio::sync::Notify>,
    started: Instant,
    /// Where what happens is reported: metrics, logs and spans (or a recording in tests).
    observer: Arc<dyn Observer>,
    /// Share of records whose traces are sampled.
    sampling_ratio: f64,
    core: Mutex<Core>,
    progress: watch::Sender<Progress>,
    /// Records on the verify topic that are not probe records.
    foreign: AtomicU64,
    /// The job its records go through, when the probe file names one.
    job: Option<Arc<JobWatch>>,
    /// When the verifier last read a record (any record) from the topic it reads back from,
    /// ms since the Unix epoch; 0 before the first.
    output_read_ms: AtomicU64,
}

/// A sink poller's record: polls, failed polls, the last failure.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SinkSummary {
    pub polls: u64,
    pub errors: u64,
    /// The last failure's reason and message (never a credential).
    pub last_error: Option<String>,
}

impl Probe {
    /// A probe reporting to `observer`. `run_totals`: keep histograms of the whole run too (for
    /// a finite run's verdict).
    pub fn new(
        config: ProbeConfig,
        agent: &AgentConfig,
        observer: Arc<dyn Observer>,
        run_totals: bool,
    ) -> Self {
        let now = Instant::now();
        let (verify_cluster, verify_topic) = match config.verify.kafka() {
            Some(k) => (Some(k.cluster.clone()), k.topic.clone()),
            None => (None, config.verify.kind().to_string()),
        };
        let same_topic = config.verifies_own_topic();
        let downstream = config.verifies_downstream();
        let hop_plan = HopPlan::of(&config);
        // Finished ids are remembered long enough to tell duplicates and late arrivals from
        // unknown records: ten timeouts, and at least the sliding window.
        let retention = (config.timeout * 10).max(agent.window);
        let core = Core {
            tracker: Tracker::new(config.timeout, retention, config.max_in_flight),
            e2e: Latency::new(agent.window, now, run_totals),
            produce: Latency::new(agent.window, now, run_totals),
            hops: hops::HopStats::new(
                &hop_plan,
                hops::NamedStamp::of(&config.verify),
                agent.window,
                now,
                run_totals,
            ),
            availability: Availability::new(agent.window, now),
            newest_verified: None,
            announced_ready: false,
            notable: notable::Notable::new(agent.window, now),
            history: history::History::new(run_totals),
            slos: config
                .slos
                .iter()
                .map(|s| SloState::new(s.clone(), now))
                .collect(),
            sink: SinkSummary::default(),
            digest: digest::Digest::default(),
        };
        Probe {
            origin: Origin {
                probe: config.name.clone(),
                instance: agent.instance.clone(),
                site: agent.site.clone(),
            },
            acknowledged: config.verify.sink().map(|_| tokio::sync::Notify::new()),
            config,
            verify_cluster,
            verify_topic,
            same_topic,
            downstream,
            hop_plan,
            started: now,
            observer,
            sampling_ratio: agent.tracing.as_ref().map_or(1.0, |t| t.sampling_ratio),
            core: Mutex::new(core),
            progress: watch::Sender::new(Progress::default()),
            foreign: AtomicU64::new(0),
            job: None,
            output_read_ms: AtomicU64::new(0),
        }
    }

    /// Its records go through the job `watch` follows: a record that is not `ok` carries what
    /// the job was doing while it was in flight.
    pub fn with_job(mut self, watch: Option<Arc<JobWatch>>) -> Self {
        self.job = watch;
        self
    }

    /// The job its records go through, when the probe file names one.
    pub fn job(&self) -> Option<&Arc<JobWatch>> {
        self.job.as_ref()
    }

    /// The verifier read a record (ours or not) from the topic the probe reads back from, at
    /// `at_ms` (ms since the Unix epoch).
    pub(crate) fn output_read(&self, at_ms: u64) {
        if self.downstream {
            self.output_read_ms.fetch_max(at_ms, Ordering::Relaxed);
        }
    }

    /// The probe's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Follows the probe's progress. A `wait_for` closure must only look at the value it is
    /// given: it runs under the channel's read lock, which this probe's own updates need.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `event` (the caller holds the lock) and keeps it to be reported after the lock.
    fn emit<'a>(&self, events: &mut Events<'a>, event: Event<'a>) {
        self.observer.count(&event);
        events.push(event);
    }

    /// Reports the events of a call, after its lock was released.
    fn report(&self, events: Events<'_>) {
        for event in &events {
            self.observer.report(event);
        }
    }

    fn publish<'a>(&self, core: &mut Core, events: &mut Events<'a>) {
        let counts = core.tracker.counts();
        let completed = core.tracker.rounds_completed();
        self.progress.send_if_modified(|p| {
            let changed = p.counts != counts || p.rounds_completed != completed;
            p.counts = counts;
            p.rounds_completed = completed;
            changed
        });
        // Said once, when a round has settled and a record was verified: a round whose records
        // all failed is settled, but the probe is not working.
        let ok = counts.get(Outcome::Ok);
        if !core.announced_ready && completed > 0 && ok > 0 {
            core.announced_ready = true;
            let settled = counts.finished();
            self.emit(events, Event::Ready { ok, settled });
        }
    }

    /// Registers the records of one round; returns those to send. Records over the in-flight
    /// bound are settled at once (`send_failed`, backpressure) and not returned.
    pub(crate) fn register(
        &self,
        round: u64,
        scheduled: Instant,
        records: Vec<Outgoing>,
    ) -> Vec<Outgoing> {
        self.register_round(round, scheduled, records, None)
    }

    /// Counts the records of a round that cannot be sent (`reason`: its topic's partitions are
    /// unknown) as sent and settles them `send_failed` at once.
    pub(crate) fn refuse(
        &self,
        round: u64,
        scheduled: Instant,
        records: Vec<Outgoing>,
        reason: Reason,
    ) {
        let sent = self.register_round(round, scheduled, records, Some(reason));
        debug_assert!(sent.is_empty());
    }

    fn register_round(
        &self,
        round: u64,
        scheduled: Instant,
        records: Vec<Outgoing>,
        unsendable: Option<Reason>,
    ) -> Vec<Outgoing> {
        let mut events = Events::with_capacity(records.len());
        let mut to_send = Vec::with_capacity(records.len());
        {
            let mut core = self.lock();
            let any = !records.is_empty();
            if any {
                core.tracker.round_registering(round);
            }
            for r in records {
                let expected = Expected::of(&r);
                let partition = r.body.partition;
                // A record that could not be encoded (its schema id is not known yet) counts
                // as sent and fails at once, like a round with no partition to go to.
                let unencodable = r
                    .unsendable
                    .as_ref()
                    .map(|why| Reason::new("format", format!("not sent: {why}")));
                let registered = match unsendable.as_ref().or(unencodable.as_ref()) {
                    None => core.tracker.register(expected, scheduled, round),
                    Some(reason) => Err(Box::new(core.tracker.refuse(
                        expected,
                        scheduled,
                        round,
                        reason.clone(),
                    ))),
                };
                // Counted as sent with the in-flight count that includes it, before any
                // outcome it may already have.
                let in_flight = core.tracker.counts().in_flight + u64::from(registered.is_err());
                self.emit(
                    &mut events,
                    Event::Scheduled {
                        partition,
                        in_flight,
                    },
                );
                match registered {
                    Ok(()) => to_send.push(r),
                    Err(f) => {
                        let topic = self.config.topic.as_str();
                        let end = Ending::of(*f, &core, topic, false);
                        self.settle(&mut core, &mut events, scheduled, end);
                    }
                }
            }
            if any {
                core.tracker.round_registered(round);
            }
            // A held round may be sent after later ones fell due.
            self.progress
                .send_modify(|p| p.rounds_started = p.rounds_started.max(round + 1));
            self.publish(&mut core, &mut events);
        }
        self.report(events);
        to_send
    }
}

/// The producer reports each record's delivery to the probe that sent it.
impl kafka::Deliveries for Probe {
    /// The broker's offset, or why the producer gave up.
    fn delivered(&self, id: &Uuid, at: Instant, result: Result<i64, String>) {
        let mut events = Events::new();
        {
            let mut core = self.lock();
            match result {
                Ok(offset) => {
                    if let Some(latency) = core.tracker.ack(id, at, offset) {
                        core.produce.record(at, latency);
                        if let Some(acknowledged) = &self.acknowledged {
                            acknowledged.notify_one();
                        }
                    }
                }
                Err(reason) => {
                    if let Some(f) = core.tracker.send_failed(id, at, reason) {
                        let topic = self.config.topic.as_str();
                        let end = Ending::of(f, &core, topic, false);
                        self.settle(&mut core, &mut events, at, end);
                    }
                }
            }
            self.publish(&mut core, &mut events);
        }
        self.report(events);
    }
}

impl Probe {
    /// Settles every record whose deadline passed (none while the sink's answer is refused:
    /// see [`Progress::refused`]).
    pub(crate) fn expire(&self, now: Instant) {
        let mut events = Events::new();
        {
            let mut core = self.lock();
            if self.progress.borrow().refused.is_some() {
                return;
            }
            let topic = self.config.topic.as_str();
            let expired = core.tracker.expire(now);
            // Counted one by one: each with the in-flight count as of that record, so that
            // a scrape between two of them still adds up.
            let mut still = core.tracker.counts().in_flight + expired.len() as u64;
            for f in expired {
                still -= 1;
                let end = Ending {
                    finished: f,
                    topic,
                    reordered: false,
                    in_flight: still,
                };
                self.settle(&mut core, &mut events, now, end);
            }
            self.publish(&mut core, &mut events);
        }
        self.report(events);
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lock().tracker.next_deadline()
    }

    /// Records awaiting their outcome.
    pub fn in_flight(&self) -> u64 {
        self.lock().tracker.counts().in_flight
    }

    /// Whether the next record's trace is sampled.
    pub(crate) fn sample(&self) -> bool {
        self.sampling_ratio >= 1.0 || fastrand::f64() < self.sampling_ratio
    }

    /// A round left the agent `lag` after its slot.
    pub(crate) fn send_lag(&self, lag: Duration) {
        let event = Event::SendLag { lag };
        self.observer.count(&event);
        self.observer.report(&event);
    }

    /// One final outcome into the measurements (histograms, availability, SLOs, notable
    /// records) and its events. Caller holds the lock.
    fn settle<'a>(&self, core: &mut Core, events: &mut Events<'a>, now: Instant, end: Ending<'a>) {
        let Ending {
            finished: mut f,
            topic,
            reordered,
            in_flight,
        } = end;
        if f.outcome != Outcome::Ok
            && let Some(job) = &self.job
        {
            f.job = job
                .during(f.scheduled_at_ns, f.since_scheduled)
                .map(Arc::new);
        }
        core.digest.record(&f);
        core.availability.record(now, f.outcome);
        core.notable.record(now, &f);
        core.history.record(&f);
        core.hops.record(now, &f);
        if f.outcome == Outcome::Ok
            && let Some(latency) = f.latency
        {
            core.e2e.record(now, latency);
            let scheduled = now - latency;
            if core.newest_verified.is_none_or(|n| scheduled > n) {
                core.newest_verified = Some(scheduled);
            }
        }
        let judged: Vec<Option<bool>> = core
            .slos
            .iter_mut()
            .map(|slo| slo.record(now, f.outcome, f.latency))
            .collect();
        let settled = Event::Settled {
            finished: f,
            in_flight,
            topic,
            reordered,
        };
        self.emit(events, settled);
        for (slo, judgement) in judged.into_iter().enumerate() {
            if let Some(good) = judgement {
                self.emit(events, Event::SloJudged { slo, good });
            }
        }
    }

    /// A supervised task serving this probe panicked or ended (started again after
    /// `restart_in`): reported, and the probe is not ready until it runs again
    /// ([`Probe::task_up`]).
    pub fn task_down(&self, task: Task, why: &str, restart_in: Option<Duration>) {
        let event = Event::TaskDown {
            task,
            why,
            restart_in,
        };
        self.observer.count(&event);
        self.progress.send_modify(|p| {
            let down = p.down.entry(task).or_insert((0, String::new()));
            down.0 += 1;
            down.1 = why.to_string();
        });
        self.observer.report(&event);
    }

    /// A task that was down runs again.
    pub fn task_up(&self, task: Task) {
        let event = Event::TaskUp { task };
        self.observer.count(&event);
        self.progress.send_modify(|p| {
            if let Some(down) = p.down.get_mut(&task) {
                down.0 = down.0.saturating_sub(1);
                if down.0 == 0 {
                    p.down.remove(&task);
                }
            }
        });
        self.observer.report(&event);
    }

    /// Discovery found these partitions (or failed); shown by `/status` and smoke.
    pub(crate) fn set_partitions(&self, result: Result<&kafka::Partitions, String>) {
        if let Ok(leaders) = &result {
            let event = Event::Partitions { leaders };
            self.observer.count(&event);
            self.observer.report(&event);
        }
        self.progress.send_modify(|p| match result {
            Ok(found) => {
                p.partitions = found.keys().copied().collect();
                p.leaders = found.clone();
                p.discovery_error = None;
            }
            Err(e) => p.discovery_error = Some(e),
        });
    }

    /// A Schema Registry request for this probe failed: counted and logged (rate-limited).
    pub fn registry_failed(
        &self,
        reason: crate::outcome::RegistryErrorKind,
        error: &str,
        during: &'static str,
    ) {
        let event = Event::RegistryFailed {
            reason,
            error,
            during,
        };
        self.observer.count(&event);
        self.observer.report(&event);
    }

    pub(crate) fn set_finished(&self) {
        self.progress.send_modify(|p| p.finished = true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arrive, recorded, round};

    #[tokio::test(start_paused = true)]
    async fn an_hour_of_broker_outage_keeps_memory_flat() {
        let (p, recording) =
            recorded("name: outage\ninterval: 1s\ntimeout: 30s\nmax_in_flight: 40\n");
        let parts = [0, 1, 2];
        let mut at_10min = None;
        for slot in 0..3600u64 {
            round(&p, slot, &parts); // nothing is ever acknowledged or read back
            p.expire(Instant::now());
            let c = p.progress().borrow().counts;
            assert!(c.conserved(), "slot {slot}: {c:?}");
            if slot == 600 {
                at_10min = Some(p.snapshot(Instant::now()).footprint);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let f = p.snapshot(Instant::now()).footprint;
        assert_eq!(
            Some(f),
            at_10min,
            "same footprint after 10 minutes and after an hour"
        );
        assert!(f.pending <= 40 && f.deadlines <= 40, "{f:?}");
        // finished ids are kept for max(10 x timeout, window) = 300 s at 3 records/s
        assert!(f.recent <= 3 * 301, "{f:?}");
        let c = p.progress().borrow().counts;
        assert_eq!(c.sent, 10_800);
        assert!(
            c.get(Outcome::SendFailed) > 0,
            "over the bound: backpressure"
        );
        assert_eq!(
            c.sent,
            c.get(Outcome::Lost) + c.get(Outcome::SendFailed) + c.in_flight
        );
        // what the observer was told adds up at every event (checked as it was told), and to
        // the probe's own counts
        let r = recording.get();
        assert_eq!(
            (r.counts.sent, r.counts.outcomes, r.counts.in_flight),
            (c.sent, c.outcomes, c.in_flight)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_shows_a_stuck_consumer_before_anything_is_lost() {
        let (p, recording) = recorded("name: stuck\ninterval: 1s\ntimeout: 60s\n");
        for r in round(&p, 0, &[0]) {
            tokio::time::advance(Duration::from_millis(20)).await;
            arrive(&p, &r);
        }
        tokio::time::advance(Duration::from_millis(980)).await;
        p.refresh_gauges(Instant::now());
        assert_eq!(recording.get().gauges.freshness, Duration::from_secs(1));
        // the consumer stops: records keep coming, none is read back, none is lost yet
        for slot in 1..=20 {
            round(&p, slot, &[0]);
            tokio::time::advance(Duration::from_secs(1)).await;
            p.expire(Instant::now());
        }
        p.refresh_gauges(Instant::now());
        let r = recording.get();
        assert_eq!(r.gauges.freshness, Duration::from_secs(21));
        assert_eq!(r.counts.get(Outcome::Lost), 0);
        assert_eq!(r.counts.in_flight, 20);
        assert_eq!(r.gauges.availability, Some(1.0), "nothing has failed yet");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_and_burn_rate_match_the_hand_computed_example() {
        // objective 99%, 1000 events, 15 bad: budget remaining -0.5, burn rate 1.5
        let (p, recording) = recorded(
            "name: budget\ninterval: 1s\ntimeout: 10s\nslos:\n  - { name: completeness, objective: 99% }\n",
        );
        let parts: Vec<i32> = (0..1000).collect();
        let records = round(&p, 0, &parts);
        for r in &records[15..] {
            arrive(&p, r);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        p.expire(Instant::now());
        p.refresh_gauges(Instant::now());
        let r = recording.get();
        assert_eq!(r.counts.get(Outcome::Lost), 15);
        assert_eq!(r.slo, [(985, 15)], "(good, bad)");
        let slo = r.gauges.slos[0];
        assert!((slo.budget_remaining - -0.5).abs() < 1e-9, "{slo:?}");
        for (w, burn) in ["5m", "30m", "1h", "6h"].iter().zip(slo.burn_rates) {
            let burn = burn.unwrap();
            assert!((burn - 1.5).abs() < 1e-9, "{w}: {burn}");
        }
        let s = &p.snapshot(Instant::now()).slos[0];
        assert!(!s.met());
        // an hour later the 5m and 30m windows are empty, the budget window is not
        tokio::time::advance(Duration::from_secs(3600)).await;
        p.refresh_gauges(Instant::now());
        let slo = recording.get().gauges.slos[0];
        assert_eq!(slo.burn_rates[0], None, "no event in the last 5 minutes");
        assert!((slo.budget_remaining - -0.5).abs() < 1e-9);
    }

    /// A probe naming its job: a lost record carries what the job was doing while it was in
    /// flight, into its outcome and the failure groups; an `ok` one carries nothing, and a
    /// slow one in the snapshot carries it (the job running quietly).
    #[tokio::test(start_paused = true)]
    async fn records_that_fail_carry_the_jobs_state_and_ok_ones_do_not() {
        use crate::outcome::{Checkpoints, JobException, JobState, JobStatus};
        let (p, _) = recorded("name: through\ninterval: 1s\ntimeout: 5s\n");
        let watch = Arc::new(JobWatch::new("enrich", "http://flink:8081 job `enrich`"));
        let p = p.with_job(Some(Arc::clone(&watch)));
        // the test's records are scheduled at 0 ms since the epoch: the polls are there too
        let poll = |state: JobState, failures: &[u64]| {
            Ok(JobStatus {
                id: "a1".into(),
                state,
                since_ms: None,
                restarts: 0,
                exception: failures.first().map(|at| JobException {
                    at_ms: *at,
                    text: "JsonParseException: Unexpected character".into(),
                }),
                failures_at_ms: failures.to_vec(),
                tasks: Some((1, 1)),
                checkpoints: Checkpoints::default(),
            })
        };
        watch.record(0, &poll(JobState::Running, &[]));
        let records = round(&p, 0, &[0, 1]);
        arrive(&p, &records[0]);
        watch.record(1, &poll(JobState::Restarting, &[1]));
        tokio::time::advance(Duration::from_secs(5)).await;
        p.expire(Instant::now());
        let s = p.snapshot(Instant::now());
        let (ok, lost): (Vec<_>, Vec<_>) = s.last.iter().partition(|n| n.outcome == Outcome::Ok);
        assert_eq!((ok.len(), lost.len()), (1, 1));
        assert_eq!(ok[0].job, None, "an ok record carries nothing");
        let j = lost[0]
            .job
            .as_ref()
            .expect("the lost record says what the job did");
        assert_eq!(j.state, Some(JobState::Restarting));
        assert!(j.to_string().contains("JsonParseException"), "{j}");
        assert_eq!(s.failures.len(), 1);
        assert_eq!(s.failures[0].last_job.as_deref(), Some(j.as_ref()));
        let slow = &s.slowest[0];
        assert!(slow.job.as_ref().is_some_and(|c| c.is_quiet()), "{slow:?}");
        assert_eq!(
            s.job.as_ref().map(|(n, now)| (n.as_str(), now.polls)),
            Some(("enrich", 2))
        );
    }

    /// Counted under the lock, reported after it, in the same order: a settled record's log
    /// line comes after its counter, SLO judgements after the outcome.
    #[tokio::test(start_paused = true)]
    async fn every_event_is_counted_then_reported_in_order() {
        let (p, recording) = recorded(
            "name: order\ninterval: 1s\ntimeout: 5s\nslos:\n  - { name: completeness, objective: 99% }\n",
        );
        let records = round(&p, 0, &[0, 1]);
        arrive(&p, &records[0]);
        arrive(&p, &records[0]); // seen again
        tokio::time::advance(Duration::from_secs(5)).await;
        p.expire(Instant::now());
        let r = recording.get();
        assert_eq!(
            r.reported,
            [
                "scheduled",
                "scheduled", // the round
                "settled",
                "slo",       // the first arrival settles the round's first record
                "duplicate", // the same record again
                "settled",
                "slo",   // the other one is lost at its deadline...
                "ready", // ...which completes the round, one record verified
            ]
        );
        assert_eq!((r.counts.duplicates, r.slo.as_slice()), (1, &[(1, 1)][..]));
    }
}
