//! The operator: takes a cluster (a kube client with lifeboat's ServiceAccount) and the
//! `lifeboat.dev` resources in it; gives one kube-runtime controller per kind, driven by
//! watches, that does what the resources ask through the layers below (application backups,
//! retention, standby cycles, activation) and reports it in their status subresource
//! (conditions with a reason and a message naming the field or object at fault) and in
//! Kubernetes Events. `lifeboat controller` runs it.
//!
//! The modules, in the order they use each other: `leader` (a Lease, so two replicas never
//! run one schedule twice), `location` (a BackupLocation opened as a repository, and the
//! repository's backups shown as Backup objects), `policy` (SchedulePolicy validation),
//! `backup` (a Backup made, or its record forgotten on deletion when asked), `schedule`
//! (BackupSchedules create Backups on time and apply retention), `restore` (a Restore into
//! this cluster), `standby` (the DR site); `client` is the CLI's side (`lifeboat get`, and
//! failover through a Standby).
//!
//! Must not: crash-loop on a bad spec (it is a condition, and a fixed spec recovers on the
//! next reconcile); delete anything in a repository unless a policy's retention or a
//! Backup's `deletePolicy: Delete` says so; run while another replica holds the Lease.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::crd::{condition, set_condition, ConditionStatus, COND_READY};
use crate::k8s::csi::MoverSettings;
use crate::metrics::{counted, encode, Sorted};

mod leader;

mod location;

mod policy;

mod backup;

mod schedule;

mod restore;

mod standby;

pub mod client;

pub use leader::{LeaderOptions, LEASE_DURATION};

/// The field manager of everything the controller writes.
pub const MANAGER: &str = "lifeboat-controller";
/// Labels and annotations the controller puts on objects.
pub const LABEL_SCHEDULE: &str = "lifeboat.dev/schedule";
pub const LABEL_ORIGIN: &str = "lifeboat.dev/origin";
/// `lifeboat.dev/origin` of a Backup object made from a record already in the repository.
pub const ORIGIN_REPOSITORY: &str = "repository";

/// Why a reconcile failed (its object's conditions say so too); the controller retries it.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Live(#[from] crate::k8s::LiveError),
    #[error("the repository: {0}")]
    Repo(#[from] crate::repository::RepoError),
    #[error(transparent)]
    App(#[from] crate::app::record::AppBackupError),
    #[error(transparent)]
    Standby(#[from] crate::standby::StandbyError),
    #[error(transparent)]
    Catalog(#[from] crate::scheduler::catalog::CatalogError),
    #[error("{0}")]
    Failed(String),
    #[error("cannot start the controller: {0}")]
    Start(String),
}

impl OperatorError {
    /// A later attempt may succeed unchanged (the API or the bucket unreachable now).
    pub fn is_retryable(&self) -> bool {
        match self {
            OperatorError::Kube(_) => true,
            OperatorError::Live(e) => e.is_retryable(),
            OperatorError::Repo(e) => e.is_retryable(),
            OperatorError::App(e) => e.is_retryable(),
            OperatorError::Standby(e) => e.is_retryable(),
            OperatorError::Catalog(e) => e.is_retryable(),
            OperatorError::Failed(_) | OperatorError::Start(_) => false,
        }
    }
}

/// How `lifeboat controller` runs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// lifeboat's namespace: its BackupLocations, their Secrets, its Lease, the Backup
    /// objects of records found in a repository.
    pub namespace: String,
    /// The SQLite catalogs of standbys, and the repositories' caches.
    pub state_dir: PathBuf,
    pub movers: MoverSettings,
    pub leader: LeaderOptions,
    /// How often a BackupLocation is checked and its repository's backups listed.
    pub resync: Duration,
    /// Where /metrics, /healthz and /readyz are served.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// What every reconciler shares.
pub struct Operator {
    pub client: Client,
    pub options: ControllerOptions,
    recorder: Recorder,
    /// Repositories opened, by location (and the fingerprint of the settings they were
    /// opened with).
    repos: Mutex<BTreeMap<String, (String, Arc<crate::repository::Repository>)>>,
    /// Backups and Restores whose work runs in this process (their keys).
    running: Mutex<Vec<String>>,
    /// Standby catalogs, by Standby (`namespace/name`).
    catalogs: Mutex<BTreeMap<String, Arc<crate::scheduler::catalog::Catalog>>>,
    pub figures: Mutex<Figures>,
    pub cancel: CancellationToken,
}

/// What /metrics shows: recorded by the reconcilers, rendered at a given `now` (for the RPO
/// and lag clocks).
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Per schedule (`namespace/name`): runs by result, and the newest good backup's time.
    pub runs: BTreeMap<(String, ScheduleRun), u64>,
    pub last_success: BTreeMap<String, i64>,
    /// Per standby (`namespace/name`): the applied backup's time, and whether it is active.
    pub standby_applied: BTreeMap<String, i64>,
    pub standby_active: BTreeMap<String, bool>,
    /// Backups counted in `runs` already (`schedule/backup`).
    pub counted: std::collections::BTreeSet<String>,
    /// Per schedule: the newest good backup retention last ran after.
    pub retained: BTreeMap<String, String>,
}

/// A schedule's Backup as `lifeboat_schedule_runs_total` counts it: made, then once in its
/// final phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ScheduleRun {
    Started,
    Completed,
    PartiallyFailed,
    Failed,
}

impl ScheduleRun {
    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleRun::Started => "started",
            ScheduleRun::Completed => "completed",
            ScheduleRun::PartiallyFailed => "partially-failed",
            ScheduleRun::Failed => "failed",
        }
    }
}

