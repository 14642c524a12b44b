//! Volume data on real clusters: a Block-mode and a Filesystem-mode claim written by a Job,
//! backed up on the primary through one VolumeGroupSnapshot (the driver's default class) and
//! mover Jobs run by the pod runner, restored on the DR site by restore Jobs and the volume
//! hand-over, bit for bit; then changed blocks from the real SnapshotMetadata sidecar.

use std::path::Path;
use std::time::Duration;

use lifeboat::format::ChangeSource;
use serde_json::Value;

use super::{site, Role, Site};
use crate::support::{init_repo, json, ok, open_pw, run, tmp};

/// The movers' Secret and ServiceAccount as `deploy/mover-secret.yaml` has them, filled in for
/// a local repository and namespace `ns`.
pub fn mover_secret(site: &Site, ns: &str, repo: &Path) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mover-secret.yaml"),
    )
    .unwrap();
    let mut filled = String::new();
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("AWS_") || l.starts_with("# AWS_") {
            continue;
        }
        let line = match l {
            _ if l.starts_with("LIFEBOAT_REPOSITORY:") => {
                format!("  LIFEBOAT_REPOSITORY: {}", repo.display())
            }
            _ if l.starts_with("LIFEBOAT_PASSWORD:") => "  LIFEBOAT_PASSWORD: pw".into(),
            _ if l.starts_with("namespace: default") => format!("  namespace: {ns}"),
            _ => line.to_string(),
        };
        filled.push_str(&line);
        filled.push('\n');
    }
    let file = repo.with_extension("mover-secret.yaml");
    std::fs::write(&file, filled).unwrap();
    site.kubectl_ok(&["apply", "-n", ns, "-f", file.to_str().unwrap()]);
}

/// Runs a Job of one `sh -c SCRIPT` container with the claims `data-block` (device
/// `/dev/xvda`) and `data-fs` (at `/srv/data`), waits for it, and gives its termination
/// message.
pub fn job(site: &Site, ns: &str, name: &str, script: &str) -> String {
    site.apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}, namespace: {ns}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: sh
        image: busybox
        command: [sh, -c, {script:?}]
        volumeDevices: [{{name: block, devicePath: /dev/xvda}}]
        volumeMounts: [{{name: fs, mountPath: /srv/data}}]
      volumes:
      - {{name: block, persistentVolumeClaim: {{claimName: data-block}}}}
      - {{name: fs, persistentVolumeClaim: {{claimName: data-fs}}}}
"#
    ));
    let mut last = Value::Null;
    site.wait_until(
        &format!("Job {ns}/{name} finishes"),
        Duration::from_secs(120),
        || {
            last = site.get(&["-n", ns, "job", name]).unwrap();
            last["status"]["succeeded"].as_i64().unwrap_or(0)
                + last["status"]["failed"].as_i64().unwrap_or(0)
                > 0
        },
    );
    let pods = site
        .get(&["-n", ns, "pods", "-l", &format!("job-name={name}")])
        .unwrap();
    let message = pods["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"]
        ["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        last["status"]["succeeded"], 1,
        "Job {name}: {message}\n{pods:#}"
    );
    message
}

/// The file behind a claim's CSI volume (csi-hostpath keeps each volume as a file).
pub fn volume_file(site: &Site, ns: &str, claim: &str) -> std::path::PathBuf {
    let pvc = site.get(&["-n", ns, "pvc", claim]).unwrap();
    let pv = site
        .get(&["pv", pvc["spec"]["volumeName"].as_str().expect("bound")])
        .unwrap();
    pv["spec"]["csi"]["volumeAttributes"]["path"]
        .as_str()
        .unwrap_or_else(|| panic!("no path in {pv:#}"))
        .into()
}

/// An application: a Deployment `web` of `replicas` replicas of `sleep`, and the claims of
/// [`claims`].
pub fn application(site: &Site, ns: &str, replicas: u32) {
    claims(site, ns);
    site.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: web, image: busybox, command: [sleep, "3600"]}}
"#
    ));
}

