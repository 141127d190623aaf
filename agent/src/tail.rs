//! The file reader: one task per file, from open to rotation or removal.
//!
//! At open the file's identity is `(device, inode)` plus a fingerprint of
//! its first bytes; a stored offset is used only if it fits (see
//! [`crate::checkpoint::CheckpointStore::resume`]). Each read takes bytes
//! of the global memory budget (the permit travels with the records until
//! the collector acknowledges them), then reads, splits, decodes, joins,
//! filters, parses and redacts on the blocking pool, at most
//! `reader_threads` files at a time, and sends one chunk of records into a
//! bounded queue. When the budget or the queue is full the reader waits:
//! the file itself is the buffer.
//!
//! At end of file the reader checks for truncation (size below the offset,
//! or different first bytes: copytruncate), flushes held partial lines and
//! multiline records after their timeouts, and notices when its path no
//! longer leads to its file (rename rotation or removal). It then keeps
//! its descriptor, follows the new name for the checkpoint, reads to the
//! end and waits `rotate_wait` for late writes before it lets go.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::batch::{Chunk, PendingRecord};
use crate::checkpoint::{
    CheckpointStore, FINGERPRINT_BYTES, FileKey, Fingerprint, ResetReason, Resume,
};
use crate::config::Tuning;
use crate::decode::{Decoder, Entry};
use crate::enrich::{ContainerInfo, FileSource};
use crate::lines::LineSplitter;
use crate::metrics::{DropReason, Metrics};
use crate::multiline::Multiline;
use crate::otlp;
use crate::parse::parse_entry_with;
use crate::rules::{FilePlan, Rules};
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
    pub(crate) tuning: Arc<Tuning>,
    pub(crate) multiline_flush: std::time::Duration,
    pub(crate) rules: watch::Receiver<Arc<Rules>>,
    /// Bytes read and not yet acknowledged, across all files.
    pub(crate) budget: Arc<Semaphore>,
    /// Files decoded at the same time.
    pub(crate) decode_slots: Arc<Semaphore>,
}

/// Why a reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TailEnd {
    /// Rotated away or removed and read to the end, shutdown, or an error.
    Done,
    /// A filter excludes the file's container.
    Excluded,
}

/// Counts the file in `files_watched` while alive.
struct WatchedGuard(Arc<Metrics>);

impl Drop for WatchedGuard {
    fn drop(&mut self) {
        self.0.add_files_watched(-1);
    }
}

/// Tails `path` until it is rotated away or removed (and read to the end),
/// a read fails, or shutdown is requested. With `follow == false` (a
/// rotated file resumed after a restart) it stops at the end of the file.
pub(crate) async fn tail_file(path: PathBuf, follow: bool, context: TailContext) -> TailEnd {
    match tail(&path, follow, &context).await {
        Ok(end) => end,
        Err(error) => {
            context.metrics.add_read_error();
            warn!(path = %path.display(), %error, "stopped tailing file");
            TailEnd::Done
        }
    }
}

/// A file opened on the blocking pool.
struct Opened {
    file: std::fs::File,
    key: FileKey,
    size: u64,
    head: Vec<u8>,
    container: ContainerInfo,
}

fn open(path: &Path) -> std::io::Result<Opened> {
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    let size = metadata.len();
    let head = read_head(&file, size)?;
    Ok(Opened {
        file,
        key: FileKey::of(&metadata),
        size,
        head,
        container: ContainerInfo::detect(path),
    })
}

/// The first `min(size, 256)` bytes of the file.
fn read_head(file: &std::fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    let wanted = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .min(FINGERPRINT_BYTES);
    let mut head = vec![0u8; wanted];
    let mut filled = 0;
    while filled < wanted {
        let read = file.read_at(&mut head[filled..], filled as u64)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    head.truncate(filled);
    Ok(head)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)
}

