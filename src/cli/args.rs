//! The command line as clap reads it: the subcommands, their arguments,
//! and how arguments become boot options, a workload and a fault plan.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cluster::{BootOptions, provision};
use crate::exit::Error;
use crate::profile::Profile;
use crate::run;

#[derive(Debug, Parser)]
#[command(
    name = "faultline",
    version,
    about = "Chaos runner for distributed object stores"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a cluster from a profile, print how to reach it, and keep it
    /// running until Ctrl-C, then tear it down.
    Up(UpArgs),
    /// Boot a cluster and drive it with the seeded workload and one fault
    /// at a time for a while, checking every operation as it completes.
    Soak(SoakArgs),
    /// A pre-release gate: fire every configured fault kind on every role
    /// once, verify every key, exit 0 only if nothing was wrong.
    Gate(GateArgs),
    /// Prove the oracle on a real cluster: inject each kind of bug through a
    /// mutating proxy and require it caught and named, then run faults
    /// through the proxy passing everything and require no finding.
    Selftest(SelftestArgs),
    /// Re-check a run's ledger against the oracle's contract; exit 1 on findings.
    Verify(VerifyArgs),
    /// Render a run's report.md, report.html and junit.xml again from its ledger.
    Report(RunArg),
    /// Run SQL against a run's ledger (read-only), or a preset query.
    Query(QueryArgs),
    /// A key's timeline: its operations, the faults around them, its findings.
    Explain(ExplainArgs),
    /// List past runs with their verdicts.
    Runs(RunsArgs),
    /// Install the binary a profile needs into the cache, without booting.
    Install(InstallArgs),
    /// Measure the runner's own parts (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Heal what a run left applied (its nftables table), from its run
    /// directory: for a runner that died mid-fault.
    Recover(RunArg),
    /// The guardian a run starts with its first network fault: deletes
    /// the run's table once the run is gone (internal).
    #[command(hide = true)]
    GuardLinks {
        #[arg(long)]
        lease: PathBuf,
        #[arg(long)]
        table: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Offline verification throughput on a generated correct history.
    Oracle(SynthArgs),
    /// The ledger writer's commit rate on a generated operation stream.
    Ledger {
        #[command(flatten)]
        synth: SynthArgs,
        /// The new ledger file to write (must not exist).
        #[arg(long, default_value = "bench-ledger.sqlite")]
        path: PathBuf,
    },
    /// Runner CPU per operation and throughput, with ledger and oracle
    /// against a raw mode without both, on one booted cluster.
    Runner(BenchRunnerArgs),
    /// The network faults' relay against going direct: added round-trip
    /// time, stream rate and CPU per MiB, on loopback.
    Relay {
        /// Alternating pairs of phases (direct, relayed).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Round trips of 1 KiB each way per phase.
        #[arg(long, default_value_t = 20_000)]
        exchanges: u32,
        /// MiB streamed one way per phase.
        #[arg(long, default_value_t = 1024)]
        mib: u32,
    },
}

/// A generated correct history (`oracle::synth`).
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Operations in the history.
    #[arg(long, default_value_t = 1_000_000)]
    pub ops: usize,
    /// Keys they spread over.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// History seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct BenchRunnerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// How long each phase runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub phase: Duration,
    /// Full phases, each between two raw ones.
    #[arg(long, default_value_t = 12)]
    pub rounds: u32,
}

#[derive(Debug, Args)]
pub struct RunArg {
    /// A run directory.
    pub run: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Every finding, failing ones first.
    Findings,
    /// Every fault window with its recovery time.
    Faults,
    /// Latency percentiles per operation kind.
    Latency,
    /// Operations and successes during each fault window.
    Availability,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// A run directory (or its ledger.sqlite).
    pub run: PathBuf,
    /// The SQL to run (the schema is in README.md).
    #[arg(required_unless_present = "preset", conflicts_with = "preset")]
    pub sql: Option<String>,
    /// A ready-made query instead of SQL.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Print JSON (an array of objects).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV.
    #[arg(long)]
    pub csv: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A run directory (or its ledger.sqlite).
    pub run: PathBuf,
    /// The key, e.g. faultline/<run>/w003/k00012.
    #[arg(long)]
    pub key: String,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Where run directories are.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A run directory (or its ledger.sqlite).
    pub run: PathBuf,
    /// How many findings to print in full.
    #[arg(long, default_value_t = 20)]
    pub show: usize,
}

