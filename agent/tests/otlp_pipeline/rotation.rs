//! Rotation faster than any poll, restarts with rotated generations on
//! disk, and copytruncate loss counted to the byte: real files, a real
//! gRPC collector on loopback, every line counted.

use std::path::Path;
use std::time::Duration;

use sightline_agent::Config;
use sightline_agent::config::Tuning;
use tokio::net::TcpListener;

use crate::common::{
    CountingCollector, RuntimeWriter, body, cri_line, eventually, metric, pod_dir, serve,
    start_collector,
};

/// Fast everything except discovery's poll, left at its default of one
/// second: what is found faster than that was found by notification.
fn rotation_config(root: &Path, collector: std::net::SocketAddr) -> Config {
    Config {
        include: vec![format!("{}/pods/*/*/*.log", root.display())],
        collector: format!("http://{collector}"),
        data_dir: root.join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        host_name: "node-test".to_owned(),
        tuning: Tuning {
            poll_interval: Duration::from_millis(20),
            rotate_wait: Duration::from_millis(300),
            batch_max_wait: Duration::from_millis(20),
            checkpoint_interval: Duration::from_millis(50),
            retry_initial_backoff: Duration::from_millis(20),
            retry_max_backoff: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(2),
            ..Tuning::default()
        },
        ..Config::default()
    }
}

/// Sequence numbers of `name` in `0..lines` never received.
fn missing(collector: &CountingCollector, name: &str, lines: std::ops::Range<usize>) -> Vec<usize> {
    let counts = collector.counts();
    lines
        .filter(|seq| !counts.contains_key(&body(name, *seq)))
        .collect()
}

