//! What every node does to keep the bucket and the split list in shape,
//! each step safe with any number of nodes doing it at once:
//!
//! - **Retention**: splits whose newest record or span is older than the
//!   retention (by PostgreSQL's clock) are retired in one statement;
//!   queries stop listing them at once. After `retired_grace` (longer than
//!   a query runs, so none is still reading one) a `DELETE ... RETURNING`
//!   hands each retired row to exactly one node, which deletes its objects.
//!   Blocks of samples go the same way, by their newest sample.
//! - **Janitor**: objects of a split without a row (an upload whose
//!   publish failed or was fenced, a node that died between deleting a row
//!   and its objects) older than `orphan_grace` are deleted. An upload in
//!   progress is younger than that; a publish that is retried uploads its
//!   split again each time.
//! - **Merges**: a partition's owner merges its adjacent small splits once
//!   they are `merge_after` old (ten at most into one), every record
//!   keeping its id; the merged split is published and its inputs retired
//!   in one statement, fenced by the owner's epoch and by every input
//!   still being live. The inputs are then deleted as retired splits are.
//! - **Compaction**: a metrics partition's owner compacts runs of its
//!   adjacent blocks published `merge_after` ago (up to 16, spanning at
//!   most `metrics_compaction_range` together) into one block, each sample
//!   once; published and its inputs retired by the same fenced statement
//!   as a merge, the inputs deleted as retired blocks are.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::metastore::{BlockRow, PublishSplitError, SplitRow};
use crate::node::Context;
use crate::splits;

pub(crate) async fn run(
    context: Arc<Context>,
    retention: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(context.config.lifecycle_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopped.wait_for(|stopped| *stopped) => return,
        }
        if let Err(error) = retire_and_delete(&context, retention).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "split retention failed; retrying"
            );
        }
        if let Err(error) = retire_and_delete_blocks(&context, retention).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "block retention failed; retrying"
            );
        }
        if let Err(error) = collect_orphans(&context).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "the split janitor failed; retrying"
            );
        }
        if let Err(error) = merge_small_splits(&context).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "merging splits failed; retrying"
            );
        }
        if let Err(error) = compact_blocks(&context).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "compacting blocks failed; retrying"
            );
        }
    }
}

