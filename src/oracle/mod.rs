//! The oracle: judges a history of operations against the contract of
//! `shared/design/oracle.md` §3–7. It does no I/O: callers feed it
//! operations one by one, in the ledger's order (`Oracle::observe`), and
//! take the findings it produces. The same engine runs online (fed by the
//! ledger writer's tap) and offline (`faultline verify`, fed from the
//! ledger), so both see the same sequence and agree.
//!
//! Keys are single-writer registers, so a key's writes are ordered in time
//! as in generation, and for a read R:
//! - `base(R)` is the last write acknowledged (`ok`) before R started
//!   (Absent if none);
//! - `later(R)` are the candidate writes (`ok` or `ambiguous`) after base
//!   that started before R returned;
//! - R must have seen the value of base or of one of later (and, under the
//!   linearizable contract, nothing older than what an earlier read saw).
//!
//! **Exact while streaming.** A read arrives as soon as it returns, but a
//! write that started before it returned may still be in flight. A
//! worker's own operations (origin `worker`) run one after another, so once
//! one of them returns at T, every write that worker started before T has
//! been seen. A read of a key is judged once the key's owner has progressed
//! past the read's return (a LIST page, or a read of a key nobody has
//! written yet, once every worker has); until then it waits. The final
//! verification starts after every worker stopped, so its reads are judged
//! at once. Judgments therefore never depend on when they are made.
//!
//! **Bounded memory.** No read lasts longer than `read_span_max_ns`, so a
//! write can be dropped once a later acknowledged write returned before
//! every read still to come started: it can no longer be `base` or in
//! `later` of any of them. Memory grows with live keys and the span, not
//! with the history. A read that arrives older than what was dropped for
//! its key (impossible within the span) is counted unknown, never judged.
//!
//! A value is compared on what the read carries: a GET's sha256 and size,
//! a HEAD's size and generation, a Range's bytes against the same slice of
//! the allowed generation, and its `Content-Range` against the request.
//! Bodies are a pure function of (seed, key, generation, size), so the
//! oracle recomputes any slice it needs, even of a generation it dropped.
//!
//! Here: the findings' vocabulary and the streaming engine (routing reads
//! until their writes are known, pruning, the final reads). `keys` files
//! keys, `hist` is one key's history and allowed sets, `read` judges a
//! GET/HEAD/Range, `list` a LIST page (`page` reads its detail),
//! `prefetch` looks ahead in `observe_all`, `synth` makes correct
//! histories for tests and benchmarks.

use std::collections::{BTreeMap, VecDeque};

/// Keys are trusted strings of our own: a fast hash (foldhash), not SipHash.
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::history::OpRecord;
use crate::history::body::{key_tag, run_tag};
use crate::history::{OpKind, Origin, Outcome};

mod hist;
mod keys;
mod list;
mod page;
mod prefetch;
mod read;
pub mod synth;

pub use read::expected_range;

use hist::{FAILED_KEPT_MAX, KeyHist, Newest, Write, etag_core};
use keys::{KeyIndex, KeyRef, OrdKey};

/// The violation classes of oracle.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    LostWrite,
    StaleRead,
    Resurrection,
    Corruption,
    Misdirected,
    Phantom,
    MetadataMismatch,
    NonMonotonic,
    LateWrite,
    ListMissing,
    ListGhost,
    ListProtocol,
    Unrecoverable,
}

impl Class {
    pub const ALL: [Class; 13] = [
        Class::LostWrite,
        Class::StaleRead,
        Class::Resurrection,
        Class::Corruption,
        Class::Misdirected,
        Class::Phantom,
        Class::MetadataMismatch,
        Class::NonMonotonic,
        Class::LateWrite,
        Class::ListMissing,
        Class::ListGhost,
        Class::ListProtocol,
        Class::Unrecoverable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::LostWrite => "lost-write",
            Class::StaleRead => "stale-read",
            Class::Resurrection => "resurrection",
            Class::Corruption => "corruption",
            Class::Misdirected => "misdirected",
            Class::Phantom => "phantom",
            Class::MetadataMismatch => "metadata-mismatch",
            Class::NonMonotonic => "non-monotonic",
            Class::LateWrite => "late-write",
            Class::ListMissing => "list-missing",
            Class::ListGhost => "list-ghost",
            Class::ListProtocol => "list-protocol",
            Class::Unrecoverable => "unrecoverable",
        }
    }

    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Which consistency contract reads are held to (oracle.md §3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contract {
    /// What Garage promises: a read sees the last acknowledged write or a
    /// write in flight.
    #[default]
    ReadAfterWrite,
    /// Additionally, a read never goes back before what an earlier read saw.
    Linearizable,
}

impl Contract {
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::ReadAfterWrite => "read-after-write",
            Contract::Linearizable => "linearizable",
        }
    }
}

