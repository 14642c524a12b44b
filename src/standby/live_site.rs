//! A live DR site: takes the repository, the catalog and a live cluster; gives one standby
//! cycle (the claims standby wrote moved in place by one standby Job per namespace, claims
//! new to the site written by restore Jobs, then the configuration applied held), the
//! standby Job's own work ([`apply_devices`]: the claims' block devices moved two-phase, with
//! the journals on a claim of their own), and the live side of `activate` and `deactivate`.
//!
//! Must not overwrite a claim standby did not write (unless asked, for failback), nor touch a
//! namespace marked activated on the site, whatever the catalog says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::cycle::{for_namespace, held_plan, record_failure, triage, Triage};
use super::delta::{delta_bytes, prepare_volume, usable_base, Stage, Wanted};
use super::journal::{commit, failpoint, read_record, recover, retarget_marker};
use super::{io, NamespaceState, StandbyError, StandbyOptions, VolumeReport};
use crate::app::record::Planned;
use crate::app::volumes::restore_volumes_live;
use crate::format::standby::JOURNAL_ENTRY_HEAD;
use crate::format::standby::{Applied, VolumeMode, APPLIED_SUFFIX, JOURNAL_SUFFIX};
use crate::format::{AppBackup, BackedUpVolume, SnapshotId};
use crate::k8s::csi::{AppliedClaim, MoverSettings, StandbyClaim, STANDBY_SNAPSHOT};
use crate::k8s::live::LiveCluster;
use crate::k8s::source::{ApplyItem, ApplyResult, ExistingPolicy, Outcome};
use crate::repository::{Index, Repository};
use crate::scheduler::catalog::{blocking, Catalog};

/// The annotation of a live namespace that was activated (failed over to): standby leaves it
/// alone whatever its catalog says.
pub const ACTIVATED: &str = "lifeboat.dev/activated";

/// The standby annotation of a claim that standby owns but whose content is unknown.
pub const WHOLE: &str = "whole";

/// How long one apply of a namespace's objects may take.
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One standby cycle on a live site: the claims standby wrote move to the new backup in
/// place (one standby Job per namespace, see [`apply_devices`]), each claim new to the site
/// is created and written by a restore Job, and then the configuration is applied held
/// (server-side apply, existing objects updated, existing claims left as they are).
pub async fn cycle_live(
    repo: &Arc<Repository>,
    live: &LiveCluster,
    catalog: &Arc<Catalog>,
    o: &StandbyOptions,
    movers: MoverSettings,
) -> Result<Vec<super::NamespaceReport>, StandbyError> {
    let mut t = triage(repo, catalog, o, None).await?;
    skip_activated(live, catalog, &mut t).await?;
    let todo = std::mem::take(&mut t.todo);
    if todo.is_empty() {
        return Ok(t.reports);
    }
    // Read and planned once for every namespace of the backup; a failure is each one's.
    let plan = held_plan(repo, &t.newest, o)
        .await
        .map_err(|e| e.to_string());
    for (src, ns) in &todo {
        let applied = async {
            let plan = plan.as_ref().map_err(|e| StandbyError::Failed(e.clone()))?;
            let mut only = t.newest.clone();
            only.volumes.retain(|v| &v.namespace == src);
            let site = LiveNamespace {
                repo,
                live,
                movers: &movers,
                backup: &only,
                ns,
            };
            site.apply(for_namespace(plan, ns), o.overwrite_claims)
                .await
        }
        .await;
        match applied {
            Ok((volumes, n)) => {
                let r = t.report(ns);
                r.state = NamespaceState::Applied;
                r.volumes = volumes;
                r.objects_applied = n;
                let (ns2, name, time) = (ns.clone(), t.newest.name.clone(), t.newest.time);
                blocking(catalog, move |c| c.standby_applied(&ns2, &name, time, &[])).await?;
            }
            Err(e) => {
                record_failure(catalog, &o.schedule, t.report(ns), &e).await?;
            }
        }
    }
    Ok(t.reports)
}

