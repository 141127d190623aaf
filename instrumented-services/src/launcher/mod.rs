//! `sightline-demo`: the whole stack with one command.
//!
//! [`run`] builds the binaries (under `cargo run`), then starts, each as a
//! child process on loopback and in this order, waiting for each to be
//! healthy:
//!
//! 1. `sightline-collector` (OTLP gRPC, query API and UI), output in
//!    `<data-dir>/logs/sightline-collector.log`;
//! 2. `sightline-agent`, tailing `<data-dir>/pods/*/*/*.log`, output in
//!    `<data-dir>/logs/sightline-agent.log`;
//! 3. the six shop services, the called before their callers
//!    (notification, payment, inventory, auth, order, gateway), whose output
//!    the launcher writes as a container runtime would (see [`crate::cri`]):
//!    namespace `shop`, pod `<service>-<hash>`, container `<service>`.
//!
//! It then prints `Sightline UI: http://127.0.0.1:<ui-port>/`, sends demo
//! traffic ([`crate::traffic`]), and on SIGINT/SIGTERM stops the traffic and
//! the children in reverse order. A service that dies is restarted in its
//! pod after a back-off, its output going to `1.log` beside `0.log` (then
//! `2.log`, ...), as kubelet does; a platform process that dies is reported
//! (name, exit status, log file) and ends the demo with an error.
//!
//! `--fault payment:latency=800ms@0.3,errors=0.1` starts a service with
//! faults (see [`crate::service::faults`]); `--platform-only` runs only the
//! collector and the agent, for your own services.
//!
//! `--secure` runs the stack as it should run in production: the launcher
//! makes a CA, certificates and two bearer tokens in `<data-dir>/secrets/`
//! ([`Secrets`]), the collector serves TLS on its three listeners, requires
//! client certificates on OTLP/gRPC and asks for the ingest and query
//! tokens, and the agent and the services send their token over mutual TLS.
//! The UI address is then printed as `https://`, with the query token and
//! the CA.

pub mod burst;
mod children;
pub mod collector_config;
pub mod pods;
mod secrets;

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::watch;

pub use children::{ChildSpec, Children, PodPlacement, RunningChild, UnexpectedExit};
pub use secrets::Secrets;

use crate::cri::PodIdentity;
use crate::service::ServiceRole;
use crate::service::faults::FaultConfig;
use crate::shutdown::ShutdownSignals;

/// The collector's and the agent's binary names.
const COLLECTOR_BIN: &str = "sightline-collector";
const AGENT_BIN: &str = "sightline-agent";
const SERVICE_BIN: &str = "shop-service";

/// Kubernetes namespace the demo's pods pretend to live in.
const NAMESPACE: &str = "shop";

/// How long the collector may take to answer its health check (it may
/// replay its WAL).
const COLLECTOR_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the agent and each service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What `sightline-demo` does besides running the demo.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DemoCommand {
    /// Sends a burst of traffic a shipped alert watches for (failed logins
    /// from one address, or requests past the rate limit) to a running
    /// demo's gateway.
    Burst(burst::BurstArgs),
}

/// The repository's `dashboards/`, where `cargo run -p sightline-demo` runs from.
const DEFAULT_DASHBOARDS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards");

/// Command line of `sightline-demo`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "sightline-demo",
    version,
    about = "Runs the Sightline stack and a demo shop with live traffic"
)]
pub struct DemoArgs {
    /// Where everything is kept: collector and agent state, the services'
    /// container logs (`pods/`), the platform's own logs (`logs/`).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,

    /// Port of the collector's OTLP gRPC receiver.
    #[arg(long, default_value_t = 4317)]
    pub collector_grpc_port: u16,

    /// Port of the collector's OTLP HTTP receiver.
    #[arg(long, default_value_t = 4318)]
    pub collector_http_port: u16,

    /// Port of the collector's HTTP query API and UI.
    #[arg(long, default_value_t = 7070)]
    pub ui_port: u16,

    /// Port of the agent's health and self-metrics endpoint.
    #[arg(long, default_value_t = 2020)]
    pub agent_port: u16,

    /// Port of the gateway service.
    #[arg(long, default_value_t = 8000)]
    pub gateway_port: u16,

    /// Port of the auth service.
    #[arg(long, default_value_t = 8001)]
    pub auth_port: u16,

