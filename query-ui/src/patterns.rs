//! Log patterns: the messages of a bounded sample of matching records,
//! clustered into templates per service with the Drain algorithm (the
//! `logdrain` crate), with their counts over time; given `since`, which
//! patterns are new or grew since then (the question an incident asks).
//!
//! `GET /api/logs/patterns?q=&start=&end=&since=&limit=`: the newest
//! `limit` matching records (half before `since` and half after it when
//! `since` is given) are mined; the answer reports the sample's sizes and
//! the time each side's sample covers, and rates are per minute of that
//! coverage, so a truncated sample does not read as a drop.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use logdrain::{Miner, builtin_masks};
use serde::{Deserialize, Serialize};
use sightline_store::{LogHit, LogQuery};

use crate::QueryState;
use crate::api::{parse_optional_time, range_or_last_hour, within_timeout};
use crate::error::ApiError;

/// Records mined when no `limit` is given.
const DEFAULT_SAMPLE: usize = 5_000;

/// Most records one request mines.
const MAX_SAMPLE: usize = 20_000;

/// Buckets of each pattern's counts over `[start, end)`.
const BUCKETS: usize = 30;

/// Services mined in one request; records of further services are
/// counted in `skipped`.
const MAX_SERVICES: usize = 100;

/// Patterns in one answer (the largest, new and grown ones first).
const MAX_PATTERNS: usize = 200;

/// The part of a message that is mined: its first line, at most this long.
const MAX_LINE_BYTES: usize = 1_000;

const NANOS_PER_MINUTE: f64 = 60_000_000_000.0;

#[derive(Debug, Deserialize)]
pub(crate) struct PatternParams {
    #[serde(default)]
    q: String,
    start: Option<String>,
    end: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

/// How a pattern changed since `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Change {
    /// Not in the sample before `since`.
    New,
    /// At least twice the rate it had before.
    Grown,
    Steady,
    /// At most half the rate it had before.
    Shrunk,
    /// Not in the sample after `since`.
    Gone,
}

/// One template of one service's messages.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pattern {
    pub(crate) service: String,
    /// The template: variable tokens as `<*>`, masked ids as `<uuid>`,
    /// `<hex32>`, `<ipv4>`, `<email>`.
    pub(crate) pattern: String,
    /// Records of the sample (after `since`, when given) in the pattern.
    pub(crate) count: u64,
    /// Records of the sample before `since`.
    pub(crate) count_before: u64,
    /// `count` per minute of the time the sample covers.
    pub(crate) rate: f64,
    pub(crate) rate_before: f64,
    pub(crate) first_seen: i64,
    pub(crate) last_seen: i64,
    /// The newest message of the pattern.
    pub(crate) example: String,
    /// Counts per bucket of `[start, end)`, both sides.
    pub(crate) series: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) change: Option<Change>,
}

/// One side of the sample: records newest first, how many matched, the
/// window they were taken from.
struct Side {
    hits: Vec<LogHit>,
    matched: usize,
    start: i64,
    end: i64,
}

impl Side {
    /// The time the sample covers: from its oldest record (when the limit
    /// cut it short, or when the query's records begin after the window
    /// does: a service started since, logs kept for less), else the window.
    fn covered_from(&self) -> i64 {
        match self.hits.last() {
            Some(oldest) => oldest.record.timestamp.max(self.start),
            None => self.start,
        }
    }

    fn minutes(&self) -> f64 {
        ((self.end - self.covered_from()) as f64 / NANOS_PER_MINUTE).max(1.0 / 60.0)
    }
}

/// What one cluster of one service counted.
#[derive(Default)]
struct Tally<'a> {
    count: u64,
    count_before: u64,
    first_seen: i64,
    last_seen: i64,
    /// The newest line (records are mined oldest first).
    example: &'a str,
    series: Vec<u64>,
}

