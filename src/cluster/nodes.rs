//! Node operations, the parts faults are made of: start, kill, graceful
//! stop, pause and resume (each confirmed by the kernel's view of the
//! process), restart on another binary, wipe, replace by a spare, and the
//! whole cluster's shutdown.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::provision;
use super::supervisor::{ProcState, SpawnSpec, SupervisorError};
use super::{Cluster, ClusterError, Flavor, RUN_DIR_ENV, io_err};
use crate::sys::utc_now;

impl Cluster {
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

    pub(super) fn live_pid(&self, name: &str) -> Result<u32, ClusterError> {
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

    pub(super) async fn signal_and_confirm(
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
