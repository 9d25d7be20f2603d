//! The workload: seeded workers issuing PUT, overwrite, GET, HEAD, Range
//! GET, DELETE and LIST against the cluster's S3 endpoints, with key
//! ownership so each key has one writer at a time.
//!
//! Not built yet: issue 3 ("Workload and ledger") delivers it. Until then
//! the only S3 traffic is the cluster's own probes (`crate::s3`).
