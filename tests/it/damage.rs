//! Damage: every kind of stored object truncated, emptied, bit-flipped and removed, one at a
//! time, on a fresh repository each. The table [`ROWS`] says per row which password still
//! opens the repository, what `snapshots` lists, whether the damaged volume still restores,
//! what `repo check` finds (exit 4) and what `repo repair` recovers. In every row that opens,
//! the unaffected snapshot restores bit for bit (`b:latest`) and a new backup works.
//!
//! The repository: volumes `a` and `b` backed up (the damaged object is always one of `a`'s,
//! or the one object of its kind), two passwords (`mine`, `other`), one application backup
//! record naming `b`'s snapshot, one expired lock object left by a killed process.
//! The library on a [`MemoryStore`] for the whole table; the CLI on a local directory for a
//! few rows at the end.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use indicatif::ProgressBar;
use lifeboat::app::record::{list_backups, BackupBuilder};
use lifeboat::demo::generate_image;
use lifeboat::format::{BackedUpVolume, CopyMethod, KdfParams, LockFile, LockKind};
use lifeboat::repository::{CheckOptions, PruneOptions, RepairOptions, Repository};
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::Store;
use lifeboat::volume::restore::{restore_volume, RestoreOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{init_repo, json, keys_under, lb, new_repo, ok, run, tmp, PASSWORD};
use crate::volume::{backup, same};

const OTHER: &[u8] = b"the other password";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Config,
    /// The key object of `mine`, the password the row opens with first.
    OwnKey,
    /// The key object of `other`.
    OtherKey,
    Index,
    Snapshot,
    Pack,
    Lock,
    Record,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Damage {
    /// The first half kept.
    Truncated,
    Emptied,
    /// One bit of the middle byte.
    BitFlipped,
    Removed,
}

/// Which password opens the repository after the damage.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Opens {
    Mine,
    /// Not `mine` (its key is gone); `other` does, and the row goes on with it.
    Other,
    /// Neither: the error names the damaged object.
    No,
}

/// What `repo check` reports (as damage, exit 4).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Finds {
    Nothing,
    /// Already without `--read-data`.
    Structure,
    /// Only with `--read-data`.
    ReadData,
}

/// What is left after `repo repair` (then `prune`): `check --read-data` finds nothing, unless
/// said otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    /// Everything restores, `a` included.
    Whole,
    /// `a`'s snapshot is gone (removed by repair, or was the damaged object); the rest restores
    /// and `a` backs up again.
    LosesA,
    /// Repair leaves it; `repo unlock` removes it.
    Unlock,
    /// Repair leaves it; `repo key remove <the damaged key>` removes it.
    RemoveKey,
    /// Nothing lifeboat does recovers it; check keeps reporting it (exit 4).
    Reported,
    /// Nothing can be run: no password opens.
    NotOpen,
}

struct Row {
    kind: Kind,
    damage: Damage,
    opens: Opens,
    /// Snapshots `snapshots` lists (of 2).
    lists: usize,
    /// Backup records `backup list` shows (of 1).
    records: usize,
    /// `a`'s snapshot restores bit for bit before repair.
    a_restores: bool,
    check: Finds,
    /// What repair reports as lost: snapshots removed, packs unreadable, records removed.
    lost: usize,
    after: After,
}

#[allow(clippy::too_many_arguments)] // one a column of the table
const fn row(
    kind: Kind,
    damage: Damage,
    opens: Opens,
    lists: usize,
    records: usize,
    a_restores: bool,
    check: Finds,
    lost: usize,
    after: After,
) -> Row {
    Row {
        kind,
        damage,
        opens,
        lists,
        records,
        a_restores,
        check,
        lost,
        after,
    }
}

use After::*;
use Damage::*;
use Finds::*;
use Kind::*;
use Opens::*;

