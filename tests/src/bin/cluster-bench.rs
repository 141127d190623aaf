//! Cluster ingest against the embedded collector, on the same machine and
//! the same records, measured side by side in one run (BENCHMARKS.md,
//! "Cluster mode (issue 19)"):
//!
//! - log records and spans (separate runs, `--signal` for one) per second
//!   acknowledged, and until searchable (embedded: the log search counts
//!   them, or the last traces sent are whole by id; cluster: the published
//!   splits in PostgreSQL add up to them);
//! - the collectors' CPU per record (`/proc/<pid>/stat`), and apart from
//!   it the engines' (NATS, SeaweedFS, PostgreSQL on the same cores);
//! - time from acknowledgement to a published split, p50 and p99, matched
//!   by cumulative count (the k-th record acknowledged against the k-th
//!   record published, sampled every 50 ms);
//! - failover: from SIGKILL of one of three collectors until its partitions
//!   are owned by the others.
//!
//! ```text
//! cargo build --release -p sightline-collector -p sightline-tests --bins
//! target/release/cluster-bench --records 200000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sightline_cluster::Metastore;
use sightline_tests::engines::{ClusterEngines, ClusterSettings};
use sightline_tests::{CollectorProcess, cpu_seconds, engines_cpu_seconds};

const BATCH: u64 = 500;
const STREAMS: u64 = 12;
/// Concurrent OTLP/HTTP clients, each with one request in flight
/// (`--clients`).
static CLIENTS: AtomicUsize = AtomicUsize::new(4);

fn clients() -> usize {
    CLIENTS.load(Ordering::Relaxed)
}

