//! The entry encoding of the durable log: one acknowledged batch of log
//! records or spans per entry.
//!
//! An entry's payload is the batch as JSON, `{"logs":[<record>,...]}` or
//! `{"spans":[<span>,...]}`, with each record exactly
//! `serde_json::to_string(&record)` (or span). The log and span stores keep
//! that same JSON as a record's or span's stored source, so
//! [`Batch::encode`] serializes each once for both. The encoding is part of the WAL format
//! ([`crate::wal::WAL_FORMAT_VERSION`]): changing it is a version bump.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::model::{LogRecord, Span};

/// A batch as it is written to the durable log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batch {
    Logs(Vec<LogRecord>),
    Spans(Vec<Span>),
}

/// A batch's payload and where each record's or span's JSON (its stored
/// source) is in it: one buffer for the whole batch, not one per record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedBatch {
    pub payload: String,
    /// The byte range of each record or span in `payload`, in the batch's
    /// order.
    pub source_ranges: Vec<Range<usize>>,
}

impl EncodedBatch {
    /// Each record's or span's JSON, in the batch's order.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.source_ranges
            .iter()
            .map(|range| &self.payload[range.clone()])
    }
}

impl Batch {
    /// Records or spans in the batch.
    pub fn len(&self) -> usize {
        match self {
            Batch::Logs(records) => records.len(),
            Batch::Spans(spans) => spans.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch's payload, byte for byte `serde_json::to_string(batch)`, and
    /// each record's or span's JSON: the payload is `{"logs":[` (or
    /// `{"spans":[`) those joined by commas `]}`.
    pub fn encode(&self) -> serde_json::Result<EncodedBatch> {
        match self {
            Batch::Logs(records) => encode_items("logs", records),
            Batch::Spans(spans) => encode_items("spans", spans),
        }
    }

    /// Reads a payload written by [`Batch::encode`].
    pub fn decode(payload: &[u8]) -> serde_json::Result<Batch> {
        serde_json::from_slice(payload)
    }
}

/// Serializes each item once, straight into the payload of a batch of
/// `kind`, and notes where each one is.
fn encode_items<T: Serialize>(kind: &str, items: &[T]) -> serde_json::Result<EncodedBatch> {
    let mut payload = Vec::with_capacity(items.len() * 256 + kind.len() + 8);
    let mut source_ranges = Vec::with_capacity(items.len());
    payload.extend_from_slice(b"{\"");
    payload.extend_from_slice(kind.as_bytes());
    payload.extend_from_slice(b"\":[");
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            payload.push(b',');
        }
        let start = payload.len();
        serde_json::to_writer(&mut payload, item)?;
        source_ranges.push(start..payload.len());
    }
    payload.extend_from_slice(b"]}");
    // serde_json writes UTF-8; checked once for the whole batch.
    let payload = String::from_utf8(payload).map_err(serde::ser::Error::custom)?;
    Ok(EncodedBatch {
        payload,
        source_ranges,
    })
}

/// Each item's JSON, exactly as [`Batch::encode`] writes it, for a store's
/// `add` that is given only the items (tests, tools): its `add_encoded`
/// takes the sources from [`EncodedBatch::sources`].
pub(crate) fn item_sources<T: Serialize>(items: &[T]) -> EncodedBatch {
    // Records and spans (strings, numbers and JSON maps) always serialize.
    encode_items("items", items).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &str) -> LogRecord {
        LogRecord {
            timestamp: 1_700_000_000_000_000_000,
            body: body.into(),
            service: "test".into(),
            ..LogRecord::default()
        }
    }

    #[test]
    fn the_payload_is_the_batch_serialized_and_sources_are_its_records() {
        let mut odd = record("quotes \" and \\ and \u{1f600} and \n");
        odd.attributes
            .insert("http.status".into(), serde_json::json!(503));
        odd.request_id = Some("req-1".into());
        let records = vec![record("first"), odd, record("")];
        let batch = Batch::Logs(records.clone());
        let encoded = batch.encode().unwrap();
        assert_eq!(encoded.payload, serde_json::to_string(&batch).unwrap());
        assert_eq!(encoded.sources().count(), records.len());
        for (source, record) in encoded.sources().zip(&records) {
            assert_eq!(source, serde_json::to_string(record).unwrap());
        }
        assert_eq!(Batch::decode(encoded.payload.as_bytes()).unwrap(), batch);
        let empty = Batch::Logs(Vec::new());
        assert_eq!(
            empty.encode().unwrap().payload,
            serde_json::to_string(&empty).unwrap()
        );
        let mut linked = Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            name: "GET /x \"y\"".into(),
            ..Span::default()
        };
        linked.attributes.insert("n".into(), serde_json::json!(1.5));
        let spans = Batch::Spans(vec![Span::default(), linked.clone()]);
        let encoded = spans.encode().unwrap();
        assert_eq!(encoded.payload, serde_json::to_string(&spans).unwrap());
        assert_eq!(
            encoded.sources().collect::<Vec<_>>(),
            [
                serde_json::to_string(&Span::default()).unwrap(),
                serde_json::to_string(&linked).unwrap()
            ]
        );
        assert_eq!(Batch::decode(encoded.payload.as_bytes()).unwrap(), spans);
        let empty = Batch::Spans(Vec::new());
        assert_eq!(
            empty.encode().unwrap().payload,
            serde_json::to_string(&empty).unwrap()
        );
    }

    #[test]
    fn a_payload_of_another_shape_is_an_error() {
        assert!(Batch::decode(b"{\"metrics\":[]}").is_err());
        assert!(Batch::decode(b"not json").is_err());
    }
}
