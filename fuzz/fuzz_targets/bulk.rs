//! Elasticsearch `_bulk` bodies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_collector::elastic::fuzz_bulk(data));
