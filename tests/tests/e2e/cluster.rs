//! Cluster mode on real engines started here on loopback: a 3-node NATS
//! JetStream cluster, PostgreSQL 15 and SeaweedFS's S3 gateway, with three
//! `sightline-collector` processes. What is checked is what the design
//! promises: every acknowledged record is in exactly one published split
//! (no loss, no duplicate, by record id), the spans of a trace meet in one
//! partition whichever collector received them, and a partition owner's
//! SIGKILL or SIGSTOP moves its partitions without losing or duplicating
//! anything (a paused owner's late publish is refused by the fence).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use sightline_cluster::{Metastore, SplitRow};
use sightline_store::{LogQuery, LogStore, SpanStore};
use sightline_tests::engines::{ClusterEngines as Engines, ClusterSettings, NatsCluster, Postgres};
use sightline_tests::{CollectorProcess, Process, binary, free_port, poll_until, wait_healthy};

/// Three collectors in cluster mode, `c0`..`c2`.
async fn collectors(engines: &Engines, dir: &Path) -> Vec<CollectorProcess> {
    collectors_with(engines, dir, 256 << 20).await
}

/// [`collectors`] on a stream of at most `stream_bytes`.
async fn collectors_with(
    engines: &Engines,
    dir: &Path,
    stream_bytes: u64,
) -> Vec<CollectorProcess> {
    let settings = ClusterSettings {
        stream_bytes,
        ..ClusterSettings::default()
    };
    engines.start_collectors(3, dir, &settings).await
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Sends records `ids` over OTLP/HTTP, spread over `pods` log streams;
/// true when the collector acknowledged them.
async fn send_logs(
    http: &reqwest::Client,
    collector: &CollectorProcess,
    ids: std::ops::Range<u64>,
    pods: u64,
) -> bool {
    let now = now_nanos();
    let resource_logs: Vec<serde_json::Value> = (0..pods)
        .map(|pod| {
            let records: Vec<serde_json::Value> = ids
                .clone()
                .filter(|id| id % pods == pod)
                .map(|id| {
                    serde_json::json!({
                        "timeUnixNano": (now + u128::from(id)).to_string(),
                        "severityText": "INFO",
                        "body": {"stringValue": format!("cluster record {id}")},
                        "attributes": [{"key": "rid", "value": {"intValue": id.to_string()}}],
                    })
                })
                .collect();
            serde_json::json!({
                "resource": {"attributes": [
                    {"key": "service.name", "value": {"stringValue": "clustered"}},
                    {"key": "k8s.pod.name", "value": {"stringValue": format!("clustered-{pod}")}},
                ]},
                "scopeLogs": [{"scope": {}, "logRecords": records}],
            })
        })
        .collect();
    let payload = serde_json::json!({ "resourceLogs": resource_logs });
    match http
        .post(collector.otlp_http_url("/v1/logs"))
        .json(&payload)
        .send()
        .await
    {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

/// [`send_logs`] again until acknowledged: a refusal is backpressure, not
/// loss.
async fn send_until_acknowledged(
    http: &reqwest::Client,
    collector: &CollectorProcess,
    ids: std::ops::Range<u64>,
    pods: u64,
) {
    poll_until("a batch acknowledged", Duration::from_secs(30), || {
        let ids = ids.clone();
        async move { Ok(send_logs(http, collector, ids, pods).await.then_some(())) }
    })
    .await;
}

/// Sends span `span` of trace `trace` (the root when `span` is 0).
async fn send_span(
    http: &reqwest::Client,
    collector: &CollectorProcess,
    trace: &str,
    span: u64,
) -> bool {
    let now = now_nanos();
    let mut record = serde_json::json!({
        "traceId": trace,
        "spanId": format!("{:016x}", span + 1),
        "name": format!("step {span}"),
        "kind": 2,
        "startTimeUnixNano": now.to_string(),
        "endTimeUnixNano": (now + 1_000_000).to_string(),
    });
    if span > 0 {
        record["parentSpanId"] = serde_json::json!(format!("{:016x}", 1));
    }
    let payload = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": format!("hop-{span}")}}]},
        "scopeSpans": [{"scope": {}, "spans": [record]}],
    }]});
    matches!(
        http.post(collector.otlp_http_url("/v1/traces"))
            .json(&payload)
            .send()
            .await,
        Ok(response) if response.status().is_success()
    )
}

