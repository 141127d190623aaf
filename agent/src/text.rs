//! The `text` parser: plain-text lines as services and servers write them,
//! taken apart into a timestamp, a level, the message and typed fields.
//!
//! ```text
//! 2024-01-15 10:30:45 [INFO] Order created: order_id=5001, user_id=123, amount=99.99
//! -> timestamp 2024-01-15T10:30:45Z, level INFO, message "Order created",
//!    order_id 5001, user_id 123, amount 99.99
//! ```
//!
//! Formats are recognised by presets, tried in this order, each cheap to
//! reject by its first bytes:
//!
//! | preset | example |
//! |---|---|
//! | syslog (RFC 5424 and RFC 3164) | `<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed` |
//! | klog / glog | `I0115 10:30:45.123456    1234 server.go:42] Started` |
//! | nginx and Apache access logs (common and combined) | `10.0.0.1 - - [15/Jan/2024:10:30:45 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.0"` |
//! | Python's default (`logging.basicConfig`) | `WARNING:root:disk almost full` |
//! | a header of timestamp, level, thread and logger (Python's `%(asctime)s - %(name)s - %(levelname)s`, logback, log4j, Spring Boot, Go's and most hand-written loggers) | `2024-01-15 10:30:45.123 [main] INFO  c.e.App - Started` |
//!
//! After the header, a tail of `key=value` pairs separated by spaces or
//! commas becomes fields, with typed values (integers, floats, booleans,
//! quoted strings); the message is what comes before it. A line none of
//! this recognises is not text this parser knows: `None`, and the line
//! stays as it is.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;
use sightline_vocab::severity::Severity;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Fields in their order (the parser's `Object`).
pub(crate) type Fields = Vec<(String, Value)>;

/// Parses `line` with the presets; `None` when none recognises it.
pub(crate) fn parse(line: &str) -> Option<Fields> {
    let line = line.trim_end_matches(['\r', '\n']);
    let first = *line.as_bytes().first()?;
    let parsed = match first {
        b'<' => syslog(line),
        b'I' | b'W' | b'E' | b'F' if line.as_bytes().get(1).is_some_and(u8::is_ascii_digit) => {
            klog(line)
        }
        b'0'..=b'9' => access_log(line),
        _ => None,
    };
    parsed
        .or_else(|| python_default(line))
        .or_else(|| header(line))
        .or_else(|| tail_only(line))
}

// ---------------------------------------------------------------------------
// Presets
// ---------------------------------------------------------------------------

static SYSLOG_5424: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) ?(.*)$")
        .expect("a valid regex")
});
static SYSLOG_3164: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:<(\d{1,3})>)?([A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}) (\S+) ([^\[:\s]+)(?:\[(\d+)\])?: ?(.*)$",
    )
    .expect("a valid regex")
});
static KLOG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([IWEF])(\d{2})(\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?)\s+(\d+) ([^:\]\s]+):(\d+)\] (.*)$")
        .expect("a valid regex")
});
static ACCESS_LOG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"^(\S+) \S+ (\S+) \[([^\]]+)\] "(\S+) (\S+)(?: (HTTP/[\d.]+))?" (\d{3}) (\d+|-)(?: "([^"]*)" "([^"]*)")?"#,
    )
    .expect("a valid regex")
});

/// `15/Jan/2024:10:30:45 +0100`, the time of an access log line.
static ACCESS_LOG_TIME: LazyLock<time::format_description::OwnedFormatItem> = LazyLock::new(|| {
    time::format_description::parse_owned::<2>(
            "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]",
        )
        .expect("a valid format description")
});

