//! Volume backup: takes a block device or image file and a volume name; gives a snapshot in
//! the repository.
//!
//! The volume is cut into fixed blocks of the repository's chunk size. Holes and all-zero
//! blocks are recorded as zero and never stored. Against the newest snapshot of the same name
//! (the parent) a block is either not read at all (outside `--changed-ranges`), or read and
//! hashed and skipped when its keyed id equals the parent's (hash-compare). What remains is
//! compressed, sealed and packed. Reading, hashing and sealing run on the blocking pool, several
//! blocks at a time, while packs upload in the background; memory is bounded by the number of
//! blocks in flight plus the packs in flight, whatever the volume's size. The block map is
//! written in segments that are shared with the parent when unchanged. The snapshot object is
//! written last, after every pack and index object it needs. Must not write to the source.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use indicatif::ProgressBar;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::crypto::{Keys, Role};
use crate::format::{
    encode_map, BackupStats, BlobId, BlobKind, BlockRef, ChangeSource, Snapshot, SnapshotId,
    SnapshotKind, FORMAT_VERSION, MAP_SEGMENT_ENTRIES,
};
use crate::repository::{cpu, BlobWriter, Claims, Index, RepoError, Repository};
use crate::volume::diff::{
    data_extents, is_hole, read_ranges_file, validate_ranges, BlockSet, ByteRange, RangeError,
};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read source {path}: {source}")]
    Source {
        path: String,
        source: std::io::Error,
    },
    #[error("source {path} is empty (0 bytes): nothing to back up")]
    EmptySource { path: String },
    #[error(transparent)]
    BadName(#[from] crate::util::NameError),
    #[error(transparent)]
    Ranges(#[from] RangeError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl BackupError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackupError::Repo(e) if e.is_retryable())
    }
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub name: String,
    pub source: PathBuf,
    pub changed_ranges: Option<PathBuf>,
    /// Changed ranges given directly (from the CSI SnapshotMetadata service), with where they
    /// came from and the volume size they were computed for; used as `changed_ranges` when
    /// that size is the source's, ignored (hash-compare) otherwise.
    pub given_ranges: Option<GivenRanges>,
    /// Ignore the parent: read and hash every block (still deduplicated).
    pub full: bool,
    /// Blocks read and sealed at once.
    pub concurrency: usize,
    /// Pack uploads in flight.
    pub max_uploads: usize,
    /// What the snapshot records as its source, when `source` is only a temporary copy.
    pub label: Option<String>,
}

impl BackupOptions {
    pub fn new(name: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        BackupOptions {
            name: name.into(),
            source: source.into(),
            changed_ranges: None,
            given_ranges: None,
            full: false,
            concurrency: cores * 2,
            max_uploads: 4,
            label: None,
        }
    }
}

/// Changed ranges from a service rather than a file.
#[derive(Debug, Clone)]
pub struct GivenRanges {
    pub source: String,
    /// The volume size the ranges were computed for; None when the service did not say
    /// (it sent no message: nothing changed).
    pub capacity: Option<u64>,
    pub ranges: Vec<crate::volume::diff::ByteRange>,
}

/// What one volume backup made; printed (`volume backup --json`, the demo) as its
/// [`BackupReport`].
#[derive(Debug, Clone, serde::Serialize)]
#[serde(into = "BackupReport")]
pub struct BackupOutcome {
    pub snapshot_id: SnapshotId,
    pub parent: Option<SnapshotId>,
    pub change_source: ChangeSource,
    pub stats: BackupStats,
}

