//! A non-disruptive test of the DR site: takes the repository, a site and a backup; restores
//! one namespace of it into a scratch namespace, verifies every volume block by block
//! against its snapshot and every object against the backup, and measures the time to ready
//! (RTO) and the data's age (RPO). The block-by-block check itself is [`crate::volume::verify`],
//! which `volume verify` uses.
//!
//! Must not touch standby's namespaces, nor (on a live site) write over a namespace that
//! exists.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::cycle::newest_of;
use super::dir_site::remove_namespace;
use super::{Site, StandbyError};
use crate::app::copies::volume_path;
use crate::app::record::{self, Planned, RestorePlanOptions};
use crate::format::AppBackup;
use crate::k8s::csi::{MoverSettings, VerifyTarget};
use crate::k8s::live::LiveCluster;
use crate::k8s::objects::{Mapping, ObjRef};
use crate::k8s::source::{ApplyItem, ClusterDir, ExistingPolicy, Outcome};
use crate::repository::Repository;
use crate::util::blocking;

/// How long one apply of the drill's objects may take.
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `drill`: what the scratch restore proved (`drill --json`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DrillReport {
    /// The backup drilled (its name).
    pub backup: String,
    /// The namespace, as backed up.
    pub namespace: String,
    /// The scratch namespace it was restored into.
    pub into: String,
    /// When the backup started (RFC 3339, UTC, milliseconds; as `standby status` names a
    /// backup's time).
    #[serde(serialize_with = "crate::util::serialize_timestamp")]
    #[schemars(with = "String")]
    pub backup_time: OffsetDateTime,
    pub objects_restored: usize,
    pub objects_verified: usize,
    /// For each object not verified, where it differs from the backup (live sites).
    pub differences: Vec<String>,
    pub volumes: Vec<DrillVolume>,
    /// Seconds from the start of the drill until everything was restored and verified.
    pub rto_seconds: f64,
    /// How old the data was: backup time to the drill's start.
    pub rpo_seconds: f64,
    /// The scratch namespace was removed after the report (`--remove`).
    pub removed: bool,
}

impl DrillReport {
    fn new(backup: &AppBackup, ns: &str, into: &str) -> DrillReport {
        DrillReport {
            backup: backup.name.clone(),
            namespace: ns.into(),
            into: into.into(),
            backup_time: backup.time,
            objects_restored: 0,
            objects_verified: 0,
            differences: Vec::new(),
            volumes: Vec::new(),
            rto_seconds: 0.0,
            rpo_seconds: 0.0,
            removed: false,
        }
    }

    /// Every volume and every object as the backup has it.
    pub fn passed(&self) -> bool {
        self.volumes.iter().all(|v| v.verified) && self.objects_verified == self.objects_restored
    }
}

/// One claim of a drill, checked block by block against its snapshot.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct DrillVolume {
    pub pvc: String,
    pub snapshot_id: String,
    pub size_bytes: u64,
    pub blocks_verified: u64,
    /// Every block (and the size) is the snapshot's.
    pub verified: bool,
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    /// The namespace, as backed up.
    pub namespace: String,
    /// The scratch namespace it is restored into.
    pub into: String,
    /// This backup; else the newest complete one of `schedule`, else the newest complete
    /// one holding the namespace.
    pub from_backup: Option<String>,
    pub schedule: Option<String>,
    /// Remove the scratch namespace after the report.
    pub remove: bool,
}

/// A drill on either site (`movers`: a live site's Jobs).
pub async fn drill(
    repo: &Arc<Repository>,
    site: &Site,
    movers: MoverSettings,
    r: &DrillRequest,
) -> Result<DrillReport, StandbyError> {
    let backup = drill_backup(repo, r).await?;
    let (ns, into) = (r.namespace.as_str(), r.into.as_str());
    let mapping = Mapping([(ns.to_string(), into.to_string())].into());
    record::check_mapping_of(&backup, &mapping, "--namespace")?;
    match site {
        Site::Dir(d) => drill_cluster_dir(repo, d, &backup, ns, into, r.remove).await,
        Site::Live(l) => drill_live(repo, l, movers, &backup, ns, into, r.remove).await,
    }
}

