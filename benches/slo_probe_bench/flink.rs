//! Through a real Flink job: the enrichment pipeline of `probes/flink/` (Apache Flink 2.0 in a
//! MiniCluster, tansu, PostgreSQL; tests/common/enrichment.rs), run at-least-once and
//! exactly-once side by side on the same input, with its three example probes. What slo-probe
//! reports (its verdict's quantiles, HDR) is set beside what is measured without it: Flink's
//! own timestamps read back by the Java kafka-clients and from the table (the processing time
//! the job writes into each order, its sink's send time, the database's insert time), against
//! each record's scheduled send. Nothing here passes or fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::common::enrichment::{
    Enrichment, INPUT, by_order, extra_copies, hop_ends, iso_ms, probe, utc,
};
use crate::common::flink::{CheckpointMode, FlinkSession, Isolation, JobOptions};
use crate::common::otlp::Collector;
use crate::common::{GUARD, verdict};
use crate::stats::exact;

/// How long and how often.
pub struct Timing {
    pub rounds: u32,
    pub interval: Duration,
    /// Both jobs checkpoint this often; the exactly-once job commits its output then.
    pub checkpoint: Duration,
}

const ALO: &str = "orders-enriched";
const EOS: &str = "orders-enriched-exactly-once";

pub async fn section(t: &Timing) -> String {
    let e = Enrichment::start(&[ALO, EOS], &["orders_sink", "orders_sink_eo"]).await;
    let flink = tokio::task::spawn_blocking(FlinkSession::start)
        .await
        .unwrap();
    let options = |mode| JobOptions {
        checkpoint_interval: Some(t.checkpoint),
        mode,
        extra: utc(),
        ..JobOptions::default()
    };
    let alo = flink.submit(
        "enrich-alo",
        &e.job("enrich-alo", ALO, "at-least-once", "orders_sink"),
        &options(CheckpointMode::AtLeastOnce),
    );
    let eos = flink.submit(
        "enrich-eos",
        &e.job("enrich-eos", EOS, "exactly-once", "orders_sink_eo"),
        &options(CheckpointMode::ExactlyOnce),
    );
    let collector = Collector::default();
    let otlp = collector.http().await;
    let interval = format!("interval: {}", humantime::format_duration(t.interval));
    let timeout = "timeout: 30s";
    let kafka: &[(&str, &str)] = &[("interval: 10s", &interval), ("timeout: 60s", timeout)];
    let table: &[(&str, &str)] = &[
        ("interval: 10s", &interval),
        ("timeout: 60s", timeout),
        ("poll: 1s", "poll: 100ms"),
    ];
    let tree = e.tree(
        Some(&otlp),
        &[
            ("orders-enriched.yaml", kafka),
            ("orders-enriched-exactly-once.yaml", kafka),
            ("orders-warehouse.yaml", table),
        ],
    );
    let (mut smoke, report) = e.smoke(&tree, t.rounds);
    smoke.wait_exit(GUARD);
    let v = verdict(&report);
    let sent = u64::from(t.rounds) * 3;
    collector.wait_spans(2 * 3 * sent as usize).await;
    alo.stop_with_savepoint();
    eos.stop_with_savepoint();
    let ends = hop_ends(&collector);
    let scheduled = scheduled_at(&e).await;

    let mut out = format!(
        "## 9. Through a real Flink job\n\nThe enrichment job of `probes/flink/` (`orders-enrich.sql`: a strict JSON source, a fee \
         added, re-keyed by order id, a Kafka sink and a JDBC upsert) on Apache Flink 2.0 (a MiniCluster, parallelism 1), \
         between tansu and PostgreSQL on this machine, run twice on the same input: at-least-once and exactly-once \
         (`sink.delivery-guarantee`), both checkpointing every {}. Its three example probes, {} rounds x 3 partitions at {} \
         each, in one `slo-probe smoke`. slo-probe's figures are its verdict's (HDR); the independent ones are Flink's own \
         timestamps, read back by the Java kafka-clients and from the table, against each record's scheduled send \
         (`created_at` on the input topic). Milliseconds.\n\n",
        humantime::format_duration(t.checkpoint),
        t.rounds,
        humantime::format_duration(t.interval)
    );

    // At-least-once, on the topic: the hops against the job's own timestamps.
    let p = probe(&v, "orders-enriched");
    let ids = e.sent("orders-enriched", 10).await;
    let output = by_order(&e.dump(ALO, Isolation::ReadCommitted, 10).await, &ids);
    let mut to_job = Vec::new(); // Flink's processing time - scheduled send
    let mut job_send = Vec::new(); // Flink's send time (CreateTime) - its processing time
    let mut mismatch: f64 = 0.0; // |slo-probe's end of the pipeline hop - Flink's time|
    for (id, copies) in &output {
        let (Some(&s), Some(hops)) = (scheduled.get(id), ends.get(id)) else {
            continue;
        };
        let processed = iso_ms(&copies[0]["processed_at"]) as f64;
        to_job.push(processed - s);
        job_send.push(copies[0]["_timestamp"].as_f64().unwrap() - processed);
        if let Some(&end) = hops.get("pipeline") {
            mismatch = mismatch.max((end as f64 / 1e6 - processed).abs());
        }
    }
    let _ = writeln!(
        out,
        "**At-least-once, verified on the output topic** (`orders-enriched`, {} records verified)\n\n\
         | measure | by | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|",
        p["records"]["ok"]
    );
    row(&mut out, "end-to-end", "slo-probe", &p["latency"]);
    for h in ["produce", "pipeline", "read"] {
        row(&mut out, &format!("{h} hop"), "slo-probe", &hop(p, h));
    }
    let produce_pipeline = sum_of_hops(&ends, &scheduled, &ids, &["produce", "pipeline"]);
    exact_row(
        &mut out,
        "scheduled send to the job's processing time",
        "slo-probe (produce + pipeline, per record)",
        produce_pipeline,
    );
    exact_row(
        &mut out,
        "scheduled send to the job's processing time",
        "Flink (`processed_at`)",
        to_job,
    );
    exact_row(
        &mut out,
        "the job's processing time to its Kafka sink's send",
        "Flink (CreateTime - `processed_at`)",
        job_send,
    );
    let _ = writeln!(
        out,
        "\nEvery record's pipeline hop ends at the job's `processed_at` within {mismatch:.3} ms (the largest difference \
         over all records; the timestamps have milliseconds).\n"
    );

    // At-least-once, in the table: the sink hop against the database's clock.
    let p = probe(&v, "orders-warehouse");
    let rows = e
        .db
        .query(
            "select order_id, (extract(epoch from written_at - processed_at) * 1e3)::float8 from orders_sink",
            &[],
        )
        .await
        .unwrap();
    let table_ids = e.sent("orders-warehouse", 11).await;
    let into_table: Vec<f64> = rows
        .iter()
        .filter(|r| table_ids.contains(&r.get::<_, String>(0)))
        .map(|r| r.get(1))
        .collect();
    let _ = writeln!(
        out,
        "**At-least-once, verified in the table** (`orders-warehouse`, JDBC upsert flushed every 200 ms, polled every 100 ms, {} records verified)\n\n\
         | measure | by | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|",
        p["records"]["ok"]
    );
    row(&mut out, "end-to-end", "slo-probe", &p["latency"]);
    for h in ["produce", "pipeline", "sink", "read"] {
        row(&mut out, &format!("{h} hop"), "slo-probe", &hop(p, h));
    }
    exact_row(
        &mut out,
        "the job's processing time to the row's insert",
        "PostgreSQL (`written_at - processed_at`)",
        into_table,
    );
    out += "\n";

    // Side by side: the same orders through the same job, at-least-once and exactly-once.
    let (a, x) = (probe(&v, "orders-enriched"), probe(&v, EOS));
    let eos_ids = e.sent(EOS, 12).await;
    let committed = by_order(&e.dump(EOS, Isolation::ReadCommitted, 12).await, &eos_ids);
    let mut eos_write = Vec::new(); // the job's send into its transaction - scheduled send
    for (id, copies) in &committed {
        if let Some(&s) = scheduled.get(id) {
            eos_write.push(copies[0]["_timestamp"].as_f64().unwrap() - s);
        }
    }
    let alo_write: Vec<f64> = output
        .iter()
        .filter_map(|(id, c)| Some(c[0]["_timestamp"].as_f64()? - scheduled.get(id)?))
        .collect();
    let _ = writeln!(
        out,
        "**At-least-once and exactly-once side by side** (the exactly-once job's records become readable when its \
         transaction commits, at its next checkpoint: `transactional: true` counts that wait in the pipeline hop)\n\n\
         | measure | by | at-least-once p50 | p99 | max | exactly-once p50 | p99 | max |\n|---|---|---|---|---|---|---|---|"
    );
    side_by_side(
        &mut out,
        "end-to-end",
        "slo-probe",
        &a["latency"],
        &x["latency"],
    );
    side_by_side(
        &mut out,
        "pipeline hop",
        "slo-probe",
        &hop(a, "pipeline"),
        &hop(x, "pipeline"),
    );
    let (mut alo_write, mut eos_write) = (alo_write, eos_write);
    alo_write.sort_by(f64::total_cmp);
    eos_write.sort_by(f64::total_cmp);
    let q = |s: &[f64], q: f64| if s.is_empty() { f64::NAN } else { exact(s, q) };
    let _ = writeln!(
        out,
        "| scheduled send to the job's Kafka send | Flink (CreateTime) | {} | {} | {} | {} | {} | {} |",
        crate::ms(q(&alo_write, 0.5)),
        crate::ms(q(&alo_write, 0.99)),
        crate::ms(q(&alo_write, 1.0)),
        crate::ms(q(&eos_write, 0.5)),
        crate::ms(q(&eos_write, 0.99)),
        crate::ms(q(&eos_write, 1.0)),
    );
    let _ = writeln!(
        out,
        "\nDuplicates: at-least-once {} (on the topic, read independently: {}), exactly-once {} (independently: {}); \
         records lost: {} and {}.\n",
        a["events"]["duplicates"],
        extra_copies(&output),
        x["events"]["duplicates"],
        extra_copies(&committed),
        a["records"]["lost"],
        x["records"]["lost"],
    );
    out
}

