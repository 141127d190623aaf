//! The data directory: where each store keeps its files.
//!
//! ```text
//! <root>/
//!   logs/     the log store (LogStore): one tantivy index per UTC day
//!   spans/    the span store (SpanStore): spans and trace summaries
//!   metrics/  the metric store (sightline-tsdb): head WAL and blocks
//!   wal/      the write-ahead log of acknowledged batches (LocalWal)
//!   saved-searches.json  saved searches and their alerts (SavedSearches)
//! ```
//!
//! Each store decides what goes inside its own directory; this type decides
//! only where the directories are. Every path under the data directory
//! comes from here.

use std::path::{Path, PathBuf};

/// The data directory of one collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The log store's directory.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The span store's directory.
    pub fn spans(&self) -> PathBuf {
        self.root.join("spans")
    }

    /// The metric store's directory.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics")
    }

    /// The write-ahead log's directory.
    pub fn wal(&self) -> PathBuf {
        self.root.join("wal")
    }

    /// The saved searches' file.
    pub fn saved_searches(&self) -> PathBuf {
        self.root.join("saved-searches.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_has_its_own_directory_under_the_root() {
        let dir = DataDir::new("/var/lib/sightline");
        let paths = [dir.logs(), dir.spans(), dir.metrics(), dir.wal()];
        assert_eq!(
            paths.map(|path| path.to_string_lossy().into_owned()),
            [
                "/var/lib/sightline/logs",
                "/var/lib/sightline/spans",
                "/var/lib/sightline/metrics",
                "/var/lib/sightline/wal"
            ]
        );
        assert_eq!(dir.root(), Path::new("/var/lib/sightline"));
    }
}
