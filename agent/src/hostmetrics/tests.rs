//! Host metrics over the fixture trees in `tests/fixtures/hostmetrics`: a
//! fake `/proc`, a cgroup v2 hierarchy with kubelet slices under both
//! cgroup drivers, and the kubelet log directories that name them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::config::HostMetricsConfig;

#[path = "../../tests/common/prom_text.rs"]
mod prom_text;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostmetrics")
}

fn fixture_config(root: &Path) -> HostMetricsConfig {
    HostMetricsConfig {
        proc_root: root.join("proc"),
        sys_root: root.join("sys"),
        rootfs: PathBuf::from("/host"),
        pod_logs_dir: root.join("var/log/pods"),
        container_logs_dir: root.join("var/log/containers"),
        ..HostMetricsConfig::default()
    }
}

/// `statvfs` answers from a table keyed by the path under the rootfs.
#[derive(Debug)]
struct TableStatFs(HashMap<PathBuf, FsUsage>);

impl StatFs for TableStatFs {
    fn stat(&self, path: &Path) -> std::io::Result<FsUsage> {
        self.0
            .get(path)
            .copied()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

fn table() -> TableStatFs {
    TableStatFs(HashMap::from([
        (
            PathBuf::from("/host/"),
            FsUsage {
                size_bytes: 100 << 30,
                free_bytes: 40 << 30,
                avail_bytes: 35 << 30,
                files: 6_553_600,
                files_free: 6_000_000,
            },
        ),
        (
            PathBuf::from("/host/run"),
            FsUsage {
                size_bytes: 823_422_976,
                free_bytes: 821_000_000,
                avail_bytes: 821_000_000,
                files: 1_000_000,
                files_free: 999_000,
            },
        ),
        (
            PathBuf::from("/host/mnt/my data"),
            FsUsage {
                size_bytes: 1 << 40,
                free_bytes: 1 << 38,
                avail_bytes: 1 << 38,
                files: 10,
                files_free: 5,
            },
        ),
    ]))
}

fn fixed_now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_763_700_000_250)
}

fn collect_fixture(root: &Path) -> String {
    HostCollector::new(&fixture_config(root))
        .unwrap()
        .collect_with(fixed_now(), &table())
}

