//! Log severity: the one table that turns a level as programs write it into
//! an OTLP `SeverityNumber`, and a number back into its `SeverityText`.
//!
//! The OTLP log data model divides `SeverityNumber` into six ranges of four:
//! TRACE 1-4, DEBUG 5-8, INFO 9-12, WARN 13-16, ERROR 17-20, FATAL 21-24; a
//! higher number within a range is more severe. Level words map as the
//! specification's appendix B ("`SeverityNumber` example mappings") does:
//!
//! | source words                                   | number | text  |
//! |------------------------------------------------|--------|-------|
//! | `trace`, `trc`, `finest`                       | 1      | TRACE |
//! | `debug`, `dbg`, `finer`, `verbose`; syslog 7   | 5      | DEBUG |
//! | `fine`                                         | 6      | DEBUG |
//! | `info`, `inf`, `information`, `informational`; syslog 6 | 9 | INFO |
//! | `notice`; syslog 5                             | 10     | INFO  |
//! | `warn`, `wrn`, `warning`; syslog 4             | 13     | WARN  |
//! | `error`, `err`, `eror`; syslog 3               | 17     | ERROR |
//! | `crit`, `dpanic`; syslog 2                     | 18     | ERROR |
//! | `alert`; syslog 1                              | 19     | ERROR |
//! | `fatal`, `ftl`, `critical`, `panic`, `emerg`, `emergency`; syslog 0 | 21 | FATAL |
//!
//! Syslog's Notice is INFO2 (10), Critical ERROR2 (18), Alert ERROR3 (19) and
//! Emergency FATAL (21), as the appendix says; java.util.logging's FINE is
//! DEBUG2 (6) and zap's DPanic ERROR2 (18). Two words are judgement calls
//! the appendix leaves open: `critical` is Python's, .NET's and ETW's
//! most severe level (FATAL 21 in the appendix), while `crit` is syslog's
//! spelling of Critical (ERROR2 18); and `panic` is the most severe level of
//! logrus and zerolog, so it reads as FATAL (21) rather than zap's ERROR3.
//!
//! Numeric levels: syslog codes 0-7 (RFC 5424) through [`Severity::from_syslog`]
//! and pino/bunyan levels 10-60 through [`Severity::from_pino`].
//!
//! `SeverityText` is the range's short name (INFO for 10, ERROR for 18), not
//! the specification's display names with a digit (INFO2), so a search for
//! `severity:ERROR` finds every error.

/// An OTLP `SeverityNumber` between 1 (TRACE) and 24 (FATAL4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Severity(u8);

/// Level words, lowercased, and their severity number.
const WORDS: &[(&str, u8)] = &[
    ("trace", 1),
    ("trc", 1),
    ("finest", 1),
    ("debug", 5),
    ("dbg", 5),
    ("finer", 5),
    ("verbose", 5),
    ("fine", 6),
    ("info", 9),
    ("inf", 9),
    ("information", 9),
    ("informational", 9),
    ("notice", 10),
    ("warn", 13),
    ("wrn", 13),
    ("warning", 13),
    ("error", 17),
    ("err", 17),
    ("eror", 17),
    ("crit", 18),
    ("dpanic", 18),
    ("alert", 19),
    ("fatal", 21),
    ("ftl", 21),
    ("critical", 21),
    ("panic", 21),
    ("emerg", 21),
    ("emergency", 21),
];

/// Syslog severity codes 0 (Emergency) to 7 (Debug), by code.
const SYSLOG: [u8; 8] = [21, 19, 18, 17, 13, 10, 9, 5];

impl Severity {
    /// TRACE (1).
    pub const TRACE: Severity = Severity(1);
    /// DEBUG (5).
    pub const DEBUG: Severity = Severity(5);
    /// INFO (9).
    pub const INFO: Severity = Severity(9);
    /// WARN (13).
    pub const WARN: Severity = Severity(13);
    /// ERROR (17).
    pub const ERROR: Severity = Severity(17);
    /// FATAL (21).
    pub const FATAL: Severity = Severity(21);

    /// The OTLP `severity_number`.
    pub fn number(self) -> i32 {
        i32::from(self.0)
    }

