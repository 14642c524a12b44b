//! The data of an application backup: takes the captured objects of a scope, the rules and a
//! source of volumes; gives one volume snapshot per PersistentVolumeClaim, all copied in one
//! group inside the rules' barrier, and on restore writes each claim's data to the target
//! before the workloads that mount it are applied. Must not record a backup whose pre rules
//! failed under `onError: Abort` (nothing is stored then), and must not overwrite a target
//! volume that the existing-resource policy says to keep.

use std::path::Path;
use std::sync::Arc;

use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::appbackup::{AppBackupError, BackupBuilder, BackupSummary, Planned};
use crate::backup::{backup_volume, BackupOptions};
use crate::cluster::{ApplyResult, ClusterDir, ExistingPolicy, Exported, Outcome};
use crate::format::{AppBackup, BackedUpVolume, BackupFilters, CaptureFailure};
use crate::hooks::{around, pod_targets, Exec, LocalExec, Rule};
use crate::repository::Repository;
use crate::resources::ObjRef;
use crate::restore::{restore_volume, RestoreOptions};
use crate::snapshot::{take_group, volume_path, VolumeFile};

/// Rules and volume choices of one application backup.
#[derive(Debug, Clone)]
pub struct ConsistencyOptions {
    /// Back up the data of every claim in scope (`--include-volumes`).
    pub include_volumes: bool,
    pub pre: Vec<Rule>,
    pub post: Vec<Rule>,
    /// Use reflinks where the filesystem allows (else copies).
    pub allow_reflink: bool,
}

impl Default for ConsistencyOptions {
    fn default() -> Self {
        ConsistencyOptions {
            include_volumes: true,
            pre: Vec::new(),
            post: Vec::new(),
            allow_reflink: true,
        }
    }
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
        .join(format!("{name}-{}", hex::encode(rand::random::<[u8; 4]>())));
    let allow_reflink = opts.allow_reflink;
    let (outcome, report) = around(exec, &pods, &opts.pre, &opts.post, cancel, || {
        let volumes = volumes.clone();
        async move {
            tokio::task::spawn_blocking(move || take_group(&volumes, &work, allow_reflink))
                .await
                .map_err(|e| AppBackupError::Worker(e.to_string()))?
                .map_err(AppBackupError::from)
        }
    })
    .await;
    for w in &report.warnings {
        tracing::warn!(backup = name, "{w}");
    }
    let group = outcome??;

    let mut backed_up = Vec::new();
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
        backed_up.push(BackedUpVolume {
            namespace: t.volume.namespace.clone(),
            pvc: t.volume.pvc.clone(),
            snapshot: out.snapshot_id,
            size: t.size,
            method: t.method.as_str().to_string(),
        });
    }
    drop(group);
    builder.set_volumes(backed_up, report);
    for e in selected {
        builder.add(e).await?;
    }
    builder.finish(&dir.describe(), filters, failures).await
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
        let Some(p) = plan.iter().find(|p| {
            p.skipped.is_none()
                && p.source.kind == "PersistentVolumeClaim"
                && p.source.namespace.as_deref() == Some(&v.namespace)
                && p.source.name == v.pvc
        }) else {
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
                    stats.bytes_written
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
