//! The DR site: takes the repository, a schedule and a target (a cluster directory, or a live
//! cluster through [`crate::k8s::csi`]); keeps the target a warm standby of the schedule's newest
//! backup, and switches it on (`activate`) and off (`deactivate`). Must not leave a volume half-way between two snapshots, nor a backup
//! half-applied: a standby killed at any instant resumes to the previous or the new state.
//!
//! A volume already holding snapshot A moves to snapshot B by the **difference of their block
//! maps**: map segments with equal ids are skipped without reading, and only blocks whose
//! entries differ are fetched and written (a 1 TiB volume with 1 GiB changed costs about
//! 1 GiB). The switch is two-phase, per backup:
//!
//! 1. **Prepare.** For each volume, the changed blocks are fetched, verified and written to a
//!    journal beside it (`<volume>.lifeboat-journal`); a volume new to the site is restored to
//!    `<volume>.lifeboat-new`. Nothing the standby serves is touched. A snapshot that fails
//!    verification stops here: the backup is skipped and reported, the standby unchanged.
//! 2. **Commit.** A marker listing every journal (with its hash) is written atomically
//!    (`volumes/<ns>/.lifeboat-commit.json`); then each journal is replayed into its volume
//!    (or the new file renamed into place), the volume's `<volume>.lifeboat-applied` record
//!    is updated, and finally the marker and journals are removed. A standby that starts and
//!    finds a marker replays it first (replay is idempotent); journals without a marker are
//!    discarded.
//!
//! The configuration is then applied with `--start-applications=false` semantics.
//!
//! On a live site the same two phases run inside a standby Job ([`apply_devices`]), with the
//! claims as block devices and the journals, records and marker on a claim of their own; the
//! commit marker names claims, not device paths, so the next Job can finish it.
//!
//! A delta is only ever applied onto a volume whose record says what it holds. `activate`
//! drops the records (the application changes the data from then on), so after `deactivate`
//! the volumes are written whole; a live claim standby never wrote is not overwritten unless
//! asked (`--overwrite-claims`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::app::copies::volume_path;
use crate::app::record::{self, AppBackupError, Planned, RestorePlanOptions};
use crate::format::{AppBackup, BlockRef, Snapshot, SnapshotId, MAP_SEGMENT_ENTRIES};
use crate::k8s::objects::{change_of, Change, Mapping, ObjRef};
use crate::k8s::source::{ClusterDir, ClusterError, ExistingPolicy, Outcome};
use crate::repository::{Index, RepoError, Repository};
use crate::scheduler::catalog::{blocking, Catalog, CatalogError};
use crate::volume::restore::{
    group_by_blob, plan_fetches, put_fetched, restore_volume, Placement, RestoreError,
    RestoreOptions, Targets, MAX_GAP, MAX_RANGE,
};

pub const APPLIED_SUFFIX: &str = ".lifeboat-applied";
pub const JOURNAL_SUFFIX: &str = ".lifeboat-journal";
pub const NEW_SUFFIX: &str = ".lifeboat-new";
pub const COMMIT_FILE: &str = ".lifeboat-commit.json";
const JOURNAL_MAGIC: &[u8; 8] = b"LBJRNL01";

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("journal {path} is damaged ({reason}); its commit marker is kept: fix the disk, or remove both to re-apply the backup from scratch")]
    BadJournal { path: String, reason: String },
    #[error("no complete backup of schedule `{0}` in the repository yet")]
    NoBackup(String),
    /// A failure already told as text (a repository that cannot be opened, a plan that could
    /// not be read for every namespace of the cycle).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    App(#[from] AppBackupError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Live(#[from] crate::k8s::LiveError),
}

impl StandbyError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StandbyError::Repo(e) => e.is_retryable(),
            StandbyError::Restore(e) => e.is_retryable(),
            StandbyError::App(e) => e.is_retryable(),
            StandbyError::Live(e) => e.is_retryable(),
            _ => false,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StandbyError + '_ {
    move |source| StandbyError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// What a volume of the site holds, recorded beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub snapshot: SnapshotId,
    pub size: u64,
}

