//! Volumes on a live cluster: takes the bound PersistentVolumeClaims of a backup's scope;
//! gives CSI snapshots of all of them taken inside the rules' barrier: one
//! `VolumeGroupSnapshot` per namespace where the driver offers it (its default
//! VolumeGroupSnapshotClass, or a named one), else VolumeSnapshots back to back. It then moves
//! each snapshot's data into the repository with a mover Job, and on restore writes a claim's
//! data with a restore Job before the workloads are applied. Must not touch the
//! application's own claims or volumes: it reads from clones of snapshots and writes into
//! new claims only.
//!
//! The movers run the lifeboat image (`--mover-image`) with the repository's settings from a
//! Secret in the claim's namespace (`--mover-secret`, keys `LIFEBOAT_REPOSITORY`,
//! `LIFEBOAT_PASSWORD` and the `AWS_*` settings of an S3 repository), because a pod can
//! mount a claim of its own namespace only. A snapshot is read through a block-mode clone
//! (`dataSource` the VolumeSnapshot) by `lifeboat volume backup`. When the driver advertises
//! a CSI SnapshotMetadata service (a `SnapshotMetadataService` named after it) and the
//! namespace has the movers' ServiceAccount, the mover gets an audience-scoped token and asks
//! the service for the blocks changed since the claim's previous VolumeSnapshot, which is kept
//! for that (labelled `lifeboat.dev/base-of`, one per claim, the older one deleted once the
//! next move succeeded); the mover reads only those blocks when the repository's newest
//! snapshot of the claim was read from that base, and compares hashes otherwise. That part
//! lives in `bases`.
//!
//! On restore, a block-mode claim is created under the target's name and written directly.
//! A filesystem-mode claim is written through a block-mode claim of the same class and size,
//! and its volume is then handed to the restored claim: the PersistentVolume is retained,
//! re-created in filesystem mode on the same CSI volume handle, and pre-bound to the claim.
//! On a standby site, the claims standby wrote are moved to later backups in place (`site`).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    EnvVar, PersistentVolume, PersistentVolumeClaim, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeDevice, VolumeMount, VolumeProjection,
};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::Client;
use serde_json::{json, Value};

use crate::format::CopyMethod;
use crate::k8s::LiveError;

mod bases;
mod claims;
mod group;
mod pod;
mod site;

use bases::{snapshot_contents, DeltaMount};
pub use bases::{MetadataService, CBT_TOKEN_DIR};
pub use claims::ClaimMode;
pub use group::{
    default_group_class, group_members, DEFAULT_GROUP_CLASS, GROUP_API, GROUP_VERSIONS,
};
pub use pod::{parse_label, parse_quantity, parse_toleration, PodSettings, NONROOT, SCRATCH_DIR};
pub use site::{
    quantity_bytes, AppliedClaim, StandbyClaim, VerifyTarget, JOURNAL_CLAIM, JOURNAL_DIR,
    STANDBY_SNAPSHOT,
};

/// Where the movers come from and how long they may take.
#[derive(Debug, Clone)]
pub struct MoverSettings {
    pub image: String,
    /// Secret (in each claim's namespace) with the repository settings, as environment.
    pub secret: String,
    /// VolumeSnapshotClass; None: the cluster's default class for the driver.
    pub snapshot_class: Option<String>,
    /// Whether a namespace's claims are taken by one VolumeGroupSnapshot.
    pub group_snapshots: GroupSnapshots,
    /// The repository settings (`LIFEBOAT_REPOSITORY`, `LIFEBOAT_PASSWORD`, `AWS_*`) this
    /// process uses, written into the mover Secret of a namespace lifeboat created (by a
    /// restore or a standby on a DR site); elsewhere a missing Secret is an error.
    pub secret_data: Option<std::collections::BTreeMap<String, String>>,
    /// ServiceAccount (in each claim's namespace) of mover Jobs that ask the CSI
    /// SnapshotMetadata service for changed blocks; without it they compare hashes.
    pub service_account: String,
    /// For each snapshot to be cut, each clone to bind, each Job to finish.
    pub timeout: Duration,
    /// Requests, limits, placement and securityContext of the Jobs' pods.
    pub pod: PodSettings,
    /// How many claims are moved at once (mover and restore Jobs running together); the
    /// snapshots of a backup are cut together anyway.
    pub parallel_volumes: usize,
}

/// Claims moved at once by default: enough to hide a Job's start-up behind the others'
/// transfers, few enough not to crowd a small cluster.
pub const DEFAULT_PARALLEL_VOLUMES: usize = 4;

impl Default for MoverSettings {
    fn default() -> Self {
        MoverSettings {
            image: format!("ghcr.io/lifeboat-dr/lifeboat:{}", env!("CARGO_PKG_VERSION")),
            secret: "lifeboat-repository".into(),
            snapshot_class: None,
            group_snapshots: GroupSnapshots::Auto,
            service_account: "lifeboat-mover".into(),
            secret_data: None,
            timeout: Duration::from_secs(1800),
            pod: PodSettings::default(),
            parallel_volumes: DEFAULT_PARALLEL_VOLUMES,
        }
    }
}

