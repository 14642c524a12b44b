//! The claims of a live standby site: takes the claims standby wrote (annotated with the
//! snapshot they hold) and a newer backup's snapshots; gives the claims moved to them in
//! place by one standby Job per namespace (`lifeboat standby apply-devices`, see
//! [`crate::standby::apply_devices`]), with the namespace's journal claim. Must not touch a
//! claim standby did not write, nor start when the journal claim is too small for the
//! backup's changed blocks.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use super::claims::{bound_claim, second_volume, ClaimMode};
use super::{api_err, object_name, Csi};
use crate::format::standby::VolumeMode;
use crate::k8s::LiveError;

/// On a standby site: the repository snapshot a claim's data is (set by standby when it wrote
/// the claim, removed by `activate`, after which the application changes the data).
pub const STANDBY_SNAPSHOT: &str = "lifeboat.dev/standby-snapshot";
/// The claim a standby site's journals, records and commit marker live on, per namespace.
pub const JOURNAL_CLAIM: &str = "lifeboat-standby-journal";
/// Where the standby Job mounts it.
pub const JOURNAL_DIR: &str = "/var/lib/lifeboat-standby";

/// What the standby Job reports for one claim (its termination message, kept short: the
/// kubelet keeps 4 KiB of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedClaim {
    pub pvc: String,
    pub mode: VolumeMode,
    pub blocks_changed: u64,
    /// `bytes_fetched` before the JSON vocabulary was unified: a Job of the previous image,
    /// still running across an upgrade, reports it so.
    #[serde(alias = "bytes_fetched")]
    pub fetched_bytes: u64,
    #[serde(alias = "bytes_written")]
    pub written_bytes: u64,
}

/// What `verify_restored` reads.
pub enum VerifyTarget<'a> {
    /// A block-mode claim.
    Claim(&'a str),
    /// A PersistentVolume whose filesystem-mode claim `for_claim` is not applied yet.
    Volume { pv: &'a str, for_claim: &'a str },
}

/// A claim of a standby site to move to a newer snapshot.
#[derive(Debug, Clone)]
pub struct StandbyClaim {
    pub name: String,
    pub snapshot: String,
    /// What its annotation says it holds; None: unknown, written whole.
    pub base: Option<String>,
}

