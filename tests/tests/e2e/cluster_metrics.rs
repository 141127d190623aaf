//! Metrics across a cluster (issue 21) on real NATS, PostgreSQL and S3:
//! Debian's Prometheus remote-writes what it scrapes into one node of a
//! 3-node cluster, and a query node that owns no partition answers the
//! differential test's PromQL as Prometheus does, from the blocks the
//! owners published to S3 and their heads; and every sample a node
//! acknowledged stays queryable when the owner of its partition is
//! SIGKILLed while remote-write goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sightline_cluster::Metastore;
use sightline_cluster::partition::is_metrics;
use sightline_tests::engines::{ClusterEngines as Engines, ClusterSettings};
use sightline_tests::{CollectorProcess, Process, free_port, poll_until, wait_healthy};

use crate::cluster::metric;
use crate::prometheus_diff::{PROMETHEUS, compare_with_prometheus, scrape_config, serve_target};

/// Blocks are cut this often, so the compared windows span several blocks
/// in S3 and the owners' heads.
fn settings(extra: &str) -> ClusterSettings {
    ClusterSettings {
        extra: format!("metrics_block_interval: 8s\n{extra}"),
        ..ClusterSettings::default()
    }
}

/// Every live (listed, not retired) block.
async fn live_blocks(metastore: &Metastore) -> Result<Vec<sightline_cluster::BlockRow>, String> {
    let (blocks, _) = metastore
        .metric_snapshot(i64::MIN, i64::MAX)
        .await
        .map_err(|error| error.to_string())?;
    Ok(blocks)
}

