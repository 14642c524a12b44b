//! `backup create|list|describe`: application backups.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{human, Ctx, Error, MoverArgs};
use crate::app::record::{self, BackupStatus};
use crate::app::request::{self, BackupFlags, BackupRequest, BackupSource};
use crate::repository::rfc3339;

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum BackupCommand {
    /// Back up one or more namespaces: their objects and the data of their
    /// PersistentVolumeClaims, the volumes copied together while the pre rules hold the
    /// application quiet.
    #[command(
        after_help = "Example:\n  lifeboat backup create pg-nightly -n pg --context prod --exclude-resources events,leases"
    )]
    Create(BackupCreateArgs),
    /// List application backups, oldest first.
    #[command(after_help = "Example:\n  lifeboat backup list --json")]
    List,
    /// Show what one backup holds.
    #[command(after_help = "Example:\n  lifeboat backup describe pg-nightly")]
    Describe {
        /// The backup's name.
        name: String,
    },
    /// Forget one backup (and the volume snapshots only it referenced); with --prune the
    /// data only it held goes too, else it stays until `lifeboat prune`. The newest complete
    /// backup of a schedule is kept unless --force.
    #[command(after_help = "Example:\n  lifeboat backup delete pg-nightly-20260101 --prune")]
    Delete(BackupDeleteArgs),
}

/// `backup delete`.
#[derive(Debug, Args)]
pub struct BackupDeleteArgs {
    /// The backup's name (or an id prefix of at least 8 characters; `backup list` shows them).
    pub name: String,
    /// Delete it even when it is the newest complete backup of its schedule.
    #[arg(long)]
    pub force: bool,
    /// Run prune afterwards, so the data only this backup held is removed (after --grace).
    #[arg(long)]
    pub prune: bool,
    /// With --prune: how long the packs it takes out stay in the store first, for readers
    /// that hold no lock (a DR site with a read-only key); 0s deletes them now.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::hooks::parse_duration)]
    pub grace: std::time::Duration,
    /// Show what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `backup create`.
#[derive(Debug, Args)]
pub struct BackupCreateArgs {
    /// Backup name (unique in the repository).
    pub name: String,
    /// Namespace to capture (repeatable; must exist).
    #[arg(
        long = "namespace",
        short = 'n',
        value_name = "NAME",
        required_unless_present = "include_namespaces"
    )]
    pub namespaces: Vec<String>,
    /// Also the namespaces these patterns match (`*` any run of characters, `?` one),
    /// comma-separated: `app-*,db`. A pattern that matches none is refused.
    #[arg(long, value_name = "PATTERNS")]
    pub include_namespaces: Option<String>,
    /// Leave out the namespaces these patterns match, named with -n or not.
    #[arg(long, value_name = "PATTERNS")]
    pub exclude_namespaces: Option<String>,
    /// Label selector for namespaced objects: k=v, k==v, k!=v, k in (a,b), k notin (a,b),
    /// k (has the label), !k (has not), comma-separated; all must hold.
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only these types of namespaced objects: resource names, comma-separated, as kubectl
    /// and velero take them: a plural (`deployments`), optionally with its group
    /// (`deployments.apps`), or a kind (`Deployment`); case-insensitive; `*` is every type.
    /// Custom resources too (their CRD's plural). [default: every type]
    #[arg(long, value_name = "RESOURCES")]
    pub include_resources: Option<String>,
    /// Never these types (resource names, as --include-resources), namespaced or cluster-scoped.
    #[arg(long, value_name = "RESOURCES", alias = "exclude-resource-types")]
    pub exclude_resources: Option<String>,
    /// Only these objects: kind/name or kind/namespace/name, comma-separated.
    #[arg(long, value_name = "OBJECTS")]
    pub include_objects: Option<String>,
    /// Capture from a cluster directory (DIR/resources/ holds exported objects).
    #[arg(long, value_name = "DIR")]
    pub cluster_dir: Option<PathBuf>,
    /// Capture from a live cluster through this kubeconfig context [default: the current
    /// context, or the in-cluster configuration].
    #[arg(long, value_name = "CTX", conflicts_with = "cluster_dir")]
    pub context: Option<String>,
    /// Rule file (kind: Rule) whose actions run before the volumes are snapshotted
    /// (repeatable).
    #[arg(long = "pre-rule", value_name = "FILE")]
    pub pre_rules: Vec<PathBuf>,
    /// Rule file whose actions run after the snapshot, and always once pre rules started
    /// (repeatable).
    #[arg(long = "post-rule", value_name = "FILE")]
    pub post_rules: Vec<PathBuf>,
    /// Back up the data of every PersistentVolumeClaim in scope.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub include_volumes: bool,
    /// Record the backup as one of this BackupSchedule's (an extra run): its retention
    /// and the DR sites that follow it take it into account.
    #[arg(long, value_name = "NAME")]
    pub schedule: Option<String>,
    /// VolumeSnapshotClass for live clusters [default: the driver's default class].
    #[arg(long, value_name = "CLASS")]
    pub snapshot_class: Option<String>,
    /// One CSI VolumeGroupSnapshot per namespace: `auto` uses the claims' driver's
    /// default VolumeGroupSnapshotClass when it has one, `none` takes VolumeSnapshots
    /// back to back, anything else names the class.
    #[arg(long, value_name = "CLASS|auto|none", default_value = "auto")]
    pub group_snapshot_class: crate::k8s::csi::GroupSnapshots,
    #[command(flatten)]
    pub movers: MoverArgs,
}

