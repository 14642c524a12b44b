//! Phase 1 for one volume: takes the snapshot it holds (its record) and the snapshot it is to
//! hold; gives what the commit needs (a journal of the blocks whose map entries differ, a new
//! file restored whole, or only a record to move) and what that cost. Also the size of a
//! delta, for sizing a live site's journal claim.
//!
//! Must not touch the volume itself (that is the commit's), nor read a map segment both
//! snapshots share: equal segment ids are skipped unread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use indicatif::ProgressBar;

use super::journal::Journal;
use super::{io, StandbyError, VolumeReport};
use crate::format::standby::{with_suffix, Applied, CommitItem, CommitKind, VolumeMode};
use crate::format::standby::{JOURNAL_ENTRY_HEAD, JOURNAL_SUFFIX, NEW_SUFFIX};
use crate::format::{BlockRef, Snapshot, SnapshotId, MAP_SEGMENT_ENTRIES};
use crate::repository::{Index, RepoError, Repository};
use crate::util::blocking;
use crate::volume::restore::{
    group_by_blob, plan_fetches, put_fetched, restore_volume, Fetch, Placement, RestoreOptions,
    Targets, MAX_GAP, MAX_RANGE,
};

/// Coalesced ranges fetched at once while journaling.
const FETCHES_IN_FLIGHT: usize = 4;

/// Blocks whose entries differ between two maps of the same chunk size (pure): (block, new
/// entry). Blocks past the end of the old map count as zero there.
pub fn changed_blocks(first: u64, old: &[BlockRef], new: &[BlockRef]) -> Vec<(u64, BlockRef)> {
    new.iter()
        .enumerate()
        .filter(|(i, e)| old.get(*i).copied().unwrap_or(BlockRef::Zero) != **e)
        .map(|(i, e)| (first + i as u64, *e))
        .collect()
}

/// Bytes a standby Job journals to move a claim from `base` to `new` (the blocks whose map
/// entries differ), for sizing the claim its journals live on. Reads block maps only.
pub async fn delta_bytes(
    repo: &Repository,
    index: &Index,
    base: &Snapshot,
    new: &Snapshot,
) -> Result<u64, StandbyError> {
    let chunk = new.chunk_size as u64;
    if base.chunk_size != new.chunk_size {
        return Ok(new.size);
    }
    let mut bytes = 0;
    for seg in 0..new.map.len() {
        if base.map.get(seg) == new.map.get(seg) {
            continue;
        }
        let first = seg as u64 * MAP_SEGMENT_ENTRIES as u64;
        let old = repo.read_map_segment(index, base, seg).await?;
        let cur = repo.read_map_segment(index, new, seg).await?;
        // Each entry: its header, then the block unless it is zero.
        bytes += changed_blocks(first, &old, &cur)
            .iter()
            .map(|(_, e)| JOURNAL_ENTRY_HEAD as u64 + if *e == BlockRef::Zero { 0 } else { chunk })
            .sum::<u64>();
    }
    Ok(bytes)
}

/// Where one volume is staged, and what it holds now.
pub(super) struct Stage {
    pub applied: Option<Applied>,
    pub journal: PathBuf,
    /// Some: the record lives here, not beside the target (block devices).
    pub record: Option<PathBuf>,
    /// Without a known base, journal every block (a device of unknown content).
    pub whole: bool,
}

impl Stage {
    /// A volume file of a cluster-directory site: journal and record beside it.
    pub(super) fn beside(target: &Path) -> Stage {
        Stage {
            applied: super::journal::read_applied(target).filter(|_| target.exists()),
            journal: with_suffix(target, JOURNAL_SUFFIX),
            record: None,
            whole: false,
        }
    }
}

/// One volume to stage: claim `pvc`'s snapshot `id` (`snap`), for `target`.
pub(super) struct Wanted<'a> {
    pub pvc: &'a str,
    pub id: SnapshotId,
    pub snap: &'a Snapshot,
    pub target: &'a Path,
}

