//! The log query language: tantivy's query grammar, with the fixes users of
//! Kibana and Quickwit expect, and errors that say where the problem is.
//!
//! - `a AND NOT b` excludes `b` (tantivy alone turns the pure negation into a
//!   clause that matches nothing);
//! - a query of only negations (`NOT debug`) means "everything except";
//! - `ship*`, `*clined` and `sh?pped` are wildcards on single terms (tantivy
//!   alone only knows prefixes of phrases): on the words of the message and
//!   of attributes (`user.name:ali*`, which tantivy refuses on JSON paths),
//!   on whole values of the other fields (`service:pay*`, case-sensitive);
//!   without a field, on the message and the identifying fields, as a word;
//! - a field name that is not in the schema is a parsed attribute:
//!   `user_id:42` and `http.status:[500 TO 599]` mean `attributes.user_id:42`
//!   and `attributes.http.status:[500 TO 599]`;
//! - a word or phrase without a field searches the message (as words) and
//!   the record's identifying fields (as whole values, case-sensitive, as
//!   Kibana matches keyword fields): the service and the resource's
//!   [`IDENTIFYING_RESOURCE_KEYS`] (namespace, pod, container, deployment,
//!   node, host), so `gateway` finds the gateway's records and
//!   `gateway-7f9c2` one pod's;
//! - `severity:error` ignores case (severities are stored upper-case);
//! - `field:*` means the record has the field, for every field: fast fields
//!   and attributes through tantivy's exists query, the other fields from
//!   their field norms (`body`, `request_id`, ...) or their terms
//!   (`resource.*`), which tantivy's parser cannot do;
//! - a word longer than [`MAX_WORD_BYTES`] (not indexed) or a value with no
//!   word for a field of words (`body:"..."`) is an error that says so.
//!   Partitions created before words up to 255 bytes were indexed kept
//!   tantivy's limit (39 bytes): longer words are found only in newer days.

use tantivy::query::{
    BitSetDocSet, BooleanQuery, BoostQuery, ConstScorer, EmptyQuery, EnableScoring, ExistsQuery,
    Explanation, Query, QueryParser, Scorer, TermQuery, TermSetQuery, Weight,
};
use tantivy::query_grammar::{
    Occur, UserInputAst, UserInputBound, UserInputLeaf, UserInputLiteral, parse_query_lenient,
};
use tantivy::schema::{Field, FieldType, IndexRecordOption, Schema};
use tantivy::{BitSet, DocId, DocSet, Score, SegmentReader, Term};

/// The JSON field that holds a record's parsed fields.
const ATTRIBUTES: &str = "attributes";

/// The JSON field that holds a record's resource.
const RESOURCE: &str = "resource";

/// Resource attributes that say where a record comes from: a word without a
/// field matches their values whole, as well as the message and `service`.
pub(crate) const IDENTIFYING_RESOURCE_KEYS: &[&str] = &[
    "service.namespace",
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.container.name",
    "k8s.deployment.name",
    "k8s.node.name",
    "container.name",
    "host.name",
];

use crate::error::{Result, StoreError};
use crate::logs::{MAX_WORD_BYTES, SPAN_KEY_CHARS, is_span_key_hex, span_key};
use crate::model::LogRecord;
use crate::streams::Streams;

mod limits;

/// What a query is built against: one partition's schema and parser, and,
/// for partitions of format 3, where its streams, numbers and keys are.
pub(crate) struct IndexView<'a> {
    pub parser: &'a QueryParser,
    pub schema: &'a Schema,
    pub lean: Option<LeanView<'a>>,
}

/// The parts of a format 3 partition a query is rewritten to.
pub(crate) struct LeanView<'a> {
    /// The stream number of each document (`resource` is not indexed).
    pub stream_id: Field,
    /// The paths each document has a value at (`attributes.x`, the ids).
    pub keys: Field,
    /// The numeric and boolean attributes, as a fast JSON field.
    pub numbers: &'a str,
    pub streams: &'a Streams,
    /// Format 5: `span_id` holds [`crate::logs::span_key`]s.
    pub span_keys: bool,
}

/// A query checked and normalized once, then built for each partition
/// ([`build_for`]).
pub(crate) struct Prepared(UserInputAst);

/// Parses `text` against the fields of `logical` (the query language's
/// fields, which format 2 partitions index as they are) and normalizes it.
pub(crate) fn prepare(logical: &Schema, text: &str) -> Result<Prepared> {
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
    Ok(Prepared(normalize(ast, logical, true)?))
}

/// The prepared query for the partition `view`.
pub(crate) fn build_for(view: &IndexView<'_>, prepared: &Prepared) -> Result<Box<dyn Query>> {
    let query = build(view, prepared.0.clone())?;
    Ok(query.unwrap_or_else(|| Box::new(EmptyQuery)))
}

