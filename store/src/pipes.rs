//! Pipes after a log query: `| stats`, `| timechart`, `| sort`, `| head`.
//!
//! ```text
//! severity:ERROR | stats count(), avg(duration_ms), p95(duration_ms) by service, error_type | sort -count | head 20
//! service:checkout | timechart span=1m count() by severity
//! ```
//!
//! The words before the first `|` are a log query as everywhere else; the
//! commands after it are answered over every record the query matches in
//! the time range (no sample), by tantivy's aggregations on the fast
//! columns of format 4 partitions (`columns`): a `terms` or `multi_terms`
//! aggregation per `by`, a `histogram` over the timestamp per `timechart`
//! span, and `avg`, `sum`, `min`, `max`, `percentiles` (DDSketch, 1%
//! relative error) and `cardinality` (HyperLogLog++) below them. Each
//! partition's intermediate results merge into one answer, across
//! partitions and stores, before the final table is made.
//!
//! Names follow the query language: `service`, `severity`, `resource.<key>`
//! and any other name an attribute. As Splunk's `stats`, a record without a
//! `by` field is not in any group. Bounded: at most [`MAX_GROUPS`] groups
//! (the rest are reported as cut off, largest groups kept), at most
//! [`MAX_TIMECHART_BUCKETS`] buckets per series, [`MAX_TIMECHART_SERIES`]
//! series, and tantivy's aggregation memory limit ([`MEMORY_LIMIT`]).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use tantivy::aggregation::{AggContextParams, AggregationLimitsGuard, agg_req::Aggregations};

use crate::error::{Result, StoreError};

/// Most groups a `stats ... by` answers (Elasticsearch's `size` and
/// `shard_size` of its terms aggregation): with fewer distinct groups in
/// every segment, counts are exact.
pub const MAX_GROUPS: u32 = 10_000;

/// Most time buckets of one `timechart` series.
pub const MAX_TIMECHART_BUCKETS: i64 = 2_000;

/// Most series (`by` values) of one `timechart`, largest first (Splunk's
/// `limit` defaults to 10).
pub const MAX_TIMECHART_SERIES: u32 = 10;

/// Memory the aggregations of one query may take.
pub const MEMORY_LIMIT: u64 = 256 * 1024 * 1024;

/// A log query with its pipes. Serializable: a cluster's root sends it to
/// the nodes that answer for fresh records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The whole query, as written.
    pub text: String,
    /// The log query before the first `|`.
    pub search: String,
    pub command: Command,
    /// `| sort -count, service`: columns, descending when `true`.
    pub sort: Vec<(String, bool)>,
    /// `| head N`.
    pub head: Option<usize>,
    /// Records without a `by` field are grouped under `""` instead of
    /// left out (for the Loki API's series, whose labels may be absent).
    pub keep_missing: bool,
    /// Most series of a `timechart` (the largest kept):
    /// [`MAX_TIMECHART_SERIES`] for the pipe syntax; the Loki API asks for
    /// more, at most [`MAX_GROUPS`].
    pub series_limit: u32,
    /// Where a `timechart`'s buckets start, modulo the span, in
    /// nanoseconds (0: at multiples of the span; the Loki API aligns them
    /// with its steps).
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// `stats <metrics> [by <fields>]`.
    Stats {
        metrics: Vec<Metric>,
        by: Vec<String>,
    },
    /// `timechart [span=<duration>] <metrics> [by <field>]`; `span` in
    /// nanoseconds, `None`: about 60 buckets over the time range. The
    /// syntax takes one `by` field; built in code, several (one series
    /// per combination).
    Timechart {
        span: Option<i64>,
        metrics: Vec<Metric>,
        by: Vec<String>,
    },
}

/// One column a command computes: `avg(duration_ms) as latency`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub function: Function,
    /// The field it reads (`count` reads none).
    pub field: Option<String>,
    /// Its column's name: `as <name>`, or `count`, `avg(duration_ms)`.
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Function {
    Count,
    Avg,
    Sum,
    Min,
    Max,
    /// `p95`, `median` (`p50`).
    Percentile(f64),
    /// `distinct`, `dc`: distinct values, estimated (HyperLogLog++).
    Distinct,
}

const FUNCTIONS: &str = "count, avg, sum, min, max, median, p1..p99, distinct (dc)";

/// Splits `text` at its first pipe: `None` when it has none.
pub fn parse(text: &str) -> Result<Option<Pipeline>> {
    let Some(at) = first_pipe(text) else {
        return Ok(None);
    };
    let search = text[..at].trim().to_string();
    let mut parser = Parser {
        text,
        tokens: tokenize(text, at)?,
        next: 0,
    };
    parser.pipeline(search).map(Some)
}

/// Whether `text` has pipes (a `|` outside quotes and regexes).
pub fn has_pipes(text: &str) -> bool {
    first_pipe(text).is_some()
}

/// The byte offset of the first `|` outside double quotes and `/regex/`.
fn first_pipe(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut regex = false;
    let mut escaped = false;
    let mut previous = ' ';
    for (at, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quoted {
            quoted = c != '"';
        } else if regex {
            regex = c != '/';
        } else if c == '"' {
            quoted = true;
        } else if c == '/' && previous == ':' {
            regex = true;
        } else if c == '|' {
            return Some(at);
        }
        previous = c;
    }
    None
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Pipe,
    Word(String),
    Open,
    Close,
    Comma,
    Equals,
    Minus,
    Plus,
}

