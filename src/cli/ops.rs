//! Commands of scheduled operation: the server, schedules, runs, the catalog, forget, prune.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Args, Subcommand};

use super::{human, Ctx, Error, MoverArgs};
use crate::metrics::serve_metrics;
use crate::repository::{rfc3339, PruneOptions};
use crate::scheduler::catalog::{blocking, catalog_path, Catalog};
use crate::scheduler::config::{load_config, next_fires, Retain};
use crate::scheduler::server::{Clock, Control, Metrics, RepoRunner, Server, Source};

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
    List,
    /// The next fire times of a schedule.
    Next {
        name: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
    },
    /// Stop running a schedule (until `resume`), whatever its configuration says.
    Suspend { name: String },
    /// Run a suspended schedule again.
    Resume { name: String },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Recreate the catalog's copy of the repository (backups, snapshots, runs of scheduled
    /// backups) from the bucket alone.
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
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Show what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Ctx<'_> {
    fn state_dir(&self) -> PathBuf {
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
        let c = tokio::task::spawn_blocking(move || Catalog::open(&path))
            .await
            .map_err(|e| Error::Worker(e.to_string()))??;
        Ok(Arc::new(c))
    }
}

pub(super) async fn server(ctx: &Ctx<'_>, a: &ServerArgs) -> Result<(), Error> {
    let config = load_config(&a.config)?;
    let config_dir = if a.config.is_dir() {
        a.config.clone()
    } else {
        a.config.parent().map(PathBuf::from).unwrap_or_default()
    };
    let repo = ctx.open().await?;
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
        config_dir,
        movers: a.movers.settings(ctx.g),
    });
    let clock = Clock::system();
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let names = Arc::new(Mutex::new(
        config.schedules.keys().cloned().collect::<Vec<_>>(),
    ));
    if let Some(addr) = a.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Server(format!("cannot listen on {addr} for metrics: {e}")))?;
        let (n, m) = (names.clone(), metrics.clone());
        let render = move || m.lock().unwrap().render(clock.now(), &n.lock().unwrap());
        tokio::spawn(serve_metrics(
            listener,
            Arc::new(render),
            ctx.cancel.clone(),
        ));
        tracing::info!(%addr, "metrics on /metrics");
    }
    // SIGHUP: reload, or keep the running configuration when the new one is invalid.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = a.config.clone();
    let n = names.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::Server(format!("cannot watch SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match load_config(&path) {
                Ok(cfg) => {
                    *n.lock().unwrap() = cfg.schedules.keys().cloned().collect();
                    if tx.send(Control::Reload(cfg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("configuration rejected, the running one stays: {e}"),
            }
        }
    });
    eprintln!(
        "lifeboat server: {} schedule(s), catalog {}",
        config.schedules.len(),
        catalog.path().display()
    );
    let server = Server {
        config: Arc::new(config),
        catalog,
        runner: Arc::new(runner),
        metrics,
        clock,
        max_concurrent: a.max_concurrent,
    };
    server.run(ctx.cancel.clone(), rx).await?;
    eprintln!("lifeboat server: stopped");
    Ok(())
}

