//! The split cache: published splits open for queries, at most
//! `split_cache_bytes` of them, the least recently used going first.
//!
//! A split is opened one of two ways (`split_reads`). `ranges` (the
//! default) fetches its hotcache and reads the rest by range when queries
//! need it ([`crate::remote`]; the fetched chunks are kept in a second
//! bounded cache, `range_cache_bytes`); a split is then counted here at its
//! hotcache's size. `download` fetches the whole split onto the local disk
//! first, as does `ranges` for a split that has no hotcache. Splits this
//! node built itself are adopted from its disk either way.
//!
//! A split is immutable, so a cached copy never goes stale. Each download
//! lands in a directory of its own; a split evicted while a query still
//! reads it stays until that query lets go of it (its files are removed
//! when the last handle drops). The directory is emptied at start: what a
//! previous process left is not trusted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use sightline_store::{LogStore, SpanStore, Writers};
use tokio::sync::OnceCell;

use crate::metastore::SplitRow;
use crate::remote::{ChunkCache, Hotcache, RemoteDirectory};
use crate::splits::SplitStorage;
use sightline_store::files::StoreFiles;

/// A split open for reading.
pub struct OpenSplit {
    pub row: SplitRow,
    pub logs: LogStore,
    pub spans: SpanStore,
    /// Where its files are on the local disk; `None` when it is read by
    /// range from object storage.
    dir: Option<PathBuf>,
    /// Its size on the local disk (its hotcache's when read by range).
    bytes: u64,
}

impl Drop for OpenSplit {
    fn drop(&mut self) {
        // Out of the cache and no query holds it any more. (The stores'
        // files are mapped; unlinking mapped files is fine on Unix.)
        let Some(dir) = &self.dir else {
            return;
        };
        if let Err(error) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), %error, "could not remove an evicted split");
        }
    }
}

impl OpenSplit {
    /// Whether it is read by range from object storage.
    pub fn by_range(&self) -> bool {
        self.dir.is_none()
    }
}

/// How a node opens the splits it reads (`cluster.split_reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitReads {
    /// The hotcache, then byte ranges as queries need them.
    #[default]
    Ranges,
    /// The whole split, onto the local disk.
    Download,
}

/// The split cache's settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Bytes of open splits (downloaded files, or hotcaches).
    pub split_bytes: u64,
    pub reads: SplitReads,
    /// Bytes of chunks read by range.
    pub range_bytes: u64,
}

/// Counters of the split cache (self-metrics).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub downloaded_bytes: AtomicU64,
    /// Bytes of the splits the cache holds now.
    pub bytes: AtomicU64,
    pub splits: AtomicU64,
    /// Range reads of split files and their bytes (`split_reads: ranges`).
    pub range_requests: AtomicU64,
    pub range_bytes: AtomicU64,
    /// Bytes of chunks the range cache holds now, and chunks it evicted.
    pub range_cache_bytes: AtomicU64,
    pub range_cache_evictions: AtomicU64,
    /// Live tail streams this node serves now, ever served, and the
    /// batches of entries they skipped for being too slow.
    pub tail_streams: AtomicU64,
    pub tail_streams_total: AtomicU64,
    pub tail_skipped: AtomicU64,
    /// Leaf requests this node answered for other nodes' queries.
    pub leaf_requests: AtomicU64,
    /// Leaf requests of this node's queries that failed and were read here.
    pub leaf_retries: AtomicU64,
}

