//! The incident view's data: from an alert to its cause on one page.
//!
//! `GET /api/incident?alert=<name>[&label=<name>=<value>...][&start=<ms>]`
//! gathers, for one alert of an alerting rule (firing or pending; a
//! resolved one is named by its start):
//!
//! - **the graph**: the rule's expression over the half hour before the
//!   alert began until now (at most six hours after it), the series of this
//!   alert only;
//! - **exemplars** of the series the expression reads, followed through
//!   recording rules (an alert on `service:..:p99_5m{service="payment"}`
//!   gets the exemplars of the recorded rule's `_bucket` series, narrowed by
//!   the alert's own matchers and its `service`);
//! - **the failing requests**: traces of the alert's service since it began
//!   and the exemplars' traces, the worst first (with errors first when the
//!   rule is about errors, else the slowest);
//! - **a healthy one** of the worst's root operation, from before the alert
//!   (the median), and the **comparison** of the two (see
//!   [`crate::compare`]);
//! - **log patterns new or grown** since the change began (the alert's
//!   start less its expression's lookback: an alert on a 5-minute rate
//!   becomes true up to 5 minutes after what moved it), in the services
//!   the worst request touched (the alert's service first; at most
//!   [`MAX_PATTERN_SERVICES`]);
//! - the **worst request**, whose story the UI draws from
//!   `/api/requests/<trace id>`.
//!
//! Each part is bounded (a trace search of [`TRACE_SAMPLE`] summaries, the
//! pattern sample of `/api/logs/patterns`, [`MAX_EXEMPLARS`] exemplars, 20
//! series) and timed; a part that fails is reported in `warnings` and the
//! rest is still answered.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use serde_json::json;
use sightline_store::{TraceQuery, TraceSummary};
use sightline_tsdb::promql::{Engine, format_value, read_by};
use sightline_tsdb::rules::{AlertState, AlertStatus, RuleKind};
use sightline_tsdb::{LabelMatcher, METRIC_NAME, MatchKind};

use crate::QueryState;
use crate::api::parse_optional_time;
use crate::compare::{Analysed, Comparison, compare_traces};
use crate::error::ApiError;
use crate::patterns::{Pattern, new_since};

/// How far before the alert's start the graph, the healthy request and
/// the "before" side of the patterns look.
const BEFORE_MS: i64 = 30 * 60 * 1000;
/// The graph and the searches end at most this long after the start.
const AFTER_MAX_MS: i64 = 6 * 3600 * 1000;
/// Points per graph series, about.
const GRAPH_POINTS: i64 = 240;
/// Series of the expression drawn at most.
const MAX_SERIES: usize = 20;
/// Exemplars drawn at most (the largest values).
pub(crate) const MAX_EXEMPLARS: usize = 500;
/// Trace summaries one search reads at most.
pub(crate) const TRACE_SAMPLE: usize = 200;
/// Failing requests listed.
const FAILING_LISTED: usize = 10;
/// Services whose log patterns are mined at most.
pub(crate) const MAX_PATTERN_SERVICES: usize = 8;

#[derive(Debug, Serialize)]
pub(crate) struct IncidentAlert {
    pub(crate) name: String,
    pub(crate) query: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    /// `firing`, `pending` or `inactive` (a past alert named by its start).
    pub(crate) state: &'static str,
    /// When it became active, ms since the epoch.
    pub(crate) active_at: i64,
    /// How far back its expression looks (its longest range, through
    /// recording rules), ms: what made it true began at most this long
    /// before `active_at`.
    pub(crate) lookback: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct GraphSeries {
    pub(crate) metric: BTreeMap<String, String>,
    /// `[seconds, "value"]`, as the Prometheus API writes points.
    pub(crate) values: Vec<(f64, String)>,
}

#[derive(Debug, Serialize)]
pub(crate) struct IncidentExemplar {
    pub(crate) series: BTreeMap<String, String>,
    pub(crate) trace_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) span_id: Option<String>,
    pub(crate) value: f64,
    /// Seconds since the epoch.
    pub(crate) timestamp: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct IncidentTrace {
    pub(crate) trace_id: String,
    pub(crate) root_service: String,
    pub(crate) root_operation: String,
    /// Nanoseconds.
    pub(crate) start: i64,
    pub(crate) duration: i64,
    pub(crate) span_count: usize,
    pub(crate) errors: usize,
    /// An exemplar of the graph points at it.
    pub(crate) exemplar: bool,
}

impl IncidentTrace {
    fn of(summary: &TraceSummary, exemplar: bool) -> IncidentTrace {
        IncidentTrace {
            trace_id: summary.trace_id.clone(),
            root_service: summary.root_service.clone(),
            root_operation: summary.root_operation.clone(),
            start: summary.start_time,
            duration: summary.duration,
            span_count: summary.span_count,
            errors: summary.error_count,
            exemplar,
        }
    }
}

/// How long each part took, ms.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Timings {
    pub(crate) graph: u64,
    pub(crate) exemplars: u64,
    pub(crate) traces: u64,
    pub(crate) comparison: u64,
    pub(crate) patterns: u64,
}

