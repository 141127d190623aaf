//! Alerts from the collector's rules reach Debian's real Alertmanager (API
//! v2) and a plain webhook, with labels, templated annotations, the links
//! into the UI and a generator URL.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sightline_tests::{CollectorProcess, Process, free_port, poll_until, wait_healthy};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default()
}

pub(crate) async fn start_alertmanager(dir: &Path) -> (Process, u16) {
    start_alertmanager_with(
        dir,
        "route: { receiver: 'null' }\nreceivers: [{ name: 'null' }]\n",
    )
    .await
}

/// Debian's Alertmanager with the config `text`, on a free port.
pub(crate) async fn start_alertmanager_with(dir: &Path, text: &str) -> (Process, u16) {
    assert!(
        Path::new(ALERTMANAGER).exists(),
        "{ALERTMANAGER} is missing: apt-get install prometheus-alertmanager"
    );
    let config = dir.join("alertmanager.yml");
    std::fs::write(&config, text).expect("write the Alertmanager config");
    let port = free_port();
    let process = Process::spawn(
        "alertmanager",
        Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address="),
    );
    wait_healthy(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/-/ready"),
        Duration::from_secs(60),
    )
    .await;
    (process, port)
}

/// Writes the collector's config and rules into `dir`; returns the config path.
pub(crate) fn write_config(dir: &Path, alerting: &str, rules: &str) -> String {
    std::fs::write(dir.join("rules.yml"), rules).expect("write rules");
    let config = dir.join("sightline.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ evaluation_interval: 1s, external_labels: {{ cluster: e2e }} }}\nrule_files: [rules.yml]\n{alerting}"
        ),
    )
    .expect("write config");
    config.display().to_string()
}

/// One failing span of `service`, over OTLP/HTTP JSON.
async fn send_failing_span(collector: &CollectorProcess, service: &str) {
    let now = unix_nanos();
    let body = json!({
        "resourceSpans": [{
            "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": service } }] },
            "scopeSpans": [{
                "spans": [{
                    "traceId": TRACE_ID,
                    "spanId": "051581bf3cb55c13",
                    "name": "POST /charge",
                    "kind": 2,
                    "startTimeUnixNano": (now - 300_000_000).to_string(),
                    "endTimeUnixNano": now.to_string(),
                    "status": { "code": 2, "message": "card processor timed out" }
                }]
            }]
        }]
    });
    let response = reqwest::Client::new()
        .post(collector.otlp_http_url("/v1/traces"))
        .json(&body)
        .send()
        .await
        .expect("send the span");
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

