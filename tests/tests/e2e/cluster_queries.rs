//! Queries over a cluster's published splits (issue 20): the same dataset
//! sent to an embedded collector and to a 3-node cluster on real NATS,
//! PostgreSQL and S3; a catalogue of log searches (pages followed by
//! cursor), histograms, terms, context, traces, trace searches on
//! whole-trace properties (a trace whose late span landed in a later
//! split among them), request stories, services and operations gives the
//! same answers from every node as from the embedded collector.

use std::time::Duration;

use serde_json::{Value, json};
use sightline_cluster::Metastore;

use crate::cluster::metric;
use sightline_tests::engines::{ClusterEngines as Engines, ClusterSettings};
use sightline_tests::{CollectorProcess, poll_until};

/// Documents sent through Elasticsearch's `_bulk` besides the OTLP records.
const BULK: i64 = 12;
pub(crate) const MS: i64 = 1_000_000;
const SERVICES: [&str; 4] = ["gateway", "checkout", "payment", "inventory"];
const SEVERITIES: [&str; 4] = ["INFO", "WARN", "ERROR", "DEBUG"];
const RECORDS: i64 = 240;

/// The wall clock, nanoseconds.
pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub(crate) fn trace_id(n: usize) -> String {
    format!("{:032x}", 0x5e1u128 << 80 | n as u128)
}

/// Records `0..RECORDS`, 250 ms apart from `base`, over four services of
/// three pods each; some carry a trace id and a request id.
pub(crate) fn logs_payload(base: i64, ids: std::ops::Range<i64>) -> Value {
    let mut by_stream: std::collections::BTreeMap<(usize, i64), Vec<Value>> = Default::default();
    for i in ids {
        let service = (i % 4) as usize;
        let mut attributes = vec![
            json!({"key": "order_id", "value": {"stringValue": format!("o-{}", i % 20)}}),
            json!({"key": "amount", "value": {"doubleValue": (i % 50) as f64 + 0.5}}),
        ];
        let mut record = json!({
            "timeUnixNano": (base + i * 250 * MS).to_string(),
            "severityText": SEVERITIES[(i % 4) as usize],
            "body": {"stringValue": format!("order {} step {}", i % 20, i % 5)},
        });
        if i % 6 == 0 {
            let trace = (i / 6) as usize % 6;
            record["traceId"] = json!(trace_id(trace));
            attributes.push(
                json!({"key": "request_id", "value": {"stringValue": format!("req-{trace}")}}),
            );
        }
        record["attributes"] = json!(attributes);
        by_stream.entry((service, i % 3)).or_default().push(record);
    }
    let resource_logs: Vec<Value> = by_stream
        .into_iter()
        .map(|((service, pod), records)| {
            json!({
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": SERVICES[service]}},
                    {"key": "k8s.pod.name", "value": {"stringValue": format!("{}-{pod}", SERVICES[service])}},
                ]},
                "scopeLogs": [{"scope": {}, "logRecords": records}],
            })
        })
        .collect();
    json!({ "resourceLogs": resource_logs })
}

/// Spans of six traces through the services (the third has an error), or
/// with `late`, the last span of trace 5: it starts 2 s after the rest and
/// takes 3 s, so the trace lasts ~5 s only once it is there.
pub(crate) fn spans_payload(base: i64, late: bool) -> Value {
    let mut resource_spans = Vec::new();
    for (s, service) in SERVICES.iter().enumerate() {
        let mut spans = Vec::new();
        for t in 0..6usize {
            let start = base + (t as i64) * 7_000 * MS + (s as i64) * 10 * MS;
            let is_late = t == 5 && s == 3;
            if is_late != late {
                continue;
            }
            let (start, duration) = if is_late {
                (start + 2_000 * MS, 3_000 * MS)
            } else {
                (start, (100 - s as i64 * 20) * MS)
            };
            let mut span = json!({
                "traceId": trace_id(t),
                "spanId": format!("{:016x}", (t << 8 | s) + 1),
                "name": format!("{service} work"),
                "kind": if s == 0 { 2 } else { 3 },
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": (start + duration).to_string(),
                "attributes": [{"key": "request_id", "value": {"stringValue": format!("req-{t}")}}],
            });
            if s > 0 {
                span["parentSpanId"] = json!(format!("{:016x}", (t << 8) + 1));
            }
            if t == 2 && s == 2 {
                span["status"] = json!({"code": 2, "message": "card declined"});
            }
            spans.push(span);
        }
        if !spans.is_empty() {
            resource_spans.push(json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {}, "spans": spans}],
            }));
        }
    }
    json!({ "resourceSpans": resource_spans })
}

