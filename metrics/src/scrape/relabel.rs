//! Prometheus relabeling: `relabel_configs` rewrite or drop a discovered
//! target's labels before the target is created, `metric_relabel_configs`
//! rewrite or drop each scraped series before it is stored.
//!
//! A [`RelabelConfig`] is one rule as written in `prometheus.yml`;
//! [`RelabelConfig::compile`] checks it with Prometheus' rules and gives a
//! [`Relabel`], which [`process`] applies in order to a label set.
//!
//! Regexes are fully anchored (`^(?:regex)$`) as in Prometheus. Prometheus
//! uses Go's RE2 syntax; the `regex` crate accepts the same syntax with
//! these differences: `\w`, `\d`, `\s` and `\b` are Unicode-aware here
//! (ASCII in Go), and Go's `\Q...\E` quoting is refused as an invalid regex.
//! Expansion of `$1`, `${1}`, `$name` and `$$` in `replacement` and
//! `target_label` follows the same rules in both (`$1x` names the group
//! `1x`, which does not exist, so it expands to nothing).

use std::borrow::Cow;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer};
use sightline_tsdb::{Labels, METRIC_NAME};
use sightline_vocab::names::{is_label_name, is_metric_name};

/// One relabeling rule as written in `prometheus.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelabelConfig {
    /// Labels whose values are joined with `separator` into the value the
    /// regex matches.
    #[serde(default)]
    pub source_labels: Option<Vec<String>>,
    #[serde(default = "default_separator", deserialize_with = "scalar")]
    pub separator: String,
    /// Fully anchored.
    #[serde(default = "default_regex", deserialize_with = "scalar")]
    pub regex: String,
    /// For `hashmod`.
    #[serde(default)]
    pub modulus: u64,
    #[serde(default, deserialize_with = "scalar")]
    pub target_label: String,
    #[serde(default = "default_replacement", deserialize_with = "scalar")]
    pub replacement: String,
    /// Case-insensitive; `replace` when unset.
    #[serde(default = "default_action", deserialize_with = "scalar")]
    pub action: String,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        RelabelConfig {
            source_labels: None,
            separator: default_separator(),
            regex: default_regex(),
            modulus: 0,
            target_label: String::new(),
            replacement: default_replacement(),
            action: default_action(),
        }
    }
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    fn parse(text: &str) -> Result<Action, String> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "" => return Err("relabel action cannot be empty".into()),
            "replace" => Action::Replace,
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "keepequal" => Action::KeepEqual,
            "dropequal" => Action::DropEqual,
            "hashmod" => Action::HashMod,
            "labelmap" => Action::LabelMap,
            "labeldrop" => Action::LabelDrop,
            "labelkeep" => Action::LabelKeep,
            "lowercase" => Action::Lowercase,
            "uppercase" => Action::Uppercase,
            _ => return Err(format!("unknown relabel action {text:?}")),
        })
    }

    /// As Prometheus spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A checked rule, ready to apply. Equality and order are those of the
/// rule's text.
#[derive(Debug, Clone)]
pub struct Relabel {
    config: RelabelConfig,
    source_labels: Vec<String>,
    regex: Regex,
    action: Action,
}

impl PartialEq for Relabel {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl Eq for Relabel {}

impl PartialOrd for Relabel {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Relabel {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.config.cmp(&other.config)
    }
}

impl std::hash::Hash for Relabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.config.hash(state);
    }
}

/// Prometheus' pattern for a `target_label` (replace) or `replacement`
/// (labelmap) that may hold `$` references.
const RELABEL_TARGET: &str = r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$";

