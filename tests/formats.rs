//! Probe records in the pipeline's own format (`record`): a JSON template read by a strict job,
//! Avro in the Confluent wire format with a Schema Registry, and what happens when the registry
//! is down. Real parts: a tansu broker, an Avro decoder that shares no code with slo-probe
//! (Python's fastavro, `tests/avro_decode.py`), and a stand-in Schema Registry
//! (`common::registry`: no registry server can be installed here) serving the Confluent REST
//! endpoints slo-probe uses.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use common::infra::Tansu;
use common::job::StrictJob;
use common::registry::{HttpAuth, StandInSchemaRegistry};
use common::relay::{Picker, from_beginning};
use common::{Conservation, GUARD, Tree, create_topics, eventually, sample};
use rdkafka::message::{Headers, Message};
use slo_probe::{Outcome, Plan, Snapshot};

/// The template of an order the strict job accepts (`extra` adds fields it does not know).
fn order_template(extra: &str) -> String {
    format!(
        r#"record:
  value:
    order_id: "{{id}}"
    customer_id: "synthetic-{{partition}}"
    amount: 42.5
    currency: EUR
    created_at: "{{scheduled_at}}"
    sequence: "{{seq}}"
    synthetic: true
{extra}"#
    )
}

const VERIFY_ENRICHED: &str = r#"verify:
  kafka:
    topic: orders-enriched
    id_from: /order_id
    expect:
      /status: ENRICHED
      /amount: { from: /amount }
      /sequence: { from: /sequence }
"#;

/// Runs the tree's probes for `rounds` rounds, checking conservation on every scrape: each
/// probe's name and its snapshot once every record settled.
async fn run_rounds(t: &Tree, rounds: u64) -> (Vec<String>, Vec<Snapshot>) {
    let agent = common::start_agent(t, Plan::Rounds(rounds)).await;
    let conservation = Conservation::watch(agent.view());
    let names: Vec<String> = agent.probes().iter().map(|p| p.name().into()).collect();
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("probes finish");
    let now = tokio::time::Instant::now();
    let snaps: Vec<Snapshot> = agent.probes().iter().map(|p| p.snapshot(now)).collect();
    agent.shutdown(std::future::ready(())).await;
    conservation.finish().await;
    for s in &snaps {
        assert!(s.progress.counts.conserved());
    }
    (names, snaps)
}

fn agent_file(t: &Tree, bootstrap: &str) {
    t.write(
        "slo-probe.yaml",
        &format!("clusters:\n  primary: {{ bootstrap_servers: '{bootstrap}' }}\n"),
    );
}

/// A tansu broker with `orders` and `orders-enriched` (3 partitions each), the strict job
/// between them (Avro through `registry` when given, else JSON), and an agent file for the broker.
async fn pipeline(
    registry: Option<&StandInSchemaRegistry>,
    picker: Picker,
) -> (Tansu, StrictJob, Tree) {
    let broker = Tansu::start();
    create_topics(
        &broker.bootstrap(),
        &[("orders", 3), ("orders-enriched", 3)],
    )
    .await;
    let job = StrictJob::start(
        &broker.bootstrap(),
        ("orders", "orders-enriched"),
        3,
        registry,
        picker,
    );
    let t = Tree::new();
    agent_file(&t, &broker.bootstrap());
    (broker, job, t)
}