/// One write of the key, as a witness shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WitnessWrite {
    pub op_id: u64,
    pub generation: u64,
    pub deleted: bool,
    pub size: u64,
    pub t_invoke_ns: u64,
    pub t_return_ns: u64,
    pub outcome: Outcome,
}

/// One violation with its witness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub class: Class,
    pub key: Option<String>,
    /// The read (or LIST page) that saw it, and its interval.
    pub op_id: u64,
    pub t_invoke_ns: u64,
    pub t_ns: u64,
    pub expected: String,
    pub seen: String,
    /// The key's writes that decided what was allowed, and the one seen
    /// when it is still known.
    pub writes: Vec<WitnessWrite>,
    /// The read was part of the final verification (oracle.md §7).
    #[serde(default)]
    pub final_read: bool,
    /// How long after the deciding write (`base`: the newest write
    /// acknowledged before the read began) the read began; `None` when
    /// no acknowledged write decided it. Tolerances are bounded by it.
    #[serde(default)]
    pub since_ack_ns: Option<u64>,
}

impl Finding {
    pub fn write_ids(&self) -> Vec<u64> {
        self.writes.iter().map(|w| w.op_id).collect()
    }
}

/// What a check covered, so a run cannot pass vacuously.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub reads_checked: u64,
    pub list_pages_checked: u64,
    pub list_keys_checked: u64,
    pub reads_unavailable: u64,
    pub writes_acked: u64,
    pub ambiguous_writes: u64,
    /// Final-verification reads and LIST pages checked.
    pub final_reads_checked: u64,
    pub final_list_pages_checked: u64,
    /// Reads that could not be decided: on a ledger whose runner died, a
    /// read whose writes may not all have been recorded; or a read older
    /// than the history kept for its key.
    pub reads_unknown: u64,
}

/// What a check found and what it covered. Which findings fail a run is
/// the run's policy (the profile's tolerances), not the oracle's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    pub coverage: Coverage,
}

/// What the oracle needs to know about the run besides its operations.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub seed: u64,
    /// The run's key prefix; LIST pages cover only it.
    pub prefix: String,
    /// False for a ledger whose runner died: its last writes in flight were
    /// never recorded, so a read may have seen one of them.
    pub complete: bool,
    pub contract: Contract,
    /// Workers 0..workers issue the `worker`-origin operations.
    pub workers: u32,
    /// No read lasts longer than this (a bound on the workload's timeouts).
    pub read_span_max_ns: u64,
}

impl RunInfo {
    /// Defaults for a run: read-after-write, complete, a 5-minute span.
    pub fn new(seed: u64, prefix: impl Into<String>, workers: u32) -> RunInfo {
        RunInfo {
            seed,
            prefix: prefix.into(),
            complete: true,
            contract: Contract::ReadAfterWrite,
            workers,
            read_span_max_ns: 300 * 1_000_000_000,
        }
    }
}

/// Invocation times of the reads waiting to be judged, counted in
/// buckets a power of two wide (about a thousandth of the longest read):
/// the earliest bucket's start bounds the pruning horizon from below, at
/// O(1) per read where an ordered map cost a search on each add and
/// remove.
#[derive(Debug)]
struct Invokes {
    shift: u32,
    /// The bucket `counts[0]` counts.
    first: u64,
    counts: VecDeque<u32>,
    total: usize,
}

impl Invokes {
    fn new(read_span_max_ns: u64) -> Invokes {
        Invokes {
            shift: (read_span_max_ns / 1024).max(1).ilog2(),
            first: 0,
            counts: VecDeque::new(),
            total: 0,
        }
    }

    fn add(&mut self, t: u64) {
        let b = t >> self.shift;
        if self.counts.is_empty() {
            self.first = b;
        }
        while b < self.first {
            self.counts.push_front(0);
            self.first -= 1;
        }
        let i = (b - self.first) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
    }

    /// Removes one read invoked at `t` (which `add` counted).
    fn remove(&mut self, t: u64) {
        let i = ((t >> self.shift) - self.first) as usize;
        self.counts[i] -= 1;
        self.total -= 1;
        while self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.first += 1;
        }
    }

    /// No waiting read was invoked before this.
    fn earliest(&self) -> Option<u64> {
        (!self.counts.is_empty()).then(|| self.first << self.shift)
    }
}

