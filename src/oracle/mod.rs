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

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use compact_str::CompactString;
/// Keys are trusted strings of our own: a fast hash (foldhash), not SipHash.
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::history::OpRecord;
use crate::history::body::slice_sha256;
use crate::history::body::{Body, key_tag, run_tag};
use crate::history::{OpKind, Origin, Outcome, TraceDetail};

mod page;
pub mod synth;

use page::PAGE_ENTRIES;

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

/// A candidate write of one key.
#[derive(Debug, Clone)]
struct Write {
    op_id: u64,
    generation: u64,
    deleted: bool,
    size: u64,
    sha256: Option<[u8; 32]>,
    /// The ETag the store answered the write with (acknowledged writes).
    etag: Option<String>,
    t_invoke: u64,
    t_return: u64,
    outcome: Outcome,
}

impl Write {
    fn describe(&self) -> String {
        if self.deleted {
            format!("absent (DELETE g{})", self.generation)
        } else {
            format!("g{} ({} bytes)", self.generation, self.size)
        }
    }

    fn witness(&self) -> WitnessWrite {
        WitnessWrite {
            op_id: self.op_id,
            generation: self.generation,
            deleted: self.deleted,
            size: self.size,
            t_invoke_ns: self.t_invoke,
            t_return_ns: self.t_return,
            outcome: self.outcome,
        }
    }
}

/// The allowed set for one read interval: base (or the initial Absent when
/// there is none) and later, minus what is older than `floor` (the newest
/// generation an earlier read saw, under the linearizable contract).
struct Allowed<'a> {
    base: Option<&'a Write>,
    later: &'a [Write],
    floor: u64,
}

impl<'a> Allowed<'a> {
    fn unfiltered(&self) -> impl Iterator<Item = &'a Write> {
        self.base.into_iter().chain(self.later.iter())
    }

    fn values(&self) -> impl Iterator<Item = &'a Write> {
        let floor = self.floor;
        self.unfiltered().filter(move |w| w.generation >= floor)
    }

    fn initial_allowed(&self) -> bool {
        self.base.is_none() && self.floor == 0
    }

    fn absent_allowed(&self) -> bool {
        self.initial_allowed() || self.values().any(|w| w.deleted)
    }

    fn present(&self) -> impl Iterator<Item = &'a Write> {
        self.values().filter(|w| !w.deleted)
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.initial_allowed() {
            parts.push("absent (never written)".into());
        }
        parts.extend(self.values().map(Write::describe));
        if parts.is_empty() {
            return format!("nothing older than g{} (seen earlier)", self.floor);
        }
        parts.join(" or ")
    }

    fn witness(&self) -> Vec<WitnessWrite> {
        self.unfiltered().map(Write::witness).collect()
    }

    /// How long after base was acknowledged a read invoked at `t_invoke`
    /// began.
    fn since_ack(&self, t_invoke: u64) -> Option<u64> {
        self.base.map(|b| t_invoke.saturating_sub(b.t_return))
    }
}

/// The allowed set of one key's candidate writes for a read interval.
fn allowed_of(list: &[Write], t_invoke: u64, t_return: u64, floor: u64) -> Allowed<'_> {
    // The common case: the last write was acknowledged before the read began.
    if let Some(last) = list.last()
        && last.t_return < t_invoke
        && last.outcome == Outcome::Ok
    {
        return Allowed {
            base: Some(last),
            later: &[],
            floor,
        };
    }
    // Writes of a key never overlap, so returns are sorted too.
    let returned_before = list.partition_point(|w| w.t_return < t_invoke);
    let base_index = list[..returned_before]
        .iter()
        .rposition(|w| w.outcome == Outcome::Ok);
    let from = base_index.map_or(0, |i| i + 1);
    let started_before = list.partition_point(|w| w.t_invoke < t_return).max(from);
    Allowed {
        base: base_index.map(|i| &list[i]),
        later: &list[from..started_before],
        floor,
    }
}

/// Failed generations remembered per key, for naming phantoms.
const FAILED_KEPT_MAX: usize = 64;
/// Pruned values remembered per key, for naming stale LIST entries.
const PAST_KEPT_MAX: usize = 16;

/// A value pruned from a key's candidates, compactly: enough to recognise
/// it on a LIST page and to cite its write.
#[derive(Debug, Clone, Copy)]
struct Past {
    op_id: u64,
    generation: u64,
    /// An ambiguous DELETE (kept to name a late one); never a LIST entry.
    deleted: bool,
    size: u64,
    etag: Option<u64>,
    t_invoke: u64,
    t_return: u64,
    outcome: Outcome,
}

/// An ETag without its quotes: how the oracle compares them.
fn etag_core(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// A 64-bit digest of an ETag: two different ETags of one key agreeing on
/// it (odds 2^-64) would pass a LIST entry unchecked.
fn etag_hash(etag: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(etag)
}

/// A key as the oracle files it. Every key the workload writes starts with
/// the run's prefix, so it is kept without it (`w003/k00025`), short
/// enough to live inline: comparing and ordering keys then reads no memory
/// but the key's own, where a pointer to each name cost a cache miss per
/// lookup and per key a LIST page covers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyName {
    /// The key lacks the run's prefix and is kept whole.
    foreign: bool,
    rest: CompactString,
}

impl KeyName {
    fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            foreign: self.foreign,
            rest: &self.rest,
        }
    }
}

/// A borrowed `KeyName`, to look a key up without building one.
#[derive(Clone, Copy)]
struct KeyRef<'a> {
    foreign: bool,
    rest: &'a str,
}

