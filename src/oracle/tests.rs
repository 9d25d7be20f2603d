//! Synthetic histories, one per violation class and per tricky valid case.
//! Each row reads like the contract: writes with intervals and outcomes, a
//! read with what it saw, and the findings expected.

use std::ops::Bound;

use super::hist::{Allowed, allowed_of};
use super::keys::{cmp_run_key, run_key_range};
use super::*;
use crate::history::ListDetail;
use crate::history::OpRecord;
use crate::history::TraceDetail;
use crate::history::body::{Body, slice_sha256};

const SEED: u64 = 99;
const PREFIX: &str = "run/";
/// Workers of a table history: each key's writes come from its own worker
/// (in order of first write), reads are read-backs of worker 0.
const WORKERS: u32 = 8;

/// A history under construction; times are in arbitrary units.
#[derive(Default)]
struct H {
    ops: Vec<OpRecord>,
    owners: Vec<String>,
}

fn k(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn base_op(
    id: u64,
    kind: OpKind,
    key: Option<String>,
    t: (u64, u64),
    outcome: Outcome,
) -> OpRecord {
    OpRecord {
        id,
        t_invoke_ns: t.0,
        t_return_ns: t.1,
        http_status: Some(200),
        ..OpRecord::new(kind, key, outcome)
    }
}

/// What a read saw.
enum Saw {
    Absent,
    /// The exact bytes of (key, generation, size), honest metadata.
    Gen(&'static str, u64, u64),
    /// Right bytes of generation g, metadata claiming another generation.
    GenWithMeta(u64, u64, u64),
    /// Right size, wrong bytes, no header.
    Garbage(u64),
}

impl H {
    fn push(&mut self, mut op: OpRecord) -> &mut H {
        op.id = self.ops.len() as u64 + 1;
        if op.kind.is_write() {
            let key = op.key.clone().unwrap();
            let owner = match self.owners.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    self.owners.push(key);
                    self.owners.len() - 1
                }
            };
            op.worker = owner as u32;
        } else {
            op.origin = Origin::Readback;
        }
        self.ops.push(op);
        self
    }

    /// Sets the ETag the store answered the last write with, or gives
    /// the last LIST page's entries these ETags (in order).
    fn etags(&mut self, etags: &[&str]) -> &mut H {
        let op = self.ops.last_mut().unwrap();
        if op.kind == OpKind::List {
            let mut page: ListDetail = serde_json::from_str(op.detail.as_deref().unwrap()).unwrap();
            for (entry, etag) in page.keys.iter_mut().zip(etags) {
                entry.2 = Some(etag.to_string());
            }
            op.detail = Some(serde_json::to_string(&page).unwrap());
        } else {
            op.etag = Some(etags[0].to_string());
        }
        self
    }

    /// Marks the last operation as part of the final verification.
    fn final_(&mut self) -> &mut H {
        let op = self.ops.last_mut().unwrap();
        op.origin = Origin::Final;
        op.worker = WORKERS;
        self
    }

    /// A read that got no answer.
    fn unavailable(&mut self, kind: OpKind, key: &str, t: (u64, u64)) -> &mut H {
        let mut op = base_op(0, kind, Some(k(key)), t, Outcome::Unavailable);
        op.http_status = Some(503);
        self.push(op)
    }

    fn put(&mut self, key: &str, g: u64, size: u64, t: (u64, u64), outcome: Outcome) -> &mut H {
        let mut op = base_op(0, OpKind::Put, Some(k(key)), t, outcome);
        op.generation = Some(g);
        op.size = Some(size);
        op.sha256 = Some(Body::new(SEED, &k(key), g, size).sha256());
        self.push(op)
    }

    fn del(&mut self, key: &str, g: u64, t: (u64, u64), outcome: Outcome) -> &mut H {
        let mut op = base_op(0, OpKind::Delete, Some(k(key)), t, outcome);
        op.generation = Some(g);
        self.push(op)
    }

    fn get(&mut self, key: &str, t: (u64, u64), saw: Saw) -> &mut H {
        let mut op = base_op(0, OpKind::Get, Some(k(key)), t, Outcome::Ok);
        match saw {
            Saw::Absent => op.http_status = Some(404),
            Saw::Gen(of, g, size) => {
                let body = Body::new(SEED, &k(of), g, size);
                op.generation = Some(g);
                op.size = Some(size);
                op.sha256 = Some(body.sha256());
                op.detail = trace_json(&body.slice(0, size.min(4096)));
            }
            Saw::GenWithMeta(g, size, meta) => {
                op.generation = Some(meta);
                op.size = Some(size);
                op.sha256 = Some(Body::new(SEED, &k(key), g, size).sha256());
            }
            Saw::Garbage(size) => {
                op.size = Some(size);
                op.sha256 = Some([7; 32]);
            }
        }
        self.push(op)
    }

    fn head(&mut self, key: &str, t: (u64, u64), size: u64, g: u64) -> &mut H {
        let mut op = base_op(0, OpKind::Head, Some(k(key)), t, Outcome::Ok);
        op.size = Some(size);
        op.generation = Some(g);
        self.push(op)
    }

    /// A Range GET answered with Content-Range `answer` and the bytes
    /// [bytes.0, bytes.1] of (key, g, size).
    #[allow(clippy::too_many_arguments)]
    fn range_bytes(
        &mut self,
        key: &str,
        t: (u64, u64),
        spec: &str,
        answer: (u64, u64),
        bytes: (u64, u64),
        g: u64,
        size: u64,
    ) -> &mut H {
        let mut op = base_op(0, OpKind::Range, Some(k(key)), t, Outcome::Ok);
        op.range_header = Some(spec.into());
        op.range = Some(answer);
        op.size = Some(size);
        op.generation = Some(g);
        let end = bytes.1.saturating_add(1).min(size);
        op.sha256 = Some(slice_sha256(
            &Body::new(SEED, &k(key), g, size),
            bytes.0,
            end,
        ));
        self.push(op)
    }

    /// A Range GET answered with bytes [first, last] of (key, g, size).
    fn range(
        &mut self,
        key: &str,
        t: (u64, u64),
        spec: &str,
        answer: (u64, u64),
        g: u64,
        size: u64,
    ) -> &mut H {
        let mut op = base_op(0, OpKind::Range, Some(k(key)), t, Outcome::Ok);
        op.range_header = Some(spec.into());
        op.range = Some(answer);
        op.size = Some(size);
        op.generation = Some(g);
        op.sha256 = Some(slice_sha256(
            &Body::new(SEED, &k(key), g, size),
            answer.0,
            answer.1 + 1,
        ));
        self.push(op)
    }

    /// A Range GET answered 416, with `bytes */total` if `total` is given.
    fn range_416(&mut self, key: &str, t: (u64, u64), spec: &str, total: Option<u64>) -> &mut H {
        let mut op = base_op(0, OpKind::Range, Some(k(key)), t, Outcome::Ok);
        op.http_status = Some(416);
        op.range_header = Some(spec.into());
        op.size = total;
        self.push(op)
    }

    fn list(
        &mut self,
        t: (u64, u64),
        after: Option<&str>,
        keys: &[(&str, u64)],
        truncated: bool,
    ) -> &mut H {
        let mut op = base_op(0, OpKind::List, None, t, Outcome::Ok);
        let detail = ListDetail {
            after: after.map(k),
            keys: keys.iter().map(|(n, s)| (k(n), *s, None)).collect(),
            truncated,
            ..ListDetail::default()
        };
        op.detail = Some(serde_json::to_string(&detail).unwrap());
        self.push(op)
    }
}

