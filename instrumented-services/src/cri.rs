//! Playing the container runtime: a service's stdout and stderr become a
//! CRI log file laid out like kubelet's, which is what the agent tails on a
//! real Kubernetes node.
//!
//! - Layout ([`PodIdentity::log_file`]):
//!   `<pods-root>/<namespace>_<pod-name>_<pod-uid>/<container>/<restart>.log`,
//!   for example `data/pods/shop_order-3f9a2_5c0e…/order/0.log`.
//! - Line format ([`encode_entry`]), as containerd writes it:
//!   `<RFC3339Nano UTC timestamp> <stdout|stderr> <F|P> <content>\n`. A line
//!   longer than [`MAX_ENTRY_CONTENT`] bytes is split into `P` (partial)
//!   entries followed by a final `F` (full) one ([`read_piece`]).
//!
//! [`capture_output`] wires it together: it reads both pipes of a child and
//! writes their lines, in arrival order, to the log file, one `write` per
//! entry so a tailer sees each line as soon as it is written.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The longest content of one CRI entry; longer lines are split (containerd
/// uses the same 16 KiB).
pub const MAX_ENTRY_CONTENT: usize = 16 * 1024;

/// How many captured entries may wait for the file writer before the pipe
/// readers (and so the child's writes) are held back.
const CAPTURE_QUEUE: usize = 1024;

/// The stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The stream's name in a CRI entry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Whether an entry ends its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A piece of a longer line; more entries of the same line follow.
    Partial,
    /// The (last piece of the) line.
    Full,
}

impl Tag {
    /// The tag's letter in a CRI entry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Partial => "P",
            Self::Full => "F",
        }
    }
}

/// Appends one CRI entry to `out`: `<timestamp> <stream> <tag> <content>\n`.
/// `content` must not contain a newline (see [`read_piece`]).
pub fn encode_entry(
    out: &mut Vec<u8>,
    timestamp: time::OffsetDateTime,
    stream: Stream,
    tag: Tag,
    content: &[u8],
) {
    let timestamp = crate::format_rfc3339_nanos(timestamp);
    out.reserve(timestamp.len() + content.len() + 12);
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Reads the next piece of a line into `piece` (cleared first): up to the
/// next newline, which is consumed but not kept ([`Tag::Full`]), or
/// `max_len` bytes of a longer line ([`Tag::Partial`]). An unterminated last
/// line is returned as [`Tag::Full`]; `None` at end of input.
///
/// Memory stays bounded by `max_len` however long the line.
pub async fn read_piece<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max_len: usize,
    piece: &mut Vec<u8>,
) -> std::io::Result<Option<Tag>> {
    piece.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!piece.is_empty()).then_some(Tag::Full));
        }
        let room = max_len - piece.len();
        let window = &available[..available.len().min(room)];
        if let Some(newline) = window.iter().position(|&byte| byte == b'\n') {
            piece.extend_from_slice(&window[..newline]);
            reader.consume(newline + 1);
            return Ok(Some(Tag::Full));
        }
        let taken = window.len();
        piece.extend_from_slice(window);
        reader.consume(taken);
        if piece.len() == max_len {
            // A line of exactly `max_len` bytes is still one full entry.
            let next = reader.fill_buf().await?;
            return Ok(match next.first() {
                Some(b'\n') => {
                    reader.consume(1);
                    Some(Tag::Full)
                }
                None => Some(Tag::Full),
                Some(_) => Some(Tag::Partial),
            });
        }
    }
}

/// A pod as kubelet names its log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Kubernetes namespace, `shop` for the demo.
    pub namespace: String,
    /// Pod name, `<workload>-<5 hex chars>`.
    pub name: String,
    /// Pod uid, UUID-like.
    pub uid: String,
}

