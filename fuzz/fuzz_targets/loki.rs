//! Loki push bodies (JSON, protobuf, snappy-compressed protobuf) and
//! label sets, decoded as the collector ingests them
//! (`POST /loki/api/v1/push`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_collector::loki::fuzz_loki(data));
