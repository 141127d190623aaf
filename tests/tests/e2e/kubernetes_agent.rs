//! The agent's pod metadata from the Kubernetes API, end to end: the real
//! agent binary tails kubelet-style log files and watches a local server
//! that answers the API's requests in its JSON shapes (no API server can
//! be installed here; see `sightline_demo::kube_api`), and the real
//! collector stores what it ships.
//!
//! It checks that the workload (a ReplicaSet's Deployment, a Job's
//! CronJob), the node, the labels and the allowed annotations reach the
//! stored records; that annotations exclude a pod and switch its
//! multiline mode; a pod the watch learns of after its log appeared; the
//! watch expiring and resuming; the API down for a minute while logs keep
//! flowing; a pod never known shipped with its path data and counted; one
//! watch per node (a field selector), and the container restarts and last
//! termination reason on the agent's `/metrics`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use sightline_demo::kube_api::FakeKubeApi;
use sightline_tests::{CollectorProcess, Process, binary, free_port, poll_until, wait_healthy};

/// A pod on `node`, owned by `owner` (`(kind, name)`), with one container
/// `app` and its status.
fn pod(name: &str, node: &str, owner: (&str, &str), labels: Value, annotations: Value) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": labels, "annotations": annotations,
            "ownerReferences": [{"apiVersion": if owner.0 == "Job" { "batch/v1" } else { "apps/v1" },
                "kind": owner.0, "name": owner.1, "uid": format!("uid-{}", owner.1),
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": format!("{name}:1")}]},
        "status": {
            "phase": "Running", "podIP": "10.1.0.7", "hostIP": "192.168.1.5",
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "image": format!("{name}:1"),
                "imageID": "", "state": {"running": {"startedAt": "2026-12-06T20:00:00Z"}},
                "lastState": {}
            }]
        }
    })
}

/// An object with a controlling owner, as a GET of a ReplicaSet or Job
/// answers (its metadata is all the agent reads).
fn owned(api_version: &str, kind: &str, name: &str, owner: (&str, &str)) -> Value {
    json!({
        "kind": kind, "apiVersion": api_version,
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "ownerReferences": [{"apiVersion": api_version, "kind": owner.0, "name": owner.1,
                "uid": format!("uid-{}", owner.1), "controller": true}]}
    })
}

