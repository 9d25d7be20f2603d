//! The oracle: a pure function from a history of operations to findings,
//! implementing `shared/design/oracle.md` §3–5. It does no I/O; callers
//! hand it the operations (from the ledger, or as they complete).
//!
//! Keys are single-writer registers, so a key's writes are ordered in time
//! as in generation, and for a read R:
//! - `base(R)` is the last write acknowledged (`ok`) before R started
//!   (Absent if none);
//! - `later(R)` are the candidate writes (`ok` or `ambiguous`) after base
//!   that started before R returned;
//! - R must have seen the value of base or of one of later.
//!
//! A value is compared on what the read carries: a GET's sha256 and size,
//! a HEAD's size and generation, a Range's bytes against the same slice of
//! the allowed generation, and its `Content-Range` against the request.
//! Bodies are a pure function of (seed, key, generation, size), so the
//! oracle recomputes any slice it needs.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::history::{OpKind, Outcome};
use crate::ledger::OpRecord;
use crate::s3::slice_sha256;
use crate::workload::body::{Body, key_tag, run_tag};

pub mod synth;

/// The violation classes of oracle.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    LostWrite,
    StaleRead,
    Resurrection,
    Corruption,
    Misdirected,
    Phantom,
    MetadataMismatch,
    ListMissing,
    ListGhost,
    ListProtocol,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::LostWrite => "lost-write",
            Class::StaleRead => "stale-read",
            Class::Resurrection => "resurrection",
            Class::Corruption => "corruption",
            Class::Misdirected => "misdirected",
            Class::Phantom => "phantom",
            Class::MetadataMismatch => "metadata-mismatch",
            Class::ListMissing => "list-missing",
            Class::ListGhost => "list-ghost",
            Class::ListProtocol => "list-protocol",
        }
    }
}

/// One violation with its witness.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub class: Class,
    pub key: Option<String>,
    /// The read (or LIST page) that saw it.
    pub op_id: u64,
    pub t_ns: u64,
    pub expected: String,
    pub seen: String,
    /// The key's writes that decided what was allowed (op ids).
    pub writes: Vec<u64>,
}

/// What a check covered, so a run cannot pass vacuously.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    pub reads_checked: u64,
    pub list_pages_checked: u64,
    pub list_keys_checked: u64,
    pub reads_unavailable: u64,
    pub ambiguous_writes: u64,
    /// Reads of an incomplete ledger that saw a write it never recorded.
    pub reads_unknown: u64,
}

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
}

/// A candidate write of one key.
#[derive(Debug, Clone)]
struct Write {
    op_id: u64,
    generation: u64,
    deleted: bool,
    size: u64,
    sha256: Option<[u8; 32]>,
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
}

/// What the allowed set is for one read interval.
struct Allowed<'a> {
    base: Option<&'a Write>,
    later: &'a [Write],
}

impl<'a> Allowed<'a> {
    fn values(&self) -> impl Iterator<Item = &'a Write> {
        self.base.into_iter().chain(self.later.iter())
    }

    fn absent_allowed(&self) -> bool {
        self.base.is_none_or(|b| b.deleted) || self.later.iter().any(|w| w.deleted)
    }

    fn present(&self) -> impl Iterator<Item = &'a Write> {
        self.values().filter(|w| !w.deleted)
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if self.base.is_none() {
            parts.push("absent (never written)".into());
        }
        parts.extend(self.values().map(Write::describe));
        parts.join(" or ")
    }

    fn op_ids(&self) -> Vec<u64> {
        self.values().map(|w| w.op_id).collect()
    }
}

/// The candidates of each key, sorted by generation (and so by time).
struct Keys {
    writes: BTreeMap<String, Vec<Write>>,
    /// Generations whose write certainly failed, for naming phantoms.
    failed: HashMap<(String, u64), u64>,
}

impl Keys {
    fn build(ops: &[OpRecord], coverage: &mut Coverage) -> Keys {
        let mut writes: BTreeMap<String, Vec<Write>> = BTreeMap::new();
        let mut failed = HashMap::new();
        for op in ops.iter().filter(|o| o.kind.is_write()) {
            let (Some(key), Some(generation)) = (&op.key, op.generation) else {
                continue;
            };
            if op.outcome == Outcome::Fail {
                failed.insert((key.clone(), generation), op.id);
                continue;
            }
            if op.outcome == Outcome::Ambiguous {
                coverage.ambiguous_writes += 1;
            }
            writes.entry(key.clone()).or_default().push(Write {
                op_id: op.id,
                generation,
                deleted: op.kind == OpKind::Delete,
                size: op.size.unwrap_or(0),
                sha256: op.sha256,
                t_invoke: op.t_invoke_ns,
                t_return: op.t_return_ns,
                outcome: op.outcome,
            });
        }
        for list in writes.values_mut() {
            list.sort_by_key(|w| w.generation);
        }
        Keys { writes, failed }
    }

