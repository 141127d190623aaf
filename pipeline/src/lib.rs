//! The durable ingest path: receiver -> WAL (fsync) -> acknowledgement, then
//! WAL -> indexes.
//!
//! ```text
//! receivers --ingest()--> [bounded queue] --> wal-writer thread: append each
//!     batch to the durable log, one sync for all of them (group commit),
//!     acknowledge
//!                                        --> [bounded channel] --> indexer
//!     thread: add to LogStore / SpanStore, commit every `commit_interval`
//!     with the WAL position in the commit payload, then delete WAL segments
//!     both stores have committed past.
//! ```
//!
//! The pipeline talks to a [`DurableLog`] (the store's seam; the store owns
//! the entry encoding, [`Batch::encode`]): [`Pipeline::start`] opens the
//! local WAL ([`LocalWal`]), [`Pipeline::start_with_log`] takes any log.
//! Positions are the log's, opaque and ordered; the stores commit with the
//! position they reached in its one partition.
//!
//! Memory is bounded by a byte budget: a batch takes permits for its size
//! when it enters and gives them back once it is indexed. A batch that does
//! not fit waits for room a bounded time, in a bounded waiting room
//! ([`Admission`]); after that, or when the queue is full,
//! [`Pipeline::ingest`] answers [`IngestError::Busy`] (gRPC
//! `RESOURCE_EXHAUSTED`, HTTP 429). On start the WAL is
//! replayed from the lowest position the stores committed; the stores skip
//! what they already hold, so a `kill -9` at any moment loses nothing
//! acknowledged and indexes nothing twice.
//!
//! Starting replays the WAL on the indexer thread ([`Pipeline::spawn`]):
//! until it is done, [`Pipeline::readiness`] says so and ingest answers
//! [`IngestError::Starting`] (retryable), so the owner can answer health
//! probes and queries during a long replay instead of looking dead.
//! [`Pipeline::start`] waits for the replay.
//!
//! A full disk makes the collector read-only, not unavailable: the first
//! `ENOSPC` (a WAL append, an index commit, or a disk already full at
//! start) switches ingest off ([`IngestError::Storage`], gRPC `UNAVAILABLE`,
//! HTTP 503, all retried by senders) while queries go on. The WAL
//! directory holds a reserve file of [`PipelineConfig::disk_reserve_bytes`]
//! that is deleted at that moment, so the indexer has room to commit what
//! was acknowledged before the disk filled: acknowledged records stay
//! searchable. While read-only, the indexer tries every
//! [`DISK_PROBE_INTERVAL`] to write the reserve back; when it fits, ingest
//! resumes. Each change (full, recovered, indexing failing, indexing
//! resumed) is logged once, not every retry. If the released reserve is too
//! small for the commit, the acknowledged records stay in the WAL (durable)
//! and become searchable when space returns.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use sightline_store::wal::{self, LocalWal};
use sightline_store::{Checkpoint, DiskReserve, DurableLog, LogStore, SINGLE_PARTITION, SpanStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// A batch as it is written to the durable log (the store owns its encoding).
pub use sightline_store::Batch;

/// The partition every batch goes to: the embedded log has one.
const PARTITION: sightline_store::PartitionId = SINGLE_PARTITION;

/// What the pipeline reports as it works, for its owner's counters (the
/// collector's `/metrics`).
pub trait PipelineMetrics: Send + Sync {
    /// A batch is durable and acknowledged.
    fn ingested(&self, batch: &Batch);
    /// Bytes appended to the durable log.
    fn wal_appended_bytes(&self, bytes: usize);
    /// The stores committed, taking `took`.
    fn committed(&self, took: Duration);
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest is over capacity, retry later")]
    Busy,
    #[error("collector is shutting down")]
    ShuttingDown,
    #[error("the collector is starting: it is replaying its write-ahead log, retry later")]
    Starting,
    #[error("write-ahead log failed: {0}")]
    Storage(String),
}

/// Tuning of the ingest path.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub wal_dir: PathBuf,
    /// Bytes of batches in flight (queued, in the WAL writer or not yet indexed).
    pub memory_budget_bytes: usize,
    /// How long a batch that does not fit the budget waits for room before
    /// its sender is told to back off. Batches waiting hold at most a
    /// quarter of the budget more; past that they are refused at once.
    pub budget_wait: Duration,
    /// Batches waiting for the WAL writer.
    pub queue_batches: usize,
    /// How often the indexes commit (and become searchable).
    pub commit_interval: Duration,
    /// Records and spans added since the last commit that make the next
    /// one due before `commit_interval`, so a burst does not wait for the
    /// clock.
    pub commit_items: usize,
    pub wal_segment_bytes: u64,
    /// Disk space kept free for committing what was acknowledged when the
    /// disk fills (a file in `wal_dir`, written at start). At least
    /// [`MIN_DISK_RESERVE_BYTES`].
    pub disk_reserve_bytes: u64,
}

/// Default of [`PipelineConfig::budget_wait`]: well inside the export
/// timeouts of OTLP senders (10 s in the SDKs and the OpenTelemetry
/// Collector) and Elasticsearch clients.
pub const DEFAULT_BUDGET_WAIT: Duration = Duration::from_secs(2);

/// Default of [`PipelineConfig::disk_reserve_bytes`].
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest reserve: also what proves the disk has room again.
pub const MIN_DISK_RESERVE_BYTES: u64 = 1024 * 1024;

/// How often a read-only collector checks whether space was freed.
pub const DISK_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// What ingest answers while the disk is full.
const DISK_FULL: &str =
    "the disk is full: ingest is refused until space is freed (queries are still served)";

impl PipelineConfig {
    pub fn new(wal_dir: PathBuf) -> PipelineConfig {
        PipelineConfig {
            wal_dir,
            memory_budget_bytes: 256 * 1024 * 1024,
            budget_wait: DEFAULT_BUDGET_WAIT,
            queue_batches: 1024,
            commit_interval: Duration::from_millis(1000),
            commit_items: DEFAULT_COMMIT_ITEMS,
            wal_segment_bytes: wal::DEFAULT_SEGMENT_BYTES,
            // The smallest: tests start many pipelines. The collector's
            // `--disk-reserve-bytes` defaults to `DEFAULT_DISK_RESERVE_BYTES`.
            disk_reserve_bytes: MIN_DISK_RESERVE_BYTES,
        }
    }
}

