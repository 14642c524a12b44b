//! The lifeboat server: takes a validated schedule configuration, a [`Runner`] that makes one
//! backup, and the catalog; runs each schedule when it is due and applies its retention after
//! each run, serving Prometheus metrics on the side. Must not run two runs of one schedule at
//! once (a run that would overlap is skipped and recorded), must not run more than
//! `max_concurrent` runs in all, and runs a schedule that missed fire times while the server
//! was down **once** on start, not once per missed time.
//!
//! Time: fire times are wall-clock times, but the loop measures them with tokio's clock from a
//! wall-clock base ([`Clock`]), so tests drive whole days of schedules with paused time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::scheduler::catalog::{blocking, Catalog, CatalogError};
use crate::scheduler::config::{missed, next_fires, Config, Schedule};

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
        let d = t - self.now();
        tokio::time::Instant::now() + Duration::try_from(d).unwrap_or(Duration::ZERO)
    }
}

/// How one run ended.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome {
    /// `succeeded`, `partial`, `failed` or `cancelled`.
    pub result: String,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub stats: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// Makes one backup of a schedule, named `backup`.
pub trait Runner: Send + Sync + 'static {
    fn run(
        &self,
        schedule: Schedule,
        backup: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, RunOutcome>;
    /// Applies the schedule's retention after a run (a no-op by default).
    fn retain(
        &self,
        _schedule: Schedule,
        _config: Arc<Config>,
    ) -> BoxFuture<'static, Result<String, String>> {
        Box::pin(async { Ok(String::new()) })
    }
}

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    runs: BTreeMap<(String, String), u64>,
    duration: BTreeMap<String, f64>,
    bytes_read: BTreeMap<String, u64>,
    bytes_uploaded: BTreeMap<String, u64>,
    last_success: BTreeMap<String, OffsetDateTime>,
    running: BTreeMap<String, bool>,
}

