//! Volume restore: takes a snapshot and a target path (new file, existing file or block
//! device); gives the target holding exactly the snapshot's bytes.
//!
//! The plan is pure ([`plan_fetches`]): the blobs a segment of the volume needs are grouped by
//! pack and coalesced into few large ranged reads. Reads run several at a time; each fetched
//! range is opened and verified (seal and content id) on the blocking pool and written at every
//! offset that uses it. A new target is written as `TARGET.lifeboat-partial`, sparse where the
//! snapshot has zero blocks, and renamed into place only when complete and synced: a failed
//! restore never leaves a plausible-looking target. An existing target is compared block by
//! block and only differing blocks are written. Corrupt data stops the restore with the
//! object named.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use indicatif::ProgressBar;
use tracing::Instrument;

use crate::format::{BlobId, BlobKind, BlockRef, Snapshot, SnapshotId, MAP_SEGMENT_ENTRIES};
use crate::repository::{cpu, BlobLocation, Index, RepoError, Repository};
use crate::volume::backup::{is_zero, source_size};

/// Ranged reads merge blobs whose gap is at most this many bytes…
pub const MAX_GAP: u64 = 256 << 10;
/// …up to this many bytes per read.
pub const MAX_RANGE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore target {path}: {source}")]
    Target {
        path: String,
        source: std::io::Error,
    },
    #[error("restore target {path} holds {have} bytes but the snapshot needs {need}; use a larger device")]
    TargetTooSmall { path: String, have: u64, need: u64 },
    #[error("restore target {path} exists; pass --overwrite to update it in place (only blocks that differ are written), or choose a new path")]
    TargetExists { path: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl RestoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RestoreError::Repo(e) if e.is_retryable())
    }
}

/// How a restore wrote its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// A new file, written whole as `.lifeboat-partial` and renamed when complete.
    #[default]
    New,
    /// An existing file or device, compared block by block; only differing blocks written.
    InPlace,
}

impl std::fmt::Display for RestoreMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestoreMode::New => "new",
            RestoreMode::InPlace => "in-place",
        })
    }
}

/// What one volume restore did (`volume restore --json`).
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct RestoreStats {
    /// The snapshot restored (hex).
    pub snapshot_id: String,
    /// The file or device written.
    pub target: String,
    /// `new` (a fresh file) or `in-place` (an existing file or device, only differences written).
    pub mode: RestoreMode,
    /// The volume's size.
    pub size_bytes: u64,
    pub blocks_total: u64,
    pub blocks_written: u64,
    /// Blocks the target already held.
    pub blocks_unchanged: u64,
    pub blocks_zero: u64,
    /// Written to the target.
    pub written_bytes: u64,
    /// Read from the repository.
    pub fetched_bytes: u64,
    pub duration_seconds: f64,
}

/// One ranged read of a pack and the blobs it yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub pack: u32,
    pub start: u64,
    pub end: u64,
    pub blobs: Vec<(BlobId, BlobLocation)>,
}

/// Groups blobs by pack and coalesces neighbours into reads of at most [`MAX_RANGE`] bytes
/// (a single larger blob gets a read of its own) with gaps of at most [`MAX_GAP`].
pub fn plan_fetches(
    mut blobs: Vec<(BlobId, BlobLocation)>,
    max_gap: u64,
    max_range: u64,
) -> Vec<Fetch> {
    blobs.sort_by_key(|(_, l)| (l.pack, l.offset));
    blobs.dedup_by_key(|(id, _)| *id);
    let mut out: Vec<Fetch> = Vec::new();
    for (id, loc) in blobs {
        let end = loc.offset + loc.length as u64;
        if let Some(f) = out.last_mut() {
            if f.pack == loc.pack
                && loc.offset >= f.end
                && loc.offset - f.end <= max_gap
                && end - f.start <= max_range
            {
                f.end = end;
                f.blobs.push((id, loc));
                continue;
            }
        }
        out.push(Fetch {
            pack: loc.pack,
            start: loc.offset,
            end,
            blobs: vec![(id, loc)],
        });
    }
    out
}

