//! Capture from a real API server: discovery of every served type (a CRD made during the test
//! included), lists paged with a page size smaller than the lists, as lifeboat's own
//! ServiceAccount under the backup role.

use lifeboat::k8s::source::{Exported, Scope};

use super::{site, unique, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_discovers_a_type_made_now_and_pages_through_every_list() {
    let Some(site) = site(Role::Primary) else {
        return;
    };
    let ns = site.namespace("capture");
    // A custom resource type this test makes, so discovery cannot have known it before.
    let group = format!("{}.lifeboat.test", unique("g"));
    let crd = site.gadget_crd(&group);
    let mut objects = String::new();
    for i in 0..7 {
        objects.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}, namespace: {ns}}}\ndata: {{i: \"{i}\"}}\n---\n"
        ));
    }
    for i in 0..5 {
        objects.push_str(&format!(
            "apiVersion: {group}/v1\nkind: Gadget\nmetadata: {{name: g{i}, namespace: {ns}}}\nspec: {{size: {i}}}\n---\n"
        ));
    }
    site.apply(&objects);

    // Pages of 2: seven ConfigMaps (eight with kube-root-ca.crt) take four pages.
    let live = site.live().await.with_page_size(2);
    let scope = Scope {
        namespaces: vec![ns.clone()],
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Exported>(4);
    let consumer = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e);
        }
        got
    });
    let failures = live.capture(&scope, tx).await.unwrap();
    let got = consumer.await.unwrap();
    assert!(failures.is_empty(), "nothing refused: {failures:?}");
    let names: Vec<String> = got.iter().map(|e| e.r.display()).collect();
    let count = |kind: &str| got.iter().filter(|e| e.r.kind == kind).count();
    assert_eq!(count("ConfigMap"), 8, "every page of ConfigMaps: {names:?}");
    assert_eq!(count("Gadget"), 5, "the new type was discovered: {names:?}");
    for want in [
        format!("Namespace/{ns}"),
        format!("CustomResourceDefinition/{crd}"),
        format!("ServiceAccount/{ns}/default"),
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    // List items come without their type from a real server too; the capture puts it back.
    let g = got.iter().find(|e| e.r.kind == "Gadget").unwrap();
    assert_eq!(g.value["apiVersion"], format!("{group}/v1"));
    assert!(g.value["metadata"]["uid"].is_string(), "captured raw");
    // Nothing outside the scope.
    assert!(
        got.iter()
            .all(|e| e.r.namespace.as_deref().is_none_or(|n| n == ns)),
        "{names:?}"
    );

    site.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
    site.kubectl_ok(&["delete", "crd", &crd, "--wait=false"]);
}

/// The backup role reads everything and writes no application object.
#[test]
fn the_backup_role_reads_everything_and_writes_only_lifeboats_own_objects() {
    let Some(site) = site(Role::Primary) else {
        return;
    };
    let ns = site.namespace("rbac");
    for (verb, resource) in [
        ("list", "secrets"),
        ("get", "configmaps"),
        ("list", "customresourcedefinitions"),
        ("create", "volumesnapshots.snapshot.storage.k8s.io"),
        ("patch", "volumesnapshotcontents.snapshot.storage.k8s.io"),
        (
            "create",
            "volumegroupsnapshots.groupsnapshot.storage.k8s.io",
        ),
        ("create", "persistentvolumeclaims"),
        ("create", "jobs.batch"),
        ("create", "pods/exec"),
    ] {
        assert!(
            site.lifeboat_can(verb, resource, &ns),
            "backup role may {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("create", "configmaps"),
        ("patch", "deployments.apps"),
        ("delete", "secrets"),
        ("create", "secrets"),
        ("update", "persistentvolumeclaims"),
        ("create", "namespaces"),
        ("patch", "persistentvolumes"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ] {
        assert!(
            !site.lifeboat_can(verb, resource, &ns),
            "a backup-only site must not {verb} {resource}"
        );
    }
    if let Some(dr) = super::site(Role::Dr) {
        assert!(dr.lifeboat_can("create", "configmaps", &ns));
        assert!(dr.lifeboat_can("patch", "persistentvolumes", &ns));
    }
    site.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}
