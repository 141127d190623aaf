//! # sightline-agent
//!
//! The node agent of Sightline: it tails container log files, turns every
//! line into an OpenTelemetry log record and ships the records to the
//! collector over OTLP/gRPC. The file offsets it remembers advance only over
//! records the collector acknowledged, so the log file itself is the buffer
//! and a restart neither loses nor (beyond the last unacknowledged batch)
//! repeats lines.
//!
//! On its `/metrics` it also serves the node's CPU, memory, filesystem and
//! network metrics and its containers' CPU and memory, under node_exporter's
//! and cAdvisor's names ([`hostmetrics`]), so the collector scrapes one
//! endpoint per node.
//!
//! ## The pipeline
//!
//! ```text
//! discover ─► tail ─► decode ─► multiline ─► filter/parse/redact ─► batch ─► sink ─► collector
//!  inotify,   bytes   CRI/Docker  stack       JSON/logfmt/regex       count/   OTLP     │
//!  globs 1s   lines   /plain      traces      masks secrets           time     gRPC     │
//!  (enrich once per file: k8s path, Docker config, host, static)                       │
//!                                                      checkpoint ◄── acknowledged ────┘
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | [`Cli`] flags, the TOML file, the validated [`Config`] and its [`config::Tuning`] |
//! | `rules` | the reloadable part of the config, compiled: filters, per-container plans |
//! | `discover` | inotify on the directories the globs can match (a new or renamed file is opened within milliseconds; the glob scan every `discovery_interval` is the fallback), rotated generations (`<name>.<suffix>`, not compressed) found by identity and read to their end, one reader task per `(device, inode)` |
//! | [`identity`] | what tells files apart: `(device, inode)`, the fingerprint of the first bytes, why a known offset no longer fits (depends on nothing else in the agent) |
//! | `tail`, `lines` | reading appended bytes, splitting lines, rotation; copytruncate: the rest read from the copy, else the bytes lost counted |
//! | [`decode`] | runtime formats: CRI and Docker json-file (partial joining), plain fallback |
//! | `multiline` | joining stack traces and other continuation lines |
//! | [`parse`] | JSON/logfmt/regex/text messages to attributes, severity, timestamp, trace context, `request_id` |
//! | `text` | the `text` parser's presets: syslog, klog, access logs, Python's and Java's loggers, a `key=value` tail with typed values |
//! | `redact` | masking bearer tokens, AWS keys, card numbers, e-mails, custom patterns |
//! | [`enrich`] | the per-file OTLP resource (k8s path, Docker config, host, service name) |
//! | `batch` | grouping records into export requests |
//! | `sink` | OTLP/gRPC export with retry, committing offsets on acknowledgement |
//! | [`checkpoint`] | acknowledged offsets per file (rotated generations included, kept while the file exists), persisted atomically |
//! | [`metrics`], [`http`] | self-telemetry on `GET /metrics`; liveness `GET /-/healthy` (`/health`), readiness `GET /-/ready` (the collector answered once) |
//! | [`hostmetrics`] | node_exporter and cAdvisor families from `/proc` and cgroup v2, on the same `/metrics` |
//! | [`kubernetes`] | a watch of this node's pods: workload, node, labels and annotations on each file's resource, annotations steering the rules, container restarts and termination reasons on `/metrics` |
//!
//! Stages talk through bounded `tokio::sync::mpsc` queues, and one memory
//! budget bounds the bytes read but not yet acknowledged across all files:
//! when the collector is slow or down, readers stop reading and the files
//! stay the buffer.
//!
//! ## Entry points
//!
//! [`run`] runs until SIGTERM/SIGINT (and reloads its config file on
//! SIGHUP when given one); [`start`] returns a [`RunningAgent`] that tests
//! reload with [`RunningAgent::reload`] and stop with
//! [`RunningAgent::shutdown`].
//!
//! ## What this crate must never do
//!
//! - depend on `tantivy`, `sightline-store` or any other crate that knows an
//!   on-disk format of the collector: the only contract between agent and
//!   collector is OTLP;
//! - panic on input: undecodable bytes are decoded lossily and garbage lines
//!   become plain records;
//! - drop a batch silently, or grow a queue without bound.

