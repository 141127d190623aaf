//! cAdvisor's container families from the cgroup v2 hierarchy, labelled
//! with namespace, pod and container from the kubelet's log directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tracing::warn;

use super::exposition::Exposition;
use super::{CollectError, HostCollector};

/// Deepest cgroup level visited below the root; kubelet's deepest is 4.
const MAX_DEPTH: usize = 8;

/// Namespace, pod and (for a container cgroup) container of a cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Identity {
    namespace: String,
    pod: String,
    container: Option<String>,
}

/// What the kubelet's log directories say about pods and containers.
#[derive(Debug, Default)]
struct Names {
    /// Pod uid (with dashes) to namespace and pod.
    pods: HashMap<String, Identity>,
    /// Container id to namespace, pod and container.
    containers: HashMap<String, Identity>,
}

impl Names {
    /// Reads directory names only; a missing directory means no names.
    fn read(pod_logs_dir: &Path, container_logs_dir: &Path) -> Names {
        let mut names = Names::default();
        for entry in dir_names(pod_logs_dir) {
            // <namespace>_<pod>_<uid>: neither namespace nor pod may contain `_`.
            let mut parts = entry.splitn(3, '_');
            if let (Some(namespace), Some(pod), Some(uid)) =
                (parts.next(), parts.next(), parts.next())
            {
                names.pods.insert(
                    uid.to_owned(),
                    Identity {
                        namespace: namespace.to_owned(),
                        pod: pod.to_owned(),
                        container: None,
                    },
                );
            }
        }
        for entry in dir_names(container_logs_dir) {
            // <pod>_<namespace>_<container>-<id>.log
            let Some(stem) = entry.strip_suffix(".log") else {
                continue;
            };
            let Some((prefix, id)) = stem.rsplit_once('-') else {
                continue;
            };
            let mut parts = prefix.splitn(3, '_');
            if let (Some(pod), Some(namespace), Some(container)) =
                (parts.next(), parts.next(), parts.next())
                && is_hex(id)
            {
                names.containers.insert(
                    id.to_owned(),
                    Identity {
                        namespace: namespace.to_owned(),
                        pod: pod.to_owned(),
                        container: Some(container.to_owned()),
                    },
                );
            }
        }
        names
    }

    /// The identity of the cgroup at `relative` (components below the root).
    fn identify(&self, relative: &[String]) -> Option<Identity> {
        if let Some(identity) = relative
            .last()
            .and_then(|last| container_id(last))
            .and_then(|id| self.containers.get(id))
        {
            return Some(identity.clone());
        }
        relative
            .iter()
            .find_map(|component| pod_uid(component))
            .and_then(|uid| self.pods.get(&uid))
            .cloned()
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect()
}

fn is_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The pod uid a kubelet cgroup name carries: `kubepods-burstable-pod<uid
/// with _>.slice` (systemd driver) or `pod<uid>` (cgroupfs driver).
fn pod_uid(component: &str) -> Option<String> {
    let raw = match component.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + "-pod".len()..],
        None => component.strip_prefix("pod")?,
    };
    let looks_like_uid = raw.len() >= 8
        && raw
            .bytes()
            .all(|byte| byte.is_ascii_hexdigit() || byte == b'-' || byte == b'_');
    looks_like_uid.then(|| raw.replace('_', "-"))
}

/// The container id a runtime's cgroup name carries:
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
/// `libpod-<id>.scope`, or a bare 64-digit id (cgroupfs driver).
fn container_id(component: &str) -> Option<&str> {
    if let Some(scope) = component.strip_suffix(".scope") {
        let id = ["cri-containerd-", "crio-", "docker-", "libpod-"]
            .iter()
            .find_map(|prefix| scope.strip_prefix(prefix))?;
        return (id.len() >= 12 && is_hex(id)).then_some(id);
    }
    (component.len() == 64 && is_hex(component)).then_some(component)
}

/// What one cgroup's files say; a file that is missing stays `None`.
#[derive(Debug, Default)]
struct Usage {
    usage_usec: Option<u64>,
    user_usec: Option<u64>,
    system_usec: Option<u64>,
    nr_periods: Option<u64>,
    nr_throttled: Option<u64>,
    throttled_usec: Option<u64>,
    memory_current: Option<u64>,
    memory_max: Option<u64>,
    anon: Option<u64>,
    file: Option<u64>,
    inactive_file: Option<u64>,
}

fn read_keyed(path: &Path, mut each: impl FnMut(&str, u64)) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(' ')
            && let Ok(value) = value.trim().parse()
        {
            each(key, value);
        }
    }
}

