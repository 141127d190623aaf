//! [`MetricStore`]: the time-series store shared by writers and readers.
//!
//! [`TimeSeriesStore`] is single-threaded (`&mut self` to append). The
//! collector has many writers (scrapes, remote-write, OTLP metrics, rule
//! evaluation) and many readers (PromQL queries, rules), so it holds the
//! store behind a read-write lock. Writers append a whole batch under the
//! write lock and fsync the WAL before [`MetricStore::append`] returns: a
//! batch the caller acknowledges is durable. The fsync happens after the
//! lock is released, and one fsync covers every batch written before it
//! (group commit), so concurrent writers do not queue behind each other's
//! disk flushes.
//!
//! Readers never hold the lock for a whole query: [`MetricStore`] itself
//! implements [`Queryable`], taking the read lock for one `select` at a
//! time, so a long query (a subquery of millions of steps) leaves the
//! writers free between its selects, and a query that selects nothing
//! (`vector(1)`) never waits for the lock at all. [`MetricStore::reader`]
//! is for callers that need one consistent view (rule evaluation) and hold
//! it briefly.
//!
//! The store also keeps metric metadata (type, help, unit) as scrapes and
//! pushes report it, for `/api/v1/metadata`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use super::{LabelMatcher, Labels, SeriesData, TimeSeriesStore, TsdbError, TsdbStats};
use crate::exemplars::{Appended, Exemplar, ExemplarError, ExemplarStore, SeriesExemplars};
use crate::promql::{QueryError, Queryable};

/// Metadata of one metric family, as `# TYPE`, `# HELP` and `# UNIT` give it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct MetricMetadata {
    /// `counter`, `gauge`, `histogram`, `summary`, `info`, `stateset`,
    /// `gaugehistogram` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    pub help: String,
    pub unit: String,
}

/// What happened to a batch: how many samples went in, and why the others
/// did not (index into the batch, error).
#[derive(Debug, Default)]
pub struct AppendOutcome {
    pub appended: usize,
    pub rejected: Vec<(usize, TsdbError)>,
}

/// What happened to a batch of exemplars: how many were stored, how many
/// repeated their series' newest (ignored), and why the others were
/// refused (index into the batch, error).
#[derive(Debug, Default)]
pub struct ExemplarOutcome {
    pub stored: usize,
    pub duplicates: usize,
    pub rejected: Vec<(usize, ExemplarError)>,
}

/// The metrics half's durable-log seam: where every writer of samples
/// (scrapes, remote-write, OTLP metrics, log- and span-derived metrics)
/// hands its batches, as the log and trace receivers hand theirs to the
/// pipeline's `DurableLog`.
///
/// [`SampleLog::append`] returns once the batch is durable, so its caller
/// may acknowledge it; samples the store refuses (out of order, no metric
/// name) are reported in the outcome and the rest of the batch is kept; an
/// error means nothing of the batch may be acknowledged. Writers hold an
/// `Arc<dyn SampleLog>` and never the store itself.
///
/// [`MetricStore`] is the embedded implementation: its head WAL is the log
/// (fsynced before `append` returns, replayed at open, truncated when the
/// head is cut into a block), so positions and checkpoints stay inside the
/// store. A partitioned log in front of the store implements the same
/// trait.
pub trait SampleLog: Send + Sync + std::fmt::Debug {
    /// Appends `(labels, timestamp in ms, value)` samples and makes them
    /// durable.
    fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendOutcome, TsdbError>;

    /// [`SampleLog::append`] for a writer that keeps its label sets shared
    /// from one batch to the next (the scrape cache): nothing is copied.
    fn append_shared(
        &self,
        samples: &[(Arc<Labels>, i64, f64)],
    ) -> Result<AppendOutcome, TsdbError> {
        let owned: Vec<(Labels, i64, f64)> = samples
            .iter()
            .map(|(labels, timestamp_ms, value)| (labels.as_ref().clone(), *timestamp_ms, *value))
            .collect();
        self.append(&owned)
    }

    /// Records the metadata of a metric family (the newest report wins).
    fn set_metadata(&self, metric: &str, metadata: MetricMetadata);

    /// Keeps exemplars beside their series (see [`crate::exemplars`]):
    /// bounded, in memory, never a reason to refuse the samples. A log
    /// that does not carry them (cluster mode's partitioned log, for now)
    /// keeps none.
    fn append_exemplars(&self, exemplars: &[(Arc<Labels>, Exemplar)]) -> ExemplarOutcome {
        let _ = exemplars;
        ExemplarOutcome::default()
    }

