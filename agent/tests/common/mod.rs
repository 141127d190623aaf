//! Shared pieces of the delivery tests: a real tonic OTLP logs server on
//! loopback that counts what it acknowledges, and a writer that plays the
//! container runtime.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// A collector that acknowledges after an optional delay and counts every
/// acknowledged record body.
#[derive(Clone, Default)]
pub struct CountingCollector {
    bodies: Arc<Mutex<HashMap<String, usize>>>,
    total: Arc<AtomicUsize>,
    pub delay_ms: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl LogsService for CountingCollector {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut bodies = self.bodies.lock().unwrap();
        for resource_logs in &request.into_inner().resource_logs {
            for scope_logs in &resource_logs.scope_logs {
                for record in &scope_logs.log_records {
                    let body = match record.body.as_ref().and_then(|body| body.value.as_ref()) {
                        Some(any_value::Value::StringValue(text)) => text.clone(),
                        other => format!("{other:?}"),
                    };
                    *bodies.entry(body).or_default() += 1;
                    self.total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

impl CountingCollector {
    /// Distinct bodies received.
    pub fn distinct(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    /// Records received, duplicates included.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// How often each body was received.
    pub fn counts(&self) -> HashMap<String, usize> {
        self.bodies.lock().unwrap().clone()
    }
}

pub struct RunningCollector {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    pub addr: SocketAddr,
}

impl RunningCollector {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Serves any OTLP logs service (the counting collector, or a test's own)
/// on `listener`.
pub async fn serve<S: LogsService>(listener: TcpListener, collector: S) -> RunningCollector {
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = LogsServiceServer::new(collector)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(64 * 1024 * 1024);
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    RunningCollector { stop, task, addr }
}

/// Binds a fresh loopback port and serves `collector` on it.
pub async fn start_collector(collector: CountingCollector) -> RunningCollector {
    serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), collector).await
}

/// Polls `probe` until it returns `Some`, failing after a generous bound.
pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fixed-width body of line `seq` of stream `name`, so offsets are
/// computable: `name-0000012`.
pub fn body(name: &str, seq: usize) -> String {
    format!("{name}-{seq:07}")
}

/// A CRI line (with newline) whose message is `body(name, seq)`.
pub fn cri_line(name: &str, seq: usize) -> String {
    format!(
        "2026-11-21T05:48:48.123456789Z stdout F {}\n",
        body(name, seq)
    )
}

/// The kubelet directory of a test container.
pub fn pod_dir(root: &Path, container: &str) -> PathBuf {
    let dir = root.join(format!(
        "pods/shop_{container}-1_uid-{container}/{container}"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Appends lines to a file through one open handle, like a runtime.
pub struct RuntimeWriter {
    pub path: PathBuf,
    file: std::fs::File,
}

impl RuntimeWriter {
    pub fn create(path: &Path) -> RuntimeWriter {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        RuntimeWriter {
            path: path.to_owned(),
            file,
        }
    }

    pub fn write(&mut self, text: &str) {
        self.file.write_all(text.as_bytes()).unwrap();
    }
}

/// Value of one sample in Prometheus text, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}
