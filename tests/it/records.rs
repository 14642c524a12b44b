//! Records of backups and restores kept by hand: `backup delete` (never a schedule's newest
//! complete backup without --force; --dry-run; --prune; the repository checks clean after),
//! and every `restore create` recorded in the catalog of --state-dir (`restore list`,
//! `restore describe` with each object's result; failures recorded; a restore without a
//! usable state directory still restores).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

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
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["backups_removed"], 0);
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
    assert_eq!(forced["backups_removed"], 1, "{forced}");
    assert_eq!(forced["newest_complete"], true);
    assert_eq!(forced["pruned"], true);
    assert!(forced["bytes_freed"].is_u64(), "{forced}");
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
