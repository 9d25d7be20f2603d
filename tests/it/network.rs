//! Network faults on a real cluster with real nftables rules: every
//! partition shape on five Garage nodes cuts exactly its pairs (a ring of
//! majorities the pairs two apart; confirmed by connect probes, recorded
//! with its rules and Garage's own view in the ledger) and heals with the
//! run's table gone; a client reset after the request makes ambiguous
//! writes the oracle accepts either way; dangerous Garage fails under a
//! partition that consistent Garage passes; a runner SIGKILLed mid-partition has its table healed by the
//! run's guardian within 5 s, and `faultline recover` heals a rule left
//! live.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// The run's nftables tables now (`nft list tables`), faultline's only.
fn faultline_tables() -> Vec<String> {
    let out = Command::new("nft").args(["list", "tables"]).output();
    let Ok(out) = out else {
        return Vec::new(); // nft not installed yet: no table can exist
    };
    faultline::net::nft::table_names(&String::from_utf8_lossy(&out.stdout))
        .map(str::to_string)
        .collect()
}

/// The table a run's rules went into, from the first script it applied.
fn table_of(run: &Path) -> String {
    let dir = run.join("net");
    let first = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let text = std::fs::read_to_string(&first).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("table ip "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string()
}

#[test]
fn every_partition_shape_on_five_nodes_cuts_exactly_its_pairs_and_heals() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("partition-ring");
    let stdout = run_passing(
        &[
            "gate",
            "--profile",
            "configs/garage-5.toml",
            "--seed",
            "12",
            "--faults",
            "partition-node,partition-one-way,partition-halves,partition-bridge,partition-ring",
            "--net-hold",
            "10s",
            "--fault-every",
            "3s",
            "--workers",
            "8",
        ],
        &runs,
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let faults = ledger.faults().unwrap();
    assert_eq!(faults.len(), 5, "{faults:#?}");
    // Every shape: confirmed and recovered, all 20 ordered pairs probed,
    // exactly its cut ones timed out; how many pairs each shape cuts.
    for f in &faults {
        assert!(
            f.t_confirm_ns.is_some() && f.t_recovered_ns.is_some(),
            "{f:?}"
        );
        let p: serde_json::Value = serde_json::from_str(f.params.as_deref().unwrap()).unwrap();
        let cut = p["cut"].as_array().unwrap();
        let probes = p["probes"].as_object().unwrap();
        assert_eq!(probes.len(), 20, "{}: {p}", f.kind);
        for (pair, seen) in probes {
            let is_cut = cut.iter().any(|c| c == pair.as_str());
            assert_eq!(seen == "timedout", is_cut, "{} {pair}: {p}", f.kind);
            assert!(is_cut || seen == "connected", "{} {pair}: {p}", f.kind);
        }
        let expected = match f.kind.as_str() {
            "partition-node" => 8,    // 4 others, both ways
            "partition-one-way" => 1, // one direction
            "partition-halves" => 12, // 2 x 3, both ways
            "partition-bridge" => 8,  // 2 x 2, both ways
            "partition-ring" => 10,   // the 5 pairs two apart
            other => panic!("{other}"),
        };
        assert_eq!(cut.len(), expected, "{}: {p}", f.kind);
    }
    let ring = faults.iter().find(|f| f.kind == "partition-ring").unwrap();
    let params: serde_json::Value = serde_json::from_str(ring.params.as_deref().unwrap()).unwrap();
    let cut: Vec<&str> = params["cut"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(params["rules"].as_array().unwrap().len(), 10, "{params}");
    // Every node still sees a majority (itself and two others).
    for node in ["n1", "n2", "n3", "n4", "n5"] {
        let lost = cut
            .iter()
            .filter(|c| c.starts_with(&format!("{node}->")))
            .count();
        assert_eq!(lost, 2, "{node}: {cut:?}");
    }
    // Garage's own view at the end of the hold was asked of every node
    // and recorded (which peers it reported down).
    let view = params["peers_down_at_heal"].as_object().unwrap();
    for node in ["n1", "n2", "n3", "n4", "n5"] {
        assert!(view[node].is_array(), "{node}: {params}");
    }
    // Healed: the run's table is gone; its script and the journal stay.
    let table = table_of(&run);
    assert!(!faultline_tables().contains(&table), "{table} left behind");
    let log = std::fs::read_to_string(run.join("commands.log")).unwrap();
    assert!(
        log.contains(&format!("nft delete table ip {table}")),
        "{log}"
    );
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

#[test]
fn a_sigkilled_runner_s_partition_is_healed_within_5_s_and_recover_heals_a_live_one() {
    let runs = runs_dir("partition-sigkill");
    let mut guard = spawn_run(
        &[
            "gate",
            "--seed",
            "13",
            "--faults",
            "partition-node",
            "--net-hold",
            "300s",
            "--fault-every",
            "2s",
            "--workers",
            "4",
        ],
        &runs,
        Stdio::null(),
    );
    let run = until_ledger_shows(
        &runs,
        Duration::from_secs(90),
        "confirmed partition",
        |run, ledger| {
            let faults = ledger.faults().unwrap();
            faults
                .iter()
                .any(|f| f.t_confirm_ns.is_some() && f.t_end_ns.is_none())
                .then(|| run.to_path_buf())
        },
    );
    let table = table_of(&run);
    assert!(faultline_tables().contains(&table), "{table} not applied");
    let log = std::fs::read_to_string(run.join("commands.log")).unwrap();
    let guardian: u32 = log
        .lines()
        .find_map(|l| {
            l.split_once(&format!("guardian of table ip {table}: pid "))?
                .1
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no guardian journaled: {log}"));
    assert!(!is_gone(guardian));
    let mut child = guard.0.take().unwrap();
    let killed = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_bounded(&mut child, Duration::from_secs(5));
    // The guardian heals the table once the runner's lease dies with it,
    // then exits; the nodes die with their supervisor.
    while faultline_tables().contains(&table) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "{table} still there 5 s after the SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_all_gone_within(&[guardian], Duration::from_secs(5));
    assert_all_gone_within(&live_processes_of(&runs), Duration::from_secs(5));
    let healed = std::fs::read_to_string(run.join("net/guardian.log")).unwrap();
    assert!(healed.contains(&format!("{table}: deleted")), "{healed}");

    // A rule left live (the journal's script applied again, as if the
    // guardian had died too): `faultline recover` heals it from the run
    // directory. The test holds the block's lease meanwhile, so that no
    // other run's boot sweeps the table first.
    let lease = std::env::temp_dir().join("faultline-addrs").join(format!(
        "{}.0.lock",
        table.trim_start_matches("faultline_").replace('_', ".")
    ));
    let _held = nix::fcntl::Flock::lock(
        std::fs::File::options().write(true).open(&lease).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    let script = std::fs::read_dir(run.join("net"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "nft"))
        .unwrap();
    let applied = Command::new("nft").arg("-f").arg(&script).status().unwrap();
    assert!(applied.success());
    assert!(faultline_tables().contains(&table));
    let out = faultline_ok(&["recover", run.to_str().unwrap()]);
    assert!(out.contains(&format!("table ip {table}: deleted")), "{out}");
    assert!(!faultline_tables().contains(&table), "{table} not healed");
    let again = faultline_ok(&["recover", run.to_str().unwrap()]);
    assert!(again.contains("not present, nothing to heal"), "{again}");
    drop_node_data(&run);
}

#[test]
fn a_client_reset_after_the_request_makes_ambiguous_writes_the_oracle_accepts_either_way() {
    use faultline::ledger::LedgerReader;
    let runs = runs_dir("client-reset");
    let stdout = run_passing(
        &[
            "gate",
            "--seed",
            "15",
            "--faults",
            "client-reset",
            "--link-hold",
            "15s",
            "--fault-every",
            "3s",
        ],
        &runs,
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    let run = only_run_dir(&runs);
    let ledger = LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let f = &ledger.faults().unwrap()[0];
    let params: serde_json::Value = serde_json::from_str(f.params.as_deref().unwrap()).unwrap();
    assert_eq!(params["toxic"]["toxic"], "reset-peer", "{params}");
    assert!(params["relayed"]["resets"].as_u64() > Some(0), "{params}");
    let (from, to) = (f.t_confirm_ns.unwrap() as i64, f.t_end_ns.unwrap() as i64);
    let count = |sql: &str| {
        ledger
            .connection()
            .query_row(sql, rusqlite::params![from, to], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    // Writes sent through the reset path during the hold: the node got the
    // whole request, the client got a reset, so each is ambiguous.
    let ambiguous = count(
        "SELECT count(*) FROM ops WHERE kind IN ('put', 'overwrite', 'delete', 'multipart') \
         AND outcome = 'ambiguous' AND t_invoke_ns BETWEEN ?1 AND ?2",
    );
    assert!(ambiguous > 0, "no ambiguous write during the reset");
    // And many of them took effect: a later read saw the very generation
    // (the oracle allowed it, as it allows the older value).
    let seen_later = count(
        "SELECT count(DISTINCT w.id) FROM ops w JOIN ops r ON r.key = w.key \
         AND r.generation = w.generation AND r.kind IN ('get', 'head', 'range') \
         AND r.outcome = 'ok' AND r.t_invoke_ns > w.t_return_ns \
         WHERE w.kind IN ('put', 'overwrite') AND w.outcome = 'ambiguous' \
         AND w.t_invoke_ns BETWEEN ?1 AND ?2",
    );
    assert!(
        seen_later > 0,
        "no ambiguous write seen later ({ambiguous} ambiguous)"
    );
    // Reads through the reset path are unavailable, never findings.
    assert_eq!(
        ledger
            .count("SELECT count(*) FROM findings WHERE known IS NULL")
            .unwrap(),
        0
    );
    drop_node_data(&run);
    assert_eq!(live_processes_of(&runs), Vec::<u32>::new());
}

/// The faults have teeth: Garage with `consistency_mode = "dangerous"`
/// (quorums of one) under one isolated node ends with findings, the
/// default consistent profile under the same plan passes.
#[test]
fn partitions_fail_dangerous_garage_and_pass_consistent_garage() {
    let runs = runs_dir("partition-teeth");
    let profile = runs.join("garage-3-dangerous.toml");
    let text = std::fs::read_to_string(repo("configs/garage-3.toml")).unwrap();
    assert!(text.contains("consistency_mode = \"consistent\""));
    std::fs::write(
        &profile,
        text.replace(
            "consistency_mode = \"consistent\"",
            "consistency_mode = \"dangerous\"",
        )
        .replace("name = \"garage-3\"", "name = \"garage-3-dangerous\""),
    )
    .unwrap();
    let plan = [
        "--seed",
        "16",
        "--faults",
        "partition-node",
        "--net-hold",
        "20s",
        "--fault-every",
        "3s",
    ];
    let dangerous = runs.join("dangerous");
    let out = Command::new(BIN)
        .args(["gate", "--profile", profile.to_str().unwrap()])
        .args(plan)
        .arg("--runs-dir")
        .arg(&dangerous)
        .current_dir(repo(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    let run = only_run_dir(&dangerous);
    let ledger = faultline::ledger::LedgerReader::open(&run.join("ledger.sqlite")).unwrap();
    let failing = ledger
        .count("SELECT count(*) FROM findings WHERE known IS NULL")
        .unwrap();
    assert!(failing > 0, "{stdout}");
    drop_node_data(&run);
    let consistent = runs.join("consistent");
    let stdout = run_passing(&[&["gate"][..], &plan].concat(), &consistent);
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    drop_node_data(&only_run_dir(&consistent));
    assert_eq!(live_processes_of(&dangerous), Vec::<u32>::new());
}
