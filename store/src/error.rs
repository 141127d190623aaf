use thiserror::Error;

/// Errors of the store. Query errors are the caller's fault and say what
/// was wrong; everything else is an I/O or index problem.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("index error: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("index directory error: {0}")]
    OpenDirectory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored document is corrupt: {0}")]
    CorruptDocument(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
