//! The shell: takes parsed arguments; each command handler parses its values, calls one
//! library function and prints human or `--json` output. Holds no storage, format or
//! Kubernetes logic of its own. A file per command group: `repo` (repository and keys),
//! `volume` (one volume; snapshots), `backup` and `restore` (applications), `demo`, `ops`
//! (the server, schedules, the catalog, forget, prune) and `dr` (the DR site). This file
//! holds the command line, the errors and their exit codes, the context every handler gets
//! (`Ctx`: the repository, the catalog, output) and the dispatch.

mod backup;
mod controller;
mod demo;
mod dr;
mod meta;
mod ops;
mod repo;
mod restore;
mod volume;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

pub use backup::{BackupCommand, BackupCreateArgs, BackupDeleteArgs};
pub use demo::DemoDataCommand;
pub use meta::{VersionInfo, GIT_COMMIT};
pub use repo::{KeyCommand, RepoCommand};
pub use restore::{RestoreCommand, RestoreCreateArgs};
pub use volume::{CsiDeltaArgs, VerifyReport, VolumeCommand};

use crate::app::record::AppBackupError;
use crate::app::request::RequestError;
use crate::demo::DemoError;
use crate::k8s::objects::ResourceError;
use crate::k8s::source::ClusterError;
use crate::k8s::LiveError;
use crate::repository::{RepoError, Repository};
use crate::store::{self, StoreError, StoreOptions};
use crate::volume::backup::BackupError;
use crate::volume::restore::RestoreError;

const ABOUT: &str =
    "Disaster recovery for Kubernetes applications: encrypted, deduplicated, incremental \
backups of volumes to a local directory or an S3 bucket.";

const AFTER: &str = "Environment: LIFEBOAT_REPOSITORY (--repo), LIFEBOAT_PASSWORD (or --password-file, \
LIFEBOAT_PASSWORD_FILE), \
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for S3-compatible \
servers (MinIO, Garage, Ceph). Exit codes: 0 success, 1 failure, 2 bad usage, 3 transient failure (retry later), \
4 repository damage found (or data lost to it: `repo repair`). With --json, standard output holds one JSON \
document: the result, or, when a command fails before giving one, {\"error\": {\"message\", \"exit_code\", \"retryable\"}} \
(the message is on standard error too).";

#[derive(Debug, Parser)]
#[command(name = "lifeboat", version = meta::VERSION_LINE, about = ABOUT, after_help = AFTER)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after the subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = GLOBAL_HEADING)]
pub struct Global {
    /// Repository: a path, file://PATH, or s3://BUCKET/PREFIX.
    #[arg(long, global = true, env = "LIFEBOAT_REPOSITORY", value_name = "URL")]
    pub repo: Option<String>,
    /// Read the password from this file (else LIFEBOAT_PASSWORD; else, when standard input is
    /// a terminal, it is asked for).
    #[arg(
        long,
        global = true,
        env = "LIFEBOAT_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Machine-readable JSON on standard output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where index and snapshot objects are cached [default: $XDG_CACHE_HOME/lifeboat or ~/.cache/lifeboat].
    #[arg(long, global = true, env = "LIFEBOAT_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not use a local cache.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// More log output on standard error (-v info, -vv debug); LIFEBOAT_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Timeout of one storage call, in seconds.
    #[arg(long, global = true, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
    /// Where the catalog (catalog.sqlite) lives [default: $XDG_STATE_HOME/lifeboat or
    /// ~/.local/state/lifeboat].
    #[arg(long, global = true, env = "LIFEBOAT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long a command waits for another's conflicting repository lock to go (e.g. a
    /// prune while backups run) before it fails with exit 3; 0s fails at once. Lockers that
    /// start together back off for random, growing times, so one of them wins [default: 1s;
    /// the server: 5m].
    #[arg(long, global = true, value_name = "DURATION", value_parser = crate::hooks::parse_duration)]
    pub lock_wait: Option<Duration>,
}

/// The help section of the options every command takes.
pub const GLOBAL_HEADING: &str = "Global options";

