//! PromQL: arbitrary query text parsed and evaluated, as an instant and as
//! a range query, against a small in-memory storage.
//!
//! Every query must parse or fail without overflowing the stack (the
//! dictionary fuzz/dict/promql.dict builds deep nesting and long chains),
//! and every evaluation must stop at its sample budget (kept small here so
//! that a huge subquery fails fast) or when cancelled: a watchdog cancels
//! an evaluation after a second, as the HTTP API does past a query's
//! timeout, so a runaway subquery must notice and stop, not time libFuzzer
//! out.
#![no_main]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use sightline_tsdb::promql::{Engine, MemoryStorage, stale_nan};
use sightline_tsdb::Labels;

const MINUTE_MS: i64 = 60_000;

fn storage() -> &'static MemoryStorage {
    static STORAGE: OnceLock<MemoryStorage> = OnceLock::new();
    STORAGE.get_or_init(|| {
        let mut storage = MemoryStorage::default();
        let series = [
            Labels::new([("__name__", "up"), ("job", "api"), ("instance", "a:1")]),
            Labels::new([("__name__", "up"), ("job", "db"), ("instance", "b:1")]),
            Labels::new([
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("code", "200"),
            ]),
            Labels::new([
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("code", "500"),
            ]),
            Labels::new([
                ("__name__", "latency_seconds_bucket"),
                ("job", "api"),
                ("le", "0.1"),
            ]),
            Labels::new([
                ("__name__", "latency_seconds_bucket"),
                ("job", "api"),
                ("le", "+Inf"),
            ]),
        ];
        for (index, labels) in series.iter().enumerate() {
            for step in 0..20i64 {
                let value = match step {
                    7 if index == 1 => stale_nan(),
                    12 if index == 2 => 0.0, // a counter reset
                    _ => (step * (index as i64 + 1)) as f64,
                };
                storage.append(labels, step * MINUTE_MS, value);
            }
        }
        storage
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = Engine::parse(text) else {
        return;
    };
    let engine = Engine {
        max_samples: 1_000_000,
        ..Engine::default()
    };
    let storage = storage();
    let cancelled = AtomicBool::new(false);
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let cancelled = &cancelled;
        scope.spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(Duration::from_secs(1)) {
                cancelled.store(true, Ordering::Relaxed);
            }
        });
        let _ = engine.instant_expr_cancellable(storage, &expr, 10 * MINUTE_MS, cancelled);
        let _ =
            engine.range_expr_cancellable(storage, &expr, 0, 20 * MINUTE_MS, MINUTE_MS, cancelled);
        drop(done);
    });
});
