//! Record formats: the CPU one record costs the agent apart from Kafka, per format. Each format
//! is a probe file loaded as `slo-probe check` loads it; its records are built and checked as the
//! paired consumer checks one read back (`slo_probe::bench::build_and_verify`), in this process,
//! without a broker. The formats take turns batch by batch (envelope, JSON template, Avro,
//! envelope, ...) so that the machine's noise hits all alike.

use std::time::{Duration, Instant};

use slo_probe::config::{self, ProbeConfig, Sources};

use crate::common::Tree;

/// slo-probe's own envelope: no `record` section.
const ENVELOPE: &str = "name: envelope\npayload_bytes: 256\n";

/// The `record` section of probes/orders-shaped.yaml (copied, so that the figures stay
/// comparable whatever the example becomes).
const JSON_TEMPLATE: &str = r#"name: json-template
payload_bytes: 256
record:
  key: "{id}"
  value:
    order_id: "{id}"
    customer_id: "synthetic-{partition}"
    amount: 42.5
    currency: EUR
    created_at: "{scheduled_at}"
    sequence: "{seq}"
    note: "{payload}"
    synthetic: true
"#;

/// The `record` section of probes/formats/orders-avro.yaml with a fixed `schema_id` instead of
/// `registry` (the Confluent wire format without a registry); verified by the default paired
/// consumer. The schema has no field for `{payload}`: these records carry none.
const AVRO: &str = r#"name: avro
payload_bytes: 256
record:
  value:
    order_id: "{id}"
    customer_id: "synthetic-{partition}"
    amount: 42.5
    currency: EUR
    created_at: "{scheduled_at_ms}"
    sequence: "{seq}"
    synthetic: true
  avro:
    schema_file: orders.avsc
    schema_id: 1
"#;

/// A copy of probes/formats/orders.avsc, written beside the Avro probe file.
const ORDERS_AVSC: &str = r#"{
  "type": "record",
  "name": "Order",
  "namespace": "com.example.orders",
  "fields": [
    {"name": "order_id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "customer_id", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD", "GBP"]}},
    {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "sequence", "type": "long"},
    {"name": "coupon", "type": ["null", "string"], "default": null},
    {"name": "synthetic", "type": "boolean", "default": false}
  ]
}
"#;

/// One format: its label in the report and its loaded probe.
pub struct Format {
    pub label: &'static str,
    pub probe: ProbeConfig,
}

/// The three formats, envelope first (the others are reported relative to it). Panics with
/// every problem found when a probe file does not load.
pub fn formats() -> Vec<Format> {
    let t = Tree::new();
    t.write("probes/envelope.yaml", ENVELOPE);
    t.write("probes/json-template.yaml", JSON_TEMPLATE);
    t.write("probes/avro.yaml", AVRO);
    t.write("probes/orders.avsc", ORDERS_AVSC);
    let sources = Sources {
        agent_file: None,
        probe_paths: vec![t.path().join("probes")],
    };
    let mut loaded = config::load(&sources)
        .unwrap_or_else(|problems| panic!("the format probe files do not load:\n{problems}"))
        .probes;
    [
        ("envelope", "slo-probe envelope (JSON)"),
        ("json-template", "JSON template"),
        ("avro", "Avro, Confluent wire format"),
    ]
    .into_iter()
    .map(|(name, label)| {
        let i = loaded
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("probe `{name}` loaded"));
        Format {
            label,
            probe: loaded.swap_remove(i),
        }
    })
    .collect()
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given, which is zeroed plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(
            libc::getrusage(libc::RUSAGE_SELF, &mut usage),
            0,
            "getrusage"
        );
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Builds and checks `records` records of `format`; panics unless every one is intact (a
/// benchmark of broken records is worthless). Returns (CPU, wall) time.
fn batch(format: &Format, records: u64) -> (Duration, Duration) {
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let intact = slo_probe::bench::build_and_verify(&format.probe, records);
    let (cpu, wall) = (cpu_time() - cpu0, wall0.elapsed());
    assert_eq!(
        intact,
        records,
        "{}: {} of {records} records failed the paired consumer's checks",
        format.label,
        records - intact
    );
    (cpu, wall)
}

/// One run: per format (in the order of `formats`), µs per record.
pub struct Run {
    pub cpu_us: Vec<f64>,
    pub wall_us: Vec<f64>,
}

/// One unmeasured batch of each format: first-use allocations and lazy initialisation are not
/// the cost of a record.
pub fn warm_up(formats: &[Format], records: u64) {
    for f in formats {
        batch(f, records);
    }
}

/// `rounds` rounds of one batch of `records` records per format, the formats in turn.
pub fn run(formats: &[Format], records: u64, rounds: usize) -> Run {
    let mut cpu = vec![Duration::ZERO; formats.len()];
    let mut wall = vec![Duration::ZERO; formats.len()];
    for _ in 0..rounds {
        for (i, f) in formats.iter().enumerate() {
            let (c, w) = batch(f, records);
            cpu[i] += c;
            wall[i] += w;
        }
    }
    let per_record = |d: &Duration| d.as_secs_f64() * 1e6 / (records as f64 * rounds as f64);
    Run {
        cpu_us: cpu.iter().map(per_record).collect(),
        wall_us: wall.iter().map(per_record).collect(),
    }
}
