//! node_exporter's families from `/proc` and `statvfs(2)`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::exposition::Exposition;
use super::{CollectError, HostCollector, StatFs, read_text};

/// Clock ticks per second of `/proc/stat` (`USER_HZ`, 100 on every Linux
/// architecture the agent runs on).
const USER_HZ: f64 = 100.0;

/// `/proc/stat` CPU columns, in file order, as node_exporter names them.
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

type Outcome = Result<(), CollectError>;

fn parse_number<T: std::str::FromStr>(
    path: &Path,
    line_number: usize,
    field: &str,
) -> Result<T, CollectError> {
    field.parse().map_err(|_| {
        CollectError::new(
            path,
            format!("line {}: {field:?} is not a number", line_number + 1),
        )
    })
}

/// `node_cpu_seconds_total{cpu,mode}` and `node_cpu_guest_seconds_total`
/// from the `cpuN` lines of `/proc/stat`.
pub(super) fn cpu(text: &str, proc_root: &Path, out: &mut Exposition) -> Outcome {
    let path = proc_root.join("stat");
    let mut cpus: Vec<(String, Vec<u64>)> = Vec::new();
    for (line_number, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields.next().and_then(|name| name.strip_prefix("cpu")) else {
            continue;
        };
        if cpu.is_empty() {
            continue; // the `cpu` line sums all CPUs
        }
        let ticks = fields
            .map(|field| parse_number::<u64>(&path, line_number, field))
            .collect::<Result<Vec<u64>, _>>()?;
        if ticks.len() < 4 {
            return Err(CollectError::new(
                &path,
                format!(
                    "line {}: cpu{cpu} has fewer than 4 columns",
                    line_number + 1
                ),
            ));
        }
        cpus.push((cpu.to_owned(), ticks));
    }
    if cpus.is_empty() {
        return Err(CollectError::new(&path, "no cpuN lines"));
    }
    let name = "node_cpu_seconds_total";
    out.counter(name, "Seconds the CPUs spent in each mode.");
    for (cpu, ticks) in &cpus {
        for (mode, value) in CPU_MODES.iter().zip(ticks) {
            let labels = [("cpu", cpu.as_str()), ("mode", *mode)];
            out.sample(name, &labels, *value as f64 / USER_HZ);
        }
    }
    if cpus.iter().any(|(_, ticks)| ticks.len() >= 10) {
        let name = "node_cpu_guest_seconds_total";
        out.counter(
            name,
            "Seconds the CPUs spent in guests (VMs) for each mode.",
        );
        for (cpu, ticks) in &cpus {
            for (mode, value) in ["user", "nice"].iter().zip(ticks.iter().skip(8)) {
                let labels = [("cpu", cpu.as_str()), ("mode", *mode)];
                out.sample(name, &labels, *value as f64 / USER_HZ);
            }
        }
    }
    Ok(())
}

/// Boot time, context switches, forks, interrupts and process counts from
/// `/proc/stat`.
pub(super) fn stat(text: &str, proc_root: &Path, out: &mut Exposition) -> Outcome {
    let path = proc_root.join("stat");
    let families: [(&str, &str, &str, bool); 6] = [
        (
            "btime",
            "node_boot_time_seconds",
            "Node boot time, in unixtime.",
            false,
        ),
        (
            "ctxt",
            "node_context_switches_total",
            "Total number of context switches.",
            true,
        ),
        (
            "processes",
            "node_forks_total",
            "Total number of forks.",
            true,
        ),
        (
            "intr",
            "node_intr_total",
            "Total number of interrupts serviced.",
            true,
        ),
        (
            "procs_running",
            "node_procs_running",
            "Number of processes in runnable state.",
            false,
        ),
        (
            "procs_blocked",
            "node_procs_blocked",
            "Number of processes blocked waiting for I/O to complete.",
            false,
        ),
    ];
    let mut values: [Option<u64>; 6] = [None; 6];
    for (line_number, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        let Some(index) = families.iter().position(|family| family.0 == key) else {
            continue;
        };
        let Some(first) = fields.next() else {
            return Err(CollectError::new(
                &path,
                format!("line {}: {key} has no value", line_number + 1),
            ));
        };
        values[index] = Some(parse_number(&path, line_number, first)?);
    }
    if values[0].is_none() {
        return Err(CollectError::new(&path, "no btime line"));
    }
    for ((_, name, help, is_counter), value) in families.iter().zip(values) {
        let Some(value) = value else { continue };
        if *is_counter {
            out.counter(name, help);
        } else {
            out.gauge(name, help);
        }
        out.sample(name, &[], value as f64);
    }
    Ok(())
}

