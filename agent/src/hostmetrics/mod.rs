//! Host and container metrics: what node_exporter and cAdvisor would serve,
//! read from `/proc` and cgroup v2 and appended to the agent's own
//! `GET /metrics`.
//!
//! The agent runs on every node (a DaemonSet), so the collector scrapes
//! node and container metrics from it instead of from a separate
//! node_exporter and the kubelet's cAdvisor endpoint. Names, labels, types
//! and help texts are theirs, so dashboards and alert rules written for
//! them work unchanged, for example:
//!
//! ```text
//! 100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))) > 80
//! (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes) * 100 > 85
//! node_filesystem_avail_bytes / node_filesystem_size_bytes * 100 < 10
//! sum by (namespace, pod) (rate(container_cpu_usage_seconds_total{container!=""}[5m]))
//! rate(container_cpu_cfs_throttled_periods_total[5m]) / rate(container_cpu_cfs_periods_total[5m]) > 0.25
//! ```
//!
//! ## Collectors
//!
//! | collector | reads | families |
//! |---|---|---|
//! | `cpu` | `<proc>/stat` | `node_cpu_seconds_total{cpu,mode}`, `node_cpu_guest_seconds_total` |
//! | `stat` | `<proc>/stat` | `node_boot_time_seconds`, `node_context_switches_total`, `node_forks_total`, `node_intr_total`, `node_procs_running`, `node_procs_blocked` |
//! | `loadavg` | `<proc>/loadavg` | `node_load1`, `node_load5`, `node_load15` |
//! | `meminfo` | `<proc>/meminfo` | `node_memory_<Field>_bytes` for every line (`Active(anon)` becomes `Active_anon`) |
//! | `diskstats` | `<proc>/diskstats` | `node_disk_{reads,writes}_completed_total`, `node_disk_{read,written}_bytes_total`, `node_disk_{read,write,io}_time_seconds_total`, `node_disk_io_now`, … `{device}` (whole disks: partitions, loop and RAM devices excluded) |
//! | `filesystem` | `<proc>/1/mounts` (else `<proc>/mounts`), `statvfs` under the rootfs | `node_filesystem_{size,free,avail}_bytes`, `_files`, `_files_free`, `_readonly`, `_device_error` |
//! | `netdev` | `<proc>/1/net/dev` (else `<proc>/net/dev`) | `node_network_{receive,transmit}_<field>_total{device}` |
//! | `time` | the clock | `node_time_seconds` |
//! | `uname` | `<proc>/sys/kernel/{ostype,osrelease,version,hostname,domainname,arch}` | `node_uname_info` (the host's names when the agent shares the host's UTS namespace, as with `hostNetwork`) |
//! | `cgroup` | `<sys>/fs/cgroup` (cgroup v2 only): `cpu.stat`, `memory.current`, `memory.max`, `memory.stat` | `container_cpu_{usage,user,system}_seconds_total`, `container_cpu_cfs_{periods,throttled_periods,throttled_seconds}_total` (with a CPU quota), `container_memory_{usage_bytes,working_set_bytes,rss,cache}`, `container_spec_memory_limit_bytes` |
//!
//! Every collector reports `node_scrape_collector_success{collector}`: a
//! file that cannot be read or parsed drops that collector's families from
//! the scrape and sets its gauge to 0; the rest of `/metrics` is served.
//!
//! ## Containers
//!
//! Every cgroup below the root is a series with an `id` label (its path,
//! as cAdvisor's `id`). Kubelet cgroups are named after the pod uid and the
//! container id, under both cgroup drivers:
//!
//! ```text
//! kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/cri-containerd-<id>.scope
//! kubepods/burstable/pod<uid>/<id>
//! ```
//!
//! The pod uid is mapped to namespace and pod through the kubelet log
//! directories (`/var/log/pods/<namespace>_<pod>_<uid>/`) and the container
//! id to its name through `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`,
//! the files the agent tails anyway: no API server access is needed.
//! A pod cgroup gets `namespace` and `pod`, a container cgroup also
//! `container`; a cgroup neither names keeps only `id`.
//!
//! ## Cost
//!
//! A scrape collects on the blocking pool, never on the async runtime, at
//! most one collection runs at a time, a result is reused for
//! `cache_for` (1 s), and the cgroup walk stops after `max_cgroups`
//! directories. A collection that takes longer than `timeout` (a hung
//! network filesystem in `statvfs`) is not waited for: the scrape reports
//! every collector as failed, and the next scrape waits for the same
//! collection instead of starting another.