/// tantivy's query for a normalized query: clauses here, leaves by tantivy's
/// parser except `field:*` ([`exists`]). `None` when there is nothing to
/// search (an empty clause, a value without terms): tantivy drops those from
/// their clause, and so does this.
fn build(view: &IndexView<'_>, ast: UserInputAst) -> Result<Option<Box<dyn Query>>> {
    match ast {
        UserInputAst::Clause(clauses) => {
            let mut built = Vec::with_capacity(clauses.len());
            for (occur, child) in clauses {
                if let Some(mut query) = build(view, child)? {
                    if occur == Some(Occur::MustNot) {
                        query = Box::new(Excluded(query));
                    }
                    // Conjunction by default, as the parser is set up.
                    built.push((occur.unwrap_or(Occur::Must), query));
                }
            }
            Ok((!built.is_empty()).then(|| Box::new(BooleanQuery::new(built)) as Box<dyn Query>))
        }
        UserInputAst::Boost(inner, boost) => Ok(build(view, *inner)?
            .map(|query| Box::new(BoostQuery::new(query, boost.into_inner() as Score)) as _)),
        UserInputAst::Leaf(leaf) => {
            let leaf = match &view.lean {
                Some(lean) => match lean_leaf(view, lean, *leaf)? {
                    Lean::Built(query) => return Ok(Some(query)),
                    Lean::Either(first, second) => {
                        let either: Vec<_> = [build_leaf(view, first)?, build_leaf(view, second)?]
                            .into_iter()
                            .flatten()
                            .map(|query| (Occur::Should, query))
                            .collect();
                        return Ok((!either.is_empty())
                            .then(|| Box::new(BooleanQuery::new(either)) as Box<dyn Query>));
                    }
                    Lean::Leaf(leaf) => leaf,
                },
                None => *leaf,
            };
            build_leaf(view, leaf)
        }
    }
}

/// A query on the excluding side of a clause (`NOT "step 4"`), whose
/// scorer is asked with tantivy's default `seek_danger`. tantivy's
/// exclusion asks `seek_danger` of ascending targets, and its phrase
/// scorer checks each target against the document it stopped at, which
/// may lie past the next target: in debug builds, `x AND NOT "a phrase"`
/// panicked the searching thread (tantivy 0.27). The default never seeks
/// backwards.
#[derive(Debug)]
struct Excluded(Box<dyn Query>);

impl Clone for Excluded {
    fn clone(&self) -> Excluded {
        Excluded(self.0.box_clone())
    }
}

impl Query for Excluded {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(ExcludedWeight(self.0.weight(scoring)?)))
    }
}

struct ExcludedWeight(Box<dyn Weight>);

impl Weight for ExcludedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(ExcludedScorer(self.0.scorer(reader, boost)?)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }
}

struct ExcludedScorer(Box<dyn Scorer>);

impl DocSet for ExcludedScorer {
    fn advance(&mut self) -> DocId {
        self.0.advance()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if self.0.doc() >= target {
            return self.0.doc();
        }
        self.0.seek(target)
    }

    fn doc(&self) -> DocId {
        self.0.doc()
    }

    fn size_hint(&self) -> u32 {
        self.0.size_hint()
    }
}

impl Scorer for ExcludedScorer {
    fn score(&mut self) -> Score {
        self.0.score()
    }
}

/// tantivy's query for one leaf, as its fields are in `view`'s schema.
fn build_leaf(view: &IndexView<'_>, leaf: UserInputLeaf) -> Result<Option<Box<dyn Query>>> {
    if let UserInputLeaf::Regex {
        field: Some(name),
        pattern,
    } = &leaf
        && let Some(query) = json_path_regex(view.schema, name, pattern)?
    {
        return Ok(Some(query));
    }
    let query = match leaf {
        UserInputLeaf::Exists { field } => exists(view.schema, &field)?,
        leaf => view
            .parser
            .build_query_from_user_input_ast(UserInputAst::Leaf(Box::new(leaf)))
            .map_err(|error| StoreError::InvalidQuery(error.to_string()))?,
    };
    Ok((!query.is::<EmptyQuery>()).then_some(query))
}

/// What [`lean_leaf`] made of a leaf.
enum Lean {
    Built(Box<dyn Query>),
    /// A leaf the partition's parser builds as it is (perhaps renamed).
    Leaf(UserInputLeaf),
    /// Records that match either leaf.
    Either(UserInputLeaf, UserInputLeaf),
}

/// The field a leaf is on, after [`normalize`].
fn leaf_field(leaf: &UserInputLeaf) -> Option<&str> {
    match leaf {
        UserInputLeaf::Literal(literal) => literal.field_name.as_deref(),
        UserInputLeaf::Range { field, .. }
        | UserInputLeaf::Set { field, .. }
        | UserInputLeaf::Regex { field, .. } => field.as_deref(),
        UserInputLeaf::Exists { field } => Some(field),
        UserInputLeaf::All => None,
    }
}

/// A query that matches nothing and, unlike tantivy's `EmptyQuery`, is not
/// dropped from its clause.
fn nothing() -> Box<dyn Query> {
    Box::new(BooleanQuery::new(Vec::new()))
}

