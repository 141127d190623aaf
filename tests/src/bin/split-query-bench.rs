//! Queries over a cluster's splits against the embedded store, on the same
//! records, measured side by side in one run (BENCHMARKS.md, "Queries over
//! splits (issue 20)"):
//!
//! - the same records (24 hours of them) indexed once into an embedded
//!   `LogStore` and cut into 1, 10 and 50 splits uploaded to SeaweedFS's S3
//!   and published in PostgreSQL (the cluster's real path: `splits::build`,
//!   upload, the fenced publish);
//! - three queries through the `LogReader` each side implements: a
//!   `request_id` lookup over all time, a one-hour term query and a 24-hour
//!   histogram (30-minute buckets), p50 and p99 of `--runs` runs;
//! - over splits: cold (a new reader with an empty split cache for every
//!   run, so every split comes from S3) and warm (the cache filled), each
//!   with the splits read by range (their hotcache, then what the query
//!   reads) and downloaded whole (`--reads ranges,download`).
//!
//! ```text
//! cargo build --release -p sightline-tests --bins
//! target/release/split-query-bench --records 1000000 --runs 20
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sightline_cluster::cache::{CacheSettings, SplitReads};
use sightline_cluster::metastore::Metastore;
use sightline_cluster::query::{ClusterReader, Peers};
use sightline_cluster::splits;
use sightline_store::{Batch, LogQuery, LogReader, LogRecord, LogStore};
use sightline_tests::engines::ClusterEngines;

const BATCH: usize = 1_000;
const HOUR: i64 = 3_600_000_000_000;

#[tokio::main]
async fn main() {
    let mut records = 1_000_000usize;
    let mut runs = 20usize;
    let mut counts = vec![1usize, 10, 50];
    let mut modes = vec![SplitReads::Ranges, SplitReads::Download];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--records" => records = number(args.next()),
            "--runs" => runs = number(args.next()),
            "--splits" => {
                counts = args
                    .next()
                    .expect("--splits takes a list: 1,10,50")
                    .split(',')
                    .map(|n| n.parse().expect("--splits takes numbers"))
                    .collect()
            }
            "--reads" => {
                modes = args
                    .next()
                    .expect("--reads takes a list: ranges,download")
                    .split(',')
                    .map(|mode| match mode {
                        "ranges" => SplitReads::Ranges,
                        "download" => SplitReads::Download,
                        other => panic!("--reads takes ranges and download, not {other:?}"),
                    })
                    .collect()
            }
            other => panic!(
                "unknown argument {other:?}; usage: split-query-bench [--records N] [--runs N] [--splits 1,10,50] [--reads ranges,download]"
            ),
        }
    }
    let records = records / BATCH * BATCH;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let start = now - 24 * HOUR;
    eprintln!("generating {records} records over 24 hours ...");
    let batches = Arc::new(generate(records, start));
    let work = tempfile::tempdir().unwrap();

    eprintln!("indexing the embedded store ...");
    let embedded = {
        let dir = work.path().join("embedded");
        let batches = batches.clone();
        tokio::task::spawn_blocking(move || {
            let store = LogStore::open(&dir).unwrap();
            for (position, batch) in batches.iter().enumerate() {
                store.add(position as u64 + 1, batch).unwrap();
            }
            store.commit(batches.len() as u64 + 1).unwrap();
            Arc::new(store)
        })
        .await
        .unwrap()
    };
    let queries = Queries::new(&batches, now);
    let mut table = vec![measure("embedded", embedded as Arc<dyn LogReader>, &queries, runs).await];

    let engines = ClusterEngines::start().await;
    for (round, count) in counts.into_iter().enumerate() {
        // Each round in its own key prefix and partitions' checkpoints.
        let prefix = format!("bench{round}/");
        let postgres = engines.postgres.url();
        let storage = storage(&engines, &prefix);
        eprintln!("cutting {count} splits and publishing them ...");
        let cut = Instant::now();
        publish(&postgres, &storage, work.path(), &batches, count, round).await;
        eprintln!("  {count} splits in {:.1?}", cut.elapsed());
        for &mode in &modes {
            let name = match mode {
                SplitReads::Ranges => "by range",
                SplitReads::Download => "downloaded",
            };
            let reader = |cache: String| {
                let storage = storage.clone();
                let cache = work.path().join(cache);
                let postgres = postgres.clone();
                async move {
                    Arc::new(
                        ClusterReader::connect(
                            &postgres,
                            storage,
                            &cache,
                            CacheSettings {
                                split_bytes: 64 << 30,
                                reads: mode,
                                range_bytes: 16 << 30,
                            },
                            Peers::new("bench".into(), None, Duration::from_secs(3)).unwrap(),
                        )
                        .await
                        .unwrap(),
                    )
                }
            };
            // Cold: a new reader, its cache empty, for every run of every query.
            let mut cold: [Vec<Duration>; 3] = Default::default();
            for attempt in 0..runs.div_ceil(4) {
                for (which, times) in cold.iter_mut().enumerate() {
                    let fresh = reader(format!("cold-{round}-{name}-{attempt}-{which}")).await;
                    times.push(run(fresh, &queries, which).await);
                }
            }
            table.push(Row {
                name: format!("{count} splits {name}, cold"),
                times: cold,
            });
            let warm = reader(format!("warm-{round}-{name}")).await;
            // One pass fills the cache.
            measure("", warm.clone() as Arc<dyn LogReader>, &queries, 1).await;
            let stats = warm.cache_stats();
            let load = |counter: &std::sync::atomic::AtomicU64| {
                counter.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1 << 20) as f64
            };
            eprintln!(
                "  {count} splits {name}: one pass of the three queries fetched {:.1} MiB to open splits and {:.1} MiB by range",
                load(&stats.downloaded_bytes),
                load(&stats.range_bytes)
            );
            table.push(
                measure(
                    &format!("{count} splits {name}, warm"),
                    warm,
                    &queries,
                    runs,
                )
                .await,
            );
        }
        retire_all(&postgres).await;
    }
    println!(
        "\n{records} records, p50 / p99 in ms ({runs} warm runs, {} cold runs)\n",
        runs.div_ceil(4)
    );
    println!("| store | request_id lookup | 1 h term query | 24 h histogram |");
    println!("|---|---|---|---|");
    for row in &table {
        println!(
            "| {} | {} | {} | {} |",
            row.name,
            row.cell(0),
            row.cell(1),
            row.cell(2)
        );
    }
}