mod cgroup;
mod exposition;
mod node;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use regex::Regex;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::HostMetricsConfig;
use crate::error::Result;
use exposition::Exposition;

/// Collectors in the order their families appear on `/metrics`.
const COLLECTORS: [&str; 10] = [
    "cpu",
    "stat",
    "loadavg",
    "meminfo",
    "diskstats",
    "filesystem",
    "netdev",
    "time",
    "uname",
    "cgroup",
];

/// Why one collector produced nothing this scrape.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub(crate) struct CollectError {
    path: String,
    reason: String,
}

impl CollectError {
    fn new(path: &Path, reason: impl ToString) -> CollectError {
        CollectError {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Reads a small text file, naming the path in the error.
fn read_text(path: &Path) -> std::result::Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|error| CollectError::new(path, error))
}

/// Space and inode counts of one mounted filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsUsage {
    pub(crate) size_bytes: u64,
    pub(crate) free_bytes: u64,
    pub(crate) avail_bytes: u64,
    pub(crate) files: u64,
    pub(crate) files_free: u64,
}

/// Where filesystem statistics come from: `statvfs(2)` in production, a
/// table in tests.
pub(crate) trait StatFs: Send + Sync + std::fmt::Debug {
    fn stat(&self, path: &Path) -> std::io::Result<FsUsage>;
}

/// `statvfs(2)` through rustix (no unsafe code here).
#[derive(Debug)]
struct SystemStatFs;

impl StatFs for SystemStatFs {
    fn stat(&self, path: &Path) -> std::io::Result<FsUsage> {
        let stats = rustix::fs::statvfs(path)?;
        let block = stats.f_frsize;
        Ok(FsUsage {
            size_bytes: stats.f_blocks.saturating_mul(block),
            free_bytes: stats.f_bfree.saturating_mul(block),
            avail_bytes: stats.f_bavail.saturating_mul(block),
            files: stats.f_files,
            files_free: stats.f_ffree,
        })
    }
}

/// The collectors, configured: roots, exclusions and limits. Collecting is
/// blocking file I/O; [`HostMetrics`] runs it on the blocking pool.
#[derive(Debug)]
pub struct HostCollector {
    proc_root: PathBuf,
    sys_root: PathBuf,
    rootfs: PathBuf,
    pod_logs_dir: PathBuf,
    container_logs_dir: PathBuf,
    filesystem_types_exclude: Regex,
    mount_points_exclude: Regex,
    disk_devices_exclude: Regex,
    max_cgroups: usize,
    /// Per collector: its last failure was logged (reset on success), so
    /// a broken source warns once, not on every scrape.
    warned: [AtomicBool; COLLECTORS.len()],
    /// `max_cgroups` cut a walk short and it was logged.
    cgroup_limit_warned: AtomicBool,
}

impl HostCollector {
    /// Compiles `config`; a bad exclusion regex is an error naming its key.
    pub fn new(config: &HostMetricsConfig) -> Result<HostCollector> {
        let exclude = config.exclusions()?;
        Ok(HostCollector {
            proc_root: config.proc_root.clone(),
            sys_root: config.sys_root.clone(),
            rootfs: config.rootfs.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            container_logs_dir: config.container_logs_dir.clone(),
            filesystem_types_exclude: exclude.filesystem_types,
            mount_points_exclude: exclude.mount_points,
            disk_devices_exclude: exclude.disk_devices,
            max_cgroups: config.max_cgroups,
            warned: Default::default(),
            cgroup_limit_warned: AtomicBool::new(false),
        })
    }

    /// Collects every family now and renders them in the Prometheus text
    /// format 0.0.4. Blocking: reads files under the configured roots.
    pub fn collect(&self) -> String {
        self.collect_with(SystemTime::now(), &SystemStatFs)
    }

