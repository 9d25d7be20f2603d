//! Command-line interface: one subcommand enum (clap derive), and the code
//! that runs each subcommand and turns its outcome into an exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use crate::cluster::profile::Profile;
use crate::cluster::{BootOptions, Cluster, ClusterError, provision};
use crate::exit::{self, Error};
use crate::history::{OpKind, Outcome};
use crate::ledger::{Ledger, Record};
use crate::workload::Workload;

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
    /// Boot a cluster and drive it with the seeded workload for a while,
    /// recording every operation in the run's ledger.sqlite.
    Soak(SoakArgs),
    /// Re-check a run's ledger against the oracle's contract; exit 1 on findings.
    Verify(VerifyArgs),
    /// Install the binary a profile needs into the cache, without booting.
    Install(InstallArgs),
    /// Measure the runner's own parts (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Offline verification throughput on a generated correct history.
    Oracle {
        /// Operations in the generated history.
        #[arg(long, default_value_t = 1_000_000)]
        ops: usize,
        /// Keys they spread over.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        /// History seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
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
    /// Concurrent workers [default: the profile's, else 24].
    #[arg(long)]
    pub workers: Option<u32>,
    /// Operation mix as weights, e.g. write=35,delete=8,get=20,head=12,range=17,list=8.
    #[arg(long)]
    pub mix: Option<String>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    pub progress_every_s: u64,
    /// Prune old history so long soaks stay bounded on disk (full history
    /// is kept near faults and findings and for the last 10 minutes).
    #[arg(long, value_enum, default_value_t = RetentionMode::Auto)]
    pub retention: RetentionMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RetentionMode {
    /// On for runs of 30 minutes or more.
    Auto,
    On,
    Off,
}

/// Runs at least this long get retention under `--retention auto`.
const RETENTION_AUTO_MIN: Duration = Duration::from_secs(30 * 60);

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
    fn boot_options(&self) -> BootOptions {
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

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultline: cannot start the async runtime: {e}");
            return exit::INFRA;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up(args).await,
            Command::Soak(args) => soak(args).await,
            Command::Verify(args) => verify(args),
            Command::Bench(BenchCommand::Oracle { ops, keys, seed }) => {
                bench_oracle(ops, keys, seed)
            }
            Command::Install(args) => install(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            exit::for_error(&e)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FAULTLINE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("faultline=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .try_init();
}

async fn install(args: InstallArgs) -> Result<u8, Error> {
    let profile = Profile::load(&args.profile)?;
    let cache = args.cache_dir.unwrap_or_else(provision::default_cache_dir);
    let (krate, version, name) = match (&profile.garage, &profile.binary) {
        (Some(g), _) => (
            "garage".to_string(),
            g.version.clone(),
            "garage".to_string(),
        ),
        (None, Some(b)) => (
            b.krate.clone(),
            b.version.clone(),
            b.name.clone().unwrap_or(b.krate.clone()),
        ),
        (None, None) => {
            println!(
                "{}: this profile installs no binary",
                args.profile.display()
            );
            return Ok(exit::PASS);
        }
    };
    let bin = provision::ensure_binary(&cache, &krate, &version, &name)
        .await
        .map_err(ClusterError::from)?;
    println!("{}", bin.display());
    Ok(exit::PASS)
}

/// SIGINT (Ctrl-C) and SIGTERM, registered once for the whole command:
/// a signal delivered while no one is waiting is kept for the next wait,
/// where re-registering per wait would drop it.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Interrupts {
        // Registration fails only if the runtime has no signal driver, and
        // this runtime is built with `enable_all`.
        Interrupts {
            int: signal(SignalKind::interrupt()).expect("signal driver is enabled"),
            term: signal(SignalKind::terminate()).expect("signal driver is enabled"),
        }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Boots the cluster; `None` if Ctrl-C came first.
async fn boot_unless_interrupted(
    opts: &BootOptions,
    interrupts: &mut Interrupts,
) -> Result<Option<Cluster>, Error> {
    tokio::select! {
        c = Cluster::boot(opts) => Ok(Some(c?)),
        _ = interrupts.next() => {
            // Dropping the boot future drops its supervisor, which kills
            // every node started so far.
            eprintln!("faultline: interrupted during boot; nothing is left running");
            Ok(None)
        }
    }
}

async fn up(args: UpArgs) -> Result<u8, Error> {
    let mut interrupts = Interrupts::new();
    let opts = args.cluster.boot_options();
    eprintln!("faultline: seed {}", opts.seed);
    let Some(cluster) = boot_unless_interrupted(&opts, &mut interrupts).await? else {
        return Ok(exit::INFRA);
    };
    print_ready(&cluster);
    let mut watch = tokio::time::interval(Duration::from_secs(2));
    let mut reported = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = interrupts.next() => break,
            _ = watch.tick() => {
                for node in cluster.nodes.iter().filter(|n| n.pid.is_some()) {
                    if let Ok(Some(crate::cluster::supervisor::ProcState::Exited(status))) = cluster.node_state(&node.name).await
                        && reported.insert(node.name.clone())
                    {
                        eprintln!(
                            "faultline: node {} exited ({}); see {}",
                            node.name,
                            crate::cluster::supervisor::describe_exit(status),
                            node.log.display()
                        );
                    }
                }
            }
        }
    }
    eprintln!("faultline: stopping the cluster (Ctrl-C again to kill it at once)");
    tokio::select! {
        r = cluster.shutdown() => r?,
        _ = interrupts.next() => {
            eprintln!("faultline: killing every node now");
            cluster.kill_all().await?;
        }
    }
    eprintln!(
        "faultline: cluster stopped; run directory kept at {}",
        cluster.run_dir().display()
    );
    Ok(exit::PASS)
}

fn print_ready(cluster: &Cluster) {
    let run = cluster.run_dir();
    let s3 = &cluster.s3;
    println!(
        "faultline: {} ready in {:.1} s (seed {})",
        cluster.profile.name,
        cluster.booted_in().as_secs_f64(),
        cluster.seed
    );
    println!("  run directory   {}", run.display());
    println!("  S3 endpoints    {}", s3.endpoints.join(" "));
    println!("  region          {}", s3.region);
    println!("  bucket          {}", s3.bucket);
    println!("  access key id   {}", s3.access_key_id);
    println!(
        "  secret key in   {} (mode 0600; AWS credentials file, profile \"faultline\")",
        run.join("credentials").display()
    );
    for node in cluster.nodes.iter().filter(|n| !n.spare) {
        println!(
            "  node {:<10} pid {:<8} log {}",
            node.name,
            node.pid.map(|p| p.to_string()).unwrap_or_default(),
            node.log.display()
        );
    }
    let spares: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| n.spare)
        .map(|n| n.name.as_str())
        .collect();
    if !spares.is_empty() {
        println!(
            "  spares          {} (configured, not started)",
            spares.join(" ")
        );
    }
    println!("  commands log    {}", cluster.commands_log().display());
    println!("  cluster state   {}", run.join("cluster.json").display());
    println!(
        "  try it          AWS_SHARED_CREDENTIALS_FILE={} aws --profile faultline --region {} --endpoint-url {} s3 ls s3://{}",
        run.join("credentials").display(),
        s3.region,
        s3.endpoints.first().map(String::as_str).unwrap_or_default(),
        s3.bucket
    );
    println!("Ctrl-C stops the cluster and tears it down.");
}

