//! A backup of a primary's namespace restored on the DR site by server-side apply: the
//! restored CRD waited for until Established, owner references re-linked to the owners' new
//! uids, the namespace mapped, objects sanitised so that the real API server takes them, and
//! the policy for objects that exist (`skip`, `update`, `recreate`).

use serde_json::Value;

use super::{site, unique, Role, Site};
use crate::support::{init_repo, json, ok, run, tmp};

/// The application: a custom resource (of a type only the primary knows) owning a ConfigMap,
/// a ConfigMap, a Secret, a Service with its cluster IP, a ServiceAccount, a Role and its
/// RoleBinding.
fn application(primary: &Site, ns: &str, group: &str) {
    primary.gadget_crd(group);
    primary.apply(&format!(
        r#"apiVersion: {group}/v1
kind: Gadget
metadata: {{name: main, namespace: {ns}}}
spec: {{size: 3}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}, labels: {{app: web}}}}
data: {{colour: blue}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: {ns}}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: web, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: web, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get, watch]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: web, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: web}}
subjects: [{{kind: ServiceAccount, name: web, namespace: {ns}}}]
"#
    ));
    // Two ConfigMaps owned by the custom resource: one as a plain dependent (restored, its
    // reference re-made), one by it as controller (left to the controller to recreate).
    let owner = primary
        .get(&["-n", ns, &format!("gadgets.{group}"), "main"])
        .unwrap();
    let uid = owner["metadata"]["uid"].as_str().unwrap();
    primary.apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: main-state
  namespace: {ns}
  ownerReferences:
  - {{apiVersion: {group}/v1, kind: Gadget, name: main, uid: {uid}}}
data: {{state: ready}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: main-lock
  namespace: {ns}
  ownerReferences:
  - {{apiVersion: {group}/v1, kind: Gadget, name: main, uid: {uid}, controller: true}}
data: {{holder: main}}
"#
    ));
}

fn restore(dr: &Site, repo: &std::path::Path, backup: &str, mapping: &str, policy: &str) -> Value {
    json(&ok(run(dr.lifeboat(repo).args([
        "--json",
        "restore",
        "create",
        "--from-backup",
        backup,
        "--namespace-mapping",
        mapping,
        "--existing-resource-policy",
        policy,
        "--context",
        "lifeboat",
    ]))))
}

/// Outcome of object `kind/name` in a restore's results.
fn outcome<'a>(report: &'a Value, kind: &str, name: &str) -> &'a str {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["name"] == name)
        .and_then(|r| r["outcome"].as_str())
        .unwrap_or_else(|| panic!("no result for {kind}/{name} in {report:#}"))
}

