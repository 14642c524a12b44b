//! Commands of the DR site: standby (and its status), activate, deactivate, drill.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{human, Ctx, Error, MoverArgs};
use crate::k8s::live::LiveCluster;
use crate::k8s::objects::Mapping;
use crate::k8s::source::ClusterDir;
use crate::repository::rfc3339;
use crate::scheduler::catalog::blocking;
use crate::standby::{self, NamespaceReport, StandbyOptions};

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StandbyArgs {
    #[command(subcommand)]
    command: Option<StandbyCommand>,
    /// The BackupSchedule whose backups this site follows.
    #[arg(long, value_name = "NAME")]
    schedule: Option<String>,
    /// old:new namespace renames, comma-separated.
    #[arg(long, default_value = "")]
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

enum Site {
    Dir(ClusterDir),
    Live(LiveCluster),
}

async fn site(t: &TargetArgs) -> Result<Site, Error> {
    Ok(match &t.cluster_dir {
        Some(d) => Site::Dir(ClusterDir::new(d)),
        None => Site::Live(LiveCluster::connect(t.context.as_deref()).await?),
    })
}

fn render_status(
    rows: &[crate::scheduler::catalog::StandbyRow],
    now: time::OffsetDateTime,
) -> String {
    let mut o = String::from("# HELP lifeboat_standby_lag_seconds Age of the backup a namespace holds (the RPO lag).\n# TYPE lifeboat_standby_lag_seconds gauge\n");
    for r in rows {
        if let Some(a) = standby::age_seconds(r.applied_backup_time.as_deref(), now) {
            o.push_str(&format!(
                "lifeboat_standby_lag_seconds{{namespace=\"{}\"}} {a:.0}\n",
                r.namespace
            ));
        }
    }
    o.push_str("# HELP lifeboat_standby_behind 1 when the bucket holds a newer backup than the one applied.\n# TYPE lifeboat_standby_behind gauge\n");
    for r in rows {
        let behind = (r.newest_backup.is_some() && r.newest_backup != r.applied_backup) as u8;
        o.push_str(&format!(
            "lifeboat_standby_behind{{namespace=\"{}\"}} {behind}\n",
            r.namespace
        ));
    }
    o.push_str("# HELP lifeboat_standby_error 1 when the last cycle failed (the applied state is kept).\n# TYPE lifeboat_standby_error gauge\n");
    for r in rows {
        o.push_str(&format!(
            "lifeboat_standby_error{{namespace=\"{}\"}} {}\n",
            r.namespace,
            r.error.is_some() as u8
        ));
    }
    o.push_str("# HELP lifeboat_standby_activated 1 once the namespace was activated (failover).\n# TYPE lifeboat_standby_activated gauge\n");
    for r in rows {
        o.push_str(&format!(
            "lifeboat_standby_activated{{namespace=\"{}\"}} {}\n",
            r.namespace, r.activated as u8
        ));
    }
    o
}

pub(super) async fn standby(ctx: &Ctx<'_>, a: &StandbyArgs) -> Result<(), Error> {
    if let Some(StandbyCommand::ApplyDevices {
        journal_dir,
        backup,
        volumes,
        report_file,
    }) = &a.command
    {
        let repo = ctx.open_shared(&format!("standby apply {backup}")).await?;
        let reports = standby::apply_devices(&repo, journal_dir, backup, volumes).await?;
        if let Some(f) = report_file {
            let short: Vec<crate::k8s::csi::AppliedClaim> = reports
                .iter()
                .map(|v| crate::k8s::csi::AppliedClaim {
                    pvc: v.pvc.clone(),
                    mode: v.mode.clone(),
                    blocks_changed: v.blocks_changed,
                    bytes_fetched: v.bytes_fetched,
                    bytes_written: v.bytes_written,
                })
                .collect();
            let text = serde_json::to_string(&short).expect("serialises");
            if let Err(e) = std::fs::write(f, text) {
                tracing::warn!("cannot write the report to {}: {e}", f.display());
            }
        }
        ctx.emit(&reports, || {
            reports
                .iter()
                .map(|v| {
                    format!(
                        "{}: {} {}, fetched {}, wrote {}",
                        v.pvc,
                        v.mode,
                        &v.snapshot[..8.min(v.snapshot.len())],
                        human(v.bytes_fetched),
                        human(v.bytes_written)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        });
        return Ok(());
    }
    let catalog = ctx.catalog().await?;
    if let Some(StandbyCommand::Status) = a.command {
        let rows = blocking(&catalog, |c| c.standby_rows()).await?;
        let now = time::OffsetDateTime::now_utc();
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"namespace": r.namespace, "schedule": r.schedule, "source_namespace": r.source_namespace,
                    "applied_backup": r.applied_backup, "applied_backup_time": r.applied_backup_time,
                    "lag_seconds": standby::age_seconds(r.applied_backup_time.as_deref(), now),
                    "newest_backup": r.newest_backup, "newest_backup_time": r.newest_backup_time,
                    "checked_at": r.checked_at, "error": r.error, "activated": r.activated})
            })
            .collect();
        ctx.emit(&json, || {
            if rows.is_empty() {
                return "no namespace applied by standby on this site".into();
            }
            let mut out = format!(
                "{:<20} {:<28} {:>10} {:<28} STATE",
                "NAMESPACE", "APPLIED", "LAG", "NEWEST IN BUCKET"
            );
            for (r, j) in rows.iter().zip(&json) {
                let lag = j["lag_seconds"]
                    .as_f64()
                    .map(|s| format!("{s:.0}s"))
                    .unwrap_or("-".into());
                let state = if r.activated {
                    "activated".to_string()
                } else if let Some(e) = &r.error {
                    format!("ERROR: {e}")
                } else if r.newest_backup != r.applied_backup {
                    "behind".into()
                } else {
                    "current".into()
                };
                out.push_str(&format!(
                    "\n{:<20} {:<28} {:>10} {:<28} {state}",
                    r.namespace,
                    r.applied_backup.as_deref().unwrap_or("-"),
                    lag,
                    r.newest_backup.as_deref().unwrap_or("-")
                ));
            }
            out
        });
        return Ok(());
    }
    let schedule = a.schedule.clone().ok_or_else(|| {
        Error::Usage("standby needs --schedule NAME (or `standby status`)".into())
    })?;
    let o = StandbyOptions {
        schedule,
        namespaces: Mapping::parse("--namespace-mapping", &a.namespace_mapping)?,
        overwrite_claims: a.overwrite_claims,
    };
    let site = site(&a.target).await?;
    let mut repo: Option<Arc<crate::repository::Repository>> = None;
    let status = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = a.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Server(format!("cannot listen on {addr} for metrics: {e}")))?;
        let s = status.clone();
        tokio::spawn(crate::metrics::serve_metrics(
            listener,
            Arc::new(move || s.lock().unwrap().clone()),
            ctx.cancel.clone(),
        ));
    }
    loop {
        // Opened (again) inside the loop: a bucket that is unreachable now may be back later.
        if repo.is_none() {
            match ctx.open().await {
                Ok(r) => repo = Some(r),
                Err(e) => tracing::error!("cannot open the repository: {e}"),
            }
        }
        let result = match &repo {
            None => Err(standby::StandbyError::Failed(
                "the repository cannot be opened (see the error above)".into(),
            )),
            Some(repo) => match repo
                .lock(
                    crate::repository::LockKind::Shared,
                    &format!("standby {}", o.schedule),
                )
                .await
            {
                Err(e) => Err(standby::StandbyError::Repo(e)),
                Ok(lock) => {
                    let r = match &site {
                        Site::Dir(d) => standby::cycle_cluster_dir(repo, d, &catalog, &o).await,
                        Site::Live(l) => {
                            standby::cycle_live(repo, l, &catalog, &o, a.movers.settings(ctx.g))
                                .await
                        }
                    };
                    let _ = lock.release().await;
                    r
                }
            },
        };
        let rows = blocking(&catalog, |c| c.standby_rows()).await?;
        *status.lock().unwrap() = render_status(&rows, time::OffsetDateTime::now_utc());
        match result {
            Ok(reports) => emit_cycle(ctx, &reports),
            Err(e) => {
                // The bucket is unreachable or holds nothing usable: the site keeps what it
                // has, and says so.
                tracing::error!("standby cycle failed; the site keeps its last applied state: {e}");
                let msg = e.to_string();
                let sched = o.schedule.clone();
                blocking(&catalog, move |c| {
                    for r in c
                        .standby_rows()?
                        .into_iter()
                        .filter(|r| r.schedule == sched)
                    {
                        c.standby_checked(
                            &r.namespace,
                            &r.schedule,
                            &r.source_namespace,
                            None,
                            Some(&msg),
                        )?;
                    }
                    Ok(())
                })
                .await?;
                if a.once {
                    return Err(Error::Standby(e));
                }
            }
        }
        if a.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = ctx.cancel.cancelled() => return Ok(()),
        }
    }
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
                    human(v.bytes_fetched),
                    human(v.bytes_written)
                ));
            }
        }
        out.trim_end().to_string()
    });
}

