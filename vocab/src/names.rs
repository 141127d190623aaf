//! Metric and label names, by Prometheus' rules: the one check every
//! config file, rule file, scrape parser and API route uses; and the field
//! names a request id goes by.

/// Field names whose value is a record's request id, in order of
/// preference: what services and shippers call it. The agent promotes the
/// first present (its default `[fields] request_id`), the collector reads
/// the same names from attributes and shipped documents.
pub const REQUEST_ID_KEYS: &[&str] = &[
    "request_id",
    "requestId",
    "x-request-id",
    "x_request_id",
    "correlation_id",
    "correlationId",
    "x-correlation-id",
];

/// `key` with every character that is not `[a-zA-Z0-9_]` made `_`: how
/// Prometheus makes a label name of a Kubernetes key and Loki one of a
/// parsed field (neither fixes a leading digit).
pub fn underscored(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `name` is a metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    is_name(name, true)
}

/// Whether `name` is a label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(name: &str) -> bool {
    is_name(name, false)
}

fn is_name(name: &str, colon: bool) -> bool {
    let allowed = |byte: u8| byte.is_ascii_alphabetic() || byte == b'_' || (colon && byte == b':');
    let mut bytes = name.bytes();
    bytes.next().is_some_and(allowed) && bytes.all(|byte| allowed(byte) || byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::{is_label_name, is_metric_name};

    #[test]
    fn prometheus_name_rules() {
        // (name, metric name, label name)
        let cases = [
            ("http_requests_total", true, true),
            ("_private", true, true),
            ("__name__", true, true),
            ("job:rate5m", true, false),
            (":leading_colon", true, false),
            ("a1", true, true),
            ("A_Z_9", true, true),
            ("1abc", false, false),
            ("", false, false),
            ("has-dash", false, false),
            ("has space", false, false),
            ("dot.name", false, false),
            ("é", false, false),
            ("aé", false, false),
        ];
        for (name, metric, label) in cases {
            assert_eq!(is_metric_name(name), metric, "metric {name:?}");
            assert_eq!(is_label_name(name), label, "label {name:?}");
        }
    }
}
