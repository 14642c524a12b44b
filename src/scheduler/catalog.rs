//! The catalog: takes schedules, runs and what the repository holds; gives a local SQLite
//! database (`<state-dir>/catalog.sqlite`) that `schedule list`, `runs` and the server read.
//! The repository stays the source of truth: [`Catalog::rebuild`] recreates the catalog's
//! copy of it from the bucket. Schema and migrations: `schema/migrations/`. Blocking: call it
//! through [`blocking`], off the async runtime. Must not be needed to restore anything.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::app::retention::Retain;
use crate::format::{AppBackup, BackupId, Snapshot, SnapshotId};
use crate::repository::rfc3339;
use crate::scheduler::config::{Config, Template};
use crate::scheduler::cron::{next_fires, parse_cron, Trigger, TriggerKind};
use crate::util::timestamp_text;

/// Migrations in order; the database's `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../schema/migrations/0001_catalog.sql"),
    include_str!("../../schema/migrations/0002_standby.sql"),
    include_str!("../../schema/migrations/0003_restores.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("catalog: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("catalog {path} was written by a newer lifeboat (schema {found}, this one knows {known}); upgrade lifeboat")]
    Newer {
        path: String,
        found: usize,
        known: usize,
    },
    #[error("no schedule named `{0}` in the catalog; `lifeboat schedule list` shows them (the server records them when it loads its configuration)")]
    NoSchedule(String),
    #[error("catalog worker failed: {0}")]
    Worker(String),
    #[error("namespace `{0}` was never applied by standby on this site (`lifeboat standby status` lists what was); restore it with `lifeboat restore create`, or run standby first")]
    NotStandby(String),
    #[error("schedule {0}: its stored trigger does not parse; restart the server with its configuration")]
    BadTrigger(String),
    #[error("no restore `{0}` in the catalog; `lifeboat restore list` shows them (restores are recorded in the catalog of the --state-dir they ran with)")]
    NoRestore(String),
    #[error("catalog: restore {id}: stored {what} `{value}` is not one this lifeboat knows; upgrade lifeboat")]
    BadRestoreRow {
        id: String,
        what: &'static str,
        value: String,
    },
}

impl CatalogError {
    /// Another process held the database longer than the busy timeout: trying again later
    /// may work. Anything else will not go away by waiting.
    pub fn is_retryable(&self) -> bool {
        let sql = match self {
            CatalogError::Sql(e) | CatalogError::Open { source: e, .. } => e,
            _ => return false,
        };
        matches!(
            sql.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// How a run ended; stored as its serde name in `runs.result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunResult {
    Succeeded,
    /// Recorded, with parts of the scope not captured.
    Partial,
    Failed,
    Cancelled,
}

/// Where a run is, as `runs` shows it: going, ended (a [`RunResult`]), or skipped.
// Ordered as declared, for the metrics' listing.
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
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Succeeded,
    Partial,
    Failed,
    Cancelled,
    /// It did not happen (its fire came while the previous run was still going).
    Skipped,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        RunState::from(self).as_str()
    }
}

impl From<RunResult> for RunState {
    fn from(r: RunResult) -> RunState {
        match r {
            RunResult::Succeeded => RunState::Succeeded,
            RunResult::Partial => RunState::Partial,
            RunResult::Failed => RunState::Failed,
            RunResult::Cancelled => RunState::Cancelled,
        }
    }
}

impl RunState {
    const ALL: [RunState; 6] = [
        RunState::Running,
        RunState::Succeeded,
        RunState::Partial,
        RunState::Failed,
        RunState::Cancelled,
        RunState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Partial => "partial",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for RunResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl ToSql for RunResult {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl ToSql for RunState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for RunState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<RunState> {
        let text = value.as_str()?;
        RunState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown run result `{text}`").into()))
    }
}

/// What standby knows of one namespace of this site.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyRow {
    pub namespace: String,
    pub schedule: String,
    pub source_namespace: String,
    pub applied_backup: Option<String>,
    pub applied_backup_time: Option<String>,
    pub applied_at: Option<String>,
    pub newest_backup: Option<String>,
    pub newest_backup_time: Option<String>,
    pub checked_at: Option<String>,
    pub error: Option<String>,
    pub activated: bool,
}

/// One schedule as the catalog knows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub policy: String,
    pub trigger_kind: TriggerKind,
    pub expression: Option<String>,
    pub timezone: Option<String>,
    pub interval_seconds: Option<u64>,
    pub template: Template,
    pub retain: Retain,
    pub suspended: bool,
    pub active: bool,
}