fn syslog(line: &str) -> Option<Fields> {
    if let Some(captures) = SYSLOG_5424.captures(line) {
        let mut fields = Fields::new();
        syslog_priority(&mut fields, &captures[1]);
        if let Some(timestamp) = crate::decode::parse_rfc3339_nanos(&captures[2]) {
            push(&mut fields, "timestamp", rfc3339(timestamp));
        }
        for (index, key) in [
            (3, "host.name"),
            (4, "syslog.appname"),
            (5, "process.pid"),
            (6, "syslog.msgid"),
        ] {
            if &captures[index] != "-" {
                push(&mut fields, key, typed(&captures[index]));
            }
        }
        if &captures[7] != "-" {
            push(&mut fields, "syslog.structured_data", &captures[7]);
        }
        message_and_tail(&mut fields, &captures[8]);
        return Some(fields);
    }
    let captures = SYSLOG_3164.captures(line)?;
    let mut fields = Fields::new();
    if let Some(priority) = captures.get(1) {
        syslog_priority(&mut fields, priority.as_str());
    }
    if let Some(timestamp) = without_year(&captures[2]) {
        push(&mut fields, "timestamp", rfc3339(timestamp));
    }
    push(&mut fields, "host.name", &captures[3]);
    push(&mut fields, "syslog.appname", &captures[4]);
    if let Some(pid) = captures.get(5) {
        push(&mut fields, "process.pid", typed(pid.as_str()));
    }
    message_and_tail(&mut fields, &captures[6]);
    Some(fields)
}

/// `<PRI>`: facility * 8 + severity, the severity by syslog's numbers.
fn syslog_priority(fields: &mut Fields, priority: &str) {
    let Ok(priority) = priority.parse::<i64>() else {
        return;
    };
    if let Some(severity) = Severity::from_syslog(priority % 8) {
        push(fields, "level", severity.text());
    }
    push(fields, "syslog.facility", priority / 8);
}

fn klog(line: &str) -> Option<Fields> {
    let captures = KLOG.captures(line)?;
    let mut fields = Fields::new();
    let level = match &captures[1] {
        "I" => "INFO",
        "W" => "WARN",
        "E" => "ERROR",
        _ => "FATAL",
    };
    let stamp = format!("{}-{} {}", &captures[2], &captures[3], &captures[4]);
    if let Some(timestamp) = month_day_time(&stamp) {
        push(&mut fields, "timestamp", rfc3339(timestamp));
    }
    push(&mut fields, "level", level);
    push(&mut fields, "thread.id", typed(&captures[5]));
    push(&mut fields, "code.filepath", &captures[6]);
    push(&mut fields, "code.lineno", typed(&captures[7]));
    // klog's structured form: `"message" key="value" ...`.
    let rest = &captures[8];
    match quoted_prefix(rest) {
        Some((message, after)) if after.is_empty() || after.starts_with(' ') => {
            push(&mut fields, "message", message);
            if let Some(pairs) = pairs(after.trim_start()) {
                fields.extend(pairs);
            }
        }
        _ => message_and_tail(&mut fields, rest),
    }
    Some(fields)
}

fn access_log(line: &str) -> Option<Fields> {
    let captures = ACCESS_LOG.captures(line)?;
    let mut fields = Fields::new();
    let time = OffsetDateTime::parse(&captures[3], &*ACCESS_LOG_TIME).ok();
    if let Some(time) = time.and_then(|time| u64::try_from(time.unix_timestamp_nanos()).ok()) {
        push(&mut fields, "timestamp", rfc3339(time));
    }
    let status: i64 = captures[7].parse().unwrap_or(0);
    let level = match status {
        500.. => "ERROR",
        400..500 => "WARN",
        _ => "INFO",
    };
    push(&mut fields, "level", level);
    push(
        &mut fields,
        "message",
        format!("{} {} {}", &captures[4], &captures[5], &captures[7]),
    );
    push(&mut fields, "client.address", &captures[1]);
    if &captures[2] != "-" {
        push(&mut fields, "user.name", &captures[2]);
    }
    push(&mut fields, "http.request.method", &captures[4]);
    push(&mut fields, "url.original", &captures[5]);
    if let Some(version) = captures.get(6) {
        push(&mut fields, "network.protocol.version", version.as_str());
    }
    push(&mut fields, "http.response.status_code", status);
    if let Ok(bytes) = captures[8].parse::<i64>() {
        push(&mut fields, "http.response.body.size", bytes);
    }
    if let Some(referrer) = captures.get(9).filter(|found| found.as_str() != "-") {
        push(
            &mut fields,
            "http.request.header.referer",
            referrer.as_str(),
        );
    }
    if let Some(agent) = captures.get(10).filter(|found| found.as_str() != "-") {
        push(&mut fields, "user_agent.original", agent.as_str());
    }
    Some(fields)
}

