//! Where Kubernetes objects come from and go to. Takes a cluster directory (objects as
//! `kubectl get -o yaml` exports them under `DIR/resources/`, any layout, single objects or
//! `kind: List`); gives the objects in scope of a backup, and applies restored objects back
//! into a cluster directory. Scope selection ([`select`]) is pure. A live cluster through
//! `kube` is to implement the same two operations; it must not change how scope is chosen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::resources::{ObjRef, ResourceError};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} (document {doc}): not valid YAML or JSON: {reason}")]
    Parse {
        path: String,
        doc: usize,
        reason: String,
    },
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("{dir} is not a cluster directory: it has no resources/ folder")]
    NotAClusterDir { dir: String },
    #[error("unknown kind `{kind}` in {flag}; kinds known here: {known}")]
    UnknownKind {
        flag: &'static str,
        kind: String,
        known: String,
    },
    #[error("invalid {flag} `{value}`: {reason}")]
    BadFilter {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("namespace `{namespace}` does not exist in {cluster}")]
    NoSuchNamespace { namespace: String, cluster: String },
}

/// One object as found in the source, with where it was found.
#[derive(Debug, Clone)]
pub struct Exported {
    pub r: ObjRef,
    pub value: Value,
    pub origin: String,
}

/// A cluster directory: `resources/` (objects) and, later, `volumes/<namespace>/<pvc>`.
#[derive(Debug, Clone)]
pub struct ClusterDir {
    root: PathBuf,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ClusterError> {
    let io = |source| ClusterError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out)?;
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// Parses one file's documents into objects, expanding `kind: List`.
pub fn parse_documents(path: &str, text: &str) -> Result<Vec<Exported>, ClusterError> {
    let mut out = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(de).map_err(|e| ClusterError::Parse {
            path: path.to_string(),
            doc: doc + 1,
            reason: e.to_string(),
        })?;
        if v.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        let is_list = v
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"))
            && v.get("items").is_some();
        if is_list {
            let items = v
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                let origin = format!("{path} (document {}, item {})", doc + 1, i + 1);
                let r = ObjRef::of(&item, &origin)?;
                out.push(Exported {
                    r,
                    value: item,
                    origin,
                });
            }
        } else {
            let origin = format!("{path} (document {})", doc + 1);
            let r = ObjRef::of(&v, &origin)?;
            out.push(Exported {
                r,
                value: v,
                origin,
            });
        }
    }
    Ok(out)
}

