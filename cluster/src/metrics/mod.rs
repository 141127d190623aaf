//! Samples in cluster mode, on the same engines as logs and traces (the
//! Mimir ingest-storage model, with JetStream in Kafka's place):
//!
//! ```text
//! remote-write, OTLP metrics, scrapes, derived metrics, rule outputs
//!   -> any collector: ClusterSampleLog (the tsdb's SampleLog seam)
//!   -> each sample to metrics partition PARTITIONS + hash(series) % 16,
//!      subject <prefix>.<partition> of the same stream
//!   -> every publish acknowledged by the stream -> ACK the writer
//! partition owner (the same leases and fenced checkpoints as log
//! partitions) reads from its checkpoint into a head (a MetricStore)
//!   -> every metrics_block_interval: the head cut into a block (the tsdb's
//!      block format), uploaded to S3 under blocks/<block id>/, published
//!      with the fenced checkpoint move, the partition purged below it
//! any collector's Prometheus API and rules: ClusterMetrics
//!   -> the blocks of the range and every metrics partition's checkpoint
//!      (one statement) -> blocks read from S3 through a bounded cache
//!   + every live node asked for its heads past those checkpoints
//!      (POST /internal/v1/metrics) -> merged by series, a timestamp once
//! ```
//!
//! - this module: the message format and [`ClusterSampleLog`];
//! - [`owner`]: a metrics partition's owner (head, block cut, publish) and
//!   the heads other nodes' queries read;
//! - [`reader`]: [`ClusterMetrics`], the blocks and heads as one
//!   [`sightline_tsdb::MetricReader`].
//!
//! What a receiver decided alone before (out-of-order refusals) is now the
//! owner's: a batch is acknowledged once the log has it, and a sample its
//! owner refuses is counted (`sightline_cluster_samples_refused_total`), as
//! Mimir's ingesters count what they drop from Kafka. Only what a receiver
//! can tell alone (no metric name) is refused in the answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sightline_store::PartitionId;
use sightline_tsdb::{AppendOutcome, Labels, MetricMetadata, SampleLog, SeriesData, TsdbError};

use crate::log::{ClusterLog, PublishError};
use crate::metastore::Metastore;
use crate::partition;

pub mod owner;
pub mod reader;
pub mod rules;

pub use owner::MetricHeads;
pub use reader::ClusterMetrics;
pub use rules::ClusterRules;

/// A samples message: `SLM1`, then the sample count and each sample as
/// its label count (0: the previous sample's labels) and (name, value)
/// strings, its timestamp (zigzag varint) and its value's bits (8 bytes,
/// little endian: staleness markers stay bit-exact).
const SAMPLES_MAGIC: &[u8; 4] = b"SLM1";

/// A message of delta points (OTLP delta sums), encoded as a samples
/// message: its owner adds each value to its series' running total.
const DELTAS_MAGIC: &[u8; 4] = b"SLD1";

/// A compressed message: `SLZ1`, then a samples or deltas message
/// compressed with snappy (raw format). Receivers write only these; the
/// uncompressed forms are still read.
const COMPRESSED_MAGIC: &[u8; 4] = b"SLZ1";

/// A compressed message expands to this many bytes at most.
const MAX_DECOMPRESSED: usize = 64 << 20;

/// What a message's samples are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Values as they are stored.
    Samples,
    /// Increments of each series' running total.
    Deltas,
}

/// A decoded message.
#[derive(Debug)]
pub(crate) struct Message {
    pub kind: Kind,
    pub samples: Vec<(Arc<Labels>, i64, f64)>,
}

/// The label sets an owner has decoded, by their encoded bytes in a
/// message: a series seen before costs one lookup, not a string
/// allocation per label (the owner's side of Prometheus' scrape cache).
/// Emptied when it reaches [`LABEL_CACHE_ENTRIES`].
#[derive(Debug, Default)]
pub(crate) struct LabelCache {
    sets: HashMap<Box<[u8]>, Arc<Labels>>,
}

