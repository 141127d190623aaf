//! Nothing acknowledged is lost, nothing is stored twice: `kill -9` during
//! sustained ingest, and a full disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use sightline_tests::{CollectorProcess, free_port, poll_until};

const SERVICE: &str = "durability";

fn text(value: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    })
}

/// A batch of records whose bodies are `<client>-<batch>-<index>` ids.
fn batch(client: usize, batch: usize, size: usize) -> (ExportLogsServiceRequest, Vec<String>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let ids: Vec<String> = (0..size)
        .map(|i| format!("rec-{client}-{batch}-{i}"))
        .collect();
    let log_records = ids
        .iter()
        .map(|id| LogRecord {
            time_unix_nano: now,
            severity_number: 9,
            body: text(id),
            attributes: vec![KeyValue {
                key: "padding".into(),
                value: text(&"x".repeat(200)),
                ..KeyValue::default()
            }],
            ..LogRecord::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: text(SERVICE),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    };
    (request, ids)
}

/// Counts how often each record id is stored.
async fn stored_ids(collector: &CollectorProcess) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in collector.all_records(&format!("service:{SERVICE}")).await {
        *counts
            .entry(record["body"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    counts
}

async fn wait_until_stored(collector: &CollectorProcess, ids: &[String]) -> HashMap<String, usize> {
    poll_until(
        "every acknowledged record to be searchable",
        Duration::from_secs(90),
        || async {
            let stored = stored_ids(collector).await;
            let missing = ids.iter().filter(|id| !stored.contains_key(*id)).count();
            if missing == 0 {
                Ok(Some(stored))
            } else {
                Err(format!("{missing} of {} missing", ids.len()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_nothing_acknowledged_and_duplicates_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut collector = CollectorProcess::start(data.path(), &[]).await;
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let endpoint = collector.grpc_endpoint();
    let mut clients = Vec::new();
    for client in 0..4 {
        let (acknowledged, endpoint) = (acknowledged.clone(), endpoint.clone());
        clients.push(tokio::spawn(async move {
            let mut grpc = LogsServiceClient::connect(endpoint).await.expect("connect");
            // Bounded: stops at the first error (the kill) or after 2000 batches.
            for number in 0..2000 {
                let (request, ids) = batch(client, number, 50);
                match grpc.export(request).await {
                    Ok(_) => acknowledged.lock().unwrap().extend(ids),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill in the middle of sustained ingest.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().unwrap().len() < 5_000 {
        assert!(
            Instant::now() < deadline,
            "ingest too slow to reach 5000 records"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    collector.kill9();
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let collector = CollectorProcess::start(data.path(), &[]).await;
    let stored = wait_until_stored(&collector, &acknowledged).await;
    let duplicated: Vec<_> = stored.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        duplicated.is_empty(),
        "stored more than once: {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    assert!(stored.len() >= acknowledged.len());
    // Records sent but not acknowledged may be stored too (they reached the
    // WAL before the kill); only those, and only once.
    assert!(stored.keys().all(|id| id.starts_with("rec-")));
}

/// A collector on `data` whose log output (stderr) goes to `log_file`.
async fn start_logging_to(
    data: &std::path::Path,
    log_file: &std::path::Path,
    extra_args: &[&str],
) -> CollectorProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .expect("open the collector's log file");
    let ports = (free_port(), free_port(), free_port());
    CollectorProcess::start_on(data, ports, |command| {
        command
            .args(extra_args)
            .env("NO_COLOR", "1")
            // Room to commit what was acknowledged when the disk filled.
            .env("SIGHTLINE_DISK_RESERVE_BYTES", "4194304")
            .stderr(log);
    })
    .await
}

/// Sends batches until one is refused; returns the ids acknowledged and the
/// refusal, which must be retryable.
async fn ingest_until_refused(
    grpc: &mut LogsServiceClient<tonic::transport::Channel>,
    first_batch: usize,
) -> (Vec<String>, tonic::Status) {
    let mut acknowledged = Vec::new();
    for number in first_batch..first_batch + 1000 {
        let (request, ids) = batch(0, number, 100);
        match grpc.export(request).await {
            Ok(_) => acknowledged.extend(ids),
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                    ),
                    "a full disk is a retryable error, got {status:?}"
                );
                return (acknowledged, status);
            }
        }
    }
    panic!("ingest was never refused on a full disk");
}

/// `/-/healthy` answers 200 and `/-/ready` starts with `readiness` (200
/// only when it is "ready").
async fn assert_probes(collector: &CollectorProcess, readiness: &str) {
    let http = reqwest::Client::new();
    let healthy = http.get(collector.url("/-/healthy")).send().await.unwrap();
    assert_eq!(healthy.status(), 200, "alive");
    let ready = http.get(collector.url("/-/ready")).send().await.unwrap();
    let status = ready.status();
    let body = ready.text().await.unwrap();
    assert!(body.starts_with(readiness), "/-/ready: {status} {body}");
    assert_eq!(
        status == 200,
        readiness == "ready",
        "/-/ready: {status} {body}"
    );
}

/// Needs root to mount a small tmpfs.
///
/// The disk fills while records are being acknowledged; the records
/// acknowledged until then are searchable at once (not when space returns),
/// ingest is refused with a retryable status and readiness fails (liveness
/// does not), a restart on the full disk serves queries and refuses ingest,
/// and freeing space resumes ingest and readiness without a restart. A
/// state change is logged once, not every retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_ingest_loses_nothing_and_recovers() {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !is_root && std::env::var_os("SIGHTLINE_SKIP_ROOT_TESTS").is_some() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    assert!(
        is_root,
        "this test mounts a tmpfs and needs root (set SIGHTLINE_SKIP_ROOT_TESTS=1 to skip it)"
    );
    let mount_point = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
        .arg(mount_point.path())
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mount a 48 MiB tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount_point.path().to_path_buf());
    let data = mount_point.path().join("collector");
    // The log lives off the small disk.
    let logs_dir = tempfile::tempdir().unwrap();
    let log_file = logs_dir.path().join("collector.log");
    let args = ["--commit-interval", "200ms"];
    let mut collector = start_logging_to(&data, &log_file, &args).await;
    let mut grpc = LogsServiceClient::connect(collector.grpc_endpoint())
        .await
        .unwrap();

    let mut acknowledged = Vec::new();
    for number in 0..10 {
        let (request, ids) = batch(0, number, 100);
        grpc.export(request).await.expect("ingest with free space");
        acknowledged.extend(ids);
    }
    wait_until_stored(&collector, &acknowledged).await;
    assert_probes(&collector, "ready").await;

    // Fill the disk, then give back a little: room for a batch or two in
    // the WAL, not for the index commit that makes them searchable.
    let filler = mount_point.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        let size = file.metadata().unwrap().len();
        file.set_len(size.saturating_sub(48 * 1024)).unwrap();
    }
    let (last_acknowledged, _) = ingest_until_refused(&mut grpc, 10).await;
    acknowledged.extend(last_acknowledged);
    // Searchable while the disk is still full.
    wait_until_stored(&collector, &acknowledged).await;
    let (more, _) = ingest_until_refused(&mut grpc, 1000).await;
    assert!(
        more.is_empty(),
        "the disk is full: nothing more acknowledged"
    );
    // Not ready (a load balancer stops sending), still alive (a restart
    // would not help).
    assert_probes(&collector, "not ready: the disk is full").await;

    // A restart on the full disk: queries served, ingest refused.
    collector.kill9();
    let collector = start_logging_to(&data, &log_file, &args).await;
    let stored = wait_until_stored(&collector, &acknowledged).await;
    assert!(
        stored.values().all(|count| *count == 1),
        "nothing stored twice"
    );
    let mut grpc = LogsServiceClient::connect(collector.grpc_endpoint())
        .await
        .unwrap();
    let (more, refusal) = ingest_until_refused(&mut grpc, 2000).await;
    assert!(
        more.is_empty(),
        "a collector started on a full disk is read-only"
    );
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    assert_probes(&collector, "not ready: the disk is full").await;
    // Idle and read-only for a while: the indexer and the disk probe retry.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Free the space: ingest resumes without a restart, nothing acknowledged was lost.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut number = 3000;
    loop {
        let (request, ids) = batch(0, number, 100);
        match grpc.export(request).await {
            Ok(_) => {
                acknowledged.extend(ids);
                break;
            }
            Err(status) => assert!(
                Instant::now() < deadline,
                "ingest did not resume after space was freed: {status:?}"
            ),
        }
        number += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = wait_until_stored(&collector, &acknowledged).await;
    assert!(
        stored.values().all(|count| *count == 1),
        "nothing stored twice"
    );
    assert_probes(&collector, "ready").await;

    // Each state change once per process (two processes), no error per retry.
    let log = std::fs::read_to_string(&log_file).unwrap();
    let lines = |needle: &str| log.lines().filter(|line| line.contains(needle)).count();
    let pipeline_errors = log
        .lines()
        .filter(|line| line.contains("ERROR") && line.contains("sightline_pipeline"))
        .count();
    assert!(
        pipeline_errors <= 2,
        "{pipeline_errors} errors logged:\n{log}"
    );
    assert!(lines("disk is full") <= 2, "{log}");
    assert_eq!(lines("disk space is available again"), 1, "{log}");
}
