//! How long the verifier's consumer lets a broker hold a fetch (`fetch.wait.max.ms`), chosen per
//! cluster so that latency is true on every broker and an idle agent is cheap where it can be.
//!
//! Apache Kafka answers a fetch as soon as data arrives (`fetch.min.bytes=1`): there librdkafka's
//! default wait, 500 ms, costs no latency, and 10 ms would cost up to 100 empty fetches per
//! second per broker when idle. Other brokers (librdkafka's mock cluster, tansu) hold every fetch
//! for the whole wait even when data arrives: there 500 ms would pose as pipeline latency (the
//! mock: p50 258 ms at 500, 6 ms at 10). So:
//!
//! - a `fetch.wait.max.ms` in the cluster's `properties` or `consumer` settings is used as it is,
//!   nothing is detected;
//! - the embedded mock cluster is known to hold fetches: 10 ms;
//! - on any other cluster the verifier starts at 10 ms (latency is true from the first record,
//!   whatever the broker), and [`detect`] runs beside it. It reads the verifier's partitions with
//!   a second consumer waiting up to [`DETECTOR_WAIT`] (1 s), and compares when each consumer
//!   got the same record. A broker that answers when data arrives hands it to both within a few
//!   milliseconds; a holding broker hands it to the 1 s consumer when that consumer's fetch
//!   expires, uniformly 0 to 1 s after the data arrived. [`decide`] turns the lags into
//!   "answers early" (the verifier switches to a consumer waiting [`FETCH_WAIT_LONG`]: an idle
//!   consumer then fetches twice a second) or "holds" (it keeps 10 ms). No decision within
//!   [`DECIDE_WITHIN`], or a detector that cannot run, keeps 10 ms and says why.
//!
//! **Why the detector is started again for every record it compares.** A holding broker hands a
//! record to the 1 s consumer at the end of that consumer's current fetch, so the lag depends on
//! where in the fetch cycle the record arrived. Probe records arrive on a fixed schedule (every
//! `interval`, one per partition in the same instant), and a consumer fetching back to back keeps
//! its phase: with an interval near a multiple of the cycle, every record would land at the same
//! point of it, and one unlucky phase would look "early" every time. So each comparison starts a
//! fresh detector consumer after a random delay, uniform over one wait, and compares the first
//! record the verifier reads at a fixed instant after that delay was drawn (one wait plus
//! [`SETTLE`] later: independent of the draw, and after the new consumer's first fetch began).
//! Each lag is then uniform over the cycle and independent of the others, and the false-positive
//! bound stated at [`decide`] holds whatever the schedule.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::kafka::{self, FETCH_WAIT_LONG, FETCH_WAIT_SHORT};
use crate::verify::kafka::KafkaVerifier;

/// The detector consumer's `fetch.wait.max.ms`: long enough that a holding broker's lag stands
/// out from the verifier's (10 ms, or the broker's own shortest hold) by an order of magnitude.
pub const DETECTOR_WAIT: Duration = Duration::from_secs(1);
/// A record the detector got within this of the verifier was answered when data arrived.
pub const EARLY_WITHIN: Duration = Duration::from_millis(100);
/// Records compared at most before deciding.
pub const SAMPLES: usize = 8;
/// Of [`SAMPLES`], how many must be early for "answers early" (one slow record is forgiven).
pub const EARLY_NEEDED: usize = 7;
/// No decision by then (too few records: a long interval on few partitions; or a detector that
/// keeps failing): the verifier keeps 10 ms. At 10 s intervals on one partition a decision takes
/// about 80 s.
pub const DECIDE_WITHIN: Duration = Duration::from_secs(600);
/// How long a new detector consumer gets to connect, look up the end offsets and start its
/// first fetch before a record it is compared on may arrive.
pub const SETTLE: Duration = Duration::from_secs(1);
/// A record the verifier read that the detector has not got this long after is counted as late
/// (a holding broker hands it over within one wait; this leaves room for a slow answer).
const MISSING_AFTER: Duration = Duration::from_secs(3);
/// Arrivals the detector remembers while it waits for the verifier's (a busy topic is read in
/// full; the compared record is among the newest).
const REMEMBERED: usize = 100_000;

