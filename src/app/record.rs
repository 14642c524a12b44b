//! Application backups: takes the objects a [`crate::k8s::source`] source yields for a scope;
//! gives a named backup record in the repository, each object stored raw as its own
//! content-addressed, sealed blob (an unchanged object costs nothing the next time). Restore
//! planning ([`plan_restore`]) is pure: filter, skip, sanitise, map, hold, order. The outputs
//! (a plan, a directory of YAML in apply order, a cluster directory) are thin. Must not write
//! any object's content unsealed to the repository or to logs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use time::OffsetDateTime;

use crate::app::copies::SnapshotError;
use crate::app::names::{self, Claimed};
use crate::crypto::Role;
use crate::format::{
    ActionRecord, AppBackup, BackedUpObject, BackedUpVolume, BackupFilters, BackupId, BlobKind,
    CaptureFailure, FORMAT_VERSION,
};
use crate::hooks::{HookError, RulesReport};
use crate::k8s::objects::{
    apply_order, hold_applications, map_object, mapped_ref, owner_links, sanitise, skip_reason,
    Mapping, ObjRef, OwnerLink, SanitiseOptions,
};
use crate::k8s::source::{
    ApplyResult, ClusterDir, ClusterError, ExistingPolicy, Exported, Outcome, ResourceFilter,
    Selector,
};
use crate::repository::{cpu, RepoError, Repository};

#[derive(Debug, thiserror::Error)]
pub enum AppBackupError {
    #[error("a backup named `{0}` exists already; choose another name")]
    NameTaken(String),
    #[error(transparent)]
    BadName(#[from] crate::util::NameError),
    #[error("another backup named `{0}` is being written at this moment; try again, or choose another name")]
    NameBusy(String),
    #[error("{} backups are named `{name}` (ids {}), written at once before names were kept unique; pick one by its id (`--from-backup ID`, see `lifeboat backup list --json`)", ids.len(), ids.join(", "))]
    AmbiguousName { name: String, ids: Vec<String> },
    #[error("{flag} names namespace `{namespace}`, which backup `{backup}` does not hold (it holds: {}); correct {flag}", if held.is_empty() { "no namespace".to_string() } else { held.join(", ") })]
    UnmappedNamespace {
        /// The flag that gave the namespace (`--namespace-mapping`, a drill's `--namespace`).
        flag: &'static str,
        namespace: String,
        backup: String,
        held: Vec<String>,
    },
    #[error("no backup named `{0}`; `lifeboat backup list` shows them")]
    NotFound(String),
    #[error("output directory {0} is not empty; choose a new or empty directory")]
    OutputNotEmpty(String),
    // `error`, not `source`: the message says it, and a source would print it twice.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Rules(#[from] HookError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("volume data of PersistentVolumeClaim {namespace}/{pvc}: {source}")]
    Volume {
        namespace: String,
        pvc: String,
        source: crate::volume::backup::BackupError,
    },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Live(#[from] crate::k8s::LiveError),
    #[error("internal worker failed: {0}")]
    Worker(String),
}

impl AppBackupError {
    pub fn is_retryable(&self) -> bool {
        match self {
            AppBackupError::Repo(e) => e.is_retryable(),
            AppBackupError::Volume { source, .. } => source.is_retryable(),
            AppBackupError::Live(e) => e.is_retryable(),
            AppBackupError::NameBusy(_) => true,
            _ => false,
        }
    }
}

fn check_name(name: &str) -> Result<(), AppBackupError> {
    Ok(crate::util::check_name(
        crate::util::NameKind::Backup,
        name,
    )?)
}

/// What `backup create` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupSummary {
    pub id: BackupId,
    pub name: String,
    pub objects: usize,
    pub objects_new: u64,
    /// Bytes read from the volumes.
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub duration_seconds: f64,
    /// Parts of the scope not captured; not empty: the backup is partially failed.
    pub failures: Vec<CaptureFailure>,
    pub volumes: Vec<BackedUpVolume>,
    pub rules: Vec<ActionRecord>,
    pub warnings: Vec<String>,
    /// The record as written (for the catalog; its parts are above).
    #[serde(skip)]
    pub record: AppBackup,
}

/// Every readable backup record, oldest first. A damaged one is skipped with a warning (`repo
/// check` reports it, `repo repair` removes it): it must not stop listings and new backups.
pub async fn list_backups(repo: &Repository) -> Result<Vec<(BackupId, AppBackup)>, AppBackupError> {
    let (found, damaged) = repo.load_all_readable("backups", Role::Backup).await?;
    for e in &damaged {
        tracing::warn!("skipping a damaged backup record: {e}; run `lifeboat repo check`");
    }
    let mut all: Vec<(BackupId, AppBackup)> =
        found.into_iter().map(|(h, b)| (BackupId(h), b)).collect();
    all.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    Ok(all)
}

/// The backup named `spec`, or (when no backup has that name) the one whose id is `spec` or
/// starts with it (8 characters at least). Two records of one name (written at once by an
/// older version) are an error naming both ids, never a silent pick.
pub async fn find_backup(
    repo: &Repository,
    spec: &str,
) -> Result<(BackupId, AppBackup), AppBackupError> {
    pick_backup(list_backups(repo).await?, spec)
}

fn pick_backup(
    all: Vec<(BackupId, AppBackup)>,
    spec: &str,
) -> Result<(BackupId, AppBackup), AppBackupError> {
    let (mut named, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, b)| b.name == spec);
    if named.len() > 1 {
        return Err(AppBackupError::AmbiguousName {
            name: spec.to_string(),
            ids: named.iter().map(|(id, _)| id.to_hex()).collect(),
        });
    }
    if let Some(found) = named.pop() {
        return Ok(found);
    }
    let spec_l = spec.to_ascii_lowercase();
    let mut by_id: Vec<_> = rest
        .into_iter()
        .filter(|(id, _)| spec.len() >= 8 && id.to_hex().starts_with(&spec_l))
        .collect();
    match by_id.len() {
        1 => Ok(by_id.pop().expect("one")),
        _ => Err(AppBackupError::NotFound(spec.to_string())),
    }
}

