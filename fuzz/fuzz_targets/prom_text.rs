//! The Prometheus text and OpenMetrics exposition parser; the first byte
//! chooses the format and whether a small sample limit applies. A body that
//! parses is parsed again with every series known (the scrape cache's
//! path): the same series, values and timestamps must come back.
#![no_main]

use sightline_metrics::scrape::parse::{Format, decode_utf8, parse_known, parse_limited};

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
        let Ok(first) = parse_limited(&text, format, sample_limit) else {
            return;
        };
        let series: std::collections::HashSet<&str> =
            first.samples.iter().map(|sample| sample.series).collect();
        let again = parse_known(&text, format, sample_limit, &|text| series.contains(text))
            .expect("a body that parsed parses again with its series known");
        assert_eq!(again.samples.len(), first.samples.len());
        for (cached, parsed) in again.samples.iter().zip(&first.samples) {
            assert_eq!(cached.series, parsed.series);
            assert_eq!(cached.name(), parsed.name());
            assert_eq!(cached.timestamp_ms, parsed.timestamp_ms);
            assert_eq!(cached.value.to_bits(), parsed.value.to_bits());
        }
    }
});
