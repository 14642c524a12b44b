//! Kubernetes objects between capture and apply: takes objects as a live cluster exports them
//! (JSON values, lossless); gives them sanitised, mapped and in dependency order.
//!
//! Everything here is pure and table-driven: [`SANITISE_RULES`] (one row per rule, each with a
//! test), [`skip_reason`] (what is never restored), [`map_object`] (namespaces and storage
//! classes), [`hold_applications`] (the `--start-applications=false` form) and [`apply_order`].
//! Must not talk to a cluster or a repository.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value};

/// Annotation holding a workload's replica count while it is held at 0.
pub const ORIGINAL_REPLICAS: &str = "lifeboat.dev/original-replicas";
/// Annotation holding a CronJob's `spec.suspend` while lifeboat keeps it suspended.
pub const ORIGINAL_SUSPEND: &str = "lifeboat.dev/original-suspend";

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("{origin}: not a Kubernetes object: {reason}")]
    Malformed { origin: String, reason: String },
    #[error("invalid {flag} `{value}`: {reason}")]
    BadFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

/// Identity of an object: apiVersion, kind, namespace (None: cluster-scoped), name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ObjRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjRef {
    pub fn of(v: &Value, origin: &str) -> Result<ObjRef, ResourceError> {
        let bad = |reason: &str| ResourceError::Malformed {
            origin: origin.to_string(),
            reason: reason.to_string(),
        };
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        Ok(ObjRef {
            api_version: s("/apiVersion")
                .ok_or_else(|| bad("no apiVersion"))?
                .to_string(),
            kind: s("/kind").ok_or_else(|| bad("no kind"))?.to_string(),
            namespace: s("/metadata/namespace").map(str::to_string),
            name: s("/metadata/name")
                .ok_or_else(|| bad("no metadata.name"))?
                .to_string(),
        })
    }

    /// API group: `` for the core group, `apps`, `lifeboat.dev`, ...
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or("")
    }

    /// `kind/name` or `kind/namespace/name`, as messages and filters name objects.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.kind, ns, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

// ----- sanitising ---------------------------------------------------------------------------

/// Choices that change what sanitising keeps.
#[derive(Debug, Clone, Default)]
pub struct SanitiseOptions {
    pub keep_status: bool,
    pub keep_node_ports: bool,
}

/// One sanitising rule: which objects it applies to and what it removes.
pub struct Rule {
    pub name: &'static str,
    pub applies: fn(&ObjRef) -> bool,
    pub apply: fn(&mut Value, &SanitiseOptions),
}

fn remove(v: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(*last);
    }
}

fn obj_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = v;
    for p in path {
        cur = cur.get_mut(*p)?;
    }
    cur.as_object_mut()
}

const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
];

const CONTROLLER_UID_LABELS: &[&str] = &["controller-uid", "batch.kubernetes.io/controller-uid"];

