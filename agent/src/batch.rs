//! Batching: groups records from the readers into export requests, bounded
//! by record count, approximate size and time.
//!
//! A batch keeps one group per file, so each file's resource is sent once
//! per request (one `ResourceLogs` per file) and each group carries the
//! offset to commit for its file once the collector acknowledges.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use crate::enrich::FileSource;

/// A record on its way to the batcher.
#[derive(Debug)]
pub(crate) struct PendingRecord {
    pub(crate) record: LogRecord,
    /// File offset to commit once this record is acknowledged.
    pub(crate) commit_offset: u64,
    /// Approximate encoded size, to bound batch bytes cheaply.
    pub(crate) size_hint: usize,
}

/// What a reader sends after one read: the records of one file, in order.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) source: Arc<FileSource>,
    pub(crate) records: Vec<PendingRecord>,
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
    pub(crate) records: Vec<LogRecord>,
    /// Offset to commit for the file once the batch is acknowledged.
    pub(crate) commit_offset: u64,
}

/// A batch ready for the sink.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) files: Vec<FileRecords>,
    record_count: usize,
    size_hint: usize,
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
                    commit_offset: 0,
                });
                self.files.len() - 1
            }
        };
        &mut self.files[index]
    }

    fn push(&mut self, source: &Arc<FileSource>, pending: PendingRecord, read_unix_nanos: u64) {
        self.record_count += 1;
        self.size_hint += pending.size_hint;
        let group = self.group(source, read_unix_nanos);
        group.records.push(pending.record);
        group.commit_offset = group.commit_offset.max(pending.commit_offset);
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

    /// Moves the records out into the OTLP request (one `ResourceLogs` per
    /// file); the batch keeps what is needed to commit offsets.
    pub(crate) fn take_request(&mut self) -> ExportLogsServiceRequest {
        let scope = InstrumentationScope {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        let resource_logs = self
            .files
            .iter_mut()
            .filter(|group| !group.records.is_empty())
            .map(|group| ResourceLogs {
                resource: Some(group.source.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: std::mem::take(&mut group.records),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect();
        ExportLogsServiceRequest { resource_logs }
    }
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
        for pending in records {
            batch.push(&source, pending, read_unix_nanos);
            if batch.record_count >= limits.max_records || batch.size_hint >= limits.max_bytes {
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

    fn records(offsets: &[u64]) -> Vec<PendingRecord> {
        offsets
            .iter()
            .map(|offset| PendingRecord {
                record: LogRecord::default(),
                commit_offset: *offset,
                size_hint: 10,
            })
            .collect()
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
            .map(|g| (g.source.key.inode, g.records.len(), g.commit_offset))
            .collect();
        assert_eq!(groups, [(1, 2, 20), (2, 1, 5)]);
        let request = first.take_request();
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

        let rest = batch_rx.recv().await.unwrap();
        assert_eq!(rest.record_count(), 1);
        assert_eq!(rest.files[0].commit_offset, 6);
        assert!(batch_rx.recv().await.is_none());
        batcher.await.unwrap();
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