    /// The OTLP `severity_text`: the short name of the number's range.
    pub fn text(self) -> &'static str {
        match self.0 {
            1..=4 => "TRACE",
            5..=8 => "DEBUG",
            9..=12 => "INFO",
            13..=16 => "WARN",
            17..=20 => "ERROR",
            _ => "FATAL",
        }
    }

    /// The severity of an OTLP `severity_number`; `None` for 0 (unspecified)
    /// and for numbers outside 1-24.
    pub fn from_number(number: i32) -> Option<Severity> {
        u8::try_from(number)
            .ok()
            .filter(|number| (1..=24).contains(number))
            .map(Severity)
    }

    /// Recognises the level words of the module's table, case-insensitively
    /// and ignoring surrounding whitespace.
    pub fn from_name(name: &str) -> Option<Severity> {
        let name = name.trim();
        WORDS
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(name))
            .map(|&(_, number)| Severity(number))
    }

    /// Syslog severity codes, 0 (Emergency) to 7 (Debug).
    pub fn from_syslog(code: i64) -> Option<Severity> {
        let index = usize::try_from(code).ok()?;
        SYSLOG.get(index).map(|&number| Severity(number))
    }

    /// Numeric levels as written by pino and bunyan (10 trace to 60 fatal).
    pub fn from_pino(level: i64) -> Option<Severity> {
        let severity = match level {
            10 => Severity::TRACE,
            20 => Severity::DEBUG,
            30 => Severity::INFO,
            40 => Severity::WARN,
            50 => Severity::ERROR,
            60 => Severity::FATAL,
            _ => return None,
        };
        Some(severity)
    }
}

#[cfg(test)]
mod tests {
    use super::Severity;

    fn show(severity: Option<Severity>) -> Option<(&'static str, i32)> {
        severity.map(|severity| (severity.text(), severity.number()))
    }

    #[test]
    fn level_words_follow_the_otlp_appendix() {
        let cases: &[(&str, Option<(&str, i32)>)] = &[
            ("trace", Some(("TRACE", 1))),
            ("FINEST", Some(("TRACE", 1))),
            ("DEBUG", Some(("DEBUG", 5))),
            ("verbose", Some(("DEBUG", 5))),
            ("fine", Some(("DEBUG", 6))),
            ("Info", Some(("INFO", 9))),
            (" informational ", Some(("INFO", 9))),
            ("notice", Some(("INFO", 10))),
            ("warning", Some(("WARN", 13))),
            ("WARN", Some(("WARN", 13))),
            ("err", Some(("ERROR", 17))),
            ("crit", Some(("ERROR", 18))),
            ("dpanic", Some(("ERROR", 18))),
            ("alert", Some(("ERROR", 19))),
            ("critical", Some(("FATAL", 21))),
            ("panic", Some(("FATAL", 21))),
            ("emerg", Some(("FATAL", 21))),
            ("Emergency", Some(("FATAL", 21))),
            ("fatal", Some(("FATAL", 21))),
            ("loud", None),
            ("", None),
            ("infos", None),
        ];
        for (name, expected) in cases {
            assert_eq!(show(Severity::from_name(name)), *expected, "{name:?}");
        }
    }

    #[test]
    fn syslog_codes_and_their_words_agree() {
        let words = [
            "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
        ];
        for (code, word) in words.iter().enumerate() {
            let code = i64::try_from(code).unwrap();
            assert_eq!(
                Severity::from_syslog(code),
                Severity::from_name(word),
                "{code} {word}"
            );
        }
        assert_eq!(Severity::from_syslog(8), None);
        assert_eq!(Severity::from_syslog(-1), None);
    }

    #[test]
    fn pino_levels_and_numbers() {
        let cases = [
            (10, Some(("TRACE", 1))),
            (30, Some(("INFO", 9))),
            (60, Some(("FATAL", 21))),
            (35, None),
            (0, None),
        ];
        for (level, expected) in cases {
            assert_eq!(show(Severity::from_pino(level)), expected, "{level}");
        }
        let ranges = [
            (1, "TRACE"),
            (4, "TRACE"),
            (8, "DEBUG"),
            (12, "INFO"),
            (16, "WARN"),
            (20, "ERROR"),
            (24, "FATAL"),
        ];
        for (number, text) in ranges {
            assert_eq!(show(Severity::from_number(number)), Some((text, number)));
        }
        assert_eq!(Severity::from_number(0), None);
        assert_eq!(Severity::from_number(25), None);
        assert!(Severity::WARN < Severity::ERROR);
    }
}
