//! Avro for a probe record: the value template compiled against an Avro schema (every node
//! knows the Avro type it fills), encoded as plain Avro binary or in the Confluent wire format
//! (magic byte 0, the schema id as 4 big-endian bytes, then the Avro binary); and the writer
//! schemas of another stage's records, fetched by the id in each record, for decoding them.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use apache_avro::schema::{Name, Schema, UnionSchema};
use apache_avro::types::Value as Avro;
use serde_json::Value as Json;

use super::Corruption;
use super::shape::{Fill, Placeholder, Step, Template, TemplateError, Text};

/// An Avro value template, compiled against its schema: each node knows the Avro type it fills.
#[derive(Debug, Clone)]
enum AvroTemplate {
    /// A value without placeholders, already resolved against its schema.
    Const(Avro),
    /// A string, bytes or UUID filled from a text template.
    Text(Text, TextKind),
    /// A number or timestamp from a numeric placeholder.
    Number(Placeholder, NumberKind),
    Record(Vec<(String, AvroTemplate)>),
    Array(Vec<AvroTemplate>),
    Map(Vec<(String, AvroTemplate)>),
    Union(u32, Box<AvroTemplate>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    String,
    Bytes,
    Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberKind {
    Int,
    Long,
    Float,
    Double,
    TimestampMillis,
    TimestampMicros,
    TimestampNanos,
    LocalTimestampMillis,
    LocalTimestampMicros,
    LocalTimestampNanos,
}

impl NumberKind {
    fn of(schema: &Schema) -> Option<NumberKind> {
        Some(match schema {
            Schema::Int => NumberKind::Int,
            Schema::Long => NumberKind::Long,
            Schema::Float => NumberKind::Float,
            Schema::Double => NumberKind::Double,
            Schema::TimestampMillis => NumberKind::TimestampMillis,
            Schema::TimestampMicros => NumberKind::TimestampMicros,
            Schema::TimestampNanos => NumberKind::TimestampNanos,
            Schema::LocalTimestampMillis => NumberKind::LocalTimestampMillis,
            Schema::LocalTimestampMicros => NumberKind::LocalTimestampMicros,
            Schema::LocalTimestampNanos => NumberKind::LocalTimestampNanos,
            _ => return None,
        })
    }

    fn is_timestamp(self) -> bool {
        !matches!(
            self,
            NumberKind::Int | NumberKind::Long | NumberKind::Float | NumberKind::Double
        )
    }

    /// The value of placeholder `p` as this kind; timestamps are scaled from nanoseconds.
    fn value(self, p: Placeholder, fill: &Fill) -> Result<Avro, String> {
        let n = fill.number(p).unwrap_or_default();
        let too_big = || format!("{{{}}} = {n} does not fit the field", p.name());
        let long = |n: i128| i64::try_from(n).map_err(|_| too_big());
        let ns = || long(i128::from(fill.body.scheduled_at_ns));
        Ok(match self {
            NumberKind::Int => Avro::Int(i32::try_from(n).map_err(|_| too_big())?),
            NumberKind::Long => Avro::Long(long(n)?),
            NumberKind::Float => Avro::Float(n as f32),
            NumberKind::Double => Avro::Double(n as f64),
            NumberKind::TimestampMillis => Avro::TimestampMillis(ns()? / 1_000_000),
            NumberKind::TimestampMicros => Avro::TimestampMicros(ns()? / 1_000),
            NumberKind::TimestampNanos => Avro::TimestampNanos(ns()?),
            NumberKind::LocalTimestampMillis => Avro::LocalTimestampMillis(ns()? / 1_000_000),
            NumberKind::LocalTimestampMicros => Avro::LocalTimestampMicros(ns()? / 1_000),
            NumberKind::LocalTimestampNanos => Avro::LocalTimestampNanos(ns()?),
        })
    }
}

/// A schema with the named types it refers to.
struct Schemas<'s> {
    names: &'s HashMap<Name, Schema>,
}

impl Schemas<'_> {
    /// The schema itself, or the named schema a reference stands for.
    fn deref<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.names.get(name).unwrap_or(schema),
            other => other,
        }
    }
}

