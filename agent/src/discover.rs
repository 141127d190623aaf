//! Discovery: finds every file the agent owes the collector and starts one
//! reader per identity `(device, inode)`.
//!
//! ## How files are found
//!
//! Each include glob is split into the directories it can match at every
//! level below its literal prefix (for `/var/log/pods/*/*/*.log`:
//! `/var/log/pods`, each pod directory, each container directory) and the
//! pattern of the file name. Every such directory is watched with inotify
//! (create, moved-to and close-write only: a log directory sees a modify
//! event per write, which discovery has no use for), so a new file or a
//! renamed one is opened within milliseconds of its appearance, and a new
//! pod or container directory gets its own watch at once. A full scan
//! (the globs, then a listing of each file directory) runs every
//! `discovery_interval` all the same: it is the fallback when inotify is
//! unavailable or its queue overflowed, and it locates every identity for
//! the checkpoints. Files are opened by the scan itself, so the descriptor
//! a reader gets is the identity the scan saw, even if the name is
//! rotated away a microsecond later.
//!
//! ## Rotated generations
//!
//! In a file directory, a name that extends a watched name by one
//! `.<suffix>` (kubelet's `0.log.20261121-054848`, Docker's
//! `<id>-json.log.1`, logrotate's `app.log.1`) is a rotated generation of
//! it, unless the suffix names a compression (`.gz`, `.zst`, ...: those
//! bytes were plain text once and are read, if at all, under their plain
//! name). Rules and enrichment apply to it under the name it was rotated
//! from. Such a file is read to its end when it is not finished:
//!
//! - it is being read already (renamed under its reader) or was read to
//!   its end in this run: nothing to do;
//! - it has a checkpoint: resumed at its offset (a finished one ends at
//!   once);
//! - it has none and its first bytes are those of a file already known
//!   under another identity: a copy (copytruncate keeps one), skipped,
//!   because the reader of the original reads what it had not read from
//!   the copy when it sees the cut; an empty one waits until it has bytes
//!   to compare. The skip is not persisted: after a restart a copy is read
//!   again unless a checkpoint resumes it (duplicates, never a loss);
//! - it has none: read from its start, because it is a generation the
//!   agent has not seen (rotated faster than any poll, or while the agent
//!   was down). Only in the first scan after start, with
//!   `read_from_start = false`, are files last written before the agent
//!   first ran on this data directory left alone, like live files there.
//!
//! Checkpoints keep an entry while its file exists anywhere discovery
//! looks (see [`crate::checkpoint`]), so a restart never reads a finished
//! generation again. Per-file offsets are what make this lossless; the
//! generations of one stream are read concurrently and records of one
//! generation keep their order. A record split by the runtime across a
//! rotation (CRI `P` pieces) is shipped as two records, never lost.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use glob::Pattern;
use inotify::{EventMask, Inotify, WatchMask, Watches};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::identity::{FileKey, Fingerprint};
use crate::shutdown::Shutdown;
use crate::tail::{Opened, Origin, TailContext, TailEnd, open, tail_file};

/// What a reader task returns: where the file was opened, why the reader
/// stopped, and how far it read.
type ReaderResult = (PathBuf, TailEnd, u64);

/// Suffixes of compressed rotated files: never read as text.
const COMPRESSED_SUFFIXES: &[&str] = &["gz", "bz2", "xz", "zst", "lz4", "zip", "z", "br"];

/// Events discovery listens to on a watched directory.
fn watch_mask() -> WatchMask {
    WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE | WatchMask::ONLYDIR
}

/// Most inotify events handled before a scan (more wait for the next).
const MAX_EVENTS_PER_SCAN: usize = 4096;

/// One include glob, split for watching and matching.
#[derive(Debug, Clone)]
struct Layout {
    /// Globs of the directories to watch, from the literal prefix down to
    /// the directories that hold files (the last one).
    levels: Vec<String>,
    /// Pattern of a matching file's name.
    name: Pattern,
}

