//! Post-mortem over stored runs: SQL queries and presets, a key's
//! timeline, and the list of past runs. Read-only: the ledger is opened
//! read-only, so a query cannot change a run.

use std::fmt::Write as _;
use std::path::Path;

use crate::exit::Error;
use crate::ledger::query::Rows;
use crate::ledger::{LedgerError, LedgerReader};

/// How query results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Runs one read-only query.
pub fn query(ledger: &LedgerReader, sql: &str) -> Result<Rows, Error> {
    ledger
        .query(sql)
        .map_err(|e| Error::Usage(format!("query: {e}")))
}

impl Rows {
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => {
                let mut table = comfy_table::Table::new();
                table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
                table.set_header(self.columns.clone());
                for row in &self.rows {
                    table.add_row(row.iter().map(|c| c.clone().unwrap_or_default()));
                }
                format!("{table}\n({} rows)\n", self.rows.len())
            }
            Format::Json => {
                let list: Vec<serde_json::Map<String, serde_json::Value>> = self
                    .rows
                    .iter()
                    .map(|row| {
                        self.columns
                            .iter()
                            .zip(row)
                            .map(|(c, v)| {
                                (
                                    c.clone(),
                                    v.clone()
                                        .map_or(serde_json::Value::Null, serde_json::Value::from),
                                )
                            })
                            .collect()
                    })
                    .collect();
                serde_json::to_string_pretty(&list).expect("rows serialise") + "\n"
            }
            Format::Csv => {
                let field = |s: &str| {
                    if s.contains([',', '"', '\n', '\r']) {
                        format!("\"{}\"", s.replace('"', "\"\""))
                    } else {
                        s.to_string()
                    }
                };
                let mut out = String::new();
                let line = |cells: Vec<String>| cells.join(",") + "\n";
                out += &line(self.columns.iter().map(|c| field(c)).collect());
                for row in &self.rows {
                    out += &line(
                        row.iter()
                            .map(|c| field(c.as_deref().unwrap_or("")))
                            .collect(),
                    );
                }
                out
            }
        }
    }
}

/// A key's timeline: every operation on it and every LIST page that
/// listed it, with interval and outcome; the faults around them; the
/// findings on it.
pub fn explain(ledger: &LedgerReader, key: &str) -> Result<String, Error> {
    let ops = ledger.ops_touching(key)?;
    if ops.is_empty() {
        return Err(Error::Usage(format!(
            "no operation on key {key} in {}",
            ledger.path().display()
        )));
    }
    let first = ops.iter().map(|o| o.t_invoke_ns).min().unwrap_or(0);
    let last = ops.iter().map(|o| o.t_return_ns).max().unwrap_or(0);
    let findings: Vec<_> = ledger
        .findings()?
        .into_iter()
        .filter(|f| f.key.as_deref() == Some(key))
        .collect();
    // (time, order within the time, cells)
    let mut events: Vec<(u64, u8, Vec<String>)> = Vec::new();
    let s = |ns: u64| format!("{:.3}", ns as f64 / 1e9);
    for f in ledger.faults()? {
        let end = f.t_recovered_ns.or(f.t_end_ns).unwrap_or(u64::MAX);
        if f.t_start_ns > last || end < first {
            continue;
        }
        let name = format!("fault #{} {} on {}", f.id, f.kind, f.target);
        events.push((
            f.t_start_ns,
            0,
            vec![
                s(f.t_start_ns),
                format!("{name} starts"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
        ));
        if let Some(t) = f.t_recovered_ns {
            events.push((
                t,
                0,
                vec![
                    s(t),
                    format!(
                        "{name}: recovered ({} ms)",
                        f.recovery_ms.unwrap_or_default()
                    ),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
            ));
        }
    }
    for o in &ops {
        let value = match (o.kind, o.generation, o.size) {
            (crate::history::OpKind::Delete, Some(g), _) => format!("g{g} DELETE"),
            (crate::history::OpKind::List, _, _) => "listed it".to_string(),
            (_, Some(g), Some(n)) => format!("g{g}, {n} bytes"),
            (_, None, _) if o.http_status == Some(404) => "absent (404)".into(),
            (_, g, n) => format!(
                "{}{}",
                g.map_or(String::new(), |g| format!("g{g} ")),
                n.map_or(String::new(), |n| format!("{n} bytes"))
            ),
        };
        events.push((
            o.t_invoke_ns,
            1,
            vec![
                s(o.t_invoke_ns),
                format!("{} ({})", o.kind.as_str(), o.origin.as_str()),
                o.id.to_string(),
                format!("w{}", o.worker),
                value,
                format!("{:.1} ms", (o.t_return_ns - o.t_invoke_ns) as f64 / 1e6),
                format!(
                    "{}{}",
                    o.outcome.as_str(),
                    o.http_status.map_or(String::new(), |st| format!(" {st}"))
                ),
            ],
        ));
    }
    for f in &findings {
        events.push((
            f.t_ns,
            2,
            vec![
                s(f.t_ns),
                format!(
                    "FINDING {}{}",
                    f.class,
                    if f.known.is_some() {
                        " (known deviation)"
                    } else {
                        ""
                    }
                ),
                f.op_id.map_or(String::new(), |id| id.to_string()),
                String::new(),
                format!("expected {}; saw {}", f.expected, f.seen),
                String::new(),
                String::new(),
            ],
        ));
    }
    events.sort_by_key(|(t, order, _)| (*t, *order));
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "t (s)", "event", "op", "worker", "value", "latency", "outcome",
    ]);
    for (_, _, cells) in events {
        table.add_row(cells);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{key}: {} operations, {} findings",
        ops.len(),
        findings.len()
    );
    let _ = writeln!(out, "{table}");
    Ok(out)
}

/// One line per run under `runs_dir`, newest first.
pub fn runs(runs_dir: &Path) -> Result<String, Error> {
    let entries = std::fs::read_dir(runs_dir)
        .map_err(|e| Error::Usage(format!("{}: cannot list runs ({e})", runs_dir.display())))?;
    let mut dirs: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("ledger.sqlite").is_file())
        .collect();
    dirs.sort();
    dirs.reverse();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "run",
        "profile",
        "seed",
        "operations",
        "findings",
        "verdict",
    ]);
    for dir in &dirs {
        let row = (|| -> Result<Vec<String>, LedgerError> {
            let l = LedgerReader::open(&dir.join("ledger.sqlite"))?;
            let verdict = match l.meta("verdict")? {
                Some(v) => serde_json::from_str::<crate::verdict::RunVerdict>(&v)
                    .map(|v| v.headline())
                    .unwrap_or(v),
                None if l.meta("finished_at")?.is_some() => "finished".into(),
                None => "did not finish".into(),
            };
            Ok(vec![
                dir.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                l.meta("profile")?.unwrap_or_default(),
                l.meta("seed")?.unwrap_or_default(),
                l.ops_total()?.to_string(),
                l.violations_total()?.to_string(),
                verdict,
            ])
        })();
        table.add_row(row.unwrap_or_else(|e| {
            vec![
                dir.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("unreadable: {e}"),
            ]
        }));
    }
    Ok(format!(
        "{table}\n({} runs in {})\n",
        dirs.len(),
        runs_dir.display()
    ))
}
