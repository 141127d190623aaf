//! Every on-disk format version the store reads has a fixture in
//! `tests/fixtures/`, and this test opens each one and checks what comes
//! out, as tantivy and Quickwit do: a change that stops old files from
//! opening, or that changes what the current version writes, fails here
//! and has to be made on purpose (a version bump and a new fixture, the old
//! one kept).
//!
//! - `wal-v1/`, `wal-v2/`: write-ahead log segments of WAL format 1 (byte
//!   offset positions) and 2 ([`wal::WAL_FORMAT_VERSION`]), holding the same
//!   three batches (logs, spans, logs).
//! - `logs-v2/` to `logs-v4/`, `logs-v<LOG_PARTITION_FORMAT_VERSION>/`: a log
//!   store with one day partition (a tantivy index, and from format 3 its
//!   streams) and its manifest, holding the same two records. Partitions of format 1
//!   (tantivy's `default` tokenizer) are covered by the log store's unit
//!   test `partitions_of_the_first_schema_open_and_stay_searchable`.
//! - `spans-v1/`, `spans-v2/`, `spans-v<SPAN_STORE_FORMAT_VERSION>/`: a span
//!   store with one trace (format 1 indexed its times as terms too, formats
//!   1 and 2 each span's request id).
//!
//! `wal-v1/` was written by the format 1 writer itself (`store/src/wal.rs`
//! of commit 5092bc4, appending the payloads of `wal-v2/`). The fixtures of
//! the current versions are written by this file's generators. After a deliberate format change (with its version bump),
//! write the new ones with
//!
//! ```text
//! SIGHTLINE_REGENERATE_FIXTURES=1 cargo test -p sightline-store --test formats
//! ```
//!
//! which replaces only the current versions' fixtures, then checks them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use sightline_store::SpanReader as _;
use sightline_store::wal::{self, WAL_FORMAT_VERSION};
use sightline_store::{
    Batch, Checkpoint, DurableLog, LOG_PARTITION_FORMAT_VERSION, LocalWal, LogQuery, LogRecord,
    LogStore, SINGLE_PARTITION, SPAN_STORE_FORMAT_VERSION, Span, SpanEvent, SpanLink, SpanStatus,
    SpanStore, TraceQuery, log_index_schema,
};

/// 2023-11-14T22:13:20Z in nanoseconds.
const T0: i64 = 1_700_000_000_000_000_000;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn regenerating() -> bool {
    std::env::var_os("SIGHTLINE_REGENERATE_FIXTURES").is_some()
}

fn records() -> Vec<LogRecord> {
    let mut payment = LogRecord {
        timestamp: T0,
        observed_timestamp: T0 + 1_000,
        severity_text: "ERROR".into(),
        severity_number: 17,
        body: "payment declined for order 42".into(),
        service: "checkout".into(),
        trace_id: Some(TRACE_ID.into()),
        span_id: Some("00f067aa0ba902b7".into()),
        request_id: Some("req-7".into()),
        ..LogRecord::default()
    };
    std::sync::Arc::make_mut(&mut payment.resource)
        .insert("k8s.pod.name".into(), json!("checkout-5d9f"));
    payment
        .attributes
        .insert("http.status_code".into(), json!(402));
    payment
        .attributes
        .insert("user".into(), json!({"tier": "gold"}));
    let mut started = LogRecord {
        timestamp: T0 + 2_000_000_000,
        observed_timestamp: T0 + 2_000_001_000,
        severity_text: "INFO".into(),
        severity_number: 9,
        body: "inventory reserved".into(),
        service: "inventory".into(),
        ..LogRecord::default()
    };
    std::sync::Arc::make_mut(&mut started.resource).insert("host.name".into(), json!("node-1"));
    vec![payment, started]
}

