//! Boots, supervises, gates and tears down a real local cluster.
//!
//! A [`Cluster`] is built from a profile: it creates the run directory,
//! chooses ports, renders every node's configuration (spares included),
//! starts the nodes under the [`supervisor`], runs the flavor's bootstrap
//! (Garage's own, or a generic profile's hooks) and probes S3 through every
//! endpoint before declaring itself ready. Afterwards it offers the node
//! operations faults are made of (kill, pause, resume, restart, restart on
//! another binary, wipe) and the recovery gate, [`Cluster::wait_recovered`].
//!
//! Everything the runner runs against the cluster is appended to
//! `commands.log` in the run directory, with its arguments, exit status and
//! output (secrets redacted).

pub mod garage;
pub mod generic;
pub mod provision;
pub mod spec;
pub mod supervisor;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::history::OpRecord;
use crate::history::body::Body;
use crate::s3::{S3Client, S3Config, Timeouts as S3Timeouts};
use crate::sys::utc_now;
use spec::{ClusterSpec, Kind, PortBase, ProfileError};
use supervisor::{ProcState, SpawnSpec, Supervisor, SupervisorError, describe_exit};

/// Every child's environment carries the run directory under this name, so
/// tests (and users) can find a run's processes without matching by name.
pub const RUN_DIR_ENV: &str = "FAULTLINE_RUN_DIR";

/// The object every S3 probe writes, outside any workload prefix.
const PROBE_PREFIX: &str = "faultline-probe/";
/// How long the recovery gate waits on errored blocks before it has the
/// nodes retry them now, and between two such requests: Garage itself
/// retries a failed block after a minute, so this only steps in when the
/// resync backlog keeps it waiting longer.
const ERRORED_BLOCKS_RETRY_AFTER: Duration = Duration::from_secs(90);

/// Pause between attempts of a step that is retried until its deadline.
pub(crate) const RETRY_INTERVAL_MS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A bad flag, a missing binary, an endpoint that is not allowed.
    #[error("{0}")]
    Config(String),
    #[error(
        "port {port} ({purpose} of node {node}) is already in use; choose another port_base or use port_base = \"auto\""
    )]
    PortInUse {
        port: u16,
        node: String,
        purpose: String,
    },
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    /// A boot step missed its deadline or failed.
    #[error("{step} failed on node {node}: {detail} (log: {log})")]
    Step {
        node: String,
        step: String,
        detail: String,
        log: String,
    },
    #[error(transparent)]
    NotRecovered(#[from] GateFailure),
    /// A boot probe wrote an object and read back something else: wrong
    /// data, a finding, not a cluster that is not ready (oracle.md §7).
    #[error("{0}")]
    WrongProbe(Box<WrongProbe>),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the command line adds to a profile.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub profile: PathBuf,
    pub runs_dir: PathBuf,
    pub seed: u64,
    pub cache_dir: PathBuf,
    /// Use this binary instead of installing the profile's version.
    pub binary_override: Option<PathBuf>,
    /// Send the workload here instead of to the nodes' own endpoints.
    pub s3_endpoints: Vec<String>,
    pub allow_remote: bool,
    pub port_base: Option<u16>,
}

/// One process of the cluster, started or not.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub role: String,
    /// A spare is configured but started only to replace a dead node.
    pub spare: bool,
    /// Declared dead and replaced: never started again, outside the gate.
    #[serde(default)]
    pub retired: bool,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub program: PathBuf,
    pub args: Vec<String>,
    #[serde(skip)]
    pub env: Vec<(String, String)>,
    pub ports: BTreeMap<String, u16>,
    /// This node's own S3 endpoint, if it serves S3.
    pub s3_endpoint: Option<String>,
    /// Directories `wipe` empties (data and metadata).
    pub data_dirs: Vec<PathBuf>,
    pub pid: Option<u32>,
    pub starts: u32,
}

impl Node {
    /// In service: neither an unused spare nor retired.
    pub fn is_active(&self) -> bool {
        !self.spare && !self.retired
    }
}

/// Options every caller of the S3 probes and the gate share.
pub struct Ctx {
    pub run_dir: PathBuf,
    pub profile_dir: PathBuf,
    pub sup: Supervisor,
    pub http: reqwest::Client,
    pub timeouts: spec::Timeouts,
    cmdlog: CommandLog,
}

/// The S3 side of a booted cluster: what a workload needs.
#[derive(Debug, Clone, Serialize)]
pub struct S3Target {
    /// The nodes' own endpoints (probed by the gate).
    pub node_endpoints: Vec<String>,
    /// Where the workload goes: the overrides, else the nodes' endpoints.
    pub endpoints: Vec<String>,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    #[serde(skip)]
    pub secret_access_key: String,
}

impl S3Target {
    pub fn client(&self, endpoint: &str, timeouts: S3Timeouts) -> S3Client {
        S3Client::new(
            S3Config {
                endpoint: endpoint.to_string(),
                region: self.region.clone(),
                bucket: self.bucket.clone(),
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
            },
            timeouts,
        )
    }
}

enum Flavor {
    Garage(garage::Garage),
    Generic(generic::Generic),
}

pub struct Cluster {
    pub profile: ClusterSpec,
    pub seed: u64,
    pub nodes: Vec<Node>,
    pub s3: S3Target,
    ctx: Ctx,
    flavor: Flavor,
    booted_in: Duration,
    /// When boot began: the clock of a wrong probe's operations.
    started: Instant,
    /// Probes written so far: each writes the next generation of its key.
    probes: AtomicU64,
}

