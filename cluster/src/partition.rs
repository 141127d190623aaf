//! Which partition a record, span or batch belongs to, and which live node
//! owns a partition.
//!
//! Both are pure functions of their inputs, so every collector computes the
//! same answer with no coordination: the partition from a stable hash of
//! the trace id (every span of a trace meets in one partition, so its owner
//! assembles it whole) or of the log stream (the resource: one service
//! instance's lines stay in order in one partition); the owner by
//! rendezvous hashing over the live nodes PostgreSQL lists, so when a node
//! joins or leaves only the partitions it wins or loses move.

use std::collections::BTreeMap;

use sightline_store::{Batch, LogRecord, PartitionId, SharedResource, Span};

/// Partitions of the log. Fixed for the life of a cluster (records are
/// routed by it) and larger than the largest number of collectors, so
/// ownership can spread.
pub const PARTITIONS: u32 = 64;

/// Partitions of samples, after the log's: metrics partition `i` is
/// partition `PARTITIONS + i` (its subject, lease and checkpoint). Fixed for
/// the life of a cluster (series are routed by it).
pub const METRIC_PARTITIONS: u32 = 16;

/// Slots of rule groups, after the metrics partitions: a node evaluates
/// the groups whose slot it holds a lease on. Not partitions of the log
/// (nothing is published to them); leases and rendezvous hashing only.
pub const RULE_SLOTS: u32 = 16;

/// Slots of scrape targets, after the rule slots: a node scrapes the
/// targets whose slot it holds a lease on.
pub const SCRAPE_SLOTS: u32 = 32;

/// Every leased id: log partitions, metrics partitions, rule slots, scrape
/// slots, in that order.
pub const ALL_PARTITIONS: u32 = PARTITIONS + METRIC_PARTITIONS + RULE_SLOTS + SCRAPE_SLOTS;

/// What a leased id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Logs,
    Metrics,
    RuleSlot,
    ScrapeSlot,
}

/// What `partition` is.
pub fn kind(partition: PartitionId) -> Kind {
    if partition < PARTITIONS {
        Kind::Logs
    } else if partition < PARTITIONS + METRIC_PARTITIONS {
        Kind::Metrics
    } else if partition < PARTITIONS + METRIC_PARTITIONS + RULE_SLOTS {
        Kind::RuleSlot
    } else {
        Kind::ScrapeSlot
    }
}

/// Whether `partition` holds samples (else logs and spans).
pub fn is_metrics(partition: PartitionId) -> bool {
    kind(partition) == Kind::Metrics
}

/// The slot of a rule group (`<file>;<group>`).
pub fn of_rule_group(key: &str) -> PartitionId {
    PARTITIONS
        + METRIC_PARTITIONS
        + (fnv1a(key.as_bytes(), 1) % u64::from(RULE_SLOTS)) as PartitionId
}

/// The slot of a scrape target (its label set).
pub fn of_scrape_target(key: &str) -> PartitionId {
    PARTITIONS
        + METRIC_PARTITIONS
        + RULE_SLOTS
        + (fnv1a(key.as_bytes(), 2) % u64::from(SCRAPE_SLOTS)) as PartitionId
}

/// The partition of a series: every sample of it, whichever collector
/// received it, so its owner sees the whole series (out-of-order checks,
/// staleness, delta sums).
pub fn of_series(labels: &sightline_tsdb::Labels) -> PartitionId {
    let mut hash = 0u64;
    for (name, value) in labels.iter() {
        hash = fnv1a(name.as_bytes(), hash);
        hash = fnv1a(value.as_bytes(), hash);
    }
    PARTITIONS + (hash % u64::from(METRIC_PARTITIONS)) as PartitionId
}

/// FNV-1a, 64 bits: stable across builds and platforms (the standard
/// library's hasher is not), and fast on short keys.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV's low bits are weak on similar keys.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The partition of a trace: every span of it, whichever collector received
/// it.
pub fn of_trace(trace_id: &str) -> PartitionId {
    (fnv1a(trace_id.to_ascii_lowercase().as_bytes(), 0) % u64::from(PARTITIONS)) as PartitionId
}

/// The partition of a log stream: its service and resource attributes.
pub fn of_stream(service: &str, resource: &SharedResource) -> PartitionId {
    let mut key = Vec::with_capacity(128);
    key.extend_from_slice(service.as_bytes());
    key.push(0);
    // serde_json's Map is ordered by key: the same resource, the same bytes.
    serde_json::to_writer(&mut key, resource.as_ref()).unwrap_or_default();
    (fnv1a(&key, 0) % u64::from(PARTITIONS)) as PartitionId
}

/// A log record's partition.
pub fn of_record(record: &LogRecord) -> PartitionId {
    of_stream(&record.service, &record.resource)
}

/// A span's partition.
pub fn of_span(span: &Span) -> PartitionId {
    of_trace(&span.trace_id)
}