/// Appends CRI lines to the log of `pod`'s container `app`.
fn write_log(root: &Path, pod: &str, lines: &[&str]) {
    let dir = root.join(format!("pods/shop_{pod}_uid-{pod}/app"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for line in lines {
        text.push_str(&format!("2026-12-06T20:00:00.000000000Z stdout F {line}\n"));
    }
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("0.log"))
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// The stored records of service `service`, once there are `count`.
async fn records(collector: &CollectorProcess, service: &str, count: usize) -> Vec<Value> {
    poll_until(
        &format!("{count} records of service {service}"),
        Duration::from_secs(60),
        || async {
            let records = collector.all_records(&format!("service:{service}")).await;
            if records.len() >= count {
                Ok(Some(records))
            } else {
                Err(format!("{} stored", records.len()))
            }
        },
    )
    .await
}

async fn agent_metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("agent metrics")
        .text()
        .await
        .expect("agent metrics text")
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_labels_owners_and_annotations_reach_records_and_steer_the_agent() {
    let api = Arc::new(FakeKubeApi::default());
    let mut web = pod(
        "web-7d9c-x2x",
        "node-a",
        ("ReplicaSet", "web-7d9c"),
        json!({"app.kubernetes.io/name": "web-frontend", "team": "storefront", "pod-template-hash": "7d9c"}),
        json!({"team.example.com/oncall": "#storefront", "kubectl.kubernetes.io/last-applied-configuration": "{}"}),
    );
    web["status"]["containerStatuses"][0]["restartCount"] = json!(3);
    web["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
        "exitCode": 137, "reason": "OOMKilled",
        "startedAt": "2026-12-06T19:00:00Z", "finishedAt": "2026-12-06T19:59:00Z"}});
    api.put(web);
    api.put_object(
        "/apis/apps/v1/namespaces/shop/replicasets/web-7d9c",
        owned("apps/v1", "ReplicaSet", "web-7d9c", ("Deployment", "web")),
    );
    api.put(pod(
        "report-28930000-abcde",
        "node-a",
        ("Job", "report-28930000"),
        json!({"app": "report"}),
        json!({"sightline.io/multiline": "java"}),
    ));
    api.put_object(
        "/apis/batch/v1/namespaces/shop/jobs/report-28930000",
        owned("batch/v1", "Job", "report-28930000", ("CronJob", "report")),
    );
    api.put(pod(
        "noisy-0",
        "node-a",
        ("StatefulSet", "noisy"),
        json!({"app": "noisy"}),
        json!({"sightline.io/exclude": "true"}),
    ));
    // Another node's pod: this agent's watch never sees it.
    api.put(pod(
        "elsewhere-0",
        "node-b",
        ("StatefulSet", "elsewhere"),
        json!({"app": "elsewhere"}),
        json!({}),
    ));
    let api_port = api.serve().await;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let collector = CollectorProcess::start(&root.join("collector"), &[]).await;
    std::fs::write(root.join("token"), "agent-t0ken\n").unwrap();
    let agent_port = free_port();
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "include = [\"{pods}/pods/*/*/*.log\"]\ncollector = \"{collector}\"\ndata_dir = \"{data}\"\nhttp_addr = \"127.0.0.1:{agent_port}\"\nhost_name = \"node-a-host\"\n[kubernetes]\napi_server = \"http://127.0.0.1:{api_port}\"\ntoken_file = \"{token}\"\nnode_name = \"node-a\"\npod_wait = \"6s\"\nannotations = [\"sightline.io/*\", \"team.example.com/*\"]\n",
            pods = root.display(),
            collector = collector.grpc_endpoint(),
            data = root.join("agent").display(),
            token = root.join("token").display(),
        ),
    )
    .unwrap();
    // Written before the agent starts, read from the start.
    write_log(root, "web-7d9c-x2x", &["web started", "web serving"]);
    write_log(
        root,
        "report-28930000-abcde",
        &[
            "java.lang.IllegalStateException: report failed",
            "\tat com.example.Report.run(Report.java:42)",
            "\tat com.example.Main.main(Main.java:7)",
            "report done",
        ],
    );
    write_log(root, "noisy-0", &["noise", "more noise"]);
    let _agent = Process::spawn(
        "sightline-agent",
        Command::new(binary("sightline-agent"))
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env_remove("KUBERNETES_SERVICE_HOST"),
    );
    wait_healthy(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{agent_port}/health"),
        Duration::from_secs(30),
    )
    .await;

    // A Deployment's pod: workload, node, labels (not the template hash),
    // the allowed annotation (not kubectl's), the service from its label.
    let web = records(&collector, "web-frontend", 2).await;
    let resource = &web[0]["resource"];
    for (key, value) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-7d9c-x2x"),
        ("k8s.replicaset.name", "web-7d9c"),
        ("k8s.deployment.name", "web"),
        ("k8s.node.name", "node-a"),
        ("k8s.pod.label.team", "storefront"),
        ("k8s.pod.label.app.kubernetes.io/name", "web-frontend"),
        ("k8s.pod.annotation.team.example.com/oncall", "#storefront"),
    ] {
        assert_eq!(resource[key], value, "{key} in {resource}");
    }
    assert!(
        resource.get("k8s.pod.label.pod-template-hash").is_none(),
        "{resource}"
    );
    assert!(
        resource
            .get("k8s.pod.annotation.kubectl.kubernetes.io/last-applied-configuration")
            .is_none(),
        "{resource}"
    );
    // A CronJob's pod, its annotation switching on Java multiline: the
    // stack trace is one record.
    let report = records(&collector, "report", 2).await;
    assert_eq!(report[0]["resource"]["k8s.job.name"], "report-28930000");
    assert_eq!(report[0]["resource"]["k8s.cronjob.name"], "report");
    assert_eq!(report.len(), 2, "{report:#?}");
    assert!(
        report.iter().any(|record| record["body"]
            .as_str()
            .is_some_and(|body| body.contains("report failed") && body.contains("Main.java:7"))),
        "{report:#?}"
    );

    // A pod whose log appears before the watch knows it.
    write_log(root, "late-5f6d-q1q", &["late line"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.put(pod(
        "late-5f6d-q1q",
        "node-a",
        ("ReplicaSet", "late-5f6d"),
        json!({"app": "late", "pod-template-hash": "5f6d"}),
        json!({}),
    ));
    let late = records(&collector, "late", 1).await;
    assert_eq!(late[0]["resource"]["k8s.replicaset.name"], "late-5f6d");
    // No ReplicaSet to GET (404): no Deployment is made up.
    assert!(late[0]["resource"].get("k8s.deployment.name").is_none());

    // The watch expires; a pod added meanwhile is found by the relist.
    api.expire_watches();
    api.put(pod(
        "after-0",
        "node-a",
        ("DaemonSet", "after"),
        json!({"app": "after"}),
        json!({}),
    ));
    write_log(root, "after-0", &["after expiry"]);
    let after = records(&collector, "after", 1).await;
    assert_eq!(after[0]["resource"]["k8s.daemonset.name"], "after");

    // The API goes down: lines keep flowing from known pods, and a new
    // pod's file is shipped with its path data after `pod_wait`.
    api.down.store(true, Ordering::Relaxed);
    api.expire_watches();
    write_log(root, "web-7d9c-x2x", &["web while the API is down"]);
    write_log(root, "ghost-0", &["a pod nobody knows"]);
    records(&collector, "web-frontend", 3).await;
    // The service name from the path: the container's.
    let ghost = poll_until(
        "the unknown pod's record",
        Duration::from_secs(60),
        || async {
            let records = collector.all_records("nobody").await;
            if records.is_empty() {
                Err("none yet".to_string())
            } else {
                Ok(Some(records))
            }
        },
    )
    .await;
    assert_eq!(ghost[0]["resource"]["k8s.pod.name"], "ghost-0");
    assert!(
        ghost[0]["resource"].get("k8s.node.name").is_none(),
        "{}",
        ghost[0]
    );
    // Down for a minute in all: a line every 10 s, each stored while the
    // API is still down, with the pod's metadata the agent already had.
    let down_since = std::time::Instant::now();
    let mut written = 3;
    while down_since.elapsed() < Duration::from_secs(50) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        written += 1;
        write_log(
            root,
            "web-7d9c-x2x",
            &[&format!("web still serving {written}")],
        );
        let stored = records(&collector, "web-frontend", written).await;
        assert!(
            stored
                .iter()
                .all(|record| record["resource"]["k8s.deployment.name"] == "web"),
            "{stored:#?}"
        );
    }
    assert!(api.down.load(Ordering::Relaxed));
    // A pod added while the API is down is learned of once it is back
    // (after the watch's backoff: a relist).
    api.put(pod(
        "back-0",
        "node-a",
        ("StatefulSet", "back"),
        json!({"app": "back"}),
        json!({}),
    ));
    let lists = metric(
        &agent_metrics(agent_port).await,
        "sightline_agent_kubernetes_watch_lists_total",
    )
    .unwrap_or(0.0);
    api.down.store(false, Ordering::Relaxed);
    poll_until(
        "a relist after the API is back",
        Duration::from_secs(60),
        || async {
            let now = metric(
                &agent_metrics(agent_port).await,
                "sightline_agent_kubernetes_watch_lists_total",
            )
            .unwrap_or(0.0);
            if now > lists {
                Ok(Some(()))
            } else {
                Err(format!("{now} lists"))
            }
        },
    )
    .await;
    write_log(root, "back-0", &["after the API came back"]);
    let back = records(&collector, "back", 1).await;
    assert_eq!(back[0]["resource"]["k8s.statefulset.name"], "back");

    // The excluded pod never arrives.
    assert!(collector.all_records("service:noisy").await.is_empty());

    let text = agent_metrics(agent_port).await;
    assert_eq!(
        metric(&text, "sightline_agent_kubernetes_pod_unknown_total"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("kube_pod_container_status_restarts_total{namespace=\"shop\",pod=\"web-7d9c-x2x\",uid=\"uid-web-7d9c-x2x\",container=\"app\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("kube_pod_container_status_last_terminated_reason{namespace=\"shop\",pod=\"web-7d9c-x2x\",uid=\"uid-web-7d9c-x2x\",container=\"app\",reason=\"OOMKilled\"} 1"),
        "{text}"
    );
    assert!(
        metric(&text, "sightline_agent_kubernetes_watch_expired_total").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "sightline_agent_kubernetes_api_failures_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    // One watch of this node's pods: every pod request names the node,
    // never the other one's pods; one GET per owner, each once.
    let seen = api.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .filter(|request| request.starts_with("/api/v1/pods"))
            .all(|request| request.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{seen:#?}"
    );
    assert_eq!(api.requests("/replicasets/web-7d9c"), 1, "{seen:#?}");
    assert_eq!(api.requests("/jobs/report-28930000"), 1, "{seen:#?}");
    assert!(
        api.authorizations
            .lock()
            .unwrap()
            .iter()
            .all(|header| header == "Bearer agent-t0ken"),
        "{:?}",
        api.authorizations.lock().unwrap()
    );
    assert!(collector.all_records("service:elsewhere").await.is_empty());

    // In a pod without a service account token (the manifests before the
    // agent read the API), the agent still starts and ships, without
    // pod metadata: it is on by default only because this is a pod.
    let plain_port = free_port();
    let _plain = Process::spawn(
        "sightline-agent",
        Command::new(binary("sightline-agent"))
            .args(["--include", &format!("{}/none/*.log", root.display())])
            .args(["--collector", &collector.grpc_endpoint()])
            .arg("--data-dir")
            .arg(root.join("plain-agent"))
            .args(["--http-addr", &format!("127.0.0.1:{plain_port}")])
            .env("NO_COLOR", "1")
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", "1"),
    );
    wait_healthy(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{plain_port}/health"),
        Duration::from_secs(30),
    )
    .await;
    let text = agent_metrics(plain_port).await;
    assert!(!text.contains("sightline_agent_kubernetes_pods"), "{text}");
}
