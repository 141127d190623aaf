//! Fluentd forward-protocol connections (MessagePack messages in the
//! Message, Forward and (compressed) PackedForward modes), split and
//! decoded as the collector reads them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_collector::forward::fuzz_forward(data));
