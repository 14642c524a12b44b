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
//!  cluster (a cluster directory, or the API: live) ──► cluster::select ──► appbackup ──► repository
//!  target ◄── cluster / YAML dir ◄── resources: skip, sanitise, map, hold, order ◄── appbackup
//! ```
//!
//! Scheduling drives it all, and the DR site reads it back:
//!
//! ```text
//!  schedule (policies, fire times, retention) ─► server ─► hooks ─► … ─► repository
//!                                                  │                       │
//!                                                  └► catalog (SQLite) ◄──┘ forget, prune
//!  repository ─► standby: block-map difference, journal, commit ─► DR site (held; activate)
//! ```
//!
//! And an application backup's volumes, upstream of the volume flow:
//!
//! ```text
//!  hooks: pre rules ─► barrier ─► snapshot (reflink/copy) or csi (group/VolumeSnapshots) ─► post rules
//!                                      │ point-in-time copies
//!                                      ▼
//!  appvolumes: each copy ─► backup (as above; a mover Job on a live cluster, reading only
//!              the blocks cbt reports changed when the CSI driver tracks them) ─► record
//! ```
//!
//! `format` holds every struct that is stored (documented in `schema/`); `live` is the
//! Kubernetes API (capture, apply, exec); `cli` turns commands into calls of the modules
//! above; `demo` makes the generated data the demo and the benchmark use.

// In flow order (rustfmt keeps the order of declarations separated by blank lines).
pub mod schedule; // policies, fire times, retention (pure)

pub mod hooks; // rules and the barrier around a group snapshot

pub mod snapshot; // group copies of volume files (reflink or copy)

pub mod csi; // CSI snapshots and the mover Jobs of a live cluster

pub mod cbt; // changed blocks from the CSI SnapshotMetadata service

pub mod appvolumes; // the volumes of application backups and restores

pub mod diff; // which blocks to read

pub mod backup; // read, hash, compress, seal, pack

pub mod crypto; // keyed ids, sealing, key wrapping

pub mod format; // every stored struct

pub mod repository; // packs, index, snapshots, keys, check

pub mod store; // local, S3, memory; retry and faults

pub mod restore; // planned pack reads, verified writes

pub mod forget; // retention applied: records and their snapshots

pub mod catalog; // SQLite: schedules, runs, backups seen

pub mod server; // the scheduler loop, metrics

pub mod standby; // the DR site: warm standby, activate, drill

// Application configuration.
pub mod appbackup; // backup records of objects, restore planning

pub mod cluster; // cluster directories, scopes, filters

pub mod live; // the Kubernetes API

pub mod resources; // sanitise, map, hold, order (pure)

// The shell.
pub mod cli;

pub mod demo;
