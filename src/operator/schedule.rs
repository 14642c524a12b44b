//! BackupSchedules: on each fire time of the schedule's policy a Backup object is created
//! (named `SCHEDULE-YYYYMMDD-HHMMSS`, labelled `lifeboat.dev/schedule`), never while the
//! previous one still runs; after a new good backup the policy's retention forgets the
//! schedule's backups it no longer keeps (their Backup objects go with them). The status
//! shows the last run, the newest good backup, the next run and the RPO.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::location::{self, Unusable};
use super::{
    differs, key, now, patch_status, ready, rfc3339, unix_of, Operator, OperatorError, ScheduleRun,
    LABEL_SCHEDULE,
};
use crate::crd::{Backup, BackupPhase, BackupSchedule, BackupSpec};
use crate::scheduler::config::{backup_name, schedule_of_spec, Policy, Schedule};
use crate::scheduler::cron::{next_fires, previous_fire, Trigger};

/// How often a schedule's status (its RPO) is refreshed at the least.
const REFRESH: Duration = Duration::from_secs(30);

fn time_of(t: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The fire a schedule is due for at `now`, if any: the newest one missed since `anchor`
/// (runs that were missed are not made up one by one).
fn due(
    trigger: &Trigger,
    anchor: i64,
    last_run: Option<i64>,
    now: i64,
) -> (Option<i64>, Option<i64>) {
    let next = next_fires(trigger, time_of(anchor), last_run.map(time_of), 1)
        .first()
        .map(|t| t.unix_timestamp());
    let Some(next) = next else {
        return (None, None);
    };
    if next > now {
        return (None, Some(next));
    }
    let fire = match trigger {
        Trigger::Cron { .. } => previous_fire(trigger, time_of(now))
            .map(|t| t.unix_timestamp())
            .unwrap_or(next)
            .max(next),
        Trigger::Interval(d) => {
            if now - next > d.as_secs() as i64 {
                now
            } else {
                next
            }
        }
    };
    let after = next_fires(trigger, time_of(fire), Some(time_of(fire)), 1)
        .first()
        .map(|t| t.unix_timestamp());
    (Some(fire), after)
}

/// The policy, the schedule and its location checked; or why the schedule cannot run.
async fn check(op: &Operator, s: &BackupSchedule) -> Result<(Policy, Schedule), Unusable> {
    let name = s.name_any();
    let ns = s.namespace().unwrap_or_default();
    let policy = super::policy::policy(op, &s.spec.schedule_policy_name).await?;
    let policies = BTreeMap::from([(policy.name.clone(), policy.clone())]);
    let sched = schedule_of_spec("the cluster", &name, &s.spec, &policies)
        .map_err(|e| ("InvalidSpec", super::policy::message(&e)))?;
    let loc = location::name_of(s.spec.location.as_deref());
    if location::open(op, loc).await?.read_only {
        return Err((
            "LocationReadOnly",
            format!("spec.location: BackupLocation `{loc}` is readOnly"),
        ));
    }
    let t = &s.spec.template;
    super::policy::rules(op, &ns, &t.pre_rules, "spec.template.preRules").await?;
    super::policy::rules(op, &ns, &t.post_rules, "spec.template.postRules").await?;
    Ok((policy, sched))
}

fn phase(b: &Backup) -> Option<BackupPhase> {
    b.status.as_ref().and_then(|s| s.phase)
}

async fn reconcile(s: Arc<BackupSchedule>, op: Arc<Operator>) -> Result<Action, OperatorError> {
    let (name, ns) = (s.name_any(), s.namespace().unwrap_or_default());
    let generation = s.metadata.generation;
    let api: Api<BackupSchedule> = Api::namespaced(op.client.clone(), &ns);
    let backups: Api<Backup> = Api::namespaced(op.client.clone(), &ns);
    let mut status = s.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let mine = backups
        .list(&ListParams::default().labels(&format!("{LABEL_SCHEDULE}={name}")))
        .await?
        .items;
    count_runs(&op, &key(&*s), &mine);
    let good = mine
        .iter()
        .filter(|b| phase(b) == Some(BackupPhase::Completed))
        .filter_map(|b| {
            let t = b
                .status
                .as_ref()?
                .backup_time
                .as_deref()
                .and_then(unix_of)?;
            Some((t, b.name_any()))
        })
        .max();
    if let Some((t, n)) = &good {
        status.last_successful_backup = Some(n.clone());
        status.last_success_time = Some(rfc3339(*t));
        status.rpo_seconds = Some(now() - t);
        op.figures
            .lock()
            .expect("figures")
            .last_success
            .insert(key(&*s), *t);
    }
    let checked = check(&op, &s).await;
    let mut requeue = REFRESH;
    match checked {
        Err((reason, message)) => {
            status.next_run = None;
            ready(
                &mut status.conditions,
                Err((reason, message.clone())),
                generation,
            );
            if differs(
                s.status.as_ref(),
                &status,
                &["rpoSeconds"],
                REFRESH.as_secs() as i64,
            ) {
                op.event(&*s, true, reason, message).await;
            }
        }
        Ok((_, sched)) if sched.suspend => {
            status.next_run = None;
            ready(&mut status.conditions, Ok("Suspended"), generation);
        }
        Ok((policy, sched)) => {
            let anchor = status
                .last_run
                .as_deref()
                .and_then(unix_of)
                .or_else(|| {
                    s.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.as_second())
                })
                .unwrap_or_else(now);
            let last_run = status.last_run.as_deref().and_then(unix_of);
            let busy = mine
                .iter()
                .any(|b| !phase(b).is_some_and(BackupPhase::is_final));
            let (fire, next) = due(&policy.trigger, anchor, last_run, now());
            match fire {
                Some(fire) if !busy => {
                    let b = start(&backups, &s, &sched, fire).await?;
                    op.figures
                        .lock()
                        .expect("figures")
                        .runs
                        .entry((key(&*s), ScheduleRun::Started))
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                    op.event(
                        &*s,
                        false,
                        "BackupCreated",
                        format!("Backup {b} for the run of {}", rfc3339(fire)),
                    )
                    .await;
                    status.last_run = Some(rfc3339(fire));
                    status.last_backup = Some(b);
                }
                Some(_) => {
                    // The previous run still goes: this fire waits for it (runs never overlap).
                }
                None => {}
            }
            status.next_run = next.map(rfc3339);
            if let Some(n) = next {
                requeue = requeue.min(Duration::from_secs((n - now()).max(1) as u64));
            }
            ready(&mut status.conditions, Ok("Scheduled"), generation);
            if let Some((_, newest)) = &good {
                retain(&op, &s, &policy, newest, &mine).await;
            }
        }
    }
    if differs(
        s.status.as_ref(),
        &status,
        &["rpoSeconds"],
        REFRESH.as_secs() as i64,
    ) {
        patch_status(&api, &name, &status).await?;
    }
    Ok(Action::requeue(requeue))
}

