//! Docker's json-file format:
//!
//! ```text
//! {"log":"GET /healthz 200\n","stream":"stdout","time":"2026-11-21T05:48:48.123456789Z"}
//! {"log":"first 16 KiB of a long line","stream":"stderr","time":"…","attrs":{"tag":"web"}}
//! ```
//!
//! Docker cuts lines longer than 16 KiB into pieces; only the last piece
//! ends with `\n`. Pieces are joined per stream like CRI partials. `attrs`
//! (set by `--log-opt labels=…`) become record attributes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Entry, IoStream, Joiner, Piece, parse_rfc3339_nanos};

/// Decodes json-file lines of one file, joining pieces.
#[derive(Debug)]
pub(crate) struct DockerDecoder {
    pub(super) joiner: Joiner,
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(default)]
    attrs: Option<BTreeMap<String, String>>,
}

impl DockerDecoder {
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        DockerDecoder {
            joiner: Joiner::new(max_message_bytes),
        }
    }

    /// `None` if the line is not a json-file object, else the entry it
    /// completes, if any.
    pub(crate) fn try_decode(
        &mut self,
        line: &[u8],
        line_start: u64,
        line_end: u64,
    ) -> Option<Option<Entry>> {
        let parsed: DockerLine<'_> = serde_json::from_slice(line).ok()?;
        let stream = match parsed.stream.as_deref() {
            Some("stderr") => IoStream::Stderr,
            _ => IoStream::Stdout,
        };
        let (message, partial) = match parsed.log.strip_suffix('\n') {
            Some(whole) => (whole.strip_suffix('\r').unwrap_or(whole), false),
            None => (parsed.log.as_ref(), true),
        };
        let attributes = parsed
            .attrs
            .map(|attrs| attrs.into_iter().collect())
            .unwrap_or_default();
        Some(self.joiner.push(Piece {
            stream,
            timestamp_unix_nano: parsed.time.as_deref().and_then(parse_rfc3339_nanos),
            message: message.as_bytes(),
            partial,
            start: line_start,
            end: line_end,
            attributes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Format;
    use crate::decode::{Decoder, Entry};

    const T1: u64 = 1_795_240_128_123_456_789;

    fn decode(lines: &[&str]) -> (Vec<Entry>, Format) {
        let mut decoder = Decoder::new(Format::Auto, 1 << 20);
        let mut offset = 0;
        let mut entries = Vec::new();
        for line in lines {
            let end = offset + line.len() as u64 + 1;
            entries.extend(decoder.decode(line.as_bytes(), offset, end));
            offset = end;
        }
        (entries, decoder.format())
    }

    #[test]
    fn whole_lines_pieces_and_attrs() {
        let (entries, format) = decode(&[
            r#"{"log":"{\"level\":\"info\",\"msg\":\"ready\"}\n","stream":"stdout","time":"2026-11-21T05:48:48.123456789Z"}"#,
            r#"{"log":"first half ","stream":"stderr","time":"2026-11-21T05:48:48.123456789Z"}"#,
            r#"{"log":"out\r\n","stream":"stdout","time":"2026-11-21T05:48:49Z","attrs":{"tag":"web"}}"#,
            r#"{"log":"second half\n","stream":"stderr","time":"2026-11-21T05:48:50Z"}"#,
            "not json at all",
        ]);
        assert_eq!(format, Format::Docker);
        let rendered: Vec<String> = entries
            .iter()
            .map(|entry| {
                format!(
                    "{:?}|{}|{}|{}..{}|{:?}",
                    entry.timestamp_unix_nano,
                    entry.stream.map_or("-", |stream| stream.as_str()),
                    entry.message,
                    entry.start_offset,
                    entry.end_offset,
                    entry.attributes
                )
            })
            .collect();
        assert_eq!(
            rendered,
            [
                format!(r#"Some({T1})|stdout|{{"level":"info","msg":"ready"}}|0..109|[]"#),
                r#"Some(1795240129000000000)|stdout|out|189..277|[("tag", "web")]"#.to_owned(),
                format!("Some({T1})|stderr|first half second half|109..349|[]"),
                "None|-|not json at all|349..365|[]".to_owned(),
            ]
        );
    }

    #[test]
    fn cri_and_plain_are_detected_too() {
        let (_, format) = decode(&["hello", "2026-11-21T05:48:48Z stdout F x"]);
        assert_eq!(format, Format::Cri);
        let (_, format) = decode(&["{\"not\":\"docker\"}", "plain"]);
        assert_eq!(format, Format::Auto);
    }
}
