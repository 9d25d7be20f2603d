//! Faults: one at a time, each a value that is journaled, applied,
//! confirmed, held, undone and followed by the recovery gate
//! (`Cluster::wait_recovered`); only then may the next one start. It knows
//! nothing of the workload.
//!
//! A fault family (`process.rs`: kill, stop, restart, update, offline,
//! dead) offers kinds (`KindSpec`); a kind chooses its targets on the
//! cluster and makes a `Fault`, whose `apply` confirms it by an observation
//! (exited, stopped, a new PID) and whose `undo` puts the cluster back.
//! The `Injector` (`injector.rs`) runs that life cycle the same way for
//! every family; `plan.rs` draws the seeded plans of `gate` and `soak`. A
//! new family adds a file and one line in `FAMILIES`.
//!
//! Every wait is bounded, a stop request cuts a hold short, and a fault
//! that cannot be undone or a cluster that does not recover ends the
//! schedule with an error that names the fault.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError, GateFailure};

mod degrade;
mod injector;
mod network;
mod plan;
mod process;

pub use injector::{FaultStatus, Injected, Injector, Phase, Step};
pub use plan::{Planned, SoakPlan, gate_plan};

/// The fault families, in the order `--faults` lists their kinds.
const FAMILIES: &[&[KindSpec]] = &[process::KINDS, network::KINDS, degrade::KINDS];

/// Every kind of every family, in `FAMILIES` order.
static KINDS: LazyLock<Vec<&'static KindSpec>> =
    LazyLock::new(|| FAMILIES.iter().flat_map(|f| f.iter()).collect());

/// A kind of fault a family offers.
pub struct KindSpec {
    /// As `--faults`, the profile's `kinds` and the ledger name it.
    pub name: &'static str,
    /// The fewest nodes in service (all roles) the kind's shape needs: a
    /// profile with fewer cannot have it (halves of 2 nodes).
    pub min_nodes: usize,
    /// Needs CAP_NET_ADMIN: its rules go into the run's nftables table.
    pub net: bool,
    /// Chooses the fault's targets on the cluster and makes it, or says
    /// why the plan's fault cannot be injected here (no node of the role
    /// in service, no spare left).
    pub choose: fn(&Planned, &mut Choose<'_>) -> Chosen,
}

/// A fault made for a plan's entry, or why it cannot be here.
pub type Chosen = Result<Box<dyn Fault>, String>;

/// A fault kind: an index into every family's kinds.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultKind(u16);

impl FaultKind {
    /// Every kind, in `FAMILIES` order.
    pub fn all() -> Vec<FaultKind> {
        (0..KINDS.len() as u16).map(FaultKind).collect()
    }

    fn spec(self) -> &'static KindSpec {
        KINDS[self.0 as usize]
    }

    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    /// The fewest nodes in service the kind needs.
    pub fn min_nodes(self) -> usize {
        self.spec().min_nodes
    }

    /// Whether the kind needs CAP_NET_ADMIN (nftables rules).
    pub fn needs_net_admin(self) -> bool {
        self.spec().net
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::all().into_iter().find(|k| k.as_str() == s)
    }

    /// Parses a comma-separated list, e.g. `kill-start,dead`.
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = FaultKind::parse(part).ok_or_else(|| unknown_kind(part))?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }
}

fn unknown_kind(name: &str) -> String {
    let known: Vec<&str> = FaultKind::all().iter().map(|k| k.as_str()).collect();
    format!(
        "unknown fault kind {name:?}; expected one of {}",
        known.join(", ")
    )
}

impl std::fmt::Debug for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FaultKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FaultKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FaultKind, D::Error> {
        let name = String::deserialize(d)?;
        FaultKind::parse(&name).ok_or_else(|| serde::de::Error::custom(unknown_kind(&name)))
    }
}