/// `volume backup --json`: the snapshot made and what it cost, in the output vocabulary
/// (sizes `_bytes`; the stored counters keep their own names).
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct BackupReport {
    /// The snapshot made (hex).
    pub snapshot_id: String,
    /// The snapshot it is incremental to.
    pub parent_id: Option<String>,
    pub change_source: ChangeSource,
    /// Read from the source.
    pub read_bytes: u64,
    /// Plaintext of blobs new to the repository.
    pub new_bytes: u64,
    /// Written to the store (packs, index, snapshot).
    pub uploaded_bytes: u64,
    pub blocks_total: u64,
    /// Blocks that differ from the parent (every non-zero block without one).
    pub blocks_changed: u64,
    /// Blocks of zeros or holes, stored as nothing.
    pub blocks_zero: u64,
    pub duration_seconds: f64,
}

impl From<BackupOutcome> for BackupReport {
    fn from(o: BackupOutcome) -> BackupReport {
        let s = o.stats;
        BackupReport {
            snapshot_id: o.snapshot_id.to_hex(),
            parent_id: o.parent.map(|p| p.to_hex()),
            change_source: o.change_source,
            read_bytes: s.bytes_read,
            new_bytes: s.bytes_new,
            uploaded_bytes: s.bytes_uploaded,
            blocks_total: s.blocks_total,
            blocks_changed: s.blocks_changed,
            blocks_zero: s.blocks_zero,
            duration_seconds: s.duration_seconds,
        }
    }
}

/// Validates a volume name: what `NAME:latest` and listings can show unambiguously.
pub fn check_name(name: &str) -> Result<(), BackupError> {
    Ok(crate::util::check_name(
        crate::util::NameKind::Volume,
        name,
    )?)
}

enum Outcome {
    Zero,
    Unchanged(BlobId),
    Known(BlobId),
    New {
        id: BlobId,
        sealed: Vec<u8>,
        raw: u32,
    },
}

pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let (chunks, rest) = buf.split_at(buf.len() / 16 * 16);
    chunks
        .chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap()) == 0)
        && rest.iter().all(|&b| b == 0)
}

struct BlockJob {
    slot: usize,
    start: u64,
    end: u64,
    parent: BlockRef,
}

struct Shared {
    file: File,
    keys: Arc<Keys>,
    index: Index,
    claims: Arc<Claims>,
    level: i32,
}

fn process_block(s: &Shared, job: &BlockJob) -> std::io::Result<Outcome> {
    let mut buf = vec![0u8; (job.end - job.start) as usize];
    s.file.read_exact_at(&mut buf, job.start)?;
    if is_zero(&buf) {
        return Ok(Outcome::Zero);
    }
    let id = s.keys.blob_id(&buf);
    if job.parent == BlockRef::Blob(id) {
        return Ok(Outcome::Unchanged(id));
    }
    if s.index.contains(&id) || !s.claims.claim(id) {
        return Ok(Outcome::Known(id));
    }
    let sealed = s.keys.seal(Role::Blob(BlobKind::Data, id), &buf, s.level);
    Ok(Outcome::New {
        id,
        sealed,
        raw: buf.len() as u32,
    })
}

/// Reads, hashes and seals one block on the blocking pool.
async fn run_block(
    s: Arc<Shared>,
    job: BlockJob,
) -> Result<(BlockJob, std::io::Result<Outcome>), BackupError> {
    Ok(cpu(move || {
        let out = process_block(&s, &job);
        (job, out)
    })
    .await?)
}

/// Size of a regular file or block device.
pub(crate) fn source_size(file: &File) -> std::io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

fn open_source(path: &Path) -> Result<(File, u64), BackupError> {
    let err = |source| BackupError::Source {
        path: path.display().to_string(),
        source,
    };
    // Look before opening: opening a FIFO blocks until a writer comes, and a character
    // device or socket is no volume.
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).map_err(err)?.file_type();
    let refuse = if kind.is_dir() {
        Some("is a directory")
    } else if kind.is_fifo() {
        Some("is a FIFO (named pipe)")
    } else if kind.is_socket() {
        Some("is a socket")
    } else if kind.is_char_device() {
        Some("is a character device")
    } else {
        None
    };
    if let Some(what) = refuse {
        return Err(err(std::io::Error::other(format!(
            "{what}; give an image file or a block device"
        ))));
    }
    let file = File::open(path).map_err(err)?;
    let size = source_size(&file).map_err(err)?;
    if size == 0 {
        return Err(BackupError::EmptySource {
            path: path.display().to_string(),
        });
    }
    Ok((file, size))
}

