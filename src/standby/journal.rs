//! The two-phase switch's files: takes the volumes phase 1 staged (journals written through
//! [`Journal`], new files, records) and gives the commit (the marker written atomically, each
//! item replayed, the marker then the journals removed) and [`recover`], which finishes a
//! committed marker or discards what was never committed. The layout of every file is in
//! [`crate::format::standby`].
//!
//! Must not write a byte from a journal whose hash differs from its marker's, nor hold a
//! runtime thread: commit and recovery run on the blocking pool, and replay streams the
//! journal through bounded buffers (a journal may be as large as its volume).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{io, StandbyError};
use crate::format::standby::{
    with_suffix, Applied, CommitItem, CommitKind, CommitMarker, JournalEntry, APPLIED_SUFFIX,
    COMMIT_FILE, JOURNAL_ENTRY_HEAD, JOURNAL_MAGIC, JOURNAL_SUFFIX, NEW_SUFFIX, PARTIAL_SUFFIX,
};
use crate::util::blocking;

/// Bytes a replay reads (and writes) at a time.
const REPLAY_BUF: usize = 1 << 20;

/// What the volume file at `volume` holds, by the record beside it.
pub fn read_applied(volume: &Path) -> Option<Applied> {
    read_record(&with_suffix(volume, APPLIED_SUFFIX))
}

pub(super) fn read_record(path: &Path) -> Option<Applied> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
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

fn write_marker(path: &Path, marker: &CommitMarker) -> Result<(), StandbyError> {
    write_atomic(
        path,
        &serde_json::to_vec_pretty(marker).expect("serialises"),
    )
}