/// How the verifier's `fetch.wait.max.ms` was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// Set in the cluster's `properties` or `consumer` settings: used as it is.
    User,
    /// The embedded mock cluster, which holds every fetch: 10 ms.
    Embedded,
    /// 10 ms while the detector compares records.
    Detecting,
    /// The broker answers fetches when data arrives: raised to 500 ms.
    AnswersEarly,
    /// The broker holds fetches for the whole wait: 10 ms.
    Holds,
    /// No decision (too few records in time, or the detector failed): 10 ms.
    Undecided,
}

/// A cluster's fetch wait: shown per cluster on `/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FetchWaitStatus {
    /// The verifier's consumer's `fetch.wait.max.ms` now (the user's value when they set one).
    pub max_ms: u64,
    /// How it was chosen.
    pub chosen: Choice,
    /// Why: the figures of the decision, or why there is none.
    pub why: String,
}

/// What the detector concluded from the lags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Answers fetches when data arrives: raise the wait.
    AnswersEarly,
    /// Holds fetches for the whole wait: keep 10 ms.
    Holds,
}

/// How much later the detector got a record than the verifier (zero when it got it first), or
/// `None` when it did not get it within [`MISSING_AFTER`].
pub type Lag = Option<Duration>;

fn is_early(lag: &Lag) -> bool {
    lag.is_some_and(|l| l <= EARLY_WITHIN)
}

/// The decision from the lags so far, once it cannot change: "answers early" at
/// [`EARLY_NEEDED`] early records, "holds" once more than `SAMPLES - EARLY_NEEDED` were late.
///
/// On a holding broker each lag is the detector's wait left when the record arrived, uniform
/// over its 1 s cycle and independent of the other lags (see the module comment), minus the
/// verifier's own delay (at most the broker's hold of a 10 ms fetch; tansu's is about 50 ms, and a
/// broker holding a 10 ms fetch for 100 ms would already be a 100 ms error). So a record is
/// "early" there with probability p <= (100 ms + 100 ms) / 1 s = 0.2, and a wrong "answers
/// early" (7 or 8 early of 8) has probability 8 p^7 (1 - p) + p^8 <= 8.4e-5 (1.2e-5 at tansu's
/// p = 0.15). A wrong "holds" on an early broker needs two of eight records delayed 100 ms by
/// the machine (a stalled runtime), and only keeps the 10 ms that is right everywhere.
pub fn decide(lags: &[Lag]) -> Option<Decision> {
    let early = lags.iter().filter(|l| is_early(l)).count();
    let late = lags.len() - early;
    if early >= EARLY_NEEDED {
        Some(Decision::AnswersEarly)
    } else if late > SAMPLES - EARLY_NEEDED {
        Some(Decision::Holds)
    } else {
        None
    }
}

/// The lags in milliseconds, for the log line and `/status`.
fn figures(lags: &[Lag]) -> String {
    let ms: Vec<String> = lags
        .iter()
        .map(|l| match l {
            Some(l) => format!("{}", l.as_millis()),
            None => "none".into(),
        })
        .collect();
    format!("lags {} ms", ms.join(", "))
}

/// What a decision means for the verifier, with its figures.
pub fn decided(decision: Decision, lags: &[Lag]) -> FetchWaitStatus {
    let early = lags.iter().filter(|l| is_early(l)).count();
    let (short, long, detector, within) = (
        FETCH_WAIT_SHORT.as_millis(),
        FETCH_WAIT_LONG.as_millis(),
        DETECTOR_WAIT.as_millis(),
        EARLY_WITHIN.as_millis(),
    );
    match decision {
        Decision::AnswersEarly => FetchWaitStatus {
            max_ms: FETCH_WAIT_LONG.as_millis() as u64,
            chosen: Choice::AnswersEarly,
            why: format!(
                "broker answers fetches when data arrives: {early} of {} records reached a consumer waiting up to {detector} ms within {within} ms of the {short} ms consumer ({}); fetch.wait.max.ms raised to {long} ms",
                lags.len(),
                figures(lags)
            ),
        },
        Decision::Holds => FetchWaitStatus {
            max_ms: FETCH_WAIT_SHORT.as_millis() as u64,
            chosen: Choice::Holds,
            why: format!(
                "broker holds fetches for the whole wait: {} of {} records reached a consumer waiting up to {detector} ms more than {within} ms after the {short} ms consumer ({}); keeping {short} ms",
                lags.len() - early,
                lags.len(),
                figures(lags)
            ),
        },
    }
}

