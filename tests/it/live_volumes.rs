//! The live standby and drill through a mocked API server that plays the controllers too (the
//! CSI snapshotter, the provisioner and the Job controller, which runs the Jobs' `lifeboat`
//! command lines for real), kept for what a real cluster does not show on demand: a standby
//! Job killed between two of its steps (counted failpoints in the Jobs' environment) and
//! resumed, and a restore Job whose volume is corrupted behind its back (the drill must say
//! so). Backups, movers, group snapshots, changed blocks, restores, the standby and the drill
//! themselves run on the real test clusters (`cluster::volumes`, `cluster::standby`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use kube::client::Body;
use lifeboat::app::record::find_backup;
use lifeboat::app::volumes::{backup_live, ConsistencyOptions};
use lifeboat::k8s::csi::MoverSettings;
use lifeboat::k8s::live::LiveCluster;
use lifeboat::k8s::source::Scope;
use lifeboat::repository::Repository;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::live::{serve, Answer};
use crate::support::{init_repo, lb, open_pw, run, tmp};

struct CsiCluster {
    dir: PathBuf,
    repo: PathBuf,
    objects: Mutex<BTreeMap<String, Value>>,
    /// Backing file of each claim (`ns/name`) and of each snapshot (`ns/name`).
    disks: Mutex<BTreeMap<String, PathBuf>>,
    snapshots: Mutex<BTreeMap<String, PathBuf>>,
    log: Mutex<Vec<String>>,
    /// Every object created, as posted.
    created: Mutex<Vec<Value>>,
    /// Some(offset): every restore Job's volume gets the byte there flipped afterwards.
    corrupt_restores: Mutex<Option<usize>>,
    /// The claim each snapshot (`ns/name`) was taken of.
    snap_claims: Mutex<BTreeMap<String, String>>,
    /// Environment the Jobs' processes get besides their own (failpoints).
    job_env: Mutex<Vec<(String, String)>>,
}

fn resource(name: &str, kind: &str, namespaced: bool) -> Value {
    json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
           "verbs": ["get", "list", "create", "patch", "delete"]})
}

fn size_of(q: &str) -> u64 {
    let n: u64 = q
        .trim_end_matches(|c: char| c.is_alphabetic())
        .parse()
        .unwrap();
    match q.trim_start_matches(|c: char| c.is_ascii_digit()) {
        "Mi" => n << 20,
        "Gi" => n << 30,
        "Ki" => n << 10,
        u => panic!("unit {u}"),
    }
}

impl CsiCluster {
    fn new(dir: &Path, repo: &Path) -> CsiCluster {
        CsiCluster {
            dir: dir.to_path_buf(),
            repo: repo.to_path_buf(),
            objects: Mutex::default(),
            disks: Mutex::default(),
            snapshots: Mutex::default(),
            log: Mutex::default(),
            created: Mutex::default(),
            job_env: Mutex::default(),
            snap_claims: Mutex::default(),
            corrupt_restores: Mutex::default(),
        }
    }

