//! Splits: immutable tantivy indexes in the store's own schema, one per
//! partition and time window, cut by the partition's owner from the
//! entries it read and kept in S3-compatible object storage.
//!
//! A split is a directory, `<prefix>splits/<split id>/`, holding `logs/`
//! (a [`LogStore`]), `spans/` (a [`SpanStore`]) and `split.json`, its
//! self-describing metadata ([`SplitMeta`]: format version, partition,
//! stream sequence range, time range, counts), written last. A split is
//! listed (and so exists for readers) only once PostgreSQL has published
//! it; objects of a split that was never published are garbage.
//!
//! A message that cannot be decoded is counted and moved aside to
//! `<prefix>rejected/<split id>/<sequence>`, next to the split that skipped
//! it: it neither blocks its partition nor disappears.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use sightline_store::{Batch, LogStore, PartitionId, Span, SpanStore, Writers};

use crate::log::Entry;
use crate::metastore::SplitRow;

/// Format of a split's files and metadata; a reader refuses a newer one.
pub const SPLIT_FORMAT_VERSION: u32 = 1;

/// Where splits are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `http://host:port` of an S3-compatible server; AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Credentials; `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` from the
    /// environment when unset.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Key prefix of everything Sightline writes, e.g. `prod/`.
    #[serde(default)]
    pub prefix: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// `split.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub format_version: u32,
    #[serde(flatten)]
    pub row: SplitRow,
    /// Entries of the range that could not be decoded (moved aside).
    pub rejected: u64,
}

/// A split cut on the local disk, before upload.
pub struct LocalSplit {
    pub dir: tempfile::TempDir,
    pub meta: SplitMeta,
    /// The entries that could not be decoded, to move aside.
    pub rejected: Vec<Entry>,
}

/// Spans of the given traces in the partition's earlier splits, since a
/// time: what a split's trace summaries must count besides its own spans.
pub type EarlierSpans<'a> = &'a dyn Fn(&[String], i64) -> anyhow::Result<Vec<Span>>;

/// How far back a split's builder looks for earlier spans of its traces:
/// a trace whose spans are further apart is summarized in parts.
pub const TRACE_LOOKBACK_NANOS: i64 = 15 * 60 * 1_000_000_000;

/// An entry of the cluster log decoded, with its stream sequence: what a
/// partition owner holds until it is in a published split.
pub type Decoded = (u64, Arc<Batch>);

/// Decodes `entries`; the undecodable ones come back apart, to be moved
/// aside.
pub fn decode(partition: PartitionId, entries: Vec<Entry>) -> (Vec<Decoded>, Vec<Entry>) {
    let mut decoded = Vec::with_capacity(entries.len());
    let mut rejected = Vec::new();
    for entry in entries {
        match Batch::decode(&entry.payload) {
            Ok(batch) => decoded.push((entry.sequence, Arc::new(batch))),
            Err(error) => {
                tracing::warn!(partition, sequence = entry.sequence, %error, "an entry of the cluster log cannot be decoded; moved aside");
                rejected.push(entry);
            }
        }
    }
    (decoded, rejected)
}

/// Builds the split of `decoded` (all of `partition`, in sequence order;
/// `rejected` moved aside) covering stream sequences `[from, to)`. The
/// summary of a trace that began in an earlier split counts the spans
/// `earlier` gives, so a trace search on whole-trace properties finds it
/// in the newest split. Blocks: call it from a blocking thread.
#[allow(clippy::too_many_arguments)]
pub fn build(
    work_dir: &Path,
    partition: PartitionId,
    epoch: i64,
    from: u64,
    to: u64,
    decoded: &[Decoded],
    rejected: Vec<Entry>,
    earlier: EarlierSpans<'_>,
) -> anyhow::Result<LocalSplit> {
    let (dir, logs, spans) = new_split(work_dir, "split-")?;
    let mut counts = Counts::default();
    let mut traces = std::collections::BTreeSet::new();
    let mut first_span = i64::MAX;
    for (_, batch) in decoded {
        if let Batch::Spans(batch) = batch.as_ref() {
            for span in batch {
                traces.insert(span.trace_id.clone());
                first_span = first_span.min(span.start_time);
            }
        }
    }
    if !traces.is_empty() {
        let traces: Vec<String> = traces.into_iter().collect();
        spans.add_earlier_spans(earlier(
            &traces,
            first_span.saturating_sub(TRACE_LOOKBACK_NANOS),
        )?);
    }
    for (sequence, batch) in decoded {
        let encoded = batch.encode()?;
        match batch.as_ref() {
            Batch::Logs(records) => {
                counts.records(records);
                logs.add_encoded(*sequence, records.iter().cloned().zip(encoded.sources()))?;
            }
            Batch::Spans(batch) => {
                counts.spans(batch);
                spans.add_encoded(*sequence, batch.iter().cloned().zip(encoded.sources()))?;
            }
        }
    }
    let split_id = format!("p{partition:02}-{from:012}-{to:012}-e{epoch}");
    finish(
        dir,
        logs,
        spans,
        split_id,
        partition,
        (from, to),
        counts,
        rejected,
    )
}