/// Claims `data-block` (Block, 8 MiB) and `data-fs` (Filesystem, 16 MiB), waited on until
/// bound.
pub fn claims(site: &Site, ns: &str) {
    site.apply(&format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data-block, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  resources: {{requests: {{storage: 8Mi}}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data-fs, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 16Mi}}}}
"#
    ));
    for c in ["data-block", "data-fs"] {
        site.wait_until(
            &format!("claim {ns}/{c} is bound"),
            Duration::from_secs(60),
            || site.get(&["-n", ns, "pvc", c]).unwrap()["status"]["phase"] == "Bound",
        );
    }
}

const SUMS: &str = "head -c 3145728 /dev/xvda | sha256sum | cut -c1-16 > /dev/termination-log; \
     sha256sum /srv/data/app/file | cut -c1-16 >> /dev/termination-log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_and_filesystem_claims_move_through_a_group_snapshot_and_restore_bit_for_bit() {
    let (Some(primary), Some(dr)) = (site(Role::Primary), site(Role::Dr)) else {
        return;
    };
    let d = tmp();
    let repo = init_repo(d.path());
    let ns = primary.namespace("vol");
    claims(primary, &ns);
    mover_secret(primary, &ns, &repo);
    job(
        primary,
        &ns,
        "write",
        "set -e; head -c 3145728 /dev/urandom > /tmp/$$; dd if=/tmp/$$ of=/dev/xvda bs=1M conv=fsync 2>/dev/null; \
         rm /tmp/$$; mkdir -p /srv/data/app; head -c 1000000 /dev/urandom > /srv/data/app/file; sync",
    );
    let written = job(primary, &ns, "sums", SUMS);
    assert_eq!(written.lines().count(), 2, "{written}");

    let first = json(&ok(run(primary
        .lifeboat(&repo)
        .args(["--json", "backup", "create", "vol-1", "-n", &ns]))));
    crate::cli::conforms_to_cli_schema("backup-create.schema.json", &first);
    let volumes = first["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2, "{first:#}");
    assert!(
        volumes.iter().all(|v| v["method"] == "csi-group"),
        "one VolumeGroupSnapshot through the default class: {first:#}"
    );
    // lifeboat's working objects are gone: clones and mover Jobs. The group stays, holding
    // the member snapshots kept as the bases of the next delta (deleting it takes them along).
    let left = primary.kubectl_ok(&["-n", &ns, "get", "pvc,jobs", "-o", "name"]);
    assert!(!left.contains("lifeboat-"), "{left}");
    let groups = primary.kubectl_ok(&["-n", &ns, "get", "volumegroupsnapshots", "-o", "name"]);
    assert_eq!(groups.lines().count(), 1, "{groups}");
    assert!(groups.contains("lifeboat-vol-1-"), "{groups}");

    // The repository holds each claim as the cluster had it.
    for c in ["data-block", "data-fs"] {
        let v = volumes.iter().find(|v| v["pvc"] == c).unwrap();
        let out = d.path().join(format!("{c}.img"));
        ok(run(crate::support::lb(&repo)
            .args(["volume", "restore", v["snapshot_id"].as_str().unwrap()])
            .arg(&out)));
        let src = volume_file(primary, &ns, c);
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(),
            "{c}: the repository's copy equals the volume"
        );
    }

    // The DR site restores them: the claims under the mapped namespace and storage class
    // (a class only the DR site has), their data first.
    dr.apply(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: csi-hostpath-dr}\nprovisioner: hostpath.csi.k8s.io\nreclaimPolicy: Delete\nvolumeBindingMode: Immediate\n",
    );
    let target = format!("{ns}-dr");
    let restored = json(&ok(run(dr.lifeboat(&repo).args([
        "--json",
        "restore",
        "create",
        "--from-backup",
        "vol-1",
        "--namespace-mapping",
        &format!("{ns}:{target}"),
        "--storage-class-mapping",
        "csi-hostpath-sc:csi-hostpath-dr",
        "--context",
        "lifeboat",
    ]))));
    assert!(
        restored["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] != "failed"),
        "{restored:#}"
    );
    for c in ["data-block", "data-fs"] {
        let src = volume_file(primary, &ns, c);
        let dst = volume_file(dr, &target, c);
        assert!(
            std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap(),
            "{c} restored bit for bit ({} vs {})",
            src.display(),
            dst.display()
        );
    }
    let fs = dr.get(&["-n", &target, "pvc", "data-fs"]).unwrap();
    assert_eq!(fs["spec"]["volumeMode"], "Filesystem", "{fs:#}");
    for c in ["data-block", "data-fs"] {
        let pvc = dr.get(&["-n", &target, "pvc", c]).unwrap();
        assert_eq!(
            pvc["spec"]["storageClassName"], "csi-hostpath-dr",
            "{c}: {pvc:#}"
        );
    }
    // And an application on the DR site reads the same data through its claims.
    assert_eq!(job(dr, &target, "sums", SUMS), written);

    // Changed blocks: 4 KiB written at 2 MiB; the next backup asks the real SnapshotMetadata
    // sidecar for the blocks changed since the first backup's snapshot and reads only those.
    job(
        primary,
        &ns,
        "change",
        "set -e; head -c 4096 /dev/urandom > /tmp/$$; dd if=/tmp/$$ of=/dev/xvda bs=4096 seek=512 conv=notrunc,fsync 2>/dev/null; rm /tmp/$$",
    );
    let second = json(&ok(run(primary
        .lifeboat(&repo)
        .args(["--json", "backup", "create", "vol-2", "-n", &ns]))));
    let r = open_pw(&repo).await;
    let snaps = r.list_snapshots().await.unwrap();
    for v in second["volumes"].as_array().unwrap() {
        let id = v["snapshot_id"].as_str().unwrap();
        let (_, s) = snaps
            .iter()
            .find(|(i, _)| i.to_hex() == id)
            .unwrap_or_else(|| panic!("{id} in the repository"));
        assert_eq!(
            s.change_source,
            ChangeSource::ChangedRanges,
            "{v}: {s:?}\n{second:#}"
        );
        // The plugin reports changes in 1 MiB blocks: the block claim's 4 KiB write is one.
        // Mounting the filesystem claim (the Job mounts both) rewrote its superblock's block
        // and, in some runs, a second one (ext4's journal or group descriptors): at most a
        // quarter of its 16 MiB, where a backup without changed blocks reads all of it.
        let bound = if v["pvc"] == "data-block" {
            1 << 20
        } else {
            4 << 20
        };
        assert!(
            s.stats.bytes_read <= bound,
            "{v}: read {} of {} bytes",
            s.stats.bytes_read,
            s.size
        );
        let out = d
            .path()
            .join(format!("second-{}.img", v["pvc"].as_str().unwrap()));
        ok(run(crate::support::lb(&repo)
            .args(["volume", "restore", id])
            .arg(&out)));
        let src = volume_file(primary, &ns, v["pvc"].as_str().unwrap());
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(),
            "{v}"
        );
    }

    // A snapshot of the claim's volume name made by hand in between: the next mover may not
    // trust the delta (its parent was not read from the base), compares hashes, and the
    // backup says so instead of being silently slow.
    let other = d.path().join("other.img");
    std::fs::write(&other, vec![7u8; 8 << 20]).unwrap();
    ok(run(crate::support::lb(&repo)
        .args([
            "volume",
            "backup",
            "--name",
            &format!("pvc/{ns}/data-block"),
        ])
        .arg(&other)));
    let third = json(&ok(run(primary
        .lifeboat(&repo)
        .args(["--json", "backup", "create", "vol-3", "-n", &ns]))));
    let warnings: Vec<&str> = third["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(&format!("claim {ns}/data-block"))
                && w.contains("changed blocks not used")
                && w.contains("was not read from the base")),
        "{third:#}"
    );
    assert_eq!(warnings.len(), 1, "only the block claim: {warnings:?}");

    primary.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
    dr.kubectl_ok(&["delete", "namespace", &target, "--wait=false"]);
}

