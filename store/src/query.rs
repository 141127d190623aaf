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
use tantivy::query_grammar::{Occur, UserInputAst, UserInputLeaf, parse_query_lenient};
use tantivy::schema::Schema;

/// The JSON field that holds a record's parsed fields.
const ATTRIBUTES: &str = "attributes";

use crate::error::{Result, StoreError};

/// Parses `text` against the index's fields.
pub(crate) fn parse(parser: &QueryParser, schema: &Schema, text: &str) -> Result<Box<dyn Query>> {
    let (ast, errors) = parse_query_lenient(text);
    if let Some(error) = errors.first() {
        return Err(StoreError::InvalidQuery(format!(
            "{} at position {} of {text:?}",
            error.message, error.pos
        )));
    }
    parser
        .build_query_from_user_input_ast(normalize(ast, schema, true))
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

fn normalize(ast: UserInputAst, schema: &Schema, top_level: bool) -> UserInputAst {
    let clauses = match ast {
        UserInputAst::Clause(clauses) => clauses,
        UserInputAst::Boost(inner, boost) => {
            return UserInputAst::Boost(Box::new(normalize(*inner, schema, false)), boost);
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
            let leaf = UserInputAst::Leaf(leaf);
            return if top_level {
                normalize(UserInputAst::Clause(vec![(None, leaf)]), schema, true)
            } else {
                leaf
            };
        }
    };
    let mut flattened = Vec::with_capacity(clauses.len());
    for (occur, child) in clauses {
        match normalize(child, schema, false) {
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
    UserInputAst::Clause(flattened)
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
