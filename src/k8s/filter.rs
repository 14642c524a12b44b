//! The filters of a backup's or a restore's scope, spelled as velero spells them; pure. Takes
//! the text of `-l/--selector` (the whole label-selector grammar), `--include-resources` and
//! `--exclude-resources` (resource names: `deployments`, `deployments.apps`, `Deployment`),
//! `--include-objects` (`kind/name`, `kind/namespace/name`) and `--include-namespaces` and
//! `--exclude-namespaces` (globs); gives typed filters, errors that name the flag and the bad
//! part, and resolves resource names to the types (group, kind) a source serves: the built-in
//! table of common resources plus what the source says (a cluster directory's objects and
//! CRDs, a live cluster's discovery).

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("invalid {flag} `{value}`: {reason}")]
    BadFilter {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("unknown kind `{kind}` in {flag}; kinds known here: {known}")]
    UnknownKind {
        flag: &'static str,
        kind: String,
        known: String,
    },
    #[error("{flag}: no resource `{name}` is served here; give a plural (`deployments`), a kind (`Deployment`) or either with its group (`deployments.apps`); resources known here: {known}")]
    UnknownResource {
        flag: &'static str,
        name: String,
        known: String,
    },
    #[error("--include-namespaces: `{pattern}` matches no namespace of {cluster}; its namespaces: {known}")]
    NoNamespaceMatches {
        pattern: String,
        cluster: String,
        known: String,
    },
    #[error("no namespace left in scope: give -n/--namespace or --include-namespaces, and an --exclude-namespaces that leaves some")]
    NoNamespaceLeft,
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> FilterError {
    FilterError::BadFilter {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

// ----- label selectors ---------------------------------------------------------------------

/// A label selector, as Kubernetes writes one: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
/// `k notin (a,b)`, `k` (exists), `!k` (does not exist), comma-separated; all must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<(String, Op)>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    Ne(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    Absent,
}

const SELECTOR_FORMS: &str =
    "write key=value, key==value, key!=value, key in (a,b), key notin (a,b), key or !key";

/// The terms of a selector: split at commas outside parentheses.
fn terms(text: &str) -> Result<Vec<&str>, FilterError> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad("--selector", text, "unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(bad("--selector", text, "a `(` is not closed"));
    }
    out.push(&text[start..]);
    Ok(out
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect())
}

/// A label name or value part: up to 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn check_key<'a>(term: &str, key: &'a str) -> Result<&'a str, FilterError> {
    let key = key.trim();
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-.".contains(&c))
    });
    if key.is_empty() {
        return Err(bad("--selector", term, format!("no key; {SELECTOR_FORMS}")));
    }
    if !prefix_ok || !label_part(name) {
        return Err(bad(
            "--selector",
            term,
            format!("`{key}` is not a label key (up to 63 of A-Z a-z 0-9 . _ -, alphanumeric at both ends, an optional DNS prefix/); {SELECTOR_FORMS}"),
        ));
    }
    Ok(key)
}

fn check_value(term: &str, v: &str) -> Result<String, FilterError> {
    let v = v.trim();
    if v.is_empty() || label_part(v) {
        Ok(v.to_string())
    } else {
        Err(bad(
            "--selector",
            term,
            format!("`{v}` is not a label value (up to 63 of A-Z a-z 0-9 . _ -, alphanumeric at both ends)"),
        ))
    }
}

