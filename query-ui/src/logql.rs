//! LogQL, the query language of Grafana Loki, over Sightline's records.
//!
//! The grammar is Loki's (<https://grafana.com/docs/loki/latest/query/>),
//! a subset of it:
//! - log queries: a stream selector `{service_name="checkout",
//!   namespace=~"shop.*"}` (`=`, `!=`, `=~`, `!~`), line filters (`|=`,
//!   `!=`, `|~`, `!~`), parsers `| json` and `| logfmt`, label filters
//!   (`| status >= 500`, `| error_type="timeout"`, `=~`, `!~`, `==`, `!=`,
//!   `>`, `>=`, `<`, `<=`), `| line_format "{{.field}} ..."` (plain fields),
//!   `| drop` and `| keep` of label names;
//! - metric queries: `count_over_time`, `rate`, `bytes_over_time`,
//!   `bytes_rate`, and with `| unwrap <label>` `sum_over_time`,
//!   `avg_over_time`, `min_over_time`, `max_over_time`,
//!   `quantile_over_time(φ, ...)`; `sum`, `avg`, `min`, `max`, `count`,
//!   `topk`, `bottomk` with `by (...)` or `without (...)`; `vector(n)`,
//!   numbers, and `+ - * /` between them.
//!
//! A record's stream labels are its identity, with Loki's names:
//! `service_name`, `level` (the severity, lower case), `namespace`, `pod`,
//! `container`, `node_name`, `deployment`, `host` (see [`LABELS`]). Where
//! we differ from Loki: `| json` and `| logfmt` also see the attributes the
//! agent parsed (their dots become `_`), since a record keeps its message
//! rather than the original line; no `__error__` label (a value that does
//! not parse as a number fails a numeric filter); no `unpack`, `pattern`,
//! `regexp`, `decolorize`, `label_format`, `drop`/`keep`, `offset` or
//! duration/bytes literals in filters.

use std::collections::BTreeMap;

use regex::Regex;

/// The stream labels of a record, with the query language's field each
/// reads (`pipes` and search syntax).
pub(crate) const LABELS: &[(&str, &str)] = &[
    ("service_name", "service"),
    ("level", "severity"),
    ("namespace", "resource.k8s.namespace.name"),
    ("pod", "resource.k8s.pod.name"),
    ("container", "resource.k8s.container.name"),
    ("node_name", "resource.k8s.node.name"),
    ("deployment", "resource.k8s.deployment.name"),
    ("host", "resource.host.name"),
];

/// A label set: sorted, as Loki prints it.
pub(crate) type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Log(LogExpr),
    Metric(MetricExpr),
}

#[derive(Debug, Clone)]
pub(crate) struct LogExpr {
    pub matchers: Vec<Matcher>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MatchOp {
    Eq,
    Ne,
    Re,
    Nre,
}

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    Line {
        negated: bool,
        text: String,
        regex: Option<Regex>,
    },
    Json,
    Logfmt,
    Label(LabelFilter),
    LineFormat(String),
    /// `| drop a, b`: the labels removed.
    Drop(Vec<String>),
    /// `| keep a, b`: only these labels kept.
    Keep(Vec<String>),
}

