//! Commands of scheduled operation: the server, schedules, runs, the catalog, forget, prune.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::{human, Ctx, Error, MoverArgs};
use crate::app::retention::{choose_rules, Policies, Retain};
use crate::repository::{rfc3339, PruneOptions};
use crate::scheduler::catalog::{blocking, catalog_path, Catalog, ScheduleListing};
use crate::scheduler::config::{config_dir, load_config};
use crate::scheduler::runner::{RepoRunner, Source};
use crate::scheduler::server::{serve, Serve};

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// SchedulePolicy and BackupSchedule objects: a YAML file or a directory of them.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Back up from a cluster directory.
    #[arg(long, value_name = "DIR")]
    cluster_dir: Option<PathBuf>,
    /// Back up from a live cluster through this kubeconfig context [default: the current
    /// context, or the in-cluster configuration].
    #[arg(long, value_name = "CTX", conflicts_with = "cluster_dir")]
    context: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9469).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Runs at once across all schedules.
    #[arg(long, default_value_t = 2)]
    max_concurrent: usize,
    #[command(flatten)]
    movers: MoverArgs,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Every schedule the server has loaded: next run, last result.
    #[command(after_help = "Example:\n  lifeboat schedule list")]
    List,
    /// The next fire times of a schedule.
    #[command(after_help = "Example:\n  lifeboat schedule next appns-hourly --count 5")]
    Next {
        /// The schedule's name.
        name: String,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
        count: u64,
    },
    /// Stop running a schedule (until `resume`), whatever its configuration says.
    #[command(after_help = "Example:\n  lifeboat schedule suspend appns-hourly")]
    Suspend {
        /// The schedule's name.
        name: String,
    },
    /// Run a suspended schedule again.
    #[command(after_help = "Example:\n  lifeboat schedule resume appns-hourly")]
    Resume {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Recreate the catalog's copy of the repository (backups, snapshots, runs of scheduled
    /// backups) from the bucket alone.
    #[command(after_help = "Example:\n  lifeboat catalog rebuild --repo s3://backups/prod")]
    Rebuild,
}

#[derive(Debug, Clone, Args)]
pub struct ForgetArgs {
    /// Only the backups of this schedule (default: every schedule, and hand-made backups as
    /// one more group).
    #[arg(long, value_name = "NAME")]
    schedule: Option<String>,
    /// Use this policy's `retain` (from --config).
    #[arg(long, value_name = "NAME", requires = "config")]
    policy: Option<String>,
    /// The configuration holding --policy.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Keep the N newest backups. A backup any --keep-* rule keeps stays; give at least one
    /// rule (or --policy).
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest backup of each of the last N hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    /// Keep the newest backup of each of the last N days that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest backup of each of the last N weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Show what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Ctx<'_> {
    pub(super) fn state_dir(&self) -> PathBuf {
        self.g.state_dir.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("lifeboat")
        })
    }

    pub(super) async fn catalog(&self) -> Result<Arc<Catalog>, Error> {
        let path = catalog_path(&self.state_dir());
        let c = crate::util::blocking(move || Catalog::open(&path)).await?;
        Ok(Arc::new(c))
    }
}

pub(super) async fn server(ctx: &Ctx<'_>, a: &ServerArgs) -> Result<(), Error> {
    let path = a.config.clone();
    let config = crate::util::blocking(move || load_config(&path)).await?;
    let repo = ctx
        .open_waiting(ctx.g.lock_wait.unwrap_or(super::SERVER_LOCK_WAIT))
        .await?;
    let catalog = ctx.catalog().await?;
    let source = match &a.cluster_dir {
        Some(d) => Source::Dir(crate::k8s::source::ClusterDir::new(d)),
        None => Source::Live(Arc::new(
            crate::k8s::live::LiveCluster::connect(a.context.as_deref()).await?,
        )),
    };
    let runner = Arc::new(RepoRunner {
        repo,
        source,
        catalog: catalog.clone(),
        config_dir: config_dir(&a.config),
        movers: a.movers.settings(ctx.g),
    });
    eprintln!(
        "lifeboat server: {} schedule(s), catalog {}",
        config.schedules.len(),
        catalog.path().display()
    );
    let s = Serve {
        config_path: a.config.clone(),
        config,
        catalog,
        runner: Arc::new(runner),
        metrics_addr: a.metrics_addr,
        max_concurrent: a.max_concurrent,
    };
    serve(s, ctx.cancel.clone()).await?;
    eprintln!("lifeboat server: stopped");
    Ok(())
}

