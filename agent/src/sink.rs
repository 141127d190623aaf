//! The OTLP/gRPC sink: sends batches to the collector, retries what can be
//! retried, and commits file offsets only for acknowledged batches.
//!
//! Batches are sent one at a time, in order, so offsets of a file are
//! committed in order. A batch is never dropped silently: failures are
//! retried with exponential backoff and jitter for as long as the agent
//! runs, except the two permanent rejections OTLP defines (`INVALID_ARGUMENT`
//! for the batch, a partial success naming rejected records), which are
//! logged and counted before the offsets move on (see `retry_reason`). After
//! shutdown is requested, delivery is attempted for a grace period; what is
//! still unsent then is left uncommitted and read again at the next start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{debug, error, warn};

use crate::batch::Batch;
use crate::checkpoint::CheckpointStore;
use crate::config::{Compression, Config};
use crate::error::{AgentError, Result};
use crate::http::Readiness;
use crate::metrics::{FailureReason, Metrics, RetryReason};
use crate::shutdown::Shutdown;

/// How long to wait for a TCP connection to the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The OTLP logs export method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// Sends batches to an OTLP logs endpoint.
#[derive(Debug)]
pub(crate) struct OtlpSink {
    exporter: Exporter,
    checkpoints: CheckpointStore,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    initial_backoff: Duration,
    max_backoff: Duration,
    shutdown_grace: Duration,
    fell_back_to_gzip: bool,
}

/// What became of one batch.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The collector acknowledged it.
    Delivered,
    /// The collector refused it for good; it was logged and counted.
    Rejected,
    /// Shutdown grace ran out before it could be delivered.
    Abandoned,
}

