//! A live cluster through the Kubernetes API (`kube`): takes a kubeconfig context (or the
//! in-cluster configuration) and namespaces; gives the objects a backup may capture, as
//! [`Exported`] values that [`crate::k8s::source::select`] then scopes exactly as it does for a
//! cluster directory. API discovery finds every resource type the server serves, built-in and
//! custom; lists are paginated. Restores apply through server-side apply (field manager
//! `lifeboat`) in the plan's order, with the chosen policy for existing objects, and wait for
//! restored CRDs to be Established before their custom resources. Writes only in `apply`.

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{verbs, ApiResource, Discovery, Scope};
use kube::Client;
use serde_json::Value;

use super::error::LiveError;
use super::objects::{change_of, Change, ObjRef};
use crate::format::CaptureFailure;
use crate::k8s::source::{
    ApplyItem, ApplyResult, ExistingPolicy, Exported, Outcome, ResourceType, Scope as BackupScope,
    ScopeSelector,
};
use tokio::sync::mpsc;

/// Cluster-scoped kinds a backup of namespaces may need (see [`crate::k8s::source::select`]).
const CLUSTER_KINDS: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Namespaced kinds not worth capturing: many, short-lived, and never restored.
const NOT_CAPTURED: &[&str] = &["Event"];

pub struct LiveCluster {
    client: Client,
    name: String,
    page_size: u32,
}

impl LiveCluster {
    /// Connects with a kubeconfig context (or the current context, or in-cluster config).
    pub async fn connect(context: Option<&str>) -> Result<LiveCluster, LiveError> {
        let cfg_err = |reason: String| LiveError::Config {
            context: context.map(str::to_string),
            reason,
        };
        let config = match context {
            Some(ctx) => {
                let kubeconfig = Kubeconfig::read().map_err(|e| cfg_err(e.to_string()))?;
                let opts = KubeConfigOptions {
                    context: Some(ctx.to_string()),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kubeconfig, &opts)
                    .await
                    .map_err(|e| cfg_err(e.to_string()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| cfg_err(e.to_string()))?,
        };
        LiveCluster::from_config(config, context.unwrap_or("current-context"))
    }

    /// A cluster from a resolved configuration. Selects the TLS crypto provider first: two
    /// are linked in (ring here, aws-lc-rs through the S3 SDK), and rustls refuses to guess,
    /// panicking on the first TLS connection otherwise.
    pub fn from_config(config: kube::Config, name: &str) -> Result<LiveCluster, LiveError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(config).map_err(|e| LiveError::Config {
            context: Some(name.to_string()),
            reason: e.to_string(),
        })?;
        Ok(LiveCluster::from_client(client, name))
    }

    /// A cluster behind an existing client (tests use a mocked API).
    pub fn from_client(client: Client, name: &str) -> LiveCluster {
        LiveCluster {
            client,
            name: name.to_string(),
            page_size: 500,
        }
    }

    /// Objects per list call.
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.max(1);
        self
    }

    pub fn describe(&self) -> String {
        format!("context:{}", self.name)
    }

    async fn discover(&self) -> Result<Discovery, LiveError> {
        Discovery::new(self.client.clone())
            .run()
            .await
            .map_err(|error| LiveError::Api {
                what: "serve API discovery".into(),
                error,
            })
    }