fn trace_json(bytes: &[u8]) -> Option<String> {
    let trace = crate::history::body::trace(bytes, 0)?;
    Some(serde_json::to_string(&TraceDetail { trace }).unwrap())
}

use Outcome::{Ambiguous, Fail, Ok as Acked};

fn info() -> RunInfo {
    RunInfo::new(SEED, PREFIX, WORKERS)
}

/// One row: a history and the findings it must produce (none for valid ones).
fn check_row(name: &str, h: &mut H, expected: &[Class]) {
    check_row_with(info(), name, h, expected)
}

fn check_row_with(info: RunInfo, name: &str, h: &mut H, expected: &[Class]) {
    let findings = check(&info, h.ops.clone()).findings;
    let classes: Vec<Class> = findings.iter().map(|f| f.class).collect();
    assert_eq!(classes, expected, "{name}: {findings:#?}");
}

#[test]
fn valid_histories_produce_no_findings() {
    check_row(
        "a read racing an overwrite may see either value",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 30), Acked)
            .get("a", (25, 35), Saw::Gen("a", 1, 10))
            .get("a", (25, 35), Saw::Gen("a", 2, 20)),
        &[],
    );
    check_row(
        "an ambiguous write may become visible late, and the old value stays allowed",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 30), Ambiguous)
            .get("a", (100, 110), Saw::Gen("a", 2, 20))
            .get("a", (120, 130), Saw::Gen("a", 1, 10)),
        &[],
    );
    check_row(
        "an ambiguous DELETE may or may not have happened",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .del("a", 2, (20, 30), Ambiguous)
            .get("a", (40, 50), Saw::Absent)
            .get("a", (60, 70), Saw::Gen("a", 1, 10)),
        &[],
    );
    check_row(
        "two empty generations: metadata naming either allowed one is fine",
        H::default()
            .put("a", 1, 0, (0, 10), Acked)
            .put("a", 2, 0, (20, 30), Acked)
            .get("a", (25, 35), Saw::GenWithMeta(1, 0, 2))
            .get("a", (25, 35), Saw::GenWithMeta(2, 0, 1)),
        &[],
    );
    check_row(
        "a 0-byte object",
        H::default()
            .put("a", 1, 0, (0, 10), Acked)
            .get("a", (20, 30), Saw::Gen("a", 1, 0)),
        &[],
    );
    check_row(
        "a 404 for a key whose only write failed",
        H::default()
            .put("a", 1, 10, (0, 10), Fail)
            .get("a", (20, 30), Saw::Absent),
        &[],
    );
    check_row(
        "a read during the first write may see absent",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .get("a", (5, 8), Saw::Absent),
        &[],
    );
    check_row(
        "ranges: first byte, last byte, suffix and window of the right generation",
        H::default()
            .put("a", 1, 5000, (0, 10), Acked)
            .range("a", (20, 30), "bytes=0-0", (0, 0), 1, 5000)
            .range("a", (20, 30), "bytes=-1", (4999, 4999), 1, 5000)
            .range("a", (20, 30), "bytes=-100", (4900, 4999), 1, 5000)
            .range("a", (20, 30), "bytes=4000-9000", (4000, 4999), 1, 5000),
        &[],
    );
    check_row(
        "HEAD agreeing with the acknowledged generation",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .head("a", (20, 30), 10, 1),
        &[],
    );
    check_row(
        "LIST pages racing a write and a DELETE",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("b", 1, 10, (20, 30), Acked)
            .del("a", 2, (20, 30), Acked)
            .list((25, 35), None, &[("a", 10)], false)
            .list((25, 35), None, &[("b", 10)], false),
        &[],
    );
    check_row(
        "a 416 for a range past the end of the object",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .range_416("a", (20, 30), "bytes=10-", Some(10))
            .range_416("a", (20, 30), "bytes=50-60", None),
        &[],
    );
    check_row(
        "a 416 for any range of an empty object (RFC 9110)",
        H::default()
            .put("a", 1, 0, (0, 10), Acked)
            .range_416("a", (20, 30), "bytes=-1", Some(0)),
        &[],
    );
    check_row(
        "a 416 racing an overwrite that makes the object shorter",
        H::default()
            .put("a", 1, 100, (0, 10), Acked)
            .put("a", 2, 5, (20, 40), Acked)
            .range_416("a", (30, 35), "bytes=50-", Some(5)),
        &[],
    );
    check_row(
        "an abandoned write seen before any later write was acknowledged",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 30), Ambiguous)
            .get("a", (100, 110), Saw::Gen("a", 2, 20))
            .put("a", 3, 30, (120, 130), Acked)
            .get("a", (140, 150), Saw::Gen("a", 3, 30)),
        &[],
    );
    check_row(
        "a truncated page covers only up to its last key",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("b", 1, 10, (0, 10), Acked)
            .list((20, 30), None, &[("a", 10)], true)
            .list((20, 30), Some("a"), &[("b", 10)], false),
        &[],
    );
}

