//! One scheduled run: takes a schedule, the name of its backup and a cancellation token; gives
//! how the run ended ([`RunOutcome`], recorded in the catalog) or why it failed ([`RunError`]),
//! and applies the schedule's retention after it. [`Runner`] is what the server drives;
//! [`RepoRunner`] is the real one: an application backup into the repository under a shared
//! lock, with the template's rules, from a cluster directory or a live cluster. Must not
//! decide when runs happen (that is the server's) and must not remove anything but what the
//! schedule's own retention decides.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::app::record::{AppBackupError, BackupSummary};
use crate::app::retention::ForgetReport;
use crate::app::volumes::ConsistencyOptions;
use crate::hooks::{HookError, Rule};
use crate::k8s::source::{ClusterError, Scope, Selector};
use crate::repository::{LockGuard, LockKind, RepoError, Repository};
use crate::scheduler::catalog::{blocking, Catalog, CatalogError, RunResult};
use crate::scheduler::config::{Config, Schedule};

/// How long a scheduled run waits for an exclusive lock (forget, prune) to go.
pub const LOCK_WAIT: Duration = Duration::from_secs(10 * 60);

/// Why a run, or the retention after it, failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A rule file of the template.
    #[error(transparent)]
    Rules(#[from] HookError),
    /// The template's selector, or the cluster directory.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The repository: its lock, or forgetting.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The backup itself, or listing the backups for retention.
    #[error(transparent)]
    Backup(#[from] AppBackupError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cancelled while waiting for the repository lock")]
    CancelledWaitingForLock,
    #[error("the run's worker failed: {0}")]
    Worker(String),
}

impl RunError {
    /// A later run may succeed where this one failed (the repository or the cluster was
    /// unreachable or locked); a bad rule file or selector fails every run alike.
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::Repo(e) => e.is_retryable(),
            RunError::Backup(e) => e.is_retryable(),
            RunError::Catalog(e) => e.is_retryable(),
            RunError::Rules(_)
            | RunError::Cluster(_)
            | RunError::CancelledWaitingForLock
            | RunError::Worker(_) => false,
        }
    }
}

/// How one run ended, as the catalog records it.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub result: RunResult,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub stats: Option<serde_json::Value>,
    pub error: Option<String>,
}

impl RunOutcome {
    /// An outcome with nothing read or written yet.
    pub fn new(result: RunResult) -> RunOutcome {
        RunOutcome {
            result,
            bytes_read: 0,
            bytes_uploaded: 0,
            stats: None,
            error: None,
        }
    }

    /// A run that ended in `e`: cancelled when the run was (whatever error that caused),
    /// else failed.
    pub fn failed(e: &RunError, cancelled: bool) -> RunOutcome {
        let result = if cancelled {
            RunResult::Cancelled
        } else {
            RunResult::Failed
        };
        RunOutcome {
            error: Some(e.to_string()),
            ..RunOutcome::new(result)
        }
    }

