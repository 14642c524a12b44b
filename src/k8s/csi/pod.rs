//! The pods of lifeboat's Jobs (mover, restore, verify, standby): takes the placement and
//! confinement of [`PodSettings`] and a Job's container (arguments, devices, volumes); gives
//! the typed `batch/v1` Job, with resource requests and limits, node selector, tolerations
//! and a securityContext that passes Pod Security `restricted` (non-root, no privilege
//! escalation, ALL capabilities dropped, seccomp `RuntimeDefault`, read-only root
//! filesystem with an emptyDir for scratch). Pure: creates nothing. Must not put anything
//! but the Secret's name into the pod (no credentials in the spec).
//!
//! A raw block device (`volumeDevices`) is allowed by `restricted`, but whether a non-root
//! process may open it is the container runtime's choice, not the kubelet's: the kubelet
//! hands the runtime the host's device path with permissions `mrw` and nothing about
//! ownership, and fsGroup is applied to filesystem volumes only. containerd and CRI-O create
//! the device node with the host device's owner (usually `root:disk`, mode 0660) unless
//! `device_ownership_from_security_context = true` in their CRI configuration, which makes
//! it owned by the pod's runAsUser/runAsGroup. So a non-root mover reads and writes a block
//! claim when that option is on, or when it is given the device's group
//! (`--mover-supplemental-group 6` for `disk`); otherwise only as root
//! (`--mover-run-as-user 0`, which leaves `restricted`: `baseline`, or the SCC of
//! `deploy/openshift/scc-mover.yaml`).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretEnvSource,
    SecurityContext, Toleration, Volume, VolumeDevice, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

/// Where a Job's container may write: an emptyDir (the root filesystem is read-only).
pub const SCRATCH_DIR: &str = "/var/cache/lifeboat";

/// The user and group of the lifeboat image (distroless `nonroot`).
pub const NONROOT: i64 = 65532;

/// How lifeboat's Job pods are sized, placed and confined.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    /// `cpu` and `memory` requests (quantities such as `250m`, `256Mi`); None: not set.
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    /// `cpu` and `memory` limits; a namespace with a ResourceQuota on limits needs both.
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    /// `nodeSelector` of the pods.
    pub node_selector: BTreeMap<String, String>,
    /// `tolerations` of the pods.
    pub tolerations: Vec<Toleration>,
    /// `runAsUser`; 0 runs as root, which Pod Security `restricted` refuses.
    pub run_as_user: i64,
    /// `runAsGroup`.
    pub run_as_group: i64,
    /// `fsGroup` (the standby Job's journal filesystem is made writable through it).
    pub fs_group: Option<i64>,
    /// `supplementalGroups`, e.g. the group owning the nodes' block devices.
    pub supplemental_groups: Vec<i64>,
}

impl Default for PodSettings {
    fn default() -> Self {
        PodSettings {
            cpu_request: Some("250m".into()),
            memory_request: Some("256Mi".into()),
            cpu_limit: Some("2".into()),
            memory_limit: Some("2Gi".into()),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            run_as_user: NONROOT,
            run_as_group: NONROOT,
            fs_group: Some(NONROOT),
            supplemental_groups: Vec::new(),
        }
    }
}

/// A toleration from kubectl's taint syntax: `KEY[=VALUE][:EFFECT]` (no value: operator
/// Exists; no effect: all effects), or `:EFFECT` / `*` for every taint (of that effect).
pub fn parse_toleration(s: &str) -> Result<Toleration, String> {
    let s = s.trim();
    let (kv, effect) = match s.rsplit_once(':') {
        Some((kv, e)) => (kv, Some(e)),
        None => (s, None),
    };
    let effect = match effect {
        None => None,
        Some(e @ ("NoSchedule" | "PreferNoSchedule" | "NoExecute")) => Some(e.to_string()),
        Some(e) => {
            return Err(format!(
                "toleration {s:?}: effect {e:?} is not NoSchedule, PreferNoSchedule or NoExecute"
            ))
        }
    };
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    if key.is_empty() && value.is_some() {
        return Err(format!(
            "toleration {s:?}: a value needs a key (KEY=VALUE:EFFECT)"
        ));
    }
    if key.is_empty() && effect.is_none() && kv != "*" {
        return Err(format!("toleration {s:?}: give KEY[=VALUE][:EFFECT]"));
    }
    let key = (!key.is_empty() && key != "*").then(|| key.to_string());
    Ok(Toleration {
        key,
        operator: Some(if value.is_some() { "Equal" } else { "Exists" }.into()),
        value: value.map(str::to_string),
        effect,
        toleration_seconds: None,
    })
}