/// No decision: the verifier keeps 10 ms, and says why.
pub fn undecided(lags: &[Lag], why: &str) -> FetchWaitStatus {
    let short = FETCH_WAIT_SHORT.as_millis();
    let compared = if lags.is_empty() {
        "no record compared".to_string()
    } else {
        format!("{} records compared: {}", lags.len(), figures(lags))
    };
    FetchWaitStatus {
        max_ms: short as u64,
        chosen: Choice::Undecided,
        why: format!("{why} ({compared}); keeping {short} ms"),
    }
}

/// Where a cluster's verifier starts: the user's value, the embedded cluster's 10 ms, or 10 ms
/// while detecting.
pub fn initial(cluster: &ClusterConfig, embedded: bool) -> FetchWaitStatus {
    let short = FETCH_WAIT_SHORT.as_millis() as u64;
    if let Some(v) = kafka::user_fetch_wait(cluster) {
        return FetchWaitStatus {
            max_ms: v.trim().parse().unwrap_or(short),
            chosen: Choice::User,
            why: format!(
                "fetch.wait.max.ms={v} set in the cluster's settings: used as it is, nothing detected"
            ),
        };
    }
    if embedded {
        return FetchWaitStatus {
            max_ms: short,
            chosen: Choice::Embedded,
            why: format!(
                "the embedded mock cluster holds every fetch for the whole wait: {short} ms, nothing detected"
            ),
        };
    }
    FetchWaitStatus {
        max_ms: short,
        chosen: Choice::Detecting,
        why: format!(
            "{short} ms while comparing the first records' arrival with a consumer waiting up to {} ms",
            DETECTOR_WAIT.as_millis()
        ),
    }
}

/// A record: (topic, partition, offset).
type Key = (String, i32, i64);

/// The verifier's side of a comparison: the first record it reads, on the detector's
/// partitions, at or after an instant.
#[derive(Default)]
pub(crate) struct Marker {
    /// A mark is waiting for its record (checked for every record read: cheap when not).
    on: AtomicBool,
    mark: Mutex<Option<Mark>>,
    seen: tokio::sync::Notify,
}

struct Mark {
    after: Instant,
    partitions: HashSet<(String, i32)>,
    record: Option<(Key, Instant)>,
}

impl Marker {
    /// The verifier read a record at `at`.
    pub(crate) fn note(&self, topic: &str, partition: i32, offset: i64, at: Instant) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut mark = self.mark.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = mark.as_mut()
            && m.record.is_none()
            && at >= m.after
            && m.partitions.contains(&(topic.to_string(), partition))
        {
            m.record = Some(((topic.to_string(), partition, offset), at));
            self.on.store(false, Ordering::Relaxed);
            self.seen.notify_one();
        }
    }

    fn set(&self, after: Instant, partitions: HashSet<(String, i32)>) {
        let mut mark = self.mark.lock().unwrap_or_else(|e| e.into_inner());
        *mark = Some(Mark {
            after,
            partitions,
            record: None,
        });
        self.on.store(true, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.on.store(false, Ordering::Relaxed);
        *self.mark.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The marked record and when the verifier read it.
    async fn record(&self) -> (Key, Instant) {
        loop {
            let found = {
                let mark = self.mark.lock().unwrap_or_else(|e| e.into_inner());
                mark.as_ref().and_then(|m| m.record.clone())
            };
            if let Some(r) = found {
                return r;
            }
            // notify_one keeps a permit: a record noted since the check wakes this at once.
            self.seen.notified().await;
        }
    }
}

/// Compares records until a decision, [`DECIDE_WITHIN`], a detector that cannot run, or `stop`;
/// then tells the verifier (which switches its consumer on "answers early").
pub(crate) async fn detect(verifier: Arc<KafkaVerifier>, stop: CancellationToken) {
    if verifier.fetch_wait().borrow().chosen != Choice::Detecting {
        return;
    }
    let cluster = verifier.cluster().name.clone();
    let mut lags: Vec<Lag> = Vec::new();
    let result = {
        let compare = compare_until_decided(&verifier, &mut lags);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DECIDE_WITHIN) => Err(format!(
                "no decision within {}",
                humantime::format_duration(DECIDE_WITHIN)
            )),
            r = compare => r,
        }
    };
    verifier.marker.clear();
    match result {
        Ok(Decision::AnswersEarly) => {
            verifier.raise_fetch_wait(decided(Decision::AnswersEarly, &lags))
        }
        Ok(Decision::Holds) => {
            let status = decided(Decision::Holds, &lags);
            tracing::info!(cluster, fetch_wait_max_ms = status.max_ms, "{}", status.why);
            verifier.settle_fetch_wait(status);
        }
        Err(why) => {
            let status = undecided(&lags, &why);
            tracing::info!(
                cluster,
                fetch_wait_max_ms = status.max_ms,
                "fetch wait undecided: {}",
                status.why
            );
            verifier.settle_fetch_wait(status);
        }
    }
}

