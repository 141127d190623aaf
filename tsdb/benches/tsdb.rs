//! Benchmarks of the time-series store against the targets, printed
//! as one report (a bench binary: each number needs its own data shape):
//!
//! - append throughput through [`MetricStore::append`], one thread, batches
//!   of 1000 samples (one scrape), WAL fsynced per batch (target >= 300k
//!   samples/s);
//! - bytes per sample on disk after `cut_block` (target <= 2) and head
//!   memory per active series from `TsdbStats::head_bytes` (target <= 2 KB),
//!   10k series x 480 scrapes (two hours at 15 s), realistic data and the
//!   harsh data of the first measurement;
//! - `select` latency for a `__name__` matcher over 50k series (100 series
//!   per metric name), head and one block.
//!
//! Run with `cargo bench -p sightline-store --bench tsdb`.

use std::time::{Duration, Instant};

use sightline_tsdb::{LabelMatcher, Labels, METRIC_NAME, MetricStore};

const SCRAPE_INTERVAL_MS: i64 = 15_000;
const BATCH: usize = 1_000;

fn series_labels(count: usize, names: usize) -> Vec<Labels> {
    (0..count)
        .map(|index| {
            Labels::new([
                (
                    METRIC_NAME.to_string(),
                    format!("http_requests_total_{}", index % names),
                ),
                ("job".to_string(), "api".to_string()),
                (
                    "instance".to_string(),
                    format!("10.0.{}.{}:9100", index / 250 % 250, index % 250),
                ),
                (
                    "method".to_string(),
                    ["GET", "POST", "PUT", "DELETE"][index % 4].to_string(),
                ),
            ])
        })
        .collect()
}

/// A small deterministic generator (PCG-style LCG).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// How sample values are generated.
#[derive(Clone, Copy, PartialEq)]
enum Data {
    /// Scrape-like, as the issue describes it: timestamps 15 s apart with
    /// 0-2 ms jitter per scrape; 40% busy counters (+0..9 a scrape), 20%
    /// rare counters (+1 in 5% of scrapes), 30% gauges with five distinct
    /// values (change in 10% of scrapes), 10% constants (`up`, `*_info`).
    Realistic,
    /// The first measurement's data: exact 15 s, counters with random steps
    /// on every series, gauges random with two decimals on the other half.
    Harsh,
}

struct Generator {
    data: Data,
    random: Random,
    values: Vec<f64>,
}

impl Generator {
    fn new(data: Data, series: usize) -> Self {
        Generator {
            data,
            random: Random(42),
            values: (0..series)
                .map(|index| (index % 97) as f64 * 10.0)
                .collect(),
        }
    }

    /// The batch of one scrape of all series.
    fn scrape(&mut self, labels: &[Labels], scrape: i64) -> Vec<(Labels, i64, f64)> {
        let base_ms = scrape * SCRAPE_INTERVAL_MS;
        let jitter = match self.data {
            Data::Realistic => (self.random.next() % 3) as i64,
            Data::Harsh => 0,
        };
        labels
            .iter()
            .enumerate()
            .map(|(index, series)| {
                let value = self.next_value(index);
                (series.clone(), base_ms + jitter, value)
            })
            .collect()
    }