mod batch;
pub mod checkpoint;
pub mod config;
pub mod decode;
mod discover;
pub mod enrich;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hostmetrics;
pub mod http;
pub mod identity;
pub mod kubernetes;
mod lines;
pub mod metrics;
mod multiline;
mod otlp;
pub mod parse;
mod redact;
mod rules;
mod shutdown;
mod sink;
mod tail;
mod text;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use crate::config::{Cli, Config};
pub use crate::error::{AgentError, Result};
pub use crate::metrics::Metrics;

use crate::batch::{BatchLimits, run_batcher};
use crate::checkpoint::CheckpointStore;
use crate::discover::run_discovery;
use crate::rules::Rules;
use crate::shutdown::ShutdownTrigger;
use crate::sink::OtlpSink;
use crate::tail::TailContext;

/// The tokio runtime the agent binary runs on: one worker per CPU and a
/// small blocking pool. Decoding runs on the blocking pool, at most one
/// file per CPU at a time; a small pool keeps those jobs on the same few
/// threads (each thread's allocator cache costs memory).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(2, usize::from);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .max_blocking_threads(cpus + 2)
        .enable_all()
        .build()
}

/// Runs the agent until SIGTERM or SIGINT, then flushes what was read,
/// writes checkpoints and returns.
pub async fn run(config: Config) -> Result<()> {
    let agent = start(config).await?;
    wait_for_signal().await;
    info!("shutdown requested");
    agent.shutdown().await
}

/// Like [`run`], with the configuration from `cli`; on SIGHUP the config
/// file is read again and what can change while running is applied.
pub async fn run_cli(cli: Cli) -> Result<()> {
    let agent = start(cli.load()?).await?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|error| AgentError::Task {
            task: "signal",
            reason: error.to_string(),
        })?;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = hangups.recv() => {
                info!("reload requested");
                let reloaded = cli.load().and_then(|config| agent.reload(&config));
                if let Err(error) = reloaded {
                    agent.metrics.add_config_reload(false);
                    warn!(%error, "config reload refused, keeping the running config");
                }
            }
        }
    }
    info!("shutdown requested");
    agent.shutdown().await
}

/// A started agent; stop it with [`RunningAgent::shutdown`].
#[derive(Debug)]
pub struct RunningAgent {
    trigger: ShutdownTrigger,
    config: Config,
    rules: watch::Sender<Arc<Rules>>,
    http_addr: SocketAddr,
    metrics: Arc<Metrics>,
    checkpoints: CheckpointStore,
    discovery: JoinHandle<()>,
    batcher: JoinHandle<()>,
    sink: JoinHandle<()>,
    persister: JoinHandle<()>,
    http: JoinHandle<Result<()>>,
}