fn number(arg: Option<String>) -> usize {
    arg.and_then(|n| n.parse().ok())
        .expect("a number after the flag")
}

/// Records of ten services over 24 hours, in time order: a request id per
/// ten records, one in eight an error.
fn generate(records: usize, start: i64) -> Vec<Vec<LogRecord>> {
    let step = 24 * HOUR / records as i64;
    (0..records / BATCH)
        .map(|b| {
            (0..BATCH)
                .map(|i| {
                    let n = b * BATCH + i;
                    let mut record = LogRecord {
                        timestamp: start + n as i64 * step,
                        severity_text: if n.is_multiple_of(8) { "ERROR" } else { "INFO" }.into(),
                        body: format!(
                            "request {} handled order o-{} in {} ms",
                            n / 10,
                            n % 997,
                            n % 300
                        ),
                        service: format!("svc-{}", n % 10),
                        request_id: Some(format!("req-{}", n / 10)),
                        ..LogRecord::default()
                    };
                    std::sync::Arc::make_mut(&mut record.resource).insert(
                        "k8s.pod.name".into(),
                        format!("svc-{}-{}", n % 10, n % 3).into(),
                    );
                    record
                })
                .collect()
        })
        .collect()
}

fn storage(engines: &ClusterEngines, prefix: &str) -> splits::SplitStorage {
    splits::SplitStorage::new(&splits::ObjectStoreConfig {
        endpoint: Some(engines.s3.endpoint()),
        bucket: engines.s3.bucket().to_string(),
        region: engines.s3.region().to_string(),
        access_key_id: Some(engines.s3.access_key().to_string()),
        secret_access_key: Some(engines.s3.secret_key().to_string()),
        prefix: prefix.to_string(),
    })
    .unwrap()
}

