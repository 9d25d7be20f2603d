//! The links between a run's nodes: a network fault's rules go into the
//! run's own nftables table (`net::nft`), named after its address block,
//! and healing deletes that table. Every change is journaled in
//! `commands.log` and its script kept under `net/` in the run directory.

use std::collections::BTreeMap;

use super::{Cluster, ClusterError, Flavor, io_err};
use crate::net::nft::{NftTable, ensure_nft};

impl Cluster {
    /// Replaces the run's link rules with `rules` (nft rule text), for the
    /// fault `label`; the script as applied.
    pub async fn cut_links(
        &mut self,
        label: &str,
        rules: &[String],
    ) -> Result<String, ClusterError> {
        if self.links.is_none() {
            let nft = ensure_nft().await.map_err(net_err)?;
            self.links = Some(NftTable::new(nft, self.ctx.addrs.table_name()));
        }
        let dir = self.ctx.run_dir.join("net");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
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

    /// Deletes the run's link rules (its whole table), if any.
    pub async fn heal_links(&mut self, label: &str) -> Result<(), ClusterError> {
        let Some(table) = self.links.as_mut() else {
            return Ok(());
        };
        let result = table.delete().await;
        self.ctx.cmdlog.append(&format!(
            "--- {} {label}: nft delete table ip {}\n=> {}\n\n",
            crate::sys::utc_now(),
            table.name(),
            match &result {
                Ok(()) => "deleted".to_string(),
                Err(e) => e.to_string(),
            }
        ));
        result.map_err(net_err)
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
