//! Commands of the DR site: standby (and its status), activate, deactivate, drill.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{human, Ctx, Error, MoverArgs};
use crate::k8s::live::LiveCluster;
use crate::k8s::objects::Mapping;
use crate::k8s::source::ClusterDir;
use crate::repository::rfc3339;
use crate::standby::{
    self, DrillReport, DrillRequest, NamespaceReport, RunningReport, Site, StandbyError,
    StandbyOptions, StatusRow, VolumeReport, WorkerOptions,
};

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StandbyArgs {
    #[command(subcommand)]
    command: Option<StandbyCommand>,
    /// The BackupSchedule whose backups this site follows.
    #[arg(long, value_name = "NAME")]
    schedule: Option<String>,
    /// old:new namespace renames, comma-separated.
    #[arg(long, default_value = "", hide_default_value = true)]
    namespace_mapping: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Time between looks at the bucket.
    #[arg(long, default_value = "30s", value_parser = crate::hooks::parse_duration)]
    interval: Duration,
    /// One cycle, then exit (for a cron-driven site).
    #[arg(long)]
    once: bool,
    /// Live sites: overwrite (whole, journaled) claims that exist but that standby did not
    /// write, instead of failing their namespace: for failback onto a repaired primary.
    #[arg(long)]
    overwrite_claims: bool,
    /// Serve the standby figures on /metrics at this address.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    movers: MoverArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum StandbyCommand {
    /// Per namespace: the backup applied, its age (the RPO lag), the newest backup in the
    /// bucket, and any error.
    #[command(after_help = "Example:\n  lifeboat standby status --json")]
    Status,
    /// Inside the standby Job of a live site: move the claims' block devices to a backup's
    /// snapshots, two-phase, journals on --journal-dir.
    #[command(hide = true)]
    ApplyDevices {
        /// A directory on a claim that outlives the Job.
        #[arg(long, value_name = "DIR")]
        journal_dir: PathBuf,
        /// The backup being applied (recorded in the commit marker).
        #[arg(long)]
        backup: String,
        /// PVC=DEVICE=SNAPSHOT[=BASE] (repeatable).
        #[arg(long = "volume", value_name = "PVC=DEVICE=SNAPSHOT[=BASE]")]
        volumes: Vec<standby::DeviceVolume>,
        /// Also write what was done, as compact JSON, here (the container's termination
        /// message, which standby reads back).
        #[arg(long, value_name = "FILE")]
        report_file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The site is a cluster directory.
    #[arg(long, value_name = "DIR")]
    cluster_dir: Option<PathBuf>,
    /// The site is a live cluster (kubeconfig context; none: current or in-cluster).
    #[arg(long, value_name = "CTX", conflicts_with = "cluster_dir")]
    context: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct NamespaceArgs {
    /// The namespace on this site.
    #[arg(long, short = 'n')]
    namespace: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// The namespace (as backed up) to drill.
    #[arg(long, short = 'n')]
    namespace: String,
    /// The scratch namespace it is restored into.
    #[arg(long, value_name = "NS")]
    into: String,
    /// Drill this backup [default: the newest complete backup holding the namespace, or of
    /// --schedule].
    #[arg(long, value_name = "NAME")]
    from_backup: Option<String>,
    /// Drill the newest complete backup of this BackupSchedule [default: of any schedule].
    #[arg(long, value_name = "NAME")]
    schedule: Option<String>,
    /// Remove the scratch namespace after the report.
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    movers: MoverArgs,
}

async fn site(t: &TargetArgs) -> Result<Site, Error> {
    Ok(match &t.cluster_dir {
        Some(d) => Site::Dir(ClusterDir::new(d)),
        None => Site::Live(LiveCluster::connect(t.context.as_deref()).await?),
    })
}

pub(super) async fn standby(ctx: &Ctx<'_>, a: &StandbyArgs) -> Result<(), Error> {
    match &a.command {
        Some(StandbyCommand::ApplyDevices {
            journal_dir,
            backup,
            volumes,
            report_file,
        }) => {
            let repo = ctx.open_to_read(&format!("standby apply {backup}")).await?;
            let reports =
                standby::apply_devices(&repo, journal_dir, backup, volumes, report_file.as_deref())
                    .await?;
            ctx.emit(&reports, || devices_text(&reports));
        }
        Some(StandbyCommand::Status) => {
            let rows = standby::status(&ctx.catalog().await?).await?;
            ctx.emit(&rows, || status_text(&rows));
        }
        None => {
            let catalog = ctx.catalog().await?;
            let schedule = a.schedule.clone().ok_or_else(|| {
                Error::Usage("standby needs --schedule NAME (or `standby status`)".into())
            })?;
            let w = WorkerOptions {
                standby: StandbyOptions {
                    schedule,
                    namespaces: Mapping::parse("--namespace-mapping", &a.namespace_mapping)?,
                    overwrite_claims: a.overwrite_claims,
                },
                interval: a.interval,
                once: a.once,
                metrics_addr: a.metrics_addr,
                movers: a.movers.settings(ctx.g),
            };
            let site = site(&a.target).await?;
            let open = move || async move { ctx.open().await.map_err(opening) };
            standby::run(open, &site, &catalog, &w, &ctx.cancel, |r| {
                emit_cycle(ctx, r)
            })
            .await?;
        }
    }
    Ok(())
}

/// The repository as the standby worker opens it: a store or repository failure keeps its
/// kind, and so whether another cycle may succeed.
fn opening(e: Error) -> StandbyError {
    match e {
        Error::Repo(e) => StandbyError::Open(e),
        Error::Store(e) => StandbyError::Open(e.into()),
        e => StandbyError::Failed(format!("the repository cannot be opened: {e}")),
    }
}

fn devices_text(reports: &[VolumeReport]) -> String {
    reports
        .iter()
        .map(|v| {
            format!(
                "{}: {} {}, fetched {}, wrote {}",
                v.pvc,
                v.mode,
                &v.snapshot[..8.min(v.snapshot.len())],
                human(v.fetched_bytes),
                human(v.written_bytes)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn status_text(rows: &[StatusRow]) -> String {
    if rows.is_empty() {
        return "no namespace applied by standby on this site".into();
    }
    super::table(
        &[
            "NAMESPACE",
            "APPLIED",
            "LAG",
            "NEWEST IN BUCKET",
            "STATE",
            "ERROR",
        ],
        &[2],
        rows.iter().map(|r| {
            vec![
                r.namespace.clone(),
                r.applied_backup.clone().unwrap_or_else(|| "-".into()),
                r.lag_seconds
                    .map(|s| format!("{s:.0}s"))
                    .unwrap_or_else(|| "-".into()),
                r.newest_backup.clone().unwrap_or_else(|| "-".into()),
                r.state.to_string(),
                r.error.clone().unwrap_or_default(),
            ]
        }),
    )
}

fn emit_cycle(ctx: &Ctx<'_>, reports: &[NamespaceReport]) {
    ctx.emit(&reports, || {
        let mut out = String::new();
        for r in reports {
            out.push_str(&format!(
                "{} (from {}): {}{}{}\n",
                r.namespace,
                r.source_namespace,
                r.state,
                r.backup
                    .as_deref()
                    .map(|b| format!(" {b}"))
                    .unwrap_or_default(),
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
            for v in &r.volumes {
                out.push_str(&format!(
                    "  volume {}: {} ({} blocks), fetched {}, written {}\n",
                    v.pvc,
                    v.mode,
                    v.blocks_changed,
                    human(v.fetched_bytes),
                    human(v.written_bytes)
                ));
            }
        }
        out.trim_end().to_string()
    });
}

/// `activate|deactivate --json`: what was changed on the site, or, when a controller's
/// Standby holds the namespace, the flip of that Standby (the controller makes the changes).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Activation<'a> {
    Site(&'a RunningReport),
    Standby(&'a crate::operator::client::Flip),
}

pub(super) async fn set_running(ctx: &Ctx<'_>, a: &NamespaceArgs, run: bool) -> Result<(), Error> {
    // A controller's Standby holds the namespace: it is flipped there, the controller acts.
    if a.target.cluster_dir.is_none()
        && super::controller::flip(ctx, a.target.context.as_deref(), &a.namespace, run).await?
    {
        return Ok(());
    }
    let catalog = ctx.catalog().await?;
    let site = site(&a.target).await?;
    let report = standby::set_running(&catalog, &site, &a.namespace, run).await?;
    ctx.emit(&Activation::Site(&report), || running_text(&report));
    Ok(())
}

fn running_text(r: &RunningReport) -> String {
    let mut out = String::new();
    for c in &r.changes {
        out.push_str(&format!(
            "{}: {} {} → {}\n",
            c.object, c.field, c.from, c.to
        ));
    }
    out.push_str(&format!(
        "namespace {} {}: {} change(s){}",
        r.namespace,
        r.state,
        r.changes.len(),
        if r.changes.is_empty() {
            " (it was already)"
        } else {
            ""
        }
    ));
    out
}

pub(super) async fn drill(ctx: &Ctx<'_>, a: &DrillArgs) -> Result<(), Error> {
    let repo = ctx.open_to_read(&format!("drill {}", a.namespace)).await?;
    let site = site(&a.target).await?;
    let request = DrillRequest {
        namespace: a.namespace.clone(),
        into: a.into.clone(),
        from_backup: a.from_backup.clone(),
        schedule: a.schedule.clone(),
        remove: a.remove,
    };
    let report = standby::drill(&repo, &site, a.movers.settings(ctx.g), &request)
        .await
        .map_err(|e| match e {
            StandbyError::NothingToDrill { .. } => Error::Usage(e.to_string()),
            e => e.into(),
        })?;
    ctx.emit(&report, || drill_text(&report));
    if report.passed() {
        Ok(())
    } else {
        Err(Error::DrillFailed)
    }
}

fn drill_text(report: &DrillReport) -> String {
    let mut out = format!(
        "drill of {} from backup {} ({}) into {}:\n  objects: {} restored, {} verified",
        report.namespace,
        report.backup,
        rfc3339(report.backup_time),
        report.into,
        report.objects_restored,
        report.objects_verified
    );
    for d in &report.differences {
        out.push_str(&format!("\n  differs: {d}"));
    }
    for v in &report.volumes {
        out.push_str(&format!(
            "\n  volume {}: {} blocks verified against snapshot {} ({}): {}",
            v.pvc,
            v.blocks_verified,
            &v.snapshot_id[..8],
            human(v.size_bytes),
            if v.verified { "OK" } else { "MISMATCH" }
        ));
    }
    out.push_str(&format!(
        "\n  time to ready (RTO): {:.2}s; data age at the drill (RPO): {:.0}s{}",
        report.rto_seconds,
        report.rpo_seconds,
        if report.removed {
            "; scratch namespace removed"
        } else {
            ""
        }
    ));
    out
}
