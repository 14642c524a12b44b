//! Backup objects: a new one is made (the application backup of its scope, with the Rule
//! objects it names, into its BackupLocation) and its status follows it from `InProgress` to
//! `Completed`, `PartiallyFailed` or `Failed`; one shown from a repository is left as it is.
//! A finalizer forgets the record when the object is deleted with `deletePolicy: Delete`,
//! and only then; the default keeps it in the repository.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::location::{self, Unusable};
use super::{key, now, patch_status, ready, rfc3339, Operator, OperatorError};
use crate::app::record::BackupSummary;
use crate::app::request::{BackupFlags, BackupRequest, BackupSource};
use crate::crd::{Backup, BackupPhase, BackupStatus, DeletePolicy, ItemFailure};

/// The finalizer of Backup objects.
pub const FINALIZER: &str = "lifeboat.dev/backup";

async fn reconcile(b: Arc<Backup>, op: Arc<Operator>) -> Result<Action, OperatorError> {
    let ns = b.namespace().unwrap_or_default();
    let api: Api<Backup> = Api::namespaced(op.client.clone(), &ns);
    finalizer(&api, FINALIZER, b, |ev| async {
        match ev {
            Finalizer::Apply(b) => apply(&op, &api, b).await,
            Finalizer::Cleanup(b) => cleanup(&op, b).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => OperatorError::Kube(e),
        e => OperatorError::Failed(e.to_string()),
    })
}

async fn apply(op: &Operator, api: &Api<Backup>, b: Arc<Backup>) -> Result<Action, OperatorError> {
    let name = b.name_any();
    let phase = b.status.as_ref().and_then(|s| s.phase);
    if phase.is_some_and(BackupPhase::is_final) {
        return Ok(Action::await_change());
    }
    if phase == Some(BackupPhase::InProgress) {
        let in_progress =
            |b: &Backup| b.status.as_ref().and_then(|s| s.phase) == Some(BackupPhase::InProgress);
        if !op.abandoned(api, &key(&*b), &name, in_progress).await? {
            return Ok(Action::await_change());
        }
        let mut s = b.status.clone().unwrap_or_default();
        fail(&mut s, "Interrupted", "the controller stopped while this backup ran (a restart, or another replica took over): it was not recorded; create a new Backup".into());
        patch_status(api, &name, &s).await?;
        op.event(
            &*b,
            true,
            "Interrupted",
            "the backup was interrupted".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let mut status = BackupStatus {
        phase: Some(BackupPhase::InProgress),
        start_time: Some(rfc3339(now())),
        observed_generation: b.metadata.generation,
        ..Default::default()
    };
    let prepared = prepare(op, &b).await;
    let (req, opened) = match prepared {
        Ok(p) => p,
        Err((reason, message)) => {
            fail(&mut status, reason, message.clone());
            patch_status(api, &name, &status).await?;
            op.event(&*b, true, reason, message).await;
            return Ok(Action::await_change());
        }
    };
    ready(
        &mut status.conditions,
        Err(("InProgress", "backing up".into())),
        b.metadata.generation,
    );
    patch_status(api, &name, &status).await?;
    op.event(
        &*b,
        false,
        "Started",
        format!("backing up namespaces {}", req.scope.namespaces.join(", ")),
    )
    .await;
    let k = key(&*b);
    op.running.lock().expect("running").push(k.clone());
    let result = run(op, req, opened).await;
    op.running.lock().expect("running").retain(|x| *x != k);
    match result {
        Ok(summary) => {
            let partial = !summary.failures.is_empty();
            finished(&mut status, &summary, b.metadata.generation);
            patch_status(api, &name, &status).await?;
            let note = format!(
                "{} object(s), {} volume(s), {} bytes read, {} bytes uploaded in {:.1} s",
                summary.objects,
                summary.volumes.len(),
                summary.bytes_read,
                summary.bytes_uploaded,
                summary.duration_seconds
            );
            op.event(
                &*b,
                partial,
                if partial {
                    "PartiallyFailed"
                } else {
                    "Completed"
                },
                note,
            )
            .await;
        }
        Err(e) => {
            fail(&mut status, "BackupFailed", e.to_string());
            patch_status(api, &name, &status).await?;
            op.event(&*b, true, "Failed", e.to_string()).await;
        }
    }
    Ok(Action::await_change())
}

fn fail(s: &mut BackupStatus, reason: &str, message: String) {
    s.phase = Some(BackupPhase::Failed);
    s.completion_time = Some(rfc3339(now()));
    ready(
        &mut s.conditions,
        Err((reason, message)),
        s.observed_generation,
    );
}

fn finished(s: &mut BackupStatus, summary: &BackupSummary, generation: Option<i64>) {
    s.phase = Some(if summary.failures.is_empty() {
        BackupPhase::Completed
    } else {
        BackupPhase::PartiallyFailed
    });
    s.completion_time = Some(rfc3339(now()));
    s.record_id = Some(summary.id.to_string());
    s.backup_time = Some(rfc3339(summary.record.time.unix_timestamp()));
    s.objects = Some(summary.objects as u64);
    s.volumes = Some(summary.volumes.len() as u64);
    s.bytes_read = Some(summary.bytes_read);
    s.bytes_uploaded = Some(summary.bytes_uploaded);
    s.duration_seconds = Some(summary.duration_seconds);
    s.failures = summary
        .failures
        .iter()
        .map(|f| ItemFailure {
            object: f.what.clone(),
            reason: f.reason.clone(),
        })
        .collect();
    s.warnings = summary.warnings.clone();
    if summary.failures.is_empty() {
        ready(&mut s.conditions, Ok("Completed"), generation);
    } else {
        let n = summary.failures.len();
        ready(
            &mut s.conditions,
            Err((
                "PartiallyFailed",
                format!("{n} part(s) of the scope were not captured (status.failures)"),
            )),
            generation,
        );
    }
}

/// The request a Backup's spec makes, and its location opened; or why it cannot run.
async fn prepare(op: &Operator, b: &Backup) -> Result<(BackupRequest, location::Opened), Unusable> {
    let ns = b.namespace().unwrap_or_default();
    let s = &b.spec;
    let opened = location::open(op, location::name_of(s.location.as_deref())).await?;
    if opened.read_only {
        return Err((
            "LocationReadOnly",
            format!(
                "spec.location: BackupLocation `{}` is readOnly; back up into a writable one",
                location::name_of(s.location.as_deref())
            ),
        ));
    }
    let flags = BackupFlags {
        name: b.name_any(),
        namespaces: s.namespaces.clone(),
        include_namespaces: s.include_namespaces.join(","),
        exclude_namespaces: s.exclude_namespaces.join(","),
        selector: s.selector.clone(),
        include_objects: String::new(),
        include_resources: s.included_resources.join(","),
        exclude_resources: s.excluded_resources.join(","),
        pre_rules: vec![],
        post_rules: vec![],
        include_volumes: s.include_volumes,
        schedule: s.schedule.clone(),
    };
    let source = BackupSource::Live {
        context: None,
        movers: opened.movers.clone(),
    };
    let mut req =
        BackupRequest::new(flags, source).map_err(|e| ("InvalidSpec", format!("spec: {e}")))?;
    if !s.include_resources && !s.include_volumes {
        return Err((
            "InvalidSpec",
            "spec: includeResources and includeVolumes are both false: nothing to back up".into(),
        ));
    }
    req.consistency.include_resources = s.include_resources;
    req.consistency.pre = super::policy::rules(op, &ns, &s.pre_rules, "spec.preRules").await?;
    req.consistency.post = super::policy::rules(op, &ns, &s.post_rules, "spec.postRules").await?;
    Ok((req, opened))
}

/// The backup itself, off the runtime ([`super::off_runtime`]): the namespaces resolved, then
/// objects and volumes into the repository under a shared lock.
async fn run(
    op: &Operator,
    req: BackupRequest,
    opened: location::Opened,
) -> Result<BackupSummary, OperatorError> {
    let client = op.client.clone();
    let cancel = op.cancel.clone();
    super::off_runtime("backup", move || async move {
        let live = crate::k8s::live::LiveCluster::from_client(client, "in-cluster");
        let scope = live.resolve_namespaces(&req.scope).await?;
        let mut filters = req.filters.clone();
        filters.namespaces = scope.namespaces.clone();
        let lock = opened
            .repo
            .lock(
                crate::repository::LockKind::Shared,
                &format!("backup {}", req.name),
            )
            .await?;
        let r = crate::app::volumes::backup_live(
            opened.repo.clone(),
            &req.name,
            &live,
            &scope,
            filters,
            &req.consistency,
            opened.movers.clone(),
            &cancel,
        )
        .await;
        let _ = lock.release().await;
        Ok(r?)
    })
    .await
}

/// A deleted Backup: its record is forgotten when `deletePolicy: Delete` says so.
async fn cleanup(op: &Operator, b: Arc<Backup>) -> Result<Action, OperatorError> {
    let record = b.status.as_ref().and_then(|s| s.record_id.clone());
    if b.spec.delete_policy != DeletePolicy::Delete {
        return Ok(Action::await_change());
    }
    let Some(record) = record else {
        return Ok(Action::await_change());
    };
    let loc = location::name_of(b.spec.location.as_deref()).to_string();
    let opened = match location::open(op, &loc).await {
        Ok(o) if !o.read_only => o,
        Ok(_) => {
            op.event(
                &*b,
                true,
                "RecordKept",
                format!("BackupLocation `{loc}` is readOnly: the record stays in the repository"),
            )
            .await;
            return Ok(Action::await_change());
        }
        Err((_, message)) => {
            return Err(OperatorError::Failed(format!(
                "cannot forget the record: {message}"
            )))
        }
    };
    let backups = crate::app::record::list_backups(&opened.repo).await?;
    let Some((id, _)) = backups.iter().find(|(id, _)| id.to_string() == record) else {
        return Ok(Action::await_change());
    };
    let decisions = crate::app::retention::only(&backups, id);
    let report = crate::app::retention::forget(&opened.repo, &backups, &decisions).await?;
    tracing::info!(backup = %b.name_any(), "forgot the record ({} snapshot(s) removed; prune gives the space back)", report.snapshots_removed);
    Ok(Action::await_change())
}

pub async fn controller(op: Arc<Operator>, stop: CancellationToken) {
    let api: Api<Backup> = Api::all(op.client.clone());
    let c = Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(4));
    super::drive(c, reconcile, op, stop).await;
}