/// The backup a drill restores (see [`DrillRequest::from_backup`]).
async fn drill_backup(repo: &Repository, r: &DrillRequest) -> Result<AppBackup, StandbyError> {
    let backups = record::list_backups(repo).await?;
    let nothing = || StandbyError::NothingToDrill {
        namespace: r.namespace.clone(),
        schedule: r.schedule.clone(),
    };
    match (&r.from_backup, &r.schedule) {
        (Some(name), _) => Ok(record::find_backup(repo, name).await?.1),
        (None, Some(s)) => newest_of(&backups, s).ok_or_else(nothing),
        (None, None) => backups
            .iter()
            .rev()
            .find(|(_, b)| b.failures.is_empty() && b.filters.namespaces.contains(&r.namespace))
            .map(|(_, b)| b.clone())
            .ok_or_else(nothing),
    }
}

/// A drill's restore plan: namespace `ns` of `backup` mapped to `into`, applications started.
async fn drill_plan(
    repo: &Arc<Repository>,
    backup: &AppBackup,
    ns: &str,
    into: &str,
) -> Result<Vec<Planned>, StandbyError> {
    let mapping = Mapping([(ns.to_string(), into.to_string())].into());
    let objects = record::load_objects(repo, backup).await?;
    Ok(record::plan_restore(
        objects,
        &RestorePlanOptions {
            namespaces: mapping,
            start_applications: true,
            ..Default::default()
        },
    )
    .into_iter()
    .filter(|p| p.skipped.is_none() && p.target.namespace.as_deref() == Some(into))
    .collect())
}

/// A non-disruptive test of the DR site: restores `backup` (namespace `ns`) into a scratch
/// namespace `into` of the site, verifies every volume block by block against the snapshot's
/// keyed hashes and every object against the backup, measures the time to ready, and removes
/// the scratch namespace again when asked. Standby's namespaces are not touched.
pub async fn drill_cluster_dir(
    repo: &Arc<Repository>,
    site: &ClusterDir,
    backup: &AppBackup,
    ns: &str,
    into: &str,
    remove: bool,
) -> Result<DrillReport, StandbyError> {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    let plan = drill_plan(repo, backup, ns, into).await?;
    let vols = crate::app::volumes::restore_volumes_to_dir(
        repo.clone(),
        backup,
        &plan,
        site.root(),
        ExistingPolicy::Update,
    )
    .await;
    if let Some(f) = vols.iter().find(|r| r.outcome == Outcome::Failed) {
        return Err(StandbyError::Io {
            path: f.detail.clone(),
            source: std::io::Error::other("volume restore failed"),
        });
    }
    let (s, p) = (site.clone(), plan.clone());
    let (restored, verified) = blocking(move || apply_and_check(&s, &p)).await?;
    let mut report = DrillReport::new(backup, ns, into);
    report.objects_restored = restored;
    report.objects_verified = verified;
    // Volumes: every block's keyed hash against the snapshot's map.
    let index = Arc::new(repo.load_index().await?);
    for v in backup.volumes.iter().filter(|v| v.namespace == ns) {
        let snap = repo.load_snapshot(&v.snapshot).await?;
        let path = volume_path(site.root(), into, &v.pvc);
        let count = crate::volume::verify::verify_volume(repo, &index, &snap, &path).await?;
        let (verified, n) = (count.verified(), count.blocks_matching);
        report.volumes.push(DrillVolume {
            pvc: v.pvc.clone(),
            snapshot_id: v.snapshot.to_hex(),
            size_bytes: snap.size,
            blocks_verified: n,
            verified,
        });
    }
    report.rto_seconds = started.elapsed().as_secs_f64();
    report.rpo_seconds = (now - backup.time).as_seconds_f64().max(0.0);
    if remove {
        let (s, into) = (site.clone(), into.to_string());
        blocking(move || remove_namespace(&s, &into)).await?;
        report.removed = true;
    }
    Ok(report)
}

/// Applies a drill's plan to a cluster directory; returns how many objects were restored,
/// and how many of the site's objects are then what the plan says.
fn apply_and_check(site: &ClusterDir, plan: &[Planned]) -> Result<(usize, usize), StandbyError> {
    let results = record::apply_to_cluster_dir(site, plan, ExistingPolicy::Update)?;
    let held: HashMap<ObjRef, Value> = site.load()?.into_iter().map(|e| (e.r, e.value)).collect();
    let verified = plan
        .iter()
        .filter(|p| held.get(&p.target) == Some(&p.value))
        .count();
    Ok((results.len(), verified))
}

