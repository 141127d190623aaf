//! What a platform team deploys, checked without Docker or a cluster:
//! `docker-compose.yml` and its `Dockerfile`, the manifests of
//! `deploy/kubernetes/`, the Grafana dashboards of `dashboards/` and the
//! rule files of `dashboards/rules/`.
//!
//! Flags, environment variables, ports and health paths are checked against
//! the real binaries (`--help`, `--check-config`, a live demo stack), the
//! manifests against the Kubernetes JSON schemas (`kubernetes-validate`,
//! installed by `scripts/test`), the rules with Debian's `promtool`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sightline_tests::{CollectorProcess, DemoStack, binary, poll_until};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every YAML document of a file, as JSON values (aliases resolved).
fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|error| panic!("{relative}: {error}"));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

fn compose() -> Value {
    yaml_documents("docker-compose.yml").remove(0)
}

fn kubernetes_files() -> Vec<String> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes exists")
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

/// Every Kubernetes object of `deploy/kubernetes/`, with its file.
fn kubernetes_objects() -> Vec<(String, Value)> {
    kubernetes_files()
        .into_iter()
        .flat_map(|file| {
            yaml_documents(&format!("deploy/kubernetes/{file}"))
                .into_iter()
                .map(move |object| (file.clone(), object))
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// One container as compose or Kubernetes runs it: the program, its
/// arguments, the environment variable names it sets.
#[derive(Debug)]
struct Invocation {
    place: String,
    program: String,
    args: Vec<String>,
    env: Vec<String>,
}

fn compose_invocations() -> Vec<Invocation> {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .map(|(name, service)| {
            let mut command = strings(&service["command"]);
            if service["image"]
                .as_str()
                .is_some_and(|image| image.starts_with("prom/alertmanager:"))
            {
                // The image's entrypoint is Alertmanager; the command is its flags.
                command.insert(0, ALERTMANAGER.to_string());
            }
            let env = service["environment"]
                .as_object()
                .map(|env| env.keys().cloned().collect())
                .unwrap_or_default();
            Invocation {
                place: format!("docker-compose.yml service {name}"),
                program: command.first().cloned().unwrap_or_default(),
                args: command.iter().skip(1).cloned().collect(),
                env,
            }
        })
        .collect()
}

fn pod_spec(object: &Value) -> Option<&Value> {
    match object["kind"].as_str()? {
        "Deployment" | "DaemonSet" | "StatefulSet" => Some(&object["spec"]["template"]["spec"]),
        _ => None,
    }
}

fn kubernetes_invocations() -> Vec<Invocation> {
    let mut invocations = Vec::new();
    for (file, object) in kubernetes_objects() {
        let Some(spec) = pod_spec(&object) else {
            continue;
        };
        for container in spec["containers"].as_array().expect("containers") {
            let mut command = strings(&container["command"]);
            if container["image"]
                .as_str()
                .is_some_and(|image| image.contains("prometheus/alertmanager:"))
            {
                command.insert(0, ALERTMANAGER.to_string());
            }
            let env = container["env"]
                .as_array()
                .map(|env| {
                    env.iter()
                        .filter_map(|var| var["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            invocations.push(Invocation {
                place: format!(
                    "{file} {} container {}",
                    object["metadata"]["name"], container["name"]
                ),
                program: command.first().cloned().unwrap_or_default(),
                args: strings(&container["args"]),
                env,
            });
        }
    }
    invocations
}

/// Debian's Alertmanager, the same release line as the image the
/// manifests run: its `--help` checks their flags.
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

fn help_of(program: &str) -> String {
    let path = if program == ALERTMANAGER {
        PathBuf::from(ALERTMANAGER)
    } else {
        binary(program)
    };
    let output = Command::new(path)
        .arg("--help")
        .output()
        .unwrap_or_else(|error| panic!("{program} --help: {error}"));
    assert!(output.status.success(), "{program} --help failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `--name=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter()
        .find_map(|arg| arg.strip_prefix(prefix.as_str()))
}

fn port_of(address: &str) -> u16 {
    let port = address.rsplit(':').next().unwrap_or_default();
    let port = port.split('/').next().unwrap_or_default();
    port.parse()
        .unwrap_or_else(|_| panic!("no port in {address:?}"))
}

/// The demo's role ports, as `shop-service` defaults them.
const ROLE_PORTS: [(&str, u16); 6] = [
    ("gateway", 8000),
    ("auth", 8001),
    ("order", 8002),
    ("inventory", 8003),
    ("payment", 8004),
    ("notification", 8005),
];

#[test]
fn every_flag_and_variable_in_compose_and_kubernetes_is_one_the_binary_accepts() {
    let programs = [
        "sightline-collector",
        "sightline-agent",
        "shop-service",
        "sightline-demo",
        ALERTMANAGER,
    ];
    let helps: BTreeMap<&str, String> = programs.iter().map(|p| (*p, help_of(p))).collect();
    let dockerfile = read("Dockerfile");
    let mut checked = 0;
    for invocation in compose_invocations()
        .into_iter()
        .chain(kubernetes_invocations())
    {
        let place = &invocation.place;
        match invocation.program.as_str() {
            "/bin/sh" => continue,
            "sightline-loadgen" => {
                assert!(
                    dockerfile.contains("/usr/local/bin/sightline-loadgen"),
                    "{place}: the image has no sightline-loadgen"
                );
                continue;
            }
            _ => {}
        }
        let help = helps
            .get(invocation.program.as_str())
            .unwrap_or_else(|| panic!("{place}: unknown program {:?}", invocation.program));
        for arg in &invocation.args {
            let name = arg.split('=').next().unwrap_or_default();
            assert!(
                name.starts_with("--"),
                "{place}: {arg:?} is not --flag=value"
            );
            assert!(
                help.contains(&format!("{name} "))
                    || help.contains(&format!("{name}\n"))
                    || help.contains(&format!("{name}=")),
                "{place}: {} does not accept {name}",
                invocation.program
            );
            checked += 1;
        }
        for variable in &invocation.env {
            assert!(
                help.contains(&format!("[env: {variable}=")),
                "{place}: {} reads no {variable}",
                invocation.program
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} flags found");
}

#[test]
fn compose_ports_health_checks_and_peers_agree_with_the_binaries() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    for required in ["collector", "agent", "loadgen"]
        .into_iter()
        .chain(ROLE_PORTS.iter().map(|(role, _)| *role))
    {
        assert!(
            services.contains_key(required),
            "no compose service {required}"
        );
    }
    for (name, service) in services {
        if name == "alertmanager" {
            // Upstream's image, with the shipped routing tree mounted.
            assert!(
                service["image"]
                    .as_str()
                    .is_some_and(|image| image.starts_with("prom/alertmanager:"))
            );
            assert!(
                strings(&service["volumes"]).contains(
                    &"./deploy/compose/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
                        .to_string()
                )
            );
            assert_eq!(
                strings(&service["healthcheck"]["test"])
                    .last()
                    .map(String::as_str),
                Some("http://127.0.0.1:9093/-/ready")
            );
            continue;
        }
        let build = &service["build"];
        let context = root().join(build["context"].as_str().expect("a build context"));
        assert!(
            context.is_dir(),
            "{name}: no build context {}",
            context.display()
        );
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
        assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
        assert_host_mounts_exist(name, service);
        let health = strings(&service["healthcheck"]["test"]);
        assert!(health.len() > 2, "{name}: no healthcheck");
        assert_eq!(health[..2], ["CMD", "curl"], "{name}: {health:?}");
    }

    let command = |name: &str| strings(&services[name]["command"]);
    let health_url = |name: &str| {
        strings(&services[name]["healthcheck"]["test"])
            .pop()
            .unwrap()
    };
    let published = |name: &str| -> BTreeSet<u16> {
        strings(&services[name]["ports"])
            .iter()
            .map(|mapping| port_of(mapping))
            .collect()
    };

    let collector = command("collector");
    let http = flag(&collector, "--http-addr").expect("collector --http-addr");
    assert_eq!(
        health_url("collector"),
        format!("http://127.0.0.1:{}/-/ready", port_of(http))
    );
    for (flag_name, port) in [
        ("--otlp-grpc-addr", 4317),
        ("--otlp-http-addr", 4318),
        ("--http-addr", 7070),
    ] {
        let address =
            flag(&collector, flag_name).unwrap_or_else(|| panic!("collector {flag_name}"));
        assert_eq!(address, format!("0.0.0.0:{port}"), "collector {flag_name}");
        assert!(
            published("collector").contains(&port),
            "collector port {port}"
        );
    }
    let data_dir = flag(&collector, "--data-dir").expect("collector --data-dir");
    assert!(
        strings(&services["collector"]["volumes"])
            .iter()
            .any(|volume| volume.ends_with(&format!(":{data_dir}"))),
        "the collector's --data-dir {data_dir} is not a volume"
    );
    let config = flag(&collector, "--config").expect("collector --config");
    assert!(
        strings(&services["collector"]["volumes"])
            .iter()
            .any(|volume| volume.ends_with(&format!(":{config}:ro"))),
        "the collector's --config {config} is not mounted"
    );

    let agent = command("agent");
    assert_eq!(flag(&agent, "--collector"), Some("http://collector:4317"));
    let agent_http = flag(&agent, "--http-addr").expect("agent --http-addr");
    assert_eq!(port_of(agent_http), 2020);
    assert_eq!(health_url("agent"), "http://127.0.0.1:2020/-/ready");
    let agent_volumes = strings(&services["agent"]["volumes"]);
    assert!(
        agent_volumes
            .contains(&"/var/lib/docker/containers:/var/lib/docker/containers:ro".to_owned())
    );
    let checkpoints = flag(&agent, "--data-dir").expect("agent --data-dir");
    assert!(
        agent_volumes
            .iter()
            .any(|v| v.ends_with(&format!(":{checkpoints}")))
    );

    for (role, port) in ROLE_PORTS {
        let args = command(role);
        assert_eq!(flag(&args, "--service"), Some(role));
        assert_eq!(
            flag(&args, "--listen"),
            Some(format!("0.0.0.0:{port}").as_str())
        );
        assert_eq!(
            health_url(role),
            format!("http://127.0.0.1:{port}/health/live")
        );
        assert!(
            published(role).contains(&port),
            "{role} does not publish {port}"
        );
        assert_eq!(
            flag(&args, "--otlp-endpoint"),
            Some("http://collector:4317")
        );
        for (peer, peer_port) in ROLE_PORTS.iter().filter(|(peer, _)| *peer != "gateway") {
            assert_eq!(
                flag(&args, &format!("--{peer}-url")),
                Some(format!("http://{peer}:{peer_port}").as_str()),
                "{role}: --{peer}-url"
            );
        }
    }
}

const AMTOOL: &str = "/usr/bin/amtool";

/// `amtool config routes test` with `labels`: the receivers the routing
/// tree in `config` picks.
fn routed_to(config: &std::path::Path, labels: &[String]) -> String {
    let output = Command::new(AMTOOL)
        .args(["config", "routes", "test", "--config.file"])
        .arg(config)
        .args(labels)
        .output()
        .expect("amtool runs");
    assert!(
        output.status.success(),
        "amtool config routes test {labels:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The Alertmanager configs shipped for Compose and Kubernetes pass
/// `amtool check-config`, route every shipped alert by its severity (pages
/// to `pager`, the rest to `chat`), and have the same routing tree and
/// inhibition, their receivers differing only in the address of the
/// notification service.
#[test]
fn the_shipped_routing_tree_pages_and_chats_by_severity() {
    assert!(
        std::path::Path::new(AMTOOL).exists(),
        "{AMTOOL} is missing: apt-get install prometheus-alertmanager (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let compose_path = root().join("deploy/compose/alertmanager.yml");
    let k8s = yaml_documents("deploy/kubernetes/alertmanager.yaml");
    let k8s_text = k8s[0]["data"]["alertmanager.yml"].as_str().unwrap();
    let k8s_path = dir.path().join("alertmanager.yml");
    std::fs::write(&k8s_path, k8s_text).unwrap();
    for config in [&compose_path, &k8s_path] {
        let output = Command::new(AMTOOL)
            .arg("check-config")
            .arg(config)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "amtool check-config {}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stdout)
        );
    }

    let mut routed = 0;
    for (_, rule) in alerts() {
        let name = rule["alert"].as_str().unwrap();
        let labels = rule["labels"].as_object().cloned().unwrap_or_default();
        let severity = labels["severity"].as_str().unwrap_or_default().to_string();
        let mut args = vec![format!("alertname={name}")];
        if !labels.contains_key("service") {
            args.push("service=payment".to_string());
        }
        args.extend(
            labels
                .iter()
                .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default())),
        );
        let expected = match severity.as_str() {
            "page" | "critical" => "pager",
            _ => "chat",
        };
        for config in [&compose_path, &k8s_path] {
            assert_eq!(routed_to(config, &args), expected, "{name} ({severity})");
        }
        routed += 1;
    }
    assert!(routed >= 8, "{routed} shipped alerts routed");

    let compose: Value = serde_norway::from_str(&read("deploy/compose/alertmanager.yml")).unwrap();
    let k8s: Value = serde_norway::from_str(k8s_text).unwrap();
    assert_eq!(compose["route"], k8s["route"], "the same routing tree");
    assert_eq!(
        compose["inhibit_rules"], k8s["inhibit_rules"],
        "the same inhibition"
    );
    let urls = |config: &Value| -> Vec<(String, String)> {
        config["receivers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|receiver| {
                let url = receiver["webhook_configs"][0]["url"].as_str().unwrap();
                let path = url.splitn(4, '/').nth(3).unwrap_or_default().to_string();
                (receiver["name"].as_str().unwrap().to_string(), path)
            })
            .collect()
    };
    assert_eq!(urls(&compose), urls(&k8s));
    assert_eq!(
        urls(&compose),
        [
            ("pager".to_string(), "alerts/pager".to_string()),
            ("chat".to_string(), "alerts/chat".to_string())
        ]
    );
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        println!("skipped: `docker compose` (the compose plugin) is not installed here");
        return;
    }
    let output = Command::new("docker")
        .args(["compose", "-f", "docker-compose.yml", "config", "--quiet"])
        .current_dir(root())
        .output()
        .expect("docker compose config runs");
    assert!(
        output.status.success(),
        "docker compose config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The collector accepts the compose config (with the rules beside it)
/// and the Kubernetes one: it starts with each and answers `/health`.
#[tokio::test]
async fn the_collector_starts_with_the_shipped_configs() {
    let k8s: Vec<Value> = yaml_documents("deploy/kubernetes/collector-config.yaml");
    let configs = [
        read("deploy/compose/sightline.yml"),
        k8s[0]["data"]["sightline.yml"]
            .as_str()
            .expect("sightline.yml in the ConfigMap")
            .to_owned(),
    ];
    for text in configs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        for file in ["shop.rules.yml", "node.rules.yml"] {
            std::fs::copy(
                root().join("dashboards/rules").join(file),
                dir.path().join("rules").join(file),
            )
            .unwrap();
        }
        let config = dir.path().join("sightline.yml");
        std::fs::write(&config, &text).unwrap();
        let data = dir.path().join("data");
        let collector =
            CollectorProcess::start(&data, &["--config", config.to_str().unwrap()]).await;
        let health = reqwest::get(collector.url("/health")).await.unwrap();
        assert!(health.status().is_success());
    }
}

/// Asserts every `./path` a Compose service mounts exists in the repo.
fn assert_host_mounts_exist(name: &str, service: &Value) {
    for volume in strings(&service["volumes"]) {
        if let Some(host) = volume.strip_prefix("./") {
            let host = host.split(':').next().unwrap_or_default();
            assert!(
                root().join(host).exists(),
                "{name}: mounts missing ./{host}"
            );
        }
    }
}

/// Validates `files` against Kubernetes 1.30's schemas (strict: unknown
/// fields fail) and returns what kubernetes-validate printed.
fn kubernetes_validate(files: &[PathBuf]) -> String {
    let output = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.30.0",
        ])
        .args(files)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named kubernetes_validate"),
        "install kubernetes-validate (`python3 -m pip install kubernetes-validate`; scripts/test does)"
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kubernetes-validate:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The objects the stand-in Kubernetes API serves (the demo's pods and
/// ReplicaSets, as the e2e tests' are built the same way) are checked
/// against the upstream schemas, so what the agent and the collector are
/// tested on is what an API server returns, not a guess.
#[test]
fn the_stand_in_apis_objects_validate_against_the_kubernetes_schemas() {
    use sightline_demo::cri::PodIdentity;
    use sightline_demo::launcher::pods::{pod_object, replicaset_object};
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().expect("temporary dir");
    let pod = PodIdentity::new_random("shop", "payment");
    let objects = [
        ("pod.json", pod_object(&pod, "payment", 0, None)),
        (
            "restarted.json",
            pod_object(
                &pod,
                "payment",
                3,
                Some(std::process::ExitStatus::from_raw(9)),
            ),
        ),
        ("replicaset.json", replicaset_object(&pod, "payment")),
    ];
    let files: Vec<PathBuf> = objects
        .iter()
        .map(|(name, object)| {
            let path = dir.path().join(name);
            std::fs::write(&path, object.to_string()).expect("write the object");
            path
        })
        .collect();
    let stdout = kubernetes_validate(&files);
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("INFO"))
            .count(),
        objects.len(),
        "{stdout}"
    );
    // The restarted pod says why, as the kubelet would.
    assert_eq!(
        objects[1].1["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"],
        "OOMKilled"
    );
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    let files: Vec<PathBuf> = kubernetes_files()
        .iter()
        .map(|file| root().join("deploy/kubernetes").join(file))
        .collect();
    let stdout = kubernetes_validate(&files);
    let validated = stdout
        .lines()
        .filter(|line| line.starts_with("INFO"))
        .count();
    assert!(
        validated >= 20,
        "only {validated} objects validated:\n{stdout}"
    );
}

#[test]
fn kubernetes_objects_reference_what_exists() {
    let objects = kubernetes_objects();
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    for file in kubernetes_files() {
        assert!(
            kustomization.contains(&format!("- {file}")),
            "kustomization.yaml lacks {file}"
        );
    }
    let config_maps: BTreeSet<String> = objects
        .iter()
        .filter(|(_, object)| object["kind"] == "ConfigMap")
        .map(|(_, object)| object["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let mut pod_labels = Vec::new();
    for (file, object) in &objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let name = &object["metadata"]["name"];
        let labels = &object["spec"]["template"]["metadata"]["labels"];
        for (key, value) in object["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap()
        {
            assert_eq!(
                &labels[key], value,
                "{file} {name}: selector does not match the pod"
            );
        }
        pod_labels.push((object["metadata"]["namespace"].clone(), labels.clone()));
        let volumes: BTreeSet<&str> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|volume| {
                if let Some(map) = volume["configMap"]["name"].as_str() {
                    assert!(
                        config_maps.contains(map),
                        "{file} {name}: no ConfigMap {map}"
                    );
                }
                volume["name"].as_str().unwrap()
            })
            .chain(
                object["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|claim| claim["metadata"]["name"].as_str().unwrap()),
            )
            .collect();
        for container in spec["containers"].as_array().unwrap() {
            assert!(container["image"].is_string(), "{file} {name}: no image");
            assert!(
                container["resources"]["limits"].is_object(),
                "{file} {name}: no limits"
            );
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let volume = mount["name"].as_str().unwrap();
                assert!(
                    volumes.contains(volume),
                    "{file} {name}: no volume {volume}"
                );
            }
            let ports: BTreeSet<u64> = container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|port| port["containerPort"].as_u64().unwrap())
                .collect();
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(port) = container[probe]["httpGet"]["port"].as_u64() {
                    assert!(
                        ports.contains(&port),
                        "{file} {name}: {probe} on unexposed {port}"
                    );
                }
            }
        }
    }
    for (file, object) in &objects {
        if object["kind"] != "Service" {
            continue;
        }
        let selector = &object["spec"]["selector"];
        let selects = pod_labels.iter().any(|(namespace, labels)| {
            *namespace == object["metadata"]["namespace"]
                && selector
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(key, value)| &labels[key] == value)
        });
        assert!(
            selects,
            "{file} Service {} selects no pod",
            object["metadata"]["name"]
        );
    }

    // The agent DaemonSet as the issue asks for it.
    let (_, agent) = objects
        .iter()
        .find(|(_, object)| object["kind"] == "DaemonSet")
        .expect("the agent DaemonSet");
    let spec = &agent["spec"]["template"]["spec"];
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert!(
        spec["tolerations"][0].get("key").is_none(),
        "tolerate every taint"
    );
    let container = &spec["containers"][0];
    for (probe, path) in [
        ("livenessProbe", "/-/healthy"),
        ("readinessProbe", "/-/ready"),
    ] {
        assert_eq!(container[probe]["httpGet"]["port"], 2020);
        assert_eq!(container[probe]["httpGet"]["path"], path);
    }
    let host_paths: BTreeMap<&str, &str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    for path in [
        "/var/log/pods",
        "/var/log/containers",
        "/var/lib/docker/containers",
    ] {
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|mount| host_paths.get(mount["name"].as_str().unwrap()) == Some(&path))
            .unwrap_or_else(|| panic!("the agent does not mount {path}"));
        assert_eq!(mount["readOnly"], true, "{path} must be read-only");
        assert_eq!(mount["mountPath"], path);
    }
    let args = strings(&container["args"]);
    let checkpoints = flag(&args, "--data-dir").expect("agent --data-dir");
    assert!(
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|mount| {
                mount["mountPath"] == checkpoints
                    && host_paths.contains_key(mount["name"].as_str().unwrap())
            }),
        "the checkpoints ({checkpoints}) are not on a hostPath"
    );
    // The agent watches the pods of the node it runs on.
    assert!(
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|env| env["name"] == "NODE_NAME"
                && env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "the agent gets no NODE_NAME from spec.nodeName: {}",
        container["env"]
    );
    // Least privilege, exactly two grants. The collector may get, list and
    // watch pods in namespace shop (its `shop` scrape job discovers them).
    // The agent may get, list and watch pods (its node's, for their
    // metadata) and get replicasets and jobs (a pod's Deployment and
    // CronJob), in every namespace: a node runs them all. Each is bound to
    // its own account only; only their pods get an API token.
    let grants: BTreeMap<(String, String), &Value> = objects
        .iter()
        .filter(|(_, object)| {
            ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"]
                .contains(&object["kind"].as_str().unwrap_or_default())
        })
        .map(|(_, object)| {
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ((kind, name), object)
        })
        .collect();
    let grant = |kind: &str, name: &str| -> &Value {
        grants
            .get(&(kind.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("no {kind} {name}: {:?}", grants.keys()))
    };
    assert_eq!(grants.len(), 4, "{:?}", grants.keys());
    let collector_role = grant("Role", "sightline-collector-pods");
    assert_eq!(collector_role["metadata"]["namespace"], "shop");
    assert_eq!(
        collector_role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
    );
    let collector_binding = grant("RoleBinding", "sightline-collector-pods");
    assert_eq!(collector_binding["metadata"]["namespace"], "shop");
    assert_eq!(
        collector_binding["roleRef"]["name"],
        "sightline-collector-pods"
    );
    assert_eq!(
        collector_binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "sightline-collector", "namespace": "sightline"}])
    );
    assert_eq!(
        grant("ClusterRole", "sightline-agent")["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]}
        ])
    );
    let agent_binding = grant("ClusterRoleBinding", "sightline-agent");
    assert_eq!(agent_binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(agent_binding["roleRef"]["name"], "sightline-agent");
    assert_eq!(
        agent_binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "sightline-agent", "namespace": "sightline"}])
    );
    let mut workloads = 0;
    for (file, object) in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        if kind == "ServiceAccount" {
            assert_eq!(object["automountServiceAccountToken"], false, "{file}");
        }
        if ["Deployment", "StatefulSet", "DaemonSet"].contains(&kind) {
            workloads += 1;
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let calls_the_api = ["sightline-collector", "sightline-agent"].contains(&name);
            let spec = &object["spec"]["template"]["spec"];
            assert_eq!(
                spec["automountServiceAccountToken"],
                calls_the_api,
                "{file}: {kind} {name} {} an API token",
                if calls_the_api {
                    "does not mount"
                } else {
                    "mounts"
                }
            );
            if calls_the_api {
                assert_eq!(spec["serviceAccountName"], name, "{file}");
            }
        }
    }
    assert!(workloads >= 8, "{workloads} workloads checked");
    assert!(
        objects
            .iter()
            .any(|(_, object)| object["kind"] == "StatefulSet"
                && object["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data")
    );
    // The collector's probes: alive while replaying, ready after it.
    let (_, collector) = objects
        .iter()
        .find(|(_, object)| {
            object["kind"] == "StatefulSet" && object["metadata"]["name"] == "sightline-collector"
        })
        .expect("the collector StatefulSet");
    let container = &collector["spec"]["template"]["spec"]["containers"][0];
    for (probe, path) in [
        ("startupProbe", "/-/healthy"),
        ("livenessProbe", "/-/healthy"),
        ("readinessProbe", "/-/ready"),
    ] {
        assert_eq!(
            container[probe]["httpGet"]["path"], path,
            "collector {probe}"
        );
        assert_eq!(
            container[probe]["httpGet"]["port"], 7070,
            "collector {probe}"
        );
    }

    // The rules ConfigMap is dashboards/rules, unchanged.
    let (_, rules) = objects
        .iter()
        .find(|(_, object)| object["metadata"]["name"] == "sightline-rules")
        .expect("the sightline-rules ConfigMap");
    for file in ["shop.rules.yml", "node.rules.yml"] {
        assert_eq!(
            rules["data"][file].as_str(),
            Some(read(&format!("dashboards/rules/{file}")).as_str()),
            "deploy/kubernetes/collector-rules.yaml: {file} differs from dashboards/rules (regenerate it)"
        );
    }
    // The dashboards ConfigMap is dashboards/*.json, unchanged, mounted
    // whole (not by subPath, which kubelet never updates) where the
    // collector's --dashboards-dir reads.
    let (_, shipped) = objects
        .iter()
        .find(|(_, object)| object["metadata"]["name"] == "sightline-dashboards")
        .expect("the sightline-dashboards ConfigMap");
    let mut files: Vec<String> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".json"))
        .collect();
    files.sort();
    let keys: Vec<String> = shipped["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys, files,
        "deploy/kubernetes/collector-dashboards.yaml lists other files than dashboards/ (regenerate it)"
    );
    for file in &files {
        assert_eq!(
            shipped["data"][file].as_str(),
            Some(read(&format!("dashboards/{file}")).as_str()),
            "deploy/kubernetes/collector-dashboards.yaml: {file} differs from dashboards/ (regenerate it)"
        );
    }
    assert!(
        strings(&container["args"])
            .contains(&"--dashboards-dir=/etc/sightline/dashboards".to_string())
    );
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|mount| mount["mountPath"] == "/etc/sightline/dashboards")
        .expect("the dashboards mount");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount is never updated"
    );
}