/// Spelled as [`ScheduleRun::as_str`] (the crate's derive would write `PartiallyFailed`).
impl EncodeLabelValue for ScheduleRun {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct ScheduleLabels {
    schedule: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct RunLabels {
    schedule: String,
    result: ScheduleRun,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct StandbyLabels {
    standby: String,
}

impl Figures {
    /// The OpenMetrics text at `now` (Unix seconds).
    pub fn render(&self, now: i64) -> String {
        let age = |t: &i64| ConstGauge::new((now - t).max(0));
        let mut r = Registry::default();
        r.register(
            "lifeboat_schedule_runs",
            "Backups a schedule started, by result",
            counted(&self.runs, |(s, result)| RunLabels {
                schedule: s.clone(),
                result: *result,
            }),
        );
        r.register(
            "lifeboat_schedule_rpo_seconds",
            "Seconds since the schedule's newest good backup was taken",
            self.last_success
                .iter()
                .map(|(s, t)| {
                    (
                        ScheduleLabels {
                            schedule: s.clone(),
                        },
                        age(t),
                    )
                })
                .collect::<Sorted<_, _>>(),
        );
        r.register(
            "lifeboat_standby_lag_seconds",
            "Seconds since the backup a standby holds was taken",
            self.standby_applied
                .iter()
                .map(|(s, t)| (StandbyLabels { standby: s.clone() }, age(t)))
                .collect::<Sorted<_, _>>(),
        );
        r.register(
            "lifeboat_standby_active",
            "Whether a standby was failed over to (1)",
            self.standby_active
                .iter()
                .map(|(s, a)| {
                    let l = StandbyLabels { standby: s.clone() };
                    (l, ConstGauge::new(i64::from(*a)))
                })
                .collect::<Sorted<_, _>>(),
        );
        encode(&r)
    }
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// An RFC 3339 time of Unix seconds.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(crate::repository::rfc3339)
        .unwrap_or_default()
}

/// Unix seconds of an RFC 3339 time.
pub fn unix_of(t: &str) -> Option<i64> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

impl Operator {
    pub fn new(client: Client, options: ControllerOptions, cancel: CancellationToken) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(options.leader.identity.clone()),
        };
        Operator {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            options,
            repos: Default::default(),
            running: Default::default(),
            catalogs: Default::default(),
            figures: Default::default(),
            cancel,
        }
    }

    /// Whether work whose cached status says in progress was abandoned (the controller restarted,
    /// or another replica took over): it is not running in this process under `key`, and a fresh
    /// read of the object still says `in_progress`. The fresh read matters: the controller's
    /// cache can lag behind this process's own last status patch, so a reconcile queued while
    /// the work ran may still see it in progress after it ended.
    pub async fn abandoned<K>(
        &self,
        api: &Api<K>,
        key: &str,
        name: &str,
        in_progress: fn(&K) -> bool,
    ) -> Result<bool, kube::Error>
    where
        K: Clone + DeserializeOwned + std::fmt::Debug,
    {
        if self
            .running
            .lock()
            .expect("running")
            .iter()
            .any(|k| k == key)
        {
            return Ok(false);
        }
        Ok(in_progress(&api.get_status(name).await?))
    }