/// What goes wrong before or in the movers is said, and leaves nothing behind: a namespace
/// without the movers' Secret fails before any snapshot; a group class that does not exist is
/// named; a mover that cannot reach the repository fails the backup, which records nothing.
/// `--group-snapshot-class none` takes VolumeSnapshots back to back.
#[test]
fn failures_around_the_movers_are_named_and_leave_nothing_behind() {
    let Some(primary) = site(Role::Primary) else {
        return;
    };
    let d = tmp();
    let repo = init_repo(d.path());
    let ns = primary.namespace("fail");
    claims(primary, &ns);
    let backup = |name: &str, extra: &[&str]| {
        run(primary
            .lifeboat(&repo)
            .args(["backup", "create", name, "-n", &ns])
            .args(extra))
    };
    let snapshots = || {
        primary.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "volumesnapshots,volumegroupsnapshots,jobs",
            "-o",
            "name",
        ])
    };

    let r = backup("no-secret", &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains(&format!("Secret {ns}/lifeboat-repository"))
            && r.stderr.contains("deploy/mover-secret.yaml"),
        "{}",
        r.stderr
    );
    assert_eq!(snapshots().trim(), "", "nothing was snapshotted");
    assert!(
        primary
            .get(&["-n", &ns, "secret", "lifeboat-repository"])
            .is_none(),
        "not planted"
    );

    mover_secret(primary, &ns, &repo);
    let r = backup("no-class", &["--group-snapshot-class", "nope"]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("nope"), "{}", r.stderr);

    // Back to back: one VolumeSnapshot per claim, no group.
    let out = json(&ok(backup(
        "single",
        &["--json", "--group-snapshot-class", "none"],
    )));
    let vols = out["volumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2, "{out:#}");
    assert!(vols.iter().all(|v| v["method"] == "csi"), "{out:#}");

    // Movers pointed at a repository that is not there.
    primary.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "secret",
        "lifeboat-repository",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"stringData":{{"LIFEBOAT_REPOSITORY":"{}"}}}}"#,
            d.path().join("elsewhere").display()
        ),
    ]);
    let r = backup("lost", &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("lifeboat-backup-lost"),
        "names the Job: {}",
        r.stderr
    );
    let list = ok(run(crate::support::lb(&repo).args(["backup", "list"])));
    assert!(
        !list.stdout.contains("lost"),
        "recorded nothing: {}",
        list.stdout
    );
    let left = primary.kubectl_ok(&["-n", &ns, "get", "pvc,jobs", "-o", "name"]);
    assert!(
        !left.contains("lifeboat-"),
        "clones and Jobs removed: {left}"
    );
    primary.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}