/// How long a command waits for a conflicting lock by default: long enough for lockers that
/// started together to sort themselves out, short enough that a long-held lock fails fast.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(1);
/// The server's default: its forgets wait out a prune or a hand-run command.
pub const SERVER_LOCK_WAIT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, check and manage the keys of a repository.
    #[command(after_help = "Example:\n  lifeboat repo init --repo s3://backups/prod")]
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Back up and restore block volumes (image files or block devices).
    #[command(after_help = "Example:\n  lifeboat volume backup --name pg-data /dev/vg0/pg-snap")]
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// List snapshots, oldest first.
    #[command(after_help = "Example:\n  lifeboat snapshots --json")]
    Snapshots,
    /// Application backups: a namespace's objects (and the cluster-scoped objects it needs).
    #[command(after_help = "Example:\n  lifeboat backup create pg-nightly -n pg --context prod")]
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore an application backup: sanitised, mapped and in dependency order.
    #[command(
        after_help = "Example:\n  lifeboat restore create --from-backup pg-nightly --output-dir restore/"
    )]
    Restore {
        #[command(subcommand)]
        command: RestoreCommand,
    },
    /// Run scheduled backups (SchedulePolicy and BackupSchedule objects), apply their
    /// retention, serve metrics. SIGTERM stops it (a running backup is cancelled, its post rules
    /// still run); SIGHUP reloads the configuration.
    #[command(
        after_help = "Example:\n  lifeboat server --config schedules/ --context prod --metrics-addr 127.0.0.1:9469"
    )]
    Server(ops::ServerArgs),
    /// The schedules the server runs.
    #[command(after_help = "Example:\n  lifeboat schedule next appns-hourly --count 5")]
    Schedule {
        #[command(subcommand)]
        command: ops::ScheduleCommand,
    },
    /// Runs of schedules, oldest first.
    #[command(after_help = "Example:\n  lifeboat runs --schedule appns-hourly --limit 10")]
    Runs {
        /// Only the runs of this schedule [default: every schedule's].
        #[arg(long, value_name = "NAME")]
        schedule: Option<String>,
        /// The newest N runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The local catalog.
    #[command(after_help = "Example:\n  lifeboat catalog rebuild")]
    Catalog {
        #[command(subcommand)]
        command: ops::CatalogCommand,
    },
    /// Remove application backups by retention rules (per schedule); never the newest complete
    /// backup of a schedule. `prune` then gives the space back.
    #[command(after_help = "Example:\n  lifeboat forget --keep-last 24 --keep-daily 7 --dry-run")]
    Forget(ops::ForgetArgs),
    /// Remove the data nothing references any more (repacking packs that are mostly garbage);
    /// new data is written before old data is deleted.
    #[command(after_help = "Example:\n  lifeboat prune --dry-run")]
    Prune {
        /// Report what would be removed and repacked; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Repack a pack when at least this fraction of it is garbage.
        #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
        repack_threshold: f64,
        /// How long the packs it takes out of the index stay in the store before a later
        /// prune deletes them, so that readers holding no lock (a DR site whose key can only
        /// read) still find them; 0s deletes them now, safe only when every reader can write
        /// its lock.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::hooks::parse_duration)]
        grace: Duration,
    },
    /// On the DR site: keep namespaces a warm standby of a schedule's newest backup
    /// (volumes updated by block-map difference, workloads held at 0 replicas); or, with
    /// `status`, show what each namespace holds and how old it is.
    #[command(
        after_help = "Example:\n  lifeboat standby --schedule db-hourly --context dr --interval 30s"
    )]
    Standby(dr::StandbyArgs),
    /// Failover: stop standby applying to a namespace and start its applications (recorded
    /// replica counts back, CronJobs resumed). Idempotent.
    #[command(after_help = "Example:\n  lifeboat activate -n db --context dr")]
    Activate(dr::NamespaceArgs),
    /// The reverse of activate: applications at 0 replicas (counts recorded), CronJobs
    /// suspended; standby applies to the namespace again.
    #[command(after_help = "Example:\n  lifeboat deactivate -n db --context primary")]
    Deactivate(dr::NamespaceArgs),
    /// A non-disruptive DR test: restore the newest backup into a scratch namespace, verify
    /// every volume and object, report the time to ready.
    #[command(
        after_help = "Example:\n  lifeboat drill -n db --into db-drill --context dr --remove"
    )]
    Drill(dr::DrillArgs),
    /// Run the whole flow on generated data in a scratch directory: init, full and incremental
    /// backup, restore, verify, check. Needs no cluster and no cloud account.
    #[command(after_help = "Example:\n  lifeboat demo --size-mib 64")]
    Demo {
        /// Scratch directory (must not exist or be empty) [default: a new directory under /tmp].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the generated volume in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
    },
    /// Print a shell completion script (bash, zsh, fish, powershell or elvish) on standard
    /// output.
    #[command(
        after_help = "Examples:\n  lifeboat completion bash > /etc/bash_completion.d/lifeboat\n  lifeboat completion zsh > \"${fpath[1]}/_lifeboat\"\n  lifeboat completion fish > ~/.config/fish/completions/lifeboat.fish"
    )]
    Completion {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The version of lifeboat, the git commit it was built from ("unknown" when built
    /// outside a git checkout) and the repository format version it reads and writes.
    #[command(after_help = "Example:\n  lifeboat version --json")]
    Version,
    /// Run the operator: reconcile the lifeboat.dev resources (BackupLocation, SchedulePolicy,
    /// Rule, BackupSchedule, Backup, Restore, Standby) of a cluster while this replica holds
    /// the Lease; serve /metrics, /healthz and /readyz.
    #[command(
        after_help = "Example:\n  lifeboat controller --namespace lifeboat --state-dir /var/lib/lifeboat"
    )]
    Controller(controller::ControllerArgs),
    /// List lifeboat resources of a cluster (backups, schedules, restores, standby) with their
    /// status.
    #[command(
        after_help = "Examples:\n  lifeboat get backups -n appns\n  lifeboat get standby --context dr --json"
    )]
    Get(controller::GetArgs),
    /// The CustomResourceDefinitions of the lifeboat.dev resources, as the code defines them:
    /// one file per kind under OUT, or every one on standard output.
    #[command(
        after_help = "Examples:\n  lifeboat crds --out deploy/base/crds\n  lifeboat crds | kubectl apply --server-side -f -"
    )]
    Crds {
        /// Write a file per kind (`backups.yaml`, ...) into this directory.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Generate or change demo volume data (for the benchmark and scripts).
    #[command(hide = true)]
    DemoData {
        #[command(subcommand)]
        command: DemoDataCommand,
    },
}

