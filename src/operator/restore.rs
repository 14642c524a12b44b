//! Restore objects: a new one restores its backup (from its BackupLocation) into this
//! cluster, as `lifeboat restore create --context` does: sanitised, mapped, volumes before
//! the workloads that mount them, in dependency order; or, with `dryRun`, plans it and
//! counts the objects that exist already. The status counts what was created, updated,
//! skipped and failed, and lists each failure.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::location::{self, Unusable};
use super::{key, now, patch_status, ready, rfc3339, Operator, OperatorError};
use crate::app::restore::{
    Connected, Destination, RestoreFlags, RestoreMode, RestoreReport, RestoreRequest,
};
use crate::crd::{ExistingResourcePolicy, ItemFailure, Restore, RestorePhase, RestoreStatus};
use crate::k8s::source::{ExistingPolicy, Outcome};

/// This Restore in [`Operator`]'s list of work running here.
fn running_key(r: &Restore) -> String {
    format!("restore {}", key(r))
}

fn pairs(m: &std::collections::BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(a, b)| format!("{a}:{b}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The request a Restore's spec makes, and its location opened; or the field at fault.
async fn prepare(
    op: &Operator,
    r: &Restore,
) -> Result<(RestoreRequest, location::Opened), Unusable> {
    let s = &r.spec;
    let opened = location::open(op, location::name_of(s.location.as_deref())).await?;
    let flags = RestoreFlags {
        from_backup: s.backup_name.clone(),
        namespace_mapping: pairs(&s.namespace_mapping),
        storage_class_mapping: pairs(&s.storage_class_mapping),
        include_resources: s.included_resources.join(","),
        exclude_resources: s.excluded_resources.join(","),
        selector: s.selector.clone(),
        start_applications: s.start_applications,
        existing_resource_policy: match s.existing_resource_policy {
            ExistingResourcePolicy::None => ExistingPolicy::Skip,
            ExistingResourcePolicy::Update => ExistingPolicy::Update,
        },
        // The destination is set below; a dry run needs none to parse.
        dry_run: true,
        ..Default::default()
    };
    let mut req = RestoreRequest::new(flags, opened.movers.clone())
        .map_err(|e| ("InvalidSpec", format!("spec: {e}")))?;
    let to = Destination::Connected {
        client: Connected(op.client.clone()),
        movers: opened.movers.clone(),
    };
    req.mode = if s.dry_run {
        RestoreMode::DryRun(Some(to))
    } else {
        RestoreMode::Apply(to)
    };
    Ok((req, opened))
}

/// The restore itself, off the runtime ([`super::off_runtime`]), under a shared lock of the
/// repository.
async fn run(
    req: RestoreRequest,
    opened: location::Opened,
) -> Result<RestoreReport, OperatorError> {
    super::off_runtime("restore", move || async move {
        let lock = opened
            .repo
            .lock_to_read(&format!("restore {}", req.backup))
            .await?;
        let r = crate::app::restore::restore(opened.repo.clone(), &req).await;
        if let Some(lock) = lock {
            let _ = lock.release().await;
        }
        Ok(r?)
    })
    .await
}

fn fill(s: &mut RestoreStatus, report: &RestoreReport, generation: Option<i64>) {
    let restored = report.plan().iter().filter(|p| p.skipped.is_none()).count();
    s.planned = Some(restored as u64);
    s.completion_time = Some(rfc3339(now()));
    match report {
        RestoreReport::Planned { conflicts, .. } => {
            s.phase = Some(RestorePhase::Completed);
            s.skipped = Some(conflicts.len() as u64);
            ready(&mut s.conditions, Ok("Planned"), generation);
        }
        RestoreReport::Applied { results, .. } => {
            let n = |o| report.count(o) as u64;
            s.created = Some(n(Outcome::Created));
            s.updated = Some(n(Outcome::Updated));
            s.skipped = Some(n(Outcome::Skipped));
            s.failed = Some(n(Outcome::Failed));
            s.failures = results
                .iter()
                .filter(|r| r.outcome == Outcome::Failed)
                .map(|r| ItemFailure {
                    object: r.r.display(),
                    reason: r.detail.clone(),
                })
                .collect();
            if s.failures.is_empty() {
                s.phase = Some(RestorePhase::Completed);
                ready(&mut s.conditions, Ok("Completed"), generation);
            } else {
                s.phase = Some(RestorePhase::PartiallyFailed);
                let m = format!(
                    "{} object(s) failed to restore (status.failures)",
                    s.failures.len()
                );
                ready(&mut s.conditions, Err(("PartiallyFailed", m)), generation);
            }
        }
    }
}

async fn reconcile(r: Arc<Restore>, op: Arc<Operator>) -> Result<Action, OperatorError> {
    let (name, ns) = (r.name_any(), r.namespace().unwrap_or_default());
    let api: Api<Restore> = Api::namespaced(op.client.clone(), &ns);
    let generation = r.metadata.generation;
    match r.status.as_ref().and_then(|s| s.phase) {
        Some(RestorePhase::Completed | RestorePhase::PartiallyFailed | RestorePhase::Failed) => {
            return Ok(Action::await_change())
        }
        Some(RestorePhase::InProgress)
            if op
                .abandoned(&api, &running_key(&r), &name, |r: &Restore| {
                    r.status.as_ref().and_then(|s| s.phase) == Some(RestorePhase::InProgress)
                })
                .await? =>
        {
            let mut s = r.status.clone().unwrap_or_default();
            s.phase = Some(RestorePhase::Failed);
            ready(&mut s.conditions, Err(("Interrupted", "the controller stopped while this restore ran: create a new Restore (objects restored so far stay)".into())), generation);
            patch_status(&api, &name, &s).await?;
            return Ok(Action::await_change());
        }
        Some(RestorePhase::InProgress) => return Ok(Action::await_change()),
        _ => {}
    }
    let mut status = RestoreStatus {
        phase: Some(RestorePhase::InProgress),
        start_time: Some(rfc3339(now())),
        observed_generation: generation,
        ..Default::default()
    };
    let (req, opened) = match prepare(&op, &r).await {
        Ok(x) => x,
        Err((reason, message)) => {
            status.phase = Some(RestorePhase::Failed);
            ready(
                &mut status.conditions,
                Err((reason, message.clone())),
                generation,
            );
            patch_status(&api, &name, &status).await?;
            op.event(&*r, true, reason, message).await;
            return Ok(Action::await_change());
        }
    };
    ready(
        &mut status.conditions,
        Err(("InProgress", "restoring".into())),
        generation,
    );
    patch_status(&api, &name, &status).await?;
    let k = running_key(&r);
    op.running.lock().expect("running").push(k.clone());
    let result = run(req, opened).await;
    op.running.lock().expect("running").retain(|x| *x != k);
    match result {
        Ok(report) => {
            fill(&mut status, &report, generation);
            patch_status(&api, &name, &status).await?;
            let failed = status.failed.unwrap_or(0);
            op.event(
                &*r,
                failed > 0,
                if failed > 0 {
                    "PartiallyFailed"
                } else {
                    "Completed"
                },
                format!(
                    "{} planned, {} created, {} updated, {} skipped, {failed} failed",
                    status.planned.unwrap_or(0),
                    status.created.unwrap_or(0),
                    status.updated.unwrap_or(0),
                    status.skipped.unwrap_or(0)
                ),
            )
            .await;
        }
        Err(e) => {
            status.phase = Some(RestorePhase::Failed);
            status.completion_time = Some(rfc3339(now()));
            ready(
                &mut status.conditions,
                Err(("RestoreFailed", e.to_string())),
                generation,
            );
            patch_status(&api, &name, &status).await?;
            op.event(&*r, true, "Failed", e.to_string()).await;
        }
    }
    Ok(Action::await_change())
}

pub async fn controller(op: Arc<Operator>, stop: CancellationToken) {
    let api: Api<Restore> = Api::all(op.client.clone());
    let c = Controller::new(api, watcher::Config::default());
    super::drive(c, reconcile, op, stop).await;
}