#[derive(Debug, Clone)]
pub(crate) struct LabelFilter {
    label: String,
    op: Cmp,
    value: String,
    number: Option<f64>,
    regex: Option<Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Re,
    Nre,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RangeFn {
    Count,
    Rate,
    Bytes,
    BytesRate,
    Sum,
    Avg,
    Min,
    Max,
    Quantile(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Topk(usize),
    Bottomk(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone)]
pub(crate) enum MetricExpr {
    Range {
        function: RangeFn,
        log: LogExpr,
        range: i64,
        unwrap: Option<String>,
    },
    Aggregate {
        op: AggOp,
        without: bool,
        labels: Vec<String>,
        inner: Box<MetricExpr>,
    },
    /// A number: a scalar.
    Literal(f64),
    /// `vector(n)`: one series without labels.
    Vector(f64),
    Binary {
        op: BinOp,
        left: Box<MetricExpr>,
        right: Box<MetricExpr>,
    },
}

impl MetricExpr {
    /// Whether it is numbers only (no `vector`, no records): a scalar.
    pub(crate) fn is_scalar(&self) -> bool {
        match self {
            MetricExpr::Literal(_) => true,
            MetricExpr::Binary { left, right, .. } => left.is_scalar() && right.is_scalar(),
            _ => false,
        }
    }

    /// The log queries it reads, with the longest range: what to fetch.
    pub(crate) fn logs(&self) -> Vec<(&LogExpr, i64)> {
        match self {
            MetricExpr::Range { log, range, .. } => vec![(log, *range)],
            MetricExpr::Aggregate { inner, .. } => inner.logs(),
            MetricExpr::Literal(_) | MetricExpr::Vector(_) => Vec::new(),
            MetricExpr::Binary { left, right, .. } => {
                let mut logs = left.logs();
                logs.extend(right.logs());
                logs
            }
        }
    }
}

/// A parse error, at a column of the query (1-based), as Loki words it.
#[derive(Debug)]
pub(crate) struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Parsed<T> = Result<T, ParseError>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Number(f64),
    Sym(&'static str),
}

const SYMBOLS: &[&str] = &[
    "|=", "|~", "!=", "!~", "=~", "==", ">=", "<=", "{", "}", "(", ")", "[", "]", ",", "=", "|",
    ">", "<", "+", "-", "*", "/",
];

fn tokenize(text: &str) -> Parsed<Vec<(Token, usize)>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let column = |index: usize| index + 1;
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '"' || c == '`' {
            let quote = c;
            let mut value = String::new();
            let mut j = i + 1;
            let mut closed = false;
            while j < chars.len() {
                let (_, d) = chars[j];
                if d == quote {
                    closed = true;
                    break;
                }
                if d == '\\' && quote == '"' && j + 1 < chars.len() {
                    j += 1;
                    let escaped = chars[j].1;
                    value.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        other => other,
                    });
                } else {
                    value.push(d);
                }
                j += 1;
            }
            if !closed {
                return Err(ParseError(format!(
                    "parse error at line 1, col {}: unterminated string",
                    column(i)
                )));
            }
            tokens.push((Token::Str(value), column(i)));
            i = j + 1;
            continue;
        }
        if let Some(symbol) = SYMBOLS.iter().find(|s| text[at..].starts_with(**s)) {
            tokens.push((Token::Sym(symbol), column(i)));
            i += symbol.chars().count();
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '.' {
            let start = i;
            let mut word = String::new();
            while i < chars.len()
                && (chars[i].1.is_alphanumeric() || matches!(chars[i].1, '_' | '.' | ':'))
            {
                word.push(chars[i].1);
                i += 1;
            }
            let token = match word.parse::<f64>() {
                Ok(number) if !word.ends_with('.') => Token::Number(number),
                _ => Token::Word(word),
            };
            tokens.push((token, column(start)));
            continue;
        }
        return Err(ParseError(format!(
            "parse error at line 1, col {}: syntax error: unexpected {c:?}",
            column(i)
        )));
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    end: usize,
}