async fn tail(path: &Path, follow: bool, context: &TailContext) -> std::io::Result<TailEnd> {
    let opened = {
        let path = path.to_owned();
        blocking(move || open(&path)).await??
    };
    let Opened {
        file,
        key,
        size,
        head,
        container,
    } = opened;
    let mut rules_rx = context.rules.clone();
    let rules = Arc::clone(&rules_rx.borrow_and_update());
    let Some(plan) = rules.plan(path, &container) else {
        context.metrics.add_file_excluded();
        info!(path = %path.display(), "file excluded by filters");
        return Ok(TailEnd::Excluded);
    };
    let start = match context.checkpoints.resume(key, size, &head) {
        Resume::At(offset) => offset,
        Resume::Fresh if follow && !context.read_from_start => size,
        Resume::Fresh => 0,
        Resume::Reset(reason) => {
            context.metrics.add_checkpoint_reset(reason);
            warn!(path = %path.display(), ?reason, size, "checkpoint does not fit the file, reading from start");
            0
        }
    };

    let source = Arc::new(FileSource::new(
        key,
        path.to_owned(),
        container,
        &context.host_name,
        &rules.resource,
    ));
    source.stats.set_fingerprint(Fingerprint::of(&head));
    source.stats.set_size(size);
    context.metrics.track_file(&source.stats);
    context.checkpoints.register(&source);
    context.metrics.add_files_watched(1);
    let _watched = WatchedGuard(Arc::clone(&context.metrics));
    info!(path = %path.display(), offset = start, size, follow, "tailing file");

    let tuning = &context.tuning;
    let mut reader = Some(FileReader::new(
        file,
        Arc::clone(&source),
        plan,
        &rules,
        head,
        start,
        tuning,
        Arc::clone(&context.metrics),
    ));
    let mut shutdown = context.shutdown.clone();
    let mut last_growth = Instant::now();
    let mut last_size = size;
    let mut moved_away = false;

    while !shutdown.is_triggered() {
        if rules_rx.has_changed().unwrap_or(false) {
            let rules = Arc::clone(&rules_rx.borrow_and_update());
            let Some(reader) = reader.as_mut() else {
                break;
            };
            match rules.plan(path, &source.container) {
                Some(plan) => reader.set_rules(plan, &rules),
                None => {
                    info!(path = %path.display(), "file excluded after reload");
                    context.metrics.add_file_excluded();
                    return Ok(TailEnd::Excluded);
                }
            }
        }

        let Some(permit) = take_budget(context, &mut shutdown).await else {
            break;
        };
        let Ok(slot) = Arc::clone(&context.decode_slots).acquire_owned().await else {
            break;
        };
        let Some(mut owned) = reader.take() else {
            break;
        };
        let (owned, step) = blocking(move || {
            let step = owned.step(permit);
            (owned, step)
        })
        .await?;
        drop(slot);
        let step = step?;
        let reader_ref = reader.insert(owned);

        match step {
            Step::Data(chunk) => {
                last_growth = Instant::now();
                if !send(context, &mut shutdown, chunk).await {
                    break;
                }
                continue;
            }
            Step::Replaced { size, reason } => {
                // Bytes we had not read when the file was cut are gone.
                let lost = last_size.saturating_sub(reader_ref.offset);
                context.metrics.add_bytes_lost(lost);
                context.metrics.add_checkpoint_reset(reason);
                warn!(path = %path.display(), offset = reader_ref.offset, size, ?reason, lost, "file truncated or replaced, reading from start");
                reader_ref.restart();
                last_size = size;
                continue;
            }
            Step::Eof { size } => {
                last_size = size;
                source.stats.set_size(size);
                context.checkpoints.observe_size(key, size);
                if size > reader_ref.offset {
                    continue;
                }
            }
        }

        // Idle at end of file.
        let idle = last_growth.elapsed();
        let reader_ref = reader.as_mut().expect("reader is put back after each step");
        if idle >= context.multiline_flush || idle >= tuning.partial_flush_timeout {
            let everything = idle >= tuning.partial_flush_timeout;
            if let Some(chunk) = reader_ref.flush(everything)
                && !send(context, &mut shutdown, chunk).await
            {
                break;
            }
        }
        if !moved_away {
            let still_ours = tokio::fs::metadata(path)
                .await
                .is_ok_and(|now| FileKey::of(&now) == key);
            if !still_ours {
                moved_away = true;
                let found = {
                    let path = path.to_owned();
                    blocking(move || find_by_key(&path, key)).await?
                };
                match found {
                    Some(new_path) => {
                        info!(path = %path.display(), new_path = %new_path.display(), "file rotated, reading it to the end");
                        source.set_current_path(&new_path);
                        context.checkpoints.relocate(key, &new_path);
                    }
                    None => {
                        info!(path = %path.display(), "file removed, reading it to the end");
                    }
                }
                // Read once more: the writer may have appended before moving on.
                continue;
            }
        }
        if !follow || (moved_away && idle >= tuning.rotate_wait) {
            if let Some(chunk) = reader_ref.flush(true) {
                send(context, &mut shutdown, chunk).await;
            }
            info!(path = %path.display(), offset = reader_ref.offset, "file done");
            return Ok(TailEnd::Done);
        }
        tokio::select! {
            () = tokio::time::sleep(tuning.poll_interval) => {}
            () = shutdown.triggered() => {}
        }
    }
    debug!(path = %path.display(), "reader stopped");
    Ok(TailEnd::Done)
}

