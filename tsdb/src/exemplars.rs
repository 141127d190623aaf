//! Exemplars: the trace of one observation kept beside a series' samples,
//! as Prometheus keeps them (`--enable-feature=exemplar-storage`).
//!
//! An exemplar is a small label set (`trace_id`, `span_id`), a value and a
//! timestamp, attached to a series (for histograms, to the bucket its value
//! fell in). They come from OpenMetrics scrapes (`# {trace_id="..."} 0.42`),
//! OTLP metric points and the span-derived RED metrics (through the
//! collector's self-scrape), and answer `/api/v1/query_exemplars`.
//!
//! [`ExemplarStore`] is bounded twice: one circular buffer of
//! [`ExemplarStore::capacity`] exemplars for all series (the newest
//! overwrite the oldest, as in Prometheus' `CircularExemplarStorage`), and
//! at most [`ExemplarStore::per_series`] for any one series, so a single
//! busy histogram cannot push every other series' exemplars out. Within a
//! series, exemplars are in time order: one older than the series' newest
//! is refused, and one equal to the newest (same labels and value: a target
//! exposes its last exemplar again at every scrape) is ignored.
//!
//! Exemplars live in memory only, as in Prometheus before its WAL carried
//! them: they point at traces, which are durable in the span store, and a
//! restart starts with none.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::{LabelMatcher, Labels, matches_all};

/// Exemplars kept for all series together, by default (Prometheus'
/// `storage.exemplars.max-exemplars` default).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Exemplars kept for one series, by default.
pub const DEFAULT_PER_SERIES: usize = 64;

/// The longest exemplar label set, in characters of names and values
/// together (OpenMetrics' limit, which Prometheus enforces).
pub const MAX_LABEL_CHARS: usize = 128;

/// One exemplar.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// `trace_id`, `span_id` and whatever else the source attached.
    pub labels: Labels,
    pub value: f64,
    pub timestamp_ms: i64,
}

/// The exemplars of one series, as a query returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesExemplars {
    pub series: Labels,
    /// In time order.
    pub exemplars: Vec<Exemplar>,
}

/// Why an exemplar was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExemplarError {
    #[error("exemplar labels of {chars} characters, over the limit of {MAX_LABEL_CHARS}")]
    LabelsTooLong { chars: usize },
    #[error("out of order exemplar: {timestamp_ms} is older than the series' newest {newest_ms}")]
    OutOfOrder { timestamp_ms: i64, newest_ms: i64 },
}

/// What [`ExemplarStore::append`] did with an exemplar it did not refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// The same as the series' newest: nothing changed.
    Duplicate,
}

#[derive(Debug)]
struct Slot {
    series: Arc<Labels>,
    exemplar: Exemplar,
}

/// The bounded exemplar store; see the module docs.
#[derive(Debug)]
pub struct ExemplarStore {
    capacity: usize,
    per_series: usize,
    /// Slot `sequence % capacity` holds the exemplar written as number
    /// `sequence`, unless it was dropped since (the series was over its
    /// own bound).
    ring: Vec<Option<Slot>>,
    /// The number of the next exemplar written.
    next: u64,
    /// Each series' exemplars by number, oldest first.
    series: HashMap<Arc<Labels>, VecDeque<u64>>,
}

impl Default for ExemplarStore {
    fn default() -> Self {
        ExemplarStore::new(DEFAULT_CAPACITY, DEFAULT_PER_SERIES)
    }
}

