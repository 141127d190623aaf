//! A metrics partition's owner: it reads the partition from its
//! checkpoint into a head (a [`MetricStore`] of its own), and every
//! `metrics_block_interval` (or at handoff) cuts the head into a block,
//! uploads it, publishes it with the fenced checkpoint move and purges the
//! partition below it, as a log partition's owner does with splits.
//!
//! The head is rebuilt from the stream at every takeover (its directory is
//! emptied first): the stream past the checkpoint is the truth, and a head
//! an earlier ownership left may hold what another owner published since.
//!
//! [`MetricHeads`] is what other nodes' queries read: per owned partition,
//! the head and the blocks cut from it that are not published yet or were
//! published a moment ago (a query whose snapshot predates the publish
//! still finds them here, not yet in its block list).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sightline_store::PartitionId;
use sightline_tsdb::{Block, BlockIndex, LabelMatcher, MetricStore, SeriesData, SeriesMerge};
use tokio::sync::watch;

use super::HeadPart;
use super::reader::INDEX_FILE;
use crate::metastore::{BlockRow, Lease, PublishSplitError};
use crate::node::Context;

/// How long a published block stays answerable from its owner's memory:
/// longer than a query takes from its snapshot to asking the owners.
const KEEP_PUBLISHED: Duration = Duration::from_secs(5 * 60);

/// A block cut from a head.
struct HeldBlock {
    row: BlockRow,
    block: Arc<Block>,
    /// When it was published; `None` while its upload or publish is
    /// pending.
    published: Option<Instant>,
}

/// One owned partition as queries see it.
pub(crate) struct OwnedHead {
    epoch: i64,
    /// The first stream sequence the head holds.
    head_from: u64,
    head: Arc<MetricStore>,
    /// Cut from the head, oldest first.
    blocks: VecDeque<HeldBlock>,
}

impl OwnedHead {
    /// What this owner holds at and past stream sequence `checkpoint`, or
    /// `None` when it cannot tell (the checkpoint is not one of its
    /// boundaries: another owner's, or older than what it keeps).
    fn select(
        &self,
        checkpoint: u64,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
        series_only: bool,
    ) -> Option<Result<Vec<SeriesData>, String>> {
        let known = self.head_from == checkpoint
            || self.blocks.iter().any(|held| held.row.from == checkpoint);
        if !known {
            return None;
        }
        let mut found = SeriesMerge::default();
        for held in self
            .blocks
            .iter()
            .filter(|held| held.row.from >= checkpoint)
        {
            if series_only {
                for labels in held.block.series(matchers, start_ms, end_ms) {
                    found.add_labels(labels);
                }
            } else {
                match held.block.select(matchers, start_ms, end_ms) {
                    Ok(series) => found.add_all(series),
                    Err(error) => return Some(Err(error.to_string())),
                }
            }
        }
        let head = self.head.reader();
        if series_only {
            match head.series(matchers, start_ms, end_ms) {
                Ok(labels) => labels
                    .into_iter()
                    .for_each(|labels| found.add_labels(labels)),
                Err(error) => return Some(Err(error.to_string())),
            }
        } else {
            match head.select(matchers, start_ms, end_ms) {
                Ok(series) => found.add_all(series),
                Err(error) => return Some(Err(error.to_string())),
            }
        }
        Some(Ok(found.finish()))
    }
}

/// The heads of the metrics partitions this node owns.
#[derive(Default)]
pub struct MetricHeads {
    owned: RwLock<BTreeMap<PartitionId, Arc<RwLock<OwnedHead>>>>,
}