/// Waits for a read's worth of memory budget; `None` on shutdown.
async fn take_budget(
    context: &TailContext,
    shutdown: &mut Shutdown,
) -> Option<OwnedSemaphorePermit> {
    let wanted = u32::try_from(context.tuning.read_buffer_bytes).unwrap_or(u32::MAX);
    tokio::select! {
        permit = Arc::clone(&context.budget).acquire_many_owned(wanted) => permit.ok(),
        () = shutdown.triggered() => None,
    }
}

/// Sends a chunk; false when the pipeline is gone or shutting down (the
/// chunk's records are then re-read at the next start).
async fn send(context: &TailContext, shutdown: &mut Shutdown, chunk: Chunk) -> bool {
    tokio::select! {
        sent = context.output.send(chunk) => sent.is_ok(),
        () = shutdown.triggered() => false,
    }
}

/// The path in the same directory that now holds the file `key`, if any.
fn find_by_key(path: &Path, key: FileKey) -> Option<PathBuf> {
    let dir = path.parent()?;
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|candidate| {
            std::fs::symlink_metadata(candidate)
                .is_ok_and(|metadata| metadata.is_file() && FileKey::of(&metadata) == key)
        })
}

/// What one blocking step of a reader found.
enum Step {
    /// New bytes, turned into a chunk.
    Data(Chunk),
    /// End of file; the file's size now.
    Eof { size: u64 },
    /// The file was truncated or rewritten under us.
    Replaced { size: u64, reason: ResetReason },
}

/// Per-file reading and decoding state; moved into a blocking task for
/// each step.
struct FileReader {
    file: std::fs::File,
    source: Arc<FileSource>,
    plan: FilePlan,
    rules: Arc<Rules>,
    splitter: LineSplitter,
    decoder: Decoder,
    multiline: Multiline,
    metrics: Arc<Metrics>,
    /// The first bytes of the file as read so far (for the fingerprint).
    head: Vec<u8>,
    /// Offset of the next byte to read.
    offset: u64,
    /// Highest offset handed out for commit.
    last_commit: u64,
    read_buffer_bytes: usize,
    max_line_bytes: usize,
    file_offset_dirty: bool,
    /// The last step hit the end of the file.
    after_eof: bool,
}

/// What came out of processing some bytes.
struct Processed {
    records: Vec<PendingRecord>,
    lines: u64,
}

impl FileReader {
    #[allow(clippy::too_many_arguments)]
    fn new(
        file: std::fs::File,
        source: Arc<FileSource>,
        plan: FilePlan,
        rules: &Arc<Rules>,
        head: Vec<u8>,
        start: u64,
        tuning: &Tuning,
        metrics: Arc<Metrics>,
    ) -> FileReader {
        let decoder = Decoder::new(plan.format, tuning.max_line_bytes);
        let multiline = Multiline::new(plan.multiline.clone());
        FileReader {
            file,
            source,
            plan,
            rules: Arc::clone(rules),
            splitter: LineSplitter::new(start, tuning.max_line_bytes),
            decoder,
            multiline,
            metrics,
            head,
            offset: start,
            last_commit: start,
            read_buffer_bytes: tuning.read_buffer_bytes,
            max_line_bytes: tuning.max_line_bytes,
            file_offset_dirty: true,
            after_eof: false,
        }
    }

    fn set_rules(&mut self, plan: FilePlan, rules: &Arc<Rules>) {
        self.multiline.set_spec(plan.multiline.clone());
        self.plan = plan;
        self.rules = Arc::clone(rules);
    }

