//! A sink writer, standing in for the end of a pipeline (a JDBC sink, an indexer): consumes the
//! probe topic and writes each record, after a known delay, as a row of a PostgreSQL table or a
//! document of an in-memory search index, dropping or corrupting the records seeded [`Picker`]s
//! pick, and stopping altogether when told to. A write that fails (the database is down) is
//! retried until it succeeds. Into [`TABLE_STAMPED`] it also writes the record's Kafka
//! timestamp, as Kafka Connect's JDBC sink does with an `InsertField` transform's
//! `timestamp.field`, and the database stamps each row's `written_at` as it inserts it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::relay::{Picker, from_beginning};

/// The table the writer fills, as the example probe `probes/sinks/orders-warehouse.yaml` reads it.
pub const TABLE: &str =
    "create table orders_sink (id uuid primary key, probe text, seq bigint, team text)";

/// The table of the hop tests: each row with the Kafka timestamp of the record it came from
/// (`kafka_ts`) and the database's clock when it was inserted (`written_at`).
pub const TABLE_STAMPED: &str = "create table orders_stamped (id uuid primary key, probe text, seq bigint, team text, kafka_ts timestamptz, written_at timestamptz not null default clock_timestamp())";

#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Records not written.
    pub drop: Picker,
    /// Records written with a wrong `team` ("wrong"), unless dropped.
    pub corrupt: Picker,
}

impl Faults {
    pub const NONE: Faults = Faults {
        drop: Picker::NONE,
        corrupt: Picker::NONE,
    };
}

/// The search index of the HTTP sink tests: documents by id.
#[derive(Default)]
pub struct Index(Mutex<BTreeMap<String, serde_json::Value>>);

impl Index {
    pub fn get(&self, id: &str) -> Option<serde_json::Value> {
        self.0.lock().unwrap().get(id).cloned()
    }
}

#[derive(Clone)]
pub enum Store {
    /// Rows of `orders_sink` in the database at this connection string.
    Postgres(String),
    /// Rows of `orders_stamped` ([`TABLE_STAMPED`]) in the database at this connection string.
    PostgresStamped(String),
    Index(Arc<Index>),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteTally {
    pub seen: u64,
    pub written: u64,
    pub dropped: u64,
    pub corrupted: u64,
    /// Writes that failed and were retried.
    pub retries: u64,
    /// Records not written because the writer was stopped.
    pub stopped: u64,
}

pub struct Writer {
    tally: Arc<Mutex<WriteTally>>,
    /// Stops writing (records read afterwards are counted `stopped`), as a crashed sink job.
    halt: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct Row {
    id: uuid::Uuid,
    probe: String,
    seq: i64,
    team: String,
    /// The Kafka timestamp of the record it came from.
    kafka_ts: Option<std::time::SystemTime>,
    /// Corrupted: counted when written.
    wrong: bool,
}

impl Writer {
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        store: Store,
        delay: Duration,
        faults: Faults,
    ) -> Writer {
        let consumer = from_beginning(bootstrap, topic, partitions, "test-writer");
        let tally = Arc::new(Mutex::new(WriteTally::default()));
        let (halt, stop) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(run(
            consumer,
            store,
            delay,
            faults,
            Arc::clone(&tally),
            halt.clone(),
            stop.clone(),
        ));
        Writer {
            tally,
            halt,
            stop,
            task,
        }
    }

    pub fn tally(&self) -> WriteTally {
        self.tally.lock().unwrap().clone()
    }

    /// The writer stops writing: records still queued and read later are never written.
    pub fn halt(&self) {
        self.halt.cancel();
    }

    pub async fn stop(self) -> WriteTally {
        self.stop.cancel();
        self.task.await.unwrap();
        self.tally.lock().unwrap().clone()
    }
}

async fn connect(dsn: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(client)
}

async fn run(
    consumer: StreamConsumer,
    store: Store,
    delay: Duration,
    faults: Faults,
    tally: Arc<Mutex<WriteTally>>,
    halt: CancellationToken,
    stop: CancellationToken,
) {
    let mut queue: VecDeque<(Instant, Row)> = VecDeque::new();
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.recv() => {
                // a broker going away at the end of a test is not the writer's concern
                let Ok(m) = m else { continue };
                let envelope: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap()).unwrap();
                let seq = envelope["seq"].as_u64().unwrap();
                let mut t = tally.lock().unwrap();
                t.seen += 1;
                if halt.is_cancelled() {
                    t.stopped += 1;
                    continue;
                }
                if faults.drop.picks(m.partition(), seq) {
                    t.dropped += 1;
                    continue;
                }
                let wrong = faults.corrupt.picks(m.partition(), seq);
                let row = Row {
                    id: envelope["id"].as_str().unwrap().parse().unwrap(),
                    probe: envelope["probe"].as_str().unwrap().to_string(),
                    seq: seq as i64,
                    team: if wrong { "wrong".into() } else { envelope["tags"]["team"].as_str().unwrap_or_default().to_string() },
                    kafka_ts: m.timestamp().to_millis().map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms as u64)),
                    wrong,
                };
                queue.push_back((Instant::now() + delay, row));
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if halt.is_cancelled() {
                    let n = queue.len() as u64;
                    queue.clear();
                    tally.lock().unwrap().stopped += n;
                    continue;
                }
                let (_, row) = queue.front().unwrap();
                let written = match &store {
                    Store::Index(index) => {
                        let doc = serde_json::json!({
                            "id": row.id, "probe": row.probe, "seq": row.seq, "team": row.team,
                        });
                        index.0.lock().unwrap().insert(row.id.to_string(), doc);
                        true
                    }
                    Store::Postgres(dsn) | Store::PostgresStamped(dsn) => {
                        if client.as_ref().is_none_or(|c| c.is_closed()) {
                            client = connect(dsn).await;
                        }
                        let stamped = matches!(store, Store::PostgresStamped(_));
                        match &client {
                            Some(c) if stamped => c
                                .execute(
                                    "insert into orders_stamped (id, probe, seq, team, kafka_ts) values ($1, $2, $3, $4, $5) on conflict do nothing",
                                    &[&row.id, &row.probe, &row.seq, &row.team, &row.kafka_ts],
                                )
                                .await
                                .is_ok(),
                            Some(c) => c
                                .execute(
                                    "insert into orders_sink (id, probe, seq, team) values ($1, $2, $3, $4) on conflict do nothing",
                                    &[&row.id, &row.probe, &row.seq, &row.team],
                                )
                                .await
                                .is_ok(),
                            None => false,
                        }
                    }
                };
                if written {
                    let mut t = tally.lock().unwrap();
                    t.written += 1;
                    t.corrupted += u64::from(row.wrong);
                    queue.pop_front();
                } else {
                    // The database is down: retry this write (and keep the order) shortly.
                    tally.lock().unwrap().retries += 1;
                    client = None;
                    if let Some((at, _)) = queue.front_mut() {
                        *at = Instant::now() + Duration::from_millis(100);
                    }
                }
            }
        }
    }
}
