//! The integration tests, one binary (as ripgrep keeps them): real Garage
//! processes, the real binary, real ledgers. Garage is installed into the
//! user cache on first use, by the same code path `faultline up` uses.
//! `support` holds what the modules share; `tidy` checks the source tree.

mod bench;
mod cluster;
mod gate;
mod network;
mod selftest;
mod soak;
mod support;
mod teardown;
mod tidy;
mod usage;
