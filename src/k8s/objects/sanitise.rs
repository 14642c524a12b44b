//! Sanitising: what a restore removes from a captured object (cluster-assigned fields, status,
//! bindings) and what it never restores. One row of [`SANITISE_RULES`] per rule, each with a
//! test; pure.
use std::collections::HashSet;

use serde_json::{Map, Value};

use super::*;

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
    // lifeboat's own records of what happened on the source cluster: the target's controller
    // shows the repository's backups itself, and runs its own restores and standbys.
    ("lifeboat.dev", "Backup"),
    ("lifeboat.dev", "Restore"),
    ("lifeboat.dev", "Standby"),
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
        // Published into every namespace by the cluster itself (kube-controller-manager's
        // root-ca-cert-publisher; OpenShift's service CA operator): the source cluster's CA,
        // which would make the target's pods distrust their own API server until the
        // publisher puts it back. Found by the drill on the real test clusters.
        ("", "ConfigMap")
            if matches!(
                r.name.as_str(),
                "kube-root-ca.crt" | "openshift-service-ca.crt"
            ) =>
        {
            return Some("the cluster's own CA bundle: the target cluster publishes its own".into())
        }
        // lifeboat's own snapshots in an application's namespace (a claim's delta base, a
        // backup's group or snapshot): they belong to the source cluster's storage. Found by
        // the drill on the real test clusters, which restored a base VolumeSnapshot.
        ("snapshot.storage.k8s.io", "VolumeSnapshot")
        | ("groupsnapshot.storage.k8s.io", "VolumeGroupSnapshot")
            if str_at("/metadata/labels/app.kubernetes.io~1managed-by") == Some("lifeboat")
                || str_at("/metadata/labels/lifeboat.dev~1base-of").is_some() =>
        {
            return Some(
                "lifeboat's own snapshot (a delta base or a backup's): it belongs to the source cluster's storage".into(),
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(reason(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": "n"}})).is_some());
        assert!(reason(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ca.crt", "namespace": "n"}})).is_none());
        assert!(reason(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "s", "namespace": "n", "labels": {"lifeboat.dev/base-of": "ab"}}})).is_some());
        assert!(reason(json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshot", "metadata": {"name": "g", "namespace": "n", "labels": {"app.kubernetes.io/managed-by": "lifeboat"}}})).is_some());
        assert!(reason(json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "users-own", "namespace": "n"}})).is_none());
        // lifeboat's records of the source cluster's runs; its schedules and rules travel.
        assert!(reason(json!({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "Backup", "metadata": {"name": "b", "namespace": "n"}})).is_some());
        assert!(reason(json!({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "BackupSchedule", "metadata": {"name": "s", "namespace": "n"}})).is_none());
    }
}
