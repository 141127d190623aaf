//! The alert state machine, the series rules write, and for-state restore.

use std::time::Duration;

use super::*;
use crate::promql::{Engine, MemoryStorage, Queryable, Value, is_stale_nan};
use crate::{Labels, MetricStore};

const MINUTE: i64 = 60_000;

fn group(text: &str) -> GroupState {
    let mut groups = parse_rule_file("test.yml", text, Duration::from_secs(60)).unwrap();
    GroupState::new(groups.remove(0))
}

fn series(name: &str, pairs: &[(&str, &str)]) -> Labels {
    let mut labels = Labels::new(pairs.iter().copied());
    labels.set("__name__", name);
    labels
}

fn query(storage: &MemoryStorage, text: &str, time_ms: i64) -> Vec<(Labels, f64)> {
    match Engine::default()
        .instant_query(storage, text, time_ms)
        .unwrap()
    {
        Value::Vector(samples) => samples.into_iter().map(|s| (s.labels, s.value)).collect(),
        other => panic!("expected a vector, got {other:?}"),
    }
}

fn states(group: &GroupState, alertname: &str) -> Vec<(String, AlertState)> {
    group
        .alerts(alertname)
        .into_iter()
        .map(|alert| (alert.labels["instance"].clone(), alert.state))
        .collect()
}

const ERRORS_RULE: &str = r#"
groups:
  - name: g
    rules:
      - alert: HighErrors
        expr: errors > 5
        for: 2m
        keep_firing_for: 3m
        labels: { severity: page, team: "{{ $labels.job }}-oncall" }
        annotations:
          summary: "{{ $labels.instance }} has {{ $value | humanize }} errors"
          percent: "{{ 0.5 | humanizePercentage }}"
"#;

#[test]
fn pending_fires_after_for_keeps_firing_then_resolves() {
    let mut storage = MemoryStorage::default();
    let mut group = group(ERRORS_RULE);
    let settings = EvalSettings::default();
    let engine = Engine::default();
    let errors = series("errors", &[("job", "api"), ("instance", "a")]);
    // errors > 5 from minute 0 to minute 4, then back to 0
    let values = [10.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0];
    let mut seen = Vec::new();
    let mut changed = Vec::new();
    for (minute, value) in values.iter().enumerate() {
        let now = minute as i64 * MINUTE;
        storage.append(&errors, now, *value);
        let outcome = group.evaluate(&mut storage, &engine, now, &settings);
        changed.extend(outcome.changed.iter().map(|alert| (minute, alert.resolved)));
        seen.push(
            states(&group, "HighErrors")
                .first()
                .map(|(_, state)| *state),
        );
    }
    use AlertState::*;
    assert_eq!(
        seen,
        vec![
            Some(Pending),
            Some(Pending),
            Some(Firing),
            Some(Firing),
            Some(Firing),
            // stopped matching at minute 5: kept firing for 3 minutes
            Some(Firing),
            Some(Firing),
            Some(Firing),
            Some(Inactive),
        ]
    );
    assert_eq!(changed, vec![(2, false), (8, true)]);

    let alert = &group.alerts("HighErrors")[0];
    assert_eq!(alert.labels["severity"], "page");
    assert_eq!(alert.labels["team"], "api-oncall");
    assert_eq!(alert.labels["alertname"], "HighErrors");
    assert_eq!(alert.annotations["summary"], "a has 10 errors");
    assert_eq!(alert.annotations["percent"], "50%");
    assert_eq!(alert.active_at_ms, 0);
    assert_eq!(alert.fired_at_ms, Some(2 * MINUTE));
    assert_eq!(alert.resolved_at_ms, Some(8 * MINUTE));

    // ALERTS was pending, then firing, then ended with a staleness marker
    let alerts_at = |minute: i64| query(&storage, "ALERTS", minute * MINUTE);
    assert_eq!(alerts_at(1)[0].0.get("alertstate"), "pending");
    assert_eq!(alerts_at(4)[0].0.get("alertstate"), "firing");
    assert!(alerts_at(8).is_empty(), "{:?}", alerts_at(8));
    let raw = storage
        .select(
            &[crate::LabelMatcher::equal("__name__", "ALERTS")],
            0,
            10 * MINUTE,
        )
        .unwrap();
    let firing = raw
        .iter()
        .find(|series| series.labels.get("alertstate") == "firing")
        .unwrap();
    assert!(is_stale_nan(firing.samples.last().unwrap().1));
    let for_state = query(&storage, "ALERTS_FOR_STATE", 4 * MINUTE);
    assert_eq!(for_state[0].1, 0.0);
    assert_eq!(for_state[0].0.get("severity"), "page");

    let status = &group.status().rules[0];
    assert_eq!(status.health, RuleHealth::Ok);
}

