//! Label sets and label matchers: how a series is named and selected.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use regex::Regex;

/// The label that holds a series' metric name.
pub const METRIC_NAME: &str = "__name__";

/// A series identity: label pairs sorted by name, names unique, no empty values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a label set from pairs in any order; empty values are dropped
    /// (Prometheus treats an empty value as an absent label), the last of
    /// duplicate names wins.
    pub fn new<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let mut pairs: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect();
        pairs.sort_by(|left, right| left.0.cmp(&right.0));
        let mut deduplicated: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            if let Some(last) = deduplicated.last_mut()
                && last.0 == name
            {
                last.1 = value;
                continue;
            }
            deduplicated.push((name, value));
        }
        deduplicated.retain(|(_, value)| !value.is_empty());
        Labels(deduplicated)
    }

    /// The value of `name`, or "" when the label is absent.
    pub fn get(&self, name: &str) -> &str {
        match self
            .0
            .binary_search_by(|(label, _)| label.as_str().cmp(name))
        {
            Ok(index) => &self.0[index].1,
            Err(_) => "",
        }
    }

    /// Whether the label `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.0
            .binary_search_by(|(label, _)| label.as_str().cmp(name))
            .is_ok()
    }

    /// Sets `name` to `value`; an empty value removes the label.
    pub fn set(&mut self, name: &str, value: &str) {
        match self
            .0
            .binary_search_by(|(label, _)| label.as_str().cmp(name))
        {
            Ok(index) if value.is_empty() => {
                self.0.remove(index);
            }
            Ok(index) => self.0[index].1 = value.to_string(),
            Err(_) if value.is_empty() => {}
            Err(index) => self.0.insert(index, (name.to_string(), value.to_string())),
        }
    }

    /// Removes the label `name` if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(index) = self
            .0
            .binary_search_by(|(label, _)| label.as_str().cmp(name))
        {
            self.0.remove(index);
        }
    }

    /// Keeps only the labels whose names are in `names`.
    pub fn keep(&mut self, names: &[String]) {
        self.0
            .retain(|(name, _)| names.iter().any(|kept| kept == name));
    }

    /// The metric name, or "".
    pub fn metric_name(&self) -> &str {
        self.get(METRIC_NAME)
    }

    /// The same labels without `__name__`.
    pub fn without_metric_name(&self) -> Labels {
        let mut labels = self.clone();
        labels.remove(METRIC_NAME);
        labels
    }

    /// Iterates over (name, value) pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Approximate heap bytes held by this label set.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<(String, String)>()
            + self
                .0
                .iter()
                .map(|(name, value)| name.capacity() + value.capacity())
                .sum::<usize>()
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form: `name{a="b", c="d"}`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.metric_name();
        write!(formatter, "{name}")?;
        let others: Vec<_> = self
            .iter()
            .filter(|(label, _)| *label != METRIC_NAME)
            .collect();
        if others.is_empty() && !name.is_empty() {
            return Ok(());
        }
        write!(formatter, "{{")?;
        for (index, (label, value)) in others.iter().enumerate() {
            if index > 0 {
                write!(formatter, ", ")?;
            }
            write!(formatter, "{label}={value:?}")?;
        }
        write!(formatter, "}}")
    }
}

/// How a matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`, fully anchored
    Regex,
    /// `!~`, fully anchored
    NotRegex,
}

/// One `name op "value"` condition of a selector. An absent label matches as "".
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    pub name: String,
    pub kind: MatchKind,
    pub value: String,
    regex: Option<Regex>,
}

impl LabelMatcher {
    /// Builds a matcher; regexes are anchored at both ends and `.` matches a
    /// newline, as in Prometheus.
    pub fn new(kind: MatchKind, name: &str, value: &str) -> Result<Self, regex::Error> {
        let regex = match kind {
            MatchKind::Regex | MatchKind::NotRegex => Some(Regex::new(&format!("^(?s:{value})$"))?),
            MatchKind::Equal | MatchKind::NotEqual => None,
        };
        Ok(LabelMatcher {
            name: name.to_string(),
            kind,
            value: value.to_string(),
            regex,
        })
    }

    /// A selector every series matches: `{__name__=~".+"}`.
    pub fn any_series() -> Vec<LabelMatcher> {
        vec![
            LabelMatcher::new(MatchKind::Regex, METRIC_NAME, ".+")
                .expect("a constant regex compiles"),
        ]
    }

    /// Shorthand for an `=` matcher.
    pub fn equal(name: &str, value: &str) -> Self {
        LabelMatcher {
            name: name.to_string(),
            kind: MatchKind::Equal,
            value: value.to_string(),
            regex: None,
        }
    }

    /// Whether `value` (the label's value, "" when absent) satisfies this matcher.
    pub fn matches(&self, value: &str) -> bool {
        match (self.kind, &self.regex) {
            (MatchKind::Equal, _) => self.value == value,
            (MatchKind::NotEqual, _) => self.value != value,
            (MatchKind::Regex, Some(regex)) => regex.is_match(value),
            (MatchKind::NotRegex, Some(regex)) => !regex.is_match(value),
            (MatchKind::Regex | MatchKind::NotRegex, None) => false,
        }
    }