    fn created(&self, kind: &str) -> Vec<Value> {
        self.created
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["kind"] == kind)
            .cloned()
            .collect()
    }

    /// The volume mode of claim `ns/claim` (Filesystem when unset, as the API defaults it).
    fn volume_mode(&self, ns: &str, claim: &str) -> String {
        let objects = self.objects.lock().unwrap();
        objects
            .get(&format!(
                "/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}"
            ))
            .and_then(|c| c["spec"]["volumeMode"].as_str())
            .unwrap_or("Filesystem")
            .to_string()
    }

    /// Whether a claim restored from a VolumeSnapshot may be provisioned: same volume mode
    /// as the snapshot's source, or the content annotated to allow the change.
    fn conversion_allowed(&self, ns: &str, claim: &Value) -> bool {
        let Some(snap) = claim["spec"]["dataSource"]["name"].as_str() else {
            return true;
        };
        let objects = self.objects.lock().unwrap();
        let snap = &objects
            [&format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{snap}")];
        let content = snap["status"]["boundVolumeSnapshotContentName"]
            .as_str()
            .unwrap();
        let content =
            &objects[&format!("/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{content}")];
        let want = claim["spec"]["volumeMode"].as_str().unwrap_or("Filesystem");
        content["spec"]["sourceVolumeMode"].as_str() == Some(want)
            || content["metadata"]["annotations"]
                ["snapshot.storage.kubernetes.io/allow-volume-mode-change"]
                == "true"
    }

    fn put(&self, path: String, v: Value) {
        self.objects.lock().unwrap().insert(path, v);
    }

    /// Writes `len` bytes of `byte` at `at` into the disk of claim `ns/name`.
    fn fill(&self, claim: &str, at: usize, len: usize, byte: u8) {
        let disk = self.disks.lock().unwrap()[claim].clone();
        let mut data = std::fs::read(&disk).unwrap();
        data[at..at + len].fill(byte);
        std::fs::write(&disk, data).unwrap();
    }

    /// A running application: namespace `db`, two pods, a block-mode and a filesystem-mode
    /// claim with data.
    fn with_app(self) -> Self {
        self.put("/api/v1/namespaces/db".into(), json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "db", "uid": "u-ns", "resourceVersion": "1"}, "status": {"phase": "Active"}}));
        for (i, (claim, mode)) in [("data-db-0", "Block"), ("logs-db-0", "Filesystem")]
            .iter()
            .enumerate()
        {
            let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": "db", "uid": format!("u-pvc-{i}"), "resourceVersion": "5",
                    "labels": {"app": "db"}, "managedFields": [{"manager": "kube-controller-manager"}]},
                "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": mode, "storageClassName": "csi-fast",
                    "resources": {"requests": {"storage": "4Mi"}}, "volumeName": format!("pv-{claim}")},
                "status": {"phase": "Bound", "capacity": {"storage": "4Mi"}}});
            let disk = self.dir.join(format!("disk-{claim}.img"));
            let data: Vec<u8> = (0..4u32 << 20).map(|b| (b % 251) as u8 ^ i as u8).collect();
            std::fs::write(&disk, data).unwrap();
            self.disks
                .lock()
                .unwrap()
                .insert(format!("db/{claim}"), disk.clone());
            self.put(
                format!("/api/v1/namespaces/db/persistentvolumeclaims/{claim}"),
                pvc,
            );
            self.put(format!("/api/v1/persistentvolumes/pv-{claim}"), json!({"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": format!("pv-{claim}"), "uid": format!("u-pv-{i}"), "resourceVersion": "4"},
                "spec": {"capacity": {"storage": "4Mi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": mode,
                    "storageClassName": "csi-fast", "persistentVolumeReclaimPolicy": "Delete",
                    "csi": {"driver": "fake.csi", "volumeHandle": disk.to_str().unwrap()},
                    "claimRef": {"namespace": "db", "name": claim}},
                "status": {"phase": "Bound"}}));
        }
        self.put(
            "/api/v1/namespaces/db/secrets/lifeboat-repository".into(),
            json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "lifeboat-repository", "namespace": "db"}, "type": "Opaque"}),
        );
        self.put("/apis/apps/v1/namespaces/db/deployments/api".into(), json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "db", "uid": "u-dep", "resourceVersion": "11"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "api"}}, "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api", "image": "api:1"}]}}},
            "status": {"replicas": 3}}));
        self.put("/apis/batch/v1/namespaces/db/cronjobs/report".into(), json!({"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "report", "namespace": "db", "uid": "u-cj", "resourceVersion": "12"},
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "r", "image": "r:1"}], "restartPolicy": "Never"}}}}}}));
        self.put("/api/v1/namespaces/db/pods/db-0".into(), json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-0", "namespace": "db", "uid": "u-pod", "resourceVersion": "9", "labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "db:1"}]}, "status": {"phase": "Running"}}));
        self
    }

    /// The Job controller and kubelet: claims as block devices or mounted directories, a
    /// projected ServiceAccount token, the container's environment; then the command line.
    async fn run_job(&self, ns: &str, job: &Value) -> bool {
        let name = job["metadata"]["name"].as_str().unwrap();
        let message = self.dir.join(format!("termination-{ns}-{name}"));
        let _ = std::fs::remove_file(&message);
        let spec = &job["spec"]["template"]["spec"];
        let claims: BTreeMap<String, String> = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| {
                Some((
                    v["name"].as_str()?.to_string(),
                    v["persistentVolumeClaim"]["claimName"]
                        .as_str()?
                        .to_string(),
                ))
            })
            .collect();
        let c = &spec["containers"][0];
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "lifeboat-repository");
        let mut paths: Vec<(String, String)> = Vec::new();
        for dev in c["volumeDevices"].as_array().unwrap() {
            let claim = &claims[dev["name"].as_str().unwrap()];
            let Some(disk) = self
                .disks
                .lock()
                .unwrap()
                .get(&format!("{ns}/{claim}"))
                .cloned()
            else {
                // Its claim never bound: the pod would never start.
                std::fs::write(&message, format!("claim {claim} is not bound")).unwrap();
                return false;
            };
            paths.push((
                dev["devicePath"].as_str().unwrap().into(),
                disk.to_str().unwrap().into(),
            ));
        }
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if let Some(claim) = claims.get(m["name"].as_str().unwrap()) {
                let dir = self.dir.join(format!("fs-{ns}-{claim}"));
                std::fs::create_dir_all(&dir).unwrap();
                paths.push((
                    m["mountPath"].as_str().unwrap().into(),
                    dir.to_str().unwrap().into(),
                ));
            }
        }
        // A projected ServiceAccount token for its audience.
        let token = self.dir.join(format!("token-{ns}"));
        if let Some(p) = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| !v["projected"].is_null())
        {
            let t = &p["projected"]["sources"][0]["serviceAccountToken"];
            let sa = spec["serviceAccountName"].as_str().unwrap();
            std::fs::write(&token, format!("{sa}@{}", t["audience"].as_str().unwrap())).unwrap();
            paths.push((
                format!("{}/token", lifeboat::k8s::csi::CBT_TOKEN_DIR),
                token.to_str().unwrap().into(),
            ));
        }
        paths.push((
            "/dev/termination-log".into(),
            message.to_str().unwrap().into(),
        ));
        // Longest first: /dev/lifeboat-1 is a prefix of /dev/lifeboat-10.
        paths.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                paths
                    .iter()
                    .fold(a.as_str().unwrap().to_string(), |a, (from, to)| {
                        a.replace(from.as_str(), to)
                    })
            })
            .collect();
        let mut cmd = lb(&self.repo);
        for e in c["env"].as_array().into_iter().flatten() {
            cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
        }
        for (k, v) in self.job_env.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        let r = run(cmd.args(&args));
        if args[..2] == ["volume", "restore"] && r.code == 0 {
            if let Some(byte) = *self.corrupt_restores.lock().unwrap() {
                // Storage that loses a write: one byte of the restored volume flips.
                let disk = &paths
                    .iter()
                    .find(|(f, _)| f == "/dev/lifeboat-volume")
                    .unwrap()
                    .1;
                let mut data = std::fs::read(disk).unwrap();
                data[byte] ^= 0xFF;
                std::fs::write(disk, data).unwrap();
            }
        }
        self.log.lock().unwrap().push(format!(
            "job {}: exit {} {}",
            args[..2].join(" "),
            r.code,
            r.stderr.trim()
        ));
        // Its pod, terminated, with the message the kubelet keeps (or the log's end on
        // failure, as FallbackToLogsOnError).
        let mut text = std::fs::read_to_string(&message).unwrap_or_default();
        if text.is_empty() && r.code != 0 {
            let tail: Vec<char> = r.stderr.chars().rev().take(2048).collect();
            text = tail.into_iter().rev().collect();
        }
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        self.put(format!("/api/v1/namespaces/{ns}/pods/{name}-pod"), json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-pod"), "namespace": ns, "labels": {"job-name": name}},
            "status": {"phase": if r.code == 0 { "Succeeded" } else { "Failed" },
                "containerStatuses": [{"name": c["name"], "state": {"terminated": {"exitCode": r.code, "message": text}}}]}}));
        r.code == 0
    }

    async fn create(&self, path: &str, mut v: Value) -> (StatusCode, Value) {
        let kind = v["kind"].as_str().unwrap().to_string();
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        self.log
            .lock()
            .unwrap()
            .push(format!("create {kind} {ns}/{name}"));
        self.created.lock().unwrap().push(v.clone());
        match kind.as_str() {
            "VolumeSnapshot" => {
                let claim = v["spec"]["source"]["persistentVolumeClaimName"]
                    .as_str()
                    .unwrap();
                let from = self.disks.lock().unwrap()[&format!("{ns}/{claim}")].clone();
                self.snap_claims
                    .lock()
                    .unwrap()
                    .insert(format!("{ns}/{name}"), claim.to_string());
                let to = self.dir.join(format!("snap-{name}.img"));
                std::fs::copy(from, &to).unwrap();
                self.snapshots
                    .lock()
                    .unwrap()
                    .insert(format!("{ns}/{name}"), to);
                // Its content, whose handle the SnapshotMetadata service takes as the base.
                let content = format!("snapcontent-{name}");
                let mode = self.volume_mode(&ns, claim);
                self.put(format!("/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{content}"),
                    json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                        "metadata": {"name": content}, "spec": {"sourceVolumeMode": mode},
                        "status": {"snapshotHandle": format!("csi-snap:{ns}/{name}"), "readyToUse": true}}));
                v["status"] = json!({"creationTime": "2026-11-24T10:00:00Z", "readyToUse": true,
                    "boundVolumeSnapshotContentName": content});
            }
            "VolumeGroupSnapshot" => {
                // The group snapshotter: every claim the selector picks, at one instant.
                let want =
                    v["spec"]["source"]["selector"]["matchLabels"]["lifeboat.dev/group"].clone();
                let claims: Vec<String> = self
                    .objects
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(k, o)| {
                        k.contains(&format!("/namespaces/{ns}/persistentvolumeclaims/"))
                            && o["metadata"]["labels"]["lifeboat.dev/group"] == want
                    })
                    .map(|(_, o)| o["metadata"]["name"].as_str().unwrap().to_string())
                    .collect();
                // As the snapshot-controller (external-snapshotter 8.2+) does it: a member
                // VolumeSnapshot per claim, owned by the group, naming its claim in
                // spec.source and the group in status; the group's status lists no members.
                for (i, claim) in claims.iter().enumerate() {
                    let snap = format!("snapshot-{name}-{i}");
                    let to = self.dir.join(format!("snap-{snap}.img"));
                    std::fs::copy(&self.disks.lock().unwrap()[&format!("{ns}/{claim}")], &to)
                        .unwrap();
                    self.snapshots
                        .lock()
                        .unwrap()
                        .insert(format!("{ns}/{snap}"), to);
                    self.snap_claims
                        .lock()
                        .unwrap()
                        .insert(format!("{ns}/{snap}"), claim.clone());
                    let content = format!("snapcontent-{snap}");
                    let mode = self.volume_mode(&ns, claim);
                    self.put(format!("/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{content}"),
                        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                            "metadata": {"name": content}, "spec": {"sourceVolumeMode": mode},
                            "status": {"snapshotHandle": format!("csi-snap:{ns}/{snap}"), "readyToUse": true}}));
                    self.put(format!("/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{snap}"),
                        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                            "metadata": {"name": snap, "namespace": ns,
                                "ownerReferences": [{"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2",
                                    "kind": "VolumeGroupSnapshot", "name": name, "uid": "g-uid"}]},
                            "spec": {"source": {"persistentVolumeClaimName": claim}},
                            "status": {"creationTime": "2026-11-24T10:00:00Z", "readyToUse": true,
                                "boundVolumeSnapshotContentName": content, "volumeGroupSnapshotName": name}}));
                }
                v["status"] = json!({"creationTime": "2026-11-24T10:00:00Z", "readyToUse": true,
                    "boundVolumeGroupSnapshotContentName": format!("groupsnapcontent-{name}")});
            }
            "PersistentVolumeClaim" if !v["spec"]["volumeName"].is_null() => {
                // Pre-bound to a volume created before it: its disk is that volume's.
                v["status"] = json!({"phase": "Bound"});
            }
            "PersistentVolumeClaim" if !self.conversion_allowed(&ns, &v) => {
                // As external-provisioner ≥ 5 does (KEP-3141): the claim stays Pending.
                self.log
                    .lock()
                    .unwrap()
                    .push(format!("refused volume mode conversion {ns}/{name}"));
                v["status"] = json!({"phase": "Pending"});
            }
            "PersistentVolumeClaim" => {
                let disk = self.dir.join(format!("disk-{name}.img"));
                match v["spec"]["dataSource"]["name"].as_str() {
                    Some(s) => {
                        std::fs::copy(&self.snapshots.lock().unwrap()[&format!("{ns}/{s}")], &disk)
                            .unwrap();
                    }
                    None => std::fs::File::create(&disk)
                        .unwrap()
                        .set_len(size_of(
                            v["spec"]["resources"]["requests"]["storage"]
                                .as_str()
                                .unwrap(),
                        ))
                        .unwrap(),
                }
                self.disks
                    .lock()
                    .unwrap()
                    .insert(format!("{ns}/{name}"), disk.clone());
                let pv = format!("pv-{name}");
                v["spec"]["volumeName"] = json!(pv);
                v["status"] = json!({"phase": "Bound"});
                self.put(format!("/api/v1/persistentvolumes/{pv}"), json!({"apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": {"name": pv}, "spec": {"capacity": {"storage": v["spec"]["resources"]["requests"]["storage"]},
                    "accessModes": ["ReadWriteOnce"], "volumeMode": v["spec"]["volumeMode"], "storageClassName": v["spec"]["storageClassName"],
                    "persistentVolumeReclaimPolicy": "Delete", "csi": {"driver": "fake.csi", "volumeHandle": disk.to_str().unwrap()}},
                    "status": {"phase": "Bound"}}));
            }
            "Job" => {
                let ok = self.run_job(&ns, &v).await;
                v["status"] = if ok {
                    json!({"succeeded": 1})
                } else {
                    json!({"failed": 1})
                };
            }
            "PersistentVolume" => {
                // Re-created on the same volume handle: the disk follows it.
                let handle = PathBuf::from(v["spec"]["csi"]["volumeHandle"].as_str().unwrap());
                let claim = &v["spec"]["claimRef"];
                self.disks.lock().unwrap().insert(
                    format!(
                        "{}/{}",
                        claim["namespace"].as_str().unwrap(),
                        claim["name"].as_str().unwrap()
                    ),
                    handle,
                );
            }
            _ => {}
        }
        self.put(format!("{path}/{name}"), v.clone());
        (StatusCode::CREATED, v)
    }

    fn list(&self, path: &str) -> Value {
        let objects = self.objects.lock().unwrap();
        let depth = path.matches('/').count() + 1;
        let items: Vec<Value> = objects
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{path}/")) && k.matches('/').count() == depth)
            .map(|(_, v)| v.clone())
            .collect();
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "100"}, "items": items})
    }
}