/// A leaf of a format 3 partition: resource leaves become the set of
/// streams whose resource matches; `field:*` on an attribute or an id
/// reads the keys; a range on an attribute reads the numbers (or, for text
/// bounds, the attribute's words); the promoted `attributes.request_id` is
/// the `request_id` field, where it is indexed.
fn lean_leaf(view: &IndexView<'_>, lean: &LeanView<'_>, leaf: UserInputLeaf) -> Result<Lean> {
    let Some(field) = leaf_field(&leaf).map(str::to_string) else {
        return Ok(Lean::Leaf(leaf));
    };
    if field == RESOURCE || field.starts_with("resource.") {
        let node = compile_leaf(leaf)?;
        let scratch = LogRecord::default();
        let terms: Vec<Term> = lean
            .streams
            .all()
            .filter(|(_, resource)| node.matches_in(&scratch, resource))
            .map(|(id, _)| Term::from_field_u64(lean.stream_id, id))
            .collect();
        if terms.is_empty() {
            return Ok(Lean::Built(nothing()));
        }
        return Ok(Lean::Built(Box::new(TermSetQuery::new(terms))));
    }
    let is_attribute = field == ATTRIBUTES || field.starts_with("attributes.");
    match leaf {
        UserInputLeaf::Exists { field }
            if is_attribute || ["request_id", "trace_id", "span_id"].contains(&field.as_str()) =>
        {
            Ok(Lean::Built(Box::new(TermQuery::new(
                Term::from_field_text(lean.keys, &field),
                IndexRecordOption::Basic,
            ))))
        }
        UserInputLeaf::Range {
            field: Some(field),
            lower,
            upper,
        } if is_attribute => {
            let text = [&lower, &upper]
                .into_iter()
                .any(|bound| BoundKind::of(bound) == Some(BoundKind::Text));
            if text {
                return word_range(view.schema, &field, &lower, &upper).map(Lean::Built);
            }
            let path = field.strip_prefix("attributes").unwrap_or_default();
            Ok(Lean::Leaf(UserInputLeaf::Range {
                field: Some(format!("{}{path}", lean.numbers)),
                lower,
                upper,
            }))
        }
        // Indexed as `request_id` when it was promoted, as an attribute
        // when it was not (not a string).
        leaf if field == PROMOTED_REQUEST_ID => {
            let mut promoted = leaf.clone();
            match &mut promoted {
                UserInputLeaf::Literal(literal) => literal.field_name = Some("request_id".into()),
                UserInputLeaf::Set { field, .. } | UserInputLeaf::Regex { field, .. } => {
                    *field = Some("request_id".into())
                }
                _ => return Ok(Lean::Leaf(leaf)),
            }
            Ok(Lean::Either(leaf, promoted))
        }
        // Format 5 keeps the timestamp as a fast column only: an exact
        // time is a range of one value, which tantivy reads from the column.
        UserInputLeaf::Literal(literal) if field == "timestamp" && !is_indexed(view, &field) => {
            Ok(Lean::Leaf(one_value(field, literal.phrase)))
        }
        UserInputLeaf::Set { elements, .. }
            if field == "timestamp" && !is_indexed(view, &field) =>
        {
            let mut either = Vec::with_capacity(elements.len());
            for value in elements {
                if let Some(query) = build_leaf(view, one_value(field.clone(), value))? {
                    either.push((Occur::Should, query));
                }
            }
            Ok(Lean::Built(Box::new(BooleanQuery::new(either))))
        }
        leaf if field == "span_id" && lean.span_keys => {
            span_leaf(view.schema, leaf).map(Lean::Built)
        }
        leaf => Ok(Lean::Leaf(leaf)),
    }
}

/// A leaf on `span_id` in a partition that indexes [`span_key`]s: the
/// records whose key could be that of a matching id, kept if their stored
/// span id matches ([`Verified`]). A value or a set reads the keys of the
/// values; a wildcard or regex the keys that start with its literal prefix
/// and the key the prefix starts with; a range every record's.
fn span_leaf(schema: &Schema, leaf: UserInputLeaf) -> Result<Box<dyn Query>> {
    let field = schema
        .get_field("span_id")
        .map_err(|error| StoreError::InvalidQuery(error.to_string()))?;
    let term = |text: &str| -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_text(field, text),
            IndexRecordOption::Basic,
        ))
    };
    let key = |id: &str| term(span_key(id));
    let any = |queries: Vec<Box<dyn Query>>| -> Box<dyn Query> {
        Box::new(BooleanQuery::new(
            queries
                .into_iter()
                .map(|query| (Occur::Should, query))
                .collect(),
        ))
    };
    let (candidates, test) = match leaf {
        UserInputLeaf::Literal(literal) => {
            (key(&literal.phrase), IdTest::OneOf(vec![literal.phrase]))
        }
        UserInputLeaf::Set { elements, .. } => (
            any(elements.iter().map(|id| key(id)).collect()),
            IdTest::OneOf(elements),
        ),
        UserInputLeaf::Regex { pattern, .. } => {
            let regex = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                .size_limit(MAX_REGEX_BYTES)
                .build()
                .map_err(|error| {
                    StoreError::InvalidQuery(format!("invalid pattern {pattern:?}: {error}"))
                })?;
            let prefix = literal_prefix(&pattern);
            let mut keys: Vec<Box<dyn Query>> = vec![Box::new(PresenceQuery {
                field,
                presence: Presence::Terms(vec![prefix.as_bytes().to_vec()]),
            })];
            if let Some(head) = prefix.get(..SPAN_KEY_CHARS)
                && prefix.len() > SPAN_KEY_CHARS
                && is_span_key_hex(head)
            {
                keys.push(term(head));
            }
            (any(keys), IdTest::Regex(regex))
        }
        UserInputLeaf::Range { lower, upper, .. } => (
            Box::new(PresenceQuery {
                field,
                presence: Presence::Terms(vec![Vec::new()]),
            }) as Box<dyn Query>,
            IdTest::Range(bound(lower), bound(upper)),
        ),
        UserInputLeaf::Exists { .. } | UserInputLeaf::All => {
            return Ok(Box::new(tantivy::query::AllQuery));
        }
    };
    Ok(Box::new(Verified { candidates, test }))
}

