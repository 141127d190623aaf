//! Redaction: masks secrets in text before records leave the node.
//!
//! The built-in detectors are hand-written scanners, not regexes, because
//! they run on every record: bearer tokens, AWS access key ids, card
//! numbers (13 to 19 digits, spaces or dashes allowed between them, that
//! pass the Luhn check) and, when enabled, e-mail addresses. Extra
//! patterns from the config are regexes.

use memchr::memmem::Finder;
use regex::Regex;

use crate::config::RedactConfig;
use crate::error::Result;

/// Masks secrets; built once from the config.
#[derive(Debug)]
pub(crate) struct Redactor {
    emails: bool,
    bearer_tokens: bool,
    aws_keys: bool,
    card_numbers: bool,
    replacement: String,
    patterns: Vec<Regex>,
    /// Searchers built once: building one per call cost more than the search.
    earer: Finder<'static>,
    akia: Finder<'static>,
    asia: Finder<'static>,
}

impl Redactor {
    pub(crate) fn compile(config: &RedactConfig) -> Result<Redactor> {
        let patterns = config.compiled_patterns()?;
        Ok(Redactor {
            emails: config.emails,
            bearer_tokens: config.bearer_tokens,
            aws_keys: config.aws_keys,
            card_numbers: config.card_numbers,
            replacement: config.replacement.clone(),
            patterns,
            earer: Finder::new(b"earer").into_owned(),
            akia: Finder::new(b"AKIA").into_owned(),
            asia: Finder::new(b"ASIA").into_owned(),
        })
    }

    /// Whether any detector is on.
    pub(crate) fn is_enabled(&self) -> bool {
        self.emails
            || self.bearer_tokens
            || self.aws_keys
            || self.card_numbers
            || !self.patterns.is_empty()
    }