impl MetricHeads {
    fn register(&self, partition: PartitionId, head: OwnedHead) -> Arc<RwLock<OwnedHead>> {
        let head = Arc::new(RwLock::new(head));
        self.owned
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, head.clone());
        head
    }

    fn unregister(&self, partition: PartitionId, head: &Arc<RwLock<OwnedHead>>) {
        let mut owned = self.owned.write().unwrap_or_else(|e| e.into_inner());
        if owned
            .get(&partition)
            .is_some_and(|current| Arc::ptr_eq(current, head))
        {
            owned.remove(&partition);
        }
    }

    /// What the partitions of `checkpoints` that this node owns hold past
    /// their checkpoints. Blocking: call it off the executor.
    pub(crate) fn answer(
        &self,
        checkpoints: &BTreeMap<PartitionId, u64>,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
        series_only: bool,
    ) -> Result<Vec<HeadPart>, String> {
        let owned: Vec<(PartitionId, Arc<RwLock<OwnedHead>>)> = self
            .owned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(partition, head)| (*partition, head.clone()))
            .collect();
        let mut parts = Vec::new();
        for (partition, head) in owned {
            let Some(checkpoint) = checkpoints.get(&partition) else {
                continue;
            };
            let head = head.read().unwrap_or_else(|e| e.into_inner());
            if let Some(series) = head.select(*checkpoint, matchers, start_ms, end_ms, series_only)
            {
                parts.push(HeadPart {
                    partition,
                    epoch: head.epoch,
                    series: series?,
                });
            }
        }
        Ok(parts)
    }
}

/// Owns one metrics partition until handed off, fenced or aborted.
pub(crate) async fn own(context: Arc<Context>, lease: Lease, mut handoff: watch::Receiver<bool>) {
    let partition = lease.partition;
    let interval = context.config.metrics_block_interval;
    let dir = context.work_dir.join("metrics").join(partition.to_string());
    let opened = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(anyhow::anyhow!("cannot empty {}: {error}", dir.display()));
                }
            }
            // The stream is this head's log: its WAL need not be fsynced.
            Ok(MetricStore::open_unsynced(&dir)?)
        })
        .await
    };
    let head = match opened {
        Ok(Ok(head)) => Arc::new(head),
        Ok(Err(error)) => {
            tracing::error!(
                partition,
                error = format!("{error:#}"),
                "cannot open the partition's head; giving it up"
            );
            return;
        }
        Err(error) => {
            tracing::error!(partition, %error, "opening the partition's head stopped");
            return;
        }
    };
    let from = lease.checkpoint.max(1);
    let state = context.metrics_heads.register(
        partition,
        OwnedHead {
            epoch: lease.epoch,
            head_from: from,
            head: head.clone(),
            blocks: VecDeque::new(),
        },
    );
    run(&context, &lease, &state, head, from, interval, &mut handoff).await;
    context.metrics_heads.unregister(partition, &state);
}

