//! The synthetic record: key, versioned JSON envelope with digest, headers, W3C trace context;
//! and the checks that tell an intact record from a corrupted or foreign one.
//!
//! Wire format (version 1):
//! - key: the record id (UUID v7, hyphenated text);
//! - value: `{"v":1,"id","probe","instance","site","partition","seq","scheduled_at_ns","tags",
//!   "payload","digest"}` where `digest` is the lowercase hex SHA-256 of the same JSON object
//!   without the `digest` field, serialised compactly with the fields in that order;
//! - headers: `traceparent` (and `tracestate` when not empty), `slo-probe-id`,
//!   `slo-probe-probe`, `slo-probe-instance`, `slo-probe-seq`, and one header per tag.
//!
//! With a `record` section the key and value are the pipeline's own format instead ([`shape`]:
//! a JSON template, or Avro); the headers are the same.

pub mod avro;
pub mod shape;

use std::collections::BTreeMap;
use std::fmt;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use rdkafka::message::{BorrowedHeaders, Header, Message, OwnedHeaders};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use shape::{Fill, Shape};

pub const ENVELOPE_VERSION: u64 = 1;

/// Header names written on every record.
pub mod header {
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
    pub const ID: &str = "slo-probe-id";
    pub const PROBE: &str = "slo-probe-probe";
    pub const INSTANCE: &str = "slo-probe-instance";
    pub const SEQ: &str = "slo-probe-seq";
}

/// Tags become headers; these names are taken.
pub fn is_reserved_header(name: &str) -> bool {
    name == header::TRACEPARENT || name == header::TRACESTATE || name.starts_with("slo-probe-")
}

/// Which agent and probe a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The probe's name.
    pub probe: String,
    /// The agent instance (unique per process start).
    pub instance: String,
    /// The agent's site.
    pub site: String,
}

/// The envelope without its digest: what the digest covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    pub v: u64,
    pub id: Uuid,
    pub probe: String,
    pub instance: String,
    pub site: String,
    pub partition: i32,
    pub seq: u64,
    pub scheduled_at_ns: u64,
    pub tags: BTreeMap<String, String>,
    pub payload: String,
}

/// The digest field of an envelope, read on its own (the body ignores it): cheaper than
/// `#[serde(flatten)]`, which buffers every field first.
#[derive(Deserialize)]
struct DigestField<'a> {
    #[serde(borrow)]
    digest: std::borrow::Cow<'a, str>,
}

impl Body {
    fn digest(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).expect("envelope serialises");
        Sha256::digest(&json).into()
    }

    /// The envelope bytes: the body's JSON with the digest appended as the last field.
    pub fn encode(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(self).expect("envelope serialises");
        let digest = hex::encode(Sha256::digest(&json));
        json.pop(); // the closing brace
        json.extend_from_slice(b",\"digest\":\"");
        json.extend_from_slice(digest.as_bytes());
        json.extend_from_slice(b"\"}");
        json
    }
}

/// A record ready to hand to the producer.
pub struct Outgoing {
    /// The record id (UUID v7).
    pub id: Uuid,
    /// The key sent.
    pub key: String,
    /// The value sent.
    pub value: Vec<u8>,
    /// The headers sent.
    pub headers: OwnedHeaders,
    /// The context written into `traceparent`; the verifier expects its trace id back.
    pub span_context: SpanContext,
    /// The envelope's fields (kept to check what comes back).
    pub body: Body,
    /// Why the record cannot be sent (its shape could not be encoded: a schema id not known
    /// yet); it still counts, as `send_failed`.
    pub unsendable: Option<String>,
}

/// Builds the envelope record for one (partition, seq) slot.
#[cfg(test)]
pub fn build(
    origin: &Origin,
    partition: i32,
    seq: u64,
    scheduled_at_ns: u64,
    tags: &BTreeMap<String, String>,
    payload_bytes: usize,
    sampled: bool,
) -> Outgoing {
    let recipe = Recipe {
        origin,
        tags,
        payload_bytes,
        shape: None,
    };
    recipe.build(partition, seq, scheduled_at_ns, sampled)
}

/// What every record of a probe is made from.
pub struct Recipe<'a> {
    /// Which agent and probe.
    pub origin: &'a Origin,
    /// The probe's tags (headers, and envelope fields).
    pub tags: &'a BTreeMap<String, String>,
    /// Random payload characters per record.
    pub payload_bytes: usize,
    /// The pipeline's own format; the envelope when `None`.
    pub shape: Option<&'a Shape>,
}

