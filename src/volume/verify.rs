//! Volume verify: takes a snapshot and a target (an image file, or a block device at least as
//! large); gives whether every block of the target is the snapshot's, by each block's keyed
//! hash (or zeros), as the block map says. Reads only: must not write to the target. A
//! drill's verify Jobs and `lifeboat volume verify` run it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::format::{BlockRef, Snapshot, MAP_SEGMENT_ENTRIES};
use crate::repository::{cpu, Index, RepoError, Repository};
use crate::volume::backup::{is_zero, source_size};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl VerifyError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, VerifyError::Repo(e) if e.is_retryable())
    }
}

/// Whether the file or device at `path` can hold a snapshot of `size` bytes: an image file
/// exactly, a block device at least.
fn size_fits(path: &Path, size: u64) -> bool {
    match File::open(path) {
        Ok(f) => {
            let is_file = f.metadata().map(|m| m.is_file()).unwrap_or(false);
            let len = source_size(&f).unwrap_or(0);
            if is_file {
                len == size
            } else {
                len >= size
            }
        }
        Err(_) => false,
    }
}

/// How many mismatching blocks a [`VerifyCount`] lists by offset.
pub const MISMATCHES_LISTED: usize = 10;

/// What a verify found: every block counted, the first mismatches named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyCount {
    /// Whether the target's size fits the snapshot (an image file exactly, a device at least);
    /// when it does not, no block is read and none matches.
    pub size_fits: bool,
    /// Blocks the snapshot has.
    pub blocks_total: u64,
    /// Blocks of the target that are the snapshot's.
    pub blocks_matching: u64,
    /// The first [`MISMATCHES_LISTED`] blocks that are not, as (block number, byte offset).
    pub first_mismatches: Vec<(u64, u64)>,
}

impl VerifyCount {
    /// Whether the whole target is the snapshot.
    pub fn verified(&self) -> bool {
        self.size_fits && self.blocks_matching == self.blocks_total
    }

    /// Blocks that are not the snapshot's.
    pub fn blocks_mismatching(&self) -> u64 {
        self.blocks_total - self.blocks_matching
    }
}

/// Checks a volume (an image file, or a block device at least as large) block by block
/// against a snapshot: each block's keyed hash, or zeros, as the block map says. Every block
/// is read and counted (a flipped byte is one mismatching block, not the end of the check);
/// the first mismatches are listed.
pub async fn verify_volume(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    path: &Path,
) -> Result<VerifyCount, VerifyError> {
    let (p, size) = (path.to_path_buf(), snap.size);
    let mut count = VerifyCount {
        blocks_total: snap.blocks(),
        ..Default::default()
    };
    if !crate::util::blocking(move || size_fits(&p, size)).await {
        return Ok(count);
    }
    count.size_fits = true;
    let chunk = snap.chunk_size as u64;
    for seg in 0..snap.map.len() {
        let entries = repo.read_map_segment(index, snap, seg).await?;
        let (p, keys, first) = (
            path.to_path_buf(),
            repo.keys().clone(),
            seg as u64 * MAP_SEGMENT_ENTRIES as u64,
        );
        let room = MISMATCHES_LISTED - count.first_mismatches.len();
        let (n, bad) = cpu(move || -> std::io::Result<(u64, Vec<(u64, u64)>)> {
            let f = File::open(&p)?;
            let mut buf = vec![0u8; chunk as usize];
            let (mut n, mut bad) = (0, Vec::new());
            for (i, e) in entries.iter().enumerate() {
                let b = first + i as u64;
                let (s, end) = (b * chunk, ((b + 1) * chunk).min(size));
                let cur = &mut buf[..(end - s) as usize];
                f.read_exact_at(cur, s)?;
                let same = match e {
                    BlockRef::Zero => is_zero(cur),
                    BlockRef::Blob(id) => keys.blob_id(cur) == *id,
                };
                if same {
                    n += 1;
                } else if bad.len() < room {
                    bad.push((b, s));
                }
            }
            Ok((n, bad))
        })
        .await?
        .map_err(|source| VerifyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        count.blocks_matching += n;
        count.first_mismatches.extend(bad);
    }
    Ok(count)
}
