//! A service's `/metrics`: Prometheus text exposition (format 0.0.4), or
//! OpenMetrics when the scraper asks for it, with an exemplar (the trace and
//! span of the newest request) on every duration bucket that counted one,
//! as the Prometheus client libraries keep them. Written with Sightline's
//! own exposition writer (no metrics crate: a few counters and one
//! histogram do not need one).
//!
//! Every metric is declared in [`METRICS`] with its help text, so the
//! exposition always has `# HELP` and `# TYPE` lines and label cardinality
//! stays bounded: labels are route templates, methods, statuses and small
//! fixed sets of reasons, never ids.

use std::collections::BTreeMap;
use std::sync::Mutex;

use sightline_vocab::exposition::{Kind, Writer, format_float};

/// Upper bounds (seconds) of the request duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The request counter.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// The request duration histogram.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Orders created (order service).
pub const ORDERS_CREATED_TOTAL: &str = "orders_created_total";
/// Orders refused, by reason (order service).
pub const ORDERS_FAILED_TOTAL: &str = "orders_failed_total";
/// Sum of created orders' totals in EUR (order service).
pub const ORDER_VALUE_TOTAL: &str = "order_value_total";
/// Payments charged (payment service).
pub const PAYMENTS_PROCESSED_TOTAL: &str = "payments_processed_total";
/// Payments that failed, by reason (payment service).
pub const PAYMENTS_FAILED_TOTAL: &str = "payments_failed_total";
/// Reservations released by the compensating step (inventory service).
pub const RESERVATIONS_RELEASED_TOTAL: &str = "inventory_reservations_released_total";
/// Reservations refused for lack of stock (inventory service).
pub const OUT_OF_STOCK_TOTAL: &str = "inventory_out_of_stock_total";
/// Logins, by outcome (auth service).
pub const LOGINS_TOTAL: &str = "auth_logins_total";
/// Token checks, by outcome (auth service).
pub const TOKEN_CHECKS_TOTAL: &str = "auth_token_checks_total";
/// Requests refused by the rate limiter (gateway).
pub const RATE_LIMITED_TOTAL: &str = "gateway_rate_limited_total";
/// Emails sent (notification service).
pub const EMAILS_SENT_TOTAL: &str = "notification_emails_sent_total";
/// Requests answered by an injected fault, by kind.
pub const FAULTS_INJECTED_TOTAL: &str = "faults_injected_total";

/// Every counter with its help text.
const METRICS: [(&str, &str); 13] = [
    (
        HTTP_REQUESTS_TOTAL,
        "HTTP requests handled, by method, route and status.",
    ),
    (ORDERS_CREATED_TOTAL, "Orders created."),
    (ORDERS_FAILED_TOTAL, "Orders refused, by reason."),
    (ORDER_VALUE_TOTAL, "Total value of created orders, in EUR."),
    (PAYMENTS_PROCESSED_TOTAL, "Payments charged successfully."),
    (PAYMENTS_FAILED_TOTAL, "Payments that failed, by reason."),
    (
        RESERVATIONS_RELEASED_TOTAL,
        "Stock reservations released after a failed payment.",
    ),
    (
        OUT_OF_STOCK_TOTAL,
        "Reservations refused for lack of stock.",
    ),
    (LOGINS_TOTAL, "Login attempts, by outcome."),
    (TOKEN_CHECKS_TOTAL, "Session token checks, by outcome."),
    (
        RATE_LIMITED_TOTAL,
        "Requests refused by the per-client rate limiter.",
    ),
    (EMAILS_SENT_TOTAL, "Order confirmation emails sent."),
    (
        FAULTS_INJECTED_TOTAL,
        "Requests affected by an injected fault, by kind.",
    ),
];

/// Label pairs in a fixed order, as the series key.
type Labels = Vec<(&'static str, String)>;

/// One histogram series: cumulative bucket counts, sum and count.
#[derive(Debug, Clone, Default)]
struct HistogramSeries {
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
    /// The newest request per bucket (the one its duration falls in; the
    /// last is `+Inf`).
    exemplars: [Option<RequestExemplar>; DURATION_BUCKETS.len() + 1],
}

/// A request as an exemplar: its trace and span, duration and end time.
#[derive(Debug, Clone)]
struct RequestExemplar {
    trace_id: String,
    span_id: String,
    seconds: f64,
    /// Unix seconds.
    at: f64,
}

/// The metrics of one service.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    durations: Mutex<BTreeMap<Labels, HistogramSeries>>,
    started: StartTime,
}

