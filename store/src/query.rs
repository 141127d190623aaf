//! The log query language: tantivy's query grammar, with two fixes users of
//! Kibana and Quickwit expect, and errors that say where the problem is.
//!
//! - `a AND NOT b` excludes `b` (tantivy alone turns the pure negation into a
//!   clause that matches nothing);
//! - a query of only negations (`NOT debug`) means "everything except";
//! - `ship*`, `*clined` and `sh?pped` are wildcards on single terms (tantivy
//!   alone only knows prefixes of phrases); without a field they search the
//!   message;
//! - a field name that is not in the schema is a parsed attribute:
//!   `user_id:42` and `http.status:[500 TO 599]` mean `attributes.user_id:42`
//!   and `attributes.http.status:[500 TO 599]`.

use tantivy::query::{Query, QueryParser};
use tantivy::query_grammar::{
    Occur, UserInputAst, UserInputBound, UserInputLeaf, parse_query_lenient,
};
use tantivy::schema::Schema;

/// The JSON field that holds a record's parsed fields.
const ATTRIBUTES: &str = "attributes";

use crate::error::{Result, StoreError};
use crate::model::LogRecord;

mod limits;

/// Parses `text` against the index's fields.
pub(crate) fn parse(parser: &QueryParser, schema: &Schema, text: &str) -> Result<Box<dyn Query>> {
    // the grammar recurses per nesting level: refuse a bomb before it does
    limits::check(text)?;
    // tantivy 0.27 asserts (panics) on a NUL in a JSON field path; found by
    // fuzzing. NUL has no place in a query: refuse it with its position.
    if let Some(position) = text.find('\0') {
        return Err(StoreError::InvalidQuery(format!(
            "NUL character at position {position} of {text:?}"
        )));
    }
    let (ast, errors) = parse_query_lenient(text);
    if let Some(error) = errors.first() {
        return Err(StoreError::InvalidQuery(format!(
            "{} at position {} of {text:?}",
            error.message, error.pos
        )));
    }
    parser
        .build_query_from_user_input_ast(normalize(ast, schema, true)?)
        .map_err(|error| StoreError::InvalidQuery(error.to_string()))
}

fn is_pure_negation(clauses: &[(Option<Occur>, UserInputAst)]) -> bool {
    !clauses.is_empty()
        && clauses
            .iter()
            .all(|(occur, _)| *occur == Some(Occur::MustNot))
}

fn qualify(field: &mut Option<String>, schema: &Schema) {
    if let Some(name) = field
        && schema.find_field(name).is_none()
    {
        *name = format!("{ATTRIBUTES}.{name}");
    }
}

fn normalize(ast: UserInputAst, schema: &Schema, top_level: bool) -> Result<UserInputAst> {
    let clauses = match ast {
        UserInputAst::Clause(clauses) => clauses,
        UserInputAst::Boost(inner, boost) => {
            return Ok(UserInputAst::Boost(
                Box::new(normalize(*inner, schema, false)?),
                boost,
            ));
        }
        UserInputAst::Leaf(mut leaf) => {
            if let UserInputLeaf::Literal(literal) = leaf.as_ref()
                && let Some(pattern) = wildcard_pattern(&literal.phrase, literal.prefix)
            {
                // A wildcard without a field searches the message.
                let field = Some(literal.field_name.clone().unwrap_or_else(|| "body".into()));
                *leaf = UserInputLeaf::Regex { field, pattern };
            }
            match leaf.as_mut() {
                UserInputLeaf::Literal(literal) => qualify(&mut literal.field_name, schema),
                UserInputLeaf::Range { field, .. }
                | UserInputLeaf::Set { field, .. }
                | UserInputLeaf::Regex { field, .. } => qualify(field, schema),
                UserInputLeaf::Exists { field } => {
                    let mut qualified = Some(std::mem::take(field));
                    qualify(&mut qualified, schema);
                    *field = qualified.unwrap_or_default();
                }
                UserInputLeaf::All => {}
            }
            let leaf = match *leaf {
                UserInputLeaf::Range {
                    field: Some(field),
                    lower,
                    upper,
                } if is_json_field(schema, &field) => range_of_one_kind(field, lower, upper)?,
                leaf => UserInputAst::Leaf(Box::new(leaf)),
            };
            return if top_level {
                normalize(UserInputAst::Clause(vec![(None, leaf)]), schema, true)
            } else {
                Ok(leaf)
            };
        }
    };
    let mut flattened = Vec::with_capacity(clauses.len());
    for (occur, child) in clauses {
        match normalize(child, schema, false)? {
            // `x AND (NOT y)`: lift the negation into this clause.
            UserInputAst::Clause(inner)
                if is_pure_negation(&inner) && occur != Some(Occur::MustNot) =>
            {
                flattened.extend(inner);
            }
            child => flattened.push((occur, child)),
        }
    }
    if top_level && is_pure_negation(&flattened) {
        flattened.push((
            Some(Occur::Must),
            UserInputAst::Leaf(Box::new(UserInputLeaf::All)),
        ));
    }
    Ok(UserInputAst::Clause(flattened))
}