/// Activation is also recorded on the namespace itself, so that a standby that lost its
/// catalog (a restarted pod) never holds an application that was failed over to.
async fn skip_activated(
    live: &LiveCluster,
    catalog: &Arc<Catalog>,
    t: &mut Triage,
) -> Result<(), StandbyError> {
    let mut activated = Vec::new();
    for (_, ns) in &t.todo {
        if live.namespace_annotation(ns, ACTIVATED).await?.as_deref() == Some("true") {
            activated.push(ns.clone());
        }
    }
    for ns in activated {
        tracing::warn!(namespace = %ns, "the namespace is marked activated on the site: left alone");
        t.todo.retain(|(_, n)| *n != ns);
        t.report(&ns).state = NamespaceState::Activated;
        blocking(catalog, move |c| c.set_activated(&ns, true).map(|_| ())).await?;
    }
    Ok(())
}

/// The first failed result, as an error.
fn first_failure(results: &[ApplyResult]) -> Result<(), StandbyError> {
    match results.iter().find(|x| x.outcome == Outcome::Failed) {
        Some(f) => Err(StandbyError::Io {
            path: f.r.display(),
            source: std::io::Error::other(f.detail.clone()),
        }),
        None => Ok(()),
    }
}

/// A claim a restore Job created or reported, as a volume report's mode.
fn mode_of(outcome: Outcome) -> VolumeMode {
    match outcome {
        Outcome::Created => VolumeMode::Full,
        Outcome::Updated => VolumeMode::Updated,
        Outcome::Skipped => VolumeMode::Skipped,
        Outcome::Failed => VolumeMode::Failed,
    }
}

/// One namespace of a live site being applied a backup (`backup`: its volumes only).
struct LiveNamespace<'a> {
    repo: &'a Arc<Repository>,
    live: &'a LiveCluster,
    movers: &'a MoverSettings,
    backup: &'a AppBackup,
    ns: &'a str,
}

