//! SLO accounting: good/bad events of each SLO over the run, over the SLO's compliance window
//! (error budget) and over the SRE workbook's multiwindow alerting windows (burn rates).
//!
//! State is in memory and starts empty at every agent start, so the in-agent budget covers at
//! most the agent's uptime. Prometheus rules over `slo_probe_slo_events_total` are authoritative
//! across restarts and replicas; these gauges are for a quick look and for `smoke`.

use std::time::Duration;

use tokio::time::Instant;

use super::Sliding;
use crate::config::{Sli, SloConfig};
use crate::outcome::Outcome;

/// Burn-rate windows (label value, length): the SRE workbook's multiwindow, multi-burn-rate
/// alerting pairs 5m/1h and 30m/6h.
pub const BURN_WINDOWS: [(&str, Duration); 4] = [
    ("5m", Duration::from_secs(300)),
    ("30m", Duration::from_secs(1800)),
    ("1h", Duration::from_secs(3600)),
    ("6h", Duration::from_secs(21600)),
];

/// Slots of a burn-rate window: its edges are accurate to 1/30 of its length.
const BURN_SLOTS: usize = 30;
/// Slots of the compliance window (30 days: one per hour).
const BUDGET_SLOTS: usize = 720;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    pub good: u64,
    pub bad: u64,
}

impl Events {
    pub fn total(&self) -> u64 {
        self.good + self.bad
    }

    fn add(&mut self, good: bool) {
        if good {
            self.good += 1;
        } else {
            self.bad += 1;
        }
    }

    fn sum<'a>(it: impl Iterator<Item = &'a Events>) -> Events {
        it.fold(Events::default(), |a, e| Events {
            good: a.good + e.good,
            bad: a.bad + e.bad,
        })
    }
}

/// How fast the error budget is spent: the bad-event ratio divided by the ratio the objective
/// allows. 1 spends exactly the budget over the compliance window. `None` without events.
pub fn burn_rate(e: Events, objective: f64) -> Option<f64> {
    (e.total() > 0).then(|| (e.bad as f64 / e.total() as f64) / (1.0 - objective))
}

/// The share of the error budget left: 1 untouched, 0 spent, negative overspent.
/// With no event nothing is spent.
pub fn budget_remaining(e: Events, objective: f64) -> f64 {
    1.0 - burn_rate(e, objective).unwrap_or(0.0)
}

/// Whether a final outcome is a good event for this SLI; `None` when it does not count.
pub fn classify(sli: Sli, outcome: Outcome, latency: Option<Duration>) -> Option<bool> {
    match (sli, outcome) {
        (Sli::Latency { below }, Outcome::Ok) => Some(latency.is_some_and(|l| l < below)),
        (Sli::Latency { .. } | Sli::Completeness, Outcome::SendFailed) => None,
        (_, Outcome::Ok) => Some(true),
        (_, _) => Some(false),
    }
}

/// One SLO's events: totals since start, the compliance window, the burn-rate windows.
#[derive(Debug)]
pub struct SloState {
    pub slo: SloConfig,
    pub total: Events,
    budget: Sliding<Events>,
    burn: [Sliding<Events>; 4],
}

impl SloState {
    pub fn new(slo: SloConfig, origin: Instant) -> Self {
        SloState {
            budget: Sliding::new(slo.window, BUDGET_SLOTS, origin),
            burn: BURN_WINDOWS.map(|(_, w)| Sliding::new(w, BURN_SLOTS, origin)),
            total: Events::default(),
            slo,
        }
    }

    /// Counts a final outcome; returns whether it was good, or `None` when it does not count.
    pub fn record(
        &mut self,
        now: Instant,
        outcome: Outcome,
        latency: Option<Duration>,
    ) -> Option<bool> {
        let good = classify(self.slo.sli, outcome, latency)?;
        self.total.add(good);
        self.budget.current(now).add(good);
        for w in &mut self.burn {
            w.current(now).add(good);
        }
        Some(good)
    }

    /// Budget left over the compliance window (or the uptime, when shorter).
    pub fn budget_remaining(&self, now: Instant) -> f64 {
        budget_remaining(Events::sum(self.budget.live(now)), self.slo.objective)
    }

    /// Burn rate over each of [`BURN_WINDOWS`].
    pub fn burn_rates(&self, now: Instant) -> [Option<f64>; 4] {
        let objective = self.slo.objective;
        [0, 1, 2, 3].map(|i| burn_rate(Events::sum(self.burn[i].live(now)), objective))
    }

