//! lifeboat: disaster recovery for Kubernetes applications.
//!
//! The data flow of a volume backup, in the order the modules are declared:
//!
//! ```text
//!  source volume ──► diff ──────────► backup ─────────────► repository ──► store
//!  (image, device)   which blocks     read, hash, skip       packs, index,   local dir,
//!                    to read:         zero/unchanged,        snapshots;      S3, memory
//!                    changed ranges,  seal new blocks        keys, check     (+ retry,
//!                    holes                  │                     ▲            faults)
//!                                          crypto: keyed ids,    │
//!                                          zstd + AES-GCM        │
//!  target volume ◄──────────────── restore: plan reads per pack ─┘
//! ```
//!
//! Application configuration flows beside it:
//!
//! ```text
//!  cluster (a cluster directory; later the API) ──► cluster::select ──► appbackup ──► repository
//!  target ◄── cluster / YAML dir ◄── resources: skip, sanitise, map, hold, order ◄── appbackup
//! ```
//!
//! `format` holds every struct that is stored (documented in `schema/`); `cli` turns commands
//! into calls of the modules above; `demo` makes the generated data the demo and the benchmark
//! use. Scheduling, application hooks and the catalog come later and sit upstream of `diff`
//! and downstream of `repository` respectively.

pub mod appbackup;
pub mod appvolumes;
pub mod backup;
pub mod cluster;
pub mod crypto;
pub mod diff;
pub mod format;
pub mod hooks;
pub mod live;
pub mod repository;
pub mod resources;
pub mod restore;
pub mod snapshot;
pub mod store;

pub mod cli;
pub mod demo;
