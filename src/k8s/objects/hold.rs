//! Holding applications: the warm-standby form of workloads (0 replicas, CronJobs suspended,
//! the originals recorded) and its exact inverse, as `activate` and `deactivate` apply them;
//! pure.

use serde_json::{json, Map, Value};

use super::*;

// ----- holding applications stopped ---------------------------------------------------------

/// Kinds whose `spec.replicas` is held at 0 by `--start-applications=false`.
pub fn is_scalable(r: &ObjRef) -> bool {
    matches!(
        (r.group(), r.kind.as_str()),
        ("apps", "Deployment" | "StatefulSet" | "ReplicaSet")
            | ("apps.openshift.io", "DeploymentConfig")
    )
}

/// Kinds whose `spec.suspend` is held true: CronJobs, and lifeboat's own BackupSchedules (a
/// standby site must not back up the application it holds; activated, it does, as the new
/// primary).
pub fn is_suspendable(r: &ObjRef) -> bool {
    matches!(
        (r.group(), r.kind.as_str()),
        ("batch", "CronJob") | ("lifeboat.dev", "BackupSchedule")
    )
}

/// The warm-standby form: scalable workloads at 0 replicas with the original count recorded,
/// CronJobs and BackupSchedules suspended with the original setting recorded. [`release_applications`] undoes it
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
    if is_suspendable(r) {
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
    if is_suspendable(r) {
        let original = take(v, ORIGINAL_SUSPEND)? == "true";
        v.get_mut("spec")?
            .as_object_mut()?
            .insert("suspend".into(), json!(original));
        return Some(("spec.suspend".into(), "true".into(), original.to_string()));
    }
    None
}

/// One workload's change by `activate` or `deactivate`.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct Change {
    /// `Kind/namespace/name`.
    pub object: String,
    /// The field changed, e.g. `spec.replicas`.
    pub field: String,
    pub from: String,
    pub to: String,
}

/// Applies `activate` (run) or `deactivate` (hold) to one object; Some when it changed.
pub fn change_of(r: &ObjRef, v: &mut Value, run: bool) -> Option<Change> {
    let object = r.display();
    if run {
        release_applications(r, v).map(|(field, from, to)| Change {
            object,
            field,
            from,
            to,
        })
    } else {
        let before = v.clone();
        if !hold_applications(r, v) || *v == before {
            return None;
        }
        let (field, from, to) = if v.pointer("/spec/replicas").is_some() {
            (
                "spec.replicas",
                before
                    .pointer("/spec/replicas")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
                    .to_string(),
                "0".to_string(),
            )
        } else {
            (
                "spec.suspend",
                before
                    .pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
                "true".to_string(),
            )
        };
        Some(Change {
            object,
            field: field.into(),
            from,
            to,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hold_and_release_are_exact_inverses() {
        for v in [
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3}}),
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "annotations": {"x": "y"}}, "spec": {}}),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"suspend": false, "schedule": "* * * * *"}}),
            // A standby must not back up the application it holds.
            json!({"apiVersion": "lifeboat.dev/v1alpha1", "kind": "BackupSchedule", "metadata": {"name": "b"}, "spec": {"suspend": false, "schedulePolicyName": "hourly"}}),
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
}