impl Answer for CsiCluster {
    async fn answer(&self, req: Request<Body>) -> (StatusCode, Value) {
        use http_body_util::BodyExt;
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let discovery = match path.as_str() {
            "/api" => Some(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ),
            "/apis" => Some(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}], "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}},
                {"name": "batch", "versions": [{"groupVersion": "batch/v1", "version": "v1"}], "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}}]}),
            ),
            "/apis/apps/v1" => Some(
                json!({"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [resource("deployments", "Deployment", true)]}),
            ),
            "/apis/batch/v1" => Some(
                json!({"kind": "APIResourceList", "groupVersion": "batch/v1", "resources": [resource("cronjobs", "CronJob", true)]}),
            ),
            "/api/v1" => Some(
                json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                resource("namespaces", "Namespace", false), resource("pods", "Pod", true),
                resource("persistentvolumeclaims", "PersistentVolumeClaim", true),
                resource("persistentvolumes", "PersistentVolume", false)]}),
            ),
            _ => None,
        };
        if let Some(d) = discovery {
            return (StatusCode::OK, d);
        }
        let not_found = (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "code": 404, "reason": "NotFound", "message": format!("{path} not found")}),
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        match method.as_str() {
            // The group snapshot API as Kubernetes 1.34 with external-snapshotter 8.4 serves
            // it: v1beta2 only (lifeboat asks for v1 first).
            _ if path.starts_with("/apis/groupsnapshot.storage.k8s.io/")
                && !path.starts_with("/apis/groupsnapshot.storage.k8s.io/v1beta2/") =>
            {
                not_found
            }
            "GET" => {
                if let Some(v) = self.objects.lock().unwrap().get(&path) {
                    return (StatusCode::OK, v.clone());
                }
                if path.ends_with('s') && !path.contains("/persistentvolumes/") {
                    return (StatusCode::OK, self.list(&path));
                }
                not_found
            }
            "POST" => {
                self.create(&path, serde_json::from_slice(&body).unwrap())
                    .await
            }
            "PATCH" => {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let mut objects = self.objects.lock().unwrap();
                if let Some(v) = objects.get_mut(&path) {
                    // A JSON merge patch (RFC 7386); server-side apply of an existing object
                    // merges the same way for what the tests look at.
                    merge(v, &patch);
                    self.log.lock().unwrap().push(format!("patch {path}"));
                    return (StatusCode::OK, v.clone());
                }
                // Server-side apply of a restored object.
                let mut v = patch;
                v["metadata"]["uid"] = json!("new-uid");
                // The controllers and kubelet: a workload's replicas come up.
                if v["kind"] == "Deployment" || v["kind"] == "StatefulSet" {
                    v["status"] =
                        json!({"readyReplicas": v["spec"]["replicas"].as_i64().unwrap_or(1)});
                }
                self.log.lock().unwrap().push(format!("apply {}", path));
                objects.insert(path, v.clone());
                (StatusCode::OK, v)
            }
            "DELETE" => {
                self.log.lock().unwrap().push(format!("delete {path}"));
                let mut objects = self.objects.lock().unwrap();
                let removed = objects.remove(&path);
                // Background propagation: a Job's pods go with it.
                if let Some(job) = removed.as_ref().filter(|v| v["kind"] == "Job") {
                    let name = &job["metadata"]["name"];
                    objects.retain(|_, o| {
                        o["kind"] != "Pod" || o["metadata"]["labels"]["job-name"] != *name
                    });
                }
                // The snapshot controller: a deleted VolumeSnapshot's content goes with it.
                if let Some(c) = removed
                    .as_ref()
                    .and_then(|v| v["status"]["boundVolumeSnapshotContentName"].as_str())
                {
                    objects.remove(&format!(
                        "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/{c}"
                    ));
                }
                // A filesystem claim's files go with it.
                if let Some(c) = removed
                    .as_ref()
                    .filter(|v| v["kind"] == "PersistentVolumeClaim")
                {
                    let (ns, name) = (&c["metadata"]["namespace"], &c["metadata"]["name"]);
                    let _ = std::fs::remove_dir_all(self.dir.join(format!(
                        "fs-{}-{}",
                        ns.as_str().unwrap_or_default(),
                        name.as_str().unwrap_or_default()
                    )));
                }
                // The volume controller: a deleted claim's volume goes with it unless retained.
                if let Some(pv) = removed
                    .as_ref()
                    .and_then(|v| v["spec"]["volumeName"].as_str())
                {
                    let key = format!("/api/v1/persistentvolumes/{pv}");
                    if objects
                        .get(&key)
                        .map(|v| v["spec"]["persistentVolumeReclaimPolicy"] == "Delete")
                        == Some(true)
                    {
                        objects.remove(&key);
                    }
                }
                match removed {
                    Some(_) => (
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                    ),
                    None => not_found,
                }
            }
            m => panic!("unexpected {m} {path}"),
        }
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        v => *target = v.clone(),
    }
}