#[test]
fn each_violation_class_is_named() {
    check_row(
        "lost-write: 404 after an acknowledged PUT",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .get("a", (20, 30), Saw::Absent),
        &[Class::LostWrite],
    );
    check_row(
        "stale-read: an older generation after an acknowledged overwrite",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 30), Acked)
            .get("a", (40, 50), Saw::Gen("a", 1, 10)),
        &[Class::StaleRead],
    );
    check_row(
        "stale-read of an empty object, told only by its metadata generation",
        H::default()
            .put("a", 1, 0, (0, 10), Acked)
            .put("a", 2, 0, (20, 30), Acked)
            .get("a", (40, 50), Saw::GenWithMeta(2, 0, 1)),
        &[Class::StaleRead],
    );
    check_row(
        "resurrection: the old value after an acknowledged DELETE",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .del("a", 2, (20, 30), Acked)
            .get("a", (40, 50), Saw::Gen("a", 1, 10)),
        &[Class::Resurrection],
    );
    check_row(
        "corruption: bytes matching no generation",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .get("a", (20, 30), Saw::Garbage(10)),
        &[Class::Corruption],
    );
    check_row(
        "misdirected: another key's body",
        H::default()
            .put("a", 1, 5000, (0, 10), Acked)
            .put("b", 1, 5000, (0, 10), Acked)
            .get("a", (20, 30), Saw::Gen("b", 1, 5000)),
        &[Class::Misdirected],
    );
    check_row(
        "phantom: a generation whose write certainly failed",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 10, (20, 30), Fail)
            .get("a", (40, 50), Saw::Gen("a", 2, 10)),
        &[Class::Phantom],
    );
    check_row(
        "phantom: a generation never written at all",
        H::default()
            .put("a", 1, 64, (0, 10), Acked)
            .get("a", (20, 30), Saw::Gen("a", 7, 64)),
        &[Class::Phantom],
    );
    check_row(
        "metadata-mismatch: a HEAD with the wrong length",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .head("a", (20, 30), 11, 1),
        &[Class::MetadataMismatch],
    );
    check_row(
        "metadata-mismatch: the right bytes under another generation's metadata",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .get("a", (20, 30), Saw::GenWithMeta(1, 10, 3)),
        &[Class::MetadataMismatch],
    );
    check_row(
        "corruption: a shifted range (bytes 1-10 under the requested Content-Range 0-9)",
        H::default().put("a", 1, 5000, (0, 10), Acked).range_bytes(
            "a",
            (20, 30),
            "bytes=0-9",
            (0, 9),
            (1, 10),
            1,
            5000,
        ),
        &[Class::Corruption],
    );
    check_row(
        "metadata-mismatch: a Content-Range that disagrees with the request",
        H::default().put("a", 1, 5000, (0, 10), Acked).range(
            "a",
            (20, 30),
            "bytes=0-9",
            (1, 10),
            1,
            5000,
        ),
        &[Class::MetadataMismatch],
    );
    check_row(
        "metadata-mismatch: a 206 for a range of an empty object (seen from Garage 2.5.0)",
        H::default().put("a", 1, 0, (0, 10), Acked).range_bytes(
            "a",
            (20, 30),
            "bytes=-1",
            (0, u64::MAX),
            (0, u64::MAX),
            1,
            0,
        ),
        &[Class::MetadataMismatch],
    );
    check_row(
        "metadata-mismatch: a 416 claiming an object shorter than every allowed version",
        H::default()
            .put("a", 1, 100, (0, 10), Acked)
            .range_416("a", (20, 30), "bytes=50-", None),
        &[Class::MetadataMismatch],
    );
    check_row(
        "metadata-mismatch: a 416 naming a size no allowed version has",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .range_416("a", (20, 30), "bytes=10-", Some(9)),
        &[Class::MetadataMismatch],
    );
    check_row(
        "stale-read: a 416 that fits only the overwritten, shorter version",
        H::default()
            .put("a", 1, 5, (0, 10), Acked)
            .put("a", 2, 100, (20, 30), Acked)
            .range_416("a", (40, 50), "bytes=50-", Some(5)),
        &[Class::StaleRead],
    );
    check_row(
        "resurrection: a 416 for a key deleted and acknowledged",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .del("a", 2, (20, 30), Acked)
            .range_416("a", (40, 50), "bytes=10-", None),
        &[Class::Resurrection],
    );
    check_row(
        "phantom: a 416 for a key never written",
        H::default()
            .put("b", 1, 10, (0, 10), Acked)
            .put("a", 1, 10, (20, 30), Acked)
            .range_416("a", (5, 8), "bytes=10-", Some(3)),
        &[Class::Phantom],
    );
    check_row(
        "late-write: an abandoned overwrite seen after a later one was acknowledged",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 30), Ambiguous)
            .put("a", 3, 30, (40, 50), Acked)
            .get("a", (60, 70), Saw::Gen("a", 2, 20)),
        &[Class::LateWrite],
    );
    check_row(
        "late-write: an abandoned PUT seen after an acknowledged DELETE",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 30), Ambiguous)
            .del("a", 3, (40, 50), Acked)
            .head("a", (60, 70), 20, 2),
        &[Class::LateWrite],
    );
    check_row(
        "late-write: absent, the value of an abandoned DELETE, after an acknowledged PUT",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .del("a", 2, (20, 30), Ambiguous)
            .put("a", 3, 30, (40, 50), Acked)
            .get("a", (60, 70), Saw::Absent),
        &[Class::LateWrite],
    );
    check_row(
        "late-write: a LIST entry showing an abandoned overwrite",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 30), Ambiguous)
            .put("a", 3, 30, (40, 50), Acked)
            .list((60, 70), None, &[("a", 20)], false),
        &[Class::LateWrite],
    );
    check_row(
        "late-write: a key missing from a page after its abandoned DELETE",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .del("a", 2, (20, 30), Ambiguous)
            .put("a", 3, 30, (40, 50), Acked)
            .list((60, 70), None, &[], false),
        &[Class::LateWrite],
    );
    check_row(
        "list-missing: an acknowledged key absent from a page covering it",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .list((20, 30), None, &[], false),
        &[Class::ListMissing],
    );
    check_row(
        "list-ghost: a deleted key still listed",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .del("a", 2, (20, 30), Acked)
            .list((40, 50), None, &[("a", 10)], false),
        &[Class::ListGhost],
    );
    check_row(
        "metadata-mismatch: a listed size no allowed version has",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .list((20, 30), None, &[("a", 99)], false),
        &[Class::MetadataMismatch],
    );
    check_row(
        "metadata-mismatch: a listed ETag no allowed version has",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .etags(&["\"e1\""])
            .list((20, 30), None, &[("a", 10)], false)
            .etags(&["\"e2\""]),
        &[Class::MetadataMismatch],
    );
    check_row(
        "a listed ETag equal to the write's answer is fine",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .etags(&["\"e1\""])
            .list((20, 30), None, &[("a", 10)], false)
            .etags(&["\"e1\""]),
        &[],
    );
    check_row(
        "list-protocol: keys out of order",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("b", 1, 10, (0, 10), Acked)
            .list((20, 30), None, &[("b", 10), ("a", 10)], false),
        &[Class::ListProtocol],
    );
    check_row(
        "list-protocol: a continuation that repeats the previous page's last key",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("b", 1, 10, (0, 10), Acked)
            .list((20, 30), Some("a"), &[("a", 10), ("b", 10)], false),
        &[Class::ListProtocol],
    );
    check_row(
        "phantom: a listed key this run never wrote",
        H::default().put("a", 1, 10, (0, 10), Acked).list(
            (20, 30),
            None,
            &[("a", 10), ("zz", 3)],
            false,
        ),
        &[Class::Phantom],
    );
    check_row(
        "phantom: a listed key with characters JSON escapes (the page is still read)",
        H::default().put("a", 1, 10, (0, 10), Acked).list(
            (20, 30),
            None,
            &[("a", 10), ("z\"\\z", 3)],
            false,
        ),
        &[Class::Phantom],
    );
}