async fn soak(args: SoakArgs) -> Result<u8, Error> {
    let mut interrupts = Interrupts::new();
    let opts = args.cluster.boot_options();
    let mut profile = Profile::load(&opts.profile)?;
    if let Some(w) = args.workers {
        if w == 0 {
            return Err(Error::Usage("--workers must be at least 1".into()));
        }
        profile.workload.workers = w;
    }
    if let Some(mix) = &args.mix {
        profile.workload.mix = crate::workload::plan::Mix::parse(mix).map_err(Error::Usage)?;
    }
    eprintln!("faultline: seed {}", opts.seed);
    let Some(cluster) = boot_unless_interrupted(&opts, &mut interrupts).await? else {
        return Ok(exit::INFRA);
    };
    eprintln!(
        "faultline: {} ready in {:.1} s; run directory {}",
        cluster.profile.name,
        cluster.booted_in().as_secs_f64(),
        cluster.run_dir().display()
    );
    let ledger_path = cluster.run_dir().join("ledger.sqlite");
    let retention = match args.retention {
        RetentionMode::On => Some(crate::ledger::Retention::default()),
        RetentionMode::Off => None,
        RetentionMode::Auto => {
            (args.duration >= RETENTION_AUTO_MIN).then(crate::ledger::Retention::default)
        }
    };
    eprintln!(
        "faultline: ledger retention {}",
        retention.map_or_else(
            || "off: full history".to_string(),
            |r| format!("on: {}", r.describe())
        )
    );
    let (ledger, writer) = Ledger::create(&ledger_path, retention)?;
    let run_name = cluster
        .run_dir()
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let prefix = format!("faultline/{run_name}/");
    let cfg = profile.workload.clone();
    let meta = [
        ("seed", opts.seed.to_string()),
        ("profile", cluster.profile.name.clone()),
        ("profile_path", opts.profile.display().to_string()),
        ("tool_version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "store_version",
            cluster
                .profile
                .garage
                .as_ref()
                .map(|g| g.version.clone())
                .unwrap_or_default(),
        ),
        (
            "command_line",
            std::env::args().collect::<Vec<_>>().join(" "),
        ),
        ("prefix", prefix.clone()),
        (
            "endpoints",
            serde_json::to_string(&cluster.s3.endpoints).unwrap_or_default(),
        ),
        ("workload", serde_json::to_string(&cfg).unwrap_or_default()),
        ("started_at", crate::cluster::utc_now()),
        ("duration_ms", args.duration.as_millis().to_string()),
    ];
    for (key, value) in meta {
        ledger.send(Record::Meta {
            key: key.into(),
            value,
        })?;
    }
    let timeouts = Workload::s3_timeouts(&cfg);
    let clients = cluster
        .s3
        .endpoints
        .iter()
        .map(|ep| cluster.s3.client(ep, timeouts))
        .collect();
    let clock = std::time::Instant::now();
    let workload = Workload::new(
        cfg.clone(),
        opts.seed,
        prefix,
        clients,
        ledger.clone(),
        clock,
    );
    let stats = workload.stats.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut running = tokio::spawn(workload.run(stop_rx));
    let deadline = tokio::time::sleep(args.duration);
    tokio::pin!(deadline);
    let mut progress = tokio::time::interval(Duration::from_secs(args.progress_every_s.max(1)));
    let mut snapshot = tokio::time::interval(Duration::from_secs(5));
    let mut last_total = 0u64;
    let mut finished_early = None;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = interrupts.next() => {
                eprintln!("faultline: Ctrl-C: stopping the workload (Ctrl-C again during teardown kills the nodes)");
                break;
            }
            r = &mut running => { finished_early = Some(r); break; }
            _ = snapshot.tick() => record_metrics(&ledger, &stats, clock),
            _ = progress.tick() => {
                let total = stats.total();
                eprintln!(
                    "faultline: {:>6.0} s  {:>7} ops  {:>6.0} ops/s  {} not ok  live {} objects, {:.1} MiB",
                    clock.elapsed().as_secs_f64(),
                    total,
                    (total - last_total) as f64 / args.progress_every_s.max(1) as f64,
                    stats.errors(),
                    stats.live_objects.load(std::sync::atomic::Ordering::Relaxed),
                    stats.live_bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1 << 20) as f64,
                );
                last_total = total;
            }
        }
    }
    let _ = stop_tx.send(true);
    let joined = match finished_early {
        Some(r) => r,
        // Each worker finishes its current operation, which is bounded by
        // the workload's total timeout (and a multipart upload by a few).
        None => match tokio::time::timeout(
            Duration::from_millis(cfg.total_timeout_ms * 8),
            &mut running,
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                running.abort();
                Ok(Err(crate::ledger::LedgerError::WriterGone(
                    "the workers did not stop in time and were aborted".into(),
                )))
            }
        },
    };
    let workload_result: Result<(), Error> = match joined {
        Ok(r) => r.map_err(Error::from),
        Err(e) => Err(Error::Workload(format!("the workload panicked: {e}"))),
    };
    record_metrics(&ledger, &stats, clock);
    ledger.send(Record::Meta {
        key: "finished_at".into(),
        value: crate::cluster::utc_now(),
    })?;
    drop(ledger);
    let records = writer.finish()?;
    print_summary(&stats, clock.elapsed(), records, &ledger_path);
    eprintln!("faultline: stopping the cluster");
    tokio::select! {
        r = cluster.shutdown() => r?,
        _ = interrupts.next() => {
            eprintln!("faultline: killing every node now");
            cluster.kill_all().await?;
        }
    }
    workload_result?;
    println!(
        "faultline: the soak does not check online yet; check this run with: faultline verify {}",
        cluster.run_dir().display()
    );
    println!(
        "reproduce: faultline soak --profile {} --seed {} --duration {}{}{}",
        opts.profile.display(),
        opts.seed,
        humantime::format_duration(args.duration),
        args.workers
            .map(|w| format!(" --workers {w}"))
            .unwrap_or_default(),
        args.mix
            .as_ref()
            .map(|m| format!(" --mix {m}"))
            .unwrap_or_default(),
    );
    Ok(exit::PASS)
}