    fn next_value(&mut self, index: usize) -> f64 {
        let random = self.random.next();
        let value = &mut self.values[index];
        match (self.data, index % 10) {
            (Data::Harsh, kind) if kind % 2 == 0 => *value += (random % 20) as f64,
            (Data::Harsh, _) => *value = ((random % 10_000) as f64) / 100.0,
            (Data::Realistic, 0..=3) => *value += (random % 10) as f64,
            (Data::Realistic, 4..=5) if random.is_multiple_of(20) => *value += 1.0,
            (Data::Realistic, 6..=8) if random.is_multiple_of(10) => {
                *value = 1_048_576.0 * (1 + random / 10 % 5) as f64
            }
            (Data::Realistic, 9) => *value = 1.0,
            (Data::Realistic, _) => {}
        }
        *value
    }
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`
/// (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Time spent inside `MetricStore::append`: wall clock, and CPU time of the
/// whole fill (the generator's clones included, so an upper bound).
struct Spent {
    wall: Duration,
    cpu: Duration,
}

/// Appends `scrapes` scrapes of `labels` in batches of [`BATCH`].
fn fill(store: &MetricStore, labels: &[Labels], scrapes: i64, data: Data) -> Spent {
    let mut generator = Generator::new(data, labels.len());
    let mut wall = Duration::ZERO;
    let cpu_before = cpu_time();
    for scrape in 0..scrapes {
        let samples = generator.scrape(labels, scrape);
        for batch in samples.chunks(BATCH) {
            let started = Instant::now();
            let outcome = store.append(batch).expect("append");
            wall += started.elapsed();
            assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        }
    }
    Spent {
        wall,
        cpu: cpu_time().saturating_sub(cpu_before),
    }
}

fn sizes_and_throughput(data: Data, name: &str) {
    let series = 10_000;
    let scrapes = 480;
    let labels = series_labels(series, 50);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MetricStore::open(dir.path()).expect("open");
    let spent = fill(&store, &labels, scrapes, data);
    let samples = series as f64 * scrapes as f64;
    let head = store.stats();
    let wal_per_sample = head.wal_bytes as f64 / samples;
    let memory_per_series = head.head_bytes as f64 / head.head_series as f64;
    // a block of the whole head: two hours
    store
        .maintain(0, i64::MIN)
        .expect("cut the head into a block");
    let stats = store.stats();
    assert_eq!(stats.block_samples as f64, samples);
    let bytes_per_sample = stats.block_bytes as f64 / stats.block_samples as f64;
    println!(
        "{name} data, {series} series x {scrapes} scrapes: append {:.0}k samples/s ({:.2} s in append), \
         {:.0}k samples per CPU-second; block {bytes_per_sample:.2} B/sample on disk; \
         head {memory_per_series:.0} B/series; wal {wal_per_sample:.1} B/sample",
        samples / spent.wall.as_secs_f64() / 1e3,
        spent.wall.as_secs_f64(),
        samples / spent.cpu.as_secs_f64().max(0.01) / 1e3,
    );
}

/// Appends 1000 series x 100 scrapes to a fresh store, `runs` times.
fn append_runs(runs: usize) {
    let labels = series_labels(BATCH, 50);
    let mut rates = Vec::new();
    let mut cpu = Duration::ZERO;
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MetricStore::open(dir.path()).expect("open");
        let spent = fill(&store, &labels, 100, Data::Realistic);
        rates.push(100.0 * BATCH as f64 / spent.wall.as_secs_f64() / 1e3);
        cpu += spent.cpu;
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "append 1000 series x 100 scrapes, fsync per scrape, {runs} runs: median {:.0}k samples/s \
         (min {:.0}k, max {:.0}k); all runs {:.0}k samples per CPU-second",
        rates[runs / 2],
        rates[0],
        rates[runs - 1],
        // CPU time comes in 10 ms ticks: only the sum of the runs is precise
        (runs * 100 * BATCH) as f64 / cpu.as_secs_f64().max(0.01) / 1e3,
    );
    // the floor the disk sets: one fdatasync of a scrape's WAL record
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fsync");
    let mut file = std::fs::File::create(&path).expect("create");
    let record = vec![7u8; 11 * BATCH];
    let started = Instant::now();
    for _ in 0..100 {
        std::io::Write::write_all(&mut file, &record).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let per_sync = started.elapsed() / 100;
    println!(
        "disk: write + fdatasync of {} bytes: {:.2} ms, at most {:.0}k samples/s at {BATCH} samples per fsync",
        record.len(),
        per_sync.as_secs_f64() * 1e3,
        BATCH as f64 / per_sync.as_secs_f64() / 1e3
    );
}

/// Several writers (as concurrent scrapes are), each appending its own
/// 1000-series batches: the fsyncs overlap with other writers' appends and
/// one fsync serves several batches.
fn concurrent_append(writers: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MetricStore::open(dir.path()).expect("open");
    let scrapes = 50;
    let all = series_labels(BATCH * writers, 50);
    let batches: Vec<Vec<Vec<(Labels, i64, f64)>>> = all
        .chunks(BATCH)
        .map(|labels| {
            let mut generator = Generator::new(Data::Realistic, labels.len());
            (0..scrapes)
                .map(|scrape| generator.scrape(labels, scrape))
                .collect()
        })
        .collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        for writer_batches in &batches {
            let store = &store;
            scope.spawn(move || {
                for batch in writer_batches {
                    store.append(batch).expect("append");
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let samples = (writers * BATCH) as f64 * scrapes as f64;
    assert_eq!(store.stats().head_samples as f64, samples);
    println!(
        "append, {writers} writers x 1000 series x {scrapes} scrapes, fsync per batch (group commit): {:.0}k samples/s",
        samples / elapsed.as_secs_f64() / 1e3
    );
}

fn select_latency() {
    let series = 50_000;
    let labels = series_labels(series, 500);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MetricStore::open(dir.path()).expect("open");
    // 40 scrapes (10 min) in a block, 20 (5 min) in the head
    fill(&store, &labels, 40, Data::Realistic);
    store.maintain(0, i64::MIN).expect("cut a block");
    let mut generator = Generator::new(Data::Realistic, series);
    for scrape in 40..60 {
        let samples = generator.scrape(&labels, scrape);
        for batch in samples.chunks(BATCH) {
            store.append(batch).expect("append");
        }
    }
    let end_ms = 59 * SCRAPE_INTERVAL_MS;
    let windows = [
        (
            "instant (last 5 m, head only)",
            end_ms - 300_000 + 1,
            end_ms,
        ),
        ("range (15 m, block and head)", 0, end_ms),
    ];
    for (window, start_ms, end_ms) in windows {
        let rounds = 200;
        let mut selected = 0;
        let started = Instant::now();
        for round in 0..rounds {
            let matcher =
                LabelMatcher::equal(METRIC_NAME, &format!("http_requests_total_{}", round % 500));
            let reader = store.reader();
            selected += reader
                .select(&[matcher], start_ms, end_ms)
                .expect("select")
                .len();
        }
        let per_select = started.elapsed() / rounds;
        assert_eq!(selected, rounds as usize * 100);
        println!(
            "select __name__=\"x\" over {series} series (100 match), {window}: {:.0} us per select",
            per_select.as_secs_f64() * 1e6
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported
    append_runs(15);
    concurrent_append(4);
    sizes_and_throughput(Data::Realistic, "realistic");
    sizes_and_throughput(Data::Harsh, "harsh");
    select_latency();
}