#[test]
fn a_stale_list_entry_is_named_by_the_generation_it_shows() {
    // A replica that missed the overwrite and the DELETE lists g1: once
    // while only Absent is allowed, once while an overwrite is in flight.
    let mut h = H::default();
    h.put("a", 1, 10, (0, 10), Acked)
        .etags(&["\"e1\""])
        .put("a", 2, 20, (20, 30), Acked)
        .etags(&["\"e2\""])
        .del("a", 3, (40, 50), Acked)
        .list((60, 70), None, &[("a", 10)], false)
        .etags(&["\"e1\""])
        .put("a", 4, 30, (80, 200), Ambiguous)
        .list((90, 100), None, &[("a", 10)], false)
        .etags(&["\"e1\""]);
    let v = check(&info(), h.ops.clone());
    let got: Vec<(Class, &str, &str)> = v
        .findings
        .iter()
        .map(|f| (f.class, f.expected.as_str(), f.seen.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Class::ListGhost,
                "absent (DELETE g3)",
                "on the page: g1, older than allowed"
            ),
            (
                Class::MetadataMismatch,
                "absent (DELETE g3) or g4 (30 bytes)",
                "listed with 10 bytes, ETag \"e1\": g1, older than allowed"
            ),
        ]
    );
    assert_eq!(v.findings[0].write_ids(), vec![3, 1]);
}