fn spans() -> Vec<Span> {
    let root = Span {
        trace_id: TRACE_ID.into(),
        span_id: "00f067aa0ba902b7".into(),
        parent_span_id: None,
        name: "POST /checkout".into(),
        service: "checkout".into(),
        kind: "server".into(),
        start_time: T0,
        end_time: T0 + 30_000_000,
        status: SpanStatus::Error,
        status_message: "payment declined".into(),
        attributes: [("http.route".to_string(), json!("/checkout"))]
            .into_iter()
            .collect(),
        resource: std::sync::Arc::new(
            [("service.version".to_string(), json!("1.4.2"))]
                .into_iter()
                .collect(),
        ),
        events: vec![SpanEvent {
            time: T0 + 20_000_000,
            name: "exception".into(),
            attributes: [("exception.type".to_string(), json!("Declined"))]
                .into_iter()
                .collect(),
        }],
        links: vec![SpanLink {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            attributes: Default::default(),
        }],
        request_id: Some("req-7".into()),
    };
    let child = Span {
        span_id: "b9c7c989f97918e1".into(),
        parent_span_id: Some(root.span_id.clone()),
        name: "charge".into(),
        service: "payments".into(),
        kind: "client".into(),
        start_time: T0 + 5_000_000,
        end_time: T0 + 25_000_000,
        status: SpanStatus::Unset,
        status_message: String::new(),
        events: Vec::new(),
        links: Vec::new(),
        ..root.clone()
    };
    vec![root, child]
}

/// What every WAL fixture holds, in order.
fn batches() -> Vec<Batch> {
    let records = records();
    vec![
        Batch::Logs(records[..1].to_vec()),
        Batch::Spans(spans()),
        Batch::Logs(records[1..].to_vec()),
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A fixture copied to a scratch directory: opening a store may write
/// (locks, repairs), and the checked-in files must stay as they are.
fn open_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let source = fixtures().join(name);
    assert!(
        source.is_dir(),
        "no fixture {} (write it with SIGHTLINE_REGENERATE_FIXTURES=1)",
        source.display()
    );
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join(name);
    copy_dir(&source, &copy);
    (scratch, copy)
}

/// Replaces the fixture `name` by what `write` puts into an empty directory.
fn regenerate(name: &str, write: impl FnOnce(&Path)) {
    let dir = fixtures().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir);
    remove_locks(&dir);
}

/// tantivy's lock files are not part of an index.
fn remove_locks(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            remove_locks(&path);
        } else if name.starts_with(".tantivy-") && name.ends_with(".lock") {
            std::fs::remove_file(path).unwrap();
        }
    }
}

/// The schema of every tantivy index under `dir`, by the path of its
/// `meta.json`.
fn schemas(dir: &Path) -> BTreeMap<String, serde_json::Value> {
    fn visit(root: &Path, dir: &Path, found: &mut BTreeMap<String, serde_json::Value>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(root, &path, found);
            } else if path.file_name().is_some_and(|name| name == "meta.json") {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                let relative = path.strip_prefix(root).unwrap().to_string_lossy();
                found.insert(relative.into_owned(), meta["schema"].clone());
            }
        }
    }
    let mut found = BTreeMap::new();
    visit(dir, dir, &mut found);
    assert!(
        !found.is_empty(),
        "no tantivy index under {}",
        dir.display()
    );
    found
}

fn read_wal(dir: &Path) -> Vec<(u64, Batch)> {
    let log = LocalWal::open(dir, wal::DEFAULT_SEGMENT_BYTES).unwrap();
    let mut entries = Vec::new();
    log.replay(&Checkpoint::default(), &mut |entry| {
        assert_eq!(entry.partition, SINGLE_PARTITION);
        entries.push((entry.position, Batch::decode(&entry.payload).unwrap()));
        Ok(())
    })
    .unwrap();
    entries
}

