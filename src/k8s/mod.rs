//! Kubernetes, as data and as an API: takes objects (from a cluster directory or the API
//! server) and gives them scoped, sanitised, mapped, held and ordered for a restore; talks to
//! a live cluster (discovery, lists, server-side apply, CSI snapshots and the Jobs that move
//! volume data). Uses the volume layer (changed-block client) and the stored formats below
//! it; must not know of rules, application records, schedules or the DR site.
//!
//! ```text
//!  objects (pure: ObjRef, sanitise, map, hold, order)
//!    ▲
//!  filter (pure: label selectors, resource names and types, namespace globs)
//!    ▲
//!  source (cluster directories, scopes, filters)
//!    ▲
//!  error (one enum for the layer, wrapping the two above)
//!    ▲
//!  watch (waits on the API server: a list, then a watch, and a verdict)
//!    ▲
//!  csi (snapshots, movers, restore and standby Jobs) ◄── live (the API server)
//! ```

pub mod objects; // sanitise, map, hold, order (pure)

pub mod filter; // selectors, resource names, namespace globs (pure)

pub mod source; // cluster directories, scopes, filters

pub mod error; // one error type for the layer

pub mod watch; // waiting by watching, never polling

pub mod csi; // CSI snapshots and the mover Jobs of a live cluster

pub mod live; // the Kubernetes API: capture, apply, workloads

pub use error::LiveError;
