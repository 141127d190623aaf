//! The CRI log format written by containerd and CRI-O:
//!
//! ```text
//! 2026-11-21T05:48:48.123456789Z stdout F {"level":"INFO","msg":"ready"}
//! 2026-11-21T07:48:48.123456789+02:00 stderr P first half of a long line
//! ```
//!
//! A runtime splits long lines into `P` (partial) pieces ended by an `F`
//! (full) piece. Pieces are joined per stream, so interleaved stdout and
//! stderr partials never mix. Lines that are not CRI become plain entries.

use super::{Entry, IoStream, Joiner, Piece, parse_rfc3339_nanos};

/// Decodes CRI lines of one file, joining partial pieces.
#[derive(Debug)]
pub(crate) struct CriDecoder {
    pub(super) joiner: Joiner,
}

/// A line that follows the CRI format, borrowed from the input.
#[derive(Debug, PartialEq)]
struct CriLine<'a> {
    timestamp_unix_nano: u64,
    stream: IoStream,
    partial: bool,
    message: &'a [u8],
}

impl CriDecoder {
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        CriDecoder {
            joiner: Joiner::new(max_message_bytes),
        }
    }

    /// Decodes one line (without its newline) that spans file offsets
    /// `line_start..line_end`: `None` if it is not a CRI line, else the
    /// entry it completes, if any.
    pub(crate) fn try_decode(
        &mut self,
        line: &[u8],
        line_start: u64,
        line_end: u64,
    ) -> Option<Option<Entry>> {
        let cri = parse_cri_line(line)?;
        Some(self.joiner.push(Piece {
            stream: cri.stream,
            timestamp_unix_nano: Some(cri.timestamp_unix_nano),
            message: cri.message,
            partial: cri.partial,
            start: line_start,
            end: line_end,
            attributes: Vec::new(),
        }))
    }
}

/// Splits off the text up to the first space; without a space the whole
/// input is the head and the tail is empty.
fn split_at_space(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|byte| *byte == b' ') {
        Some(space) => (&bytes[..space], &bytes[space + 1..]),
        None => (bytes, &[]),
    }
}