/// Whether a cluster's object holds everything a planned object says (pure): every field of
/// `planned` is in `live` with the same value; lists item by item, as the server may add
/// defaults inside them. Server-kept fields (`status`, uid, resourceVersion, …) are not
/// compared.
pub fn holds(live: &Value, planned: &Value) -> bool {
    difference(live, planned).is_none()
}

/// Where `live` first fails to hold `planned` (see [`holds`]): the field's JSON pointer and
/// both values; None when it holds.
pub fn difference(live: &Value, planned: &Value) -> Option<String> {
    fn is_empty(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Null => true,
            _ => false,
        }
    }
    fn first(live: &Value, planned: &Value, at: &str) -> Option<String> {
        match (live, planned) {
            (Value::Object(l), Value::Object(p)) => p.iter().find_map(|(k, v)| {
                let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match l.get(k) {
                    Some(lv) => first(lv, v, &here),
                    // The API server drops empty maps and lists (an annotations map left empty
                    // by sanitising, say): absent holds them.
                    None if is_empty(v) => None,
                    None => Some(format!("{here}: the backup has {v}, the site none")),
                }
            }),
            // Finalizers: controllers on the site add their own (a claim a snapshot is taken
            // of gets `pvc-as-source-protection`); the backup's must all be there.
            (Value::Array(l), Value::Array(p)) if at == "/metadata/finalizers" => p
                .iter()
                .find(|f| !l.contains(f))
                .map(|f| format!("{at}: the backup has {f}, the site not")),
            (Value::Array(l), Value::Array(p)) if l.len() == p.len() => l
                .iter()
                .zip(p)
                .enumerate()
                .find_map(|(i, (a, b))| first(a, b, &format!("{at}/{i}"))),
            (l, p) if l == p => None,
            (l, p) => Some(format!(
                "{}: the backup has {p}, the site {l}",
                if at.is_empty() { "/" } else { at }
            )),
        }
    }
    let mut planned = planned.clone();
    if let Some(o) = planned.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = planned.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            m.remove(k);
        }
    }
    first(live, &planned, "")
}

/// The live form of [`drill_cluster_dir`]: restores `backup` (namespace `ns`) into the new
/// namespace `into` of a live site, the data first (restore Jobs), verifies every volume
/// against its snapshot (verify Jobs) before anything mounts it, applies the objects with
/// the applications started, waits until every Deployment and StatefulSet is ready (the RTO
/// measured), checks every object against the plan, and deletes `into` when asked. `into`
/// must not exist: a drill never writes over a namespace.
pub async fn drill_live(
    repo: &Arc<Repository>,
    live: &LiveCluster,
    movers: MoverSettings,
    backup: &AppBackup,
    ns: &str,
    into: &str,
    remove: bool,
) -> Result<DrillReport, StandbyError> {
    let started = Instant::now();
    let now = OffsetDateTime::now_utc();
    if live.namespace_exists(into).await? {
        return Err(StandbyError::Failed(format!(
            "namespace {into} exists on the site; a drill restores into a new namespace: remove it, or pick another --into"
        )));
    }
    let timeout = movers.timeout;
    let mut plan = drill_plan(repo, backup, ns, into).await?;
    let mut only = backup.clone();
    only.volumes.retain(|v| v.namespace == ns);
    let (vols, created) =
        crate::app::volumes::restore_volumes_live(live, movers.clone(), &only, &mut plan, false)
            .await;
    if let Some(f) = vols.iter().find(|r| r.outcome == Outcome::Failed) {
        return Err(StandbyError::Failed(format!(
            "{}: {}",
            f.r.display(),
            f.detail
        )));
    }
    // Every volume against its snapshot, before a workload can mount and change it.
    let mut report = DrillReport::new(backup, ns, into);
    report.volumes = verify_live(repo, live, movers, &only, &plan, &created, into).await?;
    let items: Vec<ApplyItem> = plan
        .iter()
        .filter(|p| !created.contains(&p.target))
        .map(Planned::apply_item)
        .collect();
    let results = live
        .apply(&items, ExistingPolicy::Update, APPLY_TIMEOUT)
        .await?;
    report.objects_restored = results.len() + created.len();
    // Time to ready: the applications up.
    if !live.wait_workloads_ready(into, timeout).await? {
        return Err(StandbyError::Failed(format!(
            "the workloads of namespace {into} were not ready within {timeout:?}; the drill's namespace is left for a look (kubectl -n {into} get pods)"
        )));
    }
    report.rto_seconds = started.elapsed().as_secs_f64();
    let refs: Vec<ObjRef> = plan.iter().map(|p| p.target.clone()).collect();
    let found = live.values(&refs).await?;
    for (p, f) in plan.iter().zip(&found) {
        match f.as_ref().map(|f| difference(f, &p.value)) {
            Some(None) => report.objects_verified += 1,
            Some(Some(d)) => report
                .differences
                .push(format!("{}: {d}", p.target.display())),
            None => report
                .differences
                .push(format!("{}: not on the site", p.target.display())),
        }
    }
    report.rpo_seconds = (now - backup.time).as_seconds_f64().max(0.0);
    if remove {
        live.remove_namespace(into).await?;
        report.removed = true;
    }
    Ok(report)
}

