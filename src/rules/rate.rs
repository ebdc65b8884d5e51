//! How many SLO events a probe yields, and whether its SLOs mean anything at that rate.
//!
//! A probe's SLO events are its records: one per partition per `interval`. At a low rate an
//! objective leaves a budget of a few records, and the workbook's page (2% of a 30-day budget
//! in an hour) fires on one or two bad records: noise, not an outage. The workbook's answer for
//! low traffic is more synthetic traffic, which is what a probe is; `min_bad_events` is the
//! other lever. `check` and `rules` say both, with the numbers.

use std::time::Duration;

use crate::config::{CreateTopic, Partitions, ProbeConfig, SloConfig};

use super::{CONDITIONS, burn_factor};

/// An SLO whose budget holds fewer records than this per window is coarse: say so.
pub const MIN_BUDGET_RECORDS: f64 = 10.0;
/// A page that fewer bad records in an hour can fire is noise: say so.
pub const MIN_BAD_TO_PAGE: u64 = 3;

/// A probe's rate of records (and so of SLO events).
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    /// Partitions counted.
    pub partitions: usize,
    /// Records (SLO events) per second.
    pub per_second: f64,
    /// What was assumed, when the partition count is not in the probe file.
    pub assumed: Option<String>,
}

/// The rate of `p`: its listed partitions, the partitions `create_topic` makes, or (assumed)
/// one.
pub fn rate(p: &ProbeConfig) -> Rate {
    let (partitions, assumed) = match (&p.partitions, p.create_topic) {
        (Partitions::List(list), _) => (list.len(), None),
        (
            Partitions::All,
            Some(CreateTopic {
                partitions: Some(n),
                ..
            }),
        ) => (usize::try_from(n).unwrap_or(1), None),
        (Partitions::All, _) => (
            1,
            Some("assumed: `partitions: all` does not say how many; list them".to_string()),
        ),
    };
    Rate {
        partitions,
        per_second: partitions as f64 / p.interval.as_secs_f64(),
        assumed,
    }
}

impl Rate {
    /// `0.1 records/s (1 partition every 10s)`, with what was assumed.
    fn describe(&self, interval: Duration) -> String {
        let assumed = self
            .assumed
            .as_deref()
            .map_or(String::new(), |a| format!("; {a}"));
        format!(
            "{} records/s ({} partition{} every {}{assumed})",
            records(self.per_second),
            self.partitions,
            if self.partitions == 1 { "" } else { "s" },
            humantime::format_duration(interval),
        )
    }
}

/// `1 bad record in an hour pages`, `3 bad records in an hour page`.
fn pages(bad: u64) -> String {
    if bad == 1 {
        "1 bad record in an hour pages".into()
    } else {
        format!("{bad} bad records in an hour page")
    }
}

/// What an SLO means at its probe's rate.
#[derive(Debug, Clone, PartialEq)]
pub struct SloRate {
    /// Events in the SLO's window.
    pub events_per_window: f64,
    /// Bad events the objective allows per window.
    pub budget_records: f64,
    /// The fewest bad records in an hour that fire the page alert (with `min_bad_events`).
    pub bad_to_page: u64,
    /// The rate (records per second) at which the SLO would be meaningful.
    pub meaningful_per_second: f64,
}

/// The page alert's fastest condition: its burn factor and long window in seconds.
fn fastest_page(slo: &SloConfig) -> (f64, f64) {
    CONDITIONS
        .iter()
        .filter(|c| c.0 == "page")
        .map(|&(_, share, long, _)| (burn_factor(share, slo.window, long), long))
        .map(|(factor, long)| (factor, super::seconds(long)))
        .min_by(|a, b| (a.0 * a.1).total_cmp(&(b.0 * b.1)))
        .expect("a page condition")
}

/// `slo` at `rate`.
pub fn analyse(rate: &Rate, slo: &SloConfig) -> SloRate {
    let allowed = 1.0 - slo.objective;
    let (factor, long) = fastest_page(slo);
    // The page fires when the long window's error ratio is above factor * allowed: more than
    // that share of the window's events, so the next whole record.
    let share = factor * allowed;
    let in_long = share * rate.per_second * long;
    let bad_in_long = in_long.floor() as u64 + 1;
    let bad_to_page = bad_in_long.max(slo.min_bad_events.unwrap_or(0));
    let window = slo.window.as_secs_f64();
    // Enough records that the budget holds MIN_BUDGET_RECORDS and a page needs MIN_BAD_TO_PAGE.
    let for_budget = MIN_BUDGET_RECORDS / (allowed * window);
    let for_page = (MIN_BAD_TO_PAGE - 1) as f64 / (share * long);
    SloRate {
        events_per_window: rate.per_second * window,
        budget_records: allowed * rate.per_second * window,
        bad_to_page,
        meaningful_per_second: for_budget.max(for_page),
    }
}