/// `GET /api/incident`.
#[derive(Debug, Serialize)]
pub(crate) struct Incident {
    pub(crate) alert: IncidentAlert,
    /// The graph's range, ms since the epoch, and its step in seconds.
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) step: f64,
    pub(crate) graph: Vec<GraphSeries>,
    pub(crate) exemplars: Vec<IncidentExemplar>,
    /// The selectors the exemplars were asked for.
    pub(crate) exemplar_selectors: Vec<String>,
    pub(crate) services: Vec<String>,
    pub(crate) failing: Vec<IncidentTrace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worst: Option<IncidentTrace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) healthy: Option<IncidentTrace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) comparison: Option<Comparison>,
    /// Patterns new or grown since the alert began.
    pub(crate) patterns: Vec<Pattern>,
    /// Records mined after and before the start.
    pub(crate) patterns_sampled: (usize, usize),
    pub(crate) warnings: Vec<String>,
    pub(crate) timings: Timings,
    pub(crate) took_ms: u64,
}

/// `GET /api/incident?alert=&label=&start=`
pub(crate) async fn incident(
    State(state): State<QueryState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Incident>, ApiError> {
    let mut alert = None;
    let mut start = None;
    let mut labels = BTreeMap::new();
    for (name, value) in pairs {
        match name.as_str() {
            "alert" => alert = Some(value),
            "start" => start = Some(value),
            "label" => {
                let (label, label_value) = value.split_once('=').ok_or_else(|| {
                    ApiError::BadRequest(format!("label: {value:?} is not <name>=<value>"))
                })?;
                labels.insert(label.to_string(), label_value.to_string());
            }
            _ => {}
        }
    }
    let alert = alert
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::BadRequest("alert: the alerting rule's name is needed".into()))?;
    let start_ms = match start.as_deref() {
        None | Some("") => None,
        Some(text) => Some(match text.parse::<i64>() {
            Ok(ms) => ms,
            Err(_) => parse_optional_time("start", Some(text))?.unwrap_or_default() / 1_000_000,
        }),
    };
    let now_ms = sightline_vocab::clock::now_ms();
    let incident =
        tokio::task::spawn_blocking(move || build(&state, &alert, &labels, start_ms, now_ms))
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))??;
    Ok(Json(incident))
}

/// The rule's expression, labels and annotations, and this alert.
struct Found {
    query: String,
    annotations: BTreeMap<String, String>,
    rule_labels: BTreeMap<String, String>,
    alert: Option<AlertStatus>,
    /// Recording rules by name, with their expressions.
    recorded: BTreeMap<String, String>,
}