/// A probe that wrote an object and then read back something else (404,
/// other bytes): its PUT and GET as operations of the history, timed from
/// the start of boot, for the run to record and judge like any other.
#[derive(Debug, Clone)]
pub struct WrongProbe {
    pub run_dir: PathBuf,
    /// The run's key prefix (the probe's key lies outside it).
    pub prefix: String,
    pub endpoint: String,
    pub node: Option<String>,
    pub seen: String,
    pub ops: Vec<OpRecord>,
}

impl fmt::Display for WrongProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the S3 probe through {} ({}) wrote an object and read back {}",
            self.endpoint,
            self.node.as_deref().unwrap_or("not a node's own endpoint"),
            self.seen
        )
    }
}

/// Why a probe did not pass.
#[derive(Debug)]
pub enum ProbeFailure {
    /// No meaningful answer (refused, timed out, 5xx, not ready yet).
    NoAnswer(String),
    /// A wrong answer to a read of what it had just written.
    Wrong(Box<WrongProbe>),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::NoAnswer(why) => f.write_str(why),
            ProbeFailure::Wrong(w) => write!(f, "WRONG DATA: {w}"),
        }
    }
}

/// Secrets for one run, derived from the seed so a run can be re-created.
#[derive(Clone)]
pub struct Secrets {
    pub rpc_secret: String,
    pub admin_token: String,
    pub metrics_token: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Secrets {
    pub fn from_seed(seed: u64) -> Secrets {
        // A named sub-stream: nothing else draws from this one.
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(0x5ec2e75);
        let mut hex = |n: usize| {
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            hex::encode(bytes)
        };
        Secrets {
            rpc_secret: hex(32),
            admin_token: hex(16),
            metrics_token: hex(16),
            access_key_id: format!("GK{}", hex(12)),
            secret_access_key: hex(32),
        }
    }
}

impl Cluster {
    /// Boots the cluster a profile's cluster half describes and waits
    /// until it is ready; `profile_toml`, the whole profile as resolved,
    /// goes into the run directory for the record. On failure every
    /// process already started is killed before returning.
    pub async fn boot(
        opts: &BootOptions,
        mut profile: ClusterSpec,
        profile_toml: &str,
    ) -> Result<Cluster, ClusterError> {
        let started = Instant::now();
        if let Some(base) = opts.port_base {
            profile.port_base = PortBase::Fixed(base);
        }
        check_endpoints(&opts.s3_endpoints, opts.allow_remote)?;
        let profile_dir = opts
            .profile
            .canonicalize()
            .map_err(io_err(&opts.profile))?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let binary = resolve_binary(&profile, opts).await?;
        let run_dir = create_run_dir(&opts.runs_dir, opts.seed)?;
        write_file(&run_dir.join("profile.toml"), profile_toml)?;
        let secrets = Secrets::from_seed(opts.seed);
        let access_key_id = profile
            .s3
            .access_key_id
            .clone()
            .unwrap_or(secrets.access_key_id.clone());
        let secret_access_key = profile
            .s3
            .secret_access_key
            .clone()
            .unwrap_or(secrets.secret_access_key.clone());
        write_credentials(
            &run_dir.join("credentials"),
            &access_key_id,
            &secret_access_key,
        )?;
        let cmdlog = CommandLog::create(
            &run_dir,
            vec![secret_access_key.clone(), secrets.rpc_secret.clone()],
        )?;
        let ctx = Ctx {
            run_dir: run_dir.clone(),
            profile_dir,
            sup: Supervisor::start().map_err(io_err(&run_dir))?,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(3))
                .pool_max_idle_per_host(0)
                .no_proxy()
                .build()
                .expect("reqwest client without TLS always builds"),
            timeouts: profile.timeouts.clone(),
            cmdlog,
        };
        let (nodes, flavor, node_endpoints) = match profile.kind {
            Kind::Garage => {
                let (nodes, g) = garage::Garage::prepare(&profile, &ctx, binary, secrets)?;
                let eps = nodes
                    .iter()
                    .filter(|n| !n.spare)
                    .filter_map(|n| n.s3_endpoint.clone())
                    .collect();
                (nodes, Flavor::Garage(g), eps)
            }
            Kind::Generic => {
                let (nodes, g, eps) = generic::Generic::prepare(
                    &profile,
                    &ctx,
                    binary,
                    &secrets,
                    &access_key_id,
                    &secret_access_key,
                )?;
                (nodes, Flavor::Generic(g), eps)
            }
        };
        let endpoints = if opts.s3_endpoints.is_empty() {
            node_endpoints.clone()
        } else {
            opts.s3_endpoints.clone()
        };
        let s3 = S3Target {
            node_endpoints,
            endpoints,
            region: profile.s3.region.clone(),
            bucket: profile.s3.bucket.clone(),
            access_key_id,
            secret_access_key,
        };
        let mut cluster = Cluster {
            profile,
            seed: opts.seed,
            nodes,
            s3,
            ctx,
            flavor,
            booted_in: Duration::ZERO,
            started,
            probes: AtomicU64::new(0),
        };
        // On error, dropping `cluster` drops the supervisor, which kills
        // every process started so far.
        cluster.start_initial_nodes().await?;
        match &mut cluster.flavor {
            Flavor::Garage(g) => {
                g.bootstrap(&cluster.ctx, &cluster.nodes, &cluster.s3)
                    .await?
            }
            Flavor::Generic(g) => g.bootstrap(&cluster.ctx, &cluster.nodes).await?,
        }
        let all: Vec<String> = cluster
            .s3
            .node_endpoints
            .iter()
            .chain(&cluster.s3.endpoints)
            .cloned()
            .collect();
        for endpoint in dedup(all) {
            cluster.probe_until_ready(&endpoint).await?;
        }
        // A probe's object lives on a few nodes only: Garage is ready once
        // every node is connected to every other, which its health says.
        // (garage-5 once answered 503 "Not connected" right after a boot
        // that had only probed.)
        if matches!(cluster.flavor, Flavor::Garage(_)) {
            let deadline = Duration::from_millis(cluster.ctx.timeouts.step_ms);
            cluster.wait_recovered(deadline).await?;
        }
        cluster.booted_in = started.elapsed();
        cluster.write_state()?;
        tracing::info!(
            took_ms = cluster.booted_in.as_millis() as u64,
            "cluster ready"
        );
        Ok(cluster)
    }

