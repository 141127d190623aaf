//! `kubernetes_sd_configs` (role `pod`) on a collector with the seed's
//! `prometheus.io/scrape` and `prometheus.io/port` rules. No Kubernetes
//! API server can be installed here, and Debian's Prometheus is built
//! without Kubernetes discovery (it refuses `kubernetes_sd_configs`), so
//! the collector reads a local server that answers the API's list and
//! watch requests in its JSON shapes (a `PodList` with a
//! `resourceVersion`, a watch stream of `BOOKMARK`/`ADDED`/`MODIFIED`
//! events, an `ERROR` 410 when the version expires, 503 while down), and
//! the labels are pinned to what Prometheus' pod role makes of the same
//! pods (`discovery/kubernetes/pod.go` and its documentation). It follows
//! the watch: a pod getting its IP, a pod deleted while the watch was
//! expired, the API down and back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sightline_demo::kube_api::FakeKubeApi as Api;
use sightline_tests::{CollectorProcess, get_json, poll_until};

/// A pod as the API returns it.
fn pod(name: &str, ip: &str, annotated_port: Option<u16>) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(port) = annotated_port {
        annotations.insert("prometheus.io/scrape".into(), json!("true"));
        annotations.insert("prometheus.io/port".into(), json!(port.to_string()));
    }
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"app.kubernetes.io/name": name, "pod-template-hash": "7d9c"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{name}-7d9c"), "uid": "rs-1", "controller": true,
                "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": "node-a",
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [
                {"name": "app", "image": format!("{name}:1"), "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9102, "protocol": "TCP"}
                ]},
                {"name": "sidecar", "image": "proxy:2"}
            ]
        },
        "status": {
            "phase": if ip.is_empty() { "Pending" } else { "Running" },
            "podIP": ip, "hostIP": "192.168.1.5",
            "conditions": [{"type": "Ready", "status": if ip.is_empty() { "False" } else { "True" }}]
        }
    })
}

/// A kubeconfig for the API at `api_port`, with a token.
fn kubeconfig(api_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\ncontexts:\n- name: test\n  context: {{cluster: local, user: scraper}}\nclusters:\n- name: local\n  cluster: {{server: 'http://127.0.0.1:{api_port}'}}\nusers:\n- name: scraper\n  user: {{token: t0ken}}\n"
    )
}

/// The seed's pod job: keep annotated pods, scrape the annotated port.
const CONFIG: &str = r#"
global:
  scrape_interval: 1h
scrape_configs:
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: kubeconfig
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        action: keep
        regex: true
      - source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port]
        action: replace
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
        target_label: __address__
      - action: labelmap
        regex: __meta_kubernetes_pod_label_(.+)
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
  # Prometheus' example job for services annotated prometheus.io/scrape.
  - job_name: kubernetes-service-endpoints
    kubernetes_sd_configs:
      - role: endpoints
        kubeconfig_file: kubeconfig
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_annotation_prometheus_io_scrape]
        action: keep
        regex: true
      - source_labels: [__address__, __meta_kubernetes_service_annotation_prometheus_io_port]
        action: replace
        target_label: __address__
        regex: ([^:]+)(?::\d+)?;(\d+)
        replacement: $1:$2
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_service_name]
        target_label: service
"#;

/// What a `/api/v1/targets` answer says: every discovered target's
/// Kubernetes labels and address, and every kept target's labels.
type Seen = (
    BTreeSet<BTreeMap<String, String>>,
    BTreeSet<BTreeMap<String, String>>,
);

async fn targets(http: &reqwest::Client, base: &str, job: &str) -> Result<Seen, String> {
    let body = get_json(http, &format!("{base}/api/v1/targets?state=any")).await?;
    let labels = |value: &Value, keep: &dyn Fn(&str) -> bool| -> BTreeMap<String, String> {
        value
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, _)| keep(name))
            .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_string()))
            .collect()
    };
    let discovered_keep =
        |name: &str| name.starts_with("__meta_kubernetes_") || name == "__address__";
    let mut discovered = BTreeSet::new();
    let mut kept = BTreeSet::new();
    for state in ["activeTargets", "droppedTargets"] {
        for target in body["data"][state].as_array().into_iter().flatten() {
            if target["discoveredLabels"]["job"] != job {
                continue;
            }
            discovered.insert(labels(&target["discoveredLabels"], &discovered_keep));
            if state == "activeTargets" {
                kept.insert(labels(&target["labels"], &|_| true));
            }
        }
    }
    Ok((discovered, kept))
}

