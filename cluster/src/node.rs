//! One collector's part in the cluster: it heartbeats, takes the partitions
//! rendezvous hashing gives it (a lease with a new epoch each time), reads
//! each from its checkpoint, cuts a split every window, uploads it,
//! publishes it with the fenced checkpoint move, and only then purges what
//! the split covers from the stream.
//!
//! Failure handling, in one place:
//! - NATS, PostgreSQL or S3 failing: the split in hand is kept and retried;
//!   nothing is purged before it is published, so nothing is lost. The
//!   buffer stops growing at `split_max_bytes` (bounded memory) and the
//!   stream fills until publishers see backpressure.
//! - Fenced (another node took the partition while this one was paused):
//!   the split's objects are deleted and the partition task ends.
//! - A lease renewal that no longer lists a partition ends its task at
//!   once: it may still have a split in flight, which the fence refuses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sightline_store::PartitionId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ClusterConfig;
use crate::log::{ClusterLog, Entry};
use crate::metastore::{Lease, Metastore, PublishSplitError};
use crate::partition::{self, ALL_PARTITIONS, Kind};
use crate::query::ClusterReader;
use crate::splits::{self, SplitStorage};

/// What a node shares with its partition tasks.
pub(crate) struct Context {
    pub(crate) node_id: String,
    pub(crate) config: ClusterConfig,
    pub(crate) log: ClusterLog,
    pub(crate) metastore: Metastore,
    pub(crate) storage: SplitStorage,
    pub(crate) work_dir: PathBuf,
    pub(crate) stats: Arc<NodeStats>,
    /// The published splits: earlier spans of a split's traces, and the
    /// cache this node's own splits go into once published.
    pub(crate) reader: Arc<ClusterReader>,
    /// What this node's partitions hold beyond their checkpoints.
    pub(crate) fresh: Arc<crate::fresh::FreshPartitions>,
    /// The heads of the metrics partitions this node owns.
    pub(crate) metrics_heads: Arc<crate::metrics::MetricHeads>,
    /// The blocks this node publishes go into its block cache.
    pub(crate) metrics: Arc<crate::metrics::ClusterMetrics>,
    /// The rule groups and scrape targets this node works on.
    pub(crate) assignment: Arc<crate::assignment::Assignment>,
}

/// What a node's ownership work shares with the node's readers and its
/// internal API.
pub(crate) struct Shared {
    pub(crate) reader: Arc<ClusterReader>,
    pub(crate) fresh: Arc<crate::fresh::FreshPartitions>,
    pub(crate) metrics_heads: Arc<crate::metrics::MetricHeads>,
    pub(crate) metrics: Arc<crate::metrics::ClusterMetrics>,
    pub(crate) assignment: Arc<crate::assignment::Assignment>,
}

/// Counters of this node's ownership work (self-metrics).
#[derive(Debug, Default)]
pub struct NodeStats {
    pub splits_published: AtomicU64,
    /// Splits the fence refused: this node had lost the partition.
    pub splits_fenced: AtomicU64,
    /// Leases a renewal no longer listed (taken over while this node was
    /// paused or cut off).
    pub leases_lost: AtomicU64,
    pub entries_rejected: AtomicU64,
    /// Cut, upload or publish attempts that failed and are retried.
    pub publish_retries: AtomicU64,
    pub partitions_owned: AtomicU64,
    /// Splits retired past retention, and deleted after their grace.
    pub splits_retired: AtomicU64,
    pub splits_deleted: AtomicU64,
    /// Orphaned uploads (objects without a row) the janitor deleted.
    pub orphans_deleted: AtomicU64,
    /// Merged splits this node published.
    pub splits_merged: AtomicU64,
    /// Blocks of samples this node published.
    pub blocks_published: AtomicU64,
    /// Compacted blocks this node published (each retiring its inputs).
    pub blocks_compacted: AtomicU64,
    /// Blocks this node retired past retention, and deleted after their
    /// grace.
    pub blocks_retired: AtomicU64,
    pub blocks_deleted: AtomicU64,
    /// Samples a metrics partition's head refused (out of order, a
    /// duplicate timestamp with another value) after the log had them.
    pub samples_refused: AtomicU64,
}

