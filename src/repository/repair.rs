//! Repair: takes a repository with lost or damaged objects (what `check` reports); gives it
//! back consistent: the index rebuilt from the packs' own trailers, the snapshots that are
//! damaged or reference data that no pack holds removed, and the backup records that cannot be
//! read removed, so that every snapshot left restores, check passes and prune can run again. A dry run reports the same without writing.
//!
//! Must not delete a pack, nor lose a blob that a readable pack holds: the new index objects
//! are written before the old ones go, and a pack whose trailer cannot be read is reported (its
//! blobs are lost to the index, the pack itself is left for a person to look at). With
//! `read_data` (`repair --read-data`) every blob is opened too: a pack with a damaged blob has
//! its good blobs moved to new packs and is then deleted (the only pack a repair deletes), so
//! the snapshots that used the damaged blob are removed and a new backup stores it again.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::{Index, LockKind, RepoError, Repository};
use crate::crypto::{Keys, Role};
use crate::format::{
    object_hash, AppBackup, BlobId, BlockRef, IndexFile, IndexPack, PackId, PackTrailer,
    PackedBlob, Snapshot, SnapshotId, FORMAT_VERSION, PACK_MAGIC,
};

/// Index objects written by a repair, at most this many packs each.
const PACKS_PER_INDEX: usize = 512;

#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    /// Report what would be done; write and delete nothing.
    pub dry_run: bool,
    /// Also download every pack and open every blob: only blobs that verify are indexed; a
    /// damaged pack's good blobs move to new packs and the damaged pack is deleted.
    pub read_data: bool,
}

/// What `repo repair` did, or would do with `--dry-run` (`repo repair --json`).
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
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
    /// With `read_data`: packs whose bytes do not match their name or hold a blob that does not
    /// open (`key: reason`): their good blobs are moved to new packs, then they are deleted.
    pub packs_damaged: Vec<String>,
    /// With `read_data`: blobs that do not open and that no other pack holds intact
    /// (`pack: blob: reason`); the snapshots using them are removed.
    pub blobs_lost: Vec<String>,
    /// With `read_data`: good blobs of damaged packs written to new packs.
    pub blobs_moved: usize,
    pub packs_deleted: usize,
}

impl RepairReport {
    /// What the repair could not recover: snapshots removed, packs that cannot be read,
    /// backup records removed.
    pub fn losses(&self) -> usize {
        self.snapshots_removed.len()
            + self.packs_unreadable.len()
            + self.backups_removed.len()
            + self.blobs_lost.len()
    }
}

impl Repository {
    /// Rebuilds the index from the packs and removes the snapshots that cannot be restored.
    /// With `read_data`, first reads every pack and indexes only the blobs that verify.
    /// Holds an exclusive lock.
    pub async fn repair(self: &Arc<Self>, opts: &RepairOptions) -> Result<RepairReport, RepoError> {
        let lock = self.lock(LockKind::Exclusive, "repair").await?;
        let result = self.repair_locked(opts).await;
        lock.release().await?;
        result
    }

    async fn repair_locked(
        self: &Arc<Self>,
        opts: &RepairOptions,
    ) -> Result<RepairReport, RepoError> {
        let mut report = RepairReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        let mut packs = self.packs_from_trailers(&mut report).await?;
        let mut damaged = Vec::new();
        if opts.read_data {
            (packs, damaged) = self.read_packs(packs, &mut report).await?;
        }
        report.packs_indexed = packs.len();
        report.blobs_indexed = packs.iter().map(|p| p.blobs.len()).sum();
        // What restores once the good blobs of damaged packs are moved: they count as held.
        let analysed: Vec<IndexFile> = vec![IndexFile {
            version: FORMAT_VERSION,
            packs: packs
                .iter()
                .cloned()
                .chain(damaged.iter().map(|d: &Damaged| IndexPack {
                    id: d.id,
                    size: d.size,
                    blobs: d.good.iter().map(|(b, _)| b.clone()).collect(),
                }))
                .collect(),
        }];
        let files: Vec<IndexFile> = packs
            .chunks(PACKS_PER_INDEX)
            .map(|c| IndexFile {
                version: FORMAT_VERSION,
                packs: c.to_vec(),
            })
            .collect();
        let index = super::cpu(move || Index::from_files(analysed)).await?;
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
        // The good blobs of damaged packs into new packs (indexed by the writer), unless an
        // intact pack holds them already.
        let held: HashSet<BlobId> = packs
            .iter()
            .flat_map(|p| p.blobs.iter().map(|b| b.id))
            .collect();
        if !damaged.is_empty() {
            let mut writer = self.writer(2);
            let claims = writer.claims();
            for d in &damaged {
                for (b, sealed) in &d.good {
                    if !held.contains(&b.id) && claims.claim(b.id) {
                        writer
                            .add(b.kind, b.id, sealed.clone(), b.raw_length)
                            .await?;
                        report.blobs_moved += 1;
                    }
                }
            }
            writer.finish().await?;
        }
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
        // Last: the new index no longer points into them.
        for d in &damaged {
            self.store().delete(&d.id.key(), self.cancel()).await?;
            report.packs_deleted += 1;
        }
        tracing::info!(
            packs = report.packs_indexed,
            snapshots_removed = removed.len(),
            "repository repaired"
        );
        Ok(report)
    }

