//! Property tests over every decoder and parser that reads outside input: the record decoder
//! and its checks (claim, verify, transformed records, `expect` and JSON pointers), Avro values
//! and their writer schemas, the HTTP sink's responses, and the agent and probe files. Whatever
//! comes in: no panic, bounded work (memory measured per call by a counting allocator; nesting
//! and sizes refused before they are followed), and always an outcome the agent counts (a
//! `foreign` reason, a `corrupt` reason, a sink error kind, a located configuration problem).
//!
//! Each property runs 64 cases in `cargo test` (the whole file takes about 20 s); the long mode
//! runs as many as `PROPTEST_CASES` says, e.g.
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release --test properties
//! ```
//!
//! Properties that write files or build megabyte inputs run a tenth as many cases. On a 2-core
//! machine the long mode with 100 000 cases took 35 minutes. A failing case is shrunk and saved
//! under `tests/properties.proptest-regressions`, which is committed: it runs first, every time,
//! from then on.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::Config;
use rdkafka::Timestamp;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use serde_json::{Value as Json, json};
use slo_probe::config::{self, Sources};
use slo_probe::fuzz::{
    Claim, Corruption, Expected, ForeignReason, Origin, Outgoing, Recipe, SinkErrorKind, View,
    WriterSchema,
};

// ---------------------------------------------------------------------------------------------
// Bounded work: bytes allocated by this thread, live and at the peak, around one call.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed to the system allocator unchanged; only sizes are noted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `f` returns, and the most bytes it had allocated at once (on this thread).
fn peak_bytes<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, usize::try_from(peak - start).unwrap_or(0))
}

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Case counts.

/// 64 cases, or `PROPTEST_CASES`; `tenth`: a tenth as many (at least 8), for costly cases.
fn cases(tenth: bool) -> Config {
    let all = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64u32);
    Config {
        cases: if tenth { (all / 10).max(8) } else { all },
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

const PROBE: &str = "orders";
const INSTANCE: &str = "host-abc123";
const TOPIC: &str = "synthetic-sla";

fn origin() -> Origin {
    Origin {
        probe: PROBE.into(),
        instance: INSTANCE.into(),
        site: "eu-west-1a".into(),
    }
}

/// One of the agent's own envelope records.
fn own_record(payload_bytes: usize, seq: u64) -> Outgoing {
    let tags = BTreeMap::from([("team".to_string(), "payments".to_string())]);
    let origin = origin();
    Recipe {
        origin: &origin,
        tags: &tags,
        payload_bytes,
        shape: None,
    }
    .build(2, seq, 1_700_000_000_123_456_789, true)
}

/// A header as a hostile producer may write it: any name bytes (not UTF-8, with NULs), any
/// value bytes, or no value.
type RawHeader = (Vec<u8>, Option<Vec<u8>>);

/// `headers` with `raw` added, written through librdkafka itself: rdkafka's own `insert` takes
/// names as `&str` only, but any other client can write a name that is not UTF-8.
fn with_raw(headers: OwnedHeaders, raw: &[RawHeader]) -> OwnedHeaders {
    let native = (headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders)
        .cast::<rdkafka::bindings::rd_kafka_headers_t>()
        .cast_mut();
    for (name, value) in raw {
        let (v, len) = match value {
            Some(v) => (v.as_ptr().cast(), v.len() as isize),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `native` is the list `headers` owns (a `&BorrowedHeaders` is that pointer);
        // librdkafka copies the name and value it is given, with their lengths.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_header_add(
                native,
                name.as_ptr().cast(),
                name.len() as isize,
                v,
                len,
            )
        };
        assert_eq!(
            err,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
    }
    headers
}

fn message(key: Option<Vec<u8>>, value: Option<Vec<u8>>, headers: OwnedHeaders) -> OwnedMessage {
    OwnedMessage::new(
        value,
        key,
        TOPIC.into(),
        Timestamp::NotAvailable,
        2,
        7,
        Some(headers),
    )
}

/// What a record's claim is counted as: the reason label of a foreign record, or `probe`.
fn claim_label(view: &View) -> &'static str {
    match slo_probe::fuzz::claim(view) {
        Claim::Probe { .. } => "probe",
        Claim::Foreign(reason) => {
            assert!(ForeignReason::ALL.contains(&reason));
            reason.as_str()
        }
    }
}

