//! The sink's error classification, case by case, against collectors that
//! fail the ways real ones do: killed mid-request, refusing, timing out,
//! answering partial success. Only `INVALID_ARGUMENT` and a partial success
//! naming records may move offsets over records that were not stored;
//! every other failure is retried until the records are acknowledged.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

use crate::common::{
    CountingCollector, RuntimeWriter, cri_line, eventually, metric, pod_dir, serve,
};
use crate::{assert_all_delivered, fast_config};

/// What the scripted collector does with one export request.
#[derive(Debug, Clone)]
enum Act {
    /// Store and acknowledge every record.
    Accept,
    /// Answer this status without storing anything.
    Fail(Code),
    /// Never answer (until the client gives up or the connection dies);
    /// nothing is stored.
    Hang,
    /// Store all but the first `n` records and report those `n` as rejected.
    RejectFirst(usize),
}

/// A collector that plays a script, one act per export request, then
/// accepts everything.
#[derive(Clone, Default)]
struct ScriptedCollector {
    script: Arc<Mutex<VecDeque<Act>>>,
    requests: Arc<AtomicUsize>,
    store: CountingCollector,
}

impl ScriptedCollector {
    fn new(script: impl IntoIterator<Item = Act>) -> ScriptedCollector {
        ScriptedCollector {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            ..ScriptedCollector::default()
        }
    }
}

#[tonic::async_trait]
impl LogsService for ScriptedCollector {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        if request.get_ref().resource_logs.is_empty() {
            // The agent's readiness probe, not a batch: the script is for batches.
            return Ok(Response::new(ExportLogsServiceResponse::default()));
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let act = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Act::Accept);
        match act {
            Act::Accept => self.store.export(request).await,
            Act::Fail(code) => Err(Status::new(code, "scripted failure")),
            Act::Hang => std::future::pending().await,
            Act::RejectFirst(rejected) => {
                let mut request = request.into_inner();
                let mut left = rejected;
                for resource_logs in &mut request.resource_logs {
                    for scope_logs in &mut resource_logs.scope_logs {
                        let drop = left.min(scope_logs.log_records.len());
                        scope_logs.log_records.drain(..drop);
                        left -= drop;
                    }
                }
                assert_eq!(left, 0, "the batch held fewer than {rejected} records");
                self.store.export(Request::new(request)).await?;
                Ok(Response::new(ExportLogsServiceResponse {
                    partial_success: Some(ExportLogsPartialSuccess {
                        rejected_log_records: rejected as i64,
                        error_message: "scripted partial success".to_owned(),
                    }),
                }))
            }
        }
    }
}

/// A TCP proxy in front of the collector that can be "killed": every
/// connection through it is reset at once (as the kernel does for a process
/// killed with SIGKILL) and new connections are refused until it is revived.
struct KillableProxy {
    addr: SocketAddr,
    alive: watch::Sender<bool>,
}

impl KillableProxy {
    async fn start(upstream: SocketAddr) -> KillableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (alive, _) = watch::channel(true);
        let accept_alive = alive.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut alive = accept_alive.subscribe();
                if !*alive.borrow_and_update() {
                    let _ = client.set_zero_linger();
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_zero_linger();
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = alive.wait_for(|alive| !alive) => {}
                    }
                });
            }
        });
        KillableProxy { addr, alive }
    }

    fn kill(&self) {
        self.alive.send_replace(false);
    }

    fn revive(&self) {
        self.alive.send_replace(true);
    }
}

async fn start_scripted(collector: ScriptedCollector) -> crate::common::RunningCollector {
    serve(TcpListener::bind("127.0.0.1:0").await.unwrap(), collector).await
}

fn write_lines(root: &std::path::Path, name: &str, lines: std::ops::Range<usize>) {
    let mut writer = RuntimeWriter::create(&pod_dir(root, name).join("0.log"));
    for seq in lines {
        writer.write(&cri_line(name, seq));
    }
}

