//! The custom resources of group `lifeboat.dev`, version `v1alpha1`: takes nothing; gives
//! the typed specs and statuses of the seven kinds that `lifeboat controller` reconciles and
//! `lifeboat crds` writes under `deploy/base/crds/` (kube's `CustomResource` with schemars, so the
//! CustomResourceDefinitions are generated from these structs and nothing else).
//!
//! The specs of `SchedulePolicy`, `BackupSchedule` and `Rule` are the documents the file
//! configuration of `lifeboat server` has always read: a file of today is a valid resource,
//! and the same validation ([`crate::scheduler::config`], [`crate::hooks`]) judges both.
//! Pure data: no IO, no validation beyond the shape (serde `deny_unknown_fields`).
//!
//! | kind | scope |
//! |---|---|
//! | [`BackupLocation`] | namespaced (lifeboat's namespace) |
//! | [`SchedulePolicy`] | cluster |
//! | [`Rule`] | namespaced |
//! | [`BackupSchedule`] | namespaced |
//! | [`Backup`] | namespaced |
//! | [`Restore`] | namespaced |
//! | [`Standby`] | namespaced, on the DR cluster |

// kube's `printcolumn(...)` attributes repeat `type_ = ...` by design; the lint takes them for
// duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod status;

pub use status::{
    condition, set_condition, BackupPhase, CheckPhase, ConditionStatus, ItemFailure, RestorePhase,
    COND_READY,
};

/// The API group of every lifeboat resource.
pub const GROUP: &str = "lifeboat.dev";
/// Its one version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every lifeboat resource (and of the file configuration's documents).
pub const API_VERSION: &str = "lifeboat.dev/v1alpha1";

// ----- BackupLocation -----------------------------------------------------------------------

/// A repository: where backups go and where a DR site reads them from.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "BackupLocation",
    namespaced,
    status = "BackupLocationStatus",
    shortname = "bl",
    category = "lifeboat",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repository"),
    printcolumn(name = "Last check", type_ = "date", json_path = ".status.lastChecked"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupLocationSpec {
    /// The repository's URL: `s3://BUCKET/PREFIX` or `file:///path`.
    pub repository: String,
    /// S3 endpoint (e.g. `https://minio.example:9000`); empty: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region; empty: `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret (in this namespace) with the S3 keys `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN` for temporary keys); empty: the
    /// controller's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Secret key (in this namespace) holding the repository password.
    pub password_secret: SecretKeyRef,
    /// The location is read, never written: backups and retention refuse it (a DR site's
    /// view of the primary's bucket).
    #[serde(default)]
    pub read_only: bool,
    /// Requests, limits, placement and user of the mover, restore, verify and standby Jobs
    /// of this location's backups, restores and standbys; what is not set is the
    /// controller's (`--mover-*` flags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub movers: Option<MoverPodSpec>,
}

/// The pods of lifeboat's Jobs (see README, "Jobs on locked-down clusters").
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MoverPodSpec {
    /// CPU and memory requests and limits (quantities: `250m`, `2`, `256Mi`, `2Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// Node selector of the Jobs' pods (replaces the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the Jobs' pods (replace the controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
    /// runAsUser; 0 (root) leaves Pod Security `restricted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<i64>,
    /// Supplemental groups, e.g. the group owning the nodes' block devices (replace the
    /// controller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplemental_groups: Option<Vec<i64>>,
}

/// One key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    /// The key; default `password`.
    #[serde(default = "password_key")]
    pub key: String,
}

fn password_key() -> String {
    "password".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupLocationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CheckPhase>,
    #[serde(default)]
    pub reachable: bool,
    /// When the repository was last opened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<String>,
    /// Backup records in the repository at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ----- SchedulePolicy -----------------------------------------------------------------------

/// When backups are taken and how many are kept: exactly one of `cron`, `interval`, `daily`,
/// `weekly`, `monthly`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "SchedulePolicy",
    status = "ConditionsStatus",
    shortname = "sp",
    category = "lifeboat",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields)]
pub struct SchedulePolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IntervalSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<AtSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly: Option<AtSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<AtSpec>,
    /// IANA time zone of the times (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// How many backups of each schedule under this policy are kept; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<Retain>,
}

/// A cron expression (5 or 6 fields).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CronSpec {
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// A fixed period: the sum of the fields.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntervalSpec {
    #[serde(default)]
    pub seconds: u64,
    #[serde(default)]
    pub minutes: u64,
    #[serde(default)]
    pub hours: u64,
}

/// A time of day (`10:13PM`, `22:13`), and the weekday (`weekly`) or date (`monthly`).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AtSpec {
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<u32>,
}