#[rustfmt::skip]
const ROWS: &[Row] = &[
    //   kind      damage      opens  lists records a_restores check      lost after
    row(Config,    Truncated,  No,    0, 0, false, Nothing,   0, NotOpen),
    row(Config,    Emptied,    No,    0, 0, false, Nothing,   0, NotOpen),
    row(Config,    BitFlipped, No,    0, 0, false, Nothing,   0, NotOpen),
    row(Config,    Removed,    No,    0, 0, false, Nothing,   0, NotOpen),
    row(OwnKey,    Truncated,  Other, 2, 1, true,  Structure, 0, RemoveKey),
    row(OwnKey,    Emptied,    Other, 2, 1, true,  Structure, 0, RemoveKey),
    row(OwnKey,    BitFlipped, Other, 2, 1, true,  Structure, 0, RemoveKey),
    row(OwnKey,    Removed,    Other, 2, 1, true,  Nothing,   0, Whole),
    row(OtherKey,  Truncated,  Mine,  2, 1, true,  Structure, 0, RemoveKey),
    row(OtherKey,  Emptied,    Mine,  2, 1, true,  Structure, 0, RemoveKey),
    row(OtherKey,  BitFlipped, Mine,  2, 1, true,  Structure, 0, RemoveKey),
    row(OtherKey,  Removed,    Mine,  2, 1, true,  Nothing,   0, Whole),
    // The index is rebuilt from the packs: nothing is lost.
    row(Index,     Truncated,  Mine,  2, 1, false, Structure, 0, Whole),
    row(Index,     Emptied,    Mine,  2, 1, false, Structure, 0, Whole),
    row(Index,     BitFlipped, Mine,  2, 1, false, Structure, 0, Whole),
    row(Index,     Removed,    Mine,  2, 1, false, Structure, 0, Whole),
    // A removed snapshot that no record names is indistinguishable from a forgotten one.
    row(Snapshot,  Truncated,  Mine,  1, 1, false, Structure, 1, LosesA),
    row(Snapshot,  Emptied,    Mine,  1, 1, false, Structure, 1, LosesA),
    row(Snapshot,  BitFlipped, Mine,  1, 1, false, Structure, 1, LosesA),
    row(Snapshot,  Removed,    Mine,  1, 1, false, Nothing,   0, LosesA),
    // A pack cut short loses its trailer: the pack and the snapshot that needs it are lost.
    row(Pack,      Truncated,  Mine,  2, 1, false, Structure, 2, LosesA),
    row(Pack,      Emptied,    Mine,  2, 1, false, Structure, 2, LosesA),
    row(Pack,      BitFlipped, Mine,  2, 1, false, ReadData,  0, Reported),
    row(Pack,      Removed,    Mine,  2, 1, false, Structure, 1, LosesA),
    // A damaged lock is garbage: it blocks nobody.
    row(Lock,      Truncated,  Mine,  2, 1, true,  Structure, 0, Unlock),
    row(Lock,      Emptied,    Mine,  2, 1, true,  Structure, 0, Unlock),
    row(Lock,      BitFlipped, Mine,  2, 1, true,  Structure, 0, Unlock),
    row(Lock,      Removed,    Mine,  2, 1, true,  Nothing,   0, Whole),
    // A damaged record can never be read: repair removes it (its volumes' snapshots stay).
    row(Record,    Truncated,  Mine,  2, 0, true,  Structure, 1, Whole),
    row(Record,    Emptied,    Mine,  2, 0, true,  Structure, 1, Whole),
    row(Record,    BitFlipped, Mine,  2, 0, true,  Structure, 1, Whole),
    row(Record,    Removed,    Mine,  2, 0, true,  Nothing,   0, Whole),
];

fn c() -> CancellationToken {
    CancellationToken::new()
}

/// The repository every row starts from, and the object of each kind to damage.
struct Fixture {
    mem: MemoryStore,
    dir: tempfile::TempDir,
    a_snapshot: String,
    targets: Vec<(Kind, String)>,
}

impl Fixture {
    fn src(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.img"))
    }
}