/// The streaming checker. Feed every operation in ledger order with
/// `observe`, collect findings with `take_findings`, end with `finish`.
pub struct Oracle {
    info: RunInfo,
    run_tag: u32,
    /// Every key any write named: its index into `hists` and `newest`...
    index: KeyIndex,
    /// ...and the run's keys, without the prefix, in order, for the key
    /// range of a LIST page.
    ordered: BTreeMap<OrdKey, u32>,
    hists: Vec<KeyHist>,
    newest: Vec<Newest>,
    /// Key tag to key index, to name whose bytes a misdirected read got.
    tags: HashMap<u64, usize>,
    /// Per worker: the latest return of its own (`worker`-origin) operations.
    progress: Vec<u64>,
    /// Every worker has stopped (the final verification began).
    quiescent: bool,
    now_ns: u64,
    /// Reads waiting for their key's owner, per owner, with their key.
    waiting_owner: Vec<VecDeque<(u32, OpRecord)>>,
    /// LIST pages and reads of keys nobody wrote yet, waiting for everyone.
    waiting_all: VecDeque<OpRecord>,
    /// Invocation times of waiting reads, for pruning.
    waiting_invokes: Invokes,
    coverage: Coverage,
    out: Vec<Finding>,
    /// Final-verification reads still without an answer, by key (none
    /// for the LIST walk) and kind: `unrecoverable` unless a later
    /// attempt answers (oracle.md §7).
    final_unanswered: HashMap<(Option<Box<str>>, OpKind), Unanswered>,
}

/// A final read no attempt has answered yet: how many tried, and the
/// finding its last attempt makes if none will.
#[derive(Debug)]
struct Unanswered {
    attempts: u32,
    last: Finding,
}

