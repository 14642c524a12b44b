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
    cron_trigger, parse_clock, parse_tz, parse_weekday, CronError, Trigger, MAX_INTERVAL,
};

/// The `apiVersion` of `SchedulePolicy` and `BackupSchedule` (which may also be left out).
pub const SCHEDULE_API_VERSION: &str = crate::hooks::RULE_API_VERSION;

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
    spec: serde_yaml_ng::Value,
}

use crate::crd::{
    AtSpec as AtDoc, BackupScheduleSpec as ScheduleSpec, IntervalSpec as IntervalDoc,
    SchedulePolicySpec as PolicySpec,
};

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

/// A policy's spec (a file's document, or a `SchedulePolicy` object), validated; `path` is
/// where it came from, for messages.
pub fn policy_of(path: &str, name: &str, spec: PolicySpec) -> Result<Policy, ScheduleError> {
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
        Trigger::Interval(interval_of(&at, &i)?)
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
    if spec.retain.is_some_and(|r| r.keeps_everything()) {
        return Err(at.bad(
            "spec.retain",
            "every count is 0, which would keep every backup; leave retain out to keep every \
             backup, or give at least one count above 0 (e.g. {last: 24})",
        ));
    }
    Ok(Policy {
        name: name.to_string(),
        trigger,
        retain: spec.retain.unwrap_or_default(),
    })
}