impl PodIdentity {
    /// A new pod of `workload` in `namespace`, with a random name suffix and
    /// uid, as a ReplicaSet would create it.
    pub fn new_random(namespace: &str, workload: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: format!("{workload}-{}", crate::random_hex(5)),
            uid: crate::random_uuid_like(),
        }
    }

    /// `<pods_root>/<namespace>_<name>_<uid>`.
    pub fn directory(&self, pods_root: &Path) -> PathBuf {
        pods_root.join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
    }

    /// `<pods_root>/<namespace>_<name>_<uid>/<container>/<restart_count>.log`.
    pub fn log_file(&self, pods_root: &Path, container: &str, restart_count: u32) -> PathBuf {
        self.directory(pods_root)
            .join(container)
            .join(format!("{restart_count}.log"))
    }
}

/// One piece of output, stamped when it was read.
struct Captured {
    timestamp: time::OffsetDateTime,
    stream: Stream,
    tag: Tag,
    content: Vec<u8>,
}

/// Copies a child's stdout and stderr into the CRI log file `file` (opened
/// by the caller, in append mode). The returned task ends when both pipes
/// are closed (the child exited) and everything is written.
pub fn capture_output<O, E>(stdout: O, stderr: E, file: std::fs::File) -> JoinHandle<()>
where
    O: AsyncRead + Unpin + Send + 'static,
    E: AsyncRead + Unpin + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(CAPTURE_QUEUE);
    tokio::spawn(read_stream(stdout, Stream::Stdout, sender.clone()));
    tokio::spawn(read_stream(stderr, Stream::Stderr, sender));
    let writer = tokio::task::spawn_blocking(move || write_entries(receiver, file));
    tokio::spawn(async move {
        if let Err(error) = writer.await {
            tracing::error!(%error, "log capture writer failed");
        }
    })
}

async fn read_stream<R: AsyncRead + Unpin>(
    pipe: R,
    stream: Stream,
    sender: mpsc::Sender<Captured>,
) {
    let mut reader = BufReader::with_capacity(MAX_ENTRY_CONTENT, pipe);
    let mut piece = Vec::with_capacity(256);
    loop {
        match read_piece(&mut reader, MAX_ENTRY_CONTENT, &mut piece).await {
            Ok(Some(tag)) => {
                let captured = Captured {
                    timestamp: time::OffsetDateTime::now_utc(),
                    stream,
                    tag,
                    content: piece.clone(),
                };
                if sender.send(captured).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(stream = stream.as_str(), %error, "failed to read child output");
                return;
            }
        }
    }
}

