//! One run, from boot to verdict: boot the cluster, open the ledger with
//! the online check on its tap, drive the workload until the duration ends,
//! Ctrl-C or (when asked) the first violation, stop the workers, pass the
//! recovery gate, verify every key (oracle.md §7), and judge the run.
//!
//! The verdict puts correctness first: findings fail the run whatever
//! else happened; a run that could not check enough says so instead of
//! passing (oracle.md §8).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use crate::cluster::{BootOptions, Cluster};
use crate::exit::{self, Error};
use crate::faults::{FaultStatus, Injector, Planned, SoakPlan, gate_plan};
use crate::history::{OpKind, Outcome};
use crate::ledger::query::FaultCoverage;
use crate::ledger::{Ledger, LedgerReader, Record, Retention};
use crate::online::{self, Judged, Online};
use crate::oracle::{Contract, Coverage, Finding, RunInfo};
use crate::profile::{OracleSection, Profile, Tolerance};
use crate::sys::{free_disk_bytes, rss_bytes};
use crate::verdict::{RunVerdict, SelftestOutcome, Thresholds, judge};
use crate::workload::{Stats, Workload, WorkloadConfig};

/// SIGINT (Ctrl-C) and SIGTERM, registered once for the whole command:
/// a signal delivered while no one is waiting is kept for the next wait,
/// where re-registering per wait would drop it.
pub struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub fn new() -> Interrupts {
        // Registration fails only if the runtime has no signal driver, and
        // the runtime is built with `enable_all`.
        Interrupts {
            int: signal(SignalKind::interrupt()).expect("signal driver is enabled"),
            term: signal(SignalKind::terminate()).expect("signal driver is enabled"),
        }
    }

    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

impl Default for Interrupts {
    fn default() -> Self {
        Interrupts::new()
    }
}

/// Boots the cluster; `None` if Ctrl-C came first.
pub async fn boot_unless_interrupted(
    profile: &Profile,
    opts: &BootOptions,
    interrupts: &mut Interrupts,
) -> Result<Option<Cluster>, Error> {
    tokio::select! {
        c = profile.boot(opts) => Ok(Some(c?)),
        _ = interrupts.next() => {
            // Dropping the boot future drops its supervisor, which kills
            // every node started so far.
            crate::console::say("faultline: interrupted during boot; nothing is left running");
            Ok(None)
        }
    }
}

/// Whether and how faults are injected during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// No faults: the workload alone.
    Off,
    /// The soak's endless plan, until the duration ends.
    Soak,
    /// The gate's finite plan: every kind on every role once; the run
    /// ends when it is through.
    Gate,
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub boot: BootOptions,
    /// The profile with the command line's overrides applied (its
    /// `[faults]` table included).
    pub profile: Profile,
    /// How long the workload runs (soak), or at most (gate).
    pub duration: Duration,
    pub faults: FaultMode,
    pub retention: Option<Retention>,
    /// End the workload when the run directory's filesystem has less
    /// than this free (MiB).
    pub min_free_disk_mb: u64,
    /// End the workload at the first finding.
    pub stop_on_violation: bool,
    pub progress_every: Duration,
    /// The command that reproduces this run, printed last.
    pub reproduce: String,
    /// Run the self-test: mutations through a proxy first, then the fault
    /// plan through the same proxy passing everything.
    pub selftest: bool,
    /// Operational limits, reported apart from correctness.
    pub thresholds: Thresholds,
    /// A copy of junit.xml goes here too.
    pub junit: Option<PathBuf>,
    /// Send the workload through the self-test's proxy and inject this bug
    /// once, after a warm-up, to see a run fail.
    pub inject: Option<crate::selftest::proxy::Mutation>,
}

/// The default floor of free disk under the runs directory (MiB): below
/// it, a run ends its workload rather than fill the host's disk.
pub const MIN_FREE_DISK_MB: u64 = 2048;

/// How long a run warms up before `inject` arms its bug.
const INJECT_AFTER: Duration = Duration::from_secs(5);

/// The oracle's settings, as the ledger's `run_meta` records them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OracleMeta {
    pub contract: Contract,
    pub workers: u32,
    pub read_span_max_ns: u64,
    /// The profile's known deviations.
    #[serde(default)]
    pub tolerate: Vec<Tolerance>,
}

