//! Whole-path benchmark of the agent: discover, read, CRI decode, JSON
//! parse, enrich, redact, OTLP encode, compress and send to a collector
//! that acknowledges, until every record is acknowledged.
//!
//! ```text
//! cargo run --release -p sightline-agent --bin agent-bench -- [--lines N] [--files F] [--compression zstd|gzip|none]
//! ```
//!
//! The collector runs in a child process (this binary with `collect`), so
//! the CPU time and peak RSS reported are the agent's alone. In the same
//! run the files are first read once with a plain 64 KiB read loop that
//! only counts newlines: the floor any shipper pays.

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
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = iter.next().context("flag without value")?;
        match arg.as_str() {
            "--lines" => lines = value.parse()?,
            "--files" => files = value.parse()?,
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
    bench(lines, files, compression)
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

fn bench(lines: u64, files: u64, compression: Compression) -> anyhow::Result<()> {
    let root = TempDir::new()?;
    eprintln!("generating {lines} lines in {files} files");
    let (paths, total_bytes) = generate(root.path(), lines, files)?;

    // Collector in a child process.
    let mut collector = Command::new(std::env::current_exe()?)
        .arg("collect")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to start the collector child")?;
    let mut collector_out = BufReader::new(collector.stdout.take().context("no stdout")?);
    let mut port_line = String::new();
    collector_out.read_line(&mut port_line)?;
    let port: u16 = port_line
        .trim()
        .strip_prefix("port ")
        .context("no port")?
        .parse()?;

    // Read twice: the first warms the page cache for both runs alike.
    read_floor(&paths)?;
    let (floor, counted) = read_floor(&paths)?;
    anyhow::ensure!(counted == lines, "floor counted {counted} lines");

    // Reset the peak RSS so it measures the agent run only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before_kib = status_kib("VmHWM:");
    let runtime = sightline_agent::runtime()?;
    let config = Config {
        include: vec![format!("{}/pods/*/*/*.log", root.path().display())],
        collector: format!("http://127.0.0.1:{port}"),
        compression,
        data_dir: root.path().join("data"),
        http_addr: "127.0.0.1:0".parse()?,
        host_name: "bench-node".to_owned(),
        ..Config::default()
    };
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
    let cpu = cpu_seconds() - cpu_before;
    let peak_rss_kib = status_kib("VmHWM:");
    drop(collector.stdin.take());
    let mut received = String::new();
    collector_out.read_line(&mut received)?;
    collector.wait()?;

    let seconds = elapsed.as_secs_f64();
    let mb = total_bytes as f64 / 1e6;
    println!(
        "lines                 {lines} in {files} files, {:.1} MB, {:.0} B/line avg",
        mb,
        total_bytes as f64 / lines as f64
    );
    println!("compression           {compression:?}");
    println!("collector             {}", received.trim());
    println!("wall                  {seconds:.2} s");
    println!(
        "throughput            {:.0} lines/s, {:.1} MB/s",
        lines as f64 / seconds,
        mb / seconds
    );
    println!(
        "cpu                   {cpu:.2} s ({:.2} s per 1M lines, {:.0} lines per cpu-second)",
        cpu / (lines as f64 / 1e6),
        lines as f64 / cpu.max(0.01)
    );
    println!(
        "peak rss (agent run)  {:.1} MiB (process before the run: {:.1} MiB)",
        peak_rss_kib as f64 / 1024.0,
        rss_before_kib as f64 / 1024.0
    );
    println!(
        "read-only floor       {:.3} s ({:.0} lines/s, {:.0} MB/s)",
        floor.as_secs_f64(),
        lines as f64 / floor.as_secs_f64(),
        mb / floor.as_secs_f64()
    );
    println!(
        "ratio full/floor      {:.1}x",
        seconds / floor.as_secs_f64()
    );
    Ok(())
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
/// its port, and its count when stdin closes.
fn collect() -> anyhow::Result<()> {
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
        println!("port {}", listener.local_addr()?.port());
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
        anyhow::Ok(())
    })
}