/// Counts each of the schedule's Backups that reached a final phase once in /metrics.
fn count_runs(op: &Operator, schedule: &str, mine: &[Backup]) {
    let mut f = op.figures.lock().expect("figures");
    for b in mine {
        let Some(p) = phase(b).filter(|p| p.is_final()) else {
            continue;
        };
        let k = format!("{schedule}/{}", b.name_any());
        if f.counted.insert(k) {
            let result = match p {
                BackupPhase::Completed => ScheduleRun::Completed,
                BackupPhase::PartiallyFailed => ScheduleRun::PartiallyFailed,
                _ => ScheduleRun::Failed,
            };
            *f.runs.entry((schedule.to_string(), result)).or_insert(0) += 1;
        }
    }
}

/// Creates the Backup of the run at `fire`; its name.
async fn start(
    api: &Api<Backup>,
    s: &BackupSchedule,
    sched: &Schedule,
    fire: i64,
) -> Result<String, OperatorError> {
    let name = backup_name(&sched.name, time_of(fire));
    let t = &s.spec.template;
    let obj = Backup {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                LABEL_SCHEDULE.to_string(),
                sched.name.clone(),
            )])),
            ..Default::default()
        },
        spec: BackupSpec {
            namespaces: t.namespaces.clone(),
            include_namespaces: vec![],
            exclude_namespaces: vec![],
            selector: t.selector.clone(),
            included_resources: vec![],
            excluded_resources: vec![],
            pre_rules: t.pre_rules.clone(),
            post_rules: t.post_rules.clone(),
            include_resources: t.include_resources,
            include_volumes: t.include_volumes,
            location: s.spec.location.clone(),
            schedule: Some(sched.name.clone()),
            delete_policy: Default::default(),
        },
        status: None,
    };
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(name),
        // Made already (by this replica before a restart): the run is that one.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(name),
        Err(e) => Err(e.into()),
    }
}

