//! The catalog's restore records: takes [`RestoreRecord`]s (`app::restore_record`); gives them
//! kept in the `restores` and `restore_objects` tables (`schema/migrations/0003_restores.sql`),
//! a unique id each, listed newest last, and one described with its objects' results. States
//! are stored by name and read back checked. Blocking, like the rest of the catalog. Must not
//! be needed for a restore: a caller that cannot keep a record warns and goes on.

use rusqlite::{params, OptionalExtension, Row};

use crate::app::restore_record::{
    rfc3339_ms, ObjectAction, ObjectResult, RestoreId, RestoreRecord, RestoreStatus, TargetKind,
};
use crate::scheduler::catalog::{parse_time, Catalog, CatalogError};

const COLUMNS: &str = "id, backup, dry_run, target_kind, target, options, status, error, started, ended, objects, created, updated, skipped, failed";

/// A stored name read back as its enum, or an error naming it.
fn named<T>(
    id: &str,
    what: &'static str,
    value: String,
    parse: fn(&str) -> Option<T>,
) -> Result<T, CatalogError> {
    parse(&value).ok_or_else(|| CatalogError::BadRestoreRow {
        id: id.to_string(),
        what,
        value,
    })
}

/// The raw columns of a row, before they are checked.
struct Raw {
    id: String,
    backup: String,
    dry_run: bool,
    target_kind: String,
    target: Option<String>,
    options: String,
    status: String,
    error: Option<String>,
    started: String,
    ended: String,
    counts: [i64; 5],
}

fn raw(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok(Raw {
        id: r.get(0)?,
        backup: r.get(1)?,
        dry_run: r.get(2)?,
        target_kind: r.get(3)?,
        target: r.get(4)?,
        options: r.get(5)?,
        status: r.get(6)?,
        error: r.get(7)?,
        started: r.get(8)?,
        ended: r.get(9)?,
        counts: [r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?],
    })
}

impl Raw {
    fn checked(self) -> Result<RestoreRecord, CatalogError> {
        let id = self.id.clone();
        let time = |what: &'static str, v: String| {
            parse_time(&v).ok_or_else(|| CatalogError::BadRestoreRow {
                id: id.clone(),
                what,
                value: v,
            })
        };
        let started = time("start time", self.started)?;
        let ended = time("end time", self.ended)?;
        let options =
            serde_json::from_str(&self.options).map_err(|_| CatalogError::BadRestoreRow {
                id: id.clone(),
                what: "options",
                value: self.options.clone(),
            })?;
        let [objects, created, updated, skipped, failed] = self.counts.map(|c| c.max(0) as usize);
        Ok(RestoreRecord {
            target_kind: named(&id, "target kind", self.target_kind, TargetKind::from_name)?,
            status: named(&id, "status", self.status, RestoreStatus::from_name)?,
            id: RestoreId(self.id),
            backup: self.backup,
            dry_run: self.dry_run,
            target: self.target,
            options,
            error: self.error,
            started_at: started,
            ended_at: ended,
            duration_seconds: (ended - started).as_seconds_f64().max(0.0),
            objects,
            created,
            updated,
            skipped,
            failed,
            results: Vec::new(),
        })
    }
}

