//! Repository lifecycle, keys, damage detection, injected faults and interrupted backups.

use std::sync::Arc;

use bytes::Bytes;
use indicatif::ProgressBar;
use lifeboat::demo::generate_image;
use lifeboat::format::KdfParams;
use lifeboat::repository::{CheckOptions, RepoError, Repository};
use lifeboat::store::fault::{Fault, Faulty, Op};
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::retry::Retry;
use lifeboat::store::Store;
use lifeboat::volume::backup::{backup_volume, BackupOptions};
use lifeboat::volume::restore::{restore_volume, RestoreError, RestoreOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{files, new_repo, reopen, test_init_options, tmp, PASSWORD};
use crate::volume::{backup, restore, same};

fn c() -> CancellationToken {
    CancellationToken::new()
}

#[tokio::test]
async fn init_refuses_existing_repository_and_foreign_data() {
    let mem = MemoryStore::new();
    new_repo(Arc::new(mem.clone())).await;
    let before = mem.list("", &c()).await.unwrap();
    let e = Repository::init(Arc::new(mem.clone()), b"other", &test_init_options(), c())
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::AlreadyInitialized { .. }), "{e}");
    assert_eq!(mem.list("", &c()).await.unwrap(), before, "nothing changed");

    let foreign = MemoryStore::new();
    foreign
        .put("photos/cat.jpg", Bytes::from_static(b"meow"), &c())
        .await
        .unwrap();
    let e = Repository::init(Arc::new(foreign), PASSWORD, &test_init_options(), c())
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::NotEmpty { .. }), "{e}");
}

#[tokio::test]
async fn missing_repository_and_wrong_password_are_clear() {
    let e = Repository::open(Arc::new(MemoryStore::new()), PASSWORD, None, c())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no lifeboat repository"), "{e}");
    let mem = MemoryStore::new();
    new_repo(Arc::new(mem.clone())).await;
    let e = Repository::open(Arc::new(mem), b"wrong", None, c())
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::WrongPassword { .. }), "{e}");
}

#[tokio::test]
async fn keys_can_be_added_and_removed_without_touching_data() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 1 << 20, 1).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    backup(&repo, "v", &src).await;
    let data_before = mem.list("data/", &c()).await.unwrap();

    let new_id = repo
        .add_key(b"second", KdfParams::INSECURE_FAST)
        .await
        .unwrap();
    let second = Arc::new(
        Repository::open(Arc::new(mem.clone()), b"second", None, c())
            .await
            .unwrap(),
    );
    let out = d.path().join("o.img");
    restore(&second, "v:latest", &out).await;
    assert!(same(&src, &out));

    // Remove the first password's key using the second.
    let first_id = repo
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id != new_id)
        .unwrap()
        .id;
    second.remove_key(&first_id.to_hex()[..12]).await.unwrap();
    assert!(matches!(
        Repository::open(Arc::new(mem.clone()), PASSWORD, None, c()).await,
        Err(RepoError::WrongPassword { .. })
    ));
    assert!(matches!(
        second.remove_key(&new_id.to_hex()).await,
        Err(RepoError::LastKey)
    ));
    assert!(matches!(
        second.remove_key("ffff").await,
        Err(RepoError::KeyNotFound { .. })
    ));
    assert_eq!(
        mem.list("data/", &c()).await.unwrap(),
        data_before,
        "no data re-encrypted"
    );
}

#[tokio::test]
async fn tampered_config_is_refused() {
    let mem = MemoryStore::new();
    new_repo(Arc::new(mem.clone())).await;
    let cfg = mem.get("config", &c()).await.unwrap();
    let text = String::from_utf8(cfg.to_vec())
        .unwrap()
        .replace("\"chunk_size\": 65536", "\"chunk_size\": 131072");
    mem.tamper("config", Bytes::from(text));
    let e = Repository::open(Arc::new(mem), PASSWORD, None, c())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("corrupt object `config`"), "{e}");
}

/// A repository with one snapshot, and the keys of its objects by kind.
async fn one_snapshot() -> (tempfile::TempDir, MemoryStore, std::path::PathBuf) {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 3 << 20, 11).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    backup(&repo, "v", &src).await;
    (d, mem, src)
}

