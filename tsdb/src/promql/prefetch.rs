//! Selects of a range query, fetched ahead.
//!
//! A range query is evaluated step by step, and every step selects its
//! window again: for a query of 1,440 steps, 1,440 selects of windows that
//! move by one step. Against the local store each is cheap; against a
//! cluster each is a metadata snapshot and a call to every node. [`Prefetch`]
//! fetches each selector's data once for the next [`STEPS_AHEAD`] steps and
//! answers the steps from it, so a query makes a few dozen selects, and
//! holds no more than that many steps' data beyond one window.

use std::cell::RefCell;
use std::collections::HashMap;

use super::{QueryError, Queryable};
use crate::{LabelMatcher, SeriesData};

/// Steps one fetch covers beyond the window asked for.
const STEPS_AHEAD: i64 = 64;

/// A selector's fetched data: `[start_ms, end_ms]` and its series.
struct Fetched {
    start_ms: i64,
    end_ms: i64,
    series: Vec<SeriesData>,
}

/// A [`Queryable`] for one range query's evaluation.
pub(super) struct Prefetch<'a> {
    inner: &'a dyn Queryable,
    /// How far past a window one fetch reaches: [`STEPS_AHEAD`] steps, at
    /// most to the query's end.
    ahead_ms: i64,
    fetched: RefCell<HashMap<String, Fetched>>,
}

impl<'a> Prefetch<'a> {
    pub(super) fn new(inner: &'a dyn Queryable, query_ms: i64, step_ms: i64) -> Self {
        Prefetch {
            inner,
            ahead_ms: query_ms.min(step_ms.saturating_mul(STEPS_AHEAD)).max(0),
            fetched: RefCell::default(),
        }
    }
}

fn key(matchers: &[LabelMatcher]) -> String {
    let mut key = String::new();
    for matcher in matchers {
        key.push_str(&format!(
            "{:?}{:?}{:?};",
            matcher.name, matcher.kind, matcher.value
        ));
    }
    key
}

impl Queryable for Prefetch<'_> {
    fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        let key = key(matchers);
        let covered = self
            .fetched
            .borrow()
            .get(&key)
            .is_some_and(|fetched| fetched.start_ms <= start_ms && end_ms <= fetched.end_ms);
        if !covered {
            let fetch_end_ms = end_ms.saturating_add(self.ahead_ms);
            let series = self.inner.select(matchers, start_ms, fetch_end_ms)?;
            self.fetched.borrow_mut().insert(
                key.clone(),
                Fetched {
                    start_ms,
                    end_ms: fetch_end_ms,
                    series,
                },
            );
        }
        let fetched = self.fetched.borrow();
        let fetched = &fetched[&key];
        Ok(fetched
            .series
            .iter()
            .filter_map(|series| {
                let from = series
                    .samples
                    .partition_point(|(time_ms, _)| *time_ms < start_ms);
                let to = series
                    .samples
                    .partition_point(|(time_ms, _)| *time_ms <= end_ms);
                (from < to).then(|| SeriesData {
                    labels: series.labels.clone(),
                    samples: series.samples[from..to].to_vec(),
                })
            })
            .collect())
    }
}
