//! The file reader: one task per file, from open to rotation or removal.
//!
//! Discovery opens the file (so the descriptor is the identity it saw:
//! `(device, inode)` plus a fingerprint of its first bytes) and hands it
//! over with its [`Origin`]; a stored offset is used only if it fits (see
//! [`crate::checkpoint::CheckpointStore::resume`]). Each read takes bytes
//! of the global memory budget (the permit travels with the records until
//! the collector acknowledges them), then reads, splits, decodes, joins,
//! filters, parses and redacts on the blocking pool, at most
//! `reader_threads` files at a time, and sends one chunk of records into a
//! bounded queue. When the budget or the queue is full the reader waits:
//! the file itself is the buffer.
//!
//! Before every read, and every `poll_interval` while it waits, the reader
//! looks at the file: its size (the largest seen is kept) and its first
//! bytes. A file shorter than the offset read, or with other first bytes,
//! was cut in place (copytruncate) or rewritten: what the reader had not
//! read of it, the largest size seen minus the offset read, is counted as
//! lost (reason `truncated`), held partial lines are flushed, and reading
//! starts over at 0. At end of file it flushes held partial lines and
//! multiline records after their timeouts, and notices when its path no
//! longer leads to its file (rename rotation or removal). It then keeps
//! its descriptor, follows the new name for the checkpoint, reads to the
//! end and waits `rotate_wait` for late writes before it lets go. A
//! rotated generation found by discovery is read the same way, from its
//! checkpoint or (never acknowledged) from its start.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sightline_vocab::clock::now_nanos_u64;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::batch::{Chunk, EncodedRecords};
use crate::checkpoint::{CheckpointStore, Resume};
use crate::config::Tuning;
use crate::decode::{Decoder, Entry};
use crate::enrich::{ContainerInfo, FileSource};
use crate::identity::{
    FINGERPRINT_BYTES, FileKey, Fingerprint, ResetReason, find_in_dir, read_head,
};
use crate::lines::LineSplitter;
use crate::metrics::{DropReason, LossReason, Metrics};
use crate::multiline::Multiline;
use crate::otlp;
use crate::parse::parse_entry_with;
use crate::rules::{FilePlan, Rules};
use crate::shutdown::Shutdown;

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
    /// The pods of this node, when the Kubernetes API is watched.
    pub(crate) pods: Option<Arc<crate::kubernetes::Pods>>,
}

/// Why a reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TailEnd {
    /// Rotated away or removed and read to the end, shutdown, or an error.
    Done,
    /// A filter excludes the file's container.
    Excluded,
}

/// How discovery found a file: where a file without a checkpoint is read
/// from, and whether its name is expected to stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A name the globs match. Without a checkpoint it is read from its
    /// start when `from_start`, else from its current end. Followed until
    /// it is renamed or removed.
    Live { from_start: bool },
    /// A rotated generation (a name extending a watched name, or a
    /// checkpointed file found elsewhere): without a checkpoint read from
    /// its start; read to its end, then `rotate_wait` for late writes.
    Rotated,
}

/// Counts the file in `files_watched` while alive.
struct WatchedGuard(Arc<Metrics>);

impl Drop for WatchedGuard {
    fn drop(&mut self) {
        self.0.add_files_watched(-1);
    }
}

/// Tails an opened file until it is rotated away or removed (and read to
/// the end), a read fails, or shutdown is requested. Returns the path it
/// was opened at, why it stopped and the offset it had read to.
pub(crate) async fn tail_file(
    opened: Opened,
    origin: Origin,
    context: TailContext,
) -> (PathBuf, TailEnd, u64) {
    let path = opened.path.clone();
    let mut offset = 0;
    match tail(opened, origin, &context, &mut offset).await {
        Ok(end) => (path, end, offset),
        Err(error) => {
            context.metrics.add_read_error();
            warn!(path = %path.display(), %error, "stopped tailing file");
            // Nothing is finished: a later scan opens it again.
            (path, TailEnd::Done, 0)
        }
    }
}

/// A file opened on the blocking pool by discovery.
#[derive(Debug)]
pub(crate) struct Opened {
    file: std::fs::File,
    pub(crate) key: FileKey,
    pub(crate) size: u64,
    pub(crate) head: Vec<u8>,
    container: ContainerInfo,
    /// Where it was opened.
    pub(crate) path: PathBuf,
    /// The name the globs match: the path itself, or for a rotated
    /// generation the name it was rotated from (rules and enrichment
    /// apply to it, so `0.log.20261121-054848` is still container `api`).
    logical: PathBuf,
}

