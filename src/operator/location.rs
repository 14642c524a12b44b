//! BackupLocations: a location opened as a repository (its S3 keys and password read from
//! Secrets in lifeboat's namespace), checked each resync, and its repository's backups shown
//! as Backup objects (label `lifeboat.dev/origin: repository`) when no Backup of that name
//! exists: a controller on a new cluster pointed at an existing bucket sees what it holds.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::{differs, now, patch_status, ready, rfc3339, Operator, OperatorError};
use crate::crd::{
    Backup, BackupLocation, BackupLocationSpec, BackupPhase, BackupSpec, BackupStatus, CheckPhase,
    DeletePolicy,
};
use crate::k8s::csi::MoverSettings;
use crate::repository::Repository;
use crate::store::s3::S3Settings;

/// The location a resource names, or `default`.
pub fn name_of(location: Option<&str>) -> &str {
    location.filter(|l| !l.is_empty()).unwrap_or("default")
}

/// A location, opened.
pub struct Opened {
    pub repo: Arc<Repository>,
    /// The movers' settings, their Secret's data from this location.
    pub movers: MoverSettings,
    pub read_only: bool,
}

/// Why a location cannot be used: a condition's reason and message.
pub type Unusable = (&'static str, String);

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    let data = s.data.as_ref()?.get(key)?;
    String::from_utf8(data.0.clone()).ok()
}

async fn secret(op: &Operator, name: &str, field: &str) -> Result<Secret, Unusable> {
    let api: Api<Secret> = Api::namespaced(op.client.clone(), &op.options.namespace);
    match api.get_opt(name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err((
            "SecretNotFound",
            format!(
                "{field}: no Secret `{name}` in namespace {}; create it",
                op.options.namespace
            ),
        )),
        Err(e) => Err(("SecretUnreadable", format!("{field}: Secret `{name}`: {e}"))),
    }
}

/// Opens the BackupLocation `name` of lifeboat's namespace (the repository is kept open
/// while its settings and Secrets are unchanged).
pub async fn open(op: &Operator, name: &str) -> Result<Opened, Unusable> {
    let api: Api<BackupLocation> = Api::namespaced(op.client.clone(), &op.options.namespace);
    let loc = match api.get_opt(name).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Err((
                "LocationNotFound",
                format!(
                    "no BackupLocation `{name}` in namespace {}",
                    op.options.namespace
                ),
            ))
        }
        Err(e) => {
            return Err((
                "LocationUnreadable",
                format!("BackupLocation `{name}`: {e}"),
            ))
        }
    };
    open_spec(op, name, &loc.spec).await
}

async fn open_spec(
    op: &Operator,
    name: &str,
    spec: &BackupLocationSpec,
) -> Result<Opened, Unusable> {
    let pw_secret = secret(op, &spec.password_secret.name, "spec.passwordSecret").await?;
    let password = secret_value(&pw_secret, &spec.password_secret.key).ok_or_else(|| {
        (
            "SecretKeyMissing",
            format!(
                "spec.passwordSecret: Secret `{}` has no key `{}`",
                spec.password_secret.name, spec.password_secret.key
            ),
        )
    })?;
    let mut env = BTreeMap::new();
    env.insert("LIFEBOAT_REPOSITORY".to_string(), spec.repository.clone());
    env.insert("LIFEBOAT_PASSWORD".to_string(), password.clone());
    let mut fingerprint = format!(
        "{}|{}",
        serde_json::to_string(spec).unwrap_or_default(),
        pw_secret.resource_version().unwrap_or_default()
    );
    let mut s3 = S3Settings {
        endpoint: spec.endpoint.clone(),
        region: spec.region.clone(),
        access_key_id: None,
        secret_access_key: None,
        session_token: None,
    };
    if let Some(c) = &spec.credentials_secret {
        let keys = secret(op, c, "spec.credentialsSecret").await?;
        for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let v = secret_value(&keys, k).ok_or_else(|| {
                (
                    "SecretKeyMissing",
                    format!("spec.credentialsSecret: Secret `{c}` has no key `{k}`"),
                )
            })?;
            env.insert(k.to_string(), v);
        }
        s3.access_key_id = env.get("AWS_ACCESS_KEY_ID").cloned();
        s3.secret_access_key = env.get("AWS_SECRET_ACCESS_KEY").cloned();
        // Temporary keys carry a session token; it is optional, and goes to the movers too.
        if let Some(t) = secret_value(&keys, "AWS_SESSION_TOKEN") {
            env.insert("AWS_SESSION_TOKEN".into(), t.clone());
            s3.session_token = Some(t);
        }
        fingerprint.push_str(&keys.resource_version().unwrap_or_default());
    }
    if let Some(e) = &spec.endpoint {
        env.insert("AWS_ENDPOINT_URL_S3".into(), e.clone());
    }
    if let Some(r) = &spec.region {
        env.insert("AWS_REGION".into(), r.clone());
    }
    let mut movers = MoverSettings {
        secret_data: Some(env),
        ..op.options.movers.clone()
    };
    if let Some(m) = &spec.movers {
        check_quantities(m)?;
        movers.pod = mover_pod(m, movers.pod);
    }
    if let Some((f, repo)) = op.repos.lock().expect("repos").get(name) {
        if *f == fingerprint {
            return Ok(Opened {
                repo: repo.clone(),
                movers,
                read_only: spec.read_only,
            });
        }
    }
    let options = crate::store::StoreOptions::default();
    let store = crate::store::open_with(&spec.repository, Some(s3), &options)
        .await
        .map_err(|e| ("RepositoryUnreachable", format!("spec.repository: {e}")))?;
    let cache = op.options.state_dir.join("cache");
    let repo = Repository::open(store, password.as_bytes(), Some(cache), op.cancel.clone())
        .await
        .map_err(|e| {
            let reason = if matches!(e, crate::repository::RepoError::WrongPassword { .. }) {
                "WrongPassword"
            } else {
                "RepositoryUnusable"
            };
            (reason, format!("spec.repository {}: {e}", spec.repository))
        })?;
    // Backups and standby cycles wait out a forget or prune rather than fail at once.
    let repo = Arc::new(repo.with_lock_wait(crate::scheduler::runner::LOCK_WAIT));
    op.repos
        .lock()
        .expect("repos")
        .insert(name.to_string(), (fingerprint, repo.clone()));
    Ok(Opened {
        repo,
        movers,
        read_only: spec.read_only,
    })
}