impl RelabelConfig {
    /// Checks the rule as Prometheus does at config load; the error says
    /// what is wrong (the caller adds where).
    pub fn compile(&self) -> Result<Relabel, String> {
        let action = Action::parse(&self.action)?;
        let regex = Regex::new(&format!("^(?:{})$", self.regex))
            .map_err(|error| format!("invalid regex {:?}: {error}", self.regex))?;
        let target = self.target_label.as_str();
        let defaults = RelabelConfig::default();
        if action == Action::HashMod && self.modulus == 0 {
            return Err("relabel configuration for hashmod requires non-zero modulus".into());
        }
        let needs_target = matches!(
            action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && target.is_empty() {
            return Err(format!(
                "relabel configuration for {action} action requires 'target_label' value"
            ));
        }
        let target_pattern = Regex::new(RELABEL_TARGET).map_err(|error| error.to_string())?;
        let valid_target = match action {
            Action::Replace if target.contains('$') => target_pattern.is_match(target),
            Action::Replace
            | Action::HashMod
            | Action::Lowercase
            | Action::Uppercase
            | Action::KeepEqual
            | Action::DropEqual => is_label_name(target),
            _ => true,
        };
        if !valid_target {
            return Err(format!(
                "{target:?} is invalid 'target_label' for {action} action"
            ));
        }
        if action == Action::LabelMap && !target_pattern.is_match(&self.replacement) {
            return Err(format!(
                "{:?} is invalid 'replacement' for {action} action",
                self.replacement
            ));
        }
        if matches!(action, Action::LabelDrop | Action::LabelKeep)
            && (self.source_labels.is_some()
                || self.target_label != defaults.target_label
                || self.modulus != defaults.modulus
                || self.separator != defaults.separator
                || self.replacement != defaults.replacement)
        {
            return Err(format!(
                "{action} action requires only 'regex', and no other fields"
            ));
        }
        if matches!(action, Action::KeepEqual | Action::DropEqual)
            && (self.regex != defaults.regex
                || self.modulus != defaults.modulus
                || self.separator != defaults.separator
                || self.replacement != defaults.replacement)
        {
            return Err(format!(
                "{action} action requires only 'source_labels' and 'target_label', and no other fields"
            ));
        }
        if let Some(name) = self
            .source_labels
            .iter()
            .flatten()
            .find(|name| !is_label_name(name))
        {
            return Err(format!(
                "{name:?} is not a valid label name in source_labels"
            ));
        }
        Ok(Relabel {
            config: self.clone(),
            source_labels: self.source_labels.clone().unwrap_or_default(),
            regex,
            action,
        })
    }
}

impl Relabel {
    /// What the rule does.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The source labels' values joined by the separator; borrowed when
    /// there is at most one source label.
    fn source_value<'a>(&self, labels: &'a Labels) -> Cow<'a, str> {
        match self.source_labels.as_slice() {
            [] => Cow::Borrowed(""),
            [one] => Cow::Borrowed(labels.get(one)),
            many => {
                let values: Vec<&str> = many.iter().map(|name| labels.get(name)).collect();
                Cow::Owned(values.join(&self.config.separator))
            }
        }
    }

    /// Applies the rule; false when it drops the label set.
    fn apply(&self, labels: &mut Labels) -> bool {
        let target = self.config.target_label.as_str();
        match self.action {
            Action::Keep => self.regex.is_match(&self.source_value(labels)),
            Action::Drop => !self.regex.is_match(&self.source_value(labels)),
            Action::KeepEqual => *self.source_value(labels) == *labels.get(target),
            Action::DropEqual => *self.source_value(labels) != *labels.get(target),
            Action::Replace => {
                let value = self.source_value(labels);
                let Some(captures) = self.regex.captures(&value) else {
                    return true;
                };
                let mut name = String::new();
                captures.expand(target, &mut name);
                if !is_label_name(&name) {
                    return true;
                }
                let mut replaced = String::new();
                captures.expand(&self.config.replacement, &mut replaced);
                // An empty result removes the label.
                labels.set(&name, &replaced);
                true
            }
            Action::Lowercase => {
                let lower = self.source_value(labels).to_lowercase();
                labels.set(target, &lower);
                true
            }
            Action::Uppercase => {
                let upper = self.source_value(labels).to_uppercase();
                labels.set(target, &upper);
                true
            }
            Action::HashMod => {
                let bucket = hash_mod(&self.source_value(labels), self.config.modulus);
                labels.set(target, &bucket.to_string());
                true
            }
            Action::LabelMap => {
                let mapped: Vec<(String, String)> = labels
                    .iter()
                    .filter_map(|(name, value)| {
                        let captures = self.regex.captures(name)?;
                        let mut mapped_name = String::new();
                        captures.expand(&self.config.replacement, &mut mapped_name);
                        Some((mapped_name, value.to_string()))
                    })
                    .collect();
                for (name, value) in mapped {
                    labels.set(&name, &value);
                }
                true
            }
            Action::LabelDrop | Action::LabelKeep => {
                let drop_matching = self.action == Action::LabelDrop;
                let removed: Vec<String> = labels
                    .iter()
                    .filter(|(name, _)| self.regex.is_match(name) == drop_matching)
                    .map(|(name, _)| name.to_string())
                    .collect();
                for name in removed {
                    labels.remove(&name);
                }
                true
            }
        }
    }
}

