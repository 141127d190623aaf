//! Scrape ingest: samples/s and CPU per million samples, Sightline's scraper
//! against Debian's `prometheus` scraping the same targets in the same run.
//!
//! The targets (N listeners on loopback, each exposing M counter series whose
//! values change every scrape) run in a child process (this binary re-run
//! with `--serve`), so neither scraper's CPU includes serving them. Then,
//! one after the other (2 cores are not enough to run both at once fairly):
//! - Sightline: the collector's [`Scraper`] appending into a [`MetricStore`]
//!   (durable appends) in this process; CPU from `/proc/self/stat`;
//! - Prometheus: `/usr/bin/prometheus` with a temporary TSDB; CPU from
//!   `/proc/<pid>/stat`, samples from its own
//!   `prometheus_tsdb_head_samples_appended_total`.
//!
//! ```text
//! cargo bench -p sightline-collector --bench scrape -- [targets] [series] [seconds] [interval_ms] [drop-rule|exemplars]
//! ```
//!
//! With `drop-rule`, Sightline's job has one `metric_relabel_configs` rule
//! (drop `go_.*` by `__name__`, which matches none of the bench series), so
//! every sample goes through relabeling and the same samples are stored.
//! With `exemplars`, the targets answer OpenMetrics with an exemplar (a new
//! trace id at every scrape) on every tenth series, and Prometheus runs with
//! `--enable-feature=exemplar-storage`: the cost of keeping exemplars.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sightline_metrics::scrape::parse::{Format, parse};
use sightline_metrics::scrape::{Job, Scraper};
use sightline_metrics::share::WorkShare;
use sightline_tsdb::MetricStore;
use tokio::sync::watch;

struct Settings {
    targets: usize,
    series: usize,
    seconds: u64,
    interval: Duration,
    drop_rule: bool,
    exemplars: bool,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve(&args[1..]);
    }
    let number = |index: usize, default: u64| -> u64 {
        args.get(index)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let settings = Settings {
        targets: number(0, 20) as usize,
        series: number(1, 5000) as usize,
        seconds: number(2, 30),
        interval: Duration::from_millis(number(3, 1000)),
        drop_rule: args.get(4).map(String::as_str) == Some("drop-rule"),
        exemplars: args.get(4).map(String::as_str) == Some("exemplars"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(settings))
}

/// Child process: serves the targets until stdin closes.
fn serve(args: &[String]) -> anyhow::Result<()> {
    let series: usize = args.first().context("series")?.parse()?;
    let exemplars = args.get(1).map(String::as_str) == Some("exemplars");
    let ports: Vec<u16> = args[2..]
        .iter()
        .map(|port| port.parse())
        .collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        for (index, port) in ports.into_iter().enumerate() {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let scrapes = Arc::new(AtomicU64::new(0));
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let scrape = scrapes.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let content_type = if exemplars {
                            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                        } else {
                            "text/plain; version=0.0.4"
                        };
                        let body = exposition(index, series, scrape, exemplars);
                        ([(axum::http::header::CONTENT_TYPE, content_type)], body)
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        // The parent closes our stdin when it is done.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await?;
        anyhow::Ok(())
    })
}

fn exposition(target: usize, series: usize, scrape: u64, exemplars: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(series * 80);
    if exemplars {
        out.push_str("# HELP bench_requests Requests.\n# TYPE bench_requests counter\n");
    } else {
        out.push_str(
            "# HELP bench_requests_total Requests.\n# TYPE bench_requests_total counter\n",
        );
    }
    for index in 0..series {
        let value = scrape * (index as u64 % 7 + 1);
        let _ = write!(
            out,
            "bench_requests_total{{path=\"/api/{}\",code=\"{}\",target=\"{target}\"}} {value}",
            index / 4,
            200 + (index % 4) * 100,
        );
        if exemplars && index % 10 == 0 {
            let trace = (scrape << 32) ^ ((target as u64) << 20) ^ index as u64;
            let _ = write!(out, " # {{trace_id=\"{trace:032x}\"}} 1");
        }
        out.push('\n');
    }
    if exemplars {
        out.push_str("# EOF\n");
    }
    out
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    support::stat_cpu_seconds(&stat).context("malformed /proc stat line")
}

struct Measured {
    samples: f64,
    seconds: f64,
    cpu_seconds: f64,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.samples / self.seconds
    }

    fn cpu_per_million(&self) -> f64 {
        self.cpu_seconds / (self.samples / 1e6)
    }
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let addresses: Vec<SocketAddr> = (0..settings.targets)
        .map(|_| support::free_port())
        .collect::<Result<_, _>>()?;
    let mut server = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(settings.series.to_string())
        .arg(if settings.exemplars {
            "exemplars"
        } else {
            "plain"
        })
        .args(addresses.iter().map(|address| address.port().to_string()))
        .stdin(Stdio::piped())
        .spawn()
        .context("failed to start the target server")?;
    for address in &addresses {
        wait_for(*address, "/metrics").await?;
    }
    if settings.drop_rule {
        println!("sightline job with one metric_relabel_configs drop rule (matching nothing)");
    }
    if settings.exemplars {
        println!(
            "OpenMetrics with an exemplar on every tenth series; Prometheus stores exemplars too"
        );
    }
    println!(
        "{} targets x {} series every {:?} ({} samples/s offered), {} s per scraper, {}",
        settings.targets,
        settings.series,
        settings.interval,
        (settings.targets * settings.series) as f64 / settings.interval.as_secs_f64(),
        settings.seconds,
        support::cpu_model()
    );

    let sightline = bench_sightline(&settings, &addresses).await?;
    println!(
        "sightline:  {:.0} samples/s appended, {:.2} CPU s per million samples ({:.2} cores)",
        sightline.per_second(),
        sightline.cpu_per_million(),
        sightline.cpu_seconds / sightline.seconds
    );
    let prometheus = bench_prometheus(&settings, &addresses).await;
    drop(server.stdin.take());
    let _ = server.wait();
    let prometheus = prometheus?;
    println!(
        "prometheus: {:.0} samples/s appended, {:.2} CPU s per million samples ({:.2} cores)",
        prometheus.per_second(),
        prometheus.cpu_per_million(),
        prometheus.cpu_seconds / prometheus.seconds
    );
    println!(
        "ratio sightline/prometheus: samples/s {:.2}, CPU per million samples {:.2}",
        sightline.per_second() / prometheus.per_second(),
        sightline.cpu_per_million() / prometheus.cpu_per_million()
    );
    Ok(())
}

