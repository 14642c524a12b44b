//! The live-cluster source through `kube`'s client over a mocked API server (tower-test), kept
//! only for what a real API server does not show on demand: a 403 on one list among many
//! (lifeboat's account reads every type), a capture whose consumer goes away mid-stream, and
//! exactly which requests a capture makes. Discovery, paging, server-side apply and the
//! restore policies are tested against the real clusters in `cluster::capture` and
//! `cluster::restore`.

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