/// The `reason` label of a corrupt record is one of the documented ones.
fn assert_counted(c: &Corruption) {
    assert!(
        [
            "undecodable",
            "digest",
            "field",
            "header",
            "trace_context",
            "assertion"
        ]
        .contains(&c.kind()),
        "{c}"
    );
    assert!(!c.to_string().is_empty());
}

fn raw_header() -> impl Strategy<Value = RawHeader> {
    let names = prop_oneof![
        // the agent's own names, so that lookups meet them
        prop::sample::select(vec![
            b"traceparent".to_vec(),
            b"tracestate".to_vec(),
            b"slo-probe-id".to_vec(),
            b"slo-probe-probe".to_vec(),
            b"slo-probe-instance".to_vec(),
            b"slo-probe-seq".to_vec(),
            b"team".to_vec(),
        ]),
        // not UTF-8 (a lone continuation byte, an overlong form, a surrogate)
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|mut v| {
            v.push(0x80);
            v
        }),
        prop::collection::vec(any::<u8>(), 0..24),
    ];
    let values = prop::option::weighted(0.9, prop::collection::vec(any::<u8>(), 0..80));
    (names, values)
}

/// Bytes that are often almost an envelope: JSON fragments, numbers, names and braces.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"v\"",
        "1",
        "\"id\"",
        "\"digest\"",
        "\"seq\"",
        "1e400",
        "-0",
        "18446744073709551616",
        "null",
        "true",
        "\"\\ud800\"",
        "\\",
        " ",
        "\u{0}",
    ]);
    prop_oneof![
        prop::collection::vec(token, 0..64).prop_map(|t| t.concat().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// A change to an envelope's bytes.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    /// Repeats one field (`"name":value`) right after itself: a duplicate JSON key.
    DuplicateField(usize),
    /// Replaces a number with another text.
    Number(usize, &'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), jsonish()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::DuplicateField),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "1e400",
                "-1",
                "1.5",
                "18446744073709551616",
                "99999999999999999999999999999999999999",
                "-0",
                "0x10",
                "NaN",
                "1E2",
            ])
        )
            .prop_map(|(i, n)| Edit::Number(i, n)),
    ]
}

fn apply(value: &[u8], edit: &Edit) -> Vec<u8> {
    let mut v = value.to_vec();
    match edit {
        Edit::Truncate(i) => v.truncate(i % v.len()),
        Edit::Flip(i, x) => {
            let i = i % v.len();
            v[i] ^= x;
        }
        Edit::Insert(i, b) => {
            let i = i % (v.len() + 1);
            v.splice(i..i, b.iter().copied());
        }
        Edit::DuplicateField(i) => {
            // fields start after `{` or `,`; pick one and repeat it up to the next `,`
            let starts: Vec<usize> = (0..v.len())
                .filter(|&j| (v[j] == b'{' || v[j] == b',') && v.get(j + 1) == Some(&b'"'))
                .collect();
            if starts.is_empty() {
                return v;
            }
            let s = starts[i % starts.len()] + 1;
            let e = (s..v.len())
                .find(|&j| v[j] == b',' && v.get(j + 1) == Some(&b'"'))
                .unwrap_or(v.len() - 1);
            let field = v[s..e].to_vec();
            let mut dup = field.clone();
            dup.insert(0, b',');
            v.splice(e..e, dup);
        }
        Edit::Number(i, n) => {
            let digits: Vec<usize> = (0..v.len())
                .filter(|&j| v[j].is_ascii_digit() && v.get(j.wrapping_sub(1)) == Some(&b':'))
                .collect();
            if let Some(&s) = digits.get(i % digits.len().max(1)) {
                let e = (s..v.len())
                    .find(|&j| !v[j].is_ascii_digit())
                    .unwrap_or(v.len());
                v.splice(s..e, n.bytes());
            }
        }
    }
    v
}

