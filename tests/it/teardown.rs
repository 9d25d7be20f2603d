//! The runner's own death and signals: SIGKILL, Ctrl-C and SIGTERM at any
//! point leave no node running or stopped, and a ledger readable.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Starts `faultline up`, waits for its ready line, returns the child and
/// the run directory it printed.
fn spawn_up(runs: &Path) -> (Child, PathBuf) {
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--profile",
            "configs/garage-3.toml",
            "--seed",
            "7",
            "--runs-dir",
        ])
        .arg(runs)
        .current_dir(repo(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut run_dir = None;
    let mut ready = false;
    // Bounded: `up` prints a dozen lines once ready, or exits on failure.
    for line in lines.by_ref().take(40) {
        let line = line.unwrap();
        if line.contains(" ready in ") {
            ready = true;
        }
        if let Some(dir) = line.trim().strip_prefix("run directory") {
            run_dir = Some(PathBuf::from(dir.trim()));
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert!(ready, "faultline up never printed its ready line");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, run_dir.expect("up prints the run directory"))
}

fn node_pids(run_dir: &Path) -> Vec<u32> {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("cluster.json")).unwrap())
            .unwrap();
    state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["pid"].as_u64().map(|p| p as u32))
        .collect()
}

#[test]
fn sigkilled_runner_takes_every_node_down_within_5s() {
    let runs = runs_dir("runner-sigkill");
    let (mut child, run_dir) = spawn_up(&runs);
    let pids = node_pids(&run_dir);
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| !is_gone(*p)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_bounded(&mut child, Duration::from_secs(5));
    assert_all_gone_within(&pids, Duration::from_secs(5));
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

#[test]
fn ctrl_c_tears_the_cluster_down_and_exits_0() {
    let runs = runs_dir("ctrl-c");
    let (mut child, run_dir) = spawn_up(&runs);
    let pids = node_pids(&run_dir);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_all_gone_within(&pids, Duration::from_secs(1));
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

#[test]
fn a_ledger_reopens_after_the_runner_is_sigkilled_mid_run() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("soak-sigkill");
    let mut guard = spawn_run(
        &["soak", "--duration", "10m", "--workers", "6", "--seed", "9"],
        &runs,
        Stdio::null(),
    );
    // Wait (bounded) until operations are being committed.
    let ledger_path = until_ledger_shows(
        &runs,
        Duration::from_secs(60),
        "200 committed operations",
        |run, l| {
            let committed = l.count("SELECT count(*) FROM ops").ok();
            committed
                .is_some_and(|n| n > 200)
                .then(|| run.join("ledger.sqlite"))
        },
    );
    let pids = node_pids(ledger_path.parent().unwrap());
    let mut child = guard.0.take().expect("the guard holds the child");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_bounded(&mut child, Duration::from_secs(5));
    assert_all_gone_within(&pids, Duration::from_secs(5));
    let ledger = LedgerReader::open(&ledger_path).unwrap();
    let check: String = ledger
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let ops = ledger.ops().unwrap();
    assert!(ops.len() > 200, "{} ops", ops.len());
    assert!(ops.iter().all(|o| o.t_return_ns >= o.t_invoke_ns));
    // A killed runner's ledger verifies without false findings.
    assert_eq!(ledger.meta("finished_at").unwrap(), None);
    verify_matches_online_check(&ledger_path);
    drop_node_data(ledger_path.parent().unwrap());
}

/// Starts a gate of one long stop-start and waits (bounded) until the
/// ledger shows the node stopped; returns the runner, the run directory
/// and the stopped node's PID.
fn start_stop_start_gate(runs: &Path) -> (Child, PathBuf, u32) {
    let mut guard = spawn_run(
        &[
            "gate",
            "--seed",
            "6",
            "--faults",
            "stop-start",
            "--fault-every",
            "2s",
            "--stop-hold",
            "120s",
            "--workers",
            "4",
        ],
        runs,
        Stdio::null(),
    );
    let (run, pid) = until_ledger_shows(
        runs,
        Duration::from_secs(90),
        "a confirmed stop-start",
        |run, ledger| {
            // The schema is in place once the ledger opens (its version is set last).
            let faults = ledger.faults().unwrap();
            let f = faults
                .iter()
                .find(|f| f.t_confirm_ns.is_some() && f.t_end_ns.is_none())?;
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run.join("cluster.json")).unwrap())
                    .unwrap();
            let pid = state["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == f.target.as_str())
                .and_then(|n| n["pid"].as_u64())
                .unwrap() as u32;
            assert_eq!(
                faultline::cluster::supervisor::proc_state_letter(pid),
                Some('T'),
                "{} should be stopped",
                f.target
            );
            Some((run.to_path_buf(), pid))
        },
    );
    let child = guard.0.take().expect("the guard holds the child");
    (child, run, pid)
}

#[test]
fn sigkilled_runner_leaves_no_node_stopped_or_running_mid_stop_start() {
    let runs = runs_dir("sigkill-mid-stop-start");
    let (mut child, run, _) = start_stop_start_gate(&runs);
    let pids = node_pids(&run);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_bounded(&mut child, Duration::from_secs(5));
    // The stopped node too: SIGKILL ends a stopped process.
    assert_all_gone_within(&pids, Duration::from_secs(5));
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
    drop_node_data(&run);
}

#[test]
fn sigterm_mid_stop_start_heals_verifies_and_exits() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("sigterm-mid-stop-start");
    let (mut child, run, stopped) = start_stop_start_gate(&runs);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The hold is cut short: SIGCONT at once, well before its 120 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while faultline::cluster::supervisor::proc_state_letter(stopped) == Some('T') {
        assert!(
            Instant::now() < deadline,
            "the stopped node was not resumed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then recovery, final verification and teardown; a gate cut short is
    // a coverage gap.
    let status = wait_bounded(&mut child, Duration::from_secs(240));
    assert_eq!(status.code(), Some(4));
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let faults = fault_rows(&ledger);
    assert_eq!(faults.len(), 1);
    assert!(faults[0].4.is_some() && faults[0].5.is_some(), "{faults:?}");
    let verdict = run_verdict(&ledger);
    assert_eq!(verdict["verdict"], "coverage-gap", "{verdict}");
    assert!(final_ops(&ledger) > 0);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
    drop_node_data(&run);
}
