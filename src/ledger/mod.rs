//! The ledger: the run's SQLite file holding every operation, every
//! acknowledged write, every fault and every finding. Only this module
//! touches SQLite.
//!
//! Not built yet: issue 3 ("Workload and ledger") delivers it.