/// The tokens of the pipes, each with its character position (1-based)
/// in the whole query.
fn tokenize(text: &str, from: usize) -> Result<Vec<(Token, usize)>> {
    let mut tokens = Vec::new();
    let mut chars = text[from..].char_indices().peekable();
    let column = |offset: usize| text[..from + offset].chars().count() + 1;
    while let Some((offset, c)) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '|' => Token::Pipe,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            '=' => Token::Equals,
            '-' => Token::Minus,
            '+' => Token::Plus,
            c if is_word_char(c) => {
                let mut word = String::from(c);
                while let Some(&(_, c)) = chars.peek() {
                    if !is_word_char(c) && c != '-' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                Token::Word(word)
            }
            other => {
                return Err(invalid(column(offset), format!("unexpected `{other}`")));
            }
        };
        tokens.push((token, column(offset)));
    }
    Ok(tokens)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '@' | '/')
}

fn invalid(column: usize, message: String) -> StoreError {
    StoreError::InvalidQuery(format!("at character {column}: {message}"))
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(Token, usize)>,
    next: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(token, _)| token)
    }

    /// The position of the next token (past the end: the end).
    fn column(&self) -> usize {
        self.tokens
            .get(self.next)
            .map_or(self.text.chars().count() + 1, |(_, column)| *column)
    }

    fn error(&self, message: impl Into<String>) -> StoreError {
        invalid(self.column(), message.into())
    }

    fn word(&mut self, what: &str) -> Result<String> {
        match self.peek() {
            Some(Token::Word(word)) => {
                let word = word.clone();
                self.next += 1;
                Ok(word)
            }
            Some(other) => Err(self.error(format!("expected {what}, found {}", describe(other)))),
            None => Err(self.error(format!("expected {what} at the end of the query"))),
        }
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word)) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn pipeline(&mut self, search: String) -> Result<Pipeline> {
        let mut command = None;
        let mut sort = Vec::new();
        let mut head = None;
        while self.eat(&Token::Pipe) {
            let column = self.column();
            let name = self.word("a command (stats, timechart, sort, head)")?;
            match name.to_ascii_lowercase().as_str() {
                "stats" | "timechart" if command.is_some() => {
                    return Err(invalid(
                        column,
                        "one `stats` or `timechart` per query".to_string(),
                    ));
                }
                "stats" => command = Some(self.stats()?),
                "timechart" => command = Some(self.timechart()?),
                "sort" if command.is_none() => {
                    return Err(invalid(column, "`sort` comes after `stats`".to_string()));
                }
                "sort" => sort = self.sort()?,
                "head" | "limit" if command.is_none() => {
                    return Err(invalid(column, "`head` comes after `stats`".to_string()));
                }
                "head" | "limit" => {
                    let column = self.column();
                    let count = self.word("a number of rows")?;
                    head = Some(count.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(
                        || invalid(column, format!("`{count}` is not a number of rows")),
                    )?);
                }
                other => {
                    return Err(invalid(
                        column,
                        format!(
                            "unknown command `{other}`; expected stats, timechart, sort or head"
                        ),
                    ));
                }
            }
            if let Some(token) = self.peek()
                && *token != Token::Pipe
            {
                return Err(self.error(format!("unexpected {}", describe(token))));
            }
        }
        let command =
            command.ok_or_else(|| self.error("a query with pipes needs `stats` or `timechart`"))?;
        let pipeline = Pipeline {
            text: self.text.to_string(),
            search,
            command,
            sort,
            head,
            keep_missing: false,
            series_limit: MAX_TIMECHART_SERIES,
            offset: 0,
        };
        let columns = pipeline.columns();
        for (name, _) in &pipeline.sort {
            if !columns.contains(name) {
                return Err(StoreError::InvalidQuery(format!(
                    "`sort {name}`: no such column; the columns are {}",
                    columns.join(", ")
                )));
            }
        }
        Ok(pipeline)
    }

    fn stats(&mut self) -> Result<Command> {
        let metrics = self.metrics()?;
        let mut by = Vec::new();
        if self.eat_word("by") {
            by = self.fields()?;
        }
        Ok(Command::Stats { metrics, by })
    }

    fn timechart(&mut self) -> Result<Command> {
        let mut span = None;
        if matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("span")) {
            self.next += 1;
            if !self.eat(&Token::Equals) {
                return Err(self.error("expected `=` after `span`"));
            }
            let column = self.column();
            let text = self.word("a duration such as 1m")?;
            let duration = humantime::parse_duration(&text)
                .ok()
                .and_then(|d| i64::try_from(d.as_nanos()).ok())
                .filter(|nanos| *nanos > 0)
                .ok_or_else(|| {
                    invalid(
                        column,
                        format!("`{text}` is not a duration such as 10s, 1m, 1h"),
                    )
                })?;
            span = Some(duration);
        }
        let metrics = self.metrics()?;
        let mut by = Vec::new();
        if self.eat_word("by") {
            let column = self.column();
            let fields = self.fields()?;
            if fields.len() > 1 {
                return Err(invalid(
                    column,
                    "`timechart` splits by one field".to_string(),
                ));
            }
            by = fields;
        }
        Ok(Command::Timechart { span, metrics, by })
    }

    fn metrics(&mut self) -> Result<Vec<Metric>> {
        let mut metrics = vec![self.metric()?];
        while self.eat(&Token::Comma) {
            metrics.push(self.metric()?);
        }
        let mut names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(StoreError::InvalidQuery(format!(
                "the column `{}` is computed twice; name one with `as`",
                twice[0]
            )));
        }
        Ok(metrics)
    }

    fn metric(&mut self) -> Result<Metric> {
        let column = self.column();
        let name = self.word("a function")?;
        let lower = name.to_ascii_lowercase();
        let function = match lower.as_str() {
            "count" => Function::Count,
            "avg" | "mean" => Function::Avg,
            "sum" => Function::Sum,
            "min" => Function::Min,
            "max" => Function::Max,
            "median" => Function::Percentile(50.0),
            "distinct" | "dc" | "distinct_count" => Function::Distinct,
            p if p.starts_with('p')
                && p[1..].parse::<f64>().is_ok_and(|n| n > 0.0 && n < 100.0) =>
            {
                Function::Percentile(p[1..].parse().unwrap_or(50.0))
            }
            _ => {
                return Err(invalid(
                    column,
                    format!("unknown function `{name}`; expected one of {FUNCTIONS}"),
                ));
            }
        };
        let mut field = None;
        if self.eat(&Token::Open) {
            if !self.eat(&Token::Close) {
                field = Some(self.field()?);
                if !self.eat(&Token::Close) {
                    return Err(self.error("expected `)`"));
                }
            }
        } else if function != Function::Count {
            return Err(self.error(format!("expected `(` and a field after `{name}`")));
        }
        if function == Function::Count && field.is_some() {
            return Err(invalid(
                column,
                "`count()` counts records; to count values of a field, use `distinct(field)` or filter with `field:*`"
                    .to_string(),
            ));
        }
        if function != Function::Count && field.is_none() {
            return Err(invalid(column, format!("`{name}()` needs a field")));
        }
        let mut name = match &field {
            None => "count".to_string(),
            Some(field) => format!("{lower}({field})"),
        };
        if self.eat_word("as") {
            name = self.word("a column name")?;
        }
        Ok(Metric {
            function,
            field,
            name,
        })
    }

    fn fields(&mut self) -> Result<Vec<String>> {
        let mut fields = vec![self.field()?];
        loop {
            if self.eat(&Token::Comma) {
                fields.push(self.field()?);
            } else if matches!(self.peek(), Some(Token::Word(_))) {
                // `by service error_type`, as Splunk allows.
                fields.push(self.field()?);
            } else {
                return Ok(fields);
            }
        }
    }

    fn field(&mut self) -> Result<String> {
        let column = self.column();
        let field = self.word("a field")?;
        column_of(&field).map_err(|message| invalid(column, message))?;
        Ok(field)
    }

    fn sort(&mut self) -> Result<Vec<(String, bool)>> {
        let mut keys = Vec::new();
        loop {
            let descending = if self.eat(&Token::Minus) {
                true
            } else {
                self.eat(&Token::Plus);
                false
            };
            let mut name = self.word("a column")?;
            // `sort -avg(duration_ms)`: the metric's column name.
            if self.eat(&Token::Open) {
                name.push('(');
                if let Some(Token::Word(inner)) = self.peek().cloned() {
                    self.next += 1;
                    name.push_str(&inner);
                }
                if !self.eat(&Token::Close) {
                    return Err(self.error("expected `)`"));
                }
                name.push(')');
            }
            keys.push((name, descending));
            if !self.eat(&Token::Comma) {
                return Ok(keys);
            }
        }
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Pipe => "`|`".into(),
        Token::Word(word) => format!("`{word}`"),
        Token::Open => "`(`".into(),
        Token::Close => "`)`".into(),
        Token::Comma => "`,`".into(),
        Token::Equals => "`=`".into(),
        Token::Minus => "`-`".into(),
        Token::Plus => "`+`".into(),
    }
}

