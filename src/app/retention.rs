//! Retention: takes the backup records and retention rules; gives which candidates the rules
//! keep and why ([`retain`], pure), the records to remove ([`plan`], pure: per schedule, by
//! [`retain`]) and removes them with the volume snapshots that only they referenced
//! ([`forget`], under an exclusive lock). The space is given back by `prune`. Must not remove
//! the newest complete backup of a schedule, and removes a record before its snapshots, so a
//! crash never leaves a record whose data is gone; what it removes is written down first (a
//! [`ForgetIntent`]), so a crash never leaves snapshots that nothing removes either. Also
//! chooses a forget's rules ([`choose_rules`], pure: a policy or flags). Knows nothing of
//! schedules beyond the name a record carries.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::crypto::Role;
use crate::format::{AppBackup, BackupId, SnapshotId};
use crate::repository::{LockKind, RepoError, Repository};

pub use crate::crd::Retain;

impl Retain {
    pub fn keeps_everything(&self) -> bool {
        *self == Retain::default()
    }
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub time: OffsetDateTime,
    /// Complete (no capture failures).
    pub good: bool,
}

/// Why a backup is kept. Declared in the alphabetical order of the serde names, so a set of
/// reasons lists them as it did when they were strings (`forget --json`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum KeepReason {
    #[serde(rename = "daily")]
    Daily,
    #[serde(rename = "hourly")]
    Hourly,
    #[serde(rename = "last")]
    Last,
    #[serde(rename = "monthly")]
    Monthly,
    #[serde(rename = "newest complete backup")]
    NewestComplete,
    #[serde(rename = "no retention rules")]
    NoRules,
    /// Not the backup a deletion named.
    #[serde(rename = "not asked for")]
    NotAsked,
    #[serde(rename = "weekly")]
    Weekly,
}

impl KeepReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Daily => "daily",
            KeepReason::NotAsked => "not asked for",
            KeepReason::Hourly => "hourly",
            KeepReason::Last => "last",
            KeepReason::Monthly => "monthly",
            KeepReason::NewestComplete => "newest complete backup",
            KeepReason::NoRules => "no retention rules",
            KeepReason::Weekly => "weekly",
        }
    }
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Which candidates a policy keeps, and why: `kept[i]` lists the reasons for candidate `i`
/// (empty: forget it). Buckets are UTC hours, days, ISO weeks and months; in each bucket the
/// newest backup stands for it. The newest good backup is always kept.
pub fn retain(candidates: &[Candidate], r: &Retain) -> Vec<BTreeSet<KeepReason>> {
    let mut kept = vec![BTreeSet::new(); candidates.len()];
    if r.keeps_everything() {
        for k in &mut kept {
            k.insert(KeepReason::NoRules);
        }
        return kept;
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| candidates[*b].time.cmp(&candidates[*a].time).then(b.cmp(a)));
    for (&i, _) in order.iter().zip(0..r.last) {
        kept[i].insert(KeepReason::Last);
    }
    type Bucket = fn(OffsetDateTime) -> (i32, u32, u32, u32);
    let rules: [(KeepReason, u32, Bucket); 4] = [
        (KeepReason::Hourly, r.hourly, |t| {
            (t.year(), t.ordinal() as u32, t.hour() as u32, 0)
        }),
        (KeepReason::Daily, r.daily, |t| {
            (t.year(), t.ordinal() as u32, 0, 0)
        }),
        (KeepReason::Weekly, r.weekly, |t| {
            let (y, w, _) = t.to_iso_week_date();
            (y, w as u32, 0, 0)
        }),
        (KeepReason::Monthly, r.monthly, |t| {
            (t.year(), t.month() as u32, 0, 0)
        }),
    ];
    for (why, n, bucket) in rules {
        let mut seen = BTreeSet::new();
        for &i in &order {
            if seen.len() as u32 >= n {
                break;
            }
            let t = candidates[i].time.to_offset(time::UtcOffset::UTC);
            if seen.insert(bucket(t)) {
                kept[i].insert(why);
            }
        }
    }
    if let Some(&i) = order.iter().find(|&&i| candidates[i].good) {
        kept[i].insert(KeepReason::NewestComplete);
    }
    kept
}

/// One backup's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: BackupId,
    pub name: String,
    pub schedule: Option<String>,
    #[serde(serialize_with = "crate::util::serialize_timestamp")]
    pub time: time::OffsetDateTime,
    /// Why it is kept; empty: it is removed.
    pub kept_by: Vec<KeepReason>,
}

impl Decision {
    pub fn removed(&self) -> bool {
        self.kept_by.is_empty()
    }
}

