//! `LedgerReader`: a read-only connection to a ledger of a supported schema
//! version, streaming operations in id order and reading faults and
//! findings back as records.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{LedgerError, SCHEMA_VERSION, SCHEMA_VERSION_READ_FROM, sql_err};
use crate::history::{ErrorClass, FaultRecord, FindingRecord, OpKind, OpRecord, Origin, Outcome};

/// A read-only view of a ledger, for reports, verification and queries.
pub struct LedgerReader {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
}

impl LedgerReader {
    pub fn open(path: &Path) -> Result<LedgerReader, LedgerError> {
        // A runner that died before its writer finished left no indexes:
        // queries still work, by scanning. Building them here could block
        // a live run's writer for longer than its busy timeout.
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sql_err(path))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql_err(path))?;
        if !(SCHEMA_VERSION_READ_FROM..=SCHEMA_VERSION).contains(&version) {
            return Err(LedgerError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        Ok(LedgerReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The ledger's schema version.
    pub fn version(&self) -> Result<i64, LedgerError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql_err(&self.path))
    }

    /// Whether the ledger has this table (older schemas lack some).
    pub fn has_table(&self, name: &str) -> Result<bool, LedgerError> {
        Ok(self.count(&format!(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '{name}'"
        ))? > 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        let mut stmt = self
            .conn
            .prepare("SELECT value FROM run_meta WHERE key = ?1")
            .map_err(sql_err(&self.path))?;
        let mut rows = stmt.query([key]).map_err(sql_err(&self.path))?;
        match rows.next().map_err(sql_err(&self.path))? {
            Some(row) => Ok(Some(row.get(0).map_err(sql_err(&self.path))?)),
            None => Ok(None),
        }
    }

    /// Counts rows matching a fixed query, for summaries and tests.
    pub fn count(&self, sql: &str) -> Result<i64, LedgerError> {
        self.conn
            .query_row(sql, [], |r| r.get(0))
            .map_err(sql_err(&self.path))
    }

    /// Every operation, in id order.
    pub fn ops(&self) -> Result<Vec<OpRecord>, LedgerError> {
        let mut all = Vec::new();
        self.for_each_op(|op| all.push(op))?;
        Ok(all)
    }

    /// Streams every operation, in id order, without holding them all.
    pub fn for_each_op(&self, mut f: impl FnMut(OpRecord)) -> Result<(), LedgerError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {OP_COLUMNS} FROM ops ORDER BY id"))
            .map_err(sql_err(&self.path))?;
        let mut rows = stmt.query([]).map_err(sql_err(&self.path))?;
        while let Some(row) = rows.next().map_err(sql_err(&self.path))? {
            f(op_from_row(row).map_err(sql_err(&self.path))?);
        }
        Ok(())
    }

    /// Every fault window, in id order.
    pub fn faults(&self) -> Result<Vec<FaultRecord>, LedgerError> {
        let params = match self.version()? >= 7 {
            true => "params",
            false => "NULL",
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, kind, target, t_start_ns, t_confirm_ns, t_end_ns, t_recovered_ns, recovery_ms, gate, {params}
                 FROM faults ORDER BY id"
            ))
            .map_err(sql_err(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                let opt = |i: usize| -> rusqlite::Result<Option<u64>> {
                    Ok(r.get::<_, Option<i64>>(i)?.map(|v| v as u64))
                };
                Ok(FaultRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    target: r.get(2)?,
                    t_start_ns: r.get::<_, i64>(3)? as u64,
                    t_confirm_ns: opt(4)?,
                    t_end_ns: opt(5)?,
                    t_recovered_ns: opt(6)?,
                    recovery_ms: opt(7)?,
                    gate: r.get(8)?,
                    params: r.get(9)?,
                })
            })
            .map_err(sql_err(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql_err(&self.path))
    }

    /// Every finding, in the order they were recorded.
    pub fn findings(&self) -> Result<Vec<FindingRecord>, LedgerError> {
        self.findings_where("TRUE")
    }

    /// The findings whose operation is still in `ops` (retention folds
    /// reads, and their findings stay).
    pub fn findings_of_kept_ops(&self) -> Result<Vec<FindingRecord>, LedgerError> {
        self.findings_where("op_id IS NULL OR op_id IN (SELECT id FROM ops)")
    }

    pub(super) fn findings_where(
        &self,
        condition: &str,
    ) -> Result<Vec<FindingRecord>, LedgerError> {
        let v6 = self.version()? >= 6;
        let extra = if v6 {
            "rule, since_ack_ns, final"
        } else {
            "NULL, NULL, 0"
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT class, key, op_id, fault_id, t_ns, expected, seen, witness, known, {extra} FROM findings
                 WHERE {condition} ORDER BY id"
            ))
            .map_err(sql_err(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(FindingRecord {
                    class: r.get(0)?,
                    key: r.get(1)?,
                    op_id: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
                    fault_id: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    t_ns: r.get::<_, i64>(4)? as u64,
                    expected: r.get(5)?,
                    seen: r.get(6)?,
                    witness: r.get(7)?,
                    known: r.get(8)?,
                    rule: r.get(9)?,
                    since_ack_ns: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
                    final_read: r.get(11)?,
                })
            })
            .map_err(sql_err(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sql_err(&self.path))
    }
}

pub(super) const OP_COLUMNS: &str = "id, worker, origin, kind, key, generation, range_header, range_start, range_end, \
     t_invoke_ns, t_return_ns, outcome, http_status, error_class, bytes, size, sha256, etag, endpoint, detail";

pub(super) fn op_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OpRecord> {
    let origin: String = r.get(2)?;
    let kind: String = r.get(3)?;
    let outcome: String = r.get(11)?;
    let class: Option<String> = r.get(13)?;
    let sha: Option<Vec<u8>> = r.get(16)?;
    let start: Option<i64> = r.get(7)?;
    let end: Option<i64> = r.get(8)?;
    let bad = |col: usize, what: &str, value: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            col,
            rusqlite::types::Type::Text,
            format!("unknown {what} {value:?}").into(),
        )
    };
    Ok(OpRecord {
        id: r.get::<_, i64>(0)? as u64,
        worker: r.get(1)?,
        origin: Origin::parse(&origin).ok_or_else(|| bad(2, "origin", &origin))?,
        kind: OpKind::parse(&kind).ok_or_else(|| bad(3, "kind", &kind))?,
        key: r.get(4)?,
        generation: r.get::<_, Option<i64>>(5)?.map(|g| g as u64),
        range_header: r.get(6)?,
        range: start.zip(end).map(|(s, e)| (s as u64, e as u64)),
        t_invoke_ns: r.get::<_, i64>(9)? as u64,
        t_return_ns: r.get::<_, i64>(10)? as u64,
        outcome: Outcome::parse(&outcome).ok_or_else(|| bad(11, "outcome", &outcome))?,
        http_status: r.get(12)?,
        error_class: class.as_deref().and_then(ErrorClass::parse),
        bytes: r.get::<_, i64>(14)? as u64,
        size: r.get::<_, Option<i64>>(15)?.map(|s| s as u64),
        sha256: sha.and_then(|s| s.try_into().ok()),
        etag: r.get(17)?,
        endpoint: r.get(18)?,
        detail: r.get(19)?,
    })
}
