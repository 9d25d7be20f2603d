//! Per-node loopback addresses. Every run leases a block `127.a.b.0/24`
//! of its own and gives node i (from 0) the address `127.a.b.(i+1)`, so
//! traffic between two nodes can be told apart from all other traffic
//! (the runner's own connections leave from 127.0.0.1) and cut or slowed
//! by rules that name the pair. The lease is an exclusive `flock` on a
//! file named after the block, held for the run's life: two runs on one
//! machine never share a block, and a SIGKILLed runner's lease ends with
//! its process.

use std::fs::File;

use nix::fcntl::{Flock, FlockArg};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use rand::Rng;

use super::ClusterError;

/// The second octet of a block ranges over this span (127.0.x.x is left
/// to the system: 127.0.0.1, systemd-resolved's 127.0.0.53).
const FIRST_OCTET: std::ops::RangeInclusive<u8> = 100..=199;
/// Nodes per block: `.1` to `.253`; `.254` is the run's relay.
pub const MAX_NODES: usize = 253;

/// A leased block of loopback addresses.
#[derive(Debug)]
pub struct AddrLease {
    block: [u8; 2],
    path: PathBuf,
    _lock: Flock<File>,
}

impl AddrLease {
    /// Leases a free block, trying blocks from a random one on, under
    /// `dir` (created if missing).
    pub fn acquire(dir: &Path) -> Result<AddrLease, ClusterError> {
        std::fs::create_dir_all(dir).map_err(super::io_err(dir))?;
        let span = (*FIRST_OCTET.end() - *FIRST_OCTET.start()) as u32 + 1;
        let blocks = span * 256;
        let start = rand::rng().random_range(0..blocks);
        for i in 0..blocks {
            let n = (start + i) % blocks;
            let block = [FIRST_OCTET.start() + (n / 256) as u8, (n % 256) as u8];
            let path = dir.join(format!("127.{}.{}.0.lock", block[0], block[1]));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(super::io_err(&path))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            let lease = AddrLease {
                block,
                path,
                _lock: lock,
            };
            // Something outside faultline may listen there already.
            if TcpListener::bind((lease.ip(0), 0)).is_ok() {
                return Ok(lease);
            }
        }
        Err(ClusterError::Config(format!(
            "no free block of loopback addresses under {}: every 127.{}-{}.x.0/24 is leased",
            dir.display(),
            FIRST_OCTET.start(),
            FIRST_OCTET.end()
        )))
    }

    /// The default lease directory: one per machine, beside other runs'.
    pub fn default_dir() -> PathBuf {
        std::env::temp_dir().join("faultline-addrs")
    }

    /// Node `i`'s address (from 0).
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        assert!(i < MAX_NODES, "a block has {MAX_NODES} node addresses");
        Ipv4Addr::new(127, self.block[0], self.block[1], i as u8 + 1)
    }

    /// The address the run's relay (`net::proxy`) listens on.
    pub fn relay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.block[0], self.block[1], 254)
    }

    /// The block, as `127.a.b.0/24`.
    pub fn block(&self) -> String {
        format!("127.{}.{}.0/24", self.block[0], self.block[1])
    }

    pub fn lock_path(&self) -> &Path {
        &self.path
    }

    /// The name of the run's nftables table: named after the block, so a
    /// table outlives its run only as long as nobody leases the block.
    pub fn table_name(&self) -> String {
        format!(
            "{}127_{}_{}",
            crate::net::nft::TABLE_PREFIX,
            self.block[0],
            self.block[1]
        )
    }

    /// Is `table` (a faultline table name) left by a run that is gone: its
    /// block's lease file exists under `dir` and nobody holds it?
    pub fn table_is_stale(dir: &Path, table: &str) -> bool {
        let Some(rest) = table.strip_prefix(crate::net::nft::TABLE_PREFIX) else {
            return false;
        };
        let path = dir.join(format!("{}.0.lock", rest.replace('_', ".")));
        match File::options().write(true).open(&path) {
            // Free again once this probe's lock drops at the end of the arm.
            Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok(),
            // A table without a lease file: not one this machine's runs made.
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leases_never_share_a_block_and_a_dropped_one_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = AddrLease::acquire(dir.path()).unwrap();
        let b = AddrLease::acquire(dir.path()).unwrap();
        assert_ne!(a.block(), b.block());
        assert_ne!(a.ip(0), b.ip(0));
        assert_eq!(a.ip(2).octets()[3], 3);
        assert!(a.ip(0).is_loopback());
        // Another open of the same lock file cannot take it while `a` holds it.
        let again = || File::options().write(true).open(a.lock_path()).unwrap();
        assert!(Flock::lock(again(), FlockArg::LockExclusiveNonblock).is_err());
        let path = a.lock_path().to_path_buf();
        let table = a.table_name();
        assert!(table.starts_with("faultline_127_"), "{table}");
        assert!(!AddrLease::table_is_stale(dir.path(), &table));
        drop(a);
        assert!(AddrLease::table_is_stale(dir.path(), &table));
        assert!(!AddrLease::table_is_stale(dir.path(), "faultline_127_1_1"));
        let reopened = File::options().write(true).open(&path).unwrap();
        assert!(Flock::lock(reopened, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
