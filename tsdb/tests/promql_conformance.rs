//! Runs Prometheus' own PromQL acceptance tests (`promqltest` format) from
//! `../shared/conformance/promql/*.test` against our engine.
//!
//! Every `load` fills a fresh [`MemoryStorage`] (until `clear`), every `eval`
//! runs against it. Per file the runner prints passed / failed / skipped,
//! and lists each skipped case with its reason. The test fails when fewer
//! cases pass than [`PASSING_FLOOR`]: that number only goes up.
//!
//! Set `SIGHTLINE_CONFORMANCE_VERBOSE=1` to print every failing case.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sightline_tsdb::Labels;
use sightline_tsdb::promql::{Engine, MemoryStorage, Value, format_value, stale_nan};

/// Passing cases recorded in the last run; a drop below this fails the test.
const PASSING_FLOOR: usize = 651;

fn conformance_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/promql"
    ))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum EvalKind {
    Plain,
    Fail,
    Ordered,
    Warn,
    Info,
}

#[derive(Debug)]
enum Timing {
    Instant(i64),
    Range {
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
    },
}

#[derive(Debug)]
struct EvalCase {
    line: usize,
    kind: EvalKind,
    timing: Timing,
    query: String,
    expected: Vec<String>,
    fail_message: Option<String>,
    fail_regexp: Option<String>,
}

#[derive(Debug)]
enum Command {
    Load {
        interval_ms: i64,
        lines: Vec<String>,
        converts_to_native_histograms: bool,
    },
    Clear,
    Eval(EvalCase),
    Unsupported {
        line: usize,
        text: String,
    },
}

#[derive(Default)]
struct FileReport {
    passed: usize,
    failed: usize,
    skipped: Vec<String>,
    failures: Vec<String>,
}

fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('-') {
        return parse_duration_ms(rest).map(|value| -value);
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return Some(seconds * 1000);
    }
    let mut total = 0i64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_length = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_length] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total += number * factor;
        rest = &rest[unit_length..];
    }
    Some(total)
}

fn parse_file(text: &str) -> Vec<Command> {
    let lines: Vec<&str> = text.lines().collect();
    let mut commands = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].trim_end();
        let line_number = index + 1;
        index += 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // the indented lines that belong to this command
        let mut body = Vec::new();
        while index < lines.len() {
            let next = lines[index];
            if next.trim().is_empty() {
                break;
            }
            if !next.starts_with([' ', '\t']) {
                if next.trim_start().starts_with('#') {
                    index += 1;
                    continue;
                }
                if next.starts_with("expected_fail_") {
                    body.push(next.trim().to_string());
                    index += 1;
                    continue;
                }
                break;
            }
            if !next.trim_start().starts_with('#') {
                body.push(next.trim().to_string());
            }
            index += 1;
        }
        let (word, rest) = trimmed
            .split_once(char::is_whitespace)
            .unwrap_or((trimmed, ""));
        let rest = rest.trim();
        match word {
            "load" | "load_with_nhcb" => match parse_duration_ms(rest) {
                Some(interval_ms) => commands.push(Command::Load {
                    interval_ms,
                    lines: body,
                    converts_to_native_histograms: word == "load_with_nhcb",
                }),
                None => commands.push(Command::Unsupported {
                    line: line_number,
                    text: trimmed.to_string(),
                }),
            },
            "clear" => commands.push(Command::Clear),
            "eval" | "eval_fail" | "eval_ordered" | "eval_warn" | "eval_info" => {
                let kind = match word {
                    "eval_fail" => EvalKind::Fail,
                    "eval_ordered" => EvalKind::Ordered,
                    "eval_warn" => EvalKind::Warn,
                    "eval_info" => EvalKind::Info,
                    _ => EvalKind::Plain,
                };
                match parse_eval(rest, kind, line_number, body) {
                    Some(case) => commands.push(Command::Eval(case)),
                    None => commands.push(Command::Unsupported {
                        line: line_number,
                        text: trimmed.to_string(),
                    }),
                }
            }
            _ => commands.push(Command::Unsupported {
                line: line_number,
                text: trimmed.to_string(),
            }),
        }
    }
    commands
}

