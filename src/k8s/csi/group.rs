//! Group snapshots: takes one namespace's claims and a VolumeGroupSnapshotClass; gives one
//! `VolumeGroupSnapshot` of them, cut at one instant, and the member VolumeSnapshot of each
//! claim. Members are the VolumeSnapshots the snapshot-controller creates for the group
//! (external-snapshotter ≥ 8.2): found by `status.volumeGroupSnapshotName` (or, before the
//! controller has set it, their owner reference to the group) and matched to claims by
//! `spec.source.persistentVolumeClaimName`. Must not read members from the group's own status:
//! `status.pvcVolumeSnapshotRefList` of v1beta1 was removed upstream (external-snapshotter
//! PR #1200), and v1beta2 and v1 have no list of members at all.

use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{json, Value};

use super::claims::GROUP_LABEL;
use super::{api_err, object_name, volume_snapshots, Claim, Csi, CsiSnapshot, GroupSnapshots};
use crate::format::CopyMethod;
use crate::k8s::LiveError;

/// The API group of group snapshots.
pub const GROUP_API: &str = "groupsnapshot.storage.k8s.io";
/// Its versions lifeboat speaks, preferred first: v1 (external-snapshotter 8.7, GA), v1beta2
/// (Kubernetes 1.34, external-snapshotter 8.4), v1beta1 (1.32). The fields lifeboat uses are
/// the same in all three.
pub const GROUP_VERSIONS: [&str; 3] = ["v1", "v1beta2", "v1beta1"];

/// The annotation that marks a cluster's default VolumeGroupSnapshotClass for its driver.
pub const DEFAULT_GROUP_CLASS: &str = "groupsnapshot.storage.kubernetes.io/is-default-class";

/// The default VolumeGroupSnapshotClass of `driver` among listed classes (pure).
pub fn default_group_class(classes: &[Value], driver: &str) -> Option<String> {
    let mut found: Vec<&str> = classes
        .iter()
        .filter(|c| c["driver"] == driver)
        .filter(|c| {
            c.pointer("/metadata/annotations")
                .and_then(|a| a.get(DEFAULT_GROUP_CLASS))
                == Some(&json!("true"))
        })
        .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    found.sort();
    // Two defaults for one driver is ambiguous, as Kubernetes itself treats it: use none.
    (found.len() == 1).then(|| found[0].to_string())
}

/// The members of VolumeGroupSnapshot `group` among a namespace's VolumeSnapshots, by claim:
/// claim name → VolumeSnapshot name (pure).
pub fn group_members(snapshots: &[Value], group: &str) -> BTreeMap<String, String> {
    snapshots
        .iter()
        .filter(|s| {
            s.pointer("/status/volumeGroupSnapshotName")
                .and_then(Value::as_str)
                == Some(group)
                || s.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r["kind"] == "VolumeGroupSnapshot" && r["name"] == group)
                    })
        })
        .filter_map(|s| {
            let claim = s
                .pointer("/spec/source/persistentVolumeClaimName")?
                .as_str()?;
            let name = s.pointer("/metadata/name")?.as_str()?;
            (!claim.is_empty()).then(|| (claim.to_string(), name.to_string()))
        })
        .collect()
}

fn group_snapshot_classes(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP_API, version, "VolumeGroupSnapshotClass"),
        "volumegroupsnapshotclasses",
    )
}

fn group_snapshots(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP_API, version, "VolumeGroupSnapshot"),
        "volumegroupsnapshots",
    )
}

/// A class to take a namespace's claims with, in the version the cluster serves.
pub(super) struct GroupClass {
    pub name: String,
    pub version: &'static str,
}

impl Csi {
    /// The group snapshot version the cluster serves (the first of [`GROUP_VERSIONS`]) and
    /// its VolumeGroupSnapshotClasses; None when it serves neither.
    async fn group_classes(&self) -> Result<Option<(&'static str, Vec<Value>)>, LiveError> {
        for version in GROUP_VERSIONS {
            let api = Api::<DynamicObject>::all_with(
                self.client.clone(),
                &group_snapshot_classes(version),
            );
            match api.list(&Default::default()).await {
                Ok(l) => {
                    let classes = l
                        .items
                        .into_iter()
                        .map(|c| serde_json::to_value(c).expect("serialises"))
                        .collect();
                    return Ok(Some((version, classes)));
                }
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => {
                    return Err(api_err(format!(
                        "list VolumeGroupSnapshotClasses ({GROUP_API}/{version})"
                    ))(e))
                }
            }
        }
        Ok(None)
    }

