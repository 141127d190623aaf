//! Configuration reload, as Prometheus does it: on `SIGHUP` and on
//! `POST` (or `PUT`) `/-/reload` of the query port.
//!
//! A reload re-reads the config file and the rule files and applies scrape
//! jobs, rules, external labels and URL, Alertmanagers and webhooks (see
//! [`MetricsPipeline::reload`]).
//! Everything is checked before anything is applied: a file that fails to
//! load leaves the running configuration untouched. Command-line flags
//! never change, and `log_metrics` needs a restart. The outcome is exposed
//! as `sightline_config_last_reload_successful` on `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use sightline_metrics::MetricsPipeline;

use crate::metrics::CollectorMetrics;

/// What a reload needs; clones share it.
#[derive(Clone)]
pub(crate) struct Reloader {
    /// Reads the config and rule files and applies them.
    metrics: Arc<MetricsPipeline>,
    /// Where the outcome is counted.
    telemetry: Arc<CollectorMetrics>,
    /// One reload at a time.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    pub(crate) fn new(metrics: Arc<MetricsPipeline>, telemetry: Arc<CollectorMetrics>) -> Reloader {
        Reloader {
            metrics,
            telemetry,
            running: Arc::default(),
        }
    }

    /// Re-reads the config and rule files and applies them, recording the
    /// outcome in the reload metrics; the error names the file and the
    /// problem.
    pub(crate) async fn reload(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.running.lock().await;
        let result = self.metrics.reload().await;
        self.telemetry.config_loaded(result.is_ok());
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "configuration reload failed")
            }
        }
        result
    }

    /// `POST` and `PUT /-/reload`.
    pub(crate) fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/-/reload", post(reload_handler).put(reload_handler))
            .with_state(self.clone())
    }

    /// Reloads on every `SIGHUP` until `stop` turns true.
    pub(crate) async fn on_sighup(
        self,
        hangups: std::io::Result<tokio::signal::unix::Signal>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut hangups = match hangups {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; reload with POST /-/reload");
                return;
            }
        };
        loop {
            let hangup = tokio::select! {
                hangup = hangups.recv() => hangup.is_some(),
                _ = stop.wait_for(|stopped| *stopped) => false,
            };
            if !hangup {
                return;
            }
            // Failures are logged (and counted) by `reload`.
            let _ = self.reload().await;
        }
    }
}

async fn reload_handler(State(reloader): State<Reloader>) -> (StatusCode, String) {
    match reloader.reload().await {
        Ok(()) => (StatusCode::OK, String::new()),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {error:#}\n"),
        ),
    }
}