proptest! {
    #![proptest_config(cases(false))]

    /// Any bytes as a value: the decoder refuses them with a counted reason, never panics,
    /// and never allocates more than a small multiple of what it was given.
    #[test]
    fn any_value_is_decoded_or_refused_with_a_reason(value in jsonish()) {
        let (r, peak) = peak_bytes(|| slo_probe::fuzz::decode(&value));
        let err = r.expect_err("random bytes are never an intact envelope");
        assert_counted(&err);
        prop_assert!(peak <= 64 * value.len() + 64 * 1024, "{peak} bytes for {}", value.len());
    }

    /// Any change to an envelope (truncated, a byte flipped, bytes inserted, a field repeated as
    /// a duplicate key, a number made huge or odd) is refused, or it decodes to exactly what
    /// was sent (whitespace, say): nothing that changed the record passes.
    #[test]
    fn a_changed_envelope_is_refused_or_means_the_same(edits in prop::collection::vec(edit(), 1..4)) {
        let out = own_record(32, 41);
        let mut value = out.value.clone();
        for e in &edits {
            value = apply(&value, e);
            if value.is_empty() {
                value.push(b'{');
            }
        }
        match slo_probe::fuzz::decode(&value) {
            Ok(body) => prop_assert_eq!(&body, &out.body, "{}", String::from_utf8_lossy(&value)),
            Err(e) => assert_counted(&e),
        }
        // the paired consumer's whole check: refused, or the same record
        let m = message(Some(out.key.clone().into_bytes()), Some(value.clone()), out.headers.clone());
        let view = View::of(&m);
        let verdict = slo_probe::fuzz::verify(&Expected::of(&out), &view, true, None);
        if let Err(e) = &verdict {
            assert_counted(e);
        }
        prop_assert_eq!(verdict.is_ok(), slo_probe::fuzz::decode(&value).is_ok());
        prop_assert_eq!(claim_label(&view), "probe", "the headers still claim it");
    }

    /// Any key, value and headers (names that are not UTF-8, NULs, no value, the agent's own
    /// names with other values): the record gets a claim (a probe's, or a counted foreign
    /// reason), and the verifier's checks refuse it with a counted reason, never panicking.
    #[test]
    fn any_record_gets_a_claim_and_a_verdict(
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..48)),
        value in prop::option::of(jsonish()),
        headers in prop::collection::vec(raw_header(), 0..24),
    ) {
        let m = message(key, value, with_raw(OwnedHeaders::new(), &headers));
        let view = View::of(&m);
        claim_label(&view);
        let _ = view.trace_id();
        let out = own_record(8, 1);
        let expected = Expected::of(&out);
        let err = slo_probe::fuzz::verify(&expected, &view, true, None)
            .expect_err("a random record is never the one sent");
        assert_counted(&err);
        if let Err(e) = slo_probe::fuzz::verify_transformed(&expected, &view, &[], None) {
            assert_counted(&e);
        }
        let _ = slo_probe::fuzz::transformed_id(&view, &slo_probe::config::IdFrom::Header("slo-probe-id".into()));
        let _ = slo_probe::fuzz::transformed_id(&view, &slo_probe::config::IdFrom::Pointer("/order/ref".into()));
    }

    /// The agent's own record among hostile headers: added after its own, they change nothing
    /// (the first header of a name counts); added before, one of the agent's names with another
    /// value (or none, or not UTF-8) makes the record corrupt, and only that does.
    #[test]
    fn hostile_headers_around_an_own_record(
        extra in prop::collection::vec(raw_header(), 1..24),
        before in any::<bool>(),
    ) {
        let out = own_record(16, 5);
        let own = own_headers(&out);
        let headers = if before {
            let mut all = with_raw(OwnedHeaders::new(), &extra);
            for (k, v) in &own {
                all = all.insert(Header { key: k, value: Some(v) });
            }
            all
        } else {
            with_raw(out.headers.clone(), &extra)
        };
        let m = message(Some(out.key.clone().into_bytes()), Some(out.value.clone()), headers);
        let view = View::of(&m);
        let verdict = slo_probe::fuzz::verify(&Expected::of(&out), &view, true, None);
        // the first header of each name decides
        let mut first = std::collections::HashSet::new();
        let shadowed = before
            && extra.iter().any(|(name, value)| {
                first.insert(name.clone())
                    && own.iter().any(|(k, v)| {
                        k.as_bytes() == name.as_slice() && value.as_deref() != Some(v.as_slice())
                    })
            });
        if shadowed {
            assert_counted(&verdict.expect_err("a changed own header is corrupt"));
        } else {
            prop_assert_eq!(verdict, Ok(()));
        }
        prop_assert_ne!(claim_label(&view), "unparseable");
    }

    /// JSON nested to any depth (as a value, a transformed record, a sink response): refused
    /// by the parser's depth limit, in bounded memory, never followed down the stack.
    #[test]
    fn deep_json_is_refused_not_followed(depth in 1usize..200_000, object in any::<bool>()) {
        let (open, close): (&[u8], &[u8]) = if object { (b"{\"a\":", b"}") } else { (b"[", b"]") };
        let mut value = open.repeat(depth);
        value.extend_from_slice(b"1");
        value.extend_from_slice(&close.repeat(depth));
        let (r, peak) = peak_bytes(|| slo_probe::fuzz::decode(&value));
        assert_counted(&r.unwrap_err());
        prop_assert!(peak <= 4 * MIB, "{peak}");
        let m = message(None, Some(value.clone()), OwnedHeaders::new());
        let view = View::of(&m);
        prop_assert_eq!(claim_label(&view), "unparseable");
        if let Err(e) = view.json() {
            assert_counted(&e);
        } else {
            prop_assert!(depth <= 128, "parsed {depth} levels");
        }
        let sink = http_sink("/hits");
        match sink.found(&value) {
            Ok(found) => prop_assert!(found.is_empty()),
            Err(e) => prop_assert_eq!(e.kind, SinkErrorKind::InvalidJson),
        }
    }
}