/// The WAL as the current format writes `batches()`.
fn write_current_wal(dir: &Path) {
    let log = LocalWal::open(dir, wal::DEFAULT_SEGMENT_BYTES).unwrap();
    for batch in batches() {
        log.append(SINGLE_PARTITION, batch.encode().unwrap().payload.as_bytes())
            .unwrap();
    }
    log.sync().unwrap();
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn wal_format_1_is_read_with_byte_offset_positions_and_continued() {
    let (_scratch, dir) = open_copy("wal-v1");
    let entries = read_wal(&dir);
    let positions: Vec<u64> = entries.iter().map(|(position, _)| *position).collect();
    let batches_read: Vec<Batch> = entries.into_iter().map(|(_, batch)| batch).collect();
    assert_eq!(batches_read, batches());
    // Byte offsets: each position is the previous one plus its frame.
    let frames: Vec<u64> = batches()
        .iter()
        .map(|batch| 8 + batch.encode().unwrap().payload.len() as u64)
        .collect();
    assert_eq!(
        positions,
        [0, frames[0], frames[0] + frames[1]],
        "format 1 positions are byte offsets"
    );
    let old_end = frames.iter().sum::<u64>();
    // Appending goes on after the format 1 end, in the current format.
    let log = LocalWal::open(&dir, wal::DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(log.end(), Checkpoint::single(old_end));
    let next = log
        .append(
            SINGLE_PARTITION,
            batches()[0].encode().unwrap().payload.as_bytes(),
        )
        .unwrap();
    log.sync().unwrap();
    assert_eq!(next, old_end);
    assert_eq!(log.end(), Checkpoint::single(old_end + 1));
    let all: Vec<u64> = read_wal(&dir)
        .into_iter()
        .map(|(position, _)| position)
        .collect();
    assert_eq!(
        all,
        [positions.as_slice(), &[old_end]].concat(),
        "positions keep growing across the format change"
    );
}

#[test]
fn wal_format_2_is_read_and_is_what_the_current_version_writes() {
    assert_eq!(WAL_FORMAT_VERSION, 2, "a new WAL format needs its fixture");
    if regenerating() {
        regenerate("wal-v2", write_current_wal);
    }
    let (_scratch, dir) = open_copy("wal-v2");
    let entries = read_wal(&dir);
    assert_eq!(
        entries,
        batches()
            .into_iter()
            .enumerate()
            .map(|(index, batch)| (index as u64, batch))
            .collect::<Vec<_>>(),
        "format 2 positions count entries"
    );
    // Byte for byte what the current code writes: a change of the framing
    // or of the batch encoding shows up here.
    let written = tempfile::tempdir().unwrap();
    write_current_wal(written.path());
    assert_eq!(
        files(written.path()),
        files(&fixtures().join("wal-v2")),
        "the current WAL format differs from its fixture: bump WAL_FORMAT_VERSION and add a fixture"
    );
}

/// The table of a query with pipes over the fixtures' day.
fn stats(store: &LogStore, query: &str) -> sightline_store::pipes::StatsTable {
    let pipeline = sightline_store::pipes::parse(query).unwrap().unwrap();
    let (start, end) = (T0 - 3_600_000_000_000, T0 + 3_600_000_000_000);
    store
        .aggregate(&pipeline, start, end)
        .unwrap()
        .finish(&pipeline, start, end)
        .unwrap()
}

/// Opens a copy of the log store fixture `name` and checks what it answers.
fn check_log_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let (scratch, dir) = open_copy(name);
    let store = LogStore::open(&dir).unwrap();
    assert_eq!(store.committed_position(), 1);
    assert_eq!(store.partition_names(), ["2023-11-14"]);
    assert_eq!(store.num_records(), 2);
    let search = |query: &str| {
        store
            .search(&LogQuery {
                query: query.into(),
                limit: 10,
                ..LogQuery::default()
            })
            .unwrap()
    };
    let all = search("");
    let expected: Vec<LogRecord> = records().into_iter().rev().collect();
    assert_eq!(
        all.hits
            .iter()
            .map(|hit| hit.record.clone())
            .collect::<Vec<_>>(),
        expected,
        "{name}: records come back whole, newest first"
    );
    // Ids are `<timestamp>-<seq>`, seq = batch position << 20 | index.
    assert_eq!(
        all.hits
            .iter()
            .map(|hit| hit.id.as_str())
            .collect::<Vec<_>>(),
        [format!("{}-1", T0 + 2_000_000_000), format!("{T0}-0")]
    );
    let payment = "payment declined for order 42";
    for (query, bodies) in [
        ("declined", vec![payment]),
        ("attributes.user.tier:gold", vec![payment]),
        ("service:inventory", vec!["inventory reserved"]),
        ("request_id:req-7", vec![payment]),
        (&format!("trace_id:{TRACE_ID}"), vec![payment]),
        ("severity:error", vec![payment]),
        (
            "resource.host.name:node-1 OR resource.k8s.pod.name:checkout-5d9f",
            vec!["inventory reserved", payment],
        ),
        ("checkout-5d9f", vec![payment]),
        ("resource.k8s.pod.name:checkout-*", vec![payment]),
        ("http.status_code:[400 TO 499]", vec![payment]),
        ("user.tier:*", vec![payment]),
        ("NOT request_id:*", vec!["inventory reserved"]),
        // An exact time: a term in formats up to 4, a one-value range on
        // the fast column in format 5, which does not index the time.
        (&format!("timestamp:{T0}"), vec![payment]),
        (
            &format!("timestamp: IN [{T0} {}]", T0 + 2_000_000_000),
            vec!["inventory reserved", payment],
        ),
        (&format!("timestamp:{}", T0 + 1), vec![]),
        // A whole term up to format 4, a key and the stored record's id in
        // format 5.
        ("span_id:00f067aa0ba902b7", vec![payment]),
        ("span_id:00f067aa0ba902b8", vec![]),
        ("span_id:00f067*", vec![payment]),
    ] {
        let found: Vec<String> = search(query)
            .hits
            .into_iter()
            .map(|hit| hit.record.body)
            .collect();
        assert_eq!(found, bodies, "{name}: {query}");
    }
    (scratch, dir)
}

/// Writes `late` into the store at `dir` (a copy of an older format's
/// fixture, whose day it falls on), reopens it, checks that `query` finds
/// it alone, whole, and returns the store.
fn write_late_and_find(dir: &Path, late: &LogRecord, query: &str) -> LogStore {
    let store = LogStore::open(dir).unwrap();
    store.add(5, std::slice::from_ref(late)).unwrap();
    store.commit(6).unwrap();
    drop(store);
    let store = LogStore::open(dir).unwrap();
    let found = store
        .search(&LogQuery {
            query: query.into(),
            limit: 10,
            ..LogQuery::default()
        })
        .unwrap();
    assert_eq!(found.hits.len(), 1, "{query}");
    assert_eq!(found.hits[0].record, *late, "{query}");
    store
}

#[test]
fn the_log_partition_fixtures_open_and_answer_queries() {
    assert_eq!(
        LOG_PARTITION_FORMAT_VERSION, 5,
        "a new log partition format needs its fixture"
    );
    let name = format!("logs-v{LOG_PARTITION_FORMAT_VERSION}");
    if regenerating() {
        regenerate(&name, |dir| {
            let store = LogStore::open(dir).unwrap();
            store.add(0, &records()).unwrap();
            store.commit(1).unwrap();
        });
    }
    let (_scratch, dir) = check_log_fixture(&name);
    let store = LogStore::open(&dir).unwrap();
    let counted = stats(
        &store,
        "| stats count(), max(http.status_code) by service, resource.k8s.pod.name",
    );
    assert_eq!(
        counted.rows,
        [vec![
            json!("checkout"),
            json!("checkout-5d9f"),
            json!(1),
            json!(402)
        ]]
    );
    assert_eq!(counted.matched, 2);
    drop(store);
    // The partition's schema and streams are the ones this version creates
    // partitions with.
    let fresh = tempfile::tempdir().unwrap();
    let written = LogStore::open(fresh.path()).unwrap();
    written.add(0, &records()).unwrap();
    written.commit(1).unwrap();
    assert_eq!(
        schemas(&dir),
        schemas(fresh.path()),
        "the log partition schema changed: bump LOG_PARTITION_FORMAT_VERSION and add a fixture"
    );
    let streams =
        |dir: &Path| std::fs::read_to_string(dir.join("2023-11-14/streams.jsonl")).unwrap();
    assert_eq!(streams(&dir), streams(fresh.path()));
    assert_eq!(streams(&dir).lines().count(), 2, "one line per resource");

    // Format 4 partitions (the timestamp indexed as terms too) are still
    // read, written on the day they cover in their own format, and
    // aggregated.
    let (_scratch, dir) = check_log_fixture("logs-v4");
    let indexed = |dir: &Path, name: &str| {
        schemas(dir)["2023-11-14/meta.json"]
            .as_array()
            .unwrap()
            .iter()
            .find(|field| field["name"] == name)
            .unwrap()["options"]["indexed"]
            .clone()
    };
    assert_eq!(indexed(&dir, "timestamp"), json!(true));
    assert_eq!(indexed(fresh.path(), "timestamp"), json!(false));
    let mut late = records().remove(0);
    late.timestamp += 1_000;
    late.body = "payment retried for order 42".into();
    let query = format!("timestamp:{} AND retried", late.timestamp);
    let store = write_late_and_find(&dir, &late, &query);
    assert_eq!(indexed(&dir, "timestamp"), json!(true));
    let counted = stats(&store, "| stats count() by service");
    assert_eq!(counted.matched, 3);
    assert_eq!(
        counted.rows,
        [
            vec![json!("checkout"), json!(2)],
            vec![json!("inventory"), json!(1)]
        ]
    );

    // Format 3 partitions (numbers without the other columns) are still
    // read, and written on the day they cover, in their own format.
    let (_scratch, dir) = check_log_fixture("logs-v3");
    let schema = &schemas(&dir)["2023-11-14/meta.json"];
    let names: Vec<&str> = schema
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"numbers") && !names.contains(&"columns"));
    let mut late = records().remove(0);
    late.timestamp += 1_000;
    late.body = "payment retried for order 42".into();
    let store = write_late_and_find(&dir, &late, "retried AND http.status_code:[400 TO 499]");
    // Its records are counted as matched but not aggregated, and the
    // answer says so.
    let counted = stats(&store, "| stats count() by service");
    assert_eq!(counted.matched, 3);
    assert!(counted.rows.is_empty());
    assert!(
        counted.warnings[0].contains("3 records of 2023-11-14 are not counted"),
        "{:?}",
        counted.warnings
    );

    // Format 2 partitions (every document holds its resource) are still
    // read, and written on the day they cover.
    let (_scratch, dir) = check_log_fixture("logs-v2");
    assert_eq!(
        schemas(&dir)["2023-11-14/meta.json"],
        serde_json::to_value(log_index_schema()).unwrap()
    );
    let mut late = records().remove(1);
    late.timestamp += 1_000;
    late.body = "inventory released".into();
    write_late_and_find(&dir, &late, "released AND resource.host.name:node-1");
    assert!(!dir.join("2023-11-14/streams.jsonl").exists());
}

