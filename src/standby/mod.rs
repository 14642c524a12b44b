//! The DR site: takes the repository, a schedule and a target (a cluster directory, or a live
//! cluster through [`crate::k8s::csi`]); keeps the target a warm standby of the schedule's newest
//! backup, and switches it on (`activate`) and off (`deactivate`). Must not leave a volume
//! half-way between two snapshots, nor a backup half-applied: a standby killed at any instant
//! resumes to the previous or the new state.
//!
//! A volume already holding snapshot A moves to snapshot B by the **difference of their block
//! maps**: map segments with equal ids are skipped without reading, and only blocks whose
//! entries differ are fetched and written (a 1 TiB volume with 1 GiB changed costs about
//! 1 GiB). The switch is two-phase, per backup:
//!
//! 1. **Prepare.** For each volume, the changed blocks are fetched, verified and written to a
//!    journal beside it (`<volume>.lifeboat-journal`); a volume new to the site is restored to
//!    `<volume>.lifeboat-new`. Nothing the standby serves is touched. A snapshot that fails
//!    verification stops here: the backup is skipped and reported, the standby unchanged.
//! 2. **Commit.** A marker listing every journal (with its hash) is written atomically
//!    (`volumes/<ns>/.lifeboat-commit.json`); then each journal is replayed into its volume
//!    (or the new file renamed into place), the volume's `<volume>.lifeboat-applied` record
//!    is updated, and finally the marker and journals are removed. A standby that starts and
//!    finds a marker replays it first (replay is idempotent); journals without a marker are
//!    discarded.
//!
//! The configuration is then applied with `--start-applications=false` semantics. The files
//! are described in `schema/FORMAT.md` and typed in [`crate::format::standby`].
//!
//! On a live site the same two phases run inside a standby Job ([`apply_devices`]), with the
//! claims as block devices and the journals, records and marker on a claim of their own; the
//! commit marker names claims, not device paths, so the next Job can finish it.
//!
//! A delta is only ever applied onto a volume whose record says what it holds. `activate`
//! drops the records (the application changes the data from then on), so after `deactivate`
//! the volumes are written whole; a live claim standby never wrote is not overwritten unless
//! asked (`--overwrite-claims`).
//!
//! The modules, each using only those above it:
//!
//! ```text
//!  journal    the journal file, commit, replay (streamed, off the runtime), recover
//!  delta      block-map difference; stage one volume (journal, new file, or record)
//!  cycle      the steps both sites share: newest backup, triage, the held plan, failures
//!  dir_site   one cycle on a cluster directory; activate/deactivate there
//!  live_site  one cycle on a live cluster; the standby Job's `apply_devices`
//!  activate   activate / deactivate on either site
//!  drill      restore into a scratch namespace and verify (both sites)
//!  worker     the standby loop: cycles, catalog, /metrics, status
//! ```

use std::path::Path;

use serde::Serialize;

use crate::app::record::AppBackupError;
use crate::format::standby::VolumeMode;
use crate::k8s::objects::Mapping;
use crate::k8s::source::{ClusterDir, ClusterError};
use crate::repository::RepoError;
use crate::scheduler::catalog::CatalogError;
use crate::volume::restore::RestoreError;

pub mod journal;

pub mod delta;

pub mod cycle;

pub mod dir_site;

pub mod live_site;

pub mod activate;

pub mod drill;

pub mod worker;

pub use crate::format::standby::{
    Applied, CommitItem, CommitKind, APPLIED_SUFFIX, COMMIT_FILE, JOURNAL_SUFFIX, NEW_SUFFIX,
};
pub use activate::{set_running, RunningReport, Switch};
pub use cycle::newest_of;
pub use delta::{changed_blocks, delta_bytes};
pub use dir_site::{
    cycle_cluster_dir, forget_applied_cluster_dir, remove_namespace, set_running_cluster_dir,
};
pub use drill::{
    drill, drill_cluster_dir, drill_live, holds, DrillReport, DrillRequest, DrillVolume,
};
pub use journal::{read_applied, recover};
pub use live_site::{
    apply_devices, claim_live_claims, cycle_live, forget_live_claims, DeviceVolume, ACTIVATED,
    WHOLE,
};
pub use worker::{age_seconds, run, status, Standing, StatusRow, WorkerOptions};

#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("journal {path} is damaged ({reason}); its commit marker is kept: fix the disk, or remove both to re-apply the backup from scratch")]
    BadJournal { path: String, reason: String },
    #[error("no complete backup of schedule `{0}` in the repository yet")]
    NoBackup(String),
    /// The repository cannot be opened this cycle (the bucket unreachable, or not a
    /// repository): retryable as its error is.
    #[error("the repository cannot be opened: {0}")]
    Open(#[source] RepoError),
    /// `drill` without `--from-backup`: nothing of the schedule, or nothing holding the
    /// namespace.
    #[error("{}", match schedule {
        Some(s) => format!("no complete backup of schedule `{s}`"),
        None => format!("no complete backup holds namespace `{namespace}`"),
    })]
    NothingToDrill {
        namespace: String,
        schedule: Option<String>,
    },
    /// A cycle that could not apply the newest backup to some namespaces (each one's
    /// report says why); the site keeps their previous state.
    #[error("{} namespace(s) not applied ({}; see the report above): the site keeps their previous state", namespaces.len(), namespaces.join(", "))]
    NamespacesFailed {
        namespaces: Vec<String>,
        retryable: bool,
    },
    #[error("cannot listen on {addr} for metrics: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A failure already told as text (a plan that could not be read for every namespace of
    /// the cycle, a claim standby must not overwrite, a drill that cannot go on).
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Verify(#[from] crate::volume::verify::VerifyError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    App(#[from] AppBackupError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Live(#[from] crate::k8s::LiveError),
}

