//! One target and its scrape loop: fetch, parse, label, append, report.
//!
//! Each scrape appends, in one durable batch: the scraped samples labelled
//! with the target's labels, staleness markers for series of the previous
//! scrape that are gone (all of them when the scrape failed), and the
//! synthetic series `up`, `scrape_duration_seconds`, `scrape_samples_scraped`,
//! `scrape_samples_post_metric_relabeling` and `scrape_series_added`. Parsing
//! and the append run on a blocking thread. Exemplars of the kept samples
//! go to the store's bounded exemplar store after the batch is durable
//! (their time is the scrape's unless they carry their own).
//!
//! A job's `metric_relabel_configs` apply to each sample after the target's
//! labels are attached: dropped series are not stored, `sample_limit`
//! counts the kept ones, and a series left without a valid metric name or
//! with an invalid label name fails the scrape, as in Prometheus. Without
//! rules the per-sample path does no relabeling work at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sightline_tsdb::promql::stale_nan;
use sightline_tsdb::{Exemplar, Labels, METRIC_NAME, MetricMetadata, SampleLog};
use sightline_vocab::clock::now_ms;
use tokio::sync::watch;

use super::client::HttpClient;
use super::parse::{ACCEPT_HEADER, Format, SAMPLE_LIMIT_EXCEEDED, decode_utf8, parse_known};
use super::relabel::{self, Relabel};
use crate::share::{Work, WorkShare};

/// The largest scrape body accepted, after decompression.
pub const MAX_BODY_BYTES: usize = 128 << 20;

/// `sample_limit` when a job sets none: a target exposing more fails its
/// scrape instead of holding millions of parsed samples in memory.
pub const DEFAULT_SAMPLE_LIMIT: usize = 200_000;

/// Prometheus' per-scrape limits. Past any of them the whole scrape fails
/// (`up` is 0, the error names the limit) and nothing of it is stored.
/// Zero means no limit, as in Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScrapeLimits {
    pub sample_limit: usize,
    pub label_limit: usize,
    pub label_name_length_limit: usize,
    pub label_value_length_limit: usize,
}

impl Default for ScrapeLimits {
    fn default() -> ScrapeLimits {
        ScrapeLimits {
            sample_limit: DEFAULT_SAMPLE_LIMIT,
            label_limit: 0,
            label_name_length_limit: 0,
            label_value_length_limit: 0,
        }
    }
}

impl ScrapeLimits {
    /// Why `labels` break a label limit, if they do.
    fn check_labels(&self, labels: &Labels) -> Result<(), String> {
        let count = labels.len();
        if self.label_limit > 0 && count > self.label_limit {
            return Err(format!(
                "label_limit exceeded: a series of {} has {count} labels, limit {}",
                labels.metric_name(),
                self.label_limit
            ));
        }
        for (name, value) in labels.iter() {
            if self.label_name_length_limit > 0 && name.len() > self.label_name_length_limit {
                return Err(format!(
                    "label_name_length_limit exceeded: a label name of {} has {} bytes, limit {}",
                    labels.metric_name(),
                    name.len(),
                    self.label_name_length_limit
                ));
            }
            if self.label_value_length_limit > 0 && value.len() > self.label_value_length_limit {
                return Err(format!(
                    "label_value_length_limit exceeded: value of label {name} has {} bytes, limit {}",
                    value.len(),
                    self.label_value_length_limit
                ));
            }
        }
        Ok(())
    }
}

/// The series every scrape adds about itself, in this order.
pub const SYNTHETIC_SERIES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// A target: where to scrape, how often, and the labels its series get.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub job: String,
    /// `job`, `instance` and the group's labels (none starting with `__`).
    pub labels: Labels,
    /// The labels before `__`-prefixed ones were dropped.
    pub discovered_labels: BTreeMap<String, String>,
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub limits: ScrapeLimits,
    /// The job's `metric_relabel_configs`, applied to every scraped series.
    pub metric_relabel: Arc<[Relabel]>,
}

impl Target {
    /// Where in each interval this target is scraped: a fixed offset from
    /// a hash of the target, so targets spread over the interval and keep
    /// their slot across restarts.
    pub fn offset(&self, now: SystemTime) -> Duration {
        let interval_ms = self.interval.as_millis().max(1) as u64;
        let mut hasher = std::hash::DefaultHasher::new();
        self.url.hash(&mut hasher);
        self.labels.hash(&mut hasher);
        let slot = hasher.finish() % interval_ms;
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let until_aligned = interval_ms - now_ms % interval_ms;
        Duration::from_millis((until_aligned + slot) % interval_ms)
    }
}

