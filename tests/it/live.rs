//! The live-cluster source through `kube`'s client over a mocked API server (tower-test):
//! discovery of built-in and custom resource types, paginated lists, and an API server that
//! refuses. No kube-apiserver runs here; the mock answers as one does.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use lifeboat::k8s::live::LiveCluster;
use lifeboat::k8s::source::{select, Scope};
use lifeboat::store::memory::MemoryStore;
use serde_json::{json, Value};

use crate::support::new_repo;

fn group(name: &str) -> Value {
    json!({"name": name, "versions": [{"groupVersion": format!("{name}/v1"), "version": "v1"}],
           "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"}})
}

fn resource(name: &str, kind: &str, namespaced: bool) -> Value {
    json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
           "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]})
}

fn list(kind: &str, items: Vec<Value>, cont: Option<&str>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "1000", "continue": cont.unwrap_or("")}, "items": items})
}

fn meta(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": format!("uid-{name}"), "resourceVersion": "77",
                       "managedFields": [{"manager": "kubectl", "operation": "Update"}]});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

/// What the fake API server answers, and what it was asked.
struct FakeApi {
    refuse_secrets: bool,
    requests: Mutex<Vec<String>>,
}

impl FakeApi {
    fn answer_uri(&self, uri: &http::Uri) -> (StatusCode, Value) {
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        self.requests
            .lock()
            .unwrap()
            .push(format!("{path}?{query}"));
        let ok = |v| (StatusCode::OK, v);
        match path {
            "/apis" => ok(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group("apps"), group("db.example.com"), group("apiextensions.k8s.io")]}),
            ),
            "/apis/apps/v1" => ok(json!({"kind": "APIResourceList", "groupVersion": "apps/v1",
                "resources": [resource("deployments", "Deployment", true), resource("deployments/scale", "Scale", true)]})),
            "/apis/db.example.com/v1" => ok(
                json!({"kind": "APIResourceList", "groupVersion": "db.example.com/v1",
                "resources": [resource("postgresclusters", "PostgresCluster", true)]}),
            ),
            "/apis/apiextensions.k8s.io/v1" => ok(
                json!({"kind": "APIResourceList", "groupVersion": "apiextensions.k8s.io/v1",
                "resources": [resource("customresourcedefinitions", "CustomResourceDefinition", false)]}),
            ),
            "/api" => ok(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ),
            "/api/v1" => ok(
                json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                resource("namespaces", "Namespace", false), resource("configmaps", "ConfigMap", true),
                resource("secrets", "Secret", true), resource("events", "Event", true), resource("nodes", "Node", false)]}),
            ),
            "/api/v1/namespaces" => ok(list(
                "Namespace",
                vec![
                    json!({"metadata": meta("pg", None)}),
                    json!({"metadata": meta("other", None)}),
                ],
                None,
            )),
            "/api/v1/namespaces/pg/configmaps" => {
                // Two pages: the client must follow the continue token.
                assert!(query.contains("limit=2"), "paginated: {query}");
                if query.contains("continue=page-2") {
                    ok(list(
                        "ConfigMap",
                        vec![json!({"metadata": meta("c3", Some("pg")), "data": {"k": "3"}})],
                        None,
                    ))
                } else {
                    ok(list(
                        "ConfigMap",
                        vec![
                            json!({"metadata": meta("c1", Some("pg"))}),
                            json!({"metadata": meta("c2", Some("pg"))}),
                        ],
                        Some("page-2"),
                    ))
                }
            }
            "/api/v1/namespaces/pg/secrets" if self.refuse_secrets => (
                StatusCode::FORBIDDEN,
                json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "secrets is forbidden: User \"system:serviceaccount:lifeboat:lifeboat\" cannot list resource \"secrets\" in API group \"\" in the namespace \"pg\""}),
            ),
            "/api/v1/namespaces/pg/secrets" => ok(list(
                "Secret",
                vec![
                    json!({"metadata": meta("creds", Some("pg")), "type": "Opaque", "data": {"p": "cHc="}}),
                ],
                None,
            )),
            "/api/v1/namespaces/pg/events" => panic!("events are never captured, so never listed"),
            "/apis/apps/v1/namespaces/pg/deployments" => ok(list(
                "Deployment",
                vec![
                    json!({"metadata": meta("postgres", Some("pg")), "spec": {"replicas": 2}, "status": {"replicas": 2}}),
                ],
                None,
            )),
            "/apis/db.example.com/v1/namespaces/pg/postgresclusters" => ok(list(
                "PostgresCluster",
                vec![json!({"metadata": meta("main", Some("pg")), "spec": {"instances": 2}})],
                None,
            )),
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions" => ok(list(
                "CustomResourceDefinition",
                vec![
                    json!({"metadata": meta("postgresclusters.db.example.com", None), "spec": {"group": "db.example.com", "names": {"kind": "PostgresCluster", "plural": "postgresclusters"}, "scope": "Namespaced"}}),
                    json!({"metadata": meta("widgets.other.example.org", None), "spec": {"group": "other.example.org", "names": {"kind": "Widget", "plural": "widgets"}, "scope": "Namespaced"}}),
                ],
                None,
            )),
            other => (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": format!("{other} not found")}),
            ),
        }
    }
}