pub(crate) async fn post(
    http: &reqwest::Client,
    collector: &CollectorProcess,
    path: &str,
    body: &Value,
) {
    poll_until("a batch acknowledged", Duration::from_secs(30), || async {
        let response = http
            .post(collector.otlp_http_url(path))
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.status().is_success().then_some(()))
    })
    .await;
}

/// Waits until the published splits hold `logs` records and `spans` spans.
pub(crate) async fn wait_published(metastore: &Metastore, logs: u64, spans: u64) {
    poll_until("the dataset published", Duration::from_secs(90), || async {
        let splits = metastore.splits().await.map_err(|e| e.to_string())?;
        let published: (u64, u64) = splits
            .iter()
            .fold((0, 0), |(l, s), split| (l + split.logs, s + split.spans));
        if published.0 >= logs && published.1 >= spans {
            Ok(Some(()))
        } else {
            Err(format!("published {published:?} of ({logs}, {spans})"))
        }
    })
    .await;
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {body}");
    body
}

/// What may differ between stores holding the same records: record ids
/// and cursors (sequences are the WAL's or the stream's), when each
/// collector received a record, and when a summary was last updated.
fn normalized(mut value: Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for key in [
                    "id",
                    "observed_timestamp",
                    "updated_at",
                    "complete",
                    "took_ms",
                ] {
                    map.remove(key);
                }
                if let Some(cursor) = map.get_mut("next_cursor") {
                    *cursor = json!(!cursor.is_null());
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

/// Every record of a search, following its cursor page by page.
async fn all_pages(http: &reqwest::Client, collector: &CollectorProcess, query: &str) -> Value {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut url = format!("/api/logs?{query}&limit=37");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = get_json(http, &collector.url(&url)).await;
        records.extend(page["records"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return normalized(Value::Array(records)),
        }
    }
    panic!("more than 100 pages");
}

/// The catalogue's answers from one collector, by query.
async fn answers(
    http: &reqwest::Client,
    collector: &CollectorProcess,
    base: i64,
) -> Vec<(String, Value)> {
    let (start, end) = (base - 1_000 * MS, base + 120_000 * MS);
    let range = format!("start={start}&end={end}");
    let mut answers = Vec::new();
    for path in [
        format!("/api/logs?{range}&limit=50"),
        format!("/api/logs?q=severity:ERROR&{range}&limit=1000"),
        format!("/api/logs?q=service:checkout%20AND%20amount:%3E20&{range}&limit=1000"),
        format!("/api/logs?q=%22step%202%22&{range}&limit=1000"),
        format!("/api/logs?q=order_id:o-3%20OR%20request_id:req-4&{range}&limit=1000"),
        format!("/api/logs/histogram?{range}&interval=5s"),
        format!("/api/logs/histogram?q=severity:WARN%20OR%20severity:ERROR&{range}&interval=7s"),
        format!("/api/logs/terms?field=service&{range}"),
        format!("/api/logs/stats?q=*%20%7C%20stats%20count(),%20max(amount)%20by%20service,%20severity&{range}"),
        format!("/api/logs/stats?q=severity:ERROR%20%7C%20timechart%20span%3D10s%20count()%20by%20service&{range}"),
        format!("/api/logs?q=service:bulkshipper%20AND%20order_id:b-3&{range}&limit=100"),
        format!("/api/logs/terms?field=order_id&q=severity:INFO&{range}"),
        "/api/services".to_string(),
        "/api/services/payment/operations".to_string(),
        "/api/v3/operations?service=checkout".to_string(),
        "/api/trace-search?service=payment&limit=20".to_string(),
        "/api/trace-search?errors=true".to_string(),
        // Only trace 5, once its late span (in a later split) is counted.
        "/api/trace-search?min_duration=4s".to_string(),
        "/api/trace-search?service=inventory&max_duration=500ms".to_string(),
        "/api/requests/req-2".to_string(),
        format!("/api/requests/{}", trace_id(5)),
    ]
    .into_iter()
    .chain((0..6).map(|t| format!("/api/traces/{}", trace_id(t))))
    {
        let body = get_json(http, &collector.url(&path)).await;
        answers.push((path, normalized(body)));
    }
    answers.push((
        "all pages of `severity:INFO OR severity:DEBUG`".into(),
        all_pages(
            http,
            collector,
            &format!("q=severity:INFO%20OR%20severity:DEBUG&{range}"),
        )
        .await,
    ));
    // Context of one record, found by each collector under its own id.
    let anchor = get_json(
        http,
        &collector.url(&format!(
            "/api/logs?q=order_id:o-7%20AND%20service:inventory&{range}&limit=1"
        )),
    )
    .await;
    let id = anchor["records"][0]["id"]
        .as_str()
        .expect("the anchor record")
        .to_string();
    answers.push((
        "context of the newest `order_id:o-7` record of inventory".into(),
        normalized(
            get_json(
                http,
                &collector.url(&format!("/api/logs/context/{id}?before=4&after=4")),
            )
            .await,
        ),
    ));
    answers
}

/// Where two answers first differ, as a JSON path with both values.
fn first_difference(want: &Value, have: &Value, path: String) -> Option<String> {
    match (want, have) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| {
                first_difference(
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    format!("{path}.{key}"),
                )
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, format!("{path}[{i}]"))),
        (Value::Array(a), Value::Array(b)) => Some(format!(
            "{path}: {} items expected, {} given; expected {want}, given {have}",
            a.len(),
            b.len()
        )),
        _ if want == have => None,
        _ => Some(format!("{path}: expected {want}, given {have}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_as_an_embedded_collector_does() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = engines
        .start_collectors(3, dir.path(), &ClusterSettings::default())
        .await;
    let embedded = CollectorProcess::start(&dir.path().join("embedded"), &[]).await;
    eprintln!("the embedded collector is at {}", embedded.url("/"));
    let http = reqwest::Client::new();
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    let now = now_nanos();
    let base = now - 600_000 * MS;

    // The same batches to the embedded collector and, spread, to the nodes.
    for (n, chunk) in [0..80, 80..160, 160..RECORDS].into_iter().enumerate() {
        let payload = logs_payload(base, chunk);
        post(&http, &embedded, "/v1/logs", &payload).await;
        post(&http, &nodes[n], "/v1/logs", &payload).await;
    }
    // Elasticsearch `_bulk` (Fluent Bit, Vector, Logstash) to either.
    let bulk: String = (0..BULK)
        .map(|i| {
            let document = json!({
                "@timestamp": base + (RECORDS + i) * 250 * MS,
                "message": format!("bulk line {i}"),
                "service": "bulkshipper",
                "level": "warn",
                "order_id": format!("b-{i}"),
            });
            format!("{{\"index\":{{}}}}\n{document}\n")
        })
        .collect();
    for collector in [&embedded, &nodes[2]] {
        let response = http
            .post(collector.url("/elastic/_bulk"))
            .header("content-type", "application/x-ndjson")
            .body(bulk.clone())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["errors"], false, "{answer}");
    }
    let spans = spans_payload(base, false);
    post(&http, &embedded, "/v1/traces", &spans).await;
    post(&http, &nodes[1], "/v1/traces", &spans).await;
    // Trace 5's late span comes once the rest of it is in a published split.
    wait_published(&metastore, (RECORDS + BULK) as u64, 23).await;
    let late = spans_payload(base, true);
    post(&http, &embedded, "/v1/traces", &late).await;
    post(&http, &nodes[2], "/v1/traces", &late).await;
    wait_published(&metastore, (RECORDS + BULK) as u64, 24).await;
    let splits = metastore.splits().await.unwrap();
    let late_trace = sightline_cluster::partition::of_trace(&trace_id(5));
    assert!(
        splits
            .iter()
            .filter(|split| split.partition == late_trace && split.spans > 0)
            .count()
            >= 2,
        "trace 5 is cut across two splits: {splits:?}"
    );
    poll_until(
        "the embedded collector has searchable data",
        Duration::from_secs(30),
        || async {
            let page = get_json(&http, &embedded.url("/api/logs?limit=1")).await;
            let trace = http
                .get(embedded.url(&format!("/api/traces/{}", trace_id(5))))
                .send()
                .await;
            let spans = match trace {
                Ok(response) if response.status().is_success() => {
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    body["data"][0]["spans"].as_array().map_or(0, Vec::len)
                }
                _ => 0,
            };
            if page["total_hits"] == RECORDS + BULK && spans == 4 {
                Ok(Some(()))
            } else {
                Err(format!(
                    "{} records, trace 5 has {spans} spans",
                    page["total_hits"]
                ))
            }
        },
    )
    .await;

    let expected = answers(&http, &embedded, base).await;
    // The catalogue means something: the answers are not empty.
    let find = |path: &str| {
        &expected
            .iter()
            .find(|(p, _)| p.starts_with(path))
            .unwrap()
            .1
    };
    assert_eq!(
        find("/api/logs?q=severity:ERROR")["total_hits"],
        RECORDS / 4
    );
    assert_eq!(
        find("/api/logs?q=service:bulkshipper")["total_hits"],
        1,
        "the _bulk document"
    );
    assert_eq!(
        find("/api/trace-search?min_duration=4s")["traces"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        find("/api/trace-search?errors=true")["traces"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        find("all pages").as_array().unwrap().len(),
        (RECORDS / 2) as usize,
        "every INFO and DEBUG record, page by page"
    );
    let same = |n: usize, got: Vec<(String, Value)>| {
        for ((path, want), (_, have)) in expected.iter().zip(&got) {
            if let Some(difference) = first_difference(want, have, String::new()) {
                panic!(
                    "node c{n} answers {path} differently from the embedded collector: {difference}"
                );
            }
        }
    };
    for (n, node) in nodes.iter().enumerate() {
        same(n, answers(&http, node, base).await);
    }
    // Each node read its share of the splits for the others.
    let mut leaves = 0.0;
    for node in &nodes {
        leaves += metric(node, "sightline_cluster_leaf_requests_total").await;
    }
    assert!(leaves > 0.0, "no query was spread over the nodes");
    // Splits other nodes built were read by range (`split_reads: ranges`,
    // the default): their hotcache, then what the queries needed.
    let mut ranges = 0.0;
    for node in &nodes {
        ranges += metric(node, "sightline_cluster_split_range_requests_total").await;
    }
    assert!(ranges > 0.0, "no split was read by range");

    // A node with an empty cache reads its share from S3 alone, this one
    // downloading whole splits.
    let download = ClusterSettings {
        extra: "split_reads: download\n".into(),
        ..ClusterSettings::default()
    };
    let late = engines.start_collector("c3", dir.path(), &download).await;
    poll_until(
        "c3 alive in the metastore",
        Duration::from_secs(20),
        || async {
            let live = metastore
                .live_nodes(Duration::from_secs(3))
                .await
                .map_err(|e| e.to_string())?;
            Ok(live.contains(&"c3".to_string()).then_some(()))
        },
    )
    .await;
    same(3, answers(&http, &late, base).await);
    assert!(
        metric(&late, "sightline_cluster_split_cache_misses_total").await > 0.0,
        "c3 downloaded its splits"
    );
    assert_eq!(
        metric(&late, "sightline_cluster_split_range_requests_total").await,
        0.0,
        "c3 read no split by range"
    );

    // A leaf killed while it is still listed alive: its share is read by
    // the root instead.
    nodes[1].kill9();
    same(0, answers(&http, &nodes[0], base).await);
    assert!(
        metric(&nodes[0], "sightline_cluster_leaf_retries_total").await > 0.0,
        "c0 read the killed leaf's splits itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_the_janitor_run_on_two_nodes_and_keep_every_live_record() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = ClusterSettings {
        extra: "lifecycle_interval: 1s\nretired_grace: 1s\norphan_grace: 2s\n".into(),
        args: vec!["--retention".into(), "2m".into()],
        ..ClusterSettings::default()
    };
    let nodes = engines.start_collectors(2, dir.path(), &settings).await;
    let http = reqwest::Client::new();
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    let storage = engines.storage();
    // An upload whose publish never happened: objects without a row.
    engines
        .s3
        .put_object("splits/p07-000000000001-000000000009-e99/split.json", b"{}")
        .await
        .unwrap();
    let now = now_nanos();
    // Within retention when sent (15 s of records, 100 s old), past it
    // 20 to 35 s later.
    let old = now - 100_000 * MS;
    post(&http, &nodes[0], "/v1/logs", &logs_payload(old, 0..60)).await;
    wait_published(&metastore, 60, 0).await;
    let old_splits: Vec<String> = metastore
        .splits()
        .await
        .unwrap()
        .into_iter()
        .map(|split| split.split_id)
        .collect();
    // Within retention for the whole test.
    let fresh = now + 300_000 * MS;
    post(&http, &nodes[1], "/v1/logs", &logs_payload(fresh, 0..60)).await;

    poll_until(
        "old splits retired and deleted, the orphan collected",
        Duration::from_secs(90),
        || async {
            let live = metastore.splits().await.map_err(|e| e.to_string())?;
            let stored = storage.stored_splits().await.map_err(|e| e.to_string())?;
            let live_logs: u64 = live.iter().map(|split| split.logs).sum();
            let old_left = old_splits
                .iter()
                .filter(|id| stored.contains_key(*id) || live.iter().any(|s| &s.split_id == *id))
                .count();
            let orphan_left = stored.contains_key("p07-000000000001-000000000009-e99");
            let unlisted = stored
                .keys()
                .filter(|id| !live.iter().any(|split| &split.split_id == *id))
                .count();
            if live_logs == 60 && old_left == 0 && !orphan_left && unlisted == 0 {
                Ok(Some(()))
            } else {
                Err(format!(
                    "{live_logs} live records, {old_left} old splits left, orphan left: {orphan_left}, {unlisted} stored splits without a row"
                ))
            }
        },
    )
    .await;

    // Every live record once, from either node; none of the old ones.
    for node in &nodes {
        let page = get_json(&http, &node.url("/api/logs?limit=1000")).await;
        assert_eq!(page["total_hits"], 60, "{page}");
        let mut times: Vec<i64> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| record["timestamp"].as_i64().unwrap())
            .collect();
        times.sort();
        times.dedup();
        assert_eq!(times.len(), 60, "each record once");
        assert!(
            times.iter().all(|time| *time >= fresh),
            "no retired record is read"
        );
    }
    let mut deleted = 0.0;
    let mut orphans = 0.0;
    for node in &nodes {
        deleted += metric(node, "sightline_cluster_splits_deleted_total").await;
        orphans += metric(node, "sightline_cluster_orphans_deleted_total").await;
    }
    assert_eq!(
        deleted as usize,
        old_splits.len(),
        "each retired split deleted by one node"
    );
    assert!(orphans >= 1.0, "the orphan counted");
}

/// Which records (by number: `base + n * 250 ms`) make the context of
/// record 50, three before and three after, on one node.
async fn context_times(http: &reqwest::Client, node: &CollectorProcess, base: i64) -> Vec<i64> {
    let at = base + 50 * 250 * MS;
    let page = get_json(
        http,
        &node.url(&format!("/api/logs?start={at}&end={}&limit=10", at + 1)),
    )
    .await;
    let id = page["records"][0]["id"].as_str().unwrap().to_string();
    let context = get_json(
        http,
        &node.url(&format!("/api/logs/context/{id}?before=3&after=3")),
    )
    .await;
    context["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| (record["timestamp"].as_i64().unwrap() - base) / (250 * MS))
        .collect()
}

/// Search, histogram, `| stats count() by service`, trace and trace
/// search totals of one node.
async fn totals(
    http: &reqwest::Client,
    node: &CollectorProcess,
    base: i64,
) -> (i64, u64, u64, usize, usize, usize) {
    let page = get_json(http, &node.url("/api/logs?limit=1000")).await;
    let histogram = get_json(
        http,
        &node.url(&format!(
            "/api/logs/histogram?start={}&end={}&interval=10s",
            base - 1_000 * MS,
            base + 60_000 * MS
        )),
    )
    .await;
    let counted: u64 = histogram["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bucket| bucket["count"].as_u64().unwrap())
        .sum();
    let stats = get_json(
        http,
        &node.url(&format!(
            "/api/logs/stats?q=*%20%7C%20stats%20count()%20by%20service&start={}&end={}",
            base - 1_000 * MS,
            base + 60_000 * MS
        )),
    )
    .await;
    let grouped: u64 = stats["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[1].as_u64().unwrap())
        .sum();
    let trace = http
        .get(node.url(&format!("/api/traces/{}", trace_id(1))))
        .send()
        .await
        .unwrap();
    let spans = if trace.status().is_success() {
        let body: Value = trace.json().await.unwrap();
        body["data"][0]["spans"].as_array().map_or(0, Vec::len)
    } else {
        0
    };
    let found = |body: Value| body["traces"].as_array().map_or(0, Vec::len);
    let payment = found(
        get_json(
            http,
            &node.url("/api/trace-search?service=payment&limit=20"),
        )
        .await,
    );
    let failed = found(get_json(http, &node.url("/api/trace-search?errors=true")).await);
    (
        page["total_hits"].as_i64().unwrap(),
        counted,
        grouped,
        spans,
        payment,
        failed,
    )
}

/// A CA and a certificate for 127.0.0.1 it signed, in `dir`: the CA's
/// PEM, and the paths of the certificate, its key and the CA.
fn tls_files(dir: &std::path::Path) -> (Vec<u8>, [std::path::PathBuf; 3]) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    (
        ca_pem.clone().into_bytes(),
        [
            write("node.pem", &cert.pem()),
            write("node-key.pem", &key.serialize_pem()),
            write("ca.pem", &ca_pem),
        ],
    )
}

/// Also: the query ports have TLS, so the nodes ask each other for fresh
/// data and leaf reads over HTTPS, checking certificates against
/// `peer_ca`; and a live tail on one node gets each matching record once
/// from whichever node owns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_served_by_their_owners_before_their_split_is_published_and_once_after() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, [cert, key, ca]) = tls_files(dir.path());
    // Splits far apart: what is found meanwhile comes from the owners.
    let settings = ClusterSettings {
        split_interval: "25s".into(),
        extra: format!("peer_ca: {}\n", ca.display()),
        args: vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ],
        ..ClusterSettings::default()
    };
    let nodes = engines.start_collectors(3, dir.path(), &settings).await;
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();
    assert!(nodes[0].url("/").starts_with("https://"));
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    // Ownership settled first: a partition handed over publishes what its
    // old owner read, and nothing is to be published early here.
    let names: Vec<String> = (0..3).map(|n| format!("c{n}")).collect();
    poll_until(
        "each node holding the partitions rendezvous hashing gives it",
        Duration::from_secs(30),
        || async {
            for name in &names {
                let held: Vec<u32> = metastore
                    .leases_of(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|(partition, _)| partition)
                    .collect();
                let due: Vec<u32> = (0..sightline_cluster::partition::ALL_PARTITIONS)
                    .filter(|p| sightline_cluster::partition::owner(*p, &names) == Some(name))
                    .collect();
                if held != due {
                    return Err(format!("{name} holds {} of {}", held.len(), due.len()));
                }
            }
            Ok(Some(()))
        },
    )
    .await;
    let now = now_nanos();
    let base = now - 60_000 * MS;
    // A live tail on c1, subscribed to the three nodes' partitions before
    // anything is sent.
    let mut tail = http
        .get(nodes[1].url("/api/logs/tail?q=service:payment"))
        .send()
        .await
        .unwrap();
    assert!(tail.status().is_success(), "{}", tail.status());
    poll_until(
        "c1's tail streaming from every node",
        Duration::from_secs(20),
        || async {
            let mut streams = 0.0;
            for node in &nodes {
                streams += metric(node, "sightline_cluster_tail_streams").await;
            }
            Ok((streams == 3.0).then_some(()))
        },
    )
    .await;
    post(&http, &nodes[0], "/v1/logs", &logs_payload(base, 0..100)).await;
    post(&http, &nodes[2], "/v1/traces", &spans_payload(base, false)).await;
    // Every payment record once (records 2, 6, 10, ...), pushed by the
    // owners as they read them, whichever node owns each.
    let mut tailed: Vec<Value> = Vec::new();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tailed.len() < 25 {
        let chunk = tokio::time::timeout_at(deadline, tail.chunk())
            .await
            .unwrap_or_else(|_| panic!("tailed {} of 25 records", tailed.len()))
            .unwrap()
            .expect("the tail stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|line| line.strip_prefix("data:")) {
                tailed.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    let mut ids: Vec<&str> = tailed
        .iter()
        .map(|hit| hit["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25, "each record once");
    assert!(
        tailed.iter().all(|hit| hit["service"] == "payment"),
        "only what the query matches"
    );
    drop(tail);

    for (n, node) in nodes.iter().enumerate() {
        poll_until(
            "every record and span found on the node",
            Duration::from_secs(20),
            || async {
                let found = totals(&http, node, base).await;
                if found == (100, 100, 100, 4, 6, 1) {
                    Ok(Some(()))
                } else {
                    Err(format!("c{n} finds {found:?}"))
                }
            },
        )
        .await;
    }
    // A record's context: the records of its stream (its service here)
    // around it, some owned by other nodes.
    for node in &nodes {
        assert_eq!(
            context_times(&http, node, base).await,
            [38, 42, 46, 50, 54, 58, 62],
            "context before publish"
        );
    }
    let published: u64 = metastore
        .splits()
        .await
        .unwrap()
        .iter()
        .map(|split| split.logs + split.spans)
        .sum();
    assert_eq!(published, 0, "found before any split was published");

    // Once published, still each record once.
    wait_published(&metastore, 100, 23).await;
    for node in &nodes {
        assert_eq!(totals(&http, node, base).await, (100, 100, 100, 4, 6, 1));
        assert_eq!(
            context_times(&http, node, base).await,
            [38, 42, 46, 50, 54, 58, 62],
            "context after publish"
        );
        let page = get_json(&http, &node.url("/api/logs?limit=1000")).await;
        let mut times: Vec<i64> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| record["timestamp"].as_i64().unwrap())
            .collect();
        times.sort();
        times.dedup();
        assert_eq!(times.len(), 100, "each record once");
    }
    // The published splits were spread over the nodes, and no call
    // between them failed (a failed leaf is read by its root instead).
    let (mut leaves, mut retries) = (0.0, 0.0);
    for node in &nodes {
        leaves += metric(node, "sightline_cluster_leaf_requests_total").await;
        retries += metric(node, "sightline_cluster_leaf_retries_total").await;
    }
    assert!(leaves > 0.0, "no leaf request went between the nodes");
    assert_eq!(retries, 0.0, "a leaf request over TLS failed");
}

/// The ids of every record a node finds, sorted.
async fn record_ids(http: &reqwest::Client, node: &CollectorProcess) -> Vec<String> {
    let page = get_json(http, &node.url("/api/logs?limit=1000")).await;
    let mut ids: Vec<String> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_merge_small_splits_and_every_record_keeps_its_id() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = ClusterSettings {
        extra: "lifecycle_interval: 1s\nmerge_after: 2s\n".into(),
        ..ClusterSettings::default()
    };
    let nodes = engines.start_collectors(2, dir.path(), &settings).await;
    let http = reqwest::Client::new();
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    let now = now_nanos();
    let base = now - 60_000 * MS;
    // Six rounds a split interval apart: several splits per partition.
    for round in 0..6 {
        let ids = round * 24..(round + 1) * 24;
        post(
            &http,
            &nodes[(round % 2) as usize],
            "/v1/logs",
            &logs_payload(base, ids),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    wait_published(&metastore, 144, 0).await;
    let before = record_ids(&http, &nodes[0]).await;
    assert_eq!(before.len(), 144);

    poll_until(
        "one split per partition",
        Duration::from_secs(90),
        || async {
            let splits = metastore.splits().await.map_err(|e| e.to_string())?;
            let mut per_partition: std::collections::BTreeMap<u32, usize> = Default::default();
            for split in &splits {
                *per_partition.entry(split.partition).or_default() += 1;
            }
            let logs: u64 = splits.iter().map(|split| split.logs).sum();
            let merged = splits.iter().filter(|s| s.split_id.contains("-m")).count();
            if per_partition.values().all(|count| *count == 1) && merged > 0 {
                assert_eq!(logs, 144, "the live splits hold every record once");
                Ok(Some(()))
            } else {
                Err(format!("{per_partition:?}, {merged} merged"))
            }
        },
    )
    .await;
    let retired = engines
        .postgres
        .psql("SELECT count(*) FROM sightline_splits WHERE retired_at IS NOT NULL")
        .await
        .unwrap();
    assert!(
        retired.trim().parse::<u64>().unwrap() >= 2,
        "inputs retired: {retired}"
    );
    for node in &nodes {
        assert_eq!(
            record_ids(&http, node).await,
            before,
            "same records, same ids"
        );
    }
    let mut merged = 0.0;
    for node in &nodes {
        merged += metric(node, "sightline_cluster_splits_merged_total").await;
    }
    assert!(merged >= 1.0);
}