impl Recipe<'_> {
    /// Builds the record for one (partition, seq) slot. A fresh trace per record; `sampled` is
    /// written into its `traceparent` flags (spans are exported for sampled records only).
    pub fn build(&self, partition: i32, seq: u64, scheduled_at_ns: u64, sampled: bool) -> Outgoing {
        let Recipe {
            origin,
            tags,
            payload_bytes,
            shape,
        } = *self;
        // A shape that does not use `{payload}` needs none: nothing random is made or kept.
        let payload_bytes = match shape {
            Some(s) if !s.uses_payload() => 0,
            _ => payload_bytes,
        };
        let id = Uuid::now_v7();
        let ids = RandomIdGenerator::default();
        let span_context = SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            false,
            TraceState::default(),
        );
        let body = Body {
            v: ENVELOPE_VERSION,
            id,
            probe: origin.probe.clone(),
            instance: origin.instance.clone(),
            site: origin.site.clone(),
            partition,
            seq,
            scheduled_at_ns,
            tags: tags.clone(),
            payload: fastrand_payload(payload_bytes),
        };
        let id_text = id.hyphenated().to_string();
        let fill = || {
            Fill::new(
                &body,
                span_context.trace_id(),
                span_context.span_id(),
                sampled,
            )
        };
        let (key, value, unsendable) = match shape.map(|s| s.encode(&fill())) {
            None => (id_text.clone(), body.encode(), None),
            Some(Ok((key, value))) => (key, value, None),
            Some(Err(why)) => (id_text.clone(), Vec::new(), Some(why)),
        };
        let mut headers = HeaderInjector(OwnedHeaders::new_with_capacity(6 + tags.len()));
        let cx = Context::new().with_remote_span_context(span_context.clone());
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        let seq_text = seq.to_string();
        let mut headers = headers
            .0
            .insert(Header {
                key: header::ID,
                value: Some(id_text.as_str()),
            })
            .insert(Header {
                key: header::PROBE,
                value: Some(origin.probe.as_str()),
            })
            .insert(Header {
                key: header::INSTANCE,
                value: Some(origin.instance.as_str()),
            })
            .insert(Header {
                key: header::SEQ,
                value: Some(seq_text.as_str()),
            });
        for (k, v) in tags {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(v.as_str()),
            });
        }
        Outgoing {
            id,
            value,
            key,
            headers,
            span_context,
            body,
            unsendable,
        }
    }
}

fn fastrand_payload(len: usize) -> String {
    const ALPHANUMERIC: &[u8; 62] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let bytes: Vec<u8> = (0..len)
        .map(|_| ALPHANUMERIC[fastrand::usize(..ALPHANUMERIC.len())])
        .collect();
    String::from_utf8(bytes).expect("ASCII")
}

struct HeaderInjector(OwnedHeaders);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return; // an empty tracestate is the same as none
        }
        let headers = std::mem::replace(&mut self.0, OwnedHeaders::new());
        self.0 = headers.insert(Header {
            key,
            value: Some(&value),
        });
    }
}

/// A received record, independent of the client library that delivered it.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// The topic it was read from.
    pub topic: &'a str,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its broker timestamp, and of which type (CreateTime, LogAppendTime).
    pub timestamp: rdkafka::Timestamp,
    /// Its key, if any.
    pub key: Option<&'a [u8]>,
    /// Its value, if any.
    pub value: Option<&'a [u8]>,
    headers: Option<&'a rdkafka::message::BorrowedHeaders>,
    /// The value as JSON, when the verifier decoded it from another format (Avro written by
    /// another stage of the pipeline), or why it could not.
    decoded: Option<&'a Result<serde_json::Value, String>>,
}