impl<'a> KeyRef<'a> {
    fn of(prefix: &str, key: &'a str) -> KeyRef<'a> {
        match key.strip_prefix(prefix) {
            Some(rest) => KeyRef {
                foreign: false,
                rest,
            },
            None => KeyRef {
                foreign: true,
                rest: key,
            },
        }
    }

    fn owned(&self) -> KeyName {
        KeyName {
            foreign: self.foreign,
            rest: CompactString::new(self.rest),
        }
    }
}

/// Key to key index: an open-addressing table (linear probing, at most
/// three quarters full) of the indices with 32 more bits of each key's
/// hash, the names densely beside it in index order. Its own rather than a
/// general map's so that a lookup can be split: `hash` and `prefetch` an
/// operation's slot early, `guess` (hash alone, touching no name) when the
/// slot has arrived, `is` to confirm the guess at the operation's turn.
/// Over a hundred thousand keys each step is otherwise a cache miss the
/// check waits for.
struct KeyIndex {
    /// `index + 1` in the low half, the hash's high half above; 0 is empty.
    slots: Vec<u64>,
    names: Vec<KeyName>,
    hasher: foldhash::fast::RandomState,
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex {
            slots: vec![0; 1024],
            names: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl KeyIndex {
    fn hash(&self, k: KeyRef<'_>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((k.foreign, k.rest))
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Asks for the slot a key of `hash` starts its probe at.
    fn prefetch(&self, hash: u64) {
        prefetch(&self.slots[hash as usize & self.mask()]);
    }

    fn is(&self, i: u32, k: KeyRef<'_>) -> bool {
        let n = &self.names[i as usize];
        n.foreign == k.foreign && n.rest == k.rest
    }

    /// The index whose hash is `hash` and, if given, whose name is `confirm`.
    fn probe(&self, hash: u64, confirm: Option<KeyRef<'_>>) -> Option<u32> {
        let high = hash >> 32;
        let mut at = hash as usize & self.mask();
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            let i = (slot as u32).wrapping_sub(1);
            if slot >> 32 == high && confirm.is_none_or(|k| self.is(i, k)) {
                return Some(i);
            }
            at = (at + 1) & self.mask();
        }
    }

    fn find(&self, k: KeyRef<'_>) -> Option<u32> {
        self.probe(self.hash(k), Some(k))
    }

    /// The index of a key whose hash is `hash`: almost always the key's.
    fn guess(&self, hash: u64) -> Option<u32> {
        self.probe(hash, None)
    }

    /// Files a key not filed yet under the next index.
    fn insert(&mut self, name: KeyName) -> u32 {
        let i = self.names.len() as u32;
        self.names.push(name);
        if self.names.len() * 4 > self.slots.len() * 3 {
            self.slots = vec![0; self.slots.len() * 2];
            for j in 0..self.names.len() as u32 {
                self.place(j);
            }
        } else {
            self.place(i);
        }
        i
    }

    fn place(&mut self, i: u32) {
        let hash = self.hash(self.names[i as usize].as_ref());
        let mut at = hash as usize & self.mask();
        while self.slots[at] != 0 {
            at = (at + 1) & self.mask();
        }
        self.slots[at] = (hash >> 32) << 32 | u64::from(i + 1);
    }
}

/// A run key (without the prefix) as the ordered map files it: its first
/// 16 bytes as one big-endian number ahead of the whole, so that ordering
/// two keys is mostly one integer comparison (the workload's keys,
/// `w003/k00025`, fit in it) where it was a call to memcmp, a dozen per
/// search of the map, two searches per LIST page.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrdKey {
    head: u128,
    rest: CompactString,
}

impl OrdKey {
    fn of(rest: &str) -> OrdKey {
        let mut head = [0u8; 16];
        let n = rest.len().min(16);
        head[..n].copy_from_slice(&rest.as_bytes()[..n]);
        OrdKey {
            head: u128::from_be_bytes(head),
            rest: CompactString::new(rest),
        }
    }
}

impl Ord for OrdKey {
    /// The order of the strings: where the padded heads differ, at a byte
    /// both have or where the shorter one ends, the strings differ first.
    fn cmp(&self, other: &OrdKey) -> Ordering {
        self.head
            .cmp(&other.head)
            .then_with(|| self.rest.as_bytes().cmp(other.rest.as_bytes()))
    }
}

impl PartialOrd for OrdKey {
    fn partial_cmp(&self, other: &OrdKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// How full key `key` orders against the run's key `prefix` + `rest`.
fn cmp_run_key(key: &str, prefix: &str, rest: &str) -> Ordering {
    match key.strip_prefix(prefix) {
        Some(k) => k.cmp(rest),
        None => key.cmp(prefix),
    }
}

/// The run's keys (as `rest` after its prefix) a LIST page covers: those
/// after the page's lower bound `after` and, on a truncated page, up to
/// its last entry `upper`. `None` when no key with the prefix can be in
/// the page's range.
fn run_key_range<'a>(
    prefix: &str,
    after: Option<&'a str>,
    upper: Option<&'a str>,
) -> Option<(Bound<&'a str>, Bound<&'a str>)> {
    let lower = match after {
        // From the prefix on, the prefix itself excluded.
        None => Bound::Excluded(""),
        Some(a) => match a.strip_prefix(prefix) {
            Some(rest) => Bound::Excluded(rest),
            None if a < prefix => Bound::Unbounded,
            // Past every key with the prefix.
            None => return None,
        },
    };
    let upper = match upper {
        None => Bound::Unbounded,
        Some(u) => match u.strip_prefix(prefix) {
            Some(rest) => Bound::Included(rest),
            None if u < prefix => return None,
            None => Bound::Unbounded,
        },
    };
    // A page whose last entry is not after its lower bound (a protocol
    // finding of its own) covers nothing; `BTreeMap::range` would panic.
    if let (Bound::Excluded(l), Bound::Included(u)) = (lower, upper)
        && u < l
    {
        return None;
    }
    Some((lower, upper))
}

impl Past {
    fn of(w: &Write) -> Past {
        Past {
            op_id: w.op_id,
            generation: w.generation,
            deleted: w.deleted,
            size: w.size,
            etag: w.etag.as_deref().map(etag_hash),
            t_invoke: w.t_invoke,
            t_return: w.t_return,
            outcome: w.outcome,
        }
    }

    fn listed_as(&self, size: u64, etag: Option<&str>) -> bool {
        !self.deleted
            && self.size == size
            && match (self.etag, etag) {
                (Some(a), Some(b)) => a == etag_hash(b),
                _ => true,
            }
    }