#[test]
fn a_pending_alert_that_stops_matching_is_dropped_and_starts_over() {
    let mut storage = MemoryStorage::default();
    let mut group = group(ERRORS_RULE);
    let (engine, settings) = (Engine::default(), EvalSettings::default());
    let errors = series("errors", &[("job", "api"), ("instance", "a")]);
    for (minute, value) in [10.0, 0.0, 10.0, 10.0].iter().enumerate() {
        let now = minute as i64 * MINUTE;
        storage.append(&errors, now, *value);
        group.evaluate(&mut storage, &engine, now, &settings);
    }
    let alert = &group.alerts("HighErrors")[0];
    assert_eq!(alert.state, AlertState::Pending);
    assert_eq!(alert.active_at_ms, 2 * MINUTE);
}

#[test]
fn firing_alerts_are_resent_after_the_resend_delay_with_ends_at_ahead() {
    let mut storage = MemoryStorage::default();
    let mut group = group(
        "groups: [{ name: g, interval: 1m, rules: [{ alert: Always, expr: vector(1), labels: { instance: x } }] }]",
    );
    let engine = Engine::default();
    let settings = EvalSettings {
        resend_delay: Duration::from_secs(120),
        ..EvalSettings::default()
    };
    let sent: Vec<Vec<OutgoingAlert>> = (0..4)
        .map(|minute| {
            group
                .evaluate(&mut storage, &engine, minute * MINUTE, &settings)
                .to_send
        })
        .collect();
    let counts: Vec<usize> = sent.iter().map(Vec::len).collect();
    assert_eq!(counts, vec![1, 0, 1, 0]);
    let first = &sent[0][0];
    assert_eq!(first.starts_at_ms, 0);
    assert_eq!(first.ends_at_ms, 4 * 2 * MINUTE);
    assert!(!first.resolved);
}

#[test]
fn recording_rules_write_their_series_and_later_rules_read_them() {
    let mut storage = MemoryStorage::default();
    let mut group = group(
        r#"
groups:
  - name: g
    rules:
      - record: job:requests:sum
        expr: sum by (job) (requests)
        labels: { source: rule }
      - alert: ManyRequests
        expr: job:requests:sum > 2
"#,
    );
    for (instance, value) in [("a", 1.0), ("b", 2.0)] {
        storage.append(
            &series("requests", &[("job", "api"), ("instance", instance)]),
            0,
            value,
        );
    }
    group.evaluate(
        &mut storage,
        &Engine::default(),
        0,
        &EvalSettings::default(),
    );
    let recorded = query(&storage, "job:requests:sum", 0);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0.get("source"), "rule");
    assert_eq!(recorded[0].1, 3.0);
    let alert = &group.alerts("ManyRequests")[0];
    assert_eq!(alert.state, AlertState::Firing, "for: 0 fires at once");
    assert_eq!(alert.labels["job"], "api");
}

#[test]
fn template_errors_keep_the_raw_text_and_are_reported() {
    let mut storage = MemoryStorage::default();
    let mut group = group(
        r#"
groups:
  - name: g
    rules:
      - alert: Bad
        expr: vector(1)
        annotations: { summary: '{{ humanize "not a number" }}' }
"#,
    );
    group.evaluate(
        &mut storage,
        &Engine::default(),
        0,
        &EvalSettings::default(),
    );
    let alert = &group.alerts("Bad")[0];
    assert_eq!(
        alert.annotations["summary"],
        "{{ humanize \"not a number\" }}"
    );
    let status = &group.status().rules[0];
    assert_eq!(status.health, RuleHealth::Err);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("not a number")
    );
}

#[test]
fn a_rule_without_data_for_ten_evaluations_is_flagged() {
    let mut storage = MemoryStorage::default();
    let mut group = group("groups: [{ name: g, rules: [{ record: r, expr: missing_metric }] }]");
    let (engine, settings) = (Engine::default(), EvalSettings::default());
    let mut flagged_at = Vec::new();
    for minute in 0..12 {
        let outcome = group.evaluate(&mut storage, &engine, minute * 1_000, &settings);
        if !outcome.newly_without_data.is_empty() {
            flagged_at.push(minute);
        }
    }
    assert_eq!(flagged_at, vec![9]);
    assert_eq!(group.status().rules[0].no_data_since_ms, Some(0));
    storage.append(&series("missing_metric", &[]), 12_000, 1.0);
    group.evaluate(&mut storage, &engine, 12_000, &settings);
    assert_eq!(group.status().rules[0].no_data_since_ms, None);
}

