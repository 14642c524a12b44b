//! Application-consistent backups: pre and post rules around one group snapshot of every
//! volume, in a cluster directory whose "pods" run their actions as local shell commands.
//! Three pods, three volumes; the pre actions write a first marker into their volume, the post
//! actions a second one: every restored volume must carry the first and none the second.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{init_repo, json, lb, ok, run, tmp};

const PODS: [&str; 3] = ["db-0", "db-1", "db-2"];
const PRE_AT: u64 = 1 << 20;
const POST_AT: u64 = (1 << 20) + (64 << 10);
const HOLD_AT: u64 = (1 << 20) + (128 << 10);
const VOLUME: u64 = 3 << 20;

/// A cluster directory with namespace `db`: pods db-0..2 (label app=db, container db), one
/// bound claim each, and their volume files.
pub(crate) fn make_cluster(root: &Path) {
    let res = root.join("resources/db");
    std::fs::create_dir_all(&res).unwrap();
    std::fs::create_dir_all(root.join("volumes/db")).unwrap();
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: db, uid: 0a0a0a0a-0000-4000-8000-000000000001, resourceVersion: \"10\"}\nstatus: {phase: Active}\n",
    );
    for (i, pod) in PODS.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: db\n  labels: {{app: db}}\n  uid: 0b0b0b0b-0000-4000-8000-00000000000{i}\n  resourceVersion: \"2{i}\"\nspec:\n  containers:\n  - {{name: db, image: db:1}}\n  - {{name: metrics, image: exporter:1}}\n  volumes:\n  - name: data\n    persistentVolumeClaim: {{claimName: data-{pod}}}\nstatus: {{phase: Running}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data-{pod}\n  namespace: db\n  uid: 0c0c0c0c-0000-4000-8000-00000000000{i}\n  resourceVersion: \"3{i}\"\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 3Mi}}}}\n  volumeName: pv-{pod}\nstatus: {{phase: Bound}}\n"
        ));
        let f = std::fs::File::create(volume(root, pod)).unwrap();
        f.set_len(VOLUME).unwrap();
        f.write_all_at(format!("volume of {pod}\n").as_bytes(), 0)
            .unwrap();
    }
    std::fs::write(res.join("app.yaml"), yaml).unwrap();
}

pub(crate) fn volume(root: &Path, pod: &str) -> PathBuf {
    root.join(format!("volumes/db/data-{pod}.img"))
}

fn read_at(path: &Path, at: u64, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    buf
}

fn marker(path: &Path, at: u64) -> String {
    String::from_utf8_lossy(&read_at(path, at, 16))
        .trim_end_matches('\0')
        .to_string()
}

/// Writes `TEXT-<pod>` at `at` in the pod's volume (what an application would do).
fn write_marker(text: &str, at: u64) -> String {
    format!(
        "printf {text}-$LIFEBOAT_POD | dd of=volumes/$LIFEBOAT_NAMESPACE/data-$LIFEBOAT_POD.img bs=1 seek={at} conv=notrunc 2>/dev/null"
    )
}