/// Runs on a blocking thread: file writes stay off the async executor.
fn write_entries(mut receiver: mpsc::Receiver<Captured>, mut file: std::fs::File) {
    let mut entry = Vec::with_capacity(512);
    let mut failed = false;
    while let Some(captured) = receiver.blocking_recv() {
        entry.clear();
        encode_entry(
            &mut entry,
            captured.timestamp,
            captured.stream,
            captured.tag,
            &captured.content,
        );
        // Keep draining the pipes after a failure so the child never blocks
        // on a full pipe; report the failure once.
        if let Err(error) = file.write_all(&entry) {
            if !failed {
                tracing::error!(%error, "failed to write the container log file");
            }
            failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stream: Stream, tag: Tag, content: &[u8]) -> String {
        let timestamp = time::macros::datetime!(2026-11-21 05:48:48.123456789 UTC);
        let mut out = Vec::new();
        encode_entry(&mut out, timestamp, stream, tag, content);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn entry_format_matches_containerd() {
        assert_eq!(
            entry(Stream::Stdout, Tag::Full, br#"{"level":"INFO"}"#),
            "2026-11-21T05:48:48.123456789Z stdout F {\"level\":\"INFO\"}\n"
        );
        assert_eq!(
            entry(Stream::Stderr, Tag::Partial, b"abc"),
            "2026-11-21T05:48:48.123456789Z stderr P abc\n"
        );
        assert_eq!(
            entry(Stream::Stdout, Tag::Full, b""),
            "2026-11-21T05:48:48.123456789Z stdout F \n"
        );
    }

    async fn pieces(input: &[u8], max_len: usize) -> Vec<(Tag, String)> {
        let mut reader = BufReader::with_capacity(4, input);
        let mut piece = Vec::new();
        let mut out = Vec::new();
        while let Some(tag) = read_piece(&mut reader, max_len, &mut piece).await.unwrap() {
            out.push((tag, String::from_utf8(piece.clone()).unwrap()));
        }
        out
    }

    #[tokio::test]
    async fn lines_are_split_into_partial_pieces_and_a_full_one() {
        use Tag::{Full, Partial};
        type Case = (&'static [u8], &'static [(Tag, &'static str)]);
        let cases: &[Case] = &[
            (b"", &[]),
            (b"a\nbb\n", &[(Full, "a"), (Full, "bb")]),
            (b"\n\n", &[(Full, ""), (Full, "")]),
            (b"no newline", &[(Partial, "no newl"), (Full, "ine")]),
            (b"1234567\n", &[(Full, "1234567")]),
            (b"12345678\n", &[(Partial, "1234567"), (Full, "8")]),
            (
                b"123456789012345678\nx\n",
                &[
                    (Partial, "1234567"),
                    (Partial, "8901234"),
                    (Full, "5678"),
                    (Full, "x"),
                ],
            ),
            (
                b"12345671234567\n",
                &[(Partial, "1234567"), (Full, "1234567")],
            ),
        ];
        for (input, expected) in cases {
            let expected: Vec<(Tag, String)> = expected
                .iter()
                .map(|(tag, text)| (*tag, text.to_string()))
                .collect();
            assert_eq!(
                pieces(input, 7).await,
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn a_long_line_becomes_16k_partial_entries() {
        let line = "x".repeat(MAX_ENTRY_CONTENT * 2 + 10);
        let input = format!("{line}\nshort\n");
        let pieces = pieces(input.as_bytes(), MAX_ENTRY_CONTENT).await;
        let shape: Vec<(Tag, usize)> = pieces
            .iter()
            .map(|(tag, text)| (*tag, text.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (Tag::Partial, MAX_ENTRY_CONTENT),
                (Tag::Partial, MAX_ENTRY_CONTENT),
                (Tag::Full, 10),
                (Tag::Full, 5)
            ]
        );
    }

    #[test]
    fn pod_log_file_follows_the_kubelet_layout() {
        let pod = PodIdentity {
            namespace: "shop".into(),
            name: "order-3f9a2".into(),
            uid: "5c0e8a52-1d4b-4e6f-9a0b-7c8d9e0f1a2b".into(),
        };
        assert_eq!(
            pod.log_file(Path::new("data/pods"), "order", 0),
            Path::new(
                "data/pods/shop_order-3f9a2_5c0e8a52-1d4b-4e6f-9a0b-7c8d9e0f1a2b/order/0.log"
            )
        );
    }

    #[test]
    fn random_pod_names_have_a_five_hex_suffix() {
        let pod = PodIdentity::new_random("shop", "gateway");
        assert_eq!(pod.namespace, "shop");
        let suffix = pod.name.strip_prefix("gateway-").unwrap();
        assert_eq!(suffix.len(), 5);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(pod.uid.len(), 36);
    }

    #[tokio::test]
    async fn captured_output_lands_in_the_file_as_cri_entries() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("0.log");
        let file = std::fs::File::create(&path).unwrap();
        let stdout: &[u8] = b"{\"message\":\"hello\"}\nsecond\n";
        let stderr: &[u8] = b"oops\n";
        capture_output(stdout, stderr, file).await.unwrap();

        let written = std::fs::read_to_string(&path).unwrap();
        let mut entries: Vec<(String, String)> = written
            .lines()
            .map(|line| {
                let mut parts = line.splitn(4, ' ');
                let timestamp = parts.next().unwrap();
                assert!(
                    time::OffsetDateTime::parse(
                        timestamp,
                        &time::format_description::well_known::Rfc3339
                    )
                    .is_ok()
                );
                let stream = parts.next().unwrap().to_owned();
                assert_eq!(parts.next(), Some("F"));
                (stream, parts.next().unwrap().to_owned())
            })
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            [
                ("stderr".to_owned(), "oops".to_owned()),
                ("stdout".to_owned(), "second".to_owned()),
                ("stdout".to_owned(), "{\"message\":\"hello\"}".to_owned()),
            ]
        );
    }
}