/// A strict job (standing in for a Flink job) reads the probe's JSON orders, enriches them and
/// writes `orders-enriched`; slo-probe finds each by `/order_id`. A probe whose template has a
/// field the job does not know loses every record (the job drops them); the job's bug (a
/// wrong amount on picked records) makes exactly those records `corrupt`, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_job_drops_the_wrong_shape_and_its_bug_is_corrupt() {
    const ROUNDS: u64 = 6;
    let (_broker, job, t) = pipeline(None, Picker { seed: 7, one_in: 4 }).await;
    let head = "topic: orders\ninterval: 200ms\ntimeout: 3s\n";
    t.write(
        "probes/shaped.yaml",
        &format!(
            "name: shaped\n{head}{}{VERIFY_ENRICHED}",
            order_template("")
        ),
    );
    t.write(
        "probes/misshapen.yaml",
        &format!(
            "name: misshapen\n{head}{}{VERIFY_ENRICHED}",
            order_template("    unexpected: 1\n")
        ),
    );
    let (names, snaps) = run_rounds(&t, ROUNDS).await;
    let tally = job.stop().await;
    let by_name: HashMap<&str, &Snapshot> =
        names.iter().map(String::as_str).zip(snaps.iter()).collect();

    let shaped = by_name["shaped"].progress.counts;
    assert_eq!(shaped.sent, ROUNDS * 3);
    assert!(tally.wrong > 0 && tally.wrong < shaped.sent, "{tally:?}");
    assert_eq!(shaped.get(Outcome::Corrupt), tally.wrong, "{shaped:?}");
    assert_eq!(shaped.get(Outcome::Ok), shaped.sent - tally.wrong);
    assert_eq!(shaped.get(Outcome::Lost), 0);
    let corrupt = by_name["shaped"]
        .last
        .iter()
        .find(|n| n.outcome == Outcome::Corrupt)
        .expect("a corrupt record is among the last");
    let reason = corrupt.reason.as_ref().unwrap().to_string();
    assert!(
        reason.contains("/amount") && reason.contains("42.5") && reason.contains("43.5"),
        "{reason}"
    );

    let misshapen = by_name["misshapen"].progress.counts;
    assert_eq!(misshapen.sent, ROUNDS * 3);
    assert_eq!(
        misshapen.get(Outcome::Lost),
        misshapen.sent,
        "{misshapen:?}"
    );
    assert_eq!(tally.dropped, misshapen.sent);
    assert_eq!(tally.forwarded, shaped.sent);
    assert_eq!(by_name["shaped"].foreign + by_name["misshapen"].foreign, 0);
}

/// `probes/formats/orders.avsc` beside the tree's probe files.
fn copy_schema(t: &Tree) {
    let schema = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("probes/formats/orders.avsc"),
    )
    .unwrap();
    t.write("probes/orders.avsc", &schema);
}

/// The Avro probe of `probes/formats` on `orders`, a round every `interval`, its schema id from
/// `registry` (registered under `orders-value`), verified downstream on `orders-enriched`.
fn avro_probe(t: &Tree, registry: &str, interval: &str) {
    copy_schema(t);
    t.write(
        "probes/avro.yaml",
        &format!(
            r#"name: avro
topic: orders
interval: {interval}
timeout: 3s
record:
  value:
    order_id: "{{id}}"
    customer_id: "synthetic-{{partition}}"
    amount: 42.5
    currency: EUR
    created_at: "{{scheduled_at_ms}}"
    sequence: "{{seq}}"
    synthetic: true
  avro:
    schema_file: orders.avsc
    registry: {{ url: "{registry}", register: true }}
verify:
  kafka:
    topic: orders-enriched
    format: avro
    id_from: /order_id
    expect:
      /status: ENRICHED
      /amount: {{ from: /amount }}
      /sequence: {{ from: /sequence }}
"#
        ),
    );
}

