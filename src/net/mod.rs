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
