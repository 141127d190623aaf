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
    /// Counts per bucket per severity term ordinal (`u64::MAX` for none).
    counts: Vec<BTreeMap<u64, u64>>,
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
        Ok(HistogramSegmentCollector {
            interval: self.interval,
            first_bucket: self.first_bucket,
            timestamp: fast.i64("timestamp")?,
            severity: fast.str("severity")?,
            counts: vec![BTreeMap::new(); self.bucket_count],
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
        let Some(counts) = usize::try_from(bucket)
            .ok()
            .and_then(|b| self.counts.get_mut(b))
        else {
            return;
        };
        let ordinal = self
            .severity
            .as_ref()
            .and_then(|column| column.term_ords(doc).next())
            .unwrap_or(u64::MAX);
        *counts.entry(ordinal).or_default() += 1;
    }

    fn harvest(self) -> BucketCounts {
        let mut text = String::new();
        self.counts
            .into_iter()
            .map(|by_ordinal| {
                by_ordinal
                    .into_iter()
                    .map(|(ordinal, count)| {
                        text.clear();
                        let known = ordinal != u64::MAX
                            && self
                                .severity
                                .as_ref()
                                .is_some_and(|c| c.ord_to_str(ordinal, &mut text).unwrap_or(false));
                        (if known { text.clone() } else { String::new() }, count)
                    })
                    .fold(BTreeMap::new(), |mut merged, (severity, count)| {
                        *merged.entry(severity).or_default() += count;
                        merged
                    })
            })
            .collect()
    }
}
