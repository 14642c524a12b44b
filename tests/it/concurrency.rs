//! Pairs of writing commands at once, as real processes on one local directory repository.
//! Either may be refused as locked (exit 3); neither may corrupt anything: afterwards
//! `repo check --read-data` is clean and every snapshot restores bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use lifeboat::demo::{generate_image, mutate};

use crate::crash::{check_clean, fixture_image, restore_all};
use crate::support::{init_repo, json, lb, ok, run, tmp, Run};

/// Runs both commands at once; both must exit 0 or 3 (refused as locked, retryable).
fn at_once(a: &mut Command, b: &mut Command) -> (Run, Run) {
    let (ra, rb) = both(a, b);
    for r in [&ra, &rb] {
        assert!(
            r.code == 0 || r.code == 3,
            "exit {}: {}\n{}",
            r.code,
            r.stdout,
            r.stderr
        );
        if r.code == 3 {
            assert!(
                r.stderr.contains("lock"),
                "refused, but not as locked: {}",
                r.stderr
            );
        }
    }
    (ra, rb)
}

/// Runs both commands at once and waits for both.
fn both(a: &mut Command, b: &mut Command) -> (Run, Run) {
    let spawn = |c: &mut Command| {
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(a), spawn(b));
    let out = |c: std::process::Child| {
        let o = c.wait_with_output().unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    (out(ca), out(cb))
}

/// The content each snapshot must restore to, by snapshot id.
#[derive(Clone, Default)]
struct Expected(Arc<Mutex<HashMap<String, PathBuf>>>);

impl Expected {
    /// Records a successful `volume backup --json` of `copy` (a frozen copy of its source).
    fn note(&self, r: &Run, copy: &Path) {
        if r.code == 0 {
            let id = json(r)["snapshot_id"].as_str().unwrap().to_string();
            self.0.lock().unwrap().insert(id, copy.to_path_buf());
        }
    }
    fn of(&self, id: &str) -> PathBuf {
        self.0.lock().unwrap()[id].clone()
    }
}

fn volume_backup(repo: &Path, name: &str, src: &Path) -> Command {
    let mut c = lb(repo);
    c.args(["volume", "backup", "--json", "--name", name])
        .arg(src);
    c
}

fn prune(repo: &Path) -> Command {
    let mut c = lb(repo);
    c.args(["prune", "--repack-threshold", "0.1"]);
    c
}

/// Sources a and b, frozen per round (`<name>-<round>.img`).
fn sources(dir: &Path, round: u64) -> (PathBuf, PathBuf) {
    let make = |name: &str, seed: u64| {
        let p = dir.join(format!("{name}-{round}.img"));
        let prev = dir.join(format!("{name}-{}.img", round.wrapping_sub(1)));
        if round > 0 && prev.exists() {
            std::fs::copy(&prev, &p).unwrap();
            mutate(&p, 0.3, 64 << 10, seed + round).unwrap();
        } else {
            generate_image(&p, 4 << 20, seed).unwrap();
        }
        p
    };
    (make("a", 1), make("b", 100))
}

/// Forgets the oldest volume snapshot by deleting its object: its unique blocks become
/// garbage for prune.
fn drop_oldest_snapshot(repo: &Path) {
    let list = json(&ok(run(lb(repo).args(["snapshots", "--json"]))));
    let id = list[0]["id"].as_str().unwrap();
    std::fs::remove_file(repo.join("snapshots").join(id)).unwrap();
}

fn verify(repo: &Path, scratch: &Path, expected: &Expected, what: &str) {
    check_clean(repo, what);
    restore_all(repo, scratch, &|_, id| expected.of(id));
}

#[test]
fn backups_of_different_and_the_same_volume_at_once() {
    let d = tmp();
    let repo = init_repo(d.path());
    let exp = Expected::default();
    for round in 0..3 {
        let (a, b) = sources(d.path(), round);
        let (ra, rb) = at_once(
            &mut volume_backup(&repo, "a", &a),
            &mut volume_backup(&repo, "b", &b),
        );
        assert_eq!((ra.code, rb.code), (0, 0), "shared locks: both run");
        exp.note(&ra, &a);
        exp.note(&rb, &b);
        // The same name twice: two snapshots of one volume, both whole.
        let (ra, rb) = at_once(
            &mut volume_backup(&repo, "a", &a),
            &mut volume_backup(&repo, "a", &b),
        );
        exp.note(&ra, &a);
        exp.note(&rb, &b);
        verify(&repo, d.path(), &exp, &format!("round {round}"));
    }
}

#[test]
fn backup_and_prune_at_once() {
    let d = tmp();
    let repo = init_repo(d.path());
    let exp = Expected::default();
    for round in 0..4 {
        let (a, b) = sources(d.path(), round);
        exp.note(&ok(run(&mut volume_backup(&repo, "a", &a))), &a);
        if round > 0 {
            drop_oldest_snapshot(&repo);
        }
        let (rb, rp) = at_once(&mut volume_backup(&repo, "b", &b), &mut prune(&repo));
        exp.note(&rb, &b);
        let what = format!("round {round}: backup {}, prune {}", rb.code, rp.code);
        verify(&repo, d.path(), &exp, &what);
    }
    // Nothing left behind that a quiet prune cannot finish.
    ok(run(&mut prune(&repo)));
    check_clean(&repo, "after a last prune");
}

#[test]
fn prune_and_prune_at_once() {
    let d = tmp();
    let repo = init_repo(d.path());
    let exp = Expected::default();
    for round in 0..3 {
        let (a, b) = sources(d.path(), round);
        exp.note(&ok(run(&mut volume_backup(&repo, "a", &a))), &a);
        exp.note(&ok(run(&mut volume_backup(&repo, "b", &b))), &b);
        drop_oldest_snapshot(&repo);
        let (r1, r2) = at_once(&mut prune(&repo), &mut prune(&repo));
        if r1.code != 0 && r2.code != 0 {
            // Each saw the other's lock and backed off: allowed; a retry alone runs.
            ok(run(&mut prune(&repo)));
        }
        verify(&repo, d.path(), &exp, &format!("round {round}"));
    }
}

#[test]
fn application_backup_and_forget_at_once() {
    let d = tmp();
    let repo = init_repo(d.path());
    let create = |name: &str| {
        let mut c = lb(&repo);
        c.args(["backup", "create", name, "-n", "pg", "-n", "cassandra"])
            .arg("--cluster-dir")
            .arg(crate::crash::prod());
        c
    };
    ok(run(&mut create("apps-0")));
    for round in 1..4 {
        let mut forget = lb(&repo);
        forget.args(["forget", "--keep-last", "1"]);
        let (rc, rf) = at_once(&mut create(&format!("apps-{round}")), &mut forget);
        let what = format!("round {round}: create {}, forget {}", rc.code, rf.code);
        check_clean(&repo, &what);
        restore_all(&repo, d.path(), &|name, _| fixture_image(name));
        // The newest backup that was created is kept, and restores.
        let list = json(&ok(run(lb(&repo).args(["backup", "list", "--json"]))));
        assert!(!list.as_array().unwrap().is_empty(), "{what}");
    }
}

#[test]
fn key_add_and_key_removes_at_once() {
    let d = tmp();
    let repo = init_repo(d.path());
    let src = d.path().join("v.img");
    generate_image(&src, 1 << 20, 9).unwrap();
    let exp = Expected::default();
    exp.note(&ok(run(&mut volume_backup(&repo, "v", &src))), &src);
    let add = |pw: &str| {
        let mut c = lb(&repo);
        c.env("LIFEBOAT_NEW_PASSWORD", pw).args([
            "repo",
            "key",
            "add",
            "--insecure-fast-kdf",
            "--json",
        ]);
        c
    };
    let opens = |pw: &str| {
        let mut c = lb(&repo);
        c.env("LIFEBOAT_PASSWORD", pw).arg("snapshots");
        run(&mut c).code == 0
    };
    let added = json(&ok(run(&mut add("second"))))["added"]
        .as_str()
        .unwrap()
        .to_string();
    ok(run(&mut add("third")));
    for round in 0..3 {
        let fresh = format!("pw-{round}");
        let mut remove = lb(&repo);
        remove.args(["repo", "key", "remove"]);
        let victim = if round == 0 {
            added.clone()
        } else {
            String::new()
        };
        let (ra, rr) = if victim.is_empty() {
            // Two removals of the same key at once: one wins, the key is gone, `pw` opens.
            let mut other = lb(&repo);
            let third = key_of(&repo, "third");
            other.args(["repo", "key", "remove", &third]);
            remove.arg(&third);
            // The second waits for the first's lock (--lock-wait), then finds the key gone.
            let (ra, rr) = both(&mut other, &mut remove);
            for r in [&ra, &rr] {
                let gone = r.code == 1 && r.stderr.contains("no key");
                assert!(
                    r.code == 0 || r.code == 3 || gone,
                    "exit {}: {}",
                    r.code,
                    r.stderr
                );
            }
            (ra, rr)
        } else {
            remove.arg(&victim);
            at_once(&mut add(&fresh), &mut remove)
        };
        let what = format!("round {round}: {} {}", ra.code, rr.code);
        assert!(opens("pw"), "{what}");
        if victim.is_empty() {
            if ra.code != 0 && rr.code != 0 {
                // Each saw the other's lock and backed off: allowed; a retry alone runs.
                assert!(opens("third"), "{what}");
                ok(run(lb(&repo).args([
                    "repo",
                    "key",
                    "remove",
                    &key_of(&repo, "third"),
                ])));
            }
            assert!(!opens("third"), "{what}: removed by one of the two");
            ok(run(&mut add("third")));
        } else {
            assert_eq!(opens(&fresh), ra.code == 0, "{what}");
            assert_eq!(opens("second"), rr.code != 0, "{what}");
        }
        verify(&repo, d.path(), &exp, &what);
    }
}

/// The id of the key that `password` opens.
fn key_of(repo: &Path, password: &str) -> String {
    let mut c = lb(repo);
    c.env("LIFEBOAT_PASSWORD", password)
        .args(["repo", "key", "list", "--json"]);
    let v = json(&ok(run(&mut c)));
    v.as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Exclusive lockers started together that all wait: each takes the lock in turn (never two
/// at once, counted while held), all within the wait, though every attempt that meets
/// another backs off; and with no wait the refusal is immediate and names the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exclusive_lockers_started_together_all_win_in_turn_when_they_wait() {
    use lifeboat::repository::{LockKind, RepoError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    let repo =
        crate::support::new_repo(Arc::new(lifeboat::store::memory::MemoryStore::new())).await;
    let held = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(6));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (repo, held, most, start) = (repo.clone(), held.clone(), most.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let guard = repo
                .lock_waiting(
                    LockKind::Exclusive,
                    &format!("racer {i}"),
                    Duration::from_secs(60),
                )
                .await?;
            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            held.fetch_sub(1, Ordering::SeqCst);
            guard.release().await?;
            Ok::<_, RepoError>(())
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("every waiting locker gets the lock");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two exclusive holders at once"
    );
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "{:?}",
        began.elapsed()
    );
    assert!(repo.live_locks().await.unwrap().is_empty());

    // Wait zero: the old behaviour, refused at once naming the holder.
    let guard = repo.lock(LockKind::Exclusive, "prune").await.unwrap();
    let t = Instant::now();
    let e = repo
        .lock_waiting(LockKind::Exclusive, "forget", Duration::ZERO)
        .await
        .err()
        .expect("a held exclusive lock refuses");
    assert!(
        matches!(&e, RepoError::Locked { holder } if holder.contains("`prune`")),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A bounded wait that the holder outlasts: refused after the wait, saying so.
    let t = Instant::now();
    let e = repo
        .lock_waiting(LockKind::Shared, "backup", Duration::from_millis(400))
        .await
        .err()
        .expect("still held");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert!(e.to_string().contains("after waiting"), "{e}");
    assert!(e.is_retryable());
    // Released during a wait: taken.
    let waiter = {
        let repo = repo.clone();
        tokio::spawn(async move {
            repo.lock_waiting(LockKind::Shared, "backup", Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    guard.release().await.unwrap();
    waiter
        .await
        .unwrap()
        .expect("taken once released")
        .release()
        .await
        .unwrap();
}
