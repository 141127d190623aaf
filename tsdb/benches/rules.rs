//! Benchmark of rule evaluation: one round of 100 rules (recording rules
//! with `rate`, `sum by` and `histogram_quantile`, and alerting rules with
//! threshold comparisons) over about 50k series in a [`MetricStore`], as
//! the collector runs it: outputs and `ALERTS` written (and fsynced) after
//! each rule.
//!
//! Run with `cargo bench -p sightline-store --bench rules`.

use std::time::{Duration, Instant};

use sightline_tsdb::promql::Engine;
use sightline_tsdb::rules::{EvalSettings, GroupState, parse_rule_file};
use sightline_tsdb::{Labels, MetricStore};

const SCRAPE_INTERVAL_MS: i64 = 15_000;
/// Thirty minutes of scrapes.
const SCRAPES: i64 = 120;
const ROUNDS: usize = 10;
const SERVICES: usize = 20;
const INSTANCES: usize = 25;
const NODES: usize = 100;

fn series() -> Vec<(Labels, bool)> {
    let mut all = Vec::new();
    let counter = true;
    for service in 0..SERVICES {
        for instance in 0..INSTANCES {
            for method in ["GET", "POST", "PUT", "DELETE"] {
                let base = [
                    ("service", format!("svc-{service}")),
                    ("instance", format!("10.0.{service}.{instance}:8080")),
                    ("method", method.to_string()),
                ];
                for status in ["200", "201", "404", "500", "503"] {
                    let mut pairs = base.to_vec();
                    pairs.push(("__name__", "http_requests_total".to_string()));
                    pairs.push(("status", status.to_string()));
                    all.push((Labels::new(pairs), counter));
                }
                for le in [
                    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
                    "+Inf",
                ] {
                    let mut pairs = base.to_vec();
                    pairs.push((
                        "__name__",
                        "http_request_duration_seconds_bucket".to_string(),
                    ));
                    pairs.push(("le", le.to_string()));
                    all.push((Labels::new(pairs), counter));
                }
            }
            for queue in 0..16 {
                all.push((
                    Labels::new([
                        ("__name__", "queue_depth".to_string()),
                        ("service", format!("svc-{service}")),
                        ("instance", format!("10.0.{service}.{instance}:8080")),
                        ("queue", format!("q{queue}")),
                    ]),
                    false,
                ));
            }
        }
    }
    for node in 0..NODES {
        for cpu in 0..16 {
            for mode in ["idle", "user", "system", "iowait", "steal"] {
                all.push((
                    Labels::new([
                        ("__name__", "node_cpu_seconds_total".to_string()),
                        ("instance", format!("node-{node}:9100")),
                        ("cpu", cpu.to_string()),
                        ("mode", mode.to_string()),
                    ]),
                    counter,
                ));
            }
        }
        for mount in 0..10 {
            all.push((
                Labels::new([
                    ("__name__", "node_filesystem_avail_bytes".to_string()),
                    ("instance", format!("node-{node}:9100")),
                    ("mountpoint", format!("/mnt/{mount}")),
                ]),
                false,
            ));
        }
    }
    all
}