    fn api_for(&self, ar: &ApiResource, namespaced: bool, r: &ObjRef) -> Api<DynamicObject> {
        match (&r.namespace, namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, ar),
            _ => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Applies `objects` in the given order. Each object's result is reported; one failure
    /// does not stop the others. After the CRDs among them, waits (up to `crd_wait`) until
    /// each is Established and discovers again, so their custom resources can be applied.
    pub async fn apply(
        &self,
        objects: &[ApplyItem],
        policy: ExistingPolicy,
        crd_wait: Duration,
    ) -> Result<Vec<ApplyResult>, LiveError> {
        let mut discovery = self.discover().await?;
        let mut results = Vec::with_capacity(objects.len());
        let mut crds_pending: Vec<String> = Vec::new();
        // New uids of what was applied: owned objects reference their owners by uid.
        let mut uids: std::collections::HashMap<ObjRef, String> = std::collections::HashMap::new();
        for item in objects {
            let r = &item.r;
            let v = &with_owner_refs(&item.value, &item.owners, &uids);
            let is_crd =
                r.kind == "CustomResourceDefinition" && r.group() == "apiextensions.k8s.io";
            if !is_crd && !crds_pending.is_empty() {
                for name in std::mem::take(&mut crds_pending) {
                    self.wait_established(&discovery, &name, crd_wait).await?;
                }
                discovery = self.discover().await?;
            }
            let (version, group) = match r.api_version.rsplit_once('/') {
                Some((g, v)) => (v, g),
                None => (r.api_version.as_str(), ""),
            };
            let gvk = GroupVersionKind::gvk(group, version, &r.kind);
            let result = match discovery.resolve_gvk(&gvk) {
                None => ApplyResult {
                    r: r.clone(),
                    outcome: Outcome::Failed,
                    detail: format!(
                        "the target cluster serves no {} in {}",
                        r.kind, r.api_version
                    ),
                },
                Some((ar, caps)) => {
                    let api = self.api_for(&ar, caps.scope == Scope::Namespaced, r);
                    match apply_one(&api, &r.name, v, policy).await {
                        Ok((outcome, detail, uid)) => {
                            if let Some(uid) = uid {
                                uids.insert(r.clone(), uid);
                            }
                            ApplyResult {
                                r: r.clone(),
                                outcome,
                                detail,
                            }
                        }
                        Err(e) => ApplyResult {
                            r: r.clone(),
                            outcome: Outcome::Failed,
                            detail: apply_failure(&e),
                        },
                    }
                }
            };
            if is_crd && result.outcome != Outcome::Failed && result.outcome != Outcome::Skipped {
                crds_pending.push(r.name.clone());
            }
            results.push(result);
        }
        Ok(results)
    }

    /// Which of `refs` exist on the cluster (for a dry run's conflicts).
    pub async fn existing(&self, refs: &[ObjRef]) -> Result<Vec<ObjRef>, LiveError> {
        Ok(self
            .values(refs)
            .await?
            .into_iter()
            .zip(refs)
            .filter(|(v, _)| v.is_some())
            .map(|(_, r)| r.clone())
            .collect())
    }

    /// The cluster's object for each of `refs` (None: not there, or a type not served).
    pub async fn values(&self, refs: &[ObjRef]) -> Result<Vec<Option<Value>>, LiveError> {
        let discovery = self.discover().await?;
        let mut out = Vec::new();
        for r in refs {
            let (group, version) = match r.api_version.rsplit_once('/') {
                Some((g, v)) => (g, v),
                None => ("", r.api_version.as_str()),
            };
            let Some((ar, caps)) =
                discovery.resolve_gvk(&GroupVersionKind::gvk(group, version, &r.kind))
            else {
                out.push(None); // a type the target does not serve yet (a CRD in the same restore)
                continue;
            };
            let api = self.api_for(&ar, caps.scope == Scope::Namespaced, r);
            let found = api.get_opt(&r.name).await.map_err(|error| LiveError::Api {
                what: format!("read {}", r.display()),
                error,
            })?;
            out.push(found.map(|o| serde_json::to_value(o).expect("an object serialises")));
        }
        Ok(out)
    }

    /// The objects of one kind (group, version, kind, plural) in `namespace`, and its API.
    async fn list_in(
        &self,
        namespace: &str,
        (g, v, k, plural): (&str, &str, &str, &str),
    ) -> Result<(Api<DynamicObject>, Vec<DynamicObject>), LiveError> {
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(g, v, k), plural);
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|error| LiveError::Api {
                what: format!("list {plural} in namespace {namespace}"),
                error,
            })?;
        Ok((api, list.items))
    }

    /// Waits, watching, until every Deployment and StatefulSet of `namespace` has all its
    /// replicas ready, for at most `limit`: whether they were. A namespace without workloads
    /// is ready at once.
    pub async fn wait_workloads_ready(
        &self,
        namespace: &str,
        limit: Duration,
    ) -> Result<bool, LiveError> {
        use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
        let deadline = tokio::time::Instant::now() + limit;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        loop {
            let what = format!("Deployments in namespace {namespace}");
            if !watch_all_ready(&what, deployments.clone(), left(), deployment_ready).await? {
                return Ok(false);
            }
            let what = format!("StatefulSets in namespace {namespace}");
            if !watch_all_ready(&what, sets.clone(), left(), set_ready).await? {
                return Ok(false);
            }
            // The Deployments were ready before the StatefulSets were: still? (A list, not a
            // poll: another watch follows only if one of them went down meanwhile.)
            let now = deployments
                .list(&ListParams::default())
                .await
                .map_err(|error| LiveError::Api {
                    what: format!("list Deployments in namespace {namespace}"),
                    error,
                })?;
            if now.items.iter().all(deployment_ready) {
                return Ok(true);
            }
        }
    }

    /// Whether namespace `ns` exists.
    pub async fn namespace_exists(&self, ns: &str) -> Result<bool, LiveError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        Ok(api
            .get_opt(ns)
            .await
            .map_err(|error| LiveError::Api {
                what: format!("read Namespace {ns}"),
                error,
            })?
            .is_some())
    }

    /// The names of every namespace (what `--include-namespaces` patterns match).
    pub async fn namespace_names(&self) -> Result<Vec<String>, LiveError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let list = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|error| LiveError::Api {
                what: "list namespaces".into(),
                error,
            })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }

    /// A copy of `scope` whose namespace patterns are resolved against this cluster's
    /// namespaces (none given: `scope` as it is, without a call).
    pub async fn resolve_namespaces(&self, scope: &BackupScope) -> Result<BackupScope, LiveError> {
        if scope.include_namespaces.is_empty() && scope.exclude_namespaces.is_empty() {
            return Ok(scope.clone());
        }
        let names = self.namespace_names().await?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Ok(scope
            .clone()
            .in_namespaces_of(&names, &self.describe())
            .map_err(crate::k8s::source::ClusterError::from)?)
    }

    /// An annotation of namespace `ns` (None: no such annotation, or no such namespace).
    pub async fn namespace_annotation(
        &self,
        ns: &str,
        key: &str,
    ) -> Result<Option<String>, LiveError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let found = api.get_opt(ns).await.map_err(|error| LiveError::Api {
            what: format!("read Namespace {ns}"),
            error,
        })?;
        Ok(found
            .and_then(|n| n.metadata.annotations)
            .and_then(|a| a.get(key).cloned()))
    }

    /// Sets (or with None removes) an annotation of namespace `ns`.
    pub async fn annotate_namespace(
        &self,
        ns: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), LiveError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        api.patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .map_err(|error| LiveError::Api {
            what: format!("annotate Namespace {ns}"),
            error,
        })?;
        Ok(())
    }

    /// Deletes namespace `ns` (and with it everything in it).
    pub async fn remove_namespace(&self, ns: &str) -> Result<(), LiveError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        api.delete(ns, &Default::default())
            .await
            .map_err(|error| LiveError::Api {
                what: format!("delete Namespace {ns}"),
                error,
            })?;
        Ok(())
    }

    /// Waits, by a watch, until CustomResourceDefinition `name` is `Established` (its
    /// resources served), for at most `limit`. No CRD type served: nothing to wait for.
    async fn wait_established(
        &self,
        discovery: &Discovery,
        name: &str,
        limit: Duration,
    ) -> Result<(), LiveError> {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        use kube::runtime::wait::{await_condition, conditions::is_crd_established};
        let gvk = GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition");
        if discovery.resolve_gvk(&gvk).is_none() {
            return Ok(());
        }
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        match tokio::time::timeout(limit, await_condition(api, name, is_crd_established())).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(LiveError::Volume {
                what: format!("CustomResourceDefinition {name}"),
                reason: format!(
                    "could not watch it until established (lifeboat needs `watch` on customresourcedefinitions): {e}"
                ),
            }),
            Err(_) => Err(LiveError::NotEstablished {
                name: name.to_string(),
                after: limit,
            }),
        }
    }

    /// Every object of `namespaces`, of every listable namespaced type the server serves, plus
    /// the cluster-scoped objects of the kinds a backup may need.
    pub async fn load(&self, namespaces: &[String]) -> Result<Vec<Exported>, LiveError> {
        let discovery = Discovery::new(self.client.clone())
            .run()
            .await
            .map_err(|error| LiveError::Api {
                what: "serve API discovery".into(),
                error,
            })?;
        let mut out = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if !caps.supports_operation(verbs::LIST) || NOT_CAPTURED.contains(&ar.kind.as_str())
                {
                    continue;
                }
                match caps.scope {
                    Scope::Namespaced => {
                        for ns in namespaces {
                            let api: Api<DynamicObject> =
                                Api::namespaced_with(self.client.clone(), ns, &ar);
                            self.list_all(&api, &ar, Some(ns), &mut out).await?;
                        }
                    }
                    Scope::Cluster if CLUSTER_KINDS.contains(&ar.kind.as_str()) => {
                        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
                        self.list_all(&api, &ar, None, &mut out).await?;
                    }
                    Scope::Cluster => {}
                }
            }
        }
        Ok(out)
    }

    /// One page of a list: the objects and the token of the next page.
    async fn page(
        &self,
        api: &Api<DynamicObject>,
        ar: &ApiResource,
        namespace: Option<&str>,
        token: Option<&str>,
    ) -> Result<(Vec<Exported>, Option<String>), LiveError> {
        let what = || match namespace {
            Some(ns) => format!("list {} in namespace {ns}", ar.plural),
            None => format!("list {}", ar.plural),
        };
        let mut lp = ListParams::default().limit(self.page_size);
        if let Some(t) = token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.map_err(|error| LiveError::Api {
            what: what(),
            error,
        })?;
        let mut out = Vec::with_capacity(page.items.len());
        for obj in page.items {
            let mut v = serde_json::to_value(&obj).expect("a listed object serialises");
            // List items come without their type; put it back, as `kubectl get -o yaml` does.
            if let Some(m) = v.as_object_mut() {
                m.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
                m.insert("kind".into(), Value::String(ar.kind.clone()));
            }
            let origin = format!("{} {}", self.describe(), what());
            let r = ObjRef::of(&v, &origin)?;
            out.push(Exported {
                r,
                value: v,
                origin,
            });
        }
        let next = page.metadata.continue_.filter(|t| !t.is_empty());
        Ok((out, next))
    }

    /// Every page of a list.
    async fn list_all(
        &self,
        api: &Api<DynamicObject>,
        ar: &ApiResource,
        namespace: Option<&str>,
        out: &mut Vec<Exported>,
    ) -> Result<(), LiveError> {
        let mut token = None;
        loop {
            let (items, next) = self.page(api, ar, namespace, token.as_deref()).await?;
            out.extend(items);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(()),
            }
        }
    }

    /// Streams the objects of `scope` into `tx`, one page at a time: memory stays bounded by
    /// the page size and the channel, whatever the number of objects. Cluster-scoped objects
    /// of the kinds a backup may need (few) are listed first and sent last, once the
    /// namespaced objects have said what they need. A list the API server refuses is recorded
    /// as a failure and the capture goes on; the Namespace list is needed to check the scope
    /// and stops it.
    pub async fn capture(
        &self,
        scope: &BackupScope,
        tx: mpsc::Sender<Exported>,
    ) -> Result<Vec<CaptureFailure>, LiveError> {
        let discovery = self.discover().await?;
        let types: Vec<(ApiResource, bool)> = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .filter(|(ar, caps)| {
                caps.supports_operation(verbs::LIST) && !NOT_CAPTURED.contains(&ar.kind.as_str())
            })
            .map(|(ar, caps)| (ar, caps.scope == Scope::Namespaced))
            .collect();
        let mut failures = Vec::new();
        let mut cluster = Vec::new();
        for (ar, _) in types
            .iter()
            .filter(|(ar, namespaced)| !namespaced && CLUSTER_KINDS.contains(&ar.kind.as_str()))
        {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), ar);
            match self.list_all(&api, ar, None, &mut cluster).await {
                Err(e) if ar.kind != "Namespace" => failures.push(failure(e)?),
                r => r?,
            }
        }
        let namespaces: Vec<&str> = cluster
            .iter()
            .filter(|e| e.r.kind == "Namespace")
            .map(|e| e.r.name.as_str())
            .collect();
        let served: Vec<ResourceType> = types
            .iter()
            .map(|(ar, _)| ResourceType::new(&ar.group, &ar.kind, &ar.plural))
            .collect();
        let kinds = crate::k8s::source::validate_scope(
            scope,
            &self.describe(),
            |ns| namespaces.contains(&ns),
            &served,
        )?;
        let mut sel = ScopeSelector::new(scope, kinds);
        for (ar, _) in types.iter().filter(|(_, namespaced)| *namespaced) {
            for ns in &scope.namespaces {
                let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, ar);
                let mut token = None;
                loop {
                    let (items, next) = match self.page(&api, ar, Some(ns), token.as_deref()).await
                    {
                        Ok(page) => page,
                        Err(e) => {
                            failures.push(failure(e)?);
                            break;
                        }
                    };
                    for e in items {
                        if sel.offer(&e) {
                            tx.send(e).await.map_err(|_| LiveError::Stopped)?;
                        }
                    }
                    match next {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
            }
        }
        for e in sel.cluster_scoped(&cluster) {
            tx.send(e).await.map_err(|_| LiveError::Stopped)?;
        }
        Ok(failures)
    }
}

