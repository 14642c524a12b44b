//! Small helpers every layer may use: takes nothing from the layers above (it imports no
//! module of this crate); gives the one rule for user-given names and the one way to run
//! blocking work (SQLite, hashing, file IO) off the async runtime.

/// Runs `f` on the blocking pool, so SQLite, hashing and file IO never hold a runtime thread.
/// A panic in `f` is resumed on the caller.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What a user-given name names; each kind has its own alphabet and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A volume's name in the repository: `NAME:latest` must stay unambiguous, and an
    /// application's volumes are named `namespace/claim`, so `/` is allowed.
    Volume,
    /// A backup record's name (`--from-backup NAME`).
    Backup,
    /// A schedule's name: its runs' backups are named `<schedule>-YYYYMMDD-HHMMSS`, so it
    /// must leave room for that suffix and use only what a backup name may.
    Schedule,
}

impl NameKind {
    fn what(self) -> &'static str {
        match self {
            NameKind::Volume => "volume",
            NameKind::Backup => "backup",
            NameKind::Schedule => "schedule",
        }
    }
}

/// Length of the suffix a scheduled run adds to its schedule's name (`-YYYYMMDD-HHMMSS`).
pub const RUN_SUFFIX_LEN: usize = 16;

/// Longest name of any kind.
pub const MAX_NAME_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} name `{name}`: {reason}", kind.what())]
pub struct NameError {
    pub kind: NameKind,
    pub name: String,
    pub reason: String,
}

/// The one rule for user-given names: every layer that takes a name checks it here, so a
/// name accepted in one place (a schedule) is never refused later (its runs' backups).
pub fn check_name(kind: NameKind, name: &str) -> Result<(), NameError> {
    let bad = |reason: String| NameError {
        kind,
        name: name.to_string(),
        reason,
    };
    let max = match kind {
        NameKind::Schedule => MAX_NAME_LEN - RUN_SUFFIX_LEN,
        NameKind::Volume | NameKind::Backup => MAX_NAME_LEN,
    };
    if name.is_empty() || name.len() > max {
        return Err(bad(format!("must be 1 to {max} characters")));
    }
    let slash = kind == NameKind::Volume;
    let ok = |b: u8| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') || (slash && b == b'/')
    };
    if !name.bytes().all(ok) {
        return Err(bad(if slash {
            "use letters, digits, `-`, `_`, `.` and `/` only".into()
        } else {
            "use letters, digits, `-`, `_` and `.` only".into()
        }));
    }
    Ok(())
}

/// Kubernetes' rules for object names that lifeboat turns into paths or object names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeName {
    /// A DNS-1123 label (namespaces): 1 to 63 lowercase letters, digits and `-`, starting and
    /// ending with a letter or digit.
    Label,
    /// A DNS-1123 subdomain (claims, storage classes): 1 to 253 characters, dot-separated labels.
    Subdomain,
}

/// Checks `name` as Kubernetes checks it; the error says what is wrong. A name that passes
/// can never leave a directory when joined to a path (no `/`, no `..`).
pub fn check_kube_name(rule: KubeName, name: &str) -> Result<(), String> {
    let max = match rule {
        KubeName::Label => 63,
        KubeName::Subdomain => 253,
    };
    if name.is_empty() || name.len() > max {
        return Err(format!("must be 1 to {max} characters"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = match rule {
        KubeName::Label => label_ok(name),
        KubeName::Subdomain => name.split('.').all(label_ok),
    };
    if !ok {
        return Err(match rule {
            KubeName::Label => "use lowercase letters, digits and `-`, starting and ending with a letter or digit".into(),
            KubeName::Subdomain => "use lowercase letters, digits, `-` and `.`, each dot-separated part starting and ending with a letter or digit".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_may_hold_a_slash_and_nothing_else_may() {
        assert!(check_name(NameKind::Volume, "pg/data-0").is_ok());
        for kind in [NameKind::Backup, NameKind::Schedule] {
            let e = check_name(kind, "a/b").unwrap_err();
            assert!(e.to_string().contains("`-`, `_` and `.` only"), "{e}");
        }
        assert!(check_name(NameKind::Backup, "").is_err());
        assert!(check_name(NameKind::Backup, "pg nightly").is_err());
    }

    #[test]
    fn kubernetes_names_are_checked_as_kubernetes_checks_them() {
        for good in ["pg", "pg-dr", "a1", &"a".repeat(63)] {
            assert!(check_kube_name(KubeName::Label, good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "PG",
            "pg.dr",
            "-pg",
            "pg-",
            "../../x",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(check_kube_name(KubeName::Label, bad).is_err(), "{bad:?}");
        }
        assert!(check_kube_name(KubeName::Subdomain, "fast.ssd-1").is_ok());
        for bad in ["..", "a..b", ".a", "a/b", "A"] {
            assert!(
                check_kube_name(KubeName::Subdomain, bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_accepted_schedule_name_makes_accepted_backup_names() {
        // The longest schedule name still leaves room for the run suffix.
        let longest = "s".repeat(MAX_NAME_LEN - RUN_SUFFIX_LEN);
        assert!(check_name(NameKind::Schedule, &longest).is_ok());
        let run = format!("{longest}-20260101-000000");
        assert_eq!(run.len(), MAX_NAME_LEN);
        assert!(check_name(NameKind::Backup, &run).is_ok());
        let e = check_name(NameKind::Schedule, &format!("{longest}s")).unwrap_err();
        assert!(e.to_string().contains("1 to 237"), "{e}");
    }
}

/// The one form of a time in output (tables, `--json`, the catalog's text): RFC 3339 in UTC
/// to the millisecond, `2026-12-02T14:03:07.123Z`; fixed width, so the text sorts as the time.
pub fn timestamp(t: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

/// An RFC 3339 text (as the catalog or a status holds it) in the form of [`timestamp`]; text
/// that is no time is given back as it is.
pub fn timestamp_text(text: &str) -> String {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(timestamp)
        .unwrap_or_else(|_| text.to_string())
}

/// serde: a time of an output struct as [`timestamp`]
/// (`#[serde(serialize_with = "crate::util::serialize_timestamp")]`).
pub fn serialize_timestamp<S: serde::Serializer>(
    t: &time::OffsetDateTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&timestamp(*t))
}

/// serde: [`serialize_timestamp`] of a time that may be absent (null).
pub fn serialize_timestamp_option<S: serde::Serializer>(
    t: &Option<time::OffsetDateTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&timestamp(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod timestamp_tests {
    #[test]
    fn times_are_utc_to_the_millisecond() {
        let t = time::macros::datetime!(2026-12-02 15:03:07.123456789 +01:00);
        assert_eq!(super::timestamp(t), "2026-12-02T14:03:07.123Z");
        let t = time::macros::datetime!(2026-12-02 14:03:07 UTC);
        assert_eq!(super::timestamp(t), "2026-12-02T14:03:07.000Z");
        assert_eq!(
            super::timestamp_text("2026-12-02T14:03:07.5+00:00"),
            "2026-12-02T14:03:07.500Z"
        );
        assert_eq!(super::timestamp_text("-"), "-");
    }
}