pub(super) async fn backup(ctx: &Ctx<'_>, cmd: &BackupCommand) -> Result<(), Error> {
    match cmd {
        BackupCommand::Create(a) => create(ctx, a).await,
        BackupCommand::List => list(ctx).await,
        BackupCommand::Describe { name } => describe(ctx, name).await,
        BackupCommand::Delete(a) => delete(ctx, a).await,
    }
}

impl BackupCreateArgs {
    fn request(&self, ctx: &Ctx<'_>) -> Result<BackupRequest, Error> {
        let flags = BackupFlags {
            name: self.name.clone(),
            namespaces: self.namespaces.clone(),
            include_namespaces: self.include_namespaces.clone().unwrap_or_default(),
            exclude_namespaces: self.exclude_namespaces.clone().unwrap_or_default(),
            selector: self.selector.clone().unwrap_or_default(),
            include_objects: self.include_objects.clone().unwrap_or_default(),
            include_resources: self.include_resources.clone().unwrap_or_default(),
            exclude_resources: self.exclude_resources.clone().unwrap_or_default(),
            pre_rules: self.pre_rules.clone(),
            post_rules: self.post_rules.clone(),
            include_volumes: self.include_volumes,
            schedule: self.schedule.clone(),
        };
        let source = match &self.cluster_dir {
            Some(dir) => BackupSource::ClusterDir(dir.clone()),
            None => {
                let mut movers = self.movers.settings(ctx.g);
                movers.snapshot_class = self.snapshot_class.clone();
                movers.group_snapshots = self.group_snapshot_class.clone();
                BackupSource::Live {
                    context: self.context.clone(),
                    movers,
                }
            }
        };
        Ok(BackupRequest::new(flags, source)?)
    }
}