async fn blocks_published(engines: &Engines) -> u64 {
    let metastore = Metastore::connect(&engines.postgres.url())
        .await
        .expect("the metastore");
    let blocks = live_blocks(&metastore).await.expect("the block list");
    blocks.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_node_answers_promql_as_prometheus_from_blocks_and_heads() {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: apt-get install -y prometheus (scripts/test does it)"
    );
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    let owners = engines.start_collectors(3, dir.path(), &settings("")).await;
    let query_node = engines
        .start_collector("q", dir.path(), &settings("owns_partitions: false\n"))
        .await;

    // Prometheus scrapes the target and remote-writes everything to c0.
    let target_port = serve_target().await;
    let config = format!(
        "{}remote_write:\n  - url: {}\n    queue_config:\n      batch_send_deadline: 1s\n",
        scrape_config(target_port),
        owners[0].url("/api/v1/write")
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write the config");
    let prometheus_port = free_port();
    let _prometheus = Process::spawn(
        "prometheus",
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .arg("--log.level=warn"),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let prometheus_base = format!("http://127.0.0.1:{prometheus_port}");
    wait_healthy(
        &http,
        &format!("{prometheus_base}/-/ready"),
        Duration::from_secs(60),
    )
    .await;

    compare_with_prometheus(&http, &query_node.url(""), &prometheus_base).await;

    // What was compared came from S3 as well as from the heads, through a
    // node that owns nothing.
    assert!(
        blocks_published(&engines).await >= 3,
        "the owners published blocks to S3"
    );
    assert_eq!(
        metric(&query_node, "sightline_cluster_partitions_owned").await,
        0.0
    );
    let published: f64 = {
        let mut total = 0.0;
        for owner in &owners {
            total += metric(owner, "sightline_cluster_blocks_published_total").await;
        }
        total
    };
    assert!(published >= 3.0, "{published} blocks published");
    assert!(
        metric(&query_node, "sightline_cluster_block_downloads_total").await >= 1.0,
        "the query node read blocks from S3"
    );
    // By their indexes and the selected series' byte ranges (SeaweedFS
    // serves the range requests), never whole.
    assert!(
        metric(&query_node, "sightline_cluster_block_range_reads_total").await >= 1.0,
        "the query node read series' chunks by byte range"
    );
    // Metadata reached every node (Prometheus sends it with remote-write).
    let metadata: Value = http
        .get(query_node.url("/api/v1/metadata?metric=diff_temperature"))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("metadata JSON");
    assert_eq!(
        metadata["data"]["diff_temperature"][0]["type"], "gauge",
        "{metadata}"
    );
}

/// A remote-write body: one sample of `rw_sample{series=...}` each.
fn write_request(series: &[(String, i64, f64)]) -> Vec<u8> {
    let series: Vec<sightline_tests::WriteSeries> = series
        .iter()
        .map(|(name, timestamp_ms, value)| {
            (
                vec![
                    ("__name__".to_string(), "rw_sample".to_string()),
                    ("series".to_string(), name.clone()),
                ],
                vec![(*timestamp_ms, *value)],
            )
        })
        .collect();
    sightline_tests::remote_write_body(&series)
}

/// An instant query's `data` at `at_s`, or why it failed.
async fn instant(
    http: &reqwest::Client,
    node: &CollectorProcess,
    query: &str,
    at_s: f64,
) -> Result<Value, String> {
    let body: Value = http
        .post(node.url("/api/v1/query"))
        .form(&[("query", query.to_string()), ("time", format!("{at_s:.3}"))])
        .send()
        .await
        .map_err(|error| error.to_string())?
        .json()
        .await
        .map_err(|error| error.to_string())?;
    if body["status"] != "success" {
        return Err(format!("query failed: {body}"));
    }
    Ok(body["data"].clone())
}

/// Raw samples of `rw_sample{series}` (a range selector's matrix), by
/// series: the timestamps (ms) the cluster holds.
async fn stored(
    http: &reqwest::Client,
    node: &CollectorProcess,
    at_s: f64,
) -> Result<BTreeMap<String, BTreeSet<i64>>, String> {
    let data = instant(http, node, "rw_sample[30m]", at_s).await?;
    let mut found = BTreeMap::new();
    for series in data["result"].as_array().ok_or("no result")? {
        let name = series["metric"]["series"].as_str().unwrap_or_default();
        let times: BTreeSet<i64> = series["values"]
            .as_array()
            .ok_or("no values")?
            .iter()
            .map(|point| (point[0].as_f64().unwrap_or_default() * 1000.0).round() as i64)
            .collect();
        found.insert(name.to_string(), times);
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_acknowledged_while_their_owner_is_killed_stay_queryable() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    let mut nodes = engines.start_collectors(3, dir.path(), &settings("")).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let metastore = Metastore::connect(&engines.postgres.url())
        .await
        .expect("the metastore");
    // Ownership settles before the writes start.
    poll_until(
        "every metrics partition to have an owner",
        Duration::from_secs(60),
        || async {
            let partitions = metastore.partitions().await.map_err(|e| e.to_string())?;
            let owned = partitions
                .iter()
                .filter(|(partition, owner, _, _)| is_metrics(*partition) && owner.is_some())
                .count();
            Ok((owned == 16).then_some(()))
        },
    )
    .await;
    let victim = 2;
    let base_ms = (crate::cluster_queries::now_nanos() / 1_000_000) - 60_000;
    let series: Vec<String> = (0..24).map(|n| format!("s{n}")).collect();
    let mut acknowledged: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    let mut refused = 0;
    for round in 0..60i64 {
        if round == 20 {
            let partitions = metastore.partitions().await.expect("partitions");
            let owned = partitions
                .iter()
                .filter(|(partition, owner, _, _)| {
                    is_metrics(*partition) && owner.as_deref() == Some("c2")
                })
                .count();
            assert!(owned > 0, "c2 owns no metrics partition: {partitions:?}");
            nodes[victim].kill9();
        }
        let timestamp_ms = base_ms + round * 500;
        let samples: Vec<(String, i64, f64)> = series
            .iter()
            .map(|name| (name.clone(), timestamp_ms, round as f64))
            .collect();
        // The writer alternates between the two nodes that stay.
        let node = &nodes[(round % 2) as usize];
        let response = http
            .post(node.url("/api/v1/write"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0")
            .body(write_request(&samples))
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => {
                for name in &series {
                    acknowledged
                        .entry(name.clone())
                        .or_default()
                        .insert(timestamp_ms);
                }
            }
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acknowledged_count: usize = acknowledged.values().map(BTreeSet::len).sum();
    assert!(
        acknowledged_count >= 24 * 50,
        "{acknowledged_count} samples acknowledged, {refused} writes refused"
    );
    let at_s = (base_ms + 60 * 500) as f64 / 1000.0 + 1.0;
    let missing = poll_until(
        "every acknowledged sample to be queryable after the owner's SIGKILL",
        Duration::from_secs(90),
        || async {
            let found = match stored(&http, &nodes[0], at_s).await {
                Ok(found) => found,
                // Until the dead node's partitions are taken over.
                Err(_) => return Ok(None),
            };
            let missing: usize = acknowledged
                .iter()
                .map(|(name, times)| {
                    let held = found.get(name);
                    times
                        .iter()
                        .filter(|time| !held.is_some_and(|held| held.contains(time)))
                        .count()
                })
                .sum();
            Ok((missing == 0).then_some(missing))
        },
    )
    .await;
    assert_eq!(missing, 0);
    // The dead node owned metrics partitions, now the others'.
    let partitions = metastore.partitions().await.expect("partitions");
    assert!(
        partitions
            .iter()
            .filter(|(partition, _, _, _)| is_metrics(*partition))
            .all(|(_, owner, _, _)| owner.as_deref() != Some("c2")),
        "{partitions:?}"
    );
    // The same answer from the other survivor.
    let other = stored(&http, &nodes[1], at_s)
        .await
        .expect("the other node");
    let held: usize = other
        .iter()
        .map(|(name, times)| {
            acknowledged
                .get(name)
                .map_or(0, |acked| acked.intersection(times).count())
        })
        .sum();
    assert_eq!(held, acknowledged_count);
}

/// Targets that count the scrapes they serve.
async fn counting_targets(
    count: usize,
) -> Vec<(u16, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut targets = Vec::new();
    for n in 0..count {
        let scrapes = Arc::new(AtomicU64::new(0));
        let counter = scrapes.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a target");
        let port = listener.local_addr().expect("target address").port();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let scrapes = counter.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    format!(
                        "# TYPE scrapes_total counter\nscrapes_total{{target=\"t{n}\"}} {scrapes}\n"
                    )
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        targets.push((port, scrapes));
    }
    targets
}

/// Per node, the instances its `/api/v1/targets` reports up.
async fn scraping(http: &reqwest::Client, nodes: &[&CollectorProcess]) -> Vec<BTreeSet<String>> {
    let mut up = Vec::new();
    for node in nodes {
        let body: Value = match http.get(node.url("/api/v1/targets")).send().await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let instances = body["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .filter(|target| {
                        target["labels"]["job"] == "counted" && target["health"] == "up"
                    })
                    .filter_map(|target| target["labels"]["instance"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        up.push(instances);
    }
    up
}

/// Scrapes each target served over `window`.
async fn scrapes_over(
    targets: &[(u16, std::sync::Arc<std::sync::atomic::AtomicU64>)],
    window: Duration,
) -> Vec<u64> {
    use std::sync::atomic::Ordering;
    let before: Vec<u64> = targets
        .iter()
        .map(|(_, n)| n.load(Ordering::Relaxed))
        .collect();
    tokio::time::sleep(window).await;
    targets
        .iter()
        .zip(before)
        .map(|((_, n), before)| n.load(Ordering::Relaxed) - before)
        .collect()
}

/// Waits until every leased id is held by the node rendezvous hashing
/// over `nodes` gives it (ownership settled after a join or a leave).
async fn wait_settled(metastore: &Metastore, nodes: &[&str]) {
    let names: Vec<String> = nodes.iter().map(|node| node.to_string()).collect();
    poll_until("ownership to settle", Duration::from_secs(60), || async {
        let partitions = metastore.partitions().await.map_err(|e| e.to_string())?;
        let wrong = partitions
            .iter()
            .filter(|(partition, owner, _, _)| {
                owner.as_deref() != sightline_cluster::partition::owner(*partition, &names)
            })
            .count();
        Ok((wrong == 0).then_some(()))
    })
    .await;
}

/// Waits until the live nodes scrape every target once between them, the
/// same way for 3 s on end (a node that handed a target off reports it up
/// until its next tick, so a split seen once may be one on its way to the
/// settled one), then checks that over 10 s each target was scraped about
/// once a second (10; a second scraper would double it, a loaded machine
/// skips a few ticks).
async fn assert_each_scraped_once(
    http: &reqwest::Client,
    nodes: &[&CollectorProcess],
    targets: &[(u16, std::sync::Arc<std::sync::atomic::AtomicU64>)],
    phase: &str,
) -> Vec<BTreeSet<String>> {
    let seen_since = std::sync::Mutex::new(None::<(std::time::Instant, Vec<BTreeSet<String>>)>);
    let split = poll_until(
        &format!("{phase}: every target up on exactly one node, for 3 s"),
        Duration::from_secs(60),
        || async {
            let up = scraping(http, nodes).await;
            let mut all: Vec<&String> = up.iter().flatten().collect();
            let total = all.len();
            all.sort();
            all.dedup();
            let mut since = seen_since.lock().unwrap_or_else(|e| e.into_inner());
            if total != targets.len() || all.len() != targets.len() {
                *since = None;
                return Err(format!("targets up per node {up:?}"));
            }
            match &*since {
                Some((at, seen)) if *seen == up => {
                    Ok((at.elapsed() >= Duration::from_secs(3)).then_some(up))
                }
                _ => {
                    *since = Some((std::time::Instant::now(), up));
                    Ok(None)
                }
            }
        },
    )
    .await;
    let counts = scrapes_over(targets, Duration::from_secs(10)).await;
    assert!(
        counts.iter().all(|count| (4..=15).contains(count)),
        "{phase}: scrapes per target over 10 s at a 1 s interval: {counts:?} (split {split:?})"
    );
    split
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_target_is_scraped_by_one_node_as_nodes_leave_and_join() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    let targets = counting_targets(8).await;
    let list: Vec<String> = targets
        .iter()
        .map(|(port, _)| format!("'127.0.0.1:{port}'"))
        .collect();
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(
        &config_path,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: counted\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ),
    )
    .expect("write the config");
    let settings = ClusterSettings {
        args: vec![
            "--config".into(),
            config_path.to_string_lossy().into_owned(),
        ],
        ..settings("")
    };
    let mut nodes = engines.start_collectors(3, dir.path(), &settings).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let metastore = Metastore::connect(&engines.postgres.url())
        .await
        .expect("the metastore");

    wait_settled(&metastore, &["c0", "c1", "c2"]).await;
    let split = assert_each_scraped_once(
        &http,
        &[&nodes[0], &nodes[1], &nodes[2]],
        &targets,
        "three nodes",
    )
    .await;
    assert!(
        split.iter().filter(|up| !up.is_empty()).count() >= 2,
        "the targets are spread over the nodes: {split:?}"
    );

    // c2 leaves (SIGKILL): its targets move to the others once its leases
    // expire.
    nodes[2].kill9();
    wait_settled(&metastore, &["c0", "c1"]).await;
    assert_each_scraped_once(&http, &[&nodes[0], &nodes[1]], &targets, "c2 gone").await;

    // c2 joins again: it wins its slots back, handed off by the others, so
    // the targets are split as they were (c2's share may be none of the
    // eight: the split is rendezvous hashing's).
    nodes[2] = engines.start_collector("c2", dir.path(), &settings).await;
    wait_settled(&metastore, &["c0", "c1", "c2"]).await;
    poll_until(
        "the first split to come back",
        Duration::from_secs(60),
        || async {
            let up = scraping(&http, &[&nodes[0], &nodes[1], &nodes[2]]).await;
            if up == split {
                Ok(Some(()))
            } else {
                Err(format!("targets up per node {up:?}, first {split:?}"))
            }
        },
    )
    .await;
    let back = assert_each_scraped_once(
        &http,
        &[&nodes[0], &nodes[1], &nodes[2]],
        &targets,
        "c2 back",
    )
    .await;
    assert_eq!(back, split);
}

/// RFC 3339 (as Alertmanager and the rules API write it) to Unix seconds.
fn unix_seconds(text: &str) -> f64 {
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{text:?}: {error}"));
    parsed.unix_timestamp_nanos() as f64 / 1e9
}

/// The alerts node `node` evaluates, by name: (state, activeAt in seconds).
/// The alerts `node` evaluates itself (by its own rule engine's count on
/// `/metrics`), as its `/api/v1/alerts` reports them.
async fn evaluated(
    http: &reqwest::Client,
    node: &CollectorProcess,
) -> BTreeMap<String, (String, f64)> {
    let own = metric(node, "sightline_rules_alerts{state=\"firing\"}").await
        + metric(node, "sightline_rules_alerts{state=\"pending\"}").await;
    if own == 0.0 {
        return BTreeMap::new();
    }
    reported(http, node).await
}

/// The alerts `node`'s `/api/v1/alerts` reports: the cluster's, whichever
/// node evaluates them.
async fn reported(
    http: &reqwest::Client,
    node: &CollectorProcess,
) -> BTreeMap<String, (String, f64)> {
    let Ok(body) = sightline_tests::get_json(http, &node.url("/api/v1/alerts")).await else {
        return BTreeMap::new();
    };
    body["data"]["alerts"]
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .filter_map(|alert| {
                    Some((
                        alert["labels"]["alertname"].as_str()?.to_string(),
                        (
                            alert["state"].as_str()?.to_string(),
                            unix_seconds(alert["activeAt"].as_str()?),
                        ),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_group_handed_over_by_a_sigkill_keeps_its_alerts_timing() {
    const PENDING_FOR_S: f64 = 40.0;
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    let (_alertmanager, am_port) = crate::alertmanager::start_alertmanager(dir.path()).await;
    let config = crate::alertmanager::write_config(
        dir.path(),
        &format!(
            "alerting:\n  alertmanagers: [{{ static_configs: [{{ targets: ['127.0.0.1:{am_port}'] }}] }}]\n"
        ),
        &format!(
            r#"
groups:
  - name: handover
    interval: 1s
    rules:
      - alert: AlreadyFiring
        expr: vector(1)
        for: 2s
      - alert: StillPending
        expr: vector(1)
        for: {PENDING_FOR_S}s
"#
        ),
    );
    // A lease of 5 s: the handover's gap is long enough that an alert
    // restored as after an outage would fire visibly late.
    let settings = ClusterSettings {
        lease_ttl: "5s",
        args: vec!["--config".into(), config],
        ..settings("")
    };
    let mut nodes = engines.start_collectors(3, dir.path(), &settings).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");

    // One node evaluates the group: it has both alerts, the others none.
    let (evaluator, pending_since) = poll_until(
        "one node evaluating the group, AlreadyFiring firing",
        Duration::from_secs(60),
        || async {
            let mut holders = Vec::new();
            for (n, node) in nodes.iter().enumerate() {
                let alerts = evaluated(&http, node).await;
                if !alerts.is_empty() {
                    holders.push((n, alerts));
                }
            }
            match holders.as_slice() {
                [(n, alerts)] => Ok(
                    match (alerts.get("AlreadyFiring"), alerts.get("StillPending")) {
                        (Some((firing, _)), Some((pending, since)))
                            if firing == "firing" && pending == "pending" =>
                        {
                            Some((*n, *since))
                        }
                        _ => None,
                    },
                ),
                [] => Ok(None),
                more => Err(format!("{} nodes evaluate the group", more.len())),
            }
        },
    )
    .await;
    // Every node's Prometheus API reports the group's alerts as its
    // evaluator does (Grafana may ask any of them).
    let expected = evaluated(&http, &nodes[evaluator]).await;
    for node in &nodes {
        assert_eq!(reported(&http, node).await, expected, "{}", node.url(""));
    }
    let am_alerts = format!("http://127.0.0.1:{am_port}/api/v2/alerts");
    let firing_since = poll_until(
        "Alertmanager to hold AlreadyFiring",
        Duration::from_secs(30),
        || async {
            let alerts = sightline_tests::get_json(&http, &am_alerts).await?;
            Ok(alerts.as_array().and_then(|alerts| {
                alerts
                    .iter()
                    .find(|alert| alert["labels"]["alertname"] == "AlreadyFiring")
                    .and_then(|alert| alert["startsAt"].as_str().map(unix_seconds))
            }))
        },
    )
    .await;

    // SIGKILL the evaluator 10 s into the 40 s wait.
    let kill_at = pending_since + 10.0;
    let wait = kill_at - crate::cluster_queries::now_nanos() as f64 / 1e9;
    tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0))).await;
    nodes[evaluator].kill9();
    let killed_at = crate::cluster_queries::now_nanos() as f64 / 1e9;

    // Alertmanager sees StillPending fire when it would have, and
    // AlreadyFiring active throughout, from the time it first fired.
    let firing_seen_throughout = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fired = poll_until(
        "Alertmanager to hold StillPending",
        Duration::from_secs(90),
        || {
            let (http, am_alerts) = (http.clone(), am_alerts.clone());
            let firing_seen = firing_seen_throughout.clone();
            async move {
                let alerts = sightline_tests::get_json(&http, &am_alerts).await?;
                let alerts = alerts.as_array().cloned().unwrap_or_default();
                let named = |name: &str| {
                    alerts
                        .iter()
                        .find(|alert| alert["labels"]["alertname"] == name)
                        .cloned()
                };
                match named("AlreadyFiring") {
                    Some(alert) if alert["status"]["state"] == "active" => {}
                    _ => firing_seen.store(false, std::sync::atomic::Ordering::Relaxed),
                }
                Ok(named("StillPending")
                    .and_then(|alert| alert["startsAt"].as_str().map(unix_seconds)))
            }
        },
    )
    .await;
    assert!(
        firing_seen_throughout.load(std::sync::atomic::Ordering::Relaxed),
        "AlreadyFiring left Alertmanager during the handover"
    );
    let due = pending_since + PENDING_FOR_S;
    assert!(
        (due - 0.5..=due + 2.5).contains(&fired),
        "StillPending fired at {fired:.1}, due at {due:.1} (pending since {pending_since:.1}, evaluator killed at {killed_at:.1})"
    );
    // One alert in Alertmanager, started when it first fired: the new
    // evaluator knows when it became active, not at which evaluation it
    // fired, so it says `active + for`, within an evaluation interval
    // before the first evaluator's (Alertmanager keeps the earlier).
    let alerts = sightline_tests::get_json(&http, &am_alerts)
        .await
        .expect("alerts");
    let already: Vec<&Value> = alerts
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .filter(|alert| alert["labels"]["alertname"] == "AlreadyFiring")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(already.len(), 1, "{alerts}");
    let starts_at = unix_seconds(already[0]["startsAt"].as_str().unwrap());
    assert!(
        (firing_since - 1.01..=firing_since).contains(&starts_at),
        "AlreadyFiring starts at {starts_at:.3} after the handover, {firing_since:.3} before"
    );
    // Another node evaluates the group now.
    let survivors: Vec<usize> = (0..3).filter(|n| *n != evaluator).collect();
    let mut holders = 0;
    for n in survivors {
        if !evaluated(&http, &nodes[n]).await.is_empty() {
            holders += 1;
        }
    }
    assert_eq!(holders, 1, "one survivor evaluates the group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_past_retention_are_retired_and_deleted_from_s3() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    // The collectors scrape themselves once an hour, not every 15 s: the
    // old sample's block must hold nothing newer, or it is not past
    // retention (its partition's other samples would share its block).
    let config = dir.path().join("hourly.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1h\n").expect("write the config");
    let settings = ClusterSettings {
        extra: "metrics_block_interval: 2s\nlifecycle_interval: 1s\nretired_grace: 1s\n".into(),
        args: vec![
            "--retention".into(),
            "2m".into(),
            "--config".into(),
            config.to_str().expect("utf-8 temp path").into(),
        ],
        ..ClusterSettings::default()
    };
    let nodes = engines.start_collectors(2, dir.path(), &settings).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let now_ms = crate::cluster_queries::now_nanos() / 1_000_000;
    // Samples of 10 minutes ago (past retention) and of now, sent apart so
    // they are cut into blocks of their own.
    let send = |timestamp_ms: i64| {
        let body = write_request(&[("old".to_string(), timestamp_ms, 1.0)]);
        let body = if timestamp_ms >= now_ms {
            write_request(&[("new".to_string(), timestamp_ms, 2.0)])
        } else {
            body
        };
        http.post(nodes[0].url("/api/v1/write"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .body(body)
            .send()
    };
    let response = send(now_ms - 10 * 60_000).await.expect("the old write");
    assert!(response.status().is_success(), "{}", response.status());
    let metastore = Metastore::connect(&engines.postgres.url())
        .await
        .expect("the metastore");
    // The old block is published, then retired and deleted.
    let old_block = poll_until(
        "the old sample's block to be published",
        Duration::from_secs(30),
        || async {
            let blocks = live_blocks(&metastore).await?;
            Ok(blocks
                .into_iter()
                .find(|block| block.max_ms < now_ms - 5 * 60_000))
        },
    )
    .await;
    let response = send(now_ms).await.expect("the new write");
    assert!(response.status().is_success(), "{}", response.status());
    poll_until(
        "the old block's row and objects to be gone",
        Duration::from_secs(60),
        || async {
            let blocks = live_blocks(&metastore).await?;
            let listed = blocks
                .iter()
                .any(|block| block.block_id == old_block.block_id);
            let object = engines
                .s3
                .get_object(&format!("blocks/{}/meta.json", old_block.block_id))
                .await?;
            Ok((!listed && object.is_none()).then_some(()))
        },
    )
    .await;
    // The new sample is still there, the old one is not.
    let found = poll_until(
        "the new sample to be queryable",
        Duration::from_secs(30),
        || async {
            let found = stored(&http, &nodes[1], now_ms as f64 / 1000.0 + 1.0)
                .await
                .ok();
            Ok(found.filter(|found| found.contains_key("new")))
        },
    )
    .await;
    assert!(!found.contains_key("old"), "{found:?}");
    let retired: f64 = metric(&nodes[0], "sightline_cluster_blocks_retired_total").await
        + metric(&nodes[1], "sightline_cluster_blocks_retired_total").await;
    assert!(retired >= 1.0);
}

/// One OTLP/HTTP JSON export: a delta point of counter `orders` for each
/// of `shards` (attribute `shard`), all with `value`, at `time_ns`.
fn delta_export(shards: usize, value: f64, time_ns: i64) -> Value {
    let points: Vec<Value> = (0..shards)
        .map(|shard| {
            serde_json::json!({
                "attributes": [{"key": "shard", "value": {"stringValue": format!("s{shard}")}}],
                "startTimeUnixNano": (time_ns - 1_000_000_000).to_string(),
                "timeUnixNano": time_ns.to_string(),
                "asDouble": value,
            })
        })
        .collect();
    serde_json::json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeMetrics": [{"metrics": [{
            "name": "orders",
            "sum": {"aggregationTemporality": 1, "isMonotonic": true, "dataPoints": points},
        }]}],
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_delta_sums_sent_to_different_collectors_accumulate_at_their_owner() {
    const SHARDS: usize = 8;
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    let settings = ClusterSettings {
        extra: "metrics_block_interval: 2s\n".into(),
        ..ClusterSettings::default()
    };
    let mut nodes = engines.start_collectors(3, dir.path(), &settings).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let metastore = Metastore::connect(&engines.postgres.url())
        .await
        .expect("the metastore");
    let base_ns = crate::cluster_queries::now_nanos() - 120_000_000_000;
    let send = |node: usize, round: i64, nodes: &[CollectorProcess]| {
        http.post(nodes[node].otlp_http_url("/v1/metrics"))
            .json(&delta_export(
                SHARDS,
                round as f64,
                base_ns + round * 1_000_000_000,
            ))
            .send()
    };
    // Rounds 1..=10 (each shard +round) over the three collectors in turn.
    for round in 1..=10i64 {
        let response = send((round % 3) as usize, round, &nodes)
            .await
            .expect("export");
        assert!(response.status().is_success(), "{}", response.status());
    }
    // Blocks hold them before an owner dies: the next owner starts each
    // series from its last total there.
    poll_until(
        "blocks with the first deltas",
        Duration::from_secs(30),
        || async {
            let blocks = live_blocks(&metastore).await?;
            Ok((blocks.len() >= 2).then_some(()))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    nodes[2].kill9();
    for round in 11..=20i64 {
        let response = send((round % 2) as usize, round, &nodes)
            .await
            .expect("export");
        assert!(response.status().is_success(), "{}", response.status());
    }
    // Every shard's total: 1 + 2 + ... + 20.
    let at_s = (base_ns + 21 * 1_000_000_000) as f64 / 1e9;
    let totals = poll_until(
        "every shard's total to be 210",
        Duration::from_secs(60),
        || async {
            let Ok(data) = instant(&http, &nodes[0], "orders_total", at_s).await else {
                return Ok(None);
            };
            let totals: BTreeMap<String, f64> = data["result"]
                .as_array()
                .map(|series| {
                    series
                        .iter()
                        .filter_map(|one| {
                            Some((
                                one["metric"]["shard"].as_str()?.to_string(),
                                one["value"][1].as_str()?.parse().ok()?,
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(
                (totals.len() == SHARDS && totals.values().all(|total| *total == 210.0))
                    .then_some(totals),
            )
        },
    )
    .await;
    assert_eq!(totals.len(), SHARDS);
    // The samples in between are the running totals, in order.
    let data = instant(&http, &nodes[1], "orders_total{shard=\"s0\"}[1h]", at_s)
        .await
        .expect("the raw samples");
    let values: Vec<f64> = data["result"][0]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|point| point[1].as_str().unwrap().parse().unwrap())
        .collect();
    let expected: Vec<f64> = (1..=20).map(|n: i64| (n * (n + 1) / 2) as f64).collect();
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_blocks_are_compacted_into_one_that_answers_the_same() {
    const ROUNDS: i64 = 6;
    const SERIES: usize = 20;
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().expect("temporary dir");
    let settings = ClusterSettings {
        extra: "metrics_block_interval: 2s\nlifecycle_interval: 1s\nmerge_after: 1s\nretired_grace: 1s\nmetrics_compaction_range: 1h\n".into(),
        ..ClusterSettings::default()
    };
    let nodes = engines.start_collectors(2, dir.path(), &settings).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let metastore = Metastore::connect(&engines.postgres.url())
        .await
        .expect("the metastore");
    let now_ms = crate::cluster_queries::now_nanos() / 1_000_000;
    let time_of = |round: i64| now_ms - (ROUNDS - round) * 15_000;
    // Rounds a block interval apart, so each partition cuts several blocks.
    let mut published = BTreeSet::new();
    for round in 0..ROUNDS {
        let samples: Vec<(String, i64, f64)> = (0..SERIES)
            .map(|series| (format!("s{series}"), time_of(round), round as f64))
            .collect();
        let response = http
            .post(nodes[0].url("/api/v1/write"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .body(write_request(&samples))
            .send()
            .await
            .expect("a write");
        assert!(response.status().is_success(), "{}", response.status());
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let blocks = live_blocks(&metastore).await.expect("the block list");
        published.extend(blocks.into_iter().map(|block| block.block_id));
    }
    // Every block listed while the samples were written is compacted into
    // a larger one (the nodes' own metrics keep adding blocks meanwhile).
    assert!(published.len() >= 2 * 6, "{published:?}");
    let blocks = poll_until(
        "every block written meanwhile to be compacted",
        Duration::from_secs(90),
        || async {
            let blocks = live_blocks(&metastore).await?;
            let left = blocks
                .iter()
                .filter(|block| published.contains(&block.block_id))
                .count();
            Ok((left == 0).then_some(blocks))
        },
    )
    .await;
    assert!(
        blocks.iter().any(|block| block.block_id.contains("-c")),
        "{blocks:?}"
    );
    let compacted = metric(&nodes[0], "sightline_cluster_blocks_compacted_total").await
        + metric(&nodes[1], "sightline_cluster_blocks_compacted_total").await;
    assert!(compacted >= 1.0);
    // The inputs' objects are deleted after their grace.
    let inputs: Vec<&String> = published.iter().collect();
    poll_until(
        "the compacted inputs' objects to be deleted",
        Duration::from_secs(60),
        || async {
            let stored = engines.s3.list_objects("blocks/").await?;
            let left = stored
                .iter()
                .filter(|key| {
                    inputs
                        .iter()
                        .any(|input| key.starts_with(&format!("blocks/{input}/")))
                })
                .count();
            Ok((left == 0 && !stored.is_empty()).then_some(()))
        },
    )
    .await;
    // The other node answers every sample once, with its value.
    let at_s = now_ms as f64 / 1000.0;
    let data = instant(&http, &nodes[1], "rw_sample[30m]", at_s)
        .await
        .expect("the query");
    let result = data["result"].as_array().expect("a result");
    assert_eq!(result.len(), SERIES, "{data}");
    let expected: Vec<(i64, f64)> = (0..ROUNDS)
        .map(|round| (time_of(round), round as f64))
        .collect();
    for series in result {
        let values: Vec<(i64, f64)> = series["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|point| {
                (
                    (point[0].as_f64().unwrap_or_default() * 1000.0).round() as i64,
                    point[1]
                        .as_str()
                        .unwrap_or_default()
                        .parse()
                        .unwrap_or(f64::NAN),
                )
            })
            .collect();
        assert_eq!(values, expected, "{series}");
    }
}
