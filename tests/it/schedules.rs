//! Scheduled operation: the server running a seconds-level schedule against Garage (overlap
//! skipped, retention applied, metrics served, SIGHUP with a broken configuration survived,
//! SIGTERM obeyed), the catalog rebuilt from the bucket alone, forget and prune giving space
//! back while every kept backup still restores, and prune and backups excluding each other.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::consistency::{make_cluster, volume};
use crate::support::{garage, json, lb, ok, run, tmp};

fn rule(path: &Path, name: &str, command: &str) {
    std::fs::write(
        path,
        format!("apiVersion: lifeboat.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}}}\nspec:\n  rules:\n  - podSelector: {{app: db}}\n    actions:\n    - type: command\n      value: {}\n      runInSinglePod: true\n  timeout: 30s\n", serde_json::to_string(command).unwrap()),
    )
    .unwrap();
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn the_server_runs_a_seconds_schedule_on_garage_skips_overlaps_and_keeps_its_retention() {
    let g = garage();
    let d = tmp();
    let url = format!("s3://{}/{}", g.bucket, g.unique_prefix());
    let env = g.env();
    let lbg = || {
        let mut c = lb(&url);
        c.envs(env.iter().map(|(k, v)| (k, v.as_str())));
        c.arg("--state-dir").arg(d.path().join("state"));
        c
    };
    ok(run(lbg().args([
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
    ])));
    let root = d.path().join("cluster");
    make_cluster(&root);
    let cfg_dir = d.path().join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    // Each run holds its pre rule for 2.5 s, on a schedule firing every 2 s: overlaps.
    rule(&cfg_dir.join("slow.rule"), "slow", "sleep 2.5");
    let config = cfg_dir.join("schedules.yaml");
    let good = "kind: SchedulePolicy\nmetadata: {name: every-2s}\nspec:\n  cron: {expression: \"*/2 * * * * *\"}\n  retain: {last: 2}\n---\nkind: BackupSchedule\nmetadata: {name: db}\nspec:\n  schedulePolicyName: every-2s\n  template: {namespaces: [db], preRules: [slow.rule]}\n";
    std::fs::write(&config, good).unwrap();
    let port = free_port();
    let mut cmd = lbg();
    cmd.args(["server", "--cluster-dir"])
        .arg(&root)
        .arg("--config")
        .arg(&config)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .env("LIFEBOAT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = Server(cmd.spawn().unwrap());
    std::thread::sleep(Duration::from_secs(7));
    // A broken configuration on SIGHUP is rejected; the server goes on with the old one.
    std::fs::write(&config, good.replace("*/2 * * * * *", "every two seconds")).unwrap();
    signal(&server.0, libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(7));
    let metrics = scrape(port);
    signal(&server.0, libc::SIGTERM);
    let started = Instant::now();
    let out = std::mem::replace(&mut server.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "server exit: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "SIGTERM obeyed"
    );
    assert!(
        stderr.contains("configuration rejected") && stderr.contains("spec.cron.expression"),
        "{stderr}"
    );

    let runs = json(&ok(run(lbg().args(["runs", "--json"]))));
    let runs = runs.as_array().unwrap();
    let count = |r: &str| runs.iter().filter(|x| x["result"] == r).count();
    assert!(count("succeeded") >= 2, "{runs:#?}\n{stderr}");
    assert!(
        count("skipped") >= 2,
        "overlapping fires skipped: {runs:#?}"
    );
    assert!(runs
        .iter()
        .filter(|x| x["result"] == "skipped")
        .all(|x| x["error"].as_str().unwrap().contains("still going")));
    // Never two runs at once.
    let mut spans: Vec<(String, String)> = runs
        .iter()
        .filter(|x| x["result"] != "skipped" && !x["ended_at"].is_null())
        .map(|x| {
            (
                x["started_at"].as_str().unwrap().to_string(),
                x["ended_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {w:?}");
    }
    assert!(
        metrics.contains("lifeboat_runs_total{schedule=\"db\",result=\"succeeded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_runs_total{schedule=\"db\",result=\"skipped\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_seconds_since_last_success{schedule=\"db\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lifeboat_bytes_uploaded_total{schedule=\"db\"}"),
        "{metrics}"
    );

    // Retention: `last: 2` (a run in progress at SIGTERM may add one that was cancelled).
    let backups = json(&ok(run(lbg().args(["backup", "list", "--json"]))));
    let backups = backups.as_array().unwrap();
    assert!((1..=3).contains(&backups.len()), "{backups:#?}");
    ok(run(lbg().args(["repo", "check", "--read-data"])));
    // The newest backup restores, data and all.
    let newest = backups.last().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let target = d.path().join("dr");
    ok(run(lbg()
        .args([
            "restore",
            "create",
            "--from-backup",
            &newest,
            "--cluster-dir",
        ])
        .arg(&target)));
    for pod in ["db-0", "db-1", "db-2"] {
        assert_eq!(
            std::fs::read(volume(&target, pod)).unwrap(),
            std::fs::read(volume(&root, pod)).unwrap()
        );
    }

    // Schedules as the catalog knows them.
    let next = json(&ok(run(
        lbg().args(["schedule", "next", "db", "--count", "3", "--json"])
    )));
    crate::cli::conforms_to_cli_schema("schedule-next.schema.json", &next);
    assert_eq!(next.as_array().unwrap().len(), 3);
    let suspended = json(&ok(
        run(lbg().args(["schedule", "suspend", "db", "--json"])),
    ));
    crate::cli::conforms_to_cli_schema("schedule-suspend.schema.json", &suspended);
    assert_eq!(suspended["suspended"], true, "{suspended}");
    let list = json(&ok(run(lbg().args(["schedule", "list", "--json"]))));
    assert_eq!(list[0]["suspended"], true);
    assert!(list[0]["next_run_at"].is_null());
    let r = run(lbg().args(["schedule", "resume", "nope"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no schedule named `nope`"),
        "{}",
        r.stderr
    );

    // The catalog from the bucket alone.
    std::fs::remove_dir_all(d.path().join("state")).unwrap();
    let rebuilt = json(&ok(run(lbg().args(["catalog", "rebuild", "--json"]))));
    assert_eq!(rebuilt["backups"].as_u64().unwrap() as usize, backups.len());
    let runs = json(&ok(run(lbg().args(["runs", "--schedule", "db", "--json"]))));
    let names: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["backup"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = backups
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    want.sort();
    let mut got = names.clone();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn a_bad_configuration_stops_the_server_naming_file_object_and_field() {
    let d = tmp();
    let repo = d.path().join("repo");
    ok(run(lb(&repo).args(["repo", "init", "--insecure-fast-kdf"])));
    let cfg = d.path().join("bad.yaml");
    for (text, want) in [
        ("kind: SchedulePolicy\nmetadata: {name: d}\nspec: {daily: {time: \"25:00\"}}\n", "SchedulePolicy d: spec.daily.time"),
        ("kind: BackupSchedule\nmetadata: {name: s}\nspec: {schedulePolicyName: nope, template: {namespaces: [a]}}\n", "BackupSchedule s: spec.schedulePolicyName"),
        // Passed validation, then panicked the server.
        ("kind: SchedulePolicy\nmetadata: {name: i}\nspec: {interval: {hours: 9223372036854775807}}\n", "SchedulePolicy i: spec.interval: is more than 366 days"),
        ("kind: SchedulePolicy\nmetadata: {name: i}\nspec: {interval: {seconds: 18446744073709551615, minutes: 1}}\n", "SchedulePolicy i: spec.interval: is more than 366 days"),
        // Accepted silently.
        ("kind: SchedulePolicy\nmetadata: {name: r}\nspec: {interval: {minutes: 5}, retain: {last: 0, daily: 0}}\n", "SchedulePolicy r: spec.retain: every count is 0"),
        ("apiVersion: lifeboat.dev/v2\nkind: SchedulePolicy\nmetadata: {name: v}\nspec: {interval: {minutes: 5}}\n", "SchedulePolicy v: apiVersion: `lifeboat.dev/v2` is unknown"),
        ("kind: SchedulePolicy\nmetadata: {name: f}\nspec: {cron: {expression: \"0 0 30 2 *\"}}\n", "SchedulePolicy f: spec.cron.expression: `0 0 30 2 *` never fires"),
        // Was "Minutes must be less than 59".
        ("kind: SchedulePolicy\nmetadata: {name: m}\nspec: {cron: {expression: \"60 * * * *\"}}\n", "SchedulePolicy m: spec.cron.expression: `60 * * * *`: minute `60` is out of range; a minute is 0 to 59"),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let r = run(lb(&repo)
            .args(["server", "--cluster-dir", "/nonexistent", "--config"])
            .arg(&cfg)
            .arg("--state-dir")
            .arg(d.path().join("state")));
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("bad.yaml") && r.stderr.contains(want), "{}", r.stderr);
    }
}

/// A repository, a cluster directory and a configuration file holding one schedule firing
/// every second; `server()` runs the server on them.
struct OneSchedule {
    d: tempfile::TempDir,
    repo: PathBuf,
    root: PathBuf,
    cfg: PathBuf,
}

impl OneSchedule {
    fn new(name: &str) -> OneSchedule {
        let d = tmp();
        let (repo, root, cfg) = (
            d.path().join("repo"),
            d.path().join("cluster"),
            d.path().join("schedules.yaml"),
        );
        ok(run(lb(&repo).args(["repo", "init", "--insecure-fast-kdf"])));
        make_cluster(&root);
        std::fs::write(&cfg, format!("kind: SchedulePolicy\nmetadata: {{name: every-second}}\nspec: {{cron: {{expression: \"* * * * * *\"}}}}\n---\nkind: BackupSchedule\nmetadata: {{name: {name}}}\nspec: {{schedulePolicyName: every-second, template: {{namespaces: [db]}}}}\n")).unwrap();
        OneSchedule { d, repo, root, cfg }
    }

    fn lb(&self) -> Command {
        let mut c = lb(&self.repo);
        c.arg("--state-dir").arg(self.d.path().join("state"));
        c
    }

    fn server(&self) -> Command {
        let mut c = self.lb();
        c.args(["server", "--cluster-dir"])
            .arg(&self.root)
            .arg("--config")
            .arg(&self.cfg);
        c
    }
}

#[test]
fn a_schedule_named_with_a_slash_is_refused_at_load_naming_the_field() {
    // Its runs' backups (`a/b-20260101-000000`) could not be named: refused before any run.
    let s = OneSchedule::new("a/b");
    let e = lifeboat::scheduler::config::load_config(&s.cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("BackupSchedule a/b: metadata.name: invalid schedule name `a/b`"),
        "{e}"
    );
    let r = run(&mut s.server());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("schedules.yaml")
            && r.stderr.contains("BackupSchedule a/b: metadata.name"),
        "{}",
        r.stderr
    );
}

/// The longest schedule name's runs, and `backup create` with the longest backup name, work
/// end to end (a work directory named after the backup once overflowed the file-name limit).
#[test]
fn the_longest_schedule_name_makes_backups_that_backup_create_and_the_server_accept() {
    use lifeboat::util::{MAX_NAME_LEN, RUN_SUFFIX_LEN};
    let longest = "s".repeat(MAX_NAME_LEN - RUN_SUFFIX_LEN);
    let s = OneSchedule::new(&longest);
    lifeboat::scheduler::config::load_config(&s.cfg).unwrap();
    // The name of a run's backup is one `backup create` takes...
    let fire = time::OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
    let by_hand = lifeboat::scheduler::config::backup_name(&longest, fire);
    assert_eq!(by_hand.len(), MAX_NAME_LEN);
    ok(run(s
        .lb()
        .args(["backup", "create", &by_hand, "-n", "db", "--cluster-dir"])
        .arg(&s.root)));
    // ...and the server's own runs succeed.
    let mut child = Server(
        s.server()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(4));
    signal(&child.0, libc::SIGTERM);
    let out = std::mem::replace(&mut child.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = json(&ok(run(s.lb().args(["runs", "--json"]))));
    let succeeded: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["result"] == "succeeded")
        .map(|r| r["backup"].as_str().unwrap())
        .collect();
    assert!(!succeeded.is_empty(), "{runs:#}");
    for name in &succeeded {
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(name.starts_with(&format!("{longest}-")), "{name}");
    }
    let list = json(&ok(run(s.lb().args(["backup", "list", "--json"]))));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&by_hand.as_str()) && names.contains(&succeeded[0]),
        "{names:?}"
    );
}

fn scribble(path: &Path, at: u64, seed: u8) {
    let mut data = vec![0u8; 1 << 20];
    lifeboat::demo::Rng::new(seed as u64).fill(&mut data);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&data, at)
        .unwrap();
}

fn data_bytes(repo: &Path) -> u64 {
    crate::support::files(&repo.join("data"))
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

#[test]
fn forget_and_prune_give_space_back_and_every_kept_backup_still_restores() {
    let d = tmp();
    let repo = d.path().join("repo");
    ok(run(lb(&repo).args([
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
        "--pack-size-mib",
        "1",
    ])));
    let root = d.path().join("cluster");
    make_cluster(&root);
    let mut copies: Vec<PathBuf> = Vec::new();
    for i in 0..4u8 {
        // Each backup replaces the same 1 MiB of db-0 with new data.
        scribble(&volume(&root, "db-0"), 0, i + 1);
        ok(run(lb(&repo)
            .args([
                "backup",
                "create",
                &format!("b{i}"),
                "-n",
                "db",
                "--cluster-dir",
            ])
            .arg(&root)));
        let copy = d.path().join(format!("db-0.{i}"));
        std::fs::copy(volume(&root, "db-0"), &copy).unwrap();
        copies.push(copy);
    }
    let before = data_bytes(&repo);
    let dry = json(&ok(run(lb(&repo).args([
        "forget",
        "--keep-last",
        "2",
        "--dry-run",
        "--json",
    ]))));
    crate::cli::conforms_to_cli_schema("forget.schema.json", &dry);
    let removed: Vec<&str> = dry["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kept_by"].as_array().unwrap().is_empty())
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed, vec!["b0", "b1"]);
    assert_eq!(
        json(&ok(run(lb(&repo).args(["backup", "list", "--json"]))))
            .as_array()
            .unwrap()
            .len(),
        4,
        "dry run changes nothing"
    );
    let r = run(lb(&repo).args(["forget"]));
    assert_eq!(r.code, 2, "forget without rules is refused: {}", r.stderr);
    assert!(r.stderr.contains("--keep-last"), "{}", r.stderr);

    let out = json(&ok(run(lb(&repo).args([
        "forget",
        "--keep-last",
        "2",
        "--json",
    ]))));
    crate::cli::conforms_to_cli_schema("forget.schema.json", &out);
    assert_eq!(out["removed"]["backups_removed"], 2);
    assert_eq!(
        out["removed"]["snapshots_removed"], 6,
        "three claims' snapshots of each removed backup"
    );
    // By default the packs prune takes out stay for its grace period (for readers that hold
    // no lock)...
    let held = json(&ok(run(lb(&repo).args(["prune", "--json"]))));
    crate::cli::conforms_to_cli_schema("prune.schema.json", &held);
    assert_eq!(data_bytes(&repo), before, "{held:#}");
    assert!(
        held["deferred_bytes"].as_u64().unwrap() >= 1 << 20,
        "{held:#}"
    );
    assert_eq!(held["grace_seconds"], 24 * 3600);
    assert!(
        crate::cli::is_ms_utc(held["next_release_at"].as_str().unwrap()),
        "{held:#}"
    );
    // ...and a prune whose grace is over (here: none) deletes them.
    let pruned = json(&ok(run(
        lb(&repo).args(["prune", "--grace", "0s", "--json"])
    )));
    assert_eq!(
        pruned["packs_released"], held["packs_deferred"],
        "{pruned:#}"
    );
    let after = data_bytes(&repo);
    assert!(
        after < before,
        "prune gave space back: {before} → {after}; {pruned:#}"
    );
    assert!(
        before - after >= 1 << 20,
        "at least the two forgotten MiB: {before} → {after}; {pruned:#}"
    );
    assert_eq!(pruned["after_bytes"].as_u64().unwrap(), after);
    crate::cli::conforms_to_cli_schema("prune.schema.json", &pruned);
    ok(run(lb(&repo).args(["repo", "check", "--read-data"])));
    // The kept backups restore bit-identical.
    for (i, name) in [(2usize, "b2"), (3, "b3")] {
        let target = d.path().join(format!("dr-{name}"));
        ok(run(lb(&repo)
            .args(["restore", "create", "--from-backup", name, "--cluster-dir"])
            .arg(&target)));
        assert!(
            std::fs::read(volume(&target, "db-0")).unwrap() == std::fs::read(&copies[i]).unwrap(),
            "{name}"
        );
    }
    // A second prune finds nothing to do.
    let again = json(&ok(run(lb(&repo).args(["prune", "--json"]))));
    assert_eq!(again["packs_deleted"], 0);
    assert_eq!(again["packs_repacked"], 0);
}

#[test]
fn prune_and_backups_exclude_each_other_and_a_dead_processs_lock_expires() {
    let d = tmp();
    let repo = d.path().join("repo");
    ok(run(lb(&repo).args([
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
    ])));
    let root = d.path().join("cluster");
    make_cluster(&root);
    ok(run(lb(&repo)
        .args(["backup", "create", "first", "-n", "db", "--cluster-dir"])
        .arg(&root)));
    // A backup that holds its shared lock for a while (its pre rule sleeps).
    let slow = d.path().join("slow.yaml");
    rule(&slow, "slow", "sleep 3");
    let mut backup = lb(&repo)
        .args(["backup", "create", "second", "-n", "db", "--pre-rule"])
        .arg(&slow)
        .arg("--cluster-dir")
        .arg(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let r = run(lb(&repo).args(["prune"]));
    assert_eq!(r.code, 3, "locked is transient: {}", r.stderr);
    assert!(
        r.stderr.contains("locked") && r.stderr.contains("shared lock for `backup second`"),
        "{}",
        r.stderr
    );
    assert!(backup.wait().unwrap().success());
    ok(run(lb(&repo).args(["prune"])));
    ok(run(lb(&repo).args(["repo", "check", "--read-data"])));

    // An exclusive lock (a prune elsewhere) stops a backup before it writes anything.
    let lock = |expires: &str| {
        let text = format!("{{\"version\":1,\"kind\":\"exclusive\",\"purpose\":\"prune\",\"hostname\":\"other\",\"pid\":1,\"time\":\"2026-01-01T00:00:00Z\",\"expires\":\"{expires}\",\"nonce\":\"{expires}\"}}");
        let name = hex::encode(lifeboat::format::object_hash(text.as_bytes()));
        std::fs::create_dir_all(repo.join("locks")).unwrap();
        std::fs::write(repo.join("locks").join(&name), text).unwrap();
        repo.join("locks").join(name)
    };
    let held = lock("2999-01-01T00:00:00Z");
    let objects = crate::support::files(&repo).len();
    let r = run(lb(&repo)
        .args(["backup", "create", "third", "-n", "db", "--cluster-dir"])
        .arg(&root));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("an exclusive lock for `prune` by other pid 1"),
        "{}",
        r.stderr
    );
    assert_eq!(
        crate::support::files(&repo).len(),
        objects,
        "nothing written"
    );
    std::fs::remove_file(held).unwrap();
    // A lock whose holder died long ago has expired: ignored and removed.
    let stale = lock("2026-01-01T01:00:00Z");
    ok(run(lb(&repo)
        .args(["backup", "create", "third", "-n", "db", "--cluster-dir"])
        .arg(&root)));
    assert!(!stale.exists());
    let list: Value = json(&ok(run(lb(&repo).args(["backup", "list", "--json"]))));
    assert_eq!(list.as_array().unwrap().len(), 3);
}

#[test]
fn prune_repacks_a_pack_that_is_mostly_garbage_and_keeps_its_live_blobs() {
    let d = tmp();
    let repo = d.path().join("repo");
    ok(run(lb(&repo).args([
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
        "--pack-size-mib",
        "4",
    ])));
    let root = d.path().join("cluster");
    make_cluster(&root);
    // One backup puts two MiB of db-0 into one pack...
    scribble(&volume(&root, "db-0"), 0, 1);
    scribble(&volume(&root, "db-0"), 2 << 20, 2);
    ok(run(lb(&repo)
        .args(["backup", "create", "b0", "-n", "db", "--cluster-dir"])
        .arg(&root)));
    // ...the next replaces the first: forgetting the first backup leaves that pack half garbage.
    scribble(&volume(&root, "db-0"), 0, 3);
    ok(run(lb(&repo)
        .args(["backup", "create", "b1", "-n", "db", "--cluster-dir"])
        .arg(&root)));
    ok(run(lb(&repo).args(["forget", "--keep-last", "1"])));
    let dry = json(&ok(run(lb(&repo).args([
        "prune",
        "--dry-run",
        "--repack-threshold",
        "0.4",
        "--json",
    ]))));
    assert!(dry["packs_repacked"].as_u64().unwrap() >= 1, "{dry:#}");
    let files_before = crate::support::files(&repo);
    let pruned = json(&ok(run(lb(&repo).args([
        "prune",
        "--repack-threshold",
        "0.4",
        "--json",
    ]))));
    assert!(
        pruned["packs_repacked"].as_u64().unwrap() >= 1,
        "{pruned:#}"
    );
    assert!(pruned["packs_written"].as_u64().unwrap() >= 1, "{pruned:#}");
    assert_ne!(crate::support::files(&repo), files_before);
    ok(run(lb(&repo).args(["repo", "check", "--read-data"])));
    let target = d.path().join("dr");
    ok(run(lb(&repo)
        .args(["restore", "create", "--from-backup", "b1", "--cluster-dir"])
        .arg(&target)));
    for pod in ["db-0", "db-1", "db-2"] {
        assert!(
            std::fs::read(volume(&target, pod)).unwrap()
                == std::fs::read(volume(&root, pod)).unwrap(),
            "{pod}"
        );
    }
}

#[test]
fn the_example_schedules_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/schedules");
    let cfg = lifeboat::scheduler::config::load_config(&dir).unwrap();
    assert_eq!(cfg.policies.len(), 5);
    assert_eq!(
        cfg.schedules.keys().collect::<Vec<_>>(),
        ["appns-hourly", "cassandra-nightly"]
    );
    // The rule paths of a template resolve from the configuration's directory.
    for f in &cfg.schedules["cassandra-nightly"].template.pre_rules {
        lifeboat::hooks::load_rules(&dir.join(f)).unwrap();
    }
}
