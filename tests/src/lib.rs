//! Harness for Sightline's end-to-end tests: real binaries on loopback.
//!
//! The binaries are the workspace's own, built by `cargo build --workspace
//! --bins` (the README's test command does that first). Every wait is a
//! bounded poll that fails with what it was waiting for.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod engines;

/// Path of a workspace binary in the same target directory as this test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let exe_dir = exe.parent().expect("the executable's directory");
    // A test: target/<profile>/deps/<test> -> target/<profile>/<name>; one
    // of this crate's binaries: target/<profile>/<bin> -> its sibling.
    let path = match exe_dir.join(name) {
        sibling if sibling.exists() => sibling,
        _ => exe_dir
            .parent()
            .expect("test executable lives in target/<profile>/deps")
            .join(name),
    };
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
///
/// Taken below the kernel's ephemeral range, at random: a port from that
/// range (what binding port 0 gives) may be handed, before the process it
/// is meant for binds it, to any of the outgoing connections the tests
/// running alongside open by the thousand (a SeaweedFS start failed so).
pub fn free_port() -> u16 {
    // Never give one out twice in a test binary (the probe listener closes
    // at once).
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(12_000));
    loop {
        // A different sequence in each test process: its pid, the clock.
        let draw = DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(
            &(std::process::id(), draw, std::time::SystemTime::now()),
            &mut hasher,
        );
        let candidate = low + (std::hash::Hasher::finish(&hasher) % u64::from(high - low)) as u16;
        let free = TcpListener::bind(("127.0.0.1", candidate)).is_ok();
        if free
            && GIVEN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(candidate)
        {
            return candidate;
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout`
/// naming what it waited for and the last thing it saw.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing yet");
    loop {
        match check().await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(error) => last = error,
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `url` until it answers 2xx, or fails after `timeout`.
pub async fn wait_healthy(http: &reqwest::Client, url: &str, timeout: Duration) {
    poll_until(&format!("{url} to answer 200"), timeout, || async {
        match http.get(url).send().await {
            Ok(response) if response.status().is_success() => Ok(Some(())),
            Ok(response) => Err(format!("status {}", response.status())),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
}

/// `GET <url>` as JSON, for polls: an error (a refused connection, a
/// status other than 2xx, a body that is not JSON) as text.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("{url}: status {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

/// Waits until a collector's readiness probe (`url`) says its WAL replay is
/// over: ready, or not ready for another reason (a full disk).
pub async fn wait_started(http: &reqwest::Client, url: &str) {
    poll_until(
        &format!("{url} to say the replay is done"),
        Duration::from_secs(60),
        || async {
            let response = http
                .get(url)
                .send()
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status();
            let body = response.text().await.map_err(|error| error.to_string())?;
            if status.is_success() || !body.contains("replaying") {
                Ok(Some(()))
            } else {
                Err(format!("status {status}: {body}"))
            }
        },
    )
    .await
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {name}: {error}"));
        Process {
            name: name.to_string(),
            child,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends signal `name` (`STOP`, `CONT`, `INT`, `QUIT`, ...) with kill(1),
    /// without waiting for anything.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Its exit status if it has exited (and reaps it), without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit: its status, or `None` while it
    /// still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("{} did not stop within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Ports of one demo stack.
#[derive(Debug, Clone, Copy)]
pub struct StackPorts {
    pub collector_grpc: u16,
    pub collector_http: u16,
    pub ui: u16,
    pub agent: u16,
    pub gateway: u16,
    pub auth: u16,
    pub order: u16,
    pub inventory: u16,
    pub payment: u16,
    pub notification: u16,
}

impl StackPorts {
    /// The port of shop service `service` (`gateway`, `auth`, ...).
    pub fn of_service(&self, service: &str) -> u16 {
        match service {
            "gateway" => self.gateway,
            "auth" => self.auth,
            "order" => self.order,
            "inventory" => self.inventory,
            "payment" => self.payment,
            "notification" => self.notification,
            other => panic!("no shop service {other}"),
        }
    }
}

/// The whole stack started by the real launcher: collector, agent and the
/// six shop services, each its own process, with the launcher writing the
/// services' output into kubelet-style CRI files.
///
/// The payment provider never declines here (`SHOP_PAYMENT_DECLINE_RATE=0`,
/// inherited by the services), so an order fails only when a test asks for
/// it.
pub struct DemoStack {
    pub ports: StackPorts,
    pub data_dir: tempfile::TempDir,
    pub launcher: Process,
    pub http: reqwest::Client,
    /// The client for the collector's query API and UI: `http` itself, or
    /// for [`DemoStack::start_secure`] an HTTPS client that trusts only the
    /// demo's CA and sends the query token.
    pub query_http: reqwest::Client,
    /// `http`, or `https` for [`DemoStack::start_secure`].
    pub ui_scheme: &'static str,
}

impl DemoStack {
    pub async fn start() -> DemoStack {
        DemoStack::start_with(&[]).await
    }

    /// The stack with `--secure`: tokens, TLS and client certificates
    /// everywhere; [`DemoStack::query_http`] and [`DemoStack::ui_url`] then
    /// reach the collector over HTTPS with the query token the launcher
    /// made (see [`DemoSecrets`]).
    pub async fn start_secure() -> DemoStack {
        DemoStack::start_with(&["--secure"]).await
    }

    /// [`DemoStack::start`] with extra launcher flags (e.g. `--fault`).
    pub async fn start_with(extra_args: &[&str]) -> DemoStack {
        let data_dir = tempfile::tempdir().expect("temporary data dir");
        let ports = StackPorts {
            collector_grpc: free_port(),
            collector_http: free_port(),
            ui: free_port(),
            agent: free_port(),
            gateway: free_port(),
            auth: free_port(),
            order: free_port(),
            inventory: free_port(),
            payment: free_port(),
            notification: free_port(),
        };
        let launcher = Process::spawn(
            "sightline-demo",
            Command::new(binary("sightline-demo"))
                .arg("--no-build")
                .arg("--data-dir")
                .arg(data_dir.path())
                .args(["--collector-grpc-port", &ports.collector_grpc.to_string()])
                .args(["--collector-http-port", &ports.collector_http.to_string()])
                .args(["--ui-port", &ports.ui.to_string()])
                .args(["--agent-port", &ports.agent.to_string()])
                .args(["--gateway-port", &ports.gateway.to_string()])
                .args(["--auth-port", &ports.auth.to_string()])
                .args(["--order-port", &ports.order.to_string()])
                .args(["--inventory-port", &ports.inventory.to_string()])
                .args(["--payment-port", &ports.payment.to_string()])
                .args(["--notification-port", &ports.notification.to_string()])
                // No traffic of its own unless a test asks for it.
                .args(if extra_args.contains(&"--rate") {
                    &[][..]
                } else {
                    &["--rate", "0"][..]
                })
                .args(extra_args)
                .env("SHOP_PAYMENT_DECLINE_RATE", "0")
                .env("OTEL_BSP_SCHEDULE_DELAY", "500"),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let (query_http, ui_scheme) = if extra_args.contains(&"--secure") {
            let secrets = DemoSecrets::wait_for(data_dir.path()).await;
            (secrets.query_client(), "https")
        } else {
            (http.clone(), "http")
        };
        let stack = DemoStack {
            ports,
            data_dir,
            launcher,
            http,
            query_http,
            ui_scheme,
        };
        wait_healthy(
            &stack.query_http,
            &stack.ui_url("/health"),
            Duration::from_secs(90),
        )
        .await;
        wait_healthy(
            &stack.http,
            &stack.gateway_url("/health/ready"),
            Duration::from_secs(90),
        )
        .await;
        stack
    }

    pub fn ui_url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.ui_scheme, self.ports.ui)
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.gateway)
    }

    pub fn service_url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.of_service(service))
    }

    /// Sets `service`'s faults through the demo's fault API at run time
    /// (`{}` clears them), asserting the service took them.
    pub async fn set_faults(&self, service: &str, faults: serde_json::Value) {
        let response = self
            .http
            .post(self.service_url(service, "/admin/faults"))
            .json(&faults)
            .send()
            .await
            .expect("the fault API answers");
        assert_eq!(
            response.status(),
            200,
            "{service} refused the faults {faults}"
        );
    }

    /// Logs `user_id` in through the gateway; the session token.
    pub async fn login(&self, user_id: &str) -> String {
        let response = self
            .http
            .post(self.gateway_url("/api/login"))
            .json(&serde_json::json!({"user_id": user_id, "password": "demo"}))
            .send()
            .await
            .expect("gateway answers");
        assert!(
            response.status().is_success(),
            "login failed: {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await.expect("a JSON answer");
        body["token"].as_str().expect("a token").to_string()
    }

    /// Sends `POST /api/orders` for `u-e2e` with `token` and `request_id`,
    /// whatever the answer.
    pub async fn try_order(&self, token: &str, request_id: &str) -> reqwest::Response {
        self.http
            .post(self.gateway_url("/api/orders"))
            .bearer_auth(token)
            .header("x-request-id", request_id)
            .json(&serde_json::json!({"user_id": "u-e2e", "product_id": "p1", "quantity": 2}))
            .send()
            .await
            .expect("gateway answers")
    }

    /// Logs in, then places an order through the gateway with the given
    /// request id (the login has a request id of its own).
    pub async fn place_order(&self, request_id: &str) -> reqwest::Response {
        let token = self.login("u-e2e").await;
        let response = self.try_order(&token, request_id).await;
        assert!(
            response.status().is_success(),
            "order failed: {}",
            response.status()
        );
        response
    }

    /// Polls the log search until records of every one of `services` match `query`.
    pub async fn logs_from_services(
        &self,
        query: &str,
        services: &[&str],
    ) -> Vec<serde_json::Value> {
        let url = self.ui_url("/api/logs");
        poll_until(
            &format!("logs matching {query:?} from {services:?}"),
            Duration::from_secs(60),
            || async {
                let body: serde_json::Value = self
                    .query_http
                    .get(&url)
                    .query(&[("q", query), ("limit", "100")])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                let records = body["records"].as_array().cloned().unwrap_or_default();
                let found: Vec<&str> = records
                    .iter()
                    .filter_map(|r| r["service"].as_str())
                    .collect();
                if services.iter().all(|service| found.contains(service)) {
                    Ok(Some(records))
                } else {
                    Err(format!("services so far: {found:?}"))
                }
            },
        )
        .await
    }
}

impl DemoStack {
    /// Polls the Jaeger-shaped trace lookup until spans of every one of
    /// `services` are in the trace; returns the trace (`data[0]`).
    pub async fn trace_with_services(
        &self,
        trace_id: &str,
        services: &[&str],
    ) -> serde_json::Value {
        let url = self.ui_url(&format!("/api/traces/{trace_id}"));
        poll_until(
            &format!("trace {trace_id} with spans of {services:?}"),
            Duration::from_secs(60),
            || async {
                let response = self
                    .query_http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("status {}", response.status()));
                }
                let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
                let trace = body["data"][0].clone();
                let found: Vec<&str> = trace["processes"]
                    .as_object()
                    .map(|p| {
                        p.values()
                            .filter_map(|p| p["serviceName"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if services.iter().all(|service| found.contains(service)) {
                    Ok(Some(trace))
                } else {
                    Err(format!("services so far: {found:?}"))
                }
            },
        )
        .await
    }
}

/// What `sightline-demo --secure` made in `<data-dir>/secrets/`.
pub struct DemoSecrets {
    /// `<data-dir>/secrets`.
    pub dir: PathBuf,
    /// The demo CA, PEM.
    pub ca_pem: Vec<u8>,
    /// The query token.
    pub query_token: String,
}

impl DemoSecrets {
    /// Waits until the launcher has written the CA and the query token
    /// (each is renamed into place whole).
    pub async fn wait_for(data_dir: &std::path::Path) -> DemoSecrets {
        let dir = data_dir.join("secrets");
        poll_until(
            &format!("the CA and the query token in {}", dir.display()),
            Duration::from_secs(60),
            || async {
                let read = |name: &str| {
                    std::fs::read(dir.join(name)).map_err(|error| format!("{name}: {error}"))
                };
                let ca_pem = read("ca.pem")?;
                let query_token = String::from_utf8(read("query-token")?)
                    .map_err(|error| error.to_string())?
                    .trim()
                    .to_string();
                Ok(Some(DemoSecrets {
                    dir: dir.clone(),
                    ca_pem,
                    query_token,
                }))
            },
        )
        .await
    }

    /// An HTTPS client that trusts only the demo CA, with no token.
    pub fn https_client(&self) -> reqwest::Client {
        self.https_builder().build().expect("https client")
    }

    /// [`DemoSecrets::https_client`] sending the query token on every request.
    pub fn query_client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.query_token))
                .expect("a token is a valid header value");
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        self.https_builder()
            .default_headers(headers)
            .build()
            .expect("https client")
    }

    /// The ingest token the agent and the services send.
    pub fn ingest_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("ingest-token"))
            .expect("the ingest token")
            .trim()
            .to_string()
    }

    /// [`DemoSecrets::https_client`] showing the client certificate of the
    /// agent and the services (mutual TLS), with no token.
    pub fn mtls_client(&self) -> reqwest::Client {
        let mut pem = std::fs::read(self.dir.join("client.pem")).expect("client.pem");
        pem.extend(std::fs::read(self.dir.join("client-key.pem")).expect("client-key.pem"));
        let identity = reqwest::Identity::from_pem(&pem).expect("a PEM identity");
        self.https_builder()
            .identity(identity)
            .build()
            .expect("https client")
    }

    fn https_builder(&self) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem).expect("the demo CA is PEM");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
    }
}

/// A collector process alone, on free loopback ports.
pub struct CollectorProcess {
    pub process: Process,
    pub grpc_port: u16,
    pub http_port: u16,
    pub otlp_http_port: u16,
    /// `https` when started with `--tls-cert`.
    scheme: &'static str,
}

impl CollectorProcess {
    /// Starts `sightline-collector` on `data_dir` and waits for its health check.
    pub async fn start(data_dir: &std::path::Path, extra_args: &[&str]) -> CollectorProcess {
        Self::start_with_env(data_dir, extra_args, &[]).await
    }

    /// [`CollectorProcess::start`] with extra environment variables.
    pub async fn start_with_env(
        data_dir: &std::path::Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> CollectorProcess {
        let ports = (free_port(), free_port(), free_port());
        Self::start_on(data_dir, ports, |command| {
            command.args(extra_args).envs(env.iter().copied());
        })
        .await
    }

    /// Starts `sightline-collector` on `data_dir` on the given ports (OTLP
    /// gRPC, query/UI, OTLP HTTP), so a restarted collector is found where
    /// its clients expect it; `configure` adds arguments, environment or
    /// output redirections. Waits for its health check.
    pub async fn start_on(
        data_dir: &std::path::Path,
        (grpc_port, http_port, otlp_http_port): (u16, u16, u16),
        configure: impl FnOnce(&mut Command),
    ) -> CollectorProcess {
        let mut command = Command::new(binary("sightline-collector"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--otlp-grpc-addr", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-addr", &format!("127.0.0.1:{otlp_http_port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")]);
        configure(&mut command);
        let tls = command.get_args().any(|arg| arg == "--tls-cert");
        let process = Process::spawn("sightline-collector", &mut command);
        let collector = CollectorProcess {
            process,
            grpc_port,
            http_port,
            otlp_http_port,
            scheme: if tls { "https" } else { "http" },
        };
        // Started is all this asks; tests check the certificate themselves.
        let probe = reqwest::Client::builder()
            .danger_accept_invalid_certs(tls)
            .build()
            .expect("a client");
        wait_started(&probe, &collector.url("/-/ready")).await;
        collector
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.http_port)
    }

    /// An address on the OTLP/HTTP port (`/v1/logs`, `/v1/traces`, ...).
    pub fn otlp_http_url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.otlp_http_port)
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.grpc_port)
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// Every record matching `query`, paging with the API's cursor.
    pub async fn all_records(&self, query: &str) -> Vec<serde_json::Value> {
        let http = reqwest::Client::new();
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params = vec![("q", query.to_string()), ("limit", "10000".to_string())];
            if let Some(cursor) = &cursor {
                params.push(("cursor", cursor.clone()));
            }
            let page: serde_json::Value = http
                .get(self.url("/api/logs"))
                .query(&params)
                .send()
                .await
                .expect("query the collector")
                .json()
                .await
                .expect("a JSON answer");
            records.extend(page["records"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return records,
            }
        }
    }
}

/// A fresh request id for one test.
pub fn unique_request_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{nanos:x}-{}", std::process::id())
}

/// The current time as RFC 3339 in UTC with nanoseconds, as the CRI log
/// format writes it.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let seconds = now.as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        now.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One series of a remote-write request: its labels (`__name__` among
/// them) and samples (timestamp in ms, value).
pub type WriteSeries = (Vec<(String, String)>, Vec<(i64, f64)>);

/// A Prometheus remote-write 1.0 body (protobuf `WriteRequest`, snappy
/// compressed). Encoded by hand: four small messages.
pub fn remote_write_body(series: &[WriteSeries]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut request = Vec::new();
    for (labels, samples) in series {
        let mut timeseries = Vec::new();
        for (name, value) in labels {
            let mut pair = Vec::new();
            field(&mut pair, 1, name.as_bytes());
            field(&mut pair, 2, value.as_bytes());
            field(&mut timeseries, 1, &pair);
        }
        for (timestamp_ms, value) in samples {
            // Sample { double value = 1; int64 timestamp = 2; }
            let mut sample = vec![0x09];
            sample.extend_from_slice(&value.to_le_bytes());
            varint(&mut sample, 2 << 3);
            varint(&mut sample, *timestamp_ms as u64);
            field(&mut timeseries, 2, &sample);
        }
        field(&mut request, 1, &timeseries);
    }
    snap::raw::Encoder::new()
        .compress_vec(&request)
        .expect("snappy compresses any input")
}

/// CPU seconds of every engine process on the machine (`nats-server`,
/// `weed`, `postgres`), read from `/proc`: on one machine they share the
/// cores with the collectors, which a deployment would not.
pub fn engines_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            matches!(comm.trim(), "nats-server" | "weed" | "postgres")
        })
        .map(cpu_seconds)
        .sum()
}

/// User plus system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}
