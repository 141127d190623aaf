//! Reading a split straight from object storage, by byte range, instead of
//! downloading it whole (Quickwit's hotcache is the model).
//!
//! When a split is cut, its stores are opened once through a directory
//! that records every byte range read ([`write_hotcache`]): what opening
//! the indexes and starting any query reads (meta files, footers, term
//! dictionary indexes, doc store indexes, fast field directories). Those
//! ranges, with every file's length, become the split's `hotcache` object.
//! A node opening the split fetches only that object (one GET, a few
//! percent of the split) and opens its stores through a [`RemoteDirectory`],
//! which serves the hotcache from memory and fetches anything else a query
//! reads (term dictionary blocks, postings, the doc store blocks of its
//! hits, the fast columns it aggregates) by range, in chunks kept in a
//! [`ChunkCache`] bounded in bytes (least recently used evicted first).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read as _, Seek as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use sightline_store::files::StoreFiles;
use sightline_store::{LogStore, SpanStore};
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    DirectoryLock, FileHandle, Lock, MmapDirectory, OwnedBytes, WatchCallback, WatchHandle,
    WritePtr,
};
use tantivy::{Directory, HasLen};

use crate::cache::CacheStats;
use crate::splits::SPLIT_FORMAT_VERSION;

/// The hotcache's object (and file) name inside a split.
pub const HOTCACHE_FILE: &str = "hotcache";
const MAGIC: &[u8; 8] = b"SLHOT001";
/// Ranges are fetched and cached in chunks of this many bytes, aligned.
const CHUNK: usize = 128 * 1024;
/// A range read that takes longer fails (the query then fails over).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The hotcache's header: every file's length and the ranges whose bytes
/// follow it, in this order.
#[derive(Serialize, Deserialize)]
struct Header {
    /// The split's format ([`crate::splits::SPLIT_FORMAT_VERSION`]).
    format_version: u32,
    files: BTreeMap<String, u64>,
    ranges: Vec<(String, u64, u64)>,
}

/// A split's hotcache, parsed.
pub struct Hotcache {
    files: HashMap<PathBuf, usize>,
    ranges: HashMap<PathBuf, Vec<(Range<usize>, OwnedBytes)>>,
}

impl Hotcache {
    /// Parses a hotcache object: `SLHOT001`, the header's length (u64,
    /// little endian), the header (JSON), the ranges' bytes.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<Hotcache> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .context("not a hotcache (no SLHOT001 at its start)")?;
        anyhow::ensure!(rest.len() >= 8, "the hotcache is cut short");
        let (length, rest) = rest.split_at(8);
        let length = u64::from_le_bytes(length.try_into()?) as usize;
        anyhow::ensure!(rest.len() >= length, "the hotcache's header is cut short");
        let (header, mut data) = rest.split_at(length);
        let header: Header =
            serde_json::from_slice(header).context("the hotcache's header is not readable")?;
        anyhow::ensure!(
            header.format_version <= SPLIT_FORMAT_VERSION,
            "the split has format {}, newer than this build's {SPLIT_FORMAT_VERSION}",
            header.format_version
        );
        let mut ranges: HashMap<PathBuf, Vec<(Range<usize>, OwnedBytes)>> = HashMap::new();
        for (file, start, end) in header.ranges {
            let length = end
                .checked_sub(start)
                .context("a hotcache range ends first")? as usize;
            anyhow::ensure!(data.len() >= length, "the hotcache's data is cut short");
            let (bytes, rest) = data.split_at(length);
            data = rest;
            ranges.entry(PathBuf::from(file)).or_default().push((
                start as usize..end as usize,
                OwnedBytes::new(bytes.to_vec()),
            ));
        }
        Ok(Hotcache {
            files: header
                .files
                .into_iter()
                .map(|(file, length)| (PathBuf::from(file), length as usize))
                .collect(),
            ranges,
        })
    }

    /// Every file of the split (but `split.json` and the hotcache).
    pub fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.files.keys().cloned()
    }

    /// `range` of `file`, if the hotcache holds all of it.
    fn get(&self, file: &Path, range: &Range<usize>) -> Option<OwnedBytes> {
        self.ranges.get(file)?.iter().find_map(|(held, bytes)| {
            (held.start <= range.start && range.end <= held.end)
                .then(|| bytes.slice(range.start - held.start..range.end - held.start))
        })
    }
}

