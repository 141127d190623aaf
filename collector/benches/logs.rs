//! Whole-system benchmark of log ingest and log search (issue 3).
//!
//! ```text
//! cargo bench -p sightline-collector --bench logs -- [--records N] [--query-records N]
//!     [--query-store DIR] [--clients N] [--gzip] [--skip-ingest] [--skip-query]
//! ```
//!
//! **Ingest.** Generates `--records` realistic log records (ten services, 30
//! pods with Kubernetes resource attributes, nine attributes per record) as
//! OTLP `ExportLogsServiceRequest`s of `--batch` records, all in memory before
//! the clock starts. Then starts the real collector in-process
//! ([`sightline_collector::run`], default commit interval) on a temporary
//! directory and free loopback ports, sends every batch from `--clients`
//! concurrent tonic clients (each request encoded before the clock starts,
//! see `support::Preencoded`), and measures the wall time until
//! every batch is acknowledged (in the WAL, fsynced) and until every record
//! is searchable (`sightline_collector_log_records` on `/metrics`, i.e. the
//! committed and reloaded index). The same records, as raw JSON lines, are
//! then indexed into a bare tantivy index with the store's schema (two
//! indexing threads, no WAL, no network) for the ratio.
//!
//! *Raw bytes* are the records as the services wrote them: one JSON line per
//! record (`ts`, `level`, `msg`, the parsed fields, trace and span id) plus its
//! newline. Kubernetes resource attributes are added by the agent and are not
//! counted.
//!
//! **Query.** Builds (or reuses, with `--query-store`) a store of
//! `--query-records` records spread over 24 hours directly with
//! `LogStore::add`/`commit`, then reports p50/p99 of a `request_id` lookup, a
//! term query over the last hour sorted by time and a 24-hour histogram of 60
//! buckets, called in-process on the `LogStore` (no HTTP).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord as OtlpLogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Map, Value, json};
use sightline_store::{LogQuery, LogRecord, LogStore};
use support::{Rng, cpu_model, http_get, measure, mix, now_nanos, report};
use tantivy::schema::{Field, Schema};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{Index, IndexSettings, TantivyDocument};
use tonic::codec::CompressionEncoding;

const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;
const MB: f64 = 1_000_000.0;

#[derive(Debug, Clone, Parser)]
#[command(about = "Sightline log ingest and search benchmark")]
struct Args {
    /// Records to ingest through the collector (and into bare tantivy).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Records per OTLP export request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent gRPC clients, one connection each.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Send gzip-compressed requests (off by default).
    #[arg(long)]
    gzip: bool,
    /// How the requests are shaped: as our agent sends them, or as Fluent
    /// Bit's `opentelemetry` output does by default (see [`Shape`]).
    #[arg(long, value_enum, default_value_t = Shape::Agent)]
    shape: Shape,
    /// Records in the query benchmark's store.
    #[arg(long, default_value_t = 10_000_000)]
    query_records: usize,
    /// Keep the query store here and reuse it on later runs (built if absent).
    #[arg(long)]
    query_store: Option<PathBuf>,
    /// Timed iterations of each query.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    #[arg(long)]
    skip_ingest: bool,
    #[arg(long)]
    skip_query: bool,
    /// Index `--records` raw lines into bare tantivy once per schema variant
    /// (what each part of the schema costs) and exit.
    #[arg(long)]
    schema_variants: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "machine: {} cpus, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    if args.schema_variants {
        return schema_variants(&args);
    }
    if !args.skip_ingest {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(ingest_bench(&args))?;
    }
    if !args.skip_query {
        query_bench(&args)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Data generation
// ---------------------------------------------------------------------------

const SERVICES: [&str; 10] = [
    "gateway",
    "auth",
    "checkout",
    "cart",
    "catalog",
    "inventory",
    "payment",
    "shipping",
    "notification",
    "search",
];

const ROUTES: [&str; 10] = [
    "/api/v1/orders/{id}",
    "/api/v1/session",
    "/api/v1/checkout",
    "/api/v1/cart/items",
    "/api/v1/products/{sku}",
    "/internal/reservations",
    "/internal/payments/authorize",
    "/internal/shipments",
    "/internal/notify",
    "/api/v1/search",
];

const PODS_PER_SERVICE: usize = 3;

/// (text, OTLP severity number), weighted by repetition.
const LEVELS: [(&str, i32); 20] = [
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("info", 9),
    ("debug", 5),
    ("debug", 5),
    ("warn", 13),
    ("error", 17),
];

struct Pod {
    service: usize,
    otlp: Resource,
    /// Shared by the pod's records, as the OTLP receiver shares a resource.
    json: std::sync::Arc<Map<String, Value>>,
}

fn pods() -> Vec<Pod> {
    let mut rng = Rng(7);
    let mut pods = Vec::new();
    for (service_index, service) in SERVICES.iter().enumerate() {
        for _ in 0..PODS_PER_SERVICE {
            let suffix: String = (0..5)
                .map(|_| char::from(*rng.pick(b"bcdfghjklmnpqrstvwxz2456789")))
                .collect();
            let node = format!("node-{}", 1 + rng.below(3));
            let json = json!({
                "service.name": service,
                "service.version": format!("1.{}.{}", rng.below(20), rng.below(10)),
                "k8s.namespace.name": "shop",
                "k8s.pod.name": format!("{service}-7d9f8b6c5-{suffix}"),
                "k8s.pod.uid": uuid(&mut rng),
                "k8s.container.name": service,
                "k8s.node.name": node,
                "host.name": node,
                "container.id": format!("{:016x}{:016x}{:016x}{:016x}", rng.next(), rng.next(), rng.next(), rng.next()),
            });
            let json = json.as_object().cloned().unwrap_or_default();
            let otlp = Resource {
                attributes: json
                    .iter()
                    .map(|(key, value)| string_kv(key, value.as_str().unwrap_or_default()))
                    .collect(),
                ..Resource::default()
            };
            pods.push(Pod {
                service: service_index,
                otlp,
                json: std::sync::Arc::new(json),
            });
        }
    }
    pods
}

fn uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next(), rng.next());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

