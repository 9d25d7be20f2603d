//! The workload: seeded workers issuing PUT, overwrite, multipart, GET,
//! HEAD, Range GET, DELETE and LIST against the cluster's S3 endpoints, and
//! recording every attempt in the ledger.
//!
//! Key ownership: worker w owns the keys `<prefix>wNNN/kNNNNN`; only it
//! writes them, one write at a time, so every key is a single-writer
//! register with a total write order (oracle.md §2). Any worker reads any
//! key. Every acknowledged write is read back (GET, HEAD, Range or LIST)
//! after a random delay of at most `readback_max`, so a wrong answer shows
//! up within seconds of the write. Above the live-bytes or live-objects cap,
//! writes turn into DELETEs, so long runs stay bounded on disk.
//!
//! Here: the configuration, the counters, per-key state and the workers
//! with their read-back tasks. `ops.rs` issues and records one operation
//! of each kind, `verify.rs` is the final verification, `plan.rs` the
//! seeded plan streams, `route.rs` which endpoint answers.

mod ops;
pub mod plan;
pub mod route;
mod verify;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::history::body;
use crate::history::seed::substream;
use crate::history::{OpKind, Origin, Outcome};
use crate::ledger::{Ledger, LedgerError};
use crate::s3::{self, Response, S3Client};
use plan::{Mix, Plan, PlanConfig, Planner};

/// Bytes of a GET body kept for tracing (one block: its header names the
/// writer); the rest is only hashed.
const KEEP_PREFIX_BYTES: usize = body::BLOCK_BYTES as usize;

/// Read-backs one worker may have waiting before it stops to let them run.
const READBACK_QUEUE_MAX: usize = 256;
/// Read-backs of one worker running at once.
const READBACKS_IN_FLIGHT_MAX: usize = 8;
/// Writes of at least this many bytes give way to the byte budget.
const BUDGET_LARGE_BYTES: u64 = 1 << 20;
/// Workload settings; the profile's `[workload]` table, then the command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    pub workers: u32,
    pub keys_per_worker: u32,
    pub mix: Mix,
    /// Objects of at least this size go up as multipart uploads in parts of this size.
    pub part_size: u64,
    /// Every acknowledged write is read back within this delay.
    pub readback_max_ms: u64,
    pub live_bytes_max: u64,
    pub live_objects_max: u64,
    /// Above this fraction of a cap, writes turn into DELETEs.
    pub delete_watermark: f64,
    pub list_max_keys: u32,
    pub list_pages_max: u32,
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub total_timeout_ms: u64,
    /// Bytes written per second at most, over all workers (0: no limit).
    /// A store frees what overwrites and deletes leave behind only after a
    /// while (Garage: 10 minutes), so this, not the live-bytes cap, bounds
    /// the disk a long run needs: about replicas x rate x that delay.
    pub write_bytes_per_s_max: u64,
    /// The final verification retries a read that got no answer, through
    /// the other endpoints in turn, for at most this long (oracle.md §7).
    pub final_retry_ms: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            workers: 24,
            keys_per_worker: 40,
            mix: Mix::default(),
            part_size: 5 << 20,
            readback_max_ms: 2_000,
            live_bytes_max: 512 << 20,
            live_objects_max: 10_000,
            delete_watermark: 0.9,
            list_max_keys: 25,
            list_pages_max: 4,
            connect_timeout_ms: 2_000,
            first_byte_timeout_ms: 5_000,
            total_timeout_ms: 30_000,
            write_bytes_per_s_max: 8 << 20,
            final_retry_ms: 60_000,
        }
    }
}

impl WorkloadConfig {
    fn timeouts(&self) -> s3::Timeouts {
        s3::Timeouts {
            connect: Duration::from_millis(self.connect_timeout_ms),
            first_byte: Duration::from_millis(self.first_byte_timeout_ms),
            total: Duration::from_millis(self.total_timeout_ms),
        }
    }
}

