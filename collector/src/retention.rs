//! Retention of logs and spans: whole days of logs and spans past
//! `--retention` are dropped (the metric store keeps its own, see
//! `sightline_metrics::MetricsPipeline`).

use std::sync::Arc;
use std::time::Duration;

use sightline_store::{LogStore, SpanStore};
use tokio::sync::watch;

use crate::metrics::CollectorMetrics;

/// How often retention looks for partitions to drop.
const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Drops what is older than `retention` every [`CHECK_INTERVAL`] until
/// `stop`.
pub(crate) async fn retention_loop(
    logs: Arc<LogStore>,
    spans: Arc<SpanStore>,
    retention: Duration,
    metrics: Arc<CollectorMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let keep_from = sightline_vocab::clock::now_nanos()
            .saturating_sub(i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX));
        let (logs, spans) = (logs.clone(), spans.clone());
        // Span deletions take effect at the indexer's next commit.
        let dropped = tokio::task::spawn_blocking(move || {
            spans.delete_before(keep_from)?;
            logs.drop_partitions_before(keep_from)
        });
        match dropped.await {
            Ok(Ok(dropped)) if !dropped.is_empty() => {
                tracing::info!(partitions = ?dropped, "retention dropped log partitions");
                metrics.partitions_dropped(dropped.len() as u64);
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "retention failed"),
            Err(error) => tracing::error!(%error, "retention task failed"),
        }
    }
}