    /// Whether every series matching this matcher must carry the label.
    pub fn requires_label(&self) -> bool {
        !self.matches("")
    }

    /// Whether a label set satisfies this matcher.
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name))
    }
}

/// Whether `labels` satisfy all `matchers`.
pub fn matches_all(matchers: &[LabelMatcher], labels: &Labels) -> bool {
    matchers
        .iter()
        .all(|matcher| matcher.matches_labels(labels))
}

/// Hash-map state for the store's own maps: fast, seeded per process.
pub(crate) type FastHash = foldhash::fast::RandomState;

/// Approximate heap bytes of a hash map with `capacity` usable slots of
/// `entry` bytes (the table keeps 1/8 free and a control byte per slot).
pub(crate) fn map_heap_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    (capacity * 8 / 7).next_power_of_two() * (entry + 1)
}

/// Interned strings: every label name and value is held once, series and
/// postings refer to it by a `u32` symbol id.
#[derive(Debug, Default)]
pub(crate) struct SymbolTable {
    strings: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32, FastHash>,
}

impl SymbolTable {
    /// The id of `text`, added when new.
    pub(crate) fn intern(&mut self, text: &str) -> u32 {
        if let Some(id) = self.ids.get(text) {
            return *id;
        }
        let id = self.strings.len() as u32;
        let shared: Arc<str> = Arc::from(text);
        self.strings.push(shared.clone());
        self.ids.insert(shared, id);
        id
    }

    /// The id of `text`, if interned.
    pub(crate) fn lookup(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// How many strings it holds (ids are `0..len`).
    pub(crate) fn len(&self) -> usize {
        self.strings.len()
    }

    /// The string of a symbol id (ids come from this table).
    pub(crate) fn get(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", |text| text)
    }

    fn heap_bytes(&self) -> usize {
        let strings: usize = self
            .strings
            .iter()
            // an Arc allocation: two counters, then the bytes
            .map(|text| 16 + text.len().next_multiple_of(8))
            .sum();
        strings
            + self.strings.capacity() * std::mem::size_of::<Arc<str>>()
            + map_heap_bytes(self.ids.capacity(), std::mem::size_of::<(Arc<str>, u32)>())
    }
}

/// A label set as (name, value) symbol ids, in label-name order.
pub(crate) type InternedLabels = Box<[(u32, u32)]>;

/// The inverted index shared by the head and by blocks: interned label sets
/// by series id (ids dense from 0) and postings `(name, value) -> sorted
/// series ids`, so a selector touches only the series it can match.
#[derive(Debug, Default)]
pub(crate) struct LabelIndex {
    pub(crate) symbols: SymbolTable,
    series: Vec<InternedLabels>,
    postings: HashMap<(u32, u32), Vec<u32>, FastHash>,
    /// Value symbols of each label name, for `!=`, `=~` and `!~`.
    values: HashMap<u32, Vec<u32>, FastHash>,
}

impl LabelIndex {
    /// Adds a series (ids are assigned in order) and returns its id.
    pub(crate) fn add(&mut self, labels: &Labels) -> u32 {
        let interned: InternedLabels = labels
            .iter()
            .map(|(name, value)| (self.symbols.intern(name), self.symbols.intern(value)))
            .collect();
        self.add_interned(interned)
    }

    /// Adds a series given as symbol ids of this index's table.
    pub(crate) fn add_interned(&mut self, labels: InternedLabels) -> u32 {
        let id = self.series.len() as u32;
        for pair in labels.iter() {
            let list = self.postings.entry(*pair).or_default();
            if list.is_empty() {
                self.values.entry(pair.0).or_default().push(pair.1);
            }
            list.push(id);
        }
        self.series.push(labels);
        id
    }

