//! Rule files in Prometheus' format, read and checked like
//! `promtool check rules`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use promql_parser::parser::Expr;
use serde::Deserialize;
use sightline_vocab::names::{is_label_name, is_metric_name};

use super::template;
use crate::promql::{Engine, parse_duration};

/// A parsed and checked rule group, ready to evaluate.
#[derive(Debug, Clone)]
pub struct RuleGroup {
    pub name: String,
    /// The file the group came from, as given.
    pub file: String,
    pub interval: Duration,
    /// Most series one rule may produce; 0 is no limit.
    pub limit: usize,
    pub rules: Vec<Rule>,
}

/// One recording or alerting rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `record:` or `alert:` name.
    pub name: String,
    pub query: String,
    pub expr: Expr,
    /// Labels added to every result (templated for alerting rules).
    pub labels: BTreeMap<String, String>,
    /// `None` for a recording rule.
    pub alerting: Option<AlertingSpec>,
}

/// What only alerting rules have.
#[derive(Debug, Clone, Default)]
pub struct AlertingSpec {
    pub for_duration: Duration,
    pub keep_firing_for: Duration,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    groups: Vec<GroupDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    name: String,
    interval: Option<String>,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    /// Prometheus accepts these; they change nothing here.
    #[serde(default)]
    query_offset: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    record: Option<String>,
    alert: Option<String>,
    expr: Option<serde_norway::Value>,
    #[serde(rename = "for")]
    for_duration: Option<String>,
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Reads and checks one rule file. `default_interval` applies to groups
/// without an `interval`. Every problem is reported, each naming the file,
/// the group and the rule.
pub fn load_rule_file(
    path: &Path,
    default_interval: Duration,
) -> Result<Vec<RuleGroup>, Vec<String>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| vec![format!("{file}: {error}")])?;
    parse_rule_file(&file, &text, default_interval)
}

