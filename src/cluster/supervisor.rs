//! The one owner of every child process the runner starts.
//!
//! All children are spawned from a single long-lived thread, because
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not the process: a child spawned from a short-lived tokio blocking thread
//! would be killed when that thread retires, and one spawned from a thread
//! that outlives the runner would never be. The same thread reaps the
//! children, so a PID it signals is always one of its own that has not been
//! reaped yet (a zombie still pins its PID and process group), and no signal
//! ever reaches a process the runner did not start.
//!
//! Each child leads its own process group; signals go to the group. A child
//! is stopped as cargo-nextest stops a test: SIGCONT (a stopped process
//! cannot act on SIGTERM), SIGTERM, a grace period, then SIGKILL to the
//! group. If the runner dies, even by SIGKILL, the kernel sends SIGKILL to
//! every child whose spawning thread died, which is all of them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How often the supervisor thread looks for exited children and expired
/// grace periods when no request arrives.
const POLL_INTERVAL_MS: u64 = 20;

/// Requests waiting for the supervisor thread; senders block when it is full.
const REQUEST_QUEUE_MAX: usize = 64;

/// What to start: an argument vector, its environment additions, and the
/// file its stdout and stderr are appended to.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// stdout and stderr go here (appended), or nowhere when `None`.
    pub log: Option<PathBuf>,
    /// A short name for messages ("node n2", "garage layout apply").
    pub label: String,
}

/// The state of one child as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Alive and scheduled (or sleeping).
    Running,
    /// Alive but stopped by SIGSTOP (or a tty signal).
    Stopped,
    /// Exited and reaped.
    Exited(ExitStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start {label} ({program}): {source}")]
    Spawn {
        label: String,
        program: String,
        source: io::Error,
    },
    #[error("cannot open log file {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("process {pid} is not a live child of this runner")]
    NotAlive { pid: u32 },
    #[error("signal {signal} to process group {pid} failed: {source}")]
    Signal {
        pid: u32,
        signal: Signal,
        source: nix::Error,
    },
    #[error("the supervisor thread is gone")]
    Gone,
}

type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;

enum Request {
    Spawn(Box<SpawnSpec>, Reply<u32>),
    Signal(u32, Signal, Reply<()>),
    State(u32, Reply<ProcState>),
    /// SIGCONT, SIGTERM, then SIGKILL to the group after the grace period.
    Terminate(u32, Duration, Reply<ExitStatus>),
    /// Resolves when the child exits, or with its state at the deadline.
    WaitExit(u32, Instant, Reply<ProcState>),
    /// SIGKILL every live group and reap it; used on teardown escalation.
    KillAll(Reply<()>),
}

