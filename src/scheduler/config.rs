//! Schedules, pure: takes `SchedulePolicy` and `BackupSchedule` documents (YAML, shaped as
//! Kubernetes objects); gives validated schedules, their next fire times, and which backups a
//! policy's retention keeps. No IO beyond reading the configuration files, no clock: every
//! function takes "now" as an argument, so the arithmetic is tested with generated times.
//!
//! Cron expressions have five fields (minute hour day-of-month month day-of-week, as crontab)
//! or six with a leading seconds field. Day-of-week numbers follow crontab: 0 and 7 are Sunday.
//! `daily`, `weekly` and `monthly` are cron expressions written for people; a `monthly` date
//! past the end of a month (30 in February) fires in the months that have it. Times are in the
//! policy's `timezone` (default UTC).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {object}: {field}: {reason}")]
    Invalid {
        path: String,
        object: String,
        field: String,
        reason: String,
    },
}

// ----- documents ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Doc {
    #[serde(default)]
    api_version: Option<String>,
    kind: String,
    metadata: crate::hooks::MetaDoc,
    spec: serde_yaml::Value,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    cron: Option<CronDoc>,
    #[serde(default)]
    interval: Option<IntervalDoc>,
    #[serde(default)]
    daily: Option<AtDoc>,
    #[serde(default)]
    weekly: Option<AtDoc>,
    #[serde(default)]
    monthly: Option<AtDoc>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    retain: Option<Retain>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CronDoc {
    expression: String,
    #[serde(default)]
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntervalDoc {
    #[serde(default)]
    seconds: u64,
    #[serde(default)]
    minutes: u64,
    #[serde(default)]
    hours: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AtDoc {
    time: String,
    #[serde(default)]
    day: Option<String>,
    #[serde(default)]
    date: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScheduleSpec {
    schedule_policy_name: String,
    #[serde(default)]
    suspend: bool,
    template: TemplateDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TemplateDoc {
    namespaces: Vec<String>,
    #[serde(default)]
    selector: String,
    #[serde(default)]
    pre_rules: Vec<String>,
    #[serde(default)]
    post_rules: Vec<String>,
    #[serde(default = "yes")]
    include_resources: bool,
    #[serde(default = "yes")]
    include_volumes: bool,
}

fn yes() -> bool {
    true
}

/// How many backups a policy keeps (grandfather-father-son). A backup kept by any rule stays.
/// All zero: keep everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retain {
    #[serde(default)]
    pub last: u32,
    #[serde(default)]
    pub hourly: u32,
    #[serde(default)]
    pub daily: u32,
    #[serde(default)]
    pub weekly: u32,
    #[serde(default)]
    pub monthly: u32,
}

impl Retain {
    pub fn keeps_everything(&self) -> bool {
        *self == Retain::default()
    }
}

// ----- typed settings -----------------------------------------------------------------------

/// When a policy fires.
#[derive(Debug, Clone)]
pub enum Trigger {
    Cron {
        /// As written, for listings.
        expression: String,
        schedule: Box<cron::Schedule>,
        tz: chrono_tz::Tz,
    },
    /// Every period, counted from the previous run's start (or from now).
    Interval(Duration),
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub trigger: Trigger,
    pub retain: Retain,
}

/// What each run of a schedule backs up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Template {
    pub namespaces: Vec<String>,
    pub selector: String,
    pub pre_rules: Vec<String>,
    pub post_rules: Vec<String>,
    pub include_resources: bool,
    pub include_volumes: bool,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub policy: String,
    pub suspend: bool,
    pub template: Template,
    pub file: String,
}

/// A whole configuration: every policy and schedule, validated together.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub policies: BTreeMap<String, Policy>,
    pub schedules: BTreeMap<String, Schedule>,
}

impl Config {
    pub fn policy_of(&self, s: &Schedule) -> &Policy {
        &self.policies[&s.policy]
    }
}

fn invalid(path: &str, object: &str, field: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::Invalid {
        path: path.to_string(),
        object: object.to_string(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// `10:14PM`, `8:05 am`, `22:14` → (hour, minute).
pub fn parse_clock(text: &str) -> Result<(u32, u32), String> {
    let t = text.trim().to_ascii_uppercase();
    let (body, pm) = if let Some(b) = t.strip_suffix("PM") {
        (b.trim(), Some(true))
    } else if let Some(b) = t.strip_suffix("AM") {
        (b.trim(), Some(false))
    } else {
        (t.as_str(), None)
    };
    let bad = || format!("`{text}` is not a time of day; write e.g. 10:14PM or 22:14");
    let (h, m) = body.split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m > 59 {
        return Err(bad());
    }
    let h = match pm {
        None if h <= 23 => h,
        Some(pm) if (1..=12).contains(&h) => (h % 12) + if pm { 12 } else { 0 },
        _ => return Err(bad()),
    };
    Ok((h, m))
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

fn parse_weekday(text: &str) -> Result<&'static str, String> {
    let t = text.trim().to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .find(|d| {
            t.len() >= 3 && d.to_ascii_lowercase() == t[..3] && {
                let full = [
                    "sunday",
                    "monday",
                    "tuesday",
                    "wednesday",
                    "thursday",
                    "friday",
                    "saturday",
                ];
                full.iter().any(|f| f.starts_with(&t))
            }
        })
        .copied()
        .ok_or_else(|| format!("`{text}` is not a day of the week; write e.g. Thursday"))
}

/// Crontab day-of-week numbers (0 and 7 Sunday) as names, which the `cron` crate reads
/// unambiguously (its own numbers start at 1 for Sunday).
fn dow_names(field: &str) -> String {
    field
        .split(',')
        .map(|part| {
            let (body, step) = match part.split_once('/') {
                Some((b, s)) => (b, Some(s)),
                None => (part, None),
            };
            let name = |n: &str| -> String {
                match n.parse::<usize>() {
                    Ok(d) if d <= 7 => WEEKDAYS[d % 7].to_string(),
                    _ => n.to_string(),
                }
            };
            let body = match body.split_once('-') {
                // A range ending on Sunday written as 7 (e.g. 5-7): up to Saturday, and Sunday.
                Some((a, "7")) if step.is_none() => format!("{}-Sat,Sun", name(a)),
                Some((a, b)) => format!("{}-{}", name(a), name(b)),
                None => name(body),
            };
            match step {
                Some(s) => format!("{body}/{s}"),
                None => body,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a cron expression of 5 fields (crontab) or 6 (with seconds first).
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let mut full: Vec<String> = match fields.len() {
        5 => std::iter::once("0")
            .chain(fields.iter().copied())
            .map(str::to_string)
            .collect(),
        6 => fields.iter().map(|s| s.to_string()).collect(),
        n => {
            return Err(format!(
                "`{expression}` has {n} fields; write 5 (minute hour day month weekday) or 6 (seconds first)"
            ))
        }
    };
    full[5] = dow_names(&full[5]);
    cron::Schedule::from_str(&full.join(" "))
        .map_err(|e| format!("`{expression}` is not a valid cron expression: {e}"))
}

fn parse_tz(text: Option<&str>) -> Result<chrono_tz::Tz, String> {
    match text {
        None => Ok(chrono_tz::UTC),
        Some(t) => t.parse().map_err(|_| {
            format!("`{t}` is not a time zone; use an IANA name such as UTC or Europe/Paris")
        }),
    }
}

fn policy_of(path: &str, name: &str, spec: PolicySpec) -> Result<Policy, ScheduleError> {
    let obj = format!("SchedulePolicy {name}");
    let given = [
        spec.cron.is_some(),
        spec.interval.is_some(),
        spec.daily.is_some(),
        spec.weekly.is_some(),
        spec.monthly.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        return Err(invalid(
            path,
            &obj,
            "spec",
            "give exactly one of cron, interval, daily, weekly, monthly",
        ));
    }
    let tz_field =
        |tz: Option<&str>, field: &str| parse_tz(tz).map_err(|e| invalid(path, &obj, field, e));
    let cron_of =
        |expr: String, field: &str, tz: chrono_tz::Tz| -> Result<Trigger, ScheduleError> {
            let schedule = parse_cron(&expr).map_err(|e| invalid(path, &obj, field, e))?;
            Ok(Trigger::Cron {
                expression: expr,
                schedule: Box::new(schedule),
                tz,
            })
        };
    let at = |a: &AtDoc, field: &str| {
        parse_clock(&a.time).map_err(|e| invalid(path, &obj, &format!("{field}.time"), e))
    };
    let trigger = if let Some(c) = spec.cron {
        let tz = tz_field(
            c.timezone.as_deref().or(spec.timezone.as_deref()),
            "spec.cron.timezone",
        )?;
        cron_of(c.expression, "spec.cron.expression", tz)?
    } else if let Some(i) = spec.interval {
        let d = Duration::from_secs(i.seconds + 60 * i.minutes + 3600 * i.hours);
        if d.is_zero() {
            return Err(invalid(
                path,
                &obj,
                "spec.interval",
                "must be more than 0 (e.g. {minutes: 15})",
            ));
        }
        Trigger::Interval(d)
    } else {
        let tz = tz_field(spec.timezone.as_deref(), "spec.timezone")?;
        if let Some(a) = spec.daily {
            let (h, m) = at(&a, "spec.daily")?;
            cron_of(format!("0 {m} {h} * * *"), "spec.daily", tz)?
        } else if let Some(a) = spec.weekly {
            let (h, m) = at(&a, "spec.weekly")?;
            let day = a
                .day
                .as_deref()
                .ok_or_else(|| invalid(path, &obj, "spec.weekly.day", "missing (e.g. Thursday)"))
                .and_then(|d| {
                    parse_weekday(d).map_err(|e| invalid(path, &obj, "spec.weekly.day", e))
                })?;
            cron_of(format!("0 {m} {h} * * {day}"), "spec.weekly", tz)?
        } else {
            let a = spec.monthly.expect("one was given");
            let (h, m) = at(&a, "spec.monthly")?;
            let date = a
                .date
                .ok_or_else(|| invalid(path, &obj, "spec.monthly.date", "missing (1 to 31)"))?;
            if !(1..=31).contains(&date) {
                return Err(invalid(
                    path,
                    &obj,
                    "spec.monthly.date",
                    format!("{date} is not a day of the month (1 to 31)"),
                ));
            }
            cron_of(format!("0 {m} {h} {date} * *"), "spec.monthly", tz)?
        }
    };
    Ok(Policy {
        name: name.to_string(),
        trigger,
        retain: spec.retain.unwrap_or_default(),
    })
}

fn yaml_files(path: &Path) -> Result<Vec<std::path::PathBuf>, ScheduleError> {
    let err = |e: std::io::Error| ScheduleError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(err)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<_> = std::fs::read_dir(path)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(ScheduleError::Read {
            path: path.display().to_string(),
            reason: "holds no .yaml files".into(),
        });
    }
    Ok(out)
}

/// Loads a configuration from a file or a directory of `.yaml` files. Refuses the whole of it
/// at the first problem, naming the file, the object and the field.
pub fn load_config(path: &Path) -> Result<Config, ScheduleError> {
    let mut docs = Vec::new();
    for f in yaml_files(path)? {
        let shown = f.display().to_string();
        let text = std::fs::read_to_string(&f).map_err(|e| ScheduleError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        docs.push((shown, text));
    }
    parse_config(&docs)
}

/// [`load_config`] on (file name, text) pairs.
pub fn parse_config(files: &[(String, String)]) -> Result<Config, ScheduleError> {
    let mut cfg = Config::default();
    let mut schedules = Vec::new();
    for (path, text) in files {
        for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_yaml::Value::deserialize(d).map_err(|e| ScheduleError::Read {
                path: path.clone(),
                reason: format!("not YAML: {e}"),
            })?;
            if v.is_null() {
                continue;
            }
            let doc: Doc = serde_yaml::from_value(v).map_err(|e| {
                invalid(
                    path,
                    &format!("document {}", i + 1),
                    "(object)",
                    e.to_string(),
                )
            })?;
            let _ = doc.api_version;
            let name = doc.metadata.name;
            match doc.kind.as_str() {
                "SchedulePolicy" => {
                    let spec: PolicySpec = serde_yaml::from_value(doc.spec).map_err(|e| {
                        invalid(
                            path,
                            &format!("SchedulePolicy {name}"),
                            "spec",
                            e.to_string(),
                        )
                    })?;
                    let p = policy_of(path, &name, spec)?;
                    if cfg.policies.insert(name.clone(), p).is_some() {
                        return Err(invalid(
                            path,
                            &format!("SchedulePolicy {name}"),
                            "metadata.name",
                            "defined twice",
                        ));
                    }
                }
                "BackupSchedule" => {
                    let spec: ScheduleSpec = serde_yaml::from_value(doc.spec).map_err(|e| {
                        invalid(
                            path,
                            &format!("BackupSchedule {name}"),
                            "spec",
                            e.to_string(),
                        )
                    })?;
                    schedules.push((path.clone(), name, spec));
                }
                k => return Err(invalid(
                    path,
                    &format!("{k} {name}"),
                    "kind",
                    "unknown; the configuration holds SchedulePolicy and BackupSchedule objects",
                )),
            }
        }
    }
    for (path, name, spec) in schedules {
        let obj = format!("BackupSchedule {name}");
        if !cfg.policies.contains_key(&spec.schedule_policy_name) {
            let known: Vec<&str> = cfg.policies.keys().map(String::as_str).collect();
            return Err(invalid(
                &path,
                &obj,
                "spec.schedulePolicyName",
                format!(
                    "no SchedulePolicy named `{}` (defined: {})",
                    spec.schedule_policy_name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if spec.template.namespaces.is_empty() {
            return Err(invalid(
                &path,
                &obj,
                "spec.template.namespaces",
                "is empty; name at least one",
            ));
        }
        if !spec.template.include_resources && !spec.template.include_volumes {
            return Err(invalid(
                &path,
                &obj,
                "spec.template",
                "includeResources and includeVolumes are both false: nothing to back up",
            ));
        }
        crate::util::check_name(crate::util::NameKind::Schedule, &name)
            .map_err(|e| invalid(&path, &obj, "metadata.name", e.to_string()))?;
        let s = Schedule {
            name: name.clone(),
            policy: spec.schedule_policy_name,
            suspend: spec.suspend,
            template: Template {
                namespaces: spec.template.namespaces,
                selector: spec.template.selector,
                pre_rules: spec.template.pre_rules,
                post_rules: spec.template.post_rules,
                include_resources: spec.template.include_resources,
                include_volumes: spec.template.include_volumes,
            },
            file: path.clone(),
        };
        if let Some(first) = cfg.schedules.insert(name.clone(), s) {
            return Err(invalid(
                &path,
                &obj,
                "metadata.name",
                format!("defined twice (also in {})", first.file),
            ));
        }
    }
    Ok(cfg)
}

// ----- fire times ---------------------------------------------------------------------------

pub fn to_chrono(t: OffsetDateTime) -> DateTime<Utc> {
    Utc.timestamp_nanos(t.unix_timestamp_nanos() as i64)
}

pub fn from_chrono(t: DateTime<Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(t.timestamp_nanos_opt().unwrap_or(0) as i128)
        .expect("in range")
}

/// The next `count` fire times strictly after `after`. For an interval, the first is one
/// period after the previous run's start when there was one (or `after`, when that is already
/// past), else `after` itself plus one period.
pub fn next_fires(
    trigger: &Trigger,
    after: OffsetDateTime,
    last_run: Option<OffsetDateTime>,
    count: usize,
) -> Vec<OffsetDateTime> {
    match trigger {
        Trigger::Cron { schedule, tz, .. } => {
            let from = to_chrono(after).with_timezone(tz);
            schedule
                .after(&from)
                .take(count)
                .map(|t| from_chrono(t.with_timezone(&Utc)))
                .collect()
        }
        Trigger::Interval(d) => {
            let d = time::Duration::try_from(*d).expect("interval in range");
            let first = match last_run {
                Some(l) if l + d > after => l + d,
                Some(_) => after + time::Duration::nanoseconds(1),
                None => after + d,
            };
            (0..count as i32).map(|k| first + d * k).collect()
        }
    }
}

/// The newest fire time at or before `at` (None for an interval, which has no fixed grid, or
/// when there is none within a year).
pub fn previous_fire(trigger: &Trigger, at: OffsetDateTime) -> Option<OffsetDateTime> {
    match trigger {
        Trigger::Interval(_) => None,
        Trigger::Cron { schedule, tz, .. } => {
            let to = to_chrono(at).with_timezone(tz);
            schedule
                .after(&to)
                .rev()
                .take(1)
                .next()
                .map(|t| from_chrono(t.with_timezone(&Utc)))
                .filter(|t| at - *t < time::Duration::days(366))
        }
    }
}

/// Whether a schedule missed a run while nothing was running it: its previous fire time is
/// after its last run. The stated policy: a schedule that missed runs runs **once** on start,
/// however many it missed.
pub fn missed(trigger: &Trigger, now: OffsetDateTime, last_run: Option<OffsetDateTime>) -> bool {
    match (previous_fire(trigger, now), last_run) {
        (Some(p), Some(l)) => p > l,
        (Some(_), None) => false,
        (None, Some(l)) => match trigger {
            Trigger::Interval(d) => now - l > time::Duration::try_from(*d).expect("in range"),
            _ => false,
        },
        (None, None) => false,
    }
}

// ----- retention ----------------------------------------------------------------------------

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub time: OffsetDateTime,
    /// Complete (no capture failures).
    pub good: bool,
}

/// Which candidates a policy keeps, and why: `kept[i]` lists the reasons for candidate `i`
/// (empty: forget it). Buckets are UTC hours, days, ISO weeks and months; in each bucket the
/// newest backup stands for it. The newest good backup is always kept.
pub fn retain(candidates: &[Candidate], r: &Retain) -> Vec<BTreeSet<&'static str>> {
    let mut kept = vec![BTreeSet::new(); candidates.len()];
    if r.keeps_everything() {
        for k in &mut kept {
            k.insert("no retention rules");
        }
        return kept;
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|a, b| candidates[*b].time.cmp(&candidates[*a].time).then(b.cmp(a)));
    for (&i, _) in order.iter().zip(0..r.last) {
        kept[i].insert("last");
    }
    type Bucket = fn(OffsetDateTime) -> (i32, u32, u32, u32);
    let rules: [(&'static str, u32, Bucket); 4] = [
        ("hourly", r.hourly, |t| {
            (t.year(), t.ordinal() as u32, t.hour() as u32, 0)
        }),
        ("daily", r.daily, |t| (t.year(), t.ordinal() as u32, 0, 0)),
        ("weekly", r.weekly, |t| {
            let (y, w, _) = t.to_iso_week_date();
            (y, w as u32, 0, 0)
        }),
        ("monthly", r.monthly, |t| (t.year(), t.month() as u32, 0, 0)),
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
        kept[i].insert("newest complete backup");
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn trig(expr: &str) -> Trigger {
        Trigger::Cron {
            expression: expr.into(),
            schedule: Box::new(parse_cron(expr).unwrap()),
            tz: chrono_tz::UTC,
        }
    }

    #[test]
    fn crontab_weekdays_mean_what_crontab_means() {
        // 1-5 is Monday to Friday; 2026-11-27 is a Friday, 11-28 a Saturday.
        let fires = next_fires(&trig("0 9 * * 1-5"), t("2026-11-27T10:00:00Z"), None, 1);
        assert_eq!(fires, vec![t("2026-11-30T09:00:00Z")]);
        let fires = next_fires(&trig("0 9 * * 0"), t("2026-11-27T10:00:00Z"), None, 1);
        assert_eq!(fires, vec![t("2026-11-29T09:00:00Z")], "0 is Sunday");
        let fires = next_fires(&trig("0 9 * * 7"), t("2026-11-27T10:00:00Z"), None, 1);
        assert_eq!(fires, vec![t("2026-11-29T09:00:00Z")], "7 is Sunday");
        let fires = next_fires(&trig("0 9 * * 5-7"), t("2026-11-27T10:00:00Z"), None, 2);
        assert_eq!(
            fires,
            vec![t("2026-11-28T09:00:00Z"), t("2026-11-29T09:00:00Z")]
        );
    }

    #[test]
    fn seconds_field_is_optional() {
        let fires = next_fires(&trig("*/2 * * * * *"), t("2026-11-24T00:00:00Z"), None, 3);
        assert_eq!(
            fires,
            vec![
                t("2026-11-24T00:00:02Z"),
                t("2026-11-24T00:00:04Z"),
                t("2026-11-24T00:00:06Z")
            ]
        );
    }

    #[test]
    fn people_times_and_timezones() {
        assert_eq!(parse_clock("10:14PM"), Ok((22, 14)));
        assert_eq!(parse_clock("12:05 am"), Ok((0, 5)));
        assert_eq!(parse_clock("12:05PM"), Ok((12, 5)));
        assert_eq!(parse_clock("22:14"), Ok((22, 14)));
        for bad in ["25:00", "13:00PM", "10:60", "noon", "0:30AM"] {
            assert!(parse_clock(bad).is_err(), "{bad}");
        }
        let cfg = parse_config(&[(
            "p.yaml".into(),
            "kind: SchedulePolicy\nmetadata: {name: w}\nspec: {weekly: {day: Thursday, time: \"10:13PM\"}, timezone: Europe/Paris}\n".into(),
        )])
        .unwrap();
        let p = &cfg.policies["w"];
        // 2026-11-26 is a Thursday; 22:13 in Paris (UTC+1 in winter) is 21:13 UTC.
        let fires = next_fires(&p.trigger, t("2026-11-24T00:00:00Z"), None, 1);
        assert_eq!(fires, vec![t("2026-11-26T21:13:00Z")]);
    }

    fn cfg_err(text: &str) -> String {
        parse_config(&[("sched.yaml".into(), text.into())])
            .unwrap_err()
            .to_string()
    }

    const POLICY: &str = "kind: SchedulePolicy\nmetadata: {name: hourly}\nspec:\n  cron: {expression: \"0 * * * *\"}\n  retain: {last: 24, daily: 7}\n";
    const SCHEDULE: &str = "---\nkind: BackupSchedule\nmetadata: {name: appns-hourly}\nspec:\n  schedulePolicyName: hourly\n  template: {namespaces: [appns]}\n";

    #[test]
    fn a_good_configuration_parses() {
        let cfg = parse_config(&[("s.yaml".into(), format!("{POLICY}{SCHEDULE}"))]).unwrap();
        let s = &cfg.schedules["appns-hourly"];
        assert!(s.template.include_volumes && s.template.include_resources && !s.suspend);
        assert_eq!(cfg.policy_of(s).retain.last, 24);
    }

    #[test]
    fn bad_configurations_name_file_object_and_field() {
        let cases = [
            (POLICY.replace("0 * * * *", "0 * * *"), "SchedulePolicy hourly: spec.cron.expression"),
            (POLICY.replace("0 * * * *", "61 * * * *"), "spec.cron.expression"),
            (format!("{POLICY}{}", SCHEDULE.replace("schedulePolicyName: hourly", "schedulePolicyName: daily")),
                "BackupSchedule appns-hourly: spec.schedulePolicyName: no SchedulePolicy named `daily` (defined: hourly)"),
            ("kind: SchedulePolicy\nmetadata: {name: d}\nspec: {daily: {time: \"25:00\"}}\n".into(), "SchedulePolicy d: spec.daily.time: `25:00`"),
            ("kind: SchedulePolicy\nmetadata: {name: w}\nspec: {weekly: {day: Funday, time: \"1:00PM\"}}\n".into(), "spec.weekly.day: `Funday` is not a day of the week"),
            (format!("{POLICY}{SCHEDULE}{SCHEDULE}"), "BackupSchedule appns-hourly: metadata.name: defined twice"),
            (POLICY.replace("retain: {last: 24, daily: 7}", "retain: {lst: 24}"), "unknown field `lst`"),
            (POLICY.replace("cron: {expression: \"0 * * * *\"}", "interval: {minutes: 0}"), "spec.interval"),
            (POLICY.replace("  retain", "  interval: {minutes: 5}\n  retain"), "exactly one of"),
            ("kind: SchedulePolicy\nmetadata: {name: m}\nspec: {monthly: {date: 32, time: \"8:05PM\"}}\n".into(), "spec.monthly.date"),
            (POLICY.replace("\"0 * * * *\"}", "\"0 * * * *\", timezone: Mars/Olympus}"), "spec.cron.timezone"),
        ];
        for (text, want) in cases {
            let e = cfg_err(&text);
            assert!(e.starts_with("sched.yaml: "), "{e}");
            assert!(e.contains(want), "want `{want}` in: {e}");
        }
    }

    #[test]
    fn missed_runs_are_caught_up_once() {
        let h = trig("0 * * * *");
        let now = t("2026-11-24T10:30:00Z");
        assert!(missed(&h, now, Some(t("2026-11-24T07:00:05Z"))));
        assert!(!missed(&h, now, Some(t("2026-11-24T10:00:01Z"))));
        assert!(
            !missed(&h, now, None),
            "a new schedule waits for its first fire"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The next fire is after `after`, matches the expression, and no matching minute lies
        /// between them (checked against a brute-force walk).
        #[test]
        fn cron_next_fire_is_the_first_matching_minute(
            secs in 1_700_000_000i64..1_900_000_000,
            minute in prop::sample::select(vec!["*", "0", "*/15", "5,35", "10-20/5"]),
            hour in prop::sample::select(vec!["*", "0", "9-17", "*/6"]),
            dow in prop::sample::select(vec!["*", "1-5", "0", "6,0"]),
        ) {
            let expr = format!("{minute} {hour} * * {dow}");
            let trigger = trig(&expr);
            let after = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let next = next_fires(&trigger, after, None, 1)[0];
            prop_assert!(next > after);
            let matches = |x: OffsetDateTime| {
                let field_ok = |f: &str, v: u32, max: u32| -> bool {
                    f.split(',').any(|part| {
                        let (range, step) = part.split_once('/').map(|(r, s)| (r, s.parse::<u32>().unwrap())).unwrap_or((part, 1));
                        let (lo, hi) = if range == "*" { (0, max) } else if let Some((a, b)) = range.split_once('-') { (a.parse().unwrap(), b.parse().unwrap()) } else { let a = range.parse().unwrap(); (a, if part.contains('/') { max } else { a }) };
                        v >= lo && v <= hi && (v - lo).is_multiple_of(step)
                    })
                };
                x.second() == 0
                    && field_ok(minute, x.minute() as u32, 59)
                    && field_ok(hour, x.hour() as u32, 23)
                    && field_ok(dow, x.weekday().number_days_from_sunday() as u32, 6)
            };
            prop_assert!(matches(next), "{expr}: {next} does not match");
            // Walk minute by minute (bounded: the sparsest expression fires weekly).
            let mut m = after.replace_second(0).unwrap().replace_nanosecond(0).unwrap() + time::Duration::minutes(1);
            while m < next {
                prop_assert!(!matches(m), "{expr}: {m} matches before {next}");
                m += time::Duration::minutes(1);
            }
        }

        /// Intervals: evenly spaced, the first after the last run (or now) by one period.
        #[test]
        fn interval_fires_are_evenly_spaced(secs in 1_700_000_000i64..1_900_000_000, minutes in 1u64..1440, back in 0i64..5000) {
            let d = Duration::from_secs(minutes * 60);
            let now = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let last = now - time::Duration::minutes(back);
            let f = next_fires(&Trigger::Interval(d), now, Some(last), 4);
            prop_assert!(f[0] > now);
            // Overdue: as soon as possible (the first instant after now).
            prop_assert!(f[0] <= (now + time::Duration::nanoseconds(1)).max(last + time::Duration::try_from(d).unwrap()));
            for w in f.windows(2) {
                prop_assert_eq!(w[1] - w[0], time::Duration::try_from(d).unwrap());
            }
        }

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
                for (why, n) in [("last", last), ("hourly", hourly), ("daily", daily), ("weekly", weekly), ("monthly", monthly)] {
                    prop_assert!(kept.iter().filter(|k| k.contains(why)).count() as u32 <= n);
                }
                let more = Retain { daily: daily + 1, ..r };
                let kept_more = retain(&cands, &more);
                for i in 0..cands.len() {
                    prop_assert!(kept[i].is_empty() || !kept_more[i].is_empty());
                }
            }
        }
    }
}