    /// Whether this log sums delta points (OTLP delta sums) itself, where
    /// every point of a series meets (cluster mode's partition owners).
    /// When it does not, a receiver sums the points it gets, which is right
    /// only when one receiver gets all of a series (embedded).
    fn sums_deltas(&self) -> bool {
        false
    }

    /// Appends increments: each value is added to its series' running
    /// total, and the total is stored at the sample's timestamp. Only for a
    /// log that [`SampleLog::sums_deltas`].
    fn append_deltas(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendOutcome, TsdbError> {
        let _ = samples;
        Err(TsdbError::Unavailable(
            "this sample log does not sum delta points".into(),
        ))
    }
}

impl SampleLog for MetricStore {
    fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendOutcome, TsdbError> {
        MetricStore::append(self, samples)
    }

    fn append_shared(
        &self,
        samples: &[(Arc<Labels>, i64, f64)],
    ) -> Result<AppendOutcome, TsdbError> {
        self.append_each(
            samples
                .iter()
                .map(|(labels, timestamp_ms, value)| (labels.as_ref(), *timestamp_ms, *value)),
        )
    }

    fn set_metadata(&self, metric: &str, metadata: MetricMetadata) {
        MetricStore::set_metadata(self, metric, metadata)
    }

    fn append_exemplars(&self, exemplars: &[(Arc<Labels>, Exemplar)]) -> ExemplarOutcome {
        MetricStore::append_exemplars(self, exemplars)
    }
}

/// A [`TimeSeriesStore`] shared between threads.
#[derive(Debug)]
pub struct MetricStore {
    inner: RwLock<TimeSeriesStore>,
    metadata: RwLock<BTreeMap<String, MetricMetadata>>,
    exemplars: Mutex<ExemplarStore>,
    /// Whether `append` waits for the WAL's fsync.
    fsync: bool,
}

impl MetricStore {
    /// Opens (or creates) the store in `dir`, replaying its WAL.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, TsdbError> {
        Ok(MetricStore {
            inner: RwLock::new(TimeSeriesStore::open(dir)?),
            metadata: RwLock::new(BTreeMap::new()),
            exemplars: Mutex::new(ExemplarStore::default()),
            fsync: true,
        })
    }

    /// Opens a store whose samples are durable elsewhere before they reach
    /// it (a cluster owner's head: the stream holds them, and the head is
    /// rebuilt from it at every takeover). Its WAL is written, so a failed
    /// block write still restores the head, but `append` never waits for an
    /// fsync of it.
    pub fn open_unsynced(dir: impl AsRef<Path>) -> Result<Self, TsdbError> {
        Ok(MetricStore {
            fsync: false,
            ..MetricStore::open(dir)?
        })
    }

    /// Appends a batch and makes it durable. Bad samples (out of order, no
    /// metric name) are reported and skipped; the rest of the batch is kept.
    /// An I/O error of the WAL fails the whole call: nothing of it may be
    /// acknowledged.
    pub fn append(&self, samples: &[(Labels, i64, f64)]) -> Result<AppendOutcome, TsdbError> {
        self.append_each(
            samples
                .iter()
                .map(|(labels, timestamp_ms, value)| (labels, *timestamp_ms, *value)),
        )
    }

    fn append_each<'a>(
        &self,
        samples: impl Iterator<Item = (&'a Labels, i64, f64)>,
    ) -> Result<AppendOutcome, TsdbError> {
        let mut outcome = AppendOutcome::default();
        let durable = {
            let mut store = self.inner.write().unwrap_or_else(|e| e.into_inner());
            for (index, (labels, timestamp_ms, value)) in samples.enumerate() {
                match store.append(labels, timestamp_ms, value) {
                    Ok(()) => outcome.appended += 1,
                    Err(error) => outcome.rejected.push((index, error)),
                }
            }
            store.write_wal()?
        };
        // fsync outside the lock: other writers append meanwhile and one
        // fsync serves all the batches it covers
        if self.fsync {
            durable.wait()?;
        }
        Ok(outcome)
    }

    /// A read view: the store implements [`crate::promql::Queryable`].
    /// Hold it only for the length of one query.
    pub fn reader(&self) -> RwLockReadGuard<'_, TimeSeriesStore> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the head into a block once it spans `block_ms`, then deletes
    /// blocks older than `keep_from_ms`. Returns the number of blocks deleted.
    pub fn maintain(&self, block_ms: i64, keep_from_ms: i64) -> Result<usize, TsdbError> {
        let mut store = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some((min_ms, max_ms)) = store.head_range()
            && max_ms - min_ms >= block_ms
        {
            store.cut_block()?;
        }
        store.apply_retention(keep_from_ms)
    }

