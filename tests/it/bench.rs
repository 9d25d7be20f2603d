//! The benchmarks run end to end and their ledgers verify clean.

use std::process::Command;

use crate::support::*;

#[test]
fn the_synthetic_benchmarks_run_and_their_ledger_verifies_clean() {
    let dir = runs_dir("bench-synthetic");
    let ledger = dir.join("bench.sqlite");
    let l = ledger.to_str().unwrap();
    let out = faultline_ok(&[
        "bench", "ledger", "--ops", "20000", "--keys", "500", "--path", l,
    ]);
    assert!(out.contains("20000 operations"), "{out}");
    // The generated history is a correct store: the offline check of the
    // ledger the writer produced finds nothing, and reads every operation.
    let out = faultline_ok(&["verify", l]);
    assert!(out.contains("verdict: pass"), "{out}");
    let reader = faultline::ledger::LedgerReader::open(&ledger).unwrap();
    assert_eq!(reader.count("SELECT count(*) FROM ops").unwrap(), 20000);
    // The writer built its indexes when it finished.
    assert_eq!(
        reader
            .count(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'ops_by_%'"
            )
            .unwrap(),
        2
    );
    // A reader that goes away (`| head`) ends the query quietly.
    let mut child = Command::new(BIN)
        .args(["query", l, "SELECT * FROM ops", "--csv"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("id,"), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = faultline_ok(&["bench", "oracle", "--ops", "20000", "--keys", "500"]);
    assert!(out.contains("0 findings"), "{out}");
}

#[test]
fn bench_runner_brackets_each_full_phase_with_raw_ones_and_its_ledgers_verify() {
    let runs = runs_dir("bench-runner");
    let r = runs.to_str().unwrap();
    let out = faultline_ok(&[
        "bench",
        "runner",
        "--phase",
        "3s",
        "--rounds",
        "2",
        "--seed",
        "4",
        "--runs-dir",
        r,
    ]);
    // raw, full, raw, full, raw: each full phase judged against its two
    // raw neighbours, and the recording threads' own CPU reported.
    for line in [
        "phase  0 raw",
        "phase  1 full",
        "phase  2 raw",
        "phase  3 full",
        "phase  4 raw",
        "full phase  1 against the raw phases either side",
        "full phase  3 against the raw phases either side",
        "median of 2 full phases",
        "the ledger writer's thread used",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(!out.contains("phase  5"), "{out}");
    // A full phase is a real recorded run: its ledger re-checks clean with
    // every operation read, and the objects table was written.
    let run = only_run_dir(&runs);
    for phase in [1, 3] {
        let ledger = run.join(format!("bench-{phase}-full.sqlite"));
        let out = faultline_ok(&["verify", ledger.to_str().unwrap()]);
        assert!(out.contains("verdict: pass"), "{out}");
        let reader = faultline::ledger::LedgerReader::open(&ledger).unwrap();
        assert!(reader.count("SELECT count(*) FROM ops").unwrap() > 100);
        assert!(reader.count("SELECT count(*) FROM objects").unwrap() > 0);
    }
    assert!(!run.join("bench-0-raw.sqlite").exists());
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
    drop_node_data(&run);
}
