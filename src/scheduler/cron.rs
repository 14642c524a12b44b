//! Fire times, pure: takes cron expressions, times of day, weekdays and time zones as people
//! write them; gives a typed [`Trigger`] and its fire times ([`next_fires`], [`previous_fire`],
//! [`missed`]). No IO and no clock: every function takes "now" as an argument, so the
//! arithmetic is tested with generated times. Must not know of files, documents or the catalog.
//!
//! Cron expressions have five fields (minute hour day-of-month month day-of-week, as crontab)
//! or six with a leading seconds field. Day-of-week numbers follow crontab: 0 and 7 are Sunday.
//! `daily`, `weekly` and `monthly` are cron expressions written for people; a `monthly` date
//! past the end of a month (30 in February) fires in the months that have it.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Why a time, a day, an expression or a time zone does not parse. The texts are what the
/// configuration's errors say after the file, the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("`{0}` is not a time of day; write e.g. 10:14PM or 22:14")]
    Clock(String),
    #[error("`{0}` is not a day of the week; write e.g. Thursday")]
    Weekday(String),
    #[error("`{expression}` has {fields} fields; write 5 (minute hour day month weekday) or 6 (seconds first)")]
    Fields { expression: String, fields: usize },
    #[error("`{expression}` is not a valid cron expression: {reason}")]
    Expression { expression: String, reason: String },
    #[error("`{expression}`: {field} `{value}` is out of range; {}", field.range())]
    OutOfRange {
        expression: String,
        field: CronField,
        value: String,
    },
    #[error("`{expression}`: the {field} step `{value}` is out of range; a step is 1 to {}", field.max())]
    Step {
        expression: String,
        field: CronField,
        value: String,
    },
    #[error("`{expression}`: the {field} range `{value}` runs backwards; write the smaller number first")]
    Backwards {
        expression: String,
        field: CronField,
        value: String,
    },
    #[error("`{0}` never fires: no date has that day of the month in that month (e.g. 30 February); check the day of month, month and day of week")]
    NeverFires(String),
    #[error("`{0}` is not a time zone; use an IANA name such as UTC or Europe/Paris")]
    TimeZone(String),
}

/// A field of a cron expression (six: seconds first), for errors that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl CronField {
    const ALL: [CronField; 6] = [
        CronField::Second,
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];

    fn min(self) -> u32 {
        match self {
            CronField::DayOfMonth | CronField::Month => 1,
            _ => 0,
        }
    }

    fn max(self) -> u32 {
        match self {
            CronField::Second | CronField::Minute => 59,
            CronField::Hour => 23,
            CronField::DayOfMonth => 31,
            CronField::Month => 12,
            CronField::DayOfWeek => 7,
        }
    }

    /// The valid values, as the errors say them.
    fn range(self) -> String {
        let (min, max) = (self.min(), self.max());
        match self {
            CronField::Month => format!("a month is {min} to {max} (or JAN to DEC)"),
            CronField::DayOfWeek => {
                format!("a day of the week is {min} to {max} (0 and 7 are Sunday; or SUN to SAT)")
            }
            f => format!(
                "a{} {f} is {min} to {max}",
                if f == CronField::Hour { "n" } else { "" }
            ),
        }
    }
}

impl std::fmt::Display for CronField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day of the month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day of the week",
        })
    }
}

/// The longest `interval` a policy may have; anything rarer is a `cron` or `monthly` policy.
pub const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Checks the numbers of one field (`*`, `N`, `N-M`, each with an optional `/STEP`, comma
/// separated) against the field's range; names and other syntax are the `cron` crate's to
/// read. The crate's own messages for these are off by one ("must be less than 59").
fn check_field(expression: &str, field: CronField, text: &str) -> Result<(), CronError> {
    let (expression, value) = (expression.to_string(), |v: &str| v.to_string());
    // Some(Ok(n)) for a number in range, Some(Err) for one out of it, None for a name or `*`.
    let number = |t: &str| -> Option<Result<u32, ()>> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| {
            t.parse::<u32>()
                .ok()
                .filter(|n| (field.min()..=field.max()).contains(n))
                .ok_or(())
        })
    };
    for part in text.split(',') {
        let (body, step) = match part.split_once('/') {
            Some((b, s)) => (b, Some(s)),
            None => (part, None),
        };
        if let Some(s) = step.filter(|s| number(s).is_some()) {
            if !matches!(s.parse::<u32>(), Ok(n) if (1..=field.max()).contains(&n)) {
                return Err(CronError::Step {
                    expression,
                    field,
                    value: value(s),
                });
            }
        }
        let (a, b) = match body.split_once('-') {
            Some((a, b)) => (number(a), number(b)),
            None => (number(body), None),
        };
        for (n, end) in [(a, body.split('-').next()), (b, body.split('-').nth(1))] {
            if let (Some(Err(())), Some(end)) = (n, end) {
                return Err(CronError::OutOfRange {
                    expression,
                    field,
                    value: value(end),
                });
            }
        }
        if let (Some(Ok(a)), Some(Ok(b))) = (a, b) {
            // 5-7 is Friday to Sunday (see `dow_names`).
            if a > b {
                return Err(CronError::Backwards {
                    expression,
                    field,
                    value: value(body),
                });
            }
        }
    }
    Ok(())
}

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

