//! The lifeboat server: takes a validated schedule configuration, a [`Runner`] that makes one
//! backup, and the catalog; runs each schedule when it is due and applies its retention after
//! each run, serving Prometheus metrics on the side ([`serve`]: with the `/metrics` endpoint
//! and SIGHUP reloads). Must not run two runs of one schedule at once (a run that would
//! overlap is skipped and recorded), must not run more than `max_concurrent` runs in all, and
//! runs a schedule that missed fire times while the server was down **once** on start, not
//! once per missed time. Every catalog call goes through [`blocking`], off the runtime.
//!
//! Time: fire times are wall-clock times, but the loop measures them with tokio's clock from a
//! wall-clock base ([`Clock`]), so tests drive whole days of schedules with paused time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use time::OffsetDateTime;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::{counted, encode, serve_metrics, MetricsError, Sorted};
use crate::scheduler::catalog::{blocking, Catalog, CatalogError, RunResult, RunState};
use crate::scheduler::config::{backup_name, load_config, Config, Schedule};
use crate::scheduler::cron::{missed, next_fires};
use crate::scheduler::runner::{RunOutcome, Runner};

/// Why the server stopped, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot watch SIGHUP: {0}")]
    Signal(std::io::Error),
}

impl ServerError {
    /// Starting again later may work: the catalog was busy, the metrics address taken.
    pub fn is_retryable(&self) -> bool {
        match self {
            ServerError::Catalog(e) => e.is_retryable(),
            ServerError::Metrics(e) => e.is_retryable(),
            ServerError::Signal(_) => false,
        }
    }
}

/// Wall-clock time measured by tokio's clock from a base.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: OffsetDateTime,
    at: tokio::time::Instant,
}

impl Clock {
    pub fn new(wall: OffsetDateTime) -> Clock {
        Clock {
            wall,
            at: tokio::time::Instant::now(),
        }
    }

    pub fn system() -> Clock {
        Clock::new(OffsetDateTime::now_utc())
    }

    pub fn now(&self) -> OffsetDateTime {
        self.wall + time::Duration::try_from(self.at.elapsed()).expect("in range")
    }

    /// The tokio instant of a wall-clock time (now, for times past).
    pub fn instant_of(&self, t: OffsetDateTime) -> tokio::time::Instant {
        let d = Duration::try_from(t - self.now()).unwrap_or(Duration::ZERO);
        let now = tokio::time::Instant::now();
        // Past what an Instant holds: a year on; the loop looks again by then.
        now.checked_add(d)
            .unwrap_or_else(|| now + Duration::from_secs(366 * 24 * 3600))
    }
}

/// The figures of `/metrics`, recorded from the runs' outcomes (rendered at a given `now`, for
/// the RPO clock).
#[derive(Debug, Default)]
pub struct Metrics {
    /// By schedule and result.
    runs: BTreeMap<(String, RunState), u64>,
    /// How long each schedule's runs took.
    durations: BTreeMap<String, Histogram>,
    bytes_read: BTreeMap<String, u64>,
    bytes_uploaded: BTreeMap<String, u64>,
    last_success: BTreeMap<String, OffsetDateTime>,
    running: BTreeMap<String, bool>,
}

/// The labels of a schedule's figures.
#[derive(Debug, Clone, EncodeLabelSet)]
struct ScheduleLabels {
    schedule: String,
}

/// The labels of `lifeboat_runs_total`.
#[derive(Debug, Clone, EncodeLabelSet)]
struct RunLabels {
    schedule: String,
    result: RunState,
}

/// A result is labelled as the catalog spells it (`succeeded`, `skipped`); the crate's derive
/// would write the variant's name (`Succeeded`), which dashboards do not know.
impl EncodeLabelValue for RunState {
    fn encode(&self, e: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        e.write_str(self.as_str())
    }
}

/// The buckets of the run durations: 1 s to about 4.5 hours, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

fn by_schedule(s: &str) -> ScheduleLabels {
    ScheduleLabels {
        schedule: s.to_string(),
    }
}