    /// Port of the order service.
    #[arg(long, default_value_t = 8002)]
    pub order_port: u16,

    /// Port of the inventory service.
    #[arg(long, default_value_t = 8003)]
    pub inventory_port: u16,

    /// Port of the payment service.
    #[arg(long, default_value_t = 8004)]
    pub payment_port: u16,

    /// Port of the notification service.
    #[arg(long, default_value_t = 8005)]
    pub notification_port: u16,

    /// Demo user journeys (login, browse, order, view) per second sent to
    /// the gateway; 0 sends none.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,

    /// Faults of one service, `<service>:<spec>`, for example
    /// `payment:latency=800ms@0.3,errors=0.1` or `inventory:down`; repeat
    /// for several services. Change them at runtime with
    /// `POST http://127.0.0.1:<port>/admin/faults`.
    #[arg(long = "fault", value_name = "SERVICE:SPEC")]
    pub faults: Vec<String>,

    /// Run only the collector and the agent (no shop, no traffic).
    #[arg(long)]
    pub platform_only: bool,

    /// More Prometheus rule files for the collector, beside the shipped
    /// ones in `dashboards/rules/`; repeat for several.
    #[arg(long = "rule-file", value_name = "PATH")]
    pub rule_files: Vec<PathBuf>,

    /// Grafana dashboard JSON files the UI renders, read at run time: edit
    /// one (or add one) and the open dashboard shows it at its next
    /// refresh, without a restart [default: `./dashboards` when it exists
    /// (`cargo run` from the repository), else the repository's
    /// `dashboards/` this binary was built from].
    #[arg(long, value_name = "DIR")]
    pub dashboards_dir: Option<PathBuf>,

    /// An Alertmanager (`host:port`) the collector sends its alerts to, as
    /// `alerting.alertmanagers` in its config; repeat for several.
    #[arg(long = "alertmanager", value_name = "HOST:PORT")]
    pub alertmanagers: Vec<String>,

    /// Instead of running the demo: `burst failed-logins` or `burst
    /// requests` sends, on demand, the traffic a shipped alert watches for
    /// to a running demo's gateway.
    #[command(subcommand)]
    pub command: Option<DemoCommand>,

    /// How often the collector scrapes the services, the agent and itself.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,

    /// How often rule groups without their own interval are evaluated.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub evaluation_interval: Duration,

    /// Do not run `cargo build` first, use the binaries as they are.
    #[arg(long)]
    pub no_build: bool,

    /// Tokens and TLS everywhere: make a CA, certificates and tokens in
    /// `<data-dir>/secrets/`, serve the collector over HTTPS with client
    /// certificates required on OTLP/gRPC, and have the agent and the
    /// services send their token over mutual TLS.
    #[arg(long)]
    pub secure: bool,
}

/// A service's faults given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFault {
    /// Which service.
    pub role: ServiceRole,
    /// The spec, as `shop-service --faults` takes it.
    pub spec: String,
}

impl ServiceFault {
    /// Parses `<service>:<spec>`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let Some((service, spec)) = text.split_once(':') else {
            bail!("--fault {text:?}: expected <service>:<spec>, e.g. payment:errors=0.1");
        };
        let Some(role) = ServiceRole::from_name(service.trim()) else {
            let known: Vec<&str> = ServiceRole::ALL.iter().map(|role| role.name()).collect();
            bail!(
                "--fault {text:?}: unknown service {service:?} (one of {})",
                known.join(", ")
            );
        };
        FaultConfig::parse_spec(spec)
            .map_err(|error| anyhow::anyhow!("--fault {text:?}: {error}"))?;
        Ok(Self {
            role,
            spec: spec.trim().to_owned(),
        })
    }
}