/// slo-probe writes Avro in the Confluent wire format: fastavro (sharing no code with
/// slo-probe) decodes every record from the schema the registry gives for its id and recovers
/// every field; the job's own Avro output is decoded with its writer schema (fetched once by
/// id) and checked: exact outcomes, the job's bug `corrupt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_decode_independently_and_the_job_output_is_verified() {
    const ROUNDS: u64 = 5;
    let registry = StandInSchemaRegistry::start(HttpAuth::None).await;
    let (broker, job, t) = pipeline(Some(&registry), Picker { seed: 5, one_in: 4 }).await;
    avro_probe(&t, &registry.url(), "200ms");
    let (_, snaps) = run_rounds(&t, ROUNDS).await;
    let tally = job.stop().await;

    let c = snaps[0].progress.counts;
    assert_eq!(c.sent, ROUNDS * 3);
    assert_eq!(tally.dropped, 0, "the job read every record: {tally:?}");
    assert!(tally.wrong > 0 && tally.wrong < c.sent, "{tally:?}");
    assert_eq!(c.get(Outcome::Corrupt), tally.wrong, "{c:?}");
    assert_eq!(c.get(Outcome::Ok), c.sent - tally.wrong);
    assert_eq!(snaps[0].foreign, 0);
    let requests = registry.requests();
    assert!(
        requests.contains(&"POST /subjects/orders-value/versions".to_string()),
        "{requests:?}"
    );
    // The job's schema is fetched by the agent once, however many records carry its id.
    let fetches = requests
        .iter()
        .filter(|r| r.starts_with("GET /schemas/ids/"))
        .count();
    assert_eq!(fetches, 2, "one by the job, one by the agent: {requests:?}");

    // Every record slo-probe wrote, decoded by fastavro.
    let consumer = from_beginning(&broker.bootstrap(), "orders", 3, "avro-reader");
    let mut lines = String::new();
    let mut sent = Vec::new();
    while sent.len() < c.sent as usize {
        let m = tokio::time::timeout(GUARD, consumer.recv())
            .await
            .expect("every record read back")
            .unwrap();
        let header = |name: &str| {
            m.headers()
                .unwrap()
                .iter()
                .find(|h| h.key == name)
                .map(|h| String::from_utf8(h.value.unwrap().to_vec()).unwrap())
                .unwrap()
        };
        let value = m.payload().unwrap();
        lines.push_str(&format!(
            "{{\"value_b64\": \"{}\"}}\n",
            base64::engine::general_purpose::STANDARD.encode(value)
        ));
        sent.push((
            header("slo-probe-id"),
            header("slo-probe-seq"),
            m.partition(),
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
        ));
    }
    let decoded = fastavro(&["--registry", &registry.url()], &lines);
    assert_eq!(decoded.len(), sent.len());
    let subject_id = requests_id(&registry);
    for (d, (id, seq, partition, key)) in decoded.iter().zip(&sent) {
        assert!(d.get("error").is_none(), "{d}");
        assert_eq!(d["schema_id"], subject_id, "{d}");
        let v = &d["value"];
        assert_eq!(v["order_id"], id.as_str(), "{d}");
        assert_eq!(key, id, "the key is the record id");
        assert_eq!(v["sequence"].as_u64().unwrap().to_string(), *seq);
        assert_eq!(v["customer_id"], format!("synthetic-{partition}"));
        assert_eq!(v["amount"], 42.5);
        assert_eq!(v["currency"], "EUR");
        assert_eq!(v["synthetic"], true);
        assert_eq!(v["coupon"], serde_json::Value::Null);
        assert!(v["created_at"].as_str().unwrap().starts_with("20"), "{d}");
    }
}

/// The id the stand-in registry gave the probe's schema.
fn requests_id(registry: &StandInSchemaRegistry) -> u64 {
    (1..100)
        .find(|&id| {
            registry
                .schema_by_id(id)
                .is_some_and(|s| s.contains("\"Order\""))
        })
        .map(u64::from)
        .expect("the probe's schema is registered")
}