/// The slo-probe headers and tags of an own record, as written.
fn own_headers(out: &Outgoing) -> Vec<(String, Vec<u8>)> {
    let m = message(None, None, out.headers.clone());
    let view = View::of(&m);
    let names = [
        "traceparent",
        "slo-probe-id",
        "slo-probe-probe",
        "slo-probe-instance",
        "slo-probe-seq",
        "team",
    ];
    names
        .iter()
        .map(|n| (n.to_string(), view.header(n).unwrap().as_bytes().to_vec()))
        .collect()
}

/// rdkafka's own header iterator unwraps each header's name as UTF-8: the agent must never use
/// it on a consumed record (it reads headers through librdkafka instead). Should rdkafka stop
/// panicking, this test says so and the workaround can go.
#[test]
fn rdkafka_panics_on_a_header_name_that_is_not_utf8_but_the_agent_does_not() {
    use rdkafka::message::{Headers, Message};
    let out = own_record(8, 3);
    let headers = with_raw(
        out.headers.clone(),
        &[(b"\xff\xfe".to_vec(), Some(b"x".to_vec()))],
    );
    let m = message(
        Some(out.key.clone().into_bytes()),
        Some(out.value.clone()),
        headers,
    );
    let iterated = std::panic::catch_unwind(|| m.headers().unwrap().iter().count());
    assert!(
        iterated.is_err(),
        "rdkafka reads a non-UTF-8 header name without panicking now"
    );
    let view = View::of(&m);
    assert_eq!(claim_label(&view), "probe");
    assert_eq!(
        slo_probe::fuzz::verify(&Expected::of(&out), &view, true, None),
        Ok(())
    );
}