fn parse_cri_line(line: &[u8]) -> Option<CriLine<'_>> {
    // Cheap rejection before any parsing: CRI lines start with a year.
    if !line.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let (timestamp, rest) = split_at_space(line);
    let (stream, rest) = split_at_space(rest);
    let (tags, message) = split_at_space(rest);

    let stream = match stream {
        b"stdout" => IoStream::Stdout,
        b"stderr" => IoStream::Stderr,
        _ => return None,
    };
    // Tags are `:`-separated; the first is P or F.
    let first_tag = tags.split(|byte| *byte == b':').next().unwrap_or_default();
    let partial = match first_tag {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let timestamp_unix_nano = parse_rfc3339_nanos(std::str::from_utf8(timestamp).ok()?)?;
    Some(CriLine {
        timestamp_unix_nano,
        stream,
        partial,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: u64 = 1_795_240_128_123_456_789;

    /// Feeds `lines` as consecutive lines of a file (each followed by a
    /// newline) and renders every entry as
    /// `timestamp|stream|message|commit_offset`, where the commit offset is
    /// what the reader would commit: never past a pending piece.
    fn decode_all(lines: &[&[u8]]) -> Vec<String> {
        decode_all_capped(lines, 1024)
    }

    fn decode_all_capped(lines: &[&[u8]], max: usize) -> Vec<String> {
        let mut decoder = crate::decode::Decoder::new(crate::config::Format::Auto, max);
        let mut offset = 0u64;
        let mut rendered = Vec::new();
        for line in lines {
            let start = offset;
            let end = start + line.len() as u64 + 1;
            offset = end;
            if let Some(entry) = decoder.decode(line, start, end) {
                let timestamp = entry
                    .timestamp_unix_nano
                    .map_or("-".to_owned(), |t| t.to_string());
                let stream = entry.stream.map_or("-", IoStream::as_str);
                let commit = decoder
                    .min_pending_start()
                    .map_or(entry.end_offset, |pending| pending.min(entry.end_offset));
                let truncated = if entry.truncated { "|truncated" } else { "" };
                rendered.push(format!(
                    "{timestamp}|{stream}|{}|{commit}{truncated}",
                    entry.message
                ));
            }
        }
        rendered
    }

    #[test]
    fn containerd_full_line() {
        let line = br#"2026-11-21T05:48:48.123456789Z stdout F {"level":"INFO","msg":"listening","port":8000}"#;
        assert_eq!(
            decode_all(&[line]),
            [format!(
                r#"{T1}|stdout|{{"level":"INFO","msg":"listening","port":8000}}|{}"#,
                line.len() + 1
            )]
        );
    }

    #[test]
    fn crio_offset_timestamp() {
        let line = b"2026-11-21T07:48:48.123456789+02:00 stderr F connection refused";
        assert_eq!(
            decode_all(&[line]),
            [format!("{T1}|stderr|connection refused|{}", line.len() + 1)]
        );
    }

    #[test]
    fn partial_pieces_are_joined_with_first_timestamp() {
        let lines: &[&[u8]] = &[
            b"2026-11-21T05:48:48.123456789Z stdout P hello ",
            b"2026-11-21T05:48:49.000000000Z stdout P big ",
            b"2026-11-21T05:48:50.000000000Z stdout F world",
        ];
        let total: usize = lines.iter().map(|line| line.len() + 1).sum();
        assert_eq!(
            decode_all(lines),
            [format!("{T1}|stdout|hello big world|{total}")]
        );
    }

    #[test]
    fn interleaved_partials_do_not_mix() {
        let lines: &[&[u8]] = &[
            b"2026-11-21T05:48:48.123456789Z stdout P out-1 ", // 0..47
            b"2026-11-21T05:48:48.123456789Z stderr P err-1 ", // 47..94
            b"2026-11-21T05:48:48.123456789Z stdout F out-2",  // 94..140
            b"2026-11-21T05:48:48.123456789Z stderr F err-2",  // 140..186
        ];
        assert_eq!(
            decode_all(lines),
            [
                // stderr partial still pending at 47: commit no further.
                format!("{T1}|stdout|out-1 out-2|47"),
                format!("{T1}|stderr|err-1 err-2|186"),
            ]
        );
    }

    #[test]
    fn full_line_during_other_stream_partial_commits_only_to_partial_start() {
        let lines: &[&[u8]] = &[
            b"2026-11-21T05:48:48.123456789Z stdout P waiting ",
            b"2026-11-21T05:48:48.123456789Z stderr F oops",
        ];
        assert_eq!(decode_all(lines), [format!("{T1}|stderr|oops|0")]);
    }

    #[test]
    fn empty_message_and_extra_tags() {
        let lines: &[&[u8]] = &[
            b"2026-11-21T05:48:48.123456789Z stdout F",
            b"2026-11-21T05:48:48.123456789Z stdout F:x ",
        ];
        assert_eq!(
            decode_all(lines),
            [format!("{T1}|stdout||40"), format!("{T1}|stdout||83")]
        );
    }

    #[test]
    fn non_utf8_bytes_are_decoded_lossily() {
        let line = b"2026-11-21T05:48:48.123456789Z stdout F caf\xe9 \xff\xfe ok";
        assert_eq!(
            decode_all(&[line]),
            [format!(
                "{T1}|stdout|caf\u{fffd} \u{fffd}\u{fffd} ok|{}",
                line.len() + 1
            )]
        );
    }

    #[test]
    fn multibyte_char_split_across_partials_survives() {
        // "é" is 0xc3 0xa9; the runtime may split it across pieces.
        let lines: &[&[u8]] = &[
            b"2026-11-21T05:48:48.123456789Z stdout P caf\xc3",
            b"2026-11-21T05:48:48.123456789Z stdout F \xa9",
        ];
        assert_eq!(decode_all(lines), [format!("{T1}|stdout|caf\u{e9}|87")]);
    }

    #[test]
    fn garbage_becomes_plain_entries() {
        let lines: &[&[u8]] = &[
            b"plain text line",
            b"",
            b"2026-11-21T05:48:48.123456789Z stdin F nope",
            b"2026-11-21T05:48:48.123456789Z stdout X nope",
            b"2026-99-21T05:48:48Z stdout F bad date",
            b"12345",
            b"\xff\xfe\xfd",
        ];
        assert_eq!(
            decode_all(lines),
            [
                "-|-|plain text line|16",
                "-|-||17",
                "-|-|2026-11-21T05:48:48.123456789Z stdin F nope|61",
                "-|-|2026-11-21T05:48:48.123456789Z stdout X nope|106",
                "-|-|2026-99-21T05:48:48Z stdout F bad date|145",
                "-|-|12345|151",
                "-|-|\u{fffd}\u{fffd}\u{fffd}|155",
            ]
        );
    }

    #[test]
    fn size_cap_applies_after_joining_and_flags() {
        let lines: &[&[u8]] = &[
            b"2026-11-21T05:48:48.123456789Z stdout P 12345",
            b"2026-11-21T05:48:48.123456789Z stdout P 6789abc",
            b"2026-11-21T05:48:48.123456789Z stdout F def",
            b"2026-11-21T05:48:48.123456789Z stdout F 0123456789",
        ];
        assert_eq!(
            decode_all_capped(lines, 8),
            [
                format!("{T1}|stdout|12345678|138|truncated"),
                format!("{T1}|stdout|01234567|189|truncated"),
            ]
        );
    }

    #[test]
    fn line_longer_than_16k_in_pieces() {
        // containerd cuts at 16 KiB: P pieces then F.
        let piece = "x".repeat(16 * 1024);
        let first = format!("2026-11-21T05:48:48.123456789Z stdout P {piece}");
        let last = "2026-11-21T05:48:48.123456789Z stdout F tail";
        let rendered = decode_all_capped(
            &[first.as_bytes(), first.as_bytes(), last.as_bytes()],
            1 << 20,
        );
        assert_eq!(rendered.len(), 1);
        assert!(rendered[0].contains(&format!("|{piece}{piece}tail|")));
    }
}