    /// A snapshot for reports.
    pub fn summary(&self, now: Instant) -> SloSummary {
        SloSummary {
            slo: self.slo.clone(),
            total: self.total,
            budget_remaining: self.budget_remaining(now),
            burn_rates: self.burn_rates(now),
            run_burn_rate: burn_rate(self.total, self.slo.objective),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SloSummary {
    pub slo: SloConfig,
    /// Events since the probe started.
    pub total: Events,
    pub budget_remaining: f64,
    pub burn_rates: [Option<f64>; 4],
    /// Burn rate over every event since the probe started (the smoke run).
    pub run_burn_rate: Option<f64>,
}

impl SloSummary {
    /// Good / all; `None` with no event.
    pub fn ratio(&self) -> Option<f64> {
        (self.total.total() > 0).then(|| self.total.good as f64 / self.total.total() as f64)
    }

    /// Met when the good ratio over the run reaches the objective; no event is not met.
    pub fn met(&self) -> bool {
        self.ratio().is_some_and(|r| r >= self.slo.objective)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(objective: f64) -> SloConfig {
        SloConfig {
            name: "completeness".into(),
            sli: Sli::Completeness,
            objective,
            window: Duration::from_secs(30 * 86_400),
            min_bad_events: None,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hand_computed_budget_and_burn() {
        // objective 99%, 1000 events, 15 bad: 1.5% bad against 1% allowed
        let e = Events { good: 985, bad: 15 };
        assert!(close(burn_rate(e, 0.99).unwrap(), 1.5));
        assert!(close(budget_remaining(e, 0.99), -0.5));
        // 99.9%, 10000 events, 5 bad: half the budget
        let e = Events { good: 9995, bad: 5 };
        assert!(close(burn_rate(e, 0.999).unwrap(), 0.5));
        assert!(close(budget_remaining(e, 0.999), 0.5));
        // nothing bad, nothing spent; nothing at all, nothing known
        assert!(close(
            budget_remaining(Events { good: 10, bad: 0 }, 0.99),
            1.0
        ));
        assert_eq!(burn_rate(Events::default(), 0.99), None);
        assert!(close(budget_remaining(Events::default(), 0.99), 1.0));
        // a 14.4x burn (the workbook's page threshold) at 99.9% is 1.44% bad
        let e = Events {
            good: 9856,
            bad: 144,
        };
        assert!(close(burn_rate(e, 0.999).unwrap(), 14.4));
    }

    #[tokio::test(start_paused = true)]
    async fn windows_forget_old_events_at_their_own_pace() {
        let t0 = Instant::now();
        let mut s = SloState::new(slo(0.99), t0);
        for i in 0..1000 {
            let outcome = if i < 15 { Outcome::Lost } else { Outcome::Ok };
            s.record(t0, outcome, None);
        }
        let sent_failed = s.record(t0, Outcome::SendFailed, None);
        assert_eq!(
            sent_failed, None,
            "send failures are not completeness events"
        );
        assert!(close(s.budget_remaining(t0), -0.5));
        assert!(s.burn_rates(t0).iter().all(|b| close(b.unwrap(), 1.5)));

        // 10 minutes on, 1000 clean events: the 5m window sees only those, the others all
        tokio::time::advance(Duration::from_secs(600)).await;
        let now = Instant::now();
        for _ in 0..1000 {
            s.record(now, Outcome::Ok, None);
        }
        let [b5m, b30m, b1h, b6h] = s.burn_rates(now);
        assert!(close(b5m.unwrap(), 0.0));
        for b in [b30m, b1h, b6h] {
            assert!(close(b.unwrap(), 0.75), "{b:?}");
        }
        assert!(close(s.budget_remaining(now), 0.25));

        // 7 hours on: every burn window is empty, the 30-day budget still remembers
        tokio::time::advance(Duration::from_secs(7 * 3600)).await;
        let now = Instant::now();
        assert_eq!(s.burn_rates(now), [None; 4]);
        assert!(close(s.budget_remaining(now), 0.25));
        assert_eq!(
            s.total,
            Events {
                good: 1985,
                bad: 15
            }
        );
    }

    #[test]
    fn classification() {
        use Outcome::*;
        let lat = Sli::Latency {
            below: Duration::from_millis(100),
        };
        let fast = Some(Duration::from_millis(99));
        let slow = Some(Duration::from_millis(100));
        assert_eq!(classify(lat, Ok, fast), Some(true));
        assert_eq!(classify(lat, Ok, slow), Some(false));
        assert_eq!(classify(lat, Lost, None), Some(false));
        assert_eq!(classify(lat, Corrupt, fast), Some(false));
        assert_eq!(classify(lat, SendFailed, None), None);
        assert_eq!(classify(Sli::Completeness, Ok, slow), Some(true));
        assert_eq!(classify(Sli::Completeness, Lost, None), Some(false));
        assert_eq!(classify(Sli::Completeness, SendFailed, None), None);
        assert_eq!(classify(Sli::Availability, SendFailed, None), Some(false));
        assert_eq!(classify(Sli::Availability, Ok, None), Some(true));
    }
}