    fn collect_with(&self, now: SystemTime, statfs: &dyn StatFs) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let proc_stat = read_text(&self.proc_root.join("stat"));
        let mut outcomes = [false; COLLECTORS.len()];
        for (index, name) in COLLECTORS.iter().enumerate() {
            let mut families = Exposition::default();
            let result = match *name {
                "cpu" => proc_stat
                    .as_ref()
                    .map_err(clone_error)
                    .and_then(|text| node::cpu(text, &self.proc_root, &mut families)),
                "stat" => proc_stat
                    .as_ref()
                    .map_err(clone_error)
                    .and_then(|text| node::stat(text, &self.proc_root, &mut families)),
                "loadavg" => node::loadavg(&self.proc_root, &mut families),
                "meminfo" => node::meminfo(&self.proc_root, &mut families),
                "diskstats" => node::diskstats(self, &mut families),
                "filesystem" => node::filesystem(self, statfs, &mut families),
                "netdev" => node::netdev(&self.proc_root, &mut families),
                "time" => {
                    node::time(now, &mut families);
                    Ok(())
                }
                "uname" => node::uname(&self.proc_root, &mut families),
                "cgroup" => cgroup::collect(self, &mut families),
                other => Err(CollectError::new(
                    Path::new(other),
                    "collector listed without an implementation",
                )),
            };
            outcomes[index] = self.note_outcome(index, result);
            if outcomes[index] {
                out.push_str(&families.into_text());
            }
        }
        out.push_str(&render_success(&outcomes));
        out
    }

    /// Logs a collector's failure once until it succeeds again.
    fn note_outcome(&self, index: usize, result: std::result::Result<(), CollectError>) -> bool {
        match result {
            Ok(()) => {
                if self.warned[index].swap(false, Ordering::Relaxed) {
                    info!(
                        collector = COLLECTORS[index],
                        "host metrics collector recovered"
                    );
                }
                true
            }
            Err(error) => {
                if !self.warned[index].swap(true, Ordering::Relaxed) {
                    warn!(collector = COLLECTORS[index], %error, "host metrics collector failed");
                }
                false
            }
        }
    }
}

fn clone_error(error: &CollectError) -> CollectError {
    CollectError {
        path: error.path.clone(),
        reason: error.reason.clone(),
    }
}

/// `node_scrape_collector_success{collector}` for every collector.
fn render_success(outcomes: &[bool; COLLECTORS.len()]) -> String {
    let mut families = Exposition::default();
    families.gauge(
        "node_scrape_collector_success",
        "node_exporter: Whether a collector succeeded.",
    );
    for (name, ok) in COLLECTORS.iter().zip(outcomes) {
        families.sample(
            "node_scrape_collector_success",
            &[("collector", name)],
            f64::from(u8::from(*ok)),
        );
    }
    families.into_text()
}

/// Host metrics for `GET /metrics`: collection on the blocking pool, one
/// at a time, its result reused for `cache_for`.
#[derive(Debug)]
pub struct HostMetrics {
    collector: Arc<HostCollector>,
    statfs: Arc<dyn StatFs>,
    cache_for: std::time::Duration,
    timeout: std::time::Duration,
    state: tokio::sync::Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    last: Option<(Instant, Arc<str>)>,
    /// A collection that outlived its scrape's timeout; the next scrape
    /// waits for it rather than starting a second one.
    running: Option<JoinHandle<String>>,
}

impl HostMetrics {
    /// Builds the host metrics of `config`, or `None` when they are off.
    pub fn from_config(config: &HostMetricsConfig) -> Result<Option<Arc<HostMetrics>>> {
        if !config.enabled {
            return Ok(None);
        }
        Ok(Some(Arc::new(HostMetrics {
            collector: Arc::new(HostCollector::new(config)?),
            statfs: Arc::new(SystemStatFs),
            cache_for: config.cache_for,
            timeout: config.timeout,
            state: tokio::sync::Mutex::default(),
        })))
    }

    /// The rendered families: cached if younger than `cache_for`, else
    /// collected now on the blocking pool.
    pub async fn render(&self) -> Arc<str> {
        let mut state = self.state.lock().await;
        if let Some((at, text)) = &state.last
            && at.elapsed() < self.cache_for
        {
            return Arc::clone(text);
        }
        let mut job = match state.running.take() {
            Some(job) => job,
            None => {
                let collector = Arc::clone(&self.collector);
                let statfs = Arc::clone(&self.statfs);
                tokio::task::spawn_blocking(move || {
                    collector.collect_with(SystemTime::now(), &*statfs)
                })
            }
        };
        match tokio::time::timeout(self.timeout, &mut job).await {
            Ok(Ok(text)) => {
                let text: Arc<str> = Arc::from(text);
                state.last = Some((Instant::now(), Arc::clone(&text)));
                text
            }
            Ok(Err(error)) => {
                warn!(%error, "host metrics collection failed");
                Arc::from(render_success(&[false; COLLECTORS.len()]))
            }
            Err(_elapsed) => {
                warn!(
                    timeout = ?self.timeout,
                    "host metrics collection is slow, answering without it"
                );
                state.running = Some(job);
                Arc::from(render_success(&[false; COLLECTORS.len()]))
            }
        }
    }
}

#[cfg(test)]
mod tests;
