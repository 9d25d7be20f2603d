//! `faultline bench`: measurements of the runner's own parts, so "the
//! runner is never the bottleneck" is a number anyone can re-run
//! (BENCHMARKS.md records them with their commands).
//!
//! - `oracle`: offline verification of a generated correct history,
//!   streamed through the checker (memory is the checker's, not the
//!   history's), its generation timed apart and subtracted.
//! - `ledger`: the SQLite writer's commit rate on a generated stream.
//! - `runner`: the same workload against one booted cluster in two modes,
//!   alternating: raw (records dropped, no oracle) and full (ledger and
//!   online oracle); each full phase's runner CPU per operation and
//!   throughput against the raw phases either side, and the median.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{BootOptions, Cluster, ClusterError};
use crate::exit::{self, Error};
use crate::ledger::{Ledger, LedgerWriter, Record};
use crate::online::Online;
use crate::oracle::{Oracle, synth};
use crate::profile::{OracleSection, Profile};
use crate::run::{Interrupts, OracleMeta, boot_unless_interrupted};
use crate::sys::{cpu_time, peak_rss_bytes};
use crate::workload::{Workload, WorkloadConfig};

const MIB: f64 = (1 << 20) as f64;

fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Operations generated at a time by `bench oracle`, then checked.
const ORACLE_CHUNK: usize = 100_000;

/// Offline verification of `ops` generated operations over `keys` keys.
pub fn oracle(ops: usize, keys: usize, seed: u64) -> Result<u8, Error> {
    if ops == 0 || keys == 0 {
        return Err(Error::Usage("--ops and --keys must be at least 1".into()));
    }
    // The history is generated a chunk at a time and only the checker's
    // work on each chunk is timed: generating it interleaved with the
    // check would bill the check for the generator's cache misses.
    let rss_before = crate::sys::rss_bytes().unwrap_or(0);
    let (info, mut stream) = synth::stream(seed, keys);
    let mut oracle = Oracle::new(info);
    let mut chunk = Vec::with_capacity(ORACLE_CHUNK);
    let (mut generation, mut checking) = (Duration::ZERO, Duration::ZERO);
    let mut buffer_bytes = 0;
    let mut left = ops;
    while left > 0 {
        let started = Instant::now();
        chunk.extend(stream.by_ref().take(left.min(ORACLE_CHUNK)));
        generation += started.elapsed();
        left -= chunk.len();
        if buffer_bytes == 0 {
            buffer_bytes = crate::sys::rss_bytes()
                .unwrap_or(0)
                .saturating_sub(rss_before);
        }
        let started = Instant::now();
        oracle.observe_all(&mut chunk);
        checking += started.elapsed();
    }
    let started = Instant::now();
    let verdict = oracle.finish();
    checking += started.elapsed();
    println!(
        "history: {ops} operations over {keys} keys, generated in {:.2} s, {ORACLE_CHUNK} at a time",
        generation.as_secs_f64()
    );
    println!(
        "check:   {:.2} s, {:.0} operations/s on one core; \
         {} reads, {} LIST pages ({} key checks); {} findings",
        checking.as_secs_f64(),
        per_s(ops as u64, checking),
        verdict.coverage.reads_checked,
        verdict.coverage.list_pages_checked,
        verdict.coverage.list_keys_checked,
        verdict.findings.len()
    );
    println!(
        "memory:  peak RSS {:.0} MiB, of which about {:.0} MiB the buffer of generated operations",
        peak_rss_bytes() as f64 / MIB,
        buffer_bytes as f64 / MIB
    );
    Ok(crate::verdict::benchmark(verdict.findings.len() as u64))
}

