//! What the runner measures of itself and its host: CPU time (process
//! and thread), resident memory, free disk, and the wall clock as RFC 3339
//! text. Floor of the layers: it knows nothing of the rest of faultline.

use std::path::Path;
use std::time::Duration;

/// User plus system CPU this process has used (its own threads, not its
/// children: the nodes are separate processes).
pub fn cpu_time() -> Duration {
    rusage_cpu(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

/// User plus system CPU the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    rusage_cpu(nix::sys::resource::UsageWho::RUSAGE_THREAD)
}

fn rusage_cpu(who: nix::sys::resource::UsageWho) -> Duration {
    match nix::sys::resource::getrusage(who) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`.
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The process's resident set now, in bytes.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The process's peak resident set (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
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

/// The wall clock now, as RFC 3339 text.
pub fn utc_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 always formats")
}