pub fn read_applied(volume: &Path) -> Option<Applied> {
    let bytes = std::fs::read(with_suffix(volume, APPLIED_SUFFIX)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StandbyError> {
    let tmp = with_suffix(path, ".tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(d) = path.parent() {
        if let Ok(d) = File::open(d) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Blocks whose entries differ between two maps of the same chunk size (pure): (block, new
/// entry). Blocks past the end of the old map count as zero there.
pub fn changed_blocks(first: u64, old: &[BlockRef], new: &[BlockRef]) -> Vec<(u64, BlockRef)> {
    new.iter()
        .enumerate()
        .filter(|(i, e)| old.get(*i).copied().unwrap_or(BlockRef::Zero) != **e)
        .map(|(i, e)| (first + i as u64, *e))
        .collect()
}

/// One volume's part of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitItem {
    pub pvc: String,
    pub target: PathBuf,
    /// `journal` (replayed into the target), `new` (renamed over it), or `record` (same
    /// content, only the applied record moves).
    pub kind: String,
    pub staged: PathBuf,
    pub snapshot: SnapshotId,
    pub size: u64,
    /// BLAKE3 of the journal (journals only).
    pub hash: Option<String>,
    /// Where what the target holds is recorded, when not beside it (a block device's record
    /// lives in the journal directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<PathBuf>,
}

impl CommitItem {
    fn record_path(&self) -> PathBuf {
        self.record
            .clone()
            .unwrap_or_else(|| with_suffix(&self.target, APPLIED_SUFFIX))
    }
}

fn read_record(path: &Path) -> Option<Applied> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CommitMarker {
    backup: String,
    items: Vec<CommitItem>,
}

/// What applying one volume cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VolumeReport {
    pub namespace: String,
    pub pvc: String,
    pub snapshot: String,
    /// `full` (new to the site), `delta` (only changed blocks), `unchanged`.
    pub mode: String,
    pub blocks_changed: u64,
    pub bytes_fetched: u64,
    pub bytes_written: u64,
}

/// An appendable journal: `LBJRNL01`, then entries of (u64 offset, u32 length, u8 kind, data
/// when kind is 1; kind 0 means zeros).
struct Journal {
    file: File,
    hasher: blake3::Hasher,
    pos: u64,
}

impl Journal {
    fn create(path: &Path) -> std::io::Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(path)?;
        let mut j = Journal {
            file,
            hasher: blake3::Hasher::new(),
            pos: 0,
        };
        j.append(JOURNAL_MAGIC)?;
        Ok(j)
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, self.pos)?;
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, offset: u64, len: u32, data: Option<&[u8]>) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(13);
        head.extend_from_slice(&offset.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        head.push(data.is_some() as u8);
        self.append(&head)?;
        if let Some(d) = data {
            self.append(d)?;
        }
        Ok(())
    }
}

/// Replays a committed journal into its target (idempotent), then records what it holds.
fn replay(item: &CommitItem) -> Result<u64, StandbyError> {
    if item.kind == "record" {
        // Nothing to write: the content is the same.
    } else if item.kind == "new" {
        if item.staged.exists() {
            std::fs::rename(&item.staged, &item.target).map_err(io(&item.target))?;
        }
    } else {
        let bad = |reason: String| StandbyError::BadJournal {
            path: item.staged.display().to_string(),
            reason,
        };
        let bytes = match std::fs::read(&item.staged) {
            Ok(b) => Some(b),
            // Replayed and removed already: the target holds it.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && read_record(&item.record_path()).map(|a| a.snapshot)
                        == Some(item.snapshot) =>
            {
                None
            }
            Err(e) => return Err(io(&item.staged)(e)),
        };
        if let Some(bytes) = bytes {
            if Some(blake3::hash(&bytes).to_hex().to_string()) != item.hash {
                return Err(bad("its hash does not match the commit marker".into()));
            }
            if bytes.len() < 8 || &bytes[..8] != JOURNAL_MAGIC {
                return Err(bad("bad magic".into()));
            }
            let target = OpenOptions::new()
                .write(true)
                .open(&item.target)
                .map_err(io(&item.target))?;
            let mut at = 8usize;
            let mut written = 0u64;
            while at < bytes.len() {
                let h = bytes
                    .get(at..at + 13)
                    .ok_or_else(|| bad("truncated entry".into()))?;
                let offset = u64::from_le_bytes(h[..8].try_into().unwrap());
                let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
                at += 13;
                if h[12] == 1 {
                    let data = bytes
                        .get(at..at + len)
                        .ok_or_else(|| bad("truncated data".into()))?;
                    target
                        .write_all_at(data, offset)
                        .map_err(io(&item.target))?;
                    at += len;
                } else {
                    target
                        .write_all_at(&vec![0u8; len], offset)
                        .map_err(io(&item.target))?;
                }
                written += len as u64;
            }
            // A file takes the snapshot's size; a block device has its own.
            if target.metadata().map(|m| m.is_file()).unwrap_or(false) {
                target.set_len(item.size).map_err(io(&item.target))?;
            }
            target.sync_all().map_err(io(&item.target))?;
            write_applied(item)?;
            return Ok(written);
        }
    }
    write_applied(item)?;
    Ok(0)
}

fn write_applied(item: &CommitItem) -> Result<(), StandbyError> {
    let a = Applied {
        snapshot: item.snapshot,
        size: item.size,
    };
    write_atomic(
        &item.record_path(),
        &serde_json::to_vec(&a).expect("serialises"),
    )
}

/// Finishes (or discards) what an earlier standby left in a namespace's volume directory.
/// Returns the backup of a commit it finished.
pub fn recover(dir: &Path) -> Result<Option<String>, StandbyError> {
    let marker = dir.join(COMMIT_FILE);
    let mut finished = None;
    if marker.exists() {
        let m: CommitMarker = serde_json::from_slice(&std::fs::read(&marker).map_err(io(&marker))?)
            .map_err(|e| StandbyError::BadJournal {
                path: marker.display().to_string(),
                reason: e.to_string(),
            })?;
        tracing::warn!(backup = %m.backup, "finishing an apply an earlier standby committed but did not complete");
        for item in &m.items {
            replay(item)?;
        }
        std::fs::remove_file(&marker).map_err(io(&marker))?;
        finished = Some(m.backup);
    }
    // Journals and new files without a commit: an apply that never committed.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(JOURNAL_SUFFIX)
                || name.ends_with(NEW_SUFFIX)
                || name.ends_with(".lifeboat-partial")
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(finished)
}

async fn map_segment(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    seg: usize,
) -> Result<Vec<BlockRef>, StandbyError> {
    Ok(repo.read_map_segment(index, snap, seg).await?)
}

/// Fetches one coalesced range and journals the blocks its blobs fill.
#[allow(clippy::too_many_arguments)]
async fn fetch_into_journal(
    repo: Arc<Repository>,
    pack_key: String,
    f: crate::volume::restore::Fetch,
    targets: Arc<Targets>,
    chunk: u64,
    size: u64,
    journal: Arc<Mutex<Journal>>,
    path: PathBuf,
) -> Result<(u64, u64), StandbyError> {
    let data = repo
        .store()
        .get_range(&pack_key, f.start, f.end - f.start, repo.cancel())
        .await
        .map_err(RepoError::from)?;
    let fetched = data.len() as u64;
    let keys = repo.keys().clone();
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

/// Phase 1 for one volume: stages snapshot `new` for `target` (see the module documentation).
/// None: the target holds it already.
#[allow(clippy::too_many_arguments)]
async fn prepare_volume(
    repo: &Arc<Repository>,
    index: &Arc<Index>,
    pvc: &str,
    new_id: SnapshotId,
    new: &Snapshot,
    target: &Path,
    stage: &Stage,
    report: &mut VolumeReport,
) -> Result<Option<CommitItem>, StandbyError> {
    let applied = stage.applied.clone();
    if applied.as_ref().map(|a| a.snapshot) == Some(new_id) {
        report.mode = "unchanged".into();
        return Ok(None);
    }
    let base = applied;
    let base = match base {
        Some(a) => match repo.load_snapshot(&a.snapshot).await {
            Ok(s) if s.chunk_size == new.chunk_size => Some(s),
            // The base is gone from the repository (forgotten) or differently cut: full.
            _ => None,
        },
        None => None,
    };
    if base.is_none() && !stage.whole {
        if stage.record.is_some() {
            // A device is only ever moved from a known snapshot: its whole content is not
            // staged (it would need its size again in the journal).
            return Err(StandbyError::Failed(format!(
                "claim {pvc}: the snapshot it holds ({}) is not in the repository any more; delete the claim on the site to have standby write it whole",
                stage.applied.as_ref().map(|a| a.snapshot.short()).unwrap_or_else(|| "unknown".into())
            )));
        }
        report.mode = "full".into();
        let staged = with_suffix(target, NEW_SUFFIX);
        let _ = std::fs::remove_file(&staged);
        let o = RestoreOptions {
            overwrite: false,
            ..RestoreOptions::default()
        };
        let stats = restore_volume(
            repo.clone(),
            new_id,
            new,
            &staged,
            &o,
            &ProgressBar::hidden(),
        )
        .await?;
        report.bytes_fetched = stats.bytes_fetched;
        report.bytes_written = stats.bytes_written;
        report.blocks_changed = stats.blocks_written;
        return Ok(Some(CommitItem {
            pvc: pvc.into(),
            target: target.into(),
            kind: "new".into(),
            staged,
            snapshot: new_id,
            size: new.size,
            hash: None,
            record: stage.record.clone(),
        }));
    }
    if base
        .as_ref()
        .is_some_and(|b| b.map == new.map && b.size == new.size)
    {
        // The same content under a new snapshot: only the record moves.
        report.mode = "unchanged".into();
        return Ok(Some(CommitItem {
            pvc: pvc.into(),
            target: target.into(),
            kind: "record".into(),
            staged: target.into(),
            snapshot: new_id,
            size: new.size,
            hash: None,
            record: stage.record.clone(),
        }));
    }
    // Without a base (`whole`: a claim of unknown content), every block is journaled.
    report.mode = if base.is_some() { "delta" } else { "full" }.into();
    let chunk = new.chunk_size as u64;
    let staged = stage.journal.clone();
    let journal = Arc::new(Mutex::new(Journal::create(&staged).map_err(io(&staged))?));
    for seg in 0..new.map.len() {
        if base
            .as_ref()
            .is_some_and(|b| b.map.get(seg) == new.map.get(seg))
        {
            continue; // an identical segment: not even read
        }
        let first = seg as u64 * MAP_SEGMENT_ENTRIES as u64;
        let cur = map_segment(repo, index, new, seg).await?;
        let changed = match &base {
            Some(b) => changed_blocks(first, &map_segment(repo, index, b, seg).await?, &cur),
            None => cur
                .iter()
                .enumerate()
                .map(|(i, e)| (first + i as u64, *e))
                .collect(),
        };
        report.blocks_changed += changed.len() as u64;
        let mut needed = Vec::new();
        for (b, e) in changed {
            match e {
                BlockRef::Zero => {
                    let off = b * chunk;
                    let len = ((b + 1) * chunk).min(new.size) - off;
                    journal
                        .lock()
                        .unwrap()
                        .entry(off, len as u32, None)
                        .map_err(io(&staged))?;
                    report.bytes_written += len;
                }
                BlockRef::Blob(id) => needed.push((b, id)),
            }
        }
        let (targets, locs) = group_by_blob(index, needed, |b, _| {
            format!("block {b} of snapshot {}", new_id.short())
        })?;
        let targets = Arc::new(targets);
        let mut fetches = futures::stream::FuturesUnordered::new();
        let mut plan = plan_fetches(locs, MAX_GAP, MAX_RANGE).into_iter();
        loop {
            while fetches.len() < 4 {
                let Some(f) = plan.next() else { break };
                let key = index.pack_id(f.pack).key();
                fetches.push(fetch_into_journal(
                    repo.clone(),
                    key,
                    f,
                    targets.clone(),
                    chunk,
                    new.size,
                    journal.clone(),
                    staged.clone(),
                ));
            }
            let Some(r) = fetches.next().await else { break };
            let (fetched, written) = r?;
            report.bytes_fetched += fetched;
            report.bytes_written += written;
        }
    }
    let j = Arc::try_unwrap(journal)
        .map_err(|_| StandbyError::Io {
            path: staged.display().to_string(),
            source: std::io::Error::other("journal still shared"),
        })?
        .into_inner()
        .unwrap();
    j.file.sync_all().map_err(io(&staged))?;
    let hash = j.hasher.finalize().to_hex().to_string();
    Ok(Some(CommitItem {
        pvc: pvc.into(),
        target: target.into(),
        kind: "journal".into(),
        staged,
        snapshot: new_id,
        size: new.size,
        hash: Some(hash),
        record: stage.record.clone(),
    }))
}

/// Where one volume is staged, and what it holds now.
struct Stage {
    applied: Option<Applied>,
    journal: PathBuf,
    /// Some: the record lives here, not beside the target (block devices).
    record: Option<PathBuf>,
    /// Without a known base, journal every block (a device of unknown content).
    whole: bool,
}

impl Stage {
    /// A volume file of a cluster-directory site: journal and record beside it.
    fn beside(target: &Path) -> Stage {
        Stage {
            applied: read_applied(target).filter(|_| target.exists()),
            journal: with_suffix(target, JOURNAL_SUFFIX),
            record: None,
            whole: false,
        }
    }
}

/// One claim of a live site, as the standby Job that updates it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceVolume {
    pub pvc: String,
    /// The claim's block device in the Job.
    pub device: PathBuf,
    /// The snapshot it is to hold.
    pub snapshot: SnapshotId,
    /// The snapshot it holds as the claim's annotation says, for when the journal directory
    /// has no record of it (a claim written whole by a restore Job).
    pub base: Option<SnapshotId>,
    /// Its content is unknown (`=whole` instead of a base): every block is journaled and
    /// written (standby `--overwrite-claims`, for failback).
    pub whole: bool,
}

impl std::str::FromStr for DeviceVolume {
    type Err = String;
    /// `PVC=DEVICE=SNAPSHOT[=BASE|=whole]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('=').collect();
        let id = |t: &str| {
            t.parse::<SnapshotId>()
                .map_err(|e| format!("`{s}`: `{t}` is not a snapshot id: {e}"))
        };
        match parts.as_slice() {
            [pvc, dev, snap] | [pvc, dev, snap, _] if !pvc.is_empty() && !dev.is_empty() => {
                let whole = parts.get(3) == Some(&"whole");
                Ok(DeviceVolume {
                    pvc: pvc.to_string(),
                    device: PathBuf::from(dev),
                    snapshot: id(snap)?,
                    base: parts.get(3).filter(|_| !whole).map(|b| id(b)).transpose()?,
                    whole,
                })
            }
            _ => Err(format!("`{s}` is not PVC=DEVICE=SNAPSHOT[=BASE|=whole]")),
        }
    }
}