/// The backups `decisions` remove.
pub fn removed(decisions: &[Decision]) -> Vec<BackupId> {
    decisions
        .iter()
        .filter(|d| d.removed())
        .map(|d| d.id)
        .collect()
}

/// Decides, per schedule (backups made by hand form their own group), which backups the rules
/// keep. `only`: decide for that schedule's backups alone (others are not listed).
pub fn plan(
    backups: &[(BackupId, AppBackup)],
    rules: &dyn Fn(Option<&str>) -> Retain,
    only: Option<&str>,
) -> Vec<Decision> {
    let mut groups: BTreeMap<Option<&str>, Vec<&(BackupId, AppBackup)>> = BTreeMap::new();
    for b in backups {
        let s = b.1.schedule.as_deref();
        if only.is_none() || only == s {
            groups.entry(s).or_default().push(b);
        }
    }
    let mut out = Vec::new();
    for (schedule, members) in groups {
        let cands: Vec<Candidate> = members
            .iter()
            .map(|(_, b)| Candidate {
                time: b.time,
                good: b.failures.is_empty(),
            })
            .collect();
        let kept = retain(&cands, &rules(schedule));
        for ((id, b), why) in members.into_iter().zip(kept) {
            out.push(Decision {
                id: *id,
                name: b.name.clone(),
                schedule: b.schedule.clone(),
                time: b.time,
                kept_by: why.into_iter().collect(),
            });
        }
    }
    out.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
    out
}

/// Why no retention rules could be chosen for a forget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("give --policy or --keep-* flags, not both")]
    Both,
    #[error("forget needs rules: --policy NAME --config PATH, or --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly")]
    None,
    #[error("no SchedulePolicy `{policy}` in {config} (it has: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NoSuchPolicy {
        policy: String,
        config: String,
        known: Vec<String>,
    },
    #[error("policy `{0}` has no retain rules: it keeps everything")]
    PolicyKeepsEverything(String),
}

/// The policies of a configuration as a forget sees them: where they were read from, and each
/// one's rules by name.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub config: String,
    pub retain: BTreeMap<String, Retain>,
}

/// The rules of a forget: those of `policy` (named, with the configuration holding it), or
/// the `--keep-*` `flags`; exactly one of them, and never rules that keep everything (a forget
/// that removes nothing was asked by mistake).
pub fn choose_rules(
    flags: Retain,
    policy: Option<(&str, &Policies)>,
) -> Result<Retain, RulesError> {
    match policy {
        Some(_) if !flags.keeps_everything() => Err(RulesError::Both),
        Some((name, policies)) => match policies.retain.get(name) {
            None => Err(RulesError::NoSuchPolicy {
                policy: name.to_string(),
                config: policies.config.clone(),
                known: policies.retain.keys().cloned().collect(),
            }),
            Some(r) if r.keeps_everything() => {
                Err(RulesError::PolicyKeepsEverything(name.to_string()))
            }
            Some(r) => Ok(*r),
        },
        None if flags.keeps_everything() => Err(RulesError::None),
        None => Ok(flags),
    }
}

#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
pub struct ForgetReport {
    pub backups_removed: usize,
    pub snapshots_removed: usize,
    /// Forgets killed part way (their intents found) that this one finished first.
    pub interrupted_finished: usize,
}

pub use crate::format::{ForgetIntent, FORGET_INTENTS as INTENTS};

/// The snapshots of `intent` that no record of `records` references: those a resumed forget
/// removes (a snapshot that a record still names stays, whatever the intent says).
pub fn orphans(intent: &ForgetIntent, records: &[(BackupId, AppBackup)]) -> Vec<SnapshotId> {
    let named: HashSet<SnapshotId> = records
        .iter()
        .flat_map(|(_, b)| b.volumes.iter().map(|v| v.snapshot))
        .collect();
    intent
        .snapshots
        .iter()
        .filter(|s| !named.contains(s))
        .copied()
        .collect()
}

/// The decisions that remove the one backup `id` and keep every other.
pub fn only(backups: &[(BackupId, AppBackup)], id: &BackupId) -> Vec<Decision> {
    backups
        .iter()
        .map(|(i, b)| Decision {
            id: *i,
            name: b.name.clone(),
            schedule: b.schedule.clone(),
            time: b.time,
            kept_by: if i == id {
                vec![]
            } else {
                vec![KeepReason::NotAsked]
            },
        })
        .collect()
}