/// Whether `field` (after [`qualify`]) names a path in one of the schema's
/// JSON fields, where tantivy infers a value's type from its text.
fn is_json_field(schema: &Schema, field: &str) -> bool {
    schema.find_field(field).is_some_and(|(field, _path)| {
        schema.get_field_entry(field).field_type().value_type() == tantivy::schema::Type::Json
    })
}

/// What tantivy makes of a range bound on a JSON field, in its order of
/// attempts: an RFC 3339 date, a number (of one of three types), a boolean,
/// else text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundKind {
    Date,
    Number(tantivy::columnar::NumericalType),
    Bool,
    Text,
}

impl BoundKind {
    fn of(bound: &UserInputBound) -> Option<BoundKind> {
        let text = match bound {
            UserInputBound::Inclusive(text) | UserInputBound::Exclusive(text) if text != "*" => {
                text
            }
            _ => return None,
        };
        let kind =
            if time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .is_ok()
            {
                BoundKind::Date
            } else if let Ok(number) = text.parse::<tantivy::columnar::NumericalValue>() {
                BoundKind::Number(number.normalize().numerical_type())
            } else if text.parse::<bool>().is_ok() {
                BoundKind::Bool
            } else {
                BoundKind::Text
            };
        Some(kind)
    }

    fn describe(self) -> &'static str {
        match self {
            BoundKind::Date => "a date",
            BoundKind::Number(_) => "a number",
            BoundKind::Bool => "a boolean",
            BoundKind::Text => "text",
        }
    }
}

/// A range on an attribute whose bounds tantivy can compare. tantivy 0.27
/// takes the value type of a JSON range from one bound and unwraps the
/// other as that type, so `http.status:[500 TO 599.5]` (an integer and a
/// float) or `[500 TO =99]` panicked in the search (found by fuzzing).
/// Numbers of two types become two one-sided ranges, which mean the same;
/// bounds of two kinds (a number and text, a date and a number) are an
/// error that names both.
fn range_of_one_kind(
    field: String,
    lower: UserInputBound,
    upper: UserInputBound,
) -> Result<UserInputAst> {
    let range = |lower, upper| {
        UserInputAst::Leaf(Box::new(UserInputLeaf::Range {
            field: Some(field.clone()),
            lower,
            upper,
        }))
    };
    let (Some(lower_kind), Some(upper_kind)) = (BoundKind::of(&lower), BoundKind::of(&upper))
    else {
        return Ok(range(lower, upper));
    };
    match (lower_kind, upper_kind) {
        (lower_kind, upper_kind) if lower_kind == upper_kind => Ok(range(lower, upper)),
        (BoundKind::Number(_), BoundKind::Number(_)) => Ok(UserInputAst::Clause(vec![
            (Some(Occur::Must), range(lower, UserInputBound::Unbounded)),
            (Some(Occur::Must), range(UserInputBound::Unbounded, upper)),
        ])),
        (lower_kind, upper_kind) => Err(StoreError::InvalidQuery(format!(
            "the range on {} has bounds of two kinds: {} is {} and {} is {}; use bounds of one kind",
            field.strip_prefix("attributes.").unwrap_or(&field),
            bound_text(&lower),
            lower_kind.describe(),
            bound_text(&upper),
            upper_kind.describe(),
        ))),
    }
}