/// The Jobs that move volume data between a live cluster and the repository.
#[derive(Debug, Clone, Args)]
pub struct MoverArgs {
    /// Image of the mover Jobs (runs `lifeboat volume backup|restore`).
    #[arg(long, value_name = "IMAGE", default_value_t = crate::k8s::csi::MoverSettings::default().image)]
    mover_image: String,
    /// Secret in each claim's namespace holding the repository settings for the movers
    /// (LIFEBOAT_REPOSITORY, LIFEBOAT_PASSWORD, AWS_*).
    #[arg(long, value_name = "NAME", default_value = "lifeboat-repository")]
    mover_secret: String,
    /// How long a snapshot, a clone or a mover Job may take.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = crate::hooks::parse_duration)]
    mover_timeout: Duration,
    /// How many claims are moved at once: mover Jobs of a backup, restore Jobs of a restore
    /// or a standby's new claims.
    #[arg(long, value_name = "N", default_value_t = crate::k8s::csi::DEFAULT_PARALLEL_VOLUMES, value_parser = parse_parallel)]
    parallel_volumes: usize,
    /// CPU request of the mover Jobs' pods ("" for none).
    #[arg(long, value_name = "QUANTITY", default_value = "250m", value_parser = crate::k8s::csi::parse_quantity)]
    mover_cpu_request: String,
    /// Memory request of the mover Jobs' pods ("" for none).
    #[arg(long, value_name = "QUANTITY", default_value = "256Mi", value_parser = crate::k8s::csi::parse_quantity)]
    mover_memory_request: String,
    /// CPU limit of the mover Jobs' pods ("" for none; a ResourceQuota on limits needs one).
    #[arg(long, value_name = "QUANTITY", default_value = "2", value_parser = crate::k8s::csi::parse_quantity)]
    mover_cpu_limit: String,
    /// Memory limit of the mover Jobs' pods ("" for none; a ResourceQuota on limits needs one).
    #[arg(long, value_name = "QUANTITY", default_value = "2Gi", value_parser = crate::k8s::csi::parse_quantity)]
    mover_memory_limit: String,
    /// Node selector of the mover Jobs' pods (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = crate::k8s::csi::parse_label)]
    mover_node_selector: Vec<(String, String)>,
    /// Toleration of the mover Jobs' pods, in taint syntax KEY[=VALUE][:EFFECT] (repeatable).
    #[arg(long, value_name = "TOLERATION", value_parser = crate::k8s::csi::parse_toleration)]
    mover_toleration: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// User the movers run as; 0 (root) leaves Pod Security `restricted` (README: "Jobs on locked-down clusters").
    #[arg(long, value_name = "UID", default_value_t = crate::k8s::csi::NONROOT)]
    mover_run_as_user: i64,
    /// Group the movers run as.
    #[arg(long, value_name = "GID", default_value_t = crate::k8s::csi::NONROOT)]
    mover_run_as_group: i64,
    /// fsGroup of the movers' pods (the standby journal's filesystem is made writable by it).
    #[arg(long, value_name = "GID", default_value_t = crate::k8s::csi::NONROOT)]
    mover_fs_group: i64,
    /// Supplemental group of the movers (repeatable), e.g. 6, the group `disk` that owns
    /// the nodes' block devices where the runtime keeps the host's device ownership.
    #[arg(long, value_name = "GID")]
    mover_supplemental_group: Vec<i64>,
}

/// `--parallel-volumes`: a count from 1 to 64.
fn parse_parallel(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=64) => Ok(n),
        _ => Err(format!("`{text}` is not a count from 1 to 64")),
    }
}

