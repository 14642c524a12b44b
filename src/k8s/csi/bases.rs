//! Changed-block bases: which claims' CSI driver offers a SnapshotMetadata service, the
//! VolumeSnapshot kept per claim as the base of its next delta, and what a mover Job is given
//! to ask the service (see [`crate::volume::cbt`]). Takes a claim and its new snapshot; gives the
//! delta a mover can ask for. Must not keep more than one base per claim: the older one is
//! removed once a newer one is kept.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{json, Value};

use super::{api_err, volume_snapshots, Claim, Csi, CsiSnapshot};
use crate::k8s::LiveError;

pub(super) fn snapshot_contents() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent"),
        "volumesnapshotcontents",
    )
}

fn metadata_services(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cbt.storage.k8s.io", version, "SnapshotMetadataService"),
        "snapshotmetadataservices",
    )
}

/// Where a mover Job's ServiceAccount token for the SnapshotMetadata service is mounted.
pub const CBT_TOKEN_DIR: &str = "/var/run/secrets/lifeboat-cbt";

/// Labels and annotations of a VolumeSnapshot kept as the base of a claim's next delta.
const BASE_OF: &str = "lifeboat.dev/base-of";
const BASE_LABEL: &str = "lifeboat.dev/base-label";
const BASE_GROUP: &str = "lifeboat.dev/base-group";

/// A driver's SnapshotMetadata service, from its `SnapshotMetadataService` object.
#[derive(Debug, Clone)]
pub struct MetadataService {
    pub address: String,
    /// `spec.caCert` as stored: PEM in base64.
    pub ca_cert: String,
    pub audience: String,
}

/// The base of a claim's next delta: the VolumeSnapshot its newest repository snapshot
/// was read from.
#[derive(Debug, Clone)]
pub(super) struct Base {
    pub(super) snapshot: String,
    /// The source label of that repository snapshot.
    pub(super) label: String,
    pub(super) group: Option<String>,
}

/// The value of `lifeboat.dev/base-of` for a claim (label values are short).
fn base_key(c: &Claim) -> String {
    let id = format!("{}/{}", c.namespace, c.name);
    hex::encode(&blake3::hash(id.as_bytes()).as_bytes()[..8])
}

/// What a mover Job needs to ask the SnapshotMetadata service.
pub(super) struct DeltaMount<'a> {
    pub(super) service: &'a MetadataService,
    /// None on a claim's first move: the Job still gets the token, the base is kept after.
    pub(super) base: Option<(String, Base)>,
    pub(super) target: &'a str,
}

impl Csi {
    /// The SnapshotMetadata service of `driver`, if it advertises one.
    pub async fn metadata_service(
        &self,
        driver: &str,
    ) -> Result<Option<MetadataService>, LiveError> {
        for version in ["v1beta1", "v1alpha1"] {
            let api =
                Api::<DynamicObject>::all_with(self.client.clone(), &metadata_services(version));
            let found = match api.get_opt(driver).await {
                Ok(f) => f,
                // The API itself is not there: the cluster has no changed block tracking.
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                Err(e) => return Err(api_err(format!("read SnapshotMetadataService {driver}"))(e)),
            };
            let Some(found) = found else { continue };
            let v = serde_json::to_value(found).expect("serialises");
            let s = |p: &str| {
                v.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let svc = MetadataService {
                address: s("/spec/address"),
                ca_cert: s("/spec/caCert"),
                audience: s("/spec/audience"),
            };
            if svc.address.is_empty() || svc.ca_cert.is_empty() || svc.audience.is_empty() {
                tracing::warn!(driver, "SnapshotMetadataService {driver} lacks an address, caCert or audience: not used");
                return Ok(None);
            }
            return Ok(Some(svc));
        }
        Ok(None)
    }

    /// The delta base kept for a claim, if any.
    async fn base_of(&self, c: &Claim) -> Result<Option<Base>, LiveError> {
        let ns = &c.namespace;
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &volume_snapshots());
        let lp = kube::api::ListParams::default().labels(&format!("{BASE_OF}={}", base_key(c)));
        let list = api
            .list(&lp)
            .await
            .map_err(api_err(format!("list VolumeSnapshots in {ns}")))?;
        let key = base_key(c);
        let mut bases: Vec<Base> = list
            .items
            .into_iter()
            .filter(|o| o.metadata.labels.as_ref().and_then(|l| l.get(BASE_OF)) == Some(&key))
            // A former base being deleted: a group's member waits for its group to go
            // (finalizer `volumesnapshot-in-group-protection`), and is no base any more.
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .filter_map(|o| {
                let a = o.metadata.annotations.clone().unwrap_or_default();
                Some(Base {
                    snapshot: o.metadata.name.clone()?,
                    label: a.get(BASE_LABEL)?.clone(),
                    group: a.get(BASE_GROUP).cloned(),
                })
            })
            .collect();
        // One base per claim; more only after an interrupted switch: use none of them.
        if bases.len() > 1 {
            tracing::warn!(
                claim = %format!("{ns}/{}", c.name),
                bases = bases.len(),
                "more than one VolumeSnapshot is labelled as this claim's delta base: comparing hashes, and the next move keeps one"
            );
        }
        Ok((bases.len() == 1).then(|| bases.remove(0)))
    }

