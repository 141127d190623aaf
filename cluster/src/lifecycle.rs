//! What every node does to keep the bucket and the split list in shape,
//! each step safe with any number of nodes doing it at once:
//!
//! - **Retention**: splits whose newest record or span is older than the
//!   retention (by PostgreSQL's clock) are retired in one statement;
//!   queries stop listing them at once. After `retired_grace` (longer than
//!   a query runs, so none is still reading one) a `DELETE ... RETURNING`
//!   hands each retired row to exactly one node, which deletes its objects.
//! - **Janitor**: objects of a split without a row (an upload whose
//!   publish failed or was fenced, a node that died between deleting a row
//!   and its objects) older than `orphan_grace` are deleted. An upload in
//!   progress is younger than that; a publish that is retried uploads its
//!   split again each time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::node::Context;

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
        if let Err(error) = collect_orphans(&context).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "the split janitor failed; retrying"
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
