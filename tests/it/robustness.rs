//! Concurrency, damage and hostile input: the repository keeps its data and stays usable.
//! Each test here fails on the code before its fix (the adversarial review's findings).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use indicatif::ProgressBar;
use lifeboat::demo::{generate_image, mutate};
use lifeboat::format::{KdfParams, LockFile, LockKind};
use lifeboat::repository::{CheckOptions, PruneOptions, RepairOptions, RepoError, Repository};
use lifeboat::store::fault::Op;
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::Store;
use lifeboat::volume::backup::{backup_volume, BackupOptions};
use lifeboat::volume::restore::{restore_volume, RestoreOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{keys_under, new_repo, reopen, test_init_options, tmp, Paused, PASSWORD};
use crate::volume::{backup, restore, same};

fn c() -> CancellationToken {
    CancellationToken::new()
}

/// A store whose deletes under `prefix` wait (up to a second) until a second delete under it
/// arrives: two racing commands are both made to pass their checks before either acts.
fn meet_at_delete(inner: MemoryStore, prefix: &'static str) -> Paused {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    Paused {
        inner: Arc::new(inner),
        pause: Box::new(move |op, key| {
            let barrier = barrier.clone();
            (op == Op::Delete && key.starts_with(prefix)).then(|| {
                async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), barrier.wait()).await;
                }
                .boxed()
            })
        }),
    }
}

/// A new repository (password [`PASSWORD`]) with a second key for `password`: the
/// repository, the first key's id and the second's.
async fn with_second_key(
    mem: &MemoryStore,
    password: &[u8],
) -> (
    Arc<Repository>,
    lifeboat::format::KeyId,
    lifeboat::format::KeyId,
) {
    let repo = new_repo(Arc::new(mem.clone())).await;
    let second = repo
        .add_key(password, KdfParams::INSECURE_FAST)
        .await
        .unwrap();
    let first = repo
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id != second)
        .unwrap()
        .id;
    (repo, first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_key_removals_at_once_never_leave_the_repository_without_a_key() {
    let mem = MemoryStore::new();
    let (_, first_id, second_id) = with_second_key(&mem, b"second").await;

    let racing: Arc<dyn Store> = Arc::new(meet_at_delete(mem.clone(), "keys/"));
    let a = Repository::open(racing.clone(), PASSWORD, None, c())
        .await
        .unwrap();
    let b = Repository::open(racing.clone(), b"second", None, c())
        .await
        .unwrap();
    // Each removes the other's key: both see two keys, so each alone would be allowed.
    let (spec_a, spec_b) = (second_id.to_hex(), first_id.to_hex());
    let (ra, rb) = tokio::join!(a.remove_key(&spec_a), b.remove_key(&spec_b));
    let removed = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert!(removed <= 1, "both removals went through: {ra:?} {rb:?}");
    for r in [&ra, &rb] {
        if let Err(e) = r {
            assert!(
                matches!(e, RepoError::Locked { .. } | RepoError::LastKey),
                "{e}"
            );
        }
    }
    let left = mem.list("keys/", &c()).await.unwrap();
    assert!(
        !left.is_empty(),
        "no key left: the repository can never be opened again"
    );
    let opens = [PASSWORD, b"second".as_slice()]
        .iter()
        .filter(|pw| {
            futures::executor::block_on(Repository::open(Arc::new(mem.clone()), pw, None, c()))
                .is_ok()
        })
        .count();
    assert!(opens >= 1, "no password opens the repository");
}

#[tokio::test]
async fn a_damaged_key_of_another_password_does_not_lock_out_this_one() {
    let mem = MemoryStore::new();
    let (_, mine, other) = with_second_key(&mem, b"other").await;
    // Damage every key but this password's: the first one listed is damaged too.
    let damaged_key = other.key();
    mem.delete(&damaged_key, &c()).await.unwrap();
    mem.put(&damaged_key, Bytes::from_static(b"{not a key"), &c())
        .await
        .unwrap();

    let reopened = Repository::open(Arc::new(mem.clone()), PASSWORD, None, c())
        .await
        .unwrap();
    let keys = reopened.list_keys().await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().any(|k| k.id == other && k.damaged.is_some()),
        "{keys:?}"
    );
    // The damaged key is no fallback: the readable one is the last.
    assert!(matches!(
        reopened.remove_key(&mine.to_hex()).await,
        Err(RepoError::LastKey)
    ));
    // Its own password now names the damage.
    let e = Repository::open(Arc::new(mem.clone()), b"other", None, c())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RepoError::WrongPassword { ref damaged, .. } if damaged.len() == 1),
        "{e}"
    );
    assert!(e.to_string().contains("damaged"), "{e}");
}

