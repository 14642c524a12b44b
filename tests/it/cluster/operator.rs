//! The operator on two real clusters, the seed's DR flow end to end: `lifeboat controller`
//! runs on each site as a process with the ServiceAccount's token (bound to `deploy/base/rbac.yaml`,
//! `deploy/base/rbac-controller.yaml`, and on a restoring site the restore role), one Garage
//! bucket between them. Everything is driven by applying lifeboat.dev resources with kubectl:
//! a BackupLocation, a SchedulePolicy of a few seconds, a Rule and a BackupSchedule on the
//! primary; Backups reach Completed; a Standby on the DR site holds the application at 0
//! replicas with its volume current; failover by patching `spec.active` (the Deployment
//! starts, the claim holds the backed-up data, the status has the RTO); then failback: the DR
//! site backs up and the old primary follows it as a standby, activated by `lifeboat
//! activate`. A second controller replica on the primary waits on the Lease and takes over
//! when the first is killed.
//!
//! What the test cluster cannot show: `pods/exec` (the pod runner has none), so the Rule
//! selects no pod and the backup records that as a warning.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::volumes::{application, job, volume_file};
use super::{site, Role, Site};
use crate::support::{free_port, garage, lb, ok, run};

/// A `lifeboat controller` process, killed when dropped.
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    /// Starts one on `site` as the ServiceAccount of `kubeconfig`, named `name` in the Lease.
    fn start(kubeconfig: &Path, name: &str, state: &Path) -> Controller {
        let log = std::env::temp_dir().join(format!(
            "lifeboat-controller-{}-{name}.log",
            std::process::id()
        ));
        let port = free_port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lifeboat"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "lifeboat=info")
            .env_remove("LIFEBOAT_REPOSITORY")
            .args(["controller", "--namespace", "lifeboat", "--identity", name])
            .args(["--lease-duration", "4s", "--resync", "3s"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state-dir")
            .arg(state)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start lifeboat controller");
        std::fs::write(log.with_extension("port"), port.to_string()).unwrap();
        Controller { child, log }
    }

    fn metrics(&self) -> String {
        let port = std::fs::read_to_string(self.log.with_extension("port")).unwrap();
        let out = Command::new("curl")
            .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
            let _ = std::fs::remove_file(self.log.with_extension("port"));
        } else {
            eprintln!("controller log kept: {}", self.log.display());
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The CRDs and the controller's roles; no lifeboat resource of an earlier run (this is the
/// one test that makes them, and a controller reconciles every one on the cluster).
fn install(site: &Site) {
    let root = root();
    site.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        root.join("deploy/base/crds").to_str().unwrap(),
    ]);
    site.kubectl_ok(&[
        "apply",
        "-f",
        root.join("deploy/base/rbac-controller.yaml")
            .to_str()
            .unwrap(),
    ]);
    for kind in [
        "standbies",
        "restores",
        "backupschedules",
        "backups",
        "backuplocations",
        "schedulepolicies",
        "rules",
    ] {
        // No controller runs yet: finalizers of an earlier run's objects are dropped with them.
        let all = site.kubectl_ok(&[
            "get",
            &format!("{kind}.lifeboat.dev"),
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}",
        ]);
        for line in all.lines().filter(|l| !l.is_empty()) {
            let (ns, name) = line.split_once('/').unwrap();
            let mut args = vec![
                "patch".to_string(),
                format!("{kind}.lifeboat.dev"),
                name.to_string(),
                "--type".into(),
                "merge".into(),
                "-p".into(),
                r#"{"metadata":{"finalizers":null}}"#.into(),
            ];
            if !ns.is_empty() {
                args.extend(["-n".to_string(), ns.to_string()]);
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            site.kubectl_ok(&a);
        }
        site.kubectl_ok(&[
            "delete",
            &format!("{kind}.lifeboat.dev"),
            "--all",
            "-A",
            "--wait=false",
        ]);
    }
    site.kubectl_ok(&[
        "-n",
        "lifeboat",
        "delete",
        "lease",
        "lifeboat-controller",
        "--ignore-not-found",
    ]);
    for crd in ["backups", "standbies", "backupschedules", "backuplocations"] {
        site.kubectl_ok(&[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            &format!("crd/{crd}.lifeboat.dev"),
        ]);
    }
}

/// The file configuration's documents of today (fixtures/schedules, fixtures/rules) are valid
/// resources: the real API server accepts each (strict field validation, dry run) once it has
/// an apiVersion, and a namespace where the kind is namespaced.
fn todays_yaml_is_valid(site: &Site) {
    let mut docs = Vec::new();
    for dir in ["fixtures/schedules", "fixtures/rules"] {
        for f in crate::support::files(&root().join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap();
            for d in text.split("\n---").filter(|d| d.contains("kind:")) {
                let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(d).unwrap();
                v["apiVersion"] = "lifeboat.dev/v1alpha1".into();
                if v["kind"] != "SchedulePolicy" {
                    v["metadata"]["namespace"] = "default".into();
                }
                docs.push(serde_yaml_ng::to_string(&v).unwrap());
            }
        }
    }
    assert!(docs.len() >= 4, "{docs:?}");
    let out = site.kubectl_input(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
        ],
        &docs.join("---\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The seed flow's repository password: long and unlikely enough to be looked for.
const PASSWORD: &str = "pw-seed-flow-7c1e94b2d05a";

/// Reads every process's command line (`/proc/*/cmdline`) on this host every 20 ms while it
/// runs, looking for `needles`. The pod runner runs containers as host processes, so the
/// movers' command lines are there to read.
struct CmdlineWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl CmdlineWatch {
    fn start(needles: Vec<String>) -> CmdlineWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut movers, mut leaks) = (std::collections::HashSet::new(), Vec::new());
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                        continue; // gone already
                    };
                    let argv: Vec<String> = raw
                        .split(|b| *b == 0)
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    if argv.len() > 1 && argv[0].ends_with("lifeboat") && argv[1] == "volume" {
                        movers.insert(pid);
                    }
                    let line = argv.join(" ");
                    if needles.iter().any(|n| line.contains(n.as_str())) {
                        leaks.push(format!("pid {pid}: {}", argv[0]));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (movers.len(), leaks)
        });
        CmdlineWatch { stop, thread }
    }

    /// Stops it; gives how many mover processes (`lifeboat volume …`) it saw, and each process
    /// whose command line held a needle.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The BackupLocation `default` on `site`, with its Secrets; `read_only` (a DR site's) with
