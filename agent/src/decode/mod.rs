//! Decoders: turn raw lines of a log file into log entries.
//!
//! A runtime wraps what a container writes: the CRI format used by
//! containerd and CRI-O prefixes every line with a timestamp, the stream and
//! a partial/full tag (module `cri`). Lines that do not follow the wrapper are
//! taken as plain text, so a decoder never fails.

pub(crate) mod cri;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub(crate) use cri::CriDecoder;

/// The stream a container wrote a line to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl IoStream {
    /// The name used in the `log.iostream` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            IoStream::Stdout => "stdout",
            IoStream::Stderr => "stderr",
        }
    }
}

/// One complete log entry out of a decoder (partial lines already joined).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Time written by the runtime, if the line carried one.
    pub timestamp_unix_nano: Option<u64>,
    /// Stream written by the runtime, if the line carried one.
    pub stream: Option<IoStream>,
    /// What the application wrote, decoded lossily as UTF-8.
    pub message: String,
    /// File offset that is safe to store once this entry is acknowledged:
    /// the end of its last line, or the start of an earlier partial line
    /// that is still waiting for its end.
    pub commit_offset: u64,
}

/// Parses an RFC 3339 timestamp (`Z` or `+02:00` offsets, up to nanosecond
/// precision) into nanoseconds since the Unix epoch. Times before 1970 and
/// unparsable text give `None`.
pub(crate) fn parse_rfc3339_nanos(text: &str) -> Option<u64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    u64::try_from(time.unix_timestamp_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_variants() {
        let cases: &[(&str, Option<u64>)] = &[
            (
                "2026-11-21T05:48:48.123456789Z",
                Some(1_795_240_128_123_456_789),
            ),
            (
                "2026-11-21T07:48:48.123456789+02:00",
                Some(1_795_240_128_123_456_789),
            ),
            ("2026-11-21T05:48:48Z", Some(1_795_240_128_000_000_000)),
            ("2026-11-21T05:48:48.5Z", Some(1_795_240_128_500_000_000)),
            ("1969-12-31T23:59:59Z", None),
            ("yesterday", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_rfc3339_nanos(text), *expected, "{text}");
        }
    }
}
