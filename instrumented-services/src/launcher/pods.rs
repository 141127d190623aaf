//! The demo's pods as the Kubernetes API shows them, served on loopback by
//! the stand-in API ([`crate::kube_api`]) and watched by the agent: each
//! shop service is the one pod of a Deployment named after it (through a
//! ReplicaSet `<service>-<pod-template-hash>`), labelled
//! `app.kubernetes.io/name` and `app.kubernetes.io/part-of: shop`, on node
//! `demo-node`. A service the launcher restarts shows its restart count and
//! why its last run ended, as the kubelet reports them.

use std::process::ExitStatus;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::cri::PodIdentity;
use crate::kube_api::FakeKubeApi;

/// The node every demo pod runs on.
pub const NODE: &str = "demo-node";

/// The stand-in API and the pods it serves.
pub struct DemoPods {
    api: Arc<FakeKubeApi>,
    port: u16,
}

impl DemoPods {
    /// Serves an API without pods on a loopback port.
    pub async fn serve() -> DemoPods {
        let api = Arc::new(FakeKubeApi::default());
        let port = api.serve().await;
        DemoPods { api, port }
    }

    /// Its URL, for the agent's `kubernetes.api_server`.
    pub fn api_server(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `pod` of `service` starts: it and its ReplicaSet appear.
    pub fn add(&self, pod: &PodIdentity, service: &str) {
        let (replicaset, _) = replicaset(pod, service);
        self.api.put_object(
            &format!(
                "/apis/apps/v1/namespaces/{}/replicasets/{replicaset}",
                pod.namespace
            ),
            replicaset_object(pod, service),
        );
        self.api.put(pod_object(pod, service, 0, None));
    }

    /// `pod`'s container restarted for the `restarts`th time after its run
    /// ended with `status`.
    pub fn restarted(&self, pod: &PodIdentity, service: &str, restarts: u32, status: ExitStatus) {
        self.api
            .put(pod_object(pod, service, restarts, Some(status)));
    }
}

/// The ReplicaSet's name and the pod template hash.
fn replicaset(pod: &PodIdentity, service: &str) -> (String, String) {
    let hash: String = pod
        .uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    (format!("{service}-{hash}"), hash)
}

/// The ReplicaSet of `pod`, owned by Deployment `service`, as the API
/// returns it (`deploy.rs` validates it against the upstream schema).
pub fn replicaset_object(pod: &PodIdentity, service: &str) -> Value {
    let (replicaset, hash) = replicaset(pod, service);
    json!({
        "kind": "ReplicaSet", "apiVersion": "apps/v1",
        "metadata": {"name": replicaset, "namespace": pod.namespace,
            "uid": format!("{}-rs", pod.uid),
            "labels": {"app.kubernetes.io/name": service, "pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                "name": service, "uid": format!("{}-deploy", pod.uid),
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": service, "pod-template-hash": hash}}}
    })
}

/// The pod as the API returns it, after `restarts` restarts, the last
/// ending with `last` (`deploy.rs` validates it against the upstream
/// schema).
pub fn pod_object(
    pod: &PodIdentity,
    service: &str,
    restarts: u32,
    last: Option<ExitStatus>,
) -> Value {
    let (replicaset, hash) = replicaset(pod, service);
    let last_state = match last {
        None => json!({}),
        Some(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            // As the kubelet reports it: a SIGKILL (the OOM killer's) is
            // exit code 137, a clean exit `Completed`.
            let (code, reason) = match (status.code(), status.signal()) {
                (Some(0), _) => (0, "Completed"),
                (Some(code), _) => (code, "Error"),
                (None, Some(9)) => (137, "OOMKilled"),
                (None, signal) => (128 + signal.unwrap_or(0), "Error"),
            };
            json!({"terminated": {"exitCode": code, "reason": reason,
                "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:00Z"}})
        }
    };
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
            "labels": {
                "app.kubernetes.io/name": service,
                "app.kubernetes.io/part-of": "shop",
                "pod-template-hash": hash,
            },
            "annotations": {"prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": replicaset, "uid": format!("{}-rs", pod.uid),
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": NODE, "containers": [{"name": service, "image": format!("sightline/{service}:demo")}]},
        "status": {
            "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
            "containerStatuses": [{
                "name": service, "ready": true, "restartCount": restarts,
                "image": format!("sightline/{service}:demo"), "imageID": "",
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                "lastState": last_state
            }]
        }
    })
}
