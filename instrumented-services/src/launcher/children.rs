//! Child processes of the launcher: starting them with their output sent to
//! a log file, waiting for them to become healthy, noticing when one dies,
//! and stopping them (SIGTERM, grace period, SIGKILL).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::cri::{PodIdentity, capture_output};

/// How often health endpoints and exits are polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a child has to finish after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long to wait for the last captured lines of a stopped service.
const CAPTURE_DRAIN: Duration = Duration::from_secs(2);

/// What to start.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Short name for messages, e.g. `sightline-collector` or `order`.
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment variables set beside the launcher's own.
    pub env: Vec<(OsString, OsString)>,
}

/// The longest wait before restarting a crashed service (the wait doubles
/// with every restart, from one second, like kubelet's back-off).
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// Where a workload runs: its pod, container and restart count, which
/// name its CRI log file.
#[derive(Debug, Clone)]
pub struct PodPlacement {
    /// The kubelet-style pod log root.
    pub pods_root: PathBuf,
    /// The pod.
    pub pod: PodIdentity,
    /// The container name.
    pub container: String,
    /// How often the container was restarted: its log file is
    /// `<restart_count>.log`.
    pub restart_count: u32,
}

/// A started child.
pub struct RunningChild {
    name: String,
    child: Child,
    log_path: PathBuf,
    capture: Option<JoinHandle<()>>,
    spec: ChildSpec,
    placement: Option<PodPlacement>,
}

/// A child that exited although nobody asked it to.
#[derive(Debug, thiserror::Error)]
#[error("{name} exited unexpectedly ({status}); see {}", log_path.display())]
pub struct UnexpectedExit {
    /// Which child.
    pub name: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Where its output went.
    pub log_path: PathBuf,
}

impl RunningChild {
    /// Starts a platform process (collector, agent) with stdout and stderr
    /// appended to `log_path` as plain text.
    pub fn spawn_with_log_file(spec: &ChildSpec, log_path: &Path) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let log_for_stderr = log
            .try_clone()
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let child = command(spec)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr))
            .spawn()
            .with_context(|| format!("failed to start {}", spec.program.display()))?;
        Ok(Self {
            name: spec.name.clone(),
            child,
            log_path: log_path.to_owned(),
            capture: None,
            spec: spec.clone(),
            placement: None,
        })
    }

    /// Starts a workload (a shop service) as container `container` of `pod`:
    /// its stdout and stderr are captured into the pod's CRI log file
    /// `<pods_root>/<pod dir>/<container>/0.log`.
    pub fn spawn_in_pod(
        spec: &ChildSpec,
        pods_root: &Path,
        pod: &PodIdentity,
        container: &str,
    ) -> anyhow::Result<Self> {
        let placement = PodPlacement {
            pods_root: pods_root.to_owned(),
            pod: pod.clone(),
            container: container.to_owned(),
            restart_count: 0,
        };
        Self::spawn_placed(spec, placement)
    }

    /// Starts a workload in `placement`, logging to its restart's file.
    fn spawn_placed(spec: &ChildSpec, placement: PodPlacement) -> anyhow::Result<Self> {
        let log_path = placement.pod.log_file(
            &placement.pods_root,
            &placement.container,
            placement.restart_count,
        );
        if let Some(directory) = log_path.parent() {
            std::fs::create_dir_all(directory)
                .with_context(|| format!("failed to create {}", directory.display()))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let mut child = command(spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start {}", spec.program.display()))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            bail!("{}: output pipes missing", spec.name);
        };
        Ok(Self {
            name: spec.name.clone(),
            child,
            log_path,
            capture: Some(capture_output(stdout, stderr, log)),
            spec: spec.clone(),
            placement: Some(placement),
        })
    }

    /// Whether the child is a workload the launcher restarts when it dies
    /// (the shop services; the platform's processes are not restarted).
    pub fn restartable(&self) -> bool {
        self.placement.is_some()
    }

    /// How often the child was restarted.
    pub fn restart_count(&self) -> u32 {
        self.placement
            .as_ref()
            .map_or(0, |placement| placement.restart_count)
    }

    /// Restarts an exited workload as kubelet would: after a back-off, in
    /// the same pod, with the restart count one higher, so its output goes
    /// to `<restart_count>.log` beside the previous file.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        let Some(mut placement) = self.placement.take() else {
            bail!("{} is not a restartable workload", self.name);
        };
        if let Some(capture) = self.capture.take() {
            let _ = tokio::time::timeout(CAPTURE_DRAIN, capture).await;
        }
        let backoff = Duration::from_secs(1)
            .saturating_mul(1 << placement.restart_count.min(5))
            .min(MAX_RESTART_BACKOFF);
        tokio::time::sleep(backoff).await;
        placement.restart_count += 1;
        Self::spawn_placed(&self.spec, placement)
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its exit, if it has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<UnexpectedExit>> {
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("failed to check on {}", self.name))?;
        Ok(status.map(|status| UnexpectedExit {
            name: self.name.clone(),
            status,
            log_path: self.log_path.clone(),
        }))
    }

    /// Polls `GET url` until it answers 2xx, failing if the child exits first
    /// or `timeout` passes.
    pub async fn wait_healthy(
        &mut self,
        client: &reqwest::Client,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(exit) = self.exited()? {
                bail!(
                    "{} exited ({}) before answering GET {url}; see {}",
                    exit.name,
                    exit.status,
                    exit.log_path.display()
                );
            }
            let answer = client.get(url).timeout(Duration::from_secs(1)).send().await;
            if answer.is_ok_and(|response| response.status().is_success()) {
                tracing::info!(name = %self.name, elapsed_ms = started.elapsed().as_millis() as u64, "ready");
                return Ok(());
            }
            if started.elapsed() >= timeout {
                bail!(
                    "{} did not answer GET {url} within {}s; see {}",
                    self.name,
                    timeout.as_secs(),
                    self.log_path.display()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops the child: SIGTERM, up to 10 s to exit, then SIGKILL. Waits for
    /// its captured output to be written.
    pub async fn stop(mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            tracing::info!(name = %self.name, %status, "already exited");
        } else {
            self.terminate();
            match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
                Ok(Ok(status)) => tracing::info!(name = %self.name, %status, "stopped"),
                Ok(Err(error)) => {
                    tracing::warn!(name = %self.name, %error, "failed to wait for exit")
                }
                Err(_) => {
                    tracing::warn!(name = %self.name, grace_s = STOP_GRACE.as_secs(), "no exit after SIGTERM, killing");
                    if let Err(error) = self.child.kill().await {
                        tracing::warn!(name = %self.name, %error, "failed to kill");
                    }
                }
            }
        }
        if let Some(capture) = self.capture.take() {
            let _ = tokio::time::timeout(CAPTURE_DRAIN, capture).await;
        }
    }

    fn terminate(&self) {
        let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) else {
            return;
        };
        let Some(pid) = rustix::process::Pid::from_raw(pid) else {
            return;
        };
        if let Err(error) = rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
            tracing::warn!(name = %self.name, %error, "failed to send SIGTERM");
        }
    }
}

