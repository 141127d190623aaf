//! A strict checker of the Prometheus text format 0.0.4, shared by the
//! host metrics tests (unit tests include it with `#[path]`).

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashSet};

use regex::Regex;

/// A checked exposition: family name to its type, and every sample as
/// `(name, labels, value)`.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    /// Values of the samples named `name` whose labels include `labels`.
    pub fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(sample, sample_labels, _)| {
                sample == name
                    && labels.iter().all(|(key, value)| {
                        sample_labels.get(*key).map(String::as_str) == Some(*value)
                    })
            })
            .map(|(_, _, value)| *value)
            .collect()
    }
}

/// Checks every line of `text`: the sample grammar `name{labels} value
/// [timestamp]`, `# HELP` and `# TYPE` at most once per family and before
/// its samples, a family's samples together, no series twice. The error
/// names the line.
pub fn check(text: &str) -> Result<Exposition, String> {
    let name = r"[a-zA-Z_:][a-zA-Z0-9_:]*";
    let label = r#"[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*""#;
    let value = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]Inf|NaN";
    let sample = Regex::new(&format!(
        r"^({name})(?:\{{((?:{label})(?:,{label})*,?)?\}})? ({value})(?: -?[0-9]+)?$"
    ))
    .unwrap();
    let one_label = Regex::new(&format!(
        "({})=\"((?:[^\"\\\\]|\\\\.)*)\"",
        r"[a-zA-Z_][a-zA-Z0-9_]*"
    ))
    .unwrap();
    let help = Regex::new(&format!(r"^# HELP ({name}) .*$")).unwrap();
    let kind = Regex::new(&format!(
        r"^# TYPE ({name}) (counter|gauge|histogram|summary|untyped)$"
    ))
    .unwrap();

    let mut exposition = Exposition::default();
    let mut helps = HashSet::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut enter = |family: &str, current: &mut Option<String>, at: usize| {
        if current.as_deref() == Some(family) {
            return Ok(());
        }
        if let Some(previous) = current.take() {
            finished.insert(previous);
        }
        if finished.contains(family) {
            return Err(format!(
                "line {at}: family {family} appears again after others"
            ));
        }
        *current = Some(family.to_owned());
        Ok(())
    };
    for (index, line) in text.lines().enumerate() {
        let at = index + 1;
        if let Some(captures) = help.captures(line) {
            let family = &captures[1];
            if !helps.insert(family.to_owned()) {
                return Err(format!("line {at}: second HELP for {family}"));
            }
            enter(family, &mut current, at)?;
        } else if let Some(captures) = kind.captures(line) {
            let family = &captures[1];
            if exposition.types.contains_key(family) {
                return Err(format!("line {at}: second TYPE for {family}"));
            }
            if exposition.samples.iter().any(|(name, _, _)| name == family) {
                return Err(format!("line {at}: TYPE for {family} after its samples"));
            }
            exposition
                .types
                .insert(family.to_owned(), captures[2].to_owned());
            enter(family, &mut current, at)?;
        } else if line.starts_with('#') {
            return Err(format!("line {at}: malformed comment {line:?}"));
        } else if let Some(captures) = sample.captures(line) {
            let sample_name = captures[1].to_owned();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| sample_name.strip_suffix(suffix))
                .find(|base| {
                    matches!(
                        exposition.types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
                .unwrap_or(&sample_name)
                .to_owned();
            enter(&family, &mut current, at)?;
            let mut labels = BTreeMap::new();
            if let Some(text) = captures.get(2) {
                for label in one_label.captures_iter(text.as_str()) {
                    let value = label[2]
                        .replace("\\n", "\n")
                        .replace("\\\"", "\"")
                        .replace("\\\\", "\\");
                    if labels.insert(label[1].to_owned(), value).is_some() {
                        return Err(format!("line {at}: label {} twice", &label[1]));
                    }
                }
            }
            if !series.insert((sample_name.clone(), labels.clone())) {
                return Err(format!("line {at}: series {sample_name}{labels:?} twice"));
            }
            let value: f64 = match &captures[3] {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                number => number
                    .parse()
                    .map_err(|_| format!("line {at}: bad value {number:?}"))?,
            };
            exposition.samples.push((sample_name, labels, value));
        } else {
            return Err(format!("line {at}: not a sample: {line:?}"));
        }
    }
    Ok(exposition)
}