fn parse_term(term: &str) -> Result<(String, Op), FilterError> {
    if let Some(open) = term.find('(') {
        let Some(inner) = term[open + 1..].strip_suffix(')') else {
            return Err(bad(
                "--selector",
                term,
                "nothing may follow the `)` of a set",
            ));
        };
        let head: Vec<&str> = term[..open].split_whitespace().collect();
        let (key, set_op) = match head.as_slice() {
            [k, op] if *op == "in" || *op == "notin" => (*k, *op),
            _ => {
                return Err(bad(
                    "--selector",
                    term,
                    format!("a set needs `key in (…)` or `key notin (…)`; {SELECTOR_FORMS}"),
                ))
            }
        };
        let key = check_key(term, key)?;
        let values = inner
            .split(',')
            .map(|v| check_value(term, v))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if inner.trim().is_empty() {
            return Err(bad("--selector", term, "give at least one value in ( )"));
        }
        let op = if set_op == "in" {
            Op::In(values)
        } else {
            Op::NotIn(values)
        };
        return Ok((key.to_string(), op));
    }
    if term.contains(')') {
        return Err(bad("--selector", term, "a `)` without its `(`"));
    }
    let (key, op) = if let Some((k, v)) = term.split_once("!=") {
        (k, Op::Ne(check_value(term, v)?))
    } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (k, Op::Eq(check_value(term, v)?))
    } else if let Some(k) = term.strip_prefix('!') {
        (k, Op::Absent)
    } else {
        (term, Op::Exists)
    };
    Ok((check_key(term, key)?.to_string(), op))
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, FilterError> {
        Ok(Selector(
            terms(text)?
                .into_iter()
                .map(parse_term)
                .collect::<Result<_, _>>()?,
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object's labels satisfy every term (`!=` and `notin` hold where the label
    /// is absent, as in Kubernetes).
    pub fn matches(&self, v: &Value) -> bool {
        let labels = v.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|(k, op)| match op {
            Op::Eq(want) => get(k) == Some(want.as_str()),
            Op::Ne(want) => get(k) != Some(want.as_str()),
            Op::In(set) => get(k).is_some_and(|v| set.contains(v)),
            Op::NotIn(set) => get(k).is_none_or(|v| !set.contains(v)),
            Op::Exists => get(k).is_some(),
            Op::Absent => get(k).is_none(),
        })
    }
}

// ----- resource types ----------------------------------------------------------------------

/// A resource type a source serves: its API group ("" for the core group), kind and plural.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    pub group: String,
    pub kind: String,
    pub plural: String,
}

/// A type as objects carry it: (group, kind).
pub type TypeKey = (String, String);

impl ResourceType {
    pub fn new(group: &str, kind: &str, plural: &str) -> ResourceType {
        ResourceType {
            group: group.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
        }
    }

    /// A type known from an object only (`apiVersion`, `kind`): its plural guessed as
    /// Kubernetes' own default (lower case, `-s`, `-es`, `-ies`).
    pub fn guessed(group: &str, kind: &str) -> ResourceType {
        let k = kind.to_ascii_lowercase();
        let plural = if k.ends_with('s')
            || k.ends_with('x')
            || k.ends_with("ch")
            || k.ends_with("sh")
        {
            format!("{k}es")
        } else if k.ends_with('y') && !k.ends_with("ay") && !k.ends_with("ey") && !k.ends_with("oy")
        {
            format!("{}ies", &k[..k.len() - 1])
        } else {
            format!("{k}s")
        };
        ResourceType::new(group, kind, &plural)
    }

    /// A CustomResourceDefinition's type (None: not a CRD, or one without names).
    pub fn of_crd(v: &Value) -> Option<ResourceType> {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str);
        (v.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition")).then_some(())?;
        Some(ResourceType::new(
            s("/spec/group")?,
            s("/spec/names/kind")?,
            s("/spec/names/plural")?,
        ))
    }

    pub fn key(&self) -> TypeKey {
        (self.group.clone(), self.kind.clone())
    }
}

/// Whether `filter` names `kind`: the kind itself or a plural of it, case-insensitively.
pub fn kind_matches(filter: &str, kind: &str) -> bool {
    let f = filter.to_ascii_lowercase();
    let k = kind.to_ascii_lowercase();
    f == k
        || f == format!("{k}s")
        || f == format!("{k}es")
        || (k.ends_with('y') && f == format!("{}ies", &k[..k.len() - 1]))
}