/// A literal (or a field's default) as the Avro value of `schema` (a text UUID, a number into a
/// timestamp, a symbol into an enum...).
fn constant(v: &Json, schema: &Schema, s: &Schemas) -> apache_avro::AvroResult<Avro> {
    Avro::try_from(v.clone()).and_then(|a| a.resolve_with_names(schema, s.names))
}

/// A short name of a schema's type, for messages.
fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Enum(e) => format!("enum {}", e.name.name()),
        Schema::Fixed(f) => format!("fixed {}", f.name.name()),
        Schema::Ref { name } => name.name().to_string(),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Union(u) => {
            let branches: Vec<String> = u.variants().iter().map(type_name).collect();
            format!("union [{}]", branches.join(", "))
        }
        Schema::Uuid(_) => "string (uuid)".into(),
        Schema::TimestampMillis => "long (timestamp-millis)".into(),
        Schema::TimestampMicros => "long (timestamp-micros)".into(),
        Schema::TimestampNanos => "long (timestamp-nanos)".into(),
        Schema::Date => "int (date)".into(),
        other => {
            let json = serde_json::to_value(other).unwrap_or(Json::Null);
            match json {
                Json::String(s) => s,
                Json::Object(o) => o
                    .get("type")
                    .and_then(Json::as_str)
                    .unwrap_or("complex")
                    .to_string(),
                _ => "complex".into(),
            }
        }
    }
}

fn describe(doc: &Json) -> &'static str {
    match doc {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "text",
        Json::Array(_) => "a list",
        Json::Object(_) => "a mapping",
    }
}