/// The policy's retention after the schedule's newest good backup `newest` (once per new
/// one): forgotten records' Backup objects are deleted too. A failure is an Event; the next
/// good backup tries again.
async fn retain(op: &Operator, s: &BackupSchedule, policy: &Policy, newest: &str, mine: &[Backup]) {
    let k = key(s);
    if policy.retain.keeps_everything()
        || op
            .figures
            .lock()
            .expect("figures")
            .retained
            .get(&k)
            .map(String::as_str)
            == Some(newest)
    {
        return;
    }
    let result: Result<Vec<String>, OperatorError> = async {
        let loc = location::open(op, location::name_of(s.spec.location.as_deref()))
            .await
            .map_err(|(_, m)| OperatorError::Failed(m))?;
        let backups = crate::app::record::list_backups(&loc.repo).await?;
        let retain = policy.retain;
        let decisions = crate::app::retention::plan(&backups, &|_| retain, Some(&s.name_any()));
        let gone: Vec<String> = decisions
            .iter()
            .filter(|d| d.removed())
            .map(|d| d.name.clone())
            .collect();
        if !gone.is_empty() {
            crate::app::retention::forget(&loc.repo, &backups, &decisions).await?;
        }
        Ok(gone)
    }
    .await;
    match result {
        Ok(gone) => {
            op.figures
                .lock()
                .expect("figures")
                .retained
                .insert(k, newest.to_string());
            if gone.is_empty() {
                return;
            }
            let api: Api<Backup> =
                Api::namespaced(op.client.clone(), &s.namespace().unwrap_or_default());
            for b in mine.iter().filter(|b| gone.contains(&b.name_any())) {
                if let Err(e) = api.delete(&b.name_any(), &DeleteParams::default()).await {
                    tracing::warn!("retention: could not delete Backup {}: {e}", b.name_any());
                }
            }
            op.event(
                s,
                false,
                "Retention",
                format!(
                    "forgot {} backup(s) the policy no longer keeps: {}",
                    gone.len(),
                    gone.join(", ")
                ),
            )
            .await;
        }
        Err(e) => op.event(s, true, "RetentionFailed", e.to_string()).await,
    }
}

pub async fn controller(op: Arc<Operator>, stop: CancellationToken) {
    let api: Api<BackupSchedule> = Api::all(op.client.clone());
    let backups: Api<Backup> = Api::all(op.client.clone());
    let c = Controller::new(api, watcher::Config::default()).watches(
        backups,
        watcher::Config::default().labels(LABEL_SCHEDULE),
        |b: Backup| {
            let s = b.labels().get(LABEL_SCHEDULE)?.clone();
            Some(ObjectRef::new(&s).within(&b.namespace()?))
        },
    );
    super::drive(c, reconcile, op, stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_due_once_for_the_newest_missed_fire_and_then_for_the_next() {
        let every = Trigger::Interval(Duration::from_secs(10));
        // Created at 100, no run yet: due at 110.
        assert_eq!(due(&every, 100, None, 105), (None, Some(110)));
        assert_eq!(due(&every, 100, None, 111), (Some(110), Some(120)));
        // Down for a long time: one run now, not one per missed period.
        assert_eq!(due(&every, 110, Some(110), 1000), (Some(1000), Some(1010)));
    }
}
