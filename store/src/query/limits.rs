//! Limits a log query is checked against before it is parsed.
//!
//! tantivy's query grammar, the normalisation here and the query tree it
//! builds all recurse once per nesting level: a query of some 730 nested
//! parentheses (1.5 KB) or a long `NOT NOT ...` chain overflowed the stack
//! of the searching thread and aborted the whole collector. The text is
//! scanned first, without recursion, and refused with a clear error naming
//! the limit.

use crate::error::{Result, StoreError};

/// Longest query text, in bytes. Long `OR` lists of ids fit easily.
pub(crate) const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Deepest nesting of a query: parentheses, plus the `NOT`, `-` and `+`
/// operators applied to a term or a group (each is one more level of the
/// tree). Hand-written queries nest a few levels.
pub(crate) const MAX_QUERY_DEPTH: usize = 64;

/// Refuses a query longer than [`MAX_QUERY_BYTES`] or nested deeper than
/// [`MAX_QUERY_DEPTH`].
pub(crate) fn check(text: &str) -> Result<()> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(StoreError::InvalidQuery(format!(
            "the query is {} bytes long, over the limit of {MAX_QUERY_BYTES} bytes",
            text.len()
        )));
    }
    let mut scan = Scan::default();
    let mut quoted = false;
    let mut escaped = false;
    let mut word = String::new();
    for (position, c) in text.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                scan.word(&word, position)?;
                word.clear();
                // a phrase is an operand
                scan.operand(position)?;
                quoted = true;
            }
            '(' => {
                scan.word(&word, position)?;
                word.clear();
                scan.open(position)?;
            }
            ')' => {
                scan.word(&word, position)?;
                word.clear();
                scan.close();
            }
            c if c.is_whitespace() => {
                scan.word(&word, position)?;
                word.clear();
            }
            c => word.push(c),
        }
    }
    scan.word(&word, text.len())
}

/// Nesting seen so far: what each open parenthesis (with the operators
/// before it) costs, and the operators waiting for their operand.
#[derive(Default)]
struct Scan {
    open: Vec<usize>,
    depth: usize,
    pending: usize,
}

impl Scan {
    fn check(&self, position: usize) -> Result<()> {
        if self.depth + self.pending > MAX_QUERY_DEPTH {
            return Err(StoreError::InvalidQuery(format!(
                "the query nests deeper than {MAX_QUERY_DEPTH} levels of parentheses and NOT/-/+ operators at position {position}; the limit is {MAX_QUERY_DEPTH}"
            )));
        }
        Ok(())
    }

    fn open(&mut self, position: usize) -> Result<()> {
        let cost = 1 + self.pending;
        self.pending = 0;
        self.open.push(cost);
        self.depth += cost;
        self.check(position)
    }

    fn close(&mut self) {
        if let Some(cost) = self.open.pop() {
            self.depth -= cost;
        }
        self.pending = 0;
    }

    fn operand(&mut self, position: usize) -> Result<()> {
        self.check(position)?;
        self.pending = 0;
        Ok(())
    }

    /// A word between separators: `NOT`, a run of `-`/`+`/`!` prefixes,
    /// or an operand (after its prefixes).
    fn word(&mut self, word: &str, position: usize) -> Result<()> {
        if word.is_empty() {
            return Ok(());
        }
        if word == "NOT" {
            self.pending += 1;
            return self.check(position);
        }
        let rest = word.trim_start_matches(['-', '+', '!']);
        self.pending += word.len() - rest.len();
        if rest.is_empty() {
            // operators applied to what follows (a group or a phrase)
            return self.check(position);
        }
        self.operand(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_and_not_chains_past_the_limit_are_refused_naming_it() {
        let nested = |levels: usize| format!("{}error{}", "(".repeat(levels), ")".repeat(levels));
        assert!(check(&nested(MAX_QUERY_DEPTH)).is_ok());
        let error = check(&nested(MAX_QUERY_DEPTH + 1)).unwrap_err().to_string();
        assert!(error.contains("the limit is 64"), "{error}");
        assert!(check(&nested(100_000)).is_err());

        let nots = |count: usize| format!("{}error", "NOT ".repeat(count));
        assert!(check(&nots(MAX_QUERY_DEPTH)).is_ok());
        assert!(check(&nots(MAX_QUERY_DEPTH + 1)).is_err());
        assert!(check(&format!("{}error", "-".repeat(MAX_QUERY_DEPTH + 1))).is_err());
        assert!(check(&format!("{}(error)", "NOT (".repeat(40))).is_err());

        // wide is fine, only deep is not; quoted text does not count
        let wide = vec!["(a AND NOT b)"; 2_000].join(" OR ");
        assert!(check(&wide).is_ok());
        assert!(check(&format!("\"{}\"", "(".repeat(1_000))).is_ok());

        let long = "a ".repeat(MAX_QUERY_BYTES);
        assert!(
            check(&long)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
    }

    /// At the limit, a query searches and compiles for live tail on the
    /// 2 MiB stack of tokio's blocking threads, even in a debug build.
    #[test]
    fn queries_at_the_limit_run_on_a_small_stack() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::LogStore::open(dir.path()).unwrap();
        let record = crate::LogRecord {
            timestamp: 1_700_000_000_000_000_000,
            severity_text: "ERROR".into(),
            body: "payment declined".into(),
            service: "checkout".into(),
            ..crate::LogRecord::default()
        };
        store.add(1, std::slice::from_ref(&record)).unwrap();
        store.commit(1).unwrap();
        let deepest = [
            format!(
                "{}declined{}",
                "(".repeat(MAX_QUERY_DEPTH),
                ")".repeat(MAX_QUERY_DEPTH)
            ),
            format!("{}declined", "NOT ".repeat(MAX_QUERY_DEPTH)),
            format!(
                "{}declined{}",
                "NOT (".repeat(MAX_QUERY_DEPTH / 2),
                ")".repeat(MAX_QUERY_DEPTH / 2)
            ),
        ];
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn_scoped(scope, || {
                    for query in &deepest {
                        let found = store
                            .search(&crate::LogQuery {
                                query: query.clone(),
                                limit: 10,
                                ..crate::LogQuery::default()
                            })
                            .unwrap();
                        let matcher = crate::LogMatcher::new(query).unwrap();
                        assert_eq!(found.hits.len() == 1, matcher.matches(&record), "{query}");
                    }
                })
                .unwrap()
                .join()
                .unwrap();
        });
    }
}