/// A number of records without float noise.
fn records(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        let r = (x * 10.0).round() / 10.0;
        format!("{r}")
    }
}

/// Warnings for the SLOs of `probes` that mean little at their probe's rate, each naming the
/// probe's file: the budget in records per window, the bad records in an hour that page, and
/// the interval or partition count that would make the SLI meaningful.
pub fn warnings(probes: &[ProbeConfig]) -> Vec<String> {
    let mut out = Vec::new();
    for p in probes {
        let r = rate(p);
        for slo in &p.slos {
            let a = analyse(&r, slo);
            let coarse = a.budget_records < MIN_BUDGET_RECORDS;
            let noisy = a.bad_to_page < MIN_BAD_TO_PAGE;
            if !coarse && !noisy {
                continue;
            }
            let window = super::prometheus_duration(slo.window);
            let objective = crate::config::plain_number(slo.objective * 100.0);
            let interval = suggest_interval(r.partitions, a.meaningful_per_second);
            let partitions = (a.meaningful_per_second * p.interval.as_secs_f64()).ceil() as u64;
            let mut why = Vec::new();
            if coarse {
                why.push(format!(
                    "its budget is {} bad records per {window}",
                    records(a.budget_records)
                ));
            }
            if noisy {
                why.push(pages(a.bad_to_page));
            }
            out.push(format!(
                "{}: warning: probe {}, slo {} ({objective}% over {window}): at {} {}. For a meaningful SLI send at least {} records/s (`interval: {interval}`, or {partitions} partitions at this interval), lower the objective, or set `min_bad_events: {MIN_BAD_TO_PAGE}` on the SLO so that a page needs {MIN_BAD_TO_PAGE} bad records",
                p.origin,
                p.name,
                slo.name,
                r.describe(p.interval),
                why.join(" and "),
                records(a.meaningful_per_second),
            ));
        }
    }
    out
}

/// YAML comment lines giving each probe's event rate and what its SLOs mean at it, for the
/// head of `rules`' output.
pub fn summary(probes: &[ProbeConfig]) -> String {
    let mut out = String::from("# SLO events are records: one per partition per interval.\n");
    for p in probes {
        let r = rate(p);
        out.push_str(&format!("# {}: {}\n", p.name, r.describe(p.interval)));
        for slo in &p.slos {
            let a = analyse(&r, slo);
            out.push_str(&format!(
                "#   {}: a budget of {} bad records per {}; {}{}\n",
                slo.name,
                records(a.budget_records),
                super::prometheus_duration(slo.window),
                pages(a.bad_to_page),
                if slo.min_bad_events.is_some() {
                    " (min_bad_events)"
                } else {
                    ""
                },
            ));
        }
    }
    out
}

/// The longest whole-100ms interval at which `partitions` partitions send `per_second` records,
/// as a probe file writes it (`2s`, `2500ms`).
fn suggest_interval(partitions: usize, per_second: f64) -> String {
    let secs = partitions as f64 / per_second;
    let ms = (secs * 10.0).floor().max(1.0) as u64 * 100;
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sli;

    fn slo(objective: f64, min_bad_events: Option<u64>) -> SloConfig {
        SloConfig {
            name: "completeness".into(),
            sli: Sli::Completeness,
            objective,
            window: Duration::from_secs(30 * 86_400),
            min_bad_events,
        }
    }

    fn at(partitions: usize, interval_s: f64) -> Rate {
        Rate {
            partitions,
            per_second: partitions as f64 / interval_s,
            assumed: None,
        }
    }

    #[test]
    fn the_workbook_numbers_at_low_and_high_rates() {
        // 99.99% over 30 days, one record every 10 s: 259 200 events, a budget of 25.9
        // records, and the 1h page (burn 14.4) fires above 0.144% of 360 records: 1 record.
        let a = analyse(&at(1, 10.0), &slo(0.9999, None));
        assert_eq!(a.events_per_window.round(), 259_200.0);
        assert!((a.budget_records - 25.92).abs() < 1e-6, "{a:?}");
        assert_eq!(a.bad_to_page, 1);
        // Needing 3 bad records for a page takes 2 / (0.00144 * 3600) = 0.386 records/s.
        assert!((a.meaningful_per_second - 0.3858).abs() < 1e-3, "{a:?}");
        assert_eq!(suggest_interval(1, a.meaningful_per_second), "2500ms");
        // min_bad_events raises the bar of the page, not the budget.
        let b = analyse(&at(1, 10.0), &slo(0.9999, Some(3)));
        assert_eq!((b.bad_to_page, b.budget_records), (3, a.budget_records));
        // 99% over 30 days at 10 records/s: 5 185 bad records in an hour page.
        let c = analyse(&at(10, 1.0), &slo(0.99, None));
        assert_eq!(c.bad_to_page, 5185);
    }
}