/// How the last scrape went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    Unknown,
    Up,
    Down,
}

impl Health {
    /// As Prometheus' API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// A target's observable state, read by `/api/v1/targets`.
#[derive(Debug, Clone, Default)]
pub struct TargetHealth {
    pub health: Health,
    /// Why the last scrape failed; empty when it did not.
    pub last_error: String,
    pub last_scrape: Option<SystemTime>,
    pub last_scrape_duration: Duration,
    /// Samples the store refused (out of order, duplicate), since start.
    pub samples_rejected: u64,
    /// The last refusal's reason.
    pub last_rejection: String,
    /// Samples appended by the last scrape, synthetic series included.
    pub last_samples_appended: usize,
    /// Samples appended since start.
    pub samples_appended: u64,
}

/// A running target: its definition and health.
#[derive(Debug)]
pub struct TargetStatus {
    pub target: Target,
    pub health: Mutex<TargetHealth>,
}

impl TargetStatus {
    /// A copy of the current health.
    pub fn health(&self) -> TargetHealth {
        self.health
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}

/// What one scrape fetched: the body and its format, or why not.
type Fetched = Result<(Vec<u8>, bool, Format), String>;

/// State kept from one scrape to the next.
#[derive(Default)]
struct LoopState {
    /// Series of the last scrape (by hash of their labels), for staleness.
    previous: HashMap<u64, Arc<Labels>>,
    /// Metadata already given to the store.
    metadata: BTreeMap<String, MetricMetadata>,
    /// The scrape cache, as Prometheus keeps one per target: the series
    /// text of an exposition line (`name{labels}` as written) to the label
    /// set it became (target labels added, relabeled, checked) and its
    /// hash, or `None` when relabeling dropped it. A known series skips
    /// label parsing, relabeling, sorting and hashing. Only the series of
    /// the last successful scrape are kept, so it is as bounded as a scrape.
    cache: HashMap<String, Cached>,
    /// The number of the current scrape, to drop what it did not see.
    generation: u64,
}

struct Cached {
    series: Option<(Arc<Labels>, u64)>,
    seen: u64,
}

/// Scrapes `status.target` every interval until `remove` fires (then marks
/// every series stale) or `shutdown` does (then just stops).
pub(crate) async fn run(
    status: Arc<TargetStatus>,
    store: Arc<dyn SampleLog>,
    share: WorkShare,
    client: HttpClient,
    mut remove: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let target = &status.target;
    let start = tokio::time::Instant::now() + target.offset(SystemTime::now());
    let mut ticker = tokio::time::interval_at(start, target.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut state = LoopState::default();
    // Each node's own metrics are its own to scrape; other targets are
    // scraped by the node whose share they are (every node, embedded).
    let key = target.labels.to_string();
    let always = target.job == super::SELF_JOB;
    let mut scraping = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = remove.wait_for(|removed| *removed) => break,
            _ = shutdown.wait_for(|stopped| *stopped) => return,
        }
        if !always && !share.owns(Work::ScrapeTarget(&key)) {
            if scraping {
                // Handed to another node, which goes on with the series
                // (no staleness markers: they would cut them).
                tracing::info!(url = %target.url, "target scraped by another node now");
                state = LoopState::default();
                scraping = false;
                let mut health = status
                    .health
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                health.health = Health::Unknown;
                health.last_error = "scraped by another node of the cluster".into();
            }
            continue;
        }
        scraping = true;
        state = scrape_once(&status, &store, &client, state).await;
    }
    if !scraping {
        return;
    }
    // Removed from discovery: its series end now, synthetic ones included.
    let timestamp_ms = now_ms();
    let mut markers: Vec<(Arc<Labels>, i64, f64)> = state
        .previous
        .into_values()
        .map(|labels| (labels, timestamp_ms, stale_nan()))
        .collect();
    for name in SYNTHETIC_SERIES {
        let mut labels = target.labels.clone();
        labels.set(METRIC_NAME, name);
        markers.push((Arc::new(labels), timestamp_ms, stale_nan()));
    }
    let appended = tokio::task::spawn_blocking(move || store.append_shared(&markers)).await;
    if let Ok(Err(error)) = appended {
        tracing::error!(url = %target.url, %error, "failed to write staleness markers");
    }
}

async fn scrape_once(
    status: &Arc<TargetStatus>,
    store: &Arc<dyn SampleLog>,
    client: &HttpClient,
    state: LoopState,
) -> LoopState {
    let target = status.target.clone();
    let scrape_time = SystemTime::now();
    let started = Instant::now();
    let fetched = match tokio::time::timeout(target.timeout, fetch(client, &target)).await {
        Ok(fetched) => fetched,
        Err(_) => Err(format!(
            "scrape timed out after {}",
            humantime::format_duration(target.timeout)
        )),
    };
    let duration = started.elapsed();
    let store = store.clone();
    let ingest = tokio::task::spawn_blocking(move || {
        ingest(&target, fetched, scrape_time, duration, state, &*store)
    });
    let (state, report) = match ingest.await {
        Ok(done) => done,
        Err(error) => {
            tracing::error!(%error, "scrape task failed");
            (LoopState::default(), Report::failed(error.to_string()))
        }
    };
    let mut health = status
        .health
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    health.health = if report.error.is_none() {
        Health::Up
    } else {
        Health::Down
    };
    health.last_error = report.error.unwrap_or_default();
    health.last_scrape = Some(scrape_time);
    health.last_scrape_duration = duration;
    health.samples_rejected += report.rejected as u64;
    if let Some(rejection) = report.last_rejection {
        health.last_rejection = rejection;
    }
    health.last_samples_appended = report.appended;
    health.samples_appended += report.appended as u64;
    state
}

async fn fetch(client: &HttpClient, target: &Target) -> Fetched {
    let response = client
        .get(&target.url)?
        .header(reqwest::header::ACCEPT, ACCEPT_HEADER)
        .header(reqwest::header::ACCEPT_ENCODING, "gzip")
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", target.timeout.as_secs_f64()),
        )
        .timeout(target.timeout)
        .send()
        .await
        .map_err(|error| describe(&error))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("server returned HTTP status {status}"));
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
            .map(str::to_string)
    };
    let format = Format::from_content_type(header(reqwest::header::CONTENT_TYPE).as_deref());
    let gzip = header(reqwest::header::CONTENT_ENCODING).is_some_and(|value| value == "gzip");
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| describe(&error))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("body larger than {MAX_BODY_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, gzip, format))
}