impl DemoArgs {
    /// `--dashboards-dir`, else `./dashboards` when it exists, else the
    /// repository's this binary was built from.
    fn dashboards_dir(&self) -> PathBuf {
        if let Some(dir) = &self.dashboards_dir {
            return dir.clone();
        }
        let here = PathBuf::from("dashboards");
        if here.join("overview.json").is_file() {
            return std::path::absolute(&here).unwrap_or(here);
        }
        PathBuf::from(DEFAULT_DASHBOARDS_DIR)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(self.rate.is_finite() && (0.0..=1000.0).contains(&self.rate)) {
            bail!(
                "--rate must be between 0 and 1000 requests per second, got {}",
                self.rate
            );
        }
        let ports = [
            ("--collector-grpc-port", self.collector_grpc_port),
            ("--collector-http-port", self.collector_http_port),
            ("--ui-port", self.ui_port),
            ("--agent-port", self.agent_port),
            ("--gateway-port", self.gateway_port),
            ("--auth-port", self.auth_port),
            ("--order-port", self.order_port),
            ("--inventory-port", self.inventory_port),
            ("--payment-port", self.payment_port),
            ("--notification-port", self.notification_port),
        ];
        let ports = if self.platform_only {
            &ports[..4]
        } else {
            &ports[..]
        };
        for (index, (flag, port)) in ports.iter().enumerate() {
            if *port == 0 {
                bail!("{flag} must not be 0");
            }
            if let Some((other, _)) = ports[..index].iter().find(|(_, other)| other == port) {
                bail!("{flag} and {other} are both {port}");
            }
        }
        self.service_faults()?;
        Ok(())
    }

    /// The `--fault` flags, parsed; the last one of a service wins.
    pub fn service_faults(&self) -> anyhow::Result<Vec<ServiceFault>> {
        self.faults
            .iter()
            .map(|text| ServiceFault::parse(text))
            .collect()
    }

    /// The port of `role`.
    pub fn port_of(&self, role: ServiceRole) -> u16 {
        match role {
            ServiceRole::Gateway => self.gateway_port,
            ServiceRole::Auth => self.auth_port,
            ServiceRole::Order => self.order_port,
            ServiceRole::Inventory => self.inventory_port,
            ServiceRole::Payment => self.payment_port,
            ServiceRole::Notification => self.notification_port,
        }
    }
}

/// The layout of `--data-dir`.
#[derive(Debug, Clone)]
pub struct DataLayout {
    /// The data directory itself, absolute.
    pub root: PathBuf,
}

impl DataLayout {
    /// The collector's `--data-dir`.
    pub fn collector(&self) -> PathBuf {
        self.root.join("collector")
    }

    /// The agent's `--data-dir`.
    pub fn agent(&self) -> PathBuf {
        self.root.join("agent")
    }

    /// The kubelet-style pod log directory.
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// The platform processes' own logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The certificates and tokens of `--secure`.
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// The agent's `--include` glob: every container log of every pod.
    pub fn pod_logs_glob(&self) -> OsString {
        let mut glob = self.pods().into_os_string();
        glob.push("/*/*/*.log");
        glob
    }
}

/// The sibling executables the launcher starts.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `sightline-collector`.
    pub collector: PathBuf,
    /// `sightline-agent`.
    pub agent: PathBuf,
    /// `shop-service`.
    pub service: PathBuf,
}

impl Binaries {
    /// Finds the binaries next to the running executable.
    pub fn beside_current_exe() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("failed to locate the running executable")?;
        let directory = exe
            .parent()
            .context("the running executable has no parent directory")?;
        Self::in_directory(directory)
    }

    /// Finds the binaries in `directory`, naming any missing one and how to
    /// build it.
    pub fn in_directory(directory: &Path) -> anyhow::Result<Self> {
        let find = |name: &str, package: &str| {
            let path = directory.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                let profile = if cfg!(debug_assertions) {
                    ""
                } else {
                    " --release"
                };
                Err(anyhow::anyhow!(
                    "{name} not found in {}; build it with `cargo build{profile} -p {package}` \
                     (or run `cargo run{profile} -p sightline-demo` without --no-build)",
                    directory.display()
                ))
            }
        };
        Ok(Self {
            collector: find(COLLECTOR_BIN, "sightline-collector")?,
            agent: find(AGENT_BIN, "sightline-agent")?,
            service: find(SERVICE_BIN, "sightline-demo")?,
        })
    }
}

