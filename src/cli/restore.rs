//! `restore create|list|describe`: an application backup restored to a directory of YAML, a
//! cluster directory or a live cluster, or its plan printed (`--dry-run`); every one recorded
//! in the local catalog (a warning when it cannot be), and the records listed and described.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{Ctx, Error, MoverArgs};
use crate::app::record::Planned;
use crate::app::restore::{self, RestoreFlags, RestoreReport, RestoreRequest};
use crate::app::restore_record::{rfc3339_ms, RestoreRecord};
use crate::k8s::objects::ObjRef;
use crate::k8s::source::{ApplyResult, ExistingPolicy, Outcome};
use crate::scheduler::catalog::blocking;

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // one per command run
pub enum RestoreCommand {
    /// Restore a backup to a directory of YAML (apply order), into a cluster directory, or
    /// print the plan (--dry-run).
    #[command(
        after_help = "Example:\n  lifeboat restore create --from-backup pg-nightly --namespace-mapping pg:pg-dr --context dr"
    )]
    Create(RestoreCreateArgs),
    /// The restores run from this machine (recorded in the catalog of --state-dir), oldest
    /// first.
    #[command(after_help = "Example:\n  lifeboat restore list --json")]
    List {
        /// The newest N restores.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One restore: its target, options, outcome and each object's result.
    #[command(after_help = "Example:\n  lifeboat restore describe pg-nightly-20260102T030405")]
    Describe {
        /// The restore's id (`restore list` shows them).
        id: String,
    },
}

/// `restore create`.
#[derive(Debug, Args)]
pub struct RestoreCreateArgs {
    /// The application backup to restore (`backup list` shows them).
    #[arg(long, value_name = "NAME")]
    pub from_backup: String,
    /// old:new namespace renames, comma-separated.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub namespace_mapping: String,
    /// old:new storage class renames, comma-separated.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub storage_class_mapping: String,
    /// Only these objects: kind/name or kind/namespace/name, comma-separated.
    #[arg(long, value_name = "OBJECTS")]
    pub include_objects: Option<String>,
    /// Only these types of namespaced objects: resource names, comma-separated (`deployments`,
    /// `deployments.apps`, a kind such as `Deployment`; `*` is every type) [default: every
    /// type].
    #[arg(long, value_name = "RESOURCES")]
    pub include_resources: Option<String>,
    /// Never these types (resource names, as --include-resources).
    #[arg(long, value_name = "RESOURCES")]
    pub exclude_resources: Option<String>,
    /// Label selector for namespaced objects: k=v, k==v, k!=v, k in (a,b), k notin (a,b), k,
    /// !k, comma-separated.
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// false: workloads at 0 replicas (original count recorded), CronJobs suspended.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub start_applications: bool,
    /// What to do with objects that exist on the target.
    #[arg(long, value_enum, default_value_t = ExistingPolicy::Skip)]
    pub existing_resource_policy: ExistingPolicy,
    /// Keep the objects' status.
    #[arg(long)]
    pub keep_status: bool,
    /// Keep Service node ports.
    #[arg(long)]
    pub keep_node_ports: bool,
    /// Print the ordered plan and conflicts; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write YAML files whose lexical order is the apply order (for kubectl apply -f).
    #[arg(long, value_name = "DIR", conflicts_with = "cluster_dir")]
    pub output_dir: Option<PathBuf>,
    /// Apply into a cluster directory.
    #[arg(long, value_name = "DIR", conflicts_with = "context")]
    pub cluster_dir: Option<PathBuf>,
    /// Apply to a live cluster through this kubeconfig context (server-side apply).
    #[arg(long, value_name = "CTX", conflicts_with = "output_dir")]
    pub context: Option<String>,
    #[command(flatten)]
    pub movers: MoverArgs,
}

