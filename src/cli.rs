//! Command-line interface: one subcommand enum (clap derive), and the code
//! that runs each subcommand and turns its outcome into an exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use crate::cluster::profile::Profile;
use crate::cluster::{BootOptions, Cluster, ClusterError, provision};
use crate::exit;

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
    /// Install the binary a profile needs into the cache, without booting.
    Install(InstallArgs),
}

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
            Command::Install(args) => install(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("faultline: error: {e}");
            exit::for_cluster_error(&e)
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

async fn install(args: InstallArgs) -> Result<u8, ClusterError> {
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
    let bin = provision::ensure_binary(&cache, &krate, &version, &name).await?;
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

async fn up(args: UpArgs) -> Result<u8, ClusterError> {
    let mut interrupts = Interrupts::new();
    let opts = args.cluster.boot_options();
    eprintln!("faultline: seed {}", opts.seed);
    let cluster = tokio::select! {
        c = Cluster::boot(&opts) => c?,
        _ = interrupts.next() => {
            // Dropping the boot future drops its supervisor, which kills
            // every node started so far.
            eprintln!("faultline: interrupted during boot; nothing is left running");
            return Ok(exit::INFRA);
        }
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
