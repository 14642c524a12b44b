//! What an application backup is asked to do: takes the plain values a user gives (a name,
//! namespaces, comma-separated filters, rule files, where to capture from); gives a typed
//! request, validated once ([`BackupRequest::new`], its errors naming the flag), and runs it
//! ([`backup`]) through [`crate::app::volumes`] from a cluster directory or a live cluster.
//! [`RequestError`] is also what a restore request ([`crate::app::restore`]) is refused with.
//! Must not open the repository before the source has been read, so that a bad scope fails
//! without touching it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::app::record::{AppBackupError, BackupSummary};
use crate::app::volumes::{self, ConsistencyOptions};
use crate::format::BackupFilters;
use crate::hooks::{HookError, Rule};
use crate::k8s::csi::MoverSettings;
use crate::k8s::live::LiveCluster;
use crate::k8s::objects::ResourceError;
use crate::k8s::source::{
    self as ksource, ClusterDir, ClusterError, NamespaceGlob, ResourceFilter, ResourceName,
    Selector,
};
use crate::repository::Repository;

/// A request (of a backup or a restore) that cannot be run as given.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    BadName(#[from] crate::util::NameError),
    #[error("--namespace: give at least one namespace to back up (-n NAME, or --include-namespaces PATTERN)")]
    NoNamespace,
    /// A selector or an object filter that does not parse (the message names the flag).
    #[error(transparent)]
    Filter(#[from] ClusterError),
    /// A mapping that does not parse (the message names the flag).
    #[error(transparent)]
    Mapping(#[from] ResourceError),
    #[error("{flag}: {error}")]
    Rules {
        flag: &'static str,
        error: HookError,
    },
    #[error("restore create needs a target: --output-dir DIR, --cluster-dir DIR, --context CTX, or --dry-run")]
    NoRestoreTarget,
    #[error("restore create takes one target: --output-dir, --cluster-dir or --context")]
    SeveralRestoreTargets,
}

impl From<crate::k8s::filter::FilterError> for RequestError {
    fn from(e: crate::k8s::filter::FilterError) -> Self {
        RequestError::Filter(e.into())
    }
}

/// A backup as given, every value as typed on a command line.
#[derive(Debug, Clone)]
pub struct BackupFlags {
    pub name: String,
    /// `-n/--namespace` (at least one, or an --include-namespaces pattern).
    pub namespaces: Vec<String>,
    /// `--include-namespaces`: namespace patterns (`*`, `?`), comma-separated.
    pub include_namespaces: String,
    /// `--exclude-namespaces`: namespace patterns, comma-separated.
    pub exclude_namespaces: String,
    /// `-l/--selector`: a label selector (`k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`,
    /// `!k`, comma-separated).
    pub selector: String,
    /// `--include-objects`: `kind/name` or `kind/namespace/name`, comma-separated.
    pub include_objects: String,
    /// `--include-resources`: resource names (`deployments`, `deployments.apps`, kinds),
    /// comma-separated.
    pub include_resources: String,
    /// `--exclude-resources`: resource names, comma-separated.
    pub exclude_resources: String,
    /// `--pre-rule` files.
    pub pre_rules: Vec<PathBuf>,
    /// `--post-rule` files.
    pub post_rules: Vec<PathBuf>,
    pub include_volumes: bool,
    /// `--schedule`: the BackupSchedule the backup counts for.
    pub schedule: Option<String>,
}

impl Default for BackupFlags {
    fn default() -> Self {
        BackupFlags {
            name: String::new(),
            namespaces: Vec::new(),
            include_namespaces: String::new(),
            exclude_namespaces: String::new(),
            selector: String::new(),
            include_objects: String::new(),
            include_resources: String::new(),
            exclude_resources: String::new(),
            pre_rules: Vec::new(),
            post_rules: Vec::new(),
            include_volumes: true,
            schedule: None,
        }
    }
}

/// Where a backup captures from.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per command run
pub enum BackupSource {
    /// A cluster directory (`DIR/resources/`, `DIR/volumes/`).
    ClusterDir(PathBuf),
    /// A live cluster through a kubeconfig context (None: the current context, or the
    /// in-cluster configuration); the movers copy its volumes.
    Live {
        context: Option<String>,
        movers: MoverSettings,
    },
}

/// A validated backup request.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub name: String,
    pub scope: ksource::Scope,
    /// The scope as recorded in the backup.
    pub filters: BackupFilters,
    pub consistency: ConsistencyOptions,
    pub source: BackupSource,
}

