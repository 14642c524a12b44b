//! Volume backup and restore through the library: round trips, incrementals, ranges, dedup.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use indicatif::ProgressBar;
use lifeboat::demo::{file_hash, generate_image, mutate, write_ranges};
use lifeboat::format::ChangeSource;
use lifeboat::repository::{CheckOptions, Repository};
use lifeboat::store::local::LocalStore;
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::{Store, StoreOptions};
use lifeboat::volume::backup::{backup_volume, BackupError, BackupOptions, BackupOutcome};
use lifeboat::volume::diff::ByteRange;
use lifeboat::volume::restore::RestoreMode;
use lifeboat::volume::restore::{restore_volume, RestoreError, RestoreOptions, RestoreStats};

use crate::support::{garage, new_repo, tmp};

pub async fn backup(repo: &Arc<Repository>, name: &str, src: &Path) -> BackupOutcome {
    backup_volume(
        repo.clone(),
        &BackupOptions::new(name, src),
        &ProgressBar::hidden(),
    )
    .await
    .expect("backup")
}

pub async fn restore(repo: &Arc<Repository>, spec: &str, target: &Path) -> RestoreStats {
    let (id, snap) = repo.resolve_snapshot(spec).await.expect("resolve");
    let opts = RestoreOptions {
        overwrite: true,
        ..Default::default()
    };
    restore_volume(
        repo.clone(),
        id,
        &snap,
        target,
        &opts,
        &ProgressBar::hidden(),
    )
    .await
    .expect("restore")
}

pub fn same(a: &Path, b: &Path) -> bool {
    file_hash(a).unwrap() == file_hash(b).unwrap()
}

async fn round_trip(store: Arc<dyn Store>) {
    let d = tmp();
    let src = d.path().join("vol.img");
    // 9 MiB + 100 bytes: many 64 KiB blocks, a partial last block, holes and duplicates.
    generate_image(&src, (9 << 20) + 100, 1).unwrap();
    let repo = new_repo(store).await;
    let full = backup(&repo, "db", &src).await;
    assert_eq!(full.change_source, ChangeSource::Full);
    assert!(full.stats.blocks_zero > 0, "holes are zero blocks");
    assert!(full.stats.bytes_read < 9 << 20, "holes are not read");

    let out = d.path().join("restored.img");
    let rs = restore(&repo, "db:latest", &out).await;
    assert_eq!(rs.mode, RestoreMode::New);
    assert!(same(&src, &out), "bit-identical restore");
    assert!(!d.path().join("restored.img.lifeboat-partial").exists());

    // Clustered change (one 1 MiB run) and scattered changes (1% in 64 KiB extents).
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&vec![0xAB; 1 << 20], 3 << 20).unwrap();
    drop(f);
    mutate(&src, 0.01, 64 << 10, 5).unwrap();
    let inc = backup(&repo, "db", &src).await;
    assert_eq!(inc.change_source, ChangeSource::HashCompare);
    assert_eq!(inc.parent, Some(full.snapshot_id));
    assert!(
        inc.stats.blocks_changed >= 16 && inc.stats.blocks_changed <= 16 + 3,
        "{:?}",
        inc.stats
    );
    assert!(inc.stats.bytes_new <= 19 * (64 << 10), "{:?}", inc.stats);

    // Restoring the new snapshot onto the old copy writes only what differs.
    let rs = restore(&repo, "db:latest", &out).await;
    assert_eq!(rs.mode, RestoreMode::InPlace);
    assert!(same(&src, &out));
    assert_eq!(rs.blocks_written, inc.stats.blocks_changed, "{rs:?}");

    // The first snapshot is still restorable, bit-identical to what it was.
    let old = d.path().join("old.img");
    restore(&repo, &full.snapshot_id.to_hex()[..10], &old).await;
    let again = d.path().join("regen.img");
    generate_image(&again, (9 << 20) + 100, 1).unwrap();
    assert!(same(&again, &old));

    let report = repo.check(&CheckOptions { read_data: true }).await.unwrap();
    assert!(report.ok(), "{:?}", report.errors);
    assert_eq!(report.snapshots, 2);
}

#[tokio::test]
async fn round_trip_local() {
    let d = tmp();
    round_trip(Arc::new(LocalStore::new(d.path().join("repo")))).await;
}

