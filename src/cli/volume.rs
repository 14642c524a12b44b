//! `volume backup|restore|verify` and `snapshots`: one volume (an image file or a block
//! device) and its snapshots; also what the mover Jobs run.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{human, write_report, Ctx, Error};
use crate::repository::rfc3339;
use crate::volume::backup::{backup_volume, BackupOptions};
use crate::volume::mover::{self, CsiDelta};
use crate::volume::restore::{restore_volume, RestoreOptions};

/// Changed blocks from the CSI SnapshotMetadata service, for `volume backup` in a mover Job
/// (the Job is given these by lifeboat; anything that fails falls back to comparing hashes).
#[derive(Debug, Clone, Args)]
pub struct CsiDeltaArgs {
    /// SnapshotMetadata service address (host:port).
    #[arg(long, value_name = "HOST:PORT", hide = true, conflicts_with_all = ["changed_ranges", "full"],
          requires_all = ["csi_delta_ca", "csi_delta_token_file", "csi_delta_namespace", "csi_delta_base", "csi_delta_target", "csi_delta_parent"])]
    csi_delta_address: Option<String>,
    /// Its CA bundle: PEM, or PEM in base64 as a SnapshotMetadataService's `spec.caCert`.
    #[arg(
        long,
        env = "LIFEBOAT_CSI_DELTA_CA",
        hide = true,
        hide_env_values = true
    )]
    csi_delta_ca: Option<String>,
    /// File holding a ServiceAccount token for the service's audience.
    #[arg(long, value_name = "FILE", hide = true)]
    csi_delta_token_file: Option<PathBuf>,
    /// Namespace of the two VolumeSnapshots.
    #[arg(long, hide = true)]
    csi_delta_namespace: Option<String>,
    /// The base snapshot's CSI snapshot handle.
    #[arg(long, hide = true)]
    csi_delta_base: Option<String>,
    /// The VolumeSnapshot being read.
    #[arg(long, hide = true)]
    csi_delta_target: Option<String>,
    /// The source label of the repository snapshot that was read from the base: the
    /// ranges are used only when NAME's newest snapshot carries it.
    #[arg(long, hide = true)]
    csi_delta_parent: Option<String>,
    /// Write why the changed blocks were not used, when they were not, here (the mover
    /// Job's termination message, which lifeboat turns into a warning of the backup).
    #[arg(long, value_name = "FILE", hide = true)]
    csi_delta_report_file: Option<PathBuf>,
}

impl CsiDeltaArgs {
    /// The request to the service, when every value of it is given.
    fn delta(&self) -> Option<CsiDelta> {
        Some(CsiDelta {
            address: self.csi_delta_address.clone()?,
            ca: self.csi_delta_ca.clone()?,
            token_file: self.csi_delta_token_file.clone()?,
            namespace: self.csi_delta_namespace.clone()?,
            base: self.csi_delta_base.clone()?,
            target: self.csi_delta_target.clone()?,
            parent: self.csi_delta_parent.clone()?,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Back up an image file or block device as snapshot of volume NAME, incrementally
    /// against NAME's newest snapshot.
    #[command(
        after_help = "Example:\n  lifeboat volume backup --name pg-data --changed-ranges delta.json /dev/vg0/pg-snap"
    )]
    Backup {
        /// Volume name (incrementals chain by name).
        #[arg(long)]
        name: String,
        /// Image file or block device.
        source: PathBuf,
        /// JSON array of {"offset": N, "length": N} byte extents changed since the newest
        /// snapshot of NAME: only those are read.
        #[arg(long, value_name = "FILE")]
        changed_ranges: Option<PathBuf>,
        /// Read and hash every block instead of comparing with the parent.
        #[arg(long, conflicts_with = "changed_ranges")]
        full: bool,
        /// What the snapshot records as its source instead of the path (the mover Jobs
        /// name the claim and snapshot they read).
        #[arg(long, hide = true)]
        label: Option<String>,
        #[command(flatten)]
        csi_delta: Box<CsiDeltaArgs>,
    },
    /// Restore a snapshot (id, unique id prefix, or NAME:latest) to a new file, or with
    /// --overwrite onto an existing file or block device.
    #[command(
        after_help = "Example:\n  lifeboat volume restore pg-data:latest --overwrite /dev/vg1/pg-restore"
    )]
    Restore {
        /// Snapshot id, unique id prefix, or NAME:latest.
        snapshot: String,
        /// File or block device to write (a new file unless --overwrite).
        target: PathBuf,
        /// Update an existing target in place (e.g. an older copy, or a block device): only
        /// blocks that differ are written.
        #[arg(long)]
        overwrite: bool,
        /// Ranged reads in flight.
        #[arg(long, default_value_t = 4)]
        downloads: usize,
    },
    /// Check an image file or block device against a snapshot, block by block (keyed hashes
    /// and zeros as the block map says); exit 4 on a difference.
    #[command(
        after_help = "Example:\n  lifeboat volume verify pg-data:latest /dev/vg1/pg-restore"
    )]
    Verify {
        /// Snapshot id, unique id prefix, or NAME:latest.
        snapshot: String,
        /// Image file or block device to compare with it.
        target: PathBuf,
        /// Write the result as JSON here and exit 0 whatever it says (the drill's Jobs: their
        /// termination message, which the drill reads).
        #[arg(long, value_name = "FILE", hide = true)]
        report_file: Option<PathBuf>,
    },
}