#[test]
fn the_agent_accepts_its_kubernetes_config() {
    let documents = yaml_documents("deploy/kubernetes/agent-config.yaml");
    let toml = documents[0]["data"]["agent.toml"]
        .as_str()
        .expect("agent.toml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    let output = Command::new(binary("sightline-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sightline-agent --check-config: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The alerts of `dashboards/rules`.
fn alerts() -> Vec<(String, Value)> {
    let mut alerts = Vec::new();
    for file in ["shop.rules.yml", "node.rules.yml"] {
        let document = yaml_documents(&format!("dashboards/rules/{file}")).remove(0);
        for group in document["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if rule.get("alert").is_some() {
                    alerts.push((file.to_owned(), rule.clone()));
                }
            }
        }
    }
    alerts
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_that_exists() {
    let runbooks = read("docs/runbooks.md");
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|title| title.trim().to_lowercase())
        .collect();
    let alerts = alerts();
    let names: BTreeSet<&str> = alerts
        .iter()
        .map(|(_, rule)| rule["alert"].as_str().unwrap())
        .collect();
    for required in [
        "HighErrorRate",
        "PaymentLatencyHigh",
        "TargetDown",
        "AgentFallingBehind",
        "AgentLosingBytes",
        "CollectorWalBacklogGrowing",
        "HostDiskFillingUp",
    ] {
        assert!(names.contains(required), "no {required} alert");
    }
    for (file, rule) in &alerts {
        let name = rule["alert"].as_str().unwrap();
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|text| !text.is_empty()),
                "{file} {name}: no {key}"
            );
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url
            .strip_prefix("docs/runbooks.md#")
            .expect("a docs/runbooks.md link");
        assert!(
            anchors.contains(anchor),
            "{file} {name}: docs/runbooks.md has no #{anchor}"
        );
    }
    let high_error_rate = &alerts
        .iter()
        .find(|(_, r)| r["alert"] == "HighErrorRate")
        .unwrap()
        .1;
    assert_eq!(high_error_rate["for"], "5m");
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    if !Path::new("/usr/bin/promtool").exists() {
        println!("skipped: /usr/bin/promtool (Debian's prometheus package) is not installed");
        return;
    }
    let rules_dir = root().join("dashboards/rules");
    for (args, what) in [
        (
            vec!["check", "rules", "node.rules.yml", "shop.rules.yml"],
            "check",
        ),
        (
            vec![
                "test",
                "rules",
                "tests/node.rules.test.yml",
                "tests/shop.rules.test.yml",
            ],
            "test",
        ),
    ] {
        let output = Command::new("/usr/bin/promtool")
            .args(&args)
            .current_dir(&rules_dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {what} rules:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Every `expr` of every dashboard, with where it is.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "the overview, service, business and stack dashboards"
    );
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|error| panic!("{file}: {error}"));
        assert!(
            dashboard["uid"].is_string() && dashboard["title"].is_string(),
            "{file}"
        );
        assert!(
            dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36,
            "{file}"
        );
        for panel in dashboard["panels"].as_array().unwrap() {
            let kind = panel["type"].as_str().unwrap();
            assert!(
                ["timeseries", "stat", "table", "gauge", "row"].contains(&kind),
                "{file}: panel type {kind}"
            );
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap().to_owned();
                exprs.push((
                    format!("{file} \"{}\"", panel["title"].as_str().unwrap()),
                    expr,
                ));
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(query) = variable["definition"].as_str() {
                let inner = query
                    .strip_prefix("label_values(")
                    .and_then(|rest| rest.split(',').next())
                    .expect("a label_values(metric, label) variable");
                exprs.push((
                    format!("{file} variable {}", variable["name"]),
                    inner.to_owned(),
                ));
            }
        }
    }
    exprs
}