async fn reconcile(loc: Arc<BackupLocation>, op: Arc<Operator>) -> Result<Action, OperatorError> {
    let name = loc.name_any();
    let api: Api<BackupLocation> = Api::namespaced(op.client.clone(), &op.options.namespace);
    let mut status = loc.status.clone().unwrap_or_default();
    let generation = loc.metadata.generation;
    let checked = match open_spec(&op, &name, &loc.spec).await {
        Ok(o) => crate::app::record::list_backups(&o.repo)
            .await
            .map(|b| (o, b))
            .map_err(|e| ("RepositoryUnreadable", e.to_string())),
        Err(e) => Err(e),
    };
    let synced = match &checked {
        Ok((_, backups)) => show_backups(&op, &name, backups).await,
        Err(_) => Ok(0),
    };
    status.last_checked = Some(rfc3339(now()));
    status.observed_generation = generation;
    match &checked {
        Ok((_, backups)) => {
            status.phase = Some(CheckPhase::Available);
            status.reachable = true;
            status.backups = Some(backups.len() as u64);
            ready(&mut status.conditions, Ok("Available"), generation);
        }
        Err((reason, message)) => {
            status.phase = Some(CheckPhase::Unavailable);
            status.reachable = false;
            ready(
                &mut status.conditions,
                Err((reason, message.clone())),
                generation,
            );
            if differs(loc.status.as_ref(), &status, &[], 0) {
                op.event(&*loc, true, reason, message.clone()).await;
            }
        }
    }
    match synced {
        Ok(n) if n > 0 => {
            op.event(
                &*loc,
                false,
                "BackupsFound",
                format!("{n} backup(s) in the repository shown as Backup objects"),
            )
            .await;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(location = %name, "could not show the repository's backups: {e}"),
    }
    // lastChecked moves every resync: written then, not on every wake-up.
    let mut cmp = status.clone();
    cmp.last_checked = loc.status.as_ref().and_then(|s| s.last_checked.clone());
    if differs(loc.status.as_ref(), &cmp, &[], 0)
        || stale(loc.status.as_ref(), op.options.resync.as_secs() as i64)
    {
        patch_status(&api, &name, &status).await?;
    }
    Ok(Action::requeue(op.options.resync))
}

/// Whether the last check is older than `secs`.
fn stale(s: Option<&crate::crd::BackupLocationStatus>, secs: i64) -> bool {
    s.and_then(|s| s.last_checked.as_deref())
        .and_then(super::unix_of)
        .is_none_or(|t| now() - t >= secs)
}

/// Backup objects for the records of `location` that no Backup names yet (in lifeboat's
/// namespace, Completed or PartiallyFailed as recorded); how many were made.
async fn show_backups(
    op: &Operator,
    location: &str,
    backups: &[(crate::format::BackupId, crate::format::AppBackup)],
) -> Result<usize, OperatorError> {
    let all: Api<Backup> = Api::all(op.client.clone());
    let known: std::collections::BTreeSet<String> = all
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|b| b.name_any())
        .collect();
    let api: Api<Backup> = Api::namespaced(op.client.clone(), &op.options.namespace);
    let mut made = 0;
    for (id, b) in backups {
        if known.contains(&b.name)
            || crate::util::check_kube_name(crate::util::KubeName::Subdomain, &b.name).is_err()
        {
            continue;
        }
        let mut labels = BTreeMap::from([(
            super::LABEL_ORIGIN.to_string(),
            super::ORIGIN_REPOSITORY.to_string(),
        )]);
        if let Some(s) = &b.schedule {
            labels.insert(super::LABEL_SCHEDULE.to_string(), s.clone());
        }
        let obj = Backup {
            metadata: ObjectMeta {
                name: Some(b.name.clone()),
                namespace: Some(op.options.namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: BackupSpec {
                namespaces: b.filters.namespaces.clone(),
                include_namespaces: vec![],
                exclude_namespaces: vec![],
                selector: b.filters.selector.clone(),
                included_resources: b.filters.include_resources.clone(),
                excluded_resources: b.filters.exclude_resource_types.clone(),
                pre_rules: vec![],
                post_rules: vec![],
                include_resources: true,
                include_volumes: true,
                location: Some(location.to_string()),
                schedule: b.schedule.clone(),
                delete_policy: DeletePolicy::Retain,
            },
            status: None,
        };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
        let status = recorded_status(id, b);
        patch_status(&api, &b.name, &status).await?;
        made += 1;
    }
    Ok(made)
}

/// The status of a Backup whose record is `b`.
pub fn recorded_status(id: &crate::format::BackupId, b: &crate::format::AppBackup) -> BackupStatus {
    let t = b.time.unix_timestamp();
    let mut s = BackupStatus {
        phase: Some(if b.failures.is_empty() {
            BackupPhase::Completed
        } else {
            BackupPhase::PartiallyFailed
        }),
        completion_time: Some(rfc3339(t + b.duration_seconds.unwrap_or(0.0) as i64)),
        start_time: Some(rfc3339(t)),
        record_id: Some(id.to_string()),
        backup_time: Some(rfc3339(t)),
        objects: Some(b.objects.len() as u64),
        volumes: Some(b.volumes.len() as u64),
        duration_seconds: b.duration_seconds,
        failures: b
            .failures
            .iter()
            .map(|f| crate::crd::ItemFailure {
                object: f.what.clone(),
                reason: f.reason.clone(),
            })
            .collect(),
        warnings: b.warnings.clone(),
        ..Default::default()
    };
    ready(&mut s.conditions, Ok("Recorded"), None);
    s
}

pub async fn controller(op: Arc<Operator>, stop: CancellationToken) {
    let api: Api<BackupLocation> = Api::namespaced(op.client.clone(), &op.options.namespace);
    let c = Controller::new(api, watcher::Config::default());
    super::drive(c, reconcile, op, stop).await;
}

/// `spec.movers`' requests and limits are quantities, or a status condition names the field
/// (pure).
pub fn check_quantities(m: &crate::crd::MoverPodSpec) -> Result<(), Unusable> {
    for (field, v) in [
        ("cpuRequest", &m.cpu_request),
        ("memoryRequest", &m.memory_request),
        ("cpuLimit", &m.cpu_limit),
        ("memoryLimit", &m.memory_limit),
    ] {
        if let Some(v) = v {
            crate::k8s::csi::parse_quantity(v)
                .map_err(|e| ("InvalidSpec", format!("spec.movers.{field}: {e}")))?;
        }
    }
    Ok(())
}

/// The controller's Job pod settings with what a BackupLocation's `spec.movers` sets (pure).
pub fn mover_pod(
    m: &crate::crd::MoverPodSpec,
    base: crate::k8s::csi::PodSettings,
) -> crate::k8s::csi::PodSettings {
    let q = |v: &Option<String>, b: Option<String>| match v {
        Some(s) if s.trim().is_empty() => None,
        Some(s) => Some(s.trim().to_string()),
        None => b,
    };
    crate::k8s::csi::PodSettings {
        cpu_request: q(&m.cpu_request, base.cpu_request),
        memory_request: q(&m.memory_request, base.memory_request),
        cpu_limit: q(&m.cpu_limit, base.cpu_limit),
        memory_limit: q(&m.memory_limit, base.memory_limit),
        node_selector: m.node_selector.clone().unwrap_or(base.node_selector),
        tolerations: m.tolerations.clone().unwrap_or(base.tolerations),
        run_as_user: m.run_as_user.unwrap_or(base.run_as_user),
        run_as_group: m.run_as_group.unwrap_or(base.run_as_group),
        fs_group: m.fs_group.or(base.fs_group),
        supplemental_groups: m
            .supplemental_groups
            .clone()
            .unwrap_or(base.supplemental_groups),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mover_quantity_that_is_not_one_names_its_field() {
        let m: crate::crd::MoverPodSpec =
            serde_json::from_value(serde_json::json!({"cpuLimit": "2", "memoryLimit": "2GB"}))
                .unwrap();
        let (reason, message) = check_quantities(&m).unwrap_err();
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.starts_with("spec.movers.memoryLimit: "),
            "{message}"
        );
        let ok: crate::crd::MoverPodSpec =
            serde_json::from_value(serde_json::json!({"cpuLimit": "500m", "memoryLimit": ""}))
                .unwrap();
        assert!(check_quantities(&ok).is_ok());
        let pod = mover_pod(&ok, crate::k8s::csi::PodSettings::default());
        assert_eq!(pod.cpu_limit.as_deref(), Some("500m"));
        assert_eq!(pod.memory_limit, None, "an empty limit is none");
    }
}
