//! Reports from a small hand-made ledger with fixed facts: `report.md` and
//! the outline of `report.html` are snapshots (`insta`), JUnit is checked
//! by what CI systems read of it.

use super::*;
use crate::history::{FaultRecord, OpRecord};
use crate::history::{OpKind, Origin, Outcome};
use crate::ledger::{Ledger, Record};

const S: u64 = 1_000_000_000;

/// A finished run of 30 s with one fault, one stale read and one known
/// deviation.
fn ledger(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("ledger.sqlite");
    let (ledger, writer) = Ledger::create(&path, None, None).unwrap();
    let meta = [
        ("seed", "4"),
        ("profile", "garage-3"),
        ("store_version", "2.5.0"),
        ("tool_version", "0.1.0"),
        ("started_at", "2026-11-22T10:00:00Z"),
        ("finished_at", "2026-11-22T10:00:40Z"),
        (
            "oracle",
            r#"{"contract":"read-after-write","workers":2,"read_span_max_ns":1,"tolerate":[{"class":"list-ghost","within_ms":2000,"reason":"a known LIST deviation"},{"class":"metadata-mismatch","within_ms":"none","reason":"another"}]}"#,
        ),
        (
            "reproduce",
            "faultline gate --profile configs/garage-3.toml --seed 4",
        ),
    ];
    for (k, v) in meta {
        ledger
            .send(Record::Meta {
                key: k.into(),
                value: v.into(),
            })
            .unwrap();
    }
    for i in 0..300u64 {
        let kind = OpKind::ALL[(i % 8) as usize];
        let outcome = if (100..130).contains(&i) && i % 3 == 0 {
            kind.uncertain()
        } else {
            Outcome::Ok
        };
        let op = OpRecord {
            worker: (i % 2) as u32,
            origin: Origin::Worker,
            key: Some(format!("run/k{}", i % 5)),
            generation: Some(i),
            t_invoke_ns: i * S / 10,
            t_return_ns: i * S / 10 + (i % 7 + 1) * 1_000_000,
            ..OpRecord::new(kind, None, outcome)
        };
        ledger.send(Record::Op(Box::new(op))).unwrap();
    }
    ledger
        .send(Record::Fault(Box::new(FaultRecord {
            id: 1,
            kind: "kill-start".into(),
            target: "n2".into(),
            t_start_ns: 10 * S,
            t_confirm_ns: Some(10 * S),
            t_end_ns: Some(13 * S),
            t_recovered_ns: Some(15 * S),
            recovery_ms: Some(2_000),
            gate: None,
            params: None,
        })))
        .unwrap();
    let witness = serde_json::json!({
        "read": {"op_id": 120, "t_invoke_ns": 12 * S, "t_return_ns": 12 * S + 5_000_000},
        "writes": [
            {"op_id": 100, "generation": 2, "deleted": false, "size": 20,
             "t_invoke_ns": 10 * S, "t_return_ns": 10 * S + 1_000_000, "outcome": "ok"},
            {"op_id": 90, "generation": 1, "deleted": false, "size": 10,
             "t_invoke_ns": 9 * S, "t_return_ns": 9 * S + 1_000_000, "outcome": "ok"},
        ],
        "fault": {"id": 1, "kind": "kill-start", "target": "n2", "t_start_ns": 10 * S,
                  "t_end_ns": 13 * S, "t_recovered_ns": 15 * S},
    });
    for (class, known) in [
        ("stale-read", None),
        ("list-ghost", Some("a known LIST deviation")),
    ] {
        ledger
            .send(Record::Finding(Box::new(FindingRecord {
                class: class.into(),
                key: Some("run/k0".into()),
                op_id: Some(120),
                fault_id: Some(1),
                t_ns: 12 * S + 5_000_000,
                expected: "g2 (20 bytes)".into(),
                seen: "g1 (10 bytes) (10 bytes, metadata generation g1)".into(),
                witness: witness.to_string(),
                known: known.map(str::to_string),
                rule: known.map(|_| 0),
                since_ack_ns: Some(300_000_000),
                final_read: false,
            })))
            .unwrap();
    }
    drop(ledger);
    writer.finish().unwrap();
    crate::ledger::set_meta(&path, "verdict", r#"{"verdict":"findings","count":1}"#).unwrap();
    let coverage = crate::oracle::Coverage {
        reads_checked: 150,
        final_reads_checked: 20,
        list_pages_checked: 37,
        list_keys_checked: 120,
        writes_acked: 140,
        ..Default::default()
    };
    crate::ledger::set_meta(
        &path,
        "coverage",
        &serde_json::to_string(&coverage).unwrap(),
    )
    .unwrap();
    path
}

fn report() -> Report {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("20261122T100000Z-4");
    std::fs::create_dir_all(&run).unwrap();
    Report::load(&ledger(&run)).unwrap()
}

#[test]
fn the_markdown_report_puts_the_verdict_first_and_shows_each_witness() {
    let md = report().markdown();
    assert!(
        md.lines()
            .nth(2)
            .unwrap()
            .starts_with("**Verdict: FAIL: 1 findings**")
    );
    insta::assert_snapshot!(md);
}

/// The element outline of a page: tag names, nested, without the inside
/// of the plots (their exact drawing is plotters').
fn outline(html: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut in_svg = 0usize;
    for tag in html.split('<').skip(1) {
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '/' || *c == '!')
            .collect();
        let void = matches!(name.as_str(), "meta" | "!DOCTYPE") || tag.contains("/>");
        if let Some(closing) = name.strip_prefix('/') {
            depth = depth.saturating_sub(1);
            if closing == "svg" {
                in_svg -= 1;
            }
            continue;
        }
        if in_svg == 0 && !matches!(name.as_str(), "td" | "tr" | "li") {
            out.push_str(&format!("{}{name}\n", "  ".repeat(depth)));
        }
        if name == "svg" {
            in_svg += 1;
        }
        if !void {
            depth += 1;
        }
    }
    out
}

#[test]
fn the_html_report_has_every_section_and_three_plots() {
    let html = report().html();
    assert_eq!(html.matches("<svg").count(), 3, "{html}");
    assert!(html.contains("Verdict: FAIL: 1 findings"));
    insta::assert_snapshot!(outline(&html));
}

#[test]
fn junit_fails_correctness_and_passes_the_recovered_fault() {
    let xml = report().junit();
    assert!(
        xml.contains(r#"<testsuites name="faultline" tests="4" failures="1">"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase classname="faultline.known-deviations" name="rule #1 list-ghost (within 2.0 s): 1 absorbed, the latest 300 ms after its deciding write" time="0.000"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure message="1 findings">stale-read on run/k0 (op 120)"#),
        "{xml}"
    );
    assert!(
        xml.contains(
            r##"<testcase classname="faultline.faults" name="#1 kill-start on n2" time="2.000"/>"##
        ),
        "{xml}"
    );
    assert!(xml.contains(r#"name="everything planned was exercised" time="0.000"/>"#));
}

#[test]
fn a_run_cut_short_reports_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite");
    let (ledger, writer) = Ledger::create(&path, None, None).unwrap();
    drop(ledger);
    writer.finish().unwrap();
    let r = Report::load(&path).unwrap();
    assert!(r.headline().starts_with("UNKNOWN"), "{}", r.headline());
    assert!(r.junit().contains("the run did not finish"));
}
