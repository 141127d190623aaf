//! What the rule engine reports about itself: the shapes behind
//! `/api/v1/rules` and `/api/v1/alerts`, independent of how rules run.

use std::collections::BTreeMap;

/// State of an alert (one label set of an alerting rule), or of the rule as
/// the worst of its alerts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

/// Whether the rule's last evaluation succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleHealth {
    /// Not evaluated yet.
    Unknown,
    Ok,
    Err,
}

/// One active alert of an alerting rule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertStatus {
    /// The alert's labels: the series' labels plus the rule's, with
    /// `alertname`.
    pub labels: BTreeMap<String, String>,
    /// Annotations with their templates expanded.
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    /// When the alert became pending, in ms since the epoch.
    pub active_at_ms: i64,
    /// When the expression stopped matching while `keep_firing_for` holds
    /// the alert firing.
    pub keep_firing_since_ms: Option<i64>,
    /// The expression's value at the last evaluation.
    pub value: f64,
}

/// One rule of a group and its last evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleStatus {
    /// The `alert:` or `record:` name.
    pub name: String,
    pub query: String,
    pub kind: RuleKind,
    pub labels: BTreeMap<String, String>,
    pub health: RuleHealth,
    pub last_error: Option<String>,
    pub last_evaluation_ms: Option<i64>,
    pub evaluation_seconds: f64,
    /// For how long the expression has returned nothing, when it has; a rule
    /// that matched no series for a while is likely broken (a renamed
    /// metric, a typo in a label).
    pub no_data_since_ms: Option<i64>,
}

/// The parts only one kind of rule has.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum RuleKind {
    Recording,
    Alerting {
        for_seconds: f64,
        keep_firing_for_seconds: f64,
        annotations: BTreeMap<String, String>,
        alerts: Vec<AlertStatus>,
        /// The worst state among `alerts`.
        state: AlertState,
    },
}

/// A rule group as loaded from its file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleGroupStatus {
    pub name: String,
    pub file: String,
    pub interval_seconds: f64,
    pub rules: Vec<RuleStatus>,
    pub last_evaluation_ms: Option<i64>,
    pub evaluation_seconds: f64,
}

/// Anything that can report rule groups: the rule engine, or nothing.
pub trait RuleStatusSource: Send + Sync {
    /// Every group, in file order.
    fn rule_groups(&self) -> Vec<RuleGroupStatus>;
}

/// No rules loaded.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRules;

impl RuleStatusSource for NoRules {
    fn rule_groups(&self) -> Vec<RuleGroupStatus> {
        Vec::new()
    }
}