#[test]
fn the_span_store_fixtures_open_and_answer_queries() {
    assert_eq!(
        SPAN_STORE_FORMAT_VERSION, 3,
        "a new span store format needs its fixture"
    );
    let name = format!("spans-v{SPAN_STORE_FORMAT_VERSION}");
    if regenerating() {
        regenerate(&name, |dir| {
            let store = SpanStore::open(dir).unwrap();
            store.add(0, &spans()).unwrap();
            store.commit(1).unwrap();
        });
    }
    for version in 1..=SPAN_STORE_FORMAT_VERSION {
        let (_scratch, dir) = open_copy(&format!("spans-v{version}"));
        span_store_answers(&dir);
        // An old store keeps its format and takes new spans: a second trace,
        // found by time range (formats 2 and 3 read the range from fast
        // columns, format 1 has them too) and by id.
        let store = SpanStore::open(&dir).unwrap();
        let mut later = spans();
        for span in &mut later {
            span.trace_id = "5b8efff798038103d269b633813fc60c".into();
            span.start_time += 3_600_000_000_000;
            span.end_time += 3_600_000_000_000;
        }
        store.add(1, &later).unwrap();
        store.commit(2).unwrap();
        assert_eq!(store.trace(&later[0].trace_id).unwrap().len(), 2);
        // Request ids are found through the summaries in every format
        // (formats 1 and 2 also indexed them per span).
        let mut both = vec![TRACE_ID.to_string(), later[0].trace_id.clone()];
        both.sort();
        assert_eq!(
            store.trace_ids_for_request("req-7").unwrap(),
            both,
            "format {version}"
        );
        let found = store
            .search_traces(&TraceQuery {
                start: Some(T0 + 1_800_000_000_000),
                limit: 10,
                ..TraceQuery::default()
            })
            .unwrap();
        let found: Vec<&str> = found.iter().map(|s| s.trace_id.as_str()).collect();
        assert_eq!(found, [later[0].trace_id.as_str()], "format {version}");
        let found = store
            .search_traces(&TraceQuery {
                min_duration: Some(30_000_000),
                limit: 10,
                ..TraceQuery::default()
            })
            .unwrap();
        assert_eq!(found.len(), 2, "format {version}: duration range");
        // Retention deletes by the time column in both formats.
        store.delete_before(T0 + 1_800_000_000_000).unwrap();
        store.commit(3).unwrap();
        assert!(
            store.trace(TRACE_ID).unwrap().is_empty(),
            "format {version}"
        );
        assert_eq!(store.num_spans(), 2, "format {version}");
    }
    // The current fixture's schemas are the ones this version creates.
    let (_scratch, dir) = open_copy(&name);
    let fresh = tempfile::tempdir().unwrap();
    let written = SpanStore::open(fresh.path()).unwrap();
    written.add(0, &spans()).unwrap();
    written.commit(1).unwrap();
    assert_eq!(
        schemas(&dir),
        schemas(fresh.path()),
        "the span store's schemas changed: bump SPAN_STORE_FORMAT_VERSION and add a fixture"
    );
}