/// Phase 1 for one volume: stages `want` as `stage` says (see the module documentation of
/// [`crate::standby`]), the cost in `report`. None: the target holds it already.
pub(super) async fn prepare_volume(
    repo: &Arc<Repository>,
    index: &Arc<Index>,
    want: &Wanted<'_>,
    stage: &Stage,
    report: &mut VolumeReport,
) -> Result<Option<CommitItem>, StandbyError> {
    if stage.applied.as_ref().map(|a| a.snapshot) == Some(want.id) {
        report.mode = VolumeMode::Unchanged;
        return Ok(None);
    }
    let base = match &stage.applied {
        Some(a) => usable_base(repo, index, a.snapshot, want.pvc, want.snap).await,
        None => None,
    };
    let item = |kind, staged, hash| CommitItem {
        pvc: want.pvc.into(),
        target: want.target.into(),
        kind,
        staged,
        snapshot: want.id,
        size: want.snap.size,
        hash,
        record: stage.record.clone(),
    };
    if base.is_none() && !stage.whole && stage.record.is_none() {
        // A volume file: restored whole beside it. (A device of unknown content, or whose
        // base is gone, has every block journaled below.)
        let staged = stage_new(repo, want, report).await?;
        return Ok(Some(item(CommitKind::New, staged, None)));
    }
    if base
        .as_ref()
        .is_some_and(|b| b.map == want.snap.map && b.size == want.snap.size)
    {
        // The same content under a new snapshot: only the record moves.
        report.mode = VolumeMode::Unchanged;
        return Ok(Some(item(CommitKind::Record, want.target.into(), None)));
    }
    // Without a base (`whole`: a claim of unknown content), every block is journaled.
    report.mode = if base.is_some() {
        VolumeMode::Delta
    } else {
        VolumeMode::Full
    };
    let j = Journaling::create(repo, index, want, &stage.journal).await?;
    for seg in 0..want.snap.map.len() {
        if base
            .as_ref()
            .is_some_and(|b| b.map.get(seg) == want.snap.map.get(seg))
        {
            continue; // an identical segment: not even read
        }
        j.segment(base.as_ref(), seg, report).await?;
    }
    let hash = j.finish().await?;
    Ok(Some(item(
        CommitKind::Journal,
        stage.journal.clone(),
        Some(hash),
    )))
}

/// The snapshot a volume holds, as the base of a delta: None when it is gone from the
/// repository (forgotten, and perhaps pruned while the site was down: a local cache may still
/// hold the snapshot, but its block map is not in the index any more) or differently cut.
/// The volume is then written whole.
pub(super) async fn usable_base(
    repo: &Repository,
    index: &Index,
    holds: SnapshotId,
    pvc: &str,
    new: &Snapshot,
) -> Option<Snapshot> {
    let why = match repo.load_snapshot(&holds).await {
        Ok(s) if s.chunk_size != new.chunk_size => "it is cut in other blocks".to_string(),
        Ok(s) if !s.map.iter().all(|id| index.contains(id)) => {
            "its block map is not in the repository any more (forgotten and pruned)".to_string()
        }
        Ok(s) => return Some(s),
        Err(e) => format!("it cannot be read ({e})"),
    };
    tracing::warn!(
        volume = %pvc,
        "the snapshot the volume holds ({}) cannot be the base of a delta: {why}; writing it whole",
        holds.short()
    );
    None
}

/// A volume new to the site, restored whole beside it.
async fn stage_new(
    repo: &Arc<Repository>,
    want: &Wanted<'_>,
    report: &mut VolumeReport,
) -> Result<PathBuf, StandbyError> {
    report.mode = VolumeMode::Full;
    let staged = with_suffix(want.target, NEW_SUFFIX);
    let s = staged.clone();
    blocking(move || {
        let _ = std::fs::remove_file(s);
    })
    .await;
    let o = RestoreOptions {
        overwrite: false,
        ..RestoreOptions::default()
    };
    let stats = restore_volume(
        repo.clone(),
        want.id,
        want.snap,
        &staged,
        &o,
        &ProgressBar::hidden(),
    )
    .await?;
    report.fetched_bytes = stats.fetched_bytes;
    report.written_bytes = stats.written_bytes;
    report.blocks_changed = stats.blocks_written;
    Ok(staged)
}

/// One volume's journal being written: the changed blocks of each segment, zeros as entries
/// without data, the rest fetched (coalesced, verified) and appended as they arrive.
struct Journaling<'a> {
    repo: &'a Arc<Repository>,
    index: &'a Arc<Index>,
    want: &'a Wanted<'a>,
    journal: Arc<Mutex<Journal>>,
    path: &'a Path,
}