/// `node_load1`, `node_load5`, `node_load15` from `/proc/loadavg`.
pub(super) fn loadavg(proc_root: &Path, out: &mut Exposition) -> Outcome {
    let path = proc_root.join("loadavg");
    let text = read_text(&path)?;
    let loads = text
        .split_ascii_whitespace()
        .take(3)
        .map(|field| parse_number::<f64>(&path, 0, field))
        .collect::<Result<Vec<f64>, _>>()?;
    if loads.len() < 3 {
        return Err(CollectError::new(&path, "fewer than 3 load averages"));
    }
    for ((name, help), value) in [
        ("node_load1", "1m load average."),
        ("node_load5", "5m load average."),
        ("node_load15", "15m load average."),
    ]
    .into_iter()
    .zip(loads)
    {
        out.single_gauge(name, help, value);
    }
    Ok(())
}

/// Every line of `/proc/meminfo` as `node_memory_<Field>_bytes` (lines in
/// kB) or `node_memory_<Field>` (counts such as `HugePages_Total`).
pub(super) fn meminfo(proc_root: &Path, out: &mut Exposition) -> Outcome {
    let path = proc_root.join("meminfo");
    let text = read_text(&path)?;
    let mut seen = HashSet::new();
    for (line_number, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let field = key.trim().replace('(', "_").replace(')', "");
        let valid =
            !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            continue; // not a name node_exporter could have produced
        }
        let mut parts = rest.split_ascii_whitespace();
        let Some(number) = parts.next() else { continue };
        let number: u64 = parse_number(&path, line_number, number)?;
        let (name, value) = match parts.next() {
            Some("kB") => (
                format!("node_memory_{field}_bytes"),
                number.saturating_mul(1024),
            ),
            _ => (format!("node_memory_{field}"), number),
        };
        if !seen.insert(name.clone()) {
            continue;
        }
        let help = format!(
            "Memory information field {}.",
            name.trim_start_matches("node_memory_")
        );
        out.gauge(&name, &help);
        out.sample(&name, &[], value as f64);
    }
    if seen.is_empty() {
        return Err(CollectError::new(&path, "no fields"));
    }
    Ok(())
}

/// A line of the mount table.
#[derive(Debug)]
struct Mount {
    device: String,
    mount_point: String,
    fs_type: String,
    read_only: bool,
}

/// Undoes the octal escapes of `/proc/mounts` (`\040` is a space).
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match octal.and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) => {
                decoded.push(byte);
                index += 4;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn read_mounts(proc_root: &Path) -> Result<(PathBuf, Vec<Mount>), CollectError> {
    // The host's mount table is PID 1's; `<proc>/mounts` is this process's.
    let host_table = proc_root.join("1/mounts");
    let (path, text) = match std::fs::read_to_string(&host_table) {
        Ok(text) => (host_table, text),
        Err(_) => {
            let path = proc_root.join("mounts");
            let text = read_text(&path)?;
            (path, text)
        }
    };
    let mounts = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            let options = fields.next().unwrap_or("");
            Some(Mount {
                device: unescape_mount_field(device),
                mount_point: unescape_mount_field(mount_point),
                fs_type: fs_type.to_owned(),
                read_only: options.split(',').any(|option| option == "ro"),
            })
        })
        .collect();
    Ok((path, mounts))
}

