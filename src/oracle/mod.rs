//! The oracle: a pure function from a history of operations to a verdict
//! with findings, implementing `shared/design/oracle.md`. It does no I/O.
//!
//! Not built yet: issue 4 ("Oracle") delivers it.
