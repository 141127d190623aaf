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
use std::time::Duration;

use serde::Deserialize;

use super::client::{Credentials, JobClient, Pem, ScrapeAuth, TlsSettings};
use crate::config_file::{KubernetesSdConfig, StaticConfig};

/// Where a pod's service account finds its token and the API's CA.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How long the server keeps one watch open before it ends it.
const WATCH_SECONDS: u64 = 300;

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The fields of a pod discovery reads (`k8s.io/api/core/v1.Pod`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub resource_version: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: String,
    pub container_port: u16,
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "TCP".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub phase: String,
    #[serde(default, rename = "podIP")]
    pub pod_ip: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodCondition {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub status: String,
}

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

/// How to reach the API server.
struct Api {
    base: String,
    client: JobClient,
}

/// The parts of a kubeconfig file (`clientcmd/api/v1`) discovery uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<KubeContext>>,
    #[serde(default)]
    clusters: Vec<Named<KubeCluster>>,
    #[serde(default)]
    users: Vec<Named<KubeUser>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    value: T,
}

#[derive(Debug, Deserialize)]
struct KubeContext {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeCluster {
    server: String,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    #[serde(default)]
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeUser {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(default)]
    client_certificate: Option<String>,
    #[serde(default)]
    client_certificate_data: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    client_key_data: Option<String>,
}

/// The API server, TLS and credentials of a kubeconfig's current context;
/// relative paths are relative to the kubeconfig, inline (`*-data`)
/// certificates are used as they are.
fn from_kubeconfig(path: &Path) -> anyhow::Result<(String, TlsSettings, Option<ScrapeAuth>)> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    let config: Kubeconfig =
        serde_norway::from_str(&text).with_context(|| format!("kubeconfig {}", path.display()))?;
    let context = config
        .contexts
        .iter()
        .find(|context| context.name == config.current_context)
        .with_context(|| {
            format!(
                "kubeconfig {}: no context named {:?} (current-context)",
                path.display(),
                config.current_context
            )
        })?;
    let cluster = config
        .clusters
        .iter()
        .find(|cluster| cluster.name == context.value.cluster)
        .with_context(|| {
            format!(
                "kubeconfig {}: no cluster named {:?}",
                path.display(),
                context.value.cluster
            )
        })?;
    let default_user = Named {
        name: String::new(),
        value: KubeUser::default(),
    };
    let user = config
        .users
        .iter()
        .find(|user| user.name == context.value.user)
        .unwrap_or(&default_user);
    let dir = path.parent().unwrap_or(Path::new("."));
    let kubeconfig = path;
    let file =
        |path: &Option<String>, data: &Option<String>, name: &str| -> anyhow::Result<Option<Pem>> {
            if let Some(data) = data {
                use base64::Engine as _;
                let origin = format!("{name}-data of kubeconfig {}", kubeconfig.display());
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .with_context(|| format!("{origin}: not base64"))?;
                return Ok(Some(Pem::Inline { origin, pem }));
            }
            Ok(path.as_deref().map(|file| Pem::File(dir.join(file))))
        };
    let tls = TlsSettings {
        ca_file: file(
            &cluster.value.certificate_authority,
            &cluster.value.certificate_authority_data,
            "certificate-authority",
        )?,
        cert_file: file(
            &user.value.client_certificate,
            &user.value.client_certificate_data,
            "client-certificate",
        )?,
        key_file: file(
            &user.value.client_key,
            &user.value.client_key_data,
            "client-key",
        )?,
        server_name: cluster.value.tls_server_name.clone(),
        insecure_skip_verify: cluster.value.insecure_skip_tls_verify,
    };
    let credentials = match (&user.value.token, &user.value.token_file) {
        (Some(token), _) => Some(Credentials::Inline(super::client::Secret::new(token))),
        (None, Some(file)) => Some(Credentials::File(dir.join(file))),
        (None, None) => None,
    };
    let auth = credentials.map(|credentials| ScrapeAuth::Authorization {
        scheme: "Bearer".into(),
        credentials,
    });
    Ok((cluster.value.server.clone(), tls, auth))
}