struct Pending {
    batch: Batch,
    /// The batch serialized by the receiver's task (in parallel across
    /// receivers), so the WAL writer, which every batch passes through in
    /// turn, only appends.
    encoded: sightline_store::EncodedBatch,
    permit: OwnedSemaphorePermit,
    acknowledge: oneshot::Sender<Result<(), String>>,
}

struct Indexable {
    position: u64,
    batch: Batch,
    /// The batch as written to the WAL: the stores keep each record's or
    /// span's JSON in it as the stored source instead of serializing it
    /// again.
    encoded: sightline_store::EncodedBatch,
    _permit: OwnedSemaphorePermit,
}

/// The receivers' handle on the ingest path. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    queue: mpsc::Sender<Pending>,
    budget: Admission,
    disk: Arc<DiskSpace>,
    startup: Arc<Startup>,
}

/// The pipeline's threads; join them after every [`Pipeline`] clone is dropped.
pub struct PipelineThreads {
    writer: JoinHandle<()>,
    indexer: JoinHandle<()>,
}

impl PipelineThreads {
    /// Waits until the queue is drained, everything indexed and committed.
    pub fn join(self) {
        let _ = self.writer.join();
        let _ = self.indexer.join();
    }
}

impl Pipeline {
    /// Opens the write-ahead log in [`PipelineConfig::wal_dir`], then
    /// [`Pipeline::start_with_log`].
    pub fn start(
        config: PipelineConfig,
        logs: Arc<LogStore>,
        spans: Arc<SpanStore>,
        metrics: Arc<dyn PipelineMetrics>,
    ) -> anyhow::Result<(Pipeline, PipelineThreads)> {
        let (pipeline, threads) = Pipeline::spawn(config, logs, spans, metrics)?;
        pipeline.wait_started()?;
        Ok((pipeline, threads))
    }

    /// Replays `log` into the stores, then starts the writer and indexer
    /// threads; returns once the replay is done. Batches are acknowledged
    /// once durable in `log`; the stores record how far they committed as a
    /// position of its one partition.
    pub fn start_with_log(
        config: PipelineConfig,
        log: Arc<dyn DurableLog>,
        logs: Arc<LogStore>,
        spans: Arc<SpanStore>,
        metrics: Arc<dyn PipelineMetrics>,
    ) -> anyhow::Result<(Pipeline, PipelineThreads)> {
        let (pipeline, threads) = Pipeline::spawn_with_log(config, log, logs, spans, metrics)?;
        pipeline.wait_started()?;
        Ok((pipeline, threads))
    }

    /// Opens the write-ahead log in [`PipelineConfig::wal_dir`], then
    /// [`Pipeline::spawn_with_log`].
    pub fn spawn(
        config: PipelineConfig,
        logs: Arc<LogStore>,
        spans: Arc<SpanStore>,
        metrics: Arc<dyn PipelineMetrics>,
    ) -> anyhow::Result<(Pipeline, PipelineThreads)> {
        let wal = LocalWal::open(&config.wal_dir, config.wal_segment_bytes).with_context(|| {
            format!(
                "failed to open write-ahead log in {}",
                config.wal_dir.display()
            )
        })?;
        Pipeline::spawn_with_log(config, Arc::new(wal), logs, spans, metrics)
    }

    /// Starts the writer and indexer threads and returns at once; the
    /// indexer first replays `log` into the stores. Until the replay is
    /// done, [`Pipeline::readiness`] is [`Readiness::Replaying`] and ingest
    /// answers [`IngestError::Starting`] (retryable), so the owner can
    /// serve health checks and queries while a long WAL replays.
    /// [`Pipeline::wait_started`] waits for the replay's outcome.
    pub fn spawn_with_log(
        config: PipelineConfig,
        log: Arc<dyn DurableLog>,
        logs: Arc<LogStore>,
        spans: Arc<SpanStore>,
        metrics: Arc<dyn PipelineMetrics>,
    ) -> anyhow::Result<(Pipeline, PipelineThreads)> {
        let reserve = DiskReserve::open(
            &config.wal_dir,
            config.disk_reserve_bytes.max(MIN_DISK_RESERVE_BYTES),
        )?;
        let disk = Arc::new(DiskSpace::open(reserve));
        let startup = Arc::new(Startup::default());

        let (queue, pending) = mpsc::channel(config.queue_batches.max(1));
        // Two commit intervals' worth of batches may wait for the indexer.
        let (to_indexer, indexable) = sync_channel(config.queue_batches.max(1));
        let writer_metrics = metrics.clone();
        let writer_disk = disk.clone();
        let writer_log = log.clone();
        // Nothing reaches the writer before the replay is done: ingest is
        // refused until then, so the replay reads a log nobody appends to.
        let writer_startup = startup.clone();
        let writer = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || {
                let _alive = ThreadAlive::new(&writer_startup, "the write-ahead log writer");
                write_loop(
                    writer_log.as_ref(),
                    pending,
                    to_indexer,
                    &*writer_metrics,
                    &writer_disk,
                )
            })?;
        let commit = CommitDue {
            interval: config.commit_interval,
            items: config.commit_items.max(1),
        };
        let indexer_disk = disk.clone();
        let indexer_startup = startup.clone();
        let indexer = std::thread::Builder::new()
            .name("indexer".into())
            .spawn(move || {
                let _alive = ThreadAlive::new(&indexer_startup, "the indexer");
                let start = match replay_at_start(log.as_ref(), &logs, &spans, &indexer_disk) {
                    Ok(start) => {
                        indexer_startup.finish(Ok(()));
                        start
                    }
                    Err(error) => {
                        indexer_startup.finish(Err(format!("{error:#}")));
                        return;
                    }
                };
                index_loop(
                    log.as_ref(),
                    &logs,
                    &spans,
                    indexable,
                    commit,
                    start,
                    &*metrics,
                    &indexer_disk,
                )
            })?;
        Ok((
            Pipeline {
                queue,
                budget: Admission::new(config.memory_budget_bytes, config.budget_wait),
                disk,
                startup,
            },
            PipelineThreads { writer, indexer },
        ))
    }

    /// Blocks until the start-up replay is over: `Ok` once the pipeline
    /// takes ingest (or is read-only on a full disk), the replay's error
    /// otherwise.
    pub fn wait_started(&self) -> anyhow::Result<()> {
        self.startup.wait().map_err(anyhow::Error::msg)
    }

    /// `Err` with the thread's name once the WAL writer or the indexer
    /// has stopped while this handle lives (a panic, or a failed start):
    /// what a liveness probe reports, since only a restart helps then.
    pub fn liveness(&self) -> Result<(), String> {
        match self.startup.stopped_thread() {
            None => Ok(()),
            Some(thread) => Err(format!("{thread} stopped; the collector needs a restart")),
        }
    }

    /// Whether the pipeline takes ingest now, and if not, why: what a
    /// readiness probe reports.
    pub fn readiness(&self) -> Readiness {
        match self.startup.state() {
            StartupState::Replaying => Readiness::Replaying,
            StartupState::Failed(error) => Readiness::Failed(error),
            StartupState::Done if self.disk.is_full() => Readiness::DiskFull,
            StartupState::Done => Readiness::Ready,
        }
    }

    /// Returns once `batch` is in the WAL and fsynced. `size_bytes` is the
    /// batch's size as received; it is charged against the memory budget until
    /// the batch is indexed.
    pub async fn ingest(&self, batch: Batch, size_bytes: usize) -> Result<(), IngestError> {
        if batch.is_empty() {
            return Ok(());
        }
        if !self.startup.is_done() {
            return Err(IngestError::Starting);
        }
        if self.disk.is_full() {
            return Err(IngestError::Storage(DISK_FULL.into()));
        }
        let permit = self.budget.admit(size_bytes).await?;
        // Each record is serialized once, for both the WAL and the stored
        // source.
        let encoded = batch
            .encode()
            .map_err(|error| IngestError::Storage(format!("failed to encode batch: {error}")))?;
        let (acknowledge, acknowledged) = oneshot::channel();
        self.queue
            .try_send(Pending {
                batch,
                encoded,
                permit,
                acknowledge,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => IngestError::Busy,
                mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
            })?;
        match acknowledged.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(IngestError::Storage(message)),
            Err(_) => Err(IngestError::ShuttingDown),
        }
    }

    /// Bytes of the memory budget in use.
    pub fn budget_in_use(&self) -> usize {
        self.budget.in_use()
    }
}