fn flip_at(b: &Bytes, i: usize) -> Bytes {
    let mut v = b.to_vec();
    v[i] ^= 0x01;
    Bytes::from(v)
}

#[tokio::test]
async fn check_read_data_finds_a_flipped_bit_in_a_pack_and_restore_refuses_it() {
    let (d, mem, _src) = one_snapshot().await;
    let packs = mem.list("data/", &c()).await.unwrap();
    let victim = packs.iter().max_by_key(|o| o.size).unwrap().key.clone();
    let bytes = mem.get(&victim, &c()).await.unwrap();
    mem.tamper(&victim, flip_at(&bytes, 100));
    let repo = reopen(Arc::new(mem.clone())).await;

    let quick = repo.check(&CheckOptions::default()).await.unwrap();
    assert!(quick.ok(), "structure is intact: {:?}", quick.errors);
    let deep = repo.check(&CheckOptions { read_data: true }).await.unwrap();
    assert!(!deep.ok());
    assert!(
        deep.errors.iter().any(|e| e.contains(&victim)),
        "{:?}",
        deep.errors
    );

    let (id, snap) = repo.resolve_snapshot("v:latest").await.unwrap();
    let target = d.path().join("r.img");
    let e = restore_volume(
        repo.clone(),
        id,
        &snap,
        &target,
        &RestoreOptions::default(),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, RestoreError::Repo(RepoError::Corrupt { .. })),
        "{e}"
    );
    assert!(e.to_string().contains(&victim), "{e}");
    assert!(!target.exists(), "no plausible-looking partial target");
}

#[tokio::test]
async fn check_names_missing_packs_damaged_index_and_damaged_snapshots() {
    // Missing pack.
    let (_d, mem, _) = one_snapshot().await;
    let pack = mem.list("data/", &c()).await.unwrap()[0].key.clone();
    mem.delete(&pack, &c()).await.unwrap();
    let r = reopen(Arc::new(mem))
        .await
        .check(&CheckOptions::default())
        .await
        .unwrap();
    assert!(
        r.errors
            .iter()
            .any(|e| e.contains(&pack) && e.contains("missing")),
        "{:?}",
        r.errors
    );

    // Damaged index object.
    let (_d, mem, _) = one_snapshot().await;
    let idx = mem.list("index/", &c()).await.unwrap()[0].key.clone();
    let b = mem.get(&idx, &c()).await.unwrap();
    mem.tamper(&idx, flip_at(&b, b.len() / 2));
    let r = reopen(Arc::new(mem))
        .await
        .check(&CheckOptions::default())
        .await
        .unwrap();
    assert!(r.errors.iter().any(|e| e.contains(&idx)), "{:?}", r.errors);

    // Damaged snapshot.
    let (_d, mem, _) = one_snapshot().await;
    let snap = mem.list("snapshots/", &c()).await.unwrap()[0].key.clone();
    let b = mem.get(&snap, &c()).await.unwrap();
    mem.tamper(&snap, flip_at(&b, 3));
    let r = reopen(Arc::new(mem))
        .await
        .check(&CheckOptions::default())
        .await
        .unwrap();
    assert!(r.errors.iter().any(|e| e.contains(&snap)), "{:?}", r.errors);
}

#[tokio::test]
async fn transient_faults_are_retried_and_the_backup_is_intact() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 4 << 20, 12).unwrap();
    let faulty = Arc::new(Faulty::new(Arc::new(MemoryStore::new())));
    let store: Arc<dyn Store> = Arc::new(Retry::new(
        faulty.clone(),
        6,
        std::time::Duration::from_millis(1),
    ));
    let repo = new_repo(store.clone()).await;
    faulty.inject(Op::Put, "data/", 1, 3, Fault::Transient);
    faulty.inject(Op::Put, "data/", 0, 2, Fault::LoseAnswer);
    faulty.inject(Op::Put, "index/", 0, 1, Fault::Transient);
    faulty.inject(Op::Get, "data/", 2, 2, Fault::Transient);
    backup(&repo, "v", &src).await;
    let out = d.path().join("o.img");
    restore(&repo, "v:latest", &out).await;
    assert!(same(&src, &out));
    faulty.clear();
    let r = repo.check(&CheckOptions { read_data: true }).await.unwrap();
    assert!(r.ok(), "{:?}", r.errors);
}