/// The whole output is compared with `expected.prom`; run with
/// `SIGHTLINE_UPDATE_FIXTURES=1` to rewrite it after a deliberate change
/// (and read the diff: the lines below pin the numbers independently).
#[test]
fn fixture_output_matches_expected_file() {
    let text = collect_fixture(&fixtures());
    let expected_path = fixtures().join("expected.prom");
    if std::env::var_os("SIGHTLINE_UPDATE_FIXTURES").is_some() {
        std::fs::write(&expected_path, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    for (line_number, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
        assert_eq!(got, want, "line {} of expected.prom", line_number + 1);
    }
    assert_eq!(text.lines().count(), expected.lines().count(), "{text}");
}

#[test]
fn fixture_lines_follow_node_exporter_and_cadvisor() {
    let text = collect_fixture(&fixtures());
    for line in [
        // /proc/stat: 150 ticks of 1/100 s.
        "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.",
        "# TYPE node_cpu_seconds_total counter",
        "node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1.5",
        "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 45",
        "node_cpu_seconds_total{cpu=\"1\",mode=\"system\"} 0.53",
        "node_cpu_seconds_total{cpu=\"1\",mode=\"steal\"} 0",
        "node_boot_time_seconds 1700000000",
        "node_context_switches_total 987654",
        "node_intr_total 123456",
        "node_procs_blocked 1",
        // /proc/loadavg
        "node_load1 0.52",
        "node_load15 1.25",
        // /proc/meminfo: kB to bytes, `(anon)` to `_anon`, counts unsuffixed.
        "# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.",
        "# TYPE node_memory_MemTotal_bytes gauge",
        "node_memory_MemTotal_bytes 8234205184",
        "node_memory_MemAvailable_bytes 4117102592",
        "node_memory_MemFree_bytes 524288000",
        "node_memory_Buffers_bytes 104857600",
        "node_memory_Cached_bytes 2097152000",
        "node_memory_Active_anon_bytes 819200000",
        "node_memory_Inactive_file_bytes 307200000",
        "node_memory_HugePages_Total 0",
        // /proc/diskstats: sectors of 512 bytes, milliseconds to seconds;
        // the 11-column format of older kernels too.
        "node_disk_read_bytes_total{device=\"vda\"} 5056790016",
        "node_disk_reads_completed_total{device=\"vda\"} 123456",
        "node_disk_io_time_seconds_total{device=\"vda\"} 123.45",
        "node_disk_write_time_seconds_total{device=\"vda\"} 98.765",
        "node_disk_io_now{device=\"vda\"} 2",
        "node_disk_written_bytes_total{device=\"nvme0n1\"} 20480000",
        // mounts: pseudo filesystems, docker and kubelet volumes skipped,
        // the duplicate `/` once, `\040` decoded, a failed statvfs flagged.
        "node_filesystem_avail_bytes{device=\"/dev/sda1\",fstype=\"ext4\",mountpoint=\"/\"} 37580963840",
        "node_filesystem_size_bytes{device=\"/dev/sda1\",fstype=\"ext4\",mountpoint=\"/\"} 107374182400",
        "node_filesystem_free_bytes{device=\"/dev/sda1\",fstype=\"ext4\",mountpoint=\"/\"} 42949672960",
        "node_filesystem_size_bytes{device=\"tmpfs\",fstype=\"tmpfs\",mountpoint=\"/run\"} 823422976",
        "node_filesystem_readonly{device=\"/dev/sdb1\",fstype=\"xfs\",mountpoint=\"/mnt/my data\"} 1",
        "node_filesystem_device_error{device=\"/dev/sdc1\",fstype=\"ext4\",mountpoint=\"/mnt/gone\"} 1",
        "node_filesystem_device_error{device=\"/dev/sda1\",fstype=\"ext4\",mountpoint=\"/\"} 0",
        // /proc/net/dev
        "node_network_receive_bytes_total{device=\"eth0\"} 123456789",
        "node_network_transmit_bytes_total{device=\"eth0\"} 87654321",
        "node_network_receive_packets_total{device=\"eth0\"} 98765",
        "node_network_receive_errs_total{device=\"eth0\"} 2",
        "node_network_receive_multicast_total{device=\"eth0\"} 5",
        "node_network_transmit_colls_total{device=\"lo\"} 0",
        "node_time_seconds 1763700000.25",
        "node_uname_info{domainname=\"(none)\",machine=\"x86_64\",nodename=\"node-7\",release=\"6.1.0-18-amd64\",sysname=\"Linux\",version=\"#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)\"} 1",
        // cgroup v2, systemd driver: pod slice and its container scope.
        "container_cpu_usage_seconds_total{container=\"checkout\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 2.4",
        "container_memory_working_set_bytes{container=\"checkout\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 140509184",
        "container_memory_usage_bytes{container=\"checkout\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 150994944",
        "container_spec_memory_limit_bytes{container=\"checkout\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 268435456",
        "container_memory_working_set_bytes{id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 146800640",
        // CFS throttling of the container with a CPU quota.
        "container_cpu_cfs_periods_total{container=\"checkout\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 1200",
        "container_cpu_cfs_throttled_periods_total{container=\"checkout\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 300",
        "container_cpu_cfs_throttled_seconds_total{container=\"checkout\",id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-1111111111111111111111111111111111111111111111111111111111111111.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 4.5",
        // The sandbox (pause) container has no log file: pod labels only.
        "container_spec_memory_limit_bytes{id=\"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice/cri-containerd-2222222222222222222222222222222222222222222222222222222222222222.scope\",namespace=\"shop\",pod=\"checkout-7d9f8b6c5-x2x4z\"} 0",
        // cgroupfs driver; working set floored at 0.
        "container_memory_working_set_bytes{container=\"cleanup\",id=\"/kubepods/besteffort/pod5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9/3333333333333333333333333333333333333333333333333333333333333333\",namespace=\"batch\",pod=\"cleanup-28391\"} 0",
        "container_cpu_usage_seconds_total{container=\"cleanup\",id=\"/kubepods/besteffort/pod5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9/3333333333333333333333333333333333333333333333333333333333333333\",namespace=\"batch\",pod=\"cleanup-28391\"} 1",
        // Not a pod: id only.
        "container_memory_usage_bytes{id=\"/system.slice/docker-4444444444444444444444444444444444444444444444444444444444444444.scope\"} 33554432",
        "container_cpu_usage_seconds_total{id=\"/kubepods.slice\"} 5",
        "node_scrape_collector_success{collector=\"cpu\"} 1",
        "node_scrape_collector_success{collector=\"cgroup\"} 1",
    ] {
        assert!(
            text.lines().any(|got| got == line),
            "missing {line:?} in\n{text}"
        );
    }
    for absent in [
        "mountpoint=\"/proc\"",
        "mountpoint=\"/sys",
        "fstype=\"overlay\"",
        "/var/lib/kubelet/",
        "node_cpu_seconds_total{cpu=\"\"",
        "id=\"/\"}",
        "device=\"vda1\"",
        "device=\"loop0\"",
        "device=\"nvme0n1p1\"",
    ] {
        assert!(!text.contains(absent), "{absent:?} in\n{text}");
    }
    // Without a quota (nr_periods 0 or absent) there are no CFS series.
    let cfs_series = text
        .lines()
        .filter(|line| line.starts_with("container_cpu_cfs_periods_total{"))
        .count();
    assert_eq!(cfs_series, 1, "{text}");
    let device_errors = text
        .lines()
        .filter(|line| line.starts_with("node_filesystem_device_error{"))
        .count();
    assert_eq!(device_errors, 4, "/, /run, /mnt/my data, /mnt/gone");
}

#[test]
fn fixture_output_is_valid_text_format() {
    let text = collect_fixture(&fixtures());
    let exposition = prom_text::check(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    assert_eq!(
        exposition
            .types
            .get("node_cpu_seconds_total")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        exposition
            .types
            .get("container_memory_working_set_bytes")
            .map(String::as_str),
        Some("gauge")
    );
}

/// The seeds' alert expressions, computed by hand over the fixture's
/// values: they find the series and labels they need.
#[test]
fn alert_expressions_find_their_inputs() {
    let exposition = prom_text::check(&collect_fixture(&fixtures())).unwrap();
    let one = |name: &str, labels: &[(&str, &str)]| {
        let values = exposition.values(name, labels);
        assert_eq!(values.len(), 1, "{name}{labels:?}");
        values[0]
    };
    // (1 - MemAvailable / MemTotal) * 100 > 85
    let used = (1.0
        - one("node_memory_MemAvailable_bytes", &[]) / one("node_memory_MemTotal_bytes", &[]))
        * 100.0;
    assert!((used - 50.0).abs() < 1e-9, "{used}");
    // node_filesystem_avail_bytes / node_filesystem_size_bytes * 100 < 10
    let root = [
        ("mountpoint", "/"),
        ("device", "/dev/sda1"),
        ("fstype", "ext4"),
    ];
    let free = one("node_filesystem_avail_bytes", &root) / one("node_filesystem_size_bytes", &root)
        * 100.0;
    assert!((free - 35.0).abs() < 1e-9, "{free}");
    // rate(node_cpu_seconds_total{mode="idle"}[5m]) needs one idle series per CPU.
    assert_eq!(
        exposition.values("node_cpu_seconds_total", &[("mode", "idle")]),
        [45.0, 45.04]
    );
}

#[test]
fn a_broken_source_fails_only_its_collector() {
    let root = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), root.path());
    std::fs::write(root.path().join("proc/loadavg"), "high\n").unwrap();
    std::fs::remove_file(root.path().join("proc/meminfo")).unwrap();
    std::fs::remove_file(root.path().join("sys/fs/cgroup/cgroup.controllers")).unwrap();
    let text = collect_fixture(root.path());
    prom_text::check(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    for line in [
        "node_scrape_collector_success{collector=\"loadavg\"} 0",
        "node_scrape_collector_success{collector=\"meminfo\"} 0",
        "node_scrape_collector_success{collector=\"cgroup\"} 0",
        "node_scrape_collector_success{collector=\"cpu\"} 1",
        "node_scrape_collector_success{collector=\"netdev\"} 1",
        "node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1.5",
    ] {
        assert!(
            text.lines().any(|got| got == line),
            "missing {line:?} in\n{text}"
        );
    }
    for family in ["node_load1", "node_memory_", "container_"] {
        assert!(!text.contains(family), "{family} in\n{text}");
    }
}

#[test]
fn bad_exclusion_regex_names_its_key() {
    let config = HostMetricsConfig {
        mount_points_exclude: "(".to_owned(),
        ..HostMetricsConfig::default()
    };
    let error = HostCollector::new(&config).unwrap_err().to_string();
    assert!(
        error.contains("`host_metrics.mount_points_exclude`"),
        "{error}"
    );
}

#[tokio::test]
async fn render_reuses_a_fresh_collection() {
    let root = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), root.path());
    let config = HostMetricsConfig {
        cache_for: Duration::from_secs(3600),
        ..fixture_config(root.path())
    };
    let host = HostMetrics::from_config(&config).unwrap().unwrap();
    let first = host.render().await;
    assert!(first.contains("node_load1 0.52\n"), "{first}");
    std::fs::write(root.path().join("proc/loadavg"), "9.00 1 1 1/1 1\n").unwrap();
    let second = host.render().await;
    assert!(Arc::ptr_eq(&first, &second), "cached within cache_for");

    let uncached = HostMetrics::from_config(&HostMetricsConfig {
        cache_for: Duration::ZERO,
        ..config
    })
    .unwrap()
    .unwrap();
    let third = uncached.render().await;
    assert!(third.contains("node_load1 9\n"), "{third}");
    assert!(
        HostMetrics::from_config(&HostMetricsConfig {
            enabled: false,
            ..HostMetricsConfig::default()
        })
        .unwrap()
        .is_none()
    );
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Garbage in any source fails that collector, never the scrape, and
/// never panics.
#[test]
fn garbage_sources_fail_their_collector_only() {
    let cases: [(&str, &str, &[u8]); 14] = [
        ("cpu", "proc/stat", b""),
        ("cpu", "proc/stat", b"cpu0 1 2\nbtime 5\n"),
        ("stat", "proc/stat", b"cpu0 1 2 3 4\nbtime\n"),
        ("cpu", "proc/stat", b"cpu0 -1 2 3 4\nbtime 1\n"),
        ("loadavg", "proc/loadavg", b"\xff\xfe\x00"),
        ("loadavg", "proc/loadavg", b"1.0 2.0\n"),
        (
            "meminfo",
            "proc/meminfo",
            b"MemTotal: 99999999999999999999999 kB\n",
        ),
        ("meminfo", "proc/meminfo", b"no colons here\n"),
        ("netdev", "proc/net/dev", b"one line only\n"),
        (
            "netdev",
            "proc/net/dev",
            b"h\n face |bytes packets|bytes packets\n eth0: 1 2 3\n",
        ),
        ("filesystem", "proc/mounts", b""),
        ("diskstats", "proc/diskstats", b"8 0 sda 1 2 3\n"),
        (
            "diskstats",
            "proc/diskstats",
            b"8 0 sda 1 2 3 4 5 6 7 8 9 x 11\n",
        ),
        ("cgroup", "sys/fs/cgroup/cgroup.controllers", b""),
    ];
    for (collector, file, content) in cases {
        let root = tempfile::tempdir().unwrap();
        copy_tree(&fixtures(), root.path());
        let path = root.path().join(file);
        if collector == "cgroup" {
            std::fs::remove_file(&path).unwrap();
        } else {
            std::fs::write(&path, content).unwrap();
        }
        let text = collect_fixture(root.path());
        prom_text::check(&text).unwrap_or_else(|error| panic!("{file}: {error}\n{text}"));
        let failed = format!("node_scrape_collector_success{{collector=\"{collector}\"}} 0");
        assert!(
            text.lines().any(|line| line == failed),
            "{file} {content:?}\n{text}"
        );
        assert!(
            text.contains("node_scrape_collector_success{collector=\"time\"} 1"),
            "{text}"
        );
    }
}

#[test]
fn config_section_is_strict() {
    let error = crate::Config::from_toml("[host_metrics]\nproc_dir = \"/host/proc\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("proc_dir"), "{error}");
    let config = crate::Config::from_toml(
        "[host_metrics]\nproc_root = \"/host/proc\"\ncache_for = \"2s\"\nenabled = false\n",
    )
    .unwrap();
    assert_eq!(config.host_metrics.proc_root, PathBuf::from("/host/proc"));
    assert_eq!(config.host_metrics.cache_for, Duration::from_secs(2));
    assert!(!config.host_metrics.enabled);
}

/// A `statvfs` that hangs (a dead NFS server) until the test lets it go.
#[derive(Debug)]
struct HangingStatFs(
    std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    Arc<std::sync::atomic::AtomicUsize>,
);

impl StatFs for HangingStatFs {
    fn stat(&self, _path: &Path) -> std::io::Result<FsUsage> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.0.lock().unwrap().recv();
        Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collection_is_not_waited_for_nor_started_twice() {
    let (release, hold) = std::sync::mpsc::channel();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let config = HostMetricsConfig {
        cache_for: Duration::ZERO,
        timeout: Duration::from_millis(20),
        ..fixture_config(&fixtures())
    };
    let host = HostMetrics {
        collector: Arc::new(HostCollector::new(&config).unwrap()),
        statfs: Arc::new(HangingStatFs(
            std::sync::Mutex::new(hold),
            Arc::clone(&calls),
        )),
        cache_for: config.cache_for,
        timeout: config.timeout,
        state: tokio::sync::Mutex::default(),
    };
    // The collection blocks in statvfs: the scrape answers without it.
    for _ in 0..3 {
        let text = host.render().await;
        assert!(!text.contains("node_cpu_seconds_total"), "{text}");
        assert!(
            text.contains("node_scrape_collector_success{collector=\"cpu\"} 0\n"),
            "{text}"
        );
        assert!(host.state.lock().await.running.is_some(), "one job kept");
    }
    // Released, the same job finishes (one statvfs per mount, so one
    // message per mount it reaches) and the next scrape gets its result.
    for _ in 0..8 {
        let _ = release.send(());
    }
    drop(release);
    let text = loop {
        let text = host.render().await;
        if text.contains("node_cpu_seconds_total") {
            break text;
        }
        tokio::task::yield_now().await;
    };
    assert!(
        text.contains("node_scrape_collector_success{collector=\"filesystem\"} 1\n"),
        "{text}"
    );
    assert!(host.state.lock().await.running.is_none());
    // One collection in all: one statvfs per real mount of the fixture.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
}