    /// Writes the whole head as a block now (whatever its span), empties
    /// the head and truncates the WAL, and hands the block over instead of
    /// keeping it: a cluster owner uploads it, then drops it. `None` when
    /// the head is empty.
    pub fn cut_head(&self) -> Result<Option<crate::Block>, TsdbError> {
        let mut store = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Some(path) = store.cut_block()? else {
            return Ok(None);
        };
        Ok(store.take_block(&path))
    }

    /// Records the metadata of a metric family (the newest report wins).
    pub fn set_metadata(&self, metric: &str, metadata: MetricMetadata) {
        let mut all = self.metadata.write().unwrap_or_else(|e| e.into_inner());
        if all.get(metric) != Some(&metadata) {
            all.insert(metric.to_string(), metadata);
        }
    }

    /// Metadata by metric family name.
    pub fn metadata(&self) -> BTreeMap<String, MetricMetadata> {
        self.metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps exemplars; see [`SampleLog::append_exemplars`].
    pub fn append_exemplars(&self, exemplars: &[(Arc<Labels>, Exemplar)]) -> ExemplarOutcome {
        let mut outcome = ExemplarOutcome::default();
        if exemplars.is_empty() {
            return outcome;
        }
        let mut store = self.exemplars.lock().unwrap_or_else(|e| e.into_inner());
        for (index, (series, exemplar)) in exemplars.iter().enumerate() {
            match store.append(series, exemplar.clone()) {
                Ok(Appended::Stored) => outcome.stored += 1,
                Ok(Appended::Duplicate) => outcome.duplicates += 1,
                Err(error) => outcome.rejected.push((index, error)),
            }
        }
        outcome
    }

    /// Exemplars of the series any of `selectors` matches, in
    /// `[start_ms, end_ms]`.
    pub fn exemplars(
        &self,
        selectors: &[Vec<LabelMatcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<SeriesExemplars> {
        self.exemplars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .query(selectors, start_ms, end_ms)
    }

    /// Sizes of head, blocks and WAL.
    pub fn stats(&self) -> TsdbStats {
        self.reader().stats()
    }
}

/// What the Prometheus HTTP API reads: selects for PromQL, the series
/// and label listings, metadata. [`MetricStore`] answers from its own head
/// and blocks; in cluster mode, a reader over the partition owners' heads
/// and the blocks in object storage answers the same questions.
pub trait MetricReader: Queryable + Send + Sync {
    /// Label sets of the series matching `matchers` with samples in
    /// `[start_ms, end_ms]`, sorted, without duplicates.
    fn series(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, QueryError>;

    /// Every label name, sorted.
    fn label_names(&self) -> Result<Vec<String>, QueryError>;

    /// Values of label `name` among all series, sorted.
    fn label_values(&self, name: &str) -> Result<Vec<String>, QueryError>;

    /// Metadata by metric family name.
    fn metadata(&self) -> Result<BTreeMap<String, MetricMetadata>, QueryError>;

    /// Exemplars of the series any of `selectors` matches, in
    /// `[start_ms, end_ms]`, sorted by series. A reader without an
    /// exemplar store (cluster mode, for now) has none.
    fn exemplars(
        &self,
        selectors: &[Vec<LabelMatcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesExemplars>, QueryError> {
        let _ = (selectors, start_ms, end_ms);
        Ok(Vec::new())
    }
}

impl MetricReader for MetricStore {
    fn series(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>, QueryError> {
        self.reader()
            .series(matchers, start_ms, end_ms)
            .map_err(|error| QueryError::Storage(error.to_string()))
    }

    fn label_names(&self) -> Result<Vec<String>, QueryError> {
        Ok(self.reader().label_names())
    }

    fn label_values(&self, name: &str) -> Result<Vec<String>, QueryError> {
        Ok(self.reader().label_values(name, &[]))
    }

    fn metadata(&self) -> Result<BTreeMap<String, MetricMetadata>, QueryError> {
        Ok(MetricStore::metadata(self))
    }

    fn exemplars(
        &self,
        selectors: &[Vec<LabelMatcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesExemplars>, QueryError> {
        Ok(MetricStore::exemplars(self, selectors, start_ms, end_ms))
    }
}

impl Queryable for MetricStore {
    /// One `select` under the read lock, released before the evaluation
    /// goes on.
    fn select(
        &self,
        matchers: &[LabelMatcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<SeriesData>, QueryError> {
        Queryable::select(&*self.reader(), matchers, start_ms, end_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::{Engine, Value};

    #[test]
    fn a_batch_keeps_its_good_samples_and_reports_the_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(dir.path()).unwrap();
        let up = Labels::new([("__name__", "up"), ("job", "a")]);
        let nameless = Labels::new([("job", "a")]);
        let outcome = store
            .append(&[
                (up.clone(), 2_000, 1.0),
                (nameless, 2_000, 1.0),
                (up.clone(), 1_000, 0.0),
                (up.clone(), 3_000, 1.0),
            ])
            .unwrap();
        assert_eq!(outcome.appended, 2);
        let rejected: Vec<usize> = outcome.rejected.iter().map(|(index, _)| *index).collect();
        assert_eq!(rejected, vec![1, 2]);

        let value = Engine::default()
            .instant_query(&*store.reader(), "count_over_time(up[1m])", 3_000)
            .unwrap();
        let Value::Vector(samples) = value else {
            panic!("expected a vector, got {value:?}")
        };
        assert_eq!(samples[0].value, 2.0);
    }

    #[test]
    fn batches_acknowledged_by_concurrent_writers_are_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = MetricStore::open(dir.path()).unwrap();
            std::thread::scope(|scope| {
                for writer in 0..4 {
                    let store = &store;
                    scope.spawn(move || {
                        let labels: Vec<Labels> = (0..20)
                            .map(|series| {
                                Labels::new([
                                    ("__name__".to_string(), format!("writer_{writer}")),
                                    ("series".to_string(), series.to_string()),
                                ])
                            })
                            .collect();
                        for batch in 0..25i64 {
                            let samples: Vec<(Labels, i64, f64)> = labels
                                .iter()
                                .map(|labels| (labels.clone(), batch * 15_000, batch as f64))
                                .collect();
                            let outcome = store.append(&samples).unwrap();
                            assert_eq!(outcome.appended, 20);
                        }
                    });
                }
            });
        }
        let store = MetricStore::open(dir.path()).unwrap();
        let stats = store.stats();
        assert_eq!((stats.head_series, stats.head_samples), (80, 2_000));
    }

    #[test]
    fn acknowledged_samples_survive_a_reopen_and_maintenance_cuts_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let up = Labels::new([("__name__", "up"), ("job", "a")]);
        {
            let store = MetricStore::open(dir.path()).unwrap();
            store.append(&[(up.clone(), 0, 1.0)]).unwrap();
            store.append(&[(up.clone(), 60_000, 1.0)]).unwrap();
        }
        let store = MetricStore::open(dir.path()).unwrap();
        assert_eq!(store.stats().head_samples, 2);
        assert_eq!(store.maintain(30_000, i64::MIN).unwrap(), 0);
        let stats = store.stats();
        assert_eq!((stats.blocks, stats.head_samples), (1, 0));
        assert_eq!(store.maintain(30_000, 120_000).unwrap(), 1);
        assert_eq!(store.stats().blocks, 0);
    }

    #[test]
    fn a_long_query_does_not_block_appends_or_other_queries() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        let dir = tempfile::tempdir().unwrap();
        let store = MetricStore::open(dir.path()).unwrap();
        let up = Labels::new([("__name__", "up"), ("job", "a")]);
        store.append(&[(up.clone(), 0, 1.0)]).unwrap();
        let expr = Engine::parse("max_over_time(max_over_time(up[1h:1s])[30d:1s])").unwrap();
        let cancelled = AtomicBool::new(false);
        let appended = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let query = scope.spawn(|| {
                Engine::default().instant_expr_cancellable(&store, &expr, 60_000, &cancelled)
            });
            scope.spawn(|| {
                for second in 1..=20 {
                    store.append(&[(up.clone(), second * 1_000, 1.0)]).unwrap();
                }
                appended.store(true, Ordering::Relaxed);
            });
            // bounded wait: with the query holding the lock, the appends
            // would wait until it ends (never, here)
            let deadline = Instant::now() + Duration::from_secs(30);
            while !appended.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let other = Engine::default().instant_query(&store, "count_over_time(up[1m])", 20_000);
            cancelled.store(true, Ordering::Relaxed);
            assert!(
                appended.load(Ordering::Relaxed),
                "appends waited for the query"
            );
            assert!(
                matches!(other, Ok(Value::Vector(ref samples)) if samples[0].value == 21.0),
                "{other:?}"
            );
            assert!(query.join().unwrap().is_err());
        });
    }
}