async fn compare_until_decided(
    verifier: &KafkaVerifier,
    lags: &mut Vec<Lag>,
) -> Result<Decision, String> {
    let mut assigned = verifier.assigned_count();
    // Only fails if the verifier is gone, which cannot happen while it is borrowed here.
    let _ = assigned.wait_for(|n| *n > 0).await;
    loop {
        let lag = compare_one(verifier).await?;
        tracing::debug!(cluster = %verifier.cluster().name, lag_ms = lag.map(|l| l.as_millis() as u64), "fetch wait: compared a record");
        lags.push(lag);
        if let Some(d) = decide(lags) {
            return Ok(d);
        }
    }
}

/// One comparison with a fresh detector consumer started at a random point of a wait.
async fn compare_one(verifier: &KafkaVerifier) -> Result<Lag, String> {
    let begun = Instant::now();
    let wait_ms = DETECTOR_WAIT.as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..wait_ms))).await;
    // Fixed before the draw mattered: independent of it (see the module comment).
    let after = begun + DETECTOR_WAIT + SETTLE;
    let (tpl, partitions) = verifier.detector_assignment().await;
    let cluster = verifier.cluster();
    let consumer = kafka::create_consumer(
        cluster,
        verifier.instance(),
        "fetch-wait-detector",
        DETECTOR_WAIT,
    )
    .map_err(|e| format!("the detector consumer could not be created: {e}"))?;
    let consumer = Dropped(Some(consumer));
    let c = consumer.0.as_ref().expect("set until dropped");
    c.incremental_assign(&tpl)
        .map_err(|e| format!("the detector consumer could not be assigned: {e}"))?;
    verifier.marker.set(after, partitions);
    let quiet = crate::util::quiet::Quiet::default();
    let mut got: HashMap<Key, Instant> = HashMap::new();
    let mut marked: Option<(Key, Instant)> = None;
    loop {
        if let Some((key, read)) = &marked
            && let Some(at) = got.get(key)
        {
            return Ok(Some(at.saturating_duration_since(*read)));
        }
        let give_up = marked.as_ref().map(|(_, read)| *read + MISSING_AFTER);
        tokio::select! {
            received = c.recv() => match received {
                Ok(m) => {
                    let at = Instant::now();
                    // Long before the mark's instant it cannot be the marked record.
                    if at + SETTLE >= after && got.len() < REMEMBERED {
                        got.insert((m.topic().to_string(), m.partition(), m.offset()), at);
                    }
                }
                Err(e) => {
                    if quiet.allow(&format!("{:?}", e.rdkafka_error_code())) {
                        tracing::debug!(cluster = %cluster.name, error = %e, "fetch wait detector: consumer error");
                    }
                }
            },
            r = verifier.marker.record(), if marked.is_none() => marked = Some(r),
            _ = tokio::time::sleep_until(give_up.unwrap_or(after)), if give_up.is_some() => return Ok(None),
        }
    }
}