/// Backs up one volume. See the module documentation.
pub async fn backup_volume(
    repo: Arc<Repository>,
    opts: &BackupOptions,
    progress: &ProgressBar,
) -> Result<BackupOutcome, BackupError> {
    let span = tracing::info_span!("volume_backup", volume = %opts.name);
    backup_inner(repo, opts, progress).instrument(span).await
}

async fn backup_inner(
    repo: Arc<Repository>,
    opts: &BackupOptions,
    progress: &ProgressBar,
) -> Result<BackupOutcome, BackupError> {
    let started = Instant::now();
    check_name(&opts.name)?;
    let source = opts.source.clone();
    let (file, size) = crate::util::blocking(move || open_source(&source)).await?;
    let chunk = repo.config().chunk_size as u64;
    let nblocks = size.div_ceil(chunk);

    let parent = if opts.full {
        None
    } else {
        repo.latest_of(&opts.name)
            .await?
            .filter(|(_, p)| p.chunk_size as u64 == chunk)
    };
    let ranges = given_ranges(opts, size)?;
    let (change_source, to_read) =
        blocks_to_read(parent.as_ref().map(|(_, p)| p), ranges, size, chunk);

    let extents = {
        let f = file.try_clone().map_err(|source| BackupError::Source {
            path: opts.source.display().to_string(),
            source,
        })?;
        cpu(move || data_extents(&f, size)).await?
    };
    // A full backup trusts no index entry whose pack is gone: it is how lost packs are
    // recovered, and it must store their blocks again.
    let index = if opts.full {
        repo.load_index_of_stored_packs().await?
    } else {
        repo.load_index().await?
    };
    let mut writer = repo.writer(opts.max_uploads);
    let shared = Arc::new(Shared {
        file,
        keys: repo.keys().clone(),
        index,
        claims: writer.claims(),
        level: repo.config().compression_level,
    });
    let plan = Plan {
        size,
        chunk,
        nblocks,
        extents,
        to_read,
        parent_map: parent.as_ref().map(|(_, p)| p.map.clone()),
    };
    let mut stats = BackupStats {
        blocks_total: nblocks,
        ..Default::default()
    };
    progress.set_length(
        plan.to_read
            .as_ref()
            .map(|s| s.len() * chunk)
            .unwrap_or(size)
            .min(size),
    );

    let nsegments = nblocks.div_ceil(MAP_SEGMENT_ENTRIES as u64);
    let mut map_ids = Vec::with_capacity(nsegments as usize);
    for seg in 0..nsegments {
        let step = SegmentStep {
            repo: &repo,
            opts,
            shared: &shared,
            plan: &plan,
            progress,
        };
        map_ids.push(step.run(seg, &mut writer, &mut stats).await?);
    }

    let written = writer.finish().await?;
    stats.bytes_new = written.bytes_new;
    stats.bytes_uploaded = written.bytes_uploaded;
    stats.duration_seconds = started.elapsed().as_secs_f64();
    let mut snap = Snapshot {
        version: FORMAT_VERSION,
        kind: SnapshotKind::Volume,
        name: opts.name.clone(),
        time: OffsetDateTime::now_utc(),
        hostname: crate::repository::hostname(),
        source: opts
            .label
            .clone()
            .unwrap_or_else(|| opts.source.display().to_string()),
        parent: parent.as_ref().map(|(id, _)| *id),
        size,
        chunk_size: chunk as u32,
        map: map_ids,
        change_source,
        stats: stats.clone(),
        program_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let (snapshot_id, len) = repo.write_snapshot(&snap).await?;
    snap.stats.bytes_uploaded += len;
    snap.stats.duration_seconds = started.elapsed().as_secs_f64();
    tracing::info!(snapshot = %snapshot_id.short(), bytes_read = stats.bytes_read, bytes_new = stats.bytes_new, "volume backed up");
    Ok(BackupOutcome {
        snapshot_id,
        parent: snap.parent,
        change_source,
        stats: snap.stats,
    })
}

/// The changed ranges the caller gave (a file, or a delta it obtained), checked against the
/// source's size; None when there are none or they describe another volume.
fn given_ranges(opts: &BackupOptions, size: u64) -> Result<Option<Vec<ByteRange>>, BackupError> {
    Ok(match (&opts.changed_ranges, &opts.given_ranges) {
        (Some(p), _) => {
            let r = read_ranges_file(p)?;
            validate_ranges(&p.display().to_string(), &r, size)?;
            Some(r)
        }
        (None, Some(g)) if g.capacity.is_some_and(|c| c != size) => {
            tracing::warn!(
                "{} describes a volume of {} bytes, the source has {size}: comparing hashes instead",
                g.source,
                g.capacity.unwrap_or_default()
            );
            None
        }
        (None, Some(g)) => {
            validate_ranges(&g.source, &g.ranges, size)?;
            Some(g.ranges.clone())
        }
        (None, None) => None,
    })
}

/// How this backup finds its changes (recorded in the snapshot), and the blocks it reads:
/// None reads every block.
fn blocks_to_read(
    parent: Option<&Snapshot>,
    ranges: Option<Vec<ByteRange>>,
    size: u64,
    chunk: u64,
) -> (ChangeSource, Option<BlockSet>) {
    let nblocks = size.div_ceil(chunk);
    match (parent, ranges) {
        (Some(p), Some(r)) => {
            // Blocks past the parent's end (or its partial last block) are new: read them too.
            let mut from = p.blocks();
            if p.size % chunk != 0 || p.size != size {
                from = from.saturating_sub(1);
            }
            let set = BlockSet::from_byte_ranges(&r, chunk)
                .union(&BlockSet::span(from.min(nblocks), nblocks));
            (ChangeSource::ChangedRanges, Some(set))
        }
        (None, Some(_)) => {
            tracing::warn!(
                "no earlier snapshot of this volume: --changed-ranges ignored, reading every block"
            );
            (ChangeSource::Full, None)
        }
        (Some(_), None) => (ChangeSource::HashCompare, None),
        (None, None) => (ChangeSource::Full, None),
    }
}

/// What every segment of one backup reads from.
struct Plan {
    size: u64,
    chunk: u64,
    nblocks: u64,
    /// The source's allocated extents (SEEK_DATA/SEEK_HOLE).
    extents: Vec<(u64, u64)>,
    /// The blocks to read; None: all of them.
    to_read: Option<BlockSet>,
    /// The parent's block-map segments.
    parent_map: Option<Vec<BlobId>>,
}

/// One block-map segment of a backup: its blocks read, hashed and sealed a few at a time,
/// then the segment itself written unless the parent (or the index) has it already.
struct SegmentStep<'a> {
    repo: &'a Repository,
    opts: &'a BackupOptions,
    shared: &'a Arc<Shared>,
    plan: &'a Plan,
    progress: &'a ProgressBar,
}