/// The namespaces a backup holds: its scope's, and those of its objects and volumes.
pub fn namespaces_of(b: &AppBackup) -> Vec<String> {
    let mut all: std::collections::BTreeSet<&str> =
        b.filters.namespaces.iter().map(String::as_str).collect();
    all.extend(b.objects.iter().filter_map(|o| o.namespace.as_deref()));
    all.extend(b.volumes.iter().map(|v| v.namespace.as_str()));
    all.into_iter().map(str::to_string).collect()
}

/// Whether a backup holds its whole scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackupStatus {
    Complete,
    /// Some of the scope could not be captured (`failures`); the rest is restorable.
    PartiallyFailed,
}

impl BackupStatus {
    pub fn of(b: &AppBackup) -> BackupStatus {
        if b.failures.is_empty() {
            BackupStatus::Complete
        } else {
            BackupStatus::PartiallyFailed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Complete => "complete",
            BackupStatus::PartiallyFailed => "partially-failed",
        }
    }
}

/// The same name in tables as in JSON.
impl std::fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backup holds, in bytes: its objects as exported plus its volumes' sizes (logical
/// sizes: deduplication and compression make the stored bytes fewer).
pub fn logical_size(b: &AppBackup) -> u64 {
    b.objects.iter().map(|o| u64::from(o.size)).sum::<u64>()
        + b.volumes.iter().map(|v| v.size).sum::<u64>()
}

/// Every source namespace of `mapping` must be one backup `b` holds: a typo would otherwise
/// be ignored, and the restore go into the original namespace.
pub fn check_mapping(b: &AppBackup, mapping: &Mapping) -> Result<(), AppBackupError> {
    check_mapping_of(b, mapping, "--namespace-mapping")
}

