//! Enrichment: the OTLP resource of a file, computed once when the file is
//! opened and shared by every record read from it.
//!
//! A kubelet log path `…/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`
//! names the pod and container; a Docker json-file log sits beside the
//! container's `config.v2.json`, which gives its name, image and labels;
//! any other path still gets the host, the file path and a service name
//! from the file stem. Static attributes from the config are added to all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;

use crate::config::ResourceConfig;
use crate::identity::FileKey;
use crate::kubernetes::PodInfo;
use crate::metrics::{FileLabels, FileStats};
use crate::otlp;

/// A file being tailed, with its resource computed once at open.
#[derive(Debug)]
pub struct FileSource {
    /// Identity of the file.
    pub key: FileKey,
    /// Path the file was opened at.
    pub path: PathBuf,
    /// What the path and the runtime say about the container.
    pub container: ContainerInfo,
    /// Resource shared by every record of the file.
    pub resource: Resource,
    /// Counters and gauges of this file (sizes, offsets, fingerprint).
    pub stats: Arc<FileStats>,
    /// Where the file is now, after renames by rotation.
    current_path: Mutex<PathBuf>,
}

impl FileSource {
    /// Builds the source of `path`, enriching it once.
    pub fn new(
        key: FileKey,
        path: PathBuf,
        container: ContainerInfo,
        host_name: &str,
        config: &ResourceConfig,
    ) -> FileSource {
        let resource = resource_for(&path, &container, host_name, config);
        let labels = FileLabels {
            namespace: container.namespace.clone().unwrap_or_default(),
            pod: container.pod.clone().unwrap_or_default(),
            container: container.name.clone().unwrap_or_default(),
            file: path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        FileSource {
            key,
            current_path: Mutex::new(path.clone()),
            path,
            container,
            resource,
            stats: Arc::new(FileStats::new(labels)),
        }
    }

    /// A source enriched from its path only, without config (tests).
    pub fn plain(key: FileKey, path: PathBuf, host_name: &str) -> FileSource {
        let container = ContainerInfo::from_kubelet_path(&path).unwrap_or_default();
        FileSource::new(key, path, container, host_name, &ResourceConfig::default())
    }

    /// Where the file is now.
    pub fn current_path(&self) -> PathBuf {
        self.current_path
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The file was renamed to `path`.
    pub(crate) fn set_current_path(&self, path: &Path) {
        path.clone_into(
            &mut self
                .current_path
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }
}

/// What is known about the container that wrote a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// `k8s.namespace.name`
    pub namespace: Option<String>,
    /// `k8s.pod.name`
    pub pod: Option<String>,
    /// `k8s.pod.uid`
    pub pod_uid: Option<String>,
    /// `k8s.container.name` (or the Docker container name)
    pub name: Option<String>,
    /// `k8s.container.restart_count`
    pub restart_count: Option<u32>,
    /// `container.id`
    pub id: Option<String>,
    /// `container.image.name`
    pub image: Option<String>,
    /// Container labels (Docker).
    pub labels: BTreeMap<String, String>,
    /// What the Kubernetes API says about the pod, when it is watched.
    pub pod_info: Option<Arc<PodInfo>>,
}

impl ContainerInfo {
    /// The value that steers the agent under `key` (`sightline.io/exclude`):
    /// a container label (Docker), else the pod's annotation or label for
    /// this container (`<key>-<container>`, as Fluent Bit names them), else
    /// the pod's annotation or label.
    pub fn setting(&self, key: &str) -> Option<&str> {
        if let Some(value) = self.labels.get(key) {
            return Some(value);
        }
        let pod = self.pod_info.as_deref()?;
        if let Some(container) = &self.name
            && let Some(value) = pod.steering.get(&format!("{key}-{container}"))
        {
            return Some(value);
        }
        pod.steering.get(key).map(String::as_str)
    }

    /// Everything the path (and, for Docker, `config.v2.json` beside it)
    /// says. Blocking: reads a small file.
    pub fn detect(path: &Path) -> ContainerInfo {
        if let Some(info) = ContainerInfo::from_kubelet_path(path) {
            return info;
        }
        if let Some(info) = ContainerInfo::from_docker_dir(path) {
            return info;
        }
        ContainerInfo::default()
    }

    /// From a kubelet path.
    pub fn from_kubelet_path(path: &Path) -> Option<ContainerInfo> {
        let kubelet = KubeletPath::parse(path)?;
        Some(ContainerInfo {
            namespace: Some(kubelet.namespace),
            pod: Some(kubelet.pod),
            pod_uid: Some(kubelet.pod_uid),
            name: Some(kubelet.container),
            restart_count: Some(kubelet.restart_count),
            ..ContainerInfo::default()
        })
    }

    /// From `<dir>/config.v2.json` next to a Docker `<id>-json.log`.
    pub fn from_docker_dir(path: &Path) -> Option<ContainerInfo> {
        let file_name = path.file_name()?.to_str()?;
        let id = file_name.strip_suffix("-json.log")?;
        let config_path = path.with_file_name("config.v2.json");
        let mut info = ContainerInfo {
            id: Some(id.to_owned()),
            ..ContainerInfo::default()
        };
        let Ok(bytes) = std::fs::read(&config_path) else {
            return Some(info);
        };
        let Ok(config) = serde_json::from_slice::<Value>(&bytes) else {
            return Some(info);
        };
        let text = |value: &Value| value.as_str().map(str::to_owned);
        info.name = config["Name"]
            .as_str()
            .map(|name| name.trim_start_matches('/').to_owned());
        info.image = text(&config["Config"]["Image"]);
        if let Some(labels) = config["Config"]["Labels"].as_object() {
            for (key, value) in labels {
                if let Some(value) = value.as_str() {
                    info.labels.insert(key.clone(), value.to_owned());
                }
            }
        }
        // Kubernetes on dockershim labels its containers.
        let label = |key: &str| info.labels.get(key).cloned();
        info.namespace = label("io.kubernetes.pod.namespace");
        info.pod = label("io.kubernetes.pod.name");
        info.pod_uid = label("io.kubernetes.pod.uid");
        if let Some(name) = label("io.kubernetes.container.name") {
            info.name = Some(name);
        }
        Some(info)
    }
}

/// Resource attribute names (OpenTelemetry semantic conventions).
pub mod attr {
    /// Kubernetes namespace.
    pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
    /// Pod name.
    pub const K8S_POD_NAME: &str = "k8s.pod.name";
    /// Pod UID.
    pub const K8S_POD_UID: &str = "k8s.pod.uid";
    /// Container name.
    pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
    /// Container restart count (int).
    pub const K8S_CONTAINER_RESTART_COUNT: &str = "k8s.container.restart_count";
    /// Node host name.
    pub const HOST_NAME: &str = "host.name";
    /// Service name: the container name, else the file stem.
    pub const SERVICE_NAME: &str = "service.name";
    /// Path of the tailed file.
    pub const LOG_FILE_PATH: &str = "log.file.path";
    /// Container name outside Kubernetes (Docker).
    pub const CONTAINER_NAME: &str = "container.name";
    /// Container id (Docker).
    pub const CONTAINER_ID: &str = "container.id";
    /// Container image (Docker).
    pub const CONTAINER_IMAGE_NAME: &str = "container.image.name";
}

/// What a kubelet log path says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletPath {
    /// `k8s.namespace.name`
    pub namespace: String,
    /// `k8s.pod.name`
    pub pod: String,
    /// `k8s.pod.uid`
    pub pod_uid: String,
    /// `k8s.container.name`
    pub container: String,
    /// `k8s.container.restart_count`
    pub restart_count: u32,
}

impl KubeletPath {
    /// Parses `…/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`.
    /// Namespace and pod names cannot contain `_`, so the split is exact.
    pub fn parse(path: &Path) -> Option<KubeletPath> {
        let file_name = path.file_name()?.to_str()?;
        let restart_count = file_name.strip_suffix(".log")?.parse().ok()?;
        let container_dir = path.parent()?;
        let container = container_dir.file_name()?.to_str()?;
        let pod_dir = container_dir.parent()?;
        let pods_dir = pod_dir.parent()?;
        if pods_dir.file_name()?.to_str()? != "pods" {
            return None;
        }
        let mut parts = pod_dir.file_name()?.to_str()?.split('_');
        let (namespace, pod, pod_uid) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || [namespace, pod, pod_uid, container]
                .iter()
                .any(|part| part.is_empty())
        {
            return None;
        }
        Some(KubeletPath {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            pod_uid: pod_uid.to_owned(),
            container: container.to_owned(),
            restart_count,
        })
    }
}

/// The resource of every record read from `path`.
pub fn resource_for(
    path: &Path,
    container: &ContainerInfo,
    host_name: &str,
    config: &ResourceConfig,
) -> Resource {
    let mut attributes = Vec::with_capacity(12);
    let mut push = |key: &str, value: &Option<String>| {
        if let Some(value) = value {
            attributes.push(otlp::key_value(key, otlp::string_value(value.as_str())));
        }
    };
    push(attr::K8S_NAMESPACE_NAME, &container.namespace);
    push(attr::K8S_POD_NAME, &container.pod);
    push(attr::K8S_POD_UID, &container.pod_uid);
    let name_key = if container.namespace.is_some() {
        attr::K8S_CONTAINER_NAME
    } else {
        attr::CONTAINER_NAME
    };
    push(name_key, &container.name);
    if let Some(restart_count) = container.restart_count {
        attributes.push(otlp::key_value(
            attr::K8S_CONTAINER_RESTART_COUNT,
            otlp::int_value(i64::from(restart_count)),
        ));
    }
    let mut push = |key: &str, value: &Option<String>| {
        if let Some(value) = value {
            attributes.push(otlp::key_value(key, otlp::string_value(value.as_str())));
        }
    };
    push(attr::CONTAINER_ID, &container.id);
    push(attr::CONTAINER_IMAGE_NAME, &container.image);
    for (key, value) in &container.labels {
        attributes.push(otlp::key_value(
            format!("container.label.{key}"),
            otlp::string_value(value.as_str()),
        ));
    }
    if let Some(pod) = &container.pod_info {
        for (key, value) in &pod.attributes {
            attributes.push(otlp::key_value(
                key.as_str(),
                otlp::string_value(value.as_str()),
            ));
        }
    }
    let service_name = config
        .service_name_labels
        .iter()
        .find_map(|label| container.setting(label).map(str::to_owned))
        .or_else(|| container.name.clone())
        .or_else(|| {
            path.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .filter(|stem| !stem.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    attributes.push(otlp::key_value(
        attr::SERVICE_NAME,
        otlp::string_value(service_name),
    ));
    attributes.push(otlp::key_value(
        attr::HOST_NAME,
        otlp::string_value(host_name),
    ));
    attributes.push(otlp::key_value(
        attr::LOG_FILE_PATH,
        otlp::string_value(path.to_string_lossy()),
    ));
    for (key, value) in &config.static_attributes {
        attributes.push(otlp::key_value(
            key.as_str(),
            otlp::string_value(value.as_str()),
        ));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The resource of a file enriched from its path only.
pub fn resource_for_file(path: &Path, host_name: &str) -> Resource {
    let container = ContainerInfo::from_kubelet_path(path).unwrap_or_default();
    resource_for(path, &container, host_name, &ResourceConfig::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    fn render(resource: &Resource) -> Vec<String> {
        resource
            .attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|value| value.value.as_ref()) {
                    Some(Value::StringValue(text)) => text.clone(),
                    Some(Value::IntValue(integer)) => format!("{integer}i"),
                    other => format!("{other:?}"),
                };
                format!("{}={value}", kv.key)
            })
            .collect()
    }

    /// namespace, pod, uid, container, restart count
    type Expected = Option<(&'static str, &'static str, &'static str, &'static str, u32)>;

    #[test]
    fn kubelet_paths() {
        let cases: &[(&str, Expected)] = &[
            (
                "/var/log/pods/shop_payment-7d9f8c6b5-x2x9q_0f1e2d3c-aaaa-bbbb-cccc-123456789abc/payment/3.log",
                Some((
                    "shop",
                    "payment-7d9f8c6b5-x2x9q",
                    "0f1e2d3c-aaaa-bbbb-cccc-123456789abc",
                    "payment",
                    3,
                )),
            ),
            (
                "/tmp/x/pods/ns_pod_uid/container/0.log",
                Some(("ns", "pod", "uid", "container", 0)),
            ),
            ("/var/log/pods/ns_pod/container/0.log", None),
            ("/var/log/pods/ns_pod_uid_extra/container/0.log", None),
            ("/var/log/pods/ns_pod_uid/container/current.log", None),
            (
                "/var/log/pods/ns_pod_uid/container/0.log.20261121-054848",
                None,
            ),
            ("/var/log/other/ns_pod_uid/container/0.log", None),
            ("0.log", None),
        ];
        for (path, expected) in cases {
            let got = KubeletPath::parse(Path::new(path));
            let got = got.as_ref().map(|k| {
                (
                    k.namespace.as_str(),
                    k.pod.as_str(),
                    k.pod_uid.as_str(),
                    k.container.as_str(),
                    k.restart_count,
                )
            });
            assert_eq!(got, *expected, "{path}");
        }
    }

    #[test]
    fn kubelet_resource() {
        let resource = resource_for_file(
            Path::new("/var/log/pods/shop_order-1_u-1/order/0.log"),
            "node-a",
        );
        assert_eq!(
            render(&resource),
            [
                "k8s.namespace.name=shop",
                "k8s.pod.name=order-1",
                "k8s.pod.uid=u-1",
                "k8s.container.name=order",
                "k8s.container.restart_count=0i",
                "service.name=order",
                "host.name=node-a",
                "log.file.path=/var/log/pods/shop_order-1_u-1/order/0.log",
            ]
        );
    }

    #[test]
    fn docker_config_gives_name_image_labels() {
        let dir = tempfile::tempdir().unwrap();
        let id = "3f2a";
        let container_dir = dir.path().join(id);
        std::fs::create_dir_all(&container_dir).unwrap();
        std::fs::write(
            container_dir.join("config.v2.json"),
            r#"{"ID":"3f2a","Name":"/shop-web-1","Config":{"Image":"nginx:1.27","Labels":{"com.docker.compose.service":"web","tier":"front"}}}"#,
        )
        .unwrap();
        let log = container_dir.join(format!("{id}-json.log"));
        let info = ContainerInfo::detect(&log);
        assert_eq!(info.name.as_deref(), Some("shop-web-1"));
        let mut config = ResourceConfig::default();
        config
            .static_attributes
            .insert("deployment.environment".to_owned(), "prod".to_owned());
        let rendered = render(&resource_for(&log, &info, "node-a", &config));
        assert_eq!(
            rendered,
            [
                "container.name=shop-web-1".to_owned(),
                "container.id=3f2a".to_owned(),
                "container.image.name=nginx:1.27".to_owned(),
                "container.label.com.docker.compose.service=web".to_owned(),
                "container.label.tier=front".to_owned(),
                "service.name=web".to_owned(),
                "host.name=node-a".to_owned(),
                format!("log.file.path={}", log.display()),
                "deployment.environment=prod".to_owned(),
            ]
        );
    }

    #[test]
    fn other_paths_use_file_stem() {
        let resource = resource_for_file(Path::new("/var/log/app/gateway.log"), "node-a");
        assert_eq!(
            render(&resource),
            [
                "service.name=gateway",
                "host.name=node-a",
                "log.file.path=/var/log/app/gateway.log"
            ]
        );
    }
}