/// `schedule suspend|resume --json`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ScheduleSuspension {
    pub name: String,
    /// As set: true after `suspend`, false after `resume`.
    pub suspended: bool,
}

/// `catalog rebuild --json`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct CatalogRebuilt {
    /// The catalog file rebuilt.
    pub catalog: String,
    /// Backup records and volume snapshots read from the bucket into it.
    pub backups: usize,
    pub snapshots: usize,
    /// Runs of scheduled backups the catalog did not know, recovered from their records.
    pub runs_recovered: usize,
    /// Names held by more than one record (the catalog lists the oldest).
    pub duplicate_names: Vec<crate::scheduler::catalog::DuplicateName>,
}

pub(super) async fn schedule(ctx: &Ctx<'_>, cmd: &ScheduleCommand) -> Result<(), Error> {
    let catalog = ctx.catalog().await?;
    let now = time::OffsetDateTime::now_utc();
    match cmd {
        ScheduleCommand::List => {
            let rows = blocking(&catalog, move |c| c.listing(now)).await?;
            ctx.emit(&rows, || schedule_table(&rows));
        }
        ScheduleCommand::Next { name, count } => {
            let (n, count) = (name.clone(), *count as usize);
            let (s, fires) = blocking(&catalog, move |c| c.upcoming(&n, now, count)).await?;
            let fires: Vec<String> = fires.into_iter().map(rfc3339).collect();
            ctx.emit(&fires, || {
                let mut out = format!(
                    "{name} ({}){}:",
                    s.describe_trigger(),
                    if s.suspended { ", suspended" } else { "" }
                );
                for f in &fires {
                    out.push_str(&format!("\n  {f}"));
                }
                out
            });
        }
        ScheduleCommand::Suspend { name } | ScheduleCommand::Resume { name } => {
            let suspend = matches!(cmd, ScheduleCommand::Suspend { .. });
            let n = name.clone();
            blocking(&catalog, move |c| c.set_suspended(&n, suspend)).await?;
            ctx.emit(
                &ScheduleSuspension {
                    name: name.clone(),
                    suspended: suspend,
                },
                || {
                    format!(
                        "schedule {name} {}",
                        if suspend { "suspended" } else { "resumed" }
                    )
                },
            );
        }
    }
    Ok(())
}

/// `schedule list` for people.
fn schedule_table(rows: &[ScheduleListing]) -> String {
    if rows.is_empty() {
        return "no schedules (the server records them when it loads its configuration)".into();
    }
    super::table(
        &["NAME", "POLICY", "TRIGGER", "NEXT RUN", "LAST", "LAST RUN"],
        &[],
        rows.iter().map(|r| {
            let next = if !r.active {
                "(not in the configuration)"
            } else if r.suspended {
                "suspended"
            } else {
                r.next_run_at.as_deref().unwrap_or("-")
            };
            vec![
                r.name.clone(),
                r.policy.clone(),
                r.trigger.clone(),
                next.to_string(),
                r.last_result
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.last_run_at.clone().unwrap_or_else(|| "-".into()),
            ]
        }),
    )
}

