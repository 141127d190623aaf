//! The partitioned durable log on NATS JetStream.
//!
//! One stream (`SIGHTLINE` by default) with one subject per partition,
//! `<prefix>.<partition>`. A collector publishes each acknowledged-to-be
//! batch split by partition and waits for every publish acknowledgement
//! before it acknowledges its client: JetStream has then stored the
//! message on a quorum of the stream's replicas (in their page cache; see
//! ARCHITECTURE.md "what an acknowledgement means in cluster mode" for
//! `sync_interval`). The stream discards *new* messages at its byte limit,
//! so a full stream is backpressure to clients, never a silent drop.
//!
//! Owners read a partition from a stream sequence on, with an ephemeral
//! consumer (no acknowledgements: what they have consumed is the fenced
//! checkpoint in PostgreSQL, not consumer state that a zombie could move),
//! and purge a partition below the checkpoint once a split covering it is
//! published.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Deserialize;
use sightline_store::{Batch, PartitionId};

use crate::partition;

/// How to reach the log.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`); the client fails over between them.
    pub servers: Vec<String>,
    /// The stream's name.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subject prefix; partition `n` is `<prefix>.<n>`.
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    /// Replicas of the stream: 3 in production (a quorum of 2 survives one
    /// server), 1 for a single server.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Bytes the stream may hold before publishes are refused.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: i64,
}

fn default_stream() -> String {
    "SIGHTLINE".into()
}
fn default_prefix() -> String {
    "sightline.p".into()
}
fn default_replicas() -> usize {
    3
}
fn default_max_bytes() -> i64 {
    8 << 30
}

/// Why a publish was not acknowledged. Every kind is retryable by the
/// client: nothing of the batch is acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The stream is at its byte limit: the owners are behind.
    #[error("the cluster log is full, retry later")]
    Full,
    /// NATS did not acknowledge (an outage, no quorum, a timeout).
    #[error("the cluster log did not acknowledge: {0}")]
    Unavailable(String),
    /// One item is larger than the largest message the servers accept.
    #[error("a record of {size} bytes is over the cluster log's message limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// A message read back from a partition.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its stream sequence: unique across partitions and nodes, so record
    /// ids derived from it are too.
    pub sequence: u64,
    pub payload: Bytes,
}

/// A connection to the stream.
#[derive(Clone)]
pub struct ClusterLog {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: stream::Stream,
    prefix: String,
    /// The largest message body, below the servers' `max_payload`.
    max_message: usize,
}

