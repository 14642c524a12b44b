//! The objects lifeboat creates around volumes, as typed `k8s-openapi` structs: takes names,
//! a claim's shape ([`Claim`]) and the PersistentVolume it is bound to; gives the block-mode
//! clones and empty claims of backup and restore, the standby journal claim, a second
//! PersistentVolume on the same CSI volume handle (another mode, another reclaim policy,
//! pre-bound to a new claim) and the claim bound to it, the VolumeSnapshot of a claim, and the
//! Namespace and movers' Secret of a namespace lifeboat creates. Pure: creates nothing and
//! reads nothing; `Csi` does that. Must not carry anything from an old object that binds it
//! elsewhere (`status`, `uid`, `resourceVersion`, the old `claimRef`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    Secret, TypedLocalObjectReference, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DynamicObject, ObjectMeta};
use serde::Serialize;

use super::Claim;

/// The label every object lifeboat creates carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "lifeboat");

/// A claim's `volumeMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimMode {
    Block,
    /// Also what an unset `volumeMode` means.
    Filesystem,
}

impl ClaimMode {
    /// The mode of a `spec.volumeMode` (unset: Filesystem, as Kubernetes defaults it).
    pub fn of(v: Option<&str>) -> ClaimMode {
        match v {
            Some("Block") => ClaimMode::Block,
            _ => ClaimMode::Filesystem,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimMode::Block => "Block",
            ClaimMode::Filesystem => "Filesystem",
        }
    }
}

/// The labels of an object lifeboat creates: `managed-by`, and `extra`.
fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    std::iter::once(MANAGED_BY)
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn meta(ns: Option<&str>, name: &str, extra: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        labels: Some(labels(extra)),
        ..Default::default()
    }
}

fn storage(size: &str) -> VolumeResourceRequirements {
    VolumeResourceRequirements {
        requests: Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity(size.to_string()),
        )])),
        ..Default::default()
    }
}

/// A ReadWriteOnce block-mode claim `ns/name` of `like`'s class and size: a clone of
/// VolumeSnapshot `snapshot` (backup), or empty (restore).
pub fn block_claim(
    ns: &str,
    name: &str,
    like: &Claim,
    snapshot: Option<&str>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            volume_mode: Some(ClaimMode::Block.as_str().into()),
            resources: Some(storage(&like.size)),
            storage_class_name: like.storage_class.clone(),
            data_source: snapshot.map(|s| TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".into()),
                kind: "VolumeSnapshot".into(),
                name: s.to_string(),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The standby journal claim `ns/name`: filesystem mode, `mib` MiB, the default class.
pub fn journal_claim(ns: &str, name: &str, mib: u64) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            volume_mode: Some(ClaimMode::Filesystem.as_str().into()),
            resources: Some(storage(&format!("{mib}Mi"))),
            ..Default::default()
        }),
        status: None,
    }
}

/// A backed-up claim made ready to be created again as `ns/name`: its labels, annotations
/// and spec kept, without what bound it to its old volume or filled it (`volumeName`,
/// `dataSource`, `dataSourceRef`) and without its status or server-set metadata.
pub fn claim_again(mut pvc: PersistentVolumeClaim, ns: &str, name: &str) -> PersistentVolumeClaim {
    pvc.metadata = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: pvc.metadata.labels.take(),
        annotations: pvc.metadata.annotations.take(),
        ..Default::default()
    };
    if let Some(spec) = pvc.spec.as_mut() {
        spec.volume_name = None;
        spec.data_source = None;
        spec.data_source_ref = None;
    }
    pvc.status = None;
    pvc
}

/// A second PersistentVolume `name` on the CSI volume of `pv`: in `mode`, with `reclaim`
/// (`Retain` or `Delete`), pre-bound to claim `claim_ns/claim` (a claim that [`bound_claim`]
/// makes). Only the spec is taken from `pv`; the metadata is new.
pub fn second_volume(
    pv: &PersistentVolume,
    name: &str,
    mode: ClaimMode,
    reclaim: &str,
    claim_ns: &str,
    claim: &str,
) -> PersistentVolume {
    let mut spec = pv.spec.clone().unwrap_or_default();
    spec.volume_mode = Some(mode.as_str().into());
    spec.persistent_volume_reclaim_policy = Some(reclaim.into());
    spec.claim_ref = Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(claim_ns.into()),
        name: Some(claim.into()),
        ..Default::default()
    });
    PersistentVolume {
        metadata: meta(None, name, &[]),
        spec: Some(spec),
        status: None,
    }
}