/// When the process started (its metrics were created), Unix seconds:
/// `process_start_time_seconds`, which restart alerts watch change.
#[derive(Debug)]
struct StartTime(f64);

impl Default for StartTime {
    fn default() -> StartTime {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or_default();
        StartTime(now)
    }
}

impl Metrics {
    /// Adds `by` to counter `name` (one of the constants of this module)
    /// with `labels`.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], by: f64) {
        let labels = labels
            .iter()
            .map(|(key, value)| (*key, (*value).to_owned()))
            .collect();
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.entry((name, labels)).or_default() += by;
    }

    /// Adds one to counter `name`.
    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1.0);
    }

    /// Records one handled request; `trace` (trace id, span id, in hex)
    /// becomes its bucket's exemplar.
    pub fn observe_request(
        &self,
        method: &str,
        route: &str,
        status: u16,
        seconds: f64,
        trace: Option<(String, String)>,
    ) {
        let status = status.to_string();
        self.inc(
            HTTP_REQUESTS_TOTAL,
            &[("method", method), ("route", route), ("status", &status)],
        );
        let labels = vec![("method", method.to_owned()), ("route", route.to_owned())];
        let mut durations = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let series = durations.entry(labels).or_default();
        for (bucket, bound) in series.buckets.iter_mut().zip(DURATION_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        series.sum += seconds;
        series.count += 1;
        if let Some((trace_id, span_id)) = trace {
            let bucket = DURATION_BUCKETS
                .iter()
                .position(|bound| seconds <= *bound)
                .unwrap_or(DURATION_BUCKETS.len());
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_secs_f64())
                .unwrap_or_default();
            series.exemplars[bucket] = Some(RequestExemplar {
                trace_id,
                span_id,
                seconds,
                at,
            });
        }
    }

    /// The value of counter `name` summed over all its label sets.
    pub fn total(&self, name: &str) -> f64 {
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        counters
            .iter()
            .filter(|((counter, _), _)| *counter == name)
            .map(|(_, value)| value)
            .sum()
    }

    /// The Prometheus text exposition of every metric. Counters that were
    /// never incremented are still announced (HELP/TYPE) so dashboards see
    /// the metric exists.
    pub fn render(&self) -> String {
        self.write(false)
    }

    /// The OpenMetrics exposition: [`Metrics::render`]'s series with the
    /// duration buckets' exemplars, counters' families named without
    /// `_total`, and `# EOF`.
    pub fn render_openmetrics(&self) -> String {
        sightline_vocab::exposition::to_openmetrics(&self.write(true))
    }

    fn write(&self, exemplars: bool) -> String {
        let mut out = String::with_capacity(4096);
        let mut writer = Writer::new(&mut out);
        let counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (name, help) in METRICS {
            writer.family(name, Kind::Counter, help);
            for ((counter, labels), value) in counters.range((name, Vec::new())..) {
                if *counter != name {
                    break;
                }
                writer.sample(name, &label_pairs(labels), *value);
            }
        }
        drop(counters);

        let name = HTTP_REQUEST_DURATION_SECONDS;
        writer.family(
            name,
            Kind::Histogram,
            "HTTP request duration in seconds, by method and route.",
        );
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        let durations = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        for (labels, series) in durations.iter() {
            let pairs = label_pairs(labels);
            // The last bucket, `le="+Inf"`, counts every request.
            let bounds = DURATION_BUCKETS.iter().chain([&f64::INFINITY]);
            let counts = series.buckets.iter().chain([&series.count]);
            for ((bound, value), exemplar) in bounds.zip(counts).zip(&series.exemplars) {
                let le = format_float(*bound);
                let mut with_le = pairs.clone();
                with_le.push(("le", &le));
                match exemplar.as_ref().filter(|_| exemplars) {
                    Some(exemplar) => writer.sample_with_exemplar(
                        &bucket,
                        &with_le,
                        *value,
                        &[
                            ("trace_id", exemplar.trace_id.as_str()),
                            ("span_id", exemplar.span_id.as_str()),
                        ],
                        exemplar.seconds,
                        Some(exemplar.at),
                    ),
                    None => writer.sample(&bucket, &with_le, *value),
                }
            }
            writer.sample(&sum, &pairs, series.sum);
            writer.sample(&count, &pairs, series.count);
        }
        drop(durations);
        writer.family(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
        );
        writer.sample("process_start_time_seconds", &[], self.started.0);
        out
    }
}