/// How the claims of one namespace are snapshotted together.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GroupSnapshots {
    /// One VolumeGroupSnapshot per namespace when all its claims' driver has a default
    /// VolumeGroupSnapshotClass (annotation `groupsnapshot.storage.kubernetes.io/is-default-class`),
    /// else VolumeSnapshots back to back.
    #[default]
    Auto,
    /// Always VolumeSnapshots back to back.
    Off,
    /// One VolumeGroupSnapshot per namespace of this class.
    Class(String),
}

impl std::str::FromStr for GroupSnapshots {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("give `auto`, `none` or a VolumeGroupSnapshotClass name".into()),
            "auto" => Ok(GroupSnapshots::Auto),
            "none" => Ok(GroupSnapshots::Off),
            class => Ok(GroupSnapshots::Class(class.to_string())),
        }
    }
}

/// A claim whose data a backup takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub storage_class: Option<String>,
    /// `spec.resources.requests.storage`, e.g. `10Gi`.
    pub size: String,
    pub volume_mode: ClaimMode,
    /// The PersistentVolume it is bound to (`spec.volumeName`).
    pub volume: Option<String>,
}

/// A claim's shape from its object (as listed, or as planned for a restore).
pub fn claim_of(v: &Value) -> Option<Claim> {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    Some(Claim {
        namespace: s("/metadata/namespace")?,
        name: s("/metadata/name")?,
        storage_class: s("/spec/storageClassName"),
        size: s("/status/capacity/storage").or_else(|| s("/spec/resources/requests/storage"))?,
        volume_mode: ClaimMode::of(s("/spec/volumeMode").as_deref()),
        volume: s("/spec/volumeName"),
    })
}

/// The bound claims among listed objects (pure).
pub fn claims_of(values: &[Value]) -> Vec<Claim> {
    let mut out: Vec<Claim> = values
        .iter()
        .filter(|v| v["kind"] == "PersistentVolumeClaim")
        .filter(|v| v.pointer("/status/phase").and_then(Value::as_str) == Some("Bound"))
        .filter_map(claim_of)
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// A claim's CSI snapshot.
#[derive(Debug, Clone)]
pub struct CsiSnapshot {
    pub claim: Claim,
    /// VolumeSnapshot name in the claim's namespace.
    pub snapshot: String,
    /// [`CopyMethod::Csi`] or [`CopyMethod::CsiGroup`].
    pub method: CopyMethod,
    /// The VolumeGroupSnapshot it belongs to.
    pub group: Option<String>,
}

fn volume_snapshots() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// The VolumeSnapshotContent annotation that lets a claim of another volume mode be
/// restored from the snapshot (KEP-3141).
pub const ALLOW_VOLUME_MODE_CHANGE: &str =
    "snapshot.storage.kubernetes.io/allow-volume-mode-change";

/// A Kubernetes name from parts: lowercase, at most 63 characters, unique by a hash suffix.
pub fn object_name(prefix: &str, parts: &[&str]) -> String {
    let joined = parts.join("-");
    let hash = hex::encode(&blake3::hash(joined.as_bytes()).as_bytes()[..4]);
    let mut clean = String::new();
    for c in joined.to_ascii_lowercase().chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && clean.ends_with('-')) {
            clean.push(c);
        }
    }
    let room = 63 - prefix.len() - 1 - hash.len() - 1;
    let clean = clean.trim_matches('-');
    let clean = &clean[..clean.len().min(room)];
    format!("{prefix}-{}-{hash}", clean.trim_end_matches('-'))
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> LiveError {
    move |error| LiveError::Api { what, error }
}

/// The CSI side of one cluster.
pub struct Csi {
    client: Client,
    pub settings: MoverSettings,
    /// Snapshots kept as delta bases (`ns/name`): not removed with the backup's others.
    kept: std::sync::Mutex<Vec<String>>,
    /// Namespaces found ready for mover Jobs (the namespace and its mover Secret exist).
    ready: std::sync::Mutex<Vec<String>>,
    /// Namespaces that have the movers' ServiceAccount: their Jobs run under it (an
    /// OpenShift SCC or a policy can then be granted to it alone).
    accounts: std::sync::Mutex<Vec<String>>,
}

impl Csi {
    pub fn new(client: Client, settings: MoverSettings) -> Csi {
        Csi {
            client,
            settings,
            kept: Default::default(),
            ready: Default::default(),
            accounts: Default::default(),
        }
    }