impl StandbyError {
    /// Worth another cycle (a bucket or API unreachable now); everything else needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            StandbyError::Repo(e) | StandbyError::Open(e) => e.is_retryable(),
            StandbyError::Verify(e) => e.is_retryable(),
            StandbyError::Restore(e) => e.is_retryable(),
            StandbyError::App(e) => e.is_retryable(),
            StandbyError::Live(e) => e.is_retryable(),
            StandbyError::NamespacesFailed { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StandbyError + '_ {
    move |source| StandbyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A DR site: a cluster directory, or a live cluster.
pub enum Site {
    Dir(ClusterDir),
    Live(crate::k8s::live::LiveCluster),
}

/// How a site is watched.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    pub schedule: String,
    pub namespaces: Mapping,
    /// Live sites: a claim that exists but that standby did not write is overwritten whole
    /// (journaled) instead of failing the namespace (failback onto a repaired primary).
    pub overwrite_claims: bool,
}

/// What applying one volume cost (a cycle's `volumes`, `standby apply-devices --json`).
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct VolumeReport {
    pub namespace: String,
    pub pvc: String,
    /// The repository snapshot the claim now holds (hex).
    #[serde(rename = "snapshot_id")]
    pub snapshot: String,
    pub mode: VolumeMode,
    pub blocks_changed: u64,
    /// Read from the repository.
    pub fetched_bytes: u64,
    /// Written to the claim.
    pub written_bytes: u64,
}

pub use crate::crd::NamespaceState;

/// What one cycle did for one namespace (`standby --json` prints a cycle's as a list).
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct NamespaceReport {
    /// The namespace on this site.
    pub namespace: String,
    /// Its name in the backups.
    pub source_namespace: String,
    pub state: NamespaceState,
    /// The backup applied or looked at (its name).
    pub backup: Option<String>,
    pub error: Option<String>,
    pub volumes: Vec<VolumeReport>,
    pub objects_applied: usize,
    /// A failure another cycle may get past (the bucket or the API unreachable now).
    #[serde(skip)]
    pub retryable: bool,
}

impl NamespaceReport {
    /// `standby --once`'s verdict on a cycle: an error when a namespace failed, retryable
    /// when every failure is.
    pub fn verdict(reports: &[NamespaceReport]) -> Result<(), StandbyError> {
        let failed: Vec<&NamespaceReport> = reports
            .iter()
            .filter(|r| r.state == NamespaceState::Failed)
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(StandbyError::NamespacesFailed {
            namespaces: failed.iter().map(|r| r.namespace.clone()).collect(),
            retryable: failed.iter().all(|r| r.retryable),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn an_unreachable_repository_is_retryable_and_a_foreign_one_is_not() {
        let down = StandbyError::Open(RepoError::Store(StoreError::Transient {
            op: "get",
            key: "config".into(),
            message: "connection refused".into(),
        }));
        assert!(down.is_retryable(), "{down}");
        assert!(down.to_string().contains("cannot be opened"), "{down}");
        let gone = StandbyError::Open(RepoError::NotARepository {
            location: "/gone".into(),
        });
        assert!(!gone.is_retryable());
        assert!(!StandbyError::Failed("x".into()).is_retryable());
    }

    #[test]
    fn a_cycle_with_a_failed_namespace_is_an_error_retryable_only_when_every_failure_is() {
        let r = |ns: &str, state, retryable| NamespaceReport {
            namespace: ns.into(),
            state,
            retryable,
            ..Default::default()
        };
        let up = r("a", NamespaceState::UpToDate, false);
        assert!(
            NamespaceReport::verdict(&[up.clone(), r("b", NamespaceState::Applied, false)]).is_ok()
        );
        let down = NamespaceReport::verdict(&[up.clone(), r("b", NamespaceState::Failed, true)])
            .unwrap_err();
        assert!(down.is_retryable(), "{down}");
        assert!(
            down.to_string().contains("1 namespace(s) not applied (b;"),
            "{down}"
        );
        let mixed = NamespaceReport::verdict(&[
            r("b", NamespaceState::Failed, true),
            r("c", NamespaceState::Failed, false),
        ])
        .unwrap_err();
        assert!(!mixed.is_retryable(), "{mixed}");
        assert!(mixed.to_string().contains("(b, c;"), "{mixed}");
        assert!(!serde_json::to_value(&up)
            .unwrap()
            .as_object()
            .unwrap()
            .contains_key("retryable"));
    }

    #[test]
    fn states_keep_their_names() {
        for (s, n) in [
            (NamespaceState::Applied, "applied"),
            (NamespaceState::UpToDate, "up-to-date"),
            (NamespaceState::Activated, "activated"),
            (NamespaceState::Failed, "failed"),
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), n);
            assert_eq!(s.to_string(), n);
        }
    }
}