pub(crate) async fn patterns(
    State(state): State<QueryState>,
    Query(params): Query<PatternParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (start, end) = range_or_last_hour(params.start.as_deref(), params.end.as_deref())?;
    let since = parse_optional_time("since", params.since.as_deref())?;
    if let Some(since) = since
        && !(start < since && since < end)
    {
        return Err(ApiError::BadRequest(format!(
            "`since` ({since}) must be between `start` ({start}) and `end` ({end})"
        )));
    }
    let limit = params.limit.unwrap_or(DEFAULT_SAMPLE);
    if limit == 0 || limit > MAX_SAMPLE {
        return Err(ApiError::BadRequest(format!(
            "`limit` {limit} must be between 1 and {MAX_SAMPLE} records"
        )));
    }
    let began = std::time::Instant::now();
    let query = params.q;
    let (before, after) =
        within_timeout(move || sample(&state, &query, start, end, since, limit)).await?;
    let (patterns, skipped) = mine(before.as_ref(), &after, start, end);
    let sampled_before = before.as_ref().map(|side| side.hits.len());
    Ok(Json(serde_json::json!({
        "start": start,
        "end": end,
        "since": since,
        "bucket_ns": bucket_ns(start, end),
        "sampled": after.hits.len(),
        "matched": after.matched,
        "covered_from": after.covered_from(),
        "sampled_before": sampled_before,
        "matched_before": before.as_ref().map(|side| side.matched),
        "covered_before_from": before.as_ref().map(Side::covered_from),
        "skipped": skipped,
        "patterns": patterns,
        "took_ms": began.elapsed().as_millis() as u64,
    })))
}

/// The newest `limit` matches of `query` in `[start, end)`; with `since`,
/// half of them from before it.
fn sample(
    state: &QueryState,
    query: &str,
    start: i64,
    end: i64,
    since: Option<i64>,
    limit: usize,
) -> sightline_store::Result<(Option<Side>, Side)> {
    let side = |from: i64, to: i64, limit: usize| -> sightline_store::Result<Side> {
        let result = state.logs.search(&LogQuery {
            query: query.to_string(),
            start: Some(from),
            end: Some(to),
            limit,
            after: None,
        })?;
        Ok(Side {
            hits: result.hits,
            matched: result.total_hits,
            start: from,
            end: to,
        })
    };
    Ok(match since {
        Some(since) => (
            Some(side(start, since, limit.div_ceil(2))?),
            side(since, end, limit / 2 + limit % 2)?,
        ),
        None => (None, side(start, end, limit)?),
    })
}

/// The patterns of `query`'s matches that are new or grew since `since`
/// (of the default sample), and how many records were mined on each side.
pub(crate) fn new_since(
    state: &QueryState,
    query: &str,
    start: i64,
    since: i64,
    end: i64,
) -> sightline_store::Result<(Vec<Pattern>, usize, usize)> {
    let (before, after) = sample(state, query, start, end, Some(since), DEFAULT_SAMPLE)?;
    let (patterns, _) = mine(before.as_ref(), &after, start, end);
    let sampled_before = before.as_ref().map_or(0, |side| side.hits.len());
    let changed = patterns
        .into_iter()
        .filter(|pattern| matches!(pattern.change, Some(Change::New | Change::Grown)))
        .collect();
    Ok((changed, after.hits.len(), sampled_before))
}

fn bucket_ns(start: i64, end: i64) -> i64 {
    ((end - start) / BUCKETS as i64).max(1)
}

/// A miner for one service's messages: ids masked before clustering,
/// numbers made variables, paths taken apart at `/` (so
/// `/servers/409/metrics` becomes `/servers/<*>/metrics`, not `<*>`).
fn miner() -> Miner {
    Miner::builder()
        .path_delimiters(&['/'])
        .masks([
            builtin_masks::uuid(),
            builtin_masks::hex32(),
            builtin_masks::ipv4(),
            builtin_masks::email(),
        ])
        .build()
        .expect("the built-in masks and default options are valid")
}

/// The first line of `body`, at most [`MAX_LINE_BYTES`].
fn line(body: &str) -> &str {
    let first = body.lines().next().unwrap_or_default();
    if first.len() <= MAX_LINE_BYTES {
        return first;
    }
    let mut end = MAX_LINE_BYTES;
    while !first.is_char_boundary(end) {
        end -= 1;
    }
    &first[..end]
}