    /// Downloads each pack and opens every blob its trailer lists: the packs that are intact
    /// (bytes match their name, every blob opens), and the damaged ones with their good blobs.
    /// A blob that does not open and is held by no intact pack is lost.
    async fn read_packs(
        &self,
        packs: Vec<IndexPack>,
        report: &mut RepairReport,
    ) -> Result<(Vec<IndexPack>, Vec<Damaged>), RepoError> {
        let mut reads = futures::stream::iter(packs)
            .map(|p| async move {
                let bytes = self.store().get(&p.id.key(), self.cancel()).await?;
                let keys = self.keys().clone();
                super::cpu(move || verify_blobs(&keys, p, &bytes)).await
            })
            .buffer_unordered(2);
        let (mut intact, mut damaged) = (Vec::new(), Vec::new());
        while let Some(r) = reads.next().await {
            match r? {
                Ok(p) => intact.push(p),
                Err(d) => damaged.push(d),
            }
        }
        intact.sort_by_key(|p| p.id);
        damaged.sort_by_key(|d| d.id);
        let held: HashSet<BlobId> = intact
            .iter()
            .flat_map(|p| p.blobs.iter().map(|b| b.id))
            .chain(
                damaged
                    .iter()
                    .flat_map(|d| d.good.iter().map(|(b, _)| b.id)),
            )
            .collect();
        for d in &damaged {
            report
                .packs_damaged
                .push(format!("{}: {}", d.id.key(), d.why));
            for (id, why) in &d.bad {
                if !held.contains(id) {
                    report
                        .blobs_lost
                        .push(format!("{}: blob {id}: {why}", d.id.key()));
                }
            }
        }
        Ok((intact, damaged))
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

/// A pack that `repair --read-data` found damaged: its good blobs (with their sealed bytes, to
/// move) and its bad ones (with why).
struct Damaged {
    id: PackId,
    size: u64,
    why: String,
    good: Vec<(PackedBlob, Vec<u8>)>,
    bad: Vec<(BlobId, String)>,
}

/// Opens every blob of pack `p` (its trailer's list) in its downloaded `bytes`: Ok(p) when the
/// bytes match the pack's name and every blob opens, else what is good and what is not.
fn verify_blobs(keys: &Keys, p: IndexPack, bytes: &[u8]) -> Result<IndexPack, Damaged> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for b in &p.blobs {
        let sealed = bytes.get(b.offset as usize..(b.offset + b.length as u64) as usize);
        match sealed.map(|s| (s, keys.open_blob(b.kind, &b.id, s, b.raw_length as usize))) {
            Some((s, Ok(_))) => good.push((b.clone(), s.to_vec())),
            Some((_, Err(e))) => bad.push((b.id, e.to_string())),
            None => bad.push((b.id, "lies past the end of the pack".to_string())),
        }
    }
    let name_ok = object_hash(bytes) == p.id.0;
    if name_ok && bad.is_empty() {
        return Ok(p);
    }
    let why = if bad.is_empty() {
        "its bytes do not match its name, though every blob opens".to_string()
    } else {
        format!("{} of its {} blobs do not open", bad.len(), p.blobs.len())
    };
    Err(Damaged {
        id: p.id,
        size: p.size,
        why,
        good,
        bad,
    })
}
