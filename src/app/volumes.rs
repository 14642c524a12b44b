//! The data of an application backup: takes the captured objects of a scope, the rules and a
//! source of volumes; gives one volume snapshot per PersistentVolumeClaim, all copied in one
//! group inside the rules' barrier, and on restore writes each claim's data to the target
//! before the workloads that mount it are applied. Must not record a backup whose pre rules
//! failed under `onError: Abort` (nothing is stored then), and must not overwrite a target
//! volume that the existing-resource policy says to keep.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::app::copies::{take_group, volume_path, VolumeFile};
use crate::app::record::{AppBackupError, BackupBuilder, BackupSummary, Planned};
use crate::format::{AppBackup, BackedUpVolume, BackupFilters, CaptureFailure};
use crate::hooks::{around, pod_targets, Exec, KubeExec, LocalExec, Rule};
use crate::k8s::objects::ObjRef;
use crate::k8s::source::{ApplyResult, ClusterDir, ExistingPolicy, Exported, Outcome};
use crate::repository::Repository;
use crate::volume::backup::{backup_volume, BackupOptions};
use crate::volume::restore::{restore_volume, RestoreOptions};

/// Rules and volume choices of one application backup.
#[derive(Debug, Clone)]
pub struct ConsistencyOptions {
    /// Back up the data of every claim in scope (`--include-volumes`).
    pub include_volumes: bool,
    pub pre: Vec<Rule>,
    pub post: Vec<Rule>,
    /// Use reflinks where the filesystem allows (else copies).
    pub allow_reflink: bool,
    /// Capture every object in scope; false: only the claims (and their volumes), which the
    /// data needs to be restored.
    pub include_resources: bool,
    /// The BackupSchedule making this backup, recorded in it.
    pub schedule: Option<String>,
}

impl Default for ConsistencyOptions {
    fn default() -> Self {
        ConsistencyOptions {
            include_volumes: true,
            pre: Vec::new(),
            post: Vec::new(),
            allow_reflink: true,
            include_resources: true,
            schedule: None,
        }
    }
}

/// Whether an object goes into a backup that leaves the other resources out.
fn needed_for_volumes(r: &ObjRef) -> bool {
    r.group().is_empty()
        && matches!(
            r.kind.as_str(),
            "PersistentVolumeClaim" | "PersistentVolume" | "Namespace"
        )
}