/// The standby Job's work on a live site: moves the claims' block devices to a backup's
/// snapshots together, by the block-map difference, two-phase as on a cluster-directory site,
/// with the journals, the records and the commit marker in `dir` (a claim that outlives the
/// Job). A Job killed at any point leaves the devices at the previous or the new snapshots:
/// the next Job finishes a committed marker first and discards the rest.
pub async fn apply_devices(
    repo: &Arc<Repository>,
    dir: &Path,
    backup: &str,
    volumes: &[DeviceVolume],
) -> Result<Vec<VolumeReport>, StandbyError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    retarget_marker(dir, volumes)?;
    if let Some(b) = recover(dir)? {
        tracing::info!(backup = %b, "finished the apply an earlier Job committed");
    }
    let index = Arc::new(repo.load_index().await?);
    let mut items = Vec::new();
    let mut reports = Vec::new();
    let mut result = Ok(());
    for v in volumes {
        let record = dir.join(format!("{}{APPLIED_SUFFIX}", v.pvc));
        let stage = Stage {
            // The record is written with the device (at replay), the claim's annotation only
            // after the Job: the record wins, unless the claim is to be written whole.
            applied: (!v.whole)
                .then(|| read_record(&record))
                .flatten()
                .or(v.base.map(|snapshot| Applied { snapshot, size: 0 })),
            journal: dir.join(format!("{}{JOURNAL_SUFFIX}", v.pvc)),
            record: Some(record),
            whole: v.whole,
        };
        let mut report = VolumeReport {
            pvc: v.pvc.clone(),
            snapshot: v.snapshot.to_hex(),
            ..Default::default()
        };
        let prepared = async {
            let snap = repo.load_snapshot(&v.snapshot).await?;
            prepare_volume(
                repo,
                &index,
                &v.pvc,
                v.snapshot,
                &snap,
                &v.device,
                &stage,
                &mut report,
            )
            .await
        }
        .await;
        match prepared {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        reports.push(report);
        failpoint("standby-after-prepare-volume");
    }
    if let Err(e) = result {
        recover(dir)?; // discards the journals: the devices stay as they were
        return Err(e);
    }
    if !items.is_empty() {
        commit(dir, backup, items)?;
    }
    Ok(reports)
}

/// Phase 2 for the staged volumes of one namespace: the commit marker in `dir`, atomically,
/// then each item replayed, then the marker removed.
fn commit(dir: &Path, backup: &str, items: Vec<CommitItem>) -> Result<(), StandbyError> {
    let marker = CommitMarker {
        backup: backup.to_string(),
        items,
    };
    let m = dir.join(COMMIT_FILE);
    write_atomic(&m, &serde_json::to_vec_pretty(&marker).expect("serialises"))?;
    failpoint("standby-after-commit");
    for item in &marker.items {
        replay(item)?;
    }
    std::fs::remove_file(&m).map_err(io(&m))
}