/// `sightline-agent` tailing one container's CRI log file, which holds
/// the lines `agent record <id>` for `ids`, into `collector` over gRPC.
async fn agent_tailing(
    dir: &Path,
    collector: &CollectorProcess,
    ids: std::ops::Range<u64>,
) -> Process {
    let file = dir.join("pods/shop_agent-0_uid0/app/0.log");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let now = sightline_tests::rfc3339_now();
    let lines: String = ids
        .map(|id| format!("{now} stdout F agent record {id}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    let port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "include = [\"{pods}/pods/*/*/*.log\"]\ncollector = \"{collector}\"\ndata_dir = \"{data}\"\nhttp_addr = \"127.0.0.1:{port}\"\nhost_name = \"cluster-agent\"\n",
            pods = dir.display(),
            collector = collector.grpc_endpoint(),
            data = dir.join("agent-data").display(),
        ),
    )
    .unwrap();
    let agent = Process::spawn(
        "sightline-agent",
        std::process::Command::new(binary("sightline-agent"))
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap()),
    );
    wait_healthy(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/health"),
        Duration::from_secs(30),
    )
    .await;
    agent
}

/// Every published split, once their log counts add up to `records`.
async fn wait_published(engines: &Engines, records: u64) -> Vec<SplitRow> {
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    poll_until(
        "every acknowledged record in a published split",
        Duration::from_secs(90),
        || async {
            let splits = metastore.splits().await.map_err(|e| e.to_string())?;
            let published: u64 = splits.iter().map(|split| split.logs).sum();
            if published >= records {
                Ok(Some(splits))
            } else {
                Err(format!(
                    "{published} of {records} records published in {} splits",
                    splits.len()
                ))
            }
        },
    )
    .await
}

/// What the published splits hold once each of `acknowledged` is in one.
/// A count is not enough: a refused batch may have been stored in part
/// (its client was not acknowledged), and those records count too.
async fn wait_all_published(engines: &Engines, acknowledged: &BTreeSet<u64>) -> Published {
    wait_published(engines, acknowledged.len() as u64).await;
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    poll_until(
        "every acknowledged record, by id, in a published split",
        Duration::from_secs(90),
        || async {
            let splits = metastore.splits().await.map_err(|e| e.to_string())?;
            let published = read_splits(engines, &splits, &[]).await;
            let missing = acknowledged
                .iter()
                .filter(|id| !published.records.contains_key(id))
                .count();
            if missing == 0 {
                Ok(Some(published))
            } else {
                Err(format!("{missing} acknowledged records in no split yet"))
            }
        },
    )
    .await
}

/// What the published splits hold: each record id with how many times it
/// is stored, and the partitions each trace's spans are in, with the spans.
struct Published {
    records: BTreeMap<u64, usize>,
    traces: BTreeMap<String, (BTreeSet<u32>, usize)>,
}

