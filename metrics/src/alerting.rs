//! Rule evaluation and alert notification.
//!
//! [`Alerting::start`] runs one task per rule group: on the group's interval
//! it evaluates the group on a blocking thread
//! ([`sightline_tsdb::rules::RuleEngine`] reads through the
//! [`MetricReader`] and writes through the [`SampleLog`], the store's or
//! the cluster's), then hands alerts to the [`Notifier`]:
//!
//! - Alertmanager (API v2): firing alerts and recently resolved ones are
//!   POSTed to `{path_prefix}/api/v2/alerts` of every configured target,
//!   again every resend delay, with `endsAt` four resend delays (or
//!   evaluation intervals) ahead, as Prometheus does;
//! - plain webhooks: the Alertmanager webhook payload (`version: "4"`) when
//!   an alert starts firing or resolves.
//!
//! Every alert carries a `generatorURL` and annotations linking into the UI:
//! `sightline_incident_url` (the incident view: the expression's graph with
//! exemplars, the failing requests against a healthy one, the log patterns
//! new since the alert began, the worst request's story),
//! `sightline_logs_url` (the service's logs over the alert window),
//! `sightline_trace_ids` and `sightline_traces_url` (failing, else slowest,
//! traces of the service in that window, from the span store).
//!
//! The notifier's queue is bounded (the oldest notifications are dropped
//! and counted when it is full) and sending happens on its own task with
//! retries, so a slow or dead receiver never delays evaluation.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use sightline_store::{SpanStore, TraceQuery};
use sightline_tsdb::promql::Queryable;
use sightline_tsdb::promql::{Engine, stale_nan};
use sightline_tsdb::rules::ThroughLog;

use crate::share::{Work, WorkShare};
use sightline_tsdb::rules::{EvalSettings, OutgoingAlert, RuleEngine, RuleGroup};
use sightline_tsdb::{Labels, MetricReader, SampleLog};
use sightline_vocab::exposition::{Kind, Writer};
use tokio::sync::{Notify, watch};

use crate::config_file::ConfigFile;

/// Prometheus' default notification queue capacity.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most alerts in one POST.
const MAX_BATCH: usize = 64;
/// Attempts per batch and receiver before the batch is given up.
const ATTEMPTS: u32 = 3;
/// Environment variable that overrides the resend delay (Prometheus'
/// `--rules.alert.resend-delay`), as a duration like `1m` or `500ms`.
pub const RESEND_DELAY_ENV: &str = "SIGHTLINE_ALERT_RESEND_DELAY";
/// How far before an alert became active its log and trace links start.
const LINK_LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// Trace ids per alert.
const TRACE_LINKS: usize = 3;

/// Loads every rule file of `config` (globs relative to the config file's
/// directory, `base_dir`); any bad rule fails the whole load with every
/// problem listed.
pub fn load_rules(config: &ConfigFile, base_dir: &Path) -> anyhow::Result<RuleEngine> {
    Ok(RuleEngine::new(load_rule_groups(config, base_dir)?))
}