    /// Reads the next bytes (holding `permit` for those kept in flight)
    /// or, at end of file, checks the file is still the one we read.
    fn step(&mut self, mut permit: OwnedSemaphorePermit) -> std::io::Result<Step> {
        if self.file_offset_dirty {
            use std::io::Seek;
            self.file.seek(std::io::SeekFrom::Start(self.offset))?;
            self.file_offset_dirty = false;
        }
        if self.after_eof {
            // The file may have been cut and rewritten while we waited.
            self.after_eof = false;
            if let Some(replaced) = self.check_replaced()? {
                return Ok(replaced);
            }
        }
        let mut buffer = vec![0u8; self.read_buffer_bytes];
        let read = self.file.read(&mut buffer)?;
        if read == 0 {
            drop(permit);
            self.after_eof = true;
            if let Some(replaced) = self.check_replaced()? {
                return Ok(replaced);
            }
            let size = self.file.metadata()?.len();
            return Ok(Step::Eof { size });
        }
        let bytes = &buffer[..read];
        let chunk_start = self.offset;
        self.grow_head(chunk_start, bytes);
        self.offset += read as u64;
        let observed = now_unix_nanos();
        let processed = self.process(bytes, observed);
        self.source.stats.add_read(processed.lines, read as u64);
        self.metrics.add_read(processed.lines, read as u64);
        // Keep budget for the bytes read; give back the rest of the buffer.
        let kept = u32::try_from(read).unwrap_or(u32::MAX) as usize;
        if permit.num_permits() > kept {
            drop(permit.split(permit.num_permits() - kept));
        }
        Ok(Step::Data(self.chunk(processed.records, Some(permit))))
    }

    /// Whether the file was truncated (shorter than our offset) or
    /// rewritten (copytruncate then new writes: other first bytes).
    fn check_replaced(&self) -> std::io::Result<Option<Step>> {
        let size = self.file.metadata()?.len();
        if size < self.offset {
            return Ok(Some(Step::Replaced {
                size,
                reason: ResetReason::Truncated,
            }));
        }
        let current_head = read_head(&self.file, size)?;
        if !Fingerprint::of(&self.head).matches(&current_head) {
            return Ok(Some(Step::Replaced {
                size,
                reason: ResetReason::Fingerprint,
            }));
        }
        Ok(None)
    }

    fn grow_head(&mut self, chunk_start: u64, bytes: &[u8]) {
        let head_len = self.head.len() as u64;
        if self.head.len() >= FINGERPRINT_BYTES || chunk_start > head_len {
            return;
        }
        let skip = (head_len - chunk_start) as usize;
        if skip >= bytes.len() {
            return;
        }
        let wanted = FINGERPRINT_BYTES - self.head.len();
        let take = &bytes[skip..bytes.len().min(skip + wanted)];
        self.head.extend_from_slice(take);
        self.source
            .stats
            .set_fingerprint(Fingerprint::of(&self.head));
    }

    /// Lines of `bytes` through decode, multiline, filter, parse, redact.
    fn process(&mut self, bytes: &[u8], observed: u64) -> Processed {
        let mut ready: Vec<Entry> = Vec::new();
        let mut lines = 0u64;
        let decoder = &mut self.decoder;
        let multiline = &mut self.multiline;
        let mut records = Vec::with_capacity(bytes.len() / 200 + 1);
        let mut finisher = Finisher {
            plan: &self.plan,
            rules: &self.rules,
            metrics: &self.metrics,
            observed,
            last_commit: &mut self.last_commit,
            records: &mut records,
        };
        self.splitter.push(bytes, |line| {
            lines += 1;
            if let Some(entry) = decoder.decode(line.bytes, line.start, line.end) {
                multiline.push(entry, &mut |entry| ready.push(entry));
                let pending =
                    min_option(decoder.min_pending_start(), multiline.min_pending_start());
                for entry in ready.drain(..) {
                    finisher.finish(entry, pending);
                }
            }
        });
        Processed { records, lines }
    }