/// The kind of a [`Trigger`], as the catalog stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerKind {
    Cron,
    Interval,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Cron => "cron",
            TriggerKind::Interval => "interval",
        }
    }

    /// The stored text; anything but `interval` is a cron trigger (as it always was read).
    pub fn parse(text: &str) -> TriggerKind {
        match text {
            "interval" => TriggerKind::Interval,
            _ => TriggerKind::Cron,
        }
    }
}

impl Trigger {
    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::Cron { .. } => TriggerKind::Cron,
            Trigger::Interval(_) => TriggerKind::Interval,
        }
    }
}

/// `10:14PM`, `8:05 am`, `22:14` → (hour, minute).
pub fn parse_clock(text: &str) -> Result<(u32, u32), CronError> {
    let t = text.trim().to_ascii_uppercase();
    let (body, pm) = if let Some(b) = t.strip_suffix("PM") {
        (b.trim(), Some(true))
    } else if let Some(b) = t.strip_suffix("AM") {
        (b.trim(), Some(false))
    } else {
        (t.as_str(), None)
    };
    let bad = || CronError::Clock(text.to_string());
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

const WEEKDAY_NAMES: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

/// `Thursday`, `thu`, `THURS` → `Thu` (the name the `cron` crate reads).
pub fn parse_weekday(text: &str) -> Result<&'static str, CronError> {
    let t = text.trim().to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .find(|d| {
            // `get`, not `[..3]`: a name whose third byte is inside a character (`thé`)
            // is not a day, not a panic.
            t.get(..3) == Some(d.to_ascii_lowercase().as_str())
                && WEEKDAY_NAMES.iter().any(|f| f.starts_with(&t))
        })
        .copied()
        .ok_or_else(|| CronError::Weekday(text.to_string()))
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
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, CronError> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let mut full: Vec<String> = match fields.len() {
        5 => std::iter::once("0")
            .chain(fields.iter().copied())
            .map(str::to_string)
            .collect(),
        6 => fields.iter().map(|s| s.to_string()).collect(),
        n => {
            return Err(CronError::Fields {
                expression: expression.to_string(),
                fields: n,
            })
        }
    };
    for (field, text) in CronField::ALL.into_iter().zip(&full) {
        check_field(expression, field, text)?;
    }
    full[5] = dow_names(&full[5]);
    let schedule =
        cron::Schedule::from_str(&full.join(" ")).map_err(|e| CronError::Expression {
            expression: expression.to_string(),
            reason: e.to_string(),
        })?;
    // Any expression that fires at all does so within a few years of any date (the calendar
    // repeats); the crate's calendar ends in 2100.
    let reference = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    if schedule.after(&reference).next().is_none() {
        return Err(CronError::NeverFires(expression.to_string()));
    }
    Ok(schedule)
}

/// An IANA time zone name; none given is UTC.
pub fn parse_tz(text: Option<&str>) -> Result<chrono_tz::Tz, CronError> {
    match text {
        None => Ok(chrono_tz::UTC),
        Some(t) => t.parse().map_err(|_| CronError::TimeZone(t.to_string())),
    }
}

/// A cron trigger from an expression, in a time zone.
pub fn cron_trigger(expression: String, tz: chrono_tz::Tz) -> Result<Trigger, CronError> {
    let schedule = parse_cron(&expression)?;
    Ok(Trigger::Cron {
        expression,
        schedule: Box::new(schedule),
        tz,
    })
}