pub(super) async fn set_running(ctx: &Ctx<'_>, a: &NamespaceArgs, run: bool) -> Result<(), Error> {
    let catalog = ctx.catalog().await?;
    let ns = a.namespace.clone();
    let known = blocking(&catalog, move |c| c.standby_row(&ns)).await?;
    // Activating needs something standby applied; deactivating also serves the primary.
    if run && known.is_none() {
        return Err(Error::Catalog(
            crate::scheduler::catalog::CatalogError::NotStandby(a.namespace.clone()),
        ));
    }
    if known.is_some() {
        // Standby stops (activate) or resumes (deactivate) applying to the namespace first.
        let ns = a.namespace.clone();
        blocking(&catalog, move |c| c.set_activated(&ns, run)).await?;
    }
    let site = site(&a.target).await?;
    if run && known.is_some() {
        // The application will change its data: standby's records of what the volumes hold
        // go first, so that after `deactivate` standby writes them anew, never a delta onto
        // data the application changed.
        match &site {
            Site::Dir(d) => standby::forget_applied_cluster_dir(d, &a.namespace)?,
            Site::Live(l) => standby::forget_live_claims(l, &a.namespace).await?,
        }
        let ns = a.namespace.clone();
        blocking(&catalog, move |c| c.forget_applied(&ns)).await?;
    }
    if !run && known.is_some() {
        if let Site::Live(l) = &site {
            // Given back to standby: its claims are standby's again, content unknown.
            standby::claim_live_claims(l, &a.namespace).await?;
        }
    }
    let changes = match site {
        Site::Dir(d) => {
            let ns = a.namespace.clone();
            tokio::task::spawn_blocking(move || standby::set_running_cluster_dir(&d, &ns, run))
                .await
                .map_err(|e| Error::Worker(e.to_string()))??
        }
        Site::Live(l) => {
            if known.is_some() {
                // On the namespace too: a standby that lost its catalog still leaves it alone.
                l.annotate_namespace(&a.namespace, standby::ACTIVATED, run.then_some("true"))
                    .await?;
            }
            l.set_running(&a.namespace, run).await?
        }
    };
    let verb = if run { "activated" } else { "deactivated" };
    ctx.emit(
        &serde_json::json!({"namespace": a.namespace, "state": verb, "changes": changes}),
        || {
            let mut out = String::new();
            for c in &changes {
                out.push_str(&format!(
                    "{}: {} {} → {}\n",
                    c.object, c.field, c.from, c.to
                ));
            }
            out.push_str(&format!(
                "namespace {} {verb}: {} change(s){}",
                a.namespace,
                changes.len(),
                if changes.is_empty() {
                    " (it was already)"
                } else {
                    ""
                }
            ));
            out
        },
    );
    Ok(())
}