/// The children started so far, stopped in reverse order of start.
#[derive(Default)]
pub struct Children {
    started: Vec<RunningChild>,
    /// Where a restarted workload's pod shows its restarts.
    pub pods: Option<std::sync::Arc<super::pods::DemoPods>>,
}

impl Children {
    /// Adds a started child; returns it for health checks.
    pub fn push(&mut self, child: RunningChild) -> &mut RunningChild {
        self.started.push(child);
        let last = self.started.len() - 1;
        &mut self.started[last]
    }

    /// Watches the children: a workload that exits is restarted (see
    /// [`RunningChild::restart`]); returns when a platform process exits,
    /// which is always unexpected.
    pub async fn supervise(&mut self) -> anyhow::Result<UnexpectedExit> {
        loop {
            for index in 0..self.started.len() {
                let Some(exit) = self.started[index].exited()? else {
                    continue;
                };
                if !self.started[index].restartable() {
                    return Ok(exit);
                }
                let crashed = self.started.remove(index);
                tracing::warn!(
                    name = %exit.name,
                    status = %exit.status,
                    log = %exit.log_path.display(),
                    restarts = crashed.restart_count(),
                    "service exited, restarting"
                );
                let restarted = crashed.restart().await?;
                if let (Some(pods), Some(placement)) = (&self.pods, &restarted.placement) {
                    pods.restarted(
                        &placement.pod,
                        &placement.container,
                        placement.restart_count,
                        exit.status,
                    );
                }
                tracing::info!(
                    name = %restarted.name(),
                    restarts = restarted.restart_count(),
                    log = %restarted.log_path().display(),
                    "service restarted"
                );
                self.started.insert(index, restarted);
            }
            tokio::time::sleep(POLL_INTERVAL * 2).await;
        }
    }

    /// Stops every child, the last started first.
    pub async fn stop_all(&mut self) {
        while let Some(child) = self.started.pop() {
            tracing::info!(name = %child.name(), "stopping");
            child.stop().await;
        }
    }
}

fn command(spec: &ChildSpec) -> Command {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        // Own process group: a terminal's Ctrl-C reaches only the launcher,
        // which then stops the children in order.
        .process_group(0)
        .kill_on_drop(true);
    command
}