    pub fn run_dir(&self) -> &Path {
        &self.ctx.run_dir
    }

    /// The key prefix a run's workload writes under: `faultline/<run>/`,
    /// named after the run directory so two runs never share keys.
    pub fn run_prefix(&self) -> String {
        let name = self.ctx.run_dir.file_name().unwrap_or_default();
        format!("faultline/{}/", name.to_string_lossy())
    }

    pub fn booted_in(&self) -> Duration {
        self.booted_in
    }

    pub fn commands_log(&self) -> PathBuf {
        self.ctx.cmdlog.path.clone()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn node_index(&self, name: &str) -> Result<usize, ClusterError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| ClusterError::Config(format!("no node named {name}")))
    }

    /// Nodes in service (neither an unused spare nor retired), optionally
    /// of one role.
    pub fn active_nodes(&self, role: Option<&str>) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.is_active() && role.is_none_or(|r| n.role == r))
            .collect()
    }

    /// The roles of the nodes in service, in profile order.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = Vec::new();
        for n in self.nodes.iter().filter(|n| n.is_active()) {
            if !roles.contains(&n.role) {
                roles.push(n.role.clone());
            }
        }
        roles
    }

    /// Where the metrics of the nodes in service can be read (Garage; a
    /// generic profile names none).
    pub fn metrics_targets(&self) -> Vec<MetricsTarget> {
        match &self.flavor {
            Flavor::Garage(g) => g.metrics_targets(&self.active_nodes(None)),
            Flavor::Generic(_) => Vec::new(),
        }
    }

    /// Snapshots every node's metrics now, under `label`.
    pub async fn snapshot_metrics(&self, label: &str) {
        snapshot_metrics(
            &self.ctx.http,
            &self.metrics_targets(),
            &self.ctx.run_dir,
            label,
        )
        .await
    }

    /// The HTTP client for admin requests (metrics snapshots).
    pub fn http(&self) -> reqwest::Client {
        self.ctx.http.clone()
    }

    /// Whether a dead node can be replaced at all (generic profiles need
    /// a `replace` hook).
    pub fn can_replace(&self) -> bool {
        match &self.flavor {
            Flavor::Garage(_) => true,
            Flavor::Generic(g) => g.can_replace(),
        }
    }

    /// An unused spare of `role`, if the pool has one left.
    pub fn spare_of(&self, role: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.spare && !n.retired && n.pid.is_none() && n.role == role)
    }

    /// Replaces a dead node (already stopped) with a spare of its role:
    /// starts the spare, lets the flavor move the dead node's share to it
    /// (Garage: a layout change; generic: the `replace` hook), retires the
    /// dead node and swaps its S3 endpoint for the spare's. Returns the
    /// workload endpoint that changed, as (old, new), if one did.
    pub async fn replace_node(
        &mut self,
        dead: &str,
        spare: &str,
    ) -> Result<Option<(String, String)>, ClusterError> {
        let d = self.node_index(dead)?;
        let s = self.node_index(spare)?;
        if !self.nodes[s].spare || self.nodes[s].pid.is_some() {
            return Err(ClusterError::Config(format!(
                "{spare} is not an unused spare"
            )));
        }
        if self.nodes[s].role != self.nodes[d].role {
            return Err(ClusterError::Config(format!(
                "{spare} (role {}) cannot replace {dead} (role {})",
                self.nodes[s].role, self.nodes[d].role
            )));
        }
        self.start_node(spare).await?;
        match &mut self.flavor {
            Flavor::Garage(g) => {
                let via = self
                    .nodes
                    .iter()
                    .find(|n| n.is_active() && n.name != dead)
                    .ok_or_else(|| {
                        ClusterError::Config("no node left to reach the cluster".into())
                    })?;
                g.replace(&self.ctx, &self.nodes[d], &self.nodes[s], via)
                    .await?
            }
            Flavor::Generic(g) => g.replace(&self.ctx, &self.nodes[d], &self.nodes[s]).await?,
        }
        self.nodes[d].retired = true;
        self.nodes[s].spare = false;
        let mut changed = None;
        if let (Some(old), Some(new)) = (
            self.nodes[d].s3_endpoint.clone(),
            self.nodes[s].s3_endpoint.clone(),
        ) {
            for ep in self.s3.node_endpoints.iter_mut().filter(|e| **e == old) {
                *ep = new.clone();
            }
            for ep in self.s3.endpoints.iter_mut().filter(|e| **e == old) {
                *ep = new.clone();
                changed = Some((old.clone(), new.clone()));
            }
        }
        tracing::info!(dead, spare, "node replaced");
        self.write_state()?;
        Ok(changed)
    }

    /// PIDs of every process the cluster has started that may still run.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.pid).collect()
    }

    /// Process state of a node; `None` if it was never started.
    pub async fn node_state(&self, name: &str) -> Result<Option<ProcState>, ClusterError> {
        let i = self.node_index(name)?;
        match self.nodes[i].pid {
            Some(pid) => Ok(Some(self.ctx.sup.state(pid).await?)),
            None => Ok(None),
        }
    }

    async fn start_initial_nodes(&mut self) -> Result<(), ClusterError> {
        debug_assert!(self.nodes.iter().all(|n| !n.retired));
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| !n.spare)
            .map(|n| n.name.clone())
            .collect();
        for name in names {
            self.start_node(&name).await?;
        }
        self.write_state()
    }

    /// Starts a node that is not running, on its current binary and data.
    pub async fn start_node(&mut self, name: &str) -> Result<u32, ClusterError> {
        let i = self.node_index(name)?;
        if let Some(pid) = self.nodes[i].pid
            && !matches!(self.ctx.sup.state(pid).await?, ProcState::Exited(_))
        {
            return Err(ClusterError::Config(format!(
                "node {name} is already running (pid {pid})"
            )));
        }
        let node = &mut self.nodes[i];
        node.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io_err(&node.log))?;
        let _ = writeln!(
            log,
            "=== faultline: start #{} of {} at {} ===",
            node.starts,
            node.name,
            utc_now()
        );
        let mut env = node.env.clone();
        env.push((RUN_DIR_ENV.into(), self.ctx.run_dir.display().to_string()));
        let pid = self
            .ctx
            .sup
            .spawn(SpawnSpec {
                program: node.program.clone(),
                args: node.args.clone(),
                env,
                cwd: Some(node.dir.clone()),
                log: Some(node.log.clone()),
                label: format!("node {}", node.name),
            })
            .await?;
        node.pid = Some(pid);
        tracing::info!(node = %node.name, pid, "node started");
        self.write_state()?;
        Ok(pid)
    }

    fn live_pid(&self, name: &str) -> Result<u32, ClusterError> {
        let i = self.node_index(name)?;
        self.nodes[i]
            .pid
            .ok_or_else(|| ClusterError::Config(format!("node {name} was never started")))
    }

    /// SIGKILLs a node's process group and waits until it has exited.
    pub async fn kill_node(&mut self, name: &str) -> Result<ProcState, ClusterError> {
        let pid = self.live_pid(name)?;
        self.ctx.sup.terminate(pid, Duration::ZERO).await?;
        tracing::info!(node = name, pid, "node killed");
        Ok(self.ctx.sup.state(pid).await?)
    }

    /// Stops a node gracefully: SIGCONT, SIGTERM, grace period, SIGKILL.
    pub async fn stop_node(&mut self, name: &str) -> Result<ProcState, ClusterError> {
        let pid = self.live_pid(name)?;
        let grace = Duration::from_millis(self.ctx.timeouts.grace_period_ms);
        self.ctx.sup.terminate(pid, grace).await?;
        tracing::info!(node = name, pid, "node stopped");
        Ok(self.ctx.sup.state(pid).await?)
    }

    /// SIGSTOPs a node and confirms the kernel shows it stopped.
    pub async fn pause_node(&mut self, name: &str) -> Result<(), ClusterError> {
        self.signal_and_confirm(name, Signal::SIGSTOP, ProcState::Stopped)
            .await
    }

    /// SIGCONTs a node and confirms it runs again.
    pub async fn resume_node(&mut self, name: &str) -> Result<(), ClusterError> {
        self.signal_and_confirm(name, Signal::SIGCONT, ProcState::Running)
            .await
    }

    async fn signal_and_confirm(
        &mut self,
        name: &str,
        sig: Signal,
        want: ProcState,
    ) -> Result<(), ClusterError> {
        let pid = self.live_pid(name)?;
        self.ctx.sup.signal(pid, sig).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = self.ctx.sup.state(pid).await?;
            if state == want {
                tracing::info!(node = name, pid, signal = %sig, "signal took effect");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Step {
                    node: name.into(),
                    step: format!("{sig}"),
                    detail: format!("process {pid} is {state:?}, expected {want:?} within 5 s"),
                    log: self.nodes[self.node_index(name)?].log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Graceful stop, then start on the same data and binary.
    pub async fn restart_node(&mut self, name: &str) -> Result<u32, ClusterError> {
        self.stop_node(name).await?;
        self.start_node(name).await
    }

    /// Graceful stop, then start on another binary (an update).
    pub async fn restart_node_with(
        &mut self,
        name: &str,
        program: &Path,
    ) -> Result<u32, ClusterError> {
        if !provision::is_executable(program) {
            return Err(ClusterError::Config(format!(
                "{} is not an executable file",
                program.display()
            )));
        }
        self.stop_node(name).await?;
        let i = self.node_index(name)?;
        self.nodes[i].program = program.to_path_buf();
        self.start_node(name).await
    }

    /// Empties a stopped node's data and metadata directories.
    pub async fn wipe_node(&mut self, name: &str) -> Result<(), ClusterError> {
        if matches!(
            self.node_state(name).await?,
            Some(ProcState::Running | ProcState::Stopped)
        ) {
            return Err(ClusterError::Config(format!(
                "node {name} must be stopped before its data is wiped"
            )));
        }
        let i = self.node_index(name)?;
        for dir in &self.nodes[i].data_dirs {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
            }
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        tracing::info!(node = name, "node data wiped");
        Ok(())
    }

    /// Waits until the recovery gate passes or `deadline` runs out.
    ///
    /// The gate passes only when every active node runs, the flavor's own
    /// checks pass (Garage: every node reports `healthy` itself, table sync
    /// settled, no errored resync blocks; generic: health probes and the
    /// `recovered` hook), and an S3 write and read succeed through every node
    /// endpoint. On timeout it names every condition still false.
    pub async fn wait_recovered(&self, deadline: Duration) -> Result<Recovery, GateFailure> {
        let started = Instant::now();
        let mut checks = 0u32;
        let mut next_retry = ERRORED_BLOCKS_RETRY_AFTER;
        loop {
            checks += 1;
            let unmet = self.gate_once().await;
            if unmet.is_empty() {
                let took = started.elapsed();
                tracing::info!(
                    took_ms = took.as_millis() as u64,
                    checks,
                    "recovery gate passed"
                );
                return Ok(Recovery { took, checks });
            }
            let waited = started.elapsed();
            if waited >= deadline {
                let failure = GateFailure { waited, unmet };
                tracing::warn!(%failure, "recovery gate timed out");
                return Err(failure);
            }
            if waited >= next_retry {
                self.retry_errored_blocks(&unmet).await;
                next_retry = waited + ERRORED_BLOCKS_RETRY_AFTER;
            }
            let pause = Duration::from_secs(1).min(deadline - waited);
            tokio::time::sleep(pause).await;
        }
    }

    /// Garage: has the nodes the gate found with errored blocks retry them.
    async fn retry_errored_blocks(&self, unmet: &[Unmet]) {
        let Flavor::Garage(g) = &self.flavor else {
            return;
        };
        let nodes: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| {
                unmet.iter().any(|u| {
                    u.condition == garage::ERRORED_BLOCKS && u.node.as_deref() == Some(&n.name)
                })
            })
            .collect();
        if !nodes.is_empty() {
            g.retry_errored_blocks(&self.ctx, &nodes).await;
        }
    }

    /// One evaluation of every gate condition; empty means recovered.
    pub async fn gate_once(&self) -> Vec<Unmet> {
        let mut unmet = Vec::new();
        let mut up = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_active()) {
            let state = match node.pid {
                Some(pid) => self.ctx.sup.state(pid).await.ok(),
                None => None,
            };
            match state {
                Some(ProcState::Running) => up.push(node),
                Some(ProcState::Stopped) => {
                    unmet.push(Unmet::node(node, "process", "stopped (SIGSTOP)".into()))
                }
                Some(ProcState::Exited(status)) => unmet.push(Unmet::node(
                    node,
                    "process",
                    format!(
                        "exited ({}); log {}",
                        describe_exit(status),
                        node.log.display()
                    ),
                )),
                None => unmet.push(Unmet::node(node, "process", "not started".into())),
            }
        }
        let flavor_checks = async {
            match &self.flavor {
                Flavor::Garage(g) => g.gate(&self.ctx, &up).await,
                Flavor::Generic(g) => g.gate(&self.ctx, &up).await,
            }
        };
        let probes =
            futures::future::join_all(self.s3.node_endpoints.iter().map(|ep| async move {
                match self.probe(ep).await {
                    Ok(()) => None,
                    Err(e) => Some(Unmet {
                        node: self.node_by_endpoint(ep),
                        condition: "s3 probe".into(),
                        detail: format!("{ep}: {e}"),
                    }),
                }
            }));
        let (mut flavor_unmet, probe_unmet) = tokio::join!(flavor_checks, probes);
        unmet.append(&mut flavor_unmet);
        unmet.extend(probe_unmet.into_iter().flatten());
        unmet
    }

    fn node_by_endpoint(&self, endpoint: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.s3_endpoint.as_deref() == Some(endpoint))
            .map(|n| n.name.clone())
    }

    /// Writes a small object through `endpoint` and reads it back. Its
    /// body is the next generation of the probe's key, from the seed, so
    /// a wrong answer is judged by the oracle like any read.
    pub async fn probe(&self, endpoint: &str) -> Result<(), ProbeFailure> {
        use crate::history::{OpKind, Outcome};
        use crate::s3::{GENERATION_HEADER, Keep, Payload};
        use reqwest::Method;
        const PROBE_BYTES: u64 = 4096;
        let timeouts = S3Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(5),
            total: Duration::from_secs(5),
        };
        let client = self.s3.client(endpoint, timeouts);
        let key = format!("{PROBE_PREFIX}{}", sanitize(endpoint));
        let generation = 1 + self.probes.fetch_add(1, Ordering::Relaxed);
        let body = Body::new(self.seed, &key, generation, PROBE_BYTES);
        let sha = body.sha256();
        let headers = [(GENERATION_HEADER, generation.to_string())];
        let payload = Payload::Slice {
            body: &body,
            start: 0,
            end: PROBE_BYTES,
            sha256: Some(sha),
        };
        let put = client
            .exchange(Method::PUT, Some(&key), &[], &headers, payload, Keep::All)
            .await
            .map_err(|f| ProbeFailure::NoAnswer(format!("PUT: {}", f.error)))?;
        if !put.status.is_success() {
            return Err(ProbeFailure::NoAnswer(format!(
                "PUT: HTTP {}: {}",
                put.status.as_u16(),
                last_line(&String::from_utf8_lossy(&put.body))
            )));
        }
        let get = client
            .exchange(Method::GET, Some(&key), &[], &[], Payload::Empty, Keep::All)
            .await
            .map_err(|f| ProbeFailure::NoAnswer(format!("GET: {}", f.error)))?;
        let text = String::from_utf8_lossy(&get.body);
        let absent = get.status.as_u16() == 404 && !text.contains("NoSuchBucket");
        let wrong = match () {
            _ if absent => "404 (absent)".to_string(),
            _ if !get.status.is_success() => {
                return Err(ProbeFailure::NoAnswer(format!(
                    "GET: HTTP {}: {}",
                    get.status.as_u16(),
                    last_line(&text)
                )));
            }
            _ if get.sha256 == sha && get.body_len == PROBE_BYTES => return Ok(()),
            _ => format!("{} other bytes", get.body_len),
        };
        let ns = |t: Instant| t.saturating_duration_since(self.started).as_nanos() as u64;
        let mut w = OpRecord::new(OpKind::Put, Some(key.clone()), Outcome::Ok);
        w.generation = Some(generation);
        (w.size, w.bytes, w.sha256) = (Some(PROBE_BYTES), PROBE_BYTES, Some(sha));
        (w.t_invoke_ns, w.t_return_ns) = (ns(put.t_invoke), ns(put.t_return));
        w.http_status = Some(put.status.as_u16());
        w.etag = put.etag();
        let mut r = OpRecord::new(OpKind::Get, Some(key), Outcome::Ok);
        (r.t_invoke_ns, r.t_return_ns) = (ns(get.t_invoke), ns(get.t_return));
        r.http_status = Some(get.status.as_u16());
        if !absent {
            r.generation = get.generation();
            (r.size, r.bytes, r.sha256) = (Some(get.body_len), get.body_len, Some(get.sha256));
            r.detail = crate::history::body::trace(&get.body, 0).map(|trace| {
                serde_json::to_string(&crate::history::TraceDetail { trace })
                    .expect("a trace serialises")
            });
        }
        for op in [&mut w, &mut r] {
            op.origin = crate::history::Origin::Probe;
        }
        Err(ProbeFailure::Wrong(Box::new(WrongProbe {
            run_dir: self.ctx.run_dir.clone(),
            prefix: self.run_prefix(),
            endpoint: endpoint.to_string(),
            node: self.node_by_endpoint(endpoint),
            seen: wrong,
            ops: vec![w, r],
        })))
    }

    async fn probe_until_ready(&self, endpoint: &str) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_millis(self.ctx.timeouts.step_ms);
        loop {
            let err = match self.probe(endpoint).await {
                Ok(()) => return Ok(()),
                Err(ProbeFailure::Wrong(w)) => return Err(ClusterError::WrongProbe(w)),
                Err(ProbeFailure::NoAnswer(e)) => e,
            };
            if Instant::now() >= deadline {
                let node = self.node_by_endpoint(endpoint);
                let log = node
                    .as_deref()
                    .and_then(|n| self.node(n))
                    .map(|n| n.log.display().to_string())
                    .unwrap_or_else(|| self.commands_log().display().to_string());
                return Err(ClusterError::Step {
                    node: node.unwrap_or_else(|| endpoint.to_string()),
                    step: format!("S3 probe through {endpoint}"),
                    detail: err,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
        }
    }

    /// Records nodes, ports, PIDs and endpoints in `cluster.json`.
    pub fn write_state(&self) -> Result<(), ClusterError> {
        #[derive(Serialize)]
        struct State<'a> {
            profile: &'a str,
            seed: u64,
            nodes: &'a [Node],
            s3: &'a S3Target,
            commands_log: PathBuf,
        }
        let state = State {
            profile: &self.profile.name,
            seed: self.seed,
            nodes: &self.nodes,
            s3: &self.s3,
            commands_log: self.commands_log(),
        };
        let path = self.ctx.run_dir.join("cluster.json");
        let text = serde_json::to_string_pretty(&state).expect("cluster state always serialises");
        write_file(&path, &text)
    }

    /// Stops every node gracefully (all at once), then the supervisor.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        let grace = Duration::from_millis(self.ctx.timeouts.grace_period_ms);
        let stops = self
            .nodes
            .iter()
            .filter_map(|n| n.pid)
            .map(|pid| self.ctx.sup.terminate(pid, grace));
        for result in futures::future::join_all(stops).await {
            match result {
                Ok(_) | Err(SupervisorError::NotAlive { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!("cluster stopped");
        Ok(())
    }

    /// Kills every node at once (second Ctrl-C, failed boot).
    pub async fn kill_all(&self) -> Result<(), ClusterError> {
        Ok(self.ctx.sup.kill_all().await?)
    }
}

/// Where one node's Prometheus metrics can be read.
#[derive(Debug, Clone)]
pub struct MetricsTarget {
    pub node: String,
    pub url: String,
    pub token: String,
}

/// Saves every target's metrics under `<run>/metrics/<label>/<node>.prom`
/// (best effort: a node that does not answer gets a file saying why).
pub async fn snapshot_metrics(
    http: &reqwest::Client,
    targets: &[MetricsTarget],
    run_dir: &Path,
    label: &str,
) {
    if targets.is_empty() {
        return;
    }
    let dir = run_dir.join("metrics").join(label);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let dir = &dir;
    let fetches = targets.iter().map(|t| async move {
        let text = match http.get(&t.url).bearer_auth(&t.token).send().await {
            Ok(resp) => resp
                .text()
                .await
                .unwrap_or_else(|e| format!("# faultline: reading {}: {e}\n", t.url)),
            Err(e) => format!("# faultline: {}: {e}\n", t.url),
        };
        let _ = std::fs::write(dir.join(format!("{}.prom", t.node)), text);
    });
    futures::future::join_all(fetches).await;
}

/// A recovery gate that passed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Recovery {
    pub took: Duration,
    /// How many evaluations it took.
    pub checks: u32,
}

/// One gate condition that is still false.
#[derive(Debug, Clone, Serialize)]
pub struct Unmet {
    pub node: Option<String>,
    pub condition: String,
    pub detail: String,
}

impl Unmet {
    pub fn node(node: &Node, condition: &str, detail: String) -> Unmet {
        Unmet {
            node: Some(node.name.clone()),
            condition: condition.into(),
            detail,
        }
    }
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(n) => write!(f, "{n}: {}: {}", self.condition, self.detail),
            None => write!(f, "{}: {}", self.condition, self.detail),
        }
    }
}