fn rules() -> String {
    let mut rules = String::from("groups:\n  - name: bench\n    rules:\n");
    let mut push = |text: String| rules.push_str(&text);
    // 10 recording rules
    for (name, expr) in [
        (
            "service:http_requests:rate5m",
            "sum by (service) (rate(http_requests_total[5m]))",
        ),
        (
            "service_status:http_requests:rate5m",
            "sum by (service, status) (rate(http_requests_total[5m]))",
        ),
        (
            "service:http_errors:ratio5m",
            "sum by (service) (rate(http_requests_total{status=~\"5..\"}[5m])) / sum by (service) (rate(http_requests_total[5m]))",
        ),
        (
            "service:latency:p99",
            "histogram_quantile(0.99, sum by (service, le) (rate(http_request_duration_seconds_bucket[5m])))",
        ),
        (
            "service:latency:p90",
            "histogram_quantile(0.9, sum by (service, le) (rate(http_request_duration_seconds_bucket[5m])))",
        ),
        (
            "service:latency:p50",
            "histogram_quantile(0.5, sum by (service, le) (rate(http_request_duration_seconds_bucket[5m])))",
        ),
        (
            "instance:cpu:busy",
            "1 - avg by (instance) (rate(node_cpu_seconds_total{mode=\"idle\"}[5m]))",
        ),
        (
            "instance:cpu_mode:rate5m",
            "sum by (instance, mode) (rate(node_cpu_seconds_total[5m]))",
        ),
        ("service:queue_depth:max", "max by (service) (queue_depth)"),
        (
            "instance:fs_avail:min",
            "min by (instance) (node_filesystem_avail_bytes)",
        ),
    ] {
        push(format!("      - record: {name}\n        expr: '{expr}'\n"));
    }
    // 90 alerting rules: per service error ratio and latency, per node CPU,
    // queue depth and disk thresholds
    for service in 0..SERVICES {
        push(format!(
            "      - alert: Errors{service}\n        expr: 'sum(rate(http_requests_total{{service=\"svc-{service}\",status=~\"5..\"}}[5m])) / sum(rate(http_requests_total{{service=\"svc-{service}\"}}[5m])) > 0.3'\n        for: 5m\n        labels: {{ severity: page }}\n        annotations: {{ summary: '{{{{ $value | humanizePercentage }}}} errors' }}\n"
        ));
        push(format!(
            "      - alert: Latency{service}\n        expr: 'histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{service=\"svc-{service}\"}}[5m]))) > 2'\n        for: 10m\n"
        ));
        push(format!(
            "      - alert: Queue{service}\n        expr: 'max_over_time(queue_depth{{service=\"svc-{service}\"}}[5m]) > 90'\n"
        ));
    }
    for index in 0..20 {
        push(format!(
            "      - alert: CpuBusy{index}\n        expr: 'instance:cpu:busy{{instance=~\"node-{index}.*\"}} > 0.{}'\n        for: 15m\n        annotations: {{ summary: '{{{{ $labels.instance }}}} at {{{{ $value | humanize }}}}' }}\n",
            50 + index
        ));
    }
    for index in 0..10 {
        push(format!(
            "      - alert: DiskLow{index}\n        expr: 'node_filesystem_avail_bytes{{mountpoint=\"/mnt/{index}\"}} < {}'\n",
            1_000_000 * (index + 1)
        ));
    }
    rules
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = MetricStore::open(dir.path()).expect("metric store");
    let all = series();
    let started = Instant::now();
    let mut state: u64 = 42;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut counters = vec![0.0f64; all.len()];
    for scrape in 0..SCRAPES {
        let batch: Vec<(Labels, i64, f64)> = all
            .iter()
            .enumerate()
            .map(|(index, (labels, counter))| {
                let value = if *counter {
                    counters[index] += (next() % 20) as f64;
                    counters[index]
                } else {
                    (next() % 10_000) as f64 / 100.0
                };
                (labels.clone(), scrape * SCRAPE_INTERVAL_MS, value)
            })
            .collect();
        store.append(&batch).expect("append");
    }
    println!(
        "filled {} series x {SCRAPES} samples in {:.1?}",
        all.len(),
        started.elapsed()
    );

    let groups = parse_rule_file("bench.yml", &rules(), Duration::from_secs(15)).expect("rules");
    let rule_count = groups[0].rules.len();
    let mut group = GroupState::new(groups.into_iter().next().expect("one group"));
    let engine = Engine::default();
    let settings = EvalSettings::default();
    let end_ms = (SCRAPES - 1) * SCRAPE_INTERVAL_MS;
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let now_ms = end_ms + round as i64 * 1_000;
        let started = Instant::now();
        group.evaluate(&mut &store, &engine, now_ms, &settings);
        times.push(started.elapsed());
    }
    let status = group.status();
    let failed: Vec<String> = status
        .rules
        .iter()
        .filter_map(|rule| {
            rule.last_error
                .as_ref()
                .map(|e| format!("{}: {e}", rule.name))
        })
        .collect();
    assert!(failed.is_empty(), "rules failed: {failed:?}");
    times.sort();
    println!(
        "rules/evaluation_round: {rule_count} rules over {} series: median {:.1?}, min {:.1?}, max {:.1?} ({ROUNDS} rounds)",
        all.len(),
        times[ROUNDS / 2],
        times[0],
        times[ROUNDS - 1]
    );
}