/// The commit marker at `path`, if there is one.
fn read_marker(path: &Path) -> Result<Option<CommitMarker>, StandbyError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StandbyError::BadJournal {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// An appendable journal (see [`crate::format::standby`]): the magic, then entries.
pub(super) struct Journal {
    file: File,
    hasher: blake3::Hasher,
    pos: u64,
}

impl Journal {
    pub(super) fn create(path: &Path) -> std::io::Result<Journal> {
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

    /// `len` bytes at `offset` of the target: `data`, or zeros when None.
    pub(super) fn entry(
        &mut self,
        offset: u64,
        len: u32,
        data: Option<&[u8]>,
    ) -> std::io::Result<()> {
        let head = JournalEntry {
            offset,
            len,
            data: data.is_some(),
        };
        self.append(&head.encode())?;
        if let Some(d) = data {
            self.append(d)?;
        }
        Ok(())
    }

    /// Syncs the journal; returns its hash (hex), for the commit marker.
    pub(super) fn finish(self) -> std::io::Result<String> {
        self.file.sync_all()?;
        Ok(self.hasher.finalize().to_hex().to_string())
    }
}

/// Reads until `buf` is full or the end; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Replays a committed item into its target (idempotent), then records what it holds.
/// Returns the bytes written.
fn replay(item: &CommitItem) -> Result<u64, StandbyError> {
    let written = match item.kind {
        // Nothing to write: the content is the same.
        CommitKind::Record => 0,
        CommitKind::New => {
            if item.staged.exists() {
                std::fs::rename(&item.staged, &item.target).map_err(io(&item.target))?;
            }
            0
        }
        CommitKind::Journal => match File::open(&item.staged) {
            Ok(journal) => replay_journal(item, journal)?,
            // Replayed and removed already: the target holds it.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && read_record(&item.record_path()).map(|a| a.snapshot)
                        == Some(item.snapshot) =>
            {
                0
            }
            Err(e) => return Err(io(&item.staged)(e)),
        },
    };
    write_applied(item)?;
    Ok(written)
}

/// The journal's hash against the marker's first (read through once), then its entries
/// into the target, one bounded read at a time.
fn replay_journal(item: &CommitItem, mut journal: File) -> Result<u64, StandbyError> {
    let bad = |reason: &str| StandbyError::BadJournal {
        path: item.staged.display().to_string(),
        reason: reason.into(),
    };
    let mut buf = vec![0u8; REPLAY_BUF];
    let mut hasher = blake3::Hasher::new();
    loop {
        let n = read_full(&mut journal, &mut buf).map_err(io(&item.staged))?;
        hasher.update(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    if Some(hasher.finalize().to_hex().to_string()) != item.hash {
        return Err(bad("its hash does not match the commit marker"));
    }
    journal.seek(SeekFrom::Start(0)).map_err(io(&item.staged))?;
    let mut r = BufReader::with_capacity(64 << 10, journal);
    let mut magic = [0u8; 8];
    let n = read_full(&mut r, &mut magic).map_err(io(&item.staged))?;
    if n < magic.len() || &magic != JOURNAL_MAGIC {
        return Err(bad("bad magic"));
    }
    let target = OpenOptions::new()
        .write(true)
        .open(&item.target)
        .map_err(io(&item.target))?;
    let mut written = 0u64;
    loop {
        let mut head = [0u8; JOURNAL_ENTRY_HEAD];
        match read_full(&mut r, &mut head).map_err(io(&item.staged))? {
            0 => break,
            n if n < head.len() => return Err(bad("truncated entry")),
            _ => {}
        }
        let e = JournalEntry::decode(&head);
        let mut done = 0u64;
        while done < e.len as u64 {
            let piece = (e.len as u64 - done).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..piece];
            if e.data {
                if read_full(&mut r, chunk).map_err(io(&item.staged))? < piece {
                    return Err(bad("truncated data"));
                }
            } else {
                chunk.fill(0);
            }
            target
                .write_all_at(chunk, e.offset + done)
                .map_err(io(&item.target))?;
            done += piece as u64;
        }
        if written == 0 {
            failpoint("standby-mid-replay"); // one entry of the journal written, not the rest
        }
        written += e.len as u64;
    }
    // A file takes the snapshot's size; a block device has its own.
    if target.metadata().map(|m| m.is_file()).unwrap_or(false) {
        target.set_len(item.size).map_err(io(&item.target))?;
    }
    target.sync_all().map_err(io(&item.target))?;
    Ok(written)
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

/// Finishes (or discards) what an earlier standby left in a namespace's volume directory (or
/// a live site's journal directory). Returns the backup of a commit it finished.
pub async fn recover(dir: &Path) -> Result<Option<String>, StandbyError> {
    let dir = dir.to_path_buf();
    blocking(move || recover_now(&dir)).await
}

fn recover_now(dir: &Path) -> Result<Option<String>, StandbyError> {
    let marker = dir.join(COMMIT_FILE);
    let mut finished = None;
    if let Some(m) = read_marker(&marker)? {
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
            if [JOURNAL_SUFFIX, NEW_SUFFIX, PARTIAL_SUFFIX]
                .iter()
                .any(|s| name.ends_with(s))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(finished)
}

/// Phase 2 for the staged volumes of one namespace: the commit marker in `dir`, atomically,
/// then each item replayed, then the marker removed, then the journals.
pub(super) async fn commit(
    dir: &Path,
    backup: &str,
    items: Vec<CommitItem>,
) -> Result<(), StandbyError> {
    let marker = CommitMarker {
        backup: backup.to_string(),
        items,
    };
    let m = dir.join(COMMIT_FILE);
    blocking(move || {
        write_marker(&m, &marker)?;
        failpoint("standby-after-commit");
        for item in &marker.items {
            replay(item)?;
            failpoint("standby-after-replay");
        }
        std::fs::remove_file(&m).map_err(io(&m))?;
        failpoint("standby-after-marker-removed");
        // Replayed: a journal left now would only take space until the next cycle.
        for i in marker
            .items
            .iter()
            .filter(|i| i.kind == CommitKind::Journal)
        {
            let _ = std::fs::remove_file(&i.staged);
        }
        Ok(())
    })
    .await
}

/// Removes what phase 1 staged for `items` (their journals and new files): a backup that is
/// not committed leaves the site as it was.
pub(super) async fn discard(items: Vec<CommitItem>) {
    blocking(move || {
        for i in items.iter().filter(|i| i.kind != CommitKind::Record) {
            let _ = std::fs::remove_file(&i.staged);
        }
    })
    .await
}

/// A commit marker left in `dir` by an earlier standby Job names its devices by that Job's
/// paths: `target` gives this Job's device of each claim, and the marker is rewritten before
/// it is replayed. A claim it names that `target` does not know stops the Job.
pub(super) async fn retarget_marker(
    dir: &Path,
    target: impl Fn(&str) -> Option<PathBuf> + Send + 'static,
) -> Result<(), StandbyError> {
    let m = dir.join(COMMIT_FILE);
    blocking(move || {
        let Some(mut marker) = read_marker(&m)? else {
            return Ok(());
        };
        for item in &mut marker.items {
            let Some(device) = target(&item.pvc) else {
                return Err(StandbyError::Failed(format!(
                    "the commit marker {} of backup {} names claim {}, which this Job was not given; run it with every claim of the namespace",
                    m.display(),
                    marker.backup,
                    item.pvc
                )));
            };
            item.target = device;
        }
        write_marker(&m, &marker)
    })
    .await
}

/// Failure injection for tests: `LIFEBOAT_FAILPOINT=<name>` makes the process exit at that
/// point, as a kill would. Every failpoint is also a step of the apply:
/// `LIFEBOAT_FAILPOINT=standby-step-<n>` exits at the n-th (from 1) step this process reaches,
/// so that a test can kill an apply at each of its steps in turn.
pub(super) fn failpoint(name: &str) {
    static STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let step = STEPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let Ok(wanted) = std::env::var("LIFEBOAT_FAILPOINT") else {
        return;
    };
    if wanted == name || wanted == format!("standby-step-{step}") {
        eprintln!("failpoint {name} (step {step}): exiting");
        std::process::exit(99);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SnapshotId;

    fn journal_item(target: &Path, staged: &Path, j: Journal, size: u64) -> CommitItem {
        item_with_hash(target, staged, j.finish().unwrap(), size)
    }

    fn item_with_hash(target: &Path, staged: &Path, hash: String, size: u64) -> CommitItem {
        CommitItem {
            pvc: "v".into(),
            target: target.into(),
            kind: CommitKind::Journal,
            staged: staged.into(),
            snapshot: SnapshotId([7; 32]),
            size,
            hash: Some(hash),
            record: None,
        }
    }

    #[test]
    fn journals_replay_idempotently_and_refuse_damage() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("v.img");
        std::fs::write(&target, vec![1u8; 4096]).unwrap();
        let staged = with_suffix(&target, JOURNAL_SUFFIX);
        let mut j = Journal::create(&staged).unwrap();
        j.entry(0, 4, Some(b"abcd")).unwrap();
        j.entry(1024, 512, None).unwrap();
        let item = journal_item(&target, &staged, j, 8192);
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

    #[test]
    fn a_journal_larger_than_the_replay_buffer_streams_through_it() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("v.img");
        std::fs::write(&target, []).unwrap();
        let staged = with_suffix(&target, JOURNAL_SUFFIX);
        let big: Vec<u8> = (0..REPLAY_BUF * 2 + 12345)
            .map(|i| (i % 251) as u8)
            .collect();
        let zeros = REPLAY_BUF as u32 * 3 + 7;
        let mut j = Journal::create(&staged).unwrap();
        j.entry(100, big.len() as u32, Some(&big)).unwrap();
        j.entry(big.len() as u64 + 100, zeros, None).unwrap();
        let size = big.len() as u64 + 100 + zeros as u64 + 1;
        let item = journal_item(&target, &staged, j, size);
        assert_eq!(replay(&item).unwrap(), big.len() as u64 + zeros as u64);
        let v = std::fs::read(&target).unwrap();
        assert_eq!(v.len() as u64, size);
        assert_eq!(&v[100..100 + big.len()], &big[..]);
        assert!(v[100 + big.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_journal_cut_short_is_refused_even_with_a_matching_hash() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("v.img");
        std::fs::write(&target, vec![1u8; 64]).unwrap();
        let staged = with_suffix(&target, JOURNAL_SUFFIX);
        for (cut, reason) in [
            (JOURNAL_MAGIC.len() + 5, "truncated entry"),
            (
                JOURNAL_MAGIC.len() + JOURNAL_ENTRY_HEAD + 2,
                "truncated data",
            ),
            (5, "bad magic"),
        ] {
            let mut j = Journal::create(&staged).unwrap();
            j.entry(0, 8, Some(b"abcdefgh")).unwrap();
            drop(j);
            let bytes = std::fs::read(&staged).unwrap()[..cut].to_vec();
            std::fs::write(&staged, &bytes).unwrap();
            let hash = blake3::hash(&bytes).to_hex().to_string();
            let item = item_with_hash(&target, &staged, hash, 64);
            match replay(&item) {
                Err(StandbyError::BadJournal { reason: r, .. }) => assert_eq!(r, reason),
                other => panic!("{cut}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_commit_leaves_only_the_volume_and_its_record() {
        // Before the fix the replayed journal stayed beside its volume until the next cycle.
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("v.img");
        std::fs::write(&target, vec![1u8; 4096]).unwrap();
        let staged = with_suffix(&target, JOURNAL_SUFFIX);
        let mut j = Journal::create(&staged).unwrap();
        j.entry(0, 4, Some(b"abcd")).unwrap();
        let item = journal_item(&target, &staged, j, 4096);
        commit(d.path(), "b-1", vec![item]).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["v.img", "v.img.lifeboat-applied"]);
        assert_eq!(&std::fs::read(&target).unwrap()[..4], b"abcd");
        assert_eq!(recover(d.path()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn recovery_finishes_a_committed_marker_and_discards_the_uncommitted() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("v.img");
        std::fs::write(&target, vec![1u8; 4096]).unwrap();
        let staged = with_suffix(&target, JOURNAL_SUFFIX);
        let mut j = Journal::create(&staged).unwrap();
        j.entry(8, 4, Some(b"wxyz")).unwrap();
        let item = journal_item(&target, &staged, j, 4096);
        let marker = CommitMarker {
            backup: "b-2".into(),
            items: vec![item],
        };
        write_marker(&d.path().join(COMMIT_FILE), &marker).unwrap();
        std::fs::write(d.path().join("w.img.lifeboat-new"), b"never committed").unwrap();
        assert_eq!(recover(d.path()).await.unwrap().as_deref(), Some("b-2"));
        assert_eq!(&std::fs::read(&target).unwrap()[8..12], b"wxyz");
        assert!(!d.path().join(COMMIT_FILE).exists());
        assert!(!staged.exists() && !d.path().join("w.img.lifeboat-new").exists());
    }
}