/// TLS settings for an `https://` collector: its CA, and the client
/// certificate when there is one; `None` for `http://`.
fn client_tls(config: &Config) -> Result<Option<tonic::transport::ClientTlsConfig>> {
    if !config.collector.starts_with("https://") {
        return Ok(None);
    }
    let read = |key: &'static str, path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|error| AgentError::InvalidConfig {
                    key,
                    reason: format!("cannot read {}: {error}", path.display()),
                })
            })
            .transpose()
    };
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = read("collector_ca", &config.collector_ca)? {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
    }
    if let (Some(cert), Some(key)) = (
        read("client_cert", &config.client_cert)?,
        read("client_key", &config.client_key)?,
    ) {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

impl OtlpSink {
    /// Builds the sink with a lazy channel: nothing connects until the
    /// first export, and a collector that is not up yet is retried.
    pub(crate) fn new(
        config: &Config,
        checkpoints: CheckpointStore,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Result<OtlpSink> {
        let endpoint = Endpoint::from_shared(config.collector.clone())
            .map_err(|error| AgentError::InvalidConfig {
                key: "collector",
                reason: error.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(config.tuning.export_timeout)
            .tcp_nodelay(true);
        let endpoint = match client_tls(config)? {
            Some(tls) => endpoint
                .tls_config(tls)
                .map_err(|error| AgentError::InvalidConfig {
                    key: "collector_ca",
                    reason: format!("unusable TLS settings: {error}"),
                })?,
            None => endpoint,
        };
        let mut client = Grpc::new(endpoint.connect_lazy())
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(4 * 1024 * 1024);
        client = match config.compression {
            Compression::None => client,
            Compression::Gzip => client.send_compressed(CompressionEncoding::Gzip),
            Compression::Zstd => client.send_compressed(CompressionEncoding::Zstd),
        };
        let authorization = crate::config::CollectorToken::resolve(config)?
            .map(|token| {
                let mut value = tonic::metadata::AsciiMetadataValue::try_from(format!(
                    "Bearer {}",
                    token.expose()
                ))
                .map_err(|_| AgentError::InvalidConfig {
                    key: "collector_token",
                    reason: "the token holds characters not allowed in a header".to_owned(),
                })?;
                value.set_sensitive(true);
                Ok::<_, AgentError>(value)
            })
            .transpose()?;
        Ok(OtlpSink {
            exporter: Exporter {
                client,
                authorization,
            },
            checkpoints,
            metrics,
            readiness,
            initial_backoff: config.tuning.retry_initial_backoff,
            max_backoff: config.tuning.retry_max_backoff,
            shutdown_grace: config.tuning.shutdown_grace,
            fell_back_to_gzip: false,
        })
    }

    /// Delivers batches until the batcher hangs up.
    pub(crate) async fn run(mut self, mut input: mpsc::Receiver<Batch>, shutdown: Shutdown) {
        let mut grace = Grace {
            shutdown,
            deadline: None,
            grace: self.shutdown_grace,
        };
        while let Some(mut batch) = input.recv().await {
            let records = batch.record_count() as u64;
            if records == 0 {
                // Only offsets of dropped lines: nothing to send.
                self.commit(&batch);
                continue;
            }
            self.metrics
                .set_oldest_unacked(batch.oldest_read_unix_nanos);
            let outcome = self.deliver(&mut batch, &mut grace).await;
            self.metrics.set_oldest_unacked(0);
            match outcome {
                Outcome::Delivered => {
                    self.metrics.add_sent(records);
                    self.commit(&batch);
                }
                Outcome::Rejected => {
                    self.metrics.add_failed(FailureReason::Rejected, records);
                    self.commit(&batch);
                }
                Outcome::Abandoned => {
                    warn!(
                        records,
                        "shutdown grace over, records left for the next start"
                    );
                }
            }
        }
    }

    fn commit(&self, batch: &Batch) {
        for group in &batch.files {
            self.checkpoints.commit(&group.source, group.commit_offset);
        }
    }

    async fn deliver(&mut self, batch: &mut Batch, grace: &mut Grace) -> Outcome {
        // The records are encoded already: assembling the request is a
        // copy of their bytes. Retries resend the same bytes.
        let encoded = batch.take_request();
        let records = batch.record_count();
        let mut backoff = self.initial_backoff;
        let mut attempt: u32 = 0;
        loop {
            if grace.is_over() {
                return Outcome::Abandoned;
            }
            attempt += 1;
            let status = match self.exporter.export(encoded.clone()).await {
                Ok(response) => {
                    self.readiness.collector_answered();
                    if let Some(partial) = response.into_inner().partial_success {
                        let rejected = u64::try_from(partial.rejected_log_records).unwrap_or(0);
                        if rejected > 0 {
                            warn!(rejected, reason = %partial.error_message, "collector rejected some records");
                            self.metrics
                                .add_failed(FailureReason::PartialSuccess, rejected);
                        }
                    }
                    debug!(records, attempt, "batch delivered");
                    return Outcome::Delivered;
                }
                Err(status) => status,
            };
            if status.code() == Code::Unimplemented
                && status.message().contains("compress")
                && !self.fell_back_to_gzip
            {
                // A receiver built without zstd: fall back once, resend.
                warn!(
                    message = status.message(),
                    "collector refuses zstd, sending gzip"
                );
                self.exporter.client = self
                    .exporter
                    .client
                    .clone()
                    .send_compressed(CompressionEncoding::Gzip);
                self.fell_back_to_gzip = true;
                continue;
            }
            self.readiness.collector_failed(&describe(&status));
            let Some(reason) = retry_reason(&status) else {
                error!(records, code = ?status.code(), message = status.message(), "collector rejected batch, dropping it");
                return Outcome::Rejected;
            };
            self.metrics.add_retry(reason);
            let delay = jittered(backoff);
            warn!(
                records,
                attempt,
                code = ?status.code(),
                message = status.message(),
                retry_in_ms = delay.as_millis() as u64,
                "export failed, retrying"
            );
            if !grace.sleep(delay).await {
                return Outcome::Abandoned;
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }
}

impl OtlpSink {
    /// Sends empty exports (backing off like deliveries) until the
    /// collector answers one or the agent stops, so an agent with nothing
    /// to ship yet still finds out whether it can ship, and gets ready.
    pub(crate) fn probe(&self, mut shutdown: Shutdown) -> impl Future<Output = ()> + use<> {
        let mut exporter = self.exporter.clone();
        let readiness = Arc::clone(&self.readiness);
        let (mut backoff, max_backoff) = (self.initial_backoff, self.max_backoff);
        async move {
            while !readiness.is_ready() {
                match exporter.export(Bytes::new()).await {
                    Ok(_) => readiness.collector_answered(),
                    // It answered, only not with this compression: the
                    // sink falls back on its first batch.
                    Err(status)
                        if status.code() == Code::Unimplemented
                            && status.message().contains("compress") =>
                    {
                        readiness.collector_answered()
                    }
                    Err(status) => {
                        readiness.collector_failed(&describe(&status));
                        tokio::select! {
                            () = tokio::time::sleep(jittered(backoff)) => {}
                            () = shutdown.triggered() => return,
                        }
                        backoff = (backoff * 2).min(max_backoff);
                    }
                }
            }
        }
    }
}

/// A failed export in a line: its code and message.
fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// The client side of one export: the channel and the credentials.
#[derive(Debug, Clone)]
struct Exporter {
    client: Grpc<Channel>,
    /// `Bearer <ingest token>`, marked sensitive, when one is configured.
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Exporter {
    async fn export(
        &mut self,
        encoded: Bytes,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, Status> {
        self.client
            .ready()
            .await
            .map_err(|error| Status::unavailable(format!("collector not ready: {error}")))?;
        let mut request = Request::new(encoded);
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        self.client
            .unary(request, PathAndQuery::from_static(EXPORT_PATH), PreEncoded)
            .await
    }
}

/// A codec that sends an already encoded request and decodes the OTLP
/// response, so a retry costs no re-encoding and no copy of the request.
#[derive(Debug, Clone, Copy, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportLogsServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> PreEncoded {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ExportLogsServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportLogsServiceResponse::decode(src)
            .map(Some)
            .map_err(|error| Status::internal(format!("bad export response: {error}")))
    }
}

/// How a failed export is handled: `None` only for the one status that
/// says the collector looked at the batch and refused it for good.
///
/// Offsets may advance over records the collector did not store only on an
/// explicit, documented permanent rejection: `INVALID_ARGUMENT` for the
/// whole batch (OTLP: "the data is not valid and retrying will not help"),
/// or a partial success naming the rejected records (handled on the `Ok`
/// path). Everything else is retried, because it says nothing about the
/// records: a collector killed mid-request surfaces as `UNKNOWN` ("transport
/// error", "h2 protocol error") or `INTERNAL`, a proxy in between as
/// `UNIMPLEMENTED` or `UNKNOWN` with an HTTP status, a timeout as
/// `CANCELLED` or `DEADLINE_EXCEEDED`; an operator fixes a wrong token or
/// endpoint while the lines wait in their files.
fn retry_reason(status: &Status) -> Option<RetryReason> {
    match status.code() {
        Code::InvalidArgument => None,
        Code::Unavailable => Some(RetryReason::Unavailable),
        Code::Unauthenticated | Code::PermissionDenied => Some(RetryReason::Unauthenticated),
        Code::ResourceExhausted => Some(RetryReason::ResourceExhausted),
        Code::DeadlineExceeded | Code::Cancelled => Some(RetryReason::DeadlineExceeded),
        Code::Ok
        | Code::Unknown
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => Some(RetryReason::Other),
    }
}

/// Between half and all of `backoff`, so agents restarted together do not
/// retry in lockstep.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=spread))
}

/// Tracks the shutdown grace period of the sink.
struct Grace {
    shutdown: Shutdown,
    deadline: Option<Instant>,
    grace: Duration,
}

impl Grace {
    fn note_shutdown(&mut self) {
        if self.deadline.is_none() && self.shutdown.is_triggered() {
            self.deadline = Some(Instant::now() + self.grace);
        }
    }

    fn is_over(&mut self) -> bool {
        self.note_shutdown();
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Sleeps `delay`; false if the grace period ends first.
    async fn sleep(&mut self, delay: Duration) -> bool {
        let wake = Instant::now() + delay;
        self.note_shutdown();
        if self.deadline.is_none() {
            tokio::select! {
                () = tokio::time::sleep_until(wake) => return true,
                () = self.shutdown.triggered() => self.note_shutdown(),
            }
        }
        match self.deadline {
            Some(deadline) if deadline <= wake => false,
            _ => {
                tokio::time::sleep_until(wake).await;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_invalid_argument_is_permanent() {
        let cases = [
            (Code::InvalidArgument, None),
            (Code::Unavailable, Some(RetryReason::Unavailable)),
            (
                Code::ResourceExhausted,
                Some(RetryReason::ResourceExhausted),
            ),
            (Code::DeadlineExceeded, Some(RetryReason::DeadlineExceeded)),
            (Code::Cancelled, Some(RetryReason::DeadlineExceeded)),
            (Code::PermissionDenied, Some(RetryReason::Unauthenticated)),
            (Code::Unauthenticated, Some(RetryReason::Unauthenticated)),
            // What a collector killed mid-request looks like to tonic.
            (Code::Unknown, Some(RetryReason::Other)),
            (Code::Internal, Some(RetryReason::Other)),
            (Code::Unimplemented, Some(RetryReason::Other)),
            (Code::Aborted, Some(RetryReason::Other)),
            (Code::DataLoss, Some(RetryReason::Other)),
            (Code::FailedPrecondition, Some(RetryReason::Other)),
            (Code::NotFound, Some(RetryReason::Other)),
        ];
        for (code, expected) in cases {
            assert_eq!(retry_reason(&Status::new(code, "x")), expected, "{code:?}");
        }
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        for _ in 0..100 {
            let delay = jittered(Duration::from_millis(400));
            assert!(
                delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400),
                "{delay:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grace_ends_sleep_after_shutdown() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let mut grace = Grace {
            shutdown,
            deadline: None,
            grace: Duration::from_secs(1),
        };
        assert!(grace.sleep(Duration::from_millis(10)).await);
        trigger.trigger();
        assert!(!grace.sleep(Duration::from_secs(5)).await);
        assert!(grace.sleep(Duration::from_millis(10)).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(grace.is_over());
    }
}