/// The sanitising rules, applied in this order.
pub const SANITISE_RULES: &[Rule] = &[
    Rule {
        name: "metadata: drop what the source cluster assigned",
        applies: |_| true,
        apply: |v, _| {
            for f in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
                "ownerReferences",
            ] {
                remove(v, &["metadata", f]);
            }
            if let Some(a) = obj_mut(v, &["metadata", "annotations"]) {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
                a.remove("deployment.kubernetes.io/revision");
            }
        },
    },
    Rule {
        name: "status: dropped unless kept",
        applies: |_| true,
        apply: |v, o| {
            if !o.keep_status {
                remove(v, &["status"]);
            }
        },
    },
    Rule {
        name: "Service: cluster IPs, node ports, load-balancer IP",
        applies: |r| r.kind == "Service" && r.group().is_empty(),
        apply: |v, o| {
            let headless = v.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if !headless {
                remove(v, &["spec", "clusterIP"]);
                remove(v, &["spec", "clusterIPs"]);
            }
            remove(v, &["spec", "loadBalancerIP"]);
            remove(v, &["spec", "healthCheckNodePort"]);
            if !o.keep_node_ports {
                if let Some(ports) = v.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if let Some(m) = p.as_object_mut() {
                            m.remove("nodePort");
                        }
                    }
                }
            }
        },
    },
    Rule {
        name: "Pod: node assignment",
        applies: |r| r.kind == "Pod" && r.group().is_empty(),
        apply: |v, _| {
            remove(v, &["spec", "nodeName"]);
            remove(v, &["spec", "priority"]);
        },
    },
    Rule {
        name: "Job: controller-uid labels and selector",
        applies: |r| r.kind == "Job" && r.group() == "batch",
        apply: |v, _| {
            for path in [
                &["metadata", "labels"][..],
                &["spec", "selector", "matchLabels"][..],
                &["spec", "template", "metadata", "labels"][..],
            ] {
                if let Some(m) = obj_mut(v, path) {
                    for l in CONTROLLER_UID_LABELS {
                        m.remove(*l);
                    }
                }
            }
            // A generated selector names the old controller uid; let the API server make one.
            if v.pointer("/spec/manualSelector").and_then(Value::as_bool) != Some(true) {
                remove(v, &["spec", "selector"]);
            }
        },
    },
    Rule {
        name: "PersistentVolume: claim binding",
        applies: |r| r.kind == "PersistentVolume" && r.group().is_empty(),
        apply: |v, _| {
            remove(v, &["spec", "claimRef", "uid"]);
            remove(v, &["spec", "claimRef", "resourceVersion"]);
            if let Some(a) = obj_mut(v, &["metadata", "annotations"]) {
                for k in BINDING_ANNOTATIONS {
                    a.remove(*k);
                }
            }
        },
    },
    Rule {
        name: "PersistentVolumeClaim: binding annotations",
        applies: |r| r.kind == "PersistentVolumeClaim" && r.group().is_empty(),
        apply: |v, _| {
            if let Some(a) = obj_mut(v, &["metadata", "annotations"]) {
                for k in BINDING_ANNOTATIONS {
                    a.remove(*k);
                }
            }
        },
    },
    Rule {
        name: "ServiceAccount: token secret references",
        applies: |r| r.kind == "ServiceAccount" && r.group().is_empty(),
        apply: |v, _| {
            let prefix = format!(
                "{}-token-",
                v.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
            if let Some(secrets) = v.get_mut("secrets").and_then(Value::as_array_mut) {
                secrets.retain(|s| {
                    !s.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.starts_with(&prefix))
                });
            }
        },
    },
];

/// Applies every rule that applies to `r`.
pub fn sanitise(r: &ObjRef, v: &mut Value, o: &SanitiseOptions) {
    for rule in SANITISE_RULES {
        if (rule.applies)(r) {
            (rule.apply)(v, o);
        }
    }
}

/// Kinds never restored: they belong to the cluster, or controllers recreate them.
const NEVER_RESTORED: &[(&str, &str)] = &[
    ("", "Node"),
    ("", "Event"),
    ("events.k8s.io", "Event"),
    ("coordination.k8s.io", "Lease"),
    ("apps", "ControllerRevision"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "CSINode"),
    ("apiregistration.k8s.io", "APIService"),
    ("", "ComponentStatus"),
    ("", "Binding"),
    ("authorization.k8s.io", "SelfSubjectReview"),
];