impl NodeStats {
    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "sightline_cluster_splits_published_total",
                "counter",
                "Splits this node published.",
                load(&self.splits_published),
            ),
            (
                "sightline_cluster_splits_fenced_total",
                "counter",
                "Splits refused by the checkpoint fence (the partition had moved).",
                load(&self.splits_fenced),
            ),
            (
                "sightline_cluster_leases_lost_total",
                "counter",
                "Partition leases taken over while this node held them.",
                load(&self.leases_lost),
            ),
            (
                "sightline_cluster_entries_rejected_total",
                "counter",
                "Log entries that could not be decoded, moved aside.",
                load(&self.entries_rejected),
            ),
            (
                "sightline_cluster_publish_retries_total",
                "counter",
                "Split cuts, uploads or publishes that failed and were retried.",
                load(&self.publish_retries),
            ),
            (
                "sightline_cluster_splits_retired_total",
                "counter",
                "Splits this node retired past retention.",
                load(&self.splits_retired),
            ),
            (
                "sightline_cluster_splits_deleted_total",
                "counter",
                "Retired splits this node deleted (row and objects).",
                load(&self.splits_deleted),
            ),
            (
                "sightline_cluster_orphans_deleted_total",
                "counter",
                "Uploads without a published row that this node's janitor deleted.",
                load(&self.orphans_deleted),
            ),
            (
                "sightline_cluster_splits_merged_total",
                "counter",
                "Merged splits this node published (each retiring its inputs).",
                load(&self.splits_merged),
            ),
            (
                "sightline_cluster_blocks_published_total",
                "counter",
                "Blocks of samples this node published.",
                load(&self.blocks_published),
            ),
            (
                "sightline_cluster_blocks_compacted_total",
                "counter",
                "Compacted blocks of samples this node published (each retiring its inputs).",
                load(&self.blocks_compacted),
            ),
            (
                "sightline_cluster_blocks_retired_total",
                "counter",
                "Blocks of samples this node retired past retention.",
                load(&self.blocks_retired),
            ),
            (
                "sightline_cluster_blocks_deleted_total",
                "counter",
                "Retired blocks this node deleted (row and objects).",
                load(&self.blocks_deleted),
            ),
            (
                "sightline_cluster_samples_refused_total",
                "counter",
                "Samples the owner's head refused after the log had acknowledged them (out of order).",
                load(&self.samples_refused),
            ),
            (
                "sightline_cluster_partitions_owned",
                "gauge",
                "Partitions this node owns.",
                load(&self.partitions_owned),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

/// A running partition task.
struct Owned {
    lease: Lease,
    handoff: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The node's background work; stops (handing its partitions off) on
/// [`Node::shutdown`].
pub struct Node {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    pub stats: Arc<NodeStats>,
}

impl Node {
    pub(crate) async fn start(
        config: ClusterConfig,
        log: ClusterLog,
        work_dir: PathBuf,
        address: String,
        shared: Shared,
        retention: Duration,
    ) -> anyhow::Result<Node> {
        let metastore = Metastore::connect(&config.postgres).await?;
        let storage = SplitStorage::new(&config.object_store)?;
        let stats = Arc::new(NodeStats::default());
        let context = Arc::new(Context {
            node_id: config.node_id.clone(),
            config,
            log,
            metastore,
            storage,
            work_dir,
            stats: stats.clone(),
            reader: shared.reader,
            fresh: shared.fresh,
            metrics_heads: shared.metrics_heads,
            metrics: shared.metrics,
            assignment: shared.assignment,
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(crate::lifecycle::run(
            context.clone(),
            retention,
            stopped.clone(),
        ));
        let task = tokio::spawn(run(context, address, stopped));
        Ok(Node { stop, task, stats })
    }

    /// Hands every partition off (its last split published) and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(context: Arc<Context>, address: String, mut stopped: watch::Receiver<bool>) {
    let ttl = context.config.lease_ttl;
    let tick = ttl / 4;
    let mut owned: BTreeMap<PartitionId, Owned> = BTreeMap::new();
    loop {
        if let Err(error) = step(&context, &address, &mut owned).await {
            tracing::warn!(%error, "cluster membership step failed; retrying");
        }
        context
            .stats
            .partitions_owned
            .store(owned.len() as u64, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stopped.changed() => break,
        }
    }
    // Hand off: each task publishes what it holds and releases its lease.
    for owned in owned.values() {
        let _ = owned.handoff.send(true);
    }
    for (partition, owned) in owned {
        if tokio::time::timeout(ttl * 2, owned.task).await.is_err() {
            tracing::warn!(partition, "partition did not hand off in time");
        }
    }
}

/// One heartbeat: say we are alive, drop lost leases, take what is ours.
async fn step(
    context: &Arc<Context>,
    address: &str,
    owned: &mut BTreeMap<PartitionId, Owned>,
) -> anyhow::Result<()> {
    let ttl = context.config.lease_ttl;
    context.metastore.reconnect_if_closed().await?;
    context
        .metastore
        .heartbeat(&context.node_id, address, context.config.owns_partitions)
        .await?;
    owned.retain(|_, owned| !owned.task.is_finished());
    let leases: Vec<Lease> = owned.values().map(|owned| owned.lease).collect();
    let still = context
        .metastore
        .renew(&context.node_id, &leases, ttl)
        .await?;
    owned.retain(|partition, owned| {
        let kept = still.contains(partition);
        if !kept {
            tracing::warn!(
                partition,
                epoch = owned.lease.epoch,
                "lease lost; stopping the partition"
            );
            context.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
            owned.task.abort();
        }
        kept
    });
    if !context.config.owns_partitions {
        return Ok(());
    }
    let live = context.metastore.live_nodes(ttl).await?;
    for partition in 0..ALL_PARTITIONS {
        let mine = partition::owner(partition, &live) == Some(context.node_id.as_str());
        match (mine, owned.get(&partition)) {
            (true, None) => {
                if let Some(lease) = context
                    .metastore
                    .acquire(&context.node_id, partition, ttl)
                    .await?
                {
                    tracing::info!(
                        partition,
                        epoch = lease.epoch,
                        checkpoint = lease.checkpoint,
                        "took partition"
                    );
                    let (handoff, handoff_rx) = watch::channel(false);
                    let context = context.clone();
                    let task = match partition::kind(partition) {
                        Kind::Logs => tokio::spawn(own(context, lease, handoff_rx)),
                        Kind::Metrics => {
                            tokio::spawn(crate::metrics::owner::own(context, lease, handoff_rx))
                        }
                        Kind::RuleSlot | Kind::ScrapeSlot => {
                            tokio::spawn(crate::assignment::hold(context, lease, handoff_rx))
                        }
                    };
                    owned.insert(
                        partition,
                        Owned {
                            lease,
                            handoff,
                            task,
                        },
                    );
                }
            }
            (false, Some(owned)) => {
                let _ = owned.handoff.send(true);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Owns one partition until handed off, fenced or aborted.
async fn own(context: Arc<Context>, lease: Lease, mut handoff: watch::Receiver<bool>) {
    let partition = lease.partition;
    let config = &context.config;
    // The first sequence not yet in a published split.
    let mut from = lease.checkpoint.max(1);
    // Read since `from`: decoded (shared with fresh-data queries through
    // `fresh`), the undecodable apart, the last sequence read.
    let mut buffer: Vec<splits::Decoded> = Vec::new();
    let mut rejected: Vec<Entry> = Vec::new();
    let mut last: Option<u64> = None;
    let mut buffered_bytes = 0usize;
    let fresh = context.fresh.register(partition, from);
    let mut window_start = Instant::now();
    let mut reader = None;
    loop {
        let handing_off = *handoff.borrow();
        let due = last.is_some()
            && (handing_off
                || window_start.elapsed() >= config.split_interval
                || buffered_bytes >= config.split_max_bytes);
        if due {
            let to = last.map_or(from, |sequence| sequence + 1);
            match cut_and_publish(&context, &lease, from, to, &buffer, &rejected).await {
                Ok(row) => {
                    from = to;
                    buffer.clear();
                    rejected.clear();
                    last = None;
                    buffered_bytes = 0;
                    fresh.write().published(row);
                    // Purged only now: the split holds these entries.
                    if let Err(error) = context.log.purge_below(partition, to).await {
                        tracing::warn!(partition, %error, "purge failed; the next split's purge covers it");
                    }
                }
                Err(Outcome::Fenced) => return,
                Err(Outcome::Retry) => {
                    context
                        .stats
                        .publish_retries
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        if handing_off && last.is_none() {
            if let Err(error) = context.metastore.release(&context.node_id, &lease).await {
                tracing::warn!(partition, %error, "release failed; the lease expires instead");
            }
            tracing::info!(partition, "handed partition off");
            return;
        }
        if buffered_bytes >= config.split_max_bytes {
            continue;
        }
        let next = last.map_or(from, |sequence| sequence + 1);
        let reading = match reader.as_mut() {
            Some(reader) => reader,
            None => match context.log.reader(partition, next).await {
                Ok(created) => reader.insert(created),
                Err(error) => {
                    tracing::warn!(partition, %error, "cannot read the partition; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let wait = if last.is_none() {
            Duration::from_millis(500)
        } else {
            config
                .split_interval
                .saturating_sub(window_start.elapsed())
                .clamp(Duration::from_millis(50), Duration::from_millis(500))
        };
        let entries = tokio::select! {
            read = reading.next(1000, 8 << 20, wait) => read,
            _ = handoff.changed() => continue,
        };
        match entries {
            Ok(entries) => {
                let entries: Vec<Entry> = entries
                    .into_iter()
                    .filter(|entry| entry.sequence >= next)
                    .collect();
                let Some(newest) = entries.last().map(|entry| entry.sequence) else {
                    continue;
                };
                if last.is_none() {
                    window_start = Instant::now();
                }
                last = Some(newest);
                buffered_bytes += entries
                    .iter()
                    .map(|entry| entry.payload.len())
                    .sum::<usize>();
                // Decoding is CPU work: off the executor. (Should it fail,
                // the entries are moved aside with the split, not lost.)
                let kept = entries.clone();
                let (decoded, undecodable) =
                    tokio::task::spawn_blocking(move || splits::decode(partition, entries))
                        .await
                        .unwrap_or((Vec::new(), kept));
                fresh.write().entries.extend(decoded.iter().cloned());
                fresh.announce(&decoded);
                buffer.extend(decoded);
                rejected.extend(undecodable);
            }
            Err(error) => {
                tracing::warn!(partition, %error, "reading the partition failed; reading again");
                reader = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

enum Outcome {
    Fenced,
    Retry,
}

async fn cut_and_publish(
    context: &Arc<Context>,
    lease: &Lease,
    from: u64,
    to: u64,
    decoded: &[splits::Decoded],
    rejected: &[Entry],
) -> Result<crate::metastore::SplitRow, Outcome> {
    let partition = lease.partition;
    let work_dir = context.work_dir.clone();
    let (epoch, decoded, rejected) = (lease.epoch, decoded.to_vec(), rejected.to_vec());
    let reader = context.reader.clone();
    let built = tokio::task::spawn_blocking(move || {
        let earlier = |traces: &[String], since: i64| {
            anyhow::Ok(reader.earlier_spans(partition, traces, since)?)
        };
        splits::build(
            &work_dir, partition, epoch, from, to, &decoded, rejected, &earlier,
        )
    })
    .await;
    let split = match built {
        Ok(Ok(split)) => split,
        Ok(Err(error)) => {
            tracing::warn!(partition, %error, "cutting a split failed; retrying");
            return Err(Outcome::Retry);
        }
        Err(error) => {
            tracing::warn!(partition, %error, "the split builder stopped; retrying");
            return Err(Outcome::Retry);
        }
    };
    if let Err(error) = context.storage.upload(&split).await {
        tracing::warn!(
            partition,
            error = format!("{error:#}"),
            "uploading a split failed; retrying"
        );
        return Err(Outcome::Retry);
    }
    match context
        .metastore
        .publish_split(&context.node_id, lease, &split.meta.row)
        .await
    {
        Ok(()) => {
            context
                .stats
                .splits_published
                .fetch_add(1, Ordering::Relaxed);
            context
                .stats
                .entries_rejected
                .fetch_add(split.meta.rejected, Ordering::Relaxed);
            tracing::debug!(partition, split = %split.meta.row.split_id, from, to, "published split");
            let splits::LocalSplit { dir, meta, .. } = split;
            context.reader.adopt(&meta.row, dir.keep()).await;
            Ok(meta.row)
        }
        Err(PublishSplitError::Fenced { .. }) => {
            context.stats.splits_fenced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                partition,
                epoch = lease.epoch,
                from,
                "split refused by the fence: another node owns the partition now; dropping it"
            );
            if let Err(error) = context.storage.delete(&split.meta.row.split_id).await {
                tracing::warn!(partition, %error, "could not delete the refused split's objects");
            }
            Err(Outcome::Fenced)
        }
        Err(PublishSplitError::Unavailable(error)) => {
            tracing::warn!(partition, %error, "publishing a split failed; retrying");
            Err(Outcome::Retry)
        }
    }
}
