//! The `Injector`: runs a plan against the cluster, one fault at a time,
//! through the same life cycle whatever the family: journaled in the
//! ledger before it is applied, applied and confirmed, held (a stop
//! request cuts the hold short), undone, then the recovery gate. `Step` is
//! what a fault sees of it while it runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::{Choose, FaultError, FaultKind, FaultSettings, Planned};
use crate::cluster::supervisor::ProcState;
use crate::cluster::{Cluster, ClusterError};
use crate::history::FaultRecord;
use crate::history::seed::substream;
use crate::ledger::{Ledger, Record};

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
    rng: rand_chacha::ChaCha8Rng,
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
        let in_service = cluster.active_nodes(None).len();
        if in_service < kind.min_nodes() {
            self.skip(
                planned,
                format!(
                    "needs at least {} nodes in service, the cluster has {in_service}",
                    kind.min_nodes()
                ),
            );
            return Ok(None);
        }
        let chosen = (kind.spec().choose)(
            planned,
            &mut Choose {
                cluster,
                settings: &self.settings,
                update_bin: self.update_bin.as_deref(),
                rng: &mut self.rng,
            },
        );
        let mut fault = match chosen {
            Ok(f) => f,
            Err(why) => {
                self.skip(planned, why);
                return Ok(None);
            }
        };
        let target = fault.target();
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
            params: params_text(fault.params()),
        };
        self.next_id += 1;
        // Journaled before it is applied, so a fault is never unrecorded.
        self.send(&record);
        cluster
            .snapshot_metrics(&format!("fault-{:03}-before", record.id))
            .await;
        tracing::info!(fault = %label, "injecting");
        self.set_phase(kind, &target, Phase::Injecting);
        let mut step = Step {
            cluster: &mut *cluster,
            injector: self,
            kind,
            label: &label,
            record: &mut record,
            gates: Vec::new(),
            endpoint_change: None,
        };
        let applied = fault.apply(&mut step).await;
        step.record.params = params_text(fault.params());
        if let Err(e) = applied {
            step.injector.send(step.record);
            return Err(e);
        }
        if step.record.t_confirm_ns.is_none() {
            return Err(step.not_confirmed("no observation confirmed it".into()));
        }
        let hold = fault.hold();
        if !hold.is_zero() {
            self.set_phase(kind, &target, Phase::Holding);
            self.hold(hold, stop).await;
        }
        self.set_phase(kind, &target, Phase::Undoing);
        fault.undo(&mut step).await?;
        let Step {
            gates,
            endpoint_change,
            ..
        } = step;
        record.target = fault.target();
        record.params = params_text(fault.params());
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

    fn send(&self, record: &FaultRecord) {
        let _ = self.ledger.send(Record::Fault(Box::new(record.clone())));
    }
}

fn params_text(v: serde_json::Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}

/// What a fault sees of the injector while it is applied and undone.
pub struct Step<'a> {
    pub cluster: &'a mut Cluster,
    injector: &'a Injector,
    kind: FaultKind,
    label: &'a str,
    record: &'a mut FaultRecord,
    /// Recovery gates run within the fault (between a rolling update's
    /// nodes), for the record.
    gates: Vec<serde_json::Value>,
    endpoint_change: Option<(String, String)>,
}

impl Step<'_> {
    /// The fault took effect, as an observation showed: journaled with
    /// its time the first time it is said.
    pub fn confirmed(&mut self) {
        if self.record.t_confirm_ns.is_none() {
            self.record.t_confirm_ns = Some(self.injector.ns());
            self.injector.send(self.record);
        }
    }

    /// Puts the fault's network rules into the run's table, journaled
    /// under the fault's name (`#3 partition-node on n2 isolated`).
    pub async fn cut_links(&mut self, rules: &crate::net::Rules) -> Result<(), FaultError> {
        let label = self.label;
        match self.cluster.cut_links(label, rules).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.cluster_error(e)),
        }
    }

    /// Heals the fault's network rules (`Cluster::heal_links`).
    pub async fn heal_links(&mut self) -> Result<(), FaultError> {
        let label = self.label;
        self.cluster
            .heal_links(label)
            .await
            .map_err(|e| self.cluster_error(e))
    }

    /// Shows `phase` on `target` (a part of the fault's target) in the
    /// progress view.
    pub fn phase(&self, target: &str, phase: Phase) {
        self.injector.set_phase(self.kind, target, phase);
    }

    /// Waits for the recovery gate within the fault, `after` a part of it.
    pub async fn gate(&mut self, after: &str) -> Result<(), FaultError> {
        let r = self
            .cluster
            .wait_recovered(self.injector.recovery)
            .await
            .map_err(|failure| FaultError::NotRecovered {
                fault: format!("{} (after {after})", self.label),
                failure,
            })?;
        self.gates.push(serde_json::json!({
            "after": after, "took_ms": r.took.as_millis() as u64, "checks": r.checks,
        }));
        Ok(())
    }

    /// A workload endpoint moved (old, new).
    pub fn moved_endpoint(&mut self, change: Option<(String, String)>) {
        self.endpoint_change = change;
    }

    /// A node operation that failed, named after the fault.
    pub fn cluster_error(&self, source: ClusterError) -> FaultError {
        FaultError::Cluster {
            fault: self.label.to_string(),
            source: Box::new(source),
        }
    }

    pub fn not_confirmed(&self, detail: String) -> FaultError {
        FaultError::NotConfirmed {
            fault: self.label.to_string(),
            detail,
        }
    }

    /// A node just started must still run a moment later, not have exited
    /// at once (a bad binary, a port taken).
    pub async fn confirm_running(&self, node: &str) -> Result<(), FaultError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let state = self
            .cluster
            .node_state(node)
            .await
            .map_err(|e| self.cluster_error(e))?;
        let log = self
            .cluster
            .node(node)
            .map(|n| n.log.display().to_string())
            .unwrap_or_default();
        match state {
            Some(ProcState::Running) => Ok(()),
            other => {
                Err(self.not_confirmed(format!("{node} did not come back: {other:?}; log {log}")))
            }
        }
    }
}
