//! Decoders: turn raw lines of a log file into log entries.
//!
//! A runtime wraps what a container writes: the CRI format used by
//! containerd and CRI-O prefixes every line with a timestamp, the stream and
//! a partial/full tag (module `cri`); Docker's json-file driver wraps every
//! line in a JSON object (module `docker`). The format is detected per file
//! on the first line that follows a wrapper. Lines that do not follow the
//! wrapper are taken as plain text, so a decoder never fails.

pub(crate) mod cri;
pub(crate) mod docker;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Format;
pub(crate) use cri::CriDecoder;
pub(crate) use docker::DockerDecoder;

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

    fn index(self) -> usize {
        match self {
            IoStream::Stdout => 0,
            IoStream::Stderr => 1,
        }
    }
}

/// One complete log entry out of a decoder (partial lines already joined).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Entry {
    /// Time written by the runtime, if the line carried one.
    pub timestamp_unix_nano: Option<u64>,
    /// Stream written by the runtime, if the line carried one.
    pub stream: Option<IoStream>,
    /// What the application wrote, decoded lossily as UTF-8.
    pub message: String,
    /// File offset of the entry's first line.
    pub start_offset: u64,
    /// File offset just past the entry's last line.
    pub end_offset: u64,
    /// The message was cut at the size limit.
    pub truncated: bool,
    /// Attributes the runtime wrote with the line (Docker `attrs`).
    pub attributes: Vec<(String, String)>,
}

/// The decoder of one file: a fixed format or detection on the first line
/// that follows a known wrapper.
#[derive(Debug)]
pub(crate) struct Decoder {
    format: Format,
    cri: CriDecoder,
    docker: DockerDecoder,
}

impl Decoder {
    pub(crate) fn new(format: Format, max_message_bytes: usize) -> Decoder {
        Decoder {
            format,
            cri: CriDecoder::new(max_message_bytes),
            docker: DockerDecoder::new(max_message_bytes),
        }
    }

    /// The format in use (`Auto` until a line was recognised).
    #[cfg(test)]
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Decodes one line (without its newline) that spans file offsets
    /// `start..end`. Returns an entry when one is complete.
    pub(crate) fn decode(&mut self, line: &[u8], start: u64, end: u64) -> Option<Entry> {
        let decoded = match self.format {
            Format::Cri => self.cri.try_decode(line, start, end),
            Format::Docker => self.docker.try_decode(line, start, end),
            Format::Plain => None,
            Format::Auto => {
                let docker = if line.first() == Some(&b'{') {
                    self.docker.try_decode(line, start, end)
                } else {
                    None
                };
                match docker {
                    Some(decoded) => {
                        self.format = Format::Docker;
                        Some(decoded)
                    }
                    None => {
                        let cri = self.cri.try_decode(line, start, end);
                        if cri.is_some() {
                            self.format = Format::Cri;
                        }
                        cri
                    }
                }
            }
        };
        match decoded {
            Some(entry) => entry,
            None => Some(plain_entry(line, start, end)),
        }
    }

    /// Emits pending partial pieces as they are (timeout or end of file).
    pub(crate) fn flush(&mut self, out: &mut impl FnMut(Entry)) {
        self.cri.joiner.flush(out);
        self.docker.joiner.flush(out);
    }

