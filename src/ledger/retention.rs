//! Retention: keeps a many-hour soak's ledger bounded on disk without
//! losing anything a check of the retained history needs.
//!
//! Kept in full: every operation of the recent window, and every operation
//! within a margin of a fault window or a finding. Reads outside those are
//! folded into `ops_summary` (per minute, kind and outcome: count, latency
//! sum and maximum) and deleted.
//!
//! A write is deleted (with its `versions` row) only once it can no longer
//! matter to any retained read: some later write of the same key was
//! acknowledged at time T, T is before the recent window, and no retained
//! read of that key (and no retained LIST page) was in flight between the
//! write's start and T. Such a write can be neither `base(R)` nor in
//! `later(R)` of a retained read R (oracle.md §3), so verifying the
//! retained reads gives the same answer as on the full history.

use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};

/// Retention settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Everything newer than this stays in full.
    pub recent_ms: u64,
    /// Operations this close to a fault window or a finding stay in full.
    pub margin_ms: u64,
    /// How often to prune.
    pub every_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            recent_ms: 10 * 60 * 1000,
            margin_ms: 60 * 1000,
            every_ms: 60 * 1000,
        }
    }
}

impl Retention {
    pub fn describe(&self) -> String {
        format!(
            "full history for the last {} s and within {} s of every fault and finding; per-minute summaries elsewhere",
            self.recent_ms / 1000,
            self.margin_ms / 1000
        )
    }
}

pub(crate) const SCHEMA: &str = r#"
-- What retention folded away: per minute, kind and outcome.
CREATE TABLE ops_summary (
    minute           INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    ops              INTEGER NOT NULL,
    latency_sum_ns   INTEGER NOT NULL,
    latency_max_ns   INTEGER NOT NULL,
    PRIMARY KEY (minute, kind, outcome)
);
"#;

/// What one pruning pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub reads: u64,
    pub writes: u64,
}

/// Prunes everything retention allows, given the run's current time.
pub(crate) fn prune(tx: &Transaction<'_>, r: &Retention, now_ns: u64) -> rusqlite::Result<Pruned> {
    let horizon = now_ns.saturating_sub(r.recent_ms * 1_000_000) as i64;
    let margin = (r.margin_ms * 1_000_000) as i64;
    // Temporary set of the reads to fold away: old, and not near a fault
    // window (open windows extend to now) or a finding.
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY); DELETE FROM doomed;",
    )?;
    tx.execute(
        "INSERT INTO doomed (id)
         SELECT o.id FROM ops o
         WHERE o.t_return_ns < ?1
           AND o.kind IN ('get', 'head', 'range', 'list')
           AND NOT EXISTS (SELECT 1 FROM faults f
                           WHERE o.t_return_ns >= f.t_start_ns - ?2
                             AND o.t_invoke_ns <= coalesce(f.t_recovered_ns, f.t_end_ns, ?3) + ?2)
           AND NOT EXISTS (SELECT 1 FROM findings x
                           WHERE o.t_return_ns >= x.t_ns - ?2 AND o.t_invoke_ns <= x.t_ns + ?2)",
        params![horizon, margin, now_ns as i64],
    )?;
    summarize_doomed(tx)?;
    let reads = tx.execute("DELETE FROM ops WHERE id IN (SELECT id FROM doomed)", [])? as u64;

    // Writes superseded, before the horizon, by an acknowledged later write
    // of the same key, with no retained read in flight across the gap.
    tx.execute("DELETE FROM doomed", [])?;
    tx.execute(
        "INSERT INTO doomed (id)
         SELECT w.id FROM ops w
         JOIN (SELECT w1.id AS id,
                      (SELECT min(w2.t_return_ns) FROM ops w2
                       WHERE w2.key = w1.key AND w2.generation > w1.generation AND w2.outcome = 'ok'
                         AND w2.kind IN ('put', 'overwrite', 'multipart', 'delete')) AS superseded_ns
               FROM ops w1
               WHERE w1.kind IN ('put', 'overwrite', 'multipart', 'delete') AND w1.t_return_ns < ?1) s
           ON s.id = w.id
         WHERE s.superseded_ns IS NOT NULL AND s.superseded_ns < ?1
           AND NOT EXISTS (SELECT 1 FROM ops r
                           WHERE (r.key = w.key OR r.kind = 'list')
                             AND r.kind IN ('get', 'head', 'range', 'list')
                             AND r.t_invoke_ns <= s.superseded_ns
                             AND r.t_return_ns >= w.t_invoke_ns)",
        params![horizon],
    )?;
    summarize_doomed(tx)?;
    tx.execute(
        "DELETE FROM versions WHERE op_id IN (SELECT id FROM doomed)",
        [],
    )?;
    let writes = tx.execute("DELETE FROM ops WHERE id IN (SELECT id FROM doomed)", [])? as u64;
    Ok(Pruned { reads, writes })
}

