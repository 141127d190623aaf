//! Rule unit tests in `promtool test rules` format: input series in the
//! expanding notation, then the alerts expected firing and the query
//! results expected at given times.
//!
//! ```yaml
//! rule_files: [../shop.rules.yml]
//! evaluation_interval: 15s
//! tests:
//!   - interval: 15s
//!     input_series:
//!       - { series: 'up{job="api"}', values: '1 1 0x10 _ stale' }
//!     alert_rule_test:
//!       - eval_time: 2m
//!         alertname: TargetDown
//!         exp_alerts: [{ exp_labels: { job: api, severity: page } }]
//!     promql_expr_test:
//!       - expr: up
//!         eval_time: 0s
//!         exp_samples: [{ labels: 'up{job="api"}', value: 1 }]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;
use serde::Deserialize;

use super::engine::{EvalSettings, GroupState};
use super::file::load_rule_file;
use super::status::AlertState;
use crate::promql::{Engine, MemoryStorage, Value, parse_duration, stale_nan};
use crate::{Labels, METRIC_NAME};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    evaluation_interval: Option<String>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    name: String,
    interval: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTestCase>,
    #[serde(default)]
    promql_expr_test: Vec<PromqlTestCase>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTestCase {
    eval_time: String,
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromqlTestCase {
    expr: String,
    eval_time: String,
    #[serde(default)]
    exp_samples: Vec<ExpectedSample>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

/// The outcome of one test file: empty `failures` is a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct TestFileReport {
    pub file: PathBuf,
    /// One entry per failed check (or a problem with the file itself), in
    /// promtool's wording.
    pub failures: Vec<String>,
}

impl TestFileReport {
    /// Whether every test of the file passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test of the unit-test file at `path`; rule files are found
/// relative to its directory.
pub fn run_test_file(path: &Path) -> TestFileReport {
    let failures = match run(path) {
        Ok(failures) => failures,
        Err(error) => vec![error],
    };
    TestFileReport {
        file: path.to_path_buf(),
        failures,
    }
}

fn run(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("{error}"))?;
    let file: TestFile = serde_norway::from_str(&text).map_err(|error| error.to_string())?;
    let evaluation_interval = match &file.evaluation_interval {
        Some(text) => duration(text)?,
        None => Duration::from_secs(60),
    };
    if evaluation_interval.is_zero() {
        return Err("evaluation_interval must be positive".to_string());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut groups = Vec::new();
    for pattern in &file.rule_files {
        for rule_file in expand_glob(base, pattern)? {
            groups.extend(
                load_rule_file(&rule_file, evaluation_interval)
                    .map_err(|errors| errors.join("\n"))?,
            );
        }
    }
    if !file.group_eval_order.is_empty() {
        let position = |name: &str| {
            file.group_eval_order
                .iter()
                .position(|ordered| ordered == name)
                .unwrap_or(usize::MAX)
        };
        groups.sort_by_key(|group| position(&group.name));
    }
    let mut failures = Vec::new();
    for (index, test) in file.tests.iter().enumerate() {
        let name = if test.name.is_empty() {
            format!("test {}", index + 1)
        } else {
            test.name.clone()
        };
        let result = run_group(test, &groups, evaluation_interval);
        match result {
            Ok(errors) => failures.extend(
                errors
                    .into_iter()
                    .map(|error| format!("name: {name},\n{error}")),
            ),
            Err(error) => failures.push(format!("name: {name},\n    {error}")),
        }
    }
    Ok(failures)
}

/// The files matching `pattern`, relative to `base` unless absolute.
pub fn expand_glob(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    let text = full.to_string_lossy().to_string();
    if !text.contains(['*', '?', '[']) {
        return Ok(vec![full]);
    }
    let paths = glob::glob(&text).map_err(|error| format!("bad pattern {pattern:?}: {error}"))?;
    let mut files: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
    files.sort();
    Ok(files)
}

fn run_group(
    test: &TestGroup,
    rule_groups: &[super::file::RuleGroup],
    evaluation_interval: Duration,
) -> Result<Vec<String>, String> {
    let interval_ms = match &test.interval {
        Some(text) => duration(text)?.as_millis() as i64,
        None => evaluation_interval.as_millis() as i64,
    };
    let mut storage = MemoryStorage::default();
    for input in &test.input_series {
        let labels = parse_series(&input.series)?;
        let values = expand_values(&input.values)
            .map_err(|error| format!("series {:?}: {error}", input.series))?;
        for (index, value) in values.into_iter().enumerate() {
            if let Some(value) = value {
                storage.append(&labels, index as i64 * interval_ms, value);
            }
        }
    }
    let mut alert_cases: Vec<(i64, &AlertTestCase)> = test
        .alert_rule_test
        .iter()
        .map(|case| Ok((duration(&case.eval_time)?.as_millis() as i64, case)))
        .collect::<Result<_, String>>()?;
    alert_cases.sort_by_key(|(time, _)| *time);
    let mut expr_cases: Vec<(i64, &PromqlTestCase)> = test
        .promql_expr_test
        .iter()
        .map(|case| Ok((duration(&case.eval_time)?.as_millis() as i64, case)))
        .collect::<Result<_, String>>()?;
    expr_cases.sort_by_key(|(time, _)| *time);
    let last = alert_cases
        .iter()
        .map(|(time, _)| *time)
        .chain(expr_cases.iter().map(|(time, _)| *time))
        .max()
        .unwrap_or(0);
    for (_, case) in &alert_cases {
        let known = rule_groups.iter().any(|group| {
            group
                .rules
                .iter()
                .any(|rule| rule.alerting.is_some() && rule.name == case.alertname)
        });
        if !known {
            return Err(format!(
                "alertname {:?} is not an alerting rule",
                case.alertname
            ));
        }
    }

    let engine = Engine::default();
    let settings = EvalSettings {
        external_labels: test.external_labels.clone(),
        external_url: test.external_url.clone(),
        ..EvalSettings::default()
    };
    let mut groups: Vec<GroupState> = rule_groups.iter().cloned().map(GroupState::new).collect();
    let step_ms = evaluation_interval.as_millis() as i64;
    let mut failures = Vec::new();
    let mut next_alert_case = 0;
    let mut next_expr_case = 0;
    let mut now = 0;
    while now <= last {
        for group in &mut groups {
            group.evaluate(&mut storage, &engine, now, &settings);
        }
        while let Some((time, case)) = alert_cases.get(next_alert_case)
            && *time < now + step_ms
        {
            next_alert_case += 1;
            if let Some(failure) = check_alerts(case, &groups) {
                failures.push(failure);
            }
        }
        // An expression test reads rule outputs up to its time only.
        while let Some((time, case)) = expr_cases.get(next_expr_case)
            && *time < now + step_ms
        {
            next_expr_case += 1;
            if let Some(failure) = check_expression(case, *time, &storage, &engine) {
                failures.push(failure);
            }
        }
        now += step_ms;
    }
    Ok(failures)
}

type AlertView = (BTreeMap<String, String>, BTreeMap<String, String>);

fn check_alerts(case: &AlertTestCase, groups: &[GroupState]) -> Option<String> {
    let mut got: Vec<AlertView> = groups
        .iter()
        .flat_map(|group| group.alerts(&case.alertname))
        .filter(|alert| alert.state == AlertState::Firing)
        .map(|alert| (alert.labels, alert.annotations))
        .collect();
    let mut expected: Vec<AlertView> = case
        .exp_alerts
        .iter()
        .map(|alert| {
            let mut labels = alert.exp_labels.clone();
            labels.insert("alertname".to_string(), case.alertname.clone());
            (labels, alert.exp_annotations.clone())
        })
        .collect();
    got.sort();
    expected.sort();
    if got == expected {
        return None;
    }
    Some(format!(
        "    alertname: {}, time: {},\n        exp:{},\n        got:{}",
        case.alertname,
        case.eval_time,
        show_alerts(&expected),
        show_alerts(&got)
    ))
}

fn show_alerts(alerts: &[AlertView]) -> String {
    let shown: Vec<String> = alerts
        .iter()
        .enumerate()
        .map(|(index, (labels, annotations))| {
            format!(
                "\n            {index}:\n              Labels:{}\n              Annotations:{}",
                show_map(labels),
                show_map(annotations)
            )
        })
        .collect();
    if shown.is_empty() {
        "[]".to_string()
    } else {
        shown.concat()
    }
}

fn show_map(map: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn check_expression(
    case: &PromqlTestCase,
    time_ms: i64,
    storage: &MemoryStorage,
    engine: &Engine,
) -> Option<String> {
    let header = format!("    expr: {:?}, time: {},", case.expr, case.eval_time);
    let value = match engine.instant_query(storage, &case.expr, time_ms) {
        Ok(value) => value,
        Err(error) => return Some(format!("{header}\n        err: {error}")),
    };
    let mut got: Vec<(Labels, f64)> = match value {
        Value::Vector(samples) => samples.into_iter().map(|s| (s.labels, s.value)).collect(),
        Value::Scalar(value) => vec![(Labels::default(), value)],
        other => {
            return Some(format!(
                "{header}\n        err: expression gives {other:?}, not a vector or scalar"
            ));
        }
    };
    let mut expected = Vec::new();
    for sample in &case.exp_samples {
        let labels = if sample.labels.trim().is_empty() {
            Labels::default()
        } else {
            match parse_series(&sample.labels) {
                Ok(labels) => labels,
                Err(error) => return Some(format!("{header}\n        err: {error}")),
            }
        };
        expected.push((labels, sample.value));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let same = got.len() == expected.len()
        && got
            .iter()
            .zip(&expected)
            .all(|((gl, gv), (el, ev))| gl == el && almost_equal(*gv, *ev));
    if same {
        return None;
    }
    let show = |samples: &[(Labels, f64)]| {
        let shown: Vec<String> = samples
            .iter()
            .map(|(labels, value)| format!("{{Labels:{labels} Value:{value}}}"))
            .collect();
        format!("[{}]", shown.join(" "))
    };
    Some(format!(
        "{header}\n        exp: {}\n        got: {}",
        show(&expected),
        show(&got)
    ))
}

fn almost_equal(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let difference = (a - b).abs();
    difference <= 1e-6 * a.abs().max(b.abs()) || difference < 1e-12
}

fn duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(text.trim())
}

/// Parses `metric{label="value", ...}` into a label set.
pub fn parse_series(text: &str) -> Result<Labels, String> {
    let expr = Engine::parse(text).map_err(|error| format!("series {text:?}: {error}"))?;
    let Expr::VectorSelector(selector) = expr else {
        return Err(format!("series {text:?} is not a metric with labels"));
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(name) = selector.name {
        pairs.push((METRIC_NAME.to_string(), name));
    }
    for matcher in selector.matchers.matchers {
        if matcher.op != MatchOp::Equal {
            return Err(format!("series {text:?}: only = may name a label"));
        }
        pairs.push((matcher.name, matcher.value));
    }
    Ok(Labels::new(pairs))
}

/// Expands promtool's value notation: `1 2 3`, `0+10x100` (101 values),
/// `5-1x4`, `7x3` (four 7s), `_` (no sample), `_x3` (three), `stale`.
pub fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut values = Vec::new();
    for token in text.split_whitespace() {
        if token == "_" {
            values.push(None);
            continue;
        }
        if token == "stale" {
            values.push(Some(stale_nan()));
            continue;
        }
        let Some((head, count)) = token.rsplit_once('x') else {
            values.push(Some(number(token)?));
            continue;
        };
        let count: usize = count
            .parse()
            .map_err(|_| format!("bad repetition count in {token:?}"))?;
        if head == "_" {
            values.extend(std::iter::repeat_n(None, count));
            continue;
        }
        let split = head
            .char_indices()
            .skip(1)
            .find(|(index, c)| {
                (*c == '+' || *c == '-') && !matches!(head.as_bytes()[index - 1], b'e' | b'E')
            })
            .map(|(index, _)| index);
        let (start, step) = match split {
            Some(index) => {
                let step = number(&head[index + 1..])?;
                let step = if head.as_bytes()[index] == b'-' {
                    -step
                } else {
                    step
                };
                (number(&head[..index])?, step)
            }
            None => (number(head)?, 0.0),
        };
        for step_index in 0..=count {
            values.push(Some(start + step * step_index as f64));
        }
    }
    Ok(values)
}

fn number(text: &str) -> Result<f64, String> {
    match text {
        "Inf" | "+Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => text
            .parse()
            .map_err(|_| format!("{text:?} is not a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::is_stale_nan;

    #[test]
    fn expanding_notation_matches_promtool() {
        let some = |values: &[f64]| values.iter().map(|v| Some(*v)).collect::<Vec<_>>();
        assert_eq!(
            expand_values("-2+4x3").unwrap(),
            some(&[-2.0, 2.0, 6.0, 10.0])
        );
        assert_eq!(
            expand_values("1-2x4").unwrap(),
            some(&[1.0, -1.0, -3.0, -5.0, -7.0])
        );
        assert_eq!(expand_values("1x4").unwrap(), some(&[1.0; 5]));
        assert_eq!(expand_values("1e3+1x1").unwrap(), some(&[1000.0, 1001.0]));
        let values = expand_values("1 _x3 stale _").unwrap();
        assert_eq!(values.len(), 6);
        assert_eq!(values[0], Some(1.0));
        assert_eq!(&values[1..4], &[None, None, None]);
        assert!(is_stale_nan(values[4].unwrap()));
        assert_eq!(values[5], None);
        assert!(expand_values("1 x").is_err());
        assert!(expand_values("1+ax3").is_err());
    }

    #[test]
    fn series_notation_gives_labels() {
        let labels = parse_series(r#"http_requests_total{service="a", status="500"}"#).unwrap();
        assert_eq!(labels.get("__name__"), "http_requests_total");
        assert_eq!(labels.get("status"), "500");
        assert!(parse_series(r#"up{job=~"a"}"#).is_err());
    }
}