fn rule(
    dir: &Path,
    file: &str,
    name: &str,
    on_error: &str,
    timeout: &str,
    actions: &[&str],
) -> PathBuf {
    let mut text = format!(
        "apiVersion: lifeboat.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}}}\nspec:\n  rules:\n  - podSelector: {{app: db}}\n    container: db\n    actions:\n"
    );
    for a in actions {
        let background = a.contains("${WAIT_CMD}");
        text.push_str(&format!(
            "    - type: command\n      value: {}\n      background: {background}\n",
            serde_json::to_string(a).unwrap()
        ));
    }
    text.push_str(&format!("  onError: {on_error}\n  timeout: {timeout}\n"));
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// Pre actions of different lengths, each writing the first marker.
fn pre_rule(dir: &Path) -> PathBuf {
    let pre = format!(
        "case $LIFEBOAT_POD in db-0) sleep 0.1;; db-1) sleep 0.5;; *) sleep 1;; esac; {}",
        write_marker("PRE", PRE_AT)
    );
    rule(dir, "pre.yaml", "quiesce", "Abort", "30s", &[&pre])
}

fn post_rule(dir: &Path) -> PathBuf {
    rule(
        dir,
        "post.yaml",
        "resume",
        "Abort",
        "30s",
        &[&write_marker("POST", POST_AT)],
    )
}

fn backup(repo: &Path, cluster: &Path, name: &str, rules: &[(&str, &Path)]) -> crate::support::Run {
    let mut c = lb(repo);
    c.args([
        "backup",
        "create",
        name,
        "-n",
        "db",
        "--json",
        "--cluster-dir",
    ])
    .arg(cluster);
    for (flag, file) in rules {
        c.arg(flag).arg(file);
    }
    run(&mut c)
}

/// Runs the marker backup in a cluster directory at `root`, restores it into a second cluster
/// directory and checks every volume; returns the snapshot method each volume used.
pub fn markers_in_and_out(root: &Path, scratch: &Path) -> Vec<String> {
    make_cluster(root);
    let repo = init_repo(scratch);
    let (pre, post) = (pre_rule(scratch), post_rule(scratch));
    let out = json(&ok(backup(
        &repo,
        root,
        "db-1",
        &[("--pre-rule", &pre), ("--post-rule", &post)],
    )));

    // The live volumes got both markers.
    for pod in PODS {
        assert_eq!(marker(&volume(root, pod), PRE_AT), format!("PRE-{pod}"));
        assert_eq!(marker(&volume(root, pod), POST_AT), format!("POST-{pod}"));
    }
    // The record: every pre action ended before the first post action started.
    let rules = out["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 6, "{out:#}");
    let t = |r: &Value, f: &str| r[f].as_str().unwrap().to_string();
    let last_pre_end = rules
        .iter()
        .filter(|r| r["phase"] == "pre")
        .map(|r| t(r, "ended_at"))
        .max()
        .unwrap();
    let first_post = rules
        .iter()
        .filter(|r| r["phase"] == "post")
        .map(|r| t(r, "started_at"))
        .min()
        .unwrap();
    assert!(last_pre_end <= first_post, "{out:#}");
    assert!(
        rules
            .iter()
            .all(|r| r["outcome"] == "succeeded" && r["exit_code"] == 0),
        "{out:#}"
    );
    assert!(rules.iter().all(|r| r["container"] == "db"));
    assert_eq!(out["volumes"].as_array().unwrap().len(), 3);
    assert!(
        !root
            .join(".lifeboat/snapshots")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "copies removed"
    );

    // Restore into another cluster directory: the data comes with the claims.
    let target = scratch.join("dr");
    ok(run(lb(&repo)
        .args([
            "restore",
            "create",
            "--from-backup",
            "db-1",
            "--cluster-dir",
        ])
        .arg(&target)));
    for pod in PODS {
        let v = volume(&target, pod);
        assert_eq!(std::fs::metadata(&v).unwrap().len(), VOLUME);
        assert_eq!(
            marker(&v, PRE_AT),
            format!("PRE-{pod}"),
            "first marker in {pod}"
        );
        assert_eq!(marker(&v, POST_AT), "", "no second marker in {pod}");
        assert_eq!(
            read_at(&v, 0, 14),
            format!("volume of {pod}").as_bytes()[..14]
        );
    }
    ok(run(lb(&repo).args(["repo", "check", "--read-data"])));
    out["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["method"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_restored_volume_has_the_pre_marker_and_none_the_post_marker() {
    let d = tmp();
    let root = d.path().join("cluster");
    markers_in_and_out(&root, d.path());
}

#[test]
fn a_failing_pre_action_aborts_records_nothing_and_still_runs_every_post_action() {
    let d = tmp();
    let root = d.path().join("cluster");
    make_cluster(&root);
    let repo = init_repo(d.path());
    let pre = rule(
        d.path(),
        "pre.yaml",
        "quiesce",
        "Abort",
        "30s",
        &["if [ $LIFEBOAT_POD = db-1 ]; then echo boom >&2; exit 3; fi; echo flushed"],
    );
    let post = post_rule(d.path());
    let r = backup(
        &repo,
        &root,
        "db-1",
        &[("--pre-rule", &pre), ("--post-rule", &post)],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    for want in [
        "pre rule failed",
        "db/db-1",
        "container db",
        "exit 3",
        "boom",
    ] {
        assert!(r.stderr.contains(want), "want `{want}` in: {}", r.stderr);
    }
    for pod in PODS {
        assert_eq!(
            marker(&volume(&root, pod), POST_AT),
            format!("POST-{pod}"),
            "post ran in {pod}"
        );
    }
    let list = json(&ok(run(lb(&repo).args(["backup", "list", "--json"]))));
    assert_eq!(list, serde_json::json!([]), "no backup recorded");
    let snaps = json(&ok(run(lb(&repo).args(["snapshots", "--json"]))));
    assert_eq!(snaps, serde_json::json!([]), "no volume snapshot used");
    // The name is still free: the same backup succeeds once the rule does.
    let pre = pre_rule(d.path());
    ok(backup(
        &repo,
        &root,
        "db-1",
        &[("--pre-rule", &pre), ("--post-rule", &post)],
    ));
}

#[test]
fn a_background_action_holds_through_the_snapshot_and_is_stopped_after_the_post_rules() {
    let d = tmp();
    let root = d.path().join("cluster");
    make_cluster(&root);
    let repo = init_repo(d.path());
    // Holds after writing its marker; when released, leaves a file behind.
    let hold = format!(
        "{}; ${{WAIT_CMD}}; touch released-$LIFEBOAT_POD",
        write_marker("HOLD", HOLD_AT)
    );
    let pre = rule(d.path(), "pre.yaml", "lock", "Abort", "30s", &[&hold]);
    // The post rule sees whether the hold is still in place.
    let post = rule(
        d.path(),
        "post.yaml",
        "unlock",
        "Abort",
        "30s",
        &["if [ -e released-$LIFEBOAT_POD ]; then echo released > post-$LIFEBOAT_POD; else echo held > post-$LIFEBOAT_POD; fi"],
    );
    let out = json(&ok(backup(
        &repo,
        &root,
        "b",
        &[("--pre-rule", &pre), ("--post-rule", &post)],
    )));
    for pod in PODS {
        assert_eq!(
            std::fs::read_to_string(root.join(format!("post-{pod}")))
                .unwrap()
                .trim(),
            "held",
            "the background action in {pod} still held when the post rule ran"
        );
        assert!(
            root.join(format!("released-{pod}")).exists(),
            "{pod} released after"
        );
    }
    let bg: Vec<&Value> = out["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["background"] == true)
        .collect();
    assert_eq!(bg.len(), 3);
    assert!(bg.iter().all(|r| r["outcome"] == "succeeded"), "{out:#}");
    let target = d.path().join("dr");
    ok(run(lb(&repo)
        .args(["restore", "create", "--from-backup", "b", "--cluster-dir"])
        .arg(&target)));
    for pod in PODS {
        assert_eq!(
            marker(&volume(&target, pod), HOLD_AT),
            format!("HOLD-{pod}")
        );
    }
}

#[test]
fn a_timeout_aborts_or_continues_as_the_rule_says() {
    let d = tmp();
    let root = d.path().join("cluster");
    make_cluster(&root);
    let repo = init_repo(d.path());
    let post = post_rule(d.path());
    let slow = "if [ $LIFEBOAT_POD = db-2 ]; then sleep 30; fi";
    let pre = rule(d.path(), "pre.yaml", "slow", "Abort", "1s", &[slow]);
    let started = Instant::now();
    let r = backup(
        &repo,
        &root,
        "t",
        &[("--pre-rule", &pre), ("--post-rule", &post)],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout fired"
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("db/db-2") && r.stderr.contains("timed-out"),
        "{}",
        r.stderr
    );
    assert_eq!(marker(&volume(&root, "db-2"), POST_AT), "POST-db-2");

    let pre = rule(d.path(), "pre.yaml", "slow", "Continue", "1s", &[slow]);
    let out = json(&ok(backup(
        &repo,
        &root,
        "t",
        &[("--pre-rule", &pre), ("--post-rule", &post)],
    )));
    let warnings = out["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{out:#}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.contains("db/db-2") && w.contains("timed-out") && w.contains("Continue"),
        "{w}"
    );
    let desc = ok(run(lb(&repo).args(["backup", "describe", "t"])));
    assert!(desc.stdout.contains("timed-out"), "{}", desc.stdout);
}

#[test]
fn bad_rule_files_are_refused_before_anything_runs() {
    let d = tmp();
    let root = d.path().join("cluster");
    make_cluster(&root);
    let repo = init_repo(d.path());
    let bad = d.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: lifeboat.dev/v1alpha1\nkind: Rule\nmetadata: {name: r}\nspec:\n  rules:\n  - podSelector: {app: db}\n    actions:\n    - {type: command, value: 'touch ran'}\n  timeout: 25 hours\n",
    )
    .unwrap();
    let r = backup(&repo, &root, "x", &[("--pre-rule", &bad)]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("bad.yaml") && r.stderr.contains("spec.timeout"),
        "{}",
        r.stderr
    );
    assert!(!root.join("ran").exists());
    let r = backup(
        &repo,
        &root,
        "x",
        &[("--pre-rule", &d.path().join("missing.yaml"))],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("missing.yaml"), "{}", r.stderr);
}

#[test]
fn volumes_can_be_left_out_and_a_claim_without_data_is_a_recorded_failure() {
    let d = tmp();
    let root = d.path().join("cluster");
    make_cluster(&root);
    let repo = init_repo(d.path());
    let out = json(&ok(run(lb(&repo)
        .args([
            "backup",
            "create",
            "cfg",
            "-n",
            "db",
            "--include-volumes=false",
            "--json",
            "--cluster-dir",
        ])
        .arg(&root))));
    assert_eq!(out["volumes"], serde_json::json!([]));
    std::fs::remove_file(volume(&root, "db-1")).unwrap();
    let r = run(lb(&repo)
        .args(["backup", "create", "data", "-n", "db", "--cluster-dir"])
        .arg(&root));
    assert_eq!(r.code, 1, "partially failed: {}", r.stderr);
    assert!(
        r.stdout
            .contains("volume data of PersistentVolumeClaim db/data-db-1"),
        "{}",
        r.stdout
    );
    let desc = json(&ok(run(
        lb(&repo).args(["backup", "describe", "data", "--json"])
    )));
    assert_eq!(desc["volumes"].as_array().unwrap().len(), 2);
}

#[test]
fn an_incremental_application_backup_stores_only_the_changed_blocks() {
    let d = tmp();
    let root = d.path().join("cluster");
    make_cluster(&root);
    let repo = init_repo(d.path());
    ok(backup(&repo, &root, "one", &[]));
    std::fs::OpenOptions::new()
        .write(true)
        .open(volume(&root, "db-0"))
        .unwrap()
        .write_all_at(&[7u8; 100], 2 << 20)
        .unwrap();
    let snaps = |name: &str| {
        let s = json(&ok(run(
            lb(&repo).args(["backup", "describe", name, "--json"])
        )));
        s["volumes"].clone()
    };
    ok(backup(&repo, &root, "two", &[]));
    let all = json(&ok(run(lb(&repo).args(["snapshots", "--json"]))));
    let two: Vec<String> = snaps("two")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["snapshot_id"].as_str().unwrap().to_string())
        .collect();
    let new_bytes: u64 = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| two.contains(&s["id"].as_str().unwrap().to_string()))
        .map(|s| s["new_bytes"].as_u64().unwrap())
        .sum();
    // One 64 KiB block changed (plus at most a map segment each).
    assert!(new_bytes <= (64 << 10) * 2, "{new_bytes} new bytes");
    assert!(new_bytes >= 64 << 10, "{new_bytes} new bytes");
}

#[test]
fn the_example_rules_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/rules");
    let mut names = Vec::new();
    for f in crate::support::files(&dir) {
        let rules = lifeboat::hooks::load_rules(&f).unwrap_or_else(|e| panic!("{e}"));
        names.extend(
            rules
                .into_iter()
                .map(|r| (r.name, r.items[0].actions[0].background)),
        );
    }
    names.sort();
    assert_eq!(
        names,
        vec![
            ("cassandra-postsnap".to_string(), false),
            ("cassandra-presnap".to_string(), false),
            ("mysql-read-lock".to_string(), true)
        ]
    );
}

#[test]
fn actions_get_a_clean_environment_without_lifeboats_secrets() {
    let d = tmp();
    let root = d.path().join("cluster");
    make_cluster(&root);
    let repo = init_repo(d.path());
    // Each action keeps its whole environment in a file and prints it (into the record).
    let pre = rule(
        d.path(),
        "env.yaml",
        "env",
        "Abort",
        "30s",
        &["env > env-$LIFEBOAT_POD.txt; env"],
    );
    let mut c = lb(&repo);
    c.env("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
        .env("AWS_ACCESS_KEY_ID", "aws-key-id-value")
        .env("LIFEBOAT_NEW_PASSWORD", "new-password-value")
        .env("SOME_OTHER_SETTING", "other-value")
        .env("PATH", std::env::var("PATH").unwrap())
        .args(["backup", "create", "env-1", "-n", "db", "--json"])
        .args(["--pre-rule".as_ref(), pre.as_os_str()])
        .arg("--cluster-dir")
        .arg(&root);
    let out = json(&ok(run(&mut c)));
    let secrets = [
        "LIFEBOAT_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "aws-secret-value",
        "AWS_ACCESS_KEY_ID",
        "aws-key-id-value",
        "new-password-value",
        "SOME_OTHER_SETTING",
    ];
    let rules = out["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3, "{out:#}");
    for r in rules {
        let tail = r["output_tail"].as_str().unwrap();
        assert!(tail.contains("LIFEBOAT_POD="), "{tail}");
        for s in secrets {
            assert!(!tail.contains(s), "`{s}` in the record: {tail}");
        }
    }
    for pod in PODS {
        let env = std::fs::read_to_string(root.join(format!("env-{pod}.txt"))).unwrap();
        let mut vars: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| !["PWD", "SHLVL", "_", "OLDPWD"].contains(k))
            .collect();
        vars.sort();
        assert_eq!(
            vars,
            [
                "HOME",
                "LANG",
                "LIFEBOAT_CONTAINER",
                "LIFEBOAT_NAMESPACE",
                "LIFEBOAT_POD",
                "PATH"
            ],
            "{env}"
        );
        assert!(env.contains(&format!("LIFEBOAT_POD={pod}\n")), "{env}");
        assert!(env.contains("LIFEBOAT_CONTAINER=db\n"), "{env}");
    }
}
