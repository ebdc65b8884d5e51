//! The probe's unit tests: memory under outage, freshness, budgets, event order, job state.

use super::*;
use crate::testing::{arrive, recorded, round};

#[tokio::test(start_paused = true)]
async fn an_hour_of_broker_outage_keeps_memory_flat() {
    let (p, recording) = recorded("name: outage\ninterval: 1s\ntimeout: 30s\nmax_in_flight: 40\n");
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