impl Layout {
    fn parse(pattern: &str) -> Option<Layout> {
        let path = Path::new(pattern);
        let name = Pattern::new(path.file_name()?.to_str()?).ok()?;
        let parent = path.parent()?.to_str()?;
        let parent = if parent.is_empty() { "." } else { parent };
        let components: Vec<&str> = parent.split('/').collect();
        let literal = components
            .iter()
            .take_while(|component| !component.contains(['*', '?', '[']))
            .count()
            .max(1);
        let levels = (literal..=components.len())
            .map(|depth| {
                let joined = components[..depth].join("/");
                if joined.is_empty() {
                    "/".to_owned()
                } else {
                    joined
                }
            })
            .collect();
        Some(Layout { levels, name })
    }
}

/// How a directory entry relates to the globs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// The name matches a glob.
    Live,
    /// The name extends a matching name by `.<suffix>`: a rotated
    /// generation of the file at `logical`.
    Rotated { logical: PathBuf },
}

/// Whether `name` in a directory of `layouts` is a file to read.
fn classify(dir: &Path, name: &str, layouts: &[&Layout]) -> Option<Kind> {
    if layouts.iter().any(|layout| layout.name.matches(name)) {
        return Some(Kind::Live);
    }
    let (base, suffix) = name.rsplit_once('.')?;
    if base.is_empty()
        || suffix.is_empty()
        || COMPRESSED_SUFFIXES
            .iter()
            .any(|compressed| suffix.eq_ignore_ascii_case(compressed))
    {
        return None;
    }
    layouts
        .iter()
        .any(|layout| layout.name.matches(base))
        .then(|| Kind::Rotated {
            logical: dir.join(base),
        })
}

/// Files a scan must not open again.
#[derive(Debug, Default, Clone)]
struct Known {
    /// Being read.
    reading: HashSet<FileKey>,
    /// Read to their end in this run, with the offset reached: opened
    /// again only when their size changed (they grew, or the inode is
    /// another file's now; the reader tells by the fingerprint).
    finished: HashMap<FileKey, u64>,
    /// Excluded by filters, at this path.
    excluded: HashSet<(FileKey, PathBuf)>,
}

impl Known {
    fn skips(&self, key: FileKey, path: &Path, size: u64) -> bool {
        self.reading.contains(&key)
            || self
                .finished
                .get(&key)
                .is_some_and(|offset| size == *offset)
            || self.excluded.contains(&(key, path.to_owned()))
    }
}

/// A file a scan opened.
#[derive(Debug)]
struct Candidate {
    opened: Opened,
    kind: Kind,
    /// Last modification, Unix ns.
    modified_unix_nanos: u64,
}

/// What one scan found.
#[derive(Debug, Default)]
struct Scan {
    /// Every regular file found (live and rotated), by identity.
    present: HashMap<FileKey, PathBuf>,
    /// Files not known before, opened.
    candidates: Vec<Candidate>,
    /// File directories and the layouts that apply to them (full scans).
    file_dirs: HashMap<PathBuf, Vec<usize>>,
    /// Watches added: descriptor id and directory.
    watched: Vec<(i32, PathBuf)>,
}

