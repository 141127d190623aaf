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

/// Series with every shape a matcher meets: shared and unique values,
/// absent labels, values that only a regex separates.
fn varied_series() -> Vec<Labels> {
    (0..300)
        .map(|index| {
            let mut pairs = vec![
                ("__name__".to_string(), format!("metric_{}", index % 7)),
                ("instance".to_string(), format!("host-{index}:9100")),
            ];
            if index % 5 != 0 {
                pairs.push((
                    "job".to_string(),
                    ["api", "api-worker", "db"][index % 3].to_string(),
                ));
            }
            if index % 4 == 0 {
                pairs.push(("env".to_string(), "prod".to_string()));
            }
            Labels::new(pairs)
        })
        .collect()
}

fn matcher_sets() -> Vec<Vec<LabelMatcher>> {
    let regex = |name: &str, value: &str| LabelMatcher::new(MatchKind::Regex, name, value).unwrap();
    let not_regex =
        |name: &str, value: &str| LabelMatcher::new(MatchKind::NotRegex, name, value).unwrap();
    let not_equal =
        |name: &str, value: &str| LabelMatcher::new(MatchKind::NotEqual, name, value).unwrap();
    let equal = LabelMatcher::equal;
    vec![
        vec![equal(METRIC_NAME, "metric_3")],
        vec![equal(METRIC_NAME, "metric_3"), equal("job", "api")],
        vec![equal(METRIC_NAME, "metric_3"), equal("job", "")],
        vec![equal(METRIC_NAME, "nope")],
        vec![equal("nolabel", "x")],
        vec![regex("job", "api.*")],
        vec![regex("job", "api"), not_equal("env", "prod")],
        vec![
            regex("instance", "host-1.*"),
            not_regex(METRIC_NAME, "metric_[0-3]"),
        ],
        vec![not_equal("job", "db"), regex("env", ".*")],
        vec![
            regex(METRIC_NAME, "metric_(1|5)"),
            equal("env", "prod"),
            not_equal("job", ""),
        ],
        vec![not_regex("job", ".+")],
        vec![equal("instance", "host-42:9100")],
    ]
}

fn scan(all: &[Labels], matchers: &[LabelMatcher]) -> Vec<Labels> {
    let mut expected: Vec<Labels> = all
        .iter()
        .filter(|labels| matches_all(matchers, labels))
        .cloned()
        .collect();
    expected.sort();
    expected
}

fn selected_labels(store: &TimeSeriesStore, matchers: &[LabelMatcher]) -> Vec<Labels> {
    let selected = store.select(matchers, 0, i64::MAX).unwrap();
    let labels: Vec<Labels> = selected
        .iter()
        .map(|series| series.labels.clone())
        .collect();
    assert_eq!(store.series(matchers, 0, i64::MAX).unwrap(), labels);
    labels
}

#[test]
fn postings_select_the_same_series_as_a_scan_in_head_block_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let all = varied_series();
    let mut store = open(dir.path());
    for (index, labels) in all.iter().enumerate() {
        store.append(labels, 1_000 + index as i64, 1.0).unwrap();
    }
    store.commit().unwrap();
    let check = |store: &TimeSeriesStore, stage: &str| {
        for matchers in matcher_sets() {
            assert_eq!(
                selected_labels(store, &matchers),
                scan(&all, &matchers),
                "{stage}: {matchers:?}"
            );
        }
        let mut jobs: Vec<String> = all
            .iter()
            .filter(|labels| labels.metric_name() == "metric_2")
            .map(|labels| labels.get("job").to_string())
            .filter(|job| !job.is_empty())
            .collect();
        jobs.sort();
        jobs.dedup();
        assert_eq!(
            store.label_values("job", &[LabelMatcher::equal(METRIC_NAME, "metric_2")]),
            jobs,
            "{stage}"
        );
        assert_eq!(
            store.label_names(),
            vec!["__name__", "env", "instance", "job"],
            "{stage}"
        );
        let every_job = store.label_values("job", &[]);
        assert_eq!(every_job, vec!["api", "api-worker", "db"], "{stage}");
        assert!(store.label_values("nolabel", &[]).is_empty(), "{stage}");
    };
    check(&store, "head");
    store.cut_block().unwrap();
    check(&store, "block");
    drop(store);
    check(&open(dir.path()), "reopened block");
}