/// Why an object is not restored, or None when it is. `set` holds every object of the
/// restore (for owner and service lookups).
pub fn skip_reason(r: &ObjRef, v: &Value, set: &HashSet<ObjRef>) -> Option<String> {
    if NEVER_RESTORED
        .iter()
        .any(|(g, k)| *g == r.group() && *k == r.kind)
    {
        return Some(format!("{} objects are never restored", r.kind));
    }
    let str_at = |p: &str| v.pointer(p).and_then(Value::as_str);
    match (r.group(), r.kind.as_str()) {
        ("", "Secret") if str_at("/type") == Some("kubernetes.io/service-account-token") => {
            return Some("service-account token: the target cluster issues its own".into())
        }
        ("", "Pod") if matches!(str_at("/status/phase"), Some("Succeeded") | Some("Failed")) => {
            return Some("completed pod".into())
        }
        ("", "Pod") if str_at("/metadata/annotations/kubernetes.io~1config.mirror").is_some() => {
            return Some("mirror pod of a static pod".into())
        }
        ("batch", "Job") if v.pointer("/status/completionTime").is_some() => {
            return Some("completed job".into())
        }
        ("", "Endpoints") => {
            let svc = ObjRef {
                api_version: "v1".into(),
                kind: "Service".into(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            };
            if set.contains(&svc) {
                return Some(
                    "endpoints of a restored service: its controller recreates them".into(),
                );
            }
        }
        ("discovery.k8s.io", "EndpointSlice")
            if str_at("/metadata/labels/endpointslice.kubernetes.io~1managed-by")
                == Some("endpointslice-controller.k8s.io") =>
        {
            return Some("controller-managed endpoint slice".into())
        }
        _ => {}
    }
    // Owned by a controller that is restored too: the controller recreates it.
    if let Some(owners) = v
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    {
        for o in owners {
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or_default();
            let owner = ObjRef {
                api_version: o
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                kind: kind.to_string(),
                namespace: r.namespace.clone(),
                name: o
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            let controller = o
                .get("controller")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if controller && set.contains(&owner) {
                return Some(format!(
                    "owned by {}: restored with its controller, which recreates it",
                    owner.display()
                ));
            }
        }
    }
    None
}

/// An owner an object keeps on the target: restored too, so that its reference can be re-made
/// with the owner's new uid (file targets have no uids and leave it out).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnerLink {
    /// The owner as it is on the target.
    pub owner: ObjRef,
    pub controller: bool,
    pub block_owner_deletion: bool,
}

/// The owner references of `v` (as exported) whose owners are in `restored` (by source
/// identity), mapped to the owners' target identities.
pub fn owner_links(
    r: &ObjRef,
    v: &Value,
    restored: &HashSet<ObjRef>,
    namespaces: &Mapping,
) -> Vec<OwnerLink> {
    let Some(refs) = v
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    refs.iter()
        .filter_map(|o| {
            let s = |k: &str| {
                o.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
            let candidates = [r.namespace.clone(), None].map(|namespace| ObjRef {
                api_version: s("apiVersion"),
                kind: s("kind"),
                namespace,
                name: s("name"),
            });
            let owner = candidates.into_iter().find(|c| restored.contains(c))?;
            Some(OwnerLink {
                owner: mapped_ref(&owner, namespaces),
                controller: flag("controller"),
                block_owner_deletion: flag("blockOwnerDeletion"),
            })
        })
        .collect()
}

// ----- mapping ------------------------------------------------------------------------------

/// `old:new,old2:new2` mappings, as the restore flags take them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping(pub BTreeMap<String, String>);

impl Mapping {
    pub fn parse(flag: &'static str, text: &str) -> Result<Mapping, ResourceError> {
        let mut m = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |reason: &str| ResourceError::BadFlag {
                flag,
                value: pair.to_string(),
                reason: reason.to_string(),
            };
            let (old, new) = pair.split_once(':').ok_or_else(|| bad("write old:new"))?;
            if old.is_empty() || new.is_empty() || new.contains(':') {
                return Err(bad("write old:new with non-empty names"));
            }
            if m.insert(old.to_string(), new.to_string()).is_some() {
                return Err(bad("the same name is mapped twice"));
            }
        }
        Ok(Mapping(m))
    }

    pub fn get<'a>(&'a self, s: &'a str) -> &'a str {
        self.0.get(s).map(String::as_str).unwrap_or(s)
    }
}

fn map_str(v: &mut Value, path: &str, m: &Mapping) {
    if let Some(Value::String(s)) = v.pointer_mut(path) {
        if let Some(new) = m.0.get(s.as_str()) {
            *s = new.clone();
        }
    }
}

fn map_each(v: &mut Value, array: &str, inner: &str, m: &Mapping) {
    if let Some(items) = v.pointer_mut(array).and_then(Value::as_array_mut) {
        for item in items {
            map_str(item, inner, m);
        }
    }
}

/// Renames namespaces everywhere an object names them, and storage classes where a volume or
/// claim names them.
pub fn map_object(r: &ObjRef, v: &mut Value, namespaces: &Mapping, storage_classes: &Mapping) {
    map_str(v, "/metadata/namespace", namespaces);
    match (r.group(), r.kind.as_str()) {
        ("", "Namespace") => map_str(v, "/metadata/name", namespaces),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            map_each(v, "/subjects", "/namespace", namespaces)
        }
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => map_each(
            v,
            "/webhooks",
            "/clientConfig/service/namespace",
            namespaces,
        ),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => map_str(
            v,
            "/spec/conversion/webhook/clientConfig/service/namespace",
            namespaces,
        ),
        ("", "PersistentVolumeClaim") => {
            map_str(v, "/spec/storageClassName", storage_classes);
            map_str(
                v,
                "/metadata/annotations/volume.beta.kubernetes.io~1storage-class",
                storage_classes,
            );
        }
        ("", "PersistentVolume") => {
            map_str(v, "/spec/storageClassName", storage_classes);
            map_str(v, "/spec/claimRef/namespace", namespaces);
        }
        ("apps", "StatefulSet") => map_each(
            v,
            "/spec/volumeClaimTemplates",
            "/spec/storageClassName",
            storage_classes,
        ),
        _ => {}
    }
}