impl AvroTemplate {
    fn compile(
        doc: &Template,
        schema: &Schema,
        s: &Schemas,
        path: &mut Vec<Step>,
        errors: &mut Vec<TemplateError>,
    ) -> Option<AvroTemplate> {
        let schema = s.deref(schema);
        match (doc, schema) {
            (_, Schema::Union(u)) => AvroTemplate::union(doc, u, s, path, errors),
            (Template::Object(fields), Schema::Record(r)) => {
                let mut out = Vec::with_capacity(r.fields.len());
                let mut ok = true;
                for (k, _) in fields {
                    if !r.lookup.contains_key(k) {
                        let known: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
                        path.push(Step::Key(k.clone()));
                        errors.push(TemplateError {
                            key: true,
                            ..TemplateError::at(
                                path,
                                format!(
                                    "record {} has no field `{k}` (its fields: {})",
                                    r.name.name(),
                                    known.join(", ")
                                ),
                            )
                        });
                        path.pop();
                        ok = false;
                    }
                }
                for f in &r.fields {
                    let given = fields.iter().find(|(k, _)| *k == f.name);
                    let compiled = match (given, &f.default) {
                        (Some((_, t)), _) => {
                            path.push(Step::Key(f.name.clone()));
                            let c = AvroTemplate::compile(t, &f.schema, s, path, errors);
                            path.pop();
                            c
                        }
                        (None, Some(default)) => match constant(default, &f.schema, s) {
                            Ok(v) => Some(AvroTemplate::Const(v)),
                            Err(e) => {
                                errors.push(TemplateError::at(
                                    path,
                                    format!(
                                        "the default of field `{}` does not fit its type: {e}",
                                        f.name
                                    ),
                                ));
                                None
                            }
                        },
                        (None, None) => {
                            errors.push(TemplateError::at(
                                path,
                                format!(
                                    "missing required field `{}` ({}) of record {}",
                                    f.name,
                                    type_name(s.deref(&f.schema)),
                                    r.name.name()
                                ),
                            ));
                            None
                        }
                    };
                    match compiled {
                        Some(c) => out.push((f.name.clone(), c)),
                        None => ok = false,
                    }
                }
                ok.then_some(AvroTemplate::Record(out))
            }
            (Template::Array(items), Schema::Array(a)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    let c = AvroTemplate::compile(item, &a.items, s, path, errors);
                    path.pop();
                    out.push(c?);
                }
                Some(AvroTemplate::Array(out))
            }
            (Template::Object(fields), Schema::Map(m)) => {
                let mut out = Vec::with_capacity(fields.len());
                for (k, t) in fields {
                    path.push(Step::Key(k.clone()));
                    let c = AvroTemplate::compile(t, &m.types, s, path, errors);
                    path.pop();
                    out.push((k.clone(), c?));
                }
                Some(AvroTemplate::Map(out))
            }
            (Template::Text(t), _) => AvroTemplate::text(t, schema, path, errors),
            (Template::Literal(v), _) => {
                // Literal UUIDs and timestamps as written for a JSON consumer are taken too.
                match constant(v, schema, s) {
                    Ok(v) => Some(AvroTemplate::Const(v)),
                    Err(_) => {
                        errors.push(TemplateError::at(
                            path,
                            format!(
                                "{} {v} does not fit type {}",
                                describe(v),
                                type_name(schema)
                            ),
                        ));
                        None
                    }
                }
            }
            (t, _) => {
                let what = match t {
                    Template::Array(_) => "a list",
                    _ => "a mapping",
                };
                errors.push(TemplateError::at(
                    path,
                    format!("{what} does not fit type {}", type_name(schema)),
                ));
                None
            }
        }
    }

    /// A union takes null for its null branch, else the first other branch the template fits.
    fn union(
        doc: &Template,
        u: &UnionSchema,
        s: &Schemas,
        path: &mut [Step],
        errors: &mut Vec<TemplateError>,
    ) -> Option<AvroTemplate> {
        let is_null = matches!(doc, Template::Literal(Json::Null));
        for (i, branch) in u.variants().iter().enumerate() {
            if is_null != matches!(branch, Schema::Null) {
                continue;
            }
            let mut trial = Vec::new();
            let mut sub = path.to_vec();
            if let Some(c) = AvroTemplate::compile(doc, branch, s, &mut sub, &mut trial)
                && trial.is_empty()
            {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                return Some(AvroTemplate::Union(i, Box::new(c)));
            }
        }
        errors.push(TemplateError::at(
            path,
            format!(
                "this value fits no branch of {}",
                type_name(&Schema::Union(u.clone()))
            ),
        ));
        None
    }

    fn text(
        t: &Text,
        schema: &Schema,
        path: &[Step],
        errors: &mut Vec<TemplateError>,
    ) -> Option<AvroTemplate> {
        let exact = t.exact();
        let kind = match schema {
            Schema::String => Some(TextKind::String),
            Schema::Bytes => Some(TextKind::Bytes),
            Schema::Uuid(_) if exact == Some(Placeholder::Id) => Some(TextKind::Uuid),
            _ => None,
        };
        if let Some(kind) = kind {
            return Some(AvroTemplate::Text(t.clone(), kind));
        }
        // A timestamp takes any form of the scheduled time; another number, a number.
        if let (Some(p), Some(kind)) = (exact, NumberKind::of(schema))
            && (if kind.is_timestamp() {
                p.is_time()
            } else {
                p.is_number()
            })
        {
            return Some(AvroTemplate::Number(p, kind));
        }
        let what = match exact {
            Some(p) if p.is_number() => format!("{{{}}} (a number)", p.name()),
            Some(p) => format!("{{{}}} (text)", p.name()),
            None => "templated text".to_string(),
        };
        errors.push(TemplateError::at(
            path,
            format!("{what} does not fit type {}", type_name(schema)),
        ));
        None
    }

    fn render(&self, fill: &Fill) -> Result<Avro, String> {
        Ok(match self {
            AvroTemplate::Const(v) => v.clone(),
            AvroTemplate::Text(t, TextKind::String) => Avro::String(t.render(fill)),
            AvroTemplate::Text(t, TextKind::Bytes) => Avro::Bytes(t.render(fill).into_bytes()),
            AvroTemplate::Text(_, TextKind::Uuid) => Avro::Uuid(fill.body.id),
            AvroTemplate::Number(p, kind) => kind.value(*p, fill)?,
            AvroTemplate::Record(fields) => Avro::Record(
                fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(fill)?)))
                    .collect::<Result<_, String>>()?,
            ),
            AvroTemplate::Array(items) => Avro::Array(
                items
                    .iter()
                    .map(|t| t.render(fill))
                    .collect::<Result<_, _>>()?,
            ),
            AvroTemplate::Map(fields) => Avro::Map(
                fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(fill)?)))
                    .collect::<Result<_, String>>()?,
            ),
            AvroTemplate::Union(i, t) => Avro::Union(*i, Box::new(t.render(fill)?)),
        })
    }
}

/// How an Avro value is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// The Avro binary alone.
    Plain,
    /// The Confluent wire format; the schema id is fixed in the probe file or resolved from a
    /// Schema Registry before the first record is sent.
    Confluent,
}

