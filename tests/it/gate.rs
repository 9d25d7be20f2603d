//! Gates: every fault kind fired, confirmed, undone and recovered, the
//! post-mortem commands on the result, a failing gate's witness, and a
//! cluster that lost data.

use std::path::Path;
use std::process::Command;

use crate::support::*;

#[test]
fn gate_fires_every_fault_kind_confirms_undoes_and_recovers() {
    use faultline::faults::FaultKind;
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("gate-all-kinds");
    let stdout = run_passing(
        &[&["gate", "--seed", "4"][..], QUICK_FAULTS].concat(),
        &runs,
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let faults = fault_rows(&ledger);
    // Every kind a 3-node cluster can have (not a ring) once on the one
    // role, each confirmed, undone and recovered in that order, the next
    // one starting only after.
    let mut kinds: Vec<&str> = faults.iter().map(|f| f.0.as_str()).collect();
    kinds.sort();
    let mut all: Vec<&str> = FaultKind::all()
        .iter()
        .filter(|k| k.min_nodes() <= 3)
        .map(|k| k.as_str())
        .collect();
    all.sort();
    assert!(all.contains(&"partition-halves") && !all.contains(&"partition-ring"));
    assert_eq!(kinds, all, "{faults:#?}");
    // Each partition was confirmed by connect probes from every node's
    // address to every other's: its cut pairs timed out, the rest connected.
    for f in ledger
        .faults()
        .unwrap()
        .iter()
        .filter(|f| f.kind.starts_with("partition-"))
    {
        let p: serde_json::Value = serde_json::from_str(f.params.as_deref().unwrap()).unwrap();
        let cut = p["cut"].as_array().unwrap();
        assert!(!cut.is_empty(), "{}: {p}", f.kind);
        for (pair, seen) in p["probes"].as_object().unwrap() {
            let is_cut = cut.iter().any(|c| c == pair.as_str());
            assert_eq!(seen == "timedout", is_cut, "{} {pair}: {p}", f.kind);
        }
    }
    // Each degraded link or client path was confirmed: loss by its drop
    // counter, a relayed one by a probe of every path the relay accepted;
    // and the relay carried the store's own connections, or the workload's.
    for f in ledger
        .faults()
        .unwrap()
        .iter()
        .filter(|f| f.kind.starts_with("link-") || f.kind.starts_with("client-"))
    {
        let p: serde_json::Value = serde_json::from_str(f.params.as_deref().unwrap()).unwrap();
        if f.kind == "link-loss" {
            assert!(p["probes"]["dropped_packets"].as_u64() > Some(0), "{p}");
            assert!(p["dropped_packets_at_heal"].as_u64() > Some(0), "{p}");
            continue;
        }
        let probes = p["probes"].as_object().unwrap();
        assert_eq!(probes.len(), p["paths"].as_array().unwrap().len(), "{p}");
        assert!(probes.values().all(|v| v == "relayed"), "{}: {p}", f.kind);
        let relayed = &p["relayed"];
        assert!(
            relayed["connections"].as_u64() > Some(probes.len() as u64),
            "{}: {p}",
            f.kind
        );
        match f.kind.as_str() {
            "client-reset" => assert!(relayed["resets"].as_u64() > Some(0), "{p}"),
            "client-limit-data" => assert!(relayed["truncated"].as_u64() > Some(0), "{p}"),
            "client-blackhole" => assert_eq!(relayed["bytes_down"], 0, "{p}"),
            _ => assert!(relayed["bytes_down"].as_u64() > Some(0), "{}: {p}", f.kind),
        }
    }
    // What the client-path faults did to the workload, classified as
    // oracle.md section 1 says: a write sent and not answered is
    // ambiguous, a read so is unavailable, a truncated answer too; only
    // a request that never left, or a multipart upload cut off before its
    // complete request, is a failure.
    let outcomes = |kind: &str| -> Vec<(String, String, String)> {
        let sql = "SELECT o.kind, o.outcome, coalesce(o.error_class, '') FROM faults f \
                   JOIN ops o ON o.t_invoke_ns BETWEEN f.t_confirm_ns AND f.t_end_ns \
                   WHERE f.kind = ?1 AND o.outcome != 'ok'";
        let conn = ledger.connection();
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let is_write = |k: &str| ["put", "overwrite", "multipart", "delete"].contains(&k);
    for kind in ["client-blackhole", "client-reset", "client-limit-data"] {
        let seen = outcomes(kind);
        assert!(!seen.is_empty(), "{kind}: nothing failed");
        for (op, outcome, class) in &seen {
            let want: &[&str] = match (op.as_str(), class.as_str()) {
                (_, "not_sent") => &["fail"],
                // Cut off before its complete request: certainly no effect.
                ("multipart", _) => &["fail", "ambiguous"],
                (op, _) if is_write(op) => &["ambiguous"],
                _ => &["unavailable"],
            };
            assert!(
                want.contains(&outcome.as_str()),
                "{kind}: {op} {class} {outcome}"
            );
        }
    }
    assert!(
        outcomes("client-limit-data")
            .iter()
            .any(|(_, o, c)| o == "unavailable" && c == "truncated"),
        "no truncated read"
    );
    let mut previous_recovery = 0;
    for (kind, target, start, confirm, end, recovered, ms) in &faults {
        let (confirm, end, recovered) = (confirm.unwrap(), end.unwrap(), recovered.unwrap());
        assert!(
            previous_recovery <= *start && *start <= confirm && confirm <= end && end <= recovered,
            "{kind} on {target}: {start} {confirm} {end} {recovered}"
        );
        assert!(ms.unwrap() < 120_000, "{kind}: recovery {ms:?} ms");
        previous_recovery = recovered;
    }
    // The dead node was replaced by a spare, which serves from then on.
    let dead = faults.iter().find(|f| f.0 == "dead").unwrap();
    assert!(dead.1.contains(", replaced by n"), "{}", dead.1);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("cluster.json")).unwrap()).unwrap();
    let nodes = state["nodes"].as_array().unwrap();
    assert_eq!(nodes.iter().filter(|n| n["retired"] == true).count(), 1);
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n["spare"] == false && n["retired"] == false)
            .count(),
        3
    );
    // Every acknowledged object survived: the final verification read
    // every key back in full, byte for byte (sha256), and found nothing.
    let verdict = verify_matches_online_check(&run.join("ledger.sqlite"));
    assert!(
        verdict.coverage.final_reads_checked >= 2 * 24 * 40,
        "{:?}",
        verdict.coverage
    );
    assert_eq!(
        ledger.meta("verdict").unwrap().as_deref(),
        Some(r#"{"verdict":"pass"}"#)
    );
    assert_postmortem_works(&run, &runs, &faults);
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

/// The artifacts of a passed gate, and every post-mortem command on it.
fn assert_postmortem_works(run: &Path, runs: &Path, faults: &[FaultRow]) {
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("**Verdict: PASS**"), "{md}");
    assert!(md.contains("## Faults") && md.contains("| dead |"), "{md}");
    assert!(
        md.trim_end().ends_with("```"),
        "the report ends with the command to reproduce"
    );
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3);
    let junit = std::fs::read_to_string(run.join("junit.xml")).unwrap();
    // Correctness, coverage, one case per fault, and one per tolerance rule
    // that absorbed anything (how many did depends on the run).
    let cases = junit.matches("<testcase ").count();
    let rules = junit
        .matches(r#"classname="faultline.known-deviations""#)
        .count();
    assert_eq!(cases, 2 + faults.len() + rules, "{junit}");
    assert!(
        junit.contains(&format!(
            r#"<testsuites name="faultline" tests="{cases}" failures="0">"#
        )),
        "{junit}"
    );
    let jsonl = std::fs::read_to_string(run.join("runner.log.jsonl")).unwrap();
    assert!(
        jsonl.lines().any(|l| l.contains("\"recovered\"")),
        "no recovery in the runner log"
    );
    for l in jsonl.lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    // Node metrics around every fault.
    let snapshots: Vec<String> = std::fs::read_dir(run.join("metrics"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for i in 1..=faults.len() {
        for when in ["before", "recovered"] {
            let name = format!("fault-{i:03}-{when}");
            assert!(snapshots.contains(&name), "no {name} in {snapshots:?}");
        }
    }
    let r = run.to_str().unwrap();
    let rendered = faultline_ok(&["report", r]);
    assert!(rendered.starts_with("verdict: PASS"), "{rendered}");
    let json = faultline_ok(&["query", r, "--preset", "faults", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), faults.len());
    assert!(
        rows.iter().all(|f| f["recovery_ms"].as_str().is_some()),
        "{json}"
    );
    let csv = faultline_ok(&[
        "query",
        r,
        "SELECT kind, count(*) AS n FROM ops GROUP BY kind",
        "--csv",
    ]);
    assert!(csv.starts_with("kind,n\n"), "{csv}");
    let table = faultline_ok(&["query", r, "--preset", "availability"]);
    assert!(table.contains("ok_percent"), "{table}");
    // A key the dead node's replacement moved is explained with the faults.
    let ledger = faultline::ledger::LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let key: String = ledger
        .connection()
        .query_row(
            "SELECT key FROM ops WHERE kind = 'overwrite' AND outcome = 'ok' ORDER BY id LIMIT 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let timeline = faultline_ok(&["explain", r, "--key", &key]);
    assert!(timeline.contains("overwrite (worker)"), "{timeline}");
    assert!(timeline.contains("fault #"), "{timeline}");
    let listed = faultline_ok(&["runs", "--runs-dir", runs.to_str().unwrap()]);
    assert!(
        listed.contains("PASS") && listed.contains("garage-3"),
        "{listed}"
    );
}

#[test]
fn a_gate_through_the_mutating_proxy_fails_with_the_witness_in_its_report() {
    let runs = runs_dir("gate-inject");
    let out = Command::new(BIN)
        .args([
            "gate",
            "--seed",
            "9",
            "--faults",
            "kill-start",
            "--inject",
            "flipped-byte",
            "--runs-dir",
        ])
        .arg(&runs)
        .current_dir(repo(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("verdict: FAIL: 1 findings"), "{stdout}");
    let run = only_run_dir(&runs);
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("### 1. corruption on `faultline/"), "{md}");
    assert!(md.contains("- seen: bytes matching no generation"), "{md}");
    assert!(md.contains("| write op | generation |"), "{md}");
    let junit = std::fs::read_to_string(run.join("junit.xml")).unwrap();
    assert!(
        junit.contains(r#"<failure message="1 findings">corruption on"#),
        "{junit}"
    );
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

#[test]
fn a_cluster_that_lost_data_ends_with_unrecoverable_findings_beside_the_infrastructure_failure() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("lost-data");
    // Replication factor 1: a dead node's data is gone, its replacement
    // can never sync the old layout version, and the gate never passes.
    let profile = std::fs::read_to_string(repo("configs/garage-3.toml"))
        .unwrap()
        .replace("name = \"garage-3\"", "name = \"garage-rf1\"")
        .replace("replication_factor = 3", "replication_factor = 1")
        .replace("recovery_ms = 900000", "recovery_ms = 10000")
        .replace("[s3]", "[workload]\nfinal_retry_ms = 10000\n\n[s3]");
    let path = runs_dir("lost-data-profile").join("garage-rf1.toml");
    std::fs::write(&path, profile).unwrap();
    let out = Command::new(BIN)
        .args(["gate", "--profile", path.to_str().unwrap(), "--seed", "5"])
        .args(["--faults", "dead", "--fault-every", "10s", "--workers", "8"])
        // Few writes: keys written before the fault stay unwritten after it.
        .args(["--mix", "write=5,delete=1,get=30,head=30,range=20,list=15"])
        .args(["--runs-dir", runs.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("findings; also INFRASTRUCTURE FAILURE: after fault #1 dead on n3: cluster not recovered"),
        "{stdout}"
    );
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let lost: Vec<String> = ledger
        .findings()
        .unwrap()
        .into_iter()
        .filter(|f| f.class == "unrecoverable")
        .filter_map(|f| f.key)
        .collect();
    assert!(!lost.is_empty(), "{stdout}");
    for key in &lost {
        // Retried through the other endpoints before it was called lost.
        let attempts = ledger
            .count(&format!(
                "SELECT count(*) FROM ops WHERE origin = 'final' AND key = '{key}' AND outcome != 'ok'"
            ))
            .unwrap();
        assert!(attempts >= 3, "{key}: {attempts} attempts");
    }
    let junit = std::fs::read_to_string(run.join("junit.xml")).unwrap();
    assert!(junit.contains("unrecoverable on"), "{junit}");
    assert!(junit.contains("infrastructure failure"), "{junit}");
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}
