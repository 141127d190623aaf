//! The streams of a log partition (format 3): each distinct resource once,
//! with the number its records refer to.
//!
//! A record's resource (pod, namespace, container, node: about ten
//! attributes) is the same for every record of its stream, so a partition
//! keeps it once, in `streams.jsonl` next to the tantivy index, and each
//! document holds only the stream's number (`stream_id`). Reads join it
//! back; queries on the resource are answered from this table first and
//! become a set of stream numbers (as Loki selects streams by their labels
//! before it reads chunks).
//!
//! The file is append-only, one `{"id":N,"resource":{...}}` line per stream,
//! numbers dense from 0. New lines are written and fsynced before the
//! partition's commit that makes the first document referring to them
//! visible ([`Streams::persist`]), so a committed document always finds its
//! stream. A crash can leave a torn last line: it was never referred to by
//! a commit, and is cut off when the partition opens.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, StoreError};

/// The file of a partition's streams.
pub(crate) const STREAMS_FILE: &str = "streams.jsonl";

#[derive(Serialize, Deserialize)]
struct Line {
    id: u64,
    resource: Map<String, Value>,
}

/// One partition's streams, in memory, with the lines not yet on disk.
pub(crate) struct Streams {
    path: PathBuf,
    /// The resource's JSON (canonical: keys sorted) to its number.
    by_json: HashMap<String, u64>,
    /// Resources by number.
    resources: Vec<Arc<Map<String, Value>>>,
    /// Lines of streams added since the last [`Streams::persist`].
    pending: String,
}

impl Streams {
    fn empty(path: PathBuf) -> Streams {
        Streams {
            path,
            by_json: HashMap::new(),
            resources: Vec::new(),
            pending: String::new(),
        }
    }

    /// Reads the partition's streams, cutting off a torn last line.
    pub(crate) fn open(dir: &Path) -> Result<Streams> {
        let mut streams = Streams::empty(dir.join(STREAMS_FILE));
        let text = match std::fs::read(&streams.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(streams),
            Err(error) => return Err(error.into()),
        };
        let valid = streams.parse(&text)?;
        if valid < text.len() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&streams.path)?;
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        Ok(streams)
    }

    /// The streams of a partition read elsewhere (a split in object
    /// storage), from the file's `text`, named `path` in errors. They are
    /// never written back.
    pub(crate) fn read_only(path: PathBuf, text: &[u8]) -> Result<Streams> {
        let mut streams = Streams::empty(path);
        streams.parse(text)?;
        Ok(streams)
    }

    /// Takes the streams of `text` in; returns how many of its bytes are
    /// whole lines (the rest is a torn last line).
    fn parse(&mut self, text: &[u8]) -> Result<usize> {
        let streams = self;
        let mut valid = 0;
        for (number, line) in text.split_inclusive(|byte| *byte == b'\n').enumerate() {
            let complete = line.ends_with(b"\n");
            let parsed = std::str::from_utf8(line)
                .ok()
                .and_then(|line| serde_json::from_str::<Line>(line.trim_end()).ok());
            let Some(parsed) = parsed.filter(|_| complete) else {
                if valid + line.len() == text.len() {
                    // The torn last line of a crash: never committed.
                    break;
                }
                return Err(StoreError::CorruptDocument(format!(
                    "{} line {}: not a stream",
                    streams.path.display(),
                    number + 1
                )));
            };
            if parsed.id != streams.resources.len() as u64 {
                return Err(StoreError::CorruptDocument(format!(
                    "{} line {}: stream {} where {} was expected",
                    streams.path.display(),
                    number + 1,
                    parsed.id,
                    streams.resources.len()
                )));
            }
            // The same text `id` is given: keys sorted, no spaces.
            let json = serde_json::to_string(&parsed.resource).unwrap_or_default();
            streams.by_json.insert(json, parsed.id);
            streams.resources.push(Arc::new(parsed.resource));
            valid += line.len();
        }
        Ok(valid)
    }

    /// The number of the stream of `resource`, whose canonical JSON is
    /// `json`, added if it is new.
    pub(crate) fn id(&mut self, resource: &Map<String, Value>, json: &str) -> u64 {
        if let Some(id) = self.by_json.get(json) {
            return *id;
        }
        let id = self.resources.len() as u64;
        self.pending
            .push_str(&format!("{{\"id\":{id},\"resource\":{json}}}\n"));
        self.by_json.insert(json.to_string(), id);
        self.resources.push(Arc::new(resource.clone()));
        id
    }

    /// Writes and fsyncs the streams added since the last call.
    pub(crate) fn persist(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(self.pending.as_bytes())?;
        file.sync_data()?;
        self.pending.clear();
        Ok(())
    }

    /// The resource of stream `id`.
    pub(crate) fn resource(&self, id: u64) -> Option<Arc<Map<String, Value>>> {
        self.resources.get(usize::try_from(id).ok()?).cloned()
    }

    /// Every stream: its number and resource.
    pub(crate) fn all(&self) -> impl Iterator<Item = (u64, &Map<String, Value>)> {
        self.resources
            .iter()
            .enumerate()
            .map(|(id, resource)| (id as u64, resource.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(pod: &str) -> (Map<String, Value>, String) {
        let Value::Object(map) = json!({"k8s.pod.name": pod, "host.name": "node-1"}) else {
            unreachable!()
        };
        let text = serde_json::to_string(&map).unwrap();
        (map, text)
    }

    #[test]
    fn streams_are_numbered_once_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut streams = Streams::open(dir.path()).unwrap();
        let (a, a_json) = resource("a");
        let (b, b_json) = resource("b");
        assert_eq!(streams.id(&a, &a_json), 0);
        assert_eq!(streams.id(&b, &b_json), 1);
        assert_eq!(streams.id(&a, &a_json), 0);
        streams.persist().unwrap();
        let reopened = Streams::open(dir.path()).unwrap();
        assert_eq!(reopened.resource(1).as_deref(), Some(&b));
        assert_eq!(reopened.all().count(), 2);
        assert_eq!(reopened.resource(2), None);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_a_corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut streams = Streams::open(dir.path()).unwrap();
        let (a, a_json) = resource("a");
        streams.id(&a, &a_json);
        streams.persist().unwrap();
        let path = dir.path().join(STREAMS_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"id\":1,\"resou");
        std::fs::write(&path, &text).unwrap();
        let mut reopened = Streams::open(dir.path()).unwrap();
        assert_eq!(reopened.all().count(), 1);
        let (b, b_json) = resource("b");
        assert_eq!(reopened.id(&b, &b_json), 1);
        reopened.persist().unwrap();
        assert_eq!(Streams::open(dir.path()).unwrap().all().count(), 2);

        std::fs::write(&path, format!("garbage\n{text}\n")).unwrap();
        let error = Streams::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("line 1"), "{error}");
    }
}
