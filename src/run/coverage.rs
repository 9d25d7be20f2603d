//! What each fault window exercised, from the ledger: successful
//! operations during the window, and reads that started after it recovered
//! (before the next fault), so a run whose faults went unobserved cannot
//! pass (oracle.md §8).

use serde::Serialize;

use crate::ledger::{LedgerError, LedgerReader};

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

    /// What this window failed to exercise, if anything.
    pub fn gaps(&self) -> Vec<String> {
        let name = format!("fault #{} ({} on {})", self.id, self.kind, self.target);
        let mut gaps = Vec::new();
        if self.t_recovered_ns.is_none() {
            gaps.push(format!("{name} never recovered"));
        }
        if self.ok_in_window == 0 {
            gaps.push(format!("{name}: no operation succeeded during it"));
        }
        if self.t_recovered_ns.is_some() && self.reads_after == 0 {
            gaps.push(format!("{name}: no read checked after it"));
        }
        gaps
    }
}

/// Every fault window of a ledger with its coverage, in order.
pub fn fault_coverage(ledger: &LedgerReader) -> Result<Vec<FaultCoverage>, LedgerError> {
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
