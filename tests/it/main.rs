//! lifeboat's integration tests: one binary, a module per area.
//!
//! The S3 tests start a real Garage server on loopback (see `support::garage`); `tests/run.sh`
//! installs Garage when it is missing. The `cluster` tests run against the two real test
//! clusters of `tests/cluster/` that `tests/run.sh` starts (a primary and a DR site).

mod appbackup;
mod cbt;
mod cli;
mod cluster;
mod concurrency;
mod consistency;
mod crash;
mod damage;
mod devices;
mod dr;
mod fixtures;
mod format;
mod fuzz;
mod kube_exec;
mod layout;
mod live;
mod live_volumes;
mod mover;
mod readonly;
mod records;
mod repository;
mod robustness;
mod schedules;
mod secrets;
mod store_conformance;
mod support;
mod volume;