/// One log event, before it is rendered as a line, an OTLP record or a store record.
struct Event {
    timestamp: i64,
    level: (&'static str, i32),
    message: String,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The parsed fields, in line order.
    fields: Map<String, Value>,
}

/// Events of one request share a request id and a trace: `REQUEST_SPAN` in a row.
const REQUEST_SPAN: u64 = 4;

fn request_id(global_index: u64) -> String {
    format!("req-{:016x}", mix((global_index / REQUEST_SPAN) ^ 0x5eed))
}

fn event(global_index: u64, timestamp: i64, service: usize, rng: &mut Rng) -> Event {
    let group = global_index / REQUEST_SPAN;
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&mix(group ^ 0x7ace).to_be_bytes());
    trace_id[8..].copy_from_slice(&mix(group ^ 0x7ace_0001).to_be_bytes());
    let span_id = rng.next().to_be_bytes();
    let level = *rng.pick(&LEVELS);
    let user = format!("u-{}", rng.below(200_000));
    let order = format!("ord-{:08}", rng.below(100_000_000));
    let method = *rng.pick(&["GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE"]);
    let status: i64 = match level.0 {
        "error" => *rng.pick(&[500, 502, 503]),
        "warn" => *rng.pick(&[404, 409, 429]),
        _ => *rng.pick(&[200, 200, 200, 200, 201, 204]),
    };
    let duration_ms = (rng.below(30_000) as f64) / 10.0 + 0.1;
    let amount = format!("{}.{:02}", rng.below(500), rng.below(100));
    let sku = format!("sku-{:05}", rng.below(50_000));
    let count = 1 + rng.below(5);
    let message = match (SERVICES[service], level.0) {
        (_, "error") => format!(
            "upstream {} timed out after {duration_ms}ms",
            rng.pick(&SERVICES)
        ),
        (_, "warn") => format!("slow request: {method} took {duration_ms}ms (retry {count})"),
        ("gateway", _) => format!("{method} {} -> {status} in {duration_ms}ms", ROUTES[0]),
        ("auth", _) => format!("token validated for user {user}"),
        ("checkout", _) => format!("order {order} placed: {count} items, total {amount} EUR"),
        ("cart", _) => format!("added {sku} x{count} to cart of {user}"),
        ("catalog", _) => format!("product {sku} served from cache"),
        ("inventory", _) => format!("reserved {count} units of {sku} at warehouse eu-{count}"),
        ("payment", _) => format!("payment authorized for {order}: {amount} EUR"),
        ("shipping", _) => format!("shipment created for {order} via dhl"),
        ("notification", _) => format!("email order_confirmation sent to {user}"),
        _ => format!("query returned {count} results in {duration_ms}ms"),
    };
    let mut fields = Map::new();
    fields.insert("request_id".into(), request_id(global_index).into());
    fields.insert("user_id".into(), user.into());
    fields.insert("order_id".into(), order.into());
    fields.insert("http.method".into(), method.into());
    fields.insert("http.route".into(), ROUTES[service].into());
    fields.insert("http.status".into(), status.into());
    fields.insert("duration_ms".into(), duration_ms.into());
    Event {
        timestamp,
        level,
        message,
        trace_id,
        span_id,
        fields,
    }
}

/// The line the service wrote: `{"ts":..,"level":..,"msg":..,<fields>,"trace_id":..,"span_id":..}`.
fn raw_line(event: &Event) -> String {
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(event.timestamp))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut line = String::with_capacity(400);
    line.push_str("{\"ts\":");
    line.push_str(&Value::from(ts).to_string());
    line.push_str(",\"level\":\"");
    line.push_str(event.level.0);
    line.push_str("\",\"msg\":");
    line.push_str(&Value::from(event.message.as_str()).to_string());
    for (key, value) in &event.fields {
        line.push_str(&format!(",{}:{value}", Value::from(key.as_str())));
    }
    line.push_str(&format!(
        ",\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
        hex::encode(event.trace_id),
        hex::encode(event.span_id)
    ));
    line
}

fn otlp_attribute(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Number(number) if number.is_i64() => {
            any_value::Value::IntValue(number.as_i64().unwrap_or_default())
        }
        Value::Number(number) => any_value::Value::DoubleValue(number.as_f64().unwrap_or_default()),
        other => any_value::Value::StringValue(other.as_str().unwrap_or_default().to_string()),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn otlp_record(event: &Event) -> OtlpLogRecord {
    let mut attributes: Vec<KeyValue> = event
        .fields
        .iter()
        .map(|(key, value)| otlp_attribute(key, value))
        .collect();
    // Added by the agent from the container runtime's log format.
    attributes.push(string_kv("log.iostream", "stdout"));
    OtlpLogRecord {
        time_unix_nano: event.timestamp as u64,
        observed_time_unix_nano: event.timestamp as u64 + 2_000_000,
        severity_number: event.level.1,
        severity_text: event.level.0.to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(event.message.clone())),
        }),
        attributes,
        trace_id: event.trace_id.to_vec(),
        span_id: event.span_id.to_vec(),
        ..OtlpLogRecord::default()
    }
}

/// The record as the collector stores it (what `otlp::log_records` makes).
fn store_record(event: &Event, pod: &Pod) -> LogRecord {
    let mut attributes = event.fields.clone();
    attributes.insert("log.iostream".into(), "stdout".into());
    LogRecord {
        timestamp: event.timestamp,
        observed_timestamp: event.timestamp + 2_000_000,
        severity_text: event.level.0.to_ascii_uppercase(),
        severity_number: event.level.1,
        body: event.message.clone(),
        service: SERVICES[pod.service].to_string(),
        resource: std::sync::Arc::clone(&pod.json),
        request_id: event
            .fields
            .get("request_id")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        attributes,
        trace_id: Some(hex::encode(event.trace_id)),
        span_id: Some(hex::encode(event.span_id)),
    }
}

/// The shape of the export requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// Our agent's: one resource per pod with its Kubernetes attributes,
    /// the message as the body, the parsed fields as attributes, severity
    /// and ids set.
    Agent,
    /// Fluent Bit's `opentelemetry` output with its defaults (v3-v5,
    /// `plugins/out_opentelemetry`): one empty resource and scope per
    /// request, the line the service wrote as a string body, the CRI time,
    /// no attributes, severity or ids.
    FluentBit,
}

/// One export request and the raw lines of its records, with their pods.
struct GeneratedBatch {
    request: ExportLogsServiceRequest,
    lines: Vec<(usize, String)>,
}

/// Records per resource (pod) inside one export request, as an agent batches them.
const RECORDS_PER_RESOURCE: usize = 100;