/// A new split's directory under `work_dir` and its empty stores.
fn new_split(
    work_dir: &Path,
    prefix: &str,
) -> anyhow::Result<(tempfile::TempDir, LogStore, SpanStore)> {
    std::fs::create_dir_all(work_dir)?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(work_dir)
        .with_context(|| format!("failed to make a split directory in {}", work_dir.display()))?;
    // Built once and closed: small writers (a writer's fixed cost per
    // segment grows with its budget, and a split is one segment).
    let logs = LogStore::open_with(&dir.path().join("logs"), Writers::Small)?;
    let spans = SpanStore::open_with(&dir.path().join("spans"), Writers::Small)?;
    Ok((dir, logs, spans))
}

/// What a split holds, as its row lists it: the time range of its
/// records and spans (span start times) and how many of each.
struct Counts {
    min_time: i64,
    max_time: i64,
    logs: u64,
    spans: u64,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            min_time: i64::MAX,
            max_time: i64::MIN,
            logs: 0,
            spans: 0,
        }
    }
}

impl Counts {
    fn time(&mut self, time: i64) {
        self.min_time = self.min_time.min(time);
        self.max_time = self.max_time.max(time);
    }

    fn records(&mut self, records: &[sightline_store::LogRecord]) {
        records
            .iter()
            .for_each(|record| self.time(record.timestamp));
        self.logs += records.len() as u64;
    }

    fn spans(&mut self, spans: &[Span]) {
        spans.iter().for_each(|span| self.time(span.start_time));
        self.spans += spans.len() as u64;
    }
}

/// Commits a split's stores, closes them and writes `split.json`.
#[allow(clippy::too_many_arguments)]
fn finish(
    dir: tempfile::TempDir,
    logs: LogStore,
    spans: SpanStore,
    split_id: String,
    partition: PartitionId,
    (from, to): (u64, u64),
    counts: Counts,
    rejected: Vec<Entry>,
) -> anyhow::Result<LocalSplit> {
    logs.commit(to)?;
    spans.commit(to)?;
    let bytes = logs.disk_bytes() + sightline_store::dir_size(&dir.path().join("spans"));
    // The writers end (and their lock files go) before the files are read.
    drop(logs);
    drop(spans);
    let (min_time, max_time) = if counts.min_time > counts.max_time {
        (0, 0)
    } else {
        (counts.min_time, counts.max_time)
    };
    let meta = SplitMeta {
        format_version: SPLIT_FORMAT_VERSION,
        row: SplitRow {
            split_id,
            partition,
            from,
            to,
            min_time,
            max_time,
            logs: counts.logs,
            spans: counts.spans,
            bytes,
        },
        rejected: rejected.len() as u64,
    };
    // What a reader needs first, for nodes that read the split by range.
    crate::remote::write_hotcache(dir.path())?;
    std::fs::write(
        dir.path().join("split.json"),
        serde_json::to_vec_pretty(&meta)?,
    )?;
    Ok(LocalSplit {
        dir,
        meta,
        rejected,
    })
}

/// Merges adjacent splits of one partition (`inputs`, in sequence order,
/// each `to` the next one's `from`) into one, every record keeping its id
/// (its entry's sequence and its place in the entry) and every trace
/// summarized whole over the inputs' spans. Blocks.
pub fn merge(
    work_dir: &Path,
    partition: PartitionId,
    epoch: i64,
    inputs: &[(&SplitRow, &LogStore, &SpanStore)],
) -> anyhow::Result<LocalSplit> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        anyhow::bail!("nothing to merge");
    };
    let (from, to) = (first.0.from, last.0.to);
    let (dir, logs, spans) = new_split(work_dir, "merge-")?;
    let mut counts = Counts::default();
    // Records by the entry they came in, in their order in it: added
    // again entry by entry, they get the ids they had.
    let mut entries: std::collections::BTreeMap<u64, Vec<(usize, sightline_store::LogRecord)>> =
        Default::default();
    let mut all_spans = Vec::new();
    for (row, input_logs, input_spans) in inputs {
        anyhow::ensure!(
            row.partition == partition,
            "split {} is not of partition {partition}",
            row.split_id
        );
        for (seq, record) in input_logs.records()? {
            let (position, index) = sightline_store::record_position(seq);
            entries.entry(position).or_default().push((index, record));
        }
        all_spans.extend(input_spans.all_spans()?);
    }
    for (position, mut records) in entries {
        records.sort_by_key(|(index, _)| *index);
        anyhow::ensure!(
            records
                .iter()
                .enumerate()
                .all(|(i, (index, _))| i == *index),
            "the records of entry {position} are not all in the splits merged"
        );
        let records: Vec<sightline_store::LogRecord> =
            records.into_iter().map(|(_, record)| record).collect();
        counts.records(&records);
        logs.add(position, &records)?;
    }
    counts.spans(&all_spans);
    if !all_spans.is_empty() {
        spans.add(from, &all_spans)?;
    }
    let split_id = format!("p{partition:02}-{from:012}-{to:012}-m{epoch}");
    finish(
        dir,
        logs,
        spans,
        split_id,
        partition,
        (from, to),
        counts,
        Vec::new(),
    )
}

