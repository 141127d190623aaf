//! Discovery: expands the include globs every interval and starts a reader
//! for every file not already being read.
//!
//! Files are told apart by `(device, inode)`, so a file renamed by
//! rotation is not read twice and a new file at an old path is new.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::checkpoint::FileKey;
use crate::shutdown::Shutdown;
use crate::tail::{TailContext, tail_file};

/// Runs discovery until shutdown, then waits for every reader to stop.
pub(crate) async fn run_discovery(include: Vec<String>, interval: Duration, context: TailContext) {
    let mut shutdown: Shutdown = context.shutdown.clone();
    let mut readers: HashMap<FileKey, JoinHandle<()>> = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.triggered() => break,
        }
        readers.retain(|_, reader| !reader.is_finished());
        let patterns = include.clone();
        let found = match tokio::task::spawn_blocking(move || expand(&patterns)).await {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "file discovery failed");
                continue;
            }
        };
        for (key, path) in found {
            if readers.contains_key(&key) || shutdown.is_triggered() {
                continue;
            }
            debug!(path = %path.display(), "discovered file");
            readers.insert(key, tokio::spawn(tail_file(path, context.clone())));
        }
    }

    for (_, reader) in readers {
        if let Err(error) = reader.await {
            warn!(%error, "file reader task failed");
        }
    }
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