/// The metric names an expression selects.
fn metric_names(expr: &str) -> Result<Vec<String>, String> {
    use promql_parser::parser::Expr;
    struct Names(Vec<String>);
    impl promql_parser::util::ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let selector = match expr {
                Expr::VectorSelector(selector) => selector,
                Expr::MatrixSelector(matrix) => &matrix.vs,
                _ => return Ok(true),
            };
            match &selector.name {
                Some(name) => self.0.push(name.clone()),
                None => return Err("a selector without a metric name".into()),
            }
            Ok(true)
        }
    }
    // Grafana's template variable, as a value it takes.
    let expr = expr.replace("$service", "payment");
    let parsed = promql_parser::parser::parse(&expr)?;
    let mut names = Names(Vec::new());
    promql_parser::util::walk_expr(&mut names, &parsed)?;
    Ok(names.0)
}

/// Metric families in a text exposition (announced or with samples).
fn families(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            if kind == "counter" && !name.ends_with("_total") {
                names.insert(format!("{name}_total"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

#[test]
fn every_dashboard_expr_parses() {
    for (place, expr) in dashboard_exprs() {
        let names = metric_names(&expr).unwrap_or_else(|error| panic!("{place}: {expr}: {error}"));
        assert!(!names.is_empty(), "{place}: {expr} selects no metric");
    }
}

/// The demo stack really produces every metric the dashboards and rules
/// read: each name is a family on a service's, the agent's or the
/// collector's `/metrics`, a recording rule's output, or a series the
/// scraper itself writes. The same run checks the health paths compose
/// and Kubernetes probe.
#[tokio::test]
async fn dashboards_and_rules_read_metrics_the_live_stack_produces() {
    let stack = DemoStack::start().await;
    // One order, so every code path has run once.
    stack
        .place_order(&sightline_tests::unique_request_id("deploy"))
        .await;

    let mut produced: BTreeSet<String> =
        ["up", "scrape_duration_seconds", "scrape_samples_scraped"]
            .into_iter()
            .map(str::to_owned)
            .collect();
    let mut endpoints = vec![
        format!("http://127.0.0.1:{}/metrics", stack.ports.agent),
        stack.ui_url("/metrics"),
    ];
    for (role, _) in ROLE_PORTS {
        endpoints.push(stack.service_url(role, "/metrics"));
    }
    for url in &endpoints {
        let text = poll_until(&format!("GET {url}"), Duration::from_secs(30), || async {
            let response = stack
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            response.text().await.map(Some).map_err(|e| e.to_string())
        })
        .await;
        produced.extend(families(&text));
    }
    let mut rule_exprs = Vec::new();
    for file in ["shop.rules.yml", "node.rules.yml"] {
        let document = yaml_documents(&format!("dashboards/rules/{file}")).remove(0);
        for group in document["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if let Some(record) = rule["record"].as_str() {
                    produced.insert(record.to_owned());
                }
                let name = rule["record"].as_str().or(rule["alert"].as_str()).unwrap();
                rule_exprs.push((
                    format!("{file} {name}"),
                    rule["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    let cgroup_source = read("agent/src/hostmetrics/cgroup.rs");
    let log_metrics = ["failed_logins_total"]; // log_metrics of the collector configs
    let mut missing = Vec::new();
    for (place, expr) in dashboard_exprs().into_iter().chain(rule_exprs) {
        for name in metric_names(&expr).unwrap() {
            // container_* families appear only on a node with containers
            // (the demo's services are plain processes): those must at
            // least be names the agent's cgroup reader writes.
            let container_family = name.starts_with("container_") && cgroup_source.contains(&name);
            if !produced.contains(&name)
                && !log_metrics.contains(&name.as_str())
                && !container_family
            {
                missing.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not produced by the stack:\n{}",
        missing.join("\n")
    );

    // The health paths of compose and Kubernetes answer on the real processes.
    let health = [
        (stack.ui_url("/-/healthy"), "collector /-/healthy"),
        (stack.ui_url("/-/ready"), "collector /-/ready"),
        (
            format!("http://127.0.0.1:{}/-/healthy", stack.ports.agent),
            "agent /-/healthy",
        ),
        (
            format!("http://127.0.0.1:{}/-/ready", stack.ports.agent),
            "agent /-/ready",
        ),
        (
            stack.service_url("payment", "/health/live"),
            "service /health/live",
        ),
        (
            stack.service_url("payment", "/health/ready"),
            "service /health/ready",
        ),
    ];
    for (url, what) in health {
        let status = stack.http.get(&url).send().await.unwrap().status();
        assert!(status.is_success(), "{what}: {status}");
    }
}

/// Cluster mode as shipped: the Compose profile (`deploy/compose/cluster.yml`
/// over `docker-compose.yml`) and the Kubernetes overlay
/// (`deploy/kubernetes/cluster/`) give the collector flags and variables it
/// accepts, a cluster config it parses, and engines that exist where the
/// config names them.
#[test]
fn cluster_mode_is_configured_as_the_collector_reads_it() {
    let help = help_of("sightline-collector");
    // Secrets' values are hidden: `[env: NAME]`.
    let accepts_env = |variable: &str| {
        help.contains(&format!("[env: {variable}=")) || help.contains(&format!("[env: {variable}]"))
    };

    // Compose.
    let compose: Value = serde_norway::from_str(&read("deploy/compose/cluster.yml")).unwrap();
    let services = compose["services"].as_object().expect("services");
    let config: sightline_cluster::ClusterConfig =
        serde_norway::from_str(&read("deploy/compose/sightline-cluster.yml"))
            .expect("deploy/compose/sightline-cluster.yml is a cluster config");
    let nats: Vec<&String> = services
        .keys()
        .filter(|name| name.starts_with("nats-"))
        .collect();
    assert_eq!(
        nats.len(),
        config.nats.replicas,
        "one NATS server per stream replica"
    );
    for server in &config.nats.servers {
        let host = server
            .trim_start_matches("nats://")
            .split(':')
            .next()
            .unwrap();
        assert!(services.contains_key(host), "no compose service {host}");
        let command = strings(&services[host]["command"]);
        assert!(command.contains(&format!("--server_name={host}")));
        let routes = flag(&command, "--routes").expect("--routes");
        for peer in &nats {
            assert!(
                routes.contains(&format!("nats://{peer}:6222")),
                "{host} does not route to {peer}"
            );
        }
    }
    let endpoint = config
        .object_store
        .endpoint
        .as_deref()
        .expect("an S3 endpoint");
    let s3_host = endpoint
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap();
    assert!(
        services.contains_key(s3_host),
        "no compose service {s3_host}"
    );
    let identities: Value =
        serde_json::from_str(&read("deploy/compose/seaweedfs-s3.json")).unwrap();
    let mut collectors = 0;
    for (name, service) in services {
        let is_collector = name == "collector" || name.starts_with("collector-");
        assert_host_mounts_exist(name, service);
        if !is_collector {
            continue;
        }
        collectors += 1;
        let env = service["environment"]
            .as_object()
            .expect("the cluster variables");
        for variable in env.keys() {
            assert!(
                accepts_env(variable),
                "{name}: the collector reads no {variable}"
            );
        }
        let postgres = env["SIGHTLINE_CLUSTER_POSTGRES_URL"].as_str().unwrap();
        let pg_host = postgres
            .rsplit('@')
            .next()
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        assert!(
            services.contains_key(pg_host),
            "{name}: no compose service {pg_host}"
        );
        assert_eq!(
            identities["identities"][0]["credentials"][0]["accessKey"],
            env["SIGHTLINE_CLUSTER_S3_ACCESS_KEY_ID"]
        );
        let file = env["SIGHTLINE_CLUSTER_CONFIG"].as_str().unwrap();
        assert!(
            strings(&service["volumes"])
                .contains(&format!("./deploy/compose/sightline-cluster.yml:{file}:ro")),
            "{name}: the cluster config is not mounted at {file}"
        );
        for arg in strings(&service["command"]).iter().skip(1) {
            let flag_name = arg.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag_name} ")),
                "{name}: no flag {flag_name}"
            );
        }
    }
    assert_eq!(collectors, 3, "three collectors");

    // Kubernetes.
    let kustomization = read("deploy/kubernetes/cluster/kustomization.yaml");
    for resource in [
        "- ../",
        "- cluster-config.yaml",
        "path: collector-cluster-patch.yaml",
    ] {
        assert!(
            kustomization.contains(resource),
            "the overlay lacks {resource}"
        );
    }
    let config_map: Value =
        serde_norway::from_str(&read("deploy/kubernetes/cluster/cluster-config.yaml")).unwrap();
    let _: sightline_cluster::ClusterConfig =
        serde_norway::from_str(config_map["data"]["cluster.yml"].as_str().unwrap())
            .expect("the ConfigMap's cluster.yml is a cluster config");
    let patch: Value = serde_norway::from_str(&read(
        "deploy/kubernetes/cluster/collector-cluster-patch.yaml",
    ))
    .unwrap();
    let base = kubernetes_objects();
    assert!(
        base.iter()
            .any(|(_, object)| object["kind"] == patch["kind"]
                && object["metadata"]["name"] == patch["metadata"]["name"]),
        "the patch's target is not in the base"
    );
    assert_eq!(patch["spec"]["replicas"], 3);
    let spec = &patch["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let env = container["env"].as_array().unwrap();
    // A variable only other values refer to (`$(POD_IP):7070`) is
    // Kubernetes' to expand, not the collector's to read.
    let referenced = |name: &str| {
        env.iter().any(|variable| {
            variable["value"]
                .as_str()
                .is_some_and(|value| value.contains(&format!("$({name})")))
        })
    };
    for variable in env {
        let name = variable["name"].as_str().unwrap();
        assert!(
            accepts_env(name) || referenced(name),
            "the collector reads no {name}"
        );
    }
    assert_eq!(
        spec["volumes"][0]["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let config_env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|variable| variable["name"] == "SIGHTLINE_CLUSTER_CONFIG")
        .expect("SIGHTLINE_CLUSTER_CONFIG");
    assert_eq!(
        config_env["value"].as_str().unwrap(),
        format!("{mount}/cluster.yml")
    );
    kubernetes_validate(&[root().join("deploy/kubernetes/cluster/cluster-config.yaml")]);
}
