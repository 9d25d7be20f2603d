//! Exit codes, as named constants, and the one mapping from errors to them.
//! The table in README.md mirrors this file.

use crate::cluster::ClusterError;

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
        | ClusterError::Io { .. } => INFRA,
    }
}