/// Splits a batch into one batch per partition, keeping each one's order.
pub fn split(batch: Batch) -> BTreeMap<PartitionId, Batch> {
    let mut parts = BTreeMap::new();
    match batch {
        Batch::Logs(records) => {
            let mut by_partition: BTreeMap<PartitionId, Vec<LogRecord>> = BTreeMap::new();
            // A batch is usually one stream: hash its resource once.
            let mut last: Option<(SharedResource, String, PartitionId)> = None;
            for record in records {
                let partition = match &last {
                    Some((resource, service, partition))
                        if std::sync::Arc::ptr_eq(resource, &record.resource)
                            && *service == record.service =>
                    {
                        *partition
                    }
                    _ => {
                        let partition = of_record(&record);
                        last = Some((record.resource.clone(), record.service.clone(), partition));
                        partition
                    }
                };
                by_partition.entry(partition).or_default().push(record);
            }
            for (partition, records) in by_partition {
                parts.insert(partition, Batch::Logs(records));
            }
        }
        Batch::Spans(spans) => {
            let mut by_partition: BTreeMap<PartitionId, Vec<Span>> = BTreeMap::new();
            for span in spans {
                by_partition.entry(of_span(&span)).or_default().push(span);
            }
            for (partition, spans) in by_partition {
                parts.insert(partition, Batch::Spans(spans));
            }
        }
    }
    parts
}

/// The node that owns `partition` among `live` (node ids): the highest
/// rendezvous score wins. `None` when no node is live.
pub fn owner(partition: PartitionId, live: &[String]) -> Option<&str> {
    live.iter()
        .max_by_key(|node| (fnv1a(node.as_bytes(), u64::from(partition)), node.as_str()))
        .map(String::as_str)
}

/// The node that reads split `split_id` for a query among `live` (node
/// ids): rendezvous hashing, so a split goes to the same node while the
/// nodes stay the same (its cache holds it) and only a departed node's
/// splits move. `None` when no node is live.
pub fn reader_of<'a>(split_id: &str, live: &'a [String]) -> Option<&'a str> {
    let seed = fnv1a(split_id.as_bytes(), 0x5eed);
    live.iter()
        .max_by_key(|node| (fnv1a(node.as_bytes(), seed), node.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_spread_over_readers_and_only_a_departed_nodes_move() {
        let three: Vec<String> = ["c0", "c1", "c2"].map(String::from).to_vec();
        let two: Vec<String> = ["c0", "c2"].map(String::from).to_vec();
        let mut per_node = std::collections::BTreeMap::new();
        for n in 0..300 {
            let split = format!("p{:02}-{n:012}", n % 64);
            let before = reader_of(&split, &three).unwrap();
            *per_node.entry(before).or_insert(0) += 1;
            let after = reader_of(&split, &two).unwrap();
            if before != "c1" {
                assert_eq!(before, after, "{split} moved though its node stayed");
            }
        }
        assert!(per_node.values().all(|count| *count > 60), "{per_node:?}");
    }

    #[test]
    fn a_trace_has_one_partition_whatever_the_case_of_its_id() {
        let id = "4BF92F3577B34DA6A3CE929D0E0E4736";
        assert_eq!(of_trace(id), of_trace(&id.to_lowercase()));
        assert!(of_trace(id) < PARTITIONS);
        // Spread: 6400 traces touch every partition.
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..6400 {
            seen.insert(of_trace(&format!("{n:032x}")));
        }
        assert_eq!(seen.len(), PARTITIONS as usize);
    }

    #[test]
    fn a_batch_splits_by_stream_and_by_trace_keeping_order() {
        let resource = |pod: &str| {
            let mut map = serde_json::Map::new();
            map.insert("k8s.pod.name".into(), pod.into());
            std::sync::Arc::new(map)
        };
        let (a, b) = (resource("a-1"), resource("b-1"));
        let records: Vec<LogRecord> = (0..40)
            .map(|n| LogRecord {
                body: format!("line {n}"),
                service: "shop".into(),
                resource: if n % 2 == 0 { a.clone() } else { b.clone() },
                ..LogRecord::default()
            })
            .collect();
        let parts = split(Batch::Logs(records));
        let mut total = 0;
        for (partition, part) in &parts {
            let Batch::Logs(records) = part else {
                panic!("logs stay logs")
            };
            total += records.len();
            for record in records {
                assert_eq!(of_record(record), *partition);
            }
            let numbers: Vec<u32> = records
                .iter()
                .map(|r| r.body[5..].parse().unwrap())
                .collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        }
        assert_eq!(total, 40);
        assert_eq!(
            parts.len(),
            usize::from(of_stream("shop", &a) != of_stream("shop", &b)) + 1
        );
    }

    #[test]
    fn rendezvous_moves_only_the_partitions_of_the_node_that_left() {
        let three: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let two: Vec<String> = ["n1", "n3"].map(String::from).to_vec();
        let mut owned = BTreeMap::new();
        for partition in 0..PARTITIONS {
            let before = owner(partition, &three).unwrap();
            let after = owner(partition, &two).unwrap();
            if before != "n2" {
                assert_eq!(before, after, "partition {partition} moved needlessly");
            }
            *owned.entry(before).or_insert(0) += 1;
        }
        // Each of three nodes owns some, none owns most.
        assert_eq!(owned.len(), 3, "{owned:?}");
        assert!(owned.values().all(|count| *count > 8), "{owned:?}");
        assert_eq!(owner(3, &[]), None);
    }
}