/// Makes namespace `ns` enforce Pod Security `restricted` and a ResourceQuota that counts
/// `limits.cpu` and `limits.memory`, so a pod without limits (or one `restricted` refuses) is
/// not admitted; waits until the quota controller has counted it (before that, the quota
/// admission refuses every pod).
pub fn restricted_with_quota(site: &Site, ns: &str) {
    site.kubectl_ok(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]);
    site.apply(&format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: limits, namespace: {ns}}}\n\
         spec: {{hard: {{limits.cpu: '4', limits.memory: 4Gi, requests.cpu: '4', requests.memory: 4Gi}}}}\n"
    ));
    site.wait_until(
        &format!("ResourceQuota {ns}/limits is counted"),
        Duration::from_secs(60),
        || !site.get(&["-n", ns, "resourcequota", "limits"]).unwrap()["status"]["hard"].is_null(),
    );
    // The namespace really refuses a pod without limits and securityContext.
    let refused = site.kubectl_input(
        &["apply", "--dry-run=server", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: plain, namespace: {ns}}}\n\
             spec: {{containers: [{{name: c, image: busybox, command: [sleep, '1']}}]}}\n"
        ),
    );
    assert!(!refused.status.success(), "a plain pod is refused in {ns}");
}

/// Mover and restore Jobs are admitted where real clusters put them: a namespace enforcing
/// Pod Security `restricted` with a ResourceQuota requiring limits (their default requests,
/// limits and securityContext). A Block and a Filesystem claim, backed up on the primary and
/// restored on the DR site into such a namespace, bit for bit.
#[test]
fn movers_run_under_pod_security_restricted_and_a_quota_requiring_limits() {
    let (Some(primary), Some(dr)) = (site(Role::Primary), site(Role::Dr)) else {
        return;
    };
    let d = tmp();
    let repo = init_repo(d.path());
    let ns = primary.namespace("psa");
    restricted_with_quota(primary, &ns);
    claims(primary, &ns);
    mover_secret(primary, &ns, &repo);
    // Data written straight into the volumes' files (a writer pod would need the same care).
    for (i, c) in ["data-block", "data-fs"].iter().enumerate() {
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|n| (n.wrapping_mul(2654435761).rotate_left(i as u32 + 7) >> 13) as u8)
            .collect();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(volume_file(primary, &ns, c))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &data, 0).unwrap();
    }
    let backup = run(primary.lifeboat(&repo).args([
        "--json",
        "backup",
        "create",
        "psa-1",
        "-n",
        &ns,
        "--mover-timeout",
        "90s",
    ]));
    let events = primary.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "-o",
        "custom-columns=R:.reason,M:.message",
    ]);
    assert_eq!(
        backup.code, 0,
        "{}{}\n{events}",
        backup.stdout, backup.stderr
    );
    let first = json(&backup);
    assert_eq!(first["volumes"].as_array().unwrap().len(), 2, "{first:#}");

    let target = dr.namespace("psa-dr");
    restricted_with_quota(dr, &target);
    mover_secret(dr, &target, &repo);
    let restored = run(dr.lifeboat(&repo).args([
        "--json",
        "restore",
        "create",
        "--from-backup",
        "psa-1",
        "--namespace-mapping",
        &format!("{ns}:{target}"),
        "--mover-timeout",
        "90s",
        "--context",
        "lifeboat",
    ]));
    let events = dr.kubectl_ok(&[
        "-n",
        &target,
        "get",
        "events",
        "-o",
        "custom-columns=R:.reason,M:.message",
    ]);
    assert_eq!(
        restored.code, 0,
        "{}{}\n{events}",
        restored.stdout, restored.stderr
    );
    let restored = json(&restored);
    assert!(
        restored["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] != "failed"),
        "{restored:#}"
    );
    for c in ["data-block", "data-fs"] {
        let src = volume_file(primary, &ns, c);
        let dst = volume_file(dr, &target, c);
        assert!(
            std::fs::read(&src).unwrap() == std::fs::read(&dst).unwrap(),
            "{c} restored bit for bit"
        );
    }
    primary.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
    dr.kubectl_ok(&["delete", "namespace", &target, "--wait=false"]);
}