    fn witness(&self) -> WitnessWrite {
        WitnessWrite {
            op_id: self.op_id,
            generation: self.generation,
            deleted: self.deleted,
            size: self.size,
            t_invoke_ns: self.t_invoke,
            t_return_ns: self.t_return,
            outcome: self.outcome,
        }
    }
}

/// What the oracle keeps of one key.
#[derive(Debug, Default)]
struct KeyHist {
    name: Box<str>,
    /// `key_tag(name)`.
    key_tag: u64,
    owner: u32,
    /// Candidate writes (`ok`, `ambiguous`) still needed, by generation.
    writes: Vec<Write>,
    /// Recent writes that certainly failed: (generation, op id).
    failed: VecDeque<(u64, u64)>,
    /// The last values pruned from `writes`, to name an old value a LIST
    /// shows (its size and ETag are all a page says).
    past: VecDeque<Past>,
    /// The highest generation any write of this key carried.
    max_generation: u64,
    /// Reads invoked before this were already past when writes were dropped.
    dropped_before_ns: u64,
    /// Linearizable: (read's return, generation it saw), recent ones.
    observed: VecDeque<(u64, u64)>,
    /// Linearizable: the newest generation seen by a dropped observation.
    observed_floor: u64,
}

impl KeyHist {
    fn floor_for(&self, contract: Contract, t_invoke: u64) -> u64 {
        if contract != Contract::Linearizable {
            return 0;
        }
        self.observed
            .iter()
            .filter(|(t, _)| *t < t_invoke)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(0)
            .max(self.observed_floor)
    }

    fn allowed(&self, contract: Contract, t_invoke: u64, t_return: u64) -> Allowed<'_> {
        let floor = self.floor_for(contract, t_invoke);
        allowed_of(&self.writes, t_invoke, t_return, floor)
    }

    /// Asks for the candidate writes (the first few) and, for a write,
    /// the slot in `past` its prune would fill.
    fn prefetch(&self, write: bool) {
        let held = &self.writes[..self.writes.len().min(4)];
        prefetch_raw(held.as_ptr().cast(), std::mem::size_of_val(held));
        if write {
            // Full, the ring's next value takes the oldest one's place.
            let slot = if self.past.len() == PAST_KEPT_MAX {
                self.past.front()
            } else {
                self.past.back()
            };
            if let Some(p) = slot {
                prefetch(p);
            }
        }
    }

    /// An abandoned (ambiguous) DELETE older than `base`, held or pruned:
    /// what a read that found the key absent after `base` saw applied late.
    fn abandoned_delete(&self, base: Option<&Write>) -> Option<Past> {
        let base = base.filter(|b| !b.deleted)?.generation;
        let late = |deleted: bool, outcome: Outcome, g: u64| {
            deleted && outcome == Outcome::Ambiguous && g < base
        };
        self.writes
            .iter()
            .rev()
            .find(|w| late(w.deleted, w.outcome, w.generation))
            .map(Past::of)
            .or_else(|| {
                self.past
                    .iter()
                    .rev()
                    .find(|p| late(p.deleted, p.outcome, p.generation))
                    .copied()
            })
    }

    /// Drops what no read invoked at or after `horizon` can need.
    fn prune(&mut self, horizon: u64) {
        let returned_before = self.writes.partition_point(|w| w.t_return < horizon);
        if let Some(b) = self.writes[..returned_before]
            .iter()
            .rposition(|w| w.outcome == Outcome::Ok)
            && b > 0
        {
            // Present values, to name a LIST entry showing one, and
            // abandoned DELETEs, to name a late one.
            let keep = |w: &Write| !w.deleted || w.outcome == Outcome::Ambiguous;
            for w in self.writes.drain(..b).filter(keep) {
                if self.past.len() == PAST_KEPT_MAX {
                    self.past.pop_front();
                } else if self.past.capacity() == 0 {
                    // Once, not in three steps of growth: a key's ring fills.
                    self.past.reserve_exact(PAST_KEPT_MAX);
                }
                self.past.push_back(Past::of(&w));
            }
            self.dropped_before_ns = self.dropped_before_ns.max(horizon);
        }
        while let Some(&(t, g)) = self.observed.front()
            && t < horizon
        {
            self.observed_floor = self.observed_floor.max(g);
            self.observed.pop_front();
        }
    }
}

/// A key's newest candidate write as a LIST page needs it, kept densely
/// apart from the key's history: a page's walk over the keys it covers
/// reads one small record per key (all asked for at once, see
/// `check_page`) and, in the common case that the write was acknowledged
/// before the page was asked for, no more.
#[derive(Debug, Clone, Copy, Default)]
struct Newest {
    /// Reads invoked before this are too old to judge (`KeyHist`'s).
    dropped_before_ns: u64,
    t_return: u64,
    size: u64,
    etag: Option<u64>,
    /// The key has a newest candidate write and it was acknowledged.
    acked: bool,
    deleted: bool,
}

impl Newest {
    fn of(kh: &KeyHist) -> Newest {
        let dropped_before_ns = kh.dropped_before_ns;
        match kh.writes.last() {
            Some(w) => Newest {
                dropped_before_ns,
                t_return: w.t_return,
                size: w.size,
                etag: w.etag.as_deref().map(etag_hash),
                acked: w.outcome == Outcome::Ok,
                deleted: w.deleted,
            },
            None => Newest {
                dropped_before_ns,
                ..Newest::default()
            },
        }
    }