/// Live counters, read by the progress view and the summary.
#[derive(Default)]
pub struct Stats {
    /// Indexed by `OpKind` position in `OpKind::ALL`, then outcome.
    ops: [[AtomicU64; 4]; 8],
    pub live_bytes: AtomicI64,
    pub live_objects: AtomicI64,
    pub readbacks: AtomicU64,
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Ok => 0,
        Outcome::Fail => 1,
        Outcome::Ambiguous => 2,
        Outcome::Unavailable => 3,
    }
}

fn kind_index(k: OpKind) -> usize {
    OpKind::ALL
        .iter()
        .position(|x| *x == k)
        .expect("every kind is in ALL")
}

impl Stats {
    pub fn count(&self, kind: OpKind, outcome: Outcome) -> u64 {
        self.ops[kind_index(kind)][outcome_index(outcome)].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.ops
            .iter()
            .flatten()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// Operations whose outcome is not `ok`.
    pub fn errors(&self) -> u64 {
        self.ops
            .iter()
            .map(|row| {
                row[1..]
                    .iter()
                    .map(|a| a.load(Ordering::Relaxed))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// A running workload.
pub struct Workload {
    cfg: WorkloadConfig,
    seed: u64,
    prefix: String,
    /// One client per endpoint, by index; an endpoint can move (a dead
    /// node replaced by a spare), so they are swapped under a lock.
    clients: std::sync::RwLock<Vec<Arc<S3Client>>>,
    endpoints: usize,
    /// Which endpoints answer, to route the workload around one that
    /// does not (`route`).
    health: route::EndpointHealth,
    ledger: Ledger,
    clock: Instant,
    budget: ByteBudget,
    pub stats: Arc<Stats>,
}

/// A token bucket of bytes to write, shared by every worker. Every write
/// takes its size and may leave the bucket in debt; while it is in debt, a
/// planned large write turns into a DELETE of its key (like writes above
/// the live-data cap), so nothing waits and reads keep their pace.
struct ByteBudget {
    rate: f64,
    state: std::sync::Mutex<(Instant, f64)>,
}

impl ByteBudget {
    fn new(bytes_per_s: u64) -> ByteBudget {
        ByteBudget {
            rate: bytes_per_s as f64,
            state: std::sync::Mutex::new((Instant::now(), bytes_per_s as f64)),
        }
    }

    /// Takes `bytes` from the budget; false (taking nothing) for a large
    /// write while the budget is in debt.
    fn take(&self, bytes: u64) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        // A poisoned lock holds two plain numbers, still usable.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // At most one second's worth saved up.
        s.1 = (s.1 + now.duration_since(s.0).as_secs_f64() * self.rate).min(self.rate);
        s.0 = now;
        if s.1 < 0.0 && bytes >= BUDGET_LARGE_BYTES {
            return false;
        }
        s.1 -= bytes as f64;
        true
    }
}

/// Who issues an operation: a worker, in its own sequence or reading back
/// one of its writes, or the final verification.
#[derive(Debug, Clone, Copy)]
struct Who {
    worker: u32,
    origin: Origin,
}

impl Who {
    fn worker(worker: u32) -> Who {
        Who {
            worker,
            origin: Origin::Worker,
        }
    }
}

/// What one worker knows of one of its keys.
struct KeyState {
    index: u32,
    name: String,
    next_generation: u64,
    /// The last write with outcome ok.
    acked: Option<Version>,
    /// Ambiguous writes after `acked`: still candidates.
    ambiguous: Vec<Version>,
    /// What this key adds to the live counters now.
    counted: (i64, i64),
}

#[derive(Debug, Clone, Copy)]
struct Version {
    generation: u64,
    deleted: bool,
    size: u64,
    sha256: Option<[u8; 32]>,
}

impl KeyState {
    fn candidates(&self) -> impl Iterator<Item = &Version> {
        self.acked.iter().chain(&self.ambiguous)
    }

    fn ever_written(&self) -> bool {
        self.candidates().next().is_some()
    }

    /// Live (bytes, objects) counted pessimistically: the largest present
    /// candidate.
    fn live(&self) -> (i64, i64) {
        let present = self
            .candidates()
            .filter(|v| !v.deleted)
            .map(|v| v.size as i64)
            .max();
        present.map_or((0, 0), |b| (b, 1))
    }

    fn state(&self) -> &'static str {
        match (&self.acked, self.ambiguous.is_empty()) {
            (_, false) => "uncertain",
            (Some(v), true) if !v.deleted => "present",
            _ => "absent",
        }
    }
}

/// The answer to one request, as the history records it.
struct Exchanged {
    outcome: Outcome,
    resp: Option<Response>,
    failure: Option<s3::S3Error>,
    t_invoke: Instant,
    t_return: Instant,
}

impl Workload {
    pub fn new(
        cfg: WorkloadConfig,
        seed: u64,
        prefix: String,
        clients: Vec<S3Client>,
        ledger: Ledger,
        clock: Instant,
    ) -> Arc<Workload> {
        let budget = cfg.write_bytes_per_s_max;
        let health = route::EndpointHealth::new(clients.len(), cfg.total_timeout_ms);
        Arc::new(Workload {
            health,
            cfg,
            seed,
            prefix,
            endpoints: clients.len(),
            clients: std::sync::RwLock::new(clients.into_iter().map(Arc::new).collect()),
            ledger,
            clock,
            budget: ByteBudget::new(budget),
            stats: Arc::new(Stats::default()),
        })
    }

    pub fn s3_timeouts(cfg: &WorkloadConfig) -> s3::Timeouts {
        cfg.timeouts()
    }

    /// The client of endpoint `ep`.
    fn client(&self, ep: usize) -> Arc<S3Client> {
        // A poisoned lock means a panic while swapping a client; the list
        // itself is still whole.
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        clients[ep].clone()
    }

    /// The endpoint a request planned for `planned` goes to: another one
    /// while `planned` does not answer.
    fn route(&self, planned: usize) -> usize {
        self.health.route(planned, self.now_ms())
    }

    /// Milliseconds on the workload's clock, for endpoint health.
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Sends what went to endpoint `old` to `new` from now on.
    pub fn replace_endpoint(&self, old: &str, new: S3Client) {
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        for c in clients.iter_mut() {
            if c.config().endpoint == old {
                *c = Arc::new(new.clone());
            }
        }
    }

    pub fn key_name(&self, worker: u32, key: u32) -> String {
        key_name(&self.prefix, worker, key)
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.clock).as_nanos() as u64
    }

    /// Runs every worker until `stop` turns true; returns once all have
    /// finished their current operation.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> Result<(), LedgerError> {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..self.cfg.workers {
            tasks.spawn(self.clone().worker(w, stop.clone()));
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(LedgerError::WriterGone(format!("a worker panicked: {e}"))),
            }
        }
        result
    }

    async fn worker(
        self: Arc<Self>,
        w: u32,
        stop: watch::Receiver<bool>,
    ) -> Result<(), LedgerError> {
        let plan_cfg = PlanConfig {
            workers: self.cfg.workers,
            keys_per_worker: self.cfg.keys_per_worker,
            mix: self.cfg.mix,
            part_size: self.cfg.part_size,
        };
        let mut planner = Planner::new(self.seed, w, plan_cfg);
        let mut keys: Vec<KeyState> = (0..self.cfg.keys_per_worker)
            .map(|j| KeyState {
                index: j,
                name: self.key_name(w, j),
                next_generation: 1,
                acked: None,
                ambiguous: Vec::new(),
                counted: (0, 0),
            })
            .collect();
        // Read-backs run beside the worker, so a slow write (a multipart
        // upload takes seconds) cannot delay another key's read-back. The
        // channel is bounded: a worker that outruns its read-backs waits.
        let (readback_tx, readback_rx) = tokio::sync::mpsc::channel(READBACK_QUEUE_MAX);
        let readbacks = tokio::spawn(self.clone().readback_loop(w, readback_rx, stop.clone()));
        let mut delay_rng = substream(self.seed, "worker-readback-delay", u64::from(w));
        while !*stop.borrow() {
            let plan = planner.next_plan();
            let ep = self.route(planner.next_endpoint(self.endpoints));
            let acked = match plan {
                Plan::Write { key, size } => {
                    if self.over_watermark() || !self.budget.take(size) {
                        self.delete(w, &mut keys[key as usize], ep).await?
                    } else {
                        self.write(w, &mut keys[key as usize], size, ep).await?
                    }
                }
                Plan::Delete { key } => self.delete(w, &mut keys[key as usize], ep).await?,
                Plan::Get { worker, key } => {
                    self.get(Who::worker(w), &self.key_name(worker, key), ep)
                        .await?;
                    None
                }
                Plan::Head { worker, key } => {
                    self.head(Who::worker(w), &self.key_name(worker, key), ep)
                        .await?;
                    None
                }
                Plan::Range { worker, key, range } => {
                    self.range(Who::worker(w), &self.key_name(worker, key), range, ep)
                        .await?;
                    None
                }
                Plan::List { after } => {
                    let start_after = after.map(|(ow, ok)| self.key_name(ow, ok));
                    self.list(Who::worker(w), start_after, self.cfg.list_pages_max, ep)
                        .await?;
                    None
                }
            };
            if let Some(j) = acked {
                let delay = delay_rng.random_range(0..=self.cfg.readback_max_ms);
                let due = Instant::now() + Duration::from_millis(delay);
                if readback_tx.send((due, j)).await.is_err() {
                    break; // the read-back task ended with a ledger error
                }
            }
        }
        drop(readback_tx);
        readbacks
            .await
            .map_err(|e| LedgerError::WriterGone(format!("a read-back task panicked: {e}")))?
    }

    /// Starts each of a worker's read-backs at its due time, a few at once
    /// (a slow read must not hold back the next one's start), until `stop`.
    async fn readback_loop(
        self: Arc<Self>,
        w: u32,
        mut rx: tokio::sync::mpsc::Receiver<(Instant, u32)>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), LedgerError> {
        let mut rng = substream(self.seed, "worker-readback", u64::from(w));
        let mut due: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
        let mut running = tokio::task::JoinSet::new();
        let mut open = true;
        let mut result = Ok(());
        loop {
            let next = due.peek().map(|Reverse((at, _))| *at);
            let room = running.len() < READBACKS_IN_FLIGHT_MAX;
            tokio::select! {
                received = rx.recv(), if open => match received {
                    Some(item) => due.push(Reverse(item)),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() && room => {
                    let Some(Reverse((_, j))) = due.pop() else { continue };
                    // Choices are drawn here, in due order, from the
                    // worker's read-back stream.
                    let ep = self.route(rng.random_range(0..self.endpoints));
                    let how = rng.random_range(0..4u32);
                    let suffix = rng.random_range(1..4096u64);
                    let this = self.clone();
                    running.spawn(async move { this.readback(w, j, ep, how, suffix).await });
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    match done {
                        Ok(Ok(())) => { self.stats.readbacks.fetch_add(1, Ordering::Relaxed); }
                        Ok(Err(e)) => result = Err(e),
                        Err(e) => result = Err(LedgerError::WriterGone(format!("a read-back panicked: {e}"))),
                    }
                }
                _ = stop.changed() => {}
            }
            if result.is_err() || *stop.borrow() || (!open && due.is_empty()) {
                while let Some(done) = running.join_next().await {
                    if let Ok(Err(e)) = done {
                        result = Err(e);
                    }
                }
                return result;
            }
        }
    }

    fn over_watermark(&self) -> bool {
        let bytes = self.stats.live_bytes.load(Ordering::Relaxed) as f64;
        let objects = self.stats.live_objects.load(Ordering::Relaxed) as f64;
        let wm = self.cfg.delete_watermark;
        bytes > wm * self.cfg.live_bytes_max as f64
            || objects > wm * self.cfg.live_objects_max as f64
    }
}

/// Key names: `<prefix>wNNN/kNNNNN`, sorted by worker then index.
pub fn key_name(prefix: &str, worker: u32, key: u32) -> String {
    format!("{prefix}w{worker:03}/k{key:05}")
}