/// What a kind chooses its targets with.
pub struct Choose<'a> {
    pub cluster: &'a Cluster,
    pub settings: &'a FaultSettings,
    /// The binary `update` moves to; `None`: each node's own.
    pub update_bin: Option<&'a Path>,
    /// The run's `fault-targets` stream.
    pub rng: &'a mut ChaCha8Rng,
}

/// What one step of a fault's life cycle returns.
pub type StepResult<'a> = Pin<Box<dyn Future<Output = Result<(), FaultError>> + 'a>>;

/// One fault, its targets chosen.
pub trait Fault: std::fmt::Debug {
    /// What the ledger names as its target; read again after `undo`,
    /// which may change it (a dead node's replacement).
    fn target(&self) -> String;
    /// Its parameters and what was observed of it, for the ledger's
    /// `faults.params` (JSON); read after `apply` and after `undo`.
    fn params(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Applies the fault and calls `Step::confirmed` once an observation
    /// shows it took effect; an `apply` that returns without confirming
    /// fails the fault.
    fn apply<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a>;
    /// How long the fault stays applied before `undo`; zero for a fault
    /// whose `apply` ends in the undone state (a restart).
    fn hold(&self) -> Duration;
    /// Puts the cluster back (a node started and running again), or for a
    /// fault that cannot be undone, moves on (a dead node replaced).
    fn undo<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a>;
}

/// The profile's `[faults]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    /// Which kinds to inject.
    pub kinds: Vec<FaultKind>,
    /// Clean workload between one fault's recovery and the next fault.
    pub interval_ms: u64,
    /// How long a killed or offline node stays down.
    pub hold_ms: u64,
    /// How long a SIGSTOPped node stays stopped: long enough for its
    /// peers to mark it down.
    pub stop_hold_ms: u64,
    /// How long a network partition stays in place.
    pub net_hold_ms: u64,
    /// How long a degraded link or client path stays degraded.
    pub link_hold_ms: u64,
    /// `link-loss`: the share of packets dropped, in percent.
    pub loss_percent: u32,
    /// `link-latency`, `client-latency`: added delay per direction.
    pub latency_ms: u64,
    /// ... give or take up to this much.
    pub jitter_ms: u64,
    /// `link-bandwidth`, `client-bandwidth`: each direction's rate.
    pub bandwidth_kib_s: u64,
    /// `client-slicer`: the average segment size.
    pub slice_bytes: usize,
    /// `client-limit-data`: the answer bytes a connection gets.
    pub limit_bytes: u64,
    /// The version `update` moves to (installed like the main binary);
    /// absent: the version already running.
    pub update_version: Option<String>,
    /// How often each role is a fault's target (generic profiles); roles
    /// not named weigh 1.
    pub role_weights: BTreeMap<String, u32>,
}

impl Default for FaultSettings {
    fn default() -> Self {
        FaultSettings {
            kinds: FaultKind::all(),
            interval_ms: 20_000,
            hold_ms: 10_000,
            // Garage marks a silent peer down after more than 4 missed
            // pings, 15 s apart (shared/design/garage.md).
            stop_hold_ms: 75_000,
            // Long enough for the store to notice: Garage pings a peer
            // every 15 s with a 10 s timeout and drops the connection at
            // the fifth failure, measured here 79 s into an isolation.
            net_hold_ms: 110_000,
            link_hold_ms: 30_000,
            loss_percent: 30,
            latency_ms: 150,
            jitter_ms: 50,
            bandwidth_kib_s: 256,
            slice_bytes: 64,
            limit_bytes: 2048,
            update_version: None,
            role_weights: BTreeMap::new(),
        }
    }
}