/// A commit marker left by an earlier Job names its devices by that Job's paths: point each
/// item at this Job's device of the same claim before it is replayed.
fn retarget_marker(dir: &Path, volumes: &[DeviceVolume]) -> Result<(), StandbyError> {
    let m = dir.join(COMMIT_FILE);
    let Ok(bytes) = std::fs::read(&m) else {
        return Ok(());
    };
    let mut marker: CommitMarker =
        serde_json::from_slice(&bytes).map_err(|e| StandbyError::BadJournal {
            path: m.display().to_string(),
            reason: e.to_string(),
        })?;
    for item in &mut marker.items {
        let Some(v) = volumes.iter().find(|v| v.pvc == item.pvc) else {
            return Err(StandbyError::Failed(format!(
                "the commit marker {} of backup {} names claim {}, which this Job was not given; run it with every claim of the namespace",
                m.display(),
                marker.backup,
                item.pvc
            )));
        };
        item.target = v.device.clone();
    }
    write_atomic(&m, &serde_json::to_vec_pretty(&marker).expect("serialises"))
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
        let old = map_segment(repo, index, base, seg).await?;
        let cur = map_segment(repo, index, new, seg).await?;
        let changed = changed_blocks(first, &old, &cur);
        // Each entry: 13 bytes of header, then the block unless it is zero.
        bytes += changed
            .iter()
            .map(|(_, e)| 13 + if *e == BlockRef::Zero { 0 } else { chunk })
            .sum::<u64>();
    }
    Ok(bytes)
}

/// Failure injection for tests: `LIFEBOAT_FAILPOINT=<name>` makes the process exit at that
/// point, as a kill would.
fn failpoint(name: &str) {
    if std::env::var("LIFEBOAT_FAILPOINT").as_deref() == Ok(name) {
        eprintln!("failpoint {name}: exiting");
        std::process::exit(99);
    }
}

/// What one cycle did for one namespace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NamespaceReport {
    pub namespace: String,
    pub source_namespace: String,
    /// `applied`, `up-to-date`, `activated` (left alone), `failed`.
    pub state: String,
    pub backup: Option<String>,
    pub error: Option<String>,
    pub volumes: Vec<VolumeReport>,
    pub objects_applied: usize,
}

/// How a site is watched.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    pub schedule: String,
    pub namespaces: Mapping,
    /// Live sites: a claim that exists but that standby did not write is overwritten whole
    /// (journaled) instead of failing the namespace (failback onto a repaired primary).
    pub overwrite_claims: bool,
}

/// The newest complete backup of a schedule.
pub fn newest_of(
    backups: &[(crate::format::BackupId, AppBackup)],
    schedule: &str,
) -> Option<AppBackup> {
    backups
        .iter()
        .filter(|(_, b)| b.schedule.as_deref() == Some(schedule) && b.failures.is_empty())
        .max_by(|a, b| a.1.time.cmp(&b.1.time))
        .map(|(_, b)| b.clone())
}

/// The first step of a cycle: the schedule's newest complete backup, what the bucket offers
/// recorded for each of its namespaces, and which namespaces need it applied (source, site);
/// the others are reported `activated` or `up-to-date`. `prepare` runs per namespace first.
async fn triage(
    repo: &Arc<Repository>,
    catalog: &Arc<Catalog>,
    o: &StandbyOptions,
    prepare: impl Fn(&str) -> Result<(), StandbyError>,
) -> Result<(AppBackup, Vec<NamespaceReport>, Vec<(String, String)>), StandbyError> {
    let backups = record::list_backups(repo).await?;
    let Some(newest) = newest_of(&backups, &o.schedule) else {
        return Err(StandbyError::NoBackup(o.schedule.clone()));
    };
    let rows = blocking(catalog, |c| c.standby_rows()).await?;
    let mut reports = Vec::new();
    let mut todo = Vec::new();
    for src in &newest.filters.namespaces {
        let ns = o.namespaces.get(src).to_string();
        let row = rows.iter().find(|r| r.namespace == ns);
        let mut r = NamespaceReport {
            namespace: ns.clone(),
            source_namespace: src.clone(),
            backup: Some(newest.name.clone()),
            ..Default::default()
        };
        prepare(&ns)?;
        let (ns2, sched, src2, name, time) = (
            ns.clone(),
            o.schedule.clone(),
            src.clone(),
            newest.name.clone(),
            newest.time,
        );
        blocking(catalog, move |c| {
            c.standby_checked(&ns2, &sched, &src2, Some((&name, time)), None)
        })
        .await?;
        if row.map(|r| r.activated).unwrap_or(false) {
            r.state = "activated".into();
        } else if row.and_then(|r| r.applied_backup.as_deref()) == Some(newest.name.as_str()) {
            r.state = "up-to-date".into();
        } else {
            todo.push((src.clone(), ns.clone()));
        }
        reports.push(r);
    }
    Ok((newest, reports, todo))
}

/// A backup's restore plan as standby applies it: mapped, and with applications held.
async fn held_plan(
    repo: &Arc<Repository>,
    backup: &AppBackup,
    o: &StandbyOptions,
) -> Result<Vec<Planned>, StandbyError> {
    let objects = record::load_objects(repo, backup).await?;
    Ok(record::plan_restore(
        objects,
        &RestorePlanOptions {
            namespaces: o.namespaces.clone(),
            start_applications: false,
            ..Default::default()
        },
    ))
}

/// The restored objects of a plan that belong with site namespace `ns`: its own, and the
/// cluster-scoped ones.
fn for_namespace(plan: &[Planned], ns: &str) -> Vec<Planned> {
    plan.iter()
        .filter(|p| p.skipped.is_none() && p.target.namespace.as_deref().is_none_or(|n| n == ns))
        .cloned()
        .collect()
}

/// One standby cycle on a cluster-directory site. Errors of the bucket are recorded per
/// namespace and returned; what the site holds stays as it was.
pub async fn cycle_cluster_dir(
    repo: &Arc<Repository>,
    site: &ClusterDir,
    catalog: &Arc<Catalog>,
    o: &StandbyOptions,
) -> Result<Vec<NamespaceReport>, StandbyError> {
    let (newest, mut reports, todo) = triage(repo, catalog, o, |ns| {
        // A commit a killed standby left behind is finished first.
        recover(&site.root().join("volumes").join(ns)).map(|_| ())
    })
    .await?;
    if todo.is_empty() {
        return Ok(reports);
    }
    match apply_backup(repo, site, &newest, &todo, o).await {
        Ok(applied) => {
            for (ns, vols, objects) in applied {
                let r = reports
                    .iter_mut()
                    .find(|r| r.namespace == ns)
                    .expect("a report per namespace");
                r.state = "applied".into();
                r.objects_applied = objects;
                let list: Vec<(String, SnapshotId, u64)> = vols
                    .iter()
                    .filter_map(|v: &VolumeReport| {
                        Some((v.pvc.clone(), v.snapshot.parse().ok()?, 0))
                    })
                    .collect();
                r.volumes = vols;
                let (name, time, ns2) = (newest.name.clone(), newest.time, ns.clone());
                blocking(catalog, move |c| {
                    c.standby_applied(&ns2, &name, time, &list)
                })
                .await?;
            }
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(backup = %newest.name, "standby: backup not applied, the site keeps its previous state: {msg}");
            for (src, ns) in &todo {
                let r = reports
                    .iter_mut()
                    .find(|r| &r.namespace == ns)
                    .expect("a report per namespace");
                r.state = "failed".into();
                r.error = Some(msg.clone());
                let (ns2, sched, src2, m) =
                    (ns.clone(), o.schedule.clone(), src.clone(), msg.clone());
                blocking(catalog, move |c| {
                    c.standby_checked(&ns2, &sched, &src2, None, Some(&m))
                })
                .await?;
            }
        }
    }
    Ok(reports)
}

