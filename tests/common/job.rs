//! A strict orders job, standing in for a Flink job that reads `orders` in a fixed shape and
//! drops anything else (no Flink here): it parses each record strictly (an unknown or missing
//! field, a wrong type: dropped, as a strict job would), enriches it (`status: ENRICHED`) and
//! writes it to the output topic without the slo-probe headers and without a key, so the
//! probe must find each record by a field of its value. Records a seeded picker chooses get a
//! wrong `amount` (the job's bug a canary must catch).
//!
//! Formats: JSON in, JSON out; or Avro in the Confluent wire format in (decoded with the writer
//! schema the registry gives for the id in each record) and Avro out with the job's own,
//! richer schema (`OUTPUT_SCHEMA`, registered under `<output topic>-value`).

use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use apache_avro::types::Value as Avro;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::registry::StandInSchemaRegistry;
use super::relay::{Picker, from_beginning};

/// What the job reads: exactly these fields (a JSON template that adds or omits one is dropped).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub amount: f64,
    pub currency: String,
    pub created_at: serde_json::Value,
    pub sequence: u64,
    #[serde(default)]
    pub coupon: Option<String>,
    pub synthetic: bool,
}

/// The job's output: the order, enriched.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Enriched {
    pub order_id: String,
    pub customer_id: String,
    pub amount: f64,
    pub currency: String,
    pub sequence: u64,
    pub synthetic: bool,
    pub status: String,
}

/// The Avro schema of the job's output (`orders-enriched`).
pub const OUTPUT_SCHEMA: &str = r#"{
  "type": "record", "name": "EnrichedOrder", "namespace": "com.example.orders",
  "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "customer_id", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "currency", "type": "string"},
    {"name": "sequence", "type": "long"},
    {"name": "synthetic", "type": "boolean"},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "ENRICHED"]}}
  ]
}"#;

/// How the job reads and writes.
#[derive(Clone)]
pub enum Format {
    Json,
    /// Confluent-framed Avro both ways; the output schema registered under `output_id`.
    Avro {
        registry: String,
        output_id: u32,
    },
}

/// What the job did, for exact assertions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub seen: u64,
    /// Not in the job's shape: not forwarded.
    pub dropped: u64,
    pub forwarded: u64,
    /// Forwarded with a wrong amount.
    pub wrong: u64,
}

pub struct StrictJob {
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl StrictJob {
    /// Starts the job `from` -> `to` (both with `partitions` partitions) on one cluster. For
    /// Avro, registers [`OUTPUT_SCHEMA`] in `registry` first.
    pub fn start(
        bootstrap: &str,
        (from, to): (&str, &str),
        partitions: i32,
        registry: Option<&StandInSchemaRegistry>,
        picker: Picker,
    ) -> StrictJob {
        let format = match registry {
            None => Format::Json,
            Some(r) => Format::Avro {
                registry: r.url(),
                output_id: r.register(&format!("{to}-value"), OUTPUT_SCHEMA),
            },
        };
        let consumer = from_beginning(bootstrap, from, partitions, "strict-orders-job");
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "0")
            .create()
            .unwrap();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            consumer,
            producer,
            to.to_string(),
            format,
            picker,
            Arc::clone(&tally),
            stop.clone(),
        ));
        StrictJob { tally, stop, task }
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    pub async fn stop(self) -> Tally {
        self.stop.cancel();
        self.task.await.unwrap();
        self.tally.lock().unwrap().clone()
    }
}

async fn run(
    consumer: StreamConsumer,
    producer: FutureProducer,
    to: String,
    format: Format,
    picker: Picker,
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
) {
    let out_schema = Schema::parse_str(OUTPUT_SCHEMA).unwrap();
    let http = super::http_client();
    let mut writers: std::collections::HashMap<u32, Schema> = Default::default();
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.recv() => m.unwrap().detach(),
        };
        tally.lock().unwrap().seen += 1;
        let value = m.payload().unwrap_or_default();
        let order = match &format {
            Format::Json => serde_json::from_slice::<Order>(value).ok(),
            Format::Avro { registry, .. } => {
                decode_avro(value, registry, &http, &mut writers).await
            }
        };
        let Some(order) = order else {
            tally.lock().unwrap().dropped += 1;
            continue;
        };
        let wrong = picker.picks(m.partition(), order.sequence);
        let enriched = Enriched {
            amount: if wrong {
                order.amount + 1.0
            } else {
                order.amount
            },
            order_id: order.order_id,
            customer_id: order.customer_id,
            currency: order.currency,
            sequence: order.sequence,
            synthetic: order.synthetic,
            status: "ENRICHED".into(),
        };
        let bytes = match &format {
            Format::Json => serde_json::to_vec(&enriched).unwrap(),
            Format::Avro { output_id, .. } => {
                let value = Avro::Record(vec![
                    ("order_id".into(), Avro::String(enriched.order_id.clone())),
                    ("customer_id".into(), Avro::String(enriched.customer_id)),
                    ("amount".into(), Avro::Double(enriched.amount)),
                    ("currency".into(), Avro::String(enriched.currency)),
                    ("sequence".into(), Avro::Long(enriched.sequence as i64)),
                    ("synthetic".into(), Avro::Boolean(enriched.synthetic)),
                    ("status".into(), Avro::Enum(1, "ENRICHED".into())),
                ]);
                let mut out = vec![0];
                out.extend_from_slice(&output_id.to_be_bytes());
                let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&out_schema)
                    .build()
                    .unwrap();
                writer.write_value_ref(&mut out, &value).unwrap();
                out
            }
        };
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&to)
            .partition(m.partition())
            .payload(&bytes);
        producer
            .send(record, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let mut t = tally.lock().unwrap();
        t.forwarded += 1;
        t.wrong += u64::from(wrong);
    }
}

/// A Confluent-framed Avro order, decoded with its writer schema from the registry (`None`:
/// not one the job can read).
async fn decode_avro(
    value: &[u8],
    registry: &str,
    http: &reqwest::Client,
    writers: &mut std::collections::HashMap<u32, Schema>,
) -> Option<Order> {
    let [0, a, b, c, d, rest @ ..] = value else {
        return None;
    };
    let id = u32::from_be_bytes([*a, *b, *c, *d]);
    if let std::collections::hash_map::Entry::Vacant(slot) = writers.entry(id) {
        let body = http
            .get(format!("{registry}/schemas/ids/{id}"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
        slot.insert(Schema::parse_str(doc["schema"].as_str()?).ok()?);
    }
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&writers[&id])
        .build()
        .ok()?;
    let decoded = reader.read_value(&mut &rest[..]).ok()?;
    let json = serde_json::Value::try_from(decoded).ok()?;
    serde_json::from_value(json).ok()
}