impl ScheduleRow {
    /// The trigger, rebuilt from what was stored.
    pub fn trigger(&self) -> Option<Trigger> {
        match self.trigger_kind {
            TriggerKind::Interval => Some(Trigger::Interval(std::time::Duration::from_secs(
                self.interval_seconds?,
            ))),
            TriggerKind::Cron => Some(Trigger::Cron {
                expression: self.expression.clone()?,
                schedule: Box::new(parse_cron(self.expression.as_deref()?).ok()?),
                tz: self.timezone.as_deref()?.parse().ok()?,
            }),
        }
    }

    pub fn describe_trigger(&self) -> String {
        match (&self.expression, self.interval_seconds) {
            (Some(e), _) => format!("cron `{e}` {}", self.timezone.as_deref().unwrap_or("UTC")),
            (None, Some(s)) => format!("every {s}s"),
            _ => "?".into(),
        }
    }
}

/// One line of `schedule list`: a schedule, its next fire and its newest run. The fields are
/// in the order of their names, as the JSON output has always listed them.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ScheduleListing {
    pub active: bool,
    pub last_result: Option<RunState>,
    /// When the newest run started.
    pub last_run_at: Option<String>,
    pub name: String,
    pub namespaces: Vec<String>,
    /// None while suspended or out of the configuration.
    pub next_run_at: Option<String>,
    pub policy: String,
    pub suspended: bool,
    pub trigger: String,
}

/// One run of a schedule.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunRow {
    pub id: i64,
    pub schedule: String,
    /// The backup's name.
    pub backup: Option<String>,
    /// The fire time it ran for.
    pub scheduled_at: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub result: RunState,
    pub read_bytes: Option<u64>,
    pub uploaded_bytes: Option<u64>,
    pub error: Option<String>,
}

pub struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// Runs `f` on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    cat: &Arc<Catalog>,
    f: impl FnOnce(&Catalog) -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, CatalogError> {
    let cat = cat.clone();
    tokio::task::spawn_blocking(move || f(&cat))
        .await
        .map_err(|e| CatalogError::Worker(e.to_string()))?
}

fn now() -> String {
    rfc3339(
        OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 ns"),
    )
}

