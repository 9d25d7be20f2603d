//! The writer thread: gathers what producers queued, writes it in one
//! transaction (operations numbered as they arrive, `versions` rows
//! derived, changed `objects` rows once a second), then hands the
//! committed operations and faults to the tap.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use rusqlite::{Connection, params};
use serde::Deserialize;

use super::retention::{self, Retention};
use super::{
    BATCH_MAX, COMMIT_EVERY, INDEXES, LedgerError, OBJECTS_EVERY, ObjectRecord, Record,
    TAP_BATCH_MAX, Tap, Tapped, sql_err,
};
use crate::history::ErrorClass;

/// Gathers what arrives until `until`, a flush or a full batch; false once
/// every producer is gone. Parks instead of waiting on the channel: a
/// waiting receiver is woken by every record, and on this VM each wake-up
/// cost the thread 10-15 µs of CPU, most of what the ledger added to the
/// runner (BENCHMARKS.md §1). A flush unparks the writer, so it commits at
/// once, and so does a producer finding the queue full; otherwise the
/// writer wakes once a window, records or not.
pub(super) fn gather(rx: &mpsc::Receiver<Record>, batch: &mut Vec<Record>, until: Instant) -> bool {
    while batch.len() < BATCH_MAX {
        match rx.try_recv() {
            Ok(r) => {
                let flush = matches!(r, Record::Flush(_));
                batch.push(r);
                if flush {
                    break;
                }
            }
            Err(mpsc::TryRecvError::Empty) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::park_timeout(left);
            }
            Err(mpsc::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

pub(super) fn write_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Record>,
    path: &Path,
    retention: Option<Retention>,
    mut tap: Option<Tap>,
) -> Result<(Connection, u64), LedgerError> {
    let mut written = 0u64;
    let mut next_id = 1u64;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut tapped = Vec::new();
    // The run's clock as far as the ledger knows it: the latest return.
    let mut now_ns = 0u64;
    let mut pruned_at_ns = 0u64;
    let mut progress = retention::Progress::default();
    let mut objects = PendingObjects::default();
    let mut objects_written = Instant::now();
    let mut open = true;
    while open {
        // Group commit: what arrives within COMMIT_EVERY of the last
        // commit shares a transaction (a flush wakes the writer and
        // commits at once).
        open = gather(&rx, &mut batch, Instant::now() + COMMIT_EVERY);
        if batch.is_empty() {
            continue;
        }
        let mut flushes = Vec::new();
        let tx = conn.transaction().map_err(sql_err(path))?;
        let mut ops_stmt = tx.prepare_cached(INSERT_OP).map_err(sql_err(path))?;
        for record in batch.drain(..) {
            match record {
                Record::Flush(done) => flushes.push(done),
                Record::Object(o) => {
                    objects.row(o);
                    written += 1;
                }
                Record::Visible { key, generation } => {
                    objects.visible(key, generation);
                    written += 1;
                }
                mut other => {
                    if let Record::Op(op) = &mut other {
                        if op.id == 0 {
                            op.id = next_id;
                        }
                        next_id = op.id + 1;
                        now_ns = now_ns.max(op.t_return_ns);
                    }
                    write_record(&tx, &mut ops_stmt, &other).map_err(sql_err(path))?;
                    written += 1;
                    if tap.is_some() {
                        match other {
                            Record::Op(op) => tapped.push(Tapped::Op(op)),
                            Record::Fault(f) => tapped.push(Tapped::Fault(f)),
                            _ => {}
                        }
                    }
                }
            }
        }
        if let Some(r) = &retention
            && now_ns >= pruned_at_ns + r.every_ms * 1_000_000
        {
            retention::prune(&tx, r, &mut progress, now_ns).map_err(sql_err(path))?;
            pruned_at_ns = now_ns;
            let p = progress.pruned;
            write_record(
                &tx,
                &mut ops_stmt,
                &Record::Meta {
                    key: "retention_pruned".into(),
                    value: format!(
                        "{} reads, {} writes; before {} s only history near findings kept",
                        p.reads,
                        p.writes,
                        progress.folded_to_ns / 1_000_000_000
                    ),
                },
            )
            .map_err(sql_err(path))?;
        }
        if !flushes.is_empty() || objects_written.elapsed() >= OBJECTS_EVERY {
            objects.write(&tx).map_err(sql_err(path))?;
            objects_written = Instant::now();
        }
        drop(ops_stmt);
        tx.commit().map_err(sql_err(path))?;
        if let Some(t) = &tap {
            let mut lost = false;
            while !tapped.is_empty() && !lost {
                let rest = tapped.split_off(tapped.len().min(TAP_BATCH_MAX));
                lost = t.send(std::mem::replace(&mut tapped, rest)).is_err();
            }
            tapped.clear();
            if lost {
                // The tap's reader is gone; the run goes on unchecked and
                // says so (the online verdict becomes unknown).
                tracing::error!(
                    "the online oracle stopped; operations are no longer checked online"
                );
                tap = None;
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
    let tx = conn.transaction().map_err(sql_err(path))?;
    objects.write(&tx).map_err(sql_err(path))?;
    tx.commit().map_err(sql_err(path))?;
    Ok((conn, written))
}

/// What a finished run's ledger gets once: its indexes, and the WAL folded
/// back into the main file, so the ledger is one file again, and onto the
/// disk (the checkpoint syncs under NORMAL).
pub(super) fn close(conn: Connection, path: &Path) -> Result<(), LedgerError> {
    conn.execute_batch(INDEXES).map_err(sql_err(path))?;
    let _ = conn.pragma_update(None, "synchronous", "normal");
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    Ok(())
}

/// `objects` changes not yet written: the latest per key, applied in the
/// order they came, so the table ends as if each had been written at once.
#[derive(Default)]
pub(super) struct PendingObjects(HashMap<String, PendingObject>);

pub(super) enum PendingObject {
    /// The whole row (a write settled).
    Row(Box<ObjectRecord>),
    /// Only the generation a read saw, for a row already written.
    Visible(u64),
}

impl PendingObjects {
    pub(super) fn row(&mut self, row: Box<ObjectRecord>) {
        self.0.insert(row.key.clone(), PendingObject::Row(row));
    }

    pub(super) fn visible(&mut self, key: String, generation: u64) {
        match self.0.entry(key) {
            Entry::Occupied(mut e) => match e.get_mut() {
                PendingObject::Row(row) => row.visible_generation = Some(generation),
                PendingObject::Visible(g) => *g = generation,
            },
            Entry::Vacant(e) => {
                e.insert(PendingObject::Visible(generation));
            }
        }
    }

    pub(super) fn write(&mut self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        for (key, change) in self.0.drain() {
            match change {
                PendingObject::Row(row) => {
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR REPLACE INTO objects (key, owner, state, acked_generation, candidates,
                                                         visible_generation, size, sha256)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?;
                    let candidates = serde_json::to_string(&row.candidates)
                        .expect("a list of integers serialises");
                    stmt.execute(params![
                        key,
                        row.owner,
                        row.state,
                        row.acked_generation.map(|g| g as i64),
                        candidates,
                        row.visible_generation.map(|g| g as i64),
                        row.size.map(|s| s as i64),
                        row.sha256.as_ref().map(|s| &s[..]),
                    ])?;
                }
                PendingObject::Visible(generation) => {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE objects SET visible_generation = ?2 WHERE key = ?1",
                    )?;
                    stmt.execute(params![key, generation as i64])?;
                }
            }
        }
        Ok(())
    }
}

pub(super) const INSERT_OP: &str = "INSERT INTO ops (id, worker, origin, kind, key, generation, range_header, range_start, range_end,
                                  t_invoke_ns, t_return_ns, outcome, http_status, error_class, bytes, size,
                                  sha256, etag, endpoint, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)";

/// Writes one record. Operations, nearly every record, go through
/// `ops_stmt`, prepared once per transaction: looking the statement up in
/// the connection's cache hashes its whole SQL text every time.
pub(super) fn write_record(
    tx: &rusqlite::Transaction<'_>,
    ops_stmt: &mut rusqlite::CachedStatement<'_>,
    record: &Record,
) -> rusqlite::Result<()> {
    match record {
        Record::Op(op) => {
            ops_stmt.execute(params![
                op.id as i64,
                op.worker,
                op.origin.as_str(),
                op.kind.as_str(),
                op.key,
                op.generation.map(|g| g as i64),
                op.range_header,
                op.range.map(|r| r.0 as i64),
                op.range.map(|r| r.1 as i64),
                op.t_invoke_ns as i64,
                op.t_return_ns as i64,
                op.outcome.as_str(),
                op.http_status,
                op.error_class.map(ErrorClass::as_str),
                op.bytes as i64,
                op.size.map(|s| s as i64),
                op.sha256.as_ref().map(|s| &s[..]),
                op.etag,
                op.endpoint,
                op.detail,
            ])?;
        }
        Record::Metric { t_ns, name, value } => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO metrics (t_ns, name, value) VALUES (?1, ?2, ?3)",
            )?;
            stmt.execute(params![*t_ns as i64, name, value])?;
        }
        Record::Meta { key, value } => {
            let mut stmt =
                tx.prepare_cached("INSERT OR REPLACE INTO run_meta (key, value) VALUES (?1, ?2)")?;
            stmt.execute(params![key, value])?;
        }
        Record::Fault(f) => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO faults (id, kind, target, t_start_ns, t_confirm_ns, t_end_ns,
                                                t_recovered_ns, recovery_ms, gate, params)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            stmt.execute(params![
                f.id as i64,
                f.kind,
                f.target,
                f.t_start_ns as i64,
                f.t_confirm_ns.map(|t| t as i64),
                f.t_end_ns.map(|t| t as i64),
                f.t_recovered_ns.map(|t| t as i64),
                f.recovery_ms.map(|t| t as i64),
                f.gate,
                f.params,
            ])?;
        }
        Record::Finding(x) => {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO findings (class, key, op_id, fault_id, t_ns, expected, seen, witness, known, rule, since_ack_ns, final)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            stmt.execute(params![
                x.class,
                x.key,
                x.op_id.map(|i| i as i64),
                x.fault_id.map(|i| i as i64),
                x.t_ns as i64,
                x.expected,
                x.seen,
                x.witness,
                x.known,
                x.rule,
                x.since_ack_ns.map(|t| t as i64),
                x.final_read,
            ])?;
            #[derive(Deserialize)]
            struct Witness {
                writes: Vec<WitnessId>,
            }
            #[derive(Deserialize)]
            struct WitnessId {
                op_id: u64,
            }
            if let Ok(w) = serde_json::from_str::<Witness>(&x.witness) {
                let mut stmt =
                    tx.prepare_cached("INSERT OR IGNORE INTO finding_writes (op_id) VALUES (?1)")?;
                for id in w.writes {
                    stmt.execute([id.op_id as i64])?;
                }
            }
        }
        // Gathered by the writer, written by `PendingObjects`; a flush is
        // no row.
        Record::Object(_) | Record::Visible { .. } | Record::Flush(_) => {}
    }
    Ok(())
}
