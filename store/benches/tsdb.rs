//! Benchmarks of the time-series store: append throughput (criterion), and
//! the sizes the issue sets targets for, printed once before the runs:
//! bytes per sample on disk (target <= 2) and head memory per active series
//! (target <= 2 KB).
//!
//! Run with `cargo bench -p sightline-store --bench tsdb`.

use criterion::{Criterion, Throughput, criterion_group};
use sightline_store::tsdb::{Labels, TimeSeriesStore};

const SCRAPE_INTERVAL_MS: i64 = 15_000;

fn series_labels(count: usize) -> Vec<Labels> {
    (0..count)
        .map(|index| {
            Labels::new([
                (
                    "__name__".to_string(),
                    format!("http_requests_total_{}", index % 50),
                ),
                ("job".to_string(), "api".to_string()),
                (
                    "instance".to_string(),
                    format!("10.0.{}.{}:9100", index / 250, index % 250),
                ),
                (
                    "method".to_string(),
                    ["GET", "POST", "PUT", "DELETE"][index % 4].to_string(),
                ),
            ])
        })
        .collect()
}

/// Deterministic, scrape-like values: counters that grow by varying steps
/// and gauges with a few significant digits.
struct Values {
    state: u64,
}

impl Values {
    fn next(&mut self) -> u64 {
        self.state = self
            .state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.state >> 33
    }
}

fn fill(store: &mut TimeSeriesStore, labels: &[Labels], scrapes: i64) {
    let mut values = Values { state: 42 };
    let mut counters = vec![0.0f64; labels.len()];
    for scrape in 0..scrapes {
        for (index, series) in labels.iter().enumerate() {
            let value = if index % 2 == 0 {
                counters[index] += (values.next() % 20) as f64;
                counters[index]
            } else {
                ((values.next() % 10_000) as f64) / 100.0
            };
            store
                .append(series, scrape * SCRAPE_INTERVAL_MS, value)
                .unwrap();
        }
        store.commit().unwrap();
    }
}

fn report_sizes() {
    let labels = series_labels(10_000);
    let dir = tempfile::tempdir().unwrap();
    let mut store = TimeSeriesStore::open(dir.path()).unwrap();
    // 2 hours of 15 s scrapes: one block's worth
    fill(&mut store, &labels, 480);
    let head = store.stats();
    let memory_per_series = head.head_bytes as f64 / head.head_series as f64;
    store.cut_block().unwrap();
    let stats = store.stats();
    let bytes_per_sample = stats.block_bytes as f64 / stats.block_samples as f64;
    eprintln!(
        "tsdb sizes: {} series x 480 samples; head memory {:.0} B per active series (target <= 2048); block on disk {:.2} B per sample (target <= 2.0)",
        head.head_series, memory_per_series, bytes_per_sample
    );
}

fn append_throughput(criterion: &mut Criterion) {
    let labels = series_labels(1_000);
    let scrapes = 100;
    let mut group = criterion.benchmark_group("tsdb");
    group.sample_size(10);
    group.throughput(Throughput::Elements(labels.len() as u64 * scrapes as u64));
    group.bench_function(
        "append 1000 series x 100 scrapes, commit per scrape",
        |bencher| {
            bencher.iter_batched(
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let store = TimeSeriesStore::open(dir.path()).unwrap();
                    (dir, store)
                },
                |(dir, mut store)| {
                    fill(&mut store, &labels, scrapes);
                    (dir, store)
                },
                criterion::BatchSize::PerIteration,
            );
        },
    );
    group.finish();
}

criterion_group!(benches, append_throughput);

fn main() {
    report_sizes();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
