//! One volume's data path: takes a source (an image file or a block device, the same path a
//! data mover reads for a block-mode claim) and the repository; gives snapshots of it and
//! restores of them. Uses the repository below it and nothing above: no Kubernetes, no
//! application records.
//!
//! ```text
//!  source ─► diff ─────────► backup ──────────► repository
//!            which blocks:   read, hash, skip
//!            changed ranges  zero/unchanged,
//!            (cbt), holes    seal new blocks
//!  target ◄──────────────── restore: planned pack reads, verified writes
//! ```

pub mod diff; // which blocks to read (pure extent math, SEEK_DATA)

pub mod cbt; // changed blocks from the CSI SnapshotMetadata service (gRPC)

pub mod backup; // read, hash, compress, seal, pack

pub mod mover; // a mover Job's changed blocks: the CSI delta, or None (compare hashes)

pub mod restore; // planned pack reads, verified writes

pub mod verify; // a target checked block by block against a snapshot
