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
//!
//! Here: `Cluster`, its nodes and what callers read of them. `boot.rs`
//! boots and probes, `nodes.rs` holds the node operations, `gate.rs` the
//! recovery gate and metrics snapshots, `journal.rs` the command journal;
//! `garage.rs` and `generic.rs` are the two flavors, `spec.rs` the
//! profile's cluster half, `supervisor.rs` the owner of every child.

pub mod addrs;
mod boot;
pub mod garage;
mod gate;
pub mod generic;
mod journal;
mod links;
mod nodes;
pub mod provision;
pub mod spec;
pub mod supervisor;
pub mod template;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::s3::{S3Client, S3Config, Timeouts as S3Timeouts};
use journal::CommandLog;
use spec::{ClusterSpec, ProfileError};
use supervisor::{ProcState, Supervisor, SupervisorError};

pub(crate) use boot::allocate_ports;
pub use boot::{ProbeFailure, Secrets, WrongProbe, check_endpoints};
pub use gate::{GateFailure, MetricsTarget, Recovery, Unmet, snapshot_metrics};
pub use journal::CommandOutput;
pub(crate) use journal::last_line;
pub use links::recover as recover_links;

/// Every child's environment carries the run directory under this name, so
/// tests (and users) can find a run's processes without matching by name.
pub const RUN_DIR_ENV: &str = "FAULTLINE_RUN_DIR";

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
    /// An nftables rule that could not be applied or removed.
    #[error("network rules: {0}")]
    Net(String),
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
    /// Its own loopback address, which it listens on and (where the
    /// store can) sends from: what network faults name it by.
    pub ip: Ipv4Addr,
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
    /// The run's block of node addresses, leased for its life.
    pub addrs: addrs::AddrLease,
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
    // Dropped in this order: the relays (closing what they carry), the
    // table (its rules deleted), then the context, whose address lease
    // the table's guardian and the next runs wait on.
    /// Healed relays still carrying connections opened during their fault.
    relays: Vec<crate::net::Proxy>,
    /// The run's nftables table, once a network fault made it.
    links: Option<crate::net::NftTable>,
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

pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), ClusterError> {
    std::fs::write(path, text).map_err(io_err(path))
}

impl Cluster {
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
}