#[tokio::test]
async fn round_trip_memory() {
    round_trip(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn round_trip_s3() {
    let (s, _) = garage().store(StoreOptions::default()).await;
    round_trip(Arc::new(s)).await;
}

#[tokio::test]
async fn changed_ranges_read_only_those_blocks() {
    let d = tmp();
    let src = d.path().join("vol.img");
    generate_image(&src, 8 << 20, 2).unwrap();
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    backup(&repo, "v", &src).await;
    let ranges = mutate(&src, 0.02, 64 << 10, 9).unwrap();
    let rf = d.path().join("ranges.json");
    write_ranges(&rf, &ranges).unwrap();
    let mut opts = BackupOptions::new("v", &src);
    opts.changed_ranges = Some(rf);
    let inc = backup_volume(repo.clone(), &opts, &ProgressBar::hidden())
        .await
        .unwrap();
    assert_eq!(inc.change_source, ChangeSource::ChangedRanges);
    assert_eq!(
        inc.stats.bytes_read,
        ranges.len() as u64 * (64 << 10),
        "only the ranges are read"
    );
    let out = d.path().join("out.img");
    restore(&repo, "v:latest", &out).await;
    assert!(same(&src, &out));
}

#[tokio::test]
async fn ranges_file_errors_are_clear_and_store_nothing() {
    let d = tmp();
    let src = d.path().join("vol.img");
    generate_image(&src, 2 << 20, 3).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    backup(&repo, "v", &src).await;
    let before = mem.list("", &Default::default()).await.unwrap();

    let rf = d.path().join("r.json");
    for (text, needle) in [
        (r#"[{"offset": 0, "length": 3145728}]"#, "past the end"),
        (r#"[{"offset": 0}]"#, "not a JSON array"),
        ("garbage", "not a JSON array"),
    ] {
        std::fs::write(&rf, text).unwrap();
        let mut opts = BackupOptions::new("v", &src);
        opts.changed_ranges = Some(rf.clone());
        let e = backup_volume(repo.clone(), &opts, &ProgressBar::hidden())
            .await
            .unwrap_err();
        assert!(matches!(e, BackupError::Ranges(_)), "{e}");
        assert!(
            e.to_string().contains(needle) && e.to_string().contains("r.json"),
            "{e}"
        );
    }
    assert_eq!(
        mem.list("", &Default::default()).await.unwrap(),
        before,
        "nothing stored"
    );
}

#[tokio::test]
async fn identical_content_is_stored_once_across_volumes() {
    let d = tmp();
    let a = d.path().join("a.img");
    let b = d.path().join("b.img");
    generate_image(&a, 6 << 20, 4).unwrap();
    std::fs::copy(&a, &b).unwrap();
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    let first = backup(&repo, "a", &a).await;
    let second = backup(&repo, "b", &b).await;
    assert!(first.stats.bytes_new > 1 << 20);
    assert_eq!(
        second.stats.bytes_new, 0,
        "volume b adds no data blobs: {:?}",
        second.stats
    );
    assert_eq!(second.stats.blocks_changed, first.stats.blocks_changed);
}

#[tokio::test]
async fn restore_of_a_sparse_volume_stays_sparse() {
    let d = tmp();
    let src = d.path().join("sparse.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&[7u8; 100_000], 10 << 20).unwrap();
    drop(f);
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    let out = backup(&repo, "s", &src).await;
    assert_eq!(
        out.stats.bytes_read,
        2 * (64 << 10),
        "only the two data blocks are read"
    );
    let target = d.path().join("t.img");
    restore(&repo, "s:latest", &target).await;
    assert!(same(&src, &target));
    let m = std::fs::metadata(&target).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "restored file allocates {} bytes",
        m.blocks() * 512
    );
}

#[tokio::test]
async fn in_place_restore_zeroes_blocks_that_became_zero_and_truncates() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 4 << 20, 6).unwrap();
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    backup(&repo, "v", &src).await;
    // A target that is longer and holds garbage everywhere.
    let target = d.path().join("t.img");
    let mut junk = vec![0u8; 5 << 20];
    lifeboat::demo::Rng::new(99).fill(&mut junk);
    std::fs::write(&target, &junk).unwrap();
    let rs = restore(&repo, "v:latest", &target).await;
    assert_eq!(rs.mode, RestoreMode::InPlace);
    assert!(same(&src, &target));
}

#[tokio::test]
async fn unknown_snapshot_and_empty_or_missing_sources_are_errors() {
    let d = tmp();
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    let e = repo
        .resolve_snapshot("nope:latest")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no snapshot matches `nope:latest`"), "{e}");
    assert!(repo.resolve_snapshot("abcdef").await.is_err());
    let empty = d.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let e = backup_volume(
        repo.clone(),
        &BackupOptions::new("v", &empty),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = backup_volume(
        repo.clone(),
        &BackupOptions::new("v", d.path().join("missing")),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("cannot read source"), "{e}");
    let e = backup_volume(
        repo.clone(),
        &BackupOptions::new("bad:name", &empty),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("invalid volume name"), "{e}");
}

#[tokio::test]
async fn changed_ranges_with_growing_volume_reads_the_new_tail() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, (2 << 20) + 5000, 8).unwrap();
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    backup(&repo, "v", &src).await;
    // Grow the volume; report only one small change in the old part.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&[1u8; 10], 100).unwrap();
    f.write_all_at(&[2u8; 70_000], 3 << 20).unwrap();
    drop(f);
    let rf = d.path().join("r.json");
    write_ranges(
        &rf,
        &[ByteRange {
            offset: 100,
            length: 10,
        }],
    )
    .unwrap();
    let mut opts = BackupOptions::new("v", &src);
    opts.changed_ranges = Some(rf);
    backup_volume(repo.clone(), &opts, &ProgressBar::hidden())
        .await
        .unwrap();
    let out = d.path().join("o.img");
    restore(&repo, "v:latest", &out).await;
    assert!(same(&src, &out));
}

#[tokio::test]
async fn an_existing_target_is_refused_without_overwrite() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 1 << 20, 14).unwrap();
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    backup(&repo, "v", &src).await;
    let target = d.path().join("precious.img");
    std::fs::write(&target, b"do not touch").unwrap();
    let (id, snap) = repo.resolve_snapshot("v:latest").await.unwrap();
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
    assert!(matches!(e, RestoreError::TargetExists { .. }), "{e}");
    assert!(e.to_string().contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"do not touch");
}