impl LiveNamespace<'_> {
    /// The claims first (existing ones moved, new ones restored), then the objects of `plan`.
    /// Returns the volumes' reports and the objects applied.
    async fn apply(
        &self,
        mut plan: Vec<Planned>,
        overwrite: bool,
    ) -> Result<(Vec<VolumeReport>, usize), StandbyError> {
        let updated = self.update_claims(overwrite).await?;
        let (vols, created) =
            restore_volumes_live(self.live, self.movers.clone(), self.backup, &mut plan, true)
                .await;
        first_failure(&vols)?;
        // Claims created here are not applied again, and claims that exist are left as
        // they are (bound, their spec immutable).
        let items: Vec<ApplyItem> = plan
            .iter()
            .filter(|p| !created.contains(&p.target))
            .filter(|p| {
                !vols
                    .iter()
                    .any(|v| v.r == p.target && v.outcome == Outcome::Skipped)
            })
            .map(Planned::apply_item)
            .collect();
        let results = self
            .live
            .apply(&items, ExistingPolicy::Update, APPLY_TIMEOUT)
            .await?;
        first_failure(&results)?;
        let mut volumes: Vec<VolumeReport> = vols
            .iter()
            .filter(|v| !updated.iter().any(|u| u.pvc == v.r.name))
            .map(|v| VolumeReport {
                namespace: self.ns.to_string(),
                pvc: v.r.name.clone(),
                snapshot: self
                    .backup
                    .volumes
                    .iter()
                    .find(|b| b.pvc == v.r.name)
                    .map(|b| b.snapshot.to_hex())
                    .unwrap_or_default(),
                mode: mode_of(v.outcome),
                ..Default::default()
            })
            .collect();
        volumes.extend(updated);
        Ok((volumes, results.len()))
    }

    /// The claims of the backup that exist on the site: those standby wrote (annotated with
    /// the snapshot they hold) move to the backup's snapshots together in one standby Job, by
    /// the block-map difference. A claim standby did not write fails the namespace (its data
    /// is not overwritten), unless `overwrite` says to write it whole, journaled as well.
    async fn update_claims(&self, overwrite: bool) -> Result<Vec<VolumeReport>, StandbyError> {
        let csi = self.live.csi(self.movers.clone());
        let index = self.repo.load_index().await?;
        let mut reports = Vec::new();
        let mut todo = Vec::new();
        let mut journal_bytes = 0;
        for v in &self.backup.volumes {
            let Some(claim) = csi.site_claim(self.ns, &v.pvc).await? else {
                continue; // new to the site: written whole by a restore Job
            };
            let holds = claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(STANDBY_SNAPSHOT));
            let (mode, base, bytes) = self
                .claim_move(&index, v, holds.map(String::as_str), overwrite)
                .await?;
            journal_bytes += bytes;
            reports.push(VolumeReport {
                namespace: self.ns.to_string(),
                pvc: v.pvc.clone(),
                snapshot: v.snapshot.to_hex(),
                mode,
                ..Default::default()
            });
            todo.push(StandbyClaim {
                name: v.pvc.clone(),
                snapshot: v.snapshot.to_hex(),
                base,
            });
        }
        if reports
            .iter()
            .any(|r| matches!(r.mode, VolumeMode::Delta | VolumeMode::Full))
        {
            let backup = &self.backup.name;
            for a in csi
                .update_claims(self.ns, backup, &todo, journal_bytes)
                .await?
            {
                if let Some(r) = reports.iter_mut().find(|r| r.pvc == a.pvc) {
                    r.mode = a.mode;
                    r.blocks_changed = a.blocks_changed;
                    r.fetched_bytes = a.fetched_bytes;
                    r.written_bytes = a.written_bytes;
                }
            }
        }
        Ok(reports)
    }

    /// How an existing claim that holds `holds` (its annotation) moves to `v`'s snapshot:
    /// the mode, the base the standby Job is given (None: written whole), and the bytes its
    /// journal takes.
    async fn claim_move(
        &self,
        index: &Index,
        v: &BackedUpVolume,
        holds: Option<&str>,
        overwrite: bool,
    ) -> Result<(VolumeMode, Option<String>, u64), StandbyError> {
        let (ns, repo) = (self.ns, self.repo);
        // Standby's again after `deactivate`, content unknown: written whole.
        let Some(holds) = holds.filter(|h| *h != WHOLE) else {
            if !overwrite && holds.is_none() {
                return Err(StandbyError::Failed(format!(
                    "claim {ns}/{} exists on the site and standby did not write it: its data is not overwritten; delete the claim, or run standby with --overwrite-claims (failback onto a repaired primary)",
                    v.pvc
                )));
            }
            let new = repo.load_snapshot(&v.snapshot).await?;
            return Ok((VolumeMode::Full, None, whole_bytes(&new)));
        };
        if holds == v.snapshot.to_hex() {
            // Still given to the Job, should there be one: a commit an earlier Job left may
            // name it.
            return Ok((VolumeMode::Unchanged, Some(holds.to_string()), 0));
        }
        let base_id: SnapshotId = holds.parse().map_err(|e| {
            StandbyError::Failed(format!(
                "claim {ns}/{}: annotation {STANDBY_SNAPSHOT} = `{holds}` is not a snapshot id: {e}",
                v.pvc,
            ))
        })?;
        let new = repo.load_snapshot(&v.snapshot).await?;
        // Its snapshot forgotten and pruned on the primary: written whole, journaled.
        let Some(base) = usable_base(repo, index, base_id, &v.pvc, &new).await else {
            return Ok((VolumeMode::Full, None, whole_bytes(&new)));
        };
        let bytes = delta_bytes(repo, index, &base, &new).await?;
        Ok((VolumeMode::Delta, Some(holds.to_string()), bytes))
    }
}

/// The journal of a claim written whole: every block, each with its header.
fn whole_bytes(new: &crate::format::Snapshot) -> u64 {
    new.size + JOURNAL_ENTRY_HEAD as u64 * new.blocks()
}

/// After `activate` on a live site the application changes its claims' data: their standby
/// annotations and the namespace's journal claim (whose records would be stale) go.
pub async fn forget_live_claims(live: &LiveCluster, ns: &str) -> Result<(), StandbyError> {
    let csi = live.csi(Default::default());
    for name in csi.annotated_claims(ns).await? {
        csi.mark_claim(ns, &name, None).await?;
    }
    csi.remove_journal_claim(ns).await?;
    Ok(())
}