/// 10 000 headers on a record: the claim and every check still answer, in time linear in them.
#[test]
fn ten_thousand_headers() {
    let out = own_record(16, 9);
    let many: Vec<RawHeader> = (0..10_000)
        .map(|i| (format!("h{i}").into_bytes(), Some(vec![b'x'; i % 50])))
        .collect();
    for (own_first, headers) in [
        (true, with_raw(out.headers.clone(), &many)),
        (false, with_raw(OwnedHeaders::new(), &many)),
    ] {
        let m = message(
            Some(out.key.clone().into_bytes()),
            Some(out.value.clone()),
            headers,
        );
        let view = View::of(&m);
        let started = std::time::Instant::now();
        let (verdict, peak) =
            peak_bytes(|| slo_probe::fuzz::verify(&Expected::of(&out), &view, true, None));
        // the envelope names the probe when the headers do not
        assert_eq!(claim_label(&view), "probe");
        // own headers first: intact; none: the headers are missing
        if own_first {
            assert_eq!(verdict, Ok(()));
        } else {
            assert_eq!(verdict.unwrap_err().kind(), "header");
        }
        assert!(peak < MIB, "{peak}");
        // a generous bound that only catches quadratic work (10^8 comparisons take seconds)
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}

/// Values far larger than any envelope (up to the brokers' default limit of 1 MB): refused
/// or verified by size, in memory proportional to them.
#[test]
fn megabyte_values() {
    let out = own_record(1_000_000 - 400, 1);
    assert!(out.value.len() < 1_000_000, "{}", out.value.len());
    let (r, peak) = peak_bytes(|| slo_probe::fuzz::decode(&out.value));
    assert_eq!(r.unwrap(), out.body);
    assert!(peak <= 4 * out.value.len(), "{peak}");
    let mut longer = out.value.clone();
    longer.splice(longer.len() - 80..longer.len() - 80, *b"AAAA");
    assert_eq!(
        slo_probe::fuzz::decode(&longer).unwrap_err().kind(),
        "digest"
    );
    let garbage = vec![b'{'; 1_000_000];
    let (r, peak) = peak_bytes(|| slo_probe::fuzz::decode(&garbage));
    assert_counted(&r.unwrap_err());
    assert!(peak <= 4 * MIB, "{peak}");
}

// ---------------------------------------------------------------------------------------------
// `expect` and JSON pointers.

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z~/0-9\u{0}-\u{7f}]{0,8}".prop_map(Json::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
            prop::collection::vec(("[a-z~/0-9]{0,4}", inner), 0..8)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

fn arb_pointer() -> impl Strategy<Value = String> {
    prop::collection::vec(
        "[a-z0-9~/]{0,4}|~0|~1|~2|~|0|00|-|18446744073709551616",
        0..6,
    )
    .prop_map(|parts| parts.iter().map(|p| format!("/{p}")).collect())
}

proptest! {
    #![proptest_config(cases(false))]

    /// Any document and any `expect` (literal values or `from` pointers, valid or not): an
    /// assertion holds or fails as an `assertion` corruption naming its pointer; a literal
    /// taken from the document at its own pointer always holds.
    #[test]
    fn expectations_hold_or_fail_with_their_pointer(
        doc in arb_json(),
        pointers in prop::collection::vec(arb_pointer(), 1..6),
        from in arb_pointer(),
    ) {
        use slo_probe::config::Expectation;
        let out = own_record(8, 7);
        let expected = Expected::of(&out);
        for p in &pointers {
            let literal = Expectation::Literal(doc.pointer(p).cloned().unwrap_or(Json::Null));
            let exp = vec![(p.clone(), literal)];
            let r = slo_probe::fuzz::check_expectations(&expected, &doc, &exp, None);
            match doc.pointer(p) {
                Some(_) => prop_assert_eq!(r, Ok(())),
                None => match r.unwrap_err() {
                    Corruption::Assertion { pointer, got, .. } => {
                        prop_assert_eq!(&pointer, p);
                        prop_assert_eq!(got, "nothing");
                    }
                    e => prop_assert!(false, "{e}"),
                },
            }
            let exp = vec![(p.clone(), Expectation::FromOriginal(from.clone()))];
            if let Err(e) = slo_probe::fuzz::check_expectations(&expected, &doc, &exp, None) {
                prop_assert_eq!(e.kind(), "assertion");
            }
        }
    }

    /// The HTTP sink's response parser: any body is read as found ids (each one a valid UUID
    /// that is in the body) or refused as `invalid_json`, in memory bounded by the body.
    #[test]
    fn any_sink_response_is_ids_or_invalid_json(
        body in prop_oneof![
            jsonish(),
            arb_json().prop_map(|j| json!({"hits": {"hits": [j, {"_source": {"id": uuid::Uuid::now_v7().to_string()}}]}}).to_string().into_bytes()),
            arb_json().prop_map(|j| j.to_string().into_bytes()),
        ],
        pointer in prop_oneof![Just("/hits/hits".to_string()), Just(String::new()), arb_pointer()],
    ) {
        let sink = http_sink(&pointer);
        let (r, peak) = peak_bytes(|| sink.found(&body));
        match r {
            Ok(found) => {
                let text = String::from_utf8_lossy(&body);
                for f in found {
                    prop_assert!(text.contains(&f.id.to_string()), "{} not in {text}", f.id);
                }
            }
            Err(e) => {
                prop_assert_eq!(e.kind, SinkErrorKind::InvalidJson);
                prop_assert!(!e.message.is_empty());
            }
        }
        prop_assert!(peak <= 64 * body.len() + 64 * 1024, "{peak}");
    }
}