async fn retire_and_delete(context: &Context, retention: Duration) -> anyhow::Result<()> {
    let retired = context.metastore.retire_older_than(retention).await?;
    if retired > 0 {
        tracing::info!(splits = retired, "retired splits past retention");
        context
            .stats
            .splits_retired
            .fetch_add(retired, Ordering::Relaxed);
    }
    let deleted = context
        .metastore
        .delete_retired(context.config.retired_grace)
        .await?;
    for split_id in deleted {
        // A failure here leaves objects without a row: the janitor's.
        context.storage.delete(&split_id).await?;
        context.stats.splits_deleted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn retire_and_delete_blocks(context: &Context, retention: Duration) -> anyhow::Result<()> {
    let retired = context
        .metastore
        .retire_blocks_older_than(retention)
        .await?;
    if retired > 0 {
        tracing::info!(blocks = retired, "retired blocks past retention");
        context
            .stats
            .blocks_retired
            .fetch_add(retired, Ordering::Relaxed);
    }
    let deleted = context
        .metastore
        .delete_retired_blocks(context.config.retired_grace)
        .await?;
    for block_id in deleted {
        context
            .storage
            .delete_under(&format!("blocks/{block_id}/"))
            .await?;
        context.stats.blocks_deleted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn collect_orphans(context: &Context) -> anyhow::Result<()> {
    let stored = context.storage.stored_splits().await?;
    if stored.is_empty() {
        return Ok(());
    }
    let now = context.metastore.now().await?;
    let old: Vec<String> = stored
        .into_iter()
        .filter(|(_, written)| {
            now.duration_since(*written)
                .is_ok_and(|age| age > context.config.orphan_grace)
        })
        .map(|(split_id, _)| split_id)
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    let known: std::collections::BTreeSet<String> = context
        .metastore
        .known_splits(&old)
        .await?
        .into_iter()
        .collect();
    for split_id in old.into_iter().filter(|id| !known.contains(id)) {
        tracing::info!(split = %split_id, "deleting an orphaned split upload");
        context.storage.delete(&split_id).await?;
        context
            .stats
            .orphans_deleted
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Inputs of one merge at most.
const MERGE_INPUTS: usize = 10;

async fn merge_small_splits(context: &Context) -> anyhow::Result<()> {
    let config = &context.config;
    for (partition, epoch) in context.metastore.leases_of(&context.node_id).await? {
        let small = context
            .metastore
            .small_splits(partition, config.merge_after, config.merge_split_bytes)
            .await?;
        for group in adjacent_groups(small, config.merge_split_bytes) {
            merge(context, partition, epoch, group).await?;
        }
    }
    Ok(())
}

/// Runs of adjacent splits (each `to` the next `from`), at most
/// [`MERGE_INPUTS`] and about `bytes` together, of two or more.
fn adjacent_groups(splits: Vec<SplitRow>, bytes: u64) -> Vec<Vec<SplitRow>> {
    let mut groups: Vec<Vec<SplitRow>> = Vec::new();
    let mut current: Vec<SplitRow> = Vec::new();
    for split in splits {
        let fits = current.last().is_some_and(|last| last.to == split.from)
            && current.len() < MERGE_INPUTS
            && current.iter().map(|s| s.bytes).sum::<u64>() + split.bytes <= bytes;
        if !fits && !current.is_empty() {
            groups.push(std::mem::take(&mut current));
        }
        current.push(split);
    }
    groups.push(current);
    groups.retain(|group| group.len() >= 2);
    groups
}

async fn merge(
    context: &Context,
    partition: sightline_store::PartitionId,
    epoch: i64,
    inputs: Vec<SplitRow>,
) -> anyhow::Result<()> {
    let opened = context.reader.open_splits(inputs.clone()).await?;
    let work_dir = context.work_dir.clone();
    let merged = tokio::task::spawn_blocking(move || {
        let parts: Vec<_> = opened
            .iter()
            .map(|split| (&split.row, &split.logs, &split.spans))
            .collect();
        splits::merge(&work_dir, partition, epoch, &parts)
    })
    .await??;
    context.storage.upload(&merged).await?;
    let ids: Vec<String> = inputs.iter().map(|row| row.split_id.clone()).collect();
    match context
        .metastore
        .publish_merge(&context.node_id, epoch, &ids, &merged.meta.row)
        .await
    {
        Ok(()) => {
            tracing::info!(partition, split = %merged.meta.row.split_id, inputs = ids.len(), "merged splits");
            context.stats.splits_merged.fetch_add(1, Ordering::Relaxed);
            let splits::LocalSplit { dir, meta, .. } = merged;
            context.reader.adopt(&meta.row, dir.keep()).await;
            Ok(())
        }
        Err(PublishSplitError::Fenced { .. }) => {
            // Another owner now, or an input already gone: not ours to merge.
            tracing::info!(
                partition,
                "a merge was not published: the partition or its inputs changed"
            );
            context.storage.delete(&merged.meta.row.split_id).await
        }
        Err(error) => Err(error.into()),
    }
}

/// Inputs of one compaction at most.
const COMPACTION_INPUTS: usize = 16;

async fn compact_blocks(context: &Context) -> anyhow::Result<()> {
    let config = &context.config;
    for (partition, epoch) in context.metastore.leases_of(&context.node_id).await? {
        if !crate::partition::is_metrics(partition) {
            continue;
        }
        let blocks = context
            .metastore
            .compactable_blocks(partition, config.merge_after)
            .await?;
        for group in compaction_groups(blocks, config.metrics_compaction_range) {
            compact(context, partition, epoch, group).await?;
        }
    }
    Ok(())
}

/// Runs of adjacent blocks (each `to` the next `from`), at most
/// [`COMPACTION_INPUTS`], spanning at most `range` together, of two or
/// more: a block that spans `range` already is never an input again.
fn compaction_groups(blocks: Vec<BlockRow>, range: Duration) -> Vec<Vec<BlockRow>> {
    let range_ms = i64::try_from(range.as_millis()).unwrap_or(i64::MAX);
    let span = |group: &[BlockRow], next: &BlockRow| {
        let min = group.iter().map(|b| b.min_ms).chain([next.min_ms]).min();
        let max = group.iter().map(|b| b.max_ms).chain([next.max_ms]).max();
        max.unwrap_or(0).saturating_sub(min.unwrap_or(0))
    };
    let mut groups: Vec<Vec<BlockRow>> = Vec::new();
    let mut current: Vec<BlockRow> = Vec::new();
    for block in blocks {
        let fits = current.last().is_some_and(|last| last.to == block.from)
            && current.len() < COMPACTION_INPUTS
            && span(&current, &block) < range_ms;
        if !fits && !current.is_empty() {
            groups.push(std::mem::take(&mut current));
        }
        if block.max_ms.saturating_sub(block.min_ms) < range_ms {
            current.push(block);
        }
    }
    groups.push(current);
    groups.retain(|group| group.len() >= 2);
    groups
}

/// Downloads `inputs` whole (every sample is rewritten), compacts them,
/// uploads the result with its index and publishes it in their place.
async fn compact(
    context: &Context,
    partition: sightline_store::PartitionId,
    epoch: i64,
    inputs: Vec<BlockRow>,
) -> anyhow::Result<()> {
    use crate::metrics::owner::{block_key, download_block, read_files, upload_block};
    let mut files = Vec::with_capacity(inputs.len());
    for row in &inputs {
        let (meta, series) = download_block(&context.storage, &row.block_id).await?;
        files.push((block_key(&row.block_id, "series.bin"), meta, series));
    }
    let work = tempfile::tempdir_in(&context.work_dir)?;
    let parent = work.path().to_path_buf();
    // Decoding, compacting and reading the result back are all blocking.
    let (path, meta, bytes) = tokio::task::spawn_blocking(move || {
        let blocks = files
            .iter()
            .map(|(name, meta, series)| {
                sightline_tsdb::Block::decode(std::path::Path::new(name), meta, series)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let blocks: Vec<&sightline_tsdb::Block> = blocks.iter().collect();
        let path = sightline_tsdb::Block::compact(&parent, &blocks)?;
        let compacted = sightline_tsdb::Block::open(&path)?;
        Ok::<_, sightline_tsdb::TsdbError>((path, compacted.meta().clone(), compacted.bytes()))
    })
    .await??;
    let (first, last) = (&inputs[0], &inputs[inputs.len() - 1]);
    let row = BlockRow {
        block_id: format!(
            "{}-p{partition}-s{}-e{epoch}-c{}",
            meta.min_ms, first.from, last.to
        ),
        partition,
        from: first.from,
        to: last.to,
        min_ms: meta.min_ms,
        max_ms: meta.max_ms,
        series: meta.num_series,
        samples: meta.num_samples,
        bytes,
    };
    let (series, meta) = read_files(&path).await?;
    let index = upload_block(context, &row.block_id, series, meta).await?;
    let ids: Vec<String> = inputs.iter().map(|row| row.block_id.clone()).collect();
    match context
        .metastore
        .publish_compaction(&context.node_id, epoch, &ids, &row)
        .await
    {
        Ok(()) => {
            tracing::info!(partition, block = %row.block_id, inputs = ids.len(), "compacted blocks");
            context
                .stats
                .blocks_compacted
                .fetch_add(1, Ordering::Relaxed);
            context.metrics.adopt(&row, Arc::new(index));
            Ok(())
        }
        Err(PublishSplitError::Fenced { .. }) => {
            tracing::info!(
                partition,
                "a compaction was not published: the partition or its inputs changed"
            );
            context
                .storage
                .delete_under(&format!("blocks/{}/", row.block_id))
                .await
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(from: u64, to: u64, bytes: u64) -> SplitRow {
        SplitRow {
            split_id: format!("p00-{from}-{to}"),
            partition: 0,
            from,
            to,
            min_time: 0,
            max_time: 0,
            logs: 1,
            spans: 0,
            bytes,
        }
    }

    #[test]
    fn only_runs_of_adjacent_small_splits_are_merged() {
        let groups = adjacent_groups(
            vec![
                split(1, 5, 10),
                split(5, 9, 10),
                split(9, 12, 10),
                // A gap: an input of a merge still running, or a big split.
                split(20, 25, 10),
                split(30, 31, 10),
                split(31, 40, 95),
            ],
            100,
        );
        let ranges: Vec<Vec<(u64, u64)>> = groups
            .iter()
            .map(|group| group.iter().map(|s| (s.from, s.to)).collect())
            .collect();
        assert_eq!(ranges, [vec![(1, 5), (5, 9), (9, 12)]]);
        let many: Vec<SplitRow> = (0..25).map(|n| split(n, n + 1, 1)).collect();
        let sizes: Vec<usize> = adjacent_groups(many, 100).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
    }

    fn block(from: u64, to: u64, min_ms: i64, max_ms: i64) -> BlockRow {
        BlockRow {
            block_id: format!("{min_ms}-p64-s{from}-e1"),
            partition: 64,
            from,
            to,
            min_ms,
            max_ms,
            series: 1,
            samples: 1,
            bytes: 1,
        }
    }

    #[test]
    fn runs_of_adjacent_blocks_within_the_range_are_compacted() {
        const HOUR: i64 = 3_600_000;
        let range = Duration::from_secs(6 * 3600);
        let groups = compaction_groups(
            vec![
                // Three 2-hour blocks, then one that would make the run
                // span more than 6 hours: it starts the next run.
                block(0, 10, 0, 2 * HOUR - 1),
                block(10, 20, 2 * HOUR, 4 * HOUR - 1),
                block(20, 30, 4 * HOUR, 6 * HOUR - 2),
                block(30, 40, 6 * HOUR, 8 * HOUR - 1),
                block(40, 50, 8 * HOUR, 10 * HOUR - 1),
                // A gap in the sequences (an input of a compaction still
                // running): not adjacent.
                block(60, 70, 10 * HOUR, 11 * HOUR),
                // A block spanning the range already is never an input.
                block(70, 80, 11 * HOUR, 18 * HOUR),
                block(80, 90, 18 * HOUR, 19 * HOUR),
            ],
            range,
        );
        let runs: Vec<Vec<u64>> = groups
            .iter()
            .map(|group| group.iter().map(|block| block.from).collect())
            .collect();
        assert_eq!(runs, [vec![0, 10, 20], vec![30, 40]]);
        let many: Vec<BlockRow> = (0..40)
            .map(|n| block(n, n + 1, n as i64 * 1000, n as i64 * 1000 + 999))
            .collect();
        let sizes: Vec<usize> = compaction_groups(many, range)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [16, 16, 8]);
    }
}