/// the bucket key that can only read.
fn location(site: &Site, url: &str, read_only: bool) {
    let g = garage();
    let (access_key, secret_key) = if read_only {
        (&g.read_only_access_key, &g.read_only_secret_key)
    } else {
        (&g.access_key, &g.secret_key)
    };
    site.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: lifeboat-s3, namespace: lifeboat}}
stringData: {{AWS_ACCESS_KEY_ID: "{}", AWS_SECRET_ACCESS_KEY: "{}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: lifeboat-password, namespace: lifeboat}}
stringData: {{password: {PASSWORD}}}
---
apiVersion: lifeboat.dev/v1alpha1
kind: BackupLocation
metadata: {{name: default, namespace: lifeboat}}
spec:
  repository: {url}
  endpoint: {}
  region: garage
  credentialsSecret: lifeboat-s3
  passwordSecret: {{name: lifeboat-password}}
  readOnly: {read_only}
"#,
        access_key, secret_key, g.endpoint
    ));
}

/// The movers' Secret in the application's namespace (the repository's settings).
fn mover_secret(site: &Site, ns: &str, url: &str) {
    let g = garage();
    site.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: lifeboat-repository, namespace: {ns}}}
stringData:
  LIFEBOAT_REPOSITORY: {url}
  LIFEBOAT_PASSWORD: {PASSWORD}
  AWS_ACCESS_KEY_ID: "{}"
  AWS_SECRET_ACCESS_KEY: "{}"
  AWS_ENDPOINT_URL_S3: {}
  AWS_REGION: garage
"#,
        g.access_key, g.secret_key, g.endpoint
    ));
}