/// The recovery gate did not pass in time.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
pub struct GateFailure {
    pub waited: Duration,
    pub unmet: Vec<Unmet>,
}

impl fmt::Display for GateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster not recovered after {:.1} s: ",
            self.waited.as_secs_f64()
        )?;
        let parts: Vec<String> = self.unmet.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join("; "))
    }
}

/// Runs commands against the cluster under supervision and journals each
/// with its arguments, exit status and output.
struct CommandLog {
    path: PathBuf,
    tmp_dir: PathBuf,
    seq: AtomicU64,
    redact: Vec<String>,
    lock: Mutex<()>,
}

/// What a finished command left behind.
pub struct CommandOutput {
    pub success: bool,
    pub status: String,
    pub output: String,
}

impl CommandLog {
    fn create(run_dir: &Path, redact: Vec<String>) -> Result<CommandLog, ClusterError> {
        let tmp_dir = run_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let path = run_dir.join("commands.log");
        write_file(&path, "")?;
        Ok(CommandLog {
            path,
            tmp_dir,
            seq: AtomicU64::new(0),
            redact,
            lock: Mutex::new(()),
        })
    }

    fn redacted(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.redact.iter().filter(|s| !s.is_empty()) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
        out
    }

    fn append(&self, entry: &str) {
        // A poisoned lock only means another writer panicked mid-append;
        // the file is still usable.
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.path) {
            let _ = f.write_all(self.redacted(entry).as_bytes());
        }
    }
}