fn bound_text(bound: &UserInputBound) -> &str {
    match bound {
        UserInputBound::Inclusive(text) | UserInputBound::Exclusive(text) => text,
        UserInputBound::Unbounded => "*",
    }
}

/// A regex for a single-term wildcard (`ship*`, `*clined`, `sh?pped`), or
/// `None` when the literal is not one. Terms are indexed lowercased.
fn wildcard_pattern(phrase: &str, prefix: bool) -> Option<String> {
    let is_wildcard = prefix || phrase.contains(['*', '?']);
    if !is_wildcard || phrase.is_empty() || phrase.contains(char::is_whitespace) {
        return None;
    }
    let mut pattern = String::with_capacity(phrase.len() + 4);
    for character in phrase.to_lowercase().chars() {
        match character {
            '*' => pattern.push_str(".*"),
            '?' => pattern.push('.'),
            other => pattern.push_str(&regex_syntax::escape(other.encode_utf8(&mut [0; 4]))),
        }
    }
    if prefix {
        pattern.push_str(".*");
    }
    Some(pattern)
}

/// A log query compiled into a predicate over one [`LogRecord`], for
/// records that are not in an index yet (log-derived metrics count records
/// as they are ingested).
///
/// It takes the same syntax as [`parse`] with the same normalization, and
/// matches as the index would: `body`, parsed attributes and free text are
/// split into lowercase alphanumeric tokens (tantivy's `default` tokenizer;
/// a phrase matches consecutive tokens), `severity`, `service`, the ids and
/// `resource.x` match whole values, case-sensitively; numbers compare as
/// numbers. Differences: slop is ignored, and a negation nested under `OR`
/// means "everything except" where tantivy would match nothing.
#[derive(Debug, Clone)]
pub struct LogMatcher {
    root: Node,
}

#[derive(Debug, Clone)]
enum Node {
    All,
    Clause {
        must: Vec<Node>,
        should: Vec<Node>,
        must_not: Vec<Node>,
    },
    /// One term or a phrase (consecutive terms), already tokenized for
    /// tokenized fields, the literal text for whole-value fields.
    Literal {
        field: Target,
        text: String,
        tokens: Vec<String>,
    },
    Regex {
        field: Target,
        regex: regex::Regex,
    },
    Range {
        field: Target,
        lower: std::ops::Bound<String>,
        upper: std::ops::Bound<String>,
    },
    Set {
        field: Target,
        elements: Vec<String>,
    },
    Exists {
        field: Target,
    },
}

/// Which part of a record a leaf looks at.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// No field: the message and the parsed attributes.
    Default,
    Body,
    Severity,
    SeverityNumber,
    Service,
    Timestamp,
    TraceId,
    SpanId,
    RequestId,
    /// `attributes.<path>` (dots may be nested objects or part of a key).
    Attribute(String),
    /// `resource.<path>`.
    Resource(String),
    /// A field no record has (`stream`, `source`).
    Nothing,
}

impl Target {
    fn from_name(field: Option<&str>) -> Target {
        let Some(name) = field else {
            return Target::Default;
        };
        match name {
            "body" => Target::Body,
            "severity" => Target::Severity,
            "severity_number" => Target::SeverityNumber,
            "service" => Target::Service,
            "timestamp" => Target::Timestamp,
            "trace_id" => Target::TraceId,
            "span_id" => Target::SpanId,
            "request_id" => Target::RequestId,
            "attributes" => Target::Attribute(String::new()),
            _ => {
                if let Some(path) = name.strip_prefix("attributes.") {
                    Target::Attribute(path.to_string())
                } else if let Some(path) = name.strip_prefix("resource.") {
                    Target::Resource(path.to_string())
                } else {
                    Target::Nothing
                }
            }
        }
    }

    fn is_tokenized(&self) -> bool {
        matches!(self, Target::Default | Target::Body | Target::Attribute(_))
    }
}

