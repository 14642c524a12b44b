//! `repo check`: takes an open repository; gives a report naming every damaged or missing
//! object. Without `read_data` it checks structure: key objects, every index object (hash,
//! seal, content), every indexed pack present with the indexed size, every snapshot (hash,
//! seal, content) and every block-map segment and data blob they reference. With `read_data` it
//! also downloads every pack, checks its hash, its trailer against the index, and opens every
//! blob (seal and content id). It changes nothing.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use super::{cpu, Index, RepoError, Repository};
use crate::crypto::Role;
use crate::format::{
    object_hash, BlobId, BlockRef, IndexFile, IndexId, KeyFile, PackId, PackTrailer,
    PendingDeletion, Snapshot, MAP_SEGMENT_ENTRIES, PACK_MAGIC, PENDING_DELETIONS,
};

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub read_data: bool,
}

/// What `repo check` found (`repo check --json`).
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct CheckReport {
    /// Damage: each names the object.
    pub errors: Vec<String>,
    /// Harmless findings (e.g. packs left by an interrupted backup).
    pub warnings: Vec<String>,
    pub snapshots: usize,
    pub backups: usize,
    pub index_files: usize,
    pub packs: usize,
    pub blobs: usize,
    /// With `--read-data`: packs read whole and verified, and their bytes.
    pub packs_read: usize,
    pub read_bytes: u64,
    /// Packs that a prune took out of the index and keeps for its grace period
    /// (`pending/`), and their bytes: not garbage, a later prune deletes them.
    pub packs_pending: usize,
    pub pending_bytes: u64,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

fn name_of(key: &str, dir: &str) -> Option<[u8; 32]> {
    let hex = key.strip_prefix(dir)?.rsplit('/').next()?;
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex, &mut b).ok()?;
    Some(b)
}

impl Repository {
    pub async fn check(&self, options: &CheckOptions) -> Result<CheckReport, RepoError> {
        let mut r = CheckReport::default();
        self.check_keys(&mut r).await?;
        self.check_locks(&mut r).await?;
        let stored = self.stored_packs(&mut r).await?;
        let index = self.check_index(&stored, &mut r).await?;
        self.check_snapshots(&index, &mut r).await?;
        self.check_backups(&index, &mut r).await?;
        for o in self.store().list("forgets/", self.cancel()).await? {
            r.warnings.push(format!(
                "{}: a forget was interrupted; the next `lifeboat forget` finishes it (until then the volume snapshots it was removing are kept)",
                o.key
            ));
        }
        if options.read_data {
            self.read_all_packs(&index, &stored, &mut r).await?;
        }
        Ok(r)
    }

    /// Keys: each must match its name and parse.
    async fn check_keys(&self, r: &mut CheckReport) -> Result<(), RepoError> {
        let cancel = self.cancel();
        for o in self.store().list("keys/", cancel).await? {
            match self.store().get(&o.key, cancel).await {
                Ok(b) => match name_of(&o.key, "keys/") {
                    Some(h) if object_hash(&b) == h => {
                        if serde_json::from_slice::<KeyFile>(&b).is_err() {
                            r.errors.push(format!("{}: not a key object", o.key));
                        }
                    }
                    _ => r
                        .errors
                        .push(format!("{}: content does not match its name", o.key)),
                },
                Err(e) => r.errors.push(format!("{}: {e}", o.key)),
            }
        }

        Ok(())
    }

    /// Locks: anything under `locks/` that is not a lock blocks nobody but is damage.
    async fn check_locks(&self, r: &mut CheckReport) -> Result<(), RepoError> {
        for (key, state) in self.all_locks().await? {
            if let super::lock::LockState::Garbage(why) = state {
                r.errors
                    .push(format!("{key}: {why}; `lifeboat repo unlock` removes it"));
            }
        }
        Ok(())
    }

    /// The packs in the store, with their sizes.
    async fn stored_packs(&self, r: &mut CheckReport) -> Result<HashMap<PackId, u64>, RepoError> {
        let cancel = self.cancel();
        let mut stored: HashMap<PackId, u64> = HashMap::new();
        for o in self.store().list("data/", cancel).await? {
            match name_of(&o.key, "data/").map(PackId) {
                Some(id) if id.key() == o.key => {
                    stored.insert(id, o.size);
                }
                _ => r
                    .warnings
                    .push(format!("{}: unexpected object in data/", o.key)),
            }
        }

        Ok(stored)
    }

