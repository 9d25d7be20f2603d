//! The run's own nftables table. A network fault is a set of rules in one
//! table named after the run's address block (`faultline_127_a_b`), in a
//! chain on the output hook, which every packet between two loopback
//! addresses passes once. Applying a fault creates the table with its
//! rules in one atomic `nft -f` transaction; healing deletes the table,
//! which undoes every rule at once. No other table is ever read, flushed
//! or touched: a run's rules name only its own addresses.
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
/// The chain the rules go into.
const CHAIN: &str = "links";
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
}

impl NftTable {
    /// The table `name` (a `TABLE_PREFIX` name), not created yet.
    pub fn new(nft: PathBuf, name: String) -> NftTable {
        debug_assert!(name.starts_with(TABLE_PREFIX));
        NftTable {
            nft,
            name,
            live: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `nft -f` script that creates the table with `rules` (each one
    /// rule's text, e.g. `ip saddr 127.1.2.1 ip daddr 127.1.2.2 drop`).
    pub fn script(&self, rules: &[String]) -> String {
        let mut s = format!(
            "table ip {t} {{\n  chain {CHAIN} {{\n    type filter hook output priority filter; policy accept;\n",
            t = self.name
        );
        for r in rules {
            s += &format!("    {r}\n");
        }
        s += "  }\n}\n";
        s
    }

    /// Creates the table with `rules`, atomically; `file` keeps the script
    /// (the run directory's record of what was applied). A table left by an
    /// earlier fault is replaced in the same transaction.
    pub async fn apply(&mut self, rules: &[String], file: &Path) -> Result<String, NftError> {
        let mut text = String::new();
        if self.exists().await? {
            text += &format!("delete table ip {}\n", self.name);
        }
        text += &self.script(rules);
        std::fs::write(file, &text).map_err(|e| NftError::Failed {
            what: format!("write {}", file.display()),
            detail: e.to_string(),
        })?;
        self.live = true;
        let f = file.display().to_string();
        self.nft(&["-f", &f], "apply the rules").await?;
        Ok(text)
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

    /// Deletes the table: every rule of the run gone at once.
    pub async fn delete(&mut self) -> Result<(), NftError> {
        if self.exists().await? {
            self.nft(&["delete", "table", "ip", &self.name], "delete the table")
                .await?;
        }
        self.live = false;
        Ok(())
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
        let s = t.script(&["ip saddr 127.100.3.1 ip daddr 127.100.3.2 drop".into()]);
        assert!(s.starts_with("table ip faultline_127_100_3 {"), "{s}");
        assert!(s.contains("type filter hook output priority filter; policy accept;"));
        assert!(s.contains("    ip saddr 127.100.3.1 ip daddr 127.100.3.2 drop\n"));
    }
}