/// Runs `tests/avro_decode.py` (fastavro) over JSON lines of record values.
fn fastavro(args: &[&str], lines: &str) -> Vec<serde_json::Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".ci/venv/bin/python");
    let mut child = Command::new(&python)
        .arg(root.join("tests/avro_decode.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run .ci/run to install fastavro)",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `smoke` cannot run without the schema id: a registry that does not answer is a start error
/// (exit 2) naming the probe and the registry, in the report too.
#[test]
fn smoke_exits_2_when_the_registry_is_down() {
    let t = Tree::new();
    let closed = common::closed_port();
    avro_probe(&t, &format!("http://127.0.0.1:{closed}"), "1s");
    let out = common::run(
        t.path(),
        &["smoke", "--embedded", "--rounds", "1", "--output", "json"],
        &[],
    );
    assert_eq!(out.code(), 2, "{}\n{}", out.stdout, out.stderr);
    let want = format!(
        "probe avro: cannot get the schema id of its records (subject `orders-value`): cannot reach the Schema Registry at http://127.0.0.1:{closed}"
    );
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["result"], "COULD_NOT_RUN", "{v}");
    assert!(v["reason"].as_str().unwrap().contains(&want), "{v}");
}

/// `run` starts with the registry down: every record fails `send_failed` (reason `format`,
/// saying why), each failed request is counted by reason, and once the registry answers the
/// records are sent and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_asking_a_registry_that_is_down_and_counts_each_failure() {
    let cluster = slo_probe::EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("orders", 1, 1).unwrap();
    cluster.create_topic("orders-enriched", 1, 1).unwrap();
    let registry = StandInSchemaRegistry::start(HttpAuth::Bearer("s3cret-token".into())).await;
    registry.set_unavailable(true);
    let t = Tree::new();
    agent_file(&t, cluster.bootstrap_servers());
    // Read back on the probe topic itself: the paired consumer decodes the Avro it sent.
    t.write("token", "s3cret-token\n");
    copy_schema(&t);
    let token = t.path().join("token");
    t.write(
        "probes/avro.yaml",
        &format!(
            r#"name: avro
topic: orders
interval: 200ms
timeout: 3s
record:
  value: {{ order_id: "{{id}}", customer_id: c, amount: 1, currency: USD, created_at: "{{scheduled_at_ms}}", sequence: "{{seq}}" }}
  avro:
    schema_file: orders.avsc
    registry: {{ url: "{}", register: true, bearer_token_file: "{}" }}
"#,
            registry.url(),
            token.display()
        ),
    );
    let agent = common::start_agent(&t, Plan::Forever).await;
    let view = agent.view();
    let probe = agent.probes()[0].clone();
    let failed = eventually("records fail while the registry is down", || async {
        let c = probe.snapshot(tokio::time::Instant::now()).progress.counts;
        (c.get(Outcome::SendFailed) >= 3).then_some(c)
    })
    .await;
    assert_eq!(failed.get(Outcome::Ok), 0);
    let s = probe.snapshot(tokio::time::Instant::now());
    let reason = s.last[0].reason.as_ref().unwrap();
    assert_eq!(reason.kind, "format");
    assert!(
        reason.detail.contains("the schema id is not known yet"),
        "{reason}"
    );
    let errors = |m: &str| {
        sample(
            m,
            "slo_probe_schema_registry_errors_total",
            &[("probe", "avro"), ("reason", "http_status")],
        )
        .unwrap()
    };
    eventually("a retry is counted", || async {
        (errors(&view.render_metrics()) >= 2.0).then_some(())
    })
    .await;
    registry.set_unavailable(false);
    eventually("records are verified once the registry answers", || async {
        let c = probe.snapshot(tokio::time::Instant::now()).progress.counts;
        (c.get(Outcome::Ok) >= 3).then_some(())
    })
    .await;
    let counted = errors(&view.render_metrics());
    let m = view.render_metrics();
    assert_eq!(
        sample(
            &m,
            "slo_probe_schema_registry_errors_total",
            &[("probe", "avro"), ("reason", "auth")]
        ),
        Some(0.0),
        "the bearer token was accepted"
    );
    // The task that kept asking is supervised like every other: its restarts are counted.
    assert_eq!(
        sample(
            &m,
            "slo_probe_task_restarts_total",
            &[("probe", "avro"), ("task", "schema_registry")]
        ),
        Some(0.0)
    );
    agent.shutdown(std::future::ready(())).await;
    assert!(counted >= 2.0);
    let c = probe.snapshot(tokio::time::Instant::now()).progress.counts;
    assert!(c.conserved());
    assert_eq!(c.get(Outcome::Corrupt) + c.get(Outcome::Lost), 0, "{c:?}");
    assert!(!m.contains("s3cret-token"));
}