/// Label sets a [`LabelCache`] holds at most.
const LABEL_CACHE_ENTRIES: usize = 1 << 19;

impl LabelCache {
    /// The label set encoded as `raw`, whose pairs are `pairs`.
    fn get(&mut self, raw: &[u8], pairs: &[(&str, &str)]) -> Arc<Labels> {
        if let Some(labels) = self.sets.get(raw) {
            return labels.clone();
        }
        if self.sets.len() >= LABEL_CACHE_ENTRIES {
            self.sets.clear();
        }
        let labels = Arc::new(Labels::new(pairs.iter().copied()));
        self.sets.insert(raw.into(), labels.clone());
        labels
    }
}

/// A heads answer: `SLH1`, then per partition answered its id, epoch and
/// series (labels, then timestamps as zigzag deltas and value bits).
const HEADS_MAGIC: &[u8; 4] = b"SLH1";

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn put_labels(out: &mut Vec<u8>, labels: &Labels) {
    put_varint(out, labels.len() as u64);
    for (name, value) in labels.iter() {
        put_str(out, name);
        put_str(out, value);
    }
}

/// Reads what the writers above wrote; every read says what was cut short.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or("cut short in a number")?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("a number longer than 64 bits".into())
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < count {
            return Err(format!(
                "cut short: {count} bytes wanted, {} left",
                self.bytes.len()
            ));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    /// A count of items of at least `min_bytes` each: never more than the
    /// bytes left could hold, so a bad count cannot allocate much.
    fn count(&mut self, min_bytes: usize) -> Result<usize, String> {
        let count = self.varint()? as usize;
        if count > self.bytes.len() / min_bytes.max(1) {
            return Err(format!(
                "a count of {count} with {} bytes left",
                self.bytes.len()
            ));
        }
        Ok(count)
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.varint()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| "a string that is not UTF-8".into())
    }

    fn f64(&mut self) -> Result<f64, String> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| "cut short")?;
        Ok(f64::from_bits(u64::from_le_bytes(bytes)))
    }

    fn labels(&mut self, count: usize) -> Result<Labels, String> {
        let mut pairs = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            pairs.push((self.str()?.to_string(), self.str()?.to_string()));
        }
        Ok(Labels::new(pairs))
    }

    /// `count` label pairs, borrowed into `pairs`, and the bytes they span.
    fn label_pairs(
        &mut self,
        count: usize,
        pairs: &mut Vec<(&'a str, &'a str)>,
    ) -> Result<&'a [u8], String> {
        let start = self.bytes;
        pairs.clear();
        for _ in 0..count {
            pairs.push((self.str()?, self.str()?));
        }
        Ok(&start[..start.len() - self.bytes.len()])
    }
}