/// What every span store fixture holds, asked through every kind of query.
fn span_store_answers(dir: &Path) {
    let store = SpanStore::open(dir).unwrap();
    assert_eq!(store.committed_position(), 1);
    assert_eq!(store.num_spans(), 2);
    let mut trace = store.trace(TRACE_ID).unwrap();
    trace.sort_by_key(|span| span.start_time);
    assert_eq!(trace, spans(), "spans come back whole");
    let summary = store.summary(TRACE_ID).unwrap().unwrap();
    assert_eq!(summary.root_service, "checkout");
    assert_eq!(summary.root_operation, "POST /checkout");
    assert_eq!(summary.span_count, 2);
    assert_eq!(summary.error_count, 1);
    assert_eq!(summary.duration, 30_000_000);
    assert!(summary.has_root);
    assert_eq!(summary.request_ids, ["req-7"]);
    assert_eq!(store.services().unwrap(), ["checkout", "payments"]);
    assert_eq!(store.operations("payments").unwrap(), ["charge"]);
    assert_eq!(
        store.trace_ids_for_request("req-7").unwrap(),
        [TRACE_ID.to_string()]
    );
    assert_eq!(
        store
            .traces_linking_to("0af7651916cd43dd8448eb211c80319c")
            .unwrap(),
        [TRACE_ID.to_string()]
    );
    let found = store
        .search_traces(&TraceQuery {
            service: Some("payments".into()),
            errors_only: true,
            start: Some(T0 - 1),
            end: Some(T0 + 1),
            limit: 10,
            ..TraceQuery::default()
        })
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].trace_id, TRACE_ID);
}

