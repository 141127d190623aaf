//! Metadata in PostgreSQL: live nodes, partition leases with epochs, the
//! fenced checkpoint of each partition and the list of published splits.
//!
//! Time is PostgreSQL's `now()` everywhere, so nodes' clocks never have to
//! agree. A lease says who should own a partition; it is the checkpoint
//! compare-and-set in [`Metastore::publish_split`] (the checkpoint still
//! where the owner started *and* the epoch still the owner's) that makes an
//! owner that lost its lease without knowing it (paused, partitioned)
//! harmless: its late publish changes nothing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sightline_store::PartitionId;
use tokio_postgres::{Client, NoTls};

use crate::partition::{ALL_PARTITIONS, METRIC_PARTITIONS, PARTITIONS};

/// A partition this node holds: publishes must name this epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub partition: PartitionId,
    pub epoch: i64,
    /// The stream sequence the partition's published splits reach: read
    /// from here.
    pub checkpoint: u64,
}

/// A published split, as listed in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRow {
    pub split_id: String,
    pub partition: PartitionId,
    /// Stream sequences `[from, to)` it covers.
    pub from: u64,
    pub to: u64,
    /// Event time range, nanoseconds.
    pub min_time: i64,
    pub max_time: i64,
    pub logs: u64,
    pub spans: u64,
    pub bytes: u64,
}

/// A published block of samples, as listed in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockRow {
    /// `<min_ms>-p<partition>-s<from>-e<epoch>`: unique, since one epoch of
    /// a partition has one owner and a checkpoint is published once; a
    /// compaction's adds `-c<to>` (its inputs' sequences `[from, to)` are
    /// compacted once: their retirement is its publish).
    pub block_id: String,
    pub partition: PartitionId,
    /// Stream sequences `[from, to)` it covers.
    pub from: u64,
    pub to: u64,
    /// Sample time range, milliseconds, both ends included.
    pub min_ms: i64,
    pub max_ms: i64,
    pub series: u64,
    pub samples: u64,
    pub bytes: u64,
}

/// Why a split was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishSplitError {
    /// The checkpoint moved or the epoch changed: another owner took the
    /// partition. The split must be dropped.
    #[error(
        "fenced: partition {partition} is no longer this owner's at checkpoint {from} (epoch {epoch})"
    )]
    Fenced {
        partition: PartitionId,
        from: u64,
        epoch: i64,
    },
    /// PostgreSQL could not be reached or failed: retry.
    #[error("the metastore failed: {0}")]
    Unavailable(String),
}

/// A fenced statement's outcome: published when it inserted its one row,
/// else fenced (the checkpoint or the epoch had moved).
fn fenced(
    inserted: u64,
    partition: PartitionId,
    from: u64,
    epoch: i64,
) -> Result<(), PublishSplitError> {
    if inserted == 1 {
        Ok(())
    } else {
        Err(PublishSplitError::Fenced {
            partition,
            from,
            epoch,
        })
    }
}