impl FaultSettings {
    /// The kinds a plan draws from on a cluster of `nodes` in service, by
    /// a runner with (`net_admin`) or without CAP_NET_ADMIN. The default,
    /// every kind, leaves out the shapes such a cluster cannot have (a
    /// ring on 3 nodes) and, without the capability, the network kinds; a
    /// list that names one is an error.
    pub fn kinds_for(&self, nodes: usize, net_admin: bool) -> Result<Vec<FaultKind>, String> {
        let fits = |k: &FaultKind| k.min_nodes() <= nodes;
        let allowed = |k: &FaultKind| net_admin || !k.needs_net_admin();
        if self.kinds == FaultKind::all() {
            return Ok(self
                .kinds
                .iter()
                .copied()
                .filter(|k| fits(k) && allowed(k))
                .collect());
        }
        if let Some(k) = self.kinds.iter().find(|k| !allowed(k)) {
            return Err(format!(
                "{} needs CAP_NET_ADMIN for its nftables rules, which this process lacks: run faultline as root, or name no network fault",
                k.as_str()
            ));
        }
        match self.kinds.iter().find(|k| !fits(k)) {
            Some(k) => Err(format!(
                "{} needs at least {} nodes in service, the cluster has {nodes}",
                k.as_str(),
                k.min_nodes()
            )),
            None => Ok(self.kinds.clone()),
        }
    }

    pub fn weight(&self, role: &str) -> u32 {
        self.role_weights.get(role).copied().unwrap_or(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("fault {fault}: {source}")]
    Cluster {
        fault: String,
        #[source]
        source: Box<ClusterError>,
    },
    #[error("fault {fault} did not take effect: {detail}")]
    NotConfirmed { fault: String, detail: String },
    #[error("after fault {fault}: {failure}")]
    NotRecovered { fault: String, failure: GateFailure },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_the_command_line() {
        let kind = |s| FaultKind::parse(s).unwrap();
        assert_eq!(
            FaultKind::parse_list("kill-start, dead,kill-start").unwrap(),
            vec![kind("kill-start"), kind("dead")]
        );
        let err = FaultKind::parse_list("kill-start,explode").unwrap_err();
        assert!(
            err.contains("explode") && err.contains("stop-start"),
            "{err}"
        );
    }

    #[test]
    fn a_shape_the_cluster_cannot_have_is_left_out_of_the_default_and_refused_when_named() {
        let all = FaultSettings::default();
        let on3 = all.kinds_for(3, true).unwrap();
        assert!(on3.contains(&FaultKind::parse("partition-halves").unwrap()));
        assert!(!on3.contains(&FaultKind::parse("partition-ring").unwrap()));
        assert_eq!(all.kinds_for(5, true).unwrap(), FaultKind::all());
        // Without CAP_NET_ADMIN the default is the process faults only.
        let plain = all.kinds_for(5, false).unwrap();
        assert!(!plain.is_empty() && plain.iter().all(|k| !k.needs_net_admin()));
        assert!(plain.contains(&FaultKind::parse("dead").unwrap()));
        let halves = FaultSettings {
            kinds: FaultKind::parse_list("kill-start,partition-halves").unwrap(),
            ..FaultSettings::default()
        };
        let err = halves.kinds_for(2, true).unwrap_err();
        assert!(
            err.contains("partition-halves needs at least 3 nodes"),
            "{err}"
        );
        assert_eq!(halves.kinds_for(3, true).unwrap().len(), 2);
        let err = halves.kinds_for(3, false).unwrap_err();
        assert!(
            err.contains("partition-halves needs CAP_NET_ADMIN"),
            "{err}"
        );
    }

    #[test]
    fn kinds_read_and_write_as_their_names() {
        let settings: FaultSettings = toml::from_str("kinds = [\"dead\", \"stop-start\"]").unwrap();
        assert_eq!(
            settings.kinds,
            FaultKind::parse_list("dead,stop-start").unwrap()
        );
        assert!(
            toml::to_string(&settings)
                .unwrap()
                .contains("\"stop-start\"")
        );
        let err = toml::from_str::<FaultSettings>("kinds = [\"explode\"]").unwrap_err();
        assert!(
            err.to_string().contains("expected one of kill-start"),
            "{err}"
        );
    }
}