impl ExemplarStore {
    /// A store of at most `capacity` exemplars, at most `per_series` of
    /// them for one series (both at least 1).
    pub fn new(capacity: usize, per_series: usize) -> Self {
        ExemplarStore {
            capacity: capacity.max(1),
            per_series: per_series.max(1),
            ring: Vec::new(),
            next: 0,
            series: HashMap::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn per_series(&self) -> usize {
        self.per_series
    }

    /// Exemplars held now.
    pub fn len(&self) -> usize {
        self.series.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Keeps `exemplar` for `series`, overwriting the oldest of all series
    /// when full and the series' oldest when the series is at its bound.
    pub fn append(
        &mut self,
        series: &Arc<Labels>,
        exemplar: Exemplar,
    ) -> Result<Appended, ExemplarError> {
        let chars: usize = exemplar
            .labels
            .iter()
            .map(|(name, value)| name.chars().count() + value.chars().count())
            .sum();
        if chars > MAX_LABEL_CHARS {
            return Err(ExemplarError::LabelsTooLong { chars });
        }
        if let Some(newest) = self
            .series
            .get(series)
            .and_then(|numbers| numbers.back())
            .and_then(|number| self.slot(*number))
        {
            if newest.labels == exemplar.labels
                && newest.value.to_bits() == exemplar.value.to_bits()
            {
                return Ok(Appended::Duplicate);
            }
            if exemplar.timestamp_ms < newest.timestamp_ms {
                return Err(ExemplarError::OutOfOrder {
                    timestamp_ms: exemplar.timestamp_ms,
                    newest_ms: newest.timestamp_ms,
                });
            }
        }
        let number = self.next;
        self.next += 1;
        let index = (number % self.capacity as u64) as usize;
        if index == self.ring.len() {
            self.ring.push(None);
        }
        if let Some(overwritten) = self.ring[index].take() {
            // The oldest exemplar of all is the oldest of its series.
            self.forget_oldest(&overwritten.series);
        }
        let series = match self.series.get_key_value(series) {
            Some((shared, _)) => shared.clone(),
            None => series.clone(),
        };
        let numbers = self.series.entry(series.clone()).or_default();
        numbers.push_back(number);
        if numbers.len() > self.per_series
            && let Some(dropped) = numbers.pop_front()
        {
            self.ring[(dropped % self.capacity as u64) as usize] = None;
        }
        self.ring[index] = Some(Slot { series, exemplar });
        Ok(Appended::Stored)
    }

    fn slot(&self, number: u64) -> Option<&Exemplar> {
        self.ring
            .get((number % self.capacity as u64) as usize)?
            .as_ref()
            .map(|slot| &slot.exemplar)
    }

    fn forget_oldest(&mut self, series: &Arc<Labels>) {
        if let Some(numbers) = self.series.get_mut(series) {
            numbers.pop_front();
            if numbers.is_empty() {
                self.series.remove(series);
            }
        }
    }

    /// The exemplars in `[start_ms, end_ms]` of every series that matches
    /// all matchers of at least one of `selectors`, sorted by series.
    pub fn query(
        &self,
        selectors: &[Vec<LabelMatcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<SeriesExemplars> {
        let mut found: Vec<SeriesExemplars> = self
            .series
            .iter()
            .filter(|(series, _)| {
                selectors
                    .iter()
                    .any(|matchers| matches_all(matchers, series))
            })
            .filter_map(|(series, numbers)| {
                let exemplars: Vec<Exemplar> = numbers
                    .iter()
                    .filter_map(|number| self.slot(*number))
                    .filter(|exemplar| (start_ms..=end_ms).contains(&exemplar.timestamp_ms))
                    .cloned()
                    .collect();
                (!exemplars.is_empty()).then(|| SeriesExemplars {
                    series: series.as_ref().clone(),
                    exemplars,
                })
            })
            .collect();
        found.sort_by(|left, right| left.series.cmp(&right.series));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, le: &str) -> Arc<Labels> {
        Arc::new(Labels::new([("__name__", name), ("le", le)]))
    }

    fn exemplar(trace: &str, value: f64, timestamp_ms: i64) -> Exemplar {
        Exemplar {
            labels: Labels::new([("trace_id", trace)]),
            value,
            timestamp_ms,
        }
    }

    fn everything() -> Vec<Vec<LabelMatcher>> {
        vec![vec![
            LabelMatcher::new(crate::MatchKind::Regex, "__name__", ".+").unwrap(),
        ]]
    }

    #[test]
    fn the_newest_overwrite_the_oldest_and_a_series_keeps_at_most_its_share() {
        let mut store = ExemplarStore::new(5, 3);
        let busy = series("busy", "1");
        let quiet = series("quiet", "1");
        store.append(&quiet, exemplar("q0", 1.0, 0)).unwrap();
        for index in 0..4 {
            let trace = format!("b{index}");
            store
                .append(&busy, exemplar(&trace, index as f64, 10 + index))
                .unwrap();
        }
        // The busy series keeps its newest three; the quiet one is still there.
        let found = store.query(&everything(), i64::MIN, i64::MAX);
        let traces: Vec<Vec<&str>> = found
            .iter()
            .map(|one| {
                one.exemplars
                    .iter()
                    .map(|e| e.labels.get("trace_id"))
                    .collect()
            })
            .collect();
        assert_eq!(traces, [vec!["b1", "b2", "b3"], vec!["q0"]]);
        assert_eq!(store.len(), 4);
        // Two more for another series go round the ring: the quiet
        // series' exemplar was the oldest of all and goes first.
        let other = series("other", "1");
        store.append(&other, exemplar("o0", 1.0, 20)).unwrap();
        store.append(&other, exemplar("o1", 2.0, 21)).unwrap();
        let found = store.query(&everything(), i64::MIN, i64::MAX);
        let names: Vec<&str> = found.iter().map(|one| one.series.get("__name__")).collect();
        assert_eq!(names, ["busy", "other"]);
        assert!(store.len() <= 5, "{}", store.len());
        for number in 0..1000 {
            store
                .append(&other, exemplar("o", number as f64, 100 + number))
                .unwrap();
        }
        assert_eq!(store.len(), 3, "the ring and the series bound both hold");
    }

    #[test]
    fn a_repeated_exemplar_is_ignored_and_an_older_one_refused() {
        let mut store = ExemplarStore::default();
        let bucket = series("h_bucket", "0.5");
        assert_eq!(
            store.append(&bucket, exemplar("a", 0.3, 1_000)),
            Ok(Appended::Stored)
        );
        // The next scrape exposes the same exemplar (its time is the
        // scrape's): still one.
        assert_eq!(
            store.append(&bucket, exemplar("a", 0.3, 16_000)),
            Ok(Appended::Duplicate)
        );
        assert_eq!(
            store.append(&bucket, exemplar("b", 0.4, 500)),
            Err(ExemplarError::OutOfOrder {
                timestamp_ms: 500,
                newest_ms: 1_000
            })
        );
        let long = "x".repeat(MAX_LABEL_CHARS);
        assert_eq!(
            store.append(&bucket, exemplar(&long, 0.4, 2_000)),
            Err(ExemplarError::LabelsTooLong {
                chars: MAX_LABEL_CHARS + "trace_id".len()
            })
        );
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn queries_select_series_and_times() {
        let mut store = ExemplarStore::default();
        let fast = series("h_bucket", "0.1");
        let slow = series("h_bucket", "1");
        let other = series("g", "1");
        store.append(&fast, exemplar("f", 0.05, 1_000)).unwrap();
        store.append(&slow, exemplar("s1", 0.7, 2_000)).unwrap();
        store.append(&slow, exemplar("s2", 0.8, 3_000)).unwrap();
        store.append(&other, exemplar("o", 1.0, 2_000)).unwrap();
        let bucket = vec![vec![LabelMatcher::equal("__name__", "h_bucket")]];
        let found = store.query(&bucket, 1_500, 3_000);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].series, *slow);
        assert_eq!(
            found[0].exemplars,
            [exemplar("s1", 0.7, 2_000), exemplar("s2", 0.8, 3_000)]
        );
        // Several selectors: the union.
        let both = vec![
            bucket[0].clone(),
            vec![LabelMatcher::equal("__name__", "g")],
        ];
        assert_eq!(store.query(&both, 0, 10_000).len(), 3);
        assert!(store.query(&both, 4_000, 10_000).is_empty());
    }
}
