//! Multiline: joins continuation lines (stack traces, tracebacks, panics)
//! into the record they continue, per stream.
//!
//! A record is held until a line arrives that does not continue it, or
//! until the reader's flush timeout; it is cut when it grows past the size
//! limit. Presets recognise Java stack traces, Python tracebacks and Go
//! panics; `start` mode takes a regex that matches the first line of every
//! record.

use std::sync::Arc;

use regex::Regex;

use crate::config::MultilineMode;
use crate::decode::Entry;

/// What a file's multiline stage does.
#[derive(Debug, Clone)]
pub(crate) struct MultilineSpec {
    pub(crate) mode: MultilineMode,
    pub(crate) start: Option<Arc<Regex>>,
    pub(crate) max_bytes: usize,
}

/// Per-file multiline state: at most one pending record per stream.
#[derive(Debug)]
pub(crate) struct Multiline {
    spec: MultilineSpec,
    /// stdout, stderr, no stream (plain files).
    pending: [Option<Group>; 3],
}

#[derive(Debug)]
struct Group {
    entry: Entry,
    kind: GroupKind,
    /// The last line joined was indented.
    last_indented: bool,
    /// The last line joined announced a chained traceback.
    expect_traceback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupKind {
    Other,
    PythonTraceback,
    GoPanic,
}

impl Multiline {
    pub(crate) fn new(spec: MultilineSpec) -> Multiline {
        Multiline {
            spec,
            pending: [None, None, None],
        }
    }

    pub(crate) fn set_spec(&mut self, spec: MultilineSpec) {
        self.spec = spec;
    }

    /// Takes the next entry; emits through `out` what is complete.
    pub(crate) fn push(&mut self, entry: Entry, out: &mut impl FnMut(Entry)) {
        if self.spec.mode == MultilineMode::None {
            out(entry);
            return;
        }
        let slot_index = entry.stream.map_or(2, |stream| match stream {
            crate::decode::IoStream::Stdout => 0,
            crate::decode::IoStream::Stderr => 1,
        });
        let continues = match &self.pending[slot_index] {
            Some(group) => {
                self.is_continuation(group, &entry.message)
                    && group.entry.message.len() + 1 + entry.message.len() <= self.spec.max_bytes
            }
            None => false,
        };
        if continues {
            let Some(group) = self.pending[slot_index].as_mut() else {
                return;
            };
            group.last_indented = starts_indented(&entry.message);
            group.expect_traceback = is_python_chain_line(&entry.message)
                || (entry.message.is_empty() && group.expect_traceback);
            group.entry.message.push('\n');
            group.entry.message.push_str(&entry.message);
            group.entry.end_offset = entry.end_offset;
            group.entry.truncated |= entry.truncated;
            return;
        }
        if let Some(group) = self.pending[slot_index].take() {
            out(group.entry);
        }
        let kind = if entry
            .message
            .starts_with("Traceback (most recent call last):")
        {
            GroupKind::PythonTraceback
        } else if is_go_panic_start(&entry.message) {
            GroupKind::GoPanic
        } else {
            GroupKind::Other
        };
        self.pending[slot_index] = Some(Group {
            last_indented: starts_indented(&entry.message),
            expect_traceback: false,
            entry,
            kind,
        });
    }

    /// Emits every pending record (timeout, end of file, shutdown).
    pub(crate) fn flush(&mut self, out: &mut impl FnMut(Entry)) {
        let mut groups: Vec<Group> = self.pending.iter_mut().filter_map(Option::take).collect();
        groups.sort_by_key(|group| group.entry.start_offset);
        for group in groups {
            out(group.entry);
        }
    }

    /// Whether a record is held.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.iter().any(Option::is_some)
    }

    /// Start of the oldest held record, if any.
    pub(crate) fn min_pending_start(&self) -> Option<u64> {
        self.pending
            .iter()
            .flatten()
            .map(|group| group.entry.start_offset)
            .min()
    }

    pub(crate) fn reset(&mut self) {
        self.pending = [None, None, None];
    }

    fn is_continuation(&self, group: &Group, line: &str) -> bool {
        match self.spec.mode {
            MultilineMode::None => false,
            MultilineMode::Java => java_continues(line),
            MultilineMode::Python => python_continues(group, line),
            MultilineMode::Go => go_continues(group, line),
            MultilineMode::Auto => {
                java_continues(line) || python_continues(group, line) || go_continues(group, line)
            }
            MultilineMode::Start => match &self.spec.start {
                Some(start) => !start.is_match(line),
                None => false,
            },
        }
    }
}

fn starts_indented(line: &str) -> bool {
    line.starts_with([' ', '\t'])
}

/// `\tat com.x.Y.z(Y.java:12)`, `\t... 12 more`, `Caused by: …`,
/// `Suppressed: …`, and any other indented line.
fn java_continues(line: &str) -> bool {
    (starts_indented(line) && !line.trim().is_empty())
        || line.starts_with("Caused by:")
        || line.trim_start().starts_with("Suppressed:")
}

fn is_python_chain_line(line: &str) -> bool {
    line.starts_with("During handling of the above exception")
        || line.starts_with("The above exception was the direct cause")
}