impl Ctx {
    /// Runs one command to completion (killed at the command deadline) and
    /// journals it in `commands.log`.
    pub async fn run_command(
        &self,
        label: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<CommandOutput, ClusterError> {
        let seq = self.cmdlog.seq.fetch_add(1, Ordering::Relaxed);
        let out_path = self.cmdlog.tmp_dir.join(format!("{seq}.out"));
        let mut full_env = env.to_vec();
        full_env.push((RUN_DIR_ENV.into(), self.run_dir.display().to_string()));
        let started = Instant::now();
        let timeout = Duration::from_millis(self.timeouts.command_ms);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| ClusterError::Config(format!("{label}: empty command")))?;
        let state = self
            .sup
            .run(
                SpawnSpec {
                    program: PathBuf::from(program),
                    args: args.to_vec(),
                    env: full_env,
                    cwd: Some(self.run_dir.clone()),
                    log: Some(out_path.clone()),
                    label: label.to_string(),
                },
                timeout,
            )
            .await;
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let (success, status) = match &state {
            Ok(ProcState::Exited(s)) => (s.success(), describe_exit(*s)),
            Ok(other) => (
                false,
                format!("{other:?} after deadline of {} ms", timeout.as_millis()),
            ),
            Err(e) => (false, e.to_string()),
        };
        let quoted: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        self.cmdlog.append(&format!(
            "--- {} [{}] {}\n$ {}\n{}{}=> {} in {} ms\n\n",
            utc_now(),
            seq,
            label,
            quoted.join(" "),
            output,
            if output.is_empty() || output.ends_with('\n') {
                ""
            } else {
                "\n"
            },
            status,
            started.elapsed().as_millis()
        ));
        state?;
        Ok(CommandOutput {
            success,
            status,
            output,
        })
    }