/// A mover Job that Pod Security refuses (a root mover in a `restricted` namespace) fails the
/// backup at once with the refusal and its fix, not after `--mover-timeout`: the Job
/// controller's `FailedCreate` Event is watched beside the Job. Nothing is left behind.
#[test]
fn a_mover_refused_by_pod_security_fails_at_once_with_the_reason() {
    let Some(primary) = site(Role::Primary) else {
        return;
    };
    let d = tmp();
    let repo = init_repo(d.path());
    let ns = primary.namespace("psa-root");
    restricted_with_quota(primary, &ns);
    claims(primary, &ns);
    mover_secret(primary, &ns, &repo);
    // A timeout far beyond what the test would wait: a refusal told only by the timeout
    // would hang here instead of failing the assertions below.
    let r = run(primary.lifeboat(&repo).args([
        "backup",
        "create",
        "psa-root-1",
        "-n",
        &ns,
        "--mover-run-as-user",
        "0",
        "--mover-timeout",
        "20m",
    ]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("refused at admission")
            && r.stderr.contains("violates PodSecurity")
            && r.stderr.contains("--mover-run-as-user 0"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("not done within"), "{}", r.stderr);
    // Deleted by the cleanup; a claim may still be listed while its protection finalizer
    // lets go.
    primary.wait_until("Jobs and clones removed", Duration::from_secs(30), || {
        !primary
            .kubectl_ok(&["-n", &ns, "get", "jobs,pvc", "-o", "name"])
            .contains("lifeboat-")
    });
    // A bad quantity is refused before anything is made.
    let bad = run(primary.lifeboat(&repo).args([
        "backup",
        "create",
        "psa-root-2",
        "-n",
        &ns,
        "--mover-memory-limit",
        "2GB",
    ]));
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("not a resource quantity"),
        "{}",
        bad.stderr
    );
    primary.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}