    /// Emits held data: pending multiline records, and with `everything`
    /// also a final line without newline and pending partial pieces.
    fn flush(&mut self, everything: bool) -> Option<Chunk> {
        if !everything && !self.multiline.has_pending() {
            return None;
        }
        let observed = now_unix_nanos();
        let mut entries: Vec<Entry> = Vec::new();
        let mut lines = 0;
        if everything {
            let decoder = &mut self.decoder;
            let multiline = &mut self.multiline;
            self.splitter.flush_held(|line| {
                lines += 1;
                if let Some(entry) = decoder.decode(line.bytes, line.start, line.end) {
                    multiline.push(entry, &mut |entry| entries.push(entry));
                }
            });
            let multiline = &mut self.multiline;
            self.decoder
                .flush(&mut |entry| multiline.push(entry, &mut |entry| entries.push(entry)));
        }
        self.multiline.flush(&mut |entry| entries.push(entry));
        self.metrics.add_read(lines, 0);
        let mut records = Vec::new();
        let pending = min_option(
            self.decoder.min_pending_start(),
            self.multiline.min_pending_start(),
        );
        let mut finisher = Finisher {
            plan: &self.plan,
            rules: &self.rules,
            metrics: &self.metrics,
            observed,
            last_commit: &mut self.last_commit,
            records: &mut records,
        };
        for entry in entries {
            finisher.finish(entry, pending);
        }
        let commit_before = self.last_commit;
        let chunk = self.chunk(records, None);
        let moved = chunk.commit_offset > commit_before;
        (!chunk.records.is_empty() || moved).then_some(chunk)
    }

