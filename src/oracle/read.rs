//! Judging a GET, HEAD or Range read: what it saw (`Seen`), whether that
//! was allowed, and, when not, which finding names it (oracle.md §4–6).

use super::hist::{Allowed, KeyHist, Past, Write};
use super::{Class, Contract, Finding, Oracle, WitnessWrite};
use crate::history::OpRecord;
use crate::history::body::slice_sha256;
use crate::history::body::{Body, key_tag};
use crate::history::{OpKind, Outcome, TraceDetail};

/// What a read observed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seen<'a> {
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
    pub(super) fn of(op: &OpRecord) -> Option<Seen<'_>> {
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

    pub(super) fn describe(&self) -> String {
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

    pub(super) fn generation(&self) -> Option<u64> {
        match self {
            Seen::Absent | Seen::Unsatisfiable { .. } => None,
            Seen::Body { generation, .. }
            | Seen::Head { generation, .. }
            | Seen::Range { generation, .. } => *generation,
        }
    }
}

pub(super) fn gen_str(g: Option<u64>) -> String {
    g.map_or("none".into(), |g| format!("g{g}"))
}

impl Oracle {
    /// Does what was seen equal write `w`'s value?
    pub(super) fn matches(&self, kh: &KeyHist, seen: &Seen<'_>, w: &Write) -> bool {
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
    pub(super) fn is_range_of(&self, kh: &KeyHist, seen: &Seen<'_>, g: u64) -> bool {
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
    pub(super) fn holds_claimed_slice(
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

    pub(super) fn slice_sha(
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
    pub(super) fn is_generation(&self, kh: &KeyHist, seen: &Seen<'_>, g: u64) -> bool {
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
    pub(super) fn check_read(
        &mut self,
        op: &OpRecord,
        known: Option<usize>,
    ) -> Option<Vec<Finding>> {
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

    pub(super) fn key_of_tag(&self, tag: u64) -> &str {
        self.tags
            .get(&tag)
            .map_or("an unknown key of this run", |&i| &self.hists[i].name)
    }

    /// A present value for a key nobody wrote.
    pub(super) fn name_unknown_key(
        &self,
        op: &OpRecord,
        key: &str,
        seen: &Seen<'_>,
    ) -> Option<Finding> {
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
    pub(super) fn name_read(
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
}

/// Is a value of generation `g`, written with `outcome`, seen after `base`
/// a late write (oracle.md §6): one the client abandoned, applied after a
/// later write was acknowledged?
pub(super) fn is_late(outcome: Outcome, g: u64, base: Option<&Write>) -> bool {
    outcome == Outcome::Ambiguous && base.is_some_and(|b| b.generation > g)
}

/// What a late write's finding says of it.
pub(super) fn late_text(abandoned: &Past, base: Option<&Write>) -> String {
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
pub(super) fn seen_class(g: u64, outcome: Outcome, base: Option<&Write>) -> Class {
    if is_late(outcome, g, base) {
        return Class::LateWrite;
    }
    unallowed_class(g, base)
}

/// The name of having seen generation `g`, which was not allowed after `base`.
pub(super) fn unallowed_class(g: u64, base: Option<&Write>) -> Class {
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
pub(super) fn trace_of(op: &OpRecord) -> Option<crate::history::Trace> {
    serde_json::from_str::<TraceDetail>(op.detail.as_deref()?)
        .ok()
        .map(|d| d.trace)
}