impl<'a> View<'a> {
    /// A view of a consumed (borrowed) or owned message.
    pub fn of<M: Message>(m: &'a M) -> Self
    where
        M::Headers: AsBorrowed,
    {
        View {
            topic: m.topic(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp(),
            key: m.key(),
            value: m.payload(),
            headers: m.headers().map(AsBorrowed::as_borrowed),
            decoded: None,
        }
    }

    /// This view with its value decoded into JSON (or why it could not be).
    pub fn with_decoded(self, decoded: &'a Result<serde_json::Value, String>) -> Self {
        View {
            decoded: Some(decoded),
            ..self
        }
    }

    /// The value as JSON: as decoded by the verifier, or parsed as JSON text.
    pub fn json(&self) -> Result<std::borrow::Cow<'a, serde_json::Value>, Corruption> {
        match self.decoded {
            Some(Ok(doc)) => return Ok(std::borrow::Cow::Borrowed(doc)),
            Some(Err(why)) => return Err(Corruption::Undecodable(why.clone())),
            None => {}
        }
        let value = self
            .value
            .ok_or_else(|| Corruption::Undecodable("the record has no value".into()))?;
        serde_json::from_slice(value)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| Corruption::Undecodable(format!("not JSON: {e}")))
    }

    /// First header with this name, as text (`None` when absent or not UTF-8).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        header_value(self.headers?, name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The trace id carried by `traceparent`, if it is a valid W3C value.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.span_context().map(|sc| sc.trace_id())
    }

    /// The context carried by `traceparent` (and `tracestate`), if it is a valid W3C value.
    pub fn span_context(&self) -> Option<SpanContext> {
        let cx = TraceContextPropagator::new().extract(self);
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.clone())
    }
}

/// Headers of a consumed message are borrowed from librdkafka; an owned message's can be too.
pub trait AsBorrowed {
    fn as_borrowed(&self) -> &rdkafka::message::BorrowedHeaders;
}

impl AsBorrowed for rdkafka::message::BorrowedHeaders {
    fn as_borrowed(&self) -> &rdkafka::message::BorrowedHeaders {
        self
    }
}

impl AsBorrowed for OwnedHeaders {
    fn as_borrowed(&self) -> &rdkafka::message::BorrowedHeaders {
        OwnedHeaders::as_borrowed(self)
    }
}

impl Extractor for View<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.header(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.map(header_names).unwrap_or_default()
    }
}

// Headers are read through librdkafka's own accessors, never through rdkafka's
// `Headers::try_get` (or `iter`, which uses it): that unwraps the header *name* as UTF-8 and
// panics on one that is not, and any producer on the topic can write such a name.

/// The headers' native handle: a `&BorrowedHeaders` is the librdkafka `rd_kafka_headers_t *`
/// itself (rdkafka builds one from the other by a cast, both ways).
fn native(h: &BorrowedHeaders) -> *const rdkafka::bindings::rd_kafka_headers_t {
    (h as *const BorrowedHeaders).cast()
}

/// The value of the first header named `name` (`None` when there is none, or it has no value).
fn header_value<'h>(h: &'h BorrowedHeaders, name: &str) -> Option<&'h [u8]> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut value: *const std::ffi::c_void = std::ptr::null();
    let mut size = 0usize;
    // SAFETY: `h` is a live header list (it borrows the message holding it); librdkafka writes
    // a pointer into that list and its length, valid while `h` is.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_header_get(native(h), 0, name.as_ptr(), &mut value, &mut size)
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || value.is_null()
    {
        return None;
    }
    // SAFETY: as above; `size` bytes at `value` belong to the list.
    Some(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) })
}

/// The names of the headers that are UTF-8, in order.
fn header_names(h: &BorrowedHeaders) -> Vec<&str> {
    let mut names = Vec::new();
    for idx in 0.. {
        let mut name: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: as in `header_value`; the name is a NUL-terminated string of the list.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_header_get_all(
                native(h),
                idx,
                &mut name,
                &mut value,
                &mut size,
            )
        };
        if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || name.is_null()
        {
            break;
        }
        // SAFETY: as above.
        if let Ok(n) = unsafe { std::ffi::CStr::from_ptr(name) }.to_str() {
            names.push(n);
        }
    }
    names
}

/// Whose record this is, read from the headers or, when they are missing, from the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A probe record. `from_headers` is false when the slo-probe headers were missing and the
    /// identity came from the envelope.
    Probe {
        /// The probe it names.
        probe: String,
        /// The agent instance it names.
        instance: String,
        /// Its record id, when it carries a valid one.
        id: Option<Uuid>,
        /// Whether the slo-probe headers said so (not the envelope).
        from_headers: bool,
    },
    /// Not a probe record.
    Foreign(ForeignReason),
}