/// Size, free and available bytes and inodes of every real filesystem.
pub(super) fn filesystem(
    collector: &HostCollector,
    statfs: &dyn StatFs,
    out: &mut Exposition,
) -> Outcome {
    let (path, mounts) = read_mounts(&collector.proc_root)?;
    if mounts.is_empty() {
        return Err(CollectError::new(&path, "no mounts"));
    }
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for mount in mounts {
        if collector.filesystem_types_exclude.is_match(&mount.fs_type)
            || collector.mount_points_exclude.is_match(&mount.mount_point)
            || !seen.insert((
                mount.device.clone(),
                mount.mount_point.clone(),
                mount.fs_type.clone(),
            ))
        {
            continue;
        }
        let on_host = collector
            .rootfs
            .join(mount.mount_point.trim_start_matches('/'));
        let usage = statfs.stat(&on_host).ok();
        rows.push((mount, usage));
    }
    type Field = fn(&super::FsUsage) -> u64;
    let families: [(&str, &str, Field); 5] = [
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            |usage| usage.size_bytes,
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            |usage| usage.free_bytes,
        ),
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            |usage| usage.avail_bytes,
        ),
        (
            "node_filesystem_files",
            "Filesystem total file nodes.",
            |usage| usage.files,
        ),
        (
            "node_filesystem_files_free",
            "Filesystem total free file nodes.",
            |usage| usage.files_free,
        ),
    ];
    let labels_of = |mount: &Mount| {
        [
            ("device", mount.device.clone()),
            ("fstype", mount.fs_type.clone()),
            ("mountpoint", mount.mount_point.clone()),
        ]
    };
    for (name, help, field) in families {
        out.gauge(name, help);
        for (mount, usage) in &rows {
            let Some(usage) = usage else { continue };
            let labels = labels_of(mount);
            out.sample(name, &borrowed(&labels), field(usage) as f64);
        }
    }
    let name = "node_filesystem_readonly";
    out.gauge(name, "Filesystem read-only status.");
    for (mount, usage) in &rows {
        if usage.is_some() {
            let labels = labels_of(mount);
            out.sample(
                name,
                &borrowed(&labels),
                f64::from(u8::from(mount.read_only)),
            );
        }
    }
    let name = "node_filesystem_device_error";
    out.gauge(
        name,
        "Whether an error occurred while getting statistics for the given device.",
    );
    for (mount, usage) in &rows {
        let labels = labels_of(mount);
        out.sample(
            name,
            &borrowed(&labels),
            f64::from(u8::from(usage.is_none())),
        );
    }
    Ok(())
}