    /// Index objects, read directly from the store (not the cache): they are what a DR site
    /// sees. Every pack they list must be stored at the size they give.
    async fn check_index(
        &self,
        stored: &HashMap<PackId, u64>,
        r: &mut CheckReport,
    ) -> Result<Index, RepoError> {
        let cancel = self.cancel();
        let mut files = Vec::new();
        for o in self.store().list("index/", cancel).await? {
            r.index_files += 1;
            let Some(id) = name_of(&o.key, "index/").map(IndexId) else {
                r.errors.push(format!("{}: unexpected object name", o.key));
                continue;
            };
            match self
                .read_sealed_json_from::<IndexFile>(&o.key, &id.0, Role::Index, false)
                .await
            {
                Ok(f) => files.push(f),
                Err(e) => r.errors.push(e.to_string()),
            }
        }
        let index = Index::from_files(files);
        r.packs = index.packs().len();
        r.blobs = index.blob_count();
        let mut indexed = HashSet::new();
        for (id, size) in index.packs() {
            indexed.insert(*id);
            match stored.get(id) {
                None => r.errors.push(format!(
                    "{}: listed in the index but missing from the store; to recover, back the affected volumes up again with `volume backup --full` (it stores their blocks anew), then `lifeboat repo repair` removes the snapshots that cannot be restored",
                    id.key()
                )),
                Some(s) if s != size => r.errors.push(format!(
                    "{}: {s} bytes in the store, {size} in the index (truncated or replaced)",
                    id.key()
                )),
                _ => {}
            }
        }
        let pending = self.check_pending(r).await?;
        for (id, size) in stored.iter().filter(|(id, _)| !indexed.contains(id)) {
            if pending.contains(id) {
                r.packs_pending += 1;
                r.pending_bytes += size;
                continue;
            }
            r.warnings.push(format!(
                "{}: pack not in any index (left by an interrupted backup; harmless, a later prune removes it)",
                id.key()
            ));
        }

        Ok(index)
    }

    /// The packs that prunes took out of the index and keep for their grace period, from
    /// every `pending/` list (each read directly from the store and verified).
    async fn check_pending(&self, r: &mut CheckReport) -> Result<HashSet<PackId>, RepoError> {
        let mut packs = HashSet::new();
        let dir = format!("{PENDING_DELETIONS}/");
        for o in self.store().list(&dir, self.cancel()).await? {
            let Some(hash) = name_of(&o.key, &dir) else {
                r.errors.push(format!("{}: unexpected object name", o.key));
                continue;
            };
            match self
                .read_sealed_json_from::<PendingDeletion>(
                    &o.key,
                    &hash,
                    Role::PendingDeletion,
                    false,
                )
                .await
            {
                Ok(list) => packs.extend(list.packs),
                Err(e) => r.errors.push(e.to_string()),
            }
        }
        Ok(packs)
    }