    /// Makes namespace `ns` ready for mover Jobs: creates it if it does not exist yet (a
    /// restore's objects are applied after the data), labelled as lifeboat's, and writes its
    /// mover Secret from [`MoverSettings::secret_data`] if it has none and is lifeboat's. In
    /// any other namespace a missing Secret is an error naming the fix, before any Job would
    /// wait for it in vain: credentials are not planted in the application's namespaces.
    pub async fn prepare_namespace(&self, ns: &str) -> Result<(), LiveError> {
        if self.ready.lock().expect("ready").iter().any(|n| n == ns) {
            return Ok(());
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let found = namespaces
            .get_opt(ns)
            .await
            .map_err(api_err(format!("read Namespace {ns}")))?;
        // Lifeboat writes the Secret only into a namespace of its own making.
        let ours = found.as_ref().is_none_or(|n| {
            n.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/managed-by"))
                .map(String::as_str)
                == Some("lifeboat")
        });
        if found.is_none() {
            match namespaces
                .create(&PostParams::default(), &claims::namespace(ns))
                .await
            {
                Ok(_) => tracing::info!(
                    namespace = ns,
                    "created the namespace for its volumes' data"
                ),
                // Made meanwhile (by another restore of the same namespace): as good.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(api_err(format!("create Namespace {ns}"))(e)),
            }
        }
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), ns);
        let name = &self.settings.secret;
        if secrets
            .get_opt(name)
            .await
            .map_err(api_err(format!("read Secret {ns}/{name}")))?
            .is_none()
        {
            let Some(data) = self.settings.secret_data.as_ref().filter(|_| ours) else {
                return Err(LiveError::Volume {
                    what: format!("Secret {ns}/{name}"),
                    reason: "is missing: the mover Jobs read the repository settings from it; create it (deploy/mover-secret.yaml)".into(),
                });
            };
            match secrets
                .create(
                    &PostParams::default(),
                    &claims::movers_secret(ns, name, data),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = ns, secret = %name, "wrote this process's repository settings into the movers' Secret")
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(api_err(format!("create Secret {ns}/{name}"))(e)),
            }
        }
        // Unreadable (a role without `get serviceaccounts`) counts as absent.
        let sa = &self.settings.service_account;
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), ns);
        if let Ok(Some(_)) = accounts.get_opt(sa).await {
            self.accounts.lock().expect("accounts").push(ns.to_string());
        }
        self.ready.lock().expect("ready").push(ns.to_string());
        Ok(())
    }

    /// Watches object `name` of `api` (kube-runtime's `await_condition`: a watch, no
    /// polling) until `verdict` gives one, for at most [`MoverSettings::timeout`]; an object
    /// that is deleted fails the wait. Dropping the future cancels the watch.
    async fn watch_until<K>(
        &self,
        what: &str,
        api: &Api<K>,
        name: &str,
        verdict: impl Fn(&K) -> Option<Result<(), String>>,
    ) -> Result<(), LiveError>
    where
        K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + 'static,
    {
        let decided = |o: Option<&K>| o.is_none_or(|k| verdict(k).is_some());
        let watched = kube::runtime::wait::await_condition(api.clone(), name, decided);
        let outcome = match tokio::time::timeout(self.settings.timeout, watched).await {
            Err(_) => Some(Err(format!("not done within {:?}", self.settings.timeout))),
            Ok(Err(e)) => {
                return Err(LiveError::Volume {
                    what: what.to_string(),
                    reason: format!("could not watch it (lifeboat needs `watch` on it): {e}"),
                })
            }
            Ok(Ok(None)) => Some(Err("was deleted while lifeboat waited for it".into())),
            Ok(Ok(Some(k))) => verdict(&k),
        };
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(LiveError::Volume {
                what: what.to_string(),
                reason,
            }),
            None => unreachable!("await_condition returns a decided object"),
        }
    }

    /// Cuts a snapshot of every claim, back to back, and waits until each is cut
    /// (`status.creationTime`): the instant the data is frozen. Call inside the barrier.
    /// On failure, the snapshots already made are removed again.
    pub async fn snapshot_claims(
        &self,
        backup: &str,
        claims: &[Claim],
    ) -> Result<Vec<CsiSnapshot>, LiveError> {
        let mut out = Vec::new();
        match self.snapshot_into(backup, claims, &mut out).await {
            Ok(()) => Ok(out),
            Err(e) => {
                self.remove_snapshots(&out).await;
                Err(e)
            }
        }
    }

    async fn snapshot_into(
        &self,
        backup: &str,
        claims: &[Claim],
        out: &mut Vec<CsiSnapshot>,
    ) -> Result<(), LiveError> {
        let mut namespaces: Vec<&str> = claims.iter().map(|c| c.namespace.as_str()).collect();
        namespaces.dedup();
        let mut singles = Vec::new();
        for ns in namespaces {
            let mine: Vec<&Claim> = claims.iter().filter(|c| c.namespace == ns).collect();
            match self.group_class(&mine).await? {
                Some(class) => out.extend(self.group_snapshot(backup, ns, &class, &mine).await?),
                None => singles.extend(mine),
            }
        }
        let first_single = out.len();
        for c in singles {
            let name = object_name("lifeboat", &[backup, &c.name]);
            let obj = claims::volume_snapshot(
                &c.namespace,
                &name,
                &c.name,
                self.settings.snapshot_class.as_deref(),
                backup,
            );
            Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                &c.namespace,
                &volume_snapshots(),
            )
            .create(&PostParams::default(), &obj)
            .await
            .map_err(api_err(format!(
                "create VolumeSnapshot {}/{name}",
                c.namespace
            )))?;
            out.push(CsiSnapshot {
                claim: c.clone(),
                snapshot: name,
                method: CopyMethod::Csi,
                group: None,
            });
        }
        for s in &out[first_single..] {
            self.wait_snapshot(s, "cut", "/status/creationTime").await?;
        }
        Ok(())
    }

    /// The CSI driver of a claim's volume (`spec.csi.driver` of its PersistentVolume).
    pub async fn driver_of(&self, c: &Claim) -> Result<Option<String>, LiveError> {
        let Some(pv) = &c.volume else { return Ok(None) };
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let found = pvs
            .get_opt(pv)
            .await
            .map_err(api_err(format!("read PersistentVolume {pv}")))?;
        Ok(found
            .and_then(|v| v.spec)
            .and_then(|s| s.csi)
            .map(|csi| csi.driver))
    }

    async fn wait_snapshot(
        &self,
        s: &CsiSnapshot,
        state: &str,
        pointer: &str,
    ) -> Result<(), LiveError> {
        let ns = &s.claim.namespace;
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &volume_snapshots());
        self.watch_until(
            &format!("VolumeSnapshot {ns}/{} to be {state}", s.snapshot),
            &api,
            &s.snapshot,
            |o| snapshot_verdict(&serde_json::to_value(o).expect("serialises"), pointer),
        )
        .await
    }

    /// Lets a Block-mode clone be made of a snapshot of a Filesystem-mode volume: since
    /// Kubernetes 1.30 (KEP-3141) the provisioner refuses that unless the snapshot's
    /// VolumeSnapshotContent carries [`ALLOW_VOLUME_MODE_CHANGE`] (needs `patch` on
    /// volumesnapshotcontents). Call once the snapshot is ready (its content bound).
    async fn allow_volume_mode_change(&self, s: &CsiSnapshot) -> Result<(), LiveError> {
        let ns = &s.claim.namespace;
        let snap =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &volume_snapshots())
                .get(&s.snapshot)
                .await
                .map_err(api_err(format!("read VolumeSnapshot {ns}/{}", s.snapshot)))?;
        let snap = serde_json::to_value(snap).expect("serialises");
        let Some(content) = snap
            .pointer("/status/boundVolumeSnapshotContentName")
            .and_then(Value::as_str)
        else {
            return Err(LiveError::Volume {
                what: format!("VolumeSnapshot {ns}/{}", s.snapshot),
                reason: "is ready but names no VolumeSnapshotContent (status.boundVolumeSnapshotContentName)".into(),
            });
        };
        Api::<DynamicObject>::all_with(self.client.clone(), &snapshot_contents())
            .patch(
                content,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {ALLOW_VOLUME_MODE_CHANGE: "true"}}})),
            )
            .await
            .map_err(api_err(format!(
                "annotate VolumeSnapshotContent {content} with {ALLOW_VOLUME_MODE_CHANGE} (lifeboat needs `patch` on volumesnapshotcontents to read a Filesystem-mode volume through a Block-mode clone)"
            )))?;
        Ok(())
    }

    /// A block-mode claim: a clone of `snapshot` (backup) or an empty one (restore).
    async fn block_claim(
        &self,
        ns: &str,
        name: &str,
        like: &Claim,
        snapshot: Option<&str>,
    ) -> Result<(), LiveError> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .create(
                &PostParams::default(),
                &claims::block_claim(ns, name, like, snapshot),
            )
            .await
            .map_err(api_err(format!("create PersistentVolumeClaim {ns}/{name}")))?;
        Ok(())
    }

    /// Runs `lifeboat ARGS` in a Job with the claim `claim` as block device
    /// `/dev/lifeboat-volume`, and waits for it to succeed.
    async fn run_mover(
        &self,
        ns: &str,
        job: &str,
        claim: &str,
        mut args: Vec<String>,
        delta: Option<&DeltaMount<'_>>,
    ) -> Result<String, LiveError> {
        let mut plan = self.job_plan(
            ns,
            job,
            "mover",
            vec![pod::device("data", "/dev/lifeboat-volume")],
            vec![pod::claim_volume("data", claim)],
        );
        if let Some(d) = delta {
            // An audience-scoped token of the mover's ServiceAccount, and the service's CA.
            plan.service_account = Some(self.settings.service_account.clone());
            plan.volumes.push(Volume {
                name: "cbt-token".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(d.service.audience.clone()),
                            expiration_seconds: Some(3600),
                            path: "token".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
            plan.mounts.push(VolumeMount {
                name: "cbt-token".into(),
                mount_path: CBT_TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
            plan.env.push(EnvVar {
                name: "LIFEBOAT_CSI_DELTA_CA".into(),
                value: Some(d.service.ca_cert.clone()),
                ..Default::default()
            });
            if let Some((id, base)) = &d.base {
                args.extend([
                    "--csi-delta-address".into(),
                    d.service.address.clone(),
                    "--csi-delta-token-file".into(),
                    format!("{CBT_TOKEN_DIR}/token"),
                    "--csi-delta-namespace".into(),
                    ns.to_string(),
                    "--csi-delta-base".into(),
                    id.clone(),
                    "--csi-delta-target".into(),
                    d.target.to_string(),
                    "--csi-delta-parent".into(),
                    base.label.clone(),
                    "--csi-delta-report-file".into(),
                    "/dev/termination-log".into(),
                ]);
            }
        }
        plan.args = args;
        self.run_job(ns, job, self.settings.pod.job(plan)).await
    }

    /// A Job of one container running the lifeboat image with the movers' Secret as
    /// environment and the claims `volumes` attached as `devices` (arguments still to set).
    fn job_plan(
        &self,
        ns: &str,
        job: &str,
        container: &str,
        devices: Vec<VolumeDevice>,
        volumes: Vec<Volume>,
    ) -> pod::JobPlan {
        pod::JobPlan {
            namespace: ns.into(),
            name: job.into(),
            container: container.into(),
            image: self.settings.image.clone(),
            args: Vec::new(),
            secret: self.settings.secret.clone(),
            devices,
            mounts: Vec::new(),
            volumes,
            env: Vec::new(),
            service_account: self
                .accounts
                .lock()
                .expect("accounts")
                .iter()
                .any(|n| n == ns)
                .then(|| self.settings.service_account.clone()),
        }
    }

    /// Creates Job `spec`, waits for it to succeed, and removes it.
    /// Returns the container's termination message: what the command wrote to
    /// `/dev/termination-log`, or on failure the end of its log.
    async fn run_job(&self, ns: &str, job: &str, spec: Job) -> Result<String, LiveError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        jobs.create(&PostParams::default(), &spec)
            .await
            .map_err(api_err(format!("create Job {ns}/{job}")))?;
        let r = self.wait_job(&jobs, ns, job).await;
        let message = self.job_message(ns, job).await;
        self.delete_quietly(jobs, job).await;
        match r {
            Ok(()) => Ok(message),
            Err(LiveError::Volume { what, reason }) if !message.trim().is_empty() => {
                Err(LiveError::Volume {
                    what,
                    reason: format!("{reason}; it said: {}", message.trim()),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The termination message of a Job's (newest) pod; empty when there is none.
    async fn job_message(&self, ns: &str, job: &str) -> String {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.client.clone(), ns);
        let lp = kube::api::ListParams::default().labels(&format!("job-name={job}"));
        let Ok(list) = pods.list(&lp).await else {
            return String::new();
        };
        list.items
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("job-name"))
                    .map(String::as_str)
                    == Some(job)
            })
            .filter_map(|p| {
                let st = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
                st.state.as_ref()?.terminated.as_ref()?.message.clone()
            })
            .next_back()
            .unwrap_or_default()
    }

    /// Until Job `ns/job` succeeds or fails, for at most the movers' timeout. Its pod refused
    /// at admission for good (Pod Security, an OpenShift SCC) fails the wait at once with the
    /// refusal; any other refusal (a quota, for one, may free up) is told with the timeout.
    async fn wait_job(&self, jobs: &Api<Job>, ns: &str, job: &str) -> Result<(), LiveError> {
        let what = format!("Job {ns}/{job}");
        let last = std::sync::Mutex::new(None::<String>);
        let done = self.watch_until(&what, jobs, job, |j| job_verdict(j, ns, job));
        let refused = self.pod_refusal(ns, job, &last);
        let r = tokio::select! {
            r = done => r,
            m = refused => Err(LiveError::Volume {
                what: what.clone(),
                reason: format!("its pod was refused at admission: {m}; {}", refusal_fix(&m)),
            }),
        };
        let last = last.lock().expect("last refusal").take();
        match (r, last) {
            (Err(LiveError::Volume { what, reason }), Some(m)) => Err(LiveError::Volume {
                what,
                reason: format!(
                    "{reason}; its pod was not created: {m}; {}",
                    refusal_fix(&m)
                ),
            }),
            (r, _) => r,
        }
    }

    /// Resolves with the Job controller's `FailedCreate` message once it says the Job's pod is
    /// refused for good; keeps the newest other refusal in `last`. Never resolves when the
    /// Events cannot be watched (the wait then ends as it would without).
    async fn pod_refusal(
        &self,
        ns: &str,
        job: &str,
        last: &std::sync::Mutex<Option<String>>,
    ) -> String {
        use futures::StreamExt;
        use kube::runtime::{watcher, WatchStreamExt};
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), ns);
        let cfg = watcher::Config::default().fields(&format!(
            "involvedObject.kind=Job,involvedObject.name={job}"
        ));
        let mut stream = std::pin::pin!(watcher(events, cfg).applied_objects());
        while let Some(e) = stream.next().await {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(job, "cannot watch the Job's Events: {e}");
                    break;
                }
            };
            let message = e.message.unwrap_or_default();
            match admission_refusal(e.reason.as_deref().unwrap_or(""), &message) {
                Some(Refusal::Permanent) => return message,
                Some(Refusal::Transient) => *last.lock().expect("last refusal") = Some(message),
                None => {}
            }
        }
        std::future::pending().await
    }

    async fn delete_quietly<K>(&self, api: Api<K>, name: &str)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if let Err(e) = api.delete(name, &DeleteParams::background()).await {
            tracing::warn!(object = name, "could not remove a mover object: {e}");
        }
    }

    /// Moves one snapshot's data into the repository: clone → mover Job → `volume backup`.
    /// Returns the label the mover gave the repository snapshot (unique per move), and why the
    /// mover compared hashes when it was given changed blocks to ask for and could not use them.
    pub async fn move_to_repository(
        &self,
        backup: &str,
        s: &CsiSnapshot,
        volume_name: &str,
    ) -> Result<(String, Option<String>), LiveError> {
        let ns = &s.claim.namespace;
        let clone = object_name("lifeboat-src", &[backup, &s.claim.name]);
        let job = object_name("lifeboat-backup", &[backup, &s.claim.name]);
        let label = format!(
            "csi:{ns}/{} snapshot {} job {job}",
            s.claim.name, s.snapshot
        );
        self.wait_snapshot(s, "ready", "/status/readyToUse").await?;
        self.prepare_namespace(ns).await?;
        let service = match self.driver_of(&s.claim).await? {
            Some(driver) => self.metadata_service(&driver).await?,
            None => None,
        };
        let delta = match &service {
            Some(svc) => self.delta_for(s, svc).await?,
            None => None,
        };
        if s.claim.volume_mode != ClaimMode::Block {
            self.allow_volume_mode_change(s).await?;
        }
        self.block_claim(ns, &clone, &s.claim, Some(&s.snapshot))
            .await?;
        let result = self
            .run_mover(
                ns,
                &job,
                &clone,
                vec![
                    "volume".into(),
                    "backup".into(),
                    "--name".into(),
                    volume_name.into(),
                    "--label".into(),
                    label.clone(),
                    "/dev/lifeboat-volume".into(),
                ],
                delta.as_ref(),
            )
            .await;
        if let (Ok(_), Some(d)) = (&result, delta) {
            self.keep_as_base(s, &label, d.base.map(|(_, b)| b)).await;
        }
        self.delete_quietly(
            Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns),
            &clone,
        )
        .await;
        result.map(|message| {
            let note = Some(message.trim().to_string()).filter(|m| !m.is_empty());
            (label, note)
        })
    }

    /// Removes the snapshots of a backup (and their groups) once their data is in the
    /// repository, or the backup failed.
    pub async fn remove_snapshots(&self, snaps: &[CsiSnapshot]) {
        let kept = self.kept.lock().expect("kept").clone();
        let is_kept =
            |s: &CsiSnapshot| kept.contains(&format!("{}/{}", s.claim.namespace, s.snapshot));
        // A group with a kept member stays (deleting it would take the member along).
        let kept_groups: Vec<(&String, &String)> = snaps
            .iter()
            .filter(|s| is_kept(s))
            .filter_map(|s| Some((&s.claim.namespace, s.group.as_ref()?)))
            .collect();
        let mut groups = Vec::new();
        for s in snaps {
            if is_kept(s) {
                continue;
            }
            let ns = &s.claim.namespace;
            let api =
                Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &volume_snapshots());
            self.delete_quietly(api, &s.snapshot).await;
            if let Some(g) = &s.group {
                if !groups.contains(&(ns, g)) && !kept_groups.contains(&(ns, g)) {
                    groups.push((ns, g));
                }
            }
        }
        for (ns, g) in groups {
            self.delete_group(ns, g).await;
        }
    }

    /// Writes a repository snapshot into a new claim `target` (namespace `ns`) shaped like
    /// `like`, before the workloads are applied. See the module documentation. Returns the
    /// PersistentVolume the restored claim must bind to (`spec.volumeName`) when it is a
    /// filesystem-mode claim still to be applied; None when the claim exists already (block
    /// mode: created and written here).
    /// `manifest`: the planned claim object, which a block-mode claim is created from (its
    /// labels and annotations kept; not its old volume or data source).
    pub async fn restore_claim(
        &self,
        ns: &str,
        target: &str,
        like: &Claim,
        snapshot_id: &str,
        manifest: Option<&Value>,
    ) -> Result<Option<String>, LiveError> {
        self.prepare_namespace(ns).await?;
        let block = like.volume_mode == ClaimMode::Block;
        let writer_claim = if block {
            target.to_string()
        } else {
            object_name("lifeboat-dst", &[ns, target])
        };
        match manifest.filter(|_| block) {
            Some(m) => {
                let old: PersistentVolumeClaim =
                    serde_json::from_value(m.clone()).map_err(|e| LiveError::Volume {
                        what: format!("PersistentVolumeClaim {ns}/{target}"),
                        reason: format!("the backed-up claim is not a valid claim: {e}"),
                    })?;
                let pvc = claims::claim_again(old, ns, target);
                Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                    .create(&PostParams::default(), &pvc)
                    .await
                    .map_err(api_err(format!(
                        "create PersistentVolumeClaim {ns}/{target}"
                    )))?;
            }
            None => self.block_claim(ns, &writer_claim, like, None).await?,
        }
        let job = object_name("lifeboat-restore", &[ns, target, snapshot_id]);
        let result = self
            .run_mover(
                ns,
                &job,
                &writer_claim,
                vec![
                    "volume".into(),
                    "restore".into(),
                    snapshot_id.into(),
                    "/dev/lifeboat-volume".into(),
                    "--overwrite".into(),
                ],
                None,
            )
            .await;
        result?;
        if block {
            return Ok(None);
        }
        self.hand_over(ns, &writer_claim, target).await.map(Some)
    }

    /// Gives the volume of claim `from` to claim `to` in filesystem mode: retain the PV,
    /// release it, re-create it in filesystem mode pre-bound to `to`.
    async fn hand_over(&self, ns: &str, from: &str, to: &str) -> Result<String, LiveError> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let claim = pvcs
            .get(from)
            .await
            .map_err(api_err(format!("read PersistentVolumeClaim {ns}/{from}")))?;
        let pv_name = claim
            .spec
            .and_then(|s| s.volume_name)
            .ok_or_else(|| LiveError::Volume {
                what: format!("PersistentVolumeClaim {ns}/{from}"),
                reason: "is not bound to a volume".into(),
            })?;
        pvs.patch(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}})),
        )
        .await
        .map_err(api_err(format!("retain PersistentVolume {pv_name}")))?;
        let pv = pvs
            .get(&pv_name)
            .await
            .map_err(api_err(format!("read PersistentVolume {pv_name}")))?;
        pvcs.delete(from, &DeleteParams::default())
            .await
            .map_err(api_err(format!("delete PersistentVolumeClaim {ns}/{from}")))?;
        pvs.delete(&pv_name, &DeleteParams::default())
            .await
            .map_err(api_err(format!("delete PersistentVolume {pv_name}")))?;
        let new_name = object_name("lifeboat-pv", &[ns, to]);
        let pv = claims::second_volume(&pv, &new_name, ClaimMode::Filesystem, "Delete", ns, to);
        pvs.create(&PostParams::default(), &pv)
            .await
            .map_err(api_err(format!("create PersistentVolume {new_name}")))?;
        Ok(new_name)
    }
}