#[tokio::test]
async fn an_empty_password_is_refused_and_nothing_is_written() {
    let mem = MemoryStore::new();
    let e = Repository::init(Arc::new(mem.clone()), b"", &test_init_options(), c())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("password is empty"), "{e}");
    assert!(
        mem.list("", &c()).await.unwrap().is_empty(),
        "nothing stored"
    );
    let repo = new_repo(Arc::new(mem.clone())).await;
    let e = repo
        .add_key(b"", KdfParams::INSECURE_FAST)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("password is empty"), "{e}");
    assert_eq!(mem.list("keys/", &c()).await.unwrap().len(), 1);
}

fn flip(mem: &MemoryStore, key: &str) {
    let mut b = futures::executor::block_on(mem.get(key, &c()))
        .unwrap()
        .to_vec();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    mem.tamper(key, Bytes::from(b));
}

#[tokio::test]
async fn one_damaged_snapshot_stops_no_listing_latest_or_backup_but_stops_prune() {
    let d = tmp();
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    generate_image(&a, 1 << 20, 1).unwrap();
    generate_image(&b, 1 << 20, 2).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    let old = backup(&repo, "a", &a).await;
    backup(&repo, "b", &b).await;
    flip(&mem, &old.snapshot_id.key());

    let repo = reopen(Arc::new(mem.clone())).await;
    let listed = repo.list_snapshots().await.unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the damaged snapshot is skipped, the other listed"
    );
    let out = d.path().join("b.out");
    restore(&repo, "b:latest", &out).await;
    assert!(same(&b, &out));
    // A new backup of the damaged snapshot's volume goes through (as a full one).
    let again = backup(&repo, "a", &a).await;
    assert_eq!(again.parent, None);
    let out = d.path().join("a.out");
    restore(&repo, "a:latest", &out).await;
    assert!(same(&a, &out));
    // check names it; prune, which must know every reference, refuses and deletes nothing.
    let r = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(
        r.errors.iter().any(|e| e.contains(&old.snapshot_id.key())),
        "{:?}",
        r.errors
    );
    let packs = keys_under(&mem, "data/").await;
    let e = repo.prune(&PruneOptions::default()).await.unwrap_err();
    assert!(matches!(e, RepoError::Corrupt { .. }), "{e}");
    assert_eq!(
        keys_under(&mem, "data/").await,
        packs,
        "prune deleted nothing"
    );
}

#[tokio::test]
async fn one_damaged_index_object_stops_only_the_restores_that_need_it() {
    let d = tmp();
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    generate_image(&a, 1 << 20, 3).unwrap();
    generate_image(&b, 1 << 20, 4).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    backup(&repo, "a", &a).await;
    let a_index = keys_under(&mem, "index/").await;
    backup(&repo, "b", &b).await;
    for k in &a_index {
        flip(&mem, k);
    }
    let repo = reopen(Arc::new(mem.clone())).await;
    let out = d.path().join("b.out");
    restore(&repo, "b:latest", &out).await;
    assert!(
        same(&b, &out),
        "a restore whose blobs another index object lists works"
    );
    let (id, snap) = repo.resolve_snapshot("a:latest").await.unwrap();
    let e = restore_volume(
        repo.clone(),
        id,
        &snap,
        &d.path().join("a.out"),
        &RestoreOptions::default(),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("repo check"),
        "the one that needs it says what to do: {e}"
    );
    let r = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains(a_index.first().unwrap().as_str())),
        "{:?}",
        r.errors
    );
}

#[tokio::test]
async fn garbage_under_locks_blocks_nobody_is_reported_and_unlock_removes_it() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 1 << 20, 5).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    mem.put(
        "locks/0000garbage",
        Bytes::from_static(b"\x00not json"),
        &c(),
    )
    .await
    .unwrap();
    backup(&repo, "v", &src).await;
    let out = d.path().join("v.out");
    restore(&repo, "v:latest", &out).await;
    let r = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains("locks/0000garbage") && e.contains("repo unlock")),
        "{:?}",
        r.errors
    );
    let u = repo.unlock(false).await.unwrap();
    assert_eq!(u.removed.len(), 1, "{u:?}");
    assert!(repo.check(&CheckOptions::default()).await.unwrap().ok());
}

