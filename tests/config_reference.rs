//! The README's configuration reference, taken at its word: the probe-file block loads as
//! written and every value in it means what its comment says; each field documented with a
//! default means the same written out or left out; each documented alternative spelling loads
//! with its documented meaning. A field added to the reference without a check here fails the
//! test, so the documentation cannot drift from the parser.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Tree, run};
use slo_probe::config::{self, Partitions, ProbeConfig, Sli, Sources, Verify};

const README: &str = include_str!("../README.md");

/// The first ```yaml block after `heading`.
fn block(heading: &str) -> String {
    let at = README
        .find(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}`"));
    let rest = &README[at..];
    let start = rest.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = rest[start..].find("```").expect("the block ends");
    rest[start..start + end].to_string()
}

/// Top-level keys of a YAML block, each with its line (continuation and nested lines belong
/// to the key above them).
fn top_level(block: &str) -> Vec<(String, Vec<String>)> {
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        let top = !line.starts_with(' ') && !line.starts_with('#') && line.contains(':');
        if top {
            let key = line.split(':').next().unwrap().to_string();
            keys.push((key, vec![line.to_string()]));
        } else if let Some(last) = keys.last_mut() {
            last.1.push(line.to_string());
        }
    }
    keys
}

const AGENT: &str = "clusters:\n  primary:\n    bootstrap_servers: 127.0.0.1:9092\n";

/// Loads one probe file (with an agent file defining the one cluster `primary`).
fn load(probe: &str) -> Result<ProbeConfig, String> {
    let t = Tree::new();
    let agent = t.write("slo-probe.yaml", AGENT);
    let file = t.write("probes/p.yaml", probe);
    let loaded = config::load(&Sources {
        agent_file: Some(agent),
        probe_paths: vec![file],
    })
    .map_err(|d| d.to_string())?;
    assert_eq!(loaded.probes.len(), 1, "one probe from one file");
    Ok(loaded.probes.into_iter().next().unwrap())
}

/// Everything a probe means (the file it came from aside, which differs per load).
fn meaning(p: &ProbeConfig) -> String {
    let mut p = p.clone();
    p.origin.file = std::path::Path::new("-").into();
    format!("{p:?}")
}

#[test]
fn the_probe_file_reference_loads_and_means_what_it_says() {
    let reference = block("### Probe files");
    let p = load(&reference).unwrap_or_else(|e| panic!("the README's probe file: {e}"));
    // Each value, as its comment documents it.
    assert_eq!(p.name, "orders-freshness");
    assert_eq!(p.cluster, "primary");
    assert_eq!(p.topic, "synthetic-sla");
    assert_eq!(p.interval, Duration::from_secs(10));
    assert_eq!(p.timeout, Duration::from_secs(30));
    assert_eq!(p.partitions, Partitions::All);
    assert_eq!(p.payload_bytes, 256);
    assert_eq!(p.tags, BTreeMap::from([("team".into(), "payments".into())]));
    assert_eq!(p.max_in_flight, 10_000);
    assert_eq!(p.create_topic, None, "false: a missing topic is an error");
    assert!(!p.per_partition_metrics);
    let Verify::Kafka(k) = &p.verify else {
        panic!("{:?}", p.verify)
    };
    assert_eq!(
        (k.cluster.as_str(), k.topic.as_str()),
        ("primary", "synthetic-sla")
    );
    assert!(!k.transformed(), "copies, checked whole");
    let slos: Vec<(&str, Sli, Duration)> = p
        .slos
        .iter()
        .map(|s| (s.name.as_str(), s.sli, s.window))
        .collect();
    let thirty_days = Duration::from_secs(30 * 86_400);
    assert_eq!(
        slos,
        [
            (
                "freshness",
                Sli::Latency {
                    below: Duration::from_millis(500)
                },
                thirty_days
            ),
            ("completeness", Sli::Completeness, thirty_days),
        ]
    );
    for (slo, ratio) in p.slos.iter().zip([0.99, 0.9999]) {
        assert!((slo.objective - ratio).abs() < 1e-12, "{slo:?}");
    }

    // Every field documented with a default means the same left out: written out, a default
    // is never a different setting (nor a dropped probe).
    let keys = top_level(&reference);
    let no_default = ["name", "tags", "slos"];
    let checked: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        checked,
        [
            "name",
            "cluster",
            "topic",
            "interval",
            "timeout",
            "partitions",
            "payload_bytes",
            "tags",
            "max_in_flight",
            "create_topic",
            "per_partition_metrics",
            "verify",
            "slos"
        ],
        "a field was added to (or removed from) the reference: check its meaning here"
    );
    for (key, lines) in keys
        .iter()
        .filter(|(k, _)| !no_default.contains(&k.as_str()))
    {
        let without: String = reference
            .lines()
            .filter(|l| !lines.iter().any(|x| x == l))
            .map(|l| format!("{l}\n"))
            .collect();
        let left_out = load(&without).unwrap_or_else(|e| panic!("without `{key}`: {e}"));
        assert_eq!(
            meaning(&left_out),
            meaning(&p),
            "`{key}` as documented is not its default"
        );
    }
}

