//! Cluster ingest against the embedded collector, on the same machine and
//! the same records, measured side by side in one run (BENCHMARKS.md,
//! "Cluster mode (issue 19)"):
//!
//! - records per second acknowledged, and until searchable (embedded: the
//!   log search counts them; cluster: the published splits in PostgreSQL
//!   add up to them);
//! - the collectors' CPU per record (`/proc/<pid>/stat`; the engines' CPU
//!   is not counted);
//! - time from acknowledgement to a published split, p50 and p99, matched
//!   by cumulative count (the k-th record acknowledged against the k-th
//!   record published, sampled every 50 ms);
//! - failover: from SIGKILL of one of three collectors until its partitions
//!   are owned by the others.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/cluster-bench --records 200000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sightline_cluster::Metastore;
use sightline_tests::CollectorProcess;
use sightline_tests::engines::{ClusterEngines, ClusterSettings};

const BATCH: u64 = 500;
const STREAMS: u64 = 12;
const CLIENTS: usize = 4;

#[tokio::main]
async fn main() {
    let mut records = 100_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--records" => {
                records = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--records takes a number")
            }
            other => panic!("unknown argument {other:?}; usage: cluster-bench [--records N]"),
        }
    }
    let records = records / BATCH * BATCH;
    let batches = prepare(records);
    let mut rows = Vec::new();

    // Embedded.
    {
        let dir = tempfile::tempdir().unwrap();
        let collector = CollectorProcess::start(&dir.path().join("embedded"), &[]).await;
        let cpu = cpu_seconds(collector.process.id());
        let started = Instant::now();
        let acked = send(&batches, std::slice::from_ref(&collector)).await;
        assert_eq!(acked, records);
        let ack_secs = started.elapsed().as_secs_f64();
        let http = reqwest::Client::new();
        loop {
            let answer =
                sightline_tests::get_json(&http, &collector.url("/api/logs?q=bench&limit=1")).await;
            if answer.ok().and_then(|a| a["total_hits"].as_u64()) == Some(records) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let searchable_secs = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(collector.process.id()) - cpu;
        rows.push(Row {
            name: "embedded, 1 collector".into(),
            ack_per_sec: records as f64 / ack_secs,
            searchable_per_sec: records as f64 / searchable_secs,
            cpu_per_million: cpu / records as f64 * 1e6,
            latency: None,
        });
    }

    let engines = ClusterEngines::start().await;
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    let settings = ClusterSettings {
        split_interval: "1s",
        lease_ttl: "3s",
        ..ClusterSettings::default()
    };
    let mut published_before = 0;
    for (run, size) in [1usize, 3].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut collectors = Vec::new();
        for n in 0..size {
            collectors.push(
                engines
                    .start_collector(&format!("r{run}c{n}"), dir.path(), &settings)
                    .await,
            );
        }
        // Every node owns its share before the clock starts.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let cpu: f64 = collectors.iter().map(|c| cpu_seconds(c.process.id())).sum();
        let started = Instant::now();
        let timeline = Arc::new(std::sync::Mutex::new(Vec::<(f64, u64)>::new()));
        let acked = send_tracked(&batches, &collectors, started, timeline.clone()).await;
        let ack_secs = started.elapsed().as_secs_f64();
        let mut published_timeline = Vec::new();
        loop {
            let published: u64 = metastore
                .splits()
                .await
                .unwrap()
                .iter()
                .map(|split| split.logs)
                .sum::<u64>()
                - published_before;
            published_timeline.push((started.elapsed().as_secs_f64(), published));
            if published >= acked {
                published_before += published;
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
        let latency = ack_to_published(&timeline.lock().unwrap(), &published_timeline);
        rows.push(Row {
            name: format!(
                "cluster, {size} collector{}",
                if size > 1 { "s" } else { "" }
            ),
            ack_per_sec: records as f64 / ack_secs,
            searchable_per_sec: records as f64 / searchable_secs,
            cpu_per_million: cpu / records as f64 * 1e6,
            latency: Some(latency),
        });
        if size == 3 {
            let killed = Instant::now();
            collectors[2].kill9();
            let node = format!("r{run}c2");
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
                "failover: {:.2} s from SIGKILL of an owner until its partitions are owned (lease time {})",
                killed.elapsed().as_secs_f64(),
                settings.lease_ttl
            );
        }
    }

    let embedded = rows[0].ack_per_sec;
    let embedded_searchable = rows[0].searchable_per_sec;
    println!(
        "\n{records} records in batches of {BATCH}, {CLIENTS} OTLP/HTTP clients, {STREAMS} log streams"
    );
    println!(
        "| run | acknowledged/s | searchable/s (cluster: in a published split) | collector CPU-s per 1M | ratio to embedded (ack, searchable) | ack to published p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.2}, {:.2} | {} |",
            row.name,
            row.ack_per_sec,
            row.searchable_per_sec,
            row.cpu_per_million,
            row.ack_per_sec / embedded,
            row.searchable_per_sec / embedded_searchable,
            row.latency
                .map(|(p50, p99)| format!("{p50:.2} s / {p99:.2} s"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

struct Row {
    name: String,
    ack_per_sec: f64,
    searchable_per_sec: f64,
    cpu_per_million: f64,
    latency: Option<(f64, f64)>,
}

/// Each batch's OTLP/HTTP JSON body, made before any clock starts.
fn prepare(records: u64) -> Vec<Vec<u8>> {
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

async fn send(batches: &[Vec<u8>], collectors: &[CollectorProcess]) -> u64 {
    let timeline = Arc::new(std::sync::Mutex::new(Vec::new()));
    send_tracked(batches, collectors, Instant::now(), timeline).await
}

/// Sends every batch with [`CLIENTS`] concurrent clients, round robin over
/// the collectors, each retried until acknowledged; notes the cumulative
/// acknowledged count over time.
async fn send_tracked(
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
            .map(|c| format!("http://127.0.0.1:{}/v1/logs", c.otlp_http_port))
            .collect(),
    );
    let batches: Arc<Vec<Vec<u8>>> = Arc::new(batches.to_vec());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next, acked, urls, batches, timeline) = (
            next.clone(),
            acked.clone(),
            urls.clone(),
            batches.clone(),
            timeline.clone(),
        );
        clients.push(tokio::spawn(async move {
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
    for client in clients {
        client.await.unwrap();
    }
    acked.load(Ordering::Relaxed)
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

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}
