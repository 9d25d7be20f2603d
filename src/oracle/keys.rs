//! How the oracle files keys: names without the run's prefix (`KeyName`),
//! the hash index with its split lookup (`KeyIndex`), the ordered map's
//! key (`OrdKey`) and the run's key range a LIST page covers.

use std::cmp::Ordering;
use std::ops::Bound;

use compact_str::CompactString;

use super::prefetch::prefetch;

/// A key as the oracle files it. Every key the workload writes starts with
/// the run's prefix, so it is kept without it (`w003/k00025`), short
/// enough to live inline: comparing and ordering keys then reads no memory
/// but the key's own, where a pointer to each name cost a cache miss per
/// lookup and per key a LIST page covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyName {
    /// The key lacks the run's prefix and is kept whole.
    pub(super) foreign: bool,
    pub(super) rest: CompactString,
}

impl KeyName {
    pub(super) fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            foreign: self.foreign,
            rest: &self.rest,
        }
    }
}

/// A borrowed `KeyName`, to look a key up without building one.
#[derive(Clone, Copy)]
pub(super) struct KeyRef<'a> {
    pub(super) foreign: bool,
    pub(super) rest: &'a str,
}

impl<'a> KeyRef<'a> {
    pub(super) fn of(prefix: &str, key: &'a str) -> KeyRef<'a> {
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

    pub(super) fn owned(&self) -> KeyName {
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
pub(super) struct KeyIndex {
    /// `index + 1` in the low half, the hash's high half above; 0 is empty.
    pub(super) slots: Vec<u64>,
    pub(super) names: Vec<KeyName>,
    pub(super) hasher: foldhash::fast::RandomState,
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
    pub(super) fn hash(&self, k: KeyRef<'_>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((k.foreign, k.rest))
    }

    pub(super) fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Asks for the slot a key of `hash` starts its probe at.
    pub(super) fn prefetch(&self, hash: u64) {
        prefetch(&self.slots[hash as usize & self.mask()]);
    }

    pub(super) fn is(&self, i: u32, k: KeyRef<'_>) -> bool {
        let n = &self.names[i as usize];
        n.foreign == k.foreign && n.rest == k.rest
    }

    /// The index whose hash is `hash` and, if given, whose name is `confirm`.
    pub(super) fn probe(&self, hash: u64, confirm: Option<KeyRef<'_>>) -> Option<u32> {
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

    pub(super) fn find(&self, k: KeyRef<'_>) -> Option<u32> {
        self.probe(self.hash(k), Some(k))
    }

    /// The index of a key whose hash is `hash`: almost always the key's.
    pub(super) fn guess(&self, hash: u64) -> Option<u32> {
        self.probe(hash, None)
    }

    /// Files a key not filed yet under the next index.
    pub(super) fn insert(&mut self, name: KeyName) -> u32 {
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

    pub(super) fn place(&mut self, i: u32) {
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
pub(super) struct OrdKey {
    pub(super) head: u128,
    pub(super) rest: CompactString,
}

impl OrdKey {
    pub(super) fn of(rest: &str) -> OrdKey {
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
pub(super) fn cmp_run_key(key: &str, prefix: &str, rest: &str) -> Ordering {
    match key.strip_prefix(prefix) {
        Some(k) => k.cmp(rest),
        None => key.cmp(prefix),
    }
}

/// The run's keys (as `rest` after its prefix) a LIST page covers: those
/// after the page's lower bound `after` and, on a truncated page, up to
/// its last entry `upper`. `None` when no key with the prefix can be in
/// the page's range.
pub(super) fn run_key_range<'a>(
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