/// Types every cluster serves (and those common add-ons do), known to filters even when no
/// object of them is present: (group, kind, plural).
const BUILTIN: &[(&str, &str, &str)] = &[
    ("", "Namespace", "namespaces"),
    ("", "Pod", "pods"),
    ("", "Service", "services"),
    ("", "Endpoints", "endpoints"),
    ("", "ConfigMap", "configmaps"),
    ("", "Secret", "secrets"),
    ("", "ServiceAccount", "serviceaccounts"),
    ("", "PersistentVolume", "persistentvolumes"),
    ("", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("", "ResourceQuota", "resourcequotas"),
    ("", "LimitRange", "limitranges"),
    ("", "Event", "events"),
    ("", "Node", "nodes"),
    ("", "ReplicationController", "replicationcontrollers"),
    ("", "PodTemplate", "podtemplates"),
    ("apps", "Deployment", "deployments"),
    ("apps", "StatefulSet", "statefulsets"),
    ("apps", "DaemonSet", "daemonsets"),
    ("apps", "ReplicaSet", "replicasets"),
    ("apps", "ControllerRevision", "controllerrevisions"),
    ("batch", "Job", "jobs"),
    ("batch", "CronJob", "cronjobs"),
    ("rbac.authorization.k8s.io", "Role", "roles"),
    ("rbac.authorization.k8s.io", "RoleBinding", "rolebindings"),
    ("rbac.authorization.k8s.io", "ClusterRole", "clusterroles"),
    (
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        "clusterrolebindings",
    ),
    ("networking.k8s.io", "NetworkPolicy", "networkpolicies"),
    ("networking.k8s.io", "Ingress", "ingresses"),
    ("networking.k8s.io", "IngressClass", "ingressclasses"),
    ("policy", "PodDisruptionBudget", "poddisruptionbudgets"),
    (
        "autoscaling",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
    ),
    ("storage.k8s.io", "StorageClass", "storageclasses"),
    ("scheduling.k8s.io", "PriorityClass", "priorityclasses"),
    (
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
    ),
    ("coordination.k8s.io", "Lease", "leases"),
    ("discovery.k8s.io", "EndpointSlice", "endpointslices"),
    (
        "snapshot.storage.k8s.io",
        "VolumeSnapshot",
        "volumesnapshots",
    ),
    (
        "snapshot.storage.k8s.io",
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
    ),
    (
        "snapshot.storage.k8s.io",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
    ),
    ("apps.openshift.io", "DeploymentConfig", "deploymentconfigs"),
    ("route.openshift.io", "Route", "routes"),
];

/// The built-in types.
pub fn builtin_types() -> Vec<ResourceType> {
    BUILTIN
        .iter()
        .map(|(g, k, p)| ResourceType::new(g, k, p))
        .collect()
}

/// The types known from a set of objects: the built-in ones, each object's own type and the
/// types of the CRDs among them.
pub fn types_of_objects<'a>(objects: impl Iterator<Item = &'a Value>) -> Vec<ResourceType> {
    let mut out: BTreeSet<ResourceType> = builtin_types().into_iter().collect();
    let mut seen: HashSet<TypeKey> = out.iter().map(ResourceType::key).collect();
    let mut guessed = Vec::new();
    for v in objects {
        if let Some(t) = ResourceType::of_crd(v) {
            seen.insert(t.key());
            out.insert(t);
        }
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let group = api.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        if !kind.is_empty() {
            guessed.push((group.to_string(), kind.to_string()));
        }
    }
    for (g, k) in guessed {
        if seen.insert((g.clone(), k.clone())) {
            out.insert(ResourceType::guessed(&g, &k));
        }
    }
    out.into_iter().collect()
}

