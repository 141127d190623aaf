//! The agent's JSON and logfmt message parsers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_agent::fuzzing::fuzz_parse(data));