/// The blocks each needed blob fills, and each blob's location once (for [`plan_fetches`]).
/// `needed` is (block, blob); a blob in no index is an error naming `what` needs it.
pub(crate) type Targets = HashMap<BlobId, Vec<u64>>;

pub(crate) fn group_by_blob(
    index: &crate::repository::Index,
    needed: impl IntoIterator<Item = (u64, BlobId)>,
    what: impl Fn(u64, &BlobId) -> String,
) -> Result<(Targets, Vec<(BlobId, BlobLocation)>), RepoError> {
    let mut targets: Targets = HashMap::new();
    let mut locs = Vec::new();
    for (b, id) in needed {
        let loc = index.get(&id).ok_or_else(|| RepoError::BlobMissing {
            id,
            referenced_by: what(b, &id),
        })?;
        let t = targets.entry(id).or_default();
        if t.is_empty() {
            locs.push((id, loc));
        }
        t.push(b);
    }
    Ok((targets, locs))
}

/// Where the blocks of fetched blobs go: the blocks of each blob, in a volume of `size`
/// bytes cut into `chunk`-byte blocks.
pub(crate) struct Placement<'a> {
    pub targets: &'a Targets,
    pub chunk: u64,
    pub size: u64,
}

/// Opens and verifies every data blob of a fetched range (`data`, read from `pack_key` at
/// `f.start`) and hands its plaintext to `put` at the offset of each block it fills, after
/// checking the block's length. Returns the blocks and bytes put.
pub(crate) fn put_fetched<E: From<RepoError>>(
    keys: &crate::crypto::Keys,
    pack_key: &str,
    f: &Fetch,
    data: &[u8],
    at: &Placement<'_>,
    mut put: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<(u64, u64), E> {
    let Placement {
        targets,
        chunk,
        size,
    } = *at;
    let corrupt = |reason: String| RepoError::Corrupt {
        object: pack_key.to_string(),
        reason,
    };
    let (mut blocks, mut bytes) = (0u64, 0u64);
    for (id, loc) in &f.blobs {
        let s = (loc.offset - f.start) as usize;
        let sealed = data
            .get(s..s + loc.length as usize)
            .ok_or_else(|| corrupt(format!("pack ends before blob {id}")))?;
        let plain = keys
            .open_blob(BlobKind::Data, id, sealed, loc.raw_length as usize)
            .map_err(|e| corrupt(format!("blob {id}: {e}")))?;
        for &b in &targets[id] {
            let off = b * chunk;
            let len = ((b + 1) * chunk).min(size) - off;
            if plain.len() as u64 != len {
                return Err(corrupt(format!(
                    "blob {id} has {} bytes, block {b} needs {len}",
                    plain.len()
                ))
                .into());
            }
            put(off, &plain)?;
            blocks += 1;
            bytes += len;
        }
    }
    Ok((blocks, bytes))
}

fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a valid fd; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        file.write_all_at(&vec![0u8; len as usize], offset)
    }
}

fn partial_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".lifeboat-partial");
    PathBuf::from(s)
}

/// Restores snapshot `id` into `target`. See the module documentation.
pub async fn restore_volume(
    repo: Arc<Repository>,
    id: SnapshotId,
    snap: &Snapshot,
    target: &Path,
    options: &RestoreOptions,
    progress: &ProgressBar,
) -> Result<RestoreStats, RestoreError> {
    let span = tracing::info_span!("volume_restore", snapshot = %id.short(), volume = %snap.name);
    restore_inner(repo, id, snap, target, options, progress)
        .instrument(span)
        .await
}

/// How a restore may treat its target.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Ranged reads in flight.
    pub downloads: usize,
    /// Allow an existing target (file or device) to be updated in place.
    pub overwrite: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            downloads: 4,
            overwrite: false,
        }
    }
}