/// The largest compiled regex a span id pattern may make (`regex`'s
/// default is 10 MB; a pattern is one query's, and many may run at once).
const MAX_REGEX_BYTES: usize = 1 << 20;

/// The text every match of `pattern` (a regex anchored at both ends)
/// starts with: its leading characters that are not regex syntax, less the
/// last when a repetition follows it; empty when the pattern has an
/// alternation anywhere.
fn literal_prefix(pattern: &str) -> String {
    if pattern.contains('|') {
        return String::new();
    }
    let mut prefix = String::new();
    let mut characters = pattern.chars().peekable();
    while let Some(character) = characters.next() {
        let literal = match character {
            '\\' => match characters.next() {
                Some(escaped) if !escaped.is_alphanumeric() => escaped,
                _ => break,
            },
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' => break,
            other => other,
        };
        if matches!(characters.peek(), Some('*' | '+' | '?' | '{')) {
            break;
        }
        prefix.push(literal);
    }
    prefix
}

/// A bound of a range leaf, by its text.
fn bound(bound: UserInputBound) -> std::ops::Bound<String> {
    match bound {
        UserInputBound::Inclusive(text) => std::ops::Bound::Included(text),
        UserInputBound::Exclusive(text) => std::ops::Bound::Excluded(text),
        UserInputBound::Unbounded => std::ops::Bound::Unbounded,
    }
}

/// Which span ids a [`Verified`] query keeps.
#[derive(Debug, Clone)]
enum IdTest {
    OneOf(Vec<String>),
    Regex(regex::Regex),
    Range(std::ops::Bound<String>, std::ops::Bound<String>),
}

impl IdTest {
    fn keeps(&self, id: &str) -> bool {
        match self {
            IdTest::OneOf(ids) => ids.iter().any(|wanted| wanted == id),
            IdTest::Regex(regex) => regex.is_match(id),
            IdTest::Range(lower, upper) => {
                let bounds: (std::ops::Bound<&str>, std::ops::Bound<&str>) = (
                    lower.as_ref().map(String::as_str),
                    upper.as_ref().map(String::as_str),
                );
                std::ops::RangeBounds::contains(&bounds, id)
            }
        }
    }
}

/// The documents of `candidates` whose stored record has a span id that
/// `test` keeps.
#[derive(Debug)]
struct Verified {
    candidates: Box<dyn Query>,
    test: IdTest,
}

impl Clone for Verified {
    fn clone(&self) -> Verified {
        Verified {
            candidates: self.candidates.box_clone(),
            test: self.test.clone(),
        }
    }
}

impl Query for Verified {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(VerifiedWeight {
            candidates: self.candidates.weight(scoring)?,
            test: self.test.clone(),
        }))
    }
}

struct VerifiedWeight {
    candidates: Box<dyn Weight>,
    test: IdTest,
}

/// Docstore blocks a [`Verified`] scorer keeps decompressed: candidates
/// come in document order, so a block is read once.
const VERIFIED_CACHED_BLOCKS: usize = 4;

impl Weight for VerifiedWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let mut scorer = VerifiedScorer {
            candidates: self.candidates.scorer(reader, boost)?,
            store: reader.get_store_reader(VERIFIED_CACHED_BLOCKS)?,
            test: self.test.clone(),
        };
        scorer.settle();
        Ok(Box::new(scorer))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        explain_match(self.scorer(reader, 1.0)?, doc, "the span id matches")
    }
}

struct VerifiedScorer {
    candidates: Box<dyn Scorer>,
    store: tantivy::store::StoreReader,
    test: IdTest,
}

/// The span id in a stored document, read from its bytes without
/// deserializing the document or parsing the record's JSON: the record's
/// JSON is the document's one stored text (beside the stream number), kept
/// verbatim in its bytes, and serde writes the
/// record's own `span_id` after its attributes, so it is the last
/// `"span_id":` key (an attribute of that name comes before it, and the
/// text cannot appear unescaped inside a string). Only records with a span
/// id are candidates.
fn stored_span_id(document: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"span_id\":";
    let at = document
        .windows(KEY.len())
        .rposition(|window| window == KEY)?
        + KEY.len();
    serde_json::Deserializer::from_slice(&document[at..])
        .into_iter::<String>()
        .next()?
        .ok()
}

impl VerifiedScorer {
    /// Moves to the first candidate from here on whose span id passes.
    fn settle(&mut self) -> DocId {
        let mut doc = self.candidates.doc();
        while doc != tantivy::TERMINATED && !self.passes(doc) {
            doc = self.candidates.advance();
        }
        doc
    }

    fn passes(&self, doc: DocId) -> bool {
        self.store
            .get_document_bytes(doc)
            .ok()
            .and_then(|bytes| stored_span_id(bytes.as_slice()))
            .is_some_and(|id| self.test.keeps(&id))
    }
}

