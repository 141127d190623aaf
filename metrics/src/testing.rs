//! Fixtures the metrics crate's tests and the collector's receiver tests
//! share: an OTLP metrics export like an SDK sends, and what the metric store
//! holds after it. Compiled for tests and behind the `testing` feature only.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, metric, number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use sightline_tsdb::MetricStore;
use sightline_tsdb::promql::{Engine, Value};

/// The time of [`request`]'s points in the tests: 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000_000_000;

pub fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

pub fn metric(name: &str, unit: &str, data: metric::Data) -> Metric {
    Metric {
        name: name.into(),
        description: format!("{name} help"),
        unit: unit.into(),
        data: Some(data),
        ..Metric::default()
    }
}

pub fn number(time: u64, value: f64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..NumberDataPoint::default()
    }
}

/// A request like an SDK sends: a counter, a gauge, a histogram, a
/// summary and an exponential histogram from one service.
pub fn request(time: u64) -> ExportMetricsServiceRequest {
    let route = || vec![attribute("http.route", "/pay")];
    let metrics = vec![
        metric(
            "http.server.requests",
            "{request}",
            metric::Data::Sum(Sum {
                data_points: vec![number(time, 7.0, route())],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        ),
        metric(
            "queue.depth",
            "",
            metric::Data::Sum(Sum {
                data_points: vec![number(time, -2.0, Vec::new())],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: false,
            }),
        ),
        metric(
            "cpu.utilization",
            "1",
            metric::Data::Gauge(Gauge {
                data_points: vec![number(time, 0.25, Vec::new())],
            }),
        ),
        metric(
            "http.server.duration",
            "s",
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: route(),
                    time_unix_nano: time,
                    count: 6,
                    sum: Some(2.5),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![0.1, 1.0],
                    ..HistogramDataPoint::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ),
        metric(
            "gc.pause",
            "ms",
            metric::Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: time,
                    count: 4,
                    sum: 10.0,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 2.0,
                    }],
                    ..SummaryDataPoint::default()
                }],
            }),
        ),
        metric(
            "latency.native",
            "s",
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint::default(); 2],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", "checkout"),
                    attribute("service.namespace", "shop"),
                    attribute("service.instance.id", "pod-1"),
                    attribute("k8s.pod.name", "checkout-7d9"),
                ],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

pub fn query(store: &MetricStore, expression: &str, at_ms: i64) -> Vec<(String, f64)> {
    let value = Engine::default()
        .instant_query(&*store.reader(), expression, at_ms)
        .unwrap();
    let Value::Vector(samples) = value else {
        panic!("{expression} is not a vector: {value:?}")
    };
    let mut result: Vec<(String, f64)> = samples
        .into_iter()
        .map(|sample| (sample.labels.to_string(), sample.value))
        .collect();
    result.sort_by(|a, b| a.0.cmp(&b.0));
    result
}

pub fn at_ms(time: u64) -> i64 {
    (time / 1_000_000) as i64
}

/// What every test expects in the store after `request(T0)`.
pub fn assert_translated(store: &MetricStore) {
    let at = at_ms(T0);
    let target = r#"instance="pod-1", job="shop/checkout""#;
    let expect = |expression: &str, rows: &[(&str, f64)]| {
        let rows: Vec<(String, f64)> = rows
            .iter()
            .map(|(labels, value)| (labels.replace("TARGET", target), *value))
            .collect();
        assert_eq!(query(store, expression, at), rows, "{expression}");
    };
    expect(
        "http_server_requests_total",
        &[(
            r#"http_server_requests_total{http_route="/pay", TARGET}"#,
            7.0,
        )],
    );
    expect("queue_depth", &[(r#"queue_depth{TARGET}"#, -2.0)]);
    expect(
        "cpu_utilization_ratio",
        &[(r#"cpu_utilization_ratio{TARGET}"#, 0.25)],
    );
    expect(
        "http_server_duration_seconds_bucket",
        &[
            (
                r#"http_server_duration_seconds_bucket{http_route="/pay", TARGET, le="+Inf"}"#,
                6.0,
            ),
            (
                r#"http_server_duration_seconds_bucket{http_route="/pay", TARGET, le="0.1"}"#,
                1.0,
            ),
            (
                r#"http_server_duration_seconds_bucket{http_route="/pay", TARGET, le="1"}"#,
                3.0,
            ),
        ],
    );
    expect(
        "http_server_duration_seconds_sum",
        &[(
            r#"http_server_duration_seconds_sum{http_route="/pay", TARGET}"#,
            2.5,
        )],
    );
    expect(
        "http_server_duration_seconds_count",
        &[(
            r#"http_server_duration_seconds_count{http_route="/pay", TARGET}"#,
            6.0,
        )],
    );
    expect(
        "gc_pause_milliseconds",
        &[(r#"gc_pause_milliseconds{TARGET, quantile="0.5"}"#, 2.0)],
    );
    expect(
        "gc_pause_milliseconds_count",
        &[(r#"gc_pause_milliseconds_count{TARGET}"#, 4.0)],
    );
    expect(
        "target_info",
        &[(r#"target_info{TARGET, k8s_pod_name="checkout-7d9"}"#, 1.0)],
    );
    let metadata = store.metadata();
    assert_eq!(metadata["http_server_requests_total"].kind, "counter");
    assert_eq!(metadata["queue_depth"].kind, "gauge");
    assert_eq!(metadata["http_server_duration_seconds"].kind, "histogram");
    assert_eq!(metadata["http_server_duration_seconds"].unit, "seconds");
    assert_eq!(
        metadata["http_server_duration_seconds"].help,
        "http.server.duration help"
    );
}
