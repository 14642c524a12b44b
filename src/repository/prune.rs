//! Prune: takes the repository (under an exclusive lock); gives back the space of blobs that
//! no snapshot or backup record references any more. Packs with nothing referenced are
//! deleted; packs that are mostly garbage are repacked (their live blobs, verified, moved
//! as sealed bytes into new packs). Must not lose anything at any instant: new packs and a new
//! complete index are written before any old index object or pack is deleted, so a crash
//! leaves, at worst, extra packs that the next prune removes.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use super::{cpu, Index, LockKind, RepoError, Repository};
use crate::crypto::Role;
use crate::format::{
    AppBackup, BlobId, BlockRef, IndexFile, IndexPack, PackId, PackedBlob, FORMAT_VERSION,
};

/// Packs per index object written by prune.
const PACKS_PER_INDEX: usize = 512;

#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Repack a pack when at least this fraction of its bytes is unreferenced.
    pub repack_threshold: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            repack_threshold: 0.5,
        }
    }
}

/// What a prune did (`prune --json`, `backup delete --prune --json`).
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct PruneReport {
    pub dry_run: bool,
    pub snapshots: usize,
    pub backups: usize,
    pub blobs_referenced: usize,
    pub blobs_removed: usize,
    pub packs_before: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub packs_written: u64,
    /// Packs in the store that no index listed (left by interrupted backups).
    pub packs_unindexed: usize,
    /// The packs' size before.
    #[serde(rename = "before_bytes")]
    pub bytes_before: u64,
    /// The packs' size after.
    #[serde(rename = "after_bytes")]
    pub bytes_after: u64,
    pub index_files_replaced: usize,
}

#[derive(Default)]
struct PackUse {
    used: u64,
    total: u64,
}

impl Repository {
    /// Every blob that a snapshot or a backup record references.
    async fn referenced_blobs(
        &self,
        index: &Index,
        report: &mut PruneReport,
    ) -> Result<HashSet<BlobId>, RepoError> {
        let mut used = HashSet::new();
        let snapshots = self.all_snapshots_strict().await?;
        report.snapshots = snapshots.len();
        let mut segments = HashSet::new();
        for (_, s) in &snapshots {
            for seg in &s.map {
                if segments.insert(*seg) {
                    used.insert(*seg);
                }
            }
        }
        let segments: Vec<BlobId> = segments.into_iter().collect();
        let mut reads = futures::stream::iter(segments)
            .map(|seg| async move { self.read_map_blob(index, &seg).await })
            .buffer_unordered(8);
        while let Some(entries) = reads.next().await {
            for e in entries? {
                if let BlockRef::Blob(id) = e {
                    used.insert(id);
                }
            }
        }
        let backups: Vec<([u8; 32], AppBackup)> = self.load_all("backups", Role::Backup).await?;
        report.backups = backups.len();
        for (_, b) in &backups {
            used.extend(b.objects.iter().map(|o| o.blob));
        }
        Ok(used)
    }

    /// See the module documentation.
    pub async fn prune(
        self: &std::sync::Arc<Self>,
        opts: &PruneOptions,
    ) -> Result<PruneReport, RepoError> {
        let lock = self.lock(LockKind::Exclusive, "prune").await?;
        let result = self.prune_locked(opts).await;
        lock.release().await?;
        result
    }

    async fn prune_locked(
        self: &std::sync::Arc<Self>,
        opts: &PruneOptions,
    ) -> Result<PruneReport, RepoError> {
        let mut report = PruneReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let files: Vec<([u8; 32], IndexFile)> = self.load_all("index", Role::Index).await?;
        let index = {
            let f: Vec<IndexFile> = files.iter().map(|(_, f)| f.clone()).collect();
            cpu(move || Index::from_files(f)).await?
        };
        let used = self.referenced_blobs(&index, &mut report).await?;
        report.blobs_referenced = used.len();

        let packs = pack_usage(&files, &index, &used);
        let stored = self.store().list("data/", self.cancel()).await?;
        let plan = plan_packs(&stored, packs, opts.repack_threshold, &mut report);
        if plan.delete.is_empty() {
            tracing::info!("prune: nothing to remove");
            return Ok(report);
        }
        if opts.dry_run {
            for p in &plan.repack {
                report.blobs_removed += p.blobs.iter().filter(|b| !used.contains(&b.id)).count();
            }
            return Ok(report);
        }

        // 1. Live blobs of the packs being repacked move into new packs (verified first).
        self.repack(&plan.repack, &index, &used, &mut report)
            .await?;
        // 2. A complete index of the packs that stay.
        for chunk in plan.keep.chunks(PACKS_PER_INDEX) {
            let file = IndexFile {
                version: FORMAT_VERSION,
                packs: chunk.to_vec(),
            };
            self.write_sealed_json("index", &file, Role::Index).await?;
        }
        // 3. Only now the old index objects, then the packs, go.
        for (hash, _) in &files {
            self.store()
                .delete(&format!("index/{}", hex::encode(hash)), self.cancel())
                .await?;
        }
        report.index_files_replaced = files.len();
        let mut deletes = futures::stream::iter(plan.delete)
            .map(|key| async move { self.store().delete(&key, self.cancel()).await })
            .buffer_unordered(8);
        while let Some(r) = deletes.next().await {
            r?;
        }
        let after = self.store().list("data/", self.cancel()).await?;
        report.bytes_after = after.iter().map(|o| o.size).sum();
        tracing::info!(
            deleted = report.packs_deleted,
            repacked = report.packs_repacked,
            freed = report.bytes_before.saturating_sub(report.bytes_after),
            "prune done"
        );
        Ok(report)
    }

