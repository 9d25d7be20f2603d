//! Driving one booted cluster: the workload, the fault plan, the self-test's
//! mutations and the progress view until the run ends; then the recovery
//! gate, the final verification and the judged result.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::print::{print_coverage, print_faults, print_findings, print_summary};
use super::signals::Interrupts;
use super::update_binary;
use super::{Ended, FaultMode, OracleMeta, RunConfig, run_meta};
use crate::cluster::Cluster;
use crate::exit::Error;
use crate::faults::{FaultStatus, Injector, Planned, SoakPlan, gate_plan};
use crate::ledger::query::FaultCoverage;
use crate::ledger::{Ledger, LedgerReader, Record};
use crate::online;
use crate::online::Online;
use crate::sys::{free_disk_bytes, rss_bytes};
use crate::verdict::{SelftestOutcome, judge};
use crate::workload::{Stats, Workload};

/// How long a run warms up before `inject` arms its bug.
pub(super) const INJECT_AFTER: Duration = Duration::from_secs(5);

/// Everything between boot and shutdown; the cluster is torn down by the
/// caller whatever this returns (at once on `Error::Interrupted`).
pub(super) async fn drive(
    cfg: &RunConfig,
    cluster: &mut Cluster,
    interrupts: &mut Interrupts,
) -> Result<Ended, Error> {
    let seed = cfg.boot.seed;
    let wl = cfg.profile.workload.clone();
    let run_dir = cluster.run_dir().to_path_buf();
    let ledger_path = run_dir.join("ledger.sqlite");
    if let Err(e) = crate::console::attach_run_log(&run_dir.join("runner.log.jsonl")) {
        crate::console::say(&format!(
            "faultline: no runner log in the run directory: {e}"
        ));
    }
    let metrics_targets = cluster.metrics_targets();
    let http = cluster.http();
    cluster.snapshot_metrics("start").await;
    let update_bin = match cfg.faults {
        FaultMode::Off => None,
        _ => update_binary(cfg).await?,
    };
    crate::console::say(&format!(
        "faultline: ledger retention {}",
        cfg.retention.map_or_else(
            || "off: full history".to_string(),
            |r| format!("on: {}", r.describe())
        )
    ));
    let prefix = cluster.run_prefix();
    let oracle_meta = OracleMeta::for_workload(&cfg.profile.oracle, &wl);
    let (online, tap) = Online::start(
        oracle_meta.run_info(seed, prefix.clone(), true),
        oracle_meta.tolerate.clone(),
    );
    let (ledger, writer) = Ledger::create(&ledger_path, cfg.retention, Some(tap))?;
    online.attach(ledger.clone());
    let status = online.status.clone();
    let meta = run_meta(
        cfg,
        &cfg.profile,
        &prefix,
        &cluster.s3.endpoints,
        &oracle_meta,
    );
    for (key, value) in meta {
        ledger.send(Record::Meta {
            key: key.into(),
            value,
        })?;
    }
    let timeouts = Workload::s3_timeouts(&wl);
    let selftest = match cfg.selftest || cfg.inject.is_some() {
        true => Some(
            crate::selftest::Selftest::start(&cluster.s3.endpoints, &cluster.s3.bucket)
                .await
                .map_err(|e| Error::Workload(format!("cannot start the selftest proxy: {e}")))?,
        ),
        false => None,
    };
    let workload_endpoints = match &selftest {
        Some(st) => st.endpoints(),
        None => cluster.s3.endpoints.clone(),
    };
    let clients = workload_endpoints
        .iter()
        .map(|ep| cluster.s3.client(ep, timeouts))
        .collect();
    let s3 = cluster.s3.clone();
    let clock = Instant::now();
    let workload = Workload::new(wl.clone(), seed, prefix, clients, ledger.clone(), clock);
    let stats = workload.stats.clone();
    let recovery_deadline = Duration::from_millis(cluster.profile.timeouts.recovery_ms);
    let mut injector = Injector::new(
        seed,
        cfg.profile.faults.clone(),
        update_bin,
        ledger.clone(),
        clock,
        recovery_deadline,
    );
    let fault_status = injector.status();
    let roles = cluster.roles();
    let mut fault_settings = cfg.profile.faults.clone();
    fault_settings.kinds = fault_settings
        .kinds_for(
            cluster.active_nodes(None).len(),
            crate::net::has_net_admin(),
        )
        .map_err(|e| Error::Usage(format!("faults: {e}")))?;
    let plan: Vec<Planned> = match cfg.faults {
        FaultMode::Off => Vec::new(),
        FaultMode::Gate => gate_plan(seed, &fault_settings.kinds, &roles),
        // Enough for any duration: one fault takes at least the interval.
        FaultMode::Soak => SoakPlan::new(seed, &fault_settings, &roles)
            .take(
                (cfg.duration.as_millis() / u128::from(cfg.profile.faults.interval_ms.max(1)) + 1)
                    as usize,
            )
            .collect(),
    };
    let planned = plan.len();
    if planned > 0 {
        crate::console::say(&format!(
            "faultline: {} fault plan: {}",
            if cfg.faults == FaultMode::Gate {
                "gate"
            } else {
                "soak"
            },
            plan.iter()
                .take(12)
                .map(|p| format!("{} on {}", p.kind.as_str(), p.role))
                .collect::<Vec<_>>()
                .join(", ")
                + if planned > 12 { ", ..." } else { "" }
        ));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (fault_stop_tx, fault_stop_rx) = tokio::sync::watch::channel(false);
    let mut running = tokio::spawn(workload.clone().run(stop_rx));
    let deadline = tokio::time::sleep(cfg.duration);
    tokio::pin!(deadline);
    let live = crate::console::Live::start();
    // A terminal's live line changes every second; plain lines come at
    // the progress interval.
    let mut progress = tokio::time::interval(if live.is_live() {
        Duration::from_secs(1)
    } else {
        cfg.progress_every.max(Duration::from_secs(1))
    });
    progress.tick().await;
    let mut snapshot = tokio::time::interval(Duration::from_secs(5));
    let mut node_metrics = tokio::time::interval(Duration::from_secs(60));
    node_metrics.tick().await;
    let mut last_total = 0u64;
    let mut last_tick = Instant::now();
    let mut finished_early = None;
    let mut ended_by = "the duration ended";
    let mut interrupted = false;
    let mut disk_low = None;
    // The self-test's phase 1 runs before any fault; the faults wait.
    let (phase2_tx, mut phase2_rx) = tokio::sync::watch::channel(!cfg.selftest);
    let mut caught = None;
    let faults_result = {
        let endpoint_workload = workload.clone();
        let selftest = selftest.as_ref();
        let faults = async {
            let _ = phase2_rx.wait_for(|started| *started).await;
            injector
                .run(cluster, plan, fault_stop_rx, |old, new| {
                    tracing::info!(old, new, "workload endpoint moved");
                    match selftest {
                        Some(st) => st.retarget(old, new),
                        None => endpoint_workload.replace_endpoint(old, s3.client(new, timeouts)),
                    }
                })
                .await
        };
        tokio::pin!(faults);
        let mutations = async {
            match (selftest, cfg.inject) {
                (Some(st), None) => Some(st.inject_all(&status).await),
                (Some(st), Some(m)) => {
                    tokio::time::sleep(INJECT_AFTER).await;
                    crate::console::say(&format!(
                        "faultline: injecting {} through the proxy, as asked",
                        m.as_str()
                    ));
                    st.arm(m);
                    std::future::pending().await
                }
                (None, _) => std::future::pending().await,
            }
        };
        tokio::pin!(mutations);
        let mut faults_done = (cfg.faults == FaultMode::Off).then_some(Ok(()));
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                r = &mut mutations, if caught.is_none() => {
                    caught = r;
                    crate::console::say("faultline: selftest phase 2: the fault plan, the proxy passing everything through");
                    let _ = phase2_tx.send(true);
                    if cfg.faults == FaultMode::Off {
                        ended_by = "the selftest is through";
                        break;
                    }
                }
                r = &mut faults, if faults_done.is_none() => {
                    let failed = r.is_err();
                    faults_done = Some(r);
                    if failed {
                        ended_by = "a fault could not be undone or the cluster did not recover";
                        break;
                    }
                    if cfg.faults == FaultMode::Gate {
                        ended_by = "the fault plan is through";
                        break;
                    }
                }
                _ = interrupts.next() => {
                    crate::console::say("faultline: Ctrl-C: healing, stopping the workload, then verifying (Ctrl-C again kills the nodes at once)");
                    ended_by = "interrupted";
                    interrupted = true;
                    break;
                }
                _ = status.violated(), if cfg.stop_on_violation => {
                    crate::console::say(&format!("faultline: stopping at the first violation: {}", status.first().unwrap_or_default()));
                    ended_by = "stopped at the first violation";
                    break;
                }
                r = &mut running => { finished_early = Some(r); break; }
                _ = snapshot.tick() => {
                    record_metrics(&ledger, &stats, &status, clock);
                    let floor = cfg.min_free_disk_mb << 20;
                    if let Some(free) = free_disk_bytes(&run_dir).filter(|f| *f < floor) {
                        let why = format!(
                            "{} MiB free on the filesystem of {}, below the floor of {} MiB (--min-free-disk-mb)",
                            free >> 20,
                            run_dir.display(),
                            cfg.min_free_disk_mb
                        );
                        crate::console::say(&format!("faultline: {why}: stopping the workload"));
                        disk_low = Some(why);
                        ended_by = "the disk is nearly full";
                        break;
                    }
                }
                _ = node_metrics.tick() => {
                    let label = format!("at-{:05}s", clock.elapsed().as_secs());
                    crate::cluster::snapshot_metrics(&http, &metrics_targets, &run_dir, &label).await;
                }
                _ = progress.tick() => {
                    let total = stats.total();
                    let line = format!(
                        "{:>6.0} s  {:>7} ops  {:>5.0} ops/s  {} not ok  {} checked  {} findings ({} known{})  {}",
                        clock.elapsed().as_secs_f64(),
                        total,
                        (total - last_total) as f64 / last_tick.elapsed().as_secs_f64().max(0.001),
                        stats.errors(),
                        status.checked(),
                        status.findings(),
                        status.known(),
                        absorbed_brief(&status),
                        describe_faults(&fault_status, planned),
                    );
                    if live.is_live() {
                        live.set(&line);
                    } else {
                        crate::console::say(&format!("faultline: {line}"));
                    }
                    last_total = total;
                    last_tick = Instant::now();
                }
            }
        }
        drop(live);
        // Faults held back for a phase 2 that never came see the stop at once.
        let _ = phase2_tx.send(true);
        // Heal: the injector undoes the fault in progress and waits for
        // the gate, each step bounded; a second Ctrl-C gives up on it.
        let _ = fault_stop_tx.send(true);
        match faults_done {
            Some(r) => r,
            None => tokio::select! {
                r = &mut faults => r,
                _ = interrupts.next() => return Err(Error::Interrupted),
            },
        }
    };
    let _ = stop_tx.send(true);
    let joined = match finished_early {
        Some(r) => r,
        // Each worker finishes its current operation, which is bounded by
        // the workload's total timeout (and a multipart upload by a few).
        None => tokio::select! {
            r = tokio::time::timeout(Duration::from_millis(wl.total_timeout_ms * 8), &mut running) => match r {
                Ok(r) => r,
                Err(_) => {
                    running.abort();
                    Ok(Err(crate::ledger::LedgerError::WriterGone(
                        "the workers did not stop in time and were aborted".into(),
                    )))
                }
            },
            _ = interrupts.next() => return Err(Error::Interrupted),
        },
    };
    let workload_result: Result<(), Error> = match joined {
        Ok(r) => r.map_err(Error::from),
        Err(e) => Err(Error::Workload(format!("the workload panicked: {e}"))),
    };
    crate::console::say(&format!(
        "faultline: workload stopped ({ended_by}) after {:.0} s; waiting for the cluster to recover",
        clock.elapsed().as_secs_f64()
    ));
    let mut infra = faults_result.as_ref().err().map(ToString::to_string);
    if let Some(why) = &infra {
        crate::console::say(&format!("faultline: {why}"));
    }
    // Short of disk the cluster still heals and every key is still read
    // back (reads need no disk); the run then fails as infrastructure.
    let heal = infra.is_none();
    infra = infra.or(disk_low);
    if heal {
        let gate = tokio::select! {
            g = cluster.wait_recovered(recovery_deadline) => g,
            _ = interrupts.next() => return Err(Error::Interrupted),
        };
        match gate {
            Ok(r) => crate::console::say(&format!(
                "faultline: recovered in {:.1} s; final verification of every key",
                r.took.as_secs_f64()
            )),
            Err(failure) => {
                crate::console::say(&format!(
                    "faultline: {failure}; final verification of every key all the same (bounded), so that data the cluster lost is named"
                ));
                infra = Some(failure.to_string());
            }
        }
    } else {
        crate::console::say(
            "faultline: final verification of every key without a recovered cluster (bounded), so that data the cluster lost is named",
        );
    }
    // A cluster that lost data may never pass the gate (replication 1 and
    // a dead node): its reads still run, each retried within the
    // workload's `final_retry_ms` (oracle.md §7).
    tokio::select! {
        r = workload.clone().verify_all() => r?,
        _ = interrupts.next() => return Err(Error::Interrupted),
    }
    record_metrics(&ledger, &stats, &status, clock);
    cluster.snapshot_metrics("end").await;
    ledger.flush()?;
    let verdict = online.finish();
    ledger.send(Record::Meta {
        key: "finished_at".into(),
        value: crate::sys::utc_now(),
    })?;
    drop(ledger);
    drop(workload);
    drop(injector);
    let records = writer.finish()?;
    let faults = {
        let reader = LedgerReader::open(&ledger_path)?;
        reader.fault_coverage()?
    };
    let skipped = fault_status
        .lock()
        .map(|s| s.skipped.clone())
        .unwrap_or_default();
    let mut plan_gaps = skipped_gaps(cfg.faults, &skipped, &faults);
    if cfg.faults == FaultMode::Gate && interrupted {
        plan_gaps.push("interrupted before the fault plan was through".into());
    } else if cfg.faults == FaultMode::Gate && faults.len() + plan_gaps.len() < planned {
        plan_gaps.push(format!(
            "only {} of {planned} planned faults ran",
            faults.len() + plan_gaps.len()
        ));
    }
    let breaches = cfg.thresholds.breaches(&faults);
    if infra.is_none() && !breaches.is_empty() {
        infra = Some(format!("thresholds: {}", breaches.join("; ")));
    }
    let run_verdict = judge(
        verdict.as_ref(),
        infra,
        status.lost(),
        &stats,
        &wl,
        workload_result.is_err(),
        &faults,
        plan_gaps,
    );
    // The verdict and coverage are facts of the run, known only now.
    crate::ledger::set_meta(
        &ledger_path,
        "verdict",
        &serde_json::to_string(&run_verdict).expect("a verdict serialises"),
    )?;
    if let Some(v) = &verdict {
        crate::ledger::set_meta(
            &ledger_path,
            "coverage",
            &serde_json::to_string(&v.coverage).expect("coverage serialises"),
        )?;
    }
    print_summary(&stats, clock.elapsed(), records, &ledger_path);
    print_faults(&faults);
    if let Some(v) = &verdict {
        print_findings(v, &oracle_meta.tolerate, 10);
        print_coverage(&v.coverage);
    }
    workload_result?;
    let selftest = selftest.filter(|_| cfg.selftest).map(|st| {
        let damaged = st.damaged();
        let unexpected = verdict
            .as_ref()
            .map(|v| {
                v.violations
                    .iter()
                    .filter(|f| f.key.as_ref().is_none_or(|k| !damaged.contains(k)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // A phase 1 that never got through counts every mutation missed.
        let caught = caught.unwrap_or_else(|| {
            crate::selftest::proxy::Mutation::ALL
                .iter()
                .map(|m| crate::selftest::Caught::missed(*m, "phase 1 did not finish"))
                .collect()
        });
        SelftestOutcome { caught, unexpected }
    });
    if let Some(st) = &selftest {
        crate::ledger::set_meta(
            &ledger_path,
            "selftest",
            &serde_json::to_string(st).expect("a selftest outcome serialises"),
        )?;
    }
    Ok(Ended {
        verdict: run_verdict,
        selftest,
    })
}

/// The skipped faults that leave a gap: every one in a gate; in a soak,
/// whose plan never ends and so outlasts a finite spare pool, only a kind
/// that never ran.
pub(super) fn skipped_gaps(
    mode: FaultMode,
    skipped: &[(crate::faults::FaultKind, String, String)],
    ran: &[FaultCoverage],
) -> Vec<String> {
    skipped
        .iter()
        .filter(|(k, _, _)| mode != FaultMode::Soak || !ran.iter().any(|f| f.kind == k.as_str()))
        .map(|(k, role, why)| format!("{} on {role} skipped: {why}", k.as_str()))
        .collect()
}

/// Per tolerance rule that absorbed anything, for the progress line:
/// `: #1 120 <= 1.0 s, #2 4031 <= 45 s` (findings, the latest lag).
pub(super) fn absorbed_brief(status: &online::Status) -> String {
    let parts: Vec<String> = status
        .absorbed()
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| *n > 0)
        .map(|(i, (n, lag))| match lag {
            Some(ns) => format!(
                "#{} {n} <= {}",
                i + 1,
                crate::console::ms_text(ns / 1_000_000)
            ),
            None => format!("#{} {n}", i + 1),
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    }
}

/// One phrase on the faults for the progress line.
pub(super) fn describe_faults(status: &Arc<Mutex<FaultStatus>>, planned: usize) -> String {
    let Ok(s) = status.lock() else {
        return String::new();
    };
    if planned == 0 {
        return String::new();
    }
    let done = format!("faults {}/{planned}", s.done.len());
    match &s.current {
        Some((kind, target, phase)) => format!(
            "{done}, now {} on {target} ({})",
            kind.as_str(),
            serde_json::to_string(phase)
                .unwrap_or_default()
                .trim_matches('"')
        ),
        None => done,
    }
}

/// Snapshots the live counters, the online oracle's backlog and the
/// runner's memory into the ledger.
pub(super) fn record_metrics(
    ledger: &Ledger,
    stats: &Stats,
    oracle: &online::Status,
    clock: Instant,
) {
    let t_ns = clock.elapsed().as_nanos() as u64;
    let mut values = vec![
        ("ops_total", stats.total() as f64),
        ("ops_not_ok", stats.errors() as f64),
        (
            "live_objects",
            stats.live_objects.load(Ordering::Relaxed) as f64,
        ),
        (
            "live_bytes",
            stats.live_bytes.load(Ordering::Relaxed) as f64,
        ),
        ("readbacks", stats.readbacks.load(Ordering::Relaxed) as f64),
        // Reads held until their writers move past them: what the oracle
        // keeps besides per-key state.
        ("oracle_waiting", oracle.waiting() as f64),
    ];
    if let Some(rss) = rss_bytes() {
        values.push(("runner_rss_bytes", rss as f64));
    }
    for (name, value) in values {
        let _ = ledger.send(Record::Metric {
            t_ns,
            name: name.into(),
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultKind;

    fn ran(kind: &str) -> FaultCoverage {
        FaultCoverage {
            id: 1,
            kind: kind.into(),
            target: "n1".into(),
            t_start_ns: 0,
            t_recovered_ns: Some(1),
            recovery_ms: Some(1),
            ops_in_window: 10,
            ok_in_window: 10,
            reads_after: 10,
        }
    }

    #[test]
    fn a_soak_that_ran_out_of_spares_has_no_gap_a_gate_does() {
        let skipped = vec![(
            FaultKind::parse("dead").unwrap(),
            "storage".to_string(),
            "no spare of role storage left".to_string(),
        )];
        let gap = vec!["dead on storage skipped: no spare of role storage left".to_string()];
        assert_eq!(
            skipped_gaps(FaultMode::Soak, &skipped, &[ran("dead")]),
            Vec::<String>::new()
        );
        assert_eq!(
            skipped_gaps(FaultMode::Soak, &skipped, &[ran("kill-start")]),
            gap
        );
        assert_eq!(skipped_gaps(FaultMode::Gate, &skipped, &[ran("dead")]), gap);
    }
}