/// Why a record on a probe topic is not a valid probe record (`reason` label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignReason {
    /// Neither slo-probe headers nor a parseable envelope.
    Unparseable,
    /// An envelope of a version this agent does not know.
    UnknownVersion,
    /// Some but not all slo-probe headers.
    MissingHeaders,
    /// This agent's probe and instance, but an id it never sent: another producer wrote the
    /// agent's headers (its own records it forgot are duplicates instead).
    UnknownId,
}

impl ForeignReason {
    /// Every reason, in the order of the `reason` label values.
    pub const ALL: [ForeignReason; 4] = [
        ForeignReason::Unparseable,
        ForeignReason::UnknownVersion,
        ForeignReason::MissingHeaders,
        ForeignReason::UnknownId,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ForeignReason::Unparseable => "unparseable",
            ForeignReason::UnknownVersion => "unknown_version",
            ForeignReason::MissingHeaders => "missing_headers",
            ForeignReason::UnknownId => "unknown_id",
        }
    }
}

#[derive(Deserialize)]
struct Peek {
    v: u64,
    id: Option<String>,
    probe: Option<String>,
    instance: Option<String>,
}

/// Reads who a record claims to belong to, cheaply: headers first, the envelope only if needed.
pub fn claim(view: &View) -> Claim {
    let probe = view.header(header::PROBE);
    let instance = view.header(header::INSTANCE);
    let id = view
        .header(header::ID)
        .and_then(|s| Uuid::parse_str(s).ok());
    if let (Some(probe), Some(instance)) = (probe, instance) {
        return Claim::Probe {
            probe: probe.into(),
            instance: instance.into(),
            id,
            from_headers: true,
        };
    }
    let partial = probe.is_some() || instance.is_some() || view.header(header::ID).is_some();
    match view
        .value
        .and_then(|v| serde_json::from_slice::<Peek>(v).ok())
    {
        Some(p) if p.v != ENVELOPE_VERSION => Claim::Foreign(ForeignReason::UnknownVersion),
        Some(Peek {
            probe: Some(probe),
            instance: Some(instance),
            id,
            ..
        }) => Claim::Probe {
            probe,
            instance,
            id: id.and_then(|s| Uuid::parse_str(&s).ok()),
            from_headers: false,
        },
        _ if partial => Claim::Foreign(ForeignReason::MissingHeaders),
        _ => Claim::Foreign(ForeignReason::Unparseable),
    }
}

/// What the verifier knows a record must look like (kept by the in-flight tracker).
#[derive(Debug, Clone)]
pub struct Expected {
    /// The envelope's fields as sent.
    pub body: Body,
    /// The trace id written into `traceparent`.
    pub trace_id: TraceId,
    /// The producer span's id (the `traceparent` parent id).
    pub span_id: SpanId,
    /// Whether the trace was sampled.
    pub sampled: bool,
}

impl Expected {
    /// What the record's placeholders were filled from.
    pub fn fill(&self) -> Fill<'_> {
        Fill::new(&self.body, self.trace_id, self.span_id, self.sampled)
    }

    /// What to expect of the record `out` once it comes back.
    pub fn of(out: &Outgoing) -> Expected {
        Expected {
            body: out.body.clone(),
            trace_id: out.span_context.trace_id(),
            span_id: out.span_context.span_id(),
            sampled: out.span_context.is_sampled(),
        }
    }
}

/// Why an own record is `corrupt`. The first failed check is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// The value is not a JSON envelope at all.
    Undecodable(String),
    /// The digest does not match the content.
    Digest,
    /// The content is self-consistent but differs from what was sent.
    Field {
        /// The field.
        field: String,
        /// What was sent.
        expected: String,
        /// What came back.
        got: String,
    },
    /// A slo-probe or tag header is missing or wrong.
    Header {
        /// The header's name (`key` for the record key).
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `traceparent` missing, invalid, or carrying another trace id.
    TraceContext(String),
    /// A transformed record fails an `expect` assertion.
    Assertion {
        /// The JSON pointer asserted.
        pointer: String,
        /// The value it must hold.
        expected: String,
        /// What it held (`nothing` when absent).
        got: String,
    },
    /// A record read back from another topic with neither `id_from` nor `expect` is checked
    /// as an exact copy of the one sent (a mirror's), and was not one: `why`, with the hint
    /// that a job's output needs `id_from` and `expect`.
    NotACopy {
        /// The topic it was read from.
        topic: String,
        /// How it differs.
        why: Box<Corruption>,
    },
}