/// `LEVEL:logger:message`, the format of `logging.basicConfig()`.
fn python_default(line: &str) -> Option<Fields> {
    let (level, rest) = line.split_once(':')?;
    if !is_level(level) || level.bytes().any(|byte| byte.is_ascii_lowercase()) {
        return None;
    }
    let (logger, message) = rest.split_once(':')?;
    if logger.is_empty() || logger.contains(' ') {
        return None;
    }
    let mut fields = Fields::new();
    push(&mut fields, "level", level);
    push(&mut fields, "log.logger", logger);
    message_and_tail(&mut fields, message);
    Some(fields)
}

/// A header of an optional timestamp, then a level, a thread in brackets, a
/// process id and a logger, in the orders loggers write them, then the
/// message. At least a timestamp or a level must be there.
fn header(line: &str) -> Option<Fields> {
    let mut fields = Fields::new();
    let mut rest = line;
    if let Some((timestamp, used)) = leading_timestamp(rest) {
        push(&mut fields, "timestamp", rfc3339(timestamp));
        rest = &rest[used..];
    }
    let mut level = None;
    let mut thread = None;
    let mut logger = None;
    let mut pid = None;
    // A handful of header tokens at most; the message follows.
    for _ in 0..8 {
        let trimmed = rest.trim_start();
        if let Some(after) = trimmed
            .strip_prefix("- ")
            .or_else(|| trimmed.strip_prefix(": "))
            .or_else(|| trimmed.strip_prefix("--- "))
        {
            rest = after;
            if level.is_some() || !fields.is_empty() {
                continue;
            }
            break;
        }
        if let Some(inner) = trimmed.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            let word = inner[..end].trim();
            if level.is_none() && is_level(word) {
                level = Some(word);
            } else if thread.is_none() && !word.is_empty() && !word.contains(' ') {
                thread = Some(word);
            } else {
                break;
            }
            rest = &inner[end + 1..];
            continue;
        }
        let word_end = trimmed.find(' ').unwrap_or(trimmed.len());
        let word = &trimmed[..word_end];
        let bare = word.trim_end_matches(':');
        if level.is_none() && is_level(bare) {
            level = Some(bare);
            rest = &trimmed[word_end..];
            continue;
        }
        // A process id only where Spring Boot writes one: `LEVEL <pid> ---`.
        if level.is_some()
            && pid.is_none()
            && logger.is_none()
            && !word.is_empty()
            && word.bytes().all(|byte| byte.is_ascii_digit())
            && trimmed[word_end..].trim_start().starts_with("--- ")
        {
            pid = Some(word);
            rest = &trimmed[word_end..];
            continue;
        }
        let after_word = trimmed[word_end..].trim_start();
        // A logger before the level: `name - LEVEL - message` (Python).
        if level.is_none()
            && logger.is_none()
            && let Some(next) = after_word.strip_prefix("- ")
            && is_level(next.split(' ').next().unwrap_or_default())
        {
            logger = Some(word);
            rest = next;
            continue;
        }
        // A logger: a name right before ` - ` or ` : ` once a level is known.
        if level.is_some()
            && logger.is_none()
            && !word.is_empty()
            && !word.contains('=')
            && (after_word.starts_with("- ") || after_word.starts_with(": "))
        {
            logger = Some(word);
            rest = &after_word[2..];
            break;
        }
        rest = trimmed;
        break;
    }
    if level.is_none() && fields.is_empty() {
        return None;
    }
    if let Some(level) = level {
        push(&mut fields, "level", level);
    }
    if let Some(thread) = thread {
        push(&mut fields, "thread.name", thread);
    }
    if let Some(pid) = pid {
        push(&mut fields, "process.pid", typed(pid));
    }
    if let Some(logger) = logger {
        push(&mut fields, "log.logger", logger);
    }
    message_and_tail(&mut fields, rest);
    Some(fields)
}

