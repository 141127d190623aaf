//! `kubernetes_sd_configs` with the `pod` and `endpoints` roles, as
//! Prometheus discovers them: one list, then one watch per namespace
//! (every namespace when none is named) of the pods, and for `endpoints`
//! also of the Endpoints and Services, kept in memory and turned into
//! target groups with Prometheus' `__meta_kubernetes_*` labels
//! (`discovery/kubernetes/pod.go` and `endpoints.go`), so a
//! `prometheus.yml` that keeps pods annotated `prometheus.io/scrape` and
//! rewrites `__address__` from `prometheus.io/port`, or its
//! `kubernetes-service-endpoints` job, works unchanged.
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

use sightline_kube::http::Auth;
use sightline_kube::types::{
    ContainerPort, EndpointAddress, EndpointPort, Endpoints, Metadata, Object, Pod,
};
use sightline_kube::{Api, Change, Watch, WatchStats};

use crate::config_file::{KubernetesSdConfig, StaticConfig};

// A label name as Prometheus makes one of a Kubernetes key.
use sightline_vocab::names::underscored as sanitize;

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
            container_port_labels(&mut labels, &container.name, port, &port.protocol);
            targets.push(StaticConfig {
                targets: vec![join_host_port(&pod.status.pod_ip, port.container_port)],
                labels,
            });
        }
    }
    targets
}

/// The labels of a target on `container`'s `port`.
fn container_port_labels(
    labels: &mut BTreeMap<String, String>,
    container: &str,
    port: &ContainerPort,
    protocol: &str,
) {
    for (name, value) in [
        ("name", container.to_string()),
        ("port_name", port.name.clone()),
        ("port_number", port.container_port.to_string()),
        ("port_protocol", protocol.to_string()),
    ] {
        labels.insert(format!("__meta_kubernetes_pod_container_{name}"), value);
    }
}

/// `host:port`, an IPv6 host in brackets (Go's `net.JoinHostPort`).
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The labels of every target of a Service's Endpoints: the Service's
/// name, labels and annotations.
fn service_labels(service: &Metadata) -> BTreeMap<String, String> {
    let meta = &service.metadata;
    let mut labels = BTreeMap::new();
    labels.insert("__meta_kubernetes_namespace".into(), meta.namespace.clone());
    labels.insert("__meta_kubernetes_service_name".into(), meta.name.clone());
    for (key, value) in &meta.labels {
        let name = sanitize(key);
        labels.insert(
            format!("__meta_kubernetes_service_label_{name}"),
            value.clone(),
        );
        labels.insert(
            format!("__meta_kubernetes_service_labelpresent_{name}"),
            "true".into(),
        );
    }
    for (key, value) in &meta.annotations {
        let name = sanitize(key);
        labels.insert(
            format!("__meta_kubernetes_service_annotation_{name}"),
            value.clone(),
        );
        labels.insert(
            format!("__meta_kubernetes_service_annotationpresent_{name}"),
            "true".into(),
        );
    }
    labels
}