/// A lock object as a killed process of another host left it, expired.
fn expired_lock() -> Bytes {
    let then = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        - time::Duration::hours(2);
    let lock = LockFile {
        version: lifeboat::format::FORMAT_VERSION,
        kind: LockKind::Shared,
        purpose: "backup".into(),
        hostname: "another-node".into(),
        pid: 1,
        time: then,
        expires: then + time::Duration::minutes(30),
        nonce: "damage".into(),
        process: None,
    };
    Bytes::from(serde_json::to_vec(&lock).unwrap())
}

async fn fixture() -> Fixture {
    let dir = tmp();
    for (name, seed) in [("a", 11), ("b", 12), ("c", 13)] {
        generate_image(&dir.path().join(format!("{name}.img")), 1 << 20, seed).unwrap();
    }
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    let mine = keys_under(&mem, "keys/").await;
    repo.add_key(OTHER, KdfParams::INSECURE_FAST).await.unwrap();
    let other = &keys_under(&mem, "keys/").await - &mine;
    let a = backup(&repo, "a", &dir.path().join("a.img")).await;
    let a_packs = keys_under(&mem, "data/").await;
    let a_index = keys_under(&mem, "index/").await;
    let b = backup(&repo, "b", &dir.path().join("b.img")).await;
    let mut record = BackupBuilder::new(repo.clone(), "app").await.unwrap();
    record.set_volumes(
        vec![BackedUpVolume {
            namespace: "ns".into(),
            pvc: "b".into(),
            snapshot: b.snapshot_id,
            size: 1 << 20,
            method: CopyMethod::Copy,
        }],
        Default::default(),
        0,
    );
    record
        .finish("test", Default::default(), Vec::new())
        .await
        .unwrap();
    let lock = "locks/00000000000000000000000000000000000000000000000000000000000000aa";
    mem.put(lock, expired_lock(), &c()).await.unwrap();
    // The largest of a's packs: its middle byte lies in a blob, not in the trailer.
    let mut sizes = Vec::new();
    for k in &a_packs {
        sizes.push((mem.head(k, &c()).await.unwrap().unwrap(), k.clone()));
    }
    let pack = sizes.into_iter().max().unwrap().1;
    let first = |s: &BTreeSet<String>| s.iter().next().unwrap().clone();
    let targets = vec![
        (Config, "config".to_string()),
        (OwnKey, first(&mine)),
        (OtherKey, first(&other)),
        (Index, first(&a_index)),
        (Snapshot, a.snapshot_id.key()),
        (Pack, pack),
        (Lock, lock.to_string()),
        (Record, first(&keys_under(&mem, "backups/").await)),
    ];
    Fixture {
        mem,
        dir,
        a_snapshot: a.snapshot_id.key(),
        targets,
    }
}

fn damaged(bytes: &[u8], damage: Damage) -> Option<Bytes> {
    match damage {
        Truncated => Some(Bytes::copy_from_slice(&bytes[..bytes.len() / 2])),
        Emptied => Some(Bytes::new()),
        BitFlipped => {
            let mut b = bytes.to_vec();
            let i = b.len() / 2;
            b[i] ^= 0x01;
            Some(Bytes::from(b))
        }
        Removed => None,
    }
}

