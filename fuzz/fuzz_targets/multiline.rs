//! The multiline joiner over arbitrary lines, in every mode.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_agent::fuzzing::fuzz_multiline(data));