/// Runs the demo until SIGINT/SIGTERM (`Ok`) or until something fails.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(DemoCommand::Burst(burst)) = &args.command {
        let outcome = burst::run(burst).await?;
        println!(
            "sent {} requests from {} to {}: {} refused logins, {} rate limited",
            outcome.sent, burst.from, burst.gateway, outcome.refused_login, outcome.rate_limited
        );
        return Ok(());
    }
    args.validate()?;
    let mut signals = ShutdownSignals::install().context("failed to install signal handlers")?;
    if !args.no_build {
        build_binaries().await?;
    }
    let binaries = Binaries::beside_current_exe()?;
    let root = std::path::absolute(&args.data_dir)
        .with_context(|| format!("invalid --data-dir {}", args.data_dir.display()))?;
    let layout = DataLayout { root };
    for directory in [
        layout.collector(),
        layout.agent(),
        layout.pods(),
        layout.logs(),
    ] {
        std::fs::create_dir_all(&directory)
            .with_context(|| format!("failed to create {}", directory.display()))?;
    }

    let mut children = Children::default();
    let (stop_traffic, traffic_stopped) = watch::channel(false);
    let mut traffic = None;
    let outcome = tokio::select! {
        reason = signals.recv() => {
            tracing::info!(signal = reason.as_str(), "stopping the demo");
            Ok(())
        }
        outcome = start_and_supervise(&args, &binaries, &layout, &mut children, traffic_stopped, &mut traffic) => outcome,
    };
    let _ = stop_traffic.send(true);
    if let Some(traffic) = traffic {
        let _ = traffic.await;
    }
    children.stop_all().await;
    outcome
}