impl Metrics {
    fn record(&mut self, schedule: &str, out: &RunOutcome, seconds: f64, ended: OffsetDateTime) {
        *self
            .runs
            .entry((schedule.to_string(), out.result.into()))
            .or_default() += 1;
        self.durations
            .entry(schedule.to_string())
            .or_insert_with(duration_histogram)
            .observe(seconds);
        *self.bytes_read.entry(schedule.to_string()).or_default() += out.bytes_read;
        *self.bytes_uploaded.entry(schedule.to_string()).or_default() += out.bytes_uploaded;
        if out.result == RunResult::Succeeded {
            self.last_success.insert(schedule.to_string(), ended);
        }
    }

    fn skipped(&mut self, schedule: &str) {
        *self
            .runs
            .entry((schedule.to_string(), RunState::Skipped))
            .or_default() += 1;
    }

    fn set_running(&mut self, schedule: &str, running: bool) {
        self.running.insert(schedule.to_string(), running);
    }

    /// The OpenMetrics text at `now`, the RPO clock and the runs going listed for `schedules`.
    pub fn render(&self, now: OffsetDateTime, schedules: &[String]) -> String {
        let mut r = Registry::default();
        let counters = |m: &BTreeMap<String, u64>| counted(m, |s| by_schedule(s));
        r.register(
            "lifeboat_runs",
            "Scheduled runs by result",
            counted(&self.runs, |(s, result)| RunLabels {
                schedule: s.clone(),
                result: *result,
            }),
        );
        r.register(
            "lifeboat_run_duration_seconds",
            "How long the schedule's runs took, in seconds, from the start (once a slot of \
             max_concurrent is free) to the end; skipped runs are not in it",
            self.durations
                .iter()
                .map(|(s, h)| (by_schedule(s), h.clone()))
                .collect::<Sorted<_, _>>(),
        );
        r.register(
            "lifeboat_bytes_read",
            "Bytes read from volumes by runs",
            counters(&self.bytes_read),
        );
        r.register(
            "lifeboat_bytes_uploaded",
            "Bytes written to the repository by runs",
            counters(&self.bytes_uploaded),
        );
        r.register(
            "lifeboat_last_success_timestamp_seconds",
            "When the newest good backup of a schedule ended",
            self.last_success
                .iter()
                .map(|(s, t)| (by_schedule(s), ConstGauge::new(t.unix_timestamp())))
                .collect::<Sorted<_, _>>(),
        );
        r.register(
            "lifeboat_seconds_since_last_success",
            "The RPO clock: seconds since the newest good backup (-1: none yet)",
            schedules
                .iter()
                .map(|s| {
                    let v = self
                        .last_success
                        .get(s)
                        .map(|t| (now - *t).as_seconds_f64().round() as i64)
                        .unwrap_or(-1);
                    (by_schedule(s), ConstGauge::new(v))
                })
                .collect::<Sorted<_, _>>(),
        );
        r.register(
            "lifeboat_run_in_progress",
            "1 while a run of the schedule is going",
            schedules
                .iter()
                .map(|s| {
                    let v = i64::from(self.running.get(s).copied().unwrap_or(false));
                    (by_schedule(s), ConstGauge::new(v))
                })
                .collect::<Sorted<_, _>>(),
        );
        encode(&r)
    }
}

/// What the loop is told from outside.
#[derive(Debug)]
pub enum Control {
    /// A new configuration (already validated).
    Reload(Config),
}

pub struct Server {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub runner: Arc<dyn Runner>,
    pub metrics: Arc<Mutex<Metrics>>,
    pub clock: Clock,
    pub max_concurrent: usize,
}

/// The runs going, and the names of their schedules.
struct Running {
    tasks: JoinSet<()>,
    names: Arc<Mutex<HashSet<String>>>,
}

/// What a run's task needs: a run of `schedule` named `backup`, row `id` of the catalog.
struct Run {
    runner: Arc<dyn Runner>,
    catalog: Arc<Catalog>,
    metrics: Arc<Mutex<Metrics>>,
    names: Arc<Mutex<HashSet<String>>>,
    clock: Clock,
    config: Arc<Config>,
    schedule: Schedule,
    backup: String,
    id: i64,
    cancel: CancellationToken,
}