/// A refused list becomes a recorded failure; anything else stops the capture.
fn failure(e: LiveError) -> Result<CaptureFailure, LiveError> {
    match e {
        LiveError::Api { what, error } => Ok(CaptureFailure {
            what,
            reason: crate::k8s::error::api_cause(&error),
        }),
        other => Err(other),
    }
}

/// One object: server-side apply under `policy`. Returns the outcome, a detail line, and the
/// object's uid on the target.
/// Why an object could not be applied, once, with the fix when lifeboat's account may not write.
fn apply_failure(e: &kube::Error) -> String {
    let cause = super::error::api_cause(e);
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{cause}; lifeboat's account may not write it: a restoring site binds deploy/restore/rbac-restore.yaml as well as deploy/base/rbac.yaml"
        ),
        _ => cause,
    }
}

/// How long a re-created object's old version may take to go.
const RECREATE_WAIT: Duration = Duration::from_secs(60);

async fn apply_one(
    api: &Api<DynamicObject>,
    name: &str,
    v: &Value,
    policy: ExistingPolicy,
) -> Result<(Outcome, String, Option<String>), kube::Error> {
    let current = api.get_opt(name).await?;
    let exists = current.is_some();
    match (current, policy) {
        (Some(existing), ExistingPolicy::Skip) => {
            return Ok((
                Outcome::Skipped,
                "exists on the target".into(),
                existing.metadata.uid,
            ));
        }
        (Some(existing), ExistingPolicy::Recreate) => {
            api.delete(name, &DeleteParams::foreground()).await?;
            // Until the old object is gone (a watch; foreground deletion waits for its
            // dependents), for at most a minute: then the apply below reports the conflict.
            let uid = existing.metadata.uid.unwrap_or_default();
            let gone = kube::runtime::wait::await_condition(
                api.clone(),
                name,
                kube::runtime::wait::conditions::is_deleted(&uid),
            );
            if let Ok(Err(e)) = tokio::time::timeout(RECREATE_WAIT, gone).await {
                tracing::warn!(
                    object = name,
                    "could not watch the deletion before re-creating: {e}"
                );
            }
        }
        _ => {}
    }
    let applied = api
        .patch(
            name,
            &PatchParams::apply("lifeboat").force(),
            &Patch::Apply(v),
        )
        .await?;
    let (outcome, detail) = match (exists, policy) {
        (false, _) => (Outcome::Created, "server-side apply"),
        (true, ExistingPolicy::Recreate) => (Outcome::Updated, "deleted and created again"),
        (true, _) => (Outcome::Updated, "server-side apply (forced)"),
    };
    Ok((outcome, detail.into(), applied.metadata.uid))
}

