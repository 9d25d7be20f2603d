//! The one place a verdict is decided. From what the oracle found (its
//! violations; what tolerance rules absorbed never fails a run), whether
//! the cluster came back, what the run covered and the user's thresholds,
//! `judge` says how a run ended; `RunVerdict::exit_code` is the exit code
//! of `soak`, `gate` and `selftest` runs, `offline` is `verify`'s verdict,
//! `benchmark` a benchmark's, and `SelftestOutcome` the self-test's.
//!
//! Correctness comes first: findings fail the run whatever else happened;
//! a run that could not check enough says so instead of passing (oracle.md
//! §8).

use serde::{Deserialize, Serialize};

use crate::exit;
use crate::history::{OpKind, Outcome};
use crate::ledger::query::FaultCoverage;
use crate::online::Judged;
use crate::oracle::{Coverage, Finding};
use crate::workload::{Stats, WorkloadConfig};

/// How a run ended, most important first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum RunVerdict {
    /// Everything planned happened and no check failed.
    Pass,
    /// The oracle found wrong data; `infrastructure` when the cluster also
    /// did not come back (its final reads still ran).
    Findings {
        count: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        infrastructure: Option<String>,
    },
    /// The cluster did not come back, so not everything could be checked.
    Infrastructure { reason: String },
    /// No findings, but the checks covered too little to vouch for the run.
    CoverageGap { gaps: Vec<String> },
    /// The check itself could not finish.
    Unknown { reason: String },
}

impl RunVerdict {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunVerdict::Pass => exit::PASS,
            RunVerdict::Findings { .. } => exit::FINDINGS,
            RunVerdict::Infrastructure { .. } => exit::INFRA,
            RunVerdict::CoverageGap { .. } | RunVerdict::Unknown { .. } => exit::COVERAGE_GAP,
        }
    }

    pub fn headline(&self) -> String {
        match self {
            RunVerdict::Pass => "PASS".into(),
            RunVerdict::Findings {
                count,
                infrastructure: None,
            } => format!("FAIL: {count} findings"),
            RunVerdict::Findings {
                count,
                infrastructure: Some(reason),
            } => format!("FAIL: {count} findings; also INFRASTRUCTURE FAILURE: {reason}"),
            RunVerdict::Infrastructure { reason } => format!("INFRASTRUCTURE FAILURE: {reason}"),
            RunVerdict::CoverageGap { gaps } => format!("COVERAGE GAP: {}", gaps.join("; ")),
            RunVerdict::Unknown { reason } => format!("UNKNOWN: {reason}"),
        }
    }
}

/// Limits on how the cluster rides out faults. A breach fails the run as
/// an infrastructure failure (exit 3); findings still come first.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Thresholds {
    /// Every fault must be recovered within this.
    pub max_recovery_ms: Option<u64>,
    /// At least this fraction of operations must succeed in every fault window.
    pub min_availability: Option<f64>,
}

impl Thresholds {
    /// What the faults breached.
    pub fn breaches(&self, faults: &[FaultCoverage]) -> Vec<String> {
        let mut out = Vec::new();
        for f in faults {
            let name = format!("fault #{} ({} on {})", f.id, f.kind, f.target);
            if let (Some(max), Some(ms)) = (self.max_recovery_ms, f.recovery_ms)
                && ms > max
            {
                out.push(format!(
                    "{name} recovered in {ms} ms, over the {max} ms allowed"
                ));
            }
            if let (Some(min), Some(a)) = (self.min_availability, f.availability())
                && a < min
            {
                out.push(format!(
                    "{name}: {:.1} % of operations succeeded during it, under the {:.1} % required",
                    a * 100.0,
                    min * 100.0
                ));
            }
        }
        out
    }
}

/// What the self-test found.
#[derive(Debug, Clone, Serialize)]
pub struct SelftestOutcome {
    pub caught: Vec<crate::selftest::Caught>,
    /// Findings outside the known deviations and the keys phase 1 damaged.
    pub unexpected: Vec<Finding>,
}

impl SelftestOutcome {
    pub fn passed(&self) -> bool {
        self.unexpected.is_empty() && self.caught.iter().all(|c| c.caught)
    }

    /// The self-test's exit code: it passes only when every planted bug
    /// was caught and named and nothing else was found.
    pub fn exit_code(&self) -> u8 {
        if self.passed() {
            exit::PASS
        } else {
            exit::FINDINGS
        }
    }
}