    /// An Event on `obj` (a failure to write it is only logged).
    pub async fn event<K>(&self, obj: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(
                "could not write an Event for {}: {e}",
                obj.meta().name.as_deref().unwrap_or("?")
            );
        }
    }
}

/// Writes `status` as the object's status subresource, by server-side apply: a field this
/// status leaves out (a time cleared, a failure gone) is removed, where a merge patch would
/// keep it.
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

/// The `Ready` condition of a reconcile: true, or false with why (`reason` CamelCase, the
/// message naming the field or object at fault).
pub fn ready(
    conditions: &mut Vec<Condition>,
    result: Result<&str, (&str, String)>,
    generation: Option<i64>,
) {
    let c = match result {
        Ok(reason) => condition(
            COND_READY,
            ConditionStatus::True,
            reason,
            "",
            generation,
            now(),
        ),
        Err((reason, message)) => condition(
            COND_READY,
            ConditionStatus::False,
            reason,
            message,
            generation,
            now(),
        ),
    };
    set_condition(conditions, c);
}

/// Whether a status needs writing: it differs from what the object has, other than in the
/// clocks that move by themselves (RPO, lag) by less than `slack` seconds. Writing a status
/// wakes the object's watch, so a status that changes every second must not be rewritten on
/// every reconcile.
pub fn differs<S: Serialize>(old: Option<&S>, new: &S, clocks: &[&str], slack: i64) -> bool {
    let Some(old) = old else { return true };
    let (mut a, mut b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    for k in clocks {
        let (x, y) = (
            a.get(*k).and_then(|v| v.as_i64()),
            b.get(*k).and_then(|v| v.as_i64()),
        );
        if let (Some(x), Some(y)) = (x, y) {
            if (x - y).abs() < slack {
                b[*k] = a[*k].clone();
            }
        }
    }
    // Condition transition times are kept by set_condition; nothing else moves by itself.
    for v in [&mut a, &mut b] {
        if let Some(cs) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                }
            }
        }
    }
    a != b
}

/// `namespace/name` of an object.
pub fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.name_any()
    )
}

/// Runs every controller until `cancel`, while this process holds the Lease (it gives up
/// and returns an error when another replica takes the Lease over).
pub async fn run(
    client: Client,
    options: ControllerOptions,
    cancel: CancellationToken,
) -> Result<(), OperatorError> {
    let op = Arc::new(Operator::new(client.clone(), options, cancel.clone()));
    if let Some(addr) = op.options.metrics_addr {
        let listener = crate::metrics::listen(addr)
            .await
            .map_err(|e| OperatorError::Start(e.to_string()))?;
        let o = op.clone();
        tokio::spawn(crate::metrics::serve_metrics(
            listener,
            Arc::new(move || o.figures.lock().expect("figures").render(now())),
            cancel.clone(),
        ));
    }
    let lost = leader::acquire(&client, &op.options.namespace, &op.options.leader, &cancel).await?;
    let Some(lost) = lost else { return Ok(()) };
    tracing::info!(identity = %op.options.leader.identity, "leading: the controllers start");
    let stop = CancellationToken::new();
    let s = stop.clone();
    let c = cancel.clone();
    let l = lost.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = c.cancelled() => {}
            _ = l.cancelled() => {}
        }
        s.cancel();
    });
    futures::join!(
        location::controller(op.clone(), stop.clone()),
        policy::controller(op.clone(), stop.clone()),
        backup::controller(op.clone(), stop.clone()),
        schedule::controller(op.clone(), stop.clone()),
        restore::controller(op.clone(), stop.clone()),
        standby::controller(op.clone(), stop.clone()),
    );
    if lost.is_cancelled() && !cancel.is_cancelled() {
        return Err(OperatorError::Failed(
            "lost the Lease to another replica: stopping (a restart waits for it again)".into(),
        ));
    }
    Ok(())
}

