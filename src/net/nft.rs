//! The run's own nftables table. A network fault is a set of rules in one
//! table named after the run's address block (`faultline_127_a_b`): drops
//! and rejects in a filter chain, redirects to the run's relay in a nat
//! chain, both on the output hook, which every packet between two
//! loopback addresses passes once. Applying a fault creates the table or
//! puts its rules into it in one atomic `nft -f` transaction; healing
//! deletes the table, or, while connections redirected by an earlier rule
//! still live, empties the filter chain and bypasses the redirects
//! (`bypass`). No other table is ever read, flushed or touched: a run's
//! rules name only its own addresses.
//!
//! A runner killed mid-fault leaves its table behind; the next run sweeps
//! tables whose address block is no longer leased (`sweep_stale`). The
//! `nft` program comes from Debian's `nftables` package, installed on
//! first use (`ensure_nft`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Prefix of every table faultline creates.
pub const TABLE_PREFIX: &str = "faultline_";
/// The chain the filter rules go into.
const CHAIN: &str = "links";
/// The chain the redirects go into (before routing, on the output hook).
const NAT_CHAIN: &str = "detour";

/// One fault's rules, each one rule's text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// Drops, rejects and random loss, e.g.
    /// `ip saddr 127.1.2.1 ip daddr 127.1.2.2 drop`.
    pub filter: Vec<String>,
    /// Redirects of new connections (`dnat to`) to a proxy.
    pub nat: Vec<String>,
}

impl Rules {
    pub fn filter(filter: Vec<String>) -> Rules {
        Rules {
            filter,
            nat: Vec::new(),
        }
    }
}
/// Bound on one `nft` invocation.
const NFT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on installing the package (apt may wait for another install's lock).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "network faults need the nft program (Debian package nftables), which is not installed and cannot be installed here: {0}"
    )]
    NotInstalled(String),
    #[error("nft {what}: {detail}")]
    Failed { what: String, detail: String },
}