pub(super) async fn runs(
    ctx: &Ctx<'_>,
    schedule: Option<String>,
    limit: usize,
) -> Result<(), Error> {
    let catalog = ctx.catalog().await?;
    let rows = blocking(&catalog, move |c| c.runs(schedule.as_deref(), limit)).await?;
    ctx.emit(&rows, || {
        if rows.is_empty() {
            return "no runs".into();
        }
        super::table(
            &[
                "ID",
                "SCHEDULE",
                "STARTED",
                "RESULT",
                "READ",
                "UPLOADED",
                "BACKUP / ERROR",
            ],
            &[0, 4, 5],
            rows.iter().map(|r| {
                vec![
                    r.id.to_string(),
                    r.schedule.clone(),
                    r.started_at.clone(),
                    r.result.to_string(),
                    r.read_bytes.map(human).unwrap_or_default(),
                    r.uploaded_bytes.map(human).unwrap_or_default(),
                    format!(
                        "{}{}",
                        r.backup.as_deref().unwrap_or("-"),
                        r.error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                ]
            }),
        )
    });
    Ok(())
}

pub(super) async fn catalog(ctx: &Ctx<'_>, cmd: &CatalogCommand) -> Result<(), Error> {
    let CatalogCommand::Rebuild = cmd;
    let repo = ctx.open().await?;
    let backups = crate::app::record::list_backups(&repo).await?;
    let snapshots = repo.list_snapshots().await?;
    let catalog = ctx.catalog().await?;
    let rebuilt = blocking(&catalog, move |c| c.rebuild(&backups, &snapshots)).await?;
    let (b, s, r) = (rebuilt.backups, rebuilt.snapshots, rebuilt.runs_recovered);
    for d in &rebuilt.duplicates {
        tracing::warn!(
            "{} backups are named `{}` (ids {}); the catalog lists the oldest, the bucket keeps all: pick one by id with --from-backup",
            d.ids.len(),
            d.name,
            d.ids.join(", ")
        );
    }
    let out = CatalogRebuilt {
        catalog: catalog.path().display().to_string(),
        backups: b,
        snapshots: s,
        runs_recovered: r,
        duplicate_names: rebuilt.duplicates,
    };
    ctx.emit(&out, || {
        format!(
            "catalog {} rebuilt from {}: {b} backups, {s} snapshots, {r} runs recovered",
            catalog.path().display(),
            repo.location()
        )
    });
    Ok(())
}

/// `forget --json`: each backup's fate, then what was removed.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ForgetOutput {
    pub dry_run: bool,
    /// Every backup the rules looked at.
    pub decisions: Vec<ForgetDecision>,
    /// What was removed (None: a dry run).
    pub removed: Option<crate::app::retention::ForgetReport>,
}

/// One backup's fate.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ForgetDecision {
    /// The backup's id (hex).
    pub id: String,
    pub name: String,
    pub schedule: Option<String>,
    /// When the backup started (RFC 3339, UTC, milliseconds).
    pub started_at: String,
    /// Why it is kept; empty: it is removed.
    pub kept_by: Vec<crate::app::retention::KeepReason>,
}

