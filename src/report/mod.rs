//! Reports: `report.md`, `report.html` (with plots) and `junit.xml`,
//! rendered from a run's ledger alone, so `faultline report RUN` renders
//! the same files again at any time. The verdict comes first; then the
//! findings with their witnesses, the faults with their recovery times,
//! per-kind counts and latencies, availability per fault window, and
//! what was covered.

mod html;
pub mod postmortem;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::history::FindingRecord;
use crate::ledger::query::{FaultCoverage, Point};
use crate::ledger::{LedgerError, LedgerReader};
use crate::oracle::Coverage;
use crate::verdict::RunVerdict;

/// The columns of the tolerance rules' table.
const RULE_COLUMNS: [&str; 7] = [
    "rule",
    "class",
    "bounds",
    "absorbed",
    "latest after its deciding write",
    "in the final verification",
    "why",
];
/// Findings shown with their full witness; the rest are counted.
const WITNESSES_SHOWN: usize = 20;
/// Points of a time-series plot at most.
const SERIES_POINTS_MAX: u64 = 300;

/// Everything a report shows, read from one ledger.
#[derive(Debug, Clone)]
pub struct Report {
    pub run: String,
    pub meta: BTreeMap<String, String>,
    pub verdict: Option<RunVerdict>,
    pub coverage: Option<Coverage>,
    pub findings: Vec<FindingRecord>,
    pub faults: Vec<FaultCoverage>,
    /// Per kind: (ok, fail, ambiguous, unavailable), retention summaries included.
    pub counts: Vec<(String, [u64; 4])>,
    /// Per kind: (ops, p50, p90, p99, max) latency of successful ops, in ms.
    pub latency: Vec<(String, u64, f64, f64, f64, f64)>,
    /// Throughput and latency over time.
    pub series: Vec<Point>,
    pub selftest: Option<serde_json::Value>,
    /// Per tolerance rule of the profile: what it absorbed.
    pub absorbed: Vec<RuleRow>,
}

/// One tolerance rule and what it absorbed in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRow {
    /// `#1` for the profile's first rule; empty for a ledger that does
    /// not say which rule absorbed a finding (schema 5 and older).
    pub rule: String,
    pub class: String,
    pub bounds: String,
    pub reason: String,
    pub findings: u64,
    /// The longest time after its deciding write a read whose finding
    /// the rule absorbed began.
    pub latest_ns: Option<u64>,
    /// Absorbed findings of the final verification.
    pub final_reads: u64,
}

impl RuleRow {
    fn latest_text(&self) -> String {
        self.latest_ns
            .map_or("-".into(), |ns| crate::console::ms_text(ns / 1_000_000))
    }
}

/// Every rule of the profile (from `run_meta`'s oracle settings) with
/// what it absorbed, then known deviations no rule of those names.
fn absorbed_rows(meta: &BTreeMap<String, String>, findings: &[FindingRecord]) -> Vec<RuleRow> {
    let rules: Vec<crate::profile::Tolerance> = meta
        .get("oracle")
        .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
        .and_then(|o| serde_json::from_value(o["tolerate"].clone()).ok())
        .unwrap_or_default();
    let mut rows: Vec<RuleRow> = rules
        .iter()
        .enumerate()
        .map(|(i, t)| RuleRow {
            rule: format!("#{}", i + 1),
            class: t.class.as_str().to_string(),
            bounds: t.bounds(),
            reason: t.reason.clone(),
            findings: 0,
            latest_ns: None,
            final_reads: 0,
        })
        .collect();
    for f in findings {
        let Some(reason) = &f.known else { continue };
        let at = match f.rule.map(|r| r as usize).filter(|r| *r < rules.len()) {
            Some(r) => r,
            None => match rows
                .iter()
                .position(|x| x.rule.is_empty() && x.class == f.class && x.reason == *reason)
            {
                Some(r) => r,
                None => {
                    rows.push(RuleRow {
                        rule: String::new(),
                        class: f.class.clone(),
                        bounds: "not recorded".into(),
                        reason: reason.clone(),
                        findings: 0,
                        latest_ns: None,
                        final_reads: 0,
                    });
                    rows.len() - 1
                }
            },
        };
        let row = &mut rows[at];
        row.findings += 1;
        row.final_reads += u64::from(f.final_read);
        if let Some(lag) = f.since_ack_ns {
            row.latest_ns = Some(row.latest_ns.unwrap_or(0).max(lag));
        }
    }
    rows
}

