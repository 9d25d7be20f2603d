//! What the integration tests share: the binary's path, run directories
//! per test, running `faultline` with bounded waits, process checks that
//! find a run's processes by its run directory (never by name), fault rows
//! and verdicts read from a ledger, and a child killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultline::cluster::RUN_DIR_ENV;

pub const BIN: &str = env!("CARGO_BIN_EXE_faultline");

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A fresh runs directory under the target dir, kept after the test so a
/// failure's node logs and commands.log can be read.
pub fn runs_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("test-runs")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Processes (not zombies) whose environment marks them as started by a
/// run under `runs`. Found by the run directory faultline puts in every
/// child's environment, never by process name.
pub fn live_processes_of(runs: &Path) -> Vec<u32> {
    let marker = format!("{RUN_DIR_ENV}={}", runs.canonicalize().unwrap().display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let marked = environ
            .split(|b| *b == 0)
            .any(|kv| String::from_utf8_lossy(kv).starts_with(&marker));
        if marked && !is_gone(pid) {
            found.push(pid);
        }
    }
    found
}

/// True if `pid` no longer runs: absent, or a zombie waiting to be reaped.
pub fn is_gone(pid: u32) -> bool {
    matches!(
        faultline::cluster::supervisor::proc_state_letter(pid),
        None | Some('Z') | Some('X')
    )
}

pub fn assert_all_gone_within(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| !is_gone(*p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still alive after {limit:?}: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `faultline ARGS` to completion; returns (exit code, stderr).
pub fn faultline(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for a child of this test to exit; SIGKILLs it (and fails) at `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("faultline did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Re-checks a run's ledger offline and holds it to what the online check
/// recorded: the same findings (class and op), every one of them a known
/// deviation the profile tolerates (see configs/garage-3.toml), and enough
/// reads and LIST pages checked to mean something.
///
/// Returns the verdict for further checks.
pub fn verify_matches_online_check(ledger_path: &Path) -> faultline::online::Judged {
    let v = faultline::run::verify(ledger_path).unwrap();
    assert!(
        v.judged.violations.is_empty(),
        "unexpected findings: {:#?}",
        v.judged.violations
    );
    if v.info.complete {
        assert!(
            v.agrees_with_online(),
            "offline and online checks disagree: {:#?} vs {:#?}",
            v.findings,
            v.recorded
        );
        assert!(
            v.recorded.iter().all(|f| f.known.is_some()),
            "{:#?}",
            v.recorded
        );
    }
    assert!(
        v.judged.coverage.reads_checked > 100,
        "{:?}",
        v.judged.coverage
    );
    assert!(
        v.judged.coverage.list_pages_checked > 10,
        "{:?}",
        v.judged.coverage
    );
    v.judged
}

/// Runs `faultline ARGS --runs-dir RUNS` to completion and requires exit 0
/// and, as its last line, the command that reproduces the run; returns
/// its standard output.
pub fn run_passing(args: &[&str], runs: &Path) -> String {
    let runs = runs.to_str().unwrap();
    let stdout = faultline_ok(&[args, &["--runs-dir", runs]].concat());
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("reproduce: faultline {} ", args[0])),
        "{stdout}"
    );
    stdout
}

/// The run directory a CLI run created under `runs` (there is one).
pub fn only_run_dir(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// The run's verdict as the ledger records it.
pub fn run_verdict(ledger: &faultline::ledger::LedgerReader) -> serde_json::Value {
    serde_json::from_str(&ledger.meta("verdict").unwrap().unwrap()).unwrap()
}

/// Operations of the final verification in the ledger.
pub fn final_ops(ledger: &faultline::ledger::LedgerReader) -> i64 {
    ledger
        .count("SELECT count(*) FROM ops WHERE origin = 'final'")
        .unwrap()
}

/// Frees the disk a passed test's nodes used; the ledger and logs stay.
pub fn drop_node_data(run_dir: &Path) {
    for node in std::fs::read_dir(run_dir.join("nodes")).unwrap().flatten() {
        for sub in ["data", "meta"] {
            let _ = std::fs::remove_dir_all(node.path().join(sub));
        }
    }
}

/// Faults short enough for CI: a clean interval of 5 s, nodes down for 3 s,
/// SIGSTOP held 20 s, partitions 10 s, degraded links and client paths 8 s.
pub const QUICK_FAULTS: &[&str] = &[
    "--fault-every",
    "5s",
    "--hold",
    "3s",
    "--stop-hold",
    "20s",
    "--net-hold",
    "10s",
    "--link-hold",
    "8s",
    "--progress-every-s",
    "30",
];

/// Fault windows as the ledger records them: (kind, target, start,
/// confirm, end, recovered, recovery ms).
pub type FaultRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

pub fn fault_rows(ledger: &faultline::ledger::LedgerReader) -> Vec<FaultRow> {
    ledger
        .connection()
        .prepare(
            "SELECT kind, target, t_start_ns, t_confirm_ns, t_end_ns, t_recovered_ns, recovery_ms
             FROM faults ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Runs `faultline ARGS` and requires exit 0; returns standard output.
pub fn faultline_ok(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "faultline {args:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Starts `faultline ARGS --runs-dir RUNS` (Garage built first, so a
/// test's timed waits never include the build), held so that a failing
/// test kills it.
pub fn spawn_run(args: &[&str], runs: &Path, stderr: Stdio) -> KillOnDrop {
    faultline_ok(&["install"]);
    let child = Command::new(BIN)
        .args(args)
        .arg("--runs-dir")
        .arg(runs)
        .current_dir(repo(""))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    KillOnDrop(Some(child))
}

/// Kills and reaps a child process of a test when dropped, unless taken.
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    /// Waits (bounded, as `wait_bounded`) for the held child, then reads
    /// the standard error it was started with piped.
    pub fn wait_with_stderr(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let child = self.0.as_mut().expect("the guard holds the child");
        let status = wait_bounded(child, limit);
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        }
        (status, stderr)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls the one run under `runs` until its ledger opens and `shows`
/// finds what it waits for in it, for at most `within`.
pub fn until_ledger_shows<T>(
    runs: &Path,
    within: Duration,
    what: &str,
    mut shows: impl FnMut(&Path, &faultline::ledger::LedgerReader) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        assert!(
            Instant::now() < deadline,
            "no {what} within {} s",
            within.as_secs()
        );
        std::thread::sleep(Duration::from_millis(300));
        let Some(run) = std::fs::read_dir(runs)
            .ok()
            .and_then(|mut e| e.next())
            .and_then(Result::ok)
            .map(|e| e.path())
        else {
            continue;
        };
        let Ok(ledger) = faultline::ledger::LedgerReader::open(&run.join("ledger.sqlite")) else {
            continue;
        };
        if let Some(found) = shows(&run, &ledger) {
            return found;
        }
    }
}
