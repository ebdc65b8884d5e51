//! Sink pollers against real parts: a real PostgreSQL server (Debian's postgresql, started per
//! test), a real HTTP server standing in for a search index, a real broker (tansu) and a writer
//! that plays the pipeline's last stage (consumes the probe topic, writes rows or documents after
//! a known delay, drops, corrupts or stops on cue). The probes are the example files under
//! `probes/sinks/`, run faster. Every test asserts exact counts.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::infra::{Postgres, Tansu};
use common::relay::Picker;
use common::writer::{Faults, Index, Store, TABLE, Writer};
use common::{GUARD, Running, Tree, create_topics, eventually, get, sample, verdict};
use serde_json::{Value, json};

const PARTITIONS: i32 = 3;
const TOPIC: &str = "synthetic-sla";

/// An example probe file, with `substitutions` (each must apply) to run it faster.
fn example(file: &str, substitutions: &[(&str, &str)]) -> String {
    common::example(&format!("sinks/{file}"), substitutions)
}

async fn database(pg: &Postgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.dsn(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "create extension pg_stat_statements; {TABLE}; select pg_stat_statements_reset()"
        ))
        .await
        .unwrap();
    client
}

/// A broker with the probe topic, and a tree with an agent file pointing at it and the example
/// probe `file`, run faster per `substitutions`.
async fn probe_tree(file: &str, substitutions: &[(&str, &str)]) -> (Tansu, Tree) {
    let broker = Tansu::start();
    create_topics(&broker.bootstrap(), &[(TOPIC, PARTITIONS)]).await;
    let t = Tree::new();
    t.agent_file(&broker.bootstrap());
    t.write(&format!("probes/{file}"), &example(file, substitutions));
    (broker, t)
}

/// The pipeline's last stage, reading the probe topic of `broker`.
fn writer(broker: &Tansu, store: Store, delay: Duration, faults: Faults) -> Writer {
    Writer::start(&broker.bootstrap(), TOPIC, PARTITIONS, store, delay, faults)
}

