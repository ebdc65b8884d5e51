//! A probe record in the pipeline's own format: a key template and a value template, sent as
//! JSON or as Avro ([`super::avro`]: plain binary, or the Confluent wire format).
//!
//! A template is any document; its strings may hold placeholders (`{id}`, `{seq}`, ... see
//! [`Placeholder`]) filled per record from the record's identity and timing. A string that is
//! exactly one placeholder keeps the placeholder's type (`"{seq}"` is a number). `{{` and `}}`
//! are literal braces. An Avro template is compiled against its schema once, at load: every
//! problem (a missing required field, a wrong type, an unknown field or placeholder) is found
//! then, with the path of the template node it is about, which `config` turns into
//! `file:line:col`.
//!
//! Verifying: the record read back is decoded the same way and compared, field by field, with
//! what the template renders for the record that was sent (rendered again from what the
//! tracker keeps, so nothing more is held per record in flight); the first field that differs
//! is named with what was expected and what came.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value as Json;
use uuid::Uuid;

use super::avro::{AvroFormat, avro_to_json};
use super::{Body, Corruption};

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The record id (UUID v7, text).
    Id,
    /// The record's sequence number in its (probe, instance, partition) (a number).
    Seq,
    /// The probe's name.
    Probe,
    /// The agent instance.
    Instance,
    /// The agent's site.
    Site,
    /// The partition the record is sent to (a number).
    Partition,
    /// The scheduled send time, RFC 3339 with milliseconds (`2026-11-29T20:00:00.123Z`).
    ScheduledAt,
    /// The scheduled send time in milliseconds since the Unix epoch (a number).
    ScheduledAtMs,
    /// The scheduled send time in nanoseconds since the Unix epoch (a number).
    ScheduledAtNs,
    /// Random text of `payload_bytes` characters.
    Payload,
    /// The record's W3C `traceparent`, as in its header.
    Traceparent,
    /// The trace id of the record (32 hex digits).
    TraceId,
}

impl Placeholder {
    /// Every placeholder, in the order the documentation lists them.
    pub const ALL: [Placeholder; 12] = [
        Placeholder::Id,
        Placeholder::Seq,
        Placeholder::Probe,
        Placeholder::Instance,
        Placeholder::Site,
        Placeholder::Partition,
        Placeholder::ScheduledAt,
        Placeholder::ScheduledAtMs,
        Placeholder::ScheduledAtNs,
        Placeholder::Payload,
        Placeholder::Traceparent,
        Placeholder::TraceId,
    ];

