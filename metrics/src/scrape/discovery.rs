//! Target discovery: static groups from the config and file-based discovery.
//!
//! A target file is a JSON or YAML list of `{targets: [...], labels: {...}}`
//! groups, as Prometheus' `file_sd_configs` reads it. [`FileDiscovery`]
//! expands its globs (relative to the config file's directory), re-reads a
//! file when its modification time or size changes or the refresh interval
//! has passed, and keeps a file's previous groups when it turns out broken.
//! Each group gets the label `__meta_filepath`, for `relabel_configs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::config_file::{FileSdConfig, StaticConfig};

/// Reads one target file; the error names the file and what is wrong.
pub fn read_target_file(path: &Path) -> Result<Vec<StaticConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let is_json = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("json"));
    let groups: Vec<StaticConfig> = if is_json {
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?
    } else {
        serde_norway::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?
    };
    for (index, group) in groups.iter().enumerate() {
        for target in &group.targets {
            if target.is_empty() || target.contains('/') || target.contains(char::is_whitespace) {
                return Err(format!(
                    "{}: group {index}: {target:?} is not a host:port address",
                    path.display()
                ));
            }
        }
        for name in group.labels.keys() {
            let valid = name.chars().enumerate().all(|(at, c)| {
                c == '_' || c.is_ascii_alphabetic() || (at > 0 && c.is_ascii_digit())
            });
            if name.is_empty() || !valid {
                return Err(format!(
                    "{}: group {index}: {name:?} is not a valid label name",
                    path.display()
                ));
            }
        }
    }
    Ok(groups)
}

/// What was last read from one file.
#[derive(Debug)]
struct FileState {
    stamp: (Option<SystemTime>, u64),
    groups: Vec<StaticConfig>,
}

/// One `file_sd_configs` entry, polled.
#[derive(Debug)]
pub struct FileDiscovery {
    patterns: Vec<String>,
    refresh_interval: Duration,
    last_full_read: Option<Instant>,
    files: BTreeMap<PathBuf, FileState>,
}

impl FileDiscovery {
    /// Globs relative to `base_dir` (the config file's directory).
    pub fn new(config: &FileSdConfig, base_dir: &Path) -> Self {
        let patterns = config
            .files
            .iter()
            .map(|pattern| {
                if Path::new(pattern).is_absolute() {
                    pattern.clone()
                } else {
                    base_dir.join(pattern).to_string_lossy().into_owned()
                }
            })
            .collect();
        FileDiscovery {
            patterns,
            refresh_interval: config.refresh_interval,
            last_full_read: None,
            files: BTreeMap::new(),
        }
    }

    /// Looks for new, changed and removed files; whether the groups changed.
    /// Blocking (file system); call it off the async executor.
    pub fn refresh(&mut self) -> bool {
        let full_read = self
            .last_full_read
            .is_none_or(|at| at.elapsed() >= self.refresh_interval);
        if full_read {
            self.last_full_read = Some(Instant::now());
        }
        let mut seen = Vec::new();
        for pattern in &self.patterns {
            let paths = match glob::glob(pattern) {
                Ok(paths) => paths,
                Err(error) => {
                    tracing::error!(pattern, %error, "invalid file_sd_configs pattern");
                    continue;
                }
            };
            seen.extend(paths.filter_map(Result::ok));
        }
        let mut changed = false;
        for path in &seen {
            let stamp = match std::fs::metadata(path) {
                Ok(metadata) => (metadata.modified().ok(), metadata.len()),
                Err(_) => continue,
            };
            let known = self.files.get(path);
            if !full_read && known.is_some_and(|state| state.stamp == stamp) {
                continue;
            }
            match read_target_file(path) {
                Ok(groups) => {
                    changed |= known.is_none_or(|state| state.groups != groups);
                    self.files.insert(path.clone(), FileState { stamp, groups });
                }
                Err(error) => {
                    tracing::error!(%error, "failed to read target file; keeping its previous targets");
                    // Not read again until it changes.
                    match self.files.get_mut(path) {
                        Some(state) => state.stamp = stamp,
                        None => {
                            self.files.insert(
                                path.clone(),
                                FileState {
                                    stamp,
                                    groups: Vec::new(),
                                },
                            );
                        }
                    }
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|path, _| seen.contains(path));
        changed | (self.files.len() != before)
    }

    /// The groups of every file, in path order, each labelled with
    /// `__meta_filepath` (the file's path) as Prometheus does.
    pub fn groups(&self) -> Vec<StaticConfig> {
        self.files
            .iter()
            .flat_map(|(path, state)| {
                let path = path.to_string_lossy();
                state.groups.iter().map(move |group| {
                    let mut group = group.clone();
                    group
                        .labels
                        .insert("__meta_filepath".into(), path.to_string());
                    group
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewritten_file_changes_targets_and_broken_file_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("targets")).unwrap();
        let json = dir.path().join("targets/a.json");
        let yaml = dir.path().join("targets/b.yml");
        std::fs::write(
            &json,
            r#"[{"targets": ["127.0.0.1:9100"], "labels": {"env": "prod"}}]"#,
        )
        .unwrap();
        std::fs::write(&yaml, "- targets: ['127.0.0.1:9200', 'host:9300']\n").unwrap();
        let config = FileSdConfig {
            files: vec!["targets/*.json".into(), "targets/*.yml".into()],
            refresh_interval: Duration::from_secs(3600),
        };
        let mut discovery = FileDiscovery::new(&config, dir.path());
        assert!(discovery.refresh());
        let addresses = |discovery: &FileDiscovery| -> Vec<String> {
            discovery
                .groups()
                .into_iter()
                .flat_map(|group| group.targets)
                .collect()
        };
        assert_eq!(
            addresses(&discovery),
            ["127.0.0.1:9100", "127.0.0.1:9200", "host:9300"]
        );
        assert_eq!(discovery.groups()[0].labels["env"], "prod");
        assert_eq!(
            discovery.groups()[0].labels["__meta_filepath"],
            json.to_string_lossy()
        );
        assert!(!discovery.refresh(), "nothing changed");

        // Rewritten (longer, so the size changes even on a coarse clock).
        std::fs::write(
            &json,
            r#"[{"targets": ["127.0.0.1:9101", "127.0.0.1:9102"], "labels": {"env": "prod"}}]"#,
        )
        .unwrap();
        assert!(discovery.refresh());
        assert_eq!(
            addresses(&discovery),
            [
                "127.0.0.1:9101",
                "127.0.0.1:9102",
                "127.0.0.1:9200",
                "host:9300"
            ]
        );

        // Broken: the previous targets stay.
        std::fs::write(&json, r#"[{"targets": ["127.0.0.1:9101""#).unwrap();
        assert!(!discovery.refresh());
        assert_eq!(addresses(&discovery).len(), 4);

        // Removed: its targets go.
        std::fs::remove_file(&yaml).unwrap();
        assert!(discovery.refresh());
        assert_eq!(addresses(&discovery), ["127.0.0.1:9101", "127.0.0.1:9102"]);
    }

    #[test]
    fn bad_entries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, r#"[{"targets": ["http://x:1/metrics"]}]"#).unwrap();
        let error = read_target_file(&path).unwrap_err();
        assert!(error.contains("not a host:port address"), "{error}");
        std::fs::write(&path, r#"[{"targets": ["x:1"], "labels": {"1a": "b"}}]"#).unwrap();
        let error = read_target_file(&path).unwrap_err();
        assert!(error.contains("not a valid label name"), "{error}");
    }
}
