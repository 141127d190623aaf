//! Checkpoints: how far into each file the collector has acknowledged.
//!
//! Files are identified by `(device, inode)` so a rename (log rotation)
//! keeps its offset and a new file at the same path starts fresh; a
//! fingerprint of the first bytes (see [`crate::identity`]) guards against inode reuse and rewrites:
//! a stored offset is trusted only if it is not past the end of the file
//! and the fingerprint matches ([`CheckpointStore::resume`]). Offsets
//! only move when the sink reports an acknowledged batch; the store is
//! written atomically (temp file, fsync, rename) about every second and on
//! shutdown, to `<data-dir>/checkpoints.json`.
//!
//! ## Rotated generations
//!
//! An entry lives as long as its file exists anywhere discovery looks,
//! under whatever name rotation gave it: discovery reports where each
//! identity now is ([`CheckpointStore::reconcile`]), and pruning looks for
//! a file in its last directory before it declares it gone. So after a
//! restart every rotated generation is recognised by identity: a finished
//! one is skipped, an unfinished one resumed at its offset. A rotated file
//! with no entry was never acknowledged; it is read from its start when it
//! was written after the agent first ran on this data directory
//! ([`CheckpointStore::since_unix_nanos`], kept across restarts), so files
//! that predate the agent follow `read_from_start` like any other. Only an
//! identity found nowhere is dropped, its unacknowledged bytes counted as
//! lost (reason `removed`).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::enrich::FileSource;
use crate::error::{AgentError, Result};
use crate::identity::{FileKey, Fingerprint, ResetReason, find_in_dir};

/// Where a reader starts in a file it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No checkpoint: a file never seen.
    Fresh,
    /// The checkpoint is trusted: resume there.
    At(u64),
    /// A checkpoint exists but does not fit the file: read from the start.
    Reset {
        /// Why the offset was not trusted.
        reason: ResetReason,
        /// Bytes of the old content known to exist and never acknowledged
        /// (size last seen minus the stored offset): lost with it.
        lost: u64,
    },
}

/// One file's checkpoint as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointEntry {
    /// Device number of the file.
    pub dev: u64,
    /// Inode number of the file.
    pub inode: u64,
    /// Where the file was last seen (follows renames by rotation).
    pub path: PathBuf,
    /// Bytes from the start of the file that the collector acknowledged.
    pub offset: u64,
    /// Fingerprint of the first bytes (absent in version 1 files).
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
    /// Size of the file when last seen, to count bytes lost if it vanishes.
    #[serde(default)]
    pub size: u64,
}

/// The checkpoint file format.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    version: u32,
    /// When the agent first ran on this data directory (Unix ns; absent
    /// before version 3).
    #[serde(default)]
    since_unix_nanos: u64,
    files: Vec<CheckpointEntry>,
}

const FORMAT_VERSION: u32 = 3;

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

#[derive(Debug, Clone)]
struct Stored {
    path: PathBuf,
    offset: u64,
    fingerprint: Option<Fingerprint>,
    size: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<FileKey, Stored>,
    /// Files still held by a reader or by records in flight: never pruned.
    active: HashMap<FileKey, Weak<FileSource>>,
    dirty: bool,
    /// See [`CheckpointStore::since_unix_nanos`].
    since_unix_nanos: u64,
    /// First bytes of files cut in place (copytruncate), newest last: a
    /// copy of one found later is still a copy. Bounded.
    retired: std::collections::VecDeque<Fingerprint>,
    /// Discovery reported a full scan: until then nothing is pruned (a
    /// file rotated while the agent was down is not yet located).
    scanned: bool,
}

/// What one [`CheckpointStore::persist_blocking`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PersistOutcome {
    /// The file was written.
    pub wrote: bool,
    /// Bytes of files that vanished before they were fully acknowledged.
    pub bytes_lost: u64,
}