impl MoverArgs {
    /// The movers' settings; a namespace without the mover Secret gets one with this
    /// process's own repository settings (see [`crate::k8s::csi::Csi::prepare_namespace`]).
    fn settings(&self, g: &Global) -> crate::k8s::csi::MoverSettings {
        let mut data = std::collections::BTreeMap::new();
        if let Some(repo) = &g.repo {
            data.insert("LIFEBOAT_REPOSITORY".to_string(), repo.clone());
        }
        if let Ok(Some(pw)) = read_secret(g.password_file.as_deref(), "LIFEBOAT_PASSWORD") {
            if let Ok(mut pw) = String::from_utf8(pw) {
                // A mover reads it by the same rule, which would take its last `\n` away.
                if pw.ends_with('\n') {
                    pw.push('\n');
                }
                data.insert("LIFEBOAT_PASSWORD".into(), pw);
            }
        }
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ] {
            if let Ok(v) = std::env::var(k) {
                data.insert(k.into(), v);
            }
        }
        let complete =
            data.contains_key("LIFEBOAT_REPOSITORY") && data.contains_key("LIFEBOAT_PASSWORD");
        crate::k8s::csi::MoverSettings {
            image: self.mover_image.clone(),
            secret: self.mover_secret.clone(),
            timeout: self.mover_timeout,
            secret_data: complete.then_some(data),
            pod: self.pod(),
            parallel_volumes: self.parallel_volumes,
            ..Default::default()
        }
    }

    fn pod(&self) -> crate::k8s::csi::PodSettings {
        let q = |s: &String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        crate::k8s::csi::PodSettings {
            cpu_request: q(&self.mover_cpu_request),
            memory_request: q(&self.mover_memory_request),
            cpu_limit: q(&self.mover_cpu_limit),
            memory_limit: q(&self.mover_memory_limit),
            node_selector: self.mover_node_selector.iter().cloned().collect(),
            tolerations: self.mover_toleration.clone(),
            run_as_user: self.mover_run_as_user,
            run_as_group: self.mover_run_as_group,
            fs_group: Some(self.mover_fs_group),
            supplemental_groups: self.mover_supplemental_group.clone(),
        }
    }
}

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no repository given: pass --repo URL or set LIFEBOAT_REPOSITORY")]
    NoRepository,
    #[error("no password given: set LIFEBOAT_PASSWORD or pass --password-file FILE (or run on a terminal to be asked)")]
    NoPassword,
    #[error("no new password given: set LIFEBOAT_NEW_PASSWORD or pass --new-password-file FILE (or run on a terminal to be asked)")]
    NoNewPassword,
    #[error("cannot read the password from the terminal: {0}; set LIFEBOAT_PASSWORD or pass --password-file FILE")]
    Prompt(std::io::Error),
    #[error("the two passwords typed differ; run again and type the same one twice")]
    PasswordsDiffer,
    // `error`, not `source`: the message says it, and a source would print it twice.
    #[error("the password in {0} is empty; give a non-empty one")]
    EmptyPassword(String),
    #[error("cannot read password file {path}: {error}")]
    PasswordFile { path: String, error: std::io::Error },
    #[error("the repository check found {0} problem(s); see the list above")]
    CheckFailed(usize),
    #[error("{}{lost} loss(es) that repair cannot recover (listed above): back the affected volumes up again", if *dry_run { "the repair would leave " } else { "repaired, with " })]
    RepairLost { lost: usize, dry_run: bool },
    #[error("{0} lock(s) kept (listed above); they expire by themselves")]
    LocksKept(usize),
    #[error("{target} is not snapshot {snapshot}: {mismatched} of {total} blocks differ (or its size does)")]
    VolumeDiffers {
        target: String,
        snapshot: String,
        mismatched: u64,
        total: u64,
    },
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error("internal worker failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Verify(#[from] crate::volume::verify::VerifyError),
    #[error(transparent)]
    App(#[from] AppBackupError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error(transparent)]
    Rules(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Schedule(#[from] crate::scheduler::config::ScheduleError),
    #[error(transparent)]
    Catalog(#[from] crate::scheduler::catalog::CatalogError),
    #[error(
        "the drill found differences (listed above): the DR site would not recover as backed up"
    )]
    DrillFailed,
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::ServerError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Standby(#[from] crate::standby::StandbyError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("the backup was recorded, partially failed: {0} part(s) of the scope could not be captured (listed above); fix access and back up again")]
    PartialBackup(usize),
    #[error("{0} object(s) failed to restore; see the results above")]
    ObjectsFailed(usize),
    #[error(transparent)]
    Operator(Box<crate::operator::OperatorError>),
    #[error(transparent)]
    Delete(#[from] crate::app::delete::DeleteError),
}

impl From<crate::operator::OperatorError> for Error {
    fn from(e: crate::operator::OperatorError) -> Error {
        Error::Operator(Box::new(e))
    }
}

impl Error {
    /// Worth running again later unchanged (network, throttling, a lock that expires).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retryable(),
            Error::Repo(e) => e.is_retryable(),
            Error::Backup(e) => e.is_retryable(),
            Error::Restore(e) => e.is_retryable(),
            Error::Verify(e) => e.is_retryable(),
            Error::App(e) => e.is_retryable(),
            Error::Live(e) => e.is_retryable(),
            Error::Standby(e) => e.is_retryable(),
            Error::Demo(e) => e.is_retryable(),
            Error::Scheduler(e) => e.is_retryable(),
            Error::Catalog(e) => e.is_retryable(),
            Error::Operator(e) => e.is_retryable(),
            Error::Delete(e) => e.is_retryable(),
            Error::LocksKept(_) => true,
            _ => false,
        }
    }

    /// Bad usage or configuration: what was given cannot work as it is (exit 2).
    fn is_usage(&self) -> bool {
        if let Error::Delete(e) = self {
            return e.is_usage();
        }
        matches!(
            self,
            Error::Usage(_)
                | Error::NoRepository
                | Error::NoPassword
                | Error::NoNewPassword
                | Error::EmptyPassword(_)
                | Error::PasswordsDiffer
                | Error::Store(
                    StoreError::Credentials { .. }
                        | StoreError::BadUrl { .. }
                        | StoreError::WriteDenied { .. }
                )
                | Error::Repo(RepoError::Store(
                    StoreError::Credentials { .. }
                        | StoreError::BadUrl { .. }
                        | StoreError::WriteDenied { .. }
                ))
        )
    }

    /// The exit code: 1 failed, 2 usage or configuration, 3 transient, 4 damage found; an
    /// interrupted command exits with 128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
    pub fn exit_code(&self) -> u8 {
        if let Some(signal) = interrupted_by() {
            return 128 + signal;
        }
        match self {
            Error::CheckFailed(_) | Error::VolumeDiffers { .. } | Error::RepairLost { .. } => 4,
            _ if self.is_usage() => 2,
            _ if self.is_retryable() => 3,
            _ => 1,
        }
    }

    /// The error and its causes on one line, each cause only once: most messages already
    /// name their cause (`cannot read source X: No such file`), and printing the chain again
    /// would repeat it.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        line
    }

    /// The `--json` form of a failure: `{"error": {"message", "exit_code", "retryable"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        json_error(&self.one_line(), self.exit_code(), self.is_retryable())
    }
}

