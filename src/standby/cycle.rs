//! The steps a standby cycle takes on either site: takes the repository, the catalog and the
//! options; gives the schedule's newest complete backup, which namespaces need it (the others
//! reported `activated` or `up-to-date`), the backup's restore plan with applications held,
//! and the one way a namespace's failure is recorded (its report and the catalog).
//!
//! Must not write to the site: the site modules do that.

use std::path::PathBuf;
use std::sync::Arc;

use super::journal::recover;
use super::{NamespaceReport, NamespaceState, StandbyError, StandbyOptions};
use crate::app::record::{self, Planned, RestorePlanOptions};
use crate::format::{AppBackup, BackupId};
use crate::repository::Repository;
use crate::scheduler::catalog::{blocking, Catalog, CatalogError};

/// The newest complete backup of a schedule.
pub fn newest_of(backups: &[(BackupId, AppBackup)], schedule: &str) -> Option<AppBackup> {
    backups
        .iter()
        .filter(|(_, b)| b.schedule.as_deref() == Some(schedule) && b.failures.is_empty())
        .max_by(|a, b| a.1.time.cmp(&b.1.time))
        .map(|(_, b)| b.clone())
}

/// A cycle's namespaces: a report for each, and the (source, site) pairs to apply.
pub(super) struct Triage {
    pub newest: AppBackup,
    pub reports: Vec<NamespaceReport>,
    pub todo: Vec<(String, String)>,
}

impl Triage {
    /// The report of site namespace `ns`.
    pub(super) fn report(&mut self, ns: &str) -> &mut NamespaceReport {
        self.reports
            .iter_mut()
            .find(|r| r.namespace == ns)
            .expect("a report per namespace")
    }
}

/// The first step of a cycle: the schedule's newest complete backup, what the bucket offers
/// recorded for each of its namespaces, and which namespaces need it applied; the others are
/// reported `activated` or `up-to-date`. With `volumes`, a commit a killed standby left in
/// `volumes/<ns>` is finished first, namespace by namespace.
pub(super) async fn triage(
    repo: &Arc<Repository>,
    catalog: &Arc<Catalog>,
    o: &StandbyOptions,
    volumes: Option<PathBuf>,
) -> Result<Triage, StandbyError> {
    let backups = record::list_backups(repo).await?;
    let Some(newest) = newest_of(&backups, &o.schedule) else {
        return Err(StandbyError::NoBackup(o.schedule.clone()));
    };
    // A mapped namespace the backup does not hold is a typo: its namespace would be applied
    // under its own name (on a DR site, perhaps the live one's).
    record::check_mapping(&newest, &o.namespaces)?;
    let rows = blocking(catalog, |c| c.standby_rows()).await?;
    let mut reports = Vec::new();
    let mut todo = Vec::new();
    for src in &newest.filters.namespaces {
        let ns = o.namespaces.get(src).to_string();
        let row = rows.iter().find(|r| r.namespace == ns);
        let mut r = NamespaceReport {
            namespace: ns.clone(),
            source_namespace: src.clone(),
            backup: Some(newest.name.clone()),
            ..Default::default()
        };
        if let Some(v) = &volumes {
            recover(&v.join(&ns)).await?;
        }
        let (ns2, sched, src2, name, time) = (
            ns.clone(),
            o.schedule.clone(),
            src.clone(),
            newest.name.clone(),
            newest.time,
        );
        blocking(catalog, move |c| {
            c.standby_checked(&ns2, &sched, &src2, Some((&name, time)), None)
        })
        .await?;
        if row.map(|r| r.activated).unwrap_or(false) {
            r.state = NamespaceState::Activated;
        } else if row.and_then(|r| r.applied_backup.as_deref()) == Some(newest.name.as_str()) {
            r.state = NamespaceState::UpToDate;
        } else {
            todo.push((src.clone(), ns.clone()));
        }
        reports.push(r);
    }
    Ok(Triage {
        newest,
        reports,
        todo,
    })
}

/// A namespace the cycle did not apply: its report says why, and so does the catalog (which
/// keeps the backup applied before).
pub(super) async fn record_failure(
    catalog: &Arc<Catalog>,
    schedule: &str,
    r: &mut NamespaceReport,
    e: &StandbyError,
) -> Result<(), StandbyError> {
    let error = e.to_string();
    r.state = NamespaceState::Failed;
    r.error = Some(error.clone());
    r.retryable = e.is_retryable();
    let (ns, sched, src) = (
        r.namespace.clone(),
        schedule.to_string(),
        r.source_namespace.clone(),
    );
    blocking(catalog, move |c| note_failure(c, &ns, &sched, &src, &error)).await?;
    Ok(())
}

/// The catalog's side of a failure: site namespace `ns` (from `src`) was checked, nothing
/// applied, and why; what it holds stays recorded.
pub(super) fn note_failure(
    c: &Catalog,
    ns: &str,
    schedule: &str,
    src: &str,
    error: &str,
) -> Result<(), CatalogError> {
    c.standby_checked(ns, schedule, src, None, Some(error))
}

/// A backup's restore plan as standby applies it: mapped, and with applications held.
pub(super) async fn held_plan(
    repo: &Arc<Repository>,
    backup: &AppBackup,
    o: &StandbyOptions,
) -> Result<Vec<Planned>, StandbyError> {
    let objects = record::load_objects(repo, backup).await?;
    Ok(record::plan_restore(
        objects,
        &RestorePlanOptions {
            namespaces: o.namespaces.clone(),
            start_applications: false,
            ..Default::default()
        },
    ))
}

/// The restored objects of a plan that belong with site namespace `ns`: its own, and the
/// cluster-scoped ones.
pub(super) fn for_namespace(plan: &[Planned], ns: &str) -> Vec<Planned> {
    plan.iter()
        .filter(|p| p.skipped.is_none() && p.target.namespace.as_deref().is_none_or(|n| n == ns))
        .cloned()
        .collect()
}