impl Api {
    fn new(config: &KubernetesSdConfig, job: &str, base_dir: &Path) -> anyhow::Result<Api> {
        let resolve = |path: &str| base_dir.join(path);
        if let Some(kubeconfig) = &config.kubeconfig_file {
            let (server, tls, auth) = from_kubeconfig(&resolve(kubeconfig))?;
            return Ok(Api {
                base: server.trim_end_matches('/').to_string(),
                client: JobClient::build(job, &tls, auth)?,
            });
        }
        if let Some(server) = &config.api_server {
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
                .map(|file| ScrapeAuth::Authorization {
                    scheme: "Bearer".into(),
                    credentials: Credentials::File(resolve(file)),
                });
            return Ok(Api {
                base: server.trim_end_matches('/').to_string(),
                client: JobClient::build(job, &tls, auth)?,
            });
        }
        // In a pod: the service account's token (re-read on every request,
        // so a rotated one is used) and the cluster's CA.
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            anyhow::anyhow!(
                "scrape job {job:?}: kubernetes_sd_configs has no api_server and this is not a pod (KUBERNETES_SERVICE_HOST is unset)"
            )
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let tls = TlsSettings {
            ca_file: Some(Pem::File(dir.join("ca.crt"))),
            ..TlsSettings::default()
        };
        let auth = ScrapeAuth::Authorization {
            scheme: "Bearer".into(),
            credentials: Credentials::File(dir.join("token")),
        };
        Ok(Api {
            base: format!("https://{host}:{port}"),
            client: JobClient::build(job, &tls, Some(auth))?,
        })
    }

