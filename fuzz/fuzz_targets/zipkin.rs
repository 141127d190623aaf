//! Zipkin v2 JSON span lists, decoded and converted as the collector
//! ingests them (`POST /api/v2/spans`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_collector::zipkin::fuzz_zipkin(data));
