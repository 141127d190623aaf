//! The rotation storm: the real agent and collector binaries on loopback,
//! several files written at tens of thousands of numbered lines per
//! second and rotated several times a second, the collector and the agent
//! each SIGKILLed and restarted mid-stream. Every numbered line is then
//! counted through the collector's query API.
//!
//! - rename rotation (kubelet: `0.log` renamed to `0.log.<n>`, a new
//!   `0.log`, a few rotated files kept): no line may be missing;
//! - copytruncate (logrotate: `0.log` copied to `0.log.<n>`, then cut to
//!   zero, a few copies kept): what is missing must equal what the agent
//!   counted lost (`sightline_agent_bytes_lost_total`, summed over the
//!   agent's lives: it is read just before the SIGKILL and at the end).
//!
//! The counts (written, received, duplicated, missing, counted lost) are
//! printed for each scenario; run with `--nocapture` to see them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sightline_tests::{CollectorProcess, Process, binary, free_port, wait_healthy};

/// Files written at once.
const FILES: usize = 4;
/// Lines per second per file.
const RATE: usize = 4_000;
/// How long the writers run per scenario.
const WRITE_FOR: Duration = Duration::from_secs(5);
/// Rotations per second per file.
const ROTATE_EVERY: Duration = Duration::from_millis(250);
/// Rotated files kept per file (older ones are deleted, as kubelet and
/// logrotate do): ten seconds of them, long enough for an agent that was
/// killed and restarted (and reads again what it had not acknowledged) to
/// catch up before a generation it has not read is deleted.
const KEEP: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Rename,
    CopyTruncate,
}

/// The numbered line `seq` of file `file` of scenario `tag`, CRI-framed
/// with the current time (the collector refuses records too far in the
/// past).
fn line(tag: &str, file: usize, seq: usize) -> String {
    format!(
        "{} stdout F {tag}-{file}-{seq:08}\n",
        sightline_tests::rfc3339_now()
    )
}

/// One writer per file: appends numbered lines at `RATE` and rotates
/// every `ROTATE_EVERY` for `WRITE_FOR` (or until `stop`); returns the
/// lines written.
fn write_file(dir: PathBuf, tag: String, file: usize, mode: Mode, stop: Arc<AtomicBool>) -> usize {
    use std::io::Write;
    let path = dir.join("0.log");
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    };
    let mut out = open(&path);
    let started = Instant::now();
    let mut last_rotation = Instant::now();
    let mut written = 0;
    let mut rotations = 0usize;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < WRITE_FOR {
        // Catch up with the rate, in slices of 1 ms.
        let due = (started.elapsed().as_secs_f64() * RATE as f64) as usize;
        let mut batch = String::new();
        while written < due {
            batch.push_str(&line(&tag, file, written));
            written += 1;
        }
        out.write_all(batch.as_bytes()).unwrap();
        if last_rotation.elapsed() >= ROTATE_EVERY {
            rotations += 1;
            let rotated = dir.join(format!("0.log.{rotations}"));
            match mode {
                Mode::Rename => {
                    std::fs::rename(&path, &rotated).unwrap();
                    out = open(&path);
                }
                Mode::CopyTruncate => {
                    std::fs::copy(&path, &rotated).unwrap();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(0)
                        .unwrap();
                }
            }
            if rotations > KEEP {
                let _ = std::fs::remove_file(dir.join(format!("0.log.{}", rotations - KEEP)));
            }
            last_rotation = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    written
}

/// A collector on fixed ports, so a restarted one is found by the agent
/// at the same address.
async fn collector_on(data: &Path, ports: (u16, u16, u16)) -> CollectorProcess {
    CollectorProcess::start_on(data, ports, |command| {
        command
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::null());
    })
    .await
}

/// The agent binary with its defaults (discovery, polling, rotate wait)
/// except where noted.
async fn agent_on(config: &Path, http_port: u16) -> Process {
    let process = Process::spawn(
        "sightline-agent",
        Command::new(binary("sightline-agent"))
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(config.with_extension("log"))
                    .unwrap(),
            ),
    );
    wait_healthy(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{http_port}/health"),
        Duration::from_secs(30),
    )
    .await;
    process
}

