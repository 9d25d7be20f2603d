//! What the oracle keeps of one key: its candidate writes (`Write`), the
//! allowed set of a read interval (`Allowed`), the values it pruned but
//! still names (`Past`), the history itself with its pruning (`KeyHist`),
//! and the dense record a LIST page reads first (`Newest`).

use std::collections::VecDeque;

use super::prefetch::{prefetch, prefetch_raw};
use super::{Contract, WitnessWrite};
use crate::history::Outcome;

/// A candidate write of one key.
#[derive(Debug, Clone)]
pub(super) struct Write {
    pub(super) op_id: u64,
    pub(super) generation: u64,
    pub(super) deleted: bool,
    pub(super) size: u64,
    pub(super) sha256: Option<[u8; 32]>,
    /// The ETag the store answered the write with (acknowledged writes).
    pub(super) etag: Option<String>,
    pub(super) t_invoke: u64,
    pub(super) t_return: u64,
    pub(super) outcome: Outcome,
}

impl Write {
    pub(super) fn describe(&self) -> String {
        if self.deleted {
            format!("absent (DELETE g{})", self.generation)
        } else {
            format!("g{} ({} bytes)", self.generation, self.size)
        }
    }

    pub(super) fn witness(&self) -> WitnessWrite {
        Past::of(self).witness()
    }
}

/// The allowed set for one read interval: base (or the initial Absent when
/// there is none) and later, minus what is older than `floor` (the newest
/// generation an earlier read saw, under the linearizable contract).
pub(super) struct Allowed<'a> {
    pub(super) base: Option<&'a Write>,
    pub(super) later: &'a [Write],
    pub(super) floor: u64,
}

impl<'a> Allowed<'a> {
    pub(super) fn unfiltered(&self) -> impl Iterator<Item = &'a Write> {
        self.base.into_iter().chain(self.later.iter())
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &'a Write> {
        let floor = self.floor;
        self.unfiltered().filter(move |w| w.generation >= floor)
    }

    pub(super) fn initial_allowed(&self) -> bool {
        self.base.is_none() && self.floor == 0
    }

    pub(super) fn absent_allowed(&self) -> bool {
        self.initial_allowed() || self.values().any(|w| w.deleted)
    }

    pub(super) fn present(&self) -> impl Iterator<Item = &'a Write> {
        self.values().filter(|w| !w.deleted)
    }

    pub(super) fn describe(&self) -> String {
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

    pub(super) fn witness(&self) -> Vec<WitnessWrite> {
        self.unfiltered().map(Write::witness).collect()
    }

    /// How long after base was acknowledged a read invoked at `t_invoke`
    /// began.
    pub(super) fn since_ack(&self, t_invoke: u64) -> Option<u64> {
        self.base.map(|b| t_invoke.saturating_sub(b.t_return))
    }
}

/// The allowed set of one key's candidate writes for a read interval.
pub(super) fn allowed_of(list: &[Write], t_invoke: u64, t_return: u64, floor: u64) -> Allowed<'_> {
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
pub(super) const FAILED_KEPT_MAX: usize = 64;
/// Pruned values remembered per key, for naming stale LIST entries.
pub(super) const PAST_KEPT_MAX: usize = 16;

/// A value pruned from a key's candidates, compactly: enough to recognise
/// it on a LIST page and to cite its write.
#[derive(Debug, Clone, Copy)]
pub(super) struct Past {
    pub(super) op_id: u64,
    pub(super) generation: u64,
    /// An ambiguous DELETE (kept to name a late one); never a LIST entry.
    pub(super) deleted: bool,
    pub(super) size: u64,
    pub(super) etag: Option<u64>,
    pub(super) t_invoke: u64,
    pub(super) t_return: u64,
    pub(super) outcome: Outcome,
}

/// An ETag without its quotes: how the oracle compares them.
pub(super) fn etag_core(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// A 64-bit digest of an ETag: two different ETags of one key agreeing on
/// it (odds 2^-64) would pass a LIST entry unchecked.
pub(super) fn etag_hash(etag: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(etag)
}

impl Past {
    pub(super) fn of(w: &Write) -> Past {
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

    pub(super) fn listed_as(&self, size: u64, etag: Option<&str>) -> bool {
        !self.deleted
            && self.size == size
            && match (self.etag, etag) {
                (Some(a), Some(b)) => a == etag_hash(b),
                _ => true,
            }
    }

    pub(super) fn witness(&self) -> WitnessWrite {
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
pub(super) struct KeyHist {
    pub(super) name: Box<str>,
    /// `key_tag(name)`.
    pub(super) key_tag: u64,
    pub(super) owner: u32,
    /// Candidate writes (`ok`, `ambiguous`) still needed, by generation.
    pub(super) writes: Vec<Write>,
    /// Recent writes that certainly failed: (generation, op id).
    pub(super) failed: VecDeque<(u64, u64)>,
    /// The last values pruned from `writes`, to name an old value a LIST
    /// shows (its size and ETag are all a page says).
    pub(super) past: VecDeque<Past>,
    /// The highest generation any write of this key carried.
    pub(super) max_generation: u64,
    /// Reads invoked before this were already past when writes were dropped.
    pub(super) dropped_before_ns: u64,
    /// Linearizable: (read's return, generation it saw), recent ones.
    pub(super) observed: VecDeque<(u64, u64)>,
    /// Linearizable: the newest generation seen by a dropped observation.
    pub(super) observed_floor: u64,
}

impl KeyHist {
    pub(super) fn floor_for(&self, contract: Contract, t_invoke: u64) -> u64 {
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

    pub(super) fn allowed(&self, contract: Contract, t_invoke: u64, t_return: u64) -> Allowed<'_> {
        let floor = self.floor_for(contract, t_invoke);
        allowed_of(&self.writes, t_invoke, t_return, floor)
    }

    /// Asks for the candidate writes (the first few) and, for a write,
    /// the slot in `past` its prune would fill.
    pub(super) fn prefetch(&self, write: bool) {
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
    pub(super) fn abandoned_delete(&self, base: Option<&Write>) -> Option<Past> {
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
    pub(super) fn prune(&mut self, horizon: u64) {
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
pub(super) struct Newest {
    /// Reads invoked before this are too old to judge (`KeyHist`'s).
    pub(super) dropped_before_ns: u64,
    pub(super) t_return: u64,
    pub(super) size: u64,
    pub(super) etag: Option<u64>,
    /// The key has a newest candidate write and it was acknowledged.
    pub(super) acked: bool,
    pub(super) deleted: bool,
}

impl Newest {
    pub(super) fn of(kh: &KeyHist) -> Newest {
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
    pub(super) fn shows(&self, t_invoke: u64, listed: Option<(u64, Option<&str>)>) -> bool {
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
