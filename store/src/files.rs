//! A store's files read through any tantivy [`Directory`], read only: how
//! a cluster reads a split straight from object storage instead of
//! downloading it ([`crate::LogStore::open_read_only`],
//! [`crate::SpanStore::open_read_only`]).
//!
//! A tantivy `Directory` has no listing, so the files come with their
//! names, relative to the store's root; the store finds its indexes (a
//! log store's days, a span store's two indexes) among them and reads each
//! through a [`SubDirectory`].

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::Directory;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{DirectoryLock, FileHandle, Lock, WatchCallback, WatchHandle, WritePtr};

/// The files of a store (or of a part of one) and the directory that
/// reads them.
#[derive(Debug, Clone)]
pub struct StoreFiles {
    directory: Box<dyn Directory>,
    /// Every file's path, relative to the directory's root.
    files: Arc<BTreeSet<PathBuf>>,
}

impl StoreFiles {
    /// `files` (relative paths) read through `directory`.
    pub fn new(directory: Box<dyn Directory>, files: impl IntoIterator<Item = PathBuf>) -> Self {
        StoreFiles {
            directory,
            files: Arc::new(files.into_iter().collect()),
        }
    }

    /// The files under `name`, read through a directory rooted there.
    pub fn sub(&self, name: &str) -> StoreFiles {
        let files = self
            .files
            .iter()
            .filter_map(|file| file.strip_prefix(name).ok())
            .map(Path::to_path_buf)
            .collect();
        StoreFiles {
            directory: Box::new(SubDirectory {
                inner: self.directory.clone(),
                prefix: PathBuf::from(name),
            }),
            files: Arc::new(files),
        }
    }

    /// Names of the subdirectories holding files.
    pub fn subdirectories(&self) -> BTreeSet<String> {
        self.files
            .iter()
            .filter(|file| file.components().count() > 1)
            .filter_map(|file| file.components().next())
            .filter_map(|first| first.as_os_str().to_str().map(str::to_string))
            .collect()
    }

    /// Whether `file` is there.
    pub fn contains(&self, file: &str) -> bool {
        self.files.contains(Path::new(file))
    }

    pub fn directory(&self) -> Box<dyn Directory> {
        self.directory.clone()
    }
}

/// Reads what every query of `searcher` reads before its own terms and
/// documents: each segment's doc store index and fast field directory
/// (opening the searcher read the files' footers). Run once over a split
/// through a recording directory, it says what to keep in the split's
/// hotcache. A field's term dictionary is not among them: tantivy reads a
/// field's whole dictionary (an FST) when a query first uses the field,
/// and together they are a quarter of a split, mostly of fields a query
/// does not use.
pub(crate) fn warm_up(searcher: &tantivy::Searcher) -> crate::Result<()> {
    let schema = searcher.schema();
    for segment in searcher.segment_readers() {
        for (_, entry) in schema.fields() {
            if entry.is_fast() {
                // The column directory, not the columns.
                segment.fast_fields().dynamic_column_handles(entry.name())?;
            }
        }
        segment.get_store_reader(0)?;
    }
    Ok(())
}

/// A directory's subdirectory as a directory of its own.
#[derive(Debug, Clone)]
pub struct SubDirectory {
    inner: Box<dyn Directory>,
    prefix: PathBuf,
}

impl Directory for SubDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(&self.prefix.join(path))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(&self.prefix.join(path))
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(&self.prefix.join(path))
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        self.inner.open_write(&self.prefix.join(path))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(&self.prefix.join(path))
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner.atomic_write(&self.prefix.join(path), data)
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(&Lock {
            filepath: self.prefix.join(&lock.filepath),
            is_blocking: lock.is_blocking,
        })
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogQuery, LogRecord, LogStore, Span, SpanStore, TraceQuery};
    use tantivy::directory::MmapDirectory;

    /// Every file under `root`, relative to it.
    fn files_under(root: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    files.push(path.strip_prefix(root).unwrap().to_path_buf());
                }
            }
        }
        files
    }

    #[test]
    fn stores_read_through_a_directory_answer_as_the_stores() {
        let dir = tempfile::tempdir().unwrap();
        let base = 1_700_000_000_000_000_000i64;
        let day = 86_400_000_000_000i64;
        let logs = LogStore::open(&dir.path().join("logs")).unwrap();
        let records: Vec<LogRecord> = (0..30)
            .map(|i| LogRecord {
                // Two days, so two partitions.
                timestamp: base + (i % 2) * day + i * 1_000_000,
                severity_text: ["INFO", "ERROR"][i as usize % 2].into(),
                body: format!("line {i} of order o-{}", i % 5),
                service: ["cart", "payment"][i as usize % 2].into(),
                resource: Arc::new(
                    [("k8s.pod.name".to_string(), format!("pod-{}", i % 3).into())]
                        .into_iter()
                        .collect(),
                ),
                ..LogRecord::default()
            })
            .collect();
        logs.add(3, &records).unwrap();
        logs.commit(4).unwrap();
        let spans = SpanStore::open(&dir.path().join("spans")).unwrap();
        let batch: Vec<Span> = (0..6)
            .map(|i| Span {
                trace_id: format!("t{}", i % 2),
                span_id: format!("s{i}"),
                name: ["GET /", "charge"][i % 2].into(),
                service: ["cart", "payment"][i % 2].into(),
                kind: "server".into(),
                start_time: base + i as i64,
                end_time: base + 1_000 + i as i64,
                ..Span::default()
            })
            .collect();
        spans.add(1, &batch).unwrap();
        spans.commit(2).unwrap();

        let root = StoreFiles::new(
            Box::new(MmapDirectory::open(dir.path()).unwrap()),
            files_under(dir.path()),
        );
        let read_logs =
            LogStore::open_read_only(&root.sub("logs"), Path::new("split/logs")).unwrap();
        let read_spans =
            SpanStore::open_read_only(&root.sub("spans"), Path::new("split/spans")).unwrap();
        for text in ["", "severity:ERROR", "o-3 OR service:cart", "pod-1"] {
            let query = LogQuery {
                query: text.into(),
                start: Some(base),
                end: Some(base + 2 * day),
                limit: 7,
                after: None,
            };
            let want = logs.search(&query).unwrap();
            assert!(!want.hits.is_empty(), "{text:?}");
            assert_eq!(read_logs.search(&query).unwrap(), want, "{text:?}");
        }
        assert_eq!(read_spans.trace("t1").unwrap(), spans.trace("t1").unwrap());
        let query = TraceQuery {
            service: Some("payment".into()),
            limit: 10,
            ..TraceQuery::default()
        };
        let want = spans.search_traces(&query).unwrap();
        assert_eq!(want.len(), 1);
        assert_eq!(read_spans.search_traces(&query).unwrap(), want);
        // Nothing is written through a read-only store.
        assert!(read_logs.add(9, &records[..1]).is_err());
        assert!(read_spans.add(9, &batch[..1]).is_err());
    }
}
