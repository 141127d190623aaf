//! Discovery: expands the include globs every interval and starts a reader
//! for every file not already being read.
//!
//! Files are told apart by `(device, inode)`, so a file renamed by
//! rotation is not read twice and a new file at an old path is new.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::checkpoint::FileKey;
use crate::shutdown::Shutdown;
use crate::tail::{TailContext, TailEnd, tail_file};

/// Runs discovery until shutdown, then waits for every reader to stop.
///
/// At start, files that have a checkpoint short of their end but no longer
/// match the globs (rotated away while the agent was down) are read to
/// their end first, so a crash during rotation loses nothing.
pub(crate) async fn run_discovery(interval: Duration, context: TailContext) {
    let mut shutdown: Shutdown = context.shutdown.clone();
    let mut readers: HashMap<FileKey, JoinHandle<(PathBuf, TailEnd)>> = HashMap::new();
    // Files a filter excludes: not opened again until the rules change.
    // Keyed by path too, so a new file reusing the inode is not skipped.
    let mut excluded: HashSet<(FileKey, PathBuf)> = HashSet::new();
    let mut rules_rx = context.rules.clone();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let unfinished = context.checkpoints.unfinished();
    let include = rules_rx.borrow().include.clone();
    let unfinished_found = {
        let include = include.clone();
        tokio::task::spawn_blocking(move || {
            let matched: HashSet<FileKey> =
                expand(&include).into_iter().map(|(key, _)| key).collect();
            unfinished
                .into_iter()
                .filter_map(|path| {
                    let key = FileKey::of(&std::fs::metadata(&path).ok()?);
                    (!matched.contains(&key)).then_some((key, path))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    };
    for (key, path) in unfinished_found {
        info!(path = %path.display(), "resuming rotated file left unfinished");
        readers.insert(key, spawn_reader(path, false, &context));
    }

    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.triggered() => break,
        }
        if rules_rx.has_changed().unwrap_or(false) {
            rules_rx.borrow_and_update();
            excluded.clear();
        }
        let finished: Vec<FileKey> = readers
            .iter()
            .filter(|(_, reader)| reader.is_finished())
            .map(|(key, _)| *key)
            .collect();
        for key in finished {
            let Some(reader) = readers.remove(&key) else {
                continue;
            };
            if let Ok((path, TailEnd::Excluded)) = reader.await {
                excluded.insert((key, path));
            }
        }
        let patterns = rules_rx.borrow().include.clone();
        let found = match tokio::task::spawn_blocking(move || expand(&patterns)).await {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "file discovery failed");
                continue;
            }
        };
        let present: HashSet<(FileKey, PathBuf)> = found.iter().cloned().collect();
        excluded.retain(|file| present.contains(file));
        for (key, path) in found {
            if readers.contains_key(&key)
                || excluded.contains(&(key, path.clone()))
                || shutdown.is_triggered()
            {
                continue;
            }
            debug!(path = %path.display(), "discovered file");
            readers.insert(key, spawn_reader(path, true, &context));
        }
    }

    for (_, reader) in readers {
        if let Err(error) = reader.await {
            warn!(%error, "file reader task failed");
        }
    }
}

fn spawn_reader(
    path: PathBuf,
    follow: bool,
    context: &TailContext,
) -> JoinHandle<(PathBuf, TailEnd)> {
    let context = context.clone();
    tokio::spawn(async move {
        let end = tail_file(path.clone(), follow, context).await;
        (path, end)
    })
}

/// Expands the globs into regular files, deduplicated by identity.
/// Blocking: runs on the blocking pool.
fn expand(patterns: &[String]) -> Vec<(FileKey, PathBuf)> {
    let mut found: HashMap<FileKey, PathBuf> = HashMap::new();
    for pattern in patterns {
        let paths = match glob::glob(pattern) {
            Ok(paths) => paths,
            Err(error) => {
                // Validated at start-up; kept non-fatal all the same.
                warn!(pattern, %error, "bad include glob");
                continue;
            }
        };
        for path in paths.flatten() {
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue;
            };
            if metadata.is_file() {
                found.entry(FileKey::of(&metadata)).or_insert(path);
            }
        }
    }
    let mut found: Vec<(FileKey, PathBuf)> = found.into_iter().collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_finds_files_once_and_skips_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods/ns_pod_uid/app");
        std::fs::create_dir_all(&pods).unwrap();
        std::fs::write(pods.join("0.log"), b"x\n").unwrap();
        std::fs::create_dir_all(pods.join("1.log")).unwrap();
        std::fs::hard_link(pods.join("0.log"), pods.join("2.log")).unwrap();

        let root = dir.path().display();
        let patterns = vec![
            format!("{root}/pods/*/*/*.log"),
            format!("{root}/pods/*/app/0.log"),
        ];
        let found = expand(&patterns);
        let names: Vec<_> = found
            .iter()
            .map(|(_, path)| path.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["0.log"]);
    }
}
