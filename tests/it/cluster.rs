//! The cluster layer against real Garage processes: boot, S3 through the
//! project's own client, the recovery gate around a killed node, node
//! operations, the generic profile, boot probes, and endpoint overrides
//! and routing through proxies the tests start on loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use faultline::cluster::supervisor::ProcState;
use faultline::cluster::{BootOptions, Cluster, provision};
use faultline::s3::Timeouts;

use crate::support::*;

/// Boots the cluster of the profile `opts` names, as `faultline up` does.
async fn boot(opts: &BootOptions) -> Result<Cluster, faultline::cluster::ClusterError> {
    faultline::profile::Profile::load(&opts.profile)?
        .boot(opts)
        .await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage3_boots_serves_s3_and_gates_a_killed_node() {
    let runs = runs_dir("garage3");
    let cluster_started = Instant::now();
    let mut cluster = boot(&options("configs/garage-3.toml", &runs))
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
    let mut cluster = boot(&options("configs/garage-3.toml", &runs))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_profile_runs_garage_through_hooks_only() {
    let runs = runs_dir("generic");
    let mut cluster = boot(&options("configs/garage-generic.toml", &runs))
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
                port = n1_s3_addr(&runs);
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
                let Ok(mut outbound) = tokio::net::TcpStream::connect(port).await else {
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
                let Some(addr) = n1_s3_addr(&runs) else {
                    return;
                };
                let Ok(mut outbound) = tokio::net::TcpStream::connect(addr).await else {
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

/// Node n1's S3 address (its own loopback address and port), from cluster.json.
fn n1_s3_addr(runs: &Path) -> Option<std::net::SocketAddr> {
    let run = std::fs::read_dir(runs).ok()?.flatten().next()?.path();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("cluster.json")).ok()?).ok()?;
    let n1 = &state["nodes"][0];
    let ip: std::net::IpAddr = n1["ip"].as_str()?.parse().ok()?;
    let port = n1["ports"]["s3"].as_u64()? as u16;
    Some(std::net::SocketAddr::new(ip, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_override_sends_the_workload_through_a_proxy() {
    let runs = runs_dir("override");
    let (proxy, connections) = start_forwarder(runs.clone()).await;
    let mut opts = options("configs/garage-3.toml", &runs);
    opts.s3_endpoints = vec![proxy.clone()];
    let cluster = boot(&opts).await.unwrap();
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
    let cluster = boot(&options("configs/garage-5.toml", &runs))
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