/// Clusters the messages of both sides per service; the patterns, new
/// and grown first when there is a `before` side, then by count; and the
/// number of records skipped past [`MAX_SERVICES`].
fn mine(before: Option<&Side>, after: &Side, start: i64, end: i64) -> (Vec<Pattern>, usize) {
    let width = bucket_ns(start, end);
    let mut miners: HashMap<&str, Miner> = HashMap::new();
    let mut tallies: HashMap<(&str, u64), Tally> = HashMap::new();
    let mut skipped = 0;
    // Oldest first, so a template grows as the records came and each
    // pattern's example ends as its newest message.
    let sides = before
        .into_iter()
        .map(|side| (true, side))
        .chain([(false, after)]);
    for (is_before, side) in sides {
        for hit in side.hits.iter().rev() {
            let record = &hit.record;
            if !miners.contains_key(record.service.as_str()) && miners.len() >= MAX_SERVICES {
                skipped += 1;
                continue;
            }
            let miner = miners.entry(&record.service).or_insert_with(miner);
            let text = line(&record.body);
            let cluster = miner
                .add_at(text, (record.timestamp / 1_000_000).max(0) as u64)
                .cluster_id;
            let tally = tallies
                .entry((record.service.as_str(), cluster))
                .or_insert_with(|| Tally {
                    first_seen: record.timestamp,
                    series: vec![0; BUCKETS],
                    ..Tally::default()
                });
            if is_before {
                tally.count_before += 1;
            } else {
                tally.count += 1;
            }
            tally.first_seen = tally.first_seen.min(record.timestamp);
            tally.last_seen = tally.last_seen.max(record.timestamp);
            tally.example = text;
            let bucket = ((record.timestamp - start) / width).clamp(0, BUCKETS as i64 - 1);
            tally.series[bucket as usize] += 1;
        }
    }
    let minutes_before = before.map(Side::minutes);
    let minutes = after.minutes();
    let mut patterns: Vec<Pattern> = tallies
        .into_iter()
        .map(|((service, cluster), tally)| {
            let pattern = miners[service]
                .cluster(cluster)
                .map(|cluster| cluster.template().to_string())
                .unwrap_or_default();
            let rate = tally.count as f64 / minutes;
            let rate_before = minutes_before.map_or(0.0, |m| tally.count_before as f64 / m);
            let change = minutes_before.map(|_| change(&tally, rate, rate_before));
            Pattern {
                service: service.to_string(),
                pattern,
                count: tally.count,
                count_before: tally.count_before,
                rate,
                rate_before,
                first_seen: tally.first_seen,
                last_seen: tally.last_seen,
                example: tally.example.to_string(),
                series: tally.series,
                change,
            }
        })
        .collect();
    patterns.sort_by(|a, b| {
        a.change
            .cmp(&b.change)
            .then_with(|| b.count.cmp(&a.count))
            .then_with(|| b.count_before.cmp(&a.count_before))
            .then_with(|| (&a.service, &a.pattern).cmp(&(&b.service, &b.pattern)))
    });
    patterns.truncate(MAX_PATTERNS);
    (patterns, skipped)
}

