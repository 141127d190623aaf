//! No query string makes the log store's query parser or search panic, and
//! every query either runs or is refused as the user's mistake (a 400 that
//! says why), never an index error (a 500).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sightline_store::{LogQuery, LogRecord, LogStore, StoreError};

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
        Just("resource:".to_string()),
        Just("span_id:".to_string()),
        Just("stream:".to_string()),
        Just("severity:".to_string()),
        Just("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_string()),
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
fn no_query_string_panics_the_parser_or_search_or_fails_the_index() {
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
            let result = store.search(&LogQuery {
                query: query.clone(),
                limit: 5,
                ..LogQuery::default()
            });
            match result {
                Ok(_) => Ok(()),
                Err(StoreError::InvalidQuery(message)) if message.contains("Only excluding") => {
                    Err(TestCaseError::fail(format!(
                        "{query:?}: a message that does not say why: {message}"
                    )))
                }
                Err(StoreError::InvalidQuery(_)) => Ok(()),
                Err(error) => Err(TestCaseError::fail(format!(
                    "{query:?} failed in the index: {error}"
                ))),
            }
        })
        .unwrap();
}
