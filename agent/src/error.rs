//! Errors of the agent library.

use std::path::PathBuf;

/// Result alias used across the agent library.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// Everything that can stop the agent from starting or running.
///
/// Problems with log *content* are never errors: bad input becomes a plain
/// record. These variants are about configuration and the machine.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration value is invalid; `key` names the flag.
    #[error("invalid config `{key}`: {reason}")]
    InvalidConfig {
        /// The flag or field that is wrong.
        key: &'static str,
        /// Why it is wrong.
        reason: String,
    },
    /// The configuration file cannot be read or parsed.
    #[error("bad config file {path}: {reason}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// The health/metrics listener could not bind.
    #[error("failed to bind http listener on {addr}: {source}")]
    HttpBind {
        /// The address we tried.
        addr: std::net::SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The health/metrics server failed while running.
    #[error("http server failed: {0}")]
    HttpServe(std::io::Error),
    /// The data directory could not be created.
    #[error("failed to create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The checkpoint file exists but cannot be read or parsed.
    #[error("failed to load checkpoints from {path}: {reason}")]
    CheckpointLoad {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// Writing the checkpoint file failed.
    #[error("failed to write checkpoints to {path}: {source}")]
    CheckpointWrite {
        /// The checkpoint file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A background task panicked or was cancelled.
    #[error("agent task `{task}` failed: {reason}")]
    Task {
        /// Which task.
        task: &'static str,
        /// What happened.
        reason: String,
    },
}