/// `endpoints`' targets as Prometheus' endpoints role makes them: one per
/// port and address (ready or not), with the Service's labels when there
/// is one and the pod's when the address is a pod's; then one per
/// container port of those pods that no endpoint port named.
/// `service` and `pod` look the others up by namespace and name.
pub fn endpoints_targets(
    endpoints: &Endpoints,
    service: impl Fn(&str, &str) -> Option<Metadata>,
    pod: impl Fn(&str, &str) -> Option<Pod>,
) -> Vec<StaticConfig> {
    let meta = &endpoints.metadata;
    let mut group = BTreeMap::new();
    group.insert(
        "__meta_kubernetes_namespace".to_string(),
        meta.namespace.clone(),
    );
    group.insert(
        "__meta_kubernetes_endpoints_name".to_string(),
        meta.name.clone(),
    );
    if let Some(service) = service(&meta.namespace, &meta.name) {
        group.extend(service_labels(&service));
    }
    for (key, value) in &meta.labels {
        let name = sanitize(key);
        group.insert(
            format!("__meta_kubernetes_endpoints_label_{name}"),
            value.clone(),
        );
        group.insert(
            format!("__meta_kubernetes_endpoints_labelpresent_{name}"),
            "true".into(),
        );
    }
    let mut targets = Vec::new();
    // Pods seen, with the endpoint ports they were seen on, in order.
    let mut seen: Vec<(Pod, Vec<u16>)> = Vec::new();
    let mut add = |address: &EndpointAddress, port: &EndpointPort, ready: &str| {
        let mut labels = group.clone();
        labels.insert(
            "__meta_kubernetes_endpoint_port_name".into(),
            port.name.clone(),
        );
        labels.insert(
            "__meta_kubernetes_endpoint_port_protocol".into(),
            port.protocol.clone(),
        );
        labels.insert("__meta_kubernetes_endpoint_ready".into(), ready.into());
        if let Some(target) = &address.target_ref {
            labels.insert(
                "__meta_kubernetes_endpoint_address_target_kind".into(),
                target.kind.clone(),
            );
            labels.insert(
                "__meta_kubernetes_endpoint_address_target_name".into(),
                target.name.clone(),
            );
        }
        if let Some(node) = &address.node_name {
            labels.insert("__meta_kubernetes_endpoint_node_name".into(), node.clone());
        }
        if !address.hostname.is_empty() {
            labels.insert(
                "__meta_kubernetes_endpoint_hostname".into(),
                address.hostname.clone(),
            );
        }
        let found = address
            .target_ref
            .as_ref()
            .filter(|target| target.kind == "Pod")
            .and_then(|target| pod(&target.namespace, &target.name));
        if let Some(found) = found {
            labels.extend(pod_labels(&found));
            for container in &found.spec.containers {
                if let Some(container_port) = container
                    .ports
                    .iter()
                    .find(|container_port| container_port.container_port == port.port)
                {
                    // The endpoint port's protocol, as endpoints.go sets it.
                    container_port_labels(
                        &mut labels,
                        &container.name,
                        container_port,
                        &port.protocol,
                    );
                }
            }
            let key = |pod: &Pod| (pod.metadata.namespace.clone(), pod.metadata.name.clone());
            match seen.iter_mut().find(|(known, _)| key(known) == key(&found)) {
                Some((_, ports)) => ports.push(port.port),
                None => seen.push((found, vec![port.port])),
            }
        }
        targets.push(StaticConfig {
            targets: vec![join_host_port(&address.ip, port.port)],
            labels,
        });
    };
    for subset in &endpoints.subsets {
        for port in &subset.ports {
            for address in &subset.addresses {
                add(address, port, "true");
            }
            for address in &subset.not_ready_addresses {
                add(address, port, "false");
            }
        }
    }
    for (pod, ports) in seen {
        for container in &pod.spec.containers {
            for container_port in &container.ports {
                if ports.contains(&container_port.container_port) {
                    continue;
                }
                let mut labels = group.clone();
                labels.extend(pod_labels(&pod));
                container_port_labels(
                    &mut labels,
                    &container.name,
                    container_port,
                    &container_port.protocol,
                );
                targets.push(StaticConfig {
                    targets: vec![join_host_port(
                        &pod.status.pod_ip,
                        container_port.container_port,
                    )],
                    labels,
                });
            }
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
    let tls = config.tls_config.settings(base_dir);
    let auth = config
        .bearer_token_file
        .as_deref()
        .map(|file| Auth::bearer_file(resolve(file)));
    Api::at(server, &tls, auth, &user)
}

/// Objects by (namespace, name), per watched namespace (`""`: all).
type ByWatch<T> = BTreeMap<String, BTreeMap<(String, String), T>>;

/// What the watches of one entry keep.
#[derive(Default)]
struct Known {
    pods: ByWatch<Pod>,
    endpoints: ByWatch<Endpoints>,
    services: ByWatch<Metadata>,
}

impl Known {
    fn find<T: Clone>(objects: &ByWatch<T>, namespace: &str, name: &str) -> Option<T> {
        let key = (namespace.to_string(), name.to_string());
        objects.values().find_map(|known| known.get(&key).cloned())
    }
}

/// One `kubernetes_sd_configs` entry, watched in the background.
pub struct KubernetesDiscovery {
    endpoints_role: bool,
    known: Arc<Mutex<Known>>,
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

/// Starts the watch of `resource` in `namespace`, keeping its objects in
/// the part of `known` that `part` picks.
fn spawn_watch<T: serde::de::DeserializeOwned + Object + Send + 'static>(
    api: &Arc<Api>,
    resource: &str,
    namespace: &str,
    job: &str,
    known: &Arc<Mutex<Known>>,
    changed: &Arc<AtomicBool>,
    part: fn(&mut Known) -> &mut ByWatch<T>,
) -> tokio::task::JoinHandle<()> {
    let watch = Watch {
        api: Arc::clone(api),
        collection: if namespace.is_empty() {
            format!("/api/v1/{resource}")
        } else {
            format!("/api/v1/namespaces/{namespace}/{resource}")
        },
        selector: None,
        what: format!("the {resource} of scrape job {job:?} in namespace {namespace:?}"),
    };
    let (known, changed, namespace) = (
        Arc::clone(known),
        Arc::clone(changed),
        namespace.to_string(),
    );
    tokio::spawn(
        watch.run(Arc::new(WatchStats::default()), move |change: Change<T>| {
            let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
            let objects = part(&mut known).entry(namespace.clone()).or_default();
            let key = |object: &T| {
                let meta = object.metadata();
                (meta.namespace.clone(), meta.name.clone())
            };
            match change {
                Change::Listed(items) => {
                    *objects = items
                        .into_iter()
                        .map(|object| (key(&object), object))
                        .collect();
                }
                Change::Applied(object) => {
                    objects.insert(key(&object), object);
                }
                Change::Deleted(object) => {
                    objects.remove(&key(&object));
                }
            }
            changed.store(true, Ordering::Release);
        }),
    )
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
        let endpoints_role = config.role == "endpoints";
        let known = Arc::new(Mutex::new(Known::default()));
        let changed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for namespace in &namespaces {
            tasks.push(spawn_watch::<Pod>(
                &api,
                "pods",
                namespace,
                job,
                &known,
                &changed,
                |known| &mut known.pods,
            ));
            if endpoints_role {
                tasks.push(spawn_watch::<Endpoints>(
                    &api,
                    "endpoints",
                    namespace,
                    job,
                    &known,
                    &changed,
                    |known| &mut known.endpoints,
                ));
                tasks.push(spawn_watch::<Metadata>(
                    &api,
                    "services",
                    namespace,
                    job,
                    &known,
                    &changed,
                    |known| &mut known.services,
                ));
            }
        }
        Ok(KubernetesDiscovery {
            endpoints_role,
            known,
            changed,
            tasks,
        })
    }

    /// Whether the objects changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// The target groups of every object known now.
    pub fn groups(&self) -> Vec<StaticConfig> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if !self.endpoints_role {
            return known
                .pods
                .values()
                .flat_map(BTreeMap::values)
                .flat_map(pod_targets)
                .collect();
        }
        known
            .endpoints
            .values()
            .flat_map(BTreeMap::values)
            .flat_map(|endpoints| {
                endpoints_targets(
                    endpoints,
                    |namespace, name| Known::find(&known.services, namespace, name),
                    |namespace, name| Known::find(&known.pods, namespace, name),
                )
            })
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

    /// Pinned to Prometheus' endpoints role (`discovery/kubernetes/endpoints.go`
    /// and `service.go` of the 2.4x releases, whose pod labels the pod role
    /// test above pins): group labels from the Endpoints and their Service,
    /// per address the endpoint labels, for a pod's address its labels and
    /// the container port the endpoint port names, and the pod's other
    /// container ports as targets of their own.
    #[test]
    fn endpoints_give_one_target_per_address_and_port_with_prometheus_labels() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "subsets": [{
                "addresses": [{"ip": "10.1.0.7", "nodeName": "node-a",
                    "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}}],
                "notReadyAddresses": [{"ip": "10.1.0.8", "hostname": "db-0"}],
                "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}]
            }]
        }))
        .unwrap();
        let service: Metadata = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop",
                "labels": {"app.kubernetes.io/name": "web"},
                "annotations": {"prometheus.io/scrape": "true"}}
        }))
        .unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:1", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "metrics", "containerPort": 9102}
            ]}]},
            "status": {"phase": "Running", "podIP": "10.1.0.7", "hostIP": "192.168.1.5",
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let targets = endpoints_targets(
            &endpoints,
            |namespace, name| (namespace == "shop" && name == "web").then(|| service.clone()),
            |namespace, name| (namespace == "shop" && name == "web-1").then(|| pod.clone()),
        );
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(name, value)| (format!("__meta_kubernetes_{name}"), value.to_string()))
                .collect()
        };
        let group = labels(&[
            ("namespace", "shop"),
            ("endpoints_name", "web"),
            ("endpoints_label_app", "web"),
            ("endpoints_labelpresent_app", "true"),
            ("service_name", "web"),
            ("service_label_app_kubernetes_io_name", "web"),
            ("service_labelpresent_app_kubernetes_io_name", "true"),
            ("service_annotation_prometheus_io_scrape", "true"),
            ("service_annotationpresent_prometheus_io_scrape", "true"),
        ]);
        let pod_part = labels(&[
            ("pod_name", "web-1"),
            ("pod_ip", "10.1.0.7"),
            ("pod_ready", "true"),
            ("pod_phase", "Running"),
            ("pod_node_name", "node-a"),
            ("pod_host_ip", "192.168.1.5"),
            ("pod_uid", "u-1"),
        ]);
        let with = |parts: &[&BTreeMap<String, String>], extra: &[(&str, &str)]| {
            let mut all: BTreeMap<String, String> = BTreeMap::new();
            for part in parts {
                all.extend((*part).clone());
            }
            all.extend(labels(extra));
            all
        };
        let expected = [
            (
                "10.1.0.7:8080",
                with(
                    &[&group, &pod_part],
                    &[
                        ("endpoint_port_name", "web"),
                        ("endpoint_port_protocol", "TCP"),
                        ("endpoint_ready", "true"),
                        ("endpoint_address_target_kind", "Pod"),
                        ("endpoint_address_target_name", "web-1"),
                        ("endpoint_node_name", "node-a"),
                        ("pod_container_name", "app"),
                        ("pod_container_port_name", "http"),
                        ("pod_container_port_number", "8080"),
                        ("pod_container_port_protocol", "TCP"),
                    ],
                ),
            ),
            (
                "10.1.0.8:8080",
                with(
                    &[&group],
                    &[
                        ("endpoint_port_name", "web"),
                        ("endpoint_port_protocol", "TCP"),
                        ("endpoint_ready", "false"),
                        ("endpoint_hostname", "db-0"),
                    ],
                ),
            ),
            (
                "10.1.0.7:9102",
                with(
                    &[&group, &pod_part],
                    &[
                        ("pod_container_name", "app"),
                        ("pod_container_port_name", "metrics"),
                        ("pod_container_port_number", "9102"),
                        ("pod_container_port_protocol", "TCP"),
                    ],
                ),
            ),
        ];
        assert_eq!(targets.len(), expected.len(), "{targets:#?}");
        for (target, (address, labels)) in targets.iter().zip(expected) {
            assert_eq!(target.targets, [address]);
            assert_eq!(target.labels, labels, "{address}");
        }
    }
}