/// A snapshot's verdict (a VolumeSnapshot's or a VolumeGroupSnapshot's): its error, or done
/// once `pointer` is set (true, or any value that is not a boolean); None: not yet (pure).
/// An error the snapshot controller retries past on its own ([`retried_error`]) is waited
/// through.
fn snapshot_verdict(v: &Value, pointer: &str) -> Option<Result<(), String>> {
    if let Some(e) = v.pointer("/status/error/message").and_then(Value::as_str) {
        if !retried_error(e) {
            return Some(Err(e.to_string()));
        }
        tracing::debug!("snapshot status error, retried by the snapshot controller: {e}");
    }
    let done = match v.pointer(pointer) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Null) | None => false,
        Some(_) => true,
    };
    done.then_some(Ok(()))
}

/// Whether a snapshot's `status.error` is a conflict of the snapshot controller's own writes
/// (pure). The controller retries after an error and clears the field once it succeeds
/// (external-snapshotter's API: "The snapshot controller will keep retrying when an error
/// occurs"); a conflict — another writer updated the object between its read and its write,
/// "the object has been modified" — always clears on that retry, so lifeboat waits on. Any
/// other error (no such class, a claim not bound, the driver refusing) fails the wait at once,
/// naming it, rather than holding the application's pre rules for the whole timeout.
fn retried_error(message: &str) -> bool {
    message.contains("the object has been modified")
}