/// A large, mostly sparse volume (3 block-map segments) with one changed block: the incremental
/// stores that block and one new segment; the two unchanged segments are the parent's.
#[tokio::test]
async fn unchanged_map_segments_are_shared_with_the_parent() {
    let d = tmp();
    let src = d.path().join("big.img");
    let seg_bytes = 4096 * (64u64 << 10); // one segment at 64 KiB blocks: 256 MiB
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(3 * seg_bytes - 4096).unwrap();
    for s in 0..3 {
        f.write_all_at(&[s as u8 + 1; 5000], s * seg_bytes + 12345)
            .unwrap();
    }
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    let first = backup(&repo, "big", &src).await;
    assert_eq!(
        first.stats.blocks_total,
        3 * 4096,
        "the last block is a partial one"
    );
    f.write_all_at(&[9u8; 100], seg_bytes + 77).unwrap();
    drop(f);
    let inc = backup(&repo, "big", &src).await;
    assert_eq!(inc.stats.blocks_changed, 1);
    let (_, s1) = repo
        .resolve_snapshot(&first.snapshot_id.to_hex())
        .await
        .unwrap();
    let (_, s2) = repo
        .resolve_snapshot(&inc.snapshot_id.to_hex())
        .await
        .unwrap();
    assert_eq!(s1.map.len(), 3);
    assert_eq!(s1.map[0], s2.map[0]);
    assert_ne!(s1.map[1], s2.map[1]);
    assert_eq!(s1.map[2], s2.map[2]);
    // New plaintext: one 64 KiB block and one 128 KiB segment, not three segments.
    let segment = 12 + 4096 * 32;
    assert_eq!(
        inc.stats.bytes_new,
        (64 << 10) + segment as u64,
        "{:?}",
        inc.stats
    );
    let out = d.path().join("out.img");
    restore(&repo, "big:latest", &out).await;
    assert!(same(&src, &out));
}

#[tokio::test]
async fn round_trip_s3_through_injected_faults() {
    use lifeboat::store::fault::{Fault, Faulty, Op};
    use lifeboat::store::retry::Retry;
    let (s3, _) = garage().store(StoreOptions::default()).await;
    let faulty = Arc::new(Faulty::new(Arc::new(s3)));
    let store: Arc<dyn Store> = Arc::new(Retry::new(
        faulty.clone(),
        6,
        std::time::Duration::from_millis(5),
    ));
    let repo = new_repo(store).await;
    faulty.inject(Op::Put, "data/", 0, 2, Fault::Transient);
    faulty.inject(Op::Put, "data/", 1, 1, Fault::LoseAnswer);
    faulty.inject(Op::Put, "snapshots/", 0, 1, Fault::LoseAnswer);
    faulty.inject(Op::Get, "data/", 0, 3, Fault::Transient);
    faulty.inject(Op::List, "index/", 0, 1, Fault::Transient);
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 6 << 20, 17).unwrap();
    backup(&repo, "v", &src).await;
    let out = d.path().join("o.img");
    restore(&repo, "v:latest", &out).await;
    assert!(same(&src, &out));
    faulty.clear();
    let r = repo.check(&CheckOptions { read_data: true }).await.unwrap();
    assert!(r.ok() && r.snapshots == 1, "{r:?}");
}