/// Applies one backup to the namespaces `todo` (source, site) of a cluster-directory site:
/// volumes two-phase, then the configuration held.
async fn apply_backup(
    repo: &Arc<Repository>,
    site: &ClusterDir,
    backup: &AppBackup,
    todo: &[(String, String)],
    o: &StandbyOptions,
) -> Result<Vec<(String, Vec<VolumeReport>, usize)>, StandbyError> {
    let index = Arc::new(repo.load_index().await?);
    // Phase 1: stage every volume of every namespace; nothing served changes.
    let mut staged: Vec<(String, Vec<CommitItem>, Vec<VolumeReport>)> = Vec::new();
    let mut result = Ok(());
    'outer: for (src, ns) in todo {
        let mut items = Vec::new();
        let mut reports = Vec::new();
        for v in backup.volumes.iter().filter(|v| &v.namespace == src) {
            let target = volume_path(site.root(), ns, &v.pvc);
            if let Some(d) = target.parent() {
                std::fs::create_dir_all(d).map_err(io(d))?;
            }
            let mut report = VolumeReport {
                namespace: ns.clone(),
                pvc: v.pvc.clone(),
                snapshot: v.snapshot.to_hex(),
                ..Default::default()
            };
            let snap = match repo.load_snapshot(&v.snapshot).await {
                Ok(s) => s,
                Err(e) => {
                    result = Err(e.into());
                    break 'outer;
                }
            };
            match prepare_volume(
                repo,
                &index,
                &v.pvc,
                v.snapshot,
                &snap,
                &target,
                &Stage::beside(&target),
                &mut report,
            )
            .await
            {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break 'outer;
                }
            }
            reports.push(report);
            failpoint("standby-after-prepare-volume");
        }
        staged.push((ns.clone(), items, reports));
    }
    if let Err(e) = result {
        // Discard every staged file: the site stays as it was.
        for (_, items, _) in &staged {
            for i in items.iter().filter(|i| i.kind != "record") {
                let _ = std::fs::remove_file(&i.staged);
            }
        }
        for (_, ns) in todo {
            recover(&site.root().join("volumes").join(ns))?;
        }
        return Err(e);
    }
    // Phase 2: commit each namespace's volumes, then its configuration.
    let plan = held_plan(repo, backup, o).await?;
    let mut out = Vec::new();
    for (ns, items, reports) in staged {
        let dir = site.root().join("volumes").join(&ns);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        commit(&dir, &backup.name, items)?;
        let mine = for_namespace(&plan, &ns);
        let results = record::apply_to_cluster_dir(site, &mine, ExistingPolicy::Update)?;
        let n = results
            .iter()
            .filter(|r| r.outcome != Outcome::Failed)
            .count();
        out.push((ns, reports, n));
    }
    Ok(out)
}

/// One standby cycle on a live site: the claims standby wrote move to the new backup in
/// place (one standby Job per namespace, see [`apply_devices`]), each claim new to the site
/// is created and written by a restore Job, and then the configuration is applied held
/// (server-side apply, existing objects updated, existing claims left as they are).
pub async fn cycle_live(
    repo: &Arc<Repository>,
    live: &crate::k8s::live::LiveCluster,
    catalog: &Arc<Catalog>,
    o: &StandbyOptions,
    movers: crate::k8s::csi::MoverSettings,
) -> Result<Vec<NamespaceReport>, StandbyError> {
    let (newest, mut reports, mut todo) = triage(repo, catalog, o, |_| Ok(())).await?;
    // Activation is also recorded on the namespace itself, so that a standby that lost its
    // catalog (a restarted pod) never holds an application that was failed over to.
    let mut activated = Vec::new();
    for (_, ns) in &todo {
        if live.namespace_annotation(ns, ACTIVATED).await?.as_deref() == Some("true") {
            activated.push(ns.clone());
        }
    }
    for ns in activated {
        tracing::warn!(namespace = %ns, "the namespace is marked activated on the site: left alone");
        todo.retain(|(_, n)| *n != ns);
        if let Some(r) = reports.iter_mut().find(|r| r.namespace == ns) {
            r.state = "activated".into();
        }
        let n = ns.clone();
        blocking(catalog, move |c| c.set_activated(&n, true).map(|_| ())).await?;
    }
    if todo.is_empty() {
        return Ok(reports);
    }
    // Read and planned once for every namespace of the backup; a failure is each one's.
    let plan = held_plan(repo, &newest, o).await.map_err(|e| e.to_string());
    for (src, ns) in &todo {
        let r = reports
            .iter_mut()
            .find(|r| &r.namespace == ns)
            .expect("a report per namespace");
        let applied = async {
            let plan = plan.as_ref().map_err(|e| StandbyError::Failed(e.clone()))?;
            let mut plan = for_namespace(plan, ns);
            let mut only = newest.clone();
            only.volumes.retain(|v| &v.namespace == src);
            let updated = update_live_claims(
                repo,
                live,
                &movers,
                &newest.name,
                ns,
                &only,
                o.overwrite_claims,
            )
            .await?;
            let (vols, created) = crate::app::volumes::restore_volumes_live(
                live,
                movers.clone(),
                &only,
                &mut plan,
                true,
            )
            .await;
            if let Some(f) = vols.iter().find(|v| v.outcome == Outcome::Failed) {
                return Err(StandbyError::Io {
                    path: f.r.display(),
                    source: std::io::Error::other(f.detail.clone()),
                });
            }
            // Claims created here are not applied again, and claims that exist are left as
            // they are (bound, their spec immutable).
            let items: Vec<crate::k8s::source::ApplyItem> = plan
                .iter()
                .filter(|p| !created.contains(&p.target))
                .filter(|p| {
                    !vols
                        .iter()
                        .any(|v| v.r == p.target && v.outcome == Outcome::Skipped)
                })
                .map(Planned::apply_item)
                .collect();
            let results = live
                .apply(
                    &items,
                    ExistingPolicy::Update,
                    std::time::Duration::from_secs(120),
                )
                .await?;
            if let Some(f) = results.iter().find(|x| x.outcome == Outcome::Failed) {
                return Err(StandbyError::Io {
                    path: f.r.display(),
                    source: std::io::Error::other(f.detail.clone()),
                });
            }
            let mut volumes: Vec<VolumeReport> = vols
                .iter()
                .filter(|v| !updated.iter().any(|u| u.pvc == v.r.name))
                .map(|v| VolumeReport {
                    namespace: ns.clone(),
                    pvc: v.r.name.clone(),
                    snapshot: only
                        .volumes
                        .iter()
                        .find(|b| b.pvc == v.r.name)
                        .map(|b| b.snapshot.to_hex())
                        .unwrap_or_default(),
                    mode: match v.outcome {
                        Outcome::Created => "full".into(),
                        _ => format!("{:?}", v.outcome).to_lowercase(),
                    },
                    ..Default::default()
                })
                .collect();
            volumes.extend(updated);
            Ok::<_, StandbyError>((volumes, results.len()))
        }
        .await;
        match applied {
            Ok((volumes, n)) => {
                r.state = "applied".into();
                r.volumes = volumes;
                r.objects_applied = n;
                let (ns2, name, time) = (ns.clone(), newest.name.clone(), newest.time);
                blocking(catalog, move |c| c.standby_applied(&ns2, &name, time, &[])).await?;
            }
            Err(e) => {
                let msg = e.to_string();
                r.state = "failed".into();
                r.error = Some(msg.clone());
                let (ns2, sched, src2) = (ns.clone(), o.schedule.clone(), src.clone());
                blocking(catalog, move |c| {
                    c.standby_checked(&ns2, &sched, &src2, None, Some(&msg))
                })
                .await?;
            }
        }
    }
    Ok(reports)
}

