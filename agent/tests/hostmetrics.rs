//! Host and container metrics against this machine's real `/proc` and
//! `/sys/fs/cgroup`, and on the running agent's `/metrics` over HTTP.

mod common;
#[path = "common/prom_text.rs"]
mod prom_text;

use std::path::Path;

use sightline_agent::Config;
use sightline_agent::config::HostMetricsConfig;
use sightline_agent::hostmetrics::HostCollector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{CountingCollector, start_collector};

fn success(exposition: &prom_text::Exposition, collector: &str) -> Vec<f64> {
    exposition.values("node_scrape_collector_success", &[("collector", collector)])
}

#[test]
fn this_machine_has_sane_node_metrics() {
    let collector = HostCollector::new(&HostMetricsConfig::default()).unwrap();
    let text = collector.collect();
    let exposition = prom_text::check(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    for name in [
        "cpu",
        "stat",
        "loadavg",
        "meminfo",
        "diskstats",
        "filesystem",
        "netdev",
        "time",
        "uname",
    ] {
        assert_eq!(
            success(&exposition, name),
            [1.0],
            "collector {name}\n{text}"
        );
    }

    let total = exposition.values("node_memory_MemTotal_bytes", &[]);
    let available = exposition.values("node_memory_MemAvailable_bytes", &[]);
    assert_eq!((total.len(), available.len()), (1, 1), "{text}");
    assert!(
        total[0] >= available[0] && available[0] > 0.0,
        "{total:?} {available:?}"
    );

    let idle = exposition.values("node_cpu_seconds_total", &[("mode", "idle")]);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(idle.len() >= cpus, "one idle series per CPU: {idle:?}");
    let busy: f64 = exposition
        .values("node_cpu_seconds_total", &[])
        .iter()
        .sum();
    assert!(busy > 0.0, "cpu seconds since boot: {busy}");

    let boot = exposition.values("node_boot_time_seconds", &[])[0];
    let now = exposition.values("node_time_seconds", &[])[0];
    assert!(boot > 1e9 && boot < now, "boot {boot}, now {now}");
    assert_eq!(exposition.values("node_load1", &[]).len(), 1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        exposition
            .values(
                "node_uname_info",
                &[("sysname", "Linux"), ("release", kernel.trim())]
            )
            .len(),
        1,
        "{text}"
    );
    assert!(
        !exposition
            .values("node_network_receive_bytes_total", &[("device", "lo")])
            .is_empty(),
        "{text}"
    );
    // Every filesystem statvfs answered for has avail <= free <= size.
    for (_, labels, size) in exposition
        .samples
        .iter()
        .filter(|(name, _, _)| name == "node_filesystem_size_bytes")
    {
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        let free = exposition.values("node_filesystem_free_bytes", &labels)[0];
        let avail = exposition.values("node_filesystem_avail_bytes", &labels)[0];
        assert!(avail <= free && free <= *size, "{labels:?}");
    }

    // cgroup v2 only: on a v1 or hybrid host the collector says it failed.
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").is_file();
    let cgroup = success(&exposition, "cgroup");
    if unified {
        assert_eq!(cgroup, [1.0], "{text}");
        assert_eq!(
            exposition
                .types
                .get("container_cpu_usage_seconds_total")
                .map(String::as_str),
            Some("counter")
        );
        for (_, labels, usage) in exposition
            .samples
            .iter()
            .filter(|(name, _, _)| name == "container_memory_usage_bytes")
        {
            let id = [("id", labels["id"].as_str())];
            let working_set = exposition.values("container_memory_working_set_bytes", &id);
            assert!(working_set[0] <= *usage, "{id:?}");
        }
    } else {
        assert_eq!(cgroup, [0.0], "{text}");
        assert!(!text.contains("container_"), "{text}");
    }
}

/// GET over a real loopback connection.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_agent_serves_node_metrics_with_its_own() {
    let root = tempfile::tempdir().unwrap();
    let server = start_collector(CountingCollector::default()).await;
    let config = Config {
        include: vec![format!("{}/pods/*/*/*.log", root.path().display())],
        collector: format!("http://{}", server.addr),
        data_dir: root.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        host_name: "node-test".to_owned(),
        ..Config::default()
    };
    let agent = sightline_agent::start(config.clone()).await.unwrap();

    let response = http_get(agent.http_addr(), "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let exposition = prom_text::check(body).unwrap_or_else(|error| panic!("{error}\n{body}"));
    assert!(
        !exposition.values("node_cpu_seconds_total", &[]).is_empty(),
        "{body}"
    );
    assert_eq!(
        exposition.values("node_scrape_collector_success", &[("collector", "cpu")]),
        [1.0]
    );
    assert!(
        exposition
            .types
            .contains_key("sightline_agent_lines_read_total"),
        "the agent's own families stay"
    );
    agent.shutdown().await.unwrap();

    // Switched off, only the agent's own families are served.
    let config = Config {
        host_metrics: HostMetricsConfig {
            enabled: false,
            ..HostMetricsConfig::default()
        },
        ..config
    };
    let agent = sightline_agent::start(config).await.unwrap();
    let response = http_get(agent.http_addr(), "/metrics").await;
    assert!(
        response.contains("sightline_agent_lines_read_total"),
        "{response}"
    );
    assert!(!response.contains("node_cpu_seconds_total"), "{response}");
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[test]
fn example_config_documents_host_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sightline-agent.example.toml");
    let config = Config::from_file(Path::new(path)).unwrap();
    let defaults = HostMetricsConfig::default();
    assert_eq!(
        format!("{:?}", config.host_metrics),
        format!("{defaults:?}"),
        "the example lists the defaults"
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("[host_metrics]"), "{text}");
}

/// Prometheus's own parser and linter (`promtool check metrics`, Debian
/// package `prometheus`) reads the exposition without a parse error; the
/// only lint it may report is the camelCase of node_exporter's own
/// `node_memory_*` names, kept for compatibility.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // 0: clean, 3: lint problems only; 1 would be a parse error.
    assert!(
        matches!(output.status.code(), Some(0 | 3)),
        "promtool {:?}: {report}",
        output.status
    );
    for line in report.lines().filter(|line| !line.trim().is_empty()) {
        assert!(
            line.starts_with("node_memory_") && line.ends_with("not 'camelCase'"),
            "promtool: {line}"
        );
    }
}