async fn create(ctx: &Ctx<'_>, a: &BackupCreateArgs) -> Result<(), Error> {
    let name = &a.name;
    let purpose = format!("backup {name}");
    let out = request::backup(a.request(ctx)?, ctx.open_shared(&purpose), &ctx.cancel).await?;
    ctx.emit(&BackupCreated::of(&out), || {
        let mut text = format!(
            "backup {name} ({}): {} objects, {} new, uploaded {}, {:.2}s",
            out.id.short(),
            out.objects,
            out.objects_new,
            human(out.bytes_uploaded),
            out.duration_seconds
        );
        for v in &out.volumes {
            text.push_str(&format!("\n{}", volume_line(v)));
        }
        for r in &out.rules {
            text.push_str(&format!(
                "\n{} rule {} in {}/{}: `{}` {}",
                r.phase, r.rule, r.namespace, r.pod, r.command, r.outcome
            ));
        }
        for w in &out.warnings {
            text.push_str(&format!("\nwarning: {w}"));
        }
        for f in &out.failures {
            text.push_str(&format!("\nnot captured: {}: {}", f.what, f.reason));
        }
        text
    });
    if out.failures.is_empty() {
        Ok(())
    } else {
        Err(Error::PartialBackup(out.failures.len()))
    }
}

/// `backup create --json`: the backup made, what it moved, and the parts of its record that
/// tell whether it is whole (`backup describe` gives the rest).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct BackupCreated {
    /// The backup's id (hex).
    pub id: String,
    pub name: String,
    /// When the backup started (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    pub status: BackupStatus,
    /// Objects captured.
    pub objects: usize,
    /// Objects and blocks the repository did not hold yet, stored by this backup.
    pub new_objects: u64,
    /// Bytes read from the volumes.
    pub read_bytes: u64,
    /// Bytes written to the repository (compressed, encrypted, with pack overhead).
    pub uploaded_bytes: u64,
    /// Objects as exported plus the volumes' logical sizes.
    pub size_bytes: u64,
    pub duration_seconds: f64,
    /// Each claim's data: one volume snapshot each.
    pub volumes: Vec<DescribedVolume>,
    /// What each pre and post rule action did, per pod, in start order.
    pub rules: Vec<DescribedAction>,
    /// What could not be captured; a backup with any is partially failed.
    pub failures: Vec<DescribedFailure>,
    /// What did not fail the backup but weakens it.
    pub warnings: Vec<String>,
}

impl BackupCreated {
    pub fn of(s: &record::BackupSummary) -> BackupCreated {
        let b = &s.record;
        BackupCreated {
            id: s.id.to_hex(),
            name: b.name.clone(),
            started_at: rfc3339(b.time),
            status: BackupStatus::of(b),
            objects: s.objects,
            new_objects: s.objects_new,
            read_bytes: s.bytes_read,
            uploaded_bytes: s.bytes_uploaded,
            size_bytes: record::logical_size(b),
            duration_seconds: s.duration_seconds,
            volumes: DescribedVolume::all(b),
            rules: DescribedAction::all(b),
            failures: DescribedFailure::all(b),
            warnings: b.warnings.clone(),
        }
    }
}

/// One row of `backup list --json`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct BackupListing {
    /// The backup's id (hex).
    pub id: String,
    pub name: String,
    /// When the backup started (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    /// How the scope was read (a live cluster, a cluster directory).
    pub source: String,
    pub namespaces: Vec<String>,
    /// Objects captured.
    pub objects: usize,
    pub status: BackupStatus,
    /// Objects as exported plus the volumes' logical sizes.
    pub size_bytes: u64,
    pub duration_seconds: Option<f64>,
    /// Volumes captured.
    pub volumes: usize,
    /// The schedule that made it (none: made by hand).
    pub schedule: Option<String>,
}

