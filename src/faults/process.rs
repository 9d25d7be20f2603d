//! Process faults, built from the cluster's node operations: a node
//! killed or stopped and started again on the same data (`kill-start`,
//! `offline`), paused with SIGSTOP and resumed (`stop-start`), restarted
//! on its own binary or another (`restart`, `update`, `rolling-update`),
//! or killed for good, wiped and replaced by a spare (`dead`). Each is
//! confirmed by what the kernel says of the process: exited, stopped, a
//! new PID that keeps running.

use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;

use super::{Choose, Chosen, Fault, KindSpec, Phase, Planned, Step, StepResult};
use crate::cluster::supervisor::ProcState;

pub(super) const KINDS: &[KindSpec] = &[
    // SIGKILL, then start on the same data.
    KindSpec {
        name: "kill-start",
        min_nodes: 1,
        net: false,
        choose: |p, cx| down(p, cx, How::Kill),
    },
    // SIGSTOP long enough for peers to notice, then SIGCONT.
    KindSpec {
        name: "stop-start",
        min_nodes: 1,
        net: false,
        choose: |p, cx| down(p, cx, How::Pause),
    },
    // Graceful stop and start.
    KindSpec {
        name: "restart",
        min_nodes: 1,
        net: false,
        choose: |p, cx| restart(p, cx, false),
    },
    // Graceful stop, start on another binary (by default the same version).
    KindSpec {
        name: "update",
        min_nodes: 1,
        net: false,
        choose: |p, cx| restart(p, cx, true),
    },
    // `update` on every node of a role in turn, gated between nodes.
    KindSpec {
        name: "rolling-update",
        min_nodes: 1,
        net: false,
        choose: |p, cx| {
            let (_, nodes) = pick(p, cx)?;
            Ok(Box::new(Restart {
                target: format!("role {}", p.role),
                nodes,
                program: cx.update_bin.map(PathBuf::from),
            }))
        },
    },
    // Stopped for a while, then back.
    KindSpec {
        name: "offline",
        min_nodes: 1,
        net: false,
        choose: |p, cx| down(p, cx, How::Stop),
    },
    // Killed, data wiped, replaced by a spare from the pool.
    KindSpec {
        name: "dead",
        min_nodes: 1,
        net: false,
        choose: |p, cx| {
            let (node, _) = pick(p, cx)?;
            if !cx.cluster.can_replace() {
                return Err("the profile cannot replace a dead node".into());
            }
            let spare = cx
                .cluster
                .spare_of(&p.role)
                .ok_or_else(|| format!("no spare of role {} left", p.role))?
                .name
                .clone();
            Ok(Box::new(Dead {
                node,
                spare,
                replaced: false,
            }))
        },
    },
];

/// A node of the planned role, drawn from the run's target stream, and
/// every node of the role in service.
pub(super) fn pick(p: &Planned, cx: &mut Choose<'_>) -> Result<(String, Vec<String>), String> {
    let nodes: Vec<String> = cx
        .cluster
        .active_nodes(Some(&p.role))
        .iter()
        .map(|n| n.name.clone())
        .collect();
    if nodes.is_empty() {
        return Err(format!("no node of role {} in service", p.role));
    }
    let node = nodes[cx.rng.random_range(0..nodes.len())].clone();
    Ok((node, nodes))
}

fn down(p: &Planned, cx: &mut Choose<'_>, how: How) -> Chosen {
    let (node, _) = pick(p, cx)?;
    let ms = match how {
        How::Pause => cx.settings.stop_hold_ms,
        How::Kill | How::Stop => cx.settings.hold_ms,
    };
    Ok(Box::new(Down {
        node,
        how,
        hold: Duration::from_millis(ms),
    }))
}

fn restart(p: &Planned, cx: &mut Choose<'_>, update: bool) -> Chosen {
    let (node, _) = pick(p, cx)?;
    let program = cx.update_bin.filter(|_| update).map(PathBuf::from);
    Ok(Box::new(Restart {
        target: node.clone(),
        nodes: vec![node],
        program,
    }))
}

/// Is `state` that of a process that exited? The fault's confirmation.
fn confirm_exited(step: &Step<'_>, state: ProcState) -> Result<(), super::FaultError> {
    match state {
        ProcState::Exited(_) => Ok(()),
        other => Err(step.not_confirmed(format!("process state {other:?}"))),
    }
}

