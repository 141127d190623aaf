//! Metrics in cluster mode against the embedded collector, on the same
//! machine and the same samples, side by side in one run (BENCHMARKS.md,
//! "Metrics in cluster mode (issue 21)"):
//!
//! - remote-write samples per second acknowledged: `--clients` writers, each
//!   with one request of 2,000 samples in flight (Prometheus'
//!   `max_samples_per_send`), into an embedded collector, a 1-node and a
//!   3-node cluster (requests spread over the nodes); the collectors' CPU
//!   per million samples, and apart from it the engines';
//! - `query_range` of `rate(bench_requests_total[1m])` over 100 series for
//!   6 hours at a 15 s step, p50 and p99 of `--runs` queries: embedded, and
//!   a query node of the 3-node cluster (owning nothing) reading the
//!   blocks in S3 and the owners' heads, cold (its first query, the block
//!   cache empty) and warm.
//!
//! ```text
//! cargo build --release -p sightline-collector -p sightline-tests --bins
//! target/release/metrics-cluster-bench --samples 1000000
//! ```

use std::time::{Duration, Instant};

use sightline_tests::engines::{ClusterEngines, ClusterSettings};
use sightline_tests::{CollectorProcess, cpu_seconds, engines_cpu_seconds};

/// Samples per remote-write request.
const PER_REQUEST: usize = 2_000;
/// Series of the ingest run: 200 metrics names x 80 instances, eight
/// requests a round.
const INGEST_SERIES: usize = 16_000;
/// The query run: 100 series, 6 hours at a 15 s scrape interval.
const QUERY_SERIES: usize = 100;
const QUERY_HOURS: i64 = 6;
const STEP_MS: i64 = 15_000;