/// Parses and checks the text of a rule file named `file`.
pub fn parse_rule_file(
    file: &str,
    text: &str,
    default_interval: Duration,
) -> Result<Vec<RuleGroup>, Vec<String>> {
    let doc: FileDoc =
        serde_norway::from_str(text).map_err(|error| vec![format!("{file}: {error}")])?;
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut names = BTreeSet::new();
    for group in doc.groups {
        let at_group = format!("{file}: group {:?}", group.name);
        if group.name.is_empty() {
            errors.push(format!("{file}: a group name is empty"));
        }
        if !names.insert(group.name.clone()) {
            errors.push(format!("{at_group}: repeated group name"));
        }
        let interval = match group.interval.as_deref().map(parse_duration) {
            None => default_interval,
            Some(Ok(interval)) if !interval.is_zero() => interval,
            Some(Ok(_)) => {
                errors.push(format!("{at_group}: interval must be positive"));
                default_interval
            }
            Some(Err(error)) => {
                errors.push(format!("{at_group}: {error}"));
                default_interval
            }
        };
        if let Some(Err(error)) = group.query_offset.as_deref().map(parse_duration) {
            errors.push(format!("{at_group}: query_offset: {error}"));
        }
        let mut rules = Vec::new();
        for (index, rule) in group.rules.into_iter().enumerate() {
            match check_rule(rule, &group.labels) {
                Ok(rule) => rules.push(rule),
                Err(problems) => errors.extend(
                    problems
                        .into_iter()
                        .map(|problem| format!("{at_group}, rule {}: {problem}", index + 1)),
                ),
            }
        }
        groups.push(RuleGroup {
            name: group.name,
            file: file.to_string(),
            interval,
            limit: group.limit,
            rules,
        });
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

fn check_rule(rule: RuleDoc, group_labels: &BTreeMap<String, String>) -> Result<Rule, Vec<String>> {
    let mut errors = Vec::new();
    let name = match (&rule.record, &rule.alert) {
        (Some(_), Some(_)) => {
            errors.push("only one of 'record' and 'alert' may be set".to_string());
            String::new()
        }
        (None, None) => {
            errors.push("one of 'record' or 'alert' must be set".to_string());
            String::new()
        }
        (Some(record), None) => {
            if !is_metric_name(record) {
                errors.push(format!("invalid recording rule name: {record:?}"));
            }
            record.clone()
        }
        (None, Some(alert)) => {
            if alert.is_empty() {
                errors.push("alert name is empty".to_string());
            }
            alert.clone()
        }
    };
    let named = |message: String| {
        if name.is_empty() {
            message
        } else {
            format!("{name:?}: {message}")
        }
    };
    let query = match &rule.expr {
        Some(serde_norway::Value::String(text)) => text.clone(),
        Some(serde_norway::Value::Number(number)) => number.to_string(),
        Some(serde_norway::Value::Bool(value)) => value.to_string(),
        _ => {
            errors.push(named("field 'expr' must be set in rule".to_string()));
            String::new()
        }
    };
    let expr = match Engine::parse(&query) {
        Ok(expr) => Some(expr),
        Err(error) if !query.is_empty() => {
            errors.push(named(format!("could not parse expression: {error}")));
            None
        }
        Err(_) => None,
    };
    let mut labels = group_labels.clone();
    for (key, value) in &rule.labels {
        if !is_label_name(key) {
            errors.push(named(format!("invalid label name: {key:?}")));
        }
        labels.insert(key.clone(), value.clone());
    }
    let mut duration = |field: &str, text: &Option<String>| match text.as_deref() {
        None => Duration::ZERO,
        Some(text) => parse_duration(text).unwrap_or_else(|error| {
            errors.push(named(format!("{field}: {error}")));
            Duration::ZERO
        }),
    };
    let for_duration = duration("for", &rule.for_duration);
    let keep_firing_for = duration("keep_firing_for", &rule.keep_firing_for);
    let alerting = if rule.record.is_some() {
        if rule.for_duration.is_some() {
            errors.push(named("invalid field 'for' in recording rule".to_string()));
        }
        if rule.keep_firing_for.is_some() {
            errors.push(named(
                "invalid field 'keep_firing_for' in recording rule".to_string(),
            ));
        }
        if !rule.annotations.is_empty() {
            errors.push(named(
                "invalid field 'annotations' in recording rule".to_string(),
            ));
        }
        None
    } else {
        for (key, text) in rule.annotations.iter().chain(rule.labels.iter()) {
            if !is_label_name(key) {
                errors.push(named(format!("invalid annotation name: {key:?}")));
            }
            if let Err(error) = template::check(text) {
                errors.push(named(format!("template of {key:?}: {error}")));
            }
        }
        Some(AlertingSpec {
            for_duration,
            keep_firing_for,
            annotations: rule.annotations.clone(),
        })
    };
    match expr {
        Some(expr) if errors.is_empty() => Ok(Rule {
            name,
            query,
            expr,
            labels,
            alerting,
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_prometheus_rule_file_loads() {
        let groups = parse_rule_file(
            "rules.yml",
            r#"
groups:
  - name: api
    interval: 30s
    rules:
      - record: job:http_requests:rate5m
        expr: sum by (job) (rate(http_requests_total[5m]))
        labels: { team: shop }
      - alert: HighErrorRate
        expr: job:http_requests:rate5m > 0.5
        for: 10m
        keep_firing_for: 5m
        labels: { severity: page }
        annotations: { summary: "{{ $labels.job }} errors at {{ $value | humanize }}" }
  - name: other
    rules: [{ alert: Up, expr: "vector(1)" }]
"#,
            MINUTE,
        )
        .unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].interval, Duration::from_secs(30));
        assert_eq!(groups[1].interval, MINUTE);
        let alert = groups[0].rules[1].alerting.as_ref().unwrap();
        assert_eq!(alert.for_duration, Duration::from_secs(600));
        assert_eq!(alert.keep_firing_for, Duration::from_secs(300));
        assert!(groups[0].rules[0].alerting.is_none());
        assert_eq!(groups[0].rules[0].labels["team"], "shop");
    }

    #[test]
    fn every_problem_names_file_group_and_rule() {
        let errors = parse_rule_file(
            "bad.yml",
            r#"
groups:
  - name: g
    rules:
      - record: "not a name"
        expr: up
      - alert: Broken
        expr: "sum(up"
      - alert: Both
        record: both
        expr: up
      - alert: BadTemplate
        expr: up
        annotations: { a: "{{ $labels.x " }
      - record: rec
        expr: up
        for: 5m
  - name: g
    rules: []
"#,
            MINUTE,
        )
        .unwrap_err();
        let all = errors.join("\n");
        assert!(
            all.contains("bad.yml: group \"g\", rule 1: invalid recording rule name"),
            "{all}"
        );
        assert!(
            all.contains("rule 2: \"Broken\": could not parse expression"),
            "{all}"
        );
        assert!(
            all.contains("rule 3: only one of 'record' and 'alert'"),
            "{all}"
        );
        assert!(
            all.contains("rule 4: \"BadTemplate\": template of \"a\""),
            "{all}"
        );
        assert!(
            all.contains("rule 5: \"rec\": invalid field 'for'"),
            "{all}"
        );
        assert!(all.contains("group \"g\": repeated group name"), "{all}");
        let errors = parse_rule_file(
            "x.yml",
            "groups: [{ name: a, rules: [{ alrt: x }] }]",
            MINUTE,
        )
        .unwrap_err();
        assert!(
            errors[0].starts_with("x.yml: ") && errors[0].contains("alrt"),
            "{errors:?}"
        );
    }
}