async fn read_splits(engines: &Engines, splits: &[SplitRow], traces: &[String]) -> Published {
    // Per partition, the splits cover consecutive sequence ranges.
    let mut by_partition: BTreeMap<u32, Vec<&SplitRow>> = BTreeMap::new();
    for split in splits {
        by_partition.entry(split.partition).or_default().push(split);
    }
    for (partition, splits) in &by_partition {
        for pair in splits.windows(2) {
            assert_eq!(
                pair[0].to, pair[1].from,
                "partition {partition}: {} and {} are not consecutive",
                pair[0].split_id, pair[1].split_id
            );
        }
    }
    let storage = engines.storage();
    let mut published = Published {
        records: BTreeMap::new(),
        traces: BTreeMap::new(),
    };
    let scratch = tempfile::tempdir().unwrap();
    for split in splits {
        let dir = scratch.path().join(&split.split_id);
        let meta = storage.download(&split.split_id, &dir).await.unwrap();
        assert_eq!(&meta.row, split, "split.json agrees with PostgreSQL");
        let logs = LogStore::open(&dir.join("logs")).unwrap();
        let hits = logs
            .search(&LogQuery {
                limit: 100_000,
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(hits.hits.len() as u64, split.logs, "{}", split.split_id);
        for hit in hits.hits {
            // OTLP records carry their id as an attribute, the agent's
            // lines in their text.
            let id = hit
                .record
                .attributes
                .get("rid")
                .and_then(serde_json::Value::as_i64)
                .map_or_else(
                    || {
                        let body = &hit.record.body;
                        body.strip_prefix("agent record ")
                            .and_then(|id| id.parse().ok())
                            .unwrap_or_else(|| panic!("a record id in {body:?}"))
                    },
                    |id| id as u64,
                );
            *published.records.entry(id).or_default() += 1;
        }
        let spans = SpanStore::open(&dir.join("spans")).unwrap();
        for trace in traces {
            let found = spans.trace(trace).unwrap();
            if !found.is_empty() {
                let entry = published.traces.entry(trace.clone()).or_default();
                entry.0.insert(split.partition);
                entry.1 += found.len();
            }
        }
    }
    published
}

/// Asserts each of `acknowledged` is stored exactly once.
fn assert_exactly_once(published: &Published, acknowledged: &BTreeSet<u64>) {
    assert_once_but(published, acknowledged, &BTreeSet::new());
}

/// Asserts each of `acknowledged` is stored, and none more than once but
/// those of `retried` (a batch refused and sent again may have been partly
/// stored the first time: at least once).
fn assert_once_but(published: &Published, acknowledged: &BTreeSet<u64>, retried: &BTreeSet<u64>) {
    let missing: Vec<u64> = acknowledged
        .iter()
        .filter(|id| !published.records.contains_key(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records are in no split, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicated: Vec<(&u64, &usize)> = published
        .records
        .iter()
        .filter(|(id, count)| **count > 1 && !retried.contains(id))
        .collect();
    assert!(
        duplicated.is_empty(),
        "records stored more than once: {:?}",
        &duplicated[..duplicated.len().min(10)]
    );
}

/// Three collectors, each sent records and the spans of the same traces:
/// every acknowledged record is in exactly one published split, and each
/// trace's spans, sent to three different collectors, are in one partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_is_in_exactly_one_published_split() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let collectors = collectors(&engines, dir.path()).await;
    let http = reqwest::Client::new();
    for collector in &collectors {
        // Ready: the local stores are open and NATS is connected.
        let ready = http.get(collector.url("/-/ready")).send().await.unwrap();
        assert!(
            ready.status().is_success(),
            "{}",
            ready.text().await.unwrap()
        );
    }

    // The agent, tailing a container's log file into c0: its lines are
    // acknowledged when the agent has them acknowledged (it retries until
    // then), so every line written must be published once.
    let agent_ids = 100_000..100_600u64;
    let _agent = agent_tailing(dir.path(), &collectors[0], agent_ids.clone()).await;

    let mut acknowledged: BTreeSet<u64> = agent_ids.collect();
    let traces: Vec<String> = (0..8)
        .map(|n| format!("{:032x}", 0xc1u128 << 64 | n))
        .collect();
    for round in 0..30u64 {
        let collector = &collectors[(round % 3) as usize];
        let ids = round * 100..round * 100 + 100;
        // Retried until acknowledged: a refusal is backpressure, not loss.
        send_until_acknowledged(&http, collector, ids.clone(), 24).await;
        acknowledged.extend(ids);
        if round < 8 {
            // Span n of every trace to collector n % 3.
            for (span, collector) in collectors.iter().enumerate() {
                let trace = &traces[round as usize];
                for hop in [span as u64, span as u64 + 3] {
                    assert!(
                        send_span(&http, collector, trace, hop).await,
                        "span {hop} acknowledged"
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Real SDK clients: the Python OpenTelemetry SDK over gRPC to c1 and
    // over HTTP to c2, two spans each.
    let mut sdk_traces = Vec::new();
    for (transport, endpoint) in [
        ("grpc", collectors[1].grpc_endpoint()),
        ("http", collectors[2].otlp_http_url("/v1/traces")),
    ] {
        let output = std::process::Command::new("python3")
            .args([
                "-c",
                crate::otel_clients::PYTHON_CLIENT,
                transport,
                &endpoint,
                "cluster-sdk",
            ])
            .output()
            .expect("run python3 (scripts/test installs the OpenTelemetry SDK)");
        assert!(
            output.status.success(),
            "python client: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        sdk_traces.push(String::from_utf8_lossy(&output.stdout).trim().to_string());
    }

    let splits = wait_published(&engines, acknowledged.len() as u64).await;
    // Spans are published too (they share the partitions' splits).
    let spans_published = poll_until("the spans published", Duration::from_secs(60), || async {
        let metastore = Metastore::connect(&engines.postgres.url())
            .await
            .map_err(|e| e.to_string())?;
        let splits = metastore.splits().await.map_err(|e| e.to_string())?;
        let spans: u64 = splits.iter().map(|split| split.spans).sum();
        Ok((spans >= 8 * 6 + 2 * 2).then_some(splits))
    })
    .await;
    assert!(spans_published.len() >= splits.len());
    let all_traces: Vec<String> = traces.iter().chain(&sdk_traces).cloned().collect();
    let published = read_splits(&engines, &spans_published, &all_traces).await;
    assert_exactly_once(&published, &acknowledged);
    for trace in &all_traces {
        let expected = if sdk_traces.contains(trace) { 2 } else { 6 };
        let (partitions, spans) = published.traces.get(trace).cloned().unwrap_or_default();
        assert_eq!(spans, expected, "trace {trace}: every span published once");
        assert_eq!(
            partitions,
            BTreeSet::from([sightline_cluster::partition::of_trace(trace)]),
            "trace {trace}: its spans meet in one partition"
        );
    }
    // The work is spread: every node published splits, and the collectors
    // count what they acknowledged.
    let mut ingested = 0.0;
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    let owned = owners(&metastore).await.unwrap();
    let splits = metastore.splits().await.unwrap();
    for collector in &collectors {
        assert!(
            metric(collector, "sightline_cluster_splits_published_total").await > 0.0,
            "owners {owned:?}, splits {:?}",
            splits
                .iter()
                .map(|s| (s.partition, s.logs, s.spans))
                .collect::<Vec<_>>()
        );
        ingested += metric(
            collector,
            "sightline_collector_ingested_total{signal=\"logs\"}",
        )
        .await;
    }
    assert_eq!(ingested as usize, acknowledged.len());
}

/// A sample of a collector's `/metrics`, by its name and labels as written.
pub(crate) async fn metric(collector: &CollectorProcess, series: &str) -> f64 {
    // Self-metrics only: the certificate of a collector with TLS is
    // checked by the tests that are about it.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let text = http
        .get(collector.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// SIGKILL of a partition owner while two other collectors take records:
/// its partitions move to the live nodes within the lease time and every
/// acknowledged record is still in exactly one published split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_loses_nothing_and_duplicates_nothing() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut collectors = collectors(&engines, dir.path()).await;
    let http = reqwest::Client::new();
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();

    // Every node owns partitions before the kill.
    poll_until(
        "every node owning partitions",
        Duration::from_secs(30),
        || async {
            let owners: BTreeSet<String> = metastore
                .partitions()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter_map(|(_, owner, _, _)| owner)
                .collect();
            Ok((owners.len() == 3).then_some(()))
        },
    )
    .await;

    let mut acknowledged = BTreeSet::new();
    for round in 0..30u64 {
        if round == 10 {
            collectors[2].kill9();
        }
        // Only c0 and c1 take records, so no client request dies with c2.
        let collector = &collectors[(round % 2) as usize];
        let ids = round * 100..round * 100 + 100;
        send_until_acknowledged(&http, collector, ids.clone(), 12).await;
        acknowledged.extend(ids);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // c2's partitions are owned by the others.
    wait_taken_over(&metastore, "c2").await;
    let published = wait_all_published(&engines, &acknowledged).await;
    assert_exactly_once(&published, &acknowledged);
}

/// Asserts a publish was refused by the fence.
fn assert_fenced(result: &Result<(), sightline_cluster::metastore::PublishSplitError>) {
    assert!(
        matches!(
            result,
            Err(sightline_cluster::metastore::PublishSplitError::Fenced { .. })
        ),
        "{result:?}"
    );
}

/// Node `c<n>` of the partitions table, and who owns what.
async fn owners(metastore: &Metastore) -> Result<BTreeMap<u32, Option<String>>, String> {
    Ok(metastore
        .partitions()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(partition, owner, _, _)| (partition, owner))
        .collect())
}

/// Waits until no partition is owned by `node` or by nobody.
async fn wait_taken_over(metastore: &Metastore, node: &str) {
    poll_until(
        &format!("{node}'s partitions taken over"),
        Duration::from_secs(30),
        || async {
            let stale: Vec<u32> = owners(metastore)
                .await?
                .into_iter()
                .filter(|(_, owner)| owner.as_deref().is_none_or(|owner| owner == node))
                .map(|(partition, _)| partition)
                .collect();
            if stale.is_empty() {
                Ok(Some(()))
            } else {
                Err(format!("still {node}'s or unowned: {stale:?}"))
            }
        },
    )
    .await;
}

/// The fence on real PostgreSQL: an owner whose lease was taken over cannot
/// publish, however late it tries, nor renew; the new owner can, once; a
/// publish from a stale checkpoint is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_refuses_a_late_publish() {
    let postgres = Postgres::start().await;
    let metastore = Metastore::connect(&postgres.url()).await.unwrap();
    let ttl = Duration::from_secs(1);
    let first = metastore
        .acquire("a", 5, ttl)
        .await
        .unwrap()
        .expect("a takes partition 5");
    assert!(
        metastore.acquire("b", 5, ttl).await.unwrap().is_none(),
        "a live lease is not taken"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = metastore
        .acquire("b", 5, ttl)
        .await
        .unwrap()
        .expect("b takes the expired lease");
    assert_eq!(second.epoch, first.epoch + 1);
    assert_eq!(second.checkpoint, first.checkpoint);
    let split = |id: &str, from: u64, to: u64| SplitRow {
        split_id: id.into(),
        partition: 5,
        from,
        to,
        min_time: 1,
        max_time: 2,
        logs: 3,
        spans: 0,
        bytes: 10,
    };
    let late = metastore
        .publish_split("a", &first, &split("late", first.checkpoint, 100))
        .await;
    assert_fenced(&late);
    assert!(
        metastore
            .renew("a", &[first], ttl)
            .await
            .unwrap()
            .is_empty()
    );
    metastore
        .publish_split("b", &second, &split("on-time", second.checkpoint, 100))
        .await
        .unwrap();
    let again = metastore
        .publish_split("b", &second, &split("stale", second.checkpoint, 120))
        .await;
    assert_fenced(&again);
    let splits = metastore.splits().await.unwrap();
    assert_eq!(
        splits
            .iter()
            .map(|s| s.split_id.as_str())
            .collect::<Vec<_>>(),
        ["on-time"]
    );
    assert_eq!(metastore.renew("b", &[second], ttl).await.unwrap(), [5]);
}

/// SIGSTOP of an owner past its lease: the others take its partitions;
/// SIGCONT: whatever it had in hand is refused (the fence) or dropped
/// (its lease renewal fails), and nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_and_nothing_is_duplicated() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let collectors = collectors(&engines, dir.path()).await;
    let http = reqwest::Client::new();
    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    poll_until(
        "every node owning partitions",
        Duration::from_secs(30),
        || async {
            let owners: BTreeSet<String> =
                owners(&metastore).await?.into_values().flatten().collect();
            Ok((owners.len() == 3).then_some(()))
        },
    )
    .await;

    let mut acknowledged = BTreeSet::new();
    for round in 0..40u64 {
        if round == 10 {
            collectors[2].process.signal("STOP");
        }
        if round == 12 {
            wait_taken_over(&metastore, "c2").await;
        }
        if round == 20 {
            collectors[2].process.signal("CONT");
        }
        let collector = &collectors[(round % 2) as usize];
        let ids = round * 100..round * 100 + 100;
        send_until_acknowledged(&http, collector, ids.clone(), 12).await;
        acknowledged.extend(ids);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let published = wait_all_published(&engines, &acknowledged).await;
    assert_exactly_once(&published, &acknowledged);
    // c2 found out: its renewals were refused (or its publishes fenced).
    let stopped = metric(&collectors[2], "sightline_cluster_leases_lost_total").await
        + metric(&collectors[2], "sightline_cluster_splits_fenced_total").await;
    assert!(
        stopped > 0.0,
        "the paused owner never noticed it lost its partitions"
    );
    // c2 is back among the owners (rendezvous gives it its share again).
    poll_until(
        "c2 owning partitions again",
        Duration::from_secs(30),
        || async {
            let owned = owners(&metastore)
                .await?
                .into_values()
                .filter(|owner| owner.as_deref() == Some("c2"))
                .count();
            Ok((owned > 0).then_some(()))
        },
    )
    .await;
}

/// The index of the NATS node leading the stream.
async fn stream_leader(nats: &NatsCluster) -> usize {
    poll_until("the stream's leader", Duration::from_secs(30), || async {
        for i in 0..nats.node_count() {
            let Ok(jsz) = sightline_tests::get_json(
                &reqwest::Client::new(),
                &nats.monitor_url(i, "/jsz?accounts=true&streams=true"),
            )
            .await
            else {
                continue;
            };
            for account in jsz["account_details"].as_array().into_iter().flatten() {
                for stream in account["stream_detail"].as_array().into_iter().flatten() {
                    if stream["name"] == "SIGHTLINE"
                        && let Some(leader) = stream["cluster"]["leader"].as_str()
                        && let Some(index) =
                            (0..nats.node_count()).find(|&j| nats.server_name(j) == leader)
                    {
                        return Ok(Some(index));
                    }
                }
            }
        }
        Err("no node names a leader of SIGHTLINE".into())
    })
    .await
}

/// SIGKILL of the JetStream stream leader while collectors publish: the
/// surviving quorum elects a new one and publishes go on; every
/// acknowledged record is published (a batch refused during the election
/// and sent again may be stored twice: at least once, never lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_killed_while_publishing() {
    let mut engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let collectors = collectors(&engines, dir.path()).await;
    let http = reqwest::Client::new();
    let mut acknowledged = BTreeSet::new();
    let mut retried = BTreeSet::new();
    let mut killed = None;
    for round in 0..30u64 {
        if round == 10 {
            let leader = stream_leader(&engines.nats).await;
            engines.nats.kill(leader);
            killed = Some(leader);
        }
        let collector = &collectors[(round % 3) as usize];
        let ids = round * 100..round * 100 + 100;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if send_logs(&http, collector, ids.clone(), 12).await {
                break;
            }
            assert!(attempts < 150, "batch {round} refused for 30 s");
            retried.extend(ids.clone());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        acknowledged.extend(ids);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = stream_leader(&engines.nats).await;
    assert_ne!(Some(leader), killed, "a new leader");
    let published = wait_all_published(&engines, &acknowledged).await;
    assert_once_but(&published, &acknowledged, &retried);
}

/// PostgreSQL stopped, then S3 stopped, while clients send to a small
/// stream: nothing can be published, the stream fills, and clients are
/// refused (429, retry later), never acknowledged and then lost; after each
/// engine returns, everything acknowledged is published, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metastore_and_object_store_outages_are_backpressure() {
    let mut engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let collectors = collectors_with(&engines, dir.path(), 2 << 20).await;
    let http = reqwest::Client::new();
    let mut acknowledged = BTreeSet::new();
    let mut next = 0u64;
    // Sends new batches until one is refused; returns how many were taken.
    async fn until_refused(
        http: &reqwest::Client,
        collectors: &[CollectorProcess],
        next: &mut u64,
        acknowledged: &mut BTreeSet<u64>,
    ) -> usize {
        for sent in 0..2000 {
            let ids = *next..*next + 100;
            *next += 100;
            let collector = &collectors[sent % collectors.len()];
            if !send_logs(http, collector, ids.clone(), 12).await {
                return sent;
            }
            acknowledged.extend(ids);
        }
        panic!("2000 batches acknowledged while nothing can be published: no backpressure");
    }

    engines.postgres.stop();
    let taken = until_refused(&http, &collectors, &mut next, &mut acknowledged).await;
    assert!(taken > 0, "the stream took batches before it filled");
    engines.postgres.start_again().await;
    wait_all_published(&engines, &acknowledged).await;

    engines.s3.stop();
    let taken = until_refused(&http, &collectors, &mut next, &mut acknowledged).await;
    assert!(taken > 0, "the stream took batches before it filled");
    engines.s3.start_again().await;
    let published = wait_all_published(&engines, &acknowledged).await;
    // Refused batches were not sent again: nothing may be stored twice.
    assert!(
        published.records.values().all(|count| *count == 1),
        "a record stored twice"
    );
}

/// A message on the stream that is not a batch (a foreign publisher, a
/// bug): the partition's owner counts it, moves it aside to `rejected/` in
/// the bucket, and goes on publishing what follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_moved_aside_and_its_partition_goes_on() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let collector = engines
        .start_collector("c0", dir.path(), &ClusterSettings::default())
        .await;
    let http = reqwest::Client::new();
    let trace = format!("{:032x}", 0xbad_u128 << 64 | 1);
    let partition = sightline_cluster::partition::of_trace(&trace);

    // Not a batch, published straight to the partition's subject.
    let client = async_nats::connect(engines.nats.client_url(0))
        .await
        .unwrap();
    async_nats::jetstream::new(client)
        .publish(format!("sightline.p.{partition}"), "not a batch".into())
        .await
        .unwrap()
        .await
        .expect("the stream stored the message");
    // Then the spans of a trace that lives in the same partition.
    for span in 0..3 {
        assert!(send_span(&http, &collector, &trace, span).await);
    }

    let metastore = Metastore::connect(&engines.postgres.url()).await.unwrap();
    let splits = poll_until("the trace published", Duration::from_secs(60), || async {
        let splits = metastore.splits().await.map_err(|e| e.to_string())?;
        let spans: u64 = splits
            .iter()
            .filter(|split| split.partition == partition)
            .map(|split| split.spans)
            .sum();
        Ok((spans >= 3).then_some(splits))
    })
    .await;
    let published = read_splits(&engines, &splits, std::slice::from_ref(&trace)).await;
    assert_eq!(
        published.traces.get(&trace),
        Some(&(BTreeSet::from([partition]), 3))
    );
    let rejected = engines.storage().rejected().await.unwrap();
    assert_eq!(rejected.len(), 1, "moved aside: {rejected:?}");
    assert!(
        rejected[0].starts_with("rejected/"),
        "{rejected:?} is not under rejected/"
    );
    assert_eq!(
        metric(&collector, "sightline_cluster_entries_rejected_total").await,
        1.0
    );
}

/// A record that passes every limit but would not fit in one message of
/// the stream (the NATS servers' `max_payload`) is refused alone, with a
/// reason, and the rest of its request is acknowledged and published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_the_stream_is_refused_alone() {
    let engines = Engines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let collector = engines
        .start_collector("c0", dir.path(), &ClusterSettings::default())
        .await;
    let now = now_nanos();
    let record = |id: u64, body: String| {
        serde_json::json!({
            "timeUnixNano": (now + u128::from(id)).to_string(),
            "body": {"stringValue": body},
            "attributes": [{"key": "rid", "value": {"intValue": id.to_string()}}],
        })
    };
    // Under max_record_bytes (1 MiB of body and attributes), over the
    // servers' 1 MB max_payload once encoded.
    let huge = "x".repeat(1_046_000);
    let payload = serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "big"}}]},
        "scopeLogs": [{"scope": {}, "logRecords": [
            record(1, "before".into()),
            record(2, huge),
            record(3, "after".into()),
        ]}],
    }]});
    let response = reqwest::Client::new()
        .post(collector.otlp_http_url("/v1/logs"))
        .json(&payload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "{answer}"
    );
    let message = answer["partialSuccess"]["errorMessage"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("message limit") && message.contains("max_payload"),
        "{message}"
    );
    let published = wait_all_published(&engines, &BTreeSet::from([1, 3])).await;
    assert_exactly_once(&published, &BTreeSet::from([1, 3]));
    assert!(!published.records.contains_key(&2));
}
