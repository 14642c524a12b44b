//! A live cluster through the Kubernetes API (`kube`): takes a kubeconfig context (or the
//! in-cluster configuration) and namespaces; gives the objects a backup may capture, as
//! [`Exported`] values that [`crate::cluster::select`] then scopes exactly as it does for a
//! cluster directory. API discovery finds every resource type the server serves, built-in and
//! custom; lists are paginated. Must not write to the cluster (applying comes with the restore
//! path through the API).

use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{verbs, ApiResource, Discovery, Scope};
use kube::Client;
use serde_json::Value;

use crate::cluster::Exported;
use crate::resources::ObjRef;

/// Cluster-scoped kinds a backup of namespaces may need (see [`crate::cluster::select`]).
const CLUSTER_KINDS: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Namespaced kinds not worth capturing: many, short-lived, and never restored.
const NOT_CAPTURED: &[&str] = &["Event"];

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("cannot load the Kubernetes configuration{}: {reason}", context.as_deref().map(|c| format!(" for context `{c}`")).unwrap_or_default())]
    Config {
        context: Option<String>,
        reason: String,
    },
    #[error("the API server refused to {what}: {source}")]
    Api { what: String, source: kube::Error },
}

impl LiveError {
    /// Throttling, server errors and connection failures are worth retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            LiveError::Api {
                source: kube::Error::Api(s),
                ..
            } => s.code == 429 || s.code >= 500,
            LiveError::Api {
                source: kube::Error::HyperError(_) | kube::Error::Service(_),
                ..
            } => true,
            _ => false,
        }
    }
}

pub struct LiveCluster {
    client: Client,
    name: String,
    page_size: u32,
}

impl LiveCluster {
    /// Connects with a kubeconfig context (or the current context, or in-cluster config).
    pub async fn connect(context: Option<&str>) -> Result<LiveCluster, LiveError> {
        let cfg_err = |reason: String| LiveError::Config {
            context: context.map(str::to_string),
            reason,
        };
        let config = match context {
            Some(ctx) => {
                let kubeconfig = Kubeconfig::read().map_err(|e| cfg_err(e.to_string()))?;
                let opts = KubeConfigOptions {
                    context: Some(ctx.to_string()),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kubeconfig, &opts)
                    .await
                    .map_err(|e| cfg_err(e.to_string()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| cfg_err(e.to_string()))?,
        };
        let client = Client::try_from(config).map_err(|e| cfg_err(e.to_string()))?;
        Ok(LiveCluster::from_client(
            client,
            context.unwrap_or("current-context"),
        ))
    }

    /// A cluster behind an existing client (tests use a mocked API).
    pub fn from_client(client: Client, name: &str) -> LiveCluster {
        LiveCluster {
            client,
            name: name.to_string(),
            page_size: 500,
        }
    }

    /// Objects per list call.
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.max(1);
        self
    }

    pub fn describe(&self) -> String {
        format!("context:{}", self.name)
    }

    /// Every object of `namespaces`, of every listable namespaced type the server serves, plus
    /// the cluster-scoped objects of the kinds a backup may need.
    pub async fn load(&self, namespaces: &[String]) -> Result<Vec<Exported>, LiveError> {
        let discovery = Discovery::new(self.client.clone())
            .run()
            .await
            .map_err(|source| LiveError::Api {
                what: "serve API discovery".into(),
                source,
            })?;
        let mut out = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if !caps.supports_operation(verbs::LIST) || NOT_CAPTURED.contains(&ar.kind.as_str())
                {
                    continue;
                }
                match caps.scope {
                    Scope::Namespaced => {
                        for ns in namespaces {
                            let api: Api<DynamicObject> =
                                Api::namespaced_with(self.client.clone(), ns, &ar);
                            self.list_all(&api, &ar, Some(ns), &mut out).await?;
                        }
                    }
                    Scope::Cluster if CLUSTER_KINDS.contains(&ar.kind.as_str()) => {
                        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
                        self.list_all(&api, &ar, None, &mut out).await?;
                    }
                    Scope::Cluster => {}
                }
            }
        }
        Ok(out)
    }

    async fn list_all(
        &self,
        api: &Api<DynamicObject>,
        ar: &ApiResource,
        namespace: Option<&str>,
        out: &mut Vec<Exported>,
    ) -> Result<(), LiveError> {
        let what = || match namespace {
            Some(ns) => format!("list {} in namespace {ns}", ar.plural),
            None => format!("list {}", ar.plural),
        };
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().limit(self.page_size);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = api.list(&lp).await.map_err(|source| LiveError::Api {
                what: what(),
                source,
            })?;
            for obj in page.items {
                let mut v = serde_json::to_value(&obj).expect("a listed object serialises");
                // List items come without their type; put it back, as `kubectl get -o yaml` does.
                if let Some(m) = v.as_object_mut() {
                    m.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
                    m.insert("kind".into(), Value::String(ar.kind.clone()));
                }
                let origin = format!("{} {}", self.describe(), what());
                let r = ObjRef::of(&v, &origin).map_err(|e| LiveError::Api {
                    what: what(),
                    source: kube::Error::Service(e.to_string().into()),
                })?;
                out.push(Exported {
                    r,
                    value: v,
                    origin,
                });
            }
            match page.metadata.continue_ {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(()),
            }
        }
    }
}
