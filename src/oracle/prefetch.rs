//! Looking ahead: `observe_all` asks for the memory of an operation's
//! key and history before its turn, so the check over many keys does not
//! wait on a cache miss at each step.

use super::Oracle;
use super::keys::KeyRef;
use crate::history::OpRecord;

impl Oracle {
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
    pub(super) fn hash_ahead(&self, prefix: &str, op: &OpRecord) -> Option<u64> {
        let hash = self.index.hash(KeyRef::of(prefix, op.key.as_deref()?));
        self.index.prefetch(hash);
        Some(hash)
    }

    /// The index a key of `hash` probably has, its state asked for.
    pub(super) fn look_ahead(&self, hash: Option<u64>) -> Option<usize> {
        let i = self.index.guess(hash?)? as usize;
        prefetch(&self.index.names[i]);
        prefetch(&self.hists[i]);
        prefetch(&self.newest[i]);
        Some(i)
    }
}

/// Asks for the cache lines of `value` ahead of their use.
pub(super) fn prefetch<T>(value: &T) {
    prefetch_raw((value as *const T).cast(), std::mem::size_of::<T>());
}

pub(super) fn prefetch_bytes(bytes: &[u8]) {
    prefetch_raw(bytes.as_ptr(), bytes.len());
}

pub(super) fn prefetch_raw(p: *const u8, len: usize) {
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