/// Encodes samples (or delta points) as one message.
pub(crate) fn encode_samples(kind: Kind, samples: &[(&Labels, i64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + samples.len() * 24);
    out.extend_from_slice(match kind {
        Kind::Samples => SAMPLES_MAGIC,
        Kind::Deltas => DELTAS_MAGIC,
    });
    put_varint(&mut out, samples.len() as u64);
    let mut previous: Option<&Labels> = None;
    for (labels, timestamp_ms, value) in samples {
        if previous.is_some_and(|previous| std::ptr::eq(previous, *labels) || previous == *labels) {
            put_varint(&mut out, 0);
        } else {
            put_labels(&mut out, labels);
        }
        previous = Some(labels);
        put_varint(&mut out, zigzag(*timestamp_ms));
        out.extend_from_slice(&value.to_bits().to_le_bytes());
    }
    out
}

/// `message` compressed (`SLZ1`).
pub(crate) fn compress(message: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = COMPRESSED_MAGIC.to_vec();
    out.extend(
        snap::raw::Encoder::new()
            .compress_vec(message)
            .map_err(|error| format!("compressing a samples message: {error}"))?,
    );
    Ok(out)
}

/// Decodes a samples message, compressed or not, or says what is wrong
/// with it; label sets come from (and go to) `cache`.
pub(crate) fn decode_samples(bytes: &[u8], cache: &mut LabelCache) -> Result<Message, String> {
    let Some(compressed) = bytes.strip_prefix(COMPRESSED_MAGIC) else {
        return decode_plain(bytes, cache);
    };
    let length = snap::raw::decompress_len(compressed)
        .map_err(|error| format!("a compressed message: {error}"))?;
    if length > MAX_DECOMPRESSED {
        return Err(format!(
            "a compressed message of {length} bytes, over {MAX_DECOMPRESSED}"
        ));
    }
    let plain = snap::raw::Decoder::new()
        .decompress_vec(compressed)
        .map_err(|error| format!("a compressed message: {error}"))?;
    decode_plain(&plain, cache)
}

fn decode_plain(bytes: &[u8], cache: &mut LabelCache) -> Result<Message, String> {
    let (kind, body) = if let Some(body) = bytes.strip_prefix(SAMPLES_MAGIC) {
        (Kind::Samples, body)
    } else if let Some(body) = bytes.strip_prefix(DELTAS_MAGIC) {
        (Kind::Deltas, body)
    } else {
        return Err("not a samples message (bad magic)".into());
    };
    let mut reader = Reader { bytes: body };
    let count = reader.count(10)?;
    let mut samples: Vec<(Arc<Labels>, i64, f64)> = Vec::with_capacity(count);
    let mut pairs = Vec::new();
    for index in 0..count {
        let label_count = reader.varint()? as usize;
        let labels = if label_count == 0 {
            samples
                .last()
                .map(|(labels, _, _)| labels.clone())
                .ok_or_else(|| format!("sample {index}: refers to a previous sample's labels"))?
        } else {
            let raw = reader
                .label_pairs(label_count, &mut pairs)
                .map_err(|error| format!("sample {index}: {error}"))?;
            cache.get(raw, &pairs)
        };
        let timestamp_ms = unzigzag(reader.varint()?);
        let value = reader.f64()?;
        samples.push((labels, timestamp_ms, value));
    }
    Ok(Message { kind, samples })
}

/// One partition's part of a heads answer: what its owner (at `epoch`)
/// holds past the checkpoint it was asked about.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeadPart {
    pub partition: PartitionId,
    pub epoch: i64,
    pub series: Vec<SeriesData>,
}

pub(crate) fn encode_heads(parts: &[HeadPart]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(HEADS_MAGIC);
    put_varint(&mut out, parts.len() as u64);
    for part in parts {
        put_varint(&mut out, u64::from(part.partition));
        put_varint(&mut out, zigzag(part.epoch));
        put_varint(&mut out, part.series.len() as u64);
        for series in &part.series {
            put_labels(&mut out, &series.labels);
            put_varint(&mut out, series.samples.len() as u64);
            let mut previous = 0i64;
            for (timestamp_ms, value) in &series.samples {
                put_varint(&mut out, zigzag(timestamp_ms.wrapping_sub(previous)));
                previous = *timestamp_ms;
                out.extend_from_slice(&value.to_bits().to_le_bytes());
            }
        }
    }
    out
}

pub(crate) fn decode_heads(bytes: &[u8]) -> Result<Vec<HeadPart>, String> {
    let body = bytes
        .strip_prefix(HEADS_MAGIC)
        .ok_or("not a heads answer (bad magic)")?;
    let mut reader = Reader { bytes: body };
    let count = reader.count(3)?;
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let partition =
            PartitionId::try_from(reader.varint()?).map_err(|_| "a partition id out of range")?;
        let epoch = unzigzag(reader.varint()?);
        let series_count = reader.count(2)?;
        let mut series = Vec::with_capacity(series_count);
        for _ in 0..series_count {
            let label_count = reader.count(2)?;
            let labels = reader.labels(label_count)?;
            let sample_count = reader.count(9)?;
            let mut samples = Vec::with_capacity(sample_count);
            let mut previous = 0i64;
            for _ in 0..sample_count {
                let timestamp_ms = previous.wrapping_add(unzigzag(reader.varint()?));
                previous = timestamp_ms;
                samples.push((timestamp_ms, reader.f64()?));
            }
            series.push(SeriesData { labels, samples });
        }
        parts.push(HeadPart {
            partition,
            epoch,
            series,
        });
    }
    Ok(parts)
}