/// A handle to the supervisor thread. Dropping it kills every child.
pub struct Supervisor {
    tx: Option<mpsc::SyncSender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    pub fn start() -> io::Result<Supervisor> {
        let (tx, rx) = mpsc::sync_channel(REQUEST_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("faultline-supervisor".into())
            .spawn(move || Worker::default().run(rx))?;
        Ok(Supervisor {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, SupervisorError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(SupervisorError::Gone)?.clone();
        // The queue is bounded; a full queue means the thread is busy for a
        // few milliseconds, so waiting on a blocking thread is fine.
        let req = make(reply);
        tokio::task::spawn_blocking(move || tx.send(req))
            .await
            .map_err(|_| SupervisorError::Gone)?
            .map_err(|_| SupervisorError::Gone)?;
        rx.await.map_err(|_| SupervisorError::Gone)?
    }

    /// Starts a child in its own process group; returns its PID.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<u32, SupervisorError> {
        self.ask(|r| Request::Spawn(Box::new(spec), r)).await
    }

    /// Sends `signal` to the child's process group.
    pub async fn signal(&self, pid: u32, signal: Signal) -> Result<(), SupervisorError> {
        self.ask(|r| Request::Signal(pid, signal, r)).await
    }

    pub async fn state(&self, pid: u32) -> Result<ProcState, SupervisorError> {
        self.ask(|r| Request::State(pid, r)).await
    }

    /// Stops a child gracefully: SIGCONT, SIGTERM, `grace`, SIGKILL.
    pub async fn terminate(
        &self,
        pid: u32,
        grace: Duration,
    ) -> Result<ExitStatus, SupervisorError> {
        self.ask(|r| Request::Terminate(pid, grace, r)).await
    }

    /// Waits until the child exits or `timeout` passes; returns its state.
    pub async fn wait_exit(
        &self,
        pid: u32,
        timeout: Duration,
    ) -> Result<ProcState, SupervisorError> {
        let deadline = Instant::now() + timeout;
        self.ask(|r| Request::WaitExit(pid, deadline, r)).await
    }

    /// SIGKILLs every live child's group and reaps them.
    pub async fn kill_all(&self) -> Result<(), SupervisorError> {
        self.ask(Request::KillAll).await
    }

    /// Runs a short command to completion under supervision, killing its
    /// group at `timeout`. Output goes to `spec.log`.
    pub async fn run(
        &self,
        spec: SpawnSpec,
        timeout: Duration,
    ) -> Result<ProcState, SupervisorError> {
        let pid = self.spawn(spec).await?;
        match self.wait_exit(pid, timeout).await? {
            exited @ ProcState::Exited(_) => Ok(exited),
            _ => {
                self.terminate(pid, Duration::ZERO).await?;
                self.state(pid).await
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Closing the channel tells the thread to kill everything and exit.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Entry {
    child: Child,
    label: String,
    exited: Option<ExitStatus>,
}

struct Pending {
    pid: u32,
    /// For a terminate: when to escalate to SIGKILL (once).
    kill_at: Option<Instant>,
    /// For a wait: when to give up and answer with the current state.
    give_up_at: Option<Instant>,
    reply: PendingReply,
}

enum PendingReply {
    Exit(Reply<ExitStatus>),
    State(Reply<ProcState>),
}

#[derive(Default)]
struct Worker {
    children: HashMap<u32, Entry>,
    pending: Vec<Pending>,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(POLL_INTERVAL_MS)) {
                Ok(req) => self.handle(req),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.reap();
            self.progress();
        }
        self.kill_all();
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Spawn(spec, reply) => {
                let _ = reply.send(self.spawn(*spec));
            }
            Request::Signal(pid, sig, reply) => {
                let _ = reply.send(self.signal(pid, sig));
            }
            Request::State(pid, reply) => {
                let _ = reply.send(self.state(pid));
            }
            Request::Terminate(pid, grace, reply) => {
                if let Some(status) = self.exit_status(pid) {
                    let _ = reply.send(Ok(status));
                    return;
                }
                if let Err(e) = self.live(pid) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let _ = self.signal(pid, Signal::SIGCONT);
                if grace.is_zero() {
                    let _ = self.signal(pid, Signal::SIGKILL);
                } else {
                    let _ = self.signal(pid, Signal::SIGTERM);
                }
                self.pending.push(Pending {
                    pid,
                    kill_at: Some(Instant::now() + grace),
                    give_up_at: None,
                    reply: PendingReply::Exit(reply),
                });
            }
            Request::WaitExit(pid, deadline, reply) => {
                if !self.children.contains_key(&pid) {
                    let _ = reply.send(Err(SupervisorError::NotAlive { pid }));
                    return;
                }
                self.pending.push(Pending {
                    pid,
                    kill_at: None,
                    give_up_at: Some(deadline),
                    reply: PendingReply::State(reply),
                });
            }
            Request::KillAll(reply) => {
                self.kill_all();
                let _ = reply.send(Ok(()));
            }
        }
    }

    fn spawn(&mut self, spec: SpawnSpec) -> Result<u32, SupervisorError> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args).stdin(Stdio::null());
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        match &spec.log {
            Some(path) => {
                let file = open_log(path)?;
                let err = file.try_clone().map_err(|source| SupervisorError::Log {
                    path: path.clone(),
                    source,
                })?;
                cmd.stdout(file).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd.process_group(0);
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (prctl, getppid).
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                // The runner may have died between fork and prctl; then the
                // death signal will never come, so give up now.
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::other("runner exited during spawn"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
            label: spec.label.clone(),
            program: spec.program.display().to_string(),
            source,
        })?;
        let pid = child.id();
        tracing::debug!(pid, label = %spec.label, program = %spec.program.display(), "spawned");
        self.children.insert(
            pid,
            Entry {
                child,
                label: spec.label,
                exited: None,
            },
        );
        Ok(pid)
    }

    fn live(&self, pid: u32) -> Result<(), SupervisorError> {
        match self.children.get(&pid) {
            Some(e) if e.exited.is_none() => Ok(()),
            _ => Err(SupervisorError::NotAlive { pid }),
        }
    }

    fn exit_status(&self, pid: u32) -> Option<ExitStatus> {
        self.children.get(&pid).and_then(|e| e.exited)
    }

    fn signal(&mut self, pid: u32, signal: Signal) -> Result<(), SupervisorError> {
        self.live(pid)?;
        // The child is not reaped, so its PID (and the group it leads) is
        // still ours even if it has exited as a zombie.
        match killpg(to_pid(pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(SupervisorError::Signal {
                pid,
                signal,
                source,
            }),
        }
    }

    fn state(&self, pid: u32) -> Result<ProcState, SupervisorError> {
        let entry = self
            .children
            .get(&pid)
            .ok_or(SupervisorError::NotAlive { pid })?;
        if let Some(status) = entry.exited {
            return Ok(ProcState::Exited(status));
        }
        Ok(match proc_state_letter(pid) {
            Some('T') | Some('t') => ProcState::Stopped,
            _ => ProcState::Running,
        })
    }

    /// Reaps children that have exited. Before reaping, SIGKILLs the rest of
    /// the group (a leader's exit can leave members behind), while the
    /// unreaped leader still pins the group ID.
    fn reap(&mut self) {
        for (&pid, entry) in self.children.iter_mut() {
            if entry.exited.is_some() {
                continue;
            }
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(to_pid(pid)), flags) {
                Ok(WaitStatus::StillAlive) => continue,
                Ok(_) => {
                    let _ = killpg(to_pid(pid), Signal::SIGKILL);
                }
                Err(_) => {}
            }
            match entry.child.try_wait() {
                Ok(Some(status)) => {
                    tracing::debug!(pid, label = %entry.label, %status, "reaped");
                    entry.exited = Some(status);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(pid, label = %entry.label, error = %e, "cannot reap");
                }
            }
        }
    }

    /// Answers pending waits whose child exited and escalates expired grace
    /// periods to SIGKILL.
    fn progress(&mut self) {
        let now = Instant::now();
        let mut still = Vec::with_capacity(self.pending.len());
        for mut p in std::mem::take(&mut self.pending) {
            if let Some(status) = self.exit_status(p.pid) {
                match p.reply {
                    PendingReply::Exit(r) => drop(r.send(Ok(status))),
                    PendingReply::State(r) => drop(r.send(Ok(ProcState::Exited(status)))),
                }
                continue;
            }
            if p.kill_at.is_some_and(|t| now >= t) {
                let _ = self.signal(p.pid, Signal::SIGKILL);
                p.kill_at = None;
            }
            if p.give_up_at.is_some_and(|t| now >= t) {
                if let PendingReply::State(r) = p.reply {
                    let _ = r.send(self.state(p.pid));
                }
                continue;
            }
            still.push(p);
        }
        self.pending = still;
    }

    fn kill_all(&mut self) {
        let live: Vec<u32> = self
            .children
            .iter()
            .filter(|(_, e)| e.exited.is_none())
            .map(|(&pid, _)| pid)
            .collect();
        for &pid in &live {
            let _ = self.signal(pid, Signal::SIGCONT);
            let _ = self.signal(pid, Signal::SIGKILL);
        }
        // SIGKILL cannot be ignored; reaping takes microseconds per child,
        // but bound the wait anyway.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.children.values().any(|e| e.exited.is_none()) {
            self.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
        self.progress();
    }
}

fn to_pid(pid: u32) -> Pid {
    // PIDs fit in i32 on Linux (pid_max is at most 2^22).
    Pid::from_raw(pid as i32)
}

fn open_log(path: &PathBuf) -> Result<File, SupervisorError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SupervisorError::Log {
            path: path.clone(),
            source,
        })
}

/// The one-letter state from `/proc/PID/stat` (R, S, D, T, t, Z, ...), or
/// `None` if the process does not exist.
pub fn proc_state_letter(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; the state
    // is the first field after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Describes how a process ended, for messages: "exit status 1", "signal 9".
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => status.to_string(),
    }
}
