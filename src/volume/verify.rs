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

/// Checks a volume (an image file, or a block device at least as large) block by block
/// against a snapshot: each block's keyed hash, or zeros, as the block map says. Returns
/// whether all matched, and how many blocks did before the first that did not.
pub async fn verify_volume(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    path: &Path,
) -> Result<(bool, u64), VerifyError> {
    let (p, size) = (path.to_path_buf(), snap.size);
    if !crate::util::blocking(move || size_fits(&p, size)).await {
        return Ok((false, 0));
    }
    let chunk = snap.chunk_size as u64;
    let mut verified = 0;
    for seg in 0..snap.map.len() {
        let entries = repo.read_map_segment(index, snap, seg).await?;
        let (p, keys, first) = (
            path.to_path_buf(),
            repo.keys().clone(),
            seg as u64 * MAP_SEGMENT_ENTRIES as u64,
        );
        let (good, n) = cpu(move || -> std::io::Result<(bool, u64)> {
            let f = File::open(&p)?;
            let mut buf = vec![0u8; chunk as usize];
            let mut n = 0;
            for (i, e) in entries.iter().enumerate() {
                let b = first + i as u64;
                let (s, end) = (b * chunk, ((b + 1) * chunk).min(size));
                let cur = &mut buf[..(end - s) as usize];
                f.read_exact_at(cur, s)?;
                let same = match e {
                    BlockRef::Zero => is_zero(cur),
                    BlockRef::Blob(id) => keys.blob_id(cur) == *id,
                };
                if !same {
                    return Ok((false, n));
                }
                n += 1;
            }
            Ok((true, n))
        })
        .await?
        .map_err(|source| VerifyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        verified += n;
        if !good {
            return Ok((false, verified));
        }
    }
    Ok((true, verified))
}
