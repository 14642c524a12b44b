//! An application restore, in order: takes a request (the backup, how to plan, where to) and
//! the repository; gives what was done to each object and volume, or with a dry run the plan
//! and its conflicts. The order: the backup's objects are planned (filtered, sanitised,
//! mapped, held, ordered: [`crate::app::record::plan_restore`]); on a cluster directory or a
//! live cluster each claim's data is written before any object is applied, so that no
//! workload starts on an empty volume; then the objects, in apply order. Must not change
//! anything on a dry run, and must not apply again a claim the volume step created.
//!
//! ```text
//!  request ─► plan ─┬─ dry run: conflicts on the target ─► report
//!                   ├─ output dir: YAML files in apply order, then volumes/<ns>/<claim>.img
//!                   ├─ cluster dir: volumes, then objects (existing-resource policy)
//!                   └─ live: volumes (claims created or bound), then the other objects
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::record::{self, AppBackupError, Planned, RestorePlanOptions};
use crate::app::request::RequestError;
use crate::app::volumes;
use crate::format::AppBackup;
use crate::k8s::csi::MoverSettings;
use crate::k8s::live::LiveCluster;
use crate::k8s::objects::{Mapping, ObjRef, SanitiseOptions};
use crate::k8s::source::{
    ApplyItem, ApplyResult, ClusterDir, ClusterError, ExistingPolicy, Exported, Kinds, Outcome,
    ResourceFilter, ResourceName, Selector,
};
use crate::repository::Repository;

/// How long a live apply waits for a restored CustomResourceDefinition to be served.
const CRD_WAIT: Duration = Duration::from_secs(120);

/// A restore as given, every value as typed on a command line.
#[derive(Debug, Clone)]
pub struct RestoreFlags {
    /// `--from-backup`.
    pub from_backup: String,
    /// `--namespace-mapping`: `old:new`, comma-separated.
    pub namespace_mapping: String,
    /// `--storage-class-mapping`: `old:new`, comma-separated.
    pub storage_class_mapping: String,
    /// `--include-objects`: `kind/name` or `kind/namespace/name`, comma-separated.
    pub include_objects: String,
    /// `--include-resources`: resource names (`deployments`, `deployments.apps`, kinds).
    pub include_resources: String,
    /// `--exclude-resources`: resource names.
    pub exclude_resources: String,
    /// `--selector`.
    pub selector: String,
    pub start_applications: bool,
    pub existing_resource_policy: ExistingPolicy,
    pub keep_status: bool,
    pub keep_node_ports: bool,
    pub dry_run: bool,
    pub output_dir: Option<PathBuf>,
    pub cluster_dir: Option<PathBuf>,
    /// `--context`: a live cluster.
    pub context: Option<String>,
}

impl Default for RestoreFlags {
    fn default() -> Self {
        RestoreFlags {
            from_backup: String::new(),
            namespace_mapping: String::new(),
            storage_class_mapping: String::new(),
            include_objects: String::new(),
            include_resources: String::new(),
            exclude_resources: String::new(),
            selector: String::new(),
            start_applications: true,
            existing_resource_policy: ExistingPolicy::Skip,
            keep_status: false,
            keep_node_ports: false,
            dry_run: false,
            output_dir: None,
            cluster_dir: None,
            context: None,
        }
    }
}

/// Where a restore goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A new or empty directory of YAML files whose lexical order is the apply order.
    OutputDir(PathBuf),
    ClusterDir(PathBuf),
    /// A live cluster through this kubeconfig context; the movers write its volumes.
    Live {
        context: String,
        movers: MoverSettings,
    },
    /// A live cluster through a client already made (the controller's own).
    Connected {
        client: Connected,
        movers: MoverSettings,
    },
}

/// A client of the cluster a restore writes to.
#[derive(Clone)]
pub struct Connected(pub kube::Client);

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a connected cluster")
    }
}

/// Whether a restore changes anything.
#[derive(Debug, Clone)]
pub enum RestoreMode {
    /// Plan, and look up conflicts on the destination if one is given; change nothing.
    DryRun(Option<Destination>),
    Apply(Destination),
}

/// A validated restore request.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub backup: String,
    /// Its `kinds` are resolved against the backup's types when it is read ([`restore`]).
    pub plan: RestorePlanOptions,
    /// `--include-resources`, `--exclude-resources` as given.
    pub types: (Vec<ResourceName>, Vec<ResourceName>),
    pub policy: ExistingPolicy,
    pub mode: RestoreMode,
    /// The mappings and filters given, by flag name without `--` (what a restore record
    /// keeps): only those given, and the policies when not the default.
    pub given: std::collections::BTreeMap<String, String>,
}

