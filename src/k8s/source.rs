//! Where Kubernetes objects come from and go to. Takes a cluster directory (objects as
//! `kubectl get -o yaml` exports them under `DIR/resources/`, any layout, single objects or
//! `kind: List`); gives the objects in scope of a backup, and applies restored objects back
//! into a cluster directory. Scope selection ([`select`]) is pure. A live cluster through
//! `kube` is to implement the same two operations; it must not change how scope is chosen.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::k8s::filter::{check_known_kinds, kind_matches, namespaces_in_scope};
pub use crate::k8s::filter::{
    FilterError, Kinds, NamespaceGlob, ResourceName, ResourceType, Selector,
};
use crate::k8s::objects::{ObjRef, ResourceError};

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
    /// A filter that does not parse or names what the source does not have.
    #[error(transparent)]
    Filter(#[from] FilterError),
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
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
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

    pub fn root(&self) -> &Path {
        &self.root
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
        Ok(first_of_each(out))
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
                let yaml = serde_yaml_ng::to_string(v).map_err(std::io::Error::other)?;
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
                out.push_str(&serde_yaml_ng::to_string(&v).map_err(|e| ClusterError::Io {
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

/// One object per identity: a cluster can hold an object once, so a second copy (the same
/// kind, namespace and name in another file or document) is dropped with a warning naming
/// both places, and the first one, in file order, is kept.
fn first_of_each(objects: Vec<Exported>) -> Vec<Exported> {
    let mut seen: HashMap<ObjRef, String> = HashMap::new();
    objects
        .into_iter()
        .filter(|e| match seen.get(&e.r) {
            Some(first) => {
                tracing::warn!(
                    "{} appears twice: in {first} and in {}; keeping the first, ignoring the second",
                    e.r.display(),
                    e.origin
                );
                false
            }
            None => {
                seen.insert(e.r.clone(), e.origin.clone());
                true
            }
        })
        .collect()
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Updated,
    Skipped,
    Failed,
}

/// One object to apply, with the owners whose references it gets back on the target.
#[derive(Debug, Clone)]
pub struct ApplyItem {
    pub r: ObjRef,
    pub value: Value,
    pub owners: Vec<crate::k8s::objects::OwnerLink>,
}

/// The result of one object of a restore.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ApplyResult {
    #[serde(flatten)]
    pub r: ObjRef,
    pub outcome: Outcome,
    /// What was done or why it failed.
    pub detail: String,
}

// ----- scope ------------------------------------------------------------------------------

/// `kind/name` or `kind/namespace/name`; kinds match case-insensitively, plurals too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFilter {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ResourceFilter {
    pub fn parse_list(flag: &'static str, text: &str) -> Result<Vec<ResourceFilter>, FilterError> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                let parts: Vec<&str> = t.split('/').collect();
                let bad = || FilterError::BadFilter {
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

/// What a backup captures.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `-n/--namespace`: namespaces named, each must exist.
    pub namespaces: Vec<String>,
    /// `--include-namespaces`: patterns of more namespaces ([`Scope::in_namespaces_of`]).
    pub include_namespaces: Vec<NamespaceGlob>,
    /// `--exclude-namespaces`: patterns of namespaces left out, named or not.
    pub exclude_namespaces: Vec<NamespaceGlob>,
    pub selector: Selector,
    /// `--include-objects`: only these objects (empty: every object).
    pub include: Vec<ResourceFilter>,
    /// `--include-resources`: only these types (empty: every type).
    pub include_types: Vec<ResourceName>,
    /// `--exclude-resources`: never these types.
    pub exclude_types: Vec<ResourceName>,
}

impl Scope {
    /// The scope with its namespace patterns resolved against the namespaces a cluster has:
    /// [`Scope::namespaces`] then lists every namespace of the scope. Idempotent.
    pub fn in_namespaces_of(
        mut self,
        existing: &[&str],
        cluster: &str,
    ) -> Result<Scope, FilterError> {
        if self.include_namespaces.is_empty() && self.exclude_namespaces.is_empty() {
            return Ok(self);
        }
        self.namespaces = namespaces_in_scope(
            &self.namespaces,
            &self.include_namespaces,
            &self.exclude_namespaces,
            existing,
            cluster,
        )?;
        self.include_namespaces.clear();
        self.exclude_namespaces.clear();
        Ok(self)
    }
}

/// The namespaces of a cluster directory's objects (of the objects in them, and the
/// Namespace objects).
pub fn namespaces_of(all: &[Exported]) -> Vec<&str> {
    let set: BTreeSet<&str> = all
        .iter()
        .filter_map(|e| {
            e.r.namespace
                .as_deref()
                .or((e.r.kind == "Namespace").then_some(e.r.name.as_str()))
        })
        .collect();
    set.into_iter().collect()
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
    let namespaces = namespaces_of(all);
    let scope = &scope.clone().in_namespaces_of(&namespaces, cluster)?;
    let types = crate::k8s::filter::types_of_objects(all.iter().map(|e| &e.value));
    let kinds = validate_scope(scope, cluster, |ns| namespaces.contains(&ns), &types)?;
    let mut sel = ScopeSelector::new(scope, kinds);
    let mut out: Vec<Exported> = all
        .iter()
        .filter(|e| e.r.namespace.is_some() && sel.offer(e))
        .cloned()
        .collect();
    let cluster_scoped: Vec<Exported> = all
        .iter()
        .filter(|e| e.r.namespace.is_none())
        .cloned()
        .collect();
    out.extend(sel.cluster_scoped(&cluster_scoped));
    Ok(out)
}

/// Refuses a scope naming a namespace that does not exist or a kind or resource nobody
/// serves; gives the types it takes, resolved against `types` (those the source serves) and
/// the built-in ones.
pub fn validate_scope(
    scope: &Scope,
    cluster: &str,
    namespace_exists: impl Fn(&str) -> bool,
    types: &[ResourceType],
) -> Result<Kinds, ClusterError> {
    for ns in &scope.namespaces {
        if !namespace_exists(ns) {
            return Err(ClusterError::NoSuchNamespace {
                namespace: ns.clone(),
                cluster: cluster.to_string(),
            });
        }
    }
    let mut known = crate::k8s::filter::builtin_types();
    known.extend(types.iter().cloned());
    check_known_kinds(
        "--include-objects",
        scope.include.iter().map(|f| f.kind.as_str()),
        &known,
    )?;
    Ok(Kinds::resolve(
        &scope.include_types,
        &scope.exclude_types,
        &known,
    )?)
}

/// Scope selection one object at a time, so a live capture can stream: offer every namespaced
/// object (in any order) to [`ScopeSelector::offer`], then pass the cluster-scoped objects to
/// [`ScopeSelector::cluster_scoped`]. It keeps only names, never objects.
pub struct ScopeSelector<'a> {
    scope: &'a Scope,
    kinds: Kinds,
    crds: HashSet<(String, String)>,
    pv_names: HashSet<String>,
    claims: HashSet<(String, String)>,
    storage_classes: HashSet<String>,
    cluster_roles: HashSet<String>,
}

fn text(v: &Value, p: &str) -> Option<String> {
    v.pointer(p).and_then(Value::as_str).map(str::to_string)
}

impl<'a> ScopeSelector<'a> {
    /// `kinds`: the types the scope takes ([`validate_scope`]).
    pub fn new(scope: &'a Scope, kinds: Kinds) -> Self {
        ScopeSelector {
            scope,
            kinds,
            crds: HashSet::new(),
            pv_names: HashSet::new(),
            claims: HashSet::new(),
            storage_classes: HashSet::new(),
            cluster_roles: HashSet::new(),
        }
    }

    fn excluded(&self, r: &ObjRef) -> bool {
        self.kinds.excluded(r.group(), &r.kind)
    }

    /// A namespaced object: true when the backup takes it. Notes what it needs.
    pub fn offer(&mut self, e: &Exported) -> bool {
        let scope = self.scope;
        let in_ns =
            e.r.namespace
                .as_ref()
                .is_some_and(|n| scope.namespaces.contains(n));
        let included = scope.include.is_empty() || scope.include.iter().any(|f| f.matches(&e.r));
        let taken = self.kinds.takes(e.r.group(), &e.r.kind);
        if !in_ns || !taken || !included || !scope.selector.matches(&e.value) {
            return false;
        }
        let g = e.r.group();
        if !g.is_empty()
            && !g.ends_with(".k8s.io")
            && !["apps", "batch", "policy", "autoscaling"].contains(&g)
        {
            self.crds.insert((g.to_string(), e.r.kind.clone()));
        }
        match e.r.kind.as_str() {
            "PersistentVolumeClaim" => {
                self.claims
                    .insert((e.r.namespace.clone().unwrap_or_default(), e.r.name.clone()));
                self.pv_names.extend(text(&e.value, "/spec/volumeName"));
                self.storage_classes
                    .extend(text(&e.value, "/spec/storageClassName"));
            }
            "StatefulSet" => {
                for t in e
                    .value
                    .pointer("/spec/volumeClaimTemplates")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.storage_classes
                        .extend(text(t, "/spec/storageClassName"));
                }
            }
            "RoleBinding" if text(&e.value, "/roleRef/kind").as_deref() == Some("ClusterRole") => {
                self.cluster_roles.extend(text(&e.value, "/roleRef/name"));
            }
            _ => {}
        }
        true
    }

    /// The cluster-scoped objects the offered namespaced objects need.
    pub fn cluster_scoped(&mut self, cluster: &[Exported]) -> Vec<Exported> {
        let namespaces = &self.scope.namespaces;
        let mut out = Vec::new();
        for e in cluster {
            let v = &e.value;
            let wanted = match (e.r.group(), e.r.kind.as_str()) {
                ("", "Namespace") => namespaces.contains(&e.r.name),
                ("apiextensions.k8s.io", "CustomResourceDefinition") => self.crds.contains(&(
                    text(v, "/spec/group").unwrap_or_default(),
                    text(v, "/spec/names/kind").unwrap_or_default(),
                )),
                ("", "PersistentVolume") => {
                    self.pv_names.contains(&e.r.name)
                        || self.claims.contains(&(
                            text(v, "/spec/claimRef/namespace").unwrap_or_default(),
                            text(v, "/spec/claimRef/name").unwrap_or_default(),
                        ))
                }
                ("rbac.authorization.k8s.io", "ClusterRoleBinding") => v
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|sub| text(sub, "/namespace").is_some_and(|n| namespaces.contains(&n))),
                (
                    "admissionregistration.k8s.io",
                    "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
                ) => v
                    .get("webhooks")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|w| {
                        text(w, "/clientConfig/service/namespace")
                            .is_some_and(|n| namespaces.contains(&n))
                    }),
                _ => false,
            };
            if wanted && !self.excluded(&e.r) {
                if e.r.kind == "ClusterRoleBinding" {
                    self.cluster_roles.extend(text(v, "/roleRef/name"));
                }
                if e.r.kind == "PersistentVolume" {
                    self.storage_classes
                        .extend(text(v, "/spec/storageClassName"));
                }
                out.push(e.clone());
            }
        }
        // Second pass: what the bindings and volumes chosen above name.
        for e in cluster {
            let wanted = match e.r.kind.as_str() {
                "ClusterRole" => self.cluster_roles.contains(&e.r.name),
                "StorageClass" => self.storage_classes.contains(&e.r.name),
                _ => false,
            };
            if wanted && !self.excluded(&e.r) {
                out.push(e.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_found_twice_in_a_cluster_directory_is_restored_once() {
        let d = tempfile::tempdir().unwrap();
        let res = d.path().join("resources");
        std::fs::create_dir_all(&res).unwrap();
        let cm = |v: &str| {
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: pg}}\ndata: {{v: \"{v}\"}}\n")
        };
        std::fs::write(res.join("a.yaml"), cm("first")).unwrap();
        std::fs::write(res.join("b.yaml"), cm("second")).unwrap();
        let all = ClusterDir::new(d.path()).load().unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].value["data"]["v"], "first");
    }

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