#[tokio::main]
async fn main() {
    let mut records = 100_000u64;
    let mut signals = vec![Signal::Logs, Signal::Spans];
    let mut split_interval = "1s".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--records" => {
                records = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--records takes a number")
            }
            "--signal" => {
                signals = match args.next().as_deref() {
                    Some("logs") => vec![Signal::Logs],
                    Some("spans") => vec![Signal::Spans],
                    other => panic!("--signal takes logs or spans, not {other:?}"),
                }
            }
            "--clients" => CLIENTS.store(
                args.next()
                    .and_then(|n| n.parse().ok())
                    .expect("--clients takes a number"),
                Ordering::Relaxed,
            ),
            "--split-interval" => {
                split_interval = args.next().expect("--split-interval takes a duration (5s)")
            }
            other => panic!(
                "unknown argument {other:?}; usage: cluster-bench [--records N] [--signal logs|spans] [--split-interval 1s] [--clients 4]"
            ),
        }
    }
    let records = records / BATCH * BATCH;
    let engines = ClusterEngines::start().await;
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    for (round, signal) in signals.into_iter().enumerate() {
        let batches = signal.prepare(records);
        let mut rows = vec![embedded(signal, &batches, records).await];
        let settings = ClusterSettings {
            split_interval: split_interval.clone(),
            lease_ttl: "3s",
            ..ClusterSettings::default()
        };
        for size in [1usize, 3] {
            let dir = tempfile::tempdir().unwrap();
            let mut collectors = Vec::new();
            for n in 0..size {
                collectors.push(
                    engines
                        .start_collector(&format!("r{round}s{size}c{n}"), dir.path(), &settings)
                        .await,
                );
            }
            // Every node owns its share (and a previous run's leases have
            // expired) before the clock starts.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let published_before = signal.published(&metastore).await;
            let cpu: f64 = collectors.iter().map(|c| cpu_seconds(c.process.id())).sum();
            let engines_cpu = engines_cpu_seconds();
            let started = Instant::now();
            let timeline = Arc::new(std::sync::Mutex::new(Vec::<(f64, u64)>::new()));
            let acked =
                send_tracked(signal, &batches, &collectors, started, timeline.clone()).await;
            let ack_secs = started.elapsed().as_secs_f64();
            let mut published_timeline = Vec::new();
            loop {
                let published = signal.published(&metastore).await - published_before;
                published_timeline.push((started.elapsed().as_secs_f64(), published));
                if published >= acked {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let searchable_secs = started.elapsed().as_secs_f64();
            let cpu = collectors
                .iter()
                .map(|c| cpu_seconds(c.process.id()))
                .sum::<f64>()
                - cpu;
            let engines_cpu = engines_cpu_seconds() - engines_cpu;
            let latency = ack_to_published(&timeline.lock().unwrap(), &published_timeline);
            rows.push(Row {
                name: format!(
                    "cluster, {size} collector{}",
                    if size > 1 { "s" } else { "" }
                ),
                ack_per_sec: records as f64 / ack_secs,
                searchable_per_sec: records as f64 / searchable_secs,
                cpu_per_million: cpu / records as f64 * 1e6,
                engines_cpu_per_million: Some(engines_cpu / records as f64 * 1e6),
                latency: Some(latency),
            });
            if size == 3 {
                let killed = Instant::now();
                collectors[2].kill9();
                let node = format!("r{round}s{size}c2");
                loop {
                    let partitions = metastore.partitions().await.unwrap();
                    if partitions
                        .iter()
                        .all(|(_, owner, _, _)| owner.as_deref().is_some_and(|owner| owner != node))
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                println!(
                    "{signal:?}: failover {:.2} s from SIGKILL of an owner until its partitions are owned (lease time {})",
                    killed.elapsed().as_secs_f64(),
                    settings.lease_ttl
                );
            }
        }
        print_table(signal, records, &rows);
    }
}

/// The rows of one signal as a Markdown table.
fn print_table(signal: Signal, records: u64, rows: &[Row]) {
    let embedded = rows[0].ack_per_sec;
    let embedded_searchable = rows[0].searchable_per_sec;
    println!(
        "\n{signal:?}: {records} in requests of {BATCH}, {} OTLP/HTTP clients, {}",
        clients(),
        signal.shape()
    );
    println!(
        "| run | acknowledged/s | searchable/s (cluster: in a published split) | collector CPU-s per 1M | engines CPU-s per 1M | ratio to embedded (ack, searchable) | ack to published p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {} | {:.2}, {:.2} | {} |",
            row.name,
            row.ack_per_sec,
            row.searchable_per_sec,
            row.cpu_per_million,
            row.engines_cpu_per_million
                .map_or_else(|| "-".into(), |cpu| format!("{cpu:.1}")),
            row.ack_per_sec / embedded,
            row.searchable_per_sec / embedded_searchable,
            row.latency
                .map(|(p50, p99)| format!("{p50:.2} s / {p99:.2} s"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// The embedded collector's row: acknowledged, then searchable.
async fn embedded(signal: Signal, batches: &[Vec<u8>], records: u64) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let collector = CollectorProcess::start(&dir.path().join("embedded"), &[]).await;
    let cpu = cpu_seconds(collector.process.id());
    let started = Instant::now();
    let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
    let acked = send_tracked(
        signal,
        batches,
        std::slice::from_ref(&collector),
        started,
        timeline,
    )
    .await;
    assert_eq!(acked, records);
    let ack_secs = started.elapsed().as_secs_f64();
    let http = reqwest::Client::new();
    while !signal.searchable(&http, &collector, batches.len()).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let searchable_secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(collector.process.id()) - cpu;
    Row {
        name: "embedded, 1 collector".into(),
        ack_per_sec: records as f64 / ack_secs,
        searchable_per_sec: records as f64 / searchable_secs,
        cpu_per_million: cpu / records as f64 * 1e6,
        engines_cpu_per_million: None,
        latency: None,
    }
}

/// What is sent: log records, or spans (traces of [`SPANS_PER_TRACE`]).
#[derive(Clone, Copy, Debug)]
enum Signal {
    Logs,
    Spans,
}

const SPANS_PER_TRACE: u64 = 10;

impl Signal {
    fn path(self) -> &'static str {
        match self {
            Signal::Logs => "/v1/logs",
            Signal::Spans => "/v1/traces",
        }
    }

    fn shape(self) -> String {
        match self {
            Signal::Logs => format!("{STREAMS} log streams"),
            Signal::Spans => format!("traces of {SPANS_PER_TRACE} spans over 4 services"),
        }
    }

    fn prepare(self, records: u64) -> Vec<Vec<u8>> {
        match self {
            Signal::Logs => prepare_logs(records),
            Signal::Spans => prepare_spans(records),
        }
    }

    /// Records of this signal in published splits.
    async fn published(self, metastore: &Metastore) -> u64 {
        let splits = metastore.splits().await.unwrap();
        splits
            .iter()
            .map(|split| match self {
                Signal::Logs => split.logs,
                Signal::Spans => split.spans,
            })
            .sum()
    }

    /// Whether everything of `batches` batches is searchable in the
    /// embedded collector. Spans: the last trace of each of the last
    /// batches (those in flight last) is whole (the span store commits in
    /// the order of its write-ahead log).
    async fn searchable(
        self,
        http: &reqwest::Client,
        collector: &CollectorProcess,
        batches: usize,
    ) -> bool {
        match self {
            Signal::Logs => {
                let answer =
                    sightline_tests::get_json(http, &collector.url("/api/logs?q=bench&limit=1"))
                        .await;
                answer.ok().and_then(|a| a["total_hits"].as_u64()) == Some(batches as u64 * BATCH)
            }
            Signal::Spans => {
                for batch in batches.saturating_sub(clients())..batches {
                    let trace = trace_id(batch as u64, BATCH / SPANS_PER_TRACE - 1);
                    let answer = sightline_tests::get_json(
                        http,
                        &collector.url(&format!("/api/traces/{trace}")),
                    )
                    .await;
                    let spans = answer
                        .ok()
                        .and_then(|a| a["data"][0]["spans"].as_array().map(Vec::len));
                    if spans != Some(SPANS_PER_TRACE as usize) {
                        return false;
                    }
                }
                true
            }
        }
    }
}

fn trace_id(batch: u64, trace: u64) -> String {
    format!("{:016x}{:016x}", 0xbe_u64 << 56 | batch, trace + 1)
}

struct Row {
    name: String,
    ack_per_sec: f64,
    searchable_per_sec: f64,
    cpu_per_million: f64,
    engines_cpu_per_million: Option<f64>,
    latency: Option<(f64, f64)>,
}

/// Each batch's OTLP/HTTP JSON body, made before any clock starts.
fn prepare_logs(records: u64) -> Vec<Vec<u8>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (0..records / BATCH)
        .map(|batch| {
            let streams: Vec<serde_json::Value> = (0..STREAMS)
                .map(|stream| {
                    let lines: Vec<serde_json::Value> = (batch * BATCH..(batch + 1) * BATCH)
                        .filter(|id| id % STREAMS == stream)
                        .map(|id| {
                            serde_json::json!({
                                "timeUnixNano": (now + u128::from(id)).to_string(),
                                "severityText": "INFO",
                                "body": {"stringValue": format!("bench order {id} created for user {} amount {}.99", id % 977, id % 300)},
                                "attributes": [
                                    {"key": "rid", "value": {"intValue": id.to_string()}},
                                    {"key": "http.route", "value": {"stringValue": "/api/orders"}},
                                ],
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "resource": {"attributes": [
                            {"key": "service.name", "value": {"stringValue": format!("bench-{}", stream % 4)}},
                            {"key": "k8s.pod.name", "value": {"stringValue": format!("bench-{stream}")}},
                            {"key": "k8s.namespace.name", "value": {"stringValue": "shop"}},
                        ]},
                        "scopeLogs": [{"scope": {}, "logRecords": lines}],
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "resourceLogs": streams })).unwrap()
        })
        .collect()
}

/// Sends every batch with [`clients()`] concurrent clients, round robin over
/// the collectors, each retried until acknowledged; notes the cumulative
/// acknowledged count over time.
async fn send_tracked(
    signal: Signal,
    batches: &[Vec<u8>],
    collectors: &[CollectorProcess],
    started: Instant,
    timeline: Arc<std::sync::Mutex<Vec<(f64, u64)>>>,
) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let urls: Arc<Vec<String>> = Arc::new(
        collectors
            .iter()
            .map(|c| c.otlp_http_url(signal.path()))
            .collect(),
    );
    let batches: Arc<Vec<Vec<u8>>> = Arc::new(batches.to_vec());
    let mut senders = Vec::new();
    for _ in 0..clients() {
        let (next, acked, urls, batches, timeline) = (
            next.clone(),
            acked.clone(),
            urls.clone(),
            batches.clone(),
            timeline.clone(),
        );
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = batches.get(index) else {
                    break;
                };
                let url = &urls[index % urls.len()];
                loop {
                    let sent = http
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if matches!(&sent, Ok(response) if response.status().is_success()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let total = acked.fetch_add(BATCH, Ordering::Relaxed) + BATCH;
                timeline
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), total));
            }
        }));
    }
    for client in senders {
        client.await.unwrap();
    }
    acked.load(Ordering::Relaxed)
}

