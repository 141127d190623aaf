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

async fn blocks_published(engines: &Engines) -> u64 {
    let metastore = Metastore::connect(&engines.postgres.url())
        .await
        .expect("the metastore");
    let (blocks, _) = metastore
        .metric_snapshot(i64::MIN, i64::MAX)
        .await
        .expect("the block list");
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

/// A remote-write body (protobuf `WriteRequest`, snappy): one sample of
/// each series.
fn write_request(series: &[(String, i64, f64)]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    fn field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    let mut request = Vec::new();
    for (name, timestamp_ms, value) in series {
        let mut timeseries = Vec::new();
        for (label, label_value) in [("__name__", "rw_sample"), ("series", name.as_str())] {
            let mut pair = Vec::new();
            field(&mut pair, 1, label.as_bytes());
            field(&mut pair, 2, label_value.as_bytes());
            field(&mut timeseries, 1, &pair);
        }
        let mut sample = vec![0x09];
        sample.extend_from_slice(&value.to_le_bytes());
        varint(&mut sample, 2 << 3);
        varint(&mut sample, *timestamp_ms as u64);
        field(&mut timeseries, 2, &sample);
        field(&mut request, 1, &timeseries);
    }
    snap::raw::Encoder::new()
        .compress_vec(&request)
        .expect("snappy")
}

/// Raw samples of `rw_sample{series}` (a range selector's matrix), by
/// series: the timestamps (ms) the cluster holds.
async fn stored(
    http: &reqwest::Client,
    node: &CollectorProcess,
    at_s: f64,
) -> Result<BTreeMap<String, BTreeSet<i64>>, String> {
    let body: Value = http
        .post(node.url("/api/v1/query"))
        .form(&[
            ("query", "rw_sample[30m]".to_string()),
            ("time", format!("{at_s:.3}")),
        ])
        .send()
        .await
        .map_err(|error| error.to_string())?
        .json()
        .await
        .map_err(|error| error.to_string())?;
    if body["status"] != "success" {
        return Err(format!("query failed: {body}"));
    }
    let mut found = BTreeMap::new();
    for series in body["data"]["result"].as_array().ok_or("no result")? {
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
                .filter(|(partition, owner, _, _)| *partition >= 64 && owner.is_some())
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
                    *partition >= 64 && owner.as_deref() == Some("c2")
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
            .filter(|(partition, _, _, _)| *partition >= 64)
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