impl OracleMeta {
    pub fn for_workload(oracle: &OracleSection, cfg: &WorkloadConfig) -> OracleMeta {
        OracleMeta {
            contract: oracle.contract,
            tolerate: oracle.tolerate.clone(),
            workers: cfg.workers,
            // A read is one request: its deadline, twice over, plus slack
            // for a busy runner.
            read_span_max_ns: (2 * cfg.total_timeout_ms + 60_000) * 1_000_000,
        }
    }

    pub fn run_info(&self, seed: u64, prefix: String, complete: bool) -> RunInfo {
        RunInfo {
            seed,
            prefix,
            complete,
            contract: self.contract,
            workers: self.workers,
            read_span_max_ns: self.read_span_max_ns,
        }
    }
}

/// How a run ended.
struct Ended {
    verdict: RunVerdict,
    selftest: Option<SelftestOutcome>,
}

/// Boots the cluster, runs the workload (and faults) and judges the run.
pub async fn run(cfg: RunConfig, interrupts: &mut Interrupts) -> Result<u8, Error> {
    let seed = cfg.boot.seed;
    crate::console::say(&format!("faultline: seed {seed}"));
    let mut cluster = match boot_unless_interrupted(&cfg.profile, &cfg.boot, interrupts).await {
        Ok(Some(cluster)) => cluster,
        Ok(None) => return Ok(exit::INFRA),
        Err(Error::Cluster(crate::cluster::ClusterError::WrongProbe(w))) => {
            return record_wrong_probe(&cfg, &w);
        }
        Err(e) => return Err(e),
    };
    crate::console::say(&format!(
        "faultline: {} ready in {:.1} s; run directory {}",
        cluster.profile.name,
        cluster.booted_in().as_secs_f64(),
        cluster.run_dir().display()
    ));
    let result = drive(&cfg, &mut cluster, interrupts).await;
    match &result {
        Err(Error::Interrupted) => {
            crate::console::say("faultline: killing every node now");
            cluster.kill_all().await?;
        }
        _ => {
            crate::console::say("faultline: stopping the cluster");
            tokio::select! {
                r = cluster.shutdown() => r?,
                _ = interrupts.next() => {
                    crate::console::say("faultline: killing every node now");
                    cluster.kill_all().await?;
                }
            }
        }
    }
    let outcome = result?;
    match crate::report::write_all(cluster.run_dir()) {
        Ok(report) => {
            println!(
                "report: {} (also report.html, junit.xml)",
                cluster.run_dir().join("report.md").display()
            );
            if let Some(path) = &cfg.junit
                && let Err(e) = std::fs::write(path, report.junit())
            {
                crate::console::say(&format!("faultline: cannot write {}: {e}", path.display()));
            }
        }
        Err(e) => crate::console::say(&format!("faultline: the report could not be written: {e}")),
    }
    let code = match &outcome.selftest {
        Some(st) => {
            print_selftest(st);
            if st.passed() {
                println!("selftest: PASS (every injected bug caught and named; no other finding)");
            } else {
                println!("selftest: FAIL");
            }
            st.exit_code()
        }
        None => {
            println!("verdict: {}", outcome.verdict.headline());
            outcome.verdict.exit_code()
        }
    };
    println!("run directory: {}", cluster.run_dir().display());
    println!("reproduce: {}", cfg.reproduce);
    Ok(code)
}

/// A boot probe read back wrong data: its write and read go into the
/// run's ledger like any other operations, judged by the online check as
/// usual; the run ends there with the finding (exit 1) and its reports.
/// Booting stopped, so the cluster is gone already.
fn record_wrong_probe(cfg: &RunConfig, w: &crate::cluster::WrongProbe) -> Result<u8, Error> {
    crate::console::say(&format!("faultline: {w}"));
    let ledger_path = w.run_dir.join("ledger.sqlite");
    let oracle_meta = OracleMeta::for_workload(&cfg.profile.oracle, &cfg.profile.workload);
    let (online, tap) = Online::start(
        oracle_meta.run_info(cfg.boot.seed, w.prefix.clone(), true),
        oracle_meta.tolerate.clone(),
    );
    let (ledger, writer) = Ledger::create(&ledger_path, None, Some(tap))?;
    online.attach(ledger.clone());
    let endpoints = [w.endpoint.clone()];
    for (key, value) in run_meta(cfg, &cfg.profile, &w.prefix, &endpoints, &oracle_meta) {
        ledger.send(Record::Meta {
            key: key.into(),
            value,
        })?;
    }
    for op in &w.ops {
        ledger.send(Record::Op(Box::new(op.clone())))?;
    }
    ledger.flush()?;
    let judged = online.finish();
    ledger.send(Record::Meta {
        key: "finished_at".into(),
        value: crate::sys::utc_now(),
    })?;
    drop(ledger);
    writer.finish()?;
    let booting = format!("booting stopped: {w}");
    let verdict = crate::verdict::booting_stopped(judged.as_ref(), booting);
    crate::ledger::set_meta(
        &ledger_path,
        "verdict",
        &serde_json::to_string(&verdict).expect("a verdict serialises"),
    )?;
    if let Some(j) = &judged {
        print_findings(j, &oracle_meta.tolerate, 10);
    }
    if let Err(e) = crate::report::write_all(&w.run_dir) {
        crate::console::say(&format!("faultline: the report could not be written: {e}"));
    }
    println!("verdict: {}", verdict.headline());
    println!("run directory: {}", w.run_dir.display());
    println!("reproduce: {}", cfg.reproduce);
    Ok(verdict.exit_code())
}