/// Each batch's OTLP/HTTP JSON body of `BATCH / SPANS_PER_TRACE` traces: a
/// gateway root and nine children over three more services, with the
/// attributes a checkout span carries.
fn prepare_spans(records: u64) -> Vec<Vec<u8>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let services = ["gateway", "order", "inventory", "payment"];
    (0..records / BATCH)
        .map(|batch| {
            let mut by_service: Vec<Vec<serde_json::Value>> = vec![Vec::new(); services.len()];
            for trace in 0..BATCH / SPANS_PER_TRACE {
                let trace_id = trace_id(batch, trace);
                for span in 0..SPANS_PER_TRACE {
                    let start = now + u128::from(batch * 1_000 + trace * 10 + span) * 1_000;
                    let mut record = serde_json::json!({
                        "traceId": trace_id,
                        "spanId": format!("{:016x}", span + 1),
                        "name": format!("step {span}"),
                        "kind": if span == 0 { 2 } else { 3 },
                        "startTimeUnixNano": start.to_string(),
                        "endTimeUnixNano": (start + 2_000_000).to_string(),
                        "attributes": [
                            {"key": "http.route", "value": {"stringValue": "/api/orders"}},
                            {"key": "request_id", "value": {"stringValue": format!("req-{batch}-{trace}")}},
                        ],
                    });
                    if span > 0 {
                        record["parentSpanId"] = serde_json::json!(format!("{:016x}", 1));
                    }
                    by_service[(span % services.len() as u64) as usize].push(record);
                }
            }
            let resource_spans: Vec<serde_json::Value> = services
                .iter()
                .zip(by_service)
                .map(|(service, spans)| {
                    serde_json::json!({
                        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                        "scopeSpans": [{"scope": {}, "spans": spans}],
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "resourceSpans": resource_spans })).unwrap()
        })
        .collect()
}

/// p50 and p99 of (time the k-th record was published - time the k-th
/// record was acknowledged), k over every acknowledged batch.
fn ack_to_published(acked: &[(f64, u64)], published: &[(f64, u64)]) -> (f64, f64) {
    let mut acked = acked.to_vec();
    acked.sort_by_key(|(_, count)| *count);
    let mut delays: Vec<f64> = acked
        .iter()
        .filter_map(|(at, count)| {
            published
                .iter()
                .find(|(_, published)| published >= count)
                .map(|(published_at, _)| (published_at - at).max(0.0))
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    let quantile = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
    (quantile(0.5), quantile(0.99))
}