impl ClusterDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ClusterDir { root: root.into() }
    }

    pub fn describe(&self) -> String {
        format!("cluster-dir:{}", self.root.display())
    }

    fn resources(&self) -> PathBuf {
        self.root.join("resources")
    }

    /// Every object in the directory.
    pub fn load(&self) -> Result<Vec<Exported>, ClusterError> {
        let res = self.resources();
        if !res.is_dir() {
            return Err(ClusterError::NotAClusterDir {
                dir: self.root.display().to_string(),
            });
        }
        let mut files = Vec::new();
        yaml_files(&res, &mut files)?;
        let mut out = Vec::new();
        for f in files {
            let shown = f.display().to_string();
            let text = std::fs::read_to_string(&f).map_err(|source| ClusterError::Io {
                path: shown.clone(),
                source,
            })?;
            out.extend(parse_documents(&shown, &text)?);
        }
        Ok(out)
    }

    /// Writes restored objects into the directory, one file each under
    /// `resources/<namespace or _cluster>/<kind>.<name>.yaml`. An object that exists already
    /// (anywhere in the directory) is kept (`Skip`), or replaced (`Update`, `Recreate`).
    pub fn apply(
        &self,
        objects: &[(ObjRef, Value)],
        policy: ExistingPolicy,
    ) -> Result<Vec<ApplyResult>, ClusterError> {
        std::fs::create_dir_all(self.resources()).map_err(|source| ClusterError::Io {
            path: self.resources().display().to_string(),
            source,
        })?;
        let existing = self.load()?;
        let mut where_is: HashMap<ObjRef, String> = HashMap::new();
        for e in &existing {
            where_is.insert(e.r.clone(), e.origin.clone());
        }
        let mut results = Vec::new();
        let mut to_remove: HashMap<String, HashSet<ObjRef>> = HashMap::new();
        for (r, v) in objects {
            let path = self.object_path(r);
            let outcome = match where_is.get(r) {
                Some(origin) if policy == ExistingPolicy::Skip => {
                    results.push(ApplyResult {
                        r: r.clone(),
                        outcome: Outcome::Skipped,
                        detail: format!("exists ({origin})"),
                    });
                    continue;
                }
                Some(origin) => {
                    let file = origin
                        .rsplit_once(" (document")
                        .map(|(f, _)| f)
                        .unwrap_or(origin)
                        .to_string();
                    if Path::new(&file) != path {
                        to_remove.entry(file).or_default().insert(r.clone());
                    }
                    Outcome::Updated
                }
                None => Outcome::Created,
            };
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(path.parent().expect("object path has a parent"))?;
                let yaml = serde_yaml::to_string(v).map_err(std::io::Error::other)?;
                write_private(&path, yaml.as_bytes(), r.kind == "Secret")
            };
            results.push(match write() {
                Ok(()) => ApplyResult {
                    r: r.clone(),
                    outcome,
                    detail: path.display().to_string(),
                },
                Err(e) => ApplyResult {
                    r: r.clone(),
                    outcome: Outcome::Failed,
                    detail: e.to_string(),
                },
            });
        }
        // Objects replaced from another file leave that file.
        for (file, refs) in to_remove {
            let text = std::fs::read_to_string(&file).map_err(|source| ClusterError::Io {
                path: file.clone(),
                source,
            })?;
            let kept: Vec<Value> = parse_documents(&file, &text)?
                .into_iter()
                .filter(|e| !refs.contains(&e.r))
                .map(|e| e.value)
                .collect();
            let mut out = String::new();
            for v in kept {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&v).map_err(|e| ClusterError::Io {
                    path: file.clone(),
                    source: std::io::Error::other(e),
                })?);
            }
            std::fs::write(&file, out).map_err(|source| ClusterError::Io {
                path: file.clone(),
                source,
            })?;
        }
        Ok(results)
    }

    fn object_path(&self, r: &ObjRef) -> PathBuf {
        let ns = r.namespace.as_deref().unwrap_or("_cluster");
        self.resources()
            .join(ns)
            .join(format!("{}.{}.yaml", r.kind.to_ascii_lowercase(), r.name))
    }
}

/// Writes a file; Secrets are readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if private {
        o.mode(0o600);
    }
    o.open(path)?.write_all(bytes)
}

/// What to do with an object that exists on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExistingPolicy {
    Skip,
    Update,
    Recreate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Updated,
    Skipped,
    Failed,
}

/// The result of one object of a restore.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyResult {
    #[serde(flatten)]
    pub r: ObjRef,
    pub outcome: Outcome,
    pub detail: String,
}

// ----- scope ------------------------------------------------------------------------------

/// A label selector: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k` (does not exist), comma-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<(String, Op)>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, ClusterError> {
        let mut out = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let bad = |reason: &str| ClusterError::BadFilter {
                flag: "--selector",
                value: term.to_string(),
                reason: reason.to_string(),
            };
            let (k, op) = if let Some((k, v)) = term.split_once("!=") {
                (k, Op::Ne(v.trim().to_string()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, Op::Eq(v.trim().to_string()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k, Op::Absent)
            } else {
                (term, Op::Exists)
            };
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) || k.contains('=') {
                return Err(bad("write key=value, key!=value, key or !key"));
            }
            out.push((k.to_string(), op));
        }
        Ok(Selector(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, v: &Value) -> bool {
        let labels = v.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|(k, op)| match op {
            Op::Eq(want) => get(k) == Some(want.as_str()),
            Op::Ne(want) => get(k) != Some(want.as_str()),
            Op::Exists => get(k).is_some(),
            Op::Absent => get(k).is_none(),
        })
    }
}

/// `kind/name` or `kind/namespace/name`; kinds match case-insensitively, plurals too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFilter {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

fn kind_matches(filter: &str, kind: &str) -> bool {
    let f = filter.to_ascii_lowercase();
    let k = kind.to_ascii_lowercase();
    f == k
        || f == format!("{k}s")
        || f == format!("{k}es")
        || (k.ends_with('y') && f == format!("{}ies", &k[..k.len() - 1]))
}