impl Catalog {
    /// Keeps `rec`, under its id or, when another restore took that id, the next free
    /// `-2`, `-3`...; gives the id used.
    pub fn record_restore(&self, rec: &RestoreRecord) -> Result<RestoreId, CatalogError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = 1;
        let id = loop {
            let id = rec.id.nth(n);
            let taken: bool = tx
                .query_row(
                    "SELECT 1 FROM restores WHERE id = ?1",
                    params![id.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !taken {
                break id;
            }
            n += 1;
        };
        tx.execute(
            &format!("INSERT INTO restores ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
            params![
                id.as_str(),
                rec.backup,
                rec.dry_run,
                rec.target_kind.as_str(),
                rec.target,
                serde_json::to_string(&rec.options).expect("strings serialise"),
                rec.status.as_str(),
                rec.error,
                rfc3339_ms(rec.started_at),
                rfc3339_ms(rec.ended_at),
                rec.objects as i64,
                rec.created as i64,
                rec.updated as i64,
                rec.skipped as i64,
                rec.failed as i64,
            ],
        )?;
        for (seq, o) in rec.results.iter().enumerate() {
            tx.execute(
                "INSERT INTO restore_objects (restore, seq, object, action, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id.as_str(), seq as i64, o.object, o.action.as_str(), o.message],
            )?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// The newest `limit` restores, oldest first, without their objects' results.
    pub fn restores(&self, limit: usize) -> Result<Vec<RestoreRecord>, CatalogError> {
        let raws: Vec<Raw> = {
            let conn = self.conn();
            let mut st = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM restores ORDER BY started DESC, rowid DESC LIMIT ?1"
            ))?;
            let rows = st.query_map(params![limit as i64], raw)?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = raws
            .into_iter()
            .map(Raw::checked)
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// One restore with each object's result, in the order done.
    pub fn restore(&self, id: &str) -> Result<RestoreRecord, CatalogError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM restores WHERE id = ?1"),
                params![id],
                raw,
            )
            .optional()?
            .ok_or_else(|| CatalogError::NoRestore(id.to_string()))?;
        let mut rec = found.checked()?;
        let mut st = conn.prepare(
            "SELECT object, action, message FROM restore_objects WHERE restore = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?;
        for row in rows {
            let (object, action, message) = row?;
            rec.results.push(ObjectResult {
                object,
                action: named(id, "action", action, ObjectAction::from_name)?,
                message,
            });
        }
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use time::OffsetDateTime;

    fn record(backup: &str, status: RestoreStatus) -> RestoreRecord {
        let t = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
            + time::Duration::milliseconds(250);
        RestoreRecord {
            id: RestoreId::new(backup, t),
            backup: backup.into(),
            dry_run: false,
            target_kind: TargetKind::ClusterDir,
            target: Some("/dr".into()),
            options: BTreeMap::from([("selector".to_string(), "app=pg".to_string())]),
            status,
            error: None,
            started_at: t,
            ended_at: t + time::Duration::seconds(2),
            duration_seconds: 2.0,
            objects: 2,
            created: 1,
            updated: 0,
            skipped: 0,
            failed: 1,
            results: vec![
                ObjectResult {
                    object: "ConfigMap/ns/a".into(),
                    action: ObjectAction::Created,
                    message: String::new(),
                },
                ObjectResult {
                    object: "ConfigMap/ns/b".into(),
                    action: ObjectAction::Failed,
                    message: "denied".into(),
                },
            ],
        }
    }

    #[test]
    fn restores_are_kept_with_unique_ids_and_read_back_as_written() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.sqlite")).unwrap();
        let rec = record("pg", RestoreStatus::PartiallyFailed);
        let first = c.record_restore(&rec).unwrap();
        let second = c.record_restore(&rec).unwrap();
        assert_eq!(first, rec.id);
        assert_eq!(second.as_str(), format!("{}-2", rec.id));
        let listed = c.restores(10).unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].results.is_empty(), "a listing has no results");
        let back = c.restore(first.as_str()).unwrap();
        assert_eq!(back.status, RestoreStatus::PartiallyFailed);
        assert_eq!(back.results, rec.results);
        assert_eq!(back.options, rec.options);
        assert_eq!(back.started_at, rec.started_at, "to the millisecond");
        assert_eq!(back.duration_seconds, 2.0);
        let stored: String = c
            .conn()
            .query_row("SELECT status FROM restores LIMIT 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, "partially-failed");
        let e = c.restore("nope").unwrap_err().to_string();
        assert!(e.contains("restore list"), "{e}");
        // A state this lifeboat does not know is named, not guessed.
        c.conn()
            .execute("UPDATE restores SET status = 'odd'", [])
            .unwrap();
        let e = c.restores(10).unwrap_err().to_string();
        assert!(e.contains("`odd`"), "{e}");
    }
}