#[tokio::test]
async fn firing_alerts_reach_alertmanager_with_links_to_logs_and_traces() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_alertmanager, am_port) = start_alertmanager(dir.path()).await;
    let config = write_config(
        dir.path(),
        &format!(
            "alerting:\n  alertmanagers: [{{ static_configs: [{{ targets: ['127.0.0.1:{am_port}'] }}] }}]\n"
        ),
        r#"
groups:
  - name: payments
    interval: 1s
    rules:
      - alert: PaymentErrors
        expr: label_replace(vector(0.25), "service", "payment", "", "")
        for: 2s
        labels: { severity: page }
        annotations:
          summary: "{{ $labels.service }} fails {{ $value | humanizePercentage }} of charges"
"#,
    );
    let data = dir.path().join("collector");
    // Resent every second, so the links catch the span once it is indexed.
    let collector = CollectorProcess::start_with_env(
        &data,
        &["--config", &config],
        &[("SIGHTLINE_ALERT_RESEND_DELAY", "1s")],
    )
    .await;
    send_failing_span(&collector, "payment").await;

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{am_port}/api/v2/alerts");
    let alert = poll_until(
        "Alertmanager to hold PaymentErrors with a trace link",
        Duration::from_secs(90),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let alerts = sightline_tests::get_json(&http, &url).await?;
                let found = alerts.as_array().and_then(|alerts| {
                    alerts
                        .iter()
                        .find(|alert| alert["labels"]["alertname"] == "PaymentErrors")
                        .cloned()
                });
                match found {
                    Some(alert) if alert["annotations"]["sightline_trace_ids"] == TRACE_ID => {
                        Ok(Some(alert))
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    let labels = &alert["labels"];
    assert_eq!(labels["service"], "payment");
    assert_eq!(labels["severity"], "page");
    assert_eq!(labels["cluster"], "e2e", "external labels are added");
    assert_eq!(alert["status"]["state"], "active");
    let annotations = &alert["annotations"];
    assert_eq!(annotations["summary"], "payment fails 25% of charges");
    let base = collector.url("");
    let logs_url = annotations["sightline_logs_url"]
        .as_str()
        .unwrap_or_default();
    assert!(
        logs_url.starts_with(&format!("{base}/#/logs?q=service%3Apayment&from=")),
        "{logs_url}"
    );
    let traces_url = annotations["sightline_traces_url"]
        .as_str()
        .unwrap_or_default();
    assert!(
        traces_url.starts_with(&format!("{base}/#/traces?service=payment&errors=1")),
        "{traces_url}"
    );
    let generator = alert["generatorURL"].as_str().unwrap_or_default();
    assert!(
        generator.starts_with(&format!(
            "{base}/#/alerts?expr=label_replace%28vector%280.25%29"
        )),
        "{generator}"
    );

    // The collector's own metrics count the alert and its delivery.
    let metrics = http
        .get(collector.url("/metrics"))
        .send()
        .await
        .expect("scrape the collector")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("sightline_rules_alerts{state=\"firing\"} 1"),
        "{metrics}"
    );
    let sent = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sightline_notifications_sent_total "))
        .and_then(|value| value.trim().parse::<u64>().ok());
    assert!(sent.is_some_and(|sent| sent >= 1), "{metrics}");

    // The collector's own alert API shows the same alert firing.
    let api: Value = http
        .get(collector.url("/api/v1/alerts"))
        .send()
        .await
        .expect("query /api/v1/alerts")
        .json()
        .await
        .expect("JSON");
    let text = api.to_string();
    assert!(
        text.contains("PaymentErrors") && text.contains("firing"),
        "{text}"
    );
}

#[tokio::test]
async fn a_webhook_hears_an_alert_fire_and_resolve() {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the webhook receiver");
    let hook_port = listener.local_addr().expect("address").port();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move |axum::Json(body): axum::Json<Value>| async move {
                received.lock().expect("lock").push(body);
                "ok"
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("temp dir");
    // Matches until a wall-clock time a few seconds ahead, then resolves.
    let until = (unix_nanos() / 1_000_000_000) as u64 + 6;
    let config = write_config(
        dir.path(),
        &format!("webhooks: [{{ url: 'http://127.0.0.1:{hook_port}/hook' }}]\n"),
        &format!(
            r#"
groups:
  - name: blip
    interval: 1s
    rules:
      - alert: Blip
        expr: vector(1) and on() (vector(time()) < {until})
        labels: {{ service: checkout }}
        annotations: {{ summary: "checkout blip" }}
"#
        ),
    );
    let _collector =
        CollectorProcess::start(&dir.path().join("collector"), &["--config", &config]).await;

    let payloads = poll_until(
        "the webhook to hear Blip fire and resolve",
        Duration::from_secs(90),
        || {
            let received = received.clone();
            async move {
                let payloads = received.lock().expect("lock").clone();
                let resolved = payloads.iter().any(|p| p["status"] == "resolved");
                if resolved {
                    Ok(Some(payloads))
                } else {
                    Err(format!("{payloads:?}"))
                }
            }
        },
    )
    .await;
    let firing = payloads
        .iter()
        .find(|payload| payload["status"] == "firing")
        .expect("a firing notification before the resolved one");
    assert_eq!(firing["version"], "4");
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "Blip");
    assert_eq!(alert["labels"]["cluster"], "e2e");
    assert_eq!(alert["annotations"]["summary"], "checkout blip");
    assert!(
        alert["annotations"]["sightline_logs_url"]
            .as_str()
            .is_some_and(|url| url.contains("q=service%3Acheckout")),
        "{alert}"
    );
    let resolved = payloads
        .iter()
        .find(|payload| payload["status"] == "resolved")
        .expect("resolved");
    let alert = &resolved["alerts"][0];
    assert_eq!(alert["status"], "resolved");
    assert_ne!(alert["endsAt"], "0001-01-01T00:00:00Z");
    server.abort();
}

/// "Routing as the material describes it": the Alertmanager config shipped
/// for Compose (deploy/compose/alertmanager.yml), in a real Alertmanager,
/// with the demo's notification service as both webhook receivers. A
/// paging alert reaches `pager`, a ticket of another service `chat`, and a
/// ticket of the service that pages is inhibited, delivered to no one.
#[tokio::test]
async fn alerts_are_routed_by_severity_and_inhibited_as_shipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notification_port = free_port();
    let _notification = Process::spawn(
        "notification",
        Command::new(sightline_tests::binary("shop-service"))
            .args(["--service", "notification"])
            .args(["--listen", &format!("127.0.0.1:{notification_port}")])
            .args(["--otlp-endpoint", "http://127.0.0.1:9"])
            .stdout(std::process::Stdio::null()),
    );
    let inbox = format!("http://127.0.0.1:{notification_port}/alerts");
    wait_healthy(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{notification_port}/health/ready"),
        Duration::from_secs(60),
    )
    .await;
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/compose/alertmanager.yml"),
    )
    .expect("the shipped Alertmanager config");
    assert!(shipped.contains("http://notification:8005/alerts/"));
    let config = shipped.replace(
        "http://notification:8005",
        &format!("http://127.0.0.1:{notification_port}"),
    );
    let (_alertmanager, am_port) = start_alertmanager_with(dir.path(), &config).await;
    let collector_config = write_config(
        dir.path(),
        &format!(
            "alerting:\n  alertmanagers: [{{ static_configs: [{{ targets: ['127.0.0.1:{am_port}'] }}] }}]\n"
        ),
        r#"
groups:
  - name: routing
    interval: 1s
    rules:
      - alert: PaymentDown
        expr: vector(1)
        labels: { severity: page, service: payment }
      - alert: PaymentSlow
        expr: vector(1)
        labels: { severity: ticket, service: payment }
      - alert: CheckoutSlow
        expr: vector(1)
        labels: { severity: ticket, service: checkout }
"#,
    );
    let _collector = CollectorProcess::start(
        &dir.path().join("collector"),
        &["--config", &collector_config],
    )
    .await;

    // The shipped group_wait is 10 s: the first notifications come after it.
    let http = reqwest::Client::new();
    let received = poll_until("pager and chat notified", Duration::from_secs(90), || {
        let (http, inbox) = (http.clone(), inbox.clone());
        async move {
            let inbox = sightline_tests::get_json(&http, &inbox).await?;
            let got: Vec<(String, String)> = inbox["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|alert| {
                    (
                        alert["receiver"].as_str().unwrap_or_default().to_string(),
                        alert["labels"]["alertname"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            let has =
                |receiver: &str, name: &str| got.iter().any(|(r, n)| r == receiver && n == name);
            if has("pager", "PaymentDown") && has("chat", "CheckoutSlow") {
                Ok(Some(got))
            } else {
                Err(format!("{got:?}"))
            }
        }
    })
    .await;
    assert!(
        received
            .iter()
            .all(|(receiver, name)| (receiver == "pager") == (name == "PaymentDown")),
        "each alert at its receiver only: {received:?}"
    );
    assert!(
        !received.iter().any(|(_, name)| name == "PaymentSlow"),
        "the ticket of a service that pages is inhibited: {received:?}"
    );
    // Alertmanager says why.
    let alerts: Value = http
        .get(format!("http://127.0.0.1:{am_port}/api/v2/alerts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slow = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|alert| alert["labels"]["alertname"] == "PaymentSlow")
        .expect("PaymentSlow in Alertmanager");
    assert_eq!(slow["status"]["state"], "suppressed", "{slow}");
    assert!(
        !slow["status"]["inhibitedBy"].as_array().unwrap().is_empty(),
        "{slow}"
    );
    assert_eq!(slow["receivers"][0]["name"], "chat", "{slow}");
}
