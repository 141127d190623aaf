//! The log query language: parsed and run against a real (small) log
//! store, and compiled into the in-memory matcher used by live tail.
#![no_main]

use std::sync::OnceLock;

use serde_json::json;
use sightline_store::{LogMatcher, LogQuery, LogRecord, LogStore};

/// A store with a few records, opened once per fuzzing process.
fn store() -> &'static (tempfile::TempDir, LogStore, Vec<LogRecord>) {
    static STORE: OnceLock<(tempfile::TempDir, LogStore, Vec<LogRecord>)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let records = vec![
            record(1, "payment declined for user 42"),
            record(2, "shipped order"),
        ];
        store.add(1, &records).unwrap();
        store.commit(1).unwrap();
        (dir, store, records)
    })
}

fn record(second: i64, body: &str) -> LogRecord {
    let mut record = LogRecord {
        timestamp: 1_700_000_000_000_000_000 + second * 1_000_000_000,
        severity_text: "ERROR".into(),
        severity_number: 17,
        body: body.into(),
        service: "checkout".into(),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        request_id: Some("req-1".into()),
        ..LogRecord::default()
    };
    record.attributes.insert("http.status".into(), json!(503));
    record
        .attributes
        .insert("user".into(), json!({"id": 42, "name": "ada"}));
    std::sync::Arc::make_mut(&mut record.resource)
        .insert("k8s.pod.name".into(), json!("checkout-1"));
    record
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (_, store, records) = store();
    let _ = store.search(&LogQuery {
        query: text.to_string(),
        limit: 10,
        ..LogQuery::default()
    });
    if let Ok(matcher) = LogMatcher::new(text) {
        for record in records {
            matcher.matches(record);
        }
    }
});
