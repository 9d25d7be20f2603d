//! Soaks against Garage: every operation kind and worker in the ledger,
//! every acknowledged write read back, and a floor of free disk.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

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
