//! Exit codes, as named constants, and the one mapping from errors to them.
//! The table in README.md mirrors this file.

use crate::cluster::ClusterError;
use crate::cluster::spec::ProfileError;
use crate::ledger::LedgerError;

/// The run passed (or the command did what it was asked).
pub const PASS: u8 = 0;
/// The oracle found wrong data.
pub const FINDINGS: u8 = 1;
/// Bad arguments or configuration: nothing about the cluster was learned.
pub const USAGE: u8 = 2;
/// Infrastructure failure: install failed, the cluster never became ready,
/// or it did not recover within the deadline.
pub const INFRA: u8 = 3;
/// Something planned did not happen, so the run cannot vouch for it.
pub const COVERAGE_GAP: u8 = 4;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A bad command-line value that clap cannot check by itself.
    #[error("{0}")]
    Usage(String),
    /// The workload itself broke (a task panicked).
    #[error("{0}")]
    Workload(String),
    /// A second Ctrl-C: the run was given up and its cluster killed.
    #[error("interrupted twice: the run was abandoned and every node killed")]
    Interrupted,
}

/// The exit code for an error.
pub fn for_error(e: &Error) -> u8 {
    match e {
        Error::Cluster(c) => for_cluster_error(c),
        Error::Profile(_) | Error::Usage(_) => USAGE,
        Error::Ledger(_) | Error::Workload(_) => INFRA,
        // Abandoned before it could be judged: nothing can be vouched for.
        Error::Interrupted => COVERAGE_GAP,
    }
}

/// The exit code for a cluster error.
pub fn for_cluster_error(e: &ClusterError) -> u8 {
    match e {
        ClusterError::Profile(_)
        | ClusterError::Config(_)
        | ClusterError::PortInUse { .. }
        | ClusterError::Template(_) => USAGE,
        ClusterError::Provision(_)
        | ClusterError::Step { .. }
        | ClusterError::NotRecovered(_)
        | ClusterError::Supervisor(_)
        | ClusterError::Io { .. }
        | ClusterError::Net(_) => INFRA,
        ClusterError::WrongProbe(_) => FINDINGS,
    }
}
