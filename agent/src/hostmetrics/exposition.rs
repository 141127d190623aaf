//! The families one collection of host metrics renders, in the Prometheus
//! text format 0.0.4 as `sightline_vocab::exposition` writes it.

use sightline_vocab::exposition::{Kind, Writer};

/// Families rendered so far by one collector.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a counter family.
    pub(crate) fn counter(&mut self, name: &str, help: &str) {
        self.writer().family(name, Kind::Counter, help);
    }

    /// Starts a gauge family.
    pub(crate) fn gauge(&mut self, name: &str, help: &str) {
        self.writer().family(name, Kind::Gauge, help);
    }

    /// One sample of the family started last.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.writer().sample(name, labels, value);
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

    fn writer(&mut self) -> Writer<'_> {
        Writer::new(&mut self.out)
    }
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