/// Whether `field` can be grouped or computed on; the error says why not.
pub fn check_field(field: &str) -> Result<()> {
    column_of(field)
        .map(|_| ())
        .map_err(StoreError::InvalidQuery)
}

/// The fast column a field name of the query language reads.
fn column_of(field: &str) -> std::result::Result<String, String> {
    match field {
        "service" => Ok(format!("{}.service", crate::logs::COLUMNS)),
        "severity" | "level" => Ok("severity".into()),
        "timestamp" | "body" | "trace_id" | "span_id" | "source" | "stream" => Err(format!(
            "`{field}` cannot be grouped or computed on; use the service, the severity, a resource key or an attribute"
        )),
        "resource" | "attributes" => Err(format!("`{field}` needs a key: `{field}.<key>`")),
        _ => {
            let path = field.strip_prefix("attributes.").unwrap_or(field);
            let (prefix, path) = match path.strip_prefix("resource.") {
                Some(key) => ("resource", key),
                None => ("attributes", path),
            };
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("`{field}` is not a field name"));
            }
            Ok(format!("{}.{prefix}.{path}", crate::logs::COLUMNS))
        }
    }
}

impl Pipeline {
    /// The metrics the command computes.
    pub fn metrics(&self) -> &[Metric] {
        match &self.command {
            Command::Stats { metrics, .. } | Command::Timechart { metrics, .. } => metrics,
        }
    }