/// Deterministic: the same `batch_index` always gives the same batch.
fn generate_batch(
    shape: Shape,
    pods: &[Pod],
    batch_index: usize,
    batch_size: usize,
    total: usize,
    end_time: i64,
) -> GeneratedBatch {
    let mut rng = Rng(mix(batch_index as u64 ^ 0xba7c));
    let first = batch_index * batch_size;
    let last = (first + batch_size).min(total);
    let mut resource_logs = Vec::new();
    let mut lines = Vec::with_capacity(last - first);
    for chunk_start in (first..last).step_by(RECORDS_PER_RESOURCE) {
        let pod_index = rng.below(pods.len() as u64) as usize;
        let pod = &pods[pod_index];
        let mut records = Vec::with_capacity(RECORDS_PER_RESOURCE);
        for global in chunk_start..(chunk_start + RECORDS_PER_RESOURCE).min(last) {
            // 10 µs apart, the newest at `end_time`.
            let timestamp = end_time - (total - global) as i64 * 10_000;
            let event = event(global as u64, timestamp, pod.service, &mut rng);
            let line = raw_line(&event);
            records.push(match shape {
                Shape::Agent => otlp_record(&event),
                Shape::FluentBit => OtlpLogRecord {
                    time_unix_nano: event.timestamp as u64,
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(line.clone())),
                    }),
                    ..OtlpLogRecord::default()
                },
            });
            lines.push((pod_index, line));
        }
        if shape == Shape::FluentBit {
            // One empty resource and scope for the whole request.
            match resource_logs.first_mut() {
                None => resource_logs.push(ResourceLogs {
                    resource: Some(Resource::default()),
                    scope_logs: vec![ScopeLogs {
                        log_records: records,
                        ..ScopeLogs::default()
                    }],
                    ..ResourceLogs::default()
                }),
                Some(only) => only.scope_logs[0].log_records.extend(records),
            }
            continue;
        }
        resource_logs.push(ResourceLogs {
            resource: Some(pod.otlp.clone()),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        });
    }
    GeneratedBatch {
        request: ExportLogsServiceRequest { resource_logs },
        lines,
    }
}

// ---------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------