/// Opens the split in `split_dir` as a reader would, recording every byte
/// range read, and writes them into `split_dir/hotcache`. Returns the
/// hotcache's size. Blocks.
pub fn write_hotcache(split_dir: &Path) -> anyhow::Result<u64> {
    let files: Vec<PathBuf> = crate::splits::list_files(split_dir)?
        .into_iter()
        .filter(|file| file != Path::new("split.json") && file != Path::new(HOTCACHE_FILE))
        .collect();
    let recording = Recording {
        inner: MmapDirectory::open(split_dir)?,
        reads: Arc::default(),
    };
    {
        let root = StoreFiles::new(Box::new(recording.clone()), files.clone());
        let label = split_dir;
        let logs = LogStore::open_read_only(&root.sub("logs"), &label.join("logs"))?;
        logs.warm_up()?;
        let spans = SpanStore::open_read_only(&root.sub("spans"), &label.join("spans"))?;
        spans.warm_up()?;
    }
    // Each file's ranges, sorted, overlapping and touching ones joined.
    let mut reads: BTreeMap<PathBuf, Vec<Range<usize>>> = BTreeMap::new();
    for (file, range) in recording
        .reads
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .drain(..)
    {
        reads.entry(file).or_default().push(range);
    }
    let mut header = Header {
        format_version: SPLIT_FORMAT_VERSION,
        files: BTreeMap::new(),
        ranges: Vec::new(),
    };
    let mut data = Vec::new();
    for file in &files {
        let length = std::fs::metadata(split_dir.join(file))?.len();
        header.files.insert(file.to_string_lossy().into(), length);
    }
    for (file, mut ranges) in reads {
        ranges.sort_by_key(|range| (range.start, range.end));
        let mut joined: Vec<Range<usize>> = Vec::new();
        for range in ranges {
            match joined.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => joined.push(range),
            }
        }
        let mut handle = std::fs::File::open(split_dir.join(&file))?;
        for range in joined {
            let mut bytes = vec![0; range.len()];
            handle.seek(io::SeekFrom::Start(range.start as u64))?;
            handle.read_exact(&mut bytes)?;
            data.extend_from_slice(&bytes);
            header.ranges.push((
                file.to_string_lossy().into(),
                range.start as u64,
                range.end as u64,
            ));
        }
    }
    let header = serde_json::to_vec(&header)?;
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    std::fs::write(split_dir.join(HOTCACHE_FILE), &out)?;
    Ok(out.len() as u64)
}

fn read_only(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{} is in a read-only split", path.display()),
    )
}

/// The writing half of a directory of a split: splits are never written,
/// so writes are refused, readers take no lock (no lock file either) and
/// there is nothing to watch.
macro_rules! read_only_writes {
    () => {
        fn delete(&self, path: &Path) -> Result<(), DeleteError> {
            Err(DeleteError::IoError {
                io_error: Arc::new(read_only(path)),
                filepath: path.to_path_buf(),
            })
        }
        fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
            Err(OpenWriteError::wrap_io_error(
                read_only(path),
                path.to_path_buf(),
            ))
        }
        fn atomic_write(&self, path: &Path, _data: &[u8]) -> io::Result<()> {
            Err(read_only(path))
        }
        fn sync_directory(&self) -> io::Result<()> {
            Ok(())
        }
        fn acquire_lock(&self, _lock: &Lock) -> Result<DirectoryLock, LockError> {
            Ok(DirectoryLock::from(Box::new(())))
        }
        fn watch(&self, _watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
            Ok(WatchHandle::empty())
        }
    };
}

/// The byte ranges read, by file.
type Reads = Arc<Mutex<Vec<(PathBuf, Range<usize>)>>>;

/// A local split read through a directory that notes what is read.
#[derive(Debug, Clone)]
struct Recording {
    inner: MmapDirectory,
    reads: Reads,
}

impl Recording {
    fn note(&self, path: &Path, range: Range<usize>) {
        self.reads
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((path.to_path_buf(), range));
    }
}

#[derive(Debug)]
struct RecordedFile {
    inner: Arc<dyn FileHandle>,
    path: PathBuf,
    recording: Recording,
}

impl HasLen for RecordedFile {
    fn len(&self) -> usize {
        self.inner.len()
    }
}

impl FileHandle for RecordedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        self.recording.note(&self.path, range.clone());
        self.inner.read_bytes(range)
    }
}