async fn run(
    context: &Arc<Context>,
    lease: &Lease,
    state: &Arc<RwLock<OwnedHead>>,
    head: Arc<MetricStore>,
    mut from: u64,
    interval: Duration,
    handoff: &mut watch::Receiver<bool>,
) {
    let partition = lease.partition;
    // The last sequence read into the head (or cut from it and pending).
    let mut last: Option<u64> = None;
    let mut window_start = Instant::now();
    let mut reader = None;
    let mut totals = DeltaTotals::default();
    let mut label_cache = super::LabelCache::default();
    loop {
        let handing_off = *handoff.borrow();
        // A cut block waits for its upload and publish before anything
        // else: the head meanwhile takes nothing more.
        let pending = state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .blocks
            .iter()
            .find(|held| held.published.is_none())
            .map(|held| (held.row.clone(), held.block.clone()));
        if let Some((row, block)) = pending {
            match publish(context, lease, &row, &block).await {
                Ok(()) => {
                    from = row.to;
                    {
                        let mut state = state.write().unwrap_or_else(|e| e.into_inner());
                        for held in state.blocks.iter_mut() {
                            if held.row.block_id == row.block_id {
                                held.published = Some(Instant::now());
                            }
                        }
                        state.blocks.retain(|held| {
                            held.published
                                .is_none_or(|at| at.elapsed() < KEEP_PUBLISHED)
                        });
                    }
                    if let Err(error) = context.log.purge_below(partition, row.to).await {
                        tracing::warn!(partition, %error, "purge failed; the next block's purge covers it");
                    }
                }
                Err(Outcome::Fenced) => return,
                Err(Outcome::Retry) => {
                    context
                        .stats
                        .publish_retries
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            continue;
        }
        let due = last.is_some() && (handing_off || window_start.elapsed() >= interval);
        if due {
            let to = last.map_or(from, |sequence| sequence + 1);
            match cut(context, lease, &head, from, to).await {
                Ok(Some((row, block))) => {
                    let mut state = state.write().unwrap_or_else(|e| e.into_inner());
                    state.head_from = to;
                    state.blocks.push_back(HeldBlock {
                        row,
                        block: Arc::new(block),
                        published: None,
                    });
                    drop(state);
                }
                Ok(None) => {
                    // Nothing but undecodable entries: the checkpoint moves
                    // past them with no block.
                    match context
                        .metastore
                        .advance(&context.node_id, lease, from, to)
                        .await
                    {
                        Ok(()) => {
                            from = to;
                            state.write().unwrap_or_else(|e| e.into_inner()).head_from = to;
                        }
                        Err(PublishSplitError::Fenced { .. }) => return,
                        Err(PublishSplitError::Unavailable(error)) => {
                            tracing::warn!(partition, %error, "moving the checkpoint failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        partition,
                        error = format!("{error:#}"),
                        "cutting a block failed; retrying"
                    );
                    context
                        .stats
                        .publish_retries
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
            last = None;
            continue;
        }
        if handing_off && last.is_none() {
            if let Err(error) = context.metastore.release(&context.node_id, lease).await {
                tracing::warn!(partition, %error, "release failed; the lease expires instead");
            }
            tracing::info!(partition, "handed metrics partition off");
            return;
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
            interval
                .saturating_sub(window_start.elapsed())
                .clamp(Duration::from_millis(20), Duration::from_millis(500))
        };
        let entries = tokio::select! {
            read = reading.next(1000, 8 << 20, wait) => read,
            _ = handoff.changed() => continue,
        };
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(partition, %error, "reading the partition failed; reading again");
                reader = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|entry| entry.sequence >= next)
            .collect();
        let Some(newest) = entries.last().map(|entry| entry.sequence) else {
            continue;
        };
        let stats = context.stats.clone();
        let mut cache = std::mem::take(&mut label_cache);
        let decoded = tokio::task::spawn_blocking(move || {
            let mut decoded = Vec::with_capacity(entries.len());
            for entry in entries {
                match super::decode_samples(&entry.payload, &mut cache) {
                    Ok(message) => decoded.push(message),
                    Err(error) => {
                        tracing::warn!(partition, sequence = entry.sequence, %error, "an undecodable samples message; skipped");
                        stats.entries_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (decoded, cache)
        })
        .await;
        let decoded = match decoded {
            Ok((decoded, cache)) => {
                label_cache = cache;
                decoded
            }
            Err(error) => {
                tracing::error!(partition, %error, "decoding samples failed; giving the partition up");
                return;
            }
        };
        // Delta points become running totals here, where every point of a
        // series meets. A series first seen in this ownership starts from
        // its last total in the partition's blocks (the checkpoint's).
        if let Err(error) = totals.start_unknown(context, partition, &decoded).await {
            tracing::warn!(
                partition,
                error = format!("{error:#}"),
                "reading delta totals from blocks failed; reading the partition again"
            );
            reader = None;
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        if last.is_none() {
            window_start = Instant::now();
        }
        last = Some(newest);
        // Every message read, in stream order, appended as one batch: one
        // write (and fsync) of the head's WAL per read, not per message.
        let mut samples: Vec<(Arc<sightline_tsdb::Labels>, i64, f64)> = Vec::new();
        for message in decoded {
            match message.kind {
                super::Kind::Samples => samples.extend(message.samples),
                super::Kind::Deltas => samples.extend(totals.add(message.samples, &context.stats)),
            }
        }
        let (head, stats) = (head.clone(), context.stats.clone());
        let appended = tokio::task::spawn_blocking(move || {
            let outcome = sightline_tsdb::SampleLog::append_shared(head.as_ref(), &samples)?;
            stats
                .samples_refused
                .fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
            anyhow::Ok(())
        })
        .await;
        match appended {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                // The head's disk failed: start over from the checkpoint.
                tracing::error!(
                    partition,
                    error = format!("{error:#}"),
                    "the head failed; giving the partition up"
                );
                return;
            }
            Err(error) => {
                tracing::error!(partition, %error, "appending to the head stopped; giving the partition up");
                return;
            }
        }
    }
}

enum Outcome {
    Fenced,
    Retry,
}

/// Series with delta points this owner sums, at most this many.
const MAX_DELTA_SERIES: usize = 200_000;

/// How far back a series' last total is looked for in the blocks.
const DELTA_LOOKBACK_MS: i64 = 24 * 3_600_000;

/// The running totals of the delta series of one partition.
#[derive(Default)]
struct DeltaTotals {
    totals: std::collections::HashMap<sightline_tsdb::Labels, f64>,
}

impl DeltaTotals {
    /// Looks up the last total in the partition's blocks of every delta
    /// series of `messages` this owner has no total for.
    async fn start_unknown(
        &mut self,
        context: &Arc<Context>,
        partition: PartitionId,
        messages: &[super::Message],
    ) -> anyhow::Result<()> {
        let unknown: std::collections::BTreeSet<&sightline_tsdb::Labels> = messages
            .iter()
            .filter(|message| message.kind == super::Kind::Deltas)
            .flat_map(|message| message.samples.iter().map(|(labels, _, _)| labels.as_ref()))
            .filter(|labels| !self.totals.contains_key(*labels))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let names: std::collections::BTreeSet<&str> =
            unknown.iter().map(|labels| labels.metric_name()).collect();
        let now_ms = sightline_vocab::clock::now_nanos() / 1_000_000;
        let mut last: std::collections::HashMap<sightline_tsdb::Labels, f64> = Default::default();
        for name in names {
            let matchers = [LabelMatcher::equal(sightline_tsdb::METRIC_NAME, name)];
            for series in context
                .metrics
                .select_blocks(partition, &matchers, now_ms - DELTA_LOOKBACK_MS, i64::MAX)
                .await?
            {
                let value = series
                    .samples
                    .iter()
                    .rev()
                    .map(|(_, value)| *value)
                    .find(|value| !sightline_tsdb::promql::is_stale_nan(*value));
                if let Some(value) = value {
                    last.insert(series.labels, value);
                }
            }
        }
        for labels in unknown {
            if self.totals.len() >= MAX_DELTA_SERIES {
                break;
            }
            let base = last.get(labels).copied().unwrap_or(0.0);
            self.totals.insert(labels.clone(), base);
        }
        Ok(())
    }

    /// Each point's series' total after adding it; points of series over
    /// the limit are refused (counted).
    fn add(
        &mut self,
        samples: Vec<(Arc<sightline_tsdb::Labels>, i64, f64)>,
        stats: &crate::node::NodeStats,
    ) -> Vec<(Arc<sightline_tsdb::Labels>, i64, f64)> {
        let mut out = Vec::with_capacity(samples.len());
        for (labels, timestamp_ms, value) in samples {
            if sightline_tsdb::promql::is_stale_nan(value) {
                out.push((labels, timestamp_ms, value));
                continue;
            }
            let Some(total) = self.totals.get_mut(labels.as_ref()) else {
                stats.samples_refused.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            *total += value;
            out.push((labels, timestamp_ms, *total));
        }
        out
    }
}

/// Cuts the head into a block covering stream sequences `[from, to)`.
async fn cut(
    _context: &Arc<Context>,
    lease: &Lease,
    head: &Arc<MetricStore>,
    from: u64,
    to: u64,
) -> anyhow::Result<Option<(BlockRow, Block)>> {
    let head = head.clone();
    let partition = lease.partition;
    let epoch = lease.epoch;
    tokio::task::spawn_blocking(move || {
        let Some(block) = head.cut_head()? else {
            return Ok(None);
        };
        let meta = block.meta();
        let row = BlockRow {
            block_id: format!("{}-p{partition}-s{from}-e{epoch}", meta.min_ms),
            partition,
            from,
            to,
            min_ms: meta.min_ms,
            max_ms: meta.max_ms,
            series: meta.num_series,
            samples: meta.num_samples,
            bytes: block.bytes(),
        };
        Ok(Some((row, block)))
    })
    .await?
}

/// The object key of a block's file.
pub(crate) fn block_key(block_id: &str, file: &str) -> String {
    format!("blocks/{block_id}/{file}")
}

/// Uploads a block's files (`meta.json` last) and publishes it.
async fn publish(
    context: &Arc<Context>,
    lease: &Lease,
    row: &BlockRow,
    block: &Block,
) -> Result<(), Outcome> {
    let partition = lease.partition;
    let index = match read_files(block.path()).await {
        Ok((series, meta)) => upload_block(context, &row.block_id, series, meta).await,
        Err(error) => Err(error),
    };
    let index = match index {
        Ok(index) => index,
        Err(error) => {
            // The block's samples stay in the stream (not purged below it)
            // until a publish succeeds.
            tracing::warn!(
                partition,
                error = format!("{error:#}"),
                "uploading a cut block failed; retrying"
            );
            return Err(Outcome::Retry);
        }
    };
    match context
        .metastore
        .publish_block(&context.node_id, lease, row)
        .await
    {
        Ok(()) => {
            context
                .stats
                .blocks_published
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(partition, block = %row.block_id, from = row.from, to = row.to, "published block");
            context.metrics.adopt(row, Arc::new(index));
            let dir = block.path().to_path_buf();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            Ok(())
        }
        Err(PublishSplitError::Fenced { .. }) => {
            context.stats.splits_fenced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                partition,
                epoch = lease.epoch,
                from = row.from,
                "block refused by the fence: another node owns the partition now; dropping it"
            );
            if let Err(error) = context
                .storage
                .delete_under(&format!("blocks/{}/", row.block_id))
                .await
            {
                tracing::warn!(partition, %error, "could not delete the refused block's objects");
            }
            Err(Outcome::Fenced)
        }
        Err(PublishSplitError::Unavailable(error)) => {
            tracing::warn!(partition, %error, "publishing a block failed; retrying");
            Err(Outcome::Retry)
        }
    }
}

/// Uploads a block's files under `blocks/<block_id>/` (`meta.json` last),
/// with the `index.bin` readers fetch instead of the whole block (then
/// only the byte ranges of the series they select), and returns that
/// index.
pub(crate) async fn upload_block(
    context: &Context,
    block_id: &str,
    series: Bytes,
    meta: Bytes,
) -> anyhow::Result<BlockIndex> {
    let (name, meta_json, series_bin) = (
        PathBuf::from(block_key(block_id, INDEX_FILE)),
        meta.clone(),
        series.clone(),
    );
    let (index_bytes, index) = tokio::task::spawn_blocking(move || {
        let built = BlockIndex::build(&name, &meta_json, &series_bin)?;
        let index = BlockIndex::decode(&name, &built)?;
        Ok::<_, sightline_tsdb::TsdbError>((Bytes::from(built), index))
    })
    .await??;
    for (file, bytes) in [
        ("series.bin", series),
        (INDEX_FILE, index_bytes),
        ("meta.json", meta),
    ] {
        context
            .storage
            .put(&block_key(block_id, file), bytes)
            .await?;
    }
    Ok(index)
}

/// A block's `meta.json` and `series.bin`, whole.
pub(crate) async fn download_block(
    storage: &crate::splits::SplitStorage,
    block_id: &str,
) -> anyhow::Result<(Bytes, Bytes)> {
    let (meta_key, series_key) = (
        block_key(block_id, "meta.json"),
        block_key(block_id, "series.bin"),
    );
    futures::try_join!(storage.get(&meta_key), storage.get(&series_key))
}

pub(crate) async fn read_files(dir: &Path) -> anyhow::Result<(Bytes, Bytes)> {
    let series = tokio::fs::read(dir.join("series.bin")).await?;
    let meta = tokio::fs::read(dir.join("meta.json")).await?;
    Ok((Bytes::from(series), Bytes::from(meta)))
}