/// `volume verify`'s result (also a drill's verify Job report, which the drill reads back:
/// `verified` and `blocks_verified` keep their names).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct VerifyReport {
    /// The snapshot compared with.
    pub snapshot_id: String,
    /// Whether every block (and the size) is the snapshot's.
    pub verified: bool,
    /// Whether the target's size fits the snapshot (an image file exactly, a device at least).
    pub size_matches: bool,
    /// Blocks that are the snapshot's.
    pub blocks_verified: u64,
    /// Blocks that are not.
    pub blocks_mismatched: u64,
    /// Blocks the snapshot has.
    pub blocks_total: u64,
    /// The first (up to 10) mismatching blocks.
    pub first_mismatches: Vec<BlockMismatch>,
}

/// One block of a target that is not the snapshot's.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct BlockMismatch {
    /// The block's number (from 0).
    pub block: u64,
    /// Where it starts in the target.
    pub offset_bytes: u64,
}

pub(super) async fn volume(ctx: &Ctx<'_>, cmd: &VolumeCommand) -> Result<(), Error> {
    match cmd {
        VolumeCommand::Backup {
            name,
            source,
            changed_ranges,
            full,
            label,
            csi_delta,
        } => {
            let mut opts = BackupOptions::new(name, source);
            opts.changed_ranges = changed_ranges.clone();
            opts.full = *full;
            opts.label = label.clone();
            let delta = csi_delta
                .delta()
                .map(|d| (d, csi_delta.csi_delta_report_file.clone()));
            backup(ctx, opts, delta).await
        }
        VolumeCommand::Restore {
            snapshot,
            target,
            overwrite,
            downloads,
        } => {
            let opts = RestoreOptions {
                downloads: *downloads,
                overwrite: *overwrite,
            };
            restore(ctx, snapshot, target, &opts).await
        }
        VolumeCommand::Verify {
            snapshot,
            target,
            report_file,
        } => verify(ctx, snapshot, target, report_file.as_deref()).await,
    }
}

/// A snapshot of the volume, reading only the blocks the CSI delta (if given and trusted)
/// says changed.
async fn backup(
    ctx: &Ctx<'_>,
    mut opts: BackupOptions,
    delta: Option<(CsiDelta, Option<PathBuf>)>,
) -> Result<(), Error> {
    let name = opts.name.clone();
    let repo = ctx.open_shared(&format!("volume backup {name}")).await?;
    if let Some((d, report)) = &delta {
        match mover::changed_ranges(&repo, &name, d, &ctx.cancel).await {
            Ok(given) => opts.given_ranges = Some(given),
            Err(why) => {
                if let Some(f) = report {
                    let text = format!("changed blocks not used: {why}");
                    if let Err(e) = std::fs::write(f, text) {
                        tracing::warn!("cannot write {}: {e}", f.display());
                    }
                }
            }
        }
    }
    let pb = ctx.progress(&format!("backup {name}"));
    let out = backup_volume(repo, &opts, &pb).await?;
    pb.finish_and_clear();
    ctx.emit(&out, || {
        let s = &out.stats;
        format!(
            "snapshot {} of {name} ({}): read {}, new {}, uploaded {}, {}/{} blocks changed, {:.2}s",
            out.snapshot_id.short(),
            out.change_source,
            human(s.bytes_read),
            human(s.bytes_new),
            human(s.bytes_uploaded),
            s.blocks_changed,
            s.blocks_total,
            s.duration_seconds
        )
    });
    Ok(())
}