    /// The columns of the answer's table, in order.
    pub fn columns(&self) -> Vec<String> {
        let (prefix, metrics): (Vec<String>, &Vec<Metric>) = match &self.command {
            Command::Stats { metrics, by } => (by.clone(), metrics),
            Command::Timechart { metrics, by, .. } => (
                std::iter::once("_time".to_string())
                    .chain(by.iter().cloned())
                    .collect(),
                metrics,
            ),
        };
        prefix
            .into_iter()
            .chain(metrics.iter().map(|metric| metric.name.clone()))
            .collect()
    }

    /// The timechart's bucket width over `[start, end)`: its `span`, or
    /// about 60 buckets rounded to a whole unit.
    pub fn span(&self, start: i64, end: i64) -> Result<Option<i64>> {
        let Command::Timechart { span, .. } = &self.command else {
            return Ok(None);
        };
        let span = match span {
            Some(span) => *span,
            None => nice_span((end - start) / 60),
        };
        let buckets = (end - start + span - 1) / span;
        if buckets > MAX_TIMECHART_BUCKETS {
            return Err(StoreError::InvalidQuery(format!(
                "`span` gives {buckets} buckets over the time range, over the limit of {MAX_TIMECHART_BUCKETS}; use a wider span or a shorter range"
            )));
        }
        Ok(Some(span))
    }

    /// The aggregation request, in Elasticsearch's JSON as tantivy takes it.
    pub(crate) fn aggregations(&self, start: i64, end: i64) -> Result<Aggregations> {
        let metrics = |metrics: &[Metric]| -> Result<serde_json::Map<String, Value>> {
            let mut aggs = serde_json::Map::new();
            for (index, metric) in metrics.iter().enumerate() {
                let Some(field) = &metric.field else { continue };
                let column = column_of(field).map_err(StoreError::InvalidQuery)?;
                let request = match metric.function {
                    Function::Count => continue,
                    Function::Avg => json!({"avg": {"field": column}}),
                    Function::Sum => json!({"sum": {"field": column}}),
                    Function::Min => json!({"min": {"field": column}}),
                    Function::Max => json!({"max": {"field": column}}),
                    Function::Percentile(p) => {
                        json!({"percentiles": {"field": column, "percents": [p], "keyed": false}})
                    }
                    Function::Distinct => json!({"cardinality": {"field": column}}),
                };
                aggs.insert(format!("m{index}"), request);
            }
            Ok(aggs)
        };
        let request = match &self.command {
            Command::Stats { metrics: m, by } => {
                let subs = metrics(m)?;
                match by.as_slice() {
                    [] => Value::Object(subs),
                    [field] => {
                        let mut terms = json!({
                            "field": column_of(field).map_err(StoreError::InvalidQuery)?,
                            "size": MAX_GROUPS,
                            "segment_size": MAX_GROUPS,
                        });
                        if self.keep_missing {
                            terms["missing"] = json!("");
                        }
                        json!({"groups": {"terms": terms, "aggs": subs}})
                    }
                    fields => {
                        let terms = fields
                            .iter()
                            .map(|field| {
                                column_of(field)
                                    .map(|column| match self.keep_missing {
                                        true => json!({"field": column, "missing": ""}),
                                        false => json!({"field": column}),
                                    })
                                    .map_err(StoreError::InvalidQuery)
                            })
                            .collect::<Result<Vec<_>>>()?;
                        json!({"groups": {
                            "multi_terms": {
                                "terms": terms,
                                "size": MAX_GROUPS,
                                "segment_size": MAX_GROUPS,
                            },
                            "aggs": subs,
                        }})
                    }
                }
            }
            Command::Timechart { metrics: m, by, .. } => {
                let span = self.span(start, end)?.unwrap_or(1);
                let offset = self.offset.rem_euclid(span);
                let first = (start - offset).div_euclid(span) * span + offset;
                let last = (end - 1 - offset).div_euclid(span) * span + offset;
                let histogram = json!({"buckets": {
                    "histogram": {
                        "field": "timestamp",
                        "interval": span as f64,
                        "offset": offset as f64,
                        "min_doc_count": 0,
                        "extended_bounds": {"min": first as f64, "max": last as f64},
                    },
                    "aggs": metrics(m)?,
                }});
                let series_limit = self.series_limit.clamp(1, MAX_GROUPS);
                let term = |field: &String| -> Result<Value> {
                    let column = column_of(field).map_err(StoreError::InvalidQuery)?;
                    Ok(match self.keep_missing {
                        true => json!({"field": column, "missing": ""}),
                        false => json!({"field": column}),
                    })
                };
                match by.as_slice() {
                    [] => histogram,
                    [field] => {
                        let mut terms = term(field)?;
                        terms["size"] = json!(series_limit);
                        terms["segment_size"] = json!(MAX_GROUPS);
                        json!({"series": {"terms": terms, "aggs": histogram}})
                    }
                    fields => {
                        let terms = fields.iter().map(term).collect::<Result<Vec<_>>>()?;
                        json!({"series": {
                            "multi_terms": {
                                "terms": terms,
                                "size": series_limit,
                                "segment_size": MAX_GROUPS,
                            },
                            "aggs": histogram,
                        }})
                    }
                }
            }
        };
        serde_json::from_value(request).map_err(|error| {
            StoreError::InvalidQuery(format!("cannot build the aggregation: {error}"))
        })
    }
}

