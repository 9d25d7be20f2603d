//! Retention: keeps a many-hour soak's ledger bounded on disk without
//! losing anything a check of the retained history needs.
//!
//! Kept in full: every operation of the recent window, and every operation
//! within a margin of a fault window or a finding (not a known deviation).
//! Reads outside those are folded into `ops_summary` (per minute, kind and
//! outcome: count, latency sum and maximum) and deleted; what they counted
//! for a fault window's coverage goes to `fault_folded`.
//!
//! A soak injects one fault after another, so "near a fault" is nearly
//! every moment. Above the ledger budget the oldest history is therefore
//! folded as well, fault windows or not, a few minutes per pass; only the
//! history near findings is never folded. The ledger then holds full
//! history for the most recent faults (as many as the budget fits) and
//! the summaries, counts and findings of all of them.
//!
//! A write is deleted (and so leaves `versions`) only once it can no longer
//! matter to any retained read: some later write of the same key was
//! acknowledged at time T, T is before the recent window, and no retained
//! read of that key (and no retained LIST page) was in flight between the
//! write's start and T. Such a write can be neither `base(R)` nor in
//! `later(R)` of a retained read R (oracle.md §3), so verifying the
//! retained reads gives the same answer as on the full history.

use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};

/// Retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Everything newer than this (ms) stays in full.
    pub recent_ms: u64,
    /// Operations this close (ms) to a fault window or a finding stay in
    /// full while the ledger is within its budget.
    pub margin_ms: u64,
    /// How often to prune (ms).
    pub every_ms: u64,
    /// Above this many bytes of live pages, the oldest history near fault
    /// windows is folded too.
    pub budget_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            recent_ms: 10 * 60 * 1000,
            margin_ms: 60 * 1000,
            every_ms: 60 * 1000,
            budget_bytes: 1 << 30,
        }
    }
}

impl Retention {
    pub fn describe(&self) -> String {
        format!(
            "full history for the last {} s and within {} s of every fault and unknown finding; \
             above {} MiB of ledger the oldest history near faults is folded too \
             (never near a finding); per-minute summaries and per-fault counts elsewhere",
            self.recent_ms / 1000,
            self.margin_ms / 1000,
            self.budget_bytes >> 20
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

-- What retention folded away, as a fault window's coverage counted it
-- (see query::fault_coverage): added to what the retained ops count.
CREATE TABLE fault_folded (
    fault_id         INTEGER PRIMARY KEY,
    ops_in_window    INTEGER NOT NULL,
    ok_in_window     INTEGER NOT NULL,
    reads_after      INTEGER NOT NULL
);
"#;

/// What pruning removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub reads: u64,
    pub writes: u64,
}

impl Pruned {
    fn add(&mut self, other: Pruned) {
        self.reads += other.reads;
        self.writes += other.writes;
    }
}

/// Where pruning has got to, kept by the ledger's writer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Progress {
    /// Everything returned before this was seen by a regular pass.
    pub pruned_to_ns: u64,
    /// Everything returned before this was folded, faults or not.
    pub folded_to_ns: u64,
    /// Totals so far.
    pub pruned: Pruned,
}

/// Indexes pruning needs besides the `ops` ones (covering, so a probe
/// never reads the table): unknown findings by time, LIST pages by span,
/// keyed reads by key and span, writes by key and generation.
const PRUNE_INDEXES: &str = "
    CREATE INDEX IF NOT EXISTS findings_unknown_by_time ON findings (t_ns) WHERE known IS NULL;
    CREATE INDEX IF NOT EXISTS ops_lists_span ON ops (t_invoke_ns, t_return_ns)
        WHERE kind = 'list';
    CREATE INDEX IF NOT EXISTS ops_reads_by_key ON ops (key, t_invoke_ns, t_return_ns)
        WHERE kind IN ('get', 'head', 'range');
    CREATE INDEX IF NOT EXISTS ops_writes_by_key ON ops (key, generation)
        WHERE kind IN ('put', 'overwrite', 'multipart', 'delete');";

/// No read lasts longer than this (the workload's timeouts are far
/// shorter); bounds the search for the slice's longest read.
const READ_SPAN_MAX_NS: i64 = 10 * 60 * 1_000_000_000;

/// How much old history one pass over budget folds: a few times what a
/// soak writes between passes, so folding overtakes it, and small enough
/// that a pass stays short (the writer waits for it).
const FOLD_STEP_NS: u64 = 3 * 60 * 1_000_000_000;

/// One pruning pass at `now_ns`: the operations that crossed the horizon
/// (`now` minus the recent window) since the last pass, then, if the
/// ledger is over its budget, the oldest not yet folded history.
///
/// Each pass looks only at its slices, through covering indexes, so a
/// pass costs about the same at hour ten as at minute thirty: reads that
/// returned in the slice, and writes whose first acknowledged successor
/// returned in it. Known deviations do not keep history: a store with a
/// frequent one would otherwise keep all.
pub(crate) fn prune(
    tx: &Transaction<'_>,
    r: &Retention,
    progress: &mut Progress,
    now_ns: u64,
) -> rusqlite::Result<()> {
    let horizon = now_ns.saturating_sub(r.recent_ms * 1_000_000);
    if horizon <= progress.pruned_to_ns {
        return Ok(());
    }
    tx.execute_batch(super::INDEXES)?;
    tx.execute_batch(PRUNE_INDEXES)?;
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY); DELETE FROM doomed;",
    )?;
    let margin = r.margin_ms * 1_000_000;
    let from = progress.pruned_to_ns.max(progress.folded_to_ns);
    if from < horizon {
        let p = prune_slice(tx, margin, now_ns, from, horizon, true)?;
        progress.pruned.add(p);
    }
    progress.pruned_to_ns = horizon;
    if live_bytes(tx)? > r.budget_bytes {
        let to = (progress.folded_to_ns + FOLD_STEP_NS).min(horizon);
        let p = prune_slice(tx, margin, now_ns, progress.folded_to_ns, to, false)?;
        progress.pruned.add(p);
        progress.folded_to_ns = to;
    }
    Ok(())
}