fn read_single(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(0), // cAdvisor reports an unlimited cgroup as 0
        value => value.parse().ok(),
    }
}

impl Usage {
    fn read(dir: &Path) -> Usage {
        let mut usage = Usage {
            memory_current: read_single(&dir.join("memory.current")),
            memory_max: read_single(&dir.join("memory.max")),
            ..Usage::default()
        };
        read_keyed(&dir.join("cpu.stat"), |key, value| match key {
            "usage_usec" => usage.usage_usec = Some(value),
            "user_usec" => usage.user_usec = Some(value),
            "system_usec" => usage.system_usec = Some(value),
            "nr_periods" => usage.nr_periods = Some(value),
            "nr_throttled" => usage.nr_throttled = Some(value),
            "throttled_usec" => usage.throttled_usec = Some(value),
            _ => {}
        });
        read_keyed(&dir.join("memory.stat"), |key, value| match key {
            "anon" => usage.anon = Some(value),
            "file" => usage.file = Some(value),
            "inactive_file" => usage.inactive_file = Some(value),
            _ => {}
        });
        usage
    }

    /// A CFS counter, present only for cgroups with a CPU quota (periods
    /// are counted only then), as cAdvisor exports them.
    fn cfs(&self, value: Option<u64>) -> Option<u64> {
        self.nr_periods.filter(|periods| *periods > 0).and(value)
    }

    /// `memory.current` minus inactive page cache, floored at 0.
    fn working_set(&self) -> Option<u64> {
        let current = self.memory_current?;
        Some(current.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

/// One cgroup below the root.
struct Cgroup {
    id: String,
    identity: Option<Identity>,
    usage: Usage,
}

/// Walks the hierarchy breadth first, at most `limit` cgroups below the
/// root and [`MAX_DEPTH`] levels deep; children in name order. The flag
/// says whether the limit cut the walk short.
fn walk(root: &Path, limit: usize) -> (Vec<(Vec<String>, PathBuf)>, bool) {
    let mut found = Vec::new();
    let mut level: Vec<(Vec<String>, PathBuf)> = vec![(Vec::new(), root.to_owned())];
    let mut truncated = false;
    for _ in 0..MAX_DEPTH {
        if truncated {
            break;
        }
        let mut next = Vec::new();
        for (components, dir) in &level {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue; // removed while walking
            };
            let mut children: Vec<(String, PathBuf)> = entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    entry.file_type().ok()?.is_dir().then_some(())?;
                    Some((entry.file_name().into_string().ok()?, entry.path()))
                })
                .collect();
            children.sort();
            for (name, path) in children {
                if found.len() + next.len() >= limit {
                    truncated = true;
                    break;
                }
                let mut child = components.clone();
                child.push(name);
                next.push((child, path));
            }
        }
        if next.is_empty() {
            break;
        }
        found.extend(next.iter().cloned());
        level = next;
    }
    (found, truncated)
}

