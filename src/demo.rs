//! The demo, and generated volume data for it, the tests and the benchmark: takes a size and
//! a seed; gives a deterministic sparse image of mixed content and reproducible changes to
//! it, and [`run`]: the whole flow on such an image in a scratch directory (init, full and
//! incremental backup, restore, compare, check), told step by step. Must not touch anything
//! outside its scratch directory, nor use a directory that holds anything.
//!
//! Each 1 MiB region is a hole (25 %), a copy of an earlier region (15 %), text-like
//! (20 %) or random (40 %): the same mix the peers were measured on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::repository::{CheckOptions, InitOptions, RepoError, Repository};
use crate::store::{StoreError, StoreOptions};
use crate::util::blocking;
use crate::volume::backup::{backup_volume, BackupError, BackupOptions, BackupOutcome};
use crate::volume::diff::ByteRange;
use crate::volume::restore::{restore_volume, RestoreError, RestoreOptions, RestoreStats};

const REGION: u64 = 1 << 20;

/// xorshift64*: fast, deterministic, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "namespace",
    "cassandra",
    "replica",
    "volume",
    "snapshot",
    "the",
    "of",
    "and",
    "backup",
    "restore",
    "cluster",
    "node",
    "pod",
    "INFO",
    "WARN",
    "2026-11-24T10:00:00Z",
    "commit",
    "log",
    "segment",
    "flush",
    "compaction",
    "key",
    "value",
    "row",
    "table",
    "index",
    "select",
    "insert",
    "update",
    "where",
    "id",
    "=",
    "{",
    "}",
    ":",
    "\"",
    "0",
    "1",
    "42",
    "lifeboat",
    "tokens",
    "status",
];

fn text(rng: &mut Rng, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes();
        let sep: &[u8] = if rng.below(12) == 0 { b"\n" } else { b" " };
        for &b in w.iter().chain(sep) {
            if i < buf.len() {
                buf[i] = b;
                i += 1;
            }
        }
    }
}

/// Writes a new sparse image of `size` bytes at `path`.
pub fn generate_image(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.set_len(size)?;
    let mut rng = Rng::new(seed);
    let regions = size.div_ceil(REGION);
    let mut written: Vec<u64> = Vec::new();
    let mut buf = vec![0u8; REGION as usize];
    for r in 0..regions {
        let off = r * REGION;
        let len = REGION.min(size - off) as usize;
        let class = rng.below(100);
        let buf = &mut buf[..len];
        match class {
            0..=24 => continue, // hole
            25..=39 if !written.is_empty() => {
                let src = written[rng.below(written.len() as u64) as usize];
                f.read_exact_at(buf, src)?;
            }
            25..=59 => text(&mut rng, buf),
            _ => rng.fill(buf),
        }
        f.write_all_at(buf, off)?;
        if len as u64 == REGION {
            written.push(off);
        }
    }
    f.sync_all()
}

/// Overwrites about `fraction` of the image with random data in extents of `extent` bytes at
/// random aligned offsets; returns the changed ranges, sorted (what a CBT source would report).
pub fn mutate(path: &Path, fraction: f64, extent: u64, seed: u64) -> io::Result<Vec<ByteRange>> {
    let f = OpenOptions::new().write(true).read(true).open(path)?;
    let size = f.metadata()?.len();
    let slots = size / extent;
    let count = ((size as f64 * fraction) / extent as f64).ceil() as u64;
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    let mut picked = std::collections::BTreeSet::new();
    while (picked.len() as u64) < count.min(slots) {
        picked.insert(rng.below(slots));
    }
    let mut buf = vec![0u8; extent as usize];
    let mut out = Vec::new();
    for slot in picked {
        rng.fill(&mut buf);
        f.write_all_at(&buf, slot * extent)?;
        out.push(ByteRange {
            offset: slot * extent,
            length: extent,
        });
    }
    f.sync_all()?;
    Ok(out)
}

/// Writes ranges as a changed-ranges JSON file.
pub fn write_ranges(path: &Path, ranges: &[ByteRange]) -> io::Result<()> {
    let v: Vec<serde_json::Value> = ranges
        .iter()
        .map(|r| serde_json::json!({"offset": r.offset, "length": r.length}))
        .collect();
    std::fs::write(path, serde_json::to_vec_pretty(&v)?)
}

/// [`mutate`], then the changed ranges written to `ranges_out` as a changed-ranges file.
pub fn mutate_into(
    image: &Path,
    fraction: f64,
    extent: u64,
    seed: u64,
    ranges_out: &Path,
) -> io::Result<Vec<ByteRange>> {
    let ranges = mutate(image, fraction, extent, seed)?;
    write_ranges(ranges_out, &ranges)?;
    Ok(ranges)
}

/// BLAKE3 of a file's bytes, for comparing a restore with its source.
pub fn file_hash(path: &Path) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path)?;
    io::copy(&mut f, &mut h)?;
    Ok(h.finalize())
}

// ----- the demo ---------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {} is not empty; give a new or empty directory", .0.display())]
    NotEmpty(PathBuf),
    #[error("demo: {what}: {error}")]
    Io { what: String, error: io::Error },
    #[error("demo: the restored volume differs from the source")]
    Differs,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