impl Run {
    /// Waits for a permit (bounded across schedules), runs, records the outcome, applies the
    /// schedule's retention. The permit is held to the end, retention included.
    async fn go(self, permits: Arc<Semaphore>) {
        let permit: Option<OwnedSemaphorePermit> = tokio::select! {
            p = permits.acquire_owned() => p.ok(),
            _ = self.cancel.cancelled() => None,
        };
        let name = self.schedule.name.clone();
        self.metrics.lock().unwrap().set_running(&name, true);
        let started = tokio::time::Instant::now();
        let out = match &permit {
            Some(_) => self
                .runner
                .run(
                    self.schedule.clone(),
                    self.backup.clone(),
                    self.cancel.clone(),
                )
                .await
                .unwrap_or_else(|e| RunOutcome::failed(&e, self.cancel.is_cancelled())),
            None => RunOutcome {
                error: Some("the server stopped before the run could start".into()),
                ..RunOutcome::new(RunResult::Cancelled)
            },
        };
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(result = %out.result, seconds = secs, "run ended");
        if let Some(e) = &out.error {
            tracing::error!("run failed: {e}");
        }
        self.record(&out).await;
        {
            let mut m = self.metrics.lock().unwrap();
            m.record(&name, &out, secs, self.clock.now());
            m.set_running(&name, false);
        }
        if out.result != RunResult::Cancelled && !self.cancel.is_cancelled() {
            self.retain().await;
        }
        self.names.lock().unwrap().remove(&name);
        drop(permit);
    }

    async fn record(&self, out: &RunOutcome) {
        let (id, o) = (self.id, out.clone());
        let r = blocking(&self.catalog, move |c| {
            c.finish_run(
                id,
                o.result,
                o.bytes_read,
                o.bytes_uploaded,
                o.stats.as_ref(),
                o.error.as_deref(),
            )
        })
        .await;
        if let Err(e) = r {
            tracing::error!("could not record the run in the catalog: {e}");
        }
    }

