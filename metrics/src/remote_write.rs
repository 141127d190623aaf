//! Prometheus remote-write 1.0: the `prometheus.WriteRequest` messages and
//! what storing one means.
//!
//! The HTTP route (`POST /api/v1/write`: headers, body limits, snappy, the
//! answer's status) is the collector's receiver; it hands the decompressed
//! body to [`RemoteWrite::write`]:
//!
//! - samples are appended to the [`MetricStore`], which fsyncs before it
//!   returns: what is acknowledged is durable;
//! - bad input is refused with what was wrong and where (an undecodable
//!   body, a series without `__name__`, out-of-order samples, native
//!   histograms, which Sightline does not store). As in Prometheus, the
//!   other samples of the batch are kept;
//! - metadata (`# TYPE`/`# HELP`/`# UNIT` that Prometheus sends every minute)
//!   goes to [`MetricStore::set_metadata`]; exemplars are dropped.
//!
//! The messages are declared here with `prost` derives, field numbers as in
//! Prometheus' `prompb/types.proto` and `prompb/remote.proto`.

use std::sync::Arc;

use prost::Message;
use sightline_tsdb::{Labels, MetricMetadata, SampleLog, TsdbError};

use crate::otlp::MAX_LABELS_PER_SERIES;

/// How many individual problems a 400 answer spells out.
const ERRORS_SHOWN: usize = 5;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<WireMetadata>,
}

/// `prometheus.TimeSeries`: one series and its samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: a value at a time in milliseconds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.Exemplar`: decoded so the request parses, then dropped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

/// `prometheus.Histogram` (a native histogram). Only its timestamp is
/// decoded: native histograms are refused, and the error names the time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(int64, tag = "15")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireMetadata {
    /// `MetricType`: 0 unknown, 1 counter, 2 gauge, 3 histogram,
    /// 4 gaugehistogram, 5 summary, 6 info, 7 stateset.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

impl WireMetadata {
    fn kind(&self) -> &'static str {
        match self.r#type {
            1 => "counter",
            2 => "gauge",
            3 => "histogram",
            4 => "gaugehistogram",
            5 => "summary",
            6 => "info",
            7 => "stateset",
            _ => "unknown",
        }
    }
}

/// Why a write request was not (entirely) stored.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    /// The request does not decode.
    #[error("{0}")]
    Malformed(String),
    /// Some samples or series were refused; the rest of the batch is stored.
    #[error("{refused} of {total} samples refused: {details}")]
    Refused {
        refused: usize,
        total: usize,
        details: String,
    },
    #[error("failed to store the samples: {0}")]
    Storage(String),
}

/// Stores remote-write requests in the [`MetricStore`]: the service the
/// collector's `POST /api/v1/write` route hands decompressed bodies to.
#[derive(Debug, Clone)]
pub struct RemoteWrite {
    store: Arc<dyn SampleLog>,
}

impl RemoteWrite {
    pub fn new(store: Arc<dyn SampleLog>) -> RemoteWrite {
        RemoteWrite { store }
    }

    /// Decodes a decompressed body and stores what can be stored (see
    /// [`store_request`]). Appends and fsyncs: call it from the blocking pool.
    pub fn write(&self, body: &[u8]) -> Result<(), RemoteWriteError> {
        store_request(&*self.store, decode(body)?)
    }
}

/// Decodes a (decompressed) `prometheus.WriteRequest`.
pub fn decode(body: &[u8]) -> Result<WriteRequest, RemoteWriteError> {
    WriteRequest::decode(body).map_err(|error| {
        RemoteWriteError::Malformed(format!(
            "malformed protobuf prometheus.WriteRequest: {error}"
        ))
    })
}