    /// Start of the oldest pending piece, if any.
    pub(crate) fn min_pending_start(&self) -> Option<u64> {
        [
            self.cri.joiner.min_pending_start(),
            self.docker.joiner.min_pending_start(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Forgets pending pieces (after a truncation).
    pub(crate) fn reset(&mut self) {
        self.cri.joiner.reset();
        self.docker.joiner.reset();
    }
}

/// `bytes` as a String; invalid UTF-8 is replaced. The valid case (all
/// but never) takes the fast validation path.
fn to_string_lossy(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn plain_entry(line: &[u8], start: u64, end: u64) -> Entry {
    Entry {
        message: to_string_lossy(line),
        start_offset: start,
        end_offset: end,
        ..Entry::default()
    }
}

/// Joins partial pieces per stream, so stdout and stderr never mix; the
/// size cap applies to the joined message, which is then flagged.
#[derive(Debug)]
pub(crate) struct Joiner {
    pending: [Option<Pending>; 2],
    max_message_bytes: usize,
}

#[derive(Debug)]
struct Pending {
    timestamp_unix_nano: Option<u64>,
    message: Vec<u8>,
    start_offset: u64,
    /// End of the last piece joined so far.
    last_end: u64,
    truncated: bool,
}

/// One piece of a message as a runtime wrote it.
pub(crate) struct Piece<'a> {
    pub(crate) stream: IoStream,
    pub(crate) timestamp_unix_nano: Option<u64>,
    pub(crate) message: &'a [u8],
    pub(crate) partial: bool,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) attributes: Vec<(String, String)>,
}

impl Joiner {
    pub(crate) fn new(max_message_bytes: usize) -> Joiner {
        Joiner {
            pending: [None, None],
            max_message_bytes,
        }
    }

    pub(crate) fn push(&mut self, piece: Piece<'_>) -> Option<Entry> {
        let slot = &mut self.pending[piece.stream.index()];
        if slot.is_none() && !piece.partial {
            // The common case: a whole line, no copy beyond the String.
            let (message, truncated) = cap(piece.message, self.max_message_bytes);
            return Some(Entry {
                timestamp_unix_nano: piece.timestamp_unix_nano,
                stream: Some(piece.stream),
                message: to_string_lossy(message),
                start_offset: piece.start,
                end_offset: piece.end,
                truncated,
                attributes: piece.attributes,
            });
        }
        let pending = slot.get_or_insert_with(|| Pending {
            timestamp_unix_nano: piece.timestamp_unix_nano,
            message: Vec::new(),
            start_offset: piece.start,
            last_end: piece.end,
            truncated: false,
        });
        pending.last_end = piece.end;
        let room = self.max_message_bytes.saturating_sub(pending.message.len());
        let (kept, truncated) = cap(piece.message, room);
        pending.message.extend_from_slice(kept);
        pending.truncated |= truncated;
        if piece.partial {
            return None;
        }
        let pending = slot.take()?;
        Some(Entry {
            timestamp_unix_nano: pending.timestamp_unix_nano,
            stream: Some(piece.stream),
            message: into_string_lossy(pending.message),
            start_offset: pending.start_offset,
            end_offset: piece.end,
            truncated: pending.truncated,
            attributes: piece.attributes,
        })
    }

    fn flush(&mut self, out: &mut impl FnMut(Entry)) {
        let mut flushed: Vec<(IoStream, Pending)> = Vec::new();
        for (index, stream) in [IoStream::Stdout, IoStream::Stderr].into_iter().enumerate() {
            if let Some(pending) = self.pending[index].take() {
                flushed.push((stream, pending));
            }
        }
        flushed.sort_by_key(|(_, pending)| pending.start_offset);
        for (stream, pending) in flushed {
            let end = pending.last_end;
            out(Entry {
                timestamp_unix_nano: pending.timestamp_unix_nano,
                stream: Some(stream),
                message: into_string_lossy(pending.message),
                start_offset: pending.start_offset,
                end_offset: end,
                truncated: pending.truncated,
                attributes: Vec::new(),
            });
        }
    }

    fn min_pending_start(&self) -> Option<u64> {
        self.pending
            .iter()
            .flatten()
            .map(|pending| pending.start_offset)
            .min()
    }

    fn reset(&mut self) {
        self.pending = [None, None];
    }
}

fn cap(bytes: &[u8], max: usize) -> (&[u8], bool) {
    if bytes.len() > max {
        (&bytes[..max], true)
    } else {
        (bytes, false)
    }
}

fn into_string_lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    }
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