impl Directory for Recording {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        Ok(Arc::new(RecordedFile {
            inner: self.inner.get_file_handle(path)?,
            path: path.to_path_buf(),
            recording: self.clone(),
        }))
    }
    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }
    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let bytes = self.inner.atomic_read(path)?;
        self.note(path, 0..bytes.len());
        Ok(bytes)
    }
    read_only_writes!();
}

/// Chunks of split files fetched by range, at most `max_bytes` of them, the
/// least recently used evicted first. Shared by every split a node reads.
pub struct ChunkCache {
    max_bytes: u64,
    state: Mutex<ChunkState>,
    stats: Arc<CacheStats>,
}

/// A chunk: split id, file, chunk number.
type ChunkKey = (Arc<str>, Arc<Path>, usize);

struct ChunkState {
    chunks: lru::LruCache<ChunkKey, OwnedBytes>,
    bytes: u64,
}

impl ChunkCache {
    pub fn new(max_bytes: u64, stats: Arc<CacheStats>) -> ChunkCache {
        ChunkCache {
            max_bytes,
            state: Mutex::new(ChunkState {
                chunks: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            stats,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ChunkState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn get(&self, key: &ChunkKey) -> Option<OwnedBytes> {
        self.state().chunks.get(key).cloned()
    }

    fn insert(&self, key: ChunkKey, chunk: OwnedBytes) {
        let mut state = self.state();
        state.bytes += chunk.len() as u64;
        if let Some(old) = state.chunks.put(key, chunk) {
            state.bytes -= old.len() as u64;
        }
        let mut evicted = 0;
        while state.bytes > self.max_bytes && state.chunks.len() > 1 {
            let Some((_, old)) = state.chunks.pop_lru() else {
                break;
            };
            state.bytes -= old.len() as u64;
            evicted += 1;
        }
        self.stats
            .range_cache_bytes
            .store(state.bytes, Ordering::Relaxed);
        self.stats
            .range_cache_evictions
            .fetch_add(evicted, Ordering::Relaxed);
    }
}

/// A split in object storage as a read-only tantivy directory.
#[derive(Clone)]
pub struct RemoteDirectory {
    remote: Arc<Remote>,
}

struct Remote {
    split_id: Arc<str>,
    /// The split's key prefix, `<prefix>splits/<split id>`.
    base: String,
    storage: Arc<dyn ObjectStore>,
    hotcache: Hotcache,
    chunks: Arc<ChunkCache>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RemoteDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteDirectory({})", self.remote.base)
    }
}

impl RemoteDirectory {
    pub fn new(
        split_id: &str,
        base: String,
        storage: Arc<dyn ObjectStore>,
        hotcache: Hotcache,
        chunks: Arc<ChunkCache>,
        runtime: tokio::runtime::Handle,
    ) -> RemoteDirectory {
        RemoteDirectory {
            remote: Arc::new(Remote {
                split_id: split_id.into(),
                base,
                storage,
                hotcache,
                chunks,
                runtime,
            }),
        }
    }
}

impl Remote {
    /// `range` of `file` (`length` bytes long): from the hotcache, the
    /// chunk cache, or fetched (each run of missing chunks in one GET).
    fn read(&self, file: &Arc<Path>, length: usize, range: Range<usize>) -> io::Result<OwnedBytes> {
        if range.is_empty() {
            return Ok(OwnedBytes::empty());
        }
        if range.end > length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}/{}: bytes {range:?} of {length}",
                    self.base,
                    file.display()
                ),
            ));
        }
        if let Some(bytes) = self.hotcache.get(file, &range) {
            return Ok(bytes);
        }
        let first = range.start / CHUNK;
        let last = (range.end - 1) / CHUNK;
        let key = |chunk: usize| (self.split_id.clone(), file.clone(), chunk);
        let mut chunks: Vec<Option<OwnedBytes>> = (first..=last)
            .map(|chunk| self.chunks.get(&key(chunk)))
            .collect();
        let mut missing = 0;
        while missing < chunks.len() {
            if chunks[missing].is_some() {
                missing += 1;
                continue;
            }
            let mut end = missing + 1;
            while end < chunks.len() && chunks[end].is_none() {
                end += 1;
            }
            let from = (first + missing) * CHUNK;
            let to = ((first + end) * CHUNK).min(length);
            let fetched = self.fetch(file, from..to)?;
            for (index, slot) in chunks.iter_mut().enumerate().take(end).skip(missing) {
                let start = (first + index) * CHUNK - from;
                let stop = (start + CHUNK).min(fetched.len());
                let chunk = OwnedBytes::new(fetched[start..stop].to_vec());
                self.chunks.insert(key(first + index), chunk.clone());
                *slot = Some(chunk);
            }
            missing = end;
        }
        let chunks: Vec<OwnedBytes> = chunks.into_iter().flatten().collect();
        let offset = first * CHUNK;
        if let [chunk] = chunks.as_slice() {
            return Ok(chunk.slice(range.start - offset..range.end - offset));
        }
        let mut bytes = Vec::with_capacity(range.len());
        for chunk in &chunks {
            bytes.extend_from_slice(chunk.as_slice());
        }
        Ok(OwnedBytes::new(bytes).slice(range.start - offset..range.end - offset))
    }

    /// One range GET, waited for on this (blocking) thread.
    fn fetch(&self, file: &Path, range: Range<usize>) -> io::Result<bytes::Bytes> {
        let key = format!("{}/{}", self.base, file.to_string_lossy());
        let location = ObjectPath::from(key.as_str());
        let storage = self.storage.clone();
        let wanted = range.start as u64..range.end as u64;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = sender.send(storage.get_range(&location, wanted).await);
        });
        let fetched = match receiver.recv_timeout(FETCH_TIMEOUT) {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                return Err(io::Error::other(format!(
                    "failed to read bytes {range:?} of {key}: {error}"
                )));
            }
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("reading bytes {range:?} of {key} took over {FETCH_TIMEOUT:?}"),
                ));
            }
        };
        if fetched.len() != range.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{key}: asked for {} bytes at {}, got {}",
                    range.len(),
                    range.start,
                    fetched.len()
                ),
            ));
        }
        let stats = &self.chunks.stats;
        stats.range_requests.fetch_add(1, Ordering::Relaxed);
        stats
            .range_bytes
            .fetch_add(fetched.len() as u64, Ordering::Relaxed);
        Ok(fetched)
    }

    fn length(&self, path: &Path) -> Result<usize, OpenReadError> {
        self.hotcache
            .files
            .get(path)
            .copied()
            .ok_or_else(|| OpenReadError::FileDoesNotExist(path.to_path_buf()))
    }
}