/// A lock object as another process of this host and pid namespace would write it.
async fn write_lock_of(mem: &MemoryStore, pid: u32, start: &str) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let lock = LockFile {
        version: lifeboat::format::FORMAT_VERSION,
        kind: LockKind::Exclusive,
        purpose: "prune".into(),
        hostname: host.trim().into(),
        pid,
        time: now,
        expires: now + time::Duration::minutes(30),
        nonce: "test".into(),
        process: Some(format!("{}/{}/{start}", boot.trim(), ns.display())),
    };
    let bytes = serde_json::to_vec(&lock).unwrap();
    let key = format!("locks/{}", hex::encode(blake3::hash(&bytes).as_bytes()));
    mem.put(&key, Bytes::from(bytes), &c()).await.unwrap();
    key
}

#[tokio::test]
async fn a_lock_of_a_process_that_died_on_this_host_is_not_waited_for() {
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    // A prune that was killed: its pid no longer runs.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let key = write_lock_of(&mem, dead, "12345").await;
    let guard = repo
        .lock(LockKind::Shared, "restore")
        .await
        .expect("not blocked by a dead prune");
    guard.release().await.unwrap();
    assert!(
        !keys_under(&mem, "locks/").await.contains(&key),
        "the dead lock was removed"
    );

    // A live holder (this very process, as another command would be) is kept, unless forced.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let live = write_lock_of(&mem, std::process::id(), &start).await;
    let e = repo
        .lock(LockKind::Shared, "restore")
        .await
        .err()
        .expect("a live exclusive lock holds");
    assert!(matches!(e, RepoError::Locked { .. }), "{e}");
    let kept = repo.unlock(false).await.unwrap();
    assert_eq!(kept.kept.len(), 1, "{kept:?}");
    assert!(keys_under(&mem, "locks/").await.contains(&live));
    // Not even with --force: its holder runs here and may be writing.
    let forced = repo.unlock(true).await.unwrap();
    assert!(forced.removed.is_empty(), "{forced:?}");
    assert!(forced.kept[0].contains("stop pid"), "{forced:?}");
    mem.delete(&live, &c()).await.unwrap();
    // A lock of another host cannot be checked from here: --force removes it.
    let elsewhere = write_lock_of(&mem, 1, "1").await;
    let mut lock: LockFile =
        serde_json::from_slice(&mem.get(&elsewhere, &c()).await.unwrap()).unwrap();
    mem.delete(&elsewhere, &c()).await.unwrap();
    lock.hostname = "another-node".into();
    mem.put(
        "locks/elsewhere",
        Bytes::from(serde_json::to_vec(&lock).unwrap()),
        &c(),
    )
    .await
    .unwrap();
    assert_eq!(repo.unlock(false).await.unwrap().kept.len(), 1);
    let forced = repo.unlock(true).await.unwrap();
    assert_eq!(forced.removed.len(), 1, "{forced:?}");
    assert!(keys_under(&mem, "locks/").await.is_empty());
}