fn borrowed<'a>(labels: &'a [(&'a str, String); 3]) -> [(&'a str, &'a str); 3] {
    [
        (labels[0].0, labels[0].1.as_str()),
        (labels[1].0, labels[1].1.as_str()),
        (labels[2].0, labels[2].1.as_str()),
    ]
}

/// `node_network_{receive,transmit}_<field>_total{device}` from
/// `/proc/net/dev`; the field names come from its header.
pub(super) fn netdev(proc_root: &Path, out: &mut Exposition) -> Outcome {
    // `<proc>/net` is this process's network namespace; PID 1's is the
    // host's when the host's procfs is mounted (a DaemonSet without
    // hostNetwork).
    let host_table = proc_root.join("1/net/dev");
    let (path, text) = match std::fs::read_to_string(&host_table) {
        Ok(text) => (host_table, text),
        Err(_) => {
            let path = proc_root.join("net/dev");
            let text = read_text(&path)?;
            (path, text)
        }
    };
    let mut lines = text.lines();
    let header = lines
        .nth(1)
        .ok_or_else(|| CollectError::new(&path, "no header"))?;
    let sections: Vec<&str> = header.split('|').collect();
    if sections.len() != 3 {
        return Err(CollectError::new(
            &path,
            format!("line 2: header {header:?} is not `face |receive fields|transmit fields`"),
        ));
    }
    let mut columns: Vec<String> = Vec::new();
    for (direction, fields) in [("receive", sections[1]), ("transmit", sections[2])] {
        for field in fields.split_ascii_whitespace() {
            columns.push(format!("node_network_{direction}_{field}_total"));
        }
    }
    let mut devices: Vec<(String, Vec<u64>)> = Vec::new();
    for (index, line) in lines.enumerate() {
        let line_number = index + 2;
        let Some((device, numbers)) = line.split_once(':') else {
            continue;
        };
        let values = numbers
            .split_ascii_whitespace()
            .map(|field| parse_number::<u64>(&path, line_number, field))
            .collect::<Result<Vec<u64>, _>>()?;
        if values.len() != columns.len() {
            return Err(CollectError::new(
                &path,
                format!(
                    "line {}: {} values for {} header fields",
                    line_number + 1,
                    values.len(),
                    columns.len()
                ),
            ));
        }
        devices.push((device.trim().to_owned(), values));
    }
    for (column, name) in columns.iter().enumerate() {
        let statistic = name
            .trim_start_matches("node_network_")
            .trim_end_matches("_total");
        out.counter(name, &format!("Network device statistic {statistic}."));
        for (device, values) in &devices {
            out.sample(name, &[("device", device)], values[column] as f64);
        }
    }
    Ok(())
}

/// `node_time_seconds`.
pub(super) fn time(now: SystemTime, out: &mut Exposition) {
    let seconds = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    out.single_gauge(
        "node_time_seconds",
        "System time in seconds since epoch (1970).",
        seconds,
    );
}

/// `node_uname_info`: what `uname(2)` says, from `<proc>/sys/kernel`.
pub(super) fn uname(proc_root: &Path, out: &mut Exposition) -> Outcome {
    let kernel = proc_root.join("sys/kernel");
    let read = |name: &str| read_text(&kernel.join(name)).map(|text| text.trim().to_owned());
    let sysname = read("ostype")?;
    let release = read("osrelease")?;
    let version = read("version")?;
    let nodename = read("hostname")?;
    let domainname = read("domainname")?;
    // `arch` exists since Linux 6.1; before, the agent's own architecture
    // is the host's.
    let machine = read("arch").unwrap_or_else(|_| std::env::consts::ARCH.to_owned());
    let name = "node_uname_info";
    out.gauge(
        name,
        "Labeled system information as provided by the uname system call.",
    );
    out.sample(
        name,
        &[
            ("domainname", &domainname),
            ("machine", &machine),
            ("nodename", &nodename),
            ("release", &release),
            ("sysname", &sysname),
            ("version", &version),
        ],
        1.0,
    );
    Ok(())
}

/// `/proc/diskstats` columns after major, minor and name, as node_exporter
/// names them, with the conversion to their unit (sectors are 512 bytes,
/// times are milliseconds) and whether it is a counter.
/// A `/proc/diskstats` column: name, help, conversion, is a counter.
type DiskColumn = (&'static str, &'static str, fn(u64) -> f64, bool);

const DISK_COLUMNS: [DiskColumn; 11] = [
    (
        "node_disk_reads_completed_total",
        "The total number of reads completed successfully.",
        count,
        true,
    ),
    (
        "node_disk_reads_merged_total",
        "The total number of reads merged.",
        count,
        true,
    ),
    (
        "node_disk_read_bytes_total",
        "The total number of bytes read successfully.",
        sectors_to_bytes,
        true,
    ),
    (
        "node_disk_read_time_seconds_total",
        "The total number of seconds spent by all reads.",
        millis_to_seconds,
        true,
    ),
    (
        "node_disk_writes_completed_total",
        "The total number of writes completed successfully.",
        count,
        true,
    ),
    (
        "node_disk_writes_merged_total",
        "The number of writes merged.",
        count,
        true,
    ),
    (
        "node_disk_written_bytes_total",
        "The total number of bytes written successfully.",
        sectors_to_bytes,
        true,
    ),
    (
        "node_disk_write_time_seconds_total",
        "This is the total number of seconds spent by all writes.",
        millis_to_seconds,
        true,
    ),
    (
        "node_disk_io_now",
        "The number of I/Os currently in progress.",
        count,
        false,
    ),
    (
        "node_disk_io_time_seconds_total",
        "Total seconds spent doing I/Os.",
        millis_to_seconds,
        true,
    ),
    (
        "node_disk_io_time_weighted_seconds_total",
        "The weighted # of seconds spent doing I/Os.",
        millis_to_seconds,
        true,
    ),
];

fn count(value: u64) -> f64 {
    value as f64
}

fn sectors_to_bytes(sectors: u64) -> f64 {
    sectors as f64 * 512.0
}

/// Divides, so 45678 ms reads back as 45.678 and not 45.678000000000004.
fn millis_to_seconds(millis: u64) -> f64 {
    millis as f64 / 1000.0
}

/// Per-disk I/O counters from `/proc/diskstats`.
pub(super) fn diskstats(collector: &HostCollector, out: &mut Exposition) -> Outcome {
    let path = collector.proc_root.join("diskstats");
    let text = read_text(&path)?;
    let mut disks: Vec<(String, Vec<u64>)> = Vec::new();
    for (line_number, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_major), Some(_minor), Some(device)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if collector.disk_devices_exclude.is_match(device) {
            continue;
        }
        let values = fields
            .take(DISK_COLUMNS.len())
            .map(|field| parse_number::<u64>(&path, line_number, field))
            .collect::<Result<Vec<u64>, _>>()?;
        if values.len() < DISK_COLUMNS.len() {
            return Err(CollectError::new(
                &path,
                format!(
                    "line {}: {device} has {} of {} columns",
                    line_number + 1,
                    values.len(),
                    DISK_COLUMNS.len()
                ),
            ));
        }
        disks.push((device.to_owned(), values));
    }
    for (column, (name, help, unit, is_counter)) in DISK_COLUMNS.iter().enumerate() {
        if *is_counter {
            out.counter(name, help);
        } else {
            out.gauge(name, help);
        }
        for (device, values) in &disks {
            out.sample(name, &[("device", device)], unit(values[column]));
        }
    }
    Ok(())
}