/// The identity an object will have on the target.
/// (A mapped StorageClass keeps its name: it is not restored at all; see the restore plan.)
pub fn mapped_ref(r: &ObjRef, namespaces: &Mapping) -> ObjRef {
    let mut out = r.clone();
    out.namespace = r.namespace.as_ref().map(|n| namespaces.get(n).to_string());
    if r.group().is_empty() && r.kind == "Namespace" {
        out.name = namespaces.get(&r.name).to_string();
    }
    out
}

// ----- holding applications stopped ---------------------------------------------------------

/// Kinds whose `spec.replicas` is held at 0 by `--start-applications=false`.
pub fn is_scalable(r: &ObjRef) -> bool {
    matches!(
        (r.group(), r.kind.as_str()),
        ("apps", "Deployment" | "StatefulSet" | "ReplicaSet")
            | ("apps.openshift.io", "DeploymentConfig")
    )
}

/// The warm-standby form: scalable workloads at 0 replicas with the original count recorded,
/// CronJobs suspended with the original setting recorded. [`release_applications`] undoes it
/// exactly. Objects already held keep their recorded originals.
fn annotations(v: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = v.get_mut("metadata")?.as_object_mut()?;
    meta.entry("annotations")
        .or_insert_with(|| json!({}))
        .as_object_mut()
}

pub fn hold_applications(r: &ObjRef, v: &mut Value) -> bool {
    if is_scalable(r) {
        let replicas = v
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let Some(a) = annotations(v) else {
            return false;
        };
        a.entry(ORIGINAL_REPLICAS)
            .or_insert_with(|| json!(replicas.to_string()));
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("replicas".into(), json!(0));
        }
        return true;
    }
    if r.group() == "batch" && r.kind == "CronJob" {
        let suspend = v
            .pointer("/spec/suspend")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let Some(a) = annotations(v) else {
            return false;
        };
        a.entry(ORIGINAL_SUSPEND)
            .or_insert_with(|| json!(suspend.to_string()));
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("suspend".into(), json!(true));
        }
        return true;
    }
    false
}

/// Reverses [`hold_applications`]: restores recorded replica counts and suspend settings and
/// removes the records. Returns what changed, as `(field, from, to)`.
pub fn release_applications(r: &ObjRef, v: &mut Value) -> Option<(String, String, String)> {
    let take = |v: &mut Value, key: &str| -> Option<String> {
        let a = v.pointer_mut("/metadata/annotations")?.as_object_mut()?;
        let s = a.remove(key)?.as_str()?.to_string();
        Some(s)
    };
    if is_scalable(r) {
        let original = take(v, ORIGINAL_REPLICAS)?;
        let n: u64 = original.parse().ok()?;
        let before = v
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        v.get_mut("spec")?
            .as_object_mut()?
            .insert("replicas".into(), json!(n));
        return Some(("spec.replicas".into(), before.to_string(), n.to_string()));
    }
    if r.group() == "batch" && r.kind == "CronJob" {
        let original = take(v, ORIGINAL_SUSPEND)? == "true";
        v.get_mut("spec")?
            .as_object_mut()?
            .insert("suspend".into(), json!(original));
        return Some(("spec.suspend".into(), "true".into(), original.to_string()));
    }
    None
}