impl CacheStats {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "sightline_cluster_split_cache_hits_total",
                "counter",
                "Split opens answered from the local split cache.",
                load(&self.hits),
            ),
            (
                "sightline_cluster_split_cache_misses_total",
                "counter",
                "Split opens that fetched the split (or its hotcache) from object storage.",
                load(&self.misses),
            ),
            (
                "sightline_cluster_split_cache_evictions_total",
                "counter",
                "Splits evicted from the local split cache.",
                load(&self.evictions),
            ),
            (
                "sightline_cluster_split_cache_downloaded_bytes_total",
                "counter",
                "Bytes of splits (or hotcaches) fetched from object storage to open them.",
                load(&self.downloaded_bytes),
            ),
            (
                "sightline_cluster_split_range_requests_total",
                "counter",
                "Byte-range reads of split files from object storage.",
                load(&self.range_requests),
            ),
            (
                "sightline_cluster_split_range_bytes_total",
                "counter",
                "Bytes of split files read by range from object storage.",
                load(&self.range_bytes),
            ),
            (
                "sightline_cluster_split_range_cache_evictions_total",
                "counter",
                "Chunks of split files evicted from the range cache.",
                load(&self.range_cache_evictions),
            ),
            (
                "sightline_cluster_tail_streams_total",
                "counter",
                "Live tail streams this node served to roots.",
                load(&self.tail_streams_total),
            ),
            (
                "sightline_cluster_tail_skipped_total",
                "counter",
                "Batches of entries live tail streams skipped for being too slow.",
                load(&self.tail_skipped),
            ),
            (
                "sightline_cluster_tail_streams",
                "gauge",
                "Live tail streams this node serves now.",
                load(&self.tail_streams),
            ),
            (
                "sightline_cluster_leaf_requests_total",
                "counter",
                "Leaf requests this node answered for other nodes' queries.",
                load(&self.leaf_requests),
            ),
            (
                "sightline_cluster_leaf_retries_total",
                "counter",
                "Leaf requests of this node's queries that failed and were read here instead.",
                load(&self.leaf_retries),
            ),
            (
                "sightline_cluster_split_cache_bytes",
                "gauge",
                "Bytes of the splits the local split cache holds.",
                load(&self.bytes),
            ),
            (
                "sightline_cluster_split_range_cache_bytes",
                "gauge",
                "Bytes of split file chunks the range cache holds.",
                load(&self.range_cache_bytes),
            ),
            (
                "sightline_cluster_split_cache_splits",
                "gauge",
                "Splits the local split cache holds.",
                load(&self.splits),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

struct Slot {
    split: Arc<OnceCell<Arc<OpenSplit>>>,
    used: u64,
}

#[derive(Default)]
struct Slots {
    by_id: HashMap<String, Slot>,
    clock: u64,
}

/// Open splits on the local disk, bounded in bytes.
pub struct SplitCache {
    dir: PathBuf,
    max_bytes: u64,
    reads: SplitReads,
    chunks: Arc<ChunkCache>,
    storage: SplitStorage,
    slots: Mutex<Slots>,
    downloads: AtomicU64,
    pub(crate) stats: Arc<CacheStats>,
}

impl SplitCache {
    /// A cache in `dir` (emptied first).
    pub fn new(
        dir: &Path,
        settings: CacheSettings,
        storage: SplitStorage,
    ) -> anyhow::Result<SplitCache> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("failed to empty the split cache {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to make the split cache {}", dir.display()))?;
        let stats = Arc::new(CacheStats::default());
        Ok(SplitCache {
            dir: dir.to_path_buf(),
            max_bytes: settings.split_bytes,
            reads: settings.reads,
            chunks: Arc::new(ChunkCache::new(settings.range_bytes, stats.clone())),
            storage,
            slots: Mutex::new(Slots::default()),
            downloads: AtomicU64::new(0),
            stats,
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The split's slot, made if new, marked as just used.
    fn slot(&self, split_id: &str) -> Arc<OnceCell<Arc<OpenSplit>>> {
        let mut slots = self.slots();
        slots.clock += 1;
        let used = slots.clock;
        let slot = slots
            .by_id
            .entry(split_id.to_string())
            .or_insert_with(|| Slot {
                split: Arc::new(OnceCell::new()),
                used,
            });
        slot.used = used;
        slot.split.clone()
    }

    /// The split, from the cache or downloaded into it. Concurrent opens
    /// of one split download it once.
    pub async fn open(&self, row: &SplitRow) -> anyhow::Result<Arc<OpenSplit>> {
        let cell = self.slot(&row.split_id);
        if let Some(split) = cell.get() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(split.clone());
        }
        let loaded = cell.get_or_try_init(|| self.load(row)).await;
        match loaded {
            Ok(split) => {
                let split = split.clone();
                self.evict().await;
                Ok(split)
            }
            Err(error) => {
                let mut slots = self.slots();
                if slots
                    .by_id
                    .get(&row.split_id)
                    .is_some_and(|slot| !slot.split.initialized())
                {
                    slots.by_id.remove(&row.split_id);
                }
                Err(error)
            }
        }
    }

    /// Takes `local`, the directory of a split this node built and
    /// published, into the cache (moved, not copied), unless it is there.
    pub async fn adopt(&self, row: &SplitRow, local: PathBuf) -> anyhow::Result<()> {
        let cell = self.slot(&row.split_id);
        let dir = self.next_dir(row);
        let moved = tokio::fs::rename(&local, &dir).await;
        if let Err(error) = moved {
            let _ = tokio::fs::remove_dir_all(&local).await;
            return Err(error.into());
        }
        let adopted = cell
            .get_or_try_init(|| self.open_dir(row.clone(), dir.clone()))
            .await
            .map(drop);
        if !cell.initialized() || adopted.is_err() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        self.evict().await;
        adopted
    }

    fn next_dir(&self, row: &SplitRow) -> PathBuf {
        let n = self.downloads.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}-{n}", row.split_id))
    }

    async fn load(&self, row: &SplitRow) -> anyhow::Result<Arc<OpenSplit>> {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        if self.reads == SplitReads::Ranges
            && let Some(split) = self.open_remote(row).await?
        {
            return Ok(split);
        }
        let dir = self.next_dir(row);
        let downloaded = self.storage.download(&row.split_id, &dir).await;
        if let Err(error) = downloaded {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(error);
        }
        let opened = self.open_dir(row.clone(), dir).await?;
        self.stats
            .downloaded_bytes
            .fetch_add(opened.bytes, Ordering::Relaxed);
        Ok(opened)
    }

    /// Opens the split by range from object storage; `None` if it has no
    /// hotcache (written before splits had one).
    async fn open_remote(&self, row: &SplitRow) -> anyhow::Result<Option<Arc<OpenSplit>>> {
        let Some(bytes) = self.storage.hotcache(&row.split_id).await? else {
            return Ok(None);
        };
        let split_id = row.split_id.clone();
        let hotcache = Hotcache::parse(&bytes)
            .with_context(|| format!("split {split_id} has an unreadable hotcache"))?;
        let files: Vec<PathBuf> = hotcache.files().collect();
        let directory = RemoteDirectory::new(
            &split_id,
            self.storage.split_path(&split_id),
            self.storage.object_store(),
            hotcache,
            self.chunks.clone(),
            tokio::runtime::Handle::current(),
        );
        let (logs, spans) = tokio::task::spawn_blocking(move || {
            let root = StoreFiles::new(Box::new(directory), files);
            let label = PathBuf::from(format!("split {split_id}"));
            Ok::<_, anyhow::Error>((
                LogStore::open_read_only(&root.sub("logs"), &label.join("logs"))?,
                SpanStore::open_read_only(&root.sub("spans"), &label.join("spans"))?,
            ))
        })
        .await?
        .with_context(|| format!("split {} cannot be opened", row.split_id))?;
        self.stats
            .downloaded_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(Some(Arc::new(OpenSplit {
            row: row.clone(),
            logs,
            spans,
            dir: None,
            bytes: bytes.len() as u64,
        })))
    }

    /// Opens the split in `dir` (removed if it cannot be opened).
    async fn open_dir(&self, row: SplitRow, dir: PathBuf) -> anyhow::Result<Arc<OpenSplit>> {
        let opened = tokio::task::spawn_blocking(move || -> anyhow::Result<OpenSplit> {
            let bytes = sightline_store::dir_size(&dir);
            let open = || -> sightline_store::Result<(LogStore, SpanStore)> {
                Ok((
                    LogStore::open_with(&dir.join("logs"), Writers::Small)?,
                    SpanStore::open_with(&dir.join("spans"), Writers::Small)?,
                ))
            };
            match open() {
                Ok((logs, spans)) => Ok(OpenSplit {
                    row,
                    logs,
                    spans,
                    dir: Some(dir),
                    bytes,
                }),
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    Err(anyhow::Error::from(error)
                        .context(format!("split {} cannot be opened", row.split_id)))
                }
            }
        })
        .await??;
        Ok(Arc::new(opened))
    }

    /// Evicts the least recently used splits past the byte bound (the most
    /// recent one stays, however big).
    async fn evict(&self) {
        let evicted = {
            let mut slots = self.slots();
            let mut loaded: Vec<(u64, String, u64)> = slots
                .by_id
                .iter()
                .filter_map(|(id, slot)| {
                    let split = slot.split.get()?;
                    Some((slot.used, id.clone(), split.bytes))
                })
                .collect();
            let mut total: u64 = loaded.iter().map(|(_, _, bytes)| bytes).sum();
            loaded.sort();
            let mut evicted = Vec::new();
            let keep = loaded.len().saturating_sub(1);
            for (_, id, bytes) in loaded.into_iter().take(keep) {
                if total <= self.max_bytes {
                    break;
                }
                if let Some(slot) = slots.by_id.remove(&id) {
                    total -= bytes;
                    evicted.push(slot.split);
                }
            }
            self.stats.bytes.store(total, Ordering::Relaxed);
            self.stats
                .splits
                .store(slots.by_id.len() as u64, Ordering::Relaxed);
            evicted
        };
        if !evicted.is_empty() {
            self.stats
                .evictions
                .fetch_add(evicted.len() as u64, Ordering::Relaxed);
            // Removing files blocks.
            let _ = tokio::task::spawn_blocking(move || drop(evicted)).await;
        }
    }
}