impl CheckpointStore {
    /// Loads `path`; a missing file is an empty store. A file that cannot
    /// be parsed is moved aside to `<path>.corrupt` with a warning, so the
    /// agent still starts (files are then read per `read_from_start`).
    pub fn load(path: &Path) -> Result<CheckpointStore> {
        let now = sightline_vocab::clock::now_nanos_u64();
        let (entries, since_unix_nanos) = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<CheckpointFile>(&bytes) {
                Ok(file) if (1..=FORMAT_VERSION).contains(&file.version) => {
                    (file.files, file.since_unix_nanos)
                }
                Ok(file) => {
                    move_aside(path, &format!("unsupported version {}", file.version))?;
                    (Vec::new(), now)
                }
                Err(error) => {
                    move_aside(path, &error.to_string())?;
                    (Vec::new(), now)
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (Vec::new(), now),
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
                    Stored {
                        path: entry.path,
                        offset: entry.offset,
                        fingerprint: entry.fingerprint,
                        size: entry.size,
                    },
                )
            })
            .collect();
        Ok(CheckpointStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                state: Mutex::new(State {
                    entries,
                    active: HashMap::new(),
                    dirty: true,
                    since_unix_nanos,
                    retired: std::collections::VecDeque::new(),
                    scanned: false,
                }),
            }),
        })
    }

    /// Where to resume `key`, a file of `size` bytes that starts with
    /// `head`: the stored offset only if it is not past the end and the
    /// fingerprint matches.
    pub fn resume(&self, key: FileKey, size: u64, head: &[u8]) -> Resume {
        let state = self.lock();
        let Some(stored) = state.entries.get(&key) else {
            return Resume::Fresh;
        };
        // Content of the old file still in flight (its records hold its
        // source) is not lost: it is being delivered.
        let in_flight = state
            .active
            .get(&key)
            .is_some_and(|source| source.strong_count() > 0);
        let lost = if in_flight {
            0
        } else {
            stored.size.saturating_sub(stored.offset)
        };
        if stored.offset > size {
            return Resume::Reset {
                reason: ResetReason::Truncated,
                lost,
            };
        }
        match stored.fingerprint {
            Some(fingerprint) if !fingerprint.matches(head) => Resume::Reset {
                reason: ResetReason::Fingerprint,
                lost,
            },
            _ => Resume::At(stored.offset),
        }
    }

    /// The stored offset, fingerprint and size last seen of `key`.
    pub(crate) fn stored(&self, key: FileKey) -> Option<(u64, Option<Fingerprint>, u64)> {
        let state = self.lock();
        let stored = state.entries.get(&key)?;
        Some((stored.offset, stored.fingerprint, stored.size))
    }

    /// Whether `key` has an entry (its offset may still not fit it).
    pub(crate) fn contains(&self, key: FileKey) -> bool {
        self.lock().entries.contains_key(&key)
    }

    /// When the agent first ran on this data directory (Unix ns): a
    /// rotated file written since then and never acknowledged is one the
    /// agent owes; an older one predates it.
    pub fn since_unix_nanos(&self) -> u64 {
        self.lock().since_unix_nanos
    }

    /// Whether a file starting with `head` (of `size` bytes) holds the
    /// same first bytes as a file already read or being read under another
    /// identity: a copy (copytruncate keeps one beside the original), not
    /// new lines. Only full 256-byte fingerprints count, or a copy exactly
    /// as long as a short original, so short common prefixes (a
    /// timestamp) never match.
    pub fn knows_content(&self, key: FileKey, head: &[u8], size: u64) -> bool {
        let is_copy = |fingerprint: Fingerprint| fingerprint.covers(head, size);
        let state = self.lock();
        let stored = state
            .entries
            .iter()
            .filter(|(other, _)| **other != key)
            .filter_map(|(_, stored)| stored.fingerprint);
        let active = state
            .active
            .iter()
            .filter(|(other, _)| **other != key)
            .filter_map(|(_, source)| source.upgrade())
            .map(|source| source.stats.fingerprint());
        let retired = state.retired.iter().copied();
        stored.chain(active).chain(retired).any(is_copy)
    }

    /// The content that started with `fingerprint` was cut in place: a
    /// copy of it appearing later is not new lines.
    pub(crate) fn retire(&self, fingerprint: Fingerprint) {
        const KEPT: usize = 256;
        if fingerprint.len == 0 {
            return;
        }
        let mut state = self.lock();
        if state.retired.len() == KEPT {
            state.retired.pop_front();
        }
        state.retired.push_back(fingerprint);
    }

    /// Discovery looked at every watched directory and found these
    /// identities at these paths: entries follow their files there, and
    /// pruning may start.
    pub(crate) fn reconcile(&self, found: &HashMap<FileKey, PathBuf>) {
        let mut state = self.lock();
        let State {
            entries,
            dirty,
            scanned,
            ..
        } = &mut *state;
        for (key, stored) in entries.iter_mut() {
            if let Some(path) = found.get(key)
                && stored.path != *path
            {
                stored.path.clone_from(path);
                *dirty = true;
            }
        }
        *scanned = true;
    }

    /// A reader opened `source`: it stays pruning-proof while referenced,
    /// and its checkpoint follows its current path.
    pub(crate) fn register(&self, source: &Arc<FileSource>) {
        let mut state = self.lock();
        state.active.insert(source.key, Arc::downgrade(source));
        let path = source.current_path();
        if let Some(stored) = state.entries.get_mut(&source.key)
            && stored.path != path
        {
            stored.path = path;
            state.dirty = true;
        }
    }

    /// The file `key` was renamed to `path` (rotation).
    pub(crate) fn relocate(&self, key: FileKey, path: &Path) {
        let mut state = self.lock();
        if let Some(stored) = state.entries.get_mut(&key)
            && stored.path != path
        {
            path.clone_into(&mut stored.path);
            state.dirty = true;
        }
    }

    /// Records that everything before `offset` in `source` was acknowledged.
    pub(crate) fn commit(&self, source: &FileSource, offset: u64) {
        let fingerprint = Some(source.stats.fingerprint());
        let size = source.stats.size().max(offset);
        source.stats.set_acked(offset);
        let mut state = self.lock();
        // A newer file took the inode over (the old one was deleted): the
        // entry is the newer file's now.
        let superseded = state.active.get(&source.key).is_some_and(|active| {
            active
                .upgrade()
                .is_some_and(|active| !std::ptr::eq(Arc::as_ptr(&active), source))
        });
        if superseded {
            return;
        }
        match state.entries.get_mut(&source.key) {
            Some(stored) => {
                if stored.offset == offset && stored.fingerprint == fingerprint {
                    return;
                }
                stored.offset = offset;
                stored.fingerprint = fingerprint;
                stored.size = size;
            }
            None => {
                let path = source.current_path();
                state.entries.insert(
                    source.key,
                    Stored {
                        path,
                        offset,
                        fingerprint,
                        size,
                    },
                );
            }
        }
        state.dirty = true;
    }

    /// Records the file's size as last seen (for lost-byte accounting).
    pub(crate) fn observe_size(&self, key: FileKey, size: u64) {
        let mut state = self.lock();
        if let Some(stored) = state.entries.get_mut(&key) {
            stored.size = stored.size.max(size);
        }
    }

    /// Files with a checkpoint short of their current end, at their
    /// recorded path or renamed within its directory: after a crash,
    /// rotated files that were not finished. Blocking (reads directories).
    pub fn unfinished(&self) -> Vec<PathBuf> {
        let entries: Vec<(FileKey, Stored)> = {
            let state = self.lock();
            state
                .entries
                .iter()
                .map(|(key, stored)| (*key, stored.clone()))
                .collect()
        };
        entries
            .into_iter()
            .filter_map(|(key, stored)| {
                let path = locate(key, &stored.path, stored.fingerprint)?;
                let metadata = fs::metadata(&path).ok()?;
                (metadata.len() > stored.offset).then_some(path)
            })
            .collect()
    }

    /// All entries, sorted by key.
    pub fn entries(&self) -> Vec<CheckpointEntry> {
        let state = self.lock();
        let mut entries: Vec<CheckpointEntry> = state
            .entries
            .iter()
            .map(|(key, stored)| CheckpointEntry {
                dev: key.dev,
                inode: key.inode,
                path: stored.path.clone(),
                offset: stored.offset,
                fingerprint: stored.fingerprint,
                size: stored.size,
            })
            .collect();
        entries.sort_by_key(|entry| (entry.dev, entry.inode));
        entries
    }

    /// Forgets files that are gone (counting what was never acknowledged
    /// of them as lost), then writes the store if anything changed.
    /// Blocking (fsync): call from a blocking thread, see [`Self::persist`].
    pub fn persist_blocking(&self) -> Result<PersistOutcome> {
        let mut outcome = PersistOutcome::default();
        // Entries that are neither read nor at their recorded path: look
        // for them (a directory read each) without holding the lock.
        let suspects: Vec<(FileKey, PathBuf, Option<Fingerprint>)> = {
            let mut state = self.lock();
            state.active.retain(|_, source| source.strong_count() > 0);
            if state.scanned {
                state
                    .entries
                    .iter()
                    .filter(|(key, _)| !state.active.contains_key(*key))
                    .filter(|(key, stored)| {
                        !fs::metadata(&stored.path)
                            .is_ok_and(|metadata| FileKey::of(&metadata) == **key)
                    })
                    .map(|(key, stored)| (*key, stored.path.clone(), stored.fingerprint))
                    .collect()
            } else {
                Vec::new()
            }
        };
        let located: Vec<(FileKey, Option<PathBuf>)> = suspects
            .into_iter()
            .map(|(key, path, fingerprint)| (key, locate(key, &path, fingerprint)))
            .collect();
        {
            let mut state = self.lock();
            let State {
                entries,
                active,
                dirty,
                ..
            } = &mut *state;
            for (key, found) in located {
                if active.contains_key(&key) {
                    continue;
                }
                match found {
                    Some(path) => {
                        if let Some(stored) = entries.get_mut(&key) {
                            stored.path = path;
                            *dirty = true;
                        }
                    }
                    None => {
                        if let Some(stored) = entries.remove(&key) {
                            outcome.bytes_lost += stored.size.saturating_sub(stored.offset);
                            *dirty = true;
                        }
                    }
                }
            }
            if !state.dirty {
                return Ok(outcome);
            }
            state.dirty = false;
        }
        let file = CheckpointFile {
            version: FORMAT_VERSION,
            since_unix_nanos: self.since_unix_nanos(),
            files: self.entries(),
        };
        let result = write_atomically(&self.inner.path, &file);
        if result.is_err() {
            self.lock().dirty = true;
        }
        result.map(|()| PersistOutcome {
            wrote: true,
            ..outcome
        })
    }

    /// [`Self::persist_blocking`] on the blocking thread pool.
    pub async fn persist(&self) -> Result<PersistOutcome> {
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

/// Where the file `key` (whose first bytes had `fingerprint`) is now: at
/// `path`, or renamed within its directory (rotation), or nowhere; a file
/// with the inode but other first bytes is another file. Blocking.
fn locate(key: FileKey, path: &Path, fingerprint: Option<Fingerprint>) -> Option<PathBuf> {
    let same = |candidate: &Path| {
        let Some(fingerprint) = fingerprint else {
            return true;
        };
        let mut head = vec![0u8; fingerprint.len as usize];
        fs::File::open(candidate)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut head))
            .is_ok_and(|()| fingerprint.matches(&head))
    };
    if fs::metadata(path).is_ok_and(|metadata| FileKey::of(&metadata) == key) && same(path) {
        return Some(path.to_owned());
    }
    find_in_dir(path.parent()?, key).filter(|found| same(found))
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
    use crate::enrich::FileSource;

    fn source_for(path: &Path) -> Arc<FileSource> {
        let metadata = fs::metadata(path).unwrap();
        let head = fs::read(path).unwrap();
        let source = Arc::new(FileSource::plain(
            FileKey::of(&metadata),
            path.to_owned(),
            "h",
        ));
        source.stats.set_fingerprint(Fingerprint::of(&head));
        source.stats.set_size(metadata.len());
        source
    }

    #[test]
    fn commit_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        fs::write(&log, b"0123456789").unwrap();
        let key = FileKey::of(&fs::metadata(&log).unwrap());
        let store_path = dir.path().join("checkpoints.json");

        let store = CheckpointStore::load(&store_path).unwrap();
        assert_eq!(store.resume(key, 10, b"0123456789"), Resume::Fresh);
        let source = source_for(&log);
        store.commit(&source, 7);
        assert!(store.persist_blocking().unwrap().wrote);
        assert!(
            !store.persist_blocking().unwrap().wrote,
            "nothing changed, nothing written"
        );

        let reloaded = CheckpointStore::load(&store_path).unwrap();
        assert_eq!(reloaded.resume(key, 10, b"0123456789"), Resume::At(7));
        assert_eq!(reloaded.resume(key, 12, b"0123456789ab"), Resume::At(7));
        // A file now shorter than the offset was truncated: start over.
        assert_eq!(
            reloaded.resume(key, 5, b"01234"),
            Resume::Reset {
                reason: ResetReason::Truncated,
                lost: 3
            }
        );
        // Same inode, other content: a new file reusing the inode.
        assert_eq!(
            reloaded.resume(key, 10, b"abcdefghij"),
            Resume::Reset {
                reason: ResetReason::Fingerprint,
                lost: 3
            }
        );
        assert!(!dir.path().join("checkpoints.json.tmp").exists());
    }

    #[test]
    fn gone_files_are_pruned_and_counted_as_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("checkpoints.json");
        let log = dir.path().join("gone.log");
        fs::write(&log, b"0123456789").unwrap();
        let store = CheckpointStore::load(&store_path).unwrap();
        let source = source_for(&log);
        store.register(&source);
        store.commit(&source, 4);
        fs::remove_file(&log).unwrap();
        // Still held by a reader: kept.
        assert_eq!(store.persist_blocking().unwrap().bytes_lost, 0);
        assert_eq!(store.entries().len(), 1);
        drop(source);
        // Nothing is pruned before discovery has looked everywhere once.
        assert_eq!(store.persist_blocking().unwrap().bytes_lost, 0);
        assert_eq!(store.entries().len(), 1);
        store.reconcile(&HashMap::new());
        let outcome = store.persist_blocking().unwrap();
        assert_eq!(outcome.bytes_lost, 6);
        assert!(
            CheckpointStore::load(&store_path)
                .unwrap()
                .entries()
                .is_empty()
        );
    }

    #[test]
    fn a_generation_renamed_within_its_directory_keeps_its_entry() {
        // Docker's json-file: `.1` becomes `.2` and the live file `.1`,
        // possibly while the agent is down.
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("checkpoints.json");
        let first = dir.path().join("c-json.log.1");
        fs::write(&first, b"old generation\n").unwrap();
        let store = CheckpointStore::load(&store_path).unwrap();
        let source = source_for(&first);
        store.commit(&source, 15);
        let key = source.key;
        drop(source);
        store.persist_blocking().unwrap();
        let second = dir.path().join("c-json.log.2");
        fs::rename(&first, &second).unwrap();
        fs::write(&first, b"newer generation\n").unwrap();

        let reloaded = CheckpointStore::load(&store_path).unwrap();
        reloaded.reconcile(&HashMap::new());
        let outcome = reloaded.persist_blocking().unwrap();
        assert_eq!(outcome.bytes_lost, 0);
        let entries = reloaded.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, second);
        assert_eq!(
            reloaded.resume(key, 15, b"old generation\n"),
            Resume::At(15)
        );
        // Discovery's scan relocates too.
        let third = dir.path().join("c-json.log.3");
        fs::rename(&second, &third).unwrap();
        reloaded.reconcile(&HashMap::from([(key, third.clone())]));
        assert_eq!(reloaded.entries()[0].path, third);
    }

    #[test]
    fn a_reset_counts_the_unacknowledged_bytes_of_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        fs::write(&log, b"0123456789").unwrap();
        let store = CheckpointStore::load(&dir.path().join("checkpoints.json")).unwrap();
        let source = source_for(&log);
        source.stats.set_size(10);
        store.commit(&source, 4);
        assert_eq!(
            store.resume(source.key, 2, b"ab"),
            Resume::Reset {
                reason: ResetReason::Truncated,
                lost: 6
            }
        );
        assert_eq!(
            store.resume(source.key, 10, b"abcdefghij"),
            Resume::Reset {
                reason: ResetReason::Fingerprint,
                lost: 6
            }
        );
    }

    #[test]
    fn a_copy_of_known_content_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        let long: Vec<u8> = (0..600u32).map(|i| b'a' + (i % 26) as u8).collect();
        fs::write(&log, &long).unwrap();
        let store = CheckpointStore::load(&dir.path().join("checkpoints.json")).unwrap();
        let source = source_for(&log);
        store.register(&source);
        let other = FileKey {
            dev: u64::MAX,
            inode: u64::MAX,
        };
        assert!(store.knows_content(other, &long[..256], 600));
        assert!(
            !store.knows_content(source.key, &long[..256], 600),
            "itself"
        );
        let mut different = long[..256].to_vec();
        different[3] = b'!';
        assert!(!store.knows_content(other, &different, 600));

        // A short file: only a copy of exactly its bytes matches, never a
        // longer file that merely starts the same way.
        let short = dir.path().join("short.log");
        fs::write(&short, b"2026-11-21T05:48:48Z").unwrap();
        let short_source = source_for(&short);
        store.register(&short_source);
        drop(source);
        assert!(store.knows_content(other, b"2026-11-21T05:48:48Z", 20));
        assert!(!store.knows_content(other, b"2026-11-21T05:48:48Z other line", 31));
    }

    #[test]
    fn relocated_files_are_unfinished_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("checkpoints.json");
        let log = dir.path().join("0.log");
        fs::write(&log, b"0123456789").unwrap();
        let store = CheckpointStore::load(&store_path).unwrap();
        let source = source_for(&log);
        store.commit(&source, 4);
        let rotated = dir.path().join("0.log.20261121");
        fs::rename(&log, &rotated).unwrap();
        store.relocate(source.key, &rotated);
        store.persist_blocking().unwrap();
        drop(source);
        let reloaded = CheckpointStore::load(&store_path).unwrap();
        assert_eq!(reloaded.unfinished(), [rotated]);
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