    /// Under read-after-write, is `listed` (the key's entry on a page
    /// invoked at `t_invoke`, or none) certainly allowed because this
    /// acknowledged write is the only value allowed and it shows it? When
    /// false the page is judged on the key's whole history.
    fn shows(&self, t_invoke: u64, listed: Option<(u64, Option<&str>)>) -> bool {
        self.acked
            && self.t_return < t_invoke
            && match listed {
                None => self.deleted,
                Some((size, etag)) => {
                    !self.deleted
                        && self.size == size
                        && match (self.etag, etag) {
                            (Some(a), Some(b)) => a == etag_hash(b),
                            _ => true,
                        }
                }
            }
    }
}

/// What a read observed.
#[derive(Debug, Clone, Copy)]
enum Seen<'a> {
    Absent,
    Body {
        size: u64,
        sha: [u8; 32],
        generation: Option<u64>,
    },
    Head {
        size: Option<u64>,
        generation: Option<u64>,
    },
    Range {
        first: u64,
        last: u64,
        total: u64,
        sha: [u8; 32],
        generation: Option<u64>,
        spec: &'a str,
    },
    /// A 416 to a Range GET: the object is shorter than the range's first
    /// byte; `total` is its size if the answer said (`bytes */total`).
    Unsatisfiable {
        spec: &'a str,
        total: Option<u64>,
    },
}

impl Seen<'_> {
    fn of(op: &OpRecord) -> Option<Seen<'_>> {
        if op.http_status == Some(404) {
            return Some(Seen::Absent);
        }
        if op.http_status == Some(416) && op.kind == OpKind::Range {
            return Some(Seen::Unsatisfiable {
                spec: op.range_header.as_deref().unwrap_or(""),
                total: op.size,
            });
        }
        Some(match op.kind {
            OpKind::Get => Seen::Body {
                size: op.size?,
                sha: op.sha256?,
                generation: op.generation,
            },
            OpKind::Head => Seen::Head {
                size: op.size,
                generation: op.generation,
            },
            OpKind::Range => match op.range {
                Some((first, last)) => Seen::Range {
                    first,
                    last,
                    total: op.size?,
                    sha: op.sha256?,
                    generation: op.generation,
                    spec: op.range_header.as_deref().unwrap_or(""),
                },
                // A 200 to a range request carries the whole object.
                None => Seen::Body {
                    size: op.size?,
                    sha: op.sha256?,
                    generation: op.generation,
                },
            },
            _ => return None,
        })
    }

    fn describe(&self) -> String {
        match self {
            Seen::Absent => "absent (404)".into(),
            Seen::Body {
                size, generation, ..
            } => format!("{size} bytes, metadata generation {}", gen_str(*generation)),
            Seen::Head { size, generation } => format!(
                "HEAD size {}, metadata generation {}",
                size.map_or("?".into(), |s| s.to_string()),
                gen_str(*generation)
            ),
            Seen::Range {
                first,
                last,
                total,
                generation,
                ..
            } => {
                format!(
                    "bytes {first}-{last}/{total}, metadata generation {}",
                    gen_str(*generation)
                )
            }
            Seen::Unsatisfiable { spec, total } => format!(
                "416 (unsatisfiable) for {spec}{}",
                total.map_or(String::new(), |t| format!(", object size {t}"))
            ),
        }
    }

    fn generation(&self) -> Option<u64> {
        match self {
            Seen::Absent | Seen::Unsatisfiable { .. } => None,
            Seen::Body { generation, .. }
            | Seen::Head { generation, .. }
            | Seen::Range { generation, .. } => *generation,
        }
    }
}