    /// How the service names the base: its CSI snapshot handle (`base_snapshot_id`), from the
    /// base's VolumeSnapshotContent. The external-snapshot-metadata sidecar takes the handle
    /// whichever version of the `SnapshotMetadataService` object it is advertised by (v0.2.0
    /// serves the v1alpha1 object and takes the handle: seen on the test cluster, whose
    /// sidecar answered NotFound to a VolumeSnapshot name).
    async fn base_id(&self, ns: &str, base: &Base) -> Result<Option<String>, LiveError> {
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &volume_snapshots());
        let snap = api.get(&base.snapshot).await.map_err(api_err(format!(
            "read VolumeSnapshot {ns}/{}",
            base.snapshot
        )))?;
        let snap = serde_json::to_value(snap).expect("serialises");
        let Some(content) = snap
            .pointer("/status/boundVolumeSnapshotContentName")
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        let contents = Api::<DynamicObject>::all_with(self.client.clone(), &snapshot_contents());
        let content = contents
            .get(content)
            .await
            .map_err(api_err(format!("read VolumeSnapshotContent {content}")))?;
        let content = serde_json::to_value(content).expect("serialises");
        Ok(content
            .pointer("/status/snapshotHandle")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// The delta a mover can ask for, when the claim's driver has a SnapshotMetadata
    /// service and the mover's ServiceAccount exists; None: compare hashes.
    pub(super) async fn delta_for<'a>(
        &self,
        s: &'a CsiSnapshot,
        svc: &'a MetadataService,
    ) -> Result<Option<DeltaMount<'a>>, LiveError> {
        let ns = &s.claim.namespace;
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), ns);
        let sa = &self.settings.service_account;
        if accounts
            .get_opt(sa)
            .await
            .map_err(api_err(format!("read ServiceAccount {ns}/{sa}")))?
            .is_none()
        {
            tracing::warn!(
                namespace = %ns,
                "the CSI driver offers changed block tracking, but ServiceAccount {ns}/{sa} for the movers is missing (deploy/mover-secret.yaml): comparing hashes"
            );
            return Ok(None);
        }
        let base = match self.base_of(&s.claim).await? {
            Some(b) => self.base_id(ns, &b).await?.map(|id| (id, b)),
            None => None,
        };
        Ok(Some(DeltaMount {
            service: svc,
            base,
            target: &s.snapshot,
        }))
    }

    /// Makes `s` the claim's delta base, labelled with the repository snapshot read from it,
    /// and retires the previous base (and its group, once no base is left in it).
    pub(super) async fn keep_as_base(&self, s: &CsiSnapshot, label: &str, old: Option<Base>) {
        let ns = &s.claim.namespace;
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &volume_snapshots());
        let mut annotations =
            json!({BASE_LABEL: label, "lifeboat.dev/claim": format!("{ns}/{}", s.claim.name)});
        if let Some(g) = &s.group {
            annotations[BASE_GROUP] = json!(g);
        }
        let patch = json!({"metadata": {"labels": {BASE_OF: base_key(&s.claim)}, "annotations": annotations}});
        if let Err(e) = api
            .patch(&s.snapshot, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            // Not kept: the next backup compares hashes; the snapshot goes with the others.
            tracing::warn!(snapshot = %s.snapshot, "could not keep the snapshot as the next delta's base: {e}");
            return;
        }
        self.kept
            .lock()
            .expect("kept")
            .push(format!("{ns}/{}", s.snapshot));
        let Some(old) = old.filter(|o| o.snapshot != s.snapshot) else {
            return;
        };
        self.delete_quietly(api.clone(), &old.snapshot).await;
        if let Some(g) = old.group {
            // The group goes once none of its members is a base still. The old member just
            // deleted is still listed (it waits for its group, finalizer
            // `volumesnapshot-in-group-protection`): being deleted, it does not count. Seen on
            // the test cluster, where groups and old bases piled up otherwise.
            let still = api
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items.iter().any(|o| {
                        o.metadata.deletion_timestamp.is_none()
                            && o.metadata.name.as_deref() != Some(old.snapshot.as_str())
                            && o.metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get(BASE_GROUP))
                                == Some(&g)
                    })
                })
                .unwrap_or(true);
            if !still {
                self.delete_group(ns, &g).await;
            }
        }
    }
}