    /// Values of label `name` among the series matching `matchers` (every
    /// series when there are none).
    pub(crate) fn values_matching(
        &self,
        name: &str,
        matchers: &[LabelMatcher],
    ) -> std::collections::BTreeSet<String> {
        if matchers.is_empty() {
            return self.values_of(name).map(str::to_string).collect();
        }
        self.select(matchers)
            .into_iter()
            .map(|id| self.value_by_name(id, name))
            .filter(|value| !value.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Series `id`'s label set as symbol ids.
    pub(crate) fn interned(&self, id: u32) -> &InternedLabels {
        &self.series[id as usize]
    }

    /// The label set of series `id`.
    pub(crate) fn labels(&self, id: u32) -> Labels {
        let pairs = self.series[id as usize]
            .iter()
            .map(|(name, value)| {
                (
                    self.symbols.get(*name).to_string(),
                    self.symbols.get(*value).to_string(),
                )
            })
            .collect();
        Labels(pairs)
    }

    /// Whether series `id` has exactly the labels `labels`.
    pub(crate) fn equals(&self, id: u32, labels: &Labels) -> bool {
        let interned = &self.series[id as usize];
        interned.len() == labels.len()
            && interned.iter().zip(labels.iter()).all(
                |((name, value), (other_name, other_value))| {
                    self.symbols.get(*name) == other_name && self.symbols.get(*value) == other_value
                },
            )
    }

    /// The value of label `name` (a symbol id) of series `id`, "" if absent.
    fn value_of(&self, id: u32, name: Option<u32>) -> &str {
        let Some(name) = name else { return "" };
        self.series[id as usize]
            .iter()
            .find(|(label, _)| *label == name)
            .map_or("", |(_, value)| self.symbols.get(*value))
    }

    /// The value of label `name` of series `id`, "" if absent.
    pub(crate) fn value_by_name(&self, id: u32, name: &str) -> &str {
        self.value_of(id, self.symbols.lookup(name))
    }

    /// Every value of label `name` in the index.
    pub(crate) fn values_of(&self, name: &str) -> impl Iterator<Item = &str> {
        self.symbols
            .lookup(name)
            .and_then(|name| self.values.get(&name))
            .into_iter()
            .flatten()
            .map(|value| self.symbols.get(*value))
    }

    /// Every label name in the index.
    pub(crate) fn label_names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(|name| self.symbols.get(*name))
    }

    /// Sorted ids of the series matching every matcher. Equality matchers
    /// are answered from the postings; other matchers that require their
    /// label union the postings of the matching values; the remaining
    /// matchers filter the candidates.
    pub(crate) fn select(&self, matchers: &[LabelMatcher]) -> Vec<u32> {
        let name_ids: Vec<Option<u32>> = matchers
            .iter()
            .map(|matcher| self.symbols.lookup(&matcher.name))
            .collect();
        let mut candidates: Option<Vec<u32>> = None;
        let equal_first = matchers
            .iter()
            .zip(&name_ids)
            .filter(|(matcher, _)| matcher.kind == MatchKind::Equal && matcher.requires_label())
            .chain(matchers.iter().zip(&name_ids).filter(|(matcher, _)| {
                matcher.kind != MatchKind::Equal && matcher.requires_label()
            }));
        for (matcher, name_id) in equal_first {
            let Some(name_id) = *name_id else {
                return Vec::new();
            };
            let matching = if matcher.kind == MatchKind::Equal {
                let value_id = self.symbols.lookup(&matcher.value);
                let list = value_id
                    .and_then(|value_id| self.postings.get(&(name_id, value_id)))
                    .map_or(&[][..], |list| list.as_slice());
                match candidates {
                    None => list.to_vec(),
                    Some(previous) => intersect(&previous, list),
                }
            } else if candidates.is_some() {
                // cheaper to filter the few candidates than to union postings
                continue;
            } else {
                let mut union = Vec::new();
                for value_id in self.values.get(&name_id).map_or(&[][..], |v| v.as_slice()) {
                    if matcher.matches(self.symbols.get(*value_id))
                        && let Some(list) = self.postings.get(&(name_id, *value_id))
                    {
                        union.extend_from_slice(list);
                    }
                }
                union.sort_unstable();
                union.dedup();
                union
            };
            if matching.is_empty() {
                return Vec::new();
            }
            candidates = Some(matching);
        }
        let mut ids = candidates.unwrap_or_else(|| (0..self.series.len() as u32).collect());
        ids.retain(|id| {
            matchers
                .iter()
                .zip(&name_ids)
                .all(|(matcher, name_id)| matcher.matches(self.value_of(*id, *name_id)))
        });
        ids
    }

    /// Approximate heap bytes of symbols, series and postings.
    pub(crate) fn heap_bytes(&self) -> usize {
        let series: usize = self
            .series
            .iter()
            .map(|labels| (labels.len() * 8).next_multiple_of(16))
            .sum();
        let postings: usize = self.postings.values().map(|list| list.capacity() * 4).sum();
        let values: usize = self.values.values().map(|list| list.capacity() * 4).sum();
        self.symbols.heap_bytes()
            + self.series.capacity() * std::mem::size_of::<InternedLabels>()
            + series
            + map_heap_bytes(
                self.postings.capacity(),
                std::mem::size_of::<((u32, u32), Vec<u32>)>(),
            )
            + postings
            + map_heap_bytes(
                self.values.capacity(),
                std::mem::size_of::<(u32, Vec<u32>)>(),
            )
            + values
    }
}

/// The ids in both sorted lists.
fn intersect(left: &[u32], right: &[u32]) -> Vec<u32> {
    let mut both = Vec::with_capacity(left.len().min(right.len()));
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        match left[i].cmp(&right[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both.push(left[i]);
                i += 1;
                j += 1;
            }
        }
    }
    both
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_sorted_deduplicated_and_without_empty_values() {
        let labels = Labels::new([("b", "2"), ("a", "1"), ("c", ""), ("b", "3")]);
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            vec![("a", "1"), ("b", "3")]
        );
        assert_eq!(labels.get("c"), "");
    }

    #[test]
    fn regex_matchers_are_anchored() {
        let matcher = LabelMatcher::new(MatchKind::Regex, "job", "api").unwrap();
        assert!(matcher.matches("api"));
        assert!(!matcher.matches("api-server"));
        let empty = LabelMatcher::new(MatchKind::Regex, "job", ".*").unwrap();
        assert!(empty.matches(""));
        assert!(!empty.requires_label());
    }
}