/// Opens `path` (known to the rules as `logical`). Blocking.
pub(crate) fn open(path: &Path, logical: &Path) -> std::io::Result<Opened> {
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let size = metadata.len();
    let head = read_head(&file, size)?;
    Ok(Opened {
        file,
        key: FileKey::of(&metadata),
        size,
        head,
        container: ContainerInfo::detect(logical),
        path: path.to_owned(),
        logical: logical.to_owned(),
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)
}

async fn tail(
    opened: Opened,
    origin: Origin,
    context: &TailContext,
    read_to: &mut u64,
) -> std::io::Result<TailEnd> {
    let Opened {
        file,
        key,
        size,
        head,
        mut container,
        path,
        logical,
    } = opened;
    let path = path.as_path();
    // Looked up once per file, before the filters: pod annotations can
    // exclude it.
    if let (Some(pods), Some(uid)) = (&context.pods, container.pod_uid.as_deref()) {
        container.pod_info = pods.describe(uid).await.map(Arc::new);
    }
    let mut rules_rx = context.rules.clone();
    let rules = Arc::clone(&rules_rx.borrow_and_update());
    let Some(plan) = rules.plan(&logical, &container) else {
        context.metrics.add_file_excluded();
        info!(path = %path.display(), "file excluded by filters");
        return Ok(TailEnd::Excluded);
    };
    let mut resume_copy: Option<(std::fs::File, Vec<u8>, u64)> = None;
    let start = match context.checkpoints.resume(key, size, &head) {
        Resume::At(offset) => offset,
        Resume::Fresh => match origin {
            Origin::Live { from_start: false } => size,
            Origin::Live { from_start: true } | Origin::Rotated => 0,
        },
        Resume::Reset { reason, lost } => {
            context.metrics.add_checkpoint_reset(reason);
            // Cut in place while the agent was down: the rest of what it
            // had not acknowledged may be in a copy beside it.
            let copy = match context.checkpoints.stored(key) {
                Some((offset, Some(fingerprint), size_seen)) if offset > 0 => {
                    let path = path.to_owned();
                    blocking(move || find_copy(&path, key, fingerprint, offset))
                        .await??
                        .map(|copy| (copy, offset, size_seen))
                }
                _ => None,
            };
            match copy {
                Some(((copy, copy_path, copy_head), offset, size_seen)) => {
                    info!(path = %path.display(), copy = %copy_path.display(), offset, ?reason, "file cut in place while the agent was down, reading the rest from its copy");
                    resume_copy = Some((copy, copy_head, size_seen));
                    offset
                }
                None => {
                    context.metrics.add_lost(LossReason::Truncated, lost);
                    warn!(path = %path.display(), ?reason, size, lost, "checkpoint does not fit the file, reading from start");
                    0
                }
            }
        }
    };

    let mut source = Arc::new(FileSource::new(
        key,
        logical.clone(),
        container,
        &context.host_name,
        &rules.resource,
    ));
    if logical != path {
        source.set_current_path(path);
    }
    let (file, head, size_seen, reading_copy) = match resume_copy {
        Some((copy, copy_head, size_seen)) => (copy, copy_head, size_seen, Some(file)),
        None => (file, head, size, None),
    };
    // Reading the rest of a cut file from its copy: the file itself.
    let mut reading_copy: Option<std::fs::File> = reading_copy;
    source.stats.set_fingerprint(Fingerprint::of(&head));
    source.stats.set_size(size);
    context.metrics.track_file(&source.stats);
    context.checkpoints.register(&source);
    context.metrics.add_files_watched(1);
    let _watched = WatchedGuard(Arc::clone(&context.metrics));
    info!(path = %path.display(), offset = start, size, ?origin, "tailing file");

    let tuning = &context.tuning;
    let mut reader = FileReader::new(
        file,
        Arc::clone(&source),
        plan,
        &rules,
        head,
        start,
        tuning,
        Arc::clone(&context.metrics),
    );
    reader.size_seen = size_seen;
    let mut reader = Some(reader);
    let mut shutdown = context.shutdown.clone();
    let mut last_growth = Instant::now();
    // A rotated generation is not at a watched name any more.
    let mut moved_away = origin == Origin::Rotated;

    while !shutdown.is_triggered() {
        // A cut in place gives the reader a new source (generation).
        if let Some(current) = reader.as_ref()
            && !Arc::ptr_eq(&current.source, &source)
        {
            source = Arc::clone(&current.source);
        }
        if rules_rx.has_changed().unwrap_or(false) {
            let rules = Arc::clone(&rules_rx.borrow_and_update());
            let Some(reader) = reader.as_mut() else {
                break;
            };
            match rules.plan(&logical, &source.container) {
                Some(plan) => reader.set_rules(plan, &rules),
                None => {
                    info!(path = %path.display(), "file excluded after reload");
                    context.metrics.add_file_excluded();
                    return Ok(TailEnd::Excluded);
                }
            }
        }

        let Some(permit) = take_budget(context, &mut shutdown, reader.as_mut()).await else {
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
                if !send(context, &mut shutdown, chunk, reader.as_mut()).await {
                    break;
                }
                continue;
            }
            Step::Replaced { size, reason } if reading_copy.is_none() => {
                context.metrics.add_checkpoint_reset(reason);
                // copytruncate keeps a copy beside the file: what we had
                // not read yet is there.
                let copy = {
                    let fingerprint = Fingerprint::of(&reader_ref.head);
                    let offset = reader_ref.offset;
                    let path = path.to_owned();
                    blocking(move || find_copy(&path, key, fingerprint, offset)).await??
                };
                match copy {
                    Some((copy, copy_path, _)) => {
                        info!(path = %path.display(), copy = %copy_path.display(), offset = reader_ref.offset, size, ?reason, "file cut in place, reading the rest from its copy");
                        reading_copy = Some(reader_ref.swap_file(copy));
                        continue;
                    }
                    None => {
                        warn!(path = %path.display(), offset = reader_ref.offset, size_seen = reader_ref.size_seen, size, ?reason, "file cut in place, reading from start");
                    }
                }
                if !finish_cut(context, &mut shutdown, reader_ref, None).await {
                    break;
                }
                continue;
            }
            Step::Replaced { .. } => {
                // The copy itself changed under us: done with it.
                if !finish_cut(context, &mut shutdown, reader_ref, reading_copy.take()).await {
                    break;
                }
                continue;
            }
            Step::Eof { .. } if reading_copy.is_some() => {
                if !finish_cut(context, &mut shutdown, reader_ref, reading_copy.take()).await {
                    break;
                }
                continue;
            }
            Step::Eof { size } => {
                source.stats.set_size(size);
                context.checkpoints.observe_size(key, size);
                if size > reader_ref.offset {
                    continue;
                }
            }
        }

        // Idle at end of file.
        let idle = last_growth.elapsed();
        let Some(reader_ref) = reader.as_mut() else {
            break;
        };
        if idle >= context.multiline_flush || idle >= tuning.partial_flush_timeout {
            let everything = idle >= tuning.partial_flush_timeout;
            if let Some(chunk) = reader_ref.flush(everything)
                && !send(context, &mut shutdown, chunk, None).await
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
                    let dir = path.parent().map(Path::to_owned);
                    blocking(move || dir.and_then(|dir| find_in_dir(&dir, key))).await?
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
        if moved_away && idle >= tuning.rotate_wait {
            let Some(reader_ref) = reader.as_mut() else {
                break;
            };
            if let Some(chunk) = reader_ref.flush(true) {
                send(context, &mut shutdown, chunk, None).await;
            }
            let offset = reader.as_ref().map_or(0, |reader| reader.offset);
            info!(path = %path.display(), offset, "file done");
            *read_to = offset;
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

/// After a cut (and reading its copy, `original` then being the file
/// itself): counts what is gone, the largest size seen minus the offset
/// read, ships a held partial line (all there is of it) and starts over at
/// 0. False when the pipeline is gone.
async fn finish_cut(
    context: &TailContext,
    shutdown: &mut Shutdown,
    reader: &mut FileReader,
    original: Option<std::fs::File>,
) -> bool {
    if let Some(original) = original {
        reader.swap_file(original);
    }
    let lost = reader.size_seen.saturating_sub(reader.offset);
    context.metrics.add_lost(LossReason::Truncated, lost);
    if lost > 0 {
        warn!(path = %reader.source.current_path().display(), offset = reader.offset, size_seen = reader.size_seen, lost, "bytes lost to a cut in place");
    }
    // A copy made later must still be known as one.
    context.checkpoints.retire(Fingerprint::of(&reader.head));
    if let Some(chunk) = reader.flush(true)
        && !send(context, shutdown, chunk, None).await
    {
        return false;
    }
    reader.restart();
    // The new content is another generation: a source of its own, so
    // acknowledgements of the old content still in flight (their batches
    // name the old source) never land on the new content's checkpoint.
    let old = &reader.source;
    let rules = Arc::clone(&context.rules.borrow());
    let fresh = Arc::new(FileSource::new(
        old.key,
        old.path.clone(),
        old.container.clone(),
        &context.host_name,
        &rules.resource,
    ));
    fresh.set_current_path(&old.current_path());
    context.metrics.track_file(&fresh.stats);
    context.checkpoints.register(&fresh);
    reader.source = fresh;
    true
}

/// A copy of the file `key` at `path` in its directory (a name extending
/// its name, as copytruncate makes) whose first bytes have `fingerprint`
/// and that holds more than `offset` bytes, with its first bytes.
/// Blocking.
fn find_copy(
    path: &Path,
    key: FileKey,
    fingerprint: Fingerprint,
    offset: u64,
) -> std::io::Result<Option<(std::fs::File, PathBuf, Vec<u8>)>> {
    let (Some(dir), Some(name)) = (
        path.parent(),
        path.file_name().and_then(|name| name.to_str()),
    ) else {
        return Ok(None);
    };
    if fingerprint.len == 0 {
        return Ok(None);
    }
    let prefix = format!("{name}.");
    for entry in std::fs::read_dir(dir)?.flatten() {
        let file_name = entry.file_name();
        let Some(candidate) = file_name.to_str() else {
            continue;
        };
        if !candidate.starts_with(&prefix) {
            continue;
        }
        let candidate = entry.path();
        let Ok(file) = std::fs::File::open(&candidate) else {
            continue;
        };
        let Ok(metadata) = file.metadata() else {
            continue;
        };
        if !metadata.is_file() || FileKey::of(&metadata) == key || metadata.len() <= offset {
            continue;
        }
        let head = read_head(&file, metadata.len())?;
        if fingerprint.matches(&head) {
            return Ok(Some((file, candidate, head)));
        }
    }
    Ok(None)
}

/// Waits for a read's worth of memory budget; `None` on shutdown. While
/// it waits the file keeps being looked at, so the size seen before a cut
/// stays current.
async fn take_budget(
    context: &TailContext,
    shutdown: &mut Shutdown,
    reader: Option<&mut FileReader>,
) -> Option<OwnedSemaphorePermit> {
    let wanted = u32::try_from(context.tuning.read_buffer_bytes).unwrap_or(u32::MAX);
    let acquire = Arc::clone(&context.budget).acquire_many_owned(wanted);
    observing(acquire, context, shutdown, reader)
        .await
        .and_then(Result::ok)
}

/// Sends a chunk; false when the pipeline is gone or shutting down (the
/// chunk's records are then re-read at the next start).
async fn send(
    context: &TailContext,
    shutdown: &mut Shutdown,
    chunk: Chunk,
    reader: Option<&mut FileReader>,
) -> bool {
    let sent = context.output.send(chunk);
    observing(sent, context, shutdown, reader)
        .await
        .is_some_and(|sent| sent.is_ok())
}

/// Awaits `work` (`None` on shutdown), looking at the reader's file every
/// `poll_interval` meanwhile.
async fn observing<T>(
    work: impl Future<Output = T>,
    context: &TailContext,
    shutdown: &mut Shutdown,
    mut reader: Option<&mut FileReader>,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Some(done),
            () = shutdown.triggered() => return None,
            () = tokio::time::sleep(context.tuning.poll_interval) => {
                if let Some(reader) = reader.as_deref_mut() {
                    // fstat and a 256-byte pread: cheap enough here.
                    let _ = reader.look();
                }
            }
        }
    }
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
    /// The largest size of the file seen since it was opened (or last
    /// started over): what was there to read before a cut.
    size_seen: u64,
}

/// What came out of processing some bytes.
struct Processed {
    records: EncodedRecords,
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
            size_seen: 0,
        }
    }

    fn set_rules(&mut self, plan: FilePlan, rules: &Arc<Rules>) {
        self.multiline.set_spec(plan.multiline.clone());
        self.plan = plan;
        self.rules = Arc::clone(rules);
    }

    /// Reads the next bytes (holding `permit` for those kept in flight)
    /// after checking the file is still the one we read.
    fn step(&mut self, mut permit: OwnedSemaphorePermit) -> std::io::Result<Step> {
        if self.file_offset_dirty {
            use std::io::Seek;
            self.file.seek(std::io::SeekFrom::Start(self.offset))?;
            self.file_offset_dirty = false;
        }
        // The file may have been cut and rewritten since the last look.
        if let Some(replaced) = self.look()? {
            return Ok(replaced);
        }
        let mut buffer = vec![0u8; self.read_buffer_bytes];
        let read = self.file.read(&mut buffer)?;
        if read == 0 {
            drop(permit);
            return Ok(Step::Eof {
                size: self.size_seen,
            });
        }
        // Cut and rewritten between the look above and the read: the
        // bytes are the new content's, not ours at this offset.
        if let Some(replaced) = self.look()? {
            self.file_offset_dirty = true;
            return Ok(replaced);
        }
        let bytes = &buffer[..read];
        let chunk_start = self.offset;
        self.grow_head(chunk_start, bytes);
        self.offset += read as u64;
        let observed = now_nanos_u64();
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

    /// Looks at the file: `Some` when it was truncated (shorter than our
    /// offset) or rewritten (copytruncate then new writes: other first
    /// bytes); else the size is kept as seen. The size is taken only once
    /// the first bytes are known to be ours, so the new content of a
    /// rewritten file never counts as the old one's.
    fn look(&mut self) -> std::io::Result<Option<Step>> {
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
        if size > self.size_seen {
            self.size_seen = size;
            self.source.stats.set_size(size);
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
        // Encoded records take about the bytes of their lines.
        let mut records = EncodedRecords::with_capacity(bytes.len());
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
        let observed = now_nanos_u64();
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
        let mut records = EncodedRecords::default();
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
    fn chunk(&mut self, records: EncodedRecords, permit: Option<OwnedSemaphorePermit>) -> Chunk {
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
            read_unix_nanos: now_nanos_u64(),
        }
    }

    /// Reads from `file` from now on, at the same offset (a copy of the
    /// file holds the same bytes at the same offsets); returns the file
    /// read so far.
    fn swap_file(&mut self, file: std::fs::File) -> std::fs::File {
        self.file_offset_dirty = true;
        std::mem::replace(&mut self.file, file)
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
        self.size_seen = 0;
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
    records: &'a mut EncodedRecords,
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
        let mut record =
            parse_entry_with(entry, self.observed, &self.plan.parser, &self.rules.fields);
        if self.rules.redactor.is_enabled() && redact_record(&mut record, &self.rules.redactor) {
            self.metrics.add_redacted(1);
        }
        // Encoded here and dropped on this thread: its allocations go
        // back to the allocator that made them.
        self.records.push(&record, commit_offset);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    fn body(record: crate::batch::EncodedRecord<'_>) -> String {
        match record.decode().body.and_then(|body| body.value) {
            Some(Value::StringValue(text)) => text,
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

    #[test]
    fn the_size_seen_grows_with_the_file_and_never_takes_new_content() {
        let (mut reader, dir) = reader_for(b"first line\n", "");
        read_all(&mut reader);
        let path = dir.path().join("app.log");
        let mut grown = std::fs::read(&path).unwrap();
        grown.extend_from_slice(b"second line, not read yet\n");
        std::fs::write(&path, &grown).unwrap();
        assert!(reader.look().unwrap().is_none());
        assert_eq!(reader.size_seen, grown.len() as u64);
        // Cut and rewritten past the old size with other bytes: the new
        // size is not the old content's.
        std::fs::write(&path, vec![b'x'; 200]).unwrap();
        assert!(matches!(
            reader.look().unwrap(),
            Some(Step::Replaced {
                reason: ResetReason::Fingerprint,
                ..
            })
        ));
        assert_eq!(reader.size_seen, grown.len() as u64);
    }

    #[test]
    fn a_copy_beside_the_file_is_found_by_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let content: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let key = FileKey::of(&std::fs::metadata(&path).unwrap());
        let fingerprint = Fingerprint::of(&content);
        std::fs::write(dir.path().join("0.log.2"), b"another generation").unwrap();
        std::fs::write(dir.path().join("other.log.1"), &content).unwrap();
        assert!(
            find_copy(&path, key, fingerprint, 100).unwrap().is_none(),
            "the file itself, another name, other bytes"
        );
        std::fs::write(dir.path().join("0.log.1"), &content).unwrap();
        let (_, found, head) = find_copy(&path, key, fingerprint, 100).unwrap().unwrap();
        assert_eq!(found, dir.path().join("0.log.1"));
        assert_eq!(head, &content[..FINGERPRINT_BYTES]);
        assert!(
            find_copy(&path, key, fingerprint, 1000).unwrap().is_none(),
            "nothing left to read in it"
        );
    }
}