/// Graceful stop and start on `program` (the node's own when `None`),
/// confirmed by a new PID that runs.
async fn restart_on(
    step: &mut Step<'_>,
    node: &str,
    program: Option<&PathBuf>,
) -> Result<(), super::FaultError> {
    let old = step.cluster.node(node).and_then(|n| n.pid);
    let program = match program {
        Some(p) => p.clone(),
        None => step
            .cluster
            .node(node)
            .map(|n| n.program.clone())
            .expect("the node exists"),
    };
    let new = step
        .cluster
        .restart_node_with(node, &program)
        .await
        .map_err(|e| step.cluster_error(e))?;
    if Some(new) == old {
        return Err(step.not_confirmed(format!("process state PID {new}, was {old:?}")));
    }
    step.confirm_running(node).await
}

/// How a `Down` node goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// SIGKILL (`kill-start`).
    Kill,
    /// A graceful stop (`offline`).
    Stop,
    /// SIGSTOP, then SIGCONT (`stop-start`).
    Pause,
}

/// `kill-start`, `offline` and `stop-start`: a node down for the hold,
/// then back on the same data.
#[derive(Debug)]
struct Down {
    node: String,
    how: How,
    hold: Duration,
}

impl Fault for Down {
    fn target(&self) -> String {
        self.node.clone()
    }

    fn params(&self) -> serde_json::Value {
        let how = match self.how {
            How::Kill => "SIGKILL",
            How::Stop => "graceful stop",
            How::Pause => "SIGSTOP",
        };
        serde_json::json!({ "how": how, "hold_ms": self.hold.as_millis() as u64 })
    }

    fn apply<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            let c = &mut *step.cluster;
            let state = match self.how {
                How::Kill => c.kill_node(&self.node).await,
                How::Stop => c.stop_node(&self.node).await,
                // Returns once the kernel reports the node stopped.
                How::Pause => c.pause_node(&self.node).await.map(|()| ProcState::Stopped),
            }
            .map_err(|e| step.cluster_error(e))?;
            if self.how != How::Pause {
                confirm_exited(step, state)?;
            }
            step.confirmed();
            Ok(())
        })
    }

    fn hold(&self) -> Duration {
        self.hold
    }

    fn undo<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            if self.how == How::Pause {
                return step
                    .cluster
                    .resume_node(&self.node)
                    .await
                    .map_err(|e| step.cluster_error(e));
            }
            step.cluster
                .start_node(&self.node)
                .await
                .map_err(|e| step.cluster_error(e))?;
            step.confirm_running(&self.node).await
        })
    }
}

/// `restart` and `update` (one node) and `rolling-update` (every node
/// of a role in turn, the recovery gate between one and the next): a
/// graceful stop and start, on the update binary for an update; nothing
/// to hold or undo.
#[derive(Debug)]
struct Restart {
    target: String,
    nodes: Vec<String>,
    program: Option<PathBuf>,
}

impl Fault for Restart {
    fn target(&self) -> String {
        self.target.clone()
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({
            "nodes": self.nodes,
            "program": self.program.as_ref().map(|p| p.display().to_string()),
        })
    }

    fn apply<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            let rolling = self.nodes.len() > 1;
            for (i, n) in self.nodes.iter().enumerate() {
                let part = format!("{}: {n}", self.target);
                if rolling {
                    step.phase(&part, Phase::Injecting);
                }
                restart_on(step, n, self.program.as_ref()).await?;
                step.confirmed();
                if i + 1 < self.nodes.len() {
                    // The next goes down only once the cluster has
                    // recovered from this one.
                    step.phase(&part, Phase::Recovering);
                    step.gate(n).await?;
                }
            }
            Ok(())
        })
    }

    fn hold(&self) -> Duration {
        Duration::ZERO
    }

    fn undo<'a>(&'a mut self, _: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// `dead`: killed, then replaced by a spare and its disk wiped for good.
#[derive(Debug)]
struct Dead {
    node: String,
    spare: String,
    replaced: bool,
}

impl Fault for Dead {
    fn target(&self) -> String {
        match self.replaced {
            true => format!("{}, replaced by {}", self.node, self.spare),
            false => self.node.clone(),
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "spare": self.spare, "replaced": self.replaced })
    }

    fn apply<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            let state = step
                .cluster
                .kill_node(&self.node)
                .await
                .map_err(|e| step.cluster_error(e))?;
            confirm_exited(step, state)?;
            step.confirmed();
            Ok(())
        })
    }

    fn hold(&self) -> Duration {
        Duration::ZERO
    }

    fn undo<'a>(&'a mut self, step: &'a mut Step<'_>) -> StepResult<'a> {
        Box::pin(async move {
            let moved = step
                .cluster
                .replace_node(&self.node, &self.spare)
                .await
                .map_err(|e| step.cluster_error(e))?;
            step.moved_endpoint(moved);
            // The dead node's disk is gone for good.
            step.cluster
                .wipe_node(&self.node)
                .await
                .map_err(|e| step.cluster_error(e))?;
            self.replaced = true;
            Ok(())
        })
    }
}
