//! Loki's query API (issue 23): a LogQL catalogue against the log API's
//! answers over the same records, a metric query against `| stats`, and
//! the labels, series and index stats Grafana's label browser and query
//! size estimate read, on a real collector.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sightline_tests::{CollectorProcess, poll_until};

use crate::cluster_queries::{MS, logs_payload, now_nanos, post};

const RECORDS: u64 = 240;

async fn get(http: &reqwest::Client, url: &str, query: &[(&str, String)]) -> (u16, Value) {
    let response = http.get(url).query(query).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `(timestamp, line)` of every entry of a Loki streams answer.
fn entries(answer: &Value) -> BTreeSet<(i64, String)> {
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["data"]["resultType"], "streams", "{answer}");
    answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|stream| stream["values"].as_array().unwrap().iter())
        .map(|value| {
            (
                value[0].as_str().unwrap().parse().unwrap(),
                value[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A matrix answer's series, each summed over its points, by `label`.
fn totals_by(matrix: &serde_json::Value, label: &str) -> BTreeMap<String, f64> {
    matrix["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let total: f64 = series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|point| point[1].as_str().unwrap().parse::<f64>().unwrap())
                .sum();
            (series["metric"][label].as_str().unwrap().to_string(), total)
        })
        .collect()
}

/// A `| stats count() by <one field>` table as group -> count.
fn counts_of(table: &serde_json::Value) -> BTreeMap<String, f64> {
    table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_string(),
                row[1].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logql_answers_as_the_log_api_does_over_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let base = now_nanos() - 600_000 * MS;
    post(
        &http,
        &collector,
        "/v1/logs",
        &logs_payload(base, 0..RECORDS as i64),
    )
    .await;
    poll_until(
        "every record searchable",
        std::time::Duration::from_secs(30),
        || async {
            let (_, page) = get(&http, &collector.url("/api/logs"), &[("limit", "1".into())]).await;
            Ok((page["total_hits"] == RECORDS).then_some(()))
        },
    )
    .await;
    let (start, end) = (
        (base - 1_000 * MS).to_string(),
        (base + 70_000 * MS).to_string(),
    );
    let range = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut query = vec![("start", start.clone()), ("end", end.clone())];
        query.extend(extra.iter().cloned());
        query
    };

    // Log queries: the same records as the native search finds.
    for (logql, native) in [
        (r#"{service_name="checkout"}"#, "service:checkout"),
        (r#"{pod="payment-1"}"#, "resource.k8s.pod.name:payment-1"),
        (
            r#"{service_name=~"pay.*|gate.*"}"#,
            "service:payment OR service:gateway",
        ),
        (
            r#"{service_name="checkout", level="warn"}"#,
            "service:checkout AND severity:WARN",
        ),
        (r#"{pod=~".+", level!="info"}"#, "NOT severity:INFO"),
        (
            r#"{service_name!="checkout", pod=~".+"} |= "step 2""#,
            "NOT service:checkout AND \"step 2\"",
        ),
        (
            r#"{pod=~".+"} |~ "order 1[0-3] ""#,
            r#""order 10" OR "order 11" OR "order 12" OR "order 13""#,
        ),
        (
            r#"{service_name="payment"} != "step 4""#,
            r#"service:payment AND NOT "step 4""#,
        ),
        (r#"{pod=~".+"} | json | amount > 40"#, "amount:>40"),
        (r#"{pod=~".+"} | logfmt | order_id="o-3""#, "order_id:o-3"),
        (
            r#"{pod=~".+"} | json | request_id=~"req-[12]""#,
            "request_id:req-1 OR request_id:req-2",
        ),
    ] {
        let (status, loki) = get(
            &http,
            &collector.url("/loki/api/v1/query_range"),
            &range(&[
                ("query", logql.into()),
                ("limit", "5000".into()),
                ("direction", "forward".into()),
            ]),
        )
        .await;
        assert_eq!(status, 200, "{logql}: {loki}");
        let (_, native_page) = get(
            &http,
            &collector.url("/api/logs"),
            &range(&[("q", native.into()), ("limit", "1000".into())]),
        )
        .await;
        let expected: BTreeSet<(i64, String)> = native_page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["timestamp"].as_i64().unwrap(),
                    r["body"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(!expected.is_empty(), "{native} finds records");
        assert_eq!(entries(&loki), expected, "{logql} vs {native}");
    }

    // Backward (Grafana's default) keeps the newest `limit`; labels of a
    // stream; `line_format`.
    let (_, newest) = get(
        &http,
        &collector.url("/loki/api/v1/query_range"),
        &range(&[
            (
                "query",
                r#"{service_name="payment"} | json | line_format "{{.order_id}} of {{.pod}}""#
                    .into(),
            ),
            ("limit", "3".into()),
        ]),
    )
    .await;
    let lines = entries(&newest);
    assert_eq!(lines.len(), 3, "{newest}");
    let newest_times: Vec<i64> = lines.iter().map(|(t, _)| *t).collect();
    // Records are 250 ms apart, payment every fourth: the last three of 240.
    assert_eq!(newest_times, [230, 234, 238].map(|i| base + i * 250 * MS));
    assert!(
        lines
            .iter()
            .all(|(_, line)| line.starts_with("o-") && line.contains(" of payment-")),
        "{newest}"
    );
    let stream = &newest["data"]["result"][0]["stream"];
    assert_eq!(stream["service_name"], "payment");
    assert_eq!(stream["level"], "error");

    // A metric query, non-overlapping windows over every record: the
    // counts by service `| stats` gives.
    let (status, matrix) = get(
        &http,
        &collector.url("/loki/api/v1/query_range"),
        &[
            (
                "query",
                r#"sum by (service_name) (count_over_time({pod=~".+"}[10s]))"#.into(),
            ),
            ("start", base.to_string()),
            ("end", (base + 70_000 * MS).to_string()),
            ("step", "10s".into()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{matrix}");
    assert_eq!(matrix["data"]["resultType"], "matrix");
    let per_service = totals_by(&matrix, "service_name");
    let (_, table) = get(
        &http,
        &collector.url("/api/logs/stats"),
        &range(&[("q", "* | stats count() by service".into())]),
    )
    .await;
    let counted = counts_of(&table);
    assert_eq!(per_service, counted, "{matrix}");
    assert_eq!(counted.values().sum::<f64>(), RECORDS as f64);
    // An instant query over the whole range, and Grafana's health check.
    let (_, instant) = get(
        &http,
        &collector.url("/loki/api/v1/query"),
        &[
            (
                "query",
                r#"sum(count_over_time({service_name=~".+"}[2m]))"#.into(),
            ),
            ("time", (base + 61_000 * MS).to_string()),
        ],
    )
    .await;
    assert_eq!(instant["data"]["resultType"], "vector", "{instant}");
    assert_eq!(
        instant["data"]["result"][0]["value"][1],
        RECORDS.to_string(),
        "{instant}"
    );
    // Grafana 11's log volume query (answered by the aggregations): per
    // level, the counts `| stats` gives.
    let (status, volume) = get(
        &http,
        &collector.url("/loki/api/v1/query_range"),
        &[
            (
                "query",
                r#"sum by (level, detected_level) (count_over_time({service_name="payment"} | drop __error__[10s]))"#.into(),
            ),
            ("start", base.to_string()),
            ("end", (base + 70_000 * MS).to_string()),
            ("step", "10s".into()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{volume}");
    let per_level = totals_by(&volume, "level");
    let (_, table) = get(
        &http,
        &collector.url("/api/logs/stats"),
        &range(&[("q", "service:payment | stats count() by severity".into())]),
    )
    .await;
    let counted: BTreeMap<String, f64> = counts_of(&table)
        .into_iter()
        .map(|(level, count)| (level.to_ascii_lowercase(), count))
        .collect();
    assert!(!counted.is_empty(), "{table}");
    assert_eq!(per_level, counted, "{volume}");
    // The fields Grafana's Logs Drilldown offers, with their types.
    let (status, detected) = get(
        &http,
        &collector.url("/loki/api/v1/detected_fields"),
        &range(&[("query", r#"{service_name="payment"}"#.into())]),
    )
    .await;
    assert_eq!(status, 200, "{detected}");
    let kinds: BTreeMap<String, String> = detected["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| {
            (
                field["label"].as_str().unwrap().to_string(),
                field["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds.get("amount").map(String::as_str),
        Some("float"),
        "{detected}"
    );
    assert_eq!(
        kinds.get("order_id").map(String::as_str),
        Some("string"),
        "{detected}"
    );
    let (_, health) = get(
        &http,
        &collector.url("/loki/api/v1/query"),
        &[("query", "vector(1)+vector(1)".into())],
    )
    .await;
    assert_eq!(health["data"]["result"][0]["value"][1], "2", "{health}");

    // The label browser: names, values, series; the query size estimate.
    let (_, labels) = get(&http, &collector.url("/loki/api/v1/labels"), &range(&[])).await;
    assert_eq!(
        labels["data"],
        serde_json::json!(["level", "pod", "service_name"]),
        "{labels}"
    );
    let (_, pods) = get(
        &http,
        &collector.url("/loki/api/v1/label/pod/values"),
        &range(&[("query", r#"{service_name="checkout"}"#.into())]),
    )
    .await;
    assert_eq!(
        pods["data"],
        serde_json::json!(["checkout-0", "checkout-1", "checkout-2"]),
        "{pods}"
    );
    let (_, series) = get(
        &http,
        &collector.url("/loki/api/v1/series"),
        &range(&[("match[]", r#"{service_name="checkout"}"#.into())]),
    )
    .await;
    assert_eq!(series["data"].as_array().unwrap().len(), 3, "{series}");
    assert_eq!(
        series["data"][0],
        serde_json::json!({"level": "warn", "pod": "checkout-0", "service_name": "checkout"})
    );
    let (_, stats) = get(
        &http,
        &collector.url("/loki/api/v1/index/stats"),
        &range(&[("query", r#"{service_name="checkout"}"#.into())]),
    )
    .await;
    assert_eq!(stats["entries"], RECORDS / 4, "{stats}");
    assert_eq!(stats["streams"], 3, "{stats}");

    // A bad query: 400 with Loki's words and where.
    let (status, error) = get(
        &http,
        &collector.url("/loki/api/v1/query_range"),
        &range(&[("query", r#"{service_name="checkout""#.into())]),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error
            .as_str()
            .unwrap()
            .starts_with("parse error at line 1, col 25"),
        "{error}"
    );
}

/// `python-logging-loki` (Loki's JSON push, as its `LokiHandler` sends
/// it): two lines with stream tags, one with extra tags.
const PYTHON_LOKI_CLIENT: &str = r#"
import logging, sys
import logging_loki
handler = logging_loki.LokiHandler(url=sys.argv[1], tags={"service_name": "pyshop", "namespace": "shop"}, version="1")
logger = logging.getLogger("pyshop")
logger.setLevel(logging.INFO)
logger.addHandler(handler)
logger.error("payment declined for order 42", extra={"tags": {"pod": "pyshop-1"}})
logger.info("order 43 placed")
"#;

/// A protobuf varint.
fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A length-delimited protobuf field.
fn field(tag: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(tag << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// A `logproto.PushRequest` as Promtail and Alloy encode it: one stream,
/// `lines` entries at `at`, a structured-metadata request id on each.
fn protobuf_push(labels: &str, at: i64, lines: &[&str]) -> Vec<u8> {
    let mut stream = field(1, labels.as_bytes());
    for (i, line) in lines.iter().enumerate() {
        let nanos = at + i as i64;
        let mut timestamp = Vec::new();
        varint(1 << 3, &mut timestamp);
        varint((nanos / 1_000_000_000) as u64, &mut timestamp);
        varint(2 << 3, &mut timestamp);
        varint((nanos % 1_000_000_000) as u64, &mut timestamp);
        let metadata = [
            field(1, b"request_id"),
            field(2, format!("req-pb-{i}").as_bytes()),
        ]
        .concat();
        let entry = [
            field(1, &timestamp),
            field(2, line.as_bytes()),
            field(3, &metadata),
        ]
        .concat();
        stream.extend(field(2, &entry));
    }
    field(1, &stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_pushes_in_json_from_a_python_client_and_in_snappy_protobuf_are_stored_and_queried() {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let push_url = collector.otlp_http_url("/loki/api/v1/push");

    // JSON, from a real client.
    let output = std::process::Command::new("python3")
        .args(["-c", PYTHON_LOKI_CLIENT, &push_url])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the Python Loki client failed (scripts/test installs python-logging-loki): {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Snappy-compressed protobuf, as Promtail, Alloy and Fluent Bit send.
    let now = now_nanos();
    let body = protobuf_push(
        r#"{app="checkout", namespace="shop", pod="checkout-7f9", level="warn"}"#,
        now,
        &["card declined", "retrying charge"],
    );
    let compressed = snap::raw::Encoder::new().compress_vec(&body).unwrap();
    let response = http
        .post(&push_url)
        .header("content-type", "application/x-protobuf")
        .body(compressed)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        204,
        "{:?}",
        response.text().await
    );

    // A JSON push with one bad entry: 400 naming it, the other stored.
    let response = http
        .post(&push_url)
        .json(&serde_json::json!({"streams": [{
            "stream": {"service_name": "pyshop"},
            "values": [["not-a-time", "lost"], [(now + 5).to_string(), "kept despite its neighbour"]],
        }]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let message = response.text().await.unwrap();
    assert!(
        message.starts_with("1 of 2 entries refused: stream 0 entry 0: expected"),
        "{message}"
    );

    // Read back through Loki's query API and the log API.
    let query = |logql: &'static str| {
        let http = http.clone();
        let url = collector.url("/loki/api/v1/query_range");
        async move {
            let (_, answer) = get(
                &http,
                &url,
                &[("query", logql.to_string()), ("limit", "100".into())],
            )
            .await;
            answer
        }
    };
    let found = poll_until(
        "the pushed lines are searchable",
        std::time::Duration::from_secs(30),
        || async {
            let answer = query(r#"{namespace="shop"}"#).await;
            let lines: BTreeSet<String> =
                entries(&answer).into_iter().map(|(_, line)| line).collect();
            Ok((lines.len() == 4).then_some(answer))
        },
    )
    .await;
    let lines: BTreeSet<String> = entries(&found).into_iter().map(|(_, line)| line).collect();
    assert_eq!(
        lines,
        [
            "card declined",
            "order 43 placed",
            "payment declined for order 42",
            "retrying charge"
        ]
        .map(String::from)
        .into()
    );
    let errors = query(r#"{service_name="pyshop", level="error"}"#).await;
    let stream = &errors["data"]["result"][0]["stream"];
    assert_eq!(stream["pod"], "pyshop-1", "{errors}");
    assert_eq!(stream["namespace"], "shop", "{errors}");
    assert_eq!(entries(&errors).len(), 1, "{errors}");
    let (_, page) = get(
        &http,
        &collector.url("/api/logs"),
        &[("q", "request_id:req-pb-1".into())],
    )
    .await;
    let record = &page["records"][0];
    assert_eq!(record["body"], "retrying charge", "{page}");
    assert_eq!(record["service"], "checkout");
    assert_eq!(record["severity_text"], "WARN");
    assert_eq!(record["timestamp"], now + 1);
    assert_eq!(record["resource"]["k8s.pod.name"], "checkout-7f9");
    let (_, kept) = get(
        &http,
        &collector.url("/api/logs"),
        &[("q", "\"kept despite\"".into())],
    )
    .await;
    assert_eq!(kept["total_hits"], 1, "{kept}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_tail_sends_the_history_then_each_new_matching_line() {
    use futures::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(dir.path(), &[]).await;
    let http = reqwest::Client::new();
    let base = now_nanos() - 60_000 * MS;
    post(&http, &collector, "/v1/logs", &logs_payload(base, 0..8)).await;
    poll_until(
        "the first records",
        std::time::Duration::from_secs(30),
        || async {
            let (_, page) = get(&http, &collector.url("/api/logs"), &[("limit", "1".into())]).await;
            Ok((page["total_hits"] == 8).then_some(()))
        },
    )
    .await;
    let url = collector
        .url(&format!(
            "/loki/api/v1/tail?query={}&start={}&limit=10",
            "%7Bservice_name%3D%22checkout%22%7D%20%21%3D%20%22step%204%22",
            base - 1_000 * MS
        ))
        .replacen("http://", "ws://", 1);
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("the tail connects");
    let mut next_message = async || -> Value {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .expect("a tail message in time")
            .expect("the tail is open")
            .expect("a message");
        serde_json::from_str(message.to_text().unwrap()).unwrap()
    };
    // The history: checkout's records 1 and 5 (order i, step i % 5).
    let history = next_message().await;
    // One stream per pod; the lines in time order.
    let mut lines: Vec<(String, String)> = history["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|stream| stream["values"].as_array().unwrap().iter())
        .map(|value| {
            (
                value[0].as_str().unwrap().to_string(),
                value[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    lines.sort();
    let lines: Vec<&str> = lines.iter().map(|(_, line)| line.as_str()).collect();
    assert_eq!(lines, ["order 1 step 1", "order 5 step 0"], "{history}");
    // New lines: only checkout's, and not the one the filter drops.
    let now = now_nanos();
    post(
        &http,
        &collector,
        "/v1/logs",
        &logs_payload(now - 100 * 250 * MS, 100..110),
    )
    .await;
    let mut live = Vec::new();
    while live.len() < 2 {
        let message = next_message().await;
        for stream in message["streams"].as_array().unwrap() {
            assert_eq!(stream["stream"]["service_name"], "checkout", "{message}");
            for value in stream["values"].as_array().unwrap() {
                live.push(value[1].as_str().unwrap().to_string());
            }
        }
    }
    // 101, 105 and 109 are checkout's; 109 is step 4, filtered out.
    assert_eq!(live, ["order 1 step 1", "order 5 step 0"]);
}
