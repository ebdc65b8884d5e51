//! The smoke verdict in each of its formats: JSON, the text tables, JUnit XML (the HTML
//! report is [`super::html`]).

use std::fmt::Write as _;
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};

use super::{EMBEDDED_NOTICE, ProbeVerdict, RunResult, Verdict, ms, round4};

impl Verdict {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("verdict serialises")
    }

    /// The human table: one row per probe, one per SLO, then the reasons for failures.
    pub fn to_text(&self) -> String {
        let mut probes = Table::new();
        probes.load_preset(UTF8_BORDERS_ONLY).set_header([
            "probe",
            "verdict",
            "rounds",
            "sent",
            "ok",
            "lost",
            "corrupt",
            "send_failed",
            "dup",
            "reord",
            "late",
            "foreign",
            "p50",
            "p99",
            "p999",
            "poll",
            "availability",
        ]);
        for p in &self.probes {
            let r = &p.records;
            probes.add_row([
                p.name.clone(),
                self.probe_verdict(p).into(),
                p.rounds.to_string(),
                r.sent.to_string(),
                r.ok.to_string(),
                r.lost.to_string(),
                r.corrupt.to_string(),
                r.send_failed.to_string(),
                p.events.duplicates.to_string(),
                p.events.reordered.to_string(),
                p.events.late_arrivals.to_string(),
                p.events.foreign.to_string(),
                ms(p.latency.p50_ms),
                ms(p.latency.p99_ms),
                ms(p.latency.p999_ms),
                ms(p.poll_interval_ms),
                p.availability_percent
                    .map_or("-".into(), |a| format!("{a}%")),
            ]);
        }
        let mut out = String::new();
        if self.embedded {
            let _ = writeln!(out, "{EMBEDDED_NOTICE}");
        }
        if !self.probes.is_empty() {
            let _ = writeln!(out, "{probes}");
        }
        let mut slos = Table::new();
        slos.load_preset(UTF8_BORDERS_ONLY).set_header([
            "probe",
            "slo",
            "sli",
            "objective",
            "good",
            "bad",
            "good %",
            "budget left",
            "burn",
            "verdict",
        ]);
        let mut any_slo = false;
        for p in &self.probes {
            for s in &p.slos {
                any_slo = true;
                let sli = match s.latency_below_ms {
                    Some(b) => format!("latency < {}", ms(Some(b))),
                    None => s.sli.to_string(),
                };
                slos.add_row([
                    p.name.clone(),
                    s.name.clone(),
                    sli,
                    format!("{}%", s.objective_percent),
                    s.good.to_string(),
                    s.bad.to_string(),
                    s.good_percent.map_or("-".into(), |g| format!("{g}%")),
                    format!("{}%", round4(s.budget_remaining * 100.0)),
                    s.burn_rate.map_or("-".into(), |b| format!("{b}x")),
                    if s.met { "met" } else { "FAILED" }.into(),
                ]);
            }
        }
        if any_slo {
            let _ = writeln!(out, "{slos}");
        }
        if let Some(hops) = self.hops_table() {
            let _ = writeln!(out, "{hops}");
        }
        for p in self.probes.iter().filter(|p| !p.passed) {
            for f in &p.failures {
                let _ = writeln!(out, "FAIL {}: {f}", p.name);
            }
            for e in &p.errors {
                let _ = writeln!(out, "ERROR {}: {e}", p.name);
            }
        }
        // The job of a failing probe, or one that is not known to run.
        for p in &self.probes {
            if let Some(j) = p.why.job.as_ref().filter(|j| !p.passed || !j.running) {
                let _ = writeln!(out, "JOB {}: {}", p.name, j.summary);
            }
        }
        let records: u64 = self.probes.iter().map(|p| p.records.sent).sum();
        let reason = match (&self.reason, self.result) {
            (Some(r), RunResult::CouldNotRun | RunResult::ConfigError) => format!(": {r}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "smoke: {}{} ({} probe{}, {records} records, {:.1}s{})",
            self.result.as_str(),
            reason,
            self.probes.len(),
            if self.probes.len() == 1 { "" } else { "s" },
            self.duration_seconds,
            if self.embedded {
                ", on the embedded cluster"
            } else {
                ""
            }
        );
        out
    }

    /// Where the time went: one row per hop of each probe (`None` without a verified record).
    fn hops_table(&self) -> Option<Table> {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header([
            "probe",
            "hop",
            "ends at",
            "p50",
            "p99",
            "max",
            "quantised",
            "clock skew",
            "largest skew",
        ]);
        let mut any = false;
        for p in &self.probes {
            for h in p
                .hops
                .hops
                .iter()
                .filter(|h| h.latency.count + h.clock_skew > 0)
            {
                any = true;
                table.add_row([
                    p.name.clone(),
                    h.hop.to_string(),
                    h.ends_at.clone(),
                    ms(h.latency.p50_ms),
                    ms(h.latency.p99_ms),
                    ms(h.latency.max_ms),
                    ms(h.quantised_ms),
                    h.clock_skew.to_string(),
                    ms(h.largest_skew_ms),
                ]);
            }
        }
        any.then_some(table)
    }

    /// A probe's verdict in the table.
    fn probe_verdict(&self, p: &ProbeVerdict) -> &'static str {
        match (p.failures.is_empty(), p.errors.is_empty(), self.result) {
            (false, _, _) => "FAIL",
            (true, true, _) => "PASS",
            (true, false, RunResult::Interrupted) => "INTERRUPTED",
            (true, false, _) => "ERROR",
        }
    }

    /// JUnit XML for CI systems: one suite per probe, one case for the records and one per SLO.
    pub fn to_junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
        // The report's name is the first thing a CI system shows: it says how the run ended
        // unless it simply passed or failed, and whether it touched a real pipeline.
        let mut name = "slo-probe smoke".to_string();
        if !matches!(self.result, RunResult::Pass | RunResult::Fail) {
            name = format!("{name}: {}", self.result.as_str());
        }
        if self.embedded {
            name = format!("{name} ({EMBEDDED_NOTICE})");
        }
        let mut report = Report::new(name);
        report.set_time(Duration::from_secs_f64(self.duration_seconds));
        let status = |kind: NonSuccessKind, messages: &[&String]| {
            if messages.is_empty() {
                return TestCaseStatus::success();
            }
            let mut s = TestCaseStatus::non_success(kind);
            let lines: Vec<&str> = messages.iter().map(|f| f.as_str()).collect();
            s.set_message(lines.join("; "));
            s.set_description(lines.join("\n"));
            s
        };
        for p in &self.probes {
            let mut suite = TestSuite::new(p.name.as_str());
            // A probe that could not be fully checked: its records case is an error (not a
            // failure of the pipeline), naming why.
            let errors: Vec<&String> = p.errors.iter().collect();
            let record_failures: Vec<&String> = p
                .failures
                .iter()
                .filter(|f| !f.starts_with("slo "))
                .collect();
            let records = if errors.is_empty() {
                status(NonSuccessKind::Failure, &record_failures)
            } else {
                let all: Vec<&String> = errors.iter().copied().chain(record_failures).collect();
                status(NonSuccessKind::Error, &all)
            };
            let mut records = records;
            if let TestCaseStatus::NonSuccess { description, .. } = &mut records
                && !p.why.failed_records.is_empty()
            {
                // Every failed record kept, one line each, under the sentences.
                let mut text = description.as_deref().unwrap_or_default().to_string();
                for f in &p.why.failed_records {
                    for r in &f.examples {
                        let _ = write!(
                            text,
                            "\n{} {} ({}): record {} partition {} offset {}{}: {}{}",
                            f.outcome,
                            f.reason,
                            r.scheduled_at,
                            r.record_id,
                            r.partition,
                            r.offset.map_or("-".into(), |o| o.to_string()),
                            match (&r.read_topic, r.read_partition, r.read_offset) {
                                (Some(t), Some(p), Some(o)) =>
                                    format!(", read from {t} partition {p} offset {o}"),
                                _ => String::new(),
                            },
                            r.detail,
                            r.job
                                .as_ref()
                                .map_or(String::new(), |j| format!("; while {j}")),
                        );
                    }
                }
                *description = Some(text.into());
            }
            suite.add_test_case(TestCase::new("records", records));
            for s in &p.slos {
                let prefix = format!("slo {} ", s.name);
                let failures: Vec<&String> = p
                    .failures
                    .iter()
                    .filter(|f| f.starts_with(&prefix))
                    .collect();
                suite.add_test_case(TestCase::new(
                    format!("slo {}", s.name),
                    status(NonSuccessKind::Failure, &failures),
                ));
            }
            report.add_test_suite(suite);
        }
        // Nothing ran (the agent could not start, or the configuration was refused): one error
        // case says why, so the report is never empty.
        if self.probes.is_empty() || self.result == RunResult::ConfigError {
            let why = self
                .reason
                .clone()
                .unwrap_or_else(|| "no probe ran".to_string());
            let mut suite = TestSuite::new("slo-probe");
            suite.add_test_case(TestCase::new("run", status(NonSuccessKind::Error, &[&why])));
            report.add_test_suite(suite);
        }
        report.to_string().expect("JUnit report serialises")
    }
}
