//! What a run prints: the summary, the faults, findings with what the
//! tolerances absorbed, coverage, and the self-test's outcome.

use std::path::Path;
use std::time::Duration;

use crate::history::{OpKind, Outcome};
use crate::ledger::query::FaultCoverage;
use crate::online;
use crate::online::Judged;
use crate::oracle::Coverage;
use crate::profile::Tolerance;
use crate::verdict::SelftestOutcome;
use crate::workload::Stats;

pub(super) fn print_selftest(st: &SelftestOutcome) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "injected",
        "expected",
        "caught",
        "detection",
        "attempts",
        "also named",
        "key",
    ]);
    for c in &st.caught {
        table.add_row(vec![
            c.mutation.as_str().to_string(),
            c.expected.as_str().to_string(),
            if c.caught {
                "yes".into()
            } else {
                format!("NO: {}", c.detail)
            },
            c.detection_ms.map_or("-".into(), |ms| format!("{ms} ms")),
            c.attempts.to_string(),
            c.named
                .iter()
                .filter(|n| **n != c.expected)
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            c.key.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
    let times: Vec<u64> = st.caught.iter().filter_map(|c| c.detection_ms).collect();
    if let (Some(p50), Some(p99)) = (
        crate::selftest::percentile(&times, 50.0),
        crate::selftest::percentile(&times, 99.0),
    ) {
        println!(
            "detection latency: p50 {p50} ms, p99 {p99} ms over {} injections",
            times.len()
        );
    }
    if st.unexpected.is_empty() {
        println!("clean phase: no finding outside the known deviations and the damaged keys");
    } else {
        println!(
            "clean phase: {} unexpected findings, first: {}",
            st.unexpected.len(),
            online::summary(&st.unexpected[0])
        );
    }
}

pub(super) fn print_faults(faults: &[FaultCoverage]) {
    if faults.is_empty() {
        return;
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "fault",
        "kind",
        "target",
        "recovery",
        "ok during",
        "reads after",
    ]);
    for f in faults {
        table.add_row(vec![
            format!("#{}", f.id),
            f.kind.clone(),
            f.target.clone(),
            f.recovery_text(),
            f.availability_text(),
            f.reads_after.to_string(),
        ]);
    }
    println!("{table}");
}

pub(super) fn print_summary(stats: &Stats, elapsed: Duration, records: u64, ledger: &Path) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["op", "ok", "fail", "ambiguous", "unavailable"]);
    for kind in OpKind::ALL {
        let mut cells = vec![kind.as_str().to_string()];
        cells.extend(
            [
                Outcome::Ok,
                Outcome::Fail,
                Outcome::Ambiguous,
                Outcome::Unavailable,
            ]
            .into_iter()
            .map(|o| stats.count(kind, o).to_string()),
        );
        table.add_row(cells);
    }
    println!("{table}");
    println!(
        "faultline: {} operations in {:.0} s ({:.0} ops/s), {} ledger records in {}",
        stats.total(),
        elapsed.as_secs_f64(),
        stats.total() as f64 / elapsed.as_secs_f64().max(0.001),
        records,
        ledger.display()
    );
}

/// Prints what each tolerance rule absorbed, then up to `show` findings
/// that fail the run as a table and their counts per class.
pub fn print_findings(judged: &Judged, tolerate: &[Tolerance], show: usize) {
    for line in absorbed_lines(judged, tolerate) {
        println!("{line}");
    }
    let failing = &judged.violations;
    if failing.is_empty() {
        return;
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["class", "key", "op", "expected", "seen", "writes"]);
    for f in failing.iter().take(show) {
        table.add_row(vec![
            f.class.as_str().to_string(),
            f.key.clone().unwrap_or_default(),
            f.op_id.to_string(),
            f.expected.clone(),
            f.seen.clone(),
            f.write_ids()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    println!("{table}");
    let mut by_class = std::collections::BTreeMap::new();
    for f in failing {
        *by_class.entry(f.class.as_str()).or_insert(0u64) += 1;
    }
    let counts: Vec<String> = by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
    println!("findings: {}", counts.join(", "));
}

/// One line per tolerance rule that absorbed findings: how many, the
/// longest time after the deciding write, and loudly any absorbed in
/// the final verification.
pub fn absorbed_lines(judged: &Judged, tolerate: &[Tolerance]) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, (rule, a)) in tolerate.iter().zip(&judged.absorbed).enumerate() {
        if a.findings == 0 {
            continue;
        }
        let mut line = format!(
            "known deviation, rule #{} {} ({}): {} absorbed",
            i + 1,
            rule.class.as_str(),
            rule.bounds(),
            a.findings
        );
        if let Some(lag) = a.max_since_ack_ns {
            line += &format!(
                ", the latest {} after its deciding write",
                crate::console::ms_text(lag / 1_000_000)
            );
        }
        if a.final_reads > 0 {
            line += &format!(
                "; {} OF THEM IN THE FINAL VERIFICATION, after the cluster recovered",
                a.final_reads
            );
        }
        lines.push(line);
    }
    lines
}

pub fn print_coverage(c: &Coverage) {
    println!(
        "checked: {} reads ({} in the final verification), {} LIST pages ({} key checks); {} writes acknowledged, {} ambiguous; {} reads unavailable, {} undecidable",
        c.reads_checked,
        c.final_reads_checked,
        c.list_pages_checked,
        c.list_keys_checked,
        c.writes_acked,
        c.ambiguous_writes,
        c.reads_unavailable,
        c.reads_unknown
    );
}
