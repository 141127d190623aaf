//! Pod metadata from the Kubernetes API: one list-then-watch of the pods
//! on this node (field selector `spec.nodeName`), so the API server sees
//! one watch per node however many files the node has, not one request
//! per file (the load users report with Fluent Bit's and Fluentd's
//! per-pod lookups).
//!
//! When a file of a pod is opened, [`Pods::describe`] finds the pod by its
//! uid (from the kubelet path), waiting up to `pod_wait` for a pod whose
//! log appeared before the watch told us about it, and returns what is
//! added to the file's resource once: the owning workload (a ReplicaSet's
//! Deployment and a Job's CronJob are read once each with a GET and kept),
//! the node, the pod's labels and selected annotations (allow and deny
//! globs), and the labels and annotations that steer the agent
//! (`sightline.io/exclude`, `sightline.io/multiline`, `sightline.io/parser`,
//! the service name labels). A pod still unknown after the wait is shipped
//! with what its path says, and counted. The API being away never stops
//! shipping: the last known pods stay, and the watch comes back with a
//! backoff.
//!
//! The same watch gives the node's container restarts and the reasons of
//! their last termination and current wait, served on `/metrics` under
//! kube-state-metrics' names, so crash loops and OOM kills alert without
//! kube-state-metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glob::Pattern;
use sightline_kube::http::{Auth, Pem, TlsSettings};
use sightline_kube::types::{Metadata, Pod};
use sightline_kube::watch::percent_encode;
use sightline_kube::{Api, ApiError, Change, Watch, WatchStats};
use sightline_vocab::exposition::{Kind, Writer};
use tracing::{info, warn};

use crate::config::KubernetesConfig;
use crate::error::{AgentError, Result};

/// A deleted pod's metadata is kept this long, for its files still being
/// read (or opened late).
const DELETED_GRACE: Duration = Duration::from_secs(300);

/// Most owners (ReplicaSet → Deployment, Job → CronJob) remembered.
const MAX_OWNERS: usize = 10_000;

/// What a file of a pod gets from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Resource attributes, in order: workload, node, labels, annotations.
    pub attributes: Vec<(String, String)>,
    /// Every label and annotation, for the agent's own steering keys and
    /// the service name (annotations win over labels of the same key).
    pub steering: BTreeMap<String, String>,
}

/// A pod on this node, as the watch last saw it.
struct Known {
    pod: Pod,
    /// When the watch said it was deleted (or a relist no longer had it).
    deleted: Option<Instant>,
}

/// Allow and deny globs over keys.
#[derive(Debug)]
struct KeyFilter {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl KeyFilter {
    fn new(key: &'static str, allow: &[String], deny: &[String]) -> Result<KeyFilter> {
        let compile = |patterns: &[String]| {
            patterns
                .iter()
                .map(|pattern| {
                    Pattern::new(pattern).map_err(|error| AgentError::InvalidConfig {
                        key,
                        reason: format!("bad glob {pattern:?}: {error}"),
                    })
                })
                .collect::<Result<Vec<_>>>()
        };
        Ok(KeyFilter {
            allow: compile(allow)?,
            deny: compile(deny)?,
        })
    }