#[test]
fn a_stale_list_entry_dropped_from_memory_is_still_named() {
    // As a soak saw it: a node back from a stop lists g1 (long superseded
    // and pruned) next to a DELETE the quorum's newest replica holds.
    let mut h = H::default();
    h.put("a", 1, 10, (0, 10), Acked).etags(&["\"e1\""]);
    for g in 2..=5 {
        h.put("a", g, 20 + g, (g * 1_000, g * 1_000 + 10), Acked)
            .etags(&[&format!("\"e{g}\"")]);
    }
    h.del("a", 6, (9_000, 9_010), Acked)
        .list((9_020, 9_030), None, &[("a", 10)], false)
        .etags(&["\"e1\""]);
    let mut info = info();
    info.read_span_max_ns = 100;
    let v = check(&info, h.ops.clone());
    let got: Vec<(Class, &str)> = v
        .findings
        .iter()
        .map(|f| (f.class, f.seen.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![(Class::ListGhost, "on the page: g1, older than allowed")]
    );
    assert_eq!(v.findings[0].write_ids(), vec![6, 1]);
}

#[test]
fn findings_carry_their_witness() {
    let mut h = H::default();
    h.put("a", 1, 10, (0, 10), Acked)
        .put("a", 2, 20, (20, 30), Acked)
        .get("a", (40, 50), Saw::Gen("a", 1, 10));
    let v = check(&info(), h.ops.clone());
    let f = &v.findings[0];
    assert_eq!(f.key.as_deref(), Some("run/a"));
    assert_eq!(f.op_id, 3);
    assert_eq!((f.t_invoke_ns, f.t_ns), (40, 50));
    // The base that was expected, then the older write that was seen.
    assert_eq!(f.write_ids(), vec![2, 1]);
    assert_eq!(f.writes[0].outcome, Acked);
    assert_eq!((f.writes[0].t_invoke_ns, f.writes[0].t_return_ns), (20, 30));
    assert_eq!(f.expected, "g2 (20 bytes)");
    assert!(f.seen.starts_with("g1 (10 bytes)"), "{}", f.seen);
    assert_eq!(v.coverage.reads_checked, 1);
    // The read began 10 after its deciding write (g2) was acknowledged.
    assert_eq!(f.since_ack_ns, Some(10));
    assert!(!f.final_read);
}

#[test]
fn a_late_write_names_the_abandoned_write_and_the_acknowledged_one_it_overwrote() {
    let mut h = H::default();
    h.put("a", 1, 10, (0, 10), Acked)
        .put("a", 2, 20, (20, 30), Ambiguous)
        .put("a", 3, 30, (40, 50), Acked)
        .get("a", (60, 70), Saw::Gen("a", 2, 20));
    let f = &check(&info(), h.ops.clone()).findings[0];
    assert_eq!(f.class, Class::LateWrite);
    // The acknowledged write that was expected, then the abandoned one seen.
    assert_eq!(f.write_ids(), vec![3, 2]);
    assert_eq!(f.writes[1].outcome, Ambiguous);
    assert_eq!((f.writes[1].t_invoke_ns, f.writes[1].t_return_ns), (20, 30));
    assert!(f.seen.contains("abandoned by the client"), "{}", f.seen);
    assert!(f.seen.contains("after g3 was acknowledged"), "{}", f.seen);
    assert!(f.seen.contains("linearizability allows this"), "{}", f.seen);
}

#[test]
fn expected_ranges_follow_rfc_9110() {
    assert_eq!(expected_range("bytes=0-0", 10), Some((0, 0)));
    assert_eq!(expected_range("bytes=-1", 10), Some((9, 9)));
    assert_eq!(expected_range("bytes=-100", 10), Some((0, 9)));
    assert_eq!(expected_range("bytes=5-", 10), Some((5, 9)));
    assert_eq!(expected_range("bytes=5-100", 10), Some((5, 9)));
    assert_eq!(expected_range("bytes=10-", 10), None);
    assert_eq!(expected_range("bytes=0-0", 0), None);
}

#[test]
fn an_incomplete_ledger_does_not_call_an_unrecorded_in_flight_write_a_phantom() {
    let mut h = H::default();
    h.put("a", 1, 64, (0, 10), Acked)
        .get("a", (20, 30), Saw::Gen("a", 2, 64));
    let mut info = info();
    info.complete = false;
    let v = check(&info, h.ops.clone());
    assert_eq!(v.findings, vec![]);
    assert_eq!(v.coverage.reads_unknown, 1);
    info.complete = true;
    assert_eq!(
        check(&info, h.ops.clone()).findings[0].class,
        Class::Phantom
    );
}

/// A correct store in memory: every write that takes effect does so at one
/// instant after it was invoked and no later than its return (an ambiguous
/// one possibly after it returns, but before the key's next write starts),
/// and every read or LIST page observes the state at one instant from its
/// invocation to just before its return. (The runner takes `t_invoke`
/// before the first byte leaves and `t_return` after the last arrives, so
/// an effect can never share an instant with those ends.) Such
/// histories satisfy the contract, so the oracle must find nothing.
fn correct_history(case: u64) -> H {
    use rand::Rng;
    let mut rng = crate::history::seed::substream(case, "oracle-property", 0);
    let keys = ["a", "b", "c", "d"];
    // (key, apply time, generation, size or None for a delete)
    let mut applied: Vec<(usize, u64, u64, Option<u64>)> = Vec::new();
    let mut h = H::default();
    for (ki, key) in keys.iter().enumerate() {
        let mut t = rng.random_range(0..50u64);
        for g in 1..=rng.random_range(1..12u64) {
            let len = rng.random_range(1..40u64);
            let (t0, t1) = (t, t + len);
            let next_start = t1 + rng.random_range(1..30u64);
            let outcome = match rng.random_range(0..10u32) {
                0 => Fail,
                1 | 2 => Ambiguous,
                _ => Acked,
            };
            let size = (!rng.random_bool(0.2)).then(|| rng.random_range(0..100u64));
            let at = match outcome {
                Acked => Some(rng.random_range(t0 + 1..=t1)),
                // Maybe never, maybe late, but before the next write starts.
                Ambiguous => rng
                    .random_bool(0.6)
                    .then(|| rng.random_range(t0 + 1..next_start)),
                _ => None,
            };
            if let Some(at) = at {
                applied.push((ki, at, g, size));
            }
            match size {
                Some(s) => h.put(key, g, s, (t0, t1), outcome),
                None => h.del(key, g, (t0, t1), outcome),
            };
            t = next_start;
        }
    }
    let state_at = |ki: usize, q: u64| -> Option<(u64, u64)> {
        applied
            .iter()
            .filter(|(k, at, _, _)| *k == ki && *at <= q)
            .max_by_key(|(_, at, g, _)| (*at, *g))
            .and_then(|(_, _, g, size)| size.map(|s| (*g, s)))
    };
    for _ in 0..40 {
        let a = rng.random_range(0..400u64);
        let b = a + rng.random_range(1..30u64);
        let q = rng.random_range(a..b);
        if rng.random_bool(0.2) {
            // One LIST walk at instant q, two keys a page.
            let present: Vec<(&str, u64)> = keys
                .iter()
                .enumerate()
                .filter_map(|(ki, k)| state_at(ki, q).map(|(_, s)| (*k, s)))
                .collect();
            let mut after: Option<&str> = None;
            let pages: Vec<&[(&str, u64)]> = present.chunks(2).collect();
            if pages.is_empty() {
                h.list((a, b), None, &[], false);
            }
            for (i, page) in pages.iter().enumerate() {
                let truncated = i + 1 < pages.len();
                h.list((a, b), after, page, truncated);
                after = page.last().map(|(k, _)| *k);
            }
            continue;
        }
        let ki = rng.random_range(0..keys.len());
        match state_at(ki, q) {
            None => h.get(keys[ki], (a, b), Saw::Absent),
            Some((g, s)) => match rng.random_range(0..3u32) {
                0 => h.get(keys[ki], (a, b), Saw::Gen(keys[ki], g, s)),
                1 => h.head(keys[ki], (a, b), s, g),
                _ if s > 0 => {
                    let first = rng.random_range(0..s);
                    h.range(
                        keys[ki],
                        (a, b),
                        &format!("bytes={first}-"),
                        (first, s - 1),
                        g,
                        s,
                    )
                }
                _ => h.get(keys[ki], (a, b), Saw::Gen(keys[ki], g, s)),
            },
        };
    }
    h
}

#[test]
fn histories_of_a_correct_store_never_produce_a_finding() {
    let mut total = Coverage::default();
    for case in 0..200u64 {
        let h = correct_history(case);
        let v = check(&info(), h.ops.clone());
        assert_eq!(v.findings, vec![], "case {case}");
        total.reads_checked += v.coverage.reads_checked;
        total.list_pages_checked += v.coverage.list_pages_checked;
        total.list_keys_checked += v.coverage.list_keys_checked;
        total.ambiguous_writes += v.coverage.ambiguous_writes;
    }
    assert!(total.reads_checked > 4_000, "{total:?}");
    assert!(
        total.list_pages_checked > 1_000 && total.list_keys_checked > 2_000,
        "{total:?}"
    );
    assert!(total.ambiguous_writes > 200, "{total:?}");
}

/// Rewrites a LIST page's entries.
fn set_page_keys(op: &mut OpRecord, keys: Vec<serde_json::Value>) {
    let mut page: serde_json::Value = serde_json::from_str(op.detail.as_deref().unwrap()).unwrap();
    page["keys"] = serde_json::Value::Array(keys);
    op.detail = Some(page.to_string());
}

fn page_keys(op: &OpRecord) -> (Vec<serde_json::Value>, bool) {
    let page: serde_json::Value = serde_json::from_str(op.detail.as_deref().unwrap()).unwrap();
    (
        page["keys"].as_array().unwrap().clone(),
        page["truncated"].as_bool().unwrap(),
    )
}

/// The candidate writes of each key of a whole history, sorted by
/// generation, to compute what a read was allowed to see.
struct Keys {
    writes: BTreeMap<String, Vec<Write>>,
}

impl Keys {
    fn build(ops: &[OpRecord]) -> Keys {
        let mut writes: BTreeMap<String, Vec<Write>> = BTreeMap::new();
        for op in ops
            .iter()
            .filter(|o| o.kind.is_write() && o.outcome != Fail)
        {
            writes
                .entry(op.key.clone().unwrap())
                .or_default()
                .push(Write {
                    op_id: op.id,
                    generation: op.generation.unwrap(),
                    deleted: op.kind == OpKind::Delete,
                    size: op.size.unwrap_or(0),
                    sha256: op.sha256,
                    etag: op.etag.clone(),
                    t_invoke: op.t_invoke_ns,
                    t_return: op.t_return_ns,
                    outcome: op.outcome,
                });
        }
        for list in writes.values_mut() {
            list.sort_by_key(|w| w.generation);
        }
        Keys { writes }
    }

    fn allowed(&self, key: &str, t_invoke: u64, t_return: u64) -> Allowed<'_> {
        match self.writes.get(key) {
            Some(list) => allowed_of(list, t_invoke, t_return, 0),
            None => Allowed {
                base: None,
                later: &[],
                floor: 0,
            },
        }
    }
}