/// Starts everything, then waits for a child to die (only returns then, or
/// on an error; the caller's signal branch is the normal way out).
async fn start_and_supervise(
    args: &DemoArgs,
    binaries: &Binaries,
    layout: &DataLayout,
    children: &mut Children,
    traffic_stopped: watch::Receiver<bool>,
    traffic: &mut Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let secrets = if args.secure {
        let secrets = Secrets::generate(&layout.secrets())?;
        tracing::info!(dir = %layout.secrets().display(), "made certificates and tokens");
        Some(secrets)
    } else {
        None
    };
    let client = http_client(secrets.as_ref())?;
    // The collector's listeners speak TLS with `--secure`.
    let scheme = if secrets.is_some() { "https" } else { "http" };
    let collector_grpc = loopback(args.collector_grpc_port);
    let ui = loopback(args.ui_port);
    let agent_http = loopback(args.agent_port);
    let gateway_addr = loopback(args.gateway_port);
    let otlp_endpoint = format!("{scheme}://{collector_grpc}");

    let services = if args.platform_only {
        Vec::new()
    } else {
        ServiceRole::ALL
            .iter()
            .map(|role| (*role, loopback(args.port_of(*role)).to_string()))
            .collect()
    };
    let collector_config = collector_config::write(
        &layout.collector(),
        &collector_config::ScrapeTargets {
            agent: agent_http.to_string(),
            services,
            ui: format!("{scheme}://{ui}"),
            extra_rule_files: args
                .rule_files
                .iter()
                .map(|path| std::path::absolute(path).unwrap_or_else(|_| path.clone()))
                .collect(),
            scrape_interval: args.scrape_interval,
            evaluation_interval: args.evaluation_interval,
            alertmanagers: args.alertmanagers.clone(),
        },
    )?;
    let mut collector_args: Vec<OsString> = vec![
        "--data-dir".into(),
        layout.collector().into(),
        "--otlp-grpc-addr".into(),
        collector_grpc.to_string().into(),
        "--otlp-http-addr".into(),
        loopback(args.collector_http_port).to_string().into(),
        "--http-addr".into(),
        ui.to_string().into(),
        "--config".into(),
        collector_config.into(),
        "--dashboards-dir".into(),
        args.dashboards_dir().into(),
    ];
    if let Some(secrets) = &secrets {
        collector_args.extend([
            "--ingest-token-file".into(),
            secrets.ingest_token_file.clone().into(),
            "--query-token-file".into(),
            secrets.query_token_file.clone().into(),
            "--tls-cert".into(),
            secrets.server_cert.clone().into(),
            "--tls-key".into(),
            secrets.server_key.clone().into(),
            "--tls-client-ca".into(),
            secrets.ca_cert.clone().into(),
        ]);
    }
    let collector = ChildSpec {
        name: COLLECTOR_BIN.into(),
        program: binaries.collector.clone(),
        args: collector_args,
        env: Vec::new(),
    };
    let log_path = layout.logs().join(format!("{COLLECTOR_BIN}.log"));
    tracing::info!(log = %log_path.display(), "starting {COLLECTOR_BIN}");
    children
        .push(RunningChild::spawn_with_log_file(&collector, &log_path)?)
        .wait_healthy(
            &client,
            &format!("{scheme}://{ui}/-/ready"),
            COLLECTOR_READY_TIMEOUT,
        )
        .await?;

    // The shop's pods on a stand-in Kubernetes API: the agent adds their
    // labels and Deployments to their records, as on a cluster.
    let pods = std::sync::Arc::new(pods::DemoPods::serve().await);
    children.pods = Some(pods.clone());
    let agent_config = layout.agent().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "# Written by sightline-demo: the demo's pods are served by a stand-in\n# Kubernetes API on loopback.\n[kubernetes]\napi_server = \"{}\"\nnode_name = \"{}\"\npod_wait = \"2s\"\n",
            pods.api_server(),
            pods::NODE
        ),
    )
    .with_context(|| format!("failed to write {}", agent_config.display()))?;
    let mut agent_args: Vec<OsString> = vec![
        "--config".into(),
        agent_config.into(),
        "--include".into(),
        layout.pod_logs_glob(),
        "--collector".into(),
        otlp_endpoint.clone().into(),
        "--data-dir".into(),
        layout.agent().into(),
        "--http-addr".into(),
        agent_http.to_string().into(),
    ];
    if let Some(secrets) = &secrets {
        agent_args.extend([
            "--collector-token-file".into(),
            secrets.ingest_token_file.clone().into(),
            "--collector-ca".into(),
            secrets.ca_cert.clone().into(),
            "--client-cert".into(),
            secrets.client_cert.clone().into(),
            "--client-key".into(),
            secrets.client_key.clone().into(),
        ]);
    }
    let agent = ChildSpec {
        name: AGENT_BIN.into(),
        program: binaries.agent.clone(),
        args: agent_args,
        env: Vec::new(),
    };
    let log_path = layout.logs().join(format!("{AGENT_BIN}.log"));
    tracing::info!(log = %log_path.display(), "starting {AGENT_BIN}");
    children
        .push(RunningChild::spawn_with_log_file(&agent, &log_path)?)
        .wait_healthy(
            &client,
            &format!("http://{agent_http}/-/ready"),
            READY_TIMEOUT,
        )
        .await?;

    if args.platform_only {
        println!("Sightline UI: {scheme}://{ui}/");
        if let Some(secrets) = &secrets {
            print!("{}", secure_banner(ui, secrets));
        }
        println!(
            "  platform only: send OTLP to {scheme}://{collector_grpc} (gRPC) or \
             {scheme}://{} (HTTP); the agent tails {}",
            loopback(args.collector_http_port),
            layout.pod_logs_glob().to_string_lossy()
        );
        let exit = children.supervise().await?;
        return Err(exit.into());
    }

    let faults = args.service_faults()?;
    let url_of = |role: ServiceRole| format!("http://{}", loopback(args.port_of(role)));
    let peers: Vec<OsString> = vec![
        "--auth-url".into(),
        url_of(ServiceRole::Auth).into(),
        "--order-url".into(),
        url_of(ServiceRole::Order).into(),
        "--inventory-url".into(),
        url_of(ServiceRole::Inventory).into(),
        "--payment-url".into(),
        url_of(ServiceRole::Payment).into(),
        "--notification-url".into(),
        url_of(ServiceRole::Notification).into(),
    ];
    // The called before their callers, so every service is ready when its
    // first request arrives.
    let start_order = [
        ServiceRole::Notification,
        ServiceRole::Payment,
        ServiceRole::Inventory,
        ServiceRole::Auth,
        ServiceRole::Order,
        ServiceRole::Gateway,
    ];
    for role in start_order {
        let service = role.name();
        let addr = loopback(args.port_of(role));
        let mut service_args: Vec<OsString> = vec![
            "--service".into(),
            service.into(),
            "--listen".into(),
            addr.to_string().into(),
        ];
        service_args.extend(peers.iter().cloned());
        service_args.extend(["--otlp-endpoint".into(), otlp_endpoint.clone().into()]);
        if let Some(fault) = faults.iter().rev().find(|fault| fault.role == role) {
            tracing::warn!(service, faults = %fault.spec, "starting with faults");
            service_args.extend(["--faults".into(), fault.spec.clone().into()]);
        }
        let spec = ChildSpec {
            name: service.into(),
            program: binaries.service.clone(),
            args: service_args,
            env: secrets.as_ref().map(service_env).unwrap_or_default(),
        };
        let pod = PodIdentity::new_random(NAMESPACE, service);
        pods.add(&pod, service);
        let child = RunningChild::spawn_in_pod(&spec, &layout.pods(), &pod, service)?;
        tracing::info!(service, pod = %pod.name, log = %child.log_path().display(), "started");
        children
            .push(child)
            .wait_healthy(
                &client,
                &format!("http://{addr}/health/live"),
                READY_TIMEOUT,
            )
            .await?;
    }

    println!("Sightline UI: {scheme}://{ui}/");
    if let Some(secrets) = &secrets {
        print!("{}", secure_banner(ui, secrets));
    }
    println!(
        "  try: curl -s -H 'content-type: application/json' \
         -d '{{\"user_id\":\"u1\",\"password\":\"demo\"}}' http://{gateway_addr}/api/login"
    );
    println!(
        "       curl -s -H 'authorization: Bearer <token>' -H 'X-Request-ID: demo-1' \
         -H 'content-type: application/json' -d '{{\"product_id\":\"p1\",\"quantity\":1}}' \
         http://{gateway_addr}/api/orders"
    );
    println!("  then search the UI for request_id:demo-1; Ctrl-C stops everything");
    println!(
        "  faults: curl -s -d '{{\"error_rate\":0.3}}' -H 'content-type: application/json' \
         http://{}/admin/faults",
        loopback(args.payment_port)
    );

    if args.rate > 0.0 {
        let gateway_url = format!("http://{gateway_addr}");
        let rate = args.rate;
        *traffic = Some(tokio::spawn(async move {
            let stats = crate::traffic::run(&gateway_url, rate, traffic_stopped).await;
            tracing::info!(
                succeeded = stats.succeeded.load(std::sync::atomic::Ordering::Relaxed),
                failed = stats.failed.load(std::sync::atomic::Ordering::Relaxed),
                "traffic stopped"
            );
        }));
    }

    let exit = children.supervise().await?;
    Err(exit.into())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The launcher's own HTTP client (health polls): with `--secure` it trusts