/// `v` with `metadata.ownerReferences` re-made for the owners already applied (by new uid).
fn with_owner_refs(
    v: &Value,
    owners: &[crate::k8s::objects::OwnerLink],
    uids: &std::collections::HashMap<ObjRef, String>,
) -> Value {
    let refs: Vec<Value> = owners
        .iter()
        .filter_map(|o| {
            let uid = uids.get(&o.owner)?;
            Some(serde_json::json!({
                "apiVersion": o.owner.api_version, "kind": o.owner.kind, "name": o.owner.name, "uid": uid,
                "controller": o.controller, "blockOwnerDeletion": o.block_owner_deletion,
            }))
        })
        .collect();
    let mut v = v.clone();
    if !refs.is_empty() {
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("ownerReferences".into(), Value::Array(refs));
        }
    }
    v
}

impl LiveCluster {
    /// Snapshots and data movers on this cluster.
    pub fn csi(&self, settings: crate::k8s::csi::MoverSettings) -> crate::k8s::csi::Csi {
        crate::k8s::csi::Csi::new(self.client.clone(), settings)
    }

    /// The client, for adapters of other layers (rule actions run through `pods/exec`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The pods and PersistentVolumeClaims of `namespaces`, for rules and volume snapshots.
    pub async fn pods_and_claims(&self, namespaces: &[String]) -> Result<Vec<Value>, LiveError> {
        use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
        let mut out = Vec::new();
        for ns in namespaces {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|error| LiveError::Api {
                    what: format!("list pods in namespace {ns}"),
                    error,
                })?;
            for p in list.items {
                let mut v = serde_json::to_value(p).expect("a Pod serialises");
                v["kind"] = "Pod".into();
                v["apiVersion"] = "v1".into();
                out.push(v);
            }
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
            let list =
                claims
                    .list(&ListParams::default())
                    .await
                    .map_err(|error| LiveError::Api {
                        what: format!("list persistentvolumeclaims in namespace {ns}"),
                        error,
                    })?;
            for c in list.items {
                let mut v = serde_json::to_value(c).expect("a claim serialises");
                v["kind"] = "PersistentVolumeClaim".into();
                v["apiVersion"] = "v1".into();
                out.push(v);
            }
        }
        Ok(out)
    }
}

