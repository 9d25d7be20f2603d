//! The typed questions the rest of faultline asks a ledger: run metadata,
//! operation counts, latency percentiles, the throughput series, fault
//! windows with what the workload did around them, a key's operations,
//! and the read-only SQL of `faultline query` with its presets. The
//! schema is known here and in `mod.rs`, nowhere else.

use std::collections::BTreeMap;

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde::Serialize;

use super::reader::{OP_COLUMNS, op_from_row};
use super::{LedgerError, LedgerReader, sql_err};
use crate::history::OpRecord;

/// Named queries for the common questions.
pub const PRESETS: [(&str, &str); 4] = [
    (
        "findings",
        "SELECT id, class, key, op_id, fault_id, round(t_ns / 1e9, 3) AS t_s, expected, seen,
                known IS NOT NULL AS known
         FROM findings ORDER BY known, id",
    ),
    (
        "faults",
        "SELECT id, kind, target, round(t_start_ns / 1e9, 3) AS start_s,
                round(t_end_ns / 1e9, 3) AS undone_s, round(t_recovered_ns / 1e9, 3) AS recovered_s,
                recovery_ms
         FROM faults ORDER BY id",
    ),
    ("latency", "SELECT * FROM latency_percentiles"),
    (
        "availability",
        "SELECT f.id, f.kind, f.target, count(o.id) AS ops, coalesce(sum(o.outcome = 'ok'), 0) AS ok,
                round(100.0 * sum(o.outcome = 'ok') / count(o.id), 1) AS ok_percent
         FROM faults f LEFT JOIN ops o
           ON o.t_invoke_ns <= coalesce(f.t_recovered_ns, f.t_end_ns, 9223372036854775807)
          AND o.t_return_ns >= f.t_start_ns
         GROUP BY f.id ORDER BY f.id",
    ),
];

/// A query's columns and rows, as text (NULL as empty).
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// One bucket of the time series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since the run started, at the bucket's start.
    pub t_s: f64,
    pub ops_per_s: f64,
    pub ok_per_s: f64,
    /// Latency of the successful operations, in ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One fault window and what the workload did around it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultCoverage {
    pub id: u64,
    pub kind: String,
    pub target: String,
    pub t_start_ns: u64,
    pub t_recovered_ns: Option<u64>,
    pub recovery_ms: Option<u64>,
    /// Operations issued during the window (start to recovery).
    pub ops_in_window: u64,
    /// Of those, the ones that succeeded.
    pub ok_in_window: u64,
    /// Successful reads (GET, HEAD, Range, LIST) started after recovery
    /// and before the next fault.
    pub reads_after: u64,
}

impl FaultCoverage {
    /// Successful operations per attempted one during the window.
    pub fn availability(&self) -> Option<f64> {
        (self.ops_in_window > 0).then(|| self.ok_in_window as f64 / self.ops_in_window as f64)
    }

    /// "12.3 s" or "not recovered", as the summaries show it.
    pub fn recovery_text(&self) -> String {
        self.recovery_ms.map_or("not recovered".into(), |ms| {
            format!("{:.1} s", ms as f64 / 1e3)
        })
    }

    /// "ok/attempted (percent)", as the summaries show it.
    pub fn availability_text(&self) -> String {
        format!(
            "{}/{} ({})",
            self.ok_in_window,
            self.ops_in_window,
            self.availability()
                .map_or("-".into(), |a| format!("{:.0} %", a * 100.0))
        )
    }
}

impl LedgerReader {
    /// The rows `sql` selects, each read by `row`.
    fn rows<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, LedgerError> {
        let mut stmt = self.conn.prepare(sql).map_err(sql_err(&self.path))?;
        stmt.query_map(params, row)
            .and_then(|rows| rows.collect())
            .map_err(sql_err(&self.path))
    }

    /// Every `run_meta` entry.
    pub fn meta_all(&self) -> Result<BTreeMap<String, String>, LedgerError> {
        let rows = self.rows("SELECT key, value FROM run_meta", [], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        Ok(rows.into_iter().collect())
    }

    /// Operations per (kind, outcome), over the whole run.
    pub fn op_counts(&self) -> Result<Vec<(String, String, u64)>, LedgerError> {
        self.rows(
            "SELECT kind, outcome, sum(ops) FROM ops_per_minute GROUP BY kind, outcome",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )
    }

    /// Per kind: (ops, p50, p90, p99, max) latency of successful
    /// operations, in ms.
    pub fn latency(&self) -> Result<Vec<Latency>, LedgerError> {
        self.rows(
            "SELECT kind, ops, p50_ms, p90_ms, p99_ms, max_ms FROM latency_percentiles",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, f64>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, f64>(4)?,
                    r.get::<_, f64>(5)?,
                ))
            },
        )
    }

    /// Throughput and latency over time, in at most `points_max` buckets.
    pub fn series(&self, points_max: u64) -> Result<Vec<Point>, LedgerError> {
        series(&self.conn, points_max).map_err(sql_err(&self.path))
    }

    /// Every fault window with its coverage, in order.
    pub fn fault_coverage(&self) -> Result<Vec<FaultCoverage>, LedgerError> {
        fault_coverage(self)
    }

    /// Operations of the whole run (what retention folded away included).
    pub fn ops_total(&self) -> Result<i64, LedgerError> {
        self.count("SELECT coalesce(sum(ops), 0) FROM ops_per_minute")
    }

    /// Findings no tolerance rule absorbed.
    pub fn violations_total(&self) -> Result<i64, LedgerError> {
        self.count("SELECT count(*) FROM findings WHERE known IS NULL")
    }

    /// Every operation on `key` and every LIST page that listed it, in id
    /// order.
    pub fn ops_touching(&self, key: &str) -> Result<Vec<OpRecord>, LedgerError> {
        self.rows(
            &format!(
                "SELECT {OP_COLUMNS} FROM ops
                 WHERE key = ?1 OR (kind = 'list' AND detail LIKE '%' || ?2 || '%') ORDER BY id"
            ),
            rusqlite::params![key, format!("\"{key}\"")],
            op_from_row,
        )
    }

    /// Runs one of the user's read-only queries (`faultline query`): its
    /// columns and rows as text, or SQLite's message.
    pub fn query(&self, sql: &str) -> Result<Rows, String> {
        let conn = &self.conn;
        let bad = |e: rusqlite::Error| e.to_string();
        let mut stmt = conn.prepare(sql).map_err(bad)?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let n = columns.len();
        let mut rows = Vec::new();
        let mut q = stmt.query([]).map_err(bad)?;
        while let Some(row) = q.next().map_err(bad)? {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(match row.get_ref(i).map_err(bad)? {
                    ValueRef::Null => None,
                    ValueRef::Integer(v) => Some(v.to_string()),
                    ValueRef::Real(v) => Some(v.to_string()),
                    ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Some(hex::encode(b)),
                });
            }
            rows.push(out);
        }
        Ok(Rows { columns, rows })
    }
}

