//! Rule evaluation: one synchronous step per group over any storage, with
//! Prometheus' alert state machine.
//!
//! A group evaluates its rules in order at one timestamp; each rule's
//! output is written before the next rule runs, so a rule may read a
//! recording rule above it. Alerting rules keep one [`Alert`] per label set:
//! `pending` when the expression first returns it, `firing` once it has
//! been returned for `for`, held firing for `keep_firing_for` after it stops
//! matching, then `resolved` (kept 15 minutes so receivers learn of it).
//! Every evaluation writes `ALERTS` and `ALERTS_FOR_STATE` for active
//! alerts, and staleness markers for series that ended; the first
//! evaluation after a start restores `active_at` from `ALERTS_FOR_STATE`
//! so a restart does not reset `for`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use promql_parser::parser::Expr;
use sightline_vocab::exposition::{Kind, Writer};

use super::file::{Rule, RuleGroup};
use super::status::{
    AlertState, AlertStatus, RuleGroupStatus, RuleHealth, RuleKind, RuleStatus, RuleStatusSource,
};
use super::template::{self, TemplateData};
use crate::promql::{Engine, MemoryStorage, QueryError, Queryable, Value, stale_nan};
use crate::{Labels, METRIC_NAME, MetricStore, SampleLog};

/// How long a resolved alert is still sent to receivers.
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Where rules read and write: the results of one rule are written before
/// the next rule reads.
pub trait RuleStorage {
    /// Evaluates `expr` at `time_ms`.
    fn query(&self, engine: &Engine, expr: &Expr, time_ms: i64) -> Result<Value, QueryError>;
    /// Writes rule outputs; a rejected sample is an error message.
    fn write(&mut self, samples: &[(Labels, i64, f64)]) -> Result<(), String>;
}

impl RuleStorage for MemoryStorage {
    fn query(&self, engine: &Engine, expr: &Expr, time_ms: i64) -> Result<Value, QueryError> {
        engine.instant_expr(self as &dyn Queryable, expr, time_ms)
    }

    fn write(&mut self, samples: &[(Labels, i64, f64)]) -> Result<(), String> {
        for (labels, timestamp_ms, value) in samples {
            self.append(labels, *timestamp_ms, *value);
        }
        Ok(())
    }
}

impl RuleStorage for &MetricStore {
    /// Reads the store one select at a time (as the query API does), so a
    /// heavy rule never holds the lock that appends wait for.
    fn query(&self, engine: &Engine, expr: &Expr, time_ms: i64) -> Result<Value, QueryError> {
        engine.instant_expr(*self as &dyn Queryable, expr, time_ms)
    }

    fn write(&mut self, samples: &[(Labels, i64, f64)]) -> Result<(), String> {
        let outcome = self.append(samples).map_err(|error| error.to_string())?;
        rejections(&outcome, samples)
    }
}

/// Rules that read through any reader and write through the sample log:
/// what the collector evaluates groups with, embedded (the store is both)
/// and in cluster mode (the cluster's reader; outputs reach the owners'
/// heads through the partitioned log, like any other write). What one
/// evaluation wrote is also kept in memory and read back with the reader's
/// answers, so a later rule of the group sees an earlier rule's output at
/// once, as Prometheus guarantees within a group. Make one per evaluation.
pub struct ThroughLog<'a> {
    reader: &'a dyn Queryable,
    log: &'a dyn SampleLog,
    written: MemoryStorage,
}

impl<'a> ThroughLog<'a> {
    pub fn new(reader: &'a dyn Queryable, log: &'a dyn SampleLog) -> Self {
        ThroughLog {
            reader,
            log,
            written: MemoryStorage::default(),
        }
    }
}

impl Queryable for ThroughLog<'_> {
    fn select(
        &self,
        matchers: &[crate::LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<crate::SeriesData>, QueryError> {
        let stored = self.reader.select(matchers, start_ms, end_ms)?;
        if self.written.series_count() == 0 {
            return Ok(stored);
        }
        let mut merged = crate::SeriesMerge::default();
        merged.add_all(stored);
        merged.add_all(self.written.select(matchers, start_ms, end_ms)?);
        Ok(merged.finish())
    }
}

impl RuleStorage for ThroughLog<'_> {
    fn query(&self, engine: &Engine, expr: &Expr, time_ms: i64) -> Result<Value, QueryError> {
        engine.instant_expr(self as &dyn Queryable, expr, time_ms)
    }

    fn write(&mut self, samples: &[(Labels, i64, f64)]) -> Result<(), String> {
        let outcome = self
            .log
            .append(samples)
            .map_err(|error| error.to_string())?;
        for (labels, timestamp_ms, value) in samples {
            self.written.append(labels, *timestamp_ms, *value);
        }
        rejections(&outcome, samples)
    }
}