/// The claims of a backup that exist on a live site: those standby wrote (annotated with the
/// snapshot they hold) move to the backup's snapshots together in one standby Job, by the
/// block-map difference. A claim standby did not write fails the namespace (its data is not
/// overwritten), unless `overwrite` says to write it whole, journaled as well.
async fn update_live_claims(
    repo: &Arc<Repository>,
    live: &crate::k8s::live::LiveCluster,
    movers: &crate::k8s::csi::MoverSettings,
    backup: &str,
    ns: &str,
    only: &AppBackup,
    overwrite: bool,
) -> Result<Vec<VolumeReport>, StandbyError> {
    let csi = live.csi(movers.clone());
    let index = repo.load_index().await?;
    let mut reports = Vec::new();
    let mut todo = Vec::new();
    let mut journal_bytes = 0;
    for v in &only.volumes {
        let Some(claim) = csi.site_claim(ns, &v.pvc).await? else {
            continue; // new to the site: written whole by a restore Job
        };
        let mut report = VolumeReport {
            namespace: ns.to_string(),
            pvc: v.pvc.clone(),
            snapshot: v.snapshot.to_hex(),
            ..Default::default()
        };
        let holds = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::k8s::csi::STANDBY_SNAPSHOT))
            .cloned();
        // Standby's again after `deactivate`, content unknown: written whole.
        let holds = holds.filter(|h| h != WHOLE);
        let owned = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::k8s::csi::STANDBY_SNAPSHOT))
            .is_some();
        let Some(holds) = holds else {
            if !overwrite && !owned {
                return Err(StandbyError::Failed(format!(
                    "claim {ns}/{} exists on the site and standby did not write it: its data is not overwritten; delete the claim, or run standby with --overwrite-claims (failback onto a repaired primary)",
                    v.pvc
                )));
            }
            let new = repo.load_snapshot(&v.snapshot).await?;
            journal_bytes += new.size + 13 * new.blocks();
            report.mode = "full".into();
            reports.push(report);
            todo.push(crate::k8s::csi::StandbyClaim {
                name: v.pvc.clone(),
                snapshot: v.snapshot.to_hex(),
                base: None,
            });
            continue;
        };
        if holds == v.snapshot.to_hex() {
            report.mode = "unchanged".into();
            reports.push(report);
            // Still given to the Job, should there be one: a commit an earlier Job left may
            // name it.
            todo.push(crate::k8s::csi::StandbyClaim {
                name: v.pvc.clone(),
                snapshot: holds.clone(),
                base: Some(holds),
            });
            continue;
        }
        let base_id: SnapshotId = holds.parse().map_err(|e| {
            StandbyError::Failed(format!(
                "claim {ns}/{}: annotation {} = `{holds}` is not a snapshot id: {e}",
                v.pvc,
                crate::k8s::csi::STANDBY_SNAPSHOT
            ))
        })?;
        let base = repo.load_snapshot(&base_id).await.map_err(|e| {
            StandbyError::Failed(format!(
                "claim {ns}/{} holds snapshot {}, which cannot be read ({e}); delete the claim to have standby write it whole",
                v.pvc,
                base_id.short()
            ))
        })?;
        let new = repo.load_snapshot(&v.snapshot).await?;
        journal_bytes += delta_bytes(repo, &index, &base, &new).await?;
        report.mode = "delta".into();
        reports.push(report);
        todo.push(crate::k8s::csi::StandbyClaim {
            name: v.pvc.clone(),
            snapshot: v.snapshot.to_hex(),
            base: Some(holds),
        });
    }
    if reports
        .iter()
        .any(|r| r.mode == "delta" || r.mode == "full")
    {
        for a in csi.update_claims(ns, backup, &todo, journal_bytes).await? {
            if let Some(r) = reports.iter_mut().find(|r| r.pvc == a.pvc) {
                r.mode = a.mode;
                r.blocks_changed = a.blocks_changed;
                r.bytes_fetched = a.bytes_fetched;
                r.bytes_written = a.bytes_written;
            }
        }
    }
    Ok(reports)
}

/// After `activate` on a live site the application changes its claims' data: their standby
/// annotations and the namespace's journal claim (whose records would be stale) go.
pub async fn forget_live_claims(
    live: &crate::k8s::live::LiveCluster,
    ns: &str,
) -> Result<(), StandbyError> {
    let csi = live.csi(Default::default());
    for name in csi.annotated_claims(ns).await? {
        csi.mark_claim(ns, &name, None).await?;
    }
    csi.remove_journal_claim(ns).await?;
    Ok(())
}

/// `deactivate` of a namespace standby had applied, on a live site: every claim of it is
/// standby's again with unknown content (annotated [`WHOLE`]), so the next cycle writes
/// each whole, journaled.
pub async fn claim_live_claims(
    live: &crate::k8s::live::LiveCluster,
    ns: &str,
) -> Result<(), StandbyError> {
    let csi = live.csi(Default::default());
    for name in csi.claims_of_namespace(ns).await? {
        csi.mark_claim(ns, &name, Some(WHOLE)).await?;
    }
    Ok(())
}

/// The annotation of a live namespace that was activated (failed over to): standby leaves it
/// alone whatever its catalog says.
pub const ACTIVATED: &str = "lifeboat.dev/activated";

/// The standby annotation of a claim that standby owns but whose content is unknown.
pub const WHOLE: &str = "whole";

/// `activate` on a cluster-directory site: the records of what the namespace's volume files
/// hold go (the application changes them now); after `deactivate` standby writes them anew.
pub fn forget_applied_cluster_dir(site: &ClusterDir, ns: &str) -> Result<(), StandbyError> {
    let dir = site.root().join("volumes").join(ns);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with(APPLIED_SUFFIX) {
            std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
        }
    }
    Ok(())
}

/// Starts (or stops) the applications of a namespace of a cluster directory: recorded replica
/// counts back and CronJobs resumed (or: 0 replicas with the counts recorded, CronJobs
/// suspended). Idempotent: a second call changes nothing.
pub fn set_running_cluster_dir(
    site: &ClusterDir,
    namespace: &str,
    run: bool,
) -> Result<Vec<Change>, StandbyError> {
    let objects = site.load()?;
    let mut changed = Vec::new();
    let mut changes = Vec::new();
    for e in objects
        .into_iter()
        .filter(|e| e.r.namespace.as_deref() == Some(namespace))
    {
        let (r, mut v) = (e.r, e.value);
        if let Some(c) = change_of(&r, &mut v, run) {
            changes.push(c);
            changed.push((r, v));
        }
    }
    site.apply(&changed, ExistingPolicy::Update)?;
    Ok(changes)
}