#[test]
fn promtool_parses_the_fixture_node() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostmetrics");
    let collector = HostCollector::new(&HostMetricsConfig {
        proc_root: fixtures.join("proc"),
        sys_root: fixtures.join("sys"),
        rootfs: fixtures.clone(),
        pod_logs_dir: fixtures.join("var/log/pods"),
        container_logs_dir: fixtures.join("var/log/containers"),
        ..HostMetricsConfig::default()
    })
    .unwrap();
    let text = collector.collect();
    assert!(
        text.contains("container_memory_working_set_bytes{container=\"checkout\""),
        "{text}"
    );
    promtool_accepts(&text);
}

/// A child process killed when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// Runs an instant query against Prometheus; `None` until it has data.
async fn prometheus_query(
    addr: std::net::SocketAddr,
    expr: &str,
) -> Option<Vec<(serde_json::Value, f64)>> {
    // HTTP/1.0: Go's server answers without chunked encoding and closes.
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "GET /api/v1/query?query={} HTTP/1.0\r\nHost: {addr}\r\n\r\n",
        percent_encode(expr)
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    assert_eq!(json["status"], "success", "{expr}: {json}");
    let series = json["data"]["result"].as_array()?;
    if series.is_empty() {
        return None;
    }
    Some(
        series
            .iter()
            .map(|sample| {
                let value = sample["value"][1].as_str().unwrap().parse().unwrap();
                (sample["metric"].clone(), value)
            })
            .collect(),
    )
}

/// The real Prometheus (Debian package `prometheus`) scrapes the running
/// agent, and the seeds' CPU, memory and disk alert expressions, and a
/// container memory one, evaluate over what it scraped: node metrics from
/// this machine, container metrics from the fixture cgroup tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_the_alert_expressions_over_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostmetrics");
    let server = start_collector(CountingCollector::default()).await;
    let agent = sightline_agent::start(Config {
        include: vec![format!("{}/pods/*/*/*.log", root.path().display())],
        collector: format!("http://{}", server.addr),
        data_dir: root.path().join("data"),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        host_name: "node-test".to_owned(),
        host_metrics: HostMetricsConfig {
            sys_root: fixtures.join("sys"),
            pod_logs_dir: fixtures.join("var/log/pods"),
            container_logs_dir: fixtures.join("var/log/containers"),
            ..HostMetricsConfig::default()
        },
        ..Config::default()
    })
    .await
    .unwrap();

    let port = free_port();
    let config = root.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: agent\n    static_configs:\n      - targets: ['{}']\n",
            agent.http_addr()
        ),
    )
    .unwrap();
    let _prometheus = ChildGuard(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                root.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus) must be installed"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let cpu = r#"100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m])))"#;
    let memory = "(1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes) * 100";
    let disk = "node_filesystem_avail_bytes / node_filesystem_size_bytes * 100";
    let container = r#"container_memory_working_set_bytes{container!=""} / (container_spec_memory_limit_bytes > 0)"#;
    let mut results = Vec::new();
    for expr in [cpu, memory, disk, container] {
        // Bounded wait: a rate needs two scrapes; 2 minutes is far more.
        let mut found = None;
        for _ in 0..480 {
            found = prometheus_query(addr, expr).await;
            if found.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        results.push(found.unwrap_or_else(|| panic!("no result for {expr}")));
    }
    let instance = agent.http_addr().to_string();
    assert_eq!(results[0].len(), 1, "{:?}", results[0]);
    assert_eq!(results[0][0].0["instance"], instance.as_str());
    for (index, expr) in [cpu, memory, disk].iter().enumerate() {
        for (labels, percent) in &results[index] {
            assert!(
                (0.0..=100.0).contains(percent),
                "{expr} {labels}: {percent}"
            );
        }
    }
    // The fixture's checkout container: 140509184 / 268435456.
    assert_eq!(results[3].len(), 1, "{:?}", results[3]);
    let (labels, ratio) = &results[3][0];
    assert_eq!(labels["namespace"], "shop");
    assert_eq!(labels["container"], "checkout");
    assert!(
        (ratio - 140_509_184.0 / 268_435_456.0).abs() < 1e-9,
        "{ratio}"
    );
    // The whole alert rules parse and evaluate (empty results are fine).
    for rule in [
        format!("{cpu} > 80"),
        format!("{memory} > 85"),
        format!("{disk} < 10"),
    ] {
        let _ = prometheus_query(addr, &rule).await;
    }

    agent.shutdown().await.unwrap();
    server.stop().await;
}