/// A rule write's refused samples as its error: how many, and the first.
fn rejections(
    outcome: &crate::AppendOutcome,
    samples: &[(Labels, i64, f64)],
) -> Result<(), String> {
    match outcome.rejected.first() {
        Some((index, error)) => Err(format!(
            "{} of {} samples rejected, first {}: {error}",
            outcome.rejected.len(),
            samples.len(),
            samples[*index].0
        )),
        None => Ok(()),
    }
}

/// Settings shared by every group.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// `global.external_labels`, for templates (`$externalLabels`).
    pub external_labels: BTreeMap<String, String>,
    /// The UI's address, for templates (`$externalURL`).
    pub external_url: String,
    /// How often an unchanged firing alert is sent again.
    pub resend_delay: Duration,
    /// How far back `ALERTS_FOR_STATE` is looked for at restore.
    pub outage_tolerance: Duration,
    /// Least time an alert restored as pending waits before firing.
    pub for_grace_period: Duration,
    /// Evaluations without a result after which a rule is flagged.
    pub no_data_evaluations: u32,
    /// Time without a result after which a rule is flagged.
    pub no_data_after: Duration,
}

impl Default for EvalSettings {
    fn default() -> Self {
        // Prometheus' defaults for the first four.
        EvalSettings {
            external_labels: BTreeMap::new(),
            external_url: String::new(),
            resend_delay: Duration::from_secs(60),
            outage_tolerance: Duration::from_secs(3600),
            for_grace_period: Duration::from_secs(600),
            no_data_evaluations: 10,
            no_data_after: Duration::from_secs(600),
        }
    }
}

/// One label set of an alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub keep_firing_since_ms: Option<i64>,
    last_sent_ms: Option<i64>,
}

/// An alert as receivers get it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingAlert {
    /// The rule's name and expression, for the generator URL.
    pub rule: String,
    pub query: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub active_at_ms: i64,
    pub starts_at_ms: i64,
    /// The resolution time of a resolved alert; for a firing one, when the
    /// receiver should consider it resolved if it hears nothing more.
    pub ends_at_ms: i64,
    pub resolved: bool,
}

/// What one group evaluation produced for receivers.
#[derive(Debug, Default)]
pub struct GroupOutcome {
    /// Firing alerts due for (re)sending, and resolved ones.
    pub to_send: Vec<OutgoingAlert>,
    /// Alerts that started firing or resolved in this evaluation.
    pub changed: Vec<OutgoingAlert>,
    /// Rules that just crossed the no-data threshold, by name.
    pub newly_without_data: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct RuleRuntime {
    health: Option<Result<(), String>>,
    last_evaluation_ms: Option<i64>,
    evaluation_seconds: f64,
    no_data_since_ms: Option<i64>,
    empty_evaluations: u32,
    flagged_no_data: bool,
    /// Series this rule wrote at its last evaluation.
    written: BTreeSet<Labels>,
    alerts: BTreeMap<BTreeMap<String, String>, Alert>,
    evaluations: u64,
    failures: u64,
}

/// A group and the state of its rules.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub group: RuleGroup,
    rules: Vec<RuleRuntime>,
    last_evaluation_ms: Option<i64>,
    evaluation_seconds: f64,
    /// How the next evaluation restores `for` state from
    /// `ALERTS_FOR_STATE`; `None` once it has.
    restore: Option<Restore>,
}

/// Why a group restores its alerts' `for` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restore {
    /// This process started: the rules were not evaluated meanwhile, so
    /// the outage is added to each pending alert's wait, as Prometheus
    /// does (and a restore that fails starts the alerts afresh).
    Start,
    /// Another node evaluated the group until a moment ago (cluster mode):
    /// each alert keeps its `active_at` exactly, so a pending alert fires
    /// when it would have and a firing one goes on firing. A restore that
    /// fails (the samples not readable yet) skips the rule until it works.
    Takeover,
}

impl GroupState {
    /// A group not evaluated yet.
    pub fn new(group: RuleGroup) -> Self {
        let rules = group.rules.iter().map(|_| RuleRuntime::default()).collect();
        GroupState {
            group,
            rules,
            last_evaluation_ms: None,
            evaluation_seconds: 0.0,
            restore: Some(Restore::Start),
        }
    }

    /// Evaluates every rule at `now_ms`, writing outputs to `storage`.
    pub fn evaluate(
        &mut self,
        storage: &mut dyn RuleStorage,
        engine: &Engine,
        now_ms: i64,
        settings: &EvalSettings,
    ) -> GroupOutcome {
        let started = Instant::now();
        let mut outcome = GroupOutcome::default();
        let restore = self.restore;
        let mut restore_failed = false;
        for (rule, runtime) in self.group.rules.iter().zip(self.rules.iter_mut()) {
            let rule_started = Instant::now();
            let result = evaluate_rule(
                rule,
                runtime,
                storage,
                engine,
                now_ms,
                settings,
                self.group.limit,
                restore,
                self.group.interval,
                &mut outcome,
            );
            restore_failed |= matches!(&result, Err(error) if error.starts_with(RESTORE_FAILED));
            runtime.evaluations += 1;
            if result.is_err() {
                runtime.failures += 1;
            }
            runtime.health = Some(result);
            runtime.last_evaluation_ms = Some(now_ms);
            runtime.evaluation_seconds = rule_started.elapsed().as_secs_f64();
        }
        if !restore_failed {
            self.restore = None;
        }
        self.last_evaluation_ms = Some(now_ms);
        self.evaluation_seconds = started.elapsed().as_secs_f64();
        outcome
    }