/// `drill`: what the scratch restore proved.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub backup: String,
    pub namespace: String,
    pub into: String,
    #[serde(with = "time::serde::rfc3339")]
    pub backup_time: OffsetDateTime,
    pub objects_restored: usize,
    pub objects_verified: usize,
    pub volumes: Vec<DrillVolume>,
    /// Seconds from the start of the drill until everything was restored and verified.
    pub rto_seconds: f64,
    /// How old the data was: backup time to the drill's start.
    pub rpo_seconds: f64,
    pub removed: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillVolume {
    pub pvc: String,
    pub snapshot: String,
    pub bytes: u64,
    pub blocks_verified: u64,
    pub verified: bool,
}

/// A drill's restore plan: namespace `ns` of `backup` mapped to `into`, applications started.
async fn drill_plan(
    repo: &Arc<Repository>,
    backup: &AppBackup,
    ns: &str,
    into: &str,
) -> Result<Vec<Planned>, StandbyError> {
    let mapping = Mapping([(ns.to_string(), into.to_string())].into());
    let objects = record::load_objects(repo, backup).await?;
    Ok(record::plan_restore(
        objects,
        &RestorePlanOptions {
            namespaces: mapping,
            start_applications: true,
            ..Default::default()
        },
    )
    .into_iter()
    .filter(|p| p.skipped.is_none() && p.target.namespace.as_deref() == Some(into))
    .collect())
}

/// A non-disruptive test of the DR site: restores `backup` (namespace `ns`) into a scratch
/// namespace `into` of the site, verifies every volume block by block against the snapshot's
/// keyed hashes and every object against the backup, measures the time to ready, and removes
/// the scratch namespace again when asked. Standby's namespaces are not touched.
pub async fn drill_cluster_dir(
    repo: &Arc<Repository>,
    site: &ClusterDir,
    backup: &AppBackup,
    ns: &str,
    into: &str,
    remove: bool,
) -> Result<DrillReport, StandbyError> {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    let plan = drill_plan(repo, backup, ns, into).await?;
    let vols = crate::app::volumes::restore_volumes_to_dir(
        repo.clone(),
        backup,
        &plan,
        site.root(),
        ExistingPolicy::Update,
    )
    .await;
    if let Some(f) = vols.iter().find(|r| r.outcome == Outcome::Failed) {
        return Err(StandbyError::Io {
            path: f.detail.clone(),
            source: std::io::Error::other("volume restore failed"),
        });
    }
    let results = record::apply_to_cluster_dir(site, &plan, ExistingPolicy::Update)?;
    let mut report = DrillReport {
        backup: backup.name.clone(),
        namespace: ns.into(),
        into: into.into(),
        backup_time: backup.time,
        objects_restored: results.len(),
        objects_verified: 0,
        volumes: Vec::new(),
        rto_seconds: 0.0,
        rpo_seconds: 0.0,
        removed: false,
    };
    // Objects: what the site now holds is what the plan said.
    let held: HashMap<ObjRef, Value> = site.load()?.into_iter().map(|e| (e.r, e.value)).collect();
    report.objects_verified = plan
        .iter()
        .filter(|p| held.get(&p.target) == Some(&p.value))
        .count();
    // Volumes: every block's keyed hash against the snapshot's map.
    let index = Arc::new(repo.load_index().await?);
    for v in backup.volumes.iter().filter(|v| v.namespace == ns) {
        let snap = repo.load_snapshot(&v.snapshot).await?;
        let path = volume_path(site.root(), into, &v.pvc);
        let mut dv = DrillVolume {
            pvc: v.pvc.clone(),
            snapshot: v.snapshot.to_hex(),
            bytes: snap.size,
            ..Default::default()
        };
        let (ok, n) = verify_volume(repo, &index, &snap, &path).await?;
        dv.blocks_verified = n;
        dv.verified = ok;
        report.volumes.push(dv);
    }
    report.rto_seconds = started.elapsed().as_secs_f64();
    report.rpo_seconds = (now - backup.time).as_seconds_f64().max(0.0);
    if remove {
        remove_namespace(site, into)?;
        report.removed = true;
    }
    Ok(report)
}

/// Whether a cluster's object holds everything a planned object says (pure): every field of
/// `planned` is in `live` with the same value; lists item by item, as the server may add
/// defaults inside them. Server-kept fields (`status`, uid, resourceVersion, …) are not
/// compared.
pub fn holds(live: &Value, planned: &Value) -> bool {
    fn within(live: &Value, planned: &Value) -> bool {
        match (live, planned) {
            (Value::Object(l), Value::Object(p)) => p
                .iter()
                .all(|(k, v)| l.get(k).is_some_and(|lv| within(lv, v))),
            (Value::Array(l), Value::Array(p)) => {
                l.len() == p.len() && l.iter().zip(p).all(|(a, b)| within(a, b))
            }
            (l, p) => l == p,
        }
    }
    let mut planned = planned.clone();
    if let Some(o) = planned.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = planned.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    within(live, &planned)
}

