//! The durable-log seam: where acknowledged batches live until every store
//! has committed them.
//!
//! A receiver acknowledges a batch only once it is durable in a
//! [`DurableLog`]; the indexer reads it back from there after a crash. The
//! log is split into partitions; within one, every entry has a
//! [`Position`], an opaque number that only grows (not a byte offset: the
//! embedded log numbers its entries, a replicated log would use its own
//! sequence). What a reader has consumed is a [`Checkpoint`]: a position
//! per partition.
//!
//! [`crate::wal::LocalWal`], the write-ahead log on the local disk, is the
//! first implementation, with one partition. Entries are opaque bytes; the
//! collector's are [`crate::Batch`] payloads.

use std::collections::BTreeMap;

use crate::error::Result;

/// One partition of a durable log. Positions are ordered within a
/// partition, not across partitions.
pub type PartitionId = u32;

/// The place of an entry in its partition: opaque, ordered, unique. The
/// position after an entry's is at most its position + 1.
pub type Position = u64;

/// The partition of a log that has only one.
pub const SINGLE_PARTITION: PartitionId = 0;

/// For each partition, the position below which a reader has consumed
/// everything. A partition it does not name is at position 0 (nothing
/// consumed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    positions: BTreeMap<PartitionId, Position>,
}

impl Checkpoint {
    /// The checkpoint of a one-partition log.
    pub fn single(position: Position) -> Checkpoint {
        Checkpoint::default().with(SINGLE_PARTITION, position)
    }

    /// This checkpoint with `partition` at `position`.
    pub fn with(mut self, partition: PartitionId, position: Position) -> Checkpoint {
        self.positions.insert(partition, position);
        self
    }

    /// Where `partition` is.
    pub fn position(&self, partition: PartitionId) -> Position {
        self.positions.get(&partition).copied().unwrap_or(0)
    }

    /// The partitions it names, with their positions.
    pub fn iter(&self) -> impl Iterator<Item = (PartitionId, Position)> + '_ {
        self.positions
            .iter()
            .map(|(partition, position)| (*partition, *position))
    }
}

/// One entry read back from a durable log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub partition: PartitionId,
    pub position: Position,
    pub payload: Vec<u8>,
}

/// A log of opaque entries that are durable once [`DurableLog::sync`]
/// returns: appends are group-committed, many entries per sync.
///
/// Any number of threads may call any method; one writer appends at a time
/// (implementations serialize `append` and `sync`), and readers
/// ([`DurableLog::replay`], [`DurableLog::remove_below`]) do not wait for it.
pub trait DurableLog: Send + Sync {
    /// The partitions of this log.
    fn partitions(&self) -> Vec<PartitionId>;

    /// Appends one entry to `partition` and returns its position. It is
    /// durable, and may be acknowledged, only once the next
    /// [`DurableLog::sync`] returns `Ok`. A failed append leaves the log as
    /// it was.
    fn append(&self, partition: PartitionId, payload: &[u8]) -> Result<Position>;

    /// Makes every entry appended so far durable.
    fn sync(&self) -> Result<()>;

    /// For each partition, the position the next entry will get.
    fn end(&self) -> Checkpoint;

    /// Calls `visit` with every entry at or after `from`, in position order
    /// within each partition. An error from `visit` stops the replay and is
    /// returned.
    fn replay(
        &self,
        from: &Checkpoint,
        visit: &mut dyn FnMut(LogEntry) -> Result<()>,
    ) -> Result<()>;

    /// Lets the log drop entries below `checkpoint` (every store has
    /// committed them); returns how many units of storage were freed
    /// (segments for the local WAL). Entries at or past it stay.
    fn remove_below(&self, checkpoint: &Checkpoint) -> Result<usize>;

    /// Bytes the log holds on this machine's disk.
    fn disk_bytes(&self) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_names_a_position_per_partition_and_zero_for_the_rest() {
        let checkpoint = Checkpoint::single(7).with(3, 11);
        assert_eq!(checkpoint.position(SINGLE_PARTITION), 7);
        assert_eq!(checkpoint.position(3), 11);
        assert_eq!(checkpoint.position(1), 0);
        assert_eq!(checkpoint.iter().collect::<Vec<_>>(), [(0, 7), (3, 11)]);
        assert_eq!(Checkpoint::single(7).with(0, 9), Checkpoint::single(9));
    }
}