impl SegmentStep<'_> {
    async fn run(
        &self,
        seg: u64,
        writer: &mut BlobWriter,
        stats: &mut BackupStats,
    ) -> Result<BlobId, BackupError> {
        let (plan, shared) = (self.plan, self.shared);
        let first = seg * MAP_SEGMENT_ENTRIES as u64;
        let last = (first + MAP_SEGMENT_ENTRIES as u64).min(plan.nblocks);
        let parent_seg = plan.parent_map.as_ref().and_then(|m| m.get(seg as usize));
        let parent_entries: Vec<BlockRef> = match parent_seg {
            Some(seg_id) => {
                let mut e = self.repo.read_map_blob(&shared.index, seg_id).await?;
                // Blocks the parent did not have count as zero there.
                e.resize((last - first) as usize, BlockRef::Zero);
                e
            }
            None => vec![BlockRef::Zero; (last - first) as usize],
        };
        let mut entries = parent_entries.clone();
        let jobs = self.jobs(first, last, &parent_entries, &mut entries);
        self.read_blocks(jobs, &mut entries, writer, stats).await?;

        stats.blocks_zero += entries.iter().filter(|e| **e == BlockRef::Zero).count() as u64;
        stats.blocks_changed += entries
            .iter()
            .zip(&parent_entries)
            .filter(|(a, b)| a != b)
            .count() as u64;

        let map_bytes = encode_map(&entries);
        let keys = shared.keys.clone();
        let (id, map_bytes) = cpu(move || (keys.blob_id(&map_bytes), map_bytes)).await?;
        let reused = parent_seg == Some(&id);
        if !reused && !shared.index.contains(&id) && shared.claims.claim(id) {
            let keys = shared.keys.clone();
            let level = shared.level;
            let raw = map_bytes.len() as u32;
            let sealed =
                cpu(move || keys.seal(Role::Blob(BlobKind::Map, id), &map_bytes, level)).await?;
            writer.add(BlobKind::Map, id, sealed, raw).await?;
        }
        Ok(id)
    }

    /// The blocks of `first..last` to read; holes are recorded as zero on the way, and blocks
    /// outside the changed ranges keep the parent's entry.
    fn jobs(
        &self,
        first: u64,
        last: u64,
        parent_entries: &[BlockRef],
        entries: &mut [BlockRef],
    ) -> Vec<BlockJob> {
        let plan = self.plan;
        let mut jobs = Vec::new();
        for b in first..last {
            let slot = (b - first) as usize;
            let start = b * plan.chunk;
            let end = (start + plan.chunk).min(plan.size);
            if let Some(set) = &plan.to_read {
                if !set.contains(b) {
                    continue; // unchanged since the parent: keep its entry
                }
            }
            if is_hole(&plan.extents, start, end) {
                entries[slot] = BlockRef::Zero;
                self.progress.inc(end - start);
                continue;
            }
            jobs.push(BlockJob {
                slot,
                start,
                end,
                parent: parent_entries[slot],
            });
        }
        jobs
    }

    /// Runs `jobs` on the blocking pool, `concurrency` at a time, in order; new blobs go to
    /// the writer.
    async fn read_blocks(
        &self,
        jobs: Vec<BlockJob>,
        entries: &mut [BlockRef],
        writer: &mut BlobWriter,
        stats: &mut BackupStats,
    ) -> Result<(), BackupError> {
        // A queue of named futures rather than a mapped stream: a closure returning a future,
        // held across an await, keeps the backup future from being provably Send.
        let mut pending = jobs.into_iter();
        let mut results = futures::stream::FuturesOrdered::new();
        loop {
            while results.len() < self.opts.concurrency.max(1) {
                match pending.next() {
                    Some(job) => results.push_back(run_block(self.shared.clone(), job)),
                    None => break,
                }
            }
            let Some(r) = results.next().await else { break };
            let (job, out) = r?;
            let out = out.map_err(|source| BackupError::Source {
                path: format!("{} (at byte {})", self.opts.source.display(), job.start),
                source,
            })?;
            let len = job.end - job.start;
            stats.bytes_read += len;
            self.progress.inc(len);
            entries[job.slot] = match out {
                Outcome::Zero => BlockRef::Zero,
                Outcome::Unchanged(id) | Outcome::Known(id) => BlockRef::Blob(id),
                Outcome::New { id, sealed, raw } => {
                    writer.add(BlobKind::Data, id, sealed, raw).await?;
                    BlockRef::Blob(id)
                }
            };
        }
        Ok(())
    }
}