    /// Runs a command until it exits 0 or the step deadline passes.
    pub async fn retry_command(
        &self,
        node: &Node,
        step: &str,
        argv: &[String],
    ) -> Result<CommandOutput, ClusterError> {
        let deadline = Instant::now() + Duration::from_millis(self.timeouts.step_ms);
        loop {
            let out = self.run_command(step, argv, &[]).await?;
            if out.success {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Step {
                    node: node.name.clone(),
                    step: step.to_string(),
                    detail: format!(
                        "{} after {} ms: {}",
                        out.status,
                        self.timeouts.step_ms,
                        last_line(&out.output)
                    ),
                    log: node.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
        }
    }
}

pub(crate) fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .to_string()
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

async fn resolve_binary(
    profile: &ClusterSpec,
    opts: &BootOptions,
) -> Result<Option<PathBuf>, ClusterError> {
    if let Some(path) = &opts.binary_override {
        if !provision::is_executable(path) {
            return Err(ClusterError::Config(format!(
                "--garage-bin {}: no executable file there",
                path.display()
            )));
        }
        return Ok(Some(path.canonicalize().map_err(io_err(path))?));
    }
    let wanted = match (&profile.garage, &profile.binary) {
        (Some(g), _) => Some((
            "garage".to_string(),
            g.version.clone(),
            "garage".to_string(),
        )),
        (None, Some(b)) => Some((
            b.krate.clone(),
            b.version.clone(),
            b.name.clone().unwrap_or(b.krate.clone()),
        )),
        (None, None) => None,
    };
    match wanted {
        Some((krate, version, name)) => Ok(Some(
            provision::ensure_binary(&opts.cache_dir, &krate, &version, &name).await?,
        )),
        None => Ok(None),
    }
}

/// Refuses workload endpoints outside loopback unless explicitly allowed.
pub fn check_endpoints(endpoints: &[String], allow_remote: bool) -> Result<(), ClusterError> {
    for ep in endpoints {
        let url = reqwest::Url::parse(ep)
            .map_err(|e| ClusterError::Config(format!("--s3-endpoint {ep}: not a URL ({e})")))?;
        if url.scheme() != "http" {
            return Err(ClusterError::Config(format!(
                "--s3-endpoint {ep}: only http:// endpoints are supported by this build"
            )));
        }
        let host = url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && !allow_remote {
            return Err(ClusterError::Config(format!(
                "--s3-endpoint {ep}: {host} is not a loopback address; pass --allow-remote to send the workload there"
            )));
        }
    }
    Ok(())
}

/// Creates `runs/<utc-timestamp>-<seed>/` (with a suffix if it exists).
fn create_run_dir(runs_dir: &Path, seed: u64) -> Result<PathBuf, ClusterError> {
    std::fs::create_dir_all(runs_dir).map_err(io_err(runs_dir))?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("a fixed format always formats");
    for attempt in 1..100 {
        let name = if attempt == 1 {
            format!("{stamp}-{seed}")
        } else {
            format!("{stamp}-{seed}-{attempt}")
        };
        let dir = runs_dir.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir.canonicalize().map_err(io_err(&dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    Err(ClusterError::Config(format!(
        "{}: 99 runs with seed {seed} started this second",
        runs_dir.display()
    )))
}

/// Chooses ports for every node: free ones, or `base + 10*i + j` checked
/// free. `wanted[i]` lists node i's port names.
pub(crate) fn allocate_ports(
    base: PortBase,
    wanted: &[(String, Vec<String>)],
) -> Result<Vec<BTreeMap<String, u16>>, ClusterError> {
    let mut out = Vec::with_capacity(wanted.len());
    match base {
        PortBase::Auto => {
            // Keep every listener open until all are chosen so no port is
            // handed out twice.
            let mut held = Vec::new();
            for (node, names) in wanted {
                let mut ports = BTreeMap::new();
                for name in names {
                    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::Io {
                        path: PathBuf::from(format!("127.0.0.1:0 (port {name} of {node})")),
                        source: e,
                    })?;
                    let port = l
                        .local_addr()
                        .map_err(io_err(Path::new("127.0.0.1:0")))?
                        .port();
                    held.push(l);
                    ports.insert(name.clone(), port);
                }
                out.push(ports);
            }
        }
        PortBase::Fixed(base) => {
            for (i, (node, names)) in wanted.iter().enumerate() {
                let mut ports = BTreeMap::new();
                for (j, name) in names.iter().enumerate() {
                    let port = u32::from(base) + 10 * i as u32 + j as u32;
                    let port = u16::try_from(port).map_err(|_| {
                        ClusterError::Config(format!(
                            "port_base {base} leaves no room for node {node}'s ports"
                        ))
                    })?;
                    if TcpListener::bind(("127.0.0.1", port)).is_err() {
                        return Err(ClusterError::PortInUse {
                            port,
                            node: node.clone(),
                            purpose: name.clone(),
                        });
                    }
                    ports.insert(name.clone(), port);
                }
                out.push(ports);
            }
        }
    }
    Ok(out)
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), ClusterError> {
    std::fs::write(path, text).map_err(io_err(path))
}

/// Writes the S3 credentials as an AWS shared-credentials file, mode 0600.
fn write_credentials(path: &Path, key_id: &str, secret: &str) -> Result<(), ClusterError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    writeln!(
        f,
        "[faultline]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}"
    )
    .map_err(io_err(path))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_pass_and_others_need_allow_remote() {
        for ok in [
            "http://127.0.0.1:3900",
            "http://127.8.9.10:1/",
            "http://localhost:9000",
            "http://[::1]:80",
        ] {
            check_endpoints(&[ok.into()], false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_endpoints(&["http://10.0.0.5:9000".into()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        check_endpoints(&["http://10.0.0.5:9000".into()], true).unwrap();
        assert!(check_endpoints(&["not a url".into()], false).is_err());
    }

    #[test]
    fn fixed_ports_follow_the_base_and_report_a_taken_one() {
        let wanted = vec![("n1".to_string(), vec!["s3".to_string(), "rpc".to_string()])];
        // The port below the held one is the s3 port; another process (a
        // test running beside this one) may hold it too, so try a few.
        for _ in 0..20 {
            let holder = TcpListener::bind("127.0.0.1:0").unwrap();
            let taken = holder.local_addr().unwrap().port();
            match allocate_ports(PortBase::Fixed(taken - 1), &wanted).unwrap_err() {
                ClusterError::PortInUse {
                    port,
                    node,
                    purpose,
                } if port == taken => {
                    assert_eq!((node.as_str(), purpose.as_str()), ("n1", "rpc"));
                    return;
                }
                ClusterError::PortInUse { .. } => continue,
                other => panic!("{other}"),
            }
        }
        panic!("the port below every held one was taken as well");
    }

    #[test]
    fn auto_ports_are_distinct() {
        let wanted: Vec<_> = (0..5)
            .map(|i| (format!("n{i}"), vec!["a".into(), "b".into(), "c".into()]))
            .collect();
        let ports = allocate_ports(PortBase::Auto, &wanted).unwrap();
        let all: std::collections::BTreeSet<u16> =
            ports.iter().flat_map(|p| p.values().copied()).collect();
        assert_eq!(all.len(), 15);
    }

    #[test]
    fn secrets_follow_the_seed_and_garage_key_format() {
        let a = Secrets::from_seed(7);
        assert_eq!(a.access_key_id, Secrets::from_seed(7).access_key_id);
        assert_ne!(a.rpc_secret, Secrets::from_seed(8).rpc_secret);
        assert_eq!(a.rpc_secret.len(), 64);
        assert!(a.access_key_id.starts_with("GK") && a.access_key_id.len() == 26);
        assert_eq!(a.secret_access_key.len(), 64);
    }

    #[test]
    fn command_log_redacts_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let log = CommandLog::create(dir.path(), vec!["s3cr3t".into()]).unwrap();
        log.append("key import GK1 s3cr3t --yes\n");
        let text = std::fs::read_to_string(dir.path().join("commands.log")).unwrap();
        assert_eq!(text, "key import GK1 <redacted> --yes\n");
    }
}