impl RestoreRequest {
    /// Parses and checks every value; `movers` are used when the destination is live.
    pub fn new(flags: RestoreFlags, movers: MoverSettings) -> Result<Self, RequestError> {
        let recorded = flags.given();
        let plan = RestorePlanOptions {
            namespaces: Mapping::parse("--namespace-mapping", &flags.namespace_mapping)?,
            storage_classes: Mapping::parse(
                "--storage-class-mapping",
                &flags.storage_class_mapping,
            )?,
            include: ResourceFilter::parse_list("--include-objects", &flags.include_objects)?,
            kinds: Default::default(),
            selector: Selector::parse(&flags.selector)?,
            start_applications: flags.start_applications,
            sanitise: SanitiseOptions {
                keep_status: flags.keep_status,
                keep_node_ports: flags.keep_node_ports,
            },
        };
        let mut given = [
            flags.output_dir.map(Destination::OutputDir),
            flags.cluster_dir.map(Destination::ClusterDir),
            flags
                .context
                .map(|context| Destination::Live { context, movers }),
        ]
        .into_iter()
        .flatten();
        let destination = given.next();
        if given.next().is_some() {
            return Err(RequestError::SeveralRestoreTargets);
        }
        let mode = match (flags.dry_run, destination) {
            (true, d) => RestoreMode::DryRun(d),
            (false, Some(d)) => RestoreMode::Apply(d),
            (false, None) => return Err(RequestError::NoRestoreTarget),
        };
        Ok(RestoreRequest {
            backup: flags.from_backup,
            plan,
            types: (
                ResourceName::parse_list("--include-resources", &flags.include_resources)?,
                ResourceName::parse_list("--exclude-resources", &flags.exclude_resources)?,
            ),
            policy: flags.existing_resource_policy,
            mode,
            given: recorded,
        })
    }
}

impl RestoreFlags {
    /// The mappings, filters and policies that differ from the defaults, by flag name.
    fn given(&self) -> std::collections::BTreeMap<String, String> {
        let d = RestoreFlags::default();
        let mut out = std::collections::BTreeMap::new();
        for (flag, v) in [
            ("namespace-mapping", &self.namespace_mapping),
            ("storage-class-mapping", &self.storage_class_mapping),
            ("include-objects", &self.include_objects),
            ("include-resources", &self.include_resources),
            ("exclude-resources", &self.exclude_resources),
            ("selector", &self.selector),
        ] {
            if !v.is_empty() {
                out.insert(flag.to_string(), v.clone());
            }
        }
        for (flag, v, default) in [
            (
                "start-applications",
                self.start_applications,
                d.start_applications,
            ),
            ("keep-status", self.keep_status, d.keep_status),
            ("keep-node-ports", self.keep_node_ports, d.keep_node_ports),
        ] {
            if v != default {
                out.insert(flag.to_string(), v.to_string());
            }
        }
        if self.existing_resource_policy != d.existing_resource_policy {
            out.insert(
                "existing-resource-policy".into(),
                format!("{:?}", self.existing_resource_policy).to_lowercase(),
            );
        }
        out
    }
}

/// What a restore did, or on a dry run would do.
#[derive(Debug, Clone)]
pub enum RestoreReport {
    /// The plan (restored objects in apply order, then the skipped ones) and which of its
    /// objects exist on the destination already.
    Planned {
        plan: Vec<Planned>,
        conflicts: Vec<ObjRef>,
    },
    /// What happened to each volume and object, in the order done.
    Applied {
        plan: Vec<Planned>,
        results: Vec<ApplyResult>,
    },
}

impl RestoreReport {
    pub fn plan(&self) -> &[Planned] {
        match self {
            RestoreReport::Planned { plan, .. } | RestoreReport::Applied { plan, .. } => plan,
        }
    }

    /// The objects the plan leaves out, with why.
    pub fn not_restored(&self) -> impl Iterator<Item = (&ObjRef, &str)> {
        self.plan()
            .iter()
            .filter_map(|p| p.skipped.as_deref().map(|why| (&p.source, why)))
    }

    /// How many results have this outcome (none on a dry run).
    pub fn count(&self, outcome: Outcome) -> usize {
        match self {
            RestoreReport::Planned { .. } => 0,
            RestoreReport::Applied { results, .. } => {
                results.iter().filter(|r| r.outcome == outcome).count()
            }
        }
    }
}

/// The destination, opened.
#[allow(clippy::large_enum_variant)] // one per restore
enum Target {
    OutputDir(PathBuf),
    ClusterDir(ClusterDir),
    Live(LiveCluster, MoverSettings),
}

impl Target {
    async fn open(d: &Destination) -> Result<Target, AppBackupError> {
        Ok(match d {
            Destination::OutputDir(dir) => Target::OutputDir(dir.clone()),
            Destination::ClusterDir(dir) => Target::ClusterDir(ClusterDir::new(dir)),
            Destination::Live { context, movers } => {
                Target::Live(LiveCluster::connect(Some(context)).await?, movers.clone())
            }
            Destination::Connected { client, movers } => Target::Live(
                LiveCluster::from_client(client.0.clone(), "in-cluster"),
                movers.clone(),
            ),
        })
    }
}

