//! Prometheus alerting and recording rules.

mod status;

pub use status::{
    AlertState, AlertStatus, NoRules, RuleGroupStatus, RuleHealth, RuleKind, RuleStatus,
    RuleStatusSource,
};
