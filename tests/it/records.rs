//! Records of backups and restores kept by hand: `backup delete` (never a schedule's newest
//! complete backup without --force; --dry-run; --prune; the repository checks clean after),
//! and every `restore create` recorded in the catalog of --state-dir (`restore list`,
//! `restore describe` with each object's result; failures recorded; a restore without a
//! usable state directory still restores); the opt-in unlocked-key cache (Argon2 skipped while
//! it lives, never used when expired, altered, of another password or of a removed key).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::cli::conforms_to_cli_schema;
use crate::support::{json, lb, ok, run, tmp};

fn prod() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clusters/prod")
}

/// `lifeboat` on `repo` with its catalog under `d/state`.
fn lbs(repo: &Path, d: &Path) -> Command {
    let mut c = lb(repo);
    c.arg("--state-dir").arg(d.join("state"));
    c
}

fn backup(repo: &Path, d: &Path, name: &str, schedule: Option<&str>) {
    let mut c = lbs(repo, d);
    c.args(["backup", "create", name, "-n", "pg", "--cluster-dir"])
        .arg(prod());
    if let Some(s) = schedule {
        c.args(["--schedule", s]);
    }
    ok(run(&mut c));
}

fn names(repo: &Path, d: &Path) -> Vec<String> {
    json(&ok(run(lbs(repo, d).args(["backup", "list", "--json"]))))
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn backup_delete_forgets_one_backup_but_not_a_schedules_newest_good_one_unless_forced() {
    let d = tmp();
    let d = d.path();
    let repo = d.join("repo");
    ok(run(lb(&repo).args(["repo", "init", "--insecure-fast-kdf"])));
    backup(&repo, d, "n1", Some("nightly"));
    backup(&repo, d, "n2", Some("nightly"));
    backup(&repo, d, "manual", None);

    // forget's plan in the output vocabulary: by hand and by schedule, each its own group.
    let planned = json(&ok(run(lbs(&repo, d).args([
        "forget",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]))));
    conforms_to_cli_schema("forget.schema.json", &planned);
    let gone: Vec<&str> = planned["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kept_by"].as_array().unwrap().is_empty())
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(gone, ["n1"], "{planned:#}");
    assert!(planned["removed"].is_null());
    assert!(crate::cli::is_ms_utc(
        planned["decisions"][0]["started_at"].as_str().unwrap()
    ));

    // Unknown name: a clear error that says how to see the names.
    let r = run(lbs(&repo, d).args(["backup", "delete", "nope"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("`nope`") && r.stderr.contains("backup list"),
        "{}",
        r.stderr
    );

    // A dry run deletes nothing.
    let dry = json(&ok(run(lbs(&repo, d).args([
        "backup",
        "delete",
        "n1",
        "--dry-run",
        "--json",
    ]))));
    conforms_to_cli_schema("backup-delete.schema.json", &dry);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["backups_removed"], 0);
    assert!(
        dry["freed_bytes"].is_null() && dry["prune"].is_null(),
        "{dry}"
    );
    assert_eq!(names(&repo, d), ["n1", "n2", "manual"]);

    // The newest complete backup of a schedule is refused without --force (usage, exit 2).
    let r = run(lbs(&repo, d).args(["backup", "delete", "n2"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`nightly`") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(names(&repo, d), ["n1", "n2", "manual"]);

    // An older one goes; its data stays until prune.
    let out = ok(run(lbs(&repo, d).args(["backup", "delete", "n1"])));
    assert!(
        out.stdout.contains("until `lifeboat prune`"),
        "{}",
        out.stdout
    );
    assert_eq!(names(&repo, d), ["n2", "manual"]);

    // With --force, the newest good one goes too; --prune reports what it freed.
    let forced =
        json(&ok(run(lbs(&repo, d).args([
            "backup", "delete", "n2", "--force", "--prune", "--json",
        ]))));
    conforms_to_cli_schema("backup-delete.schema.json", &forced);
    assert_eq!(forced["backups_removed"], 1, "{forced}");
    assert_eq!(forced["newest_complete"], true);
    assert_eq!(forced["pruned"], true);
    assert!(forced["freed_bytes"].is_u64(), "{forced}");
    assert_eq!(names(&repo, d), ["manual"]);
    ok(run(lb(&repo).args(["repo", "check", "--read-data"])));
    // What is left still restores.
    ok(run(lbs(&repo, d)
        .args([
            "restore",
            "create",
            "--from-backup",
            "manual",
            "--output-dir",
        ])
        .arg(d.join("out"))));
}

fn restores(repo: &Path, d: &Path) -> Vec<Value> {
    json(&ok(run(lbs(repo, d).args(["restore", "list", "--json"]))))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn every_restore_is_recorded_with_its_objects_results() {
    let d = tmp();
    let d = d.path();
    let repo = d.join("repo");
    ok(run(lb(&repo).args(["repo", "init", "--insecure-fast-kdf"])));
    backup(&repo, d, "apps-1", None);
    assert!(restores(&repo, d).is_empty());

    let out = d.join("out");
    ok(run(lbs(&repo, d)
        .args([
            "restore",
            "create",
            "--from-backup",
            "apps-1",
            "--namespace-mapping",
            "pg:pg-dr",
            "--output-dir",
        ])
        .arg(&out)));
    ok(run(lbs(&repo, d).args([
        "restore",
        "create",
        "--from-backup",
        "apps-1",
        "--dry-run",
    ])));
    let r = run(lbs(&repo, d).args(["restore", "create", "--from-backup", "nope", "--dry-run"]));
    assert_eq!(r.code, 1, "{}", r.stderr);

    let rows = restores(&repo, d);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    conforms_to_cli_schema("restore-list.schema.json", &Value::Array(rows.clone()));
    for r in &rows {
        for t in ["started_at", "ended_at"] {
            assert!(crate::cli::is_ms_utc(r[t].as_str().unwrap()), "{r}");
        }
    }
    let first = &rows[0];
    assert_eq!(first["backup"], "apps-1");
    assert_eq!(first["status"], "complete");
    assert_eq!(first["dry_run"], false);
    assert_eq!(first["target_kind"], "output-dir");
    assert_eq!(first["target"], out.display().to_string());
    assert_eq!(first["options"]["namespace-mapping"], "pg:pg-dr");
    assert_eq!(first["failed"], 0);
    assert!(first["objects"].as_u64().unwrap() > 0, "{first}");
    assert!(first["duration_seconds"].is_number());
    assert!(first["started_at"].as_str().unwrap().ends_with('Z'));
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("apps-1-"), "{id}");
    assert_eq!(rows[1]["dry_run"], true);
    assert_eq!(rows[1]["target_kind"], "none");
    assert_eq!(rows[2]["status"], "failed");
    assert!(
        rows[2]["error"].as_str().unwrap().contains("nope"),
        "{}",
        rows[2]
    );
    assert_ne!(rows[0]["id"], rows[1]["id"], "ids are unique");

    let described = json(&ok(run(
        lbs(&repo, d).args(["restore", "describe", id, "--json"])
    )));
    conforms_to_cli_schema("restore-describe.schema.json", &described);
    let results = described["results"].as_array().unwrap();
    assert_eq!(results.len() as u64, first["objects"].as_u64().unwrap());
    assert!(
        results.iter().any(|o| o["action"] == "created"
            && o["object"]
                .as_str()
                .unwrap()
                .starts_with("Deployment/pg-dr/")),
        "{described:#}"
    );
    let text = ok(run(lbs(&repo, d).args(["restore", "describe", id])));
    assert!(text.stdout.contains("status: complete"), "{}", text.stdout);
    let table = ok(run(lbs(&repo, d).args(["restore", "list"])));
    assert!(
        table.stdout.contains("STATUS") && table.stdout.contains(id),
        "{}",
        table.stdout
    );

    let r = run(lbs(&repo, d).args(["restore", "describe", "nope"]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("restore list"), "{}", r.stderr);

    // No usable state directory: the restore still restores, with a warning.
    let blocked = d.join("not-a-dir");
    std::fs::write(&blocked, "x").unwrap();
    let r = ok(run(lb(&repo)
        .arg("--state-dir")
        .arg(&blocked)
        .args([
            "restore",
            "create",
            "--from-backup",
            "apps-1",
            "--output-dir",
        ])
        .arg(d.join("out2"))));
    assert!(r.stderr.contains("not recorded"), "{}", r.stderr);
    assert!(d.join("out2").read_dir().unwrap().next().is_some());
}

/// `lifeboat snapshots` (its debug lines on) on `repo` with password `pw` and the unlocked-key cache in
/// `cache` for `secs` seconds: its standard error.
fn cached_open(repo: &Path, cache: &Path, pw: &str, secs: &str) -> crate::support::Run {
    run(lb(repo)
        .env("LIFEBOAT_PASSWORD", pw)
        .env("LIFEBOAT_KEY_CACHE", secs)
        .env("LIFEBOAT_KEY_CACHE_DIR", cache)
        .env("LIFEBOAT_LOG", "lifeboat=debug")
        .args(["snapshots"]))
}

const ARGON: &str = "unlocked with Argon2; kept in the key cache";
const CACHED: &str = "unlocked with the key cache";

#[test]
fn the_key_cache_skips_argon2_until_it_expires_and_never_opens_what_it_should_not() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp();
    let repo = crate::support::init_repo(d.path());
    let cache = d.path().join("keys");
    // Without the variable nothing is cached.
    ok(run(lb(&repo).args(["snapshots"])));
    assert!(!cache.exists());

    // The first command pays Argon2 and keeps the key; the second takes it from the cache.
    let first = ok(cached_open(&repo, &cache, "pw", "60"));
    assert!(first.stderr.contains(ARGON), "{}", first.stderr);
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let second = ok(cached_open(&repo, &cache, "pw", "60"));
    assert!(second.stderr.contains(CACHED), "{}", second.stderr);
    assert!(!second.stderr.contains(ARGON), "{}", second.stderr);

    // A wrong password does not open the cached key, and still fails as wrong.
    let wrong = cached_open(&repo, &cache, "not-pw", "60");
    assert_ne!(wrong.code, 0);
    assert!(!wrong.stderr.contains(CACHED), "{}", wrong.stderr);
    assert!(
        wrong.stderr.to_lowercase().contains("password"),
        "{}",
        wrong.stderr
    );

    // An altered entry (its expiry pushed out, or its sealed bytes bent) is not used.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let mut entry: Value = serde_json::from_str(&text).unwrap();
    entry["expires_at"] = Value::from(entry["expires_at"].as_u64().unwrap() + 3600);
    std::fs::write(&files[0], entry.to_string()).unwrap();
    let altered = ok(cached_open(&repo, &cache, "pw", "60"));
    assert!(altered.stderr.contains(ARGON), "{}", altered.stderr);

    // An expired entry is removed and Argon2 runs again.
    std::fs::remove_dir_all(&cache).unwrap();
    let short = ok(cached_open(&repo, &cache, "pw", "1"));
    assert!(short.stderr.contains(ARGON), "{}", short.stderr);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let expired = ok(cached_open(&repo, &cache, "pw", "60"));
    assert!(expired.stderr.contains("expired"), "{}", expired.stderr);
    assert!(expired.stderr.contains(ARGON), "{}", expired.stderr);

    // A removed key's cached unlock opens nothing: a second password is cached, its key
    // removed with the first password, and the second password is then refused.
    let pw2 = d.path().join("pw2");
    std::fs::write(&pw2, "second\n").unwrap();
    ok(run(lb(&repo)
        .args([
            "repo",
            "key",
            "add",
            "--insecure-fast-kdf",
            "--new-password-file",
        ])
        .arg(&pw2)));
    let second_key = ok(cached_open(&repo, &cache, "second", "60"));
    assert!(second_key.stderr.contains(ARGON), "{}", second_key.stderr);
    let keys = json(&ok(run(lb(&repo)
        .env("LIFEBOAT_PASSWORD", "second")
        .args(["repo", "key", "list", "--json"]))));
    let id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(run(lb(&repo).args(["repo", "key", "remove", &id])));
    let removed = cached_open(&repo, &cache, "second", "60");
    assert_ne!(removed.code, 0, "{}", removed.stderr);
    assert!(!removed.stderr.contains(CACHED), "{}", removed.stderr);

    // A bad value is a usage error naming the variable.
    let bad = cached_open(&repo, &cache, "pw", "soon");
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("LIFEBOAT_KEY_CACHE"), "{}", bad.stderr);
}