pub(super) async fn forget(ctx: &Ctx<'_>, a: &ForgetArgs) -> Result<(), Error> {
    let flags = Retain {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
    };
    let policies = match (&a.policy, &a.config) {
        (Some(_), Some(cfg)) => {
            let path = cfg.clone();
            let config = crate::util::blocking(move || load_config(&path)).await?;
            Some(Policies {
                config: cfg.display().to_string(),
                retain: config
                    .policies
                    .iter()
                    .map(|(n, p)| (n.clone(), p.retain))
                    .collect(),
            })
        }
        _ => None,
    };
    let policy = a.policy.as_deref().zip(policies.as_ref());
    let retain = choose_rules(flags, policy).map_err(|e| Error::Usage(e.to_string()))?;
    let repo = ctx.open().await?;
    let backups = crate::app::record::list_backups(&repo).await?;
    let decisions = crate::app::retention::plan(&backups, &|_| retain, a.schedule.as_deref());
    let report = if a.dry_run {
        None
    } else {
        Some(crate::app::retention::forget(&repo, &backups, &decisions).await?)
    };
    if !a.dry_run {
        // Best effort: the catalog is a copy, `catalog rebuild` recreates it.
        if let Ok(catalog) = ctx.catalog().await {
            let gone = crate::app::retention::removed(&decisions);
            let _ = blocking(&catalog, move |c| c.remove_backups(&gone)).await;
        }
    }
    let out = ForgetOutput {
        dry_run: a.dry_run,
        decisions: decisions
            .iter()
            .map(|d| ForgetDecision {
                id: d.id.to_hex(),
                name: d.name.clone(),
                schedule: d.schedule.clone(),
                started_at: rfc3339(d.time),
                kept_by: d.kept_by.clone(),
            })
            .collect(),
        removed: report.clone(),
    };
    ctx.emit(&out, || {
        let mut out = super::table(
            &["ACTION", "STARTED", "NAME", "KEPT BY"],
            &[],
            decisions.iter().map(|d| {
                vec![
                    if d.removed() { "remove" } else { "keep" }.to_string(),
                    rfc3339(d.time),
                    d.name.clone(),
                    d.kept_by.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","),
                ]
            }),
        );
        if !decisions.is_empty() {
            out.push('\n');
        }
        let n = decisions.iter().filter(|d| d.removed()).count();
        match &report {
            None => out.push_str(&format!("dry run: {n} backup(s) would be removed; nothing was changed")),
            Some(r) => out.push_str(&format!(
                "removed {} backup(s) and {} volume snapshot(s){}; `lifeboat prune` gives the space back",
                r.backups_removed,
                r.snapshots_removed,
                match r.interrupted_finished {
                    0 => String::new(),
                    n => format!(" (finishing {n} interrupted forget(s) first)"),
                }
            )),
        }
        out
    });
    Ok(())
}

pub(super) async fn prune(
    ctx: &Ctx<'_>,
    dry_run: bool,
    repack_threshold: f64,
    grace: std::time::Duration,
) -> Result<(), Error> {
    if !(0.0..=1.0).contains(&repack_threshold) {
        return Err(Error::Usage(
            "--repack-threshold is a fraction from 0 to 1".into(),
        ));
    }
    let repo = ctx.open().await?;
    let r = repo
        .prune(&PruneOptions {
            dry_run,
            repack_threshold,
            grace,
        })
        .await?;
    ctx.emit(&r, || prune_summary(&r));
    Ok(())
}

/// A prune's report in one paragraph.
pub(super) fn prune_summary(r: &crate::repository::PruneReport) -> String {
    let out = format!(
        "{}{} pack(s) deleted, {} repacked into {}, {} unindexed removed; {} blobs referenced, {} removed; data {} → {}",
        if r.dry_run { "dry run: " } else { "" },
        r.packs_deleted,
        r.packs_repacked,
        r.packs_written,
        r.packs_unindexed,
        r.blobs_referenced,
        r.blobs_removed,
        human(r.bytes_before),
        human(r.bytes_after)
    );
    out + &prune_deferral(r)
}

/// What a prune left for its grace period, and what it released: lines to add to its summary
/// (empty when neither).
pub(super) fn prune_deferral(r: &crate::repository::PruneReport) -> String {
    let mut out = String::new();
    if r.packs_released > 0 {
        out += &format!(
            "\n{} pack(s) taken out by earlier prunes deleted, their grace period over",
            r.packs_released
        );
    }
    if r.deferred_bytes > 0 {
        out += &format!(
            "\n{} pack(s), {}, stay in the store for the grace period ({}), for readers that hold no lock; the first can go at {} (prune again then, or now with --grace 0s if every reader can write its lock)",
            r.packs_deferred + r.packs_waiting,
            human(r.deferred_bytes),
            humantime_secs(r.grace_seconds),
            r.next_release_at.map(rfc3339).unwrap_or_default()
        );
    }
    out
}

/// `86400` → `24h`, `90` → `1m30s`.
fn humantime_secs(s: u64) -> String {
    let (h, m, sec) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (sec, "s")] {
        if n > 0 {
            out += &format!("{n}{unit}");
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}