/// A span of whole seconds, minutes, hours or days near `nanos`.
fn nice_span(nanos: i64) -> i64 {
    const SECOND: i64 = 1_000_000_000;
    [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
    ]
    .into_iter()
    .map(|seconds| seconds * SECOND)
    .find(|span| *span >= nanos)
    .unwrap_or(nanos.max(SECOND))
}

/// The aggregation limits of one query.
pub(crate) fn context() -> AggContextParams {
    AggContextParams::new(
        AggregationLimitsGuard::new(Some(MEMORY_LIMIT), Some(MAX_GROUPS * 4)),
        crate::logs::log_index_tokenizers(),
    )
}

/// What one store answers to a pipeline: mergeable with other stores'
/// answers (a cluster's nodes send it as JSON), then made into the table
/// ([`Aggregated::finish`]).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Aggregated {
    /// Sent as CBOR in base64: its maps have keys JSON cannot have.
    #[serde(with = "cbor")]
    results: Option<IntermediateAggregationResults>,
    /// Records the query matched in the time range.
    pub matched: u64,
    /// Records of partitions written before aggregations (format 3 and
    /// older), which are not in the results.
    pub skipped: u64,
    /// The skipped partitions' days.
    pub skipped_days: Vec<String>,
}

/// The answer to a pipeline: a table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsTable {
    /// The columns: the `by` fields (a `timechart`'s `_time` first, in
    /// milliseconds since the epoch), then the metrics.
    pub columns: Vec<String>,
    /// How many of the columns are groups (`_time` and the `by` fields);
    /// the rest are metrics.
    pub groups: usize,
    pub rows: Vec<Vec<Value>>,
    /// Records the query matched in the time range.
    pub matched: u64,
    /// The timechart's bucket width in nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub span: Option<i64>,
    /// What makes the table incomplete: groups cut off, partitions skipped.
    pub warnings: Vec<String>,
}

impl Aggregated {
    /// Answers `query`'s pipes over `records` held in memory (a cluster
    /// owner's fresh records), indexed into a scratch store under `scratch`
    /// as a partition would index them.
    pub fn of_records(
        records: &[crate::model::LogRecord],
        pipeline: &Pipeline,
        start: i64,
        end: i64,
        scratch: &std::path::Path,
    ) -> Result<Aggregated> {
        let in_range: Vec<crate::model::LogRecord> = records
            .iter()
            .filter(|record| (start..end).contains(&record.timestamp))
            .cloned()
            .collect();
        if in_range.is_empty() {
            return Ok(Aggregated::default());
        }
        let store = crate::logs::LogStore::open_with(scratch, crate::Writers::Small)?;
        store.add(0, &in_range)?;
        store.commit(1)?;
        store.aggregate(pipeline, start, end)
    }

    /// Records of a partition that cannot aggregate (format 3 and older).
    pub(crate) fn skipped(records: u64, day: String) -> Aggregated {
        Aggregated {
            matched: records,
            skipped: records,
            skipped_days: vec![day],
            results: None,
        }
    }

    pub(crate) fn new(results: IntermediateAggregationResults, matched: u64) -> Aggregated {
        Aggregated {
            results: Some(results),
            matched,
            ..Aggregated::default()
        }
    }

    /// Adds another partition's or store's answer.
    pub fn merge(&mut self, other: Aggregated) -> Result<()> {
        self.matched += other.matched;
        self.skipped += other.skipped;
        self.skipped_days.extend(other.skipped_days);
        match (&mut self.results, other.results) {
            (Some(mine), Some(theirs)) => mine.merge_fruits(theirs).map_err(aggregation_error)?,
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        Ok(())
    }

    /// The table of `pipeline` over `[start, end)`.
    pub fn finish(self, pipeline: &Pipeline, start: i64, end: i64) -> Result<StatsTable> {
        let request = pipeline.aggregations(start, end)?;
        let results = match self.results {
            Some(results) => {
                let limits = AggregationLimitsGuard::new(Some(MEMORY_LIMIT), Some(MAX_GROUPS * 4));
                let finished = results
                    .into_final_result(request, limits)
                    .map_err(aggregation_error)?;
                serde_json::to_value(finished).unwrap_or_default()
            }
            None => Value::Null,
        };
        let mut warnings = Vec::new();
        let columns = pipeline.columns();
        let span = pipeline.span(start, end)?;
        let mut rows = match &pipeline.command {
            Command::Stats { metrics, by } => {
                if by.is_empty() {
                    vec![metric_values(metrics, &results, self.matched)]
                } else {
                    let groups = &results["groups"];
                    cut_off(groups, &mut warnings);
                    buckets(groups)
                        .map(|bucket| {
                            let keys: Vec<Value> = match &bucket["key"] {
                                Value::Array(keys) => keys.clone(),
                                key => vec![key.clone()],
                            };
                            let count = bucket["doc_count"].as_u64().unwrap_or(0);
                            keys.into_iter()
                                .chain(metric_values(metrics, bucket, count))
                                .collect()
                        })
                        .collect()
                }
            }
            Command::Timechart { metrics, by, .. } => {
                let span = span.unwrap_or(1);
                let offset = pipeline.offset.rem_euclid(span);
                let time_rows = |histogram: &Value, keys: &[Value]| -> Vec<Vec<Value>> {
                    buckets(&histogram["buckets"])
                        .filter_map(|bucket| {
                            let at = bucket["key"].as_f64()?;
                            // Keys are floats: back to the span's multiple.
                            let at = (((at - offset as f64) / span as f64).round() as i64) * span
                                + offset;
                            if at + span <= start || at >= end {
                                return None;
                            }
                            let count = bucket["doc_count"].as_u64().unwrap_or(0);
                            Some(
                                std::iter::once(json!(at / 1_000_000))
                                    .chain(keys.iter().cloned())
                                    .chain(metric_values(metrics, bucket, count))
                                    .collect(),
                            )
                        })
                        .collect()
                };
                if by.is_empty() {
                    time_rows(&results, &[])
                } else {
                    let series = &results["series"];
                    if series["sum_other_doc_count"].as_u64().unwrap_or(0) > 0 {
                        warnings.push(format!(
                            "the {} largest series of `{}` are shown",
                            pipeline.series_limit.clamp(1, MAX_GROUPS),
                            by.join(", ")
                        ));
                    }
                    buckets(series)
                        .flat_map(|bucket| {
                            let keys: Vec<Value> = match &bucket["key"] {
                                Value::Array(keys) => keys.clone(),
                                key => vec![key.clone()],
                            };
                            time_rows(bucket, &keys)
                        })
                        .collect()
                }
            }
        };
        if self.skipped > 0 {
            warnings.push(format!(
                "{} records of {} are not counted: their partitions were written by a version without aggregations",
                self.skipped,
                self.skipped_days.join(", ")
            ));
        }
        sort_rows(&mut rows, &columns, &pipeline.sort, &pipeline.command);
        if let Some(head) = pipeline.head {
            rows.truncate(head);
        }
        let groups = columns.len() - pipeline.metrics().len();
        Ok(StatsTable {
            columns,
            groups,
            rows,
            matched: self.matched,
            span,
            warnings,
        })
    }
}

/// Intermediate results as base64 of their CBOR (their maps have numbers
/// and other non-string keys).
mod cbor {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;