// ----- ordering -----------------------------------------------------------------------------

/// Built-in API groups: kinds of these groups that are not ranked explicitly are ordinary
/// objects; kinds of any other group are custom resources.
const BUILTIN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "discovery.k8s.io",
    "coordination.k8s.io",
    "node.k8s.io",
    "snapshot.storage.k8s.io",
    "apiextensions.k8s.io",
    "admissionregistration.k8s.io",
    "route.openshift.io",
    "apps.openshift.io",
    "image.openshift.io",
    "template.openshift.io",
];

/// Apply phase of an object: lower first.
pub fn rank(r: &ObjRef) -> u8 {
    match (r.group(), r.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "Namespace") => 1,
        ("storage.k8s.io", "StorageClass") | ("snapshot.storage.k8s.io", "VolumeSnapshotClass") => {
            2
        }
        ("scheduling.k8s.io", "PriorityClass") => 2,
        ("snapshot.storage.k8s.io", "VolumeSnapshotContent") => 3,
        ("snapshot.storage.k8s.io", "VolumeSnapshot") => 4,
        ("", "PersistentVolume") => 5,
        ("", "PersistentVolumeClaim") => 6,
        ("", "ServiceAccount") => 7,
        ("", "Secret" | "ConfigMap") => 8,
        ("rbac.authorization.k8s.io", _) => 9,
        ("", "ResourceQuota" | "LimitRange") | ("networking.k8s.io", "NetworkPolicy") => 10,
        ("policy", "PodDisruptionBudget") => 10,
        ("", "Service" | "Endpoints") | ("discovery.k8s.io", "EndpointSlice") => 11,
        ("apps", _)
        | ("batch", _)
        | ("apps.openshift.io", _)
        | ("", "Pod" | "ReplicationController") => 12,
        ("admissionregistration.k8s.io", _) => 15,
        (g, _) if BUILTIN_GROUPS.contains(&g) => 13,
        _ => 14, // custom resources, after the workloads and CRDs they need
    }
}

