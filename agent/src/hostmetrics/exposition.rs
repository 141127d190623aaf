//! A tiny writer of the Prometheus text format 0.0.4: `# HELP` and
//! `# TYPE` once per family, then its samples.

use std::fmt::Write;

/// Families rendered so far by one collector.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a counter family.
    pub(crate) fn counter(&mut self, name: &str, help: &str) {
        self.header(name, help, "counter");
    }

    /// Starts a gauge family.
    pub(crate) fn gauge(&mut self, name: &str, help: &str) {
        self.header(name, help, "gauge");
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the family started last.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (label, label_value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                push_escaped_label(&mut self.out, label_value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample.
    pub(crate) fn single_gauge(&mut self, name: &str, help: &str, value: f64) {
        self.gauge(name, help);
        self.sample(name, &[], value);
    }

    /// The rendered text.
    pub(crate) fn into_text(self) -> String {
        self.out
    }
}

/// Shortest text that reads back as the same float; infinities as the
/// format spells them.
fn push_value(out: &mut String, value: f64) {
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Appends a label value with `\`, `"` and newline escaped, without
/// allocating (a scrape writes thousands of long cgroup ids).
fn push_escaped_label(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_headers_labels_and_values() {
        let mut families = Exposition::default();
        families.counter("x_total", "An x.");
        families.sample("x_total", &[("a", "q\"\\\n"), ("b", "")], 1.5);
        families.sample("x_total", &[], 3.0);
        families.single_gauge("y", "A y.", f64::INFINITY);
        assert_eq!(
            families.into_text(),
            "# HELP x_total An x.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"\\\\\\n\",b=\"\"} 1.5\nx_total 3\n\
             # HELP y A y.\n# TYPE y gauge\ny +Inf\n"
        );
    }
}
