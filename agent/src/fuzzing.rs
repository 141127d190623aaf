//! Entry points for the fuzz targets in `fuzz/` (not an API).
//!
//! Each function feeds arbitrary bytes through one stage that reads
//! untrusted input, the way the pipeline drives it, and panics only if the
//! stage does (or breaks an invariant checked here).

use std::sync::Arc;

use regex::Regex;

use crate::config::{Format, MultilineMode};
use crate::decode::{Decoder, Entry, IoStream};
use crate::multiline::{Multiline, MultilineSpec};
use crate::parse::{FieldNames, Parser, parse_entry_with};

/// Message size cap small enough that fuzzed inputs reach it.
const MAX_MESSAGE_BYTES: usize = 64;

/// Decodes every line of `data` as a container log file, with the first
/// byte choosing the format (auto, CRI, Docker, plain), then flushes.
pub fn fuzz_decode(data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let format = match selector % 4 {
        0 => Format::Auto,
        1 => Format::Cri,
        2 => Format::Docker,
        _ => Format::Plain,
    };
    let mut decoder = Decoder::new(format, MAX_MESSAGE_BYTES);
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for line in file.split(|byte| *byte == b'\n') {
        let end = offset + line.len() as u64 + 1;
        entries.extend(decoder.decode(line, offset, end));
        offset = end;
    }
    decoder.flush(&mut |entry| entries.push(entry));
    for entry in &entries {
        assert!(entry.start_offset <= entry.end_offset, "{entry:?}");
        assert!(entry.end_offset <= offset, "{entry:?}");
    }
    assert!(decoder.min_pending_start().is_none());
}

/// Joins the lines of `data` with the multiline stage, the first byte
/// choosing the mode and the stream of each line its first byte's low bits.
pub fn fuzz_multiline(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let mode = match selector % 6 {
        0 => MultilineMode::None,
        1 => MultilineMode::Java,
        2 => MultilineMode::Python,
        3 => MultilineMode::Go,
        4 => MultilineMode::Auto,
        _ => MultilineMode::Start,
    };
    let start = (mode == MultilineMode::Start)
        .then(|| Regex::new(r"^\d{4}-\d{2}-\d{2}").map(Arc::new).ok())
        .flatten();
    let max_bytes = 256;
    let mut multiline = Multiline::new(MultilineSpec {
        mode,
        start,
        max_bytes,
    });
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut lines = 0usize;
    for line in String::from_utf8_lossy(text).split('\n') {
        let stream = match line.len() % 3 {
            0 => Some(IoStream::Stdout),
            1 => Some(IoStream::Stderr),
            _ => None,
        };
        let end = offset + line.len() as u64 + 1;
        let entry = Entry {
            stream,
            message: line.to_owned(),
            start_offset: offset,
            end_offset: end,
            ..Entry::default()
        };
        multiline.push(entry, &mut |entry| out.push(entry));
        offset = end;
        lines += 1;
    }
    multiline.flush(&mut |entry| out.push(entry));
    let joined: usize = out
        .iter()
        .map(|entry| entry.message.matches('\n').count() + 1)
        .sum();
    assert_eq!(joined, lines, "every line comes out exactly once");
}

/// Parses `data` as one message with the JSON (auto) and logfmt parsers.
pub fn fuzz_parse(data: &[u8]) {
    let message = String::from_utf8_lossy(data).into_owned();
    let fields = FieldNames::default();
    for parser in [Parser::Auto, Parser::Logfmt] {
        let entry = Entry {
            message: message.clone(),
            stream: Some(IoStream::Stdout),
            ..Entry::default()
        };
        parse_entry_with(entry, 1, &parser, &fields);
    }
}