/// Appends what can be stored; reports the rest as [`RemoteWriteError::Refused`].
pub fn store_request(store: &dyn SampleLog, request: WriteRequest) -> Result<(), RemoteWriteError> {
    for metadata in &request.metadata {
        if metadata.metric_family_name.is_empty() {
            continue;
        }
        store.set_metadata(
            &metadata.metric_family_name,
            MetricMetadata {
                kind: metadata.kind().to_string(),
                help: metadata.help.clone(),
                unit: metadata.unit.clone(),
            },
        );
    }
    let mut problems = Vec::new();
    let mut refused = 0;
    let mut total = 0;
    let mut samples = Vec::new();
    for (index, series) in request.timeseries.into_iter().enumerate() {
        total += series.samples.len() + series.histograms.len();
        if let Some(name) = duplicate_label_name(&series.labels) {
            // `Labels` keeps one value per name: storing would silently
            // drop the other. Prometheus refuses the series.
            refused += series.samples.len() + series.histograms.len();
            problems.push(format!(
                "timeseries[{index}] {}: duplicate label name {name:?}",
                describe_labels(&series.labels)
            ));
            continue;
        }
        let labels = Labels::new(
            series
                .labels
                .into_iter()
                .map(|label| (label.name, label.value)),
        );
        if !series.histograms.is_empty() {
            refused += series.histograms.len();
            problems.push(format!(
                "timeseries[{index}] {labels}: {} native histogram samples are not supported",
                series.histograms.len()
            ));
        }
        if series.samples.is_empty() {
            continue;
        }
        if labels.len() > MAX_LABELS_PER_SERIES {
            refused += series.samples.len();
            problems.push(format!(
                "timeseries[{index}] {}: {} labels, over max_labels_per_series ({MAX_LABELS_PER_SERIES})",
                labels.metric_name(),
                labels.len()
            ));
            continue;
        }
        if labels.metric_name().is_empty() {
            refused += series.samples.len();
            problems.push(format!("timeseries[{index}] {labels}: no __name__ label"));
            continue;
        }
        // The last sample takes the label set itself (most series of a
        // request have one sample).
        let mut rest = series.samples.into_iter().peekable();
        while let Some(sample) = rest.next() {
            if rest.peek().is_none() {
                samples.push((labels, sample.timestamp, sample.value));
                break;
            }
            samples.push((labels.clone(), sample.timestamp, sample.value));
        }
    }
    if !samples.is_empty() {
        let outcome = store
            .append(&samples)
            .map_err(|error| RemoteWriteError::Storage(error.to_string()))?;
        refused += outcome.rejected.len();
        problems.extend(
            outcome
                .rejected
                .iter()
                .map(|(_, error)| describe(error))
                .take(ERRORS_SHOWN),
        );
    }
    if refused == 0 {
        return Ok(());
    }
    let shown = problems.len().min(ERRORS_SHOWN);
    let mut details = problems[..shown].join("; ");
    if problems.len() > shown {
        details.push_str(&format!("; and {} more", problems.len() - shown));
    }
    Err(RemoteWriteError::Refused {
        refused,
        total,
        details,
    })
}

/// The first label name that occurs twice in `labels`, if any.
fn duplicate_label_name(labels: &[Label]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(labels.len());
    labels
        .iter()
        .map(|label| label.name.as_str())
        .find(|name| !seen.insert(*name))
}

/// The labels as sent, duplicates included: `{a="1", a="2"}`.
fn describe_labels(labels: &[Label]) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|label| format!("{}={:?}", label.name, label.value))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn describe(error: &TsdbError) -> String {
    match error {
        TsdbError::OutOfOrder { .. } => format!("out of order sample: {error}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use sightline_tsdb::AppendOutcome;

    use super::*;

    /// A sample log that keeps what it is handed, or fails like a broken
    /// disk: what remote-write stores goes through the seam and nowhere else.
    #[derive(Debug, Default)]
    struct RecordingLog {
        broken: bool,
        appended: Mutex<Vec<(Labels, i64, f64)>>,
    }

    impl SampleLog for RecordingLog {
        fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendOutcome, TsdbError> {
            if self.broken {
                return Err(TsdbError::Io {
                    path: "wal".into(),
                    source: std::io::Error::other("the disk is gone"),
                });
            }
            self.appended.lock().unwrap().extend_from_slice(samples);
            Ok(AppendOutcome {
                appended: samples.len(),
                rejected: Vec::new(),
            })
        }

        fn set_metadata(&self, _: &str, _: MetricMetadata) {}
    }

    fn request() -> WriteRequest {
        let label = |name: &str, value: &str| Label {
            name: name.into(),
            value: value.into(),
        };
        WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![label("__name__", "up"), label("job", "shop")],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1_000,
                }],
                exemplars: Vec::new(),
                histograms: Vec::new(),
            }],
            metadata: Vec::new(),
        }
    }

    #[test]
    fn samples_reach_the_sample_log_and_its_failure_acknowledges_nothing() {
        let log = RecordingLog::default();
        store_request(&log, request()).unwrap();
        let appended = log.appended.lock().unwrap().clone();
        assert_eq!(appended.len(), 1, "{appended:?}");
        assert_eq!(appended[0].0.get("job"), "shop");
        assert_eq!((appended[0].1, appended[0].2), (1_000, 1.0));

        let broken = RecordingLog {
            broken: true,
            ..RecordingLog::default()
        };
        let error = store_request(&broken, request()).unwrap_err();
        assert!(
            matches!(error, RemoteWriteError::Storage(_)),
            "a failed log must not be acknowledged: {error:?}"
        );
    }

    #[test]
    fn an_undecodable_request_names_the_message() {
        let error = decode(&[0x0a, 0xff, 0x01]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("malformed protobuf prometheus.WriteRequest"),
            "{error}"
        );
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_panic_the_decoder(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&body);
        }
    }
}