/// A node selector entry `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: give KEY=VALUE")),
    }
}

/// A resource quantity as Kubernetes writes them (`250m`, `2`, `1.5Gi`, `512M`, `1e3`), or
/// empty for none; anything else is refused here rather than by the API server at the first
/// Job.
pub fn parse_quantity(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(String::new());
    }
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let digits_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    if number_ok && suffix_ok && !t.starts_with('-') {
        Ok(t.to_string())
    } else {
        Err(format!(
            "{s:?} is not a resource quantity: give a number with an optional suffix, e.g. 250m, 2, 512Mi, 2Gi (or \"\" for none)"
        ))
    }
}

/// What one Job runs: one container of the lifeboat image.
pub struct JobPlan {
    pub namespace: String,
    pub name: String,
    pub container: String,
    pub image: String,
    pub args: Vec<String>,
    /// Secret whose keys are the container's environment.
    pub secret: String,
    pub devices: Vec<VolumeDevice>,
    pub mounts: Vec<VolumeMount>,
    pub volumes: Vec<Volume>,
    pub env: Vec<EnvVar>,
    /// ServiceAccount of the pod; None: the namespace's default, without a token.
    pub service_account: Option<String>,
}

fn managed() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "lifeboat".to_string(),
    )])
}

impl PodSettings {
    fn resources(&self) -> ResourceRequirements {
        let pick = |cpu: &Option<String>, memory: &Option<String>| {
            let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), Quantity(v.clone()?))))
                .collect();
            (!m.is_empty()).then_some(m)
        };
        ResourceRequirements {
            requests: pick(&self.cpu_request, &self.memory_request),
            limits: pick(&self.cpu_limit, &self.memory_limit),
            ..Default::default()
        }
    }

    /// The Job of `plan`: run once, never retried, removed an hour after it finished.
    pub fn job(&self, plan: JobPlan) -> Job {
        let mut mounts = plan.mounts;
        mounts.push(VolumeMount {
            name: "scratch".into(),
            mount_path: SCRATCH_DIR.into(),
            ..Default::default()
        });
        let mut volumes = plan.volumes;
        volumes.push(Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        let mut env = vec![
            EnvVar {
                name: "LIFEBOAT_CACHE_DIR".into(),
                value: Some(SCRATCH_DIR.into()),
                ..Default::default()
            },
            EnvVar {
                name: "TMPDIR".into(),
                value: Some(SCRATCH_DIR.into()),
                ..Default::default()
            },
        ];
        env.extend(plan.env);
        let root = self.run_as_user == 0;
        let container = Container {
            name: plan.container,
            image: Some(plan.image),
            args: Some(plan.args),
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: plan.secret,
                    optional: None,
                }),
                ..Default::default()
            }]),
            env: Some(env),
            volume_devices: (!plan.devices.is_empty()).then_some(plan.devices),
            volume_mounts: Some(mounts),
            resources: Some(self.resources()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(!root),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            service_account_name: plan.service_account,
            node_selector: (!self.node_selector.is_empty()).then(|| self.node_selector.clone()),
            tolerations: (!self.tolerations.is_empty()).then(|| self.tolerations.clone()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(!root),
                run_as_user: Some(self.run_as_user),
                run_as_group: Some(self.run_as_group),
                fs_group: self.fs_group,
                fs_group_change_policy: self.fs_group.map(|_| "OnRootMismatch".into()),
                supplemental_groups: (!self.supplemental_groups.is_empty())
                    .then(|| self.supplemental_groups.clone()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        };
        Job {
            metadata: ObjectMeta {
                name: Some(plan.name),
                namespace: Some(plan.namespace),
                labels: Some(managed()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                ttl_seconds_after_finished: Some(3600),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(managed()),
                        ..Default::default()
                    }),
                    spec: Some(pod),
                },
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// A claim as a pod volume.
pub fn claim_volume(name: &str, claim: &str) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(
            k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                read_only: None,
            },
        ),
        ..Default::default()
    }
}