#[derive(Debug)]
struct RemoteFile {
    directory: RemoteDirectory,
    /// Shared with the chunk cache's keys (no copy per read).
    path: Arc<Path>,
    length: usize,
}

impl HasLen for RemoteFile {
    fn len(&self) -> usize {
        self.length
    }
}

impl FileHandle for RemoteFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        self.directory.remote.read(&self.path, self.length, range)
    }
}

impl Directory for RemoteDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        Ok(Arc::new(RemoteFile {
            directory: self.clone(),
            path: Arc::from(path),
            length: self.remote.length(path)?,
        }))
    }
    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        Ok(self.remote.hotcache.files.contains_key(path))
    }
    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let length = self.remote.length(path)?;
        self.remote
            .read(&Arc::from(path), length, 0..length)
            .map(|bytes| bytes.as_slice().to_vec())
            .map_err(|error| OpenReadError::wrap_io_error(error, path.to_path_buf()))
    }
    read_only_writes!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheSettings, SplitCache, SplitReads};
    use crate::splits::{self, SplitStorage};
    use sightline_store::{Batch, LogQuery, LogRecord, Span, TraceQuery};

    /// A split of 3,000 records and 40 spans, built and uploaded to an
    /// in-memory object store.
    async fn uploaded_split(work: &Path) -> (SplitStorage, crate::SplitRow) {
        let base = 1_700_000_000_000_000_000i64;
        let decoded: Vec<splits::Decoded> = (0..30u64)
            .map(|entry| {
                let records = (0..100u64)
                    .map(|i| {
                        let n = entry * 100 + i;
                        LogRecord {
                            timestamp: base + n as i64 * 1_000_000,
                            severity_text: if n % 7 == 0 { "ERROR" } else { "INFO" }.into(),
                            body: format!(
                                "request {} handled order o-{} after {} retries",
                                n / 10,
                                n % 97,
                                n % 5
                            ),
                            service: format!("svc-{}", n % 4),
                            request_id: Some(format!("req-{}", n / 10)),
                            ..LogRecord::default()
                        }
                    })
                    .collect();
                (entry + 1, Arc::new(Batch::Logs(records)))
            })
            .chain(std::iter::once((
                31,
                Arc::new(Batch::Spans(
                    (0..40)
                        .map(|i| Span {
                            trace_id: format!("trace-{}", i % 4),
                            span_id: format!("span-{i}"),
                            name: ["GET /cart", "charge"][i % 2].into(),
                            service: ["cart", "payment"][i % 2].into(),
                            kind: "server".into(),
                            start_time: base + i as i64,
                            end_time: base + 5_000 + i as i64,
                            ..Span::default()
                        })
                        .collect(),
                )),
            )))
            .collect();
        let split = splits::build(work, 3, 1, 1, 32, &decoded, Vec::new(), &|_, _| {
            Ok(Vec::new())
        })
        .unwrap();
        let storage =
            SplitStorage::with_store(Arc::new(object_store::memory::InMemory::new()), "t/");
        storage.upload(&split).await.unwrap();
        (storage, split.meta.row.clone())
    }

    fn cache(
        dir: &Path,
        storage: &SplitStorage,
        reads: SplitReads,
        range_bytes: u64,
    ) -> SplitCache {
        let settings = CacheSettings {
            split_bytes: 1 << 30,
            reads,
            range_bytes,
        };
        SplitCache::new(dir, settings, storage.clone()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_split_read_by_range_answers_as_the_split_downloaded() {
        let work = tempfile::tempdir().unwrap();
        let (storage, row) = uploaded_split(work.path()).await;
        let downloaded = cache(&work.path().join("a"), &storage, SplitReads::Download, 0);
        // A range cache smaller than what the queries read: chunks are
        // evicted and fetched again, and the answers stay the same.
        let ranged = cache(
            &work.path().join("b"),
            &storage,
            SplitReads::Ranges,
            16 << 10,
        );
        let whole = downloaded.open(&row).await.unwrap();
        let remote = ranged.open(&row).await.unwrap();
        let split_bytes = downloaded.stats.downloaded_bytes.load(Ordering::Relaxed);
        let hotcache_bytes = ranged.stats.downloaded_bytes.load(Ordering::Relaxed);
        assert!(
            hotcache_bytes * 2 < split_bytes,
            "a hotcache of {hotcache_bytes} bytes for a split of {split_bytes}"
        );
        let answers = tokio::task::spawn_blocking(move || {
            for text in [
                "",
                "request_id:req-42",
                "severity:ERROR AND service:svc-1",
                "o-13 OR retries",
            ] {
                let mut query = LogQuery {
                    query: text.into(),
                    start: None,
                    end: None,
                    limit: 50,
                    after: None,
                };
                loop {
                    let want = whole.logs.search(&query).unwrap();
                    assert_eq!(remote.logs.search(&query).unwrap(), want, "{text:?}");
                    assert!(!want.hits.is_empty(), "{text:?}");
                    match want.next {
                        Some(next) if query.after.is_none() => query.after = Some(next),
                        _ => break,
                    }
                }
                let start = 1_700_000_000_000_000_000i64;
                let end = start + 3_000_000_000;
                assert_eq!(
                    remote
                        .logs
                        .histogram(text, start, end, 500_000_000)
                        .unwrap(),
                    whole.logs.histogram(text, start, end, 500_000_000).unwrap(),
                    "{text:?}"
                );
            }
            assert_eq!(
                remote.spans.trace("trace-2").unwrap(),
                whole.spans.trace("trace-2").unwrap()
            );
            let query = TraceQuery {
                service: Some("payment".into()),
                limit: 10,
                ..TraceQuery::default()
            };
            let traces = whole.spans.search_traces(&query).unwrap();
            assert_eq!(traces.len(), 2);
            assert_eq!(remote.spans.search_traces(&query).unwrap(), traces);
        });
        answers.await.unwrap();
        let stats = &ranged.stats;
        assert!(stats.range_requests.load(Ordering::Relaxed) > 0);
        assert!(stats.range_cache_evictions.load(Ordering::Relaxed) > 0);
        assert!(stats.range_cache_bytes.load(Ordering::Relaxed) <= CHUNK as u64);
    }

    #[test]
    fn a_damaged_hotcache_is_refused_with_what_is_wrong() {
        let error = Hotcache::parse(b"SLHOT001\x05").err().unwrap();
        assert!(error.to_string().contains("cut short"), "{error}");
        let error = Hotcache::parse(b"PK\x03\x04").err().unwrap();
        assert!(error.to_string().contains("not a hotcache"), "{error}");
    }
}