/// A fake API server: answers one request.
pub(crate) trait Answer: Send + Sync + 'static {
    fn answer(
        &self,
        req: Request<Body>,
    ) -> impl std::future::Future<Output = (StatusCode, Value)> + Send;
}

impl Answer for FakeApi {
    async fn answer(&self, req: Request<Body>) -> (StatusCode, Value) {
        self.answer_uri(req.uri())
    }
}

/// A kube client whose API server is `api`, answering on the test's runtime.
pub(crate) fn serve<A: Answer>(api: Arc<A>) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (status, body) = api.answer(req).await;
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    kube::Client::new(service, "default")
}

fn fake_cluster(refuse_secrets: bool) -> (LiveCluster, Arc<FakeApi>) {
    let api = Arc::new(FakeApi {
        refuse_secrets,
        requests: Mutex::new(Vec::new()),
    });
    let cluster = LiveCluster::from_client(serve(api.clone()), "fake").with_page_size(2);
    (cluster, api)
}

#[tokio::test]
async fn discovery_and_pagination_feed_the_same_backup_as_a_cluster_directory() {
    let (cluster, api) = fake_cluster(false);
    let all = cluster.load(&["pg".to_string()]).await.unwrap();
    let names: Vec<String> = all.iter().map(|e| e.r.display()).collect();
    for want in [
        "ConfigMap/pg/c1",
        "ConfigMap/pg/c2",
        "ConfigMap/pg/c3",
        "Secret/pg/creds",
        "Deployment/pg/postgres",
        "PostgresCluster/pg/main",
        "Namespace/pg",
        "CustomResourceDefinition/postgresclusters.db.example.com",
    ] {
        assert!(names.contains(&want.to_string()), "{want} in {names:?}");
    }
    // List items come without their type; the source puts it back, as kubectl does.
    let cr = all.iter().find(|e| e.r.kind == "PostgresCluster").unwrap();
    assert_eq!(cr.value["apiVersion"], "db.example.com/v1");
    assert_eq!(
        cr.value["metadata"]["uid"], "uid-main",
        "captured raw, lossless"
    );
    let requests = api.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.contains("continue=page-2")),
        "second page fetched: {requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("/nodes")),
        "cluster-scoped kinds not needed are not listed"
    );

    // The same scope selection and backup as for a cluster directory.
    let selected = select(
        &all,
        &Scope {
            namespaces: vec!["pg".into()],
            ..Default::default()
        },
        &cluster.describe(),
    )
    .unwrap();
    let kinds: Vec<&str> = selected.iter().map(|e| e.r.name.as_str()).collect();
    assert!(
        kinds.contains(&"postgresclusters.db.example.com"),
        "the CRD of a captured CR: {kinds:?}"
    );
    assert!(
        !kinds.contains(&"widgets.other.example.org") && !kinds.contains(&"other"),
        "{kinds:?}"
    );
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    let out = lifeboat::app::record::create_backup(
        repo.clone(),
        "live-1",
        &cluster.describe(),
        Default::default(),
        selected,
    )
    .await
    .unwrap();
    assert_eq!(out.objects, 8);
    let (_, b) = lifeboat::app::record::find_backup(&repo, "live-1")
        .await
        .unwrap();
    assert_eq!(b.source, "context:fake");
}

