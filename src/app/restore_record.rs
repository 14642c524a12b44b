//! Restore records: takes a restore request, when it ran and what it gave (a report or an
//! error); gives the record of it ([`RestoreRecord::new`], pure): which backup, the target,
//! the mappings and filters given, the outcome, the counts and each object's result. Its
//! states are enums stored by name. Must not do IO: the caller keeps the record (the local
//! catalog), and a restore never fails because its record could not be kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::app::record::AppBackupError;
use crate::app::restore::{Destination, RestoreMode, RestoreReport, RestoreRequest};
use crate::k8s::source::Outcome;

/// A restore's id: the backup's name and the UTC start to the second
/// (`pg-nightly-20260102T030405`), with `-2`, `-3`... for restores of one backup started in
/// the same second.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct RestoreId(pub String);

impl RestoreId {
    pub fn new(backup: &str, started: OffsetDateTime) -> RestoreId {
        let t = started.to_offset(time::UtcOffset::UTC);
        RestoreId(format!(
            "{backup}-{:04}{:02}{:02}T{:02}{:02}{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ))
    }

    /// The `n`th id of one second (1: this one).
    pub fn nth(&self, n: u32) -> RestoreId {
        match n {
            0 | 1 => self.clone(),
            n => RestoreId(format!("{}-{n}", self.0)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RestoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

/// Declares a field-less enum stored and shown by its kebab-case name.
macro_rules! named {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $v),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
            pub fn from_name(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

named! {
    /// How a restore ended.
    RestoreStatus {
        /// Every object and volume done (skipped by policy counts as done); a dry run planned.
        Complete = "complete",
        /// Some failed, some were done.
        PartiallyFailed = "partially-failed",
        /// Nothing was done: the restore stopped with an error, or every result failed.
        Failed = "failed",
    }
}

named! {
    /// Where a restore went.
    TargetKind {
        OutputDir = "output-dir",
        ClusterDir = "cluster-dir",
        Live = "live",
        /// A dry run without a target.
        None = "none",
    }
}

named! {
    /// What was done to one object or volume.
    ObjectAction {
        Created = "created",
        Updated = "updated",
        Skipped = "skipped",
        Failed = "failed",
        /// A dry run: it would be applied.
        Planned = "planned",
    }
}

impl From<Outcome> for ObjectAction {
    fn from(o: Outcome) -> ObjectAction {
        match o {
            Outcome::Created => ObjectAction::Created,
            Outcome::Updated => ObjectAction::Updated,
            Outcome::Skipped => ObjectAction::Skipped,
            Outcome::Failed => ObjectAction::Failed,
        }
    }
}

/// One object's (or volume's) result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ObjectResult {
    /// `Kind/namespace/name` on the target.
    pub object: String,
    pub action: ObjectAction,
    pub message: String,
}

/// RFC 3339 in UTC, to the millisecond, fixed width ([`crate::util::timestamp`]): as the
/// catalog keeps it, so its text sorts as the time.
pub fn rfc3339_ms(t: OffsetDateTime) -> String {
    crate::util::timestamp(t)
}

/// The record of one `restore create` (`restore describe --json`; each row of `restore list
/// --json`, without `results`).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RestoreRecord {
    pub id: RestoreId,
    /// `--from-backup` as given.
    pub backup: String,
    pub dry_run: bool,
    pub target_kind: TargetKind,
    /// The directory or the kubeconfig context.
    pub target: Option<String>,
    /// The mappings and filters given (flag name without `--` → value).
    pub options: BTreeMap<String, String>,
    pub status: RestoreStatus,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::util::serialize_timestamp")]
    #[schemars(with = "String")]
    pub started_at: OffsetDateTime,
    #[serde(serialize_with = "crate::util::serialize_timestamp")]
    #[schemars(with = "String")]
    pub ended_at: OffsetDateTime,
    pub duration_seconds: f64,
    /// Results (objects and volumes) listed; the counts are of them.
    pub objects: usize,
    pub created: usize,
    pub updated: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Each object's result (empty in a listing).
    pub results: Vec<ObjectResult>,
}

impl RestoreRecord {
    /// The record of `req`, run from `started` to `ended`, which gave `outcome`.
    pub fn new(
        req: &RestoreRequest,
        started: OffsetDateTime,
        ended: OffsetDateTime,
        outcome: Result<&RestoreReport, &AppBackupError>,
    ) -> RestoreRecord {
        let (dry_run, dest) = match &req.mode {
            RestoreMode::DryRun(d) => (true, d.as_ref()),
            RestoreMode::Apply(d) => (false, Some(d)),
        };
        let (target_kind, target) = match dest {
            None => (TargetKind::None, None),
            Some(Destination::OutputDir(p)) => {
                (TargetKind::OutputDir, Some(p.display().to_string()))
            }
            Some(Destination::ClusterDir(p)) => {
                (TargetKind::ClusterDir, Some(p.display().to_string()))
            }
            Some(Destination::Live { context, .. }) => (TargetKind::Live, Some(context.clone())),
            Some(Destination::Connected { .. }) => (TargetKind::Live, Some("in-cluster".into())),
        };
        let (results, error) = match outcome {
            Ok(report) => (results_of(report), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let count = |a: ObjectAction| results.iter().filter(|r| r.action == a).count();
        let failed = count(ObjectAction::Failed);
        let status = if error.is_some() || (failed > 0 && failed == results.len()) {
            RestoreStatus::Failed
        } else if failed > 0 {
            RestoreStatus::PartiallyFailed
        } else {
            RestoreStatus::Complete
        };
        RestoreRecord {
            id: RestoreId::new(&req.backup, started),
            backup: req.backup.clone(),
            dry_run,
            target_kind,
            target,
            options: req.given.clone(),
            status,
            error,
            started_at: started,
            ended_at: ended,
            duration_seconds: (ended - started).as_seconds_f64().max(0.0),
            objects: results.len(),
            created: count(ObjectAction::Created),
            updated: count(ObjectAction::Updated),
            skipped: count(ObjectAction::Skipped),
            failed,
            results,
        }
    }
}

/// Each object's result: what was done (a dry run: what would be), then what the plan left
/// out, as skipped with why.
fn results_of(report: &RestoreReport) -> Vec<ObjectResult> {
    let mut out: Vec<ObjectResult> = match report {
        RestoreReport::Planned { plan, conflicts } => plan
            .iter()
            .filter(|p| p.skipped.is_none())
            .map(|p| ObjectResult {
                object: p.target.display(),
                action: ObjectAction::Planned,
                message: if conflicts.contains(&p.target) {
                    "exists on the target".into()
                } else {
                    String::new()
                },
            })
            .collect(),
        RestoreReport::Applied { results, .. } => results
            .iter()
            .map(|r| ObjectResult {
                object: r.r.display(),
                action: r.outcome.into(),
                message: r.detail.clone(),
            })
            .collect(),
    };
    out.extend(report.not_restored().map(|(r, why)| ObjectResult {
        object: r.display(),
        action: ObjectAction::Skipped,
        message: format!("not restored: {why}"),
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::record::Planned;
    use crate::app::restore::RestoreFlags;
    use crate::k8s::csi::MoverSettings;
    use crate::k8s::objects::ObjRef;
    use crate::k8s::source::ApplyResult;

    fn obj(name: &str) -> ObjRef {
        ObjRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    fn request(dry_run: bool) -> RestoreRequest {
        RestoreRequest::new(
            RestoreFlags {
                from_backup: "b1".into(),
                namespace_mapping: "ns:ns-dr".into(),
                dry_run,
                output_dir: Some("/out".into()),
                ..Default::default()
            },
            MoverSettings::default(),
        )
        .unwrap()
    }

    fn planned(name: &str, skipped: Option<&str>) -> Planned {
        Planned {
            source: obj(name),
            target: obj(name),
            skipped: skipped.map(str::to_string),
            owners: vec![],
            value: serde_json::json!({}),
        }
    }

    #[test]
    fn ids_are_readable_and_told_apart_within_a_second() {
        let t = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let id = RestoreId::new("pg", t);
        assert_eq!(id.as_str(), "pg-20260921T141320");
        assert_eq!(id.nth(1), id);
        assert_eq!(id.nth(3).as_str(), "pg-20260921T141320-3");
    }

    #[test]
    fn states_are_stored_by_name() {
        for s in RestoreStatus::ALL {
            assert_eq!(RestoreStatus::from_name(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for a in ObjectAction::ALL {
            assert_eq!(ObjectAction::from_name(a.as_str()), Some(*a));
        }
        assert_eq!(
            TargetKind::from_name("output-dir"),
            Some(TargetKind::OutputDir)
        );
        assert_eq!(RestoreStatus::from_name("done"), None);
    }

    #[test]
    fn a_record_counts_results_and_tells_partial_from_failed() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let t1 = t0 + time::Duration::milliseconds(1500);
        let plan = vec![planned("a", None), planned("p", Some("never restored"))];
        let result = |name: &str, outcome| ApplyResult {
            r: obj(name),
            outcome,
            detail: "d".into(),
        };
        let report = RestoreReport::Applied {
            plan: plan.clone(),
            results: vec![result("a", Outcome::Created), result("b", Outcome::Failed)],
        };
        let r = RestoreRecord::new(&request(false), t0, t1, Ok(&report));
        assert_eq!(r.status, RestoreStatus::PartiallyFailed);
        assert_eq!((r.objects, r.created, r.failed, r.skipped), (3, 1, 1, 1));
        assert_eq!(r.target_kind, TargetKind::OutputDir);
        assert_eq!(r.target.as_deref(), Some("/out"));
        assert_eq!(r.options["namespace-mapping"], "ns:ns-dr");
        assert_eq!(r.duration_seconds, 1.5);
        assert_eq!(r.results[2].message, "not restored: never restored");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["started_at"], "2026-09-21T14:13:20.000Z");
        assert_eq!(v["ended_at"], "2026-09-21T14:13:21.500Z");
        assert_eq!(v["status"], "partially-failed");

        let all_failed = RestoreReport::Applied {
            plan: vec![],
            results: vec![result("b", Outcome::Failed)],
        };
        let r = RestoreRecord::new(&request(false), t0, t1, Ok(&all_failed));
        assert_eq!(r.status, RestoreStatus::Failed);
        let e = AppBackupError::NotFound("b1".into());
        let r = RestoreRecord::new(&request(false), t0, t1, Err(&e));
        assert_eq!(r.status, RestoreStatus::Failed);
        assert!(r.error.as_deref().unwrap().contains("no backup named"));

        let dry = RestoreReport::Planned {
            conflicts: vec![obj("a")],
            plan,
        };
        let r = RestoreRecord::new(&request(true), t0, t1, Ok(&dry));
        assert!(r.dry_run);
        assert_eq!(r.status, RestoreStatus::Complete);
        assert_eq!(r.results[0].action, ObjectAction::Planned);
        assert_eq!(r.results[0].message, "exists on the target");
    }
}
