//! Helpers shared by the whole-system benches: a deterministic random
//! generator, latency percentiles, loopback HTTP and machine facts.

#![allow(dead_code)] // each bench uses its own subset

/// The allocator the collector binary uses (`src/main.rs`), so the
/// in-process collector of every bench allocates as it does in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) struct Timings {
    pub(crate) millis: Vec<f64>,
    pub(crate) mean_hits: f64,
}

pub(crate) fn measure(
    iterations: usize,
    mut run: impl FnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<Timings> {
    for _ in 0..iterations.min(10) {
        run()?;
    }
    let mut millis = Vec::with_capacity(iterations);
    let mut hits = 0usize;
    for _ in 0..iterations {
        let started = Instant::now();
        hits += run()?;
        millis.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(sorted(millis, hits))
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn report(name: &str, timings: &Timings, target_p99_ms: f64) {
    let p99 = percentile(&timings.millis, 99.0);
    println!(
        "{name}: p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms (target p99 < {target_p99_ms} ms: {}); {:.1} hits on average",
        percentile(&timings.millis, 50.0),
        timings.millis.last().copied().unwrap_or_default(),
        if p99 < target_p99_ms { "met" } else { "MISSED" },
        timings.mean_hits
    );
}

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as i64)
}

/// User and system CPU seconds of a `/proc/<pid>/stat` (or a thread's
/// `/proc/<pid>/task/<tid>/stat`) line; `None` if it is malformed.
pub(crate) fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The fields after the command name, which is in parentheses and may
    // hold spaces: utime and stime are fields 14 and 15, the 12th and 13th
    // after it.
    let (_, after) = stat.rsplit_once(')')?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Clock ticks per second of `/proc`'s CPU times (`getconf CLK_TCK`, once).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

pub(crate) fn sorted(mut millis: Vec<f64>, hits: usize) -> Timings {
    millis.sort_by(f64::total_cmp);
    let mean_hits = hits as f64 / millis.len().max(1) as f64;
    Timings { millis, mean_hits }
}

/// Status code and body of a `GET`.
pub(crate) async fn http_get_status(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("HTTP response without status")?;
    Ok((status, body.to_string()))
}

pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    match http_get_status(addr, path).await? {
        (200, body) => Ok(body),
        (status, body) => bail!("GET {path}: {status} {body}"),
    }
}

/// splitmix64: small, fast, deterministic.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A collector config on free loopback ports with every other setting at the
/// binary's own defaults (parsed from flags, so a new flag needs no edit here).
pub(crate) fn loopback_collector(
    data_dir: &std::path::Path,
) -> anyhow::Result<sightline_collector::CollectorConfig> {
    use clap::Parser as _;
    let mut args = vec![
        "sightline-collector".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    for flag in ["--otlp-grpc-addr", "--otlp-http-addr", "--http-addr"] {
        args.push(flag.to_owned());
        args.push(free_port()?.to_string());
    }
    Ok(sightline_collector::CollectorConfig::try_parse_from(args)?)
}

/// A gRPC codec for request bodies encoded once before the timed part, so
/// the bench's own clients, which share the machine's cores with the
/// collector, spend no CPU on protobuf encoding (real senders encode on
/// their own machines). Responses are decoded as `R`.
pub(crate) struct Preencoded<R>(std::marker::PhantomData<R>);

impl<R> Default for Preencoded<R> {
    fn default() -> Self {
        Preencoded(std::marker::PhantomData)
    }
}

pub(crate) struct BodyEncoder;

pub(crate) struct ResponseDecoder<R>(std::marker::PhantomData<R>);

impl<R: prost::Message + Default + Send + 'static> tonic::codec::Codec for Preencoded<R> {
    type Encode = prost::bytes::Bytes;
    type Decode = R;
    type Encoder = BodyEncoder;
    type Decoder = ResponseDecoder<R>;

    fn encoder(&mut self) -> BodyEncoder {
        BodyEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder<R> {
        ResponseDecoder(std::marker::PhantomData)
    }
}

impl tonic::codec::Encoder for BodyEncoder {
    type Item = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        body: prost::bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &body);
        Ok(())
    }
}

impl<R: prost::Message + Default> tonic::codec::Decoder for ResponseDecoder<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<R>, tonic::Status> {
        R::decode(src)
            .map(Some)
            .map_err(|error| tonic::Status::internal(format!("bad response: {error}")))
    }
}

/// Sends one pre-encoded export request to `path` (the OTLP service's
/// method) and decodes the answer.
pub(crate) async fn export_preencoded<R: prost::Message + Default + Send + 'static>(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    body: prost::bytes::Bytes,
) -> Result<R, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(format!("connection: {error}")))?;
    let answer = grpc
        .unary(
            tonic::Request::new(body),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            Preencoded::<R>::default(),
        )
        .await?;
    Ok(answer.into_inner())
}

/// A gRPC client of the collector at `addr`, waiting up to 20 s for it to
/// listen.
pub(crate) async fn connect_grpc(
    addr: SocketAddr,
) -> anyhow::Result<tonic::client::Grpc<tonic::transport::Channel>> {
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            Ok(channel) => {
                return Ok(
                    tonic::client::Grpc::new(channel).max_decoding_message_size(16 * 1024 * 1024)
                );
            }
            Err(error) if Instant::now() > deadline => {
                return Err(error).context("collector did not start");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Encodes each request once, before any clock starts, and deals them to
/// `clients` in turn (request `i` to client `i % clients`, so client `c`'s
/// `k`-th is request `c + k * clients`). Prints how long the encoding took:
/// the protobuf work the clients no longer do while timed.
pub(crate) fn encode_for_clients<'a, M: prost::Message + 'a>(
    requests: impl IntoIterator<Item = &'a M>,
    clients: usize,
) -> Vec<Vec<prost::bytes::Bytes>> {
    let started = Instant::now();
    let mut per_client: Vec<Vec<prost::bytes::Bytes>> = (0..clients).map(|_| Vec::new()).collect();
    for (index, request) in requests.into_iter().enumerate() {
        per_client[index % clients].push(request.encode_to_vec().into());
    }
    println!(
        "requests encoded in {:.2}s (one thread; the clients' protobuf work, not timed below)",
        started.elapsed().as_secs_f64()
    );
    per_client
}

/// Sends `bodies` to `path` one at a time. A body refused with
/// `RESOURCE_EXHAUSTED` is sent again from the same bytes after 20 ms
/// (counted in `retries`); `rejected` says what an answer's partial
/// success refused, which fails the bench.
pub(crate) async fn send_all<R: prost::Message + Default + Send + 'static>(
    mut client: tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    bodies: Vec<prost::bytes::Bytes>,
    retries: std::sync::Arc<std::sync::atomic::AtomicU64>,
    rejected: fn(R) -> Option<String>,
) -> anyhow::Result<()> {
    for body in bodies {
        loop {
            match export_preencoded::<R>(&mut client, path, body.clone()).await {
                Ok(answer) => {
                    if let Some(refused) = rejected(answer) {
                        bail!("refused: {refused}");
                    }
                    break;
                }
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(status) => bail!("export failed: {status}"),
            }
        }
    }
    Ok(())
}
