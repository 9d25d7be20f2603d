//! Bad input: every command rejects bad arguments and profiles with exit
//! 2 and a message naming what was expected, before starting anything.

use std::process::Command;

use crate::support::*;

/// Runs `faultline up` with bad input; it must fail fast with exit 2 and a
/// message containing every `expected` fragment, leaving nothing running.
fn check_bad_input(name: &str, extra: &[&str], expected: &[&str]) {
    let runs = runs_dir(name);
    let mut args = vec!["up", "--runs-dir", runs.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, stderr) = faultline(&args);
    assert_eq!(code, 2, "{name}: exit code; stderr:\n{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{name}: {e:?} not in stderr:\n{stderr}");
    }
    assert_eq!(
        live_processes_of(&runs),
        Vec::<u32>::new(),
        "{name}: left processes behind"
    );
}

#[test]
fn bad_input_fails_clearly_with_exit_2_and_leaves_nothing_running() {
    let dir = runs_dir("bad-input-profiles");
    let typo = dir.join("typo.toml");
    let text = std::fs::read_to_string(repo("configs/garage-3.toml")).unwrap();
    std::fs::write(&typo, text.replace("spares = 2", "spare_nodes = 2")).unwrap();
    check_bad_input(
        "unknown-key",
        &["--profile", typo.to_str().unwrap()],
        &[
            typo.to_str().unwrap(),
            "unknown field `spare_nodes`",
            "expected one of",
        ],
    );
    check_bad_input(
        "missing-binary",
        &["--garage-bin", "/nonexistent/garage"],
        &["--garage-bin /nonexistent/garage: no executable file there"],
    );
    let holder = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let port_s = port.to_string();
    check_bad_input(
        "port-in-use",
        &["--port-base", &port_s],
        &[&format!("port {port} (s3 of node n1) is already in use")],
    );
    check_bad_input(
        "remote-endpoint",
        &["--s3-endpoint", "http://192.0.2.10:9000"],
        &["192.0.2.10 is not a loopback address", "--allow-remote"],
    );
    check_bad_input(
        "missing-profile",
        &["--profile", "configs/nope.toml"],
        &["cannot read profile configs/nope.toml"],
    );
}

#[test]
fn every_command_rejects_bad_input_with_exit_2() {
    use faultline::ledger::{Ledger, Record};
    let dir = runs_dir("bad-input-commands");
    // Profiles whose clusters cannot have a partition shape: two nodes
    // cannot split into halves, three cannot form a ring.
    let garage3 = std::fs::read_to_string(repo("configs/garage-3.toml")).unwrap();
    let two = dir.join("two-nodes.toml");
    std::fs::write(
        &two,
        garage3
            .replace("nodes = 3", "nodes = 2")
            .replace("replication_factor = 3", "replication_factor = 2"),
    )
    .unwrap();
    let two = two.to_str().unwrap();
    let ring3 = dir.join("ring-on-three.toml");
    std::fs::write(
        &ring3,
        format!("{garage3}\n[faults]\nkinds = [\"partition-ring\"]\n"),
    )
    .unwrap();
    let ring3 = ring3.to_str().unwrap();
    // A small finished ledger to point the post-mortem commands at.
    let run = dir.join("20260101T000000Z-1");
    std::fs::create_dir_all(&run).unwrap();
    let (ledger, writer) = Ledger::create(&run.join("ledger.sqlite"), None, None).unwrap();
    ledger
        .send(Record::Meta {
            key: "seed".into(),
            value: "1".into(),
        })
        .unwrap();
    drop(ledger);
    writer.finish().unwrap();
    let r = run.to_str().unwrap();
    let missing = dir.join("nothing-here");
    let m = missing.to_str().unwrap();
    let existing = run.join("ledger.sqlite");
    let e = existing.to_str().unwrap();
    for (args, expected) in [
        (vec!["report", m], "no ledger there"),
        (vec!["verify", m], "no ledger there"),
        (vec!["query", m, "SELECT 1"], "no ledger there"),
        (vec!["query", r, "SELECT nonsense FROM nowhere"], "query:"),
        (vec!["query", r, "DELETE FROM ops"], "query:"),
        (vec!["query", r], "<SQL>"),
        (vec!["query", r, "--preset", "everything"], "invalid value"),
        (
            vec!["explain", r, "--key", "no/such/key"],
            "no operation on key",
        ),
        (vec!["explain", r], "--key"),
        (vec!["runs", "--runs-dir", m], "cannot list runs"),
        (vec!["gate", "--inject", "explode"], "unknown bug"),
        (vec!["gate", "--min-availability", "2"], "not a fraction"),
        (vec!["gate", "--faults", "none"], "nothing to gate"),
        (vec!["soak", "--faults", "explode"], "unknown fault kind"),
        (
            vec!["gate", "--faults", "kill-start,partition-ring"],
            "--faults: partition-ring needs at least 4 nodes in service, the cluster has 3",
        ),
        (
            vec!["gate", "--profile", two, "--faults", "partition-halves"],
            "partition-halves needs at least 3 nodes in service, the cluster has 2",
        ),
        (
            vec!["soak", "--profile", ring3],
            "key `faults.kinds`: expected kinds this cluster can have, found partition-ring needs at least 4",
        ),
        (
            vec!["selftest", "--faults", "kill-start,explode"],
            "unknown fault kind",
        ),
        (
            vec!["bench", "ledger", "--ops", "10", "--path", e],
            "exists",
        ),
        (vec!["bench", "oracle", "--ops", "0"], "at least 1"),
        (vec!["bench", "runner", "--rounds", "0"], "at least 1"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .current_dir(repo(""))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(live_processes_of(&dir), Vec::<u32>::new());
}

#[test]
fn soak_rejects_bad_workload_arguments_with_exit_2() {
    for (args, expected) in [
        (vec!["--workers", "0"], "--workers must be at least 1"),
        (vec!["--mix", "writes=3"], "unknown class \"writes\""),
        (
            vec!["--duration", "soon"],
            "invalid value 'soon' for '--duration",
        ),
        (
            vec!["--retention", "sometimes"],
            "invalid value 'sometimes' for '--retention",
        ),
    ] {
        let runs = runs_dir("soak-bad-args");
        let mut all = vec!["soak", "--runs-dir", runs.to_str().unwrap()];
        all.extend(args);
        let (code, stderr) = faultline(&all);
        assert_eq!(code, 2, "{all:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{all:?}: {expected:?} not in {stderr}"
        );
        assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
    }
}

/// Without CAP_NET_ADMIN (here: the unprivileged user `nobody`), naming a
/// network fault is refused before anything starts, with what to do.
#[test]
fn network_faults_without_privileges_are_refused_with_exit_2() {
    use std::os::unix::process::CommandExt;
    let runs = runs_dir("bad-input-unprivileged");
    for kinds in ["partition-node,kill-start", "client-reset", "link-latency"] {
        let out = Command::new(BIN)
            .args(["gate", "--faults", kinds, "--runs-dir"])
            .arg(runs.join("nobody"))
            .current_dir(repo(""))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{kinds}: {stderr}");
        assert!(
            stderr.contains("needs CAP_NET_ADMIN") && stderr.contains("run faultline as root"),
            "{kinds}: {stderr}"
        );
        assert!(!runs.join("nobody").exists(), "{kinds}: a run started");
    }
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}