/// Each restored volume of `only` checked against its snapshot by a verify Job in `into`: a
/// claim created by the restore directly, an existing one's volume through a block-mode view.
async fn verify_live(
    repo: &Repository,
    live: &LiveCluster,
    movers: MoverSettings,
    only: &AppBackup,
    plan: &[Planned],
    created: &[ObjRef],
    into: &str,
) -> Result<Vec<DrillVolume>, StandbyError> {
    let csi = live.csi(movers);
    let mut out = Vec::new();
    for v in &only.volumes {
        let snap = repo.load_snapshot(&v.snapshot).await?;
        let claim = plan
            .iter()
            .find(|p| crate::app::volumes::restores_claim(p, v));
        let target = match claim {
            Some(p) if created.contains(&p.target) => VerifyTarget::Claim(&p.target.name),
            Some(p) => match p.value.pointer("/spec/volumeName").and_then(Value::as_str) {
                Some(pv) => VerifyTarget::Volume {
                    pv,
                    for_claim: &p.target.name,
                },
                None => VerifyTarget::Claim(&p.target.name),
            },
            None => continue,
        };
        let (verified, n) = csi
            .verify_restored(into, target, &v.snapshot.to_hex())
            .await?;
        out.push(DrillVolume {
            pvc: v.pvc.clone(),
            snapshot_id: v.snapshot.to_hex(),
            size_bytes: snap.size,
            blocks_verified: n,
            verified,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_holds_a_planned_one_with_server_fields_and_defaults_added() {
        let planned = json!({"kind": "Deployment", "metadata": {"name": "api", "uid": "old",
            "resourceVersion": "5"}, "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "api"}]}}},
            "status": {"readyReplicas": 3}});
        let live = json!({"kind": "Deployment", "metadata": {"name": "api", "uid": "new"},
            "spec": {"replicas": 3, "strategy": {}, "template": {"spec": {"containers": [{"name": "api", "imagePullPolicy": "Always"}]}}}});
        assert!(holds(&live, &planned));
        let mut other = live.clone();
        other["spec"]["replicas"] = json!(0);
        assert!(!holds(&other, &planned));
        assert_eq!(
            difference(&other, &planned).unwrap(),
            "/spec/replicas: the backup has 3, the site 0"
        );
        // Finalizers the site's controllers added hold; one of the backup's missing does not.
        let mut finalized = planned.clone();
        finalized["metadata"]["finalizers"] = json!(["a"]);
        let mut live_f = live.clone();
        live_f["metadata"]["finalizers"] = json!(["b", "a"]);
        assert!(holds(&live_f, &finalized));
        live_f["metadata"]["finalizers"] = json!(["b"]);
        assert!(!holds(&live_f, &finalized));
        // An empty map the API server dropped holds.
        let mut with_empty = planned.clone();
        with_empty["metadata"]["annotations"] = json!({});
        assert!(holds(&live, &with_empty));
        other["spec"]["template"]["spec"]["containers"] = json!([]);
        other["spec"]["replicas"] = json!(3);
        assert_eq!(
            difference(&other, &planned).unwrap(),
            "/spec/template/spec/containers: the backup has [{\"name\":\"api\"}], the site []"
        );
    }
}
