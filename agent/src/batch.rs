//! Batching: groups records from the readers into export requests, bounded
//! by record count, size and time.
//!
//! A batch keeps one group per file, so each file's resource is sent once
//! per request (one `ResourceLogs` per file) and each group carries the
//! offset to commit for its file once the collector acknowledges.
//!
//! Records travel already encoded: a reader encodes each `LogRecord` as soon
//! as it is parsed and redacted, on its own thread, so what waits in the
//! queues is the protobuf bytes (about the size of the line) rather than a
//! tree of small allocations freed on another thread, and the request is
//! assembled around those bytes without encoding them again.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::bytes::Bytes;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use crate::enrich::FileSource;

/// `ExportLogsServiceRequest.resource_logs`, `ResourceLogs.scope_logs` and
/// `ScopeLogs.log_records`: the protobuf field numbers the request is
/// assembled from.
const RESOURCE_LOGS_FIELD: u32 = 1;
const RESOURCE_FIELD: u32 = 1;
const SCOPE_LOGS_FIELD: u32 = 2;
const SCOPE_FIELD: u32 = 1;
const LOG_RECORDS_FIELD: u32 = 2;

/// Records encoded back to back as `ScopeLogs.log_records` fields (each
/// with its tag and length), with the end of each and the file offset to
/// commit once it is acknowledged.
#[derive(Debug, Default)]
pub(crate) struct EncodedRecords {
    bytes: Vec<u8>,
    /// `(end in bytes, offset to commit)` of each record, in order.
    ends: Vec<(usize, u64)>,
}

/// One encoded record of [`EncodedRecords`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncodedRecord<'a> {
    /// The `log_records` field: tag, length and the `LogRecord` message.
    pub(crate) bytes: &'a [u8],
    pub(crate) commit_offset: u64,
}

impl EncodedRecords {
    /// Room for about `bytes` of encoded records.
    pub(crate) fn with_capacity(bytes: usize) -> EncodedRecords {
        EncodedRecords {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(bytes / 256 + 1),
        }
    }

    pub(crate) fn push(&mut self, record: &LogRecord, commit_offset: u64) {
        prost::encoding::message::encode(LOG_RECORDS_FIELD, record, &mut self.bytes);
        self.ends.push((self.bytes.len(), commit_offset));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = EncodedRecord<'_>> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|(end, _)| *end));
        starts
            .zip(&self.ends)
            .map(|(start, (end, commit_offset))| EncodedRecord {
                bytes: &self.bytes[start..*end],
                commit_offset: *commit_offset,
            })
    }
}

impl EncodedRecord<'_> {
    /// The record, decoded again (tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn decode(&self) -> LogRecord {
        let mut bytes = self.bytes;
        let (tag, _) = prost::encoding::decode_key(&mut bytes).expect("a field key");
        assert_eq!(tag, LOG_RECORDS_FIELD);
        let length = prost::encoding::decode_varint(&mut bytes).expect("a length");
        assert_eq!(length as usize, bytes.len());
        <LogRecord as prost::Message>::decode(bytes).expect("an encoded LogRecord")
    }
}

/// What a reader sends after one read: the records of one file, in order.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) source: Arc<FileSource>,
    pub(crate) records: EncodedRecords,
    /// Offset safe to commit once every record of the chunk (and before)
    /// is acknowledged; covers lines that made no record (dropped).
    pub(crate) commit_offset: u64,
    /// Memory budget held by the chunk's bytes until acknowledged.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// When the bytes were read (Unix ns).
    pub(crate) read_unix_nanos: u64,
}

/// Records of one file inside a batch.
#[derive(Debug)]
pub(crate) struct FileRecords {
    pub(crate) source: Arc<FileSource>,
    /// The file's records, encoded as `ScopeLogs.log_records` fields.
    records: Vec<u8>,
    record_count: usize,
    /// Offset to commit for the file once the batch is acknowledged.
    pub(crate) commit_offset: u64,
}

impl FileRecords {
    #[cfg(test)]
    pub(crate) fn record_count(&self) -> usize {
        self.record_count
    }
}

/// A batch ready for the sink.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) files: Vec<FileRecords>,
    record_count: usize,
    /// Encoded bytes of the records held.
    bytes: usize,
    /// Memory budget released when the batch is done with.
    permit: Option<OwnedSemaphorePermit>,
    /// Read time of the oldest bytes in the batch (Unix ns, 0 if none).
    pub(crate) oldest_read_unix_nanos: u64,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub(crate) max_records: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_wait: Duration,
}

