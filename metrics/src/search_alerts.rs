//! Alerts made from saved searches: each is a log-derived counter of the
//! records its search matches (labelled by at most one field) and an
//! alerting rule over it, applied at run time, without a restart.
//!
//! - **The counter** joins the [`LogMetrics`](crate::log_metrics::LogMetrics)
//!   as the saved searches' set: from the moment the alert is made it
//!   counts acknowledged records like a `log_metrics` entry of the config
//!   file.
//! - **Its history** is written once, when the alert is made
//!   ([`backfill`]): the stored records of the last [`BACKFILL_RANGE`]
//!   counted per [`BACKFILL_STEP`] by the store's aggregations
//!   (`timechart`), turned into the counter's cumulative values, so the
//!   alert's graph and `increase()` have history from the first minute.
//!   The live counter continues from the backfill's totals. Bounded by the
//!   timechart's own limits (at most its largest series of the label, its
//!   most buckets); what was cut off is reported. Records still in flight
//!   in the second the alert is made (acknowledged, not yet searchable) are
//!   in neither.
//! - **The rule** is one group, [`GROUP_NAME`], beside the rule files'
//!   groups, kept across reloads:
//!   `sum by (<label>) (increase(<metric>[<window>])) > <threshold>`,
//!   labelled `severity` and `saved_search` (the search's id).
//!
//! After a restart the counters start from zero (a counter reset, as for
//! the config file's `log_metrics`); history is never written twice.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use sightline_store::pipes::{self, StatsTable};
use sightline_store::{LogReader, SavedSearch, SearchAlert};
use sightline_tsdb::rules::RuleGroup;
use sightline_tsdb::{Labels, MetricMetadata, SampleLog};

use crate::config_file::LogMetricConfig;
use crate::log_metrics::label_for;

/// The rule group of every saved search's alert.
pub const GROUP_NAME: &str = "saved searches";
/// The "file" that group names in `/api/v1/rules`: the data directory's
/// saved-searches file.
pub const GROUP_FILE: &str = "saved-searches.json";
/// How far back a new alert's history goes.
pub const BACKFILL_RANGE: Duration = Duration::from_secs(6 * 60 * 60);
/// The history's resolution: one sample per series per step.
pub const BACKFILL_STEP: Duration = Duration::from_secs(15);
/// Samples appended to the store per call.
const APPEND_BATCH: usize = 10_000;

/// The group key [`crate::alerting`] evaluates by (`<file>;<group>`).
pub fn group_key() -> String {
    format!("{GROUP_FILE};{GROUP_NAME}")
}

/// The log query part of a saved search (its pipes do not count).
fn search_part(query: &str) -> String {
    match pipes::parse(query) {
        Ok(Some(pipeline)) => pipeline.search,
        _ => query.to_string(),
    }
}

/// The counter's help text.
fn help(search: &SavedSearch) -> String {
    format!("Records matching the saved search {:?}", search.name)
}

/// The counters of the searches that have an alert.
pub fn metric_configs(searches: &[SavedSearch]) -> Vec<LogMetricConfig> {
    searches
        .iter()
        .filter_map(|search| {
            let alert = search.alert.as_ref()?;
            Some(LogMetricConfig {
                name: alert.metric.clone(),
                help: help(search),
                query: search_part(&search.query),
                labels: alert.group_by.iter().cloned().collect(),
            })
        })
        .collect()
}

/// The rule group of the searches that have an alert (none without one),
/// checked as a rule file is.
pub fn rule_group(
    searches: &[SavedSearch],
    evaluation_interval: Duration,
) -> Result<Option<RuleGroup>, String> {
    let rules: Vec<Value> = searches
        .iter()
        .filter_map(|search| {
            let alert = search.alert.as_ref()?;
            let label = alert.group_by.as_deref().map(label_for);
            Some(rule(search, alert, label.as_deref()))
        })
        .collect();
    if rules.is_empty() {
        return Ok(None);
    }
    let doc = json!({"groups": [{"name": GROUP_NAME, "rules": rules}]});
    let text = serde_norway::to_string(&doc).map_err(|error| error.to_string())?;
    let mut groups = sightline_tsdb::rules::parse_rule_file(GROUP_FILE, &text, evaluation_interval)
        .map_err(|errors| errors.join("\n"))?;
    Ok(groups.pop())
}