/// An error with its causes, which is where reqwest says what went wrong.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What one scrape did.
#[derive(Debug, Default)]
struct Report {
    error: Option<String>,
    appended: usize,
    rejected: usize,
    last_rejection: Option<String>,
}

impl Report {
    fn failed(error: String) -> Report {
        Report {
            error: Some(error),
            ..Report::default()
        }
    }
}

fn ingest(
    target: &Target,
    fetched: Fetched,
    scrape_time: SystemTime,
    duration: Duration,
    mut state: LoopState,
    store: &dyn SampleLog,
) -> (LoopState, Report) {
    let timestamp_ms = scrape_time
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as i64)
        .unwrap_or(0);
    let sample_limit = match target.limits.sample_limit {
        0 => usize::MAX,
        limit => limit,
    };
    let relabeling = !target.metric_relabel.is_empty();
    let rewriting = relabel::may_rewrite(&target.metric_relabel);
    let text = fetched.and_then(|(body, gzip, format)| {
        let body = if gzip { gunzip(&body)? } else { body };
        let text = decode_utf8(body).map_err(|error| error.to_string())?;
        Ok((text, format))
    });
    // As in Prometheus, the limit counts the samples kept by
    // `metric_relabel_configs`; with rules, the parser's memory is
    // bounded by the body size instead, and the loop below counts.
    let parse_limit = if relabeling { usize::MAX } else { sample_limit };
    let cache = &state.cache;
    let exposition = match &text {
        Ok((text, format)) => parse_known(text, *format, parse_limit, &|series| {
            cache.contains_key(series)
        })
        .map_err(|error| {
            if error.message == SAMPLE_LIMIT_EXCEEDED {
                format!("{SAMPLE_LIMIT_EXCEEDED}: more than {sample_limit} samples (sample_limit)")
            } else {
                error.to_string()
            }
        }),
        Err(error) => Err(error.clone()),
    };
    state.generation += 1;
    let generation = state.generation;
    let mut batch: Vec<(Arc<Labels>, i64, f64)> = Vec::new();
    let mut exemplars: Vec<(Arc<Labels>, Exemplar)> = Vec::new();
    // Which samples of the batch count for staleness (those without
    // their own timestamp), by index.
    let mut tracked: Vec<(usize, u64)> = Vec::new();
    let mut scraped = 0;
    let mut kept = 0;
    let mut over_limit = None;
    let saw_series = exposition.is_ok();
    let error = match exposition {
        Ok(exposition) => {
            scraped = exposition.samples.len();
            batch.reserve(scraped + state.previous.len().min(scraped) + 5);
            tracked.reserve(scraped);
            for sample in exposition.samples {
                let series = match state.cache.get_mut(sample.series) {
                    Some(cached) => {
                        cached.seen = generation;
                        cached.series.clone()
                    }
                    None => {
                        let mut labels = with_target_labels(sample.labels, target);
                        let kept = !relabeling
                            || (relabel::process(&target.metric_relabel, &mut labels)
                                && !labels.is_empty());
                        if kept
                            && rewriting
                            && let Err(invalid) = relabel::check_series(&labels)
                        {
                            over_limit = Some(invalid);
                            break;
                        }
                        if kept && let Err(limit) = target.limits.check_labels(&labels) {
                            over_limit = Some(limit);
                            break;
                        }
                        let series = kept.then(|| {
                            let hash = hash_labels(&labels);
                            (Arc::new(labels), hash)
                        });
                        state.cache.insert(
                            sample.series.to_string(),
                            Cached {
                                series: series.clone(),
                                seen: generation,
                            },
                        );
                        series
                    }
                };
                let Some((labels, hash)) = series else {
                    continue;
                };
                if relabeling && batch.len() >= sample_limit {
                    over_limit = Some(format!(
                        "{SAMPLE_LIMIT_EXCEEDED}: more than {sample_limit} samples (sample_limit)"
                    ));
                    break;
                }
                let own_timestamp = sample.timestamp_ms.filter(|_| target.honor_timestamps);
                if own_timestamp.is_none() {
                    tracked.push((batch.len(), hash));
                }
                let sample_ms = own_timestamp.unwrap_or(timestamp_ms);
                if let Some(exemplar) = sample.exemplar {
                    let exemplar = Exemplar {
                        labels: Labels::new(exemplar.labels),
                        value: exemplar.value,
                        timestamp_ms: exemplar.timestamp_ms.unwrap_or(sample_ms),
                    };
                    exemplars.push((labels.clone(), exemplar));
                }
                batch.push((labels, sample_ms, sample.value));
            }
            kept = batch.len();
            let changed: Vec<(String, MetricMetadata)> = exposition
                .metadata
                .into_iter()
                .filter(|(name, metadata)| state.metadata.get(name) != Some(metadata))
                .collect();
            for (name, metadata) in changed {
                store.set_metadata(&name, metadata.clone());
                state.metadata.insert(name, metadata);
            }
            None
        }
        Err(error) => Some(error),
    };
    // A label limit fails the whole scrape, as a parse error does.
    let error = match over_limit {
        Some(limit) => {
            batch.clear();
            tracked.clear();
            exemplars.clear();
            Some(limit)
        }
        None => error,
    };
    // Only the series this scrape saw stay cached: also after a scrape that
    // failed half-way (a label limit), so a target that keeps failing with
    // new series cannot grow the cache. A fetch or parse failure saw
    // nothing and added nothing: the cache stays for the next scrape.
    if saw_series {
        state.cache.retain(|_, cached| cached.seen == generation);
    }
    let current: HashSet<u64> = tracked.iter().map(|(_, hash)| *hash).collect();
    let series_added = current
        .iter()
        .filter(|hash| !state.previous.contains_key(hash))
        .count();
    for (hash, labels) in &state.previous {
        if !current.contains(hash) {
            batch.push((labels.clone(), timestamp_ms, stale_nan()));
        }
    }
    let up = if error.is_none() { 1.0 } else { 0.0 };
    let values = [
        up,
        duration.as_secs_f64(),
        scraped as f64,
        kept as f64,
        series_added as f64,
    ];
    for (name, value) in SYNTHETIC_SERIES.into_iter().zip(values) {
        let mut labels = target.labels.clone();
        labels.set(METRIC_NAME, name);
        batch.push((Arc::new(labels), timestamp_ms, value));
    }
    let mut report = Report {
        error,
        ..Report::default()
    };
    match store.append_shared(&batch) {
        Ok(outcome) => {
            report.appended = outcome.appended;
            report.rejected = outcome.rejected.len();
            if let Some((index, rejection)) = outcome.rejected.last() {
                let series = &batch[*index].0;
                report.last_rejection = Some(format!("{series}: {rejection}"));
            }
            let kept = store.append_exemplars(&exemplars);
            if let Some((index, rejection)) = kept.rejected.last() {
                let series = &exemplars[*index].0;
                tracing::debug!(url = %target.url, %series, %rejection, "exemplar not kept");
            }
        }
        Err(error) => {
            tracing::error!(url = %target.url, %error, "failed to append scraped samples");
            report.rejected = batch.len();
            report.last_rejection = Some(error.to_string());
        }
    }
    let mut previous = HashMap::with_capacity(tracked.len());
    let mut tracked = tracked.into_iter().peekable();
    for (index, (labels, _, _)) in batch.into_iter().enumerate() {
        match tracked.peek() {
            Some((tracked_index, hash)) if *tracked_index == index => {
                previous.insert(*hash, labels);
                tracked.next();
            }
            Some(_) => {}
            None => break,
        }
    }
    state.previous = previous;
    (state, report)
}

