//! Faults: one process fault at a time, built from the cluster's node
//! operations (`Cluster::kill_node`, `pause_node`, `restart_node_with`,
//! `replace_node`, ...) and gated by `Cluster::wait_recovered`. It knows
//! nothing of the workload.
//!
//! Each fault is recorded in the ledger before it is applied, confirmed
//! by what the kernel says of the process (exited, stopped, a new PID),
//! held, undone, and followed by the recovery gate; only then may the next
//! one start. Every wait is bounded, a stop request cuts a hold short, and
//! a fault that cannot be undone or a cluster that does not recover ends
//! the schedule with an error that names the fault.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::supervisor::ProcState;
use crate::cluster::{Cluster, ClusterError, GateFailure};
use crate::history::FaultRecord;
use crate::history::seed::substream;
use crate::ledger::{Ledger, Record};

/// The process faults of the design card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL, then start on the same data.
    KillStart,
    /// SIGSTOP long enough for peers to notice, then SIGCONT.
    StopStart,
    /// Graceful stop and start.
    Restart,
    /// Graceful stop, start on another binary (by default the same version).
    Update,
    /// `update` on every node of a role in turn, gated between nodes.
    RollingUpdate,
    /// Stopped for a while, then back.
    Offline,
    /// Killed, data wiped, replaced by a spare from the pool.
    Dead,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillStart,
        FaultKind::StopStart,
        FaultKind::Restart,
        FaultKind::Update,
        FaultKind::RollingUpdate,
        FaultKind::Offline,
        FaultKind::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::KillStart => "kill-start",
            FaultKind::StopStart => "stop-start",
            FaultKind::Restart => "restart",
            FaultKind::Update => "update",
            FaultKind::RollingUpdate => "rolling-update",
            FaultKind::Offline => "offline",
            FaultKind::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Parses a comma-separated list, e.g. `kill-start,dead`.
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = FaultKind::parse(part).ok_or_else(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown fault kind {part:?}; expected one of {}",
                    known.join(", ")
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }
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
            kinds: FaultKind::ALL.to_vec(),
            interval_ms: 20_000,
            hold_ms: 10_000,
            // Garage marks a silent peer down after more than 4 missed
            // pings, 15 s apart (shared/design/garage.md).
            stop_hold_ms: 75_000,
            update_version: None,
            role_weights: BTreeMap::new(),
        }
    }
}

impl FaultSettings {
    pub fn weight(&self, role: &str) -> u32 {
        self.role_weights.get(role).copied().unwrap_or(1)
    }
}

/// One fault the plan asks for: a kind aimed at a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub kind: FaultKind,
    pub role: String,
}

/// The gate's finite plan: every kind on every role once, in an order
/// drawn from the seed.
pub fn gate_plan(seed: u64, kinds: &[FaultKind], roles: &[String]) -> Vec<Planned> {
    let mut plan: Vec<Planned> = kinds
        .iter()
        .flat_map(|&kind| {
            roles.iter().map(move |role| Planned {
                kind,
                role: role.clone(),
            })
        })
        .collect();
    plan.shuffle(&mut substream(seed, "fault-plan", 0));
    plan
}

/// The soak's endless plan: rounds of every kind in a seeded order, each
/// aimed at a role drawn by weight.
pub struct SoakPlan {
    rng: ChaCha8Rng,
    kinds: Vec<FaultKind>,
    roles: Vec<(String, u32)>,
    round: VecDeque<FaultKind>,
}

impl SoakPlan {
    pub fn new(seed: u64, settings: &FaultSettings, roles: &[String]) -> SoakPlan {
        SoakPlan {
            rng: substream(seed, "fault-plan", 1),
            kinds: settings.kinds.clone(),
            roles: roles
                .iter()
                .map(|r| (r.clone(), settings.weight(r)))
                .filter(|(_, w)| *w > 0)
                .collect(),
            round: VecDeque::new(),
        }
    }
}

