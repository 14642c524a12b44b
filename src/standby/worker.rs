//! The standby worker: takes a way to open the repository, a site, the catalog and the
//! options; gives the loop `lifeboat standby` runs (a cycle each interval, or once), the
//! figures it serves on `/metrics`, and the status rows of `standby status`.
//!
//! Must not give up on a bucket that is unreachable now (it is opened again next cycle, and
//! the site keeps what it has), nor hide why a cycle failed: each namespace's row in the
//! catalog says, and with `once` the error is returned (retryable when it is).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::cycle::note_failure;
use super::dir_site::cycle_cluster_dir;
use super::live_site::cycle_live;
use super::{NamespaceReport, Site, StandbyError, StandbyOptions};
use crate::k8s::csi::MoverSettings;
use crate::metrics::{encode, Sorted};
use crate::repository::Repository;
use crate::scheduler::catalog::{blocking, Catalog, StandbyRow};

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub standby: StandbyOptions,
    /// Time between cycles.
    pub interval: Duration,
    /// One cycle, then return (its error, if it failed).
    pub once: bool,
    /// Serve the standby figures on /metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// A live site's Jobs.
    pub movers: MoverSettings,
}

/// The standby loop: a cycle on `site` each `interval` until `cancel` (SIGTERM), or one
/// with `once`. `open` opens the repository; it is called again each cycle until it works.
/// After each cycle the catalog's rows are the `/metrics` figures, and `on_cycle` is given
/// what a successful cycle did; a failed one is recorded for every namespace of the schedule
/// (the site keeps its state).
pub async fn run<F, Fut>(
    open: F,
    site: &Site,
    catalog: &Arc<Catalog>,
    w: &WorkerOptions,
    cancel: &CancellationToken,
    mut on_cycle: impl FnMut(&[NamespaceReport]),
) -> Result<(), StandbyError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<Repository>, StandbyError>>,
{
    // Until the first cycle: no figures, a valid (empty) exposition.
    let figures = Arc::new(Mutex::new(encode(&Registry::default())));
    if let Some(addr) = w.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StandbyError::Metrics { addr, source })?;
        let f = figures.clone();
        tokio::spawn(crate::metrics::serve_metrics(
            listener,
            Arc::new(move || f.lock().unwrap().clone()),
            cancel.clone(),
        ));
    }
    let mut repo = None;
    loop {
        let result = cycle(&open, &mut repo, site, catalog, w).await;
        let rows = blocking(catalog, |c| c.standby_rows()).await?;
        *figures.lock().unwrap() = render_metrics(&rows, OffsetDateTime::now_utc());
        match result {
            Ok(reports) => {
                on_cycle(&reports);
                if w.once {
                    return NamespaceReport::verdict(&reports);
                }
            }
            Err(e) => {
                // The bucket is unreachable or holds nothing usable: the site keeps what it
                // has, and says so.
                tracing::error!("standby cycle failed; the site keeps its last applied state: {e}");
                record_cycle_failure(catalog, &w.standby.schedule, e.to_string()).await?;
                if w.once {
                    return Err(e);
                }
            }
        }
        if w.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(w.interval) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// One cycle under a shared lock, the repository opened first if it is not yet.
async fn cycle<F, Fut>(
    open: &F,
    repo: &mut Option<Arc<Repository>>,
    site: &Site,
    catalog: &Arc<Catalog>,
    w: &WorkerOptions,
) -> Result<Vec<NamespaceReport>, StandbyError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<Repository>, StandbyError>>,
{
    // Opened (again) inside the loop: a bucket that is unreachable now may be back later.
    let repo = match repo {
        Some(r) => r,
        None => repo.insert(open().await?),
    };
    let o = &w.standby;
    let lock = repo
        .lock_to_read(&format!("standby {}", o.schedule))
        .await?;
    let r = match site {
        Site::Dir(d) => cycle_cluster_dir(repo, d, catalog, o).await,
        Site::Live(l) => cycle_live(repo, l, catalog, o, w.movers.clone()).await,
    };
    if let Some(lock) = lock {
        let _ = lock.release().await;
    }
    r
}

/// A cycle that failed as a whole: every namespace of the schedule says why.
async fn record_cycle_failure(
    catalog: &Arc<Catalog>,
    schedule: &str,
    error: String,
) -> Result<(), StandbyError> {
    let sched = schedule.to_string();
    blocking(catalog, move |c| {
        for r in c
            .standby_rows()?
            .into_iter()
            .filter(|r| r.schedule == sched)
        {
            note_failure(c, &r.namespace, &r.schedule, &r.source_namespace, &error)?;
        }
        Ok(())
    })
    .await?;
    Ok(())
}

/// For status listings: age of an RFC 3339 time.
pub fn age_seconds(t: Option<&str>, now: OffsetDateTime) -> Option<f64> {
    t.and_then(crate::scheduler::catalog::parse_time)
        .map(|t| (now - t).as_seconds_f64())
}

/// The labels of a namespace's figures.
#[derive(Debug, Clone, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

/// The `/metrics` figures of the site's namespaces (OpenMetrics text).
fn render_metrics(rows: &[StandbyRow], now: OffsetDateTime) -> String {
    let by = |r: &StandbyRow| NamespaceLabels {
        namespace: r.namespace.clone(),
    };
    let gauges = |f: &dyn Fn(&StandbyRow) -> Option<i64>| -> Sorted<NamespaceLabels, ConstGauge> {
        rows.iter()
            .filter_map(|r| Some((by(r), ConstGauge::new(f(r)?))))
            .collect()
    };
    let mut reg = Registry::default();
    reg.register(
        "lifeboat_standby_lag_seconds",
        "Age of the backup a namespace holds (the RPO lag)",
        gauges(&|r| age_seconds(r.applied_backup_time.as_deref(), now).map(|a| a.round() as i64)),
    );
    reg.register(
        "lifeboat_standby_behind",
        "1 when the bucket holds a newer backup than the one applied",
        gauges(&|r| {
            Some(i64::from(
                r.newest_backup.is_some() && r.newest_backup != r.applied_backup,
            ))
        }),
    );
    reg.register(
        "lifeboat_standby_error",
        "1 when the last cycle failed (the applied state is kept)",
        gauges(&|r| Some(i64::from(r.error.is_some()))),
    );
    reg.register(
        "lifeboat_standby_activated",
        "1 once the namespace was activated (failover)",
        gauges(&|r| Some(i64::from(r.activated))),
    );
    encode(&reg)
}

/// One namespace of `standby status`. (Fields in the order `--json` has always printed
/// them.)
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct StatusRow {
    pub activated: bool,
    pub applied_backup: Option<String>,
    pub applied_backup_time: Option<String>,
    pub checked_at: Option<String>,
    pub error: Option<String>,
    /// Age of the applied backup (the RPO lag).
    pub lag_seconds: Option<f64>,
    pub namespace: String,
    pub newest_backup: Option<String>,
    pub newest_backup_time: Option<String>,
    pub schedule: String,
    pub source_namespace: String,
    pub state: Standing,
}

/// Where a namespace of `standby status` stands: its `state`, spelled the same in the table
/// and in JSON (and as the Standby resource's namespace states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    Activated,
    /// The last cycle failed (`error` says why).
    Failed,
    /// The bucket holds a newer backup.
    Behind,
    UpToDate,
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Standing::Activated => "activated",
            Standing::Failed => "failed",
            Standing::Behind => "behind",
            Standing::UpToDate => "up-to-date",
        })
    }
}

