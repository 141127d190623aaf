//! The entry encoding of the durable log: one acknowledged batch of log
//! records or spans per entry.
//!
//! An entry's payload is the batch as JSON, `{"logs":[<record>,...]}` or
//! `{"spans":[<span>,...]}`, with each record exactly
//! `serde_json::to_string(&record)`. The log store keeps that same JSON as
//! a record's stored source, so [`Batch::encode`] serializes each record
//! once for both. The encoding is part of the WAL format
//! ([`crate::wal::WAL_FORMAT_VERSION`]): changing it is a version bump.

use serde::{Deserialize, Serialize};

use crate::model::{LogRecord, Span};

/// A batch as it is written to the durable log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batch {
    Logs(Vec<LogRecord>),
    Spans(Vec<Span>),
}

/// A batch's payload and, for logs, each record's JSON (its stored source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub payload: Vec<u8>,
    /// One per record for [`Batch::Logs`], empty for spans.
    pub sources: Vec<String>,
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

    /// The batch's payload, byte for byte `serde_json::to_vec(batch)`, and
    /// for logs each record's JSON: the payload is `{"logs":[` those joined
    /// by commas `]}`.
    pub fn encode(&self) -> serde_json::Result<EncodedBatch> {
        let Batch::Logs(records) = self else {
            return Ok(EncodedBatch {
                payload: serde_json::to_vec(self)?,
                sources: Vec::new(),
            });
        };
        let sources = records
            .iter()
            .map(serde_json::to_string)
            .collect::<serde_json::Result<Vec<String>>>()?;
        let mut payload =
            Vec::with_capacity(sources.iter().map(|source| source.len() + 1).sum::<usize>() + 12);
        payload.extend_from_slice(b"{\"logs\":[");
        for (index, source) in sources.iter().enumerate() {
            if index > 0 {
                payload.push(b',');
            }
            payload.extend_from_slice(source.as_bytes());
        }
        payload.extend_from_slice(b"]}");
        Ok(EncodedBatch { payload, sources })
    }

    /// Reads a payload written by [`Batch::encode`].
    pub fn decode(payload: &[u8]) -> serde_json::Result<Batch> {
        serde_json::from_slice(payload)
    }
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
        assert_eq!(encoded.payload, serde_json::to_vec(&batch).unwrap());
        assert_eq!(encoded.sources.len(), records.len());
        for (source, record) in encoded.sources.iter().zip(&records) {
            assert_eq!(source, &serde_json::to_string(record).unwrap());
        }
        assert_eq!(Batch::decode(&encoded.payload).unwrap(), batch);
        let empty = Batch::Logs(Vec::new());
        assert_eq!(
            empty.encode().unwrap().payload,
            serde_json::to_vec(&empty).unwrap()
        );
        let spans = Batch::Spans(vec![Span::default()]);
        let encoded = spans.encode().unwrap();
        assert_eq!(encoded.payload, serde_json::to_vec(&spans).unwrap());
        assert!(encoded.sources.is_empty());
        assert_eq!(Batch::decode(&encoded.payload).unwrap(), spans);
    }

    #[test]
    fn a_payload_of_another_shape_is_an_error() {
        assert!(Batch::decode(b"{\"metrics\":[]}").is_err());
        assert!(Batch::decode(b"not json").is_err());
    }
}