fn summarize_doomed(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO ops_summary (minute, kind, outcome, ops, latency_sum_ns, latency_max_ns)
         SELECT o.t_invoke_ns / 60000000000, o.kind, o.outcome, count(*),
                sum(o.t_return_ns - o.t_invoke_ns), max(o.t_return_ns - o.t_invoke_ns)
         FROM ops o WHERE o.id IN (SELECT id FROM doomed)
         GROUP BY 1, 2, 3
         ON CONFLICT (minute, kind, outcome) DO UPDATE SET
             ops = ops + excluded.ops,
             latency_sum_ns = latency_sum_ns + excluded.latency_sum_ns,
             latency_max_ns = max(latency_max_ns, excluded.latency_max_ns)",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{OpKind, Outcome};
    use crate::ledger::{FaultRecord, FindingRecord, Ledger, LedgerReader, OpRecord, Record};
    use rand::Rng;

    const S: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn op(
        id: u64,
        kind: OpKind,
        key: Option<&str>,
        generation: Option<u64>,
        t: u64,
        len: u64,
        outcome: Outcome,
    ) -> OpRecord {
        OpRecord {
            id,
            generation,
            t_invoke_ns: t,
            t_return_ns: t + len,
            ..OpRecord::new(kind, key.map(str::to_string), outcome)
        }
    }

    /// 120 simulated seconds of writes, reads and LIST pages over five
    /// keys, a fault window at 40-52 s and a finding at 80 s.
    fn history() -> Vec<OpRecord> {
        let mut rng = crate::workload::plan::substream(1, "retention-test", 0);
        let mut ops = Vec::new();
        let mut id = 0;
        let mut generation = [0u64; 5];
        for ms in (0..120_000u64).step_by(100) {
            let t = ms * MS;
            let k = rng.random_range(0..5usize);
            let key = format!("k{k}");
            id += 1;
            match rng.random_range(0..10u32) {
                0..3 => {
                    generation[k] += 1;
                    let outcome = if rng.random_bool(0.1) {
                        Outcome::Ambiguous
                    } else {
                        Outcome::Ok
                    };
                    let kind = if rng.random_bool(0.2) {
                        OpKind::Delete
                    } else {
                        OpKind::Overwrite
                    };
                    ops.push(op(
                        id,
                        kind,
                        Some(&key),
                        Some(generation[k]),
                        t,
                        60 * MS,
                        outcome,
                    ));
                }
                3 => ops.push(op(id, OpKind::List, None, None, t, 30 * MS, Outcome::Ok)),
                _ => ops.push(op(
                    id,
                    OpKind::Get,
                    Some(&key),
                    None,
                    t,
                    20 * MS,
                    Outcome::Ok,
                )),
            }
        }
        ops
    }

    fn is_write(o: &OpRecord) -> bool {
        o.kind.is_write()
    }

    /// The writes a read must still be checkable against: its base (last
    /// ok write returned before it started) and every later candidate.
    fn needed_writes<'a>(all: &'a [OpRecord], read: &OpRecord, key: &str) -> Vec<&'a OpRecord> {
        let writes: Vec<&OpRecord> = all
            .iter()
            .filter(|w| is_write(w) && w.key.as_deref() == Some(key))
            .collect();
        let base = writes
            .iter()
            .filter(|w| w.outcome == Outcome::Ok && w.t_return_ns < read.t_invoke_ns)
            .map(|w| w.generation.unwrap())
            .max()
            .unwrap_or(0);
        writes
            .into_iter()
            .filter(|w| {
                let g = w.generation.unwrap();
                g == base || (g > base && w.t_invoke_ns < read.t_return_ns)
            })
            .collect()
    }

    #[test]
    fn pruning_keeps_every_write_a_retained_read_depends_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let retention = Retention {
            recent_ms: 20_000,
            margin_ms: 2_000,
            every_ms: 5_000,
        };
        let (ledger, writer) = Ledger::create(&path, Some(retention), None).unwrap();
        ledger
            .send(Record::Fault(Box::new(FaultRecord {
                id: 1,
                kind: "kill-start".into(),
                target: "n2".into(),
                t_start_ns: 40 * S,
                t_confirm_ns: Some(40 * S),
                t_end_ns: Some(50 * S),
                t_recovered_ns: Some(52 * S),
                recovery_ms: Some(2_000),
                gate: None,
            })))
            .unwrap();
        ledger
            .send(Record::Finding(Box::new(FindingRecord {
                class: "stale-read".into(),
                key: Some("k1".into()),
                op_id: None,
                fault_id: None,
                t_ns: 80 * S,
                expected: "g3".into(),
                seen: "g2".into(),
                witness: "{}".into(),
                known: None,
            })))
            .unwrap();
        let all = history();
        for o in &all {
            ledger.send(Record::Op(Box::new(o.clone()))).unwrap();
        }
        drop(ledger);
        writer.finish().unwrap();

        let reader = LedgerReader::open(&path).unwrap();
        let kept = reader.ops().unwrap();
        let kept_ids: std::collections::BTreeSet<u64> = kept.iter().map(|o| o.id).collect();
        let horizon = all.iter().map(|o| o.t_return_ns).max().unwrap() - 20 * S;
        let protected = |o: &OpRecord| {
            o.t_return_ns >= horizon
                || (o.t_return_ns + 2 * S >= 40 * S && o.t_invoke_ns <= 54 * S)
                || (o.t_return_ns + 2 * S >= 80 * S && o.t_invoke_ns <= 82 * S)
        };
        // Reads: exactly the protected ones remain.
        for o in all.iter().filter(|o| !is_write(o)) {
            assert_eq!(
                kept_ids.contains(&o.id),
                protected(o),
                "read {} at {} ms",
                o.id,
                o.t_invoke_ns / MS
            );
        }
        // Every retained read can still be checked.
        for r in kept.iter().filter(|o| !is_write(o)) {
            let keys: Vec<String> = match &r.key {
                Some(k) => vec![k.clone()],
                None => (0..5).map(|k| format!("k{k}")).collect(),
            };
            for key in keys {
                for w in needed_writes(&all, r, &key) {
                    assert!(
                        kept_ids.contains(&w.id),
                        "read {} needs write {} of {key}",
                        r.id,
                        w.id
                    );
                }
            }
        }
        // Retention did bound the history, and counted what it folded.
        let writes_kept = kept.iter().filter(|o| is_write(o)).count();
        let writes_all = all.iter().filter(|o| is_write(o)).count();
        assert!(
            writes_kept < writes_all / 2,
            "{writes_kept} of {writes_all} writes kept"
        );
        assert_eq!(
            reader.count("SELECT sum(ops) FROM ops_per_minute").unwrap(),
            all.len() as i64
        );
        assert_eq!(
            reader.count("SELECT count(*) FROM versions").unwrap(),
            writes_kept as i64,
            "a pruned write's version row goes with it"
        );
        assert_eq!(
            reader
                .count("SELECT count(*) FROM versions v WHERE NOT EXISTS (SELECT 1 FROM ops o WHERE o.id = v.op_id)")
                .unwrap(),
            0
        );
        assert!(
            reader
                .meta("retention")
                .unwrap()
                .unwrap()
                .starts_with("on: ")
        );
        assert!(reader.meta("retention_pruned").unwrap().is_some());
    }
}
