//! Mapping: namespaces and storage classes renamed on restore, in metadata, RoleBinding
//! subjects and webhook services; pure.
use std::collections::BTreeMap;

use serde_json::Value;

use super::*;
use crate::util::{check_kube_name, KubeName};

// ----- mapping ------------------------------------------------------------------------------

/// `old:new,old2:new2` mappings, as the restore flags take them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping(pub BTreeMap<String, String>);

impl Mapping {
    /// Parses a mapping flag. Both names of every pair must be valid as what they name:
    /// namespaces (`--namespace-mapping`) as DNS-1123 labels, anything else (storage
    /// classes) as DNS-1123 subdomains; a mapped name becomes a path and an object name.
    pub fn parse(flag: &'static str, text: &str) -> Result<Mapping, ResourceError> {
        let rule = if flag == "--namespace-mapping" {
            KubeName::Label
        } else {
            KubeName::Subdomain
        };
        Self::parse_as(rule, flag, text)
    }

    /// [`Mapping::parse`] with the naming rule given.
    pub fn parse_as(
        rule: KubeName,
        flag: &'static str,
        text: &str,
    ) -> Result<Mapping, ResourceError> {
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
            for name in [old, new] {
                check_kube_name(rule, name)
                    .map_err(|reason| bad(&format!("`{name}` is not a valid name: {reason}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn mapped_names_that_could_escape_a_directory_or_no_cluster_accepts_are_refused() {
        let too_long = format!("pg:{}", "a".repeat(64));
        for bad in [
            "pg:../../../somewhere",
            "pg:PG-DR",
            "pg:pg.dr",
            too_long.as_str(),
            "../x:pg",
        ] {
            let e = Mapping::parse("--namespace-mapping", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("is not a valid name"), "{bad}: {e}");
        }
        // Storage classes may hold dots, never slashes.
        assert!(Mapping::parse("--storage-class-mapping", "fast.ssd:standard").is_ok());
        assert!(Mapping::parse("--storage-class-mapping", "fast:../x").is_err());
    }
}