/// Indices of `objects` in apply order: by [`rank`], owners before the objects they own,
/// then by namespace and name (so output is stable).
pub fn apply_order(objects: &[(ObjRef, Value)]) -> Vec<usize> {
    let by_ref: HashMap<(&str, Option<&str>, &str), usize> = objects
        .iter()
        .enumerate()
        .map(|(i, (r, _))| {
            (
                (r.kind.as_str(), r.namespace.as_deref(), r.name.as_str()),
                i,
            )
        })
        .collect();
    // Depth in the ownership graph (owners in the set first); cycles are cut at 8.
    let owner_of = |i: usize| -> Vec<usize> {
        let (r, v) = &objects[i];
        v.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .map(|owners| {
                owners
                    .iter()
                    .filter_map(|o| {
                        let kind = o.get("kind")?.as_str()?;
                        let name = o.get("name")?.as_str()?;
                        by_ref
                            .get(&(kind, r.namespace.as_deref(), name))
                            .or_else(|| by_ref.get(&(kind, None, name)))
                            .copied()
                    })
                    .filter(|&j| j != i)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut depth = vec![0u8; objects.len()];
    for _ in 0..8 {
        let mut changed = false;
        for i in 0..objects.len() {
            let d = owner_of(i)
                .iter()
                .map(|&j| depth[j].saturating_add(1))
                .max()
                .unwrap_or(0);
            if d > depth[i] {
                depth[i] = d;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // An owned object may not go before its owner even when its own rank is lower.
    let mut eff: Vec<u8> = objects.iter().map(|(r, _)| rank(r)).collect();
    for _ in 0..8 {
        let mut changed = false;
        for i in 0..objects.len() {
            let need = owner_of(i).iter().map(|&j| eff[j]).max().unwrap_or(0);
            if need > eff[i] {
                eff[i] = need;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut idx: Vec<usize> = (0..objects.len()).collect();
    idx.sort_by(|&a, &b| {
        let (ra, rb) = (&objects[a].0, &objects[b].0);
        (eff[a], depth[a], &ra.namespace, &ra.kind, &ra.name).cmp(&(
            eff[b],
            depth[b],
            &rb.namespace,
            &rb.kind,
            &rb.name,
        ))
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn obj(v: Value) -> (ObjRef, Value) {
        (ObjRef::of(&v, "test").unwrap(), v)
    }

    fn clean(v: Value) -> Value {
        let (r, mut v) = obj(v);
        sanitise(&r, &mut v, &SanitiseOptions::default());
        v
    }

    #[test]
    fn rule_metadata() {
        let v = clean(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "c", "namespace": "n", "uid": "u", "resourceVersion": "1", "generation": 2,
            "creationTimestamp": "t", "selfLink": "/x", "managedFields": [{}],
            "ownerReferences": [{"kind": "X"}], "labels": {"a": "b"}, "finalizers": ["f"],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"}}}),
        );
        assert_eq!(
            v["metadata"],
            json!({"name": "c", "namespace": "n", "labels": {"a": "b"}, "finalizers": ["f"], "annotations": {"keep": "me"}})
        );
    }

    #[test]
    fn rule_status() {
        let v = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "status": {"replicas": 3}});
        assert!(clean(v.clone()).get("status").is_none());
        let (r, mut kept) = obj(v);
        sanitise(
            &r,
            &mut kept,
            &SanitiseOptions {
                keep_status: true,
                ..Default::default()
            },
        );
        assert_eq!(kept["status"]["replicas"], 3);
    }

    #[test]
    fn rule_service() {
        let v = clean(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {
            "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "loadBalancerIP": "1.2.3.4",
            "healthCheckNodePort": 31000, "type": "LoadBalancer",
            "ports": [{"port": 80, "nodePort": 30080}]}}),
        );
        assert_eq!(
            v["spec"],
            json!({"type": "LoadBalancer", "ports": [{"port": 80}]})
        );
        let headless = clean(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "h"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}),
        );
        assert_eq!(
            headless["spec"]["clusterIP"], "None",
            "headless stays headless"
        );
        let (r, mut np) = obj(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"nodePort": 30080}]}}),
        );
        sanitise(
            &r,
            &mut np,
            &SanitiseOptions {
                keep_node_ports: true,
                ..Default::default()
            },
        );
        assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
    }

    #[test]
    fn rule_pod() {
        let v = clean(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n1", "priority": 5, "containers": []}}),
        );
        assert_eq!(v["spec"], json!({"containers": []}));
    }

    #[test]
    fn rule_job() {
        let v = clean(
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "labels": {"controller-uid": "u", "app": "x"}},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                     "template": {"metadata": {"labels": {"controller-uid": "u", "batch.kubernetes.io/controller-uid": "u", "app": "x"}}}}}),
        );
        assert_eq!(v["metadata"]["labels"], json!({"app": "x"}));
        assert_eq!(
            v["spec"]["template"]["metadata"]["labels"],
            json!({"app": "x"})
        );
        assert!(v["spec"].get("selector").is_none());
    }

    #[test]
    fn rule_pv_and_pvc_binding() {
        let pv = clean(
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1",
            "annotations": {"pv.kubernetes.io/bound-by-controller": "yes", "keep": "1"}},
            "spec": {"claimRef": {"name": "c", "namespace": "n", "uid": "u", "resourceVersion": "9"}}}),
        );
        assert_eq!(
            pv["spec"]["claimRef"],
            json!({"name": "c", "namespace": "n"})
        );
        assert_eq!(pv["metadata"]["annotations"], json!({"keep": "1"}));
        let pvc = clean(
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c",
            "annotations": {"pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "n1"}}}),
        );
        assert_eq!(pvc["metadata"]["annotations"], json!({}));
    }

    #[test]
    fn rule_service_account_tokens() {
        let v = clean(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"},
            "secrets": [{"name": "app-token-x1"}, {"name": "app-extra"}]}),
        );
        assert_eq!(v["secrets"], json!([{"name": "app-extra"}]));
    }

    #[test]
    fn every_rule_is_tested() {
        // One test per rule above; a new rule needs a new test (and this count).
        assert_eq!(SANITISE_RULES.len(), 8);
    }

    #[test]
    fn skips() {
        let set = HashSet::from([
            ObjRef {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                namespace: Some("n".into()),
                name: "rs".into(),
            },
            ObjRef {
                api_version: "v1".into(),
                kind: "Service".into(),
                namespace: Some("n".into()),
                name: "svc".into(),
            },
        ]);
        let reason = |v: Value| {
            let (r, v) = obj(v);
            skip_reason(&r, &v, &set)
        };
        assert!(
            reason(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}))
                .is_some()
        );
        assert!(reason(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "n"}})).is_some());
        assert!(reason(json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token", "metadata": {"name": "t", "namespace": "n"}})).is_some());
        assert!(reason(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "t", "namespace": "n"}})).is_none());
        assert!(reason(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Succeeded"}})).is_some());
        assert!(reason(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "n"}, "status": {"completionTime": "t"}})).is_some());
        assert!(reason(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "controller": true}]}})).is_some());
        assert!(reason(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "other", "controller": true}]}})).is_none(),
            "owner not restored: the pod is kept");
        assert!(reason(json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "svc", "namespace": "n"}})).is_some());
        assert!(reason(json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "external", "namespace": "n"}})).is_none());
    }

    #[test]
    fn namespace_and_storage_class_mapping() {
        let ns = Mapping::parse("--namespace-mapping", "prod:dr, other:other2").unwrap();
        let sc = Mapping::parse("--storage-class-mapping", "fast:standard").unwrap();
        let mut cases = vec![
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb", "namespace": "prod"},
                   "subjects": [{"kind": "ServiceAccount", "name": "a", "namespace": "prod"}, {"kind": "User", "name": "u"}]}),
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "w"},
                   "webhooks": [{"name": "x", "clientConfig": {"service": {"name": "s", "namespace": "prod"}}}]}),
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c", "namespace": "prod"}, "spec": {"storageClassName": "fast"}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "namespace": "prod"},
                   "spec": {"volumeClaimTemplates": [{"spec": {"storageClassName": "fast"}}]}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
        ];
        for v in &mut cases {
            let r = ObjRef::of(v, "t").unwrap();
            map_object(&r, v, &ns, &sc);
        }
        assert_eq!(cases[0]["metadata"]["namespace"], "dr");
        assert_eq!(cases[0]["subjects"][0]["namespace"], "dr");
        assert_eq!(
            cases[1]["webhooks"][0]["clientConfig"]["service"]["namespace"],
            "dr"
        );
        assert_eq!(cases[2]["spec"]["storageClassName"], "standard");
        assert_eq!(cases[2]["metadata"]["namespace"], "dr");
        assert_eq!(
            cases[3]["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            "standard"
        );
        assert_eq!(cases[4]["metadata"]["name"], "dr");
        for bad in ["nocolon", "a:", ":b", "a:b,a:c", "a:b:c"] {
            let e = Mapping::parse("--namespace-mapping", bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--namespace-mapping")
                    && e.contains(bad.split(',').next_back().unwrap()),
                "{e}"
            );
        }
    }

    #[test]
    fn hold_and_release_are_exact_inverses() {
        for v in [
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "annotations": {"x": "y"}}, "spec": {}}),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"suspend": false, "schedule": "* * * * *"}}),
        ] {
            let r = ObjRef::of(&v, "t").unwrap();
            let mut held = v.clone();
            assert!(hold_applications(&r, &mut held));
            assert!(
                held["spec"]["replicas"] == 0 || held["spec"]["suspend"] == true,
                "{held}"
            );
            let mut twice = held.clone();
            hold_applications(&r, &mut twice);
            assert_eq!(twice, held, "holding twice keeps the first record");
            let mut released = held.clone();
            assert!(release_applications(&r, &mut released).is_some());
            // Equal to the original, except that defaults were made explicit.
            let mut expect = v.clone();
            if r.kind == "StatefulSet" {
                expect["spec"]["replicas"] = json!(1);
            }
            if expect["metadata"].get("annotations").is_none() {
                expect["metadata"]["annotations"] = json!({});
            }
            assert_eq!(released, expect);
            assert!(
                release_applications(&r, &mut released).is_none(),
                "nothing left to release"
            );
        }
    }

    #[test]
    fn an_ownership_cycle_still_orders() {
        let a = obj(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a", "namespace": "n",
            "ownerReferences": [{"kind": "Deployment", "name": "b"}]}}),
        );
        let b = obj(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b", "namespace": "n",
            "ownerReferences": [{"kind": "Deployment", "name": "a"}]}}),
        );
        let mut order = apply_order(&[a, b]);
        order.sort();
        assert_eq!(order, [0, 1]);
    }

    fn arb_object() -> impl Strategy<Value = (u8, u8, u8, Option<u8>)> {
        (0u8..12, 0u8..3, 0u8..6, prop::option::of(0u8..6))
    }

    const KINDS: &[(&str, &str)] = &[
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("v1", "Namespace"),
        ("v1", "PersistentVolumeClaim"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "ReplicaSet"),
        ("v1", "Pod"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("db.example.com/v1", "Cluster"),
        (
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
        ),
        ("v1", "ServiceAccount"),
    ];

    proptest! {
        #[test]
        fn order_respects_ranks_and_ownership(objs in prop::collection::vec(arb_object(), 0..30)) {
            let mut objects = Vec::new();
            let mut seen = HashSet::new();
            for (k, ns, name, owner) in &objs {
                let (api, kind) = KINDS[*k as usize];
                if !seen.insert((*k, *ns, *name)) { continue }
                let mut v = json!({"apiVersion": api, "kind": kind, "metadata": {"name": format!("o{name}"), "namespace": format!("n{ns}")}});
                // Ownership points to a lower name only, so it is acyclic as in a real cluster
                // (cycles are covered by `an_ownership_cycle_still_orders`).
                if let Some(o) = owner.filter(|o| o < name) {
                    // Owned by a Deployment of that name, if there is one.
                    v["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("o{o}"), "controller": true}]);
                }
                objects.push(obj(v));
            }
            let order = apply_order(&objects);
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(sorted, (0..objects.len()).collect::<Vec<_>>(), "a permutation");
            let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
            for (i, (r, v)) in objects.iter().enumerate() {
                // Owners (present in the set) come first.
                if let Some(o) = v.pointer("/metadata/ownerReferences/0/name").and_then(Value::as_str) {
                    if let Some(j) = objects.iter().position(|(x, _)| x.kind == "Deployment" && x.name == o && x.namespace == r.namespace) {
                        if j != i { prop_assert!(pos[&j] < pos[&i], "owner {} before {}", objects[j].0.display(), r.display()); }
                    }
                }
                // Ranks never go down along the order, except where an owner pulled an object later.
                if v.pointer("/metadata/ownerReferences").is_none() {
                    for (k, (r2, v2)) in objects.iter().enumerate() {
                        if v2.pointer("/metadata/ownerReferences").is_none() && rank(r2) > rank(r) {
                            prop_assert!(pos[&i] < pos[&k], "{} before {}", r.display(), r2.display());
                        }
                    }
                }
            }
            // CRDs first, webhooks last.
            if let (Some(first), Some(last)) = (order.first(), order.last()) {
                let unowned = || objects.iter().filter(|(_, v)| v.pointer("/metadata/ownerReferences").is_none());
                prop_assert!(unowned().all(|(r, _)| rank(r) >= rank(&objects[*first].0)));
                // The last object is either pulled late by its owner, or of the highest rank.
                let (last_ref, last_v) = &objects[*last];
                let owned = last_v.pointer("/metadata/ownerReferences").is_some();
                prop_assert!(owned || objects.iter().all(|(r, _)| rank(r) <= rank(last_ref)));
            }
        }
    }
}