fn print_selftest(st: &SelftestOutcome) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "injected",
        "expected",
        "caught",
        "detection",
        "attempts",
        "also named",
        "key",
    ]);
    for c in &st.caught {
        table.add_row(vec![
            c.mutation.as_str().to_string(),
            c.expected.as_str().to_string(),
            if c.caught {
                "yes".into()
            } else {
                format!("NO: {}", c.detail)
            },
            c.detection_ms.map_or("-".into(), |ms| format!("{ms} ms")),
            c.attempts.to_string(),
            c.named
                .iter()
                .filter(|n| **n != c.expected)
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            c.key.clone().unwrap_or_default(),
        ]);
    }
    println!("{table}");
    let times: Vec<u64> = st.caught.iter().filter_map(|c| c.detection_ms).collect();
    if let (Some(p50), Some(p99)) = (
        crate::selftest::percentile(&times, 50.0),
        crate::selftest::percentile(&times, 99.0),
    ) {
        println!(
            "detection latency: p50 {p50} ms, p99 {p99} ms over {} injections",
            times.len()
        );
    }
    if st.unexpected.is_empty() {
        println!("clean phase: no finding outside the known deviations and the damaged keys");
    } else {
        println!(
            "clean phase: {} unexpected findings, first: {}",
            st.unexpected.len(),
            online::summary(&st.unexpected[0])
        );
    }
}

/// The binary `update` faults move to, installed if the profile names a
/// version; `None` to restart each node on its own binary.
async fn update_binary(cfg: &RunConfig) -> Result<Option<PathBuf>, Error> {
    let Some(version) = &cfg.profile.faults.update_version else {
        return Ok(None);
    };
    let (krate, name) = match (&cfg.profile.cluster.garage, &cfg.profile.cluster.binary) {
        (Some(_), _) => ("garage".to_string(), "garage".to_string()),
        (None, Some(b)) => (b.krate.clone(), b.name.clone().unwrap_or(b.krate.clone())),
        (None, None) => {
            return Err(Error::Usage(
                "faults.update_version needs a profile that installs its binary ([garage] or [binary])"
                    .into(),
            ));
        }
    };
    let bin = crate::cluster::provision::ensure_binary(&cfg.boot.cache_dir, &krate, version, &name)
        .await
        .map_err(crate::cluster::ClusterError::from)?;
    Ok(Some(bin))
}

/// The facts `run_meta` records about a run.
fn run_meta(
    cfg: &RunConfig,
    profile: &Profile,
    prefix: &str,
    endpoints: &[String],
    oracle_meta: &OracleMeta,
) -> Vec<(&'static str, String)> {
    vec![
        ("seed", cfg.boot.seed.to_string()),
        ("profile", profile.cluster.name.clone()),
        ("profile_path", cfg.boot.profile.display().to_string()),
        ("tool_version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "store_version",
            profile
                .cluster
                .garage
                .as_ref()
                .map(|g| g.version.clone())
                .or_else(|| profile.cluster.binary.as_ref().map(|b| b.version.clone()))
                .unwrap_or_default(),
        ),
        (
            "command_line",
            std::env::args().collect::<Vec<_>>().join(" "),
        ),
        ("reproduce", cfg.reproduce.clone()),
        ("prefix", prefix.to_string()),
        (
            "endpoints",
            serde_json::to_string(endpoints).unwrap_or_default(),
        ),
        (
            "workload",
            serde_json::to_string(&cfg.profile.workload).unwrap_or_default(),
        ),
        (
            "oracle",
            serde_json::to_string(oracle_meta).expect("oracle settings serialise"),
        ),
        (
            "faults",
            match cfg.faults {
                FaultMode::Off => "off".to_string(),
                mode => serde_json::json!({
                    "mode": if mode == FaultMode::Gate { "gate" } else { "soak" },
                    "settings": cfg.profile.faults,
                })
                .to_string(),
            },
        ),
        ("started_at", crate::sys::utc_now()),
        ("duration_ms", cfg.duration.as_millis().to_string()),
    ]
}