/// `deactivate` of a namespace standby had applied, on a live site: every claim of it is
/// standby's again with unknown content (annotated [`WHOLE`]), so the next cycle writes
/// each whole, journaled.
pub async fn claim_live_claims(live: &LiveCluster, ns: &str) -> Result<(), StandbyError> {
    let csi = live.csi(Default::default());
    for name in csi.claims_of_namespace(ns).await? {
        csi.mark_claim(ns, &name, Some(WHOLE)).await?;
    }
    Ok(())
}

/// One claim of a live site, as the standby Job that updates it sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceVolume {
    pub pvc: String,
    /// The claim's block device in the Job.
    pub device: PathBuf,
    /// The snapshot it is to hold.
    pub snapshot: SnapshotId,
    /// The snapshot it holds as the claim's annotation says, for when the journal directory
    /// has no record of it (a claim written whole by a restore Job).
    pub base: Option<SnapshotId>,
    /// Its content is unknown (`=whole` instead of a base): every block is journaled and
    /// written (standby `--overwrite-claims`, for failback).
    pub whole: bool,
}

impl std::str::FromStr for DeviceVolume {
    type Err = String;
    /// `PVC=DEVICE=SNAPSHOT[=BASE|=whole]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('=').collect();
        let id = |t: &str| {
            t.parse::<SnapshotId>()
                .map_err(|e| format!("`{s}`: `{t}` is not a snapshot id: {e}"))
        };
        match parts.as_slice() {
            [pvc, dev, snap] | [pvc, dev, snap, _] if !pvc.is_empty() && !dev.is_empty() => {
                let whole = parts.get(3) == Some(&WHOLE);
                Ok(DeviceVolume {
                    pvc: pvc.to_string(),
                    device: PathBuf::from(dev),
                    snapshot: id(snap)?,
                    base: parts.get(3).filter(|_| !whole).map(|b| id(b)).transpose()?,
                    whole,
                })
            }
            _ => Err(format!("`{s}` is not PVC=DEVICE=SNAPSHOT[=BASE|=whole]")),
        }
    }
}

impl From<&VolumeReport> for AppliedClaim {
    fn from(v: &VolumeReport) -> AppliedClaim {
        AppliedClaim {
            pvc: v.pvc.clone(),
            mode: v.mode,
            blocks_changed: v.blocks_changed,
            fetched_bytes: v.fetched_bytes,
            written_bytes: v.written_bytes,
        }
    }
}

/// The standby Job's work on a live site: moves the claims' block devices to a backup's
/// snapshots together, by the block-map difference, two-phase as on a cluster-directory site,
/// with the journals, the records and the commit marker in `dir` (a claim that outlives the
/// Job). A Job killed at any point leaves the devices at the previous or the new snapshots:
/// the next Job finishes a committed marker first and discards the rest. With `report_file`,
/// what was done per claim is also written there, compact (the Job's termination message,
/// which standby reads back as [`AppliedClaim`]s).
pub async fn apply_devices(
    repo: &Arc<Repository>,
    dir: &Path,
    backup: &str,
    volumes: &[DeviceVolume],
    report_file: Option<&Path>,
) -> Result<Vec<VolumeReport>, StandbyError> {
    let d = dir.to_path_buf();
    crate::util::blocking(move || std::fs::create_dir_all(d))
        .await
        .map_err(io(dir))?;
    let devices: HashMap<String, PathBuf> = volumes
        .iter()
        .map(|v| (v.pvc.clone(), v.device.clone()))
        .collect();
    retarget_marker(dir, move |pvc| devices.get(pvc).cloned()).await?;
    if let Some(b) = recover(dir).await? {
        tracing::info!(backup = %b, "finished the apply an earlier Job committed");
    }
    let index = Arc::new(repo.load_index().await?);
    let mut items = Vec::new();
    let mut reports = Vec::new();
    for v in volumes {
        match stage_device(repo, &index, dir, v).await {
            Ok((item, report)) => {
                items.extend(item);
                reports.push(report);
            }
            Err(e) => {
                recover(dir).await?; // discards the journals: the devices stay as they were
                return Err(e);
            }
        }
        failpoint("standby-after-prepare-volume");
    }
    if !items.is_empty() {
        commit(dir, backup, items).await?;
    }
    if let Some(f) = report_file {
        write_claims_report(f, &reports).await;
    }
    Ok(reports)
}