impl Corruption {
    /// Short, low-cardinality reason for labels and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            Corruption::Undecodable(_) => "undecodable",
            Corruption::Digest => "digest",
            Corruption::Field { .. } => "field",
            Corruption::Header { .. } => "header",
            Corruption::TraceContext(_) => "trace_context",
            Corruption::Assertion { .. } => "assertion",
            Corruption::NotACopy { why, .. } => why.kind(),
        }
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::Undecodable(e) => write!(f, "value is not a valid envelope: {e}"),
            Corruption::Digest => write!(f, "digest mismatch: the envelope changed in transit"),
            Corruption::Field {
                field,
                expected,
                got,
            } => {
                write!(f, "field `{field}`: expected {expected}, got {got}")
            }
            Corruption::Header { name, problem } => write!(f, "header `{name}`: {problem}"),
            Corruption::TraceContext(e) => write!(f, "trace context: {e}"),
            Corruption::Assertion {
                pointer,
                expected,
                got,
            } => {
                write!(f, "assertion {pointer}: expected {expected}, got {got}")
            }
            Corruption::NotACopy { topic, why } => write!(
                f,
                "{why} (records read back from `{topic}` with neither `id_from` nor `expect` are checked as exact copies of those sent, as a mirror writes them; a job's output needs `id_from` and `expect`)"
            ),
        }
    }
}

/// The record id a transformed record carries, per `id_from`.
pub fn transformed_id(view: &View, id_from: &IdFrom) -> Option<Uuid> {
    match id_from {
        IdFrom::Header(name) => view.header(name).and_then(|s| Uuid::parse_str(s).ok()),
        IdFrom::Pointer(p) => {
            let value = view.json().ok()?;
            value
                .pointer(p)?
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
        }
    }
}

/// Checks a transformed record (a pipeline's output) against the record it came from: every
/// `expect` assertion holds, and a `traceparent` passed through carries the original trace id.
/// The envelope's digest does not apply: the pipeline rewrote the value.
pub fn verify_transformed(
    expected: &Expected,
    view: &View,
    expect: &[(String, Expectation)],
    shape: Option<&Shape>,
) -> Result<(), Corruption> {
    if !expect.is_empty() {
        check_expectations(expected, view.json()?.as_ref(), expect, shape)?;
    }
    match (view.header(header::TRACEPARENT), view.trace_id()) {
        (None, _) => Ok(()),
        (Some(_), Some(t)) if t == expected.trace_id => Ok(()),
        (Some(_), Some(t)) => Err(Corruption::TraceContext(format!(
            "trace id changed from {} to {t}",
            expected.trace_id
        ))),
        (Some(_), None) => Err(Corruption::TraceContext(
            "traceparent is not a valid W3C value".into(),
        )),
    }
}

/// Checks the content assertions on what a pipeline made of the record (a transformed record's
/// value, a sink's row or document): each pointer must hold its literal or the original
/// record's field. The first failed assertion is reported.
pub fn check_expectations(
    expected: &Expected,
    got: &serde_json::Value,
    expect: &[(String, Expectation)],
    shape: Option<&Shape>,
) -> Result<(), Corruption> {
    if expect.is_empty() {
        return Ok(());
    }
    // `from` points into what was sent: the pipeline's own format, or the envelope.
    let original = match shape {
        Some(shape) => shape.original(&expected.fill()),
        None => serde_json::to_value(&expected.body).expect("envelope serialises"),
    };
    for (pointer, e) in expect {
        let want = match e {
            Expectation::Literal(v) => v.clone(),
            Expectation::FromOriginal(from) => original
                .pointer(from)
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        };
        let actual = got.pointer(pointer);
        if !actual.is_some_and(|a| same_json(a, &want)) {
            return Err(Corruption::Assertion {
                pointer: pointer.clone(),
                expected: want.to_string(),
                got: actual.map_or("nothing".into(), |a| a.to_string()),
            });
        }
    }
    Ok(())
}

