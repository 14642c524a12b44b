//! Schedules, pure: takes `SchedulePolicy` and `BackupSchedule` documents (YAML, shaped as
//! Kubernetes objects); gives a validated, typed [`Config`]: policies (a [`Trigger`] and a
//! [`Retain`]) and schedules (a policy and a [`Template`] of what each run backs up). No IO
//! beyond reading the configuration files. Refuses the whole configuration at the first
//! problem, naming the file, the object and the field. Fire times are [`super::cron`]'s;
//! retention is the application layer's ([`crate::app::retention`]).
//!
//! Times of a policy are in its `timezone` (default UTC).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::app::retention::Retain;
use crate::scheduler::cron::{
    cron_trigger, parse_clock, parse_tz, parse_weekday, CronError, Trigger,
};

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

// ----- typed settings -----------------------------------------------------------------------

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

impl Default for Template {
    /// Nothing named, everything included (what a stored template that does not read gives).
    fn default() -> Template {
        Template {
            namespaces: vec![],
            selector: String::new(),
            pre_rules: vec![],
            post_rules: vec![],
            include_resources: true,
            include_volumes: true,
        }
    }
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

/// The backup name of a run: the schedule's name and the fire time (UTC), `-YYYYMMDD-HHMMSS`
/// ([`crate::util::RUN_SUFFIX_LEN`] characters, which a schedule's name leaves room for).
pub fn backup_name(schedule: &str, fire: OffsetDateTime) -> String {
    let t = fire.to_offset(time::UtcOffset::UTC);
    format!(
        "{schedule}-{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn invalid(path: &str, object: &str, field: &str, reason: impl ToString) -> ScheduleError {
    ScheduleError::Invalid {
        path: path.to_string(),
        object: object.to_string(),
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

// ----- policies -----------------------------------------------------------------------------

/// Where a policy's errors point: the file and the object.
struct At<'a> {
    path: &'a str,
    object: String,
}

impl At<'_> {
    fn field(&self, field: &str) -> impl Fn(CronError) -> ScheduleError + '_ {
        let field = field.to_string();
        move |e| invalid(self.path, &self.object, &field, e)
    }

    fn bad(&self, field: &str, reason: impl ToString) -> ScheduleError {
        invalid(self.path, &self.object, field, reason)
    }
}

fn policy_of(path: &str, name: &str, spec: PolicySpec) -> Result<Policy, ScheduleError> {
    let at = At {
        path,
        object: format!("SchedulePolicy {name}"),
    };
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
        return Err(at.bad(
            "spec",
            "give exactly one of cron, interval, daily, weekly, monthly",
        ));
    }
    let trigger = if let Some(c) = spec.cron {
        let tz = parse_tz(c.timezone.as_deref().or(spec.timezone.as_deref()))
            .map_err(at.field("spec.cron.timezone"))?;
        cron_trigger(c.expression, tz).map_err(at.field("spec.cron.expression"))?
    } else if let Some(i) = spec.interval {
        let d = Duration::from_secs(i.seconds + 60 * i.minutes + 3600 * i.hours);
        if d.is_zero() {
            return Err(at.bad("spec.interval", "must be more than 0 (e.g. {minutes: 15})"));
        }
        Trigger::Interval(d)
    } else {
        let tz = parse_tz(spec.timezone.as_deref()).map_err(at.field("spec.timezone"))?;
        let (field, a) = match (spec.daily, spec.weekly, spec.monthly) {
            (Some(a), _, _) => ("spec.daily", a),
            (_, Some(a), _) => ("spec.weekly", a),
            (_, _, Some(a)) => ("spec.monthly", a),
            _ => unreachable!("one was given"),
        };
        cron_trigger(people_cron(&at, field, &a)?, tz).map_err(at.field(field))?
    };
    Ok(Policy {
        name: name.to_string(),
        trigger,
        retain: spec.retain.unwrap_or_default(),
    })
}

/// The cron expression of `daily`, `weekly` or `monthly` (`field`).
fn people_cron(at: &At, field: &str, a: &AtDoc) -> Result<String, ScheduleError> {
    let (h, m) = parse_clock(&a.time).map_err(at.field(&format!("{field}.time")))?;
    Ok(match field {
        "spec.daily" => format!("0 {m} {h} * * *"),
        "spec.weekly" => {
            let day = a
                .day
                .as_deref()
                .ok_or_else(|| at.bad("spec.weekly.day", "missing (e.g. Thursday)"))?;
            let day = parse_weekday(day).map_err(at.field("spec.weekly.day"))?;
            format!("0 {m} {h} * * {day}")
        }
        _ => {
            let date = a
                .date
                .ok_or_else(|| at.bad("spec.monthly.date", "missing (1 to 31)"))?;
            if !(1..=31).contains(&date) {
                return Err(at.bad(
                    "spec.monthly.date",
                    format!("{date} is not a day of the month (1 to 31)"),
                ));
            }
            format!("0 {m} {h} {date} * *")
        }
    })
}

// ----- files --------------------------------------------------------------------------------

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, ScheduleError> {
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

/// The directory that the rule paths of a configuration's templates are relative to: the
/// configuration itself when it is a directory, else the directory of its file.
pub fn config_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(PathBuf::from).unwrap_or_default()
    }
}

// ----- the whole configuration --------------------------------------------------------------

/// A `BackupSchedule` read, to be checked once every policy is known.
struct Pending {
    path: String,
    name: String,
    spec: ScheduleSpec,
}

