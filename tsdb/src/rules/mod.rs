//! Prometheus alerting and recording rules.
//!
//! - [`file`]: rule files in Prometheus' format, checked like
//!   `promtool check rules`;
//! - [`template`]: the common subset of Prometheus' alert templates;
//! - [`engine`]: group evaluation and the alert state machine over any
//!   [`RuleStorage`], plus [`RuleEngine`], the loaded groups behind the
//!   status API;
//! - [`unittest`]: `promtool test rules` unit-test files.
//!
//! Evaluation is synchronous and knows no clock or runtime: the collector
//! drives it on each group's interval, tests drive it with made-up times.

mod engine;
mod file;
mod status;
pub mod template;
pub mod unittest;

pub use engine::{
    Alert, EvalSettings, GroupOutcome, GroupState, OutgoingAlert, RuleEngine, RuleStorage,
    ThroughLog,
};
pub use file::{AlertingSpec, Rule, RuleGroup, load_rule_file, parse_rule_file};
pub use status::{
    AlertState, AlertStatus, NoRules, RuleGroupStatus, RuleHealth, RuleKind, RuleStatus,
    RuleStatusSource,
};

#[cfg(test)]
mod tests;