#[tokio::test]
async fn a_read_that_returns_damaged_bytes_is_caught() {
    let (d, mem, _) = one_snapshot().await;
    let faulty = Arc::new(Faulty::new(Arc::new(mem)));
    let repo = reopen(faulty.clone()).await;
    faulty.inject(Op::Get, "data/", 0, u64::MAX, Fault::FlipBit);
    let (id, snap) = repo.resolve_snapshot("v:latest").await.unwrap();
    let e = restore_volume(
        repo.clone(),
        id,
        &snap,
        &d.path().join("x"),
        &RestoreOptions::default(),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("corrupt object"), "{e}");
}

/// Stops the backup after every possible number of successful writes (a crash at each point):
/// the repository stays clean, the earlier snapshot restores, and the next backup succeeds.
#[tokio::test]
async fn a_backup_interrupted_at_any_write_leaves_the_repository_consistent() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 3 << 20, 13).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    let first = backup(&repo, "v", &src).await;
    let original = d.path().join("orig.img");
    std::fs::copy(&src, &original).unwrap();
    lifeboat::demo::mutate(&src, 0.3, 64 << 10, 1).unwrap();

    // How many writes does a whole incremental take? Count them on a copy.
    let probe_mem = MemoryStore::new();
    for o in mem.list("", &c()).await.unwrap() {
        probe_mem
            .put(&o.key, mem.get(&o.key, &c()).await.unwrap(), &c())
            .await
            .unwrap();
    }
    let probe = Arc::new(Faulty::new(Arc::new(probe_mem)));
    backup(&reopen(probe.clone()).await, "v", &src).await;
    let total = probe.puts_done();
    assert!(total >= 3, "packs, index and snapshot: {total}");

    for crash_after in 0..total {
        let faulty = Arc::new(Faulty::new(Arc::new(mem.clone())));
        faulty.inject(Op::Put, "", crash_after, u64::MAX, Fault::Permanent);
        let r = backup_volume(
            reopen(faulty).await,
            &BackupOptions::new("v", &src),
            &ProgressBar::hidden(),
        )
        .await;
        assert!(
            r.is_err(),
            "crash after {crash_after} writes must fail the backup"
        );
        let repo = reopen(Arc::new(mem.clone())).await;
        let report = repo.check(&CheckOptions { read_data: true }).await.unwrap();
        assert!(
            report.ok(),
            "after crash at write {crash_after}: {:?}",
            report.errors
        );
        assert_eq!(
            report.snapshots, 1,
            "no snapshot committed by a crashed backup"
        );
    }
    let repo = reopen(Arc::new(mem.clone())).await;
    let out = d.path().join("first.img");
    restore(&repo, &first.snapshot_id.to_hex(), &out).await;
    assert!(same(&original, &out));
    backup(&repo, "v", &src).await;
    let out2 = d.path().join("second.img");
    restore(&repo, "v:latest", &out2).await;
    assert!(same(&src, &out2));
    let report = repo.check(&CheckOptions { read_data: true }).await.unwrap();
    assert!(report.ok(), "{:?}", report.errors);
}

#[tokio::test]
async fn later_runs_read_index_objects_from_the_local_cache_and_verify_them() {
    let (d, mem, _) = one_snapshot().await;
    let cache = d.path().join("cache");
    let faulty = Arc::new(Faulty::new(Arc::new(mem)));
    let open = || async {
        Arc::new(
            Repository::open(faulty.clone(), PASSWORD, Some(cache.clone()), c())
                .await
                .unwrap(),
        )
    };
    let first = open().await.load_index().await.unwrap();
    // The bucket now refuses to serve index objects: only the cache can answer.
    faulty.inject(Op::Get, "index/", 0, u64::MAX, Fault::Permanent);
    let second = open().await.load_index().await.unwrap();
    assert_eq!(first.blob_count(), second.blob_count());
    assert!(first.blob_count() > 0);

    // A damaged cache entry is never used: it is dropped and fetched again.
    let cached: Vec<_> = files(&cache)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/index/"))
        .collect();
    assert!(!cached.is_empty());
    let mut b = std::fs::read(&cached[0]).unwrap();
    b[10] ^= 1;
    std::fs::write(&cached[0], b).unwrap();
    assert!(
        open().await.load_index().await.is_err(),
        "damaged cache + refusing store: an error"
    );
    faulty.clear();
    assert_eq!(
        open().await.load_index().await.unwrap().blob_count(),
        first.blob_count()
    );
}