#[tokio::test]
async fn after_lost_packs_a_full_backup_stores_the_blocks_again_and_repair_makes_it_whole() {
    let d = tmp();
    let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
    generate_image(&a, 2 << 20, 6).unwrap();
    generate_image(&b, 2 << 20, 7).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    let lost_snapshot = backup(&repo, "a", &a).await.snapshot_id;
    let a_packs = keys_under(&mem, "data/").await;
    backup(&repo, "b", &b).await;
    // Packs of volume a are lost.
    for k in &a_packs {
        mem.delete(k, &c()).await.unwrap();
    }
    let repo = reopen(Arc::new(mem.clone())).await;
    let r = repo.check(&CheckOptions::default()).await.unwrap();
    let missing = r
        .errors
        .iter()
        .find(|e| e.contains("missing from the store"))
        .expect("check finds it");
    assert!(
        missing.contains("--full") && missing.contains("repo repair"),
        "check says how to recover: {missing}"
    );

    // The operator's obvious fix stores the data again instead of trusting the index. The
    // volume has changed since: the old snapshot's changed blocks stay lost.
    mutate(&a, 0.05, 64 << 10, 9).unwrap();
    let mut opts = BackupOptions::new("a", &a);
    opts.full = true;
    let again = backup_volume(repo.clone(), &opts, &ProgressBar::hidden())
        .await
        .unwrap();
    assert!(
        again.stats.bytes_new > 0,
        "the lost blocks were stored again: {:?}",
        again.stats
    );

    // A dry run changes nothing; the repair rebuilds the index and drops what is lost.
    let before = keys_under(&mem, "").await;
    let dry = repo
        .repair(&RepairOptions {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        keys_under(&mem, "").await,
        before,
        "a dry run writes nothing"
    );
    assert_eq!(dry.snapshots_removed.len(), 1, "{dry:?}");
    assert!(
        dry.snapshots_removed[0].contains(&lost_snapshot.key()),
        "{dry:?}"
    );
    let done = repo.repair(&RepairOptions::default()).await.unwrap();
    assert_eq!(done.snapshots_removed, dry.snapshots_removed);
    assert!(done.packs_unreadable.is_empty(), "{done:?}");

    let repo = reopen(Arc::new(mem.clone())).await;
    let r = repo.check(&CheckOptions { read_data: true }).await.unwrap();
    assert!(r.ok(), "whole again: {:?}", r.errors);
    for (name, src) in [("a", &a), ("b", &b)] {
        let out = d.path().join(format!("{name}.out"));
        restore(&repo, &format!("{name}:latest"), &out).await;
        assert!(same(src, &out), "{name} restores bit for bit");
    }
    repo.prune(&PruneOptions::default())
        .await
        .expect("prune runs again");
}

#[tokio::test]
async fn repair_rebuilds_a_damaged_index_from_the_packs() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 2 << 20, 8).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    backup(&repo, "v", &src).await;
    for k in keys_under(&mem, "index/").await {
        flip(&mem, &k);
    }
    let repo = reopen(Arc::new(mem.clone())).await;
    assert!(!repo.check(&CheckOptions::default()).await.unwrap().ok());
    let done = repo.repair(&RepairOptions::default()).await.unwrap();
    assert!(
        done.snapshots_removed.is_empty(),
        "nothing was lost: {done:?}"
    );
    assert!(done.index_files_written >= 1);
    let repo = reopen(Arc::new(mem.clone())).await;
    assert!(repo
        .check(&CheckOptions { read_data: true })
        .await
        .unwrap()
        .ok());
    let out = d.path().join("v.out");
    restore(&repo, "v:latest", &out).await;
    assert!(same(&src, &out));
}

#[tokio::test]
async fn a_fifo_or_character_device_as_source_is_refused_at_once() {
    let d = tmp();
    let fifo = d.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    for (src, what) in [
        (fifo.as_path(), "FIFO"),
        (std::path::Path::new("/dev/null"), "character device"),
    ] {
        // Before the fix, opening the FIFO blocked forever: bound the wait.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            backup_volume(
                repo.clone(),
                &BackupOptions::new("v", src),
                &ProgressBar::hidden(),
            ),
        )
        .await
        .expect("refused at once, not hung");
        let e = r.unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("block device"), "{e}");
    }
}

#[tokio::test]
async fn a_key_object_asking_for_absurd_key_derivation_is_damage_not_a_hang() {
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    let other = repo
        .add_key(b"other", KdfParams::INSECURE_FAST)
        .await
        .unwrap();
    // Rewrite the other key with settings that would allocate a terabyte (its name changes
    // with its bytes, as anyone who can write keys/ could do).
    let mut v: serde_json::Value =
        serde_json::from_slice(&mem.get(&other.key(), &c()).await.unwrap()).unwrap();
    v["kdf"]["memory_kib"] = serde_json::json!(u32::MAX);
    let bytes = serde_json::to_vec_pretty(&v).unwrap();
    mem.delete(&other.key(), &c()).await.unwrap();
    let key = format!("keys/{}", hex::encode(blake3::hash(&bytes).as_bytes()));
    mem.put(&key, Bytes::from(bytes), &c()).await.unwrap();
    let started = std::time::Instant::now();
    let e = Repository::open(Arc::new(mem.clone()), b"other", None, c())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    Repository::open(Arc::new(mem.clone()), PASSWORD, None, c())
        .await
        .expect("the sound key still opens");
}