/// A byte budget for batches in flight, and the room where batches wait
/// for it. A batch that does not fit waits for the batches ahead of it to
/// free room, up to the configured wait, rather than being refused at
/// once: a refused batch is decoded again when its sender retries, and
/// senders back off for seconds (Fluent Bit, the OpenTelemetry exporters)
/// where the indexer frees room in milliseconds. What waits is bounded
/// too, by a quarter of the budget; past that, and after the wait, the
/// answer is [`IngestError::Busy`]. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// Bytes of batches waiting for room in `budget`, at most `waiting_bytes`.
    waiting: Arc<Semaphore>,
    waiting_bytes: usize,
    wait: Duration,
}

impl Admission {
    pub fn new(budget_bytes: usize, wait: Duration) -> Admission {
        let budget_bytes = budget_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let waiting_bytes = (budget_bytes / 4).max(1);
        Admission {
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            waiting: Arc::new(Semaphore::new(waiting_bytes)),
            waiting_bytes,
            wait,
        }
    }

    /// Charges `size_bytes` (at most the whole budget) until the permit is
    /// dropped.
    pub async fn admit(&self, size_bytes: usize) -> Result<OwnedSemaphorePermit, IngestError> {
        let permits = u32::try_from(size_bytes.clamp(1, self.budget_bytes)).unwrap_or(u32::MAX);
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(IngestError::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let waiting = permits.min(u32::try_from(self.waiting_bytes).unwrap_or(u32::MAX));
        let Ok(_waiting) = self.waiting.clone().try_acquire_many_owned(waiting) else {
            return Err(IngestError::Busy);
        };
        match tokio::time::timeout(self.wait, self.budget.clone().acquire_many_owned(permits)).await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(IngestError::ShuttingDown),
            Err(_elapsed) => Err(IngestError::Busy),
        }
    }

    /// Bytes of the budget in use.
    pub fn in_use(&self) -> usize {
        self.budget_bytes - self.budget.available_permits()
    }
}

/// Whether the pipeline takes ingest, as a readiness probe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Takes ingest.
    Ready,
    /// Still replaying the write-ahead log after a start: ingest waits.
    Replaying,
    /// Read-only: the disk is full; queries are served, ingest is refused
    /// until space is freed.
    DiskFull,
    /// The replay failed; the owner stops.
    Failed(String),
}

impl Readiness {
    /// What a readiness probe answers: `Ok` when ready, the reason otherwise.
    pub fn explain(&self) -> Result<&'static str, String> {
        match self {
            Readiness::Ready => Ok("ready"),
            Readiness::Replaying => Err(
                "not ready: replaying the write-ahead log (ingest waits until it is done)".into(),
            ),
            Readiness::DiskFull => Err(format!("not ready: {DISK_FULL}")),
            Readiness::Failed(error) => Err(format!(
                "not ready: replaying the write-ahead log failed: {error}"
            )),
        }
    }
}

#[derive(Debug, Clone)]
enum StartupState {
    Replaying,
    Done,
    Failed(String),
}

/// The start-up replay's progress, shared by the indexer that runs it, the
/// receivers that wait for it and the health probes; and which of the
/// pipeline's threads has stopped.
#[derive(Debug)]
struct Startup {
    /// Mirrors `state` being `Done`, for ingest's lock-free check.
    done: AtomicBool,
    state: Mutex<StartupState>,
    finished: Condvar,
    stopped_thread: Mutex<Option<&'static str>>,
}

impl Default for Startup {
    fn default() -> Startup {
        Startup {
            done: AtomicBool::new(false),
            state: Mutex::new(StartupState::Replaying),
            finished: Condvar::new(),
            stopped_thread: Mutex::new(None),
        }
    }
}

/// Records, when dropped (the thread returned or unwound), that a pipeline
/// thread stopped.
struct ThreadAlive<'a> {
    startup: &'a Startup,
    thread: &'static str,
}

impl<'a> ThreadAlive<'a> {
    fn new(startup: &'a Startup, thread: &'static str) -> ThreadAlive<'a> {
        ThreadAlive { startup, thread }
    }
}

impl Drop for ThreadAlive<'_> {
    fn drop(&mut self) {
        let mut stopped = self
            .startup
            .stopped_thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stopped.get_or_insert(self.thread);
    }
}

impl Startup {
    fn stopped_thread(&self) -> Option<&'static str> {
        *self
            .stopped_thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn state(&self) -> StartupState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn finish(&self, outcome: Result<(), String>) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = match outcome {
            Ok(()) => StartupState::Done,
            Err(error) => StartupState::Failed(error),
        };
        self.done
            .store(matches!(*state, StartupState::Done), Ordering::Release);
        self.finished.notify_all();
    }

    fn wait(&self) -> Result<(), String> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            match &*state {
                StartupState::Replaying => {
                    state = self
                        .finished
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                StartupState::Done => return Ok(()),
                StartupState::Failed(error) => return Err(error.clone()),
            }
        }
    }
}

