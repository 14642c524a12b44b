//! A mover Job's changed blocks (`volume::mover`): the CSI SnapshotMetadata service is asked
//! only when the volume's newest snapshot was read from the base, and every failure falls
//! back to comparing hashes (None), here without any service.

use std::path::Path;
use std::sync::Arc;

use indicatif::ProgressBar;
use lifeboat::demo::generate_image;
use lifeboat::repository::Repository;
use lifeboat::store::memory::MemoryStore;
use lifeboat::volume::backup::{backup_volume, BackupOptions};
use lifeboat::volume::mover::{changed_ranges, parent_is_base, CsiDelta};
use tokio_util::sync::CancellationToken;

use crate::support::{new_repo, tmp};

const VOLUME: &str = "pvc/db/data";
const PARENT: &str = "VolumeSnapshot db/snap-1";

/// A repository holding one snapshot of VOLUME labelled `label`.
async fn repo_with_snapshot(dir: &Path, label: &str) -> Arc<Repository> {
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    let image = dir.join("v.img");
    generate_image(&image, 1 << 20, 5).unwrap();
    let mut o = BackupOptions::new(VOLUME, &image);
    o.label = Some(label.to_string());
    backup_volume(repo.clone(), &o, &ProgressBar::hidden())
        .await
        .unwrap();
    repo
}

fn delta(token_file: &Path) -> CsiDelta {
    CsiDelta {
        // Nothing listens here: reaching the call would fail too, but later and differently.
        address: "127.0.0.1:9".into(),
        ca: "not a CA".into(),
        token_file: token_file.to_path_buf(),
        namespace: "db".into(),
        base: "snap-handle-1".into(),
        target: "snap-2".into(),
        parent: PARENT.into(),
    }
}

#[tokio::test]
async fn a_parent_not_read_from_the_base_means_comparing_hashes() {
    let d = tmp();
    let token = d.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let repo = repo_with_snapshot(d.path(), "VolumeSnapshot db/another").await;
    assert!(parent_is_base(&repo, VOLUME, PARENT).await.is_err());
    let c = CancellationToken::new();
    let why = changed_ranges(&repo, VOLUME, &delta(&token), &c)
        .await
        .unwrap_err();
    assert!(
        why.contains("was not read from the base") && why.contains("VolumeSnapshot db/another"),
        "says why: {why}"
    );
    // No snapshot of the volume at all: no parent to trust either.
    assert!(parent_is_base(&repo, "pvc/db/other", PARENT).await.is_err());
}

#[tokio::test]
async fn an_unreadable_token_means_comparing_hashes() {
    let d = tmp();
    let repo = repo_with_snapshot(d.path(), PARENT).await;
    assert!(parent_is_base(&repo, VOLUME, PARENT).await.is_ok());
    let c = CancellationToken::new();
    let missing = d.path().join("no-token");
    let why = changed_ranges(&repo, VOLUME, &delta(&missing), &c)
        .await
        .unwrap_err();
    assert!(
        why.contains("cannot read the ServiceAccount token"),
        "{why}"
    );
}

#[tokio::test]
async fn a_service_that_cannot_be_reached_means_comparing_hashes() {
    let d = tmp();
    let repo = repo_with_snapshot(d.path(), PARENT).await;
    let token = d.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let c = CancellationToken::new();
    assert!(changed_ranges(&repo, VOLUME, &delta(&token), &c)
        .await
        .is_err());
}