/// The tsdb's [`SampleLog`] in cluster mode: each sample published to its
/// series' metrics partition, the batch acknowledged once the stream
/// acknowledged every message. Metadata goes to PostgreSQL (it changes
/// rarely: a node writes a metric's metadata when it first sees it or it
/// changes).
pub struct ClusterSampleLog {
    log: ClusterLog,
    metastore: Arc<Metastore>,
    runtime: tokio::runtime::Handle,
    metadata: Arc<Mutex<MetadataState>>,
}

#[derive(Default)]
struct MetadataState {
    /// What this node last wrote (or is writing) per metric.
    written: HashMap<String, MetricMetadata>,
    /// Changes not yet written.
    unwritten: BTreeMap<String, MetricMetadata>,
    writing: bool,
}

impl std::fmt::Debug for ClusterSampleLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ClusterSampleLog")
    }
}

impl ClusterSampleLog {
    pub fn new(log: ClusterLog, metastore: Arc<Metastore>) -> ClusterSampleLog {
        ClusterSampleLog {
            log,
            metastore,
            runtime: tokio::runtime::Handle::current(),
            metadata: Arc::default(),
        }
    }

    fn append_each<'a>(
        &self,
        kind: Kind,
        samples: impl Iterator<Item = (&'a Labels, i64, f64)>,
    ) -> Result<AppendOutcome, TsdbError> {
        let mut outcome = AppendOutcome::default();
        let mut by_partition: BTreeMap<PartitionId, Vec<(&Labels, i64, f64)>> = BTreeMap::new();
        let mut last: Option<(&Labels, PartitionId)> = None;
        for (index, (labels, timestamp_ms, value)) in samples.enumerate() {
            if labels.metric_name().is_empty() {
                outcome.rejected.push((index, TsdbError::MissingMetricName));
                continue;
            }
            // A scrape or a remote-write series sends its samples together.
            let partition = match last {
                Some((previous, partition)) if std::ptr::eq(previous, labels) => partition,
                _ => partition::of_series(labels),
            };
            last = Some((labels, partition));
            by_partition
                .entry(partition)
                .or_default()
                .push((labels, timestamp_ms, value));
            outcome.appended += 1;
        }
        let mut messages = Vec::new();
        for (partition, samples) in &by_partition {
            self.messages(kind, *partition, samples, &mut messages)?;
        }
        if !messages.is_empty() {
            let published = self.runtime.block_on(self.log.publish_messages(messages));
            published.map_err(|error| TsdbError::Unavailable(error.to_string()))?;
        }
        self.write_metadata();
        Ok(outcome)
    }

    /// `samples` as messages under the log's size limit.
    fn messages(
        &self,
        kind: Kind,
        partition: PartitionId,
        samples: &[(&Labels, i64, f64)],
        into: &mut Vec<(PartitionId, Bytes)>,
    ) -> Result<(), TsdbError> {
        let encoded = compress(&encode_samples(kind, samples)).map_err(TsdbError::Unavailable)?;
        if encoded.len() <= self.log.max_message() {
            into.push((partition, Bytes::from(encoded)));
            return Ok(());
        }
        if samples.len() <= 1 {
            return Err(TsdbError::Unavailable(
                PublishError::TooLarge {
                    size: encoded.len(),
                    limit: self.log.max_message(),
                }
                .to_string(),
            ));
        }
        let (first, second) = samples.split_at(samples.len() / 2);
        self.messages(kind, partition, first, into)?;
        self.messages(kind, partition, second, into)
    }