    fn allowed<'a>(&'a self, key: &str, t_invoke: u64, t_return: u64) -> Allowed<'a> {
        match self.writes.get(key) {
            Some(list) => allowed_of(list, t_invoke, t_return),
            None => Allowed {
                base: None,
                later: &[],
            },
        }
    }
}

/// The allowed set of one key's candidate writes for a read interval.
fn allowed_of(list: &[Write], t_invoke: u64, t_return: u64) -> Allowed<'_> {
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
}

impl Seen<'_> {
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
        }
    }

    fn generation(&self) -> Option<u64> {
        match self {
            Seen::Absent => None,
            Seen::Body { generation, .. }
            | Seen::Head { generation, .. }
            | Seen::Range { generation, .. } => *generation,
        }
    }
}

fn gen_str(g: Option<u64>) -> String {
    g.map_or("none".into(), |g| format!("g{g}"))
}

/// Checks a whole history.
pub fn check(info: &RunInfo, ops: &[OpRecord]) -> Verdict {
    let mut verdict = Verdict::default();
    let keys = Keys::build(ops, &mut verdict.coverage);
    let tags: HashMap<u64, &str> = keys
        .writes
        .keys()
        .map(|k| (key_tag(k), k.as_str()))
        .collect();
    let ctx = Ctx {
        info,
        keys: &keys,
        tags,
        run_tag: run_tag(info.seed),
    };
    for op in ops {
        match (op.kind, op.outcome) {
            (OpKind::Get | OpKind::Head | OpKind::Range, Outcome::Ok) => {
                if !info.complete && ctx.saw_unrecorded_write(op) {
                    verdict.coverage.reads_unknown += 1;
                    continue;
                }
                verdict.coverage.reads_checked += 1;
                verdict.findings.extend(ctx.check_read(op));
            }
            (OpKind::List, Outcome::Ok) => {
                verdict.coverage.list_pages_checked += 1;
                let (findings, keys_checked) = ctx.check_page(op);
                verdict.coverage.list_keys_checked += keys_checked;
                verdict.findings.extend(findings);
            }
            (k, Outcome::Unavailable) if !k.is_write() => verdict.coverage.reads_unavailable += 1,
            _ => {}
        }
    }
    verdict
}

struct Ctx<'a> {
    info: &'a RunInfo,
    keys: &'a Keys,
    tags: HashMap<u64, &'a str>,
    run_tag: u32,
}