    /// The VolumeGroupSnapshotClass for one namespace's claims, if they are to be taken as a
    /// group: the named class, or in `auto` the default class of their common driver (none
    /// when the claims have different drivers or the cluster has no group snapshot API).
    pub(super) async fn group_class(
        &self,
        claims: &[&Claim],
    ) -> Result<Option<GroupClass>, LiveError> {
        let auto = match &self.settings.group_snapshots {
            GroupSnapshots::Off => return Ok(None),
            GroupSnapshots::Class(c) => Some(c.clone()),
            GroupSnapshots::Auto => None,
        };
        if auto.is_none() && claims.len() < 2 {
            return Ok(None);
        }
        let Some((version, classes)) = self.group_classes().await? else {
            return match auto {
                Some(class) => Err(LiveError::Volume {
                    what: format!("VolumeGroupSnapshotClass {class} (--group-snapshot-class)"),
                    reason: format!(
                        "the cluster serves no {GROUP_API} API ({}): install the \
                         external-snapshotter's group snapshot CRDs and controller, or use \
                         `--group-snapshot-class auto` or `none`",
                        GROUP_VERSIONS.join(" or ")
                    ),
                }),
                None => Ok(None),
            };
        };
        if let Some(name) = auto {
            let known: Vec<&str> = classes
                .iter()
                .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
                .collect();
            if !known.contains(&name.as_str()) {
                return Err(LiveError::Volume {
                    what: format!("VolumeGroupSnapshotClass {name} (--group-snapshot-class)"),
                    reason: format!(
                        "no such class (the cluster has: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
            return Ok(Some(GroupClass { name, version }));
        }
        let mut drivers = Vec::new();
        for c in claims {
            match self.driver_of(c).await? {
                Some(d) => drivers.push(d),
                None => return Ok(None),
            }
        }
        drivers.dedup();
        if drivers.len() != 1 {
            return Ok(None);
        }
        let class = default_group_class(&classes, &drivers[0]);
        if let Some(class) = &class {
            tracing::info!(
                namespace = %claims[0].namespace,
                class = %class,
                version,
                "taking the claims as one VolumeGroupSnapshot (the driver's default class)"
            );
        }
        Ok(class.map(|name| GroupClass { name, version }))
    }

    /// Takes `mine` (claims of namespace `ns`) as one VolumeGroupSnapshot and waits until it
    /// is cut and the snapshot-controller has made a member VolumeSnapshot for every claim.
    pub(super) async fn group_snapshot(
        &self,
        backup: &str,
        ns: &str,
        class: &GroupClass,
        mine: &[&Claim],
    ) -> Result<Vec<CsiSnapshot>, LiveError> {
        let group = object_name("lifeboat", &[backup, ns]);
        let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), ns);
        // The group selects by label: mark exactly the claims of this backup.
        for c in mine {
            pvcs.patch(
                &c.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {GROUP_LABEL: group}}})),
            )
            .await
            .map_err(api_err(format!(
                "label PersistentVolumeClaim {ns}/{}",
                c.name
            )))?;
        }
        let obj = super::claims::volume_group_snapshot(
            ns,
            &group,
            &format!("{GROUP_API}/{}", class.version),
            &class.name,
            backup,
        );
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            ns,
            &group_snapshots(class.version),
        );
        api.create(&PostParams::default(), &obj)
            .await
            .map_err(api_err(format!("create VolumeGroupSnapshot {ns}/{group}")))?;
        self.watch_until(
            &format!("VolumeGroupSnapshot {ns}/{group}"),
            &api,
            &group,
            |o| {
                super::snapshot_verdict(
                    &serde_json::to_value(o).expect("serialises"),
                    "/status/creationTime",
                )
            },
        )
        .await?;
        let snapshots =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &volume_snapshots());
        let names: Vec<&str> = mine.iter().map(|c| c.name.as_str()).collect();
        let what = format!(
            "the member VolumeSnapshots of VolumeGroupSnapshot {ns}/{group} (claims {})",
            names.join(", ")
        );
        let members = crate::k8s::watch::until(
            &what,
            snapshots,
            volume_snapshots(),
            self.settings.timeout,
            |listed| {
                let listed: Vec<Value> = listed
                    .iter()
                    .map(|s| serde_json::to_value(s.as_ref()).expect("serialises"))
                    .collect();
                let members = group_members(&listed, &group);
                names
                    .iter()
                    .all(|n| members.contains_key(*n))
                    .then_some(members)
            },
        )
        .await?
        .ok_or_else(|| LiveError::Volume {
            what,
            reason: format!("not done within {:?}", self.settings.timeout),
        })?;
        Ok(mine
            .iter()
            .map(|c| CsiSnapshot {
                claim: (*c).clone(),
                snapshot: members[&c.name].clone(),
                method: CopyMethod::CsiGroup,
                group: Some(group.clone()),
            })
            .collect())
    }

    /// Deletes VolumeGroupSnapshot `name` of namespace `ns` (with its members), in whichever
    /// version the cluster serves; failures are logged, not returned.
    pub(super) async fn delete_group(&self, ns: &str, name: &str) {
        for version in GROUP_VERSIONS {
            let api = Api::<DynamicObject>::namespaced_with(
                self.client.clone(),
                ns,
                &group_snapshots(version),
            );
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => return,
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => {
                    tracing::warn!(object = name, "could not remove a VolumeGroupSnapshot: {e}");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_by_the_group_name_or_the_owner_and_matched_by_claim() {
        let snaps = vec![
            // Status set by the snapshot-controller.
            json!({"metadata": {"name": "snapshot-aaa"},
                "spec": {"source": {"persistentVolumeClaimName": "data"}},
                "status": {"volumeGroupSnapshotName": "g"}}),
            // Not yet: only the owner reference.
            json!({"metadata": {"name": "snapshot-bbb",
                    "ownerReferences": [{"kind": "VolumeGroupSnapshot", "name": "g"}]},
                "spec": {"source": {"persistentVolumeClaimName": "logs"}}}),
            // Another group's member, a plain snapshot, a member without a claim.
            json!({"metadata": {"name": "snapshot-ccc"},
                "spec": {"source": {"persistentVolumeClaimName": "data"}},
                "status": {"volumeGroupSnapshotName": "other"}}),
            json!({"metadata": {"name": "plain"},
                "spec": {"source": {"persistentVolumeClaimName": "data"}}}),
            json!({"metadata": {"name": "snapshot-ddd"},
                "spec": {"source": {"persistentVolumeClaimName": ""}},
                "status": {"volumeGroupSnapshotName": "g"}}),
        ];
        let m = group_members(&snaps, "g");
        assert_eq!(
            m,
            BTreeMap::from([
                ("data".to_string(), "snapshot-aaa".to_string()),
                ("logs".to_string(), "snapshot-bbb".to_string())
            ])
        );
        assert!(group_members(&snaps, "none").is_empty());
    }
}