async fn ingest_bench(args: &Args) -> anyhow::Result<()> {
    let pods = Arc::new(pods());
    let batch_count = args.records.div_ceil(args.batch);
    let end_time = now_nanos();
    println!(
        "\n== ingest: generating {} records in {batch_count} batches of {} ...",
        args.records, args.batch
    );
    let started = Instant::now();
    let batches: Vec<GeneratedBatch> = (0..batch_count)
        .map(|index| generate_batch(args.shape, &pods, index, args.batch, args.records, end_time))
        .collect();
    let raw_bytes: u64 = batches
        .iter()
        .flat_map(|batch| &batch.lines)
        .map(|(_, line)| line.len() as u64 + 1)
        .sum();
    let otlp_bytes: u64 = batches
        .iter()
        .map(|batch| &batch.request)
        .map(|request| prost::Message::encoded_len(request) as u64)
        .sum();
    println!(
        "generated in {:.1}s: raw {:.1} MB ({:.0} B/record as JSON lines), OTLP protobuf {:.1} MB",
        started.elapsed().as_secs_f64(),
        raw_bytes as f64 / MB,
        raw_bytes as f64 / args.records as f64,
        otlp_bytes as f64 / MB
    );
    if let Some((_, line)) = batches.first().and_then(|b| b.lines.first()) {
        println!("sample line: {line}");
    }

    let data_dir = tempfile::Builder::new()
        .prefix("sightline-bench-ingest")
        .tempdir()?;
    let config = support::loopback_collector(data_dir.path())?;
    let commit_interval = config.commit_interval;
    let (grpc_addr, http_addr) = (config.otlp_grpc_addr, config.http_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(sightline_collector::run(config, async move {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(support::connect_grpc(grpc_addr).await?);
    }
    // Encoded before the clock starts (see `support::Preencoded`); `--gzip`
    // still compresses on the client, at each send. The decoded requests
    // stay allocated until the end, so the RSS growth measured below is the
    // collector's alone.
    let per_client =
        support::encode_for_clients(batches.iter().map(|batch| &batch.request), args.clients);
    let rss_before = proc_status_kb("VmRSS");
    reset_peak_rss();

    // Each client sends every `clients`-th batch, one request at a time.
    let retries = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu_seconds();
    let threads_before = thread_cpu_seconds();
    let started = Instant::now();
    let mut senders = Vec::new();
    for (client, requests) in clients.into_iter().zip(per_client) {
        let client = if args.gzip {
            client.send_compressed(CompressionEncoding::Gzip)
        } else {
            client
        };
        senders.push(tokio::spawn(support::send_all(
            client,
            LOGS_EXPORT,
            requests,
            retries.clone(),
            |answer: ExportLogsServiceResponse| {
                let partial = answer.partial_success?;
                (partial.rejected_log_records > 0).then(|| {
                    format!(
                        "{} records: {}",
                        partial.rejected_log_records, partial.error_message
                    )
                })
            },
        )));
    }
    for sender in senders {
        sender.await??;
    }
    let acknowledged = started.elapsed();
    loop {
        let records = metric(http_addr, "sightline_collector_log_records").await?;
        if records as usize >= args.records {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {records} of {} records searchable after 10 minutes",
                args.records
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let searchable = started.elapsed();
    let cpu = process_cpu_seconds() - cpu_before;
    let mut threads = thread_cpu_seconds();
    for (name, seconds) in &mut threads {
        *seconds -= threads_before.get(name).copied().unwrap_or(0.0);
    }
    let peak_rss = proc_status_kb("VmHWM");
    let total_hits = search_total(http_addr).await?;
    let metrics_text = http_get(http_addr, "/metrics").await?;
    let wal_while_running = metric_line(
        &metrics_text,
        "sightline_collector_disk_bytes{store=\"wal\"}",
    );
    let retries = retries.load(Ordering::Relaxed);

    let _ = stop.send(());
    collector.await??;
    let logs_dir = data_dir.path().join("logs");
    let by_kind = disk_by_kind(&logs_dir);
    let by_field = disk_by_field(&logs_dir)?;
    let log_bytes: u64 = by_kind.values().sum();
    let wal_bytes = sightline_store::wal::disk_bytes(&data_dir.path().join("wal"))?;
    let wal_files = std::fs::read_dir(data_dir.path().join("wal"))?.count();
    let reopened = LogStore::open(&logs_dir)?;
    let stored_records = reopened.num_records();
    let partitions = reopened.partition_names();
    let segments = segment_counts(&logs_dir);
    drop(reopened);

    let rate = |elapsed: Duration| {
        (
            raw_bytes as f64 / MB / elapsed.as_secs_f64(),
            args.records as f64 / elapsed.as_secs_f64(),
        )
    };
    let (ack_mbs, ack_rps) = rate(acknowledged);
    let (search_mbs, search_rps) = rate(searchable);
    println!(
        "collector ({} clients, gzip {}): acknowledged in {:.2}s: {ack_mbs:.1} MB/s, {ack_rps:.0} records/s",
        args.clients,
        if args.gzip { "on" } else { "off" },
        acknowledged.as_secs_f64()
    );
    println!(
        "collector: searchable in {:.2}s: {search_mbs:.1} MB/s, {search_rps:.0} records/s (total_hits {total_hits}, RESOURCE_EXHAUSTED retries {retries})",
        searchable.as_secs_f64()
    );
    println!(
        "process CPU from the first request to searchable (collector and the bench's clients, shape {:?}): {cpu:.2} s = {:.1} CPU-s per 1M records",
        args.shape,
        cpu / (args.records as f64 / 1e6)
    );
    let per_million = |seconds: f64| seconds / (args.records as f64 / 1e6);
    println!(
        "CPU-s per 1M records of the long-lived threads: indexer (records to documents) {:.2}, wal-writer {:.2}, tokio-rt-worker (decoding, OTLP to records, the clients) {:.2}",
        per_million(threads.get("indexer").copied().unwrap_or(0.0)),
        per_million(threads.get("wal-writer").copied().unwrap_or(0.0)),
        per_million(threads.get("tokio-rt-worker").copied().unwrap_or(0.0)),
    );
    println!(
        "collector: log store {:.1} MB on disk = {:.3} bytes per raw byte; {stored_records} records in partitions {partitions:?}, segments {segments:?}",
        log_bytes as f64 / MB,
        log_bytes as f64 / raw_bytes as f64
    );
    println!(
        "collector: log store bytes per raw byte by file kind: {}",
        format_kinds(&by_kind, raw_bytes)
    );
    println!(
        "collector: log store's largest parts, bytes per record: {}",
        by_field
            .iter()
            .take(12)
            .map(|((kind, field), bytes)| format!(
                "{kind} {field} {:.1}",
                *bytes as f64 / stored_records.max(1) as f64
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "collector: WAL after final commit: {wal_bytes} bytes in {wal_files} file(s) (while running, at searchable: {wal_while_running:.0} bytes)"
    );
    println!(
        "collector: RSS before sending {:.0} MB (generated batches), peak during ingest (VmHWM) {:.0} MB, difference {:.0} MB",
        rss_before as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        (peak_rss.saturating_sub(rss_before)) as f64 / 1024.0
    );
    if stored_records != args.records as u64 {
        bail!(
            "stored {stored_records} records, sent {}: lost or duplicated records",
            args.records
        );
    }

    // Bare tantivy: the same lines, parsed and indexed with the store's schema.
    drop(data_dir);
    let lines: Vec<(usize, String)> = batches.into_iter().flat_map(|b| b.lines).collect();
    let lines = Arc::new(lines);
    let bare = {
        let (pods, lines) = (pods.clone(), lines.clone());
        tokio::task::spawn_blocking(move || bare_tantivy(&pods, &lines, None)).await??
    };
    let (bare_mbs, bare_rps) = rate(bare.elapsed);
    println!(
        "bare tantivy (2 threads): {:.2}s: {bare_mbs:.1} MB/s, {bare_rps:.0} records/s; {:.3} bytes per raw byte",
        bare.elapsed.as_secs_f64(),
        bare.disk_bytes as f64 / raw_bytes as f64
    );
    println!(
        "bare tantivy: bytes per raw byte by file kind: {}",
        format_kinds(&bare.by_kind, raw_bytes)
    );
    println!(
        "ratio collector/bare: searchable {:.2}, acknowledged {:.2}",
        search_mbs / bare_mbs,
        ack_mbs / bare_mbs
    );
    // The same index run as a live store must run it: a commit every
    // commit interval (searchable within it) and tantivy's default merge
    // policy merging the small segments meanwhile. The time is to the last
    // commit, as the collector's is to the last record searchable.
    let live =
        tokio::task::spawn_blocking(move || bare_tantivy(&pods, &lines, Some(commit_interval)))
            .await??;
    let (live_mbs, live_rps) = rate(live.elapsed);
    println!(
        "bare tantivy committing every {:?} (2 threads, default merge policy): {:.2}s: {live_mbs:.1} MB/s, {live_rps:.0} records/s; {} commits; {:.3} bytes per raw byte",
        commit_interval,
        live.elapsed.as_secs_f64(),
        live.commits,
        live.disk_bytes as f64 / raw_bytes as f64
    );
    println!(
        "ratio collector/bare committing every {:?}: searchable {:.2}",
        commit_interval,
        search_mbs / live_mbs
    );
    Ok(())
}

/// The OTLP logs service's export method.
const LOGS_EXPORT: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

fn metric_line(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    Ok(metric_line(&http_get(addr, "/metrics").await?, name))
}

async fn search_total(addr: SocketAddr) -> anyhow::Result<u64> {
    let body = http_get(addr, "/api/logs?limit=1").await?;
    let value: Value = serde_json::from_str(&body).context("search answer is not JSON")?;
    value["total_hits"]
        .as_u64()
        .context("search answer without total_hits")
}

struct BareResult {
    elapsed: Duration,
    commits: usize,
    disk_bytes: u64,
    by_kind: BTreeMap<String, u64>,
}

/// The store's schema, fields looked up by name; the bare run indexes
/// through tantivy directly, never through the store's code.
struct BareFields {
    timestamp: Field,
    seq: Field,
    severity: Field,
    severity_number: Field,
    service: Field,
    body: Field,
    attributes: Field,
    resource: Field,
    trace_id: Field,
    span_id: Field,
    request_id: Field,
    stream: Field,
    source: Field,
}

fn bare_schema() -> (Schema, BareFields) {
    let schema = sightline_store::log_index_schema();
    let field = |name: &str| {
        schema
            .get_field(name)
            .expect("the store's schema has this field")
    };
    let fields = BareFields {
        timestamp: field("timestamp"),
        seq: field("seq"),
        severity: field("severity"),
        severity_number: field("severity_number"),
        service: field("service"),
        body: field("body"),
        attributes: field("attributes"),
        resource: field("resource"),
        trace_id: field("trace_id"),
        span_id: field("span_id"),
        request_id: field("request_id"),
        stream: field("stream"),
        source: field("source"),
    };
    (schema, fields)
}

fn to_owned_object(map: Map<String, Value>) -> BTreeMap<String, tantivy::schema::OwnedValue> {
    map.into_iter()
        .map(|(key, value)| (key, value.into()))
        .collect()
}

/// A raw line taken apart as the bare tantivy indexes take it.
struct ParsedLine {
    nanos: i64,
    /// Upper case, as the store keeps it.
    severity: String,
    message: String,
    /// As written, in hex.
    trace_id: String,
    span_id: String,
    /// The line's other fields, and `log.iostream` as the agent adds it.
    fields: Map<String, Value>,
}

fn parse_line(line: &str) -> anyhow::Result<ParsedLine> {
    let mut fields: Map<String, Value> = serde_json::from_str(line)?;
    let mut text = |key: &str| match fields.remove(key) {
        Some(Value::String(text)) => text,
        _ => String::new(),
    };
    let ts = text("ts");
    let severity = text("level").to_ascii_uppercase();
    let message = text("msg");
    let trace_id = text("trace_id");
    let span_id = text("span_id");
    let nanos = time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)?
        .unix_timestamp_nanos() as i64;
    fields.insert("log.iostream".into(), "stdout".into());
    Ok(ParsedLine {
        nanos,
        severity,
        message,
        trace_id,
        span_id,
        fields,
    })
}

/// Parses each raw line and indexes it: two indexing threads, one commit at
/// the end, or also one whenever `commit_every` has passed since the last.
fn bare_tantivy(
    pods: &[Pod],
    lines: &[(usize, String)],
    commit_every: Option<Duration>,
) -> anyhow::Result<BareResult> {
    let dir = tempfile::Builder::new()
        .prefix("sightline-bench-bare")
        .tempdir()?;
    let (schema, f) = bare_schema();
    let settings = IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor {
            compression_level: Some(3),
        }),
        docstore_blocksize: 64 * 1024,
        ..IndexSettings::default()
    };
    let index = Index::builder()
        .schema(schema)
        .settings(settings)
        .tokenizers(sightline_store::log_index_tokenizers())
        .create_in_dir(dir.path())?;
    let started = Instant::now();
    let mut writer = index.writer_with_num_threads(2, 96 * 1024 * 1024)?;
    let (mut commits, mut last_commit) = (0, Instant::now());
    for (seq, (pod_index, line)) in lines.iter().enumerate() {
        if commit_every.is_some_and(|every| last_commit.elapsed() >= every) {
            writer.commit()?;
            commits += 1;
            last_commit = Instant::now();
        }
        let pod = &pods[*pod_index];
        let parsed = parse_line(line)?;
        let service = SERVICES[pod.service];
        let mut doc = TantivyDocument::default();
        doc.add_i64(f.timestamp, parsed.nanos);
        doc.add_u64(f.seq, seq as u64);
        doc.add_text(f.severity, parsed.severity);
        doc.add_i64(f.severity_number, 9);
        doc.add_text(f.service, service);
        doc.add_text(f.body, parsed.message);
        if let Some(id) = parsed.fields.get("request_id").and_then(|v| v.as_str()) {
            doc.add_text(f.request_id, id);
        }
        doc.add_object(f.attributes, to_owned_object(parsed.fields));
        doc.add_object(f.resource, to_owned_object((*pod.json).clone()));
        doc.add_text(f.trace_id, parsed.trace_id);
        doc.add_text(f.span_id, parsed.span_id);
        let stream = format!(
            "{service}|{}|{}|{}|stdout",
            pod.json["host.name"].as_str().unwrap_or_default(),
            pod.json["k8s.pod.uid"].as_str().unwrap_or_default(),
            service
        );
        doc.add_text(f.stream, stream);
        doc.add_text(f.source, line);
        writer.add_document(doc)?;
    }
    writer.commit()?;
    let elapsed = started.elapsed();
    writer.wait_merging_threads()?;
    Ok(BareResult {
        elapsed,
        commits: commits + 1,
        disk_bytes: sightline_store::dir_size(dir.path()),
        by_kind: disk_by_kind(dir.path()),
    })
}

// ---------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------

#[derive(serde::Serialize, serde::Deserialize)]
struct QueryStoreMeta {
    records: usize,
    /// Timestamp of the newest record, nanoseconds.
    end_time: i64,
}

const QUERY_META: &str = "bench-meta.json";

fn query_bench(args: &Args) -> anyhow::Result<()> {
    let temporary;
    let dir = match &args.query_store {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("sightline-bench-query")
                .tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    let meta = match std::fs::read(dir.join(QUERY_META))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<QueryStoreMeta>(&bytes).ok())
    {
        Some(meta) if meta.records == args.query_records => {
            println!(
                "\n== query: reusing the store of {} records in {}",
                meta.records,
                dir.display()
            );
            meta
        }
        Some(meta) => bail!(
            "{} holds {} records, not {}: remove it or pass another --query-store",
            dir.display(),
            meta.records,
            args.query_records
        ),
        None => build_query_store(&dir, args.query_records)?,
    };
    let store = LogStore::open(&dir)?;
    println!(
        "store: {} records, {:.1} MB on disk, partitions {:?}, segments {:?}",
        store.num_records(),
        store.disk_bytes() as f64 / MB,
        store.partition_names(),
        segment_counts(&dir)
    );
    let end = meta.end_time + 1;
    let mut rng = Rng(now_nanos() as u64);
    let records = meta.records as u64;
    let iterations = args.iterations;

    let lookup = measure(iterations, || {
        find_all_time(
            &store,
            format!("request_id:{}", request_id(rng.below(records))),
        )
    })?;
    report("request_id lookup (all time, limit 100)", &lookup, 50.0);

    // Span ids, which format 5 indexes by a key of their first four hex
    // digits (the candidates' records are read to keep the span asked
    // for): alone, and as the UI asks for a span's logs, with its trace.
    let mut spans = Vec::with_capacity(iterations);
    while spans.len() < iterations {
        let result = store.search(&LogQuery {
            query: format!("request_id:{}", request_id(rng.below(records))),
            limit: 1,
            ..LogQuery::default()
        })?;
        if let Some(hit) = result.hits.first()
            && let (Some(trace), Some(span)) = (&hit.record.trace_id, &hit.record.span_id)
        {
            spans.push((trace.clone(), span.clone()));
        }
    }
    for (name, with_trace) in [
        ("span_id lookup (all time, limit 100)", false),
        (
            "`trace_id:.. AND span_id:..`, a span's logs (all time)",
            true,
        ),
    ] {
        let mut next = spans.iter().cycle();
        let timings = measure(iterations, || {
            let (trace, span) = next.next().context("no spans")?;
            find_all_time(
                &store,
                if with_trace {
                    format!("trace_id:{trace} AND span_id:{span}")
                } else {
                    format!("span_id:{span}")
                },
            )
        })?;
        report(name, &timings, 50.0);
    }
    // A span id pattern without a literal prefix reads every record's
    // stored source in format 5 (the keys cannot narrow it): timed once.
    let (_, span) = spans.first().context("no spans")?;
    let suffix = &span[span.len().saturating_sub(6)..];
    let timings = measure(1, || find_all_time(&store, format!("span_id:*{suffix}")))?;
    report(
        "`span_id:*<last six digits>`, every record's source read (all time)",
        &timings,
        f64::INFINITY,
    );

    for query in ["service:checkout AND severity:ERROR", "service:checkout"] {
        let timings = measure(iterations, || {
            let result = store.search(&LogQuery {
                query: query.into(),
                start: Some(end - NANOS_PER_HOUR),
                end: Some(end),
                limit: 100,
                ..LogQuery::default()
            })?;
            Ok(result.total_hits)
        })?;
        report(
            &format!("`{query}` last hour, newest first, limit 100"),
            &timings,
            50.0,
        );
    }

    let histogram = measure(iterations, || {
        let histogram =
            store.histogram("", end - 24 * NANOS_PER_HOUR, end, 24 * NANOS_PER_HOUR / 60)?;
        Ok(histogram.buckets.iter().map(|b| b.count as usize).sum())
    })?;
    report(
        "24 h volume histogram, 60 buckets by severity",
        &histogram,
        300.0,
    );

    // Pipes (issue 23): tantivy's aggregations over every match.
    let (start, day) = (end - 24 * NANOS_PER_HOUR, end);
    for query in [
        "* | stats count() by service",
        "severity:ERROR | stats count(), avg(duration_ms), p95(duration_ms) by service, http.status",
        "* | stats distinct(user_id) by service",
        "service:checkout | timechart span=10m count() by severity",
    ] {
        let pipeline = sightline_store::pipes::parse(query)?.context("a pipe")?;
        let timings = measure(iterations, || {
            let table = store
                .aggregate(&pipeline, start, day)?
                .finish(&pipeline, start, day)?;
            Ok(table.rows.len())
        })?;
        report(&format!("`{query}` over 24 h"), &timings, 1000.0);
    }
    // The same question as `stats count() by service`, answered by paging
    // through every record of the last hour (each page of 10,000 searches
    // the range again, so all 24 h would take hours at 10M), against the
    // aggregation over the same hour.
    let hour = end - NANOS_PER_HOUR;
    let pipeline =
        sightline_store::pipes::parse("* | stats count() by service")?.context("a pipe")?;
    let timings = measure(iterations, || {
        let table = store
            .aggregate(&pipeline, hour, day)?
            .finish(&pipeline, hour, day)?;
        Ok(table.rows.len())
    })?;
    report(
        "`* | stats count() by service` over the last hour",
        &timings,
        1000.0,
    );
    let paged = measure(1, || {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut after = None;
        loop {
            let page = store.search(&LogQuery {
                query: String::new(),
                start: Some(hour),
                end: Some(day),
                limit: 10_000,
                after,
            })?;
            for hit in &page.hits {
                *counts.entry(hit.record.service.clone()).or_default() += 1;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(counts.len())
    })?;
    report(
        "the same counts by paging every record of the last hour",
        &paged,
        f64::INFINITY,
    );
    Ok(())
}

/// The hits of `query` over all time (newest first, limit 100), an error
/// when there are none: a lookup of an id the store holds.
fn find_all_time(store: &LogStore, query: String) -> anyhow::Result<usize> {
    let result = store.search(&LogQuery {
        query: query.clone(),
        limit: 100,
        ..LogQuery::default()
    })?;
    if result.total_hits == 0 {
        bail!("`{query}` found nothing");
    }
    Ok(result.total_hits)
}

fn build_query_store(dir: &Path, records: usize) -> anyhow::Result<QueryStoreMeta> {
    println!(
        "\n== query: building a store of {records} records over 24 h in {}",
        dir.display()
    );
    let store = LogStore::open(dir)?;
    let pods = pods();
    let end_time = now_nanos();
    let start_time = end_time - 24 * NANOS_PER_HOUR;
    let step = (24 * NANOS_PER_HOUR) as f64 / records as f64;
    let mut rng = Rng(0x9e1);
    let batch_size = 10_000;
    let started = Instant::now();
    let mut position = 0u64;
    for first in (0..records).step_by(batch_size) {
        let mut batch = Vec::with_capacity(batch_size);
        for global in first..(first + batch_size).min(records) {
            // A pod keeps writing for a while, as real streams do.
            let pod = &pods[(global / 50 * 7919) % pods.len()];
            let timestamp = start_time + (global as f64 * step) as i64 + 1;
            let event = event(global as u64, timestamp, pod.service, &mut rng);
            batch.push(store_record(&event, pod));
        }
        store.add(position, &batch)?;
        position += 1;
        if position.is_multiple_of(100) {
            store.commit(position)?;
            println!(
                "  {} records, {:.0} records/s",
                first + batch.len(),
                (first + batch.len()) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    store.commit(position)?;
    let meta = QueryStoreMeta {
        records,
        end_time: start_time + ((records - 1) as f64 * step) as i64 + 1,
    };
    std::fs::write(dir.join(QUERY_META), serde_json::to_vec(&meta)?)?;
    println!(
        "built in {:.0}s ({:.0} records/s through LogStore::add/commit)",
        started.elapsed().as_secs_f64(),
        records as f64 / started.elapsed().as_secs_f64()
    );
    Ok(meta)
}

// ---------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------

/// User and system CPU time of this process so far.
fn process_cpu_seconds() -> f64 {
    support::stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
        .unwrap_or(0.0)
}

/// CPU seconds of the process' live threads, summed by thread name
/// (`merge_thread_0` and `merge_thread_3` are one). Threads that already
/// ended (tantivy starts new indexing threads at each commit) are missing,
/// so only long-lived threads compare across runs: the indexer, the WAL
/// writer, the tokio workers.
fn thread_cpu_seconds() -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '_');
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        *by_name.entry(name.to_string()).or_insert(0.0) +=
            support::stat_cpu_seconds(&stat).unwrap_or(0.0);
    }
    by_name
}

/// A field of `/proc/self/status` in kB (`VmRSS`, `VmHWM`), 0 if unknown.
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Segments per partition directory, from tantivy's `meta.json`.
fn segment_counts(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return counts;
    };
    for entry in entries.flatten() {
        let meta = entry.path().join("meta.json");
        let Ok(text) = std::fs::read_to_string(&meta) else {
            continue;
        };
        let segments = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|meta| meta["segments"].as_array().map(Vec::len))
            .unwrap_or(0);
        counts.insert(entry.file_name().to_string_lossy().into_owned(), segments);
    }
    counts
}

/// Bytes under `dir` by file extension (tantivy: `store`, `idx`, `pos`,
/// `term`, `fast`, ...). Segment files a directory's `meta.json` does not
/// list are left out: the output of a merge that shutdown cut short, which
/// tantivy deletes at the next commit.
fn disk_by_kind(dir: &Path) -> BTreeMap<String, u64> {
    fn live_segments(dir: &Path) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(dir.join("meta.json")).ok()?;
        let meta: Value = serde_json::from_str(&text).ok()?;
        Some(
            meta["segments"]
                .as_array()?
                .iter()
                .filter_map(|segment| segment["segment_id"].as_str())
                .map(|id| id.replace('-', ""))
                .collect(),
        )
    }
    fn walk(dir: &Path, kinds: &mut BTreeMap<String, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let live = live_segments(dir);
        for entry in entries.flatten() {
            let path = entry.path();
            let stem = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned());
            let orphan = match (&live, &stem) {
                (Some(live), Some(stem)) if stem.len() == 32 => !live.contains(stem),
                _ => false,
            };
            if path.is_dir() {
                walk(&path, kinds);
            } else if !orphan && let Ok(meta) = entry.metadata() {
                let kind = path
                    .extension()
                    .map_or_else(|| "other".into(), |e| e.to_string_lossy().into_owned());
                *kinds.entry(kind).or_default() += meta.len();
            }
        }
    }
    let mut kinds = BTreeMap::new();
    walk(dir, &mut kinds);
    kinds
}

/// What each part of each field of the tantivy indexes under `dir` takes
/// (tantivy's space usage: the term dictionary, postings, positions, fast
/// columns by JSON path, field norms; the docstore as one), largest first.
fn disk_by_field(dir: &Path) -> anyhow::Result<Vec<((String, String), u64)>> {
    let mut parts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if !entry.path().join("meta.json").exists() {
            continue;
        }
        let index = tantivy::Index::open_in_dir(entry.path())?;
        let usage = index.reader()?.searcher().space_usage()?;
        for segment in usage.segments() {
            for (kind, fields) in [
                ("term", segment.termdict()),
                ("idx", segment.postings()),
                ("pos", segment.positions()),
                ("fast", segment.fast_fields()),
                ("fieldnorm", segment.fieldnorms()),
            ] {
                for field in fields.fields() {
                    *parts
                        .entry((kind.to_string(), field.field_name().to_string()))
                        .or_default() += field.total().get_bytes();
                }
            }
            *parts
                .entry(("store".to_string(), "source".to_string()))
                .or_default() += segment.store().total().get_bytes();
        }
    }
    let mut parts: Vec<_> = parts.into_iter().collect();
    parts.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    Ok(parts)
}

fn format_kinds(kinds: &BTreeMap<String, u64>, raw_bytes: u64) -> String {
    kinds
        .iter()
        .filter(|(_, bytes)| **bytes * 1000 >= raw_bytes)
        .map(|(kind, bytes)| format!("{kind} {:.3}", *bytes as f64 / raw_bytes as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Schema variants
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    attr_positions: bool,
    attr_fast: bool,
    resource_indexed: bool,
    request_id_in_attrs: bool,
    resource_in_source: bool,
    zstd_level: i32,
    block: usize,
}

fn schema_variants(args: &Args) -> anyhow::Result<()> {
    use tantivy::schema::{
        FAST, INDEXED, IndexRecordOption, JsonObjectOptions, STORED, STRING, TextFieldIndexing,
        TextOptions,
    };
    let pods = pods();
    let end_time = now_nanos();
    let lines: Vec<(usize, String)> = (0..args.records.div_ceil(args.batch))
        .flat_map(|index| {
            generate_batch(
                Shape::Agent,
                &pods,
                index,
                args.batch,
                args.records,
                end_time,
            )
            .lines
        })
        .collect();
    let raw: u64 = lines.iter().map(|(_, l)| l.len() as u64 + 1).sum();
    let v2 = Variant {
        name: "v2 (store today)",
        attr_positions: true,
        attr_fast: true,
        resource_indexed: true,
        request_id_in_attrs: true,
        resource_in_source: true,
        zstd_level: 3,
        block: 64 * 1024,
    };
    let variants = [
        v2,
        Variant {
            name: "no resource in source",
            resource_in_source: false,
            ..v2
        },
        Variant {
            name: "no attr fast",
            attr_fast: false,
            ..v2
        },
        Variant {
            name: "request_id not in attrs",
            request_id_in_attrs: false,
            ..v2
        },
        Variant {
            name: "resource not indexed",
            resource_indexed: false,
            ..v2
        },
        Variant {
            name: "attr without positions",
            attr_positions: false,
            ..v2
        },
        Variant {
            name: "lean (all four above but positions)",
            resource_in_source: false,
            attr_fast: false,
            request_id_in_attrs: false,
            resource_indexed: false,
            ..v2
        },
        Variant {
            name: "lean + zstd 9, 256K",
            resource_in_source: false,
            attr_fast: false,
            request_id_in_attrs: false,
            resource_indexed: false,
            zstd_level: 9,
            block: 256 * 1024,
            ..v2
        },
    ];
    println!("{} records, raw {:.1} MB", lines.len(), raw as f64 / MB);
    for variant in variants {
        let mut builder = Schema::builder();
        let words = "words_255";
        let mut json = JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(words)
                    .set_index_option(if variant.attr_positions {
                        IndexRecordOption::WithFreqsAndPositions
                    } else {
                        IndexRecordOption::WithFreqs
                    }),
            )
            .set_expand_dots_enabled();
        if variant.attr_fast {
            json = json.set_fast("raw");
        }
        let resource_options = JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            )
            .set_expand_dots_enabled();
        let timestamp = builder.add_i64_field("timestamp", INDEXED | FAST);
        let seq = builder.add_u64_field("seq", FAST);
        let severity = builder.add_text_field("severity", STRING | FAST);
        let severity_number = builder.add_i64_field("severity_number", INDEXED);
        let service = builder.add_text_field("service", STRING);
        let body = builder.add_text_field(
            "body",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(words)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            ),
        );
        let attributes = builder.add_json_field("attributes", json);
        let resource = builder.add_json_field("resource", resource_options);
        let trace_id = builder.add_text_field("trace_id", STRING);
        let span_id = builder.add_text_field("span_id", STRING);
        let request_id = builder.add_text_field("request_id", STRING);
        let stream = builder.add_text_field("stream", STRING);
        let source = builder.add_text_field("source", STORED);
        let dir = tempfile::Builder::new()
            .prefix("sightline-bench-variant")
            .tempdir()?;
        let index = Index::builder()
            .schema(builder.build())
            .settings(IndexSettings {
                docstore_compression: Compressor::Zstd(ZstdCompressor {
                    compression_level: Some(variant.zstd_level),
                }),
                docstore_blocksize: variant.block,
                ..IndexSettings::default()
            })
            .tokenizers(sightline_store::log_index_tokenizers())
            .create_in_dir(dir.path())?;
        let started = Instant::now();
        let writer = index.writer_with_num_threads(2, 96 * 1024 * 1024)?;
        for (n, (pod_index, line)) in lines.iter().enumerate() {
            let pod = &pods[*pod_index];
            let ParsedLine {
                nanos,
                severity: level,
                message,
                trace_id: tid,
                span_id: sid,
                mut fields,
            } = parse_line(line)?;
            let svc = SERVICES[pod.service];
            let mut doc = TantivyDocument::default();
            doc.add_i64(timestamp, nanos);
            doc.add_u64(seq, n as u64);
            doc.add_text(severity, level);
            doc.add_i64(severity_number, 9);
            doc.add_text(service, svc);
            doc.add_text(body, message);
            if let Some(id) = fields.get("request_id").and_then(|v| v.as_str()) {
                doc.add_text(request_id, id);
            }
            let mut source_text = String::with_capacity(line.len() + 400);
            if variant.resource_in_source {
                source_text.push_str(&serde_json::to_string(&pod.json)?);
            }
            source_text.push_str(line);
            if !variant.request_id_in_attrs {
                fields.remove("request_id");
            }
            doc.add_object(attributes, to_owned_object(fields));
            if variant.resource_indexed {
                doc.add_object(resource, to_owned_object((*pod.json).clone()));
            }
            doc.add_text(trace_id, tid);
            doc.add_text(span_id, sid);
            doc.add_text(stream, format!("{svc}|{}|stdout", pod.json["k8s.pod.uid"]));
            doc.add_text(source, source_text);
            writer.add_document(doc)?;
        }
        finish_variant(variant.name, writer, started, dir.path(), raw)?;
    }
    quickwit_otel_logs(&pods, &lines, raw)
}