/// A SchedulePolicy of a few seconds, a Rule and a BackupSchedule of `ns` named `schedule`
/// (a DR site gets the last two with the application).
fn schedule(site: &Site, ns: &str, schedule: &str) {
    policy(site, schedule);
    site.apply(&format!(
        r#"apiVersion: lifeboat.dev/v1alpha1
kind: Rule
metadata: {{name: quiesce, namespace: {ns}}}
spec:
  onError: Continue
  rules:
  - podSelector: {{app: no-such-pod}}
    actions:
    - {{type: command, value: sync}}
---
apiVersion: lifeboat.dev/v1alpha1
kind: BackupSchedule
metadata: {{name: {schedule}, namespace: {ns}}}
spec:
  schedulePolicyName: {schedule}-often
  template:
    namespaces: [{ns}]
    preRules: [quiesce]
"#
    ));
}

/// The SchedulePolicy `SCHEDULE-often` (cluster-scoped: each site keeps its own, as from Git).
fn policy(site: &Site, schedule: &str) {
    site.apply(&format!(
        "apiVersion: lifeboat.dev/v1alpha1\nkind: SchedulePolicy\nmetadata: {{name: {schedule}-often}}\nspec:\n  interval: {{seconds: 8}}\n  retain: {{last: 3}}\n"
    ));
}

/// A ServiceAccount `lifeboat-failback` on the old primary, bound as a restoring site's
/// (backup, restore and controller roles), and a kubeconfig with its token. Its own account:
/// the other tests hold ServiceAccount lifeboat of the primary to the backup role alone.
fn failback_account(site: &Site, dir: &Path) -> PathBuf {
    let restore = std::fs::read_to_string(super::restore_role()).unwrap();
    let role = restore
        .split("\n---")
        .find(|d| d.contains("\nkind: ClusterRole\n"))
        .expect("the restore ClusterRole");
    site.apply(role);
    let mut yaml = String::from(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: lifeboat-failback, namespace: lifeboat}\n",
    );
    for r in ["lifeboat-backup", "lifeboat-restore", "lifeboat-controller"] {
        yaml.push_str(&format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: failback-{r}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {r}}}\nsubjects: [{{kind: ServiceAccount, name: lifeboat-failback, namespace: lifeboat}}]\n"
        ));
    }
    yaml.push_str("---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: failback-leases, namespace: lifeboat}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lifeboat-controller-leases}\nsubjects: [{kind: ServiceAccount, name: lifeboat-failback, namespace: lifeboat}]\n");
    site.apply(&yaml);
    let path = dir.join("failback.kubeconfig");
    site.write_token_kubeconfig("lifeboat-failback", &path)
        .unwrap();
    path
}

fn replicas(site: &Site, ns: &str) -> (i64, i64) {
    site.get(&["-n", ns, "deployment", "web"])
        .map(|d| {
            (
                d["spec"]["replicas"].as_i64().unwrap_or(-1),
                d["status"]["readyReplicas"].as_i64().unwrap_or(0),
            )
        })
        .unwrap_or((-1, 0))
}

fn completed_backups(site: &Site, ns: &str, schedule: &str) -> Vec<Value> {
    site.get(&[
        "-n",
        ns,
        "backups.lifeboat.dev",
        "-l",
        &format!("lifeboat.dev/schedule={schedule}"),
    ])
    .map(|l| l["items"].as_array().cloned().unwrap_or_default())
    .unwrap_or_default()
    .into_iter()
    .filter(|b| b["status"]["phase"] == "Completed")
    .collect()
}

fn standby(site: &Site) -> Value {
    site.get(&["-n", "lifeboat", "standby.lifeboat.dev", "app"])
        .unwrap_or(Value::Null)
}

fn held_current(site: &Site, ns: &str, newest: &str) -> bool {
    let s = standby(site);
    s["status"]["appliedBackup"]
        .as_str()
        .is_some_and(|a| a >= newest)
        && replicas(site, ns).0 == 0
}