/// Claim `ns/name` bound to PersistentVolume `pv` (as [`second_volume`] made it): its access
/// modes, mode, class and capacity.
pub fn bound_claim(ns: &str, name: &str, pv: &PersistentVolume) -> PersistentVolumeClaim {
    let spec = pv.spec.clone().unwrap_or_default();
    let capacity = spec
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_default();
    PersistentVolumeClaim {
        metadata: meta(Some(ns), name, &[]),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: spec.access_modes,
            volume_mode: spec.volume_mode,
            volume_name: pv.metadata.name.clone(),
            storage_class_name: spec.storage_class_name,
            resources: Some(storage(&capacity)),
            ..Default::default()
        }),
        status: None,
    }
}

/// A namespace lifeboat creates (a restore's or a standby's target).
pub fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: meta(None, name, &[]),
        ..Default::default()
    }
}

/// The movers' Secret `ns/name` with the repository settings `data`.
pub fn movers_secret(ns: &str, name: &str, data: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta(Some(ns), name, &[]),
        type_: Some("Opaque".into()),
        string_data: Some(data.clone()),
        ..Default::default()
    }
}

/// `spec` of a VolumeSnapshot (snapshot.storage.k8s.io/v1), the part lifeboat sets.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeSnapshotSpec<'a> {
    source: VolumeSnapshotSource<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume_snapshot_class_name: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeSnapshotSource<'a> {
    persistent_volume_claim_name: &'a str,
}

/// A VolumeSnapshot `ns/name` of claim `claim` for `backup`, in `class` (None: the driver's
/// default class).
pub fn volume_snapshot(
    ns: &str,
    name: &str,
    claim: &str,
    class: Option<&str>,
    backup: &str,
) -> DynamicObject {
    let spec = VolumeSnapshotSpec {
        source: VolumeSnapshotSource {
            persistent_volume_claim_name: claim,
        },
        volume_snapshot_class_name: class,
    };
    DynamicObject {
        types: Some(kube::api::TypeMeta {
            api_version: "snapshot.storage.k8s.io/v1".into(),
            kind: "VolumeSnapshot".into(),
        }),
        metadata: meta(Some(ns), name, &[("lifeboat.dev/backup", backup)]),
        data: serde_json::json!({ "spec": spec }),
    }
}

/// `spec` of a VolumeGroupSnapshot (groupsnapshot.storage.k8s.io), the part lifeboat sets:
/// its class, and the claims it takes by label.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VolumeGroupSnapshotSpec<'a> {
    volume_group_snapshot_class_name: &'a str,
    source: GroupSource,
}

#[derive(Debug, Serialize)]
struct GroupSource {
    selector: LabelSelector,
}

/// The label a VolumeGroupSnapshot selects its claims by (value: the group's name).
pub const GROUP_LABEL: &str = "lifeboat.dev/group";