#[derive(Debug, Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// How long to run the workload, e.g. 90s, 10m, 4h.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    pub progress_every_s: u64,
    /// Prune old history so long soaks stay bounded on disk (full history
    /// is kept near faults and findings and for the last 10 minutes).
    #[arg(long, value_enum, default_value_t = RetentionMode::Auto)]
    pub retention: RetentionMode,
    /// With retention: above this many MiB of ledger, history near old
    /// fault windows is folded too (history near findings never is).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub ledger_budget_mb: u64,
    /// End the workload (then heal, verify and report; exit 3) when the
    /// runs directory's filesystem has less than this many MiB free: the
    /// nodes' data grows with the write rate for as long as the soak runs.
    #[arg(long, default_value_t = run::MIN_FREE_DISK_MB, value_name = "MIB")]
    pub min_free_disk_mb: u64,
    /// End the workload at the first violation (then verify and report).
    #[arg(long)]
    pub stop_on_violation: bool,
}

#[derive(Debug, Args)]
pub struct GateArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Give up (exit 4) if the plan is not through by then.
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    pub progress_every_s: u64,
    /// Keep going after the first violation (the gate stops at it by default).
    #[arg(long)]
    pub keep_going: bool,
    /// Fail (exit 3) if any fault takes longer than this to recover, e.g. 60s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_recovery: Option<Duration>,
    /// Fail (exit 3) if less than this fraction of operations succeeds
    /// during any fault window, e.g. 0.5.
    #[arg(long, value_parser = fraction)]
    pub min_availability: Option<f64>,
    /// Write the JUnit XML here too (it is always in the run directory).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Send the workload through the self-test's mutating proxy and inject
    /// this bug once, to see the gate fail: unstored-put, unapplied-delete,
    /// older-generation, flipped-byte, other-keys-body, shifted-range,
    /// list-entry-dropped, list-entry-added, wrong-head-length.
    #[arg(long, value_parser = mutation)]
    pub inject: Option<crate::selftest::proxy::Mutation>,
}

pub(super) fn mutation(s: &str) -> Result<crate::selftest::proxy::Mutation, String> {
    use crate::selftest::proxy::Mutation;
    Mutation::parse(s).ok_or_else(|| {
        let known: Vec<&str> = Mutation::ALL.iter().map(|m| m.as_str()).collect();
        format!("unknown bug {s:?}; expected one of {}", known.join(", "))
    })
}

pub(super) fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction from 0 to 1"))
    }
}

#[derive(Debug, Args)]
pub struct SelftestArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// The faults of the clean phase [default: kill-start,stop-start,restart].
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Give up (exit 4) if it is not through by then.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    pub progress_every_s: u64,
}

/// The self-test's clean phase, unless told otherwise: the three faults
/// every store must ride out.
pub(super) const SELFTEST_FAULTS: &str = "kill-start,stop-start,restart";

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Concurrent workers [default: the profile's, else 24].
    #[arg(long)]
    pub workers: Option<u32>,
    /// Operation mix as weights, e.g. write=35,delete=8,get=20,head=12,range=17,list=8.
    #[arg(long)]
    pub mix: Option<String>,
}

impl WorkloadArgs {
    pub(super) fn apply(&self, profile: &mut Profile) -> Result<(), Error> {
        if let Some(w) = self.workers {
            if w == 0 {
                return Err(Error::Usage("--workers must be at least 1".into()));
            }
            profile.workload.workers = w;
        }
        if let Some(mix) = &self.mix {
            profile.workload.mix = crate::workload::plan::Mix::parse(mix).map_err(Error::Usage)?;
        }
        Ok(())
    }

    /// The flags as given, for the command that reproduces the run.
    pub(super) fn flags(&self) -> String {
        let mut out = String::new();
        if let Some(w) = self.workers {
            out += &format!(" --workers {w}");
        }
        if let Some(m) = &self.mix {
            out += &format!(" --mix {m}");
        }
        out
    }
}

#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Fault kinds to inject, e.g. kill-start,dead, or "none" [default: the
    /// profile's, else every kind the cluster can have: kill-start,
    /// stop-start, restart, update, rolling-update, offline, dead,
    /// partition-node, partition-one-way, partition-halves,
    /// partition-bridge, partition-ring (4 nodes or more), link-loss,
    /// link-latency, link-bandwidth, client-latency, client-bandwidth,
    /// client-blackhole, client-reset, client-slicer, client-limit-data].
    #[arg(long)]
    pub faults: Option<String>,
    /// Clean workload between one fault's recovery and the next, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub fault_every: Option<Duration>,
    /// How long a killed or offline node stays down, e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hold: Option<Duration>,
    /// How long a SIGSTOPped node stays stopped, e.g. 75s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub stop_hold: Option<Duration>,
    /// How long a network partition stays in place, e.g. 75s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub net_hold: Option<Duration>,
    /// How long a degraded link or client path stays degraded, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub link_hold: Option<Duration>,
    /// The version `update` faults move to (installed on first use).
    #[arg(long)]
    pub update_version: Option<String>,
}