pub(super) async fn restore(ctx: &Ctx<'_>, cmd: &RestoreCommand) -> Result<(), Error> {
    let a = match cmd {
        RestoreCommand::Create(a) => a,
        RestoreCommand::List { limit } => return list(ctx, *limit).await,
        RestoreCommand::Describe { id } => return describe(ctx, id).await,
    };
    let req = a.request(ctx)?;
    let repo = ctx
        .open_to_read(&format!("restore {}", a.from_backup))
        .await?;
    let started = time::OffsetDateTime::now_utc();
    let result = restore::restore(repo, &req).await;
    let rec = RestoreRecord::new(
        &req,
        started,
        time::OffsetDateTime::now_utc(),
        result.as_ref(),
    );
    keep_record(ctx, rec).await;
    let report = result?;
    match &report {
        RestoreReport::Planned { plan, conflicts } => {
            print_plan(ctx, plan, conflicts, a.existing_resource_policy);
            Ok(())
        }
        RestoreReport::Applied { results, .. } => {
            print_results(ctx, &report, results, &a.from_backup)
        }
    }
}

impl RestoreCreateArgs {
    fn request(&self, ctx: &Ctx<'_>) -> Result<RestoreRequest, Error> {
        let flags = RestoreFlags {
            from_backup: self.from_backup.clone(),
            namespace_mapping: self.namespace_mapping.clone(),
            storage_class_mapping: self.storage_class_mapping.clone(),
            include_objects: self.include_objects.clone().unwrap_or_default(),
            include_resources: self.include_resources.clone().unwrap_or_default(),
            exclude_resources: self.exclude_resources.clone().unwrap_or_default(),
            selector: self.selector.clone().unwrap_or_default(),
            start_applications: self.start_applications,
            existing_resource_policy: self.existing_resource_policy,
            keep_status: self.keep_status,
            keep_node_ports: self.keep_node_ports,
            dry_run: self.dry_run,
            output_dir: self.output_dir.clone(),
            cluster_dir: self.cluster_dir.clone(),
            context: self.context.clone(),
        };
        Ok(RestoreRequest::new(flags, self.movers.settings(ctx.g))?)
    }
}

/// One row of `restore create --dry-run --json`: an object of the backup, in apply order.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct PlannedObject {
    /// As backed up.
    pub source: ObjRef,
    /// As it would be on the target (after the namespace mapping).
    pub target: ObjRef,
    /// Null: it would be applied; otherwise why it would not be.
    pub skipped: Option<String>,
    /// The target already has it (the existing-resource policy decides).
    pub exists: bool,
    /// The object as it would be applied (null when skipped).
    pub object: Option<serde_json::Value>,
}

/// `restore create --json`: each volume's and object's result, in apply order, then what the
/// rules kept out.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct RestoreApplied<'a> {
    pub results: &'a [ApplyResult],
    pub not_restored: Vec<NotRestored>,
}

/// An object of the backup that a restore rule kept out (status, an event, a node-bound pod…).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct NotRestored {
    pub object: ObjRef,
    pub reason: String,
}

/// A dry run: each object to apply in order (renames and conflicts marked), then the skipped.
fn print_plan(ctx: &Ctx<'_>, plan: &[Planned], conflicts: &[ObjRef], policy: ExistingPolicy) {
    let rows: Vec<PlannedObject> = plan
        .iter()
        .map(|p| PlannedObject {
            source: p.source.clone(),
            target: p.target.clone(),
            skipped: p.skipped.clone(),
            exists: conflicts.contains(&p.target),
            object: p.skipped.is_none().then(|| p.value.clone()),
        })
        .collect();
    ctx.emit(&rows, || {
        let mut out = String::new();
        let mut n = 0;
        for p in plan {
            match &p.skipped {
                None => {
                    n += 1;
                    let renamed = if p.source != p.target {
                        format!(" (from {})", p.source.display())
                    } else {
                        String::new()
                    };
                    let exists = if conflicts.contains(&p.target) {
                        format!("  CONFLICT: exists on the target ({policy:?} policy)")
                    } else {
                        String::new()
                    };
                    out.push_str(&format!(
                        "{n:>4}. apply {}{renamed}{exists}\n",
                        p.target.display()
                    ));
                }
                Some(why) => out.push_str(&format!("      skip  {}: {why}\n", p.source.display())),
            }
        }
        out.push_str(&format!(
            "dry run: {n} objects would be applied; nothing was changed"
        ));
        out
    });
}