impl DemoError {
    pub fn is_retryable(&self) -> bool {
        match self {
            DemoError::Store(e) => e.is_retryable(),
            DemoError::Repo(e) => e.is_retryable(),
            DemoError::Backup(e) => e.is_retryable(),
            DemoError::Restore(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// An IO error of one step of the demo.
fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DemoError {
    let what = what.into();
    move |error| DemoError::Io { what, error }
}

/// What the demo is run with.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Scratch directory (must not exist or be empty); None: a new one under the temporary
    /// directory.
    pub dir: Option<PathBuf>,
    /// Size of the generated volume in MiB (at least 1).
    pub size_mib: u64,
    pub store: StoreOptions,
    pub cancel: CancellationToken,
}

/// A step of the demo, done.
#[derive(Debug, Clone, Copy)]
pub enum DemoStep<'a> {
    /// The scratch directory is ready.
    Started {
        dir: &'a Path,
    },
    Generated {
        size_mib: u64,
    },
    RepositoryCreated {
        at: &'a Path,
    },
    FullBackup(&'a BackupOutcome),
    /// 1 % of the volume changed in 64 KiB extents, then backed up again.
    IncrementalBackup(&'a BackupOutcome),
    Restored {
        to: &'a Path,
        stats: &'a RestoreStats,
        identical: bool,
    },
    Checked {
        ok: bool,
        packs_read: usize,
    },
}

/// How the demo tells what it does: each step as it is done, a progress bar per long step.
pub trait Narrator {
    fn step(&self, step: DemoStep<'_>);
    fn progress(&self, what: &str) -> ProgressBar;
}

/// What the demo did (its `--json` output; fields in the order it has always printed them).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub check_ok: bool,
    pub dir: PathBuf,
    pub full: BackupOutcome,
    /// The restored volume is bit-identical to the source.
    pub identical: bool,
    pub incremental: BackupOutcome,
    pub restore: RestoreStats,
    /// Problems `repo check --read-data` found.
    #[serde(skip)]
    pub check_errors: usize,
}

/// The scratch directory: the one given if it is new or empty, else a new one.
fn scratch_dir(dir: Option<PathBuf>) -> Result<PathBuf, DemoError> {
    let dir = match dir {
        Some(d) => {
            let used = d.exists()
                && std::fs::read_dir(&d)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(true);
            if used {
                return Err(DemoError::NotEmpty(d));
            }
            d
        }
        None => std::env::temp_dir().join(format!("lifeboat-demo-{:08x}", rand::random::<u32>())),
    };
    std::fs::create_dir_all(&dir).map_err(io_err("create scratch directory"))?;
    Ok(dir)
}

/// A backup of the demo volume, with a progress bar.
async fn backup(
    repo: &Arc<Repository>,
    opts: BackupOptions,
    what: &str,
    n: &dyn Narrator,
) -> Result<BackupOutcome, DemoError> {
    let pb = n.progress(what);
    let out = backup_volume(repo.clone(), &opts, &pb).await?;
    pb.finish_and_clear();
    Ok(out)
}

/// BLAKE3 of a file, off the runtime.
async fn hash(path: &Path) -> Result<blake3::Hash, DemoError> {
    let p = path.to_path_buf();
    blocking(move || file_hash(&p))
        .await
        .map_err(io_err("hash"))
}

/// Runs the whole flow on generated data in a scratch directory: generate, init, full and
/// incremental backup, restore, compare, check. A restore that differs or a check that finds
/// damage is reported (`identical`, `check_ok`), not an error.
pub async fn run(o: &DemoOptions, n: &dyn Narrator) -> Result<DemoReport, DemoError> {
    let dir = scratch_dir(o.dir.clone())?;
    n.step(DemoStep::Started { dir: &dir });
    let image = dir.join("volume.img");
    let size = o.size_mib.max(1) << 20;
    let img = image.clone();
    blocking(move || generate_image(&img, size, 42))
        .await
        .map_err(io_err("generate volume"))?;
    n.step(DemoStep::Generated {
        size_mib: o.size_mib,
    });
    let repo_dir = dir.join("repo");
    let store = crate::store::open(&repo_dir.display().to_string(), &o.store).await?;
    let repo = Arc::new(
        Repository::init(store, b"demo", &InitOptions::default(), o.cancel.clone()).await?,
    );
    n.step(DemoStep::RepositoryCreated { at: &repo_dir });
    let full = backup(
        &repo,
        BackupOptions::new("demo-volume", &image),
        "full backup",
        n,
    )
    .await?;
    n.step(DemoStep::FullBackup(&full));
    let ranges_file = dir.join("changed-ranges.json");
    let (img, rf) = (image.clone(), ranges_file.clone());
    blocking(move || mutate_into(&img, 0.01, 64 << 10, 7, &rf))
        .await
        .map_err(io_err("change volume"))?;
    let mut opts = BackupOptions::new("demo-volume", &image);
    opts.changed_ranges = Some(ranges_file);
    let inc = backup(&repo, opts, "incremental backup", n).await?;
    n.step(DemoStep::IncrementalBackup(&inc));
    let (id, snap) = repo.resolve_snapshot("demo-volume:latest").await?;
    let restored = dir.join("restored.img");
    let pb = n.progress("restore");
    let rs = restore_volume(
        repo.clone(),
        id,
        &snap,
        &restored,
        &RestoreOptions::default(),
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    let identical = hash(&image).await? == hash(&restored).await?;
    n.step(DemoStep::Restored {
        to: &restored,
        stats: &rs,
        identical,
    });
    let check = repo.check(&CheckOptions { read_data: true }).await?;
    n.step(DemoStep::Checked {
        ok: check.ok(),
        packs_read: check.packs_read,
    });
    Ok(DemoReport {
        check_ok: check.ok(),
        dir,
        full,
        identical,
        incremental: inc,
        restore: rs,
        check_errors: check.errors.len(),
    })
}