fn parse_eval(rest: &str, kind: EvalKind, line: usize, body: Vec<String>) -> Option<EvalCase> {
    let words: Vec<&str> = rest.splitn(3, char::is_whitespace).collect();
    let (timing, query) = match words.first().copied()? {
        "instant" => {
            let tail = rest.strip_prefix("instant")?.trim_start();
            let tail = tail.strip_prefix("at")?.trim_start();
            let (time, query) = tail.split_once(char::is_whitespace)?;
            (
                Timing::Instant(parse_duration_ms(time)?),
                query.trim().to_string(),
            )
        }
        "range" => {
            let tail = rest.strip_prefix("range")?.trim_start();
            let tail = tail.strip_prefix("from")?.trim_start();
            let (start, tail) = tail.split_once(char::is_whitespace)?;
            let tail = tail.trim_start().strip_prefix("to")?.trim_start();
            let (end, tail) = tail.split_once(char::is_whitespace)?;
            let tail = tail.trim_start().strip_prefix("step")?.trim_start();
            let (step, query) = tail.split_once(char::is_whitespace)?;
            (
                Timing::Range {
                    start_ms: parse_duration_ms(start)?,
                    end_ms: parse_duration_ms(end)?,
                    step_ms: parse_duration_ms(step)?,
                },
                query.trim().to_string(),
            )
        }
        _ => return None,
    };
    let mut expected = Vec::new();
    let mut fail_message = None;
    let mut fail_regexp = None;
    for entry in body {
        if let Some(message) = entry.strip_prefix("expected_fail_message") {
            fail_message = Some(message.trim().to_string());
        } else if let Some(regexp) = entry.strip_prefix("expected_fail_regexp") {
            fail_regexp = Some(regexp.trim().to_string());
        } else {
            expected.push(entry);
        }
    }
    Some(EvalCase {
        line,
        kind,
        timing,
        query,
        expected,
        fail_message,
        fail_regexp,
    })
}

/// Splits `metric{a="b"} rest` into labels and the rest.
fn parse_series(text: &str) -> Result<(Labels, String), String> {
    let text = text.trim();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut position = 0;
    let mut name = String::new();
    while position < chars.len()
        && (chars[position].is_ascii_alphanumeric()
            || chars[position] == '_'
            || chars[position] == ':')
    {
        name.push(chars[position]);
        position += 1;
    }
    if position < chars.len() && chars[position] == '{' {
        position += 1;
        loop {
            while position < chars.len()
                && (chars[position].is_whitespace() || chars[position] == ',')
            {
                position += 1;
            }
            if position >= chars.len() {
                return Err(format!("unterminated labels in {text:?}"));
            }
            if chars[position] == '}' {
                position += 1;
                break;
            }
            let label = if chars[position] == '"' {
                let (value, next) = read_quoted(&chars, position)?;
                position = next;
                value
            } else {
                let mut label = String::new();
                while position < chars.len()
                    && (chars[position].is_ascii_alphanumeric() || chars[position] == '_')
                {
                    label.push(chars[position]);
                    position += 1;
                }
                label
            };
            while position < chars.len() && chars[position].is_whitespace() {
                position += 1;
            }
            if position < chars.len() && chars[position] == '=' {
                position += 1;
                while position < chars.len() && chars[position].is_whitespace() {
                    position += 1;
                }
                let (value, next) = read_quoted(&chars, position)?;
                position = next;
                pairs.push((label, value));
            } else {
                name = label;
            }
        }
    }
    if !name.is_empty() {
        pairs.push(("__name__".to_string(), name));
    }
    Ok((
        Labels::new(pairs),
        chars[position..]
            .iter()
            .collect::<String>()
            .trim()
            .to_string(),
    ))
}

fn read_quoted(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars
        .get(start)
        .copied()
        .ok_or("expected a quoted string")?;
    if quote != '"' && quote != '\'' && quote != '`' {
        return Err(format!("expected a quoted string at {start}"));
    }
    let mut position = start + 1;
    let mut raw = String::new();
    while position < chars.len() && chars[position] != quote {
        if chars[position] == '\\' && quote != '`' && position + 1 < chars.len() {
            raw.push(chars[position]);
            position += 1;
        }
        raw.push(chars[position]);
        position += 1;
    }
    let quoted = format!("{quote}{raw}{quote}");
    let value = promql_parser::util::unquote_string(&quoted)?;
    Ok((value, position + 1))
}

