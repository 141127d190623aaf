//! Cost of one host metrics collection: what a scrape of the agent's
//! `/metrics` pays for node and container metrics.
//!
//! The node part reads this machine's real `/proc` and `statvfs`; the
//! container part walks a synthetic cgroup v2 tree shaped like a full
//! kubelet node (systemd driver: `kubepods.slice`, the three QoS slices,
//! one slice per pod, one scope per container plus the sandbox), with the
//! matching `/var/log/pods` and `/var/log/containers` names, built in a
//! temporary directory before the clock starts.
//!
//! ```text
//! cargo bench -p sightline-agent --bench hostmetrics -- [--pods 110] [--containers 2] [--iterations 200]
//! ```
//!
//! Prints the median and p99 wall time of `HostCollector::collect` and the
//! size of its output.

use std::path::Path;
use std::time::{Duration, Instant};

use sightline_agent::config::HostMetricsConfig;
use sightline_agent::hostmetrics::HostCollector;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|index| args.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn write_cgroup(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let file = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    file(
        "cpu.stat",
        format!(
            "usage_usec {}\nuser_usec {}\nsystem_usec {}\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
            seed * 3,
            seed * 2,
            seed
        ),
    );
    file("memory.current", format!("{}\n", seed * 4096));
    file("memory.max", "max\n".to_owned());
    file(
        "memory.stat",
        format!(
            "anon {}\nfile {}\nkernel 0\nsock 0\nshmem 0\nactive_anon 0\ninactive_anon 0\nactive_file {}\ninactive_file {}\nunevictable 0\n",
            seed * 2048,
            seed * 1024,
            seed * 512,
            seed * 512
        ),
    );
}

fn build_node(root: &Path, pods: usize, containers: usize) -> usize {
    let cgroup = root.join("sys/fs/cgroup");
    std::fs::create_dir_all(&cgroup).unwrap();
    std::fs::write(cgroup.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
    let pod_logs = root.join("var/log/pods");
    let container_logs = root.join("var/log/containers");
    std::fs::create_dir_all(&container_logs).unwrap();
    let mut cgroups = 0;
    let qos = ["guaranteed", "burstable", "besteffort"];
    write_cgroup(&cgroup.join("kubepods.slice"), 1);
    cgroups += 1;
    for class in &qos[1..] {
        write_cgroup(
            &cgroup.join(format!("kubepods.slice/kubepods-{class}.slice")),
            2,
        );
        cgroups += 1;
    }
    for pod in 0..pods {
        let uid = format!("{pod:08x}-0000-4000-8000-000000000000");
        let class = qos[pod % 3];
        let slice = if class == "guaranteed" {
            format!("kubepods.slice/kubepods-pod{}.slice", uid.replace('-', "_"))
        } else {
            format!(
                "kubepods.slice/kubepods-{class}.slice/kubepods-{class}-pod{}.slice",
                uid.replace('-', "_")
            )
        };
        let pod_dir = cgroup.join(&slice);
        write_cgroup(&pod_dir, pod as u64 + 10);
        cgroups += 1;
        let name = format!("app-{pod}-7d9f8b6c5-x2x4z");
        std::fs::create_dir_all(pod_logs.join(format!("shop_{name}_{uid}"))).unwrap();
        for container in 0..=containers {
            let id = format!("{:064x}", pod * 100 + container);
            write_cgroup(
                &pod_dir.join(format!("cri-containerd-{id}.scope")),
                (pod * 100 + container) as u64,
            );
            cgroups += 1;
            if container > 0 {
                // container 0 is the sandbox: no log file names it
                std::fs::write(
                    container_logs.join(format!("{name}_shop_c{container}-{id}.log")),
                    "",
                )
                .unwrap();
            }
        }
    }
    cgroups
}

fn main() {
    let pods = arg("--pods", 110);
    let containers = arg("--containers", 2);
    let iterations = arg("--iterations", 200).max(1);
    let root = tempfile::tempdir().unwrap();
    let cgroups = build_node(root.path(), pods, containers);
    let config = HostMetricsConfig {
        sys_root: root.path().join("sys"),
        pod_logs_dir: root.path().join("var/log/pods"),
        container_logs_dir: root.path().join("var/log/containers"),
        ..HostMetricsConfig::default()
    };
    let collector = HostCollector::new(&config).unwrap();
    let warm = collector.collect();
    assert!(
        warm.contains("node_scrape_collector_success{collector=\"cgroup\"} 1"),
        "{warm}"
    );
    let mut times: Vec<Duration> = Vec::with_capacity(iterations);
    let mut bytes = 0;
    for _ in 0..iterations {
        let start = Instant::now();
        let text = collector.collect();
        times.push(start.elapsed());
        bytes = text.len();
    }
    times.sort();
    let samples = warm.lines().filter(|line| !line.starts_with('#')).count();
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    println!(
        "host metrics: {pods} pods x ({containers} containers + sandbox) = {cgroups} cgroups; \
         {samples} samples, {bytes} bytes per collection"
    );
    println!(
        "collect: median {:.2} ms, p99 {:.2} ms over {iterations} collections",
        median.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}
