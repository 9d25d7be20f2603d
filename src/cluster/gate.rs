//! The recovery gate (`Cluster::wait_recovered`): every active node runs,
//! the flavor's checks pass and S3 answers through every node; on timeout
//! it names each condition still false. And the nodes' metrics snapshots.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::garage;
use super::supervisor::{ProcState, describe_exit};
use super::{Cluster, Flavor, Node};

/// How long the recovery gate waits on errored blocks before it has the
/// nodes retry them now, and between two such requests: Garage itself
/// retries a failed block after a minute, so this only steps in when the
/// resync backlog keeps it waiting longer.
pub(super) const ERRORED_BLOCKS_RETRY_AFTER: Duration = Duration::from_secs(90);

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

impl Cluster {
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
    pub(super) async fn retry_errored_blocks(&self, unmet: &[Unmet]) {
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

    pub(super) fn node_by_endpoint(&self, endpoint: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.s3_endpoint.as_deref() == Some(endpoint))
            .map(|n| n.name.clone())
    }
}
