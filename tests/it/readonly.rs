//! A DR site whose key can only read the bucket (issue #14, point 2), on Garage with a key
//! allowed `--read` only: its readers hold no lock, and what keeps them safe is prune's grace
//! period. The command-line side (restore, standby, drill, check and listings work and write
//! nothing; writers are refused) is in `dr::a_dr_site_whose_key_can_only_read_…`.

use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;
use indicatif::ProgressBar;
use lifeboat::demo::generate_image;
use lifeboat::repository::{CheckOptions, PruneOptions, Repository, DEFAULT_PRUNE_GRACE};
use lifeboat::store::fault::Op;
use lifeboat::store::s3::S3Store;
use lifeboat::store::{Store, StoreOptions};
use lifeboat::volume::restore::{restore_volume, RestoreOptions, RestoreStats};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{garage, new_repo, reopen, tmp, Paused};
use crate::volume::{backup, same};

/// A store that holds its first read of a pack until `go` is notified, notifying `reached`
/// when it gets there: the instant at which a reader has loaded the index and its snapshot and
/// is about to read data.
fn gated(inner: Arc<dyn Store>, reached: Arc<Notify>, go: Arc<Notify>) -> Paused {
    let passed = std::sync::atomic::AtomicBool::new(false);
    Paused {
        inner,
        pause: Box::new(move |op, key| {
            let first = op == Op::Get
                && key.starts_with("data/")
                && !passed.swap(true, std::sync::atomic::Ordering::SeqCst);
            let (reached, go) = (reached.clone(), go.clone());
            first.then(|| {
                async move {
                    reached.notify_one();
                    go.notified().await;
                }
                .boxed()
            })
        }),
    }
}

async fn s3(prefix: &str, read_only: bool) -> Arc<dyn Store> {
    let g = garage();
    let settings = if read_only {
        g.read_only_settings()
    } else {
        g.settings()
    };
    Arc::new(
        S3Store::new(&g.bucket, prefix, settings, StoreOptions::default())
            .await
            .expect("s3 store"),
    )
}

/// One backup on a fresh prefix by the writer; gives (writer, prefix, image).
async fn primary(dir: &Path) -> (Arc<Repository>, String, std::path::PathBuf) {
    let prefix = garage().unique_prefix();
    let writer = new_repo(s3(&prefix, false).await).await;
    let img = dir.join("v.img");
    generate_image(&img, 2 << 20, 5).unwrap();
    backup(&writer, "v", &img).await;
    (writer, prefix, img)
}

/// A reader with the read-only key restores `v:latest` into `out`; once it has loaded the
/// index and the snapshot, and before it reads any pack, the writer forgets the snapshot and
/// prunes with `grace`. Gives the restore's result and the prune's report.
async fn restore_across_a_prune(
    writer: &Arc<Repository>,
    prefix: &str,
    grace: std::time::Duration,
    out: &Path,
) -> (
    Result<RestoreStats, lifeboat::volume::restore::RestoreError>,
    lifeboat::repository::PruneReport,
) {
    let (reached, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let reader = reopen(Arc::new(gated(
        s3(prefix, true).await,
        reached.clone(),
        go.clone(),
    )))
    .await;
    let lock = reader.lock_to_read("restore v").await.expect("reads");
    assert!(lock.is_none(), "a key that can only read takes no lock");
    let (id, snap) = reader.resolve_snapshot("v:latest").await.unwrap();
    let target = out.to_path_buf();
    let restore = tokio::spawn(async move {
        let opts = RestoreOptions {
            overwrite: true,
            ..Default::default()
        };
        restore_volume(reader, id, &snap, &target, &opts, &ProgressBar::hidden()).await
    });
    reached.notified().await;
    let c = CancellationToken::new();
    writer.store().delete(&id.key(), &c).await.unwrap();
    let pruned = writer
        .prune(&PruneOptions {
            grace,
            ..Default::default()
        })
        .await
        .unwrap();
    go.notify_one();
    (restore.await.unwrap(), pruned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_without_a_lock_reads_through_a_prune_within_its_grace_and_not_without_one() {
    let d = tmp();
    let c = CancellationToken::new();

    // With the default grace the packs the prune takes out stay, and the restore is whole.
    let (writer, prefix, img) = primary(d.path()).await;
    let out = d.path().join("out.img");
    let (restored, pruned) =
        restore_across_a_prune(&writer, &prefix, DEFAULT_PRUNE_GRACE, &out).await;
    restored.expect("the restore reads packs kept for the grace period");
    assert!(same(&img, &out), "bit-identical");
    assert!(
        pruned.packs_deferred > 0 && pruned.deferred_bytes > 0,
        "{pruned:?}"
    );
    assert_eq!(
        pruned.bytes_after, pruned.bytes_before,
        "nothing deleted yet: {pruned:?}"
    );
    assert!(pruned.next_release_at.is_some(), "{pruned:?}");
    let store = writer.store();
    assert!(
        store.list("locks/", &c).await.unwrap().is_empty(),
        "the reader wrote no lock"
    );
    // check counts the kept packs rather than warning of them.
    let report = writer
        .check(&CheckOptions { read_data: true })
        .await
        .unwrap();
    assert!(report.ok() && report.warnings.is_empty(), "{report:?}");
    assert_eq!(report.packs_pending, pruned.packs_deferred);
    // Another prune within the grace keeps them; one whose grace is over deletes them.
    let again = writer.prune(&PruneOptions::default()).await.unwrap();
    assert_eq!(
        (again.packs_waiting, again.packs_released),
        (pruned.packs_deferred, 0)
    );
    let released = writer
        .prune(&PruneOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        released.packs_released, pruned.packs_deferred,
        "{released:?}"
    );
    assert!(
        store.list("data/", &c).await.unwrap().is_empty(),
        "no snapshot is left"
    );
    assert!(store.list("pending/", &c).await.unwrap().is_empty());
    let report = writer
        .check(&CheckOptions { read_data: true })
        .await
        .unwrap();
    assert!(report.ok() && report.packs_pending == 0, "{report:?}");

    // Without a grace the same reader finds its packs gone: the grace is what keeps it safe.
    let (writer, prefix, _) = primary(d.path()).await;
    let (restored, pruned) =
        restore_across_a_prune(&writer, &prefix, std::time::Duration::ZERO, &out).await;
    assert!(
        pruned.packs_deleted > 0 && pruned.packs_deferred == 0,
        "{pruned:?}"
    );
    let e = restored.expect_err("its packs were deleted under it");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// The writes a read-only key is refused name the problem and the fix, and store nothing.
#[tokio::test]
async fn a_read_only_key_is_refused_for_writes_and_stores_nothing() {
    let d = tmp();
    let (_writer, prefix, img) = primary(d.path()).await;
    let c = CancellationToken::new();
    let rw = s3(&prefix, false).await;
    let before = rw.list("", &c).await.unwrap();
    let reader = reopen(s3(&prefix, true).await).await;
    let e = lifeboat::volume::backup::backup_volume(
        reader.clone(),
        &lifeboat::volume::backup::BackupOptions::new("v", &img),
        &ProgressBar::hidden(),
    )
    .await
    .expect_err("a backup needs to write");
    let text = e.to_string();
    assert!(
        text.contains("can only read") && text.contains("need credentials that can write"),
        "{text}"
    );
    let e = reader.prune(&PruneOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains("can only read"), "{e}");
    assert_eq!(
        rw.list("", &c).await.unwrap(),
        before,
        "nothing was written"
    );
}