    pub(super) fn serialize<S: Serializer>(
        results: &Option<IntermediateAggregationResults>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        ciborium::into_writer(results, &mut bytes).map_err(serde::ser::Error::custom)?;
        STANDARD.encode(bytes).serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<IntermediateAggregationResults>, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = STANDARD.decode(text).map_err(D::Error::custom)?;
        ciborium::from_reader(bytes.as_slice()).map_err(D::Error::custom)
    }
}

/// The buckets of a bucket aggregation's result.
fn buckets(result: &Value) -> impl Iterator<Item = &Value> {
    result["buckets"].as_array().into_iter().flatten()
}

/// Warns when a terms aggregation did not return every group.
fn cut_off(groups: &Value, warnings: &mut Vec<String>) {
    let other = groups["sum_other_doc_count"].as_u64().unwrap_or(0);
    if other > 0 {
        warnings.push(format!(
            "over {MAX_GROUPS} groups: the largest are shown, {other} records are in groups cut off"
        ));
    }
    if groups["doc_count_error_upper_bound"].as_u64().unwrap_or(0) > 0 {
        warnings.push(
            "some segments had more groups than kept: counts may be low by up to the reported error"
                .to_string(),
        );
    }
}

/// A row's metric values from a bucket (or the top level), in order.
fn metric_values(metrics: &[Metric], bucket: &Value, count: u64) -> Vec<Value> {
    metrics
        .iter()
        .enumerate()
        .map(|(index, metric)| {
            let result = &bucket[format!("m{index}")];
            match metric.function {
                Function::Count => json!(count),
                Function::Percentile(_) => result["values"]
                    .as_array()
                    .and_then(|values| values.first())
                    .map_or(Value::Null, |entry| number(&entry["value"])),
                _ => number(&result["value"]),
            }
        })
        .collect()
}

/// A metric's value: `null` where no record had a value (or NaN).
fn number(value: &Value) -> Value {
    match value.as_f64() {
        Some(v) if v.is_finite() => {
            if v.fract() == 0.0 && v.abs() < 9e15 {
                json!(v as i64)
            } else {
                json!(v)
            }
        }
        _ => Value::Null,
    }
}

/// Orders rows by `sort`, or by default: `stats` by its groups, a
/// `timechart` by time and series.
fn sort_rows(
    rows: &mut [Vec<Value>],
    columns: &[String],
    sort: &[(String, bool)],
    command: &Command,
) {
    let keys: Vec<(usize, bool)> = if sort.is_empty() {
        let groups = match command {
            Command::Stats { by, .. } => by.len(),
            Command::Timechart { by, .. } => 1 + by.len(),
        };
        (0..groups).map(|index| (index, false)).collect()
    } else {
        sort.iter()
            .filter_map(|(name, descending)| {
                columns
                    .iter()
                    .position(|column| column == name)
                    .map(|index| (index, *descending))
            })
            .collect()
    };
    rows.sort_by(|a, b| {
        keys.iter()
            .map(|&(index, descending)| {
                let order = compare(&a[index], &b[index]);
                if descending { order.reverse() } else { order }
            })
            .find(|order| order.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

/// Numbers before strings before nulls; numbers by value.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Number(_), _) => Ordering::Less,
        (_, Value::Number(_)) => Ordering::Greater,
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        (x, y) => x.to_string().cmp(&y.to_string()),
    }
}

fn aggregation_error(error: tantivy::TantivyError) -> StoreError {
    match error {
        tantivy::TantivyError::AggregationError(error) => StoreError::TooLarge(format!(
            "the aggregation is over its limits ({error}); narrow the query or the time range, or group by fewer fields"
        )),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_parse_into_commands_with_columns() {
        let pipeline = parse(
            "severity:ERROR AND \"a | b\" | stats count(), avg(duration_ms), p95(duration_ms) as slow, distinct(user_id) by service, error_type | sort -count, service | head 20",
        )
        .unwrap()
        .unwrap();
        assert_eq!(pipeline.search, "severity:ERROR AND \"a | b\"");
        assert_eq!(
            pipeline.columns(),
            [
                "service",
                "error_type",
                "count",
                "avg(duration_ms)",
                "slow",
                "distinct(user_id)"
            ]
        );
        assert_eq!(
            pipeline.sort,
            [("count".to_string(), true), ("service".to_string(), false)]
        );
        assert_eq!(pipeline.head, Some(20));
        let Command::Stats { metrics, .. } = &pipeline.command else {
            panic!("stats expected");
        };
        assert_eq!(metrics[2].function, Function::Percentile(95.0));
        let chart = parse("service:checkout | timechart span=1m count by severity")
            .unwrap()
            .unwrap();
        assert_eq!(
            chart.command,
            Command::Timechart {
                span: Some(60_000_000_000),
                metrics: vec![Metric {
                    function: Function::Count,
                    field: None,
                    name: "count".into()
                }],
                by: vec!["severity".into()],
            }
        );
        assert_eq!(parse("body:\"a|b\" OR x").unwrap(), None);
        assert_eq!(parse("path:/a|b/").unwrap(), None);
    }

    #[test]
    fn bad_pipes_say_what_and_where() {
        for (query, expected) in [
            (
                "x | stats avgg(duration_ms)",
                "at character 11: unknown function `avgg`",
            ),
            (
                "x | stats count() by",
                "at character 21: expected a field at the end",
            ),
            (
                "x | chart count()",
                "at character 5: unknown command `chart`",
            ),
            ("x | stats avg()", "at character 11: `avg()` needs a field"),
            (
                "x | stats count() | sort -avg",
                "`sort avg`: no such column",
            ),
            ("x | head 3", "at character 5: `head` comes after `stats`"),
            (
                "x | stats count() | head many",
                "at character 26: `many` is not a number",
            ),
            (
                "x | timechart span=fast count()",
                "at character 20: `fast` is not a duration",
            ),
            (
                "x | stats count() by body",
                "at character 22: `body` cannot be grouped",
            ),
            (
                "x | stats count() ; drop",
                "at character 19: unexpected `;`",
            ),
            (
                "x | stats count(), count()",
                "the column `count` is computed twice",
            ),
            ("x |", "expected a command"),
        ] {
            let error = parse(query).unwrap_err().to_string();
            assert!(error.contains(expected), "{query}: {error}");
        }
    }

    #[test]
    fn a_timechart_span_is_bounded_and_defaults_to_about_60_buckets() {
        let chart = parse("x | timechart count()").unwrap().unwrap();
        let hour = 3_600_000_000_000;
        assert_eq!(chart.span(0, hour).unwrap(), Some(60_000_000_000));
        let fine = parse("x | timechart span=1s count()").unwrap().unwrap();
        let error = fine.span(0, hour).unwrap_err().to_string();
        assert!(error.contains("3600 buckets"), "{error}");
    }
}

#[cfg(test)]
mod store_tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::logs::LogStore;
    use crate::model::LogRecord;

    const HOUR: i64 = 3_600_000_000_000;
    /// 2023-11-14T00:00:00Z
    const T0: i64 = 19_675 * 24 * HOUR;

    /// 600 records over two days: three services, two namespaces, errors
    /// with error types, durations and users.
    fn records() -> Vec<LogRecord> {
        (0..600)
            .map(|i: i64| {
                let service = ["checkout", "payment", "gateway"][(i % 3) as usize];
                let error = i % 4 == 0;
                let mut attributes = json!({
                    "duration_ms": (i % 50) * 3 + 1,
                    "user_id": format!("u-{}", i % 37),
                    "http": {"status": if error { 500 } else { 200 }},
                });
                if error {
                    attributes["error_type"] =
                        json!(["card_declined", "timeout", "unavailable"][(i % 7 % 3) as usize]);
                }
                let namespace = if i % 5 == 0 { "shop-canary" } else { "shop" };
                let resource = json!({"k8s.namespace.name": namespace, "service.name": service});
                LogRecord {
                    // 36 hours from T0 + 10h: two UTC days.
                    timestamp: T0 + 10 * HOUR + i * (36 * HOUR / 600),
                    observed_timestamp: 0,
                    severity_text: if error { "ERROR" } else { "INFO" }.into(),
                    severity_number: if error { 17 } else { 9 },
                    body: format!("request {i} done"),
                    service: service.into(),
                    resource: Arc::new(resource.as_object().unwrap().clone()),
                    attributes: attributes.as_object().unwrap().clone(),
                    ..LogRecord::default()
                }
            })
            .collect()
    }

    /// The table of `query` over `stores`, each store's answer sent as
    /// JSON as a cluster's nodes send it.
    fn table(stores: &[&LogStore], query: &str, start: i64, end: i64) -> StatsTable {
        let pipeline = parse(query).unwrap().unwrap();
        let mut answer = Aggregated::default();
        for store in stores {
            let part = store.aggregate(&pipeline, start, end).unwrap();
            let sent = serde_json::to_string(&part).unwrap();
            answer.merge(serde_json::from_str(&sent).unwrap()).unwrap();
        }
        answer.finish(&pipeline, start, end).unwrap()
    }

    fn number(attributes: &serde_json::Map<String, Value>, key: &str) -> f64 {
        attributes[key].as_f64().unwrap()
    }

    #[test]
    fn stats_and_timecharts_count_every_matching_record_across_partitions_and_stores() {
        let records = records();
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store.add(0, &records).unwrap();
        store.commit(1).unwrap();
        assert_eq!(store.partition_names().len(), 2);
        let (start, end) = (T0, T0 + 48 * HOUR);

        // By service and error type, against counting the records.
        let found = table(
            &[&store],
            "severity:ERROR | stats count(), avg(duration_ms), sum(duration_ms), max(duration_ms), distinct(user_id) by service, error_type | sort -count, service, error_type",
            start,
            end,
        );
        let mut expected: BTreeMap<(String, String), Vec<&LogRecord>> = BTreeMap::new();
        for record in records.iter().filter(|r| r.severity_text == "ERROR") {
            let error = record.attributes["error_type"]
                .as_str()
                .unwrap()
                .to_string();
            expected
                .entry((record.service.clone(), error))
                .or_default()
                .push(record);
        }
        assert_eq!(found.rows.len(), expected.len());
        assert_eq!(found.matched, 150);
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
        let counts: Vec<u64> = found
            .rows
            .iter()
            .map(|row| row[2].as_u64().unwrap())
            .collect();
        assert!(
            counts.windows(2).all(|pair| pair[0] >= pair[1]),
            "sorted by -count"
        );
        for row in &found.rows {
            let key = (
                row[0].as_str().unwrap().to_string(),
                row[1].as_str().unwrap().to_string(),
            );
            let group = &expected[&key];
            let durations: Vec<f64> = group
                .iter()
                .map(|r| number(&r.attributes, "duration_ms"))
                .collect();
            let sum: f64 = durations.iter().sum();
            let users: BTreeSet<&str> = group
                .iter()
                .map(|r| r.attributes["user_id"].as_str().unwrap())
                .collect();
            assert_eq!(row[2], json!(group.len()), "{key:?}");
            assert!((row[3].as_f64().unwrap() - sum / durations.len() as f64).abs() < 1e-9);
            assert_eq!(row[4].as_f64().unwrap(), sum);
            assert_eq!(
                row[5].as_f64().unwrap(),
                durations.iter().cloned().fold(0.0, f64::max)
            );
            assert_eq!(row[6], json!(users.len()), "{key:?}: distinct users");
        }

        // Split into two stores (as a cluster's splits): the same table.
        let (first, second) = records.split_at(250);
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let parts: Vec<LogStore> = [first, second]
            .iter()
            .zip(&dirs)
            .map(|(part, dir)| {
                let store = LogStore::open(dir.path()).unwrap();
                store.add(0, part).unwrap();
                store.commit(1).unwrap();
                store
            })
            .collect();
        let query = "severity:ERROR | stats count(), sum(duration_ms) by service, error_type";
        assert_eq!(
            table(&[&parts[0], &parts[1]], query, start, end),
            table(&[&store], query, start, end)
        );

        // A resource key, a numeric attribute, no group, a median.
        let namespaces = table(
            &[&store],
            "| stats count() by resource.k8s.namespace.name",
            start,
            end,
        );
        assert_eq!(
            namespaces.rows,
            [
                vec![json!("shop"), json!(480)],
                vec![json!("shop-canary"), json!(120)]
            ]
        );
        let statuses = table(
            &[&store],
            "* | stats count() by http.status | sort -count",
            start,
            end,
        );
        assert_eq!(
            statuses.rows,
            [vec![json!(200), json!(450)], vec![json!(500), json!(150)]]
        );
        let all = table(
            &[&store],
            "service:payment | stats count(), p50(duration_ms), min(duration_ms)",
            start,
            end,
        );
        assert_eq!(all.rows[0][0], json!(200));
        let median = all.rows[0][1].as_f64().unwrap();
        assert!((60.0..=90.0).contains(&median), "median {median}");
        assert_eq!(all.rows[0][2], json!(1));

        // A timechart by service: hourly buckets, each record once.
        let chart = table(
            &[&store],
            "| timechart span=1h count() by service",
            start,
            end,
        );
        assert_eq!(chart.columns, ["_time", "service", "count"]);
        assert_eq!(chart.span, Some(HOUR));
        assert_eq!(
            chart.rows.len(),
            3 * 48,
            "every hour of every series, empty ones too"
        );
        let total: u64 = chart.rows.iter().map(|row| row[2].as_u64().unwrap()).sum();
        assert_eq!(total, 600);
        let first_hour = records
            .iter()
            .filter(|r| r.service == "payment" && r.timestamp < T0 + 11 * HOUR)
            .count();
        let row = chart
            .rows
            .iter()
            .find(|row| row[0] == json!((T0 + 10 * HOUR) / 1_000_000) && row[1] == json!("payment"))
            .unwrap();
        assert_eq!(row[2], json!(first_hour));

        // `head` keeps the first rows of the sorted table.
        let top = table(
            &[&store],
            "| stats count() by user_id | sort -count | head 3",
            start,
            end,
        );
        assert_eq!(top.rows.len(), 3);
    }
}
