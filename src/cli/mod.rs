//! Command-line interface: one subcommand enum (clap derive), and the code
//! that runs each subcommand and turns its outcome into an exit code.

mod args;

use std::time::Duration;

use crate::cluster::{Cluster, ClusterError, provision};
use crate::exit::{self, Error};
use crate::profile::Profile;
use crate::run::{self, Interrupts, RunConfig, boot_unless_interrupted};
use crate::verdict::RunVerdict;
use args::{
    BenchCommand, BenchRunnerArgs, Command, ExplainArgs, GateArgs, InstallArgs, QueryArgs,
    RETENTION_AUTO_MIN, RetentionMode, RunArg, SELFTEST_FAULTS, SelftestArgs, SoakArgs, UpArgs,
    VerifyArgs,
};

pub use args::Cli;

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    crate::console::init();
    // Commands that only print (and talk to no node) end quietly when the
    // reader goes away, `faultline query RUN ... | head` included. The
    // others keep Rust's ignored SIGPIPE: a node closing a socket must not
    // kill the runner.
    if matches!(
        cli.command,
        Command::Report(_)
            | Command::Query(_)
            | Command::Explain(_)
            | Command::Runs(_)
            | Command::Verify(_)
    ) {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: called before any other thread exists; SIG_DFL installs
        // no handler code.
        unsafe {
            let _ = signal(Signal::SIGPIPE, SigHandler::SigDfl);
        }
    }
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
            Command::Gate(args) => gate(args).await,
            Command::Selftest(args) => selftest(args).await,
            Command::Report(args) => report(args),
            Command::Query(args) => query(args),
            Command::Explain(args) => explain(args),
            Command::Runs(args) => {
                print!("{}", crate::report::postmortem::runs(&args.runs_dir)?);
                Ok(exit::PASS)
            }
            Command::Verify(args) => verify(args),
            Command::Bench(BenchCommand::Oracle(s)) => crate::bench::oracle(s.ops, s.keys, s.seed),
            Command::Bench(BenchCommand::Ledger { synth: s, path }) => {
                crate::bench::ledger(s.ops, s.keys, s.seed, &path)
            }
            Command::Bench(BenchCommand::Runner(args)) => bench_runner(args).await,
            Command::Bench(BenchCommand::Relay {
                rounds,
                exchanges,
                mib,
            }) => crate::bench::relay(rounds, exchanges, mib).await,
            Command::Install(args) => install(args).await,
            Command::Recover(args) => {
                for line in crate::cluster::recover_links(&args.run).await? {
                    println!("{line}");
                }
                Ok(exit::PASS)
            }
            Command::GuardLinks { lease, table } => {
                match crate::net::nft::guard(&lease, &table).await {
                    Ok(done) => println!("{} {done}", crate::sys::utc_now()),
                    Err(e) => eprintln!("{} {e}", crate::sys::utc_now()),
                }
                Ok(exit::PASS)
            }
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