/// A name of `--include-resources`/`--exclude-resources`: `*` (every type), or `RESOURCE` or
/// `RESOURCE.GROUP`, where RESOURCE is a plural (`deployments`) or a kind (`Deployment`,
/// `deployment`), case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceName {
    /// As given.
    pub text: String,
    resource: String,
    group: Option<String>,
}

impl ResourceName {
    pub fn parse_list(flag: &'static str, text: &str) -> Result<Vec<ResourceName>, FilterError> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| ResourceName::parse(flag, t))
            .collect()
    }

    pub fn parse(flag: &'static str, t: &str) -> Result<ResourceName, FilterError> {
        if t.contains('/') {
            return Err(bad(
                flag,
                t,
                "names an object: give resource names here (`deployments`, `deployments.apps`), objects with --include-objects kind/name or kind/namespace/name",
            ));
        }
        let lower = t.to_ascii_lowercase();
        if lower != "*"
            && !lower
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b".-".contains(&c))
        {
            return Err(bad(
                flag,
                t,
                "a resource name is `*`, a plural or a kind, with an optional .group",
            ));
        }
        let (resource, group) = match lower.split_once('.') {
            Some((r, g)) => (r.to_string(), Some(g.to_string())),
            None => (lower.clone(), None),
        };
        if resource.is_empty() || group.as_deref() == Some("") {
            return Err(bad(flag, t, "an empty resource or group"));
        }
        Ok(ResourceName {
            text: t.to_string(),
            resource,
            group,
        })
    }

    pub fn is_all(&self) -> bool {
        self.resource == "*"
    }

    pub fn matches(&self, t: &ResourceType) -> bool {
        self.is_all()
            || ((self.resource == t.plural.to_ascii_lowercase()
                || kind_matches(&self.resource, &t.kind))
                && self
                    .group
                    .as_ref()
                    .is_none_or(|g| *g == t.group.to_ascii_lowercase()))
    }
}