/// The bound PersistentVolumeClaims among captured objects, as (namespace, name), sorted. A
/// claim whose phase is `Pending` has no volume yet, so no data to back up.
pub fn claims(objects: &[Exported]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = objects
        .iter()
        .filter(|e| e.r.kind == "PersistentVolumeClaim" && e.r.group().is_empty())
        .filter(|e| {
            e.value
                .pointer("/status/phase")
                .and_then(serde_json::Value::as_str)
                != Some("Pending")
        })
        .filter_map(|e| Some((e.r.namespace.clone()?, e.r.name.clone())))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The volume name a claim's snapshots chain under (incrementals follow it).
pub fn volume_name(namespace: &str, pvc: &str) -> String {
    format!("pvc/{namespace}/{pvc}")
}

/// Backs up the objects selected from a cluster directory and the data of their claims: the
/// pre rules run (as local commands in the directory), all volumes are copied at once behind
/// the barrier, the post rules run, then the copies are backed up and the record written.
#[allow(clippy::too_many_arguments)]
pub async fn backup_cluster_dir(
    repo: Arc<Repository>,
    name: &str,
    dir: &ClusterDir,
    selected: Vec<Exported>,
    filters: BackupFilters,
    opts: &ConsistencyOptions,
    cancel: &CancellationToken,
) -> Result<BackupSummary, AppBackupError> {
    // A taken name fails here, before any rule runs.
    let mut builder = BackupBuilder::new(repo.clone(), name).await?;
    builder.set_schedule(opts.schedule.clone());
    let mut failures = Vec::new();
    let mut volumes = Vec::new();
    if opts.include_volumes {
        for (ns, pvc) in claims(&selected) {
            let path = volume_path(dir.root(), &ns, &pvc);
            if path.is_file() {
                volumes.push(VolumeFile {
                    namespace: ns,
                    pvc,
                    path,
                });
            } else {
                failures.push(CaptureFailure {
                    what: format!("volume data of PersistentVolumeClaim {ns}/{pvc}"),
                    reason: format!("no file {}", path.display()),
                });
            }
        }
    }
    let pods = pod_targets(selected.iter().map(|e| &e.value));
    let exec: Arc<dyn Exec> = Arc::new(LocalExec {
        dir: dir.root().to_path_buf(),
    });
    let work = dir
        .root()
        .join(".lifeboat")
        .join("snapshots")
        // A file name holds 255 bytes: the longest backup name (253) and the random suffix
        // would not fit; the work directory only needs to be unique.
        .join(format!(
            "{}-{}",
            &name[..name.len().min(200)],
            hex::encode(rand::random::<[u8; 4]>())
        ));
    let allow_reflink = opts.allow_reflink;
    // The step owns what it uses: a future borrowing here would not be provably Send.
    let step_volumes = volumes.clone();
    let (outcome, report) = around(
        exec,
        &pods,
        &opts.pre,
        &opts.post,
        cancel,
        move || async move {
            tokio::task::spawn_blocking(move || take_group(&step_volumes, &work, allow_reflink))
                .await
                .map_err(|e| AppBackupError::Worker(e.to_string()))?
                .map_err(AppBackupError::from)
        },
    )
    .await;
    for w in &report.warnings {
        tracing::warn!(backup = name, "{w}");
    }
    let group = outcome??;

    let mut backed_up = Vec::new();
    let mut bytes_read = 0;
    for t in &group.taken {
        if cancel.is_cancelled() {
            return Err(AppBackupError::Cancelled);
        }
        let mut o = BackupOptions::new(volume_name(&t.volume.namespace, &t.volume.pvc), &t.copy);
        o.label = Some(format!(
            "{} {}",
            dir.describe(),
            t.volume
                .path
                .strip_prefix(dir.root())
                .unwrap_or(&t.volume.path)
                .display()
        ));
        let out = backup_volume(repo.clone(), &o, &ProgressBar::hidden())
            .await
            .map_err(|source| AppBackupError::Volume {
                namespace: t.volume.namespace.clone(),
                pvc: t.volume.pvc.clone(),
                source,
            })?;
        bytes_read += out.stats.bytes_read;
        backed_up.push(BackedUpVolume {
            namespace: t.volume.namespace.clone(),
            pvc: t.volume.pvc.clone(),
            snapshot: out.snapshot_id,
            size: t.size,
            method: t.method,
        });
    }
    drop(group);
    builder.set_volumes(backed_up, report, bytes_read);
    for e in selected {
        if opts.include_resources || needed_for_volumes(&e.r) {
            builder.add(e).await?;
        }
    }
    builder.finish(&dir.describe(), filters, failures).await
}

/// Whether a planned object restores the claim whose data `v` is.
pub fn restores_claim(p: &Planned, v: &BackedUpVolume) -> bool {
    p.skipped.is_none()
        && p.source.kind == "PersistentVolumeClaim"
        && p.source.namespace.as_deref() == Some(&v.namespace)
        && p.source.name == v.pvc
}

/// Restores the data of each claim the plan restores into `root` (a cluster directory or an
/// output directory), at `volumes/<target namespace>/<claim>.img`. Call before the objects are
/// applied. An existing volume file is kept under [`ExistingPolicy::Skip`] and updated in
/// place (only differing blocks written) otherwise. One failed volume does not stop the
/// others; its result says why.
pub async fn restore_volumes_to_dir(
    repo: Arc<Repository>,
    backup: &AppBackup,
    plan: &[Planned],
    root: &Path,
    policy: ExistingPolicy,
) -> Vec<ApplyResult> {
    let mut out = Vec::new();
    for v in &backup.volumes {
        let Some(p) = plan.iter().find(|p| restores_claim(p, v)) else {
            continue;
        };
        let target_ns = p.target.namespace.clone().unwrap_or_default();
        let path = volume_path(root, &target_ns, &v.pvc);
        let r = ObjRef {
            api_version: "v1".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: Some(target_ns),
            name: v.pvc.clone(),
        };
        let exists = path.exists();
        if exists && policy == ExistingPolicy::Skip {
            out.push(ApplyResult {
                r,
                outcome: Outcome::Skipped,
                detail: format!("volume data: {} exists; kept (skip policy)", path.display()),
            });
            continue;
        }
        let result = async {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            let snap = repo
                .load_snapshot(&v.snapshot)
                .await
                .map_err(|e| e.to_string())?;
            let o = RestoreOptions {
                overwrite: true,
                ..RestoreOptions::default()
            };
            restore_volume(
                repo.clone(),
                v.snapshot,
                &snap,
                &path,
                &o,
                &ProgressBar::hidden(),
            )
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        out.push(match result {
            Ok(stats) => ApplyResult {
                r,
                outcome: if exists {
                    Outcome::Updated
                } else {
                    Outcome::Created
                },
                detail: format!(
                    "volume data: {} ({} bytes written)",
                    path.display(),
                    stats.written_bytes
                ),
            },
            Err(e) => {
                tracing::error!(volume = %path.display(), "volume restore failed: {e}");
                ApplyResult {
                    r,
                    outcome: Outcome::Failed,
                    detail: format!("volume data: {}: {e}", path.display()),
                }
            }
        });
    }
    out
}

/// Backs up namespaces of a live cluster: the pre rules run by exec in the pods, every bound
/// claim in scope is snapshotted by CSI behind the barrier, the post rules run, mover Jobs
/// copy each snapshot into the repository, then the objects are captured (streamed a page at
/// a time) and the record written.
#[allow(clippy::too_many_arguments)]
pub async fn backup_live(
    repo: Arc<Repository>,
    name: &str,
    live: &crate::k8s::live::LiveCluster,
    scope: &crate::k8s::source::Scope,
    filters: BackupFilters,
    opts: &ConsistencyOptions,
    movers: crate::k8s::csi::MoverSettings,
    cancel: &CancellationToken,
) -> Result<BackupSummary, AppBackupError> {
    let mut builder = BackupBuilder::new(repo.clone(), name).await?;
    builder.set_schedule(opts.schedule.clone());
    let listed = live.pods_and_claims(&scope.namespaces).await?;
    let pods = pod_targets(&listed);
    let claims: Vec<crate::k8s::csi::Claim> = if opts.include_volumes {
        crate::k8s::csi::claims_of(
            &listed
                .iter()
                .filter(|v| scope.selector.matches(v))
                .cloned()
                .collect::<Vec<_>>(),
        )
    } else {
        Vec::new()
    };
    let csi = Arc::new(live.csi(movers));
    // Before any rule holds the application: the movers will need their Secret.
    let mut namespaces: Vec<&str> = claims.iter().map(|c| c.namespace.as_str()).collect();
    namespaces.dedup();
    for ns in namespaces {
        csi.prepare_namespace(ns).await?;
    }
    let exec: Arc<dyn Exec> = Arc::new(KubeExec::new(live));
    let (step_csi, step_name) = (csi.clone(), name.to_string());
    let (outcome, mut report) = around(
        exec,
        &pods,
        &opts.pre,
        &opts.post,
        cancel,
        move || async move { step_csi.snapshot_claims(&step_name, &claims).await },
    )
    .await;
    for w in &report.warnings {
        tracing::warn!(backup = name, "{w}");
    }
    let snaps = outcome??;
    // The claims move a few at a time. After a failure (or a cancel) no new mover starts, but
    // those running finish, so each cleans up after itself.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let parallel = csi.settings.parallel_volumes.max(1);
    let moves: Vec<Result<Option<Moved>, AppBackupError>> = futures::stream::iter(&snaps)
        .map(|s| {
            let (csi, stop) = (&csi, &stop);
            async move {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(None);
                }
                if cancel.is_cancelled() {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(AppBackupError::Cancelled);
                }
                let volume = volume_name(&s.claim.namespace, &s.claim.name);
                let r = csi
                    .move_to_repository(name, s, &volume)
                    .await
                    .map(|(label, note)| Moved { label, note })
                    .map_err(AppBackupError::from);
                if r.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                r.map(Some)
            }
        })
        .buffered(parallel)
        .collect()
        .await;
    let mut backed_up = Vec::new();
    let mut bytes_read = 0;
    let mut moved = Ok(());
    // The snapshots the movers wrote, listed once they are all done.
    let stored = if moves.iter().any(|m| matches!(m, Ok(Some(_)))) {
        repo.list_snapshots().await.unwrap_or_else(|e| {
            moved = Err(e.into());
            Vec::new()
        })
    } else {
        Vec::new()
    };
    // The first failure in claim order names the backup's failure.
    for (s, m) in snaps.iter().zip(moves) {
        let found = match m {
            Ok(Some(m)) => stored_volume(&stored, s, &m.label).map(|v| (v, m.note)),
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        match found {
            Ok(((volume, read), note)) => {
                if let Some(note) = note {
                    report.warnings.push(format!(
                        "claim {}/{}: {note}; its mover compared hashes instead (slower, same data)",
                        volume.namespace, volume.pvc
                    ));
                }
                bytes_read += read;
                backed_up.push(volume);
            }
            Err(e) => {
                if moved.is_ok() {
                    moved = Err(e);
                }
            }
        }
    }
    csi.remove_snapshots(&snaps).await;
    moved?;
    builder.set_volumes(backed_up, report, bytes_read);

    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let consume = async {
        // Owning the receiver: if the builder fails, the channel closes and the capture
        // stops instead of waiting on a full channel.
        let mut rx: tokio::sync::mpsc::Receiver<Exported> = rx;
        while let Some(e) = rx.recv().await {
            if opts.include_resources || needed_for_volumes(&e.r) {
                builder.add(e).await?;
            }
        }
        Ok::<_, AppBackupError>(())
    };
    let (captured, consumed) = tokio::join!(live.capture(scope, tx), consume);
    // The builder's own error explains a stopped capture best.
    consumed?;
    let failures = captured?;
    builder.finish(&live.describe(), filters, failures).await
}

/// One claim's mover done.
struct Moved {
    /// The source label of the snapshot it wrote.
    label: String,
    /// Why it could not use changed blocks, when it could not.
    note: Option<String>,
}

/// The volume that the mover of claim snapshot `s` wrote as `label`, found among the
/// repository's snapshots `stored` (oldest first), and the bytes the mover read.
fn stored_volume(
    stored: &[(crate::format::SnapshotId, crate::format::Snapshot)],
    s: &crate::k8s::csi::CsiSnapshot,
    label: &str,
) -> Result<(BackedUpVolume, u64), AppBackupError> {
    let volume = volume_name(&s.claim.namespace, &s.claim.name);
    let found = stored
        .iter()
        .rev()
        .find(|(_, snap)| snap.name == volume && snap.source == label);
    let Some((id, snap)) = found else {
        return Err(AppBackupError::Live(crate::k8s::LiveError::Volume {
            what: format!("mover for claim {}/{}", s.claim.namespace, s.claim.name),
            reason: format!("succeeded but no snapshot `{volume}` labelled `{label}` is in the repository; is its Secret pointing at this repository?"),
        }));
    };
    let backed_up = BackedUpVolume {
        namespace: s.claim.namespace.clone(),
        pvc: s.claim.name.clone(),
        snapshot: *id,
        size: snap.size,
        method: s.method,
    };
    Ok((backed_up, snap.stats.bytes_read))
}

/// Restores the data of each claim the plan restores on a live cluster, before the objects
/// are applied: a claim that exists on the target is left alone (its data is not
/// overwritten); a block-mode claim is created and written here (returned, so that it is not
/// applied again); a
/// filesystem-mode claim is written through a block-mode one and its planned object is bound
/// to the volume (`spec.volumeName`). With `standby`, each claim written is annotated with
/// its snapshot ([`crate::k8s::csi::STANDBY_SNAPSHOT`]), from which later backups are applied.
pub async fn restore_volumes_live(
    live: &crate::k8s::live::LiveCluster,
    movers: crate::k8s::csi::MoverSettings,
    backup: &AppBackup,
    plan: &mut [Planned],
    standby: bool,
) -> (Vec<ApplyResult>, Vec<ObjRef>) {
    let csi = live.csi(movers);
    // 1. In claim order: which claims to write (the others' results are known already).
    let mut out: Vec<Option<ApplyResult>> = Vec::new();
    let mut writes = Vec::new();
    for v in &backup.volumes {
        let Some(i) = plan.iter().position(|p| restores_claim(p, v)) else {
            continue;
        };
        let p = &plan[i];
        let r = p.target.clone();
        let failed = |detail: String| ApplyResult {
            r: r.clone(),
            outcome: Outcome::Failed,
            detail,
        };
        match live.existing(std::slice::from_ref(&r)).await {
            Ok(found) if !found.is_empty() => {
                out.push(Some(ApplyResult {
                    r,
                    outcome: Outcome::Skipped,
                    detail: "volume data: the claim exists on the target; its data is not overwritten (delete it to restore the data)".into(),
                }));
                continue;
            }
            Err(e) => {
                out.push(Some(failed(format!("volume data: {e}"))));
                continue;
            }
            Ok(_) => {}
        }
        let Some(like) = crate::k8s::csi::claim_of(&p.value) else {
            out.push(Some(failed(
                "volume data: the claim object has no size".into(),
            )));
            continue;
        };
        let ns = r.namespace.clone().unwrap_or_default();
        out.push(None);
        writes.push((out.len() - 1, i, v, like, p.value.clone(), ns, r.name));
    }
    // 2. The restore Jobs, a few at a time.
    let parallel = csi.settings.parallel_volumes.max(1);
    let csi = &csi;
    let written: Vec<_> = futures::stream::iter(writes)
        .map(|(slot, i, v, like, value, ns, name)| async move {
            let result = csi
                .restore_claim(&ns, &name, &like, &v.snapshot.to_hex(), Some(&value))
                .await;
            let marked = match (&result, standby) {
                (Ok(None), true) => csi
                    .mark_claim(&ns, &name, Some(&v.snapshot.to_hex()))
                    .await
                    .err(),
                _ => None,
            };
            (slot, i, v, result, marked)
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    // 3. The results, into the plan and in claim order.
    let mut created = Vec::new();
    for (slot, i, v, result, marked) in written {
        let p = &mut plan[i];
        let r = p.target.clone();
        let ns = r.namespace.clone().unwrap_or_default();
        out[slot] = Some(match (result, marked) {
            (Ok(None), Some(e)) => ApplyResult {
                r,
                outcome: Outcome::Failed,
                detail: format!("volume data: written, but {e}"),
            },
            (Ok(None), None) => {
                // Created from the plan, on a volume of its own.
                if let Some(spec) = p.value.get_mut("spec").and_then(|s| s.as_object_mut()) {
                    spec.remove("volumeName");
                }
                created.push(r.clone());
                ApplyResult {
                    r,
                    outcome: Outcome::Created,
                    detail: format!("volume data: snapshot {} written", v.snapshot.short()),
                }
            }
            (Ok(Some(pv)), _) => {
                p.value["spec"]["volumeName"] = serde_json::json!(pv);
                if standby {
                    p.value["metadata"]["annotations"][crate::k8s::csi::STANDBY_SNAPSHOT] =
                        serde_json::json!(v.snapshot.to_hex());
                }
                ApplyResult {
                    r,
                    outcome: Outcome::Created,
                    detail: format!(
                        "volume data: snapshot {} written to volume {pv}",
                        v.snapshot.short()
                    ),
                }
            }
            (Err(e), _) => {
                tracing::error!(claim = %format!("{ns}/{}", r.name), "volume restore failed: {e}");
                ApplyResult {
                    r,
                    outcome: Outcome::Failed,
                    detail: format!("volume data: {e}"),
                }
            }
        });
    }
    let out: Vec<ApplyResult> = out.into_iter().flatten().collect();
    (out, created)
}