/// What a Job controller's Event says of its pod's admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Refused until the namespace or the Job changes: Pod Security, an SCC.
    Permanent,
    /// Refused for now: a quota, a webhook, anything else.
    Transient,
}

/// Whether a Job's Event (`reason`, `message`) is its pod refused at admission, and for how
/// long (pure). The Job controller reports a pod it could not create as `FailedCreate` with
/// the API server's refusal as the message.
fn admission_refusal(reason: &str, message: &str) -> Option<Refusal> {
    if reason != "FailedCreate" {
        return None;
    }
    let permanent = message.contains("violates PodSecurity")
        || message.contains("unable to validate against any security context constraint");
    Some(if permanent {
        Refusal::Permanent
    } else {
        Refusal::Transient
    })
}

/// What to change for a refused Job pod (pure).
fn refusal_fix(message: &str) -> &'static str {
    if message.contains("violates PodSecurity") || message.contains("security context constraint") {
        "the Job's securityContext comes from the --mover-* options (or a BackupLocation's spec.movers): a root mover (--mover-run-as-user 0) needs Pod Security `baseline` or the SCC of deploy/openshift/scc-mover.yaml; see the README's \"Jobs on locked-down clusters\""
    } else if message.contains("exceeded quota") || message.contains("must specify limits") {
        "the namespace's ResourceQuota: set --mover-cpu-limit/--mover-memory-limit (and requests) within it, or raise it"
    } else {
        "see `kubectl get events` in the Job's namespace"
    }
}

