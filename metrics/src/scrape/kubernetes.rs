//! `kubernetes_sd_configs` with the `pod` role, as Prometheus discovers
//! pods: one list, then one watch per namespace (every namespace when none
//! is named), kept in memory and turned into target groups with Prometheus'
//! `__meta_kubernetes_*` labels, so a `prometheus.yml` that keeps pods
//! annotated `prometheus.io/scrape` and rewrites `__address__` from
//! `prometheus.io/port` works unchanged.
//!
//! The watch asks for bookmarks and resumes from the last resource version
//! it saw when the server ends it (its `timeoutSeconds`); a `410 Gone` (the
//! version expired) lists again; any other failure waits with a backoff (1
//! s doubling to 30 s) and lists again. The targets of the last good list
//! stay while the API is away. Where the API is: `api_server` (with the
//! entry's `tls_config` and `bearer_token_file`), or inside a pod the
//! service account's token and CA with `KUBERNETES_SERVICE_HOST`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sightline_kube::http::{Auth, Credentials, Pem, TlsSettings};
use sightline_kube::types::Pod;
use sightline_kube::{Api, Change, Watch, WatchStats};

use crate::config_file::{KubernetesSdConfig, StaticConfig};

/// A label name as Prometheus makes one of a Kubernetes key: every byte
/// that is not `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The labels every target of `pod` carries.
fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut set = |name: &str, value: &str| {
        labels.insert(format!("__meta_kubernetes_{name}"), value.to_string());
    };
    set("namespace", &pod.metadata.namespace);
    set("pod_name", &pod.metadata.name);
    set("pod_ip", &pod.status.pod_ip);
    let ready = pod
        .status
        .conditions
        .iter()
        .find(|condition| condition.kind == "Ready")
        .map_or("unknown".to_string(), |condition| {
            condition.status.to_ascii_lowercase()
        });
    set("pod_ready", &ready);
    set("pod_phase", &pod.status.phase);
    set("pod_node_name", &pod.spec.node_name);
    set("pod_host_ip", &pod.status.host_ip);
    set("pod_uid", &pod.metadata.uid);
    if let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .find(|owner| owner.controller == Some(true))
    {
        if !owner.kind.is_empty() {
            set("pod_controller_kind", &owner.kind);
        }
        if !owner.name.is_empty() {
            set("pod_controller_name", &owner.name);
        }
    }
    for (key, value) in &pod.metadata.labels {
        let name = sanitize(key);
        set(&format!("pod_label_{name}"), value);
        set(&format!("pod_labelpresent_{name}"), "true");
    }
    for (key, value) in &pod.metadata.annotations {
        let name = sanitize(key);
        set(&format!("pod_annotation_{name}"), value);
        set(&format!("pod_annotationpresent_{name}"), "true");
    }
    labels
}

/// `pod`'s targets as Prometheus' pod role makes them: one per container
/// port (`<pod IP>:<port>`), one per container without ports (the pod IP
/// alone); none while the pod has no IP.
pub fn pod_targets(pod: &Pod) -> Vec<StaticConfig> {
    if pod.status.pod_ip.is_empty() {
        return Vec::new();
    }
    let shared = pod_labels(pod);
    let mut targets = Vec::new();
    let containers = pod
        .spec
        .containers
        .iter()
        .map(|container| (container, false))
        .chain(
            pod.spec
                .init_containers
                .iter()
                .map(|container| (container, true)),
        );
    for (container, init) in containers {
        let mut labels = shared.clone();
        labels.insert(
            "__meta_kubernetes_pod_container_name".into(),
            container.name.clone(),
        );
        labels.insert(
            "__meta_kubernetes_pod_container_image".into(),
            container.image.clone(),
        );
        labels.insert(
            "__meta_kubernetes_pod_container_init".into(),
            init.to_string(),
        );
        if container.ports.is_empty() {
            targets.push(StaticConfig {
                targets: vec![pod.status.pod_ip.clone()],
                labels,
            });
            continue;
        }
        for port in &container.ports {
            let mut labels = labels.clone();
            let number = port.container_port.to_string();
            labels.insert(
                "__meta_kubernetes_pod_container_port_name".into(),
                port.name.clone(),
            );
            labels.insert(
                "__meta_kubernetes_pod_container_port_number".into(),
                number.clone(),
            );
            labels.insert(
                "__meta_kubernetes_pod_container_port_protocol".into(),
                port.protocol.clone(),
            );
            let host = if pod.status.pod_ip.contains(':') {
                format!("[{}]", pod.status.pod_ip)
            } else {
                pod.status.pod_ip.clone()
            };
            targets.push(StaticConfig {
                targets: vec![format!("{host}:{number}")],
                labels,
            });
        }
    }
    targets
}