/// Lists `dir` and opens the files in it not in `known`. Blocking.
fn scan_dir(dir: &Path, layouts: &[&Layout], known: &Known, scan: &mut Scan) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(PathBuf, Kind)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let kind = classify(dir, name.to_str()?, layouts)?;
            Some((entry.path(), kind))
        })
        .collect();
    // Live names first: a file reachable under both is read as live.
    found.sort_by_key(|(path, kind)| (*kind != Kind::Live, path.clone()));
    for (path, kind) in found {
        // Follows symlinks (/var/log/containers links into /var/log/pods).
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        if !metadata.is_file() {
            continue;
        }
        let key = FileKey::of(&metadata);
        if scan.present.contains_key(&key) {
            continue;
        }
        scan.present.insert(key, path.clone());
        if known.skips(key, &path, metadata.len()) {
            continue;
        }
        let logical = match &kind {
            Kind::Live => path.clone(),
            Kind::Rotated { logical } => logical.clone(),
        };
        let opened = match open(&path, &logical) {
            Ok(opened) => opened,
            Err(error) => {
                debug!(path = %path.display(), %error, "cannot open discovered file");
                continue;
            }
        };
        // The name may have moved on between stat and open: the
        // descriptor is the truth.
        if opened.key != key && known.skips(opened.key, &path, opened.size) {
            continue;
        }
        let modified_unix_nanos = metadata
            .modified()
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
            });
        scan.candidates.push(Candidate {
            opened,
            kind,
            modified_unix_nanos,
        });
    }
}

/// Expands every layout, adds watches for the directories found (before
/// listing them, so a file created meanwhile is either listed or
/// announced), then lists the file directories. Blocking.
fn full_scan(layouts: &[Layout], known: &Known, watches: Option<&mut Watches>) -> Scan {
    let mut scan = Scan::default();
    let mut watch_dirs: Vec<PathBuf> = Vec::new();
    for (index, layout) in layouts.iter().enumerate() {
        let last = layout.levels.len() - 1;
        // A root that does not exist yet (no pod started on this node):
        // its nearest existing ancestor says when it appears.
        if let Some(root) = layout.levels.first().map(Path::new)
            && !root.is_dir()
            && let Some(ancestor) = root.ancestors().skip(1).find(|dir| dir.is_dir())
        {
            watch_dirs.push(ancestor.to_owned());
        }
        for (level, pattern) in layout.levels.iter().enumerate() {
            let dirs: Vec<PathBuf> = match glob::glob(pattern) {
                Ok(paths) => paths.flatten().filter(|path| path.is_dir()).collect(),
                Err(error) => {
                    // Validated at start-up; kept non-fatal all the same.
                    warn!(pattern, %error, "bad include glob");
                    continue;
                }
            };
            for dir in dirs {
                if level == last {
                    scan.file_dirs.entry(dir.clone()).or_default().push(index);
                }
                watch_dirs.push(dir);
            }
        }
    }
    if let Some(watches) = watches {
        watch_dirs.sort();
        watch_dirs.dedup();
        for dir in watch_dirs {
            match watches.add(&dir, watch_mask()) {
                Ok(descriptor) => scan
                    .watched
                    .push((descriptor.get_watch_descriptor_id(), dir)),
                Err(error) => {
                    debug!(dir = %dir.display(), %error, "cannot watch directory, polling it");
                }
            }
        }
    }
    let mut file_dirs: Vec<(&PathBuf, &Vec<usize>)> = scan.file_dirs.iter().collect();
    file_dirs.sort();
    let mut listed = Scan::default();
    for (dir, indexes) in file_dirs {
        let applying: Vec<&Layout> = indexes.iter().map(|index| &layouts[*index]).collect();
        scan_dir(dir, &applying, known, &mut listed);
    }
    scan.present = listed.present;
    scan.candidates = listed.candidates;
    scan
}

/// Lists only `dirs` (announced by inotify). Blocking.
fn partial_scan(
    layouts: &[Layout],
    file_dirs: &HashMap<PathBuf, Vec<usize>>,
    dirs: &[PathBuf],
    known: &Known,
) -> Scan {
    let mut scan = Scan::default();
    for dir in dirs {
        let Some(indexes) = file_dirs.get(dir) else {
            continue;
        };
        let applying: Vec<&Layout> = indexes.iter().map(|index| &layouts[*index]).collect();
        scan_dir(dir, &applying, known, &mut scan);
    }
    scan
}

/// The directories watched with inotify, if it is available.
struct Watcher {
    events: inotify::EventStream<Vec<u8>>,
    watches: Watches,
    dirs: HashMap<i32, PathBuf>,
}