async fn install(args: InstallArgs) -> Result<u8, Error> {
    let profile = Profile::load(&args.profile)?;
    let cache = args.cache_dir.unwrap_or_else(provision::default_cache_dir);
    let (krate, version, name) = match (&profile.cluster.garage, &profile.cluster.binary) {
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

async fn up(args: UpArgs) -> Result<u8, Error> {
    let mut interrupts = Interrupts::new();
    let opts = args.cluster.boot_options();
    eprintln!("faultline: seed {}", opts.seed);
    let profile = Profile::load(&opts.profile)?;
    let Some(cluster) = boot_unless_interrupted(&profile, &opts, &mut interrupts).await? else {
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
    let boot = args.cluster.boot_options();
    let mut profile = Profile::load(&boot.profile)?;
    args.workload.apply(&mut profile)?;
    let faults = if args.faults.apply(&mut profile)? {
        run::FaultMode::Soak
    } else {
        run::FaultMode::Off
    };
    let retention = match args.retention {
        RetentionMode::On => true,
        RetentionMode::Off => false,
        RetentionMode::Auto => args.duration >= RETENTION_AUTO_MIN,
    }
    .then(|| crate::ledger::Retention {
        budget_bytes: args.ledger_budget_mb << 20,
        ..Default::default()
    });
    let reproduce = format!(
        "faultline soak --profile {} --seed {} --duration {}{}{}{}",
        boot.profile.display(),
        boot.seed,
        humantime::format_duration(args.duration),
        args.workload.flags(),
        args.faults.flags(),
        if args.stop_on_violation {
            " --stop-on-violation"
        } else {
            ""
        },
    );
    let cfg = RunConfig {
        boot,
        profile,
        duration: args.duration,
        faults,
        retention,
        min_free_disk_mb: args.min_free_disk_mb,
        stop_on_violation: args.stop_on_violation,
        progress_every: Duration::from_secs(args.progress_every_s.max(1)),
        reproduce,
        selftest: false,
        thresholds: crate::verdict::Thresholds::default(),
        junit: None,
        inject: None,
    };
    run::run(cfg, &mut interrupts).await
}

async fn gate(args: GateArgs) -> Result<u8, Error> {
    let mut interrupts = Interrupts::new();
    let boot = args.cluster.boot_options();
    let mut profile = Profile::load(&boot.profile)?;
    args.workload.apply(&mut profile)?;
    if !args.faults.apply(&mut profile)? {
        return Err(Error::Usage(
            "gate: --faults none leaves nothing to gate; use soak for a run without faults".into(),
        ));
    }
    let reproduce = format!(
        "faultline gate --profile {} --seed {}{}{}{}{}{}",
        boot.profile.display(),
        boot.seed,
        args.workload.flags(),
        args.faults.flags(),
        if args.keep_going { " --keep-going" } else { "" },
        args.max_recovery
            .map(|d| format!(" --max-recovery {}", humantime::format_duration(d)))
            .unwrap_or_default(),
        args.min_availability
            .map(|a| format!(" --min-availability {a}"))
            .unwrap_or_default(),
    ) + &args
        .inject
        .map(|m| format!(" --inject {}", m.as_str()))
        .unwrap_or_default();
    let run_dir_link = args.junit.clone();
    let cfg = RunConfig {
        boot,
        profile,
        duration: args.max_duration,
        faults: run::FaultMode::Gate,
        retention: None,
        min_free_disk_mb: run::MIN_FREE_DISK_MB,
        stop_on_violation: !args.keep_going,
        progress_every: Duration::from_secs(args.progress_every_s.max(1)),
        reproduce,
        selftest: false,
        thresholds: crate::verdict::Thresholds {
            max_recovery_ms: args.max_recovery.map(|d| d.as_millis() as u64),
            min_availability: args.min_availability,
        },
        junit: run_dir_link,
        inject: args.inject,
    };
    run::run(cfg, &mut interrupts).await
}

async fn selftest(mut args: SelftestArgs) -> Result<u8, Error> {
    let mut interrupts = Interrupts::new();
    let boot = args.cluster.boot_options();
    let mut profile = Profile::load(&boot.profile)?;
    args.workload.apply(&mut profile)?;
    if args.faults.faults.is_none() {
        args.faults.faults = Some(SELFTEST_FAULTS.into());
    }
    let faults = if args.faults.apply(&mut profile)? {
        run::FaultMode::Gate
    } else {
        run::FaultMode::Off
    };
    let reproduce = format!(
        "faultline selftest --profile {} --seed {}{}{}",
        boot.profile.display(),
        boot.seed,
        args.workload.flags(),
        args.faults.flags(),
    );
    let cfg = RunConfig {
        boot,
        profile,
        duration: args.max_duration,
        faults,
        retention: None,
        min_free_disk_mb: run::MIN_FREE_DISK_MB,
        stop_on_violation: false,
        progress_every: Duration::from_secs(args.progress_every_s.max(1)),
        reproduce,
        selftest: true,
        thresholds: crate::verdict::Thresholds::default(),
        junit: None,
        inject: None,
    };
    run::run(cfg, &mut interrupts).await
}

fn report(args: RunArg) -> Result<u8, Error> {
    run::ledger_path(&args.run)?;
    let r = crate::report::write_all(&args.run)?;
    println!("verdict: {}", r.headline());
    for name in ["report.md", "report.html", "junit.xml"] {
        println!("{}", args.run.join(name).display());
    }
    Ok(exit::PASS)
}

fn query(args: QueryArgs) -> Result<u8, Error> {
    use crate::ledger::query::PRESETS;
    use crate::report::postmortem::{Format, query};
    let ledger = crate::ledger::LedgerReader::open(&run::ledger_path(&args.run)?)?;
    let sql = match (&args.sql, args.preset) {
        (Some(sql), _) => sql.clone(),
        (None, Some(p)) => {
            let name = format!("{p:?}").to_lowercase();
            PRESETS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, sql)| sql.to_string())
                .expect("every preset has its query")
        }
        (None, None) => unreachable!("clap requires SQL or a preset"),
    };
    let format = match (args.json, args.csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv,
        _ => Format::Table,
    };
    print!("{}", query(&ledger, &sql)?.render(format));
    Ok(exit::PASS)
}

fn explain(args: ExplainArgs) -> Result<u8, Error> {
    let ledger = crate::ledger::LedgerReader::open(&run::ledger_path(&args.run)?)?;
    print!(
        "{}",
        crate::report::postmortem::explain(&ledger, &args.key)?
    );
    Ok(exit::PASS)
}

fn verify(args: VerifyArgs) -> Result<u8, Error> {
    let path = run::ledger_path(&args.run)?;
    let v = run::verify(&path)?;
    let c = &v.judged.coverage;
    println!(
        "{}: {} operations, {} contract",
        path.display(),
        v.operations,
        v.info.contract.as_str()
    );
    run::print_coverage(c);
    run::print_findings(&v.judged, &v.tolerate, args.show);
    // The online check recorded its findings as the run went: say whether
    // this check agrees with it.
    if v.agrees_with_online() {
        println!(
            "the online check recorded the same {} findings (on the operations the ledger holds)",
            v.recorded.len()
        );
    } else {
        println!(
            "the online check recorded {} findings (on the operations the ledger holds), this check found {}: they differ",
            v.recorded.len(),
            v.findings.len()
        );
    }
    if !v.info.complete {
        println!(
            "the run did not finish cleanly: {} reads could not be decided",
            c.reads_unknown
        );
    }
    let verdict = crate::verdict::offline(&v.judged, c, v.info.complete);
    match &verdict {
        RunVerdict::Findings { count, .. } => println!("verdict: FAIL ({count} findings)"),
        RunVerdict::Pass => println!("verdict: pass (no findings)"),
        RunVerdict::CoverageGap { gaps } => println!("verdict: unknown ({})", gaps.join("; ")),
        RunVerdict::Unknown { reason } | RunVerdict::Infrastructure { reason } => {
            println!("verdict: unknown ({reason})")
        }
    }
    Ok(verdict.exit_code())
}

async fn bench_runner(args: BenchRunnerArgs) -> Result<u8, Error> {
    if args.rounds == 0 {
        return Err(Error::Usage("--rounds must be at least 1".into()));
    }
    let opts = args.cluster.boot_options();
    let mut profile = Profile::load(&opts.profile)?;
    args.workload.apply(&mut profile)?;
    crate::bench::runner(opts, profile, args.phase, args.rounds).await
}
