//! Cluster mode on existing engines: NATS JetStream is the partitioned
//! durable log, PostgreSQL holds leases, fenced checkpoints and the split
//! list, S3-compatible object storage holds immutable splits. No
//! membership, gossip or consensus protocol of our own.
//!
//! ```text
//! client --> any collector --publish, wait for the stream's ack--> JetStream
//!        <-- ack (only now)          subject <prefix>.<partition>
//!                                          |
//!   partition owner (lease in PostgreSQL) <-+ reads from its checkpoint
//!     every split_interval: build a split (LogStore + SpanStore),
//!     upload to S3, publish = one statement moving the checkpoint
//!     from -> to iff it is still `from` under the owner's epoch,
//!     then purge the partition below `to`.
//! ```
//!
//! - [`partition`]: which partition (trace id, log stream) and which owner
//!   (rendezvous hashing over the live nodes).
//! - [`log`]: the JetStream stream: publish with acknowledgement, read a
//!   partition, purge.
//! - [`metastore`]: PostgreSQL: heartbeats, leases, the fenced publish.
//! - [`splits`]: building, uploading and downloading splits.
//! - [`node`]: the ownership loop that ties them together.
//! - `lifecycle`: retention of splits and the janitor of orphaned uploads,
//!   run by every node.
//! - [`query`]: the published splits read as one store by any node
//!   ([`ClusterReader`]), through the local split cache ([`cache`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Deserializer};

pub mod assignment;
pub mod cache;
pub mod fresh;
mod lifecycle;
pub mod log;
pub mod metastore;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod query;
pub mod remote;
pub mod splits;
pub mod tail;

pub use log::{ClusterLog, NatsConfig, PublishError};
pub use metastore::{BlockRow, Metastore, SplitRow};
pub use metrics::{ClusterMetrics, ClusterSampleLog};
pub use node::{Node, NodeStats};
pub use query::ClusterReader;
pub use splits::{ObjectStoreConfig, SplitMeta, SplitStorage};

/// The `cluster:` section of the collector's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This collector's name among the nodes; unique and stable across
    /// restarts (a StatefulSet pod name). `$HOSTNAME` when unset.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    pub nats: NatsConfig,
    /// `postgres://user:password@host:port/db`; the collector's
    /// `SIGHTLINE_CLUSTER_POSTGRES_URL` overrides it (keep the password
    /// out of a ConfigMap).
    #[serde(default)]
    pub postgres: String,
    pub object_store: ObjectStoreConfig,
    /// How long a partition owner gathers entries before it cuts a split.
    #[serde(default = "default_split_interval", deserialize_with = "duration")]
    pub split_interval: Duration,
    /// A split is cut early at this many bytes of entries (and reading
    /// pauses while one this big waits to be published).
    #[serde(default = "default_split_max_bytes")]
    pub split_max_bytes: usize,
    /// A node that has not heartbeated for this long is dead and its
    /// partitions' leases may be taken.
    #[serde(default = "default_lease_ttl", deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// Bytes of published splits a node keeps on its disk for queries
    /// (least recently used evicted first).
    #[serde(default = "default_split_cache_bytes")]
    pub split_cache_bytes: u64,
    /// How splits are read: `ranges` (their hotcache, then the byte ranges
    /// queries need) or `download` (whole, onto the local disk).
    #[serde(default)]
    pub split_reads: cache::SplitReads,
    /// Bytes of split file chunks read by range a node keeps in memory.
    #[serde(default = "default_range_cache_bytes")]
    pub range_cache_bytes: u64,
    /// How often each node runs retention and the janitor.
    #[serde(default = "default_lifecycle_interval", deserialize_with = "duration")]
    pub lifecycle_interval: Duration,
    /// How long a split past retention stays readable after it was retired
    /// (longer than a query runs) before its row and objects are deleted.
    #[serde(default = "default_retired_grace", deserialize_with = "duration")]
    pub retired_grace: Duration,
    /// How old a split's objects without a row must be before the janitor
    /// deletes them (an upload whose publish failed). Longer than an upload
    /// and its publish take, retries included.
    #[serde(default = "default_orphan_grace", deserialize_with = "duration")]
    pub orphan_grace: Duration,
    /// A partition owner merges its adjacent splits smaller than
    /// `merge_split_bytes` once they were published this long ago (up to
    /// ten at a time), so long retention does not mean many small splits.
    #[serde(default = "default_merge_after", deserialize_with = "duration")]
    pub merge_after: Duration,
    #[serde(default = "default_merge_split_bytes")]
    pub merge_split_bytes: u64,
    /// `host:port` the other nodes reach this node's query port at; the
    /// collector's `SIGHTLINE_CLUSTER_ADVERTISE_ADDRESS` overrides it (a
    /// pod's `$(POD_IP):7070`). When unset: the query listener's address,
    /// or, when it listens on every interface, this host's address on its
    /// default route with the listener's port.
    #[serde(default)]
    pub advertise_address: Option<String>,
    /// PEM certificates of the CA(s) that sign the nodes' query-port
    /// certificates. When the query port has TLS (`--tls-cert`), nodes call
    /// each other over HTTPS and check the peer's certificate against these
    /// (the system's roots when unset).
    #[serde(default)]
    pub peer_ca: Option<PathBuf>,
    /// How long a metrics partition's owner gathers samples in its head
    /// before it cuts a block (Prometheus and Mimir cut every 2 hours; the
    /// stream holds what the heads hold, and a new owner replays it).
    #[serde(
        default = "default_metrics_block_interval",
        deserialize_with = "duration"
    )]
    pub metrics_block_interval: Duration,
    /// A metrics partition's owner compacts runs of its adjacent blocks
    /// (up to 16, published `merge_after` ago) into one block spanning at
    /// most this long, as Prometheus' and Mimir's compactors do (2 h blocks
    /// into a day): fewer, larger blocks for long-range queries.
    #[serde(
        default = "default_metrics_compaction_range",
        deserialize_with = "duration"
    )]
    pub metrics_compaction_range: Duration,
    /// Bytes of block indexes and series chunks a node keeps in memory for
    /// queries (least recently used evicted first).
    #[serde(default = "default_block_cache_bytes")]
    pub block_cache_bytes: u64,
    /// `false` makes a query node: it takes writes (publishing them) and
    /// answers every query, but owns no partition, so query capacity
    /// scales apart from ingest (Mimir's queriers, Loki's query tier).
    #[serde(default = "default_true")]
    pub owns_partitions: bool,
}