impl ResourceFilter {
    pub fn parse_list(flag: &'static str, text: &str) -> Result<Vec<ResourceFilter>, ClusterError> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                let parts: Vec<&str> = t.split('/').collect();
                let bad = || ClusterError::BadFilter {
                    flag,
                    value: t.to_string(),
                    reason: "write kind/name or kind/namespace/name".into(),
                };
                match parts.as_slice() {
                    [k, n] if !k.is_empty() && !n.is_empty() => Ok(ResourceFilter {
                        kind: k.to_string(),
                        namespace: None,
                        name: n.to_string(),
                    }),
                    [k, ns, n] if !k.is_empty() && !ns.is_empty() && !n.is_empty() => {
                        Ok(ResourceFilter {
                            kind: k.to_string(),
                            namespace: Some(ns.to_string()),
                            name: n.to_string(),
                        })
                    }
                    _ => Err(bad()),
                }
            })
            .collect()
    }

    pub fn matches(&self, r: &ObjRef) -> bool {
        kind_matches(&self.kind, &r.kind)
            && self.name == r.name
            && (self.namespace.is_none() || self.namespace == r.namespace)
    }
}

/// Kinds every cluster serves, accepted in filters even when no object of them is present.
const BUILTIN_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "Endpoints",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ResourceQuota",
    "LimitRange",
    "Event",
    "Node",
    "ReplicationController",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ControllerRevision",
    "Job",
    "CronJob",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "NetworkPolicy",
    "Ingress",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "StorageClass",
    "PriorityClass",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "Lease",
    "EndpointSlice",
    "VolumeSnapshot",
    "VolumeSnapshotClass",
    "VolumeSnapshotContent",
    "DeploymentConfig",
    "Route",
];