/// No header, but a message ending in `key=value` pairs.
fn tail_only(line: &str) -> Option<Fields> {
    let mut fields = Fields::new();
    let (message, pairs) = split_tail(line)?;
    push(&mut fields, "message", message);
    fields.extend(pairs);
    Some(fields)
}

// ---------------------------------------------------------------------------
// The message and its `key=value` tail
// ---------------------------------------------------------------------------

fn message_and_tail(fields: &mut Fields, text: &str) {
    let text = text.trim();
    match split_tail(text) {
        Some((message, pairs)) => {
            push(fields, "message", message);
            fields.extend(pairs);
        }
        None => push(fields, "message", text),
    }
}

/// The message and the `key=value` pairs that end `text`, when it ends in
/// at least one. The message loses the separator before the pairs
/// (`Order created: order_id=5001` gives `Order created`).
fn split_tail(text: &str) -> Option<(&str, Fields)> {
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(candidate) = next_key_start(text, start) {
        match pairs_until_failure(&text[candidate..]) {
            Ok(pairs) => {
                let message = text[..candidate].trim_end_matches([' ', ',', ':', ';', '-', '|']);
                return Some((message.trim_end(), pairs));
            }
            // No candidate before the failure can succeed: the same pairs
            // lead to the same failure.
            Err(failed_at) => start = candidate + failed_at.max(1),
        }
        if start >= bytes.len() {
            break;
        }
    }
    None
}

/// Where the next `key=` starts at or after `from`: a key begins a word.
fn next_key_start(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut index = from;
    while index < bytes.len() {
        let at_word_start = index == 0 || matches!(bytes[index - 1], b' ' | b',' | b'\t');
        if at_word_start && is_key_start(bytes[index]) {
            let mut end = index;
            while end < bytes.len() && is_key_byte(bytes[end]) {
                end += 1;
            }
            if end < bytes.len() && bytes[end] == b'=' && end > index {
                return Some(index);
            }
            index = end.max(index + 1);
            continue;
        }
        index += 1;
    }
    None
}

fn is_key_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_'
}

fn is_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')
}

/// `key=value` pairs to the end, separated by spaces and commas.
fn pairs(text: &str) -> Option<Fields> {
    pairs_until_failure(text)
        .ok()
        .filter(|pairs| !pairs.is_empty())
}

/// The pairs of `text`, or the offset of the first byte that is not part
/// of a pair.
fn pairs_until_failure(text: &str) -> Result<Fields, usize> {
    let bytes = text.as_bytes();
    let mut pairs = Fields::new();
    let mut index = 0;
    loop {
        while index < bytes.len() && matches!(bytes[index], b' ' | b',' | b'\t') {
            index += 1;
        }
        if index >= bytes.len() {
            return if pairs.is_empty() {
                Err(index)
            } else {
                Ok(pairs)
            };
        }
        let key_start = index;
        if !is_key_start(bytes[index]) {
            return Err(index);
        }
        while index < bytes.len() && is_key_byte(bytes[index]) {
            index += 1;
        }
        if index >= bytes.len() || bytes[index] != b'=' {
            return Err(key_start);
        }
        let key = &text[key_start..index];
        index += 1;
        let value = if bytes.get(index) == Some(&b'"') {
            let Some((value, after)) = quoted_prefix(&text[index..]) else {
                return Err(key_start);
            };
            index = text.len() - after.len();
            Value::String(value)
        } else {
            let value_start = index;
            while index < bytes.len() && !matches!(bytes[index], b' ' | b',' | b'\t') {
                index += 1;
            }
            // `amount=1,5` is not two pairs: a comma is a separator only
            // before a space or another key.
            typed(&text[value_start..index])
        };
        pairs.push((key.to_owned(), value));
    }
}

