//! The cluster half of a profile (the TOML files under `configs/`): what
//! to boot, and the error type of profile files.
//!
//! Two kinds exist. `garage` is the built-in default: the runner knows how
//! to configure, bootstrap and health-check Garage itself. `generic`
//! describes any cluster by roles, commands, ports, health probes and hook
//! commands, so users can point faultline at their own store.
//!
//! Parsing is strict: an unknown key or a value of the wrong type is an
//! error naming the file, the key and what was expected, because a typo in
//! a chaos profile silently falling back to a default would make a run test
//! something other than what its author meant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: expected {expected}, found {found}")]
    Invalid {
        path: PathBuf,
        key: String,
        expected: String,
        found: String,
    },
}

/// The cluster half of a profile: what to boot and how to reach it. The
/// rest of a profile (workload, faults, oracle) is `crate::profile`'s.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ClusterSpec {
    /// A short name used in run directories and reports.
    pub name: String,
    pub kind: Kind,
    /// `"auto"` picks free ports at boot; an integer N gives node i (from 0)
    /// the ports N + 10*i + 0, 1, 2, ... in the order its role lists them.
    pub port_base: PortBase,
    pub s3: S3Section,
    pub garage: Option<GarageSection>,
    pub binary: Option<BinarySection>,
    pub roles: Vec<RoleSection>,
    pub hooks: Option<HooksSection>,
    pub timeouts: Timeouts,
}

impl ClusterSpec {
    /// Nodes in service at boot, all roles together (spares left out).
    pub fn nodes_in_service(&self) -> usize {
        match &self.garage {
            Some(g) => g.nodes as usize,
            None => self.roles.iter().map(|r| r.count as usize).sum(),
        }
    }
}

/// A value written either as a number of type `T` or as one keyword
/// (`None`), with `expected` in the error for anything else.
pub(crate) fn int_or_keyword<'de, D: serde::Deserializer<'de>, T: TryFrom<i64>>(
    d: D,
    keyword: &str,
    expected: &str,
) -> Result<Option<T>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    match Raw::deserialize(d).map_err(|_| D::Error::custom(expected))? {
        Raw::Text(s) if s == keyword => Ok(None),
        Raw::Number(n) => T::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{expected}, found {n}"))),
        Raw::Text(s) => Err(D::Error::custom(format!("{expected}, found {s:?}"))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Garage,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortBase {
    #[default]
    Auto,
    Fixed(u16),
}

impl<'de> Deserialize<'de> for PortBase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = "expected \"auto\" or a port number";
        Ok(match int_or_keyword::<D, u16>(d, "auto", expected)? {
            Some(n) => PortBase::Fixed(n),
            None => PortBase::Auto,
        })
    }
}

impl Serialize for PortBase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PortBase::Auto => s.serialize_str("auto"),
            PortBase::Fixed(n) => s.serialize_u16(*n),
        }
    }
}

/// Where the workload talks S3, and as whom.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// Endpoint URL templates (generic profiles; Garage uses every node's).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Fixed credentials; generated per run (in Garage's key format) when absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            region: default_region(),
            bucket: default_bucket(),
            endpoints: Vec::new(),
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

fn default_region() -> String {
    "garage".into()
}

fn default_bucket() -> String {
    "faultline".into()
}

/// The built-in Garage cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GarageSection {
    /// Exact crate version to run, installed from the registry if missing.
    pub version: String,
    /// Storage nodes started at boot.
    pub nodes: u32,
    /// Nodes configured but started only to replace a dead one.
    #[serde(default)]
    pub spares: u32,
    pub replication_factor: u32,
    #[serde(default)]
    pub consistency_mode: ConsistencyMode,
    #[serde(default)]
    pub db_engine: DbEngine,
    /// Capacity each node announces in the layout, as Garage parses it.
    #[serde(default = "default_capacity")]
    pub capacity: String,
    #[serde(default)]
    pub metadata_fsync: bool,
    #[serde(default)]
    pub data_fsync: bool,
    /// Data block size in bytes.
    #[serde(default = "default_block_size")]
    pub block_size: u64,
    /// `RUST_LOG` for the nodes.
    #[serde(default = "default_garage_log")]
    pub log_filter: String,
    /// The recovery gate counts table sync as settled on a node when its
    /// merkle-updater backlog is at most this: a cluster under load always
    /// has a few entries queued (10 to 20 at 300 ops/s here), a node
    /// catching up has hundreds or thousands.
    #[serde(default = "default_merkle_backlog_max")]
    pub gate_merkle_backlog_max: u64,
    /// Garage's `resync-tranquility` (its default is 2) and
    /// `resync-worker-count` (default 1), set on every node at boot: the
    /// resync queue is also where blocks freed by overwrites and deletes
    /// are removed, and at Garage's defaults a soak's queue grew past
    /// 30,000 blocks and the nodes' data by about 1 GB a minute.
    #[serde(default)]
    pub resync_tranquility: u32,
    #[serde(default = "default_resync_workers")]
    pub resync_worker_count: u32,
}

