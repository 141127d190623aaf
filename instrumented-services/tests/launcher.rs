//! `sightline-demo` end to end, with stand-ins for the platform: the
//! collector and the agent are shell scripts that record their command line
//! and sleep, while this test answers their health checks and receives the
//! services' spans over OTLP gRPC. The shop services are the real binary.
//!
//! Checks: the child command lines (the contracts with the other crates),
//! the `Sightline UI:` line, the kubelet-style CRI log files with the
//! services' JSON lines, demo traffic reaching the gateway, and a clean
//! shutdown on SIGTERM.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

const WAIT: Duration = Duration::from_secs(30);

/// Counts the spans it receives.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let count: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        *self.spans.lock().unwrap() += count;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The launcher process; stopped on drop so a failing test leaves nothing:
/// SIGTERM first, so the launcher stops its children (SIGKILL would orphan
/// them), then SIGKILL if it does not exit.
struct Launcher {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound, then released).
/// A loopback port nothing listens on, never the same twice in this test
/// binary: the probe listener is closed at once, so the kernel may hand the
/// same port to the next probe (two flags got one port, and the launcher
/// refused them).
fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Serves the probes the launcher waits for (`GET /-/ready`, and
/// `/health`) with 200 on a fresh loopback port.
async fn health_endpoint() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route("/-/ready", axum::routing::get(|| async { "ready" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Links (or copies) a built binary into `directory`.
fn install(binary: &str, directory: &Path, name: &str) {
    let target = directory.join(name);
    if std::fs::hard_link(binary, &target).is_err() {
        std::fs::copy(binary, &target).unwrap();
    }
}

/// A stand-in platform binary: records its arguments, one per line, in
/// `<name>.args` beside it, then sleeps until terminated.
fn fake_platform_binary(directory: &Path, name: &str) {
    fake_binary(directory, name, "exec sleep 600");
}

/// A script `name` in `directory` that records its arguments, then runs `then`.
fn fake_binary(directory: &Path, name: &str, then: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = directory.join(name);
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n{then}\n",
        directory.join(format!("{name}.args")).display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn recorded_args(directory: &Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(directory.join(format!("{name}.args"))).unwrap();
    text.lines().map(str::to_owned).collect()
}

/// The ports the launcher is told to use.
struct Ports {
    grpc: u16,
    otlp_http: u16,
    ui: u16,
    agent: u16,
    gateway: u16,
    order: u16,
}

/// `<bin>/sightline-demo --no-build` with the given data dir and ports.
fn launcher_command(bin: &Path, data_dir: &Path, ports: &Ports) -> Command {
    let mut command = Command::new(bin.join("sightline-demo"));
    command
        .arg("--no-build")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--collector-grpc-port", &ports.grpc.to_string()])
        .args(["--collector-http-port", &ports.otlp_http.to_string()])
        .args(["--ui-port", &ports.ui.to_string()])
        .args(["--agent-port", &ports.agent.to_string()])
        .args(["--gateway-port", &ports.gateway.to_string()])
        .args(["--order-port", &ports.order.to_string()])
        .args(["--auth-port", &free_port().to_string()])
        .args(["--inventory-port", &free_port().to_string()])
        .args(["--payment-port", &free_port().to_string()])
        .args(["--notification-port", &free_port().to_string()])
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env_remove("CARGO")
        .env_remove("RUST_LOG");
    command
}

/// The `0.log` files of the pods of `service` under `pods`.
fn pod_logs(pods: &Path, service: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(pods) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with(&format!("shop_{service}-"))
        })
        .map(|entry| entry.path().join(service).join("0.log"))
        .filter(|path| path.is_file())
        .collect()
}

/// The JSON payloads of the `stdout F` entries of a CRI file.
fn cri_json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let timestamp = parts.next()?;
            assert_eq!(timestamp.len(), 30, "RFC3339Nano timestamp in {line}");
            assert!(timestamp.ends_with('Z'), "{line}");
            let stream = parts.next()?;
            let tag = parts.next()?;
            assert!(["stdout", "stderr"].contains(&stream), "{line}");
            assert!(["F", "P"].contains(&tag), "{line}");
            (stream == "stdout" && tag == "F").then(|| serde_json::from_str(parts.next()?).ok())?
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_the_stack_writes_cri_logs_and_stops_cleanly() {
    let workspace = tempfile::tempdir().unwrap();
    let bin = workspace.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    install(env!("CARGO_BIN_EXE_sightline-demo"), &bin, "sightline-demo");
    install(env!("CARGO_BIN_EXE_shop-service"), &bin, "shop-service");
    fake_platform_binary(&bin, "sightline-collector");
    fake_platform_binary(&bin, "sightline-agent");
    let data_dir = workspace.path().join("data");

    let receiver = Receiver::default();
    let otlp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_port = otlp.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(otlp)),
    );
    let ui = health_endpoint().await;
    let agent = health_endpoint().await;
    let ports = Ports {
        grpc: grpc_port,
        otlp_http: free_port(),
        ui: ui.port(),
        agent: agent.port(),
        gateway: free_port(),
        order: free_port(),
    };
    let gateway_port = ports.gateway;
    let mut child = launcher_command(&bin, &data_dir, &ports)
        .args(["--rate", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let launcher = Launcher {
        child,
        stdout: Arc::new(Mutex::new(Vec::new())),
    };
    let collected = Arc::clone(&launcher.stdout);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            collected.lock().unwrap().push(line);
        }
    });
    let mut launcher = launcher;

    let ui_line = format!("Sightline UI: http://127.0.0.1:{}/", ui.port());
    eventually("the UI line", || {
        let lines = launcher.stdout.lock().unwrap();
        lines.contains(&ui_line).then_some(())
    })
    .await;

    // The contracts with the collector and the agent.
    let data = std::path::absolute(&data_dir).unwrap();
    let data = data.display();
    let mut collector_args = recorded_args(&bin, "sightline-collector");
    // The dashboards: this repository's, read by the collector at run time.
    let dashboards = collector_args.pop().expect("a dashboards directory");
    assert_eq!(collector_args.pop().as_deref(), Some("--dashboards-dir"));
    assert!(
        Path::new(&dashboards).join("overview.json").is_file(),
        "{dashboards}"
    );
    assert_eq!(
        collector_args,
        [
            "--data-dir".to_owned(),
            format!("{data}/collector"),
            "--otlp-grpc-addr".to_owned(),
            format!("127.0.0.1:{grpc_port}"),
            "--otlp-http-addr".to_owned(),
            format!("127.0.0.1:{}", ports.otlp_http),
            "--http-addr".to_owned(),
            format!("127.0.0.1:{}", ui.port()),
            "--config".to_owned(),
            format!("{data}/collector/sightline.yml"),
        ]
    );
    // The config scrapes every service and the agent and loads the rules.
    let config = std::fs::read_to_string(format!("{data}/collector/sightline.yml")).unwrap();
    assert!(
        config.contains(&format!("\"127.0.0.1:{}\"", agent.port())),
        "{config}"
    );
    assert!(config.contains("labels: { service: payment }"), "{config}");
    assert!(std::path::Path::new(&format!("{data}/collector/rules/shop.rules.yml")).is_file());
    assert_eq!(
        recorded_args(&bin, "sightline-agent"),
        [
            "--config".to_owned(),
            format!("{data}/agent/agent.toml"),
            "--include".to_owned(),
            format!("{data}/pods/*/*/*.log"),
            "--collector".to_owned(),
            format!("http://127.0.0.1:{grpc_port}"),
            "--data-dir".to_owned(),
            format!("{data}/agent"),
            "--http-addr".to_owned(),
            format!("127.0.0.1:{}", agent.port()),
        ]
    );

    // The agent's config points it at the demo's stand-in Kubernetes API,
    // which serves the services' pods on the demo's node.
    let agent_config = std::fs::read_to_string(format!("{data}/agent/agent.toml")).unwrap();
    let api_server = agent_config
        .lines()
        .find_map(|line| line.strip_prefix("api_server = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{agent_config}"));
    assert!(
        agent_config.contains("node_name = \"demo-node\""),
        "{agent_config}"
    );
    let pods: serde_json::Value = reqwest::get(format!("{api_server}/api/v1/pods"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The first page (the stand-in pages by two): pods of the shop's
    // services, each owned by a ReplicaSet, on the demo's node.
    let items = pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{pods}");
    for pod in items {
        assert_eq!(
            pod["metadata"]["labels"]["app.kubernetes.io/part-of"], "shop",
            "{pod}"
        );
        assert_eq!(
            pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet",
            "{pod}"
        );
        assert_eq!(pod["spec"]["nodeName"], "demo-node", "{pod}");
    }

    // Demo traffic reaches both services; their stdout is in CRI files with
    // the request id of each order in both.
    let pods = data_dir.join("pods");
    let traced_requests = |service: &str| -> Vec<String> {
        pod_logs(&pods, service)
            .iter()
            .flat_map(|path| cri_json_lines(path))
            .filter(|line| line["message"] == "request completed" && line["trace_id"].is_string())
            .filter_map(|line| line["request_id"].as_str().map(str::to_owned))
            .collect()
    };
    let shared_request = eventually("an order logged by both services", || {
        let order_requests = traced_requests("order");
        traced_requests("gateway")
            .into_iter()
            .find(|request_id| order_requests.contains(request_id))
    })
    .await;
    assert_eq!(shared_request.len(), 36, "fresh UUID-like request id");
    assert_eq!(pod_logs(&pods, "gateway").len(), 1);
    eventually("spans exported to the collector port", || {
        (*receiver.spans.lock().unwrap() > 0).then_some(())
    })
    .await;
    assert!(data_dir.join("logs/sightline-collector.log").is_file());
    assert!(data_dir.join("logs/sightline-agent.log").is_file());

    // SIGTERM: everything stops, the launcher exits 0, services said goodbye.
    let pid = rustix::process::Pid::from_child(&launcher.child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let child = &mut launcher.child;
    let status = eventually("the launcher to exit", || child.try_wait().unwrap()).await;
    assert!(status.success(), "launcher exited with {status}");
    for service in ["gateway", "order"] {
        let lines = cri_json_lines(&pod_logs(&pods, service)[0]);
        assert!(
            lines.iter().any(|line| line["message"] == "stopped"),
            "{service} was stopped gracefully"
        );
    }
    let gateway_ready = std::net::TcpStream::connect(("127.0.0.1", gateway_port));
    assert!(gateway_ready.is_err(), "gateway no longer listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_dies_is_reported_with_its_log_file() {
    let workspace = tempfile::tempdir().unwrap();
    let bin = workspace.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    install(env!("CARGO_BIN_EXE_sightline-demo"), &bin, "sightline-demo");
    install(env!("CARGO_BIN_EXE_shop-service"), &bin, "shop-service");
    fake_platform_binary(&bin, "sightline-collector");
    fake_binary(
        &bin,
        "sightline-agent",
        "echo 'agent: bad config' >&2; exit 3",
    );
    let data_dir = workspace.path().join("data");
    let ports = Ports {
        grpc: free_port(),
        otlp_http: free_port(),
        ui: health_endpoint().await.port(),
        // Nothing answers here, so the agent can only be seen dying.
        agent: free_port(),
        gateway: free_port(),
        order: free_port(),
    };

    let mut command = launcher_command(&bin, &data_dir, &ports);
    command.args(["--rate", "0"]).stdin(Stdio::null());
    // Bounded by the launcher's own readiness timeout.
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let status = output.status;
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(!status.success());
    let agent_log = data_dir.join("logs/sightline-agent.log");
    assert!(
        stderr.contains("sightline-agent exited (exit status: 3)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&agent_log.display().to_string()),
        "{stderr}"
    );
    let agent_output = std::fs::read_to_string(&agent_log).unwrap();
    assert_eq!(agent_output, "agent: bad config\n");
    assert!(
        !std::fs::exists(data_dir.join("pods/")).unwrap()
            || std::fs::read_dir(data_dir.join("pods"))
                .unwrap()
                .next()
                .is_none(),
        "no service was started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_only_runs_the_collector_and_the_agent_and_no_shop() {
    let workspace = tempfile::tempdir().unwrap();
    let bin = workspace.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    install(env!("CARGO_BIN_EXE_sightline-demo"), &bin, "sightline-demo");
    install(env!("CARGO_BIN_EXE_shop-service"), &bin, "shop-service");
    fake_platform_binary(&bin, "sightline-collector");
    fake_platform_binary(&bin, "sightline-agent");
    let data_dir = workspace.path().join("data");
    let ui = health_endpoint().await;
    let ports = Ports {
        grpc: free_port(),
        otlp_http: free_port(),
        ui: ui.port(),
        agent: health_endpoint().await.port(),
        gateway: free_port(),
        order: free_port(),
    };
    let mut child = launcher_command(&bin, &data_dir, &ports)
        .args(["--platform-only", "--rate", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut launcher = Launcher {
        child,
        stdout: Arc::new(Mutex::new(Vec::new())),
    };
    let collected = Arc::clone(&launcher.stdout);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            collected.lock().unwrap().push(line);
        }
    });
    let ui_line = format!("Sightline UI: http://127.0.0.1:{}/", ui.port());
    eventually("the UI line", || {
        let lines = launcher.stdout.lock().unwrap();
        lines.contains(&ui_line).then_some(())
    })
    .await;
    assert!(bin.join("sightline-collector.args").is_file());
    assert!(bin.join("sightline-agent.args").is_file());
    let pods: Vec<_> = std::fs::read_dir(data_dir.join("pods")).unwrap().collect();
    assert!(pods.is_empty(), "no shop service runs: {pods:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ports.gateway)).is_err(),
        "no gateway"
    );

    let pid = rustix::process::Pid::from_child(&launcher.child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let child = &mut launcher.child;
    let status = eventually("the launcher to exit", || child.try_wait().unwrap()).await;
    assert!(status.success(), "launcher exited with {status}");
}

/// The README's first command is `cargo run --release -p sightline-demo`; with
/// two binaries in the package, cargo needs `default-run` to know which.
#[test]
fn the_readme_run_command_picks_the_launcher() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    assert!(
        manifest
            .lines()
            .any(|line| line.trim() == "default-run = \"sightline-demo\""),
        "instrumented-services/Cargo.toml must set default-run = \"sightline-demo\""
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains("cargo run --release -p sightline-demo"),
        "README's first command changed"
    );
}