/// The `--json` error object (also for a command line clap rejects).
pub fn json_error(message: &str, exit_code: u8, retryable: bool) -> serde_json::Value {
    serde_json::to_value(ErrorOutput {
        error: ErrorBody {
            message: message.to_string(),
            exit_code,
            retryable,
        },
    })
    .expect("serialises")
}

/// A password from `file`, else from the variable `env` (None: neither is given). One rule for
/// both: exactly one trailing `\n` or `\r\n` is removed (what `echo` and `kubectl create secret
/// --from-file` leave), nothing else; an empty password is refused, naming where it came from.
fn read_secret(file: Option<&Path>, env: &str) -> Result<Option<Vec<u8>>, Error> {
    let (raw, from) = match file {
        Some(p) => {
            let raw = std::fs::read(p).map_err(|error| Error::PasswordFile {
                path: p.display().to_string(),
                error,
            })?;
            (raw, format!("the password file {}", p.display()))
        }
        None => match std::env::var_os(env) {
            Some(v) => (v.into_encoded_bytes(), env.to_string()),
            None => return Ok(None),
        },
    };
    let pw = match raw.strip_suffix(b"\n") {
        Some(rest) => rest.strip_suffix(b"\r").unwrap_or(rest),
        None => &raw,
    };
    if pw.is_empty() {
        return Err(Error::EmptyPassword(from));
    }
    Ok(Some(pw.to_vec()))
}

/// Asks for a secret on the terminal when standard input is one (None: it is not, so a
/// script without a password fails at once instead of hanging). With `confirm`, asks twice
/// and refuses two different answers. Typed text is not echoed.
fn prompt_secret(what: &str, confirm: bool) -> Result<Option<Vec<u8>>, Error> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let ask = |prompt: String| rpassword::prompt_password(prompt).map_err(Error::Prompt);
    let pw = ask(format!("{what}: "))?;
    if pw.is_empty() {
        return Err(Error::EmptyPassword("the prompt".into()));
    }
    if confirm && ask(format!("{what} again: "))? != pw {
        return Err(Error::PasswordsDiffer);
    }
    Ok(Some(pw.into_bytes()))
}

struct Ctx<'a> {
    g: &'a Global,
    cancel: CancellationToken,
    /// Repository locks this command holds; released when it ends.
    locks: std::sync::Mutex<Vec<crate::repository::LockGuard>>,
    /// Whether the command has written its result on stdout (then a failure adds no second
    /// JSON document).
    emitted: std::sync::atomic::AtomicBool,
}

