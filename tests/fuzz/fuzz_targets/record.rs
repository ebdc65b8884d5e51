//! A record read back by the verifier, from any bytes: a key, a value and headers (names that
//! need not be UTF-8). It must get a claim and a verdict (the agent's own record, a foreign
//! reason, a corruption reason), never a panic. The input is split at 0xFF bytes: key, value,
//! then header name and value pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rdkafka::message::{OwnedHeaders, OwnedMessage};
use slo_probe::fuzz::{Expected, Origin, Recipe, View};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xff);
    let key = parts.next().map(<[u8]>::to_vec);
    let value = parts.next().map(<[u8]>::to_vec);
    let headers = OwnedHeaders::new();
    let native = (headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders)
        .cast::<rdkafka::bindings::rd_kafka_headers_t>()
        .cast_mut();
    while let (Some(name), value) = (parts.next(), parts.next()) {
        let (v, len) = value.map_or((std::ptr::null(), 0), |v| {
            (v.as_ptr().cast(), v.len() as isize)
        });
        // SAFETY: `native` is the list `headers` owns; librdkafka copies name and value.
        unsafe {
            rdkafka::bindings::rd_kafka_header_add(
                native,
                name.as_ptr().cast(),
                name.len() as isize,
                v,
                len,
            );
        }
    }
    let m = OwnedMessage::new(
        value,
        key,
        "t".into(),
        rdkafka::Timestamp::NotAvailable,
        0,
        0,
        Some(headers),
    );
    let view = View::of(&m);
    let _ = slo_probe::fuzz::claim(&view);
    if let Some(v) = view.value {
        let _ = slo_probe::fuzz::decode(v);
    }
    let origin = Origin {
        probe: "p".into(),
        instance: "i".into(),
        site: "s".into(),
    };
    let tags = Default::default();
    let out = Recipe {
        origin: &origin,
        tags: &tags,
        payload_bytes: 8,
        shape: None,
    }
    .build(0, 1, 1, true);
    assert!(slo_probe::fuzz::verify(&Expected::of(&out), &view, true, None).is_err());
});