/// Snapshots the live counters and the runner's memory into the ledger.
fn record_metrics(ledger: &Ledger, stats: &crate::workload::Stats, clock: std::time::Instant) {
    let t_ns = clock.elapsed().as_nanos() as u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<f64>().ok())
        })
        .map(|pages| pages * 4096.0);
    let mut values = vec![
        ("ops_total", stats.total() as f64),
        ("ops_not_ok", stats.errors() as f64),
        (
            "live_objects",
            stats
                .live_objects
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        (
            "live_bytes",
            stats.live_bytes.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
        (
            "readbacks",
            stats.readbacks.load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
    ];
    if let Some(rss) = rss {
        values.push(("runner_rss_bytes", rss));
    }
    for (name, value) in values {
        let _ = ledger.send(Record::Metric {
            t_ns,
            name: name.into(),
            value,
        });
    }
}

fn print_summary(
    stats: &crate::workload::Stats,
    elapsed: Duration,
    records: u64,
    ledger: &std::path::Path,
) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["op", "ok", "fail", "ambiguous", "unavailable"]);
    for kind in OpKind::ALL {
        let row: Vec<u64> = [
            Outcome::Ok,
            Outcome::Fail,
            Outcome::Ambiguous,
            Outcome::Unavailable,
        ]
        .into_iter()
        .map(|o| stats.count(kind, o))
        .collect();
        let mut cells = vec![kind.as_str().to_string()];
        cells.extend(row.iter().map(u64::to_string));
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

fn verify(args: VerifyArgs) -> Result<u8, Error> {
    use crate::ledger::LedgerReader;
    let path = if args.run.is_dir() {
        args.run.join("ledger.sqlite")
    } else {
        args.run.clone()
    };
    if !path.is_file() {
        return Err(Error::Usage(format!("{}: no ledger there", path.display())));
    }
    let ledger = LedgerReader::open(&path)?;
    let meta = |key: &str| -> Result<String, Error> {
        ledger
            .meta(key)?
            .ok_or_else(|| Error::Usage(format!("{}: run_meta has no {key}", path.display())))
    };
    let seed: u64 = meta("seed")?
        .parse()
        .map_err(|_| Error::Usage(format!("{}: run_meta seed is not a number", path.display())))?;
    let info = crate::oracle::RunInfo {
        seed,
        prefix: meta("prefix")?,
        complete: ledger.meta("finished_at")?.is_some(),
    };
    let ops = ledger.ops()?;
    let verdict = crate::oracle::check(&info, &ops);
    let c = &verdict.coverage;
    println!(
        "checked {} reads and {} LIST pages ({} key checks) of {} operations; {} reads unavailable, {} ambiguous writes",
        c.reads_checked,
        c.list_pages_checked,
        c.list_keys_checked,
        ops.len(),
        c.reads_unavailable,
        c.ambiguous_writes
    );
    if !info.complete {
        println!(
            "the run did not finish cleanly: {} reads saw a write in flight when it stopped and prove nothing",
            c.reads_unknown
        );
    }
    if c.reads_checked == 0 {
        println!("verdict: unknown (no read was checked)");
        return Ok(exit::COVERAGE_GAP);
    }
    if verdict.findings.is_empty() {
        println!("verdict: pass (no findings)");
        return Ok(exit::PASS);
    }
    let mut by_class = std::collections::BTreeMap::new();
    for f in &verdict.findings {
        *by_class.entry(f.class.as_str()).or_insert(0u64) += 1;
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["class", "key", "op", "expected", "seen", "writes"]);
    for f in verdict.findings.iter().take(args.show) {
        table.add_row(vec![
            f.class.as_str().to_string(),
            f.key.clone().unwrap_or_default(),
            f.op_id.to_string(),
            f.expected.clone(),
            f.seen.clone(),
            f.writes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    println!("{table}");
    let counts: Vec<String> = by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
    println!(
        "verdict: FAIL ({} findings: {})",
        verdict.findings.len(),
        counts.join(", ")
    );
    Ok(exit::FINDINGS)
}

fn bench_oracle(ops: usize, keys: usize, seed: u64) -> Result<u8, Error> {
    if ops == 0 || keys == 0 {
        return Err(Error::Usage("--ops and --keys must be at least 1".into()));
    }
    let started = std::time::Instant::now();
    let (info, history) = crate::oracle::synth::history(seed, ops, keys);
    let generated = started.elapsed();
    let rss_after_generation = peak_rss_bytes();
    let started = std::time::Instant::now();
    let verdict = crate::oracle::check(&info, &history);
    let checked = started.elapsed();
    println!(
        "history: {ops} operations over {keys} keys, generated in {:.2} s",
        generated.as_secs_f64()
    );
    println!(
        "check:   {:.3} s, {:.0} operations/s on one core; {} reads, {} LIST pages ({} key checks); {} findings",
        checked.as_secs_f64(),
        ops as f64 / checked.as_secs_f64().max(1e-9),
        verdict.coverage.reads_checked,
        verdict.coverage.list_pages_checked,
        verdict.coverage.list_keys_checked,
        verdict.findings.len()
    );
    println!(
        "memory:  peak RSS {:.0} MiB (after generating the history: {:.0} MiB)",
        peak_rss_bytes() as f64 / (1 << 20) as f64,
        rss_after_generation as f64 / (1 << 20) as f64
    );
    Ok(if verdict.findings.is_empty() {
        exit::PASS
    } else {
        exit::FINDINGS
    })
}

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}
