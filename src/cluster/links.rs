//! The links between a run's nodes: a network fault's rules go into the
//! run's own nftables table (`net::nft`), named after its address block,
//! and healing deletes that table, or bypasses it while a healed relay
//! still carries connections it redirected (they would be reset). Every change is journaled in
//! `commands.log` and its script kept under `net/` in the run directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{Cluster, ClusterError, Flavor, io_err};
use crate::net::nft::{self, NftTable, Rules, ensure_nft};

impl Cluster {
    /// Replaces the run's link rules with `rules` (nft rule text), for the
    /// fault `label`; the script as applied.
    pub async fn cut_links(&mut self, label: &str, rules: &Rules) -> Result<String, ClusterError> {
        let dir = self.ctx.run_dir.join("net");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if self.links.is_none() {
            let nft = ensure_nft().await.map_err(net_err)?;
            let table = self.ctx.addrs.table_name();
            // Heals the table within moments of a runner that dies
            // without healing (SIGKILL), before the next run's sweep.
            let log = dir.join("guardian.log");
            let pid =
                nft::spawn_guardian(&table, self.ctx.addrs.lock_path(), &log).map_err(|e| {
                    ClusterError::Net(format!("cannot start the table's guardian: {e}"))
                })?;
            self.ctx.cmdlog.append(&format!(
                "--- {} guardian of table ip {table}: pid {pid}, log {}\n\n",
                crate::sys::utc_now(),
                log.display()
            ));
            self.links = Some(NftTable::new(nft, table));
        }
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let file = dir.join(format!("{n:03}-{}.nft", sanitize(label)));
        let table = self.links.as_mut().expect("created above");
        let result = table.apply(rules, &file).await;
        self.ctx.cmdlog.append(&format!(
            "--- {} {label}: nft -f {}\n{}=> {}\n\n",
            crate::sys::utc_now(),
            file.display(),
            std::fs::read_to_string(&file).unwrap_or_default(),
            match &result {
                Ok(_) => "applied".to_string(),
                Err(e) => e.to_string(),
            }
        ));
        result.map_err(net_err)
    }

    /// Heals the run's link rules: deletes its table, or, while
    /// connections it redirected may still be relayed, empties it and
    /// bypasses its redirects (`NftTable::bypass`), which leaves those
    /// connections alone.
    pub async fn heal_links(&mut self, label: &str) -> Result<(), ClusterError> {
        self.relays.retain(|r| r.open() > 0);
        let dir = self.ctx.run_dir.join("net");
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let Some(table) = self.links.as_mut() else {
            return Ok(());
        };
        let (what, result) = match table.redirecting() || !self.relays.is_empty() {
            true => {
                let file = dir.join(format!("{n:03}-{}-heal.nft", sanitize(label)));
                let r = table.bypass(&file).await;
                (
                    format!("nft -f {}\n{}", file.display(), r.as_deref().unwrap_or("")),
                    r.map(|_| ()),
                )
            }
            false => (
                format!("nft delete table ip {}\n", table.name()),
                table.delete().await.map(|_| ()),
            ),
        };
        self.ctx.cmdlog.append(&format!(
            "--- {} {label}: {what}=> {}\n\n",
            crate::sys::utc_now(),
            match &result {
                Ok(()) => "healed".to_string(),
                Err(e) => e.to_string(),
            }
        ));
        result.map_err(net_err)
    }

    /// Keeps a healed relay until the connections it still carries end
    /// (or the cluster is dropped); forgets the ones that have none left.
    pub fn keep_relaying(&mut self, relay: crate::net::Proxy) {
        self.relays.retain(|r| r.open() > 0);
        if relay.open() > 0 {
            self.relays.push(relay);
        }
    }

    /// The address a fault's relay listens on: the run's own.
    pub fn relay_ip(&self) -> std::net::Ipv4Addr {
        self.ctx.addrs.relay_ip()
    }

    /// The run's table as the kernel holds it now, if one exists.
    pub async fn links_listing(&self) -> Option<String> {
        self.links.as_ref()?.listing().await.ok()
    }

    /// Which peers each active node says are down, where the store tells
    /// (Garage); empty for a generic profile.
    pub async fn peers_down(&self) -> BTreeMap<String, Result<Vec<String>, String>> {
        match &self.flavor {
            Flavor::Garage(g) => {
                let active = self.active_nodes(None);
                g.peers_down(&self.ctx, &active, &self.nodes).await
            }
            Flavor::Generic(_) => BTreeMap::new(),
        }
    }
}

/// Heals what the run in `run_dir` left applied: deletes each table its
/// network scripts (`net/*.nft`) created, if the kernel still holds it.
/// What was done, one line each.
pub async fn recover(run_dir: &Path) -> Result<Vec<String>, ClusterError> {
    let dir = run_dir.join("net");
    let mut tables = BTreeSet::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            tables.extend(
                nft::table_names(&text)
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_string),
            );
        }
    }
    if tables.is_empty() {
        return Ok(vec![format!(
            "{}: no network fault was applied, nothing to heal",
            run_dir.display()
        )]);
    }
    let nft = ensure_nft().await.map_err(net_err)?;
    let mut done = Vec::new();
    for name in tables {
        let mut table = NftTable::new(nft.clone(), name.clone());
        let existed = table.delete().await.map_err(net_err)?;
        done.push(match existed {
            true => format!("table ip {name}: deleted"),
            false => format!("table ip {name}: not present, nothing to heal"),
        });
    }
    Ok(done)
}

fn net_err(e: crate::net::NftError) -> ClusterError {
    ClusterError::Net(e.to_string())
}

fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
