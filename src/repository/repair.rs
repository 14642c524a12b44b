//! Repair: takes a repository with lost or damaged objects (what `check` reports); gives it
//! back consistent: the index rebuilt from the packs' own trailers, the snapshots that are
//! damaged or reference data that no pack holds removed, and the backup records that cannot be
//! read removed, so that every snapshot left restores, check passes and prune can run again. A dry run reports the same without writing.
//!
//! Must not delete a pack, nor lose a blob that a readable pack holds: the new index objects
//! are written before the old ones go, and a pack whose trailer cannot be read is reported (its
//! blobs are lost to the index, the pack itself is left for a person to look at).

use std::collections::HashSet;

use futures::StreamExt;
use serde::Serialize;

use super::{Index, LockKind, RepoError, Repository};
use crate::crypto::Role;
use crate::format::{
    AppBackup, BlockRef, IndexFile, IndexPack, PackId, PackTrailer, Snapshot, SnapshotId,
    FORMAT_VERSION, PACK_MAGIC,
};

/// Index objects written by a repair, at most this many packs each.
const PACKS_PER_INDEX: usize = 512;

#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    /// Report what would be done; write and delete nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Packs whose trailers were read into the new index.
    pub packs_indexed: usize,
    pub blobs_indexed: usize,
    /// Packs whose trailer cannot be read (`key: reason`): their blobs are not indexed.
    pub packs_unreadable: Vec<String>,
    pub index_files_replaced: usize,
    pub index_files_written: usize,
    /// Snapshots removed (`snapshots/<id>: reason`).
    pub snapshots_removed: Vec<String>,
    /// Application backup records that name a removed snapshot: their configuration still
    /// restores, those volumes do not.
    pub backups_affected: Vec<String>,
    /// Backup records removed because they cannot be read (`backups/<id>: reason`): nothing
    /// could ever restore them. The snapshots of their volumes stay.
    pub backups_removed: Vec<String>,
}

impl RepairReport {
    /// What the repair could not recover: snapshots removed, packs that cannot be read,
    /// backup records removed.
    pub fn losses(&self) -> usize {
        self.snapshots_removed.len() + self.packs_unreadable.len() + self.backups_removed.len()
    }
}

impl Repository {
    /// Rebuilds the index from the packs and removes the snapshots that cannot be restored.
    /// Holds an exclusive lock.
    pub async fn repair(&self, opts: &RepairOptions) -> Result<RepairReport, RepoError> {
        let lock = self.lock(LockKind::Exclusive, "repair").await?;
        let result = self.repair_locked(opts).await;
        lock.release().await?;
        result
    }

    async fn repair_locked(&self, opts: &RepairOptions) -> Result<RepairReport, RepoError> {
        let mut report = RepairReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let packs = self.packs_from_trailers(&mut report).await?;
        report.packs_indexed = packs.len();
        report.blobs_indexed = packs.iter().map(|p| p.blobs.len()).sum();
        let files: Vec<IndexFile> = packs
            .chunks(PACKS_PER_INDEX)
            .map(|c| IndexFile {
                version: FORMAT_VERSION,
                packs: c.to_vec(),
            })
            .collect();
        let index = {
            let f = files.clone();
            super::cpu(move || Index::from_files(f)).await?
        };
        let removed = self.unrestorable_snapshots(&index, &mut report).await?;
        let damaged_records = self.affected_backups(&removed, &mut report).await?;
        if opts.dry_run {
            return Ok(report);
        }

        // The new index first, then the old objects go (all of them: damaged or not, they
        // describe packs the new one describes from the packs themselves).
        let old: Vec<String> = self
            .store()
            .list("index/", self.cancel())
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let mut written = HashSet::new();
        for f in &files {
            let (hash, _) = self.write_sealed_json("index", f, Role::Index).await?;
            written.insert(format!("index/{}", hex::encode(hash)));
        }
        report.index_files_written = written.len();
        for key in old.iter().filter(|k| !written.contains(*k)) {
            self.store().delete(key, self.cancel()).await?;
            report.index_files_replaced += 1;
        }
        for key in removed.iter().map(|id| id.key()).chain(damaged_records) {
            self.store().delete(&key, self.cancel()).await?;
        }
        tracing::info!(
            packs = report.packs_indexed,
            snapshots_removed = removed.len(),
            "repository repaired"
        );
        Ok(report)
    }

    /// Every stored pack's blob list, from its trailer (two ranged reads a pack).
    async fn packs_from_trailers(
        &self,
        report: &mut RepairReport,
    ) -> Result<Vec<IndexPack>, RepoError> {
        let stored = self.store().list("data/", self.cancel()).await?;
        let mut reads = futures::stream::iter(stored)
            .map(|o| async move {
                let id: Option<PackId> = o.key.rsplit('/').next().and_then(|h| h.parse().ok());
                let Some(id) = id.filter(|id| id.key() == o.key) else {
                    return Ok(Err(format!("{}: not a pack name", o.key)));
                };
                Ok::<_, RepoError>(self.read_trailer(id, o.size).await)
            })
            .buffer_unordered(8);
        let mut packs = Vec::new();
        while let Some(r) = reads.next().await {
            match r? {
                Ok(p) => packs.push(p),
                Err(why) => report.packs_unreadable.push(why),
            }
        }
        packs.sort_by_key(|p| p.id);
        Ok(packs)
    }