fn gen_str(g: Option<u64>) -> String {
    g.map_or("none".into(), |g| format!("g{g}"))
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

    /// Feeds operations in ledger order, as `observe` one by one would,
    /// draining `ops`, but prepares each operation's lookup ahead of its
    /// turn: over many keys every step of a lookup is a cache miss, which
    /// this lets the processor serve while it judges the operations
    /// before. 3 x AHEAD operations ahead the operation's record, its
    /// key's bytes and the start of a page's text are asked for,
    /// 2 x AHEAD ahead the key is hashed and its slot asked for, AHEAD
    /// ahead the slot gives a guessed index whose state is asked for, and
    /// halfway from there the key's first candidate writes and, for a
    /// write, the past-values slot its prune fills (`KeyHist::prefetch`).
    pub fn observe_all(&mut self, ops: &mut Vec<OpRecord>) {
        const AHEAD: usize = 16;
        const RING: usize = 4 * AHEAD;
        let prefix = self.info.prefix.clone();
        // Key hashes and guessed key indices, by position modulo RING.
        let mut hashes = [None; RING];
        let mut guessed = [None; RING];
        let mut ops = ops.drain(..);
        let first = ops.as_slice();
        for (p, op) in first.iter().take(2 * AHEAD).enumerate() {
            hashes[p] = self.hash_ahead(&prefix, op);
        }
        for p in 0..AHEAD.min(first.len()) {
            guessed[p] = self.look_ahead(hashes[p]);
        }
        let mut j = 0;
        while let Some(op) = ops.next() {
            // rest[k] is the operation at position j + 1 + k.
            let rest = ops.as_slice();
            if let Some(far) = rest.get(3 * AHEAD - 1) {
                prefetch(far);
                if let Some(k) = &far.key {
                    prefetch_bytes(k.as_bytes());
                }
                if let Some(d) = &far.detail {
                    prefetch_bytes(&d.as_bytes()[..d.len().min(128)]);
                }
            }
            if let Some(a) = rest.get(2 * AHEAD - 1) {
                hashes[(j + 2 * AHEAD) % RING] = self.hash_ahead(&prefix, a);
            }
            if rest.len() >= AHEAD {
                let p = (j + AHEAD) % RING;
                guessed[p] = self.look_ahead(hashes[p]);
            }
            if let Some(near) = rest.get(AHEAD / 2 - 1)
                && let Some(i) = guessed[(j + AHEAD / 2) % RING]
            {
                self.hists[i].prefetch(near.kind.is_write());
            }
            self.observe_found(op, guessed[j % RING]);
            j += 1;
        }
    }

    /// The hash of `op`'s key, its slot asked for.
    fn hash_ahead(&self, prefix: &str, op: &OpRecord) -> Option<u64> {
        let hash = self.index.hash(KeyRef::of(prefix, op.key.as_deref()?));
        self.index.prefetch(hash);
        Some(hash)
    }

    /// The index a key of `hash` probably has, its state asked for.
    fn look_ahead(&self, hash: Option<u64>) -> Option<usize> {
        let i = self.index.guess(hash?)? as usize;
        prefetch(&self.index.names[i]);
        prefetch(&self.hists[i]);
        prefetch(&self.newest[i]);
        Some(i)
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

    /// Does what was seen equal write `w`'s value?
    fn matches(&self, kh: &KeyHist, seen: &Seen<'_>, w: &Write) -> bool {
        match *seen {
            Seen::Absent => w.deleted,
            _ if w.deleted => false,
            Seen::Body { size, sha, .. } => size == w.size && w.sha256 == Some(sha),
            Seen::Head { size, generation } => {
                size == Some(w.size) && generation.is_none_or(|g| g == w.generation)
            }
            Seen::Range { total, .. } => {
                total == w.size && self.is_range_of(kh, seen, w.generation)
            }
            Seen::Unsatisfiable { spec, total } => {
                expected_range(spec, w.size).is_none() && total.is_none_or(|t| t == w.size)
            }
        }
    }

    /// Is a Range answer the requested slice of generation `g` (of the
    /// size the answer reports)?
    fn is_range_of(&self, kh: &KeyHist, seen: &Seen<'_>, g: u64) -> bool {
        let Seen::Range {
            first,
            last,
            total,
            sha,
            spec,
            ..
        } = *seen
        else {
            return false;
        };
        expected_range(spec, total) == Some((first, last))
            && self.holds_claimed_slice(kh, g, total, (first, last), sha)
    }

    /// Are `sha`'s bytes the slice `first..=last` a Range answer claims, of
    /// generation `g` of `size` bytes (the claim cut at the object's end)?
    /// Whether the claim is the one the request asked for is the caller's
    /// question.
    fn holds_claimed_slice(
        &self,
        kh: &KeyHist,
        g: u64,
        size: u64,
        (first, last): (u64, u64),
        sha: [u8; 32],
    ) -> bool {
        let end = last.saturating_add(1).min(size);
        first <= end && self.slice_sha(kh, g, size, first, end) == sha
    }

    fn slice_sha(
        &self,
        kh: &KeyHist,
        generation: u64,
        size: u64,
        start: u64,
        end: u64,
    ) -> [u8; 32] {
        let body = Body::with_tags(
            self.info.seed,
            &kh.name,
            generation,
            size,
            kh.key_tag,
            self.run_tag,
        );
        if start == 0 && end == size {
            body.sha256()
        } else {
            slice_sha256(&body, start, end)
        }
    }

    /// Are these bytes exactly generation `g` of `kh`'s key (whose write this
    /// oracle no longer holds)? Recomputed from the seed; a HEAD carries
    /// no bytes and is taken at its word.
    fn is_generation(&self, kh: &KeyHist, seen: &Seen<'_>, g: u64) -> bool {
        match *seen {
            // A 416 carries no bytes, and the size of a dropped write is
            // not kept.
            Seen::Absent | Seen::Unsatisfiable { .. } => false,
            Seen::Head { .. } => true,
            Seen::Body { size, sha, .. } => self.slice_sha(kh, g, size, 0, size) == sha,
            Seen::Range { .. } => self.is_range_of(kh, seen, g),
        }
    }

    /// Checks one read (of the key with index `known`, if looked up);
    /// `None` if it cannot be decided.
    fn check_read(&mut self, op: &OpRecord, known: Option<usize>) -> Option<Vec<Finding>> {
        let key = op.key.as_deref()?;
        let seen = Seen::of(op)?;
        let contract = self.info.contract;
        let Some(i) = known.or_else(|| self.find(key)) else {
            // Nobody ever wrote this key (everyone has progressed past it).
            let finding = self.name_unknown_key(op, key, &seen);
            return Some(finding.into_iter().collect());
        };
        let kh = &self.hists[i];
        if op.t_invoke_ns < kh.dropped_before_ns {
            return None;
        }
        let allowed = kh.allowed(contract, op.t_invoke_ns, op.t_return_ns);
        let verdict = self.name_read(op, key, kh, &allowed, &seen);
        let observed = match &verdict {
            Ok(g) => *g,
            Err(_) => None,
        };
        if contract == Contract::Linearizable
            && let Some(g) = observed
            && g > 0
        {
            self.hists[i].observed.push_back((op.t_return_ns, g));
        }
        Some(match verdict {
            Ok(_) => Vec::new(),
            Err((class, seen_text, mut writes)) => {
                let kh = &self.hists[i];
                let allowed = kh.allowed(contract, op.t_invoke_ns, op.t_return_ns);
                let mut witness = allowed.witness();
                witness.append(&mut writes);
                vec![Finding {
                    class,
                    key: Some(key.to_string()),
                    op_id: op.id,
                    t_invoke_ns: op.t_invoke_ns,
                    t_ns: op.t_return_ns,
                    expected: allowed.describe(),
                    seen: seen_text,
                    writes: witness,
                    final_read: false,
                    since_ack_ns: allowed.since_ack(op.t_invoke_ns),
                }]
            }
        })
    }

    fn key_of_tag(&self, tag: u64) -> &str {
        self.tags
            .get(&tag)
            .map_or("an unknown key of this run", |&i| &self.hists[i].name)
    }

    /// A present value for a key nobody wrote.
    fn name_unknown_key(&self, op: &OpRecord, key: &str, seen: &Seen<'_>) -> Option<Finding> {
        if let Seen::Absent = seen {
            return None;
        }
        let (class, what) = match trace_of(op) {
            Some(t) if t.run_tag == self.run_tag && t.key_tag != key_tag(key) => (
                Class::Misdirected,
                format!("bytes of {} g{}", self.key_of_tag(t.key_tag), t.generation),
            ),
            _ => (Class::Phantom, "a value for a key never written".into()),
        };
        Some(Finding {
            class,
            key: Some(key.to_string()),
            op_id: op.id,
            t_invoke_ns: op.t_invoke_ns,
            t_ns: op.t_return_ns,
            expected: "absent (never written)".into(),
            seen: format!("{what} ({})", seen.describe()),
            writes: Vec::new(),
            final_read: false,
            since_ack_ns: None,
        })
    }

    /// `Ok(generation seen)` if the value is allowed (0 for the initial
    /// Absent or when several generations match); otherwise the class, what
    /// was seen, and extra witness writes.
    #[allow(clippy::type_complexity)]
    fn name_read(
        &self,
        op: &OpRecord,
        key: &str,
        kh: &KeyHist,
        allowed: &Allowed<'_>,
        seen: &Seen<'_>,
    ) -> Result<Option<u64>, (Class, String, Vec<WitnessWrite>)> {
        let fail = |class: Class, text: String| Err((class, text, Vec::new()));
        // A value outside the allowed set, named by the write it shows.
        let shown = |m: &Write| {
            let class = seen_class(m.generation, m.outcome, allowed.base);
            let late = match class {
                Class::LateWrite => late_text(&Past::of(m), allowed.base),
                _ => String::new(),
            };
            Err((
                class,
                format!("{}{late} ({})", m.describe(), seen.describe()),
                vec![m.witness()],
            ))
        };
        if let Seen::Absent = seen
            && allowed.absent_allowed()
        {
            let g = allowed
                .values()
                .filter(|w| w.deleted)
                .map(|w| w.generation)
                .min();
            return Ok(if allowed.initial_allowed() { None } else { g });
        }
        // Bytes can be identical under two generations (every empty body
        // is), so an allowed value must match the content and whatever
        // generation the metadata names.
        let names = |w: &Write| {
            seen.generation()
                .is_none_or(|g| w.deleted || g == w.generation)
        };
        let mut matching = allowed
            .values()
            .filter(|w| self.matches(kh, seen, w) && names(w));
        if let Some(first) = matching.next() {
            return Ok(Some(first.generation));
        }
        // Allowed but for an earlier read having seen something newer.
        if allowed.floor > 0
            && let Some(old) = allowed
                .unfiltered()
                .find(|w| self.matches(kh, seen, w) && names(w))
        {
            return fail(
                Class::NonMonotonic,
                format!(
                    "{} ({}), older than g{} which an earlier read saw",
                    old.describe(),
                    seen.describe(),
                    allowed.floor
                ),
            );
        }
        if let Seen::Absent = seen
            && allowed.floor > 0
            && (allowed.base.is_none() || allowed.unfiltered().any(|w| w.deleted))
        {
            return fail(
                Class::NonMonotonic,
                format!(
                    "{}, older than g{} which an earlier read saw",
                    seen.describe(),
                    allowed.floor
                ),
            );
        }
        let all = &kh.writes;
        if let Some(v) = allowed.values().find(|w| self.matches(kh, seen, w)) {
            // Allowed bytes under another generation's metadata: if that
            // generation was written with the same bytes, that is what was seen.
            let g = seen.generation().unwrap_or_default();
            if let Some(m) = all
                .iter()
                .find(|w| w.generation == g && self.matches(kh, seen, w))
            {
                return shown(m);
            }
            return fail(
                Class::MetadataMismatch,
                format!(
                    "the bytes of g{} with metadata generation g{g}",
                    v.generation
                ),
            );
        }
        if let Seen::Absent = seen {
            // Absent is also the value of a DELETE the client abandoned.
            if let Some(d) = kh.abandoned_delete(allowed.base) {
                return Err((
                    Class::LateWrite,
                    format!(
                        "{}: the DELETE g{}{}",
                        seen.describe(),
                        d.generation,
                        late_text(&d, allowed.base)
                    ),
                    vec![d.witness()],
                ));
            }
            return fail(Class::LostWrite, seen.describe());
        }
        // A value outside the allowed set: name it by what it was.
        if let Some(m) = all.iter().find(|w| self.matches(kh, seen, w) && names(w)) {
            return shown(m);
        }
        // The block headers inside the bytes outweigh a generation number in
        // a header: another key's bytes are misdirected, whatever their metadata.
        let trace = trace_of(op);
        if let Some(t) = trace
            && t.run_tag == self.run_tag
            && t.key_tag != key_tag(key)
        {
            let other = self.key_of_tag(t.key_tag);
            return fail(
                Class::Misdirected,
                format!("bytes of {other} g{} ({})", t.generation, seen.describe()),
            );
        }
        let claimed = seen.generation().or(trace.map(|t| t.generation));
        if let Some(g) = claimed
            && let Some((_, failed_op)) = kh.failed.iter().find(|(fg, _)| *fg == g)
        {
            return fail(
                Class::Phantom,
                format!(
                    "g{g}, whose write (op {failed_op}) certainly failed ({})",
                    seen.describe()
                ),
            );
        }
        // A generation older than the writes still held: recompute it.
        let oldest_held = all.first().map_or(u64::MAX, |w| w.generation);
        if let Some(g) = claimed
            && g < oldest_held
            && g <= kh.max_generation
            && self.is_generation(kh, seen, g)
        {
            let past = kh.past.iter().find(|p| p.generation == g);
            let outcome = past.map_or(Outcome::Ok, |p| p.outcome);
            let class = seen_class(g, outcome, allowed.base);
            let late = match (class, past) {
                (Class::LateWrite, Some(p)) => late_text(p, allowed.base),
                _ => String::new(),
            };
            return Err((
                class,
                format!(
                    "g{g}, dropped from the history kept{late} ({})",
                    seen.describe()
                ),
                past.map(|p| p.witness()).into_iter().collect(),
            ));
        }
        if let Seen::Unsatisfiable { .. } = seen {
            // "Shorter than the range's first byte" fits no version allowed.
            let class = match allowed.base {
                _ if allowed.present().next().is_some() => Class::MetadataMismatch,
                Some(b) if b.deleted => Class::Resurrection,
                _ => Class::Phantom,
            };
            return fail(class, seen.describe());
        }
        if let Seen::Head { .. } = seen {
            return fail(Class::MetadataMismatch, seen.describe());
        }
        // The right bytes for the range the server claims, but a claim that
        // disagrees with the request (or, for an empty object, any 206).
        if let Seen::Range {
            first,
            last,
            total,
            sha,
            spec,
            ..
        } = *seen
            && allowed.present().any(|w| {
                w.size == total
                    && self.holds_claimed_slice(kh, w.generation, w.size, (first, last), sha)
            })
        {
            let want = expected_range(spec, total)
                .map_or("416 (unsatisfiable)".to_string(), |(a, b)| {
                    format!("bytes {a}-{b}/{total}")
                });
            return fail(
                Class::MetadataMismatch,
                format!("Content-Range bytes {first}-{last}/{total} for {spec}, expected {want}"),
            );
        }
        // Bytes that match no write of this key: whose are they?
        match trace {
            Some(t) if t.run_tag == self.run_tag && t.generation > kh.max_generation => fail(
                Class::Phantom,
                format!(
                    "bytes of g{}, which was never written ({})",
                    t.generation,
                    seen.describe()
                ),
            ),
            Some(t) if t.run_tag != self.run_tag => fail(
                Class::Phantom,
                format!("bytes this run never wrote ({})", seen.describe()),
            ),
            _ => fail(
                Class::Corruption,
                format!("bytes matching no generation ({})", seen.describe()),
            ),
        }
    }

    /// Checks one LIST page: its findings and how many keys it covered;
    /// `None` if the page carries no parsable detail.
    fn check_page(&mut self, op: &OpRecord) -> Option<(Vec<Finding>, u64)> {
        let view = page::parse(op.detail.as_deref()?)?;
        let after = view.after.as_deref();
        let contract = self.info.contract;
        let mut findings = Vec::new();
        let mk = |class: Class,
                  key: Option<&str>,
                  expected: String,
                  seen: String,
                  writes: Vec<WitnessWrite>,
                  since_ack_ns: Option<u64>| {
            Finding {
                class,
                key: key.map(str::to_string),
                op_id: op.id,
                t_invoke_ns: op.t_invoke_ns,
                t_ns: op.t_return_ns,
                expected,
                seen,
                writes,
                final_read: false,
                since_ack_ns,
            }
        };
        let entries = &view.keys;
        let prefix = self.info.prefix.as_str();
        let upper = if view.truncated {
            Some(&*entries.last()?.0)
        } else {
            None
        };
        // Protocol: strictly increasing, after the page's lower bound.
        let mut ordered = true;
        for pair in entries.windows(2) {
            if *pair[0].0 >= *pair[1].0 {
                ordered = false;
                findings.push(mk(
                    Class::ListProtocol,
                    Some(&*pair[1].0),
                    "keys in strictly increasing order".into(),
                    format!("{} after {}", &*pair[1].0, &*pair[0].0),
                    Vec::new(),
                    None,
                ));
            }
        }
        if let (Some(a), Some(first)) = (after, entries.first())
            && *first.0 <= *a
        {
            findings.push(mk(
                Class::ListProtocol,
                Some(&*first.0),
                format!("keys after {a}"),
                format!("{} (a continuation that repeats)", &*first.0),
                Vec::new(),
                None,
            ));
        }
        let phantom = |key: &str| {
            mk(
                Class::Phantom,
                Some(key),
                "only keys this run wrote".into(),
                format!("{key}, which this run never wrote"),
                Vec::new(),
                None,
            )
        };
        let unknown = |key: &str| {
            let k = KeyRef::of(prefix, key);
            k.foreign || self.index.find(k).is_none()
        };
        // Only the entries the merge below steps over can be unknown keys
        // (on an ordered page): the rest matched one. Look those up.
        let mut phantoms = Vec::new();
        if !ordered {
            phantoms.extend(
                entries
                    .iter()
                    .filter(|e| unknown(&e.0))
                    .map(|e| phantom(&e.0)),
            );
        }
        // Entries by key without the prefix (the run's keys are filed so).
        let on_page: HashMap<&str, (u64, Option<&str>)> = if ordered {
            HashMap::default()
        } else {
            entries
                .iter()
                .filter_map(|(k, s, e)| Some((k.strip_prefix(prefix)?, (*s, e.as_deref()))))
                .collect()
        };
        // Every key of the run in the page's range, merged with the sorted entries.
        let mut in_range = Vec::with_capacity(entries.len() + PAGE_ENTRIES);
        if let Some((lower, upper)) = run_key_range(prefix, after, upper) {
            let bounds = (lower.map(OrdKey::of), upper.map(OrdKey::of));
            for (k, &i) in self.ordered.range(bounds) {
                // Ask for every key's newest write at once: one after the
                // other, each is a cache miss the walk would wait for.
                prefetch(&self.newest[i as usize]);
                in_range.push((k.rest.as_str(), i));
            }
        }
        // A key whose newest write was acknowledged before the page was
        // asked for is judged on that write alone (`Newest`); ask for the
        // other keys' histories now.
        let newest_decides = contract == Contract::ReadAfterWrite;
        let undecided = |i: u32| {
            let newest = &self.newest[i as usize];
            !newest_decides || !newest.acked || newest.t_return >= op.t_invoke_ns
        };
        for &(_, i) in in_range.iter().filter(|(_, i)| undecided(*i)) {
            prefetch(&self.hists[i as usize]);
        }
        // Then their candidate writes, which a history points to: the
        // histories asked for above arrive together, not one by one.
        for &(_, i) in in_range.iter().filter(|(_, i)| undecided(*i)) {
            self.hists[i as usize].prefetch(false);
        }
        let mut covered = 0;
        let mut cursor = 0;
        for (rest, i) in in_range {
            let i = i as usize;
            let newest = &self.newest[i];
            let listed = if ordered {
                while cursor < entries.len()
                    && cmp_run_key(&entries[cursor].0, prefix, rest) == Ordering::Less
                {
                    if unknown(&entries[cursor].0) {
                        phantoms.push(phantom(&entries[cursor].0));
                    }
                    cursor += 1;
                }
                let hit = cursor < entries.len()
                    && cmp_run_key(&entries[cursor].0, prefix, rest) == Ordering::Equal;
                let listed = hit.then(|| (entries[cursor].1, entries[cursor].2.as_deref()));
                cursor += usize::from(hit);
                listed
            } else {
                on_page.get(rest).copied()
            };
            if op.t_invoke_ns < newest.dropped_before_ns {
                continue;
            }
            covered += 1;
            if newest_decides && newest.shows(op.t_invoke_ns, listed) {
                continue;
            }
            let kh = &self.hists[i];
            let key: &str = &kh.name;
            let allowed = kh.allowed(contract, op.t_invoke_ns, op.t_return_ns);
            let may_be_absent = allowed.absent_allowed();
            let may_be_present = allowed.present().next().is_some();
            let lag = allowed.since_ack(op.t_invoke_ns);
            match listed {
                None if !may_be_absent => {
                    let mut witness = allowed.witness();
                    let (class, seen) = match kh.abandoned_delete(allowed.base) {
                        Some(d) => {
                            witness.push(d.witness());
                            (
                                Class::LateWrite,
                                format!(
                                    "not on the page: absent, the DELETE g{}{}",
                                    d.generation,
                                    late_text(&d, allowed.base)
                                ),
                            )
                        }
                        None => (Class::ListMissing, "not on the page".into()),
                    };
                    findings.push(mk(class, Some(key), allowed.describe(), seen, witness, lag))
                }
                Some((size, etag))
                    if !may_be_present || !allowed.present().any(|w| listed_as(w, size, etag)) =>
                {
                    // Name the value by the write it shows, if it is known
                    // (by size and ETag; by size alone for an ambiguous
                    // write, whose ETag never came back).
                    // Held writes first, then the values pruned before them.
                    let older = kh
                        .writes
                        .iter()
                        .rev()
                        .find(|w| !w.deleted && listed_as(w, size, etag))
                        .map(Past::of)
                        .or_else(|| {
                            kh.past
                                .iter()
                                .rev()
                                .find(|p| p.listed_as(size, etag))
                                .copied()
                        });
                    let mut witness = allowed.witness();
                    witness.extend(older.map(|p| p.witness()));
                    let late = older.filter(|p| is_late(p.outcome, p.generation, allowed.base));
                    let shows = match (older, late) {
                        (_, Some(p)) => {
                            format!(": g{}{}", p.generation, late_text(&p, allowed.base))
                        }
                        (Some(p), None) => format!(": g{}, older than allowed", p.generation),
                        (None, None) => String::new(),
                    };
                    let listed_with = format!(
                        "listed with {size} bytes, ETag {}{shows}",
                        etag.map_or("none".into(), |e| format!("\"{e}\""))
                    );
                    // A late write reads the same on a page that should
                    // show another value as on one that should show none.
                    let (class, seen) = if late.is_some() {
                        (Class::LateWrite, listed_with)
                    } else if may_be_present {
                        (Class::MetadataMismatch, listed_with)
                    } else {
                        (Class::ListGhost, format!("on the page{shows}"))
                    };
                    findings.push(mk(class, Some(key), allowed.describe(), seen, witness, lag))
                }
                _ => {}
            }
        }
        if ordered {
            // Entries past the run's last key in range.
            let rest = entries[cursor..].iter().filter(|e| unknown(&e.0));
            phantoms.extend(rest.map(|e| phantom(&e.0)));
        }
        findings.extend(phantoms);
        Some((findings, covered))
    }
}

/// Could a LIST entry of `size` and `etag` be write `w`? ETags are
/// compared only when both are known (an ambiguous write has none).
fn listed_as(w: &Write, size: u64, etag: Option<&str>) -> bool {
    w.size == size
        && match (&w.etag, etag) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Checks a whole history at once (tests, benchmarks).
pub fn check(info: &RunInfo, ops: impl IntoIterator<Item = OpRecord>) -> Verdict {
    let mut oracle = Oracle::new(info.clone());
    oracle.observe_all(&mut ops.into_iter().collect());
    oracle.finish()
}

/// Asks for the cache lines of `value` ahead of their use.
fn prefetch<T>(value: &T) {
    prefetch_raw((value as *const T).cast(), std::mem::size_of::<T>());
}

fn prefetch_bytes(bytes: &[u8]) {
    prefetch_raw(bytes.as_ptr(), bytes.len());
}

fn prefetch_raw(p: *const u8, len: usize) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = p.cast::<i8>();
        for line in (0..len).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults, whatever
            // the address; SSE is part of every x86-64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line)) };
        }
    }
}

