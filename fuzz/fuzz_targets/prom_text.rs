//! The Prometheus text and OpenMetrics exposition parser; the first byte
//! chooses the format and whether a small sample limit applies.
#![no_main]

use sightline_metrics::scrape::parse::{Format, decode_utf8, parse_limited};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = if selector & 1 == 0 {
        Format::Text
    } else {
        Format::OpenMetrics
    };
    if let Ok(text) = decode_utf8(body.to_vec()) {
        let sample_limit = if selector & 2 == 0 { usize::MAX } else { 5 };
        let _ = parse_limited(&text, format, sample_limit);
    }
});