/// Everything between boot and shutdown; the cluster is torn down by the
/// caller whatever this returns (at once on `Error::Interrupted`).
async fn drive(
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
    let plan: Vec<Planned> = match cfg.faults {
        FaultMode::Off => Vec::new(),
        FaultMode::Gate => gate_plan(seed, &cfg.profile.faults.kinds, &roles),
        // Enough for any duration: one fault takes at least the interval.
        FaultMode::Soak => SoakPlan::new(seed, &cfg.profile.faults, &roles)
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
fn skipped_gaps(
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
fn absorbed_brief(status: &online::Status) -> String {
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
fn describe_faults(status: &Arc<Mutex<FaultStatus>>, planned: usize) -> String {
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

fn print_faults(faults: &[FaultCoverage]) {
    if faults.is_empty() {
        return;
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec![
        "fault",
        "kind",
        "target",
        "recovery",
        "ok during",
        "reads after",
    ]);
    for f in faults {
        table.add_row(vec![
            format!("#{}", f.id),
            f.kind.clone(),
            f.target.clone(),
            f.recovery_text(),
            f.availability_text(),
            f.reads_after.to_string(),
        ]);
    }
    println!("{table}");
}

/// Snapshots the live counters, the online oracle's backlog and the
/// runner's memory into the ledger.
fn record_metrics(ledger: &Ledger, stats: &Stats, oracle: &online::Status, clock: Instant) {
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

fn print_summary(stats: &Stats, elapsed: Duration, records: u64, ledger: &Path) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["op", "ok", "fail", "ambiguous", "unavailable"]);
    for kind in OpKind::ALL {
        let mut cells = vec![kind.as_str().to_string()];
        cells.extend(
            [
                Outcome::Ok,
                Outcome::Fail,
                Outcome::Ambiguous,
                Outcome::Unavailable,
            ]
            .into_iter()
            .map(|o| stats.count(kind, o).to_string()),
        );
        table.add_row(cells);
    }
    println!("{table}");
    println!(
        "faultline: {} operations in {:.0} s ({:.0} ops/s), {} ledger records in {}",
        stats.total(),
        elapsed.as_secs_f64(),
        stats.total() as f64 / elapsed.as_secs_f64().max(0.001),
        records,
        ledger.display()
    );
}

/// Prints what each tolerance rule absorbed, then up to `show` findings
/// that fail the run as a table and their counts per class.
pub fn print_findings(judged: &Judged, tolerate: &[Tolerance], show: usize) {
    for line in absorbed_lines(judged, tolerate) {
        println!("{line}");
    }
    let failing = &judged.violations;
    if failing.is_empty() {
        return;
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["class", "key", "op", "expected", "seen", "writes"]);
    for f in failing.iter().take(show) {
        table.add_row(vec![
            f.class.as_str().to_string(),
            f.key.clone().unwrap_or_default(),
            f.op_id.to_string(),
            f.expected.clone(),
            f.seen.clone(),
            f.write_ids()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    println!("{table}");
    let mut by_class = std::collections::BTreeMap::new();
    for f in failing {
        *by_class.entry(f.class.as_str()).or_insert(0u64) += 1;
    }
    let counts: Vec<String> = by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
    println!("findings: {}", counts.join(", "));
}

/// One line per tolerance rule that absorbed findings: how many, the
/// longest time after the deciding write, and loudly any absorbed in
/// the final verification.
pub fn absorbed_lines(judged: &Judged, tolerate: &[Tolerance]) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, (rule, a)) in tolerate.iter().zip(&judged.absorbed).enumerate() {
        if a.findings == 0 {
            continue;
        }
        let mut line = format!(
            "known deviation, rule #{} {} ({}): {} absorbed",
            i + 1,
            rule.class.as_str(),
            rule.bounds(),
            a.findings
        );
        if let Some(lag) = a.max_since_ack_ns {
            line += &format!(
                ", the latest {} after its deciding write",
                crate::console::ms_text(lag / 1_000_000)
            );
        }
        if a.final_reads > 0 {
            line += &format!(
                "; {} OF THEM IN THE FINAL VERIFICATION, after the cluster recovered",
                a.final_reads
            );
        }
        lines.push(line);
    }
    lines
}

pub fn print_coverage(c: &Coverage) {
    println!(
        "checked: {} reads ({} in the final verification), {} LIST pages ({} key checks); {} writes acknowledged, {} ambiguous; {} reads unavailable, {} undecidable",
        c.reads_checked,
        c.final_reads_checked,
        c.list_pages_checked,
        c.list_keys_checked,
        c.writes_acked,
        c.ambiguous_writes,
        c.reads_unavailable,
        c.reads_unknown
    );
}

/// The ledger file of a run directory (or the file itself).
pub fn ledger_path(run: &Path) -> Result<PathBuf, Error> {
    let path = if run.is_dir() {
        run.join("ledger.sqlite")
    } else {
        run.to_path_buf()
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Usage(format!("{}: no ledger there", path.display())))
    }
}

/// A stored run, re-checked offline.
pub struct Verified {
    pub info: RunInfo,
    pub tolerate: Vec<Tolerance>,
    /// Every finding, in the order the oracle produced them.
    pub findings: Vec<Finding>,
    /// The same findings, judged by the profile's tolerances.
    pub judged: Judged,
    pub operations: u64,
    /// What the online check recorded in the ledger, of the operations
    /// it still holds (retention folds old reads, never their findings).
    pub recorded: Vec<crate::history::FindingRecord>,
}

impl Verified {
    /// Did this check find exactly the violations (class and operation)
    /// the online check recorded, in the same order?
    pub fn agrees_with_online(&self) -> bool {
        self.findings
            .iter()
            .map(|f| (f.class.as_str(), Some(f.op_id)))
            .eq(self.recorded.iter().map(|f| (f.class.as_str(), f.op_id)))
    }
}

/// Re-checks a ledger with the same oracle, fed in the same order.
pub fn verify(path: &Path) -> Result<Verified, Error> {
    let ledger = LedgerReader::open(path)?;
    let meta = |key: &str| -> Result<String, Error> {
        ledger
            .meta(key)?
            .ok_or_else(|| Error::Usage(format!("{}: run_meta has no {key}", path.display())))
    };
    let seed: u64 = meta("seed")?
        .parse()
        .map_err(|_| Error::Usage(format!("{}: run_meta seed is not a number", path.display())))?;
    let oracle: OracleMeta = serde_json::from_str(&meta("oracle")?).map_err(|e| {
        Error::Usage(format!(
            "{}: run_meta oracle is not readable: {e}",
            path.display()
        ))
    })?;
    let complete = ledger.meta("finished_at")?.is_some();
    let info = oracle.run_info(seed, meta("prefix")?, complete);
    let mut checker = crate::oracle::Oracle::new(info.clone());
    let mut findings = Vec::new();
    let mut operations = 0u64;
    // Fed in batches, so the oracle can look keys up ahead (`observe_all`).
    const BATCH: usize = 4096;
    let mut batch = Vec::with_capacity(BATCH);
    ledger.for_each_op(|op| {
        operations += 1;
        batch.push(op);
        if batch.len() == BATCH {
            checker.observe_all(&mut batch);
            findings.extend(checker.take_findings());
        }
    })?;
    checker.observe_all(&mut batch);
    findings.extend(checker.take_findings());
    let verdict = checker.finish();
    findings.extend(verdict.findings);
    // Judged with every fault window the ledger has: the online check
    // knew each one by the time the operations it covers arrived.
    let faults = ledger.faults()?;
    let mut judged = Judged::new(oracle.tolerate.len());
    for f in &findings {
        judged.take(&oracle.tolerate, f.clone(), &faults);
    }
    judged.coverage = verdict.coverage;
    Ok(Verified {
        info,
        tolerate: oracle.tolerate,
        findings,
        judged,
        operations,
        recorded: ledger.findings_of_kept_ops()?,
    })
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