fn lost_bytes(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("sightline_agent_bytes_lost_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or_else(|| panic!("no lost bytes for {reason} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_many_times_a_second_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let collector = CountingCollector::default();
    let server = start_collector(collector.clone()).await;
    let agent = sightline_agent::start(rotation_config(root.path(), server.addr))
        .await
        .unwrap();

    // kubelet-style: `0.log` renamed to `0.log.<n>`, a new `0.log`
    // created; 60 generations of 400 lines, written as fast as the disk
    // takes them with a short pause per generation (~20 rotations/s).
    const LINES: usize = 24_000;
    const PER_GENERATION: usize = 400;
    let path = pod_dir(root.path(), "fast").join("0.log");
    let writer = std::thread::spawn(move || {
        let mut writer = RuntimeWriter::create(&path);
        let mut rotations = 0;
        for seq in 0..LINES {
            writer.write(&cri_line("fast", seq));
            if seq % PER_GENERATION == PER_GENERATION - 1 {
                rotations += 1;
                std::fs::rename(&path, path.with_extension(format!("log.{rotations}"))).unwrap();
                writer = RuntimeWriter::create(&path);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        rotations
    });
    let rotations = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    assert_eq!(rotations, LINES / PER_GENERATION);

    eventually("every line", || {
        (collector.distinct() >= LINES).then_some(())
    })
    .await;
    let lost = missing(&collector, "fast", 0..LINES);
    assert!(lost.is_empty(), "{} lines never read", lost.len());
    agent.shutdown().await.unwrap();
    assert_eq!(collector.total(), LINES, "duplicates without a restart");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_rotated_generations_and_skips_finished_ones() {
    let root = tempfile::tempdir().unwrap();
    let collector = CountingCollector::default();
    let server = start_collector(collector.clone()).await;
    let config = rotation_config(root.path(), server.addr);
    let dir = pod_dir(root.path(), "restart");
    let path = dir.join("0.log");

    // A rotated generation from before the first start, and the live file.
    let mut old = RuntimeWriter::create(&dir.join("0.log.0"));
    for seq in 0..100 {
        old.write(&cri_line("restart", seq));
    }
    let mut writer = RuntimeWriter::create(&path);
    for seq in 100..1100 {
        writer.write(&cri_line("restart", seq));
    }
    let agent = sightline_agent::start(config.clone()).await.unwrap();
    eventually("first run", || (collector.distinct() == 1100).then_some(())).await;
    agent.shutdown().await.unwrap();

    // While the agent is down: the live file grows and is rotated, a
    // whole generation comes and goes under a watched name, and the
    // newest file is left half-written.
    for seq in 1100..1600 {
        writer.write(&cri_line("restart", seq));
    }
    std::fs::rename(&path, dir.join("0.log.1")).unwrap();
    let mut writer = RuntimeWriter::create(&path);
    for seq in 1600..1900 {
        writer.write(&cri_line("restart", seq));
    }
    std::fs::rename(&path, dir.join("0.log.2")).unwrap();
    let mut writer = RuntimeWriter::create(&path);
    for seq in 1900..2100 {
        writer.write(&cri_line("restart", seq));
    }

    let agent = sightline_agent::start(config).await.unwrap();
    eventually("every line after the restart", || {
        (collector.distinct() == 2100).then_some(())
    })
    .await;
    // Finished generations are not read again (give the agent the time
    // to go through every file: it writes checkpoints of all five).
    eventually("checkpoints of every generation", || {
        let text = std::fs::read_to_string(root.path().join("data/checkpoints.json")).ok()?;
        ["0.log\"", "0.log.0\"", "0.log.1\"", "0.log.2\""]
            .iter()
            .all(|name| text.contains(name))
            .then_some(())
    })
    .await;
    let text = agent.metrics().render_prometheus();
    agent.shutdown().await.unwrap();
    assert_eq!(
        collector.total(),
        2100,
        "lines read twice across a clean restart"
    );
    assert_eq!(lost_bytes(&text, "removed"), 0.0, "{text}");
    assert_eq!(lost_bytes(&text, "truncated"), 0.0, "{text}");
    server.stop().await;
}

// 64-byte lines: a 64 KiB read is exactly 1024 of them.
const NAME: &str = "copytruncate-ab";
const LINE: usize = 64;
const READ: usize = 64 * 1024;
const FIRST: usize = READ / LINE;
const BEFORE_CUT: usize = 16 * FIRST;
const AFTER_CUT: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_loss_is_counted_to_the_byte() {
    let (collector, text) = copytruncate_behind(|_, root| root.join("archived.log")).await;
    let lost_lines = missing(&collector, NAME, 0..BEFORE_CUT).len();
    let counted = lost_bytes(&text, "truncated");
    println!(
        "copytruncate, copy out of reach: written {}, received {}, missing {lost_lines} lines = {} bytes, counted lost {counted} bytes",
        BEFORE_CUT + AFTER_CUT,
        collector.distinct(),
        lost_lines * LINE
    );
    assert_eq!(
        lost_lines,
        BEFORE_CUT - FIRST,
        "only the first buffer was read"
    );
    assert_eq!(counted, (lost_lines * LINE) as f64, "{text}");
    assert_eq!(lost_bytes(&text, "removed"), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_with_the_copy_beside_the_file_loses_nothing() {
    // logrotate's copytruncate without compression: `0.log.1` holds what
    // the agent had not read when the file was cut.
    let (collector, text) = copytruncate_behind(|dir, _| dir.join("0.log.1")).await;
    let lost = missing(&collector, NAME, 0..BEFORE_CUT + AFTER_CUT);
    assert!(lost.is_empty(), "{} lines lost", lost.len());
    assert_eq!(
        collector.total(),
        BEFORE_CUT + AFTER_CUT,
        "the copy is not read again from its start"
    );
    assert_eq!(lost_bytes(&text, "truncated"), 0.0, "{text}");
}

/// Writes a file the agent reads one buffer of (its whole memory budget,
/// the collector being down), grows it to 1 MiB, waits until the agent
/// saw that size, copies it to `copy_to(dir, root)` and cuts it, writes a
/// few lines more, starts the collector and waits for those. Returns the
/// collector and the agent's metrics.
async fn copytruncate_behind(
    copy_to: impl FnOnce(&Path, &Path) -> std::path::PathBuf,
) -> (CountingCollector, String) {
    assert_eq!(cri_line(NAME, 0).len(), LINE);
    let root = tempfile::tempdir().unwrap();
    // The collector is down at first: the agent reads one buffer (its
    // whole memory budget) and has to wait while the file grows.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = rotation_config(root.path(), addr);
    config.memory_budget_bytes = READ;
    config.tuning.read_buffer_bytes = READ;
    let path = pod_dir(root.path(), "cut").join("0.log");
    let mut writer = RuntimeWriter::create(&path);
    for seq in 0..FIRST {
        writer.write(&cri_line(NAME, seq));
    }
    let agent = sightline_agent::start(config).await.unwrap();
    let metrics = agent.metrics();
    eventually("the first buffer read", || {
        let text = metrics.render_prometheus();
        (metric(&text, "sightline_agent_bytes_read_total")? == READ as f64).then_some(())
    })
    .await;
    for seq in FIRST..BEFORE_CUT {
        writer.write(&cri_line(NAME, seq));
    }
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(size, (BEFORE_CUT * LINE) as u64);
    // Wait until the agent has looked at the grown file: the size it
    // saw is the best any reader can know of a cut it did not watch.
    eventually("the agent to see the whole file", || {
        let text = metrics.render_prometheus();
        let behind = text
            .lines()
            .find(|line| line.starts_with("sightline_agent_file_bytes_behind{"))?;
        (behind.ends_with(&format!(" {size}"))).then_some(())
    })
    .await;

    // copytruncate: copy, cut, and the writer (O_APPEND) goes on at the
    // new end.
    std::fs::copy(&path, copy_to(path.parent().unwrap(), root.path())).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    for seq in BEFORE_CUT..BEFORE_CUT + AFTER_CUT {
        writer.write(&cri_line(NAME, seq));
    }
    let collector = CountingCollector::default();
    let server = serve(TcpListener::bind(addr).await.unwrap(), collector.clone()).await;
    eventually("the lines after the cut", || {
        missing(&collector, NAME, BEFORE_CUT..BEFORE_CUT + AFTER_CUT)
            .is_empty()
            .then_some(())
    })
    .await;

    let text = metrics.render_prometheus();
    agent.shutdown().await.unwrap();
    server.stop().await;
    (collector, text)
}