/// The run's verdict from what the oracle found and what was covered.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    verdict: Option<&Judged>,
    infra: Option<String>,
    lost: bool,
    stats: &Stats,
    wl: &WorkloadConfig,
    workload_failed: bool,
    faults: &[FaultCoverage],
    mut plan_gaps: Vec<String>,
) -> RunVerdict {
    let Some(v) = verdict.filter(|_| !lost) else {
        return RunVerdict::Unknown {
            reason: "the online check stopped before the run ended".into(),
        };
    };
    if !v.violations.is_empty() {
        return RunVerdict::Findings {
            count: v.violations.len() as u64,
            infrastructure: infra,
        };
    }
    if let Some(reason) = infra {
        return RunVerdict::Infrastructure { reason };
    }
    if workload_failed {
        return RunVerdict::Unknown {
            reason: "the workload did not finish cleanly".into(),
        };
    }
    let mut gaps = coverage_gaps(&v.coverage, stats, wl);
    gaps.append(&mut plan_gaps);
    gaps.extend(faults.iter().flat_map(fault_gaps));
    if gaps.is_empty() {
        RunVerdict::Pass
    } else {
        RunVerdict::CoverageGap { gaps }
    }
}

/// What a run had to exercise to vouch for anything, and did not.
fn coverage_gaps(c: &Coverage, stats: &Stats, wl: &WorkloadConfig) -> Vec<String> {
    let mut gaps = Vec::new();
    if c.reads_checked == 0 {
        gaps.push("no read was checked".into());
    }
    if c.final_reads_checked == 0 {
        gaps.push("the final verification checked no read".into());
    }
    if c.writes_acked == 0 {
        gaps.push("no write was acknowledged".into());
    }
    let weights = [
        (wl.mix.write, &[OpKind::Put, OpKind::Overwrite][..]),
        (wl.mix.delete, &[OpKind::Delete][..]),
        (wl.mix.get, &[OpKind::Get][..]),
        (wl.mix.head, &[OpKind::Head][..]),
        (wl.mix.range, &[OpKind::Range][..]),
        (wl.mix.list, &[OpKind::List][..]),
    ];
    for (weight, kinds) in weights {
        if weight > 0 && kinds.iter().all(|k| stats.count(*k, Outcome::Ok) == 0) {
            gaps.push(format!(
                "no successful {} although the mix asks for it",
                kinds[0].as_str()
            ));
        }
    }
    if wl.mix.list > 0 && c.list_pages_checked == 0 {
        gaps.push("no LIST page was checked".into());
    }
    gaps
}

/// What a fault window failed to exercise, if anything.
pub fn fault_gaps(f: &FaultCoverage) -> Vec<String> {
    let name = format!("fault #{} ({} on {})", f.id, f.kind, f.target);
    let mut gaps = Vec::new();
    if f.t_recovered_ns.is_none() {
        gaps.push(format!("{name} never recovered"));
    }
    if f.ok_in_window == 0 {
        gaps.push(format!("{name}: no operation succeeded during it"));
    }
    if f.t_recovered_ns.is_some() && f.reads_after == 0 {
        gaps.push(format!("{name}: no read checked after it"));
    }
    gaps
}

/// `verify`'s verdict on a stored ledger: its violations, whether any read
/// was checked, whether the run it holds finished.
pub fn offline(judged: &Judged, coverage: &Coverage, complete: bool) -> RunVerdict {
    if !judged.violations.is_empty() {
        return RunVerdict::Findings {
            count: judged.violations.len() as u64,
            infrastructure: None,
        };
    }
    if coverage.reads_checked == 0 {
        return RunVerdict::CoverageGap {
            gaps: vec!["no read was checked".into()],
        };
    }
    if !complete {
        return RunVerdict::Unknown {
            reason: "no findings, but the run was cut short".into(),
        };
    }
    RunVerdict::Pass
}

/// A run whose boot stopped at a wrong probe: its findings, with the
/// infrastructure failure beside them (nothing else ran).
pub fn booting_stopped(judged: Option<&Judged>, booting: String) -> RunVerdict {
    match judged.map(|j| j.violations.len()) {
        Some(n) if n > 0 => RunVerdict::Findings {
            count: n as u64,
            infrastructure: Some(booting),
        },
        _ => RunVerdict::Infrastructure { reason: booting },
    }
}

/// A benchmark's exit code: it fails on any violation the oracle found in
/// the history it generated or drove.
pub fn benchmark(violations: u64) -> u8 {
    if violations == 0 {
        exit::PASS
    } else {
        exit::FINDINGS
    }
}
