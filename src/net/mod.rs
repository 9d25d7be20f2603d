//! The network under a run's nodes: the run's own nftables table (`nft.rs`:
//! rules that cut or thin the links between node addresses, installed
//! with the `nftables` package on first use), the relay a degraded link's
//! or a client path's connections are redirected through (`proxy.rs`) and
//! the connect probe that confirms a fault (`probe.rs`). Knows nothing of clusters or faults: it
//! names addresses and ports only.

pub mod nft;
pub mod probe;
pub mod proxy;

pub use nft::{NftError, NftTable, Rules};
pub use probe::{Reach, connect_from, reach};
pub use proxy::{Proxy, Toxic};

/// Whether this process holds CAP_NET_ADMIN (its effective capabilities
/// in `/proc/self/status`), which nftables rules and the relay's socket
/// mark need.
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}