/// Adds the target's labels to a scraped series. A scraped label that
/// conflicts with a target label is kept as `exported_<name>`, unless
/// `honor_labels`, where the scraped one wins.
fn with_target_labels(mut pairs: Vec<(String, String)>, target: &Target) -> Labels {
    for (name, value) in target.labels.iter() {
        match pairs.iter().position(|(scraped, _)| scraped == name) {
            None => pairs.push((name.to_string(), value.to_string())),
            Some(_) if target.honor_labels => {}
            Some(position) => {
                let scraped = std::mem::replace(&mut pairs[position].1, value.to_string());
                let mut exported = format!("exported_{name}");
                while pairs.iter().any(|(existing, _)| *existing == exported) {
                    exported = format!("exported_{exported}");
                }
                pairs.push((exported, scraped));
            }
        }
    }
    Labels::new(pairs)
}

fn hash_labels(labels: &Labels) -> u64 {
    static STATE: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    STATE
        .get_or_init(std::hash::RandomState::new)
        .hash_one(labels)
}

fn gunzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut decoded)
        .map_err(|error| format!("invalid gzip body: {error}"))?;
    if decoded.len() > MAX_BODY_BYTES {
        return Err(format!("body larger than {MAX_BODY_BYTES} bytes"));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(honor_labels: bool) -> Target {
        Target {
            job: "shop".into(),
            labels: Labels::new([("job", "shop"), ("instance", "a:1"), ("env", "demo")]),
            discovered_labels: BTreeMap::new(),
            url: "http://a:1/metrics".into(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            honor_labels,
            honor_timestamps: true,
            limits: ScrapeLimits::default(),
            metric_relabel: Arc::from(Vec::new()),
        }
    }

    #[test]
    fn conflicting_labels_become_exported_unless_honored() {
        let scraped = || {
            vec![
                ("__name__".to_string(), "m".to_string()),
                ("job".to_string(), "theirs".to_string()),
                ("exported_job".to_string(), "x".to_string()),
            ]
        };
        let labels = with_target_labels(scraped(), &target(false));
        assert_eq!(labels.get("job"), "shop");
        assert_eq!(labels.get("exported_job"), "x");
        assert_eq!(labels.get("exported_exported_job"), "theirs");
        assert_eq!(labels.get("env"), "demo");
        let honored = with_target_labels(scraped(), &target(true));
        assert_eq!(honored.get("job"), "theirs");
        assert_eq!(honored.get("instance"), "a:1");
    }

    #[test]
    fn offsets_spread_and_stay_within_the_interval() {
        let now = SystemTime::now();
        let offsets: HashSet<Duration> = (0..50)
            .map(|port| {
                let mut target = target(false);
                target.url = format!("http://a:{port}/metrics");
                let offset = target.offset(now);
                assert!(offset < target.interval);
                offset
            })
            .collect();
        assert!(offsets.len() > 40, "{offsets:?}");
        // The same target gets the same slot.
        assert_eq!(target(false).offset(now), target(false).offset(now));
    }

    #[test]
    fn label_limits_name_the_limit_and_fail_the_scrape() {
        let series = Labels::new([("__name__", "m"), ("job", "shop"), ("path", "/a/bc")]);
        let limits = |label_limit, name_length, value_length| ScrapeLimits {
            sample_limit: 0,
            label_limit,
            label_name_length_limit: name_length,
            label_value_length_limit: value_length,
        };
        assert_eq!(limits(3, 8, 5).check_labels(&series), Ok(()));
        assert_eq!(
            limits(2, 0, 0).check_labels(&series),
            Err("label_limit exceeded: a series of m has 3 labels, limit 2".to_string())
        );
        assert_eq!(
            limits(0, 4, 0).check_labels(&series),
            Err(
                "label_name_length_limit exceeded: a label name of m has 8 bytes, limit 4"
                    .to_string()
            )
        );
        assert_eq!(
            limits(0, 0, 4).check_labels(&series),
            Err(
                "label_value_length_limit exceeded: value of label path has 5 bytes, limit 4"
                    .to_string()
            )
        );

        let mut target = target(false);
        target.limits = limits(0, 0, 4);
        let body = b"m{path=\"/a\"} 1\nm{path=\"/a/bc\"} 2\n".to_vec();
        let store = sightline_tsdb::MetricStore::open(tempfile::tempdir().unwrap().path()).unwrap();
        let (_, report) = ingest(
            &target,
            Ok((body, false, Format::Text)),
            SystemTime::now(),
            Duration::ZERO,
            LoopState::default(),
            &store,
        );
        let error = report.error.unwrap();
        assert!(
            error.starts_with("label_value_length_limit exceeded"),
            "{error}"
        );
        // Only the five synthetic series: nothing of the failed scrape.
        assert_eq!(report.appended, SYNTHETIC_SERIES.len());
    }

    #[test]
    fn known_series_come_from_the_scrape_cache_with_the_same_labels() {
        use crate::scrape::relabel::RelabelConfig;
        use sightline_tsdb::LabelMatcher;
        let rules: Vec<RelabelConfig> = serde_norway::from_str(
            "[{ source_labels: [__name__], regex: 'dropped_.*', action: drop }]",
        )
        .unwrap();
        let mut target = target(false);
        target.metric_relabel = rules.iter().map(|rule| rule.compile().unwrap()).collect();
        let dir = tempfile::tempdir().unwrap();
        let store = sightline_tsdb::MetricStore::open(dir.path()).unwrap();
        let start = SystemTime::now();
        let body = |round: u32| {
            format!(
                "hits{{path=\"/a}}\\\"b\"}} {round}\nhits {round}\ndropped_x 1\nup_time {round}\n"
            )
            .into_bytes()
        };
        let mut state = LoopState::default();
        for round in 0..3 {
            let (next, report) = ingest(
                &target,
                Ok((body(round), false, Format::Text)),
                start + Duration::from_secs(u64::from(round)),
                Duration::ZERO,
                state,
                &store,
            );
            state = next;
            assert_eq!(report.error, None);
            assert_eq!(report.appended, 3 + SYNTHETIC_SERIES.len(), "round {round}");
            // Four series seen, the dropped one cached as dropped.
            assert_eq!(state.cache.len(), 4);
        }
        // A series that disappears leaves the cache (and is marked stale).
        let (state, report) = ingest(
            &target,
            Ok((b"hits 9\n".to_vec(), false, Format::Text)),
            start + Duration::from_secs(3),
            Duration::ZERO,
            state,
            &store,
        );
        assert_eq!(report.error, None);
        assert_eq!(state.cache.len(), 1);
        // A failed fetch keeps the cache; a scrape that fails half-way
        // keeps only what it saw.
        let (state, report) = ingest(
            &target,
            Err("connection refused".into()),
            start + Duration::from_secs(4),
            Duration::ZERO,
            state,
            &store,
        );
        assert!(report.error.is_some());
        assert_eq!(state.cache.len(), 1);
        let mut limited = target.clone();
        limited.limits.label_limit = target.labels.len() + 1;
        let (state, report) = ingest(
            &limited,
            Ok((
                b"other 1\nwide{a=\"1\",b=\"2\",c=\"3\"} 1\n".to_vec(),
                false,
                Format::Text,
            )),
            start + Duration::from_secs(5),
            Duration::ZERO,
            state,
            &store,
        );
        assert!(report.error.is_some());
        assert_eq!(state.cache.len(), 1, "only `other`, seen before the limit");
        let at = start.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let series = store
            .reader()
            .select(
                &[LabelMatcher::equal(METRIC_NAME, "hits")],
                at - 1,
                // up to the scrape at +3 s, before the failing ones
                at + 3_500,
            )
            .unwrap();
        let mut found: Vec<(String, Vec<f64>)> = series
            .into_iter()
            .map(|series| {
                let values = series.samples.iter().map(|(_, value)| *value).collect();
                (series.labels.get("path").to_string(), values)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(found[0], (String::new(), vec![0.0, 1.0, 2.0, 9.0]));
        assert_eq!(found[1].0, "/a}\"b");
        assert_eq!(found[1].1[..3], [0.0, 1.0, 2.0]);
        assert!(found[1].1[3].is_nan(), "stale after it disappeared");
        assert!(
            store
                .reader()
                .select(
                    &[LabelMatcher::equal(METRIC_NAME, "dropped_x")],
                    at - 1,
                    at + 5_000
                )
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn metric_relabeling_drops_and_rewrites_before_the_sample_limit() {
        use crate::scrape::relabel::RelabelConfig;
        use sightline_tsdb::LabelMatcher;
        let rules: Vec<RelabelConfig> = serde_norway::from_str(
            r#"
- { source_labels: [__name__], regex: 'expensive_.*', action: drop }
- { source_labels: [path], regex: '/user/.*', target_label: path, replacement: '/user/:id' }
"#,
        )
        .unwrap();
        let mut target = target(false);
        target.metric_relabel = rules.iter().map(|rule| rule.compile().unwrap()).collect();
        // Four samples exposed, two kept: a limit of 2 holds.
        target.limits.sample_limit = 2;
        let body = b"expensive_a 1\nexpensive_b 2\nhits{path=\"/user/42\"} 3\nhits{path=\"/\"} 4\n";
        let dir = tempfile::tempdir().unwrap();
        let store = sightline_tsdb::MetricStore::open(dir.path()).unwrap();
        let scrape_time = SystemTime::now();
        let (_, report) = ingest(
            &target,
            Ok((body.to_vec(), false, Format::Text)),
            scrape_time,
            Duration::ZERO,
            LoopState::default(),
            &store,
        );
        assert_eq!(report.error, None);
        assert_eq!(report.appended, 2 + SYNTHETIC_SERIES.len());
        let at = scrape_time.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let value_of = |name: &str| -> Vec<(String, f64)> {
            store
                .reader()
                .select(&[LabelMatcher::equal(METRIC_NAME, name)], at - 1, at + 1)
                .unwrap()
                .into_iter()
                .map(|series| (series.labels.get("path").to_string(), series.samples[0].1))
                .collect()
        };
        assert_eq!(
            value_of("hits"),
            [("/".to_string(), 4.0), ("/user/:id".to_string(), 3.0)]
        );
        assert!(value_of("expensive_a").is_empty());
        assert_eq!(value_of("scrape_samples_scraped"), [(String::new(), 4.0)]);
        assert_eq!(
            value_of("scrape_samples_post_metric_relabeling"),
            [(String::new(), 2.0)]
        );

        // Three kept samples break the same limit.
        let body = b"hits{path=\"/a\"} 1\nhits{path=\"/b\"} 2\nhits{path=\"/c\"} 3\n";
        let (_, report) = ingest(
            &target,
            Ok((body.to_vec(), false, Format::Text)),
            scrape_time + Duration::from_secs(1),
            Duration::ZERO,
            LoopState::default(),
            &store,
        );
        let error = report.error.unwrap();
        assert!(error.starts_with(SAMPLE_LIMIT_EXCEEDED), "{error}");

        // A rule that removes the metric name fails the scrape.
        let rules: Vec<RelabelConfig> =
            serde_norway::from_str("[{ regex: __name__, action: labeldrop }]").unwrap();
        target.metric_relabel = rules.iter().map(|rule| rule.compile().unwrap()).collect();
        let (_, report) = ingest(
            &target,
            Ok((b"hits 1\n".to_vec(), false, Format::Text)),
            scrape_time + Duration::from_secs(2),
            Duration::ZERO,
            LoopState::default(),
            &store,
        );
        assert_eq!(
            report.error.as_deref(),
            Some("missing metric name (__name__ label)")
        );
        assert_eq!(report.appended, SYNTHETIC_SERIES.len());
    }
}
