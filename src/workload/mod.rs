//! The workload: seeded workers issuing PUT, overwrite, GET, HEAD, Range
//! GET, DELETE and LIST against the cluster's S3 endpoints, with key
//! ownership so each key has one writer at a time.
//!
//! Built so far: deterministic object bodies (`body`). The workers, op mix
//! and read-back are the rest of issue 3 ("Workload and ledger").

pub mod body;
