//! The CLI's side of the operator: takes a cluster; gives the lifeboat resources as table
//! rows (`lifeboat get`), and failover through a Standby's `spec.active` when a controller
//! runs there (`lifeboat activate|deactivate`). Reads and patches resources only; the
//! controller does the work.

use std::time::Duration;

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use super::OperatorError;
use crate::crd::{Backup, BackupSchedule, Restore, Standby};

/// What `lifeboat get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Backups,
    Schedules,
    Restores,
    Standby,
}

/// One resource as `lifeboat get` shows it: its columns, in order, and the object itself.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    pub columns: Vec<(String, String)>,
    #[serde(skip)]
    pub object: serde_json::Value,
}

fn or_dash(v: Option<String>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

fn ready_of(c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> String {
    c.iter()
        .find(|c| c.type_ == crate::crd::COND_READY)
        .map(|c| {
            if c.status == "True" {
                c.reason.clone()
            } else {
                format!("{}: {}", c.reason, c.message)
            }
        })
        .unwrap_or_else(|| "-".into())
}

/// Every `K` in `namespace` (None: every namespace) as rows of the `columns` it gives.
async fn rows<K>(
    client: &Client,
    namespace: Option<&str>,
    columns: impl Fn(&K) -> Vec<(&'static str, String)>,
) -> Result<Vec<Row>, OperatorError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|o| Row {
            namespace: o.namespace().unwrap_or_default(),
            name: o.name_any(),
            columns: columns(&o)
                .into_iter()
                .map(|(h, v)| (h.to_string(), v))
                .collect(),
            object: serde_json::to_value(&o).unwrap_or_default(),
        })
        .collect())
}

/// The resources of `kind` in `namespace` (None: every namespace), by namespace and name.
pub async fn list(
    client: &Client,
    kind: Kind,
    namespace: Option<&str>,
) -> Result<Vec<Row>, OperatorError> {
    let mut rows = match kind {
        Kind::Backups => {
            rows(client, namespace, |b: &Backup| {
                let s = b.status.clone().unwrap_or_default();
                let failed = s.phase == Some(crate::crd::BackupPhase::Failed);
                vec![
                    ("PHASE", or_dash(s.phase.map(|p| format!("{p:?}")))),
                    ("SCHEDULE", or_dash(b.spec.schedule.clone())),
                    ("TAKEN", or_dash(s.backup_time.clone())),
                    ("VOLUMES", or_dash(s.volumes.map(|v| v.to_string()))),
                    (
                        "ERROR",
                        if failed {
                            ready_of(&s.conditions)
                        } else {
                            "-".into()
                        },
                    ),
                ]
            })
            .await?
        }
        Kind::Schedules => {
            rows(client, namespace, |b: &BackupSchedule| {
                let s = b.status.clone().unwrap_or_default();
                vec![
                    ("POLICY", b.spec.schedule_policy_name.clone()),
                    ("LAST GOOD", or_dash(s.last_successful_backup.clone())),
                    ("RPO", or_dash(s.rpo_seconds.map(|r| format!("{r}s")))),
                    ("NEXT", or_dash(s.next_run.clone())),
                    ("READY", ready_of(&s.conditions)),
                ]
            })
            .await?
        }
        Kind::Restores => {
            rows(client, namespace, |b: &Restore| {
                let s = b.status.clone().unwrap_or_default();
                vec![
                    ("BACKUP", b.spec.backup_name.clone()),
                    ("PHASE", or_dash(s.phase.map(|p| format!("{p:?}")))),
                    ("READY", ready_of(&s.conditions)),
                ]
            })
            .await?
        }
        Kind::Standby => {
            rows(client, namespace, |b: &Standby| {
                let s = b.status.clone().unwrap_or_default();
                vec![
                    ("SCHEDULE", b.spec.schedule.clone()),
                    ("ACTIVE", b.spec.active.to_string()),
                    ("APPLIED", or_dash(s.applied_backup.clone())),
                    ("LAG", or_dash(s.lag_seconds.map(|l| format!("{l}s")))),
                    ("READY", ready_of(&s.conditions)),
                ]
            })
            .await?
        }
    };
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

/// What a flip of a Standby did (`activate|deactivate --json` on a site whose controller
/// holds the namespace).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Flip {
    /// The Standby object (`namespace/name`).
    pub standby: String,
    pub namespace: String,
    /// Its `spec.active` as set.
    pub active: bool,
    /// The Standby's RTO: seconds from its last activation to its workloads ready, as the
    /// controller measured it (null: none measured yet).
    pub rto_seconds: Option<f64>,
    /// Its Ready condition's message once the controller acted (or why the wait ended).
    pub ready: String,
}

/// Sets `spec.active` of the Standby that holds namespace `ns` and waits up to `wait` for the
/// controller to act on it. None: no Standby holds the namespace (the caller acts directly).
pub async fn flip(
    client: &Client,
    ns: &str,
    active: bool,
    wait: Duration,
) -> Result<Option<Flip>, OperatorError> {
    let all: Api<Standby> = Api::all(client.clone());
    let list = match all.list(&ListParams::default()).await {
        Ok(l) => l.items,
        // No lifeboat CRDs on this cluster: no controller either.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(s) = list.into_iter().find(|s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.namespaces.iter().any(|n| n.namespace == ns))
    }) else {
        return Ok(None);
    };
    let (name, sns) = (s.name_any(), s.namespace().unwrap_or_default());
    let api: Api<Standby> = Api::namespaced(client.clone(), &sns);
    let patch = serde_json::json!({"spec": {"active": active}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    // Watched (kube-runtime's await_condition), not polled: the controller's status write
    // ends the wait.
    let watched =
        kube::runtime::wait::await_condition(api.clone(), &name, move |s: Option<&Standby>| {
            s.and_then(|s| s.status.as_ref())
                .is_some_and(|st| acted(st, active))
        });
    let (st, acted) = match tokio::time::timeout(wait, watched).await {
        Ok(Ok(Some(s))) => (s.status.unwrap_or_default(), true),
        Ok(Ok(None)) => {
            return Err(OperatorError::Failed(format!(
                "Standby {sns}/{name} was deleted while lifeboat waited for its controller"
            )))
        }
        Ok(Err(kube::runtime::wait::Error::ProbeFailed(e))) => {
            return Err(crate::k8s::watch::watch_error(&format!("Standby {sns}/{name}"), e).into())
        }
        Err(_) => (api.get(&name).await?.status.unwrap_or_default(), false),
    };
    Ok(Some(Flip {
        standby: format!("{sns}/{name}"),
        namespace: ns.to_string(),
        active,
        rto_seconds: st.rto_seconds,
        ready: if acted {
            ready_of(&st.conditions)
        } else {
            format!(
                "the controller did not act within {} s; `lifeboat get standby` shows it",
                wait.as_secs()
            )
        },
    }))
}

/// Whether the controller has acted on `spec.active` = `active`: activated, or every
/// namespace held again.
fn acted(st: &crate::crd::StandbyStatus, active: bool) -> bool {
    if active {
        st.activated_at.is_some()
    } else {
        st.activated_at.is_none()
            && st
                .namespaces
                .iter()
                .all(|n| n.state != crate::crd::NamespaceState::Activated)
    }
}
