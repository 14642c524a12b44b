//! Prune: takes the repository (under an exclusive lock); gives back the space of blobs that
//! no snapshot or backup record references any more. Packs with nothing referenced are taken
//! out of the index; packs that are mostly garbage are repacked (their live blobs, verified,
//! moved as sealed bytes into new packs) and taken out too. A pack taken out stays in the
//! store for [`PruneOptions::grace`], listed in a [`PendingDeletion`], and a later prune
//! deletes it: readers that hold no lock (a DR site whose key can only read the bucket) and
//! loaded the index before still find every pack they read. Must not lose anything at any
//! instant: new packs, the pending list and a new complete index are written before any old
//! index object or pack is deleted, so a crash leaves, at worst, extra packs that a later prune
//! removes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;

use super::{cpu, Index, LockKind, RepoError, Repository};
use crate::crypto::Role;
use crate::format::{
    AppBackup, BlobId, BlockRef, IndexFile, IndexPack, PackId, PackedBlob, PendingDeletion,
    FORMAT_VERSION, PENDING_DELETIONS,
};

/// Packs per index object written by prune.
const PACKS_PER_INDEX: usize = 512;

/// How long a pack taken out of the index stays in the store by default: longer than a
/// lock-free restore, standby apply or drill is expected to run.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct PruneOptions {
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Repack a pack when at least this fraction of its bytes is unreferenced.
    pub repack_threshold: f64,
    /// How long a pack taken out of the index stays in the store before a later prune deletes
    /// it. Zero deletes it at once: safe only when every reader takes a lock (none reads
    /// with credentials that cannot write).
    pub grace: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            repack_threshold: 0.5,
            grace: DEFAULT_GRACE,
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
    /// Packs in the store that no index listed (left by interrupted backups), deleted.
    pub packs_unindexed: usize,
    /// Of the packs deleted or repacked by this run, those left in the store for the grace
    /// period (all of them unless the grace is zero).
    pub packs_deferred: usize,
    /// Packs taken out by earlier prunes whose grace period had passed, deleted now.
    pub packs_released: usize,
    /// Packs taken out by earlier prunes still within their grace period, kept.
    pub packs_waiting: usize,
    /// The grace period of this run.
    pub grace_seconds: u64,
    /// When the first of the packs still in the store for the grace period may go (null when
    /// there are none).
    #[serde(serialize_with = "crate::util::serialize_timestamp_option")]
    #[schemars(with = "Option<String>")]
    pub next_release_at: Option<time::OffsetDateTime>,
    /// Bytes of packs kept in the store only for the grace period.
    pub deferred_bytes: u64,
    /// The packs' size before.
    #[serde(rename = "before_bytes")]
    pub bytes_before: u64,
    /// The packs' size after (packs kept for the grace period included).
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
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 ns");
        let mut report = PruneReport {
            dry_run: opts.dry_run,
            grace_seconds: opts.grace.as_secs(),
            ..Default::default()
        };
        let files: Vec<([u8; 32], IndexFile)> = self.load_all("index", Role::Index).await?;
        let index = {
            let f: Vec<IndexFile> = files.iter().map(|(_, f)| f.clone()).collect();
            cpu(move || Index::from_files(f)).await?
        };
        let used = self.referenced_blobs(&index, &mut report).await?;
        report.blobs_referenced = used.len();
        let (pending, damaged) = self
            .load_all_readable::<PendingDeletion>(PENDING_DELETIONS, Role::PendingDeletion)
            .await?;
        for e in &damaged {
            tracing::warn!(
                "ignoring a damaged list of pending deletions: {e}; its packs count as unindexed"
            );
        }
        let grace = time::Duration::try_from(opts.grace).unwrap_or(time::Duration::MAX);
        let schedule = Pending::of(&pending, now, grace);

        let packs = pack_usage(&files, &index, &used);
        let stored = self.store().list("data/", self.cancel()).await?;
        let defer = !opts.grace.is_zero();
        let plan = plan_packs(
            &stored,
            packs,
            opts.repack_threshold,
            &schedule,
            defer,
            &mut report,
        );
        report.next_release_at = match now.checked_add(grace) {
            Some(ends) if defer && !plan.taken_out.is_empty() => {
                Some(schedule.next.map_or(ends, |n| n.min(ends)))
            }
            _ => schedule.next,
        };
        if plan.taken_out.is_empty() && plan.delete.is_empty() && schedule.due.is_empty() {
            tracing::info!("prune: nothing to remove");
            return Ok(report);
        }
        if opts.dry_run {
            for p in &plan.repack {
                report.blobs_removed += p.blobs.iter().filter(|b| !used.contains(&b.id)).count();
            }
            return Ok(report);
        }

        if !plan.taken_out.is_empty() {
            // 1. Live blobs of the packs being repacked move into new packs (verified first).
            self.repack(&plan.repack, &index, &used, &mut report)
                .await?;
            // 2. The packs about to leave the index, for a later prune to delete.
            if defer {
                let list = PendingDeletion {
                    version: FORMAT_VERSION,
                    time: now,
                    packs: plan.taken_out.clone(),
                };
                self.write_sealed_json(PENDING_DELETIONS, &list, Role::PendingDeletion)
                    .await?;
            }
            // 3. A complete index of the packs that stay.
            for chunk in plan.keep.chunks(PACKS_PER_INDEX) {
                let file = IndexFile {
                    version: FORMAT_VERSION,
                    packs: chunk.to_vec(),
                };
                self.write_sealed_json("index", &file, Role::Index).await?;
            }
            // 4. Only now the old index objects go...
            for (hash, _) in &files {
                self.store()
                    .delete(&format!("index/{}", hex::encode(hash)), self.cancel())
                    .await?;
            }
            report.index_files_replaced = files.len();
        }
        // 5. ...then the packs: unindexed ones, those whose grace has passed, and (with no
        // grace) those just taken out...
        let mut deletes = futures::stream::iter(plan.delete)
            .map(|key| async move {
                match self.store().delete(&key, self.cancel()).await {
                    Err(crate::store::StoreError::NotFound { .. }) => Ok(()),
                    r => r,
                }
            })
            .buffer_unordered(8);
        while let Some(r) = deletes.next().await {
            r?;
        }
        // 6. ...then the lists of pending deletions that are done.
        for hash in &schedule.due {
            self.store()
                .delete(
                    &format!("{PENDING_DELETIONS}/{}", hex::encode(hash)),
                    self.cancel(),
                )
                .await?;
        }
        let after = self.store().list("data/", self.cancel()).await?;
        report.bytes_after = after.iter().map(|o| o.size).sum();
        tracing::info!(
            taken_out = plan.taken_out.len(),
            deferred = report.packs_deferred,
            released = report.packs_released,
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

/// The lists of pending deletions, sorted by whether their grace period has passed at `now`.
#[derive(Debug, Default)]
struct Pending {
    /// Packs whose grace has passed: deleted unless an index lists them again.
    released: HashSet<PackId>,
    /// Packs still within their grace: kept.
    waiting: HashSet<PackId>,
    /// The lists whose grace has passed (deleted after their packs).
    due: Vec<[u8; 32]>,
    /// When the first waiting list's grace ends.
    next: Option<time::OffsetDateTime>,
}

impl Pending {
    /// Pure: sorts `lists` at `now` under `grace`.
    fn of(
        lists: &[([u8; 32], PendingDeletion)],
        now: time::OffsetDateTime,
        grace: time::Duration,
    ) -> Pending {
        let mut p = Pending::default();
        for (hash, list) in lists {
            let ends = list.time.checked_add(grace);
            if ends.is_some_and(|e| e <= now) {
                p.released.extend(list.packs.iter().copied());
                p.due.push(*hash);
            } else {
                p.waiting.extend(list.packs.iter().copied());
                if let Some(e) = ends {
                    p.next = Some(p.next.map_or(e, |n| n.min(e)));
                }
            }
        }
        // A pack in a list still waiting stays, even when an older list released it.
        p.released.retain(|id| !p.waiting.contains(id));
        p
    }
}

/// What a prune does with each stored pack.
struct PackPlan {
    /// Keys of the packs deleted by this run: unindexed, released from an earlier prune's
    /// pending list, or (with no grace) taken out now.
    delete: Vec<String>,
    /// Packs whose live blobs move to new packs first.
    repack: Vec<IndexPack>,
    /// Packs the new index lists.
    keep: Vec<IndexPack>,
    /// Packs this run takes out of the index (unused or repacked).
    taken_out: Vec<PackId>,
}

/// Sorts the stored packs into delete, repack (at least `threshold` of their bytes garbage),
/// keep, and (unused or repacked) taken out of the index; a taken-out pack is deleted now
/// unless `defer`. Packs of earlier prunes are deleted once `pending` releases them and kept
/// while it has them waiting. Counts it all in `report`. Pure.
fn plan_packs(
    stored: &[crate::store::ObjectInfo],
    mut packs: HashMap<PackId, (IndexPack, PackUse)>,
    threshold: f64,
    pending: &Pending,
    defer: bool,
    report: &mut PruneReport,
) -> PackPlan {
    report.packs_before = stored.len();
    report.bytes_before = stored.iter().map(|o| o.size).sum();
    let mut plan = PackPlan {
        delete: Vec::new(),
        repack: Vec::new(),
        keep: Vec::new(),
        taken_out: Vec::new(),
    };
    let mut freed = 0;
    for o in stored {
        let id: Option<PackId> = o.key.rsplit('/').next().and_then(|h| h.parse().ok());
        let taken_out = match (id, id.and_then(|id| packs.remove(&id))) {
            (Some(id), None) if pending.waiting.contains(&id) => {
                report.packs_waiting += 1;
                report.deferred_bytes += o.size;
                continue;
            }
            (Some(id), None) if pending.released.contains(&id) => {
                report.packs_released += 1;
                None
            }
            (_, None) => {
                report.packs_unindexed += 1;
                None
            }
            (_, Some((p, u))) if u.used == 0 => {
                report.packs_deleted += 1;
                report.blobs_removed += p.blobs.len();
                Some(p.id)
            }
            (_, Some((p, u))) if (u.total - u.used) as f64 >= threshold * u.total as f64 => {
                report.packs_repacked += 1;
                let id = p.id;
                plan.repack.push(p);
                Some(id)
            }
            (_, Some((p, _))) => {
                plan.keep.push(p);
                continue;
            }
        };
        match taken_out {
            Some(id) if defer => {
                plan.taken_out.push(id);
                report.packs_deferred += 1;
                report.deferred_bytes += o.size;
            }
            _ => {
                plan.taken_out.extend(taken_out);
                plan.delete.push(o.key.clone());
                freed += o.size;
            }
        }
    }
    // Indexed packs missing from the store are left to `check` to report.
    plan.keep.extend(packs.into_values().map(|(p, _)| p));
    report.bytes_after = report.bytes_before - freed;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::PackedBlob;
    use crate::store::ObjectInfo;

    fn at(s: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    fn list(time: i64, packs: &[u8]) -> ([u8; 32], PendingDeletion) {
        (
            [time as u8; 32],
            PendingDeletion {
                version: FORMAT_VERSION,
                time: at(time),
                packs: packs.iter().map(|b| PackId([*b; 32])).collect(),
            },
        )
    }

    #[test]
    fn a_pending_list_is_released_once_its_grace_has_passed_and_a_pack_still_waiting_stays() {
        let grace = time::Duration::seconds(100);
        let lists = [list(0, &[1, 2]), list(50, &[2, 3])];
        let p = Pending::of(&lists, at(99), grace);
        assert!(p.released.is_empty() && p.due.is_empty());
        assert_eq!(p.waiting.len(), 3);
        assert_eq!(p.next, Some(at(100)));
        let p = Pending::of(&lists, at(100), grace);
        assert_eq!(
            p.released,
            HashSet::from([PackId([1; 32])]),
            "2 waits in the second list"
        );
        assert_eq!(p.due, vec![[0u8; 32]]);
        assert_eq!(p.next, Some(at(150)));
        let p = Pending::of(&lists, at(150), grace);
        assert_eq!(p.released.len(), 3);
        assert_eq!((p.due.len(), p.next), (2, None));
    }

    fn pack(id: u8, blobs: &[(u8, u32)]) -> IndexPack {
        IndexPack {
            id: PackId([id; 32]),
            size: 100,
            blobs: blobs
                .iter()
                .scan(0u64, |offset, (b, len)| {
                    let blob = PackedBlob {
                        id: BlobId([*b; 32]),
                        kind: crate::format::BlobKind::Data,
                        offset: *offset,
                        length: *len,
                        raw_length: *len,
                    };
                    *offset += *len as u64;
                    Some(blob)
                })
                .collect(),
        }
    }

    /// Packs 1 (all used), 2 (unused), 3 (mostly garbage), 4 (unindexed), 5 (waiting) and
    /// 6 (released) in the store.
    fn planned(defer: bool) -> (PackPlan, PruneReport) {
        let packs = [
            pack(1, &[(10, 100)]),
            pack(2, &[(20, 100)]),
            pack(3, &[(30, 10), (31, 90)]),
        ];
        let file = IndexFile {
            version: FORMAT_VERSION,
            packs: packs.to_vec(),
        };
        let files = [([0u8; 32], file.clone())];
        let index = Index::from_files(vec![file]);
        let used = HashSet::from([BlobId([10; 32]), BlobId([30; 32])]);
        let usage = pack_usage(&files, &index, &used);
        let stored: Vec<ObjectInfo> = (1..=6u8)
            .map(|i| ObjectInfo {
                key: PackId([i; 32]).key(),
                size: 100,
            })
            .collect();
        let pending = Pending::of(
            &[list(0, &[6]), list(90, &[5])],
            at(100),
            time::Duration::seconds(50),
        );
        let mut report = PruneReport::default();
        let plan = plan_packs(&stored, usage, 0.5, &pending, defer, &mut report);
        (plan, report)
    }

    #[test]
    fn packs_taken_out_wait_for_the_grace_and_earlier_ones_go_once_released() {
        let (plan, r) = planned(true);
        let key = |i: u8| PackId([i; 32]).key();
        assert_eq!(
            plan.keep.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![PackId([1; 32])]
        );
        assert_eq!(plan.taken_out, vec![PackId([2; 32]), PackId([3; 32])]);
        assert_eq!(plan.repack.len(), 1);
        let mut deleted = plan.delete.clone();
        deleted.sort();
        assert_eq!(
            deleted,
            vec![key(4), key(6)],
            "the unindexed and the released pack"
        );
        assert_eq!(
            (
                r.packs_deleted,
                r.packs_repacked,
                r.packs_deferred,
                r.packs_released,
                r.packs_waiting,
                r.packs_unindexed
            ),
            (1, 1, 2, 1, 1, 1)
        );
        assert_eq!(
            (r.deferred_bytes, r.bytes_before, r.bytes_after),
            (300, 600, 400)
        );
    }

    #[test]
    fn with_no_grace_packs_taken_out_are_deleted_at_once() {
        let (plan, r) = planned(false);
        let key = |i: u8| PackId([i; 32]).key();
        let mut deleted = plan.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec![key(2), key(3), key(4), key(6)]);
        assert_eq!(
            (r.packs_deferred, r.packs_waiting, r.deferred_bytes),
            (0, 1, 100)
        );
        assert_eq!(r.bytes_after, 200, "pack 1 and the waiting pack 5");
    }
}