fn parse_number(text: &str) -> Option<f64> {
    match text {
        "Inf" | "+Inf" | "inf" | "+inf" => return Some(f64::INFINITY),
        "-Inf" | "-inf" => return Some(f64::NEG_INFINITY),
        "NaN" | "nan" => return Some(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(|value| value as f64);
    }
    text.parse::<f64>().ok()
}

/// Expands `1+2x3 _ stale 4x2 _x3` into values; `None` is a missing point.
fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut values = Vec::new();
    for token in text.split_whitespace() {
        if token == "_" {
            values.push(None);
            continue;
        }
        if token == "stale" {
            values.push(Some(stale_nan()));
            continue;
        }
        if let Some(count) = token.strip_prefix("_x") {
            let count: usize = count.parse().map_err(|_| format!("bad token {token}"))?;
            values.extend(std::iter::repeat_n(None, count));
            continue;
        }
        if let Some((start_and_step, count)) = token.rsplit_once('x')
            && !start_and_step.is_empty()
            && !token.starts_with("0x")
            && let Ok(count) = count.parse::<usize>()
        {
            // `a+bxN`, `a-bxN` or `axN`
            let split = start_and_step
                .char_indices()
                .skip(1)
                .find(|(index, c)| {
                    (*c == '+' || *c == '-') && !start_and_step[..*index].ends_with(['e', 'E'])
                })
                .map(|(index, _)| index);
            let (start, step) = match split {
                Some(index) => {
                    let start = parse_number(&start_and_step[..index])
                        .ok_or_else(|| format!("bad token {token}"))?;
                    let step = parse_number(&start_and_step[index..])
                        .ok_or_else(|| format!("bad token {token}"))?;
                    (start, step)
                }
                None => (
                    parse_number(start_and_step).ok_or_else(|| format!("bad token {token}"))?,
                    0.0,
                ),
            };
            for step_index in 0..=count {
                values.push(Some(start + step * step_index as f64));
            }
            continue;
        }
        values.push(Some(
            parse_number(token).ok_or_else(|| format!("bad token {token}"))?,
        ));
    }
    Ok(values)
}

/// Loads the float series; returns the names of native histogram metrics
/// (written as `{{...}}`, or converted from classic buckets by
/// `load_with_nhcb`), whose cases the runner skips.
fn load(
    storage: &mut MemoryStorage,
    interval_ms: i64,
    lines: &[String],
    converts_to_native_histograms: bool,
) -> Result<Vec<String>, String> {
    let mut native_histogram_metrics = Vec::new();
    for line in lines {
        let (labels, values) = parse_series(line)?;
        if converts_to_native_histograms
            && let Some(base) = labels.metric_name().strip_suffix("_bucket")
        {
            native_histogram_metrics.push(base.to_string());
        }
        if values.contains("{{") {
            native_histogram_metrics.push(labels.metric_name().to_string());
            continue;
        }
        for (index, value) in expand_values(&values)?.into_iter().enumerate() {
            if let Some(value) = value {
                storage.append(&labels, index as i64 * interval_ms, value);
            }
        }
    }
    Ok(native_histogram_metrics)
}

fn values_equal(expected: f64, actual: f64) -> bool {
    if expected.is_nan() || actual.is_nan() {
        return expected.is_nan() && actual.is_nan();
    }
    if expected == actual {
        return true;
    }
    let absolute_sum = expected.abs() + actual.abs();
    let difference = (expected - actual).abs();
    if expected == 0.0 || actual == 0.0 || absolute_sum < f64::MIN_POSITIVE {
        return difference < 1e-6 * f64::MIN_POSITIVE;
    }
    difference / absolute_sum.min(f64::MAX) < 1e-6
}