impl FaultArgs {
    /// Applies the flags to the profile's `[faults]`; false for "none".
    pub(super) fn apply(&self, profile: &mut Profile) -> Result<bool, Error> {
        let f = &mut profile.faults;
        match self.faults.as_deref() {
            Some("none") => return Ok(false),
            Some(list) => {
                f.kinds = crate::faults::FaultKind::parse_list(list)
                    .map_err(|e| Error::Usage(format!("--faults: {e}")))?;
                if f.kinds.is_empty() {
                    return Err(Error::Usage(
                        "--faults: name at least one kind, or none".into(),
                    ));
                }
                f.kinds_for(profile.cluster.nodes_in_service(), true)
                    .map_err(|e| Error::Usage(format!("--faults: {e}")))?;
            }
            None => {}
        }
        // Before anything starts: a network kind named (here or in the
        // profile) by a process that cannot apply its rules.
        let net_admin = crate::net::has_net_admin();
        f.kinds_for(profile.cluster.nodes_in_service(), net_admin)
            .map_err(|e| Error::Usage(format!("faults: {e}")))?;
        if !net_admin && f.kinds == crate::faults::FaultKind::all() {
            crate::console::say(
                "faultline: network faults left out: they need CAP_NET_ADMIN (run as root)",
            );
        }
        let ms = |d: Duration| d.as_millis() as u64;
        if let Some(d) = self.fault_every {
            f.interval_ms = ms(d);
        }
        if let Some(d) = self.hold {
            f.hold_ms = ms(d);
        }
        if let Some(d) = self.stop_hold {
            f.stop_hold_ms = ms(d);
        }
        if let Some(d) = self.net_hold {
            f.net_hold_ms = ms(d);
        }
        if let Some(d) = self.link_hold {
            f.link_hold_ms = ms(d);
        }
        if let Some(v) = &self.update_version {
            f.update_version = Some(v.clone());
        }
        Ok(true)
    }

    pub(super) fn flags(&self) -> String {
        let mut out = String::new();
        let d = |d: &Duration| humantime::format_duration(*d).to_string();
        if let Some(f) = &self.faults {
            out += &format!(" --faults {f}");
        }
        for (flag, value) in [
            ("--fault-every", &self.fault_every),
            ("--hold", &self.hold),
            ("--stop-hold", &self.stop_hold),
            ("--net-hold", &self.net_hold),
            ("--link-hold", &self.link_hold),
        ] {
            if let Some(v) = value {
                out += &format!(" {flag} {}", d(v));
            }
        }
        if let Some(v) = &self.update_version {
            out += &format!(" --update-version {v}");
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RetentionMode {
    /// On for runs of 30 minutes or more.
    Auto,
    On,
    Off,
}

/// Runs at least this long get retention under `--retention auto`.
pub(super) const RETENTION_AUTO_MIN: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Cluster profile (TOML).
    #[arg(long, default_value = "configs/garage-3.toml")]
    pub profile: PathBuf,
    /// Run seed; every random choice (ports aside) derives from it. Random if omitted.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where run directories are created.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Binary cache, outside the work tree [default: $XDG_CACHE_HOME/faultline or ~/.cache/faultline].
    #[arg(long, env = "FAULTLINE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use this Garage (or generic `{bin}`) binary instead of installing the profile's version.
    #[arg(long, env = "FAULTLINE_GARAGE_BIN")]
    pub garage_bin: Option<PathBuf>,
    /// Send the workload to this S3 endpoint instead of the nodes' own (repeatable).
    #[arg(long = "s3-endpoint", value_name = "URL")]
    pub s3_endpoints: Vec<String>,
    /// Allow --s3-endpoint URLs outside loopback (127.0.0.0/8, ::1, localhost).
    #[arg(long)]
    pub allow_remote: bool,
    /// Use fixed ports from this base instead of the profile's port_base.
    #[arg(long)]
    pub port_base: Option<u16>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Cluster profile (TOML) whose binary to install.
    #[arg(long, default_value = "configs/garage-3.toml")]
    pub profile: PathBuf,
    /// Binary cache [default: $XDG_CACHE_HOME/faultline or ~/.cache/faultline].
    #[arg(long, env = "FAULTLINE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl ClusterArgs {
    pub(super) fn boot_options(&self) -> BootOptions {
        BootOptions {
            profile: self.profile.clone(),
            runs_dir: self.runs_dir.clone(),
            seed: self.seed.unwrap_or_else(rand::random),
            cache_dir: self
                .cache_dir
                .clone()
                .unwrap_or_else(provision::default_cache_dir),
            binary_override: self.garage_bin.clone(),
            s3_endpoints: self.s3_endpoints.clone(),
            allow_remote: self.allow_remote,
            port_base: self.port_base,
        }
    }
}