/// Bytes of the ledger's pages in use (freed pages are reused, so the
/// file stops growing once pruning frees as much as is written).
fn live_bytes(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
    let pragma = |name: &str| tx.pragma_query_value(None, name, |row| row.get::<_, i64>(0));
    let live = pragma("page_count")? - pragma("freelist_count")?;
    Ok(live.max(0) as u64 * pragma("page_size")? as u64)
}

/// Prunes among the operations that returned in `[from, to)`: reads not
/// near an unknown finding (nor, with `keep_faults`, near a fault window),
/// and writes no retained read can need.
fn prune_slice(
    tx: &Transaction<'_>,
    margin_ns: u64,
    now_ns: u64,
    from_ns: u64,
    to_ns: u64,
    keep_faults: bool,
) -> rusqlite::Result<Pruned> {
    let (from, to, margin) = (from_ns as i64, to_ns as i64, margin_ns as i64);
    // The longest read around the slice bounds how long before a write a
    // read in flight across it can have started.
    let span: i64 = tx.query_row(
        "SELECT coalesce(max(t_return_ns - t_invoke_ns), 0) FROM ops
         WHERE t_invoke_ns >= ?1 - ?3 AND t_invoke_ns < ?2
           AND kind IN ('get', 'head', 'range', 'list')",
        params![from, to, READ_SPAN_MAX_NS],
        |row| row.get(0),
    )?;
    // Reads of the slice not near a fault window (one not yet recovered
    // extends to now, undone or not) or an unknown finding.
    tx.execute("DELETE FROM doomed", [])?;
    tx.execute(
        "INSERT INTO doomed (id)
         SELECT o.id FROM ops o
         WHERE o.t_invoke_ns >= ?1 - ?5 AND o.t_invoke_ns < ?2
           AND o.t_return_ns >= ?1 AND o.t_return_ns < ?2
           AND o.kind IN ('get', 'head', 'range', 'list')
           AND (NOT ?6 OR NOT EXISTS (SELECT 1 FROM faults f
                           WHERE o.t_return_ns >= f.t_start_ns - ?3
                             AND o.t_invoke_ns <= coalesce(f.t_recovered_ns, ?4) + ?3))
           AND NOT EXISTS (SELECT 1 FROM findings x
                           WHERE x.known IS NULL
                             AND x.t_ns >= o.t_invoke_ns - ?3 AND x.t_ns <= o.t_return_ns + ?3)",
        params![from, to, margin, now_ns as i64, span, keep_faults],
    )?;
    summarize_doomed(tx)?;
    let reads = tx.execute("DELETE FROM ops WHERE id IN (SELECT id FROM doomed)", [])? as u64;

    // Writes w whose first acknowledged successor s returned in the slice
    // (w is s's acknowledged predecessor p or a write between p and s),
    // with no read of the key and no LIST page in flight from w's start
    // to s's return, and no finding naming w (a store showing a value long
    // superseded: `verify` must name it as the online check did).
    tx.execute("DELETE FROM doomed", [])?;
    tx.execute(
        "INSERT INTO doomed (id)
         SELECT w.id FROM ops s
         JOIN ops w ON w.key = s.key
                   AND w.kind IN ('put', 'overwrite', 'multipart', 'delete')
                   AND w.generation < s.generation
                   AND w.generation >= coalesce(
                       (SELECT max(p.generation) FROM ops p
                        WHERE p.key = s.key AND p.kind IN ('put', 'overwrite', 'multipart', 'delete')
                          AND p.outcome = 'ok' AND p.generation < s.generation), 0)
         WHERE s.t_invoke_ns >= ?1 - ?3 AND s.t_invoke_ns < ?2
           AND s.t_return_ns >= ?1 AND s.t_return_ns < ?2
           AND s.kind IN ('put', 'overwrite', 'multipart', 'delete') AND s.outcome = 'ok'
           AND NOT EXISTS (SELECT 1 FROM ops l
                           WHERE l.kind = 'list'
                             AND l.t_invoke_ns >= w.t_invoke_ns AND l.t_invoke_ns <= s.t_return_ns)
           AND NOT EXISTS (SELECT 1 FROM ops l
                           WHERE l.kind = 'list'
                             AND l.t_invoke_ns >= w.t_invoke_ns - ?4 AND l.t_invoke_ns < w.t_invoke_ns
                             AND l.t_return_ns >= w.t_invoke_ns)
           AND NOT EXISTS (SELECT 1 FROM ops r
                           WHERE r.key = w.key AND r.kind IN ('get', 'head', 'range')
                             AND r.t_invoke_ns >= w.t_invoke_ns - ?4
                             AND r.t_invoke_ns <= s.t_return_ns
                             AND r.t_return_ns >= w.t_invoke_ns)
           AND w.id NOT IN (SELECT op_id FROM finding_writes)",
        params![from, to, READ_SPAN_MAX_NS, span],
    )?;
    summarize_doomed(tx)?;
    let writes = tx.execute("DELETE FROM ops WHERE id IN (SELECT id FROM doomed)", [])? as u64;
    Ok(Pruned { reads, writes })
}