/// Validates `config`, loads checkpoints, binds the HTTP listener and starts
/// every stage of the pipeline.
pub async fn start(config: Config) -> Result<RunningAgent> {
    config.validate()?;
    let rules = Arc::new(Rules::compile(&config)?);
    let tuning = config.tuning.clone();
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .map_err(|source| AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let checkpoint_path = config.checkpoint_path();
    let checkpoints = tokio::task::spawn_blocking(move || CheckpointStore::load(&checkpoint_path))
        .await
        .map_err(|error| AgentError::Task {
            task: "checkpoint",
            reason: error.to_string(),
        })??;
    let metrics = Arc::new(Metrics::default());
    let budget = Arc::new(Semaphore::new(config.memory_budget_bytes));
    metrics.watch_budget(Arc::clone(&budget), config.memory_budget_bytes);
    let (rules_tx, rules_rx) = watch::channel(rules);

    let listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| AgentError::HttpBind {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| AgentError::HttpBind {
            addr: config.http_addr,
            source,
        })?;

    let (trigger, shutdown) = shutdown::channel();
    let (chunk_tx, chunk_rx) = mpsc::channel(tuning.reader_queue_chunks);
    let (batch_tx, batch_rx) = mpsc::channel(tuning.sink_queue_batches);
    let readiness = Arc::new(http::Readiness::new(&config.collector));
    let sink = OtlpSink::new(
        &config,
        checkpoints.clone(),
        Arc::clone(&metrics),
        Arc::clone(&readiness),
    )?;

    let pods = kubernetes::Pods::start(&config.kubernetes, &config.host_name)?;
    let tail_context = TailContext {
        output: chunk_tx,
        checkpoints: checkpoints.clone(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        host_name: Arc::from(config.host_name.as_str()),
        read_from_start: config.read_from_start,
        tuning: Arc::new(tuning.clone()),
        multiline_flush: config.multiline.flush_timeout,
        rules: rules_rx,
        budget,
        decode_slots: Arc::new(Semaphore::new(config.reader_threads())),
        pods: pods.clone(),
    };
    let limits = BatchLimits {
        max_records: tuning.batch_max_records,
        max_bytes: tuning.batch_max_bytes,
        max_wait: tuning.batch_max_wait,
    };

    let host_metrics = hostmetrics::HostMetrics::from_config(&config.host_metrics)?;
    let http = tokio::spawn(http::serve(
        listener,
        http::router_with_host_metrics(Arc::clone(&metrics), readiness, host_metrics, pods),
        shutdown.clone(),
    ));
    let discovery = tokio::spawn(run_discovery(tuning.discovery_interval, tail_context));
    let batcher = tokio::spawn(run_batcher(chunk_rx, batch_tx, limits));
    // Ends once the collector answered; nothing waits for it.
    tokio::spawn(sink.probe(shutdown.clone()));
    let sink = tokio::spawn(sink.run(batch_rx, shutdown.clone()));
    let persister = tokio::spawn(persist_periodically(
        checkpoints.clone(),
        Arc::clone(&metrics),
        tuning.checkpoint_interval,
        shutdown,
    ));
    info!(
        %http_addr,
        collector = %config.collector,
        include = ?config.include,
        host_name = %config.host_name,
        "agent started"
    );
    Ok(RunningAgent {
        trigger,
        config,
        rules: rules_tx,
        http_addr,
        metrics,
        checkpoints,
        discovery,
        batcher,
        sink,
        persister,
        http,
    })
}

impl RunningAgent {
    /// Address the health/metrics server listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The agent's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Applies a new configuration while running: globs, filters,
    /// parsers, multiline, redaction and field names take effect at each
    /// reader's next read (and for new files); other keys need a restart
    /// and are reported. An invalid config is refused whole.
    pub fn reload(&self, config: &Config) -> Result<()> {
        config.validate()?;
        let rules = Rules::compile(config)?;
        let running = &self.config;
        let needs_restart = [
            ("collector", running.collector != config.collector),
            ("data_dir", running.data_dir != config.data_dir),
            ("http_addr", running.http_addr != config.http_addr),
            ("host_name", running.host_name != config.host_name),
            ("compression", running.compression != config.compression),
            (
                "memory_budget_bytes",
                running.memory_budget_bytes != config.memory_budget_bytes,
            ),
            (
                "tuning",
                format!("{:?}", running.tuning) != format!("{:?}", config.tuning),
            ),
            (
                "host_metrics",
                format!("{:?}", running.host_metrics) != format!("{:?}", config.host_metrics),
            ),
            (
                "kubernetes",
                format!("{:?}", running.kubernetes) != format!("{:?}", config.kubernetes),
            ),
        ];
        for (key, changed) in needs_restart {
            if changed {
                warn!(key, "config key changed, takes effect after a restart");
            }
        }
        self.rules.send_replace(Arc::new(rules));
        self.metrics.add_config_reload(true);
        info!("config reloaded");
        Ok(())
    }

    /// Stops reading, delivers what was read (within the shutdown grace),
    /// writes checkpoints and waits for every task.
    pub async fn shutdown(self) -> Result<()> {
        self.trigger.trigger();
        // Order matters: readers hang up, then the batcher flushes, then the
        // sink drains; only then are the final offsets known.
        join("discovery", self.discovery).await?;
        join("batcher", self.batcher).await?;
        join("sink", self.sink).await?;
        join("checkpoint", self.persister).await?;
        persist(&self.checkpoints, &self.metrics).await;
        join("http", self.http).await??;
        info!("agent stopped");
        Ok(())
    }
}

async fn join<T>(task: &'static str, handle: JoinHandle<T>) -> Result<T> {
    handle.await.map_err(|error| AgentError::Task {
        task,
        reason: error.to_string(),
    })
}

async fn persist_periodically(
    checkpoints: CheckpointStore,
    metrics: Arc<Metrics>,
    interval: std::time::Duration,
    mut shutdown: shutdown::Shutdown,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => persist(&checkpoints, &metrics).await,
            () = shutdown.triggered() => return,
        }
    }
}