    /// Writes the metadata changes in the background, one write at a time;
    /// a failed write is retried with the next batch.
    fn write_metadata(&self) {
        let unwritten = {
            let mut state = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
            if state.writing || state.unwritten.is_empty() {
                return;
            }
            state.writing = true;
            std::mem::take(&mut state.unwritten)
        };
        let (metastore, metadata) = (self.metastore.clone(), self.metadata.clone());
        self.runtime.spawn(async move {
            let rows: Vec<(String, String, String, String)> = unwritten
                .iter()
                .map(|(metric, entry)| {
                    (
                        metric.clone(),
                        entry.kind.clone(),
                        entry.help.clone(),
                        entry.unit.clone(),
                    )
                })
                .collect();
            let written = metastore.set_metric_metadata(&rows).await;
            let mut state = metadata.lock().unwrap_or_else(|e| e.into_inner());
            state.writing = false;
            if let Err(error) = written {
                tracing::warn!(%error, "writing metric metadata failed; retrying with the next batch");
                for (metric, entry) in unwritten {
                    state.written.remove(&metric);
                    state.unwritten.entry(metric).or_insert(entry);
                }
            }
        });
    }
}

impl SampleLog for ClusterSampleLog {
    fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendOutcome, TsdbError> {
        self.append_each(
            Kind::Samples,
            samples
                .iter()
                .map(|(labels, timestamp_ms, value)| (labels, *timestamp_ms, *value)),
        )
    }

    fn append_shared(
        &self,
        samples: &[(Arc<Labels>, i64, f64)],
    ) -> Result<AppendOutcome, TsdbError> {
        self.append_each(
            Kind::Samples,
            samples
                .iter()
                .map(|(labels, timestamp_ms, value)| (labels.as_ref(), *timestamp_ms, *value)),
        )
    }

    fn sums_deltas(&self) -> bool {
        true
    }

