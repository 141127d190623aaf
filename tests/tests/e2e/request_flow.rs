//! One request through gateway and order, found again by its request id
//! (logs, via the agent) and its trace id (spans, via OTLP).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sightline_tests::{DemoStack, unique_request_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_found_by_request_id_and_trace_id() {
    let mut stack = DemoStack::start().await;
    let request_id = unique_request_id("e2e");
    let response = stack.place_order(&request_id).await;
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id.as_str()),
        "the gateway echoes the request id"
    );

    // Logs: both services' lines, found by request_id, with Kubernetes
    // fields the agent derived from the kubelet-style path, and the labels
    // and owners it read from the demo's (stand-in) Kubernetes API.
    let records = stack
        .logs_from_services(&format!("request_id:{request_id}"), &["gateway", "order"])
        .await;
    for record in &records {
        assert_eq!(record["request_id"], request_id.as_str());
        let service = record["service"].as_str().unwrap();
        let resource = &record["resource"];
        assert_eq!(resource["k8s.namespace.name"], "shop", "record {record}");
        assert_eq!(resource["k8s.container.name"], service, "record {record}");
        assert_eq!(resource["k8s.deployment.name"], service, "record {record}");
        assert_eq!(resource["k8s.node.name"], "demo-node", "record {record}");
        assert_eq!(
            resource["k8s.pod.label.app.kubernetes.io/part-of"], "shop",
            "record {record}"
        );
        assert!(
            resource["k8s.replicaset.name"]
                .as_str()
                .is_some_and(|name| name.starts_with(&format!("{service}-"))),
            "record {record}"
        );
        let pod = resource["k8s.pod.name"].as_str().unwrap_or_default();
        assert!(
            pod.starts_with(&format!("{service}-")),
            "pod {pod:?} of {service}"
        );
        assert!(
            !resource["k8s.pod.uid"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
        assert!(
            !resource["host.name"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
        assert_eq!(record["attributes"]["log.iostream"], "stdout");
    }
    let trace_ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r["trace_id"].as_str())
        .collect();
    assert!(
        !trace_ids.is_empty(),
        "log lines carry the trace id: {records:?}"
    );
    let trace_id = trace_ids[0];
    assert!(
        trace_ids.iter().all(|id| *id == trace_id),
        "one request, one trace: {trace_ids:?}"
    );

    // Spans: both services in one trace, order's work a descendant of gateway's.
    let trace = stack
        .trace_with_services(trace_id, &["gateway", "order"])
        .await;
    let service_of_process = |process: &Value| {
        trace["processes"][process.as_str().unwrap()]["serviceName"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let spans = trace["spans"].as_array().unwrap();
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["spanID"].as_str().unwrap(), s))
        .collect();
    let parent_of = |span: &Value| -> Option<&Value> {
        let reference = span["references"]
            .as_array()?
            .iter()
            .find(|r| r["refType"] == "CHILD_OF")?;
        by_id.get(reference["spanID"].as_str()?).copied()
    };
    let order_server_span = spans
        .iter()
        .find(|s| service_of_process(&s["processID"]) == "order" && parent_of(s).is_some())
        .unwrap_or_else(|| panic!("an order span with a parent in this trace: {trace:#}"));
    let mut ancestor = parent_of(order_server_span);
    let mut reached_gateway = false;
    while let Some(span) = ancestor {
        if service_of_process(&span["processID"]) == "gateway" {
            reached_gateway = true;
            break;
        }
        ancestor = parent_of(span);
    }
    assert!(
        reached_gateway,
        "order's span descends from a gateway span: {trace:#}"
    );

    // A trace that does not exist is a 404, as in Jaeger.
    let missing = stack
        .http
        .get(stack.ui_url("/api/traces/0123456789abcdef0123456789abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The Elasticsearch-compatible root answers like Elasticsearch 8, with
    // and without the trailing slash (Vector and Logstash ask for it).
    for path in ["/elastic", "/elastic/"] {
        let response = stack.http.get(stack.ui_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["x-elastic-product"],
            "Elasticsearch",
            "{path}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["version"]["number"].as_str().unwrap().starts_with('8'),
            "{body}"
        );
    }

    // The collector's own metrics count what it took in, and the spans gave
    // RED metrics and the gateway -> order edge of the service graph.
    let metrics_url = stack.ui_url("/metrics");
    let metrics =
        sightline_tests::poll_until("span-derived metrics", Duration::from_secs(30), || async {
            let text = stack
                .http
                .get(&metrics_url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            if text
                .contains("traces_service_graph_request_total{client=\"gateway\",server=\"order\"}")
            {
                Ok(Some(text))
            } else {
                Err("no gateway -> order edge yet".into())
            }
        })
        .await;
    assert!(
        metrics.contains("sightline_collector_ingested_total{signal=\"logs\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sightline_collector_disk_bytes{store=\"logs\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("traces_spanmetrics_calls_total{service=\"order\""),
        "{metrics}"
    );

    let status = stack.launcher.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "launcher exits cleanly on SIGTERM: {status}"
    );
}