impl LiveCluster {
    /// `activate` (run) or `deactivate` (hold) the workloads of a namespace: Deployments,
    /// StatefulSets and ReplicaSets get their recorded replica counts back (or 0, recording
    /// them), CronJobs and lifeboat's BackupSchedules are resumed (or suspended). Merge patches
    /// of just those fields.
    pub async fn set_running(&self, namespace: &str, run: bool) -> Result<Vec<Change>, LiveError> {
        let kinds = [
            ("apps", "v1", "Deployment", "deployments"),
            ("apps", "v1", "StatefulSet", "statefulsets"),
            ("apps", "v1", "ReplicaSet", "replicasets"),
            ("batch", "v1", "CronJob", "cronjobs"),
            (
                "lifeboat.dev",
                "v1alpha1",
                "BackupSchedule",
                "backupschedules",
            ),
        ];
        let mut changes = Vec::new();
        for kind @ (g, v, k, _) in kinds {
            let (api, items) = match self.list_in(namespace, kind).await {
                Ok(x) => x,
                // A cluster without lifeboat's resources has no schedules to hold.
                Err(LiveError::Api {
                    error: kube::Error::Api(e),
                    ..
                }) if g == "lifeboat.dev" && e.code == 404 => continue,
                Err(e) => return Err(e),
            };
            for item in items {
                let mut value = serde_json::to_value(&item).expect("an object serialises");
                value["apiVersion"] = Value::from(format!("{g}/{v}"));
                value["kind"] = Value::from(k);
                let r = ObjRef::of(&value, "live")?;
                // Controller-owned ReplicaSets follow their Deployment.
                if k == "ReplicaSet" && value.pointer("/metadata/ownerReferences").is_some() {
                    continue;
                }
                let before = value.clone();
                let Some(change) = change_of(&r, &mut value, run) else {
                    continue;
                };
                let mut annotations = serde_json::Map::new();
                let old = before
                    .pointer("/metadata/annotations")
                    .and_then(Value::as_object);
                let new = value
                    .pointer("/metadata/annotations")
                    .and_then(Value::as_object);
                for key in old
                    .iter()
                    .flat_map(|m| m.keys())
                    .chain(new.iter().flat_map(|m| m.keys()))
                {
                    let (a, b) = (old.and_then(|m| m.get(key)), new.and_then(|m| m.get(key)));
                    if a != b {
                        annotations.insert(key.clone(), b.cloned().unwrap_or(Value::Null));
                    }
                }
                let field = change.field.trim_start_matches("spec.").to_string();
                let patch = serde_json::json!({
                    "metadata": {"annotations": annotations},
                    "spec": {field.clone(): value["spec"][&field].clone()},
                });
                api.patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|error| LiveError::Api {
                        what: format!("patch {} {namespace}/{}", k, r.name),
                        error,
                    })?;
                changes.push(change);
            }
        }
        Ok(changes)
    }
}