/// A VolumeGroupSnapshot `ns/name` (API version `api_version`, e.g.
/// `groupsnapshot.storage.k8s.io/v1beta2`) in class `class` of the claims labelled
/// [`GROUP_LABEL`]` = name`, for `backup`.
pub fn volume_group_snapshot(
    ns: &str,
    name: &str,
    api_version: &str,
    class: &str,
    backup: &str,
) -> DynamicObject {
    let spec = VolumeGroupSnapshotSpec {
        volume_group_snapshot_class_name: class,
        source: GroupSource {
            selector: LabelSelector {
                match_labels: Some(BTreeMap::from([(GROUP_LABEL.into(), name.into())])),
                ..Default::default()
            },
        },
    };
    DynamicObject {
        types: Some(kube::api::TypeMeta {
            api_version: api_version.into(),
            kind: "VolumeGroupSnapshot".into(),
        }),
        metadata: meta(Some(ns), name, &[("lifeboat.dev/backup", backup)]),
        data: serde_json::json!({ "spec": spec }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn like(mode: &str) -> Claim {
        Claim {
            namespace: "app".into(),
            name: "data".into(),
            storage_class: Some("fast".into()),
            size: "2Gi".into(),
            volume_mode: ClaimMode::of(Some(mode)),
            volume: Some("pv-1".into()),
        }
    }

    fn v<T: Serialize>(o: &T) -> Value {
        serde_json::to_value(o).unwrap()
    }

    #[test]
    fn a_block_clone_names_its_snapshot_and_an_empty_claim_has_no_source() {
        let c = v(&block_claim(
            "app",
            "lifeboat-x",
            &like("Filesystem"),
            Some("snap"),
        ));
        assert_eq!(
            c["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "lifeboat"
        );
        assert_eq!(
            c["spec"],
            json!({"accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                "resources": {"requests": {"storage": "2Gi"}}, "storageClassName": "fast",
                "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}})
        );
        let e = v(&block_claim("app", "lifeboat-y", &like("Block"), None));
        assert!(e["spec"].get("dataSource").is_none(), "{e}");
        let j = v(&journal_claim("dr", "lifeboat-journal", 1024));
        assert_eq!(j["spec"]["resources"]["requests"]["storage"], "1024Mi");
        assert_eq!(j["spec"]["volumeMode"], "Filesystem");
    }

    #[test]
    fn a_claim_made_again_keeps_its_spec_but_nothing_that_binds_or_fills_it() {
        let old: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "prod", "uid": "u", "resourceVersion": "7",
                "labels": {"app": "db"}, "annotations": {"a": "b"}},
            "spec": {"volumeName": "pv-old", "volumeMode": "Block", "storageClassName": "fast",
                "dataSource": {"kind": "VolumeSnapshot", "name": "s"},
                "dataSourceRef": {"kind": "VolumeSnapshot", "name": "s"},
                "resources": {"requests": {"storage": "1Gi"}}},
            "status": {"phase": "Bound"}}))
        .unwrap();
        let c = v(&claim_again(old, "staging", "data2"));
        assert_eq!(
            c["metadata"],
            json!({"name": "data2", "namespace": "staging",
                "labels": {"app": "db"}, "annotations": {"a": "b"}})
        );
        assert_eq!(
            c["spec"],
            json!({"volumeMode": "Block", "storageClassName": "fast",
                "resources": {"requests": {"storage": "1Gi"}}})
        );
        assert!(c.get("status").is_none(), "{c}");
    }

    #[test]
    fn a_second_volume_keeps_the_handle_and_binds_only_the_new_claim() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv-1", "uid": "u", "finalizers": ["kubernetes.io/pv-protection"]},
            "spec": {"csi": {"driver": "hostpath.csi.k8s.io", "volumeHandle": "h-1"},
                "capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "fast", "volumeMode": "Filesystem",
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": "app", "name": "data", "uid": "old"}},
            "status": {"phase": "Bound"}}))
        .unwrap();
        let raw = second_volume(&pv, "raw-pv", ClaimMode::Block, "Retain", "app", "raw");
        let r = v(&raw);
        assert_eq!(
            r["metadata"],
            json!({"name": "raw-pv", "labels": {"app.kubernetes.io/managed-by": "lifeboat"}})
        );
        assert_eq!(r["spec"]["csi"]["volumeHandle"], "h-1");
        assert_eq!(r["spec"]["volumeMode"], "Block");
        assert_eq!(r["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(
            r["spec"]["claimRef"],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "app", "name": "raw"})
        );
        assert!(r.get("status").is_none());
        let c = v(&bound_claim("app", "raw", &raw));
        assert_eq!(
            c["spec"],
            json!({"accessModes": ["ReadWriteOnce"], "volumeMode": "Block", "volumeName": "raw-pv",
                "storageClassName": "fast", "resources": {"requests": {"storage": "2Gi"}}})
        );
    }

    #[test]
    fn a_volume_snapshot_names_its_claim_and_class_only_when_given() {
        let s = v(&volume_snapshot("app", "lifeboat-s", "data", None, "b1"));
        assert_eq!(s["apiVersion"], "snapshot.storage.k8s.io/v1");
        assert_eq!(s["kind"], "VolumeSnapshot");
        assert_eq!(s["metadata"]["labels"]["lifeboat.dev/backup"], "b1");
        assert_eq!(
            s["spec"],
            json!({"source": {"persistentVolumeClaimName": "data"}})
        );
        let s = v(&volume_snapshot(
            "app",
            "lifeboat-s",
            "data",
            Some("csi"),
            "b1",
        ));
        assert_eq!(s["spec"]["volumeSnapshotClassName"], "csi");
        let g = v(&volume_group_snapshot(
            "app",
            "g1",
            "groupsnapshot.storage.k8s.io/v1beta2",
            "cls",
            "b1",
        ));
        assert_eq!(g["apiVersion"], "groupsnapshot.storage.k8s.io/v1beta2");
        assert_eq!(
            g["spec"],
            json!({"volumeGroupSnapshotClassName": "cls",
                "source": {"selector": {"matchLabels": {"lifeboat.dev/group": "g1"}}}})
        );
        let sec = v(&movers_secret(
            "dr",
            "lifeboat-mover",
            &BTreeMap::from([("K".into(), "V".into())]),
        ));
        assert_eq!(sec["stringData"], json!({"K": "V"}));
        assert_eq!(sec["type"], "Opaque");
        assert_eq!(
            v(&namespace("dr"))["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "lifeboat"
        );
        assert_eq!(ClaimMode::of(None), ClaimMode::Filesystem);
        assert_eq!(ClaimMode::of(Some("Block")).as_str(), "Block");
    }
}