impl Catalog {
    /// Opens (creating it and its directory when missing) and migrates the catalog.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let shown = path.display().to_string();
        let open_err = |source| CatalogError::Open {
            path: shown.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        if version > MIGRATIONS.len() {
            return Err(CatalogError::Newer {
                path: shown,
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.unchecked_transaction().map_err(open_err)?;
            tx.execute_batch(m).map_err(open_err)?;
            tx.pragma_update(None, "user_version", i + 1)
                .map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        Ok(Catalog {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the schedules of a (validated) configuration; schedules it no longer has are
    /// kept, inactive, for their history.
    pub fn sync_schedules(&self, cfg: &Config) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("UPDATE schedules SET active = 0", [])?;
        for s in cfg.schedules.values() {
            let p = cfg.policy_of(s);
            let (expr, tz, secs) = match &p.trigger {
                // As the user wrote it (5 fields stay 5); the 6-field form is parsed again
                // from it, inside only.
                Trigger::Cron { expression, tz, .. } => {
                    (Some(expression.clone()), Some(tz.name().to_string()), None)
                }
                Trigger::Interval(d) => (None, None, Some(d.as_secs() as i64)),
            };
            tx.execute(
                "INSERT INTO schedules (name, policy, trigger_kind, expression, timezone, interval_seconds,
                    template, retain, config_suspend, active, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10)
                 ON CONFLICT(name) DO UPDATE SET policy = ?2, trigger_kind = ?3, expression = ?4,
                    timezone = ?5, interval_seconds = ?6, template = ?7, retain = ?8,
                    config_suspend = ?9, active = 1, updated = ?10",
                params![
                    s.name,
                    p.name,
                    p.trigger.kind().as_str(),
                    expr,
                    tz,
                    secs,
                    serde_json::to_string(&s.template).expect("serialises"),
                    serde_json::to_string(&p.retain).expect("serialises"),
                    s.suspend,
                    now()
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn schedules(&self) -> Result<Vec<ScheduleRow>, CatalogError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, policy, trigger_kind, expression, timezone, interval_seconds, template,
                    retain, config_suspend, suspend_override, active
             FROM schedules ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            let template: String = r.get(6)?;
            let retain: String = r.get(7)?;
            let config: bool = r.get(8)?;
            let over: Option<bool> = r.get(9)?;
            Ok(ScheduleRow {
                name: r.get(0)?,
                policy: r.get(1)?,
                trigger_kind: TriggerKind::parse(&r.get::<_, String>(2)?),
                expression: r.get(3)?,
                timezone: r.get(4)?,
                interval_seconds: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                template: serde_json::from_str(&template).unwrap_or_default(),
                retain: serde_json::from_str(&retain).unwrap_or_default(),
                suspended: over.unwrap_or(config),
                active: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn schedule(&self, name: &str) -> Result<ScheduleRow, CatalogError> {
        self.schedules()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CatalogError::NoSchedule(name.to_string()))
    }

    /// `schedule list`: every schedule with its next fire after `now` and its newest run.
    pub fn listing(&self, now: OffsetDateTime) -> Result<Vec<ScheduleListing>, CatalogError> {
        let mut out = Vec::new();
        for s in self.schedules()? {
            let last = self.last_result(&s.name)?;
            let next = if s.suspended || !s.active {
                None
            } else {
                let last_run = self.last_run(&s.name)?;
                s.trigger()
                    .and_then(|t| next_fires(&t, now, last_run, 1).first().copied())
            };
            out.push(ScheduleListing {
                active: s.active,
                last_result: last.as_ref().map(|r| r.result),
                last_run_at: last.map(|r| r.started_at),
                next_run_at: next.map(rfc3339),
                trigger: s.describe_trigger(),
                name: s.name,
                namespaces: s.template.namespaces,
                policy: s.policy,
                suspended: s.suspended,
            });
        }
        Ok(out)
    }

    /// `schedule next`: a schedule and its next `count` fire times after `now`.
    pub fn upcoming(
        &self,
        name: &str,
        now: OffsetDateTime,
        count: usize,
    ) -> Result<(ScheduleRow, Vec<OffsetDateTime>), CatalogError> {
        let s = self.schedule(name)?;
        let last = self.last_run(name)?;
        let trigger = s
            .trigger()
            .ok_or_else(|| CatalogError::BadTrigger(name.to_string()))?;
        Ok((s, next_fires(&trigger, now, last, count)))
    }

    /// `schedule suspend|resume`: overrides the configuration's `suspend` until the next
    /// change of it by the same commands.
    pub fn set_suspended(&self, name: &str, suspended: bool) -> Result<(), CatalogError> {
        let n = self.conn().execute(
            "UPDATE schedules SET suspend_override = ?2, updated = ?3 WHERE name = ?1",
            params![name, suspended, now()],
        )?;
        if n == 0 {
            return Err(CatalogError::NoSchedule(name.to_string()));
        }
        Ok(())
    }

    pub fn start_run(
        &self,
        schedule: &str,
        backup: &str,
        scheduled: OffsetDateTime,
    ) -> Result<i64, CatalogError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (schedule, backup, scheduled, started, result) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![schedule, backup, rfc3339(scheduled), now(), RunState::Running],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn finish_run(
        &self,
        id: i64,
        result: RunResult,
        bytes_read: u64,
        bytes_uploaded: u64,
        stats: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "UPDATE runs SET ended = ?2, result = ?3, bytes_read = ?4, bytes_uploaded = ?5, stats = ?6, error = ?7 WHERE id = ?1",
            params![id, now(), result, bytes_read as i64, bytes_uploaded as i64, stats.map(|s| s.to_string()), error],
        )?;
        Ok(())
    }

    /// A run that did not happen, and why (overlap, suspended).
    pub fn record_skip(
        &self,
        schedule: &str,
        scheduled: OffsetDateTime,
        reason: &str,
    ) -> Result<(), CatalogError> {
        let t = now();
        self.conn().execute(
            "INSERT INTO runs (schedule, scheduled, started, ended, result, error) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
            params![schedule, rfc3339(scheduled), t, RunState::Skipped, reason],
        )?;
        Ok(())
    }

    /// Runs left `running` by a server that stopped without finishing them.
    pub fn close_interrupted_runs(&self) -> Result<usize, CatalogError> {
        Ok(self.conn().execute(
            "UPDATE runs SET result = ?2, ended = ?1, error = 'the server stopped during the run' WHERE result = ?3",
            params![now(), RunResult::Failed, RunState::Running],
        )?)
    }

    pub fn runs(&self, schedule: Option<&str>, limit: usize) -> Result<Vec<RunRow>, CatalogError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, schedule, backup, scheduled, started, ended, result, bytes_read, bytes_uploaded, error
             FROM runs WHERE (?1 IS NULL OR schedule = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![schedule, limit as i64], |r| {
            Ok(RunRow {
                id: r.get(0)?,
                schedule: r.get(1)?,
                backup: r.get(2)?,
                scheduled_at: r
                    .get::<_, Option<String>>(3)?
                    .as_deref()
                    .map(timestamp_text),
                started_at: timestamp_text(&r.get::<_, String>(4)?),
                ended_at: r
                    .get::<_, Option<String>>(5)?
                    .as_deref()
                    .map(timestamp_text),
                result: r.get(6)?,
                read_bytes: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                uploaded_bytes: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
                error: r.get(9)?,
            })
        })?;
        let mut out: Vec<RunRow> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The start of the newest run that was not skipped.
    pub fn last_run(&self, schedule: &str) -> Result<Option<OffsetDateTime>, CatalogError> {
        let t: Option<String> = self
            .conn()
            .query_row(
                "SELECT started FROM runs WHERE schedule = ?1 AND result != ?2 ORDER BY id DESC LIMIT 1",
                params![schedule, RunState::Skipped],
                |r| r.get(0),
            )
            .optional()?;
        Ok(t.and_then(|t| parse_time(&t)))
    }

    /// The newest run's result.
    pub fn last_result(&self, schedule: &str) -> Result<Option<RunRow>, CatalogError> {
        Ok(self.runs(Some(schedule), 1)?.pop())
    }

    /// When the newest complete backup of a schedule was taken (the RPO clock).
    pub fn last_good(&self, schedule: &str) -> Result<Option<OffsetDateTime>, CatalogError> {
        let t: Option<String> = self
            .conn()
            .query_row(
                "SELECT max(time) FROM backups WHERE schedule = ?1 AND complete = 1",
                params![schedule],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(t.and_then(|t| parse_time(&t)))
    }

    pub fn standby_rows(&self) -> Result<Vec<StandbyRow>, CatalogError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT namespace, schedule, source_namespace, applied_backup, applied_backup_time, applied_at,
                    newest_backup, newest_backup_time, checked_at, error, activated
             FROM standby ORDER BY namespace",
        )?;
        let rows = st.query_map([], |r| {
            Ok(StandbyRow {
                namespace: r.get(0)?,
                schedule: r.get(1)?,
                source_namespace: r.get(2)?,
                applied_backup: r.get(3)?,
                applied_backup_time: r.get(4)?,
                applied_at: r.get(5)?,
                newest_backup: r.get(6)?,
                newest_backup_time: r.get(7)?,
                checked_at: r.get(8)?,
                error: r.get(9)?,
                activated: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn standby_row(&self, namespace: &str) -> Result<Option<StandbyRow>, CatalogError> {
        Ok(self
            .standby_rows()?
            .into_iter()
            .find(|r| r.namespace == namespace))
    }

    /// A standby cycle looked at the bucket: what it offers, and the cycle's error (None:
    /// none). The applied state is left as it is.
    pub fn standby_checked(
        &self,
        namespace: &str,
        schedule: &str,
        source_namespace: &str,
        newest: Option<(&str, OffsetDateTime)>,
        error: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn().execute(
            "INSERT INTO standby (namespace, schedule, source_namespace, newest_backup, newest_backup_time, checked_at, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(namespace) DO UPDATE SET schedule = ?2, source_namespace = ?3,
                newest_backup = coalesce(?4, newest_backup), newest_backup_time = coalesce(?5, newest_backup_time),
                checked_at = ?6, error = ?7",
            params![namespace, schedule, source_namespace, newest.map(|n| n.0), newest.map(|n| rfc3339(n.1)), now(), error],
        )?;
        Ok(())
    }

    /// A backup was applied to a namespace of this site.
    pub fn standby_applied(
        &self,
        namespace: &str,
        backup: &str,
        backup_time: OffsetDateTime,
        volumes: &[(String, SnapshotId, u64)],
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let t = now();
        tx.execute(
            "UPDATE standby SET applied_backup = ?2, applied_backup_time = ?3, applied_at = ?4, error = NULL WHERE namespace = ?1",
            params![namespace, backup, rfc3339(backup_time), t],
        )?;
        for (pvc, snap, size) in volumes {
            tx.execute(
                "INSERT INTO standby_volumes (namespace, pvc, snapshot, size, applied_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(namespace, pvc) DO UPDATE SET snapshot = ?3, size = ?4, applied_at = ?5",
                params![namespace, pvc, snap.to_hex(), *size as i64, t],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// `activate` (true) or `deactivate` (false) of a namespace standby applied.
    pub fn set_activated(&self, namespace: &str, activated: bool) -> Result<bool, CatalogError> {
        let n = self.conn().execute(
            "UPDATE standby SET activated = ?2 WHERE namespace = ?1",
            params![namespace, activated],
        )?;
        Ok(n > 0)
    }

    /// After `activate`: the namespace's data is the application's now, not a backup's; the
    /// next standby after `deactivate` applies the newest backup anew.
    pub fn forget_applied(&self, namespace: &str) -> Result<(), CatalogError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE standby SET applied_backup = NULL, applied_backup_time = NULL, applied_at = NULL WHERE namespace = ?1",
            params![namespace],
        )?;
        conn.execute(
            "DELETE FROM standby_volumes WHERE namespace = ?1",
            params![namespace],
        )?;
        Ok(())
    }

    pub fn record_backup(&self, id: &BackupId, b: &AppBackup) -> Result<(), CatalogError> {
        record_backup(&self.conn(), id, b)
    }

    pub fn remove_backups(&self, ids: &[BackupId]) -> Result<(), CatalogError> {
        let conn = self.conn();
        for id in ids {
            conn.execute("DELETE FROM backups WHERE id = ?1", params![id.to_hex()])?;
        }
        Ok(())
    }

    pub fn backup_count(&self) -> Result<usize, CatalogError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM backups", [], |r| r.get::<_, i64>(0))?
            as usize)
    }

    /// Replaces the catalog's copy of the repository with what the bucket holds, and gives each
    /// scheduled backup that no run names a run (its result read from the record), so `runs`
    /// shows history on a catalog recreated from the bucket alone.
    ///
    /// Whatever the bucket holds, it does not fail on it: of two records of one name (written
    /// at once by an older version), the catalog lists the older and the pair is reported in
    /// [`Rebuilt::duplicates`]; both stay in the bucket.
    pub fn rebuild(
        &self,
        backups: &[(BackupId, AppBackup)],
        snapshots: &[(SnapshotId, Snapshot)],
    ) -> Result<Rebuilt, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM backups", [])?;
        tx.execute("DELETE FROM snapshots", [])?;
        let mut sorted: Vec<&(BackupId, AppBackup)> = backups.iter().collect();
        sorted.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        let mut duplicates: Vec<DuplicateName> = Vec::new();
        let mut listed = std::collections::HashMap::new();
        for (id, b) in sorted {
            if let Some(first) = listed.get(&b.name) {
                match duplicates.iter_mut().find(|d| d.name == b.name) {
                    Some(d) => d.ids.push(id.to_hex()),
                    None => duplicates.push(DuplicateName {
                        name: b.name.clone(),
                        ids: vec![BackupId::to_hex(first), id.to_hex()],
                    }),
                }
                continue;
            }
            listed.insert(b.name.clone(), *id);
            record_backup(&tx, id, b)?;
        }
        for (id, s) in snapshots {
            tx.execute(
                "INSERT INTO snapshots (id, name, time, size) VALUES (?1, ?2, ?3, ?4)",
                params![id.to_hex(), s.name, rfc3339(s.time), s.size as i64],
            )?;
        }
        let mut runs = 0;
        for (_, b) in backups {
            let Some(s) = &b.schedule else { continue };
            let known: i64 = tx.query_row(
                "SELECT count(*) FROM runs WHERE backup = ?1",
                params![b.name],
                |r| r.get(0),
            )?;
            if known == 0 {
                let t = rfc3339(b.time);
                tx.execute(
                    "INSERT INTO runs (schedule, backup, scheduled, started, ended, result, error)
                     VALUES (?1, ?2, ?3, ?3, ?3, ?4, 'recovered from the repository by catalog rebuild')",
                    params![s, b.name, t, if b.failures.is_empty() { RunResult::Succeeded } else { RunResult::Partial }],
                )?;
                runs += 1;
            }
        }
        tx.commit()?;
        Ok(Rebuilt {
            backups: backups.len(),
            snapshots: snapshots.len(),
            runs_recovered: runs,
            duplicates,
        })
    }
}

/// What [`Catalog::rebuild`] found in the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rebuilt {
    pub backups: usize,
    pub snapshots: usize,
    pub runs_recovered: usize,
    /// Names held by more than one record (the catalog lists the oldest, ids oldest first).
    pub duplicates: Vec<DuplicateName>,
}

/// A backup name that more than one record in the bucket holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct DuplicateName {
    pub name: String,
    /// The records' ids (hex).
    pub ids: Vec<String>,
}

fn record_backup(conn: &Connection, id: &BackupId, b: &AppBackup) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO backups (id, name, schedule, time, objects, volumes, complete) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(id) DO NOTHING",
        params![
            id.to_hex(),
            b.name,
            b.schedule,
            rfc3339(b.time),
            b.objects.len() as i64,
            b.volumes.len() as i64,
            b.failures.is_empty()
        ],
    )?;
    Ok(())
}

pub fn parse_time(t: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// The catalog's place under a state directory.
pub fn catalog_path(state_dir: &Path) -> PathBuf {
    state_dir.join("catalog.sqlite")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_a_newer_catalog_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/catalog.sqlite");
        let c = Catalog::open(&p).unwrap();
        let id = c.start_run("s", "s-1", OffsetDateTime::now_utc()).unwrap();
        c.finish_run(id, RunResult::Succeeded, 1, 2, None, None)
            .unwrap();
        drop(c);
        let c = Catalog::open(&p).unwrap();
        assert_eq!(
            c.runs(None, 10).unwrap().len(),
            1,
            "reopening keeps the data"
        );
        c.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = Catalog::open(&p).err().unwrap().to_string();
        assert!(e.contains("newer lifeboat"), "{e}");
    }

    /// A user's cron is shown as written (`0 * * * *`, not the 6-field `0 0 * * * *` used
    /// inside), and the fire times read back from the catalog are the expression's.
    #[test]
    fn a_cron_is_listed_as_written_and_fires_as_written() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.sqlite")).unwrap();
        let text = "kind: SchedulePolicy\nmetadata: {name: hourly}\nspec: {cron: {expression: \"0 * * * *\"}}\n---\nkind: SchedulePolicy\nmetadata: {name: workdays}\nspec: {cron: {expression: \"30 9 * * 1-5\", timezone: Europe/Paris}}\n---\nkind: BackupSchedule\nmetadata: {name: a}\nspec: {schedulePolicyName: hourly, template: {namespaces: [a]}}\n---\nkind: BackupSchedule\nmetadata: {name: b}\nspec: {schedulePolicyName: workdays, template: {namespaces: [b]}}\n";
        let cfg =
            crate::scheduler::config::parse_config(&[("c.yaml".into(), text.into())]).unwrap();
        c.sync_schedules(&cfg).unwrap();
        let now = time::macros::datetime!(2026-12-04 10:15 UTC); // a Friday
        let rows = c.listing(now).unwrap();
        let trigger = |n: &str| rows.iter().find(|r| r.name == n).unwrap().trigger.clone();
        assert_eq!(trigger("a"), "cron `0 * * * *` UTC");
        assert_eq!(trigger("b"), "cron `30 9 * * 1-5` Europe/Paris");
        assert_eq!(c.schedule("a").unwrap().expression.unwrap(), "0 * * * *");
        let (_, fires) = c.upcoming("a", now, 2).unwrap();
        assert_eq!(
            fires,
            [
                time::macros::datetime!(2026-12-04 11:00 UTC),
                time::macros::datetime!(2026-12-04 12:00 UTC)
            ]
        );
        // Friday 09:30 in Paris has passed; Monday's is next (08:30 UTC in winter).
        let (_, fires) = c.upcoming("b", now, 1).unwrap();
        assert_eq!(fires, [time::macros::datetime!(2026-12-07 08:30 UTC)]);
    }

    #[test]
    fn run_states_are_stored_as_their_names() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.sqlite")).unwrap();
        let at = OffsetDateTime::now_utc();
        for r in [
            RunResult::Succeeded,
            RunResult::Partial,
            RunResult::Failed,
            RunResult::Cancelled,
        ] {
            let id = c.start_run("s", "s-1", at).unwrap();
            c.finish_run(id, r, 0, 0, None, None).unwrap();
        }
        c.start_run("s", "s-2", at).unwrap();
        c.record_skip("s", at, "busy").unwrap();
        let stored: Vec<String> = c
            .conn()
            .prepare("SELECT result FROM runs ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = [
            "succeeded",
            "partial",
            "failed",
            "cancelled",
            "running",
            "skipped",
        ];
        assert_eq!(stored, want);
        let read: Vec<RunState> = c.runs(None, 10).unwrap().iter().map(|r| r.result).collect();
        let names: Vec<&str> = read.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, want);
        for s in read {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(c.close_interrupted_runs().unwrap(), 1);
        assert_eq!(c.runs(None, 10).unwrap()[4].result, RunState::Failed);
        // The last run is the newest that was not skipped.
        assert!(c.last_run("s").unwrap().is_some());
    }

    #[test]
    fn a_busy_catalog_is_worth_retrying_and_a_missing_schedule_is_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.sqlite");
        let c = Catalog::open(&p).unwrap();
        assert!(!c.set_suspended("nope", true).unwrap_err().is_retryable());
        // Another connection holds the write lock; this one gives up at once.
        let other = Connection::open(&p).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        c.conn().busy_timeout(std::time::Duration::ZERO).unwrap();
        let e = c
            .start_run("s", "s-1", OffsetDateTime::now_utc())
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
}
