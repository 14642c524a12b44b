//! Standbys, on the DR cluster: while `active` is false, a standby cycle each `interval`
//! keeps the schedule's namespaces at its newest backup, held at 0 replicas (the layers
//! below: [`crate::standby`]); when `active` turns true the namespaces are activated (their
//! workloads started) and the time until they are ready is the RTO in the status; when it
//! turns false again they are deactivated and followed again (failback). Each Standby keeps
//! its catalog in the state directory (a cache: the namespaces carry what activation needs).

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::location::{self, Unusable};
use super::{differs, key, now, patch_status, ready, rfc3339, unix_of, Operator, OperatorError};
use crate::crd::{NamespaceState, Standby, StandbyNamespaceStatus, StandbyStatus};
use crate::k8s::live::LiveCluster;
use crate::k8s::objects::Mapping;
use crate::scheduler::catalog::Catalog;
use crate::standby::{Site, StandbyOptions, StatusRow, WorkerOptions};

/// How long activation waits for the workloads to be ready.
const READY_WAIT: Duration = Duration::from_secs(600);

/// The Standby's catalog (opened once per process).
async fn catalog(op: &Operator, s: &Standby) -> Result<Arc<Catalog>, OperatorError> {
    let k = key(s);
    if let Some(c) = op.catalogs.lock().expect("catalogs").get(&k) {
        return Ok(c.clone());
    }
    let path = op.options.state_dir.join(format!(
        "standby-{}-{}.db",
        s.namespace().unwrap_or_default(),
        s.name_any()
    ));
    let c = Arc::new(crate::util::blocking(move || Catalog::open(&path)).await?);
    op.catalogs.lock().expect("catalogs").insert(k, c.clone());
    Ok(c)
}

/// The spec's options, or the field at fault.
fn options(s: &Standby) -> Result<(StandbyOptions, Duration), Unusable> {
    let text: Vec<String> = s
        .spec
        .namespace_mapping
        .iter()
        .map(|(a, b)| format!("{a}:{b}"))
        .collect();
    let namespaces = Mapping::parse("--namespace-mapping", &text.join(","))
        .map_err(|e| ("InvalidSpec", format!("spec.namespaceMapping: {e}")))?;
    let interval = match &s.spec.interval {
        None => Duration::from_secs(60),
        Some(t) => crate::hooks::parse_duration(t)
            .map_err(|e| ("InvalidSpec", format!("spec.interval: {e}")))?,
    };
    if interval < Duration::from_secs(1) {
        return Err(("InvalidSpec", "spec.interval: must be at least 1s".into()));
    }
    Ok((
        StandbyOptions {
            schedule: s.spec.schedule.clone(),
            namespaces,
            overwrite_claims: s.spec.overwrite_claims,
        },
        interval,
    ))
}

fn site(op: &Operator) -> Site {
    Site::Live(LiveCluster::from_client(op.client.clone(), "in-cluster"))
}