/// [`check_mapping`] of a mapping that `flag` gave (restore and standby:
/// `--namespace-mapping`; a drill: `--namespace`, mapped to its `--into`).
pub fn check_mapping_of(
    b: &AppBackup,
    mapping: &Mapping,
    flag: &'static str,
) -> Result<(), AppBackupError> {
    let held = namespaces_of(b);
    match mapping.0.keys().find(|ns| !held.contains(ns)) {
        Some(ns) => Err(AppBackupError::UnmappedNamespace {
            flag,
            namespace: ns.clone(),
            backup: b.name.clone(),
            held,
        }),
        None => Ok(()),
    }
}

/// Whether a record named `name` exists.
async fn name_taken(repo: &Repository, name: &str) -> Result<bool, RepoError> {
    Ok(repo
        .load_all::<AppBackup>("backups", Role::Backup)
        .await?
        .iter()
        .any(|(_, b)| b.name == name))
}

/// Objects stored per trip to the blocking pool: serialising, hashing and (when new) sealing
/// one small object costs less than the trip.
const OBJECTS_PER_BATCH: usize = 256;

/// Builds one backup object by object, so that a capture can stream: the list of records
/// (about 150 bytes an object) is held, and never more than [`OBJECTS_PER_BATCH`] objects.
pub struct BackupBuilder {
    repo: Arc<Repository>,
    name: String,
    index: Arc<crate::repository::Index>,
    /// Objects added and not stored yet.
    batch: Vec<Exported>,
    writer: crate::repository::BlobWriter,
    claims: Arc<crate::repository::Claims>,
    records: Vec<BackedUpObject>,
    volumes: Vec<BackedUpVolume>,
    rules: RulesReport,
    schedule: Option<String>,
    bytes_read: u64,
    started: std::time::Instant,
}

impl BackupBuilder {
    /// Starts backup `name`; refuses a bad or taken name before anything is stored.
    pub async fn new(repo: Arc<Repository>, name: &str) -> Result<Self, AppBackupError> {
        check_name(name)?;
        if name_taken(&repo, name).await? {
            return Err(AppBackupError::NameTaken(name.to_string()));
        }
        let index = repo.load_index().await?;
        let writer = repo.writer(4);
        let claims = writer.claims();
        Ok(BackupBuilder {
            repo,
            name: name.to_string(),
            index: Arc::new(index),
            batch: Vec::with_capacity(OBJECTS_PER_BATCH),
            writer,
            claims,
            records: Vec::new(),
            volumes: Vec::new(),
            rules: RulesReport::default(),
            schedule: None,
            bytes_read: 0,
            started: std::time::Instant::now(),
        })
    }