/// Runs a restore request against the repository: plan, then (unless a dry run) volumes
/// before the workloads that mount them, then objects.
pub async fn restore(
    repo: Arc<Repository>,
    req: &RestoreRequest,
) -> Result<RestoreReport, AppBackupError> {
    let (backup, plan) = plan(&repo, req).await?;
    match &req.mode {
        RestoreMode::DryRun(None) => Ok(RestoreReport::Planned {
            plan,
            conflicts: Vec::new(),
        }),
        RestoreMode::DryRun(Some(d)) => {
            let (plan, conflicts) = conflicts(&Target::open(d).await?, plan).await?;
            Ok(RestoreReport::Planned { plan, conflicts })
        }
        RestoreMode::Apply(d) => {
            let target = Target::open(d).await?;
            let (plan, results) = apply(repo, &backup, plan, &target, req.policy).await?;
            Ok(RestoreReport::Applied { plan, results })
        }
    }
}

/// Runs `f` (file IO on a directory) with the plan on the blocking pool; gives the plan back.
async fn with_plan<T: Send + 'static>(
    plan: Vec<Planned>,
    f: impl FnOnce(&[Planned]) -> T + Send + 'static,
) -> (Vec<Planned>, T) {
    crate::util::blocking(move || {
        let out = f(&plan);
        (plan, out)
    })
    .await
}

/// The backup and its restore plan; a kind the filter names must be one the backup knows.
async fn plan(
    repo: &Repository,
    req: &RestoreRequest,
) -> Result<(AppBackup, Vec<Planned>), AppBackupError> {
    let (_, backup) = record::find_backup(repo, &req.backup).await?;
    record::check_mapping(&backup, &req.plan.namespaces)?;
    let objects = record::load_objects(repo, &backup).await?;
    let known: Vec<Exported> = objects
        .iter()
        .map(|(r, v)| Exported {
            r: r.clone(),
            value: v.clone(),
            origin: String::new(),
        })
        .collect();
    let types = crate::k8s::filter::types_of_objects(known.iter().map(|e| &e.value));
    crate::k8s::filter::check_known_kinds(
        "--include-objects",
        req.plan.include.iter().map(|f| f.kind.as_str()),
        &types,
    )
    .map_err(ClusterError::from)?;
    let options = RestorePlanOptions {
        kinds: Kinds::resolve(&req.types.0, &req.types.1, &types).map_err(ClusterError::from)?,
        ..req.plan.clone()
    };
    let plan = record::plan_restore(objects, &options);
    Ok((backup, plan))
}

/// The planned objects that exist on the target already (none on an output directory).
async fn conflicts(
    target: &Target,
    plan: Vec<Planned>,
) -> Result<(Vec<Planned>, Vec<ObjRef>), AppBackupError> {
    match target {
        Target::OutputDir(_) => Ok((plan, Vec::new())),
        Target::ClusterDir(dir) => {
            let dir = dir.clone();
            let (plan, found) = with_plan(plan, move |p| record::conflicts(&dir, p)).await;
            Ok((plan, found?))
        }
        Target::Live(live, _) => {
            let refs: Vec<ObjRef> = plan
                .iter()
                .filter(|p| p.skipped.is_none())
                .map(|p| p.target.clone())
                .collect();
            let found = live.existing(&refs).await?;
            Ok((plan, found))
        }
    }
}

/// The objects a live apply takes: the restored ones, in plan order, without the claims the
/// volume step created already.
pub fn objects_to_apply(plan: &[Planned], created: &[ObjRef]) -> Vec<ApplyItem> {
    plan.iter()
        .filter(|p| p.skipped.is_none() && !created.contains(&p.target))
        .map(Planned::apply_item)
        .collect()
}