/// Removes the records `plan` decided to remove, then the volume snapshots no remaining record
/// references. Standalone volume snapshots (`volume backup`) are never touched. An intent
/// listing both is written first and removed last, and the intents of forgets killed part way
/// are finished first (all under the exclusive lock, which no backup holds while it writes:
/// backups hold a shared one from their first snapshot to their record).
pub async fn forget(
    repo: &Repository,
    backups: &[(BackupId, AppBackup)],
    decisions: &[Decision],
) -> Result<ForgetReport, RepoError> {
    let lock = repo.lock(LockKind::Exclusive, "forget").await?;
    let result = async {
        let mut report = ForgetReport::default();
        finish_interrupted(repo, &mut report).await?;
        let remove: BTreeSet<BackupId> = removed(decisions).into_iter().collect();
        if remove.is_empty() {
            return Ok(report);
        }
        let mut still: BTreeSet<SnapshotId> = BTreeSet::new();
        let mut gone: BTreeSet<SnapshotId> = BTreeSet::new();
        for (id, b) in backups {
            let set = if remove.contains(id) {
                &mut gone
            } else {
                &mut still
            };
            set.extend(b.volumes.iter().map(|v| v.snapshot));
        }
        let intent = ForgetIntent {
            version: crate::format::FORMAT_VERSION,
            time: OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .expect("0 ns"),
            backups: remove.into_iter().collect(),
            snapshots: gone.difference(&still).copied().collect(),
        };
        let (hash, _) = repo
            .write_sealed_json(INTENTS, &intent, Role::ForgetIntent)
            .await?;
        carry_out(repo, &intent, &intent.snapshots, &mut report).await?;
        repo.store()
            .delete(&format!("{INTENTS}/{}", hex::encode(hash)), repo.cancel())
            .await?;
        Ok(report)
    }
    .await;
    lock.release().await?;
    result
}

/// Deletes the records of `intent`, then `snapshots`.
async fn carry_out(
    repo: &Repository,
    intent: &ForgetIntent,
    snapshots: &[SnapshotId],
    report: &mut ForgetReport,
) -> Result<(), RepoError> {
    for id in &intent.backups {
        repo.store().delete(&id.key(), repo.cancel()).await?;
        report.backups_removed += 1;
    }
    for s in snapshots {
        repo.store().delete(&s.key(), repo.cancel()).await?;
        report.snapshots_removed += 1;
    }
    Ok(())
}