impl Ctx<'_> {
    fn store_options(&self) -> StoreOptions {
        StoreOptions {
            op_timeout: Duration::from_secs(self.g.timeout.max(1)),
            ..Default::default()
        }
    }

    async fn store(&self) -> Result<Arc<dyn store::Store>, Error> {
        let url = self.g.repo.as_deref().ok_or(Error::NoRepository)?;
        Ok(store::open(url, &self.store_options()).await?)
    }

    /// The password: --password-file, LIFEBOAT_PASSWORD, else asked on the terminal.
    fn password(&self) -> Result<Vec<u8>, Error> {
        self.password_asked(false)
    }

    /// [`Ctx::password`], asked twice when it is typed (a new repository's).
    fn password_asked(&self, confirm: bool) -> Result<Vec<u8>, Error> {
        match read_secret(self.g.password_file.as_deref(), "LIFEBOAT_PASSWORD")? {
            Some(pw) => Ok(pw),
            None => prompt_secret("repository password", confirm)?.ok_or(Error::NoPassword),
        }
    }

    fn cache_root(&self) -> Option<PathBuf> {
        if self.g.no_cache {
            return None;
        }
        self.g.cache_dir.clone().or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("lifeboat"))
        })
    }

    /// Opens the repository and takes a shared lock on it for the rest of the command, so a
    /// concurrent `prune` cannot remove what this command reads or writes.
    async fn open_shared(&self, purpose: &str) -> Result<Arc<Repository>, Error> {
        let repo = self.open().await?;
        let guard = repo
            .lock(crate::repository::LockKind::Shared, purpose)
            .await?;
        self.locks.lock().unwrap().push(guard);
        Ok(repo)
    }

    /// [`Ctx::open_shared`] for a command that only reads: when the credentials cannot write
    /// the lock, it reads without one ([`Repository::lock_to_read`]).
    async fn open_to_read(&self, purpose: &str) -> Result<Arc<Repository>, Error> {
        let repo = self.open().await?;
        if let Some(guard) = repo.lock_to_read(purpose).await? {
            self.locks.lock().unwrap().push(guard);
        }
        Ok(repo)
    }

    async fn release_locks(&self) {
        let guards: Vec<_> = std::mem::take(&mut *self.locks.lock().unwrap());
        for g in guards {
            if let Err(e) = g.release().await {
                tracing::warn!("could not release a repository lock (it expires by itself): {e}");
            }
        }
    }

    async fn open(&self) -> Result<Arc<Repository>, Error> {
        self.open_waiting(self.g.lock_wait.unwrap_or(DEFAULT_LOCK_WAIT))
            .await
    }

    /// [`Ctx::open`] whose locks wait up to `lock_wait` for conflicting ones.
    async fn open_waiting(&self, lock_wait: Duration) -> Result<Arc<Repository>, Error> {
        let store = self.store().await?;
        let pw = self.password()?;
        let key_cache = key_cache()?;
        Ok(Arc::new(
            Repository::open_with_key_cache(
                store,
                &pw,
                self.cache_root(),
                key_cache,
                self.cancel.clone(),
            )
            .await?
            .with_lock_wait(lock_wait),
        ))
    }

    fn progress(&self, what: &str) -> ProgressBar {
        if self.g.json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    }

    fn emit<T: serde::Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        self.emitted
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self.g.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("output serialises")
            );
        } else {
            println!("{}", human());
        }
    }
}

/// The signal (SIGINT 2, SIGTERM 15) that cancelled the running command, if any.
static INTERRUPTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The signal that interrupted this process's command, if one did.
pub fn interrupted_by() -> Option<u8> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        n => Some(n),
    }
}

/// Runs one command. Ctrl-C cancels storage calls in flight; nothing half-written is
/// committed, because a snapshot is written only after everything it needs. With `--json`, a
/// failure before the command gave its result prints the JSON error object on stdout.
/// [`run`] on a multi-threaded runtime of its own, until it ends: the binary's whole work
/// after parsing and tracing. Err: the runtime could not start.
pub fn run_to_end(cli: Cli) -> std::io::Result<Result<(), Error>> {
    // 8 MiB of stack per worker (tokio's default is 2): a debug build's futures for a whole
    // standby cycle or backup run deep.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()?;
    Ok(runtime.block_on(run(cli)))
}

pub async fn run(cli: Cli) -> Result<(), Error> {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        // SIGINT or SIGTERM (a pod being stopped): cancel; post rules still run.
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => libc::SIGINT,
            _ = term => libc::SIGTERM,
        };
        INTERRUPTED.store(signal as u8, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!("interrupted: cancelling");
        c.cancel();
    });
    let ctx = Ctx {
        g: &cli.global,
        cancel,
        locks: Default::default(),
        emitted: Default::default(),
    };
    let result = match &cli.command {
        Command::Repo { command } => repo::repo(&ctx, command).await,
        Command::Volume { command } => volume::volume(&ctx, command).await,
        Command::Snapshots => volume::snapshots(&ctx).await,
        Command::Backup { command } => backup::backup(&ctx, command).await,
        Command::Restore { command } => restore::restore(&ctx, command).await,
        Command::Demo { dir, size_mib } => demo::demo(&ctx, dir.clone(), *size_mib).await,
        Command::Server(a) => ops::server(&ctx, a).await,
        Command::Schedule { command } => ops::schedule(&ctx, command).await,
        Command::Runs { schedule, limit } => ops::runs(&ctx, schedule.clone(), *limit).await,
        Command::Catalog { command } => ops::catalog(&ctx, command).await,
        Command::Forget(a) => ops::forget(&ctx, a).await,
        Command::Standby(a) => dr::standby(&ctx, a).await,
        Command::Activate(a) => dr::set_running(&ctx, a, true).await,
        Command::Deactivate(a) => dr::set_running(&ctx, a, false).await,
        Command::Drill(a) => dr::drill(&ctx, a).await,
        Command::Prune {
            dry_run,
            repack_threshold,
            grace,
        } => ops::prune(&ctx, *dry_run, *repack_threshold, *grace).await,
        Command::DemoData { command } => demo::demo_data(command),
        Command::Completion { shell } => meta::completion(*shell),
        Command::Version => meta::version(&ctx),
        Command::Crds { out } => meta::crds(out.as_deref()),
        Command::Controller(a) => controller::controller(&ctx, a).await,
        Command::Get(a) => controller::get(&ctx, a).await,
    };
    ctx.release_locks().await;
    if let Err(e) = &result {
        if cli.global.json && !ctx.emitted.load(std::sync::atomic::Ordering::Relaxed) {
            println!(
                "{}",
                serde_json::to_string_pretty(&e.to_json()).expect("serialises")
            );
        }
    }
    result
}