/// Backs up namespace `db` of `live` as `name`.
async fn backup_db(
    repo: &Arc<Repository>,
    name: &str,
    live: &LiveCluster,
    opts: &ConsistencyOptions,
    settings: MoverSettings,
) -> Result<lifeboat::app::record::BackupSummary, lifeboat::app::record::AppBackupError> {
    let scope = Scope {
        namespaces: vec!["db".into()],
        ..Default::default()
    };
    let filters = lifeboat::format::BackupFilters {
        namespaces: vec!["db".into()],
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    backup_live(
        repo.clone(),
        name,
        live,
        &scope,
        filters,
        opts,
        settings,
        &cancel,
    )
    .await
}

fn movers() -> MoverSettings {
    MoverSettings {
        timeout: Duration::from_secs(30),
        secret_data: Some(
            [
                ("LIFEBOAT_REPOSITORY".to_string(), "/repo".to_string()),
                ("LIFEBOAT_PASSWORD".into(), "pw".into()),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

#[test]
fn live_standby_applies_held_writes_new_claims_and_activate_deactivate_toggle() {
    // Its futures (a whole standby cycle, in a debug build) need more than the 2 MiB of
    // stack a test thread has.
    crate::support::on_big_stack(|| async move {
        use lifeboat::format::standby::VolumeMode;
        use lifeboat::standby::{cycle_live, NamespaceState, StandbyOptions};
        let d = tmp();
        let repo_path = init_repo(d.path());
        std::fs::create_dir_all(d.path().join("p")).unwrap();
        let primary = Arc::new(CsiCluster::new(&d.path().join("p"), &repo_path).with_app());
        let repo = open_pw(&repo_path).await;
        let opts = ConsistencyOptions {
            schedule: Some("db-hourly".into()),
            ..Default::default()
        };
        backup_db(
            &repo,
            "live-1",
            &LiveCluster::from_client(serve(primary.clone()), "p"),
            &opts,
            movers(),
        )
        .await
        .unwrap();

        // The DR site: an empty cluster.
        let dr_dir = d.path().join("dr");
        std::fs::create_dir_all(&dr_dir).unwrap();
        let dr = Arc::new(CsiCluster::new(&dr_dir, &repo_path));
        let live = LiveCluster::from_client(serve(dr.clone()), "dr");
        let catalog = Arc::new(
            lifeboat::scheduler::catalog::Catalog::open(&d.path().join("state/catalog.sqlite"))
                .unwrap(),
        );
        let o = StandbyOptions {
            schedule: "db-hourly".into(),
            namespaces: Default::default(),
            overwrite_claims: false,
        };
        let reports = cycle_live(&repo, &live, &catalog, &o, movers())
            .await
            .unwrap();
        assert_eq!(
            reports[0].state,
            NamespaceState::Applied,
            "{reports:#?}\n{:#?}",
            dr.log.lock().unwrap()
        );
        {
            let objects = dr.objects.lock().unwrap();
            let api = &objects["/apis/apps/v1/namespaces/db/deployments/api"];
            assert_eq!(api["spec"]["replicas"], 0, "held");
            assert_eq!(
                api["metadata"]["annotations"]["lifeboat.dev/original-replicas"],
                "3"
            );
            assert_eq!(
                objects["/apis/batch/v1/namespaces/db/cronjobs/report"]["spec"]["suspend"],
                true
            );
        }
        {
            // The namespace standby made is labelled as lifeboat's, and its movers' Secret holds
            // this process's repository settings.
            let objects = dr.objects.lock().unwrap();
            let ns = &objects["/api/v1/namespaces/db"];
            assert_eq!(ns["kind"], "Namespace");
            let secret = &objects["/api/v1/namespaces/db/secrets/lifeboat-repository"];
            assert_eq!(secret["stringData"]["LIFEBOAT_PASSWORD"], "pw");
        }
        let (pd, dd) = (
            primary.disks.lock().unwrap().clone(),
            dr.disks.lock().unwrap().clone(),
        );
        for claim in ["data-db-0", "logs-db-0"] {
            assert!(
                std::fs::read(&pd[&format!("db/{claim}")]).unwrap()
                    == std::fs::read(&dd[&format!("db/{claim}")]).unwrap(),
                "{claim}"
            );
        }
        assert_eq!(
            cycle_live(&repo, &live, &catalog, &o, movers())
                .await
                .unwrap()[0]
                .state,
            NamespaceState::UpToDate
        );

        // The primary changes both claims; the next backup moves the site's existing claims by
        // the block-map difference, in one standby Job (the filesystem-mode one through a
        // block-mode view of its volume). A Job killed right after its commit leaves the site
        // to the next cycle, which finishes it.
        let change = |round: u8| {
            for (claim, at) in [("db/data-db-0", 65536usize), ("db/logs-db-0", 3 << 20)] {
                primary.fill(claim, at, 4096, round);
            }
        };
        let same_as_primary = || {
            let (pd, dd) = (
                primary.disks.lock().unwrap().clone(),
                dr.disks.lock().unwrap().clone(),
            );
            ["data-db-0", "logs-db-0"].iter().all(|claim| {
                std::fs::read(&pd[&format!("db/{claim}")]).unwrap()
                    == std::fs::read(&dd[&format!("db/{claim}")]).unwrap()
            })
        };
        for (round, kill) in [(1u8, false), (2, true)] {
            change(round);
            backup_db(
                &repo,
                &format!("live-{}", round + 1),
                &LiveCluster::from_client(serve(primary.clone()), "p"),
                &opts,
                movers(),
            )
            .await
            .unwrap();
            if round == 1 {
                // A journal claim too small for the changed blocks: refused with the fix named,
                // before anything on the site changed.
                let key = "/api/v1/namespaces/db/persistentvolumeclaims/lifeboat-standby-journal";
                dr.put(key.into(), json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "lifeboat-standby-journal", "namespace": "db"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Ki"}}},
                "status": {"phase": "Bound", "capacity": {"storage": "64Ki"}}}));
                let site = || -> Vec<Vec<u8>> {
                    let dd = dr.disks.lock().unwrap().clone();
                    ["data-db-0", "logs-db-0"]
                        .iter()
                        .map(|c| std::fs::read(&dd[&format!("db/{c}")]).unwrap())
                        .collect()
                };
                let before = site();
                let r = cycle_live(&repo, &live, &catalog, &o, movers())
                    .await
                    .unwrap();
                let e = r[0].error.clone().unwrap_or_default();
                assert!(
                    r[0].state == NamespaceState::Failed
                        && e.contains("expand it")
                        && e.contains("kubectl -n db patch pvc lifeboat-standby-journal"),
                    "{r:#?}"
                );
                assert!(site() == before, "the site is unchanged");
                dr.objects.lock().unwrap().remove(key);
            }
            if kill {
                dr.job_env
                    .lock()
                    .unwrap()
                    .push(("LIFEBOAT_FAILPOINT".into(), "standby-after-commit".into()));
                let r = cycle_live(&repo, &live, &catalog, &o, movers())
                    .await
                    .unwrap();
                assert_eq!(r[0].state, NamespaceState::Failed, "{r:#?}");
                assert!(!same_as_primary(), "committed, not yet replayed");
                dr.job_env.lock().unwrap().clear();
            }
            let r = cycle_live(&repo, &live, &catalog, &o, movers())
                .await
                .unwrap();
            assert_eq!(
                r[0].state,
                NamespaceState::Applied,
                "{r:#?}\n{:#?}",
                dr.log.lock().unwrap()
            );
            for v in &r[0].volumes {
                if kill {
                    // The killed Job's commit was finished first: nothing was left to do.
                    assert_eq!(v.mode, VolumeMode::Unchanged, "{v:?}");
                } else {
                    // One 4 KiB write: its 64 KiB block, fetched compressed, nothing else.
                    assert_eq!(v.mode, VolumeMode::Delta, "{v:?}");
                    assert_eq!((v.blocks_changed, v.written_bytes), (1, 65536), "{v:?}");
                    assert!(
                        v.fetched_bytes > 0 && v.fetched_bytes <= 65536 + 1024,
                        "{v:?}"
                    );
                }
            }
            assert!(
                same_as_primary(),
                "round {round}: the site's claims hold the new backup"
            );
            let objects = dr.objects.lock().unwrap();
            for claim in ["data-db-0", "logs-db-0"] {
                let c = &objects[&format!("/api/v1/namespaces/db/persistentvolumeclaims/{claim}")];
                let want = r[0]
                    .volumes
                    .iter()
                    .find(|v| v.pvc == claim)
                    .unwrap()
                    .snapshot
                    .clone();
                assert_eq!(
                    c["metadata"]["annotations"]["lifeboat.dev/standby-snapshot"],
                    want.as_str()
                );
            }
            let raw: Vec<&String> = objects
                .keys()
                .filter(|k| k.contains("lifeboat-raw"))
                .collect();
            assert!(raw.is_empty(), "the block-mode views are removed: {raw:?}");
            assert!(
                !objects.keys().any(|k| k.contains("/jobs/")),
                "Jobs removed"
            );
        }
        let journal = dr_dir.join("fs-db-lifeboat-standby-journal");
        let left: Vec<String> = std::fs::read_dir(&journal)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.iter().all(|f| f.ends_with(".lifeboat-applied")),
            "only the records stay on the journal claim: {left:?}"
        );

        // Failover on the live site, then back. Activation first drops standby's records of the
        // claims (the application will change them).
        lifeboat::standby::forget_live_claims(&live, "db")
            .await
            .unwrap();
        {
            let objects = dr.objects.lock().unwrap();
            assert!(!objects.contains_key(
                "/api/v1/namespaces/db/persistentvolumeclaims/lifeboat-standby-journal"
            ));
            for claim in ["data-db-0", "logs-db-0"] {
                let c = &objects[&format!("/api/v1/namespaces/db/persistentvolumeclaims/{claim}")];
                assert!(
                    c["metadata"]["annotations"]
                        .get("lifeboat.dev/standby-snapshot")
                        .is_none(),
                    "{c}"
                );
            }
        }
        let changes = live.set_running("db", true).await.unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        {
            let objects = dr.objects.lock().unwrap();
            let api = &objects["/apis/apps/v1/namespaces/db/deployments/api"];
            assert_eq!(api["spec"]["replicas"], 3);
            assert!(api["metadata"]["annotations"]
                .get("lifeboat.dev/original-replicas")
                .is_none());
            assert_eq!(
                objects["/apis/batch/v1/namespaces/db/cronjobs/report"]["spec"]["suspend"],
                false
            );
        }
        assert!(
            live.set_running("db", true).await.unwrap().is_empty(),
            "idempotent"
        );
        // A standby that lost its catalog (a restarted pod) still leaves an activated namespace
        // alone: activation is on the namespace too.
        use lifeboat::standby::ACTIVATED;
        live.annotate_namespace("db", ACTIVATED, Some("true"))
            .await
            .unwrap();
        let fresh = Arc::new(
            lifeboat::scheduler::catalog::Catalog::open(&d.path().join("state/fresh.sqlite"))
                .unwrap(),
        );
        let r = cycle_live(&repo, &live, &fresh, &o, movers())
            .await
            .unwrap();
        assert_eq!(r[0].state, NamespaceState::Activated, "{r:#?}");
        assert_eq!(
            dr.objects.lock().unwrap()["/apis/apps/v1/namespaces/db/deployments/api"]["spec"]
                ["replicas"],
            3,
            "still running"
        );
        live.annotate_namespace("db", ACTIVATED, None)
            .await
            .unwrap();
        assert_eq!(live.set_running("db", false).await.unwrap().len(), 2);
        assert_eq!(
            dr.objects.lock().unwrap()["/apis/apps/v1/namespaces/db/deployments/api"]["spec"]
                ["replicas"],
            0
        );

        // While active, the application wrote to its claims. `deactivate` gives them back to
        // standby with unknown content, so the next backup is written whole, never as a delta
        // onto what the application changed.
        dr.fill("db/data-db-0", 1 << 20, 4096, 0xEE);
        lifeboat::standby::claim_live_claims(&live, "db")
            .await
            .unwrap();
        catalog.set_activated("db", false).unwrap();
        catalog.forget_applied("db").unwrap();
        change(4);
        backup_db(
            &repo,
            "live-5",
            &LiveCluster::from_client(serve(primary.clone()), "p"),
            &opts,
            movers(),
        )
        .await
        .unwrap();
        let r = cycle_live(&repo, &live, &catalog, &o, movers())
            .await
            .unwrap();
        assert_eq!(r[0].state, NamespaceState::Applied, "{r:#?}");
        assert!(
            r[0].volumes.iter().all(|v| v.mode == VolumeMode::Full),
            "{:?}",
            r[0].volumes
        );
        assert!(same_as_primary(), "written whole");

        // Failback onto the primary: its own claims are not standby's. Refused, naming the
        // option; with it, written whole.
        let primary_live = LiveCluster::from_client(serve(primary.clone()), "p");
        let back = Arc::new(
            lifeboat::scheduler::catalog::Catalog::open(&d.path().join("state/primary.sqlite"))
                .unwrap(),
        );
        primary.fill("db/logs-db-0", 0, 4096, 0x11); // the primary's stale data
        let r = cycle_live(&repo, &primary_live, &back, &o, movers())
            .await
            .unwrap();
        let e = r[0].error.clone().unwrap_or_default();
        assert!(
            r[0].state == NamespaceState::Failed && e.contains("--overwrite-claims"),
            "{r:#?}"
        );
        let o2 = StandbyOptions {
            overwrite_claims: true,
            ..o.clone()
        };
        let r = cycle_live(&repo, &primary_live, &back, &o2, movers())
            .await
            .unwrap();
        assert_eq!(r[0].state, NamespaceState::Applied, "{r:#?}");
        assert!(
            r[0].volumes.iter().all(|v| v.mode == VolumeMode::Full),
            "{:?}",
            r[0].volumes
        );
        assert!(same_as_primary(), "the primary holds the backup again");
    })
}

/// A drill on a live site: the newest backup restored into a new namespace, every volume
/// verified against its snapshot by a Job before the applications start, the applications
/// up (the RTO measured), every object checked, and the namespace removed on request. A
/// volume the storage corrupted is reported, and a drill never writes over a namespace.
#[test]
fn a_live_drill_verifies_volumes_and_objects_and_measures_the_rto() {
    // Its futures (a whole drill, in a debug build) need more than the 2 MiB of
    // stack a test thread has.
    crate::support::on_big_stack(|| async move {
        use lifeboat::standby::drill_live;
        let d = tmp();
        let repo_path = init_repo(d.path());
        std::fs::create_dir_all(d.path().join("p")).unwrap();
        let primary = Arc::new(CsiCluster::new(&d.path().join("p"), &repo_path).with_app());
        let repo = open_pw(&repo_path).await;
        let primary_live = LiveCluster::from_client(serve(primary.clone()), "p");
        backup_db(
            &repo,
            "live-1",
            &primary_live,
            &ConsistencyOptions::default(),
            movers(),
        )
        .await
        .unwrap();
        let backup = find_backup(&repo, "live-1").await.unwrap().1;
        let dr_dir = d.path().join("dr");
        std::fs::create_dir_all(&dr_dir).unwrap();
        let dr = Arc::new(CsiCluster::new(&dr_dir, &repo_path));
        let live = LiveCluster::from_client(serve(dr.clone()), "dr");

        let report = drill_live(&repo, &live, movers(), &backup, "db", "db-drill", false)
            .await
            .unwrap();
        assert_eq!(report.volumes.len(), 2, "{report:#?}");
        assert!(
            report
                .volumes
                .iter()
                .all(|v| v.verified && v.blocks_verified == 64),
            "{report:#?}"
        );
        assert!(report.objects_restored > 0);
        assert_eq!(
            report.objects_verified, report.objects_restored,
            "{report:#?}"
        );
        assert!(report.rto_seconds > 0.0 && !report.removed);
        {
            let objects = dr.objects.lock().unwrap();
            let api = &objects["/apis/apps/v1/namespaces/db-drill/deployments/api"];
            assert_eq!(api["spec"]["replicas"], 3, "started");
            let claim = &objects["/api/v1/namespaces/db-drill/persistentvolumeclaims/data-db-0"];
            assert_eq!(
                claim["metadata"]["labels"]["app"], "db",
                "created from the backed-up claim"
            );
            let posted = dr
                .created("PersistentVolumeClaim")
                .into_iter()
                .find(|c| c["metadata"]["name"] == "data-db-0")
                .unwrap();
            assert!(
                posted["spec"]["volumeName"].is_null(),
                "on a volume of its own: {posted}"
            );
            assert!(
                !objects
                    .keys()
                    .any(|k| k.contains("lifeboat-raw") || k.contains("/jobs/")),
                "verify views and Jobs removed"
            );
        }
        let (pd, dd) = (
            primary.disks.lock().unwrap().clone(),
            dr.disks.lock().unwrap().clone(),
        );
        for claim in ["data-db-0", "logs-db-0"] {
            assert!(
                std::fs::read(&pd[&format!("db/{claim}")]).unwrap()
                    == std::fs::read(&dd[&format!("db-drill/{claim}")]).unwrap(),
                "{claim}"
            );
        }

        // Never over an existing namespace.
        let e = drill_live(&repo, &live, movers(), &backup, "db", "db-drill", true)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("namespace db-drill exists"), "{e}");

        // Storage that corrupts what was written: the drill says which volume.
        *dr.corrupt_restores.lock().unwrap() = Some(70_000);
        let report = drill_live(&repo, &live, movers(), &backup, "db", "db-drill-2", true)
            .await
            .unwrap();
        assert!(
            report
                .volumes
                .iter()
                .all(|v| !v.verified && v.blocks_verified == 63),
            "{report:#?}"
        );
        assert!(report.removed);
        assert!(!dr
            .objects
            .lock()
            .unwrap()
            .contains_key("/api/v1/namespaces/db-drill-2"));
    })
}