/// The rule groups of every rule file of `config`, as [`load_rules`]
/// loads them.
pub fn load_rule_groups(config: &ConfigFile, base_dir: &Path) -> anyhow::Result<Vec<RuleGroup>> {
    let mut groups = Vec::new();
    let mut problems = Vec::new();
    for pattern in &config.rule_files {
        let files = sightline_tsdb::rules::unittest::expand_glob(base_dir, pattern)
            .map_err(|error| anyhow::anyhow!("rule_files: {error}"))?;
        for file in files {
            match sightline_tsdb::rules::load_rule_file(&file, config.global.evaluation_interval) {
                Ok(loaded) => groups.extend(loaded),
                Err(errors) => problems.extend(errors),
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("invalid rule files:\n{}", problems.join("\n"));
    }
    Ok(groups)
}

/// `test rules`: runs promtool-format unit-test files, printing each
/// file's result as promtool does; true when all pass.
pub fn test_rules(files: &[std::path::PathBuf], out: &mut dyn std::io::Write) -> bool {
    let mut passed = true;
    for file in files {
        let report = sightline_tsdb::rules::unittest::run_test_file(file);
        let _ = writeln!(out, "Unit Testing:  {}", file.display());
        if report.passed() {
            let _ = writeln!(out, "  SUCCESS\n");
        } else {
            passed = false;
            let _ = writeln!(out, "  FAILED:");
            for failure in &report.failures {
                let _ = writeln!(out, "    {}", failure.replace('\n', "\n    "));
            }
            let _ = writeln!(out);
        }
    }
    passed
}

/// `check rules`: checks rule files like `promtool check rules`; true when
/// all are valid.
pub fn check_rules(files: &[std::path::PathBuf], out: &mut dyn std::io::Write) -> bool {
    let mut passed = true;
    for file in files {
        let _ = writeln!(out, "Checking {}", file.display());
        match sightline_tsdb::rules::load_rule_file(file, Duration::from_secs(60)) {
            Ok(groups) => {
                let rules: usize = groups.iter().map(|group| group.rules.len()).sum();
                let _ = writeln!(out, "  SUCCESS: {rules} rules found\n");
            }
            Err(errors) => {
                passed = false;
                let _ = writeln!(out, "  FAILED:");
                for error in errors {
                    let _ = writeln!(out, "{error}");
                }
                let _ = writeln!(out);
            }
        }
    }
    passed
}

/// The resend delay: [`RESEND_DELAY_ENV`] when set, else one minute.
pub fn resend_delay_from_env() -> anyhow::Result<Duration> {
    match std::env::var(RESEND_DELAY_ENV) {
        Ok(text) => sightline_tsdb::promql::parse_duration(&text)
            .map_err(|error| anyhow::anyhow!("{RESEND_DELAY_ENV}: {error}")),
        Err(_) => Ok(Duration::from_secs(60)),
    }
}

/// Everything the evaluation loop needs.
pub struct Alerting {
    pub engine: Arc<RuleEngine>,
    /// What rules read (the store, or the cluster's reader) and where their
    /// outputs go (the sample log every writer uses).
    pub reader: Arc<dyn MetricReader>,
    pub log: Arc<dyn SampleLog>,
    /// The groups this collector evaluates (cluster mode: its share).
    pub share: WorkShare,
    pub spans: Arc<SpanStore>,
    /// External labels and URL come from the config file, so a reload
    /// replaces them.
    settings: RwLock<EvalSettings>,
    pub notifier: Arc<Notifier>,
    /// The group tasks running now; a reload stops them and starts others.
    groups: tokio::sync::Mutex<Option<GroupTasks>>,
    /// The rule files' groups and the saved searches' group: each changes
    /// alone (a reload, an alert made), the engine runs both.
    sources: std::sync::Mutex<GroupSources>,
}

#[derive(Default)]
struct GroupSources {
    files: Vec<RuleGroup>,
    saved: Vec<RuleGroup>,
}

/// A checked configuration for [`Alerting::apply`].
pub struct AlertingConfig {
    groups: Vec<RuleGroup>,
    receivers: Receivers,
    external_labels: BTreeMap<String, String>,
    base_url: String,
}

/// One generation of group evaluation tasks.
struct GroupTasks {
    /// The collector's shutdown.
    shutdown: watch::Receiver<bool>,
    /// Stops this generation only.
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Alerting {
    /// Builds the engine and notifier from the config file.
    pub fn from_config(
        config: &ConfigFile,
        base_dir: &Path,
        base_url: String,
        reader: Arc<dyn MetricReader>,
        log: Arc<dyn SampleLog>,
        share: WorkShare,
        spans: Arc<SpanStore>,
    ) -> anyhow::Result<Alerting> {
        let files = load_rule_groups(config, base_dir)?;
        let engine = Arc::new(RuleEngine::new(files.clone()));
        let settings = EvalSettings {
            external_labels: config.global.external_labels.clone(),
            external_url: base_url.clone(),
            resend_delay: resend_delay_from_env()?,
            ..EvalSettings::default()
        };
        let receivers = Receivers::from_config(config, base_url)?;
        let notifier = Arc::new(Notifier::new(receivers, QUEUE_CAPACITY)?);
        Ok(Alerting {
            engine,
            reader,
            log,
            share,
            spans,
            settings: RwLock::new(settings),
            notifier,
            groups: tokio::sync::Mutex::new(None),
            sources: std::sync::Mutex::new(GroupSources {
                files,
                saved: Vec::new(),
            }),
        })
    }

    /// Starts one evaluation task per group and the notifier's sender;
    /// they end when `stop` turns true (or, for the group tasks, at a
    /// reload). Returns the notifier's task.
    pub async fn start(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let notifier = tokio::spawn(self.notifier.clone().run(stop.clone()));
        *self.groups.lock().await = Some(self.start_groups(stop));
        notifier
    }

    fn start_groups(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> GroupTasks {
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..self.engine.len())
            .map(|index| {
                tokio::spawn(
                    self.clone()
                        .group_loop(index, shutdown.clone(), stopped.clone()),
                )
            })
            .collect();
        GroupTasks {
            shutdown,
            stop,
            tasks,
        }
    }

    /// Loads the rule files and checks the alerting section of `config`
    /// for [`Alerting::apply`]; fails, naming the file and the problem,
    /// when one is invalid.
    pub fn prepare(
        config: &ConfigFile,
        base_dir: &Path,
        base_url: String,
    ) -> anyhow::Result<AlertingConfig> {
        Ok(AlertingConfig {
            groups: load_rule_groups(config, base_dir)?,
            receivers: Receivers::from_config(config, base_url.clone())?,
            external_labels: config.global.external_labels.clone(),
            base_url,
        })
    }

    /// Applies prepared rule groups, external labels and URL, Alertmanagers
    /// and webhooks. Rules that stay keep their alerts (see
    /// [`RuleEngine::reload`]): the group tasks finish their evaluation in
    /// flight and stop, the engine swaps groups, new tasks start.
    pub async fn apply(self: &Arc<Self>, prepared: AlertingConfig) {
        let AlertingConfig {
            groups,
            receivers,
            external_labels,
            base_url,
        } = prepared;
        let mut running = self.groups.lock().await;
        self.sources().files = groups;
        self.swap_groups(&mut running).await;
        {
            let mut settings = self.settings.write().unwrap_or_else(|e| e.into_inner());
            settings.external_labels = external_labels;
            settings.external_url = base_url;
        }
        self.notifier.set_receivers(receivers);
    }

    /// Replaces the saved searches' rule group (none: no alerts), keeping
    /// the rule files' groups, as [`Alerting::apply`] does.
    pub async fn set_saved_groups(self: &Arc<Self>, groups: Vec<RuleGroup>) {
        let mut running = self.groups.lock().await;
        self.sources().saved = groups;
        self.swap_groups(&mut running).await;
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, GroupSources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the group tasks (after their evaluation in flight), swaps the
    /// engine's groups for the sources' and starts new tasks.
    async fn swap_groups(self: &Arc<Self>, running: &mut Option<GroupTasks>) {
        let groups = {
            let sources = self.sources();
            sources
                .files
                .iter()
                .chain(&sources.saved)
                .cloned()
                .collect()
        };
        let shutdown = match running.take() {
            Some(generation) => {
                let _ = generation.stop.send(true);
                for task in generation.tasks {
                    let _ = task.await;
                }
                Some(generation.shutdown)
            }
            None => None,
        };
        let ended = self.engine.reload(groups);
        if !ended.is_empty() {
            // Series of removed rules end now, as a removed target's do.
            let now_ms = sightline_vocab::clock::now_nanos() / 1_000_000;
            let markers: Vec<(Labels, i64, f64)> = ended
                .into_iter()
                .map(|labels| (labels, now_ms, stale_nan()))
                .collect();
            let log = self.log.clone();
            let written = tokio::task::spawn_blocking(move || log.append(&markers)).await;
            if let Ok(Err(error)) = written {
                tracing::error!(%error, "failed to write staleness markers of removed rules");
            }
        }
        if let Some(shutdown) = shutdown {
            *running = Some(self.start_groups(shutdown));
        }
    }

    /// Stops the group tasks at once.
    pub async fn abort(&self) {
        if let Some(generation) = self.groups.lock().await.take() {
            for task in generation.tasks {
                task.abort();
            }
        }
    }

    async fn group_loop(
        self: Arc<Self>,
        index: usize,
        mut shutdown: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut interval = tokio::time::interval(self.engine.interval(index));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let key = self.engine.group_key(index);
        let saved_key = crate::search_alerts::group_key();
        // Whether this node evaluated the group at its last tick: a start
        // restores from `ALERTS_FOR_STATE` and a reload keeps the state, so
        // only a group taken over from another node (cluster mode) forgets
        // what this node remembers and restores again.
        let mut evaluating = true;
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            // The saved searches' group is this node's own (its saved
            // searches are in its data directory).
            let owned = key == saved_key || self.share.owns(Work::RuleGroup(&key));
            if owned != evaluating {
                tracing::info!(group = %key, owned, "rule group handed over");
                self.engine.take_over(index);
                evaluating = owned;
            }
            if !owned {
                continue;
            }
            let this = self.clone();
            let evaluated = tokio::task::spawn_blocking(move || {
                let now_ms = sightline_vocab::clock::now_nanos() / 1_000_000;
                let settings = this
                    .settings
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let reader: &dyn Queryable = &*this.reader;
                let outcome = this.engine.evaluate(
                    index,
                    &mut ThroughLog::new(reader, &*this.log),
                    &Engine::default(),
                    now_ms,
                    &settings,
                );
                for rule in &outcome.newly_without_data {
                    tracing::warn!(rule, "rule expression has returned no series for a while");
                }
                let links = |alert: &OutgoingAlert| this.notifier.links(alert, now_ms, &this.spans);
                let to_send: Vec<OutgoingAlert> = outcome.to_send.iter().map(&links).collect();
                let changed: Vec<OutgoingAlert> = outcome.changed.iter().map(&links).collect();
                (to_send, changed)
            })
            .await;
            match evaluated {
                Ok((to_send, changed)) => {
                    self.notifier.enqueue(Destination::Alertmanagers, to_send);
                    self.notifier.enqueue(Destination::Webhooks, changed);
                }
                Err(error) => tracing::error!(%error, "rule evaluation task failed"),
            }
        }
    }
}

/// Where notifications go and what they carry from the config file.
#[derive(Debug, Clone, Default)]
struct Receivers {
    alertmanagers: Vec<Receiver>,
    /// `<scheme>://<target><path_prefix>` of each Alertmanager, for its
    /// other endpoints (silences).
    alertmanager_bases: Vec<String>,
    webhooks: Vec<Receiver>,
    base_url: String,
    external_labels: BTreeMap<String, String>,
}

impl Receivers {
    fn from_config(config: &ConfigFile, base_url: String) -> anyhow::Result<Receivers> {
        let mut alertmanagers = Vec::new();
        let mut alertmanager_bases = Vec::new();
        for group in &config.alerting.alertmanagers {
            if group.api_version != "v2" {
                anyhow::bail!(
                    "alerting.alertmanagers: api_version {:?} is not supported, only v2",
                    group.api_version
                );
            }
            let prefix = group.path_prefix.trim_end_matches('/');
            for target in group
                .static_configs
                .iter()
                .flat_map(|config| &config.targets)
            {
                let base = format!("{}://{target}{prefix}", group.scheme);
                alertmanagers.push(Receiver {
                    url: format!("{base}/api/v2/alerts"),
                    timeout: group.timeout,
                });
                alertmanager_bases.push(base);
            }
        }
        let webhooks = config
            .webhooks
            .iter()
            .map(|webhook| Receiver {
                url: webhook.url.clone(),
                timeout: Duration::from_secs(10),
            })
            .collect();
        Ok(Receivers {
            alertmanagers,
            alertmanager_bases,
            webhooks,
            base_url,
            external_labels: config.global.external_labels.clone(),
        })
    }
}

/// Where a queued alert goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Alertmanagers,
    Webhooks,
}

#[derive(Debug, Clone)]
struct Receiver {
    url: String,
    timeout: Duration,
}

/// A bounded queue of alerts and the task that sends them.
pub struct Notifier {
    queue: Mutex<VecDeque<(Destination, OutgoingAlert)>>,
    capacity: usize,
    wake: Notify,
    /// Replaced on reload; read for each batch.
    receivers: RwLock<Receivers>,
    client: reqwest::Client,
    /// Alerts dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Alerts delivered, counted once per receiver.
    pub sent: AtomicU64,
    /// Batches a receiver refused after every retry.
    pub errors: AtomicU64,
}

impl Notifier {
    fn new(receivers: Receivers, capacity: usize) -> anyhow::Result<Notifier> {
        Ok(Notifier {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            wake: Notify::new(),
            receivers: RwLock::new(receivers),
            client: reqwest::Client::builder()
                .build()
                .context("failed to build the notification HTTP client")?,
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    fn receivers(&self) -> std::sync::RwLockReadGuard<'_, Receivers> {
        self.receivers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends later notifications to `receivers`.
    fn set_receivers(&self, receivers: Receivers) {
        *self.receivers.write().unwrap_or_else(|e| e.into_inner()) = receivers;
    }

    /// Queues alerts without waiting; when full, the oldest go.
    pub fn enqueue(&self, destination: Destination, alerts: Vec<OutgoingAlert>) {
        let no_receiver = match destination {
            Destination::Alertmanagers => self.receivers().alertmanagers.is_empty(),
            Destination::Webhooks => self.receivers().webhooks.is_empty(),
        };
        if alerts.is_empty() || no_receiver {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for alert in alerts {
            if queue.len() >= self.capacity {
                queue.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back((destination, alert));
        }
        drop(queue);
        self.wake.notify_one();
    }

    /// `<scheme>://<target><path_prefix>` of every configured Alertmanager,
    /// as the config file (or its last reload) lists them.
    pub fn alertmanager_bases(&self) -> Vec<String> {
        self.receivers().alertmanager_bases.clone()
    }

    /// The notifier's HTTP client, for the other calls to the same
    /// Alertmanagers.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Alerts waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let batch: Vec<(Destination, OutgoingAlert)> = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let take = queue.len().min(MAX_BATCH);
                queue.drain(..take).collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
            }
            let (to_alertmanagers, to_webhooks): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|(destination, _)| *destination == Destination::Alertmanagers);
            let alerts: Vec<OutgoingAlert> = to_alertmanagers
                .into_iter()
                .map(|(_, alert)| alert)
                .collect();
            if !alerts.is_empty() {
                let body = self.alertmanager_payload(&alerts);
                let receivers = self.receivers().alertmanagers.clone();
                for receiver in &receivers {
                    self.deliver(receiver, &body, alerts.len()).await;
                }
            }
            let alerts: Vec<OutgoingAlert> =
                to_webhooks.into_iter().map(|(_, alert)| alert).collect();
            if !alerts.is_empty() {
                let body = self.webhook_payload(&alerts);
                let receivers = self.receivers().webhooks.clone();
                for receiver in &receivers {
                    self.deliver(receiver, &body, alerts.len()).await;
                }
            }
        }
    }

    async fn deliver(&self, receiver: &Receiver, body: &serde_json::Value, count: usize) {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let result = self
                .client
                .post(&receiver.url)
                .timeout(receiver.timeout)
                .json(body)
                .send()
                .await;
            let error = match result {
                Ok(response) if response.status().is_success() => {
                    self.sent.fetch_add(count as u64, Ordering::Relaxed);
                    return;
                }
                Ok(response) => format!("answered {}", response.status()),
                Err(error) => error.to_string(),
            };
            if attempt == ATTEMPTS {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %receiver.url, %error, alerts = count, "failed to send alerts");
                return;
            }
            tracing::debug!(url = %receiver.url, %error, attempt, "retrying alert notification");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }

    fn labels(&self, alert: &OutgoingAlert) -> BTreeMap<String, String> {
        let mut labels = alert.labels.clone();
        for (name, value) in &self.receivers().external_labels {
            labels.entry(name.clone()).or_insert_with(|| value.clone());
        }
        labels
    }

    /// The body of `POST /api/v2/alerts`.
    pub fn alertmanager_payload(&self, alerts: &[OutgoingAlert]) -> serde_json::Value {
        serde_json::Value::Array(
            alerts
                .iter()
                .map(|alert| {
                    serde_json::json!({
                        "labels": self.labels(alert),
                        "annotations": alert.annotations,
                        "startsAt": rfc3339(alert.starts_at_ms),
                        "endsAt": rfc3339(alert.ends_at_ms),
                        "generatorURL": self.generator_url(alert),
                    })
                })
                .collect(),
        )
    }

    /// The Alertmanager webhook payload (version 4) for plain webhooks.
    pub fn webhook_payload(&self, alerts: &[OutgoingAlert]) -> serde_json::Value {
        let status = if alerts.iter().all(|alert| alert.resolved) {
            "resolved"
        } else {
            "firing"
        };
        let entries: Vec<serde_json::Value> = alerts
            .iter()
            .map(|alert| {
                let labels = self.labels(alert);
                serde_json::json!({
                    "status": if alert.resolved { "resolved" } else { "firing" },
                    "labels": labels,
                    "annotations": alert.annotations,
                    "startsAt": rfc3339(alert.starts_at_ms),
                    "endsAt": if alert.resolved { rfc3339(alert.ends_at_ms) } else { "0001-01-01T00:00:00Z".to_string() },
                    "generatorURL": self.generator_url(alert),
                    "fingerprint": fingerprint(&labels),
                })
            })
            .collect();
        let all_labels: Vec<BTreeMap<String, String>> =
            alerts.iter().map(|alert| self.labels(alert)).collect();
        let all_annotations: Vec<BTreeMap<String, String>> = alerts
            .iter()
            .map(|alert| alert.annotations.clone())
            .collect();
        serde_json::json!({
            "version": "4",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "sightline",
            "groupLabels": {},
            "commonLabels": common(&all_labels),
            "commonAnnotations": common(&all_annotations),
            "externalURL": self.receivers().base_url,
            "alerts": entries,
        })
    }

    /// The UI's view of the rule's expression.
    fn generator_url(&self, alert: &OutgoingAlert) -> String {
        format!(
            "{}/#/alerts?expr={}&alert={}",
            self.receivers().base_url,
            encode(&alert.query),
            encode(&alert.rule)
        )
    }

    /// `alert` with its link annotations added; the span store is searched
    /// here, so this runs on a blocking thread.
    fn links(&self, alert: &OutgoingAlert, now_ms: i64, spans: &SpanStore) -> OutgoingAlert {
        let mut alert = alert.clone();
        let labels: String = alert
            .labels
            .iter()
            .filter(|(name, _)| name.as_str() != "alertname")
            .map(|(name, value)| format!("&label={}", encode(&format!("{name}={value}"))))
            .collect();
        alert.annotations.insert(
            "sightline_incident_url".to_string(),
            format!(
                "{}/#/incident?alert={}&start={}{labels}",
                self.receivers().base_url,
                encode(&alert.rule),
                alert.active_at_ms
            ),
        );
        let Some(service) = ["service", "service_name", "job"]
            .iter()
            .find_map(|name| alert.labels.get(*name).filter(|value| !value.is_empty()))
            .cloned()
        else {
            return alert;
        };
        let start_ms = alert.active_at_ms - LINK_LOOKBACK_MS;
        let end_ms = if alert.resolved {
            alert.ends_at_ms
        } else {
            now_ms
        };
        alert.annotations.insert(
            "sightline_logs_url".to_string(),
            format!(
                "{}/#/logs?q={}&from={start_ms}&to={end_ms}",
                self.receivers().base_url,
                encode(&format!("service:{}", quote_term(&service)))
            ),
        );
        let trace_ids = example_traces(spans, &service, start_ms, end_ms);
        if !trace_ids.is_empty() {
            alert
                .annotations
                .insert("sightline_trace_ids".to_string(), trace_ids.join(","));
        }
        alert.annotations.insert(
            "sightline_traces_url".to_string(),
            format!(
                "{}/#/traces?service={}&errors=1&from={start_ms}&to={end_ms}",
                self.receivers().base_url,
                encode(&service)
            ),
        );
        alert
    }

    /// Counters of the notifier, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let families = [
            (
                "sightline_notifications_dropped_total",
                Kind::Counter,
                "Alerts dropped because the notification queue was full.",
                self.dropped.load(Ordering::Relaxed),
            ),
            (
                "sightline_notifications_sent_total",
                Kind::Counter,
                "Alerts delivered, once per receiver.",
                self.sent.load(Ordering::Relaxed),
            ),
            (
                "sightline_notifications_errors_total",
                Kind::Counter,
                "Batches a receiver refused after every retry.",
                self.errors.load(Ordering::Relaxed),
            ),
            (
                "sightline_notifications_queue_length",
                Kind::Gauge,
                "Alerts waiting to be sent.",
                self.queued() as u64,
            ),
        ];
        let mut text = String::new();
        let mut writer = Writer::new(&mut text);
        for (name, kind, help, value) in families {
            writer.family(name, kind, help);
            writer.sample(name, &[], value);
        }
        text
    }
}