/// Runs controller `c` with `reconcile` until `stop`; a failed reconcile is tried again as
/// [`retry_later`] says.
pub async fn drive<K, R, Fut>(
    c: kube::runtime::Controller<K>,
    reconcile: R,
    op: Arc<Operator>,
    stop: CancellationToken,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    R: FnMut(Arc<K>, Arc<Operator>) -> Fut,
    Fut: std::future::Future<Output = Result<kube::runtime::controller::Action, OperatorError>>
        + Send
        + 'static,
{
    use futures::StreamExt;
    c.graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, retry_later, op)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(kind = %K::kind(&()), "reconcile: {e}");
            }
        })
        .await;
}

/// Runs the future `f` makes on a blocking-pool thread and waits for it: a backup, restore or
/// standby cycle is not provably Send (higher-ranked lifetimes in the rules' step, see
/// [`crate::scheduler::runner`]), which a reconciler's future must be. Its own tasks still run
/// on the runtime. `what` names it if the thread dies.
pub async fn off_runtime<T, F, Fut>(what: &str, f: F) -> Result<T, OperatorError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, OperatorError>>,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(f()))
        .await
        .unwrap_or_else(|e| {
            Err(OperatorError::Failed(format!(
                "the {what}'s worker failed: {e}"
            )))
        })
}

/// A failed reconcile is tried again: soon when it may pass unchanged, later when it needs a
/// change (which a watch event brings sooner).
pub fn retry_later<K>(
    obj: Arc<K>,
    e: &OperatorError,
    _op: Arc<Operator>,
) -> kube::runtime::controller::Action
where
    K: Resource<DynamicType = ()>,
{
    tracing::warn!(kind = %K::kind(&()), object = %key(&*obj), "reconcile failed: {e}");
    kube::runtime::controller::Action::requeue(if e.is_retryable() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::BackupScheduleStatus;

    #[test]
    fn a_status_is_rewritten_when_it_changed_but_not_for_a_clock_moving_within_its_slack() {
        let mut old = BackupScheduleStatus {
            rpo_seconds: Some(100),
            ..Default::default()
        };
        ready(&mut old.conditions, Ok("Scheduled"), Some(1));
        let mut new = old.clone();
        new.rpo_seconds = Some(120);
        assert!(
            !differs(Some(&old), &new, &["rpoSeconds"], 30),
            "20 s within 30"
        );
        new.rpo_seconds = Some(131);
        assert!(
            differs(Some(&old), &new, &["rpoSeconds"], 30),
            "31 s past it"
        );
        new.rpo_seconds = Some(100);
        new.last_successful_backup = Some("b".into());
        assert!(
            differs(Some(&old), &new, &["rpoSeconds"], 30),
            "a new good backup"
        );
        let mut later = old.clone();
        later.conditions[0].last_transition_time =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(5).unwrap(),
            );
        assert!(
            !differs(Some(&old), &later, &[], 0),
            "transition times alone"
        );
        assert!(differs(None, &old, &[], 0), "no status yet");
    }

    #[test]
    fn the_metrics_give_the_rpo_and_the_lag_as_of_now() {
        let mut f = Figures::default();
        f.last_success.insert("ns/s".into(), 1000);
        f.standby_applied.insert("lifeboat/app".into(), 900);
        f.runs.insert(("ns/s".into(), ScheduleRun::Completed), 3);
        f.runs
            .insert(("ns/s".into(), ScheduleRun::PartiallyFailed), 1);
        // A quote, a backslash and a newline in a label: escaped, one line still.
        f.standby_active.insert("x\"y\\z\nw".into(), true);
        let text = f.render(1060);
        assert!(
            text.contains(r#"lifeboat_standby_active{standby="x\"y\\z\nw"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                "lifeboat_schedule_runs_total{schedule=\"ns/s\",result=\"partially-failed\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert!(
            text.contains("lifeboat_schedule_rpo_seconds{schedule=\"ns/s\"} 60\n"),
            "{text}"
        );
        assert!(
            text.contains("lifeboat_standby_lag_seconds{standby=\"lifeboat/app\"} 160\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "lifeboat_schedule_runs_total{schedule=\"ns/s\",result=\"completed\"} 3\n"
            ),
            "{text}"
        );
    }
}
