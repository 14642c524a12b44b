//! `backup delete`: takes one backup's name (or id) and the repository; gives the backup's
//! record forgotten, with the volume snapshots only it referenced, through retention's
//! [`forget`] (its intent, its lock, its order), and with `prune` the data only it held
//! removed. Must not delete the newest complete backup of a schedule unless forced (the
//! check is [`protected_by`], pure), and changes nothing on a dry run. Knows nothing of the
//! catalog: the caller updates it.

use serde::Serialize;
use std::sync::Arc;

use crate::app::record::{self, AppBackupError};
use crate::app::retention::{forget, only, ForgetReport};
use crate::format::{AppBackup, BackupId};
use crate::repository::{PruneOptions, PruneReport, RepoError, Repository};

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("backup `{name}` is the newest complete backup of schedule `{schedule}`: deleting it would leave the schedule without a good backup to restore; add --force to delete it anyway")]
    NewestComplete { name: String, schedule: String },
    #[error(transparent)]
    App(#[from] AppBackupError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl DeleteError {
    pub fn is_retryable(&self) -> bool {
        match self {
            DeleteError::NewestComplete { .. } => false,
            DeleteError::App(e) => e.is_retryable(),
            DeleteError::Repo(e) => e.is_retryable(),
        }
    }

    /// Refused as asked, not failed: the same command with another flag would work.
    pub fn is_usage(&self) -> bool {
        matches!(self, DeleteError::NewestComplete { .. })
    }
}

/// How a delete is run.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions {
    /// Delete even the newest complete backup of its schedule.
    pub force: bool,
    /// Run `prune` afterwards with these options, so the data only this backup held goes
    /// (once their grace period has passed).
    pub prune: Option<PruneOptions>,
    /// Report what would be deleted; change nothing.
    pub dry_run: bool,
}

/// What a delete did (or, on a dry run, would do).
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    pub id: BackupId,
    pub name: String,
    pub schedule: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub time: time::OffsetDateTime,
    pub dry_run: bool,
    /// It was the newest complete backup of its schedule (deleted with --force).
    pub newest_complete: bool,
    /// The forget (None on a dry run).
    pub forgot: Option<ForgetReport>,
    /// The prune (None without --prune, and on a dry run).
    pub prune: Option<PruneReport>,
}

impl DeleteReport {
    /// The bytes prune gave back, when it ran.
    pub fn bytes_freed(&self) -> Option<u64> {
        self.prune
            .as_ref()
            .map(|p| p.bytes_before.saturating_sub(p.bytes_after))
    }
}

/// The schedule whose newest complete backup `id` is (None: deleting it leaves every
/// schedule a good backup, or it was made by hand). Among backups of one time, the one
/// listed last is the newest, as retention orders them.
pub fn protected_by(backups: &[(BackupId, AppBackup)], id: &BackupId) -> Option<String> {
    let (_, target) = backups.iter().find(|(i, _)| i == id)?;
    let schedule = target.schedule.as_deref()?;
    let newest = backups
        .iter()
        .enumerate()
        .filter(|(_, (_, b))| b.schedule.as_deref() == Some(schedule) && b.failures.is_empty())
        .max_by(|(ia, (_, a)), (ib, (_, b))| a.time.cmp(&b.time).then(ia.cmp(ib)))
        .map(|(_, (i, _))| i)?;
    (newest == id).then(|| schedule.to_string())
}

/// Deletes the backup `name` names (a name, or an id prefix of at least 8 characters).
pub async fn delete(
    repo: &Arc<Repository>,
    name: &str,
    opts: DeleteOptions,
) -> Result<DeleteReport, DeleteError> {
    let backups = record::list_backups(repo).await?;
    let (id, b) = record::find_backup(repo, name).await?;
    let protected = protected_by(&backups, &id);
    if let (Some(schedule), false) = (&protected, opts.force) {
        return Err(DeleteError::NewestComplete {
            name: b.name.clone(),
            schedule: schedule.clone(),
        });
    }
    let mut report = DeleteReport {
        id,
        name: b.name.clone(),
        schedule: b.schedule.clone(),
        time: b.time,
        dry_run: opts.dry_run,
        newest_complete: protected.is_some(),
        forgot: None,
        prune: None,
    };
    if opts.dry_run {
        return Ok(report);
    }
    report.forgot = Some(forget(repo, &backups, &only(&backups, &id)).await?);
    if let Some(prune) = &opts.prune {
        report.prune = Some(repo.prune(prune).await?);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(n: u8, schedule: Option<&str>, hour: i64, good: bool) -> (BackupId, AppBackup) {
        let mut b = AppBackup {
            version: 1,
            name: format!("b{n}"),
            time: time::OffsetDateTime::UNIX_EPOCH,
            source: "t".into(),
            schedule: None,
            filters: Default::default(),
            objects: vec![],
            failures: vec![],
            volumes: vec![],
            rules: vec![],
            warnings: vec![],
            duration_seconds: None,
            program_version: "t".into(),
        };
        b.time += time::Duration::hours(hour);
        b.schedule = schedule.map(str::to_string);
        if !good {
            b.failures.push(crate::format::CaptureFailure {
                what: "x".into(),
                reason: "y".into(),
            });
        }
        (BackupId([n; 32]), b)
    }

    #[test]
    fn only_the_newest_complete_backup_of_a_schedule_is_protected() {
        let all = vec![
            backup(1, Some("s"), 1, true),
            backup(2, Some("s"), 2, true),
            backup(3, Some("s"), 3, false),
            backup(4, Some("t"), 1, true),
            backup(5, None, 9, true),
        ];
        let p = |n: u8| protected_by(&all, &BackupId([n; 32]));
        assert_eq!(p(1), None, "an older complete backup");
        assert_eq!(
            p(2).as_deref(),
            Some("s"),
            "newest complete, a newer one failed"
        );
        assert_eq!(p(3), None, "a partial backup protects nothing");
        assert_eq!(p(4).as_deref(), Some("t"));
        assert_eq!(p(5), None, "made by hand");
        assert_eq!(p(6), None, "not there");
    }

    #[test]
    fn the_refusal_names_the_schedule_and_the_flag() {
        let e = DeleteError::NewestComplete {
            name: "b2".into(),
            schedule: "nightly".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("`nightly`") && text.contains("--force"),
            "{text}"
        );
        assert!(e.is_usage() && !e.is_retryable());
    }
}
