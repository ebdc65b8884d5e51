//! The stand-in Schema Registry (tests/common/registry.rs) answers as the real one does for the
//! endpoints the Avro tests use: register, look up, fetch by id, credentials, unavailability,
//! and the request log.

mod common;

use common::registry::{HttpAuth, StandInSchemaRegistry};
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

const SCHEMA: &str = r#"{"type":"record","name":"Probe","fields":[{"name":"id","type":"string"}]}"#;
/// The same schema, written differently (spacing, key order): the same parsed JSON value.
const SCHEMA_RESPACED: &str =
    r#"{ "name": "Probe", "type": "record", "fields": [ { "type": "string", "name": "id" } ] }"#;
const OTHER: &str = r#"{"type":"record","name":"Other","fields":[{"name":"n","type":"long"}]}"#;

/// POST `body` (as the Avro serializers send it) to `url`, with `auth` applied: (status, JSON).
async fn post(
    url: &str,
    body: &str,
    auth: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let r = auth(
        common::http_client()
            .post(url)
            .header("content-type", CONTENT_TYPE)
            .body(body.to_owned()),
    )
    .send()
    .await
    .unwrap();
    reply(r).await
}

async fn get(url: &str) -> (u16, Value) {
    reply(common::http_client().get(url).send().await.unwrap()).await
}

async fn reply(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, CONTENT_TYPE, "status {status}");
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

fn schema_body(schema: &str) -> String {
    json!({ "schema": schema, "schemaType": "AVRO" }).to_string()
}

fn none(r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    r
}

#[tokio::test]
async fn registers_looks_up_and_serves_schemas() {
    let reg = StandInSchemaRegistry::start(HttpAuth::None).await;
    let u = reg.url();

    let (s, v) = post(
        &format!("{u}/subjects/probe-value/versions"),
        &schema_body(SCHEMA),
        none,
    )
    .await;
    assert_eq!((s, v), (200, json!({"id": 1})));
    // The same schema, written differently, under another subject: the same global id.
    let (s, v) = post(
        &format!("{u}/subjects/other-value/versions"),
        &schema_body(SCHEMA_RESPACED),
        none,
    )
    .await;
    assert_eq!((s, v), (200, json!({"id": 1})));
    // A new schema (body without schemaType, no content type given): the next id.
    let r = common::http_client()
        .post(format!("{u}/subjects/probe-value/versions"))
        .body(json!({ "schema": OTHER }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(reply(r).await, (200, json!({"id": 2})));
    // Registered again under the same subject: no new version.
    let (_, v) = post(
        &format!("{u}/subjects/probe-value/versions"),
        &schema_body(SCHEMA),
        none,
    )
    .await;
    assert_eq!(v, json!({"id": 1}));
    // Pre-registered directly.
    assert_eq!(reg.register("probe-value", OTHER), 2);
    assert_eq!(reg.register("third-value", SCHEMA), 1);

    // Look-ups.
    let (s, v) = post(
        &format!("{u}/subjects/probe-value"),
        &schema_body(SCHEMA_RESPACED),
        none,
    )
    .await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"subject": "probe-value", "id": 1, "version": 1, "schema": SCHEMA})
        )
    );
    let (s, v) = post(
        &format!("{u}/subjects/probe-value"),
        &schema_body(OTHER),
        none,
    )
    .await;
    assert_eq!(
        (s, v["id"].clone(), v["version"].clone()),
        (200, json!(2), json!(2))
    );
    let (s, v) = post(
        &format!("{u}/subjects/nobody-value"),
        &schema_body(SCHEMA),
        none,
    )
    .await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"error_code": 40401, "message": "Subject 'nobody-value' not found."})
        )
    );
    let (s, v) = post(
        &format!("{u}/subjects/third-value"),
        &schema_body(OTHER),
        none,
    )
    .await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"error_code": 40403, "message": "Schema not found"})
        )
    );

    // By id.
    assert_eq!(
        get(&format!("{u}/schemas/ids/1")).await,
        (200, json!({ "schema": SCHEMA }))
    );
    assert_eq!(
        get(&format!("{u}/schemas/ids/40")).await,
        (
            404,
            json!({"error_code": 40403, "message": "Schema 40 not found"})
        )
    );
    assert_eq!(reg.schema_by_id(2).as_deref(), Some(OTHER));
    assert_eq!(reg.schema_by_id(0), None);
    assert_eq!(reg.schema_by_id(3), None);

    // Invalid bodies.
    let invalid = (
        422,
        json!({"error_code": 42201, "message": "Invalid schema"}),
    );
    for body in [
        "not json".to_owned(),
        json!({"nothing": 1}).to_string(),
        schema_body("{not json"),
    ] {
        let url = format!("{u}/subjects/probe-value/versions");
        assert_eq!(post(&url, &body, none).await, invalid, "{body}");
    }

    assert_eq!(
        reg.requests()[..3],
        [
            "POST /subjects/probe-value/versions",
            "POST /subjects/other-value/versions",
            "POST /subjects/probe-value/versions",
        ]
    );
    assert_eq!(reg.requests().len(), 13);

    // Dropped: it stops listening.
    let port = u.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
    drop(reg);
    common::eventually("the stand-in stops listening", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn checks_credentials_and_can_be_unavailable() {
    let unauthorized = (401, json!({"error_code": 40101, "message": "Unauthorized"}));

    let basic = StandInSchemaRegistry::start(HttpAuth::Basic {
        user: "probe".into(),
        password: "s3cret".into(),
    })
    .await;
    let url = format!("{}/subjects/probe-value/versions", basic.url());
    let body = schema_body(SCHEMA);
    assert_eq!(post(&url, &body, none).await, unauthorized);
    assert_eq!(
        post(&url, &body, |r| r.basic_auth("probe", Some("wrong"))).await,
        unauthorized
    );
    assert_eq!(
        post(&url, &body, |r| r.bearer_auth("s3cret")).await,
        unauthorized
    );
    assert_eq!(
        post(&url, &body, |r| r.basic_auth("probe", Some("s3cret"))).await,
        (200, json!({"id": 1}))
    );
    assert_eq!(basic.requests().len(), 4);

    let bearer = StandInSchemaRegistry::start(HttpAuth::Bearer("tok-1".into())).await;
    let url = format!("{}/subjects/probe-value/versions", bearer.url());
    assert_eq!(post(&url, &body, none).await, unauthorized);
    assert_eq!(
        post(&url, &body, |r| r.bearer_auth("tok-2")).await,
        unauthorized
    );
    assert_eq!(
        post(&url, &body, |r| r.bearer_auth("tok-1")).await,
        (200, json!({"id": 1}))
    );

    // Unavailable: 503 for every request, authorized or not; logged all the same.
    bearer.set_unavailable(true);
    let unavailable = (503, json!({"error_code": 50301, "message": "unavailable"}));
    assert_eq!(
        post(&url, &body, |r| r.bearer_auth("tok-1")).await,
        unavailable
    );
    assert_eq!(
        get(&format!("{}/schemas/ids/1?fetchMaxId=false", bearer.url())).await,
        unavailable
    );
    bearer.set_unavailable(false);
    let (s, _) = get(&format!("{}/schemas/ids/1", bearer.url())).await;
    assert_eq!(s, 401);
    assert_eq!(
        bearer.requests(),
        [
            "POST /subjects/probe-value/versions",
            "POST /subjects/probe-value/versions",
            "POST /subjects/probe-value/versions",
            "POST /subjects/probe-value/versions",
            "GET /schemas/ids/1",
            "GET /schemas/ids/1",
        ]
    );
}
