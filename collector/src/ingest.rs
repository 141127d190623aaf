//! Group commit: the path from a receiver's batch to an acknowledgement.
//!
//! Each store gets one writer thread fed by a bounded queue. The thread adds
//! every batch waiting in the queue, commits once for all of them (tantivy's
//! commit fsyncs), and only then answers each sender. A full queue is an
//! immediate [`IngestError::Busy`], which receivers turn into
//! `RESOURCE_EXHAUSTED` / 429, so memory stays bounded under any load.

use std::sync::Arc;
use std::thread::JoinHandle;

use sightline_store::{LogIndex, LogRecord, Span, SpanStore, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Batches waiting for a commit before senders are told to back off.
pub const DEFAULT_QUEUE_BATCHES: usize = 256;

/// Items added before a commit is forced even if more batches are waiting.
const MAX_ITEMS_PER_COMMIT: usize = 100_000;

/// A store the writer thread can add to and commit. Both calls block.
pub trait Durable<T>: Send + Sync + 'static {
    fn add(&self, items: &[T]) -> Result<(), StoreError>;
    fn commit(&self) -> Result<(), StoreError>;
}

impl Durable<LogRecord> for LogIndex {
    fn add(&self, items: &[LogRecord]) -> Result<(), StoreError> {
        LogIndex::add(self, items)
    }
    fn commit(&self) -> Result<(), StoreError> {
        LogIndex::commit(self)
    }
}

impl Durable<Span> for SpanStore {
    fn add(&self, items: &[Span]) -> Result<(), StoreError> {
        SpanStore::add(self, items)
    }
    fn commit(&self) -> Result<(), StoreError> {
        SpanStore::commit(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest queue is full, retry later")]
    Busy,
    #[error("collector is shutting down")]
    ShuttingDown,
    #[error("storage failed: {0}")]
    Storage(String),
}

struct Batch<T> {
    items: Vec<T>,
    acknowledge: oneshot::Sender<Result<(), String>>,
}

/// Hands batches to a store's writer thread and waits until they are durable.
pub struct Ingester<T> {
    queue: mpsc::Sender<Batch<T>>,
}

impl<T> Clone for Ingester<T> {
    fn clone(&self) -> Self {
        Ingester {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static> Ingester<T> {
    /// Starts the writer thread. It ends once every `Ingester` clone is dropped
    /// and the queue is drained.
    pub fn start<S: Durable<T>>(
        name: &str,
        store: Arc<S>,
        queue_batches: usize,
    ) -> std::io::Result<(Ingester<T>, JoinHandle<()>)> {
        let (queue, receiver) = mpsc::channel(queue_batches);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || write_loop(store.as_ref(), receiver))?;
        Ok((Ingester { queue }, thread))
    }

    /// Returns once `items` are durable and searchable.
    pub async fn ingest(&self, items: Vec<T>) -> Result<(), IngestError> {
        if items.is_empty() {
            return Ok(());
        }
        let (acknowledge, acknowledged) = oneshot::channel();
        self.queue
            .try_send(Batch { items, acknowledge })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => IngestError::Busy,
                mpsc::error::TrySendError::Closed(_) => IngestError::ShuttingDown,
            })?;
        match acknowledged.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(IngestError::Storage(message)),
            Err(_) => Err(IngestError::ShuttingDown),
        }
    }
}

fn write_loop<T, S: Durable<T>>(store: &S, mut receiver: mpsc::Receiver<Batch<T>>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut added = Vec::new();
        let mut items_added = 0;
        let mut next = Some(first);
        while let Some(batch) = next.take() {
            match store.add(&batch.items) {
                Ok(()) => {
                    items_added += batch.items.len();
                    added.push(batch.acknowledge);
                }
                Err(error) => {
                    tracing::error!(%error, "failed to add batch to store");
                    let _ = batch.acknowledge.send(Err(error.to_string()));
                }
            }
            if items_added < MAX_ITEMS_PER_COMMIT {
                next = receiver.try_recv().ok();
            }
        }
        let outcome = store.commit().map_err(|error| {
            tracing::error!(%error, "failed to commit store");
            error.to_string()
        });
        for acknowledge in added {
            // The sender may have gone away (client disconnected); nothing to tell then.
            let _ = acknowledge.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        added: Mutex<Vec<u32>>,
        committed: Mutex<Vec<u32>>,
        fail_commit: bool,
    }

    impl Durable<u32> for Recorder {
        fn add(&self, items: &[u32]) -> Result<(), StoreError> {
            self.added.lock().unwrap().extend_from_slice(items);
            Ok(())
        }
        fn commit(&self) -> Result<(), StoreError> {
            if self.fail_commit {
                return Err(StoreError::Io(std::io::Error::other("disk full")));
            }
            let added = self.added.lock().unwrap().clone();
            *self.committed.lock().unwrap() = added;
            Ok(())
        }
    }

    #[tokio::test]
    async fn acknowledges_only_after_commit() {
        let store = Arc::new(Recorder::default());
        let (ingester, _thread) = Ingester::start("test", store.clone(), 4).unwrap();
        ingester.ingest(vec![1, 2]).await.unwrap();
        assert_eq!(*store.committed.lock().unwrap(), vec![1, 2]);
        ingester.ingest(vec![3]).await.unwrap();
        assert_eq!(*store.committed.lock().unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_to_the_sender() {
        let store = Arc::new(Recorder {
            fail_commit: true,
            ..Recorder::default()
        });
        let (ingester, _thread) = Ingester::start("test", store, 4).unwrap();
        let error = ingester.ingest(vec![1]).await.unwrap_err();
        assert!(
            matches!(error, IngestError::Storage(ref m) if m.contains("disk full")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_full_queue_pushes_back() {
        // A store whose add blocks until released keeps the writer thread busy.
        struct Gate(Mutex<std::sync::mpsc::Receiver<()>>);
        impl Durable<u32> for Gate {
            fn add(&self, _: &[u32]) -> Result<(), StoreError> {
                let _ = self.0.lock().unwrap().recv();
                Ok(())
            }
            fn commit(&self) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let (release, released) = std::sync::mpsc::channel();
        let gate = Arc::new(Gate(Mutex::new(released)));
        let (ingester, _thread) = Ingester::start("test", gate, 1).unwrap();
        let handles: Vec<_> = (0..10)
            .map(|item| {
                let ingester = ingester.clone();
                tokio::spawn(async move { ingester.ingest(vec![item]).await })
            })
            .collect();
        // Let every task try to enqueue while the writer is stuck in `add`.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        drop(release);
        let mut busy = 0;
        let mut stored = 0;
        for handle in handles {
            match handle.await.unwrap() {
                Err(IngestError::Busy) => busy += 1,
                Ok(()) => stored += 1,
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert!(stored >= 1, "the first batch is stored");
        assert!(
            busy >= 8,
            "a queue of one batch refuses the rest of a burst of ten, got {busy}"
        );
    }
}