    /// Delta points go to their series' partition like samples; its owner
    /// sums them.
    fn append_deltas(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendOutcome, TsdbError> {
        self.append_each(
            Kind::Deltas,
            samples
                .iter()
                .map(|(labels, timestamp_ms, value)| (labels, *timestamp_ms, *value)),
        )
    }

    fn set_metadata(&self, metric: &str, metadata: MetricMetadata) {
        let mut state = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        if state.written.get(metric) == Some(&metadata) {
            return;
        }
        state.written.insert(metric.to_string(), metadata.clone());
        state.unwritten.insert(metric.to_string(), metadata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(name: &str, instance: &str) -> Labels {
        Labels::new([("__name__", name), ("instance", instance)])
    }

    #[test]
    fn samples_round_trip_bit_exact_with_repeated_labels_sent_once() {
        let up = labels("up", "a:1");
        let other = labels("requests_total", "b:2");
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let samples = [
            (&up, 1_000, 1.0),
            (&up, 16_000, stale),
            (&other, -5, 2.5),
            (&up, i64::MAX, f64::NEG_INFINITY),
        ];
        let encoded = encode_samples(Kind::Samples, &samples);
        let mut cache = LabelCache::default();
        let decoded = decode_samples(&encoded, &mut cache).unwrap();
        assert_eq!(decoded.kind, Kind::Samples);
        let decoded = decoded.samples;
        assert_eq!(decoded.len(), 4);
        for ((labels, timestamp, value), (want_labels, want_timestamp, want_value)) in
            decoded.iter().zip(samples)
        {
            assert_eq!(labels.as_ref(), want_labels);
            assert_eq!(*timestamp, want_timestamp);
            assert_eq!(value.to_bits(), want_value.to_bits());
        }
        // Compressed, the same samples, in fewer bytes when labels repeat.
        let many: Vec<(&Labels, i64, f64)> = (0..100).map(|n| (&up, n, 1.0)).collect();
        let plain = encode_samples(Kind::Samples, &many);
        let compressed = compress(&plain).unwrap();
        assert!(
            compressed.len() < plain.len(),
            "{} {}",
            compressed.len(),
            plain.len()
        );
        let unpacked = decode_samples(&compressed, &mut LabelCache::default()).unwrap();
        assert_eq!(unpacked.samples.len(), 100);
        assert_eq!(unpacked.samples[99].1, 99);
        // A series decoded before is the cache's label set, not a new one.
        assert!(Arc::ptr_eq(&decoded[0].0, &decoded[3].0));
        let again = decode_samples(&encoded, &mut cache).unwrap();
        assert!(Arc::ptr_eq(&decoded[2].0, &again.samples[2].0));
        assert_eq!(cache.sets.len(), 2);
        // the second sample of a series costs its timestamp and value only
        let one = encode_samples(Kind::Samples, &samples[..1]).len();
        let two = encode_samples(Kind::Samples, &samples[..2]).len();
        let deltas = encode_samples(Kind::Deltas, &samples[..2]);
        assert_eq!(
            decode_samples(&deltas, &mut LabelCache::default())
                .unwrap()
                .kind,
            Kind::Deltas
        );
        assert!(two - one <= 12, "{one} then {two} bytes");
    }

    #[test]
    fn a_damaged_message_is_an_error_that_says_where() {
        let up = labels("up", "a:1");
        let encoded = encode_samples(Kind::Samples, &[(&up, 1_000, 1.0), (&up, 2_000, 1.0)]);
        for cut in 0..encoded.len() {
            assert!(
                decode_samples(&encoded[..cut], &mut LabelCache::default()).is_err(),
                "cut at {cut}"
            );
        }
        let error = decode_samples(b"XXXX", &mut LabelCache::default()).unwrap_err();
        assert!(error.contains("bad magic"), "{error}");
        // a count far beyond the bytes left allocates nothing
        let mut huge = SAMPLES_MAGIC.to_vec();
        put_varint(&mut huge, u64::MAX >> 1);
        assert!(
            decode_samples(&huge, &mut LabelCache::default())
                .unwrap_err()
                .contains("count")
        );
        // a first sample that refers to a previous one
        let mut orphan = SAMPLES_MAGIC.to_vec();
        put_varint(&mut orphan, 1);
        put_varint(&mut orphan, 0);
        put_varint(&mut orphan, 0);
        orphan.extend_from_slice(&[0; 8]);
        assert!(
            decode_samples(&orphan, &mut LabelCache::default())
                .unwrap_err()
                .contains("sample 0")
        );
        // compressed: garbage, and a claimed length over the limit
        let mut garbage = COMPRESSED_MAGIC.to_vec();
        garbage.extend_from_slice(b"\xff\xff\xff");
        assert!(
            decode_samples(&garbage, &mut LabelCache::default())
                .unwrap_err()
                .contains("a compressed message")
        );
        let mut bomb = COMPRESSED_MAGIC.to_vec();
        put_varint(&mut bomb, 1 << 30);
        assert!(
            decode_samples(&bomb, &mut LabelCache::default())
                .unwrap_err()
                .contains("over")
        );
    }

    #[test]
    fn heads_answers_round_trip() {
        let parts = vec![
            HeadPart {
                partition: 70,
                epoch: 3,
                series: vec![SeriesData {
                    labels: labels("up", "a:1"),
                    samples: vec![(1_000, 1.0), (16_000, 0.0), (31_000, f64::NAN)],
                }],
            },
            HeadPart {
                partition: 71,
                epoch: 1,
                series: Vec::new(),
            },
        ];
        let decoded = decode_heads(&encode_heads(&parts)).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[1], parts[1]);
        assert_eq!(decoded[0].series[0].labels, parts[0].series[0].labels);
        assert_eq!(decoded[0].series[0].samples[1], (16_000, 0.0));
        assert!(decoded[0].series[0].samples[2].1.is_nan());
        let encoded = encode_heads(&parts);
        for cut in 0..encoded.len() {
            assert!(decode_heads(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_series_always_goes_to_the_same_metrics_partition() {
        let up = labels("up", "a:1");
        let partition = partition::of_series(&up);
        assert!(partition::is_metrics(partition));
        assert_eq!(partition, partition::of_series(&up.clone()));
        let spread: std::collections::BTreeSet<PartitionId> = (0..200)
            .map(|instance| partition::of_series(&labels("up", &format!("host-{instance}:9100"))))
            .collect();
        assert_eq!(spread.len(), partition::METRIC_PARTITIONS as usize);
    }
}