/// A connection to the metastore.
pub struct Metastore {
    /// Replaced by [`Metastore::reconnect_if_closed`] after PostgreSQL
    /// restarts; statements in flight on the old one fail (and are retried).
    client: std::sync::Mutex<Arc<Client>>,
    url: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sightline_nodes (
    node_id text PRIMARY KEY,
    address text NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS sightline_partitions (
    partition integer PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    lease_until timestamptz NOT NULL DEFAULT 'epoch',
    checkpoint bigint NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS sightline_splits (
    split_id text PRIMARY KEY,
    partition integer NOT NULL,
    from_seq bigint NOT NULL,
    to_seq bigint NOT NULL,
    min_time bigint NOT NULL,
    max_time bigint NOT NULL,
    logs bigint NOT NULL,
    spans bigint NOT NULL,
    bytes bigint NOT NULL,
    node_id text NOT NULL,
    epoch bigint NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sightline_splits_time ON sightline_splits (max_time, min_time);
ALTER TABLE sightline_splits ADD COLUMN IF NOT EXISTS retired_at timestamptz;
ALTER TABLE sightline_nodes ADD COLUMN IF NOT EXISTS owns_partitions boolean NOT NULL DEFAULT true;
CREATE TABLE IF NOT EXISTS sightline_blocks (
    block_id text PRIMARY KEY,
    partition integer NOT NULL,
    from_seq bigint NOT NULL,
    to_seq bigint NOT NULL,
    min_ms bigint NOT NULL,
    max_ms bigint NOT NULL,
    series bigint NOT NULL,
    samples bigint NOT NULL,
    bytes bigint NOT NULL,
    node_id text NOT NULL,
    epoch bigint NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);
CREATE INDEX IF NOT EXISTS sightline_blocks_time ON sightline_blocks (max_ms, min_ms);
CREATE TABLE IF NOT EXISTS sightline_metric_metadata (
    metric text PRIMARY KEY,
    kind text NOT NULL,
    help text NOT NULL,
    unit text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
";

impl Metastore {
    /// Connects and creates the tables if they do not exist.
    pub async fn connect(url: &str) -> anyhow::Result<Metastore> {
        let client = Self::open(url).await?;
        Ok(Metastore {
            client: std::sync::Mutex::new(Arc::new(client)),
            url: url.to_string(),
        })
    }

    async fn open(url: &str) -> anyhow::Result<Client> {
        let (mut client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("failed to connect to PostgreSQL at {}", redact(url)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the PostgreSQL connection ended");
            }
        });
        // Collectors start together: one creates the schema at a time.
        let transaction = client.transaction().await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock(7311420191)", &[])
            .await?;
        transaction
            .batch_execute(SCHEMA)
            .await
            .context("failed to create the metastore tables")?;
        transaction
            .execute(
                "INSERT INTO sightline_partitions (partition) \
                 SELECT generate_series(0, $1::integer - 1) ON CONFLICT DO NOTHING",
                &[&(ALL_PARTITIONS as i32)],
            )
            .await?;
        transaction.commit().await?;
        Ok(client)
    }

    fn client(&self) -> Arc<Client> {
        self.client
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Connects again if the connection has ended (PostgreSQL restarted).
    pub async fn reconnect_if_closed(&self) -> anyhow::Result<()> {
        if self.client().is_closed() {
            let client = Self::open(&self.url).await?;
            *self
                .client
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(client);
            tracing::info!(url = %redact(&self.url), "reconnected to PostgreSQL");
        }
        Ok(())
    }

    /// The URL it connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Says this node is alive (and where its internal API listens), and
    /// whether it takes partitions (a query node does not).
    pub async fn heartbeat(
        &self,
        node_id: &str,
        address: &str,
        owns_partitions: bool,
    ) -> anyhow::Result<()> {
        self.client()
            .execute(
                "INSERT INTO sightline_nodes (node_id, address, heartbeat_at, owns_partitions) \
                 VALUES ($1, $2, now(), $3) \
                 ON CONFLICT (node_id) DO UPDATE SET address = $2, heartbeat_at = now(), owns_partitions = $3",
                &[&node_id, &address, &owns_partitions],
            )
            .await?;
        Ok(())
    }

    /// Nodes that take partitions whose last heartbeat is younger than
    /// `ttl`, sorted: the candidates of rendezvous hashing.
    pub async fn live_nodes(&self, ttl: Duration) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client()
            .query(
                "SELECT node_id FROM sightline_nodes \
                 WHERE heartbeat_at > now() - make_interval(secs => $1) AND owns_partitions \
                 ORDER BY node_id",
                &[&ttl.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Takes `partition` if nobody holds a live lease on it (or this node
    /// does), bumping its epoch: any earlier holder, this node's own
    /// earlier incarnation included, is fenced from now on.
    pub async fn acquire(
        &self,
        node_id: &str,
        partition: PartitionId,
        ttl: Duration,
    ) -> anyhow::Result<Option<Lease>> {
        let row = self
            .client()
            .query_opt(
                "UPDATE sightline_partitions \
                 SET owner = $1, epoch = epoch + 1, lease_until = now() + make_interval(secs => $2) \
                 WHERE partition = $3 AND (owner IS NULL OR owner = $1 OR lease_until < now()) \
                 RETURNING epoch, checkpoint",
                &[&node_id, &ttl.as_secs_f64(), &(partition as i32)],
            )
            .await?;
        Ok(row.map(|row| Lease {
            partition,
            epoch: row.get(0),
            checkpoint: row.get::<_, i64>(1) as u64,
        }))
    }

    /// Extends the leases this node holds (partition and epoch); returns
    /// the ones still its own. A lease missing from the answer was taken
    /// over: stop working on it.
    pub async fn renew(
        &self,
        node_id: &str,
        held: &[Lease],
        ttl: Duration,
    ) -> anyhow::Result<Vec<PartitionId>> {
        let partitions: Vec<i32> = held.iter().map(|lease| lease.partition as i32).collect();
        let epochs: Vec<i64> = held.iter().map(|lease| lease.epoch).collect();
        let rows = self
            .client()
            .query(
                "UPDATE sightline_partitions AS p \
                 SET lease_until = now() + make_interval(secs => $2) \
                 FROM unnest($3::integer[], $4::bigint[]) AS held(partition, epoch) \
                 WHERE p.partition = held.partition AND p.epoch = held.epoch AND p.owner = $1 \
                 RETURNING p.partition",
                &[&node_id, &ttl.as_secs_f64(), &partitions, &epochs],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| row.get::<_, i32>(0) as PartitionId)
            .collect())
    }

    /// Gives `lease` up so the node rendezvous hashing names can take it at
    /// once instead of after the lease time.
    pub async fn release(&self, node_id: &str, lease: &Lease) -> anyhow::Result<()> {
        self.client()
            .execute(
                "UPDATE sightline_partitions SET owner = NULL, lease_until = 'epoch' \
                 WHERE partition = $1 AND owner = $2 AND epoch = $3",
                &[&(lease.partition as i32), &node_id, &lease.epoch],
            )
            .await?;
        Ok(())
    }

    /// Publishes a split in one statement (atomic): moves the partition's
    /// checkpoint from `split.from` to `split.to` only if it is still at
    /// `split.from` under `lease.epoch`, and lists the split only if it
    /// moved. Either both happen or neither.
    pub async fn publish_split(
        &self,
        node_id: &str,
        lease: &Lease,
        split: &SplitRow,
    ) -> Result<(), PublishSplitError> {
        let columns = Columns::of(split);
        let inserted = self
            .client()
            .execute(
                "WITH moved AS ( \
                   UPDATE sightline_partitions SET checkpoint = $4 \
                   WHERE partition = $2 AND checkpoint = $3 AND epoch = $11 AND owner = $10 \
                   RETURNING partition) \
                 INSERT INTO sightline_splits \
                 (split_id, partition, from_seq, to_seq, min_time, max_time, logs, spans, bytes, node_id, epoch) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM moved",
                &[
                    &split.split_id,
                    &columns.partition,
                    &columns.from,
                    &columns.to,
                    &split.min_time,
                    &split.max_time,
                    &columns.logs,
                    &columns.spans,
                    &columns.bytes,
                    &node_id,
                    &lease.epoch,
                ],
            )
            .await
            .map_err(|error| PublishSplitError::Unavailable(error.to_string()))?;
        fenced(inserted, split.partition, split.from, lease.epoch)
    }

    /// Publishes a block of samples as [`Metastore::publish_split`]
    /// publishes a split: one statement moves the partition's checkpoint
    /// from `block.from` to `block.to` only if it is still at `block.from`
    /// under `lease.epoch`, and lists the block only if it moved.
    pub async fn publish_block(
        &self,
        node_id: &str,
        lease: &Lease,
        block: &BlockRow,
    ) -> Result<(), PublishSplitError> {
        let inserted = self
            .client()
            .execute(
                "WITH moved AS ( \
                   UPDATE sightline_partitions SET checkpoint = $4 \
                   WHERE partition = $2 AND checkpoint = $3 AND epoch = $11 AND owner = $10 \
                   RETURNING partition) \
                 INSERT INTO sightline_blocks \
                 (block_id, partition, from_seq, to_seq, min_ms, max_ms, series, samples, bytes, node_id, epoch) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 FROM moved",
                &[
                    &block.block_id,
                    &(block.partition as i32),
                    &(block.from as i64),
                    &(block.to as i64),
                    &block.min_ms,
                    &block.max_ms,
                    &(block.series as i64),
                    &(block.samples as i64),
                    &(block.bytes as i64),
                    &node_id,
                    &lease.epoch,
                ],
            )
            .await
            .map_err(|error| PublishSplitError::Unavailable(error.to_string()))?;
        fenced(inserted, block.partition, block.from, lease.epoch)
    }

    /// Moves a partition's checkpoint from `from` to `to` with nothing
    /// published (what lay between was undecodable), under the same fence
    /// as a publish.
    pub async fn advance(
        &self,
        node_id: &str,
        lease: &Lease,
        from: u64,
        to: u64,
    ) -> Result<(), PublishSplitError> {
        let moved = self
            .client()
            .execute(
                "UPDATE sightline_partitions SET checkpoint = $3 \
                 WHERE partition = $1 AND checkpoint = $2 AND epoch = $4 AND owner = $5",
                &[
                    &(lease.partition as i32),
                    &(from as i64),
                    &(to as i64),
                    &lease.epoch,
                    &node_id,
                ],
            )
            .await
            .map_err(|error| PublishSplitError::Unavailable(error.to_string()))?;
        fenced(moved, lease.partition, from, lease.epoch)
    }

    /// The live blocks overlapping `[start_ms, end_ms]` and the checkpoint
    /// of every metrics partition, in one statement: whatever lies at or
    /// past a partition's checkpoint is in none of the blocks listed.
    pub async fn metric_snapshot(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> anyhow::Result<(Vec<BlockRow>, std::collections::BTreeMap<PartitionId, u64>)> {
        let rows = self
            .client()
            .query(
                "SELECT p.partition, p.checkpoint, b.block_id, b.from_seq, b.to_seq, \
                 b.min_ms, b.max_ms, b.series, b.samples, b.bytes \
                 FROM sightline_partitions p LEFT JOIN sightline_blocks b \
                 ON b.partition = p.partition AND b.retired_at IS NULL \
                 AND b.max_ms >= $1 AND b.min_ms <= $2 \
                 WHERE p.partition >= $3 AND p.partition < $4 \
                 ORDER BY p.partition, b.from_seq",
                &[
                    &start_ms,
                    &end_ms,
                    &(PARTITIONS as i32),
                    &((PARTITIONS + METRIC_PARTITIONS) as i32),
                ],
            )
            .await?;
        let mut checkpoints = std::collections::BTreeMap::new();
        let mut blocks = Vec::new();
        for row in &rows {
            let partition = row.get::<_, i32>(0) as PartitionId;
            checkpoints.insert(partition, row.get::<_, i64>(1) as u64);
            if row.get::<_, Option<String>>(2).is_some() {
                blocks.push(block_row(row));
            }
        }
        Ok((blocks, checkpoints))
    }

    /// A partition's live blocks published more than `age` ago, in
    /// sequence order: what a compaction may take.
    pub async fn compactable_blocks(
        &self,
        partition: PartitionId,
        age: Duration,
    ) -> anyhow::Result<Vec<BlockRow>> {
        let rows = self
            .client()
            .query(
                "SELECT partition, 0::bigint, block_id, from_seq, to_seq, \
                 min_ms, max_ms, series, samples, bytes \
                 FROM sightline_blocks \
                 WHERE partition = $1 AND retired_at IS NULL \
                 AND published_at < now() - make_interval(secs => $2) \
                 ORDER BY from_seq",
                &[&(partition as i32), &age.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(block_row).collect())
    }

    /// Publishes `compacted` and retires `inputs` in one statement, under
    /// the fence of [`Metastore::publish_merge`]: only if `node_id` still
    /// holds the partition under `epoch` and every input is still live.
    pub async fn publish_compaction(
        &self,
        node_id: &str,
        epoch: i64,
        inputs: &[String],
        compacted: &BlockRow,
    ) -> Result<(), PublishSplitError> {
        let inserted = self
            .client()
            .execute(
                &replacement(
                    "sightline_blocks",
                    "block_id",
                    "block_id, partition, from_seq, to_seq, min_ms, max_ms, series, samples, bytes",
                ),
                &[
                    &compacted.block_id,
                    &(compacted.partition as i32),
                    &(compacted.from as i64),
                    &(compacted.to as i64),
                    &compacted.min_ms,
                    &compacted.max_ms,
                    &(compacted.series as i64),
                    &(compacted.samples as i64),
                    &(compacted.bytes as i64),
                    &node_id,
                    &epoch,
                    &inputs,
                    &(inputs.len() as i64),
                ],
            )
            .await
            .map_err(|error| PublishSplitError::Unavailable(error.to_string()))?;
        fenced(inserted, compacted.partition, compacted.from, epoch)
    }

    /// Retires the live blocks whose newest sample is older than
    /// `retention` by PostgreSQL's clock, as [`Metastore::retire_older_than`]
    /// retires splits; returns how many. Safe on several nodes at once.
    pub async fn retire_blocks_older_than(&self, retention: Duration) -> anyhow::Result<u64> {
        let millis = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        Ok(self
            .client()
            .execute(
                "UPDATE sightline_blocks SET retired_at = now() \
                 WHERE retired_at IS NULL \
                 AND max_ms < (extract(epoch FROM now()) * 1e3)::bigint - $1",
                &[&millis],
            )
            .await?)
    }

    /// Deletes the rows of blocks retired more than `grace` ago and returns
    /// their ids (each to one caller only), whose objects the caller
    /// deletes.
    pub async fn delete_retired_blocks(&self, grace: Duration) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client()
            .query(
                "DELETE FROM sightline_blocks \
                 WHERE retired_at < now() - make_interval(secs => $1) RETURNING block_id",
                &[&grace.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Records metric metadata (type, help, unit by metric family); the
    /// newest report wins.
    pub async fn set_metric_metadata(
        &self,
        entries: &[(String, String, String, String)],
    ) -> anyhow::Result<()> {
        let mut metrics = Vec::with_capacity(entries.len());
        let mut kinds = Vec::with_capacity(entries.len());
        let mut helps = Vec::with_capacity(entries.len());
        let mut units = Vec::with_capacity(entries.len());
        for (metric, kind, help, unit) in entries {
            metrics.push(metric.as_str());
            kinds.push(kind.as_str());
            helps.push(help.as_str());
            units.push(unit.as_str());
        }
        self.client()
            .execute(
                "INSERT INTO sightline_metric_metadata (metric, kind, help, unit) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) \
                 ON CONFLICT (metric) DO UPDATE \
                 SET kind = excluded.kind, help = excluded.help, unit = excluded.unit, updated_at = now()",
                &[&metrics, &kinds, &helps, &units],
            )
            .await?;
        Ok(())
    }

    /// Every metric family's metadata: (metric, type, help, unit), sorted.
    pub async fn metric_metadata(&self) -> anyhow::Result<Vec<(String, String, String, String)>> {
        let rows = self
            .client()
            .query(
                "SELECT metric, kind, help, unit FROM sightline_metric_metadata ORDER BY metric",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
            .collect())
    }

    /// Every published split, oldest sequence first.
    pub async fn splits(&self) -> anyhow::Result<Vec<SplitRow>> {
        self.splits_where(None, None, None).await
    }

    /// The published splits holding records or spans of `[start, end)`
    /// (either bound open when `None`), of one partition when given, oldest
    /// sequence first.
    pub async fn splits_where(
        &self,
        start: Option<i64>,
        end: Option<i64>,
        partition: Option<PartitionId>,
    ) -> anyhow::Result<Vec<SplitRow>> {
        let partition = partition.map(|partition| partition as i32);
        let rows = self
            .client()
            .query(
                "SELECT split_id, partition, from_seq, to_seq, min_time, max_time, logs, spans, bytes \
                 FROM sightline_splits \
                 WHERE retired_at IS NULL \
                 AND ($1::bigint IS NULL OR max_time >= $1) AND ($2::bigint IS NULL OR min_time < $2) \
                 AND ($3::integer IS NULL OR partition = $3) \
                 ORDER BY partition, from_seq",
                &[&start, &end, &partition],
            )
            .await?;
        Ok(rows.iter().map(split_row).collect())
    }

    /// The published splits of `[start, end)` (of one partition when
    /// given) and every partition's checkpoint, read in one statement, so
    /// one snapshot: whatever lies at or past a partition's checkpoint is
    /// in none of the splits listed. Used with the owners' fresh data.
    pub async fn snapshot(
        &self,
        start: Option<i64>,
        end: Option<i64>,
        partition: Option<PartitionId>,
    ) -> anyhow::Result<(Vec<SplitRow>, std::collections::BTreeMap<PartitionId, u64>)> {
        let partition = partition.map(|partition| partition as i32);
        let rows = self
            .client()
            .query(
                "SELECT p.partition, p.checkpoint, s.split_id, s.from_seq, s.to_seq, \
                 s.min_time, s.max_time, s.logs, s.spans, s.bytes \
                 FROM sightline_partitions p LEFT JOIN sightline_splits s \
                 ON s.partition = p.partition AND s.retired_at IS NULL \
                 AND ($1::bigint IS NULL OR s.max_time >= $1) AND ($2::bigint IS NULL OR s.min_time < $2) \
                 WHERE ($3::integer IS NULL OR p.partition = $3) \
                 ORDER BY p.partition, s.from_seq",
                &[&start, &end, &partition],
            )
            .await?;
        let mut checkpoints = std::collections::BTreeMap::new();
        let mut splits = Vec::new();
        for row in &rows {
            let partition = row.get::<_, i32>(0) as PartitionId;
            checkpoints.insert(partition, row.get::<_, i64>(1) as u64);
            if let Some(split_id) = row.get::<_, Option<String>>(2) {
                splits.push(SplitRow {
                    split_id,
                    partition,
                    from: row.get::<_, i64>(3) as u64,
                    to: row.get::<_, i64>(4) as u64,
                    min_time: row.get(5),
                    max_time: row.get(6),
                    logs: row.get::<_, i64>(7) as u64,
                    spans: row.get::<_, i64>(8) as u64,
                    bytes: row.get::<_, i64>(9) as u64,
                });
            }
        }
        Ok((splits, checkpoints))
    }

    /// Where the nodes whose heartbeat is younger than `ttl` listen.
    pub async fn live_addresses(&self, ttl: Duration) -> anyhow::Result<Vec<(String, String)>> {
        let rows = self
            .client()
            .query(
                "SELECT node_id, address FROM sightline_nodes \
                 WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY node_id",
                &[&ttl.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Retires the live splits whose newest record or span is older than
    /// `retention` by PostgreSQL's clock: queries stop listing them now,
    /// [`Metastore::delete_retired`] removes them after a grace period.
    /// Returns how many. Safe on several nodes at once.
    pub async fn retire_older_than(&self, retention: Duration) -> anyhow::Result<u64> {
        let nanos = i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
        Ok(self
            .client()
            .execute(
                "UPDATE sightline_splits SET retired_at = now() \
                 WHERE retired_at IS NULL \
                 AND max_time < (extract(epoch FROM now()) * 1e9)::bigint - $1",
                &[&nanos],
            )
            .await?)
    }

    /// Deletes the rows of splits retired more than `grace` ago (longer
    /// than a query runs, so none still reads them) and returns their ids,
    /// whose objects the caller deletes. Each row is returned to one
    /// caller only, whichever nodes run this at once.
    pub async fn delete_retired(&self, grace: Duration) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client()
            .query(
                "DELETE FROM sightline_splits \
                 WHERE retired_at < now() - make_interval(secs => $1) RETURNING split_id",
                &[&grace.as_secs_f64()],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Which of `split_ids` have a row, live or retired.
    pub async fn known_splits(&self, split_ids: &[String]) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client()
            .query(
                "SELECT split_id FROM sightline_splits WHERE split_id = ANY($1)",
                &[&split_ids],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// The partitions `node_id` holds a live lease on, with their epochs.
    pub async fn leases_of(&self, node_id: &str) -> anyhow::Result<Vec<(PartitionId, i64)>> {
        let rows = self
            .client()
            .query(
                "SELECT partition, epoch FROM sightline_partitions \
                 WHERE owner = $1 AND lease_until > now() ORDER BY partition",
                &[&node_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, i32>(0) as PartitionId, row.get(1)))
            .collect())
    }

    /// A partition's live splits published more than `age` ago and smaller
    /// than `bytes`, in sequence order: what a merge may take.
    pub async fn small_splits(
        &self,
        partition: PartitionId,
        age: Duration,
        bytes: u64,
    ) -> anyhow::Result<Vec<SplitRow>> {
        let rows = self
            .client()
            .query(
                "SELECT split_id, partition, from_seq, to_seq, min_time, max_time, logs, spans, bytes \
                 FROM sightline_splits \
                 WHERE partition = $1 AND retired_at IS NULL \
                 AND published_at < now() - make_interval(secs => $2) AND bytes < $3 \
                 ORDER BY from_seq",
                &[
                    &(partition as i32),
                    &age.as_secs_f64(),
                    &i64::try_from(bytes).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        Ok(rows.iter().map(split_row).collect())
    }

    /// Publishes `merged` and retires `inputs` in one statement, only if
    /// `node_id` still holds the partition under `epoch` and every input is
    /// still live (locked meanwhile): a zombie owner, or a merge racing
    /// another over the same inputs, changes nothing.
    pub async fn publish_merge(
        &self,
        node_id: &str,
        epoch: i64,
        inputs: &[String],
        merged: &SplitRow,
    ) -> Result<(), PublishSplitError> {
        let columns = Columns::of(merged);
        let inserted = self
            .client()
            .execute(
                &replacement(
                    "sightline_splits",
                    "split_id",
                    "split_id, partition, from_seq, to_seq, min_time, max_time, logs, spans, bytes",
                ),
                &[
                    &merged.split_id,
                    &columns.partition,
                    &columns.from,
                    &columns.to,
                    &merged.min_time,
                    &merged.max_time,
                    &columns.logs,
                    &columns.spans,
                    &columns.bytes,
                    &node_id,
                    &epoch,
                    &inputs,
                    &(inputs.len() as i64),
                ],
            )
            .await
            .map_err(|error| PublishSplitError::Unavailable(error.to_string()))?;
        fenced(inserted, merged.partition, merged.from, epoch)
    }

    /// PostgreSQL's clock, the cluster's one clock.
    pub async fn now(&self) -> anyhow::Result<std::time::SystemTime> {
        let row = self.client().query_one("SELECT now()", &[]).await?;
        Ok(row.get(0))
    }

    /// Each partition's owner (if any), epoch and checkpoint.
    pub async fn partitions(&self) -> anyhow::Result<Vec<(PartitionId, Option<String>, i64, u64)>> {
        let rows = self
            .client()
            .query(
                "SELECT partition, owner, epoch, checkpoint FROM sightline_partitions ORDER BY partition",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    row.get::<_, i32>(0) as PartitionId,
                    row.get(1),
                    row.get(2),
                    row.get::<_, i64>(3) as u64,
                )
            })
            .collect())
    }
}

/// A split row's unsigned numbers as PostgreSQL's signed columns, for the
/// statements that insert one.
struct Columns {
    partition: i32,
    from: i64,
    to: i64,
    logs: i64,
    spans: i64,
    bytes: i64,
}

impl Columns {
    fn of(split: &SplitRow) -> Columns {
        Columns {
            partition: split.partition as i32,
            from: split.from as i64,
            to: split.to as i64,
            logs: split.logs as i64,
            spans: split.spans as i64,
            bytes: split.bytes as i64,
        }
    }
}

/// The statement that lists one row of `table` (its nine `columns`, then
/// `node_id` and `epoch`: parameters `$1..$11`) in place of the live rows
/// whose `id` is in `$12` (`$13` of them), only if `$10` still holds
/// partition `$2` under epoch `$11` and every one of them is still live
/// (locked meanwhile): a merge of splits, a compaction of blocks.
fn replacement(table: &str, id: &str, columns: &str) -> String {
    format!(
        "WITH lease AS ( \
           SELECT partition FROM sightline_partitions \
           WHERE partition = $2 AND owner = $10 AND epoch = $11 FOR UPDATE), \
         locked AS ( \
           SELECT {id} FROM {table} \
           WHERE {id} = ANY($12) AND partition = $2 AND retired_at IS NULL \
           AND EXISTS (SELECT 1 FROM lease) FOR UPDATE), \
         ok AS (SELECT count(*) = $13 AS ok FROM locked), \
         retired AS ( \
           UPDATE {table} SET retired_at = now() \
           WHERE {id} IN (SELECT {id} FROM locked) AND (SELECT ok FROM ok) \
           RETURNING {id}) \
         INSERT INTO {table} ({columns}, node_id, epoch) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 WHERE (SELECT ok FROM ok)"
    )
}

/// A block from columns `partition, _, block_id, from_seq, to_seq, min_ms,
/// max_ms, series, samples, bytes`.
fn block_row(row: &tokio_postgres::Row) -> BlockRow {
    BlockRow {
        block_id: row.get(2),
        partition: row.get::<_, i32>(0) as PartitionId,
        from: row.get::<_, i64>(3) as u64,
        to: row.get::<_, i64>(4) as u64,
        min_ms: row.get(5),
        max_ms: row.get(6),
        series: row.get::<_, i64>(7) as u64,
        samples: row.get::<_, i64>(8) as u64,
        bytes: row.get::<_, i64>(9) as u64,
    }
}

/// A [`SplitRow`] from a row selecting `split_id, partition, from_seq,
/// to_seq, min_time, max_time, logs, spans, bytes`, in that order.
fn split_row(row: &tokio_postgres::Row) -> SplitRow {
    SplitRow {
        split_id: row.get(0),
        partition: row.get::<_, i32>(1) as PartitionId,
        from: row.get::<_, i64>(2) as u64,
        to: row.get::<_, i64>(3) as u64,
        min_time: row.get(4),
        max_time: row.get(5),
        logs: row.get::<_, i64>(6) as u64,
        spans: row.get::<_, i64>(7) as u64,
        bytes: row.get::<_, i64>(8) as u64,
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            super::redact("postgres://app:s3cret@db:5432/meta"),
            "postgres://app:***@db:5432/meta"
        );
        assert_eq!(super::redact("postgres://db/meta"), "postgres://db/meta");
    }
}
