//! Ordering: the rank of each kind and the apply order of a restore (CRDs first, owners
//! before what they own); pure.
use std::collections::HashMap;

use serde_json::Value;

use super::*;

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
    use std::collections::HashSet;

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> (ObjRef, Value) {
        (ObjRef::of(&v, "test").unwrap(), v)
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