#[test]
fn restore_on_the_dr_site_waits_for_the_crd_relinks_owners_and_honours_the_policy() {
    let (Some(primary), Some(dr)) = (site(Role::Primary), site(Role::Dr)) else {
        return;
    };
    let d = tmp();
    let repo = init_repo(d.path());
    let ns = primary.namespace("app");
    let group = format!("{}.lifeboat.test", unique("r"));
    application(primary, &ns, &group);

    let backup = json(&ok(run(primary.lifeboat(&repo).args([
        "--json",
        "backup",
        "create",
        "app-1",
        "-n",
        &ns,
        "--include-volumes=false",
    ]))));
    assert!(backup["objects"].as_u64().unwrap() >= 9, "{backup:#}");
    assert_eq!(
        backup["failures"].as_array().map_or(0, Vec::len),
        0,
        "{backup:#}"
    );

    // The DR site has never seen the type: the CRD goes first and is waited for.
    let target = format!("{ns}-dr");
    let first = restore(dr, &repo, "app-1", &format!("{ns}:{target}"), "skip");
    assert_eq!(
        outcome(
            &first,
            "CustomResourceDefinition",
            &format!("gadgets.{group}")
        ),
        "created"
    );
    for (kind, name) in [
        ("Gadget", "main"),
        ("ConfigMap", "settings"),
        ("ConfigMap", "main-state"),
        ("Secret", "creds"),
        ("Service", "web"),
        ("RoleBinding", "web"),
    ] {
        assert_eq!(
            outcome(&first, kind, name),
            "created",
            "{kind}/{name}: {first:#}"
        );
    }
    let gadget = dr
        .get(&["-n", &target, &format!("gadgets.{group}"), "main"])
        .unwrap();
    let state = dr.get(&["-n", &target, "configmap", "main-state"]).unwrap();
    assert_eq!(
        state["metadata"]["ownerReferences"][0]["uid"], gadget["metadata"]["uid"],
        "the owner reference points at the restored owner: {state:#}"
    );
    let secret = dr.get(&["-n", &target, "secret", "creds"]).unwrap();
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    // Applied by lifeboat's field manager, through server-side apply.
    let settings: Value = serde_json::from_str(&dr.kubectl_ok(&[
        "-n",
        &target,
        "get",
        "configmap",
        "settings",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    let managers: Vec<(&str, &str)> = settings["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or(""),
                m["operation"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(managers.contains(&("lifeboat", "Apply")), "{managers:?}");
    // Nothing of the source namespace was written on the DR site.
    assert!(dr.get(&["namespace", &ns]).is_none());

    // Someone changes an object on the DR site: skip keeps it, update takes it back.
    dr.kubectl_ok(&[
        "-n",
        &target,
        "patch",
        "configmap",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"colour":"red"}}"#,
    ]);
    let skip = restore(dr, &repo, "app-1", &format!("{ns}:{target}"), "skip");
    assert_eq!(outcome(&skip, "ConfigMap", "settings"), "skipped");
    let colour = |site: &Site| {
        site.get(&["-n", &target, "configmap", "settings"]).unwrap()["data"]["colour"].clone()
    };
    assert_eq!(colour(dr), "red");
    let update = restore(dr, &repo, "app-1", &format!("{ns}:{target}"), "update");
    assert_eq!(outcome(&update, "ConfigMap", "settings"), "updated");
    assert_eq!(
        colour(dr),
        "blue",
        "update applies the backup's fields over the change"
    );
    // Recreate deletes and creates: a new object, with a new uid.
    let uid = |site: &Site| {
        site.get(&["-n", &target, "configmap", "settings"]).unwrap()["metadata"]["uid"].clone()
    };
    let before = uid(dr);
    let recreate = restore(dr, &repo, "app-1", &format!("{ns}:{target}"), "recreate");
    assert_ne!(
        outcome(&recreate, "ConfigMap", "settings"),
        "failed",
        "{recreate:#}"
    );
    assert_ne!(uid(dr), before, "recreated");

    for (site, n) in [(primary, &ns), (dr, &target)] {
        site.kubectl_ok(&["delete", "namespace", n, "--wait=false"]);
        site.kubectl_ok(&["delete", "crd", &format!("gadgets.{group}"), "--wait=false"]);
    }
}

/// The primary's backup role cannot restore: a restore there fails on the first write and
/// names the permission, and nothing is written.
#[test]
fn a_backup_only_site_refuses_a_restore_and_says_which_permission_is_missing() {
    let Some(primary) = site(Role::Primary) else {
        return;
    };
    let d = tmp();
    let repo = init_repo(d.path());
    let ns = primary.namespace("ro");
    primary.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings, namespace: {ns}}}\ndata: {{a: b}}\n"
    ));
    ok(run(primary.lifeboat(&repo).args([
        "backup",
        "create",
        "ro-1",
        "-n",
        &ns,
        "--include-volumes=false",
    ])));
    let target = format!("{ns}-copy");
    let r = run(primary.lifeboat(&repo).args([
        "restore",
        "create",
        "--from-backup",
        "ro-1",
        "--namespace-mapping",
        &format!("{ns}:{target}"),
        "--context",
        "lifeboat",
    ]));
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("the API server refused")
            && all.contains("HTTP 403")
            && all.contains("binds deploy/restore/rbac-restore.yaml")
            && !all.contains("Status {"),
        "{all}"
    );
    assert!(
        primary.get(&["namespace", &target]).is_none(),
        "nothing written"
    );
    primary.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}