/// Warm-up before measuring: first scrapes create every series.
const WARM_UP: Duration = Duration::from_secs(5);

async fn bench_sightline(
    settings: &Settings,
    addresses: &[SocketAddr],
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(MetricStore::open(dir.path())?);
    let mut job = Job::new(
        "bench",
        settings.interval,
        addresses.iter().map(ToString::to_string).collect(),
    );
    job.timeout = settings.interval;
    if settings.drop_rule {
        let rule: sightline_metrics::scrape::relabel::RelabelConfig =
            serde_norway::from_str("{ source_labels: [__name__], regex: 'go_.*', action: drop }")?;
        job.metric_relabel_configs = vec![rule.compile().map_err(anyhow::Error::msg)?];
    }
    let (stop_sender, stop) = watch::channel(false);
    let scraper = Scraper::start(
        vec![job],
        store.clone(),
        WorkShare::everything(),
        Duration::from_secs(5),
        stop,
    )?;
    let appended = || -> u64 {
        scraper
            .targets()
            .iter()
            .map(|status| status.health().samples_appended)
            .sum()
    };
    tokio::time::sleep(WARM_UP).await;
    let pid = std::process::id();
    let (samples_before, cpu_before, started) = (appended(), cpu_seconds(pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(settings.seconds)).await;
    let (samples_after, cpu_after, seconds) = (
        appended(),
        cpu_seconds(pid)?,
        started.elapsed().as_secs_f64(),
    );
    let errors: Vec<String> = scraper
        .targets()
        .iter()
        .map(|status| status.health().last_error)
        .filter(|error| !error.is_empty())
        .collect();
    let _ = stop_sender.send(true);
    if settings.exemplars {
        let any = vec![sightline_tsdb::LabelMatcher::any_series()];
        let kept: usize = store
            .exemplars(&any, i64::MIN, i64::MAX)
            .iter()
            .map(|series| series.exemplars.len())
            .sum();
        println!("sightline kept {kept} exemplars (bounded: 100,000)");
    }
    if let Some(error) = errors.first() {
        bail!("{} targets failed, e.g.: {error}", errors.len());
    }
    Ok(Measured {
        samples: (samples_after - samples_before) as f64,
        seconds,
        cpu_seconds: cpu_after - cpu_before,
    })
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench_prometheus(
    settings: &Settings,
    addresses: &[SocketAddr],
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let listen = support::free_port()?;
    let targets: Vec<String> = addresses.iter().map(|a| format!("'{a}'")).collect();
    let interval = format!("{}ms", settings.interval.as_millis());
    let config = format!(
        "global: {{scrape_interval: {interval}, scrape_timeout: {interval}}}\n\
scrape_configs:\n  - job_name: bench\n    static_configs: [{{targets: [{}]}}]\n",
        targets.join(", ")
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let child = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .args(
            settings
                .exemplars
                .then_some("--enable-feature=exemplar-storage"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start /usr/bin/prometheus (apt-get install -y prometheus)")?;
    let child = KillOnDrop(child);
    wait_for(listen, "/-/ready").await?;
    tokio::time::sleep(WARM_UP).await;
    let pid = child.0.id();
    let (samples_before, cpu_before, started) = (
        prometheus_samples(listen).await?,
        cpu_seconds(pid)?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(settings.seconds)).await;
    let (samples_after, cpu_after, seconds) = (
        prometheus_samples(listen).await?,
        cpu_seconds(pid)?,
        started.elapsed().as_secs_f64(),
    );
    Ok(Measured {
        samples: samples_after - samples_before,
        seconds,
        cpu_seconds: cpu_after - cpu_before,
    })
}

/// `prometheus_tsdb_head_samples_appended_total`, all series summed.
async fn prometheus_samples(address: SocketAddr) -> anyhow::Result<f64> {
    // Go's server may answer in chunks; a real client decodes them.
    let body = reqwest::get(format!("http://{address}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let exposition = parse(&body, Format::Text)?;
    Ok(exposition
        .samples
        .iter()
        .filter(|sample| sample.name() == "prometheus_tsdb_head_samples_appended_total")
        .map(|sample| sample.value)
        .sum())
}

async fn wait_for(address: SocketAddr, path: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if let Ok((200, _)) = support::http_get_status(address, path).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{address}{path} never answered")
}