fn run_case(engine: &Engine, storage: &MemoryStorage, case: &EvalCase) -> Result<(), String> {
    let result = match case.timing {
        Timing::Instant(time_ms) => engine
            .instant_query(storage, &case.query, time_ms)
            .map(Outcome::Instant),
        Timing::Range {
            start_ms,
            end_ms,
            step_ms,
        } => engine
            .range_query(storage, &case.query, start_ms, end_ms, step_ms)
            .map(|series| Outcome::Range(series, start_ms, step_ms)),
    };
    if case.kind == EvalKind::Fail {
        let error = match result {
            Ok(_) => return Err("expected an error, the query succeeded".into()),
            Err(error) => error,
        };
        let message = match &error {
            sightline_tsdb::promql::QueryError::Execution(message) => message.clone(),
            other => other.to_string(),
        };
        if let Some(expected) = &case.fail_message
            && *expected != message
        {
            return Err(format!("expected error {expected:?}, got {message:?}"));
        }
        if let Some(pattern) = &case.fail_regexp {
            let regex = regex::Regex::new(pattern).map_err(|error| error.to_string())?;
            if !regex.is_match(&message) {
                return Err(format!(
                    "expected error matching {pattern:?}, got {message:?}"
                ));
            }
        }
        return Ok(());
    }
    let outcome = result.map_err(|error| format!("unexpected error: {error}"))?;
    let mut expected = Vec::new();
    for line in &case.expected {
        if let Some(number) = parse_number(line.trim()) {
            expected.push((None, vec![Some(number)]));
            continue;
        }
        let (labels, values) = parse_series(line)?;
        expected.push((Some(labels), expand_values(&values)?));
    }
    match outcome {
        Outcome::Instant(Value::Scalar(actual)) => match expected.as_slice() {
            [(None, values)] if values.len() == 1 => {
                let value = values[0].unwrap_or(f64::NAN);
                if values_equal(value, actual) {
                    Ok(())
                } else {
                    Err(format!("expected scalar {value}, got {actual}"))
                }
            }
            _ => Err(format!("expected {:?}, got scalar {actual}", case.expected)),
        },
        Outcome::Instant(Value::String(actual)) => Err(format!(
            "got string {actual:?}, expected {:?}",
            case.expected
        )),
        Outcome::Instant(Value::Vector(samples)) => {
            let actual: Vec<(Labels, Vec<f64>)> = samples
                .into_iter()
                .map(|sample| (sample.labels, vec![sample.value]))
                .collect();
            compare_series(&expected, actual, case.kind == EvalKind::Ordered)
        }
        Outcome::Instant(Value::Matrix(series)) => {
            let actual: Vec<(Labels, Vec<f64>)> = series
                .into_iter()
                .map(|series| {
                    (
                        series.labels,
                        series.points.iter().map(|(_, v)| *v).collect(),
                    )
                })
                .collect();
            compare_series(&expected, actual, false)
        }
        Outcome::Range(series, start_ms, step_ms) => {
            let mut actual = Vec::new();
            for series in series {
                let mut values: Vec<Option<f64>> = Vec::new();
                for (time_ms, value) in series.points {
                    let index = ((time_ms - start_ms) / step_ms) as usize;
                    if values.len() <= index {
                        values.resize(index + 1, None);
                    }
                    values[index] = Some(value);
                }
                actual.push((series.labels, values));
            }
            compare_range(&expected, actual)
        }
    }
}

enum Outcome {
    Instant(Value),
    Range(Vec<sightline_tsdb::promql::Series>, i64, i64),
}

type Expected = (Option<Labels>, Vec<Option<f64>>);

fn compare_series(
    expected: &[Expected],
    actual: Vec<(Labels, Vec<f64>)>,
    ordered: bool,
) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            expected.len(),
            actual.len(),
            describe(&actual)
        ));
    }
    for (position, (labels, values)) in expected.iter().enumerate() {
        let labels = labels.clone().unwrap_or_default();
        let found = if ordered {
            Some(&actual[position]).filter(|(actual_labels, _)| *actual_labels == labels)
        } else {
            actual
                .iter()
                .find(|(actual_labels, _)| *actual_labels == labels)
        };
        let Some((_, actual_values)) = found else {
            return Err(format!(
                "missing {labels} (at {position}); got {}",
                describe(&actual)
            ));
        };
        let expected_values: Vec<f64> = values.iter().flatten().copied().collect();
        if expected_values.len() != actual_values.len()
            || expected_values
                .iter()
                .zip(actual_values)
                .any(|(e, a)| !values_equal(*e, *a))
        {
            return Err(format!(
                "{labels}: expected {expected_values:?}, got {actual_values:?}"
            ));
        }
    }
    Ok(())
}

fn compare_range(
    expected: &[Expected],
    actual: Vec<(Labels, Vec<Option<f64>>)>,
) -> Result<(), String> {
    if expected.len() != actual.len() {
        let described: Vec<String> = actual
            .iter()
            .map(|(labels, values)| format!("{labels} {values:?}"))
            .collect();
        return Err(format!(
            "expected {} series, got {}: {}",
            expected.len(),
            actual.len(),
            described.join("; ")
        ));
    }
    for (labels, values) in expected {
        let labels = labels.clone().unwrap_or_default();
        let Some((_, actual_values)) = actual
            .iter()
            .find(|(actual_labels, _)| *actual_labels == labels)
        else {
            let described: Vec<String> = actual
                .iter()
                .map(|(labels, _)| labels.to_string())
                .collect();
            return Err(format!("missing {labels}; got {}", described.join(", ")));
        };
        let length = values.len().max(actual_values.len());
        for index in 0..length {
            let expected_value = values.get(index).copied().flatten();
            let actual_value = actual_values.get(index).copied().flatten();
            let equal = match (expected_value, actual_value) {
                (None, None) => true,
                (Some(e), Some(a)) => values_equal(e, a),
                _ => false,
            };
            if !equal {
                return Err(format!(
                    "{labels}: expected {values:?}, got {actual_values:?}"
                ));
            }
        }
    }
    Ok(())
}

