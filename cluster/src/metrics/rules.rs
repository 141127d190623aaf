//! [`ClusterRules`]: `/api/v1/rules` and `/api/v1/alerts` of any node
//! report every rule group as its evaluator sees it.
//!
//! Every node loads every rule file, but a group is evaluated by the one
//! node that holds its slot's lease (`assignment.rs`): the others keep it
//! unevaluated, or stale from before a handover. A node asked for its rules
//! asks every live node for its own report (`POST /internal/v1/rules`) and
//! keeps, of each group, the most recently evaluated report: its current
//! evaluator's (Thanos' ruler and Mimir's ruler API merge the rulers' groups
//! the same way). A node that does not answer in time is left out with a
//! warning: its groups show as another node last saw them.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sightline_tsdb::rules::{RuleGroupStatus, RuleStatusSource};

use crate::metastore::Metastore;
use crate::query::Peers;

/// The internal API's rules endpoint.
pub const RULES_PATH: &str = "/internal/v1/rules";

/// How long a node waits for another's rule report.
const RULES_TIMEOUT: Duration = Duration::from_secs(5);

/// Every node's rule groups, each as its latest evaluator reports it.
pub struct ClusterRules {
    /// This node's rule engine, set once the metrics pipeline runs.
    local: OnceLock<Arc<dyn RuleStatusSource>>,
    metastore: Arc<Metastore>,
    peers: Peers,
    runtime: tokio::runtime::Handle,
}

impl ClusterRules {
    pub(crate) fn new(metastore: Arc<Metastore>, peers: Peers) -> ClusterRules {
        ClusterRules {
            local: OnceLock::new(),
            metastore,
            peers,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// This node's rule engine (a second call is ignored).
    pub fn set_local(&self, local: Arc<dyn RuleStatusSource>) {
        let _ = self.local.set(local);
    }

    /// This node's own report.
    pub(crate) fn local_groups(&self) -> Vec<RuleGroupStatus> {
        self.local
            .get()
            .map(|local| local.rule_groups())
            .unwrap_or_default()
    }

    async fn others(&self) -> anyhow::Result<Vec<Vec<RuleGroupStatus>>> {
        let nodes = self.metastore.live_addresses(self.peers.ttl()).await?;
        let answers = self
            .peers
            .call_others(nodes, RULES_PATH, b"{}".to_vec(), RULES_TIMEOUT)
            .await;
        let mut reports = Vec::new();
        for (node, answer) in answers {
            let report = answer.and_then(|bytes| {
                serde_json::from_slice::<Vec<RuleGroupStatus>>(&bytes)
                    .map_err(|error| error.to_string())
            });
            match report {
                Ok(report) => reports.push(report),
                Err(error) => tracing::warn!(node, %error, "a node's rule report did not answer"),
            }
        }
        Ok(reports)
    }
}

/// Each group (by file and name) once, in this node's order: the report
/// evaluated last among `reports` (this node's first).
pub(crate) fn merge_reports(reports: Vec<Vec<RuleGroupStatus>>) -> Vec<RuleGroupStatus> {
    let mut order = Vec::new();
    let mut newest: BTreeMap<(String, String), RuleGroupStatus> = BTreeMap::new();
    for group in reports.into_iter().flatten() {
        let key = (group.file.clone(), group.name.clone());
        match newest.get(&key) {
            Some(kept) if kept.last_evaluation_ms >= group.last_evaluation_ms => {}
            Some(_) => {
                newest.insert(key, group);
            }
            None => {
                order.push(key.clone());
                newest.insert(key, group);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|key| newest.remove(&key))
        .collect()
}

impl RuleStatusSource for ClusterRules {
    fn rule_groups(&self) -> Vec<RuleGroupStatus> {
        let mut reports = vec![self.local_groups()];
        match self.runtime.block_on(self.others()) {
            Ok(others) => reports.extend(others),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "listing the nodes for their rules failed; this node's only"
                )
            }
        }
        merge_reports(reports)
    }
}

pub(crate) async fn serve(
    axum::extract::State(server): axum::extract::State<Arc<crate::fresh::InternalApi>>,
) -> axum::Json<Vec<RuleGroupStatus>> {
    axum::Json(server.rules.local_groups())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(file: &str, name: &str, evaluated: Option<i64>) -> RuleGroupStatus {
        RuleGroupStatus {
            name: name.into(),
            file: file.into(),
            interval_seconds: 15.0,
            rules: Vec::new(),
            last_evaluation_ms: evaluated,
            evaluation_seconds: 0.0,
        }
    }

    #[test]
    fn each_group_is_reported_by_its_latest_evaluator_in_this_nodes_order() {
        let merged = merge_reports(vec![
            // This node evaluates b; a it evaluated before a handover.
            vec![
                group("r.yml", "a", Some(1_000)),
                group("r.yml", "b", Some(5_000)),
                group("r.yml", "c", None),
            ],
            // Another node evaluates a and c now.
            vec![
                group("r.yml", "c", Some(4_000)),
                group("r.yml", "a", Some(6_000)),
                group("r.yml", "b", None),
            ],
            // A node that never evaluated anything; another file's group.
            vec![group("r.yml", "a", None), group("other.yml", "a", Some(1))],
        ]);
        let seen: Vec<(&str, &str, Option<i64>)> = merged
            .iter()
            .map(|g| (g.file.as_str(), g.name.as_str(), g.last_evaluation_ms))
            .collect();
        assert_eq!(
            seen,
            [
                ("r.yml", "a", Some(6_000)),
                ("r.yml", "b", Some(5_000)),
                ("r.yml", "c", Some(4_000)),
                ("other.yml", "a", Some(1)),
            ]
        );
    }
}