/// One JUnit test case: class, name, time (s), and its failure (message,
/// text) if it failed.
struct Case {
    class: &'static str,
    name: String,
    time_s: f64,
    failure: Option<(String, String)>,
}

/// One write of a finding's witness.
#[derive(Debug, Clone, Deserialize)]
struct WitnessWrite {
    op_id: u64,
    generation: u64,
    deleted: bool,
    size: u64,
    t_invoke_ns: u64,
    t_return_ns: u64,
    outcome: String,
}

#[derive(Debug, Clone, Deserialize)]
struct WitnessFault {
    id: u64,
    kind: String,
    target: String,
    t_start_ns: u64,
    t_recovered_ns: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
struct WitnessRead {
    op_id: u64,
    t_invoke_ns: u64,
    t_return_ns: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct Witness {
    read: WitnessRead,
    #[serde(default)]
    writes: Vec<WitnessWrite>,
    fault: Option<WitnessFault>,
}

fn secs(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

impl Report {
    /// Reads everything the report needs from a ledger.
    pub fn load(path: &Path) -> Result<Report, LedgerError> {
        let ledger = LedgerReader::open(path)?;
        let meta = ledger.meta_all()?;
        let verdict = meta
            .get("verdict")
            .and_then(|v| serde_json::from_str(v).ok());
        let coverage = meta
            .get("coverage")
            .and_then(|v| serde_json::from_str(v).ok());
        let selftest = meta
            .get("selftest")
            .and_then(|v| serde_json::from_str(v).ok());
        let mut counts: BTreeMap<String, [u64; 4]> = BTreeMap::new();
        for (kind, outcome, n) in ledger.op_counts()? {
            let i = ["ok", "fail", "ambiguous", "unavailable"]
                .iter()
                .position(|o| *o == outcome)
                .unwrap_or(3);
            counts.entry(kind).or_default()[i] += n;
        }
        let order = |k: &str| {
            crate::history::OpKind::ALL
                .iter()
                .position(|x| x.as_str() == k)
                .unwrap_or(usize::MAX)
        };
        let mut counts: Vec<(String, [u64; 4])> = counts.into_iter().collect();
        counts.sort_by_key(|(k, _)| order(k));
        let mut latency = ledger.latency()?;
        latency.sort_by_key(|l| order(&l.0));
        let series = ledger.series(SERIES_POINTS_MAX)?;
        let findings = ledger.findings()?;
        Ok(Report {
            absorbed: absorbed_rows(&meta, &findings),
            run: path
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            meta,
            verdict,
            coverage,
            findings,
            faults: ledger.fault_coverage()?,
            counts,
            latency,
            series,
            selftest,
        })
    }

    fn meta(&self, key: &str) -> &str {
        self.meta.get(key).map_or("", String::as_str)
    }

    fn failing(&self) -> impl Iterator<Item = &FindingRecord> {
        self.findings.iter().filter(|f| f.known.is_none())
    }

    /// The headline: the verdict, or what is known without one.
    pub fn headline(&self) -> String {
        if let Some(st) = &self.selftest {
            let caught = st["caught"]
                .as_array()
                .map_or(0, |c| c.iter().filter(|c| c["caught"] == true).count());
            let injected = st["caught"].as_array().map_or(0, Vec::len);
            let unexpected = st["unexpected"].as_array().map_or(0, Vec::len);
            let passed = caught == injected && unexpected == 0;
            return format!(
                "SELFTEST {}: {caught} of {injected} injected bugs caught and named, {unexpected} other findings",
                if passed { "PASS" } else { "FAIL" }
            );
        }
        match &self.verdict {
            Some(v) => v.headline(),
            None if self.meta.contains_key("finished_at") => "no verdict recorded".into(),
            None => "UNKNOWN: the run did not finish (see `faultline verify`)".into(),
        }
    }

    /// Known deviations absorbed in the final verification, loudly.
    fn final_absorbed(&self) -> Option<String> {
        let n: u64 = self.absorbed.iter().map(|r| r.final_reads).sum();
        let rules: Vec<&str> = self
            .absorbed
            .iter()
            .filter(|r| r.final_reads > 0)
            .map(|r| r.rule.as_str())
            .collect();
        (n > 0).then(|| {
            format!(
                "{n} findings of the final verification, after the cluster recovered, were absorbed by a tolerance (rule {}) and did not fail the run",
                rules.join(", ")
            )
        })
    }

    /// The rules table, as rows of cells.
    fn rule_cells(&self) -> Vec<Vec<String>> {
        self.absorbed
            .iter()
            .map(|r| {
                vec![
                    r.rule.clone(),
                    r.class.clone(),
                    r.bounds.clone(),
                    r.findings.to_string(),
                    r.latest_text(),
                    r.final_reads.to_string(),
                    r.reason.clone(),
                ]
            })
            .collect()
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# faultline run {}\n", self.run);
        let _ = writeln!(md, "**Verdict: {}**\n", self.headline());
        let _ = writeln!(md, "| | |\n| --- | --- |");
        for (label, value) in self.facts() {
            let _ = writeln!(md, "| {label} | {} |", value.replace('|', "\\|"));
        }
        let failing: Vec<&FindingRecord> = self.failing().collect();
        let _ = writeln!(
            md,
            "\n## Findings\n\n{} findings fail the run; {} are known deviations of the store.\n",
            failing.len(),
            self.findings.len() - failing.len()
        );
        for (i, f) in failing.iter().take(WITNESSES_SHOWN).enumerate() {
            md.push_str(&witness_markdown(i + 1, f, &self.run));
        }
        if failing.len() > WITNESSES_SHOWN {
            let _ = writeln!(
                md,
                "and {} more: `faultline query {} --preset findings`\n",
                failing.len() - WITNESSES_SHOWN,
                self.run
            );
        }
        if !self.absorbed.is_empty() {
            let _ = writeln!(
                md,
                "Known deviations: what each tolerance rule of the profile absorbed (recorded, not failing the run):\n"
            );
            if let Some(loud) = self.final_absorbed() {
                let _ = writeln!(md, "**{loud}.**\n");
            }
            let _ = writeln!(md, "| {} |", RULE_COLUMNS.join(" | "));
            let _ = writeln!(md, "|{}", " --- |".repeat(RULE_COLUMNS.len()));
            for row in self.rule_cells() {
                let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
                let _ = writeln!(md, "| {} |", cells.join(" | "));
            }
            md.push('\n');
        }
        let _ = writeln!(md, "## Faults\n");
        if self.faults.is_empty() {
            let _ = writeln!(md, "No fault was injected.\n");
        } else {
            let _ = writeln!(
                md,
                "| # | kind | target | start (s) | recovery | ok during the window | reads after |\n| --- | --- | --- | --- | --- | --- | --- |"
            );
            for f in &self.faults {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    f.id,
                    f.kind,
                    f.target,
                    secs(f.t_start_ns),
                    f.recovery_text(),
                    f.availability_text(),
                    f.reads_after
                );
            }
            md.push('\n');
        }
        let _ = writeln!(md, "## Operations\n");
        let _ = writeln!(
            md,
            "| op | ok | fail | ambiguous | unavailable | p50 ms | p90 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for (kind, c) in &self.counts {
            let l = self.latency.iter().find(|l| l.0 == *kind);
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                md,
                "| {kind} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c[0],
                c[1],
                c[2],
                c[3],
                ms(l.map(|l| l.2)),
                ms(l.map(|l| l.3)),
                ms(l.map(|l| l.4)),
                ms(l.map(|l| l.5)),
            );
        }
        let _ = writeln!(md, "\n## Coverage\n");
        for line in self.coverage_lines() {
            let _ = writeln!(md, "- {line}");
        }
        if let Some(st) = &self.selftest {
            let _ = writeln!(md, "\n## Self-test\n");
            let _ = writeln!(
                md,
                "| injected | expected | caught | detection |\n| --- | --- | --- | --- |"
            );
            for c in st["caught"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    c["mutation"].as_str().unwrap_or_default(),
                    c["expected"].as_str().unwrap_or_default(),
                    if c["caught"] == true { "yes" } else { "NO" },
                    c["detection_ms"]
                        .as_u64()
                        .map_or("-".into(), |ms| format!("{ms} ms"))
                );
            }
        }
        let _ = writeln!(
            md,
            "\n## Reproduce\n\n```sh\n{}\n```",
            self.meta("reproduce")
        );
        md
    }