fn find(
    state: &QueryState,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Found, ApiError> {
    let groups = state.rules.rule_groups();
    let recorded: BTreeMap<String, String> = groups
        .iter()
        .flat_map(|group| &group.rules)
        .filter(|rule| matches!(rule.kind, RuleKind::Recording))
        .map(|rule| (rule.name.clone(), rule.query.clone()))
        .collect();
    let rule = groups
        .iter()
        .flat_map(|group| &group.rules)
        .find(|rule| rule.name == name && matches!(rule.kind, RuleKind::Alerting { .. }))
        .ok_or_else(|| ApiError::NotFound(format!("no alerting rule named {name:?}")))?;
    let RuleKind::Alerting {
        annotations,
        alerts,
        ..
    } = &rule.kind
    else {
        unreachable!("found as an alerting rule");
    };
    let matching = |alert: &&AlertStatus| {
        labels
            .iter()
            .all(|(label, value)| alert.labels.get(label) == Some(value))
    };
    // Firing before pending, then the oldest.
    let alert = alerts
        .iter()
        .filter(matching)
        .min_by_key(|alert| (alert.state != AlertState::Firing, alert.active_at_ms))
        .cloned();
    Ok(Found {
        query: rule.query.clone(),
        annotations: annotations.clone(),
        rule_labels: rule.labels.clone(),
        alert,
        recorded,
    })
}

fn build(
    state: &QueryState,
    name: &str,
    labels: &BTreeMap<String, String>,
    start_ms: Option<i64>,
    now_ms: i64,
) -> Result<Incident, ApiError> {
    let began = Instant::now();
    let found = find(state, name, labels)?;
    let mut warnings = Vec::new();
    let (alert, active_at) = match (&found.alert, start_ms) {
        (Some(alert), _) => {
            let state = match alert.state {
                AlertState::Firing => "firing",
                _ => "pending",
            };
            let incident_alert = IncidentAlert {
                name: name.to_string(),
                query: found.query.clone(),
                labels: alert.labels.clone(),
                annotations: alert.annotations.clone(),
                state,
                active_at: alert.active_at_ms,
                lookback: 0,
                value: Some(format_value(alert.value)),
            };
            (incident_alert, alert.active_at_ms)
        }
        (None, Some(start)) => {
            let mut all = found.rule_labels.clone();
            all.extend(labels.clone());
            all.insert("alertname".into(), name.to_string());
            let incident_alert = IncidentAlert {
                name: name.to_string(),
                query: found.query.clone(),
                labels: all,
                annotations: found.annotations.clone(),
                state: "inactive",
                active_at: start,
                lookback: 0,
                value: None,
            };
            (incident_alert, start)
        }
        (None, None) => {
            return Err(ApiError::NotFound(format!(
                "alert {name} with {labels:?} is not active; give its start (start=<ms>) to see it"
            )));
        }
    };
    let mut alert = alert;
    let (selectors, lookback) =
        exemplar_selectors(&found, alert.labels.get("service").map(String::as_str));
    // What moved the expression began up to its lookback before it became
    // true; at most half the "before" window, so that side keeps data.
    let lookback = lookback.min(BEFORE_MS / 2);
    alert.lookback = lookback;
    let changed_at = active_at - lookback;
    let graph_start = active_at - BEFORE_MS;
    let graph_end = now_ms.min(active_at + AFTER_MAX_MS).max(active_at + 60_000);
    let step_ms = ((graph_end - graph_start) / GRAPH_POINTS).max(1000) / 1000 * 1000;
    let service = ["service", "service_name", "job"]
        .iter()
        .find_map(|label| alert.labels.get(*label).filter(|v| !v.is_empty()))
        .cloned();
    let mut timings = Timings::default();

    // The graph: this alert's series of the expression.
    let clock = Instant::now();
    let graph = match Engine::default().range_query(
        &*state.metrics,
        &found.query,
        graph_start,
        graph_end,
        step_ms,
    ) {
        Ok(series) => series
            .into_iter()
            .filter(|series| {
                series
                    .labels
                    .iter()
                    .all(|(label, value)| alert.labels.get(label).is_none_or(|v| v == value))
            })
            .take(MAX_SERIES)
            .map(|series| GraphSeries {
                metric: series
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                values: series
                    .points
                    .iter()
                    .map(|(ms, value)| (*ms as f64 / 1000.0, format_value(*value)))
                    .collect(),
            })
            .collect(),
        Err(error) => {
            warnings.push(format!("graph: {error}"));
            Vec::new()
        }
    };
    timings.graph = clock.elapsed().as_millis() as u64;

    // Exemplars of the series the expression reads, through recording rules.
    let clock = Instant::now();
    let exemplar_selectors = selectors.iter().map(|s| describe(s)).collect();
    let mut exemplars: Vec<IncidentExemplar> =
        match state.metrics.exemplars(&selectors, graph_start, graph_end) {
            Ok(found) => found
                .into_iter()
                .flat_map(|series| {
                    let labels: BTreeMap<String, String> = series
                        .series
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    series
                        .exemplars
                        .into_iter()
                        .filter(|e| !e.labels.get("trace_id").is_empty())
                        .map(move |e| IncidentExemplar {
                            series: labels.clone(),
                            trace_id: e.labels.get("trace_id").to_string(),
                            span_id: Some(e.labels.get("span_id").to_string())
                                .filter(|s| !s.is_empty()),
                            value: e.value,
                            timestamp: e.timestamp_ms as f64 / 1000.0,
                        })
                })
                .collect(),
            Err(error) => {
                warnings.push(format!("exemplars: {error}"));
                Vec::new()
            }
        };
    exemplars.sort_by(|a, b| b.value.total_cmp(&a.value));
    exemplars.truncate(MAX_EXEMPLARS);
    timings.exemplars = clock.elapsed().as_millis() as u64;

    // The failing requests: the service's traces since the start and the
    // exemplars' traces after it.
    let clock = Instant::now();
    let ms_to_ns = |ms: i64| ms.saturating_mul(1_000_000);
    let mut candidates: BTreeMap<String, IncidentTrace> = BTreeMap::new();
    let search = |query: TraceQuery, warnings: &mut Vec<String>| -> Vec<TraceSummary> {
        state.spans.search_traces(&query).unwrap_or_else(|error| {
            warnings.push(format!("trace search: {error}"));
            Vec::new()
        })
    };
    for summary in search(
        TraceQuery {
            service: service.clone(),
            start: Some(ms_to_ns(changed_at - 60_000)),
            end: Some(ms_to_ns(graph_end)),
            limit: TRACE_SAMPLE,
            ..TraceQuery::default()
        },
        &mut warnings,
    ) {
        candidates.insert(summary.trace_id.clone(), IncidentTrace::of(&summary, false));
    }
    for exemplar in exemplars
        .iter()
        .filter(|e| e.timestamp * 1000.0 >= changed_at as f64)
    {
        if let Some(known) = candidates.get_mut(&exemplar.trace_id) {
            known.exemplar = true;
        } else if let Ok(Some(summary)) = state.spans.summary(&exemplar.trace_id) {
            candidates.insert(summary.trace_id.clone(), IncidentTrace::of(&summary, true));
        }
    }
    let about_errors = {
        let text = format!("{name} {}", found.query).to_ascii_lowercase();
        ["error", "fail", "5..", "5xx"]
            .iter()
            .any(|word| text.contains(word))
    };
    let mut failing: Vec<IncidentTrace> = candidates.into_values().collect();
    failing.sort_by_key(|trace| {
        let errors_first = about_errors && trace.errors > 0;
        (
            std::cmp::Reverse(errors_first),
            std::cmp::Reverse(trace.duration),
        )
    });
    let worst = failing.first().cloned();
    failing.truncate(FAILING_LISTED);
    // A healthy request of the worst's root operation: the median of those
    // before the alert, else the fastest after it.
    let healthy = worst.as_ref().and_then(|worst| {
        let same_root = |summary: &&TraceSummary| {
            summary.root_service == worst.root_service
                && summary.root_operation == worst.root_operation
                && summary.error_count == 0
                && summary.trace_id != worst.trace_id
        };
        let query = |from: i64, to: i64| TraceQuery {
            service: Some(worst.root_service.clone()),
            operation: Some(worst.root_operation.clone()),
            start: Some(ms_to_ns(from)),
            end: Some(ms_to_ns(to)),
            limit: TRACE_SAMPLE,
            ..TraceQuery::default()
        };
        let mut before: Vec<TraceSummary> = search(query(graph_start, changed_at), &mut Vec::new())
            .into_iter()
            .filter(|s| same_root(&s))
            .collect();
        before.sort_by_key(|s| s.duration);
        if let Some(median) = before.get(before.len() / 2) {
            return Some(IncidentTrace::of(median, false));
        }
        search(query(changed_at, graph_end), &mut Vec::new())
            .iter()
            .filter(same_root)
            .min_by_key(|s| s.duration)
            .map(|s| IncidentTrace::of(s, false))
    });
    timings.traces = clock.elapsed().as_millis() as u64;

    let clock = Instant::now();
    let mut involved: Vec<String> = service.iter().cloned().collect();
    let comparison = match (&worst, &healthy) {
        (Some(worst), Some(healthy)) => {
            let read = |id: &str| state.spans.trace(id).ok().filter(|s| !s.is_empty());
            match (read(&healthy.trace_id), read(&worst.trace_id)) {
                (Some(healthy_spans), Some(worst_spans)) => {
                    for span in &worst_spans {
                        if !involved.contains(&span.service) {
                            involved.push(span.service.clone());
                        }
                    }
                    Some(compare_traces(
                        &Analysed::new(&healthy.trace_id, healthy_spans),
                        &Analysed::new(&worst.trace_id, worst_spans),
                    ))
                }
                _ => None,
            }
        }
        (Some(_), None) => {
            warnings.push("no healthy request of the same operation to compare with".into());
            None
        }
        _ => None,
    };
    timings.comparison = clock.elapsed().as_millis() as u64;

    // Patterns new or grown since the start, in the services involved.
    let clock = Instant::now();
    if involved.len() > MAX_PATTERN_SERVICES {
        warnings.push(format!(
            "log patterns of the first {MAX_PATTERN_SERVICES} of {} services",
            involved.len()
        ));
        involved.truncate(MAX_PATTERN_SERVICES);
    }
    let (patterns, patterns_sampled) = if involved.is_empty() {
        (Vec::new(), (0, 0))
    } else {
        let query = format!(
            "service:({})",
            involved
                .iter()
                .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect::<Vec<_>>()
                .join(" OR ")
        );
        match new_since(
            state,
            &query,
            ms_to_ns(graph_start),
            ms_to_ns(changed_at),
            ms_to_ns(graph_end),
        ) {
            Ok((patterns, after, before)) => (patterns, (after, before)),
            Err(error) => {
                warnings.push(format!("log patterns: {error}"));
                (Vec::new(), (0, 0))
            }
        }
    };
    timings.patterns = clock.elapsed().as_millis() as u64;

    Ok(Incident {
        alert,
        start: graph_start,
        end: graph_end,
        step: step_ms as f64 / 1000.0,
        graph,
        exemplars,
        exemplar_selectors,
        services: involved,
        failing,
        worst,
        healthy,
        comparison,
        patterns,
        patterns_sampled,
        warnings,
        timings,
        took_ms: began.elapsed().as_millis() as u64,
    })
}

/// The selectors whose exemplars belong on the graph: the expression's
/// own, each selector of a recorded series replaced by the recording
/// rule's selectors (narrowed by the first one's equality matchers), and
/// narrowed by the alert's service where they do not name one.
///
/// Also how far back they look: the longest range of the expression and
/// of the recording rules it reads, ms.
fn exemplar_selectors(found: &Found, service: Option<&str>) -> (Vec<Vec<LabelMatcher>>, i64) {
    let mut out = Vec::new();
    let Ok((selectors, mut lookback)) = read_by(&found.query) else {
        return (out, 0);
    };
    for selector in selectors {
        let name = selector
            .iter()
            .find(|m| m.name == METRIC_NAME && m.kind == MatchKind::Equal)
            .map(|m| m.value.clone());
        let expanded = match name.as_ref().and_then(|name| found.recorded.get(name)) {
            Some(recorded) => {
                let narrowing: Vec<LabelMatcher> = selector
                    .iter()
                    .filter(|m| m.name != METRIC_NAME && m.kind == MatchKind::Equal)
                    .cloned()
                    .collect();
                let (inner, inner_lookback) = read_by(recorded).unwrap_or_default();
                lookback = lookback.max(inner_lookback);
                inner
                    .into_iter()
                    .map(|mut inner| {
                        for matcher in &narrowing {
                            if !inner.iter().any(|m| m.name == matcher.name) {
                                inner.push(matcher.clone());
                            }
                        }
                        inner
                    })
                    .collect()
            }
            None => vec![selector],
        };
        for mut selector in expanded {
            if let Some(service) = service
                && !selector.iter().any(|m| m.name == "service")
            {
                selector.push(LabelMatcher::equal("service", service));
            }
            out.push(selector);
        }
    }
    (out, lookback)
}

fn describe(selector: &[LabelMatcher]) -> String {
    let kind = |kind: MatchKind| match kind {
        MatchKind::Equal => "=",
        MatchKind::NotEqual => "!=",
        MatchKind::Regex => "=~",
        MatchKind::NotRegex => "!~",
    };
    let inner: Vec<String> = selector
        .iter()
        .map(|m| format!("{}{}{}", m.name, kind(m.kind), json!(m.value)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(query: &str, recorded: &[(&str, &str)]) -> Found {
        Found {
            query: query.to_string(),
            annotations: BTreeMap::new(),
            rule_labels: BTreeMap::new(),
            alert: None,
            recorded: recorded
                .iter()
                .map(|(name, query)| (name.to_string(), query.to_string()))
                .collect(),
        }
    }

    #[test]
    fn exemplars_are_asked_of_the_series_behind_recording_rules() {
        let recorded = [(
            "service:latency:p99_5m",
            "histogram_quantile(0.99, sum by (service, le) (rate(latency_bucket[5m])))",
        )];
        let alert = found(
            r#"service:latency:p99_5m{service="payment"} > 0.5"#,
            &recorded,
        );
        let (selectors, lookback) = exemplar_selectors(&alert, Some("payment"));
        let selectors: Vec<String> = selectors.iter().map(|s| describe(s)).collect();
        assert_eq!(
            selectors,
            [r#"{__name__="latency_bucket", service="payment"}"#]
        );
        assert_eq!(lookback, 300_000, "the recorded rule's 5m");
        // A plain selector keeps its matchers and gets the alert's service.
        let plain = found(r#"rate(errors_total{job="api"}[5m]) > 1"#, &recorded);
        let selectors: Vec<String> = exemplar_selectors(&plain, Some("checkout"))
            .0
            .iter()
            .map(|s| describe(s))
            .collect();
        assert_eq!(
            selectors,
            [r#"{__name__="errors_total", job="api", service="checkout"}"#]
        );
        assert!(
            exemplar_selectors(&found("vector(1) > 0", &[]), None)
                .0
                .is_empty()
        );
    }
}