/// The items of a comma-separated list, trimmed, empty ones dropped.
pub fn csv(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The rules of every file, in order.
fn load_rules(flag: &'static str, files: &[PathBuf]) -> Result<Vec<Rule>, RequestError> {
    let mut out = Vec::new();
    for f in files {
        out.extend(
            crate::hooks::load_rules(f).map_err(|error| RequestError::Rules { flag, error })?,
        );
    }
    Ok(out)
}

impl BackupRequest {
    /// Parses and checks every value; reads the rule files.
    pub fn new(flags: BackupFlags, source: BackupSource) -> Result<Self, RequestError> {
        crate::util::check_name(crate::util::NameKind::Backup, &flags.name)?;
        let include_namespaces =
            NamespaceGlob::parse_list("--include-namespaces", &flags.include_namespaces)?;
        if flags.namespaces.is_empty() && include_namespaces.is_empty() {
            return Err(RequestError::NoNamespace);
        }
        let consistency = ConsistencyOptions {
            include_volumes: flags.include_volumes,
            pre: load_rules("--pre-rule", &flags.pre_rules)?,
            post: load_rules("--post-rule", &flags.post_rules)?,
            schedule: flags.schedule,
            ..Default::default()
        };
        let scope = ksource::Scope {
            namespaces: flags.namespaces.clone(),
            include_namespaces,
            exclude_namespaces: NamespaceGlob::parse_list(
                "--exclude-namespaces",
                &flags.exclude_namespaces,
            )?,
            selector: Selector::parse(&flags.selector)?,
            include: ResourceFilter::parse_list("--include-objects", &flags.include_objects)?,
            include_types: ResourceName::parse_list(
                "--include-resources",
                &flags.include_resources,
            )?,
            exclude_types: ResourceName::parse_list(
                "--exclude-resources",
                &flags.exclude_resources,
            )?,
        };
        // The namespaces are recorded once the patterns are resolved ([`backup`]).
        let mut include_resources = csv(&flags.include_objects);
        include_resources.extend(csv(&flags.include_resources));
        let filters = BackupFilters {
            namespaces: flags.namespaces,
            selector: flags.selector,
            include_resources,
            exclude_resource_types: csv(&flags.exclude_resources),
        };
        Ok(BackupRequest {
            name: flags.name,
            scope,
            filters,
            consistency,
            source,
        })
    }
}

/// Runs a backup request: reads the source (a cluster directory's objects in scope, or a
/// connection to a live cluster), then awaits `repo` (opening the repository, typically with
/// a shared lock) and backs up objects and volumes into it.
pub async fn backup<E: From<AppBackupError>>(
    req: BackupRequest,
    repo: impl Future<Output = Result<Arc<Repository>, E>>,
    cancel: &CancellationToken,
) -> Result<BackupSummary, E> {
    let BackupRequest {
        name,
        scope,
        mut filters,
        consistency,
        source,
    } = req;
    match source {
        BackupSource::ClusterDir(dir) => {
            let dir = ClusterDir::new(dir);
            let cluster = dir.clone();
            let all = crate::util::blocking(move || cluster.load())
                .await
                .map_err(AppBackupError::from)?;
            let scope = scope
                .in_namespaces_of(&ksource::namespaces_of(&all), &dir.describe())
                .map_err(|e| AppBackupError::from(ClusterError::from(e)))?;
            filters.namespaces = scope.namespaces.clone();
            let selected =
                ksource::select(&all, &scope, &dir.describe()).map_err(AppBackupError::from)?;
            drop(all);
            let repo = repo.await?;
            Ok(volumes::backup_cluster_dir(
                repo,
                &name,
                &dir,
                selected,
                filters,
                &consistency,
                cancel,
            )
            .await?)
        }
        BackupSource::Live { context, movers } => {
            let live = LiveCluster::connect(context.as_deref())
                .await
                .map_err(AppBackupError::from)?;
            let scope = live
                .resolve_namespaces(&scope)
                .await
                .map_err(AppBackupError::from)?;
            filters.namespaces = scope.namespaces.clone();
            let repo = repo.await?;
            Ok(volumes::backup_live(
                repo,
                &name,
                &live,
                &scope,
                filters,
                &consistency,
                movers,
                cancel,
            )
            .await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> BackupFlags {
        BackupFlags {
            name: "b1".into(),
            namespaces: vec!["pg".into()],
            ..Default::default()
        }
    }

    fn refused(f: BackupFlags) -> String {
        BackupRequest::new(f, BackupSource::ClusterDir("/nonexistent".into()))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn values_become_a_typed_scope_and_the_recorded_filters() {
        let f = BackupFlags {
            selector: "app=db, tier!=web, role in (primary,replica)".into(),
            include_objects: "deployment/pg/postgres, configmap/x".into(),
            include_resources: "deployments.apps,ConfigMap".into(),
            exclude_resources: " Event ,,leases".into(),
            include_namespaces: "app-*".into(),
            exclude_namespaces: "app-old".into(),
            include_volumes: false,
            schedule: Some("nightly".into()),
            ..flags()
        };
        let r = BackupRequest::new(f, BackupSource::ClusterDir("/c".into())).unwrap();
        assert_eq!(r.name, "b1");
        assert_eq!(r.scope.namespaces, ["pg"]);
        assert_eq!(r.scope.include.len(), 2);
        assert_eq!(r.scope.include[0].namespace.as_deref(), Some("pg"));
        let text = |v: &[ResourceName]| v.iter().map(|n| n.text.clone()).collect::<Vec<_>>();
        assert_eq!(text(&r.scope.exclude_types), ["Event", "leases"]);
        assert_eq!(
            text(&r.scope.include_types),
            ["deployments.apps", "ConfigMap"]
        );
        assert_eq!(r.scope.include_namespaces.len(), 1);
        assert_eq!(r.scope.exclude_namespaces[0].as_str(), "app-old");
        assert!(!r.scope.selector.is_empty());
        assert_eq!(
            r.filters.selector,
            "app=db, tier!=web, role in (primary,replica)"
        );
        // Objects and resource names both, as given.
        assert_eq!(
            r.filters.include_resources,
            [
                "deployment/pg/postgres",
                "configmap/x",
                "deployments.apps",
                "ConfigMap"
            ]
        );
        assert_eq!(r.filters.exclude_resource_types, ["Event", "leases"]);
        assert!(!r.consistency.include_volumes);
        assert_eq!(r.consistency.schedule.as_deref(), Some("nightly"));
        assert!(r.consistency.include_resources && r.consistency.allow_reflink);
    }

    #[test]
    fn validation_errors_name_the_flag() {
        let e = refused(BackupFlags {
            selector: "=x".into(),
            ..flags()
        });
        assert!(e.contains("--selector"), "{e}");
        let e = refused(BackupFlags {
            include_objects: "deployment".into(),
            ..flags()
        });
        assert!(e.contains("--include-objects"), "{e}");
        let e = refused(BackupFlags {
            include_resources: "deployment/pg".into(),
            ..flags()
        });
        assert!(
            e.contains("--include-resources") && e.contains("--include-objects"),
            "{e}"
        );
        let e = refused(BackupFlags {
            exclude_resources: "config maps".into(),
            ..flags()
        });
        assert!(e.contains("--exclude-resources"), "{e}");
        let e = refused(BackupFlags {
            exclude_namespaces: "App".into(),
            ..flags()
        });
        assert!(e.contains("--exclude-namespaces"), "{e}");
        let e = refused(BackupFlags {
            namespaces: Vec::new(),
            ..flags()
        });
        assert!(
            e.contains("--namespace") && e.contains("--include-namespaces"),
            "{e}"
        );
        // A pattern alone is a scope.
        BackupRequest::new(
            BackupFlags {
                namespaces: Vec::new(),
                include_namespaces: "*".into(),
                ..flags()
            },
            BackupSource::ClusterDir("/c".into()),
        )
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing.yaml");
        let e = refused(BackupFlags {
            post_rules: vec![missing.clone()],
            ..flags()
        });
        assert!(
            e.starts_with("--post-rule: ") && e.contains("missing.yaml"),
            "{e}"
        );
        let e = refused(BackupFlags {
            pre_rules: vec![missing],
            ..flags()
        });
        assert!(e.starts_with("--pre-rule: "), "{e}");
    }

    #[test]
    fn a_bad_name_is_refused_before_anything_is_read() {
        let e = refused(BackupFlags {
            name: "no spaces allowed".into(),
            // Not read: the name is checked first.
            pre_rules: vec!["/nonexistent/rule.yaml".into()],
            ..flags()
        });
        assert!(!e.contains("rule.yaml"), "{e}");
    }

    #[test]
    fn csv_trims_and_drops_empty_items() {
        assert_eq!(csv(" a, b ,,c,"), ["a", "b", "c"]);
        assert!(csv("").is_empty());
    }
}