/// Each record's scheduled send (its `created_at` on the input topic), ms since the epoch, by id.
async fn scheduled_at(e: &Enrichment) -> BTreeMap<String, f64> {
    e.dump(INPUT, Isolation::ReadCommitted, 13)
        .await
        .iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_str(r.value.as_deref()?).ok()?;
            Some((
                v["order_id"].as_str()?.to_string(),
                iso_ms(&v["created_at"]) as f64,
            ))
        })
        .collect()
}

/// The hop `name` of a verdict's probe: its latency summary.
fn hop(p: &Value, name: &str) -> Value {
    p["hops"]["hops"]
        .as_array()
        .and_then(|hops| hops.iter().find(|h| h["hop"] == name))
        .map_or(Value::Null, |h| h["latency"].clone())
}

/// Per record of `ids`, from its spans: the scheduled send to the end of the last of `hops`, ms.
fn sum_of_hops(
    ends: &BTreeMap<String, BTreeMap<String, u64>>,
    scheduled: &BTreeMap<String, f64>,
    ids: &BTreeSet<String>,
    hops: &[&str],
) -> Vec<f64> {
    let last = hops.last().expect("a hop");
    ends.iter()
        .filter(|(id, _)| ids.contains(*id))
        .filter_map(|(id, e)| Some(*e.get(*last)? as f64 / 1e6 - scheduled.get(id)?))
        .collect()
}

