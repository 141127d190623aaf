//! A tantivy collector that counts matching records per time bucket and
//! severity, reading only fast fields.

use std::collections::BTreeMap;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::{DocId, Score, SegmentOrdinal, SegmentReader};

/// Counts per bucket; each bucket maps severity text to a count.
pub(crate) type BucketCounts = Vec<BTreeMap<String, u64>>;

pub(crate) struct HistogramCollector {
    pub(crate) interval: i64,
    /// Index of the first bucket: `start / interval`.
    pub(crate) first_bucket: i64,
    pub(crate) bucket_count: usize,
}

pub(crate) struct HistogramSegmentCollector {
    interval: i64,
    first_bucket: i64,
    timestamp: Column<i64>,
    severity: Option<StrColumn>,
    /// Counts per bucket, one slot per severity term ordinal and a last
    /// slot for records without severity; a flat array, as this runs per
    /// matching document.
    counts: Vec<u64>,
    slots: usize,
}

impl Collector for HistogramCollector {
    type Fruit = BucketCounts;
    type Child = HistogramSegmentCollector;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<Self::Child> {
        let fast = segment.fast_fields();
        let severity = fast.str("severity")?;
        let slots = severity.as_ref().map_or(0, |column| column.num_terms()) + 1;
        Ok(HistogramSegmentCollector {
            interval: self.interval,
            first_bucket: self.first_bucket,
            timestamp: fast.i64("timestamp")?,
            severity,
            counts: vec![0; self.bucket_count * slots],
            slots,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<BucketCounts>) -> tantivy::Result<BucketCounts> {
        let mut merged = vec![BTreeMap::new(); self.bucket_count];
        for fruit in fruits {
            for (bucket, severities) in fruit.into_iter().enumerate() {
                for (severity, count) in severities {
                    *merged[bucket].entry(severity).or_default() += count;
                }
            }
        }
        Ok(merged)
    }
}

impl SegmentCollector for HistogramSegmentCollector {
    type Fruit = BucketCounts;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let Some(timestamp) = self.timestamp.first(doc) else {
            return;
        };
        let bucket = timestamp.div_euclid(self.interval) - self.first_bucket;
        let Some(bucket) = usize::try_from(bucket)
            .ok()
            .filter(|b| b * self.slots < self.counts.len())
        else {
            return;
        };
        let slot = self
            .severity
            .as_ref()
            .and_then(|column| column.term_ords(doc).next())
            .map_or(self.slots - 1, |ordinal| ordinal as usize);
        self.counts[bucket * self.slots + slot.min(self.slots - 1)] += 1;
    }

    fn harvest(self) -> BucketCounts {
        let mut names = Vec::with_capacity(self.slots);
        let mut text = String::new();
        for ordinal in 0..self.slots as u64 - 1 {
            text.clear();
            let known = self
                .severity
                .as_ref()
                .is_some_and(|c| c.ord_to_str(ordinal, &mut text).unwrap_or(false));
            names.push(if known { text.clone() } else { String::new() });
        }
        names.push(String::new());
        self.counts
            .chunks(self.slots)
            .map(|slots| {
                let mut by_severity = BTreeMap::new();
                for (name, count) in names.iter().zip(slots) {
                    if *count > 0 {
                        *by_severity.entry(name.clone()).or_default() += count;
                    }
                }
                by_severity
            })
            .collect()
    }
}
