//! Saved searches' alerts, applied by the metrics pipeline: the query
//! API's [`SearchAlerts`] on the collector's [`MetricsPipeline`], with the
//! log reader a new alert's history is counted from.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use sightline_metrics::MetricsPipeline;
use sightline_query_ui::{SearchAlerts, Searches};
use sightline_store::{LogReader, SavedSearch, SavedSearches};

struct PipelineAlerts {
    metrics: Arc<MetricsPipeline>,
    logs: Arc<dyn LogReader>,
}

impl SearchAlerts for PipelineAlerts {
    fn apply(
        &self,
        searches: Vec<SavedSearch>,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + 'static>> {
        let (metrics, logs) = (self.metrics.clone(), self.logs.clone());
        Box::pin(async move {
            let reports = metrics
                .apply_saved_searches(searches, Some(logs))
                .await
                .map_err(|error| format!("{error:#}"))?;
            Ok(serde_json::to_value(reports).unwrap_or_default())
        })
    }
}

/// Opens the data directory's saved searches and applies their alerts
/// (counters from zero, no history: it was written when each was made).
/// A file this version cannot read stops the start; an alert that cannot
/// be applied is logged and the rest run.
pub(crate) async fn start(
    data_dir: &Path,
    metrics: Arc<MetricsPipeline>,
    logs: Arc<dyn LogReader>,
) -> anyhow::Result<Searches> {
    let path = sightline_store::DataDir::new(data_dir).saved_searches();
    let saved = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || SavedSearches::open(&path)).await??
    };
    let saved = Arc::new(saved);
    let searches = saved.list();
    if searches.iter().any(|search| search.alert.is_some())
        && let Err(error) = metrics.apply_saved_searches(searches, None).await
    {
        tracing::error!(file = %path.display(), error = %format!("{error:#}"), "saved searches' alerts not applied");
    }
    Ok(Searches {
        saved,
        alerts: Arc::new(PipelineAlerts { metrics, logs }),
    })
}
