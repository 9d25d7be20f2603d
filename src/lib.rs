//! faultline: a chaos runner for distributed object stores.
//!
//! The binary (`src/main.rs`) only parses arguments; everything else lives
//! in this library so tests reach it. See ARCHITECTURE.md for the map.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod console;
pub mod exit;
pub mod faults;
pub mod history;
pub mod ledger;
pub mod net;
pub mod online;
pub mod oracle;
pub mod profile;
pub mod report;
pub mod run;
pub mod s3;
pub mod selftest;
pub mod sys;
pub mod verdict;
pub mod workload;