    /// The group's alerts of the rule named `alertname`, resolved ones
    /// included.
    pub fn alerts(&self, alertname: &str) -> Vec<Alert> {
        self.group
            .rules
            .iter()
            .zip(&self.rules)
            .filter(|(rule, _)| rule.alerting.is_some() && rule.name == alertname)
            .flat_map(|(_, runtime)| runtime.alerts.values().cloned())
            .collect()
    }

    /// The group as `/api/v1/rules` shows it.
    pub fn status(&self) -> RuleGroupStatus {
        let no_data = |runtime: &RuleRuntime| {
            runtime
                .flagged_no_data
                .then_some(runtime.no_data_since_ms)
                .flatten()
        };
        let rules = self
            .group
            .rules
            .iter()
            .zip(&self.rules)
            .map(|(rule, runtime)| {
                let kind = match &rule.alerting {
                    None => RuleKind::Recording,
                    Some(spec) => {
                        let alerts: Vec<AlertStatus> = runtime
                            .alerts
                            .values()
                            .filter(|alert| alert.state != AlertState::Inactive)
                            .map(|alert| AlertStatus {
                                labels: alert.labels.clone(),
                                annotations: alert.annotations.clone(),
                                state: alert.state,
                                active_at_ms: alert.active_at_ms,
                                keep_firing_since_ms: alert.keep_firing_since_ms,
                                value: alert.value,
                            })
                            .collect();
                        RuleKind::Alerting {
                            for_seconds: spec.for_duration.as_secs_f64(),
                            keep_firing_for_seconds: spec.keep_firing_for.as_secs_f64(),
                            annotations: spec.annotations.clone(),
                            state: alerts
                                .iter()
                                .map(|alert| alert.state)
                                .max()
                                .unwrap_or(AlertState::Inactive),
                            alerts,
                        }
                    }
                };
                let (health, last_error) = match &runtime.health {
                    None => (RuleHealth::Unknown, None),
                    Some(Ok(())) => (RuleHealth::Ok, None),
                    Some(Err(error)) => (RuleHealth::Err, Some(error.clone())),
                };
                RuleStatus {
                    name: rule.name.clone(),
                    query: rule.query.clone(),
                    kind,
                    labels: rule.labels.clone(),
                    health,
                    last_error,
                    last_evaluation_ms: runtime.last_evaluation_ms,
                    evaluation_seconds: runtime.evaluation_seconds,
                    no_data_since_ms: no_data(runtime),
                }
            })
            .collect();
        RuleGroupStatus {
            name: self.group.name.clone(),
            file: self.group.file.clone(),
            interval_seconds: self.group.interval.as_secs_f64(),
            rules,
            last_evaluation_ms: self.last_evaluation_ms,
            evaluation_seconds: self.evaluation_seconds,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn evaluate_rule(
    rule: &Rule,
    runtime: &mut RuleRuntime,
    storage: &mut dyn RuleStorage,
    engine: &Engine,
    now_ms: i64,
    settings: &EvalSettings,
    limit: usize,
    restore: Option<Restore>,
    interval: Duration,
    outcome: &mut GroupOutcome,
) -> Result<(), String> {
    let value = storage
        .query(engine, &rule.expr, now_ms)
        .map_err(|error| error.to_string());
    let samples: Vec<(Labels, f64)> = match value {
        Ok(Value::Vector(samples)) => samples
            .into_iter()
            .map(|sample| (sample.labels, sample.value))
            .collect(),
        Ok(Value::Scalar(value)) => vec![(Labels::default(), value)],
        Ok(other) => return Err(format!("rule result is not a vector: {other:?}")),
        Err(error) => return Err(error),
    };
    // An alerting rule is quiet most of the time: it lacks data only when
    // one of its selectors matches nothing. Selectors cost a query each, so
    // a quiet rule checks them once every `no_data_evaluations`, and every
    // time once a check found nothing.
    let check_selectors = runtime.no_data_since_ms.is_some()
        || runtime
            .evaluations
            .is_multiple_of(u64::from(settings.no_data_evaluations.max(1)));
    let without_data = samples.is_empty()
        && match rule.alerting {
            None => true,
            Some(_) if !check_selectors => false,
            Some(_) => {
                let mut found = Vec::new();
                selectors(&rule.expr, &mut found);
                found.iter().any(|selector| {
                    let value = storage.query(engine, selector, now_ms);
                    matches!(value, Ok(Value::Vector(series)) if series.is_empty())
                })
            }
        };
    track_no_data(rule, runtime, without_data, now_ms, settings, outcome);
    if limit > 0 && samples.len() > limit {
        return Err(format!(
            "exceeded limit of {limit} with {} series",
            samples.len()
        ));
    }
    match &rule.alerting {
        None => {
            let mut output = Vec::with_capacity(samples.len());
            let mut seen = BTreeSet::new();
            for (labels, value) in samples {
                let mut labels = labels;
                labels.set(METRIC_NAME, &rule.name);
                for (name, label_value) in &rule.labels {
                    labels.set(name, label_value);
                }
                if !seen.insert(labels.clone()) {
                    return Err(format!(
                        "vector contains metrics with the same labelset after applying rule labels: {labels}"
                    ));
                }
                output.push((labels, now_ms, value));
            }
            write_with_staleness(runtime, storage, output, now_ms)
        }
        Some(spec) => {
            let mut template_error = None;
            let mut found: BTreeMap<BTreeMap<String, String>, (BTreeMap<String, String>, f64)> =
                BTreeMap::new();
            for (labels, value) in samples {
                let series_labels: BTreeMap<String, String> = labels
                    .iter()
                    .filter(|(name, _)| *name != METRIC_NAME)
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect();
                let data = TemplateData {
                    labels: Some(&series_labels),
                    value,
                    external_labels: Some(&settings.external_labels),
                    external_url: &settings.external_url,
                };
                let mut expand = |text: &String| match template::expand(text, &data) {
                    Ok(expanded) => expanded,
                    Err(error) => {
                        template_error.get_or_insert(format!("template {text:?}: {error}"));
                        text.clone()
                    }
                };
                let mut alert_labels = series_labels.clone();
                for (name, text) in &rule.labels {
                    let expanded = expand(text);
                    if expanded.is_empty() {
                        alert_labels.remove(name);
                    } else {
                        alert_labels.insert(name.clone(), expanded);
                    }
                }
                alert_labels.insert("alertname".to_string(), rule.name.clone());
                let annotations = spec
                    .annotations
                    .iter()
                    .map(|(name, text)| (name.clone(), expand(text)))
                    .collect();
                if found
                    .insert(alert_labels.clone(), (annotations, value))
                    .is_some()
                {
                    return Err(format!(
                        "vector contains metrics with the same labelset after applying alert labels: {alert_labels:?}"
                    ));
                }
            }
            let restored = match restore {
                Some(restore) if !spec.for_duration.is_zero() => restore_active_at(
                    rule,
                    storage,
                    engine,
                    now_ms,
                    spec.for_duration,
                    settings,
                    restore,
                )?,
                _ => BTreeMap::new(),
            };
            let for_ms = spec.for_duration.as_millis() as i64;
            let keep_ms = spec.keep_firing_for.as_millis() as i64;
            // Label sets returned now.
            for (labels, (annotations, value)) in &found {
                let alert = runtime.alerts.entry(labels.clone());
                let alert = match alert {
                    std::collections::btree_map::Entry::Occupied(entry)
                        if entry.get().state != AlertState::Inactive =>
                    {
                        entry.into_mut()
                    }
                    entry => {
                        let restored_at_ms = restored.get(labels).copied();
                        let active_at_ms = restored_at_ms.unwrap_or(now_ms);
                        // Taken over firing: it fired on the other node
                        // (its notifications went out from there).
                        let fired_at_ms = (restore == Some(Restore::Takeover)
                            && restored_at_ms.is_some()
                            && now_ms - active_at_ms >= for_ms)
                            .then_some(active_at_ms + for_ms);
                        let fresh = Alert {
                            labels: labels.clone(),
                            annotations: BTreeMap::new(),
                            state: if fired_at_ms.is_some() {
                                AlertState::Firing
                            } else {
                                AlertState::Pending
                            },
                            value: *value,
                            active_at_ms,
                            fired_at_ms,
                            resolved_at_ms: None,
                            keep_firing_since_ms: None,
                            last_sent_ms: None,
                        };
                        match entry {
                            std::collections::btree_map::Entry::Occupied(mut entry) => {
                                entry.insert(fresh);
                                entry.into_mut()
                            }
                            std::collections::btree_map::Entry::Vacant(entry) => {
                                entry.insert(fresh)
                            }
                        }
                    }
                };
                alert.value = *value;
                alert.annotations = annotations.clone();
                alert.keep_firing_since_ms = None;
                if alert.state == AlertState::Pending && now_ms - alert.active_at_ms >= for_ms {
                    alert.state = AlertState::Firing;
                    alert.fired_at_ms = Some(now_ms);
                }
            }
            // Label sets that went away.
            runtime.alerts.retain(|labels, alert| {
                if found.contains_key(labels) {
                    return true;
                }
                match alert.state {
                    AlertState::Pending => false,
                    AlertState::Inactive => alert
                        .resolved_at_ms
                        .is_some_and(|resolved| now_ms - resolved < RESOLVED_RETENTION_MS),
                    AlertState::Firing => {
                        let since = *alert.keep_firing_since_ms.get_or_insert(now_ms);
                        if keep_ms == 0 || now_ms - since >= keep_ms {
                            alert.state = AlertState::Inactive;
                            alert.resolved_at_ms = Some(now_ms);
                            alert.keep_firing_since_ms = None;
                        }
                        true
                    }
                }
            });
            let valid_for_ms = 4 * settings.resend_delay.max(interval).as_millis() as i64;
            let mut output = Vec::new();
            for alert in runtime.alerts.values_mut() {
                let outgoing = OutgoingAlert {
                    rule: rule.name.clone(),
                    query: rule.query.clone(),
                    labels: alert.labels.clone(),
                    annotations: alert.annotations.clone(),
                    active_at_ms: alert.active_at_ms,
                    starts_at_ms: alert.fired_at_ms.unwrap_or(alert.active_at_ms),
                    ends_at_ms: alert.resolved_at_ms.unwrap_or(now_ms + valid_for_ms),
                    resolved: alert.state == AlertState::Inactive,
                };
                let just_fired = alert.fired_at_ms == Some(now_ms);
                let just_resolved = alert.resolved_at_ms == Some(now_ms);
                if just_fired || just_resolved {
                    outcome.changed.push(outgoing.clone());
                }
                let due = match alert.state {
                    AlertState::Pending => false,
                    _ if alert.resolved_at_ms > alert.last_sent_ms => true,
                    _ => alert.last_sent_ms.is_none_or(|sent| {
                        sent + settings.resend_delay.as_millis() as i64 <= now_ms
                    }),
                };
                if due {
                    alert.last_sent_ms = Some(now_ms);
                    outcome.to_send.push(outgoing);
                }
                if alert.state != AlertState::Inactive {
                    let state = if alert.state == AlertState::Firing {
                        "firing"
                    } else {
                        "pending"
                    };
                    let mut alerts = Labels::new(alert.labels.iter());
                    alerts.set(METRIC_NAME, "ALERTS");
                    alerts.set("alertstate", state);
                    output.push((alerts, now_ms, 1.0));
                    let mut for_state = Labels::new(alert.labels.iter());
                    for_state.set(METRIC_NAME, "ALERTS_FOR_STATE");
                    output.push((for_state, now_ms, alert.active_at_ms as f64 / 1000.0));
                }
            }
            write_with_staleness(runtime, storage, output, now_ms)?;
            match template_error {
                Some(error) => Err(error),
                None => Ok(()),
            }
        }
    }
}

/// The series selectors of `expr`, as instant vector selectors.
fn selectors(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::Aggregate(aggregate) => selectors(&aggregate.expr, out),
        Expr::Unary(unary) => selectors(&unary.expr, out),
        Expr::Paren(paren) => selectors(&paren.expr, out),
        Expr::Subquery(subquery) => selectors(&subquery.expr, out),
        Expr::Binary(binary) => {
            selectors(&binary.lhs, out);
            selectors(&binary.rhs, out);
        }
        Expr::VectorSelector(selector) => out.push(Expr::VectorSelector(selector.clone())),
        Expr::MatrixSelector(matrix) => out.push(Expr::VectorSelector(matrix.vs.clone())),
        Expr::Call(call) => {
            for arg in &call.args.args {
                selectors(arg, out);
            }
        }
        _ => {}
    }
}

fn track_no_data(
    rule: &Rule,
    runtime: &mut RuleRuntime,
    empty: bool,
    now_ms: i64,
    settings: &EvalSettings,
    outcome: &mut GroupOutcome,
) {
    if !empty {
        runtime.no_data_since_ms = None;
        runtime.empty_evaluations = 0;
        runtime.flagged_no_data = false;
        return;
    }
    let since = *runtime.no_data_since_ms.get_or_insert(now_ms);
    runtime.empty_evaluations = runtime.empty_evaluations.saturating_add(1);
    let long_enough = runtime.empty_evaluations >= settings.no_data_evaluations
        || now_ms - since >= settings.no_data_after.as_millis() as i64;
    if long_enough && !runtime.flagged_no_data {
        runtime.flagged_no_data = true;
        outcome.newly_without_data.push(rule.name.clone());
    }
}

/// Writes `output` and a staleness marker for every series the rule wrote
/// last time and not now.
fn write_with_staleness(
    runtime: &mut RuleRuntime,
    storage: &mut dyn RuleStorage,
    mut output: Vec<(Labels, i64, f64)>,
    now_ms: i64,
) -> Result<(), String> {
    let current: BTreeSet<Labels> = output.iter().map(|(labels, _, _)| labels.clone()).collect();
    for ended in runtime.written.difference(&current) {
        output.push((ended.clone(), now_ms, stale_nan()));
    }
    runtime.written = current;
    if output.is_empty() {
        return Ok(());
    }
    storage
        .write(&output)
        .map_err(|error| format!("writing rule output: {error}"))
}

/// Prometheus' for-state restoration: `active_at` of each alert from the
/// last `ALERTS_FOR_STATE` sample within the outage tolerance, shifted by
/// the downtime, and never firing sooner than the grace period after start
/// unless it was already firing.
#[allow(clippy::too_many_arguments)]
fn restore_active_at(
    rule: &Rule,
    storage: &dyn RuleStorage,
    engine: &Engine,
    now_ms: i64,
    for_duration: Duration,
    settings: &EvalSettings,
    restore: Restore,
) -> Result<BTreeMap<BTreeMap<String, String>, i64>, String> {
    let mut restored = BTreeMap::new();
    let query = format!(
        "ALERTS_FOR_STATE{{alertname={:?}}}[{}s]",
        rule.name,
        settings.outage_tolerance.as_secs().max(1)
    );
    let Ok(expr) = Engine::parse(&query) else {
        return Ok(restored);
    };
    // Just before now: this evaluation's own samples are not written yet.
    let series = match storage.query(engine, &expr, now_ms - 1) {
        Ok(Value::Matrix(series)) => series,
        Ok(_) => return Ok(restored),
        Err(error) if restore == Restore::Takeover => {
            return Err(format!("{RESTORE_FAILED}: {error}"));
        }
        Err(_) => return Ok(restored),
    };
    let for_ms = for_duration.as_millis() as i64;
    let grace_ms = settings.for_grace_period.as_millis() as i64;
    for one in series {
        let Some(&(down_at_ms, active_at_seconds)) = one.points.last() else {
            continue;
        };
        if !active_at_seconds.is_finite() {
            continue;
        }
        let labels: BTreeMap<String, String> = one
            .labels
            .iter()
            .filter(|(name, _)| *name != METRIC_NAME)
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let previous_active_at_ms = (active_at_seconds * 1000.0) as i64;
        let remaining_ms = for_ms - (down_at_ms - previous_active_at_ms);
        let active_at_ms = if restore == Restore::Takeover || remaining_ms <= 0 {
            previous_active_at_ms
        } else if remaining_ms < grace_ms {
            now_ms + grace_ms - for_ms
        } else {
            previous_active_at_ms + (now_ms - down_at_ms)
        };
        restored.insert(labels, active_at_ms);
    }
    Ok(restored)
}

/// How an evaluation error that is a failed takeover restore starts.
const RESTORE_FAILED: &str = "restoring the alerts' for state failed";

/// Every loaded group behind its own lock: groups evaluate independently,
/// and the status API reads them between evaluations. [`RuleEngine::reload`]
/// swaps the set of groups, carrying the state of rules that stay.
#[derive(Debug, Default)]
pub struct RuleEngine {
    groups: RwLock<Vec<Mutex<GroupState>>>,
}

impl RuleEngine {
    /// An engine for `groups`, none evaluated yet.
    pub fn new(groups: Vec<RuleGroup>) -> Self {
        RuleEngine {
            groups: RwLock::new(
                groups
                    .into_iter()
                    .map(|group| Mutex::new(GroupState::new(group)))
                    .collect(),
            ),
        }
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Mutex<GroupState>>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no group is loaded.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The evaluation interval of group `index`.
    pub fn interval(&self, index: usize) -> Duration {
        self.read()[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .group
            .interval
    }

    /// Group `index`'s identity, `<file>;<group>` as Prometheus' `rule_group`
    /// label spells it: the same on every node that loads the same files.
    pub fn group_key(&self, index: usize) -> String {
        let groups = self.read();
        let group = groups[index].lock().unwrap_or_else(|e| e.into_inner());
        format!("{};{}", group.group.file, group.group.name)
    }

    /// Drops group `index`'s alert state; its next evaluation restores
    /// each alert's `active_at` from `ALERTS_FOR_STATE` as it was (no
    /// outage added). For a node that takes a group over from another, or
    /// hands it to another (cluster mode): the other's state is newer than
    /// anything this node remembers.
    pub fn take_over(&self, index: usize) {
        let groups = self.read();
        let mut group = groups[index].lock().unwrap_or_else(|e| e.into_inner());
        *group = GroupState::new(group.group.clone());
        group.restore = Some(Restore::Takeover);
    }

    /// Replaces the loaded groups with `groups`, as Prometheus does on a
    /// reload: a group with the same file and name as a loaded one takes
    /// over the state of each of its rules that has the same kind, name and
    /// labels (active alerts with their `active_at`, series written last
    /// time), so a pending alert keeps waiting where it was and a firing
    /// one neither resolves nor fires again. Other groups start fresh and
    /// are not restored from `ALERTS_FOR_STATE` (that is for a start);
    /// removed groups are dropped. The caller stops evaluating before and
    /// starts again after, so no evaluation is lost in between. Returns the
    /// series that rules which did not stay wrote last (their output,
    /// `ALERTS`, `ALERTS_FOR_STATE`), for the caller to mark stale.
    pub fn reload(&self, groups: Vec<RuleGroup>) -> Vec<Labels> {
        let mut loaded = self.groups.write().unwrap_or_else(|e| e.into_inner());
        let mut old: Vec<GroupState> = std::mem::take(&mut *loaded)
            .into_iter()
            .map(|group| group.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let mut states = Vec::with_capacity(groups.len());
        for group in groups {
            let previous = old
                .iter()
                .position(|state| state.group.file == group.file && state.group.name == group.name)
                .map(|position| old.swap_remove(position));
            let mut state = GroupState::new(group);
            state.restore = None;
            if let Some(mut previous) = previous {
                state.last_evaluation_ms = previous.last_evaluation_ms;
                state.evaluation_seconds = previous.evaluation_seconds;
                for (rule, runtime) in state.group.rules.iter().zip(state.rules.iter_mut()) {
                    let same = previous.group.rules.iter().position(|old_rule| {
                        old_rule.name == rule.name
                            && old_rule.labels == rule.labels
                            && old_rule.alerting.is_some() == rule.alerting.is_some()
                    });
                    if let Some(position) = same {
                        previous.group.rules.remove(position);
                        *runtime = previous.rules.remove(position);
                    }
                }
                // What is left of it did not stay.
                old.push(previous);
            }
            states.push(state);
        }
        let still_written: BTreeSet<&Labels> = states
            .iter()
            .flat_map(|state| state.rules.iter().flat_map(|runtime| &runtime.written))
            .collect();
        let ended: Vec<Labels> = old
            .iter()
            .flat_map(|state| state.rules.iter().flat_map(|runtime| &runtime.written))
            .filter(|labels| !still_written.contains(labels))
            .cloned()
            .collect();
        *loaded = states.into_iter().map(Mutex::new).collect();
        ended
    }

    /// Evaluates group `index` at `now_ms`. The group is evaluated on a
    /// copy, so status readers never wait for an evaluation; one caller per
    /// group at a time (the group's own task) keeps updates from being lost.
    pub fn evaluate(
        &self,
        index: usize,
        storage: &mut dyn RuleStorage,
        engine: &Engine,
        now_ms: i64,
        settings: &EvalSettings,
    ) -> GroupOutcome {
        let groups = self.read();
        let lock = || groups[index].lock().unwrap_or_else(|e| e.into_inner());
        let mut group = lock().clone();
        let outcome = group.evaluate(storage, engine, now_ms, settings);
        *lock() = group;
        outcome
    }

    /// Counters and gauges of rule evaluation, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let (mut evaluations, mut failures, mut without_data) = (0u64, 0u64, 0u64);
        let mut alerts = BTreeMap::from([("firing", 0usize), ("pending", 0usize)]);
        let mut durations = Vec::new();
        for group in self.read().iter() {
            let group = group.lock().unwrap_or_else(|e| e.into_inner());
            // Prometheus' `rule_group` label: `<file>;<group>`.
            let rule_group = format!("{};{}", group.group.file, group.group.name);
            durations.push((rule_group, group.evaluation_seconds));
            for runtime in &group.rules {
                evaluations += runtime.evaluations;
                failures += runtime.failures;
                without_data += u64::from(runtime.flagged_no_data);
                for alert in runtime.alerts.values() {
                    match alert.state {
                        AlertState::Firing => *alerts.entry("firing").or_default() += 1,
                        AlertState::Pending => *alerts.entry("pending").or_default() += 1,
                        AlertState::Inactive => {}
                    }
                }
            }
        }
        let mut text = String::new();
        let mut writer = Writer::new(&mut text);
        let mut single = |name: &str, kind: Kind, help: &str, value: u64| {
            writer.family(name, kind, help);
            writer.sample(name, &[], value);
        };
        single(
            "sightline_rules_evaluations_total",
            Kind::Counter,
            "Rule evaluations.",
            evaluations,
        );
        single(
            "sightline_rules_evaluation_failures_total",
            Kind::Counter,
            "Rule evaluations that failed.",
            failures,
        );
        single(
            "sightline_rules_without_data",
            Kind::Gauge,
            "Rules whose expression has returned nothing for a while.",
            without_data,
        );
        writer.family(
            "sightline_rules_alerts",
            Kind::Gauge,
            "Active alerts by state.",
        );
        for (state, count) in alerts {
            writer.sample("sightline_rules_alerts", &[("state", state)], count);
        }
        let name = "sightline_rules_group_last_duration_seconds";
        writer.family(
            name,
            Kind::Gauge,
            "How long the group's last evaluation took.",
        );
        for (rule_group, seconds) in &durations {
            writer.sample(name, &[("rule_group", rule_group)], *seconds);
        }
        text
    }
}

impl RuleStatusSource for RuleEngine {
    fn rule_groups(&self) -> Vec<RuleGroupStatus> {
        self.read()
            .iter()
            .map(|group| group.lock().unwrap_or_else(|e| e.into_inner()).status())
            .collect()
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::rules::parse_rule_file;

    const RULES: &str = r#"
groups:
  - name: g
    rules:
      - alert: HighErrors
        expr: errors > 5
        for: 1h
      - alert: Other
        expr: errors > 5
        for: 1h
"#;

    fn alerts(engine: &RuleEngine) -> Vec<(String, AlertState, i64)> {
        let groups = engine.read();
        let group = groups[0].lock().unwrap();
        group
            .rules
            .iter()
            .zip(&group.group.rules)
            .flat_map(|(runtime, rule)| {
                runtime
                    .alerts
                    .values()
                    .map(|alert| (rule.name.clone(), alert.state, alert.active_at_ms))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn renders_its_own_metrics_in_the_text_format() {
        let mut storage = MemoryStorage::default();
        let mut errors = Labels::new([("job", "api")]);
        errors.set(METRIC_NAME, "errors");
        storage.append(&errors, 0, 9.0);
        let file = "rules/\"quoted\".yml";
        let engine =
            RuleEngine::new(parse_rule_file(file, RULES, Duration::from_secs(60)).unwrap());
        engine.evaluate(
            0,
            &mut storage,
            &Engine::default(),
            0,
            &EvalSettings::default(),
        );
        let text = engine.render_metrics();
        let (text, seconds) = text.rsplit_once(' ').unwrap();
        assert!(
            seconds.trim_end().parse::<f64>().unwrap() >= 0.0,
            "{seconds}"
        );
        assert_eq!(
            text,
            "# HELP sightline_rules_evaluations_total Rule evaluations.\n\
             # TYPE sightline_rules_evaluations_total counter\n\
             sightline_rules_evaluations_total 2\n\
             # HELP sightline_rules_evaluation_failures_total Rule evaluations that failed.\n\
             # TYPE sightline_rules_evaluation_failures_total counter\n\
             sightline_rules_evaluation_failures_total 0\n\
             # HELP sightline_rules_without_data Rules whose expression has returned nothing for a while.\n\
             # TYPE sightline_rules_without_data gauge\n\
             sightline_rules_without_data 0\n\
             # HELP sightline_rules_alerts Active alerts by state.\n\
             # TYPE sightline_rules_alerts gauge\n\
             sightline_rules_alerts{state=\"firing\"} 0\n\
             sightline_rules_alerts{state=\"pending\"} 2\n\
             # HELP sightline_rules_group_last_duration_seconds How long the group's last evaluation took.\n\
             # TYPE sightline_rules_group_last_duration_seconds gauge\n\
             sightline_rules_group_last_duration_seconds{rule_group=\"rules/\\\"quoted\\\".yml;g\"}"
        );
    }

    #[test]
    fn reload_keeps_the_state_of_rules_that_stay() {
        let mut storage = MemoryStorage::default();
        let mut errors = Labels::new([("job", "api")]);
        errors.set(METRIC_NAME, "errors");
        storage.append(&errors, 0, 9.0);
        storage.append(&errors, 60_000, 9.0);
        let parse = |text: &str| parse_rule_file("r.yml", text, Duration::from_secs(60)).unwrap();
        let engine = RuleEngine::new(parse(RULES));
        let settings = EvalSettings::default();
        engine.evaluate(0, &mut storage, &Engine::default(), 0, &settings);
        assert_eq!(
            alerts(&engine),
            [
                ("HighErrors".to_string(), AlertState::Pending, 0),
                ("Other".to_string(), AlertState::Pending, 0)
            ]
        );
        // `Other` gets a label (a different rule now) and a rule is added
        // in front: only `HighErrors` keeps its alert.
        let changed = RULES.replace(
            "      - alert: Other\n        expr: errors > 5\n",
            "      - alert: Other\n        expr: errors > 5\n        labels: { severity: page }\n",
        );
        let changed = changed.replace(
            "    rules:\n",
            "    rules:\n      - record: job:errors\n        expr: errors\n",
        );
        let ended = engine.reload(parse(&changed));
        // The old `Other`'s ALERTS and ALERTS_FOR_STATE series ended.
        assert_eq!(ended.len(), 2, "{ended:?}");
        assert!(
            ended
                .iter()
                .all(|labels| labels.get("alertname") == "Other")
        );
        assert_eq!(
            alerts(&engine),
            [("HighErrors".to_string(), AlertState::Pending, 0)]
        );
        engine.evaluate(0, &mut storage, &Engine::default(), 60_000, &settings);
        let after = alerts(&engine);
        assert!(after.contains(&("HighErrors".to_string(), AlertState::Pending, 0)));
        assert!(after.contains(&("Other".to_string(), AlertState::Pending, 60_000)));
        // A group of another name is another group.
        let ended = engine.reload(parse(&changed.replace("name: g", "name: h")));
        assert!(
            ended
                .iter()
                .any(|labels| labels.get("alertname") == "HighErrors")
        );
        assert!(alerts(&engine).is_empty());
    }
}