/// The Confluent wire format's first byte.
pub const MAGIC: u8 = 0;

/// An Avro schema, its named types, and the value template compiled against it.
pub struct AvroFormat {
    /// The schema as written in its file (what a registry is given).
    pub text: String,
    schema: Schema,
    /// The schema's named types, for walking a value before decoding it.
    names: HashMap<Name, Schema>,
    template: AvroTemplate,
    pub framing: Framing,
    /// The schema id written after the magic byte: set at load when fixed in the probe file,
    /// else once a Schema Registry gave it.
    schema_id: OnceLock<u32>,
}

impl fmt::Debug for AvroFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AvroFormat")
            .field("schema", &type_name(&self.schema))
            .field("framing", &self.framing)
            .field("schema_id", &self.schema_id.get())
            .finish()
    }
}

/// Why an Avro format cannot be built.
#[derive(Debug)]
pub enum AvroError {
    /// The schema itself is invalid.
    Schema(String),
    /// The template does not fit the schema.
    Template(Vec<TemplateError>),
}

/// Parses an Avro schema; the message names what is wrong (and, for JSON syntax, where).
pub fn parse_schema(text: &str) -> Result<Schema, String> {
    Schema::parse_str(text).map_err(|e| e.to_string())
}

/// Every named type of `schema`, owned.
fn named_types(schema: &Schema) -> Result<HashMap<Name, Schema>, String> {
    let resolved =
        apache_avro::schema::ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    Ok(resolved
        .get_names()
        .iter()
        .map(|(n, s)| (n.clone(), (*s).clone()))
        .collect())
}

impl AvroFormat {
    /// Compiles `template` against the schema written as `text`.
    pub fn new(
        text: &str,
        template: &Template,
        framing: Framing,
        schema_id: Option<u32>,
    ) -> Result<AvroFormat, AvroError> {
        let schema = parse_schema(text).map_err(AvroError::Schema)?;
        let names = named_types(&schema).map_err(AvroError::Schema)?;
        let mut errors = Vec::new();
        let compiled = AvroTemplate::compile(
            template,
            &schema,
            &Schemas { names: &names },
            &mut Vec::new(),
            &mut errors,
        );
        let (Some(compiled), true) = (compiled, errors.is_empty()) else {
            return Err(AvroError::Template(errors));
        };
        let id = OnceLock::new();
        if let Some(given) = schema_id {
            let _ = id.set(given);
        }
        Ok(AvroFormat {
            text: text.to_string(),
            schema,
            names,
            template: compiled,
            framing,
            schema_id: id,
        })
    }

    /// The schema id, once known.
    pub fn schema_id(&self) -> Option<u32> {
        self.schema_id.get().copied()
    }

    /// Sets the schema id a registry gave (the first one set stays).
    pub fn set_schema_id(&self, id: u32) {
        let _ = self.schema_id.set(id);
    }

    /// The value of one record.
    pub(super) fn render(&self, fill: &Fill) -> Result<Avro, String> {
        self.template.render(fill)
    }

    /// The framed bytes of one record.
    pub(super) fn encode(&self, fill: &Fill) -> Result<Vec<u8>, String> {
        let value = self.render(fill)?;
        let mut out = match self.framing {
            Framing::Plain => Vec::new(),
            Framing::Confluent => {
                let id = self.schema_id().ok_or_else(|| {
                    "the schema id is not known yet (the Schema Registry has not answered)"
                        .to_string()
                })?;
                let mut head = Vec::with_capacity(64);
                head.push(MAGIC);
                head.extend_from_slice(&id.to_be_bytes());
                head
            }
        };
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&self.schema)
            .build()
            .map_err(|e| e.to_string())?;
        writer
            .write_value_ref(&mut out, &value)
            .map_err(|e| format!("cannot encode the record as Avro: {e}"))?;
        Ok(out)
    }

    /// Decodes a value written with this schema (and, in the Confluent framing, this schema id).
    pub(super) fn decode(&self, bytes: &[u8]) -> Result<Avro, Corruption> {
        let body = match self.framing {
            Framing::Plain => bytes,
            Framing::Confluent => {
                let (id, rest) = confluent_header(bytes).map_err(Corruption::Undecodable)?;
                let want = self.schema_id().unwrap_or_default();
                if id != want {
                    return Err(Corruption::Field {
                        field: "schema id".into(),
                        expected: want.to_string(),
                        got: id.to_string(),
                    });
                }
                rest
            }
        };
        decode_avro(&self.schema, &self.names, body)
    }
}