/// The types `names` name among `known`; a name that names none is refused, listing the
/// resources known.
pub fn resolve(
    flag: &'static str,
    names: &[ResourceName],
    known: &[ResourceType],
) -> Result<HashSet<TypeKey>, FilterError> {
    let mut out = HashSet::new();
    for n in names {
        let found: Vec<&ResourceType> = known.iter().filter(|t| n.matches(t)).collect();
        if found.is_empty() {
            let known: BTreeSet<String> = known
                .iter()
                .map(|t| match t.group.as_str() {
                    "" => t.plural.clone(),
                    g => format!("{}.{g}", t.plural),
                })
                .collect();
            return Err(FilterError::UnknownResource {
                flag,
                name: n.text.clone(),
                known: known.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        out.extend(found.into_iter().map(ResourceType::key));
    }
    Ok(out)
}

/// Which types a scope takes, resolved against a source: every type not excluded, or only
/// those included (and not excluded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kinds {
    /// None: every type.
    pub include: Option<HashSet<TypeKey>>,
    pub exclude: HashSet<TypeKey>,
}

impl Kinds {
    /// `include` (empty: every type; `*` too) and `exclude`, resolved against `known`.
    pub fn resolve(
        include: &[ResourceName],
        exclude: &[ResourceName],
        known: &[ResourceType],
    ) -> Result<Kinds, FilterError> {
        let include = if include.is_empty() || include.iter().any(ResourceName::is_all) {
            None
        } else {
            Some(resolve("--include-resources", include, known)?)
        };
        Ok(Kinds {
            include,
            exclude: resolve("--exclude-resources", exclude, known)?,
        })
    }

    pub fn excluded(&self, group: &str, kind: &str) -> bool {
        self.exclude
            .contains(&(group.to_string(), kind.to_string()))
    }

    /// Taken: included (or no include list) and not excluded.
    pub fn takes(&self, group: &str, kind: &str) -> bool {
        let key = (group.to_string(), kind.to_string());
        self.include.as_ref().is_none_or(|i| i.contains(&key)) && !self.exclude.contains(&key)
    }
}

/// Checks that every kind an object filter names is a kind `known` holds.
pub fn check_known_kinds<'a>(
    flag: &'static str,
    kinds: impl IntoIterator<Item = &'a str>,
    known: &[ResourceType],
) -> Result<(), FilterError> {
    for k in kinds {
        let name = ResourceName::parse(flag, k).ok();
        if !known
            .iter()
            .any(|t| name.as_ref().is_some_and(|n| n.matches(t)))
        {
            let known: BTreeSet<&str> = known.iter().map(|t| t.kind.as_str()).collect();
            return Err(FilterError::UnknownKind {
                flag,
                kind: k.to_string(),
                known: known.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(())
}

// ----- namespaces --------------------------------------------------------------------------

/// A namespace pattern of `--include-namespaces`/`--exclude-namespaces`: a name, in which `*`
/// stands for any run of characters and `?` for one (`app-*`, `team-?`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceGlob(String);

impl NamespaceGlob {
    pub fn parse_list(flag: &'static str, text: &str) -> Result<Vec<NamespaceGlob>, FilterError> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                if t.len() <= 63
                    && t.bytes().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || b"-*?".contains(&c)
                    })
                {
                    Ok(NamespaceGlob(t.to_string()))
                } else {
                    Err(bad(
                        flag,
                        t,
                        "a namespace pattern is up to 63 of a-z 0-9 - and the wildcards * and ?",
                    ))
                }
            })
            .collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// `*` any run, `?` any one byte; iterative, with one backtrack point (linear in practice).
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The namespaces of a scope: those named (`-n`, in order), then the existing ones an include
/// pattern matches (sorted), less those an exclude pattern matches. An include pattern that
/// matches no namespace is refused (a typo would back up nothing), and so is an empty result.
pub fn namespaces_in_scope(
    named: &[String],
    include: &[NamespaceGlob],
    exclude: &[NamespaceGlob],
    existing: &[&str],
    cluster: &str,
) -> Result<Vec<String>, FilterError> {
    let mut sorted: Vec<&str> = existing.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let push = |n: &str, out: &mut Vec<String>| {
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    };
    for n in named {
        push(n, &mut out);
    }
    for g in include {
        let matched: Vec<&str> = sorted.iter().copied().filter(|n| g.matches(n)).collect();
        if matched.is_empty() {
            return Err(FilterError::NoNamespaceMatches {
                pattern: g.0.clone(),
                cluster: cluster.to_string(),
                known: sorted.join(", "),
            });
        }
        for n in matched {
            push(n, &mut out);
        }
    }
    out.retain(|n| !exclude.iter().any(|g| g.matches(n)));
    if out.is_empty() {
        return Err(FilterError::NoNamespaceLeft);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labelled(labels: &[(&str, &str)]) -> Value {
        let m: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        serde_json::json!({"metadata": {"labels": m}})
    }

    #[test]
    fn the_whole_selector_grammar() {
        let v = labelled(&[("app", "pg"), ("tier", "db"), ("example.com/team", "a")]);
        for (sel, want) in [
            ("app=pg", true),
            ("app==pg,tier=db", true),
            ("app=cassandra", false),
            ("app!=cassandra", true),
            ("missing!=x", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("", true),
            ("app in (pg, mysql)", true),
            ("app in (mysql)", false),
            ("app notin (mysql,redis)", true),
            ("app notin (pg)", false),
            ("missing notin (pg)", true),
            ("missing in (pg)", false),
            ("app in (pg),tier notin (web), example.com/team=a", true),
            ("app in (pg,mysql),!tier", false),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&v), want, "{sel}");
        }
    }

    #[test]
    fn a_bad_selector_names_the_bad_part() {
        for (sel, part, why) in [
            ("=x", "=x", "no key"),
            ("a b=c", "a b=c", "not a label key"),
            ("app in (a,b", "app in (a,b", "not closed"),
            ("app in a,b)", "app in a,b)", "unbalanced"),
            ("ok=1,app within (a)", "app within (a)", "key in (…)"),
            ("app in ()", "app in ()", "at least one value"),
            ("app=a b", "app=a b", "not a label value"),
            ("tier=db,app in (a) x", "app in (a) x", "follow the `)`"),
            ("-bad", "-bad", "not a label key"),
        ] {
            let e = Selector::parse(sel).unwrap_err().to_string();
            assert!(
                e.contains("--selector") && e.contains(&format!("`{part}`")) && e.contains(why),
                "{sel}: {e}"
            );
        }
    }

    #[test]
    fn resource_names_resolve_as_velero_spells_them() {
        let known = builtin_types();
        let r = |s: &str| {
            let names = ResourceName::parse_list("--include-resources", s).unwrap();
            let mut got: Vec<TypeKey> = resolve("--include-resources", &names, &known)
                .unwrap()
                .into_iter()
                .collect();
            got.sort();
            got
        };
        let dep = vec![("apps".to_string(), "Deployment".to_string())];
        for s in [
            "deployments",
            "deployments.apps",
            "Deployment",
            "deployment",
            "DEPLOYMENTS",
        ] {
            assert_eq!(r(s), dep, "{s}");
        }
        assert_eq!(r("configmaps"), [("".into(), "ConfigMap".into())]);
        assert_eq!(r("ingresses.networking.k8s.io").len(), 1);
        assert_eq!(r("configmaps,secrets").len(), 2);
    }

    #[test]
    fn unknown_resources_and_objects_in_the_wrong_flag_are_refused_with_the_fix() {
        let known = builtin_types();
        let names = ResourceName::parse_list("--include-resources", "deployments.batch").unwrap();
        let e = resolve("--include-resources", &names, &known)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`deployments.batch`") && e.contains("deployments.apps"),
            "{e}"
        );
        let e = ResourceName::parse_list("--include-resources", "deployment/pg/postgres")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--include-objects"), "{e}");
    }

    #[test]
    fn crds_and_objects_of_a_source_are_known_types() {
        let crd = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "cassandradatacenters.cassandra.datastax.com"},
            "spec": {"group": "cassandra.datastax.com", "names": {"kind": "CassandraDatacenter", "plural": "cassandradatacenters"}}});
        let obj = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
        let known = types_of_objects([&crd, &obj].into_iter());
        let k = Kinds::resolve(
            &ResourceName::parse_list(
                "--include-resources",
                "cassandradatacenters,widgets.example.com",
            )
            .unwrap(),
            &[],
            &known,
        )
        .unwrap();
        assert!(k.takes("cassandra.datastax.com", "CassandraDatacenter"));
        assert!(k.takes("example.com", "Widget"));
        assert!(!k.takes("", "ConfigMap"));
        assert_eq!(ResourceType::guessed("", "Policy").plural, "policies");
        assert_eq!(ResourceType::guessed("", "Gateway").plural, "gateways");
        assert_eq!(ResourceType::guessed("", "Ingress").plural, "ingresses");
    }

    #[test]
    fn excludes_win_and_star_includes_every_type() {
        let known = builtin_types();
        let p = |s| ResourceName::parse_list("--x", s).unwrap();
        let k = Kinds::resolve(&p("*"), &p("secrets"), &known).unwrap();
        assert!(k.takes("apps", "Deployment") && !k.takes("", "Secret"));
        let k = Kinds::resolve(&p("secrets,configmaps"), &p("secrets"), &known).unwrap();
        assert!(k.takes("", "ConfigMap") && !k.takes("", "Secret"));
    }

    #[test]
    fn namespace_globs() {
        let existing = ["app-a", "app-b", "db", "kube-system", "team-1"];
        let g = |s| NamespaceGlob::parse_list("--include-namespaces", s).unwrap();
        let ns = |named: &[&str], inc, exc| {
            namespaces_in_scope(
                &named.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                &g(inc),
                &g(exc),
                &existing,
                "c",
            )
        };
        assert_eq!(ns(&["db"], "app-*", "").unwrap(), ["db", "app-a", "app-b"]);
        assert_eq!(ns(&[], "*", "kube-*,app-?").unwrap(), ["db", "team-1"]);
        assert_eq!(ns(&[], "team-?", "").unwrap(), ["team-1"]);
        let e = ns(&["db"], "ap-*", "").unwrap_err().to_string();
        assert!(e.contains("`ap-*`") && e.contains("app-a"), "{e}");
        let e = ns(&["db"], "", "d?").unwrap_err().to_string();
        assert!(e.contains("no namespace left"), "{e}");
        let e = NamespaceGlob::parse_list("--exclude-namespaces", "App_1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--exclude-namespaces") && e.contains("`App_1`"),
            "{e}"
        );
    }

    proptest! {
        /// A name matches itself; `*` matches any name; replacing any part of a name by `*`,
        /// or any one character by `?`, still matches it; a pattern without wildcards matches
        /// only its own name.
        #[test]
        fn globs_match_what_they_generalise(name in "[a-z0-9-]{0,20}", other in "[a-z0-9-]{0,20}", a in 0usize..21, b in 0usize..21) {
            let (lo, hi) = (a.min(b).min(name.len()), a.max(b).min(name.len()));
            prop_assert!(glob(name.as_bytes(), name.as_bytes()));
            prop_assert!(glob(b"*", other.as_bytes()));
            let starred = format!("{}*{}", &name[..lo], &name[hi..]);
            prop_assert!(glob(starred.as_bytes(), name.as_bytes()));
            if lo < name.len() {
                let q = format!("{}?{}", &name[..lo], &name[lo + 1..]);
                prop_assert!(glob(q.as_bytes(), name.as_bytes()));
            }
            prop_assert_eq!(glob(name.as_bytes(), other.as_bytes()), name == other);
        }

        /// `k in (v)` is `k=v`, `k notin (v)` is `k!=v`, `!k` is the opposite of `k`, whatever
        /// the labels.
        #[test]
        fn set_forms_agree_with_equality_forms(
            labels in proptest::collection::btree_map("[a-c]", "[x-z]", 0..3),
            k in "[a-c]", v in "[x-z]",
        ) {
            let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let obj = labelled(&pairs);
            let m = |s: String| Selector::parse(&s).unwrap().matches(&obj);
            prop_assert_eq!(m(format!("{k} in ({v})")), m(format!("{k}={v}")));
            prop_assert_eq!(m(format!("{k} notin ({v})")), m(format!("{k}!={v}")));
            prop_assert_eq!(m(format!("!{k}")), !m(k.clone()));
            prop_assert_eq!(m(format!("{k} in ({v}, q)")), m(format!("{k}={v}")) || m(format!("{k}=q")));
        }

        /// Every built-in type resolves from its plural, its kind in any case, and either with
        /// its group, and from nothing else of the table.
        #[test]
        fn every_builtin_type_resolves_by_its_names(i in 0usize..BUILTIN.len(), upper in any::<bool>()) {
            let (g, k, p) = BUILTIN[i];
            let known = builtin_types();
            let case = |s: String| if upper { s.to_ascii_uppercase() } else { s };
            let mut forms = vec![case(p.to_string()), case(k.to_string())];
            if !g.is_empty() {
                forms.push(case(format!("{p}.{g}")));
                forms.push(case(format!("{k}.{g}")));
            }
            for f in forms {
                let names = ResourceName::parse_list("--include-resources", &f).unwrap();
                let got = resolve("--include-resources", &names, &known).unwrap();
                prop_assert!(got.contains(&(g.to_string(), k.to_string())), "{}", f);
                prop_assert!(got.iter().all(|(_, kind)| kind == k), "{}: {:?}", f, got);
            }
        }
    }
}