/// Polls until we list `count` discovered targets whose kept ones are at
/// `addresses`, and returns what we list.
async fn discovered(
    http: &reqwest::Client,
    ours: &str,
    count: usize,
    addresses: &[&str],
    api: &Api,
) -> Seen {
    discovered_by(http, ours, "kubernetes-pods", count, addresses, api).await
}

/// [`discovered`] for job `job`.
async fn discovered_by(
    http: &reqwest::Client,
    ours: &str,
    job: &str,
    count: usize,
    addresses: &[&str],
    api: &Api,
) -> Seen {
    poll_until(
        &format!("{count} discovered targets of {job}, kept at {addresses:?}"),
        Duration::from_secs(60),
        || async {
            let seen = targets(http, ours, job).await?;
            let kept: BTreeSet<&str> = seen
                .1
                .iter()
                .map(|labels| labels["instance"].as_str())
                .collect();
            if seen.0.len() != count || kept != addresses.iter().copied().collect() {
                return Err(format!(
                    "{} discovered, kept at {kept:?}; requests: {:?}",
                    seen.0.len(),
                    api.seen.lock().unwrap()
                ));
            }
            Ok(Some(seen.clone()))
        },
    )
    .await
}

/// Labels as `(name, value)` pairs.
fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_discovered_and_relabeled_as_prometheus_does() {
    let api = Arc::new(Api::default());
    api.put(pod("web", "10.1.0.7", Some(9102)));
    api.put(pod("worker", "10.1.0.8", None));
    api.put(pod("starting", "", Some(9102)));
    let api_port = api.serve().await;

    let dir = tempfile::tempdir().expect("temporary dir");
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, CONFIG).expect("write the config");
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig(api_port))
        .expect("write the kubeconfig");
    let collector = CollectorProcess::start(
        &dir.path().join("collector-data"),
        &["--config", config_path.to_str().expect("utf-8 temp path")],
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let ours = collector.url("");

    // Two running pods, three containers each (one an init container),
    // the app's two ports: 4 targets a pod, the pod without an IP none.
    // The annotated pod's four are one after relabeling (the same address
    // and labels: the first is kept, as Prometheus keeps it), the other
    // pod's four are dropped.
    let (first, _) = discovered(&http, &ours, 5, &["10.1.0.7:9102"], &api).await;
    // The first target of the annotated pod, labeled as Prometheus' pod
    // role labels it (discovery/kubernetes/pod.go; its documentation).
    let web = labels(&[
        ("__address__", "10.1.0.7:8080"),
        ("__meta_kubernetes_namespace", "shop"),
        ("__meta_kubernetes_pod_name", "web"),
        ("__meta_kubernetes_pod_ip", "10.1.0.7"),
        ("__meta_kubernetes_pod_ready", "true"),
        ("__meta_kubernetes_pod_phase", "Running"),
        ("__meta_kubernetes_pod_node_name", "node-a"),
        ("__meta_kubernetes_pod_host_ip", "192.168.1.5"),
        ("__meta_kubernetes_pod_uid", "uid-web"),
        ("__meta_kubernetes_pod_controller_kind", "ReplicaSet"),
        ("__meta_kubernetes_pod_controller_name", "web-7d9c"),
        ("__meta_kubernetes_pod_label_app_kubernetes_io_name", "web"),
        (
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name",
            "true",
        ),
        ("__meta_kubernetes_pod_label_pod_template_hash", "7d9c"),
        (
            "__meta_kubernetes_pod_labelpresent_pod_template_hash",
            "true",
        ),
        (
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
            "true",
        ),
        (
            "__meta_kubernetes_pod_annotationpresent_prometheus_io_scrape",
            "true",
        ),
        (
            "__meta_kubernetes_pod_annotation_prometheus_io_port",
            "9102",
        ),
        (
            "__meta_kubernetes_pod_annotationpresent_prometheus_io_port",
            "true",
        ),
        ("__meta_kubernetes_pod_container_name", "app"),
        ("__meta_kubernetes_pod_container_image", "web:1"),
        ("__meta_kubernetes_pod_container_init", "false"),
        ("__meta_kubernetes_pod_container_port_name", "http"),
        ("__meta_kubernetes_pod_container_port_number", "8080"),
        ("__meta_kubernetes_pod_container_port_protocol", "TCP"),
    ]);
    assert!(first.contains(&web), "{first:#?}");
    // Every request carried the kubeconfig's token.
    assert_eq!(
        *api.authorizations.lock().unwrap(),
        BTreeSet::from(["Bearer t0ken".to_string()])
    );
    // The worker's init container: no port, the pod IP alone.
    assert!(
        first
            .iter()
            .any(|target| target["__address__"] == "10.1.0.8"
                && target["__meta_kubernetes_pod_container_init"] == "true"
                && !target.contains_key("__meta_kubernetes_pod_container_port_number")),
        "{first:#?}"
    );

    // The endpoints role: a Service annotated for scraping, its Endpoints
    // naming the web pod (ready) and an address without a pod (not
    // ready); kept on the annotated port, with the Service's and the
    // pod's labels (Prometheus' endpoints.go).
    api.put_in(
        "services",
        json!({"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "shop", "uid": "svc-1",
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9102"}},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    );
    api.put_in(
        "endpoints",
        json!({"kind": "Endpoints", "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{
                "addresses": [{"ip": "10.1.0.7", "nodeName": "node-a",
                    "targetRef": {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "uid-web"}}],
                "notReadyAddresses": [{"ip": "10.1.0.99"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
            }]}),
    );
    // 10.1.0.7:8080 and 10.1.0.99:8080 from the endpoint port, 10.1.0.7:9102
    // from the pod's other container port; all three rewritten to :9102,
    // where the pod's two are the same target (the first kept).
    let (endpoints, kept) = discovered_by(
        &http,
        &ours,
        "kubernetes-service-endpoints",
        2,
        &["10.1.0.7:9102", "10.1.0.99:9102"],
        &api,
    )
    .await;
    let ready = endpoints
        .iter()
        .find(|target| target["__address__"] == "10.1.0.7:8080")
        .unwrap_or_else(|| panic!("{endpoints:#?}"));
    for (name, value) in [
        ("__meta_kubernetes_endpoints_name", "web"),
        ("__meta_kubernetes_service_name", "web"),
        ("__meta_kubernetes_endpoint_ready", "true"),
        ("__meta_kubernetes_endpoint_port_name", "http"),
        ("__meta_kubernetes_endpoint_address_target_kind", "Pod"),
        ("__meta_kubernetes_endpoint_address_target_name", "web"),
        ("__meta_kubernetes_endpoint_node_name", "node-a"),
        ("__meta_kubernetes_pod_name", "web"),
        ("__meta_kubernetes_pod_container_name", "app"),
        ("__meta_kubernetes_pod_container_port_name", "http"),
    ] {
        assert_eq!(
            ready.get(name).map(String::as_str),
            Some(value),
            "{name}: {ready:#?}"
        );
    }
    assert!(
        kept.iter()
            .all(|labels| labels["service"] == "web" && labels["namespace"] == "shop"),
        "{kept:#?}"
    );

    // The pending pod gets its IP, through the watch.
    api.put(pod("starting", "10.1.0.9", Some(9102)));
    discovered(&http, &ours, 6, &["10.1.0.7:9102", "10.1.0.9:9102"], &api).await;

    // The watch expires (410) while a pod is deleted unseen: the list
    // that follows drops it.
    api.delete("shop/worker", false);
    api.expire_watches();
    discovered(&http, &ours, 2, &["10.1.0.7:9102", "10.1.0.9:9102"], &api).await;

    // The API is down: the targets stay; back, a pod added meanwhile
    // appears.
    api.down.store(true, std::sync::atomic::Ordering::Relaxed);
    api.expire_watches();
    api.put(pod("late", "10.1.0.10", Some(9102)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    discovered(&http, &ours, 2, &["10.1.0.7:9102", "10.1.0.9:9102"], &api).await;
    api.down.store(false, std::sync::atomic::Ordering::Relaxed);
    discovered(
        &http,
        &ours,
        3,
        &["10.1.0.7:9102", "10.1.0.9:9102", "10.1.0.10:9102"],
        &api,
    )
    .await;
}