/// A probe file whose Avro schema id is looked up (never registered) in `registry` with basic
/// auth, the password from `REGISTRY_PASSWORD`; read back by the paired consumer.
fn lookup_probe(t: &Tree, registry: &str) {
    copy_schema(t);
    t.write(
        "probes/avro.yaml",
        &format!(
            r#"name: avro
topic: orders
interval: 100ms
timeout: 5s
create_topic: true
record:
  value: {{ order_id: "{{id}}", customer_id: c, amount: 2.5, currency: GBP, created_at: "{{scheduled_at_ms}}", sequence: "{{seq}}" }}
  avro:
    schema_file: orders.avsc
    registry: {{ url: "{registry}", username: probe, password: "${{REGISTRY_PASSWORD}}" }}
"#
        ),
    );
}

/// By default the schema is only looked up: a subject without it, or credentials the registry
/// refuses, stop `smoke` (exit 2) saying which; once an operator registered it, the records are
/// sent with its id and verified, and slo-probe never registered anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_looks_the_schema_up_with_basic_auth_and_never_registers_it() {
    let registry = StandInSchemaRegistry::start(HttpAuth::Basic {
        user: "probe".into(),
        password: "pw-9f3k2".into(),
    })
    .await;
    let t = Tree::new();
    lookup_probe(&t, &registry.url());
    let dir = t.path().to_path_buf();
    let smoke = move |password: &'static str| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            common::run(
                &dir,
                &["smoke", "--embedded", "--rounds", "3", "--output", "json"],
                &[("REGISTRY_PASSWORD", password)],
            )
        })
    };

    let out = smoke("pw-9f3k2").await.unwrap();
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("does not have this schema under subject `orders-value`"),
        "{}",
        out.stderr
    );

    let text = std::fs::read_to_string(t.path().join("probes/orders.avsc")).unwrap();
    let id = registry.register("orders-value", &text);

    let out = smoke("wrong-password").await.unwrap();
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "the Schema Registry at {} refused the credentials (HTTP 401)",
            registry.url()
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("wrong-password"));

    let out = smoke("pw-9f3k2").await.unwrap();
    assert_eq!(out.code(), 0, "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let p = &v["probes"][0];
    assert_eq!(v["result"], "PASS", "{v}");
    assert_eq!(p["records"]["ok"], p["records"]["sent"], "{v}");
    assert!(p["records"]["sent"].as_u64().unwrap() >= 3, "{v}");
    assert!(!out.stderr.contains("pw-9f3k2") && !out.stdout.contains("pw-9f3k2"));
    let requests = registry.requests();
    assert!(
        requests.iter().all(|r| r == "POST /subjects/orders-value"),
        "only look-ups: {requests:?}"
    );
    assert!(!requests.is_empty() && id > 0);
}

