//! Named random sub-streams of the run seed. Every random choice of a run
//! (plans, bodies' keystreams aside, fault schedules, test data) draws from
//! its own stream, so adding a draw to one never shifts another.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// A named, independent random stream derived from the run seed.
pub fn substream(seed: u64, name: &str, index: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"faultline-substream-v1");
    h.update(seed.to_be_bytes());
    h.update(name.as_bytes());
    h.update(index.to_be_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}