fn describe(actual: &[(Labels, Vec<f64>)]) -> String {
    let mut text = String::new();
    for (labels, values) in actual {
        let values: Vec<String> = values.iter().map(|value| format_value(*value)).collect();
        let _ = write!(text, "{labels} {}; ", values.join(" "));
    }
    text
}

fn run_file(path: &Path) -> FileReport {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| {
        panic!("cannot read {}: {error}", path.display());
    });
    let engine = Engine::default();
    let mut storage = MemoryStorage::default();
    let mut native_histogram_metrics: Vec<String> = Vec::new();
    let mut report = FileReport::default();
    for command in parse_file(&text) {
        match command {
            Command::Clear => {
                storage.clear();
                native_histogram_metrics.clear();
            }
            Command::Load {
                interval_ms,
                lines,
                converts_to_native_histograms,
            } => match load(
                &mut storage,
                interval_ms,
                &lines,
                converts_to_native_histograms,
            ) {
                Ok(names) => native_histogram_metrics.extend(names),
                Err(error) => report.failures.push(format!("load failed: {error}")),
            },
            Command::Unsupported { line, text } => {
                report
                    .skipped
                    .push(format!("line {line}: unsupported command {text:?}"));
            }
            Command::Eval(case) => {
                let uses_native_histograms = case.expected.iter().any(|line| line.contains("{{"))
                    || native_histogram_metrics
                        .iter()
                        .any(|name| !name.is_empty() && mentions_metric(&case.query, name));
                let native_function = NATIVE_HISTOGRAM_FUNCTIONS
                    .iter()
                    .find(|function| case.query.contains(&format!("{function}(")));
                if let Some(function) = native_function {
                    report.skipped.push(format!(
                        "line {}: native histogram function {function}: {}",
                        case.line, case.query
                    ));
                    continue;
                }
                if uses_native_histograms {
                    report.skipped.push(format!(
                        "line {}: native histograms: {}",
                        case.line, case.query
                    ));
                    continue;
                }
                match run_case(&engine, &storage, &case) {
                    Ok(()) => report.passed += 1,
                    Err(reason) => {
                        report.failed += 1;
                        report
                            .failures
                            .push(format!("line {}: {}: {reason}", case.line, case.query));
                    }
                }
            }
        }
    }
    report
}

/// Functions defined only on native histograms.
const NATIVE_HISTOGRAM_FUNCTIONS: &[&str] = &[
    "histogram_count",
    "histogram_sum",
    "histogram_avg",
    "histogram_fraction",
    "histogram_stddev",
    "histogram_stdvar",
];

/// Whether `query` names the metric `name` as a whole identifier.
fn mentions_metric(query: &str, name: &str) -> bool {
    query.match_indices(name).any(|(index, _)| {
        let before = query[..index].chars().next_back();
        let after = query[index + name.len()..].chars().next();
        let is_identifier = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        !before.is_some_and(is_identifier) && !after.is_some_and(is_identifier)
    })
}

#[test]
fn prometheus_promql_acceptance_tests() {
    let directory = conformance_dir();
    assert!(
        directory.is_dir(),
        "conformance files not found at {}: clone the repo with shared/ as a sibling directory",
        directory.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("read conformance directory")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "test")
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.test files in {}",
        directory.display()
    );
    let verbose = std::env::var_os("SIGHTLINE_CONFORMANCE_VERBOSE").is_some();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut summary = String::new();
    for path in &files {
        let started = std::time::Instant::now();
        let report = run_file(path);
        if verbose {
            let _ = writeln!(summary, "ran {} in {:?}", path.display(), started.elapsed());
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            summary,
            "promql conformance {name}: {} passed / {} failed / {} skipped",
            report.passed,
            report.failed,
            report.skipped.len()
        );
        for reason in &report.skipped {
            let _ = writeln!(summary, "  skipped {name} {reason}");
        }
        if verbose {
            for failure in &report.failures {
                let _ = writeln!(summary, "  FAILED {name} {failure}");
            }
        }
        passed += report.passed;
        failed += report.failed;
        skipped += report.skipped.len();
    }
    let percentage = 100.0 * passed as f64 / (passed + failed).max(1) as f64;
    let _ = writeln!(
        summary,
        "promql conformance total: {passed} passed / {failed} failed / {skipped} skipped ({percentage:.1}% of the cases run, which exclude native histograms)"
    );
    // straight to the process' stderr, so the summary shows with or without
    // --nocapture
    let _ = std::io::Write::write_all(&mut std::io::stderr(), summary.as_bytes());
    assert!(
        passed >= PASSING_FLOOR,
        "conformance regressed: {passed} cases pass, the recorded floor is {PASSING_FLOOR}"
    );
}