/// Plants one fault of `class` into the first operation of a correct
/// history where it is a violation; `None` if the history offers none.
fn plant(ops: &[OpRecord], class: Class) -> Option<Vec<OpRecord>> {
    let keys = Keys::build(ops);
    let mut out = ops.to_vec();
    for (i, op) in ops.iter().enumerate() {
        let allowed = op
            .key
            .as_deref()
            .map(|k| keys.allowed(k, op.t_invoke_ns, op.t_return_ns));
        let present_get = op.kind == OpKind::Get && op.http_status == Some(200);
        let o = &mut out[i];
        let set_body = |o: &mut OpRecord, key: &str, g: u64, size: u64| {
            let body = Body::new(SEED, key, g, size);
            o.http_status = Some(200);
            o.generation = Some(g);
            o.size = Some(size);
            o.sha256 = Some(body.sha256());
            o.detail = trace_json(&body.slice(0, size.min(4096)));
        };
        match class {
            Class::LostWrite if op.kind == OpKind::Get && !allowed.as_ref()?.absent_allowed() => {
                // Not where a DELETE the client abandoned came before base:
                // absent is then that DELETE's value, applied late.
                let base = allowed.as_ref()?.base.map_or(0, |b| b.generation);
                if keys.writes[op.key.as_deref()?]
                    .iter()
                    .any(|w| w.deleted && w.outcome == Ambiguous && w.generation < base)
                {
                    continue;
                }
                o.http_status = Some(404);
                (o.generation, o.size, o.sha256, o.detail) = (None, None, None, None);
            }
            Class::StaleRead | Class::Resurrection | Class::LateWrite if op.kind == OpKind::Get => {
                let a = allowed.as_ref()?;
                let Some(base) = a.base else { continue };
                if class != Class::LateWrite && base.deleted != (class == Class::Resurrection) {
                    continue;
                }
                // A late write shows a value the client abandoned; a stale
                // read or a resurrection one that was acknowledged.
                let abandoned = class == Class::LateWrite;
                let key = op.key.as_deref()?;
                let older = keys.writes[key].iter().find(|w| {
                    !w.deleted
                        && (w.outcome == Ambiguous) == abandoned
                        && w.generation < base.generation
                        && w.size > 0
                        && !a
                            .present()
                            .any(|v| v.size == w.size && v.sha256 == w.sha256)
                });
                let Some(m) = older else { continue };
                set_body(o, key, m.generation, m.size);
            }
            Class::Corruption if present_get && op.size? > 0 => {
                o.sha256 = Some([0xAB; 32]);
                o.detail = None;
            }
            Class::Misdirected if present_get => {
                let key = op.key.as_deref()?;
                let other = keys.writes.iter().find_map(|(k, ws)| {
                    (k != key)
                        .then(|| ws.iter().find(|w| !w.deleted && w.size >= 32))?
                        .map(|w| (k.clone(), w))
                });
                let Some((k2, w2)) = other else { continue };
                set_body(o, &k2, w2.generation, w2.size);
            }
            Class::Phantom if present_get => set_body(o, op.key.as_deref()?, 999, 64),
            Class::MetadataMismatch if op.kind == OpKind::Head && op.http_status == Some(200) => {
                o.size = Some(op.size? + 1);
            }
            Class::ListMissing | Class::ListGhost | Class::ListProtocol
                if op.kind == OpKind::List =>
            {
                let (entries, truncated) = page_keys(op);
                let names: Vec<String> = entries
                    .iter()
                    .map(|e| e[0].as_str().unwrap().to_string())
                    .collect();
                let page_allowed = |k: &str| keys.allowed(k, op.t_invoke_ns, op.t_return_ns);
                match class {
                    Class::ListProtocol if entries.len() >= 2 => {
                        let mut swapped = entries.clone();
                        swapped.swap(0, 1);
                        set_page_keys(o, swapped);
                    }
                    Class::ListMissing => {
                        // Not the last entry of a truncated page: that one bounds the page.
                        let limit = if truncated {
                            names.len().saturating_sub(1)
                        } else {
                            names.len()
                        };
                        // Not a key whose abandoned DELETE came before base
                        // (missing, it shows that DELETE applied late).
                        let abandoned_delete = |k: &str| {
                            let base = page_allowed(k).base.map_or(0, |b| b.generation);
                            keys.writes[k]
                                .iter()
                                .any(|w| w.deleted && w.outcome == Ambiguous && w.generation < base)
                        };
                        let Some(j) = (0..limit).find(|&j| {
                            !page_allowed(&names[j]).absent_allowed()
                                && !abandoned_delete(&names[j])
                        }) else {
                            continue;
                        };
                        let mut fewer = entries.clone();
                        fewer.remove(j);
                        set_page_keys(o, fewer);
                    }
                    Class::ListGhost => {
                        let page: serde_json::Value =
                            serde_json::from_str(op.detail.as_deref()?).unwrap();
                        let after = page["after"]
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_default();
                        let ghost = keys.writes.keys().find(|k| {
                            k.as_str() > after.as_str()
                                && (!truncated
                                    || names.last().is_some_and(|l| k.as_str() < l.as_str()))
                                && !names.contains(k)
                                && page_allowed(k).present().next().is_none()
                        });
                        let Some(ghost) = ghost else { continue };
                        let mut more = entries.clone();
                        more.push(serde_json::json!([ghost, 5, null]));
                        more.sort_by(|x, y| x[0].as_str().cmp(&y[0].as_str()));
                        set_page_keys(o, more);
                    }
                    _ => continue,
                }
            }
            _ => continue,
        }
        return Some(out);
    }
    None
}