async fn list(ctx: &Ctx<'_>) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let all = record::list_backups(&repo).await?;
    let rows: Vec<BackupListing> = all
        .iter()
        .map(|(id, b)| BackupListing {
            id: id.to_hex(),
            name: b.name.clone(),
            started_at: rfc3339(b.time),
            source: b.source.clone(),
            namespaces: b.filters.namespaces.clone(),
            objects: b.objects.len(),
            status: BackupStatus::of(b),
            size_bytes: record::logical_size(b),
            duration_seconds: b.duration_seconds,
            volumes: b.volumes.len(),
            schedule: b.schedule.clone(),
        })
        .collect();
    ctx.emit(&rows, || {
        if rows.is_empty() {
            return "no backups".into();
        }
        super::table(
            &[
                "ID",
                "STARTED",
                "NAME",
                "STATUS",
                "SIZE",
                "DURATION",
                "OBJECTS",
                "NAMESPACES",
            ],
            &[4, 5, 6],
            rows.iter().map(|r| {
                vec![
                    r.id[..8].to_string(),
                    r.started_at.clone(),
                    r.name.clone(),
                    r.status.to_string(),
                    human(r.size_bytes),
                    r.duration_seconds
                        .map(|s| format!("{s:.1}s"))
                        .unwrap_or_else(|| "-".into()),
                    r.objects.to_string(),
                    r.namespaces.join(","),
                ]
            }),
        )
    });
    Ok(())
}

/// `backup describe --json`: a backup record as output, complete, in the output vocabulary
/// (the stored record keeps its own names and nanosecond times).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct BackupDescription {
    /// The backup's id (hex).
    pub id: String,
    pub name: String,
    /// When the backup started (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    /// How the scope was read (a live cluster, a cluster directory).
    pub source: String,
    /// The schedule that made it (none: made by hand).
    pub schedule: Option<String>,
    pub status: BackupStatus,
    /// Objects as exported plus the volumes' logical sizes.
    pub size_bytes: u64,
    /// None: a record older than the field.
    pub duration_seconds: Option<f64>,
    /// The namespaces backed up.
    pub namespaces: Vec<String>,
    /// The label selector given (empty: none).
    pub selector: String,
    /// `--include-objects` items, then `--include-resources` names.
    pub include_resources: Vec<String>,
    /// `--exclude-resources` names.
    pub exclude_resources: Vec<String>,
    /// The objects captured.
    pub objects: Vec<DescribedObject>,
    /// Each claim's data: one volume snapshot each.
    pub volumes: Vec<DescribedVolume>,
    /// What each pre and post rule action did, per pod, in start order.
    pub rules: Vec<DescribedAction>,
    /// What could not be captured; a backup with any is partially failed.
    pub failures: Vec<DescribedFailure>,
    /// What did not fail the backup but weakens it.
    pub warnings: Vec<String>,
    /// The version of lifeboat that wrote it.
    pub program_version: String,
    /// The record's format version.
    pub format_version: u32,
}

/// One object of a backup.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DescribedObject {
    pub api_version: String,
    pub kind: String,
    /// None: cluster-scoped.
    pub namespace: Option<String>,
    pub name: String,
    /// The blob holding it as exported (hex).
    pub blob_id: String,
    /// Its size as exported.
    pub size_bytes: u64,
}

/// One claim's data in a backup.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DescribedVolume {
    pub namespace: String,
    pub pvc: String,
    /// The volume snapshot holding the data (hex).
    pub snapshot_id: String,
    pub size_bytes: u64,
    /// How the point-in-time copy was taken.
    pub method: crate::format::CopyMethod,
}

/// What one rule action did in one pod.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DescribedAction {
    pub phase: crate::format::RulePhase,
    /// The Rule object's name.
    pub rule: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: String,
    pub background: bool,
    pub started_at: String,
    pub ended_at: String,
    pub duration_seconds: f64,
    pub outcome: crate::format::ActionOutcome,
    pub exit_code: Option<i32>,
    /// The last few KiB of its stdout and stderr.
    pub output_tail: String,
}

/// One part of the scope a backup could not capture.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DescribedFailure {
    /// What was attempted, e.g. `list secrets in namespace pg`.
    pub what: String,
    pub reason: String,
}

impl DescribedVolume {
    fn all(b: &crate::format::AppBackup) -> Vec<DescribedVolume> {
        b.volumes
            .iter()
            .map(|v| DescribedVolume {
                namespace: v.namespace.clone(),
                pvc: v.pvc.clone(),
                snapshot_id: v.snapshot.to_hex(),
                size_bytes: v.size,
                method: v.method,
            })
            .collect()
    }
}