pub(super) async fn drill(ctx: &Ctx<'_>, a: &DrillArgs) -> Result<(), Error> {
    let repo = ctx.open_shared(&format!("drill {}", a.namespace)).await?;
    let backups = crate::app::record::list_backups(&repo).await?;
    let backup = match (&a.from_backup, &a.schedule) {
        (Some(name), _) => crate::app::record::find_backup(&repo, name).await?.1,
        (None, Some(s)) => standby::newest_of(&backups, s)
            .ok_or_else(|| Error::Usage(format!("no complete backup of schedule `{s}`")))?,
        (None, None) => backups
            .iter()
            .rev()
            .find(|(_, b)| b.failures.is_empty() && b.filters.namespaces.contains(&a.namespace))
            .map(|(_, b)| b.clone())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "no complete backup holds namespace `{}`",
                    a.namespace
                ))
            })?,
    };
    let report = match site(&a.target).await? {
        Site::Dir(d) => {
            standby::drill_cluster_dir(&repo, &d, &backup, &a.namespace, &a.into, a.remove).await?
        }
        Site::Live(l) => {
            standby::drill_live(
                &repo,
                &l,
                a.movers.settings(ctx.g),
                &backup,
                &a.namespace,
                &a.into,
                a.remove,
            )
            .await?
        }
    };
    let ok = report.volumes.iter().all(|v| v.verified)
        && report.objects_verified == report.objects_restored;
    ctx.emit(&report, || {
        let mut out = format!(
            "drill of {} from backup {} ({}) into {}:\n  objects: {} restored, {} verified",
            report.namespace,
            report.backup,
            rfc3339(report.backup_time),
            report.into,
            report.objects_restored,
            report.objects_verified
        );
        for v in &report.volumes {
            out.push_str(&format!(
                "\n  volume {}: {} blocks verified against snapshot {} ({}): {}",
                v.pvc,
                v.blocks_verified,
                &v.snapshot[..8],
                human(v.bytes),
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
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Server(
            "the drill found differences (listed above)".into(),
        ))
    }
}