#[test]
fn the_seed_flow_schedules_backups_follows_them_on_the_dr_site_fails_over_and_back() {
    let (Some(primary), Some(dr)) = (site(Role::Primary), site(Role::Dr)) else {
        return;
    };
    let g = garage();
    let url = format!("s3://{}/{}", g.bucket, g.unique_prefix());
    let secrets = [PASSWORD, &g.secret_key, &g.read_only_secret_key];
    let cmdlines = CmdlineWatch::start(secrets.iter().map(|s| s.to_string()).collect());
    ok(run(lb(&url)
        .env("LIFEBOAT_PASSWORD", PASSWORD)
        .envs(g.env())
        .args([
            "repo",
            "init",
            "--insecure-fast-kdf",
            "--chunk-size-kib",
            "64",
        ])));
    let d = crate::support::tmp();
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    install(primary);
    install(dr);
    todays_yaml_is_valid(primary);
    let ns = super::unique("appns");
    primary.kubectl_ok(&["create", "namespace", &ns]);
    application(primary, &ns, 1);
    mover_secret(primary, &ns, &url);
    job(
        primary,
        &ns,
        "write",
        "set -e; head -c 1048576 /dev/urandom > /tmp/$$; dd if=/tmp/$$ of=/dev/xvda bs=1M conv=fsync 2>/dev/null; rm /tmp/$$; \
         mkdir -p /srv/data/app; echo one > /srv/data/app/file; sync",
    );

    // 1-2. The primary: a location, a policy of 8 s, a Rule, a schedule; Backups complete.
    let (pk, dk) = (&primary.lifeboat_kubeconfig, &dr.lifeboat_kubeconfig);
    let holder = || {
        primary
            .get(&["-n", "lifeboat", "lease", "lifeboat-controller"])
            .map(|l| l["spec"]["holderIdentity"].clone())
    };
    // A Lease of an earlier run expires first (4 s).
    let mut leader = Some(Controller::start(pk, "primary-1", &d.path().join("a1")));
    step("the first replica leads");
    primary.wait_until("the first replica leads", Duration::from_secs(30), || {
        holder().is_some_and(|h| h == "primary-1")
    });
    let replica = Controller::start(pk, "primary-2", &d.path().join("a2"));
    location(primary, &url, false);
    // A bad spec is a condition naming the field, and a fixed one recovers without a restart.
    let bad = "apiVersion: lifeboat.dev/v1alpha1\nkind: SchedulePolicy\nmetadata: {name: app-often}\nspec: {cron: {expression: \"61 * * * *\"}}\n";
    primary.apply(bad);
    let ready = |what: &[&str]| {
        primary
            .get(what)
            .map(|p| p["status"]["conditions"][0].clone())
            .unwrap_or(Value::Null)
    };
    step("a bad policy is a condition");
    primary.wait_until(
        "a bad policy is a condition",
        Duration::from_secs(30),
        || ready(&["schedulepolicy", "app-often"])["status"] == "False",
    );
    let c = ready(&["schedulepolicy", "app-often"]);
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("spec.cron.expression"),
        "{c:#}"
    );
    // A Backup made by hand, deleted with `deletePolicy: Delete`: its record goes with it (the
    // finalizer); each run is an Event on its object. (Before the schedule runs: forgetting
    // takes the repository's exclusive lock, which back-to-back backups would keep waiting.)
    primary.apply(&format!(
        "apiVersion: lifeboat.dev/v1alpha1\nkind: Backup\nmetadata: {{name: by-hand, namespace: {ns}}}\nspec: {{namespaces: [{ns}], includeVolumes: false, deletePolicy: Delete}}\n"
    ));
    let by_hand = || primary.get(&["-n", &ns, "backups.lifeboat.dev", "by-hand"]);
    step("a Backup by hand completes");
    primary.wait_until(
        "a Backup by hand completes",
        Duration::from_secs(120),
        || by_hand().is_some_and(|b| b["status"]["phase"] == "Completed"),
    );
    let records = || {
        let r = ok(run(lb(&url)
            .env("LIFEBOAT_PASSWORD", PASSWORD)
            .envs(g.env())
            .args(["--json", "backup", "list"])));
        r.stdout
    };
    assert!(records().contains("\"by-hand\""), "recorded");
    let events = primary.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=by-hand",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(
        events.contains("Started") && events.contains("Completed"),
        "Events: {events}"
    );
    primary.kubectl_ok(&[
        "-n",
        &ns,
        "delete",
        "backups.lifeboat.dev",
        "by-hand",
        "--timeout=60s",
    ]);
    assert!(
        !records().contains("\"by-hand\""),
        "deletePolicy: Delete forgets the record"
    );

    schedule(primary, &ns, "app");
    primary.wait_until("the fixed policy is Ready", Duration::from_secs(30), || {
        ready(&["schedulepolicy", "app-often"])["status"] == "True"
    });
    step("a scheduled Backup completes");
    primary.wait_until(
        "a scheduled Backup completes",
        Duration::from_secs(180),
        || !completed_backups(primary, &ns, "app").is_empty(),
    );
    let b = &completed_backups(primary, &ns, "app")[0];
    assert!(b["status"]["volumes"].as_i64() == Some(2), "{b:#}");
    assert!(
        b["status"]["warnings"].to_string().contains("quiesce"),
        "the Rule that selected no pod is a warning: {b:#}"
    );
    let sched = primary.get(&["-n", &ns, "backupschedule", "app"]).unwrap();
    let st = &sched["status"];
    assert!(
        st["lastSuccessfulBackup"].is_string() && st["rpoSeconds"].is_i64(),
        "{sched:#}"
    );
    assert_eq!(st["conditions"][0]["status"], "True", "{sched:#}");
    let loc = primary
        .get(&["-n", "lifeboat", "backuplocation", "default"])
        .unwrap();
    assert_eq!(loc["status"]["phase"], "Available", "{loc:#}");
    assert_eq!(
        holder().unwrap(),
        "primary-1",
        "the replica waits on the Lease"
    );
    assert!(
        leader.as_ref().unwrap().metrics().contains(&format!(
            "lifeboat_schedule_rpo_seconds{{schedule=\"{ns}/app\"}}"
        )),
        "the RPO on /metrics"
    );

    // `lifeboat get`, also as a kubectl plugin (`kubectl-lifeboat` on the PATH).
    let listed = ok(run(primary.lifeboat(Path::new("unused")).args([
        "--json",
        "get",
        "backups",
        "-n",
        &ns,
        "--context",
        "lifeboat",
    ])));
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["status"]["phase"] == "Completed"),
        "{listed:#}"
    );
    let plugins = d.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_lifeboat"),
        plugins.join("kubectl-lifeboat"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = primary
        .kubectl()
        .env("PATH", path)
        .env("KUBECONFIG", &primary.lifeboat_kubeconfig)
        .args(["lifeboat", "get", "schedules", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("LAST GOOD") && table.contains("Scheduled"),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The leader dies: the replica takes the Lease over and the schedule goes on.
    drop(leader.take());
    step("the second replica takes the Lease");
    primary.wait_until(
        "the second replica takes the Lease",
        Duration::from_secs(30),
        || holder().is_some_and(|h| h == "primary-2"),
    );
    let before = completed_backups(primary, &ns, "app").len();
    step("a Backup completes under the new leader");
    primary.wait_until(
        "a Backup completes under the new leader",
        Duration::from_secs(120),
        || {
            completed_backups(primary, &ns, "app").len() > before
                || completed_backups(primary, &ns, "app").len() == 3
        },
    );

    // 3. The DR site: a read-only location (lifeboat's `readOnly` and a bucket key that can
    //    only read), a Standby; appns held at 0 with its volumes.
    let dr_ctrl = Controller::start(dk, "dr-1", &d.path().join("b1"));
    location(dr, &url, true);
    policy(dr, "app");
    dr.apply("apiVersion: lifeboat.dev/v1alpha1\nkind: Standby\nmetadata: {name: app, namespace: lifeboat}\nspec: {schedule: app, interval: 3s}\n");
    step("the DR location shows the bucket's backups");
    dr.wait_until(
        "the DR location shows the bucket's backups",
        Duration::from_secs(60),
        || {
            dr.get(&[
                "-n",
                "lifeboat",
                "backups.lifeboat.dev",
                "-l",
                "lifeboat.dev/origin=repository",
            ])
            .is_some_and(|l| !l["items"].as_array().unwrap().is_empty())
        },
    );
    step("the standby holds a backup");
    dr.wait_until(
        "the standby holds a backup",
        Duration::from_secs(180),
        || standby(dr)["status"]["appliedBackup"].is_string(),
    );
    // The primary is lost: its controllers stop (a backup running then is never recorded);
    // the standby catches up to the last backup the bucket holds.
    drop(replica);
    let last = completed_backups(primary, &ns, "app")
        .iter()
        .filter_map(|b| b["metadata"]["name"].as_str().map(String::from))
        .max()
        .unwrap();
    dr.wait_until(
        "the standby holds the last backup, held at 0",
        Duration::from_secs(180),
        || held_current(dr, &ns, &last),
    );
    let s = standby(dr);
    assert!(s["status"]["lagSeconds"].is_i64(), "{s:#}");
    assert!(
        dr_ctrl
            .metrics()
            .contains("lifeboat_standby_lag_seconds{standby=\"lifeboat/app\"}"),
        "the standby's lag on /metrics"
    );
    let same = |claim: &str| {
        std::fs::read(volume_file(primary, &ns, claim)).unwrap()
            == std::fs::read(volume_file(dr, &ns, claim)).unwrap()
    };
    assert!(
        same("data-block") && same("data-fs"),
        "the DR claims hold the data"
    );

    // Restore on demand, beside the standby: a copy of the last backup in a mapped namespace,
    // held; and a Restore of a backup the bucket does not hold fails, naming it.
    let copy = format!("{ns}-copy");
    dr.apply(&format!(
        "apiVersion: lifeboat.dev/v1alpha1\nkind: Restore\nmetadata: {{name: copy, namespace: lifeboat}}\nspec:\n  backupName: {last}\n  namespaceMapping: {{{ns}: {copy}}}\n  startApplications: false\n---\napiVersion: lifeboat.dev/v1alpha1\nkind: Restore\nmetadata: {{name: missing, namespace: lifeboat}}\nspec: {{backupName: no-such-backup}}\n"
    ));
    let restore = |name: &str| {
        dr.get(&["-n", "lifeboat", "restore.lifeboat.dev", name])
            .unwrap()
    };
    step("the Restores end");
    dr.wait_until("the Restores end", Duration::from_secs(180), || {
        ["copy", "missing"].iter().all(|n| {
            matches!(
                restore(n)["status"]["phase"].as_str(),
                Some("Completed" | "PartiallyFailed" | "Failed")
            )
        })
    });
    let c = restore("copy");
    assert_eq!(c["status"]["phase"], "Completed", "{c:#}");
    assert!(c["status"]["created"].as_i64().unwrap_or(0) > 0, "{c:#}");
    assert_eq!(replicas(dr, &copy).0, 0, "restored held");
    let m = restore("missing");
    assert_eq!(m["status"]["phase"], "Failed", "{m:#}");
    assert!(
        m["status"]["conditions"]
            .to_string()
            .contains("no-such-backup"),
        "{m:#}"
    );

    // The standby and the Restore read without a lock, the key being unable to write one.
    let dr_log = std::fs::read_to_string(&dr_ctrl.log).unwrap();
    assert!(
        dr_log.contains("without a lock: these credentials cannot write it"),
        "the DR site read with its read-only key: {}",
        dr_log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );

    // 4. Failover: spec.active true; the Deployment starts, the status has the RTO.
    dr.kubectl_ok(&[
        "-n",
        "lifeboat",
        "patch",
        "standby.lifeboat.dev",
        "app",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"active":true}}"#,
    ]);
    step("the failover");
    dr.wait_until("the failover", Duration::from_secs(120), || {
        standby(dr)["status"]["rtoSeconds"].is_number() && replicas(dr, &ns) == (1, 1)
    });
    assert!(
        same("data-block") && same("data-fs"),
        "the activated claims hold the last backup"
    );

    // 5. Failback. The DR site runs the application now, and its copy of the BackupSchedule
    //    (held while the site was a standby, released by the failover) backs it up.
    let dr_schedule = dr
        .get(&["-n", &ns, "backupschedule", "app"])
        .expect("the schedule came with the application");
    assert_eq!(
        dr_schedule["spec"]["suspend"], false,
        "released by the failover: {dr_schedule:#}"
    );
    location(dr, &url, false);
    job(
        dr,
        &ns,
        "change",
        "set -e; echo two > /srv/data/app/file; sync",
    );
    let changed = time::OffsetDateTime::now_utc().unix_timestamp();
    let after_change = |b: &Value| {
        b["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_some_and(|t| t.unix_timestamp() >= changed)
    };
    step("the DR site backs up its changed data");
    dr.wait_until(
        "the DR site backs up its changed data",
        Duration::from_secs(180),
        || completed_backups(dr, &ns, "app").iter().any(after_change),
    );
    // The old primary, repaired, follows it as a standby, under an account bound as a
    // restoring site's. Its own schedule is suspended before its controller starts again.
    primary.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "backupschedule",
        "app",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let fk = failback_account(primary, d.path());
    let _restoring = Controller::start(&fk, "primary-3", &d.path().join("a3"));
    primary.apply("apiVersion: lifeboat.dev/v1alpha1\nkind: Standby\nmetadata: {name: app, namespace: lifeboat}\nspec: {schedule: app, interval: 3s, overwriteClaims: true}\n");
    // The DR site stops (`lifeboat deactivate` flips its Standby): held again, schedule too.
    let r = ok(run(dr.lifeboat(Path::new("unused")).args([
        "--json",
        "deactivate",
        "-n",
        &ns,
        "--context",
        "lifeboat",
    ])));
    let flip: Value = serde_json::from_str(&r.stdout).unwrap();
    crate::cli::conforms_to_cli_schema("activate.schema.json", &flip);
    assert_eq!(flip["active"], false, "{flip:#}");
    step("the DR site is held again");
    dr.wait_until("the DR site is held again", Duration::from_secs(60), || {
        replicas(dr, &ns).0 == 0
            && dr.get(&["-n", &ns, "backupschedule", "app"]).unwrap()["spec"]["suspend"] == true
    });
    let last = completed_backups(dr, &ns, "app")
        .iter()
        .filter_map(|b| b["metadata"]["name"].as_str().map(String::from))
        .max()
        .unwrap();
    step("the old primary follows the DR site, held");
    primary.wait_until(
        "the old primary follows the DR site, held",
        Duration::from_secs(180),
        || held_current(primary, &ns, &last),
    );
    assert!(
        same("data-fs") && same("data-block"),
        "the old primary's claims hold the DR site's data"
    );
    let r = ok(run(primary.lifeboat(Path::new("unused")).args([
        "--json",
        "activate",
        "-n",
        &ns,
        "--context",
        "lifeboat",
    ])));
    let flip: Value = serde_json::from_str(&r.stdout).unwrap();
    crate::cli::conforms_to_cli_schema("activate.schema.json", &flip);
    assert_eq!(flip["active"], true, "{flip:#}");
    step("the old primary runs again, its schedule released");
    primary.wait_until(
        "the old primary runs again, its schedule released",
        Duration::from_secs(120),
        || {
            replicas(primary, &ns) == (1, 1)
                && primary.get(&["-n", &ns, "backupschedule", "app"]).unwrap()["spec"]["suspend"]
                    == false
        },
    );
    assert!(standby(primary)["status"]["rtoSeconds"].is_number());

    // No secret in what the controllers wrote (issue #14, point 6): the password and the
    // bucket's secret keys are in no Event, no lifeboat resource (their statuses and conditions) and no log of the
    // controllers still running (which log warnings only, at their default level).
    step("no secret in Events, statuses or logs");
    for site in [primary, dr] {
        let written = site.kubectl_ok(&[
            "get",
            "events,backups.lifeboat.dev,restores.lifeboat.dev,standbies.lifeboat.dev,backupschedules.lifeboat.dev,backuplocations.lifeboat.dev",
            "-A",
            "-o",
            "json",
        ]);
        assert!(
            written.contains("\"reason\": \"Completed\""),
            "the Events and statuses the flow wrote are there to scan"
        );
        assert!(
            secrets.iter().all(|n| !written.contains(n)),
            "the password or a bucket secret key in an Event or a status"
        );
    }
    for c in [&dr_ctrl, &_restoring] {
        let log = std::fs::read_to_string(&c.log).unwrap();
        assert!(
            secrets.iter().all(|n| !log.contains(n)),
            "the password or a bucket secret key in {}",
            c.log.display()
        );
    }
    // Nor in any process's command line while the flow ran: the movers get theirs from the
    // Secret through their environment, never as arguments.
    let (movers, leaks) = cmdlines.finish();
    assert!(movers > 0, "the watch saw the movers run");
    assert!(leaks.is_empty(), "secrets in command lines: {leaks:?}");
}