/// The schema id and the Avro binary of a value in the Confluent wire format.
pub fn confluent_header(bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    match bytes {
        [MAGIC, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [MAGIC, ..] => Err("too short for the Confluent wire format".into()),
        [first, ..] => Err(format!(
            "not the Confluent wire format: first byte {first}, expected 0"
        )),
        [] => Err("the value is empty".into()),
    }
}

/// The most apache-avro may allocate for one length or collection while decoding (its default
/// is 512 MiB). A length prefix is read before the bytes it counts, so without this a value of
/// a few bytes on the topic (a string "of 500 MB", an array of a million nulls in a writer
/// schema anyone can register) makes the agent reserve, or fill, hundreds of megabytes. Every
/// Kafka record is far smaller than this (the broker's default limit is 1 MB).
pub const MAX_DECODE_ALLOCATION: usize = 16 * 1024 * 1024;

/// The deepest nesting (records, arrays, maps) a decoded value may have. apache-avro
/// decodes (and drops) values recursively, without a limit: a recursive schema (a linked list,
/// a tree) lets a value of a few kilobytes nest deep enough to overflow the thread's stack,
/// which aborts the process. Deeper values are refused before decoding, as serde_json refuses
/// JSON nested deeper than 128.
pub const MAX_DECODE_DEPTH: usize = 128;

/// At most this many array or map items are walked (apache-avro refuses more anyway: each
/// takes a `Value` of its allocation bound).
const MAX_DECODE_ITEMS: usize = MAX_DECODE_ALLOCATION / std::mem::size_of::<Avro>();

/// Walks an Avro datum without building it, to refuse one that nests deeper than
/// [`MAX_DECODE_DEPTH`] before apache-avro recurses into it. Only depth and item counts are
/// judged: anything else it cannot read (a truncated value, an unknown reference) ends the
/// walk, and apache-avro gives the real error.
struct DepthWalk<'a> {
    bytes: &'a [u8],
    names: &'a HashMap<Name, Schema>,
    items: usize,
}

/// Why a walk stopped: the value is too deep (refused) or could not be read further (left to
/// apache-avro).
enum WalkEnd {
    TooDeep(String),
    Unreadable,
}

impl DepthWalk<'_> {
    fn long(&mut self) -> Result<i64, WalkEnd> {
        let mut n: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self.bytes.split_first().ok_or(WalkEnd::Unreadable)?;
            self.bytes = rest;
            n |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        Err(WalkEnd::Unreadable)
    }

    fn skip(&mut self, n: usize) -> Result<(), WalkEnd> {
        self.bytes = self.bytes.get(n..).ok_or(WalkEnd::Unreadable)?;
        Ok(())
    }

    fn skip_counted(&mut self) -> Result<(), WalkEnd> {
        let n = usize::try_from(self.long()?).map_err(|_| WalkEnd::Unreadable)?;
        self.skip(n)
    }

    /// Array or map blocks: a count (negative: followed by a byte size), 0 ends them.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), WalkEnd>,
    ) -> Result<(), WalkEnd> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?;
            }
            for _ in 0..count.unsigned_abs() {
                self.items += 1;
                if self.items > MAX_DECODE_ITEMS {
                    return Err(WalkEnd::Unreadable); // apache-avro refuses it by size
                }
                item(self)?;
            }
        }
    }

    fn value(&mut self, schema: &Schema, depth: usize) -> Result<(), WalkEnd> {
        if depth > MAX_DECODE_DEPTH {
            return Err(WalkEnd::TooDeep(format!(
                "the value nests deeper than {MAX_DECODE_DEPTH} levels: not decoded"
            )));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.skip(1),
            Schema::Int
            | Schema::Long
            | Schema::Enum(_)
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.skip(4),
            Schema::Double => self.skip(8),
            Schema::Bytes | Schema::String | Schema::BigDecimal => self.skip_counted(),
            Schema::Uuid(apache_avro::schema::UuidSchema::Fixed(f))
            | Schema::Fixed(f)
            | Schema::Duration(f) => self.skip(f.size),
            Schema::Uuid(_) => self.skip_counted(),
            Schema::Decimal(d) => match &d.inner {
                apache_avro::schema::InnerDecimalSchema::Fixed(f) => self.skip(f.size),
                apache_avro::schema::InnerDecimalSchema::Bytes => self.skip_counted(),
            },
            // A union or a reference is no level of its own: what it holds is.
            Schema::Union(u) => {
                let i = usize::try_from(self.long()?).map_err(|_| WalkEnd::Unreadable)?;
                let variant = u.variants().get(i).ok_or(WalkEnd::Unreadable)?;
                self.value(variant, depth)
            }
            Schema::Record(r) => r
                .fields
                .iter()
                .try_for_each(|f| self.value(&f.schema, depth + 1)),
            Schema::Array(a) => self.blocks(|w| w.value(&a.items, depth + 1)),
            Schema::Map(m) => self.blocks(|w| {
                w.skip_counted()?;
                w.value(&m.types, depth + 1)
            }),
            Schema::Ref { name } => {
                let names = self.names;
                let named = names
                    .get(name)
                    .or_else(|| {
                        names
                            .iter()
                            .find(|(n, _)| n.name() == name.name())
                            .map(|(_, s)| s)
                    })
                    .ok_or(WalkEnd::Unreadable)?;
                self.value(named, depth)
            }
        }
    }
}

