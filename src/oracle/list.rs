//! Judging a LIST page: every run key in its range, listed or not, against
//! the allowed values, its order, bounds and continuation (oracle.md §5).

use std::cmp::Ordering;

use hashbrown::HashMap;

use super::hist::{Past, Write};
use super::keys::{KeyRef, OrdKey, cmp_run_key, run_key_range};
use super::page::{self, PAGE_ENTRIES};
use super::prefetch::prefetch;
use super::read::{is_late, late_text};
use super::{Class, Contract, Finding, Oracle, WitnessWrite};
use crate::history::OpRecord;

impl Oracle {
    /// Checks one LIST page: its findings and how many keys it covered;
    /// `None` if the page carries no parsable detail.
    pub(super) fn check_page(&mut self, op: &OpRecord) -> Option<(Vec<Finding>, u64)> {
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
pub(super) fn listed_as(w: &Write, size: u64, etag: Option<&str>) -> bool {
    w.size == size
        && match (&w.etag, etag) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}
