//! Scheduled backups: takes the schedules' configuration (policies, templates, retention) and
//! a clock; gives runs at their fire times, recorded in the catalog, with retention applied
//! after each, and metrics. Uses the application layer for the work itself; must not know of
//! the DR site.
//!
//! ```text
//!  config (policies, fire times; pure) ─► server (the loop) ─► runner ─► app backup, forget
//!                                            └► catalog (SQLite): schedules, runs, backups seen
//! ```

pub mod config; // policies, templates, fire times, retention rules (pure)

pub mod catalog; // SQLite: schedules, runs, backups seen, standby state

pub mod server; // the scheduler loop, metrics