#[test]
fn a_quiet_alerting_rule_is_not_flagged_but_one_on_a_missing_metric_is() {
    let mut storage = MemoryStorage::default();
    let mut group = group(
        r#"
groups:
  - name: g
    rules:
      - alert: Quiet
        expr: rate(errors[5m]) > 5
      - alert: Typo
        expr: rate(erorrs[5m]) > 5
      - alert: Constant
        expr: vector(1) < 0
"#,
    );
    let (engine, settings) = (Engine::default(), EvalSettings::default());
    let errors = series("errors", &[("job", "api")]);
    let mut flagged = Vec::new();
    for step in 0..12 {
        storage.append(&errors, step * 15_000, step as f64);
        let outcome = group.evaluate(&mut storage, &engine, step * 15_000, &settings);
        flagged.extend(outcome.newly_without_data);
    }
    assert_eq!(flagged, vec!["Typo".to_string()]);
    let status = group.status();
    assert_eq!(status.rules[0].no_data_since_ms, None);
    assert_eq!(status.rules[1].no_data_since_ms, Some(0));
    assert_eq!(status.rules[2].no_data_since_ms, None);
}

#[test]
fn group_limit_fails_the_rule() {
    let mut storage = MemoryStorage::default();
    let mut group = group("groups: [{ name: g, limit: 1, rules: [{ record: r, expr: up }] }]");
    for instance in ["a", "b"] {
        storage.append(&series("up", &[("instance", instance)]), 0, 1.0);
    }
    group.evaluate(
        &mut storage,
        &Engine::default(),
        0,
        &EvalSettings::default(),
    );
    let status = &group.status().rules[0];
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("exceeded limit of 1 with 2")
    );
}

const SLOW_RULE: &str = r#"
groups:
  - name: g
    rules:
      - alert: Slow
        expr: latency > 1
        for: 30m
"#;

#[test]
fn for_state_is_restored_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let settings = EvalSettings::default();
    let latency_a = series("latency", &[("instance", "a")]);
    let latency_b = series("latency", &[("instance", "b")]);
    {
        let store = MetricStore::open(dir.path()).unwrap();
        let mut group = group(SLOW_RULE);
        // both pending from minute 0
        for minute in 0..=5 {
            let now = minute * MINUTE;
            store
                .append(&[(latency_a.clone(), now, 5.0), (latency_b.clone(), now, 5.0)])
                .unwrap();
            group.evaluate(&mut &store, &engine, now, &settings);
        }
        assert_eq!(states(&group, "Slow").len(), 2);
    }
    // down from minute 5 to minute 7
    let store = MetricStore::open(dir.path()).unwrap();
    let mut group = group(SLOW_RULE);
    let now = 7 * MINUTE;
    store
        .append(&[(latency_a.clone(), now, 5.0), (latency_b.clone(), now, 5.0)])
        .unwrap();
    group.evaluate(&mut &store, &engine, now, &settings);
    let alerts = group.alerts("Slow");
    // pending 5 minutes before the restart, the 2 minutes down do not count
    assert_eq!(alerts[0].active_at_ms, 2 * MINUTE);
    assert_eq!(alerts[0].state, AlertState::Pending);

    // without restore a fresh engine would start over at minute 7
    let mut fresh = GroupState::new(
        parse_rule_file("test.yml", SLOW_RULE, Duration::from_secs(60)).unwrap()[0].clone(),
    );
    let mut empty = MemoryStorage::default();
    empty.append(&latency_a, now, 5.0);
    fresh.evaluate(&mut empty, &engine, now, &settings);
    assert_eq!(fresh.alerts("Slow")[0].active_at_ms, now);
}

#[test]
fn a_firing_alert_fires_again_at_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let settings = EvalSettings::default();
    let latency = series("latency", &[("instance", "a")]);
    let rules = SLOW_RULE.replace("30m", "2m");
    {
        let store = MetricStore::open(dir.path()).unwrap();
        let mut group = group(&rules);
        for minute in 0..=3 {
            store
                .append(&[(latency.clone(), minute * MINUTE, 5.0)])
                .unwrap();
            group.evaluate(&mut &store, &engine, minute * MINUTE, &settings);
        }
        assert_eq!(group.alerts("Slow")[0].state, AlertState::Firing);
    }
    let store = MetricStore::open(dir.path()).unwrap();
    let mut group = group(&rules);
    store.append(&[(latency.clone(), 4 * MINUTE, 5.0)]).unwrap();
    group.evaluate(&mut &store, &engine, 4 * MINUTE, &settings);
    let alert = &group.alerts("Slow")[0];
    assert_eq!(alert.state, AlertState::Firing);
    assert_eq!(alert.active_at_ms, 0);
}