    fn keeps(&self, key: &str) -> bool {
        self.allow.iter().any(|pattern| pattern.matches(key))
            && !self.deny.iter().any(|pattern| pattern.matches(key))
    }
}

/// The pods of this node, kept by a watch.
pub struct Pods {
    api: Arc<Api>,
    node: String,
    pod_wait: Duration,
    labels: KeyFilter,
    annotations: KeyFilter,
    /// By uid.
    known: Mutex<HashMap<String, Known>>,
    /// Whether a list has been read once.
    synced: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
    /// `namespace/resource/name` → the owner's owner (`None`: it has
    /// none), read once.
    owners: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Option<String>>>>>,
    stats: Arc<WatchStats>,
    unknown: AtomicU64,
    owner_lookups: AtomicU64,
    owner_failures: AtomicU64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Pods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pods").field("node", &self.node).finish()
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Pods {
    /// Starts the watch when `config` turns it on (or, by default, when the
    /// agent runs in a pod); `None` when it is off.
    pub fn start(config: &KubernetesConfig, host_name: &str) -> Result<Option<Arc<Pods>>> {
        let configured = config.api_server.is_some() || config.kubeconfig.is_some();
        let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        if !config.enabled.unwrap_or(configured || in_pod) {
            return Ok(None);
        }
        let invalid = |error: anyhow::Error| AgentError::InvalidConfig {
            key: "kubernetes",
            reason: format!("{error:#}"),
        };
        let user = "the agent's pod watch";
        let api = if let Some(kubeconfig) = &config.kubeconfig {
            Api::from_kubeconfig(kubeconfig, user).map_err(invalid)?
        } else if let Some(server) = &config.api_server {
            let tls = TlsSettings {
                ca_file: config.ca_file.clone().map(Pem::File),
                ..TlsSettings::default()
            };
            let auth = config.token_file.clone().map(Auth::bearer_file);
            Api::at(server, &tls, auth, user).map_err(invalid)?
        } else {
            match Api::in_cluster(user) {
                Ok(api) => api,
                // On by default only because this is a pod: without a
                // service account token (`automountServiceAccountToken:
                // false`, as before the agent read the API) it ships with
                // path metadata, as it did, rather than not at all.
                Err(error) if config.enabled.is_none() => {
                    warn!(error = %format!("{error:#}"), "no usable service account in this pod; pod metadata is off (set kubernetes.enabled = true to make this an error)");
                    return Ok(None);
                }
                Err(error) => return Err(invalid(error)),
            }
        };
        let node = match &config.node_name {
            Some(node) => node.clone(),
            None => {
                warn!(
                    host_name,
                    "kubernetes.node_name is not set (--node-name, NODE_NAME from the downward API's spec.nodeName); watching the pods of the node named like this host"
                );
                host_name.to_owned()
            }
        };
        let pods = Arc::new(Pods {
            api: Arc::new(api),
            pod_wait: config.pod_wait,
            labels: KeyFilter::new("kubernetes.labels", &config.labels, &config.exclude_labels)?,
            annotations: KeyFilter::new(
                "kubernetes.annotations",
                &config.annotations,
                &config.exclude_annotations,
            )?,
            known: Mutex::new(HashMap::new()),
            synced: std::sync::atomic::AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            owners: Mutex::new(HashMap::new()),
            stats: Arc::new(WatchStats::default()),
            unknown: AtomicU64::new(0),
            owner_lookups: AtomicU64::new(0),
            owner_failures: AtomicU64::new(0),
            task: Mutex::new(None),
            node,
        });
        let watch = Watch {
            api: Arc::clone(&pods.api),
            collection: "/api/v1/pods".into(),
            selector: Some(format!(
                "fieldSelector={}",
                percent_encode(&format!("spec.nodeName={}", pods.node))
            )),
            what: format!("the pods of node {}", pods.node),
        };
        // The task holds a weak reference: dropping the last `Pods` ends it.
        let weak = Arc::downgrade(&pods);
        let task = tokio::spawn(watch.run(Arc::clone(&pods.stats), move |change| {
            if let Some(pods) = weak.upgrade() {
                pods.apply(change);
            }
        }));
        *pods.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        info!(node = %pods.node, "watching this node's pods for metadata");
        Ok(Some(pods))
    }

    fn apply(&self, change: Change<Pod>) {
        let now = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match change {
            Change::Listed(pods) => {
                let listed: HashMap<String, Pod> = pods
                    .into_iter()
                    .map(|pod| (pod.metadata.uid.clone(), pod))
                    .collect();
                for (uid, entry) in known.iter_mut() {
                    if !listed.contains_key(uid) && entry.deleted.is_none() {
                        entry.deleted = Some(now);
                    }
                }
                for (uid, pod) in listed {
                    known.insert(uid, Known { pod, deleted: None });
                }
                self.synced.store(true, Ordering::Release);
            }
            Change::Applied(pod) => {
                known.insert(pod.metadata.uid.clone(), Known { pod, deleted: None });
            }
            Change::Deleted(pod) => {
                known.insert(
                    pod.metadata.uid.clone(),
                    Known {
                        pod,
                        deleted: Some(now),
                    },
                );
            }
        }
        known.retain(|_, entry| {
            entry
                .deleted
                .is_none_or(|deleted| now.duration_since(deleted) < DELETED_GRACE)
        });
        drop(known);
        self.changed.notify_waiters();
    }

    /// The pod with `uid`, waiting up to `pod_wait` for the watch to
    /// learn of it.
    async fn pod(&self, uid: &str) -> Option<Pod> {
        let deadline = tokio::time::Instant::now() + self.pod_wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(entry) = self
                .known
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(uid)
            {
                return Some(entry.pod.clone());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// What the pod with `uid` adds to its files, or `None` (counted) when
    /// the watch has not learned of it within `pod_wait`.
    pub async fn describe(&self, uid: &str) -> Option<PodInfo> {
        let Some(pod) = self.pod(uid).await else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            warn!(
                uid,
                synced = self.synced.load(Ordering::Acquire),
                "pod unknown to the watch; shipping its file with what its path says"
            );
            return None;
        };
        let meta = &pod.metadata;
        let mut attributes = Vec::new();
        let mut push = |key: &str, value: &str| attributes.push((key.to_owned(), value.to_owned()));
        if let Some(owner) = meta.controller() {
            match owner.kind.as_str() {
                "ReplicaSet" => {
                    push("k8s.replicaset.name", &owner.name);
                    let deployment = match self
                        .owner_of(
                            &meta.namespace,
                            "apps/v1",
                            "replicasets",
                            &owner.name,
                            "Deployment",
                        )
                        .await
                    {
                        Ok(deployment) => deployment,
                        // The API did not say: a Deployment names its
                        // ReplicaSets `<deployment>-<pod-template-hash>`.
                        Err(()) => meta.labels.get("pod-template-hash").and_then(|hash| {
                            owner
                                .name
                                .strip_suffix(hash.as_str())
                                .and_then(|rest| rest.strip_suffix('-'))
                                .map(str::to_owned)
                        }),
                    };
                    if let Some(deployment) = deployment {
                        push("k8s.deployment.name", &deployment);
                    }
                }
                "Job" => {
                    push("k8s.job.name", &owner.name);
                    if let Ok(Some(cronjob)) = self
                        .owner_of(&meta.namespace, "batch/v1", "jobs", &owner.name, "CronJob")
                        .await
                    {
                        push("k8s.cronjob.name", &cronjob);
                    }
                }
                "StatefulSet" => push("k8s.statefulset.name", &owner.name),
                "DaemonSet" => push("k8s.daemonset.name", &owner.name),
                _ => {}
            }
        }
        if !pod.spec.node_name.is_empty() {
            push("k8s.node.name", &pod.spec.node_name);
        }
        for (key, value) in &meta.labels {
            if self.labels.keeps(key) {
                push(&format!("k8s.pod.label.{key}"), value);
            }
        }
        for (key, value) in &meta.annotations {
            if self.annotations.keeps(key) {
                push(&format!("k8s.pod.annotation.{key}"), value);
            }
        }
        let mut steering = meta.labels.clone();
        steering.extend(
            meta.annotations
                .iter()
                .map(|(key, value)| (key.clone(), value.clone())),
        );
        Some(PodInfo {
            attributes,
            steering,
        })
    }

    /// The name of the `owner_kind` that controls `namespace`'s `resource`
    /// `name` (read once, then remembered); `Err` when the API did not
    /// answer.
    async fn owner_of(
        &self,
        namespace: &str,
        group_version: &str,
        resource: &str,
        name: &str,
        owner_kind: &str,
    ) -> std::result::Result<Option<String>, ()> {
        let key = format!("{namespace}/{resource}/{name}");
        // One GET per owner, however many files of its pods open at once:
        // the first asks, the others wait for its answer.
        let cell = {
            let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            if owners.len() >= MAX_OWNERS {
                owners.clear();
            }
            Arc::clone(owners.entry(key).or_default())
        };
        cell.get_or_try_init(|| async {
            self.owner_lookups.fetch_add(1, Ordering::Relaxed);
            let path = format!("/apis/{group_version}/namespaces/{namespace}/{resource}/{name}");
            match self.api.get::<Metadata>(&path).await {
                Ok(object) => Ok(object
                    .metadata
                    .controller()
                    .filter(|owner| owner.kind == owner_kind)
                    .map(|owner| owner.name.clone())),
                Err(ApiError::NotFound) => Ok(None),
                Err(error) => {
                    // Not remembered: the next file of such a pod asks again.
                    self.owner_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(%error, path, "reading a pod's owner failed");
                    Err(())
                }
            }
        })
        .await
        .cloned()
    }

    /// The watch's counters and the node's container states, in the
    /// Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut writer = Writer::new(out);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let live: Vec<&Pod> = known
            .values()
            .filter(|entry| entry.deleted.is_none())
            .map(|entry| &entry.pod)
            .collect();
        writer.family(
            "sightline_agent_kubernetes_pods",
            Kind::Gauge,
            "Pods on this node known to the agent's watch.",
        );
        writer.sample("sightline_agent_kubernetes_pods", &[], live.len());
        for (name, help, value) in [
            (
                "sightline_agent_kubernetes_watch_lists_total",
                "Pod lists read (the first and every relist).",
                load(&self.stats.lists),
            ),
            (
                "sightline_agent_kubernetes_watch_events_total",
                "Pods added, modified or deleted by watch events.",
                load(&self.stats.events),
            ),
            (
                "sightline_agent_kubernetes_watch_expired_total",
                "Pod watches ended by an expired version (410 Gone).",
                load(&self.stats.expired),
            ),
            (
                "sightline_agent_kubernetes_api_failures_total",
                "Pod list or watch requests that failed.",
                load(&self.stats.failures),
            ),
            (
                "sightline_agent_kubernetes_pod_unknown_total",
                "Files shipped with their path's metadata only: their pod was unknown to the watch after kubernetes.pod_wait.",
                load(&self.unknown),
            ),
            (
                "sightline_agent_kubernetes_owner_lookups_total",
                "GETs of a ReplicaSet or Job for its Deployment or CronJob.",
                load(&self.owner_lookups),
            ),
            (
                "sightline_agent_kubernetes_owner_lookup_failures_total",
                "GETs of a pod's owner that failed.",
                load(&self.owner_failures),
            ),
        ] {
            writer.family(name, Kind::Counter, help);
            writer.sample(name, &[], value);
        }
        let mut restarts = Vec::new();
        let mut terminated = Vec::new();
        let mut waiting = Vec::new();
        for pod in &live {
            let meta = &pod.metadata;
            for status in pod
                .status
                .container_statuses
                .iter()
                .chain(&pod.status.init_container_statuses)
            {
                let labels = [
                    meta.namespace.as_str(),
                    meta.name.as_str(),
                    meta.uid.as_str(),
                    status.name.as_str(),
                ];
                restarts.push((labels, status.restart_count));
                if let Some(last) = &status.last_state.terminated
                    && !last.reason.is_empty()
                {
                    terminated.push((labels, last.reason.as_str()));
                }
                if let Some(now) = &status.state.waiting
                    && !now.reason.is_empty()
                {
                    waiting.push((labels, now.reason.as_str()));
                }
            }
        }
        writer.family(
            "kube_pod_container_status_restarts_total",
            Kind::Counter,
            "Restarts of each container of this node's pods (kube-state-metrics' name).",
        );
        for (values, count) in &restarts {
            writer.sample(
                "kube_pod_container_status_restarts_total",
                &labelled(*values),
                *count,
            );
        }
        for (name, help, rows) in [
            (
                "kube_pod_container_status_last_terminated_reason",
                "Why each container of this node's pods last terminated (OOMKilled, Error, Completed).",
                &terminated,
            ),
            (
                "kube_pod_container_status_waiting_reason",
                "Why each container of this node's pods is waiting (CrashLoopBackOff, ImagePullBackOff).",
                &waiting,
            ),
        ] {
            writer.family(name, Kind::Gauge, help);
            for (values, reason) in rows {
                let [a, b, c, d] = labelled(*values);
                writer.sample(name, &[a, b, c, d, ("reason", reason)], 1);
            }
        }
    }
}

/// A container's labels: namespace, pod, uid, container.
fn labelled(values: [&str; 4]) -> [(&'static str, &str); 4] {
    let [namespace, pod, uid, container] = values;
    [
        ("namespace", namespace),
        ("pod", pod),
        ("uid", uid),
        ("container", container),
    ]
}
