//! Kubernetes objects between capture and apply: takes objects as a live cluster exports them
//! (JSON values, lossless); gives them sanitised, mapped and in dependency order.
//!
//! Everything here is pure and table-driven: [`SANITISE_RULES`] (one row per rule, each with a
//! test), [`skip_reason`] (what is never restored), [`map_object`] (namespaces and storage
//! classes), [`hold_applications`] (the `--start-applications=false` form) and [`apply_order`].
//! Must not talk to a cluster or a repository.

use serde_json::Value;

use crate::util::{check_kube_name, KubeName};

mod hold;
mod map;
mod order;
mod sanitise;

pub use hold::{change_of, hold_applications, is_scalable, release_applications, Change};
pub use map::{map_object, mapped_ref, Mapping};
pub use order::{apply_order, rank};
pub use sanitise::{
    owner_links, sanitise, skip_reason, OwnerLink, Rule, SanitiseOptions, SANITISE_RULES,
};

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

/// The API server's rule for every object name: it is a path segment of the object's URL,
/// so it may not be `.` or `..` and may not hold `/` or `%`.
fn path_segment(name: &str) -> Result<(), String> {
    if name == "." || name == ".." {
        return Err("may not be `.` or `..`".into());
    }
    if name.contains(['/', '%']) {
        return Err("may not contain `/` or `%`".into());
    }
    Ok(())
}

/// Identity of an object: apiVersion, kind, namespace (None: cluster-scoped), name.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
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
        let r = ObjRef {
            api_version: s("/apiVersion")
                .ok_or_else(|| bad("no apiVersion"))?
                .to_string(),
            kind: s("/kind").ok_or_else(|| bad("no kind"))?.to_string(),
            namespace: s("/metadata/namespace").map(str::to_string),
            name: s("/metadata/name")
                .ok_or_else(|| bad("no metadata.name"))?
                .to_string(),
        };
        // Names become paths of cluster directories and of restored objects: hold them to
        // the API server's own rules, so none can leave its directory.
        if let Some(ns) = &r.namespace {
            check_kube_name(KubeName::Label, ns)
                .map_err(|e| bad(&format!("metadata.namespace `{ns}`: {e}")))?;
        }
        path_segment(&r.name).map_err(|e| bad(&format!("metadata.name `{}`: {e}", r.name)))?;
        if r.kind == "Namespace" {
            check_kube_name(KubeName::Label, &r.name)
                .map_err(|e| bad(&format!("Namespace name `{}`: {e}", r.name)))?;
        }
        Ok(r)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_that_would_leave_a_directory_are_not_objects() {
        let obj = |ns: &str, name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": ns, "name": name}});
        assert!(ObjRef::of(&obj("pg", "cm"), "t").is_ok());
        assert!(ObjRef::of(&obj("pg", "system:controller"), "t").is_ok());
        for (ns, name) in [
            ("../x", "cm"),
            ("PG", "cm"),
            ("pg", ".."),
            ("pg", "a/b"),
            ("pg", "a%2f"),
        ] {
            let e = ObjRef::of(&obj(ns, name), "t").unwrap_err().to_string();
            assert!(e.contains("metadata."), "{ns}/{name}: {e}");
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Bad.NS"}});
        assert!(ObjRef::of(&ns, "t").is_err());
    }
}