/// `slo-probe smoke` for `rounds` with JSON logs, its verdict written to `verdict.json`.
fn smoke(t: &Tree, rounds: u32, env: &[(&str, &str)]) -> (Running, std::path::PathBuf) {
    common::smoke_reporting(t, rounds, &[], env)
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_outcomes_are_exact_and_latency_includes_the_writers_delay() {
    const DELAY: Duration = Duration::from_millis(400);
    let pg = Postgres::start();
    let db = database(&pg).await;
    let (broker, t) = probe_tree(
        "orders-warehouse.yaml",
        &[
            ("interval: 10s", "interval: 300ms"),
            ("timeout: 60s", "timeout: 6s"),
            ("poll: 1s", "poll: 100ms"),
        ],
    )
    .await;
    // seeds chosen so that both faults pick records among the first rounds
    let faults = Faults {
        drop: Picker {
            seed: 11,
            one_in: 6,
        },
        corrupt: Picker {
            seed: 12,
            one_in: 6,
        },
    };
    let writer = writer(&broker, Store::Postgres(pg.dsn()), DELAY, faults);
    let dsn = pg.dsn();
    let (mut smoke, report) = smoke(&t, 12, &[("ORDERS_PG_DSN", &dsn)]);
    // The sink job stops part-way: every record it did not write is lost.
    eventually("the writer wrote 15 rows", || async {
        (writer.tally().written >= 15).then_some(())
    })
    .await;
    writer.halt();
    assert_eq!(
        smoke.wait_exit(GUARD).code(),
        Some(1),
        "lost and corrupt fail the smoke check"
    );
    let w = writer.stop().await;
    let p = &verdict(&report)["probes"][0];
    let r = &p["records"];

    let sent = 12 * PARTITIONS as u64;
    assert_eq!(count(&r["sent"]), sent, "{p:#}");
    assert_eq!(w.seen, sent, "{w:?}");
    assert!(w.dropped > 0 && w.corrupted > 0 && w.stopped > 0, "{w:?}");
    assert_eq!(w.written + w.dropped + w.stopped, sent, "{w:?}");
    assert_eq!(count(&r["corrupt"]), w.corrupted, "{p:#}\n{w:?}");
    assert_eq!(count(&r["ok"]), w.written - w.corrupted, "{p:#}\n{w:?}");
    assert_eq!(count(&r["lost"]), w.dropped + w.stopped, "{p:#}\n{w:?}");
    assert_eq!(count(&r["in_flight"]), 0);

    // latency runs from the scheduled send to the poll that found the row: never below the
    // writer's delay
    assert_eq!(count(&p["latency"]["count"]), w.written - w.corrupted);
    let p50 = p["latency"]["p50_ms"].as_f64().unwrap();
    assert!(p50 >= DELAY.as_millis() as f64, "p50 {p50} ms");
    assert_eq!(p["verify"], "postgres");
    assert_eq!(p["poll_interval_ms"], 100.0);

    // one query per poll, for the whole pending set
    let polls = count(&p["sink"]["polls"]);
    assert_eq!(count(&p["sink"]["errors"]), 0);
    let stats = db
        .query_one(
            "select coalesce(sum(calls), 0)::bigint, coalesce(sum(rows), 0)::bigint from pg_stat_statements where query like '%from orders_sink where id = any%'",
            &[],
        )
        .await
        .unwrap();
    let (calls, rows): (i64, i64) = (stats.get(0), stats.get(1));
    assert_eq!(calls as u64, polls, "queries == polls");
    assert_eq!(
        rows as u64, w.written,
        "each written row found exactly once"
    );

    // each corrupt record: one log line naming the failed column
    let corrupt: Vec<Value> = smoke.events("record corrupt");
    assert_eq!(corrupt.len() as u64, w.corrupted);
    for e in &corrupt {
        let detail = e["detail"].as_str().unwrap();
        assert_eq!(e["reason"], "assertion", "{e}");
        assert!(
            detail.contains("/team") && detail.contains("\"wrong\""),
            "{detail}"
        );
    }
    assert_eq!(
        smoke.events("record lost").len() as u64,
        w.dropped + w.stopped
    );
    assert!(
        !smoke.seen.iter().any(|l| l.contains("user=postgres")),
        "the connection string is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_and_restarted_errors_are_counted_and_the_agent_recovers() {
    let mut pg = Postgres::start();
    let _db = database(&pg).await;
    let (broker, t) = probe_tree(
        "orders-warehouse.yaml",
        &[
            ("interval: 10s", "interval: 250ms"),
            ("poll: 1s", "poll: 100ms"),
            ("timeout: 5s ", "timeout: 1s "),
        ],
    )
    .await;
    let writer = writer(
        &broker,
        Store::Postgres(pg.dsn()),
        Duration::from_millis(100),
        Faults::NONE,
    );
    let dsn = pg.dsn();
    let (mut agent, addr) = Running::run_ready(t.path(), &[], &[("ORDERS_PG_DSN", &dsn)]);
    let ok = |m: &str| sample(m, "slo_probe_records_total", &[("outcome", "ok")]).unwrap();

    pg.kill();
    let failed = agent.wait_event(GUARD, "sink poll failed; retrying with backoff");
    assert_eq!(failed["reason"], "unreachable", "{failed}");
    assert_eq!(failed["probe"], "orders-warehouse");
    pg.restart();
    agent.wait_event(GUARD, "sink reachable again");
    let (_, m) = get(&addr, "/metrics").await;
    let at_recovery = ok(&m);
    let m = eventually("records verified again after the restart", || async {
        let (_, m) = get(&addr, "/metrics").await;
        (ok(&m) >= at_recovery + 6.0).then_some(m)
    })
    .await;

    let errors: f64 = [
        "unreachable",
        "auth",
        "query",
        "http_status",
        "invalid_json",
        "timeout",
    ]
    .iter()
    .map(|r| sample(&m, "slo_probe_verify_errors_total", &[("reason", r)]).unwrap())
    .sum();
    assert!(errors >= 1.0, "{m}");
    assert!(
        sample(
            &m,
            "slo_probe_verify_errors_total",
            &[("reason", "unreachable")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(
            &m,
            "slo_probe_poll_interval_seconds",
            &[("probe", "orders-warehouse")]
        ),
        Some(0.1)
    );
    // accounting is conserved on every scrape
    let settled: f64 = ["ok", "lost", "corrupt", "send_failed"]
        .iter()
        .map(|o| sample(&m, "slo_probe_records_total", &[("outcome", o)]).unwrap())
        .sum();
    let sent = sample(&m, "slo_probe_records_sent_total", &[]).unwrap();
    let in_flight = sample(&m, "slo_probe_in_flight", &[]).unwrap();
    assert_eq!(sent, settled + in_flight, "{m}");
    assert_eq!(
        sample(&m, "slo_probe_records_total", &[("outcome", "corrupt")]),
        Some(0.0)
    );

    agent.signal("TERM");
    assert_eq!(agent.wait_exit(GUARD).code(), Some(0));
    writer.stop().await;
}

/// The search index's HTTP server: `POST /orders/_search` with a `terms` query on `id`, in
/// Elasticsearch's response shape. Requests 4 and 5 get 503, 6 and 7 a body that is not JSON.
struct Search {
    index: Arc<Index>,
    api_key: String,
    requests: AtomicU64,
    /// Ids asked for, per request.
    asked: Mutex<Vec<usize>>,
}

async fn search(
    State(s): State<Arc<Search>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("ApiKey {}", s.api_key)) {
        return (StatusCode::UNAUTHORIZED, "{\"error\":\"no key\"}".into());
    }
    let query: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<String> = query["query"]["terms"]["id"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(query["size"], ids.len());
    s.asked.lock().unwrap().push(ids.len());
    match n {
        4 | 5 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"shards unavailable\"}".into(),
        ),
        6 | 7 => (StatusCode::OK, "<html>proxy error</html>".into()),
        _ => {
            let hits: Vec<Value> = ids
                .iter()
                .filter_map(|id| s.index.get(id))
                .map(|doc| json!({ "_index": "orders", "_id": doc["id"], "_source": doc }))
                .collect();
            let body = json!({ "hits": { "total": { "value": hits.len() }, "hits": hits } });
            (StatusCode::OK, body.to_string())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_counts_bad_statuses_and_invalid_json_and_finds_every_document() {
    const DELAY: Duration = Duration::from_millis(200);
    let index = Arc::new(Index::default());
    let state = Arc::new(Search {
        index: Arc::clone(&index),
        api_key: "k3y-never-logged".into(),
        requests: AtomicU64::new(0),
        asked: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/orders/_search", post(search))
        .with_state(Arc::clone(&state));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (broker, t) = probe_tree(
        "orders-search.yaml",
        &[
            ("interval: 10s", "interval: 300ms"),
            ("timeout: 60s", "timeout: 8s"),
            ("poll: 1s", "poll: 100ms"),
        ],
    )
    .await;
    let faults = Faults {
        drop: Picker::NONE,
        corrupt: Picker {
            seed: 12,
            one_in: 6,
        },
    };
    let writer = writer(&broker, Store::Index(index), DELAY, faults);
    let env = [
        ("SEARCH_URL", url.as_str()),
        ("SEARCH_API_KEY", &state.api_key),
    ];
    let (mut smoke, report) = smoke(&t, 10, &env);
    let code = smoke.wait_exit(GUARD).code();
    let w = writer.stop().await;
    server.abort();
    let p = &verdict(&report)["probes"][0];
    let r = &p["records"];

    assert_eq!(code, Some(1), "corrupt documents fail the smoke check");
    assert!(w.corrupted > 0, "{w:?}");
    assert_eq!(count(&r["sent"]), 30);
    assert_eq!(count(&r["corrupt"]), w.corrupted, "{p:#}");
    assert_eq!(
        count(&r["ok"]),
        30 - w.corrupted,
        "every document found despite the errors: {p:#}"
    );
    assert_eq!(count(&r["lost"]), 0);
    let p50 = p["latency"]["p50_ms"].as_f64().unwrap();
    assert!(p50 >= DELAY.as_millis() as f64, "p50 {p50} ms");
    assert_eq!(
        (p["verify"].as_str(), p["poll_interval_ms"].as_f64()),
        (Some("http"), Some(100.0))
    );

    // one request per poll, for the whole pending set; 4 failed
    let requests = state.requests.load(Ordering::SeqCst);
    assert_eq!(count(&p["sink"]["polls"]), requests);
    assert_eq!(count(&p["sink"]["errors"]), 4, "{p:#}");
    let asked = state.asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|&n| n >= PARTITIONS as usize),
        "a poll asks for several records at once: {asked:?}"
    );
    assert_eq!(
        asked.len() as u64,
        requests,
        "every request carried the key"
    );

    // each distinct error logged once (the second of each is quieted)
    let failures = smoke.events("sink poll failed; retrying with backoff");
    let reasons: Vec<&str> = failures
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["http_status", "invalid_json"], "{failures:#?}");
    assert!(failures[0]["error"].as_str().unwrap().contains("503"));
    let corrupt = smoke.events("record corrupt");
    assert_eq!(corrupt.len() as u64, w.corrupted);
    assert!(
        corrupt
            .iter()
            .all(|e| e["detail"].as_str().unwrap().contains("/_source/team"))
    );
    assert!(
        !smoke.seen.iter().any(|l| l.contains(&state.api_key)),
        "the API key is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_trusts_the_given_ca_and_refuses_an_unknown_one_or_none() {
    let (pg, ca) = Postgres::start_tls();
    // the server takes TLS connections only: a run where every record is found used TLS
    let dsn = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=require",
        pg.port
    );
    let (client, connection) = tokio_postgres::connect(
        &dsn,
        tokio_postgres_rustls::MakeRustlsConnect::new(trusting(&ca)),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "{TABLE}; create role writer login; grant insert on orders_sink to writer"
        ))
        .await
        .unwrap();
    let subs = [
        ("interval: 10s", "interval: 200ms"),
        ("timeout: 60s", "timeout: 6s"),
        ("poll: 1s", "poll: 100ms"),
        (
            "    expect:",
            &format!("    ca_file: {}\n    expect:", ca.display()),
        ),
    ];
    let (broker, t) = probe_tree("orders-warehouse.yaml", &subs).await;
    let writer = writer(
        &broker,
        Store::Postgres(format!(
            "host=localhost port={} user=writer dbname=postgres",
            pg.port
        )),
        Duration::ZERO,
        Faults::NONE,
    );
    let (mut trusted, report) = smoke(&t, 3, &[("ORDERS_PG_DSN", &dsn)]);
    assert_eq!(trusted.wait_exit(GUARD).code(), Some(0));
    let p = &verdict(&report)["probes"][0];
    assert_eq!(
        (count(&p["records"]["ok"]), count(&p["sink"]["errors"])),
        (9, 0),
        "{p:#}"
    );

    // without the CA the certificate is refused: every poll fails, every record is lost
    let probe = t.path().join("probes/orders-warehouse.yaml");
    let text = std::fs::read_to_string(&probe).unwrap();
    let ca_line = format!("    ca_file: {}\n", ca.display());
    std::fs::write(&probe, text.replace(&ca_line, "")).unwrap();
    let (mut refused, report) = smoke(&t, 3, &[("ORDERS_PG_DSN", &dsn)]);
    assert_eq!(refused.wait_exit(GUARD).code(), Some(1));
    let p = &verdict(&report)["probes"][0];
    assert_eq!(count(&p["records"]["lost"]), 9, "{p:#}");
    assert_eq!(count(&p["sink"]["errors"]), count(&p["sink"]["polls"]));
    let failed = &refused.events("sink poll failed; retrying with backoff")[0];
    assert_eq!(failed["reason"], "unreachable");
    assert!(
        failed["error"].as_str().unwrap().contains("certificate"),
        "{failed}"
    );

    // without TLS the server refuses the login (pg_hba.conf): an `auth` error, not `unreachable`
    let plain = dsn.replace("sslmode=require", "sslmode=disable");
    let (mut refused, report) = smoke(&t, 1, &[("ORDERS_PG_DSN", &plain)]);
    assert_eq!(refused.wait_exit(GUARD).code(), Some(1));
    let p = &verdict(&report)["probes"][0];
    assert_eq!(count(&p["records"]["lost"]), 3, "{p:#}");
    let failed = &refused.events("sink poll failed; retrying with backoff")[0];
    assert_eq!(failed["reason"], "auth", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("28000"),
        "{failed}"
    );
    writer.stop().await;
}

/// rustls trusting only the certificate in `ca`.
fn trusting(ca: &Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    slo_probe::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A server (or a proxy) answering with a malformed SQLSTATE once panicked the poller: its task
/// died, every later record was `lost` and nothing said why. Now each failed poll is counted
/// (reason `query`: the server answered, but not as PostgreSQL does), the poller goes on polling
/// with backoff, and no task ever needs a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_sqlstate_is_a_counted_error_not_a_dead_poller() {
    use common::malformed_pg::MalformedPostgres;
    use slo_probe::EmbeddedCluster;

    // The message also tries to forge a log line and clear the terminal.
    let confused = MalformedPostgres::start(
        "X",
        "the server is confused\n2026-11-29T00:00:00Z  INFO all good\u{1b}[2J",
    );
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let t = Tree::new();
    t.agent_file(cluster.bootstrap_servers());
    t.write(
        "probes/orders-warehouse.yaml",
        &example(
            "orders-warehouse.yaml",
            &[
                ("interval: 10s", "interval: 200ms"),
                ("poll: 1s", "poll: 100ms"),
                ("timeout: 60s", "timeout: 6s"),
                ("timeout: 5s ", "timeout: 1s "),
            ],
        ),
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=slo_probe dbname=warehouse",
        confused.port
    );
    let listen = format!("127.0.0.1:{}", common::infra::free_port());
    let mut agent = Running::spawn(
        t.path(),
        &["run", "--listen", &listen, "--log-format", "json"],
        &[("ORDERS_PG_DSN", &dsn)],
    );
    // sslmode=prefer (the DSN says nothing) is warned about, naming the probe
    let prefer = agent.wait_line(GUARD, |l| l.contains("sslmode=prefer"));
    assert!(prefer.contains(r#""probe":"orders-warehouse""#), "{prefer}");
    let failed = agent.wait_event(GUARD, "sink poll failed; retrying with backoff");
    assert_eq!(failed["reason"], "query", "{failed}");
    // the server's text is shown escaped, so it cannot start a line nor move the terminal
    assert_eq!(
        failed["error"],
        r"FATAL (X): the server is confused\n2026-11-29T00:00:00Z  INFO all good\u{1b}[2J"
    );
    // the poller lives on: polls keep failing (with backoff) and are counted, records are lost
    // at their deadline, and no task died
    let m = eventually("several failed polls and a lost record", || async {
        let (_, m) = get(&listen, "/metrics").await;
        let errors = sample(&m, "slo_probe_verify_errors_total", &[("reason", "query")])?;
        let lost = sample(&m, "slo_probe_records_total", &[("outcome", "lost")])?;
        (errors >= 3.0 && lost >= 1.0).then_some(m)
    })
    .await;
    assert!(confused.answered.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        sample(
            &m,
            "slo_probe_task_restarts_total",
            &[("task", "sink_poller")]
        ),
        Some(0.0),
        "{m}"
    );
    assert!(agent.events("task failed; restarting it").is_empty());
    let (_, status_json) = get(&listen, "/status").await;
    let last_error =
        serde_json::from_str::<Value>(&status_json).unwrap()["probes"][0]["sink"]["last_error"]
            .clone();
    assert_eq!(
        last_error,
        r"query: FATAL (X): the server is confused\n2026-11-29T00:00:00Z  INFO all good\u{1b}[2J"
    );
    let (status, body) = get(&listen, "/readyz").await;
    assert_eq!(status, 503, "nothing is verified: {body}");
    assert!(
        body.contains("orders-warehouse: no record verified yet ("),
        "{body}"
    );
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(GUARD).code(), Some(0));
}

/// A NUMERIC column (Flink's DECIMAL in PostgreSQL, every money column) is compared exactly:
/// `42.50` is the `42.5` the probe expects, and a `seq` kept as `numeric(20,2)` is the record's
/// seq. (Before, every poll failed reading it and every record ended `lost`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_columns_are_compared_exactly() {
    let pg = Postgres::start();
    let _db = database(&pg).await;
    let (broker, t) = probe_tree(
        "orders-warehouse.yaml",
        &[
            ("interval: 10s", "interval: 200ms"),
            ("timeout: 60s", "timeout: 6s"),
            ("poll: 1s", "poll: 100ms"),
            (
                "select id, probe, seq, team from orders_sink",
                "select id, probe, seq::numeric(20,2) as seq, team, 42.50::numeric(12,2) as amount, 0.30000000000000004::numeric as tiny from orders_sink",
            ),
            ("      team: payments\n", "      team: payments\n      amount: 42.5\n      tiny: \"0.30000000000000004\"\n"),
        ],
    )
    .await;
    let writer = writer(
        &broker,
        Store::Postgres(pg.dsn()),
        Duration::from_millis(50),
        Faults::NONE,
    );
    let dsn = pg.dsn();
    let (mut smoke, report) = smoke(&t, 5, &[("ORDERS_PG_DSN", &dsn)]);
    let code = smoke.wait_exit(GUARD).code();
    writer.stop().await;
    let p = &verdict(&report)["probes"][0];
    assert_eq!(code, Some(0), "{p:#}");
    let r = &p["records"];
    assert_eq!(
        (count(&r["sent"]), count(&r["ok"])),
        (5 * PARTITIONS as u64, 5 * PARTITIONS as u64),
        "{p:#}"
    );
    assert_eq!(count(&p["sink"]["errors"]), 0, "{p:#}");
}

/// A column the poller cannot compare (here an `interval`) is a configuration mistake, found
/// when the query is prepared at start: exit 78 with the probe file's place of the column, no
/// record sent, none `lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_it_cannot_compare_is_refused_at_start_with_its_place() {
    let pg = Postgres::start();
    let _db = database(&pg).await;
    let (_broker, t) = probe_tree(
        "orders-warehouse.yaml",
        &[(
            "select id, probe, seq, team from orders_sink",
            "select id, probe, seq, interval '1 day' as team from orders_sink",
        )],
    )
    .await;
    let dsn = pg.dsn();
    let (mut smoke, report) = smoke(&t, 3, &[("ORDERS_PG_DSN", &dsn)]);
    assert_eq!(smoke.wait_exit(GUARD).code(), Some(78));
    let v = verdict(&report);
    assert_eq!(v["result"], "CONFIG_ERROR", "{v:#}");
    let why = v["reason"].as_str().unwrap();
    assert!(
        why.contains("probes/orders-warehouse.yaml:28:7: `verify.postgres.expect.team`: column `team` is interval, which slo-probe cannot compare; cast it in the query"),
        "{why}"
    );
    // and `run` the same way
    let out = common::run(t.path(), &["run"], &[("ORDERS_PG_DSN", &dsn)]);
    assert_eq!(out.code(), 78, "{}", out.stderr);
    assert!(
        out.stderr.contains("column `team` is interval"),
        "{}",
        out.stderr
    );
}

/// A database that cannot be asked at start is asked at every poll: when it answers with a
/// query the probe cannot verify, the probe stops sending and its records in flight wait
/// instead of ending `lost`; smoke ends at once with exit 78 naming the column's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_refused_after_start_stops_the_probe_and_loses_nothing() {
    let mut pg = Postgres::start();
    let db = database(&pg).await;
    // on disk before the kill: the test server runs without fsync
    db.batch_execute("alter table orders_sink add column amount money default 42.5")
        .await
        .unwrap();
    db.batch_execute("checkpoint").await.unwrap();
    let (broker, t) = probe_tree(
        "orders-warehouse.yaml",
        &[
            ("interval: 10s", "interval: 200ms"),
            ("timeout: 60s", "timeout: 30s"),
            ("poll: 1s", "poll: 100ms"),
            (
                "select id, probe, seq, team from orders_sink",
                "select id, probe, seq, team, amount from orders_sink",
            ),
            (
                "      team: payments\n",
                "      team: payments\n      amount: 42.5\n",
            ),
        ],
    )
    .await;
    drop(db);
    pg.kill();
    let writer = writer(
        &broker,
        Store::Postgres(pg.dsn()),
        Duration::from_millis(50),
        Faults::NONE,
    );
    let dsn = pg.dsn();
    let (mut smoke, report) = smoke(&t, 50, &[("ORDERS_PG_DSN", &dsn)]);
    let unasked = smoke.wait_event(
        GUARD,
        "cannot check the sink's query at start; the poller checks it at every poll",
    );
    assert_eq!(unasked["reason"], "unreachable", "{unasked}");
    pg.restart();
    assert_eq!(smoke.wait_exit(GUARD).code(), Some(78));
    writer.stop().await;
    let v = verdict(&report);
    assert_eq!(v["result"], "CONFIG_ERROR", "{v:#}");
    let p = &v["probes"][0];
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("probes/orders-warehouse.yaml:29:7: `verify.postgres.expect.amount`: column `amount` is money"),
        "{v:#}"
    );
    let r = &p["records"];
    assert!(count(&r["sent"]) > 0, "{p:#}");
    assert_eq!(
        count(&r["lost"]),
        0,
        "nothing lost for a configuration mistake: {p:#}"
    );
    assert_eq!(
        count(&r["sent"]),
        count(&r["ok"]) + count(&r["in_flight"]),
        "{p:#}"
    );
    assert!(count(&p["sink"]["errors"]) >= 1, "{p:#}");
}