#[test]
fn one_planted_fault_of_each_class_gives_exactly_that_finding() {
    // Non-monotonic needs the linearizable contract and unrecoverable the
    // final verification: both have their own tests.
    let classes = Class::ALL
        .into_iter()
        .filter(|c| !matches!(c, Class::NonMonotonic | Class::Unrecoverable));
    for class in classes {
        let mut planted = 0;
        for case in 0..100u64 {
            let h = correct_history(case);
            let Some(ops) = plant(&h.ops, class) else {
                continue;
            };
            let found: Vec<Class> = check(&info(), ops)
                .findings
                .iter()
                .map(|f| f.class)
                .collect();
            assert_eq!(
                found,
                vec![class],
                "case {case}: planted {}",
                class.as_str()
            );
            planted += 1;
        }
        assert!(
            planted >= 20,
            "only {planted} histories could take a {}",
            class.as_str()
        );
    }
}

#[test]
fn the_linearizable_contract_forbids_going_back_in_time() {
    let linearizable = RunInfo {
        contract: Contract::Linearizable,
        ..info()
    };
    let racing = || {
        let mut h = H::default();
        // Two reads after an overwrite that is still in flight: the first
        // sees the new value, the second, started after the first
        // returned, sees the old one.
        h.put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 100), Acked)
            .get("a", (30, 40), Saw::Gen("a", 2, 20))
            .get("a", (50, 60), Saw::Gen("a", 1, 10));
        h
    };
    check_row("read-after-write allows it", &mut racing(), &[]);
    check_row_with(
        linearizable.clone(),
        "non-monotonic: a read older than what an earlier read saw",
        &mut racing(),
        &[Class::NonMonotonic],
    );
    check_row_with(
        linearizable.clone(),
        "overlapping reads may disagree",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 20, (20, 100), Acked)
            .get("a", (30, 40), Saw::Gen("a", 2, 20))
            .get("a", (35, 60), Saw::Gen("a", 1, 10)),
        &[],
    );
    check_row_with(
        linearizable,
        "non-monotonic: absent again after a read saw the first write in flight",
        H::default()
            .put("a", 1, 10, (0, 100), Acked)
            .get("a", (30, 40), Saw::Gen("a", 1, 10))
            .get("a", (50, 60), Saw::Absent),
        &[Class::NonMonotonic],
    );
}

#[test]
fn final_verification_reads_that_get_no_answer_are_unrecoverable() {
    check_row(
        "an unavailable read during the run proves nothing",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .unavailable(OpKind::Get, "a", (20, 30)),
        &[],
    );
    check_row(
        "unrecoverable: the final GET is still unavailable",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .unavailable(OpKind::Get, "a", (20, 30))
            .final_(),
        &[Class::Unrecoverable],
    );
    check_row(
        "a final GET answered at its second attempt is no finding",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .unavailable(OpKind::Get, "a", (20, 30))
            .final_()
            .get("a", (40, 50), Saw::Gen("a", 1, 10))
            .final_(),
        &[],
    );
    check_row(
        "unrecoverable once per read no attempt answered, whatever its attempts",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .unavailable(OpKind::Get, "a", (20, 30))
            .final_()
            .unavailable(OpKind::Head, "a", (20, 30))
            .final_()
            .unavailable(OpKind::Get, "a", (40, 50))
            .final_()
            .head("a", (60, 70), 10, 1)
            .final_(),
        &[Class::Unrecoverable],
    );
    let mut h = H::default();
    h.put("a", 1, 10, (0, 10), Acked)
        .unavailable(OpKind::Get, "a", (20, 30))
        .final_()
        .unavailable(OpKind::Get, "a", (40, 50))
        .final_();
    let f = &check(&info(), h.ops.clone()).findings[0];
    assert_eq!(f.op_id, 3, "the finding cites the last attempt");
    assert!(
        f.seen.starts_with("2 attempts without an answer"),
        "{}",
        f.seen
    );
    assert!(f.final_read);
    check_row(
        "final reads are checked like any other",
        H::default()
            .put("a", 1, 10, (0, 10), Acked)
            .put("a", 2, 10, (20, 30), Acked)
            .get("a", (40, 50), Saw::Gen("a", 1, 10))
            .final_(),
        &[Class::StaleRead],
    );
}

/// Feeds `ops` one by one; returns each finding with the number of
/// operations fed when it came out.
fn feed(info: RunInfo, ops: Vec<OpRecord>) -> (Vec<(usize, Finding)>, Oracle) {
    let mut oracle = Oracle::new(info);
    let mut out = Vec::new();
    for (i, op) in ops.into_iter().enumerate() {
        oracle.observe(op);
        out.extend(oracle.take_findings().into_iter().map(|f| (i, f)));
    }
    (out, oracle)
}

#[test]
fn a_violation_is_found_while_the_history_streams_not_at_its_end() {
    let (info, mut ops) = synth::history(5, 20_000, 480);
    // Turn a present GET into a 404 where only present values were allowed.
    let keys = Keys::build(&ops);
    let at = (5_000..ops.len())
        .find(|&i| {
            let op = &ops[i];
            op.kind == OpKind::Get
                && op.http_status == Some(200)
                && !keys
                    .allowed(op.key.as_deref().unwrap(), op.t_invoke_ns, op.t_return_ns)
                    .absent_allowed()
        })
        .unwrap();
    let op = &mut ops[at];
    op.http_status = Some(404);
    (op.generation, op.size, op.sha256, op.detail) = (None, None, None, None);
    let planted = op.id;
    let (found, oracle) = feed(info, ops);
    assert_eq!(found.len(), 1, "{found:#?}");
    let (when, f) = &found[0];
    assert_eq!((f.class, f.op_id), (Class::LostWrite, planted));
    // Judged as soon as the key's owner moved past the read: within one
    // turn of every worker.
    assert!(
        *when <= at + 2 * synth::WORKERS,
        "found after op {when}, planted at {at}"
    );
    assert!(oracle.finish().findings.is_empty());
}

#[test]
fn memory_follows_live_keys_not_history_length() {
    let held_after = |ops: usize| {
        let (mut info, stream) = synth::stream(8, 2_400);
        // Reads last 5 units here; keep 2,000 units of history.
        info.read_span_max_ns = 2_000;
        let mut oracle = Oracle::new(info);
        for op in stream.take(ops) {
            oracle.observe(op);
        }
        let held = oracle.held_writes();
        assert_eq!(oracle.finish().findings, vec![]);
        held
    };
    let short = held_after(50_000);
    let long = held_after(400_000);
    // 2,400 keys, writes spread evenly: a handful held per key, whatever
    // the history's length.
    assert!(long < 2_400 * 4, "{long} writes held after 400k operations");
    assert!(
        long <= short + short / 4,
        "held writes grew from {short} to {long}"
    );
}