/// Parses a LogQL query.
pub(crate) fn parse(text: &str) -> Parsed<Expr> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        next: 0,
        end: text.chars().count() + 1,
    };
    let expr = if parser.peek() == Some(&Token::Sym("{")) {
        let log = parser.log_expr()?;
        if parser.peek().is_some() {
            // `{...} + 1` is not LogQL; anything else after a log query is.
            return Err(parser.error("unexpected"));
        }
        Expr::Log(log)
    } else {
        Expr::Metric(parser.metric_expr(0)?)
    };
    if parser.peek().is_some() {
        return Err(parser.error("unexpected"));
    }
    Ok(expr)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(token, _)| token)
    }

    fn column(&self) -> usize {
        self.tokens
            .get(self.next)
            .map_or(self.end, |(_, column)| *column)
    }

    fn error(&self, what: &str) -> ParseError {
        let found = match self.peek() {
            Some(Token::Word(word)) => format!("IDENTIFIER {word}"),
            Some(Token::Str(text)) => format!("STRING {text:?}"),
            Some(Token::Number(number)) => format!("NUMBER {number}"),
            Some(Token::Sym(symbol)) => symbol.to_string(),
            None => "end of input".to_string(),
        };
        ParseError(format!(
            "parse error at line 1, col {}: syntax error: {what} {found}",
            self.column()
        ))
    }

    fn eat(&mut self, symbol: &str) -> bool {
        if matches!(self.peek(), Some(Token::Sym(s)) if *s == symbol) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, symbol: &str) -> Parsed<()> {
        if self.eat(symbol) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{symbol}`, found")))
        }
    }

    fn word(&mut self) -> Parsed<String> {
        match self.peek() {
            Some(Token::Word(word)) => {
                let word = word.clone();
                self.next += 1;
                Ok(word)
            }
            _ => Err(self.error("expected an identifier, found")),
        }
    }

    fn string(&mut self) -> Parsed<String> {
        match self.peek() {
            Some(Token::Str(text)) => {
                let text = text.clone();
                self.next += 1;
                Ok(text)
            }
            _ => Err(self.error("expected a string, found")),
        }
    }

    fn number(&mut self) -> Parsed<f64> {
        match self.peek() {
            Some(Token::Number(number)) => {
                let number = *number;
                self.next += 1;
                Ok(number)
            }
            _ => Err(self.error("expected a number, found")),
        }
    }

    fn regex(&self, pattern: &str, column: usize) -> Parsed<Regex> {
        // Loki's matchers are anchored, as Prometheus's.
        Regex::new(&format!("^(?:{pattern})$")).map_err(|error| {
            ParseError(format!(
                "parse error at line 1, col {column}: invalid regular expression {pattern:?}: {error}"
            ))
        })
    }

    fn log_expr(&mut self) -> Parsed<LogExpr> {
        self.expect("{")?;
        let mut matchers = Vec::new();
        while !self.eat("}") {
            if !matchers.is_empty() {
                self.expect(",")?;
            }
            let label = self.word()?;
            let op = if self.eat("=") {
                MatchOp::Eq
            } else if self.eat("!=") {
                MatchOp::Ne
            } else if self.eat("=~") {
                MatchOp::Re
            } else if self.eat("!~") {
                MatchOp::Nre
            } else {
                return Err(self.error("expected =, !=, =~ or !~, found"));
            };
            let column = self.column();
            let value = self.string()?;
            let regex = match op {
                MatchOp::Re | MatchOp::Nre => Some(self.regex(&value, column)?),
                _ => None,
            };
            matchers.push(Matcher {
                label,
                op,
                value,
                regex,
            });
        }
        let selects = |m: &Matcher| match m.op {
            MatchOp::Eq => !m.value.is_empty(),
            MatchOp::Re => m.regex.as_ref().is_some_and(|r| !r.is_match("")),
            _ => false,
        };
        if !matchers.iter().any(selects) {
            return Err(ParseError(
                "parse error : queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will"
                    .into(),
            ));
        }
        let mut stages = Vec::new();
        loop {
            let column = self.column();
            if self.eat("|=") || self.eat("!=") || self.eat("|~") || self.eat("!~") {
                let Some((Token::Sym(op), _)) = self.tokens.get(self.next - 1).cloned() else {
                    unreachable!("a symbol was eaten");
                };
                let text = self.string()?;
                let regex = if op.ends_with('~') {
                    // Line regexes are not anchored.
                    Some(Regex::new(&text).map_err(|error| {
                        ParseError(format!(
                            "parse error at line 1, col {column}: invalid regular expression {text:?}: {error}"
                        ))
                    })?)
                } else {
                    None
                };
                stages.push(Stage::Line {
                    negated: op.starts_with('!'),
                    text,
                    regex,
                });
            } else if self.eat("|") {
                let column = self.column();
                let name = self.word()?;
                match name.as_str() {
                    "json" => stages.push(Stage::Json),
                    "logfmt" => stages.push(Stage::Logfmt),
                    "line_format" => stages.push(Stage::LineFormat(self.string()?)),
                    "unwrap" => {
                        // Only inside a range aggregation: the caller takes it.
                        self.next -= 2;
                        break;
                    }
                    "drop" | "keep" => {
                        let mut labels = vec![self.word()?];
                        while self.eat(",") {
                            labels.push(self.word()?);
                        }
                        if matches!(self.peek(), Some(Token::Sym("=" | "=~" | "!=" | "!~"))) {
                            return Err(ParseError(format!(
                                "parse error at line 1, col {column}: `| {name}` takes label names only in Sightline, without matchers"
                            )));
                        }
                        stages.push(match name.as_str() {
                            "drop" => Stage::Drop(labels),
                            _ => Stage::Keep(labels),
                        });
                    }
                    "unpack" | "pattern" | "regexp" | "label_format" | "decolorize"
                    | "line_format_json" => {
                        return Err(ParseError(format!(
                            "parse error at line 1, col {column}: `| {name}` is not supported by Sightline; supported: | json, | logfmt, | line_format, | drop, | keep, label filters"
                        )));
                    }
                    _ => stages.push(Stage::Label(self.label_filter(name, column)?)),
                }
            } else {
                break;
            }
        }
        Ok(LogExpr { matchers, stages })
    }

    fn label_filter(&mut self, label: String, column: usize) -> Parsed<LabelFilter> {
        let op = [
            ("==", Cmp::Eq),
            ("=~", Cmp::Re),
            ("!~", Cmp::Nre),
            ("!=", Cmp::Ne),
            (">=", Cmp::Ge),
            ("<=", Cmp::Le),
            ("=", Cmp::Eq),
            (">", Cmp::Gt),
            ("<", Cmp::Lt),
        ]
        .into_iter()
        .find(|(symbol, _)| self.eat(symbol))
        .map(|(_, op)| op)
        .ok_or_else(|| self.error(&format!("expected a label filter after `| {label}`, found")))?;
        let value_column = self.column();
        let (value, number) = match self.peek() {
            Some(Token::Number(_)) => {
                let number = self.number()?;
                (number.to_string(), Some(number))
            }
            _ => {
                let text = self.string()?;
                let number = text.parse::<f64>().ok();
                (text, number)
            }
        };
        if matches!(op, Cmp::Gt | Cmp::Ge | Cmp::Lt | Cmp::Le) && number.is_none() {
            return Err(ParseError(format!(
                "parse error at line 1, col {column}: `{label}` is compared with a number, `{value}` is not one"
            )));
        }
        let regex = match op {
            Cmp::Re | Cmp::Nre => Some(self.regex(&value, value_column)?),
            _ => None,
        };
        Ok(LabelFilter {
            label,
            op,
            value,
            number,
            regex,
        })
    }

    /// A metric expression with binary operators of at least `precedence`
    /// (0: `+ -`, 1: `* /`).
    fn metric_expr(&mut self, precedence: u8) -> Parsed<MetricExpr> {
        let mut left = self.metric_term()?;
        loop {
            let (op, level) = match self.peek() {
                Some(Token::Sym("+")) => (BinOp::Add, 0),
                Some(Token::Sym("-")) => (BinOp::Sub, 0),
                Some(Token::Sym("*")) => (BinOp::Mul, 1),
                Some(Token::Sym("/")) => (BinOp::Div, 1),
                _ => return Ok(left),
            };
            if level < precedence {
                return Ok(left);
            }
            self.next += 1;
            let right = self.metric_expr(level + 1)?;
            left = MetricExpr::Binary {
                op,
                left: Box::new(left),
                right: Box::new(right),
            };
        }
    }

    fn metric_term(&mut self) -> Parsed<MetricExpr> {
        if self.eat("(") {
            let inner = self.metric_expr(0)?;
            self.expect(")")?;
            return Ok(inner);
        }
        if let Some(Token::Number(number)) = self.peek() {
            let number = *number;
            self.next += 1;
            return Ok(MetricExpr::Literal(number));
        }
        let column = self.column();
        let name = self.word()?;
        let range_fn = match name.as_str() {
            "count_over_time" => Some(RangeFn::Count),
            "rate" => Some(RangeFn::Rate),
            "bytes_over_time" => Some(RangeFn::Bytes),
            "bytes_rate" => Some(RangeFn::BytesRate),
            "sum_over_time" => Some(RangeFn::Sum),
            "avg_over_time" => Some(RangeFn::Avg),
            "min_over_time" => Some(RangeFn::Min),
            "max_over_time" => Some(RangeFn::Max),
            "quantile_over_time" => Some(RangeFn::Quantile(0.0)),
            _ => None,
        };
        if let Some(mut function) = range_fn {
            self.expect("(")?;
            if let RangeFn::Quantile(_) = function {
                let phi = self.number()?;
                self.expect(",")?;
                function = RangeFn::Quantile(phi);
            }
            let log = self.log_expr()?;
            let mut unwrap = None;
            if self.eat("|") {
                let word = self.word()?;
                if word != "unwrap" {
                    return Err(self.error("expected unwrap, found"));
                }
                unwrap = Some(self.word()?);
            }
            let needs_unwrap = !matches!(
                function,
                RangeFn::Count | RangeFn::Rate | RangeFn::Bytes | RangeFn::BytesRate
            );
            if needs_unwrap != unwrap.is_some() {
                return Err(ParseError(format!(
                    "parse error at line 1, col {column}: `{name}` {} `| unwrap <label>`",
                    if needs_unwrap {
                        "needs"
                    } else {
                        "does not take"
                    }
                )));
            }
            self.expect("[")?;
            let duration_column = self.column();
            let text = match self.peek() {
                Some(Token::Word(word)) => word.clone(),
                Some(Token::Number(number)) => number.to_string(),
                _ => return Err(self.error("expected a duration, found")),
            };
            self.next += 1;
            let range = parse_duration(&text).ok_or_else(|| {
                ParseError(format!(
                    "parse error at line 1, col {duration_column}: `{text}` is not a duration"
                ))
            })?;
            self.expect("]")?;
            self.expect(")")?;
            return Ok(MetricExpr::Range {
                function,
                log,
                range,
                unwrap,
            });
        }
        if name == "vector" {
            self.expect("(")?;
            let value = self.number()?;
            self.expect(")")?;
            return Ok(MetricExpr::Vector(value));
        }
        let op = match name.as_str() {
            "sum" => AggOp::Sum,
            "avg" => AggOp::Avg,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            "count" => AggOp::Count,
            "topk" => AggOp::Topk(0),
            "bottomk" => AggOp::Bottomk(0),
            _ => {
                return Err(ParseError(format!(
                    "parse error at line 1, col {column}: syntax error: unexpected IDENTIFIER {name}"
                )));
            }
        };
        let mut grouping = self.grouping()?;
        self.expect("(")?;
        let op = match op {
            AggOp::Topk(_) | AggOp::Bottomk(_) => {
                let k = self.number()?;
                if k < 1.0 || k.fract() != 0.0 {
                    return Err(self.error("expected a positive integer k, found"));
                }
                self.expect(",")?;
                if matches!(op, AggOp::Topk(_)) {
                    AggOp::Topk(k as usize)
                } else {
                    AggOp::Bottomk(k as usize)
                }
            }
            op => op,
        };
        let inner = self.metric_expr(0)?;
        self.expect(")")?;
        if grouping.is_none() {
            grouping = self.grouping()?;
        }
        let (without, labels) = grouping.unwrap_or((false, Vec::new()));
        Ok(MetricExpr::Aggregate {
            op,
            without,
            labels,
            inner: Box::new(inner),
        })
    }

    fn grouping(&mut self) -> Parsed<Option<(bool, Vec<String>)>> {
        let without = match self.peek() {
            Some(Token::Word(word)) if word == "by" => false,
            Some(Token::Word(word)) if word == "without" => true,
            _ => return Ok(None),
        };
        self.next += 1;
        self.expect("(")?;
        let mut labels = Vec::new();
        while !self.eat(")") {
            if !labels.is_empty() {
                self.expect(",")?;
            }
            labels.push(self.word()?);
        }
        Ok(Some((without, labels)))
    }
}

/// `5m`, `1h30m`, `250ms`, or seconds.
pub(crate) fn parse_duration(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds > 0.0).then_some((seconds * 1e9) as i64);
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .filter(|nanos| *nanos > 0)
}

/// One record as LogQL sees it: its time, labels and line.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub timestamp: i64,
    pub labels: Labels,
    pub line: String,
}

/// The stream labels of a record.
pub(crate) fn stream_labels(record: &sightline_store::LogRecord) -> Labels {
    let mut labels = Labels::new();
    if !record.service.is_empty() {
        labels.insert("service_name".into(), record.service.clone());
    }
    if !record.severity_text.is_empty() {
        labels.insert("level".into(), record.severity_text.to_ascii_lowercase());
    }
    for (label, field) in LABELS {
        if let Some(key) = field.strip_prefix("resource.")
            && let Some(value) = record.resource.get(key).and_then(|v| v.as_str())
            && !value.is_empty()
        {
            labels.insert(label.to_string(), value.to_string());
        }
    }
    labels
}

impl Matcher {
    pub(crate) fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.label).map_or("", String::as_str);
        match self.op {
            MatchOp::Eq => value == self.value,
            MatchOp::Ne => value != self.value,
            MatchOp::Re => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::Nre => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }
}

impl LogExpr {
    /// The part of the selector the search can do first, in the log query
    /// language (a superset of what matches: the rest is checked on each
    /// record).
    pub(crate) fn prefilter(&self) -> String {
        let mut clauses = Vec::new();
        for matcher in &self.matchers {
            let Some((_, field)) = LABELS.iter().find(|(label, _)| *label == matcher.label) else {
                continue;
            };
            if matcher.value.is_empty() || !matches!(matcher.op, MatchOp::Eq | MatchOp::Ne) {
                continue;
            }
            let quoted = format!(
                "{field}:\"{}\"",
                matcher.value.replace('\\', "\\\\").replace('"', "\\\"")
            );
            clauses.push(match matcher.op {
                MatchOp::Eq => quoted,
                _ => format!("NOT {quoted}"),
            });
        }
        if clauses.iter().all(|clause| clause.starts_with("NOT ")) && !clauses.is_empty() {
            clauses.insert(0, "*".into());
        }
        clauses.join(" AND ")
    }

    /// Whether the selector alone decides (no stage, every matcher in the
    /// prefilter): then the aggregations can answer.
    pub(crate) fn is_plain_selector(&self) -> bool {
        // `| drop __error__` (Grafana's log volume sends it) removes no
        // stream label.
        let no_op = |stage: &Stage| match stage {
            Stage::Drop(names) => names
                .iter()
                .all(|name| !LABELS.iter().any(|(label, _)| label == name)),
            _ => false,
        };
        self.stages.iter().all(no_op)
            && self.matchers.iter().all(|m| {
                LABELS.iter().any(|(label, _)| *label == m.label)
                    && matches!(m.op, MatchOp::Eq | MatchOp::Ne)
                    && !m.value.is_empty()
            })
    }

    /// The record as this query sees it, or `None` where it is filtered out.
    pub(crate) fn process(&self, record: &sightline_store::LogRecord) -> Option<Entry> {
        let mut labels = stream_labels(record);
        if !self.matchers.iter().all(|m| m.matches(&labels)) {
            return None;
        }
        let mut line = record.body.clone();
        for stage in &self.stages {
            match stage {
                Stage::Line {
                    negated,
                    text,
                    regex,
                } => {
                    let found = match regex {
                        Some(regex) => regex.is_match(&line),
                        None => line.contains(text.as_str()),
                    };
                    if found == *negated {
                        return None;
                    }
                }
                Stage::Json => {
                    extract_attributes(record, &mut labels);
                    if let Ok(serde_json::Value::Object(fields)) =
                        serde_json::from_str::<serde_json::Value>(&line)
                    {
                        flatten("", &fields, &mut labels);
                    }
                }
                Stage::Logfmt => {
                    extract_attributes(record, &mut labels);
                    for (key, value) in logfmt(&line) {
                        labels.insert(sanitize(&key), value);
                    }
                }
                Stage::Label(filter) => {
                    if !filter.matches(&labels) {
                        return None;
                    }
                }
                Stage::LineFormat(template) => line = format_line(template, &labels),
                Stage::Drop(names) => {
                    for name in names {
                        labels.remove(name);
                    }
                }
                Stage::Keep(names) => labels.retain(|label, _| names.contains(label)),
            }
        }
        Some(Entry {
            timestamp: record.timestamp,
            labels,
            line,
        })
    }
}

impl LabelFilter {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.label).map_or("", String::as_str);
        let number = || value.parse::<f64>().ok();
        match self.op {
            Cmp::Eq => match (self.number, number()) {
                (Some(want), Some(have)) => want == have,
                _ => value == self.value,
            },
            Cmp::Ne => match (self.number, number()) {
                (Some(want), Some(have)) => want != have,
                _ => value != self.value,
            },
            Cmp::Re => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            Cmp::Nre => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            Cmp::Gt | Cmp::Ge | Cmp::Lt | Cmp::Le => {
                let (Some(want), Some(have)) = (self.number, number()) else {
                    return false;
                };
                match self.op {
                    Cmp::Gt => have > want,
                    Cmp::Ge => have >= want,
                    Cmp::Lt => have < want,
                    _ => have <= want,
                }
            }
        }
    }
}

// A label name as Loki makes it from a field.
use sightline_vocab::names::underscored as sanitize;

/// The record's parsed attributes as labels (nested keys joined by `_`),
/// and its correlation ids.
fn extract_attributes(record: &sightline_store::LogRecord, labels: &mut Labels) {
    flatten("", &record.attributes, labels);
    for (name, id) in [
        ("request_id", &record.request_id),
        ("trace_id", &record.trace_id),
        ("span_id", &record.span_id),
    ] {
        if let Some(id) = id {
            labels.insert(name.into(), id.clone());
        }
    }
}

fn flatten(prefix: &str, fields: &serde_json::Map<String, serde_json::Value>, labels: &mut Labels) {
    for (key, value) in fields {
        let name = if prefix.is_empty() {
            sanitize(key)
        } else {
            format!("{prefix}_{}", sanitize(key))
        };
        match value {
            serde_json::Value::Object(inner) => flatten(&name, inner, labels),
            serde_json::Value::String(text) => {
                labels.insert(name, text.clone());
            }
            serde_json::Value::Null => {}
            other => {
                labels.insert(name, other.to_string());
            }
        }
    }
}

/// `key=value key2="quoted value"` pairs.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return pairs;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        } else if key.is_empty() {
            chars.next();
            continue;
        }
        if !key.is_empty() {
            pairs.push((key, value));
        }
    }
}

/// `line_format`'s template with `{{.label}}` (and `{{ .label }}`)
/// replaced by the labels' values.
fn format_line(template: &str, labels: &Labels) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let inner = rest[open + 2..open + close].trim();
        if let Some(name) = inner.strip_prefix('.') {
            out.push_str(labels.get(name).map_or("", String::as_str));
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// One series of a metric query: its labels and points (time in
/// nanoseconds, value).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// Evaluates `expr` at `times`, with `entries` the processed records of
/// each of its log queries (in [`MetricExpr::logs`] order).
pub(crate) fn evaluate(
    expr: &MetricExpr,
    times: &[i64],
    entries: &mut std::vec::IntoIter<Vec<Entry>>,
) -> Vec<Series> {
    match expr {
        MetricExpr::Literal(value) | MetricExpr::Vector(value) => vec![Series {
            labels: Labels::new(),
            points: times.iter().map(|t| (*t, *value)).collect(),
        }],
        MetricExpr::Range {
            function,
            range,
            unwrap,
            ..
        } => range_series(
            *function,
            *range,
            unwrap.as_deref(),
            entries.next().unwrap_or_default(),
            times,
        ),
        MetricExpr::Aggregate {
            op,
            without,
            labels,
            inner,
        } => aggregate(
            *op,
            *without,
            labels,
            evaluate(inner, times, entries),
            times,
        ),
        MetricExpr::Binary { op, left, right } => {
            let left = evaluate(left, times, entries);
            let right = evaluate(right, times, entries);
            binary(*op, left, right)
        }
    }
}

fn range_series(
    function: RangeFn,
    range: i64,
    unwrap: Option<&str>,
    entries: Vec<Entry>,
    times: &[i64],
) -> Vec<Series> {
    // Each series' samples, oldest first.
    let mut by_series: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    for mut entry in entries {
        let value = match unwrap {
            Some(label) => match entry
                .labels
                .remove(label)
                .and_then(|v| v.parse::<f64>().ok())
            {
                Some(value) => value,
                None => continue,
            },
            None => entry.line.len() as f64,
        };
        by_series
            .entry(entry.labels)
            .or_default()
            .push((entry.timestamp, value));
    }
    let seconds = range as f64 / 1e9;
    by_series
        .into_iter()
        .filter_map(|(labels, mut samples)| {
            samples.sort_by_key(|(t, _)| *t);
            let points: Vec<(i64, f64)> = times
                .iter()
                .filter_map(|&t| {
                    // Loki's window: (t - range, t].
                    let from = samples.partition_point(|(at, _)| *at <= t - range);
                    let to = samples.partition_point(|(at, _)| *at <= t);
                    let window = &samples[from..to];
                    if window.is_empty() {
                        return None;
                    }
                    let values = window.iter().map(|(_, v)| *v);
                    let count = window.len() as f64;
                    let value = match function {
                        RangeFn::Count => count,
                        RangeFn::Rate => count / seconds,
                        RangeFn::Bytes | RangeFn::Sum => values.sum(),
                        RangeFn::BytesRate => values.sum::<f64>() / seconds,
                        RangeFn::Avg => values.sum::<f64>() / count,
                        RangeFn::Min => values.fold(f64::INFINITY, f64::min),
                        RangeFn::Max => values.fold(f64::NEG_INFINITY, f64::max),
                        RangeFn::Quantile(phi) => quantile(phi, values.collect()),
                    };
                    Some((t, value))
                })
                .collect();
            (!points.is_empty()).then_some(Series { labels, points })
        })
        .collect()
}

/// Prometheus' `quantile`: linear interpolation between closest ranks.
fn quantile(phi: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    if phi < 0.0 {
        return f64::NEG_INFINITY;
    }
    if phi > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(f64::total_cmp);
    let rank = phi * (values.len() - 1) as f64;
    let lower = rank.floor() as usize;
    let upper = rank.ceil() as usize;
    let weight = rank - lower as f64;
    values[lower] * (1.0 - weight) + values[upper] * weight
}

fn aggregate(
    op: AggOp,
    without: bool,
    by: &[String],
    series: Vec<Series>,
    times: &[i64],
) -> Vec<Series> {
    let group_of = |labels: &Labels| -> Labels {
        labels
            .iter()
            .filter(|(name, _)| by.contains(name) != without)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    };
    if let AggOp::Topk(k) | AggOp::Bottomk(k) = op {
        // Per time, the k largest (smallest) of each group keep their labels.
        let mut kept: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        for &t in times {
            let mut groups: BTreeMap<Labels, Vec<(&Labels, f64)>> = BTreeMap::new();
            for s in &series {
                if let Some((_, v)) = s.points.iter().find(|(at, _)| *at == t) {
                    groups
                        .entry(group_of(&s.labels))
                        .or_default()
                        .push((&s.labels, *v));
                }
            }
            for (_, mut members) in groups {
                members.sort_by(|a, b| {
                    let order = b.1.total_cmp(&a.1);
                    if matches!(op, AggOp::Topk(_)) {
                        order
                    } else {
                        order.reverse()
                    }
                });
                for (labels, v) in members.into_iter().take(k) {
                    kept.entry(labels.clone()).or_default().push((t, v));
                }
            }
        }
        return kept
            .into_iter()
            .map(|(labels, points)| Series { labels, points })
            .collect();
    }
    let mut groups: BTreeMap<Labels, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for s in series {
        let group = groups.entry(group_of(&s.labels)).or_default();
        for (t, v) in s.points {
            group.entry(t).or_default().push(v);
        }
    }
    groups
        .into_iter()
        .map(|(labels, points)| Series {
            labels,
            points: points
                .into_iter()
                .map(|(t, values)| {
                    let value = match op {
                        AggOp::Sum => values.iter().sum(),
                        AggOp::Avg => values.iter().sum::<f64>() / values.len() as f64,
                        AggOp::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
                        AggOp::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        _ => values.len() as f64,
                    };
                    (t, value)
                })
                .collect(),
        })
        .collect()
}

fn binary(op: BinOp, left: Vec<Series>, right: Vec<Series>) -> Vec<Series> {
    let apply = |a: f64, b: f64| match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
    };
    let scalar = |series: &[Series]| series.len() == 1 && series[0].labels.is_empty();
    let combine = |a: &Series, b: &Series, labels: Labels| {
        let points: Vec<(i64, f64)> = a
            .points
            .iter()
            .filter_map(|(t, x)| {
                b.points
                    .iter()
                    .find(|(u, _)| u == t)
                    .map(|(_, y)| (*t, apply(*x, *y)))
            })
            .collect();
        Series { labels, points }
    };
    if scalar(&right) {
        return left
            .iter()
            .map(|a| combine(a, &right[0], a.labels.clone()))
            .collect();
    }
    if scalar(&left) {
        return right
            .iter()
            .map(|b| combine(&left[0], b, b.labels.clone()))
            .collect();
    }
    // One-to-one on identical labels.
    left.iter()
        .filter_map(|a| {
            right
                .iter()
                .find(|b| b.labels == a.labels)
                .map(|b| combine(a, b, a.labels.clone()))
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sightline_store::LogRecord;

    fn record(
        at: i64,
        service: &str,
        severity: &str,
        body: &str,
        attributes: serde_json::Value,
    ) -> LogRecord {
        let resource =
            json!({"k8s.namespace.name": "shop", "k8s.pod.name": format!("{service}-1")});
        LogRecord {
            timestamp: at,
            severity_text: severity.into(),
            body: body.into(),
            service: service.into(),
            resource: std::sync::Arc::new(resource.as_object().unwrap().clone()),
            attributes: attributes.as_object().unwrap().clone(),
            ..LogRecord::default()
        }
    }

    fn log(query: &str) -> LogExpr {
        match parse(query).unwrap() {
            Expr::Log(log) => log,
            Expr::Metric(metric) => panic!("a log query expected: {metric:?}"),
        }
    }

    #[test]
    fn selectors_filters_and_parsers_pick_records_as_loki_does() {
        let payment = record(
            1,
            "payment",
            "ERROR",
            "charge failed: card_declined",
            json!({"status": 502, "user": {"id": "u-7"}}),
        );
        let gateway = record(
            2,
            "gateway",
            "INFO",
            "level=info msg=\"GET /api\" status=200 took=12ms",
            json!({}),
        );
        let cases = [
            (r#"{service_name="payment"}"#, [true, false]),
            (
                r#"{namespace="shop", service_name=~"pay.*|gate.*"}"#,
                [true, true],
            ),
            (
                r#"{namespace="shop", service_name!="payment"}"#,
                [false, true],
            ),
            (r#"{namespace="shop"} |= "failed""#, [true, false]),
            (r#"{namespace="shop"} != "failed""#, [false, true]),
            (
                r#"{namespace="shop"} |~ "card_(declined|expired)""#,
                [true, false],
            ),
            (
                r#"{namespace="shop"} | json | status >= 500"#,
                [true, false],
            ),
            (
                r#"{namespace="shop"} | json | user_id="u-7""#,
                [true, false],
            ),
            (
                r#"{namespace="shop"} | logfmt | status == 200 | took=~"1.ms""#,
                [false, true],
            ),
            (r#"{level="error"}"#, [true, false]),
        ];
        for (query, expected) in cases {
            let expr = log(query);
            let found = [&payment, &gateway].map(|r| expr.process(r).is_some());
            assert_eq!(found, expected, "{query}");
        }
        let formatted = log(
            r#"{service_name="payment"} | json | line_format "{{.user_id}} got {{ .status }}""#,
        )
        .process(&payment)
        .unwrap();
        assert_eq!(formatted.line, "u-7 got 502");
        assert_eq!(formatted.labels["service_name"], "payment");
        assert_eq!(formatted.labels["pod"], "payment-1");
        assert_eq!(
            log(r#"{service_name="payment", namespace!="x"}"#).prefilter(),
            r#"service:"payment" AND NOT resource.k8s.namespace.name:"x""#
        );
    }

    #[test]
    fn bad_queries_say_where_as_loki_does() {
        for (query, expected) in [
            (
                r#"{service_name="payment""#,
                "col 24: syntax error: expected `,`, found end of input",
            ),
            (
                r#"{service_name=~".*"}"#,
                "queries require at least one regexp or equality matcher",
            ),
            (
                r#"{a="b"} | pattern "<_>""#,
                "col 11: `| pattern` is not supported",
            ),
            (r#"rate({a="b"}[5x])"#, "col 14: `5x` is not a duration"),
            (r#"sum_over_time({a="b"}[5m])"#, "needs `| unwrap <label>`"),
            (r#"{a="b"} | status > "high""#, "is compared with a number"),
            (r#"{a=~"(b"}"#, "col 5: invalid regular expression"),
            (r#"frobnicate({a="b"})"#, "unexpected IDENTIFIER frobnicate"),
        ] {
            let error = parse(query).unwrap_err().to_string();
            assert!(error.contains(expected), "{query}: {error}");
        }
    }

    #[test]
    fn metric_queries_count_over_windows_and_aggregate() {
        const S: i64 = 1_000_000_000;
        let records: Vec<LogRecord> = (0..60)
            .map(|i| {
                record(
                    i * S,
                    ["a", "b"][(i % 2) as usize],
                    "INFO",
                    "hello",
                    json!({"ms": i}),
                )
            })
            .collect();
        let run = |query: &str, times: &[i64]| {
            let Expr::Metric(expr) = parse(query).unwrap() else {
                panic!("metric")
            };
            let entries: Vec<Vec<Entry>> = expr
                .logs()
                .into_iter()
                .map(|(log, _)| records.iter().filter_map(|r| log.process(r)).collect())
                .collect();
            evaluate(&expr, times, &mut entries.into_iter())
        };
        let times = [10 * S, 20 * S];
        let counted = run(
            r#"sum by (service_name) (count_over_time({namespace="shop"}[10s]))"#,
            &times,
        );
        assert_eq!(counted.len(), 2);
        // (0s, 10s]: 1..=10, five of each service.
        assert_eq!(counted[0].labels["service_name"], "a");
        assert_eq!(counted[0].points, [(10 * S, 5.0), (20 * S, 5.0)]);
        let rate = run(r#"sum(rate({namespace="shop"}[10s]))"#, &times);
        assert_eq!(rate[0].points, [(10 * S, 1.0), (20 * S, 1.0)]);
        assert!(rate[0].labels.is_empty());
        let bytes = run(
            r#"sum(bytes_over_time({namespace="shop"}[10s]))"#,
            &[10 * S],
        );
        assert_eq!(bytes[0].points, [(10 * S, 50.0)]);
        let p = run(
            r#"max(quantile_over_time(0.5, {namespace="shop"} | json | unwrap ms [10s]))"#,
            &[10 * S],
        );
        assert_eq!(p[0].points, [(10 * S, 6.0)]);
        let top = run(
            r#"topk(1, sum by (service_name) (count_over_time({namespace="shop"}[11s])))"#,
            &[11 * S],
        );
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].labels["service_name"], "b");
        let health = run("vector(1)+vector(1)", &[5 * S]);
        assert_eq!(
            health,
            [Series {
                labels: Labels::new(),
                points: vec![(5 * S, 2.0)]
            }]
        );
        let ratio = run(
            r#"sum(count_over_time({service_name="a"}[10s])) / sum(count_over_time({namespace="shop"}[10s])) * 100"#,
            &[10 * S],
        );
        assert_eq!(ratio[0].points, [(10 * S, 50.0)]);
    }
}