/// A volume as a block device at `path`.
pub fn device(name: &str, path: &str) -> VolumeDevice {
    VolumeDevice {
        name: name.into(),
        device_path: path.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_checked_as_kubernetes_writes_them() {
        for ok in [
            "250m", "2", "1.5Gi", "512Mi", "1e3", "0.5", "100k", "+1", "",
        ] {
            assert!(parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in [
            "2GB", "two", "1.2.3", "Gi", "-1", "1 Gi", "512mi", ".", "1e",
        ] {
            let e = parse_quantity(bad).unwrap_err();
            assert!(e.contains("not a resource quantity"), "{bad}: {e}");
        }
    }

    fn plan() -> JobPlan {
        JobPlan {
            namespace: "ns".into(),
            name: "lifeboat-backup-x".into(),
            container: "mover".into(),
            image: "img".into(),
            args: vec!["volume".into()],
            secret: "lifeboat-repository".into(),
            devices: vec![device("data", "/dev/lifeboat-volume")],
            mounts: vec![],
            volumes: vec![claim_volume("data", "clone")],
            env: vec![],
            service_account: None,
        }
    }

    #[test]
    fn the_default_pod_is_what_pod_security_restricted_asks() {
        let job = PodSettings::default().job(plan());
        let v = serde_json::to_value(&job).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], NONROOT);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(
            c["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"])
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        for k in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                assert!(c["resources"][k][r].is_string(), "{k}.{r}: {c}");
            }
        }
        // The read-only root filesystem leaves the scratch emptyDir to write to.
        assert_eq!(c["volumeMounts"][0]["mountPath"], SCRATCH_DIR);
        assert!(pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "scratch" && v["emptyDir"].is_object()));
        assert_eq!(c["volumeDevices"][0]["devicePath"], "/dev/lifeboat-volume");
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "lifeboat-repository");
        assert_eq!(v["spec"]["backoffLimit"], 0);
        assert_eq!(pod["restartPolicy"], "Never");
        assert!(pod.get("nodeSelector").is_none() && pod.get("tolerations").is_none());
    }

    #[test]
    fn placement_and_root_are_as_asked() {
        let s = PodSettings {
            node_selector: BTreeMap::from([("pool".into(), "backup".into())]),
            tolerations: vec![parse_toleration("dedicated=backup:NoSchedule").unwrap()],
            run_as_user: 0,
            cpu_limit: None,
            memory_limit: None,
            ..Default::default()
        };
        let v = serde_json::to_value(s.job(plan())).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["pool"], "backup");
        assert_eq!(pod["tolerations"][0]["value"], "backup");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], false);
        assert!(pod["containers"][0]["resources"].get("limits").is_none());
    }

    #[test]
    fn tolerations_read_kubectls_taint_syntax() {
        let t = parse_toleration("dedicated=backup:NoSchedule").unwrap();
        assert_eq!(
            (
                t.key.as_deref(),
                t.operator.as_deref(),
                t.value.as_deref(),
                t.effect.as_deref()
            ),
            (
                Some("dedicated"),
                Some("Equal"),
                Some("backup"),
                Some("NoSchedule")
            )
        );
        let t = parse_toleration("gpu").unwrap();
        assert_eq!((t.operator.as_deref(), t.effect), (Some("Exists"), None));
        let t = parse_toleration("*").unwrap();
        assert_eq!((t.key, t.operator.as_deref()), (None, Some("Exists")));
        let t = parse_toleration(":NoExecute").unwrap();
        assert_eq!((t.key, t.effect.as_deref()), (None, Some("NoExecute")));
        assert!(parse_toleration("a=b:Sometimes")
            .unwrap_err()
            .contains("NoSchedule"));
        assert!(parse_toleration("=b:NoSchedule").is_err());
        assert_eq!(parse_label("a=b"), Ok(("a".into(), "b".into())));
        assert!(parse_label("ab").is_err());
    }
}
