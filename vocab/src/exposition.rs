//! The Prometheus text exposition format (0.0.4), written: `# HELP` and
//! `# TYPE` once per family, then its samples, with label values and help
//! text escaped as the format requires.
//!
//! ```
//! use sightline_vocab::exposition::{Kind, Writer};
//!
//! let mut text = String::new();
//! let mut writer = Writer::new(&mut text);
//! writer.family("jobs_total", Kind::Counter, "Jobs run.");
//! writer.sample("jobs_total", &[("queue", "a\"b")], 3u64);
//! writer.family("load", Kind::Gauge, "Load.");
//! writer.sample("load", &[], f64::INFINITY);
//! let expected = concat!(
//!     "# HELP jobs_total Jobs run.\n",
//!     "# TYPE jobs_total counter\n",
//!     "jobs_total{queue=\"a\\\"b\"} 3\n",
//!     "# HELP load Load.\n",
//!     "# TYPE load gauge\n",
//!     "load +Inf\n",
//! );
//! assert_eq!(text, expected);
//! ```
//!
//! Floats are written as the shortest text that reads back as the same
//! number (`0.25`, `3`, `1000000`), infinities as `+Inf` and `-Inf` and NaN
//! as `NaN`, as Prometheus reads them; integers are written exactly.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The `# TYPE` of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (and resets to 0 on restart).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative `_bucket{le=...}` series with `_sum` and `_count`.
    Histogram,
    /// Quantiles with `_sum` and `_count`.
    Summary,
    /// A family without a declared type.
    Untyped,
}

impl Kind {
    /// The word `# TYPE` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }
}

/// A sample value: integers are written exactly, floats by [`format_float`].
pub trait SampleValue {
    /// Appends the value's text to `out`.
    fn write_to(&self, out: &mut String);
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        out.push_str(&format_float(*self));
    }
}

macro_rules! integer_sample_value {
    ($($integer:ty),*) => {$(
        impl SampleValue for $integer {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_sample_value!(u32, u64, usize, i32, i64);

/// Appends families and samples to a string.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut String,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut String) -> Writer<'a> {
        Writer { out }
    }

    /// `# HELP` then `# TYPE`: starts a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        self.help(name, help);
        self.kind(name, kind);
    }

    /// `# HELP name help`, the help text escaped.
    pub fn help(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
    }

    /// `# TYPE name kind`.
    pub fn kind(&mut self, name: &str, kind: Kind) {
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line: `name{label="value",...} value`, without braces
    /// when there are no labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.sample_start(name, labels, value);
        self.out.push('\n');
    }

    /// One sample line with an OpenMetrics exemplar:
    /// `name{...} value # {label="value",...} exemplar_value [timestamp]`,
    /// the timestamp in Unix seconds.
    pub fn sample_with_exemplar(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl SampleValue,
        exemplar_labels: &[(&str, &str)],
        exemplar_value: impl SampleValue,
        exemplar_seconds: Option<f64>,
    ) {
        self.sample_start(name, labels, value);
        self.out.push_str(" # ");
        self.label_set(exemplar_labels, true);
        self.out.push(' ');
        exemplar_value.write_to(self.out);
        if let Some(seconds) = exemplar_seconds {
            self.out.push(' ');
            seconds.write_to(self.out);
        }
        self.out.push('\n');
    }

    fn sample_start(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        self.out.push_str(name);
        self.label_set(labels, false);
        self.out.push(' ');
        value.write_to(self.out);
    }

    /// `{a="x",b="y"}`; nothing for no labels unless `always`.
    fn label_set(&mut self, labels: &[(&str, &str)], always: bool) {
        if labels.is_empty() && !always {
            return;
        }
        self.out.push('{');
        for (index, (label, value)) in labels.iter().enumerate() {
            if index > 0 {
                self.out.push(',');
            }
            self.out.push_str(label);
            self.out.push_str("=\"");
            push_escaped_label_value(self.out, value);
            self.out.push('"');
        }
        self.out.push('}');
    }
}

/// Turns text exposition 0.0.4 into OpenMetrics 1.0: `# HELP` and `# TYPE`
/// name their family without `_total` (OpenMetrics names a counter family
/// without it and its sample with it), and the text ends with `# EOF`.
pub fn to_openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        match line
            .strip_prefix("# TYPE ")
            .or_else(|| line.strip_prefix("# HELP "))
        {
            Some(rest) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let family = name.strip_suffix("_total").unwrap_or(name);
                let _ = write!(out, "{} {family} {tail}", &line[..6]);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

/// A float as Prometheus reads it: `+Inf`, `-Inf`, `NaN`, else the shortest
/// text that reads back as the same number (Go's `FormatFloat(f, 'f', -1, 64)`).
pub fn format_float(value: f64) -> Cow<'static, str> {
    if value.is_nan() {
        Cow::Borrowed("NaN")
    } else if value == f64::INFINITY {
        Cow::Borrowed("+Inf")
    } else if value == f64::NEG_INFINITY {
        Cow::Borrowed("-Inf")
    } else {
        Cow::Owned(value.to_string())
    }
}

/// A label value with `\`, `"` and newline escaped.
pub fn escape_label_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 2);
    push_escaped_label_value(&mut escaped, value);
    Cow::Owned(escaped)
}