/// Applies `rules` in order; false when one of them dropped the label set.
pub fn process(rules: &[Relabel], labels: &mut Labels) -> bool {
    rules.iter().all(|rule| rule.apply(labels))
}

/// Whether `rules` may change label names or values; when they only keep
/// or drop series, a relabeled series needs no new validity check.
pub fn may_rewrite(rules: &[Relabel]) -> bool {
    rules.iter().any(|rule| {
        !matches!(
            rule.action,
            Action::Keep | Action::Drop | Action::KeepEqual | Action::DropEqual
        )
    })
}

/// Prometheus' `hashmod`: the last 8 bytes of the md5 of `value`, read big
/// endian, modulo `modulus`.
pub fn hash_mod(value: &str, modulus: u64) -> u64 {
    let digest = md5::compute(value.as_bytes()).0;
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&digest[8..]);
    u64::from_be_bytes(tail) % modulus
}

/// Prometheus' check of a relabeled series: it must keep a valid metric
/// name and valid label names, or the scrape fails with this error.
pub fn check_series(labels: &Labels) -> Result<(), String> {
    if !labels.contains(METRIC_NAME) {
        return Err(format!("missing metric name ({METRIC_NAME} label)"));
    }
    let valid =
        is_metric_name(labels.metric_name()) && labels.iter().all(|(name, _)| is_label_name(name));
    if !valid {
        return Err(format!("invalid metric name or label names: {labels}"));
    }
    Ok(())
}

fn default_separator() -> String {
    ";".into()
}

fn default_regex() -> String {
    "(.*)".into()
}

fn default_replacement() -> String {
    "$1".into()
}

fn default_action() -> String {
    "replace".into()
}