/// What the saved-searches fixture holds.
fn saved_searches(dir: &Path) -> sightline_store::SavedSearches {
    let saved = sightline_store::SavedSearches::open(&dir.join("saved-searches.json")).unwrap();
    let failed = saved
        .save("Failed logins", "body:\"login failed\"", T0)
        .unwrap();
    saved
        .save(
            "Errors by service",
            "severity:ERROR | stats count() by service",
            T0,
        )
        .unwrap();
    saved
        .set_alert(
            &failed.id,
            Some(sightline_store::SearchAlert {
                metric: "search_failed_logins_by_ip_address_total".into(),
                group_by: Some("ip_address".into()),
                threshold: 10.0,
                window_seconds: 60,
                for_seconds: 30,
                severity: "warning".into(),
                created: T0,
            }),
        )
        .unwrap();
    saved
}

#[test]
fn saved_searches_format_1_is_read_and_is_what_the_current_version_writes() {
    assert_eq!(
        sightline_store::saved::SAVED_SEARCHES_FORMAT_VERSION,
        1,
        "a new saved-searches format needs its fixture"
    );
    if regenerating() {
        regenerate("saved-searches-v1", |dir| {
            saved_searches(dir);
        });
    }
    let (_scratch, dir) = open_copy("saved-searches-v1");
    let read = sightline_store::SavedSearches::open(&dir.join("saved-searches.json")).unwrap();
    let written = tempfile::tempdir().unwrap();
    let expected = saved_searches(written.path());
    assert_eq!(read.list(), expected.list());
    assert_eq!(read.list()[0].alert.as_ref().unwrap().for_seconds, 30);
    assert_eq!(
        files(written.path()),
        files(&fixtures().join("saved-searches-v1")),
        "the saved-searches file differs from its fixture: bump SAVED_SEARCHES_FORMAT_VERSION and add a fixture"
    );
}