#[tokio::test]
async fn another_tools_repository_is_named_as_foreign() {
    let mem = MemoryStore::new();
    // A restic repository's `config` is an encrypted binary object.
    mem.put(
        "config",
        Bytes::from_static(&[0x8a, 0x01, 0xff, 0x42, 0x00]),
        &c(),
    )
    .await
    .unwrap();
    let e = Repository::open(Arc::new(mem.clone()), PASSWORD, None, c())
        .await
        .unwrap_err();
    assert!(matches!(e, RepoError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("not a lifeboat repository"), "{e}");
    let e = Repository::init(Arc::new(mem), PASSWORD, &test_init_options(), c())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RepoError::AlreadyInitialized { .. }),
        "init never overwrites it: {e}"
    );
}

async fn copy_store(from: &MemoryStore) -> MemoryStore {
    let to = MemoryStore::new();
    for o in from.list("", &c()).await.unwrap() {
        to.put(&o.key, from.get(&o.key, &c()).await.unwrap(), &c())
            .await
            .unwrap();
    }
    to
}

/// A prune that dies after any number of its writes or deletes loses nothing: the kept
/// snapshot restores bit-identical, `check --read-data` finds no error, and a later prune
/// finishes the job.
#[tokio::test]
async fn a_prune_interrupted_at_any_write_or_delete_loses_nothing() {
    use lifeboat::repository::PruneOptions;
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 3 << 20, 21).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    let first = backup(&repo, "v", &src).await;
    lifeboat::demo::mutate(&src, 0.5, 64 << 10, 4).unwrap();
    backup(&repo, "v", &src).await;
    // Forget the first snapshot: its unique blocks become garbage.
    mem.delete(&first.snapshot_id.key(), &c()).await.unwrap();
    let with_grace = |grace| PruneOptions {
        dry_run: false,
        repack_threshold: 0.1,
        grace,
    };
    let opts = with_grace(std::time::Duration::ZERO);
    let mut crashes = 0;
    // Packs deleted at once, and packs kept for the grace period (a pending list written
    // before the new index).
    for (op, opts) in [Op::Put, Op::Delete].into_iter().flat_map(|op| {
        [opts, with_grace(lifeboat::repository::DEFAULT_PRUNE_GRACE)].map(|o| (op, o))
    }) {
        for crash_after in 0u64.. {
            let copy = copy_store(&mem).await;
            let faulty = Arc::new(Faulty::new(Arc::new(copy.clone())));
            faulty.inject(op, "", crash_after, u64::MAX, Fault::Permanent);
            let r = reopen(faulty).await.prune(&opts).await;
            if r.is_ok() {
                break;
            }
            crashes += 1;
            // The process died: its lock stays behind until it expires; clear it as time would.
            for l in copy.list("locks/", &c()).await.unwrap() {
                copy.delete(&l.key, &c()).await.unwrap();
            }
            let repo = reopen(Arc::new(copy.clone())).await;
            let report = repo.check(&CheckOptions { read_data: true }).await.unwrap();
            assert!(
                report.ok(),
                "{op:?} crash after {crash_after}: {:?}",
                report.errors
            );
            let out = d.path().join("out.img");
            let _ = std::fs::remove_file(&out);
            restore(&repo, "v:latest", &out).await;
            assert!(same(&src, &out), "{op:?} crash after {crash_after}");
            repo.prune(&opts).await.unwrap();
            let report = repo.check(&CheckOptions { read_data: true }).await.unwrap();
            assert!(
                report.ok() && report.warnings.is_empty(),
                "{op:?} {crash_after}: {report:?}"
            );
        }
    }
    assert!(crashes >= 12, "crash points exercised: {crashes}");
    // And the uninterrupted prune shrank the store.
    let before: u64 = mem
        .list("data/", &c())
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    let r = repo.prune(&opts).await.unwrap();
    assert!(r.packs_repacked > 0 && r.bytes_after < before, "{r:?}");
    let out = d.path().join("final.img");
    restore(&repo, "v:latest", &out).await;
    assert!(same(&src, &out));
}