/// A `"quoted"` string at the start of `text` (backslash escapes), and
/// what follows it.
fn quoted_prefix(text: &str) -> Option<(String, &str)> {
    let mut chars = text.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    let mut value = String::new();
    while let Some((index, char)) = chars.next() {
        match char {
            '\\' => {
                let (_, escaped) = chars.next()?;
                value.push(match escaped {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
            }
            '"' => return Some((value, &text[index + 1..])),
            other => value.push(other),
        }
    }
    None
}

/// A value as its type: integers, floats, booleans, else text.
fn typed(text: &str) -> Value {
    if let Ok(integer) = text.parse::<i64>() {
        // Leading zeros (`007`, ids) and `+1` stay text.
        let canonical = integer.to_string() == text;
        if canonical {
            return Value::from(integer);
        }
        return Value::from(text);
    }
    if text.contains('.')
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || matches!(byte, b'.' | b'-'))
        && let Ok(float) = text.parse::<f64>()
        && float.is_finite()
    {
        return Value::from(float);
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::from(text),
    }
}

// ---------------------------------------------------------------------------
// Timestamps and levels
// ---------------------------------------------------------------------------

fn is_level(word: &str) -> bool {
    word.len() >= 3
        && word.len() <= 9
        && word.bytes().all(|byte| byte.is_ascii_alphabetic())
        && Severity::from_name(word).is_some()
}

fn push(fields: &mut Fields, key: &str, value: impl Into<Value>) {
    fields.push((key.to_owned(), value.into()));
}

fn rfc3339(unix_nanos: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos))
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `2024-01-15 10:30:45`, with `T` or a space, an optional fraction after
/// `.` or `,`, and an optional `Z` or offset (UTC without one) at the start
/// of `text`: Unix nanoseconds and the bytes used.
fn leading_timestamp(text: &str) -> Option<(u64, usize)> {
    let bytes = text.as_bytes();
    let digits = |from: usize, count: usize| -> Option<u32> {
        let slice = bytes.get(from..from + count)?;
        slice.iter().all(u8::is_ascii_digit).then(|| {
            slice
                .iter()
                .fold(0, |acc, byte| acc * 10 + u32::from(byte - b'0'))
        })
    };
    let year = digits(0, 4)?;
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let (month, day) = (digits(5, 2)?, digits(8, 2)?);
    if !matches!(bytes.get(10), Some(b'T' | b' ')) {
        return None;
    }
    let (hour, minute) = (digits(11, 2)?, digits(14, 2)?);
    if bytes.get(13) != Some(&b':') || bytes.get(16) != Some(&b':') {
        return None;
    }
    let second = digits(17, 2)?;
    let mut used = 19;
    let mut nanos = 0u32;
    if matches!(bytes.get(used), Some(b'.' | b',')) {
        let start = used + 1;
        let mut end = start;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
        let fraction = &text[start..end.min(start + 9)];
        nanos = fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32);
        used = end;
    }
    let mut offset = UtcOffset::UTC;
    match bytes.get(used) {
        Some(b'Z' | b'z') => used += 1,
        Some(sign @ (b'+' | b'-')) => {
            let hours = digits(used + 1, 2)?;
            // `+01:00`, `+0100` or `+01`: only ASCII digits are consumed,
            // so the rest always starts on a character boundary.
            let (minutes, length) = if bytes.get(used + 3) == Some(&b':') {
                (digits(used + 4, 2)?, 6)
            } else if let Some(minutes) = digits(used + 3, 2) {
                (minutes, 5)
            } else {
                (0, 3)
            };
            let seconds = (hours * 3600 + minutes * 60) as i32;
            offset = UtcOffset::from_whole_seconds(if *sign == b'-' { -seconds } else { seconds })
                .ok()?;
            used += length;
        }
        _ => {}
    }
    let date = Date::from_calendar_date(year as i32, Month::try_from(month as u8).ok()?, day as u8)
        .ok()?;
    let time = Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos).ok()?;
    let moment = PrimitiveDateTime::new(date, time).assume_offset(offset);
    Some((u64::try_from(moment.unix_timestamp_nanos()).ok()?, used))
}