    /// A backup made: succeeded, or partial when parts of the scope were not captured.
    pub fn of_backup(summary: &BackupSummary) -> RunOutcome {
        let partial = !summary.failures.is_empty();
        RunOutcome {
            result: if partial {
                RunResult::Partial
            } else {
                RunResult::Succeeded
            },
            bytes_read: summary.bytes_read,
            bytes_uploaded: summary.bytes_uploaded,
            error: partial.then(|| {
                summary
                    .failures
                    .iter()
                    .map(|f| format!("{}: {}", f.what, f.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            stats: serde_json::to_value(summary).ok(),
        }
    }
}

/// Makes one backup of a schedule, named `backup`.
pub trait Runner: Send + Sync + 'static {
    /// The run: what it made (succeeded or partial), or why it failed.
    fn run(
        &self,
        schedule: Schedule,
        backup: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<RunOutcome, RunError>>;

    /// Applies the schedule's retention after a run: what it removed (None: nothing to
    /// remove). A no-op by default.
    fn retain(
        &self,
        _schedule: Schedule,
        _config: Arc<Config>,
    ) -> BoxFuture<'static, Result<Option<ForgetReport>, RunError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Where scheduled backups read from.
pub enum Source {
    Dir(crate::k8s::source::ClusterDir),
    Live(Arc<crate::k8s::live::LiveCluster>),
}

/// The real [`Runner`]: an application backup into the repository, under a shared lock, with
/// the schedule's rules (paths relative to the configuration), recorded in the catalog; and
/// the schedule's retention after it.
pub struct RepoRunner {
    pub repo: Arc<Repository>,
    pub source: Source,
    pub catalog: Arc<Catalog>,
    /// Where rule paths of templates are relative to.
    pub config_dir: PathBuf,
    pub movers: crate::k8s::csi::MoverSettings,
}

impl RepoRunner {
    /// The rules of a template's rule files, in order.
    fn rules(&self, files: &[String]) -> Result<Vec<Rule>, RunError> {
        let mut out = Vec::new();
        for f in files {
            out.extend(crate::hooks::load_rules(&self.config_dir.join(f))?);
        }
        Ok(out)
    }

    /// A shared lock on the repository. An exclusive lock (forget, prune) is waited out for
    /// up to [`LOCK_WAIT`] rather than failing the run at once.
    async fn shared_lock(
        &self,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<LockGuard, RunError> {
        let mut delay = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match self
                .repo
                .lock(LockKind::Shared, &format!("backup {name}"))
                .await
            {
                Ok(l) => return Ok(l),
                Err(RepoError::Locked { holder }) if tokio::time::Instant::now() < deadline => {
                    tracing::info!("waiting for the repository: {holder}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Err(RunError::CancelledWaitingForLock),
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn backup(
        &self,
        s: &Schedule,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<BackupSummary, RunError> {
        let opts = ConsistencyOptions {
            include_volumes: s.template.include_volumes,
            include_resources: s.template.include_resources,
            pre: self.rules(&s.template.pre_rules)?,
            post: self.rules(&s.template.post_rules)?,
            allow_reflink: true,
            schedule: Some(s.name.clone()),
        };
        let scope = Scope {
            namespaces: s.template.namespaces.clone(),
            selector: Selector::parse(&s.template.selector).map_err(ClusterError::from)?,
            ..Default::default()
        };
        let lock = self.shared_lock(name, cancel).await?;
        let result = self.back_up_source(s, name, &scope, &opts, cancel).await;
        if let Err(e) = lock.release().await {
            tracing::warn!("could not release the repository lock (it expires by itself): {e}");
        }
        result
    }

    /// The backup proper, from the runner's source, under the lock [`Self::backup`] holds.
    async fn back_up_source(
        &self,
        s: &Schedule,
        name: &str,
        scope: &Scope,
        opts: &ConsistencyOptions,
        cancel: &CancellationToken,
    ) -> Result<BackupSummary, RunError> {
        use crate::app::volumes::{backup_cluster_dir, backup_live};
        let filters = crate::format::BackupFilters {
            namespaces: s.template.namespaces.clone(),
            selector: s.template.selector.clone(),
            ..Default::default()
        };
        let repo = self.repo.clone();
        Ok(match &self.source {
            Source::Dir(dir) => {
                let d = crate::k8s::source::ClusterDir::new(dir.root());
                let all = crate::util::blocking(move || d.load()).await?;
                let selected = crate::k8s::source::select(&all, scope, &dir.describe())?;
                backup_cluster_dir(repo, name, dir, selected, filters, opts, cancel).await?
            }
            Source::Live(live) => {
                let movers = self.movers.clone();
                backup_live(repo, name, live, scope, filters, opts, movers, cancel).await?
            }
        })
    }

    /// A run: the backup, then its record in the catalog (a copy: a failure to write it is
    /// a warning, `catalog rebuild` recreates it).
    async fn run_one(
        self: Arc<Self>,
        s: Schedule,
        backup: String,
        cancel: CancellationToken,
    ) -> Result<RunOutcome, RunError> {
        let summary = self.backup(&s, &backup, &cancel).await?;
        let (id, record) = (summary.id, summary.record.clone());
        let r = blocking(&self.catalog, move |c| c.record_backup(&id, &record)).await;
        if let Err(e) = r {
            tracing::warn!("could not record the backup in the catalog: {e}");
        }
        Ok(RunOutcome::of_backup(&summary))
    }

    /// The schedule's retention: its backups the policy no longer keeps are forgotten, in the
    /// repository and then in the catalog.
    async fn apply_retention(
        self: Arc<Self>,
        s: Schedule,
        config: Arc<Config>,
    ) -> Result<Option<ForgetReport>, RunError> {
        let retain = config.policy_of(&s).retain;
        if retain.keeps_everything() {
            return Ok(None);
        }
        let backups = crate::app::record::list_backups(&self.repo).await?;
        let decisions = crate::app::retention::plan(&backups, &|_| retain, Some(&s.name));
        let gone = crate::app::retention::removed(&decisions);
        if gone.is_empty() {
            return Ok(None);
        }
        let report = crate::app::retention::forget(&self.repo, &backups, &decisions).await?;
        blocking(&self.catalog, move |c| c.remove_backups(&gone)).await?;
        Ok(Some(report))
    }
}

impl Runner for Arc<RepoRunner> {
    fn run(
        &self,
        s: Schedule,
        backup: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<RunOutcome, RunError>> {
        let me = self.clone();
        let handle = tokio::runtime::Handle::current();
        // The backup future is driven on a blocking-pool thread: rustc cannot prove it Send
        // (higher-ranked lifetimes inside the rules' step), and `block_on` does not need it.
        // Its own tasks still run on the runtime.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || handle.block_on(me.run_one(s, backup, cancel)))
                .await
                .unwrap_or_else(|e| Err(RunError::Worker(e.to_string())))
        })
    }

    fn retain(
        &self,
        s: Schedule,
        config: Arc<Config>,
    ) -> BoxFuture<'static, Result<Option<ForgetReport>, RunError>> {
        let me = self.clone();
        Box::pin(async move { me.apply_retention(s, config).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_is_cancelled_when_the_run_was_and_retryable_when_the_repository_was_busy() {
        let busy = RunError::Repo(RepoError::Locked {
            holder: "an exclusive lock for `prune`".into(),
        });
        assert!(busy.is_retryable());
        let o = RunOutcome::failed(&busy, false);
        assert_eq!(o.result, RunResult::Failed);
        assert_eq!(o.error.as_deref(), Some(busy.to_string().as_str()));
        assert_eq!(
            RunOutcome::failed(&RunError::CancelledWaitingForLock, true).result,
            RunResult::Cancelled
        );
        let bad_rules = RunError::Rules(HookError::Read {
            path: "pre.yaml".into(),
            reason: "missing".into(),
        });
        assert!(!bad_rules.is_retryable());
        assert_eq!(bad_rules.to_string(), "pre.yaml: missing");
    }
}