/// Folds the doomed operations into the per-minute summaries and into
/// the coverage counts of the fault windows they counted for.
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
    // The same windows as `query::fault_coverage`: a fault's
    // window runs from its start to its recovery (or undo, or forever);
    // reads after it run from its recovery to the next fault's start.
    // Whatever is doomed is older than the recent window, so a fault
    // still open now or one yet to start counts it as it will at the end.
    tx.execute(
        "WITH fw AS (
             SELECT id, t_start_ns AS s,
                    coalesce(t_recovered_ns, t_end_ns, 9223372036854775807) AS e,
                    t_recovered_ns AS r,
                    coalesce(lead(t_start_ns) OVER (ORDER BY id), 9223372036854775807) AS nx
             FROM faults),
         d AS (SELECT kind, outcome, t_invoke_ns AS ti, t_return_ns AS tr FROM ops
               WHERE id IN (SELECT id FROM doomed)),
         b AS (SELECT min(ti) AS lo, max(tr) AS hi FROM d)
         INSERT INTO fault_folded (fault_id, ops_in_window, ok_in_window, reads_after)
         SELECT f.id,
                sum(d.ti <= f.e AND d.tr >= f.s),
                sum(d.ti <= f.e AND d.tr >= f.s AND d.outcome = 'ok'),
                sum(f.r IS NOT NULL AND d.ti >= f.r AND d.ti < f.nx AND d.outcome = 'ok'
                    AND d.kind IN ('get', 'head', 'range', 'list'))
         FROM b JOIN fw f ON f.s <= b.hi AND max(f.e, f.nx) >= b.lo JOIN d
         WHERE true
         GROUP BY f.id
         ON CONFLICT (fault_id) DO UPDATE SET
             ops_in_window = ops_in_window + excluded.ops_in_window,
             ok_in_window = ok_in_window + excluded.ok_in_window,
             reads_after = reads_after + excluded.reads_after",
        [],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultRecord, FindingRecord, OpRecord};
    use crate::history::{OpKind, Outcome};
    use crate::ledger::{Ledger, LedgerReader, Record};
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
    /// keys, a fault window at 40-52 s, a finding at 80 s and a known
    /// deviation at 20 s.
    fn history() -> Vec<OpRecord> {
        let mut rng = crate::history::seed::substream(1, "retention-test", 0);
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

    /// The write the known deviation names in its witness: the first.
    fn named_write(all: &[OpRecord]) -> &OpRecord {
        all.iter().find(|o| is_write(o)).unwrap()
    }

    /// Writes `history()` with fault windows at 40-52 s and 60-62 s, a
    /// finding at 80 s and a known deviation at 20 s (naming the first
    /// write, if `name_write`) into a new ledger.
    fn write_ledger(
        path: &std::path::Path,
        retention: Option<Retention>,
        name_write: bool,
    ) -> Vec<OpRecord> {
        let all = history();
        let witness = if name_write {
            serde_json::json!({"writes": [{"op_id": named_write(&all).id}]}).to_string()
        } else {
            "{}".into()
        };
        let (ledger, writer) = Ledger::create(path, retention, None).unwrap();
        for (id, start, end, recovered) in [(1, 40, 50, 52), (2, 60, 61, 62)] {
            ledger
                .send(Record::Fault(Box::new(FaultRecord {
                    id,
                    kind: "kill-start".into(),
                    target: "n2".into(),
                    t_start_ns: start * S,
                    t_confirm_ns: Some(start * S),
                    t_end_ns: Some(end * S),
                    t_recovered_ns: Some(recovered * S),
                    recovery_ms: Some((recovered - end) * 1000),
                    gate: None,
                    params: None,
                })))
                .unwrap();
        }
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
                rule: None,
                since_ack_ns: None,
                final_read: false,
            })))
            .unwrap();
        // A known deviation of the store keeps nothing: reads around 20 s
        // go like any other.
        ledger
            .send(Record::Finding(Box::new(FindingRecord {
                class: "list-ghost".into(),
                key: Some("k2".into()),
                op_id: None,
                fault_id: None,
                t_ns: 20 * S,
                expected: "absent".into(),
                seen: "on the page".into(),
                witness,
                known: Some("a tolerated deviation".into()),
                rule: Some(0),
                since_ack_ns: Some(S / 2),
                final_read: false,
            })))
            .unwrap();
        for o in &all {
            ledger.send(Record::Op(Box::new(o.clone()))).unwrap();
        }
        drop(ledger);
        writer.finish().unwrap();
        all
    }

    /// Checks what a pruned ledger kept against the full history: exactly
    /// the reads `protected` says, every write a retained read needs, far
    /// fewer writes, summaries counting everything, the same fault
    /// coverage as without retention.
    fn assert_pruned(
        path: &std::path::Path,
        all: &[OpRecord],
        protected: impl Fn(&OpRecord) -> bool,
    ) {
        let reader = LedgerReader::open(path).unwrap();
        let kept = reader.ops().unwrap();
        let kept_ids: std::collections::BTreeSet<u64> = kept.iter().map(|o| o.id).collect();
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
                for w in needed_writes(all, r, &key) {
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

        // The fault's coverage is what the full history gives.
        let full = path.with_file_name("full.sqlite");
        write_ledger(&full, None, false);
        let coverage =
            |p: &std::path::Path| LedgerReader::open(p).unwrap().fault_coverage().unwrap();
        let (pruned, unpruned) = (coverage(path), coverage(&full));
        assert!(
            unpruned
                .iter()
                .all(|f| f.reads_after > 20 && f.ops_in_window > 10)
        );
        assert_eq!(pruned, unpruned);
        std::fs::remove_file(full).unwrap();
    }

    const RETENTION: Retention = Retention {
        recent_ms: 20_000,
        margin_ms: 2_000,
        every_ms: 5_000,
        budget_bytes: u64::MAX,
    };

    /// The end of the recent window as the last pass saw it.
    fn horizon(all: &[OpRecord]) -> u64 {
        all.iter().map(|o| o.t_return_ns).max().unwrap() - 20 * S
    }

    fn near(o: &OpRecord, from: u64, to: u64) -> bool {
        o.t_return_ns + 2 * S >= from && o.t_invoke_ns <= to + 2 * S
    }

    #[test]
    fn pruning_keeps_every_write_a_retained_read_depends_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let all = write_ledger(&path, Some(RETENTION), false);
        let horizon = horizon(&all);
        assert_pruned(&path, &all, |o| {
            o.t_return_ns >= horizon
                || near(o, 40 * S, 52 * S)
                || near(o, 60 * S, 62 * S)
                || near(o, 80 * S, 80 * S)
        });
    }

    #[test]
    fn pruning_keeps_the_writes_a_finding_names() {
        let kept = |name_write| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ledger.sqlite");
            let all = write_ledger(&path, Some(RETENTION), name_write);
            let ops = LedgerReader::open(&path).unwrap().ops().unwrap();
            ops.iter().any(|o| o.id == named_write(&all).id)
        };
        // Pruned like any superseded write, unless a finding names it.
        assert!(!kept(false));
        assert!(kept(true));
    }

    #[test]
    fn over_its_budget_the_ledger_folds_history_near_faults_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let retention = Retention {
            budget_bytes: 1,
            ..RETENTION
        };
        let all = write_ledger(&path, Some(retention), false);
        let horizon = horizon(&all);
        // Only a finding keeps history now (besides the recent window).
        assert_pruned(&path, &all, |o| {
            o.t_return_ns >= horizon || near(o, 80 * S, 80 * S)
        });
        let reader = LedgerReader::open(&path).unwrap();
        let note = reader.meta("retention_pruned").unwrap().unwrap();
        assert!(note.contains("only history near findings"), "{note}");
    }
}