pub fn to_chrono(t: OffsetDateTime) -> DateTime<Utc> {
    // chrono's range holds all of `time`'s.
    Utc.timestamp_opt(t.unix_timestamp(), t.nanosecond())
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// None past `time`'s range (year 9999).
pub fn from_chrono(t: DateTime<Utc>) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .ok()?
        .replace_nanosecond(t.timestamp_subsec_nanos())
        .ok()
}

/// The next `count` fire times strictly after `after`. For an interval, the first is one
/// period after the previous run's start when there was one (or `after`, when that is already
/// past), else `after` itself plus one period. Fewer (or none) when the rest lie past the end
/// of the calendar; never a panic, whatever the trigger and the times.
pub fn next_fires(
    trigger: &Trigger,
    after: OffsetDateTime,
    last_run: Option<OffsetDateTime>,
    count: usize,
) -> Vec<OffsetDateTime> {
    match trigger {
        Trigger::Cron { schedule, tz, .. } => {
            // The crate's calendar starts in 1970.
            let start = OffsetDateTime::UNIX_EPOCH - time::Duration::SECOND;
            let from = to_chrono(after.max(start)).with_timezone(tz);
            schedule
                .after(&from)
                .take(count)
                .map_while(|t| from_chrono(t.with_timezone(&Utc)))
                .filter(|t| *t > after)
                .collect()
        }
        Trigger::Interval(d) => {
            let Ok(d) = time::Duration::try_from(*d) else {
                return vec![];
            };
            let first = match last_run.map(|l| l.checked_add(d)) {
                Some(Some(next)) if next > after => Some(next),
                Some(Some(_)) => after.checked_add(time::Duration::nanoseconds(1)),
                Some(None) => None,
                None => after.checked_add(d),
            };
            std::iter::successors(first, |t| t.checked_add(d))
                .take(count)
                .collect()
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
                .and_then(|t| from_chrono(t.with_timezone(&Utc)))
                .filter(|t| *t <= at && at - *t < time::Duration::days(366))
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
            // An interval longer than `time` can hold has never passed.
            Trigger::Interval(d) => time::Duration::try_from(*d).is_ok_and(|d| now - l > d),
            _ => false,
        },
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn trig(expr: &str) -> Trigger {
        cron_trigger(expr.into(), chrono_tz::UTC).unwrap()
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
    fn people_times_days_and_timezones() {
        assert_eq!(parse_clock("10:14PM"), Ok((22, 14)));
        assert_eq!(parse_clock("12:05 am"), Ok((0, 5)));
        assert_eq!(parse_clock("12:05PM"), Ok((12, 5)));
        assert_eq!(parse_clock("22:14"), Ok((22, 14)));
        for bad in ["25:00", "13:00PM", "10:60", "noon", "0:30AM"] {
            assert!(parse_clock(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_weekday("Thursday"), Ok("Thu"));
        assert_eq!(parse_weekday("thu"), Ok("Thu"));
        assert!(parse_weekday("Thorsday").is_err());
        assert!(parse_weekday("th").is_err());
        // A multi-byte character across the third byte was a panic (slicing inside it).
        for bad in ["thé", "日曜日", "mé"] {
            assert_eq!(
                parse_weekday(bad),
                Err(CronError::Weekday(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(parse_tz(None), Ok(chrono_tz::UTC));
        assert_eq!(
            parse_tz(Some("Mars/Olympus")).unwrap_err().to_string(),
            "`Mars/Olympus` is not a time zone; use an IANA name such as UTC or Europe/Paris"
        );
        // 2026-11-26 is a Thursday; 22:13 in Paris (UTC+1 in winter) is 21:13 UTC.
        let paris = cron_trigger(
            "0 13 22 * * Thu".into(),
            parse_tz(Some("Europe/Paris")).unwrap(),
        )
        .unwrap();
        let fires = next_fires(&paris, t("2026-11-24T00:00:00Z"), None, 1);
        assert_eq!(fires, vec![t("2026-11-26T21:13:00Z")]);
    }

    #[test]
    fn bad_expressions_say_why() {
        let e = parse_cron("0 * * *").unwrap_err();
        assert_eq!(
            e,
            CronError::Fields {
                expression: "0 * * *".into(),
                fields: 4
            }
        );
        assert!(e
            .to_string()
            .contains("write 5 (minute hour day month weekday)"));
        let e = parse_cron("0 0 * * * Funday").unwrap_err().to_string();
        assert!(
            e.starts_with("`0 0 * * * Funday` is not a valid cron expression: "),
            "{e}"
        );
    }

    /// Each field's own range, by name: the `cron` crate said "Minutes must be less than 59"
    /// of 60 (which is off by one) and nothing of which field.
    #[test]
    fn out_of_range_numbers_name_the_field_and_its_range() {
        let cases = [
            ("60 * * * *", "minute `60` is out of range; a minute is 0 to 59"),
            ("61 * * * *", "minute `61` is out of range; a minute is 0 to 59"),
            ("0-60 * * * *", "minute `60` is out of range; a minute is 0 to 59"),
            ("0 24 * * *", "hour `24` is out of range; an hour is 0 to 23"),
            ("0 0 0 * *", "day of the month `0` is out of range; a day of the month is 1 to 31"),
            ("0 0 32 * *", "day of the month `32` is out of range"),
            ("0 0 * 13 *", "month `13` is out of range; a month is 1 to 12 (or JAN to DEC)"),
            ("0 0 * 0 *", "month `0` is out of range"),
            ("0 0 * * 8", "day of the week `8` is out of range; a day of the week is 0 to 7 (0 and 7 are Sunday; or SUN to SAT)"),
            ("60 0 0 * * *", "second `60` is out of range; a second is 0 to 59"),
            ("0 0 * * 4294967296", "day of the week `4294967296` is out of range"),
            ("*/0 * * * *", "the minute step `0` is out of range; a step is 1 to 59"),
            ("*/60 * * * *", "the minute step `60` is out of range; a step is 1 to 59"),
            ("0 */24 * * *", "the hour step `24` is out of range; a step is 1 to 23"),
            ("30-10 * * * *", "the minute range `30-10` runs backwards; write the smaller number first"),
            ("0 0 30 2 *", "`0 0 30 2 *` never fires: no date has that day of the month in that month"),
            ("0 0 31 2,4 *", "never fires"),
        ];
        for (expr, want) in cases {
            let e = parse_cron(expr).unwrap_err().to_string();
            assert!(e.contains(want), "{expr}: want `{want}` in: {e}");
            assert!(e.starts_with(&format!("`{expr}`")), "{e}");
        }
        for good in [
            "59 23 31 12 7",
            "0-59 0-23 1-31 1-12 0-7",
            "*/59 */23 */31 */12 *",
            "0 9 * * 5-7",
            "0 0 29 2 *",
        ] {
            assert!(parse_cron(good).is_ok(), "{good}: {:?}", parse_cron(good));
        }
    }

    /// Times at the ends of the calendar and periods longer than it hold give fewer fire
    /// times, never a panic (a huge interval panicked the server and `schedule next`).
    #[test]
    fn fire_times_at_the_ends_of_time_are_fewer_not_a_panic() {
        let end = time::PrimitiveDateTime::MAX.assume_utc();
        let start = time::PrimitiveDateTime::MIN.assume_utc();
        let huge = Trigger::Interval(Duration::from_secs(u64::MAX));
        assert!(next_fires(&huge, t("2026-01-01T00:00:00Z"), None, 3).is_empty());
        assert!(!missed(&huge, end, Some(start)));
        let day = Trigger::Interval(Duration::from_secs(86400));
        assert!(next_fires(&day, end, None, 3).is_empty());
        assert!(next_fires(&day, end, Some(end), 3).is_empty());
        assert_eq!(
            next_fires(&day, end - time::Duration::days(2), None, 3).len(),
            2
        );
        assert!(next_fires(&day, start, Some(end - time::Duration::hours(1)), 3).is_empty());
        let h = trig("0 * * * *");
        assert!(next_fires(&h, end, None, 3).is_empty(), "past 2100");
        let before = next_fires(&h, start, None, 2);
        assert_eq!(
            before,
            vec![t("1970-01-01T00:00:00Z"), t("1970-01-01T01:00:00Z")]
        );
        assert_eq!(previous_fire(&h, end), None);
        assert!(!missed(&h, end, Some(start)));
        assert!(previous_fire(&h, start).is_none());
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
    }
}