/// [`load_config`] on (file name, text) pairs.
pub fn parse_config(files: &[(String, String)]) -> Result<Config, ScheduleError> {
    let mut cfg = Config::default();
    let mut pending = Vec::new();
    for (path, text) in files {
        for (i, d) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_yaml::Value::deserialize(d).map_err(|e| ScheduleError::Read {
                path: path.clone(),
                reason: format!("not YAML: {e}"),
            })?;
            if v.is_null() {
                continue;
            }
            let doc: Doc = serde_yaml::from_value(v)
                .map_err(|e| invalid(path, &format!("document {}", i + 1), "(object)", e))?;
            if let Some(p) = read_document(path, doc, &mut cfg)? {
                pending.push(p);
            }
        }
    }
    for p in pending {
        let s = schedule_of(&p, &cfg)?;
        if let Some(first) = cfg.schedules.insert(p.name.clone(), s) {
            return Err(invalid(
                &p.path,
                &format!("BackupSchedule {}", p.name),
                "metadata.name",
                format!("defined twice (also in {})", first.file),
            ));
        }
    }
    Ok(cfg)
}

/// One document: a policy goes into `cfg` at once, a schedule is given back for later.
fn read_document(path: &str, doc: Doc, cfg: &mut Config) -> Result<Option<Pending>, ScheduleError> {
    let _ = doc.api_version;
    let name = doc.metadata.name;
    let object = format!("{} {name}", doc.kind);
    let spec_err = |e: serde_yaml::Error| invalid(path, &object, "spec", e);
    match doc.kind.as_str() {
        "SchedulePolicy" => {
            let spec: PolicySpec = serde_yaml::from_value(doc.spec).map_err(spec_err)?;
            let p = policy_of(path, &name, spec)?;
            if cfg.policies.insert(name, p).is_some() {
                return Err(invalid(path, &object, "metadata.name", "defined twice"));
            }
            Ok(None)
        }
        "BackupSchedule" => Ok(Some(Pending {
            path: path.to_string(),
            name,
            spec: serde_yaml::from_value(doc.spec).map_err(spec_err)?,
        })),
        _ => Err(invalid(
            path,
            &object,
            "kind",
            "unknown; the configuration holds SchedulePolicy and BackupSchedule objects",
        )),
    }
}

/// A schedule, checked against the policies and the rule for names.
fn schedule_of(p: &Pending, cfg: &Config) -> Result<Schedule, ScheduleError> {
    let (path, spec) = (p.path.as_str(), &p.spec);
    let obj = format!("BackupSchedule {}", p.name);
    if !cfg.policies.contains_key(&spec.schedule_policy_name) {
        let known: Vec<&str> = cfg.policies.keys().map(String::as_str).collect();
        return Err(invalid(
            path,
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
    let t = &spec.template;
    if t.namespaces.is_empty() {
        return Err(invalid(
            path,
            &obj,
            "spec.template.namespaces",
            "is empty; name at least one",
        ));
    }
    if !t.include_resources && !t.include_volumes {
        return Err(invalid(
            path,
            &obj,
            "spec.template",
            "includeResources and includeVolumes are both false: nothing to back up",
        ));
    }
    crate::util::check_name(crate::util::NameKind::Schedule, &p.name)
        .map_err(|e| invalid(path, &obj, "metadata.name", e))?;
    Ok(Schedule {
        name: p.name.clone(),
        policy: spec.schedule_policy_name.clone(),
        suspend: spec.suspend,
        template: Template {
            namespaces: t.namespaces.clone(),
            selector: t.selector.clone(),
            pre_rules: t.pre_rules.clone(),
            post_rules: t.post_rules.clone(),
            include_resources: t.include_resources,
            include_volumes: t.include_volumes,
        },
        file: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cron::next_fires;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn a_weekly_policy_fires_in_its_timezone() {
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
            ("kind: SchedulePolicy\nmetadata: {name: w}\nspec: {weekly: {day: Thé, time: \"1:00PM\"}}\n".into(), "SchedulePolicy w: spec.weekly.day: `Thé` is not a day of the week"),
            ("kind: SchedulePolicy\nmetadata: {name: w}\nspec: {weekly: {time: \"1:00PM\"}}\n".into(), "spec.weekly.day: missing"),
            ("kind: SchedulePolicy\nmetadata: {name: m}\nspec: {monthly: {time: \"1:00PM\"}}\n".into(), "spec.monthly.date: missing"),
            ("kind: SchedulePolicy\nmetadata: {name: w}\nspec: {weekly: {day: Monday, time: \"1:00PM\"}, timezone: Mars/Olympus}\n".into(), "SchedulePolicy w: spec.timezone"),
            (format!("{POLICY}---\n{POLICY}"), "SchedulePolicy hourly: metadata.name: defined twice"),
            ("kind: Rule\nmetadata: {name: r}\nspec: {}\n".into(), "Rule r: kind: unknown"),
            (format!("{POLICY}{}", SCHEDULE.replace("appns-hourly", "a/b")), "BackupSchedule a/b: metadata.name: invalid schedule name `a/b`"),
        ];
        for (text, want) in cases {
            let e = cfg_err(&text);
            assert!(e.starts_with("sched.yaml: "), "{e}");
            assert!(e.contains(want), "want `{want}` in: {e}");
        }
    }

    #[test]
    fn a_run_adds_exactly_the_suffix_a_schedule_name_leaves_room_for() {
        let name = backup_name("s", t("2026-01-01T00:00:00Z"));
        assert_eq!(name, "s-20260101-000000");
        assert_eq!(name.len() - 1, crate::util::RUN_SUFFIX_LEN);
        // Fire times in another offset are named in UTC.
        assert_eq!(
            backup_name("s", t("2026-01-01T01:02:03+01:00")),
            "s-20260101-000203"
        );
    }

    #[test]
    fn rule_paths_are_relative_to_the_configuration() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s.yaml");
        std::fs::write(&f, "").unwrap();
        assert_eq!(config_dir(d.path()), d.path());
        assert_eq!(config_dir(&f), d.path());
    }
}