/// Records in the pipeline's own format are checked whole when read back as copies (here
/// through a mirror that corrupts seeded picks): every picked record is `corrupt`, and the
/// reason names the field that changed, what was sent and what came; JSON and Avro alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_changed_in_transit_is_corrupt_and_named() {
    use common::relay::{Fault, Relay};
    const ROUNDS: u64 = 8;
    let picker = Picker {
        seed: 11,
        one_in: 3,
    };
    let (cluster, relay) = Relay::on_embedded(1, 2, Fault::Corrupt, picker);
    let t = Tree::new();
    agent_file(&t, cluster.bootstrap_servers());
    copy_schema(&t);
    let head = "topic: in\ninterval: 100ms\ntimeout: 3s\nverify: { kafka: { topic: out } }\n";
    t.write(
        "probes/json.yaml",
        &format!("name: json\n{head}payload_bytes: 16\nrecord:\n  value: {{ order_id: \"{{id}}\", payload: \"{{payload}}\", synthetic: true }}\n"),
    );
    t.write(
        "probes/avro.yaml",
        &format!("name: avro\n{head}record:\n  value: {{ order_id: \"{{id}}\", customer_id: c, amount: 1.5, currency: EUR, created_at: \"{{scheduled_at_ms}}\", sequence: \"{{seq}}\", synthetic: true }}\n  avro: {{ schema_file: orders.avsc, schema_id: 7 }}\n"),
    );
    let (names, snaps) = run_rounds(&t, ROUNDS).await;
    let tally = relay.stop().await;
    // Both probes send the same (partition, seq) pairs: the picker picks the same share of each.
    assert!(tally.corrupted > 0 && tally.corrupted % 2 == 0, "{tally:?}");
    for (name, s) in names.iter().zip(&snaps) {
        let c = s.progress.counts;
        assert_eq!(c.sent, ROUNDS * 2, "{name}");
        assert_eq!(
            c.get(Outcome::Corrupt),
            tally.corrupted / 2,
            "{name}: {c:?}"
        );
        assert_eq!(c.get(Outcome::Ok), c.sent - tally.corrupted / 2, "{name}");
        let reasons: Vec<String> = s
            .last
            .iter()
            .filter(|n| n.outcome == Outcome::Corrupt)
            .map(|n| n.reason.as_ref().unwrap().to_string())
            .collect();
        assert!(!reasons.is_empty(), "{name}");
        let want = match name.as_str() {
            "json" => "field `/payload`: expected \"",
            _ => "field `/synthetic`: expected true, got false",
        };
        assert!(
            reasons.iter().all(|r| r.contains(want)),
            "{name}: {reasons:?}"
        );
    }
}

/// Plain Avro (no `schema_id`, no registry): the value is the Avro binary alone, which fastavro
/// decodes with the schema file and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_avro_decodes_with_the_schema_file_alone() {
    const ROUNDS: u64 = 3;
    let cluster = slo_probe::EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("orders", 2, 1).unwrap();
    let t = Tree::new();
    agent_file(&t, cluster.bootstrap_servers());
    copy_schema(&t);
    t.write(
        "probes/plain.yaml",
        "name: plain\ntopic: orders\ninterval: 100ms\ntimeout: 3s\nrecord:\n  value: { order_id: \"{id}\", customer_id: \"p{partition}\", amount: 3, currency: USD, created_at: \"{scheduled_at_ms}\", sequence: \"{seq}\", coupon: SAVE10 }\n  avro: { schema_file: orders.avsc }\n",
    );
    let (_, snaps) = run_rounds(&t, ROUNDS).await;
    let c = snaps[0].progress.counts;
    assert_eq!(
        (c.sent, c.get(Outcome::Ok)),
        (ROUNDS * 2, ROUNDS * 2),
        "{c:?}"
    );

    let consumer = from_beginning(cluster.bootstrap_servers(), "orders", 2, "plain-reader");
    let mut lines = String::new();
    let mut ids = Vec::new();
    for _ in 0..c.sent {
        let m = tokio::time::timeout(GUARD, consumer.recv())
            .await
            .expect("every record read back")
            .unwrap();
        ids.push((
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            m.partition(),
        ));
        let value = base64::engine::general_purpose::STANDARD.encode(m.payload().unwrap());
        lines.push_str(&format!("{{\"value_b64\": \"{value}\"}}\n"));
    }
    let schema = t.path().join("probes/orders.avsc");
    let decoded = fastavro(&["--schema", schema.to_str().unwrap()], &lines);
    for (d, (id, partition)) in decoded.iter().zip(&ids) {
        assert!(d.get("error").is_none(), "{d}");
        let v = &d["value"];
        assert_eq!(v["order_id"], id.as_str(), "{d}");
        assert_eq!(v["customer_id"], format!("p{partition}"));
        assert_eq!(
            (v["amount"].as_f64(), &v["currency"]),
            (Some(3.0), &serde_json::json!("USD"))
        );
        assert_eq!(v["coupon"], "SAVE10", "a union's string branch");
        assert_eq!(v["synthetic"], false, "the schema's default");
    }
}