#[test]
fn the_engine_reports_groups_for_the_status_api() {
    let groups = parse_rule_file("rules.yml", ERRORS_RULE, Duration::from_secs(60)).unwrap();
    let engine = RuleEngine::new(groups);
    let mut storage = MemoryStorage::default();
    storage.append(
        &series("errors", &[("job", "api"), ("instance", "a")]),
        0,
        9.0,
    );
    engine.evaluate(
        0,
        &mut storage,
        &Engine::default(),
        0,
        &EvalSettings::default(),
    );
    let status = engine.rule_groups();
    assert_eq!(status[0].file, "rules.yml");
    let RuleKind::Alerting { state, alerts, .. } = &status[0].rules[0].kind else {
        panic!("expected an alerting rule")
    };
    assert_eq!(*state, AlertState::Pending);
    assert_eq!(alerts[0].value, 9.0);
    let metrics = engine.render_metrics();
    assert!(metrics.contains("sightline_rules_alerts{state=\"pending\"} 1"));
    let group_name = &status[0].name;
    assert!(
        metrics.contains(&format!(
            "sightline_rules_group_last_duration_seconds{{rule_group=\"rules.yml;{group_name}\"}} "
        )),
        "{metrics}"
    );
}

fn shipped(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dashboards/rules")
        .join(path)
}

#[test]
fn shipped_rule_files_pass_the_checker() {
    for file in ["shop.rules.yml", "node.rules.yml"] {
        let groups = load_rule_file(&shipped(file), Duration::from_secs(60));
        assert!(groups.is_ok(), "{file}: {groups:?}");
    }
}

#[test]
fn shipped_unit_tests_pass_as_they_do_with_promtool() {
    // The files avoid samples on a range window's left edge, where
    // Prometheus 2 (Debian's promtool) and 3 (this engine) differ, so both
    // tools must pass them whole.
    for file in ["tests/node.rules.test.yml", "tests/shop.rules.test.yml"] {
        let report = unittest::run_test_file(&shipped(file));
        assert!(report.passed(), "{file}: {}", report.failures.join("\n"));
    }
}

#[test]
fn a_wrong_expectation_fails_and_says_what_differed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        r#"
groups:
  - name: g
    rules:
      - alert: Down
        expr: up == 0
        for: 1m
        labels: { severity: page }
        annotations: { summary: "{{ $labels.job }} down" }
      - record: job:up:sum
        expr: sum by (job) (up)
"#,
    )
    .unwrap();
    let test = |alert_time: &str, exp_value: &str| {
        format!(
            r#"
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - name: down
    interval: 1m
    input_series:
      - series: 'up{{job="api"}}'
        values: '1 0x5'
    alert_rule_test:
      - eval_time: {alert_time}
        alertname: Down
        exp_alerts:
          - exp_labels: {{ severity: page, job: api }}
            exp_annotations: {{ summary: "api down" }}
    promql_expr_test:
      - expr: job:up:sum
        eval_time: 3m
        exp_samples: [{{ labels: 'job:up:sum{{job="api"}}', value: {exp_value} }}]
"#
        )
    };
    let path = dir.path().join("good.test.yml");
    std::fs::write(&path, test("3m", "0")).unwrap();
    let report = unittest::run_test_file(&path);
    assert!(report.passed(), "{:?}", report.failures);

    // pending at 1m (for: 1m), and the sum is 0, not 1
    std::fs::write(&path, test("1m", "1")).unwrap();
    let report = unittest::run_test_file(&path);
    assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
    assert!(report.failures[0].contains("alertname: Down, time: 1m"));
    assert!(
        report.failures[0].contains("got:[]"),
        "{}",
        report.failures[0]
    );
    assert!(
        report.failures[1].contains("exp: [{Labels:job:up:sum{job=\"api\"} Value:1}]"),
        "{}",
        report.failures[1]
    );

    std::fs::write(&path, "rule_files: [missing.yml]\ntests: []\n").unwrap();
    let report = unittest::run_test_file(&path);
    assert!(
        report.failures[0].contains("missing.yml"),
        "{:?}",
        report.failures
    );
}