/// Writes the plan to the target; the results in the order done.
async fn apply(
    repo: Arc<Repository>,
    backup: &AppBackup,
    plan: Vec<Planned>,
    target: &Target,
    policy: ExistingPolicy,
) -> Result<(Vec<Planned>, Vec<ApplyResult>), AppBackupError> {
    match target {
        Target::OutputDir(dir) => {
            // Objects first: the directory must be empty before anything is written.
            let out = dir.clone();
            let (plan, written) = with_plan(plan, move |p| record::write_output_dir(&out, p)).await;
            let mut r = written?;
            r.extend(
                volumes::restore_volumes_to_dir(repo, backup, &plan, dir, ExistingPolicy::Skip)
                    .await,
            );
            Ok((plan, r))
        }
        Target::ClusterDir(dir) => {
            // The data first: a workload must not start on an empty volume.
            let mut r =
                volumes::restore_volumes_to_dir(repo, backup, &plan, dir.root(), policy).await;
            let site = dir.clone();
            let (plan, applied) = with_plan(plan, move |p| {
                record::apply_to_cluster_dir(&site, p, policy)
            })
            .await;
            r.extend(applied?);
            Ok((plan, r))
        }
        Target::Live(live, movers) => {
            // The data first: a workload must not start on an empty volume.
            let mut plan = plan;
            let (mut r, created) =
                volumes::restore_volumes_live(live, movers.clone(), backup, &mut plan, false).await;
            let objects = objects_to_apply(&plan, &created);
            r.extend(live.apply(&objects, policy, CRD_WAIT).await?);
            Ok((plan, r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> RestoreFlags {
        RestoreFlags {
            from_backup: "b1".into(),
            ..Default::default()
        }
    }

    fn refused(f: RestoreFlags) -> String {
        RestoreRequest::new(f, MoverSettings::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_restore_needs_one_target_or_a_dry_run() {
        let e = refused(flags());
        for flag in ["--output-dir", "--cluster-dir", "--context", "--dry-run"] {
            assert!(e.contains(flag), "{e}");
        }
        let e = refused(RestoreFlags {
            output_dir: Some("/o".into()),
            context: Some("c".into()),
            ..flags()
        });
        assert!(e.contains("one target"), "{e}");
        let r = RestoreRequest::new(
            RestoreFlags {
                dry_run: true,
                ..flags()
            },
            MoverSettings::default(),
        )
        .unwrap();
        assert!(matches!(r.mode, RestoreMode::DryRun(None)));
        let r = RestoreRequest::new(
            RestoreFlags {
                context: Some("dr".into()),
                ..flags()
            },
            MoverSettings::default(),
        )
        .unwrap();
        assert!(
            matches!(r.mode, RestoreMode::Apply(Destination::Live { ref context, .. }) if context == "dr")
        );
    }

    #[test]
    fn validation_errors_name_the_flag() {
        let with = |f: fn(&mut RestoreFlags)| {
            let mut v = RestoreFlags {
                dry_run: true,
                ..flags()
            };
            f(&mut v);
            refused(v)
        };
        let e = with(|f| f.namespace_mapping = "pgdr".into());
        assert!(e.contains("--namespace-mapping"), "{e}");
        let e = with(|f| f.storage_class_mapping = "a:".into());
        assert!(e.contains("--storage-class-mapping"), "{e}");
        let e = with(|f| f.include_objects = "x".into());
        assert!(e.contains("--include-objects"), "{e}");
        let e = with(|f| f.include_resources = "a/b".into());
        assert!(e.contains("--include-resources"), "{e}");
        let e = with(|f| f.exclude_resources = "a b".into());
        assert!(e.contains("--exclude-resources"), "{e}");
        let e = with(|f| f.selector = "=x".into());
        assert!(e.contains("--selector"), "{e}");
    }

    fn planned(kind: &str, name: &str, skipped: Option<&str>) -> Planned {
        let r = ObjRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some("ns".into()),
            name: name.into(),
        };
        Planned {
            source: r.clone(),
            target: r,
            skipped: skipped.map(str::to_string),
            owners: Vec::new(),
            value: serde_json::json!({}),
        }
    }

    #[test]
    fn a_live_apply_skips_the_claims_the_volume_step_created() {
        let plan = vec![
            planned("PersistentVolumeClaim", "data-0", None),
            planned("PersistentVolumeClaim", "data-1", None),
            planned("StatefulSet", "db", None),
            planned("Pod", "db-0", Some("never restored")),
        ];
        let created = vec![plan[0].target.clone()];
        let names: Vec<String> = objects_to_apply(&plan, &created)
            .into_iter()
            .map(|i| i.r.name)
            .collect();
        assert_eq!(names, ["data-1", "db"]);
    }

    #[test]
    fn the_report_counts_outcomes_and_lists_what_is_not_restored() {
        let plan = vec![
            planned("ConfigMap", "a", None),
            planned("Pod", "p", Some("never restored")),
        ];
        let result = |outcome| ApplyResult {
            r: plan[0].target.clone(),
            outcome,
            detail: String::new(),
        };
        let report = RestoreReport::Applied {
            results: vec![result(Outcome::Created), result(Outcome::Failed)],
            plan: plan.clone(),
        };
        assert_eq!(report.count(Outcome::Created), 1);
        assert_eq!(report.count(Outcome::Failed), 1);
        assert_eq!(report.count(Outcome::Skipped), 0);
        let skipped: Vec<_> = report.not_restored().collect();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].1, "never restored");
        let dry = RestoreReport::Planned {
            plan,
            conflicts: Vec::new(),
        };
        assert_eq!(dry.count(Outcome::Failed), 0);
    }
}
