//! Writing commands killed part way, each followed by `repo check --read-data`, restores of
//! every kept snapshot compared bit for bit, and the next run of the killed command.
//!
//! Covered elsewhere: volume backup and prune at every write or delete (`repository.rs`), a
//! standby apply at its failpoints (`dr.rs`). Here: forget at every delete, key add and remove
//! at every write and delete, and, as real processes killed with SIGKILL at many moments,
//! restore in place and catalog rebuild.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lifeboat::app::record::list_backups;
use lifeboat::app::retention::{forget, plan, Retain};
use lifeboat::demo::{generate_image, mutate};
use lifeboat::format::KdfParams;
use lifeboat::repository::Repository;
use lifeboat::store::fault::{Fault, Faulty, Op};
use lifeboat::store::local::LocalStore;
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::Store;
use tokio_util::sync::CancellationToken;

use crate::support::{files, init_repo, json, lb, new_repo, ok, reopen, run, tmp, PASSWORD};
use crate::volume::{backup, restore, same};

pub fn prod() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clusters/prod")
}

pub fn copy_dir(from: &Path, to: &Path) {
    for f in files(from) {
        let t = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(t.parent().unwrap()).unwrap();
        std::fs::copy(&f, &t).unwrap();
    }
}

/// The crashed holder is this test process, which lives on: its locks stay until they
/// expire. Remove them as time would.
pub fn clear_locks(repo: &Path) {
    if let Ok(rd) = std::fs::read_dir(repo.join("locks")) {
        for e in rd {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
}

/// `repo check --read-data` finds nothing wrong.
pub fn check_clean(repo: &Path, what: &str) {
    let r = run(lb(repo).args(["repo", "check", "--read-data"]));
    assert!(
        r.code == 0 && r.stdout.contains("no damage found"),
        "{what}: exit {}\n{}\n{}",
        r.code,
        r.stdout,
        r.stderr
    );
}

/// Every snapshot of the repository restored and compared with `expected(name, id)`.
pub fn restore_all(repo: &Path, scratch: &Path, expected: &dyn Fn(&str, &str) -> PathBuf) {
    let list = json(&ok(run(lb(repo).args(["snapshots", "--json"]))));
    for s in list.as_array().unwrap() {
        let (id, name) = (s["id"].as_str().unwrap(), s["name"].as_str().unwrap());
        let out = scratch.join(format!("restored-{id}"));
        let _ = std::fs::remove_file(&out);
        ok(run(lb(repo).args(["volume", "restore", id]).arg(&out)));
        assert!(same(&expected(name, id), &out), "snapshot {id} ({name})");
        std::fs::remove_file(&out).unwrap();
    }
}

/// An application backup's volume snapshot `pvc/<ns>/<pvc>` holds the fixture's image.
pub fn fixture_image(name: &str) -> PathBuf {
    let rest = name.strip_prefix("pvc/").expect("an application volume");
    let (ns, pvc) = rest.split_once('/').unwrap();
    prod().join(format!("volumes/{ns}/{pvc}.img"))
}

fn backup_create(repo: &Path, name: &str) {
    ok(run(lb(repo)
        .args(["backup", "create", name, "-n", "pg", "-n", "cassandra"])
        .arg("--cluster-dir")
        .arg(prod())));
}

fn backup_names(repo: &Path) -> Vec<String> {
    let v = json(&ok(run(lb(repo).args(["backup", "list", "--json"]))));
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// A forget that dies after any number of its deletes loses nothing it keeps: the kept
/// backup restores bit-identical, check is clean, and the next forget finishes the job,
/// leaving no volume snapshot that no backup references.
#[tokio::test]
async fn a_forget_interrupted_at_any_delete_keeps_what_it_keeps() {
    let d = tmp();
    let repo = init_repo(d.path());
    backup_create(&repo, "apps-1");
    backup_create(&repo, "apps-2");
    let mut crashes = 0;
    for crash_after in 0u64.. {
        let copy = d.path().join(format!("crash-{crash_after}"));
        copy_dir(&repo, &copy);
        let faulty = Arc::new(Faulty::new(Arc::new(LocalStore::new(&copy))));
        faulty.inject(Op::Delete, "", crash_after, u64::MAX, Fault::Permanent);
        let r = Repository::open(faulty, b"pw", None, CancellationToken::new())
            .await
            .unwrap();
        let backups = list_backups(&r).await.unwrap();
        let keep_last = Retain {
            last: 1,
            ..Retain::default()
        };
        let decisions = plan(&backups, &|_| keep_last, None);
        if forget(&r, &backups, &decisions).await.is_ok() {
            break;
        }
        crashes += 1;
        clear_locks(&copy);
        let what = format!("forget crashed after {crash_after} deletes");
        check_clean(&copy, &what);
        assert!(backup_names(&copy).contains(&"apps-2".into()), "{what}");
        restore_all(&copy, d.path(), &|name, _| fixture_image(name));
        ok(run(lb(&copy).args(["forget", "--keep-last", "1"])));
        assert_eq!(backup_names(&copy), ["apps-2"], "{what}");
        check_clean(&copy, &what);
        // No volume snapshot is left that no backup references (its data would never be
        // pruned), nor an intent.
        let r = Repository::open(
            Arc::new(LocalStore::new(&copy)),
            b"pw",
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let named: BTreeSet<String> = list_backups(&r)
            .await
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.volumes.iter().map(|v| v.snapshot.to_hex()))
            .collect();
        let stored: BTreeSet<String> = r
            .list_snapshots()
            .await
            .unwrap()
            .iter()
            .map(|(id, _)| id.to_hex())
            .collect();
        assert_eq!(stored, named, "{what}: orphan snapshots");
        assert!(
            !copy.join("forgets").exists() || files(&copy.join("forgets")).is_empty(),
            "{what}"
        );
        std::fs::remove_dir_all(&copy).unwrap();
    }
    assert!(crashes >= 3, "crash points exercised: {crashes}");
}

async fn copy_store(from: &MemoryStore) -> MemoryStore {
    let c = CancellationToken::new();
    let to = MemoryStore::new();
    for o in from.list("", &c).await.unwrap() {
        to.put(&o.key, from.get(&o.key, &c).await.unwrap(), &c)
            .await
            .unwrap();
    }
    to
}

async fn opens(store: &MemoryStore, password: &[u8]) -> bool {
    Repository::open(
        Arc::new(store.clone()),
        password,
        None,
        CancellationToken::new(),
    )
    .await
    .is_ok()
}

/// `repo key add` and `repo key remove` killed at each of their writes and deletes (lock
/// included): some password always opens the repository, the data is untouched, and the
/// next run of the command succeeds.
#[tokio::test]
async fn key_add_and_remove_interrupted_at_any_write_keep_the_repository_open() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 1 << 20, 5).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    backup(&repo, "v", &src).await;
    let second_id = repo
        .add_key(b"second", KdfParams::INSECURE_FAST)
        .await
        .unwrap();
    let mut crashes = 0;
    for (op, removing) in [
        (Op::Put, false),
        (Op::Put, true),
        (Op::Delete, true),
        (Op::Delete, false),
    ] {
        for crash_after in 0u64.. {
            let copy = copy_store(&mem).await;
            let faulty = Arc::new(Faulty::new(Arc::new(copy.clone())));
            faulty.inject(op, "", crash_after, u64::MAX, Fault::Permanent);
            let r = reopen(faulty).await;
            let done = if removing {
                r.remove_key(&second_id.to_hex()).await.is_ok()
            } else {
                r.add_key(b"third", KdfParams::INSECURE_FAST).await.is_ok()
            };
            if done {
                break;
            }
            crashes += 1;
            let what = format!("{op:?} crash after {crash_after} (removing: {removing})");
            for l in copy
                .list("locks/", &CancellationToken::new())
                .await
                .unwrap()
            {
                copy.delete(&l.key, &CancellationToken::new())
                    .await
                    .unwrap();
            }
            assert!(opens(&copy, PASSWORD).await, "{what}");
            let r = reopen(Arc::new(copy.clone())).await;
            let report = r
                .check(&lifeboat::repository::CheckOptions { read_data: true })
                .await
                .unwrap();
            assert!(report.ok(), "{what}: {:?}", report.errors);
            let out = d.path().join("out.img");
            let _ = std::fs::remove_file(&out);
            restore(&r, "v:latest", &out).await;
            assert!(same(&src, &out), "{what}");
            if removing {
                // Killed after its delete: the key is gone already, and the rerun says so.
                match r.remove_key(&second_id.to_hex()).await {
                    Ok(_) | Err(lifeboat::repository::RepoError::KeyNotFound { .. }) => {}
                    Err(e) => panic!("{what}: {e}"),
                }
                assert!(!opens(&copy, b"second").await, "{what}");
            } else {
                r.add_key(b"third", KdfParams::INSECURE_FAST).await.unwrap();
                assert!(opens(&copy, b"third").await, "{what}");
            }
            assert!(opens(&copy, PASSWORD).await, "{what}");
        }
    }
    assert!(crashes >= 3, "crash points exercised: {crashes}");
}

/// Starts `cmd`, SIGKILLs it after `after` (when it still runs); true when it was killed.
fn kill_after(cmd: &mut Command, after: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let running = child.try_wait().unwrap().is_none();
    if running {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    running
}

/// Delays from 0 to about a second, denser at the start.
fn moments() -> impl Iterator<Item = Duration> {
    [0u64, 5, 15, 30, 60, 100, 160, 250, 400, 650, 1000]
        .into_iter()
        .map(Duration::from_millis)
}

/// `volume restore --overwrite` killed at many moments: the repository is untouched and the
/// next in-place restore brings the target to the snapshot, bit for bit.
#[test]
fn a_restore_in_place_killed_at_any_moment_is_finished_by_the_next() {
    let d = tmp();
    let repo = init_repo(d.path());
    let src = d.path().join("v.img");
    generate_image(&src, 24 << 20, 7).unwrap();
    let v = json(&ok(run(lb(&repo)
        .args(["volume", "backup", "--json", "--name", "v"])
        .arg(&src))));
    let first = v["snapshot_id"].as_str().unwrap().to_string();
    let original = d.path().join("original.img");
    std::fs::copy(&src, &original).unwrap();
    mutate(&src, 0.5, 64 << 10, 3).unwrap();
    ok(run(lb(&repo)
        .args(["volume", "backup", "--name", "v"])
        .arg(&src)));
    let target = d.path().join("target.img");
    std::fs::copy(&src, &target).unwrap();
    let mut killed = 0;
    for at in moments() {
        let restore = || {
            let mut c = lb(&repo);
            c.args(["volume", "restore", &first, "--overwrite"])
                .arg(&target);
            c
        };
        if kill_after(&mut restore(), at) {
            killed += 1;
        }
        let what = format!("killed after {at:?}");
        check_clean(&repo, &what);
        ok(run(&mut restore()));
        assert!(same(&original, &target), "{what}");
        // Back to the newer state for the next round (itself an in-place restore).
        ok(run(lb(&repo)
            .args(["volume", "restore", "v:latest", "--overwrite"])
            .arg(&target)));
        assert!(same(&src, &target), "{what}");
    }
    assert!(killed >= 3, "kills that landed mid-restore: {killed}");
    restore_all(&repo, d.path(), &|_, id| {
        if id == first {
            original.clone()
        } else {
            src.clone()
        }
    });
}

/// `catalog rebuild` killed at many moments: the catalog stays readable and the next rebuild
/// recreates it from the bucket.
#[test]
fn a_catalog_rebuild_killed_at_any_moment_is_finished_by_the_next() {
    let d = tmp();
    let repo = init_repo(d.path());
    let state = d.path().join("state");
    backup_create(&repo, "apps-1");
    backup_create(&repo, "apps-2");
    let rebuild = || {
        let mut c = lb(&repo);
        c.arg("--state-dir")
            .arg(&state)
            .args(["catalog", "rebuild", "--json"]);
        c
    };
    let mut killed = 0;
    for at in moments().take(7) {
        if kill_after(&mut rebuild(), at) {
            killed += 1;
        }
        let what = format!("killed after {at:?}");
        let v = json(&ok(run(&mut rebuild())));
        assert_eq!(v["backups"], 2, "{what}: {v}");
        assert_eq!(v["snapshots"], 8, "{what}: {v}");
        check_clean(&repo, &what);
    }
    assert!(killed >= 2, "kills that landed mid-rebuild: {killed}");
    restore_all(&repo, d.path(), &|name, _| fixture_image(name));
}