    /// A chunk of records, with the offset safe to commit after them.
    fn chunk(
        &mut self,
        records: Vec<PendingRecord>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Chunk {
        let safe = [
            Some(self.splitter.held_start()),
            self.decoder.min_pending_start(),
            self.multiline.min_pending_start(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.offset);
        let commit_offset = safe.max(self.last_commit);
        self.last_commit = commit_offset;
        Chunk {
            source: Arc::clone(&self.source),
            records,
            commit_offset,
            permit,
            read_unix_nanos: now_unix_nanos(),
        }
    }

    /// Starts over at offset 0 (the file was truncated or replaced).
    fn restart(&mut self) {
        self.offset = 0;
        self.last_commit = 0;
        self.file_offset_dirty = true;
        self.head.clear();
        self.splitter.reset(0);
        self.decoder.reset();
        self.multiline.reset();
        self.splitter = LineSplitter::new(0, self.max_line_bytes);
    }
}

fn min_option(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The last stages for one entry: drop filter, parse, redact.
struct Finisher<'a> {
    plan: &'a FilePlan,
    rules: &'a Rules,
    metrics: &'a Metrics,
    observed: u64,
    last_commit: &'a mut u64,
    records: &'a mut Vec<PendingRecord>,
}

impl Finisher<'_> {
    fn finish(&mut self, entry: Entry, pending: Option<u64>) {
        let commit_offset = pending
            .map_or(entry.end_offset, |pending| pending.min(entry.end_offset))
            .max(*self.last_commit);
        *self.last_commit = commit_offset;
        if let Some(drop) = &self.rules.drop
            && drop.is_match(&entry.message)
        {
            self.metrics.add_dropped(DropReason::Filter, 1);
            return;
        }
        if entry.truncated {
            self.metrics.add_truncated(1);
        }
        let size_hint = entry.message.len() + RECORD_OVERHEAD_BYTES;
        let mut record =
            parse_entry_with(entry, self.observed, &self.plan.parser, &self.rules.fields);
        if self.rules.redactor.is_enabled() && redact_record(&mut record, &self.rules.redactor) {
            self.metrics.add_redacted(1);
        }
        self.records.push(PendingRecord {
            record,
            commit_offset,
            size_hint,
        });
    }
}

/// Masks secrets in the body and string attributes; true if any.
fn redact_record(
    record: &mut opentelemetry_proto::tonic::logs::v1::LogRecord,
    redactor: &crate::redact::Redactor,
) -> bool {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let mut changed = false;
    let mut redact_value =
        |value: &mut Option<opentelemetry_proto::tonic::common::v1::AnyValue>| {
            if let Some(Value::StringValue(text)) =
                value.as_mut().and_then(|value| value.value.as_mut())
                && let Some(masked) = redactor.redact(text)
            {
                *value = Some(otlp::string_value(masked));
                changed = true;
            }
        };
    redact_value(&mut record.body);
    for attribute in &mut record.attributes {
        redact_value(&mut attribute.value);
    }
    changed
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
    use crate::config::Config;
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

    fn reader_for(content: &[u8], config_toml: &str) -> (FileReader, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, content).unwrap();
        let mut config = Config::from_toml(config_toml).unwrap();
        config.tuning.read_buffer_bytes = 16;
        let rules = Arc::new(Rules::compile(&config).unwrap());
        let plan = rules.plan(&path, &ContainerInfo::default()).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let source = Arc::new(FileSource::plain(FileKey { dev: 1, inode: 1 }, path, "h"));
        let reader = FileReader::new(
            file,
            source,
            plan,
            &rules,
            Vec::new(),
            0,
            &config.tuning,
            Arc::new(Metrics::default()),
        );
        (reader, dir)
    }

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1 << 20))
            .try_acquire_many_owned(1 << 10)
            .unwrap()
    }

    /// Reads to the end, returning `(bodies, commit offsets)` per chunk.
    fn read_all(reader: &mut FileReader) -> Vec<(Vec<String>, u64)> {
        let mut chunks = Vec::new();
        loop {
            match reader.step(permit()).unwrap() {
                Step::Data(chunk) => chunks.push((
                    chunk.records.iter().map(body).collect(),
                    chunk.commit_offset,
                )),
                Step::Eof { .. } => return chunks,
                Step::Replaced { .. } => panic!("not replaced"),
            }
        }
    }

    #[test]
    fn reader_holds_partial_lines_and_tracks_offsets() {
        let content = b"2026-11-21T05:48:48Z stdout F one\n2026-11-21T05:48:48Z stdout P tw\
o\n2026-11-21T05:48:48Z stdout F !\nplain";
        let (mut reader, _dir) = reader_for(content, "");
        let chunks = read_all(&mut reader);
        let bodies: Vec<String> = chunks.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(bodies, ["one", "two!"]);
        assert_eq!(chunks.last().unwrap().1, 100, "not past the held line");
        assert_eq!(reader.head.len(), content.len(), "fingerprint grows");

        let last = reader.flush(true).unwrap();
        assert_eq!(last.records.iter().map(body).collect::<Vec<_>>(), ["plain"]);
        assert_eq!(last.commit_offset, 105);
        assert_eq!(reader.offset, 105);
    }

    #[test]
    fn dropped_and_redacted_records_still_commit() {
        let content = b"GET /healthz\nAuthorization: Bearer abcdefghijkl\n";
        let (mut reader, _dir) = reader_for(content, "[filters]\ndrop_patterns = [\"healthz\"]\n");
        let chunks = read_all(&mut reader);
        let bodies: Vec<String> = chunks.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(bodies, ["Authorization: Bearer [REDACTED]"]);
        assert_eq!(chunks.last().unwrap().1, content.len() as u64);
        assert!(
            reader
                .metrics
                .render_prometheus()
                .contains("sightline_agent_records_dropped_total 1")
        );
    }

    #[test]
    fn multiline_record_holds_commit_until_flushed() {
        let content = b"boom\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)\nnext\n";
        let (mut reader, _dir) = reader_for(content, "[multiline]\ndefault = \"java\"\n");
        let chunks = read_all(&mut reader);
        let bodies: Vec<String> = chunks.iter().flat_map(|(b, _)| b.clone()).collect();
        assert_eq!(bodies, ["boom\n\tat a.b(C.java:1)\n\tat d.e(F.java:2)"]);
        // "next" is held by multiline: commit stops at its start.
        assert_eq!(chunks.last().unwrap().1, 41);
        let flushed = reader.flush(false).unwrap();
        assert_eq!(
            flushed.records.iter().map(body).collect::<Vec<_>>(),
            ["next"]
        );
        assert_eq!(flushed.commit_offset, content.len() as u64);
    }

    #[test]
    fn truncation_is_seen_at_end_of_file() {
        let (mut reader, dir) = reader_for(b"first line\nsecond line\n", "");
        read_all(&mut reader);
        std::fs::write(dir.path().join("app.log"), b"x\n").unwrap();
        assert!(matches!(
            reader.step(permit()).unwrap(),
            Step::Replaced {
                reason: ResetReason::Truncated,
                ..
            }
        ));
        // Rewritten past our offset with other content (copytruncate and
        // a fast writer): the fingerprint tells.
        let (mut reader, dir) = reader_for(b"first line\n", "");
        read_all(&mut reader);
        std::fs::write(dir.path().join("app.log"), b"other content, longer\n").unwrap();
        assert!(matches!(
            reader.step(permit()).unwrap(),
            Step::Replaced {
                reason: ResetReason::Fingerprint,
                ..
            }
        ));
        reader.restart();
        let bodies: Vec<String> = read_all(&mut reader)
            .into_iter()
            .flat_map(|(bodies, _)| bodies)
            .collect();
        assert_eq!(bodies, ["other content, longer"]);
    }
}