impl DescribedAction {
    fn all(b: &crate::format::AppBackup) -> Vec<DescribedAction> {
        b.rules
            .iter()
            .map(|r| DescribedAction {
                phase: r.phase,
                rule: r.rule.clone(),
                namespace: r.namespace.clone(),
                pod: r.pod.clone(),
                container: r.container.clone(),
                command: r.command.clone(),
                background: r.background,
                started_at: rfc3339(r.started),
                ended_at: rfc3339(r.ended),
                duration_seconds: (r.ended - r.started).as_seconds_f64().max(0.0),
                outcome: r.outcome,
                exit_code: r.exit_code,
                output_tail: r.output_tail.clone(),
            })
            .collect()
    }
}

impl DescribedFailure {
    fn all(b: &crate::format::AppBackup) -> Vec<DescribedFailure> {
        b.failures
            .iter()
            .map(|f| DescribedFailure {
                what: f.what.clone(),
                reason: f.reason.clone(),
            })
            .collect()
    }
}

impl BackupDescription {
    pub fn of(id: &crate::format::BackupId, b: &crate::format::AppBackup) -> BackupDescription {
        BackupDescription {
            id: id.to_hex(),
            name: b.name.clone(),
            started_at: rfc3339(b.time),
            source: b.source.clone(),
            schedule: b.schedule.clone(),
            status: BackupStatus::of(b),
            size_bytes: record::logical_size(b),
            duration_seconds: b.duration_seconds,
            namespaces: b.filters.namespaces.clone(),
            selector: b.filters.selector.clone(),
            include_resources: b.filters.include_resources.clone(),
            exclude_resources: b.filters.exclude_resource_types.clone(),
            objects: b
                .objects
                .iter()
                .map(|o| DescribedObject {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    blob_id: o.blob.to_hex(),
                    size_bytes: o.size.into(),
                })
                .collect(),
            volumes: DescribedVolume::all(b),
            rules: DescribedAction::all(b),
            failures: DescribedFailure::all(b),
            warnings: b.warnings.clone(),
            program_version: b.program_version.clone(),
            format_version: b.version,
        }
    }
}

async fn describe(ctx: &Ctx<'_>, name: &str) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let (id, b) = record::find_backup(&repo, name).await?;
    ctx.emit(&BackupDescription::of(&id, &b), || {
        let mut out = format!(
            "backup {} ({})\nstatus: {}\nsize: {}\nduration: {}\ntime: {}\nsource: {}\nnamespaces: {}\nselector: {}\nobjects: {}",
            b.name,
            id.short(),
            BackupStatus::of(&b).as_str(),
            human(record::logical_size(&b)),
            b.duration_seconds
                .map(|s| format!("{s:.1}s"))
                .unwrap_or_else(|| "-".into()),
            rfc3339(b.time),
            b.source,
            b.filters.namespaces.join(","),
            if b.filters.selector.is_empty() {
                "-"
            } else {
                &b.filters.selector
            },
            b.objects.len()
        );
        for f in &b.failures {
            out.push_str(&format!("\nNOT CAPTURED: {}: {}", f.what, f.reason));
        }
        for w in &b.warnings {
            out.push_str(&format!("\nwarning: {w}"));
        }
        for v in &b.volumes {
            out.push_str(&format!("\n  {}", volume_line(v)));
        }
        for r in &b.rules {
            out.push_str(&format!(
                "\n  {} rule {} {}/{} [{}] `{}`: {}{} ({} → {})",
                r.phase,
                r.rule,
                r.namespace,
                r.pod,
                r.container,
                r.command,
                r.outcome,
                r.exit_code
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default(),
                rfc3339(r.started),
                rfc3339(r.ended)
            ));
        }
        for o in &b.objects {
            out.push_str(&format!(
                "\n  {}/{}{} ({} bytes)",
                o.kind,
                o.namespace
                    .as_deref()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                o.name,
                o.size
            ));
        }
        out
    });
    Ok(())
}