impl Watcher {
    fn new() -> Option<Watcher> {
        let started = Inotify::init().and_then(|inotify| {
            let watches = inotify.watches();
            let events = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
            Ok(Watcher {
                events,
                watches,
                dirs: HashMap::new(),
            })
        });
        match started {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                warn!(%error, "inotify unavailable, discovering files by polling only");
                None
            }
        }
    }
}

/// What the events since the last scan ask for.
#[derive(Debug, Default)]
struct Wakeup {
    /// A directory appeared, or events were lost: scan everything.
    full: bool,
    /// File directories where files appeared.
    dirs: HashSet<PathBuf>,
}

impl Wakeup {
    fn add(
        &mut self,
        event: &inotify::Event<std::ffi::OsString>,
        watched: &mut HashMap<i32, PathBuf>,
    ) {
        let id = event.wd.get_watch_descriptor_id();
        if event.mask.contains(EventMask::Q_OVERFLOW) {
            self.full = true;
        } else if event.mask.contains(EventMask::IGNORED) {
            watched.remove(&id);
        } else if event.mask.contains(EventMask::ISDIR) {
            self.full = true;
        } else if let Some(dir) = watched.get(&id) {
            self.dirs.insert(dir.clone());
        }
    }
}

/// Everything the discovery loop keeps between scans.
struct Discovery {
    context: TailContext,
    layouts: Arc<Vec<Layout>>,
    readers: HashMap<FileKey, JoinHandle<ReaderResult>>,
    known: Known,
    file_dirs: Arc<HashMap<PathBuf, Vec<usize>>>,
    watcher: Option<Watcher>,
}

/// Runs discovery until shutdown, then waits for every reader to stop.
///
/// At start, files with a checkpoint short of their end that no scan finds
/// (renamed outside the watched names while the agent was down) are read
/// to their end too.
pub(crate) async fn run_discovery(interval: Duration, context: TailContext) {
    let mut shutdown: Shutdown = context.shutdown.clone();
    let mut rules_rx = context.rules.clone();
    let layouts = layouts_of(&rules_rx.borrow_and_update().include);
    let mut discovery = Discovery {
        context,
        layouts,
        readers: HashMap::new(),
        known: Known::default(),
        file_dirs: Arc::new(HashMap::new()),
        watcher: Watcher::new(),
    };
    discovery.full(true).await;
    discovery.resume_unfinished().await;

    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    loop {
        let mut wakeup = Wakeup::default();
        tokio::select! {
            _ = ticker.tick() => wakeup.full = true,
            event = next_event(discovery.watcher.as_mut()) => {
                let Some(watcher) = discovery.watcher.as_mut() else {
                    continue;
                };
                match event {
                    Some(Ok(event)) => {
                        wakeup.add(&event, &mut watcher.dirs);
                        // Take what else is queued: one scan for a burst.
                        for _ in 0..MAX_EVENTS_PER_SCAN {
                            match watcher.events.next().now_or_never() {
                                Some(Some(Ok(event))) => wakeup.add(&event, &mut watcher.dirs),
                                _ => break,
                            }
                        }
                    }
                    Some(Err(error)) => {
                        warn!(%error, "inotify failed, discovering files by polling only");
                        discovery.watcher = None;
                        continue;
                    }
                    None => {
                        discovery.watcher = None;
                        continue;
                    }
                }
            }
            () = shutdown.triggered() => break,
        }
        if rules_rx.has_changed().unwrap_or(false) {
            discovery.layouts = layouts_of(&rules_rx.borrow_and_update().include);
            discovery.known.excluded.clear();
            wakeup.full = true;
        }
        if wakeup.full {
            discovery.full(false).await;
        } else if !wakeup.dirs.is_empty() {
            discovery.partial(wakeup.dirs.into_iter().collect()).await;
        }
    }

    for (_, reader) in discovery.readers {
        if let Err(error) = reader.await {
            warn!(%error, "file reader task failed");
        }
    }
}