/// Inside a traceback: indented frames, the final `SomeError: message`
/// line after a frame, blank lines and the chaining sentences between
/// chained tracebacks.
fn python_continues(group: &Group, line: &str) -> bool {
    if group.kind != GroupKind::PythonTraceback {
        return false;
    }
    if starts_indented(line) || line.is_empty() || is_python_chain_line(line) {
        return true;
    }
    if group.expect_traceback && line.starts_with("Traceback (most recent call last):") {
        return true;
    }
    group.last_indented && is_exception_line(line)
}

/// `ValueError: bad`, `mod.sub.CustomError`, `KeyboardInterrupt`.
fn is_exception_line(line: &str) -> bool {
    let name = line.split(':').next().unwrap_or_default();
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

fn is_go_panic_start(line: &str) -> bool {
    line.starts_with("panic: ") || line.starts_with("fatal error: ")
}

/// Inside a Go panic: blank lines, `goroutine N [running]:`, indented
/// file lines, function lines `pkg.fn(...)`, `created by …`, `exit status`.
fn go_continues(group: &Group, line: &str) -> bool {
    if group.kind != GroupKind::GoPanic {
        return false;
    }
    line.is_empty()
        || starts_indented(line)
        || line.starts_with("goroutine ")
        || line.starts_with("created by ")
        || line.starts_with("exit status ")
        || line.starts_with("[signal ")
        || line.starts_with("panic: ")
        || (line.ends_with(')') && line.contains('(') && !line.contains(' '))
        || (line.contains("(...)") && !line.starts_with(' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::IoStream;

    fn run(mode: MultilineMode, start: Option<&str>, lines: &[&str]) -> Vec<String> {
        let mut multiline = Multiline::new(MultilineSpec {
            mode,
            start: start.map(|pattern| Arc::new(Regex::new(pattern).unwrap())),
            max_bytes: 10_000,
        });
        let mut out = Vec::new();
        let mut offset = 0;
        for line in lines {
            let end = offset + line.len() as u64 + 1;
            let entry = Entry {
                stream: Some(IoStream::Stdout),
                message: (*line).to_owned(),
                start_offset: offset,
                end_offset: end,
                ..Entry::default()
            };
            offset = end;
            multiline.push(entry, &mut |entry| out.push(entry.message));
        }
        multiline.flush(&mut |entry| out.push(entry.message));
        out
    }

    #[test]
    fn java_stack_trace() {
        let lines = [
            "2026-11-21 05:48:48 ERROR payment failed",
            "java.lang.IllegalStateException: card declined",
            "\tat com.shop.Payment.charge(Payment.java:42)",
            "\tat com.shop.Api.handle(Api.java:7)",
            "Caused by: java.io.IOException: timeout",
            "\t... 12 more",
            "2026-11-21 05:48:49 INFO next",
        ];
        assert_eq!(
            run(MultilineMode::Java, None, &lines),
            [
                "2026-11-21 05:48:48 ERROR payment failed".to_owned(),
                lines[1..6].join("\n"),
                "2026-11-21 05:48:49 INFO next".to_owned(),
            ]
        );
    }

    #[test]
    fn python_traceback_with_chain() {
        let lines = [
            "Traceback (most recent call last):",
            "  File \"app.py\", line 3, in <module>",
            "    main()",
            "KeyError: 'x'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"app.py\", line 5, in <module>",
            "ValueError: bad",
            "INFO next request",
        ];
        assert_eq!(
            run(MultilineMode::Python, None, &lines),
            [lines[..10].join("\n"), "INFO next request".to_owned()]
        );
    }

    #[test]
    fn go_panic() {
        let lines = [
            "panic: runtime error: index out of range [3] with length 3",
            "",
            "goroutine 1 [running]:",
            "main.main()",
            "\t/app/main.go:12 +0x1d",
            "exit status 2",
            "{\"level\":\"info\",\"msg\":\"restarted\"}",
        ];
        assert_eq!(
            run(MultilineMode::Auto, None, &lines),
            [lines[..6].join("\n"), lines[6].to_owned()]
        );
    }

    #[test]
    fn start_pattern() {
        let lines = ["2026-11-21 a", "  more", "no date", "2026-11-21 b"];
        assert_eq!(
            run(MultilineMode::Start, Some(r"^\d{4}-\d{2}-\d{2} "), &lines),
            ["2026-11-21 a\n  more\nno date", "2026-11-21 b"]
        );
    }

    #[test]
    fn off_passes_through_and_streams_do_not_mix() {
        assert_eq!(run(MultilineMode::None, None, &["a", "\tb"]), ["a", "\tb"]);
        let mut multiline = Multiline::new(MultilineSpec {
            mode: MultilineMode::Java,
            start: None,
            max_bytes: 100,
        });
        let mut out = Vec::new();
        for (stream, message) in [
            (IoStream::Stdout, "out head"),
            (IoStream::Stderr, "err head"),
            (IoStream::Stdout, "\tat out"),
            (IoStream::Stderr, "\tat err"),
        ] {
            let entry = Entry {
                stream: Some(stream),
                message: message.to_owned(),
                ..Entry::default()
            };
            multiline.push(entry, &mut |entry: Entry| out.push(entry.message));
        }
        assert!(multiline.has_pending());
        multiline.flush(&mut |entry: Entry| out.push(entry.message));
        out.sort();
        assert_eq!(out, ["err head\n\tat err", "out head\n\tat out"]);
    }
}