/// Per kind: (ops, p50, p90, p99, max) latency in ms.
pub type Latency = (String, u64, f64, f64, f64, f64);

/// Throughput and latency over time, in at most `points_max` buckets of
/// at least a second, from the workers' operations (not the final
/// verification).
fn series(conn: &Connection, points_max: u64) -> rusqlite::Result<Vec<Point>> {
    let end: i64 = conn.query_row(
        "SELECT coalesce(max(t_return_ns), 0) FROM ops WHERE origin != 'final'",
        [],
        |r| r.get(0),
    )?;
    let bucket = (end as u64 / points_max.max(1)).max(1_000_000_000);
    let mut stmt = conn.prepare(
        "SELECT t_invoke_ns / ?1, outcome = 'ok', t_return_ns - t_invoke_ns
         FROM ops WHERE origin != 'final' ORDER BY 1",
    )?;
    let mut rows = stmt.query([bucket as i64])?;
    let mut out = Vec::new();
    let mut current: Option<(i64, u64, u64, Vec<u64>)> = None;
    let flush = |c: (i64, u64, u64, Vec<u64>), out: &mut Vec<Point>| {
        let (b, n, ok, mut lat) = c;
        lat.sort_unstable();
        let pick = |p: f64| {
            lat.get(((lat.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(0.0, |ns| *ns as f64 / 1e6)
        };
        let width = bucket as f64 / 1e9;
        out.push(Point {
            t_s: b as f64 * width,
            ops_per_s: n as f64 / width,
            ok_per_s: ok as f64 / width,
            p50_ms: pick(0.5),
            p99_ms: pick(0.99),
        });
    };
    while let Some(r) = rows.next()? {
        let (b, ok, lat): (i64, bool, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if current.as_ref().is_some_and(|c| c.0 != b) {
            flush(current.take().expect("checked"), &mut out);
        }
        let c = current.get_or_insert((b, 0, 0, Vec::new()));
        c.1 += 1;
        if ok {
            c.2 += 1;
            c.3.push(lat as u64);
        }
    }
    if let Some(c) = current {
        flush(c, &mut out);
    }
    Ok(out)
}

/// Every fault window of a ledger with its coverage, in order.
fn fault_coverage(ledger: &LedgerReader) -> Result<Vec<FaultCoverage>, LedgerError> {
    let faults = ledger.faults()?;
    let has_folded = ledger.has_table("fault_folded")?;
    let mut out = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        let end = f.t_recovered_ns.or(f.t_end_ns).unwrap_or(i64::MAX as u64);
        let next = faults.get(i + 1).map_or(i64::MAX as u64, |n| n.t_start_ns);
        let in_window = |extra: &str| {
            ledger.count(&format!(
                "SELECT count(*) FROM ops WHERE t_invoke_ns <= {end} AND t_return_ns >= {} {extra}",
                f.t_start_ns
            ))
        };
        let reads_after = match f.t_recovered_ns {
            Some(t) => ledger.count(&format!(
                "SELECT count(*) FROM ops WHERE kind IN ('get', 'head', 'range', 'list')
                 AND outcome = 'ok' AND t_invoke_ns >= {t} AND t_invoke_ns < {next}"
            ))?,
            None => 0,
        };
        // What retention folded away still counts.
        let folded = |column: &str| {
            if !has_folded {
                return Ok(0);
            }
            ledger.count(&format!(
                "SELECT coalesce(sum({column}), 0) FROM fault_folded WHERE fault_id = {}",
                f.id
            ))
        };
        out.push(FaultCoverage {
            id: f.id,
            kind: f.kind.clone(),
            target: f.target.clone(),
            t_start_ns: f.t_start_ns,
            t_recovered_ns: f.t_recovered_ns,
            recovery_ms: f.recovery_ms,
            ops_in_window: (in_window("")? + folded("ops_in_window")?) as u64,
            ok_in_window: (in_window("AND outcome = 'ok'")? + folded("ok_in_window")?) as u64,
            reads_after: (reads_after + folded("reads_after")?) as u64,
        });
    }
    Ok(out)
}
