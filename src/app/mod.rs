//! Application backups and restores: takes the Kubernetes layer's objects and volumes, the
//! rules around them and the repository; gives backup records (objects and volume snapshots
//! together), restore plans and their execution, and retention. Uses hooks, k8s, volume and
//! repository; must not know of schedules, the catalog or the DR site.
//!
//! ```text
//!  objects ─► record (sealed per object) ─► repository
//!  hooks: pre ─► barrier ─► copies (reflink/copy) or CSI snapshots ─► post
//!                              └► volumes: each copy through the volume backup ─► record
//!  record ─► plan ─► restore (volumes first, then objects in order)
//!  records ─► retention (forget) ─► delete (one backup by name)
//! ```

pub mod copies; // group copies of volume files (reflink or copy)

pub mod names; // backup names kept unique: a short claim while a record is written

pub mod record; // backup records of objects, restore planning

pub mod volumes; // the volumes of application backups and restores

pub mod request; // a backup request: typed, validated, run from a cluster dir or live

pub mod restore; // a restore in order: plan, volumes, then objects (or a dry run)

pub mod retention; // retention applied: records and their snapshots

pub mod delete; // one backup deleted by name: forget (never a schedule's last good one), prune

pub mod restore_record; // what a restore did, as its record keeps it (pure)