impl Metrics {
    fn record(&mut self, schedule: &str, out: &RunOutcome, seconds: f64, ended: OffsetDateTime) {
        *self
            .runs
            .entry((schedule.to_string(), out.result.clone()))
            .or_default() += 1;
        self.duration.insert(schedule.to_string(), seconds);
        *self.bytes_read.entry(schedule.to_string()).or_default() += out.bytes_read;
        *self.bytes_uploaded.entry(schedule.to_string()).or_default() += out.bytes_uploaded;
        if out.result == "succeeded" {
            self.last_success.insert(schedule.to_string(), ended);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, now: OffsetDateTime, schedules: &[String]) -> String {
        let mut o = String::new();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        o.push_str("# HELP lifeboat_runs_total Scheduled runs by result.\n# TYPE lifeboat_runs_total counter\n");
        for ((s, r), n) in &self.runs {
            o.push_str(&format!(
                "lifeboat_runs_total{{schedule=\"{}\",result=\"{}\"}} {n}\n",
                esc(s),
                esc(r)
            ));
        }
        o.push_str("# HELP lifeboat_run_duration_seconds Duration of the newest run.\n# TYPE lifeboat_run_duration_seconds gauge\n");
        for (s, d) in &self.duration {
            o.push_str(&format!(
                "lifeboat_run_duration_seconds{{schedule=\"{}\"}} {d:.3}\n",
                esc(s)
            ));
        }
        o.push_str("# HELP lifeboat_bytes_read_total Bytes read from volumes by runs.\n# TYPE lifeboat_bytes_read_total counter\n");
        for (s, b) in &self.bytes_read {
            o.push_str(&format!(
                "lifeboat_bytes_read_total{{schedule=\"{}\"}} {b}\n",
                esc(s)
            ));
        }
        o.push_str("# HELP lifeboat_bytes_uploaded_total Bytes written to the repository by runs.\n# TYPE lifeboat_bytes_uploaded_total counter\n");
        for (s, b) in &self.bytes_uploaded {
            o.push_str(&format!(
                "lifeboat_bytes_uploaded_total{{schedule=\"{}\"}} {b}\n",
                esc(s)
            ));
        }
        o.push_str("# HELP lifeboat_last_success_timestamp_seconds When the newest good backup of a schedule ended.\n# TYPE lifeboat_last_success_timestamp_seconds gauge\n");
        for (s, t) in &self.last_success {
            o.push_str(&format!(
                "lifeboat_last_success_timestamp_seconds{{schedule=\"{}\"}} {}\n",
                esc(s),
                t.unix_timestamp()
            ));
        }
        o.push_str("# HELP lifeboat_seconds_since_last_success The RPO clock: seconds since the newest good backup (-1: none yet).\n# TYPE lifeboat_seconds_since_last_success gauge\n");
        for s in schedules {
            let v = self
                .last_success
                .get(s)
                .map(|t| (now - *t).as_seconds_f64())
                .unwrap_or(-1.0);
            o.push_str(&format!(
                "lifeboat_seconds_since_last_success{{schedule=\"{}\"}} {v:.0}\n",
                esc(s)
            ));
        }
        o.push_str("# HELP lifeboat_run_in_progress 1 while a run of the schedule is going.\n# TYPE lifeboat_run_in_progress gauge\n");
        for s in schedules {
            let v = self.running.get(s).copied().unwrap_or(false) as u8;
            o.push_str(&format!(
                "lifeboat_run_in_progress{{schedule=\"{}\"}} {v}\n",
                esc(s)
            ));
        }
        o
    }
}

/// What the loop is told from outside.
#[derive(Debug)]
pub enum Control {
    /// A new configuration (already validated).
    Reload(Config),
}

/// The backup name of a run: the schedule's name and the fire time (UTC).
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

pub struct Server {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub runner: Arc<dyn Runner>,
    pub metrics: Arc<Mutex<Metrics>>,
    pub clock: Clock,
    pub max_concurrent: usize,
}

struct Running {
    tasks: JoinSet<()>,
    names: Arc<Mutex<HashSet<String>>>,
}

impl Server {
    fn active(&self) -> Result<Vec<(Schedule, bool)>, CatalogError> {
        let rows = self.catalog.schedules()?;
        Ok(self
            .config
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
    }

    fn start_run(
        &self,
        running: &mut Running,
        s: &Schedule,
        fire: OffsetDateTime,
        cancel: &CancellationToken,
        permits: &Arc<Semaphore>,
    ) -> Result<(), CatalogError> {
        let mut names = running.names.lock().unwrap();
        if names.contains(&s.name) {
            tracing::warn!(schedule = %s.name, fire = %crate::repository::rfc3339(fire), "skipped: the previous run is still going");
            self.catalog.record_skip(
                &s.name,
                fire,
                "the previous run of this schedule was still going",
            )?;
            *self
                .metrics
                .lock()
                .unwrap()
                .runs
                .entry((s.name.clone(), "skipped".into()))
                .or_default() += 1;
            return Ok(());
        }
        names.insert(s.name.clone());
        drop(names);
        let name = backup_name(&s.name, fire);
        let id = self.catalog.start_run(&s.name, &name, fire)?;
        let (runner, catalog, metrics, names, clock, config) = (
            self.runner.clone(),
            self.catalog.clone(),
            self.metrics.clone(),
            running.names.clone(),
            self.clock,
            self.config.clone(),
        );
        let (s, cancel, permits) = (s.clone(), cancel.clone(), permits.clone());
        let span = tracing::info_span!("run", schedule = %s.name, backup = %name);
        running.tasks.spawn(
            async move {
                // Bounded across schedules: a run waits here for a permit.
                let permit = tokio::select! {
                    p = permits.acquire_owned() => p.ok(),
                    _ = cancel.cancelled() => None,
                };
                metrics.lock().unwrap().running.insert(s.name.clone(), true);
                let started = tokio::time::Instant::now();
                let out = match permit {
                    Some(_) => runner.run(s.clone(), name.clone(), cancel.clone()).await,
                    None => RunOutcome {
                        result: "cancelled".into(),
                        error: Some("the server stopped before the run could start".into()),
                        ..Default::default()
                    },
                };
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(result = %out.result, seconds = secs, "run ended");
                if let Some(e) = &out.error {
                    tracing::error!("run failed: {e}");
                }
                let o = out.clone();
                let r = blocking(&catalog, move |c| {
                    c.finish_run(
                        id,
                        &o.result,
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
                {
                    let mut m = metrics.lock().unwrap();
                    m.record(&s.name, &out, secs, clock.now());
                    m.running.insert(s.name.clone(), false);
                }
                if out.result != "cancelled" && !cancel.is_cancelled() {
                    match runner.retain(s.clone(), config).await {
                        Ok(msg) if !msg.is_empty() => tracing::info!("retention: {msg}"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("retention not applied this time: {e}"),
                    }
                }
                names.lock().unwrap().remove(&s.name);
            }
            .instrument(span),
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
        {
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
            .await?;
        }
        let permits = Arc::new(Semaphore::new(self.max_concurrent.max(1)));
        let runs_cancel = CancellationToken::new();
        let mut running = Running {
            tasks: JoinSet::new(),
            names: Arc::new(Mutex::new(HashSet::new())),
        };
        let mut due: HashMap<String, OffsetDateTime> = HashMap::new();
        let mut first = true;
        loop {
            let now = self.clock.now();
            let active = self.active()?;
            // Missed fire times while the server was down: one run now (on start and reload).
            if first {
                for (s, suspended) in &active {
                    let last = self.catalog.last_run(&s.name)?;
                    if !suspended && missed(&self.config.policy_of(s).trigger, now, last) {
                        tracing::info!(schedule = %s.name, "missed runs while stopped: running once now");
                        self.start_run(&mut running, s, now, &runs_cancel, &permits)?;
                    }
                }
                first = false;
            }
            for (s, _) in &active {
                if !due.contains_key(&s.name) {
                    let last = self.catalog.last_run(&s.name)?;
                    let next = next_fires(&self.config.policy_of(s).trigger, now, last, 1);
                    if let Some(n) = next.first() {
                        due.insert(s.name.clone(), *n);
                    }
                }
            }
            let next = due.values().min().copied();
            let sleep = match next {
                Some(t) => tokio::time::sleep_until(self.clock.instant_of(t)),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                c = control.recv() => match c {
                    Some(Control::Reload(cfg)) => {
                        let cfg = Arc::new(cfg);
                        let c2 = cfg.clone();
                        blocking(&self.catalog, move |c| c.sync_schedules(&c2)).await?;
                        self.config = cfg;
                        due.clear();
                        tracing::info!(schedules = self.config.schedules.len(), "configuration reloaded");
                    }
                    None => {}
                },
                _ = sleep => {
                    let now = self.clock.now();
                    let fired: Vec<(String, OffsetDateTime)> = due.iter().filter(|(_, t)| **t <= now).map(|(n, t)| (n.clone(), *t)).collect();
                    for (name, fire) in fired {
                        due.remove(&name);
                        let Some((s, suspended)) = active.iter().find(|(s, _)| s.name == name) else { continue };
                        if *suspended {
                            tracing::info!(schedule = %name, "suspended: not run");
                        } else {
                            self.start_run(&mut running, s, fire, &runs_cancel, &permits)?;
                        }
                        // The next fire after this one, not after the run: a run that overlaps
                        // the next fire time makes that one skipped.
                        let next = next_fires(&self.config.policy_of(s).trigger, fire.max(now), Some(fire), 1);
                        if let Some(n) = next.first() {
                            due.insert(name.clone(), *n);
                        }
                    }
                }
                Some(_) = running.tasks.join_next(), if !running.tasks.is_empty() => {}
            }
        }
        tracing::info!("stopping: cancelling the runs going (their post rules still run)");
        runs_cancel.cancel();
        while running.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// How long a scheduled run waits for an exclusive lock (forget, prune) to go.
pub const LOCK_WAIT: Duration = Duration::from_secs(10 * 60);

/// Where scheduled backups read from.
pub enum Source {
    Dir(crate::k8s::source::ClusterDir),
    Live(Arc<crate::k8s::live::LiveCluster>),
}

/// The real [`Runner`]: an application backup into the repository, under a shared lock, with
/// the schedule's rules (paths relative to the configuration), recorded in the catalog; and
/// the schedule's retention after it.
pub struct RepoRunner {
    pub repo: Arc<crate::repository::Repository>,
    pub source: Source,
    pub catalog: Arc<Catalog>,
    /// Where rule paths of templates are relative to.
    pub config_dir: std::path::PathBuf,
    pub movers: crate::k8s::csi::MoverSettings,
}

impl RepoRunner {
    async fn backup(
        &self,
        s: &Schedule,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<crate::app::record::BackupSummary, String> {
        use crate::app::volumes::{backup_cluster_dir, backup_live, ConsistencyOptions};
        let rules = |files: &[String]| -> Result<Vec<crate::hooks::Rule>, String> {
            let mut out = Vec::new();
            for f in files {
                out.extend(
                    crate::hooks::load_rules(&self.config_dir.join(f))
                        .map_err(|e| e.to_string())?,
                );
            }
            Ok(out)
        };
        let opts = ConsistencyOptions {
            include_volumes: s.template.include_volumes,
            include_resources: s.template.include_resources,
            pre: rules(&s.template.pre_rules)?,
            post: rules(&s.template.post_rules)?,
            allow_reflink: true,
            schedule: Some(s.name.clone()),
        };
        let scope = crate::k8s::source::Scope {
            namespaces: s.template.namespaces.clone(),
            selector: crate::k8s::source::Selector::parse(&s.template.selector)
                .map_err(|e| e.to_string())?,
            ..Default::default()
        };
        let filters = crate::format::BackupFilters {
            namespaces: s.template.namespaces.clone(),
            selector: s.template.selector.clone(),
            ..Default::default()
        };
        // An exclusive lock (forget, prune) is waited out for a while rather than failing
        // the run at once.
        let mut delay = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let lock = loop {
            match self
                .repo
                .lock(
                    crate::repository::LockKind::Shared,
                    &format!("backup {name}"),
                )
                .await
            {
                Ok(l) => break l,
                Err(crate::repository::RepoError::Locked { holder })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!("waiting for the repository: {holder}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Err("cancelled while waiting for the repository lock".into()),
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let result = match &self.source {
            Source::Dir(dir) => {
                let d = crate::k8s::source::ClusterDir::new(dir.root());
                let all = tokio::task::spawn_blocking(move || d.load())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                let selected = crate::k8s::source::select(&all, &scope, &dir.describe())
                    .map_err(|e| e.to_string())?;
                backup_cluster_dir(
                    self.repo.clone(),
                    name,
                    dir,
                    selected,
                    filters,
                    &opts,
                    cancel,
                )
                .await
            }
            Source::Live(live) => {
                backup_live(
                    self.repo.clone(),
                    name,
                    live,
                    &scope,
                    filters,
                    &opts,
                    self.movers.clone(),
                    cancel,
                )
                .await
            }
        };
        if let Err(e) = lock.release().await {
            tracing::warn!("could not release the repository lock (it expires by itself): {e}");
        }
        result.map_err(|e| e.to_string())
    }
}

impl Runner for Arc<RepoRunner> {
    fn run(
        &self,
        s: Schedule,
        backup: String,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, RunOutcome> {
        let me = self.clone();
        let handle = tokio::runtime::Handle::current();
        // The backup future is driven on a blocking-pool thread: rustc cannot prove it Send
        // (higher-ranked lifetimes inside the rules' step), and `block_on` does not need it.
        // Its own tasks still run on the runtime.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || handle.block_on(me.run_one(s, backup, cancel)))
                .await
                .unwrap_or_else(|e| RunOutcome {
                    result: "failed".into(),
                    error: Some(format!("the run's worker failed: {e}")),
                    ..Default::default()
                })
        })
    }

    fn retain(
        &self,
        s: Schedule,
        config: Arc<Config>,
    ) -> BoxFuture<'static, Result<String, String>> {
        let me = self.clone();
        Box::pin(async move { me.apply_retention(s, config).await })
    }
}

impl RepoRunner {
    async fn run_one(
        self: Arc<Self>,
        s: Schedule,
        backup: String,
        cancel: CancellationToken,
    ) -> RunOutcome {
        let me = self;
        {
            match me.backup(&s, &backup, &cancel).await {
                Ok(summary) => {
                    let (id, record) = (summary.id, summary.record.clone());
                    let r = blocking(&me.catalog, move |c| c.record_backup(&id, &record)).await;
                    if let Err(e) = r {
                        tracing::warn!("could not record the backup in the catalog: {e}");
                    }
                    let partial = !summary.failures.is_empty();
                    RunOutcome {
                        result: if partial { "partial" } else { "succeeded" }.into(),
                        bytes_read: summary.bytes_read,
                        bytes_uploaded: summary.bytes_uploaded,
                        error: partial.then(|| {
                            summary
                                .failures
                                .iter()
                                .map(|f| format!("{}: {}", f.what, f.reason))
                                .collect::<Vec<_>>()
                                .join("; ")
                        }),
                        stats: serde_json::to_value(&summary).ok(),
                    }
                }
                Err(e) => RunOutcome {
                    result: if cancel.is_cancelled() {
                        "cancelled"
                    } else {
                        "failed"
                    }
                    .into(),
                    error: Some(e),
                    ..Default::default()
                },
            }
        }
    }

    async fn apply_retention(
        self: Arc<Self>,
        s: Schedule,
        config: Arc<Config>,
    ) -> Result<String, String> {
        let me = self;
        {
            let retain = config.policy_of(&s).retain;
            if retain.keeps_everything() {
                return Ok(String::new());
            }
            let backups = crate::app::record::list_backups(&me.repo)
                .await
                .map_err(|e| e.to_string())?;
            let decisions = crate::app::retention::plan(&backups, &|_| retain, Some(&s.name));
            if decisions.iter().all(|d| !d.kept_by.is_empty()) {
                return Ok(String::new());
            }
            let report = crate::app::retention::forget(&me.repo, &backups, &decisions)
                .await
                .map_err(|e| e.to_string())?;
            let gone: Vec<crate::format::BackupId> = decisions
                .iter()
                .filter(|d| d.kept_by.is_empty())
                .map(|d| d.id)
                .collect();
            blocking(&me.catalog, move |c| c.remove_backups(&gone))
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "removed {} backup(s) and {} volume snapshot(s) by policy {}",
                report.backups_removed, report.snapshots_removed, s.policy
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::config::parse_config;

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
        ) -> BoxFuture<'static, RunOutcome> {
            self.runs.lock().unwrap().push((backup, self.clock.now()));
            let takes = self.takes;
            Box::pin(async move {
                tokio::select! {
                    _ = tokio::time::sleep(takes) => RunOutcome { result: "succeeded".into(), bytes_read: 10, ..Default::default() },
                    _ = cancel.cancelled() => RunOutcome { result: "cancelled".into(), ..Default::default() },
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
        ) -> BoxFuture<'static, RunOutcome> {
            use std::sync::atomic::Ordering::SeqCst;
            let (now, max, runs) = (self.now.clone(), self.max.clone(), self.runs.clone());
            Box::pin(async move {
                let n = now.fetch_add(1, SeqCst) + 1;
                max.fetch_max(n, SeqCst);
                runs.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_secs(600)).await;
                now.fetch_sub(1, SeqCst);
                RunOutcome {
                    result: "succeeded".into(),
                    ..Default::default()
                }
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
        assert!(rows.iter().all(|r| r.result != "skipped"), "{rows:#?}");
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
        assert_eq!(rows.iter().filter(|r| r.result == "succeeded").count(), 24);
        assert!(
            metrics.contains("lifeboat_runs_total{schedule=\"app\",result=\"succeeded\"} 24"),
            "{metrics}"
        );
        assert!(
            metrics.contains("lifeboat_bytes_read_total{schedule=\"app\"} 240"),
            "{metrics}"
        );
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
        let skipped = rows.iter().filter(|r| r.result == "skipped").count();
        assert_eq!(runs.len() + skipped, 8, "{rows:#?}");
        assert_eq!(runs.len(), 4);
        for w in runs.windows(2) {
            assert_eq!(
                w[1].1 - w[0].1,
                time::Duration::minutes(30),
                "never two at once"
            );
        }
        assert!(rows.iter().filter(|r| r.result == "skipped").all(|r| r
            .error
            .as_deref()
            .unwrap()
            .contains("still going")));
    }

    #[tokio::test(start_paused = true)]
    async fn after_downtime_missed_runs_happen_once() {
        let d = tempfile::tempdir().unwrap();
        let cat = Arc::new(Catalog::open(&d.path().join("c.sqlite")).unwrap());
        // A run at 01:00, then the server is down until 06:30.
        let id = cat
            .start_run("app", "app-x", t("2026-11-24T01:00:00Z"))
            .unwrap();
        cat.finish_run(id, "succeeded", 0, 0, None, None).unwrap();
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
        assert_eq!(rows.last().unwrap().result, "cancelled", "{rows:#?}");
    }
}
