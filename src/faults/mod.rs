//! Faults: one process fault at a time, built from the cluster's node
//! operations (`Cluster::kill_node`, `pause_node`, `restart_node_with`,
//! `wipe_node`, ...) and gated by `Cluster::wait_recovered`. It knows
//! nothing of the workload.
//!
//! Not built yet: issue 5 ("Faults") delivers it.