fn sample(agent: &sightline_agent::RunningAgent, series: &str) -> f64 {
    metric(&agent.metrics().render_prometheus(), series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_mid_request_loses_no_line() {
    let root = tempfile::tempdir().unwrap();
    let collector = ScriptedCollector::new([Act::Hang]);
    let server = start_scripted(collector.clone()).await;
    let proxy = KillableProxy::start(server.addr).await;
    let agent = sightline_agent::start(fast_config(root.path(), proxy.addr))
        .await
        .unwrap();

    write_lines(root.path(), "killed", 0..2_000);
    eventually("the first export to reach the collector", || {
        (collector.requests.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    // The collector dies while the request is in flight, stays down a
    // moment, and comes back.
    proxy.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.revive();

    eventually("every line after the restart", || {
        (collector.store.distinct() == 2_000).then_some(())
    })
    .await;
    assert_all_delivered(&collector.store, "killed", 2_000);
    let rejected = sample(
        &agent,
        "sightline_agent_records_failed_total{reason=\"rejected\"}",
    );
    assert_eq!(rejected, 0.0, "a killed collector rejected nothing");
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_other_than_invalid_argument_are_retried() {
    let root = tempfile::tempdir().unwrap();
    let collector = ScriptedCollector::new(
        [
            Code::Internal,
            Code::Unknown,
            Code::Unimplemented,
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::DataLoss,
        ]
        .map(Act::Fail),
    );
    let server = start_scripted(collector.clone()).await;
    let agent = sightline_agent::start(fast_config(root.path(), server.addr))
        .await
        .unwrap();

    write_lines(root.path(), "refused", 0..1_000);
    eventually("every line once the collector accepts", || {
        (collector.store.distinct() == 1_000).then_some(())
    })
    .await;
    assert_all_delivered(&collector.store, "refused", 1_000);
    assert!(collector.requests.load(Ordering::SeqCst) >= 9);
    let retries: f64 = [
        "unavailable",
        "resource_exhausted",
        "deadline_exceeded",
        "unauthenticated",
        "other",
    ]
    .iter()
    .map(|reason| {
        sample(
            &agent,
            &format!("sightline_agent_send_retries_total{{reason=\"{reason}\"}}"),
        )
    })
    .sum();
    assert!(retries >= 8.0, "8 scripted failures, {retries} retries");
    assert_eq!(
        sample(
            &agent,
            "sightline_agent_records_failed_total{reason=\"rejected\"}"
        ),
        0.0
    );
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_argument_drops_only_the_refused_batch_and_counts_it() {
    let root = tempfile::tempdir().unwrap();
    let collector = ScriptedCollector::new([Act::Fail(Code::InvalidArgument)]);
    let server = start_scripted(collector.clone()).await;
    let agent = sightline_agent::start(fast_config(root.path(), server.addr))
        .await
        .unwrap();

    write_lines(root.path(), "invalid", 0..1_000);
    let rejected = eventually("the refused batch counted, the rest delivered", || {
        let rejected = sample(
            &agent,
            "sightline_agent_records_failed_total{reason=\"rejected\"}",
        );
        (rejected > 0.0 && collector.store.distinct() + rejected as usize == 1_000)
            .then_some(rejected)
    })
    .await;
    // The refused batch is the first one: the lines from offset zero.
    let counts = collector.store.counts();
    assert!(!counts.contains_key(&crate::common::body("invalid", 0)));
    assert_eq!(collector.store.total(), 1_000 - rejected as usize);
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_times_out_is_retried() {
    let root = tempfile::tempdir().unwrap();
    let collector = ScriptedCollector::new([Act::Hang, Act::Hang]);
    let server = start_scripted(collector.clone()).await;
    let mut config = fast_config(root.path(), server.addr);
    config.tuning.export_timeout = Duration::from_millis(300);
    let agent = sightline_agent::start(config).await.unwrap();

    write_lines(root.path(), "slow", 0..1_000);
    eventually("every line after two timeouts", || {
        (collector.store.distinct() == 1_000).then_some(())
    })
    .await;
    assert_all_delivered(&collector.store, "slow", 1_000);
    assert!(
        sample(
            &agent,
            "sightline_agent_send_retries_total{reason=\"deadline_exceeded\"}"
        ) >= 2.0
    );
    agent.shutdown().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_counts_the_named_records_and_resends_nothing() {
    let root = tempfile::tempdir().unwrap();
    let collector = ScriptedCollector::new([Act::RejectFirst(3)]);
    let server = start_scripted(collector.clone()).await;
    let agent = sightline_agent::start(fast_config(root.path(), server.addr))
        .await
        .unwrap();

    write_lines(root.path(), "partial", 0..1_000);
    eventually("all but the three rejected records", || {
        (collector.store.distinct() == 997).then_some(())
    })
    .await;
    eventually("the rejected records counted", || {
        (sample(
            &agent,
            "sightline_agent_records_failed_total{reason=\"partial_success\"}",
        ) == 3.0)
            .then_some(())
    })
    .await;
    agent.shutdown().await.unwrap();
    assert_eq!(
        collector.store.total(),
        997,
        "a partial success is final: nothing is sent twice"
    );
    let counts = collector.store.counts();
    for seq in 0..3 {
        assert!(!counts.contains_key(&crate::common::body("partial", seq)));
    }
    server.stop().await;
}