fn rule(search: &SavedSearch, alert: &SearchAlert, label: Option<&str>) -> Value {
    let window = format!("{}s", alert.window_seconds);
    let by = label
        .map(|label| format!(" by ({label})"))
        .unwrap_or_default();
    let expr = format!(
        "sum{by} (increase({}[{window}])) > {}",
        alert.metric, alert.threshold
    );
    // The name goes into templates: no template delimiters from it.
    let name: String = search
        .name
        .chars()
        .filter(|character| !matches!(character, '{' | '}'))
        .collect();
    let whose = label
        .map(|label| format!(" for {label} {{{{ $labels.{label} }}}}"))
        .unwrap_or_default();
    let mut rule = json!({
        "alert": search.name,
        "expr": expr,
        "labels": {"severity": alert.severity, "saved_search": search.id},
        "annotations": {
            "summary": format!(
                "{{{{ $value }}}} records matched the saved search \"{name}\"{whose} in {window}"
            ),
            "description": format!(
                "More than {} records in {window} matched the saved search \"{name}\"",
                alert.threshold
            ),
        },
    });
    if alert.for_seconds > 0 {
        rule["for"] = json!(format!("{}s", alert.for_seconds));
    }
    rule
}

/// What [`backfill`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillReport {
    pub metric: String,
    /// The history's range, in milliseconds since the epoch.
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    pub series: usize,
    pub samples: usize,
    /// Stored records counted into the history.
    pub records: u64,
    /// What is missing from it (series cut off, partitions not aggregated,
    /// samples the store refused).
    pub warnings: Vec<String>,
}