    async fn retain(&self) {
        let s = &self.schedule;
        match self.runner.retain(s.clone(), self.config.clone()).await {
            Ok(Some(r)) => tracing::info!(
                "retention: removed {} backup(s) and {} volume snapshot(s) by policy {}",
                r.backups_removed,
                r.snapshots_removed,
                s.policy
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!("retention not applied this time: {e}"),
        }
    }
}

/// Where the loop is: the runs going, each schedule's next fire, the bound on runs at once,
/// and the token that cancels the runs when the server stops.
struct Loop {
    running: Running,
    due: HashMap<String, OffsetDateTime>,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Server {
    /// The configuration's schedules, each with whether it is suspended (the catalog's
    /// `schedule suspend|resume` over the configuration's `suspend`).
    async fn active(&self) -> Result<Vec<(Schedule, bool)>, CatalogError> {
        let config = self.config.clone();
        blocking(&self.catalog, move |c| {
            let rows = c.schedules()?;
            Ok(config
                .schedules
                .values()
                .map(|s| {
                    let suspended = rows
                        .iter()
                        .find(|r| r.name == s.name)
                        .map(|r| r.suspended)
                        .unwrap_or(s.suspend);
                    (s.clone(), suspended)
                })
                .collect())
        })
        .await
    }

    async fn last_run(&self, schedule: &str) -> Result<Option<OffsetDateTime>, CatalogError> {
        let name = schedule.to_string();
        blocking(&self.catalog, move |c| c.last_run(&name)).await
    }

    /// Starts a run of `s` for its fire time `fire`, or records it skipped when the previous
    /// run of `s` is still going.
    async fn start_run(
        &self,
        lp: &mut Loop,
        s: &Schedule,
        fire: OffsetDateTime,
    ) -> Result<(), CatalogError> {
        if !lp.running.names.lock().unwrap().insert(s.name.clone()) {
            tracing::warn!(schedule = %s.name, fire = %crate::repository::rfc3339(fire), "skipped: the previous run is still going");
            let name = s.name.clone();
            blocking(&self.catalog, move |c| {
                c.record_skip(
                    &name,
                    fire,
                    "the previous run of this schedule was still going",
                )
            })
            .await?;
            self.metrics.lock().unwrap().skipped(&s.name);
            return Ok(());
        }
        let backup = backup_name(&s.name, fire);
        let (n, b) = (s.name.clone(), backup.clone());
        let id = blocking(&self.catalog, move |c| c.start_run(&n, &b, fire)).await?;
        let span = tracing::info_span!("run", schedule = %s.name, backup = %backup);
        let run = Run {
            runner: self.runner.clone(),
            catalog: self.catalog.clone(),
            metrics: self.metrics.clone(),
            names: lp.running.names.clone(),
            clock: self.clock,
            config: self.config.clone(),
            schedule: s.clone(),
            backup,
            id,
            cancel: lp.cancel.clone(),
        };
        lp.running
            .tasks
            .spawn(run.go(lp.permits.clone()).instrument(span));
        Ok(())
    }

    /// Records the configuration's schedules and closes the runs an earlier server left.
    async fn open_catalog(&self) -> Result<(), CatalogError> {
        let cfg = self.config.clone();
        blocking(&self.catalog, move |c| {
            c.sync_schedules(&cfg)?;
            let n = c.close_interrupted_runs()?;
            if n > 0 {
                tracing::warn!(
                    "{n} run(s) left unfinished by an earlier server recorded as failed"
                );
            }
            Ok(())
        })
        .await
    }

    /// Missed fire times while the server was down: one run now.
    async fn catch_up(
        &self,
        lp: &mut Loop,
        active: &[(Schedule, bool)],
        now: OffsetDateTime,
    ) -> Result<(), CatalogError> {
        for (s, suspended) in active {
            let last = self.last_run(&s.name).await?;
            if !suspended && missed(&self.config.policy_of(s).trigger, now, last) {
                tracing::info!(schedule = %s.name, "missed runs while stopped: running once now");
                self.start_run(lp, s, now).await?;
            }
        }
        Ok(())
    }

    /// The next fire of each schedule that has none yet, after its last run.
    async fn plan(
        &self,
        lp: &mut Loop,
        active: &[(Schedule, bool)],
        now: OffsetDateTime,
    ) -> Result<(), CatalogError> {
        for (s, _) in active {
            if !lp.due.contains_key(&s.name) {
                let last = self.last_run(&s.name).await?;
                let next = next_fires(&self.config.policy_of(s).trigger, now, last, 1);
                if let Some(n) = next.first() {
                    lp.due.insert(s.name.clone(), *n);
                }
            }
        }
        Ok(())
    }

    /// Starts the runs whose fire time has come, and plans each one's next fire.
    async fn fire(&self, lp: &mut Loop, active: &[(Schedule, bool)]) -> Result<(), CatalogError> {
        let now = self.clock.now();
        let fired: Vec<(String, OffsetDateTime)> = lp
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, t)| (n.clone(), *t))
            .collect();
        for (name, fire) in fired {
            lp.due.remove(&name);
            let Some((s, suspended)) = active.iter().find(|(s, _)| s.name == name) else {
                continue;
            };
            if *suspended {
                tracing::info!(schedule = %name, "suspended: not run");
            } else {
                self.start_run(lp, s, fire).await?;
            }
            // The next fire after this one, not after the run: a run that overlaps the next
            // fire time makes that one skipped.
            let next = next_fires(
                &self.config.policy_of(s).trigger,
                fire.max(now),
                Some(fire),
                1,
            );
            if let Some(n) = next.first() {
                lp.due.insert(name.clone(), *n);
            }
        }
        Ok(())
    }