async fn restore(
    ctx: &Ctx<'_>,
    snapshot: &str,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<(), Error> {
    let repo = ctx
        .open_to_read(&format!("volume restore {snapshot}"))
        .await?;
    let (id, snap) = repo.resolve_snapshot(snapshot).await?;
    let pb = ctx.progress(&format!("restore {}", id.short()));
    let stats = restore_volume(repo, id, &snap, target, opts, &pb).await?;
    pb.finish_and_clear();
    ctx.emit(&stats, || {
        format!(
            "restored {} ({}) to {} [{}]: wrote {} in {} blocks, {} blocks already identical, fetched {}, {:.2}s",
            id.short(),
            snap.name,
            stats.target,
            stats.mode,
            human(stats.written_bytes),
            stats.blocks_written,
            stats.blocks_unchanged,
            human(stats.fetched_bytes),
            stats.duration_seconds
        )
    });
    Ok(())
}

/// Checks the target block by block; a difference is an error unless the result goes to a
/// report file (a drill's Job, whose report says it).
async fn verify(
    ctx: &Ctx<'_>,
    snapshot: &str,
    target: &Path,
    report_file: Option<&Path>,
) -> Result<(), Error> {
    let repo = ctx
        .open_to_read(&format!("volume verify {snapshot}"))
        .await?;
    let (id, snap) = repo.resolve_snapshot(snapshot).await?;
    let index = repo.load_index().await?;
    let count = crate::volume::verify::verify_volume(&repo, &index, &snap, target).await?;
    let report = VerifyReport {
        snapshot_id: id.to_hex(),
        verified: count.verified(),
        size_matches: count.size_fits,
        blocks_verified: count.blocks_matching,
        blocks_mismatched: count.blocks_mismatching(),
        blocks_total: count.blocks_total,
        first_mismatches: count
            .first_mismatches
            .iter()
            .map(|&(block, offset_bytes)| BlockMismatch {
                block,
                offset_bytes,
            })
            .collect(),
    };
    if let Some(f) = report_file {
        write_report(f, &report);
    }
    ctx.emit(&report, || {
        verify_text(&report, target, &id.short(), &snap.name)
    });
    if report.verified || report_file.is_some() {
        Ok(())
    } else {
        Err(Error::VolumeDiffers {
            target: target.display().to_string(),
            snapshot: id.short(),
            mismatched: report.blocks_mismatched,
            total: report.blocks_total,
        })
    }
}

/// The human form of a verify: the counts, then the first mismatching blocks.
fn verify_text(r: &VerifyReport, target: &Path, short: &str, name: &str) -> String {
    let mut text = format!(
        "{}: {} of {} blocks match snapshot {short} ({name})",
        target.display(),
        r.blocks_verified,
        r.blocks_total,
    );
    if !r.size_matches {
        text.push_str(": DIFFERENT (its size does not fit the snapshot's)");
    } else if !r.verified {
        text.push_str(&format!(
            ": DIFFERENT, {} block(s) mismatch; first at byte offsets {}",
            r.blocks_mismatched,
            r.first_mismatches
                .iter()
                .map(|m| format!("{} (block {})", m.offset_bytes, m.block))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    text
}

/// One row of `snapshots --json`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct SnapshotListing {
    /// The snapshot's id (hex).
    pub id: String,
    /// The volume's name.
    pub name: String,
    /// When it was taken (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    pub size_bytes: u64,
    /// The snapshot it is incremental to.
    pub parent_id: Option<String>,
    pub hostname: String,
    /// The file or device it was read from.
    pub source: String,
    /// How the changed blocks were found.
    pub change_source: crate::format::ChangeSource,
    pub read_bytes: u64,
    pub new_bytes: u64,
    pub uploaded_bytes: u64,
    pub blocks_total: u64,
    pub blocks_changed: u64,
    pub duration_seconds: f64,
}

pub(super) async fn snapshots(ctx: &Ctx<'_>) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let all = repo.list_snapshots().await?;
    let rows: Vec<SnapshotListing> = all
        .iter()
        .map(|(id, s)| SnapshotListing {
            id: id.to_hex(),
            name: s.name.clone(),
            started_at: rfc3339(s.time),
            size_bytes: s.size,
            parent_id: s.parent.map(|p| p.to_hex()),
            hostname: s.hostname.clone(),
            source: s.source.clone(),
            change_source: s.change_source,
            read_bytes: s.stats.bytes_read,
            new_bytes: s.stats.bytes_new,
            uploaded_bytes: s.stats.bytes_uploaded,
            blocks_total: s.stats.blocks_total,
            blocks_changed: s.stats.blocks_changed,
            duration_seconds: s.stats.duration_seconds,
        })
        .collect();
    ctx.emit(&rows, || {
        if rows.is_empty() {
            return "no snapshots".into();
        }
        super::table(
            &["ID", "STARTED", "NAME", "SIZE", "PARENT"],
            &[3],
            rows.iter().map(|r| {
                vec![
                    r.id[..8].to_string(),
                    r.started_at.clone(),
                    r.name.clone(),
                    human(r.size_bytes),
                    r.parent_id
                        .as_deref()
                        .map(|p| p[..8].to_string())
                        .unwrap_or_else(|| "-".into()),
                ]
            }),
        )
    });
    Ok(())
}