#[tokio::main]
async fn main() {
    let mut samples = 1_000_000usize;
    let mut clients = 4usize;
    let mut runs = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| {
            args.next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match arg.as_str() {
            "--samples" => samples = number("--samples"),
            "--clients" => clients = number("--clients"),
            "--runs" => runs = number("--runs"),
            other => panic!(
                "unknown argument {other:?}; usage: metrics-cluster-bench [--samples N] [--clients 4] [--runs 20]"
            ),
        }
    }
    let requests = ingest_requests(samples);
    let samples = requests.len() * PER_REQUEST;
    let engines = ClusterEngines::start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // Ingest.
    let dir = tempfile::tempdir().unwrap();
    let embedded = CollectorProcess::start(&dir.path().join("embedded"), &[]).await;
    let mut rows = vec![
        ingest(
            "embedded, 1 collector",
            &http,
            &[&embedded],
            &requests,
            clients,
        )
        .await,
    ];
    // The query data goes into the embedded collector now; it is queried
    // once the cluster has the same.
    let query_end_ms = now_ms();
    let query_requests = query_requests(query_end_ms);
    // One writer: each request holds the next 20 minutes of every series.
    send_all(&http, &[&embedded], &query_requests, 1).await;
    for size in [1usize, 3] {
        let settings = ClusterSettings {
            stream_bytes: 4 << 30,
            extra: "metrics_block_interval: 10s\n".into(),
            ..ClusterSettings::default()
        };
        let mut nodes = Vec::new();
        for n in 0..size {
            nodes.push(
                engines
                    .start_collector(&format!("s{size}c{n}"), dir.path(), &settings)
                    .await,
            );
        }
        // Ownership settles (and a previous size's leases expire) first.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let engines_cpu = engines_cpu_seconds();
        let refs: Vec<&CollectorProcess> = nodes.iter().collect();
        let mut row = ingest(
            &format!(
                "cluster, {size} collector{}",
                if size > 1 { "s" } else { "" }
            ),
            &http,
            &refs,
            &requests,
            clients,
        )
        .await;
        row.engines_cpu_per_million =
            Some((engines_cpu_seconds() - engines_cpu) / samples as f64 * 1e6);
        rows.push(row);
        if size == 1 {
            drop(nodes);
            continue;
        }
        // Query: the same 6 hours into the 3-node cluster, then asked of a
        // query node.
        send_all(&http, &refs, &query_requests, 1).await;
        let query_node = engines
            .start_collector(
                "query",
                dir.path(),
                &ClusterSettings {
                    extra: "metrics_block_interval: 10s\nowns_partitions: false\n".into(),
                    ..settings.clone()
                },
            )
            .await;
        // Every owner cuts what it holds into blocks (one interval), so
        // the query reads S3 blocks as well as heads.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let expected = query_once(&http, &embedded, query_end_ms).await;
        let (cold, answer) = timed_query(&http, &query_node, query_end_ms).await;
        assert_eq!(
            answer, expected,
            "the cluster answers as the embedded collector"
        );
        let embedded_times = (0..runs)
            .map(|_| timed_query(&http, &embedded, query_end_ms))
            .collect::<Vec<_>>();
        let mut embedded_ms = Vec::new();
        for query in embedded_times {
            embedded_ms.push(query.await.0);
        }
        let mut warm_ms = Vec::new();
        for _ in 0..runs {
            warm_ms.push(timed_query(&http, &query_node, query_end_ms).await.0);
        }
        println!(
            "\nquery_range rate(bench_requests_total[1m]), {QUERY_SERIES} series, {QUERY_HOURS} h at a 15 s step ({} points), {runs} runs:\n",
            expected
        );
        println!("| reader | p50 | p99 |\n|---|---|---|");
        println!(
            "| embedded | {:.1} ms | {:.1} ms |",
            percentile(&mut embedded_ms, 0.5),
            percentile(&mut embedded_ms, 0.99)
        );
        println!("| cluster query node, cold (first query) | {cold:.1} ms | - |");
        let (p50, p99) = (
            percentile(&mut warm_ms, 0.5),
            percentile(&mut warm_ms, 0.99),
        );
        println!(
            "| cluster query node, warm | {p50:.1} ms | {p99:.1} ms ({:.2}x embedded's p99) |",
            p99 / percentile(&mut embedded_ms, 0.99)
        );
        drop(query_node);
    }
    println!(
        "\nremote-write, {samples} samples of {INGEST_SERIES} series in requests of {PER_REQUEST}, {clients} writers:\n"
    );
    println!(
        "| collectors | samples/s acknowledged | vs embedded | collector CPU-s per 1M samples | engines' CPU-s per 1M |\n|---|---|---|---|---|"
    );
    let embedded_rate = rows[0].per_sec;
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} |",
            row.name,
            row.per_sec,
            row.per_sec / embedded_rate,
            row.cpu_per_million,
            row.engines_cpu_per_million
                .map_or("-".to_string(), |cpu| format!("{cpu:.2}"))
        );
    }
}