impl DocSet for VerifiedScorer {
    fn advance(&mut self) -> DocId {
        self.candidates.advance();
        self.settle()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.candidates.seek(target);
        self.settle()
    }

    fn doc(&self) -> DocId {
        self.candidates.doc()
    }

    fn size_hint(&self) -> u32 {
        self.candidates.size_hint()
    }
}

impl Scorer for VerifiedScorer {
    fn score(&mut self) -> Score {
        1.0
    }
}

/// Whether the partition indexes `field` (it has terms to look up).
fn is_indexed(view: &IndexView<'_>, field: &str) -> bool {
    view.schema
        .get_field(field)
        .is_ok_and(|field| view.schema.get_field_entry(field).is_indexed())
}

/// `field:[value TO value]`.
fn one_value(field: String, value: String) -> UserInputLeaf {
    UserInputLeaf::Range {
        field: Some(field),
        lower: UserInputBound::Inclusive(value.clone()),
        upper: UserInputBound::Inclusive(value),
    }
}

/// The attribute a record's `request_id` is usually promoted from: format 3
/// indexes it once, as `request_id`.
const PROMOTED_REQUEST_ID: &str = "attributes.request_id";

/// A range with text bounds on an attribute: the words at its path between
/// the bounds (lowercased, as words are indexed).
fn word_range(
    schema: &Schema,
    name: &str,
    lower: &UserInputBound,
    upper: &UserInputBound,
) -> Result<Box<dyn Query>> {
    let Some((field, path)) = schema.find_field(name) else {
        return Ok(nothing());
    };
    let FieldType::JsonObject(options) = schema.get_field_entry(field).field_type() else {
        return Ok(nothing());
    };
    let mut prefix = Term::from_field_json_path(field, path, options.is_expand_dots_enabled())
        .serialized_value_bytes()
        .to_vec();
    prefix.push(tantivy::schema::Type::Str.to_code());
    let bound = |bound: &UserInputBound| -> std::ops::Bound<Vec<u8>> {
        let with = |text: &str| {
            let mut key = prefix.clone();
            key.extend_from_slice(text.to_lowercase().as_bytes());
            key
        };
        match bound {
            UserInputBound::Inclusive(text) if text != "*" => std::ops::Bound::Included(with(text)),
            UserInputBound::Exclusive(text) if text != "*" => std::ops::Bound::Excluded(with(text)),
            _ => std::ops::Bound::Unbounded,
        }
    };
    Ok(Box::new(PresenceQuery {
        field,
        presence: Presence::Range {
            prefix: prefix.clone(),
            lower: bound(lower),
            upper: bound(upper),
        },
    }))
}

/// `field:*`: the records that have a value in `field` (or, for `body`, at
/// least one word). tantivy's exists query reads fast columns, which only
/// `timestamp`, `seq`, `severity` and the attributes have; the other fields
/// are answered from what is indexed.
fn exists(schema: &Schema, name: &str) -> Result<Box<dyn Query>> {
    // Unknown names were qualified as attributes: every name is a field.
    let Some((field, path)) = schema.find_field(name) else {
        return Err(StoreError::InvalidQuery(format!("unknown field {name}")));
    };
    let entry = schema.get_field_entry(field);
    let presence = match entry.field_type() {
        _ if entry.is_fast() => return Ok(Box::new(ExistsQuery::new(name.to_string(), true))),
        FieldType::JsonObject(options) if entry.is_indexed() => {
            // A JSON field's terms start with their path: the path itself
            // ends with JSON_END_OF_PATH (0), a deeper path goes on with a
            // segment separator (1).
            if path.is_empty() {
                Presence::Terms(vec![Vec::new()])
            } else {
                let term =
                    Term::from_field_json_path(field, path, options.is_expand_dots_enabled());
                let exact = term.serialized_value_bytes().to_vec();
                let mut deeper = exact.clone();
                deeper.pop();
                deeper.push(1);
                Presence::Terms(vec![exact, deeper])
            }
        }
        _ if entry.has_fieldnorms() => Presence::Fieldnorms,
        _ if entry.is_indexed() => Presence::Terms(vec![Vec::new()]),
        _ => {
            return Err(StoreError::InvalidQuery(format!(
                "{name} cannot be searched"
            )));
        }
    };
    Ok(Box::new(PresenceQuery { field, presence }))
}

/// The documents with a value in one field, for [`exists`].
#[derive(Debug, Clone)]
struct PresenceQuery {
    field: Field,
    presence: Presence,
}

#[derive(Debug, Clone)]
enum Presence {
    /// A field norm (the number of tokens) above zero.
    Fieldnorms,
    /// A term that starts with one of these byte strings.
    Terms(Vec<Vec<u8>>),
    /// A term that starts with `prefix` and lies between the bounds.
    Range {
        prefix: Vec<u8>,
        lower: std::ops::Bound<Vec<u8>>,
        upper: std::ops::Bound<Vec<u8>>,
    },
}