    /// The run's facts, label and value, for the table under the verdict.
    fn facts(&self) -> Vec<(&'static str, String)> {
        let total: u64 = self.counts.iter().flat_map(|(_, c)| c.iter()).sum();
        let ok: u64 = self.counts.iter().map(|(_, c)| c[0]).sum();
        let contract = self
            .meta
            .get("oracle")
            .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
            .and_then(|o| o["contract"].as_str().map(str::to_string))
            .unwrap_or_default();
        vec![
            (
                "profile",
                format!(
                    "{} (store {})",
                    self.meta("profile"),
                    self.meta("store_version")
                ),
            ),
            ("seed", self.meta("seed").to_string()),
            ("started", self.meta("started_at").to_string()),
            ("finished", self.meta("finished_at").to_string()),
            ("operations", format!("{total} ({ok} ok)")),
            ("contract", contract),
            ("faults", self.faults.len().to_string()),
            (
                "retention",
                match self.meta("retention_pruned") {
                    "" => self.meta("retention").to_string(),
                    pruned => format!("{}; pruned: {pruned}", self.meta("retention")),
                },
            ),
            ("faultline", self.meta("tool_version").to_string()),
        ]
    }

    fn coverage_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(c) = &self.coverage {
            lines.push(format!(
                "{} reads checked ({} in the final verification), {} LIST pages ({} key checks)",
                c.reads_checked, c.final_reads_checked, c.list_pages_checked, c.list_keys_checked
            ));
            lines.push(format!(
                "{} writes acknowledged, {} ambiguous; {} reads unavailable, {} undecidable",
                c.writes_acked, c.ambiguous_writes, c.reads_unavailable, c.reads_unknown
            ));
        } else {
            lines.push("no coverage recorded (the run did not finish)".into());
        }
        if let Some(RunVerdict::CoverageGap { gaps }) = &self.verdict {
            lines.extend(gaps.iter().map(|g| format!("GAP: {g}")));
        }
        lines
    }

    /// `junit.xml`: correctness, coverage and each fault as test cases.
    pub fn junit(&self) -> String {
        use quick_xml::escape::escape;
        let mut cases: Vec<Case> = Vec::new();
        let failing: Vec<&FindingRecord> = self.failing().collect();
        cases.push(Case {
            class: "correctness",
            name: "no wrong data".into(),
            time_s: 0.0,
            failure: (!failing.is_empty()).then(|| {
                (
                    format!("{} findings", failing.len()),
                    failing
                        .iter()
                        .map(|f| {
                            format!(
                                "{} on {} (op {}): expected {}, saw {}",
                                f.class,
                                f.key.as_deref().unwrap_or("the LIST"),
                                f.op_id.unwrap_or_default(),
                                f.expected,
                                f.seen
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            }),
        });
        let gaps = match &self.verdict {
            Some(RunVerdict::CoverageGap { gaps }) => Some(gaps.join("\n")),
            Some(RunVerdict::Unknown { reason }) => Some(reason.clone()),
            None => Some("the run did not finish".into()),
            _ => None,
        };
        cases.push(Case {
            class: "coverage",
            name: "everything planned was exercised".into(),
            time_s: 0.0,
            failure: gaps.map(|g| ("coverage gap".into(), g)),
        });
        let infrastructure = match &self.verdict {
            Some(RunVerdict::Infrastructure { reason })
            | Some(RunVerdict::Findings {
                infrastructure: Some(reason),
                ..
            }) => Some(reason),
            _ => None,
        };
        if let Some(reason) = infrastructure {
            cases.push(Case {
                class: "infrastructure",
                name: "the cluster stayed ready, recovered, and within its thresholds".into(),
                time_s: 0.0,
                failure: Some(("infrastructure failure".into(), reason.clone())),
            });
        }
        // What each tolerance absorbed, so a CI page shows it too.
        for r in self.absorbed.iter().filter(|r| r.findings > 0) {
            let mut name = format!(
                "rule {} {} ({}): {} absorbed, the latest {} after its deciding write",
                r.rule,
                r.class,
                r.bounds,
                r.findings,
                r.latest_text()
            );
            if r.final_reads > 0 {
                name += &format!(", {} IN THE FINAL VERIFICATION", r.final_reads);
            }
            cases.push(Case {
                class: "known-deviations",
                name,
                time_s: 0.0,
                failure: None,
            });
        }
        for f in &self.faults {
            cases.push(Case {
                class: "faults",
                name: format!("#{} {} on {}", f.id, f.kind, f.target),
                time_s: f.recovery_ms.unwrap_or_default() as f64 / 1e3,
                failure: crate::verdict::fault_gaps(f)
                    .first()
                    .map(|g| ("fault not covered".into(), g.clone())),
            });
        }
        let failures = cases.iter().filter(|c| c.failure.is_some()).count();
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let suite = format!(
            "faultline {} seed {}",
            self.meta("profile"),
            self.meta("seed")
        );
        let _ = writeln!(
            xml,
            "<testsuites name=\"faultline\" tests=\"{}\" failures=\"{failures}\">",
            cases.len()
        );
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
            escape(&suite),
            cases.len()
        );
        for c in &cases {
            let _ = write!(
                xml,
                "    <testcase classname=\"faultline.{}\" name=\"{}\" time=\"{:.3}\"",
                c.class,
                escape(&c.name),
                c.time_s
            );
            match &c.failure {
                None => xml.push_str("/>\n"),
                Some((message, text)) => {
                    let _ = writeln!(
                        xml,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(message),
                        escape(text)
                    );
                }
            }
        }
        xml.push_str("  </testsuite>\n</testsuites>\n");
        xml
    }

    /// `report.html`, with the plots.
    pub fn html(&self) -> String {
        html::render(self)
    }
}

fn witness_markdown(n: usize, f: &FindingRecord, run: &str) -> String {
    let mut md = String::new();
    let key = f.key.as_deref().unwrap_or("(LIST)");
    let _ = writeln!(
        md,
        "### {n}. {} on `{key}` (op {})\n",
        f.class,
        f.op_id.unwrap_or_default()
    );
    let w: Option<Witness> = serde_json::from_str(&f.witness).ok();
    if let Some(w) = &w {
        let _ = writeln!(
            md,
            "- read: op {}, {}–{} s",
            w.read.op_id,
            secs(w.read.t_invoke_ns),
            secs(w.read.t_return_ns)
        );
    }
    let _ = writeln!(md, "- expected: {}", f.expected);
    let _ = writeln!(md, "- seen: {}", f.seen);
    match w.as_ref().and_then(|w| w.fault.as_ref()) {
        Some(x) => {
            let _ = writeln!(
                md,
                "- during fault #{}: {} on {} (from {} s{})",
                x.id,
                x.kind,
                x.target,
                secs(x.t_start_ns),
                x.t_recovered_ns
                    .map_or(String::new(), |t| format!(", recovered at {} s", secs(t)))
            );
        }
        None => {
            let _ = writeln!(md, "- during: no fault");
        }
    }
    if let Some(w) = w.filter(|w| !w.writes.is_empty()) {
        let _ = writeln!(
            md,
            "\n| write op | generation | value | interval (s) | outcome |\n| --- | --- | --- | --- | --- |"
        );
        for x in &w.writes {
            let _ = writeln!(
                md,
                "| {} | g{} | {} | {}–{} | {} |",
                x.op_id,
                x.generation,
                if x.deleted {
                    "DELETE".to_string()
                } else {
                    format!("{} bytes", x.size)
                },
                secs(x.t_invoke_ns),
                secs(x.t_return_ns),
                x.outcome
            );
        }
    }
    if f.key.is_some() {
        let _ = writeln!(md, "\nTimeline: `faultline explain {run} --key {key}`");
    }
    md.push('\n');
    md
}

/// Renders every report file into the run directory.
pub fn write_all(run_dir: &Path) -> Result<Report, crate::exit::Error> {
    let report = Report::load(&run_dir.join("ledger.sqlite"))?;
    let write = |name: &str, text: String| {
        let path = run_dir.join(name);
        std::fs::write(&path, text).map_err(|e| {
            crate::exit::Error::Workload(format!("cannot write {}: {e}", path.display()))
        })
    };
    write("report.md", report.markdown())?;
    write("report.html", report.html())?;
    write("junit.xml", report.junit())?;
    Ok(report)
}

#[cfg(test)]
mod tests;