/// Replays what the stores have not committed and commits it; on a full
/// disk, starts read-only with what could not be indexed left in the WAL.
fn replay_at_start(
    log: &dyn DurableLog,
    logs: &LogStore,
    spans: &SpanStore,
    disk: &DiskSpace,
) -> anyhow::Result<IndexerStart> {
    let from = logs.committed_position().min(spans.committed_position());
    let replayed = replay(log, from, logs, spans);
    let end = log.end().position(PARTITION);
    // Everything replayed is committed: the WAL below its end is no
    // longer needed. Nothing replayed, nothing to commit (a commit
    // writes even then, which a full disk refuses).
    let indexed = replayed.and_then(|replayed| {
        if replayed > 0 {
            tracing::info!(batches = replayed, "replayed write-ahead log");
            commit_stores(logs, spans, end)?;
        }
        Ok(())
    });
    let indexed = match indexed {
        Err(error) if is_disk_full(&error) => {
            // The reserve makes room for this very commit.
            disk.mark_full(&error);
            recover(log, logs, spans, from, end).and_then(|()| commit_stores(logs, spans, end))
        }
        other => other,
    };
    match indexed {
        Ok(()) => {
            log.remove_below(&Checkpoint::single(end))?;
            Ok(IndexerStart {
                committed: end,
                added_up_to: end,
                needs_recovery: false,
            })
        }
        Err(error) if is_disk_full(&error) => {
            // Start anyway: queries are served, ingest is refused, and
            // the indexer adds the WAL's tail once there is room.
            disk.mark_full(&error);
            tracing::error!(
                error = format!("{error:#}"),
                from,
                to = end,
                "acknowledged records cannot be indexed on the full disk; they stay in the write-ahead log until space is freed"
            );
            Ok(IndexerStart {
                committed: from,
                added_up_to: end,
                needs_recovery: true,
            })
        }
        Err(error) => Err(error),
    }
}

/// Whether `error` (or what caused it) is a full disk or an exhausted quota.
/// tantivy's errors keep the I/O error only in their text, so the text is
/// checked too.
fn is_disk_full(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io_full = cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
        });
        let text = cause.to_string();
        io_full
            || text.contains("No space left on device")
            || text.contains("os error 28")
            || text.contains("Disk quota exceeded")
    })
}

/// The disk's state as the pipeline sees it: full (read-only) or not, and
/// the reserve file that keeps room for committing acknowledged records.
struct DiskSpace {
    reserve: DiskReserve,
    full: AtomicBool,
}

impl DiskSpace {
    /// Writes the reserve (if it is not there yet); a disk without room
    /// for it starts read-only.
    fn open(reserve: DiskReserve) -> DiskSpace {
        let disk = DiskSpace {
            reserve,
            full: AtomicBool::new(false),
        };
        if let Err(error) = disk.reserve.take() {
            disk.full.store(true, Ordering::Release);
            tracing::warn!(
                %error,
                reserve_bytes = disk.reserve.bytes(),
                "the disk is full (no room for the disk reserve): starting read-only, ingest is refused until space is freed"
            );
        }
        disk
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// The disk is full: refuse ingest and free the reserve for the indexer.
    fn mark_full(&self, error: &anyhow::Error) {
        self.reserve.release();
        if !self.full.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = format!("{error:#}"),
                "the disk is full: ingest is refused until space is freed, queries are still served"
            );
        }
    }

    /// While full: takes the reserve back if there is room for it again,
    /// and then accepts ingest.
    fn try_recover(&self) {
        if !self.is_full() {
            return;
        }
        match self.reserve.take() {
            Ok(()) => {
                self.full.store(false, Ordering::Release);
                tracing::info!("disk space is available again: accepting ingest");
            }
            Err(error) => tracing::debug!(%error, "the disk is still full"),
        }
    }
}

/// Feeds every WAL entry from `from` on (what the stores have not
/// committed) into them; returns how many entries it read.
fn replay(
    log: &dyn DurableLog,
    from: u64,
    logs: &LogStore,
    spans: &SpanStore,
) -> anyhow::Result<usize> {
    let mut replayed = 0;
    log.replay(&Checkpoint::single(from), &mut |entry| {
        let batch = match Batch::decode(&entry.payload) {
            Ok(batch) => batch,
            Err(error) => {
                // A checksummed entry that does not decode was written by an
                // incompatible version: skip it loudly rather than refuse to start.
                tracing::error!(position = entry.position, %error, "skipping undecodable wal entry");
                return Ok(());
            }
        };
        replayed += 1;
        match &batch {
            Batch::Logs(records) => logs.add(entry.position, records),
            Batch::Spans(batch_spans) => spans.add(entry.position, batch_spans),
        }
    })
    .context("failed to replay the write-ahead log")?;
    Ok(replayed)
}

fn commit_stores(logs: &LogStore, spans: &SpanStore, position: u64) -> anyhow::Result<()> {
    logs.commit(position)
        .context("failed to commit the log store")?;
    spans
        .commit(position)
        .context("failed to commit the span store")?;
    Ok(())
}

/// Default of [`PipelineConfig::commit_items`].
pub const DEFAULT_COMMIT_ITEMS: usize = 500_000;

/// When the indexer commits: every `interval`, or sooner once `items`
/// records and spans wait uncommitted.
#[derive(Clone, Copy)]
struct CommitDue {
    interval: Duration,
    items: usize,
}

/// Largest number of batches the writer appends before one fsync.
const MAX_BATCHES_PER_SYNC: usize = 256;