impl Query for PresenceQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for PresenceQuery {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let max_doc = reader.max_doc();
        let mut docs = BitSet::with_max_value(max_doc);
        match &self.presence {
            Presence::Fieldnorms => {
                let norms = reader.get_fieldnorms_reader(self.field)?;
                for doc in (0..max_doc).filter(|doc| norms.fieldnorm_id(*doc) != 0) {
                    docs.insert(doc);
                }
            }
            Presence::Terms(prefixes) => {
                let inverted = reader.inverted_index(self.field)?;
                for prefix in prefixes {
                    let terms = inverted.terms().range().ge(prefix).into_stream()?;
                    insert_postings(&inverted, terms, prefix, &mut docs)?;
                }
            }
            Presence::Range {
                prefix,
                lower,
                upper,
            } => {
                let inverted = reader.inverted_index(self.field)?;
                let mut range = inverted.terms().range();
                range = match lower {
                    std::ops::Bound::Included(key) => range.ge(key),
                    std::ops::Bound::Excluded(key) => range.gt(key),
                    std::ops::Bound::Unbounded => range.ge(prefix),
                };
                range = match upper {
                    std::ops::Bound::Included(key) => range.le(key),
                    std::ops::Bound::Excluded(key) => range.lt(key),
                    std::ops::Bound::Unbounded => range,
                };
                insert_postings(&inverted, range.into_stream()?, prefix, &mut docs)?;
            }
        }
        Ok(Box::new(ConstScorer::new(BitSetDocSet::from(docs), boost)))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        explain_match(self.scorer(reader, 1.0)?, doc, "the field has a value")
    }
}

/// The explanation of a constant-score match, `why`, if `scorer` has `doc`.
fn explain_match(
    mut scorer: Box<dyn Scorer>,
    doc: DocId,
    why: &'static str,
) -> tantivy::Result<Explanation> {
    if scorer.seek(doc) != doc {
        return Err(tantivy::TantivyError::InvalidArgument(format!(
            "document {doc} does not match: not {why}"
        )));
    }
    Ok(Explanation::new(why, 1.0))
}

/// Adds the documents of every term of `terms` that starts with `prefix`
/// (the stream is sorted: it stops at the first that does not).
fn insert_postings(
    inverted: &tantivy::InvertedIndexReader,
    mut terms: tantivy::termdict::TermStreamer<'_>,
    prefix: &[u8],
    docs: &mut BitSet,
) -> tantivy::Result<()> {
    while terms.advance() && terms.key().starts_with(prefix) {
        let mut postings =
            inverted.read_block_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
        while !postings.docs().is_empty() {
            for &doc in postings.docs() {
                docs.insert(doc);
            }
            postings.advance();
        }
    }
    Ok(())
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
        // A leaf alone is a clause of one, normalized (once) as its child.
        UserInputAst::Leaf(leaf) if top_level => {
            return normalize(
                UserInputAst::Clause(vec![(None, UserInputAst::Leaf(leaf))]),
                schema,
                true,
            );
        }
        UserInputAst::Leaf(mut leaf) => {
            if let UserInputLeaf::Literal(literal) = leaf.as_ref() {
                match &literal.field_name {
                    None => {
                        if let Some(wildcard) = wildcard_everywhere(&literal.phrase, literal.prefix)
                        {
                            return Ok(wildcard);
                        }
                    }
                    Some(field) => {
                        // Words are indexed lowercased, whole values as they are.
                        let words =
                            schema.find_field(field).is_none() || is_word_field(schema, field);
                        if let Some(pattern) =
                            wildcard_pattern(&literal.phrase, literal.prefix, words)
                        {
                            let field = Some(field.clone());
                            *leaf = UserInputLeaf::Regex { field, pattern };
                        }
                    }
                }
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
            if let UserInputLeaf::Literal(literal) = leaf.as_ref() {
                check_words(literal, schema)?;
            }
            let leaf = match *leaf {
                UserInputLeaf::Range {
                    field: Some(field),
                    lower,
                    upper,
                } if is_json_field(schema, &field) => range_of_one_kind(field, lower, upper)?,
                UserInputLeaf::Literal(literal)
                    if literal.field_name.is_none() && !literal.prefix =>
                {
                    with_identifying_fields(literal)
                }
                UserInputLeaf::Literal(literal)
                    if literal.field_name.as_deref() == Some(SEVERITY) =>
                {
                    severity_set(vec![literal.phrase])
                }
                UserInputLeaf::Set {
                    field: Some(field),
                    elements,
                } if field == SEVERITY => severity_set(elements),
                UserInputLeaf::Regex {
                    field: Some(field),
                    pattern,
                } if field == SEVERITY => UserInputAst::Leaf(Box::new(UserInputLeaf::Regex {
                    field: Some(field),
                    pattern: format!("(?i){pattern}"),
                })),
                leaf => UserInputAst::Leaf(Box::new(leaf)),
            };
            return Ok(leaf);
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

/// The field of severity texts, which the store keeps upper-case (`ERROR`).
const SEVERITY: &str = "severity";

/// `severity:error` as `severity:IN [error ERROR Error]`: the case variants
/// of each value, so any spelling finds the stored upper-case text (and
/// lower-case texts a client may have sent before they were canonical).
fn severity_set(values: Vec<String>) -> UserInputAst {
    let mut elements = Vec::with_capacity(values.len() * 4);
    for value in values {
        let mut capitalized = value.to_lowercase();
        if let Some(first) = capitalized.chars().next() {
            let upper_first: String = first.to_uppercase().collect();
            capitalized.replace_range(..first.len_utf8(), &upper_first);
        }
        elements.extend([
            value.to_uppercase(),
            value.to_lowercase(),
            capitalized,
            value,
        ]);
    }
    elements.sort();
    elements.dedup();
    UserInputAst::Leaf(Box::new(UserInputLeaf::Set {
        field: Some(SEVERITY.to_string()),
        elements,
    }))
}

/// A word or phrase without a field: the message (the parser's default
/// fields), or the whole value of `service` or an identifying resource key.
fn with_identifying_fields(literal: UserInputLiteral) -> UserInputAst {
    let whole = |field: String| {
        let literal = UserInputLiteral {
            field_name: Some(field),
            phrase: literal.phrase.clone(),
            delimiter: literal.delimiter,
            slop: 0,
            prefix: false,
        };
        (
            Some(Occur::Should),
            UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(literal))),
        )
    };
    let mut clauses = Vec::with_capacity(IDENTIFYING_RESOURCE_KEYS.len() + 2);
    clauses.push(whole("service".to_string()));
    for key in IDENTIFYING_RESOURCE_KEYS {
        clauses.push(whole(format!("{RESOURCE}.{key}")));
    }
    clauses.insert(
        0,
        (
            Some(Occur::Should),
            UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(literal))),
        ),
    );
    UserInputAst::Clause(clauses)
}

