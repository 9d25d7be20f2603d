//! The cluster layer against real Garage processes: boot, S3 through the
//! project's own client, the recovery gate around a killed node, teardown,
//! the runner's own death, bad input, the generic profile and endpoint
//! overrides. Garage is installed into the user cache on first use, by the
//! same code path `faultline up` uses.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faultline::cluster::supervisor::ProcState;
use faultline::cluster::{BootOptions, Cluster, RUN_DIR_ENV, provision};
use faultline::s3::Timeouts;

const BIN: &str = env!("CARGO_BIN_EXE_faultline");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A fresh runs directory under the target dir, kept after the test so a
/// failure's node logs and commands.log can be read.
fn runs_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("test-runs")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(profile: &str, runs: &Path) -> BootOptions {
    BootOptions {
        profile: repo(profile),
        runs_dir: runs.to_path_buf(),
        seed: 42,
        cache_dir: provision::default_cache_dir(),
        binary_override: None,
        s3_endpoints: Vec::new(),
        allow_remote: false,
        port_base: None,
    }
}

/// Processes (not zombies) whose environment marks them as started by a
/// run under `runs`. Found by the run directory faultline puts in every
/// child's environment, never by process name.
fn live_processes_of(runs: &Path) -> Vec<u32> {
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
fn is_gone(pid: u32) -> bool {
    matches!(
        faultline::cluster::supervisor::proc_state_letter(pid),
        None | Some('Z') | Some('X')
    )
}

fn assert_all_gone_within(pids: &[u32], limit: Duration) {
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

/// PUTs an object through every workload endpoint and reads it back through
/// every other one.
async fn assert_put_get_everywhere(cluster: &Cluster) {
    let endpoints = &cluster.s3.endpoints;
    assert!(!endpoints.is_empty());
    for (i, ep) in endpoints.iter().enumerate() {
        let key = format!("test/put-get-{i}");
        let body: Vec<u8> = (0..70_000u32).map(|x| (x * 31 + i as u32) as u8).collect();
        let client = cluster.s3.client(ep, Timeouts::default());
        client.put_object(&key, body.clone()).await.unwrap();
        for other in endpoints {
            let got = cluster
                .s3
                .client(other, Timeouts::default())
                .get_object(&key)
                .await
                .unwrap();
            assert_eq!(got.status.as_u16(), 200, "GET {key} via {other}");
            assert!(got.body == body, "GET {key} via {other}: other bytes");
        }
    }
}

/// Runs `faultline ARGS` to completion; returns (exit code, stderr).
fn faultline(args: &[&str]) -> (i32, String) {
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

/// Waits for a child of this test to exit; SIGKILLs it (and fails) at `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage3_boots_serves_s3_and_gates_a_killed_node() {
    let runs = runs_dir("garage3");
    let cluster_started = Instant::now();
    let mut cluster = Cluster::boot(&options("configs/garage-3.toml", &runs))
        .await
        .unwrap();
    eprintln!(
        "booted in {:?} (measured {:?})",
        cluster.booted_in(),
        cluster_started.elapsed()
    );
    assert_eq!(cluster.nodes.iter().filter(|n| !n.spare).count(), 3);
    assert_eq!(cluster.nodes.iter().filter(|n| n.spare).count(), 2);
    assert!(
        cluster
            .nodes
            .iter()
            .filter(|n| n.spare)
            .all(|n| n.pid.is_none()),
        "spares must not start"
    );
    assert_put_get_everywhere(&cluster).await;
    // Every node resyncs (and frees deleted blocks) at the profile's pace,
    // not Garage's default tranquility of 2 with one worker.
    let garage =
        provision::cached_binary(&provision::default_cache_dir(), "garage", "2.5.0", "garage");
    for node in cluster.nodes.iter().filter(|n| !n.spare) {
        let out = Command::new(&garage)
            .arg("-c")
            .arg(node.dir.join("garage.toml"))
            .args(["worker", "get"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| -> Vec<String> {
            text.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .filter(|f| f.get(1) == Some(&name))
                .map(|f| f[2].to_string())
                .collect()
        };
        // `worker get` shows the node's own values.
        assert_eq!(var("resync-tranquility"), ["0"], "{text}");
        assert_eq!(var("resync-worker-count"), ["4"], "{text}");
    }

    // The run directory holds what the issue promises.
    let run = cluster.run_dir().to_path_buf();
    for rel in [
        "profile.toml",
        "cluster.json",
        "commands.log",
        "credentials",
        "nodes/n1/garage.toml",
        "nodes/n1/node.log",
        "nodes/n4/garage.toml",
    ] {
        assert!(
            run.join(rel).exists(),
            "{rel} missing from the run directory"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(run.join("credentials"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let commands = std::fs::read_to_string(run.join("commands.log")).unwrap();
    assert!(commands.contains("layout apply --version 1"), "{commands}");
    assert!(
        !commands.contains(&cluster.s3.secret_access_key),
        "the secret key leaked into commands.log"
    );

    cluster
        .wait_recovered(Duration::from_secs(120))
        .await
        .expect("a fresh cluster passes the gate");

    // A SIGKILLed node: the gate says not recovered, and why.
    cluster.kill_node("n3").await.unwrap();
    let failure = cluster
        .wait_recovered(Duration::from_secs(3))
        .await
        .unwrap_err();
    let text = failure.to_string();
    eprintln!("{text}");
    assert!(
        text.contains("n3: process: exited (killed by SIGKILL)"),
        "{text}"
    );
    // The peers notice the dead node at once, but under load the gate's
    // first evaluation may run before they have; give them a bounded while.
    let peers_see_it = |unmet: &[faultline::cluster::Unmet]| {
        unmet
            .iter()
            .any(|u| u.node.as_deref() != Some("n3") && u.condition == "GetClusterHealth")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut unmet = failure.unmet.clone();
    while !peers_see_it(&unmet) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        unmet = cluster.gate_once().await;
    }
    assert!(
        peers_see_it(&unmet),
        "peers should report the cluster unhealthy: {unmet:?}"
    );

    // Restarted on the same data: the gate passes and says how long it took.
    cluster.start_node("n3").await.unwrap();
    let recovery = cluster
        .wait_recovered(Duration::from_secs(150))
        .await
        .unwrap();
    eprintln!(
        "recovered in {:?} after {} checks",
        recovery.took, recovery.checks
    );
    assert!(recovery.took > Duration::ZERO && recovery.checks >= 1);
    let got = cluster
        .s3
        .client(&cluster.s3.endpoints[2], Timeouts::default())
        .get_object("test/put-get-0")
        .await
        .unwrap();
    assert_eq!(
        got.status.as_u16(),
        200,
        "data written before the kill is readable through n3"
    );

    // Pause and resume are confirmed by the kernel's view of the process.
    cluster.pause_node("n2").await.unwrap();
    assert_eq!(
        cluster.node_state("n2").await.unwrap(),
        Some(ProcState::Stopped)
    );
    let unmet = cluster.gate_once().await;
    assert!(
        unmet
            .iter()
            .any(|u| u.to_string() == "n2: process: stopped (SIGSTOP)"),
        "{unmet:?}"
    );
    cluster.resume_node("n2").await.unwrap();
    assert_eq!(
        cluster.node_state("n2").await.unwrap(),
        Some(ProcState::Running)
    );

    // Teardown: every PID the run spawned is gone.
    let pids = cluster.pids();
    assert_eq!(pids.len(), 3);
    cluster.shutdown().await.unwrap();
    drop(cluster);
    assert_all_gone_within(&pids, Duration::from_secs(1));
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_wipe_and_restart_on_another_binary_keep_the_node_serving() {
    let runs = runs_dir("node-ops");
    let mut cluster = Cluster::boot(&options("configs/garage-3.toml", &runs))
        .await
        .unwrap();
    let before = cluster.node("n1").unwrap().pid.unwrap();
    let after = cluster.restart_node("n1").await.unwrap();
    assert_ne!(before, after, "a restart must change the PID");
    assert!(is_gone(before));

    // "Another binary": a copy of the same version at another path, which
    // is what an update to the same version is.
    let copy = runs.join("garage-copy");
    std::fs::copy(&cluster.node("n2").unwrap().program, &copy).unwrap();
    cluster.restart_node_with("n2", &copy).await.unwrap();
    assert_eq!(cluster.node("n2").unwrap().program, copy);
    let cmdline = std::fs::read(format!(
        "/proc/{}/cmdline",
        cluster.node("n2").unwrap().pid.unwrap()
    ))
    .unwrap();
    assert!(String::from_utf8_lossy(&cmdline).starts_with(&copy.display().to_string()));

    // Wiping a running node is refused; a stopped one is emptied.
    assert!(cluster.wipe_node("n3").await.is_err());
    cluster.stop_node("n3").await.unwrap();
    std::fs::write(
        cluster.node("n3").unwrap().data_dirs[1].join("marker"),
        b"x",
    )
    .unwrap();
    cluster.wipe_node("n3").await.unwrap();
    for dir in &cluster.node("n3").unwrap().data_dirs {
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "{} not empty",
            dir.display()
        );
    }
    cluster.start_node("n1").await.unwrap_err(); // already running
    cluster.shutdown().await.unwrap();
    drop(cluster);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
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
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_profile_runs_garage_through_hooks_only() {
    let runs = runs_dir("generic");
    let mut cluster = Cluster::boot(&options("configs/garage-generic.toml", &runs))
        .await
        .unwrap();
    eprintln!("generic booted in {:?}", cluster.booted_in());
    assert_eq!(cluster.nodes.len(), 3);
    assert_eq!(cluster.s3.endpoints.len(), 3);
    assert_put_get_everywhere(&cluster).await;
    let commands = std::fs::read_to_string(cluster.commands_log()).unwrap();
    assert!(commands.contains("bootstrap hook 1"), "{commands}");

    cluster
        .wait_recovered(Duration::from_secs(120))
        .await
        .unwrap();
    cluster.kill_node("node2").await.unwrap();
    let text = cluster
        .wait_recovered(Duration::from_secs(3))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{text}");
    assert!(
        text.contains("node2: process: exited (killed by SIGKILL)"),
        "{text}"
    );
    assert!(text.contains("recovered hook: exit status 1"), "{text}");
    cluster.start_node("node2").await.unwrap();
    let recovery = cluster
        .wait_recovered(Duration::from_secs(150))
        .await
        .unwrap();
    eprintln!("generic recovered in {:?}", recovery.took);

    let pids = cluster.pids();
    cluster.shutdown().await.unwrap();
    drop(cluster);
    assert_all_gone_within(&pids, Duration::from_secs(1));
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

/// A loopback TCP forwarder standing in for a load balancer in front of
/// node n1. Its target is read from the run's cluster.json, which exists
/// once the nodes have started (before the workload endpoints are probed).
async fn start_forwarder(runs: PathBuf) -> (String, Arc<AtomicUsize>) {
    let (url, count, _silent) = start_silenceable_forwarder(runs).await;
    (url, count)
}

/// `start_forwarder` that goes silent like a stopped process while its
/// watch holds true: connections are accepted and held (for at most a
/// minute), and nothing is forwarded or answered, on new connections and
/// on those already open.
async fn start_silenceable_forwarder(
    runs: PathBuf,
) -> (String, Arc<AtomicUsize>, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let (silent_tx, silent_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            // cluster.json may be mid-rewrite: read it again, briefly.
            let mut port = None;
            for _ in 0..50 {
                port = n1_s3_port(&runs);
                if port.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let Some(port) = port else {
                continue;
            };
            seen.fetch_add(1, Ordering::Relaxed);
            let mut silent = silent_rx.clone();
            tokio::spawn(async move {
                let hold = Duration::from_secs(60);
                let silenced = *silent.borrow();
                if silenced {
                    let _ = tokio::time::timeout(hold, silent.wait_for(|s| !*s)).await;
                    return;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                // A forwarder nobody can silence (its sender is gone) just forwards.
                let silenced = async {
                    if silent.wait_for(|s| *s).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                let silenced = tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                    _ = silenced => true,
                };
                if silenced {
                    drop(outbound);
                    let _ = tokio::time::timeout(hold, silent.wait_for(|s| !*s)).await;
                }
            });
        }
    });
    (url, count, silent_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_routes_around_a_silent_endpoint_and_probes_it() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("silent-endpoint");
    let (a, _, _) = start_silenceable_forwarder(runs.clone()).await;
    let (b, _, silence_b) = start_silenceable_forwarder(runs.clone()).await;
    let mut guard = spawn_run(
        &[
            "soak",
            "--duration",
            "30s",
            "--faults",
            "none",
            "--seed",
            "13",
            "--workers",
            "8",
            "--s3-endpoint",
            &a,
            "--s3-endpoint",
            &b,
        ],
        &runs,
        Stdio::piped(),
    );
    // Wait (bounded) for the workload, then silence b for 15 s, like a
    // SIGSTOP, and give it back before the final verification.
    let deadline = Instant::now() + Duration::from_secs(120);
    let ops = || -> Option<i64> {
        let run = std::fs::read_dir(&runs).ok()?.flatten().next()?.path();
        LedgerReader::open(&run.join("ledger.sqlite"))
            .ok()?
            .count("SELECT count(*) FROM ops")
            .ok()
    };
    while ops().is_none_or(|n| n < 100) {
        assert!(Instant::now() < deadline, "the workload never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    silence_b.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    silence_b.send(false).unwrap();
    let (status, stderr) =
        tokio::task::block_in_place(|| guard.wait_with_stderr(Duration::from_secs(180)));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    // The first request b left unanswered, then 10 s from its start.
    let (t0, t0_return): (i64, i64) = ledger
        .connection()
        .query_row(
            "SELECT t_invoke_ns, t_return_ns FROM ops WHERE endpoint = 1 AND error_class = 'timeout' ORDER BY t_invoke_ns LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let t1 = t0 + 10_000_000_000;
    // Once b was known silent, only probes went to it: one at a time,
    // each 2 s after the last came back unanswered (5 s first-byte
    // deadline): 2 in the 10 s; 6 allows for requests already planned.
    let to_b = ledger
        .count(&format!(
            "SELECT count(*) FROM ops WHERE endpoint = 1 AND t_invoke_ns > {t0_return} AND t_invoke_ns < {t1}"
        ))
        .unwrap();
    assert!(to_b <= 6, "{to_b} requests to the silent endpoint");
    // Meanwhile a kept the workload going (half of it would otherwise
    // wait on b: a few operations a second).
    let ok = ledger
        .count(&format!(
            "SELECT count(*) FROM ops WHERE outcome = 'ok' AND t_invoke_ns >= {t0} AND t_return_ns <= {t1}"
        ))
        .unwrap();
    assert!(ok >= 200, "{ok} ok operations in the 10 s b was silent");
    drop_node_data(&run);
}

/// A proxy in front of node n1 for a store that hides each object for
/// 1.5 s after its PUT: a GET or HEAD of it meanwhile is answered 404, the
/// rest is forwarded. One request per connection (the runner's client
/// keeps none open).
async fn start_hiding_proxy(runs: PathBuf) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let written: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (runs, written) = (runs.clone(), written.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 8192];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match inbound.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let mut words = text.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let hidden = matches!(method, "GET" | "HEAD")
                    && written
                        .lock()
                        .unwrap()
                        .get(path)
                        .is_some_and(|t| t.elapsed() < Duration::from_millis(1500));
                if hidden {
                    let body = "<Error><Code>NoSuchKey</Code></Error>";
                    let answer = format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                        body.len(),
                        if method == "HEAD" { "" } else { body }
                    );
                    let _ = inbound.write_all(answer.as_bytes()).await;
                    return;
                }
                if method == "PUT" {
                    written
                        .lock()
                        .unwrap()
                        .insert(path.to_string(), Instant::now());
                }
                let Some(port) = n1_s3_port(&runs) else {
                    return;
                };
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                if outbound.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::time::timeout(
                    Duration::from_secs(60),
                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound),
                )
                .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_probe_that_reads_back_nothing_is_a_finding_in_the_ledger_not_a_boot_failure() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("hiding-store");
    let proxy = start_hiding_proxy(runs.clone()).await;
    let out = tokio::task::block_in_place(|| {
        Command::new(BIN)
            .args([
                "soak",
                "--duration",
                "20s",
                "--faults",
                "none",
                "--seed",
                "17",
            ])
            .args([
                "--s3-endpoint",
                &proxy,
                "--runs-dir",
                runs.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("verdict: FAIL: 1 findings; also INFRASTRUCTURE FAILURE: booting stopped"),
        "{stdout}"
    );
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let findings = ledger.findings().unwrap();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.class, "lost-write");
    assert!(f.key.as_deref().unwrap().starts_with("faultline-probe/"));
    assert!(f.known.is_none());
    // The witness names the probe's PUT, acknowledged before the GET.
    let witness: serde_json::Value = serde_json::from_str(&f.witness).unwrap();
    assert_eq!(witness["writes"][0]["outcome"], "ok");
    assert_eq!(
        ledger
            .count("SELECT count(*) FROM ops WHERE origin = 'probe'")
            .unwrap(),
        2
    );
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("lost-write"), "{report}");
    // `verify` names the same finding from the ledger alone.
    let v = faultline::run::verify(&run.join("ledger.sqlite")).unwrap();
    assert_eq!(v.judged.violations.len(), 1);
    assert!(v.agrees_with_online());
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

fn n1_s3_port(runs: &Path) -> Option<u16> {
    let run = std::fs::read_dir(runs).ok()?.flatten().next()?.path();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("cluster.json")).ok()?).ok()?;
    state["nodes"][0]["ports"]["s3"].as_u64().map(|p| p as u16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_override_sends_the_workload_through_a_proxy() {
    let runs = runs_dir("override");
    let (proxy, connections) = start_forwarder(runs.clone()).await;
    let mut opts = options("configs/garage-3.toml", &runs);
    opts.s3_endpoints = vec![proxy.clone()];
    let cluster = Cluster::boot(&opts).await.unwrap();
    assert_eq!(cluster.s3.endpoints, vec![proxy.clone()]);
    assert_eq!(
        cluster.s3.node_endpoints.len(),
        3,
        "the nodes stay supervised and probed"
    );
    let before = connections.load(Ordering::Relaxed);
    assert!(before > 0, "boot must probe the override endpoint");
    assert_put_get_everywhere(&cluster).await;
    assert!(
        connections.load(Ordering::Relaxed) > before,
        "the workload went around the proxy"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage5_boots_five_nodes_with_three_replicas() {
    let runs = runs_dir("garage5");
    let cluster = Cluster::boot(&options("configs/garage-5.toml", &runs))
        .await
        .unwrap();
    assert_eq!(cluster.pids().len(), 5);
    assert_eq!(cluster.s3.endpoints.len(), 5);
    assert_put_get_everywhere(&cluster).await;
    cluster
        .wait_recovered(Duration::from_secs(120))
        .await
        .unwrap();
    let garage_toml =
        std::fs::read_to_string(cluster.run_dir().join("nodes/n5/garage.toml")).unwrap();
    assert!(
        garage_toml.contains("replication_factor = 3"),
        "{garage_toml}"
    );
    let pids = cluster.pids();
    cluster.shutdown().await.unwrap();
    drop(cluster);
    assert_all_gone_within(&pids, Duration::from_secs(1));
}

/// Re-checks a run's ledger offline and holds it to what the online check
/// recorded: the same findings (class and op), every one of them a known
/// deviation the profile tolerates (see configs/garage-3.toml), and enough
/// reads and LIST pages checked to mean something.
///
/// Returns the verdict for further checks.
fn verify_matches_online_check(ledger_path: &Path) -> faultline::online::Judged {
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
fn run_passing(args: &[&str], runs: &Path) -> String {
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
fn only_run_dir(runs: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn a_soak_short_of_disk_stops_heals_verifies_and_exits_3() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("soak-disk-floor");
    // No filesystem here has this much free: the floor is crossed at once.
    let mut guard = spawn_run(
        &[
            "soak",
            "--duration",
            "10m",
            "--seed",
            "8",
            "--faults",
            "none",
            "--min-free-disk-mb",
            "1000000000",
        ],
        &runs,
        Stdio::piped(),
    );
    let (status, stderr) = guard.wait_with_stderr(Duration::from_secs(180));
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(
            "below the floor of 1000000000 MiB (--min-free-disk-mb): stopping the workload"
        ),
        "{stderr}"
    );
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let verdict = run_verdict(&ledger);
    assert_eq!(verdict["verdict"], "infrastructure", "{verdict}");
    assert!(
        verdict["reason"]
            .as_str()
            .unwrap()
            .contains("--min-free-disk-mb"),
        "{verdict}"
    );
    // Stopping for disk still reads every key back.
    assert!(final_ops(&ledger) > 0);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
    drop_node_data(&run);
}

/// The run's verdict as the ledger records it.
fn run_verdict(ledger: &faultline::ledger::LedgerReader) -> serde_json::Value {
    serde_json::from_str(&ledger.meta("verdict").unwrap().unwrap()).unwrap()
}

/// Operations of the final verification in the ledger.
fn final_ops(ledger: &faultline::ledger::LedgerReader) -> i64 {
    ledger
        .count("SELECT count(*) FROM ops WHERE origin = 'final'")
        .unwrap()
}

/// Frees the disk a passed test's nodes used; the ledger and logs stay.
fn drop_node_data(run_dir: &Path) {
    for node in std::fs::read_dir(run_dir.join("nodes")).unwrap().flatten() {
        for sub in ["data", "meta"] {
            let _ = std::fs::remove_dir_all(node.path().join(sub));
        }
    }
}

#[test]
fn soak_records_every_op_kind_and_every_worker_in_the_ledger() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("soak-ledger");
    run_passing(
        &[
            "soak",
            "--duration",
            "15s",
            "--seed",
            "5",
            "--progress-every-s",
            "5",
        ],
        &runs,
    );
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    assert_eq!(ledger.meta("seed").unwrap().as_deref(), Some("5"));
    assert_eq!(
        ledger
            .count("SELECT count(DISTINCT worker) FROM ops WHERE origin = 'worker'")
            .unwrap(),
        24
    );
    // The final verification is the verifier's alone (worker id 24), after
    // every worker stopped: a GET and a HEAD of every key, and a LIST.
    assert_eq!(
        ledger
            .count("SELECT count(DISTINCT worker) FROM ops WHERE origin = 'final'")
            .unwrap(),
        1
    );
    assert_eq!(
        ledger
            .count("SELECT min(id) > (SELECT max(id) FROM ops WHERE origin != 'final') FROM ops WHERE origin = 'final'")
            .unwrap(),
        1
    );
    assert_eq!(
        ledger
            .count("SELECT count(*) FROM ops WHERE origin = 'final' AND kind IN ('get', 'head')")
            .unwrap(),
        2 * 24 * 40
    );
    for kind in faultline::history::OpKind::ALL {
        let n = ledger
            .count(&format!(
                "SELECT count(*) FROM ops WHERE kind = '{}' AND outcome = 'ok'",
                kind.as_str()
            ))
            .unwrap();
        assert!(n > 0, "no successful {} in the ledger", kind.as_str());
    }
    // Plausible outcomes on a healthy cluster: nearly everything ok, and
    // the only certain failures are ranges past the end (416).
    let total = ledger.count("SELECT count(*) FROM ops").unwrap();
    let ok = ledger
        .count("SELECT count(*) FROM ops WHERE outcome = 'ok'")
        .unwrap();
    assert!(ok * 100 >= total * 95, "{ok} ok of {total}");
    let odd_fails = ledger
        .count("SELECT count(*) FROM ops WHERE outcome = 'fail' AND NOT (kind = 'range' AND http_status = 416)")
        .unwrap();
    assert_eq!(odd_fails, 0);
    assert_eq!(
        ledger
            .count("SELECT count(*) FROM ops WHERE t_return_ns < t_invoke_ns")
            .unwrap(),
        0
    );
    // Every write has its version row, and every generation a read saw was written.
    assert_eq!(
        ledger
            .count(
                "SELECT count(*) FROM ops WHERE kind IN ('put','overwrite','multipart','delete')"
            )
            .unwrap(),
        ledger.count("SELECT count(*) FROM versions").unwrap()
    );
    let unexplained = ledger
        .count(
            "SELECT count(*) FROM ops o WHERE generation IS NOT NULL AND kind IN ('get','head','range')
             AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.key = o.key AND v.generation = o.generation)",
        )
        .unwrap();
    assert_eq!(unexplained, 0);
    // Bodies are verifiable: a full GET of an acknowledged, never-overwritten
    // generation has exactly the bytes the seed says.
    let mismatched = ledger
        .connection()
        .prepare(
            "SELECT o.key, o.generation, o.size, o.sha256 FROM ops o JOIN versions v
             ON v.key = o.key AND v.generation = o.generation
             WHERE o.kind = 'get' AND o.outcome = 'ok' AND o.sha256 IS NOT NULL LIMIT 200",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .filter(|(key, g, size, sha)| {
            faultline::history::body::Body::new(5, key, *g as u64, *size as u64)
                .sha256()
                .to_vec()
                != *sha
        })
        .count();
    assert_eq!(mismatched, 0);
    assert_every_ack_is_read_back(&ledger);
    let verdict = verify_matches_online_check(&run.join("ledger.sqlite"));
    eprintln!(
        "oracle: {:?}, {} known Garage deviations",
        verdict.coverage,
        verdict.known_count()
    );
    // The final verification read every key of the run back.
    assert!(
        verdict.coverage.final_reads_checked >= 2 * 24 * 40,
        "{:?}",
        verdict.coverage
    );
    assert!(verdict.coverage.final_list_pages_checked > 0);
    assert!(ledger.meta("finished_at").unwrap().is_some());
    assert!(
        ledger
            .count("SELECT count(*) FROM metrics WHERE name = 'runner_rss_bytes'")
            .unwrap()
            > 0
    );
    assert!(
        ledger
            .count("SELECT count(*) FROM latency_percentiles")
            .unwrap()
            == 8
    );
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

/// Every acknowledged write is followed, within the read-back delay (2 s)
/// plus slack for a loaded 2-core machine (a read-back waits for a slot
/// while slow multi-MiB reads hold them), by a read of its key from its
/// owner: a GET/HEAD/Range of the key, or a LIST page starting just before
/// it. Writes too close to the end of the workers' phase are exempt.
fn assert_every_ack_is_read_back(ledger: &faultline::ledger::LedgerReader) {
    use faultline::history::{OpKind, Outcome};
    const WINDOW_NS: u64 = 10_000_000_000;
    let ops = ledger.ops().unwrap();
    // The workers' phase ends when the last of their operations started
    // (one may return seconds later); pending read-backs end with it.
    let end = ops
        .iter()
        .filter(|o| o.origin != faultline::history::Origin::Final)
        .map(|o| o.t_invoke_ns)
        .max()
        .unwrap();
    let mut checked = 0;
    for w in ops
        .iter()
        .filter(|o| o.kind.is_write() && o.outcome == Outcome::Ok)
    {
        if w.t_return_ns + WINDOW_NS > end {
            continue;
        }
        let key = w.key.as_deref().unwrap();
        let read_back = ops.iter().any(|r| {
            r.worker == w.worker
                && r.t_invoke_ns >= w.t_return_ns
                && r.t_invoke_ns <= w.t_return_ns + WINDOW_NS
                && match r.kind {
                    OpKind::Get | OpKind::Head | OpKind::Range => r.key.as_deref() == Some(key),
                    // A page covers (start_after, its last key], or to the
                    // end when it is the last page.
                    OpKind::List => r.detail.as_deref().is_some_and(|d| {
                        let v: serde_json::Value = serde_json::from_str(d).unwrap();
                        let starts_before = v["start_after"].as_str().is_some_and(|a| a < key);
                        let last = v["keys"]
                            .as_array()
                            .and_then(|k| k.last())
                            .and_then(|e| e[0].as_str());
                        let reaches =
                            !v["truncated"].as_bool().unwrap() || last.is_some_and(|l| l >= key);
                        starts_before && reaches
                    }),
                    _ => false,
                }
        });
        if !read_back {
            let next: Vec<_> = ops
                .iter()
                .filter(|r| r.key.as_deref() == Some(key) && r.t_invoke_ns >= w.t_return_ns)
                .take(3)
                .map(|r| {
                    (
                        r.id,
                        r.worker,
                        r.kind,
                        (r.t_invoke_ns - w.t_return_ns) / 1_000_000,
                    )
                })
                .collect();
            panic!(
                "write op {} of {key} was not read back within 10 s; \
                 the next ops on the key (id, worker, kind, ms after the ack): {next:?}",
                w.id
            );
        }
        checked += 1;
    }
    assert!(checked > 100, "only {checked} writes checked");
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let ledger_path = loop {
        assert!(
            Instant::now() < deadline,
            "no operations committed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
        let Ok(entries) = std::fs::read_dir(&runs) else {
            continue;
        };
        let Some(run) = entries.flatten().next() else {
            continue;
        };
        let path = run.path().join("ledger.sqlite");
        let committed = LedgerReader::open(&path)
            .ok()
            .and_then(|l| l.count("SELECT count(*) FROM ops").ok());
        if committed.is_some_and(|n| n > 200) {
            break path;
        }
    };
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

/// Faults short enough for CI: a clean interval of 5 s, nodes down for 3 s,
/// SIGSTOP held 20 s.
const QUICK_FAULTS: &[&str] = &[
    "--fault-every",
    "5s",
    "--hold",
    "3s",
    "--stop-hold",
    "20s",
    "--progress-every-s",
    "30",
];

/// Fault windows as the ledger records them: (kind, target, start,
/// confirm, end, recovered, recovery ms).
type FaultRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

fn fault_rows(ledger: &faultline::ledger::LedgerReader) -> Vec<FaultRow> {
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
    // Every kind once on the one role, each confirmed, undone and recovered
    // in that order, the next one starting only after.
    let mut kinds: Vec<&str> = faults.iter().map(|f| f.0.as_str()).collect();
    kinds.sort();
    let mut all: Vec<&str> = FaultKind::ALL.iter().map(|k| k.as_str()).collect();
    all.sort();
    assert_eq!(kinds, all, "{faults:#?}");
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

/// Runs `faultline ARGS` and requires exit 0; returns standard output.
fn faultline_ok(args: &[&str]) -> String {
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

/// Starts a gate of one long stop-start and waits (bounded) until the
/// ledger shows the node stopped; returns the runner, the run directory
/// and the stopped node's PID.
fn start_stop_start_gate(runs: &Path) -> (Child, PathBuf, u32) {
    use faultline::ledger::LedgerReader;
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
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "no confirmed stop-start within 90 s"
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
        let Ok(ledger) = LedgerReader::open(&run.join("ledger.sqlite")) else {
            continue;
        };
        // The schema is in place once the ledger opens (its version is set last).
        let faults = ledger.faults().unwrap();
        if let Some(f) = faults
            .iter()
            .find(|f| f.t_confirm_ns.is_some() && f.t_end_ns.is_none())
        {
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
            let child = guard.0.take().expect("the guard holds the child");
            return (child, run, pid);
        }
    }
}

/// Starts `faultline ARGS --runs-dir RUNS` (Garage built first, so a
/// test's timed waits never include the build), held so that a failing
/// test kills it.
fn spawn_run(args: &[&str], runs: &Path, stderr: Stdio) -> KillOnDrop {
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
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Waits (bounded, as `wait_bounded`) for the held child, then reads
    /// the standard error it was started with piped.
    fn wait_with_stderr(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
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