/// The next inotify event; pending forever without a watcher.
async fn next_event(
    watcher: Option<&mut Watcher>,
) -> Option<std::io::Result<inotify::Event<std::ffi::OsString>>> {
    match watcher {
        Some(watcher) => watcher.events.next().await,
        None => std::future::pending().await,
    }
}

fn layouts_of(include: &[String]) -> Arc<Vec<Layout>> {
    Arc::new(
        include
            .iter()
            .filter_map(|pattern| {
                let layout = Layout::parse(pattern);
                if layout.is_none() {
                    warn!(pattern, "include glob names no file, ignored");
                }
                layout
            })
            .collect(),
    )
}

impl Discovery {
    /// Forgets readers that stopped, remembering what they finished.
    async fn reap(&mut self) {
        let stopped: Vec<FileKey> = self
            .readers
            .iter()
            .filter(|(_, reader)| reader.is_finished())
            .map(|(key, _)| *key)
            .collect();
        for key in stopped {
            let Some(reader) = self.readers.remove(&key) else {
                continue;
            };
            match reader.await {
                Ok((path, TailEnd::Excluded, _)) => {
                    self.known.excluded.insert((key, path));
                }
                Ok((_, TailEnd::Done, offset)) => {
                    self.known.finished.insert(key, offset);
                }
                Err(error) => warn!(%error, "file reader task failed"),
            }
        }
        self.known.reading = self.readers.keys().copied().collect();
    }

    async fn full(&mut self, initial: bool) {
        self.reap().await;
        let layouts = Arc::clone(&self.layouts);
        let known = self.known.clone();
        let mut watches = self.watcher.as_ref().map(|watcher| watcher.watches.clone());
        let scan = match tokio::task::spawn_blocking(move || {
            full_scan(&layouts, &known, watches.as_mut())
        })
        .await
        {
            Ok(scan) => scan,
            Err(error) => {
                warn!(%error, "file discovery failed");
                return;
            }
        };
        if let Some(watcher) = self.watcher.as_mut() {
            watcher.dirs.extend(scan.watched.iter().cloned());
        }
        self.context.checkpoints.reconcile(&scan.present);
        self.known
            .finished
            .retain(|key, _| scan.present.contains_key(key));
        self.known
            .excluded
            .retain(|(key, path)| scan.present.get(key) == Some(path));
        self.file_dirs = Arc::new(scan.file_dirs);
        self.start_readers(scan.candidates, initial);
    }

    async fn partial(&mut self, dirs: Vec<PathBuf>) {
        self.reap().await;
        let layouts = Arc::clone(&self.layouts);
        let file_dirs = Arc::clone(&self.file_dirs);
        let known = self.known.clone();
        match tokio::task::spawn_blocking(move || partial_scan(&layouts, &file_dirs, &dirs, &known))
            .await
        {
            Ok(scan) => self.start_readers(scan.candidates, false),
            Err(error) => warn!(%error, "file discovery failed"),
        }
    }

    /// Decides, for each file a scan opened, whether and how to read it.
    fn start_readers(&mut self, candidates: Vec<Candidate>, initial: bool) {
        let context = self.context.clone();
        let context = &context;
        // Live files opened in the same scan are not registered yet: their
        // first bytes tell copies of them too.
        let live_heads: Vec<Fingerprint> = candidates
            .iter()
            .filter(|candidate| candidate.kind == Kind::Live)
            .map(|candidate| Fingerprint::of(&candidate.opened.head))
            .collect();
        for candidate in candidates {
            if context.shutdown.is_triggered() {
                return;
            }
            let key = candidate.opened.key;
            if self.readers.contains_key(&key) {
                continue;
            }
            let origin = match candidate.kind {
                Kind::Live => Origin::Live {
                    from_start: !initial || context.read_from_start,
                },
                Kind::Rotated { .. } => {
                    match rotated_decision(&candidate, initial, context, &live_heads) {
                        RotatedDecision::Read => {}
                        RotatedDecision::NotYet => continue,
                        RotatedDecision::Skip(why) => {
                            debug!(path = %candidate.opened.path.display(), why, "rotated file not read");
                            self.known.finished.insert(key, candidate.opened.size);
                            continue;
                        }
                    }
                    Origin::Rotated
                }
            };
            if origin == Origin::Rotated {
                info!(path = %candidate.opened.path.display(), "reading rotated file");
            } else {
                debug!(path = %candidate.opened.path.display(), "discovered file");
            }
            self.spawn(candidate.opened, origin);
        }
        self.known.reading = self.readers.keys().copied().collect();
    }