/// PUTs in flight at once while a split uploads.
const CONCURRENT_PUTS: usize = 8;

/// The splits' object storage.
#[derive(Clone)]
pub struct SplitStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl SplitStorage {
    pub fn new(config: &ObjectStoreConfig) -> anyhow::Result<SplitStorage> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().with_context(|| {
            format!(
                "invalid object storage settings for bucket {}",
                config.bucket
            )
        })?;
        Ok(SplitStorage {
            store: Arc::new(store),
            prefix: config.prefix.clone(),
        })
    }

    /// Splits in `store` (any object store: tests use an in-memory one)
    /// under `prefix`.
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str) -> SplitStorage {
        SplitStorage {
            store,
            prefix: prefix.to_string(),
        }
    }

    pub(crate) fn split_path(&self, split_id: &str) -> String {
        format!("{}splits/{split_id}", self.prefix)
    }

    pub(crate) fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The split's hotcache object; `None` for a split written before
    /// splits had one.
    pub async fn hotcache(&self, split_id: &str) -> anyhow::Result<Option<bytes::Bytes>> {
        let key = format!(
            "{}/{}",
            self.split_path(split_id),
            crate::remote::HOTCACHE_FILE
        );
        match self.store.get(&ObjectPath::from(key.as_str())).await {
            Ok(object) => Ok(Some(object.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(anyhow::Error::from(error).context(format!("failed to read {key}"))),
        }
    }

    /// Uploads a split's files, `split.json` last.
    pub async fn upload(&self, split: &LocalSplit) -> anyhow::Result<()> {
        let root = split.dir.path().to_path_buf();
        let files = tokio::task::spawn_blocking(move || list_files(&root)).await??;
        let base = self.split_path(&split.meta.row.split_id);
        let mut meta = None;
        let mut uploads = Vec::new();
        for relative in files {
            let local = split.dir.path().join(&relative);
            let key = format!("{base}/{}", relative.to_string_lossy());
            if relative == Path::new("split.json") {
                meta = Some((local, key));
            } else {
                uploads.push((local, key));
            }
        }
        // The index files side by side (a split is a dozen small objects,
        // and one PUT at a time made upload latency the partition's pace);
        // split.json only once they are all there.
        futures::stream::iter(uploads)
            .map(|(local, key)| async move { self.put_file(&local, &key).await })
            .buffer_unordered(CONCURRENT_PUTS)
            .try_collect::<()>()
            .await?;
        if let Some((local, key)) = meta {
            self.put_file(&local, &key).await?;
        }
        for entry in &split.rejected {
            let key = format!(
                "{}rejected/{}/{}",
                self.prefix, split.meta.row.split_id, entry.sequence
            );
            self.store
                .put(
                    &ObjectPath::from(key.as_str()),
                    entry.payload.clone().into(),
                )
                .await
                .with_context(|| format!("failed to move an undecodable entry aside to {key}"))?;
        }
        Ok(())
    }

    async fn put_file(&self, local: &Path, key: &str) -> anyhow::Result<()> {
        let bytes = tokio::fs::read(local)
            .await
            .with_context(|| format!("failed to read {}", local.display()))?;
        self.store
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .with_context(|| format!("failed to upload {key}"))?;
        Ok(())
    }

    /// Writes `bytes` at `relative` (under the storage's prefix).
    pub(crate) async fn put(&self, relative: &str, bytes: bytes::Bytes) -> anyhow::Result<()> {
        let key = format!("{}{relative}", self.prefix);
        self.store
            .put(&ObjectPath::from(key.as_str()), bytes.into())
            .await
            .with_context(|| format!("failed to upload {key}"))?;
        Ok(())
    }

    /// The object at `relative` (under the storage's prefix).
    pub(crate) async fn get(&self, relative: &str) -> anyhow::Result<bytes::Bytes> {
        let key = format!("{}{relative}", self.prefix);
        let object = self
            .store
            .get(&ObjectPath::from(key.as_str()))
            .await
            .with_context(|| format!("failed to read {key}"))?;
        Ok(object.bytes().await?)
    }

    /// The object at `relative`, or `None` when there is none.
    pub(crate) async fn get_opt(&self, relative: &str) -> anyhow::Result<Option<bytes::Bytes>> {
        match self.get(relative).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error)
                if error
                    .downcast_ref::<object_store::Error>()
                    .is_some_and(|error| matches!(error, object_store::Error::NotFound { .. })) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Byte ranges of the object at `relative` (nearby ranges are fetched
    /// by one request: `object_store` coalesces them).
    pub(crate) async fn get_ranges(
        &self,
        relative: &str,
        ranges: &[std::ops::Range<u64>],
    ) -> anyhow::Result<Vec<bytes::Bytes>> {
        let key = format!("{}{relative}", self.prefix);
        self.store
            .get_ranges(&ObjectPath::from(key.as_str()), ranges)
            .await
            .with_context(|| format!("failed to read {} ranges of {key}", ranges.len()))
    }

    /// Deletes every object under `relative` (under the storage's prefix);
    /// objects already gone are fine.
    pub(crate) async fn delete_under(&self, relative: &str) -> anyhow::Result<()> {
        let prefix = ObjectPath::from(format!("{}{relative}", self.prefix).as_str());
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        for object in objects {
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Deletes a split's objects (one that lost its publish, or retired).
    /// Objects already gone (another node deleting them too) are fine.
    pub async fn delete(&self, split_id: &str) -> anyhow::Result<()> {
        let prefix = ObjectPath::from(self.split_path(split_id).as_str());
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        for object in objects {
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Every split id with objects in the bucket, with when its newest
    /// object was written.
    pub async fn stored_splits(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<String, std::time::SystemTime>> {
        let base = format!("{}splits/", self.prefix);
        let prefix = ObjectPath::from(base.as_str());
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut splits = std::collections::BTreeMap::new();
        for object in objects {
            let key = object.location.to_string();
            let Some(split_id) = key
                .strip_prefix(&base)
                .and_then(|rest| rest.split('/').next())
            else {
                continue;
            };
            let written: std::time::SystemTime = object.last_modified.into();
            let newest = splits
                .entry(split_id.to_string())
                .or_insert(std::time::UNIX_EPOCH);
            if written > *newest {
                *newest = written;
            }
        }
        Ok(splits)
    }

    /// Downloads a split into `dir` and returns its metadata; open its
    /// stores with [`LogStore::open`] on `dir/logs` and [`SpanStore::open`]
    /// on `dir/spans`.
    pub async fn download(&self, split_id: &str, dir: &Path) -> anyhow::Result<SplitMeta> {
        let base = self.split_path(split_id);
        let prefix = ObjectPath::from(base.as_str());
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        anyhow::ensure!(
            !objects.is_empty(),
            "split {split_id} has no objects under {base}"
        );
        for object in objects {
            let key = object.location.to_string();
            let relative = key.strip_prefix(&format!("{base}/")).unwrap_or(&key);
            let local = dir.join(relative);
            if let Some(parent) = local.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let bytes = self.store.get(&object.location).await?.bytes().await?;
            tokio::fs::write(&local, &bytes).await?;
        }
        let meta: SplitMeta =
            serde_json::from_slice(&tokio::fs::read(dir.join("split.json")).await?)
                .with_context(|| format!("split {split_id} has no readable split.json"))?;
        anyhow::ensure!(
            meta.format_version <= SPLIT_FORMAT_VERSION,
            "split {split_id} has format {}, newer than this build's {SPLIT_FORMAT_VERSION}",
            meta.format_version
        );
        Ok(meta)
    }

    /// Keys of the entries moved aside.
    pub async fn rejected(&self) -> anyhow::Result<Vec<String>> {
        let prefix = ObjectPath::from(format!("{}rejected", self.prefix).as_str());
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(objects
            .into_iter()
            .map(|o| o.location.to_string())
            .collect())
    }
}

/// Every file under `root`, relative to it, without tantivy's lock files.
pub(crate) fn list_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if !entry.file_name().to_string_lossy().ends_with(".lock") {
                files.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
    }
    files.sort();
    Ok(files)
}