/// An interval's period: more than 0, at most [`MAX_INTERVAL`].
fn interval_of(at: &At, i: &IntervalDoc) -> Result<Duration, ScheduleError> {
    let secs = i
        .hours
        .checked_mul(3600)
        .and_then(|h| h.checked_add(i.minutes.checked_mul(60)?))
        .and_then(|s| s.checked_add(i.seconds));
    let max_days = MAX_INTERVAL.as_secs() / 86400;
    match secs.map(Duration::from_secs) {
        Some(d) if d.is_zero() => {
            Err(at.bad("spec.interval", "must be more than 0 (e.g. {minutes: 15})"))
        }
        Some(d) if d <= MAX_INTERVAL => Ok(d),
        _ => Err(at.bad(
            "spec.interval",
            format!(
                "is more than {max_days} days ({} hours), the longest interval; use a cron or \
                 monthly policy for rarer backups",
                max_days * 24
            ),
        )),
    }
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
        for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v = serde_yaml_ng::Value::deserialize(d).map_err(|e| ScheduleError::Read {
                path: path.clone(),
                reason: format!("not YAML: {e}"),
            })?;
            if v.is_null() {
                continue;
            }
            let doc: Doc = serde_yaml_ng::from_value(v)
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
    let name = doc.metadata.name;
    let object = format!("{} {name}", doc.kind);
    if let Some(v) = doc.api_version.filter(|v| v != SCHEDULE_API_VERSION) {
        return Err(invalid(
            path,
            &object,
            "apiVersion",
            format!("`{v}` is unknown; write apiVersion: {SCHEDULE_API_VERSION} (or leave it out)"),
        ));
    }
    let spec_err = |e: serde_yaml_ng::Error| invalid(path, &object, "spec", e);
    match doc.kind.as_str() {
        "SchedulePolicy" => {
            let spec: PolicySpec = serde_yaml_ng::from_value(doc.spec).map_err(spec_err)?;
            let p = policy_of(path, &name, spec)?;
            if cfg.policies.insert(name, p).is_some() {
                return Err(invalid(path, &object, "metadata.name", "defined twice"));
            }
            Ok(None)
        }
        "BackupSchedule" => Ok(Some(Pending {
            path: path.to_string(),
            name,
            spec: serde_yaml_ng::from_value(doc.spec).map_err(spec_err)?,
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
    schedule_of_spec(&p.path, &p.name, &p.spec, &cfg.policies)
}

/// A schedule's spec (a file's document, or a `BackupSchedule` object) checked against the
/// policies it may name; `path` is where it came from, for messages.
pub fn schedule_of_spec(
    path: &str,
    name: &str,
    spec: &ScheduleSpec,
    policies: &BTreeMap<String, Policy>,
) -> Result<Schedule, ScheduleError> {
    let obj = format!("BackupSchedule {name}");
    if !policies.contains_key(&spec.schedule_policy_name) {
        let known: Vec<&str> = policies.keys().map(String::as_str).collect();
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
    crate::util::check_name(crate::util::NameKind::Schedule, name)
        .map_err(|e| invalid(path, &obj, "metadata.name", e))?;
    Ok(Schedule {
        name: name.to_string(),
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
            (POLICY.replace("cron: {expression: \"0 * * * *\"}", "interval: {hours: 8785}"), "SchedulePolicy hourly: spec.interval: is more than 366 days (8784 hours), the longest interval"),
            (POLICY.replace("cron: {expression: \"0 * * * *\"}", "interval: {hours: 18446744073709551615, minutes: 18446744073709551615}"), "spec.interval: is more than 366 days"),
            (POLICY.replace("cron: {expression: \"0 * * * *\"}", "interval: {minutes: -5}"), "SchedulePolicy hourly: spec: invalid value"),
            (POLICY.replace("{last: 24, daily: 7}", "{}"), "SchedulePolicy hourly: spec.retain: every count is 0, which would keep every backup; leave retain out"),
            (POLICY.replace("{last: 24, daily: 7}", "{last: 0, hourly: 0, daily: 0, weekly: 0, monthly: 0}"), "spec.retain: every count is 0"),
            (POLICY.replace("{last: 24, daily: 7}", "{last: -1}"), "SchedulePolicy hourly: spec: invalid value"),
            (format!("apiVersion: v1\n{POLICY}"), "SchedulePolicy hourly: apiVersion: `v1` is unknown; write apiVersion: lifeboat.dev/v1alpha1"),
            (format!("{POLICY}---\napiVersion: lifeboat.dev/v2\n{}", &SCHEDULE[4..]), "BackupSchedule appns-hourly: apiVersion: `lifeboat.dev/v2` is unknown"),
            (POLICY.replace("0 * * * *", "0 0 30 2 *"), "SchedulePolicy hourly: spec.cron.expression: `0 0 30 2 *` never fires"),
            (POLICY.replace("0 * * * *", "0 0 31 4,6,9,11 *"), "never fires"),
            (POLICY.replace("0 * * * *", "60 * * * *"), "SchedulePolicy hourly: spec.cron.expression: `60 * * * *`: minute `60` is out of range; a minute is 0 to 59"),
        ];
        for (text, want) in cases {
            let e = cfg_err(&text);
            assert!(e.starts_with("sched.yaml: "), "{e}");
            assert!(e.contains(want), "want `{want}` in: {e}");
        }
    }

    #[test]
    fn the_api_version_may_be_given_or_left_out_and_retain_may_be_left_out() {
        let text = format!("apiVersion: {SCHEDULE_API_VERSION}\n{POLICY}{SCHEDULE}");
        assert!(parse_config(&[("s.yaml".into(), text)]).is_ok());
        let cfg = parse_config(&[(
            "s.yaml".into(),
            "kind: SchedulePolicy\nmetadata: {name: y}\nspec: {interval: {hours: 8784}}\n".into(),
        )])
        .unwrap();
        assert!(cfg.policies["y"].retain.keeps_everything());
        // Leap days fire in leap years; the 31st in the months that have it.
        for expr in ["0 0 29 2 *", "0 0 31 * *", "0 9 * * 5-7", "0 0 29 2 1"] {
            let text = POLICY.replace("0 * * * *", expr);
            assert!(parse_config(&[("s.yaml".into(), text)]).is_ok(), "{expr}");
        }
    }

    use proptest::prelude::*;

    /// Cron fields from the edges of every range, steps, ranges, names and junk.
    fn cron_field() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "*",
            "?",
            "0",
            "1",
            "2",
            "5",
            "7",
            "8",
            "12",
            "13",
            "23",
            "24",
            "28",
            "29",
            "30",
            "31",
            "32",
            "59",
            "60",
            "61",
            "4294967296",
            "MON",
            "sun",
            "JAN",
            "feb",
            "L",
            "",
            "-",
            "1-",
            "-1",
            "5-3",
            "0-7",
            "1-5",
            "6-0",
        ]);
        let steps =
            prop::sample::select(vec!["", "/0", "/1", "/2", "/7", "/15", "/59", "/60", "/x"]);
        prop::collection::vec((atoms, steps), 1..3).prop_map(|parts| {
            parts
                .into_iter()
                .map(|(a, s)| format!("{a}{s}"))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// A policy document of every kind, with values from anywhere in their types' ranges.
    fn policy_spec() -> impl Strategy<Value = String> {
        let tz = prop::sample::select(vec![
            "UTC",
            "Europe/Paris",
            "America/New_York",
            "Australia/Lord_Howe",
            "Pacific/Apia",
            "Asia/Kathmandu",
        ]);
        let n = prop_oneof![
            0u64..100,
            Just(u64::MAX),
            any::<u64>(),
            Just(8784),
            Just(31_622_400)
        ];
        prop_oneof![
            (prop::collection::vec(cron_field(), 5..=6), tz.clone()).prop_map(|(f, tz)| format!(
                "{{cron: {{expression: \"{}\", timezone: {tz}}}}}",
                f.join(" ")
            )),
            (n.clone(), n.clone(), n).prop_map(|(s, m, h)| format!(
                "{{interval: {{seconds: {s}, minutes: {m}, hours: {h}}}}}"
            )),
            (0u32..40, 0u32..25, 0u32..61, tz).prop_map(|(date, h, m, tz)| format!(
                "{{monthly: {{date: {date}, time: \"{h}:{m:02}\"}}, timezone: {tz}}}"
            )),
        ]
    }

    fn any_time() -> impl Strategy<Value = OffsetDateTime> {
        let (min, max) = (
            time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp(),
            time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp(),
        );
        prop_oneof![
            min..=max,
            Just(min),
            Just(max),
            946_684_800i64..4_102_444_800, // 2000 to 2100, where cron fires
        ]
        .prop_map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever a configuration says, once it parses, its fire times never panic: they are
        /// after `after`, in order, and at most `count`.
        #[test]
        fn no_parsed_configuration_makes_fire_times_panic(
            spec in policy_spec(),
            after in any_time(),
            last in prop::option::of(any_time()),
            count in 0usize..20,
        ) {
            let text = format!("kind: SchedulePolicy\nmetadata: {{name: p}}\nspec: {spec}\n");
            let Ok(cfg) = parse_config(&[("p.yaml".into(), text)]) else {
                return Ok(());
            };
            let trigger = &cfg.policies["p"].trigger;
            let fires = next_fires(trigger, after, last, count);
            prop_assert!(fires.len() <= count);
            prop_assert!(fires.iter().all(|f| *f > after), "{fires:?} after {after}");
            prop_assert!(fires.windows(2).all(|w| w[0] < w[1]), "{fires:?}");
            let _ = crate::scheduler::cron::missed(trigger, after, last);
            let _ = crate::scheduler::cron::previous_fire(trigger, after);
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
