//! The log query language: tantivy's query grammar, with two fixes users of
//! Kibana and Quickwit expect, and errors that say where the problem is.
//!
//! - `a AND NOT b` excludes `b` (tantivy alone turns the pure negation into a
//!   clause that matches nothing);
//! - a query of only negations (`NOT debug`) means "everything except".

use tantivy::query::{Query, QueryParser};
use tantivy::query_grammar::{Occur, UserInputAst, UserInputLeaf, parse_query_lenient};

use crate::error::{Result, StoreError};

/// Parses `text` against the index's fields.
pub(crate) fn parse(parser: &QueryParser, text: &str) -> Result<Box<dyn Query>> {
    let (ast, errors) = parse_query_lenient(text);
    if let Some(error) = errors.first() {
        return Err(StoreError::InvalidQuery(format!(
            "{} at position {} of {text:?}",
            error.message, error.pos
        )));
    }
    parser
        .build_query_from_user_input_ast(normalize(ast, true))
        .map_err(|error| StoreError::InvalidQuery(error.to_string()))
}

fn is_pure_negation(clauses: &[(Option<Occur>, UserInputAst)]) -> bool {
    !clauses.is_empty()
        && clauses
            .iter()
            .all(|(occur, _)| *occur == Some(Occur::MustNot))
}

fn normalize(ast: UserInputAst, top_level: bool) -> UserInputAst {
    let UserInputAst::Clause(clauses) = ast else {
        return ast;
    };
    let mut flattened = Vec::with_capacity(clauses.len());
    for (occur, child) in clauses {
        match normalize(child, false) {
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
