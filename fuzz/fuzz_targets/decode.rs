//! CRI and Docker json-file decoding (with partial-line joining) of a log file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_agent::fuzzing::fuzz_decode(data));