/// Stages one device, its journal and record in the journal directory `dir`.
async fn stage_device(
    repo: &Arc<Repository>,
    index: &Arc<Index>,
    dir: &Path,
    v: &DeviceVolume,
) -> Result<(Option<crate::format::standby::CommitItem>, VolumeReport), StandbyError> {
    let record = dir.join(format!("{}{APPLIED_SUFFIX}", v.pvc));
    let stage = Stage {
        // The record is written with the device (at replay), the claim's annotation only
        // after the Job: the record wins, unless the claim is to be written whole.
        applied: (!v.whole)
            .then(|| read_record(&record))
            .flatten()
            .or(v.base.map(|snapshot| Applied { snapshot, size: 0 })),
        journal: dir.join(format!("{}{JOURNAL_SUFFIX}", v.pvc)),
        record: Some(record),
        whole: v.whole,
    };
    let mut report = VolumeReport {
        pvc: v.pvc.clone(),
        snapshot: v.snapshot.to_hex(),
        ..Default::default()
    };
    let snap = repo.load_snapshot(&v.snapshot).await?;
    let want = Wanted {
        pvc: &v.pvc,
        id: v.snapshot,
        snap: &snap,
        target: &v.device,
    };
    let item = prepare_volume(repo, index, &want, &stage, &mut report).await?;
    Ok((item, report))
}

/// Writes the per-claim report to `path`; a failure is only warned about (standby then
/// reads no figures, the claims are moved all the same).
async fn write_claims_report(path: &Path, reports: &[VolumeReport]) {
    let short: Vec<AppliedClaim> = reports.iter().map(AppliedClaim::from).collect();
    let text = serde_json::to_string(&short).expect("serialises");
    let p = path.to_path_buf();
    if let Err(e) = crate::util::blocking(move || std::fs::write(p, text)).await {
        tracing::warn!("cannot write the report to {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_volumes_parse_and_bad_ones_are_named() {
        let id = SnapshotId([7; 32]).to_hex();
        let v: DeviceVolume = format!("data=/dev/lifeboat-0={id}").parse().unwrap();
        assert_eq!((v.pvc.as_str(), v.base), ("data", None));
        let v: DeviceVolume = format!("data=/dev/x={id}={id}").parse().unwrap();
        assert_eq!(v.base, Some(SnapshotId([7; 32])));
        let v: DeviceVolume = format!("data=/dev/x={id}=whole").parse().unwrap();
        assert!(v.whole && v.base.is_none());
        for bad in ["data=/dev/x", "=/dev/x=ab", "data=/dev/x=nothex"] {
            let e = bad.parse::<DeviceVolume>().unwrap_err();
            assert!(e.contains(bad) || e.contains("nothex"), "{e}");
        }
    }

    #[test]
    fn a_claims_report_keeps_the_modes_names() {
        let r = VolumeReport {
            pvc: "data".into(),
            mode: VolumeMode::Delta,
            blocks_changed: 1,
            ..Default::default()
        };
        let text = serde_json::to_string(&[AppliedClaim::from(&r)]).unwrap();
        assert_eq!(
            text,
            r#"[{"pvc":"data","mode":"delta","blocks_changed":1,"fetched_bytes":0,"written_bytes":0}]"#
        );
        let back: Vec<AppliedClaim> = serde_json::from_str(&text).unwrap();
        assert_eq!(back[0].mode, VolumeMode::Delta);
        // A Job of the previous image, still running across an upgrade, used the old names.
        let old: Vec<AppliedClaim> = serde_json::from_str(
            r#"[{"pvc":"data","mode":"full","blocks_changed":2,"bytes_fetched":5,"bytes_written":6}]"#,
        )
        .unwrap();
        assert_eq!((old[0].fetched_bytes, old[0].written_bytes), (5, 6));
        // The fields are the schema's.
        let path = format!(
            "{}/schema/standby-claims.schema.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let props: Vec<&String> = schema["items"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        let v = serde_json::to_value(&back[0]).unwrap();
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let mut want = props.clone();
        keys.sort();
        want.sort();
        assert_eq!(keys, want);
    }
}