/// Finds `nft`, installing Debian's `nftables` package if it is missing
/// (as root, with apt-get; the first use prints what it does).
pub async fn ensure_nft() -> Result<PathBuf, NftError> {
    if let Some(p) = find_program("nft") {
        return Ok(p);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(NftError::NotInstalled(
            "not root; install it with: apt-get install nftables".into(),
        ));
    }
    crate::console::say("faultline: installing Debian's nftables package for network faults");
    let install = [
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "DPkg::Lock::Timeout=300",
        "nftables",
    ];
    let mut last = String::new();
    for update_first in [false, true] {
        if update_first {
            let _ = run("apt-get", &["update", "-q"], INSTALL_TIMEOUT).await;
        }
        match run("apt-get", &install, INSTALL_TIMEOUT).await {
            Ok(_) => {}
            Err(e) => last = e,
        }
        if let Some(p) = find_program("nft") {
            return Ok(p);
        }
    }
    Err(NftError::NotInstalled(format!(
        "apt-get install nftables failed: {last}"
    )))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs a program to completion within `deadline`; its combined output,
/// or why it failed.
async fn run(program: &str, args: &[&str], deadline: Duration) -> Result<String, String> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(deadline, child)
        .await
        .map_err(|_| format!("{program} did not finish within {deadline:?}"))?
        .map_err(|e| format!("{program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.success() {
        true => Ok(text),
        false => Err(format!("{}: {}", out.status, text.trim())),
    }
}

/// One run's table.
#[derive(Debug)]
pub struct NftTable {
    nft: PathBuf,
    name: String,
    /// Created and not deleted since: deleted on drop.
    live: bool,
    /// The last `apply` redirected connections, and no `bypass` since.
    redirecting: bool,
}

impl NftTable {
    /// The table `name` (a `TABLE_PREFIX` name), not created yet.
    pub fn new(nft: PathBuf, name: String) -> NftTable {
        debug_assert!(name.starts_with(TABLE_PREFIX));
        NftTable {
            nft,
            name,
            live: false,
            redirecting: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `nft -f` script that creates the table with `rules`: the filter
    /// chain, and the nat chain the redirects go into (present even
    /// empty, so that later faults only add to it).
    pub fn script(&self, rules: &Rules) -> String {
        let mut s = format!(
            "table ip {t} {{\n  chain {CHAIN} {{\n    type filter hook output priority filter; policy accept;\n",
            t = self.name
        );
        for r in &rules.filter {
            s += &format!("    {r}\n");
        }
        s += &format!(
            "  }}\n  chain {NAT_CHAIN} {{\n    type nat hook output priority -100; policy accept;\n"
        );
        for r in &rules.nat {
            s += &format!("    {r}\n");
        }
        s += "  }\n}\n";
        s
    }

    /// The script that puts `rules` into the existing table: the filter
    /// rules replace the old ones, the redirects go ahead of the old
    /// (bypassed) ones.
    fn update_script(&self, rules: &Rules) -> String {
        let t = &self.name;
        let mut s = format!("flush chain ip {t} {CHAIN}\n");
        for r in &rules.filter {
            s += &format!("add rule ip {t} {CHAIN} {r}\n");
        }
        for r in &rules.nat {
            s += &format!("insert rule ip {t} {NAT_CHAIN} {r}\n");
        }
        s
    }

    /// Applies `rules`, atomically: creates the table with them, or puts
    /// them into the table an earlier fault left; `file` keeps the script
    /// (the run directory's record of what was applied).
    pub async fn apply(&mut self, rules: &Rules, file: &Path) -> Result<String, NftError> {
        let text = match self.exists().await? {
            true => self.update_script(rules),
            false => self.script(rules),
        };
        self.run_script(&text, file, "apply the rules").await?;
        self.live = true;
        self.redirecting = !rules.nat.is_empty();
        Ok(text)
    }

    /// Heals without deleting the table: every filter rule goes, and new
    /// connections skip every redirect (an `accept` ahead of them), while
    /// the connections already redirected keep going where they were
    /// redirected. Deleting a `dnat` rule (or its table) makes the kernel
    /// forget the translation of every connection it redirected, which
    /// resets them: the relay carrying them would lose them, and the
    /// store the requests in flight on them.
    pub async fn bypass(&mut self, file: &Path) -> Result<String, NftError> {
        let t = &self.name;
        let mut text = format!("flush chain ip {t} {CHAIN}\n");
        if self.redirecting {
            text += &format!("insert rule ip {t} {NAT_CHAIN} accept\n");
        }
        self.run_script(&text, file, "heal the rules").await?;
        self.redirecting = false;
        Ok(text)
    }

    /// Whether the last `apply` redirected connections (not bypassed since).
    pub fn redirecting(&self) -> bool {
        self.redirecting
    }

    async fn run_script(&mut self, text: &str, file: &Path, what: &str) -> Result<(), NftError> {
        std::fs::write(file, text).map_err(|e| NftError::Failed {
            what: format!("write {}", file.display()),
            detail: e.to_string(),
        })?;
        let f = file.display().to_string();
        self.nft(&["-f", &f], what).await.map(|_| ())
    }

    /// The table as the kernel holds it now (`nft list table`).
    pub async fn listing(&self) -> Result<String, NftError> {
        self.nft(&["list", "table", "ip", &self.name], "list the table")
            .await
    }

    async fn exists(&self) -> Result<bool, NftError> {
        let tables = self.nft(&["list", "tables"], "list tables").await?;
        Ok(table_names(&tables).any(|t| t == self.name))
    }

    /// Deletes the table: every rule of the run gone at once. Whether it
    /// existed.
    pub async fn delete(&mut self) -> Result<bool, NftError> {
        let existed = self.exists().await?;
        if existed {
            self.nft(&["delete", "table", "ip", &self.name], "delete the table")
                .await?;
        }
        self.live = false;
        self.redirecting = false;
        Ok(existed)
    }

    async fn nft(&self, args: &[&str], what: &str) -> Result<String, NftError> {
        run(&self.nft.display().to_string(), args, NFT_TIMEOUT)
            .await
            .map_err(|detail| NftError::Failed {
                what: format!("{what} ({})", self.name),
                detail,
            })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if self.live {
            let _ = std::process::Command::new(&self.nft)
                .args(["delete", "table", "ip", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Starts the guardian of `table`: a detached `faultline guard-links`
/// process (its own process group, so a Ctrl-C to the runner's does not
/// reach it) that blocks on the run's address lease `lease` and, once the
/// runner is gone however it ended (its `flock` dies with it, SIGKILL
/// included), deletes the table if it is still there. While it cleans up
/// it holds the lease, so no new run can take the block and its table name
/// in between. Its output goes to `log`.
pub fn spawn_guardian(table: &str, lease: &Path, log: &Path) -> std::io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log)?;
    // The running binary itself, even if a rebuild replaced its file since.
    let child = std::process::Command::new("/proc/self/exe")
        .arg("guard-links")
        .arg("--lease")
        .arg(lease)
        .arg("--table")
        .arg(table)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}

/// The guardian itself (`faultline guard-links`): waits for the lease to
/// be free, then deletes `table` if it exists. Returns what it did.
pub async fn guard(lease: &Path, table: &str) -> Result<String, String> {
    use nix::fcntl::{Flock, FlockArg};
    if !table.starts_with(TABLE_PREFIX) {
        return Err(format!("{table} is not a faultline table"));
    }
    let file = std::fs::File::options()
        .write(true)
        .open(lease)
        .map_err(|e| format!("{}: {e}", lease.display()))?;
    // Blocks until the runner's lock dies with it; held while cleaning up.
    let _held = tokio::task::spawn_blocking(move || Flock::lock(file, FlockArg::LockExclusive))
        .await
        .map_err(|e| format!("lock {}: {e}", lease.display()))?
        .map_err(|(_, e)| format!("lock {}: {e}", lease.display()))?;
    let nft = find_program("nft").ok_or("nft is not installed")?;
    let existed = NftTable::new(nft, table.to_string())
        .delete()
        .await
        .map_err(|e| e.to_string())?;
    Ok(match existed {
        true => format!("{table}: deleted, its run had ended without healing"),
        false => format!("{table}: already gone"),
    })
}

/// Packets the drop rules of a table listing counted (`counter packets N
/// bytes M drop`).
pub fn dropped_packets(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.trim_end().ends_with("drop"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("counter packets ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Names of the `ip` tables in `nft list tables` output that faultline made.
pub fn table_names(listing: &str) -> impl Iterator<Item = &str> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table ip "))
        .map(str::trim)
        .filter(|t| t.starts_with(TABLE_PREFIX))
}

/// Deletes every faultline table for which `is_stale` says its run is
/// gone (its address block no longer leased); returns their names. Does
/// nothing without `nft` installed: then no table can exist.
pub async fn sweep_stale(is_stale: impl Fn(&str) -> bool) -> Vec<String> {
    let Some(nft) = find_program("nft") else {
        return Vec::new();
    };
    let nft = nft.display().to_string();
    let Ok(listing) = run(&nft, &["list", "tables"], NFT_TIMEOUT).await else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for name in table_names(&listing).filter(|t| is_stale(t)) {
        if run(&nft, &["delete", "table", "ip", name], NFT_TIMEOUT)
            .await
            .is_ok()
        {
            swept.push(name.to_string());
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counters_add_up_and_other_counters_do_not() {
        let listing = "table ip faultline_127_100_3 {\n chain links {\n  ip saddr 127.100.3.1 ip daddr 127.100.3.2 numgen random mod 100 < 30 counter packets 7 bytes 420 drop\n  ip saddr 127.100.3.2 ip daddr 127.100.3.1 numgen random mod 100 < 30 counter packets 5 bytes 300 drop\n  tcp dport 1 counter packets 99 bytes 1 accept\n }\n}\n";
        assert_eq!(dropped_packets(listing), 12);
    }

    #[test]
    fn only_faultline_tables_are_named_from_a_listing() {
        let listing = "table inet filter\ntable ip faultline_127_100_3\ntable ip nat\ntable ip6 faultline_x\n";
        assert_eq!(
            table_names(listing).collect::<Vec<_>>(),
            vec!["faultline_127_100_3"]
        );
    }

    #[test]
    fn the_script_creates_one_table_with_its_rules_on_the_output_hook() {
        let t = NftTable::new("/usr/sbin/nft".into(), "faultline_127_100_3".into());
        let mut rules = Rules::filter(vec![
            "ip saddr 127.100.3.1 ip daddr 127.100.3.2 drop".into(),
        ]);
        let s = t.script(&rules);
        assert!(s.starts_with("table ip faultline_127_100_3 {"), "{s}");
        assert!(s.contains("type filter hook output priority filter; policy accept;"));
        assert!(s.contains("    ip saddr 127.100.3.1 ip daddr 127.100.3.2 drop\n"));
        assert!(s.contains("type nat hook output priority -100;"), "{s}");
        rules
            .nat
            .push("ip daddr 127.100.3.2 tcp dport 3900 dnat to 127.100.3.254:4000".into());
        let s = t.script(&rules);
        assert!(s.contains("    ip daddr 127.100.3.2 tcp dport 3900 dnat to 127.100.3.254:4000\n"));
        let update = t.update_script(&rules);
        assert!(
            update.contains("\ninsert rule ip faultline_127_100_3 detour ip daddr 127.100.3.2"),
            "{update}"
        );
        assert!(
            update.contains("\nadd rule ip faultline_127_100_3 links ip saddr"),
            "{update}"
        );
    }
}