/// Commits `ops` generated operations to a new ledger at `path`; the
/// stream is generated beforehand so only the writer is timed.
pub fn ledger(ops: usize, keys: usize, seed: u64, path: &Path) -> Result<u8, Error> {
    if ops == 0 || keys == 0 {
        return Err(Error::Usage("--ops and --keys must be at least 1".into()));
    }
    if path.exists() {
        return Err(Error::Usage(format!(
            "{} exists; the benchmark writes a new ledger",
            path.display()
        )));
    }
    let (info, stream) = synth::stream(seed, keys);
    let records: Vec<Record> = stream
        .take(ops)
        .map(|op| Record::Op(Box::new(op)))
        .collect();
    let (ledger, writer) = Ledger::create(path, None, None)?;
    // What `faultline verify` needs to re-check the file.
    let oracle = OracleMeta {
        contract: info.contract,
        workers: info.workers,
        read_span_max_ns: info.read_span_max_ns,
        tolerate: Vec::new(),
    };
    send_check_meta(&ledger, seed, &info.prefix, &oracle)?;
    let started = Instant::now();
    for r in records {
        ledger.send(r)?;
    }
    send_finished(&ledger)?;
    // Everything sent is committed once the flush is answered; what
    // follows happens once, at the end of a run.
    ledger.flush()?;
    let committed = started.elapsed();
    drop(ledger);
    let written = writer.finish()?;
    let took = started.elapsed();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "ledger:  {ops} operations ({written} records) committed in {:.2} s: {:.0} operations/s",
        committed.as_secs_f64(),
        per_s(ops as u64, committed)
    );
    println!(
        "end:     indexes built and the WAL folded in {:.2} s more ({:.0} operations/s overall)",
        (took - committed).as_secs_f64(),
        per_s(ops as u64, took)
    );
    println!(
        "file:    {} ({:.0} MiB, {:.0} bytes per operation); re-check it with `faultline verify {}`",
        path.display(),
        size as f64 / MIB,
        size as f64 / ops as f64,
        path.display()
    );
    Ok(exit::PASS)
}

/// What `faultline verify` needs to re-check a benchmark's ledger.
fn send_check_meta(
    ledger: &Ledger,
    seed: u64,
    prefix: &str,
    oracle: &OracleMeta,
) -> Result<(), Error> {
    for (key, value) in [
        ("seed", seed.to_string()),
        ("prefix", prefix.to_string()),
        ("oracle", serde_json::to_string(oracle).expect("serialises")),
    ] {
        ledger.send(Record::Meta {
            key: key.into(),
            value,
        })?;
    }
    Ok(())
}

/// Marks the history complete (every write the workload made is in it).
fn send_finished(ledger: &Ledger) -> Result<(), Error> {
    Ok(ledger.send(Record::Meta {
        key: "finished_at".into(),
        value: crate::sys::utc_now(),
    })?)
}

/// One phase of `bench runner`.
struct Phase {
    full: bool,
    ops: u64,
    wall: Duration,
    cpu: Duration,
    /// Of `cpu`, what the ledger writer's and the online check's threads
    /// used (full mode).
    ledger_cpu: Duration,
    oracle_cpu: Duration,
    /// Of `ledger_cpu`, the ledger's end (indexes built, WAL folded back).
    end_cpu: Duration,
    findings: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        per_s(self.ops, self.wall)
    }

    fn cpu_per_op(&self) -> f64 {
        self.cpu.as_secs_f64() / self.ops.max(1) as f64
    }
}

