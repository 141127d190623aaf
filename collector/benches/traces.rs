//! Whole-system benchmark of trace ingest, trace by id and the request story (issue 5).
//!
//! ```text
//! cargo bench -p sightline-collector --bench traces -- [--spans N] [--query-spans N]
//!     [--query-store DIR] [--clients N] [--skip-ingest] [--skip-query]
//! ```
//!
//! **Ingest.** Generates traces of 8 to 12 spans across the demo services
//! (gateway, auth, order, inventory, payment, notification) with HTTP
//! attributes, a `request_id` and about 3 % failed payments, as OTLP
//! `ExportTraceServiceRequest`s of `--traces-per-batch` traces, all in memory
//! before the clock starts. Then starts the real collector in-process
//! ([`sightline_collector::run`], default commit interval) on a temporary
//! directory and free loopback ports, sends every batch from `--clients`
//! concurrent tonic clients (each request encoded before the clock starts,
//! see `support::Preencoded`), and measures the wall time until
//! every batch is acknowledged (in the WAL, fsynced) and until every span is
//! searchable: the last trace of every client is complete through
//! `GET /api/traces/{id}` and the spans are committed (the span store commits
//! in WAL order, so the last positions imply all earlier ones).
//!
//! **Query.** Builds (or reuses, with `--query-store`) a data directory with
//! `--query-spans` spans over 24 hours in `spans/` (through
//! `SpanStore::add`/`commit`) and two log records per trace in `logs/`
//! (through `LogStore::add`/`commit`; one with the trace id, one with only the
//! `request_id`). Reports p50/p99 of `SpanStore::trace` in-process, then
//! starts the collector on that directory and reports p50/p99 of
//! `GET /api/traces/{id}` and `GET /api/requests/{request_id}` over HTTP.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status};
use serde_json::{Map, Value};
use sightline_store::{LogRecord, LogStore, Span, SpanStatus, SpanStore};
use support::{Rng, cpu_model, http_get, http_get_status, measure, mix, now_nanos, report, sorted};

const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;