    async fn reload(&mut self, cfg: Config) -> Result<(), CatalogError> {
        let cfg = Arc::new(cfg);
        let c2 = cfg.clone();
        blocking(&self.catalog, move |c| c.sync_schedules(&c2)).await?;
        self.config = cfg;
        tracing::info!(
            schedules = self.config.schedules.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Runs until `shutdown` is cancelled; then cancels the runs going (their post rules still
    /// run) and waits for them. `control` brings new configurations.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<(), CatalogError> {
        self.open_catalog().await?;
        let mut lp = Loop {
            running: Running {
                tasks: JoinSet::new(),
                names: Arc::new(Mutex::new(HashSet::new())),
            },
            due: HashMap::new(),
            permits: Arc::new(Semaphore::new(self.max_concurrent.max(1))),
            cancel: CancellationToken::new(),
        };
        let mut first = true;
        loop {
            let now = self.clock.now();
            let active = self.active().await?;
            if first {
                self.catch_up(&mut lp, &active, now).await?;
                first = false;
            }
            self.plan(&mut lp, &active, now).await?;
            let sleep = match lp.due.values().min().copied() {
                Some(t) => tokio::time::sleep_until(self.clock.instant_of(t)),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                c = control.recv() => match c {
                    Some(Control::Reload(cfg)) => {
                        self.reload(cfg).await?;
                        lp.due.clear();
                    }
                    None => {}
                },
                _ = sleep => self.fire(&mut lp, &active).await?,
                Some(_) = lp.running.tasks.join_next(), if !lp.running.tasks.is_empty() => {}
            }
        }
        tracing::info!("stopping: cancelling the runs going (their post rules still run)");
        lp.cancel.cancel();
        while lp.running.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// What `lifeboat server` serves: a configuration (loaded from `config_path`, reloaded from it
/// on SIGHUP), the catalog, a runner, and optionally the `/metrics` endpoint.
pub struct Serve {
    pub config_path: PathBuf,
    pub config: Config,
    pub catalog: Arc<Catalog>,
    pub runner: Arc<dyn Runner>,
    pub metrics_addr: Option<SocketAddr>,
    pub max_concurrent: usize,
}

/// Serves until `shutdown`: the loop of [`Server::run`] on the system clock, metrics on
/// `metrics_addr`, and on SIGHUP the configuration reloaded (or, when the new one is invalid,
/// the running one kept, with an error in the log).
pub async fn serve(s: Serve, shutdown: CancellationToken) -> Result<(), ServerError> {
    let clock = Clock::system();
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let names = Arc::new(Mutex::new(
        s.config.schedules.keys().cloned().collect::<Vec<_>>(),
    ));
    if let Some(addr) = s.metrics_addr {
        let listener = crate::metrics::listen(addr).await?;
        let (n, m) = (names.clone(), metrics.clone());
        let render = move || m.lock().unwrap().render(clock.now(), &n.lock().unwrap());
        tokio::spawn(serve_metrics(listener, Arc::new(render), shutdown.clone()));
        tracing::info!(%addr, "metrics on /metrics");
    }
    let control = reload_on_sighup(s.config_path, names)?;
    let server = Server {
        config: Arc::new(s.config),
        catalog: s.catalog,
        runner: s.runner,
        metrics,
        clock,
        max_concurrent: s.max_concurrent,
    };
    server.run(shutdown, control).await?;
    Ok(())
}

/// On each SIGHUP, the configuration at `path` again (read off the runtime): sent to the loop
/// when valid, its schedules' names put in `names` (for the metrics); refused, with an error
/// in the log, when not.
fn reload_on_sighup(
    path: PathBuf,
    names: Arc<Mutex<Vec<String>>>,
) -> Result<mpsc::Receiver<Control>, ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(4);
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let p = path.clone();
            match crate::util::blocking(move || load_config(&p)).await {
                Ok(cfg) => {
                    *names.lock().unwrap() = cfg.schedules.keys().cloned().collect();
                    if tx.send(Control::Reload(cfg)).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("configuration rejected, the running one stays: {e}"),
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::config::parse_config;
    use crate::scheduler::runner::RunError;
    use futures::future::BoxFuture;

    struct Fake {
        /// (backup name, started at) of each run.
        runs: Arc<Mutex<Vec<(String, OffsetDateTime)>>>,
        takes: Duration,
        clock: Clock,
    }

    impl Runner for Fake {
        fn run(
            &self,
            _s: Schedule,
            backup: String,
            cancel: CancellationToken,
        ) -> BoxFuture<'static, Result<RunOutcome, RunError>> {
            self.runs.lock().unwrap().push((backup, self.clock.now()));
            let takes = self.takes;
            Box::pin(async move {
                tokio::select! {
                    _ = tokio::time::sleep(takes) => Ok(RunOutcome { bytes_read: 10, ..RunOutcome::new(RunResult::Succeeded) }),
                    _ = cancel.cancelled() => Ok(RunOutcome::new(RunResult::Cancelled)),
                }
            })
        }
    }

    fn config(policy: &str) -> Config {
        parse_config(&[(
            "s.yaml".into(),
            format!("kind: SchedulePolicy\nmetadata: {{name: p}}\nspec: {policy}\n---\nkind: BackupSchedule\nmetadata: {{name: app}}\nspec: {{schedulePolicyName: p, template: {{namespaces: [a]}}}}\n"),
        )])
        .unwrap()
    }

    async fn drive(
        policy: &str,
        takes: Duration,
        for_: Duration,
        catalog: Arc<Catalog>,
        start: OffsetDateTime,
    ) -> (
        Vec<(String, OffsetDateTime)>,
        Vec<crate::scheduler::catalog::RunRow>,
        String,
    ) {
        let clock = Clock::new(start);
        let runs = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let server = Server {
            config: Arc::new(config(policy)),
            catalog: catalog.clone(),
            runner: Arc::new(Fake {
                runs: runs.clone(),
                takes,
                clock,
            }),
            metrics: metrics.clone(),
            clock,
            max_concurrent: 2,
        };
        let stop = CancellationToken::new();
        let (_tx, rx) = mpsc::channel(1);
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(for_).await;
            s2.cancel();
        });
        server.run(stop, rx).await.unwrap();
        let text = metrics.lock().unwrap().render(clock.now(), &["app".into()]);
        let r = runs.lock().unwrap().clone();
        (r, catalog.runs(None, 1000).unwrap(), text)
    }

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn the_metrics_text_is_openmetrics_with_its_labels_escaped() {
        let mut m = Metrics::default();
        let ok = RunOutcome {
            bytes_read: 5,
            bytes_uploaded: 3,
            ..RunOutcome::new(RunResult::Succeeded)
        };
        // A quote, a backslash and a newline: each escaped, the line stays one line.
        let odd = "a\"b\\c\nd";
        m.record(odd, &ok, 1.5, t("2026-11-24T00:00:00Z"));
        m.skipped(odd);
        m.record(
            "c",
            &RunOutcome::new(RunResult::Partial),
            2.0,
            t("2026-11-24T00:00:00Z"),
        );
        m.set_running("c", true);
        let text = m.render(t("2026-11-24T00:01:00Z"), &[odd.into(), "c".into()]);
        let (buckets, rest): (Vec<&str>, Vec<&str>) = text
            .lines()
            .partition(|l| l.starts_with("lifeboat_run_duration_seconds_bucket"));
        assert_eq!(
            rest.join("\n") + "\n",
            r#"# HELP lifeboat_runs Scheduled runs by result.
# TYPE lifeboat_runs counter
lifeboat_runs_total{schedule="a\"b\\c\nd",result="succeeded"} 1
lifeboat_runs_total{schedule="a\"b\\c\nd",result="skipped"} 1
lifeboat_runs_total{schedule="c",result="partial"} 1
# HELP lifeboat_run_duration_seconds How long the schedule's runs took, in seconds, from the start (once a slot of max_concurrent is free) to the end; skipped runs are not in it.
# TYPE lifeboat_run_duration_seconds histogram
lifeboat_run_duration_seconds_sum{schedule="a\"b\\c\nd"} 1.5
lifeboat_run_duration_seconds_count{schedule="a\"b\\c\nd"} 1
lifeboat_run_duration_seconds_sum{schedule="c"} 2.0
lifeboat_run_duration_seconds_count{schedule="c"} 1
# HELP lifeboat_bytes_read Bytes read from volumes by runs.
# TYPE lifeboat_bytes_read counter
lifeboat_bytes_read_total{schedule="a\"b\\c\nd"} 5
lifeboat_bytes_read_total{schedule="c"} 0
# HELP lifeboat_bytes_uploaded Bytes written to the repository by runs.
# TYPE lifeboat_bytes_uploaded counter
lifeboat_bytes_uploaded_total{schedule="a\"b\\c\nd"} 3
lifeboat_bytes_uploaded_total{schedule="c"} 0
# HELP lifeboat_last_success_timestamp_seconds When the newest good backup of a schedule ended.
# TYPE lifeboat_last_success_timestamp_seconds gauge
lifeboat_last_success_timestamp_seconds{schedule="a\"b\\c\nd"} 1795478400
# HELP lifeboat_seconds_since_last_success The RPO clock: seconds since the newest good backup (-1: none yet).
# TYPE lifeboat_seconds_since_last_success gauge
lifeboat_seconds_since_last_success{schedule="a\"b\\c\nd"} 60
lifeboat_seconds_since_last_success{schedule="c"} -1
# HELP lifeboat_run_in_progress 1 while a run of the schedule is going.
# TYPE lifeboat_run_in_progress gauge
lifeboat_run_in_progress{schedule="a\"b\\c\nd"} 0
lifeboat_run_in_progress{schedule="c"} 1
# EOF
"#
        );
        // 15 bounds and +Inf for each schedule; cumulative counts.
        assert_eq!(buckets.len(), 2 * 16, "{text}");
        for line in [
            r#"lifeboat_run_duration_seconds_bucket{le="1.0",schedule="a\"b\\c\nd"} 0"#,
            r#"lifeboat_run_duration_seconds_bucket{le="2.0",schedule="a\"b\\c\nd"} 1"#,
            r#"lifeboat_run_duration_seconds_bucket{le="1.0",schedule="c"} 0"#,
            r#"lifeboat_run_duration_seconds_bucket{le="2.0",schedule="c"} 1"#,
            r#"lifeboat_run_duration_seconds_bucket{le="16384.0",schedule="c"} 1"#,
            r#"lifeboat_run_duration_seconds_bucket{le="+Inf",schedule="c"} 1"#,
        ] {
            assert!(buckets.contains(&line), "{line}\n{text}");
        }
    }

    /// Counts the runs going at once.
    struct Counting {
        now: Arc<std::sync::atomic::AtomicUsize>,
        max: Arc<std::sync::atomic::AtomicUsize>,
        runs: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Runner for Counting {
        fn run(
            &self,
            _s: Schedule,
            _b: String,
            _c: CancellationToken,
        ) -> BoxFuture<'static, Result<RunOutcome, RunError>> {
            use std::sync::atomic::Ordering::SeqCst;
            let (now, max, runs) = (self.now.clone(), self.max.clone(), self.runs.clone());
            Box::pin(async move {
                let n = now.fetch_add(1, SeqCst) + 1;
                max.fetch_max(n, SeqCst);
                runs.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_secs(600)).await;
                now.fetch_sub(1, SeqCst);
                Ok(RunOutcome::new(RunResult::Succeeded))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_across_schedules_is_bounded_and_waiting_runs_are_not_skipped() {
        use std::sync::atomic::Ordering::SeqCst;
        let d = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open(&d.path().join("c.sqlite")).unwrap());
        let mut text = String::from("kind: SchedulePolicy\nmetadata: {name: p}\nspec: {cron: {expression: \"0 * * * *\"}}\n");
        for n in ["a", "b", "c"] {
            text.push_str(&format!("---\nkind: BackupSchedule\nmetadata: {{name: {n}}}\nspec: {{schedulePolicyName: p, template: {{namespaces: [x]}}}}\n"));
        }
        let config = parse_config(&[("s.yaml".into(), text)]).unwrap();
        let counting = Counting {
            now: Default::default(),
            max: Default::default(),
            runs: Default::default(),
        };
        let (max, runs) = (counting.max.clone(), counting.runs.clone());
        let clock = Clock::new(t("2026-11-24T00:30:00Z"));
        let server = Server {
            config: Arc::new(config),
            catalog: catalog.clone(),
            runner: Arc::new(counting),
            metrics: Default::default(),
            clock,
            max_concurrent: 2,
        };
        let stop = CancellationToken::new();
        let (_tx, rx) = mpsc::channel(1);
        let s2 = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
            s2.cancel();
        });
        server.run(stop, rx).await.unwrap();
        // Three schedules fire together each hour; two run at once, the third waits its turn.
        assert_eq!(max.load(SeqCst), 2);
        assert_eq!(runs.load(SeqCst), 9);
        let rows = catalog.runs(None, 100).unwrap();
        assert!(
            rows.iter().all(|r| r.result != RunState::Skipped),
            "{rows:#?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_hourly_cron_runs_on_the_hour_for_a_day() {
        let d = tempfile::tempdir().unwrap();
        let cat = Arc::new(Catalog::open(&d.path().join("c.sqlite")).unwrap());
        let (runs, rows, metrics) = drive(
            "{cron: {expression: \"0 * * * *\"}}",
            Duration::from_secs(60),
            Duration::from_secs(24 * 3600 + 15 * 60),
            cat,
            t("2026-11-24T00:30:00Z"),
        )
        .await;
        assert_eq!(runs.len(), 24);
        for (i, (name, at)) in runs.iter().enumerate() {
            assert_eq!(at.minute(), 0, "{name} at {at}");
            assert_eq!(
                name,
                &format!("app-202611{:02}-{:02}0000", 24 + (i + 1) / 24, (i + 1) % 24)
            );
        }
        assert_eq!(
            rows.iter()
                .filter(|r| r.result == RunState::Succeeded)
                .count(),
            24
        );
        assert!(
            metrics.contains("lifeboat_runs_total{schedule=\"app\",result=\"succeeded\"} 24"),
            "{metrics}"
        );
        assert!(
            metrics.contains("lifeboat_bytes_read_total{schedule=\"app\"} 240"),
            "{metrics}"
        );
        // 24 runs of a minute each: all in the bucket up to 64 s, none up to 32 s.
        for line in [
            "lifeboat_run_duration_seconds_count{schedule=\"app\"} 24",
            "lifeboat_run_duration_seconds_bucket{le=\"32.0\",schedule=\"app\"} 0",
            "lifeboat_run_duration_seconds_bucket{le=\"64.0\",schedule=\"app\"} 24",
            "lifeboat_run_duration_seconds_bucket{le=\"+Inf\",schedule=\"app\"} 24",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
        }
        let sum: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("lifeboat_run_duration_seconds_sum{schedule=\"app\"} "))
            .expect("a _sum line")
            .parse()
            .unwrap();
        assert!((1440.0..1441.0).contains(&sum), "{sum}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_overlaps_the_next_fire_makes_it_skipped() {
        let d = tempfile::tempdir().unwrap();
        let cat = Arc::new(Catalog::open(&d.path().join("c.sqlite")).unwrap());
        // Every 15 minutes, each run takes 20: every other fire is skipped.
        let (runs, rows, _) = drive(
            "{interval: {minutes: 15}}",
            Duration::from_secs(20 * 60),
            Duration::from_secs(2 * 3600 + 60),
            cat,
            t("2026-11-24T00:00:00Z"),
        )
        .await;
        let skipped = rows
            .iter()
            .filter(|r| r.result == RunState::Skipped)
            .count();
        assert_eq!(runs.len() + skipped, 8, "{rows:#?}");
        assert_eq!(runs.len(), 4);
        for w in runs.windows(2) {
            assert_eq!(
                w[1].1 - w[0].1,
                time::Duration::minutes(30),
                "never two at once"
            );
        }
        assert!(rows
            .iter()
            .filter(|r| r.result == RunState::Skipped)
            .all(|r| r.error.as_deref().unwrap().contains("still going")));
    }

    #[tokio::test(start_paused = true)]
    async fn after_downtime_missed_runs_happen_once() {
        let d = tempfile::tempdir().unwrap();
        let cat = Arc::new(Catalog::open(&d.path().join("c.sqlite")).unwrap());
        // A run at 01:00, then the server is down until 06:30.
        let id = cat
            .start_run("app", "app-x", t("2026-11-24T01:00:00Z"))
            .unwrap();
        cat.finish_run(id, RunResult::Succeeded, 0, 0, None, None)
            .unwrap();
        cat.conn()
            .execute("UPDATE runs SET started = '2026-11-24T01:00:00Z'", [])
            .unwrap();
        let (runs, _, _) = drive(
            "{cron: {expression: \"0 * * * *\"}}",
            Duration::from_secs(60),
            Duration::from_secs(20 * 60),
            cat,
            t("2026-11-24T06:30:00Z"),
        )
        .await;
        assert_eq!(runs.len(), 1, "one catch-up run, not five: {runs:?}");
        assert_eq!(runs[0].1, t("2026-11-24T06:30:00Z"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspended_schedule_does_not_run_and_shutdown_cancels_the_run_going() {
        let d = tempfile::tempdir().unwrap();
        let cat = Arc::new(Catalog::open(&d.path().join("c.sqlite")).unwrap());
        cat.sync_schedules(&config("{interval: {minutes: 10}}"))
            .unwrap();
        cat.set_suspended("app", true).unwrap();
        let (runs, _, _) = drive(
            "{interval: {minutes: 10}}",
            Duration::from_secs(60),
            Duration::from_secs(3600),
            cat.clone(),
            t("2026-11-24T00:00:00Z"),
        )
        .await;
        assert!(runs.is_empty());
        cat.set_suspended("app", false).unwrap();
        // A run of an hour, stopped after 15 minutes: recorded as cancelled.
        let (runs, rows, _) = drive(
            "{interval: {minutes: 10}}",
            Duration::from_secs(3600),
            Duration::from_secs(15 * 60),
            cat,
            t("2026-11-24T02:00:00Z"),
        )
        .await;
        assert_eq!(runs.len(), 1);
        assert_eq!(
            rows.last().unwrap().result,
            RunState::Cancelled,
            "{rows:#?}"
        );
    }
}