/// The HTTP sink of a probe file, with `ids_pointer` (documents carry their id at
/// `/_source/id`).
fn http_sink(ids_pointer: &str) -> slo_probe::fuzz::HttpSink {
    slo_probe::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("p.yaml");
    std::fs::write(
        &probe,
        format!(
            "name: sink\nverify:\n  http:\n    url: http://127.0.0.1:9/s?ids={{ids}}\n    ids_pointer: \"{ids_pointer}\"\n    id_pointer: /_source/id\n"
        ),
    )
    .unwrap();
    let cfg = config::load(&Sources {
        agent_file: None,
        probe_paths: vec![probe],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let slo_probe::config::Verify::Http(http) = &cfg.probes[0].verify else {
        panic!("an http sink");
    };
    slo_probe::fuzz::HttpSink::new(http).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Avro.

/// A linked list: each level is one union byte, so a few kilobytes nest thousands deep.
const LIST: &str = r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]},{"name":"tag","type":"string"}]}"#;
/// Zero-byte items: a few bytes claim millions of them.
const NULLS: &str = r#"{"type":"array","items":"null"}"#;
const MAP: &str = r#"{"type":"map","values":{"type":"array","items":["null","long","string"]}}"#;
const ORDER: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":{"type":"string","logicalType":"uuid"}},
    {"name":"seq","type":"long"},{"name":"amount","type":"double"},
    {"name":"when","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"cur","type":{"type":"enum","name":"Cur","symbols":["EUR","USD"]}},
    {"name":"fx","type":{"type":"fixed","name":"Fx","size":4}},
    {"name":"note","type":["null","string"]},
    {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}}]}"#;

/// An Avro long, zigzag varint.
fn long(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Bytes that lean on lengths and counts: huge, negative, or zero; and any bytes.
fn avro_bytes() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        prop::sample::select(vec![
            i64::MAX,
            i64::MIN,
            -1,
            0,
            1,
            2,
            1 << 31,
            1 << 40,
            500_000_000,
            -500_000_000
        ])
        .prop_map(long),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(part, 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(cases(false))]

    /// Any bytes in any of these writer schemas: decoded or refused with a reason, never
    /// allocating more than the decoder's bound (a length prefix is not believed), never
    /// recursing past its depth bound.
    #[test]
    fn any_avro_value_is_decoded_or_refused_within_bounds(
        schema in prop::sample::select(vec![LIST, NULLS, MAP, ORDER]),
        body in avro_bytes(),
    ) {
        let schema = WriterSchema::parse(schema).unwrap();
        let (r, peak) = peak_bytes(|| schema.decode_json(&body));
        if let Err(e) = r {
            prop_assert!(!e.is_empty());
        }
        // apache-avro bounds a collection by its items' size; a map's hash table takes up to
        // about twice that (load factor, power-of-two growth): 4 bytes claiming 122 880
        // entries took 21 MB (found by the long mode, kept in the regressions file)
        prop_assert!(
            peak <= 3 * slo_probe::fuzz::MAX_DECODE_ALLOCATION,
            "{peak} bytes for {} bytes of Avro", body.len()
        );
    }

    /// A linked list nested to any depth: decoded when shallow, refused when deeper than the
    /// bound, on a thread with a tokio worker's stack (2 MiB), never overflowing it.
    #[test]
    fn deep_avro_is_refused_before_it_is_followed(depth in 0usize..100_000) {
        let schema = WriterSchema::parse(LIST).unwrap();
        let mut body = vec![0x02; depth];
        body.push(0x00);
        body.extend(std::iter::repeat_n([0x02, b'x'], depth + 1).flatten());
        let r = std::thread::Builder::new()
            .stack_size(2 * MIB)
            .spawn(move || schema.decode_json(&body).map(|_| ()))
            .unwrap()
            .join()
            .expect("no panic, no overflow");
        if depth < 100 {
            prop_assert_eq!(r, Ok(()));
        } else if depth > 130 {
            let e = r.unwrap_err();
            prop_assert!(e.contains("deeper than"), "{e}");
        }
    }
}