/// Finishes the forgets that were killed part way: each intent's records and its snapshots
/// that no record now references are removed, then the intent. A damaged intent is left (and
/// reported by `repo check`): what it listed cannot be known.
async fn finish_interrupted(repo: &Repository, report: &mut ForgetReport) -> Result<(), RepoError> {
    let (intents, damaged) = repo
        .load_all_readable::<ForgetIntent>(INTENTS, Role::ForgetIntent)
        .await?;
    for e in damaged {
        tracing::warn!("skipping a damaged forget intent: {e}; `lifeboat repo check` reports it");
    }
    if intents.is_empty() {
        return Ok(());
    }
    let (records, _) = repo
        .load_all_readable::<AppBackup>("backups", Role::Backup)
        .await?;
    for (hash, intent) in intents {
        let records: Vec<(BackupId, AppBackup)> = records
            .iter()
            .filter(|(h, _)| !intent.backups.contains(&BackupId(*h)))
            .map(|(h, b)| (BackupId(*h), b.clone()))
            .collect();
        let orphans = orphans(&intent, &records);
        tracing::info!(
            backups = intent.backups.len(),
            snapshots = orphans.len(),
            "finishing a forget that was interrupted"
        );
        carry_out(repo, &intent, &orphans, report).await?;
        repo.store()
            .delete(&format!("{INTENTS}/{}", hex::encode(hash)), repo.cancel())
            .await?;
        report.interrupted_finished += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backup(
        name: &str,
        schedule: Option<&str>,
        hours_ago: i64,
        good: bool,
    ) -> (BackupId, AppBackup) {
        let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let mut id = [0u8; 32];
        id[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
        (
            BackupId(id),
            AppBackup {
                version: 1,
                name: name.into(),
                time: now - time::Duration::hours(hours_ago),
                source: "test".into(),
                schedule: schedule.map(str::to_string),
                filters: Default::default(),
                objects: vec![],
                failures: if good {
                    vec![]
                } else {
                    vec![crate::format::CaptureFailure {
                        what: "x".into(),
                        reason: "y".into(),
                    }]
                },
                volumes: vec![],
                rules: vec![],
                warnings: vec![],
                duration_seconds: None,
                program_version: "t".into(),
            },
        )
    }

    #[test]
    fn per_schedule_and_the_newest_complete_backup_stays() {
        let all = vec![
            backup("a1", Some("a"), 5, true),
            backup("a2", Some("a"), 4, true),
            backup("a3", Some("a"), 3, false),
            backup("b1", Some("b"), 2, true),
            backup("m1", None, 1, true),
        ];
        let rules = |_: Option<&str>| Retain {
            last: 1,
            ..Default::default()
        };
        let d = plan(&all, &rules, None);
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| !d.kept_by.is_empty())
            .map(|d| d.name.as_str())
            .collect();
        // a3 is the last of `a` but partial: a2 stays as the newest complete one.
        assert_eq!(kept, vec!["a2", "a3", "b1", "m1"]);
        let d = plan(&all, &rules, Some("b"));
        assert_eq!(d.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Retention: the newest good backup is always kept; no rule keeps more buckets than
        /// it says; raising a count never drops a backup that was kept.
        #[test]
        fn retention_is_bounded_monotone_and_keeps_the_newest_good(
            gaps in prop::collection::vec((1i64..200_000, any::<bool>()), 1..60),
            last in 0u32..5, hourly in 0u32..5, daily in 0u32..5, weekly in 0u32..3, monthly in 0u32..3,
        ) {
            let mut at = OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap();
            let cands: Vec<Candidate> = gaps.iter().map(|(g, good)| { at += time::Duration::seconds(*g); Candidate { time: at, good: *good } }).collect();
            let r = Retain { last, hourly, daily, weekly, monthly };
            let kept = retain(&cands, &r);
            if let Some(newest_good) = (0..cands.len()).rev().find(|&i| cands[i].good) {
                prop_assert!(!kept[newest_good].is_empty());
            }
            if !r.keeps_everything() {
                use KeepReason::*;
                for (why, n) in [(Last, last), (Hourly, hourly), (Daily, daily), (Weekly, weekly), (Monthly, monthly)] {
                    prop_assert!(kept.iter().filter(|k| k.contains(&why)).count() as u32 <= n);
                }
                let more = Retain { daily: daily + 1, ..r };
                let kept_more = retain(&cands, &more);
                for i in 0..cands.len() {
                    prop_assert!(kept[i].is_empty() || !kept_more[i].is_empty());
                }
            }
        }
    }

    #[test]
    fn a_forget_takes_its_rules_from_a_policy_or_the_flags_never_both_nor_none() {
        let flags = Retain {
            last: 2,
            ..Default::default()
        };
        let none = Retain::default();
        let policies = Policies {
            config: "cfg.yaml".into(),
            retain: [
                ("daily".to_string(), Retain { daily: 7, ..none }),
                ("all".to_string(), none),
            ]
            .into(),
        };
        assert_eq!(choose_rules(flags, None), Ok(flags));
        assert_eq!(
            choose_rules(none, Some(("daily", &policies))),
            Ok(Retain { daily: 7, ..none })
        );
        assert_eq!(
            choose_rules(flags, Some(("daily", &policies))),
            Err(RulesError::Both)
        );
        assert_eq!(choose_rules(none, None), Err(RulesError::None));
        assert_eq!(
            choose_rules(none, Some(("all", &policies))),
            Err(RulesError::PolicyKeepsEverything("all".into()))
        );
        let e = choose_rules(none, Some(("weekly", &policies))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no SchedulePolicy `weekly` in cfg.yaml (it has: all, daily)"
        );
    }

    #[test]
    fn an_interrupted_forget_removes_only_the_snapshots_no_record_names() {
        let snap = |b: u8| SnapshotId([b; 32]);
        let (id, mut rec) = backup("kept", None, 1, true);
        rec.volumes = vec![crate::format::BackedUpVolume {
            namespace: "ns".into(),
            pvc: "data".into(),
            snapshot: snap(2),
            size: 1,
            method: crate::format::CopyMethod::Copy,
        }];
        let intent = ForgetIntent {
            version: 1,
            time: OffsetDateTime::UNIX_EPOCH,
            backups: vec![BackupId([9; 32])],
            snapshots: vec![snap(1), snap(2), snap(3)],
        };
        assert_eq!(orphans(&intent, &[(id, rec)]), vec![snap(1), snap(3)]);
        assert_eq!(orphans(&intent, &[]), intent.snapshots);
    }

    #[test]
    fn reasons_keep_their_names_and_order() {
        // The order of a set of reasons is the order of their names, as when they were strings.
        let all = [
            KeepReason::Weekly,
            KeepReason::NoRules,
            KeepReason::NewestComplete,
            KeepReason::Monthly,
            KeepReason::Last,
            KeepReason::Hourly,
            KeepReason::Daily,
        ];
        let set: BTreeSet<KeepReason> = all.into_iter().collect();
        let names: Vec<&str> = set.iter().map(|r| r.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        for r in all {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