    /// Stores one object (once: an unchanged object is only referenced), a batch at a time.
    pub async fn add(&mut self, e: Exported) -> Result<(), AppBackupError> {
        self.batch.push(e);
        if self.batch.len() >= OBJECTS_PER_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Stores the objects added so far: serialised and hashed off the runtime, sealed only
    /// when the index does not hold them already.
    async fn flush(&mut self) -> Result<(), AppBackupError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(OBJECTS_PER_BATCH));
        let keys = self.repo.keys().clone();
        let level = self.repo.config().compression_level.max(1);
        let index = self.index.clone();
        let stored = cpu(move || {
            batch
                .into_iter()
                .map(|e| {
                    let json = serde_json::to_vec(&e.value).expect("a parsed object serialises");
                    let id = keys.blob_id(&json);
                    let sealed = (!index.contains(&id))
                        .then(|| keys.seal(Role::Blob(BlobKind::Object, id), &json, level));
                    (e.r, id, sealed, json.len())
                })
                .collect::<Vec<_>>()
        })
        .await?;
        for (r, id, sealed, len) in stored {
            if let Some(sealed) = sealed {
                if self.claims.claim(id) {
                    self.writer
                        .add(BlobKind::Object, id, sealed, len as u32)
                        .await?;
                }
            }
            self.records.push(BackedUpObject {
                api_version: r.api_version,
                kind: r.kind,
                namespace: r.namespace,
                name: r.name,
                blob: id,
                size: len as u32,
            });
        }
        Ok(())
    }

    /// Records the volumes of the group snapshot and what the rules did around it.
    pub fn set_volumes(
        &mut self,
        volumes: Vec<BackedUpVolume>,
        rules: RulesReport,
        bytes_read: u64,
    ) {
        self.volumes = volumes;
        self.rules = rules;
        self.bytes_read = bytes_read;
    }

    /// Marks the backup as made by a schedule.
    pub fn set_schedule(&mut self, schedule: Option<String>) {
        self.schedule = schedule;
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// Writes the record, after every blob it names.
    pub async fn finish(
        mut self,
        source: &str,
        filters: BackupFilters,
        failures: Vec<CaptureFailure>,
    ) -> Result<BackupSummary, AppBackupError> {
        self.flush().await?;
        let stats = self.writer.finish().await?;
        let record = AppBackup {
            version: FORMAT_VERSION,
            name: self.name.clone(),
            // Milliseconds: backups a second apart must still sort (retention keeps "the
            // newest").
            time: {
                let t = OffsetDateTime::now_utc();
                t.replace_millisecond(t.millisecond())
                    .expect("a valid millisecond")
            },
            source: source.to_string(),
            schedule: self.schedule,
            filters,
            objects: self.records,
            failures: failures.clone(),
            volumes: self.volumes,
            rules: self.rules.records,
            warnings: self.rules.warnings,
            duration_seconds: Some(self.started.elapsed().as_secs_f64()),
            program_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        // The name is checked again under a claim: of two backups of one name written at
        // once, one is recorded and the other refused.
        let repo = &self.repo;
        let claim = match names::claim(repo, &self.name, || name_taken(repo, &self.name)).await? {
            Claimed::Held(c) => c,
            Claimed::Taken => return Err(AppBackupError::NameTaken(self.name)),
            Claimed::Busy => return Err(AppBackupError::NameBusy(self.name)),
        };
        let written = repo
            .write_sealed_json("backups", &record, Role::Backup)
            .await;
        claim.release(repo).await;
        let (hash, len) = written?;
        Ok(BackupSummary {
            id: BackupId(hash),
            name: self.name,
            objects: record.objects.len(),
            objects_new: stats.blobs_new,
            bytes_read: self.bytes_read,
            bytes_uploaded: stats.bytes_uploaded + len,
            duration_seconds: record.duration_seconds.unwrap_or_default(),
            failures,
            volumes: record.volumes.clone(),
            rules: record.rules.clone(),
            warnings: record.warnings.clone(),
            record,
        })
    }
}

/// Stores `objects` as backup `name`.
pub async fn create_backup(
    repo: Arc<Repository>,
    name: &str,
    source: &str,
    filters: BackupFilters,
    objects: Vec<Exported>,
) -> Result<BackupSummary, AppBackupError> {
    let mut b = BackupBuilder::new(repo, name).await?;
    for e in objects {
        b.add(e).await?;
    }
    b.finish(source, filters, Vec::new()).await
}

/// The objects of a backup, read and verified from the repository.
pub async fn load_objects(
    repo: &Repository,
    backup: &AppBackup,
) -> Result<Vec<(ObjRef, Value)>, AppBackupError> {
    let index = repo.load_index().await?;
    let index = &index;
    futures::stream::iter(&backup.objects)
        .map(|o| async move {
            let bytes = repo.read_blob(index, BlobKind::Object, &o.blob).await?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| RepoError::Corrupt {
                object: format!("object blob {}", o.blob),
                reason: e.to_string(),
            })?;
            let r = ObjRef {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
            };
            Ok::<_, AppBackupError>((r, v))
        })
        .buffered(8)
        .try_collect()
        .await
}