/// JSON equality with numbers compared by value, exactly (42 == 42.0, 19.99 == 19.990, but
/// 9007199254740993 != 9007199254740992): as decimals where both are written with at most 28
/// significant digits, else as floats.
pub(crate) fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::Number;
    match (a, b) {
        (Number(x), Number(y)) => match (decimal(x), decimal(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// A JSON number as the decimal it is written as (a float as its shortest form: `0.1`), when
/// one of 28 significant digits holds it exactly.
pub(crate) fn decimal(n: &serde_json::Number) -> Option<rust_decimal::Decimal> {
    use rust_decimal::Decimal;
    if let Some(i) = n.as_i64() {
        return Some(Decimal::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(Decimal::from(u));
    }
    let text = n.to_string();
    Decimal::from_str_exact(&text)
        .or_else(|_| Decimal::from_scientific(&text))
        .ok()
}

/// Decodes and checks an envelope's own digest.
pub fn decode(value: &[u8]) -> Result<Body, Corruption> {
    let undecodable = |e: serde_json::Error| Corruption::Undecodable(e.to_string());
    let body: Body = serde_json::from_slice(value).map_err(undecodable)?;
    let field: DigestField = serde_json::from_slice(value).map_err(undecodable)?;
    if body.v != ENVELOPE_VERSION {
        return Err(Corruption::Field {
            field: "v".into(),
            expected: ENVELOPE_VERSION.to_string(),
            got: body.v.to_string(),
        });
    }
    let mut sent = [0u8; 32];
    if hex::decode_to_slice(field.digest.as_bytes(), &mut sent).is_err() || sent != body.digest() {
        return Err(Corruption::Digest);
    }
    Ok(body)
}

/// Checks an own record that came back against what was sent: key, value (the envelope and
/// its digest, or the pipeline's own format field by field), every header, that the trace id
/// survived and, when `check_partition` (read back from the topic it was sent to), that it
/// arrived on its partition.
pub fn verify(
    expected: &Expected,
    view: &View,
    check_partition: bool,
    shape: Option<&Shape>,
) -> Result<(), Corruption> {
    let want = &expected.body;
    let id = want.id.hyphenated().to_string();
    match shape {
        Some(shape) => shape.verify(&expected.fill(), view.key, view.value)?,
        None => verify_envelope(want, view, &id)?,
    }
    if check_partition && view.partition != want.partition {
        return Err(Corruption::Field {
            field: "partition".into(),
            expected: format!("arrival on partition {}", want.partition),
            got: format!("partition {}", view.partition),
        });
    }
    verify_headers(expected, view, &id)
}

/// The envelope's digest, every field, and the key (the record id).
fn verify_envelope(want: &Body, view: &View, id: &str) -> Result<(), Corruption> {
    let value = view
        .value
        .ok_or_else(|| Corruption::Undecodable("the record has no value".into()))?;
    let got = decode(value)?;
    macro_rules! same {
        ($field:ident) => {
            if got.$field != want.$field {
                return Err(Corruption::Field {
                    field: stringify!($field).into(),
                    expected: format!("{:?}", want.$field),
                    got: format!("{:?}", got.$field),
                });
            }
        };
    }
    same!(id);
    same!(probe);
    same!(instance);
    same!(site);
    same!(partition);
    same!(seq);
    same!(scheduled_at_ns);
    same!(tags);
    if got.payload != want.payload {
        return Err(Corruption::Field {
            field: "payload".into(),
            expected: format!("{} bytes as sent", want.payload.len()),
            got: format!("{} different bytes", got.payload.len()),
        });
    }
    if view.key != Some(id.as_bytes()) {
        return Err(Corruption::Header {
            name: "key".into(),
            problem: format!("expected the record id {id}"),
        });
    }
    Ok(())
}

/// The slo-probe headers, the tags, and the trace context.
fn verify_headers(expected: &Expected, view: &View, id: &str) -> Result<(), Corruption> {
    let want = &expected.body;
    let seq = want.seq.to_string();
    let headers = [
        (header::ID, id),
        (header::PROBE, want.probe.as_str()),
        (header::INSTANCE, want.instance.as_str()),
        (header::SEQ, seq.as_str()),
    ];
    for (name, value) in headers
        .into_iter()
        .chain(want.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        match view.header(name) {
            Some(v) if v == value => {}
            Some(v) => {
                return Err(Corruption::Header {
                    name: name.into(),
                    problem: format!("expected {value:?}, got {v:?}"),
                });
            }
            None => {
                return Err(Corruption::Header {
                    name: name.into(),
                    problem: "missing".into(),
                });
            }
        }
    }
    match view.trace_id() {
        Some(t) if t == expected.trace_id => Ok(()),
        Some(t) => Err(Corruption::TraceContext(format!(
            "trace id changed from {} to {t}",
            expected.trace_id
        ))),
        None if view.header(header::TRACEPARENT).is_some() => Err(Corruption::TraceContext(
            "traceparent is not a valid W3C value".into(),
        )),
        None => Err(Corruption::TraceContext(
            "traceparent header missing".into(),
        )),
    }
}

/// Where a transformed record carries the id of the record it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdFrom {
    /// A header the pipeline passes through (`header` is `slo-probe-id`).
    Header(String),
    /// A JSON pointer into the record's value.
    Pointer(String),
}

/// The value a JSON pointer of a transformed record must hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// This value.
    Literal(serde_json::Value),
    /// The original record's field at this pointer (`/seq`, `/tags/team`...).
    FromOriginal(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::{Headers, OwnedMessage};

    fn origin() -> Origin {
        Origin {
            probe: "orders".into(),
            instance: "host-abc123".into(),
            site: "eu-west-1a".into(),
        }
    }

    /// Numbers compare by their value as written, exactly: an integer and the same float are
    /// equal, a decimal's trailing zeros do not matter, and two integers a float cannot tell
    /// apart stay apart.
    #[test]
    fn numbers_compare_as_the_decimals_they_are() {
        use serde_json::json;
        let same = |a: serde_json::Value, b: serde_json::Value| same_json(&a, &b);
        assert!(same(json!(42), json!(42.0)));
        assert!(same(json!(19.99), json!(19.99)));
        assert!(same(json!(-0.5), json!(-0.50)));
        assert!(same(json!(1e-7), json!(0.0000001)));
        assert!(!same(
            json!(9_007_199_254_740_993u64),
            json!(9_007_199_254_740_992u64)
        ));
        assert!(!same(json!(19.99), json!(19.989_999)));
        assert!(!same(json!(42), json!("42")), "a number is not its text");
        // beyond 28 significant digits: compared as floats
        assert!(same(json!(1e300), json!(1e300)));
        assert!(!same(json!(1e300), json!(2e300)));
    }

    fn sample() -> Outgoing {
        let tags = BTreeMap::from([("team".to_string(), "payments".to_string())]);
        build(&origin(), 2, 41, 1_700_000_000_123_456_789, &tags, 64, true)
    }

    fn message(
        out: &Outgoing,
        value: Vec<u8>,
        headers: OwnedHeaders,
        partition: i32,
    ) -> OwnedMessage {
        OwnedMessage::new(
            Some(value),
            Some(out.key.clone().into_bytes()),
            "synthetic-sla".into(),
            Timestamp::NotAvailable,
            partition,
            7,
            Some(headers),
        )
    }

    fn expected(out: &Outgoing) -> Expected {
        Expected::of(out)
    }

    fn view(m: &OwnedMessage) -> View<'_> {
        View::of(m)
    }

    fn check(out: &Outgoing, m: &OwnedMessage) -> Result<(), Corruption> {
        verify(&expected(out), &view(m), true, None)
    }

    #[test]
    fn round_trip_is_intact() {
        let out = sample();
        let decoded = decode(&out.value).unwrap();
        assert_eq!(decoded, out.body);
        assert_eq!(decoded.payload.len(), 64);
        let m = message(&out, out.value.clone(), out.headers.clone(), 2);
        assert_eq!(check(&out, &m), Ok(()));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let out = sample();
        for i in 0..out.value.len() {
            let mut value = out.value.clone();
            value[i] ^= 0x01;
            let m = message(&out, value, out.headers.clone(), 2);
            let err = check(&out, &m).expect_err(&format!("flip at byte {i} went unnoticed"));
            assert!(
                matches!(
                    err,
                    Corruption::Undecodable(_) | Corruption::Digest | Corruption::Field { .. }
                ),
                "byte {i}: {err}"
            );
        }
    }

    #[test]
    fn headers_are_complete_and_traceparent_is_w3c() {
        let out = sample();
        let m = message(&out, out.value.clone(), out.headers.clone(), 2);
        let h = m.headers().unwrap();
        let get = |name: &str| {
            h.iter()
                .find(|x| x.key == name)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get(header::ID).unwrap(), out.key);
        assert_eq!(get(header::PROBE).unwrap(), "orders");
        assert_eq!(get(header::INSTANCE).unwrap(), "host-abc123");
        assert_eq!(get(header::SEQ).unwrap(), "41");
        assert_eq!(get("team").unwrap(), "payments");
        let tp = get(header::TRACEPARENT).unwrap();
        // version 00, 32 hex trace id, 16 hex span id, sampled flag
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[0], "00");
        assert!(
            parts[1].len() == 32
                && parts[1]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(
            parts[2].len() == 16
                && parts[2]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(parts[1], "0".repeat(32));
        assert_eq!(parts[3], "01");
        assert_eq!(parts[1], out.span_context.trace_id().to_string());
        // and the propagator reads it back
        assert_eq!(view(&m).trace_id(), Some(out.span_context.trace_id()));
        assert!(
            get(header::TRACESTATE).is_none(),
            "empty tracestate is not written"
        );
    }

    #[test]
    fn each_record_gets_a_fresh_trace() {
        let a = sample();
        let b = sample();
        assert_ne!(a.span_context.trace_id(), b.span_context.trace_id());
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.get_version_num(), 7);
    }

    #[test]
    fn wrong_partition_header_and_trace_are_corrupt() {
        let out = sample();
        let m = message(&out, out.value.clone(), out.headers.clone(), 1);
        assert_eq!(check(&out, &m).unwrap_err().kind(), "field");

        let stripped = OwnedHeaders::new()
            .insert(Header {
                key: header::ID,
                value: Some(out.key.as_str()),
            })
            .insert(Header {
                key: header::PROBE,
                value: Some("orders"),
            })
            .insert(Header {
                key: header::INSTANCE,
                value: Some("host-abc123"),
            })
            .insert(Header {
                key: header::SEQ,
                value: Some("41"),
            })
            .insert(Header {
                key: "team",
                value: Some("payments"),
            });
        let m = message(&out, out.value.clone(), stripped.clone(), 2);
        assert_eq!(
            check(&out, &m),
            Err(Corruption::TraceContext(
                "traceparent header missing".into()
            ))
        );

        let other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let m = message(
            &out,
            out.value.clone(),
            stripped.clone().insert(Header {
                key: header::TRACEPARENT,
                value: Some(other),
            }),
            2,
        );
        assert_eq!(check(&out, &m).unwrap_err().kind(), "trace_context");

        let mangled = stripped.insert(Header {
            key: header::TRACEPARENT,
            value: Some("00-XYZ"),
        });
        let m = message(&out, out.value.clone(), mangled, 2);
        assert_eq!(
            check(&out, &m),
            Err(Corruption::TraceContext(
                "traceparent is not a valid W3C value".into()
            ))
        );
    }

    #[test]
    fn claims() {
        let out = sample();
        let m = message(&out, out.value.clone(), out.headers.clone(), 2);
        assert_eq!(
            claim(&view(&m)),
            Claim::Probe {
                probe: "orders".into(),
                instance: "host-abc123".into(),
                id: Some(out.id),
                from_headers: true
            }
        );
        // headers stripped by the pipeline: identity from the envelope
        let m = message(&out, out.value.clone(), OwnedHeaders::new(), 2);
        assert!(matches!(
            claim(&view(&m)),
            Claim::Probe {
                from_headers: false,
                ..
            }
        ));
        let m = message(&out, b"not json".to_vec(), OwnedHeaders::new(), 2);
        assert_eq!(claim(&view(&m)), Claim::Foreign(ForeignReason::Unparseable));
        let m = message(
            &out,
            br#"{"v":9,"id":"x"}"#.to_vec(),
            OwnedHeaders::new(),
            2,
        );
        assert_eq!(
            claim(&view(&m)),
            Claim::Foreign(ForeignReason::UnknownVersion)
        );
        let only_probe = OwnedHeaders::new().insert(Header {
            key: header::PROBE,
            value: Some("orders"),
        });
        let m = message(&out, b"garbage".to_vec(), only_probe, 2);
        assert_eq!(
            claim(&view(&m)),
            Claim::Foreign(ForeignReason::MissingHeaders)
        );
    }
}
