//! lifeboat: disaster recovery for Kubernetes applications.
//!
//! One folder per layer, drawn here from the top (the shell) down; each layer uses only the
//! layers beneath it, so there is no import cycle (`tests/it/layout.rs` keeps it so):
//!
//! ```text
//!  cli/, demo       the shell: parse, call one library function, print
//!    │
//!  operator/        the controllers of the lifeboat.dev resources: leader (a Lease), location,
//!    │              policy, backup, schedule, restore, standby; client (`get`, failover)
//!  standby/         the DR site: journal, delta, cycle, dir_site, live_site, activate, drill,
//!    │              worker (the loop)
//!  scheduler/       cron (pure), config, catalog (SQLite), runner (one run), server (the loop)
//!    │
//!  app/             copies (inside the barrier), record (objects), volumes, request, restore
//!    │              (the order of an application restore), retention
//!  hooks/           rules, plan (per pod), exec (local or pods/exec), barrier
//!    │
//!  k8s/             objects/{sanitise,map,hold,order}, filter (pure), source (cluster directories),
//!    │              error, csi/ (snapshots, movers, restore and standby Jobs), live (the API)
//!  volume/          diff, cbt, backup, mover, restore, verify: one volume's data path
//!    │
//!  repository/      packs, index, snapshots, keys, locks, check, prune, repair
//!  store/           local, S3, memory; retry and fault-injection decorators
//!  crd              the custom resources' types, specs and statuses (deploy/base/crds/)
//!  crypto, format   keyed ids, sealing, key wrapping; every stored struct (schema/)
//!  util, metrics    names, blocking work off the runtime; the /metrics endpoint
//! ```
//!
//! The data flow of a volume backup:
//!
//! ```text
//!  source volume ──► volume::diff ──► volume::backup ──────► repository ──► store
//!  (image, device)   which blocks     read, hash, skip       packs, index,   local dir,
//!                    to read:         zero/unchanged,        snapshots;      S3, memory
//!                    changed ranges,  seal new blocks        keys, check     (+ retry,
//!                    holes                  │                     ▲            faults)
//!                                          crypto: keyed ids,    │
//!                                          zstd + AES-GCM        │
//!  target volume ◄──────────────── volume::restore: plan reads per pack
//! ```
//!
//! An application backup, upstream of it, and its restore:
//!
//! ```text
//!  k8s::source / k8s::live ──► scope ──► app::record (objects, sealed) ──────────► repository
//!  hooks: pre rules ─► barrier ─► app::copies (reflink/copy) or k8s::csi (group/VolumeSnapshots) ─► post rules
//!                                      └► app::volumes: each copy ─► volume::backup (a mover Job
//!                                         on a live cluster, reading only what cbt reports changed)
//!  target ◄── k8s::source / k8s::live ◄── k8s::objects: skip, sanitise, map, hold, order ◄── app
//! ```
//!
//! Scheduling drives it all, and the DR site reads it back (from files and the CLI, or from the
//! resources the operator reconciles):
//!
//! ```text
//!  scheduler::config ─► scheduler::server ─► app (backup, retention) ─► repository
//!                          └► scheduler::catalog (SQLite) ◄── backups seen
//!  repository ─► standby: block-map difference, journal, commit ─► DR site (held; activate)
//!  operator: BackupSchedule ─► Backup objects ─► app ─► repository ─► Backup objects on the DR
//!            site; Standby ─► standby (cycles; active: activate) ; Restore ─► app::restore
//! ```

// Bottom to top (rustfmt keeps the order of declarations separated by blank lines).
pub mod util; // names, blocking work off the runtime

pub mod metrics; // the /metrics and /healthz endpoint

pub mod format; // every stored struct (schema/FORMAT.md)

pub mod crd; // the custom resources: specs and statuses (deploy/base/crds/)

pub mod crypto; // keyed ids, sealing, key wrapping

pub mod store; // local, S3, memory; retry and faults

pub mod repository; // packs, index, snapshots, keys, check, locks, prune

pub mod volume; // diff, cbt, backup, restore

pub mod k8s; // objects, cluster directories, the live API, CSI

pub mod hooks; // rules and the barrier around a group snapshot

pub mod app; // application backups, restores, retention

pub mod scheduler; // policies, fire times, the catalog, the server loop

pub mod standby; // the DR site: warm standby, activate, drill

pub mod operator; // the controllers of the lifeboat.dev resources

// The shell.
pub mod demo;

pub mod cli;