/// Up to [`TRACE_LINKS`] traces of `service` in the window: failing ones,
/// else the slowest.
fn example_traces(spans: &SpanStore, service: &str, start_ms: i64, end_ms: i64) -> Vec<String> {
    let query = |errors_only: bool, limit: usize| TraceQuery {
        service: Some(service.to_string()),
        errors_only,
        start: Some(start_ms.saturating_mul(1_000_000)),
        end: Some(end_ms.saturating_mul(1_000_000)),
        limit,
        ..TraceQuery::default()
    };
    match spans.search_traces(&query(true, TRACE_LINKS)) {
        Ok(failing) if !failing.is_empty() => failing
            .into_iter()
            .take(TRACE_LINKS)
            .map(|trace| trace.trace_id)
            .collect(),
        Ok(_) => match spans.search_traces(&query(false, 200)) {
            Ok(mut all) => {
                all.sort_by_key(|trace| std::cmp::Reverse(trace.duration));
                all.into_iter()
                    .take(TRACE_LINKS)
                    .map(|trace| trace.trace_id)
                    .collect()
            }
            Err(error) => {
                tracing::warn!(%error, service, "trace search for alert links failed");
                Vec::new()
            }
        },
        Err(error) => {
            tracing::warn!(%error, service, "trace search for alert links failed");
            Vec::new()
        }
    }
}