/// Bytes of a Kubernetes quantity (`10Gi`, `500M`, `1073741824`); None if malformed.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let n: u64 = q[..split].parse().ok()?;
    let mult: u64 = match &q[split..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Csi {
    /// A claim of the site, if it exists.
    pub async fn site_claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, LiveError> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(api_err(format!("read PersistentVolumeClaim {ns}/{name}")))
    }

    /// Records on a claim the repository snapshot its data is (None: removes the record).
    pub async fn mark_claim(
        &self,
        ns: &str,
        name: &str,
        snapshot: Option<&str>,
    ) -> Result<(), LiveError> {
        Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {STANDBY_SNAPSHOT: snapshot}}})),
            )
            .await
            .map_err(api_err(format!(
                "annotate PersistentVolumeClaim {ns}/{name}"
            )))?;
        Ok(())
    }

    async fn list_claims(&self, ns: &str) -> Result<Vec<PersistentVolumeClaim>, LiveError> {
        Ok(
            Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                .list(&Default::default())
                .await
                .map_err(api_err(format!("list PersistentVolumeClaims in {ns}")))?
                .items,
        )
    }

    /// The claims of `ns` that carry a standby snapshot annotation.
    pub async fn annotated_claims(&self, ns: &str) -> Result<Vec<String>, LiveError> {
        Ok(self
            .list_claims(ns)
            .await?
            .into_iter()
            .filter(|c| {
                c.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(STANDBY_SNAPSHOT))
            })
            .filter_map(|c| c.metadata.name)
            .collect())
    }

    /// The claims of `ns` (the journal claim and lifeboat's own views aside).
    pub async fn claims_of_namespace(&self, ns: &str) -> Result<Vec<String>, LiveError> {
        Ok(self
            .list_claims(ns)
            .await?
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .filter(|n| n != JOURNAL_CLAIM && !n.starts_with("lifeboat-"))
            .collect())
    }

    /// Removes the journal claim of `ns`, if any.
    pub async fn remove_journal_claim(&self, ns: &str) -> Result<(), LiveError> {
        if self.site_claim(ns, JOURNAL_CLAIM).await?.is_some() {
            Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                .delete(JOURNAL_CLAIM, &DeleteParams::default())
                .await
                .map_err(api_err(format!(
                    "delete PersistentVolumeClaim {ns}/{JOURNAL_CLAIM}"
                )))?;
        }
        Ok(())
    }

    /// The journal claim of namespace `ns`, made to hold at least `needed` bytes.
    async fn journal_claim(&self, ns: &str, needed: u64) -> Result<(), LiveError> {
        let want = (needed + needed / 4 + (64 << 20))
            .max(1 << 30)
            .div_ceil(1 << 20);
        match self.site_claim(ns, JOURNAL_CLAIM).await? {
            Some(c) => {
                let v = serde_json::to_value(&c).expect("serialises");
                let have = v
                    .pointer("/status/capacity/storage")
                    .or_else(|| v.pointer("/spec/resources/requests/storage"))
                    .and_then(Value::as_str)
                    .and_then(quantity_bytes)
                    .unwrap_or(0);
                if have < needed + needed / 8 {
                    return Err(LiveError::Volume {
                        what: format!("PersistentVolumeClaim {ns}/{JOURNAL_CLAIM}"),
                        reason: format!(
                            "holds {have} bytes, and this backup's changed blocks need about {needed}; expand it: kubectl -n {ns} patch pvc {JOURNAL_CLAIM} -p '{{\"spec\":{{\"resources\":{{\"requests\":{{\"storage\":\"{want}Mi\"}}}}}}}}' (nothing was changed on the site)"
                        ),
                    });
                }
                Ok(())
            }
            None => {
                let pvc = super::claims::journal_claim(ns, JOURNAL_CLAIM, want);
                Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
                    .create(&PostParams::default(), &pvc)
                    .await
                    .map_err(api_err(format!(
                        "create PersistentVolumeClaim {ns}/{JOURNAL_CLAIM}"
                    )))?;
                Ok(())
            }
        }
    }

    /// A block-mode claim on the volume of filesystem-mode claim `name` (held: nothing
    /// mounts it): a second PersistentVolume on the same CSI handle, retained, pre-bound to a
    /// new claim. Returns (raw claim, raw volume).
    async fn raw_claim(&self, ns: &str, name: &str) -> Result<(String, String), LiveError> {
        let pv_name = self.volume_of(ns, name).await?;
        self.raw_view(ns, &pv_name, name).await
    }

    async fn volume_of(&self, ns: &str, name: &str) -> Result<String, LiveError> {
        let claim = self
            .site_claim(ns, name)
            .await?
            .ok_or_else(|| LiveError::Volume {
                what: format!("PersistentVolumeClaim {ns}/{name}"),
                reason: "is gone".into(),
            })?;
        let pv_name = claim
            .spec
            .and_then(|s| s.volume_name)
            .ok_or_else(|| LiveError::Volume {
                what: format!("PersistentVolumeClaim {ns}/{name}"),
                reason: "is not bound to a volume".into(),
            })?;
        Ok(pv_name)
    }

    /// A block-mode claim on PersistentVolume `pv_name` (see [`Csi::raw_claim`]), named
    /// after `name`. Returns (raw claim, raw volume).
    async fn raw_view(
        &self,
        ns: &str,
        pv_name: &str,
        name: &str,
    ) -> Result<(String, String), LiveError> {
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = pvs
            .get(pv_name)
            .await
            .map_err(api_err(format!("read PersistentVolume {pv_name}")))?;
        let raw_claim = object_name("lifeboat-raw", &[ns, name]);
        let raw_pv = object_name("lifeboat-raw-pv", &[ns, name]);
        // Retained: removing this second object must never delete the volume.
        let raw = second_volume(&pv, &raw_pv, ClaimMode::Block, "Retain", ns, &raw_claim);
        pvs.create(&PostParams::default(), &raw)
            .await
            .map_err(api_err(format!("create PersistentVolume {raw_pv}")))?;
        let pvc = bound_claim(ns, &raw_claim, &raw);
        if let Err(e) = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns)
            .create(&PostParams::default(), &pvc)
            .await
        {
            self.delete_quietly(pvs, &raw_pv).await;
            return Err(api_err(format!(
                "create PersistentVolumeClaim {ns}/{raw_claim}"
            ))(e));
        }
        Ok((raw_claim, raw_pv))
    }

    /// Removes a block-mode view (its claim, then its retained volume object; the volume
    /// itself stays with the claim it belongs to).
    async fn remove_raw_view(&self, ns: &str, raw: &str, raw_pv: &str) {
        self.delete_quietly(
            Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), ns),
            raw,
        )
        .await;
        self.delete_quietly(Api::<PersistentVolume>::all(self.client.clone()), raw_pv)
            .await;
    }

    /// Checks a restored volume against its snapshot with `lifeboat volume verify` in a Job
    /// of `ns`: a block-mode claim directly, or a volume (a filesystem-mode claim's, before
    /// the claim is applied) through a block-mode view. Returns (verified, blocks verified).
    pub async fn verify_restored(
        &self,
        ns: &str,
        target: VerifyTarget<'_>,
        snapshot: &str,
    ) -> Result<(bool, u64), LiveError> {
        let (claim, raw) = match target {
            VerifyTarget::Claim(c) => (c.to_string(), None),
            VerifyTarget::Volume { pv, for_claim } => {
                let (raw, raw_pv) = self.raw_view(ns, pv, for_claim).await?;
                (raw.clone(), Some((raw, raw_pv)))
            }
        };
        let job = object_name("lifeboat-verify", &[ns, &claim, snapshot]);
        let result = self
            .run_mover(
                ns,
                &job,
                &claim,
                vec![
                    "volume".into(),
                    "verify".into(),
                    snapshot.into(),
                    "/dev/lifeboat-volume".into(),
                    "--report-file".into(),
                    "/dev/termination-log".into(),
                ],
                None,
            )
            .await;
        if let Some((raw, raw_pv)) = raw {
            self.remove_raw_view(ns, &raw, &raw_pv).await;
        }
        let message = result?;
        let v: Value = serde_json::from_str(message.trim()).map_err(|e| LiveError::Volume {
            what: format!("Job {ns}/{job}"),
            reason: format!("its report does not parse ({e}): {message}"),
        })?;
        Ok((
            v["verified"].as_bool().unwrap_or(false),
            v["blocks_verified"].as_u64().unwrap_or(0),
        ))
    }

    /// Moves existing claims of a standby site to a backup's snapshots, together: one Job with
    /// every claim as a block device (a filesystem-mode claim through a block-mode view of its
    /// volume) and the namespace's journal claim, running `lifeboat standby apply-devices`.
    /// On success each claim's annotation names its new snapshot. `journal_bytes`: what the
    /// journals will take.
    pub async fn update_claims(
        &self,
        ns: &str,
        backup: &str,
        claims: &[StandbyClaim],
        journal_bytes: u64,
    ) -> Result<Vec<AppliedClaim>, LiveError> {
        self.prepare_namespace(ns).await?;
        self.journal_claim(ns, journal_bytes).await?;
        let mut devices = Vec::new();
        let mut raws = Vec::new();
        let mut result = Ok(Vec::new());
        for c in claims {
            let Some(claim) = self.site_claim(ns, &c.name).await? else {
                result = Err(LiveError::Volume {
                    what: format!("PersistentVolumeClaim {ns}/{}", c.name),
                    reason: "is gone".into(),
                });
                break;
            };
            let block = ClaimMode::of(claim.spec.and_then(|s| s.volume_mode).as_deref())
                == ClaimMode::Block;
            if block {
                devices.push(c.name.clone());
                continue;
            }
            match self.raw_claim(ns, &c.name).await {
                Ok((raw, pv)) => {
                    devices.push(raw.clone());
                    raws.push((raw, pv));
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let job = object_name("lifeboat-standby", &[ns, backup]);
            let mut args = vec![
                "standby".to_string(),
                "apply-devices".into(),
                "--journal-dir".into(),
                JOURNAL_DIR.into(),
                "--backup".into(),
                backup.into(),
                "--report-file".into(),
                "/dev/termination-log".into(),
            ];
            let mut pod_devices = Vec::new();
            let mut volumes = vec![super::pod::claim_volume("journal", JOURNAL_CLAIM)];
            for (i, (c, dev)) in claims.iter().zip(&devices).enumerate() {
                let path = format!("/dev/lifeboat-{i}");
                // A claim without a known base is written whole.
                let spec = format!(
                    "{}={path}={}={}",
                    c.name,
                    c.snapshot,
                    c.base.as_deref().unwrap_or("whole")
                );
                args.extend(["--volume".into(), spec]);
                pod_devices.push(super::pod::device(&format!("v{i}"), &path));
                volumes.push(super::pod::claim_volume(&format!("v{i}"), dev));
            }
            let mut plan = self.job_plan(ns, &job, "standby", pod_devices, volumes);
            plan.args = args;
            plan.mounts.push(k8s_openapi::api::core::v1::VolumeMount {
                name: "journal".into(),
                mount_path: JOURNAL_DIR.into(),
                ..Default::default()
            });
            let spec = self.settings.pod.job(plan);
            result = self.run_job(ns, &job, spec).await.map(|message| {
                serde_json::from_str::<Vec<AppliedClaim>>(message.trim()).unwrap_or_else(|e| {
                    tracing::warn!(job = %job, "the standby Job's report does not parse: {e}");
                    Vec::new()
                })
            });
        }
        for (raw, pv) in raws {
            self.remove_raw_view(ns, &raw, &pv).await;
        }
        let applied = result?;
        for c in claims {
            self.mark_claim(ns, &c.name, Some(&c.snapshot)).await?;
        }
        Ok(applied)
    }
}