fn default_resync_workers() -> u32 {
    4
}

fn default_merkle_backlog_max() -> u64 {
    100
}

fn default_capacity() -> String {
    "1G".into()
}

fn default_block_size() -> u64 {
    1024 * 1024
}

fn default_garage_log() -> String {
    "garage=info".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyMode {
    #[default]
    Consistent,
    Degraded,
    Dangerous,
}

impl ConsistencyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyMode::Consistent => "consistent",
            ConsistencyMode::Degraded => "degraded",
            ConsistencyMode::Dangerous => "dangerous",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbEngine {
    /// The default here: LMDB reserves 1 TiB of virtual memory per node.
    #[default]
    Sqlite,
    Lmdb,
}

impl DbEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            DbEngine::Sqlite => "sqlite",
            DbEngine::Lmdb => "lmdb",
        }
    }
}

/// A binary a generic profile wants installed from the crate registry;
/// its path is the template variable `{bin}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BinarySection {
    #[serde(rename = "crate")]
    pub krate: String,
    pub version: String,
    /// The binary's file name; defaults to the crate name.
    pub name: Option<String>,
}

/// One role of a generic cluster (for example meta, data or front).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    pub name: String,
    pub count: u32,
    #[serde(default)]
    pub spares: u32,
    /// Argument vector; the first element is the program. Templated.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Named ports each node of this role gets, e.g. ["s3", "rpc"].
    #[serde(default)]
    pub ports: Vec<String>,
    /// Directories created under the node's directory before it starts.
    #[serde(default)]
    pub data_dirs: Vec<String>,
    /// Files rendered into the node's directory before it starts.
    #[serde(default)]
    pub files: Vec<FileSection>,
    pub health: Option<HealthSection>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSection {
    /// Path relative to the node's directory.
    pub path: String,
    /// File contents; `{...}` variables are substituted.
    pub template: String,
}

/// A node's health probe: exactly one of the three.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// GET this URL; healthy on any 2xx.
    pub http: Option<String>,
    /// Connect to this host:port; healthy when the connection is accepted.
    pub tcp: Option<String>,
    /// Run this argument vector; healthy on exit status 0.
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    /// Commands run in order once every node's health probe passes.
    #[serde(default)]
    pub bootstrap: Vec<Vec<String>>,
    /// Exits 0 when the cluster has recovered; part of the recovery gate.
    pub recovered: Option<Vec<String>>,
    /// Hands a dead node's share to a started spare (the `dead` fault);
    /// gets FAULTLINE_DEAD_NODE, FAULTLINE_DEAD_DIR, FAULTLINE_SPARE_NODE
    /// and FAULTLINE_SPARE_DIR in its environment.
    #[serde(default)]
    pub replace: Option<Vec<String>>,
}

/// Deadlines, in milliseconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Each bootstrap step (start, connect, layout, key, bucket, probes).
    #[serde(default = "default_step_ms")]
    pub step_ms: u64,
    /// One command run against the cluster (CLI call, hook, probe).
    #[serde(default = "default_command_ms")]
    pub command_ms: u64,
    /// How long a node gets between SIGTERM and SIGKILL.
    #[serde(default = "default_grace_ms")]
    pub grace_period_ms: u64,
    /// The recovery gate's default deadline.
    #[serde(default = "default_recovery_ms")]
    pub recovery_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            step_ms: default_step_ms(),
            command_ms: default_command_ms(),
            grace_period_ms: default_grace_ms(),
            recovery_ms: default_recovery_ms(),
        }
    }
}

fn default_step_ms() -> u64 {
    30_000
}

fn default_command_ms() -> u64 {
    20_000
}

fn default_grace_ms() -> u64 {
    10_000
}

fn default_recovery_ms() -> u64 {
    120_000
}