impl Batch {
    pub(crate) fn record_count(&self) -> usize {
        self.record_count
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn group(&mut self, source: &Arc<FileSource>, read_unix_nanos: u64) -> &mut FileRecords {
        if self.oldest_read_unix_nanos == 0 {
            self.oldest_read_unix_nanos = read_unix_nanos;
        }
        // Records of one file usually arrive together: look from the end.
        // Compare the sources, not keys: a file replaced under the same
        // inode gets a new source, and its offsets must not mix.
        let index = self
            .files
            .iter()
            .rposition(|group| Arc::ptr_eq(&group.source, source));
        let index = match index {
            Some(index) => index,
            None => {
                self.files.push(FileRecords {
                    source: Arc::clone(source),
                    records: Vec::new(),
                    record_count: 0,
                    commit_offset: 0,
                });
                self.files.len() - 1
            }
        };
        &mut self.files[index]
    }

    fn push(&mut self, source: &Arc<FileSource>, record: EncodedRecord<'_>, read_unix_nanos: u64) {
        self.record_count += 1;
        self.bytes += record.bytes.len();
        let group = self.group(source, read_unix_nanos);
        group.records.extend_from_slice(record.bytes);
        group.record_count += 1;
        group.commit_offset = group.commit_offset.max(record.commit_offset);
    }

    /// Applies a chunk-level commit offset (after its records).
    fn commit_to(&mut self, source: &Arc<FileSource>, offset: u64, read_unix_nanos: u64) {
        let group = self.group(source, read_unix_nanos);
        group.commit_offset = group.commit_offset.max(offset);
    }

    fn hold(&mut self, permit: Option<OwnedSemaphorePermit>) {
        match (&mut self.permit, permit) {
            (Some(held), Some(permit)) => held.merge(permit),
            (held @ None, permit) => *held = permit,
            (Some(_), None) => {}
        }
    }

    /// The encoded `ExportLogsServiceRequest`: one `ResourceLogs` per file
    /// around the records' bytes, which move out of the batch; the batch
    /// keeps what is needed to commit offsets.
    pub(crate) fn take_request(&mut self) -> Bytes {
        let scope = InstrumentationScope {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        let scope_len = prost::encoding::message::encoded_len(SCOPE_FIELD, &scope);
        let mut out = Vec::with_capacity(self.bytes + 256 * self.files.len());
        for group in &mut self.files {
            if group.records.is_empty() {
                continue;
            }
            let records = std::mem::take(&mut group.records);
            let scope_logs_len = scope_len + records.len();
            let resource_logs_len =
                prost::encoding::message::encoded_len(RESOURCE_FIELD, &group.source.resource)
                    + length_delimited_len(SCOPE_LOGS_FIELD, scope_logs_len);
            encode_key(RESOURCE_LOGS_FIELD, WireType::LengthDelimited, &mut out);
            encode_varint(resource_logs_len as u64, &mut out);
            prost::encoding::message::encode(RESOURCE_FIELD, &group.source.resource, &mut out);
            encode_key(SCOPE_LOGS_FIELD, WireType::LengthDelimited, &mut out);
            encode_varint(scope_logs_len as u64, &mut out);
            prost::encoding::message::encode(SCOPE_FIELD, &scope, &mut out);
            out.extend_from_slice(&records);
        }
        Bytes::from(out)
    }
}

/// Encoded length of a length-delimited field of `len` bytes.
fn length_delimited_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Runs until every reader has hung up, then flushes what is left.
pub(crate) async fn run_batcher(
    mut input: mpsc::Receiver<Chunk>,
    output: mpsc::Sender<Batch>,
    limits: BatchLimits,
) {
    let mut batch = Batch::default();
    let mut flush_at: Option<Instant> = None;
    loop {
        let chunk = match flush_at {
            Some(deadline) => tokio::select! {
                biased;
                chunk = input.recv() => chunk,
                () = tokio::time::sleep_until(deadline) => {
                    flush_at = None;
                    if output.send(std::mem::take(&mut batch)).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
            None => input.recv().await,
        };
        let Some(chunk) = chunk else { break };
        let Chunk {
            source,
            records,
            commit_offset,
            permit,
            read_unix_nanos,
        } = chunk;
        for record in records.iter() {
            batch.push(&source, record, read_unix_nanos);
            if batch.record_count >= limits.max_records || batch.bytes >= limits.max_bytes {
                flush_at = None;
                if output.send(std::mem::take(&mut batch)).await.is_err() {
                    return;
                }
            }
        }
        batch.commit_to(&source, commit_offset, read_unix_nanos);
        // The budget of the whole chunk is freed with the batch that
        // carries its last record: that one acknowledges all of it.
        batch.hold(permit);
        if !batch.is_empty() && flush_at.is_none() {
            flush_at = Some(Instant::now() + limits.max_wait);
        }
    }
    if !batch.is_empty() {
        let _ = output.send(batch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::FileKey;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use prost::Message;
    use std::path::PathBuf;

    fn source(inode: u64) -> Arc<FileSource> {
        Arc::new(FileSource::plain(
            FileKey { dev: 1, inode },
            PathBuf::from(format!("/logs/{inode}.log")),
            "h",
        ))
    }

    fn chunk(source: &Arc<FileSource>, offsets: &[u64]) -> Chunk {
        Chunk {
            source: Arc::clone(source),
            records: records(offsets),
            commit_offset: offsets.last().copied().unwrap_or(0),
            permit: None,
            read_unix_nanos: 1,
        }
    }

    /// A record per offset, its body the offset.
    fn records(offsets: &[u64]) -> EncodedRecords {
        let mut records = EncodedRecords::default();
        for offset in offsets {
            let record = LogRecord {
                body: Some(crate::otlp::string_value(offset.to_string())),
                ..Default::default()
            };
            records.push(&record, *offset);
        }
        records
    }

    fn bodies(request: &ExportLogsServiceRequest) -> Vec<Vec<String>> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        request
            .resource_logs
            .iter()
            .map(|resource| {
                resource.scope_logs[0]
                    .log_records
                    .iter()
                    .map(
                        |record| match record.body.as_ref().and_then(|b| b.value.as_ref()) {
                            Some(Value::StringValue(text)) => text.clone(),
                            other => format!("{other:?}"),
                        },
                    )
                    .collect()
            })
            .collect()
    }

    #[test]
    fn encoded_records_keep_each_record_and_its_offset() {
        let records = records(&[3, 7, 11]);
        assert_eq!(records.len(), 3);
        let decoded: Vec<(String, u64)> = records
            .iter()
            .map(|record| {
                let body = match record.decode().body.and_then(|b| b.value) {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(text),
                    ) => text,
                    other => format!("{other:?}"),
                };
                (body, record.commit_offset)
            })
            .collect();
        assert_eq!(
            decoded,
            [("3".into(), 3), ("7".into(), 7), ("11".into(), 11)]
        );
        assert!(EncodedRecords::default().iter().next().is_none());
    }

    #[tokio::test]
    async fn splits_by_count_and_groups_by_file() {
        let (chunk_tx, chunk_rx) = mpsc::channel(8);
        let (batch_tx, mut batch_rx) = mpsc::channel(8);
        let limits = BatchLimits {
            max_records: 3,
            max_bytes: usize::MAX,
            max_wait: Duration::from_secs(3600),
        };
        let batcher = tokio::spawn(run_batcher(chunk_rx, batch_tx, limits));
        let (a, b) = (source(1), source(2));
        chunk_tx.send(chunk(&a, &[10, 20])).await.unwrap();
        chunk_tx.send(chunk(&b, &[5, 6])).await.unwrap();
        drop(chunk_tx);

        let mut first = batch_rx.recv().await.unwrap();
        let groups: Vec<(u64, usize, u64)> = first
            .files
            .iter()
            .map(|g| (g.source.key.inode, g.record_count(), g.commit_offset))
            .collect();
        assert_eq!(groups, [(1, 2, 20), (2, 1, 5)]);
        // The assembled bytes decode as the request OTLP defines.
        let request = ExportLogsServiceRequest::decode(first.take_request()).unwrap();
        assert_eq!(bodies(&request), [vec!["10", "20"], vec!["5"]]);
        assert_eq!(
            request.resource_logs[0].scope_logs[0]
                .scope
                .as_ref()
                .unwrap()
                .name,
            "sightline-agent"
        );
        assert_eq!(request.resource_logs.len(), 2);
        assert_eq!(
            request.resource_logs[0]
                .resource
                .as_ref()
                .unwrap()
                .attributes
                .len(),
            3
        );

        let mut rest = batch_rx.recv().await.unwrap();
        assert_eq!(rest.record_count(), 1);
        assert_eq!(rest.files[0].commit_offset, 6);
        let request = ExportLogsServiceRequest::decode(rest.take_request()).unwrap();
        assert_eq!(bodies(&request), [vec!["6"]]);
        assert!(batch_rx.recv().await.is_none());
        batcher.await.unwrap();
    }

    #[tokio::test]
    async fn splits_by_encoded_bytes() {
        let (chunk_tx, chunk_rx) = mpsc::channel(8);
        let (batch_tx, mut batch_rx) = mpsc::channel(8);
        let one = records(&[10]).iter().next().unwrap().bytes.len();
        let limits = BatchLimits {
            max_records: usize::MAX,
            max_bytes: 2 * one,
            max_wait: Duration::from_secs(3600),
        };
        tokio::spawn(run_batcher(chunk_rx, batch_tx, limits));
        chunk_tx
            .send(chunk(&source(1), &[10, 11, 12, 13, 14]))
            .await
            .unwrap();
        drop(chunk_tx);
        let mut sizes = Vec::new();
        while let Some(mut batch) = batch_rx.recv().await {
            let request = ExportLogsServiceRequest::decode(batch.take_request()).unwrap();
            sizes.push(bodies(&request).concat());
        }
        assert_eq!(sizes, [vec!["10", "11"], vec!["12", "13"], vec!["14"]]);
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_after_max_wait() {
        let (chunk_tx, chunk_rx) = mpsc::channel(8);
        let (batch_tx, mut batch_rx) = mpsc::channel(8);
        let limits = BatchLimits {
            max_records: 1000,
            max_bytes: usize::MAX,
            max_wait: Duration::from_millis(200),
        };
        tokio::spawn(run_batcher(chunk_rx, batch_tx, limits));
        chunk_tx.send(chunk(&source(1), &[1])).await.unwrap();
        // The reader stays connected: only the timer can flush this batch.
        let batch = batch_rx.recv().await.unwrap();
        assert_eq!(batch.record_count(), 1);
        drop(chunk_tx);
    }
}