/// A string that YAML may have written as a number or boolean
/// (`regex: 500`), as Go's YAML decoder accepts it.
fn scalar<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match serde_norway::Value::deserialize(deserializer)? {
        serde_norway::Value::String(text) => Ok(text),
        serde_norway::Value::Number(number) => Ok(number.to_string()),
        serde_norway::Value::Bool(flag) => Ok(flag.to_string()),
        serde_norway::Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Relabel {
        let config: RelabelConfig = serde_norway::from_str(yaml).unwrap();
        config.compile().unwrap()
    }

    fn error(yaml: &str) -> String {
        let config: RelabelConfig = serde_norway::from_str(yaml).unwrap();
        config.compile().unwrap_err()
    }

    /// Applies `rules` (a YAML list) to `input`; None when dropped.
    fn check(rules: &str, input: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        let configs: Vec<RelabelConfig> = serde_norway::from_str(rules).unwrap();
        let rules: Vec<Relabel> = configs
            .iter()
            .map(|config| config.compile().unwrap())
            .collect();
        let mut labels = Labels::new(input.iter().copied());
        process(&rules, &mut labels).then(|| {
            labels
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        })
    }

    fn pairs(input: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        let mut pairs: Vec<(String, String)> = input
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        pairs.sort();
        Some(pairs)
    }

    #[test]
    fn replace_expands_groups_and_joins_source_labels() {
        // Prometheus' documented example shape: join two labels, capture, rewrite.
        let rules = "- { source_labels: [a, b], regex: 'f(.*);(.*)r', target_label: a, replacement: 'ch${1}-ch${2}' }";
        assert_eq!(
            check(rules, &[("a", "foo"), ("b", "bar")]),
            pairs(&[("a", "choo-chba"), ("b", "bar")])
        );
        // Unanchored in the text, anchored in effect: no match, no change.
        let rules = "- { source_labels: [a], regex: 'o+', target_label: a, replacement: x }";
        assert_eq!(check(rules, &[("a", "foo")]), pairs(&[("a", "foo")]));
        // Defaults: regex (.*), replacement $1, separator ;
        let rules = "- { source_labels: [a, b], target_label: c }";
        assert_eq!(
            check(rules, &[("a", "x"), ("b", "y")]),
            pairs(&[("a", "x"), ("b", "y"), ("c", "x;y")])
        );
        // Missing source labels count as empty values.
        let rules = "- { source_labels: [a, missing, b], separator: '-', target_label: c }";
        assert_eq!(
            check(rules, &[("a", "x"), ("b", "y")]),
            pairs(&[("a", "x"), ("b", "y"), ("c", "x--y")])
        );
        // An empty result removes the target label.
        let rules = "- { source_labels: [missing], target_label: a }";
        assert_eq!(
            check(rules, &[("a", "x"), ("b", "y")]),
            pairs(&[("b", "y")])
        );
        // Named groups, and a target label built from the match.
        let rules = "- { source_labels: [a], regex: '(?P<key>[a-z]+)=(?P<val>.*)', target_label: 'k_${key}', replacement: '$val' }";
        assert_eq!(
            check(rules, &[("a", "env=prod")]),
            pairs(&[("a", "env=prod"), ("k_env", "prod")])
        );
        // A target label that expands to an invalid name changes nothing.
        let rules = "- { source_labels: [a], regex: '(.*)', target_label: '${1}', replacement: x }";
        assert_eq!(check(rules, &[("a", "1bad")]), pairs(&[("a", "1bad")]));
        // `$1x` names the group `1x`: empty, as in Go; `$$` is a literal `$`.
        let rules = "- { source_labels: [a], target_label: b, replacement: '$1x|${1}x|$$1' }";
        assert_eq!(
            check(rules, &[("a", "v")]),
            pairs(&[("a", "v"), ("b", "|vx|$1")])
        );
        // A fixed value, whatever the input.
        let rules = "- { target_label: env, replacement: prod }";
        assert_eq!(
            check(rules, &[("a", "v")]),
            pairs(&[("a", "v"), ("env", "prod")])
        );
    }

    #[test]
    fn keep_and_drop_match_the_joined_value() {
        let keep = "- { source_labels: [a], regex: 'f.*', action: keep }";
        assert_eq!(check(keep, &[("a", "foo")]), pairs(&[("a", "foo")]));
        assert_eq!(check(keep, &[("a", "xfoo")]), None);
        // A missing label is the empty value, which `f.*` does not match.
        assert_eq!(check(keep, &[("b", "foo")]), None);
        let drop = "- { source_labels: [a, b], regex: 'foo;bar', action: Drop }";
        assert_eq!(check(drop, &[("a", "foo"), ("b", "bar")]), None);
        assert_eq!(
            check(drop, &[("a", "foo"), ("b", "baz")]),
            pairs(&[("a", "foo"), ("b", "baz")])
        );
        // Rules apply in order; a later rule sees what an earlier one wrote.
        let both = "- { target_label: a, replacement: foo }\n- { source_labels: [a], regex: foo, action: drop }";
        assert_eq!(check(both, &[("b", "x")]), None);
    }

    #[test]
    fn keepequal_and_dropequal_compare_with_the_target_label() {
        let keepequal = "- { source_labels: [a], target_label: b, action: keepequal }";
        assert_eq!(
            check(keepequal, &[("a", "1"), ("b", "1")]),
            pairs(&[("a", "1"), ("b", "1")])
        );
        assert_eq!(check(keepequal, &[("a", "1"), ("b", "2")]), None);
        let dropequal = "- { source_labels: [a], target_label: b, action: dropequal }";
        assert_eq!(check(dropequal, &[("a", "1"), ("b", "1")]), None);
        assert_eq!(
            check(dropequal, &[("a", "1"), ("b", "2")]),
            pairs(&[("a", "1"), ("b", "2")])
        );
    }

    #[test]
    fn hashmod_is_md5_tail_big_endian() {
        // Prometheus' own test case: md5("baz") modulo 1000 is 976.
        let rules = "- { source_labels: [c], target_label: d, modulus: 1000, action: hashmod }";
        assert_eq!(
            check(rules, &[("a", "foo"), ("c", "baz")]),
            pairs(&[("a", "foo"), ("c", "baz"), ("d", "976")])
        );
        // md5("foo") = acbd18db4cc2f85c edef654fccc4a4d8: the last 8 bytes,
        // big endian, are 17145033699835028696.
        assert_eq!(hash_mod("foo", 1000), 696);
        assert_eq!(hash_mod("foo", 1 << 63), 17145033699835028696 - (1 << 63));
        // A usual sharding setup: keep one of two shards.
        let shard = |address: &str| hash_mod(address, 2).to_string();
        let rules = "- { source_labels: [__address__], target_label: __tmp_hash, modulus: 2, action: hashmod }\n- { source_labels: [__tmp_hash], regex: '0', action: keep }";
        let kept = ["a:1", "b:1", "c:1", "d:1", "e:1"]
            .into_iter()
            .filter(|address| check(rules, &[("__address__", address)]).is_some())
            .count();
        let expected = ["a:1", "b:1", "c:1", "d:1", "e:1"]
            .into_iter()
            .filter(|address| shard(address) == "0")
            .count();
        assert_eq!(kept, expected);
    }

    #[test]
    fn labelmap_labeldrop_labelkeep_act_on_names() {
        let labelmap = "- { regex: '__meta_(.+)', action: labelmap }";
        assert_eq!(
            check(
                labelmap,
                &[("__meta_zone", "a"), ("__meta_rack", "r1"), ("job", "x")]
            ),
            pairs(&[
                ("__meta_rack", "r1"),
                ("__meta_zone", "a"),
                ("job", "x"),
                ("rack", "r1"),
                ("zone", "a")
            ])
        );
        let labelmap = "- { regex: 'old_(.+)', replacement: 'new_${1}', action: labelmap }";
        assert_eq!(
            check(labelmap, &[("old_a", "1"), ("new_a", "2")]),
            pairs(&[("new_a", "1"), ("old_a", "1")])
        );
        let labeldrop = "- { regex: '__meta_.*|tmp', action: labeldrop }";
        assert_eq!(
            check(
                labeldrop,
                &[("__meta_zone", "a"), ("tmp", "1"), ("tmpx", "2")]
            ),
            pairs(&[("tmpx", "2")])
        );
        let labelkeep = "- { regex: 'job|instance', action: labelkeep }";
        assert_eq!(
            check(
                labelkeep,
                &[("job", "a"), ("instance", "b"), ("other", "c")]
            ),
            pairs(&[("instance", "b"), ("job", "a")])
        );
    }

    #[test]
    fn lowercase_and_uppercase_set_the_target_label() {
        let rules = "- { source_labels: [a], target_label: lower, action: lowercase }\n- { source_labels: [a], target_label: upper, action: uppercase }";
        assert_eq!(
            check(rules, &[("a", "MiXeD")]),
            pairs(&[("a", "MiXeD"), ("lower", "mixed"), ("upper", "MIXED")])
        );
    }

    #[test]
    fn invalid_rules_are_refused_as_prometheus_refuses_them() {
        let cases = [
            ("{ action: '' }", "relabel action cannot be empty"),
            ("{ action: explode }", "unknown relabel action \"explode\""),
            ("{ regex: '(' }", "invalid regex \"(\""),
            (
                "{ source_labels: [a], action: replace }",
                "replace action requires 'target_label' value",
            ),
            (
                "{ source_labels: [a], target_label: t, action: hashmod }",
                "hashmod requires non-zero modulus",
            ),
            (
                "{ source_labels: [a], target_label: 1t }",
                "\"1t\" is invalid 'target_label' for replace action",
            ),
            (
                "{ source_labels: [a], target_label: '$1-x' }",
                "\"$1-x\" is invalid 'target_label' for replace action",
            ),
            (
                "{ source_labels: [a], target_label: 'a-b', action: lowercase }",
                "invalid 'target_label' for lowercase action",
            ),
            (
                "{ source_labels: [a], action: uppercase }",
                "uppercase action requires 'target_label' value",
            ),
            (
                "{ regex: 'x', replacement: '1-$1', action: labelmap }",
                "\"1-$1\" is invalid 'replacement' for labelmap action",
            ),
            (
                "{ source_labels: [a], regex: x, action: labeldrop }",
                "labeldrop action requires only 'regex', and no other fields",
            ),
            (
                "{ regex: x, target_label: y, action: labelkeep }",
                "labelkeep action requires only 'regex'",
            ),
            (
                "{ source_labels: [a], target_label: b, regex: x, action: keepequal }",
                "keepequal action requires only 'source_labels' and 'target_label'",
            ),
            (
                "{ source_labels: [a], action: dropequal }",
                "dropequal action requires 'target_label' value",
            ),
            (
                "{ source_labels: ['a-b'], action: keep }",
                "\"a-b\" is not a valid label name in source_labels",
            ),
        ];
        for (yaml, expected) in cases {
            let error = error(yaml);
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        // Unknown keys fail, as Prometheus' strict decoding does.
        let unknown: Result<RelabelConfig, _> = serde_norway::from_str("{ target: x }");
        assert!(unknown.is_err());
        // Scalars that YAML reads as numbers are strings here, as in Go.
        let numeric = rule("{ source_labels: [code], regex: 500, action: drop }");
        let mut labels = Labels::new([("code", "500")]);
        assert!(!process(&[numeric], &mut labels));
    }

    #[test]
    fn only_filtering_rules_leave_labels_untouched() {
        let filters = [
            rule("{ source_labels: [a], regex: x, action: keep }"),
            rule("{ source_labels: [a], target_label: b, action: dropequal }"),
        ];
        assert!(!may_rewrite(&filters));
        assert!(may_rewrite(&[rule("{ regex: x, action: labeldrop }")]));
        assert!(may_rewrite(&[rule("{ target_label: a, replacement: b }")]));
    }

    #[test]
    fn relabeled_series_must_keep_a_valid_name() {
        assert_eq!(
            check_series(&Labels::new([("__name__", "up"), ("a", "1")])),
            Ok(())
        );
        assert_eq!(
            check_series(&Labels::new([("a", "1")])),
            Err("missing metric name (__name__ label)".to_string())
        );
        let error = check_series(&Labels::new([("__name__", "up"), ("a-b", "1")])).unwrap_err();
        assert!(
            error.starts_with("invalid metric name or label names"),
            "{error}"
        );
        let error = check_series(&Labels::new([("__name__", "1up")])).unwrap_err();
        assert!(
            error.starts_with("invalid metric name or label names"),
            "{error}"
        );
    }
}