/// Whether a workload asking for `want` replicas (none given: 1) has them ready.
fn replicas_ready(want: Option<i32>, ready: Option<i32>) -> bool {
    ready.unwrap_or(0) >= want.unwrap_or(1)
}

fn deployment_ready(d: &k8s_openapi::api::apps::v1::Deployment) -> bool {
    replicas_ready(
        d.spec.replicas,
        d.status.as_ref().and_then(|s| s.ready_replicas),
    )
}

fn set_ready(s: &k8s_openapi::api::apps::v1::StatefulSet) -> bool {
    replicas_ready(
        s.spec.replicas,
        s.status.as_ref().and_then(|s| s.ready_replicas),
    )
}

/// Watches the workloads of `api` until `ready` holds for all of them, for at most `limit`:
/// whether it did.
async fn watch_all_ready<K>(
    what: &str,
    api: Api<K>,
    limit: Duration,
    ready: fn(&K) -> bool,
) -> Result<bool, LiveError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let verdict = super::watch::until(what, api, (), limit, |all| {
        all.iter().all(|k| ready(k)).then_some(())
    });
    Ok(verdict.await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::replicas_ready;

    #[test]
    fn a_workload_is_ready_with_all_its_replicas_and_one_by_default() {
        assert!(replicas_ready(Some(2), Some(2)));
        assert!(!replicas_ready(Some(2), Some(1)));
        assert!(
            !replicas_ready(None, None),
            "one replica by default, none ready"
        );
        assert!(replicas_ready(None, Some(1)));
        assert!(replicas_ready(Some(0), None), "scaled to zero is ready");
    }
}