    fn spawn(&mut self, opened: Opened, origin: Origin) {
        let key = opened.key;
        let context = self.context.clone();
        let reader = tokio::spawn(tail_file(opened, origin, context));
        self.readers.insert(key, reader);
    }

    /// Reads checkpointed files short of their end that no scan found
    /// under a watched name.
    async fn resume_unfinished(&mut self) {
        let checkpoints = self.context.checkpoints.clone();
        let layouts = Arc::clone(&self.layouts);
        let opened = tokio::task::spawn_blocking(move || {
            checkpoints
                .unfinished()
                .into_iter()
                .filter_map(|path| {
                    let logical = logical_name(&path, &layouts);
                    open(&path, &logical).ok()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for opened in opened {
            if self.readers.contains_key(&opened.key)
                || self.known.finished.contains_key(&opened.key)
            {
                continue;
            }
            info!(path = %opened.path.display(), "resuming rotated file left unfinished");
            self.spawn(opened, Origin::Rotated);
        }
        self.known.reading = self.readers.keys().copied().collect();
    }
}

/// Why a copy is not read.
const COPY: &str = "a copy of a file already read";

/// What to do with a rotated file a scan opened.
#[derive(Debug, PartialEq, Eq)]
enum RotatedDecision {
    Read,
    /// Empty: nothing to read or compare yet.
    NotYet,
    Skip(&'static str),
}

fn rotated_decision(
    candidate: &Candidate,
    initial: bool,
    context: &TailContext,
    live_heads: &[Fingerprint],
) -> RotatedDecision {
    let opened = &candidate.opened;
    let checkpoints = &context.checkpoints;
    if checkpoints.contains(opened.key) {
        return RotatedDecision::Read;
    }
    if opened.size == 0 {
        return RotatedDecision::NotYet;
    }
    if checkpoints.knows_content(opened.key, &opened.head, opened.size)
        || live_heads
            .iter()
            .any(|live| live.covers(&opened.head, opened.size))
    {
        return RotatedDecision::Skip(COPY);
    }
    if initial
        && !context.read_from_start
        && candidate.modified_unix_nanos < checkpoints.since_unix_nanos()
    {
        return RotatedDecision::Skip("written before the agent first ran");
    }
    RotatedDecision::Read
}

/// The name the rules know a file by: its rotated-from name when it
/// extends a watched name, else its own path.
fn logical_name(path: &Path, layouts: &[Layout]) -> PathBuf {
    let (Some(dir), Some(name)) = (
        path.parent(),
        path.file_name().and_then(|name| name.to_str()),
    ) else {
        return path.to_owned();
    };
    let applying: Vec<&Layout> = layouts.iter().collect();
    match classify(dir, name, &applying) {
        Some(Kind::Rotated { logical }) => logical,
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(pattern: &str) -> Layout {
        Layout::parse(pattern).unwrap()
    }

    #[test]
    fn layouts_watch_every_level_below_the_literal_prefix() {
        let kubelet = layout("/var/log/pods/*/*/*.log");
        assert_eq!(
            kubelet.levels,
            ["/var/log/pods", "/var/log/pods/*", "/var/log/pods/*/*"]
        );
        assert!(kubelet.name.matches("0.log"));
        let docker = layout("/var/lib/docker/containers/*/*-json.log");
        assert_eq!(
            docker.levels,
            ["/var/lib/docker/containers", "/var/lib/docker/containers/*"]
        );
        let plain = layout("/var/log/app.log");
        assert_eq!(plain.levels, ["/var/log"]);
        assert_eq!(layout("/x.log").levels, ["/"]);
    }

    #[test]
    fn rotated_names_extend_a_watched_name_and_are_not_compressed() {
        let kubelet = layout("/p/*/*/*.log");
        let docker = layout("/c/*/*-json.log");
        let dir = Path::new("/p/ns_pod_uid/app");
        let rotated = |logical: &str| {
            Some(Kind::Rotated {
                logical: dir.join(logical),
            })
        };
        let layouts = [&kubelet, &docker];
        let cases = [
            ("0.log", Some(Kind::Live)),
            ("0.log.20261121-054848", rotated("0.log")),
            ("0.log.1", rotated("0.log")),
            ("0.log.20261121-054848.gz", None),
            ("0.log.1.ZST", None),
            ("abc-json.log", Some(Kind::Live)),
            ("abc-json.log.3", rotated("abc-json.log")),
            ("0.log.", None),
            ("config.v2.json", None),
            ("notes.txt", None),
            ("0.log.tmp.1", None),
        ];
        for (name, expected) in cases {
            assert_eq!(classify(dir, name, &layouts), expected, "{name}");
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn full_scan_finds_live_and_rotated_files_once_and_skips_known() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let app = dir.path().join("pods/ns_pod_uid/app");
        write(&app.join("0.log"), "live\n");
        write(&app.join("0.log.20261121-054848"), "rotated\n");
        write(&app.join("0.log.20261120-054848.gz"), "zipped\n");
        std::fs::create_dir_all(app.join("1.log")).unwrap();
        std::fs::hard_link(app.join("0.log"), app.join("2.log")).unwrap();
        let layouts = vec![
            layout(&format!("{root}/pods/*/*/*.log")),
            layout(&format!("{root}/pods/*/app/0.log")),
        ];

        let scan = full_scan(&layouts, &Known::default(), None);
        let mut opened: Vec<(String, Kind)> = scan
            .candidates
            .iter()
            .map(|candidate| {
                let name = candidate.opened.path.file_name().unwrap();
                (name.to_string_lossy().into_owned(), candidate.kind.clone())
            })
            .collect();
        opened.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            opened,
            [
                ("0.log".to_owned(), Kind::Live),
                (
                    "0.log.20261121-054848".to_owned(),
                    Kind::Rotated {
                        logical: app.join("0.log")
                    }
                ),
            ]
        );
        assert_eq!(scan.present.len(), 2);
        assert_eq!(scan.file_dirs.len(), 1);

        // Being read, or finished at its current size: not opened again.
        // A finished file of another size is (it grew, or its inode is a
        // new file's).
        let mut known = Known::default();
        let key_of = |name: &str| FileKey::of(&std::fs::metadata(app.join(name)).unwrap());
        known.reading.insert(key_of("0.log"));
        known
            .finished
            .insert(key_of("0.log.20261121-054848"), "rotated\n".len() as u64);
        assert!(full_scan(&layouts, &known, None).candidates.is_empty());
        known.finished.insert(key_of("0.log.20261121-054848"), 3);
        assert_eq!(full_scan(&layouts, &known, None).candidates.len(), 1);
    }

    #[test]
    fn logical_name_of_a_rotated_file_is_the_name_it_was_rotated_from() {
        let layouts = vec![layout("/p/*/*/*.log")];
        assert_eq!(
            logical_name(Path::new("/p/a/b/0.log.7"), &layouts),
            Path::new("/p/a/b/0.log")
        );
        assert_eq!(
            logical_name(Path::new("/elsewhere/app.log-2026"), &layouts),
            Path::new("/elsewhere/app.log-2026")
        );
    }
}
