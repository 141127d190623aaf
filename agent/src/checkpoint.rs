//! Checkpoints: how far into each file the collector has acknowledged.
//!
//! Files are identified by `(device, inode)` so a rename (log rotation)
//! keeps its offset and a new file at the same path starts fresh. Offsets
//! only move when the sink reports an acknowledged batch; the store is
//! written atomically (temp file, fsync, rename) about every second and on
//! shutdown, to `<data-dir>/checkpoints.json`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{AgentError, Result};

/// Identity of a file that survives renames: device and inode numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileKey {
    /// `st_dev`
    pub dev: u64,
    /// `st_ino`
    pub inode: u64,
}

impl FileKey {
    /// The key of a file from its metadata.
    pub fn of(metadata: &fs::Metadata) -> FileKey {
        FileKey {
            dev: metadata.dev(),
            inode: metadata.ino(),
        }
    }
}

/// One file's checkpoint as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointEntry {
    /// Device number of the file.
    pub dev: u64,
    /// Inode number of the file.
    pub inode: u64,
    /// Path the file had when last acknowledged (informational).
    pub path: PathBuf,
    /// Bytes from the start of the file that the collector acknowledged.
    pub offset: u64,
}

/// The checkpoint file format.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    version: u32,
    files: Vec<CheckpointEntry>,
}

const FORMAT_VERSION: u32 = 1;

/// Acknowledged offsets of all files, shared by readers (which resume from
/// them), the sink (which advances them) and the persister.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<FileKey, (PathBuf, u64)>,
    dirty: bool,
}

impl CheckpointStore {
    /// Loads `path`; a missing file is an empty store. A file that cannot
    /// be parsed is moved aside to `<path>.corrupt` with a warning, so the
    /// agent still starts (files are then read per `read_from_start`).
    pub fn load(path: &Path) -> Result<CheckpointStore> {
        let entries = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<CheckpointFile>(&bytes) {
                Ok(file) if file.version == FORMAT_VERSION => file.files,
                Ok(file) => {
                    move_aside(path, &format!("unsupported version {}", file.version))?;
                    Vec::new()
                }
                Err(error) => {
                    move_aside(path, &error.to_string())?;
                    Vec::new()
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                return Err(AgentError::CheckpointLoad {
                    path: path.to_owned(),
                    reason: error.to_string(),
                });
            }
        };
        let entries = entries
            .into_iter()
            .map(|entry| {
                (
                    FileKey {
                        dev: entry.dev,
                        inode: entry.inode,
                    },
                    (entry.path, entry.offset),
                )
            })
            .collect();
        Ok(CheckpointStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                state: Mutex::new(State {
                    entries,
                    dirty: false,
                }),
            }),
        })
    }

    /// Where to resume `key`: the stored offset if it still fits in a file
    /// of `size` bytes (otherwise the file was truncated or replaced).
    pub fn resume_offset(&self, key: FileKey, size: u64) -> Option<u64> {
        let state = self.lock();
        state
            .entries
            .get(&key)
            .map(|(_, offset)| *offset)
            .filter(|offset| *offset <= size)
    }

    /// Records that everything before `offset` in `key` was acknowledged.
    pub fn commit(&self, key: FileKey, path: &Path, offset: u64) {
        let mut state = self.lock();
        let changed = match state.entries.get_mut(&key) {
            Some((stored_path, stored_offset)) => {
                let changed = *stored_offset != offset || stored_path != path;
                if changed {
                    *stored_offset = offset;
                    path.clone_into(stored_path);
                }
                changed
            }
            None => {
                state.entries.insert(key, (path.to_owned(), offset));
                true
            }
        };
        state.dirty |= changed;
    }

    /// All entries, sorted by key.
    pub fn entries(&self) -> Vec<CheckpointEntry> {
        let state = self.lock();
        let mut entries: Vec<CheckpointEntry> = state
            .entries
            .iter()
            .map(|(key, (path, offset))| CheckpointEntry {
                dev: key.dev,
                inode: key.inode,
                path: path.clone(),
                offset: *offset,
            })
            .collect();
        entries.sort_by_key(|entry| (entry.dev, entry.inode));
        entries
    }

    /// Writes the store to disk if anything changed since the last write;
    /// returns whether it wrote. Blocking (fsync): call from a blocking
    /// thread, see [`Self::persist`].
    pub fn persist_blocking(&self) -> Result<bool> {
        {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(false);
            }
            state.dirty = false;
            // Forget files that are gone or replaced: their offsets can never
            // be used again and would otherwise accumulate forever.
            state.entries.retain(|key, (path, _)| {
                fs::metadata(path)
                    .map(|metadata| FileKey::of(&metadata) == *key)
                    .unwrap_or(false)
            });
        }
        let file = CheckpointFile {
            version: FORMAT_VERSION,
            files: self.entries(),
        };
        let result = write_atomically(&self.inner.path, &file);
        if result.is_err() {
            self.lock().dirty = true;
        }
        result.map(|()| true)
    }

    /// [`Self::persist_blocking`] on the blocking thread pool.
    pub async fn persist(&self) -> Result<bool> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.persist_blocking())
            .await
            .map_err(|error| AgentError::Task {
                task: "checkpoint",
                reason: error.to_string(),
            })?
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of a
        // plain map; the data is still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn move_aside(path: &Path, reason: &str) -> Result<()> {
    let aside = path.with_extension("json.corrupt");
    warn!(path = %path.display(), aside = %aside.display(), reason, "unreadable checkpoints moved aside");
    fs::rename(path, &aside).map_err(|error| AgentError::CheckpointLoad {
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

fn write_atomically(path: &Path, file: &CheckpointFile) -> Result<()> {
    let to_error = |source| AgentError::CheckpointWrite {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|error| to_error(error.into()))?;
    let temp_path = path.with_extension("json.tmp");
    let mut temp = fs::File::create(&temp_path).map_err(to_error)?;
    temp.write_all(&bytes).map_err(to_error)?;
    temp.sync_all().map_err(to_error)?;
    drop(temp);
    fs::rename(&temp_path, path).map_err(to_error)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable; failure here is not fatal.
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        fs::write(&log, b"0123456789").unwrap();
        let key = FileKey::of(&fs::metadata(&log).unwrap());
        let store_path = dir.path().join("checkpoints.json");

        let store = CheckpointStore::load(&store_path).unwrap();
        assert_eq!(store.resume_offset(key, 10), None);
        store.commit(key, &log, 7);
        assert!(store.persist_blocking().unwrap());
        assert!(
            !store.persist_blocking().unwrap(),
            "nothing changed, nothing written"
        );

        let reloaded = CheckpointStore::load(&store_path).unwrap();
        assert_eq!(reloaded.resume_offset(key, 10), Some(7));
        // A file now shorter than the offset was truncated: start over.
        assert_eq!(reloaded.resume_offset(key, 5), None);
        assert!(!dir.path().join("checkpoints.json.tmp").exists());
    }

    #[test]
    fn gone_files_are_pruned_on_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("checkpoints.json");
        let store = CheckpointStore::load(&store_path).unwrap();
        store.commit(
            FileKey { dev: 1, inode: 2 },
            &dir.path().join("missing.log"),
            3,
        );
        store.persist_blocking().unwrap();
        assert!(
            CheckpointStore::load(&store_path)
                .unwrap()
                .entries()
                .is_empty()
        );
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("checkpoints.json");
        fs::write(&store_path, b"{not json").unwrap();
        let store = CheckpointStore::load(&store_path).unwrap();
        assert!(store.entries().is_empty());
        assert!(dir.path().join("checkpoints.json.corrupt").exists());
    }
}
