//! The file reader: one task per file, from open to rotation or removal.
//!
//! It reads appended bytes, splits them into lines, decodes and parses
//! them and sends the records, one chunk per read, into a bounded queue;
//! when the queue is full the reader waits, so a slow collector slows
//! reading instead of growing memory. The file itself is the buffer.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::batch::{Chunk, PendingRecord};
use crate::checkpoint::{CheckpointStore, FileKey};
use crate::decode::CriDecoder;
use crate::enrich::FileSource;
use crate::lines::{Line, LineSplitter};
use crate::metrics::Metrics;
use crate::parse::parse_entry;
use crate::shutdown::Shutdown;

/// Fixed per-record overhead added to the message length for batch sizing.
const RECORD_OVERHEAD_BYTES: usize = 96;

/// Everything a reader needs, shared by all readers.
#[derive(Debug, Clone)]
pub(crate) struct TailContext {
    pub(crate) output: mpsc::Sender<Chunk>,
    pub(crate) checkpoints: CheckpointStore,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: Shutdown,
    pub(crate) host_name: Arc<str>,
    pub(crate) read_from_start: bool,
    pub(crate) poll_interval: Duration,
    pub(crate) read_buffer_bytes: usize,
    pub(crate) max_line_bytes: usize,
}

/// Counts the file in `files_watched` while alive.
struct WatchedGuard(Arc<Metrics>);

impl Drop for WatchedGuard {
    fn drop(&mut self) {
        self.0.add_files_watched(-1);
    }
}

/// Tails `path` until it is rotated away or removed, a read fails, or
/// shutdown is requested.
pub(crate) async fn tail_file(path: PathBuf, context: TailContext) {
    if let Err(error) = tail(&path, &context).await {
        context.metrics.add_read_error();
        warn!(path = %path.display(), %error, "stopped tailing file");
    }
}

async fn tail(path: &std::path::Path, context: &TailContext) -> std::io::Result<()> {
    let mut file = File::open(path).await?;
    let metadata = file.metadata().await?;
    let key = FileKey::of(&metadata);
    let size = metadata.len();
    let start = match context.checkpoints.resume_offset(key, size) {
        Some(offset) => offset,
        None if context.read_from_start => 0,
        None => size,
    };
    file.seek(SeekFrom::Start(start)).await?;
    context.metrics.add_files_watched(1);
    let _watched = WatchedGuard(Arc::clone(&context.metrics));
    info!(path = %path.display(), offset = start, size, "tailing file");

    let source = Arc::new(FileSource::new(key, path.to_owned(), &context.host_name));
    let mut reader = Reader {
        source,
        splitter: LineSplitter::new(start, context.max_line_bytes),
        decoder: CriDecoder::new(context.max_line_bytes),
        offset: start,
    };
    let mut buffer = vec![0u8; context.read_buffer_bytes];
    let mut shutdown = context.shutdown.clone();
    let mut moved_away = false;

    while !shutdown.is_triggered() {
        let read = file.read(&mut buffer).await?;
        if read > 0 {
            let chunk = reader.process(&buffer[..read], &context.metrics);
            if !chunk.records.is_empty() && context.output.send(chunk).await.is_err() {
                return Ok(());
            }
            continue;
        }

        // At end of file: was it truncated, rotated away or removed?
        let current_size = file.metadata().await?.len();
        if current_size < reader.offset {
            warn!(path = %path.display(), offset = reader.offset, size = current_size, "file truncated, reading from start");
            file.seek(SeekFrom::Start(0)).await?;
            reader.restart_at(0);
            continue;
        }
        if moved_away {
            // Drained after the move was seen: emit a last unterminated line.
            let chunk = reader.finish(&context.metrics);
            if !chunk.records.is_empty() {
                let _ = context.output.send(chunk).await;
            }
            info!(path = %path.display(), offset = reader.offset, "file rotated or removed, done");
            return Ok(());
        }
        let still_ours = tokio::fs::metadata(path)
            .await
            .is_ok_and(|now| FileKey::of(&now) == key);
        if !still_ours {
            // Read once more: the writer may have appended before moving on.
            moved_away = true;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(context.poll_interval) => {}
            () = shutdown.triggered() => {}
        }
    }
    debug!(path = %path.display(), offset = reader.offset, "reader stopped");
    Ok(())
}