/// Runs the profile's workload against one booted cluster for `phase` at a
/// time: raw, full, raw, ... raw, `rounds` full phases each between two raw
/// ones. The cluster's and the VM's speed drift over minutes by more than
/// the targets, so each full phase is compared with the mean of the raw
/// phases on either side (which cancels a steady drift), and the verdict is
/// the median over the full phases (which a phase disturbed by a Garage
/// compaction or a noisy neighbour does not move).
pub async fn runner(
    opts: BootOptions,
    profile: Profile,
    phase: Duration,
    rounds: u32,
) -> Result<u8, Error> {
    let wl = profile.workload.clone();
    let mut interrupts = Interrupts::new();
    let Some(cluster) = boot_unless_interrupted(&profile, &opts, &mut interrupts).await? else {
        return Ok(exit::INFRA);
    };
    println!(
        "bench runner: {} with {} workers, {} full phases of {} between {} raw ones; run directory {}",
        cluster.profile.name,
        wl.workers,
        rounds,
        humantime::format_duration(phase),
        rounds + 1,
        cluster.run_dir().display()
    );
    let mut phases = Vec::new();
    let mut result = Ok(());
    for i in 0..=2 * rounds {
        let full = i % 2 == 1;
        let p = tokio::select! {
            p = one_phase(&cluster, &profile.oracle, &wl, opts.seed, i, full, phase) => p,
            _ = interrupts.next() => { result = Err(Error::Interrupted); break; }
        };
        match p {
            Ok(p) => {
                println!(
                    "  phase {i:>2} {:<4}: {:>7} ops in {:.1} s, {:>6.0} ops/s, CPU {:.1} s, {:.0} µs CPU per op{}",
                    if p.full { "full" } else { "raw" },
                    p.ops,
                    p.wall.as_secs_f64(),
                    p.rate(),
                    p.cpu.as_secs_f64(),
                    p.cpu_per_op() * 1e6,
                    if p.full {
                        format!(
                            ", of it the ledger's thread {:.2} s ({:.2} s at its end), \
                             the oracle's {:.2} s",
                            p.ledger_cpu.as_secs_f64(),
                            p.end_cpu.as_secs_f64(),
                            p.oracle_cpu.as_secs_f64()
                        )
                    } else {
                        String::new()
                    }
                );
                phases.push(p);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    cluster.shutdown().await?;
    result?;
    let sum = |full: bool| {
        phases
            .iter()
            .filter(|p| p.full == full)
            .fold((0u64, Duration::ZERO, Duration::ZERO), |(o, w, c), p| {
                (o + p.ops, w + p.wall, c + p.cpu)
            })
    };
    let (raw_ops, raw_wall, raw_cpu) = sum(false);
    let (full_ops, full_wall, full_cpu) = sum(true);
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    table.set_header(vec!["mode", "ops", "ops/s", "runner CPU s", "µs CPU/op"]);
    for (name, ops, wall, cpu) in [
        ("raw", raw_ops, raw_wall, raw_cpu),
        ("full", full_ops, full_wall, full_cpu),
    ] {
        table.add_row(vec![
            name.to_string(),
            ops.to_string(),
            format!("{:.0}", per_s(ops, wall)),
            format!("{:.1}", cpu.as_secs_f64()),
            format!("{:.1}", cpu.as_secs_f64() * 1e6 / ops.max(1) as f64),
        ]);
    }
    println!("{table}");
    let brackets = brackets(&phases);
    for (k, b) in brackets.iter().enumerate() {
        println!(
            "  full phase {:>2} against the raw phases either side: {:+.1} % CPU per operation, throughput {:.3}",
            2 * k + 1,
            b.overhead * 100.0,
            b.ratio
        );
    }
    let overhead = Spread::of(brackets.iter().map(|b| b.overhead * 100.0));
    let ratio = Spread::of(brackets.iter().map(|b| b.ratio));
    println!(
        "median of {} full phases: ledger and oracle add {:+.1} % runner CPU per operation \
         (middle half {:+.1} to {:+.1}; target at most +10 %); throughput full/raw {:.3} \
         (middle half {:.3} to {:.3}; target at least 0.95)",
        brackets.len(),
        overhead.median,
        overhead.low,
        overhead.high,
        ratio.median,
        ratio.low,
        ratio.high
    );
    // The same cost measured within the full phases themselves: their
    // recording threads' CPU against the rest of the runner's.
    let ledger: Duration = phases.iter().map(|p| p.ledger_cpu).sum();
    let oracle: Duration = phases.iter().map(|p| p.oracle_cpu).sum();
    let rest = full_cpu.saturating_sub(ledger + oracle).as_secs_f64();
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / full_ops.max(1) as f64;
    println!(
        "in the full phases themselves, of {:.1} s runner CPU the ledger writer's thread used {:.2} s \
         ({:.1} µs per operation) and the online check's {:.2} s ({:.1} µs): {:+.1} % over the rest \
         of the runner",
        full_cpu.as_secs_f64(),
        ledger.as_secs_f64(),
        per_op(ledger),
        oracle.as_secs_f64(),
        per_op(oracle),
        (ledger + oracle).as_secs_f64() / rest.max(1e-9) * 100.0
    );
    let findings: u64 = phases.iter().map(|p| p.findings).sum();
    if findings > 0 {
        println!(
            "the oracle found {findings} violations during the benchmark (see the bench ledgers)"
        );
    }
    Ok(crate::verdict::benchmark(findings))
}

/// A full phase against the mean of the raw phases before and after it.
#[derive(Debug, PartialEq)]
struct Bracket {
    /// Runner CPU per operation, full over raw, minus one.
    overhead: f64,
    /// Operations per second, full over raw.
    ratio: f64,
}

/// One bracket per full phase that has a raw phase on either side.
fn brackets(phases: &[Phase]) -> Vec<Bracket> {
    phases
        .windows(3)
        .filter(|w| !w[0].full && w[1].full && !w[2].full)
        .map(|w| {
            let (before, full, after) = (&w[0], &w[1], &w[2]);
            let raw_cpu = (before.cpu_per_op() + after.cpu_per_op()) / 2.0;
            let raw_rate = (before.rate() + after.rate()) / 2.0;
            Bracket {
                overhead: full.cpu_per_op() / raw_cpu.max(1e-12) - 1.0,
                ratio: full.rate() / raw_rate.max(1e-12),
            }
        })
        .collect()
}

/// The median of some values and the quartiles around it (NaN if none).
#[derive(Debug, PartialEq)]
struct Spread {
    low: f64,
    median: f64,
    high: f64,
}

impl Spread {
    /// Quartiles by the nearest rank; the median of an even count is the
    /// mean of the middle two.
    fn of(values: impl Iterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Spread {
                low: f64::NAN,
                median: f64::NAN,
                high: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            low: v[(n - 1) / 4],
            median,
            high: v[n - 1 - (n - 1) / 4],
        }
    }
}

async fn one_phase(
    cluster: &Cluster,
    oracle: &OracleSection,
    wl: &WorkloadConfig,
    seed: u64,
    index: u32,
    full: bool,
    phase: Duration,
) -> Result<Phase, Error> {
    let mode = if full { "full" } else { "raw" };
    let seed = seed + u64::from(index);
    let prefix = format!("{}bench-{index}-{mode}/", cluster.run_prefix());
    let timeouts = Workload::s3_timeouts(wl);
    let clients = cluster
        .s3
        .endpoints
        .iter()
        .map(|ep| cluster.s3.client(ep, timeouts))
        .collect();
    let cpu_before = cpu_time();
    let (ledger, writer, online): (Ledger, LedgerWriter, Option<Online>) = if full {
        let meta = OracleMeta::for_workload(oracle, wl);
        let (online, tap) = Online::start(
            meta.run_info(seed, prefix.clone(), true),
            meta.tolerate.clone(),
        );
        let path = cluster.run_dir().join(format!("bench-{index}-full.sqlite"));
        let (ledger, writer) = Ledger::create(&path, None, Some(tap))?;
        online.attach(ledger.clone());
        send_check_meta(&ledger, seed, &prefix, &meta)?;
        (ledger, writer, Some(online))
    } else {
        let (ledger, writer) = Ledger::discard()?;
        (ledger, writer, None)
    };
    let clock = Instant::now();
    let workload = Workload::new(wl.clone(), seed, prefix, clients, ledger.clone(), clock);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(workload.clone().run(stop_rx));
    tokio::time::sleep(phase).await;
    let _ = stop_tx.send(true);
    let joined = running
        .await
        .map_err(|e| Error::Workload(format!("the workload panicked: {e}")))?;
    let wall = clock.elapsed();
    joined?;
    let ops = workload.stats.total();
    if full {
        send_finished(&ledger)?;
    }
    ledger.flush()?;
    // The online check's backlog is part of the full mode's cost.
    let (findings, checker_cpu) = online
        .and_then(Online::finish_timed)
        .map_or((0, Duration::ZERO), |(v, cpu)| {
            (v.violations.len() as u64, cpu)
        });
    drop(ledger);
    drop(workload);
    let (_, writer_cpu) = writer.finish_timed()?;
    Ok(Phase {
        full,
        ops,
        wall,
        // The ledger's end counts: its WAL fold is the checkpoints a
        // longer run makes as it goes, its index build per operation too.
        cpu: cpu_time().saturating_sub(cpu_before),
        // The raw mode's discarding thread is not recording.
        ledger_cpu: if full {
            writer_cpu.run + writer_cpu.end
        } else {
            Duration::ZERO
        },
        oracle_cpu: checker_cpu,
        end_cpu: writer_cpu.end,
        findings,
    })
}

/// The relay (`net::proxy`, no toxic) against going direct, in one run:
/// `rounds` alternating pairs of phases against a local sink, each phase
/// `exchanges` request/answer round trips of 1 KiB each way on one
/// connection, then `mib` MiB streamed one way. The process's CPU (client,
/// sink and, when relayed, the relay) per phase; the medians and their
/// ratios.
pub async fn relay(rounds: u32, exchanges: u32, mib: u32) -> Result<u8, Error> {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    let io = |e: std::io::Error| Error::Cluster(ClusterError::Net(format!("bench relay: {e}")));
    // The sink: answers each 1 KiB request with 1 KiB, then swallows a
    // stream to its end and answers one byte.
    let sink = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(io)?;
    let SocketAddr::V4(sink_addr) = sink.local_addr().map_err(io)? else {
        unreachable!("bound to IPv4")
    };
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 1 << 16];
                let mut exchanges = s.read_u32().await.unwrap_or(0);
                while exchanges > 0 {
                    if s.read_exact(&mut buf[..1024]).await.is_err()
                        || s.write_all(&buf[..1024]).await.is_err()
                    {
                        return;
                    }
                    exchanges -= 1;
                }
                while let Ok(1..) = s.read(&mut buf).await {}
                let _ = s.write_all(b"k").await;
            });
        }
    });
    let mut proxy = crate::net::Proxy::start(
        Ipv4Addr::LOCALHOST,
        &[sink_addr],
        crate::net::Toxic::None,
        1,
    )
    .await
    .map_err(|e| {
        Error::Cluster(ClusterError::Net(format!(
            "bench relay: cannot start the relay (root needed for its mark): {e}"
        )))
    })?;
    let relayed = proxy.listening()[0];
    struct Phase {
        rtt: Duration,
        mib_s: f64,
        cpu_per_mib: Duration,
    }
    let phase = |to: SocketAddrV4| async move {
        let mut s = TcpStream::connect(to).await?;
        s.set_nodelay(true)?;
        let started = Instant::now();
        s.write_u32(exchanges).await?;
        let mut buf = vec![7u8; 1 << 16];
        for _ in 0..exchanges {
            s.write_all(&buf[..1024]).await?;
            s.read_exact(&mut buf[..1024]).await?;
        }
        let rtt = started.elapsed() / exchanges.max(1);
        let (cpu, started) = (cpu_time(), Instant::now());
        for _ in 0..mib * 16 {
            s.write_all(&buf).await?;
        }
        s.shutdown().await?;
        s.read_u8().await?;
        let took = started.elapsed();
        Ok::<_, std::io::Error>(Phase {
            rtt,
            mib_s: mib as f64 / took.as_secs_f64(),
            cpu_per_mib: (cpu_time() - cpu) / mib.max(1),
        })
    };
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        direct.push(phase(sink_addr).await.map_err(io)?);
        through.push(phase(relayed).await.map_err(io)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let stat = |ps: &[Phase], f: fn(&Phase) -> f64| median(&mut ps.iter().map(f).collect());
    let rtt = |p: &Phase| p.rtt.as_secs_f64() * 1e6;
    let rate = |p: &Phase| p.mib_s;
    let cpu = |p: &Phase| p.cpu_per_mib.as_secs_f64() * 1e3;
    println!(
        "{} rounds, each {exchanges} round trips of 1 KiB each way and {mib} MiB streamed, direct then relayed (medians):",
        rounds.max(1)
    );
    for (what, f, unit) in [
        ("round trip", rtt as fn(&Phase) -> f64, "us"),
        ("stream", rate, "MiB/s"),
        ("process CPU per MiB", cpu, "ms"),
    ] {
        let (d, r) = (stat(&direct, f), stat(&through, f));
        println!(
            "  {what:<20} direct {d:>9.1} {unit:<5}  relayed {r:>9.1} {unit:<5}  ratio {:.2}",
            r / d
        );
    }
    println!(
        "  relay's added round trip: {:.1} us; added CPU per MiB: {:.2} ms",
        stat(&through, rtt) - stat(&direct, rtt),
        stat(&through, cpu) - stat(&direct, cpu)
    );
    proxy.stop();
    Ok(exit::PASS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(full: bool, ops: u64, cpu_ms: u64) -> Phase {
        Phase {
            full,
            ops,
            wall: Duration::from_secs(10),
            cpu: Duration::from_millis(cpu_ms),
            ledger_cpu: Duration::ZERO,
            oracle_cpu: Duration::ZERO,
            end_cpu: Duration::ZERO,
            findings: 0,
        }
    }

    #[test]
    fn a_full_phase_is_judged_against_the_raw_phases_either_side() {
        // The cluster slows steadily: raw 1000, 800, 600 ops in 10 s at
        // 300, 400, 500 µs CPU an op; full phases exactly 10 % dearer and
        // 5 % slower than the raw mean around them.
        let phases = [
            phase(false, 1000, 300),
            phase(true, 855, 855 * 385 / 1000),
            phase(false, 800, 320),
            phase(true, 665, 665 * 495 / 1000),
            phase(false, 600, 300),
        ];
        let b = brackets(&phases);
        assert_eq!(b.len(), 2);
        for x in &b {
            assert!((x.overhead - 0.10).abs() < 1e-3, "{x:?}");
            assert!((x.ratio - 0.95).abs() < 1e-3, "{x:?}");
        }
        // A full phase without a raw phase after it is left out.
        assert_eq!(brackets(&phases[..4]).len(), 1);
    }

    #[test]
    fn the_spread_is_the_median_and_the_quartiles_around_it() {
        let s = |v: &[f64]| Spread::of(v.iter().copied());
        let (low, median, high) = (1.0, 2.0, 3.0);
        assert_eq!(s(&[3.0, 1.0, 2.0]), Spread { low, median, high });
        let twelve: Vec<f64> = (1..=12).rev().map(f64::from).collect();
        assert_eq!(
            s(&twelve),
            Spread {
                low: 3.0,
                median: 6.5,
                high: 10.0
            }
        );
        assert!(s(&[]).median.is_nan());
    }
}