/// the demo's CA, and only it, for the collector's HTTPS.
fn http_client(secrets: Option<&Secrets>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(secrets) = secrets {
        let pem = std::fs::read(&secrets.ca_cert)
            .with_context(|| format!("failed to read {}", secrets.ca_cert.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM certificate", secrets.ca_cert.display()))?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    builder.build().context("failed to build the HTTP client")
}

/// What a service needs to export to a `--secure` collector: the OTel SDKs'
/// standard variables, read by [`crate::telemetry::exporter_tls`] and by
/// the exporter itself (the headers).
fn service_env(secrets: &Secrets) -> Vec<(OsString, OsString)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_HEADERS".into(),
            secrets.otlp_headers().into(),
        ),
        (
            crate::telemetry::OTLP_CA_ENV.into(),
            secrets.ca_cert.clone().into(),
        ),
        (
            crate::telemetry::OTLP_CLIENT_CERT_ENV.into(),
            secrets.client_cert.clone().into(),
        ),
        (
            crate::telemetry::OTLP_CLIENT_KEY_ENV.into(),
            secrets.client_key.clone().into(),
        ),
    ]
}

/// The lines under `Sightline UI: https://...` with `--secure`: the query
/// token the UI asks for, the CA to trust, and a query with curl.
fn secure_banner(ui: SocketAddr, secrets: &Secrets) -> String {
    let ca = secrets.ca_cert.display();
    format!(
        "  secure: the UI asks for the query token {token} (in {token_file}); \
         trust the CA {ca}\n\
         \x20 query: curl --cacert {ca} -H \"authorization: Bearer $(cat {token_file})\" \
         'https://{ui}/api/logs?q=service:gateway&limit=5'\n",
        token = secrets.query_token,
        token_file = secrets.query_token_file.display(),
    )
}

/// The binaries the launcher builds, with their packages: the ones it
/// runs, and itself.
const BUILT_BINARIES: [(&str, &str); 4] = [
    (COLLECTOR_BIN, "sightline-collector"),
    (AGENT_BIN, "sightline-agent"),
    (SERVICE_BIN, "sightline-demo"),
    ("sightline-demo", "sightline-demo"),
];

