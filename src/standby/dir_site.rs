//! A cluster-directory DR site: takes the repository, the catalog and a cluster directory;
//! gives one standby cycle (every volume of every namespace staged beside it, then each
//! namespace committed and its configuration applied held), and the site's side of
//! `activate`, `deactivate` and a drill's clean-up.
//!
//! Must not change what the site serves before every volume of the backup is staged: a
//! backup that cannot be staged whole is discarded, the site left as it was.

use std::path::Path;
use std::sync::Arc;

use super::cycle::{for_namespace, held_plan, record_failure, triage};
use super::delta::{prepare_volume, Stage, Wanted};
use super::journal::{commit, discard, failpoint, recover};
use super::{io, NamespaceReport, NamespaceState, StandbyError, StandbyOptions, VolumeReport};
use crate::app::copies::volume_path;
use crate::app::record;
use crate::format::standby::{CommitItem, APPLIED_SUFFIX};
use crate::format::{AppBackup, BackedUpVolume, SnapshotId};
use crate::k8s::objects::{change_of, Change};
use crate::k8s::source::{ClusterDir, ExistingPolicy, Outcome};
use crate::repository::{Index, Repository};
use crate::scheduler::catalog::{blocking, Catalog};

/// One standby cycle on a cluster-directory site. Errors of the bucket are recorded per
/// namespace and returned; what the site holds stays as it was.
pub async fn cycle_cluster_dir(
    repo: &Arc<Repository>,
    site: &ClusterDir,
    catalog: &Arc<Catalog>,
    o: &StandbyOptions,
) -> Result<Vec<NamespaceReport>, StandbyError> {
    // A commit a killed standby left behind is finished first.
    let mut t = triage(repo, catalog, o, Some(site.root().join("volumes"))).await?;
    let todo = std::mem::take(&mut t.todo);
    if todo.is_empty() {
        return Ok(t.reports);
    }
    match apply_backup(repo, site, &t.newest, &todo, o).await {
        Ok(applied) => {
            for a in applied {
                let r = t.report(&a.ns);
                r.state = NamespaceState::Applied;
                r.objects_applied = a.objects;
                let list: Vec<(String, SnapshotId, u64)> = a
                    .reports
                    .iter()
                    .filter_map(|v| Some((v.pvc.clone(), v.snapshot.parse().ok()?, 0)))
                    .collect();
                r.volumes = a.reports;
                let (name, time, ns) = (t.newest.name.clone(), t.newest.time, a.ns);
                blocking(catalog, move |c| c.standby_applied(&ns, &name, time, &list)).await?;
            }
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(backup = %t.newest.name, "standby: backup not applied, the site keeps its previous state: {msg}");
            for (_, ns) in &todo {
                record_failure(catalog, &o.schedule, t.report(ns), &e).await?;
            }
        }
    }
    Ok(t.reports)
}

/// One namespace's part of a backup: staged, then (in [`Staged::objects`]) applied.
struct Staged {
    ns: String,
    items: Vec<CommitItem>,
    reports: Vec<VolumeReport>,
    /// Objects applied without failure.
    objects: usize,
}

/// Applies one backup to the namespaces `todo` (source, site) of a cluster-directory site:
/// volumes two-phase, then the configuration held.
async fn apply_backup(
    repo: &Arc<Repository>,
    site: &ClusterDir,
    backup: &AppBackup,
    todo: &[(String, String)],
    o: &StandbyOptions,
) -> Result<Vec<Staged>, StandbyError> {
    // Phase 1: stage every volume of every namespace; nothing served changes.
    let mut staged = Vec::new();
    if let Err(e) = stage_all(repo, site, backup, todo, &mut staged).await {
        // Discard every staged file: the site stays as it was.
        discard(staged.into_iter().flat_map(|s| s.items).collect()).await;
        for (_, ns) in todo {
            recover(&site.root().join("volumes").join(ns)).await?;
        }
        return Err(e);
    }
    // Phase 2: commit each namespace's volumes, then its configuration.
    let plan = held_plan(repo, backup, o).await?;
    for s in &mut staged {
        let dir = site.root().join("volumes").join(&s.ns);
        let d = dir.clone();
        blocking_io(&dir, move || std::fs::create_dir_all(d)).await?;
        commit(&dir, &backup.name, std::mem::take(&mut s.items)).await?;
        failpoint("standby-after-volumes");
        let (site, mine) = (site.clone(), for_namespace(&plan, &s.ns));
        let results = crate::util::blocking(move || {
            record::apply_to_cluster_dir(&site, &mine, ExistingPolicy::Update)
        })
        .await?;
        failpoint("standby-after-objects");
        s.objects = results
            .iter()
            .filter(|r| r.outcome != Outcome::Failed)
            .count();
    }
    Ok(staged)
}