/// Bytes in binary units.
pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A table for people: each column as wide as its widest cell (long names and timestamps
/// keep it aligned), two spaces between columns, no borders and no colour, so `cut`, `awk`
/// and `column` still split it. `right`: the columns of numbers, aligned right.
pub(crate) fn table<R, C>(header: &[&str], right: &[usize], rows: R) -> String
where
    R: IntoIterator<Item = Vec<C>>,
    C: Into<comfy_table::Cell>,
{
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (i, c) in t.column_iter_mut().enumerate() {
        c.set_padding((0, if i == last { 0 } else { 2 }));
        if right.contains(&i) {
            c.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    t.trim_fmt()
}

/// The JSON Schema of each command's `--json` output that has a typed one, generated from the
/// output structs: (file name under `schema/cli/`, text). A test compares them with the
/// checked-in files, so they cannot drift.
pub fn output_schemas() -> Vec<(&'static str, String)> {
    fn text<T: schemars::JsonSchema>() -> String {
        let schema = schemars::schema_for!(T);
        serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n"
    }
    use crate::scheduler::catalog::{RunRow, ScheduleListing};
    vec![
        (
            "backup-list.schema.json",
            text::<Vec<backup::BackupListing>>(),
        ),
        (
            "snapshots.schema.json",
            text::<Vec<volume::SnapshotListing>>(),
        ),
        ("volume-verify.schema.json", text::<VerifyReport>()),
        ("schedule-list.schema.json", text::<Vec<ScheduleListing>>()),
        ("runs.schema.json", text::<Vec<RunRow>>()),
        (
            "standby-status.schema.json",
            text::<Vec<crate::standby::StatusRow>>(),
        ),
        (
            "backup-describe.schema.json",
            text::<backup::BackupDescription>(),
        ),
        ("backup-delete.schema.json", text::<backup::DeleteOutput>()),
        (
            "restore-list.schema.json",
            text::<Vec<crate::app::restore_record::RestoreRecord>>(),
        ),
        (
            "restore-describe.schema.json",
            text::<crate::app::restore_record::RestoreRecord>(),
        ),
        (
            "volume-backup.schema.json",
            text::<crate::volume::backup::BackupReport>(),
        ),
        (
            "volume-restore.schema.json",
            text::<crate::volume::restore::RestoreStats>(),
        ),
        ("forget.schema.json", text::<ops::ForgetOutput>()),
        (
            "prune.schema.json",
            text::<crate::repository::PruneReport>(),
        ),
        (
            "standby-cycle.schema.json",
            text::<Vec<crate::standby::NamespaceReport>>(),
        ),
        (
            "standby-apply-devices.schema.json",
            text::<Vec<crate::standby::VolumeReport>>(),
        ),
        ("drill.schema.json", text::<crate::standby::DrillReport>()),
        ("backup-create.schema.json", text::<backup::BackupCreated>()),
        (
            "restore-create.schema.json",
            text::<restore::RestoreApplied<'static>>(),
        ),
        (
            "restore-plan.schema.json",
            text::<Vec<restore::PlannedObject>>(),
        ),
        ("repo-init.schema.json", text::<repo::RepoCreated>()),
        (
            "repo-check.schema.json",
            text::<crate::repository::CheckReport>(),
        ),
        (
            "repo-repair.schema.json",
            text::<crate::repository::RepairReport>(),
        ),
        (
            "repo-unlock.schema.json",
            text::<crate::repository::UnlockReport>(),
        ),
        ("repo-key-add.schema.json", text::<repo::KeyAdded>()),
        ("repo-key-remove.schema.json", text::<repo::KeyRemoved>()),
        (
            "repo-key-list.schema.json",
            text::<Vec<crate::repository::KeyInfo>>(),
        ),
        ("schedule-next.schema.json", text::<Vec<String>>()),
        (
            "schedule-suspend.schema.json",
            text::<ops::ScheduleSuspension>(),
        ),
        ("catalog-rebuild.schema.json", text::<ops::CatalogRebuilt>()),
        ("activate.schema.json", text::<dr::Activation<'static>>()),
        ("version.schema.json", text::<meta::VersionInfo>()),
        ("error.schema.json", text::<ErrorOutput>()),
    ]
}

/// The `--json` form of a failure.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ErrorOutput {
    pub error: ErrorBody,
}

/// What failed: the message (also on standard error), the exit code and whether a retry may
/// succeed (exit 3).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub message: String,
    pub exit_code: u8,
    pub retryable: bool,
}

/// Writes a command's result as compact JSON to `file` (a Job's termination message, which
/// lifeboat reads back); a failure is a warning, the command's own outcome stands.
fn write_report<T: serde::Serialize>(file: &Path, value: &T) {
    let text = serde_json::to_string(value).expect("serialises");
    if let Err(e) = std::fs::write(file, text) {
        tracing::warn!("cannot write the report to {}: {e}", file.display());
    }
}

/// The unlocked-key cache `LIFEBOAT_KEY_CACHE=SECONDS` asks for (unset, empty or 0: none),
/// in `LIFEBOAT_KEY_CACHE_DIR` or `$XDG_RUNTIME_DIR/lifeboat/keys`.
fn key_cache() -> Result<Option<crate::repository::KeyCache>, Error> {
    let Some(v) = std::env::var_os("LIFEBOAT_KEY_CACHE").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let secs: u64 = v
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .filter(|s| *s <= 86_400)
        .ok_or_else(|| {
            Error::Usage(format!(
                "LIFEBOAT_KEY_CACHE={}: give the seconds an unlocked key is kept (0 to 86400), or unset it",
                v.to_string_lossy()
            ))
        })?;
    if secs == 0 {
        return Ok(None);
    }
    let dir = std::env::var_os("LIFEBOAT_KEY_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(crate::repository::default_key_cache_dir);
    Ok(Some(crate::repository::KeyCache {
        dir,
        lifetime: Duration::from_secs(secs),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same secret, from a file or from a variable (a Kubernetes Secret made with
    /// `--from-file` and mounted either way), reads the same.
    #[test]
    fn a_password_reads_the_same_from_a_file_and_from_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let cases: [(&[u8], &[u8]); 6] = [
            (b"pw", b"pw"),
            (b"pw\n", b"pw"),
            (b"pw\r\n", b"pw"),
            (b"pw\n\n", b"pw\n"),
            (b"pw\r", b"pw\r"),
            (b" pw \n", b" pw "),
        ];
        for (i, (raw, want)) in cases.into_iter().enumerate() {
            let f = d.path().join(format!("pw{i}"));
            std::fs::write(&f, raw).unwrap();
            assert_eq!(read_secret(Some(&f), "UNSET").unwrap().unwrap(), want);
            let var = format!("LIFEBOAT_TEST_SECRET_{i}");
            std::env::set_var(&var, std::str::from_utf8(raw).unwrap());
            assert_eq!(read_secret(None, &var).unwrap().unwrap(), want, "{raw:?}");
        }
        assert!(read_secret(None, "LIFEBOAT_TEST_SECRET_UNSET")
            .unwrap()
            .is_none());
    }

    /// Columns are as wide as their widest cell: a long name moves the next column for every
    /// row, so each column starts at the same place on every line.
    #[test]
    fn tables_size_their_columns_to_their_cells() {
        let long = "a-very-long-backup-name-that-no-fixed-width-would-hold";
        let t = table(
            &["NAME", "SIZE", "TIME"],
            &[1],
            vec![
                vec![
                    "db".to_string(),
                    "1 B".into(),
                    "2026-12-02T14:03:07.123Z".into(),
                ],
                vec![long.to_string(), "10.5 MiB".into(), "-".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        let time_at = long.len() + 2 + "10.5 MiB".len() + 2;
        assert_eq!(lines[0].find("TIME"), Some(time_at), "{t}");
        assert_eq!(lines[1].find("2026"), Some(time_at), "{t}");
        assert_eq!(lines[2].find("10.5 MiB"), Some(long.len() + 2), "{t}");
        // Numbers align right: `1 B` ends where `10.5 MiB` does.
        assert_eq!(lines[1].find("1 B").unwrap() + 3, long.len() + 2 + 8, "{t}");
        assert!(
            !t.contains('\x1b') && !t.contains('|') && !t.contains('+'),
            "{t}"
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{t}");
    }

    #[test]
    fn an_empty_password_is_refused_naming_where_it_came_from() {
        let d = tempfile::tempdir().unwrap();
        for (i, raw) in ["", "\n", "\r\n"].into_iter().enumerate() {
            let f = d.path().join(format!("empty{i}"));
            std::fs::write(&f, raw).unwrap();
            let e = read_secret(Some(&f), "UNSET").unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "the password in the password file {} is empty; give a non-empty one",
                    f.display()
                )
            );
            let var = format!("LIFEBOAT_TEST_EMPTY_{i}");
            std::env::set_var(&var, raw);
            let e = read_secret(None, &var).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("the password in {var} is empty; give a non-empty one")
            );
        }
    }
}
