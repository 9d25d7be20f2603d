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

pub mod plan;
pub mod route;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::history::OpRecord;
use crate::history::body::{self, Body};
use crate::history::seed::substream;
use crate::history::{
    ErrorClass, ListDetail, OpKind, Origin, Outcome, TraceDetail, classify_error, classify_status,
};
use crate::ledger::{Ledger, LedgerError, ObjectRecord, Record};
use crate::s3::{self, Failure, GENERATION_HEADER, Keep, Payload, Response, S3Client};
use plan::{Mix, Plan, PlanConfig, Planner, RangeSpec};

/// Bytes of a GET body kept for tracing (one block: its header names the
/// writer); the rest is only hashed.
const KEEP_PREFIX_BYTES: usize = body::BLOCK_BYTES as usize;

/// Read-backs one worker may have waiting before it stops to let them run.
const READBACK_QUEUE_MAX: usize = 256;
/// Read-backs of one worker running at once.
const READBACKS_IN_FLIGHT_MAX: usize = 8;
/// Writes of at least this many bytes give way to the byte budget.
const BUDGET_LARGE_BYTES: u64 = 1 << 20;
/// Reads the final verification has in flight at once.
const FINAL_READS_IN_FLIGHT: usize = 8;
/// The final verification's first pause before retrying the reads that
/// got no answer; it doubles each round up to `FINAL_RETRY_PAUSE_MAX`.
const FINAL_RETRY_PAUSE: Duration = Duration::from_millis(250);
const FINAL_RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

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

    /// Final verification (oracle.md §7), once every worker has stopped:
    /// every key of the run's key space (a superset of the ledger's keys)
    /// read in full with GET and HEAD, spread over the endpoints, then the
    /// whole prefix listed page by page. Ordinary operations, marked
    /// `final` and issued by the verifier, whose worker id is `workers`.
    ///
    /// A read that got no answer is tried again, each attempt its own
    /// operation, through the next endpoint in turn (one that does not
    /// answer is routed around, as in the workload), with a pause between
    /// rounds, for at most `final_retry_ms` after the first round: one
    /// refused connection is not proof that data is gone. Every key gets
    /// its first attempt whatever the deadline.
    pub async fn verify_all(self: Arc<Self>) -> Result<(), LedgerError> {
        use futures::{StreamExt, TryStreamExt};
        let verifier = Who {
            worker: self.cfg.workers,
            origin: Origin::Final,
        };
        let keys: Vec<String> = (0..self.cfg.workers)
            .flat_map(|w| (0..self.cfg.keys_per_worker).map(move |k| (w, k)))
            .map(|(w, k)| self.key_name(w, k))
            .collect();
        let endpoints = self.endpoints;
        // (key, kind, attempt): attempt n goes to endpoint start + n.
        let mut pending: Vec<(usize, OpKind, usize)> = (0..keys.len())
            .flat_map(|i| [(i, OpKind::Get, 0), (i, OpKind::Head, 0)])
            .collect();
        let mut deadline = None;
        let mut pause = FINAL_RETRY_PAUSE;
        while !pending.is_empty() {
            let this = &self;
            let keys = &keys;
            let answered: Vec<bool> = futures::stream::iter(pending.iter().copied())
                .map(|(i, kind, attempt)| async move {
                    let start = i + usize::from(kind == OpKind::Head);
                    let ep = this.route((start + attempt) % endpoints);
                    let outcome = match kind {
                        OpKind::Get => this.get(verifier, &keys[i], ep).await?,
                        _ => this.head(verifier, &keys[i], ep).await?,
                    };
                    Ok::<bool, LedgerError>(outcome == Outcome::Ok)
                })
                .buffered(FINAL_READS_IN_FLIGHT)
                .try_collect()
                .await?;
            pending = pending
                .into_iter()
                .zip(answered)
                .filter(|(_, ok)| !ok)
                .map(|((i, kind, attempt), _)| (i, kind, attempt + 1))
                .collect();
            let until = *deadline.get_or_insert_with(|| Instant::now() + self.final_retry());
            let now = Instant::now();
            if pending.is_empty() || now >= until {
                break;
            }
            tracing::info!(
                reads = pending.len(),
                "final verification: retrying reads that got no answer"
            );
            tokio::time::sleep(pause.min(until - now)).await;
            pause = (pause * 2).min(FINAL_RETRY_PAUSE_MAX);
        }
        let pages_max = keys.len() as u32 / self.cfg.list_max_keys.max(1) + 2;
        // The walk's pages get a retry window of their own.
        let until = Instant::now() + self.final_retry();
        self.list_retrying(verifier, None, pages_max, 0, Some(until))
            .await
    }

    fn final_retry(&self) -> Duration {
        Duration::from_millis(self.cfg.final_retry_ms)
    }

    fn over_watermark(&self) -> bool {
        let bytes = self.stats.live_bytes.load(Ordering::Relaxed) as f64;
        let objects = self.stats.live_objects.load(Ordering::Relaxed) as f64;
        let wm = self.cfg.delete_watermark;
        bytes > wm * self.cfg.live_bytes_max as f64
            || objects > wm * self.cfg.live_objects_max as f64
    }

    /// Sends one request and classifies what came back. The arguments are
    /// `S3Client::exchange`'s plus the two the history needs.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        kind: OpKind,
        ep: usize,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        payload: Payload<'_>,
        keep: Keep,
    ) -> Exchanged {
        let result = self
            .client(ep)
            .exchange(method, key, query, headers, payload, keep)
            .await;
        match &result {
            Ok(_) => self.health.answered(ep),
            Err(f)
                if matches!(
                    f.error.class,
                    ErrorClass::NotSent | ErrorClass::Timeout | ErrorClass::Transport
                ) =>
            {
                self.health.unanswered(ep, self.now_ms())
            }
            Err(_) => {}
        }
        match result {
            Ok(resp) => Exchanged {
                outcome: classify_status(kind, resp.status.as_u16()).0,
                t_invoke: resp.t_invoke,
                t_return: resp.t_return,
                resp: Some(resp),
                failure: None,
            },
            Err(f) => failed(kind, f),
        }
    }

    /// Records one operation (the ledger numbers it) and bumps the counters.
    fn record(&self, mut op: OpRecord, x: &Exchanged) -> Result<(), LedgerError> {
        op.t_invoke_ns = self.ns(x.t_invoke);
        op.t_return_ns = self.ns(x.t_return);
        op.outcome = x.outcome;
        if let Some(r) = &x.resp {
            op.http_status = Some(r.status.as_u16());
            op.error_class = classify_status(op.kind, r.status.as_u16()).1;
            if op.etag.is_none() {
                op.etag = r.etag();
            }
            if !r.status.is_success() && r.status.as_u16() != 404 {
                op.detail =
                    Some(String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned());
            }
        }
        if let Some(f) = &x.failure {
            op.error_class = Some(f.class);
            op.http_status = f.status;
            op.detail = Some(f.message.clone());
        }
        self.stats.ops[kind_index(op.kind)][outcome_index(op.outcome)]
            .fetch_add(1, Ordering::Relaxed);
        self.ledger.send(Record::Op(Box::new(op)))
    }

    fn blank_op(&self, who: Who, kind: OpKind, key: Option<String>, ep: usize) -> OpRecord {
        OpRecord {
            worker: who.worker,
            origin: who.origin,
            endpoint: ep as u32,
            ..OpRecord::new(kind, key, Outcome::Fail)
        }
    }

    /// PUT (or multipart upload) of the key's next generation. Returns the
    /// key's index when the write was acknowledged, for its read-back.
    async fn write(
        &self,
        w: u32,
        ks: &mut KeyState,
        size: u64,
        ep: usize,
    ) -> Result<Option<u32>, LedgerError> {
        let generation = ks.next_generation;
        ks.next_generation += 1;
        let kind = if size >= self.cfg.part_size {
            OpKind::Multipart
        } else if ks.ever_written() {
            OpKind::Overwrite
        } else {
            OpKind::Put
        };
        let body = Body::new(self.seed, &ks.name, generation, size);
        let sha = body.sha256();
        let x = if kind == OpKind::Multipart {
            self.multipart(&ks.name, &body, generation, ep).await
        } else {
            let headers = [(GENERATION_HEADER, generation.to_string())];
            let payload = Payload::Slice {
                body: &body,
                start: 0,
                end: size,
                sha256: Some(sha),
            };
            self.send(
                kind,
                ep,
                Method::PUT,
                Some(&ks.name),
                &[],
                &headers,
                payload,
                Keep::All,
            )
            .await
        };
        let mut op = self.blank_op(Who::worker(w), kind, Some(ks.name.clone()), ep);
        op.generation = Some(generation);
        op.bytes = size;
        op.size = Some(size);
        op.sha256 = Some(sha);
        self.record(op, &x)?;
        let version = Version {
            generation,
            deleted: false,
            size,
            sha256: Some(sha),
        };
        self.settle(w, ks, version, x.outcome)
    }

    /// Create, parts, complete; abort on failure. One operation in the
    /// history, from before the create to after the complete: only the
    /// complete can change the key, so a failure before it is `fail`.
    async fn multipart(&self, key: &str, body: &Body, generation: u64, ep: usize) -> Exchanged {
        let client = self.client(ep);
        let t_invoke = Instant::now();
        let upload = match client.create_multipart(key, generation).await {
            Ok(id) => id,
            Err(f) => return before_complete(t_invoke, f),
        };
        let mut parts = Vec::new();
        let part = self.cfg.part_size;
        for (n, start) in (0..body.size).step_by(part as usize).enumerate() {
            let end = (start + part).min(body.size);
            let payload = Payload::Slice {
                body,
                start,
                end,
                sha256: None,
            };
            match client
                .upload_part(key, &upload, n as u32 + 1, payload)
                .await
            {
                Ok(etag) => parts.push((n as u32 + 1, etag)),
                Err(f) => {
                    let _ = client.abort_multipart(key, &upload).await;
                    return before_complete(t_invoke, f);
                }
            }
        }
        let mut x = match client.complete_multipart(key, &upload, &parts).await {
            Ok(resp) => Exchanged {
                outcome: classify_status(OpKind::Multipart, resp.status.as_u16()).0,
                t_invoke,
                t_return: resp.t_return,
                resp: Some(resp),
                failure: None,
            },
            Err(f) => {
                let mut x = failed(OpKind::Multipart, f);
                x.t_invoke = t_invoke;
                x
            }
        };
        if x.outcome == Outcome::Fail {
            let _ = client.abort_multipart(key, &upload).await;
            x.t_return = x.t_return.max(Instant::now());
        }
        x
    }

    async fn delete(
        &self,
        w: u32,
        ks: &mut KeyState,
        ep: usize,
    ) -> Result<Option<u32>, LedgerError> {
        let generation = ks.next_generation;
        ks.next_generation += 1;
        let x = self
            .send(
                OpKind::Delete,
                ep,
                Method::DELETE,
                Some(&ks.name),
                &[],
                &[],
                Payload::Empty,
                Keep::All,
            )
            .await;
        let mut op = self.blank_op(Who::worker(w), OpKind::Delete, Some(ks.name.clone()), ep);
        op.generation = Some(generation);
        self.record(op, &x)?;
        let version = Version {
            generation,
            deleted: true,
            size: 0,
            sha256: None,
        };
        self.settle(w, ks, version, x.outcome)
    }

    /// Applies a write's outcome to the key's state, the live counters and
    /// the `objects` row.
    fn settle(
        &self,
        w: u32,
        ks: &mut KeyState,
        v: Version,
        outcome: Outcome,
    ) -> Result<Option<u32>, LedgerError> {
        match outcome {
            Outcome::Ok => {
                ks.acked = Some(v);
                ks.ambiguous.clear();
            }
            Outcome::Ambiguous | Outcome::Unavailable => ks.ambiguous.push(v),
            Outcome::Fail => {}
        }
        let now = ks.live();
        self.stats
            .live_bytes
            .fetch_add(now.0 - ks.counted.0, Ordering::Relaxed);
        self.stats
            .live_objects
            .fetch_add(now.1 - ks.counted.1, Ordering::Relaxed);
        ks.counted = now;
        let present = ks.candidates().filter(|v| !v.deleted).last().copied();
        self.ledger.send(Record::Object(Box::new(ObjectRecord {
            key: ks.name.clone(),
            owner: w,
            state: ks.state(),
            acked_generation: ks.acked.map(|v| v.generation),
            candidates: ks.candidates().map(|v| v.generation).collect(),
            visible_generation: None,
            size: present.map(|v| v.size),
            sha256: present.and_then(|v| v.sha256),
        })))?;
        Ok((outcome == Outcome::Ok).then_some(ks.index))
    }

    async fn get(&self, who: Who, key: &str, ep: usize) -> Result<Outcome, LedgerError> {
        let x = self
            .send(
                OpKind::Get,
                ep,
                Method::GET,
                Some(key),
                &[],
                &[],
                Payload::Empty,
                Keep::Prefix(KEEP_PREFIX_BYTES),
            )
            .await;
        let mut op = self.blank_op(who, OpKind::Get, Some(key.to_string()), ep);
        if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
            op.detail = trace_detail(&r.body, 0);
            op.generation = r.generation();
            op.bytes = r.body_len;
            op.size = Some(r.body_len);
            op.sha256 = Some(r.sha256);
        }
        self.observe(op, &x)
    }

    async fn head(&self, who: Who, key: &str, ep: usize) -> Result<Outcome, LedgerError> {
        let x = self
            .send(
                OpKind::Head,
                ep,
                Method::HEAD,
                Some(key),
                &[],
                &[],
                Payload::Empty,
                Keep::All,
            )
            .await;
        let mut op = self.blank_op(who, OpKind::Head, Some(key.to_string()), ep);
        if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
            op.generation = r.generation();
            op.size = r.content_length();
        }
        self.observe(op, &x)
    }

    async fn range(
        &self,
        who: Who,
        key: &str,
        spec: RangeSpec,
        ep: usize,
    ) -> Result<(), LedgerError> {
        let headers = [("range", spec.header())];
        let x = self
            .send(
                OpKind::Range,
                ep,
                Method::GET,
                Some(key),
                &[],
                &headers,
                Payload::Empty,
                Keep::Prefix(KEEP_PREFIX_BYTES),
            )
            .await;
        let mut op = self.blank_op(who, OpKind::Range, Some(key.to_string()), ep);
        op.range_header = Some(spec.header());
        if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
            op.generation = r.generation();
            op.bytes = r.body_len;
            op.sha256 = Some(r.sha256);
            if let Some((first, last, total)) = r.content_range() {
                op.detail = trace_detail(&r.body, first);
                op.range = Some((first, last));
                op.size = Some(total);
            } else {
                // A 200 to a range request: the whole object came back.
                op.size = Some(r.body_len);
            }
        } else if let Some(r) = x.resp.as_ref().filter(|r| r.status.as_u16() == 416) {
            // "Shorter than the range's first byte": the size, if given.
            op.size = r.unsatisfied_total();
        }
        self.observe(op, &x).map(|_| ())
    }

    /// Records a read and the generation it saw; returns its outcome.
    fn observe(&self, op: OpRecord, x: &Exchanged) -> Result<Outcome, LedgerError> {
        let seen = op.generation.zip(op.key.clone());
        self.record(op, x)?;
        if let Some((generation, key)) = seen {
            self.ledger.send(Record::Visible { key, generation })?;
        }
        Ok(x.outcome)
    }

    /// Walks up to `pages_max` ListObjectsV2 pages of the run's prefix,
    /// from just after `start_after`; each page is one operation.
    async fn list(
        &self,
        who: Who,
        start_after: Option<String>,
        pages_max: u32,
        ep: usize,
    ) -> Result<(), LedgerError> {
        self.list_retrying(who, start_after, pages_max, ep, None)
            .await
    }

    /// `list`, where a page that got no answer is asked again through the
    /// next endpoint in turn until `retry_until` (the final verification).
    async fn list_retrying(
        &self,
        who: Who,
        start_after: Option<String>,
        pages_max: u32,
        mut ep: usize,
        retry_until: Option<Instant>,
    ) -> Result<(), LedgerError> {
        let max = self.cfg.list_max_keys.to_string();
        let mut token: Option<String> = None;
        // The page covers keys after this one (exclusive): the start-after
        // key for the first page, then the previous page's last key.
        let mut after = start_after.clone();
        let mut page = 0;
        let mut pause = FINAL_RETRY_PAUSE;
        while page < pages_max {
            let mut query = vec![
                ("list-type", "2"),
                ("prefix", self.prefix.as_str()),
                ("max-keys", max.as_str()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token", t.as_str()));
            } else if let Some(s) = &start_after {
                query.push(("start-after", s.as_str()));
            }
            let x = self
                .send(
                    OpKind::List,
                    ep,
                    Method::GET,
                    None,
                    &query,
                    &[],
                    Payload::Empty,
                    Keep::All,
                )
                .await;
            let mut op = self.blank_op(who, OpKind::List, None, ep);
            let mut next = None;
            let mut x = x;
            if let Some(r) = x.resp.as_ref().filter(|r| r.status.is_success()) {
                op.bytes = r.body_len;
                match S3Client::parse_list(&r.body) {
                    Ok(parsed) => {
                        let detail = ListDetail {
                            page,
                            after: after.clone(),
                            start_after: if token.is_none() {
                                start_after.clone()
                            } else {
                                None
                            },
                            continuation: token.clone(),
                            max_keys: self.cfg.list_max_keys,
                            keys: parsed
                                .contents
                                .iter()
                                .map(|e| (e.key.clone(), e.size, e.etag.clone()))
                                .collect(),
                            truncated: parsed.is_truncated,
                            next: parsed.next_continuation_token.clone(),
                        };
                        op.detail =
                            Some(serde_json::to_string(&detail).expect("a LIST detail serialises"));
                        next = parsed
                            .next_continuation_token
                            .filter(|_| parsed.is_truncated);
                        if let Some(last) = parsed.contents.last() {
                            after = Some(last.key.clone());
                        }
                    }
                    Err(e) => {
                        // An unparsable answer observed nothing.
                        x.outcome = Outcome::Unavailable;
                        x.failure = Some(e);
                    }
                }
            }
            self.record(op, &x)?;
            if x.outcome != Outcome::Ok
                && let Some(until) = retry_until
                && Instant::now() < until
            {
                // The same page again, through the next endpoint.
                tokio::time::sleep(pause.min(until - Instant::now())).await;
                pause = (pause * 2).min(FINAL_RETRY_PAUSE_MAX);
                ep = self.route((ep + 1) % self.endpoints);
                continue;
            }
            pause = FINAL_RETRY_PAUSE;
            page += 1;
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(())
    }

    /// Reads back one of the worker's own keys: GET, HEAD, a Range (first
    /// byte, last byte or a suffix), or a LIST starting just before it.
    async fn readback(
        &self,
        w: u32,
        j: u32,
        ep: usize,
        how: u32,
        suffix: u64,
    ) -> Result<(), LedgerError> {
        let name = self.key_name(w, j);
        let who = Who {
            worker: w,
            origin: Origin::Readback,
        };
        match how {
            0 => self.get(who, &name, ep).await.map(|_| ()),
            1 => self.head(who, &name, ep).await.map(|_| ()),
            2 => {
                let spec = match suffix % 3 {
                    0 => RangeSpec::Window(0, 0),
                    1 => RangeSpec::Suffix(1),
                    _ => RangeSpec::Suffix(suffix),
                };
                self.range(who, &name, spec, ep).await
            }
            _ => {
                // From just before the key, so it is on the first page.
                let after = (j > 0).then(|| self.key_name(w, j - 1));
                let after = after.or_else(|| Some(format!("{}w{:03}/", self.prefix, w)));
                self.list(who, after, self.cfg.list_pages_max, ep).await
            }
        }
    }
}

/// What the first intact block header in `bytes` (which start at object
/// offset `offset`) says about who wrote them, as JSON for `ops.detail`.
/// The oracle uses it to tell another key's bytes from corrupted ones.
fn trace_detail(bytes: &[u8], offset: u64) -> Option<String> {
    let trace = body::trace(bytes, offset)?;
    Some(serde_json::to_string(&TraceDetail { trace }).expect("a trace serialises"))
}

/// Key names: `<prefix>wNNN/kNNNNN`, sorted by worker then index.
pub fn key_name(prefix: &str, worker: u32, key: u32) -> String {
    format!("{prefix}w{worker:03}/k{key:05}")
}

fn failed(kind: OpKind, f: Failure) -> Exchanged {
    Exchanged {
        outcome: classify_error(kind, f.error.class),
        resp: None,
        t_invoke: f.t_invoke,
        t_return: f.t_return,
        failure: Some(f.error),
    }
}

/// A multipart upload that failed before its complete request was sent:
/// the key certainly did not change.
fn before_complete(t_invoke: Instant, f: Failure) -> Exchanged {
    Exchanged {
        outcome: Outcome::Fail,
        resp: None,
        t_invoke,
        t_return: f.t_return,
        failure: Some(f.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback S3 stand-in for a store that holds nothing: every read
    /// answers 404 and every LIST an empty page, except that the first
    /// attempt of each request (method and target) is cut off unanswered,
    /// as an overloaded proxy or a restarting load balancer does, and every
    /// attempt at `dead` is. Both addresses it returns serve the same.
    async fn first_attempts_cut_off(dead: String) -> Vec<String> {
        let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let mut urls = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", listener.local_addr().unwrap()));
            let (seen, dead) = (seen.clone(), dead.clone());
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let (seen, dead) = (seen.clone(), dead.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let line = String::from_utf8_lossy(&head)
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let attempt = {
                            let mut seen = seen.lock().unwrap();
                            let n = seen.entry(line.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        if attempt == 1 || line.contains(&dead) {
                            // Cut off: a reset, no answer.
                            let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                            return;
                        }
                        let answer = if line.contains("list-type=2") {
                            let body = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        } else {
                            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                .to_string()
                        };
                        let _ = conn.write_all(answer.as_bytes()).await;
                    });
                }
            });
        }
        urls
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn final_reads_survive_a_cut_off_first_attempt_and_name_a_key_that_stays_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let prefix = "run/".to_string();
        let dead = key_name(&prefix, 1, 2);
        let urls = first_attempts_cut_off(dead.clone()).await;
        let clients = urls
            .iter()
            .map(|u| {
                S3Client::new(
                    s3::S3Config {
                        endpoint: u.clone(),
                        region: "r".into(),
                        bucket: "b".into(),
                        access_key_id: "GK0".into(),
                        secret_access_key: "0".into(),
                    },
                    s3::Timeouts::default(),
                )
            })
            .collect();
        let cfg = WorkloadConfig {
            workers: 2,
            keys_per_worker: 3,
            final_retry_ms: 2_000,
            ..WorkloadConfig::default()
        };
        let (ledger, writer) = Ledger::create(&path, None, None).unwrap();
        let workload = Workload::new(
            cfg,
            7,
            prefix.clone(),
            clients,
            ledger.clone(),
            Instant::now(),
        );
        workload.clone().verify_all().await.unwrap();
        drop(workload);
        drop(ledger);
        writer.finish().unwrap();
        let ops = crate::ledger::LedgerReader::open(&path)
            .unwrap()
            .ops()
            .unwrap();
        // Every read of a live key took two attempts (the first cut off),
        // each its own operation.
        for k in 0..3 {
            let key = key_name(&prefix, 0, k);
            for kind in [OpKind::Get, OpKind::Head] {
                let attempts: Vec<Outcome> = ops
                    .iter()
                    .filter(|o| o.key.as_deref() == Some(&key) && o.kind == kind)
                    .map(|o| o.outcome)
                    .collect();
                assert_eq!(
                    attempts,
                    [Outcome::Unavailable, Outcome::Ok],
                    "{key} {kind:?}"
                );
            }
        }
        let dead_attempts = ops
            .iter()
            .filter(|o| o.key.as_deref() == Some(&dead))
            .count();
        assert!(
            dead_attempts >= 8,
            "{dead_attempts} attempts at the dead key"
        );
        let info = crate::oracle::RunInfo::new(7, prefix, 2);
        let verdict = crate::oracle::check(&info, ops);
        let named: Vec<(Option<&str>, &str)> = verdict
            .findings
            .iter()
            .map(|f| (f.key.as_deref(), f.class.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                (Some(dead.as_str()), "unrecoverable"),
                (Some(dead.as_str()), "unrecoverable")
            ],
            "{:#?}",
            verdict.findings
        );
        assert!(verdict.coverage.final_list_pages_checked >= 1);
    }
}