/// A value a leaf compares against.
enum Found<'a> {
    /// Tokenized text.
    Text(&'a str),
    /// A whole value (raw fields, resource attributes).
    Whole(&'a str),
    Number(f64),
}

impl LogMatcher {
    /// Compiles `text`; errors say where the query is wrong.
    pub fn new(text: &str) -> Result<LogMatcher> {
        limits::check(text)?;
        let (ast, errors) = parse_query_lenient(text);
        if let Some(error) = errors.first() {
            return Err(StoreError::InvalidQuery(format!(
                "{} at position {} of {text:?}",
                error.message, error.pos
            )));
        }
        let schema = crate::logs::log_index_schema();
        let root = compile(normalize(ast, &schema, true)?)?;
        Ok(LogMatcher { root })
    }

    /// Whether `record` matches the query.
    pub fn matches(&self, record: &LogRecord) -> bool {
        self.root.matches(record)
    }
}

fn compile(ast: UserInputAst) -> Result<Node> {
    match ast {
        UserInputAst::Boost(inner, _) => compile(*inner),
        UserInputAst::Clause(clauses) => {
            let (mut must, mut should, mut must_not) = (Vec::new(), Vec::new(), Vec::new());
            for (occur, child) in clauses {
                let node = compile(child)?;
                match occur {
                    // Conjunction by default, as the index's query parser.
                    None | Some(Occur::Must) => must.push(node),
                    Some(Occur::Should) => should.push(node),
                    Some(Occur::MustNot) => must_not.push(node),
                }
            }
            Ok(Node::Clause {
                must,
                should,
                must_not,
            })
        }
        UserInputAst::Leaf(leaf) => compile_leaf(*leaf),
    }
}

fn compile_leaf(leaf: UserInputLeaf) -> Result<Node> {
    Ok(match leaf {
        UserInputLeaf::All => Node::All,
        UserInputLeaf::Literal(literal) => {
            let field = Target::from_name(literal.field_name.as_deref());
            let tokens = if field.is_tokenized() {
                tokenize(&literal.phrase)
            } else {
                Vec::new()
            };
            Node::Literal {
                field,
                text: literal.phrase,
                tokens,
            }
        }
        UserInputLeaf::Regex { field, pattern } => {
            let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|error| {
                StoreError::InvalidQuery(format!("invalid pattern {pattern:?}: {error}"))
            })?;
            Node::Regex {
                field: Target::from_name(field.as_deref()),
                regex,
            }
        }
        UserInputLeaf::Range {
            field,
            lower,
            upper,
        } => {
            let bound = |bound: tantivy::query_grammar::UserInputBound| match bound {
                tantivy::query_grammar::UserInputBound::Inclusive(value) if value != "*" => {
                    std::ops::Bound::Included(value)
                }
                tantivy::query_grammar::UserInputBound::Exclusive(value) if value != "*" => {
                    std::ops::Bound::Excluded(value)
                }
                _ => std::ops::Bound::Unbounded,
            };
            Node::Range {
                field: Target::from_name(field.as_deref()),
                lower: bound(lower),
                upper: bound(upper),
            }
        }
        UserInputLeaf::Set { field, elements } => Node::Set {
            field: Target::from_name(field.as_deref()),
            elements,
        },
        UserInputLeaf::Exists { field } => Node::Exists {
            field: Target::from_name(Some(&field)),
        },
    })
}

/// tantivy's `default` tokenizer: alphanumeric runs, lowercased, tokens
/// longer than 40 bytes dropped.
fn tokenize(text: &str) -> Vec<String> {
    text.split(|character: char| !character.is_alphanumeric())
        .filter(|token| !token.is_empty() && token.len() <= 40)
        .map(str::to_lowercase)
        .collect()
}

