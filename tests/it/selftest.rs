//! The self-test: every planted bug caught and named, a clean run passes,
//! and a tolerance that would absorb a planted bug fails it.

use std::process::Command;

use crate::support::*;

#[test]
fn selftest_catches_and_names_every_injected_bug_and_passes_a_clean_run_under_faults() {
    use faultline::ledger::LedgerReader;
    use faultline::selftest::proxy::Mutation;
    let runs = runs_dir("selftest");
    let stdout = run_passing(
        &[&["selftest", "--seed", "8"][..], QUICK_FAULTS].concat(),
        &runs,
    );
    assert!(stdout.contains("selftest: PASS"), "{stdout}");
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let outcome: serde_json::Value =
        serde_json::from_str(&ledger.meta("selftest").unwrap().unwrap()).unwrap();
    let caught = outcome["caught"].as_array().unwrap();
    let injected: Vec<&str> = caught
        .iter()
        .map(|c| c["mutation"].as_str().unwrap())
        .collect();
    let all: Vec<&str> = Mutation::ALL.iter().map(|m| m.as_str()).collect();
    assert_eq!(injected, all);
    for c in caught {
        assert_eq!(c["caught"], true, "{c}");
        assert!(c["detection_ms"].as_u64().unwrap() < 30_000, "{c}");
        // The online check wrote the finding, with its witness, at once,
        // and no tolerance absorbed it: it fails a run.
        let key = c["key"].as_str().unwrap();
        let class = c["expected"].as_str().unwrap();
        let recorded = ledger
            .count(&format!(
                "SELECT count(*) FROM findings WHERE key = '{key}' AND class = '{class}'
                 AND json_extract(witness, '$.read.op_id') = op_id AND known IS NULL"
            ))
            .unwrap();
        assert!(recorded > 0, "no failing {class} finding recorded on {key}");
    }
    assert_eq!(outcome["unexpected"], serde_json::json!([]));
    // The clean phase ran its three faults, each recovered.
    let faults = fault_rows(&ledger);
    assert_eq!(faults.len(), 3, "{faults:?}");
    assert!(faults.iter().all(|f| f.5.is_some()), "{faults:?}");
    let v = faultline::run::verify(&run.join("ledger.sqlite")).unwrap();
    assert!(v.agrees_with_online());
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

#[test]
fn selftest_fails_a_profile_whose_tolerance_would_absorb_a_planted_bug() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("selftest-absorbing");
    // The first rule tolerates a deleted key on LIST pages for good.
    let profile = std::fs::read_to_string(repo("configs/garage-3.toml"))
        .unwrap()
        .replacen("within_ms = 10000", "within_ms = \"none\"", 1);
    let path = runs_dir("selftest-absorbing-profile").join("absorbing.toml");
    std::fs::write(&path, profile).unwrap();
    let out = Command::new(BIN)
        .args([
            "selftest",
            "--profile",
            path.to_str().unwrap(),
            "--seed",
            "8",
        ])
        .args(["--faults", "none", "--runs-dir", runs.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("selftest: FAIL"), "{stdout}");
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let outcome: serde_json::Value =
        serde_json::from_str(&ledger.meta("selftest").unwrap().unwrap()).unwrap();
    let caught = outcome["caught"].as_array().unwrap();
    let ghost = caught
        .iter()
        .find(|c| c["mutation"] == "list-entry-added")
        .unwrap();
    assert_eq!(ghost["caught"], false, "{ghost}");
    assert!(ghost["absorbed"].as_u64().unwrap() > 0, "{ghost}");
    assert!(
        ghost["detail"]
            .as_str()
            .unwrap()
            .contains("absorbed by a tolerance of the profile"),
        "{ghost}"
    );
    // The rest are caught as usual.
    let others = caught
        .iter()
        .filter(|c| c["mutation"] != "list-entry-added");
    assert!(others.clone().count() >= 9);
    for c in others {
        assert_eq!(c["caught"], true, "{c}");
    }
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}