struct Row {
    name: String,
    per_sec: f64,
    cpu_per_million: f64,
    engines_cpu_per_million: Option<f64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `samples` in requests of [`PER_REQUEST`]: every series gets one sample
/// per round, a round 15 s after the previous, ending now.
fn ingest_requests(samples: usize) -> Vec<Vec<u8>> {
    let rounds = samples.div_ceil(INGEST_SERIES).max(1);
    let start_ms = now_ms() - rounds as i64 * STEP_MS;
    let mut requests = Vec::new();
    let mut pending: Vec<sightline_tests::WriteSeries> = Vec::new();
    for round in 0..rounds {
        for series in 0..INGEST_SERIES {
            pending.push((
                vec![
                    ("__name__".into(), format!("bench_metric_{}", series % 200)),
                    ("instance".into(), format!("host-{}:9100", series / 200)),
                    ("job".into(), "node".into()),
                ],
                vec![(start_ms + round as i64 * STEP_MS, (round * series) as f64)],
            ));
            if pending.len() == PER_REQUEST {
                requests.push(sightline_tests::remote_write_body(&pending));
                pending.clear();
            }
        }
    }
    requests
}

/// The query run's data: 100 counters over 6 hours ending at `end_ms`,
/// each request one series' samples for 20 minutes (80 samples).
fn query_requests(end_ms: i64) -> Vec<Vec<u8>> {
    let start_ms = end_ms - QUERY_HOURS * 3_600_000;
    let points = (QUERY_HOURS * 3_600_000 / STEP_MS) as usize;
    let mut requests = Vec::new();
    for chunk_start in (0..points).step_by(80) {
        let mut series = Vec::new();
        for n in 0..QUERY_SERIES {
            let samples: Vec<(i64, f64)> = (chunk_start..(chunk_start + 80).min(points))
                .map(|i| (start_ms + i as i64 * STEP_MS, (i * (n + 1)) as f64))
                .collect();
            series.push((
                vec![
                    ("__name__".into(), "bench_requests_total".into()),
                    ("instance".into(), format!("pod-{n}")),
                ],
                samples,
            ));
        }
        requests.push(sightline_tests::remote_write_body(&series));
    }
    requests
}

/// Whether the write was acknowledged; a refusal for the body itself
/// (4xx) stops the bench, saying why.
async fn post(http: &reqwest::Client, node: &CollectorProcess, body: &[u8]) -> bool {
    let response = http
        .post(node.url("/api/v1/write"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body.to_vec())
        .send()
        .await;
    let Ok(response) = response else {
        return false;
    };
    let status = response.status();
    if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
        let text = response.text().await.unwrap_or_default();
        panic!("a write was refused: {status}: {text}");
    }
    status.is_success()
}

/// Sends every request (retrying a refused one), `clients` at a time,
/// spread over `nodes`: writer `w` sends requests `w`, `w + clients`, ...
/// in order, so with eight requests a round and a client count dividing
/// eight, each series is written by one writer, in time order.
async fn send_all(
    http: &reqwest::Client,
    nodes: &[&CollectorProcess],
    requests: &[Vec<u8>],
    clients: usize,
) {
    let writers = (0..clients).map(|client| async move {
        for (index, body) in requests.iter().enumerate().skip(client).step_by(clients) {
            let node = nodes[(index / clients) % nodes.len()];
            while !post(http, node, body).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    futures::future::join_all(writers).await;
}

async fn ingest(
    name: &str,
    http: &reqwest::Client,
    nodes: &[&CollectorProcess],
    requests: &[Vec<u8>],
    clients: usize,
) -> Row {
    let cpu: f64 = nodes
        .iter()
        .map(|node| cpu_seconds(node.process.id()))
        .sum();
    let started = Instant::now();
    send_all(http, nodes, requests, clients).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = nodes
        .iter()
        .map(|node| cpu_seconds(node.process.id()))
        .sum::<f64>()
        - cpu;
    let samples = (requests.len() * PER_REQUEST) as f64;
    println!("{name}: {samples} samples acknowledged in {seconds:.2} s");
    Row {
        name: name.to_string(),
        per_sec: samples / seconds,
        cpu_per_million: cpu / samples * 1e6,
        engines_cpu_per_million: None,
    }
}

fn query_form(end_ms: i64) -> [(&'static str, String); 4] {
    let start_ms = end_ms - QUERY_HOURS * 3_600_000;
    [
        ("query", "rate(bench_requests_total[1m])".to_string()),
        ("start", format!("{:.3}", start_ms as f64 / 1000.0)),
        ("end", format!("{:.3}", end_ms as f64 / 1000.0)),
        ("step", "15s".to_string()),
    ]
}

/// The query's answer, as the number of points it holds (and checks it
/// succeeded).
async fn query_once(http: &reqwest::Client, node: &CollectorProcess, end_ms: i64) -> usize {
    timed_query(http, node, end_ms).await.1
}

/// Milliseconds one query took, and the points it answered.
async fn timed_query(http: &reqwest::Client, node: &CollectorProcess, end_ms: i64) -> (f64, usize) {
    loop {
        let started = Instant::now();
        let response = http
            .post(node.url("/api/v1/query_range"))
            .form(&query_form(end_ms))
            .send()
            .await
            .expect("query_range");
        let body: serde_json::Value = response.json().await.expect("a JSON answer");
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        if body["status"] != "success" {
            // A partition being taken over: ask again.
            eprintln!("query failed, retrying: {}", body["error"]);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let points = body["data"]["result"].as_array().map_or(0, |series| {
            series
                .iter()
                .map(|one| one["values"].as_array().map_or(0, Vec::len))
                .sum()
        });
        return (elapsed, points);
    }
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let index = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[index.min(values.len() - 1)]
}