/// Refuses a value nested deeper than [`MAX_DECODE_DEPTH`] (see there); `Ok` otherwise, also
/// for values apache-avro will refuse for another reason.
fn check_depth(
    schema: &Schema,
    names: &HashMap<Name, Schema>,
    body: &[u8],
) -> Result<(), Corruption> {
    let mut walk = DepthWalk {
        bytes: body,
        names,
        items: 0,
    };
    match walk.value(schema, 0) {
        Err(WalkEnd::TooDeep(why)) => Err(Corruption::Undecodable(why)),
        Ok(()) | Err(WalkEnd::Unreadable) => Ok(()),
    }
}

/// Decodes one Avro datum that must use every byte; `names`: the schema's named types.
/// Named references are resolved from the root schema itself.
fn decode_avro(
    schema: &Schema,
    names: &HashMap<Name, Schema>,
    mut body: &[u8],
) -> Result<Avro, Corruption> {
    // Process-wide and set once; the first decode sets it before anything is allocated.
    apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
    check_depth(schema, names, body)?;
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .map_err(|e| Corruption::Undecodable(e.to_string()))?;
    let value = reader
        .read_value(&mut body)
        .map_err(|e| Corruption::Undecodable(format!("not Avro of the probe's schema: {e}")))?;
    if !body.is_empty() {
        return Err(Corruption::Undecodable(format!(
            "{} bytes left after the Avro value",
            body.len()
        )));
    }
    Ok(value)
}

/// An Avro value as JSON (UUIDs as text, timestamps as numbers, bytes as lists of numbers).
pub fn avro_to_json(value: Avro) -> Json {
    Json::try_from(value).unwrap_or(Json::Null)
}

/// A writer schema fetched by id, for decoding another stage's Avro records.
pub struct WriterSchema {
    schema: Schema,
    /// Its named types, for walking a value before decoding it.
    names: HashMap<Name, Schema>,
}

impl WriterSchema {
    /// Parses a schema given by a registry.
    pub fn parse(text: &str) -> Result<WriterSchema, String> {
        let schema = parse_schema(text)?;
        // Every reference must resolve, as the decoder will need it to.
        let names = named_types(&schema)?;
        Ok(WriterSchema { schema, names })
    }