#[tokio::test]
async fn an_api_server_that_refuses_is_named() {
    let (cluster, _) = fake_cluster(true);
    let e = cluster.load(&["pg".to_string()]).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("list secrets in namespace pg") && msg.contains("forbidden"),
        "{msg}"
    );
    assert!(!e.is_retryable(), "403 needs a person, not a retry");
}

/// A fake API server that keeps objects: GET, server-side-apply PATCH and DELETE by path. An
/// applied CRD reads back Established, as the API server reports once it serves the type.
#[derive(Default)]
struct Stateful {
    objects: Mutex<std::collections::BTreeMap<String, Value>>,
    log: Mutex<Vec<String>>,
}

impl Stateful {
    fn discovery(path: &str) -> Option<Value> {
        Some(match path {
            "/apis" => {
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group("apps"), group("db.example.com"), group("apiextensions.k8s.io")]})
            }
            "/apis/apps/v1" => {
                json!({"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [resource("deployments", "Deployment", true)]})
            }
            "/apis/db.example.com/v1" => {
                json!({"kind": "APIResourceList", "groupVersion": "db.example.com/v1", "resources": [resource("postgresclusters", "PostgresCluster", true)]})
            }
            "/apis/apiextensions.k8s.io/v1" => {
                json!({"kind": "APIResourceList", "groupVersion": "apiextensions.k8s.io/v1", "resources": [resource("customresourcedefinitions", "CustomResourceDefinition", false)]})
            }
            "/api" => {
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
            }
            "/api/v1" => {
                json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [resource("namespaces", "Namespace", false), resource("configmaps", "ConfigMap", true)]})
            }
            _ => return None,
        })
    }

    async fn answer_request(&self, req: Request<Body>) -> (StatusCode, Value) {
        use http_body_util::BodyExt;
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if let Some(d) = Self::discovery(&path) {
            return (StatusCode::OK, d);
        }
        self.log.lock().unwrap().push(format!("{method} {path}"));
        let not_found = (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
        );
        match method.as_str() {
            "GET" => match self.objects.lock().unwrap().get(&path) {
                Some(v) => (StatusCode::OK, v.clone()),
                None => not_found,
            },
            "PATCH" => {
                assert!(
                    query.contains("fieldManager=lifeboat") && query.contains("force=true"),
                    "server-side apply: {query}"
                );
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let mut v: Value = serde_json::from_slice(&body).unwrap();
                let name = v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                v["metadata"]["uid"] = json!(format!("new-uid-{name}"));
                if v["kind"] == "CustomResourceDefinition" {
                    v["status"] =
                        json!({"conditions": [{"type": "Established", "status": "True"}]});
                }
                self.objects.lock().unwrap().insert(path, v.clone());
                (StatusCode::OK, v)
            }
            "DELETE" => match self.objects.lock().unwrap().remove(&path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                ),
                None => not_found,
            },
            m => panic!("unexpected {m} {path}"),
        }
    }
}

impl Answer for Stateful {
    async fn answer(&self, req: Request<Body>) -> (StatusCode, Value) {
        self.answer_request(req).await
    }
}

fn stateful_cluster() -> (LiveCluster, Arc<Stateful>) {
    let api = Arc::new(Stateful::default());
    (LiveCluster::from_client(serve(api.clone()), "fake"), api)
}

