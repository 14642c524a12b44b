//! Forget: takes the backup records and retention rules; gives the records to remove
//! ([`plan`], pure: per schedule, by [`crate::scheduler::config::retain`]) and removes them with the
//! volume snapshots that only they referenced ([`forget`], under an exclusive lock). The
//! space is given back by `prune`. Must not remove the newest complete backup of a schedule,
//! and removes a record before its snapshots, so a crash never leaves a record whose data is
//! gone.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::format::{AppBackup, BackupId, SnapshotId};
use crate::repository::{LockKind, RepoError, Repository};
use crate::scheduler::config::{retain, Candidate, Retain};

/// One backup's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: BackupId,
    pub name: String,
    pub schedule: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    /// Why it is kept; empty: it is removed.
    pub kept_by: Vec<&'static str>,
}

/// Decides, per schedule (backups made by hand form their own group), which backups the rules
/// keep. `only`: decide for that schedule's backups alone (others are not listed).
pub fn plan(
    backups: &[(BackupId, AppBackup)],
    rules: &dyn Fn(Option<&str>) -> Retain,
    only: Option<&str>,
) -> Vec<Decision> {
    let mut groups: BTreeMap<Option<&str>, Vec<&(BackupId, AppBackup)>> = BTreeMap::new();
    for b in backups {
        let s = b.1.schedule.as_deref();
        if only.is_none() || only == s {
            groups.entry(s).or_default().push(b);
        }
    }
    let mut out = Vec::new();
    for (schedule, members) in groups {
        let cands: Vec<Candidate> = members
            .iter()
            .map(|(_, b)| Candidate {
                time: b.time,
                good: b.failures.is_empty(),
            })
            .collect();
        let kept = retain(&cands, &rules(schedule));
        for ((id, b), why) in members.into_iter().zip(kept) {
            out.push(Decision {
                id: *id,
                name: b.name.clone(),
                schedule: b.schedule.clone(),
                time: b.time,
                kept_by: why.into_iter().collect(),
            });
        }
    }
    out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
    out
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    pub backups_removed: usize,
    pub snapshots_removed: usize,
}

/// Removes the records `plan` decided to remove, then the volume snapshots no remaining record
/// references. Standalone volume snapshots (`volume backup`) are never touched.
pub async fn forget(
    repo: &Repository,
    backups: &[(BackupId, AppBackup)],
    decisions: &[Decision],
) -> Result<ForgetReport, RepoError> {
    let lock = repo.lock(LockKind::Exclusive, "forget").await?;
    let result = async {
        let remove: HashSet<BackupId> = decisions
            .iter()
            .filter(|d| d.kept_by.is_empty())
            .map(|d| d.id)
            .collect();
        let mut still: BTreeSet<SnapshotId> = BTreeSet::new();
        let mut gone: BTreeSet<SnapshotId> = BTreeSet::new();
        for (id, b) in backups {
            let set = if remove.contains(id) {
                &mut gone
            } else {
                &mut still
            };
            set.extend(b.volumes.iter().map(|v| v.snapshot));
        }
        let mut report = ForgetReport::default();
        for id in &remove {
            repo.store()
                .delete(&format!("backups/{id}"), repo.cancel())
                .await?;
            report.backups_removed += 1;
        }
        for s in gone.difference(&still) {
            repo.store().delete(&s.key(), repo.cancel()).await?;
            report.snapshots_removed += 1;
        }
        Ok(report)
    }
    .await;
    lock.release().await?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(
        name: &str,
        schedule: Option<&str>,
        hours_ago: i64,
        good: bool,
    ) -> (BackupId, AppBackup) {
        let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let mut id = [0u8; 32];
        id[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
        (
            BackupId(id),
            AppBackup {
                version: 1,
                name: name.into(),
                time: now - time::Duration::hours(hours_ago),
                source: "test".into(),
                schedule: schedule.map(str::to_string),
                filters: Default::default(),
                objects: vec![],
                failures: if good {
                    vec![]
                } else {
                    vec![crate::format::CaptureFailure {
                        what: "x".into(),
                        reason: "y".into(),
                    }]
                },
                volumes: vec![],
                rules: vec![],
                warnings: vec![],
                program_version: "t".into(),
            },
        )
    }

    #[test]
    fn per_schedule_and_the_newest_complete_backup_stays() {
        let all = vec![
            backup("a1", Some("a"), 5, true),
            backup("a2", Some("a"), 4, true),
            backup("a3", Some("a"), 3, false),
            backup("b1", Some("b"), 2, true),
            backup("m1", None, 1, true),
        ];
        let rules = |_: Option<&str>| Retain {
            last: 1,
            ..Default::default()
        };
        let d = plan(&all, &rules, None);
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| !d.kept_by.is_empty())
            .map(|d| d.name.as_str())
            .collect();
        // a3 is the last of `a` but partial: a2 stays as the newest complete one.
        assert_eq!(kept, vec!["a2", "a3", "b1", "m1"]);
        let d = plan(&all, &rules, Some("b"));
        assert_eq!(d.len(), 1);
    }
}