/// Is a value of generation `g`, written with `outcome`, seen after `base`
/// a late write (oracle.md §6): one the client abandoned, applied after a
/// later write was acknowledged?
fn is_late(outcome: Outcome, g: u64, base: Option<&Write>) -> bool {
    outcome == Outcome::Ambiguous && base.is_some_and(|b| b.generation > g)
}

/// What a late write's finding says of it.
fn late_text(abandoned: &Past, base: Option<&Write>) -> String {
    format!(
        ", abandoned by the client (ambiguous, op {}, sent {:.3}-{:.3} s) and seen after g{} was acknowledged (op {} at {:.3} s); plain linearizability allows this, read-after-write over acknowledged writes does not",
        abandoned.op_id,
        abandoned.t_invoke as f64 / 1e9,
        abandoned.t_return as f64 / 1e9,
        base.map_or(0, |b| b.generation),
        base.map_or(0, |b| b.op_id),
        base.map_or(0, |b| b.t_return) as f64 / 1e9,
    )
}

/// The name of having seen generation `g` (written with `outcome`), which
/// was not allowed after `base`.
fn seen_class(g: u64, outcome: Outcome, base: Option<&Write>) -> Class {
    if is_late(outcome, g, base) {
        return Class::LateWrite;
    }
    unallowed_class(g, base)
}

/// The name of having seen generation `g`, which was not allowed after `base`.
fn unallowed_class(g: u64, base: Option<&Write>) -> Class {
    match base {
        Some(b) if g < b.generation && b.deleted => Class::Resurrection,
        Some(b) if g < b.generation => Class::StaleRead,
        // Newer than anything invoked before the read returned.
        _ => Class::Phantom,
    }
}

/// `(first, last)` a server must answer to `spec` for an object of `total`
/// bytes, or `None` when the range cannot be satisfied.
pub fn expected_range(spec: &str, total: u64) -> Option<(u64, u64)> {
    let r = spec.strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    if total == 0 {
        return None;
    }
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        return Some((total - n.min(total), total - 1));
    }
    let first: u64 = a.parse().ok()?;
    if first >= total {
        return None;
    }
    let last = if b.is_empty() {
        total - 1
    } else {
        b.parse::<u64>().ok()?.min(total - 1)
    };
    (last >= first).then_some((first, last))
}

/// The trace a read recorded in its detail.
fn trace_of(op: &OpRecord) -> Option<crate::history::Trace> {
    serde_json::from_str::<TraceDetail>(op.detail.as_deref()?)
        .ok()
        .map(|d| d.trace)
}

#[cfg(test)]
mod tests;
