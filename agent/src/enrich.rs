//! Enrichment: the OTLP resource of a file, computed once when the file is
//! opened and shared by every record read from it.
//!
//! A kubelet log path `…/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`
//! names the pod and container; any other path still gets the host, the
//! file path and a service name from the file stem.

use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::checkpoint::FileKey;
use crate::otlp;

/// A file being tailed, with its resource computed once at open.
#[derive(Debug)]
pub struct FileSource {
    /// Identity of the file.
    pub key: FileKey,
    /// Path the file was opened at.
    pub path: PathBuf,
    /// Resource shared by every record of the file.
    pub resource: Resource,
}

impl FileSource {
    /// Builds the source of `path`, enriching it once.
    pub fn new(key: FileKey, path: PathBuf, host_name: &str) -> FileSource {
        let resource = resource_for_file(&path, host_name);
        FileSource {
            key,
            path,
            resource,
        }
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
pub fn resource_for_file(path: &Path, host_name: &str) -> Resource {
    let mut attributes = Vec::with_capacity(8);
    let service_name = match KubeletPath::parse(path) {
        Some(kubelet) => {
            attributes.push(otlp::key_value(
                attr::K8S_NAMESPACE_NAME,
                otlp::string_value(kubelet.namespace),
            ));
            attributes.push(otlp::key_value(
                attr::K8S_POD_NAME,
                otlp::string_value(kubelet.pod),
            ));
            attributes.push(otlp::key_value(
                attr::K8S_POD_UID,
                otlp::string_value(kubelet.pod_uid),
            ));
            attributes.push(otlp::key_value(
                attr::K8S_CONTAINER_NAME,
                otlp::string_value(kubelet.container.clone()),
            ));
            attributes.push(otlp::key_value(
                attr::K8S_CONTAINER_RESTART_COUNT,
                otlp::int_value(i64::from(kubelet.restart_count)),
            ));
            kubelet.container
        }
        None => path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .filter(|stem| !stem.is_empty())
            .unwrap_or_else(|| "unknown".to_owned()),
    };
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
    Resource {
        attributes,
        ..Default::default()
    }
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
