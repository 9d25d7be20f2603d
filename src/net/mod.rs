//! The network under a run's nodes: the run's own nftables table (`nft.rs`:
//! rules that cut or thin the links between node addresses, installed
//! with the `nftables` package on first use) and the connect probe that
//! confirms a cut (`probe.rs`). Knows nothing of clusters or faults: it
//! names addresses and ports only.

pub mod nft;
pub mod probe;

pub use nft::{NftError, NftTable};
pub use probe::{Reach, reach};