#[test]
fn a_read_older_than_the_history_kept_is_unknown_not_judged() {
    let mut h = H::default();
    h.put("a", 1, 10, (0, 10), Acked)
        .put("a", 2, 10, (20, 30), Acked)
        .put("a", 3, 10, (1_000, 1_010), Acked)
        // Impossible in a real run (it lasted longer than any read can):
        // by the time it arrives, g2 is gone.
        .get("a", (25, 1_020), Saw::Gen("a", 1, 10));
    let mut info = info();
    info.read_span_max_ns = 100;
    let v = check(&info, h.ops.clone());
    assert_eq!(v.findings, vec![]);
    assert_eq!(v.coverage.reads_unknown, 1);
}

#[test]
fn a_stale_generation_dropped_from_memory_is_still_named() {
    let mut h = H::default();
    h.put("a", 1, 3000, (0, 10), Acked);
    for g in 2..=5 {
        h.put("a", g, 3000, (g * 1_000, g * 1_000 + 10), Acked);
    }
    h.get("a", (9_000, 9_010), Saw::Gen("a", 1, 3000));
    let mut info = info();
    info.read_span_max_ns = 100;
    let v = check(&info, h.ops.clone());
    let classes: Vec<Class> = v.findings.iter().map(|f| f.class).collect();
    assert_eq!(classes, vec![Class::StaleRead], "{:#?}", v.findings);
    assert!(
        v.findings[0].seen.contains("g1, dropped"),
        "{}",
        v.findings[0].seen
    );
}

#[test]
fn keys_outside_the_run_prefix_are_checked_but_never_expected_on_a_page() {
    // The run's prefix is `run/b`: `run/a` is a key of another prefix,
    // filed whole; `run/b1` and `run/b2` are filed without the prefix.
    let mut narrow = info();
    narrow.prefix = k("b");
    let written = || {
        let mut h = H::default();
        h.put("a", 1, 10, (0, 10), Acked)
            .put("b1", 1, 11, (0, 10), Acked)
            .put("b2", 1, 12, (0, 10), Acked)
            .get("a", (20, 30), Saw::Gen("a", 1, 10))
            .get("b2", (20, 30), Saw::Gen("b2", 1, 12));
        h
    };
    // (row, page's lower bound, entries, truncated, findings)
    type Row<'a> = (
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, u64)],
        bool,
        &'a [Class],
    );
    let rows: [Row<'_>; 6] = [
        (
            "the prefix's keys",
            None,
            &[("b1", 11), ("b2", 12)],
            false,
            &[],
        ),
        (
            "a key outside the prefix listed",
            None,
            &[("a", 10), ("b1", 11), ("b2", 12)],
            false,
            &[Class::Phantom],
        ),
        (
            "a page after a key before the prefix",
            Some("a"),
            &[("b1", 11)],
            false,
            &[Class::ListMissing],
        ),
        (
            "a page after every key of the prefix",
            Some("c"),
            &[],
            false,
            &[],
        ),
        (
            "a truncated page ends the range",
            None,
            &[("b1", 11)],
            true,
            &[],
        ),
        (
            "a missing key is named in full",
            Some("b1"),
            &[],
            false,
            &[Class::ListMissing],
        ),
    ];
    for (name, after, entries, truncated, expected) in rows {
        let mut h = written();
        h.list((40, 50), after, entries, truncated);
        check_row_with(narrow.clone(), name, &mut h, expected);
    }
    // A truncated page whose only entry repeats its lower bound.
    let mut h = written();
    h.list((40, 50), Some("b1"), &[("b1", 11)], true);
    check_row_with(
        narrow.clone(),
        "a truncated page that repeats its lower bound",
        &mut h,
        &[Class::ListProtocol],
    );
    let mut h = written();
    h.list((40, 50), Some("b1"), &[], false);
    let v = check(&narrow, h.ops.clone());
    assert_eq!(v.findings[0].key.as_deref(), Some(k("b2").as_str()));
    assert_eq!(v.coverage.list_keys_checked, 1);
}

#[test]
fn run_keys_order_and_range_as_full_keys_do() {
    use std::cmp::Ordering::*;
    for (key, rest, want) in [
        ("p/a", "a", Equal),
        ("p/a", "b", Less),
        ("p/b", "a", Greater),
        ("o/z", "a", Less),
        ("q", "a", Greater),
        ("p", "", Less),
    ] {
        assert_eq!(cmp_run_key(key, "p/", rest), want, "{key} vs p/{rest}");
        assert_eq!(key.cmp(&format!("p/{rest}")), want, "{key} vs p/{rest}");
    }
    assert_eq!(
        run_key_range("p/", None, None),
        Some((Bound::Excluded(""), Bound::Unbounded))
    );
    assert_eq!(
        run_key_range("p/", Some("p/x"), Some("p/y")),
        Some((Bound::Excluded("x"), Bound::Included("y")))
    );
    assert_eq!(
        run_key_range("p/", Some("a"), Some("z")),
        Some((Bound::Unbounded, Bound::Unbounded))
    );
    assert_eq!(run_key_range("p/", Some("q"), None), None);
    assert_eq!(run_key_range("p/", None, Some("a")), None);
    // A page ending before its own lower bound covers nothing.
    assert_eq!(run_key_range("p/", Some("p/y"), Some("p/x")), None);
    assert_eq!(
        run_key_range("p/", Some("p/x"), Some("p/x")),
        Some((Bound::Excluded("x"), Bound::Included("x")))
    );
}

#[test]
fn ordered_keys_sort_as_their_strings() {
    let keys = [
        "",
        "\0",
        "a",
        "a\0",
        "ab",
        "w003/k00025",
        "w003/k000251",
        "w003/k00026",
        "0123456789abcdef",
        "0123456789abcdef\0",
        "0123456789abcdefg",
        "0123456789abcdeg",
        "é",
        "ü-very-long-key-beyond-sixteen-bytes/a",
        "ü-very-long-key-beyond-sixteen-bytes/b",
    ];
    for a in keys {
        for b in keys {
            assert_eq!(
                OrdKey::of(a).cmp(&OrdKey::of(b)),
                a.cmp(b),
                "{a:?} vs {b:?}"
            );
        }
    }
}