/// Cuts the batches into `count` splits of consecutive records, each in a
/// partition of its own, and publishes them as an owner does.
async fn publish(
    postgres: &str,
    storage: &splits::SplitStorage,
    work: &std::path::Path,
    batches: &[Vec<LogRecord>],
    count: usize,
    round: usize,
) {
    let metastore = Metastore::connect(postgres).await.unwrap();
    let per_split = batches.len().div_ceil(count);
    for (index, chunk) in batches.chunks(per_split).enumerate() {
        let partition = ((round * 50 + index) % 64) as u32;
        let lease = metastore
            .acquire("bench", partition, Duration::from_secs(3600))
            .await
            .unwrap()
            .expect("the partition is free");
        let from = lease.checkpoint;
        let decoded: Vec<splits::Decoded> = chunk
            .iter()
            .enumerate()
            .map(|(i, records)| (from + i as u64, Arc::new(Batch::Logs(records.clone()))))
            .collect();
        let to = from + decoded.len() as u64;
        let work = work.join("cut");
        let split = tokio::task::spawn_blocking(move || {
            splits::build(
                &work,
                partition,
                lease.epoch,
                from,
                to,
                &decoded,
                Vec::new(),
                &|_, _| Ok(Vec::new()),
            )
        })
        .await
        .unwrap()
        .unwrap();
        storage.upload(&split).await.unwrap();
        metastore
            .publish_split("bench", &lease, &split.meta.row)
            .await
            .unwrap();
    }
}

/// Takes the round's splits out of the next rounds' queries.
async fn retire_all(postgres: &str) {
    let metastore = Metastore::connect(postgres).await.unwrap();
    metastore.retire_older_than(Duration::ZERO).await.unwrap();
}

struct Queries {
    request_id: String,
    hour: (i64, i64),
    day: (i64, i64),
}

impl Queries {
    fn new(batches: &[Vec<LogRecord>], now: i64) -> Queries {
        let middle = &batches[batches.len() / 2][BATCH / 2];
        Queries {
            request_id: middle.request_id.clone().unwrap(),
            hour: (now - 3 * HOUR, now - 2 * HOUR),
            day: (now - 24 * HOUR, now),
        }
    }
}

struct Row {
    name: String,
    /// Per query, every run's duration.
    times: [Vec<Duration>; 3],
}

impl Row {
    fn cell(&self, query: usize) -> String {
        let mut times = self.times[query].clone();
        times.sort();
        let at = |q: f64| {
            let index = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
            times[index].as_secs_f64() * 1e3
        };
        format!("{:.1} / {:.1}", at(0.5), at(0.99))
    }
}

/// Runs each query `runs` times on a blocking thread.
async fn measure(name: &str, reader: Arc<dyn LogReader>, queries: &Queries, runs: usize) -> Row {
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..runs {
        for (which, times) in times.iter_mut().enumerate() {
            times.push(run(reader.clone(), queries, which).await);
        }
    }
    Row {
        name: name.into(),
        times,
    }
}

/// Query `which` once, on a blocking thread, checking its answer is not
/// empty.
async fn run(reader: Arc<dyn LogReader>, queries: &Queries, which: usize) -> Duration {
    let request = format!("request_id:{}", queries.request_id);
    let (hour, day) = (queries.hour, queries.day);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        match which {
            0 => {
                let found = reader
                    .search(&LogQuery {
                        query: request.clone(),
                        limit: 100,
                        ..LogQuery::default()
                    })
                    .unwrap();
                assert_eq!(found.total_hits, 10, "{request}");
            }
            1 => {
                let found = reader
                    .search(&LogQuery {
                        query: "service:svc-4 AND severity:ERROR".into(),
                        start: Some(hour.0),
                        end: Some(hour.1),
                        limit: 100,
                        after: None,
                    })
                    .unwrap();
                assert!(found.total_hits > 0);
            }
            _ => {
                let histogram = reader.histogram("", day.0, day.1, HOUR / 2).unwrap();
                assert!(histogram.buckets.iter().map(|b| b.count).sum::<u64>() > 0);
            }
        }
        started.elapsed()
    })
    .await
    .unwrap()
}