async fn reconcile(s: Arc<Standby>, op: Arc<Operator>) -> Result<Action, OperatorError> {
    let (name, ns) = (s.name_any(), s.namespace().unwrap_or_default());
    let api: Api<Standby> = Api::namespaced(op.client.clone(), &ns);
    let generation = s.metadata.generation;
    let mut status = s.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let (o, interval) = match options(&s) {
        Ok(x) => x,
        Err((reason, message)) => return refuse(&op, &api, &s, status, reason, message).await,
    };
    let opened = match location::open(&op, location::name_of(s.spec.location.as_deref())).await {
        Ok(x) => x,
        Err((reason, message)) => return refuse(&op, &api, &s, status, reason, message).await,
    };
    let catalog = catalog(&op, &s).await?;
    let mut requeue = Some(interval);
    if s.spec.active {
        if status.activated_at.is_none() {
            activate(&op, &s, &catalog, &mut status).await?;
        }
        requeue = None;
    } else {
        if status.activated_at.is_some() {
            deactivate(&op, &s, &catalog, &mut status).await?;
        }
        let w = WorkerOptions {
            standby: o,
            interval,
            once: true,
            metrics_addr: None,
            movers: opened.movers.clone(),
        };
        let (repo, cat, site) = (opened.repo.clone(), catalog.clone(), site(&op));
        let cancel = op.cancel.clone();
        let cycled = super::off_runtime("standby cycle", move || async move {
            let open = || {
                let r = repo.clone();
                async move { Ok(r) }
            };
            crate::standby::run(open, &site, &cat, &w, &cancel, |_| {}).await?;
            Ok(())
        })
        .await;
        status.last_cycle = Some(rfc3339(now()));
        match cycled {
            Ok(()) => ready(&mut status.conditions, Ok("Following"), generation),
            Err(e) => {
                ready(
                    &mut status.conditions,
                    Err(("CycleFailed", e.to_string())),
                    generation,
                );
                op.event(&*s, true, "CycleFailed", e.to_string()).await;
            }
        }
    }
    let rows = rows_of(&catalog, &s).await?;
    fill(&mut status, &rows);
    {
        let mut f = op.figures.lock().expect("figures");
        f.standby_active.insert(key(&*s), s.spec.active);
        if let Some(t) = rows
            .iter()
            .filter_map(|r| r.applied_backup_time.as_deref().and_then(unix_of))
            .min()
        {
            f.standby_applied.insert(key(&*s), t);
        }
    }
    let slack = interval.as_secs().max(30) as i64;
    if differs(s.status.as_ref(), &status, &["lagSeconds"], slack)
        || status.last_cycle != s.status.as_ref().and_then(|x| x.last_cycle.clone())
            && stale(s.status.as_ref(), slack)
    {
        patch_status(&api, &name, &status).await?;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn stale(s: Option<&StandbyStatus>, secs: i64) -> bool {
    s.and_then(|s| s.last_cycle.as_deref())
        .and_then(unix_of)
        .is_none_or(|t| now() - t >= secs)
}

/// A spec or location the standby cannot use: a condition, and a look again later.
async fn refuse(
    op: &Operator,
    api: &Api<Standby>,
    s: &Standby,
    mut status: StandbyStatus,
    reason: &str,
    message: String,
) -> Result<Action, OperatorError> {
    ready(
        &mut status.conditions,
        Err((reason, message.clone())),
        s.metadata.generation,
    );
    if differs(s.status.as_ref(), &status, &["lagSeconds"], i64::MAX) {
        op.event(s, true, reason, message).await;
        patch_status(api, &s.name_any(), &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// The catalog's rows of the namespaces this Standby's schedule put on the site.
async fn rows_of(catalog: &Arc<Catalog>, s: &Standby) -> Result<Vec<StatusRow>, OperatorError> {
    let mut rows = crate::standby::status(catalog).await?;
    rows.retain(|r| r.schedule == s.spec.schedule);
    Ok(rows)
}

/// The per-namespace rows (of [`rows_of`]) in the status.
fn fill(status: &mut StandbyStatus, rows: &[StatusRow]) {
    status.namespaces = rows
        .iter()
        .map(|r| StandbyNamespaceStatus {
            namespace: r.namespace.clone(),
            source_namespace: r.source_namespace.clone(),
            state: if r.activated {
                NamespaceState::Activated
            } else if r.error.is_some() {
                NamespaceState::Failed
            } else if r.applied_backup.is_some() && r.applied_backup == r.newest_backup {
                NamespaceState::UpToDate
            } else if r.applied_backup.is_some() {
                NamespaceState::Applied
            } else {
                NamespaceState::Pending
            },
            applied_backup: r.applied_backup.clone(),
            message: r.error.clone(),
        })
        .collect();
    // The site holds a backup when every namespace does; its lag is the oldest one's.
    let applied: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.applied_backup.as_deref())
        .collect();
    status.applied_backup = if !rows.is_empty()
        && applied.len() == rows.len()
        && applied.windows(2).all(|w| w[0] == w[1])
    {
        applied.first().map(|s| s.to_string())
    } else {
        None
    };
    status.newest_backup = rows.iter().find_map(|r| r.newest_backup.clone());
    status.lag_seconds = rows
        .iter()
        .filter_map(|r| r.lag_seconds)
        .fold(None, |a: Option<f64>, l| Some(a.map_or(l, |a| a.max(l))))
        .map(|l| l as i64);
}

/// Failover: every namespace of the standby started; the RTO is the time until their
/// workloads are ready.
async fn activate(
    op: &Operator,
    s: &Standby,
    catalog: &Arc<Catalog>,
    status: &mut StandbyStatus,
) -> Result<(), OperatorError> {
    let namespaces: Vec<String> = rows_of(catalog, s)
        .await?
        .into_iter()
        .map(|r| r.namespace)
        .collect();
    if namespaces.is_empty() {
        ready(&mut status.conditions, Err(("NothingApplied", "spec.active: no namespace was applied by this standby yet; there is nothing to fail over to".into())), s.metadata.generation);
        return Ok(());
    }
    let start = std::time::Instant::now();
    let site = site(op);
    for ns in &namespaces {
        crate::standby::set_running(catalog, &site, ns, true).await?;
    }
    let live = LiveCluster::from_client(op.client.clone(), "in-cluster");
    // One wait (a watch) per namespace, all within READY_WAIT of the start.
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    let mut ready_all = true;
    for ns in &namespaces {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match live.wait_workloads_ready(ns, left).await {
            Ok(true) => {}
            Ok(false) => ready_all = false,
            Err(e) => {
                tracing::warn!(namespace = %ns, "cannot follow the workloads' readiness: {e}");
                ready_all = false;
            }
        }
        if !ready_all {
            break;
        }
    }
    let rto = start.elapsed().as_secs_f64();
    status.activated_at = Some(rfc3339(now()));
    status.rto_seconds = Some((rto * 10.0).round() / 10.0);
    if ready_all {
        ready(&mut status.conditions, Ok("Active"), s.metadata.generation);
        op.event(
            s,
            false,
            "Activated",
            format!(
                "namespaces {} started; ready after {rto:.1} s",
                namespaces.join(", ")
            ),
        )
        .await;
    } else {
        let m = format!(
            "namespaces {} started, but their workloads were not ready within {} s",
            namespaces.join(", "),
            READY_WAIT.as_secs()
        );
        ready(
            &mut status.conditions,
            Err(("NotReady", m.clone())),
            s.metadata.generation,
        );
        op.event(s, true, "NotReady", m).await;
    }
    Ok(())
}

/// The reverse: the namespaces held again, and followed from the next cycle.
async fn deactivate(
    op: &Operator,
    s: &Standby,
    catalog: &Arc<Catalog>,
    status: &mut StandbyStatus,
) -> Result<(), OperatorError> {
    let site = site(op);
    let mut done = Vec::new();
    for r in rows_of(catalog, s).await? {
        crate::standby::set_running(catalog, &site, &r.namespace, false).await?;
        done.push(r.namespace.clone());
    }
    status.activated_at = None;
    status.rto_seconds = None;
    op.event(
        s,
        false,
        "Deactivated",
        format!(
            "namespaces {} held at 0 replicas and followed again",
            done.join(", ")
        ),
    )
    .await;
    Ok(())
}

pub async fn controller(op: Arc<Operator>, stop: CancellationToken) {
    let api: Api<Standby> = Api::all(op.client.clone());
    let c = Controller::new(api, watcher::Config::default());
    super::drive(c, reconcile, op, stop).await;
}