#[derive(Debug, Clone, Parser)]
#[command(about = "Sightline trace ingest, trace by id and request story benchmark")]
struct Args {
    /// Spans to ingest through the collector (rounded up to whole batches).
    #[arg(long, default_value_t = 1_000_000)]
    spans: usize,
    /// Traces per OTLP export request (about 10 spans each).
    #[arg(long, default_value_t = 100)]
    traces_per_batch: usize,
    /// Concurrent gRPC clients, one connection each.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Spans in the query benchmark's store.
    #[arg(long, default_value_t = 10_000_000)]
    query_spans: usize,
    /// Keep the query data directory here and reuse it on later runs (built if absent).
    #[arg(long)]
    query_store: Option<PathBuf>,
    /// Timed lookups of each kind.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    #[arg(long)]
    skip_ingest: bool,
    #[arg(long)]
    skip_query: bool,
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !args.skip_ingest {
        runtime.block_on(ingest_bench(&args))?;
    }
    if !args.skip_query {
        query_bench(&args, &runtime)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Data generation
// ---------------------------------------------------------------------------

const SERVICES: [&str; 6] = [
    "gateway",
    "auth",
    "order",
    "inventory",
    "payment",
    "notification",
];

/// One span of the request template: (service index, kind, name, parent
/// index, route, offset and duration in microseconds).
struct Step {
    service: usize,
    kind: SpanKind,
    name: &'static str,
    parent: Option<usize>,
    route: &'static str,
    offset_us: i64,
    duration_us: i64,
}

/// A checkout request: the first 8 to 12 steps make one trace.
const STEPS: [Step; 12] = [
    step(
        0,
        SpanKind::Server,
        "POST /api/orders",
        None,
        "/api/orders",
        0,
        48_000,
    ),
    step(
        0,
        SpanKind::Client,
        "POST auth/verify",
        Some(0),
        "/verify",
        500,
        4_000,
    ),
    step(
        1,
        SpanKind::Server,
        "POST /verify",
        Some(1),
        "/verify",
        800,
        3_200,
    ),
    step(
        0,
        SpanKind::Client,
        "POST order/orders",
        Some(0),
        "/orders",
        5_000,
        42_000,
    ),
    step(
        2,
        SpanKind::Server,
        "POST /orders",
        Some(3),
        "/orders",
        5_400,
        41_000,
    ),
    step(
        2,
        SpanKind::Client,
        "POST inventory/reserve",
        Some(4),
        "/reserve",
        6_000,
        9_000,
    ),
    step(
        3,
        SpanKind::Server,
        "POST /reserve",
        Some(5),
        "/reserve",
        6_300,
        8_400,
    ),
    step(
        2,
        SpanKind::Client,
        "POST payment/charge",
        Some(4),
        "/charge",
        16_000,
        25_000,
    ),
    step(
        4,
        SpanKind::Server,
        "POST /charge",
        Some(7),
        "/charge",
        16_400,
        24_000,
    ),
    step(
        2,
        SpanKind::Producer,
        "publish order.created",
        Some(4),
        "",
        42_000,
        1_000,
    ),
    step(
        5,
        SpanKind::Consumer,
        "process order.created",
        Some(9),
        "",
        44_000,
        6_000,
    ),
    step(
        3,
        SpanKind::Internal,
        "SELECT stock",
        Some(6),
        "",
        6_600,
        5_000,
    ),
];

#[allow(clippy::too_many_arguments)]
const fn step(
    service: usize,
    kind: SpanKind,
    name: &'static str,
    parent: Option<usize>,
    route: &'static str,
    offset_us: i64,
    duration_us: i64,
) -> Step {
    Step {
        service,
        kind,
        name,
        parent,
        route,
        offset_us,
        duration_us,
    }
}

fn trace_id(trace: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&mix(trace ^ 0x7ace).to_be_bytes());
    id[8..].copy_from_slice(&mix(trace ^ 0x7ace_0001).to_be_bytes());
    id
}

fn request_id(trace: u64) -> String {
    format!("req-{:016x}", mix(trace ^ 0x5eed))
}

fn span_count(trace: u64) -> usize {
    8 + (mix(trace ^ 0xc0de) % 5) as usize
}

/// One generated span, before it becomes an OTLP span or a store span.
struct GenSpan {
    service: usize,
    kind: SpanKind,
    name: &'static str,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    start: i64,
    end: i64,
    error: bool,
    attributes: Vec<(&'static str, Value)>,
}

fn generate_trace(trace: u64, start: i64) -> Vec<GenSpan> {
    let mut rng = Rng(mix(trace ^ 0x5a11));
    let id = trace_id(trace);
    let failed = rng.below(100) < 3;
    let request = request_id(trace);
    let user = format!("u-{}", rng.below(200_000));
    let span_ids: Vec<[u8; 8]> = (0..STEPS.len()).map(|_| rng.next().to_be_bytes()).collect();
    let jitter = 1 + rng.below(3) as i64;
    STEPS
        .iter()
        .take(span_count(trace))
        .enumerate()
        .map(|(index, step)| {
            // The payment and every span above it on the path fail together.
            let error = failed && matches!(index, 0 | 3 | 4 | 7 | 8);
            let mut attributes = vec![("request_id", Value::from(request.clone()))];
            if !step.route.is_empty() {
                let status = if error { 502 } else { 200 };
                attributes.push(("http.method", "POST".into()));
                attributes.push(("http.route", step.route.into()));
                attributes.push(("http.status_code", status.into()));
            }
            if index == 0 {
                attributes.push(("user_id", user.clone().into()));
            }
            GenSpan {
                service: step.service,
                kind: step.kind,
                name: step.name,
                trace_id: id,
                span_id: span_ids[index],
                parent_span_id: step.parent.map(|parent| span_ids[parent]),
                start: start + step.offset_us * 1_000,
                end: start + (step.offset_us + step.duration_us * jitter) * 1_000,
                error,
                attributes,
            }
        })
        .collect()
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    otlp_kv(key, &Value::from(value))
}

fn otlp_kv(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Number(number) => any_value::Value::IntValue(number.as_i64().unwrap_or_default()),
        other => any_value::Value::StringValue(other.as_str().unwrap_or_default().to_string()),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn resource_json(service: usize) -> Map<String, Value> {
    let mut resource = Map::new();
    resource.insert("service.name".into(), SERVICES[service].into());
    resource.insert("service.version".into(), "1.4.2".into());
    resource.insert("k8s.namespace.name".into(), "shop".into());
    resource.insert(
        "k8s.pod.name".into(),
        format!("{}-7d9f8b6c5-x2k4q", SERVICES[service]).into(),
    );
    resource
}

fn otlp_span(span: &GenSpan) -> OtlpSpan {
    OtlpSpan {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        parent_span_id: span
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        name: span.name.to_string(),
        kind: span.kind as i32,
        start_time_unix_nano: span.start as u64,
        end_time_unix_nano: span.end as u64,
        attributes: span
            .attributes
            .iter()
            .map(|(key, value)| otlp_kv(key, value))
            .collect(),
        status: Some(Status {
            message: if span.error {
                "upstream 502".into()
            } else {
                String::new()
            },
            code: if span.error {
                StatusCode::Error as i32
            } else {
                StatusCode::Unset as i32
            },
        }),
        ..OtlpSpan::default()
    }
}

fn store_span(span: &GenSpan) -> Span {
    let kind = match span.kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        _ => "internal",
    };
    Span {
        trace_id: hex::encode(span.trace_id),
        span_id: hex::encode(span.span_id),
        parent_span_id: span.parent_span_id.map(hex::encode),
        name: span.name.to_string(),
        service: SERVICES[span.service].to_string(),
        kind: kind.to_string(),
        start_time: span.start,
        end_time: span.end,
        status: if span.error {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        },
        status_message: if span.error {
            "upstream 502".into()
        } else {
            String::new()
        },
        attributes: span
            .attributes
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect(),
        resource: std::sync::Arc::new(resource_json(span.service)),
        request_id: span
            .attributes
            .first()
            .and_then(|(_, value)| value.as_str())
            .map(str::to_string),
        ..Span::default()
    }
}

/// Batch `index` holds traces `[index * per_batch, (index + 1) * per_batch)`,
/// started 1 ms apart ending at `end_time`; the same index always gives the
/// same request.
fn generate_batch(
    index: usize,
    per_batch: usize,
    traces: usize,
    end_time: i64,
) -> ExportTraceServiceRequest {
    let mut by_service: Vec<Vec<OtlpSpan>> = SERVICES.iter().map(|_| Vec::new()).collect();
    for trace in index * per_batch..((index + 1) * per_batch).min(traces) {
        let start = end_time - (traces - trace) as i64 * 1_000_000;
        for span in generate_trace(trace as u64, start) {
            by_service[span.service].push(otlp_span(&span));
        }
    }
    let resource_spans = by_service
        .into_iter()
        .enumerate()
        .filter(|(_, spans)| !spans.is_empty())
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: resource_json(service)
                    .iter()
                    .map(|(key, value)| string_kv(key, value.as_str().unwrap_or_default()))
                    .collect(),
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// Traces needed for at least `spans` spans.
fn traces_for(spans: usize) -> usize {
    let mut total = 0;
    let mut traces = 0;
    while total < spans {
        total += span_count(traces as u64);
        traces += 1;
    }
    traces
}

fn spans_in(traces: usize) -> usize {
    (0..traces as u64).map(span_count).sum()
}

// ---------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------

async fn ingest_bench(args: &Args) -> anyhow::Result<()> {
    let per_batch = args.traces_per_batch.max(1);
    let traces = traces_for(args.spans).div_ceil(per_batch) * per_batch;
    let spans = spans_in(traces);
    let batch_count = traces / per_batch;
    let end_time = now_nanos();
    println!(
        "\n== ingest: generating {spans} spans in {traces} traces, {batch_count} requests ..."
    );
    let started = Instant::now();
    let batches: Vec<ExportTraceServiceRequest> = (0..batch_count)
        .map(|index| generate_batch(index, per_batch, traces, end_time))
        .collect();
    let otlp_bytes: usize = batches.iter().map(prost::Message::encoded_len).sum();
    println!(
        "generated in {:.1}s: OTLP protobuf {:.1} MB ({:.0} B/span)",
        started.elapsed().as_secs_f64(),
        otlp_bytes as f64 / 1e6,
        otlp_bytes as f64 / spans as f64
    );

    let data_dir = tempfile::Builder::new()
        .prefix("sightline-bench-traces")
        .tempdir()?;
    let config = support::loopback_collector(data_dir.path())?;
    let (grpc_addr, http_addr) = (config.otlp_grpc_addr, config.http_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(sightline_collector::run(config, async move {
        let _ = stopped.await;
    }));
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(support::connect_grpc(grpc_addr).await?);
    }

    // Each client sends every `clients`-th batch, one request at a time,
    // encoded before the clock starts (see `support::Preencoded`). The
    // decoded requests stay allocated until the end, as before.
    let per_client = support::encode_for_clients(&batches, args.clients);
    // The last trace each client sends: complete once everything is
    // searchable. Client `c`'s `k`-th request is batch `c + k * clients`.
    let last_traces: Vec<usize> = per_client
        .iter()
        .enumerate()
        .filter(|(_, requests)| !requests.is_empty())
        .map(|(client, requests)| {
            let batch = client + (requests.len() - 1) * args.clients;
            ((batch + 1) * per_batch).min(traces) - 1
        })
        .collect();
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut senders = Vec::new();
    for (client, requests) in clients.into_iter().zip(per_client) {
        senders.push(tokio::spawn(support::send_all(
            client,
            TRACES_EXPORT,
            requests,
            retries.clone(),
            |answer: ExportTraceServiceResponse| {
                let partial = answer.partial_success?;
                (partial.rejected_spans > 0).then(|| {
                    format!(
                        "{} spans: {}",
                        partial.rejected_spans, partial.error_message
                    )
                })
            },
        )));
    }
    for sender in senders {
        sender.await??;
    }
    let acknowledged = started.elapsed();
    let acknowledged_spans = metric(
        http_addr,
        "sightline_collector_ingested_total{signal=\"traces\"}",
    )
    .await?;
    for trace in &last_traces {
        let id = hex::encode(trace_id(*trace as u64));
        let expected = span_count(*trace as u64);
        loop {
            // Spans by id, then the trace's summary through trace search.
            let search_path = format!(
                "/api/trace-search?limit=1&tags=request_id%3D{}",
                request_id(*trace as u64)
            );
            if jaeger_span_count(http_addr, &id).await? >= expected
                && trace_search_hits(http_addr, &search_path).await? > 0
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(900) {
                bail!("trace {id} not searchable after 15 minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let searchable = started.elapsed();
    let newest = http_get(http_addr, "/api/trace-search?limit=1").await?;
    let retries = retries.load(Ordering::Relaxed);
    let _ = stop.send(());
    collector.await??;
    let spans_dir = data_dir.path().join("spans");
    let span_bytes = sightline_store::dir_size(&spans_dir);
    let stored = SpanStore::open(&spans_dir)?.num_spans();

    let rate = |elapsed: Duration| spans as f64 / elapsed.as_secs_f64();
    println!(
        "collector ({} clients): acknowledged in {:.2}s: {:.0} spans/s (metric ingested_total{{signal=\"traces\"}} = {acknowledged_spans})",
        args.clients,
        acknowledged.as_secs_f64(),
        rate(acknowledged)
    );
    println!(
        "collector: searchable in {:.2}s: {:.0} spans/s (target >= 50000: {}); RESOURCE_EXHAUSTED retries {retries}",
        searchable.as_secs_f64(),
        rate(searchable),
        if rate(searchable) >= 50_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "collector: span store {:.1} MB on disk ({:.0} B/span), {stored} spans stored; newest trace through /api/trace-search?limit=1: {}",
        span_bytes as f64 / 1e6,
        span_bytes as f64 / spans as f64,
        newest.chars().take(300).collect::<String>()
    );
    if stored != spans as u64 {
        bail!("stored {stored} spans, sent {spans}: lost or duplicated spans");
    }
    Ok(())
}

/// The OTLP trace service's export method.
const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Spans of a trace through the Jaeger API, 0 when it is not found yet.
async fn jaeger_span_count(addr: SocketAddr, trace_id: &str) -> anyhow::Result<usize> {
    let (status, body) = http_get_status(addr, &format!("/api/traces/{trace_id}")).await?;
    if status == 404 {
        return Ok(0);
    }
    if status != 200 {
        bail!("GET /api/traces/{trace_id}: {status} {body}");
    }
    let value: Value = serde_json::from_str(&body).context("trace answer is not JSON")?;
    Ok(value["data"][0]["spans"].as_array().map_or(0, Vec::len))
}

/// Traces a `/api/trace-search` answer lists.
async fn trace_search_hits(addr: SocketAddr, path: &str) -> anyhow::Result<usize> {
    let value: Value =
        serde_json::from_str(&http_get(addr, path).await?).context("search answer is not JSON")?;
    Ok(value["traces"].as_array().map_or(0, Vec::len))
}

async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = http_get(addr, "/metrics").await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

// ---------------------------------------------------------------------------
// Query
// ---------------------------------------------------------------------------

#[derive(serde::Serialize, serde::Deserialize)]
struct QueryStoreMeta {
    spans: usize,
    traces: usize,
    logs: usize,
}

const QUERY_META: &str = "bench-meta.json";

fn query_bench(args: &Args, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let temporary;
    let dir = match &args.query_store {
        Some(dir) => dir.clone(),
        None => {
            temporary = tempfile::Builder::new()
                .prefix("sightline-bench-trace-query")
                .tempdir()?;
            temporary.path().to_path_buf()
        }
    };
    let meta = match std::fs::read(dir.join(QUERY_META))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<QueryStoreMeta>(&bytes).ok())
    {
        Some(meta) if meta.spans >= args.query_spans => {
            println!(
                "\n== query: reusing {} spans in {} traces and {} logs in {}",
                meta.spans,
                meta.traces,
                meta.logs,
                dir.display()
            );
            meta
        }
        Some(meta) => bail!(
            "{} holds {} spans, fewer than {}: remove it or pass another --query-store",
            dir.display(),
            meta.spans,
            args.query_spans
        ),
        None => build_query_store(&dir, args.query_spans)?,
    };
    println!(
        "data dir: spans {:.1} MB, logs {:.1} MB on disk",
        sightline_store::dir_size(&dir.join("spans")) as f64 / 1e6,
        sightline_store::dir_size(&dir.join("logs")) as f64 / 1e6
    );
    let traces = meta.traces as u64;
    let mut rng = Rng(now_nanos() as u64);

    let store = SpanStore::open(&dir.join("spans"))?;
    println!("span store: {} spans", store.num_spans());
    let by_id = measure(args.iterations, || {
        let trace = rng.below(traces);
        let spans = store.trace(&hex::encode(trace_id(trace)))?;
        if spans.len() != span_count(trace) {
            bail!(
                "trace {trace}: {} spans, expected {}",
                spans.len(),
                span_count(trace)
            );
        }
        Ok(spans.len())
    })?;
    report("trace by id, SpanStore::trace in-process", &by_id, 50.0);
    drop(store);

    runtime.block_on(async {
        let config = support::loopback_collector(&dir)?;
        let http_addr = config.http_addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let collector = tokio::spawn(sightline_collector::run(config, async move {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(http_addr, "/health").await.is_err() {
            if Instant::now() > deadline {
                bail!("collector did not start on {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut samples = Vec::new();
        for _ in 0..args.iterations + 10 {
            samples.push(rng.below(traces));
        }
        let mut timings = Vec::new();
        let mut hits = 0;
        for (i, trace) in samples.iter().enumerate() {
            let started = Instant::now();
            let count = jaeger_span_count(http_addr, &hex::encode(trace_id(*trace))).await?;
            if count != span_count(*trace) {
                bail!(
                    "trace {trace}: {count} spans over HTTP, expected {}",
                    span_count(*trace)
                );
            }
            if i >= 10 {
                timings.push(started.elapsed().as_secs_f64() * 1000.0);
                hits += count;
            }
        }
        report(
            "trace by id, GET /api/traces/{id}",
            &sorted(timings, hits),
            50.0,
        );

        let mut timings = Vec::new();
        let mut hits = 0;
        let mut bytes = 0;
        for (i, trace) in samples.iter().enumerate() {
            let path = format!("/api/requests/{}", request_id(*trace));
            let started = Instant::now();
            let body = http_get(http_addr, &path).await?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            let story: Value = serde_json::from_str(&body).context("story is not JSON")?;
            let items = count_items(&story);
            if i == 0 {
                println!(
                    "request story sample ({path}): {} bytes, top-level keys {:?}, counts {:?}",
                    body.len(),
                    story
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>()),
                    items
                );
            }
            if i >= 10 {
                timings.push(elapsed);
                hits += items.values().sum::<usize>();
                bytes += body.len();
            }
        }
        report(
            "request story, GET /api/requests/{request_id}",
            &sorted(timings, hits),
            100.0,
        );
        println!(
            "request story: {:.0} bytes per answer on average",
            bytes as f64 / args.iterations.max(1) as f64
        );
        let _ = stop.send(());
        collector.await??;
        anyhow::Ok(())
    })
}

/// Lengths of the top-level arrays of a JSON answer.
fn count_items(value: &Value) -> BTreeMap<String, usize> {
    value
        .as_object()
        .map(|object| {
            object
                .iter()
                .filter_map(|(key, value)| Some((key.clone(), value.as_array()?.len())))
                .collect()
        })
        .unwrap_or_default()
}

fn build_query_store(dir: &Path, spans: usize) -> anyhow::Result<QueryStoreMeta> {
    let traces = traces_for(spans);
    let spans = spans_in(traces);
    println!(
        "\n== query: building {spans} spans in {traces} traces over 24 h, two logs per trace, in {}",
        dir.display()
    );
    std::fs::create_dir_all(dir)?;
    let span_store = SpanStore::open(&dir.join("spans"))?;
    let log_store = LogStore::open(&dir.join("logs"))?;
    let end_time = now_nanos() - 60_000_000_000;
    let step = (24 * NANOS_PER_HOUR) as f64 / traces as f64;
    let traces_per_batch = 1_000;
    let started = Instant::now();
    let mut position = 0u64;
    let mut logs = 0;
    for first in (0..traces).step_by(traces_per_batch) {
        let mut span_batch = Vec::new();
        let mut log_batch = Vec::new();
        for trace in first..(first + traces_per_batch).min(traces) {
            let start = end_time - ((traces - trace) as f64 * step) as i64;
            let generated = generate_trace(trace as u64, start);
            log_batch.extend(trace_logs(trace as u64, &generated));
            span_batch.extend(generated.iter().map(store_span));
        }
        span_store.add(position, &span_batch)?;
        log_store.add(position, &log_batch)?;
        logs += log_batch.len();
        position += 1;
        if position.is_multiple_of(50) {
            span_store.commit(position)?;
            log_store.commit(position)?;
            let done = spans_in((first + traces_per_batch).min(traces));
            println!(
                "  {done} spans, {:.0} spans/s",
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    span_store.commit(position)?;
    log_store.commit(position)?;
    let meta = QueryStoreMeta {
        spans,
        traces,
        logs,
    };
    std::fs::write(dir.join(QUERY_META), serde_json::to_vec(&meta)?)?;
    println!(
        "built in {:.0}s ({:.0} spans/s with their logs through SpanStore/LogStore add and commit)",
        started.elapsed().as_secs_f64(),
        spans as f64 / started.elapsed().as_secs_f64()
    );
    Ok(meta)
}

/// Two log records of a request: the gateway's access log with the trace
/// context, and the order service's log with only the `request_id`.
fn trace_logs(trace: u64, spans: &[GenSpan]) -> Vec<LogRecord> {
    let request = request_id(trace);
    let failed = spans.first().is_some_and(|span| span.error);
    let record = |span: &GenSpan, body: String, with_trace: bool| {
        let mut attributes = Map::new();
        attributes.insert("request_id".into(), request.clone().into());
        LogRecord {
            timestamp: span.end,
            observed_timestamp: span.end + 2_000_000,
            severity_text: if failed { "ERROR" } else { "INFO" }.into(),
            severity_number: if failed { 17 } else { 9 },
            body,
            service: SERVICES[span.service].to_string(),
            resource: std::sync::Arc::new(resource_json(span.service)),
            request_id: Some(request.clone()),
            attributes,
            trace_id: with_trace.then(|| hex::encode(span.trace_id)),
            span_id: with_trace.then(|| hex::encode(span.span_id)),
        }
    };
    let mut records = Vec::new();
    if let Some(root) = spans.first() {
        let status = if failed { 502 } else { 201 };
        records.push(record(
            root,
            format!(
                "POST /api/orders -> {status} in {}ms",
                (root.end - root.start) / 1_000_000
            ),
            true,
        ));
    }
    if let Some(order) = spans.get(4) {
        records.push(record(
            order,
            format!("order for {request} accepted"),
            false,
        ));
    }
    records
}

// ---------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------