/// Writes a new alert's history: the stored records matching the search
/// before the alert was made, counted per [`BACKFILL_STEP`] over the last
/// [`BACKFILL_RANGE`], as the counter's cumulative values. Returns the
/// report and each series' total (label values -> records), which the live
/// counter continues from. Blocks.
pub fn backfill(
    logs: &dyn LogReader,
    samples: &dyn SampleLog,
    search: &SavedSearch,
    alert: &SearchAlert,
) -> anyhow::Result<(BackfillReport, HashMap<Vec<String>, u64>)> {
    let label = alert.group_by.as_deref().map(label_for);
    let label = label.as_deref();
    let step_ms = BACKFILL_STEP.as_millis() as i64;
    let to_ms = alert.created / 1_000_000;
    let from_ms = (to_ms - BACKFILL_RANGE.as_millis() as i64).div_euclid(step_ms) * step_ms;
    let by = alert
        .group_by
        .as_deref()
        .map(|field| format!(" by {field}"))
        .unwrap_or_default();
    let text = format!(
        "{} | timechart span={}s count(){by}",
        search_part(&search.query),
        BACKFILL_STEP.as_secs()
    );
    let mut pipeline = pipes::parse(&text)?
        .ok_or_else(|| anyhow::anyhow!("the backfill's query has no pipes: {text}"))?;
    // Records without the field count too, unlabelled, as the live counter
    // counts them.
    pipeline.keep_missing = true;
    let table = logs.stats(&pipeline, from_ms * 1_000_000, to_ms * 1_000_000)?;
    let history = series_of(&table, alert.group_by.is_some());
    let mut report = BackfillReport {
        metric: alert.metric.clone(),
        from_ms,
        to_ms,
        step_ms,
        series: history.len(),
        warnings: table.warnings.clone(),
        ..BackfillReport::default()
    };
    let mut totals = HashMap::new();
    let mut batch: Vec<(Labels, i64, f64)> = Vec::new();
    let flush = |batch: &mut Vec<(Labels, i64, f64)>, report: &mut BackfillReport| {
        if batch.is_empty() {
            return Ok::<(), anyhow::Error>(());
        }
        let outcome = samples.append(batch)?;
        report.samples += batch.len() - outcome.rejected.len();
        if let Some((_, error)) = outcome.rejected.first() {
            report.warnings.push(format!(
                "{} samples were refused by the store: {error}",
                outcome.rejected.len()
            ));
        }
        batch.clear();
        Ok(())
    };
    samples.set_metadata(
        &alert.metric,
        MetricMetadata {
            kind: "counter".into(),
            help: help(search),
            unit: String::new(),
        },
    );
    for (value, counts) in history {
        let Some((&first, _)) = counts.iter().find(|(_, count)| **count > 0) else {
            continue;
        };
        let mut pairs = vec![("__name__".to_string(), alert.metric.clone())];
        if let Some(label) = label {
            pairs.push((label.to_string(), value.clone()));
        }
        let labels = Labels::new(pairs);
        // A zero where the series starts, so `increase` counts its first
        // records, then the running total at every step's end.
        batch.push((labels.clone(), first, 0.0));
        let mut total = 0u64;
        let mut at = first;
        while at < to_ms {
            total += counts.get(&at).copied().unwrap_or(0);
            batch.push((labels.clone(), (at + step_ms).min(to_ms), total as f64));
            at += step_ms;
            if batch.len() >= APPEND_BATCH {
                flush(&mut batch, &mut report)?;
            }
        }
        report.records += total;
        let key = if label.is_some() {
            vec![value]
        } else {
            Vec::new()
        };
        totals.insert(key, total);
    }
    flush(&mut batch, &mut report)?;
    Ok((report, totals))
}

