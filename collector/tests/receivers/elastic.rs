//! Elasticsearch compatibility: the version document and `_bulk`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use sightline_collector::elastic;
use sightline_collector::ingest::Ingest;

use crate::harness::{Harness, gzip, now_nanos, post, send};

/// Mounted as `lib.rs` mounts it, with the `/elastic/` route it also needs.
fn router(ingest: Ingest) -> Router {
    Router::new()
        .nest("/elastic", elastic::router(ingest))
        .route("/elastic/", elastic::root_route())
}

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_nanos())).unwrap();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn the_root_answers_a_version_document() {
    let harness = Harness::start();
    for path in ["/elastic", "/elastic/"] {
        let answer = send(
            router(harness.ingest.clone()),
            Request::get(path).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {:?}", answer.body);
        assert_eq!(
            answer.header("x-elastic-product"),
            Some("Elasticsearch"),
            "{path}"
        );
        let info = answer.json();
        assert_eq!(info["version"]["number"], "8.11.0");
        assert_eq!(info["version"]["build_flavor"], "default");
        assert_eq!(info["tagline"], "You Know, for Search");
    }
    let answer = send(
        router(harness.ingest.clone()),
        Request::head("/elastic").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-elastic-product"), Some("Elasticsearch"));
    assert!(answer.body.is_empty());

    let answer = send(
        router(harness.ingest.clone()),
        Request::get("/elastic/_cluster/health")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.json()["status"], "green");
    let answer = send(
        router(harness.ingest.clone()),
        Request::get("/elastic/_nodes").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.header("x-elastic-product"), Some("Elasticsearch"));
    assert_eq!(answer.json()["status"], 404);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_stores_the_good_items_and_reports_the_bad_ones() {
    let harness = Harness::start();
    let now = rfc3339_now();
    let body = ndjson(&[
        json!({"index": {"_index": "fluent-bit", "_id": "a1"}}),
        json!({"@timestamp": now, "log": "order placed\n", "level": "info", "request_id": "req-9",
               "kubernetes": {"pod_name": "order-1", "namespace_name": "shop", "container_name": "order", "host": "node-1"}}),
        json!({"index": {}}),
        json!({"@timestamp": "1971-01-01T00:00:00Z", "message": "too old"}),
        json!({"delete": {"_id": "a1"}}),
        json!({"create": {}}),
        json!({"message": "created", "service": "cart", "traceId": "0123456789abcdef0123456789abcdef"}),
        json!({"update": {"_id": "a1"}}),
        json!({"doc": {"message": "changed"}}),
        json!({"index": {}}),
        json!("just a string"),
    ]) + "{\"index\":{}}\n{\"message\": \"unterminated}\n";
    let answer = send(
        router(harness.ingest.clone()),
        post(
            "/elastic/logs-shop/_bulk",
            &[("content-type", "application/x-ndjson")],
            body,
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.header("x-elastic-product"), Some("Elasticsearch"));
    let response = answer.json();
    assert_eq!(response["errors"], true);
    let items = response["items"].as_array().unwrap();
    let summary: Vec<_> = items
        .iter()
        .map(|item| {
            let (action, result) = item.as_object().unwrap().iter().next().unwrap();
            (
                action.as_str(),
                result["_index"].as_str().unwrap(),
                result["status"].as_u64().unwrap(),
                result["error"]["type"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("index", "fluent-bit", 201, None),
            ("index", "logs-shop", 400, Some("mapper_parsing_exception")),
            (
                "delete",
                "logs-shop",
                400,
                Some("illegal_argument_exception")
            ),
            ("create", "logs-shop", 201, None),
            (
                "update",
                "logs-shop",
                400,
                Some("illegal_argument_exception")
            ),
            (
                "index",
                "logs-shop",
                400,
                Some("document_parsing_exception")
            ),
            (
                "index",
                "logs-shop",
                400,
                Some("document_parsing_exception")
            ),
        ]
    );
    let first = &items[0]["index"];
    assert_eq!(
        (
            first["_id"].as_str(),
            first["result"].as_str(),
            first["_version"].as_u64()
        ),
        (Some("a1"), Some("created"), Some(1))
    );
    assert_eq!(
        first["_shards"],
        json!({"total": 1, "successful": 1, "failed": 0})
    );
    assert_eq!(
        items[3]["create"]["_id"].as_str().map(str::len),
        Some(20),
        "a generated id"
    );
    assert!(items[3]["create"]["_seq_no"].as_u64() > first["_seq_no"].as_u64());
    assert!(
        items[1]["index"]["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("outside the accepted window")
    );
    assert!(
        items[6]["index"]["error"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("[13:"),
        "{}",
        items[6]
    );

    let records = harness.records(2).await;
    let order = records
        .iter()
        .find(|record| record.body == "order placed")
        .expect("the fluent bit record");
    assert_eq!(
        (
            order.service.as_str(),
            order.severity_text.as_str(),
            order.severity_number
        ),
        ("order", "INFO", 9)
    );
    assert_eq!(order.request_id.as_deref(), Some("req-9"));
    assert_eq!(order.resource["k8s.pod.name"], "order-1");
    assert_eq!(order.resource["k8s.namespace.name"], "shop");
    assert_eq!(order.resource["host.name"], "node-1");
    assert_eq!(order.resource["elastic.index"], "fluent-bit");
    let created = records
        .iter()
        .find(|record| record.body == "created")
        .expect("the created record");
    assert_eq!(created.service, "cart");
    assert_eq!(
        created.trace_id.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(created.resource["elastic.index"], "logs-shop");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        harness.records(2).await.len(),
        2,
        "only the good items are stored"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bulk_without_errors() {
    let harness = Harness::start();
    let body = ndjson(&[
        json!({"create": {"_index": "vector"}}),
        json!({"message": "zipped", "timestamp": now_nanos() / 1_000_000}),
    ]);
    let headers = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let answer = send(
        router(harness.ingest.clone()),
        post("/elastic/_bulk", &headers, gzip(body.as_bytes())),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let response = answer.json();
    assert_eq!(response["errors"], false);
    assert_eq!(response["items"][0]["create"]["status"], 201);
    assert!(response["took"].is_u64());
    let records = harness.records(1).await;
    assert_eq!(records[0].body, "zipped");
    harness.stop().await;
}

#[tokio::test]
async fn bad_requests_answer_elasticsearch_errors() {
    let harness = Harness::start();
    let answer = send(
        router(harness.ingest.clone()),
        post(
            "/elastic/_bulk",
            &[],
            "{\"index\":{}}\n{}\n{\"nope\":{}}\n{}\n",
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let error = answer.json();
    assert_eq!(error["status"], 400);
    assert_eq!(error["error"]["type"], "illegal_argument_exception");
    assert!(
        error["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("line [3]"),
        "{error}"
    );

    let answer = send(
        router(harness.ingest.clone()),
        post("/elastic/_bulk", &[], ""),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer.json()["error"]["type"],
        "action_request_validation_exception"
    );

    let bomb = gzip(&vec![b' '; 80 * 1024 * 1024]);
    let answer = send(
        router(harness.ingest.clone()),
        post("/elastic/_bulk", &[("content-encoding", "gzip")], bomb),
    )
    .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["status"], 413);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipeline_answers_429_with_retry_after() {
    let harness = Harness::start_with(|config| {
        config.memory_budget_bytes = 1;
        config.budget_wait = Duration::from_millis(100);
        config.commit_interval = Duration::from_secs(3600);
    });
    let body = || ndjson(&[json!({"index": {}}), json!({"message": "x"})]);
    let first = send(
        router(harness.ingest.clone()),
        post("/elastic/_bulk", &[], body()),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = send(
        router(harness.ingest.clone()),
        post("/elastic/_bulk", &[], body()),
    )
    .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_retryable_everywhere(&second, 429, 1);
    harness.stop().await;
}

/// A refusal every shipper retries (see `elastic.rs`): the status, the
/// product header, Elasticsearch's whole-request error, and `n` items
/// refused with the same status and error.
fn assert_retryable_everywhere(answer: &crate::harness::Answer, status: u16, n: usize) {
    assert_eq!(answer.status.as_u16(), status);
    assert_eq!(answer.header("x-elastic-product"), Some("Elasticsearch"));
    assert!(answer.header("retry-after").is_some());
    let body = answer.json();
    let kind = body["error"]["type"].as_str().unwrap().to_string();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["error"]["root_cause"][0]["type"],
        kind.as_str(),
        "{body}"
    );
    assert!(body["error"]["reason"].as_str().is_some(), "{body}");
    assert_eq!(body["errors"], true, "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), n, "{body}");
    for item in items {
        let (_, result) = item.as_object().unwrap().iter().next().unwrap();
        assert_eq!(result["status"], status, "{item}");
        assert_eq!(result["error"]["type"], kind.as_str(), "{item}");
        assert!(result["error"]["reason"].as_str().is_some(), "{item}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_an_elasticsearch_429_with_its_items() {
    use sightline_collector::ratelimit::RateLimiter;
    let harness = Harness::start();
    let limiter = RateLimiter::new(1000, 1000, harness.ingest.metrics().clone());
    let ingest = harness.ingest.clone().with_rate_limiter(limiter);
    let body = ndjson(&[
        json!({"index": {"_index": "app", "_id": "a1"}}),
        json!({"message": "first", "padding": "p".repeat(2000)}),
        json!({"create": {}}),
        json!({"message": "second"}),
    ]);
    let length = body.len().to_string();
    let headers = [("content-length", length.as_str())];
    // The first request always passes and puts the client in debt.
    let first = send(
        router(ingest.clone()),
        post("/elastic/_bulk", &headers, body.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let second = send(router(ingest), post("/elastic/_bulk", &headers, body)).await;
    assert_retryable_everywhere(&second, 429, 2);
    let answer = second.json();
    assert_eq!(answer["error"]["type"], "es_rejected_execution_exception");
    assert!(
        answer["error"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("ingest rate limit of 1000 bytes/s exceeded"),
        "{answer}"
    );
    assert_eq!(answer["items"][0]["index"]["_index"], "app");
    assert_eq!(answer["items"][0]["index"]["_id"], "a1");
    assert_eq!(answer["items"][1]["create"]["_index"], "sightline");
    harness.stop().await;
}
