use super::*;
use crate::promql::{Engine, Value, is_stale_nan, stale_nan};

fn labels(name: &str, job: &str) -> Labels {
    Labels::new([("__name__", name), ("job", job)])
}

fn open(dir: &Path) -> TimeSeriesStore {
    TimeSeriesStore::open(dir).unwrap()
}

#[test]
fn selects_by_equality_and_anchored_regex() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&labels("up", "api"), 1_000, 1.0).unwrap();
    store
        .append(&labels("up", "api-worker"), 1_000, 0.0)
        .unwrap();
    store.append(&labels("other", "api"), 1_000, 5.0).unwrap();
    let regex = LabelMatcher::new(MatchKind::Regex, "job", "api").unwrap();
    let selected = store
        .select(&[LabelMatcher::equal(METRIC_NAME, "up"), regex], 0, 2_000)
        .unwrap();
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0].labels, labels("up", "api"));
    let not_equal = LabelMatcher::new(MatchKind::NotEqual, "job", "api").unwrap();
    assert_eq!(store.select(&[not_equal], 0, 2_000).unwrap().len(), 1);
    assert_eq!(
        store.label_values("job", &[LabelMatcher::equal(METRIC_NAME, "up")]),
        vec!["api", "api-worker"]
    );
    assert_eq!(store.label_names(), vec!["__name__", "job"]);
}

#[test]
fn wal_replays_committed_samples_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        for index in 0..500 {
            store
                .append(
                    &labels("requests_total", "api"),
                    index * 15_000,
                    index as f64,
                )
                .unwrap();
        }
        store
            .append(&labels("requests_total", "api"), 500 * 15_000, stale_nan())
            .unwrap();
        store.commit().unwrap();
    }
    let store = open(dir.path());
    let selected = store
        .select(&[LabelMatcher::equal("job", "api")], 0, i64::MAX)
        .unwrap();
    assert_eq!(selected[0].samples.len(), 501);
    assert_eq!(selected[0].samples[499], (499 * 15_000, 499.0));
    assert!(is_stale_nan(selected[0].samples[500].1));
}

#[test]
fn torn_wal_tail_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        store.append(&labels("up", "api"), 1_000, 1.0).unwrap();
        store.commit().unwrap();
    }
    let wal_path = dir.path().join("wal");
    let mut contents = std::fs::read(&wal_path).unwrap();
    contents.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
    std::fs::write(&wal_path, contents).unwrap();
    let store = open(dir.path());
    assert_eq!(store.stats().head_samples, 1);
}

#[test]
fn blocks_survive_reopen_and_retention_drops_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    for index in 0..240 {
        store
            .append(&labels("cpu", "api"), index * 15_000, index as f64)
            .unwrap();
    }
    let first = store.cut_block().unwrap().unwrap();
    assert!(first.join("meta.json").exists());
    assert_eq!(store.stats().head_series, 0);
    for index in 240..300 {
        store
            .append(&labels("cpu", "api"), index * 15_000, index as f64)
            .unwrap();
    }
    store.cut_block().unwrap();
    store
        .append(&labels("cpu", "api"), 300 * 15_000, 300.0)
        .unwrap();
    store.commit().unwrap();
    drop(store);

    let mut store = open(dir.path());
    assert_eq!(store.blocks().len(), 2);
    assert_eq!(store.blocks()[0].meta().version, BLOCK_FORMAT_VERSION);
    let all = store
        .select(&[LabelMatcher::equal("job", "api")], 0, i64::MAX)
        .unwrap();
    assert_eq!(all[0].samples.len(), 301);
    let window = store
        .select(
            &[LabelMatcher::equal("job", "api")],
            100 * 15_000,
            250 * 15_000,
        )
        .unwrap();
    assert_eq!(window[0].samples.len(), 151);

    assert_eq!(store.apply_retention(240 * 15_000).unwrap(), 1);
    assert!(!first.exists());
    let kept = store
        .select(&[LabelMatcher::equal("job", "api")], 0, i64::MAX)
        .unwrap();
    assert_eq!(kept[0].samples.first().unwrap().0, 240 * 15_000);
}

#[test]
fn out_of_order_samples_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.append(&labels("up", "api"), 2_000, 1.0).unwrap();
    assert!(matches!(
        store.append(&labels("up", "api"), 1_000, 1.0),
        Err(TsdbError::OutOfOrder { .. })
    ));
    assert!(matches!(
        store.append(&Labels::new([("job", "api")]), 1_000, 1.0),
        Err(TsdbError::MissingMetricName)
    ));
}

#[test]
fn promql_reads_the_store_and_honours_staleness() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    for index in 0..=10 {
        store
            .append(
                &labels("requests_total", "api"),
                index * 60_000,
                (index * 60) as f64,
            )
            .unwrap();
    }
    store.cut_block().unwrap();
    store
        .append(&labels("requests_total", "api"), 11 * 60_000, stale_nan())
        .unwrap();
    let engine = Engine::default();
    let rate = engine
        .instant_query(&store, "rate(requests_total[5m])", 10 * 60_000)
        .unwrap();
    let Value::Vector(samples) = rate else {
        panic!("expected a vector")
    };
    assert!((samples[0].value - 1.0).abs() < 1e-9);
    let after_stale = engine
        .instant_query(&store, "requests_total", 11 * 60_000 + 1)
        .unwrap();
    assert_eq!(after_stale, Value::Vector(Vec::new()));
}