/// Per-file decoding state.
struct Reader {
    source: Arc<FileSource>,
    splitter: LineSplitter,
    decoder: CriDecoder,
    /// Offset of the next byte to read.
    offset: u64,
}

impl Reader {
    /// Turns freshly read bytes into a chunk of records.
    fn process(&mut self, bytes: &[u8], metrics: &Metrics) -> Chunk {
        self.offset += bytes.len() as u64;
        let observed = now_unix_nanos();
        let mut records = Vec::new();
        let mut lines = 0u64;
        let decoder = &mut self.decoder;
        self.splitter.push(bytes, |line| {
            lines += 1;
            decode_line(decoder, line, observed, &mut records);
        });
        metrics.add_read(lines, bytes.len() as u64);
        Chunk {
            source: Arc::clone(&self.source),
            records,
        }
    }

    /// Emits the held unterminated line, if any.
    fn finish(&mut self, metrics: &Metrics) -> Chunk {
        let observed = now_unix_nanos();
        let mut records = Vec::new();
        let mut lines = 0u64;
        let decoder = &mut self.decoder;
        self.splitter.flush_held(|line| {
            lines += 1;
            decode_line(decoder, line, observed, &mut records);
        });
        metrics.add_read(lines, 0);
        Chunk {
            source: Arc::clone(&self.source),
            records,
        }
    }

    fn restart_at(&mut self, offset: u64) {
        self.offset = offset;
        self.splitter.reset(offset);
        self.decoder.reset();
    }
}

fn decode_line(
    decoder: &mut CriDecoder,
    line: Line<'_>,
    observed: u64,
    records: &mut Vec<PendingRecord>,
) {
    if let Some(entry) = decoder.decode(line.bytes, line.start, line.end) {
        let commit_offset = entry.commit_offset;
        let size_hint = entry.message.len() + RECORD_OVERHEAD_BYTES;
        records.push(PendingRecord {
            record: parse_entry(entry, observed),
            commit_offset,
            size_hint,
        });
    }
}

/// Wall-clock time in Unix nanoseconds (0 if the clock is before 1970).
pub(crate) fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    fn body(pending: &PendingRecord) -> String {
        match pending
            .record
            .body
            .as_ref()
            .and_then(|body| body.value.as_ref())
        {
            Some(Value::StringValue(text)) => text.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn reader_holds_partial_lines_and_tracks_offsets() {
        let source = Arc::new(FileSource::new(
            FileKey { dev: 1, inode: 1 },
            PathBuf::from("/x/app.log"),
            "h",
        ));
        let metrics = Metrics::default();
        let mut reader = Reader {
            source,
            splitter: LineSplitter::new(0, 1024),
            decoder: CriDecoder::new(1024),
            offset: 0,
        };

        let first = reader.process(
            b"2026-11-21T05:48:48Z stdout F one\n2026-11-21T05:48:48Z stdout P tw",
            &metrics,
        );
        assert_eq!(first.records.iter().map(body).collect::<Vec<_>>(), ["one"]);
        assert_eq!(first.records[0].commit_offset, 34);

        let second = reader.process(b"o\n2026-11-21T05:48:48Z stdout F !\nplain", &metrics);
        assert_eq!(
            second.records.iter().map(body).collect::<Vec<_>>(),
            ["two!"]
        );
        assert_eq!(second.records[0].commit_offset, 100);

        let last = reader.finish(&metrics);
        assert_eq!(last.records.iter().map(body).collect::<Vec<_>>(), ["plain"]);
        assert_eq!(last.records[0].commit_offset, 105);
        assert_eq!(reader.offset, 105);
    }
}
