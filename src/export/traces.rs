//! OTLP spans, two per record, following OpenTelemetry's messaging conventions for Kafka:
//!
//! - `send {topic}` (PRODUCER): scheduled send to the broker's acknowledgement. Its context is
//!   exactly the one written into the record's `traceparent` (same trace id and span id).
//! - `process {topic}` (CONSUMER): the verification, a child of the producer span and linked to
//!   it; for a lost record it spans scheduled send to deadline, with error status and
//!   `error.type=lost`.
//!
//! Spans are built when a record reaches its final outcome, with the real timestamps, straight
//! as `SpanData`: the SDK's tracer would need the same ids forced on it and its batch processor
//! neither reports what it drops nor lets the probe loop avoid its locks. Here the probe only
//! `try_send`s into a bounded queue (never blocks); one task exports batches with the OTLP
//! exporter. Spans that do not fit in the queue or whose export fails are dropped and counted
//! (`slo_probe_spans_dropped_total`); the probe's outcomes never depend on the collector.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{OtlpProtocol, SinkKind, TracingConfig};
use crate::outcome::{Finished, Outcome, Reading};
use crate::record::Origin;

/// Spans waiting for export; beyond this they are dropped (a collector down for a while must
/// not grow the agent).
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// How long spans wait for a batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Who is exporting: the resource of every span.
pub struct Identity<'a> {
    pub site: &'a str,
    pub instance: &'a str,
}

/// The agent's span pipeline. Cheap to share; a disabled one does nothing.
pub struct Spans {
    queue: Option<mpsc::Sender<SpanData>>,
    dropped: IntCounter,
    scope: InstrumentationScope,
}

/// The export task; finish it with [`Exporter::shutdown`] after the last span was handed over.
pub struct Exporter {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Exporter {
    /// Exports what is queued (each request bounded by the exporter's timeout) and stops.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// One record's facts at its final outcome, as spans need them.
pub struct RecordSpan<'a> {
    /// Probe name and agent instance (the Kafka clients' ids derive from it).
    pub origin: &'a Origin,
    pub topic: &'a str,
    /// The topic records are read back from, or the kind of sink they are looked up in.
    pub verify_topic: &'a str,
    /// The sink (`postgres`, `http`) when the record was looked up there, not read back.
    pub sink: Option<SinkKind>,
    pub finished: &'a Finished,
}

impl Spans {
    pub fn disabled(dropped: IntCounter) -> Spans {
        Spans {
            queue: None,
            dropped,
            scope: scope(),
        }
    }

    /// Starts the export task on the current runtime. Errors name what is wrong with the
    /// configuration (e.g. an endpoint that is not a URL).
    pub fn start(
        cfg: &TracingConfig,
        who: Identity<'_>,
        dropped: IntCounter,
    ) -> Result<(Spans, Exporter), String> {
        crate::util::tls::install_crypto_provider();
        let mut exporter = build_exporter(cfg)?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_attributes([
                    KeyValue::new("service.name", "slo-probe"),
                    KeyValue::new("service.instance.id", who.instance.to_string()),
                    KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                    KeyValue::new("slo_probe.site", who.site.to_string()),
                ])
                .build(),
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        let task = tokio::spawn(export_loop(exporter, rx, stop.clone(), dropped.clone()));
        Ok((
            Spans {
                queue: Some(tx),
                dropped,
                scope: scope(),
            },
            Exporter { task, stop },
        ))
    }

    /// Queues the spans of a settled record (when its trace is sampled). Never blocks.
    pub fn record(&self, r: &RecordSpan<'_>) {
        let Some(queue) = &self.queue else {
            return;
        };
        let f = r.finished;
        if !f.sampled {
            return;
        }
        for span in self.spans_of(r) {
            if queue.try_send(span).is_err() {
                self.dropped.inc();
            }
        }
    }