fn quote_term(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace('"', "\\\""))
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    // FNV-1a over the sorted pairs: stable across restarts, like
    // Alertmanager's label-set fingerprint.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in labels {
        for byte in name
            .bytes()
            .chain([0xff])
            .chain(value.bytes())
            .chain([0xff])
        {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn common(maps: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some((first, rest)) = maps.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(name, value)| rest.iter().all(|map| map.get(*name) == Some(*value)))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, resolved: bool) -> OutgoingAlert {
        OutgoingAlert {
            rule: name.to_string(),
            query: "rate(errors[5m]) > 1".to_string(),
            labels: BTreeMap::from([
                ("alertname".to_string(), name.to_string()),
                ("service".to_string(), "payment".to_string()),
            ]),
            annotations: BTreeMap::from([("summary".to_string(), "s".to_string())]),
            active_at_ms: 1_700_000_000_000,
            starts_at_ms: 1_700_000_060_000,
            ends_at_ms: 1_700_000_300_000,
            resolved,
        }
    }

    fn notifier(capacity: usize) -> Notifier {
        let receivers = Receivers {
            alertmanagers: vec![Receiver {
                url: "http://127.0.0.1:1/api/v2/alerts".to_string(),
                timeout: Duration::from_secs(1),
            }],
            alertmanager_bases: vec!["http://127.0.0.1:1".to_string()],
            webhooks: Vec::new(),
            base_url: "http://ui:7070".to_string(),
            external_labels: BTreeMap::from([("cluster".to_string(), "eu".to_string())]),
        };
        Notifier::new(receivers, capacity).unwrap()
    }

    #[test]
    fn the_queue_is_bounded_and_drops_the_oldest() {
        let notifier = notifier(2);
        notifier.enqueue(
            Destination::Alertmanagers,
            vec![alert("A", false), alert("B", false), alert("C", false)],
        );
        assert_eq!(notifier.queued(), 2);
        assert_eq!(notifier.dropped.load(Ordering::Relaxed), 1);
        let queue = notifier.queue.lock().unwrap();
        let names: Vec<&str> = queue.iter().map(|(_, alert)| alert.rule.as_str()).collect();
        assert_eq!(names, vec!["B", "C"]);
        drop(queue);
        // no webhook configured: nothing queued for webhooks
        notifier.enqueue(Destination::Webhooks, vec![alert("D", false)]);
        assert_eq!(notifier.queued(), 2);
    }

    #[test]
    fn new_receivers_apply_to_later_notifications() {
        let notifier = notifier(10);
        notifier.enqueue(Destination::Webhooks, vec![alert("A", false)]);
        assert_eq!(notifier.queued(), 0);
        let config = ConfigFile::parse(
            "global: { external_labels: { cluster: us } }\n\
             external_url: http://new-ui:7070\n\
             webhooks: [{ url: 'http://127.0.0.1:1/hook' }]\n",
        )
        .unwrap();
        notifier.set_receivers(
            Receivers::from_config(&config, "http://new-ui:7070".to_string()).unwrap(),
        );
        notifier.enqueue(Destination::Webhooks, vec![alert("B", false)]);
        assert_eq!(notifier.queued(), 1);
        // No Alertmanager any more.
        notifier.enqueue(Destination::Alertmanagers, vec![alert("C", false)]);
        assert_eq!(notifier.queued(), 1);
        let payload = notifier.webhook_payload(&[alert("B", false)]);
        assert_eq!(payload["externalURL"], "http://new-ui:7070");
        assert_eq!(payload["alerts"][0]["labels"]["cluster"], "us");
    }

    #[test]
    fn payloads_have_alertmanager_shapes() {
        let notifier = notifier(10);
        let body = notifier.alertmanager_payload(&[alert("A", false)]);
        let first = &body[0];
        assert_eq!(first["labels"]["cluster"], "eu");
        assert_eq!(first["labels"]["alertname"], "A");
        assert_eq!(first["startsAt"], "2023-11-14T22:14:20Z");
        assert_eq!(first["endsAt"], "2023-11-14T22:18:20Z");
        assert_eq!(
            first["generatorURL"],
            "http://ui:7070/#/alerts?expr=rate%28errors%5B5m%5D%29%20%3E%201&alert=A"
        );
        let webhook = notifier.webhook_payload(&[alert("A", true), alert("B", true)]);
        assert_eq!(webhook["version"], "4");
        assert_eq!(webhook["status"], "resolved");
        assert_eq!(webhook["commonLabels"]["service"], "payment");
        assert!(webhook["commonLabels"].get("alertname").is_none());
        assert_eq!(webhook["alerts"][1]["status"], "resolved");
        assert_eq!(
            webhook["alerts"][1]["fingerprint"].as_str().unwrap().len(),
            16
        );
    }

    #[test]
    fn links_point_at_the_services_logs_and_failing_traces() {
        let dir = tempfile::tempdir().unwrap();
        let spans = SpanStore::open(dir.path()).unwrap();
        let notifier = notifier(10);
        let now_ms = 1_700_000_400_000;
        let linked = notifier.links(&alert("A", false), now_ms, &spans);
        assert_eq!(
            linked.annotations["sightline_logs_url"],
            "http://ui:7070/#/logs?q=service%3Apayment&from=1699999700000&to=1700000400000"
        );
        assert_eq!(
            linked.annotations["sightline_traces_url"],
            "http://ui:7070/#/traces?service=payment&errors=1&from=1699999700000&to=1700000400000"
        );
        // an empty span store has no example traces
        assert!(!linked.annotations.contains_key("sightline_trace_ids"));
        let incident = &linked.annotations["sightline_incident_url"];
        assert!(
            incident.starts_with("http://ui:7070/#/incident?alert=A&start="),
            "{incident}"
        );
        assert!(incident.contains("&label=service%3Dpayment"), "{incident}");
    }

    #[test]
    fn rule_files_load_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        std::fs::write(
            dir.path().join("rules/a.yml"),
            "groups: [{ name: a, rules: [{ alert: A, expr: vector(1) }] }]",
        )
        .unwrap();
        let config = ConfigFile::parse("rule_files: [\"rules/*.yml\"]").unwrap();
        let engine = load_rules(&config, dir.path()).unwrap();
        assert_eq!(engine.len(), 1);
        std::fs::write(
            dir.path().join("rules/b.yml"),
            "groups: [{ name: b, rules: [{ alert: B, expr: \"sum(\" }] }]",
        )
        .unwrap();
        let error = load_rules(&config, dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("b.yml: group \"b\", rule 1: \"B\""),
            "{error}"
        );
    }

    #[test]
    fn the_rule_tools_pass_good_files_and_fail_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.yml");
        std::fs::write(
            &rules,
            "groups: [{ name: g, rules: [{ alert: Up, expr: up == 1, labels: { severity: info } }] }]",
        )
        .unwrap();
        let bad_rules = dir.path().join("bad.yml");
        std::fs::write(
            &bad_rules,
            "groups: [{ name: g, rules: [{ record: \"a b\", expr: up }] }]",
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(check_rules(std::slice::from_ref(&rules), &mut out));
        assert!(String::from_utf8_lossy(&out).contains("SUCCESS: 1 rules found"));
        let mut out = Vec::new();
        assert!(!check_rules(&[rules.clone(), bad_rules], &mut out));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("invalid recording rule name"), "{text}");

        let test = |expected_job: &str| {
            format!(
                "rule_files: [rules.yml]\ntests:\n  - input_series: [{{ series: 'up{{job=\"api\"}}', values: '1 1 1' }}]\n    alert_rule_test:\n      - eval_time: 1m\n        alertname: Up\n        exp_alerts: [{{ exp_labels: {{ severity: info, job: {expected_job} }} }}]\n"
            )
        };
        let good = dir.path().join("good.test.yml");
        std::fs::write(&good, test("api")).unwrap();
        let failing = dir.path().join("failing.test.yml");
        std::fs::write(&failing, test("web")).unwrap();
        let mut out = Vec::new();
        assert!(test_rules(std::slice::from_ref(&good), &mut out));
        assert!(String::from_utf8_lossy(&out).contains("SUCCESS"));
        let mut out = Vec::new();
        assert!(!test_rules(&[good, failing], &mut out));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("FAILED:") && text.contains("alertname: Up, time: 1m"),
            "{text}"
        );
        assert!(
            text.contains("job=\"web\"") && text.contains("job=\"api\""),
            "{text}"
        );
    }
}
