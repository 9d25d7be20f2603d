//! Synthetic histories at scale, for benchmarking the oracle: a correct
//! store (every write takes effect one unit after it starts, every read sees
//! the state at the instant it starts), so a check must find nothing, and
//! the time it takes is the oracle's own.
//!
//! The stream has the shape the workload gives the ledger: `workers`
//! workers take turns, each running one operation at a time; worker w owns
//! the keys k with k % workers == w and alone writes them; anyone reads.

use rand::Rng;

use crate::history::OpRecord;
use crate::history::body::Body;
use crate::history::seed::substream;
use crate::history::{ListDetail, OpKind, Outcome};

use super::RunInfo;

/// Length of every operation, in nanoseconds of the synthetic clock. Each
/// worker starts one every `workers` units, so it must be shorter.
const OP_NS: u64 = 5;
/// Workers of a synthetic history.
pub const WORKERS: usize = 24;
/// Keys listed per LIST page.
const PAGE_KEYS: usize = 20;

/// Generates `ops` operations over `keys` keys (at least `WORKERS`): 35 %
/// writes (a tenth of them DELETEs, a tenth ambiguous), GETs, HEADs, small
/// Range GETs and LIST pages of 20 keys.
pub fn history(seed: u64, ops: usize, keys: usize) -> (RunInfo, Vec<OpRecord>) {
    let (info, stream) = stream(seed, keys);
    (info, stream.take(ops).collect())
}

/// The same history as an endless stream, generated as it is consumed.
pub fn stream(seed: u64, keys: usize) -> (RunInfo, impl Iterator<Item = OpRecord>) {
    let keys = keys.max(WORKERS);
    let prefix = "synth/".to_string();
    let names: Vec<String> = (0..keys).map(|k| format!("{prefix}k{k:07}")).collect();
    let mut rng = substream(seed, "oracle-synth", 0);
    // Per key: next generation, and the present value (generation, size, sha256).
    let mut next_gen = vec![1u64; keys];
    let mut present: Vec<Option<(u64, u64, [u8; 32])>> = vec![None; keys];
    let blank = |id: u64, kind: OpKind, key: Option<String>, t: u64, worker: usize| OpRecord {
        id,
        worker: worker as u32,
        t_invoke_ns: t,
        t_return_ns: t + OP_NS,
        http_status: Some(200),
        ..OpRecord::new(kind, key, Outcome::Ok)
    };
    let owned = keys / WORKERS;
    // No operation lasts longer than OP_NS. The default span (5 minutes)
    // is longer than any synthetic history (one unit is a nanosecond), so
    // with it the check could never drop a superseded write.
    let info = RunInfo {
        read_span_max_ns: 2 * OP_NS,
        ..RunInfo::new(seed, prefix, WORKERS as u32)
    };
    let ops = (0u64..).map(move |i| {
        let t = 10 + i;
        let id = i + 1;
        let w = (i % WORKERS as u64) as usize;
        let roll = rng.random_range(0..100u32);
        if roll < 35 {
            let k = w + WORKERS * rng.random_range(0..owned);
            let g = next_gen[k];
            next_gen[k] += 1;
            let mut op = blank(id, OpKind::Put, Some(names[k].clone()), t, w);
            op.generation = Some(g);
            let delete = rng.random_bool(0.1);
            let ambiguous = rng.random_bool(0.1);
            if ambiguous {
                op.outcome = Outcome::Ambiguous;
            }
            let value = if delete {
                op.kind = OpKind::Delete;
                None
            } else {
                let size = rng.random_range(0..256u64);
                let sha = Body::new(seed, &names[k], g, size).sha256();
                op.size = Some(size);
                op.sha256 = Some(sha);
                Some((g, size, sha))
            };
            // Ambiguous writes take effect half the time; either is allowed.
            if !ambiguous || rng.random_bool(0.5) {
                present[k] = value;
            }
            return op;
        }
        let k = rng.random_range(0..keys);
        let mut op = blank(id, OpKind::Get, Some(names[k].clone()), t, w);
        // Reads see the state as of their start: writes take effect one
        // unit after theirs, and none has started at this instant.
        match (roll, present[k]) {
            (_, None) if roll < 90 => op.http_status = Some(404),
            (35..60, Some((g, size, sha))) => {
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
                op.sha256 = Some(crate::history::body::slice_sha256(
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
                while j < keys && listed.len() < PAGE_KEYS {
                    if let Some((_, size, _)) = present[j] {
                        listed.push((names[j].clone(), size, None));
                    }
                    j += 1;
                }
                let truncated = listed.len() == PAGE_KEYS && j < keys;
                let detail = ListDetail {
                    after,
                    keys: listed,
                    truncated,
                    ..ListDetail::default()
                };
                op.detail = Some(serde_json::to_string(&detail).expect("a page serialises"));
            }
        }
        op
    });
    (info, ops)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_synthetic_history_is_correct_and_covers_every_check() {
        let (info, ops) = super::history(3, 50_000, 500);
        let v = super::super::check(&info, ops);
        assert_eq!(v.findings, vec![]);
        assert!(v.coverage.reads_checked > 25_000, "{:?}", v.coverage);
        assert!(v.coverage.list_pages_checked > 500, "{:?}", v.coverage);
        assert!(v.coverage.ambiguous_writes > 500, "{:?}", v.coverage);
    }
}
