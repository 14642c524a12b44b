//! Application backups of the fixture cluster (`fixtures/clusters/prod`): capture, list,
//! describe, restore sanitised / mapped / ordered to a YAML directory and into a cluster
//! directory, and bad input that changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{files, json, lb, ok, run, tmp};

fn prod() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clusters/prod")
}

fn repo_with_backup(d: &Path) -> PathBuf {
    let repo = d.join("repo");
    ok(run(lb(&repo).args(["repo", "init", "--insecure-fast-kdf"])));
    ok(run(lb(&repo)
        .args([
            "backup",
            "create",
            "apps-1",
            "-n",
            "pg",
            "-n",
            "cassandra",
            "--cluster-dir",
        ])
        .arg(prod())));
    repo
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn yaml(path: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn backup_captures_scope_dedups_and_never_stores_secrets_in_plaintext() {
    let d = tmp();
    let repo = repo_with_backup(d.path());
    let desc = json(&ok(run(
        lb(&repo).args(["backup", "describe", "apps-1", "--json"])
    )));
    let objects: Vec<String> = desc["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["name"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "Namespace/pg",
        "Namespace/cassandra",
        "StatefulSet/cassandra",
        "Deployment/postgres",
        "Secret/postgres-credentials",
        "PostgresCluster/main",
        "CustomResourceDefinition/postgresclusters.db.example.com",
        "PersistentVolume/pvc-c1c1c1c1-0000-4000-8000-000000000018",
        "StorageClass/fast-ssd",
        "ClusterRoleBinding/postgres-node-reader",
        "ClusterRole/postgres-node-reader",
        "ValidatingWebhookConfiguration/pg-operator",
    ] {
        assert!(
            objects.contains(&want.to_string()),
            "{want} captured: {objects:?}"
        );
    }
    for unwanted in [
        "Node/node-1",
        "StorageClass/slow-hdd",
        "ClusterRole/cluster-admin",
        "CustomResourceDefinition/widgets.unrelated.example.org",
    ] {
        assert!(
            !objects.contains(&unwanted.to_string()),
            "{unwanted} is out of scope"
        );
    }

    // A second backup of unchanged objects stores no object again.
    let v = json(&ok(run(lb(&repo)
        .args([
            "backup",
            "create",
            "apps-2",
            "--json",
            "-n",
            "pg",
            "-n",
            "cassandra",
            "--cluster-dir",
        ])
        .arg(prod()))));
    crate::cli::conforms_to_cli_schema("backup-create.schema.json", &v);
    assert_eq!(v["new_objects"], 0, "{v}");
    assert_eq!(v["status"], "complete", "{v}");
    let list = json(&ok(run(lb(&repo).args(["backup", "list", "--json"]))));
    assert_eq!(list.as_array().unwrap().len(), 2);

    // The Secret's value appears nowhere in the repository, encoded or decoded.
    for f in files(&repo) {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [
            &b"c3VwZXItc2VjcmV0LXBhc3N3b3Jk"[..],
            b"super-secret-password",
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "plaintext secret in {}",
                f.display()
            );
        }
    }
    let check = ok(run(lb(&repo).args([
        "repo",
        "check",
        "--read-data",
        "--json",
    ])));
    assert_eq!(json(&check)["backups"], 2);
}

#[test]
fn restore_to_a_yaml_directory_is_sanitised_mapped_held_and_ordered() {
    let d = tmp();
    let repo = repo_with_backup(d.path());
    let out = d.path().join("out");
    ok(run(lb(&repo)
        .args([
            "restore",
            "create",
            "--from-backup",
            "apps-1",
            "--namespace-mapping",
            "pg:pg-dr,cassandra:cassandra-dr",
            "--storage-class-mapping",
            "fast-ssd:standard",
            "--start-applications=false",
            "--output-dir",
        ])
        .arg(&out)));
    // The claims' data comes along, under the mapped namespaces, beside the YAML.
    for v in [
        "cassandra-dr/data-cassandra-0",
        "cassandra-dr/data-cassandra-2",
        "pg-dr/postgres-data",
    ] {
        let restored = std::fs::read(out.join(format!("volumes/{v}.img"))).unwrap();
        let source = v.replace("-dr/", "/");
        assert_eq!(
            restored,
            std::fs::read(prod().join(format!("volumes/{source}.img"))).unwrap()
        );
    }
    let paths: Vec<PathBuf> = read_dir_sorted(&out)
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    let objs: Vec<(String, Value)> = paths
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                yaml(p),
            )
        })
        .collect();
    let pos = |kind: &str, name: &str| {
        objs.iter()
            .position(|(_, v)| v["kind"] == kind && v["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} restored"))
    };
    // Order: CRD → namespaces → PV → PVC → SA → secrets → RBAC → services → workloads → CRs → webhooks.
    assert_eq!(objs[0].1["kind"], "CustomResourceDefinition");
    assert!(
        pos("Namespace", "pg-dr")
            < pos(
                "PersistentVolume",
                "pvc-c1c1c1c1-0000-4000-8000-000000000018"
            )
    );
    assert!(
        pos(
            "PersistentVolume",
            "pvc-c1c1c1c1-0000-4000-8000-000000000018"
        ) < pos("PersistentVolumeClaim", "postgres-data")
    );
    assert!(pos("PersistentVolumeClaim", "postgres-data") < pos("ServiceAccount", "postgres"));
    assert!(pos("ServiceAccount", "postgres") < pos("Secret", "postgres-credentials"));
    assert!(pos("Secret", "postgres-credentials") < pos("RoleBinding", "postgres-leader"));
    assert!(pos("RoleBinding", "postgres-leader") < pos("Service", "postgres"));
    assert!(pos("Service", "postgres") < pos("Deployment", "postgres"));
    assert!(pos("Deployment", "postgres") < pos("PostgresCluster", "main"));
    assert_eq!(
        objs.last().unwrap().1["kind"],
        "ValidatingWebhookConfiguration"
    );

    let get = |kind: &str, name: &str| objs[pos(kind, name)].1.clone();
    // Sanitised.
    for (_, v) in &objs {
        let m = &v["metadata"];
        for f in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
            "ownerReferences",
            "generation",
        ] {
            assert!(m.get(f).is_none(), "{f} left on {}", m["name"]);
        }
        assert!(v.get("status").is_none(), "status left on {}", m["name"]);
    }
    let svc = get("Service", "postgres");
    assert!(
        svc["spec"].get("clusterIP").is_none() && svc["spec"]["ports"][0].get("nodePort").is_none(),
        "{svc}"
    );
    assert_eq!(
        get("Service", "cassandra")["spec"]["clusterIP"],
        "None",
        "headless stays headless"
    );
    let pvc = get("PersistentVolumeClaim", "data-cassandra-0");
    assert!(pvc["metadata"]["annotations"]
        .get("pv.kubernetes.io/bind-completed")
        .is_none());
    assert!(get(
        "PersistentVolume",
        "pvc-c1c1c1c1-0000-4000-8000-000000000018"
    )["spec"]["claimRef"]
        .get("uid")
        .is_none());
    // Mapped.
    assert_eq!(
        get("Deployment", "postgres")["metadata"]["namespace"],
        "pg-dr"
    );
    assert_eq!(
        get("RoleBinding", "postgres-leader")["subjects"][0]["namespace"],
        "pg-dr"
    );
    assert_eq!(
        get("ClusterRoleBinding", "postgres-node-reader")["subjects"][0]["namespace"],
        "pg-dr"
    );
    assert_eq!(
        get("ValidatingWebhookConfiguration", "pg-operator")["webhooks"][0]["clientConfig"]
            ["service"]["namespace"],
        "pg-dr"
    );
    assert_eq!(pvc["spec"]["storageClassName"], "standard");
    assert_eq!(pvc["metadata"]["namespace"], "cassandra-dr");
    assert_eq!(
        get("StatefulSet", "cassandra")["spec"]["volumeClaimTemplates"][0]["spec"]
            ["storageClassName"],
        "standard"
    );
    assert!(
        !objs.iter().any(|(_, v)| v["kind"] == "StorageClass"),
        "a mapped class is not restored"
    );
    // Held: replicas 0 with the count recorded; CronJob suspended.
    let dep = get("Deployment", "postgres");
    assert_eq!(dep["spec"]["replicas"], 0);
    assert_eq!(
        dep["metadata"]["annotations"]["lifeboat.dev/original-replicas"],
        "2"
    );
    assert_eq!(
        get("StatefulSet", "cassandra")["metadata"]["annotations"]
            ["lifeboat.dev/original-replicas"],
        "3"
    );
    let cj = get("CronJob", "pg-dump");
    assert_eq!(cj["spec"]["suspend"], true);
    assert_eq!(
        cj["metadata"]["annotations"]["lifeboat.dev/original-suspend"],
        "false"
    );
    // Never restored.
    for (kind, name) in [
        ("Pod", "cassandra-0"),
        ("ReplicaSet", "postgres-7c9d8f6b5"),
        ("Secret", "postgres-token-abcde"),
        ("Job", "pg-dump-29400180"),
        ("Event", "cassandra-0.17f3a"),
        ("Lease", "cassandra-leader"),
        ("ControllerRevision", "cassandra-5d8f7c9b6"),
        ("Endpoints", "cassandra"),
    ] {
        assert!(
            !objs
                .iter()
                .any(|(_, v)| v["kind"] == kind && v["metadata"]["name"] == name),
            "{kind}/{name} not restored"
        );
    }
    // Secrets are written for the owner only.
    let secret_file = &paths[pos("Secret", "postgres-credentials")];
    assert_eq!(
        std::fs::metadata(secret_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn restore_into_a_cluster_directory_with_existing_resource_policies_and_dry_run() {
    let d = tmp();
    let repo = repo_with_backup(d.path());
    let target = d.path().join("dr");
    std::fs::create_dir_all(target.join("resources")).unwrap();
    let restore = |policy: &str| {
        let mut c = lb(&repo);
        c.args([
            "restore",
            "create",
            "--from-backup",
            "apps-1",
            "--include-objects",
        ])
        .arg("deployment/pg/postgres,configmap/pg/postgres-config,namespace/pg")
        .args([
            "--json",
            "--existing-resource-policy",
            policy,
            "--cluster-dir",
        ])
        .arg(&target);
        json(&ok(run(&mut c)))
    };
    let first = restore("skip");
    crate::cli::conforms_to_cli_schema("restore-create.schema.json", &first);
    let outcomes: Vec<&str> = first["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["created", "created", "created"], "{first}");
    let dep = target.join("resources/pg/deployment.postgres.yaml");
    assert_eq!(yaml(&dep)["spec"]["replicas"], 2, "started by default");

    // Dry run: prints the plan with the conflicts and changes nothing.
    let before: Vec<(PathBuf, Vec<u8>)> = files(&target)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    let dry_run = |extra: &[&str]| {
        ok(run(lb(&repo)
            .args(["restore", "create", "--from-backup", "apps-1", "--dry-run"])
            .args(extra)
            .arg("--cluster-dir")
            .arg(&target)))
    };
    let plan = dry_run(&[]);
    assert!(
        plan.stdout.contains("CONFLICT") && plan.stdout.contains("Deployment/pg/postgres"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("nothing was changed"));
    let plan = json(&dry_run(&["--json"]));
    crate::cli::conforms_to_cli_schema("restore-plan.schema.json", &plan);
    assert!(
        plan.as_array()
            .unwrap()
            .iter()
            .any(|p| p["exists"] == true && p["target"]["kind"] == "Deployment"),
        "{plan:#}"
    );
    let after: Vec<(PathBuf, Vec<u8>)> = files(&target)
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert_eq!(before, after);

    let again = restore("skip");
    assert!(
        again["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "skipped"),
        "{again}"
    );
    std::fs::write(&dep, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: postgres, namespace: pg}\nspec: {replicas: 7}\n").unwrap();
    let updated = restore("update");
    assert!(
        updated["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "updated"),
        "{updated}"
    );
    assert_eq!(yaml(&dep)["spec"]["replicas"], 2);
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let d = tmp();
    let repo = repo_with_backup(d.path());
    let snapshot = |repo: &Path| -> Vec<PathBuf> {
        let mut f = files(repo);
        f.sort();
        f
    };
    let before = snapshot(&repo);

    // A malformed manifest names its file.
    let broken = d.path().join("broken");
    std::fs::create_dir_all(broken.join("resources")).unwrap();
    std::fs::write(
        broken.join("resources/bad.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n",
    )
    .unwrap();
    let r = run(lb(&repo)
        .args(["backup", "create", "x", "-n", "default", "--cluster-dir"])
        .arg(&broken));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("bad.yaml"), "{}", r.stderr);

    for (args, needle) in [
        (
            vec![
                "backup",
                "create",
                "y",
                "-n",
                "pg",
                "--include-objects",
                "gizmo/x",
            ],
            "unknown kind `gizmo`",
        ),
        (
            vec!["backup", "create", "y", "-n", "nope"],
            "namespace `nope` does not exist",
        ),
        (
            vec!["backup", "create", "apps-1", "-n", "pg"],
            "exists already",
        ),
        (
            vec!["backup", "create", "y", "-n", "pg", "--selector", "=x"],
            "--selector",
        ),
    ] {
        let r = run(lb(&repo).args(&args).arg("--cluster-dir").arg(prod()));
        assert_eq!(r.code, 1, "{args:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    for (args, needle) in [
        (
            vec![
                "--from-backup",
                "apps-1",
                "--namespace-mapping",
                "pgdr",
                "--dry-run",
            ],
            "--namespace-mapping",
        ),
        (
            vec!["--from-backup", "ghost", "--dry-run"],
            "no backup named `ghost`",
        ),
        (
            vec![
                "--from-backup",
                "apps-1",
                "--include-objects",
                "gizmo/x",
                "--dry-run",
            ],
            "unknown kind",
        ),
        (vec!["--from-backup", "apps-1"], "needs a target"),
    ] {
        let r = run(lb(&repo).args(["restore", "create"]).args(&args));
        assert_eq!(r.code, 1, "{args:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    let out = d.path().join("nonempty");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let r = run(lb(&repo)
        .args([
            "restore",
            "create",
            "--from-backup",
            "apps-1",
            "--output-dir",
        ])
        .arg(&out));
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // An output directory that cannot be made: named, its cause said once.
    let r = run(lb(&repo)
        .args([
            "restore",
            "create",
            "--from-backup",
            "apps-1",
            "--output-dir",
        ])
        .arg(out.join("keep.txt").join("sub")));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("keep.txt/sub"), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("Not a directory").count(),
        1,
        "{}",
        r.stderr
    );

    assert_eq!(snapshot(&repo), before, "nothing in the repository changed");
}

#[test]
fn owners_come_first_and_are_linked_across_a_namespace_mapping() {
    use lifeboat::app::record::{plan_restore, RestorePlanOptions};
    use lifeboat::k8s::objects::{Mapping, ObjRef};
    let obj = |v: Value| (ObjRef::of(&v, "t").unwrap(), v);
    let objects = vec![
        // The owned ConfigMap ranks before custom resources, but its owner must exist first.
        obj(
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "main-settings", "namespace": "pg",
            "ownerReferences": [{"apiVersion": "db.example.com/v1", "kind": "PostgresCluster", "name": "main", "uid": "old", "blockOwnerDeletion": true}]}}),
        ),
        obj(
            serde_json::json!({"apiVersion": "db.example.com/v1", "kind": "PostgresCluster", "metadata": {"name": "main", "namespace": "pg", "uid": "old"}}),
        ),
    ];
    let opts = RestorePlanOptions {
        namespaces: Mapping::parse("--namespace-mapping", "pg:pg-dr").unwrap(),
        start_applications: true,
        ..Default::default()
    };
    let plan = plan_restore(objects, &opts);
    assert_eq!(plan[0].target.kind, "PostgresCluster", "owner first");
    assert_eq!(plan[1].target.name, "main-settings");
    assert!(
        plan[1].value["metadata"].get("ownerReferences").is_none(),
        "the old uid is gone"
    );
    assert_eq!(plan[1].owners.len(), 1);
    assert_eq!(plan[1].owners[0].owner.namespace.as_deref(), Some("pg-dr"));
    assert!(plan[1].owners[0].block_owner_deletion && !plan[1].owners[0].controller);
}

#[tokio::test]
async fn a_restore_writes_each_claims_data_before_the_workloads_that_mount_it() {
    use lifeboat::app::restore::{restore, RestoreFlags, RestoreReport, RestoreRequest};
    use lifeboat::k8s::source::Outcome;
    let d = tmp();
    let repo_dir = repo_with_backup(d.path());
    let store = lifeboat::store::local::LocalStore::new(&repo_dir);
    let repo = std::sync::Arc::new(
        lifeboat::repository::Repository::open(
            std::sync::Arc::new(store),
            b"pw",
            None,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap(),
    );
    let target = d.path().join("dr");
    std::fs::create_dir_all(target.join("resources")).unwrap();
    let req = RestoreRequest::new(
        RestoreFlags {
            from_backup: "apps-1".into(),
            namespace_mapping: "pg:pg-dr".into(),
            cluster_dir: Some(target.clone()),
            ..Default::default()
        },
        Default::default(),
    )
    .unwrap();
    let report = restore(repo.clone(), &req).await.unwrap();
    let RestoreReport::Applied { results, .. } = &report else {
        panic!("not a dry run")
    };
    assert_eq!(report.count(Outcome::Failed), 0, "{results:?}");
    let at = |kind: &str, name: &str, volume: bool| {
        results
            .iter()
            .position(|r| {
                r.r.kind == kind
                    && r.r.name == name
                    && r.detail.starts_with("volume data") == volume
            })
            .unwrap_or_else(|| panic!("{kind}/{name} (volume data: {volume}) in {results:?}"))
    };
    // Each claim's data, then its claim object, then the workload mounting it.
    let postgres = at("Deployment", "postgres", false);
    assert!(at("PersistentVolumeClaim", "postgres-data", true) < postgres);
    assert!(at("PersistentVolumeClaim", "postgres-data", false) < postgres);
    let cassandra = at("StatefulSet", "cassandra", false);
    for claim in ["data-cassandra-0", "data-cassandra-1", "data-cassandra-2"] {
        assert!(
            at("PersistentVolumeClaim", claim, true) < cassandra,
            "{claim}"
        );
    }
    // The data is where the mapped namespace's workloads find it.
    assert_eq!(
        std::fs::read(target.join("volumes/pg-dr/postgres-data.img")).unwrap(),
        std::fs::read(prod().join("volumes/pg/postgres-data.img")).unwrap()
    );

    // A dry run plans the same objects and changes nothing.
    let dry = RestoreRequest::new(
        RestoreFlags {
            from_backup: "apps-1".into(),
            namespace_mapping: "pg:pg-dr".into(),
            cluster_dir: Some(target.clone()),
            dry_run: true,
            ..Default::default()
        },
        Default::default(),
    )
    .unwrap();
    let before = files(&target);
    let RestoreReport::Planned { plan, conflicts } = restore(repo, &dry).await.unwrap() else {
        panic!("a dry run")
    };
    assert_eq!(plan.len(), report.plan().len());
    assert!(conflicts
        .iter()
        .any(|r| r.kind == "Deployment" && r.name == "postgres"));
    assert_eq!(files(&target), before);
}

#[test]
fn backup_names_stay_unique_under_concurrent_creates_and_old_duplicates_are_named() {
    let d = tmp();
    let repo = d.path().join("repo");
    ok(run(lb(&repo).args(["repo", "init", "--insecure-fast-kdf"])));
    // Four creates of one name at once: one is recorded, the others refused.
    let children: Vec<std::process::Child> = (0..4)
        .map(|_| {
            lb(&repo)
                .args(["backup", "create", "same", "-n", "pg", "--cluster-dir"])
                .arg(prod())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut codes = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let code = out.status.code().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if code != 0 {
            assert!(
                (code == 1 && err.contains("exists already"))
                    || (code == 3 && err.contains("being written")),
                "{code}: {err}"
            );
        }
        codes.push(code);
    }
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    let list = json(&ok(run(lb(&repo).args(["backup", "list", "--json"]))));
    let same = |l: &Value| {
        l.as_array()
            .unwrap()
            .iter()
            .filter(|b| b["name"] == "same")
            .count()
    };
    assert_eq!(same(&list), 1, "{list:#}");

    // Two records of one name, as an older version could leave them: set the first aside,
    // write the name again, put the first back.
    let record = files(&repo.join("backups")).pop().unwrap();
    let aside = d.path().join("aside");
    std::fs::rename(&record, &aside).unwrap();
    ok(run(lb(&repo)
        .args(["backup", "create", "same", "-n", "pg", "--cluster-dir"])
        .arg(prod())));
    std::fs::rename(&aside, &record).unwrap();
    let ids: Vec<String> = files(&repo.join("backups"))
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 2);
    // The catalog is rebuilt anyway, the pair reported and both kept.
    let state = d.path().join("state");
    let rebuilt = json(&ok(run(lb(&repo)
        .arg("--state-dir")
        .arg(&state)
        .args(["catalog", "rebuild", "--json"]))));
    crate::cli::conforms_to_cli_schema("catalog-rebuild.schema.json", &rebuilt);
    assert_eq!(rebuilt["backups"], 2, "{rebuilt:#}");
    let dup = &rebuilt["duplicate_names"][0];
    assert_eq!(dup["name"], "same", "{rebuilt:#}");
    for id in &ids {
        assert!(dup["ids"]
            .as_array()
            .unwrap()
            .contains(&Value::from(id.as_str())));
    }
    assert_eq!(files(&repo.join("backups")).len(), 2, "both kept");
    // `--from-backup NAME` does not pick one silently; an id picks one.
    let r = run(lb(&repo).args(["restore", "create", "--from-backup", "same", "--dry-run"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    for id in &ids {
        assert!(r.stderr.contains(id.as_str()), "{}", r.stderr);
    }
    assert!(r.stderr.contains("--from-backup ID"), "{}", r.stderr);
    ok(run(lb(&repo).args([
        "restore",
        "create",
        "--from-backup",
        &ids[0][..12],
        "--dry-run",
    ])));
}

#[test]
fn a_namespace_mapping_of_a_namespace_not_in_the_backup_is_refused_before_anything_is_written() {
    let d = tmp();
    let repo = repo_with_backup(d.path());
    let target = d.path().join("site");
    std::fs::create_dir_all(&target).unwrap();
    // `pgg` is a typo of `pg`: without the check the restore went into `pg` itself.
    for dry in [false, true] {
        let mut c = lb(&repo);
        c.args([
            "restore",
            "create",
            "--from-backup",
            "apps-1",
            "--namespace-mapping",
            "pgg:pg-dr",
            "--existing-resource-policy",
            "update",
            "--cluster-dir",
        ])
        .arg(&target);
        if dry {
            c.arg("--dry-run");
        }
        let r = run(&mut c);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("namespace `pgg`") && r.stderr.contains("cassandra, pg"),
            "{}",
            r.stderr
        );
    }
    assert!(
        files(&target).is_empty(),
        "nothing written: {:?}",
        files(&target)
    );
    // The right name restores.
    ok(run(lb(&repo).args([
        "restore",
        "create",
        "--from-backup",
        "apps-1",
        "--namespace-mapping",
        "pg:pg-dr",
        "--dry-run",
    ])));
}
