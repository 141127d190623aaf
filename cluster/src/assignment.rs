//! Rule groups and scrape targets divided between the live nodes, with the
//! partitions' leases: each group hashes to one of
//! [`partition::RULE_SLOTS`] slots and each target to one of
//! [`partition::SCRAPE_SLOTS`], every slot is leased (PostgreSQL, with an
//! epoch) to the node rendezvous hashing names, and a node works on what
//! its slots hold. So every target is scraped by one node and every group
//! evaluated by one node; when a node leaves, its slots' leases expire and
//! the others take them (a taken rule group restores its alerts' `for`
//! state from `ALERTS_FOR_STATE`); when one joins, the slots it wins are
//! handed off: the holder stops working on them before it releases the
//! lease.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use sightline_store::PartitionId;
use tokio::sync::watch;

use crate::metastore::Lease;
use crate::node::Context;
use crate::partition;

/// The slots this node holds.
#[derive(Debug, Default)]
pub struct Assignment {
    held: RwLock<BTreeSet<PartitionId>>,
}

impl Assignment {
    /// Whether this node evaluates rule group `key` (`<file>;<group>`).
    pub fn owns_rule_group(&self, key: &str) -> bool {
        self.holds(partition::of_rule_group(key))
    }

    /// Whether this node scrapes the target with label set `key`.
    pub fn owns_scrape_target(&self, key: &str) -> bool {
        self.holds(partition::of_scrape_target(key))
    }

    fn holds(&self, slot: PartitionId) -> bool {
        self.held
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&slot)
    }

    /// How many slots this node holds.
    pub fn held(&self) -> usize {
        self.held.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A held slot; dropping it (handoff, or the task aborted when the lease
/// was lost) stops the work on it.
struct Held {
    assignment: Arc<Assignment>,
    slot: PartitionId,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.assignment
            .held
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.slot);
    }
}

/// Holds a slot's lease until handed off (or aborted).
pub(crate) async fn hold(context: Arc<Context>, lease: Lease, mut handoff: watch::Receiver<bool>) {
    let slot = lease.partition;
    context
        .assignment
        .held
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(slot);
    let held = Held {
        assignment: context.assignment.clone(),
        slot,
    };
    let _ = handoff.wait_for(|handing_off| *handing_off).await;
    drop(held);
    // A scrape or evaluation that asked just before may still be running:
    // a moment for it before another node may start.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    if let Err(error) = context.metastore.release(&context.node_id, &lease).await {
        tracing::warn!(slot, %error, "release failed; the lease expires instead");
    }
}