impl ClusterLog {
    /// Connects and creates the stream if it does not exist.
    pub async fn connect(config: &NatsConfig) -> anyhow::Result<ClusterLog> {
        let servers = config.servers.join(",");
        let addresses = config
            .servers
            .iter()
            .map(|server| {
                server
                    .parse::<async_nats::ServerAddr>()
                    .with_context(|| format!("invalid NATS server {server:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(addresses)
            .await
            .with_context(|| format!("failed to connect to NATS at {servers}"))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(Duration::from_secs(10));
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.*", config.subject_prefix)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            discard: stream::DiscardPolicy::New,
            max_bytes: config.max_bytes,
            ..Default::default()
        };
        // Several collectors start at once: one creates, the others find it.
        let mut attempt = 0;
        let stream = loop {
            match jetstream.get_or_create_stream(wanted.clone()).await {
                Ok(stream) => break stream,
                Err(error) if attempt < 20 => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "creating the stream, retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => {
                    return Err(anyhow::anyhow!(
                        "failed to create or find the JetStream stream {}: {error}",
                        config.stream
                    ));
                }
            }
        };
        // Headroom for the headers and the subject.
        let max_message = client
            .server_info()
            .max_payload
            .saturating_sub(4096)
            .max(4096);
        Ok(ClusterLog {
            client,
            jetstream,
            stream,
            prefix: config.subject_prefix.clone(),
            max_message,
        })
    }

    /// Whether the client is connected to a NATS server now (it reconnects
    /// by itself; publishes meanwhile are refused, as backpressure).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The largest message this log publishes (the servers' `max_payload`,
    /// less room for headers).
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    fn subject(&self, partition: PartitionId) -> String {
        format!("{}.{partition}", self.prefix)
    }

    /// Publishes `batch`, split by partition and into messages under the
    /// servers' limit, and returns once every message is acknowledged by
    /// the stream (then, and only then, may the client be acknowledged).
    /// On an error some messages may be stored: the client retries the
    /// whole batch, and a retried record is stored again (at least once).
    pub async fn publish(&self, batch: Batch) -> Result<usize, PublishError> {
        let mut messages = Vec::new();
        for (partition, part) in partition::split(batch) {
            for payload in self.messages(part)? {
                messages.push((partition, payload));
            }
        }
        self.publish_messages(messages).await
    }

    /// Publishes each `(partition, payload)` and returns once every one is
    /// acknowledged by the stream (see [`ClusterLog::publish`]).
    pub async fn publish_messages(
        &self,
        messages: Vec<(PartitionId, Bytes)>,
    ) -> Result<usize, PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        for (partition, payload) in messages {
            let acked = self
                .jetstream
                .publish(self.subject(partition), payload)
                .await
                .map_err(|error| PublishError::Unavailable(error.to_string()))?;
            pending.push(acked);
        }
        let messages = pending.len();
        for acked in futures::future::join_all(
            pending
                .into_iter()
                .map(std::future::IntoFuture::into_future),
        )
        .await
        {
            acked.map_err(|error| {
                let text = error.to_string();
                if text.contains("maximum bytes") || text.contains("resource limits") {
                    PublishError::Full
                } else {
                    PublishError::Unavailable(text)
                }
            })?;
        }
        Ok(messages)
    }

    /// A batch's payload as one or more messages under the size limit.
    fn messages(&self, batch: Batch) -> Result<Vec<Bytes>, PublishError> {
        let encoded = batch
            .encode()
            .map_err(|error| PublishError::Unavailable(format!("encoding: {error}")))?;
        if encoded.payload.len() <= self.max_message {
            return Ok(vec![Bytes::from(encoded.payload)]);
        }
        let len = batch.len();
        if len <= 1 {
            return Err(PublishError::TooLarge {
                size: encoded.payload.len(),
                limit: self.max_message,
            });
        }
        let (first, second) = match batch {
            Batch::Logs(mut records) => {
                let rest = records.split_off(len / 2);
                (Batch::Logs(records), Batch::Logs(rest))
            }
            Batch::Spans(mut spans) => {
                let rest = spans.split_off(len / 2);
                (Batch::Spans(spans), Batch::Spans(rest))
            }
        };
        let mut messages = self.messages(first)?;
        messages.extend(self.messages(second)?);
        Ok(messages)
    }

    /// A reader of `partition` from stream sequence `from` on.
    pub async fn reader(&self, partition: PartitionId, from: u64) -> anyhow::Result<Reader> {
        let consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: self.subject(partition),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .with_context(|| format!("failed to read partition {partition}"))?;
        Ok(Reader { consumer })
    }

    /// Drops the messages of `partition` below stream sequence `below`:
    /// they are in a published split.
    pub async fn purge_below(&self, partition: PartitionId, below: u64) -> anyhow::Result<()> {
        self.stream
            .purge()
            .filter(self.subject(partition))
            .sequence(below)
            .await
            .with_context(|| format!("failed to purge partition {partition} below {below}"))?;
        Ok(())
    }

    /// The stream's last sequence (0 when empty).
    pub async fn last_sequence(&self) -> anyhow::Result<u64> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await?.state.last_sequence)
    }
}

/// Reads one partition in order.
pub struct Reader {
    consumer: consumer::PullConsumer,
}

impl Reader {
    /// The next entries: at most `max` messages and `max_bytes`, waiting at
    /// most `wait` when there are none.
    pub async fn next(
        &mut self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> anyhow::Result<Vec<Entry>> {
        let mut messages = self
            .consumer
            .fetch()
            .max_messages(max)
            .max_bytes(max_bytes)
            .expires(wait)
            .messages()
            .await?;
        let mut entries = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(|error| anyhow::anyhow!("{error}"))?;
            let sequence = message
                .info()
                .map_err(|error| anyhow::anyhow!("{error}"))?
                .stream_sequence;
            entries.push(Entry {
                sequence,
                payload: message.payload.clone(),
            });
        }
        Ok(entries)
    }
}
