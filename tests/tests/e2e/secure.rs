//! `sightline-demo --secure`: the whole stack with tokens, TLS and client
//! certificates made by the launcher. The services' logs reach the
//! collector only through the agent, their spans only through their own
//! OTLP exporters, and the collector takes OTLP/gRPC only over TLS with a
//! client certificate and the ingest token: finding both proves that the
//! agent and the services send their token over mutual TLS. The query side
//! answers only over HTTPS and only with the query token.

use reqwest::StatusCode;
use sightline_tests::{DemoSecrets, DemoStack, unique_request_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_demo_ships_logs_and_traces_over_mutual_tls_with_tokens() {
    let stack = DemoStack::start_secure().await;
    assert!(stack.ui_url("/").starts_with("https://"));
    let secrets = DemoSecrets::wait_for(stack.data_dir.path()).await;

    let request_id = unique_request_id("secure");
    stack.place_order(&request_id).await;

    // Logs: written to CRI files by the launcher, shipped by the agent.
    let records = stack
        .logs_from_services(&format!("request_id:{request_id}"), &["gateway", "order"])
        .await;
    for record in &records {
        assert_eq!(record["resource"]["k8s.namespace.name"], "shop", "{record}");
    }
    let trace_id = records
        .iter()
        .find_map(|record| record["trace_id"].as_str())
        .unwrap_or_else(|| panic!("log lines carry the trace id: {records:?}"))
        .to_string();

    // Spans: exported by five services, each over its own mTLS channel.
    let services = ["gateway", "auth", "order", "inventory", "payment"];
    let trace = stack.trace_with_services(&trace_id, &services).await;
    let spans = trace["spans"].as_array().expect("spans");
    assert!(spans.len() >= services.len(), "{trace}");
    assert!(
        spans
            .iter()
            .all(|span| span["traceID"] == trace_id.as_str()),
        "{trace}"
    );

    // No token, or a wrong one: refused on the query API.
    let no_token = secrets.https_client();
    for path in [
        format!("/api/logs?q=request_id:{request_id}"),
        format!("/api/traces/{trace_id}"),
    ] {
        let response = no_token.get(stack.ui_url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let response = no_token
            .get(stack.ui_url(&path))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // OTLP/HTTP: no client certificate, no TLS session; with one, the
    // ingest token and only it is accepted (not the query token).
    let otlp_http = format!("https://127.0.0.1:{}/v1/logs", stack.ports.collector_http);
    let export = |client: &reqwest::Client, token: Option<String>| {
        let mut request = client
            .post(&otlp_http)
            .header("content-type", "application/json")
            .body("{}");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let without_cert = export(&no_token, Some(secrets.ingest_token())).await;
    assert!(
        without_cert.is_err(),
        "OTLP/HTTP without a client certificate answered {:?}",
        without_cert.map(|response| response.status())
    );
    let mtls = secrets.mtls_client();
    for (token, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(secrets.query_token.clone()), StatusCode::UNAUTHORIZED),
        (Some(secrets.ingest_token()), StatusCode::OK),
    ] {
        let which = match &token {
            None => "no token",
            Some(token) if *token == secrets.query_token => "the query token",
            Some(_) => "the ingest token",
        };
        let response = export(&mtls, token).await.unwrap();
        assert_eq!(response.status(), expected, "OTLP/HTTP with {which}");
    }

    // Plain HTTP to the TLS ports gets no HTTP answer at all.
    for port in [stack.ports.ui, stack.ports.collector_http] {
        let plain = stack
            .http
            .get(format!("http://127.0.0.1:{port}/api/logs?q=*"))
            .send()
            .await;
        assert!(
            plain.is_err(),
            "plain HTTP to port {port} answered {:?}",
            plain.map(|response| response.status())
        );
    }
}