/// A timechart's rows (`_time`, [the field], `count`) as series: label
/// value -> bucket start (ms) -> records.
fn series_of(table: &StatsTable, grouped: bool) -> BTreeMap<String, BTreeMap<i64, u64>> {
    let mut series: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
    for row in &table.rows {
        let (Some(at), Some(count)) = (
            row.first().and_then(Value::as_i64),
            row.last().and_then(Value::as_u64),
        ) else {
            continue;
        };
        let value = match (grouped, row.get(1)) {
            (true, Some(Value::String(text))) => text.clone(),
            (true, Some(Value::Null) | None) | (false, _) => String::new(),
            (true, Some(other)) => other.to_string(),
        };
        *series.entry(value).or_default().entry(at).or_default() += count;
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_store::{LogRecord, LogStore};
    use sightline_tsdb::promql::{Engine, Value as PromValue};

    fn search(group_by: Option<&str>, created: i64) -> SavedSearch {
        SavedSearch {
            id: "failed-logins".into(),
            name: "failed logins {x}".into(),
            query: "body:\"login failed\" | stats count() by ip_address".into(),
            created,
            alert: Some(SearchAlert {
                metric: "search_failed_logins_total".into(),
                group_by: group_by.map(str::to_string),
                threshold: 3.0,
                window_seconds: 60,
                for_seconds: 0,
                severity: "warning".into(),
                created,
            }),
        }
    }

    #[test]
    fn a_search_becomes_a_checked_rule_and_a_counter_without_its_pipes() {
        let searches = vec![search(Some("attributes.ip_address"), 0)];
        let configs = metric_configs(&searches);
        assert_eq!(configs[0].query, "body:\"login failed\"");
        assert_eq!(configs[0].labels, vec!["attributes.ip_address".to_string()]);
        let group = rule_group(&searches, Duration::from_secs(1))
            .unwrap()
            .unwrap();
        assert_eq!(group.name, GROUP_NAME);
        assert_eq!(group.file, GROUP_FILE);
        let rule = &group.rules[0];
        assert_eq!(rule.name, "failed logins {x}");
        assert_eq!(
            rule.query,
            "sum by (ip_address) (increase(search_failed_logins_total[60s])) > 3"
        );
        assert_eq!(rule.labels["saved_search"], "failed-logins");
        let summary = &rule.alerting.as_ref().unwrap().annotations["summary"];
        assert!(summary.contains("\"failed logins x\""), "{summary}");
        assert!(rule_group(&[], Duration::from_secs(1)).unwrap().is_none());
    }

    #[test]
    fn history_is_the_stored_records_running_total_per_label_value() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::open(&dir.path().join("logs")).unwrap();
        let step = BACKFILL_STEP.as_nanos() as i64;
        // Made at minute 1000; records 10 and 3 steps before, from two
        // addresses, and one that does not match.
        let created = 1_000 * 60 * 1_000_000_000i64;
        let record = |at: i64, body: &str, ip: &str| {
            let mut record = LogRecord {
                timestamp: at,
                body: body.into(),
                service: "gateway".into(),
                ..LogRecord::default()
            };
            record
                .attributes
                .insert("ip_address".into(), Value::from(ip));
            record
        };
        let mut records = Vec::new();
        for _ in 0..4 {
            records.push(record(created - 10 * step + 1, "login failed", "10.0.0.1"));
        }
        records.push(record(created - 3 * step + 1, "login failed", "10.0.0.1"));
        records.push(record(created - 3 * step + 2, "login failed", "10.0.0.2"));
        records.push(record(created - 3 * step + 3, "login ok", "10.0.0.2"));
        // After the alert was made: the live counter's, not history's.
        records.push(record(created + 1, "login failed", "10.0.0.1"));
        logs.add(0, &records).unwrap();
        logs.commit(1).unwrap();

        let metrics_dir = tempfile::tempdir().unwrap();
        let store = sightline_tsdb::MetricStore::open(metrics_dir.path()).unwrap();
        let search = search(Some("ip_address"), created);
        let alert = search.alert.clone().unwrap();
        let (report, totals) = backfill(&logs, &store, &search, &alert).unwrap();
        assert_eq!(report.records, 6, "{report:?}");
        assert_eq!(report.series, 2);
        assert!(report.warnings.is_empty(), "{report:?}");
        assert_eq!(totals[&vec!["10.0.0.1".to_string()]], 5);
        assert_eq!(totals[&vec!["10.0.0.2".to_string()]], 1);

        let created_ms = created / 1_000_000;
        let at = |query: &str, ms: i64| -> Vec<(String, f64)> {
            let value = Engine::default()
                .instant_query(&*store.reader(), query, ms)
                .unwrap();
            let PromValue::Vector(samples) = value else {
                panic!("{value:?}")
            };
            let mut found: Vec<(String, f64)> = samples
                .iter()
                .map(|sample| (sample.labels.get("ip_address").to_string(), sample.value))
                .collect();
            found.sort_by(|a, b| a.0.cmp(&b.0));
            found
        };
        let step_ms = step / 1_000_000;
        assert_eq!(
            at("search_failed_logins_total", created_ms - 5 * step_ms),
            vec![("10.0.0.1".to_string(), 4.0)]
        );
        assert_eq!(
            at("search_failed_logins_total", created_ms),
            vec![("10.0.0.1".to_string(), 5.0), ("10.0.0.2".to_string(), 1.0)]
        );
        // The burst ten steps back is an increase of 4 in its minute.
        assert_eq!(
            at(
                "sum by (ip_address) (increase(search_failed_logins_total[1m]))",
                created_ms - 8 * step_ms
            )
            .iter()
            .map(|(ip, value)| (ip.clone(), value.round()))
            .collect::<Vec<_>>(),
            vec![("10.0.0.1".to_string(), 4.0)]
        );
    }
}