/// The live form of [`drill_cluster_dir`]: restores `backup` (namespace `ns`) into the new
/// namespace `into` of a live site, the data first (restore Jobs), verifies every volume
/// against its snapshot (verify Jobs) before anything mounts it, applies the objects with
/// the applications started, waits until every Deployment and StatefulSet is ready (the RTO
/// measured), checks every object against the plan, and deletes `into` when asked. `into`
/// must not exist: a drill never writes over a namespace.
#[allow(clippy::too_many_arguments)]
pub async fn drill_live(
    repo: &Arc<Repository>,
    live: &crate::k8s::live::LiveCluster,
    movers: crate::k8s::csi::MoverSettings,
    backup: &AppBackup,
    ns: &str,
    into: &str,
    remove: bool,
) -> Result<DrillReport, StandbyError> {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    if live.namespace_exists(into).await? {
        return Err(StandbyError::Failed(format!(
            "namespace {into} exists on the site; a drill restores into a new namespace: remove it, or pick another --into"
        )));
    }
    let timeout = movers.timeout;
    let poll = movers.poll;
    let csi = live.csi(movers.clone());
    let mut plan = drill_plan(repo, backup, ns, into).await?;
    let mut only = backup.clone();
    only.volumes.retain(|v| v.namespace == ns);
    let (vols, created) =
        crate::app::volumes::restore_volumes_live(live, movers, &only, &mut plan, false).await;
    if let Some(f) = vols.iter().find(|r| r.outcome == Outcome::Failed) {
        return Err(StandbyError::Failed(format!(
            "{}: {}",
            f.r.display(),
            f.detail
        )));
    }
    // Every volume against its snapshot, before a workload can mount and change it.
    let mut report = DrillReport {
        backup: backup.name.clone(),
        namespace: ns.into(),
        into: into.into(),
        backup_time: backup.time,
        objects_restored: 0,
        objects_verified: 0,
        volumes: Vec::new(),
        rto_seconds: 0.0,
        rpo_seconds: 0.0,
        removed: false,
    };
    for v in &only.volumes {
        let snap = repo.load_snapshot(&v.snapshot).await?;
        let claim = plan
            .iter()
            .find(|p| crate::app::volumes::restores_claim(p, v));
        let target = match claim {
            Some(p) if created.contains(&p.target) => {
                crate::k8s::csi::VerifyTarget::Claim(&p.target.name)
            }
            Some(p) => match p.value.pointer("/spec/volumeName").and_then(Value::as_str) {
                Some(pv) => crate::k8s::csi::VerifyTarget::Volume {
                    pv,
                    for_claim: &p.target.name,
                },
                None => crate::k8s::csi::VerifyTarget::Claim(&p.target.name),
            },
            None => continue,
        };
        let (verified, n) = csi
            .verify_restored(into, target, &v.snapshot.to_hex())
            .await?;
        report.volumes.push(DrillVolume {
            pvc: v.pvc.clone(),
            snapshot: v.snapshot.to_hex(),
            bytes: snap.size,
            blocks_verified: n,
            verified,
        });
    }
    let items: Vec<crate::k8s::source::ApplyItem> = plan
        .iter()
        .filter(|p| !created.contains(&p.target))
        .map(Planned::apply_item)
        .collect();
    let results = live
        .apply(
            &items,
            ExistingPolicy::Update,
            std::time::Duration::from_secs(120),
        )
        .await?;
    report.objects_restored = results.len() + created.len();
    // Time to ready: the applications up.
    let deadline = tokio::time::Instant::now() + timeout;
    while !live.workloads_ready(into).await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(StandbyError::Failed(format!(
                "the workloads of namespace {into} were not ready within {timeout:?}; the drill's namespace is left for a look (kubectl -n {into} get pods)"
            )));
        }
        tokio::time::sleep(poll).await;
    }
    report.rto_seconds = started.elapsed().as_secs_f64();
    let refs: Vec<ObjRef> = plan.iter().map(|p| p.target.clone()).collect();
    let found = live.values(&refs).await?;
    report.objects_verified = plan
        .iter()
        .zip(&found)
        .filter(|(p, f)| f.as_ref().is_some_and(|f| holds(f, &p.value)))
        .count();
    report.rpo_seconds = (now - backup.time).as_seconds_f64().max(0.0);
    if remove {
        live.remove_namespace(into).await?;
        report.removed = true;
    }
    Ok(report)
}

/// Checks a volume (an image file, or a block device at least as large) block by block
/// against a snapshot: each block's keyed hash, or zeros, as the block map says. Returns
/// whether all matched, and how many blocks did before the first that did not.
pub async fn verify_volume(
    repo: &Repository,
    index: &Index,
    snap: &Snapshot,
    path: &Path,
) -> Result<(bool, u64), StandbyError> {
    let size_ok = match File::open(path) {
        Ok(f) => {
            let is_file = f.metadata().map(|m| m.is_file()).unwrap_or(false);
            let len = crate::volume::backup::source_size(&f).unwrap_or(0);
            if is_file {
                len == snap.size
            } else {
                len >= snap.size
            }
        }
        Err(_) => false,
    };
    if !size_ok {
        return Ok((false, 0));
    }
    let chunk = snap.chunk_size as u64;
    let mut verified = 0;
    for seg in 0..snap.map.len() {
        let entries = map_segment(repo, index, snap, seg).await?;
        let (p, keys, first, size) = (
            path.to_path_buf(),
            repo.keys().clone(),
            seg as u64 * MAP_SEGMENT_ENTRIES as u64,
            snap.size,
        );
        let (good, n) = crate::repository::cpu(move || -> std::io::Result<(bool, u64)> {
            let f = File::open(&p)?;
            let mut buf = vec![0u8; chunk as usize];
            let mut n = 0;
            for (i, e) in entries.iter().enumerate() {
                let b = first + i as u64;
                let (s, end) = (b * chunk, ((b + 1) * chunk).min(size));
                let cur = &mut buf[..(end - s) as usize];
                f.read_exact_at(cur, s)?;
                let same = match e {
                    BlockRef::Zero => crate::volume::backup::is_zero(cur),
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
        .map_err(io(path))?;
        verified += n;
        if !good {
            return Ok((false, verified));
        }
    }
    Ok((true, verified))
}

/// Removes a namespace's objects and volumes from a cluster directory.
pub fn remove_namespace(site: &ClusterDir, ns: &str) -> Result<(), StandbyError> {
    for dir in [
        site.root().join("resources").join(ns),
        site.root().join("volumes").join(ns),
    ] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    // Objects of the namespace written elsewhere in the directory, and the Namespace itself.
    let objs = site.load()?;
    for e in objs {
        let of_ns =
            e.r.namespace.as_deref() == Some(ns) || (e.r.kind == "Namespace" && e.r.name == ns);
        if of_ns && !e.origin.is_empty() {
            let _ = std::fs::remove_file(&e.origin);
        }
    }
    Ok(())
}

/// For status listings: age of an RFC 3339 time.
pub fn age_seconds(t: Option<&str>, now: OffsetDateTime) -> Option<f64> {
    t.and_then(crate::scheduler::catalog::parse_time)
        .map(|t| (now - t).as_seconds_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_volumes_parse_and_bad_ones_are_named() {
        let id = SnapshotId([7; 32]).to_hex();
        let v: DeviceVolume = format!("data=/dev/lifeboat-0={id}").parse().unwrap();
        assert_eq!((v.pvc.as_str(), v.base), ("data", None));
        let v: DeviceVolume = format!("data=/dev/x={id}={id}").parse().unwrap();
        assert_eq!(v.base, Some(SnapshotId([7; 32])));
        for bad in ["data=/dev/x", "=/dev/x=ab", "data=/dev/x=nothex"] {
            let e = bad.parse::<DeviceVolume>().unwrap_err();
            assert!(e.contains(bad) || e.contains("nothex"), "{e}");
        }
    }
    use crate::format::BlobId;
    use proptest::prelude::*;

    #[test]
    fn journals_replay_idempotently_and_refuse_damage() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("v.img");
        std::fs::write(&target, vec![1u8; 4096]).unwrap();
        let staged = with_suffix(&target, JOURNAL_SUFFIX);
        let mut j = Journal::create(&staged).unwrap();
        j.entry(0, 4, Some(b"abcd")).unwrap();
        j.entry(1024, 512, None).unwrap();
        j.file.sync_all().unwrap();
        let item = CommitItem {
            pvc: "v".into(),
            target: target.clone(),
            kind: "journal".into(),
            staged: staged.clone(),
            snapshot: SnapshotId([7; 32]),
            size: 8192,
            hash: Some(j.hasher.finalize().to_hex().to_string()),
            record: None,
        };
        for _ in 0..2 {
            replay(&item).unwrap();
            let v = std::fs::read(&target).unwrap();
            assert_eq!(&v[..4], b"abcd");
            assert!(v[1024..1536].iter().all(|&b| b == 0));
            assert_eq!(v[1536], 1);
            assert_eq!(v.len(), 8192);
        }
        assert_eq!(read_applied(&target).unwrap().snapshot, SnapshotId([7; 32]));
        let mut bytes = std::fs::read(&staged).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&staged, bytes).unwrap();
        assert!(matches!(
            replay(&item),
            Err(StandbyError::BadJournal { .. })
        ));
    }

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