/// `spec` restores onto a new file equal to `src`.
async fn restores(
    repo: &Arc<Repository>,
    spec: &str,
    src: &Path,
    out: &Path,
) -> Result<(), String> {
    let (id, snap) = repo
        .resolve_snapshot(spec)
        .await
        .map_err(|e| e.to_string())?;
    let opts = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    restore_volume(repo.clone(), id, &snap, out, &opts, &ProgressBar::hidden())
        .await
        .map_err(|e| e.to_string())?;
    if same(src, out) {
        Ok(())
    } else {
        Err(format!("{spec} restored, but not bit for bit"))
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

async fn open(mem: &MemoryStore, pw: &[u8]) -> Result<Arc<Repository>, String> {
    Repository::open(Arc::new(mem.clone()), pw, None, c())
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// One row: damage its object, then try everything the row speaks of.
async fn run_row(r: &Row) -> Result<(), String> {
    let f = fixture().await;
    let key = &f.targets.iter().find(|(k, _)| *k == r.kind).unwrap().1;
    let original = f.mem.get(key, &c()).await.unwrap();
    match damaged(&original, r.damage) {
        Some(b) => f.mem.tamper(key, b),
        None => f.mem.delete(key, &c()).await.unwrap(),
    }
    let mine = open(&f.mem, PASSWORD).await;
    let repo = match (r.opens, mine) {
        (Mine, Ok(repo)) => repo,
        (Other, Err(e)) => {
            let named = r.damage == Removed || e.contains(key.as_str());
            ensure!(named, "the error does not name the damaged key {key}: {e}");
            open(&f.mem, OTHER).await?
        }
        (No, Err(e)) => {
            ensure!(
                e.contains("config"),
                "the error does not name `config`: {e}"
            );
            ensure!(
                !e.contains("create one"),
                "a damaged repository is not an empty one: {e}"
            );
            ensure!(
                open(&f.mem, OTHER).await.is_err(),
                "the other password opened it"
            );
            return Ok(());
        }
        (want, got) => return Err(format!("expected {want:?} to open, got {:?}", got.err())),
    };
    let listed = repo
        .list_snapshots()
        .await
        .map_err(|e| format!("snapshots: {e}"))?;
    ensure!(
        listed.len() == r.lists,
        "snapshots lists {}, expected {}",
        listed.len(),
        r.lists
    );
    let records = list_backups(&repo)
        .await
        .map_err(|e| format!("backup list: {e}"))?;
    ensure!(
        records.len() == r.records,
        "backup list shows {}, expected {}",
        records.len(),
        r.records
    );
    let out = f.dir.path().join("out.img");
    restores(&repo, "b:latest", &f.src("b"), &out)
        .await
        .map_err(|e| format!("the unaffected snapshot: {e}"))?;
    let a = restores(
        &repo,
        &f.a_snapshot["snapshots/".len()..],
        &f.src("a"),
        &out,
    )
    .await;
    ensure!(
        a.is_ok() == r.a_restores,
        "a restores: {a:?}, expected {}",
        r.a_restores
    );
    // A new backup goes through and restores.
    backup(&repo, "c", &f.src("c")).await;
    restores(&repo, "c:latest", &f.src("c"), &out)
        .await
        .map_err(|e| format!("a new backup: {e}"))?;

    let structure = repo
        .check(&CheckOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let deep = repo
        .check(&CheckOptions { read_data: true })
        .await
        .map_err(|e| e.to_string())?;
    let found = match (structure.ok(), deep.ok()) {
        (true, true) => Nothing,
        (true, false) => ReadData,
        (false, false) => Structure,
        (false, true) => {
            return Err(format!(
                "check found {:?} only without --read-data",
                structure.errors
            ))
        }
    };
    ensure!(
        found == r.check,
        "check finds {found:?}, expected {:?}: {:?}",
        r.check,
        deep.errors
    );
    // What is removed cannot be named, unless something else names it (an index, a pack).
    if r.check != Nothing && (r.damage != Removed || r.kind == Pack) {
        ensure!(
            deep.errors.iter().any(|e| e.contains(key.as_str())),
            "check does not name {key}: {:?}",
            deep.errors
        );
    }
    recover(r, &f, &repo, key).await
}

/// Repair (a dry run first), prune, the row's own fix; then what is left.
async fn recover(r: &Row, f: &Fixture, repo: &Arc<Repository>, key: &str) -> Result<(), String> {
    // Locks aside: taking its own lock, the repair removes stale ones (as any locker does).
    let stored = || async {
        let all = keys_under(&f.mem, "").await;
        all.into_iter()
            .filter(|k| !k.starts_with("locks/"))
            .collect::<Vec<_>>()
    };
    let before = stored().await;
    let dry = repo
        .repair(&RepairOptions {
            dry_run: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    ensure!(stored().await == before, "a dry run changed the store");
    let done = repo
        .repair(&RepairOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let lost = |r: &lifeboat::repository::RepairReport| r.losses();
    ensure!(
        lost(&dry) == lost(&done),
        "the dry run said {dry:?}, the repair {done:?}"
    );
    ensure!(
        lost(&done) == r.lost,
        "repair lost {}, expected {}: {done:?}",
        lost(&done),
        r.lost
    );
    let repo = open(&f.mem, if r.opens == Other { OTHER } else { PASSWORD }).await?;
    if r.after != Reported {
        repo.prune(&PruneOptions::default())
            .await
            .map_err(|e| format!("prune after repair: {e}"))?;
    }
    match r.after {
        Unlock => {
            let u = repo.unlock(false).await.map_err(|e| e.to_string())?;
            ensure!(u.removed.len() == 1, "unlock: {u:?}");
        }
        RemoveKey => {
            repo.remove_key(&key["keys/".len()..])
                .await
                .map_err(|e| format!("key remove: {e}"))?;
        }
        _ => {}
    }
    let check = repo
        .check(&CheckOptions { read_data: true })
        .await
        .map_err(|e| e.to_string())?;
    if r.after == Reported {
        ensure!(!check.ok(), "the damage is no longer reported");
        return Ok(());
    }
    ensure!(check.ok(), "not whole after recovery: {:?}", check.errors);
    let out = f.dir.path().join("after.img");
    restores(&repo, "b:latest", &f.src("b"), &out).await?;
    restores(&repo, "c:latest", &f.src("c"), &out).await?;
    let a_listed = repo
        .list_snapshots()
        .await
        .unwrap()
        .iter()
        .any(|(id, _)| id.key() == f.a_snapshot);
    if r.after == LosesA {
        ensure!(!a_listed, "a's snapshot is still there");
        backup(&repo, "a", &f.src("a")).await;
    }
    restores(&repo, "a:latest", &f.src("a"), &out).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_object_damaged_every_way() {
    let mut failed = Vec::new();
    for r in ROWS {
        if let Err(e) = run_row(r).await {
            failed.push(format!("{:?} {:?}: {e}", r.kind, r.damage));
        }
    }
    assert!(
        failed.is_empty(),
        "{} row(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ----- the CLI, for a few rows ---------------------------------------------------------------

fn flip_file(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

/// A bit-flipped snapshot: `check` exits 4, `repair --dry-run` exits 4 and changes nothing,
/// `repair` removes it (exit 4: a loss), then `check` and a second `repair` exit 0.
#[test]
fn cli_repair_of_a_damaged_snapshot() {
    let d = tmp();
    let repo = init_repo(d.path());
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    generate_image(&a, 1 << 20, 21).unwrap();
    generate_image(&b, 1 << 20, 22).unwrap();
    let snap = |src: &Path, name: &str| {
        let r = ok(run(lb(&repo)
            .args(["volume", "backup", "--json", "--name", name])
            .arg(src)));
        json(&r)["snapshot_id"].as_str().unwrap().to_string()
    };
    let damaged = snap(&a, "a");
    snap(&b, "b");
    flip_file(&repo.join("snapshots").join(&damaged));

    let r = run(lb(&repo).args(["repo", "check"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains(&damaged), "{}", r.stderr);
    let listing = || crate::support::files(&repo);
    let before = listing();
    let r = run(lb(&repo).args(["repo", "repair", "--dry-run", "--json"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    let v = json(&r);
    crate::cli::conforms_to_cli_schema("repo-repair.schema.json", &v);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["snapshots_removed"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(listing(), before, "a dry run changes nothing");
    let r = run(lb(&repo).args(["repo", "repair"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stdout.contains("snapshot removed") && r.stdout.contains(&damaged),
        "{}",
        r.stdout
    );
    ok(run(lb(&repo).args(["repo", "check", "--read-data"])));
    let r = ok(run(lb(&repo).args(["repo", "repair"])));
    assert!(r.stdout.contains("nothing lost"), "{}", r.stdout);
    let out = d.path().join("b.out");
    ok(run(lb(&repo)
        .args(["volume", "restore", "b:latest"])
        .arg(&out)));
    assert!(same(&b, &out));
}

/// Garbage under locks/: `check` exits 4, `unlock` removes it (exit 0); an unexpired lock of
/// another host is kept (exit 3) until `--force`.
#[test]
fn cli_unlock_removes_garbage_and_forces_only_when_told() {
    let d = tmp();
    let repo = init_repo(d.path());
    std::fs::create_dir_all(repo.join("locks")).unwrap();
    std::fs::write(repo.join("locks/garbage"), b"\x00not a lock").unwrap();
    let r = run(lb(&repo).args(["repo", "check"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("locks/garbage"), "{}", r.stderr);
    let v = json(&ok(run(lb(&repo).args(["repo", "unlock", "--json"]))));
    crate::cli::conforms_to_cli_schema("repo-unlock.schema.json", &v);
    assert_eq!(v["removed"].as_array().unwrap().len(), 1, "{v}");
    ok(run(lb(&repo).args(["repo", "check"])));

    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let lock = LockFile {
        version: lifeboat::format::FORMAT_VERSION,
        kind: LockKind::Exclusive,
        purpose: "prune".into(),
        hostname: "another-node".into(),
        pid: 1,
        time: now,
        expires: now + time::Duration::minutes(30),
        nonce: "cli".into(),
        process: None,
    };
    std::fs::write(
        repo.join("locks/elsewhere"),
        serde_json::to_vec(&lock).unwrap(),
    )
    .unwrap();
    let r = run(lb(&repo).args(["repo", "unlock"]));
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("--force"), "{}", r.stdout);
    assert!(repo.join("locks/elsewhere").exists());
    let r = ok(run(lb(&repo).args(["repo", "unlock", "--force"])));
    assert!(r.stdout.contains("removed locks/elsewhere"), "{}", r.stdout);
    assert!(!repo.join("locks/elsewhere").exists());
}

/// A bit flipped inside a blob of a pack (issue 17; before, `repair` rebuilt the index from
/// the trailer and kept the damaged blob): `check --read-data` exits 4; `repair --read-data
/// --dry-run` exits 4 and changes nothing; `repair --read-data` moves the pack's good blobs
/// to new packs, deletes it and removes the snapshot that used the damaged blob (exit 4: a
/// loss); then `check --read-data` is clean, `b` restores bit for bit, and a new
/// `volume backup --full` of `a` stores the blob again and restores bit for bit.
#[test]
fn cli_repair_read_data_of_a_bit_flipped_pack_body() {
    let d = tmp();
    let repo = init_repo(d.path());
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    generate_image(&a, 2 << 20, 31).unwrap();
    generate_image(&b, 2 << 20, 32).unwrap();
    let packs = || -> BTreeSet<std::path::PathBuf> {
        crate::support::files(&repo.join("data"))
            .into_iter()
            .collect()
    };
    let snap = |src: &Path, name: &str, full: bool| {
        let mut c = lb(&repo);
        c.args(["volume", "backup", "--json", "--name", name]);
        if full {
            c.arg("--full");
        }
        json(&ok(run(c.arg(src))))["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let damaged = snap(&a, "a", false);
    let of_a = packs();
    snap(&b, "b", false);
    let pack = of_a
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    // A third of the way in: inside the body (the blobs), not the trailer.
    let mut bytes = std::fs::read(&pack).unwrap();
    let i = bytes.len() / 3;
    bytes[i] ^= 0x10;
    std::fs::write(&pack, bytes).unwrap();
    let pack_name = pack.file_name().unwrap().to_string_lossy().to_string();

    let r = run(lb(&repo).args(["repo", "check", "--read-data"]));
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let listing = || {
        crate::support::files(&repo)
            .into_iter()
            .filter(|f| !f.starts_with(repo.join("locks")))
            .map(|f| (std::fs::read(&f).unwrap(), f))
            .collect::<Vec<_>>()
    };
    ok(run(lb(&repo).args(["repo", "repair"])));
    let r = run(lb(&repo).args(["repo", "check", "--read-data"]));
    assert_eq!(
        r.code, 4,
        "still damaged after a repair of the trailers: {}",
        r.stdout
    );
    let before = listing();
    let r = run(lb(&repo).args(["repo", "repair", "--read-data", "--dry-run", "--json"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    let v = json(&r);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["packs_damaged"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(
        v["packs_damaged"][0].as_str().unwrap().contains(&pack_name),
        "{v:#}"
    );
    assert_eq!(v["blobs_lost"].as_array().unwrap().len(), 1, "{v:#}");
    let removed = v["snapshots_removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{v:#}");
    assert!(removed[0].as_str().unwrap().contains(&damaged), "{v:#}");
    assert!(listing() == before, "a dry run changes nothing");

    let r = run(lb(&repo).args(["repo", "repair", "--read-data"]));
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("snapshot removed") && r.stdout.contains(&damaged),
        "{}",
        r.stdout
    );
    assert!(!pack.exists(), "the damaged pack is deleted");
    crate::crash::check_clean(&repo, "after repair --read-data");
    let r = ok(run(lb(&repo).args(["repo", "repair", "--read-data"])));
    assert!(r.stdout.contains("nothing lost"), "{}", r.stdout);
    let names: Vec<String> = json(&ok(run(lb(&repo).args(["snapshots", "--json"]))))
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["b"]);
    let out = d.path().join("b.out");
    ok(run(lb(&repo)
        .args(["volume", "restore", "b:latest"])
        .arg(&out)));
    assert!(same(&b, &out), "b restores bit for bit");
    snap(&a, "a", true);
    let out = d.path().join("a.out");
    ok(run(lb(&repo)
        .args(["volume", "restore", "a:latest"])
        .arg(&out)));
    assert!(same(&a, &out), "a stored again");
    crate::crash::check_clean(&repo, "after a new full backup");
}

/// A blob damaged in one pack but intact in another keeps working: a second copy of a pack
/// (under its own, matching name) with a flipped bit is deleted by `repair --read-data`, and
/// nothing is lost (exit 0); every snapshot restores bit for bit and check is clean.
#[test]
fn cli_repair_read_data_keeps_a_blob_that_another_pack_holds_intact() {
    let d = tmp();
    let repo = init_repo(d.path());
    let a = d.path().join("a.img");
    generate_image(&a, 2 << 20, 33).unwrap();
    ok(run(lb(&repo)
        .args(["volume", "backup", "--name", "a"])
        .arg(&a)));
    let pack = crate::support::files(&repo.join("data"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let i = bytes.len() / 3;
    bytes[i] ^= 0x10;
    let name = hex::encode(lifeboat::format::object_hash(&bytes));
    let copy = repo.join("data").join(&name[..2]).join(&name);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::write(&copy, bytes).unwrap();
    let r = run(lb(&repo).args(["repo", "check", "--read-data"]));
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    let r = ok(run(lb(&repo).args([
        "repo",
        "repair",
        "--read-data",
        "--json",
    ])));
    let v = json(&r);
    assert_eq!(v["packs_damaged"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(v["blobs_lost"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(
        v["snapshots_removed"].as_array().unwrap().is_empty(),
        "{v:#}"
    );
    assert!(!copy.exists() && pack.exists());
    crate::crash::check_clean(&repo, "after repair --read-data");
    let out = d.path().join("a.out");
    ok(run(lb(&repo)
        .args(["volume", "restore", "a:latest"])
        .arg(&out)));
    assert!(same(&a, &out));
}