fn cell(s: &Value, key: &str) -> String {
    s[key].as_f64().map_or("-".into(), crate::ms)
}

fn row(out: &mut String, what: &str, by: &str, s: &Value) {
    let _ = writeln!(
        out,
        "| {what} | {by} | {} | {} | {} | {} |",
        cell(s, "p50_ms"),
        cell(s, "p90_ms"),
        cell(s, "p99_ms"),
        cell(s, "max_ms")
    );
}

fn exact_row(out: &mut String, what: &str, by: &str, mut samples: Vec<f64>) {
    samples.sort_by(f64::total_cmp);
    if samples.is_empty() {
        let _ = writeln!(out, "| {what} | {by} | - | - | - | - |");
        return;
    }
    let _ = writeln!(
        out,
        "| {what} | {by} | {} | {} | {} | {} |",
        crate::ms(exact(&samples, 0.5)),
        crate::ms(exact(&samples, 0.9)),
        crate::ms(exact(&samples, 0.99)),
        crate::ms(exact(&samples, 1.0))
    );
}

fn side_by_side(out: &mut String, what: &str, by: &str, a: &Value, x: &Value) {
    let _ = writeln!(
        out,
        "| {what} | {by} | {} | {} | {} | {} | {} | {} |",
        cell(a, "p50_ms"),
        cell(a, "p99_ms"),
        cell(a, "max_ms"),
        cell(x, "p50_ms"),
        cell(x, "p99_ms"),
        cell(x, "max_ms")
    );
}