    /// The name written between braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Id => "id",
            Placeholder::Seq => "seq",
            Placeholder::Probe => "probe",
            Placeholder::Instance => "instance",
            Placeholder::Site => "site",
            Placeholder::Partition => "partition",
            Placeholder::ScheduledAt => "scheduled_at",
            Placeholder::ScheduledAtMs => "scheduled_at_ms",
            Placeholder::ScheduledAtNs => "scheduled_at_ns",
            Placeholder::Payload => "payload",
            Placeholder::Traceparent => "traceparent",
            Placeholder::TraceId => "trace_id",
        }
    }

    fn parse(name: &str) -> Option<Placeholder> {
        Placeholder::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The names of every placeholder, for messages: `{id}, {seq}, ...`.
    pub fn known() -> String {
        Placeholder::ALL
            .iter()
            .map(|p| format!("{{{}}}", p.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether a value that is exactly this placeholder is a number.
    pub(super) fn is_number(self) -> bool {
        matches!(
            self,
            Placeholder::Seq
                | Placeholder::Partition
                | Placeholder::ScheduledAtMs
                | Placeholder::ScheduledAtNs
        )
    }

    pub(super) fn is_time(self) -> bool {
        matches!(
            self,
            Placeholder::ScheduledAt | Placeholder::ScheduledAtMs | Placeholder::ScheduledAtNs
        )
    }
}

/// What one record's placeholders are filled from: the envelope body kept for it and its trace
/// context.
pub struct Fill<'a> {
    pub(super) body: &'a Body,
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    sampled: bool,
}

impl<'a> Fill<'a> {
    /// The fill of the record whose body is `body`, sent with this trace context.
    pub fn new(
        body: &'a Body,
        trace_id: opentelemetry::trace::TraceId,
        span_id: opentelemetry::trace::SpanId,
        sampled: bool,
    ) -> Fill<'a> {
        Fill {
            body,
            trace_id,
            span_id,
            sampled,
        }
    }

    fn text(&self, p: Placeholder, out: &mut String) {
        use std::fmt::Write as _;
        let b = self.body;
        let _ = match p {
            Placeholder::Id => write!(out, "{}", b.id.hyphenated()),
            Placeholder::Seq => write!(out, "{}", b.seq),
            Placeholder::Probe => write!(out, "{}", b.probe),
            Placeholder::Instance => write!(out, "{}", b.instance),
            Placeholder::Site => write!(out, "{}", b.site),
            Placeholder::Partition => write!(out, "{}", b.partition),
            Placeholder::ScheduledAt => {
                let at = UNIX_EPOCH + Duration::from_nanos(b.scheduled_at_ns);
                write!(out, "{}", humantime::format_rfc3339_millis(at))
            }
            Placeholder::ScheduledAtMs => write!(out, "{}", b.scheduled_at_ns / 1_000_000),
            Placeholder::ScheduledAtNs => write!(out, "{}", b.scheduled_at_ns),
            Placeholder::Payload => write!(out, "{}", b.payload),
            // As `TraceContextPropagator` writes the header.
            Placeholder::Traceparent => write!(
                out,
                "00-{}-{}-{:02x}",
                self.trace_id,
                self.span_id,
                u8::from(self.sampled)
            ),
            Placeholder::TraceId => write!(out, "{}", self.trace_id),
        };
    }

    /// A numeric placeholder's value (`None` for text placeholders).
    pub(super) fn number(&self, p: Placeholder) -> Option<i128> {
        let b = self.body;
        Some(match p {
            Placeholder::Seq => i128::from(b.seq),
            Placeholder::Partition => i128::from(b.partition),
            Placeholder::ScheduledAtMs => i128::from(b.scheduled_at_ns / 1_000_000),
            Placeholder::ScheduledAtNs | Placeholder::ScheduledAt => i128::from(b.scheduled_at_ns),
            _ => return None,
        })
    }
}

/// One part of a templated string.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Ph(Placeholder),
}

/// A string with placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Text(Vec<Piece>);