/// Each alternative the reference documents, in place of the value it shows, with the meaning
/// it documents.
#[test]
fn every_documented_spelling_loads_with_its_meaning() {
    let reference = block("### Probe files");
    let keys = top_level(&reference);
    // The block with `key` (and the lines under it) replaced by `key: value`.
    let with = |key: &str, value: &str| -> ProbeConfig {
        let (_, lines) = keys.iter().find(|(k, _)| k == key).unwrap();
        let mut replaced = String::new();
        for l in reference.lines() {
            if l == lines[0] {
                replaced.push_str(&format!("{key}: {value}\n"));
            } else if !lines.iter().any(|x| x == l) {
                replaced.push_str(&format!("{l}\n"));
            }
        }
        load(&replaced).unwrap_or_else(|e| panic!("`{key}: {value}`: {e}"))
    };
    assert_eq!(
        with("partitions", "[0, 1, 2]").partitions,
        Partitions::List(vec![0, 1, 2])
    );
    let created = with("create_topic", "true")
        .create_topic
        .expect("true creates");
    assert_eq!(
        (created.partitions, created.replication_factor),
        (None, None),
        "true: one partition per broker, replication min(3, brokers)"
    );
    let sized = with("create_topic", "{ partitions: 6, replication_factor: 3 }")
        .create_topic
        .expect("a mapping creates");
    assert_eq!(
        (sized.partitions, sized.replication_factor),
        (Some(6), Some(3))
    );
    assert_eq!(with("create_topic", "false").create_topic, None);
    assert!(with("per_partition_metrics", "true").per_partition_metrics);

    // SLO objectives: a percentage with its sign, or an explicit ratio; SLIs by name or `sli`.
    let slos = |yaml: &str| with("slos", &format!("\n{yaml}")).slos;
    for (objective, ratio) in [("99.9%", 0.999), ("{ ratio: 0.999 }", 0.999), ("95%", 0.95)] {
        let s = slos(&format!(
            "  - {{ name: completeness, objective: {objective} }}"
        ));
        assert!((s[0].objective - ratio).abs() < 1e-12, "{objective}");
    }
    let s = slos(
        "  - { name: availability, objective: 99% }\n  - { name: intact, sli: completeness, objective: 99% }\n  - { name: a, sli: availability, objective: 99% }\n  - { name: fast, sli: latency, latency_below: 1s, objective: 99%, window: 7d }",
    );
    let got: Vec<(Sli, Duration)> = s.iter().map(|s| (s.sli, s.window)).collect();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        got,
        [
            (Sli::Availability, day * 30),
            (Sli::Completeness, day * 30),
            (Sli::Availability, day * 30),
            (
                Sli::Latency {
                    below: Duration::from_secs(1)
                },
                day * 7
            ),
        ]
    );
}

/// Every ```yaml block between `heading` and the next heading.
fn blocks(heading: &str) -> Vec<String> {
    let at = README
        .find(heading)
        .unwrap_or_else(|| panic!("README has no `{heading}`"));
    let rest = &README[at + heading.len()..];
    let section = &rest[..rest.find("\n#").unwrap_or(rest.len())];
    section
        .split("```yaml\n")
        .skip(1)
        .map(|b| b[..b.find("```").expect("the block ends")].to_string())
        .collect()
}

/// A `verify:` block of the README as a probe file (its variables given placeholder values).
fn verify_block(block: &str) -> String {
    let block = block
        .replace("${ORDERS_PG_DSN}", "host=db")
        .replace("${SEARCH_URL}", "http://search:9200")
        .replace("${SEARCH_API_KEY}", "key");
    format!("name: orders\ntopic: orders\n{block}")
}

