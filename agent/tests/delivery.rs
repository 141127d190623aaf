//! Delivery under the conditions that make other shippers lose or repeat
//! lines: rotation by rename under load with a slow collector,
//! copytruncate, inode reuse, `kill -9` mid-stream, the collector down for
//! a while. Real files, real rotations, a real gRPC collector on loopback;
//! every line is counted.

mod common;
mod sink_faults;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    CountingCollector, RuntimeWriter, body, cri_line, eventually, metric, pod_dir, serve,
    start_collector,
};
use sightline_agent::Config;
use sightline_agent::config::Tuning;
use tokio::net::TcpListener;

fn fast_config(root: &Path, collector: std::net::SocketAddr) -> Config {
    Config {
        include: vec![format!("{}/pods/*/*/*.log", root.display())],
        collector: format!("http://{collector}"),
        data_dir: root.join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        host_name: "node-test".to_owned(),
        tuning: Tuning {
            discovery_interval: Duration::from_millis(50),
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

fn assert_all_delivered(collector: &CountingCollector, name: &str, lines: usize) {
    let counts = collector.counts();
    let missing: Vec<usize> = (0..lines)
        .filter(|seq| !counts.contains_key(&body(name, *seq)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {lines} lines lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotations_under_load_with_slow_collector_lose_nothing() {
    let root = tempfile::tempdir().unwrap();
    let collector = CountingCollector::default();
    collector.delay_ms.store(5, Ordering::Relaxed);
    let server = start_collector(collector.clone()).await;
    let agent = sightline_agent::start(fast_config(root.path(), server.addr))
        .await
        .unwrap();

    const LINES: usize = 20_000;
    const ROTATE_EVERY: usize = 3_000;
    let path = pod_dir(root.path(), "api").join("0.log");
    let writer = std::thread::spawn(move || {
        let mut writer = RuntimeWriter::create(&path);
        let mut rotations = 0;
        let mut late_writes_left = 0;
        for seq in 0..LINES {
            writer.write(&cri_line("api", seq));
            if late_writes_left > 0 {
                late_writes_left -= 1;
                if late_writes_left == 0 {
                    writer = RuntimeWriter::create(&path);
                }
            }
            if seq % ROTATE_EVERY == ROTATE_EVERY - 1 {
                // kubelet renames; the runtime reopens a little later, so a
                // few lines still land in the renamed file.
                rotations += 1;
                std::fs::rename(&path, path.with_extension(format!("log.{rotations}"))).unwrap();
                late_writes_left = 3;
            }
            // ~250 ms per generation: several discovery intervals, as
            // with kubelet (it checks sizes every 10 s). A generation
            // renamed before discovery ever saw its name cannot be found.
            if seq % 100 == 0 {
                std::thread::sleep(Duration::from_millis(8));
            }
        }
        rotations
    });
    let rotations = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    assert!(rotations >= 6);

    eventually("every line", || {
        (collector.distinct() >= LINES).then_some(())
    })
    .await;
    assert_all_delivered(&collector, "api", LINES);
    agent.shutdown().await.unwrap();
    // No restart happened: nothing should have been sent twice.
    assert_eq!(collector.total(), LINES, "duplicates without a restart");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_writes_to_a_renamed_file_are_read() {
    let root = tempfile::tempdir().unwrap();
    let collector = CountingCollector::default();
    let server = start_collector(collector.clone()).await;
    let agent = sightline_agent::start(fast_config(root.path(), server.addr))
        .await
        .unwrap();
    let path = pod_dir(root.path(), "late").join("0.log");
    let mut old = RuntimeWriter::create(&path);
    old.write(&cri_line("late", 0));
    eventually("first line", || (collector.distinct() == 1).then_some(())).await;
    std::fs::rename(&path, path.with_extension("log.1")).unwrap();
    // The runtime has not reopened yet: it still writes to the old file.
    old.write(&cri_line("late", 1));
    let mut new = RuntimeWriter::create(&path);
    new.write(&cri_line("late", 2));
    old.write(&cri_line("late", 3));
    eventually("all four lines", || {
        (collector.distinct() == 4).then_some(())
    })
    .await;
    assert_all_delivered(&collector, "late", 4);
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_restarts_at_zero() {
    let root = tempfile::tempdir().unwrap();
    let collector = CountingCollector::default();
    let server = start_collector(collector.clone()).await;
    let agent = sightline_agent::start(fast_config(root.path(), server.addr))
        .await
        .unwrap();
    let path = pod_dir(root.path(), "web").join("0.log");
    let mut writer = RuntimeWriter::create(&path);
    for seq in 0..1000 {
        writer.write(&cri_line("web", seq));
    }
    eventually("first part", || {
        (collector.distinct() == 1000).then_some(())
    })
    .await;
    // logrotate copytruncate: copy aside, truncate in place; the writer
    // (O_APPEND) goes on at the new end.
    std::fs::copy(&path, path.with_extension("log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    for seq in 1000..1500 {
        writer.write(&cri_line("web", seq));
    }
    eventually("second part", || {
        (collector.distinct() == 1500).then_some(())
    })
    .await;
    assert_all_delivered(&collector, "web", 1500);
    let metrics = agent.metrics().render_prometheus();
    let resets = metric(
        &metrics,
        "sightline_agent_checkpoint_resets_total{reason=\"truncated\"}",
    )
    .unwrap()
        + metric(
            &metrics,
            "sightline_agent_checkpoint_resets_total{reason=\"fingerprint\"}",
        )
        .unwrap();
    assert!(resets >= 1.0, "{metrics}");
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_file_reusing_an_inode_is_read_from_its_start() {
    use std::os::unix::fs::MetadataExt;

    let root = tempfile::tempdir().unwrap();
    let collector = CountingCollector::default();
    let server = start_collector(collector.clone()).await;
    let config = fast_config(root.path(), server.addr);
    let dir = pod_dir(root.path(), "reuse");
    let path = dir.join("0.log");
    let mut writer = RuntimeWriter::create(&path);
    for seq in 0..10 {
        writer.write(&cri_line("old", seq));
    }
    drop(writer);
    let old_inode = std::fs::metadata(&path).unwrap().ino();
    let agent = sightline_agent::start(config.clone()).await.unwrap();
    eventually("old file", || (collector.distinct() == 10).then_some(())).await;
    agent.shutdown().await.unwrap();

    // While the agent is down the file is deleted and a new one takes its
    // inode (ext4 and tmpfs hand a freed inode out again at once).
    std::fs::remove_file(&path).unwrap();
    let mut attempts = Vec::new();
    let reused = loop {
        let candidate = dir.join(format!("candidate-{}", attempts.len()));
        std::fs::write(&candidate, b"").unwrap();
        if std::fs::metadata(&candidate).unwrap().ino() == old_inode {
            break Some(candidate);
        }
        attempts.push(candidate);
        if attempts.len() == 50 {
            break None;
        }
    };
    for attempt in attempts {
        std::fs::remove_file(attempt).unwrap();
    }
    let reused = reused.expect("the file system did not reuse the inode");
    std::fs::rename(&reused, &path).unwrap();
    let mut writer = RuntimeWriter::create(&path);
    for seq in 0..30 {
        writer.write(&cri_line("new", seq));
    }
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), old_inode);

    let agent = sightline_agent::start(config).await.unwrap();
    eventually("new file", || (collector.distinct() == 40).then_some(())).await;
    assert_all_delivered(&collector, "new", 30);
    let metrics = agent.metrics().render_prometheus();
    assert_eq!(
        metric(
            &metrics,
            "sightline_agent_checkpoint_resets_total{reason=\"fingerprint\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_then_back_with_a_small_budget_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = CountingCollector::default();
    let server = serve(listener, collector.clone()).await;
    let mut config = fast_config(root.path(), addr);
    config.memory_budget_bytes = 256 * 1024;
    let budget = config.memory_budget_bytes as f64;
    let agent = sightline_agent::start(config).await.unwrap();
    let metrics = agent.metrics();

    let path = pod_dir(root.path(), "cart").join("0.log");
    let mut writer = RuntimeWriter::create(&path);
    for seq in 0..2000 {
        writer.write(&cri_line("cart", seq));
    }
    eventually("lines before the outage", || {
        (collector.distinct() == 2000).then_some(())
    })
    .await;
    server.stop().await;

    // 30 000 lines (~2 MB) while the collector is down: far more than the
    // budget, so readers must pause.
    const TOTAL: usize = 32_000;
    for seq in 2000..TOTAL {
        writer.write(&cri_line("cart", seq));
    }
    eventually("failed exports", || {
        let text = metrics.render_prometheus();
        (metric(
            &text,
            "sightline_agent_send_retries_total{reason=\"unavailable\"}",
        )? >= 3.0)
            .then_some(())
    })
    .await;
    let text = metrics.render_prometheus();
    let in_use = metric(&text, "sightline_agent_memory_budget_in_use_bytes").unwrap();
    assert!(in_use <= budget, "{in_use} > {budget}");
    let bytes_read = metric(&text, "sightline_agent_bytes_read_total").unwrap();
    let file_len = std::fs::metadata(&path).unwrap().len() as f64;
    assert!(
        bytes_read < file_len,
        "readers should pause: read {bytes_read} of {file_len}"
    );

    let listener = TcpListener::bind(addr).await.unwrap();
    let server = serve(listener, collector.clone()).await;
    eventually("every line after the outage", || {
        (collector.distinct() == TOTAL).then_some(())
    })
    .await;
    assert_all_delivered(&collector, "cart", TOTAL);
    agent.shutdown().await.unwrap();
    server.stop().await;
}

/// Starts the real binary with a config file plus the flags other
/// components use.
fn spawn_agent(root: &Path, collector: std::net::SocketAddr) -> Child {
    let config_path = root.join("agent.toml");
    std::fs::write(
        &config_path,
        "[tuning]\ndiscovery_interval = \"50ms\"\npoll_interval = \"20ms\"\nbatch_max_wait = \"20ms\"\ncheckpoint_interval = \"50ms\"\nretry_initial_backoff = \"20ms\"\nretry_max_backoff = \"200ms\"\n",
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_sightline-agent"))
        .arg("--config")
        .arg(&config_path)
        .arg("--include")
        .arg(format!("{}/pods/*/*/*.log", root.display()))
        .arg("--collector")
        .arg(format!("http://{collector}"))
        .arg("--data-dir")
        .arg(root.join("data"))
        .arg("--http-addr")
        .arg("127.0.0.1:0")
        .arg("--host-name")
        .arg("node-kill")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn checkpoint_offset(root: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(root.join("data/checkpoints.json")) else {
        return 0;
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["files"][0]["offset"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_duplicates_only_the_unacknowledged_window() {
    let root = tempfile::tempdir().unwrap();
    let collector = CountingCollector::default();
    collector.delay_ms.store(3, Ordering::Relaxed);
    let server = start_collector(collector.clone()).await;
    const LINES: usize = 40_000;
    let line_len = cri_line("kill", 0).len() as u64;
    let path = pod_dir(root.path(), "kill").join("0.log");
    let mut writer = RuntimeWriter::create(&path);
    for seq in 0..LINES / 2 {
        writer.write(&cri_line("kill", seq));
    }

    let mut child = spawn_agent(root.path(), server.addr);
    // Kill mid-stream once a checkpoint exists: on a loaded machine 5,000
    // lines can be acknowledged before the first checkpoint interval ends.
    let data = root.path().to_path_buf();
    eventually("some lines delivered and checkpointed", || {
        (collector.distinct() >= 5_000 && checkpoint_offset(&data) > 0).then_some(())
    })
    .await;
    child.kill().unwrap(); // SIGKILL: no flush, no final checkpoint
    child.wait().unwrap();
    let checkpoint = checkpoint_offset(root.path());
    let delivered_before = collector.distinct();
    assert!(checkpoint > 0, "a checkpoint was written before the kill");
    assert!(checkpoint <= delivered_before as u64 * line_len);

    // The writer goes on while the agent is down.
    for seq in LINES / 2..LINES {
        writer.write(&cri_line("kill", seq));
    }
    let mut child = spawn_agent(root.path(), server.addr);
    eventually("every line after restart", || {
        (collector.distinct() == LINES).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    assert_all_delivered(&collector, "kill", LINES);
    let counts = collector.counts();
    let first_resendable = (checkpoint / line_len) as usize;
    let duplicated: Vec<usize> = (0..LINES)
        .filter(|seq| counts[&body("kill", *seq)] > 1)
        .collect();
    assert!(
        duplicated.iter().all(|seq| *seq >= first_resendable),
        "lines before the checkpoint were resent: {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    // Only lines that existed before the kill can have been sent twice.
    // (No bound from `delivered_before`: exports in flight at the kill may
    // still be counted after it was read.)
    assert!(duplicated.iter().all(|seq| *seq < LINES / 2));
    eprintln!(
        "kill -9: checkpoint at line {first_resendable}, {delivered_before} delivered before, {} duplicated",
        duplicated.len()
    );
    server.stop().await;
}