/// A few bytes claiming 500 MB (a string) or millions of nulls: refused by the bound, which
/// the decoder sets before its first allocation.
#[test]
fn avro_lengths_are_not_believed() {
    let list = WriterSchema::parse(LIST).unwrap();
    let mut body = vec![0x00];
    body.extend(long(500_000_000));
    let (r, peak) = peak_bytes(|| list.decode_json(&body));
    assert!(r.is_err());
    assert!(peak < 2 * MIB, "{peak}");

    let nulls = WriterSchema::parse(NULLS).unwrap();
    let mut body = long(200_000_000);
    body.push(0);
    let (r, peak) = peak_bytes(|| nulls.decode_json(&body));
    assert!(r.is_err(), "200 million nulls");
    assert!(
        peak <= slo_probe::fuzz::MAX_DECODE_ALLOCATION + MIB,
        "{peak}"
    );
    let mut body = long(1000);
    body.push(0);
    assert_eq!(
        nulls.decode_json(&body).unwrap().as_array().unwrap().len(),
        1000
    );
}

// ---------------------------------------------------------------------------------------------
// Agent and probe files.

/// Loads `text` as the only probe file (and `agent`, when given, as the agent file): the
/// configuration, or every problem, each located in one of the two files (on a line the file
/// has, or the file itself).
fn load(text: &[u8], agent: Option<&[u8]>) -> Result<(), Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probes").join("p.yaml");
    std::fs::create_dir_all(probe.parent().unwrap()).unwrap();
    std::fs::write(&probe, text).unwrap();
    let agent_file = agent.map(|a| {
        let p = dir.path().join("slo-probe.yaml");
        std::fs::write(&p, a).unwrap();
        p
    });
    let sources = Sources {
        agent_file: agent_file.clone(),
        probe_paths: vec![probe.clone()],
    };
    match config::load(&sources) {
        Ok(_) => Ok(()),
        Err(diags) => {
            assert!(!diags.is_empty());
            let mut out = Vec::new();
            for d in diags.iter() {
                let lines = if *d.loc.file == *probe {
                    text
                } else {
                    assert_eq!(Some(d.loc.file.to_path_buf()), agent_file, "{d}");
                    agent.unwrap()
                };
                let count = lines.split(|b| *b == b'\n').count();
                assert!(d.loc.line <= count + 1, "{d}: past the last line ({count})");
                assert!(!d.message.is_empty());
                out.push(d.message.clone());
            }
            Err(out)
        }
    }
}