pub(super) async fn schedule(ctx: &Ctx<'_>, cmd: &ScheduleCommand) -> Result<(), Error> {
    let catalog = ctx.catalog().await?;
    match cmd {
        ScheduleCommand::List => {
            let rows = blocking(&catalog, |c| {
                let mut out = Vec::new();
                for s in c.schedules()? {
                    let last = c.last_result(&s.name)?;
                    let last_run = c.last_run(&s.name)?;
                    out.push((s, last, last_run));
                }
                Ok(out)
            })
            .await?;
            let now = time::OffsetDateTime::now_utc();
            let json: Vec<serde_json::Value> = rows
                .iter()
                .map(|(s, last, last_run)| {
                    let next = if s.suspended || !s.active {
                        None
                    } else {
                        s.trigger()
                            .and_then(|t| next_fires(&t, now, *last_run, 1).first().copied())
                    };
                    serde_json::json!({"name": s.name, "policy": s.policy, "trigger": s.describe_trigger(),
                        "suspended": s.suspended, "active": s.active, "next_run": next.map(rfc3339),
                        "last_result": last.as_ref().map(|r| &r.result), "last_run": last.as_ref().map(|r| &r.started),
                        "namespaces": s.template.namespaces})
                })
                .collect();
            ctx.emit(&json, || {
                if json.is_empty() {
                    return "no schedules (the server records them when it loads its configuration)".into();
                }
                let mut out = format!(
                    "{:<24} {:<12} {:<28} {:<22} {:<10} LAST RUN",
                    "NAME", "POLICY", "TRIGGER", "NEXT RUN", "LAST"
                );
                for j in &json {
                    let state = if j["active"] == false {
                        "(not in the configuration)"
                    } else if j["suspended"] == true {
                        "suspended"
                    } else {
                        j["next_run"].as_str().unwrap_or("-")
                    };
                    out.push_str(&format!(
                        "\n{:<24} {:<12} {:<28} {:<22} {:<10} {}",
                        j["name"].as_str().unwrap_or(""),
                        j["policy"].as_str().unwrap_or(""),
                        j["trigger"].as_str().unwrap_or(""),
                        state,
                        j["last_result"].as_str().unwrap_or("-"),
                        j["last_run"].as_str().unwrap_or("-")
                    ));
                }
                out
            });
            Ok(())
        }
        ScheduleCommand::Next { name, count } => {
            let n = name.clone();
            let (s, last) =
                blocking(&catalog, move |c| Ok((c.schedule(&n)?, c.last_run(&n)?))).await?;
            let trigger = s.trigger().ok_or_else(|| {
                Error::Server(format!("schedule {name}: its stored trigger does not parse; restart the server with its configuration"))
            })?;
            let fires: Vec<String> =
                next_fires(&trigger, time::OffsetDateTime::now_utc(), last, *count)
                    .into_iter()
                    .map(rfc3339)
                    .collect();
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
            Ok(())
        }
        ScheduleCommand::Suspend { name } | ScheduleCommand::Resume { name } => {
            let suspend = matches!(cmd, ScheduleCommand::Suspend { .. });
            let n = name.clone();
            blocking(&catalog, move |c| c.set_suspended(&n, suspend)).await?;
            ctx.emit(
                &serde_json::json!({"name": name, "suspended": suspend}),
                || {
                    format!(
                        "schedule {name} {}",
                        if suspend { "suspended" } else { "resumed" }
                    )
                },
            );
            Ok(())
        }
    }
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
        let mut out = format!(
            "{:>5} {:<20} {:<25} {:<10} {:>10} {:>10}  BACKUP / ERROR",
            "ID", "SCHEDULE", "STARTED", "RESULT", "READ", "UPLOADED"
        );
        for r in &rows {
            out.push_str(&format!(
                "\n{:>5} {:<20} {:<25} {:<10} {:>10} {:>10}  {}{}",
                r.id,
                r.schedule,
                r.started,
                r.result,
                r.bytes_read.map(human).unwrap_or_default(),
                r.bytes_uploaded.map(human).unwrap_or_default(),
                r.backup.as_deref().unwrap_or("-"),
                r.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        out
    });
    Ok(())
}

pub(super) async fn catalog(ctx: &Ctx<'_>, cmd: &CatalogCommand) -> Result<(), Error> {
    let CatalogCommand::Rebuild = cmd;
    let repo = ctx.open().await?;
    let backups = crate::app::record::list_backups(&repo).await?;
    let snapshots = repo.list_snapshots().await?;
    let catalog = ctx.catalog().await?;
    let (b, s, r) = blocking(&catalog, move |c| c.rebuild(&backups, &snapshots)).await?;
    ctx.emit(
        &serde_json::json!({"catalog": catalog.path(), "backups": b, "snapshots": s, "runs_recovered": r}),
        || format!("catalog {} rebuilt from {}: {b} backups, {s} snapshots, {r} runs recovered", catalog.path().display(), repo.location()),
    );
    Ok(())
}

pub(super) async fn forget(ctx: &Ctx<'_>, a: &ForgetArgs) -> Result<(), Error> {
    let flags = Retain {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
    };
    let retain = match (&a.policy, &a.config) {
        (Some(p), Some(cfg)) => {
            if !flags.keeps_everything() {
                return Err(Error::Usage("give --policy or --keep-* flags, not both".into()));
            }
            let config = load_config(cfg)?;
            let policy = config.policies.get(p).ok_or_else(|| {
                Error::Usage(format!(
                    "no SchedulePolicy `{p}` in {} (it has: {})",
                    cfg.display(),
                    config.policies.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            if policy.retain.keeps_everything() {
                return Err(Error::Usage(format!("policy `{p}` has no retain rules: it keeps everything")));
            }
            policy.retain
        }
        _ if flags.keeps_everything() => {
            return Err(Error::Usage(
                "forget needs rules: --policy NAME --config PATH, or --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly".into(),
            ))
        }
        _ => flags,
    };
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
            let gone: Vec<_> = decisions
                .iter()
                .filter(|d| d.kept_by.is_empty())
                .map(|d| d.id)
                .collect();
            let _ = blocking(&catalog, move |c| c.remove_backups(&gone)).await;
        }
    }
    ctx.emit(&serde_json::json!({"dry_run": a.dry_run, "decisions": decisions, "removed": report}), || {
        let mut out = String::new();
        for d in &decisions {
            out.push_str(&format!(
                "{:<7} {} {:<32} {}\n",
                if d.kept_by.is_empty() { "remove" } else { "keep" },
                rfc3339(d.time),
                d.name,
                d.kept_by.join(",")
            ));
        }
        let n = decisions.iter().filter(|d| d.kept_by.is_empty()).count();
        match &report {
            None => out.push_str(&format!("dry run: {n} backup(s) would be removed; nothing was changed")),
            Some(r) => out.push_str(&format!(
                "removed {} backup(s) and {} volume snapshot(s); `lifeboat prune` gives the space back",
                r.backups_removed, r.snapshots_removed
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
        })
        .await?;
    ctx.emit(&r, || {
        format!(
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
        )
    });
    Ok(())
}