    /// Decodes the Avro binary after the Confluent header into JSON.
    pub fn decode_json(&self, body: &[u8]) -> Result<Json, String> {
        decode_avro(&self.schema, &self.names, body)
            .map(avro_to_json)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::shape::tests::{body, fill, json_template};
    use crate::record::shape::{Shape, ValueFormat};

    const ORDER: &str = r#"{
      "type": "record", "name": "Order", "namespace": "shop",
      "fields": [
        {"name": "order_id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "seq", "type": "long"},
        {"name": "partition", "type": "int"},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "amount", "type": "double"},
        {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD"]}},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
            {"name": "id", "type": "string"}, {"name": "vip", "type": "boolean", "default": false}]}},
        {"name": "previous", "type": ["null", "Customer"], "default": null},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
        {"name": "synthetic", "type": "boolean"}
      ]
    }"#;

    fn order_template() -> Template {
        json_template(serde_json::json!({
            "order_id": "{id}",
            "seq": "{seq}",
            "partition": "{partition}",
            "created_at": "{scheduled_at_ms}",
            "amount": 42.5,
            "currency": "EUR",
            "note": "probe {probe}",
            "customer": { "id": "c-{seq}" },
            "previous": { "id": "c-0" },
            "synthetic": true,
        }))
    }

    #[test]
    fn avro_round_trip_and_field_diff() {
        let avro = AvroFormat::new(ORDER, &order_template(), Framing::Confluent, Some(7)).unwrap();
        let shape = Shape {
            key: Text::parse("{id}").unwrap(),
            template: order_template(),
            value: ValueFormat::Avro(Box::new(avro)),
        };
        let b = body();
        let f = fill(&b);
        let (key, value) = shape.encode(&f).unwrap();
        assert_eq!(key, "0193a4f2-7c1e-7d3a-9b2c-1234567890ab");
        assert_eq!(&value[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(shape.verify(&f, Some(key.as_bytes()), Some(&value)), Ok(()));
        let original = shape.original(&f);
        assert_eq!(original["created_at"], 1_764_446_400_123i64);
        assert_eq!(original["note"], "probe orders");
        assert_eq!(original["customer"]["vip"], false);
        assert_eq!(
            shape.record_id(Some(key.as_bytes()), Some(&value)),
            Some(b.id)
        );

        // Another record's value in this record's place: the first differing field is named.
        let mut other = body();
        other.seq = 42;
        let (_, changed) = shape.encode(&fill(&other)).unwrap();
        match shape.verify(&f, Some(key.as_bytes()), Some(&changed)) {
            Err(Corruption::Field {
                field,
                expected,
                got,
            }) => {
                assert_eq!(
                    (field.as_str(), expected.as_str(), got.as_str()),
                    ("/seq", "41", "42")
                )
            }
            other => panic!("{other:?}"),
        }
        let mut wrong_id = value.clone();
        wrong_id[4] = 8;
        assert!(matches!(
            shape.verify(&f, Some(key.as_bytes()), Some(&wrong_id)),
            Err(Corruption::Field { field, .. }) if field == "schema id"
        ));
        let cut = shape.verify(&f, Some(key.as_bytes()), Some(&value[..value.len() - 1]));
        // apache-avro reads a boolean cut off at the end as null: a field difference then.
        assert!(cut.is_err(), "a truncated value passed");
        let mut longer = value.clone();
        longer.push(0);
        assert!(matches!(
            shape.verify(&f, Some(key.as_bytes()), Some(&longer)),
            Err(Corruption::Undecodable(_))
        ));
        assert!(matches!(
            shape.verify(&f, Some(b"other"), Some(&value)),
            Err(Corruption::Header { .. })
        ));
    }

    #[test]
    fn avro_templates_are_checked_against_the_schema() {
        let t = json_template(serde_json::json!({
            "order_id": "{seq}",
            "seq": "{id}",
            "created_at": "{scheduled_at_ms}",
            "amount": "lots",
            "currency": "GBP",
            "customer": { "id": "c", "name": "x" },
            "synthetic": true,
            "extra": 1,
        }));
        let AvroError::Template(errors) =
            AvroFormat::new(ORDER, &t, Framing::Plain, None).unwrap_err()
        else {
            panic!("the schema is valid")
        };
        let text: Vec<String> = errors
            .iter()
            .map(|e| format!("{:?}: {}", e.path, e.message))
            .collect();
        let all = text.join("\n");
        for want in [
            "record Order has no field `extra`",
            "[Key(\"order_id\")]: {seq} (a number) does not fit type string (uuid)",
            "[Key(\"seq\")]: {id} (text) does not fit type long",
            "missing required field `partition` (int) of record Order",
            "[Key(\"amount\")]: text \"lots\" does not fit type double",
            "[Key(\"currency\")]: text \"GBP\" does not fit type enum Currency",
            "[Key(\"customer\"), Key(\"name\")]: record Customer has no field `name`",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }
}