async fn restore_inner(
    repo: Arc<Repository>,
    id: SnapshotId,
    snap: &Snapshot,
    target: &Path,
    options: &RestoreOptions,
    progress: &ProgressBar,
) -> Result<RestoreStats, RestoreError> {
    let started = Instant::now();
    let t = {
        let (target, size, overwrite) = (target.to_path_buf(), snap.size, options.overwrite);
        crate::util::blocking(move || open_target(&target, size, overwrite)).await?
    };
    let written = write_blocks(&repo, id, snap, &t, options, progress).await;
    if written.is_err() && !t.in_place {
        // Failed or interrupted (Ctrl-C): a new target is not left half-written.
        let _ = tokio::fs::remove_file(&t.write_path).await;
    }
    let mut stats = written?;
    t.finish(target, snap).await?;
    stats.duration_seconds = started.elapsed().as_secs_f64();
    tracing::info!(written_bytes = stats.written_bytes, "volume restored");
    Ok(stats)
}

/// Writes every block of `snap` the target lacks; gives the statistics so far.
async fn write_blocks(
    repo: &Arc<Repository>,
    id: SnapshotId,
    snap: &Snapshot,
    t: &RestoreTarget,
    options: &RestoreOptions,
    progress: &ProgressBar,
) -> Result<RestoreStats, RestoreError> {
    let index = Arc::new(repo.load_index().await?);
    let mut stats = RestoreStats {
        snapshot_id: id.to_hex(),
        target: t.shown.clone(),
        mode: if t.in_place {
            RestoreMode::InPlace
        } else {
            RestoreMode::New
        },
        size_bytes: snap.size,
        blocks_total: snap.blocks(),
        ..Default::default()
    };
    progress.set_length(snap.size);

    for seg in 0..snap.map.len() {
        let first = seg as u64 * MAP_SEGMENT_ENTRIES as u64;
        let entries = repo.read_map_segment(&index, snap, seg).await?;
        let needed = if t.in_place {
            t.blocks_to_fix(repo, snap, first, entries, &mut stats, progress)
                .await?
        } else {
            blocks_to_fetch(snap, first, &entries, &mut stats, progress)
        };
        let step = FetchStep {
            repo,
            index: &index,
            file: &t.file,
            snap,
            downloads: options.downloads,
        };
        step.run(needed, &mut stats, progress).await?;
    }
    Ok(stats)
}

/// The file or device a restore writes.
struct RestoreTarget {
    file: Arc<File>,
    /// An existing target, compared block by block and fixed in place.
    in_place: bool,
    is_device: bool,
    /// Where the data goes: the target in place, else `TARGET.lifeboat-partial`.
    write_path: PathBuf,
    shown: String,
}

/// Opens (or creates, as a `.lifeboat-partial` file of `size` bytes) the target. Blocking.
fn open_target(target: &Path, size: u64, overwrite: bool) -> Result<RestoreTarget, RestoreError> {
    let shown = target.display().to_string();
    let terr = |source| RestoreError::Target {
        path: shown.clone(),
        source,
    };
    let (file, in_place, is_device, write_path) = match std::fs::metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let partial = partial_path(target);
            let _ = std::fs::remove_file(&partial);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&partial)
                .map_err(terr)?;
            f.set_len(size).map_err(terr)?;
            (f, false, false, partial)
        }
        Err(e) => return Err(terr(e)),
        Ok(m) if m.is_dir() => {
            return Err(terr(std::io::Error::other(
                "is a directory; give the path of an image file or a block device",
            )))
        }
        Ok(_) if !overwrite => {
            return Err(RestoreError::TargetExists {
                path: shown.clone(),
            })
        }
        Ok(m) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(target)
                .map_err(terr)?;
            let device = !m.is_file();
            if device {
                let have = source_size(&f).map_err(terr)?;
                if have < size {
                    return Err(RestoreError::TargetTooSmall {
                        path: shown.clone(),
                        have,
                        need: size,
                    });
                }
            } else if m.len() < size {
                f.set_len(size).map_err(terr)?;
            }
            (f, true, device, target.to_path_buf())
        }
    };
    Ok(RestoreTarget {
        file: Arc::new(file),
        in_place,
        is_device,
        write_path,
        shown,
    })
}