impl Iterator for SoakPlan {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.round.is_empty() {
            let mut kinds = self.kinds.clone();
            kinds.shuffle(&mut self.rng);
            self.round.extend(kinds);
        }
        let kind = self.round.pop_front()?;
        let total: u32 = self.roles.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut pick = self.rng.random_range(0..total);
        let role = self
            .roles
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(r, _)| r.clone())
            .expect("the pick is below the total weight");
        Some(Planned { kind, role })
    }
}

/// Where the current fault is, for the progress view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Clean workload between faults.
    Waiting,
    Injecting,
    Holding,
    Undoing,
    /// Waiting for the recovery gate.
    Recovering,
}

/// What the run's driver and progress view can see of the faults.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultStatus {
    /// The fault in progress: kind, target and phase.
    pub current: Option<(FaultKind, String, Phase)>,
    /// Faults that went through recovery, and their recovery times.
    pub done: Vec<(FaultKind, String, u64)>,
    /// Planned faults that could not be injected, and why.
    pub skipped: Vec<(FaultKind, String, String)>,
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

/// A fault that went through recovery.
#[derive(Debug, Clone)]
pub struct Injected {
    pub record: FaultRecord,
    /// A workload endpoint that moved (a dead node replaced): (old, new).
    pub endpoint_change: Option<(String, String)>,
}

/// Applies faults to a cluster, one at a time.
pub struct Injector {
    settings: FaultSettings,
    /// The binary `update` moves to; `None`: each node's own.
    update_bin: Option<PathBuf>,
    ledger: Ledger,
    clock: Instant,
    recovery: Duration,
    next_id: u64,
    rng: ChaCha8Rng,
    status: Arc<Mutex<FaultStatus>>,
}

impl Injector {
    pub fn new(
        seed: u64,
        settings: FaultSettings,
        update_bin: Option<PathBuf>,
        ledger: Ledger,
        clock: Instant,
        recovery: Duration,
    ) -> Injector {
        Injector {
            settings,
            update_bin,
            ledger,
            clock,
            recovery,
            next_id: 1,
            rng: substream(seed, "fault-targets", 0),
            status: Arc::new(Mutex::new(FaultStatus::default())),
        }
    }

    pub fn status(&self) -> Arc<Mutex<FaultStatus>> {
        self.status.clone()
    }

    pub fn settings(&self) -> &FaultSettings {
        &self.settings
    }

    fn ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn set_phase(&self, kind: FaultKind, target: &str, phase: Phase) {
        if let Ok(mut s) = self.status.lock() {
            s.current = Some((kind, target.to_string(), phase));
        }
    }

    fn skip(&self, planned: &Planned, why: String) {
        tracing::warn!(kind = planned.kind.as_str(), role = %planned.role, %why, "fault skipped");
        if let Ok(mut s) = self.status.lock() {
            s.skipped.push((planned.kind, planned.role.clone(), why));
        }
    }

    /// Runs `plan` against the cluster until it ends or `stop` turns true:
    /// a clean interval, a fault, its recovery, and so on, and a last clean
    /// interval so the workload reads after the last fault too.
    /// `on_endpoint` hears of every workload endpoint that moved.
    pub async fn run(
        &mut self,
        cluster: &mut Cluster,
        plan: impl IntoIterator<Item = Planned>,
        mut stop: watch::Receiver<bool>,
        mut on_endpoint: impl FnMut(&str, &str),
    ) -> Result<(), FaultError> {
        let interval = Duration::from_millis(self.settings.interval_ms);
        for planned in plan {
            if !self.wait_clean(interval, &mut stop).await {
                return Ok(());
            }
            if let Some(done) = self.inject(cluster, &planned, &mut stop).await?
                && let Some((old, new)) = &done.endpoint_change
            {
                on_endpoint(old, new);
            }
        }
        self.wait_clean(interval, &mut stop).await;
        Ok(())
    }