/// Choices of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestorePlanOptions {
    pub namespaces: Mapping,
    pub storage_classes: Mapping,
    /// `--include-objects`.
    pub include: Vec<ResourceFilter>,
    /// `--include-resources`/`--exclude-resources`, resolved against the backup's types
    /// (default: every type).
    pub kinds: crate::k8s::source::Kinds,
    pub selector: Selector,
    pub start_applications: bool,
    pub sanitise: SanitiseOptions,
}

/// One object of a restore plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Planned {
    /// As backed up.
    pub source: ObjRef,
    /// As it will be on the target.
    pub target: ObjRef,
    /// None: restored; Some: why not.
    pub skipped: Option<String>,
    /// Owners restored too: the target re-makes these references with the owners' new uids.
    pub owners: Vec<OwnerLink>,
    #[serde(skip)]
    pub value: Value,
}

impl Planned {
    /// What a live cluster's apply takes for this object.
    pub fn apply_item(&self) -> crate::k8s::source::ApplyItem {
        crate::k8s::source::ApplyItem {
            r: self.target.clone(),
            value: self.value.clone(),
            owners: self.owners.clone(),
        }
    }
}

/// Filters, skips, sanitises, maps and orders a backup's objects. Restored objects come first,
/// in apply order; skipped ones follow with their reasons.
pub fn plan_restore(objects: Vec<(ObjRef, Value)>, o: &RestorePlanOptions) -> Vec<Planned> {
    let set: HashSet<ObjRef> = objects.iter().map(|(r, _)| r.clone()).collect();
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for (r, mut v) in objects {
        let target = mapped_ref(&r, &o.namespaces);
        // Filters apply to namespaced objects; the cluster-scoped ones a restore needs follow
        // the objects that need them only where a filter names them.
        // Types: excludes apply to every object, includes to namespaced ones (the
        // cluster-scoped ones of a backup are those its namespaced objects need).
        let type_out = o.kinds.excluded(r.group(), &r.kind)
            || (r.namespace.is_some() && !o.kinds.takes(r.group(), &r.kind));
        let filtered_out = (!o.include.is_empty() && !o.include.iter().any(|f| f.matches(&r)))
            || type_out
            || (r.namespace.is_some() && !o.selector.matches(&v));
        if filtered_out {
            skipped.push(Planned {
                source: r,
                target,
                skipped: Some(
                    "not selected by --include-objects/--include-resources/--exclude-resources/--selector"
                        .into(),
                ),
                owners: Vec::new(),
                value: v,
            });
            continue;
        }
        let mapped_class = r.group() == "storage.k8s.io"
            && r.kind == "StorageClass"
            && o.storage_classes.0.contains_key(&r.name);
        let reason = if mapped_class {
            Some(format!(
                "mapped to `{}` by --storage-class-mapping: the target's class is used",
                o.storage_classes.get(&r.name)
            ))
        } else {
            skip_reason(&r, &v, &set)
        };
        if let Some(reason) = reason {
            skipped.push(Planned {
                source: r,
                target,
                skipped: Some(reason),
                owners: Vec::new(),
                value: v,
            });
            continue;
        }
        // Sanitising drops ownerReferences; ordering and re-linking need the originals.
        let owner_refs = v
            .pointer("/metadata/ownerReferences")
            .cloned()
            .unwrap_or(Value::Null);
        sanitise(&r, &mut v, &o.sanitise);
        map_object(&r, &mut v, &o.namespaces, &o.storage_classes);
        if !o.start_applications {
            hold_applications(&r, &mut v);
        }
        kept.push((r, target, v, owner_refs));
    }
    let restored: HashSet<ObjRef> = kept.iter().map(|(r, ..)| r.clone()).collect();
    let for_order: Vec<(ObjRef, Value)> = kept
        .iter()
        .map(|(r, _, _, owners)| {
            (
                r.clone(),
                serde_json::json!({"metadata": {"ownerReferences": owners}}),
            )
        })
        .collect();
    let order = apply_order(&for_order);
    let mut kept: Vec<Option<(ObjRef, ObjRef, Value, Value)>> =
        kept.into_iter().map(Some).collect();
    let mut out: Vec<Planned> = order
        .into_iter()
        .map(|i| {
            let (source, target, value, owner_refs) = kept[i].take().expect("each index once");
            let owners = owner_links(
                &source,
                &serde_json::json!({"metadata": {"ownerReferences": owner_refs}}),
                &restored,
                &o.namespaces,
            );
            Planned {
                source,
                target,
                skipped: None,
                owners,
                value,
            }
        })
        .collect();
    out.extend(skipped);
    out
}