/// `Oct 11 22:14:15` (syslog): this year, or the last if that is ahead.
fn without_year(text: &str) -> Option<u64> {
    let month = match text.get(..3)? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let day = text.get(4..6)?.trim();
    month_day_time(&format!("{month:02}-{day:0>2} {}", text.get(7..)?))
}

/// `MM-DD HH:MM:SS[.frac]` in the current year (UTC), or the last when that
/// would be more than a day ahead.
fn month_day_time(text: &str) -> Option<u64> {
    let now = OffsetDateTime::now_utc();
    let at = |year: i32| leading_timestamp(&format!("{year:04}-{}", text.replacen(' ', "T", 1)));
    let (nanos, _) = at(now.year())?;
    let ahead = i128::from(nanos) - now.unix_timestamp_nanos();
    if ahead > 86_400 * 1_000_000_000 {
        return at(now.year() - 1).map(|(nanos, _)| nanos);
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(line: &str) -> Value {
        Value::Object(parse(line).expect(line).into_iter().collect())
    }

    #[test]
    fn the_plain_text_walkthrough_line() {
        assert_eq!(
            parsed(
                "2024-01-15 10:30:45 [INFO] Order created: order_id=5001, user_id=123, amount=99.99"
            ),
            json!({
                "timestamp": "2024-01-15T10:30:45Z", "level": "INFO", "message": "Order created",
                "order_id": 5001, "user_id": 123, "amount": 99.99
            })
        );
    }

    #[test]
    fn loggers_headers() {
        let cases = [
            (
                "2024-01-15 10:30:45,123 - payments - WARNING - card declined: code=51",
                json!({"timestamp": "2024-01-15T10:30:45.123Z", "log.logger": "payments", "level": "WARNING", "message": "card declined", "code": 51}),
            ),
            (
                "2024-01-15 10:30:45.123 [main] INFO  com.example.App - Started in 2.1 s",
                json!({"timestamp": "2024-01-15T10:30:45.123Z", "level": "INFO", "thread.name": "main", "log.logger": "com.example.App", "message": "Started in 2.1 s"}),
            ),
            (
                "2024-01-15T10:30:45.123+01:00  ERROR 4242 --- [           main] o.s.b.SpringApplication                  : Application run failed",
                json!({"timestamp": "2024-01-15T09:30:45.123Z", "level": "ERROR", "process.pid": 4242, "thread.name": "main", "log.logger": "o.s.b.SpringApplication", "message": "Application run failed"}),
            ),
            (
                "WARNING:root:disk almost full free_mb=12",
                json!({"level": "WARNING", "log.logger": "root", "message": "disk almost full", "free_mb": 12}),
            ),
            (
                "ERROR 3 retries failed",
                json!({"level": "ERROR", "message": "3 retries failed"}),
            ),
            (
                "ERROR connection refused host=db.local port=5432 retry=true",
                json!({"level": "ERROR", "message": "connection refused", "host": "db.local", "port": 5432, "retry": true}),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parsed(line), expected, "{line}");
        }
    }

    #[test]
    fn servers_and_system_formats() {
        let access = parsed(
            r#"10.0.0.1 - alice [15/Jan/2024:10:30:45 +0100] "GET /api/orders?id=7 HTTP/1.1" 503 612 "-" "curl/8.0""#,
        );
        assert_eq!(
            access,
            json!({
                "timestamp": "2024-01-15T09:30:45Z", "level": "ERROR", "message": "GET /api/orders?id=7 503",
                "client.address": "10.0.0.1", "user.name": "alice", "http.request.method": "GET",
                "url.original": "/api/orders?id=7", "network.protocol.version": "HTTP/1.1",
                "http.response.status_code": 503, "http.response.body.size": 612,
                "user_agent.original": "curl/8.0"
            })
        );
        let common =
            parsed(r#"127.0.0.1 - - [15/Jan/2024:10:30:45 +0000] "POST /login HTTP/1.0" 401 -"#);
        assert_eq!(common["level"], "WARN");
        assert!(common.get("http.response.body.size").is_none());

        let klog = parsed(
            r#"E0115 10:30:45.123456    1234 controller.go:42] "Sync failed" pod="shop/order-1" attempt=3"#,
        );
        assert_eq!(klog["level"], "ERROR");
        assert_eq!(klog["message"], "Sync failed");
        assert_eq!(klog["pod"], "shop/order-1");
        assert_eq!(klog["attempt"], 3);
        assert_eq!(klog["code.filepath"], "controller.go");
        assert_eq!(klog["code.lineno"], 42);
        assert!(
            klog["timestamp"]
                .as_str()
                .unwrap()
                .ends_with("-01-15T10:30:45.123456Z")
        );

        let bsd = parsed(
            "<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed for lonvick on /dev/pts/8",
        );
        assert_eq!(
            bsd["level"], "ERROR",
            "critical, by the shared syslog table"
        );
        assert_eq!(bsd["syslog.facility"], 4);
        assert_eq!(bsd["host.name"], "mymachine");
        assert_eq!(bsd["syslog.appname"], "su");
        assert_eq!(bsd["process.pid"], 230);
        assert_eq!(bsd["message"], "'su root' failed for lonvick on /dev/pts/8");

        let ietf = parsed(
            "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 - An application event",
        );
        assert_eq!(ietf["timestamp"], "2003-10-11T22:14:15.003Z");
        assert_eq!(ietf["level"], "INFO", "notice, by the shared syslog table");
        assert_eq!(ietf["syslog.msgid"], "ID47");
        assert_eq!(ietf["message"], "An application event");
    }

    #[test]
    fn what_is_not_a_known_format_is_left_alone() {
        for line in [
            "",
            "Starting server",
            "GET /healthz",
            "a = b",
            "Authorization: Bearer abc",
            "x=1 then words",
            "1234 is a number",
        ] {
            assert_eq!(parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn an_offset_of_hours_alone_ends_before_what_follows() {
        // Found by the `parse` fuzz target: a two-byte offset followed by a
        // multi-byte character was cut inside that character.
        let line = "2024-02-29T10:00:00.4048-08\u{fffd}02-0:0";
        let fields = parsed(line);
        assert_eq!(fields["timestamp"], "2024-02-29T18:00:00.4048Z");
        assert_eq!(fields["message"], "\u{fffd}02-0:0");
        assert_eq!(
            parsed("2024-02-29 10:00:00+01 up")["timestamp"],
            "2024-02-29T09:00:00Z"
        );
    }

    #[test]
    fn tails_keep_their_types_and_their_text() {
        let fields = parsed(r#"done id=007 ratio=0.5 neg=-3 big=1e5 name="a b, c" ok=false"#);
        assert_eq!(fields["message"], "done");
        assert_eq!(fields["id"], "007", "leading zeros are an id, not a number");
        assert_eq!(fields["ratio"], 0.5);
        assert_eq!(fields["neg"], -3);
        assert_eq!(fields["big"], "1e5");
        assert_eq!(fields["name"], "a b, c");
        assert_eq!(fields["ok"], false);
        // Bare words after pairs: the pairs are part of the message.
        assert_eq!(parse("user=1 logged in"), None);
    }

    #[test]
    fn a_long_line_of_almost_pairs_is_linear() {
        // Each failed try resumes where it failed: quadratic scanning of
        // this line would take minutes, not milliseconds.
        let line = "a=1 ".repeat(50_000) + "word";
        assert_eq!(parse(&line), None);
    }
}