/// Container families for every cgroup below the root.
pub(super) fn collect(collector: &HostCollector, out: &mut Exposition) -> Result<(), CollectError> {
    let root = collector.sys_root.join("fs/cgroup");
    let controllers = root.join("cgroup.controllers");
    if !controllers.is_file() {
        return Err(CollectError::new(
            &controllers,
            "missing: not a cgroup v2 (unified) hierarchy",
        ));
    }
    let names = Names::read(&collector.pod_logs_dir, &collector.container_logs_dir);
    let (found, truncated) = walk(&root, collector.max_cgroups);
    if truncated && !collector.cgroup_limit_warned.swap(true, Ordering::Relaxed) {
        warn!(
            max_cgroups = collector.max_cgroups,
            "more cgroups than host_metrics.max_cgroups, the rest are not exported"
        );
    }
    let mut cgroups: Vec<Cgroup> = found
        .into_iter()
        .map(|(components, dir)| Cgroup {
            id: format!("/{}", components.join("/")),
            identity: names.identify(&components),
            usage: Usage::read(&dir),
        })
        .collect();
    cgroups.sort_by(|a, b| a.id.cmp(&b.id));

    type Field = fn(&Usage) -> Option<f64>;
    let families: [(&str, &str, bool, Field); 11] = [
        (
            "container_cpu_usage_seconds_total",
            "Cumulative cpu time consumed in seconds.",
            true,
            |usage| usage.usage_usec.map(|usec| usec as f64 / 1e6),
        ),
        (
            "container_cpu_user_seconds_total",
            "Cumulative user cpu time consumed in seconds.",
            true,
            |usage| usage.user_usec.map(|usec| usec as f64 / 1e6),
        ),
        (
            "container_cpu_system_seconds_total",
            "Cumulative system cpu time consumed in seconds.",
            true,
            |usage| usage.system_usec.map(|usec| usec as f64 / 1e6),
        ),
        (
            "container_cpu_cfs_periods_total",
            "Number of elapsed enforcement period intervals.",
            true,
            |usage| usage.cfs(usage.nr_periods).map(|periods| periods as f64),
        ),
        (
            "container_cpu_cfs_throttled_periods_total",
            "Number of throttled period intervals.",
            true,
            |usage| usage.cfs(usage.nr_throttled).map(|periods| periods as f64),
        ),
        (
            "container_cpu_cfs_throttled_seconds_total",
            "Total time duration the container has been throttled.",
            true,
            |usage| {
                usage
                    .cfs(usage.throttled_usec)
                    .map(|usec| usec as f64 / 1e6)
            },
        ),
        (
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            false,
            |usage| usage.memory_current.map(|bytes| bytes as f64),
        ),
        (
            "container_memory_working_set_bytes",
            "Current working set in bytes.",
            false,
            |usage| usage.working_set().map(|bytes| bytes as f64),
        ),
        (
            "container_memory_rss",
            "Size of RSS in bytes.",
            false,
            |usage| usage.anon.map(|bytes| bytes as f64),
        ),
        (
            "container_memory_cache",
            "Number of bytes of page cache memory.",
            false,
            |usage| usage.file.map(|bytes| bytes as f64),
        ),
        (
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            false,
            |usage| usage.memory_max.map(|bytes| bytes as f64),
        ),
    ];
    for (name, help, is_counter, field) in families {
        if is_counter {
            out.counter(name, help);
        } else {
            out.gauge(name, help);
        }
        for cgroup in &cgroups {
            let Some(value) = field(&cgroup.usage) else {
                continue;
            };
            // cAdvisor's label order: container, id, namespace, pod.
            let mut labels: Vec<(&str, &str)> = Vec::with_capacity(4);
            if let Some(identity) = &cgroup.identity {
                if let Some(container) = &identity.container {
                    labels.push(("container", container));
                }
                labels.push(("id", &cgroup.id));
                labels.push(("namespace", &identity.namespace));
                labels.push(("pod", &identity.pod));
            } else {
                labels.push(("id", &cgroup.id));
            }
            out.sample(name, &labels, value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_from_both_cgroup_drivers() {
        let uid = "0d2c7f3a-1b2c-4d5e-8f90-123456789abc";
        for (component, expected) in [
            (
                "kubepods-burstable-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice",
                Some(uid),
            ),
            (
                "kubepods-pod0d2c7f3a_1b2c_4d5e_8f90_123456789abc.slice",
                Some(uid),
            ),
            ("pod0d2c7f3a-1b2c-4d5e-8f90-123456789abc", Some(uid)),
            ("kubepods-burstable.slice", None),
            ("kubepods.slice", None),
            ("podman.service", None),
        ] {
            assert_eq!(pod_uid(component).as_deref(), expected, "{component}");
        }
    }

    #[test]
    fn container_ids_from_runtime_scopes() {
        let id = "a".repeat(64);
        for (component, expected) in [
            (format!("cri-containerd-{id}.scope"), Some(id.as_str())),
            (format!("crio-{id}.scope"), Some(id.as_str())),
            (format!("docker-{id}.scope"), Some(id.as_str())),
            (id.clone(), Some(id.as_str())),
            (format!("crio-conmon-{id}.scope"), None),
            ("session-3.scope".to_owned(), None),
            ("abc".to_owned(), None),
        ] {
            assert_eq!(container_id(&component), expected, "{component}");
        }
    }

    #[test]
    fn walk_stops_at_the_limit() {
        let root = tempfile::tempdir().unwrap();
        for name in ["a/x", "a/y", "b", "c"] {
            std::fs::create_dir_all(root.path().join(name)).unwrap();
        }
        let ids = |limit| -> Vec<String> {
            walk(root.path(), limit)
                .0
                .into_iter()
                .map(|(components, _)| components.join("/"))
                .collect()
        };
        assert_eq!(ids(100), ["a", "b", "c", "a/x", "a/y"]);
        assert_eq!(ids(4), ["a", "b", "c", "a/x"]);
        assert_eq!(ids(2), ["a", "b"]);
        assert!(walk(root.path(), 4).1 && !walk(root.path(), 5).1);
    }
}