/// The words of `text` as the index splits it (runs of letters and digits),
/// before lowercasing and before long words are dropped.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|character: char| !character.is_alphanumeric())
        .filter(|word| !word.is_empty())
}

/// Refuses a literal the index cannot match for the way it indexes words:
/// a word longer than [`MAX_WORD_BYTES`] (not indexed), or, for a field of
/// words (`body`, attributes), a value without any word (`body:"..."`),
/// which tantivy would silently drop from the query.
fn check_words(literal: &UserInputLiteral, schema: &Schema) -> Result<()> {
    let field = literal.field_name.as_deref();
    if !field.is_none_or(|field| is_word_field(schema, field)) {
        return Ok(());
    }
    if let Some(word) = words(&literal.phrase).find(|word| word.len() > MAX_WORD_BYTES) {
        let start: String = word.chars().take(16).collect();
        return Err(StoreError::InvalidQuery(format!(
            "the word {start}... is {} bytes long: words longer than {MAX_WORD_BYTES} bytes are not indexed, so they cannot be searched; search for another word of the record",
            word.len()
        )));
    }
    if let Some(field) = field
        && words(&literal.phrase).next().is_none()
    {
        let field = field.strip_prefix("attributes.").unwrap_or(field);
        return Err(StoreError::InvalidQuery(format!(
            "{:?} has no word to search for in {field}: {field} is searched by words (letters and digits)",
            literal.phrase
        )));
    }
    Ok(())
}

