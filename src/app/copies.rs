//! Group snapshots of volume files: takes the volume files of an application (a cluster
//! directory keeps a PersistentVolumeClaim's data at `volumes/<namespace>/<claim>.img`); gives
//! point-in-time copies of all of them, taken back to back, that the volume backup then reads
//! at leisure. Must not write to the volumes, and must not be called outside the rules'
//! barrier (see [`crate::hooks::around`]).
//!
//! A copy is a reflink (`FICLONE`: XFS, btrfs) when the filesystem allows it: constant time,
//! so every volume of the group is captured within milliseconds of the others. Elsewhere it is
//! a sparse copy (only the data extents), still inside the barrier, so the application stays
//! quiet for the whole of it. Copies live beside the volumes (reflinks need the same
//! filesystem) under `.lifeboat/snapshots/` and are removed when the [`GroupSnapshot`] drops.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::volume::diff::data_extents;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot snapshot volume {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The data file of one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub namespace: String,
    pub pvc: String,
    pub path: PathBuf,
}

/// Where a cluster directory keeps a claim's data.
pub fn volume_path(cluster_root: &Path, namespace: &str, pvc: &str) -> PathBuf {
    cluster_root
        .join("volumes")
        .join(namespace)
        .join(format!("{pvc}.img"))
}

/// How a copy was taken: [`Method::Reflink`] or [`Method::Copy`] here.
pub use crate::format::CopyMethod as Method;

/// One volume's point-in-time copy.
#[derive(Debug, Clone)]
pub struct Taken {
    pub volume: VolumeFile,
    pub copy: PathBuf,
    pub size: u64,
    pub method: Method,
}

/// The copies of a group; removed on drop.
#[derive(Debug)]
pub struct GroupSnapshot {
    dir: PathBuf,
    pub taken: Vec<Taken>,
    /// From the first copy started to the last one finished.
    pub window: Duration,
}

impl Drop for GroupSnapshot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), "could not remove snapshot copies: {e}");
            }
        }
    }
}

/// `FICLONE` from linux/fs.h: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

fn reflink(src: &File, dst: &File) -> std::io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call; FICLONE takes the
    // source descriptor as its integer argument and touches no memory of ours.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Copies only the data extents; holes stay holes.
fn sparse_copy(src: &File, dst: &File, size: u64) -> std::io::Result<()> {
    dst.set_len(size)?;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_extents(src, size) {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)?;
            if !crate::volume::backup::is_zero(&buf[..n]) {
                dst.write_all_at(&buf[..n], at)?;
            }
            at += n as u64;
        }
    }
    dst.sync_data()
}

/// Takes a copy of every volume, back to back. Blocking: call it from the blocking pool.
/// `allow_reflink: false` forces copies (for tests and for filesystems whose reflinks are
/// not trusted).
pub fn take_group(
    volumes: &[VolumeFile],
    work_dir: &Path,
    allow_reflink: bool,
) -> Result<GroupSnapshot, SnapshotError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SnapshotError::Io { path, source }
    };
    if volumes.is_empty() {
        // Nothing to copy: not even the work directory (the source may be read-only).
        return Ok(GroupSnapshot {
            dir: work_dir.to_path_buf(),
            taken: Vec::new(),
            window: Duration::ZERO,
        });
    }
    std::fs::create_dir_all(work_dir).map_err(io(work_dir))?;
    let mut group = GroupSnapshot {
        dir: work_dir.to_path_buf(),
        taken: Vec::new(),
        window: Duration::ZERO,
    };
    let started = Instant::now();
    let mut sources = Vec::new();
    // Open every source first, so a missing one fails before any copy is made.
    for v in volumes {
        let f = File::open(&v.path).map_err(io(&v.path))?;
        let size = crate::volume::backup::source_size(&f).map_err(io(&v.path))?;
        sources.push((v, f, size));
    }
    let mut pending = Vec::new();
    for (i, (v, src, size)) in sources.iter().enumerate() {
        let copy = work_dir.join(format!("{i}-{}-{}.img", v.namespace, v.pvc));
        let dst = File::create(&copy).map_err(io(&copy))?;
        let method = if allow_reflink && reflink(src, &dst).is_ok() {
            Method::Reflink
        } else {
            pending.push(i);
            Method::Copy
        };
        group.taken.push(Taken {
            volume: (*v).clone(),
            copy,
            size: *size,
            method,
        });
    }
    for i in pending {
        let (v, src, size) = &sources[i];
        let t = &group.taken[i];
        let dst = std::fs::OpenOptions::new()
            .write(true)
            .open(&t.copy)
            .map_err(io(&t.copy))?;
        sparse_copy(src, &dst, *size).map_err(io(&v.path))?;
    }
    group.window = started.elapsed();
    tracing::info!(volumes = group.taken.len(), window_ms = group.window.as_millis() as u64,
        methods = ?group.taken.iter().map(|t| t.method.as_str()).collect::<Vec<_>>(), "group snapshot taken");
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_exact_sparse_and_removed_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v.img");
        let f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        let vols = vec![VolumeFile {
            namespace: "ns".into(),
            pvc: "data".into(),
            path: path.clone(),
        }];
        let work = d.path().join("snap");
        let g = take_group(&vols, &work, false).unwrap();
        let t = &g.taken[0];
        assert_eq!(t.method, Method::Copy);
        assert_eq!(
            std::fs::read(&t.copy).unwrap(),
            std::fs::read(&path).unwrap()
        );
        // The copy keeps the holes.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&t.copy).unwrap());
        assert!(
            blocks * 512 < 1 << 20,
            "copy allocates {} bytes",
            blocks * 512
        );
        // Writing to the volume afterwards does not change the copy.
        f.write_all_at(b"later", 3 << 20).unwrap();
        assert_eq!(
            &std::fs::read(&t.copy).unwrap()[3 << 20..(3 << 20) + 5],
            b"hello"
        );
        drop(g);
        assert!(!work.exists());
    }

    #[test]
    fn a_missing_volume_fails_before_any_copy() {
        let d = tempfile::tempdir().unwrap();
        let vols = vec![VolumeFile {
            namespace: "ns".into(),
            pvc: "gone".into(),
            path: d.path().join("gone.img"),
        }];
        let e = take_group(&vols, &d.path().join("snap"), true).unwrap_err();
        assert!(e.to_string().contains("gone.img"), "{e}");
    }
}