/// A detector consumer, closed on a blocking thread when dropped (closing waits on its broker
/// threads).
struct Dropped(Option<kafka::Consumer>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(c))),
                Err(_) => drop(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::cluster;

    use super::*;

    const MS: fn(u64) -> Lag = |ms| Some(Duration::from_millis(ms));

    #[test]
    fn seven_early_records_of_eight_mean_the_broker_answers_early() {
        let mut lags = vec![MS(2), MS(0), MS(5), MS(1), MS(3), MS(40)];
        assert_eq!(decide(&lags), None, "six early records are not enough");
        lags.push(MS(100));
        assert_eq!(
            decide(&lags),
            Some(Decision::AnswersEarly),
            "100 ms is early"
        );
        // one slow record is forgiven
        let lags = [MS(2), MS(700), MS(1), MS(3), MS(4), MS(0), MS(2), MS(9)];
        assert_eq!(decide(&lags), Some(Decision::AnswersEarly));
        let s = decided(Decision::AnswersEarly, &lags);
        assert_eq!((s.max_ms, s.chosen), (500, Choice::AnswersEarly));
        assert_eq!(
            s.why,
            "broker answers fetches when data arrives: 7 of 8 records reached a consumer waiting up to 1000 ms within 100 ms of the 10 ms consumer (lags 2, 700, 1, 3, 4, 0, 2, 9 ms); fetch.wait.max.ms raised to 500 ms"
        );
    }

    #[test]
    fn two_late_records_mean_the_broker_holds_fetches() {
        assert_eq!(decide(&[MS(640)]), None);
        assert_eq!(decide(&[MS(640), MS(3)]), None);
        let lags = [MS(640), MS(3), MS(101)];
        assert_eq!(decide(&lags), Some(Decision::Holds));
        // a record the detector never got counts as late
        assert_eq!(decide(&[None, MS(1), None]), Some(Decision::Holds));
        let s = decided(Decision::Holds, &lags);
        assert_eq!((s.max_ms, s.chosen), (10, Choice::Holds));
        assert_eq!(
            s.why,
            "broker holds fetches for the whole wait: 2 of 3 records reached a consumer waiting up to 1000 ms more than 100 ms after the 10 ms consumer (lags 640, 3, 101 ms); keeping 10 ms"
        );
    }

    #[test]
    fn too_few_records_in_time_is_no_decision_and_keeps_10_ms() {
        assert_eq!(decide(&[]), None);
        let lags = [MS(1), MS(2), None];
        assert_eq!(decide(&lags), None);
        let s = undecided(&lags, "no decision within 10m");
        assert_eq!((s.max_ms, s.chosen), (10, Choice::Undecided));
        assert_eq!(
            s.why,
            "no decision within 10m (3 records compared: lags 1, 2, none ms); keeping 10 ms"
        );
        let s = undecided(&[], "the detector consumer could not be created: x");
        assert_eq!(
            s.why,
            "the detector consumer could not be created: x (no record compared); keeping 10 ms"
        );
    }

    /// Every decision the rule can reach is final: more records never reverse it.
    #[test]
    fn a_decision_is_reached_within_eight_records_and_never_reversed() {
        for bits in 0u32..(1 << SAMPLES) {
            let lags: Vec<Lag> = (0..SAMPLES)
                .map(|i| if bits & (1 << i) != 0 { MS(1) } else { MS(900) })
                .collect();
            let first = (1..=SAMPLES).find_map(|n| decide(&lags[..n]).map(|d| (n, d)));
            let (n, d) = first.expect("decided within SAMPLES records");
            for m in n..=SAMPLES {
                assert_eq!(decide(&lags[..m]), Some(d), "{lags:?}");
            }
        }
    }

    #[test]
    fn a_wait_the_user_set_wins_and_nothing_is_detected() {
        let s = initial(&cluster(&[], &[("fetch.wait.max.ms", "250")]), false);
        assert_eq!((s.max_ms, s.chosen), (250, Choice::User));
        assert_eq!(
            s.why,
            "fetch.wait.max.ms=250 set in the cluster's settings: used as it is, nothing detected"
        );
        let s = initial(&cluster(&[("fetch.wait.max.ms", "100")], &[]), false);
        assert_eq!((s.max_ms, s.chosen), (100, Choice::User));
        // the consumer's own setting is applied after `properties`
        let c = cluster(
            &[("fetch.wait.max.ms", "100")],
            &[("fetch.wait.max.ms", "300")],
        );
        assert_eq!(
            initial(&c, true).max_ms,
            300,
            "even on the embedded cluster"
        );
        let config = kafka::consumer_config(&c, "i", "consumer", FETCH_WAIT_SHORT);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("300"));
    }

    #[test]
    fn the_embedded_cluster_holds_and_any_other_is_detected() {
        let c = cluster(&[("security.protocol", "SSL")], &[]);
        let s = initial(&c, true);
        assert_eq!((s.max_ms, s.chosen), (10, Choice::Embedded));
        let s = initial(&c, false);
        assert_eq!((s.max_ms, s.chosen), (10, Choice::Detecting));
        let config = kafka::consumer_config(&c, "i", "consumer", FETCH_WAIT_SHORT);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("10"));
        let config = kafka::consumer_config(&c, "i", "fetch-wait-detector", DETECTOR_WAIT);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("1000"));
        assert_eq!(
            config.get("client.id"),
            Some("slo-probe-i-fetch-wait-detector")
        );
    }
}