    /// Waits `interval` of clean workload; false if stopped meanwhile.
    async fn wait_clean(&self, interval: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        if let Ok(mut s) = self.status.lock() {
            s.current = None;
        }
        if *stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => !*stop.borrow(),
            _ = stop.changed() => false,
        }
    }

    /// Holds a fault for `hold`, cut short by a stop request.
    async fn hold(&self, hold: Duration, stop: &mut watch::Receiver<bool>) {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = stop.changed() => {}
        }
    }

    /// Applies one fault, undoes it and waits for recovery. `None` if the
    /// plan's fault cannot be injected here (no node of the role, no spare
    /// left); the reason goes into the status.
    pub async fn inject(
        &mut self,
        cluster: &mut Cluster,
        planned: &Planned,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Injected>, FaultError> {
        let kind = planned.kind;
        let candidates: Vec<String> = cluster
            .active_nodes(Some(&planned.role))
            .iter()
            .map(|n| n.name.clone())
            .collect();
        if candidates.is_empty() {
            self.skip(
                planned,
                format!("no node of role {} in service", planned.role),
            );
            return Ok(None);
        }
        let node = candidates[self.rng.random_range(0..candidates.len())].clone();
        let spare = match kind {
            FaultKind::Dead if !cluster.can_replace() => {
                self.skip(planned, "the profile cannot replace a dead node".into());
                return Ok(None);
            }
            FaultKind::Dead => match cluster.spare_of(&planned.role) {
                Some(s) => Some(s.name.clone()),
                None => {
                    self.skip(planned, format!("no spare of role {} left", planned.role));
                    return Ok(None);
                }
            },
            _ => None,
        };
        let target = match kind {
            FaultKind::RollingUpdate => format!("role {}", planned.role),
            _ => node.clone(),
        };
        let label = format!("#{} {} on {target}", self.next_id, kind.as_str());
        let mut record = FaultRecord {
            id: self.next_id,
            kind: kind.as_str().to_string(),
            target: target.clone(),
            t_start_ns: self.ns(),
            t_confirm_ns: None,
            t_end_ns: None,
            t_recovered_ns: None,
            recovery_ms: None,
            gate: None,
        };
        self.next_id += 1;
        // Journaled before it is applied, so a fault is never unrecorded.
        self.send(&record);
        cluster
            .snapshot_metrics(&format!("fault-{:03}-before", record.id))
            .await;
        tracing::info!(fault = %label, "injecting");
        self.set_phase(kind, &target, Phase::Injecting);
        let cluster_err = |source: ClusterError| FaultError::Cluster {
            fault: label.clone(),
            source: Box::new(source),
        };
        let mut gates = Vec::new();
        let mut endpoint_change = None;
        match kind {
            FaultKind::KillStart | FaultKind::Offline => {
                let state = if kind == FaultKind::KillStart {
                    cluster.kill_node(&node).await
                } else {
                    cluster.stop_node(&node).await
                }
                .map_err(cluster_err)?;
                self.confirm(&label, matches!(state, ProcState::Exited(_)), &state)?;
                record.t_confirm_ns = Some(self.ns());
                self.send(&record);
                self.set_phase(kind, &target, Phase::Holding);
                self.hold(Duration::from_millis(self.settings.hold_ms), stop)
                    .await;
                self.set_phase(kind, &target, Phase::Undoing);
                cluster.start_node(&node).await.map_err(cluster_err)?;
                self.confirm_running(cluster, &label, &node).await?;
            }
            FaultKind::StopStart => {
                cluster.pause_node(&node).await.map_err(cluster_err)?;
                record.t_confirm_ns = Some(self.ns());
                self.send(&record);
                self.set_phase(kind, &target, Phase::Holding);
                self.hold(Duration::from_millis(self.settings.stop_hold_ms), stop)
                    .await;
                self.set_phase(kind, &target, Phase::Undoing);
                cluster.resume_node(&node).await.map_err(cluster_err)?;
            }
            FaultKind::Restart | FaultKind::Update => {
                self.restart(cluster, &label, &node, kind == FaultKind::Update)
                    .await?;
                record.t_confirm_ns = Some(self.ns());
            }
            FaultKind::RollingUpdate => {
                let nodes = candidates.clone();
                for (i, n) in nodes.iter().enumerate() {
                    self.set_phase(kind, &format!("{target}: {n}"), Phase::Injecting);
                    self.restart(cluster, &label, n, true).await?;
                    if record.t_confirm_ns.is_none() {
                        record.t_confirm_ns = Some(self.ns());
                        self.send(&record);
                    }
                    if i + 1 < nodes.len() {
                        // Gated between nodes: the next goes down only once
                        // the cluster has recovered from this one.
                        self.set_phase(kind, &format!("{target}: {n}"), Phase::Recovering);
                        let r = cluster
                            .wait_recovered(self.recovery)
                            .await
                            .map_err(|failure| FaultError::NotRecovered {
                                fault: format!("{label} (after {n})"),
                                failure,
                            })?;
                        gates.push(serde_json::json!({
                            "after": n, "took_ms": r.took.as_millis() as u64, "checks": r.checks,
                        }));
                    }
                }
            }
            FaultKind::Dead => {
                let spare = spare.expect("a dead fault has its spare");
                let state = cluster.kill_node(&node).await.map_err(cluster_err)?;
                self.confirm(&label, matches!(state, ProcState::Exited(_)), &state)?;
                record.t_confirm_ns = Some(self.ns());
                self.send(&record);
                self.set_phase(kind, &target, Phase::Undoing);
                endpoint_change = cluster
                    .replace_node(&node, &spare)
                    .await
                    .map_err(cluster_err)?;
                // The dead node's disk is gone for good.
                cluster.wipe_node(&node).await.map_err(cluster_err)?;
                record.target = format!("{node}, replaced by {spare}");
            }
        }
        record.t_end_ns = Some(self.ns());
        self.send(&record);
        self.set_phase(kind, &target, Phase::Recovering);
        let gate = cluster.wait_recovered(self.recovery).await;
        match gate {
            Ok(r) => {
                record.t_recovered_ns = Some(self.ns());
                cluster
                    .snapshot_metrics(&format!("fault-{:03}-recovered", record.id))
                    .await;
                record.recovery_ms = Some(r.took.as_millis() as u64);
                record.gate = Some(
                    serde_json::json!({
                        "took_ms": r.took.as_millis() as u64,
                        "checks": r.checks,
                        "between_nodes": gates,
                    })
                    .to_string(),
                );
                self.send(&record);
                tracing::info!(fault = %label, recovery_ms = r.took.as_millis() as u64, "recovered");
                if let Ok(mut s) = self.status.lock() {
                    s.done
                        .push((kind, record.target.clone(), r.took.as_millis() as u64));
                    s.current = None;
                }
                Ok(Some(Injected {
                    record,
                    endpoint_change,
                }))
            }
            Err(failure) => {
                record.gate = Some(
                    serde_json::json!({ "failed": failure, "between_nodes": gates }).to_string(),
                );
                self.send(&record);
                Err(FaultError::NotRecovered {
                    fault: label,
                    failure,
                })
            }
        }
    }

    /// Graceful stop and start (on the update binary for an update),
    /// confirmed by a new PID that runs.
    async fn restart(
        &self,
        cluster: &mut Cluster,
        label: &str,
        node: &str,
        update: bool,
    ) -> Result<(), FaultError> {
        let cluster_err = |source: ClusterError| FaultError::Cluster {
            fault: label.to_string(),
            source: Box::new(source),
        };
        let old = cluster.node(node).and_then(|n| n.pid);
        let program = match (&self.update_bin, update) {
            (Some(bin), true) => bin.clone(),
            _ => cluster
                .node(node)
                .map(|n| n.program.clone())
                .expect("the node exists"),
        };
        let new = cluster
            .restart_node_with(node, &program)
            .await
            .map_err(cluster_err)?;
        self.confirm(label, Some(new) != old, &format!("PID {new}, was {old:?}"))?;
        self.confirm_running(cluster, label, node).await
    }

    fn confirm(
        &self,
        label: &str,
        ok: bool,
        state: &dyn std::fmt::Debug,
    ) -> Result<(), FaultError> {
        if ok {
            Ok(())
        } else {
            Err(FaultError::NotConfirmed {
                fault: label.to_string(),
                detail: format!("process state {state:?}"),
            })
        }
    }

    /// A node just started must still run a moment later, not have exited
    /// at once (a bad binary, a port taken).
    async fn confirm_running(
        &self,
        cluster: &Cluster,
        label: &str,
        node: &str,
    ) -> Result<(), FaultError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let state = cluster
            .node_state(node)
            .await
            .map_err(|source| FaultError::Cluster {
                fault: label.to_string(),
                source: Box::new(source),
            })?;
        let log = cluster
            .node(node)
            .map(|n| n.log.display().to_string())
            .unwrap_or_default();
        match state {
            Some(ProcState::Running) => Ok(()),
            other => Err(FaultError::NotConfirmed {
                fault: label.to_string(),
                detail: format!("{node} did not come back: {other:?}; log {log}"),
            }),
        }
    }

    fn send(&self, record: &FaultRecord) {
        let _ = self.ledger.send(Record::Fault(Box::new(record.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_gate_plan_fires_every_kind_on_every_role_once_in_a_seeded_order() {
        let r = roles(&["meta", "data", "front"]);
        let plan = gate_plan(7, &FaultKind::ALL, &r);
        assert_eq!(plan.len(), 21);
        for kind in FaultKind::ALL {
            for role in &r {
                assert_eq!(
                    plan.iter()
                        .filter(|p| p.kind == kind && p.role == *role)
                        .count(),
                    1
                );
            }
        }
        assert_eq!(plan, gate_plan(7, &FaultKind::ALL, &r));
        assert_ne!(plan, gate_plan(8, &FaultKind::ALL, &r));
    }

    #[test]
    fn the_soak_plan_cycles_through_every_kind_and_follows_role_weights() {
        let settings = FaultSettings {
            role_weights: [("meta".to_string(), 3), ("front".to_string(), 0)]
                .into_iter()
                .collect(),
            ..FaultSettings::default()
        };
        let r = roles(&["meta", "data", "front"]);
        let plan: Vec<Planned> = SoakPlan::new(1, &settings, &r).take(7 * 200).collect();
        for round in plan.chunks(7) {
            let mut kinds: Vec<FaultKind> = round.iter().map(|p| p.kind).collect();
            kinds.sort();
            assert_eq!(kinds, FaultKind::ALL.to_vec());
        }
        let count = |role: &str| plan.iter().filter(|p| p.role == role).count();
        assert_eq!(count("front"), 0);
        // meta weighs 3, data 1: about three quarters go to meta.
        assert!(
            count("meta") > 3 * count("data") * 8 / 10,
            "{} {}",
            count("meta"),
            count("data")
        );
        let again: Vec<Planned> = SoakPlan::new(1, &settings, &r).take(7 * 200).collect();
        assert_eq!(plan, again);
    }

    #[test]
    fn kinds_parse_from_the_command_line() {
        assert_eq!(
            FaultKind::parse_list("kill-start, dead,kill-start").unwrap(),
            vec![FaultKind::KillStart, FaultKind::Dead]
        );
        let err = FaultKind::parse_list("kill-start,explode").unwrap_err();
        assert!(
            err.contains("explode") && err.contains("stop-start"),
            "{err}"
        );
    }
}