/// Bytes the agent counted lost (all reasons).
async fn agent_lost_bytes(http_port: u16) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{http_port}/metrics"))
        .await
        .expect("agent metrics")
        .text()
        .await
        .expect("agent metrics text");
    text.lines()
        .filter(|line| {
            line.starts_with("sightline_agent_bytes_lost_total{")
                || line.starts_with("sightline_agent_bytes_lost_total ")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// How many records of service `tag` the collector holds.
async fn stored_count(collector: &CollectorProcess, tag: &str) -> Result<u64, String> {
    let page: serde_json::Value = reqwest::Client::new()
        .get(collector.url("/api/logs"))
        .query(&[("q", format!("service:{tag}")), ("limit", "1".to_owned())])
        .send()
        .await
        .map_err(|error| error.to_string())?
        .json()
        .await
        .map_err(|error| error.to_string())?;
    page["total_hits"]
        .as_u64()
        .ok_or_else(|| format!("no total_hits in {page}"))
}

struct Outcome {
    written: usize,
    received: usize,
    duplicated: usize,
    missing: usize,
    missing_bytes: u64,
    counted_lost_bytes: u64,
}

/// Runs one scenario against `collector`: starts an agent, the writers,
/// SIGKILLs and restarts the collector, then the agent, mid-stream, and
/// counts what the collector holds once the agent has caught up.
async fn storm(
    root: &Path,
    collector: &mut CollectorProcess,
    collector_data: &Path,
    mode: Mode,
    tag: &str,
) -> Outcome {
    let pods = root.join(tag);
    let agent_port = free_port();
    let config = root.join(format!("{tag}.toml"));
    std::fs::write(
        &config,
        format!(
            "include = [\"{pods}/pods/*/*/*.log\"]\ncollector = \"{collector}\"\ndata_dir = \"{data}\"\nhttp_addr = \"127.0.0.1:{agent_port}\"\nhost_name = \"storm\"\n[tuning]\nrotate_wait = \"1s\"\n",
            pods = pods.display(),
            collector = collector.grpc_endpoint(),
            data = root.join(format!("{tag}-agent")).display(),
        ),
    )
    .unwrap();
    let mut agent = agent_on(&config, agent_port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..FILES)
        .map(|file| {
            let dir = pods.join(format!("pods/storm_p{file}_uid{file}/{tag}"));
            std::fs::create_dir_all(&dir).unwrap();
            let (tag, stop) = (tag.to_owned(), Arc::clone(&stop));
            std::thread::spawn(move || write_file(dir, tag, file, mode, stop))
        })
        .collect();

    // Faults mid-stream: the collector dies and comes back on the same
    // ports, then the agent.
    let ports = (
        collector.grpc_port,
        collector.http_port,
        collector.otlp_http_port,
    );
    let started = Instant::now();
    tokio::time::sleep(WRITE_FOR / 4).await;
    collector.kill9();
    *collector = collector_on(collector_data, ports).await;
    if let Some(rest) = (WRITE_FOR * 3 / 5).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let mut counted_lost_bytes = agent_lost_bytes(agent_port).await;
    agent.kill();
    let agent_data = root.join(format!("{tag}-agent"));
    assert!(agent_data.join("checkpoints.json").exists());
    let mut agent = agent_on(&config, agent_port).await;
    let deadline = Instant::now() + WRITE_FOR * 2;
    while Instant::now() < deadline && writers.iter().any(|writer| !writer.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let per_file: Vec<usize> = writers
        .into_iter()
        .map(|writer| writer.join().unwrap())
        .collect();
    let written: usize = per_file.iter().sum();

    // Wait until the collector holds as many records as were written
    // minus what the agent counted lost, and stays there.
    // Wait (bounded) until the collector's count stops moving.
    let mut last = 0;
    let mut steady = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let stored = stored_count(collector, tag).await.unwrap_or(0);
        steady = if stored == last { steady + 1 } else { 0 };
        last = stored;
        // All there and steady for a second, or (lines lost) steady for
        // five: the agent has nothing left to send.
        if (stored as usize >= written && steady >= 5) || steady >= 25 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    counted_lost_bytes += agent_lost_bytes(agent_port).await;
    agent.terminate(Duration::from_secs(20));

    let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
    for record in collector.all_records(&format!("service:{tag}")).await {
        let body = record["body"].as_str().unwrap_or_default();
        let mut parts = body.rsplitn(3, '-');
        let (Some(seq), Some(file)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(seq), Ok(file)) = (seq.parse(), file.parse()) {
            *counts.entry((file, seq)).or_default() += 1;
        }
    }
    let mut missing = 0;
    let mut missing_bytes = 0;
    let mut ranges: Vec<(usize, usize, usize)> = Vec::new();
    for (file, lines) in per_file.iter().enumerate() {
        for seq in 0..*lines {
            if !counts.contains_key(&(file, seq)) {
                match ranges.last_mut() {
                    Some((last_file, _, end)) if *last_file == file && *end == seq => *end += 1,
                    _ => ranges.push((file, seq, seq + 1)),
                }
                missing += 1;
                // Every line of a file has the same length.
                missing_bytes += line(tag, file, seq).len() as u64;
            }
        }
    }
    if !ranges.is_empty() {
        println!(
            "{tag}: missing (file, from, to) {:?}",
            &ranges[..ranges.len().min(20)]
        );
    }
    Outcome {
        written,
        received: counts.len(),
        duplicated: counts.values().map(|count| count - 1).sum(),
        missing,
        missing_bytes,
        counted_lost_bytes,
    }
}

fn report(mode: &str, outcome: &Outcome) {
    println!(
        "rotation storm ({mode}): written {}, received {}, duplicated {}, missing {} ({} bytes), counted lost {} bytes",
        outcome.written,
        outcome.received,
        outcome.duplicated,
        outcome.missing,
        outcome.missing_bytes,
        outcome.counted_lost_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_storm_with_kill_9_of_collector_and_agent() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let collector_data = root.join("collector");
    let mut collector = CollectorProcess::start(&collector_data, &[]).await;

    let renamed = storm(
        root,
        &mut collector,
        &collector_data,
        Mode::Rename,
        "stormrename",
    )
    .await;
    report("rename", &renamed);
    let cut = storm(
        root,
        &mut collector,
        &collector_data,
        Mode::CopyTruncate,
        "stormcopy",
    )
    .await;
    report("copytruncate", &cut);

    assert!(renamed.written >= 50_000, "a storm: {}", renamed.written);
    assert_eq!(renamed.missing, 0, "lines lost under rename rotation");
    assert_eq!(renamed.counted_lost_bytes, 0);
    assert_eq!(
        cut.counted_lost_bytes, cut.missing_bytes,
        "counted lost bytes differ from what is missing under copytruncate"
    );
}