    /// The text with secrets masked, or `None` when there was nothing to
    /// mask (the common case allocates nothing).
    pub(crate) fn redact(&self, text: &str) -> Option<String> {
        let bytes = text.as_bytes();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        if self.bearer_tokens {
            bearer_spans(&self.earer, bytes, &mut spans);
        }
        if self.aws_keys {
            aws_key_spans(&[&self.akia, &self.asia], bytes, &mut spans);
        }
        if self.card_numbers {
            card_spans(bytes, &mut spans);
        }
        if self.emails {
            email_spans(bytes, &mut spans);
        }
        for pattern in &self.patterns {
            spans.extend(
                pattern
                    .find_iter(text)
                    .map(|found| (found.start(), found.end())),
            );
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut position = 0;
        for (start, end) in spans {
            if end <= position {
                continue;
            }
            let start = start.max(position);
            out.push_str(&text[position..start]);
            out.push_str(&self.replacement);
            position = end;
        }
        out.push_str(&text[position..]);
        Some(out)
    }
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// The token after `Bearer ` (any case).
fn bearer_spans(earer: &Finder<'_>, bytes: &[u8], spans: &mut Vec<(usize, usize)>) {
    for found in earer.find_iter(bytes) {
        let Some(b_index) = found.checked_sub(1) else {
            continue;
        };
        if !bytes[b_index].eq_ignore_ascii_case(&b'b')
            || !bytes[found..found + 5].eq_ignore_ascii_case(b"earer")
        {
            continue;
        }
        let mut start = found + 5;
        while start < bytes.len() && (bytes[start] == b' ' || bytes[start] == b'\t') {
            start += 1;
        }
        if start == found + 5 {
            continue;
        }
        let mut end = start;
        while end < bytes.len() && is_token_byte(bytes[end]) {
            end += 1;
        }
        if end - start >= 8 {
            spans.push((start, end));
        }
    }
}

/// `AKIA`/`ASIA` followed by 16 upper-case letters or digits.
fn aws_key_spans(prefixes: &[&Finder<'_>], bytes: &[u8], spans: &mut Vec<(usize, usize)>) {
    for prefix in prefixes {
        for start in prefix.find_iter(bytes) {
            let end = start + 20;
            if end > bytes.len() {
                continue;
            }
            let body_ok = bytes[start + 4..end]
                .iter()
                .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit());
            let left_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
            let right_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
            if body_ok && left_ok && right_ok {
                spans.push((start, end));
            }
        }
    }
}

/// Runs of 13 to 19 digits (single spaces or dashes between them allowed)
/// that pass the Luhn check.
fn card_spans(bytes: &[u8], spans: &mut Vec<(usize, usize)>) {
    let mut index = 0;
    while index < bytes.len() {
        if !bytes[index].is_ascii_digit()
            || (index > 0 && (bytes[index - 1].is_ascii_alphanumeric()))
        {
            index += 1;
            continue;
        }
        let start = index;
        let mut digits: [u8; 19] = [0; 19];
        let mut count = 0;
        let mut end = index;
        let mut cursor = index;
        while cursor < bytes.len() {
            let byte = bytes[cursor];
            if byte.is_ascii_digit() {
                if count == digits.len() {
                    count += 1;
                    break;
                }
                digits[count] = byte - b'0';
                count += 1;
                cursor += 1;
                end = cursor;
            } else if (byte == b' ' || byte == b'-')
                && cursor + 1 < bytes.len()
                && bytes[cursor + 1].is_ascii_digit()
            {
                cursor += 1;
            } else {
                break;
            }
        }
        let right_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
        // Issuer prefixes start with 2 to 6 (Mastercard, Amex, Visa,
        // Discover...): Unix timestamps in ns (`17…`) are not cards.
        let issuer_ok = (2..=6).contains(&digits[0]);
        if (13..=19).contains(&count) && right_ok && issuer_ok && luhn(&digits[..count]) {
            spans.push((start, end));
        }
        index = end.max(index + 1);
    }
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, digit)| {
            let digit = u32::from(*digit);
            if position % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `local@domain.tld`.
fn email_spans(bytes: &[u8], spans: &mut Vec<(usize, usize)>) {
    let local_byte = |byte: u8| byte.is_ascii_alphanumeric() || b"._%+-".contains(&byte);
    let domain_byte = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-';
    for at in memchr::memchr_iter(b'@', bytes) {
        let mut start = at;
        while start > 0 && local_byte(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < bytes.len() && domain_byte(bytes[end]) {
            end += 1;
        }
        while end > at + 1 && bytes[end - 1] == b'.' {
            end -= 1;
        }
        let domain = &bytes[at + 1..end];
        let has_tld = domain
            .iter()
            .rposition(|byte| *byte == b'.')
            .is_some_and(|dot| dot > 0 && domain.len() - dot > 2);
        if start < at && has_tld {
            spans.push((start, end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(emails: bool) -> Redactor {
        Redactor::compile(&RedactConfig {
            emails,
            patterns: vec![r"password=\S+".to_owned()],
            ..RedactConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn masks_known_secrets() {
        let cases: &[(&str, Option<&str>)] = &[
            ("nothing to see", None),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc-DEF_123",
                Some("Authorization: Bearer [REDACTED]"),
            ),
            (
                "authorization=bearer  abcdefgh12 next",
                Some("authorization=bearer  [REDACTED] next"),
            ),
            ("bearer short", None),
            ("key AKIAIOSFODNN7EXAMPLE used", Some("key [REDACTED] used")),
            ("XAKIAIOSFODNN7EXAMPLE", None),
            ("card 4111 1111 1111 1111 ok", Some("card [REDACTED] ok")),
            ("card 4111-1111-1111-1111", Some("card [REDACTED]")),
            ("card 4111111111111111.", Some("card [REDACTED].")),
            ("order 4111111111111112 not luhn", None),
            ("id 1234567890123 x", None),
            ("ts 1795240128123456789 is a timestamp", None),
            (
                "ts 1795240128123456786 passes luhn, still a timestamp",
                None,
            ),
            ("mail bob@example.com please", None),
            ("login password=hunter2 ok", Some("login [REDACTED] ok")),
        ];
        let redactor = redactor(false);
        for (input, expected) in cases {
            assert_eq!(redactor.redact(input).as_deref(), *expected, "{input}");
        }
    }

    #[test]
    fn emails_when_enabled() {
        let redactor = redactor(true);
        assert_eq!(
            redactor
                .redact("to bob.smith+x@mail.example.com.")
                .as_deref(),
            Some("to [REDACTED].")
        );
        assert_eq!(redactor.redact("user@localhost"), None);
        assert_eq!(redactor.redact("@handle"), None);
    }

    #[test]
    fn luhn_check() {
        assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
    }
}