    /// One pack's trailer; Err(reason) when it cannot be read or verified.
    async fn read_trailer(&self, id: PackId, size: u64) -> Result<IndexPack, String> {
        let key = id.key();
        let fail = |e: &dyn std::fmt::Display| format!("{key}: {e}");
        if size < 12 {
            return Err(fail(&"shorter than a pack trailer"));
        }
        let tail = self
            .store()
            .get_range(&key, size - 12, 12, self.cancel())
            .await
            .map_err(|e| fail(&e))?;
        if tail.len() != 12 || &tail[4..] != PACK_MAGIC {
            return Err(fail(&"no pack trailer (bad magic)"));
        }
        let tlen = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
        if tlen > size - 12 {
            return Err(fail(&format!("trailer length {tlen} exceeds the pack")));
        }
        let sealed = self
            .store()
            .get_range(&key, size - 12 - tlen, tlen, self.cancel())
            .await
            .map_err(|e| fail(&e))?;
        let keys = self.keys().clone();
        let trailer: PackTrailer = super::cpu(move || {
            keys.open(Role::PackTrailer, &sealed, 64 << 20)
                .map_err(|e| e.to_string())
                .and_then(|p| serde_json::from_slice(&p).map_err(|e| e.to_string()))
        })
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&format!("pack trailer: {e}")))?;
        let body = size - 12 - tlen;
        if let Some(b) = trailer
            .blobs
            .iter()
            .find(|b| b.offset + b.length as u64 > body)
        {
            return Err(fail(&format!("blob {} lies past the pack's body", b.id)));
        }
        Ok(IndexPack {
            id,
            size,
            blobs: trailer.blobs,
        })
    }

    /// Snapshots that are damaged, or whose block map or blocks are in no pack.
    async fn unrestorable_snapshots(
        &self,
        index: &Index,
        report: &mut RepairReport,
    ) -> Result<Vec<SnapshotId>, RepoError> {
        let (found, damaged) = self
            .load_all_readable::<Snapshot>("snapshots", Role::Snapshot)
            .await?;
        let mut removed = Vec::new();
        for e in damaged {
            if let RepoError::Corrupt { object, .. } = &e {
                if let Some(id) = object
                    .strip_prefix("snapshots/")
                    .and_then(|h| h.parse::<SnapshotId>().ok())
                {
                    report.snapshots_removed.push(format!("{object}: {e}"));
                    removed.push(id);
                }
            }
        }
        for (hash, snap) in found {
            let id = SnapshotId(hash);
            if let Some(why) = self.missing_data(index, &snap).await? {
                report
                    .snapshots_removed
                    .push(format!("{}: {why}", id.key()));
                removed.push(id);
            }
        }
        Ok(removed)
    }

    /// Why `snap` cannot be restored from `index`, if it cannot.
    async fn missing_data(
        &self,
        index: &Index,
        snap: &Snapshot,
    ) -> Result<Option<String>, RepoError> {
        for (seg, seg_id) in snap.map.iter().enumerate() {
            if !index.contains(seg_id) {
                return Ok(Some(format!(
                    "block-map segment {seg} (blob {seg_id}) is in no pack"
                )));
            }
            let entries = match self.read_map_segment(index, snap, seg).await {
                Ok(e) => e,
                Err(e @ (RepoError::Corrupt { .. } | RepoError::BlobMissing { .. })) => {
                    return Ok(Some(format!("block-map segment {seg}: {e}")))
                }
                Err(e) => return Err(e),
            };
            if let Some(b) = entries.iter().find_map(|e| match e {
                BlockRef::Blob(b) if !index.contains(b) => Some(*b),
                _ => None,
            }) {
                return Ok(Some(format!("blob {b} of its data is in no pack")));
            }
        }
        Ok(None)
    }

    /// Records that name a removed snapshot (reported), and the keys of the records that
    /// cannot be read (to remove).
    async fn affected_backups(
        &self,
        removed: &[SnapshotId],
        report: &mut RepairReport,
    ) -> Result<Vec<String>, RepoError> {
        let gone: HashSet<SnapshotId> = removed.iter().copied().collect();
        let (records, damaged) = self
            .load_all_readable::<AppBackup>("backups", Role::Backup)
            .await?;
        let mut unreadable = Vec::new();
        for e in damaged {
            if let RepoError::Corrupt { object, .. } = &e {
                // Only what lifeboat names so: a foreign object is left alone.
                let ours = object
                    .strip_prefix("backups/")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                if ours {
                    report.backups_removed.push(format!("{object}: {e}"));
                    unreadable.push(object.clone());
                }
            }
        }
        for (_, b) in records {
            let lost: Vec<String> = b
                .volumes
                .iter()
                .filter(|v| gone.contains(&v.snapshot))
                .map(|v| format!("{}/{}", v.namespace, v.pvc))
                .collect();
            if !lost.is_empty() {
                report.backups_affected.push(format!(
                    "{}: the data of {} is lost (its configuration still restores)",
                    b.name,
                    lost.join(", ")
                ));
            }
        }
        Ok(unreadable)
    }
}