    /// Snapshots and everything they reference: the block map's segments and blocks.
    async fn check_snapshots(&self, index: &Index, r: &mut CheckReport) -> Result<(), RepoError> {
        let ids = self.snapshot_ids().await?;
        r.snapshots = ids.len();
        for id in ids {
            let snap = match self
                .read_sealed_json_from::<Snapshot>(&id.key(), &id.0, Role::Snapshot, false)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    r.errors.push(e.to_string());
                    continue;
                }
            };
            let skey = id.key();
            let expected_segments = snap.blocks().div_ceil(MAP_SEGMENT_ENTRIES as u64) as usize;
            if snap.map.len() != expected_segments {
                r.errors.push(format!(
                    "{skey}: {} block-map segments for {} blocks (expected {expected_segments})",
                    snap.map.len(),
                    snap.blocks()
                ));
            }
            for (i, seg) in snap.map.iter().enumerate() {
                if !index.contains(seg) {
                    r.errors.push(format!(
                        "{skey}: block-map segment {i} (blob {seg}) is in no index"
                    ));
                    continue;
                }
                let entries = match self.read_map_segment(index, &snap, i).await {
                    Ok(e) => e,
                    Err(e) => {
                        r.errors.push(format!("{skey}: block-map segment {i}: {e}"));
                        continue;
                    }
                };
                let first = i as u64 * MAP_SEGMENT_ENTRIES as u64;
                for (j, e) in entries.iter().enumerate() {
                    if let BlockRef::Blob(b) = e {
                        if !index.contains(b) {
                            r.errors.push(format!(
                                "{skey}: block {} (blob {b}) is in no index",
                                first + j as u64
                            ));
                        }
                    }
                }
            }
        }

        Ok(())
    }

    /// Application backups: each record, and every object blob and snapshot it names.
    async fn check_backups(&self, index: &Index, r: &mut CheckReport) -> Result<(), RepoError> {
        let cancel = self.cancel();
        for o in self.store().list("backups/", cancel).await? {
            r.backups += 1;
            let Some(h) = name_of(&o.key, "backups/") else {
                r.errors.push(format!("{}: unexpected object name", o.key));
                continue;
            };
            let record: Result<crate::format::AppBackup, RepoError> = self
                .read_sealed_json_from(&o.key, &h, Role::Backup, false)
                .await;
            match record {
                Err(e) => r.errors.push(e.to_string()),
                Ok(b) => {
                    for v in &b.volumes {
                        let key = format!("snapshots/{}", v.snapshot);
                        if self.store().head(&key, cancel).await?.is_none() {
                            r.errors.push(format!(
                                "{}: the data of PersistentVolumeClaim {}/{} (snapshot {}) is missing",
                                o.key, v.namespace, v.pvc, v.snapshot.short()
                            ));
                        }
                    }
                    for obj in &b.objects {
                        if !index.contains(&obj.blob) {
                            r.errors.push(format!(
                                "{}: object {}/{} (blob {}) is in no index",
                                o.key, obj.kind, obj.name, obj.blob
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn read_all_packs(
        &self,
        index: &Index,
        stored: &HashMap<PackId, u64>,
        r: &mut CheckReport,
    ) -> Result<(), RepoError> {
        // Expected blobs per pack, from the index.
        let mut by_pack: HashMap<PackId, Vec<(BlobId, crate::repository::BlobLocation)>> =
            HashMap::new();
        for (id, _) in index.packs() {
            by_pack.entry(*id).or_default();
        }
        for (blob, loc) in index.iter().map(|(id, loc)| (*id, *loc)) {
            by_pack
                .entry(index.pack_id(loc.pack))
                .or_default()
                .push((blob, loc));
        }
        let packs: Vec<PackId> = stored.keys().copied().collect();
        let mut results = futures::stream::iter(packs)
            .map(|pid| {
                let expected = by_pack.get(&pid).cloned();
                async move {
                    let bytes = self.store().get(&pid.key(), self.cancel()).await;
                    let keys = self.keys().clone();
                    let n = bytes.as_ref().map(|b| b.len() as u64).unwrap_or(0);
                    let errs = match bytes {
                        Err(e) => vec![format!("{}: {e}", pid.key())],
                        Ok(bytes) => {
                            cpu(move || verify_pack(&keys, pid, &bytes, expected.as_deref()))
                                .await?
                        }
                    };
                    Ok::<_, RepoError>((n, errs))
                }
            })
            .buffer_unordered(2);
        while let Some(res) = results.next().await {
            let (n, errs) = res?;
            r.packs_read += 1;
            r.read_bytes += n;
            r.errors.extend(errs);
        }
        Ok(())
    }
}

/// Checks one downloaded pack: its name, its trailer, the index's view of it, every blob.
fn verify_pack(
    keys: &crate::crypto::Keys,
    pid: PackId,
    bytes: &[u8],
    expected: Option<&[(BlobId, crate::repository::BlobLocation)]>,
) -> Vec<String> {
    let key = pid.key();
    let mut errs = Vec::new();
    if object_hash(bytes) != pid.0 {
        errs.push(format!(
            "{key}: content does not match its name (BLAKE3): the pack is damaged"
        ));
    }
    let n = bytes.len();
    if n < 12 || &bytes[n - 8..] != PACK_MAGIC {
        errs.push(format!("{key}: no pack trailer (bad magic)"));
        return errs;
    }
    let tlen = u32::from_le_bytes(bytes[n - 12..n - 8].try_into().unwrap()) as usize;
    if tlen > n - 12 {
        errs.push(format!("{key}: trailer length {tlen} exceeds the pack"));
        return errs;
    }
    let trailer: PackTrailer = match keys
        .open(Role::PackTrailer, &bytes[n - 12 - tlen..n - 12], 64 << 20)
        .map_err(|e| e.to_string())
        .and_then(|p| serde_json::from_slice(&p).map_err(|e| e.to_string()))
    {
        Ok(t) => t,
        Err(e) => {
            errs.push(format!("{key}: pack trailer: {e}"));
            return errs;
        }
    };
    let body_end = (n - 12 - tlen) as u64;
    for b in &trailer.blobs {
        let end = b.offset + b.length as u64;
        if end > body_end {
            errs.push(format!("{key}: blob {} reaches past the pack body", b.id));
            continue;
        }
        let sealed = &bytes[b.offset as usize..end as usize];
        if let Err(e) = keys.open_blob(b.kind, &b.id, sealed, b.raw_length as usize) {
            errs.push(format!("{key}: blob {} at offset {}: {e}", b.id, b.offset));
        }
    }
    if let Some(expected) = expected {
        let in_trailer: HashMap<BlobId, (u64, u32)> = trailer
            .blobs
            .iter()
            .map(|b| (b.id, (b.offset, b.length)))
            .collect();
        for (id, loc) in expected {
            if in_trailer.get(id) != Some(&(loc.offset, loc.length)) {
                errs.push(format!(
                    "{key}: the index places blob {id} where the pack does not hold it"
                ));
            }
        }
    }
    errs
}