/// A series key as the label pairs the exposition writer takes.
fn label_pairs(labels: &Labels) -> Vec<(&str, &str)> {
    labels
        .iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

/// The value of the sample `name{labels}` (labels given as
/// `key="value",...` in exposition order, or empty) in an exposition, or the
/// sum over all series of `name` when `labels` is `None`. For tests and the
/// load generator.
pub fn sample_value(exposition: &str, name: &str, labels: Option<&str>) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        match labels {
            Some(wanted) if wanted == series_labels => return Some(value),
            Some(_) => {}
            None => *found.get_or_insert(0.0) += value,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_histogram_and_escaped_labels() {
        let metrics = Metrics::default();
        metrics.observe_request("POST", "/orders", 201, 0.03, None);
        let trace = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let ids = Some((trace.0.to_string(), trace.1.to_string()));
        metrics.observe_request("POST", "/orders", 502, 0.7, ids);
        metrics.inc(PAYMENTS_FAILED_TOTAL, &[("reason", "declined")]);
        metrics.add(ORDER_VALUE_TOTAL, &[], 24.9);
        metrics.inc(ORDERS_FAILED_TOTAL, &[("reason", "a \"quoted\"\nvalue")]);
        let text = metrics.render();

        assert!(
            text.contains("# TYPE http_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{method="POST",route="/orders",status="201"} 1"#),
            "{text}"
        );
        assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
        assert!(text.contains(
            r#"http_request_duration_seconds_bucket{method="POST",route="/orders",le="0.05"} 1"#
        ));
        assert!(text.contains(
            r#"http_request_duration_seconds_bucket{method="POST",route="/orders",le="1"} 2"#
        ));
        assert!(text.contains(
            r#"http_request_duration_seconds_bucket{method="POST",route="/orders",le="+Inf"} 2"#
        ));
        assert!(
            text.contains(
                r#"http_request_duration_seconds_count{method="POST",route="/orders"} 2"#
            )
        );
        assert!(text.contains("order_value_total 24.9"), "{text}");
        assert!(
            text.contains(r#"orders_failed_total{reason="a \"quoted\"\nvalue"} 1"#),
            "{text}"
        );
        assert!(text.contains("# TYPE orders_created_total counter"));
        assert_eq!(
            sample_value(&text, PAYMENTS_FAILED_TOTAL, Some(r#"reason="declined""#)),
            Some(1.0)
        );
        assert_eq!(sample_value(&text, HTTP_REQUESTS_TOTAL, None), Some(2.0));
        assert_eq!(sample_value(&text, ORDERS_CREATED_TOTAL, None), None);
        assert_eq!(metrics.total(HTTP_REQUESTS_TOTAL), 2.0);
        assert!(!text.contains(" # {"), "no exemplars in the text format");

        // OpenMetrics: the slow request's trace on the bucket it fell in.
        let open = metrics.render_openmetrics();
        let exemplar = format!(
            "http_request_duration_seconds_bucket{{method=\"POST\",route=\"/orders\",le=\"1\"}} 2 # {{trace_id=\"{}\",span_id=\"{}\"}} 0.7 ",
            trace.0, trace.1
        );
        assert!(open.contains(&exemplar), "{open}");
        assert_eq!(open.matches(" # {").count(), 1, "{open}");
        assert!(open.contains("# TYPE http_requests counter"), "{open}");
        assert!(open.ends_with("# EOF\n"));
    }
}