#[test]
fn a_crash_during_a_block_write_loses_nothing_and_a_torn_wal_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        for index in 0..10 {
            store
                .append(&labels("up", "api"), index * 15_000, 1.0)
                .unwrap();
        }
        store.commit().unwrap();
    }
    // the crash left half a block directory and half a WAL record
    let half_block = dir
        .path()
        .join("blocks/00000000000000000000-00000000000000135000.tmp");
    std::fs::create_dir_all(&half_block).unwrap();
    std::fs::write(half_block.join("series.bin"), b"SLTSDB02 partial").unwrap();
    let wal_path = dir.path().join("wal");
    let mut wal = std::fs::read(&wal_path).unwrap();
    wal.extend_from_slice(&[200, 0, 0, 0, 9, 9, 9, 9, 3, 1]);
    std::fs::write(&wal_path, wal).unwrap();

    let mut store = open(dir.path());
    assert!(!half_block.exists());
    assert_eq!(store.blocks().len(), 0);
    assert_eq!(store.stats().head_samples, 10);
    // the store keeps working after the repair
    store
        .append(&labels("up", "api"), 10 * 15_000, 0.0)
        .unwrap();
    store.commit().unwrap();
    drop(store);
    let store = open(dir.path());
    let selected = store
        .select(&[LabelMatcher::equal("job", "api")], 0, i64::MAX)
        .unwrap();
    assert_eq!(selected[0].samples.len(), 11);
}

#[test]
fn a_crash_before_the_wal_is_truncated_does_not_duplicate_samples() {
    let dir = tempfile::tempdir().unwrap();
    let wal_path = dir.path().join("wal");
    let wal_before_cut = {
        let mut store = open(dir.path());
        for index in 0..200 {
            store
                .append(&labels("cpu", "api"), index * 15_000, index as f64)
                .unwrap();
        }
        store.commit().unwrap();
        let wal = std::fs::read(&wal_path).unwrap();
        store.cut_block().unwrap();
        wal
    };
    // as if the process died after the block's rename, before the truncation
    std::fs::write(&wal_path, wal_before_cut).unwrap();
    let store = open(dir.path());
    assert_eq!(store.blocks().len(), 1);
    let selected = store
        .select(&[LabelMatcher::equal("job", "api")], 0, i64::MAX)
        .unwrap();
    assert_eq!(selected.len(), 1);
    let expected: Vec<(i64, f64)> = (0..200)
        .map(|index| (index * 15_000, index as f64))
        .collect();
    assert_eq!(selected[0].samples, expected);
}

#[test]
fn head_memory_stays_below_two_kilobytes_per_series_for_two_hours_of_scrapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let all: Vec<Labels> = (0..200)
        .map(|index| {
            Labels::new([
                (
                    "__name__".to_string(),
                    format!("http_requests_total_{}", index % 10),
                ),
                ("job".to_string(), "api".to_string()),
                (
                    "instance".to_string(),
                    format!("10.0.0.{}:9100", index % 20),
                ),
                ("method".to_string(), ["GET", "POST"][index % 2].to_string()),
                ("code".to_string(), format!("{}", 200 + index / 20)),
            ])
        })
        .collect();
    for scrape in 0..480i64 {
        for (index, labels) in all.iter().enumerate() {
            let value = (scrape * (index as i64 % 5)) as f64;
            store.append(labels, scrape * 15_000, value).unwrap();
        }
        store.commit().unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.head_series, 200);
    let per_series = stats.head_bytes / stats.head_series;
    // the chunks alone take several hundred bytes: a head_bytes that forgot
    // them would be far lower
    assert!(
        (600..2048).contains(&per_series),
        "{per_series} bytes per series"
    );
}

#[test]
fn version_1_blocks_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let block_dir = dir
        .path()
        .join("blocks/00000000000000000000-00000000000001785000");
    std::fs::create_dir_all(&block_dir).unwrap();
    let samples: Vec<(i64, f64)> = (0..120)
        .map(|index: i64| (index * 15_000 + index % 3, index as f64 * 1.5))
        .collect();
    let chunk_bytes = chunk::ChunkEncoder::encode_v1(&samples);
    let mut data = b"SLTSDB01".to_vec();
    data.extend_from_slice(&2u32.to_le_bytes());
    for text in ["__name__", "cpu", "job", "api"] {
        data.extend_from_slice(&(text.len() as u32).to_le_bytes());
        data.extend_from_slice(text.as_bytes());
    }
    data.extend_from_slice(&1u32.to_le_bytes());
    data.extend_from_slice(&samples[0].0.to_le_bytes());
    data.extend_from_slice(&samples[119].0.to_le_bytes());
    data.extend_from_slice(&120u16.to_le_bytes());
    data.extend_from_slice(&(chunk_bytes.len() as u32).to_le_bytes());
    data.extend_from_slice(&chunk_bytes);
    let checksum = crc32fast::hash(&data);
    data.extend_from_slice(&checksum.to_le_bytes());
    std::fs::write(block_dir.join("series.bin"), data).unwrap();
    std::fs::write(
        block_dir.join("meta.json"),
        r#"{"version": 1, "min_ms": 0, "max_ms": 1785000, "num_series": 1, "num_samples": 120}"#,
    )
    .unwrap();

    let store = open(dir.path());
    let selected = store
        .select(&[LabelMatcher::equal(METRIC_NAME, "cpu")], 0, i64::MAX)
        .unwrap();
    assert_eq!(selected.len(), 1);
    assert_eq!(selected[0].labels, labels("cpu", "api"));
    assert_eq!(selected[0].samples, samples);
}