fn default_true() -> bool {
    true
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "sightline-collector".into())
}
fn default_split_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_split_max_bytes() -> usize {
    64 << 20
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_split_cache_bytes() -> u64 {
    4 << 30
}
fn default_range_cache_bytes() -> u64 {
    1 << 30
}
fn default_metrics_block_interval() -> Duration {
    Duration::from_secs(2 * 60 * 60)
}
fn default_metrics_compaction_range() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}
fn default_block_cache_bytes() -> u64 {
    1 << 30
}
fn default_lifecycle_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_retired_grace() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_orphan_grace() -> Duration {
    Duration::from_secs(60 * 60)
}
fn default_merge_after() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_merge_split_bytes() -> u64 {
    64 << 20
}

/// The `host:port` other nodes call this node at: `configured` if given,
/// else `listen` unless it is every interface's, else this host's address
/// on its default route (found by routing a UDP socket, which sends
/// nothing) with `listen`'s port.
fn advertised_address(
    configured: Option<&str>,
    listen: std::net::SocketAddr,
) -> anyhow::Result<String> {
    if let Some(address) = configured {
        let port = address
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        anyhow::ensure!(
            matches!(port, Some(Ok(_))),
            "cluster.advertise_address {address:?} is not host:port"
        );
        return Ok(address.to_string());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let routed = || -> std::io::Result<std::net::IpAddr> {
        let socket = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        // TEST-NET-1: any routable address does; nothing is sent.
        socket.connect(("192.0.2.1", 9))?;
        Ok(socket.local_addr()?.ip())
    };
    let ip = routed().with_context(|| {
        format!(
            "the query API listens on {listen} and this host has no default route to tell its address by: set cluster.advertise_address"
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, listen.port()).to_string())
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A collector in cluster mode: what its receivers publish to, and its
/// ownership work.
pub struct Cluster {
    pub log: ClusterLog,
    pub node: Node,
    /// The published splits as one store, for the query API.
    pub reader: std::sync::Arc<ClusterReader>,
    /// The internal API other nodes call (fresh data), for the query port.
    pub internal: axum::Router,
    /// Where every writer of samples publishes (the tsdb's `SampleLog`).
    pub samples: std::sync::Arc<ClusterSampleLog>,
    /// The cluster's samples as one store, for the Prometheus API and rules.
    pub metrics: std::sync::Arc<ClusterMetrics>,
    /// Which rule groups and scrape targets this node works on.
    pub assignment: std::sync::Arc<assignment::Assignment>,
    /// Every node's rule groups, for `/api/v1/rules` and `/api/v1/alerts`
    /// (give it this node's rule engine with `set_local`).
    pub rules: std::sync::Arc<metrics::ClusterRules>,
}

impl Cluster {
    /// Connects to NATS, PostgreSQL and the object store and starts taking
    /// partitions. `work_dir` holds splits while they are cut; `listen` is
    /// where this node's query API listens (with TLS when `tls`), its
    /// advertised address listed with its heartbeat; splits whose newest
    /// record is older than `retention` are deleted.
    pub async fn start(
        config: ClusterConfig,
        work_dir: PathBuf,
        listen: std::net::SocketAddr,
        tls: bool,
        retention: Duration,
        peer_token: Option<String>,
    ) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            !config.node_id.is_empty(),
            "cluster.node_id is empty: give every collector a unique name"
        );
        let address = advertised_address(config.advertise_address.as_deref(), listen)?;
        tracing::info!(node = %config.node_id, %address, tls, "the other nodes call this one at its advertised address");
        let mut peers = query::Peers::new(config.node_id.clone(), peer_token, config.lease_ttl)?;
        if tls {
            peers = peers.with_tls(config.peer_ca.as_deref())?;
        }
        let log = ClusterLog::connect(&config.nats).await?;
        let reader = ClusterReader::connect(
            &config.postgres,
            SplitStorage::new(&config.object_store)?,
            &work_dir.join("split-cache"),
            cache::CacheSettings {
                split_bytes: config.split_cache_bytes,
                reads: config.split_reads,
                range_bytes: config.range_cache_bytes,
            },
            peers.clone(),
        )
        .await?;
        let reader = std::sync::Arc::new(reader);
        let fresh = std::sync::Arc::new(fresh::FreshPartitions::default());
        let metastore = std::sync::Arc::new(Metastore::connect(&config.postgres).await?);
        let heads = std::sync::Arc::new(metrics::MetricHeads::default());
        let metrics = std::sync::Arc::new(ClusterMetrics::new(
            metastore.clone(),
            SplitStorage::new(&config.object_store)?,
            config.block_cache_bytes,
            heads.clone(),
            peers.clone(),
        ));
        let rules =
            std::sync::Arc::new(metrics::ClusterRules::new(metastore.clone(), peers.clone()));
        let samples = std::sync::Arc::new(ClusterSampleLog::new(log.clone(), metastore));
        let assignment = std::sync::Arc::new(assignment::Assignment::default());
        let internal = fresh::router(std::sync::Arc::new(fresh::InternalApi {
            partitions: fresh.clone(),
            reader: reader.clone(),
            metrics: metrics.clone(),
            rules: rules.clone(),
        }));
        let node = Node::start(
            config,
            log.clone(),
            work_dir,
            address,
            node::Shared {
                reader: reader.clone(),
                fresh,
                metrics_heads: heads,
                metrics: metrics.clone(),
                assignment: assignment.clone(),
            },
            retention,
        )
        .await?;
        Ok(Cluster {
            log,
            node,
            reader,
            internal,
            samples,
            metrics,
            assignment,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::advertised_address;

    #[test]
    fn a_node_advertises_an_address_the_others_can_call() {
        let any: std::net::SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let loopback: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(
            advertised_address(Some("10.1.2.3:7070"), any).unwrap(),
            "10.1.2.3:7070"
        );
        assert_eq!(
            advertised_address(None, loopback).unwrap(),
            "127.0.0.1:7070"
        );
        let error = advertised_address(Some("collector-0"), any).unwrap_err();
        assert!(error.to_string().contains("not host:port"), "{error}");
        // Every interface: never 0.0.0.0 itself, which would be the caller.
        if let Ok(address) = advertised_address(None, any) {
            let address: std::net::SocketAddr = address.parse().unwrap();
            assert!(!address.ip().is_unspecified(), "{address}");
            assert_eq!(address.port(), 7070);
        }
    }
}
