//! Synthetic histories at scale, for benchmarking the oracle: a correct
//! store (every write takes effect one unit after it starts, every read sees
//! the state at the instant it starts), so a check must find nothing, and
//! the time it takes is the oracle's own.

use rand::Rng;

use crate::history::{OpKind, Outcome};
use crate::ledger::OpRecord;
use crate::workload::body::Body;
use crate::workload::plan::substream;

use super::RunInfo;

/// Per key: next generation, the present value (generation, size, sha256)
/// if any, and until when its current write is in flight.
type KeyState = (u64, Option<(u64, u64, [u8; 32])>, u64);

/// Length of every operation, in nanoseconds of the synthetic clock.
const OP_NS: u64 = 5;

/// Generates `ops` operations over `keys` keys: 35 % writes (a tenth of
/// them DELETEs, a tenth ambiguous), GETs, HEADs, small Range GETs and
/// LIST pages of 20 keys.
pub fn history(seed: u64, ops: usize, keys: usize) -> (RunInfo, Vec<OpRecord>) {
    let prefix = "synth/".to_string();
    let names: Vec<String> = (0..keys).map(|k| format!("{prefix}k{k:07}")).collect();
    let mut rng = substream(seed, "oracle-synth", 0);
    let mut state: Vec<KeyState> = vec![(1, None, 0); keys];
    let mut out = Vec::with_capacity(ops);
    let blank = |id: u64, kind: OpKind, key: Option<String>, t: u64| OpRecord {
        id,
        t_invoke_ns: t,
        t_return_ns: t + OP_NS,
        http_status: Some(200),
        ..OpRecord::new(kind, key, Outcome::Ok)
    };
    for i in 0..ops {
        let t = 10 + i as u64;
        let id = i as u64 + 1;
        let k = rng.random_range(0..keys);
        let roll = rng.random_range(0..100u32);
        let (next_gen, present, busy) = state[k];
        if roll < 35 && busy <= t {
            let mut op = blank(id, OpKind::Put, Some(names[k].clone()), t);
            op.generation = Some(next_gen);
            let delete = rng.random_bool(0.1);
            let ambiguous = rng.random_bool(0.1);
            if ambiguous {
                op.outcome = Outcome::Ambiguous;
            }
            let new_present = if delete {
                op.kind = OpKind::Delete;
                None
            } else {
                let size = rng.random_range(0..256u64);
                let sha = Body::new(seed, &names[k], next_gen, size).sha256();
                op.size = Some(size);
                op.sha256 = Some(sha);
                Some((next_gen, size, sha))
            };
            // Ambiguous writes take effect half the time; either is allowed.
            let applied = !ambiguous || rng.random_bool(0.5);
            state[k] = (
                next_gen + 1,
                if applied { new_present } else { present },
                t + OP_NS + 1,
            );
            out.push(op);
            continue;
        }
        let mut op = blank(id, OpKind::Get, Some(names[k].clone()), t);
        // Reads see the state as of their start: writes take effect one
        // unit after theirs, and none has started at this instant.
        match (roll, present) {
            (_, None) if roll < 90 => op.http_status = Some(404),
            (35..60, Some((g, size, sha))) | (0..35, Some((g, size, sha))) => {
                op.generation = Some(g);
                op.size = Some(size);
                op.sha256 = Some(sha);
            }
            (60..75, Some((g, size, _))) => {
                op.kind = OpKind::Head;
                op.generation = Some(g);
                op.size = Some(size);
            }
            (75..90, Some((g, size, _))) if size > 0 => {
                op.kind = OpKind::Range;
                let first = rng.random_range(0..size);
                let last = (first + 31).min(size - 1);
                op.range_header = Some(format!("bytes={first}-{last}"));
                op.range = Some((first, last));
                op.generation = Some(g);
                op.size = Some(size);
                op.sha256 = Some(crate::s3::slice_sha256(
                    &Body::new(seed, &names[k], g, size),
                    first,
                    last + 1,
                ));
            }
            (75..90, Some((g, size, sha))) => {
                op.generation = Some(g);
                op.size = Some(size);
                op.sha256 = Some(sha);
            }
            _ => {
                // A LIST page of up to 20 present keys from key k on.
                op.kind = OpKind::List;
                op.key = None;
                let after = (k > 0).then(|| names[k - 1].clone());
                let mut listed = Vec::new();
                let mut j = k;
                while j < keys && listed.len() < 20 {
                    if let Some((_, size, _)) = state[j].1 {
                        listed.push(serde_json::json!([names[j], size, null]));
                    }
                    j += 1;
                }
                let truncated = listed.len() == 20 && j < keys;
                op.detail = Some(
                    serde_json::json!({"after": after, "keys": listed, "truncated": truncated})
                        .to_string(),
                );
            }
        }
        out.push(op);
    }
    (
        RunInfo {
            seed,
            prefix,
            complete: true,
        },
        out,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_synthetic_history_is_correct_and_covers_every_check() {
        let (info, ops) = super::history(3, 50_000, 500);
        let v = super::super::check(&info, &ops);
        assert_eq!(v.findings, vec![]);
        assert!(v.coverage.reads_checked > 25_000, "{:?}", v.coverage);
        assert!(v.coverage.list_pages_checked > 500, "{:?}", v.coverage);
        assert!(v.coverage.ambiguous_writes > 500, "{:?}", v.coverage);
    }
}