/// `cargo build` arguments for [`BUILT_BINARIES`] in the launcher's own
/// profile. The collector and the agent are dependencies of this package,
/// so the `cargo run` that started the launcher already compiled every
/// library of this build with the same features: only the binaries that
/// `cargo run` did not need are compiled here.
fn cargo_build_args(release: bool) -> Vec<&'static str> {
    let mut args = vec!["build"];
    let mut packages: Vec<&str> = BUILT_BINARIES.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    for package in packages {
        args.extend(["-p", package]);
    }
    for (binary, _) in BUILT_BINARIES {
        args.extend(["--bin", binary]);
    }
    if release {
        args.push("--release");
    }
    args
}

/// Removes what `cargo run` told the launcher about its own package
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...) from the environment of the
/// nested `cargo build`. Build scripts that watch one of them (ring's
/// watches `CARGO_MANIFEST_DIR`) would otherwise see it changed and run
/// again, recompiling ring and every crate above it, which `cargo run`
/// had just compiled.
fn remove_run_environment(command: &mut tokio::process::Command) {
    const PACKAGE_VARIABLES: [&str; 5] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
    ];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("CARGO_PKG_") || PACKAGE_VARIABLES.contains(&name) {
            command.env_remove(name);
        }
    }
}

/// Under `cargo run` (`$CARGO` set), builds the collector, the agent and this
/// package's binaries with the launcher's own profile.
async fn build_binaries() -> anyhow::Result<()> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        tracing::info!("not started by cargo, using the binaries as they are");
        return Ok(());
    };
    let mut command = tokio::process::Command::new(&cargo);
    command.args(cargo_build_args(!cfg!(debug_assertions)));
    remove_run_environment(&mut command);
    // Build the workspace this launcher was built from, wherever we run.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    if manifest.is_file() {
        command.arg("--manifest-path").arg(&manifest);
    }
    tracing::info!("building the stack's binaries");
    let status = command
        .status()
        .await
        .with_context(|| format!("failed to run {}", Path::new(&cargo).display()))?;
    if !status.success() {
        bail!(
            "building the stack failed ({status}); fix the build above, or pass --no-build \
             to use the binaries already built"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn defaults_match_the_documented_ports() {
        let args = DemoArgs::parse_from(["sightline-demo"]);
        assert_eq!(args.data_dir, Path::new("./data"));
        assert_eq!(
            [
                args.collector_grpc_port,
                args.collector_http_port,
                args.ui_port,
                args.agent_port,
                args.gateway_port,
                args.order_port
            ],
            [4317, 4318, 7070, 2020, 8000, 8002]
        );
        let service_ports: Vec<u16> = ServiceRole::ALL
            .iter()
            .map(|role| args.port_of(*role))
            .collect();
        assert_eq!(service_ports, [8000, 8001, 8002, 8003, 8004, 8005]);
        for role in ServiceRole::ALL {
            assert_eq!(args.port_of(role), role.default_port(), "{}", role.name());
        }
        assert_eq!(args.rate, 2.0);
        assert!(!args.no_build);
        assert!(!args.platform_only);
        assert!(!args.secure);
        assert!(args.faults.is_empty());
        args.validate().unwrap();
    }

    #[test]
    fn fault_flags_name_a_service_and_a_valid_spec() {
        let args = DemoArgs::parse_from([
            "sightline-demo",
            "--fault",
            "payment:latency=800ms@0.3,errors=0.1",
            "--fault",
            "inventory:down",
        ]);
        args.validate().unwrap();
        assert_eq!(
            args.service_faults().unwrap(),
            [
                ServiceFault {
                    role: ServiceRole::Payment,
                    spec: "latency=800ms@0.3,errors=0.1".into()
                },
                ServiceFault {
                    role: ServiceRole::Inventory,
                    spec: "down".into()
                },
            ]
        );
        for (flag, message) in [
            ("payment", "expected <service>:<spec>"),
            ("billing:errors=0.1", "unknown service \"billing\""),
            ("payment:errors=7", "error rate must be between 0 and 1"),
        ] {
            let args = DemoArgs::parse_from(["sightline-demo", "--fault", flag]);
            let error = args.validate().unwrap_err().to_string();
            assert!(error.contains(message), "{flag}: {error}");
        }
    }

    #[test]
    fn platform_only_ignores_the_service_ports() {
        let args = DemoArgs::parse_from([
            "sightline-demo",
            "--platform-only",
            "--payment-port",
            "7070",
        ]);
        args.validate().unwrap();
        let args = DemoArgs::parse_from(["sightline-demo", "--payment-port", "7070"]);
        let message = args.validate().unwrap_err().to_string();
        assert!(
            message.contains("--payment-port and --ui-port"),
            "{message}"
        );
    }

    #[test]
    fn bad_rates_and_clashing_ports_are_rejected() {
        let args = DemoArgs::parse_from(["sightline-demo", "--rate=-1"]);
        assert!(args.validate().unwrap_err().to_string().contains("--rate"));
        let args = DemoArgs::parse_from(["sightline-demo", "--order-port", "8000"]);
        let message = args.validate().unwrap_err().to_string();
        assert!(
            message.contains("--order-port and --gateway-port"),
            "{message}"
        );
    }

    #[test]
    fn data_layout_paths() {
        let layout = DataLayout {
            root: PathBuf::from("/tmp/demo"),
        };
        assert_eq!(layout.collector(), Path::new("/tmp/demo/collector"));
        assert_eq!(layout.agent(), Path::new("/tmp/demo/agent"));
        assert_eq!(layout.logs(), Path::new("/tmp/demo/logs"));
        assert_eq!(
            layout.pod_logs_glob(),
            OsString::from("/tmp/demo/pods/*/*/*.log")
        );
    }

    #[test]
    fn the_secure_banner_names_the_token_the_ca_and_an_https_query() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::generate(dir.path()).unwrap();
        let banner = secure_banner(loopback(7443), &secrets);
        assert!(banner.contains(&secrets.query_token), "{banner}");
        assert!(!banner.contains(&secrets.ingest_token), "{banner}");
        let ca = secrets.ca_cert.display().to_string();
        assert!(banner.contains(&format!("--cacert {ca}")), "{banner}");
        assert!(
            banner.contains("'https://127.0.0.1:7443/api/logs?q=service:gateway&limit=5'"),
            "{banner}"
        );
        let env = service_env(&secrets);
        let names: Vec<_> = env.iter().map(|(name, _)| name.to_string_lossy()).collect();
        assert_eq!(
            names,
            [
                "OTEL_EXPORTER_OTLP_HEADERS",
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CLIENT_KEY"
            ]
        );
        assert_eq!(env[1].1, secrets.ca_cert.as_os_str());
        http_client(Some(&secrets)).unwrap();
    }

    #[test]
    fn the_build_names_what_runs_and_depends_on_its_packages() {
        let args = cargo_build_args(true);
        for binary in [COLLECTOR_BIN, AGENT_BIN, SERVICE_BIN] {
            assert!(
                args.windows(2).any(|pair| pair == ["--bin", binary]),
                "{binary}: {args:?}"
            );
        }
        assert!(!args.contains(&"--bins"), "builds binaries nothing runs");
        assert!(args.contains(&"--release"));
        assert!(!cargo_build_args(false).contains(&"--release"));
        // Every other package built is a dependency of this one, so the
        // `cargo run` that started the launcher compiled its library with
        // the features this build uses.
        let manifest = include_str!("../../Cargo.toml");
        let dependencies = manifest
            .split("\n[dependencies]\n")
            .nth(1)
            .and_then(|section| section.split("\n[").next())
            .unwrap();
        for (_, package) in BUILT_BINARIES {
            if package == env!("CARGO_PKG_NAME") {
                continue;
            }
            assert!(
                dependencies
                    .lines()
                    .any(|line| line.split(['.', ' ', '=']).next() == Some(package)),
                "{package} is not a dependency of {}",
                env!("CARGO_PKG_NAME")
            );
        }
    }

    #[test]
    fn the_nested_build_does_not_inherit_the_run_package() {
        // Cargo sets these for every test binary, as `cargo run` does for
        // the launcher.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let mut command = tokio::process::Command::new("cargo");
        remove_run_environment(&mut command);
        let removed: Vec<String> = command
            .as_std()
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        for name in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME"] {
            assert!(removed.iter().any(|r| r == name), "{name}: {removed:?}");
        }
        assert!(
            removed.iter().all(|name| name.starts_with("CARGO_")),
            "{removed:?}"
        );
    }

    #[test]
    fn missing_binaries_are_named_with_a_hint() {
        let directory = tempfile::tempdir().unwrap();
        let message = Binaries::in_directory(directory.path())
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("sightline-collector not found"),
            "{message}"
        );
        assert!(message.contains("-p sightline-collector"), "{message}");
    }
}