#[tokio::test]
async fn restore_applies_in_order_waits_for_crds_and_honours_the_policy() {
    use lifeboat::k8s::objects::{ObjRef, OwnerLink};
    use lifeboat::k8s::source::{ApplyItem, ExistingPolicy, Outcome};
    let (cluster, api) = stateful_cluster();
    let obj = |v: Value| (ObjRef::of(&v, "test").unwrap(), v);
    let plan = vec![
        obj(
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "postgresclusters.db.example.com"},
                   "spec": {"group": "db.example.com", "names": {"kind": "PostgresCluster", "plural": "postgresclusters"}, "scope": "Namespaced"}}),
        ),
        obj(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pg-dr"}})),
        obj(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "pg-dr"}, "data": {"a": "new"}}),
        ),
        obj(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "postgres", "namespace": "pg-dr"}, "spec": {"replicas": 0}}),
        ),
        obj(
            json!({"apiVersion": "db.example.com/v1", "kind": "PostgresCluster", "metadata": {"name": "main", "namespace": "pg-dr"}, "spec": {"instances": 2}}),
        ),
        obj(
            json!({"apiVersion": "other.example.org/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "pg-dr"}}),
        ),
        obj(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "main-settings", "namespace": "pg-dr"}}),
        ),
    ];
    let cr = plan[4].0.clone();
    let plan: Vec<ApplyItem> = plan
        .into_iter()
        .map(|(r, value)| {
            // The operator's settings ConfigMap is owned (not controlled) by the custom resource.
            let owners = if r.name == "main-settings" {
                vec![OwnerLink {
                    owner: cr.clone(),
                    controller: false,
                    block_owner_deletion: true,
                }]
            } else {
                Vec::new()
            };
            ApplyItem { r, value, owners }
        })
        .collect();
    let cm_path = "/api/v1/namespaces/pg-dr/configmaps/cfg".to_string();
    api.objects.lock().unwrap().insert(cm_path.clone(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "pg-dr"}, "data": {"a": "old"}}));

    let results = cluster
        .apply(
            &plan,
            ExistingPolicy::Skip,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    let outcomes: Vec<Outcome> = results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Created,
            Outcome::Created,
            Outcome::Skipped,
            Outcome::Created,
            Outcome::Created,
            Outcome::Failed,
            Outcome::Created
        ]
    );
    // The owner reference is re-made with the owner's new uid on the target.
    let settings =
        api.objects.lock().unwrap()["/api/v1/namespaces/pg-dr/configmaps/main-settings"].clone();
    assert_eq!(
        settings["metadata"]["ownerReferences"],
        json!([{"apiVersion": "db.example.com/v1", "kind": "PostgresCluster", "name": "main", "uid": "new-uid-main", "controller": false, "blockOwnerDeletion": true}])
    );
    assert!(
        results[5].detail.contains("serves no Widget"),
        "{}",
        results[5].detail
    );
    assert_eq!(
        api.objects.lock().unwrap()[&cm_path]["data"]["a"],
        "old",
        "skip keeps the existing object"
    );
    // The custom resource is applied only after its CRD was read back Established.
    let log = api.log.lock().unwrap().clone();
    let crd_get = log.iter().rposition(|l| l == "GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/postgresclusters.db.example.com").unwrap();
    let cr_patch = log
        .iter()
        .position(|l| l == "PATCH /apis/db.example.com/v1/namespaces/pg-dr/postgresclusters/main")
        .unwrap();
    assert!(crd_get < cr_patch, "{log:?}");
    let patches: Vec<&String> = log.iter().filter(|l| l.starts_with("PATCH")).collect();
    assert!(
        patches[0].contains("customresourcedefinitions")
            && patches[1].contains("/namespaces/pg-dr")
            && patches[1].starts_with("PATCH /api/v1/namespaces/pg-dr"),
        "{patches:?}"
    );

    // update replaces it; recreate deletes first.
    let results = cluster
        .apply(
            &plan[2..3],
            ExistingPolicy::Update,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(results[0].outcome, Outcome::Updated);
    assert_eq!(api.objects.lock().unwrap()[&cm_path]["data"]["a"], "new");
    api.log.lock().unwrap().clear();
    let results = cluster
        .apply(
            &plan[2..3],
            ExistingPolicy::Recreate,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(results[0].outcome, Outcome::Updated);
    let log = api.log.lock().unwrap().clone();
    let del = log
        .iter()
        .position(|l| l.starts_with("DELETE"))
        .expect("deleted first");
    let patch = log.iter().position(|l| l.starts_with("PATCH")).unwrap();
    assert!(del < patch, "{log:?}");

    // A dry run's conflicts come from the same lookups.
    let refs: Vec<ObjRef> = plan.iter().map(|i| i.r.clone()).collect();
    let existing = cluster.existing(&refs).await.unwrap();
    assert_eq!(
        existing.len(),
        6,
        "everything but the unserved Widget exists now: {existing:?}"
    );
}

#[tokio::test]
async fn capture_streams_exactly_what_load_and_select_give() {
    let scope = Scope {
        namespaces: vec!["pg".into()],
        ..Default::default()
    };
    let (cluster, _) = fake_cluster(false);
    let all = cluster.load(&["pg".to_string()]).await.unwrap();
    let mut want: Vec<String> = select(&all, &scope, "x")
        .unwrap()
        .iter()
        .map(|e| e.r.display())
        .collect();
    want.sort();

    let (cluster, api) = fake_cluster(false);
    // A channel of one: the capture can only run ahead by one object.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<lifeboat::k8s::source::Exported>(1);
    let consumer = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e.r.display());
        }
        got
    });
    cluster.capture(&scope, tx).await.unwrap();
    let mut got = consumer.await.unwrap();
    got.sort();
    assert_eq!(got, want);
    assert!(api
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.contains("continue=page-2")));
}