/// Whether `field` is split into words when indexed (the message and the
/// attributes), rather than indexed whole.
fn is_word_field(schema: &Schema, field: &str) -> bool {
    let Some((field, _path)) = schema.find_field(field) else {
        return false;
    };
    let tokenizer = match schema.get_field_entry(field).field_type() {
        FieldType::Str(options) => options.get_indexing_options().map(|o| o.tokenizer()),
        FieldType::JsonObject(options) => {
            options.get_text_indexing_options().map(|o| o.tokenizer())
        }
        _ => None,
    };
    tokenizer.is_some_and(|tokenizer| tokenizer != "raw")
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

/// A wildcard without a field (`gate*`): the message's words, and the
/// whole values of the identifying fields, as a word does; `None` when the
/// literal is not a wildcard.
fn wildcard_everywhere(phrase: &str, prefix: bool) -> Option<UserInputAst> {
    let words = wildcard_pattern(phrase, prefix, true)?;
    let whole = wildcard_pattern(phrase, prefix, false)?;
    let regex = |field: String, pattern: String| {
        let leaf = UserInputLeaf::Regex {
            field: Some(field),
            pattern,
        };
        (Some(Occur::Should), UserInputAst::Leaf(Box::new(leaf)))
    };
    let mut clauses = vec![
        regex("body".to_string(), words),
        regex("service".to_string(), whole.clone()),
    ];
    for key in IDENTIFYING_RESOURCE_KEYS {
        clauses.push(regex(format!("{RESOURCE}.{key}"), whole.clone()));
    }
    Some(UserInputAst::Clause(clauses))
}

/// A regex on the string values at a JSON path
/// (`resource.k8s.pod.name:gateway-*`, `user.name:ali*`), which tantivy's
/// parser refuses. A JSON field's terms are the path, a type code and the
/// value, so the regex runs over all three: the path and the string type
/// literally, then `pattern`. `None` when `name` is not a JSON path.
fn json_path_regex(schema: &Schema, name: &str, pattern: &str) -> Result<Option<Box<dyn Query>>> {
    let Some((field, path)) = schema.find_field(name) else {
        return Ok(None);
    };
    let FieldType::JsonObject(options) = schema.get_field_entry(field).field_type() else {
        return Ok(None);
    };
    if path.is_empty() {
        return Ok(None);
    }
    let term = Term::from_field_json_path(field, path, options.is_expand_dots_enabled());
    let path = String::from_utf8_lossy(term.serialized_value_bytes());
    let mut full = String::with_capacity(path.len() * 2 + pattern.len() + 8);
    for character in path.chars() {
        if character.is_control() {
            full.push_str(&format!("\\x{{{:x}}}", u32::from(character)));
        } else {
            full.push_str(&regex_syntax::escape(character.encode_utf8(&mut [0; 4])));
        }
    }
    full.push(char::from(tantivy::schema::Type::Str.to_code()));
    full.push_str(&format!("(?:{pattern})"));
    let query = tantivy::query::RegexQuery::from_pattern(&full, field).map_err(|error| {
        StoreError::InvalidQuery(format!("invalid pattern {pattern:?}: {error}"))
    })?;
    Ok(Some(Box::new(query)))
}

/// A regex for a single-term wildcard (`ship*`, `*clined`, `sh?pped`), or
/// `None` when the literal is not one; lowercased for a field of words
/// (words are indexed lowercased), as written for whole values.
fn wildcard_pattern(phrase: &str, prefix: bool, words: bool) -> Option<String> {
    let is_wildcard = prefix || phrase.contains(['*', '?']);
    if !is_wildcard || phrase.is_empty() || phrase.contains(char::is_whitespace) {
        return None;
    }
    let phrase = if words {
        phrase.to_lowercase()
    } else {
        phrase.to_string()
    };
    let mut pattern = String::with_capacity(phrase.len() + 4);
    for character in phrase.chars() {
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
/// split into lowercase alphanumeric tokens of at most [`MAX_WORD_BYTES`]
/// (a phrase matches consecutive tokens), `service`, the ids and
/// `resource.x` match whole values, case-sensitively, `severity` ignores
/// case; free text also matches the identifying fields whole; numbers
/// compare as numbers. Differences: slop is ignored, and a negation nested
/// under `OR` means "everything except" where tantivy would match nothing.
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
    /// No field: the message (the identifying fields are separate
    /// leaves after [`normalize`]).
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
            "resource" => Target::Resource(String::new()),
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

/// The index's word tokenizer: alphanumeric runs, lowercased, tokens longer
/// than [`MAX_WORD_BYTES`] dropped.
fn tokenize(text: &str) -> Vec<String> {
    words(text)
        .filter(|token| token.len() <= MAX_WORD_BYTES)
        .map(str::to_lowercase)
        .collect()
}

impl Node {
    fn matches(&self, record: &LogRecord) -> bool {
        self.matches_in(record, &record.resource)
    }

    /// Whether `record`, with `resource` as its resource, matches.
    fn matches_in(
        &self,
        record: &LogRecord,
        resource: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        let any_value = |field: &Target, test: &dyn Fn(Found<'_>) -> bool| {
            any_value(record, resource, field, test)
        };
        match self {
            Node::All => true,
            Node::Clause {
                must,
                should,
                must_not,
            } => {
                if must_not
                    .iter()
                    .any(|node| node.matches_in(record, resource))
                {
                    return false;
                }
                if !must.is_empty() {
                    return must.iter().all(|node| node.matches_in(record, resource));
                }
                should.is_empty() || should.iter().any(|node| node.matches_in(record, resource))
            }
            Node::Literal {
                field,
                text,
                tokens,
            } => any_value(field, &|found| match found {
                Found::Text(value) => contains_phrase(&tokenize(value), tokens),
                Found::Whole(value) => value == text,
                Found::Number(number) => text.parse::<f64>().is_ok_and(|wanted| wanted == number),
            }),
            // Regexes match text terms only, as in the index.
            Node::Regex { field, regex } => any_value(field, &|found| match found {
                Found::Text(value) => tokenize(value).iter().any(|token| regex.is_match(token)),
                Found::Whole(value) => regex.is_match(value),
                Found::Number(_) => false,
            }),
            Node::Range {
                field,
                lower,
                upper,
            } => any_value(field, &|found| match found {
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
            Node::Set { field, elements } => any_value(field, &|found| match found {
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
            // A message without a word has no term, as in the index.
            Node::Exists {
                field: Target::Body,
            } => !tokenize(&record.body).is_empty(),
            Node::Exists { field } => any_value(field, &|_| true),
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
fn any_value(
    record: &LogRecord,
    resource: &serde_json::Map<String, serde_json::Value>,
    field: &Target,
    test: &dyn Fn(Found<'_>) -> bool,
) -> bool {
    match field {
        // Free text: tantivy's parser searches the message and the
        // attributes' root path, which has no values (their keys are paths).
        Target::Default | Target::Body => test(Found::Text(&record.body)),
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
        Target::Resource(path) if path.is_empty() => resource
            .values()
            .any(|value| json_values(value, false, &test)),
        Target::Resource(path) => {
            path_values(resource, path).any(|value| json_values(value, false, &test))
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
    test: &dyn Fn(Found<'_>) -> bool,
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
            resource: std::sync::Arc::new(resource),
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
            ("severity:warn", true),
            ("severity:Warn*", true),
            ("auth", true),
            ("Shop-Prod", true),
            ("resource:*", true),
            ("request_id:*", false),
            ("trace_id:*", true),
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
