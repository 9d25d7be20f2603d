//! One run, from boot to verdict: boot the cluster, open the ledger with
//! the online check on its tap, drive the workload until the duration ends,
//! Ctrl-C or (when asked) the first violation, stop the workers, pass the
//! recovery gate, verify every key (oracle.md §7), and judge the run.
//!
//! The verdict puts correctness first: findings fail the run whatever
//! else happened; a run that could not check enough says so instead of
//! passing (oracle.md §8).
//!
//! Here: the run's configuration, its boot and its judged end. `drive.rs`
//! drives a booted cluster, `print.rs` prints what a run says,
//! `signals.rs` holds Ctrl-C and SIGTERM, `verify.rs` is `faultline verify`.

mod drive;
mod print;
mod signals;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::BootOptions;
use crate::exit::{self, Error};
use crate::ledger::{Ledger, Record, Retention};
use crate::online::Online;
use crate::oracle::{Contract, RunInfo};
use crate::profile::{OracleSection, Profile, Tolerance};
use crate::verdict::{RunVerdict, SelftestOutcome, Thresholds};
use crate::workload::WorkloadConfig;
use drive::drive;
use print::print_selftest;

pub use print::{absorbed_lines, print_coverage, print_findings};
pub use signals::{Interrupts, boot_unless_interrupted};
pub use verify::{Verified, ledger_path, verify};

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