/// The API server of a `kubernetes_sd_configs` entry: its
/// `kubeconfig_file`, its `api_server` (with `tls_config` and
/// `bearer_token_file`), or inside a pod the service account's.
fn api(config: &KubernetesSdConfig, job: &str, base_dir: &Path) -> anyhow::Result<Api> {
    let user = format!("scrape job {job:?}: kubernetes_sd_configs");
    let resolve = |path: &str| base_dir.join(path);
    if let Some(kubeconfig) = &config.kubeconfig_file {
        return Api::from_kubeconfig(&resolve(kubeconfig), &user);
    }
    let Some(server) = &config.api_server else {
        return Api::in_cluster(&user);
    };
    let pem = |path: &str| Pem::File(resolve(path));
    let tls = TlsSettings {
        ca_file: config.tls_config.ca_file.as_deref().map(pem),
        cert_file: config.tls_config.cert_file.as_deref().map(pem),
        key_file: config.tls_config.key_file.as_deref().map(pem),
        server_name: config.tls_config.server_name.clone(),
        insecure_skip_verify: config.tls_config.insecure_skip_verify,
    };
    let auth = config
        .bearer_token_file
        .as_deref()
        .map(|file| Auth::Authorization {
            scheme: "Bearer".into(),
            credentials: Credentials::File(resolve(file)),
        });
    Api::at(server, &tls, auth, &user)
}

/// Pods by (namespace, name), per watched namespace (`""`: all).
type PodsByWatch = BTreeMap<String, BTreeMap<(String, String), Pod>>;

/// One `kubernetes_sd_configs` entry, watched in the background.
pub struct KubernetesDiscovery {
    /// Pods by namespace and name, per watched namespace.
    pods: Arc<Mutex<PodsByWatch>>,
    changed: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubernetesDiscovery {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubernetesDiscovery {
    /// Starts watching for job `job`; `base_dir` resolves relative paths.
    /// Fails when the entry cannot work at all (no API server anywhere, a
    /// TLS file that cannot be read).
    pub fn start(
        config: &KubernetesSdConfig,
        job: &str,
        base_dir: &Path,
    ) -> anyhow::Result<KubernetesDiscovery> {
        let api = Arc::new(api(config, job, base_dir)?);
        let namespaces = if config.namespaces.names.is_empty() {
            vec![String::new()]
        } else {
            config.namespaces.names.clone()
        };
        let pods: Arc<Mutex<PodsByWatch>> = Arc::new(Mutex::new(BTreeMap::new()));
        let changed = Arc::new(AtomicBool::new(false));
        let tasks = namespaces
            .into_iter()
            .map(|namespace| {
                let (pods, changed) = (pods.clone(), changed.clone());
                let watch = Watch {
                    api: api.clone(),
                    collection: if namespace.is_empty() {
                        "/api/v1/pods".to_string()
                    } else {
                        format!("/api/v1/namespaces/{namespace}/pods")
                    },
                    selector: None,
                    what: format!("the pods of scrape job {job:?} in namespace {namespace:?}"),
                };
                tokio::spawn(watch.run(
                    Arc::new(WatchStats::default()),
                    move |change: Change<Pod>| {
                        let mut pods = pods.lock().unwrap_or_else(|e| e.into_inner());
                        let known = pods.entry(namespace.clone()).or_default();
                        let key =
                            |pod: &Pod| (pod.metadata.namespace.clone(), pod.metadata.name.clone());
                        match change {
                            Change::Listed(items) => {
                                *known = items.into_iter().map(|pod| (key(&pod), pod)).collect();
                            }
                            Change::Applied(pod) => {
                                known.insert(key(&pod), pod);
                            }
                            Change::Deleted(pod) => {
                                known.remove(&key(&pod));
                            }
                        }
                        changed.store(true, Ordering::Release);
                    },
                ))
            })
            .collect();
        Ok(KubernetesDiscovery {
            pods,
            changed,
            tasks,
        })
    }

    /// Whether the pods changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// The target groups of every pod known now.
    pub fn groups(&self) -> Vec<StaticConfig> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.values()
            .flat_map(BTreeMap::values)
            .flat_map(pod_targets)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_gives_one_target_per_container_port_with_prometheus_labels() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-7d9c-x2x", "namespace": "shop", "uid": "u-1",
                "labels": {"app.kubernetes.io/name": "web"},
                "annotations": {"prometheus.io/scrape": "true"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9c", "controller": true}]
            },
            "spec": {
                "nodeName": "node-a",
                "containers": [
                    {"name": "web", "image": "web:1", "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"containerPort": 9090}
                    ]},
                    {"name": "sidecar", "image": "proxy:2"}
                ]
            },
            "status": {"phase": "Running", "podIP": "10.1.2.3", "hostIP": "192.168.1.5",
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let targets = pod_targets(&pod);
        let addresses: Vec<&str> = targets.iter().map(|t| t.targets[0].as_str()).collect();
        assert_eq!(addresses, ["10.1.2.3:8080", "10.1.2.3:9090", "10.1.2.3"]);
        let first = &targets[0].labels;
        assert_eq!(
            first["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
            "web"
        );
        assert_eq!(
            first["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
            "true"
        );
        assert_eq!(first["__meta_kubernetes_pod_controller_kind"], "ReplicaSet");
        assert_eq!(first["__meta_kubernetes_pod_ready"], "true");
        assert_eq!(first["__meta_kubernetes_pod_container_port_name"], "http");
        assert_eq!(
            targets[1].labels["__meta_kubernetes_pod_container_port_protocol"],
            "TCP"
        );
        assert!(
            !targets[2]
                .labels
                .contains_key("__meta_kubernetes_pod_container_port_number")
        );
        // No IP yet: no targets.
        let mut pending = pod.clone();
        pending.status.pod_ip.clear();
        assert!(pod_targets(&pending).is_empty());
    }
}