impl RestoreTarget {
    fn err(&self) -> impl Fn(std::io::Error) -> RestoreError + '_ {
        |source| RestoreError::Target {
            path: self.shown.clone(),
            source,
        }
    }

    /// In place: compares the segment's blocks with the target, zeroes (or punches) blocks
    /// that must be zero, and gives the blocks whose data must be fetched.
    async fn blocks_to_fix(
        &self,
        repo: &Repository,
        snap: &Snapshot,
        first: u64,
        entries: Vec<BlockRef>,
        stats: &mut RestoreStats,
        progress: &ProgressBar,
    ) -> Result<Vec<(u64, BlobId)>, RestoreError> {
        let chunk = snap.chunk_size as u64;
        let f = self.file.clone();
        let keys = repo.keys().clone();
        let (size, is_device) = (snap.size, self.is_device);
        let (need, zeroed, same) = cpu(move || {
            let mut need = Vec::new();
            let (mut zeroed, mut same) = (0u64, 0u64);
            let mut buf = vec![0u8; chunk as usize];
            for (i, e) in entries.iter().enumerate() {
                let b = first + i as u64;
                let (s, end) = (b * chunk, ((b + 1) * chunk).min(size));
                let cur = &mut buf[..(end - s) as usize];
                f.read_exact_at(cur, s)?;
                match e {
                    BlockRef::Zero if is_zero(cur) => same += 1,
                    BlockRef::Zero => {
                        if is_device {
                            f.write_all_at(&vec![0u8; cur.len()], s)?;
                        } else {
                            punch_hole(&f, s, end - s)?;
                        }
                        zeroed += 1;
                    }
                    BlockRef::Blob(id) if keys.blob_id(cur) == *id => same += 1,
                    BlockRef::Blob(id) => need.push((b, *id)),
                }
            }
            Ok::<_, std::io::Error>((need, zeroed, same))
        })
        .await?
        .map_err(self.err())?;
        stats.blocks_written += zeroed;
        stats.written_bytes += zeroed * chunk;
        stats.blocks_unchanged += same;
        stats.blocks_zero += zeroed;
        progress.inc((zeroed + same) * chunk);
        Ok(need)
    }

    /// Makes the restored data durable: trims a regular file to the snapshot's size, syncs,
    /// and renames a new file into place (a failed restore never leaves a plausible file).
    async fn finish(&self, target: &Path, snap: &Snapshot) -> Result<(), RestoreError> {
        if self.in_place && !self.is_device {
            self.file.set_len(snap.size).map_err(self.err())?;
        }
        let f = self.file.clone();
        cpu(move || f.sync_all()).await?.map_err(self.err())?;
        if !self.in_place {
            std::fs::rename(&self.write_path, target).map_err(self.err())?;
            if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(())
    }
}

/// A new target: every non-zero block of the segment is fetched (zeros stay holes).
fn blocks_to_fetch(
    snap: &Snapshot,
    first: u64,
    entries: &[BlockRef],
    stats: &mut RestoreStats,
    progress: &ProgressBar,
) -> Vec<(u64, BlobId)> {
    let chunk = snap.chunk_size as u64;
    let mut needed = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let b = first + i as u64;
        match e {
            BlockRef::Zero => {
                stats.blocks_zero += 1;
                let end = ((b + 1) * chunk).min(snap.size);
                progress.inc(end - b * chunk);
            }
            BlockRef::Blob(id) => needed.push((b, *id)),
        }
    }
    needed
}

/// Fetches the blobs of one segment's needed blocks, in coalesced ranged reads of their packs
/// (`downloads` at once), and writes each verified block where it goes.
struct FetchStep<'a> {
    repo: &'a Arc<Repository>,
    index: &'a Arc<Index>,
    file: &'a Arc<File>,
    snap: &'a Snapshot,
    downloads: usize,
}