impl ClusterSpec {
    /// Checks what the file format cannot: names, ports, the S3 section and
    /// the kind's own tables.
    pub fn validate(&self, path: &Path) -> Result<(), ProfileError> {
        let invalid = |key: &str, expected: &str, found: String| ProfileError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_string(),
            found,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "name",
                "a non-empty name of letters, digits, '-' and '_'",
                format!("{:?}", self.name),
            ));
        }
        if let PortBase::Fixed(base) = self.port_base
            && base < 1024
        {
            return Err(invalid(
                "port_base",
                "\"auto\" or a port number of at least 1024",
                base.to_string(),
            ));
        }
        if !valid_bucket(&self.s3.bucket) {
            return Err(invalid(
                "s3.bucket",
                "an S3 bucket name (3-63 of a-z, 0-9, '-')",
                format!("{:?}", self.s3.bucket),
            ));
        }
        if self.s3.access_key_id.is_some() != self.s3.secret_access_key.is_some() {
            return Err(invalid(
                "s3.access_key_id",
                "both access_key_id and secret_access_key, or neither",
                "only one of them".into(),
            ));
        }
        match self.kind {
            Kind::Garage => self.validate_garage(path, &invalid),
            Kind::Generic => self.validate_generic(&invalid),
        }
    }

    fn validate_garage(
        &self,
        _path: &Path,
        invalid: &dyn Fn(&str, &str, String) -> ProfileError,
    ) -> Result<(), ProfileError> {
        let Some(g) = &self.garage else {
            return Err(invalid(
                "garage",
                "a [garage] table for kind = \"garage\"",
                "none".into(),
            ));
        };
        for (key, present) in [
            ("roles", !self.roles.is_empty()),
            ("hooks", self.hooks.is_some()),
            ("binary", self.binary.is_some()),
            ("s3.endpoints", !self.s3.endpoints.is_empty()),
        ] {
            if present {
                return Err(invalid(
                    key,
                    "nothing: this key belongs to kind = \"generic\"",
                    "a value".into(),
                ));
            }
        }
        if !valid_version(&g.version) {
            return Err(invalid(
                "garage.version",
                "an exact version such as \"2.5.0\"",
                format!("{:?}", g.version),
            ));
        }
        if !(1..=7).contains(&g.replication_factor) {
            return Err(invalid(
                "garage.replication_factor",
                "1 to 7",
                g.replication_factor.to_string(),
            ));
        }
        if g.nodes < g.replication_factor {
            return Err(invalid(
                "garage.nodes",
                &format!("at least replication_factor ({})", g.replication_factor),
                g.nodes.to_string(),
            ));
        }
        if g.nodes + g.spares > 64 {
            return Err(invalid(
                "garage.spares",
                "nodes + spares of at most 64",
                (g.nodes + g.spares).to_string(),
            ));
        }
        if !(1..=8).contains(&g.resync_worker_count) {
            return Err(invalid(
                "garage.resync_worker_count",
                "1 to 8 (Garage's limit)",
                g.resync_worker_count.to_string(),
            ));
        }
        if g.block_size < 4096 {
            return Err(invalid(
                "garage.block_size",
                "at least 4096 bytes",
                g.block_size.to_string(),
            ));
        }
        Ok(())
    }

    fn validate_generic(
        &self,
        invalid: &dyn Fn(&str, &str, String) -> ProfileError,
    ) -> Result<(), ProfileError> {
        if self.garage.is_some() {
            return Err(invalid(
                "garage",
                "nothing: [garage] belongs to kind = \"garage\"",
                "a table".into(),
            ));
        }
        if self.roles.is_empty() {
            return Err(invalid(
                "roles",
                "at least one [[roles]] table",
                "none".into(),
            ));
        }
        if self.s3.endpoints.is_empty() {
            return Err(invalid(
                "s3.endpoints",
                "at least one S3 endpoint URL",
                "none".into(),
            ));
        }
        if let Some(b) = &self.binary
            && !valid_version(&b.version)
        {
            return Err(invalid(
                "binary.version",
                "an exact version such as \"2.5.0\"",
                format!("{:?}", b.version),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, role) in self.roles.iter().enumerate() {
            let key = |k: &str| format!("roles[{i}].{k}");
            if role.name.is_empty()
                || !role
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return Err(invalid(
                    &key("name"),
                    "a non-empty name of a-z and 0-9",
                    format!("{:?}", role.name),
                ));
            }
            if !names.insert(role.name.clone()) {
                return Err(invalid(
                    &key("name"),
                    "a name no other role has",
                    format!("{:?}", role.name),
                ));
            }
            if role.count == 0 {
                return Err(invalid(&key("count"), "at least 1", "0".into()));
            }
            if role.command.is_empty() {
                return Err(invalid(
                    &key("command"),
                    "a non-empty argument vector",
                    "[]".into(),
                ));
            }
            if let Some(h) = &role.health {
                let set = [h.http.is_some(), h.tcp.is_some(), h.command.is_some()];
                if set.iter().filter(|s| **s).count() != 1 {
                    return Err(invalid(
                        &key("health"),
                        "exactly one of http, tcp, command",
                        format!("{} of them", set.iter().filter(|s| **s).count()),
                    ));
                }
            }
            for f in &role.files {
                if Path::new(&f.path).is_absolute() || f.path.split('/').any(|c| c == "..") {
                    return Err(invalid(
                        &key("files.path"),
                        "a path inside the node directory",
                        format!("{:?}", f.path),
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !b.starts_with('-')
        && !b.ends_with('-')
}