impl Text {
    /// Parses `{name}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(s: &str) -> Result<Text, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let rest = &s[i + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "unclosed `{{` in `{s}` (write `{{{{` for a literal brace)"
                        ));
                    };
                    let name = &rest[..end];
                    let Some(p) = Placeholder::parse(name) else {
                        return Err(format!(
                            "unknown placeholder `{{{name}}}`; known: {}",
                            Placeholder::known()
                        ));
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Ph(p));
                    for _ in 0..=end {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` in `{s}` (write `}}}}` for a literal brace)"
                    ));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Text(pieces))
    }

    /// The placeholder this text is exactly, if it is one.
    pub fn exact(&self) -> Option<Placeholder> {
        match self.0.as_slice() {
            [Piece::Ph(p)] => Some(*p),
            _ => None,
        }
    }

    fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Text(t)] => Some(t),
            _ => None,
        }
    }

    fn uses(&self, p: Placeholder) -> bool {
        self.0.contains(&Piece::Ph(p))
    }

    /// The text for one record.
    pub fn render(&self, fill: &Fill) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Ph(p) => fill.text(*p, &mut out),
            }
        }
        out
    }
}

/// A step of the path to a template node: a field name or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A problem with a template, at the node `path` leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub path: Vec<Step>,
    pub message: String,
    /// The problem is the last key of `path` itself (a field the schema does not have), not
    /// the value under it.
    pub key: bool,
}

impl TemplateError {
    pub(super) fn at(path: &[Step], message: impl Into<String>) -> TemplateError {
        TemplateError {
            path: path.to_vec(),
            message: message.into(),
            key: false,
        }
    }
}

/// A JSON value template.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// A value without placeholders.
    Literal(Json),
    /// A string with placeholders (a string when rendered, unless it is exactly one numeric
    /// placeholder).
    Text(Text),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

impl Template {
    /// Compiles a document: every string is read for placeholders; all problems are returned.
    pub fn compile(doc: &Json) -> Result<Template, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let t = Template::compile_at(doc, &mut Vec::new(), &mut errors);
        if errors.is_empty() {
            Ok(t)
        } else {
            Err(errors)
        }
    }

    fn compile_at(doc: &Json, path: &mut Vec<Step>, errors: &mut Vec<TemplateError>) -> Template {
        match doc {
            Json::String(s) => match Text::parse(s) {
                Ok(t) => match t.literal() {
                    Some(text) => Template::Literal(Json::String(text.to_string())),
                    None => Template::Text(t),
                },
                Err(e) => {
                    errors.push(TemplateError::at(path, e));
                    Template::Literal(Json::Null)
                }
            },
            Json::Array(items) => Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        path.push(Step::Index(i));
                        let t = Template::compile_at(item, path, errors);
                        path.pop();
                        t
                    })
                    .collect(),
            ),
            Json::Object(map) => Template::Object(
                map.iter()
                    .map(|(k, v)| {
                        path.push(Step::Key(k.clone()));
                        let t = Template::compile_at(v, path, errors);
                        path.pop();
                        (k.clone(), t)
                    })
                    .collect(),
            ),
            other => Template::Literal(other.clone()),
        }
    }

    /// Whether any string of the template uses `p`.
    pub fn uses(&self, p: Placeholder) -> bool {
        match self {
            Template::Literal(_) => false,
            Template::Text(t) => t.uses(p),
            Template::Array(items) => items.iter().any(|t| t.uses(p)),
            Template::Object(fields) => fields.iter().any(|(_, t)| t.uses(p)),
        }
    }

    /// The JSON pointer of the first value that is exactly `p`.
    pub fn pointer_to(&self, p: Placeholder) -> Option<String> {
        match self {
            Template::Text(t) if t.exact() == Some(p) => Some(String::new()),
            Template::Literal(_) | Template::Text(_) => None,
            Template::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, t)| t.pointer_to(p).map(|rest| format!("/{i}{rest}"))),
            Template::Object(fields) => fields.iter().find_map(|(k, t)| {
                let k = k.replace('~', "~0").replace('/', "~1");
                t.pointer_to(p).map(|rest| format!("/{k}{rest}"))
            }),
        }
    }

    /// The document for one record.
    pub fn render(&self, fill: &Fill) -> Json {
        match self {
            Template::Literal(v) => v.clone(),
            Template::Text(t) => match t.exact().and_then(|p| fill.number(p)) {
                // A numeric placeholder alone keeps its type.
                Some(n) if t.exact().is_some_and(Placeholder::is_number) => u64::try_from(n)
                    .map(Json::from)
                    .or_else(|_| i64::try_from(n).map(Json::from))
                    .unwrap_or(Json::Null),
                _ => Json::String(t.render(fill)),
            },
            Template::Array(items) => Json::Array(items.iter().map(|t| t.render(fill)).collect()),
            Template::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(k, t)| (k.clone(), t.render(fill)))
                    .collect(),
            ),
        }
    }
}

/// How a shape's value is written.
#[derive(Debug)]
pub enum ValueFormat {
    /// The template rendered as JSON.
    Json,
    /// The template compiled against an Avro schema.
    Avro(Box<AvroFormat>),
}

/// A probe record in the pipeline's own format (the `record` section of a probe file).
#[derive(Debug)]
pub struct Shape {
    pub key: Text,
    /// The value template as written (JSON); for Avro, also compiled into `value`.
    pub template: Template,
    pub value: ValueFormat,
}

impl Shape {
    /// Whether a record needs its random payload text.
    pub fn uses_payload(&self) -> bool {
        self.key.uses(Placeholder::Payload) || self.template.uses(Placeholder::Payload)
    }

    /// Whether the key is exactly the record id.
    pub fn key_is_id(&self) -> bool {
        self.key.exact() == Some(Placeholder::Id)
    }

    /// Whether the record carries its id in the key or the value.
    pub fn carries_id(&self) -> bool {
        self.key.uses(Placeholder::Id) || self.template.uses(Placeholder::Id)
    }

    /// The Avro format, when the value is Avro.
    pub fn avro(&self) -> Option<&AvroFormat> {
        match &self.value {
            ValueFormat::Avro(a) => Some(a),
            ValueFormat::Json => None,
        }
    }

    /// Key and value bytes of one record.
    pub fn encode(&self, fill: &Fill) -> Result<(String, Vec<u8>), String> {
        let key = self.key.render(fill);
        let value = match &self.value {
            ValueFormat::Json => {
                serde_json::to_vec(&self.template.render(fill)).map_err(|e| e.to_string())?
            }
            ValueFormat::Avro(a) => a.encode(fill)?,
        };
        Ok((key, value))
    }

    /// The value as sent, as JSON: what `expect: { from: /pointer }` reads.
    pub fn original(&self, fill: &Fill) -> Json {
        match &self.value {
            ValueFormat::Json => self.template.render(fill),
            ValueFormat::Avro(a) => a.render(fill).map(avro_to_json).unwrap_or(Json::Null),
        }
    }

    /// Decodes a value of this shape into JSON (to find an id field in it).
    pub fn decode_json(&self, bytes: &[u8]) -> Option<Json> {
        match &self.value {
            ValueFormat::Json => serde_json::from_slice(bytes).ok(),
            ValueFormat::Avro(a) => a.decode(bytes).ok().map(avro_to_json),
        }
    }

    /// The record id of a value of this shape read back without its headers: from the key when
    /// it is the id, else from the first field that is exactly `{id}`.
    pub fn record_id(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Option<Uuid> {
        if self.key_is_id() {
            return key.and_then(|k| Uuid::try_parse_ascii(k).ok());
        }
        let pointer = self.template.pointer_to(Placeholder::Id)?;
        let doc = self.decode_json(value?)?;
        doc.pointer(&pointer)?
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
    }

    /// Checks a record read back against what was sent: the key, then every field of the
    /// value. The first difference is reported with its field's path.
    pub fn verify(
        &self,
        fill: &Fill,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), Corruption> {
        let value =
            value.ok_or_else(|| Corruption::Undecodable("the record has no value".into()))?;
        let (want, got) = match &self.value {
            ValueFormat::Json => {
                let got: Json = serde_json::from_slice(value)
                    .map_err(|e| Corruption::Undecodable(format!("not JSON: {e}")))?;
                (self.template.render(fill), got)
            }
            ValueFormat::Avro(a) => {
                let got = a.decode(value)?;
                let want = a
                    .render(fill)
                    .map_err(|e| Corruption::Undecodable(format!("cannot render: {e}")))?;
                (avro_to_json(want), avro_to_json(got))
            }
        };
        if let Some((field, expected, got)) = first_difference(&want, &got, &mut String::new()) {
            return Err(Corruption::Field {
                field,
                expected,
                got,
            });
        }
        let want_key = self.key.render(fill);
        if key != Some(want_key.as_bytes()) {
            return Err(Corruption::Header {
                name: "key".into(),
                problem: format!(
                    "expected {want_key:?}, got {}",
                    key.map_or("none".into(), |k| format!(
                        "{:?}",
                        String::from_utf8_lossy(k)
                    ))
                ),
            });
        }
        Ok(())
    }
}

/// The first place two documents differ: (JSON pointer, expected, got).
fn first_difference(want: &Json, got: &Json, at: &mut String) -> Option<(String, String, String)> {
    let differ = |at: &str, want: &Json, got: Option<&Json>| {
        Some((
            if at.is_empty() {
                "/".into()
            } else {
                at.to_string()
            },
            shorten(&want.to_string()),
            got.map_or("nothing".into(), |g| shorten(&g.to_string())),
        ))
    };
    match (want, got) {
        (Json::Object(w), Json::Object(g)) => {
            for (k, wv) in w {
                let len = at.len();
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                let d = match g.get(k) {
                    Some(gv) => first_difference(wv, gv, at),
                    None => differ(at, wv, None),
                };
                at.truncate(len);
                if d.is_some() {
                    return d;
                }
            }
            g.iter().find(|(k, _)| !w.contains_key(*k)).map(|(k, gv)| {
                let path = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                (path, "nothing".into(), shorten(&gv.to_string()))
            })
        }
        (Json::Array(w), Json::Array(g)) if w.len() == g.len() => {
            w.iter().zip(g).enumerate().find_map(|(i, (wv, gv))| {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                let d = first_difference(wv, gv, at);
                at.truncate(len);
                d
            })
        }
        (w, g) if super::same_json(w, g) => None,
        (w, g) => differ(at, w, Some(g)),
    }
}

/// A value for a message: long text (a payload) is cut.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};
    use std::collections::BTreeMap;

    pub(crate) fn body() -> Body {
        Body {
            v: 1,
            id: Uuid::parse_str("0193a4f2-7c1e-7d3a-9b2c-1234567890ab").unwrap(),
            probe: "orders".into(),
            instance: "host-1".into(),
            site: "eu-west-1a".into(),
            partition: 2,
            seq: 41,
            scheduled_at_ns: 1_764_446_400_123_456_789,
            tags: BTreeMap::new(),
            payload: "abcdef".into(),
        }
    }

    pub(crate) fn fill(b: &Body) -> Fill<'_> {
        Fill::new(
            b,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            true,
        )
    }

    pub(crate) fn json_template(doc: Json) -> Template {
        Template::compile(&doc).unwrap()
    }

    #[test]
    fn placeholders_render_and_exact_numbers_keep_their_type() {
        let t = json_template(serde_json::json!({
            "order_id": "{id}",
            "seq": "{seq}",
            "partition": "{partition}",
            "ms": "{scheduled_at_ms}",
            "ns": "{scheduled_at_ns}",
            "at": "{scheduled_at}",
            "note": "probe {probe}@{instance}/{site} #{seq} {{literal}}",
            "tp": "{traceparent}",
            "trace": "{trace_id}",
            "payload": "{payload}",
            "amount": 42,
            "synthetic": true,
            "items": [{ "sku": "A-{seq}" }],
        }));
        let b = body();
        let doc = t.render(&fill(&b));
        assert_eq!(doc["order_id"], "0193a4f2-7c1e-7d3a-9b2c-1234567890ab");
        assert_eq!(doc["seq"], 41);
        assert_eq!(doc["partition"], 2);
        assert_eq!(doc["ms"], 1_764_446_400_123u64);
        assert_eq!(doc["ns"], 1_764_446_400_123_456_789u64);
        assert_eq!(doc["at"], "2025-11-29T20:00:00.123Z");
        assert_eq!(doc["note"], "probe orders@host-1/eu-west-1a #41 {literal}");
        assert_eq!(
            doc["tp"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(doc["trace"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(doc["payload"], "abcdef");
        assert_eq!(doc["amount"], 42);
        assert_eq!(doc["synthetic"], true);
        assert_eq!(doc["items"][0]["sku"], "A-41");
        assert_eq!(t.pointer_to(Placeholder::Id).as_deref(), Some("/order_id"));
    }

    #[test]
    fn bad_placeholders_name_the_known_ones() {
        let e = Template::compile(&serde_json::json!({"a": {"b": ["x", "{nope}"]}})).unwrap_err();
        assert_eq!(
            e[0].path,
            vec![Step::Key("a".into()), Step::Key("b".into()), Step::Index(1)]
        );
        assert!(
            e[0].message
                .starts_with("unknown placeholder `{nope}`; known: {id}, {seq}")
        );
        assert!(Text::parse("{id").unwrap_err().contains("unclosed"));
        assert!(Text::parse("a}b").unwrap_err().contains("unmatched"));
    }

    #[test]
    fn the_traceparent_placeholder_is_what_the_propagator_writes() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
        let b = body();
        let f = fill(&b);
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let mut map = std::collections::HashMap::new();
        opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&cx, &mut map);
        let mut tp = String::new();
        f.text(Placeholder::Traceparent, &mut tp);
        assert_eq!(map["traceparent"], tp);
    }
}
