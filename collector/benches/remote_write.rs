//! Whole-system benchmark of Prometheus remote-write ingest (issue 6).
//!
//! ```text
//! cargo bench -p sightline-collector --bench remote_write -- [--samples N]
//!     [--series N] [--batch N] [--senders N]
//! ```
//!
//! Encodes every request before the clock starts, as a Prometheus server
//! would send them: `prometheus.WriteRequest` protobuf, snappy block format,
//! `--batch` samples per request (Prometheus' default `max_samples_per_send`
//! is 2000) over `--series` series with a 15 s spacing between a series'
//! samples. Series are split between `--senders` concurrent senders (one
//! HTTP connection each), as Prometheus shards by series, so each series'
//! samples arrive in order. Then starts the real collector in-process
//! ([`sightline_collector::run`]) on a temporary directory and free loopback
//! ports, and measures the wall time until every request is answered 204
//! (appended and fsynced in the metric store's WAL).

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use prost::Message;
use sightline_metrics::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use support::{cpu_model, now_nanos};

#[derive(Debug, Clone, Parser)]
#[command(about = "Sightline remote-write ingest benchmark")]
struct Args {
    /// Samples to send in total (rounded down to whole requests).
    #[arg(long, default_value_t = 2_000_000)]
    samples: usize,
    /// Distinct series.
    #[arg(long, default_value_t = 1_000)]
    series: usize,
    /// Samples per request.
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// Concurrent senders (Prometheus' shards), one connection each.
    #[arg(long, default_value_t = 4)]
    senders: usize,
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; ignore it like the other benches.
    let args = Args::parse_from(std::env::args().filter(|argument| argument != "--bench"));
    if args.senders == 0 || args.series < args.senders || args.batch == 0 {
        bail!("need at least one sender, one series per sender and one sample per request");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

/// Every sender's requests, compressed: sender `s` owns series `s`,
/// `s + senders`, ...; each request carries `batch` samples spread over them.
fn encode_requests(args: &Args) -> Vec<Vec<Vec<u8>>> {
    let requests_per_sender = args.samples / args.batch / args.senders;
    let start_ms = now_nanos() / 1_000_000 - 86_400_000;
    (0..args.senders)
        .map(|sender| {
            let owned: Vec<usize> = (sender..args.series).step_by(args.senders).collect();
            let mut next_sample = 0usize;
            (0..requests_per_sender)
                .map(|_| {
                    let mut timeseries: Vec<TimeSeries> = owned
                        .iter()
                        .map(|&series| TimeSeries {
                            labels: vec![
                                label("__name__", "bench_requests_total"),
                                label(
                                    "instance",
                                    &format!("10.0.{}.{}:9100", series / 250, series % 250),
                                ),
                                label("job", "node"),
                                label("series", &series.to_string()),
                            ],
                            ..TimeSeries::default()
                        })
                        .collect();
                    for _ in 0..args.batch {
                        let slot = next_sample % owned.len();
                        let round = (next_sample / owned.len()) as i64;
                        timeseries[slot].samples.push(Sample {
                            value: (round * 3 + slot as i64) as f64,
                            timestamp: start_ms + round * 15_000,
                        });
                        next_sample += 1;
                    }
                    timeseries.retain(|series| !series.samples.is_empty());
                    let request = WriteRequest {
                        timeseries,
                        metadata: Vec::new(),
                    };
                    snap::raw::Encoder::new()
                        .compress_vec(&request.encode_to_vec())
                        .expect("snappy compresses any input")
                })
                .collect()
        })
        .collect()
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.into(),
        value: value.into(),
    }
}

async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    if status.as_u16() != 204 {
        bail!("remote write answered {status}: {}", response.text().await?);
    }
    Ok(())
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let encoding_started = Instant::now();
    let requests = encode_requests(&args);
    let total_requests: usize = requests.iter().map(Vec::len).sum();
    let total_samples = total_requests * args.batch;
    let wire_bytes: usize = requests.iter().flatten().map(Vec::len).sum();
    println!(
        "encoded {total_requests} requests ({total_samples} samples, {} series, {:.1} MiB snappy) in {:.1} s",
        args.series,
        wire_bytes as f64 / 1_048_576.0,
        encoding_started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let config = support::loopback_collector(dir.path())?;
    let url = format!("http://{}/api/v1/write", config.http_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(sightline_collector::run(config, async {
        let _ = stopped.await;
    }));

    // Ready when an empty write is answered.
    let client = reqwest::Client::new();
    let empty = snap::raw::Encoder::new().compress_vec(&WriteRequest::default().encode_to_vec())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while send(&client, &url, empty.clone()).await.is_err() {
        if Instant::now() > deadline {
            bail!("collector did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let mut senders = Vec::new();
    for batches in requests {
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            for body in batches {
                send(&client, &url, body).await?;
            }
            anyhow::Ok(())
        }));
    }
    for sender in senders {
        sender.await.context("sender task failed")??;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let _ = stop.send(());
    collector.await.context("collector task failed")??;
    println!(
        "remote-write: {total_samples} samples in {elapsed:.2} s = {:.0} samples/s ({:.1} requests/s of {} samples, {} senders, {} series); cpu: {}, {} cores",
        total_samples as f64 / elapsed,
        total_requests as f64 / elapsed,
        args.batch,
        args.senders,
        args.series,
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    Ok(())
}