impl StatusRow {
    fn of(r: StandbyRow, now: OffsetDateTime) -> StatusRow {
        let time = |t: Option<String>| t.as_deref().map(crate::util::timestamp_text);
        let mut row = StatusRow {
            lag_seconds: age_seconds(r.applied_backup_time.as_deref(), now),
            activated: r.activated,
            applied_backup: r.applied_backup,
            applied_backup_time: time(r.applied_backup_time),
            checked_at: time(r.checked_at),
            error: r.error,
            namespace: r.namespace,
            newest_backup: r.newest_backup,
            newest_backup_time: time(r.newest_backup_time),
            schedule: r.schedule,
            source_namespace: r.source_namespace,
            state: Standing::UpToDate,
        };
        row.state = row.standing();
        row
    }

    pub fn standing(&self) -> Standing {
        if self.activated {
            Standing::Activated
        } else if self.error.is_some() {
            Standing::Failed
        } else if self.newest_backup != self.applied_backup {
            Standing::Behind
        } else {
            Standing::UpToDate
        }
    }
}

/// `standby status`: each namespace standby applied on this site.
pub async fn status(catalog: &Arc<Catalog>) -> Result<Vec<StatusRow>, StandbyError> {
    let rows = blocking(catalog, |c| c.standby_rows()).await?;
    let now = OffsetDateTime::now_utc();
    Ok(rows.into_iter().map(|r| StatusRow::of(r, now)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::RepoError;
    use crate::store::StoreError;

    fn row(ns: &str) -> StandbyRow {
        StandbyRow {
            namespace: ns.into(),
            schedule: "s".into(),
            source_namespace: ns.into(),
            applied_backup: Some("s-1".into()),
            applied_backup_time: Some("2026-01-01T00:00:00Z".into()),
            applied_at: None,
            newest_backup: Some("s-2".into()),
            newest_backup_time: None,
            checked_at: None,
            error: None,
            activated: false,
        }
    }

    #[test]
    fn the_figures_and_the_status_say_where_each_namespace_stands() {
        let now = crate::scheduler::catalog::parse_time("2026-01-01T00:01:40Z").unwrap();
        let mut failed = row("b");
        failed.error = Some("down".into());
        // A quote, a backslash and a newline in a label: escaped, one line still.
        let mut odd = row("x\"y\\z\nw");
        odd.applied_backup_time = None;
        let text = render_metrics(&[row("a"), failed.clone(), odd], now);
        for line in [
            "lifeboat_standby_lag_seconds{namespace=\"a\"} 100",
            "lifeboat_standby_behind{namespace=\"a\"} 1",
            "lifeboat_standby_error{namespace=\"a\"} 0",
            "lifeboat_standby_error{namespace=\"b\"} 1",
            "lifeboat_standby_activated{namespace=\"b\"} 0",
            r#"lifeboat_standby_behind{namespace="x\"y\\z\nw"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(
            !text.contains("lifeboat_standby_lag_seconds{namespace=\"x"),
            "no lag without an applied backup: {text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.contains("namespace=\"x")).count(),
            3
        );
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        let s = StatusRow::of(row("a"), now);
        assert_eq!(s.lag_seconds, Some(100.0));
        assert_eq!(s.standing(), Standing::Behind);
        assert_eq!(StatusRow::of(failed, now).standing().to_string(), "failed");
        assert_eq!(
            serde_json::to_value(Standing::UpToDate).unwrap(),
            Standing::UpToDate.to_string()
        );
        let keys: Vec<String> = serde_json::to_value(&s)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "the order `--json` printed");
    }

    #[tokio::test]
    async fn once_a_bucket_that_cannot_be_reached_is_a_retryable_failure_recorded_per_namespace() {
        let d = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open(&d.path().join("catalog.sqlite")).unwrap());
        catalog
            .standby_checked("db", "s", "db", None, None)
            .unwrap();
        let w = WorkerOptions {
            standby: StandbyOptions {
                schedule: "s".into(),
                namespaces: Default::default(),
                overwrite_claims: false,
            },
            interval: Duration::from_secs(1),
            once: true,
            metrics_addr: None,
            movers: Default::default(),
        };
        let site = Site::Dir(crate::k8s::source::ClusterDir::new(d.path().join("dr")));
        let open = || async {
            Err(StandbyError::Open(RepoError::Store(StoreError::Timeout {
                op: "get",
                key: "config".into(),
                after: Duration::from_secs(2),
            })))
        };
        let mut cycles = 0;
        let e = run(open, &site, &catalog, &w, &CancellationToken::new(), |_| {
            cycles += 1
        })
        .await
        .unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert_eq!(cycles, 0);
        let rows = catalog.standby_rows().unwrap();
        assert!(
            rows[0]
                .error
                .as_deref()
                .unwrap()
                .contains("cannot be opened"),
            "{rows:?}"
        );
    }
}