async fn persist(checkpoints: &CheckpointStore, metrics: &Metrics) {
    match checkpoints.persist().await {
        Ok(outcome) => {
            if outcome.wrote {
                metrics.add_checkpoint_write(true);
            }
            if outcome.bytes_lost > 0 {
                warn!(
                    bytes = outcome.bytes_lost,
                    "files removed before they were fully read"
                );
                metrics.add_bytes_lost(outcome.bytes_lost);
            }
        }
        Err(error) => {
            metrics.add_checkpoint_write(false);
            warn!(%error, "failed to write checkpoints");
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The agent modules `source` names through `crate::` paths (single
    /// or grouped, `crate::{a, b::c}`), outside comments.
    fn uses(source: &str) -> BTreeSet<String> {
        let code: String = source
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let ident_end = |text: &str| {
            text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len())
        };
        let mut used = BTreeSet::new();
        for path in code.split("crate::").skip(1) {
            let Some(group) = path.strip_prefix('{') else {
                used.insert(path[..ident_end(path)].to_owned());
                continue;
            };
            // The first name of each item at the group's own depth.
            let mut depth = 0;
            let mut item_start = true;
            for (index, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        let rest = &group[index..];
                        used.insert(rest[..ident_end(rest)].to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        }
        used.retain(|module| !module.is_empty());
        used
    }

    /// Each top-level module of the agent and the modules it uses (a
    /// directory module with its files; the binaries are not modules).
    fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, module: Option<&str>, graph: &mut BTreeMap<String, BTreeSet<String>>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    if module.is_none() && name == "bin" {
                        continue;
                    }
                    walk(&path, Some(module.unwrap_or(&name)), graph);
                } else if path.extension().is_some_and(|extension| extension == "rs") {
                    if module.is_none() && name == "main" {
                        continue;
                    }
                    let owner = module.unwrap_or(&name).to_owned();
                    let source = std::fs::read_to_string(&path).unwrap();
                    let used = uses(&source).into_iter().filter(|used| *used != owner);
                    graph.entry(owner.clone()).or_default().extend(used);
                }
            }
        }
        let mut graph = BTreeMap::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            None,
            &mut graph,
        );
        graph
    }

    /// A cycle in `graph`, as the modules along it, if there is one.
    fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            module: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(start) = path.iter().position(|on_path| on_path == module) {
                let mut cycle = path[start..].to_vec();
                cycle.push(module.to_owned());
                return Some(cycle);
            }
            if done.contains(module) {
                return None;
            }
            path.push(module.to_owned());
            for next in graph.get(module).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(module.to_owned());
            None
        }
        let mut done = BTreeSet::new();
        graph
            .keys()
            .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
    }

    /// The agent's modules use one another without a circle, so each can
    /// be read (and tested) knowing only the modules below it.
    #[test]
    fn modules_use_each_other_without_a_cycle() {
        let graph = module_graph();
        assert!(graph.len() > 10, "modules found: {graph:?}");
        assert_eq!(find_cycle(&graph), None, "{graph:#?}");
        // The check sees a cycle when there is one.
        let mut looped = graph.clone();
        looped
            .entry("identity".to_owned())
            .or_default()
            .insert("checkpoint".to_owned());
        let cycle = find_cycle(&looped).unwrap();
        assert!(cycle.contains(&"identity".to_owned()), "{cycle:?}");
    }

    /// What the rest of the agent stands on uses nothing above it: file
    /// identity nothing in the agent, the configuration and its checks
    /// only the errors (checking builds no rules, redactor or collector).
    #[test]
    fn identity_and_config_stand_on_nothing_above_them() {
        let graph = module_graph();
        assert_eq!(graph["identity"], BTreeSet::new());
        assert_eq!(graph["config"], BTreeSet::from(["error".to_owned()]));
        assert_eq!(
            uses("use crate::rules::Rules;\n// crate::tail\nlet x = crate::hostmetrics::X;"),
            BTreeSet::from(["hostmetrics".to_owned(), "rules".to_owned()])
        );
        assert_eq!(
            uses("use crate::{\n    batch::Batch,\n    config::{Config, Tuning},\n    error,\n};"),
            BTreeSet::from(["batch".to_owned(), "config".to_owned(), "error".to_owned()])
        );
    }
}