/// One claim's data in a backup, as listings show it.
fn volume_line(v: &crate::format::BackedUpVolume) -> String {
    format!(
        "volume {}/{}: snapshot {} ({}, {})",
        v.namespace,
        v.pvc,
        v.snapshot.short(),
        human(v.size),
        v.method
    )
}

async fn delete(ctx: &Ctx<'_>, a: &BackupDeleteArgs) -> Result<(), Error> {
    let repo = ctx.open().await?;
    let opts = crate::app::delete::DeleteOptions {
        force: a.force,
        prune: a.prune.then_some(crate::repository::PruneOptions {
            grace: a.grace,
            ..Default::default()
        }),
        dry_run: a.dry_run,
    };
    let report = crate::app::delete::delete(&repo, &a.name, opts).await?;
    if report.forgot.is_some() {
        // Best effort, as forget: the catalog is a copy, `catalog rebuild` recreates it.
        if let Ok(catalog) = ctx.catalog().await {
            let gone = vec![report.id];
            let _ = crate::scheduler::catalog::blocking(&catalog, move |c| c.remove_backups(&gone))
                .await;
        }
    }
    ctx.emit(&delete_json(&report), || delete_text(&report));
    Ok(())
}

/// `backup delete --json`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct DeleteOutput {
    /// The backup's id (hex).
    pub id: String,
    pub name: String,
    pub schedule: Option<String>,
    /// When the backup started (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    pub dry_run: bool,
    /// It was the newest complete backup of its schedule (deleted with --force).
    pub newest_complete: bool,
    pub backups_removed: usize,
    pub snapshots_removed: usize,
    /// Whether prune ran (`--prune`, not a dry run).
    pub pruned: bool,
    /// What prune gave back (None: it did not run).
    pub freed_bytes: Option<u64>,
    pub prune: Option<crate::repository::PruneReport>,
}

fn delete_json(r: &crate::app::delete::DeleteReport) -> DeleteOutput {
    DeleteOutput {
        id: r.id.to_hex(),
        name: r.name.clone(),
        schedule: r.schedule.clone(),
        started_at: rfc3339(r.time),
        dry_run: r.dry_run,
        newest_complete: r.newest_complete,
        backups_removed: r.forgot.as_ref().map_or(0, |f| f.backups_removed),
        snapshots_removed: r.forgot.as_ref().map_or(0, |f| f.snapshots_removed),
        pruned: r.prune.is_some(),
        freed_bytes: r.bytes_freed(),
        prune: r.prune.clone(),
    }
}

fn delete_text(r: &crate::app::delete::DeleteReport) -> String {
    let what = format!("backup {} ({})", r.name, r.id.short());
    let Some(f) = &r.forgot else {
        return format!("dry run: {what} would be deleted; nothing was changed");
    };
    let mut out = format!(
        "deleted {what}: {} record, {} volume snapshot(s)",
        f.backups_removed, f.snapshots_removed
    );
    if r.newest_complete {
        out.push_str(&format!(
            "\nwarning: it was the newest complete backup of schedule {}",
            r.schedule.as_deref().unwrap_or("-")
        ));
    }
    match (&r.prune, r.bytes_freed()) {
        (Some(p), Some(freed)) => out.push_str(
            &(format!(
                "\npruned: {} freed ({} pack(s) deleted, {} repacked; data {} -> {})",
                human(freed),
                p.packs_deleted,
                p.packs_repacked,
                human(p.bytes_before),
                human(p.bytes_after)
            ) + &super::ops::prune_deferral(p)),
        ),
        _ => out.push_str("\nits data stays in the repository until `lifeboat prune`"),
    }
    out
}