fn write_loop(
    log: &dyn DurableLog,
    mut pending: mpsc::Receiver<Pending>,
    to_indexer: SyncSender<Indexable>,
    metrics: &dyn PipelineMetrics,
    disk: &DiskSpace,
) {
    let mut group = Vec::with_capacity(MAX_BATCHES_PER_SYNC);
    while let Some(first) = pending.blocking_recv() {
        group.push(first);
        while group.len() < MAX_BATCHES_PER_SYNC {
            match pending.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut appended = Vec::with_capacity(group.len());
        for mut item in group.drain(..) {
            if disk.is_full() {
                // Not even tried: what the disk still takes is the indexer's.
                let _ = item.acknowledge.send(Err(DISK_FULL.into()));
                continue;
            }
            let encoded = std::mem::take(&mut item.encoded);
            match log.append(PARTITION, encoded.payload.as_bytes()) {
                Ok(position) => {
                    metrics.wal_appended_bytes(encoded.payload.len());
                    appended.push((position, item, encoded));
                }
                Err(error) => {
                    let error = anyhow::Error::from(error);
                    if is_disk_full(&error) {
                        disk.mark_full(&error);
                        let _ = item.acknowledge.send(Err(DISK_FULL.into()));
                    } else {
                        tracing::error!(%error, "failed to append to the write-ahead log");
                        let _ = item.acknowledge.send(Err(error.to_string()));
                    }
                }
            }
        }
        if appended.is_empty() {
            continue;
        }
        if let Err(error) = log.sync() {
            // Not durable, so not acknowledged; the entries may still be
            // replayed after a restart, which at-least-once senders tolerate.
            let error = anyhow::Error::from(error);
            if is_disk_full(&error) {
                disk.mark_full(&error);
            } else {
                tracing::error!(%error, "failed to fsync the write-ahead log");
            }
            for (_, item, _) in appended {
                let _ = item.acknowledge.send(Err(error.to_string()));
            }
            continue;
        }
        for (position, item, encoded) in appended {
            let Pending {
                batch,
                permit,
                acknowledge,
                ..
            } = item;
            metrics.ingested(&batch);
            let _ = acknowledge.send(Ok(()));
            // Blocks while the indexer is behind: the queue in front fills up
            // and receivers answer "busy".
            if to_indexer
                .send(Indexable {
                    position,
                    batch,
                    encoded,
                    _permit: permit,
                })
                .is_err()
            {
                tracing::error!(
                    "indexer stopped; batches stay in the write-ahead log for the next start"
                );
                return;
            }
        }
    }
}

/// Where the indexer starts: what is committed, what is in the WAL, and
/// whether the WAL's tail still has to be added (it could not be at start).
struct IndexerStart {
    committed: u64,
    added_up_to: u64,
    needs_recovery: bool,
}

/// Longest wait between two attempts of a failing indexer.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// Whether indexing is failing: the first failure is logged as an error,
/// the retries after it only at debug level, and the first success after
/// them once more. Retries back off (doubling up to [`MAX_RETRY_BACKOFF`]):
/// on a full disk each one re-reads the WAL's tail for nothing.
#[derive(Default)]
struct Failing {
    since: Option<Instant>,
    failures: u32,
    next_retry: Option<Instant>,
}

impl Failing {
    fn failed(&mut self, what: &str, error: &anyhow::Error) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::error!(error = format!("{error:#}"), "{what}; retrying");
        } else {
            tracing::debug!(error = format!("{error:#}"), "{what}");
        }
        let backoff = Duration::from_millis(250)
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_RETRY_BACKOFF);
        self.failures += 1;
        self.next_retry = Some(Instant::now() + backoff);
    }

    fn may_retry(&self) -> bool {
        self.next_retry.is_none_or(|at| Instant::now() >= at)
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.next_retry = None;
        if let Some(since) = self.since.take() {
            tracing::info!(
                failing_for = ?since.elapsed(),
                "indexing resumed: acknowledged records are searchable again"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn index_loop(
    log: &dyn DurableLog,
    logs: &LogStore,
    spans: &SpanStore,
    indexable: Receiver<Indexable>,
    commit: CommitDue,
    start: IndexerStart,
    metrics: &dyn PipelineMetrics,
    disk: &DiskSpace,
) {
    let mut committed = start.committed;
    let mut added_up_to = start.added_up_to;
    let mut uncommitted: Vec<Indexable> = Vec::new();
    let mut uncommitted_items = 0;
    let mut last_commit = Instant::now();
    let mut last_probe = Instant::now();
    let mut failing = Failing::default();
    // Set when documents added since the last commit may be gone (a failed
    // add or commit drops them), or were never added (a start on a full
    // disk): they must come back from the WAL before the next commit, or
    // that commit would record a position past them.
    let mut needs_recovery = start.needs_recovery;
    loop {
        let wait = commit.interval.saturating_sub(last_commit.elapsed());
        let stopped = match indexable.recv_timeout(wait) {
            Ok(mut item) => {
                // Counted before the records move out of the batch.
                let items = item.batch.len();
                if !needs_recovery {
                    let sources = item.encoded.sources();
                    let result = match &mut item.batch {
                        // The records move into the documents; the permit stays.
                        Batch::Logs(records) => logs.add_encoded(
                            item.position,
                            std::mem::take(records).into_iter().zip(sources),
                        ),
                        Batch::Spans(batch_spans) => spans.add_encoded(
                            item.position,
                            std::mem::take(batch_spans).into_iter().zip(sources),
                        ),
                    };
                    if let Err(error) = result {
                        let error = anyhow::Error::from(error)
                            .context(format!("failed to index batch at {}", item.position));
                        if is_disk_full(&error) {
                            disk.mark_full(&error);
                        }
                        failing.failed("failed to index a batch", &error);
                        needs_recovery = true;
                    }
                }
                // While recovering, the batch is added back from the WAL
                // with the others.
                added_up_to = item.position + 1;
                // Keep the permit until the commit: memory stays charged while
                // the documents sit in the tantivy writers.
                uncommitted_items += items;
                uncommitted.push(item);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // Commit by time, or by size so a burst does not wait for the clock.
        let due = stopped
            || last_commit.elapsed() >= commit.interval
            || uncommitted_items >= commit.items;
        if due && needs_recovery && (stopped || failing.may_retry()) {
            match recover(log, logs, spans, committed, added_up_to) {
                Ok(()) => needs_recovery = false,
                Err(error) => {
                    if is_disk_full(&error) {
                        disk.mark_full(&error);
                    }
                    failing.failed("failed to re-index from the write-ahead log", &error);
                }
            }
        }
        if due && !needs_recovery && added_up_to > committed {
            let started = Instant::now();
            match commit_stores(logs, spans, added_up_to) {
                Ok(()) => {
                    committed = added_up_to;
                    uncommitted.clear();
                    uncommitted_items = 0;
                    metrics.committed(started.elapsed());
                    failing.succeeded();
                    if let Err(error) = log.remove_below(&Checkpoint::single(committed)) {
                        tracing::warn!(%error, "failed to remove indexed wal segments");
                    }
                }
                Err(error) => {
                    if is_disk_full(&error) {
                        disk.mark_full(&error);
                    }
                    failing.failed("failed to commit the indexes", &error);
                    needs_recovery = true;
                }
            }
        }
        if due {
            last_commit = Instant::now();
        }
        // Read-only: is there room again? Not while the indexer still needs
        // the room it has.
        if disk.is_full() && !needs_recovery && last_probe.elapsed() >= DISK_PROBE_INTERVAL {
            last_probe = Instant::now();
            disk.try_recover();
        }
        if stopped {
            return;
        }
    }
}

/// Drops what the stores hold uncommitted and adds the WAL entries in
/// `[from, to)` again. Entries at or past `to` are still on their way through
/// the channel and must not be added twice.
fn recover(
    log: &dyn DurableLog,
    logs: &LogStore,
    spans: &SpanStore,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    tracing::debug!(from, to, "re-indexing batches from the write-ahead log");
    logs.rollback();
    spans.rollback();
    log.replay(&Checkpoint::single(from), &mut |entry| {
        if entry.position >= to {
            return Ok(());
        }
        match Batch::decode(&entry.payload) {
            Ok(Batch::Logs(records)) => logs.add(entry.position, &records),
            Ok(Batch::Spans(batch_spans)) => spans.add(entry.position, &batch_spans),
            Err(error) => {
                tracing::error!(position = entry.position, %error, "skipping undecodable wal entry");
                Ok(())
            }
        }
    })
    .context("failed to re-read the write-ahead log")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests read the stores, not the counters.
    struct NoMetrics;

    impl PipelineMetrics for NoMetrics {
        fn ingested(&self, _: &Batch) {}
        fn wal_appended_bytes(&self, _: usize) {}
        fn committed(&self, _: Duration) {}
    }
    use sightline_store::wal::Wal;
    use sightline_store::{LogQuery, LogRecord};
    use std::path::Path;

    fn record(body: &str) -> LogRecord {
        LogRecord {
            timestamp: 1_700_000_000_000_000_000,
            body: body.into(),
            service: "test".into(),
            ..LogRecord::default()
        }
    }

    fn open(dir: &Path) -> (Arc<LogStore>, Arc<SpanStore>) {
        (
            Arc::new(LogStore::open(&dir.join("logs")).unwrap()),
            Arc::new(SpanStore::open(&dir.join("spans")).unwrap()),
        )
    }

    fn count(logs: &LogStore, query: &str) -> usize {
        logs.search(&LogQuery {
            query: query.into(),
            limit: 1000,
            ..LogQuery::default()
        })
        .unwrap()
        .total_hits
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wal_entries_never_committed_are_replayed_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        // What a collector killed after acknowledging and before committing leaves behind.
        {
            let mut wal = Wal::open(&dir.path().join("wal"), wal::DEFAULT_SEGMENT_BYTES).unwrap();
            for i in 0..5 {
                let batch = Batch::Logs(vec![record(&format!("acked{i}"))]);
                wal.append(&serde_json::to_vec(&batch).unwrap()).unwrap();
            }
            wal.sync().unwrap();
        }
        for _restart in 0..2 {
            let (logs, spans) = open(dir.path());
            let (pipeline, threads) = Pipeline::start(
                PipelineConfig::new(dir.path().join("wal")),
                logs.clone(),
                spans,
                Arc::new(NoMetrics),
            )
            .unwrap();
            assert_eq!(count(&logs, "acked*"), 5, "every acknowledged record, once");
            drop(pipeline);
            threads.join();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_become_searchable_and_wal_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, spans) = open(dir.path());
        let mut config = PipelineConfig::new(dir.path().join("wal"));
        config.commit_interval = Duration::from_millis(50);
        config.wal_segment_bytes = 1024;
        let (pipeline, threads) =
            Pipeline::start(config, logs.clone(), spans, Arc::new(NoMetrics)).unwrap();
        for i in 0..50 {
            pipeline
                .ingest(
                    Batch::Logs(vec![record(&format!("line{i} {}", "x".repeat(100)))]),
                    200,
                )
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(&logs, "") < 50 {
            assert!(Instant::now() < deadline, "records never became searchable");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(pipeline);
        threads.join();
        let segments = std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .filter(|entry| {
                let name = entry.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with("wal-")
            })
            .count();
        assert_eq!(
            segments, 1,
            "indexed segments are removed, the current one stays"
        );
    }

    /// A burst commits by size, without waiting for the interval: logs and
    /// spans alike (their items move out of the batch as they are added,
    /// and were once counted after that, as none).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_commits_by_size_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, spans) = open(dir.path());
        let mut config = PipelineConfig::new(dir.path().join("wal"));
        config.commit_interval = Duration::from_secs(3600);
        config.commit_items = 10;
        let (pipeline, threads) =
            Pipeline::start(config, logs.clone(), spans.clone(), Arc::new(NoMetrics)).unwrap();
        let records = (0..12).map(|i| record(&format!("burst{i}"))).collect();
        pipeline.ingest(Batch::Logs(records), 200).await.unwrap();
        let batch_spans = (0..12)
            .map(|i| sightline_store::Span {
                trace_id: format!("{i:032x}"),
                span_id: format!("{i:016x}"),
                name: "op".into(),
                service: "svc".into(),
                ..Default::default()
            })
            .collect();
        pipeline
            .ingest(Batch::Spans(batch_spans), 200)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let last_trace = format!("{:032x}", 11);
        while count(&logs, "burst*") < 12 || spans.summary(&last_trace).unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "a burst over commit_items waited for the hour-long interval"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let trace = spans.trace(&format!("{:032x}", 3)).unwrap();
        assert_eq!(trace.len(), 1);
        assert_eq!(trace[0].span_id, format!("{:016x}", 3));
        assert_eq!(
            spans
                .summary(&format!("{:032x}", 3))
                .unwrap()
                .unwrap()
                .span_count,
            1
        );
        drop(pipeline);
        threads.join();
    }

    #[test]
    fn a_full_disk_is_recognised_through_the_store_and_tantivy_errors() {
        let enospc = || std::io::Error::from_raw_os_error(28);
        let wal_error = anyhow::Error::from(sightline_store::StoreError::Io(enospc()));
        assert!(is_disk_full(&wal_error));
        let commit_error = anyhow::Error::from(sightline_store::StoreError::Index(
            tantivy::TantivyError::IoError(Arc::new(enospc())),
        ))
        .context("failed to commit the log store");
        assert!(is_disk_full(&commit_error));
        let other = anyhow::Error::from(std::io::Error::from_raw_os_error(13));
        assert!(!is_disk_full(&other));
    }

    #[test]
    fn the_reserve_is_written_once_and_given_back_when_the_disk_fills() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskSpace::open(DiskReserve::open(dir.path(), MIN_DISK_RESERVE_BYTES).unwrap());
        let reserve = dir.path().join(DiskReserve::FILE_NAME);
        assert!(!disk.is_full());
        assert_eq!(
            std::fs::metadata(&reserve).unwrap().len(),
            MIN_DISK_RESERVE_BYTES
        );
        disk.mark_full(&anyhow::anyhow!("no space left on device"));
        assert!(disk.is_full());
        assert!(!reserve.exists(), "the reserve is the indexer's now");
        disk.try_recover();
        assert!(!disk.is_full());
        assert!(reserve.exists());
    }

    /// A pipeline whose whole budget of 1000 bytes is held, as batches
    /// not yet indexed would hold it.
    fn with_budget_held(
        dir: &Path,
        budget_wait: Duration,
    ) -> (Pipeline, PipelineThreads, OwnedSemaphorePermit) {
        let (logs, spans) = open(dir);
        let mut config = PipelineConfig::new(dir.join("wal"));
        config.memory_budget_bytes = 1000;
        config.budget_wait = budget_wait;
        let (pipeline, threads) =
            Pipeline::start(config, logs, spans, Arc::new(NoMetrics)).unwrap();
        let held = pipeline
            .budget
            .budget
            .clone()
            .try_acquire_many_owned(1000)
            .unwrap();
        (pipeline, threads, held)
    }

    /// Ingests one record, expecting `Busy`; returns how long the answer
    /// took on the test's paused clock, where time moves only by the
    /// timers that fired.
    async fn busy_after(pipeline: &Pipeline) -> Duration {
        let started = tokio::time::Instant::now();
        let error = pipeline
            .ingest(Batch::Logs(vec![record("x")]), 10)
            .await
            .unwrap_err();
        assert!(matches!(error, IngestError::Busy), "{error}");
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_answers_busy_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let wait = Duration::from_secs(2);
        let (pipeline, _threads, held) = with_budget_held(dir.path(), wait);
        assert_eq!(busy_after(&pipeline).await, wait);
        drop(held);
        pipeline
            .ingest(Batch::Logs(vec![record("x")]), 10)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_batch_waits_for_the_indexer_to_free_room() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, _threads, held) = with_budget_held(dir.path(), Duration::from_secs(600));
        let waiting = tokio::spawn({
            let pipeline = pipeline.clone();
            async move {
                pipeline
                    .ingest(Batch::Logs(vec![record("waited")]), 10)
                    .await
            }
        });
        let room = &pipeline.budget;
        while room.waiting.available_permits() == room.waiting_bytes && !waiting.is_finished() {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "admitted while the budget was held");
        drop(held);
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_refused_at_once_when_the_waiting_room_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let (pipeline, _threads, _held) = with_budget_held(dir.path(), Duration::from_secs(600));
        let room = &pipeline.budget;
        let _room = room
            .waiting
            .clone()
            .try_acquire_many_owned(u32::try_from(room.waiting_bytes).unwrap())
            .unwrap();
        assert_eq!(
            busy_after(&pipeline).await,
            Duration::ZERO,
            "refused without waiting"
        );
    }

    /// A durable log that is not a file: positions start at 1000 and step
    /// by 1, entries live in memory ("durable" once synced).
    #[derive(Default)]
    struct MemoryLog {
        entries: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
        /// Entries made durable by the last sync.
        synced: std::sync::atomic::AtomicUsize,
        removed_below: std::sync::atomic::AtomicU64,
    }

    impl DurableLog for MemoryLog {
        fn partitions(&self) -> Vec<sightline_store::PartitionId> {
            vec![PARTITION]
        }

        fn append(&self, partition: u32, payload: &[u8]) -> sightline_store::Result<u64> {
            assert_eq!(partition, PARTITION);
            let mut entries = self.entries.lock().unwrap();
            let position = 1000 + entries.len() as u64;
            entries.push((position, payload.to_vec()));
            Ok(position)
        }

        fn sync(&self) -> sightline_store::Result<()> {
            let entries = self.entries.lock().unwrap();
            self.synced.store(entries.len(), Ordering::Release);
            Ok(())
        }

        fn end(&self) -> Checkpoint {
            Checkpoint::single(1000 + self.entries.lock().unwrap().len() as u64)
        }

        fn replay(
            &self,
            from: &Checkpoint,
            visit: &mut dyn FnMut(sightline_store::LogEntry) -> sightline_store::Result<()>,
        ) -> sightline_store::Result<()> {
            let synced: Vec<_> = {
                let entries = self.entries.lock().unwrap();
                entries[..self.synced.load(Ordering::Acquire)].to_vec()
            };
            for (position, payload) in synced {
                if position >= from.position(PARTITION) {
                    visit(sightline_store::LogEntry {
                        partition: PARTITION,
                        position,
                        payload,
                    })?;
                }
            }
            Ok(())
        }

        fn remove_below(&self, checkpoint: &Checkpoint) -> sightline_store::Result<usize> {
            self.removed_below
                .fetch_max(checkpoint.position(PARTITION), Ordering::AcqRel);
            Ok(0)
        }

        fn disk_bytes(&self) -> sightline_store::Result<u64> {
            Ok(0)
        }
    }

    /// A [`MemoryLog`] whose replay waits for a signal, or fails.
    struct SlowLog {
        inner: MemoryLog,
        replay_may_go: Mutex<std::sync::mpsc::Receiver<()>>,
        replay_fails: bool,
    }

    impl DurableLog for SlowLog {
        fn partitions(&self) -> Vec<sightline_store::PartitionId> {
            self.inner.partitions()
        }
        fn append(&self, partition: u32, payload: &[u8]) -> sightline_store::Result<u64> {
            self.inner.append(partition, payload)
        }
        fn sync(&self) -> sightline_store::Result<()> {
            self.inner.sync()
        }
        fn end(&self) -> Checkpoint {
            self.inner.end()
        }
        fn replay(
            &self,
            from: &Checkpoint,
            visit: &mut dyn FnMut(sightline_store::LogEntry) -> sightline_store::Result<()>,
        ) -> sightline_store::Result<()> {
            let _ = self.replay_may_go.lock().unwrap().recv();
            if self.replay_fails {
                return Err(sightline_store::StoreError::Io(std::io::Error::other(
                    "segment 7 is unreadable",
                )));
            }
            self.inner.replay(from, visit)
        }
        fn remove_below(&self, checkpoint: &Checkpoint) -> sightline_store::Result<usize> {
            self.inner.remove_below(checkpoint)
        }
        fn disk_bytes(&self) -> sightline_store::Result<u64> {
            self.inner.disk_bytes()
        }
    }

    /// While the WAL replays the pipeline is alive but not ready and ingest
    /// is refused as retryable; once replayed it is ready and takes ingest.
    /// A replay that fails leaves it not ready and not alive, with the
    /// reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readiness_waits_for_the_replay_and_liveness_for_the_threads() {
        for replay_fails in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (logs, spans) = open(dir.path());
            let (go, replay_may_go) = std::sync::mpsc::channel();
            let log = Arc::new(SlowLog {
                inner: MemoryLog::default(),
                replay_may_go: Mutex::new(replay_may_go),
                replay_fails,
            });
            let (pipeline, threads) = Pipeline::spawn_with_log(
                PipelineConfig::new(dir.path().join("wal")),
                log,
                logs.clone(),
                spans,
                Arc::new(NoMetrics),
            )
            .unwrap();
            assert_eq!(pipeline.readiness(), Readiness::Replaying);
            assert!(
                pipeline
                    .readiness()
                    .explain()
                    .unwrap_err()
                    .contains("replaying the write-ahead log")
            );
            assert_eq!(pipeline.liveness(), Ok(()));
            let refused = pipeline
                .ingest(Batch::Logs(vec![record("early")]), 10)
                .await
                .unwrap_err();
            assert!(matches!(refused, IngestError::Starting), "{refused}");

            go.send(()).unwrap();
            let waiting = pipeline.clone();
            let started = tokio::task::spawn_blocking(move || waiting.wait_started())
                .await
                .unwrap();
            if replay_fails {
                let error = started.unwrap_err().to_string();
                assert!(error.contains("segment 7 is unreadable"), "{error}");
                assert!(
                    matches!(pipeline.readiness(), Readiness::Failed(reason) if reason.contains("segment 7"))
                );
                // The indexer reports the failure, then its thread ends:
                // liveness follows a moment after readiness.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while pipeline.liveness().is_ok() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                assert!(pipeline.liveness().unwrap_err().contains("indexer stopped"));
            } else {
                started.unwrap();
                assert_eq!(pipeline.readiness(), Readiness::Ready);
                assert_eq!(pipeline.readiness().explain(), Ok("ready"));
                pipeline
                    .ingest(Batch::Logs(vec![record("after")]), 10)
                    .await
                    .unwrap();
                assert_eq!(pipeline.liveness(), Ok(()));
            }
            drop(pipeline);
            threads.join();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_runs_on_any_durable_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(MemoryLog::default());
        let mut config = PipelineConfig::new(dir.path().join("wal"));
        config.commit_interval = Duration::from_millis(50);
        {
            let (logs, spans) = open(dir.path());
            let (pipeline, threads) = Pipeline::start_with_log(
                config.clone(),
                log.clone(),
                logs.clone(),
                spans.clone(),
                Arc::new(NoMetrics),
            )
            .unwrap();
            for i in 0..3 {
                pipeline
                    .ingest(Batch::Logs(vec![record(&format!("entry{i}"))]), 100)
                    .await
                    .unwrap();
            }
            drop(pipeline);
            threads.join();
            assert_eq!(count(&logs, "entry*"), 3);
            assert_eq!(logs.committed_position(), 1003, "positions are the log's");
        }
        assert_eq!(
            log.removed_below.load(Ordering::Acquire),
            1003,
            "the log may drop what the stores committed"
        );
        // Entries synced but never committed (a crash) come back from the log once.
        log.append(
            PARTITION,
            Batch::Logs(vec![record("unindexed")])
                .encode()
                .unwrap()
                .payload
                .as_bytes(),
        )
        .unwrap();
        log.sync().unwrap();
        for _restart in 0..2 {
            let (logs, spans) = open(dir.path());
            let (pipeline, threads) = Pipeline::start_with_log(
                config.clone(),
                log.clone(),
                logs.clone(),
                spans,
                Arc::new(NoMetrics),
            )
            .unwrap();
            assert_eq!(count(&logs, "entry* OR unindexed"), 4);
            drop(pipeline);
            threads.join();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_data_directory_of_wal_format_1_is_upgraded_without_loss_or_repeat() {
        let dir = tempfile::tempdir().unwrap();
        // What the previous version left: a format 1 segment (byte-offset
        // positions, no magic) of three batches, the first one committed
        // (the stores recorded the position after it, 1).
        // Format 2 frames the same way after its magic.
        let scratch = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(scratch.path(), wal::DEFAULT_SEGMENT_BYTES).unwrap();
            for i in 0..3 {
                let batch = Batch::Logs(vec![record(&format!("old{i}"))]);
                wal.append(batch.encode().unwrap().payload.as_bytes())
                    .unwrap();
            }
            wal.sync().unwrap();
        }
        let name = "wal-00000000000000000000.log";
        let format_2 = std::fs::read(scratch.path().join(name)).unwrap();
        let segment = &format_2[wal::SEGMENT_MAGIC.len()..];
        let old_end = segment.len() as u64;
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        std::fs::write(wal_dir.join(name), segment).unwrap();
        {
            let (logs, _) = open(dir.path());
            logs.add(0, &[record("old0")]).unwrap();
            logs.commit(1).unwrap();
        }
        let mut config = PipelineConfig::new(wal_dir.clone());
        config.commit_interval = Duration::from_millis(50);
        for restart in 0..2 {
            let (logs, spans) = open(dir.path());
            let (pipeline, threads) =
                Pipeline::start(config.clone(), logs.clone(), spans, Arc::new(NoMetrics)).unwrap();
            assert_eq!(count(&logs, "old*"), 3, "every old batch, once");
            pipeline
                .ingest(Batch::Logs(vec![record(&format!("new{restart}"))]), 100)
                .await
                .unwrap();
            drop(pipeline);
            threads.join();
            assert_eq!(count(&logs, "new*"), restart + 1);
            assert!(
                logs.committed_position() > old_end,
                "new positions come after the old log's end"
            );
        }
        let segments: Vec<String> = std::fs::read_dir(&wal_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("wal-"))
            .collect();
        assert_eq!(
            segments,
            [format!("wal-{old_end:020}.log")],
            "the format 1 segment is gone once committed"
        );
    }
}