/// Text that is often almost a probe or agent file.
fn yamlish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "name: p\n",
        "interval: 1s\n",
        "timeout: ",
        "10s",
        "partitions: ",
        "[0, 1]",
        "all",
        "verify:\n",
        "  kafka: { topic: t }\n",
        "  http:\n",
        "    url: ",
        "http://h/{ids}\n",
        "expect:\n",
        "  /a: 1\n",
        "  /b: { from: /seq }\n",
        "slos:\n",
        "  - { name: f, objective: 99% }\n",
        "tags: {a: b}\n",
        "clusters:\n",
        "  c:\n",
        "    bootstrap_servers: k:9092\n",
        "&a ",
        "*a",
        "!!str ",
        "? ",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ": ",
        "\"",
        "'",
        "#",
        "\t",
        "\u{0}",
        "\u{feff}",
        "${ENV}",
        "_file: /dev/zero\n",
        "1e400",
        "\n",
        "  ",
        "---\n",
        "...\n",
        "|\n",
        "payload_bytes: 18446744073709551616\n",
        "max_in_flight: -1\n",
        "window: 0s\n",
    ]);
    prop_oneof![
        prop::collection::vec(token, 0..40).prop_map(|t| t.concat().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    #![proptest_config(cases(false))]

    /// Any bytes as a probe file and as an agent file (YAML fragments, NULs, invalid UTF-8,
    /// anchors, tags): a configuration, or problems each located in its file, never a panic.
    #[test]
    fn any_config_loads_or_every_problem_is_located(probe in yamlish(), agent in prop::option::of(yamlish())) {
        let (r, peak) = peak_bytes(|| load(&probe, agent.as_deref()));
        let _ = r;
        prop_assert!(peak <= 64 * (probe.len() + agent.as_ref().map_or(0, Vec::len)) + 4 * MIB, "{peak}");
    }
}

proptest! {
    #![proptest_config(cases(true))]

    /// A billion-laughs alias bomb of any width and depth, anywhere in a file: refused at its
    /// first anchor, with a located error, without expanding anything.
    #[test]
    fn alias_bombs_are_refused_where_they_start(
        width in 2usize..12,
        depth in 1usize..12,
        preamble in prop::sample::select(vec!["", "name: p\n", "name: p\ntags:\n  x: y\n", "# a comment\n\n"]),
    ) {
        let mut text = String::from(preamble);
        text.push_str("a0: &a0 [\"lol\"]\n");
        for level in 1..=depth {
            let refs = vec![format!("*a{}", level - 1); width].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let anchor_line = preamble.lines().count() + 1;
        let (r, peak) = peak_bytes(|| load(text.as_bytes(), None));
        let problems = r.unwrap_err();
        prop_assert!(
            problems.iter().any(|m| m.contains("anchors and aliases are not supported")),
            "{problems:?}"
        );
        prop_assert!(peak <= 64 * text.len() + 4 * MIB, "{peak}: expanded?");
        // located at the first anchor
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, &text).unwrap();
        let e = config::load(&Sources { agent_file: None, probe_paths: vec![p] }).unwrap_err();
        let d = e.iter().find(|d| d.message.contains("anchors")).unwrap();
        prop_assert_eq!(d.loc.line, anchor_line, "{}", d);
    }

    /// Nesting to any depth and a NUL byte anywhere: a located error or a configuration, in
    /// bounded memory, never a stack overflow; a NUL never ends the file early.
    #[test]
    fn deep_and_nul_files_are_located_errors(depth in 1usize..50_000, nul_at in any::<usize>()) {
        let mut deep = String::from("name: p\ntags: ");
        deep.push_str(&"[".repeat(depth));
        deep.push_str(&"]".repeat(depth));
        deep.push('\n');
        let (r, peak) = peak_bytes(|| load(deep.as_bytes(), None));
        let _ = r;
        prop_assert!(peak <= 1024 * deep.len() + 4 * MIB, "{peak}");

        let mut nul = b"name: p\ninterval: 1s\ntimeout: 5s\n".to_vec();
        let at = nul_at % (nul.len() + 1);
        nul.insert(at, 0);
        // the scanner used to take a NUL for the end of the text and load what came before
        let problems = load(&nul, None).unwrap_err();
        prop_assert!(problems.iter().any(|m| m.contains("NUL")), "a NUL byte at {at}: {problems:?}");
    }
}

/// Files at and over the 4 MiB limit: read and loaded up to it; over it, refused by their size
/// without being read.
#[test]
fn files_at_and_over_the_size_limit() {
    for size in [0usize, 1, 4 * MIB - 64, 4 * MIB + 1, 16 * MIB] {
        let mut big = b"name: p\n# ".to_vec();
        big.resize(size.max(big.len()), b'x');
        big.push(b'\n');
        let (r, peak) = peak_bytes(|| load(&big, None));
        if big.len() > 4 * MIB {
            let problems = r.unwrap_err();
            assert!(
                problems.iter().any(|m| m.contains("more than")),
                "{problems:?}"
            );
            assert!(peak <= MIB, "{peak}: read a file over the limit");
        } else {
            assert_eq!(r, Ok(()), "{size}");
        }
    }
}