/// How many backups a policy keeps (grandfather-father-son). A backup kept by any rule stays.
/// All zero: keep everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retain {
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
}

/// A status of conditions only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionsStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ----- Rule ---------------------------------------------------------------------------------

/// Commands run in an application's pods before (pre) or after (post) its volumes are
/// snapshotted.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "Rule",
    namespaced,
    category = "lifeboat"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    pub rules: Vec<RuleItemSpec>,
    /// `Abort` (default): a failed pre action fails the backup; `Continue`: a warning.
    #[serde(default)]
    pub on_error: OnError,
    /// How long each action may take (`60s`, `5m`); default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// What to do when a pre action fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
pub enum OnError {
    /// The backup fails and no snapshot is used.
    #[default]
    Abort,
    /// The backup goes on and records a warning.
    Continue,
}

/// The pods (by labels) and container that a set of actions runs in.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleItemSpec {
    pub pod_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub actions: Vec<ActionSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActionSpec {
    /// `command`, the one type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The shell command (`${WAIT_CMD}` where a background action holds).
    pub value: String,
    #[serde(default)]
    pub background: bool,
    #[serde(default)]
    pub run_in_single_pod: bool,
}

// ----- BackupSchedule -----------------------------------------------------------------------

/// Backups of an application by a policy.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    status = "BackupScheduleStatus",
    shortname = "bs",
    category = "lifeboat",
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.schedulePolicyName"
    ),
    printcolumn(
        name = "Last good",
        type_ = "string",
        json_path = ".status.lastSuccessfulBackup"
    ),
    printcolumn(name = "RPO s", type_ = "integer", json_path = ".status.rpoSeconds"),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextRun"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    pub schedule_policy_name: String,
    /// No new runs while true.
    #[serde(default)]
    pub suspend: bool,
    pub template: BackupTemplate,
    /// The BackupLocation (in lifeboat's namespace) the backups go to; empty: the one
    /// named `default`. The file configuration does not use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// What each run of a schedule backs up.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupTemplate {
    pub namespaces: Vec<String>,
    /// A label selector (`app=web`, `tier in (a,b)`); empty: everything.
    #[serde(default)]
    pub selector: String,
    /// Rules before the snapshot: Rule objects in the schedule's namespace (files, relative
    /// to the configuration, for `lifeboat server`).
    #[serde(default)]
    pub pre_rules: Vec<String>,
    #[serde(default)]
    pub post_rules: Vec<String>,
    /// Whether the objects (the configuration) are backed up.
    #[serde(default = "yes")]
    pub include_resources: bool,
    /// Whether the claims' data is backed up.
    #[serde(default = "yes")]
    pub include_volumes: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The newest run's Backup and when it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// The newest Backup that reached Completed, and when it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<String>,
    /// Seconds since the newest good backup was taken: the data a failure now would lose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ----- Backup -------------------------------------------------------------------------------

/// One application backup: made by the controller when created, or shown from the
/// repository (label `lifeboat.dev/origin: repository`) when a location already holds it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    category = "lifeboat",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(
        name = "Completed",
        type_ = "date",
        json_path = ".status.completionTime"
    ),
    printcolumn(name = "Volumes", type_ = "integer", json_path = ".status.volumes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackupSpec {
    /// Namespaces by name.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespace patterns (`*`, `?`) added to `namespaces`.
    #[serde(default)]
    pub include_namespaces: Vec<String>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// A label selector; empty: everything in the namespaces.
    #[serde(default)]
    pub selector: String,
    /// Resource types (`deployments`, `configmaps`, `deployments.apps`); empty: all.
    #[serde(default)]
    pub included_resources: Vec<String>,
    #[serde(default)]
    pub excluded_resources: Vec<String>,
    /// Rule objects (in this namespace) run before and after the snapshot.
    #[serde(default)]
    pub pre_rules: Vec<String>,
    #[serde(default)]
    pub post_rules: Vec<String>,
    #[serde(default = "yes")]
    pub include_resources: bool,
    #[serde(default = "yes")]
    pub include_volumes: bool,
    /// The BackupLocation; empty: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The BackupSchedule the backup counts for (retention is per schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// What deleting this object does to the backup in the repository: `Retain` (default)
    /// keeps it, `Delete` forgets it.
    #[serde(default)]
    pub delete_policy: DeletePolicy,
}