/// Checks that every kind a filter names is a kind this source knows.
pub fn check_kinds<'a>(
    flag: &'static str,
    kinds: impl IntoIterator<Item = &'a str>,
    objects: &[Exported],
) -> Result<(), ClusterError> {
    let known: BTreeSet<&str> = objects
        .iter()
        .map(|e| e.r.kind.as_str())
        .chain(BUILTIN_KINDS.iter().copied())
        .collect();
    for k in kinds {
        if !known.iter().any(|known| kind_matches(k, known)) {
            return Err(ClusterError::UnknownKind {
                flag,
                kind: k.to_string(),
                known: known.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(())
}

/// What a backup captures.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub namespaces: Vec<String>,
    pub selector: Selector,
    pub include: Vec<ResourceFilter>,
    pub exclude_types: Vec<String>,
}

/// The objects of `scope`: the namespaces' objects (filtered), the Namespace objects, and the
/// cluster-scoped objects they need: CRDs of their custom resources, PVs bound to their
/// claims, storage classes those use, cluster roles and bindings of their service accounts,
/// and webhook configurations served from the namespaces.
pub fn select(
    all: &[Exported],
    scope: &Scope,
    cluster: &str,
) -> Result<Vec<Exported>, ClusterError> {
    for ns in &scope.namespaces {
        if !all.iter().any(|e| {
            e.r.namespace.as_deref() == Some(ns) || (e.r.kind == "Namespace" && &e.r.name == ns)
        }) {
            return Err(ClusterError::NoSuchNamespace {
                namespace: ns.clone(),
                cluster: cluster.to_string(),
            });
        }
    }
    check_kinds(
        "--include-resources",
        scope.include.iter().map(|f| f.kind.as_str()),
        all,
    )?;
    check_kinds(
        "--exclude-resource-types",
        scope.exclude_types.iter().map(String::as_str),
        all,
    )?;
    let in_ns = |e: &Exported| {
        e.r.namespace
            .as_ref()
            .is_some_and(|n| scope.namespaces.contains(n))
    };
    let excluded = |r: &ObjRef| scope.exclude_types.iter().any(|k| kind_matches(k, &r.kind));
    let included =
        |r: &ObjRef| scope.include.is_empty() || scope.include.iter().any(|f| f.matches(r));

    let mut out: Vec<Exported> = all
        .iter()
        .filter(|e| {
            in_ns(e) && !excluded(&e.r) && included(&e.r) && scope.selector.matches(&e.value)
        })
        .cloned()
        .collect();
    let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);

    // Needed cluster-scoped objects, derived from what was selected.
    let mut crds = HashSet::new();
    let mut pv_names = HashSet::new();
    let mut claims = HashSet::new();
    let mut storage_classes = HashSet::new();
    let mut cluster_roles = HashSet::new();
    for e in &out {
        let g = e.r.group();
        if !g.is_empty()
            && !g.ends_with(".k8s.io")
            && !["apps", "batch", "policy", "autoscaling"].contains(&g)
        {
            crds.insert((g.to_string(), e.r.kind.clone()));
        }
        match e.r.kind.as_str() {
            "PersistentVolumeClaim" => {
                claims.insert((e.r.namespace.clone().unwrap_or_default(), e.r.name.clone()));
                pv_names.extend(s(&e.value, "/spec/volumeName"));
                storage_classes.extend(s(&e.value, "/spec/storageClassName"));
            }
            "StatefulSet" => {
                for t in e
                    .value
                    .pointer("/spec/volumeClaimTemplates")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    storage_classes.extend(s(t, "/spec/storageClassName"));
                }
            }
            "RoleBinding" if s(&e.value, "/roleRef/kind").as_deref() == Some("ClusterRole") => {
                cluster_roles.extend(s(&e.value, "/roleRef/name"));
            }
            _ => {}
        }
    }
    let mut extra = Vec::new();
    for e in all.iter().filter(|e| e.r.namespace.is_none()) {
        let v = &e.value;
        let wanted = match (e.r.group(), e.r.kind.as_str()) {
            ("", "Namespace") => scope.namespaces.contains(&e.r.name),
            ("apiextensions.k8s.io", "CustomResourceDefinition") => {
                let g = s(v, "/spec/group").unwrap_or_default();
                let k = s(v, "/spec/names/kind").unwrap_or_default();
                crds.contains(&(g, k))
            }
            ("", "PersistentVolume") => {
                pv_names.contains(&e.r.name)
                    || claims.contains(&(
                        s(v, "/spec/claimRef/namespace").unwrap_or_default(),
                        s(v, "/spec/claimRef/name").unwrap_or_default(),
                    ))
            }
            ("rbac.authorization.k8s.io", "ClusterRoleBinding") => v
                .get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|sub| s(sub, "/namespace").is_some_and(|n| scope.namespaces.contains(&n))),
            (
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
            ) => v
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|w| {
                    s(w, "/clientConfig/service/namespace")
                        .is_some_and(|n| scope.namespaces.contains(&n))
                }),
            _ => false,
        };
        if wanted && !excluded(&e.r) {
            if e.r.kind == "ClusterRoleBinding" {
                cluster_roles.extend(s(v, "/roleRef/name"));
            }
            if e.r.kind == "PersistentVolume" {
                storage_classes.extend(s(v, "/spec/storageClassName"));
            }
            extra.push(e.clone());
        }
    }
    for e in all.iter().filter(|e| e.r.namespace.is_none()) {
        let wanted = match e.r.kind.as_str() {
            "ClusterRole" => cluster_roles.contains(&e.r.name),
            "StorageClass" => storage_classes.contains(&e.r.name),
            _ => false,
        };
        if wanted && !excluded(&e.r) {
            extra.push(e.clone());
        }
    }
    out.extend(extra);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let v = serde_json::json!({"metadata": {"labels": {"app": "pg", "tier": "db"}}});
        for (sel, want) in [
            ("app=pg", true),
            ("app==pg,tier=db", true),
            ("app=cassandra", false),
            ("app!=cassandra", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&v), want, "{sel}");
        }
        assert!(Selector::parse("=x").is_err());
        assert!(Selector::parse("a b=c").is_err());
    }

    #[test]
    fn resource_filters() {
        let f = ResourceFilter::parse_list(
            "--include-resources",
            "deployments/postgres, Secret/pg/creds",
        )
        .unwrap();
        let r = |kind: &str, ns: &str, name: &str| ObjRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: Some(ns.into()),
            name: name.into(),
        };
        assert!(f[0].matches(&r("Deployment", "any", "postgres")));
        assert!(f[1].matches(&r("Secret", "pg", "creds")));
        assert!(!f[1].matches(&r("Secret", "other", "creds")));
        for bad in ["deployment", "a/b/c/d", "/x"] {
            let e = ResourceFilter::parse_list("--include-resources", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("--include-resources") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn lists_and_multi_documents_parse_and_bad_yaml_is_named() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: n}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: b, namespace: n}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: n}\n---\n";
        let objs = parse_documents("f.yaml", text).unwrap();
        assert_eq!(
            objs.iter().map(|e| e.r.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "s"]
        );
        let e = parse_documents("bad.yaml", "a: [unclosed")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.yaml") && e.contains("document 1"), "{e}");
        let e = parse_documents("nokind.yaml", "apiVersion: v1\nmetadata: {name: x}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nokind.yaml") && e.contains("no kind"), "{e}");
    }
}
