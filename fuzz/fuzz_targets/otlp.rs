//! OTLP/HTTP export requests (JSON or protobuf, gzip or not), decoded and
//! converted as the collector ingests them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_collector::otlp_http::fuzz_otlp(data));
