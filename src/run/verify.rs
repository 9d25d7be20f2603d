//! `faultline verify`: the offline check of a stored ledger, judged with
//! the run's own oracle settings.

use std::path::{Path, PathBuf};

use super::OracleMeta;
use crate::exit::Error;
use crate::ledger::LedgerReader;
use crate::online::Judged;
use crate::oracle::{Finding, RunInfo};
use crate::profile::Tolerance;

/// The ledger file of a run directory (or the file itself).
pub fn ledger_path(run: &Path) -> Result<PathBuf, Error> {
    let path = if run.is_dir() {
        run.join("ledger.sqlite")
    } else {
        run.to_path_buf()
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Usage(format!("{}: no ledger there", path.display())))
    }
}

/// A stored run, re-checked offline.
pub struct Verified {
    pub info: RunInfo,
    pub tolerate: Vec<Tolerance>,
    /// Every finding, in the order the oracle produced them.
    pub findings: Vec<Finding>,
    /// The same findings, judged by the profile's tolerances.
    pub judged: Judged,
    pub operations: u64,
    /// What the online check recorded in the ledger, of the operations
    /// it still holds (retention folds old reads, never their findings).
    pub recorded: Vec<crate::history::FindingRecord>,
}

impl Verified {
    /// Did this check find exactly the violations (class and operation)
    /// the online check recorded, in the same order?
    pub fn agrees_with_online(&self) -> bool {
        self.findings
            .iter()
            .map(|f| (f.class.as_str(), Some(f.op_id)))
            .eq(self.recorded.iter().map(|f| (f.class.as_str(), f.op_id)))
    }
}

/// Re-checks a ledger with the same oracle, fed in the same order.
pub fn verify(path: &Path) -> Result<Verified, Error> {
    let ledger = LedgerReader::open(path)?;
    let meta = |key: &str| -> Result<String, Error> {
        ledger
            .meta(key)?
            .ok_or_else(|| Error::Usage(format!("{}: run_meta has no {key}", path.display())))
    };
    let seed: u64 = meta("seed")?
        .parse()
        .map_err(|_| Error::Usage(format!("{}: run_meta seed is not a number", path.display())))?;
    let oracle: OracleMeta = serde_json::from_str(&meta("oracle")?).map_err(|e| {
        Error::Usage(format!(
            "{}: run_meta oracle is not readable: {e}",
            path.display()
        ))
    })?;
    let complete = ledger.meta("finished_at")?.is_some();
    let info = oracle.run_info(seed, meta("prefix")?, complete);
    let mut checker = crate::oracle::Oracle::new(info.clone());
    let mut findings = Vec::new();
    let mut operations = 0u64;
    // Fed in batches, so the oracle can look keys up ahead (`observe_all`).
    const BATCH: usize = 4096;
    let mut batch = Vec::with_capacity(BATCH);
    ledger.for_each_op(|op| {
        operations += 1;
        batch.push(op);
        if batch.len() == BATCH {
            checker.observe_all(&mut batch);
            findings.extend(checker.take_findings());
        }
    })?;
    checker.observe_all(&mut batch);
    findings.extend(checker.take_findings());
    let verdict = checker.finish();
    findings.extend(verdict.findings);
    // Judged with every fault window the ledger has: the online check
    // knew each one by the time the operations it covers arrived.
    let faults = ledger.faults()?;
    let mut judged = Judged::new(oracle.tolerate.len());
    for f in &findings {
        judged.take(&oracle.tolerate, f.clone(), &faults);
    }
    judged.coverage = verdict.coverage;
    Ok(Verified {
        info,
        tolerate: oracle.tolerate,
        findings,
        judged,
        operations,
        recorded: ledger.findings_of_kept_ops()?,
    })
}