impl Ctx<'_> {
    fn seen<'o>(&self, op: &'o OpRecord) -> Option<Seen<'o>> {
        if op.http_status == Some(404) {
            return Some(Seen::Absent);
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

    /// Did this read see a generation newer than every recorded write of
    /// its key (a write in flight when an incomplete ledger ends)?
    fn saw_unrecorded_write(&self, op: &OpRecord) -> bool {
        let (Some(key), Some(g)) = (op.key.as_deref(), op.generation) else {
            return false;
        };
        let newest = self
            .keys
            .writes
            .get(key)
            .and_then(|w| w.last())
            .map_or(0, |w| w.generation);
        let newest_failed = self
            .keys
            .failed
            .keys()
            .filter(|(k, _)| k == key)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(0);
        g > newest.max(newest_failed)
    }

    /// Does what was seen equal write `w`'s value?
    fn matches(&self, key: &str, seen: &Seen<'_>, w: &Write) -> bool {
        match *seen {
            Seen::Absent => w.deleted,
            _ if w.deleted => false,
            Seen::Body { size, sha, .. } => size == w.size && w.sha256 == Some(sha),
            Seen::Head { size, generation } => {
                size == Some(w.size) && generation.is_none_or(|g| g == w.generation)
            }
            Seen::Range {
                first,
                last,
                total,
                sha,
                spec,
                ..
            } => {
                total == w.size
                    && expected_range(spec, total) == Some((first, last))
                    && slice_sha256(
                        &Body::new(self.info.seed, key, w.generation, w.size),
                        first,
                        last + 1,
                    ) == sha
            }
        }
    }

    fn check_read(&self, op: &OpRecord) -> Vec<Finding> {
        let Some(key) = op.key.as_deref() else {
            return Vec::new();
        };
        let Some(seen) = self.seen(op) else {
            return Vec::new();
        };
        let allowed = self.keys.allowed(key, op.t_invoke_ns, op.t_return_ns);
        let finding = |class: Class, seen_text: String| Finding {
            class,
            key: Some(key.to_string()),
            op_id: op.id,
            t_ns: op.t_return_ns,
            expected: allowed.describe(),
            seen: seen_text,
            writes: allowed.op_ids(),
        };
        if let Seen::Absent = seen
            && allowed.absent_allowed()
        {
            return Vec::new();
        }
        // Bytes can be identical under two generations (every empty body
        // is), so an allowed value must match the content and whatever
        // generation the metadata names.
        let names = |w: &Write| {
            seen.generation()
                .is_none_or(|g| w.deleted || g == w.generation)
        };
        if allowed
            .values()
            .any(|w| self.matches(key, &seen, w) && names(w))
        {
            return Vec::new();
        }
        let all = self.keys.writes.get(key).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(v) = allowed.values().find(|w| self.matches(key, &seen, w)) {
            // Allowed bytes under another generation's metadata: if that
            // generation was written with the same bytes, that is what was seen.
            let g = seen.generation().unwrap_or_default();
            if let Some(m) = all
                .iter()
                .find(|w| w.generation == g && self.matches(key, &seen, w))
            {
                let class = unallowed_class(m, allowed.base);
                return vec![finding(
                    class,
                    format!("{} ({})", m.describe(), seen.describe()),
                )];
            }
            return vec![finding(
                Class::MetadataMismatch,
                format!(
                    "the bytes of g{} with metadata generation g{g}",
                    v.generation
                ),
            )];
        }
        if let Seen::Absent = seen {
            return vec![finding(Class::LostWrite, seen.describe())];
        }
        // A value outside the allowed set: name it by what it was.
        if let Some(m) = all.iter().find(|w| self.matches(key, &seen, w) && names(w)) {
            let class = unallowed_class(m, allowed.base);
            return vec![finding(
                class,
                format!("{} ({})", m.describe(), seen.describe()),
            )];
        }
        // The block headers inside the bytes outweigh a generation number in
        // a header: another key's bytes are misdirected, whatever their metadata.
        if let Some((tag, generation, run)) = trace_of(op)
            && run == self.run_tag
            && tag != key_tag(key)
        {
            let other = self
                .tags
                .get(&tag)
                .copied()
                .unwrap_or("an unknown key of this run");
            return vec![finding(
                Class::Misdirected,
                format!("bytes of {other} g{generation} ({})", seen.describe()),
            )];
        }
        if let Some(g) = seen.generation()
            && let Some(failed_op) = self.keys.failed.get(&(key.to_string(), g))
        {
            return vec![finding(
                Class::Phantom,
                format!(
                    "g{g}, whose write (op {failed_op}) certainly failed ({})",
                    seen.describe()
                ),
            )];
        }
        if let Seen::Head { .. } = seen {
            return vec![finding(Class::MetadataMismatch, seen.describe())];
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
        } = seen
            && allowed.present().any(|w| {
                let end = last.saturating_add(1).min(w.size);
                w.size == total
                    && first <= end
                    && slice_sha256(
                        &Body::new(self.info.seed, key, w.generation, w.size),
                        first,
                        end,
                    ) == sha
            })
        {
            let want = expected_range(spec, total)
                .map_or("416 (unsatisfiable)".to_string(), |(a, b)| {
                    format!("bytes {a}-{b}/{total}")
                });
            return vec![finding(
                Class::MetadataMismatch,
                format!("Content-Range bytes {first}-{last}/{total} for {spec}, expected {want}"),
            )];
        }
        // Bytes that match no write of this key: whose are they?
        match trace_of(op) {
            Some((tag, generation, run))
                if run == self.run_tag
                    && tag == key_tag(key)
                    && !all.iter().any(|w| w.generation == generation) =>
            {
                vec![finding(
                    Class::Phantom,
                    format!(
                        "bytes of g{generation}, which was never written ({})",
                        seen.describe()
                    ),
                )]
            }
            Some((_, _, run)) if run != self.run_tag => {
                vec![finding(
                    Class::Phantom,
                    format!("bytes this run never wrote ({})", seen.describe()),
                )]
            }
            _ => vec![finding(
                Class::Corruption,
                format!("bytes matching no generation ({})", seen.describe()),
            )],
        }
    }

    /// Checks one LIST page; returns its findings and how many keys it covered.
    fn check_page(&self, op: &OpRecord) -> (Vec<Finding>, u64) {
        let Some(detail) = op.detail.as_deref() else {
            return (Vec::new(), 0);
        };
        let Ok(page) = serde_json::from_str::<serde_json::Value>(detail) else {
            return (Vec::new(), 0);
        };
        let after = page["after"].as_str().map(str::to_string);
        let truncated = page["truncated"].as_bool().unwrap_or(false);
        let entries: Vec<(String, u64)> = page["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| Some((e[0].as_str()?.to_string(), e[1].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut findings = Vec::new();
        let mk =
            |class: Class, key: Option<&str>, expected: String, seen: String, writes: Vec<u64>| {
                Finding {
                    class,
                    key: key.map(str::to_string),
                    op_id: op.id,
                    t_ns: op.t_return_ns,
                    expected,
                    seen,
                    writes,
                }
            };
        // Protocol: strictly increasing, after the page's lower bound, in the prefix.
        for pair in entries.windows(2) {
            if pair[0].0 >= pair[1].0 {
                findings.push(mk(
                    Class::ListProtocol,
                    Some(&pair[1].0),
                    "keys in strictly increasing order".into(),
                    format!("{} after {}", pair[1].0, pair[0].0),
                    Vec::new(),
                ));
            }
        }
        if let (Some(a), Some(first)) = (&after, entries.first())
            && first.0 <= *a
        {
            findings.push(mk(
                Class::ListProtocol,
                Some(&first.0),
                format!("keys after {a}"),
                format!("{} (a continuation that repeats)", first.0),
                Vec::new(),
            ));
        }
        let upper = if truncated {
            entries.last().map(|e| e.0.clone())
        } else {
            None
        };
        if truncated && upper.is_none() {
            return (findings, 0);
        }
        let on_page: BTreeMap<&str, u64> = entries.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        for (key, _) in &entries {
            if !key.starts_with(&self.info.prefix)
                || !self.keys.writes.contains_key(key) && !self.was_written(key)
            {
                findings.push(mk(
                    Class::Phantom,
                    Some(key),
                    "only keys this run wrote".into(),
                    format!("{key}, which this run never wrote"),
                    Vec::new(),
                ));
            }
        }
        // Every key of the run in the page's range.
        let lower = after.clone().unwrap_or_else(|| self.info.prefix.clone());
        let range = self
            .keys
            .writes
            .range::<str, _>((
                std::ops::Bound::Excluded(lower.as_str()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| {
                upper.as_deref().is_none_or(|u| k.as_str() <= u) && k.starts_with(&self.info.prefix)
            });
        let mut covered = 0;
        for (key, list) in range {
            covered += 1;
            let allowed = allowed_of(list, op.t_invoke_ns, op.t_return_ns);
            let listed = on_page.get(key.as_str());
            let may_be_absent = allowed.absent_allowed();
            let may_be_present = allowed.present().next().is_some();
            match listed {
                None if !may_be_absent => findings.push(mk(
                    Class::ListMissing,
                    Some(key),
                    allowed.describe(),
                    "not on the page".into(),
                    allowed.op_ids(),
                )),
                Some(_) if !may_be_present => findings.push(mk(
                    Class::ListGhost,
                    Some(key),
                    allowed.describe(),
                    "on the page".into(),
                    allowed.op_ids(),
                )),
                Some(&size) if !allowed.present().any(|w| w.size == size) => findings.push(mk(
                    Class::MetadataMismatch,
                    Some(key),
                    allowed.describe(),
                    format!("listed with {size} bytes"),
                    allowed.op_ids(),
                )),
                _ => {}
            }
        }
        (findings, covered)
    }

    /// A key whose every write failed still "was written" by this run.
    fn was_written(&self, key: &str) -> bool {
        self.keys.failed.keys().any(|(k, _)| k == key)
    }
}

/// The name of having seen write `m`, which was not allowed after `base`.
fn unallowed_class(m: &Write, base: Option<&Write>) -> Class {
    match base {
        Some(b) if m.generation < b.generation && b.deleted => Class::Resurrection,
        Some(b) if m.generation < b.generation => Class::StaleRead,
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

/// `(key tag, generation, run tag)` from a read's recorded trace.
fn trace_of(op: &OpRecord) -> Option<(u64, u64, u32)> {
    let v: serde_json::Value = serde_json::from_str(op.detail.as_deref()?).ok()?;
    let t = &v["trace"];
    Some((
        u64::from_str_radix(t["key_tag"].as_str()?, 16).ok()?,
        t["generation"].as_u64()?,
        u32::from_str_radix(t["run_tag"].as_str()?, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests;
