//! The common subset of Prometheus' alert templates (Go `text/template`):
//! `{{ $labels.job }}`, `{{ $value }}`, `{{ $externalLabels.x }}`,
//! `{{ $externalURL }}`, the `.Labels`/`.Value` forms, pipelines
//! (`{{ $value | humanize }}`), `printf`, `humanize`, `humanize1024`,
//! `humanizePercentage`, `humanizeDuration`, `toUpper`, `toLower`, and the
//! `{{-`/`-}}` whitespace trims. Anything else is a template error; the
//! caller keeps the raw text and reports the error.

use std::collections::BTreeMap;

/// What a template can refer to.
#[derive(Debug, Clone, Default)]
pub struct TemplateData<'a> {
    pub labels: Option<&'a BTreeMap<String, String>>,
    pub value: f64,
    pub external_labels: Option<&'a BTreeMap<String, String>>,
    pub external_url: &'a str,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

#[derive(Debug, Clone)]
enum Operand {
    Labels(Option<String>),
    Value,
    ExternalLabels(Option<String>),
    ExternalUrl,
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone)]
enum Command {
    Operand(Operand),
    Call(String, Vec<Operand>),
}

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Num(f64),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Str(text) => text.clone(),
            Val::Num(number) => format_g(*number, -1),
        }
    }

    fn number(&self) -> Result<f64, String> {
        match self {
            Val::Num(number) => Ok(*number),
            Val::Str(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("cannot convert {text:?} to a number")),
        }
    }
}

const FUNCTIONS: &[&str] = &[
    "humanize",
    "humanize1024",
    "humanizePercentage",
    "humanizeDuration",
    "printf",
    "toUpper",
    "toLower",
];

/// Checks that `text` parses.
pub fn check(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

/// Expands `text` with `data`.
pub fn expand(text: &str, data: &TemplateData<'_>) -> Result<String, String> {
    if !text.contains("{{") {
        return Ok(text.to_string());
    }
    let mut out = String::new();
    for node in parse(text)? {
        match node {
            Node::Text(text) => out.push_str(&text),
            Node::Action(commands) => {
                let mut current: Option<Val> = None;
                for command in &commands {
                    current = Some(run(command, current.take(), data)?);
                }
                if let Some(value) = current {
                    out.push_str(&value.text());
                }
            }
        }
    }
    Ok(out)
}

fn parse(text: &str) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        let mut inner_start = open + 2;
        if rest[inner_start..].starts_with('-') {
            before = before.trim_end();
            inner_start += 1;
        }
        let close = rest[inner_start..]
            .find("}}")
            .ok_or_else(|| format!("unclosed action at {:?}", &rest[open..]))?
            + inner_start;
        let mut inner = &rest[inner_start..close];
        let mut after = &rest[close + 2..];
        if inner.ends_with('-') {
            inner = &inner[..inner.len() - 1];
            after = after.trim_start();
        }
        if !before.is_empty() {
            nodes.push(Node::Text(before.to_string()));
        }
        let inner = inner.trim();
        if !inner.starts_with("/*") {
            nodes.push(Node::Action(parse_pipeline(inner)?));
        }
        rest = after;
    }
    if !rest.is_empty() {
        nodes.push(Node::Text(rest.to_string()));
    }
    Ok(nodes)
}

fn parse_pipeline(text: &str) -> Result<Vec<Command>, String> {
    let mut commands = Vec::new();
    for part in split_outside_quotes(text, '|') {
        let words = split_words(part.trim())?;
        let Some((first, args)) = words.split_first() else {
            return Err(format!("empty command in {text:?}"));
        };
        if FUNCTIONS.contains(&first.as_str()) {
            let args = args
                .iter()
                .map(|word| parse_operand(word))
                .collect::<Result<_, _>>()?;
            commands.push(Command::Call(first.clone(), args));
        } else if !args.is_empty() {
            return Err(format!("function {first:?} not defined"));
        } else if !commands.is_empty() {
            return Err(format!("{first:?} cannot take the pipeline's value"));
        } else {
            commands.push(Command::Operand(parse_operand(first)?));
        }
    }
    if commands.is_empty() {
        return Err("empty action".to_string());
    }
    Ok(commands)
}

fn parse_operand(word: &str) -> Result<Operand, String> {
    let field = |prefix: &str| -> Option<Option<String>> {
        let rest = word.strip_prefix(prefix)?;
        if rest.is_empty() {
            Some(None)
        } else {
            rest.strip_prefix('.').map(|key| Some(key.to_string()))
        }
    };
    if let Some(key) = field("$labels").or_else(|| field(".Labels")) {
        return Ok(Operand::Labels(key));
    }
    if let Some(key) = field("$externalLabels").or_else(|| field(".ExternalLabels")) {
        return Ok(Operand::ExternalLabels(key));
    }
    match word {
        "$value" | ".Value" => return Ok(Operand::Value),
        "$externalURL" | ".ExternalURL" => return Ok(Operand::ExternalUrl),
        _ => {}
    }
    if let Some(quoted) = word
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        return Ok(Operand::Str(
            quoted.replace("\\\"", "\"").replace("\\n", "\n"),
        ));
    }
    if let Some(quoted) = word
        .strip_prefix('`')
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return Ok(Operand::Str(quoted.to_string()));
    }
    if let Ok(number) = word.parse::<f64>() {
        return Ok(Operand::Num(number));
    }
    Err(format!("unsupported template expression {word:?}"))
}

fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (index, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => quote = Some(c),
            None if c == separator => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            None => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' || c == '`' {
            word.push(c);
            chars.next();
            let mut closed = false;
            while let Some(next) = chars.next() {
                word.push(next);
                if next == '\\' && c == '"' {
                    if let Some(escaped) = chars.next() {
                        word.push(escaped);
                    }
                } else if next == c {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(format!("unterminated quoted string in {text:?}"));
            }
        } else {
            while let Some(&next) = chars.peek() {
                if next.is_whitespace() {
                    break;
                }
                word.push(next);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

fn operand_value(operand: &Operand, data: &TemplateData<'_>) -> Val {
    let lookup = |map: Option<&BTreeMap<String, String>>, key: &Option<String>| match key {
        Some(key) => Val::Str(
            map.and_then(|map| map.get(key))
                .cloned()
                .unwrap_or_default(),
        ),
        None => Val::Str(format!(
            "map[{}]",
            map.into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )),
    };
    match operand {
        Operand::Labels(key) => lookup(data.labels, key),
        Operand::ExternalLabels(key) => lookup(data.external_labels, key),
        Operand::Value => Val::Num(data.value),
        Operand::ExternalUrl => Val::Str(data.external_url.to_string()),
        Operand::Str(text) => Val::Str(text.clone()),
        Operand::Num(number) => Val::Num(*number),
    }
}

fn run(command: &Command, piped: Option<Val>, data: &TemplateData<'_>) -> Result<Val, String> {
    let (name, operands) = match command {
        Command::Operand(operand) => return Ok(operand_value(operand, data)),
        Command::Call(name, operands) => (name, operands),
    };
    let mut args: Vec<Val> = operands
        .iter()
        .map(|operand| operand_value(operand, data))
        .collect();
    args.extend(piped);
    let single = |args: &[Val]| -> Result<f64, String> {
        match args {
            [value] => value.number(),
            _ => Err(format!("{name} takes one argument, got {}", args.len())),
        }
    };
    Ok(match name.as_str() {
        "humanize" => Val::Str(humanize(single(&args)?, 1000.0)),
        "humanize1024" => Val::Str(humanize(single(&args)?, 1024.0)),
        "humanizePercentage" => Val::Str(format!("{}%", format_g(single(&args)? * 100.0, 4))),
        "humanizeDuration" => Val::Str(humanize_duration(single(&args)?)),
        "toUpper" | "toLower" => match args.as_slice() {
            [value] if name == "toUpper" => Val::Str(value.text().to_uppercase()),
            [value] => Val::Str(value.text().to_lowercase()),
            _ => return Err(format!("{name} takes one argument")),
        },
        "printf" => {
            let Some((format, rest)) = args.split_first() else {
                return Err("printf needs a format".to_string());
            };
            Val::Str(printf(&format.text(), rest)?)
        }
        other => return Err(format!("function {other:?} not defined")),
    })
}

/// Go's `%.{precision}g` (shortest representation when `precision` < 0).
pub(crate) fn format_g(value: f64, precision: i32) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if value == 0.0 {
        return "0".to_string();
    }
    if precision < 0 {
        let exponent = value.abs().log10().floor() as i32;
        if !(-4..21).contains(&exponent) {
            return trim_exponent(&format!("{value:e}"));
        }
        return format!("{value}");
    }
    let scientific = format!("{:.*e}", (precision - 1).max(0) as usize, value);
    let exponent: i32 = scientific
        .split('e')
        .nth(1)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    if exponent < -4 || exponent >= precision {
        let (mantissa, _) = scientific.split_once('e').unwrap_or((&scientific, ""));
        let mantissa = trim_zeros(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        let decimals = (precision - 1 - exponent).max(0) as usize;
        trim_zeros(&format!("{value:.decimals$}")).to_string()
    }
}

fn trim_exponent(text: &str) -> String {
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => text.to_string(),
    }
}

fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

fn humanize(value: f64, base: f64) -> String {
    if value == 0.0 || value.is_nan() || value.is_infinite() {
        return format_g(value, 4);
    }
    let (big, small): (&[&str], &[&str]) = if base == 1024.0 {
        (&["", "ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"], &[""])
    } else {
        (
            &["", "k", "M", "G", "T", "P", "E", "Z", "Y"],
            &["", "m", "u", "n", "p", "f", "a", "z", "y"],
        )
    };
    let mut scaled = value;
    if value.abs() >= 1.0 || small.len() == 1 {
        let mut index = 0;
        while scaled.abs() >= base && index + 1 < big.len() {
            scaled /= base;
            index += 1;
        }
        format!("{}{}", format_g(scaled, 4), big[index])
    } else {
        let mut index = 0;
        while scaled.abs() < 1.0 && index + 1 < small.len() {
            scaled *= 1000.0;
            index += 1;
        }
        format!("{}{}", format_g(scaled, 4), small[index])
    }
}

fn humanize_duration(seconds: f64) -> String {
    if seconds.is_nan() || seconds.is_infinite() {
        return format_g(seconds, 4);
    }
    if seconds.abs() < 1.0 {
        if seconds == 0.0 {
            return "0s".to_string();
        }
        for (scale, unit) in [(1e3, "ms"), (1e6, "us"), (1e9, "ns")] {
            let scaled = seconds * scale;
            if scaled.abs() >= 1.0 || unit == "ns" {
                return format!("{}{unit}", format_g(scaled, 4));
            }
        }
    }
    let sign = if seconds < 0.0 { "-" } else { "" };
    let total = seconds.abs();
    let whole = total as i64;
    let (days, hours, minutes, secs) = (
        whole / 86_400,
        whole / 3_600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if days != 0 {
        format!("{sign}{days}d {hours}h {minutes}m {secs}s")
    } else if hours != 0 {
        format!("{sign}{hours}h {minutes}m {secs}s")
    } else if minutes != 0 {
        format!("{sign}{minutes}m {secs}s")
    } else {
        format!("{sign}{}s", format_g(total, 4))
    }
}

fn printf(format: &str, args: &[Val]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&next) = chars.peek() {
            if next.is_ascii_digit() || next == '.' || next == '-' || next == '+' {
                spec.push(next);
                chars.next();
            } else {
                break;
            }
        }
        let Some(verb) = chars.next() else {
            return Err(format!("printf: format {format:?} ends with %"));
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        let precision: Option<usize> = spec
            .split_once('.')
            .and_then(|(_, precision)| precision.parse().ok());
        let text = match verb {
            's' | 'v' => arg.text(),
            'q' => format!("{:?}", arg.text()),
            'd' => format!("{}", arg.number()?.trunc() as i64),
            'f' | 'F' => format!("{:.*}", precision.unwrap_or(6), arg.number()?),
            'e' => format!("{:.*e}", precision.unwrap_or(6), arg.number()?),
            'g' => format_g(arg.number()?, precision.map_or(-1, |p| p as i32)),
            other => return Err(format!("printf: verb %{other} not supported")),
        };
        out.push_str(&text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_with(text: &str, value: f64) -> Result<String, String> {
        let labels = BTreeMap::from([
            ("job".to_string(), "api".to_string()),
            ("instance".to_string(), "host:9090".to_string()),
        ]);
        let external = BTreeMap::from([("cluster".to_string(), "eu".to_string())]);
        expand(
            text,
            &TemplateData {
                labels: Some(&labels),
                value,
                external_labels: Some(&external),
                external_url: "http://ui",
            },
        )
    }

    #[test]
    fn prometheus_template_forms_expand() {
        let cases = [
            (
                "{{ $labels.job }} on {{$labels.instance}}",
                1.0,
                "api on host:9090",
            ),
            ("value {{ $value }}", 0.25, "value 0.25"),
            ("{{ .Labels.job }}={{ .Value }}", 3.0, "api=3"),
            (
                "{{ $externalLabels.cluster }} {{ $externalURL }}",
                0.0,
                "eu http://ui",
            ),
            ("{{ $value | humanize }}", 1234567.0, "1.235M"),
            ("{{ humanize $value }}", 0.00123, "1.23m"),
            ("{{ $value | humanize1024 }}", 2048.0, "2ki"),
            ("{{ $value | humanizePercentage }}", 0.1234, "12.34%"),
            ("{{ $value | humanizeDuration }}", 3725.0, "1h 2m 5s"),
            ("{{ $value | humanizeDuration }}", 0.25, "250ms"),
            ("{{ printf \"%.2f\" $value }}", 1.23456, "1.23"),
            ("{{ $value | printf \"%.1f%%\" }}", 99.44, "99.4%"),
            ("{{ $labels.job | toUpper }}", 0.0, "API"),
            ("a {{- $labels.job -}} b", 0.0, "aapib"),
            ("missing:{{ $labels.nope }}.", 0.0, "missing:."),
        ];
        for (text, value, expected) in cases {
            assert_eq!(expand_with(text, value).as_deref(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn unsupported_templates_are_errors() {
        for text in [
            "{{ $labels.job ",
            "{{ range $labels }}",
            "{{ $value | nope }}",
            "{{ humanize \"x\" }}",
        ] {
            assert!(expand_with(text, 1.0).is_err(), "{text}");
        }
    }
}