/// What deleting a Backup object does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
pub enum DeletePolicy {
    #[default]
    Retain,
    Delete,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// The backup's id in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    /// When the backup was taken (the record's time, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_uploaded: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Parts of the scope not captured (the backup is PartiallyFailed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ItemFailure>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ----- Restore ------------------------------------------------------------------------------

/// A restore of a backup into this cluster.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "Restore",
    namespaced,
    status = "RestoreStatus",
    category = "lifeboat",
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.backupName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Created", type_ = "integer", json_path = ".status.created"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreSpec {
    pub backup_name: String,
    /// The BackupLocation; empty: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Source namespace to target namespace.
    #[serde(default)]
    pub namespace_mapping: BTreeMap<String, String>,
    #[serde(default)]
    pub storage_class_mapping: BTreeMap<String, String>,
    #[serde(default)]
    pub included_resources: Vec<String>,
    #[serde(default)]
    pub excluded_resources: Vec<String>,
    #[serde(default)]
    pub selector: String,
    /// `none` (default): an object that exists is left as it is; `update`: it is updated.
    #[serde(default)]
    pub existing_resource_policy: ExistingResourcePolicy,
    /// Workloads start at their backed-up replicas (true, default) or are held at 0.
    #[serde(default = "yes")]
    pub start_applications: bool,
    /// Plan and report conflicts; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExistingResourcePolicy {
    #[default]
    None,
    Update,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ItemFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

// ----- Standby ------------------------------------------------------------------------------

/// A warm standby of a schedule's applications on this (the DR) cluster: held at 0 replicas
/// and kept at the newest backup while `active` is false; failed over when true.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "lifeboat.dev",
    version = "v1alpha1",
    kind = "Standby",
    namespaced,
    status = "StandbyStatus",
    category = "lifeboat",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Active", type_ = "boolean", json_path = ".spec.active"),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.appliedBackup"
    ),
    printcolumn(name = "Lag s", type_ = "integer", json_path = ".status.lagSeconds"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StandbySpec {
    /// The BackupLocation (in lifeboat's namespace) holding the primary's backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The primary's BackupSchedule whose backups are followed.
    pub schedule: String,
    /// Source namespace to the namespace on this cluster; a namespace not named keeps its
    /// name.
    #[serde(default)]
    pub namespace_mapping: BTreeMap<String, String>,
    /// false: held at 0 replicas and kept current; true: failed over (scaled up, no longer
    /// updated).
    #[serde(default)]
    pub active: bool,
    /// Time between checks for a newer backup (`30s`, `5m`); default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// A claim that exists but that standby did not write is overwritten whole (failback
    /// onto a repaired primary) instead of failing the namespace.
    #[serde(default)]
    pub overwrite_claims: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StandbyStatus {
    /// The backup the site holds (every namespace applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_backup: Option<String>,
    /// Seconds between the newest backup in the repository and now, when the site holds it;
    /// else since the applied one was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cycle: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StandbyNamespaceStatus>,
    /// When the site was activated, and how long until its workloads were ready (the RTO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StandbyNamespaceStatus {
    pub namespace: String,
    pub source_namespace: String,
    pub state: NamespaceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a namespace of a standby site stands after a cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NamespaceState {
    /// Being applied by this cycle (a finished cycle reports none so).
    #[default]
    Pending,
    /// The newest backup was applied.
    Applied,
    /// It held the newest backup already.
    UpToDate,
    /// Failed over to: left alone.
    Activated,
    /// Not applied (`error` says why); the site keeps its previous state.
    Failed,
}

impl std::fmt::Display for NamespaceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamespaceState::Pending => "pending",
            NamespaceState::Applied => "applied",
            NamespaceState::UpToDate => "up-to-date",
            NamespaceState::Activated => "activated",
            NamespaceState::Failed => "failed",
        })
    }
}

/// Every CustomResourceDefinition, as `lifeboat crds` writes them: (file name, object).
pub fn definitions() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube::CustomResourceExt;
    vec![
        ("backuplocations.yaml", BackupLocation::crd()),
        ("schedulepolicies.yaml", SchedulePolicy::crd()),
        ("rules.yaml", Rule::crd()),
        ("backupschedules.yaml", BackupSchedule::crd()),
        ("backups.yaml", Backup::crd()),
        ("restores.yaml", Restore::crd()),
        ("standbys.yaml", Standby::crd()),
    ]
}

/// The header of each generated file.
pub const GENERATED: &str =
    "# Generated from src/crd/ by `lifeboat crds --out deploy/base/crds`; do not edit.\n";

/// Every CustomResourceDefinition as YAML: (file name, text), each text [`GENERATED`] and
/// one document.
pub fn rendered() -> Vec<(&'static str, String)> {
    definitions()
        .into_iter()
        .map(|(file, crd)| {
            let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD serializes");
            (file, format!("{GENERATED}{yaml}"))
        })
        .collect()
}
