//! Label sets and label matchers: how a series is named and selected.

use std::fmt;

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