impl Node {
    fn matches(&self, record: &LogRecord) -> bool {
        match self {
            Node::All => true,
            Node::Clause {
                must,
                should,
                must_not,
            } => {
                if must_not.iter().any(|node| node.matches(record)) {
                    return false;
                }
                if !must.is_empty() {
                    return must.iter().all(|node| node.matches(record));
                }
                should.is_empty() || should.iter().any(|node| node.matches(record))
            }
            Node::Literal {
                field,
                text,
                tokens,
            } => any_value(record, field, |found| match found {
                Found::Text(value) => contains_phrase(&tokenize(value), tokens),
                Found::Whole(value) => value == text,
                Found::Number(number) => text.parse::<f64>().is_ok_and(|wanted| wanted == number),
            }),
            Node::Regex { field, regex } => any_value(record, field, |found| match found {
                Found::Text(value) => tokenize(value).iter().any(|token| regex.is_match(token)),
                Found::Whole(value) => regex.is_match(value),
                Found::Number(number) => regex.is_match(&number.to_string()),
            }),
            Node::Range {
                field,
                lower,
                upper,
            } => any_value(record, field, |found| match found {
                Found::Number(number) => in_range(lower, upper, |bound| {
                    bound
                        .parse::<f64>()
                        .ok()
                        .map(|bound| number.total_cmp(&bound))
                }),
                Found::Whole(value) => in_range(lower, upper, |bound| Some(value.cmp(bound))),
                Found::Text(value) => tokenize(value)
                    .iter()
                    .any(|token| in_range(lower, upper, |bound| Some(token.as_str().cmp(bound)))),
            }),
            Node::Set { field, elements } => any_value(record, field, |found| match found {
                Found::Text(value) => {
                    let tokens = tokenize(value);
                    elements
                        .iter()
                        .any(|element| tokens.contains(&element.to_lowercase()))
                }
                Found::Whole(value) => elements.iter().any(|element| element == value),
                Found::Number(number) => elements
                    .iter()
                    .any(|element| element.parse::<f64>().is_ok_and(|wanted| wanted == number)),
            }),
            Node::Exists { field } => any_value(record, field, |_| true),
        }
    }
}

/// Whether a value, compared with `compare(bound)`, lies within the bounds.
fn in_range(
    lower: &std::ops::Bound<String>,
    upper: &std::ops::Bound<String>,
    compare: impl Fn(&str) -> Option<std::cmp::Ordering>,
) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let above = match lower {
        Unbounded => true,
        Included(bound) => matches!(compare(bound), Some(Greater | Equal)),
        Excluded(bound) => matches!(compare(bound), Some(Greater)),
    };
    let below = match upper {
        Unbounded => true,
        Included(bound) => matches!(compare(bound), Some(Less | Equal)),
        Excluded(bound) => matches!(compare(bound), Some(Less)),
    };
    above && below
}

fn contains_phrase(tokens: &[String], phrase: &[String]) -> bool {
    if phrase.is_empty() {
        return false;
    }
    tokens.windows(phrase.len()).any(|window| window == phrase)
}