    fn spans_of(&self, r: &RecordSpan<'_>) -> Vec<SpanData> {
        let f = r.finished;
        let scheduled = UNIX_EPOCH + Duration::from_nanos(f.scheduled_at_ns);
        let settled = scheduled + f.since_scheduled;
        let producer_cx = SpanContext::new(
            f.trace_id,
            f.span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let common = |operation: &'static str, name: &'static str, topic: &str| {
            let role = if operation == "send" {
                "producer"
            } else {
                "consumer"
            };
            let mut a = vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", operation),
                KeyValue::new("messaging.operation.name", name),
                KeyValue::new("messaging.destination.name", topic.to_string()),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    f.partition.to_string(),
                ),
                KeyValue::new("messaging.kafka.message.key", f.id.hyphenated().to_string()),
                KeyValue::new(
                    "messaging.client.id",
                    format!("slo-probe-{}-{role}", r.origin.instance),
                ),
                KeyValue::new("slo_probe.probe", r.origin.probe.clone()),
                KeyValue::new("slo_probe.outcome", f.outcome.as_str()),
                KeyValue::new("slo_probe.record_id", f.id.hyphenated().to_string()),
                KeyValue::new("slo_probe.seq", f.seq as i64),
            ];
            if let Some(offset) = f.offset {
                a.push(KeyValue::new("messaging.kafka.offset", offset));
            }
            if let Some(l) = f.latency {
                a.push(KeyValue::new("slo_probe.latency_ms", l.as_secs_f64() * 1e3));
            }
            a
        };
        // Error status with the reason's sentence (the failed assertion of a corrupt record),
        // `error.type` the outcome and `slo_probe.reason` the reason's kind.
        let error = |kind: &str, attrs: &mut Vec<KeyValue>| {
            attrs.push(KeyValue::new("error.type", kind.to_string()));
            let detail = match &f.reason {
                Some(r) => {
                    attrs.push(KeyValue::new("slo_probe.reason", r.kind));
                    format!("{kind}: {}", r.detail)
                }
                None => kind.to_string(),
            };
            Status::error(detail)
        };
        // The producer span: until the acknowledgement, or until the outcome when there was none.
        let mut send_attrs = common("send", "send", r.topic);
        let mut send_status = Status::Ok;
        if f.outcome == Outcome::SendFailed {
            send_status = error("send_failed", &mut send_attrs);
        }
        let send_end = f.acked_after.map_or(settled, |a| scheduled + a);
        let send = self.span(
            producer_cx.clone(),
            SpanId::INVALID,
            SpanKind::Producer,
            format!("send {}", r.topic),
            (scheduled, send_end),
            send_attrs,
            SpanLinks::default(),
            send_status,
        );
        if f.outcome == Outcome::SendFailed {
            return vec![send];
        }
        // The verification: a child of the producer span, and linked to it.
        let mut attrs = common("process", "process", r.verify_topic);
        if let Some(sink) = r.sink {
            // Found by a sink poll: what was queried, not a topic.
            attrs.retain(|kv| {
                !kv.key.as_str().starts_with("messaging.")
                    || kv.key.as_str() == "messaging.kafka.offset"
            });
            attrs.push(KeyValue::new("slo_probe.sink", sink.as_str()));
            if let Some(db) = sink.db_system() {
                attrs.push(KeyValue::new("db.system.name", db));
            }
        }
        let process_name = match r.sink {
            Some(sink) => format!("verify {}", sink.as_str()),
            None => format!("process {}", r.verify_topic),
        };
        let (status, start) = match f.outcome {
            Outcome::Ok => (Status::Ok, settled),
            Outcome::Corrupt => (error("corrupt", &mut attrs), settled),
            _ => (error("lost", &mut attrs), scheduled),
        };
        let mut links = SpanLinks::default();
        links.links.push(Link::with_context(producer_cx));
        let process_cx = SpanContext::new(
            f.trace_id,
            f.verify_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut process = self.span(
            process_cx,
            f.span_id,
            SpanKind::Consumer,
            process_name,
            (start, settled),
            attrs,
            links,
            status,
        );
        process.events = hop_events(f);
        if let Some(job) = job_event(f, settled) {
            process.events.events.push(job);
        }
        vec![send, process]
    }

