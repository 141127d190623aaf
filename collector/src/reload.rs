//! Configuration reload, as Prometheus does it: on `SIGHUP` and on
//! `POST` (or `PUT`) `/-/reload` of the query port.
//!
//! A reload re-reads the config file and the rule files and applies scrape
//! jobs, rules, external labels and URL, Alertmanagers and webhooks (see
//! [`sightline_metrics::scrape::Scraper::reload`] and [`sightline_metrics::alerting::Alerting::apply`]).
//! Everything is checked before anything is applied: a file that fails to
//! load leaves the running configuration untouched. Command-line flags
//! never change, and `log_metrics` needs a restart. The outcome is exposed
//! as `sightline_config_last_reload_successful` on `/metrics`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use crate::metrics::CollectorMetrics;
use sightline_metrics::alerting::Alerting;
use sightline_metrics::config_file::ConfigFile;
use sightline_metrics::scrape::{self, Scraper, SelfScrape};

/// What a reload needs; clones share it.
#[derive(Clone)]
pub struct Reloader {
    /// The `--config` file; without one a reload has nothing to read.
    pub config: Option<PathBuf>,
    /// Where relative paths of the config file start.
    pub config_dir: PathBuf,
    pub self_scrape: SelfScrape,
    /// The UI's URL when the config file sets no `external_url`.
    pub default_base_url: String,
    pub scraper: Scraper,
    pub alerting: Arc<Alerting>,
    pub metrics: Arc<CollectorMetrics>,
    /// The `log_metrics` section the collector started with (its debug
    /// form): log-derived metrics need a restart, a reload only warns.
    pub log_metrics: String,
    /// One reload at a time.
    pub running: Arc<tokio::sync::Mutex<()>>,
}

impl Reloader {
    /// Re-reads the config and rule files and applies them, recording the
    /// outcome in the reload metrics; the error names the file and the
    /// problem.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.running.lock().await;
        let result = self.load_and_apply().await;
        self.metrics.config_loaded(result.is_ok());
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "configuration reload failed")
            }
        }
        result
    }

    async fn load_and_apply(&self) -> anyhow::Result<()> {
        let config_file = match &self.config {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || ConfigFile::load(&path))
                    .await
                    .context("config loading task failed")??
            }
            None => ConfigFile::default(),
        };
        for key in config_file.ignored() {
            tracing::warn!(key, "config file key not supported by Sightline; ignored");
        }
        if format!("{:?}", config_file.log_metrics) != self.log_metrics {
            tracing::warn!("log_metrics changed; they apply at the next restart");
        }
        let base_url = match &config_file.external_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => self.default_base_url.clone(),
        };
        let alerting = {
            let (config_file, config_dir) = (config_file.clone(), self.config_dir.clone());
            tokio::task::spawn_blocking(move || {
                Alerting::prepare(&config_file, &config_dir, base_url)
            })
            .await
            .context("rule loading task failed")??
        };
        let jobs = scrape::jobs_from_config(&config_file, &self.config_dir, Some(self.self_scrape));
        self.scraper.reload(jobs).await?;
        self.alerting.apply(alerting).await;
        Ok(())
    }

    /// `POST` and `PUT /-/reload`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/-/reload", post(reload_handler).put(reload_handler))
            .with_state(self.clone())
    }

    /// Reloads on every `SIGHUP` until `stop` turns true.
    pub async fn on_sighup(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
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