/// A Job's verdict: succeeded, failed, or None while it runs (pure).
fn job_verdict(j: &Job, ns: &str, job: &str) -> Option<Result<(), String>> {
    let st = j.status.clone().unwrap_or_default();
    if st.succeeded.unwrap_or(0) > 0 {
        return Some(Ok(()));
    }
    if st.failed.unwrap_or(0) > 0 {
        return Some(Err(format!("failed; see `kubectl logs -n {ns} job/{job}`")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_through_the_controllers_own_conflicts_and_fails_on_other_errors() {
        let with_error = |m: &str| json!({"status": {"error": {"message": m}}});
        let conflict = "Failed to create group snapshot: error updating status for volume group snapshot content groupsnapcontent-1: snapshot controller failed to update groupsnapcontent-1 on API server: Operation cannot be fulfilled on volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io \"groupsnapcontent-1\": the object has been modified; please apply your changes to the latest version and try again";
        assert_eq!(
            snapshot_verdict(&with_error(conflict), "/status/creationTime"),
            None
        );
        let mut cleared = with_error(conflict);
        cleared["status"]["creationTime"] = json!("2026-12-03T13:00:00Z");
        cleared["status"]["error"] = Value::Null;
        assert_eq!(
            snapshot_verdict(&cleared, "/status/creationTime"),
            Some(Ok(()))
        );
        let missing = "Failed to get snapshot class with error volumesnapshotclass.snapshot.storage.k8s.io \"nope\" not found";
        assert_eq!(
            snapshot_verdict(&with_error(missing), "/status/readyToUse"),
            Some(Err(missing.to_string()))
        );
        assert_eq!(
            snapshot_verdict(
                &json!({"status": {"readyToUse": false}}),
                "/status/readyToUse"
            ),
            None
        );
    }

    #[test]
    fn a_pod_refused_by_pod_security_or_an_scc_is_permanent_and_a_quota_is_not() {
        let psa = r#"Error creating: pods "lifeboat-backup-x-abc" is forbidden: violates PodSecurity "restricted:latest": runAsNonRoot != true"#;
        assert_eq!(
            admission_refusal("FailedCreate", psa),
            Some(Refusal::Permanent)
        );
        assert!(refusal_fix(psa).contains("--mover-run-as-user"));
        let scc = r#"Error creating: pods "x" is forbidden: unable to validate against any security context constraint: [provider "restricted-v2": Forbidden]"#;
        assert_eq!(
            admission_refusal("FailedCreate", scc),
            Some(Refusal::Permanent)
        );
        let quota = r#"Error creating: pods "x" is forbidden: exceeded quota: limits, requested: limits.memory=2Gi, used: limits.memory=3Gi, limited: limits.memory=4Gi"#;
        assert_eq!(
            admission_refusal("FailedCreate", quota),
            Some(Refusal::Transient)
        );
        assert!(refusal_fix(quota).contains("--mover-memory-limit"));
        assert_eq!(
            admission_refusal("SuccessfulCreate", "Created pod: x"),
            None
        );
    }

    #[test]
    fn object_names_are_valid_and_unique() {
        let a = object_name("lifeboat", &["nightly-2026-11-24", "data-cassandra-0"]);
        let b = object_name("lifeboat", &["nightly-2026-11-24", "data-cassandra-1"]);
        assert_ne!(a, b);
        let long = object_name("lifeboat-backup", &[&"x".repeat(200), "Data_Claim"]);
        for n in [&a, &b, &long] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{n}"
            );
            assert!(!n.ends_with('-') && !n.contains("--"), "{n}");
        }
    }

    #[test]
    fn the_default_group_class_is_the_drivers_only_default() {
        let class = |name: &str, driver: &str, default: bool| {
            let mut v = json!({"metadata": {"name": name}, "driver": driver});
            if default {
                v["metadata"]["annotations"] = json!({DEFAULT_GROUP_CLASS: "true"});
            }
            v
        };
        let classes = vec![
            class("a", "rbd.csi.ceph.com", false),
            class("b", "rbd.csi.ceph.com", true),
            class("c", "ebs.csi.aws.com", true),
        ];
        assert_eq!(
            default_group_class(&classes, "rbd.csi.ceph.com").as_deref(),
            Some("b")
        );
        assert_eq!(default_group_class(&classes, "pd.csi.storage.gke.io"), None);
        let mut two = classes.clone();
        two.push(class("d", "rbd.csi.ceph.com", true));
        assert_eq!(
            default_group_class(&two, "rbd.csi.ceph.com"),
            None,
            "ambiguous"
        );
        assert_eq!("none".parse(), Ok(GroupSnapshots::Off));
        assert_eq!("auto".parse(), Ok(GroupSnapshots::Auto));
        assert!("".parse::<GroupSnapshots>().is_err());
    }

    #[test]
    fn quantities_are_read_as_bytes() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("4096"), Some(4096));
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn only_bound_claims_are_taken() {
        let v = vec![
            json!({"kind": "PersistentVolumeClaim", "metadata": {"namespace": "a", "name": "x"},
                "spec": {"storageClassName": "fast", "volumeMode": "Block", "resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": "Bound", "capacity": {"storage": "2Gi"}}}),
            json!({"kind": "PersistentVolumeClaim", "metadata": {"namespace": "a", "name": "p"},
                "spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}}),
        ];
        let c = claims_of(&v);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].size.as_str(), c[0].volume_mode),
            ("2Gi", ClaimMode::Block)
        );
    }
}
