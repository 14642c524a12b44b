//! Scheduled backups: takes the schedules' configuration (policies, templates, retention) and
//! a clock; gives runs at their fire times, recorded in the catalog, with retention applied
//! after each, and metrics. Uses the application layer for the work itself; must not know of
//! the DR site.
//!
//! ```text
//!  cron (fire times; pure) ─► config (policies, schedules; pure)
//!                                 │
//!  catalog (SQLite): schedules, runs, backups seen, standby state
//!                                 │
//!  server (the loop, metrics) ─► runner ─► app: backup, retention
//! ```

pub mod cron; // triggers and fire times (pure)

pub mod config; // policies, templates, schedules from YAML (pure)

pub mod catalog; // SQLite: schedules, runs, backups seen, standby state

pub mod restores; // the catalog's records of restores: kept, listed, described

pub mod runner; // one run: its backup and its retention

pub mod server; // the scheduler loop, metrics, SIGHUP

pub use catalog::{CatalogError, RunResult, RunState};
pub use runner::{RunError, RunOutcome, Runner};
pub use server::ServerError;