impl<'a> Journaling<'a> {
    async fn create(
        repo: &'a Arc<Repository>,
        index: &'a Arc<Index>,
        want: &'a Wanted<'a>,
        path: &'a Path,
    ) -> Result<Journaling<'a>, StandbyError> {
        let p = path.to_path_buf();
        let journal = blocking(move || Journal::create(&p))
            .await
            .map_err(io(path))?;
        Ok(Journaling {
            repo,
            index,
            want,
            journal: Arc::new(Mutex::new(journal)),
            path,
        })
    }

    /// Journals the blocks of segment `seg` that differ from `base` (all of them without).
    async fn segment(
        &self,
        base: Option<&Snapshot>,
        seg: usize,
        report: &mut VolumeReport,
    ) -> Result<(), StandbyError> {
        let snap = self.want.snap;
        let first = seg as u64 * MAP_SEGMENT_ENTRIES as u64;
        let cur = self.repo.read_map_segment(self.index, snap, seg).await?;
        let changed = match base {
            Some(b) => changed_blocks(
                first,
                &self.repo.read_map_segment(self.index, b, seg).await?,
                &cur,
            ),
            None => cur
                .iter()
                .enumerate()
                .map(|(i, e)| (first + i as u64, *e))
                .collect(),
        };
        report.blocks_changed += changed.len() as u64;
        let chunk = snap.chunk_size as u64;
        let mut zeros = Vec::new();
        let mut needed = Vec::new();
        for (b, e) in changed {
            match e {
                BlockRef::Zero => {
                    let off = b * chunk;
                    let len = ((b + 1) * chunk).min(snap.size) - off;
                    zeros.push((off, len as u32));
                    report.written_bytes += len;
                }
                BlockRef::Blob(id) => needed.push((b, id)),
            }
        }
        if !zeros.is_empty() {
            let journal = self.journal.clone();
            blocking(move || {
                let mut j = journal.lock().unwrap();
                zeros
                    .into_iter()
                    .try_for_each(|(off, len)| j.entry(off, len, None))
            })
            .await
            .map_err(io(self.path))?;
        }
        let (targets, locs) = group_by_blob(self.index, needed, |b, _| {
            format!("block {b} of snapshot {}", self.want.id.short())
        })?;
        self.fetch_all(Arc::new(targets), locs, report).await
    }

    /// Fetches the blobs `locs` (a few coalesced ranges at once) into the journal.
    async fn fetch_all(
        &self,
        targets: Arc<Targets>,
        locs: Vec<(crate::format::BlobId, crate::repository::BlobLocation)>,
        report: &mut VolumeReport,
    ) -> Result<(), StandbyError> {
        let mut fetches = futures::stream::FuturesUnordered::new();
        let mut plan = plan_fetches(locs, MAX_GAP, MAX_RANGE).into_iter();
        loop {
            while fetches.len() < FETCHES_IN_FLIGHT {
                let Some(f) = plan.next() else { break };
                fetches.push(self.fetch(f, targets.clone()));
            }
            let Some(r) = fetches.next().await else { break };
            let (fetched, written) = r?;
            report.fetched_bytes += fetched;
            report.written_bytes += written;
        }
        Ok(())
    }

    /// Fetches one coalesced range and journals the blocks its blobs fill: (bytes fetched,
    /// bytes journaled).
    async fn fetch(&self, f: Fetch, targets: Arc<Targets>) -> Result<(u64, u64), StandbyError> {
        let pack_key = self.index.pack_id(f.pack).key();
        let data = self
            .repo
            .store()
            .get_range(&pack_key, f.start, f.end - f.start, self.repo.cancel())
            .await
            .map_err(RepoError::from)?;
        let fetched = data.len() as u64;
        let keys = self.repo.keys().clone();
        let (chunk, size) = (self.want.snap.chunk_size as u64, self.want.snap.size);
        let (journal, path) = (self.journal.clone(), self.path.to_path_buf());
        let (_, written) = crate::repository::cpu(move || {
            put_fetched(
                &keys,
                &pack_key,
                &f,
                &data,
                &Placement {
                    targets: &targets,
                    chunk,
                    size,
                },
                |off, plain| {
                    journal
                        .lock()
                        .unwrap()
                        .entry(off, plain.len() as u32, Some(plain))
                        .map_err(io(&path))
                },
            )
        })
        .await??;
        Ok((fetched, written))
    }

    /// Syncs the journal; returns its hash.
    async fn finish(self) -> Result<String, StandbyError> {
        let j = Arc::try_unwrap(self.journal)
            .map_err(|_| StandbyError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other("journal still shared"),
            })?
            .into_inner()
            .unwrap();
        blocking(move || j.finish()).await.map_err(io(self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BlobId;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn applying_the_changed_blocks_of_old_to_new_gives_new(
            old in prop::collection::vec(0u8..4, 0..40),
            new in prop::collection::vec(0u8..4, 1..40),
        ) {
            let r = |n: &u8| if *n == 0 { BlockRef::Zero } else { BlockRef::Blob(BlobId([*n; 32])) };
            let old: Vec<BlockRef> = old.iter().map(r).collect();
            let new: Vec<BlockRef> = new.iter().map(r).collect();
            let mut vol: Vec<BlockRef> = old.clone();
            vol.resize(new.len(), BlockRef::Zero);
            vol.truncate(new.len());
            for (b, e) in changed_blocks(0, &old, &new) {
                vol[b as usize] = e;
            }
            prop_assert_eq!(vol, new);
        }
    }
}