impl FetchStep<'_> {
    async fn run(
        &self,
        needed: Vec<(u64, BlobId)>,
        stats: &mut RestoreStats,
        progress: &ProgressBar,
    ) -> Result<(), RestoreError> {
        let chunk = self.snap.chunk_size as u64;
        // Where each needed blob goes, and the reads that fetch them.
        let (targets, locs) = group_by_blob(self.index, needed, |b, id| id_key_block(id, b))?;
        let targets = Arc::new(targets);
        let fetches = plan_fetches(locs, MAX_GAP, MAX_RANGE);
        let mut results = futures::stream::iter(fetches)
            .map(|f| {
                let repo = self.repo.clone();
                let index = self.index.clone();
                let targets = targets.clone();
                let file = self.file.clone();
                let size = self.snap.size;
                async move {
                    let pack = index.pack_id(f.pack);
                    let data = repo
                        .store()
                        .get_range(&pack.key(), f.start, f.end - f.start, repo.cancel())
                        .await
                        .map_err(RepoError::from)?;
                    let fetched = data.len() as u64;
                    let keys = repo.keys().clone();
                    let written = cpu(move || {
                        put_fetched(
                            &keys,
                            &pack.key(),
                            &f,
                            &data,
                            &Placement {
                                targets: &targets,
                                chunk,
                                size,
                            },
                            |off, plain| {
                                file.write_all_at(plain, off).map_err(|source| {
                                    RestoreError::Target {
                                        path: format!("(at byte {off})"),
                                        source,
                                    }
                                })
                            },
                        )
                    })
                    .await??;
                    Ok::<_, RestoreError>((fetched, written))
                }
            })
            .buffer_unordered(self.downloads.max(1));
        while let Some(r) = results.next().await {
            let (fetched, (blocks, bytes)) = r?;
            stats.fetched_bytes += fetched;
            stats.blocks_written += blocks;
            stats.written_bytes += bytes;
            progress.inc(bytes);
        }
        Ok(())
    }
}

fn id_key_block(id: &BlobId, block: u64) -> String {
    format!("block {block} (blob {})", id.short())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loc(pack: u32, offset: u64, length: u32) -> BlobLocation {
        BlobLocation {
            pack,
            offset,
            length,
            raw_length: length,
            kind: BlobKind::Data,
        }
    }

    proptest! {
        #[test]
        fn every_blob_is_fetched_once_within_bounds(
            blobs in prop::collection::vec((0u32..4, 0u64..200, 1u32..40), 0..60),
            max_gap in 0u64..50,
            max_range in 1u64..200,
        ) {
            // Non-overlapping blobs per pack, as in a real pack.
            let mut input = Vec::new();
            let mut next = std::collections::HashMap::<u32, u64>::new();
            for (i, (pack, gap, len)) in blobs.iter().enumerate() {
                let off = next.get(pack).copied().unwrap_or(0) + gap;
                next.insert(*pack, off + *len as u64);
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                input.push((BlobId(id), loc(*pack, off, *len)));
            }
            let plan = plan_fetches(input.clone(), max_gap, max_range);
            let mut seen = std::collections::HashSet::new();
            for f in &plan {
                prop_assert!(f.end - f.start <= max_range || f.blobs.len() == 1);
                for (id, l) in &f.blobs {
                    prop_assert_eq!(l.pack, f.pack);
                    prop_assert!(l.offset >= f.start && l.offset + l.length as u64 <= f.end);
                    prop_assert!(seen.insert(*id), "blob fetched twice");
                }
            }
            prop_assert_eq!(seen.len(), input.len());
        }
    }

    #[test]
    fn neighbours_coalesce_and_far_blobs_do_not() {
        let id = |n: u8| BlobId([n; 32]);
        let plan = plan_fetches(
            vec![
                (id(1), loc(0, 0, 10)),
                (id(2), loc(0, 10, 10)),
                (id(3), loc(0, 1000, 10)),
                (id(4), loc(1, 0, 10)),
            ],
            100,
            1 << 20,
        );
        assert_eq!(plan.len(), 3);
        assert_eq!(
            (plan[0].start, plan[0].end, plan[0].blobs.len()),
            (0, 20, 2)
        );
    }
}
