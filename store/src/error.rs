use thiserror::Error;

/// Errors of the store. Query errors are the caller's fault and say what
/// was wrong; everything else is an I/O or index problem.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("index error: {0}")]
    Index(tantivy::TantivyError),
    #[error("index directory error: {0}")]
    OpenDirectory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("stored document is corrupt: {0}")]
    CorruptDocument(String),
    /// What holds the data cannot be reached now (a cluster's metastore or
    /// object storage); the same request may succeed later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<tantivy::TantivyError> for StoreError {
    fn from(error: tantivy::TantivyError) -> StoreError {
        match error {
            // Raised while searching when a query asks for something the
            // index cannot do: the query's fault, not the index's.
            tantivy::TantivyError::InvalidArgument(message) => StoreError::InvalidQuery(message),
            other => StoreError::Index(other),
        }
    }
}