/// The block without the line that sets `field`.
fn without(block: &str, field: &str) -> String {
    let lines: Vec<&str> = block.lines().collect();
    let kept: Vec<&str> = lines
        .into_iter()
        .filter(|l| !l.trim_start().starts_with(&format!("{field}:")))
        .collect();
    assert!(
        kept.len() < block.lines().count(),
        "no `{field}` in {block}"
    );
    kept.join("\n") + "\n"
}

/// The hop timestamps of the downstream and sink references, as documented: a pointer into the
/// job's output, a column, a pointer into a document; each optional, its default the broker
/// timestamp (downstream) or none (a sink: the poll).
#[test]
fn the_verify_references_load_with_their_hop_timestamps() {
    let downstream = verify_block(&block("### Verifying elsewhere"));
    let kafka = |yaml: &str| -> Option<String> {
        let p = load(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let Verify::Kafka(k) = p.verify else {
            panic!("{:?}", p.verify)
        };
        assert_eq!(k.topic, "orders-enriched");
        k.hop_timestamp
    };
    assert_eq!(kafka(&downstream).as_deref(), Some("/processed_at"));
    assert_eq!(
        kafka(&without(&downstream, "hop_timestamp")),
        None,
        "left out: the record's broker timestamp"
    );

    let sinks = blocks("### Verifying at the sink");
    assert_eq!(sinks.len(), 2, "{sinks:?}");
    let stamps = |yaml: &str| -> (Option<String>, Option<String>) {
        let p = load(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let s = &p.verify.sink().expect("a sink").stamps;
        (s.hop.clone(), s.written.clone())
    };
    // (the CA file it names is not on this machine)
    let postgres = verify_block(&without(&sinks[0], "ca_file"));
    let http = verify_block(&sinks[1]);
    let some = |a: &str, b: &str| (Some(a.to_string()), Some(b.to_string()));
    assert_eq!(stamps(&postgres), some("processed_at", "written_at"));
    assert_eq!(
        stamps(&http),
        some("/_source/processed_at", "/_source/indexed_at")
    );
    let neither = without(&without(&postgres, "hop_timestamp"), "timestamp_column");
    assert_eq!(stamps(&neither), (None, None));
    let neither = without(&without(&http, "hop_timestamp"), "timestamp_pointer");
    assert_eq!(stamps(&neither), (None, None));
}

/// The agent-file reference loads as written (with the variables it references set).
#[test]
fn the_agent_file_reference_loads() {
    let t = Tree::new();
    t.write("slo-probe.yaml", &block("### Agent file"));
    t.write("probes/p.yaml", "name: orders\n");
    let out = run(
        t.path(),
        &["check"],
        &[("KAFKA_PASSWORD", "x"), ("OTLP_API_KEY", "y")],
    );
    assert_eq!(out.code(), 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("configuration ok: 1 probe(s): orders; clusters: primary"),
        "{}",
        out.stdout
    );
}

/// The `job` reference of "Kafka, job or sink?" loads into a probe as its comments say: the
/// REST address, the job by name, the documented poll and timeout (the defaults: the same left
/// out), no credentials.
#[test]
fn the_job_reference_loads_and_means_what_it_says() {
    let reference = block("### Kafka, job or sink?");
    let p = load(&format!("name: orders\n{reference}"))
        .unwrap_or_else(|e| panic!("the README's job: {e}"));
    let job = p.job.as_ref().expect("a job");
    assert_eq!(
        (job.name.as_str(), job.url.as_str()),
        ("orders-enrich", "http://flink-jobmanager:8081")
    );
    assert_eq!(job.find, config::JobRef::Name("orders-enrich".into()));
    assert_eq!(
        (job.poll, job.timeout),
        (Duration::from_secs(5), Duration::from_secs(2))
    );
    assert!(format!("{job:?}").contains("auth: \"none\""), "{job:?}");
    let defaults: String = reference
        .lines()
        .filter(|l| !l.trim_start().starts_with("poll:") && !l.trim_start().starts_with("timeout:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let left_out = load(&format!("name: orders\n{defaults}")).unwrap();
    assert_eq!(
        left_out.job, p.job,
        "poll and timeout as documented are the defaults"
    );
}
