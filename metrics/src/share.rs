//! Which rule groups and scrape targets this collector works on.
//!
//! Embedded, everything. In cluster mode several collectors load the same
//! configuration, and each rule group and scrape target must be worked on
//! by one of them at a time (one evaluator sending each alert, one scrape
//! per target): the collector hands in the cluster's assignment (leases in
//! PostgreSQL) as a [`WorkShare`], and the group and target loops ask it
//! before every evaluation and scrape.

use std::sync::Arc;

/// One piece of work, by the key every node computes alike.
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    /// A rule group, `<file>;<group>`.
    RuleGroup(&'a str),
    /// A scrape target, by its label set (`job`, `instance`, ...).
    ScrapeTarget(&'a str),
}

/// Says whether a piece of work is this collector's.
type Owns = dyn Fn(Work<'_>) -> bool + Send + Sync;

/// Whether this collector works on a piece of work now.
#[derive(Clone, Default)]
pub struct WorkShare {
    owns: Option<Arc<Owns>>,
}

impl std::fmt::Debug for WorkShare {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(if self.owns.is_some() {
            "WorkShare(assigned)"
        } else {
            "WorkShare(everything)"
        })
    }
}

impl WorkShare {
    /// All the work: an embedded collector.
    pub fn everything() -> WorkShare {
        WorkShare::default()
    }

    /// The work `owns` says is this collector's.
    pub fn assigned(owns: impl Fn(Work<'_>) -> bool + Send + Sync + 'static) -> WorkShare {
        WorkShare {
            owns: Some(Arc::new(owns)),
        }
    }

    pub fn owns(&self, work: Work<'_>) -> bool {
        self.owns.as_ref().is_none_or(|owns| owns(work))
    }
}