fn file_name(i: usize, r: &ObjRef) -> String {
    let ns = r.namespace.as_deref().unwrap_or("_cluster");
    format!(
        "{:04}-{}-{}-{}.yaml",
        i + 1,
        r.kind.to_ascii_lowercase(),
        ns,
        r.name
    )
}

/// Writes the restored objects as YAML files whose lexical order is the apply order, so that
/// `kubectl apply -f DIR` restores correctly. Secrets are written readable by the owner only.
pub fn write_output_dir(dir: &Path, plan: &[Planned]) -> Result<Vec<ApplyResult>, AppBackupError> {
    let io = |error| AppBackupError::Io {
        path: dir.display().to_string(),
        error,
    };
    if dir.exists() && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Err(AppBackupError::OutputNotEmpty(dir.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut results = Vec::new();
    for (i, p) in plan.iter().filter(|p| p.skipped.is_none()).enumerate() {
        let path = dir.join(file_name(i, &p.target));
        let write = || -> std::io::Result<()> {
            let yaml = serde_yaml_ng::to_string(&p.value).map_err(std::io::Error::other)?;
            crate::k8s::source::write_private(&path, yaml.as_bytes(), p.target.kind == "Secret")
        };
        results.push(ApplyResult {
            r: p.target.clone(),
            outcome: if write().is_ok() {
                Outcome::Created
            } else {
                Outcome::Failed
            },
            detail: path.display().to_string(),
        });
    }
    Ok(results)
}

/// Applies the plan to a cluster directory with the chosen policy for existing objects.
pub fn apply_to_cluster_dir(
    target: &ClusterDir,
    plan: &[Planned],
    policy: ExistingPolicy,
) -> Result<Vec<ApplyResult>, AppBackupError> {
    let objects: Vec<(ObjRef, Value)> = plan
        .iter()
        .filter(|p| p.skipped.is_none())
        .map(|p| (p.target.clone(), p.value.clone()))
        .collect();
    Ok(target.apply(&objects, policy)?)
}

/// Objects of the plan that already exist on a target cluster directory (none when the
/// directory is not a cluster directory yet).
pub fn conflicts(target: &ClusterDir, plan: &[Planned]) -> Result<Vec<ObjRef>, AppBackupError> {
    let existing: HashSet<ObjRef> = match target.load() {
        Ok(objects) => objects.into_iter().map(|e| e.r).collect(),
        Err(ClusterError::NotAClusterDir { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(plan
        .iter()
        .filter(|p| p.skipped.is_none() && existing.contains(&p.target))
        .map(|p| p.target.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_size_of_a_backup() {
        let mut b = AppBackup {
            version: 1,
            name: "b".into(),
            time: time::OffsetDateTime::UNIX_EPOCH,
            source: "cluster-dir:/c".into(),
            schedule: None,
            filters: Default::default(),
            objects: Vec::new(),
            failures: Vec::new(),
            volumes: Vec::new(),
            rules: Vec::new(),
            warnings: Vec::new(),
            duration_seconds: None,
            program_version: "0".into(),
        };
        assert_eq!(BackupStatus::of(&b), BackupStatus::Complete);
        assert_eq!(logical_size(&b), 0);
        b.failures.push(crate::format::CaptureFailure {
            what: "list secrets in namespace pg".into(),
            reason: "forbidden".into(),
        });
        assert_eq!(BackupStatus::of(&b).as_str(), "partially-failed");
        assert_eq!(
            serde_json::to_value(BackupStatus::PartiallyFailed).unwrap(),
            "partially-failed"
        );
    }
}