#[test]
fn a_corrupt_block_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let mut store = open(dir.path());
        store.append(&labels("up", "api"), 1_000, 1.0).unwrap();
        store.cut_block().unwrap().unwrap()
    };
    let data_path = path.join("series.bin");
    let mut data = std::fs::read(&data_path).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&data_path, data).unwrap();
    let error = TimeSeriesStore::open(dir.path()).unwrap_err();
    assert!(matches!(error, TsdbError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
}

#[test]
fn series_whose_label_hashes_collide_stay_apart() {
    let mut head = Head::default();
    let first = labels("up", "api");
    let second = labels("up", "db");
    assert_eq!(head.get_or_create(&first), (0, true));
    // make the second label set's hash point at the first series, as a
    // 64-bit collision would
    let hash = head.hasher.hash_one(&second);
    head.by_hash.insert(hash, 0);
    assert_eq!(head.get_or_create(&second), (1, true));
    assert_eq!(head.get_or_create(&second), (1, false));
    assert_eq!(head.get_or_create(&first), (0, false));
    assert_eq!(head.index.labels(1), second);
    head.append(1, 1_000, 2.0).unwrap();
    assert_eq!(head.series[0].newest_ms(), None);
}

#[test]
fn a_block_index_reads_the_same_series_as_the_block_from_byte_ranges_only() {
    let dir = tempfile::tempdir().unwrap();
    let all = varied_series();
    let mut store = open(dir.path());
    // 300 chunks' worth for the first series (several chunks), one or two
    // samples for the others, some of them outside the queried range.
    for step in 0..300i64 {
        store.append(&all[0], step * 15_000, step as f64).unwrap();
    }
    for (index, labels) in all.iter().enumerate().skip(1) {
        store
            .append(labels, 1_000 + index as i64, index as f64)
            .unwrap();
        if index % 3 == 0 {
            store.append(labels, 4_000_000, 0.5).unwrap();
        }
    }
    store.commit().unwrap();
    let path = store.cut_block().unwrap().unwrap();
    let meta = std::fs::read(path.join("meta.json")).unwrap();
    let series_bin = std::fs::read(path.join("series.bin")).unwrap();
    let block = Block::open(&path).unwrap();
    let index_bin = BlockIndex::build(&path, &meta, &series_bin).unwrap();
    assert!(index_bin.len() < series_bin.len());
    let index = BlockIndex::decode(&path, &index_bin).unwrap();
    assert_eq!(index.meta(), block.meta());

    let read = |matchers: &[LabelMatcher], start_ms: i64, end_ms: i64| {
        let mut read_bytes = 0;
        let mut found = Vec::new();
        for id in index.matching(matchers, start_ms, end_ms) {
            let range = index.byte_range(id);
            read_bytes += range.end - range.start;
            let bytes = &series_bin[range.start as usize..range.end as usize];
            let chunks = index.read_chunks(id, bytes).unwrap();
            found.extend(index.samples(id, &chunks, start_ms, end_ms).unwrap());
        }
        (found, read_bytes)
    };
    for matchers in matcher_sets() {
        for (start_ms, end_ms) in [(0, i64::MAX), (2_000, 3_000_000), (3_000_000, 5_000_000)] {
            let (found, _) = read(&matchers, start_ms, end_ms);
            assert_eq!(
                found,
                block.select(&matchers, start_ms, end_ms).unwrap(),
                "{matchers:?} {start_ms}..{end_ms}"
            );
            assert_eq!(
                index.series(&matchers, start_ms, end_ms),
                block.series(&matchers, start_ms, end_ms),
                "{matchers:?} {start_ms}..{end_ms}"
            );
        }
        assert_eq!(
            index.label_values("job", &matchers),
            block.label_values("job", &matchers)
        );
    }
    let names = |names: &mut dyn Iterator<Item = &str>| -> BTreeSet<String> {
        names.map(str::to_string).collect()
    };
    assert_eq!(
        names(&mut index.label_names()),
        names(&mut block.label_names())
    );
    // One series costs its own bytes, not the block's.
    let (one, read_bytes) = read(
        &[LabelMatcher::equal("instance", "host-42:9100")],
        0,
        i64::MAX,
    );
    assert_eq!(one.len(), 1);
    assert!(read_bytes * 100 < series_bin.len() as u64, "{read_bytes}");

    // A flipped byte in a series' range is caught by its checksum, with
    // the block and series named.
    let id = index.matching(
        &[LabelMatcher::equal("instance", "host-42:9100")],
        0,
        i64::MAX,
    )[0];
    let range = index.byte_range(id);
    let mut bytes = series_bin[range.start as usize..range.end as usize].to_vec();
    bytes[0] ^= 0xff;
    let error = index.read_chunks(id, &bytes).unwrap_err().to_string();
    assert!(
        error.contains("checksum") && error.contains(&format!("series {id}")),
        "{error}"
    );
    // So is a corrupt index.
    let mut broken = index_bin.clone();
    broken[20] ^= 0xff;
    let error = BlockIndex::decode(&path, &broken).unwrap_err().to_string();
    assert!(error.contains("index checksum mismatch"), "{error}");
}

#[test]
fn compacting_blocks_keeps_every_sample_once_and_copies_disjoint_chunks() {
    let (first_dir, second_dir, out) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let cut = |dir: &Path, samples: &[(&Labels, i64, f64)]| {
        let mut store = open(dir);
        for (labels, timestamp_ms, value) in samples {
            store.append(labels, *timestamp_ms, *value).unwrap();
        }
        store.commit().unwrap();
        Block::open(&store.cut_block().unwrap().unwrap()).unwrap()
    };
    let (up, down, replayed) = (
        labels("up", "api"),
        labels("down", "api"),
        labels("replayed", "api"),
    );
    // `up`: 300 samples then 300 more (chunks copied); `down` only in the
    // second block; `replayed`: samples 100..200 written to both blocks (a
    // replay), the second block's copy of them different.
    let mut first = Vec::new();
    let mut second = Vec::new();
    for step in 0..300i64 {
        first.push((&up, step * 1_000, step as f64));
        second.push((&up, (300 + step) * 1_000, (300 + step) as f64));
        if step < 200 {
            first.push((&replayed, step * 1_000, step as f64));
        }
        if step >= 100 {
            second.push((&replayed, step * 1_000, -1.0));
            second.push((&down, step * 1_000, 7.0));
        }
    }
    let (first, second) = (
        cut(first_dir.path(), &first),
        cut(second_dir.path(), &second),
    );
    let path = Block::compact(out.path(), &[&first, &second]).unwrap();
    let compacted = Block::open(&path).unwrap();
    assert_eq!(compacted.meta().min_ms, 0);
    assert_eq!(compacted.meta().max_ms, 599_000);
    assert_eq!(compacted.meta().num_series, 3);
    assert_eq!(compacted.meta().num_samples, 600 + 300 + 200);
    let select = |name: &str| {
        let mut found = compacted
            .select(
                &[LabelMatcher::equal(METRIC_NAME, name)],
                i64::MIN,
                i64::MAX,
            )
            .unwrap();
        assert_eq!(found.len(), 1, "{name}");
        found.remove(0).samples
    };
    let up_samples: Vec<(i64, f64)> = (0..600).map(|step| (step * 1_000, step as f64)).collect();
    assert_eq!(select("up"), up_samples);
    let replayed_samples: Vec<(i64, f64)> = (0..300)
        .map(|step| (step * 1_000, if step < 200 { step as f64 } else { -1.0 }))
        .collect();
    assert_eq!(select("replayed"), replayed_samples);
    assert_eq!(select("down").len(), 200);
    // `up`'s chunks were copied, not re-encoded: the same bytes.
    let chunk_bytes = |block: &Block, labels: &Labels| -> usize {
        let id = block
            .index()
            .select(&[LabelMatcher::equal(METRIC_NAME, labels.metric_name())])[0];
        block.chunks(id).iter().map(|chunk| chunk.bytes.len()).sum()
    };
    assert_eq!(
        chunk_bytes(&compacted, &up),
        chunk_bytes(&first, &up) + chunk_bytes(&second, &up)
    );
}