#[test]
fn a_group_taken_over_keeps_each_alerts_active_at_and_waits_for_readable_state() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let settings = EvalSettings::default();
    let latency = series("latency", &[("instance", "a")]);
    let store = MetricStore::open(dir.path()).unwrap();
    // Node A evaluates from minute 0 to minute 10: pending since minute 0.
    let rules = parse_rule_file("test.yml", SLOW_RULE, Duration::from_secs(60)).unwrap();
    let node_a = RuleEngine::new(rules.clone());
    for minute in 0..=10 {
        let now = minute * MINUTE;
        store.append(&[(latency.clone(), now, 5.0)]).unwrap();
        node_a.evaluate(0, &mut &store, &engine, now, &settings);
    }
    // Node B takes the group over at minute 12. Its first try cannot read
    // the samples yet: the rule is skipped, nothing starts afresh.
    let node_b = RuleEngine::new(rules);
    node_b.take_over(0);
    let now = 12 * MINUTE;
    store.append(&[(latency.clone(), now, 5.0)]).unwrap();
    struct Unreadable;
    impl Queryable for Unreadable {
        fn select(
            &self,
            _: &[crate::LabelMatcher],
            _: i64,
            _: i64,
        ) -> Result<Vec<crate::SeriesData>, crate::promql::QueryError> {
            Err(crate::promql::QueryError::Storage(
                "partition 70 has no owner yet".into(),
            ))
        }
    }
    let unreadable = Unreadable;
    let mut scratch = MemoryStorage::default();
    scratch.append(&latency, now, 5.0);
    let mut failing = ThroughLogOver(&scratch, &unreadable);
    node_b.evaluate(0, &mut failing, &engine, now, &settings);
    let status = node_b.read()[0].lock().unwrap().clone();
    assert!(status.alerts("Slow").is_empty(), "nothing started afresh");
    // The next tick reads: the alert is pending since minute 0, not
    // minute 12 and not shifted by the two minutes between.
    let now = 13 * MINUTE;
    store.append(&[(latency.clone(), now, 5.0)]).unwrap();
    node_b.evaluate(0, &mut &store, &engine, now, &settings);
    let status = node_b.read()[0].lock().unwrap().clone();
    let alerts = status.alerts("Slow");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].active_at_ms, 0);
    assert_eq!(alerts[0].state, AlertState::Pending);
    // and it fires at minute 30, as it would have on node A
    for minute in 14..=30 {
        let now = minute * MINUTE;
        store.append(&[(latency.clone(), now, 5.0)]).unwrap();
        node_b.evaluate(0, &mut &store, &engine, now, &settings);
    }
    let status = node_b.read()[0].lock().unwrap().clone();
    assert_eq!(status.alerts("Slow")[0].state, AlertState::Firing);

    // A node taking the firing alert over goes on firing it, from the time
    // it fired, and does not announce it again as newly fired.
    let node_c =
        RuleEngine::new(parse_rule_file("test.yml", SLOW_RULE, Duration::from_secs(60)).unwrap());
    node_c.take_over(0);
    let now = 32 * MINUTE;
    store.append(&[(latency.clone(), now, 5.0)]).unwrap();
    let outcome = node_c.evaluate(0, &mut &store, &engine, now, &settings);
    let status = node_c.read()[0].lock().unwrap().clone();
    let alert = &status.alerts("Slow")[0];
    assert_eq!(alert.state, AlertState::Firing);
    assert_eq!(alert.fired_at_ms, Some(30 * MINUTE));
    assert!(outcome.changed.is_empty(), "{:?}", outcome.changed);
    assert_eq!(
        outcome.to_send.len(),
        1,
        "Alertmanager hears it from its new evaluator"
    );
    assert_eq!(outcome.to_send[0].starts_at_ms, 30 * MINUTE);
}

/// Reads that fail for `ALERTS_FOR_STATE` (the restore) and succeed for
/// the rule's expression, from `scratch`.
struct ThroughLogOver<'a>(&'a MemoryStorage, &'a dyn Queryable);

impl RuleStorage for ThroughLogOver<'_> {
    fn query(
        &self,
        engine: &Engine,
        expr: &promql_parser::parser::Expr,
        time_ms: i64,
    ) -> Result<Value, crate::promql::QueryError> {
        if expr.to_string().contains("ALERTS_FOR_STATE") {
            return engine.instant_expr(self.1, expr, time_ms);
        }
        engine.instant_expr(self.0 as &dyn Queryable, expr, time_ms)
    }

    fn write(&mut self, _: &[(Labels, i64, f64)]) -> Result<(), String> {
        Ok(())
    }
}