    #[allow(clippy::too_many_arguments)]
    fn span(
        &self,
        cx: SpanContext,
        parent: SpanId,
        kind: SpanKind,
        name: String,
        (start, end): (SystemTime, SystemTime),
        attributes: Vec<KeyValue>,
        links: SpanLinks,
        status: Status,
    ) -> SpanData {
        SpanData {
            span_context: cx,
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: kind,
            name: Cow::Owned(name),
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// What the job was doing while a record that is not `ok` was in flight, as an event of its
/// verification span: at the first poll that saw the job not running (else at the outcome),
/// with the job's state, restarts, failure and checkpoints.
fn job_event(f: &Finished, settled: SystemTime) -> Option<Event> {
    let job = f.job.as_ref()?;
    let when = job.not_running.map_or(settled, |(from, _)| {
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(from)
    });
    let mut attrs = vec![
        KeyValue::new("slo_probe.flink_job", job.job.clone()),
        KeyValue::new(
            "slo_probe.job.state",
            job.state.map_or("UNKNOWN", |s| s.as_str()),
        ),
        KeyValue::new("slo_probe.job.restarts", job.restarts as i64),
        KeyValue::new("slo_probe.job.checkpoints", job.checkpoints as i64),
        KeyValue::new("slo_probe.job.summary", job.to_string()),
    ];
    if let Some(e) = &job.exception {
        attrs.push(KeyValue::new("exception.message", e.clone()));
    }
    if let Some(u) = &job.unknown {
        attrs.push(KeyValue::new("slo_probe.job.poll_error", u.clone()));
    }
    Some(Event::new("job", when, attrs, 0))
}

/// A record's hops as events of its verification span, each at the real time its hop ended
/// (the job's or the sink's timestamp, on their clocks), with its signed duration: a hop that
/// came out negative stays negative, marked `slo_probe.clock_skew` (beyond the resolution of
/// its end) or `slo_probe.hop.within_resolution`. A record whose latency could not be split
/// says why instead.
fn hop_events(f: &Finished) -> SpanEvents {
    let mut events = SpanEvents::default();
    match &f.hops {
        Some(Ok(hops)) => {
            let mut at = i128::from(f.scheduled_at_ns);
            for (hop, ns, mark) in hops.iter() {
                at += i128::from(ns);
                let when = UNIX_EPOCH + Duration::from_nanos(u64::try_from(at).unwrap_or(0));
                let mut attrs = vec![
                    KeyValue::new("slo_probe.hop", hop.as_str()),
                    KeyValue::new("slo_probe.hop.duration_ns", ns),
                    KeyValue::new("slo_probe.hop.ends_at", mark.as_str()),
                ];
                match hops.reading(hop) {
                    Some(Reading::Skewed) => {
                        attrs.push(KeyValue::new("slo_probe.clock_skew", true))
                    }
                    Some(Reading::WithinResolution) => {
                        attrs.push(KeyValue::new("slo_probe.hop.within_resolution", true))
                    }
                    _ => {}
                }
                let name = format!("hop {}", hop.as_str());
                events.events.push(Event::new(name, when, attrs, 0));
            }
        }
        Some(Err(why)) => {
            let settled = UNIX_EPOCH + Duration::from_nanos(f.scheduled_at_ns) + f.since_scheduled;
            let attrs = vec![KeyValue::new("slo_probe.hops.unsplit", why.to_string())];
            events
                .events
                .push(Event::new("hops unsplit", settled, attrs, 0));
        }
        None => {}
    }
    events
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("slo-probe")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// The protocol: the agent file's, else `OTEL_EXPORTER_OTLP_{TRACES_,}PROTOCOL`, else gRPC
/// (the design's example endpoint is a collector's gRPC port, 4317).
fn protocol(cfg: &TracingConfig) -> Result<OtlpProtocol, String> {
    if let Some(p) = cfg.protocol {
        return Ok(p);
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(v) = std::env::var(var) {
            return OtlpProtocol::parse(&v)
                .ok_or_else(|| format!("{var} must be `grpc` or `http/protobuf`, got `{v}`"));
        }
    }
    Ok(OtlpProtocol::Grpc)
}

fn build_exporter(cfg: &TracingConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match protocol(cfg)? {
        OtlpProtocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(t) = cfg.timeout {
                b = b.with_timeout(t);
            }
            if !cfg.headers.is_empty() {
                let mut md = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.to_lowercase().as_bytes())
                        .map_err(|_| {
                            format!("tracing.headers: `{k}` is not a valid header name")
                        })?;
                    let value = v
                        .parse()
                        .map_err(|_| format!("tracing.headers.{k}: not a valid header value"))?;
                    md.insert(key, value);
                }
                b = b.with_metadata(md);
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = &cfg.endpoint {
                b = b.with_endpoint(http_traces_url(e));
            }
            if let Some(t) = cfg.timeout {
                b = b.with_timeout(t);
            }
            if !cfg.headers.is_empty() {
                b = b.with_headers(cfg.headers.clone().into_iter().collect());
            }
            b.build()
        }
    };
    built.map_err(|e| format!("cannot set up OTLP span export: {e}"))
}

/// An HTTP endpoint given as a collector's base URL (`http://collector:4318`, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` would be) gets the traces path; a URL with a path is used as is.
fn http_traces_url(endpoint: &str) -> String {
    let after_scheme = endpoint.find("://").map_or(0, |i| i + 3);
    match endpoint[after_scheme..].find('/') {
        Some(i) if endpoint[after_scheme + i..] != *"/" => endpoint.to_string(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    stop: CancellationToken,
    dropped: IntCounter,
) {
    let send = Batches {
        exporter,
        dropped,
        quiet: crate::util::quiet::Quiet::default(),
    };
    let mut batch = Vec::with_capacity(BATCH);
    // A batch goes when full, or FLUSH_EVERY after its first span.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            got = rx.recv() => match got {
                Some(s) => {
                    batch.push(s);
                    due.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_EVERY);
                    if batch.len() < BATCH {
                        continue;
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
        }
        due = None;
        send.export(std::mem::take(&mut batch)).await;
    }
    // Stopping: what is queued still goes out.
    rx.close();
    while let Some(s) = rx.recv().await {
        batch.push(s);
        if batch.len() == BATCH {
            send.export(std::mem::take(&mut batch)).await;
        }
    }
    if !batch.is_empty() {
        send.export(batch).await;
    }
    let _ = send.exporter.shutdown();
}

struct Batches {
    exporter: opentelemetry_otlp::SpanExporter,
    dropped: IntCounter,
    quiet: crate::util::quiet::Quiet,
}

impl Batches {
    async fn export(&self, batch: Vec<SpanData>) {
        let n = batch.len() as u64;
        if let Err(e) = self.exporter.export(batch).await {
            self.dropped.inc_by(n);
            if self.quiet.allow("export") {
                tracing::warn!(spans = n, error = %e, "OTLP export failed; spans dropped (repeats are quiet for a minute)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_without_a_path_get_the_traces_path() {
        for (given, used) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c.example", "https://c.example/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
            (
                "https://gw.example/otlp/v1/traces",
                "https://gw.example/otlp/v1/traces",
            ),
        ] {
            assert_eq!(http_traces_url(given), used, "{given}");
        }
    }

    #[test]
    fn a_record_found_in_a_sink_gets_a_verify_span_without_topic_attributes() {
        let f = Finished {
            id: uuid::Uuid::now_v7(),
            partition: 1,
            seq: 4,
            trace_id: opentelemetry::trace::TraceId::from_bytes([3; 16]),
            span_id: SpanId::from_bytes([7; 8]),
            sampled: true,
            scheduled_at_ns: 1_700_000_000_000_000_000,
            acked_after: Some(Duration::from_millis(2)),
            since_scheduled: Duration::from_millis(450),
            offset: Some(12),
            read: None,
            outcome: Outcome::Ok,
            latency: Some(Duration::from_millis(450)),
            reason: None,
            hops: None,
            job: None,
        };
        let origin = Origin {
            probe: "orders-warehouse".into(),
            instance: "i".into(),
            site: "s".into(),
        };
        let spans = Spans::disabled(IntCounter::new("d", "d").unwrap());
        let span = |sink: Option<SinkKind>| {
            let r = RecordSpan {
                origin: &origin,
                topic: "synthetic-sla",
                verify_topic: sink.map_or("synthetic-sla", SinkKind::as_str),
                sink,
                finished: &f,
            };
            spans.spans_of(&r).pop().unwrap()
        };
        let keys = |s: &SpanData| -> Vec<String> {
            s.attributes.iter().map(|kv| kv.key.to_string()).collect()
        };
        let sink = span(Some(SinkKind::Postgres));
        assert_eq!(sink.name, "verify postgres");
        assert_eq!(sink.parent_span_id, f.span_id);
        let attrs = keys(&sink);
        assert!(attrs.contains(&"db.system.name".to_string()), "{attrs:?}");
        assert!(attrs.contains(&"slo_probe.sink".to_string()));
        assert!(!attrs.contains(&"messaging.destination.name".to_string()));
        let kafka = span(None);
        assert_eq!(kafka.name, "process synthetic-sla");
        assert!(keys(&kafka).contains(&"messaging.destination.name".to_string()));
    }

    #[test]
    fn hops_are_events_of_the_verification_at_their_real_times_negative_ones_marked() {
        use crate::outcome::{Hop, Hops, Mark, Unsplit};
        const MS: i64 = 1_000_000;
        let t0 = 1_700_000_000_000_000_000u64;
        let mut hops = Hops::default();
        hops.set(Hop::Produce, 2 * MS, Mark::Acknowledged, 0);
        // a job clock 50 ms behind: its 30 ms read as -20 ms, the read 50 ms longer
        hops.set(Hop::Pipeline, -20 * MS, Mark::JobTimestamp, 1_000);
        hops.set(Hop::Read, 58 * MS, Mark::ReadBack, 0);
        let mut f = crate::testing::finished(3, Outcome::Ok, 40);
        f.scheduled_at_ns = t0;
        f.hops = Some(Ok(hops));
        let events = hop_events(&f);
        let got: Vec<(String, i128)> = events
            .iter()
            .map(|e| {
                let at = e.timestamp.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
                (e.name.to_string(), (at - i128::from(t0)) / i128::from(MS))
            })
            .collect();
        assert_eq!(
            got,
            [
                ("hop produce".to_string(), 2),
                ("hop pipeline".to_string(), -18),
                ("hop read".to_string(), 40),
            ],
            "each at the time its hop ended, on the clock that said so: the last at the verification"
        );
        let attrs = |i: usize| -> Vec<String> {
            events[i]
                .attributes
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect()
        };
        assert_eq!(
            attrs(1),
            [
                "slo_probe.hop=pipeline",
                "slo_probe.hop.duration_ns=-20000000",
                "slo_probe.hop.ends_at=hop_timestamp",
                "slo_probe.clock_skew=true",
            ]
        );
        assert_eq!(attrs(2).len(), 3, "a positive hop is not marked");
        // negative within the resolution of its end (a truncated CreateTime): said so
        let mut within = Hops::default();
        within.set(Hop::Produce, 2 * MS, Mark::Acknowledged, 0);
        within.set(Hop::Pipeline, -MS / 2, Mark::CreateTime, MS);
        within.set(Hop::Read, 38 * MS + MS / 2, Mark::ReadBack, 0);
        f.hops = Some(Ok(within));
        let events = hop_events(&f);
        let last = events[1].attributes.last().unwrap();
        assert_eq!(
            format!("{}={}", last.key, last.value),
            "slo_probe.hop.within_resolution=true"
        );
        f.hops = Some(Err(Unsplit::NotAcknowledged));
        let unsplit = hop_events(&f);
        assert_eq!(unsplit.len(), 1);
        assert_eq!(unsplit[0].name, "hops unsplit");
        // a lost record has none
        f.hops = None;
        assert!(hop_events(&f).is_empty());
    }
}