fn change(tally: &Tally, rate: f64, rate_before: f64) -> Change {
    if tally.count == 0 {
        Change::Gone
    } else if tally.count_before == 0 {
        Change::New
    } else if rate >= 2.0 * rate_before {
        Change::Grown
    } else if rate <= rate_before / 2.0 {
        Change::Shrunk
    } else {
        Change::Steady
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_store::LogRecord;

    const MINUTE: i64 = 60_000_000_000;

    fn hit(timestamp: i64, service: &str, body: &str) -> LogHit {
        LogHit {
            id: String::new(),
            record: LogRecord {
                timestamp,
                service: service.into(),
                body: body.into(),
                ..LogRecord::default()
            },
        }
    }

    /// A side of records given oldest first (as they were written).
    fn side(start: i64, end: i64, mut hits: Vec<LogHit>) -> Side {
        hits.reverse();
        Side {
            matched: hits.len(),
            hits,
            start,
            end,
        }
    }

    /// The lines of `logdrain`'s own test data (`testdata/sample.log`,
    /// shipped in the crate): access logs, logins, request timings,
    /// signups and cache misses with ids, addresses and mail addresses.
    const SAMPLE: &str = include_str!("../tests/fixtures/patterns-sample.log");

    #[test]
    fn real_lines_cluster_into_their_templates() {
        let hits: Vec<LogHit> = SAMPLE
            .lines()
            .enumerate()
            .map(|(i, line)| hit(i as i64 * MINUTE, "api", line))
            .collect();
        let lines = hits.len() as u64;
        let after = side(0, 60 * MINUTE, hits);
        let (patterns, skipped) = mine(None, &after, 0, 60 * MINUTE);
        assert_eq!(skipped, 0);
        let found: Vec<(&str, u64)> = patterns
            .iter()
            .map(|p| (p.pattern.as_str(), p.count))
            .collect();
        assert_eq!(
            found,
            [
                ("GET /api/v1/servers/<*>/metrics <*> <*>", 5),
                ("POST /api/v1/users/<*>/login <*> from <ipv4>", 4),
                ("cache miss for key <*>", 4),
                ("request <uuid> completed in <*>", 4),
                ("signup for <email> from <ipv4>", 4),
                ("DELETE /api/v1/sessions/<*> <*>", 3),
                ("WARN slow query <*> on table orders", 3),
                ("payment <uuid> for order <*> status <*>", 2),
                ("healthcheck ok in 2ms", 1),
            ]
        );
        assert_eq!(patterns.iter().map(|p| p.count).sum::<u64>(), lines);
        assert!(patterns.len() < 12, "{found:#?}");
        // Without `since`, no change is claimed.
        assert!(patterns.iter().all(|p| p.change.is_none()));
    }

    #[test]
    fn a_new_and_a_grown_pattern_since_a_time_come_first() {
        let since = 30 * MINUTE;
        let mut old = Vec::new();
        let mut new = Vec::new();
        for minute in 0..30 {
            let at = minute * MINUTE;
            old.push(hit(
                at,
                "payment",
                &format!("charge ok for order ord-{minute} in 12ms"),
            ));
            if minute % 10 == 0 {
                old.push(hit(
                    at + 1,
                    "payment",
                    &format!("retrying charge for order ord-{minute}"),
                ));
            }
            old.push(hit(
                at + 2,
                "gateway",
                &format!("GET /api/products 200 {minute}ms"),
            ));
        }
        for minute in 30..60 {
            let at = minute * MINUTE;
            new.push(hit(
                at,
                "payment",
                &format!("charge ok for order ord-{minute} in 12ms"),
            ));
            new.push(hit(
                at + 1,
                "payment",
                &format!("retrying charge for order ord-{minute}"),
            ));
            new.push(hit(
                at + 2,
                "payment",
                &format!("provider timeout after 3000ms for order ord-{minute}"),
            ));
        }
        let before = side(0, since, old);
        let after = side(since, 60 * MINUTE, new);
        let (patterns, _) = mine(Some(&before), &after, 0, 60 * MINUTE);
        let summary: Vec<(&str, &str, Option<Change>, u64, u64)> = patterns
            .iter()
            .map(|p| {
                (
                    p.service.as_str(),
                    p.pattern.as_str(),
                    p.change,
                    p.count,
                    p.count_before,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "payment",
                    "provider timeout after 3000ms for order <*>",
                    Some(Change::New),
                    30,
                    0
                ),
                (
                    "payment",
                    "retrying charge for order <*>",
                    Some(Change::Grown),
                    30,
                    3
                ),
                (
                    "payment",
                    "charge ok for order <*> in 12ms",
                    Some(Change::Steady),
                    30,
                    30
                ),
                (
                    "gateway",
                    "GET /api/products 200 <*>",
                    Some(Change::Gone),
                    0,
                    30
                ),
            ]
        );
        let timeout = &patterns[0];
        assert_eq!(timeout.first_seen, 30 * MINUTE + 2);
        assert_eq!(
            timeout.example,
            "provider timeout after 3000ms for order ord-59"
        );
        // 30 buckets of two minutes: the new pattern only in the second half.
        assert_eq!(timeout.series[..15].iter().sum::<u64>(), 0);
        assert_eq!(timeout.series[15..].iter().sum::<u64>(), 30);
    }

    #[test]
    fn a_truncated_sample_rates_over_the_time_it_covers() {
        // 100 records in the last 10 minutes of an hour, of 1,000 matches:
        // the rate is per minute of those 10 minutes, not of the hour.
        let hits: Vec<LogHit> = (0..100)
            .map(|i| {
                hit(
                    50 * MINUTE + i * 6_000_000_000,
                    "api",
                    "cache miss for key k",
                )
            })
            .collect();
        let mut after = side(0, 60 * MINUTE, hits);
        after.matched = 1_000;
        assert_eq!(after.covered_from(), 50 * MINUTE);
        let (patterns, _) = mine(None, &after, 0, 60 * MINUTE);
        assert_eq!(patterns[0].count, 100);
        assert!(
            (patterns[0].rate - 10.0).abs() < 1e-9,
            "{}",
            patterns[0].rate
        );
    }

    #[test]
    fn the_mined_line_is_the_first_line_cut_at_a_character() {
        assert_eq!(line("boom\n  at Main.java:7"), "boom");
        let long = "é".repeat(MAX_LINE_BYTES);
        assert!(line(&long).len() <= MAX_LINE_BYTES);
        assert!(line(&long).chars().all(|c| c == 'é'));
    }
}