impl Oracle {
    pub fn new(info: RunInfo) -> Oracle {
        let workers = info.workers as usize;
        Oracle {
            run_tag: run_tag(info.seed),
            index: KeyIndex::default(),
            ordered: BTreeMap::new(),
            hists: Vec::new(),
            newest: Vec::new(),
            tags: HashMap::default(),
            progress: vec![0; workers],
            quiescent: false,
            now_ns: 0,
            waiting_owner: (0..workers).map(|_| VecDeque::new()).collect(),
            waiting_all: VecDeque::new(),
            waiting_invokes: Invokes::new(info.read_span_max_ns),
            coverage: Coverage::default(),
            out: Vec::new(),
            final_unanswered: HashMap::default(),
            info,
        }
    }

    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// Findings produced since the last call.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.out)
    }

    /// Candidate writes held in memory, over every key.
    pub fn held_writes(&self) -> usize {
        self.hists.iter().map(|kh| kh.writes.len()).sum()
    }

    /// Reads waiting for a writer to progress past them.
    pub fn waiting(&self) -> usize {
        self.waiting_invokes.total
    }

    /// Feeds one operation, in ledger order.
    pub fn observe(&mut self, op: OpRecord) {
        self.observe_found(op, None);
    }

    /// `observe` of an operation whose key probably has index `key`
    /// (`KeyIndex::guess`, confirmed here); with `None` the key is looked
    /// up, as it is when the guess was wrong or made before a write filed
    /// the key.
    fn observe_found(&mut self, op: OpRecord, key: Option<usize>) {
        let key = op.key.as_deref().and_then(|k| match key {
            Some(i) if self.index.is(i as u32, KeyRef::of(&self.info.prefix, k)) => Some(i),
            _ => self.find(k),
        });
        self.now_ns = self.now_ns.max(op.t_return_ns);
        if op.origin == Origin::Final && !self.quiescent {
            // The workers have all stopped: nothing more is in flight.
            self.quiescent = true;
            self.release_all(true);
        }
        let progressed = (op.origin == Origin::Worker && !self.quiescent)
            .then_some((op.worker as usize, op.t_return_ns));
        if op.kind.is_write() {
            self.add_write(&op, key);
        } else {
            self.route_read(op, key);
        }
        if let Some((w, t)) = progressed {
            self.advance(w, t);
        }
    }

    /// Judges every read still waiting and returns the verdict.
    pub fn finish(mut self) -> Verdict {
        self.quiescent = true;
        // A waiting read of a complete ledger has every write it needs; one
        // of a runner that died may lack a write that was never recorded.
        let exact = self.info.complete;
        self.release_all(exact);
        self.unrecoverable();
        Verdict {
            findings: self.out,
            coverage: self.coverage,
        }
    }

    fn add_write(&mut self, op: &OpRecord, found: Option<usize>) {
        let (Some(key), Some(generation)) = (&op.key, op.generation) else {
            return;
        };
        let i = match found {
            Some(i) => i,
            None => {
                let i = self.hists.len();
                let name = KeyRef::of(&self.info.prefix, key).owned();
                let tag = key_tag(key);
                self.hists.push(KeyHist {
                    name: key.as_str().into(),
                    key_tag: tag,
                    owner: op.worker,
                    ..KeyHist::default()
                });
                self.newest.push(Newest::default());
                if !name.foreign {
                    self.ordered.insert(OrdKey::of(&name.rest), i as u32);
                }
                self.index.insert(name);
                self.tags.insert(tag, i);
                i
            }
        };
        let horizon = self.horizon();
        let kh = &mut self.hists[i];
        kh.max_generation = kh.max_generation.max(generation);
        match op.outcome {
            Outcome::Fail => {
                kh.failed.push_back((generation, op.id));
                if kh.failed.len() > FAILED_KEPT_MAX {
                    kh.failed.pop_front();
                }
                return;
            }
            Outcome::Ok => self.coverage.writes_acked += 1,
            _ => self.coverage.ambiguous_writes += 1,
        }
        let write = Write {
            op_id: op.id,
            generation,
            deleted: op.kind == OpKind::Delete,
            size: op.size.unwrap_or(0),
            sha256: op.sha256,
            etag: op.etag.as_deref().map(|e| etag_core(e).to_string()),
            t_invoke: op.t_invoke_ns,
            t_return: op.t_return_ns,
            outcome: op.outcome,
        };
        // Generations only grow, but a hand-made history may disagree.
        let at = kh.writes.partition_point(|w| w.generation < generation);
        kh.writes.insert(at, write);
        kh.prune(horizon);
        self.newest[i] = Newest::of(kh);
    }

    /// The index of a key some write named.
    fn find(&self, key: &str) -> Option<usize> {
        self.index
            .find(KeyRef::of(&self.info.prefix, key))
            .map(|i| i as usize)
    }

    /// The earliest invocation any read still to be judged can have.
    fn horizon(&self) -> u64 {
        let span = self.now_ns.saturating_sub(self.info.read_span_max_ns);
        match self.waiting_invokes.earliest() {
            Some(t) => span.min(t),
            None => span,
        }
    }

    fn route_read(&mut self, op: OpRecord, found: Option<usize>) {
        if op.origin == Origin::Final {
            self.note_final(&op);
        }
        if op.outcome != Outcome::Ok {
            if op.outcome == Outcome::Unavailable && op.origin != Origin::Final {
                self.coverage.reads_unavailable += 1;
            }
            return;
        }
        let key = if op.kind == OpKind::List { None } else { found };
        if self.quiescent {
            self.judge(&op, key, true);
            return;
        }
        if key.is_none() && op.kind != OpKind::List && op.http_status == Some(404) {
            // Absent is what a never-written key is: nothing to wait for.
            self.judge(&op, None, true);
            return;
        }
        let owner = key.map(|i| (i, self.hists[i].owner as usize));
        match owner {
            Some((i, w)) if w < self.waiting_owner.len() => {
                if self.progress[w] >= op.t_return_ns {
                    self.judge(&op, key, true);
                } else {
                    self.waiting_invokes.add(op.t_invoke_ns);
                    self.waiting_owner[w].push_back((i as u32, op));
                }
            }
            _ => {
                if self.global_progress() >= op.t_return_ns {
                    self.judge(&op, key, true);
                } else {
                    self.waiting_invokes.add(op.t_invoke_ns);
                    self.waiting_all.push_back(op);
                }
            }
        }
    }

    fn global_progress(&self) -> u64 {
        self.progress.iter().copied().min().unwrap_or(0)
    }

    fn advance(&mut self, w: usize, t: u64) {
        if w >= self.progress.len() {
            self.progress.resize(w + 1, 0);
            self.waiting_owner.resize_with(w + 1, VecDeque::new);
        }
        if t <= self.progress[w] {
            return;
        }
        self.progress[w] = t;
        // Judged where they wait and dropped there: a record is 240 bytes,
        // and moving each out of its queue showed in the profile.
        let mut queue = std::mem::take(&mut self.waiting_owner[w]);
        let ready = queue
            .iter()
            .take_while(|(_, op)| op.t_return_ns <= t)
            .count();
        for (i, op) in queue.range(..ready) {
            self.waiting_invokes.remove(op.t_invoke_ns);
            self.judge(op, Some(*i as usize), true);
        }
        queue.drain(..ready);
        self.waiting_owner[w] = queue;
        if !self.waiting_all.is_empty() {
            let all = self.global_progress();
            let mut queue = std::mem::take(&mut self.waiting_all);
            let ready = queue.iter().take_while(|op| op.t_return_ns <= all).count();
            for op in queue.range(..ready) {
                self.waiting_invokes.remove(op.t_invoke_ns);
                self.judge(op, None, true);
            }
            queue.drain(..ready);
            self.waiting_all = queue;
        }
    }

    /// Judges every waiting read; `exact` says whether their writes are
    /// certainly all known.
    fn release_all(&mut self, exact: bool) {
        let mut waiting: Vec<(Option<usize>, OpRecord)> = self
            .waiting_owner
            .iter_mut()
            .flat_map(std::mem::take)
            .map(|(i, op)| (Some(i as usize), op))
            .collect();
        waiting.extend(
            std::mem::take(&mut self.waiting_all)
                .into_iter()
                .map(|op| (None, op)),
        );
        self.waiting_invokes = Invokes::new(self.info.read_span_max_ns);
        // Judge in ledger order, as an online check would have.
        waiting.sort_by_key(|(_, op)| op.id);
        for (key, op) in &waiting {
            self.judge(op, *key, exact);
        }
    }

    /// Judges one read; `key` is its key's index when already looked up.
    fn judge(&mut self, op: &OpRecord, key: Option<usize>, exact: bool) {
        let is_final = op.origin == Origin::Final;
        let findings = if op.kind == OpKind::List {
            match self.check_page(op) {
                Some((findings, keys)) => {
                    self.coverage.list_pages_checked += 1;
                    self.coverage.list_keys_checked += keys;
                    if is_final {
                        self.coverage.final_list_pages_checked += 1;
                    }
                    findings
                }
                None => return,
            }
        } else {
            match self.check_read(op, key) {
                Some(findings) => {
                    self.coverage.reads_checked += 1;
                    if is_final {
                        self.coverage.final_reads_checked += 1;
                    }
                    findings
                }
                None => {
                    self.coverage.reads_unknown += 1;
                    return;
                }
            }
        };
        if !exact && !findings.is_empty() {
            // A write this read saw may have gone unrecorded.
            self.coverage.reads_unknown += 1;
            self.coverage.reads_checked -= u64::from(op.kind != OpKind::List);
            return;
        }
        self.out.extend(findings.into_iter().map(|f| Finding {
            final_read: is_final,
            ..f
        }));
    }

    /// Notes a final-verification read: one that got no answer waits
    /// for a later attempt of the same read (the same key and kind, or the
    /// LIST walk's same page); one answered clears what waited.
    fn note_final(&mut self, op: &OpRecord) {
        let slot = (op.key.as_deref().map(Box::from), op.kind);
        if op.outcome == Outcome::Ok {
            self.final_unanswered.remove(&slot);
            return;
        }
        let entry = self.final_unanswered.entry(slot).or_insert(Unanswered {
            attempts: 0,
            last: Finding {
                class: Class::Unrecoverable,
                key: op.key.clone(),
                op_id: 0,
                t_invoke_ns: 0,
                t_ns: 0,
                expected: String::new(),
                seen: String::new(),
                writes: Vec::new(),
                final_read: true,
                since_ack_ns: None,
            },
        });
        entry.attempts += 1;
        let what = match op.kind {
            OpKind::List => "the final LIST of the prefix".to_string(),
            k => format!("the final {}", k.as_str().to_uppercase()),
        };
        let answer = op.http_status.map_or_else(
            || {
                op.error_class
                    .map_or("no answer".into(), |c| c.as_str().to_string())
            },
            |s| format!("HTTP {s}"),
        );
        let last = &mut entry.last;
        last.op_id = op.id;
        last.t_invoke_ns = op.t_invoke_ns;
        last.t_ns = op.t_return_ns;
        last.expected = format!("{what} answered by one of its attempts");
        last.seen = format!(
            "{} attempt{} without an answer, the last {} ({answer})",
            entry.attempts,
            if entry.attempts == 1 { "" } else { "s" },
            op.outcome.as_str(),
        );
    }

    /// The final reads no attempt got an answer to, in the order of their
    /// last attempts.
    fn unrecoverable(&mut self) {
        let mut left: Vec<Finding> = std::mem::take(&mut self.final_unanswered)
            .into_values()
            .map(|u| u.last)
            .collect();
        left.sort_by_key(|f| f.op_id);
        self.out.extend(left);
    }
}

/// Checks a whole history at once (tests, benchmarks).
pub fn check(info: &RunInfo, ops: impl IntoIterator<Item = OpRecord>) -> Verdict {
    let mut oracle = Oracle::new(info.clone());
    oracle.observe_all(&mut ops.into_iter().collect());
    oracle.finish()
}

#[cfg(test)]
mod tests;
