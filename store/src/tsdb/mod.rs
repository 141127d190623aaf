//! The time-series store.

mod labels;

pub use labels::{LabelMatcher, Labels, METRIC_NAME, MatchKind, matches_all};

/// One series and its samples, as a query returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    /// (timestamp ms, value) in time order.
    pub samples: Vec<(i64, f64)>,
}