/// Calls `test` on every value of `field` in `record` until one passes.
fn any_value(record: &LogRecord, field: &Target, test: impl Fn(Found<'_>) -> bool) -> bool {
    match field {
        Target::Default => {
            test(Found::Text(&record.body))
                || record
                    .attributes
                    .values()
                    .any(|value| json_values(value, true, &test))
        }
        Target::Body => test(Found::Text(&record.body)),
        Target::Severity => test(Found::Whole(&record.severity_text)),
        Target::SeverityNumber => test(Found::Number(f64::from(record.severity_number))),
        Target::Service => test(Found::Whole(&record.service)),
        Target::Timestamp => test(Found::Number(record.timestamp as f64)),
        Target::TraceId => record
            .trace_id
            .as_deref()
            .is_some_and(|id| test(Found::Whole(id))),
        Target::SpanId => record
            .span_id
            .as_deref()
            .is_some_and(|id| test(Found::Whole(id))),
        Target::RequestId => record
            .request_id
            .as_deref()
            .is_some_and(|id| test(Found::Whole(id))),
        Target::Attribute(path) if path.is_empty() => record
            .attributes
            .values()
            .any(|value| json_values(value, true, &test)),
        Target::Attribute(path) => {
            path_values(&record.attributes, path).any(|value| json_values(value, true, &test))
        }
        Target::Resource(path) => {
            path_values(&record.resource, path).any(|value| json_values(value, false, &test))
        }
        Target::Nothing => false,
    }
}

/// The values at a dotted path: `a.b.c` may be the key `a.b.c`, or `a` then
/// `b.c`, or `a.b` then `c`, ... (tantivy's expand-dots indexing).
fn path_values<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Box<dyn Iterator<Item = &'a serde_json::Value> + 'a> {
    let mut found: Vec<&'a serde_json::Value> = Vec::new();
    if let Some(value) = object.get(path) {
        found.push(value);
    }
    for (index, _) in path.match_indices('.') {
        let (head, tail) = (&path[..index], &path[index + 1..]);
        if let Some(serde_json::Value::Object(inner)) = object.get(head) {
            found.extend(path_values(inner, tail));
        }
    }
    Box::new(found.into_iter())
}

/// Applies `test` to a JSON value (every element of arrays, every leaf of
/// objects); strings are tokenized text when `tokenized`, else whole values.
fn json_values(
    value: &serde_json::Value,
    tokenized: bool,
    test: &impl Fn(Found<'_>) -> bool,
) -> bool {
    match value {
        serde_json::Value::String(text) if tokenized => test(Found::Text(text)),
        serde_json::Value::String(text) => test(Found::Whole(text)),
        serde_json::Value::Number(number) => {
            number.as_f64().is_some_and(|n| test(Found::Number(n)))
        }
        serde_json::Value::Bool(flag) => test(Found::Whole(if *flag { "true" } else { "false" })),
        serde_json::Value::Array(items) => {
            items.iter().any(|item| json_values(item, tokenized, test))
        }
        serde_json::Value::Object(map) => {
            map.values().any(|item| json_values(item, tokenized, test))
        }
        serde_json::Value::Null => false,
    }
}

#[cfg(test)]
mod matcher_tests {
    use super::*;
    use serde_json::json;

    fn record() -> LogRecord {
        let serde_json::Value::Object(attributes) = json!({
            "ip_address": "10.0.0.7",
            "user": {"name": "Alice"},
            "http.status": 503,
            "outcome": "login failed",
            "tags": ["auth", "edge"],
        }) else {
            unreachable!()
        };
        let serde_json::Value::Object(resource) = json!({"k8s.namespace.name": "Shop-Prod"}) else {
            unreachable!()
        };
        LogRecord {
            timestamp: 1_700_000_000_000_000_000,
            severity_text: "WARN".into(),
            severity_number: 13,
            body: "Login failed for user alice from 10.0.0.7".into(),
            service: "auth".into(),
            resource,
            attributes,
            trace_id: Some("abc123".into()),
            ..LogRecord::default()
        }
    }

    #[test]
    fn the_search_syntax_matches_as_the_index_does() {
        let record = record();
        let cases = [
            ("login", true),
            ("LOGIN failed", true),
            ("\"login failed\"", true),
            ("\"failed login\"", false),
            ("body:\"login failed\"", true),
            ("severity:WARN", true),
            ("severity:warn", false),
            ("service:auth AND severity:WARN", true),
            ("service:auth AND NOT severity:WARN", false),
            ("NOT severity:ERROR", true),
            ("service:billing OR severity:WARN", true),
            ("service:billing OR severity:ERROR", false),
            ("ip_address:\"10.0.0.7\"", true),
            ("user.name:alice", true),
            ("http.status:503", true),
            ("http.status:[500 TO 599]", true),
            ("http.status:[200 TO 299]", false),
            ("http.status:[500 TO 503.5]", true),
            ("http.status:[499.5 TO 502]", false),
            ("severity_number:>=13", true),
            ("tags:edge", true),
            ("resource.k8s.namespace.name:Shop-Prod", true),
            ("resource.k8s.namespace.name:shop", false),
            ("trace_id:abc123", true),
            ("request_id:*", false),
            ("log*", true),
            ("*ailed", true),
            ("fa?led", true),
            ("zzz*", false),
            ("outcome:\"login failed\"", true),
            ("missing_field:x", false),
            ("", true),
        ];
        for (query, expected) in cases {
            let matcher = LogMatcher::new(query).unwrap();
            assert_eq!(matcher.matches(&record), expected, "{query}");
        }
    }

    #[test]
    fn bad_queries_say_where() {
        let error = LogMatcher::new("service:(auth").unwrap_err();
        assert!(error.to_string().contains("position"), "{error}");
    }
}