/// What was done to each volume and object; an error when any failed.
fn print_results(
    ctx: &Ctx<'_>,
    report: &RestoreReport,
    results: &[ApplyResult],
    from_backup: &str,
) -> Result<(), Error> {
    let failed = report.count(Outcome::Failed);
    let skipped: Vec<NotRestored> = report
        .not_restored()
        .map(|(r, why)| NotRestored {
            object: r.clone(),
            reason: why.to_string(),
        })
        .collect();
    let applied = RestoreApplied {
        results,
        not_restored: skipped,
    };
    ctx.emit(&applied, || {
        let mut out = String::new();
        for r in results {
            out.push_str(&format!("{:<8} {} {}\n", format!("{:?}", r.outcome).to_lowercase(), r.r.display(), r.detail));
        }
        out.push_str(&format!(
            "restored from {from_backup}: {} created, {} updated, {} skipped, {} failed; {} objects not restored by rule",
            report.count(Outcome::Created),
            report.count(Outcome::Updated),
            report.count(Outcome::Skipped),
            failed,
            applied.not_restored.len()
        ));
        out
    });
    if failed > 0 {
        return Err(Error::ObjectsFailed(failed));
    }
    Ok(())
}

/// Keeps the record of a restore in the catalog; a catalog that cannot be opened or written
/// is a warning (the restore itself stands).
async fn keep_record(ctx: &Ctx<'_>, rec: RestoreRecord) {
    let kept = match ctx.catalog().await {
        Ok(catalog) => blocking(&catalog, move |c| c.record_restore(&rec))
            .await
            .map_err(Error::from),
        Err(e) => Err(e),
    };
    match kept {
        Ok(id) => tracing::info!(%id, "restore recorded"),
        Err(e) => tracing::warn!(
            "the restore was not recorded (`restore list` will not show it): {}; give a writable --state-dir",
            e.one_line()
        ),
    }
}

async fn list(ctx: &Ctx<'_>, limit: usize) -> Result<(), Error> {
    let catalog = ctx.catalog().await?;
    let rows = blocking(&catalog, move |c| c.restores(limit)).await?;
    ctx.emit(&rows, || restore_table(&rows));
    Ok(())
}

/// `restore list` for people.
fn restore_table(rows: &[RestoreRecord]) -> String {
    if rows.is_empty() {
        return "no restores recorded (in the catalog of this --state-dir)".into();
    }
    super::table(
        &[
            "ID", "BACKUP", "TARGET", "STATUS", "OBJECTS", "FAILED", "STARTED", "DURATION",
        ],
        &[4, 5, 7],
        rows.iter().map(|r| {
            vec![
                r.id.to_string(),
                r.backup.clone(),
                target(r),
                status(r),
                r.objects.to_string(),
                r.failed.to_string(),
                rfc3339_ms(r.started_at),
                format!("{:.1}s", r.duration_seconds),
            ]
        }),
    )
}

/// `kind:where`, as listings show a restore's target.
fn target(r: &RestoreRecord) -> String {
    match &r.target {
        Some(t) => format!("{}:{t}", r.target_kind),
        None => r.target_kind.to_string(),
    }
}

fn status(r: &RestoreRecord) -> String {
    if r.dry_run {
        format!("{} (dry run)", r.status)
    } else {
        r.status.to_string()
    }
}

async fn describe(ctx: &Ctx<'_>, id: &str) -> Result<(), Error> {
    let catalog = ctx.catalog().await?;
    let want = id.to_string();
    let r = blocking(&catalog, move |c| c.restore(&want)).await?;
    ctx.emit(&r, || {
        let mut out = format!(
            "restore {}\nbackup: {}\ntarget: {}\nstatus: {}\nstarted: {}\nduration: {:.1}s\nobjects: {} ({} created, {} updated, {} skipped, {} failed)",
            r.id,
            r.backup,
            target(&r),
            status(&r),
            rfc3339_ms(r.started_at),
            r.duration_seconds,
            r.objects,
            r.created,
            r.updated,
            r.skipped,
            r.failed
        );
        for (k, v) in &r.options {
            out.push_str(&format!("\noption --{k}: {v}"));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("\nerror: {e}"));
        }
        for o in &r.results {
            out.push_str(&format!("\n  {:<8} {} {}", o.action, o.object, o.message));
        }
        out
    });
    Ok(())
}