/// Help text with `\` and newline escaped.
pub fn escape_help(help: &str) -> Cow<'_, str> {
    if !help.contains(['\\', '\n']) {
        return Cow::Borrowed(help);
    }
    Cow::Owned(help.replace('\\', "\\\\").replace('\n', "\\n"))
}

/// Appends an escaped label value without allocating (a scrape writes
/// thousands of long cgroup ids).
fn push_escaped_label_value(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_headers_labels_and_values() {
        let mut text = String::new();
        let mut writer = Writer::new(&mut text);
        writer.family("x_total", Kind::Counter, "An x.\nback\\slash");
        writer.sample("x_total", &[("a", "q\"\\\n"), ("b", "")], 1.5);
        writer.sample("x_total", &[], 3.0);
        writer.sample("x_total", &[], u64::MAX);
        writer.sample("x_total", &[], -7i64);
        writer.help("h", "Histogram.");
        writer.kind("h", Kind::Histogram);
        writer.sample_with_exemplar(
            "h_bucket",
            &[("le", "0.5")],
            2usize,
            &[("trace_id", "ab")],
            0.25,
            None,
        );
        writer.sample_with_exemplar("h_bucket", &[], 2usize, &[], 0.25, Some(1700000000.5));
        assert_eq!(
            text,
            "# HELP x_total An x.\\nback\\\\slash\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\n\",b=\"\"} 1.5\nx_total 3\nx_total 18446744073709551615\nx_total -7\n\
             # HELP h Histogram.\n# TYPE h histogram\n\
             h_bucket{le=\"0.5\"} 2 # {trace_id=\"ab\"} 0.25\nh_bucket 2 # {} 0.25 1700000000.5\n"
        );
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = "# HELP a_total An a.\n# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 2\n";
        assert_eq!(
            to_openmetrics(text),
            "# HELP a An a.\n# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\n# EOF\n"
        );
        assert_eq!(to_openmetrics(""), "# EOF\n");
    }

    #[test]
    fn floats_as_prometheus_reads_them() {
        let cases = [
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (0.0, "0"),
            (-0.5, "-0.5"),
            (1e6, "1000000"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1.5e-7, "0.00000015"),
        ];
        for (value, text) in cases {
            assert_eq!(format_float(value), text, "{value}");
        }
    }

    #[test]
    fn escapes_only_what_needs_it() {
        assert!(matches!(
            escape_label_value("plain"),
            Cow::Borrowed("plain")
        ));
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert!(matches!(escape_help("quote \" stays"), Cow::Borrowed(_)));
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
        let kinds = [
            Kind::Counter,
            Kind::Gauge,
            Kind::Histogram,
            Kind::Summary,
            Kind::Untyped,
        ];
        let words: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(
            words,
            ["counter", "gauge", "histogram", "summary", "untyped"]
        );
    }
}