    /// Moves the referenced blobs of `packs` into new packs, each verified (opened and its id
    /// checked) before it is written again.
    async fn repack(
        self: &std::sync::Arc<Self>,
        packs: &[IndexPack],
        index: &Index,
        used: &HashSet<BlobId>,
        report: &mut PruneReport,
    ) -> Result<(), RepoError> {
        let mut writer = self.writer(2);
        let claims = writer.claims();
        for p in packs {
            let bytes = self.store().get(&p.id.key(), self.cancel()).await?;
            for b in &p.blobs {
                if !indexed_here(index, p.id, b) || !used.contains(&b.id) {
                    report.blobs_removed += 1;
                    continue;
                }
                if !claims.claim(b.id) {
                    continue; // already moved from another pack
                }
                let start = b.offset as usize;
                let end = start + b.length as usize;
                let sealed = bytes
                    .get(start..end)
                    .ok_or_else(|| RepoError::Corrupt {
                        object: p.id.key(),
                        reason: format!("blob {} lies past the end of the pack", b.id),
                    })?
                    .to_vec();
                let keys = self.keys().clone();
                let (id, kind) = (b.id, b.kind);
                let sealed = cpu(move || -> Result<Vec<u8>, RepoError> {
                    let plain = keys
                        .open(Role::Blob(kind, id), &sealed, 1 << 30)
                        .map_err(|e| RepoError::Corrupt {
                            object: format!("blob {id}"),
                            reason: e.to_string(),
                        })?;
                    if keys.blob_id(&plain) != id {
                        return Err(RepoError::Corrupt {
                            object: format!("blob {id}"),
                            reason: "content does not match its id".into(),
                        });
                    }
                    Ok(sealed)
                })
                .await??;
                writer.add(b.kind, b.id, sealed, b.raw_length).await?;
            }
        }
        let written = writer.finish().await?;
        report.packs_written = written.packs;
        Ok(())
    }
}

/// Whether the index finds blob `b` in pack `pack` at the offset the pack lists (a blob
/// stored twice counts only where the index points).
fn indexed_here(index: &Index, pack: PackId, b: &PackedBlob) -> bool {
    index
        .get(&b.id)
        .map(|loc| index.pack_id(loc.pack) == pack && loc.offset == b.offset)
        .unwrap_or(false)
}

/// Each indexed pack's total and referenced bytes.
fn pack_usage(
    files: &[([u8; 32], IndexFile)],
    index: &Index,
    used: &HashSet<BlobId>,
) -> HashMap<PackId, (IndexPack, PackUse)> {
    let mut packs: HashMap<PackId, (IndexPack, PackUse)> = HashMap::new();
    for (_, f) in files {
        for p in &f.packs {
            packs
                .entry(p.id)
                .or_insert_with(|| (p.clone(), PackUse::default()));
        }
    }
    for (pack, u) in packs.values_mut() {
        for b in &pack.blobs {
            u.total += b.length as u64;
            if indexed_here(index, pack.id, b) && used.contains(&b.id) {
                u.used += b.length as u64;
            }
        }
    }
    packs
}

/// What a prune does with each stored pack.
struct PackPlan {
    /// Keys of the packs that go: unindexed, unused, or repacked.
    delete: Vec<String>,
    /// Packs whose live blobs move to new packs first.
    repack: Vec<IndexPack>,
    /// Packs the new index lists.
    keep: Vec<IndexPack>,
}

/// Sorts the stored packs into delete, repack (at least `threshold` of their bytes garbage)
/// and keep, counting what that frees in `report`. Pure.
fn plan_packs(
    stored: &[crate::store::ObjectInfo],
    mut packs: HashMap<PackId, (IndexPack, PackUse)>,
    threshold: f64,
    report: &mut PruneReport,
) -> PackPlan {
    report.packs_before = stored.len();
    report.bytes_before = stored.iter().map(|o| o.size).sum();
    let mut plan = PackPlan {
        delete: Vec::new(),
        repack: Vec::new(),
        keep: Vec::new(),
    };
    let mut freed = 0;
    for o in stored {
        let id: Option<PackId> = o.key.rsplit('/').next().and_then(|h| h.parse().ok());
        let goes = match id.and_then(|id| packs.remove(&id)) {
            None => {
                report.packs_unindexed += 1;
                true
            }
            Some((p, u)) if u.used == 0 => {
                report.packs_deleted += 1;
                report.blobs_removed += p.blobs.len();
                true
            }
            Some((p, u)) if (u.total - u.used) as f64 >= threshold * u.total as f64 => {
                report.packs_repacked += 1;
                plan.repack.push(p);
                true
            }
            Some((p, _)) => {
                plan.keep.push(p);
                false
            }
        };
        if goes {
            plan.delete.push(o.key.clone());
            freed += o.size;
        }
    }
    // Indexed packs missing from the store are left to `check` to report.
    plan.keep.extend(packs.into_values().map(|(p, _)| p));
    report.bytes_after = report.bytes_before - freed;
    plan
}