    fn pods_url(&self, namespace: &str) -> String {
        if namespace.is_empty() {
            format!("{}/api/v1/pods", self.base)
        } else {
            format!("{}/api/v1/namespaces/{namespace}/pods", self.base)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
    /// More pages to read, from this token.
    #[serde(default, rename = "continue")]
    next: String,
}

/// Pods per page of a list: a large cluster's list is read in pages, as
/// client-go's informers read it, not as one response.
const PAGE: usize = 500;

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// Why a watch ended.
enum Ended {
    /// The server closed it (its timeout): watch again from the version.
    Closed,
    /// The version expired (`410 Gone`): list again.
    Gone,
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
        let api = Arc::new(Api::new(config, job, base_dir)?);
        let namespaces = if config.namespaces.names.is_empty() {
            vec![String::new()]
        } else {
            config.namespaces.names.clone()
        };
        let pods = Arc::new(Mutex::new(BTreeMap::new()));
        let changed = Arc::new(AtomicBool::new(false));
        let tasks = namespaces
            .into_iter()
            .map(|namespace| {
                let (api, pods, changed, job) =
                    (api.clone(), pods.clone(), changed.clone(), job.to_string());
                tokio::spawn(async move {
                    watch_namespace(&api, &namespace, &pods, &changed, &job).await
                })
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

async fn watch_namespace(
    api: &Api,
    namespace: &str,
    pods: &Mutex<PodsByWatch>,
    changed: &AtomicBool,
    job: &str,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let listed = list(api, namespace).await;
        let version = match listed {
            Ok((items, version)) => {
                let by_name = items
                    .into_iter()
                    .map(|pod| {
                        (
                            (pod.metadata.namespace.clone(), pod.metadata.name.clone()),
                            pod,
                        )
                    })
                    .collect();
                pods.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(namespace.to_string(), by_name);
                changed.store(true, Ordering::Release);
                backoff = BACKOFF_START;
                version
            }
            Err(error) => {
                tracing::warn!(job, namespace, %error, "listing pods failed; keeping the last targets and retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut version = version;
        loop {
            let apply = |event: WatchEvent, version: &mut String| -> Result<bool, String> {
                match event.kind.as_str() {
                    "ADDED" | "MODIFIED" | "DELETED" => {
                        let pod: Pod = serde_json::from_value(event.object)
                            .map_err(|error| format!("a watch event's pod: {error}"))?;
                        *version = pod.metadata.resource_version.clone();
                        let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
                        let mut pods = pods.lock().unwrap_or_else(|e| e.into_inner());
                        let known = pods.entry(namespace.to_string()).or_default();
                        if event.kind == "DELETED" {
                            known.remove(&key);
                        } else {
                            known.insert(key, pod);
                        }
                        changed.store(true, Ordering::Release);
                        Ok(true)
                    }
                    "BOOKMARK" => {
                        if let Some(bookmark) = event.object["metadata"]["resourceVersion"].as_str()
                        {
                            *version = bookmark.to_string();
                        }
                        Ok(true)
                    }
                    "ERROR" if event.object["code"].as_u64() == Some(410) => Ok(false),
                    other => Err(format!("a watch event of type {other:?}: {}", event.object)),
                }
            };
            match watch(api, namespace, &mut version, apply).await {
                Ok(Ended::Closed) => continue,
                Ok(Ended::Gone) => {
                    tracing::info!(
                        job,
                        namespace,
                        "the pod watch's version expired; listing again"
                    );
                    break;
                }
                Err(error) => {
                    tracing::warn!(job, namespace, %error, "watching pods failed; listing again after a pause");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
        }
    }
}

async fn list(api: &Api, namespace: &str) -> Result<(Vec<Pod>, String), String> {
    let base = api.pods_url(namespace);
    let mut pods = Vec::new();
    let mut next = String::new();
    loop {
        let mut url = format!("{base}?limit={PAGE}");
        if !next.is_empty() {
            url.push_str("&continue=");
            url.push_str(&percent_encode(&next));
        }
        let response = api
            .client
            .get(&url)?
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|error| format!("GET {url}: {error}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(512)])
            ));
        }
        let list: PodList = serde_json::from_slice(&body)
            .map_err(|error| format!("the pod list of {base}: {error}"))?;
        pods.extend(list.items);
        if list.metadata.next.is_empty() {
            return Ok((pods, list.metadata.resource_version));
        }
        next = list.metadata.next;
    }
}

/// `text` as a URL query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Watches from `version` (updated as events arrive), handing each event to
/// `apply` (false: the version expired).
async fn watch(
    api: &Api,
    namespace: &str,
    version: &mut String,
    mut apply: impl FnMut(WatchEvent, &mut String) -> Result<bool, String>,
) -> Result<Ended, String> {
    let url = format!(
        "{}?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={version}",
        api.pods_url(namespace)
    );
    let mut response = api
        .client
        .get(&url)?
        .timeout(Duration::from_secs(WATCH_SECONDS + 30))
        .send()
        .await
        .map_err(|error| format!("GET {url}: {error}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::GONE {
        return Ok(Ended::Gone);
    }
    if !status.is_success() {
        return Err(format!("GET {url}: {status}"));
    }
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| format!("the pod watch: {error}"))?
    {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchEvent =
                serde_json::from_slice(&line).map_err(|error| format!("a watch event: {error}"))?;
            if !apply(event, version)? {
                return Ok(Ended::Gone);
            }
        }
        if pending.len() > 16 << 20 {
            return Err("a watch event over 16 MiB".into());
        }
    }
    Ok(Ended::Closed)
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

    #[test]
    fn a_kubeconfig_gives_its_current_contexts_server_tls_and_token() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let encoded = base64::engine::general_purpose::STANDARD.encode(ca);
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: prod\ncontexts:\n- name: dev\n  context: {{cluster: dev, user: dev}}\n- name: prod\n  context: {{cluster: prod, user: ops, namespace: shop}}\nclusters:\n- name: dev\n  cluster: {{server: 'https://dev:6443'}}\n- name: prod\n  cluster:\n    server: https://prod:6443\n    certificate-authority-data: {encoded}\nusers:\n- name: ops\n  user:\n    tokenFile: secrets/token\n    client-certificate: certs/ops.pem\n    client-key: certs/ops-key.pem\n"
            ),
        )
        .unwrap();
        let (server, tls, auth) = from_kubeconfig(&path).unwrap();
        assert_eq!(server, "https://prod:6443");
        match tls.ca_file.unwrap() {
            Pem::Inline { origin, pem } => {
                assert_eq!(pem, ca.as_bytes());
                assert!(
                    origin.starts_with("certificate-authority-data of kubeconfig"),
                    "{origin}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            tls.cert_file.unwrap(),
            Pem::File(dir.path().join("certs/ops.pem"))
        );
        assert_eq!(
            auth,
            Some(ScrapeAuth::Authorization {
                scheme: "Bearer".into(),
                credentials: Credentials::File(dir.path().join("secrets/token")),
            })
        );
        // A current context that is not there is an error naming it.
        std::fs::write(&path, "current-context: gone\ncontexts: []\n").unwrap();
        let error = format!("{:#}", from_kubeconfig(&path).unwrap_err());
        assert!(error.contains("no context named \"gone\""), "{error}");
    }
}
