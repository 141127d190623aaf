//! Whole-path benchmark of the agent: discover, read, CRI decode, JSON
//! parse, enrich, redact, OTLP encode, compress and send to a collector
//! that acknowledges, until every record is acknowledged.
//!
//! ```text
//! cargo run --release -p sightline-agent --bin agent-bench -- [--lines N] [--files F] [--compression zstd|gzip|none] [--pods P]
//! ```
//!
//! The collector runs in a child process (this binary with `collect`), so
//! the CPU time and peak RSS reported are the agent's alone. In the same
//! run the files are first read once with a plain 64 KiB read loop that
//! only counts newlines: the floor any shipper pays.
//!
//! `--pods P` puts the lines in one file per pod (P files) and runs the
//! agent twice on them: without pod metadata, then with its watch of the
//! node's pods, served by the child in the Kubernetes API's shapes (pods
//! of about 4 KB each, as `kubectl get pod -o json` shows them, owned by
//! ReplicaSets of Deployments), and reports both runs and the requests the
//! API server saw.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use sightline_agent::Config;
use sightline_agent::config::Compression;
use tonic::codec::CompressionEncoding;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("collect") {
        return collect();
    }
    let mut lines: u64 = 1_000_000;
    let mut files: u64 = 8;
    let mut compression = Compression::Zstd;
    let mut pods: u64 = 0;
    let mut only: Option<bool> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = iter.next().context("flag without value")?;
        match arg.as_str() {
            "--lines" => lines = value.parse()?,
            "--files" => files = value.parse()?,
            "--pods" => pods = value.parse()?,
            "--metadata" => only = Some(value == "on"),
            "--compression" => {
                compression = match value.as_str() {
                    "gzip" => Compression::Gzip,
                    "zstd" => Compression::Zstd,
                    "none" => Compression::None,
                    other => bail!("unknown compression {other}"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if pods > 0 {
        return match only {
            Some(metadata) => bench(lines, pods, compression, Some(metadata)),
            // Each run in a process of its own, so neither starts with
            // what the other left in the allocator.
            None => {
                for metadata in ["off", "on"] {
                    let status = Command::new(std::env::current_exe()?)
                        .args(&args)
                        .args(["--metadata", metadata])
                        .status()?;
                    anyhow::ensure!(status.success(), "the run with metadata {metadata} failed");
                }
                Ok(())
            }
        };
    }
    bench(lines, files, compression, None)
}

/// One realistic ~300 byte JSON log line in CRI framing.
fn line(seq: u64, out: &mut Vec<u8>) {
    let paths = [
        "/api/v1/orders",
        "/api/v1/cart",
        "/api/v1/payments",
        "/healthz",
    ];
    let levels = ["info", "info", "info", "warn", "error", "debug"];
    let _ = writeln!(
        out,
        "2026-11-21T05:48:{:02}.{:09}Z stdout F {{\"ts\":\"2026-11-21T05:48:{:02}.{:06}Z\",\"level\":\"{}\",\"msg\":\"request handled\",\"service\":\"order\",\"method\":\"POST\",\"path\":\"{}/{}\",\"status\":{},\"duration_ms\":{}.{},\"request_id\":\"req-{:012x}\",\"trace_id\":\"{:032x}\",\"span_id\":\"{:016x}\",\"user_id\":{}}}",
        seq % 60,
        seq % 1_000_000_000,
        seq % 60,
        seq % 1_000_000,
        levels[(seq % 6) as usize],
        paths[(seq % 4) as usize],
        seq % 9973,
        if seq.is_multiple_of(17) { 500 } else { 200 },
        seq % 250,
        seq % 10,
        seq.wrapping_mul(2_654_435_761),
        (u128::from(seq) << 64) | u128::from(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
        seq.wrapping_mul(0x9e37_79b9) | 1,
        seq % 100_000,
    );
}

fn generate(root: &Path, lines: u64, files: u64) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    let mut paths = Vec::new();
    let mut total_bytes = 0;
    let per_file = lines / files;
    let mut buffer = Vec::with_capacity(512);
    for index in 0..files {
        let dir = root.join(format!("pods/shop_order-{index}_uid-{index}/order"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("0.log");
        let mut writer = BufWriter::new(std::fs::File::create(&path)?);
        let count = if index == files - 1 {
            lines - per_file * (files - 1)
        } else {
            per_file
        };
        for seq in 0..count {
            buffer.clear();
            line(index * per_file + seq, &mut buffer);
            total_bytes += buffer.len() as u64;
            writer.write_all(&buffer)?;
        }
        writer.flush()?;
        paths.push(path);
    }
    Ok((paths, total_bytes))
}

/// CPU seconds (user + system) of this process, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
    // Linux reports them in USER_HZ, which is 100 on every mainstream build.
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix(key)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn read_floor(paths: &[PathBuf]) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut newlines = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    for path in paths {
        let mut file = std::fs::File::open(path)?;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            newlines += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
        }
    }
    Ok((started.elapsed(), newlines))
}

/// One run; `metadata`: with `--pods`, whether the agent watches them.
fn bench(
    lines: u64,
    files: u64,
    compression: Compression,
    metadata: Option<bool>,
) -> anyhow::Result<()> {
    let kube = metadata.is_some();
    let root = TempDir::new()?;
    eprintln!("generating {lines} lines in {files} files");
    let (paths, total_bytes) = generate(root.path(), lines, files)?;

    // Collector (and, with pods, the Kubernetes API) in a child process.
    let mut child = Command::new(std::env::current_exe()?);
    child.arg("collect");
    if kube {
        child.arg(files.to_string());
    }
    let mut collector = child
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to start the collector child")?;
    let mut collector_out = BufReader::new(collector.stdout.take().context("no stdout")?);
    let mut port_line = String::new();
    collector_out.read_line(&mut port_line)?;
    let mut ports = port_line
        .trim()
        .strip_prefix("port ")
        .context("no port")?
        .split(' ');
    let port: u16 = ports.next().context("no port")?.parse()?;
    let api_port: Option<u16> = ports.next().map(str::parse).transpose()?;

    // Read twice: the first warms the page cache for both runs alike.
    read_floor(&paths)?;
    let (floor, counted) = read_floor(&paths)?;
    anyhow::ensure!(counted == lines, "floor counted {counted} lines");

    let mb = total_bytes as f64 / 1e6;
    println!(
        "lines                 {lines} in {files} files, {:.1} MB, {:.0} B/line avg",
        mb,
        total_bytes as f64 / lines as f64
    );
    println!("compression           {compression:?}");
    let api = if metadata == Some(true) {
        api_port
    } else {
        None
    };
    {
        let index = 0;
        let mut config = Config {
            include: vec![format!("{}/pods/*/*/*.log", root.path().display())],
            collector: format!("http://127.0.0.1:{port}"),
            compression,
            data_dir: root.path().join(format!("data-{index}")),
            http_addr: "127.0.0.1:0".parse()?,
            host_name: "bench-node".to_owned(),
            ..Config::default()
        };
        config.kubernetes.enabled = Some(api.is_some());
        if let Some(api) = api {
            config.kubernetes.api_server = Some(format!("http://127.0.0.1:{api}"));
            config.kubernetes.node_name = Some("bench-node".to_owned());
        }
        let run = run_agent(config, lines)?;
        if kube {
            println!(
                "--- {}",
                if api.is_some() {
                    "with pod metadata (one watch of the node's pods)"
                } else {
                    "without pod metadata"
                }
            );
        }
        let seconds = run.elapsed.as_secs_f64();
        println!("wall                  {seconds:.2} s");
        println!(
            "throughput            {:.0} lines/s, {:.1} MB/s",
            lines as f64 / seconds,
            mb / seconds
        );
        println!(
            "cpu                   {:.2} s ({:.2} s per 1M lines, {:.0} lines per cpu-second)",
            run.cpu,
            run.cpu / (lines as f64 / 1e6),
            lines as f64 / run.cpu.max(0.01)
        );
        println!(
            "peak rss (agent run)  {:.1} MiB (process before the run: {:.1} MiB)",
            run.peak_rss_kib as f64 / 1024.0,
            run.rss_before_kib as f64 / 1024.0
        );
    }
    drop(collector.stdin.take());
    let mut received = String::new();
    while collector_out.read_line(&mut received)? > 0 {}
    collector.wait()?;
    print!("collector             {received}");
    println!(
        "read-only floor       {:.3} s ({:.0} lines/s, {:.0} MB/s)",
        floor.as_secs_f64(),
        lines as f64 / floor.as_secs_f64(),
        mb / floor.as_secs_f64()
    );
    Ok(())
}

/// What one agent run cost.
struct Run {
    elapsed: Duration,
    cpu: f64,
    peak_rss_kib: u64,
    rss_before_kib: u64,
}

/// Runs an agent with `config` until `lines` records are acknowledged.
fn run_agent(config: Config, lines: u64) -> anyhow::Result<Run> {
    // Reset the peak RSS so it measures this agent run only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before_kib = status_kib("VmHWM:");
    let runtime = sightline_agent::runtime()?;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let elapsed = runtime.block_on(async move {
        let agent = sightline_agent::start(config).await?;
        let metrics = agent.metrics();
        while metrics.records_sent() < lines {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        agent.shutdown().await?;
        anyhow::Ok(elapsed)
    })?;
    drop(runtime);
    Ok(Run {
        elapsed,
        cpu: cpu_seconds() - cpu_before,
        peak_rss_kib: status_kib("VmHWM:"),
        rss_before_kib,
    })
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The collector child: acknowledges every export, counts records, prints
/// its port, and its count when stdin closes. With a pod count as its
/// argument it also serves those pods in the Kubernetes API's shapes and
/// prints the requests it answered.
fn collect() -> anyhow::Result<()> {
    let pods: Option<u64> = std::env::args().nth(2).map(|n| n.parse()).transpose()?;
    #[derive(Clone, Default)]
    struct Counter(Arc<AtomicU64>);

    #[tonic::async_trait]
    impl LogsService for Counter {
        async fn export(
            &self,
            request: tonic::Request<ExportLogsServiceRequest>,
        ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
            let records: usize = request
                .get_ref()
                .resource_logs
                .iter()
                .flat_map(|resource| &resource.scope_logs)
                .map(|scope| scope.log_records.len())
                .sum();
            self.0.fetch_add(records as u64, Ordering::Relaxed);
            Ok(tonic::Response::new(ExportLogsServiceResponse {
                partial_success: None,
            }))
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = match pods {
            Some(pods) => Some(kube_api::serve(pods).await?),
            None => None,
        };
        match &api {
            Some((port, _)) => println!("port {} {port}", listener.local_addr()?.port()),
            None => println!("port {}", listener.local_addr()?.port()),
        }
        std::io::stdout().flush()?;
        let counter = Counter::default();
        let count = Arc::clone(&counter.0);
        let service = LogsServiceServer::new(counter)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(64 * 1024 * 1024);
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        });
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stdin_closed.await;
                },
            )
            .await?;
        println!("received {} records", count.load(Ordering::Relaxed));
        if let Some((_, stats)) = api {
            println!(
                "kubernetes api        {} requests: {} pod lists ({} bytes each), {} pod watches, {} GETs of a ReplicaSet",
                stats.lists.load(Ordering::Relaxed)
                    + stats.watches.load(Ordering::Relaxed)
                    + stats.gets.load(Ordering::Relaxed),
                stats.lists.load(Ordering::Relaxed),
                stats.list_bytes.load(Ordering::Relaxed),
                stats.watches.load(Ordering::Relaxed),
                stats.gets.load(Ordering::Relaxed),
            );
        }
        anyhow::Ok(())
    })
}

/// The pods of the bench's node, as an API server serves them.
mod kube_api {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::extract::{Path, Query, State};
    use axum::response::IntoResponse;
    use serde_json::{Value, json};

    /// Requests answered.
    #[derive(Default)]
    pub(crate) struct Stats {
        pub(crate) lists: AtomicU64,
        pub(crate) list_bytes: AtomicU64,
        pub(crate) watches: AtomicU64,
        pub(crate) gets: AtomicU64,
    }

    struct Api {
        list: String,
        stats: Arc<Stats>,
    }

    /// Pod `index` (`order-<index>`, uid `uid-<index>`, the files' names):
    /// labels, annotations (kubectl's last applied configuration among
    /// them), two containers with environment, probes and resources, and
    /// its status, about 4 KB of JSON as real pods are.
    fn pod(index: u64) -> Value {
        let env: Vec<Value> = (0..8)
            .map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}-{index}")}))
            .collect();
        let container = |name: &str| {
            json!({
                "name": name, "image": format!("registry.example.com/shop/{name}:1.42.{index}"),
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": env,
                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
                "livenessProbe": {"httpGet": {"path": "/health/live", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10},
                "readinessProbe": {"httpGet": {"path": "/health/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            })
        };
        let statuses: Vec<Value> = ["order", "proxy"]
            .iter()
            .map(|name| {
                json!({
                    "name": name, "ready": true, "restartCount": index % 3, "image": name, "imageID": "sha256:0",
                    "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}, "lastState": {}
                })
            })
            .collect();
        json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "name": format!("order-{index}"), "namespace": "shop", "uid": format!("uid-{index}"),
                "resourceVersion": "1", "creationTimestamp": "2026-12-01T00:00:00Z",
                "generateName": "order-7d9c8b6f5d-",
                "labels": {"app.kubernetes.io/name": "order", "app.kubernetes.io/part-of": "shop",
                    "app.kubernetes.io/version": "1.42", "team": "checkout", "tier": "backend",
                    "environment": "production", "pod-template-hash": "7d9c8b6f5d"},
                "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                    "kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z",
                    "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(1500)
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("order-{}-7d9c8b6f5d", index % 10), "uid": "rs-uid",
                    "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "nodeName": "bench-node", "serviceAccountName": "default", "restartPolicy": "Always",
                "containers": [container("order"), container("proxy")]
            },
            "status": {
                "phase": "Running", "podIP": format!("10.1.{}.{}", index / 250, index % 250 + 1),
                "hostIP": "192.168.1.5", "qosClass": "Burstable",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"},
                    {"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"}],
                "containerStatuses": statuses
            }
        })
    }

    /// Serves `pods` pods; returns the port and the request counters.
    pub(crate) async fn serve(pods: u64) -> anyhow::Result<(u16, Arc<Stats>)> {
        let items: Vec<Value> = (0..pods).map(pod).collect();
        let list = json!({"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "100"}, "items": items})
        .to_string();
        let stats = Arc::new(Stats::default());
        let api = Arc::new(Api {
            list,
            stats: Arc::clone(&stats),
        });
        let app = axum::Router::new()
            .route("/api/v1/pods", axum::routing::get(pods_handler))
            .route(
                "/apis/apps/v1/namespaces/{namespace}/replicasets/{name}",
                axum::routing::get(replicaset),
            )
            .with_state(api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((port, stats))
    }

    async fn pods_handler(
        State(api): State<Arc<Api>>,
        Query(query): Query<std::collections::BTreeMap<String, String>>,
    ) -> axum::response::Response {
        if query.contains_key("watch") {
            api.stats.watches.fetch_add(1, Ordering::Relaxed);
            // Open until the server's timeout: nothing changes.
            let (sender, mut receiver) =
                tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1);
            tokio::spawn(async move {
                let _ = sender
                    .send(Ok(format!("{}\n", json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}}}))))
                    .await;
                sender.closed().await;
            });
            let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
            return axum::body::Body::from_stream(stream).into_response();
        }
        api.stats.lists.fetch_add(1, Ordering::Relaxed);
        api.stats
            .list_bytes
            .store(api.list.len() as u64, Ordering::Relaxed);
        ([("content-type", "application/json")], api.list.clone()).into_response()
    }

    async fn replicaset(
        State(api): State<Arc<Api>>,
        Path((namespace, name)): Path<(String, String)>,
    ) -> axum::response::Response {
        api.stats.gets.fetch_add(1, Ordering::Relaxed);
        let deployment = name
            .rsplit_once('-')
            .map_or(name.as_str(), |(rest, _)| rest);
        axum::Json(json!({"kind": "ReplicaSet", "apiVersion": "apps/v1",
            "metadata": {"name": name, "namespace": namespace, "uid": "rs-uid",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                    "uid": "deploy-uid", "controller": true}]}}))
        .into_response()
    }
}