/// Phase 1 of [`apply_backup`], into `staged` as it goes (so that a failure can discard
/// everything staged until then).
async fn stage_all(
    repo: &Arc<Repository>,
    site: &ClusterDir,
    backup: &AppBackup,
    todo: &[(String, String)],
    staged: &mut Vec<Staged>,
) -> Result<(), StandbyError> {
    let index = Arc::new(repo.load_index().await?);
    for (src, ns) in todo {
        staged.push(Staged {
            ns: ns.clone(),
            items: Vec::new(),
            reports: Vec::new(),
            objects: 0,
        });
        let s = staged.last_mut().expect("just pushed");
        for v in backup.volumes.iter().filter(|v| &v.namespace == src) {
            let (item, report) = stage_volume(repo, &index, site, ns, v).await?;
            s.items.extend(item);
            s.reports.push(report);
            failpoint("standby-after-prepare-volume");
        }
    }
    Ok(())
}

/// Stages one volume of a backup for site namespace `ns`, beside its file.
async fn stage_volume(
    repo: &Arc<Repository>,
    index: &Arc<Index>,
    site: &ClusterDir,
    ns: &str,
    v: &BackedUpVolume,
) -> Result<(Option<CommitItem>, VolumeReport), StandbyError> {
    let target = volume_path(site.root(), ns, &v.pvc);
    if let Some(d) = target.parent() {
        let dir = d.to_path_buf();
        blocking_io(d, move || std::fs::create_dir_all(dir)).await?;
    }
    let mut report = VolumeReport {
        namespace: ns.to_string(),
        pvc: v.pvc.clone(),
        snapshot: v.snapshot.to_hex(),
        ..Default::default()
    };
    let snap = repo.load_snapshot(&v.snapshot).await?;
    let want = Wanted {
        pvc: &v.pvc,
        id: v.snapshot,
        snap: &snap,
        target: &target,
    };
    let item = prepare_volume(repo, index, &want, &Stage::beside(&target), &mut report).await?;
    Ok((item, report))
}

/// Runs file work `f` on `path` off the runtime.
async fn blocking_io(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), StandbyError> {
    crate::util::blocking(f).await.map_err(io(path))
}

/// `activate` on a cluster-directory site: the records of what the namespace's volume files
/// hold go (the application changes them now); after `deactivate` standby writes them anew.
pub fn forget_applied_cluster_dir(site: &ClusterDir, ns: &str) -> Result<(), StandbyError> {
    let dir = site.root().join("volumes").join(ns);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with(APPLIED_SUFFIX) {
            std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
        }
    }
    Ok(())
}

/// Starts (or stops) the applications of a namespace of a cluster directory: recorded replica
/// counts back and CronJobs resumed (or: 0 replicas with the counts recorded, CronJobs
/// suspended). Idempotent: a second call changes nothing.
pub fn set_running_cluster_dir(
    site: &ClusterDir,
    namespace: &str,
    run: bool,
) -> Result<Vec<Change>, StandbyError> {
    let objects = site.load()?;
    let mut changed = Vec::new();
    let mut changes = Vec::new();
    for e in objects
        .into_iter()
        .filter(|e| e.r.namespace.as_deref() == Some(namespace))
    {
        let (r, mut v) = (e.r, e.value);
        if let Some(c) = change_of(&r, &mut v, run) {
            changes.push(c);
            changed.push((r, v));
        }
    }
    site.apply(&changed, ExistingPolicy::Update)?;
    Ok(changes)
}

/// Removes a namespace's objects and volumes from a cluster directory.
pub fn remove_namespace(site: &ClusterDir, ns: &str) -> Result<(), StandbyError> {
    for dir in [
        site.root().join("resources").join(ns),
        site.root().join("volumes").join(ns),
    ] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
    }
    // Objects of the namespace written elsewhere in the directory, and the Namespace itself.
    let objs = site.load()?;
    for e in objs {
        let of_ns =
            e.r.namespace.as_deref() == Some(ns) || (e.r.kind == "Namespace" && e.r.name == ns);
        if of_ns && !e.origin.is_empty() {
            let _ = std::fs::remove_file(&e.origin);
        }
    }
    Ok(())
}
