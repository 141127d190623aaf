//! No query string makes the log store's query parser or search panic.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sightline_store::{LogQuery, LogRecord, LogStore};

fn query_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("AND".to_string()),
        Just("OR".to_string()),
        Just("NOT".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("\"".to_string()),
        Just("*".to_string()),
        Just("?".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("TO".to_string()),
        Just(":".to_string()),
        Just("-".to_string()),
        Just("+".to_string()),
        Just("^2".to_string()),
        Just("~".to_string()),
        Just("\\".to_string()),
        Just("body:".to_string()),
        Just("service:".to_string()),
        Just("severity_number:".to_string()),
        Just("timestamp:".to_string()),
        Just("trace_id:".to_string()),
        Just("request_id:".to_string()),
        Just("attributes.user_id:".to_string()),
        Just("http.status:".to_string()),
        Just("resource.k8s.pod.name:".to_string()),
        "[a-z0-9*?]{1,6}",
        "-?[0-9]{1,20}",
        "\\PC{1,4}",
    ];
    let separator = prop_oneof![Just(" "), Just(""), Just("  ")];
    prop_oneof![
        prop::collection::vec((token, separator), 0..10).prop_map(|parts| parts
            .into_iter()
            .map(|(token, separator)| token + separator)
            .collect()),
        "\\PC{0,40}",
    ]
}

#[test]
fn no_query_string_panics_the_parser_or_search() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let records: Vec<_> = (0..20)
        .map(|i| LogRecord {
            timestamp: 1_700_000_000_000_000_000 + i * 1_000_000_000,
            body: format!("payment {i} declined"),
            service: "payment".into(),
            severity_text: "ERROR".into(),
            severity_number: 17,
            attributes: serde_json::json!({"user_id": i, "http": {"status": 500 + i}})
                .as_object()
                .unwrap()
                .clone(),
            request_id: Some(format!("req-{i}")),
            ..LogRecord::default()
        })
        .collect();
    store.add(0, &records).unwrap();
    store.commit(1).unwrap();

    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    runner
        .run(&query_text(), |query| {
            let _ = store.validate_query(&query);
            let _ = store.search(&LogQuery {
                query,
                limit: 5,
                ..LogQuery::default()
            });
            Ok(())
        })
        .unwrap();
}