/// The same lines indexed as Quickwit's `otel-logs-v0_7` index maps OTLP
/// logs (its documented doc mapping, emulated in bare tantivy): the time a
/// fast column only (milliseconds); service and severity raw and fast;
/// the message in a JSON `body` split into words without positions;
/// attributes and resource attributes as raw JSON with fast columns; trace
/// and span ids as bytes; every field stored (no `_source`), the docstore
/// zstd level 8 in 1 MB blocks (Quickwit's indexing defaults). The disk a
/// peer's schema takes for the same records on this machine.
fn quickwit_otel_logs(pods: &[Pod], lines: &[(usize, String)], raw: u64) -> anyhow::Result<()> {
    use tantivy::schema::{
        BytesOptions, FAST, INDEXED, IndexRecordOption, JsonObjectOptions, NumericOptions, STORED,
        STRING, TextFieldIndexing,
    };
    let mut builder = Schema::builder();
    let timestamp = builder.add_i64_field("timestamp_nanos", NumericOptions::default().set_fast());
    let observed = builder.add_i64_field("observed_timestamp_nanos", INDEXED | STORED);
    let service = builder.add_text_field("service_name", STRING | FAST | STORED);
    let severity_text = builder.add_text_field("severity_text", STRING | FAST | STORED);
    let severity_number = builder.add_u64_field("severity_number", INDEXED | FAST | STORED);
    let body = builder.add_json_field(
        "body",
        JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("words_255")
                    .set_index_option(IndexRecordOption::Basic),
            )
            .set_stored(),
    );
    let raw_json = || {
        JsonObjectOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("raw")
                    .set_index_option(IndexRecordOption::Basic),
            )
            .set_fast("raw")
            .set_stored()
            .set_expand_dots_enabled()
    };
    let attributes = builder.add_json_field("attributes", raw_json());
    let resource = builder.add_json_field("resource_attributes", raw_json());
    let id = || BytesOptions::default().set_indexed().set_stored();
    let trace_id = builder.add_bytes_field("trace_id", id());
    let span_id = builder.add_bytes_field("span_id", id());
    let dir = tempfile::Builder::new()
        .prefix("sightline-bench-quickwit")
        .tempdir()?;
    let index = Index::builder()
        .schema(builder.build())
        .settings(IndexSettings {
            docstore_compression: Compressor::Zstd(ZstdCompressor {
                compression_level: Some(8),
            }),
            docstore_blocksize: 1_000_000,
            ..IndexSettings::default()
        })
        .tokenizers(sightline_store::log_index_tokenizers())
        .create_in_dir(dir.path())?;
    let started = Instant::now();
    let writer = index.writer_with_num_threads(2, 96 * 1024 * 1024)?;
    for (pod_index, line) in lines {
        let pod = &pods[*pod_index];
        let parsed = parse_line(line)?;
        let nanos = parsed.nanos;
        let mut doc = TantivyDocument::default();
        doc.add_i64(timestamp, nanos / 1_000_000);
        doc.add_i64(observed, nanos + 2_000_000);
        doc.add_text(service, SERVICES[pod.service]);
        doc.add_text(severity_text, parsed.severity);
        doc.add_u64(severity_number, 9);
        let mut message_object = Map::new();
        message_object.insert("message".into(), parsed.message.into());
        doc.add_object(body, to_owned_object(message_object));
        doc.add_object(attributes, to_owned_object(parsed.fields));
        doc.add_object(resource, to_owned_object((*pod.json).clone()));
        doc.add_bytes(trace_id, &hex::decode(parsed.trace_id)?);
        doc.add_bytes(span_id, &hex::decode(parsed.span_id)?);
        writer.add_document(doc)?;
    }
    finish_variant(
        "Quickwit's otel-logs-v0_7 mapping",
        writer,
        started,
        dir.path(),
        raw,
    )
}

/// Commits a schema variant's index, waits for its merges and prints its
/// speed (indexing started at `started`) and disk per raw byte.
fn finish_variant(
    name: &str,
    mut writer: tantivy::IndexWriter,
    started: Instant,
    dir: &Path,
    raw: u64,
) -> anyhow::Result<()> {
    writer.commit()?;
    let elapsed = started.elapsed();
    writer.wait_merging_threads()?;
    let disk = sightline_store::dir_size(dir);
    println!(
        "{name:<38} {:>6.1} MB/s  disk/raw {:.3}  [{}]",
        raw as f64 / MB / elapsed.as_secs_f64(),
        disk as f64 / raw as f64,
        format_kinds(&disk_by_kind(dir), raw)
    );
    Ok(())
}