#[tokio::test]
async fn a_capture_whose_consumer_stops_ends_instead_of_waiting() {
    let scope = Scope {
        namespaces: vec!["pg".into()],
        ..Default::default()
    };
    let (cluster, _) = fake_cluster(false);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    drop(rx);
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        cluster.capture(&scope, tx),
    )
    .await
    .expect("no hang");
    assert!(matches!(r, Err(lifeboat::k8s::LiveError::Stopped)), "{r:?}");

    let (cluster, _) = fake_cluster(false);
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let bad = Scope {
        namespaces: vec!["ghost".into()],
        ..Default::default()
    };
    let e = cluster.capture(&bad, tx).await.unwrap_err().to_string();
    assert!(e.contains("namespace `ghost` does not exist"), "{e}");
}

#[tokio::test]
async fn a_refused_list_is_recorded_and_the_rest_is_captured() {
    let scope = Scope {
        namespaces: vec!["pg".into()],
        ..Default::default()
    };
    let (cluster, _) = fake_cluster(true);
    let repo = new_repo(Arc::new(MemoryStore::new())).await;
    let mut builder = lifeboat::app::record::BackupBuilder::new(repo.clone(), "partial")
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<lifeboat::k8s::source::Exported>(4);
    let consume = async {
        while let Some(e) = rx.recv().await {
            builder.add(e).await.unwrap();
        }
    };
    let (failures, ()) = tokio::join!(cluster.capture(&scope, tx), consume);
    let failures = failures.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].what, "list secrets in namespace pg");
    assert!(
        failures[0].reason.contains("forbidden"),
        "{}",
        failures[0].reason
    );
    let out = builder
        .finish(&cluster.describe(), Default::default(), failures)
        .await
        .unwrap();
    assert_eq!(out.objects, 7, "everything but the secret");
    let (_, b) = lifeboat::app::record::find_backup(&repo, "partial")
        .await
        .unwrap();
    assert_eq!(b.failures.len(), 1);
    assert!(!b.objects.iter().any(|o| o.kind == "Secret"));
}

/// Resource names resolve through discovery (custom resources by plural and group), and
/// namespace patterns through the cluster's namespaces.
#[tokio::test]
async fn live_filters_resolve_through_discovery() {
    use lifeboat::k8s::source::{NamespaceGlob, ResourceName};
    let (cluster, _) = fake_cluster(false);
    let scope = Scope {
        include_namespaces: NamespaceGlob::parse_list("--include-namespaces", "p*").unwrap(),
        include_types: ResourceName::parse_list(
            "--include-resources",
            "postgresclusters.db.example.com,deployments",
        )
        .unwrap(),
        exclude_types: ResourceName::parse_list("--exclude-resources", "Deployment").unwrap(),
        ..Default::default()
    };
    let scope = cluster.resolve_namespaces(&scope).await.unwrap();
    assert_eq!(scope.namespaces, ["pg"]);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<lifeboat::k8s::source::Exported>(64);
    cluster.capture(&scope, tx).await.unwrap();
    let mut got = Vec::new();
    while let Some(e) = rx.recv().await {
        if e.r.namespace.is_some() {
            got.push(e.r.display());
        }
    }
    assert_eq!(got, ["PostgresCluster/pg/main"]);

    let (cluster, _) = fake_cluster(false);
    let bad = Scope {
        namespaces: vec!["pg".into()],
        include_types: ResourceName::parse_list("--include-resources", "gizmos").unwrap(),
        ..Default::default()
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let e = cluster.capture(&bad, tx).await.unwrap_err().to_string();
    assert!(
        e.contains("`gizmos`") && e.contains("postgresclusters.db.example.com"),
        "{e}"
    );
    let nothing = Scope {
        include_namespaces: NamespaceGlob::parse_list("--include-namespaces", "q*").unwrap(),
        ..Default::default()
    };
    let e = cluster
        .resolve_namespaces(&nothing)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("`q*`") && e.contains("other, pg"), "{e}");
}
