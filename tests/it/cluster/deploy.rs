//! The packaging of `lifeboat controller`: the kustomize base `deploy/base/` and its overlays
//! `deploy/overlays/primary` and `deploy/overlays/dr`, rendered by the test cluster's own
//! `kubectl kustomize` and judged by a real API server (`apply --server-side
//! --dry-run=server`: schemas, RBAC escalation checks, admission, Pod Security), so that
//! nothing is written. Also, without a cluster: `deploy/base/crds/` is what `src/crd/` generates,
//! and the controller's ClusterRole names every resource (and subresource) of those CRDs.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

use super::{site, unique, Role, Site};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize DIR` (DIR relative to the crate), as the site's kubectl renders it.
fn render(site: &Site, dir: &str) -> String {
    site.kubectl_ok(&["kustomize", root().join(dir).to_str().unwrap()])
}

/// The documents of a multi-document YAML stream, as JSON.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d).expect("YAML");
            serde_json::to_value(v).expect("YAML as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl apply --server-side --dry-run=server` of `input` (admin, field manager
/// lifeboat-test): nothing is written.
fn dry_run(site: &Site, input: &str) -> Output {
    site.kubectl_input(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=lifeboat-test",
            "-f",
            "-",
        ],
        input,
    )
}

/// How kubectl names an object in its output: `deployment.apps/NAME`, `namespace/NAME`.
fn kubectl_id(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap().to_lowercase();
    let name = obj["metadata"]["name"].as_str().unwrap();
    match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The roles a render's ClusterRoleBindings bind.
fn bound_cluster_roles(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding")
        .map(|o| o["roleRef"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// The sites the base and the overlays are judged on.
const RENDERS: [(&str, Role); 3] = [
    ("deploy/base", Role::Primary),
    ("deploy/overlays/primary", Role::Primary),
    ("deploy/overlays/dr", Role::Dr),
];

#[test]
fn the_base_and_both_overlays_pass_a_server_side_dry_run() {
    for (dir, role) in RENDERS {
        let Some(site) = site(role) else { return };
        let yaml = render(site, dir);
        let objs = documents(&yaml);
        let want: BTreeSet<&str> = [
            "Namespace",
            "ServiceAccount",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment",
            "Service",
        ]
        .into();
        let have = kinds(&objs);
        assert!(
            want.iter().all(|k| have.contains(*k)),
            "{dir}: renders {have:?}, not every kind of {want:?}"
        );
        let crds = objs
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .count();
        assert_eq!(crds, lifeboat::crd::definitions().len(), "{dir}: the CRDs");

        let out = dry_run(site, &yaml);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{dir}: the API server refused the render:\n{stdout}{stderr}"
        );
        // Every object of the render, of every kind, accepted one by one.
        let accepted: BTreeSet<&str> = stdout
            .lines()
            .filter_map(|l| l.strip_suffix(" serverside-applied (server dry run)"))
            .collect();
        for obj in &objs {
            let id = kubectl_id(obj);
            assert!(
                accepted.contains(id.as_str()),
                "{dir}: {id} not accepted:\n{stdout}{stderr}"
            );
        }
        assert_eq!(accepted.len(), objs.len(), "{dir}:\n{stdout}");
        assert!(
            !stderr.contains("PodSecurity"),
            "{dir}: Pod Security warns:\n{stderr}"
        );
    }
}

#[test]
fn only_the_dr_overlay_binds_the_restore_role() {
    let Some(site) = site(Role::Primary) else {
        return;
    };
    let everywhere: BTreeSet<String> = ["lifeboat-backup", "lifeboat-controller"]
        .map(String::from)
        .into();
    for (dir, _) in RENDERS {
        let bound = bound_cluster_roles(&documents(&render(site, dir)));
        let mut want = everywhere.clone();
        if dir.ends_with("/dr") {
            want.insert("lifeboat-restore".into());
        }
        assert_eq!(bound, want, "{dir}: the ClusterRoles bound");
    }
    // Each overlay labels what it installs with its site.
    for site_name in ["primary", "dr"] {
        let objs = documents(&render(site, &format!("deploy/overlays/{site_name}")));
        for obj in &objs {
            assert_eq!(
                obj["metadata"]["labels"]["lifeboat.dev/site"],
                site_name,
                "{}",
                kubectl_id(obj)
            );
        }
    }
}

/// The controller's pod, as its Deployment would make it, server-side dry-run as a Pod in a
/// namespace that enforces Pod Security "restricted": the real admission judges. A copy that
/// allows privilege escalation is refused there, so the check is known to be on.
#[test]
fn the_controller_pod_passes_pod_security_restricted() {
    let Some(site) = site(Role::Primary) else {
        return;
    };
    let objs = documents(&render(site, "deploy/base"));
    let deployment = objs
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "lifeboat-controller")
        .expect("the controller's Deployment");
    let template = &deployment["spec"]["template"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["args"], json!(["controller"]));
    assert_eq!(template["spec"]["serviceAccountName"], "lifeboat");

    let ns = unique("lifeboat-psa");
    site.kubectl_ok(&["create", "namespace", &ns]);
    site.kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]);
    // The pod's ServiceAccount must exist for the Pod to be admitted at all.
    site.kubectl_ok(&["-n", &ns, "create", "serviceaccount", "lifeboat"]);
    let pod = |spec: &Value| {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "lifeboat-controller",
                "namespace": ns,
                "labels": template["metadata"]["labels"],
            },
            "spec": spec,
        })
        .to_string()
    };
    let good = dry_run(site, &pod(&template["spec"]));
    let mut worse = template["spec"].clone();
    worse["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let bad = dry_run(site, &pod(&worse));
    site.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);

    assert!(
        good.status.success(),
        "the controller's pod under Pod Security restricted: {}{}",
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr)
    );
    let bad_err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && bad_err.contains("violates PodSecurity \"restricted"),
        "a pod that allows privilege escalation must be refused there: {bad_err}"
    );
}

/// The lifeboat.dev resources a ClusterRole's rules name.
fn lifeboat_resources(role: &Value) -> BTreeSet<String> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["apiGroups"] == json!(["lifeboat.dev"]))
        .flat_map(|r| r["resources"].as_array().unwrap().clone())
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_controller_role_names_every_lifeboat_resource() {
    let text = std::fs::read_to_string(root().join("deploy/base/rbac-controller.yaml")).unwrap();
    let docs = documents(&text);
    let role = docs
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "lifeboat-controller")
        .expect("ClusterRole lifeboat-controller");
    let mut want = BTreeSet::new();
    for (_, crd) in lifeboat::crd::definitions() {
        let plural = crd.spec.names.plural;
        for sub in ["", "/status", "/finalizers"] {
            want.insert(format!("{plural}{sub}"));
        }
    }
    assert_eq!(lifeboat_resources(role), want);
    let binding = docs
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding")
        .expect("its ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "lifeboat-controller");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "lifeboat", "namespace": "lifeboat"}])
    );
}

#[test]
fn deploy_crds_are_what_src_crd_generates() {
    let dir = root().join("deploy/base/crds");
    let fix = "run `cargo run -- crds --out deploy/base/crds`";
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let rendered = lifeboat::crd::rendered();
    let names: BTreeSet<String> = rendered.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        on_disk, names,
        "deploy/base/crds/ holds other files than src/crd/ generates: {fix} (and remove the rest)"
    );
    for (name, text) in rendered {
        let file = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            file == text,
            "deploy/base/crds/{name} is not what src/crd/ generates: {fix}"
        );
    }
}
